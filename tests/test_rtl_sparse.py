"""RTL of the block-sparse MVAU (sim/rtl/mvau_sparse.v) == codesign.sim.reference, and the
pruning latency model checked against its cycle counts.

Outputs: every simulated accumulator is compared with ``==`` against ``ref.matmul`` of the
activations and the *masked* weights (pruned blocks zero; in binary mode the weights are
bipolar inside the stored blocks, so the reference is a {-1, 0, +1} matmul, which equals
the XNOR-popcount of the stored blocks), every code against ``ref.threshold`` of the
reference accumulator. Cycles: every run without stalls ``==`` the RTL's cycle model
``V·max(SF, T) + min(SF, T) + 5`` (sim/rtl/mvau_sparse.v's header), ``T = NB + NE``.

Latency model (docs/pruning.md "RTL check of the latency model"): on one layer and masks
chosen by ``quantize.pruning.project_latency`` at several budgets, the RTL's cycles minus
its one-vector fill and pipeline depth ``==`` the HLS kernel's C-simulated iteration count
(``hls.sparse.sparse_matmul_ex``) ``==`` ``hls.sparse.sparse_trips`` ``==`` the pruning
model (``PiecewiseLinear`` as ``accel.prune_flow`` builds it, evaluated by
``layer_latency``) for every density; with an empty row group (which ALCS never
produces) and in the input-bound regime ``T < SF`` the test pins down the exact gap.

Coverage: binary and low-bit (1..8-bit weights and activations, signed, unsigned,
bipolar) modes, LUT and DSP products, 0/1/3/15 thresholds, signed codes; densities 1,
about 0.6 and 0.3, a fully empty row group, every block pruned (NB = 0), a single block;
MW % SIMD != 0 and MH % PE != 0 with random codes in the padding lanes; a build whose
block memory holds fewer blocks than the dense matrix (``nb_max``); input gaps and
output back-pressure. Verilator always, Icarus when installed (the ``sim`` fixture).

Requant mode (mvau_sparse.v ``RQ = 1``, as mvau.v's): codes ``==``
``ref.requant(acc + bias, M, sh, Y)`` of the reference accumulator of the masked weights
(tests/test_rtl_mvau.py's call) with per-channel bias / M / shift (extreme biases, M = 0,
1 and 2^mbits - 1, shifts 0 and 62, both saturation ends), signed and unsigned 4..8-bit
outputs, every density kind (an empty row group: requant of the bias alone); cycles
``==`` ``V·max(SF, T) + min(SF, T) + 7``.
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from codesign.accel import dataflow as D
from codesign.hls import sparse as HS
from codesign.quantize import pruning as P
from codesign.sim import reference as ref
from codesign.sim import rtl
from codesign.sim import rtl_mvau_sparse as S
from codesign.sim.rtl_mvau import requant_params


# ---------------------------------------------------------------------------
# Python-only checks
# ---------------------------------------------------------------------------

def test_cycle_model_hand_derived():
    """T >= SF: the schedule is the bottleneck, one fill of SF beats first; T < SF: the
    input is (SF per vector), the last vector's T slots after it; + 5 pipeline edges."""
    assert S.D_MVAU_SPARSE == 5
    # NRG = 3 row groups of 5 column groups, 7 blocks + 1 empty row group: T = 8 >= SF = 5
    assert S.sparse_rtl_cycles(T=8, SF=5, vectors=4) == 5 + 4 * 8 + 5
    # every block pruned over 3 row groups: T = 3 bias-only slots < SF = 5
    assert S.sparse_rtl_cycles(T=3, SF=5, vectors=4) == 4 * 5 + 3 + 5
    # density 1 is the dense MVAU plus one vector's fill
    assert S.sparse_rtl_cycles(T=3 * 5, SF=5, vectors=2) == D.mvau_cycles(MH=10, MW=37, PE=4, SIMD=8, vectors=2) + 5
    with pytest.raises(ValueError, match="positive"):
        S.sparse_rtl_cycles(T=0, SF=5, vectors=1)


