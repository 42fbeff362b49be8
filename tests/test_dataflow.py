"""The CNN dataflow cost model and folding search (accel/dataflow.py, docs/dataflow.md).

Cycle figures are checked against hand-derived values (the RTL side, mvau.v's measured
cycles == ``mvau_cycles``, is tests/test_rtl_mvau.py); the search against brute force
over every folding of tiny networks; resources for monotonicity; the Yosys calibration
file against the current model (and, when Yosys is installed, against a fresh synthesis
of one configuration).
"""
from __future__ import annotations

import itertools
import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from codesign.accel import dataflow as D
from codesign.accel.boards import Board


def _board(lut, ff, dsp, bram18) -> Board:
    return Board(name="tiny", part="test", lut=lut, ff=ff, dsp=dsp, bram18=bram18, uram=0)


# ---------------------------------------------------------------------------
# cycles, hand-derived
# ---------------------------------------------------------------------------

def test_cycles_hand_derived():
    # 3x3x16 conv on 8x8, pad 1: MW = 144, 64 output pixels, MH = 32
    w = D.Window(k=3, C=16, ifm_h=8, ifm_w=8, stride=1, pad=1)
    assert (w.ofm_h, w.ofm_w) == (8, 8)
    conv = D.Layer("conv", MH=32, MW=144, vectors=64, WB=2, AB=2, mode="lowbit", out_bits=2, window=w)
    # NF = 32/4 = 8, SF = 144/16 = 9: 8*9*64 = 4608 (the SWU reads 8*8*16/16 = 64 beats)
    assert D.layer_cycles(conv, 4, 16) == 4608
    # the window fill: 2 padded rows of 10 pixels + 3 pixels, 16/16 beats each = 23
    assert D.window_fill_cycles(w, 16) == 23
    assert D.window_fill_cycles(w, 4) == 23 * 4
    # stride 2, 1x1 kernel: 16 output pixels but 64 input pixels to read
    w2 = D.Window(k=1, C=8, ifm_h=8, ifm_w=8, stride=2)
    pool = D.Layer("s2", MH=8, MW=8, vectors=16, WB=2, AB=2, mode="lowbit", window=w2)
    assert D.layer_cycles(pool, 8, 8) == max(16, 64) == 64
    fc = D.Layer("fc", MH=10, MW=256, vectors=1)
    assert D.layer_cycles(fc, 2, 64) == 5 * 4
    # a single layer: latency == the RTL's run length mvau_cycles
    one = D.dataflow_cycles([fc], [(2, 64)])
    assert one["ii"] == 20 and one["latency"] == D.mvau_cycles(10, 256, 2, 64, 1) == 25
    # chain conv -> fc: II = 4608 (conv), latency = II + (5 + 23) + 5 + (fc's one vector: 20)
    c = D.dataflow_cycles([conv, fc], [(4, 16), (2, 64)])
    assert c["layer_cycles"] == [4608, 20] and c["ii"] == 4608 and c["bottleneck"] == 0
    assert c["latency"] == 4608 + 28 + 5 + 20
    assert c["latency_bound"] == 4608 + 20 + 28 + 5
    with pytest.raises(ValueError, match="2 foldings"):
        D.dataflow_cycles([conv], [(1, 1), (1, 1)])


def test_widths_match_the_contract():
    """ACC_W is docs/arithmetic.md §2's exact width (hand-derived): uint4 x int4 over 64
    products: [64*(-120), 64*105] -> 14 bits; binary 37: [-37, 37] -> 7 bits."""
    l = D.Layer("a", MH=4, MW=64, WB=4, AB=4, mode="lowbit", a_signed=False, out_bits=4)
    w = D.widths(l, 8)
    assert (w["AE"], w["WE"], w["PW"], w["ACC_W"], w["TW"], w["OB"], w["SUM_W"]) == (5, 4, 9, 14, 15, 4, 11)
    b = D.widths(D.Layer("b", MH=4, MW=37), 8)
    assert (b["ACC_W"], b["POP_W"], b["CNT_W"], b["OB"]) == (7, 6, 4, 1)


