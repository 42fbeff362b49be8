"""RTL of the streaming pooling units (sim/rtl/pool.v max, sim/rtl/avgpool.v average;
docs/dataflow.md "Pooling unit") == codesign.sim.reference.maxpool2d / avgpool2d == the csim
faces (codesign.hls.csim_nonlinear.maxpool2d / avgpool2d).

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

Average pooling (§9 window sum with the padding as 0, then §3 requant with a runtime M and
shift): the same, over random input types (bipolar included), output types (2..16 bits,
signed/unsigned), M/sh (the mean's dyadic pair, random, and the ports' extremes), global
pooling (K = H = W) and padded windows; cycles == pool_cycles with D_AVG = 4; the cost
model's average pool (Pool(mode="avg")) against its Yosys calibration rows.
"""
from __future__ import annotations

import os
import shutil
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
                                    "ifm_w": 6, "bits": 2, "mode": "max", "out_bits": 2}
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


# ---------------------------------------------------------------------------
# Average pooling (sim/rtl/avgpool.v): window sum, requant (§9, §3)
# ---------------------------------------------------------------------------

def test_avg_cycle_model_hand_derived():
    """avgpool.v walks pool.v's slots with two more stages (R3 = requant product, R4 =
    code): 2x2/2 over 4x4, C = 4 on P = 2 lanes: 32 slots, the last window closes at slot
    31, so one image takes 32 + 4 = 36 cycles. Global 4x4 (K = H = W), C = 8 on P = 4
    lanes: 4·4·2 = 32 slots, the window closes at the last slot: 32 + 4."""
    assert RP.D_AVG == D.D_POOL_AVG == 4
    c = RP.PoolConfig(C=4, P=2, H=4, W=4, K=2, S=2, avg=True)
    assert RP.pool_cycles(c) == 36 and RP.pool_cycles(c, 3) == 36 + 2 * 32
    g = RP.PoolConfig(C=8, P=4, H=4, W=4, K=4, S=1, bits=8, signed=False, avg=True)
    assert RP.pool_cycles(g) == 36
    pool = D.Pool("g", C=8, ifm_h=4, ifm_w=4, k=4, stride=1, bits=8, mode="avg", in_signed=False)
    assert D.pool_cycles(pool, 4) == 36 and D.pool_fill_cycles(pool, 4) == 36


@settings(max_examples=200, deadline=None)
@given(C=st.integers(1, 9), P=st.integers(1, 9), H=st.integers(1, 9), W=st.integers(1, 9), K=st.integers(1, 4),
       S=st.integers(1, 3), PAD=st.integers(0, 3), n=st.integers(1, 3))