def test_config_and_weight_errors():
    with pytest.raises(ValueError, match="PE <= MH"):
        S.SparseMvauConfig(MH=4, MW=8, PE=5, SIMD=2)
    with pytest.raises(ValueError, match="nb_max"):
        S.SparseMvauConfig(MH=4, MW=8, PE=2, SIMD=2, nb_max=9)
    cfg = S.SparseMvauConfig(MH=4, MW=8, PE=2, SIMD=4, WB=1, AB=1, binary=True)
    w = np.ones((4, 8), dtype=np.int64)
    w[0, 1] = 0  # a zero inside a stored bipolar block
    with pytest.raises(ValueError, match="whole"):
        S.pack_masked(cfg, w)
    w[0, 1] = -2
    with pytest.raises(ValueError, match="-1/\\+1"):
        S.pack_masked(cfg, w)
    small = S.SparseMvauConfig(MH=4, MW=8, PE=2, SIMD=4, nb_max=2)
    with pytest.raises(ValueError, match="capacity"):
        S.pack_masked(small, np.ones((4, 8), dtype=np.int64))


def test_csr_writes_follow_kernel_arrays():
    """The memory image is pack_sparse(...).kernel_arrays(): row_ptr, col_idx, and vals
    lane j of PE p at [WB·j +: WB] (hand-built 2 x 2 block example)."""
    cfg = S.SparseMvauConfig(MH=2, MW=4, PE=1, SIMD=2, WB=4, AB=4)
    w = np.array([[0, 0, 3, -1], [0, 0, 0, 0]])
    sw = S.pack_masked(cfg, w)
    wr = S.csr_writes(cfg, sw)
    assert wr["rp"] == [[0, 0], [1, 1], [2, 1]]
    assert wr["col"] == [[0, 1]]
    assert wr["wgt"] == [[0, 0, 3 | (0xF << 4)]]


def _lint_sets() -> list[dict]:
    return [c.parameters() for c, _ in (*CONFIGS.values(), *RQ_CONFIGS.values())] + [
        {**S.SparseMvauConfig(MH=64, MW=576, PE=8, SIMD=32, WB=1, AB=1, binary=True, NT=0, rq=True,
                              acc_out=False, nb_max=100).parameters()},
        {"MH": 1, "MW": 1, "PE": 1, "SIMD": 1, "WB": 2, "AB": 1, "NT": 0},
        {"MH": 64, "MW": 576, "PE": 8, "SIMD": 32, "WB": 1, "AB": 1, "BINARY": 1, "NT": 1, "NB_MAX": 100},
        {"MH": 16, "MW": 64, "PE": 4, "SIMD": 8, "WB": 8, "AB": 8, "RESTYPE": 1, "NT": 255, "OUT_BIAS": -128,
         "NB_MAX": 1},
        {"MH": 16, "MW": 72, "PE": 16, "SIMD": 72, "WB": 4, "AB": 4, "NB_MAX": 1},
    ]