def test_layer_errors_are_one_line():
    for kw in (dict(WB=2), dict(mode="ternary"), dict(out_bits=9), dict(res_type="dsp")):
        with pytest.raises(ValueError) as e:
            D.Layer("bad", MH=4, MW=8, **kw)
        assert "\n" not in str(e.value) and "'bad'" in str(e.value)
    with pytest.raises(ValueError, match="MW must be 72"):
        D.Layer("c", MH=4, MW=70, vectors=36, window=D.Window(k=3, C=8, ifm_h=8, ifm_w=8))


# ---------------------------------------------------------------------------
# resources
# ---------------------------------------------------------------------------

def test_resources_monotone():
    """More parallelism never costs fewer LUTs/FFs/DSPs while the memories stay in LUTRAM;
    wider operands never cost less; DSP products appear exactly in DSP mode."""
    small = D.Layer("s", MH=16, MW=32, vectors=4, WB=4, AB=4, mode="lowbit", out_bits=2)
    prev = None
    for pe in (1, 2, 4, 8, 16):
        r = D.mvau_resources(small, pe, 4)
        assert r.bram18 == 0
        if prev is not None:
            assert r.lut >= prev.lut and r.ff >= prev.ff
        prev = r
    prev = None
    for simd in (1, 2, 4, 8, 16, 32):
        r = D.mvau_resources(small, 4, simd)
        if prev is not None:
            assert r.lut >= prev.lut and r.ff >= prev.ff
        prev = r
    luts = [D.mvau_resources(D.Layer("b", MH=16, MW=32, WB=wb, AB=ab, mode="lowbit", res_type="lut"), 4, 8).lut
            for wb, ab in ((2, 2), (3, 3), (4, 4), (6, 6), (8, 8))]
    assert luts == sorted(luts)
    dsp = D.Layer("d", MH=16, MW=32, WB=8, AB=8, mode="lowbit", res_type="dsp")
    assert D.mvau_resources(dsp, 4, 8).dsp == 32 and D.mvau_resources(small, 4, 8).dsp == 0
    assert D.mult_on_dsp(D.Layer("auto", MH=4, MW=4, WB=4, AB=8, mode="lowbit"))
    assert not D.mult_on_dsp(D.Layer("auto", MH=4, MW=4, WB=4, AB=4, mode="lowbit"))
    # big weight memories go to RAMB18: 64x576 binary at PE 4, SIMD 32: 288 x 32 per PE
    big = D.Layer("big", MH=64, MW=576)
    assert D.mvau_resources(big, 4, 32).bram18 == 4
    # the SWU's line buffer grows with the image width
    w1 = D.Layer("w1", MH=8, MW=72, vectors=64, WB=2, AB=2, mode="lowbit",
                 window=D.Window(k=3, C=8, ifm_h=8, ifm_w=8, pad=1))
    w2 = D.Layer("w2", MH=8, MW=72, vectors=4096, WB=2, AB=2, mode="lowbit",
                 window=D.Window(k=3, C=8, ifm_h=64, ifm_w=64, pad=1))
    r1, r2 = D.swu_resources(w1, 8), D.swu_resources(w2, 8)
    assert r2.lut + 100 * r2.bram18 > r1.lut + 100 * r1.bram18


def test_calibration_file_matches_model():
    """accel/dataflow_calibration.json (bench/dataflow_crosscheck.py --write): the MVAU rows
    are exactly the bench's CONFIGS (threshold, then requant RQ_CALIBRATION), the pool rows
    its POOL_CONFIGS (max, then avg), every ratio within 25 %, the model columns equal the
    current model and the coefficients block equals COEFFS (rerun --write after a model
    change)."""
    from codesign.bench import dataflow_crosscheck as X
    from codesign.bench.dataflow_crosscheck import RQ_CALIBRATION, rq_model_counts

    doc = json.loads(X.CALIBRATION_PATH.read_text())
    assert doc["coefficients"] == D.COEFFS and doc["threshold"] == X.THRESHOLD
    thr_rows = [r for r in doc["configs"] if not r["params"].get("RQ")]
    rq_rows = [r for r in doc["configs"] if r["params"].get("RQ")]
    assert [r["id"] for r in thr_rows] == list(X.THRESHOLD_CONFIGS) and len(thr_rows) >= 5
    assert [r["id"] for r in rq_rows] == list(RQ_CALIBRATION) and len(rq_rows) >= 5
    assert [r["id"] for r in doc["configs"]] == list(X.CONFIGS)
    assert [r["id"] for r in doc["pool_configs"]] == list(X.POOL_CONFIGS)
    assert sum(r["id"].startswith("avg ") for r in doc["pool_configs"]) == len(X.AVG_POOL_CONFIGS) >= 5
    for row in doc["configs"]:
        assert row["params"] == dict(sorted(X.CONFIGS[row["id"]].items())), row["id"]
        want = rq_model_counts(row["params"]) if row["params"].get("RQ") else X.model_counts(row["params"])
        assert row["model"] == want, row["id"]
    for row in doc["pool_configs"]:
        assert row["params"] == dict(sorted(X.POOL_CONFIGS[row["id"]].items())), row["id"]
        assert row["model"] == X.pool_model_counts(row["params"]), row["id"]
    for row in doc["configs"] + doc["pool_configs"]:
        for k in X.KEYS:
            y, m = row["yosys"][k], row["model"][k]
            assert (y == m == 0) or abs(m / y - 1) <= X.THRESHOLD, (row["id"], k, m, y)


