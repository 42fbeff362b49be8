"""RTL of the streaming max-pooling unit (sim/rtl/pool.v, docs/dataflow.md "Pooling unit")
== codesign.sim.reference.maxpool2d == the csim face (codesign.hls.csim_nonlinear.maxpool2d).

Every pooled code is compared with ``==`` against the reference and the HLS C++ kernel
under g++ (docs/arithmetic.md §9: max over the window, padding holds lo of the input
type), every cycle count of a run without stalls with ``==`` against the cycle model
:func:`codesign.sim.rtl_pool.pool_cycles` (derived in pool.v's header), which in turn
equals the cost model's :func:`codesign.accel.dataflow.pool_cycles`. Simulated under
Verilator (always) and Icarus Verilog (when installed).

Hypothesis draws the geometry (channels, lanes per beat with ``P ∤ C``, input size,
kernel 1..4, stride 1..3, padding 0..K-1, windows that leave trailing rows/columns
unread), the code type (1..8 bits, signed, unsigned, bipolar) and the data; each example
is one build (a few seconds: builds are cached by parameters). A second problem on the
same build runs with random input gaps and output back-pressure, several images back to
back and random codes in the padding lanes.
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codesign.accel import dataflow as D
from codesign.hls import csim_nonlinear as csim
from codesign.sim import reference as ref
from codesign.sim import rtl
from codesign.sim import rtl_pool as RP

SIMS = rtl.simulators()  # the `sim` fixture over them is in conftest.py




# ---------------------------------------------------------------------------
# Python-only checks
# ---------------------------------------------------------------------------

def test_cycle_model_hand_derived():
    """2x2/2 over 4x4, C = 4 on P = 2 lanes (CF = 2), no padding: 4·4·2 = 32 slots, the
    first input at slot 0, the last window closes at slot (3·4 + 3)·2 + 1 = 31, so one
    image takes 32 + D_POOL = 34 cycles and every further image 32 more. With a 3x3/1
    window and padding 1 over 3x3 (C = 1): the padded grid is 5x5, the first real slot is
    (1·5 + 1) = 6, the last window closes at slot 4·5 + 4 = 24: 24 - 6 + 1 + 2 = 21."""
    assert RP.D_POOL == D.D_POOL == 2
    c = RP.PoolConfig(C=4, P=2, H=4, W=4, K=2, S=2)
    assert RP.pool_cycles(c) == 34 and RP.pool_cycles(c, 3) == 34 + 2 * 32
    c = RP.PoolConfig(C=1, P=1, H=3, W=3, K=3, S=1, PAD=1)
    assert RP.pool_cycles(c) == 21
    # 2x2/2 over 5x5: the last row and column are read after the last output (floor mode)
    c = RP.PoolConfig(C=1, P=1, H=5, W=5, K=2, S=2)
    assert RP.pool_cycles(c) == (3 * 5 + 3) + 1 + 2


@settings(max_examples=300, deadline=None)
@given(C=st.integers(1, 9), P=st.integers(1, 9), H=st.integers(1, 9), W=st.integers(1, 9), K=st.integers(1, 4),
       S=st.integers(1, 3), PAD=st.integers(0, 3), n=st.integers(1, 3))
def test_cost_model_cycles_equal_runner(C, P, H, W, K, S, PAD, n):
    """accel.dataflow.pool_cycles (closed form, the cost model) == rtl_pool.pool_cycles
    (slot indices, the RTL's derivation) over random geometries."""
    if P > C or PAD >= K or H + 2 * PAD < K or W + 2 * PAD < K:
        return
    cfg = RP.PoolConfig(C=C, P=P, H=H, W=W, K=K, S=S, PAD=PAD)
    pool = D.Pool("p", C=C, ifm_h=H, ifm_w=W, k=K, stride=S, pad=PAD, bits=8)
    assert D.pool_cycles(pool, P, n) == RP.pool_cycles(cfg, n)
    assert D.pool_stream_cycles(pool, P) == (H + 2 * PAD) * (W + 2 * PAD) * -(-C // P)


def test_config_errors():
    with pytest.raises(ValueError, match="PAD < K"):
        RP.PoolConfig(C=2, P=1, H=4, W=4, K=2, S=2, PAD=2)
    with pytest.raises(ValueError, match="P <= C"):
        RP.PoolConfig(C=2, P=3, H=4, W=4, K=2, S=2)
    with pytest.raises(ValueError, match="does not fit"):
        RP.PoolConfig(C=2, P=1, H=1, W=4, K=3, S=1)
    with pytest.raises(ValueError, match="bipolar"):
        RP.PoolConfig(C=2, P=1, H=4, W=4, K=2, S=2, bits=1, signed=False)


LINT_SETS = [
    dict(C=4, P=2, H=4, W=4, K=2, S=2, PAD=0, B=8, SIGNED=1),
    dict(C=3, P=1, H=5, W=6, K=3, S=1, PAD=1, B=4, SIGNED=1),
    dict(C=8, P=8, H=3, W=3, K=1, S=1, PAD=0, B=2, SIGNED=0),
    dict(C=5, P=2, H=7, W=5, K=3, S=2, PAD=2, B=1, SIGNED=0),
    dict(C=64, P=4, H=16, W=16, K=3, S=2, PAD=1, B=4, SIGNED=0),
]


def test_verilator_lint_clean():
    """pool.v passes `verilator --lint-only -Wall` (K = 1, P ∤ C, padding, 1-bit codes)."""
    exe = rtl.verilator_path()
    if exe is None:
        pytest.fail(rtl.simulator_problem("verilator"))
    env = {**os.environ, **rtl._verilator_env()}
    for params in LINT_SETS:
        cmd = [str(exe), "--lint-only", "-Wall", "-Wno-DECLFILENAME", "--top-module", "pool",
               *[f"-G{k}={v}" for k, v in params.items()], str(rtl.RTL_DIR / "pool.v")]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert out.returncode == 0 and "%Warning" not in out.stderr, f"{params}:\n{out.stderr}"


# ---------------------------------------------------------------------------
# Simulation
# ---------------------------------------------------------------------------

def _codes(rng, t: ref.IntType, shape) -> np.ndarray:
    if t.bipolar:
        return rng.choice(np.array([-1, 1]), size=shape)
    return rng.integers(t.lo, t.hi + 1, size=shape)


def _check_three_faces(cfg: RP.PoolConfig, x: np.ndarray, run: RP.PoolRun, stalled: bool) -> None:
    t = cfg.in_type
    want = ref.maxpool2d(x, cfg.K, cfg.S, cfg.PAD, t)
    got_csim = csim.maxpool2d(x, cfg.K, cfg.S, cfg.PAD, t)
    assert np.array_equal(got_csim, want), f"csim != reference for {cfg}"
    assert np.array_equal(run.y, want), f"RTL != reference for {cfg}:\nrtl {run.y}\nref {want}"
    if stalled:
        assert run.cycles >= run.expected_cycles
    else:
        assert run.cycles == run.expected_cycles == RP.pool_cycles(cfg, x.shape[0])


@st.composite
def pool_configs(draw) -> RP.PoolConfig:
    K = draw(st.integers(1, 4))
    S = draw(st.integers(1, 3))
    PAD = draw(st.integers(0, K - 1))
    H = draw(st.integers(max(1, K - 2 * PAD), 7))
    W = draw(st.integers(max(1, K - 2 * PAD), 7))
    C = draw(st.integers(1, 6))
    P = draw(st.integers(1, C))
    bits = draw(st.integers(1, 8))
    signed = True if bits == 1 else draw(st.booleans())
    return RP.PoolConfig(C=C, P=P, H=H, W=W, K=K, S=S, PAD=PAD, bits=bits, signed=signed)


@pytest.mark.rtl
@pytest.mark.parametrize("sim", SIMS)
@settings(max_examples=8, deadline=None)
@given(cfg=pool_configs(), seed=st.integers(0, 2**32 - 1), corner=st.sampled_from(["random", "lo", "hi", "few"]))
def test_maxpool_rtl_equals_reference_and_csim(sim, cfg, seed, corner):
    """Random geometry and code type: RTL == reference == csim, cycles == model; a second
    run on the same build with stalls, 2 images and random padding lanes."""
    rng = np.random.default_rng(seed)
    t = cfg.in_type
    x = _codes(rng, t, (1, cfg.C, cfg.H, cfg.W))
    if corner == "lo":  # every real element is lo: a padded lo must not change anything
        x[:] = t.lo
    elif corner == "hi":
        x[:] = t.hi
    elif corner == "few":  # two values only: many ties
        x = np.where(rng.random(x.shape) < 0.5, t.lo, t.hi)
    x2 = _codes(rng, t, (2, cfg.C, cfg.H, cfg.W))
    pad_lanes = _codes(rng, t, (2, cfg.CF * cfg.P - cfg.C, cfg.H, cfg.W))
    runs = RP.run_pools(cfg, [dict(x=x), dict(x=x2, stall=0.3, seed=seed % 1000, pad_lanes=pad_lanes),
                              dict(x=x2)], sim=sim)
    _check_three_faces(cfg, x, runs[0], stalled=False)
    _check_three_faces(cfg, x2, runs[1], stalled=True)
    _check_three_faces(cfg, x2, runs[2], stalled=False)


@pytest.mark.rtl
@pytest.mark.parametrize("cfg", [
    RP.PoolConfig(C=8, P=4, H=6, W=6, K=2, S=2, bits=1, signed=True),            # BNN pool, bipolar
    RP.PoolConfig(C=3, P=2, H=5, W=5, K=3, S=2, PAD=1, bits=8, signed=True),     # ResNet stem-like 3x3/2 p1
    RP.PoolConfig(C=2, P=1, H=4, W=7, K=3, S=1, PAD=2, bits=3, signed=False),    # PAD = K - 1, overlapping
], ids=["bipolar2x2", "int8_3x3s2p1", "uint3_3x3s1p2"])
def test_maxpool_rtl_fixed(sim, cfg):
    """Fixed configurations the CNNs use (and PAD = K - 1, the widest padding §9 allows)."""
    rng = np.random.default_rng(cfg.C * 100 + cfg.K)
    x = _codes(rng, cfg.in_type, (2, cfg.C, cfg.H, cfg.W))
    run = RP.run_pools(cfg, [dict(x=x)], sim=sim)[0]
    _check_three_faces(cfg, x, run, stalled=False)


# ---------------------------------------------------------------------------
# Cost model: IR maxpool2d -> pool unit attached to its layer
# ---------------------------------------------------------------------------

def test_ir_maxpool_costed_as_pool_unit():
    """map_ir attaches a maxpool2d fed by a thresholded conv to that layer (costed with the
    layer's PE as lanes); a maxpool of a graph input stays not modelled, with the reason;
    layers_from_ir returns the MVAU layers without pools (as before)."""
    from codesign.accel import ir as irm
    from codesign.accel.dataflow_ir import layers_from_ir, map_ir

    i8, u2 = irm.CodeType(8, True), irm.CodeType(2, False)
    tensors, consts, ops = {}, {}, []
    sc = irm.Scale.scalar(1.0)
    tensors["x"] = irm.Tensor((1, 4, 6, 6), "code", type=i8, scale=sc)
    consts["w0"] = irm.Constant(irm.CodeType(4), np.ones((8, 4, 3, 3)))
    tensors["a0"] = irm.Tensor((1, 8, 6, 6), "acc", acc_bits=16, scale=sc)
    ops.append(irm.Op("conv2d_0", "conv2d", ["x", "w0"], ["a0"], dict(
        stride=[1, 1], pad=[1, 1, 1, 1], dilation=[1, 1], groups=1, x_type=i8.to_json(),
        w_type=irm.CodeType(4).to_json(), acc_bits=16)))
    consts["t0"] = irm.Constant(irm.CodeType(17), np.tile(np.arange(3), (8, 1)))
    tensors["y0"] = irm.Tensor((1, 8, 6, 6), "code", type=u2, scale=sc)
    ops.append(irm.Op("threshold_0", "threshold", ["a0", "t0"], ["y0"], dict(out_bias=0, bipolar=False)))
    tensors["p0"] = irm.Tensor((1, 8, 3, 3), "code", type=u2, scale=sc)
    ops.append(irm.Op("maxpool2d_0", "maxpool2d", ["y0"], ["p0"], dict(kernel=[2, 2], stride=[2, 2], pad=[0, 0],
                                                                       in_type=u2.to_json())))
    tensors["p1"] = irm.Tensor((1, 4, 3, 3), "code", type=i8, scale=sc)
    ops.append(irm.Op("maxpool2d_1", "maxpool2d", ["x"], ["p1"], dict(kernel=[3, 3], stride=[2, 2], pad=[1, 1],
                                                                      in_type=i8.to_json())))
    ir = irm.IR("t", [], [], tensors, consts, ops)
    m = map_ir(ir)
    (ml,) = m.layers
    assert ml.pool == "maxpool2d_0"
    assert ml.layer.pool == D.Pool("maxpool2d_0", C=8, ifm_h=6, ifm_w=6, k=2, stride=2, pad=0, bits=2)
    assert ml.as_dict()["pool"] == {"op": "maxpool2d_0", "k": 2, "stride": 2, "pad": 0, "C": 8, "ifm_h": 6,
                                    "ifm_w": 6, "bits": 2}
    nm = {d["name"]: d["reason"] for d in m.not_modelled}
    assert "maxpool2d_0" not in nm and "graph input" in nm["maxpool2d_1"]
    (plain,) = layers_from_ir(ir)
    assert plain.pool is None and plain == dataclasses_replace(ml.layer, pool=None)
    # costs: the pool's slots (6·6·ceil(8/PE)) never exceed the MVAU's here; resources add up
    L = ml.layer
    for pe, simd in [(1, 1), (2, 4), (8, 36)]:
        want = max(D.mvau_stream_cycles(8, 36, pe, simd, 36), 6 * 6 * -(-8 // pe),
                   D.swu_read_cycles(L.window, simd))
        assert int(D.layer_cycles(L, pe, simd)) == want
        assert (D.layer_resources(L, pe, simd) == D.layer_resources(plain, pe, simd)
                + D.pool_resources(L.pool, pe))
    # with SIMD = MW (one beat per vector) and padding the pool's slots are the bottleneck
    Lp = dataclasses_replace(L, pool=D.Pool("p", C=8, ifm_h=6, ifm_w=6, k=3, stride=1, pad=2, bits=2))
    assert int(D.layer_cycles(Lp, 8, 36)) == 10 * 10 * 1 > 36
    est = D.evaluate([L], [(2, 4)], "zcu102")
    assert est.resources["lut"] == int(np.ceil(D.layer_resources(L, 2, 4).lut - 1e-9))


def dataclasses_replace(obj, **kw):
    import dataclasses

    return dataclasses.replace(obj, **kw)