def test_verilator_lint_clean():
    """mvau_sparse.v (+ requant.v) passes `verilator --lint-only -Wall` for the tested
    parameter sets (threshold, raw and requant modes) and more."""
    exe = rtl.verilator_path()
    if exe is None:
        pytest.fail(rtl.simulator_problem("verilator"))
    env = {**os.environ, **rtl._verilator_env()}
    for params in _lint_sets():
        cmd = [str(exe), "--lint-only", "-Wall", "-Wno-DECLFILENAME", "--top-module", "mvau_sparse",
               *[f"-G{k}={v}" for k, v in params.items()], *(str(rtl.RTL_DIR / f) for f in S.MVAU_SPARSE_SOURCES)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert out.returncode == 0 and "%Warning" not in out.stderr, f"{params}:\n{out.stderr}"


# ---------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------

def _codes(rng, t: ref.IntType, shape) -> np.ndarray:
    if t.bipolar:
        return rng.choice(np.array([-1, 1]), size=shape)
    return rng.integers(t.lo, t.hi + 1, size=shape)


def _expand(cfg: S.SparseMvauConfig, bmask: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(bmask, cfg.PE, 0), cfg.SIMD, 1)[:cfg.MH, :cfg.MW]


def _block_mask(rng, cfg: S.SparseMvauConfig, kind: str) -> np.ndarray:
    """(NRG, SF) kept blocks: "full", "dense60"/"sparse30" (random at that density, row
    group 0 emptied for "sparse30"), "empty" (nothing kept), "one" (a single block)."""
    shape = (cfg.NRG, cfg.SF)
    if kind == "full":
        m = np.ones(shape, dtype=bool)
    elif kind == "empty":
        m = np.zeros(shape, dtype=bool)
    elif kind == "one":
        m = np.zeros(shape, dtype=bool)
        m[rng.integers(cfg.NRG), rng.integers(cfg.SF)] = True
    else:
        d = {"dense60": 0.6, "sparse30": 0.3}[kind]
        m = rng.random(shape) < d
        if kind == "sparse30":
            m[0] = False  # a fully empty row group
            if cfg.NRG > 1 and not m[1:].any():
                m[-1, -1] = True
    if m.sum() > cfg.capacity:  # a reduced-capacity build: keep the first nb_max blocks
        keep = np.flatnonzero(m.reshape(-1))[:cfg.capacity]
        m = np.zeros(m.size, dtype=bool)
        m[keep] = True
        m = m.reshape(shape)
    return m


def _weights(rng, cfg: S.SparseMvauConfig, bmask: np.ndarray) -> np.ndarray:
    """Masked weights: random codes in the kept blocks (bipolar: -1/+1; multi-bit codes
    may be 0, and a kept block whose codes all come out 0 is simply not stored)."""
    w = _codes(rng, cfg.w_type, (cfg.MH, cfg.MW))
    return np.where(_expand(cfg, bmask), w, 0)


def _reference_acc(cfg: S.SparseMvauConfig, x: np.ndarray, wm: np.ndarray) -> np.ndarray:
    """The independent reference: §2 matmul of the activations and the masked weights
    (a bipolar weight type widened to 2-bit signed to hold the pruned zeros)."""
    wt = ref.IntType(2, True) if cfg.w_type.bipolar else cfg.w_type
    return ref.matmul(x, wm.T, a_type=cfg.a_type, w_type=wt)


def _thresholds(rng, cfg: S.SparseMvauConfig, acc: np.ndarray) -> np.ndarray | None:
    if cfg.NT == 0:
        return None
    lo, hi = cfg.dense.acc_range
    T = np.empty((cfg.MH, cfg.NT), dtype=np.int64)
    for n in range(cfg.MH):
        pool = np.concatenate([rng.integers(lo, hi + 2, size=cfg.NT), acc[:, n], [0]])  # 0: empty row groups
        if n % 3 == 1:
            pool = np.concatenate([pool, [lo - 3, lo, hi + 1, hi + 5]])
        if n % 3 == 2:
            pool = np.concatenate([acc[:, n] + d for d in (-1, 0, 1)])
        T[n] = np.sort(rng.choice(pool, size=cfg.NT, replace=True))
    return T


def _problem(rng, cfg: S.SparseMvauConfig, V: int, kind: str, **kw) -> dict:
    bmask = _block_mask(rng, cfg, kind)
    x = _codes(rng, cfg.a_type, (V, cfg.MW))
    wm = _weights(rng, cfg, bmask)
    if kind == "full" and V >= 2 and cfg.MH >= 2:
        # accumulators at both ends of the §2 range (inside the kept blocks)
        wt, em = cfg.w_type, _expand(cfg, bmask)
        x[0], x[1] = cfg.a_type.lo, cfg.a_type.hi
        wm[0], wm[1] = np.where(em[0], wt.lo, 0), np.where(em[1], wt.hi, 0)
    x_pad = _codes(rng, cfg.a_type, (V, cfg.SF * cfg.SIMD))
    acc = _reference_acc(cfg, x, wm)
    return dict(x=x, w=wm, T=_thresholds(rng, cfg, acc), x_pad=x_pad, kind=kind, **kw)


#: name -> (build configuration, vectors per problem)
CONFIGS = {
    "binary_ragged": (S.SparseMvauConfig(MH=10, MW=37, PE=4, SIMD=8, WB=1, AB=1, binary=True, NT=1), 3),
    "binary_parallel_3t": (S.SparseMvauConfig(MH=6, MW=16, PE=6, SIMD=16, WB=1, AB=1, binary=True, NT=3), 3),
    "w2a2_signed_out": (S.SparseMvauConfig(MH=7, MW=20, PE=3, SIMD=6, WB=2, AB=2, NT=3, out_bias=-2), 3),
    "w4a4_unsigned_15t": (S.SparseMvauConfig(MH=8, MW=24, PE=2, SIMD=8, WB=4, AB=4, a_signed=False, NT=15), 3),
    "w8a8_dsp_raw": (S.SparseMvauConfig(MH=5, MW=9, PE=1, SIMD=1, WB=8, AB=8, restype=1, NT=0), 2),
    "w1_bipolar_a3": (S.SparseMvauConfig(MH=5, MW=11, PE=2, SIMD=3, WB=1, AB=3, NT=1), 3),
    "w4_a1_bipolar": (S.SparseMvauConfig(MH=4, MW=10, PE=4, SIMD=5, WB=4, AB=1, NT=2, out_bias=-1), 3),
    "w3a4_nbmax5": (S.SparseMvauConfig(MH=8, MW=32, PE=2, SIMD=4, WB=3, AB=4, NT=1, nb_max=5), 2),
}

KINDS = ("full", "dense60", "sparse30", "empty", "one")


def _check(cfg: S.SparseMvauConfig, prob: dict, run: S.SparseMvauRun, stalled: bool) -> None:
    acc = _reference_acc(cfg, prob["x"], prob["w"])
    where = f"{prob['kind']} (NB={run.nb}, NE={run.ne})"
    assert np.array_equal(run.acc, acc), f"{where}: accumulators differ:\nrtl {run.acc}\nref {acc}"
    want = acc if cfg.NT == 0 else ref.threshold(acc, prob["T"], out_bias=cfg.out_bias)
    assert np.array_equal(run.codes, want), f"{where}: codes differ:\nrtl {run.codes}\nref {want}"
    sw = HS.pack_sparse(prob["w"], cfg.PE, cfg.SIMD)
    assert (run.nb, run.ne) == (sw.nb, sw.empty_row_groups)
    V = prob["x"].shape[0]
    if stalled:
        assert run.cycles >= run.expected_cycles
    else:
        assert run.cycles == run.expected_cycles == S.sparse_rtl_cycles(run.nb + run.ne, cfg.SF, V)


@pytest.mark.rtl
@pytest.mark.parametrize("name", list(CONFIGS))
def test_sparse_mvau_matches_reference(sim, name):
    """Every density kind on one build (the CSR memories rewritten per problem): codes and
    accumulators == reference, cycles == model; then a run with gaps and back-pressure."""
    cfg, V = CONFIGS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    probs = [_problem(rng, cfg, V, k) for k in KINDS]
    probs.append(_problem(rng, cfg, V + 2, "dense60", stall=0.3, seed=7))
    runs = S.run_sparse_mvaus(cfg, probs, sim=sim)
    for prob, run in zip(probs, runs):
        _check(cfg, prob, run, stalled=prob.get("stall", 0) > 0)
    kinds = {p["kind"]: r for p, r in zip(probs, runs)}
    assert kinds["empty"].nb == 0 and kinds["empty"].ne == cfg.NRG


# ---------------------------------------------------------------------------
# The pruning latency model, checked against the RTL
# ---------------------------------------------------------------------------

#: a conv-like layer: 16 output channels, K = 8·3·3 = 72, PE = 1, SIMD = 8 (NRG = 16,
#: CG = 9: every ALCS mask keeps >= 16 >= SF blocks, so the unit is compute-bound)
LAT_CFG = S.SparseMvauConfig(MH=16, MW=72, PE=1, SIMD=8, WB=4, AB=4, a_signed=False, NT=0)
LAT_V = 6   # output pixels streamed


def _alcs_masks(rng, fractions) -> list[np.ndarray]:
    """Block masks from pruning.project_latency (per_row_group, as `codesign prune`) at
    budgets of the given fractions of the dense latency, on random group norms."""
    cfg = LAT_CFG
    spec = P.GroupSpec("conv", oc=cfg.MH, k=cfg.MW, pe=cfg.PE, simd=cfg.SIMD)
    model = P.PiecewiseLinear((0.0, 1.0), (0.0, float(LAT_V * spec.n_groups)))
    norms = rng.random((spec.row_groups, spec.col_groups)) + 0.01
    out = []
    for f in fractions:
        gm = P.project_latency({"conv": spec}, {"conv": model}, {"conv": norms}, f * LAT_V * spec.n_groups,
                               per_row_group=True)["conv"]
        out.append(gm)
    return out


def latency_points(sim: str) -> list[dict]:
    """Run LAT_CFG at ALCS masks of 4 budgets, plus one mask with an empty row group and
    one input-bound layer; return per point the density and the four counts (pruning
    model, hls sparse_trips, csim trips, RTL cycles) and the RTL's fill + depth."""
    cfg = LAT_CFG
    rng = np.random.default_rng(2026)
    spec = P.GroupSpec("conv", oc=cfg.MH, k=cfg.MW, pe=cfg.PE, simd=cfg.SIMD)
    # accel.prune_flow's per-layer model, in cycles (f_clk = 1): pixels · groups · d
    model = P.PiecewiseLinear((0.0, 1.0), (0.0, float(LAT_V * spec.n_groups)))
    masks = _alcs_masks(rng, (0.25, 0.5, 0.75, 1.0))
    holed = masks[1].copy()
    holed[3] = False   # an empty row group: ALCS (per_row_group) never makes one
    masks.append(holed)
    probs = []
    for gm in masks:
        w = rng.integers(1, 16, size=(cfg.MH, cfg.MW)) * rng.choice([-1, 1], size=(cfg.MH, cfg.MW))
        w = np.clip(w, -8, 7)   # non-zero 4-bit codes: a kept group is a stored block
        wm = np.where(_expand(cfg, gm), w, 0)
        probs.append(dict(x=rng.integers(0, 16, size=(LAT_V, cfg.MW)), w=wm, T=None, kind="alcs"))
    runs = S.run_sparse_mvaus(cfg, probs, sim=sim)
    pts = []
    for gm, prob, run in zip(masks, probs, runs):
        acc = _reference_acc(cfg, prob["x"], prob["w"])
        assert np.array_equal(run.acc, acc)
        sw = HS.pack_sparse(prob["w"], cfg.PE, cfg.SIMD)
        got, info = HS.sparse_matmul_ex(prob["x"], prob["w"].T, a_type=cfg.a_type, w_type=cfg.w_type,
                                        pe=cfg.PE, simd=cfg.SIMD, block_rows=1)
        assert np.array_equal(got, acc), "csim != reference"
        pts.append({"density": float(gm.mean()), "nb": sw.nb, "ne": sw.empty_row_groups,
                    "model": P.layer_latency(spec, model, prob["w"]),
                    "trips": HS.sparse_trips(sw.row_ptr, LAT_V), "csim_trips": info["trips"],
                    "rtl": run.cycles, "rtl_model": run.expected_cycles, "fill": cfg.SF + S.D_MVAU_SPARSE})
    # input-bound: one row group (PE = MH) of 9 column groups, 3 blocks kept: T = 3 < SF = 9
    ib = S.SparseMvauConfig(MH=4, MW=72, PE=4, SIMD=8, WB=4, AB=4, a_signed=False, NT=0)
    gm = np.zeros((1, 9), dtype=bool)
    gm[0, [1, 4, 8]] = True
    w = np.where(_expand(ib, gm), np.clip(rng.integers(1, 8, size=(4, 72)), 1, 7), 0)
    x = rng.integers(0, 16, size=(LAT_V, 72))
    run = S.run_sparse_mvaus(ib, [dict(x=x, w=w, T=None)], sim=sim)[0]
    assert np.array_equal(run.acc, _reference_acc(ib, x, w))
    sw = HS.pack_sparse(w, ib.PE, ib.SIMD)
    ispec = P.GroupSpec("fc", oc=4, k=72, pe=4, simd=8)
    imodel = P.PiecewiseLinear((0.0, 1.0), (0.0, float(LAT_V * ispec.n_groups)))
    _, info = HS.sparse_matmul_ex(x, w.T, a_type=ib.a_type, w_type=ib.w_type, pe=4, simd=8, block_rows=1)
    pts.append({"density": float(gm.mean()), "nb": sw.nb, "ne": sw.empty_row_groups,
                "model": P.layer_latency(ispec, imodel, w), "trips": HS.sparse_trips(sw.row_ptr, LAT_V),
                "csim_trips": info["trips"], "rtl": run.cycles, "rtl_model": run.expected_cycles,
                "fill": ib.SF + S.D_MVAU_SPARSE, "input_bound_sf": ib.SF})
    return pts


@pytest.mark.rtl
def test_latency_model_checked_against_rtl(sim):
    """The pruning latency model on >= 3 densities (ALCS masks at 25/50/75/100 % of the
    dense latency): RTL cycles - (SF + 5) == csim trips == sparse_trips == the pruning
    model's cycles. With an empty row group the model (kept groups only) is short by
    exactly V·NE and the RTL/csim agree; input-bound (T < SF): RTL = V·SF + T + 5."""
    pts = latency_points(sim)
    alcs, holed, ib = pts[:4], pts[4], pts[5]
    assert len({round(p["density"], 6) for p in alcs}) == 4 and alcs[-1]["density"] == 1.0
    for p in alcs:
        assert p["ne"] == 0
        assert p["rtl"] == p["rtl_model"]
        assert p["rtl"] - p["fill"] == p["csim_trips"] == p["trips"] == LAT_V * p["nb"]
        assert round(p["model"]) == p["trips"] and abs(p["model"] - p["trips"]) < 1e-6  # float model
    # density 1: the dense MVAU's count plus one vector's fill
    assert alcs[-1]["rtl"] == D.mvau_cycles(LAT_CFG.MH, LAT_CFG.MW, LAT_CFG.PE, LAT_CFG.SIMD, LAT_V) + LAT_CFG.SF
    assert holed["ne"] == 1 and holed["rtl"] == holed["rtl_model"]
    assert holed["rtl"] - holed["fill"] == holed["csim_trips"] == holed["trips"] == LAT_V * (holed["nb"] + 1)
    assert round(holed["model"]) == holed["trips"] - LAT_V * holed["ne"]
    assert ib["rtl"] == ib["rtl_model"] == LAT_V * ib["input_bound_sf"] + ib["nb"] + S.D_MVAU_SPARSE
    assert ib["csim_trips"] == ib["trips"] == LAT_V * ib["nb"] == round(ib["model"])
    # the dataflow cost model's block-sparse layer (codesign.accel.dataflow.Sparse): its
    # stream + fill + pipeline depth == the RTL's cycles at every point, input-bound included
    for p, (MH, PE) in [(q, (LAT_CFG.MH, LAT_CFG.PE)) for q in alcs + [holed]] + [(ib, (4, 4))]:
        L = D.Layer("lat", MH, LAT_CFG.MW, LAT_V, WB=4, AB=4, mode="lowbit", a_signed=False, out_bits=0,
                    sparse=D.Sparse(PE, LAT_CFG.SIMD, p["nb"], p["ne"]))
        model = (D.sparse_stream_cycles(L, PE, LAT_CFG.SIMD) + D.sparse_fill_cycles(L, LAT_CFG.SIMD)
                 + D.mvau_depth(L))
        assert model == p["rtl"], (p, model)
        assert D.dataflow_cycles([L], [(PE, LAT_CFG.SIMD)])["latency"] == p["rtl"]


# ---------------------------------------------------------------------------
# Requant output stage (mvau_sparse.v RQ = 1, as mvau.v's): bias add + requant.v per PE
# ---------------------------------------------------------------------------

#: name -> (build configuration, vectors per problem): binary and low-bit, LUT and DSP
#: products, signed and unsigned outputs of 4..8 bits, multipliers of 8..24 bits, biases
#: of 6..32 bits (a 33-bit biased accumulator: requant.v's two-product path), a reduced
#: block capacity.
RQ_CONFIGS = {
    "rq_w4a4u_s8": (S.SparseMvauConfig(MH=8, MW=24, PE=2, SIMD=8, WB=4, AB=4, a_signed=False, NT=0, rq=True,
                                       rq_bits=8, rq_signed=True, mbits=16, bias_bits=16), 3),
    "rq_binary_u5": (S.SparseMvauConfig(MH=10, MW=37, PE=4, SIMD=8, WB=1, AB=1, binary=True, NT=0, rq=True,
                                        rq_bits=5, rq_signed=False, mbits=16, bias_bits=12), 3),
    "rq_w8a8_dsp_s4_wide": (S.SparseMvauConfig(MH=5, MW=9, PE=1, SIMD=1, WB=8, AB=8, restype=1, NT=0, rq=True,
                                               rq_bits=4, rq_signed=True, mbits=24, bias_bits=32), 2),
    "rq_w2a3_u7_nbmax": (S.SparseMvauConfig(MH=7, MW=20, PE=3, SIMD=6, WB=2, AB=3, NT=0, rq=True, rq_bits=7,
                                            rq_signed=False, mbits=8, bias_bits=6, nb_max=7), 3),
}


def _rq_problem(rng, cfg: S.SparseMvauConfig, V: int, kind: str, **kw) -> dict:
    prob = _problem(rng, cfg, V, kind, **kw)
    return {**prob, "T": None, "requant": requant_params(rng, cfg.dense)}


def _rq_want(cfg: S.SparseMvauConfig, prob: dict) -> np.ndarray:
    """The independent reference (tests/test_rtl_mvau.py's _rq_want): requant (§3) of the
    reference accumulator of the masked weights with the bias added (§2)."""
    bias, Mv, sh = prob["requant"]
    acc = _reference_acc(cfg, prob["x"], prob["w"]) + bias[None, :]
    return ref.requant(acc, Mv[None, :], sh[None, :], cfg.out_type, m=cfg.mbits)


def test_requant_cycle_model_and_config():
    """Requant mode: the sparse formula with the requant depth (two stages deeper)."""
    assert S.D_MVAU_SPARSE_RQ == 7 == D.D_MVAU_RQ
    assert S.sparse_rtl_cycles(T=8, SF=5, vectors=4, requant=True) == 4 * 8 + 5 + 7
    assert S.sparse_rtl_cycles(T=3, SF=5, vectors=4, requant=True) == 4 * 5 + 3 + 7
    assert S.sparse_rtl_cycles(T=8, SF=5, vectors=4) == 4 * 8 + 5 + 5
    cfg = S.SparseMvauConfig(MH=4, MW=8, PE=2, SIMD=2, NT=0, rq=True, rq_bits=6, rq_signed=False, mbits=12,
                             bias_bits=10)
    assert cfg.depth == 7 and cfg.dense.out_bits == 6 and not cfg.dense.out_signed
    assert cfg.parameters() == {**S.SparseMvauConfig(MH=4, MW=8, PE=2, SIMD=2, NT=0).parameters(),
                                "RQ": 1, "RQ_BITS": 6, "RQ_SIGNED": 0, "MBITS": 12, "BIAS_W": 10}
    assert "RQ" not in S.SparseMvauConfig(MH=4, MW=8, PE=2, SIMD=2, NT=0).parameters()
    with pytest.raises(ValueError, match="needs NT = 0"):
        S.SparseMvauConfig(MH=4, MW=8, PE=2, SIMD=2, NT=3, rq=True)
    with pytest.raises(ValueError, match="rq_bits=1"):
        S.SparseMvauConfig(MH=4, MW=8, PE=2, SIMD=2, NT=0, rq=True, rq_bits=1)
    with pytest.raises(ValueError, match="requant"):
        S.run_sparse_mvaus(cfg, [dict(x=np.zeros((1, 8), dtype=np.int64), w=np.ones((4, 8), dtype=np.int64))])
    with pytest.raises(ValueError, match="bias"):
        S.run_sparse_mvaus(cfg, [dict(x=np.zeros((1, 8), dtype=np.int64), w=np.ones((4, 8), dtype=np.int64),
                                      requant=([512, 0, 0, 0], [1] * 4, [0] * 4))])


@pytest.mark.rtl
@pytest.mark.parametrize("name", list(RQ_CONFIGS))
def test_sparse_mvau_requant_matches_reference(sim, name):
    """Requant mode, every density kind (incl. an empty row group and NB = 0) on one build:
    codes == ref.requant(acc + bias, M, sh, Y) of the masked weights, accumulators ==
    reference, both saturation ends hit, cycles == V·max(SF, T) + min(SF, T) + 7 without
    stalls; a run with input gaps and output back-pressure."""
    cfg, V = RQ_CONFIGS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    probs = [_rq_problem(rng, cfg, V, k) for k in KINDS]
    probs.append(_rq_problem(rng, cfg, V + 2, "dense60", stall=0.3, seed=7))
    runs = S.run_sparse_mvaus(cfg, probs, sim=sim)
    seen_sat = set()
    for prob, run in zip(probs, runs):
        where = f"{prob['kind']} (NB={run.nb}, NE={run.ne})"
        assert np.array_equal(run.acc, _reference_acc(cfg, prob["x"], prob["w"])), f"{where}: accumulators differ"
        want = _rq_want(cfg, prob)
        assert np.array_equal(run.codes, want), f"{where}: codes differ:\nrtl {run.codes}\nref {want}"
        seen_sat |= {int(v) for v in np.unique(want) if v in (cfg.out_type.lo, cfg.out_type.hi)}
        sw = HS.pack_sparse(prob["w"], cfg.PE, cfg.SIMD)
        assert (run.nb, run.ne) == (sw.nb, sw.empty_row_groups)
        if prob.get("stall", 0) > 0:
            assert run.cycles >= run.expected_cycles
        else:
            T = run.nb + run.ne
            assert run.cycles == run.expected_cycles == S.sparse_rtl_cycles(T, cfg.SF, prob["x"].shape[0],
                                                                            requant=True)
            assert run.cycles == prob["x"].shape[0] * max(cfg.SF, T) + min(cfg.SF, T) + 7
    kinds = {p["kind"]: r for p, r in zip(probs, runs)}
    assert kinds["empty"].nb == 0 and kinds["empty"].ne == cfg.NRG
    assert kinds["sparse30"].ne >= 1
    assert seen_sat == {cfg.out_type.lo, cfg.out_type.hi}, "both saturation ends must be exercised"


@pytest.mark.rtl
def test_run_sparse_mvau_requant_argument(sim):
    """run_sparse_mvau(..., requant=(bias, M, sh)): one problem with an empty row group."""
    cfg, V = RQ_CONFIGS["rq_w4a4u_s8"]
    rng = np.random.default_rng(5)
    prob = _rq_problem(rng, cfg, V, "sparse30")
    run = S.run_sparse_mvau(prob["x"], prob["w"], PE=cfg.PE, SIMD=cfg.SIMD, WB=cfg.WB, AB=cfg.AB,
                            a_signed=cfg.a_signed, sim=sim, requant=prob["requant"], rq_bits=cfg.rq_bits,
                            rq_signed=cfg.rq_signed, mbits=cfg.mbits, bias_bits=cfg.bias_bits)
    assert run.ne >= 1
    assert np.array_equal(run.codes, _rq_want(cfg, prob))
    assert run.cycles == run.expected_cycles == S.sparse_rtl_cycles(run.nb + run.ne, cfg.SF, V, requant=True)