def test_bench_maps_requant_and_avg_configs():
    """The bench's parameter -> model mapping, hand-checked: RQ = 1 is the requant stage
    (NT = 0, out_bits = RQ_BITS, m_bits = MBITS, bias_bits = BIAS_W, D_MVAU_RQ deep) synthesised
    with requant.v; a pool with OB is avgpool.v (mode "avg", out_bits = OB, in_signed = SIGNED),
    one without is pool.v's max pool; rq_model_counts refuses threshold parameters."""
    from codesign.bench import dataflow_crosscheck as X

    p = X.RQ_CALIBRATION["w2a2 32x64 PE4 SIMD16 RQ5u b12"]
    L = X.layer_of(p)
    assert (L.out_stage, L.NT, L.out_bits, L.m_bits, L.bias_bits, L.mode, L.res_type) == \
        ("requant", 0, 5, 16, 12, "lowbit", "lut")
    assert D.mvau_depth(L) == 7 and X.mvau_sources(p) == ["mvau.v", "requant.v"]
    t = X.layer_of(X.THRESHOLD_CONFIGS["w4a4u 32x64 PE4 SIMD8 NT15"])
    assert (t.out_stage, t.NT, t.out_bits, t.a_signed) == ("threshold", 15, 4, False)
    assert X.mvau_sources(X.THRESHOLD_CONFIGS["w4a4u 32x64 PE4 SIMD8 NT15"]) == ["mvau.v"]
    with pytest.raises(ValueError, match="NT = 0"):
        X.layer_of({**p, "NT": 3})
    with pytest.raises(ValueError, match="RQ = 1"):
        X.rq_model_counts(X.THRESHOLD_CONFIGS["w2a2 32x64 PE4 SIMD16 NT3"])
    pl, P = X.pool_of(X.AVG_POOL_CONFIGS["avg global 4x4 C32 P8 bipolar->i4"])
    assert (pl.mode, pl.k, pl.ifm_h, pl.bits, pl.ob, pl.in_signed, P) == ("avg", 4, 4, 1, 4, True, 8)
    assert X.pool_sources(X.AVG_POOL_CONFIGS["avg global 4x4 C32 P8 bipolar->i4"]) == \
        ("avgpool", ["requant.v", "avgpool.v"])
    mx, _ = X.pool_of(X.MAX_POOL_CONFIGS["pool 2x2/2 C64 P8 bipolar 16x16"])
    assert (mx.mode, mx.ob) == ("max", 1) and X.pool_sources(X.MAX_POOL_CONFIGS["pool 2x2/2 C64 P8 bipolar 16x16"]) \
        == ("pool", ["pool.v"])


@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not installed")
def test_calibration_yosys_fresh():
    """One configuration re-synthesised (cached by source hash) equals the recorded counts."""
    from codesign.bench import dataflow_crosscheck as X

    doc = json.loads(X.CALIBRATION_PATH.read_text())
    row = next(r for r in doc["configs"] if r["id"].startswith("binary 64x64 PE4"))
    assert X.yosys_counts(row["params"]) == row["yosys"]