def test_avg_cost_model_cycles_equal_runner(C, P, H, W, K, S, PAD, n):
    """accel.dataflow.pool_cycles of Pool(mode="avg") == rtl_pool.pool_cycles(avg=True)."""
    if P > C or PAD >= K or H + 2 * PAD < K or W + 2 * PAD < K:
        return
    cfg = RP.PoolConfig(C=C, P=P, H=H, W=W, K=K, S=S, PAD=PAD, avg=True)
    pool = D.Pool("p", C=C, ifm_h=H, ifm_w=W, k=K, stride=S, pad=PAD, bits=8, mode="avg")
    assert D.pool_cycles(pool, P, n) == RP.pool_cycles(cfg, n)
    assert D.pool_stream_cycles(pool, P) == (H + 2 * PAD) * (W + 2 * PAD) * -(-C // P)


def test_avg_config_errors():
    with pytest.raises(ValueError, match="2..16"):
        RP.PoolConfig(C=2, P=1, H=4, W=4, K=2, S=2, bits=1, signed=True, avg=True)  # bipolar output
    with pytest.raises(ValueError, match="avg=True"):
        RP.PoolConfig(C=2, P=1, H=4, W=4, K=2, S=2, out_bits=8)
    cfg = RP.PoolConfig(C=2, P=1, H=4, W=4, K=2, S=2, avg=True)
    x = np.zeros((1, 2, 4, 4), dtype=np.int64)
    with pytest.raises(ValueError, match="integer M"):
        RP.run_pools(cfg, [dict(x=x, M=1 << 24, sh=3)])
    with pytest.raises(ValueError, match="integer sh"):
        RP.run_pools(cfg, [dict(x=x, M=5, sh=63)])
    with pytest.raises(ValueError, match="max-pooling"):
        RP.run_pools(RP.PoolConfig(C=2, P=1, H=4, W=4, K=2, S=2), [dict(x=x, M=5, sh=3)])
    with pytest.raises(ValueError, match="mode"):
        D.Pool("p", C=2, ifm_h=4, ifm_w=4, k=2, stride=2, mode="sum")
    with pytest.raises(ValueError, match="out_bits"):
        D.Pool("p", C=2, ifm_h=4, ifm_w=4, k=2, stride=2, out_bits=8)


AVG_LINT_SETS = [
    dict(C=4, P=2, H=4, W=4, K=2, S=2, PAD=0, B=8, SIGNED=1, OB=8, O_SIGNED=1),
    dict(C=3, P=1, H=5, W=6, K=3, S=1, PAD=1, B=1, SIGNED=1, OB=4, O_SIGNED=0),
    dict(C=8, P=8, H=3, W=3, K=1, S=1, PAD=0, B=2, SIGNED=0, OB=16, O_SIGNED=0),
    dict(C=64, P=4, H=7, W=7, K=7, S=1, PAD=0, B=8, SIGNED=0, OB=8, O_SIGNED=1),
    dict(C=5, P=2, H=7, W=5, K=3, S=2, PAD=2, B=3, SIGNED=1, OB=2, O_SIGNED=1),
    dict(C=1, P=1, H=1, W=1, K=1, S=1, PAD=0, B=2, SIGNED=1, OB=2, O_SIGNED=0),
]


def test_avgpool_verilator_lint_clean():
    """avgpool.v (+ requant.v) passes `verilator --lint-only -Wall` (K = 1, global, padding,
    bipolar input, 2- and 16-bit outputs)."""
    exe = rtl.verilator_path()
    if exe is None:
        pytest.fail(rtl.simulator_problem("verilator"))
    env = {**os.environ, **rtl._verilator_env()}
    for params in AVG_LINT_SETS:
        cmd = [str(exe), "--lint-only", "-Wall", "-Wno-DECLFILENAME", "--top-module", "avgpool",
               *[f"-G{k}={v}" for k, v in params.items()], str(rtl.RTL_DIR / "avgpool.v"),
               str(rtl.RTL_DIR / "requant.v")]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert out.returncode == 0 and "%Warning" not in out.stderr, f"{params}:\n{out.stderr}"


def _check_avg_three_faces(cfg: RP.PoolConfig, prob: dict, run: RP.PoolRun, stalled: bool) -> None:
    x, M, sh = prob["x"], prob["M"], prob["sh"]
    t, o = cfg.in_type, cfg.out_type
    want = ref.avgpool2d(x, cfg.K, M, sh, cfg.S, cfg.PAD, t, o)
    got_csim = csim.avgpool2d(x, cfg.K, M, sh, cfg.S, cfg.PAD, t, o)
    assert np.array_equal(got_csim, want), f"csim != reference for {cfg}, M={M}, sh={sh}"
    assert np.array_equal(run.y, want), f"RTL != reference for {cfg}, M={M}, sh={sh}:\nrtl {run.y}\nref {want}"
    if stalled:
        assert run.cycles >= run.expected_cycles
    else:
        assert run.cycles == run.expected_cycles == RP.pool_cycles(cfg, x.shape[0])


@st.composite
def avg_configs(draw) -> RP.PoolConfig:
    K = draw(st.integers(1, 4))
    glob = draw(st.booleans())
    if glob:  # global average pooling: the window is the whole (square) map
        S, PAD, H = 1, 0, K
        W = K
    else:
        S = draw(st.integers(1, 3))
        PAD = draw(st.integers(0, K - 1))
        H = draw(st.integers(max(1, K - 2 * PAD), 7))
        W = draw(st.integers(max(1, K - 2 * PAD), 7))
    C = draw(st.integers(1, 6))
    P = draw(st.integers(1, C))
    bits = draw(st.integers(1, 8))
    signed = True if bits == 1 else draw(st.booleans())
    out_bits = draw(st.integers(2, 16))
    return RP.PoolConfig(C=C, P=P, H=H, W=W, K=K, S=S, PAD=PAD, bits=bits, signed=signed, avg=True,
                         out_bits=out_bits, out_signed=draw(st.booleans()))


def _requant_params(rng, cfg: RP.PoolConfig, kind: str) -> tuple[int, int]:
    """(M, sh): the §9 mean (dyadic(s_x / (K·K·s_y)) with a random scale ratio), or the
    extremes of the runtime ports (M = 0, M = 2^24 - 1, sh = 0 and 62)."""
    if kind == "mean":
        M, sh = ref.dyadic(float(rng.uniform(0.05, 4.0)) / (cfg.K * cfg.K))
        return int(M), int(sh)
    if kind == "random":
        return int(rng.integers(0, 1 << 24)), int(rng.integers(0, 63))
    return {"M0": (0, 5), "Mmax_sh0": ((1 << 24) - 1, 0), "sh62": ((1 << 24) - 1, 62),
            "sh_big": (int(rng.integers(1 << 15, 1 << 24)), 24)}[kind]


@pytest.mark.rtl
@pytest.mark.parametrize("sim", SIMS)
@settings(max_examples=8, deadline=None)
@given(cfg=avg_configs(), seed=st.integers(0, 2**32 - 1),
       kinds=st.lists(st.sampled_from(["mean", "random", "M0", "Mmax_sh0", "sh62", "sh_big"]), min_size=3,
                      max_size=3),
       corner=st.sampled_from(["random", "lo", "hi"]))
def test_avgpool_rtl_equals_reference_and_csim(sim, cfg, seed, kinds, corner):
    """Random geometry (global pooling included), input and output types and requant
    parameters: RTL == reference == csim, cycles == model; on the same build a run with
    stalls, 2 images and random padding lanes, and one more with other M, sh."""
    rng = np.random.default_rng(seed)
    t = cfg.in_type
    x = _codes(rng, t, (1, cfg.C, cfg.H, cfg.W))
    if corner == "lo":  # every sum at its most negative (or 0): saturation, padding = 0
        x[:] = t.lo
    elif corner == "hi":
        x[:] = t.hi
    x2 = _codes(rng, t, (2, cfg.C, cfg.H, cfg.W))
    pad_lanes = _codes(rng, t, (2, cfg.CF * cfg.P - cfg.C, cfg.H, cfg.W))
    (m0, s0), (m1, s1), (m2, s2) = (_requant_params(rng, cfg, k) for k in kinds)
    probs = [dict(x=x, M=m0, sh=s0), dict(x=x2, M=m1, sh=s1, stall=0.3, seed=seed % 1000, pad_lanes=pad_lanes),
             dict(x=x2, M=m2, sh=s2)]
    runs = RP.run_pools(cfg, probs, sim=sim)
    for prob, run in zip(probs, runs):
        _check_avg_three_faces(cfg, prob, run, stalled=prob.get("stall", 0) > 0)


@pytest.mark.rtl
@pytest.mark.parametrize("cfg", [
    RP.PoolConfig(C=8, P=4, H=4, W=4, K=4, S=1, bits=8, signed=False, avg=True),                 # global 4x4
    RP.PoolConfig(C=3, P=3, H=7, W=7, K=7, S=1, bits=4, signed=True, avg=True, out_bits=8),      # global 7x7
    RP.PoolConfig(C=5, P=2, H=6, W=6, K=2, S=2, bits=2, signed=False, avg=True, out_bits=4),     # 2x2/2
    RP.PoolConfig(C=4, P=2, H=5, W=5, K=3, S=1, PAD=1, bits=8, signed=True, avg=True),           # count_include_pad
    RP.PoolConfig(C=6, P=3, H=4, W=4, K=2, S=2, bits=1, signed=True, avg=True, out_bits=3),      # bipolar input
], ids=["global4x4_u8", "global7x7_i4_to_i8", "u2_2x2s2_to_u4", "i8_3x3s1p1", "bipolar_2x2_to_i3"])
def test_avgpool_rtl_fixed(sim, cfg):
    """The CNN cases: global average pooling, 2x2/2, a padded 3x3 window (the divisor
    counts the padding), a bipolar input; M, sh = dyadic(1 / (K·K)) (the exact mean when
    K·K is a power of two) and a second ratio."""
    rng = np.random.default_rng(cfg.C * 100 + cfg.K)
    x = _codes(rng, cfg.in_type, (2, cfg.C, cfg.H, cfg.W))
    mean = tuple(int(v) for v in ref.dyadic(1.0 / (cfg.K * cfg.K)))
    other = tuple(int(v) for v in ref.dyadic(0.37 / (cfg.K * cfg.K)))
    probs = [dict(x=x, M=mean[0], sh=mean[1]), dict(x=x, M=other[0], sh=other[1])]
    runs = RP.run_pools(cfg, probs, sim=sim)
    for prob, run in zip(probs, runs):
        _check_avg_three_faces(cfg, prob, run, stalled=False)


# ---------------------------------------------------------------------------
# Average pool cost model: structure and the Yosys calibration rows
# ---------------------------------------------------------------------------

def _avg_pool_of(p) -> tuple[D.Pool, int]:
    return D.Pool("pool", C=p["C"], ifm_h=p["H"], ifm_w=p["W"], k=p["K"], stride=p["S"], pad=p["PAD"], bits=p["B"],
                  mode="avg", out_bits=p["OB"], in_signed=bool(p["SIGNED"])), p["P"]


def test_avgpool_resources_structure():
    """Sum widths hand-derived from §9 (uint8 7x7: 49·255 = 12495 < 2^14 -> 15 bits signed;
    a row 7·255 = 1785 -> 12 bits; bipolar 4x4: [-16, 16] -> 6 bits), one DSP48E2 per lane
    up to an 18-bit sum and two above, and the max pool's model unchanged by the mode."""
    g = D.Pool("g", C=64, ifm_h=7, ifm_w=7, k=7, stride=1, bits=8, mode="avg", in_signed=False)
    assert D.pool_widths(g) == {"VW": 9, "HS_W": 12, "SUM_W": 15}
    b = D.Pool("b", C=32, ifm_h=4, ifm_w=4, k=4, stride=1, bits=1, mode="avg", out_bits=4)
    assert D.pool_widths(b) == {"VW": 2, "HS_W": 4, "SUM_W": 6}
    assert D.pool_resources(g, 4).dsp == 4
    # 22·22·255 = 123420 < 2^17: 18 bits signed, one DSP per lane; 23·23·255 = 134895: 19 bits, two
    wide = D.Pool("w", C=4, ifm_h=22, ifm_w=22, k=22, stride=1, bits=8, mode="avg", in_signed=False)
    assert D.pool_widths(wide)["SUM_W"] == 18 and D.pool_resources(wide, 2).dsp == 2
    wider = D.Pool("w", C=4, ifm_h=23, ifm_w=23, k=23, stride=1, bits=8, mode="avg", in_signed=False)
    assert D.pool_widths(wider)["SUM_W"] == 19 and D.pool_resources(wider, 2).dsp == 4
    mx = D.Pool("m", C=64, ifm_h=16, ifm_w=16, k=2, stride=2, bits=8)
    assert D.pool_resources(mx, 4) == D.pool_resources(D.Pool("m", C=64, ifm_h=16, ifm_w=16, k=2, stride=2,
                                                               bits=8, mode="max"), 4)


def test_avgpool_calibration_rows():
    """The "avg ..." rows of accel/dataflow_calibration.json "pool_configs" (Yosys 0.23
    synth_xilinx of avgpool.v + requant.v, written from this model): the model columns equal
    the current model and every ratio is within the file's threshold. (The LUT
    coefficients lut_avgpool_* were fitted to these 5 rows: an in-sample check.)"""
    import json
    from pathlib import Path

    doc = json.loads((Path(D.__file__).resolve().parent / "dataflow_calibration.json").read_text())
    rows = [r for r in doc["pool_configs"] if r["id"].startswith("avg ")]
    assert len(rows) >= 5
    for row in rows:
        r = D.pool_resources(*_avg_pool_of(row["params"])).rounded()
        assert row["model"] == {k: int(r[k]) for k in ("lut", "ff", "dsp", "bram18")}, row["id"]
        for k in ("lut", "ff", "dsp", "bram18"):
            y, m = row["yosys"][k], row["model"][k]
            assert (y == m == 0) or abs(m / y - 1) <= doc["threshold"], (row["id"], k, m, y)


@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not installed")
def test_avgpool_calibration_yosys_fresh():
    """One avg row re-synthesised (cached by source hash) equals the recorded counts."""
    import json
    from pathlib import Path

    from codesign.sim.yosys import synth

    doc = json.loads((Path(D.__file__).resolve().parent / "dataflow_calibration.json").read_text())
    row = next(r for r in doc["pool_configs"] if r["id"] == "avg global 4x4 C32 P8 bipolar->i4")
    c = synth("avgpool", ["requant.v", "avgpool.v"], row["params"])
    assert {"lut": c.lut, "ff": c.ff, "dsp": c.dsp, "bram18": c.bram18, "carry": c.carry} == row["yosys"]
