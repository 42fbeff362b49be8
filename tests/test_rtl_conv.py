"""Convolution + thresholds through the MVAU RTL (sim/rtl/mvau.v) == reference == csim.

docs/arithmetic.md §11 (conv2d) followed by §8 (MultiThreshold), three faces compared with
``==`` on integer codes:

* reference: ``ref.threshold(ref.conv2d(x, w, ...) in NHWC, T, out_bias)``;
* csim: ``csim_nonlinear.threshold(csim_nonlinear.conv2d(...))`` (the HLS kernels
  ``codesign::Conv2d`` and ``multithreshold_rows`` under g++);
* RTL: an im2col written here (plain loops, the K order ``k = (c·KH + u)·KW + v`` of
  conv.h) feeding mvau.v with the thresholds in its memories, one MVAU run per group
  (grouped convs: the group's weight rows and thresholds, the group's input channels).
  The raw accumulators (mvau.v's ``m_tacc`` test port) are compared with the reference
  accumulators too.

Hypothesis draws the geometry (input size, stride and dilation per axis, symmetric or
ONNX-style asymmetric pads), the codes and the thresholds (ascending per channel, random
points of the §2 range, ties with accumulators that occur, points below and above the
range, all-equal rows) on a few **fixed** mvau.v configurations, so every example reuses
one cached build per configuration: the geometry changes only the number of vectors.

**Bipolar × bipolar with padding on the binary (XNOR-popcount) MVAU.** §11 says a padded
tap of a bipolar input adds 0, but every one of mvau.v's ``MW`` lanes adds ±1 in binary
mode (``2·popcount − MW``); the lane mask is per beat position, not per pixel, so a
padded tap cannot be masked out. It *can* be expressed with two lanes per tap: a real
tap ``a`` becomes the lane pair ``(a, a)`` against the weight pair ``(w, w)`` (``±2``),
a padded tap the pair ``(+1, −1)`` (``w − w = 0``). Then ``MW = 2K`` and the binary
accumulator is exactly ``2·acc``; the thresholds are written as ``2·T``
(``2·acc ≥ 2·T ⇔ acc ≥ T``), which gives the contract's codes bit for bit, at twice the
lanes. ``binary_pad`` tests that encoding with padding; ``binary_plain`` tests the plain
one-lane-per-tap encoding (FINN's), which is exact only without padding, so it draws
``pad = 0`` only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from codesign.hls import csim_nonlinear as csim
from codesign.sim import reference as ref
from codesign.sim import rtl
from codesign.sim import rtl_mvau as M

SIMS = rtl.simulators()  # the `sim` fixture over them is in conftest.py


@dataclass(frozen=True)
class ConvCase:
    """A conv family on one mvau.v build: channels, kernel, groups, code types, the
    encoding (``dup``: two lanes per tap, for bipolar padding) and whether pads are drawn."""

    IC: int
    OC: int
    KH: int
    KW: int
    groups: int
    x_type: ref.IntType
    w_type: ref.IntType
    cfg: M.MvauConfig
    dup: bool = False
    pads: bool = True
    pe: int = 1      # csim folding
    simd: int = 1


BIP = ref.IntType(1, True)
CASES = {
    # 4-bit weights x unsigned 4-bit activations, 2->4 channels 3x3, 3 thresholds (2-bit out)
    "w4a4u_3x3": ConvCase(2, 4, 3, 3, 1, ref.IntType(4, False), ref.IntType(4, True),
                          M.MvauConfig(MH=4, MW=18, PE=2, SIMD=6, WB=4, AB=4, a_signed=False, NT=3),
                          pe=2, simd=6),
    # grouped (2 groups of 2->2), 2-bit weights x signed 3-bit activations, 2x2 kernel, signed out
    "w2a3_grouped_2x2": ConvCase(4, 4, 2, 2, 2, ref.IntType(3, True), ref.IntType(2, True),
                                 M.MvauConfig(MH=2, MW=8, PE=1, SIMD=4, WB=2, AB=3, NT=7, out_bias=-4),
                                 pe=1, simd=3),
    # bipolar x bipolar with padding: two lanes per tap (module docstring), MW = 2*2*3*3
    "binary_pad": ConvCase(2, 3, 3, 3, 1, BIP, BIP,
                           M.MvauConfig(MH=3, MW=36, PE=3, SIMD=12, WB=1, AB=1, binary=True, NT=1),
                           dup=True, pe=3, simd=5),
    # bipolar x bipolar, one lane per tap (exact only without padding), MW % SIMD != 0
    "binary_plain": ConvCase(3, 4, 2, 2, 1, BIP, BIP,
                             M.MvauConfig(MH=4, MW=12, PE=2, SIMD=5, WB=1, AB=1, binary=True, NT=1),
                             pads=False, pe=4, simd=4),
}


def _codes(rng, t: ref.IntType, shape) -> np.ndarray:
    if t.bipolar:
        return rng.choice(np.array([-1, 1]), size=shape)
    return rng.integers(t.lo, t.hi + 1, size=shape)


def im2col(x: np.ndarray, g: int, ICg: int, KH: int, KW: int, stride, pads, dilation, OH: int, OW: int):
    """Group ``g``'s im2col rows, plain loops: ``(N·OH·OW, ICg·KH·KW)`` values and a mask of
    the taps inside the input; row ``(n·OH + i)·OW + j``, column ``(c·KH + u)·KW + v``
    (conv.h's order), tap at row ``i·sh − pt + u·dh``, column ``j·sw − pl + v·dw``."""
    N, _, H, W = x.shape
    (sh, sw), (pt, pl, _, _), (dh, dw) = stride, pads, dilation
    K = ICg * KH * KW
    vals = np.zeros((N * OH * OW, K), dtype=np.int64)
    inside = np.zeros((N * OH * OW, K), dtype=bool)
    for n in range(N):
        for i in range(OH):
            for j in range(OW):
                row = (n * OH + i) * OW + j
                for c in range(ICg):
                    for u in range(KH):
                        for v in range(KW):
                            r, s = i * sh - pt + u * dh, j * sw - pl + v * dw
                            k = (c * KH + u) * KW + v
                            if 0 <= r < H and 0 <= s < W:
                                vals[row, k] = x[n, g * ICg + c, r, s]
                                inside[row, k] = True
    return vals, inside


def _thresholds(rng, n_ch: int, NT: int, lo: int, hi: int, acc: np.ndarray, kind: str) -> np.ndarray:
    """Ascending thresholds per channel (acc: vectors x n_ch reference accumulators)."""
    T = np.empty((n_ch, NT), dtype=np.int64)
    for o in range(n_ch):
        if kind == "range":
            pool = rng.integers(lo, hi + 2, size=NT + 2)
        elif kind == "ties":
            pool = np.concatenate([acc[:, o], acc[:, o] + 1, acc[:, o] - 1])
        elif kind == "outside":
            pool = np.array([lo - 5, lo - 1, lo, hi, hi + 1, hi + 7])
        else:  # "equal": one value repeated (all steps at once)
            pool = np.full(NT, rng.choice(acc[:, o]))
        T[o] = np.sort(rng.choice(pool, size=NT, replace=True))
    return T


@st.composite
def geometries(draw, case: ConvCase):
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    if case.pads:
        if draw(st.booleans()):
            p = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
            pads = (p[0], p[1], p[0], p[1])
        else:
            pads = tuple(draw(st.integers(0, 2)) for _ in range(4))
    else:
        pads = (0, 0, 0, 0)
    H, W = draw(st.integers(1, 6)), draw(st.integers(1, 6))
    eh, ew = dh * (case.KH - 1) + 1, dw * (case.KW - 1) + 1
    assume(H + pads[0] + pads[2] >= eh and W + pads[1] + pads[3] >= ew)
    N = draw(st.integers(1, 2))
    return dict(N=N, H=H, W=W, stride=(sh, sw), pads=pads, dilation=(dh, dw))


def _run_case(case: ConvCase, geo: dict, seed: int, tkind: str, sim: str) -> None:
    rng = np.random.default_rng(seed)
    cfg, G = case.cfg, case.groups
    ICg, OCg = case.IC // G, case.OC // G
    K = ICg * case.KH * case.KW
    x = _codes(rng, case.x_type, (geo["N"], case.IC, geo["H"], geo["W"]))
    w = _codes(rng, case.w_type, (case.OC, ICg, case.KH, case.KW))
    kw = dict(stride=geo["stride"], pad=geo["pads"], dilation=geo["dilation"], groups=G,
              x_type=case.x_type, w_type=case.w_type)
    acc_ref = ref.conv2d(x, w, **kw)
    acc_csim = csim.conv2d(x, w, **kw, pe=case.pe, simd=case.simd)
    assert np.array_equal(acc_csim, acc_ref), "csim conv2d != reference conv2d"
    N, _, OH, OW = acc_ref.shape
    acc_nhwc = acc_ref.transpose(0, 2, 3, 1)                      # channels last (§8)
    lo, hi = ref.acc_range(K, case.x_type, case.w_type)
    T = _thresholds(rng, case.OC, cfg.NT, lo, hi, acc_nhwc.reshape(-1, case.OC), tkind)
    want = ref.threshold(acc_nhwc, T, out_bias=cfg.out_bias)
    got_csim = csim.threshold(acc_csim.transpose(0, 2, 3, 1), T, out_bias=cfg.out_bias)
    assert np.array_equal(got_csim, want), "csim threshold != reference threshold"

    problems = []
    for g in range(G):
        vals, inside = im2col(x, g, ICg, case.KH, case.KW, geo["stride"], geo["pads"], geo["dilation"], OH, OW)
        wg = w[g * OCg:(g + 1) * OCg].reshape(OCg, K)             # (c, u, v) order, as im2col
        Tg = T[g * OCg:(g + 1) * OCg]
        if case.dup:  # two lanes per tap: real (a, a), padded (+1, -1); weights (w, w); T -> 2T
            xv = np.stack([np.where(inside, vals, 1), np.where(inside, vals, -1)], axis=-1).reshape(len(vals), 2 * K)
            wv = np.repeat(wg, 2, axis=1)
            Tg = 2 * Tg
        else:
            if case.x_type.bipolar:
                assert inside.all(), "the one-lane binary encoding has no padding"
            xv, wv = vals, wg
        problems.append(dict(x=xv, w=wv, T=Tg))
    runs = M.run_mvaus(cfg, problems, sim=sim)
    for g, run in enumerate(runs):
        sl = slice(g * OCg, (g + 1) * OCg)
        acc_g = acc_nhwc[..., sl].reshape(-1, OCg)
        assert np.array_equal(run.acc, (2 if case.dup else 1) * acc_g), f"group {g}: RTL accumulators differ"
        assert np.array_equal(run.codes.reshape(N, OH, OW, OCg), want[..., sl]), (
            f"group {g}: RTL codes differ from reference\nrtl {run.codes.ravel()}\nref {want[..., sl].ravel()}")
        assert run.cycles == run.expected_cycles


def test_im2col_matches_reference_conv():
    """The test's im2col (plain loops) times the weight matrix == ref.conv2d, and a padded
    tap is the only non-inside one (no RTL: guards the test's own lowering)."""
    rng = np.random.default_rng(0)
    x = rng.integers(-4, 4, size=(2, 4, 5, 4))
    w = rng.integers(-8, 8, size=(6, 2, 3, 2))
    geo = dict(stride=(2, 1), pads=(1, 0, 2, 1), dilation=(1, 2))
    acc = ref.conv2d(x, w, stride=geo["stride"], pad=geo["pads"], dilation=geo["dilation"], groups=2,
                     x_type=ref.IntType(3, True), w_type=ref.IntType(4, True))
    _, _, OH, OW = acc.shape
    for g in range(2):
        vals, inside = im2col(x, g, 2, 3, 2, geo["stride"], geo["pads"], geo["dilation"], OH, OW)
        assert not inside.all() and np.all(vals[~inside] == 0)
        got = vals @ w[3 * g:3 * g + 3].reshape(3, -1).T
        assert np.array_equal(got, acc[:, 3 * g:3 * g + 3].transpose(0, 2, 3, 1).reshape(-1, 3))


@pytest.mark.rtl
@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("sim", SIMS)
@settings(max_examples=5, deadline=None)
@given(data=st.data(), seed=st.integers(0, 2**32 - 1),
       tkind=st.sampled_from(["range", "ties", "outside", "equal"]))
def test_conv_threshold_rtl_equals_reference_and_csim(sim, name, data, seed, tkind):
    """Random geometry, codes and thresholds on a fixed MVAU build: RTL codes (and
    accumulators) == reference == csim, cycles == mvau_cycles."""
    case = CASES[name]
    geo = data.draw(geometries(case), label="geometry")
    _run_case(case, geo, seed, tkind, sim)


@pytest.mark.rtl
def test_binary_conv_padding_needs_the_pair_encoding(sim):
    """The one-lane encoding of a padded bipolar tap (as -1, the bit 0) is **not** the
    contract: on a padded input it changes the accumulators (this is why ``binary_pad``
    uses two lanes per tap). Checked on the ``binary_plain`` build."""
    case = CASES["binary_plain"]
    rng = np.random.default_rng(3)
    x = _codes(rng, BIP, (1, case.IC, 3, 3))
    w = _codes(rng, BIP, (case.OC, case.IC, case.KH, case.KW))
    acc = ref.conv2d(x, w, pad=1, x_type=BIP, w_type=BIP)
    _, _, OH, OW = acc.shape
    vals, inside = im2col(x, 0, case.IC, case.KH, case.KW, (1, 1), (1, 1, 1, 1), (1, 1), OH, OW)
    T = np.zeros((case.OC, 1), dtype=np.int64)
    run = M.run_mvaus(case.cfg, [dict(x=np.where(inside, vals, -1), w=w.reshape(case.OC, -1), T=T)], sim=sim)[0]
    want = acc.transpose(0, 2, 3, 1).reshape(-1, case.OC)
    assert not np.array_equal(run.acc, want)
    # ... and it differs exactly by the padded taps' -1 * w terms
    pad_term = np.where(inside, 0, -1) @ w.reshape(case.OC, -1).T
    assert np.array_equal(run.acc, want + pad_term)