@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not installed")
def test_calibration_yosys_fresh_requant():
    """One requant-mode configuration (mvau.v + requant.v) re-synthesised equals the record."""
    from codesign.sim.yosys import synth

    doc = json.loads((Path(D.__file__).resolve().parent / "dataflow_calibration.json").read_text())
    row = next(r for r in doc["configs"] if r["id"] == "w2a2 32x64 PE4 SIMD16 RQ5u b12")
    c = synth("mvau", ["mvau.v", "requant.v"], row["params"])  # independent of the bench's mvau_sources
    assert {"lut": c.lut, "ff": c.ff, "dsp": c.dsp, "bram18": c.bram18, "carry": c.carry} == row["yosys"]


def test_requant_stage_costs():
    """The requant stage by the RTL's structure: PE requantizers with 1 DSP48E2 each up to an
    18-bit biased accumulator (2 above), 3·PE parameter memories of NF words, no threshold
    memories, NT = 0, OB = out_bits, pipeline D_MVAU_RQ; and for b >= 5 output bits it is
    cheaper than 2^b - 1 thresholds at every folding of a typical binary conv, in CLB terms
    (LUT + FF/2: a CLB holds 8 LUTs and 16 FFs; a RAMB18 weighted as 100 LUTs), the rule
    accel/dataflow_ir.py maps by (REQUANT_MIN_BITS)."""
    from codesign.accel.dataflow_ir import REQUANT_MIN_BITS

    assert REQUANT_MIN_BITS == 5

    def clb(r):
        return r.lut + r.ff / 2 + 100 * r.bram18

    L = D.Layer("rq", MH=64, MW=576, vectors=16, out_bits=8, out_stage="requant", m_bits=16, bias_bits=16)
    assert L.NT == 0 and D.widths(L)["OB"] == 8 and D.widths(L)["SUMB_W"] == 17 and D.mvau_depth(L) == 7
    parts = D.mvau_resources(L, 4, 32, parts=True)
    assert parts["thresholds"] == D.Res() and parts["activation"].dsp == 4
    # NF = 16 words of 16 + 16 + 6 bits per PE: LUTRAM RAM32M16 (8 LUTs per 14 bits)
    assert parts["requant_params"].lut == 4 * (16 + 16 + 8)
    wide = D.Layer("rq", MH=64, MW=576, out_bits=8, out_stage="requant", bias_bits=24)
    assert D.mvau_resources(wide, 4, 32, parts=True)["activation"].dsp == 8
    assert D.mvau_cycles(64, 576, 4, 32, 16, requant=True) == D.mvau_cycles(64, 576, 4, 32, 16) + 2
    lat = D.dataflow_cycles([L], [(4, 32)])["latency"]
    assert lat == D.mvau_cycles(64, 576, 4, 32, 16, requant=True)
    for b in (5, 6, 7, 8):
        thr = D.Layer("t", MH=64, MW=576, vectors=16, out_bits=b)
        rq = D.Layer("r", MH=64, MW=576, vectors=16, out_bits=b, out_stage="requant")
        for pe, simd in D.candidates(thr):
            a, r = D.mvau_resources(thr, pe, simd), D.mvau_resources(rq, pe, simd)
            assert clb(r) < clb(a), (b, pe, simd)
    with pytest.raises(ValueError, match="out_stage"):
        D.Layer("x", MH=4, MW=4, out_stage="lut")
    with pytest.raises(ValueError, match="requant stage out_bits=1"):
        D.Layer("x", MH=4, MW=4, out_bits=1, out_stage="requant")


# ---------------------------------------------------------------------------
# search
# ---------------------------------------------------------------------------

TINY = [
    D.Layer("conv1", MH=8, MW=18, vectors=16, WB=2, AB=2, mode="lowbit", out_bits=2,
            window=D.Window(k=3, C=2, ifm_h=4, ifm_w=4, pad=1)),
    D.Layer("conv2", MH=4, MW=72, vectors=16, WB=1, AB=1, mode="binary", out_bits=1,
            window=D.Window(k=3, C=8, ifm_h=4, ifm_w=4, pad=1)),
    D.Layer("fc", MH=6, MW=64, vectors=1, WB=1, AB=1, mode="binary", out_bits=0),
]


