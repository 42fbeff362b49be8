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
    """accel/dataflow_calibration.json (bench/dataflow_crosscheck.py --write): every ratio
    within 25 %, and the model columns equal the current model (rerun --write after a
    model change)."""
    from codesign.bench import dataflow_crosscheck as X

    doc = json.loads(X.CALIBRATION_PATH.read_text())
    assert len(doc["configs"]) == len(X.CONFIGS) >= 5
    for row in doc["configs"]:
        assert row["model"] == X.model_counts(row["params"]), row["id"]
        for k in X.KEYS:
            y, m = row["yosys"][k], row["model"][k]
            assert (y == m == 0) or abs(m / y - 1) <= X.THRESHOLD, (row["id"], k, m, y)


@pytest.mark.skipif(shutil.which("yosys") is None, reason="yosys not installed")
def test_calibration_yosys_fresh():
    """One configuration re-synthesised (cached by source hash) equals the recorded counts."""
    from codesign.bench import dataflow_crosscheck as X

    doc = json.loads(X.CALIBRATION_PATH.read_text())
    row = next(r for r in doc["configs"] if r["id"].startswith("binary 64x64"))
    assert X.yosys_counts(row["params"]) == row["yosys"]


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