def _brute(layers, board, limit, T=None):
    """Every folding: (II, LUT) of the best feasible one (min II then min LUT, or min LUT
    with all layers <= T)."""
    cap = {k: int(np.floor(limit * getattr(board, k))) for k in D.KEYS}
    best = None
    for fold in itertools.product(*[D.candidates(l) for l in layers]):
        cyc = [int(D.layer_cycles(l, pe, s)) for l, (pe, s) in zip(layers, fold)]
        tot = {k: 0 for k in D.KEYS}
        for l, (pe, s) in zip(layers, fold):
            r = D.layer_resources(l, pe, s)
            for k in D.KEYS:
                tot[k] += int(np.ceil(getattr(r, k) - 1e-9))
        if any(tot[k] > cap[k] for k in D.KEYS) or (T is not None and max(cyc) > T):
            continue
        key = (tot["lut"],) if T is not None else (max(cyc), tot["lut"])
        if best is None or key < best:
            best = key
    return best


@pytest.mark.parametrize("budget", [(100_000, 100_000, 100, 100), (1160, 2000, 0, 0), (800, 1200, 0, 0),
                                    (700, 1200, 0, 1)])
def test_search_optimal_against_brute_force(budget):
    board = _board(*budget)
    want = _brute(TINY, board, 0.85)
    res = D.search(TINY, board)
    est = res.estimate
    assert (est.ii, est.resources["lut"]) == want
    cap = {k: int(np.floor(0.85 * getattr(board, k))) for k in D.KEYS}
    assert all(est.resources[k] <= cap[k] for k in D.KEYS)
    assert res.folding == est.folding and all(
        l.MH % pe == 0 and (l.window.C if l.window else l.MW) % s == 0 for l, (pe, s) in zip(TINY, res.folding))
    # Pareto points: II ascending, LUT descending, the first is the optimum
    iis = [p["ii"] for p in res.pareto]
    luts = [p["lut"] for p in res.pareto]
    assert iis == sorted(iis) and luts == sorted(luts, reverse=True) and iis[0] == est.ii


def test_search_target_fps_against_brute_force():
    board = _board(1160, 2000, 0, 0)
    clock = 100.0
    for fps in (50_000, 200_000, 500_000):
        T = int(clock * 1e6 // fps)
        res = D.search(TINY, board, target_fps=fps, clock_mhz=clock)
        assert res.estimate.ii <= T
        assert (res.estimate.resources["lut"],) == _brute(TINY, board, 0.85, T=T)


def test_search_impossible_budgets():
    with pytest.raises(ValueError) as e:
        D.search(TINY, _board(500, 500, 0, 0))
    assert "\n" not in str(e.value) and "no folding fits 85% of tiny" in str(e.value)
    with pytest.raises(ValueError) as e:
        D.search(TINY, _board(6000, 8000, 10, 10), target_fps=1e9, clock_mhz=100.0)
    assert "\n" not in str(e.value) and "needs at least" in str(e.value)
    with pytest.raises(ValueError, match="within 85%"):  # reachable II, but not in the budget
        D.search(TINY, _board(800, 1200, 0, 0), target_fps=600_000, clock_mhz=100.0)


def _cnv(w=1, a=1):
    """A CNV-like network (FINN's CIFAR-10 CNV): 6 convs, 3 FCs, binary or w/a bits."""
    mode = "binary" if (w, a) == (1, 1) else "lowbit"
    out = []
    h, c = 32, 3
    for i, (ch, pool) in enumerate([(64, 0), (64, 1), (128, 0), (128, 1), (256, 0), (256, 0)]):
        win = D.Window(k=3, C=c, ifm_h=h, ifm_w=h)
        first = i == 0
        out.append(D.Layer(f"conv{i}", MH=ch, MW=9 * c, vectors=win.ofm_h * win.ofm_w,
                           WB=w, AB=8 if first else a, mode="lowbit" if first else mode, out_bits=a,
                           window=win))
        h, c = win.ofm_h // (2 if pool else 1), ch
    out += [D.Layer("fc0", MH=512, MW=256, WB=w, AB=a, mode=mode, out_bits=a),
            D.Layer("fc1", MH=512, MW=512, WB=w, AB=a, mode=mode, out_bits=a),
            D.Layer("fc2", MH=10, MW=512, WB=w, AB=a, mode=mode, out_bits=0)]
    return out


def test_search_cnv_is_fast_and_balanced():
    """A 9-layer CNV on the ZCU102: a few seconds at most; the chosen folding fits 85 %,
    and the bottleneck layer's cycles are the II."""
    net = _cnv()
    t = time.perf_counter()
    res = D.search(net, "zcu102")
    assert time.perf_counter() - t < 5.0
    est = res.estimate
    assert all(est.utilisation[k] <= 0.85 for k in D.KEYS)
    assert est.ii == max(l.cycles for l in est.layers)
    assert est.ii < 10_000  # hundreds of thousands of fps at 250 MHz, FINN-like
    fast = D.search(net, "zcu102", target_fps=1000.0)
    assert fast.estimate.ii <= 250_000 and fast.estimate.resources["lut"] <= est.resources["lut"]


def test_pe_max_bounds_the_search_candidates():
    from codesign.accel import dataflow as D

    free = D.Layer("dw", MH=16, MW=9, vectors=16, WB=4, AB=4, mode="lowbit", out_bits=4)
    bound = D.Layer("dw", MH=16, MW=9, vectors=16, WB=4, AB=4, mode="lowbit", out_bits=4, pe_max=1)
    assert {pe for pe, _ in D.candidates(free)} == {1, 2, 4, 8, 16}
    assert {pe for pe, _ in D.candidates(bound)} == {1}
    assert D.search([bound], "zcu102").folding[0][0] == 1
    with pytest.raises(ValueError, match="pe_max=0"):
        D.Layer("x", MH=4, MW=4, pe_max=0)


# ---------------------------------------------------------------------------
# threshold stage -> exactly equal requant (accel/dataflow_ir.py)
# ---------------------------------------------------------------------------

def _thresholds_of(f, A, B, n, lo_y):
    """Thresholds of a non-decreasing code function f on [A, B] (brute force): the smallest
    a with f(a) >= lo_y + t, or B + 1."""
    a = np.arange(A, B + 1)
    y = f(a)
    return np.array([[A + int(np.argmax(y >= lo_y + t)) if np.any(y >= lo_y + t) else B + 1
                      for t in range(1, n + 1)]])


def test_threshold_requant_brute_force():
    """threshold_requant: thresholds computed by brute force from a requant always convert,
    and every conversion (also of BatchNorm-like float lines, which often do not) equals the
    thresholds on every accumulator of the range (reference.threshold == reference.requant)."""
    from codesign.accel.dataflow_ir import threshold_requant
    from codesign.sim import reference as ref

    rng = np.random.default_rng(3)
    converted = refused = 0
    for trial in range(240):
        b = int(rng.integers(2, 9))
        n, signed = (1 << b) - 1, bool(trial % 2)
        yt = ref.IntType(b, signed)
        A, B = -int(rng.integers(1, 400)), int(rng.integers(1, 400))
        if trial % 3 == 0:
            M, sh, bias = int(rng.integers(1, 1 << 16)), int(rng.integers(1, 30)), int(rng.integers(-60, 60))
            T = _thresholds_of(lambda a: ref.requant(a + bias, M, sh, yt), A, B, n, yt.lo)
        else:
            d, c = rng.uniform(0.2, 30), rng.uniform(-200, 200)
            T = np.ceil(c + np.arange(n) * d).astype(np.int64)[None, :]
        got = threshold_requant(T, yt.lo, A, B)
        if got is None:
            assert trial % 3 != 0, (T, A, B, yt)
            refused += 1
            continue
        converted += 1
        a = np.arange(A, B + 1)
        bias, M, sh = (int(v[0]) for v in got)
        assert np.array_equal(ref.requant(a + bias, M, sh, yt, m=24), ref.threshold(a[:, None], T, yt.lo)[:, 0])
    assert converted >= 80 and refused >= 10  # both outcomes occur
    # the requant's output type must be the threshold stage's: n = 2^b - 1 and out_bias lo or 0
    assert threshold_requant(np.arange(6)[None, :], 0, -10, 10) is None
    assert threshold_requant(np.arange(7)[None, :], 3, -10, 10) is None


def test_map_ir_requant_rule():
    """map_ir on a one-conv IR: a requant stage of >= REQUANT_MIN_BITS bits maps to the
    requant mode (M and bias widths from the IR's constants), a narrower one to thresholds;
    an 8-bit threshold stage that is exactly a requant maps to the requant mode, one that is
    not stays thresholds (notes say which and why)."""
    from types import SimpleNamespace as NS

    from codesign.accel.dataflow_ir import map_ir
    from codesign.sim import reference as ref

    def ir_with(stage_op, out_bits, consts):
        t = {"x": NS(shape=(1, 16)), "acc": NS(shape=(1, 8)), "y": NS(shape=(1, 8))}
        c = {"w": NS(values=np.ones((16, 8)), shape=(16, 8)), "b": NS(values=np.arange(8) - 4, shape=(8,)),
             **{k: NS(values=np.asarray(v), shape=np.asarray(v).shape) for k, v in consts.items()}}
        mm = NS(name="matmul_0", op="matmul", inputs=["x", "w", "b"], outputs=["acc"], onnx_name=None,
                attrs={"a_type": {"bits": 4, "signed": False}, "w_type": {"bits": 4, "signed": True}})
        if stage_op == "requant":
            st = NS(name="rq", op="requant", inputs=["acc", "M", "sh"], outputs=["y"],
                    attrs={"out_type": {"bits": out_bits, "signed": True}})
        else:
            st = NS(name="th", op="threshold", inputs=["acc", "T"], outputs=["y"],
                    attrs={"out_bias": -(1 << (out_bits - 1))})
        return NS(ops=[mm, st], tensors=t, constants=c)

    M = np.full(8, 40000)
    m = map_ir(ir_with("requant", 6, {"M": M, "sh": np.full(8, 20)}))
    L = m.layers[0].layer
    assert (L.out_stage, L.out_bits, L.m_bits, L.bias_bits, L.NT) == ("requant", 6, 16, 3, 0)  # bias -4..3
    m = map_ir(ir_with("requant", 4, {"M": M, "sh": np.full(8, 20)}))
    assert (m.layers[0].layer.out_stage, m.layers[0].layer.NT) == ("threshold", 15)
    lo, hi = ref.acc_range(16, ref.IntType(4, False), ref.IntType(4, True))
    yt = ref.IntType(8, True)
    T = np.concatenate([_thresholds_of(lambda a: ref.requant(a + 3, 3, 2, yt), lo, hi, 255, -128)] * 8)
    m = map_ir(ir_with("threshold", 8, {"T": T + (np.arange(8) - 4)[:, None]}))  # acc + b >= T
    assert m.layers[0].layer.out_stage == "requant"
    assert any("equal a requant exactly" in n for n in m.notes)
    T2 = np.ceil(0.37 + np.arange(255) * 1.618).astype(np.int64)[None, :].repeat(8, axis=0)
    m = map_ir(ir_with("threshold", 8, {"T": T2}))
    assert m.layers[0].layer.out_stage == "threshold" and m.layers[0].layer.NT == 255


# ---------------------------------------------------------------------------
# IR average pools -> avgpool.v units attached to their layer (accel/dataflow_ir.py)
# ---------------------------------------------------------------------------

def _avgpool_ir(kernel=(3, 3), stride=(1, 1), pad=(1, 1), hw=(8, 8), stage="threshold", M=3, sh=5):
    """int8 4x8x8 -> conv2d 1x1 (16 OC, int4 weights) -> [threshold: 3 thresholds -> uint2 |
    none] -> avgpool2d(kernel, stride, pad) to int4 (hand-built, not run)."""
    from codesign.accel import ir as irm

    i8, u2, i4 = irm.CodeType(8, True), irm.CodeType(2, False), irm.CodeType(4, True)
    sc = irm.Scale.scalar(1.0)
    H, W = hw
    tensors = {"x": irm.Tensor((1, 4, H, W), "code", type=i8, scale=sc),
               "a0": irm.Tensor((1, 16, H, W), "acc", acc_bits=16, scale=sc)}
    consts = {"w0": irm.Constant(i4, np.ones((16, 4, 1, 1)))}
    ops = [irm.Op("conv2d_0", "conv2d", ["x", "w0"], ["a0"], dict(
        stride=[1, 1], pad=[0, 0, 0, 0], dilation=[1, 1], groups=1, x_type=i8.to_json(), w_type=i4.to_json(),
        acc_bits=16))]
    src, in_t = "a0", u2
    if stage == "threshold":
        consts["t0"] = irm.Constant(irm.CodeType(17), np.tile(np.arange(3), (16, 1)))
        tensors["y0"] = irm.Tensor((1, 16, H, W), "code", type=u2, scale=sc)
        ops.append(irm.Op("threshold_0", "threshold", ["a0", "t0"], ["y0"], dict(out_bias=0, bipolar=False)))
        src = "y0"
    OH = (H + 2 * pad[0] - kernel[0]) // stride[0] + 1
    OW = (W + 2 * pad[1] - kernel[1]) // stride[1] + 1
    tensors["p0"] = irm.Tensor((1, 16, OH, OW), "code", type=i4, scale=sc)
    ops.append(irm.Op("avgpool2d_0", "avgpool2d", [src], ["p0"], dict(
        kernel=list(kernel), stride=list(stride), pad=list(pad), M=M, sh=sh, in_type=in_t.to_json(),
        out_type=i4.to_json())))
    return irm.IR("t", [], [], tensors, consts, ops)


def test_ir_avgpool_costed_as_avgpool_unit():
    """map_ir attaches an avgpool2d fed by a thresholded conv to that layer as
    Pool(mode="avg") with the IR's out_type bits and in_type signedness; cycles and latency
    hand-derived: the 1x1 conv at PE 16, SIMD 4 is NF·SF·V = 1·1·64 = 64 cycles, the 3x3/1
    pad-1 pool walks (8 + 2)·(8 + 2)·ceil(16/16) = 100 slots (the bottleneck); latency =
    II 100 + D_MVAU 5 + the 1x1 window's fill 1 + the pool's fill ((3-1-1)·10 + 1 + 1)·1 +
    D_POOL_AVG 4 = 16 -> 122."""
    from codesign.accel.dataflow_ir import layers_from_ir, map_ir

    ir = _avgpool_ir()
    m = map_ir(ir)
    (ml,) = m.layers
    assert ml.pool == "avgpool2d_0" and "avgpool2d_0" not in {d["name"] for d in m.not_modelled}
    pool = D.Pool("avgpool2d_0", C=16, ifm_h=8, ifm_w=8, k=3, stride=1, pad=1, bits=2, mode="avg", out_bits=4,
                  in_signed=False)
    assert ml.layer.pool == pool
    assert ml.as_dict()["pool"] == {"op": "avgpool2d_0", "mode": "avg", "k": 3, "stride": 1, "pad": 1, "C": 16,
                                    "ifm_h": 8, "ifm_w": 8, "bits": 2, "out_bits": 4}
    L = ml.layer
    assert int(D.layer_cycles(L, 16, 4)) == 100
    # PE = 1: the MVAU's 16 folds of 64 vectors (1024) against the pool's 100 slots x 16 channel groups
    assert int(D.layer_cycles(L, 1, 4)) == max(16 * 64, 100 * 16) == 1600
    c = D.dataflow_cycles([L], [(16, 4)])
    assert (c["ii"], c["latency"]) == (100, 122)
    (plain,) = layers_from_ir(ir)
    assert plain.pool is None
    r = D.layer_resources(L, 16, 4)
    assert r == D.layer_resources(plain, 16, 4) + D.pool_resources(pool, 16) and r.dsp >= 16  # a requant.v per lane


def test_ir_avgpool_not_modelled_reasons():
    """Average pools avgpool.v cannot take stay in not_modelled with a one-line reason naming
    the op kind: a global pool of a non-square map (kernel 8x4), unequal strides, a pool of
    the raw accumulator, and an M wider than avgpool.v's 24 bits."""
    from codesign.accel.dataflow_ir import map_ir

    def why(**kw):
        m = map_ir(_avgpool_ir(**kw))
        assert all(x.layer.pool is None for x in m.layers)
        return {d["name"]: d["reason"] for d in m.not_modelled}["avgpool2d_0"]

    assert why(kernel=(8, 4), stride=(1, 1), pad=(0, 0), hw=(8, 4)) == \
        "avgpool2d kernel [8, 4] (e.g. global pooling of a non-square map): avgpool.v's window is square"
    assert why(kernel=(2, 2), stride=(2, 1), pad=(0, 0)) == \
        "avgpool2d kernel [2, 2], stride [2, 1], pad [0, 0]: avgpool.v takes a square window, equal strides, one pad"
    assert why(stage=None).startswith("avgpool2d of conv2d_0's accumulators")
    assert why(M=1 << 24) == "avgpool2d M=16777216, sh=5: avgpool.v takes a 24-bit unsigned M and a shift of 0..62"
