"""XNOR-popcount datapath of the HLS MVAUs for bipolar x bipolar layers
(docs/arithmetic.md §8, §11; hls/include/codesign/matmul.h ``detail::LaneSum``, conv.h).

When both operand types are bipolar, ``codesign::Mvau`` (IR op ``matmul``) and
``codesign::Conv2d`` (IR op ``conv2d``) compute each PE's SIMD-lane sum as
``2·popcount(XNOR(a, w) & valid) − popcount(valid)`` over packed lane bits instead of
multiplying. This file checks, through the csim faces (``csim_arith.matmul_ex``,
``csim_nonlinear.conv2d_ex``):

* csim == reference with ``==`` (hypothesis over K, N, PE/SIMD folding, bias; conv2d over
  stride, dilation, groups, asymmetric padding, SIMD not dividing K), and == independent
  ±1 evaluations written here (a numpy ±1 matmul; a per-tap agree/disagree count over the
  taps inside the image; §8's packed ``reference.xnor_popcount``);
* padded taps contribute 0 (hand-derived values: all-agree and all-disagree windows give
  ±(taps inside the image), not ±K);
* the binary datapath is actually taken: every XNOR-popcount word evaluation increments a
  C-simulation counter (``codesign::csim_xnor_words()``, returned as ``info["xnor_words"]``)
  that must equal PE words per II = 1 iteration (matmul) or OC·⌈K/SIMD⌉ words per output
  pixel (conv2d), and stays 0 for layers with a multi-bit operand; and at compile time the
  kernels' ``xnor_datapath`` trait is true exactly for bipolar x bipolar (static_assert
  probe compiled by csim);
* the trip counts still equal the ops registry's cycle formulas.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codesign.accel import ops
from codesign.hls import csim
from codesign.sim import reference as R

I = R.IntType
BP = I(1, True)  # bipolar
needs_csim = pytest.mark.skipif(csim.available() is not None, reason=f"csim unavailable: {csim.available()}")
INT32 = (-(2**31), 2**31 - 1)


def _arith():
    from codesign.hls import csim_arith
    return csim_arith


def _nl():
    from codesign.hls import csim_nonlinear
    return csim_nonlinear


def _pm1(rng, shape) -> np.ndarray:
    return rng.choice(np.array([-1, 1], dtype=np.int64), size=shape)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


# ---------------------------------------------------------------------------------------
# Independent ±1 evaluations (not the reference's code paths)


def _pm1_matmul(a: np.ndarray, w: np.ndarray, b) -> np.ndarray:
    """Σ_k a·w over ±1 values by agree/disagree counting: agree − disagree (+ bias)."""
    agree = (a[:, :, None] == w[None, :, :]).sum(axis=1).astype(np.int64)
    out = agree - (a.shape[1] - agree)
    return out if b is None else out + np.asarray(b, dtype=np.int64)


def _pm1_conv(x, w, b, stride, pads, dil, groups) -> np.ndarray:
    """§11 for ±1 codes by a direct loop: +1 per agreeing, −1 per disagreeing tap inside
    the image, nothing for a tap outside it."""
    N, C, H, W = x.shape
    OC, ICg, KH, KW = w.shape
    (sh, sw), (pt, pl, pb, pr), (dh, dw) = stride, pads, dil
    OH = (H + pt + pb - dh * (KH - 1) - 1) // sh + 1
    OW = (W + pl + pr - dw * (KW - 1) - 1) // sw + 1
    y = np.zeros((N, OC, OH, OW), dtype=np.int64)
    OCg = OC // groups
    for o in range(OC):
        g = o // OCg
        for i in range(OH):
            for j in range(OW):
                for u in range(KH):
                    r = i * sh - pt + u * dh
                    if not 0 <= r < H:
                        continue
                    for v in range(KW):
                        s = j * sw - pl + v * dw
                        if not 0 <= s < W:
                            continue
                        xs = x[:, g * ICg:(g + 1) * ICg, r, s]  # (N, ICg)
                        ws = w[o, :, u, v]                       # (ICg,)
                        y[:, o, i, j] += np.where(xs == ws[None, :], 1, -1).sum(axis=1)
    if b is not None:
        y += np.asarray(b, dtype=np.int64)[None, :, None, None]
    return y


# ---------------------------------------------------------------------------------------
# matmul (codesign::Mvau)


def _check_matmul(a, w, b, pe, simd, block_rows=2, bias_bounds=None):
    got, info = _arith().matmul_ex(a, w, b, BP, BP, pe=pe, simd=simd, block_rows=block_rows,
                                   bias_bounds=bias_bounds)
    want = R.matmul(a, w, b, BP, BP)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    assert np.array_equal(got, _pm1_matmul(a, w, b))
    M, K = a.shape
    N = w.shape[1]
    blocks = -(-M // block_rows)
    assert info["trips"] == blocks * block_rows * ops.get_op("matmul").trips(rows=1, K=K, N=N, pe=pe, simd=simd)
    # the binary datapath: one XNOR-popcount word per PE per II = 1 iteration
    assert info["xnor_words"] == info["trips"] * pe > 0
    assert info["acc_bits"] == R.acc_bits(K, BP, BP, *(bias_bounds or (INT32 if b is not None else (0, 0))))
    return got


@needs_csim
@settings(max_examples=15, deadline=None)
@given(data=st.data(), K=st.integers(1, 80), N=st.integers(1, 12), M=st.integers(1, 5),
       bias=st.sampled_from([None, "small", "int32"]), seed=st.integers(0, 2**31 - 1))
def test_matmul_csim_equals_reference(data, K, N, M, bias, seed):
    """Bipolar x bipolar matmul over K (odd, prime, not a multiple of 8 or of the word),
    every PE | N and SIMD | K (the Mvau's folding contract), with and without bias."""
    rng = np.random.default_rng(seed)
    pe = data.draw(st.sampled_from(_divisors(N)), label="pe")
    simd = data.draw(st.sampled_from(_divisors(K)), label="simd")
    block_rows = data.draw(st.integers(1, 3), label="block_rows")
    a, w = _pm1(rng, (M, K)), _pm1(rng, (K, N))
    b = bounds = None
    if bias == "small":
        b = rng.integers(-K, K + 1, N)
        bounds = (int(b.min()), int(b.max()))
    elif bias == "int32":
        b = rng.integers(INT32[0], INT32[1] + 1, N)
        b[0] = INT32[rng.integers(0, 2)]
    _check_matmul(a, w, b, pe, simd, block_rows, bounds)


@needs_csim
@pytest.mark.parametrize("K,N,pe,simd", [(1, 1, 1, 1), (7, 3, 3, 7), (63, 4, 2, 9), (64, 8, 4, 64), (100, 6, 3, 20)])
def test_matmul_extremes(K, N, pe, simd):
    """All-agree and all-disagree rows reach ±K exactly (the ends of the accumulator);
    an alternating row against all +1 gives K mod 2 (hand-derived)."""
    a = np.stack([np.ones(K, np.int64), -np.ones(K, np.int64), np.where(np.arange(K) % 2 == 0, 1, -1)])
    w = np.ones((K, N), np.int64)
    w[:, 1::2] = -1
    got = _check_matmul(a, w, None, pe, simd)
    sign = np.where(np.arange(N) % 2 == 0, 1, -1)
    assert np.array_equal(got[0], K * sign) and np.array_equal(got[1], -K * sign)
    assert np.array_equal(got[2], (K % 2) * sign)


@needs_csim
@settings(max_examples=6, deadline=None)
@given(K=st.integers(1, 70), N=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_matmul_equals_packed_xnor_popcount(K, N, seed):
    """§8's packed definition (``reference.xnor_popcount`` on bytes, np.bitwise_count) ==
    the Mvau's XNOR-popcount over SIMD = K lanes (one word per output)."""
    rng = np.random.default_rng(seed)
    a, w = _pm1(rng, (3, K)), _pm1(rng, (K, N))
    got, info = _arith().matmul_ex(a, w, None, BP, BP, pe=1, simd=K)
    assert np.array_equal(got, R.xnor_popcount(R.pack_bipolar(a), R.pack_bipolar(w.T), K))
    assert info["xnor_words"] == info["trips"] > 0


@needs_csim
@pytest.mark.parametrize("at,wt", [(I(2, True), BP), (BP, I(2, True)), (I(3, False), BP), (BP, I(8, True))])
def test_matmul_multibit_operand_not_binary(at, wt):
    """A layer with a multi-bit operand multiplies: the probe counts no XNOR word (so the
    count above is specific to the binary path), and the result is still the reference's."""
    rng = np.random.default_rng(3)
    K, N = 12, 4

    def codes(t, shape):
        return _pm1(rng, shape) if t.bipolar else rng.integers(t.lo, t.hi + 1, shape)

    a, w = codes(at, (4, K)), codes(wt, (K, N))
    got, info = _arith().matmul_ex(a, w, None, at, wt, pe=2, simd=4)
    assert np.array_equal(got, R.matmul(a, w, None, at, wt))
    assert info["xnor_words"] == 0 and info["trips"] > 0


# ---------------------------------------------------------------------------------------
# conv2d (codesign::Conv2d)


def _check_conv(x, w, b, stride, pads, dil, groups, pe, simd):
    got, info = _nl().conv2d_ex(x, w, b, stride, pads, dil, groups, BP, BP, pe=pe, simd=simd)
    want = R.conv2d(x, w, b, stride, pads, dil, groups, BP, BP)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    assert np.array_equal(got, _pm1_conv(x, w, b, stride, pads, dil, groups))
    N, OC, OH, OW = want.shape
    K = w.shape[1] * w.shape[2] * w.shape[3]
    assert info["trips"] == ops.get_op("conv2d").trips(OH=OH, OW=OW, OC=OC, K=K, pe=pe, simd=simd, images=N)
    # the binary datapath: every output channel evaluates one XNOR-popcount word per input fold
    assert info["xnor_words"] == N * OH * OW * OC * -(-K // simd) > 0
    return got


@needs_csim
@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), g=st.integers(1, 3), icg=st.integers(1, 4), ocg=st.integers(1, 3),
       kh=st.sampled_from([1, 2, 3, 5]), kw=st.sampled_from([1, 3]), sh=st.integers(1, 3), sw=st.integers(1, 2),
       dh=st.integers(1, 2), dw=st.integers(1, 3), pads=st.tuples(*[st.integers(0, 2)] * 4),
       bias=st.booleans(), pe=st.integers(1, 3), simd=st.integers(1, 40))
def test_conv2d_csim_equals_reference(seed, g, icg, ocg, kh, kw, sh, sw, dh, dw, pads, bias, pe, simd):
    """Bipolar x bipolar conv2d: stride, dilation, groups (depthwise when icg = ocg = 1),
    asymmetric pads, PE not dividing OC, SIMD not dividing K (and SIMD > K)."""
    rng = np.random.default_rng(seed)
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    H = int(rng.integers(max(1, eh - pads[0] - pads[2]), eh + 4))
    W = int(rng.integers(max(1, ew - pads[1] - pads[3]), ew + 4))
    x = _pm1(rng, (2, g * icg, H, W))
    w = _pm1(rng, (g * ocg, icg, kh, kw))
    b = rng.integers(-1000, 1000, g * ocg) if bias else None
    _check_conv(x, w, b, (sh, sw), pads, (dh, dw), g, min(pe, ocg), simd)


@needs_csim
@pytest.mark.parametrize("simd", [1, 4, 9, 18, 64])
def test_conv2d_padded_taps_add_zero(simd):
    """3x3 pad 1 over a 4x5 image, 2 channels: with every input and weight +1 the output
    counts the taps inside the image (corner 4, edge 6, interior 9, times 2 channels);
    with the weights −1 it is the negative. Encoding a padded tap as −1 or +1, or using
    2·popcount − K over the whole window, gives other corner/edge values."""
    C, H, W = 2, 4, 5
    x = np.ones((1, C, H, W), np.int64)
    inside = np.array([[min(i + 1, H - 1) - max(i - 1, 0) + 1 for _ in range(W)] for i in range(H)]) * \
        np.array([[min(j + 1, W - 1) - max(j - 1, 0) + 1 for j in range(W)] for _ in range(H)])
    assert inside[0, 0] == 4 and inside[0, 2] == 6 and inside[1, 1] == 9
    w = np.ones((2, C, 3, 3), np.int64)
    w[1] = -1
    got = _check_conv(x, w, None, (1, 1), (1, 1, 1, 1), (1, 1), 1, 2, simd)
    assert np.array_equal(got[0, 0], C * inside) and np.array_equal(got[0, 1], -C * inside)
    # all inputs -1 against +1 weights: disagreeing real taps, still 0 for the padded ones
    got = _check_conv(-x, w, np.array([5, -5]), (1, 1), (1, 1, 1, 1), (1, 1), 1, 1, simd)
    assert np.array_equal(got[0, 0], 5 - C * inside) and np.array_equal(got[0, 1], -5 + C * inside)


@needs_csim
def test_conv2d_parity_follows_inside_taps():
    """§11: with t taps inside the window, acc − b has the parity of t (not of K): a 3x3
    pad-2 dilation-2 conv on a 3x3 single-channel image has windows with 1..4 taps inside."""
    rng = np.random.default_rng(11)
    x, w = _pm1(rng, (3, 1, 3, 3)), _pm1(rng, (3, 1, 3, 3))
    got = _check_conv(x, w, None, (1, 1), (2, 2, 2, 2), (2, 2), 1, 3, 5)
    taps = _pm1_conv(np.ones_like(x), np.ones_like(w), None, (1, 1), (2, 2, 2, 2), (2, 2), 1)
    assert set(np.unique(taps).tolist()) == {1, 2, 4}
    assert np.array_equal(got % 2, taps % 2) and np.all(np.abs(got) <= taps)


@needs_csim
@pytest.mark.parametrize("xt,wt", [(I(2, True), BP), (BP, I(2, True)), (I(4, False), BP)])
def test_conv2d_multibit_operand_not_binary(xt, wt):
    """A conv with a multi-bit operand multiplies (probe count 0), result == reference."""
    rng = np.random.default_rng(5)

    def codes(t, shape):
        return _pm1(rng, shape) if t.bipolar else rng.integers(t.lo, t.hi + 1, shape)

    x, w = codes(xt, (1, 2, 5, 5)), codes(wt, (3, 2, 3, 3))
    got, info = _nl().conv2d_ex(x, w, None, 1, 1, 1, 1, xt, wt, pe=3, simd=4)
    assert np.array_equal(got, R.conv2d(x, w, None, 1, 1, 1, 1, xt, wt))
    assert info["xnor_words"] == 0 and info["trips"] > 0


# ---------------------------------------------------------------------------------------
# Compile-time probe of the dispatch


_TRAIT_SRC = r"""
#include "codesign/conv.h"
#include "codesign/matmul.h"
#include "csim_io.h"
typedef codesign::IntT<1, true> Bp;
typedef codesign::IntT<2, true> S2;
typedef codesign::IntT<4, false> U4;
static_assert(codesign::Mvau<Bp, Bp, 12, 4, 2, 3>::xnor_datapath, "bipolar x bipolar Mvau must use XNOR-popcount");
static_assert(codesign::Mvau<Bp, Bp, 12, 4, 2, 3, true>::xnor_datapath, "... also with a bias");
static_assert(!codesign::Mvau<S2, Bp, 12, 4, 2, 3>::xnor_datapath, "int2 x bipolar multiplies");
static_assert(!codesign::Mvau<Bp, S2, 12, 4, 2, 3>::xnor_datapath, "bipolar x int2 multiplies");
static_assert(!codesign::Mvau<U4, S2, 12, 4, 2, 3>::xnor_datapath, "uint4 x int2 multiplies");
static_assert(codesign::Conv2d<Bp, Bp, 4, 6, 6, 8, 3, 3, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 5>::xnor_datapath,
              "bipolar x bipolar Conv2d must use XNOR-popcount");
static_assert(!codesign::Conv2d<U4, Bp, 4, 6, 6, 8, 3, 3>::xnor_datapath, "uint4 x bipolar conv multiplies");
int main() {
    csim::Out out;
    out.put_scalar_i64("ok", 1);
    return 0;
}
"""


@needs_csim
def test_dispatch_trait_compiles():
    """The ``xnor_datapath`` trait is true exactly for bipolar x bipolar (static_asserts)."""
    assert int(csim.run(_TRAIT_SRC, {}, name="binary_mvau_trait")["ok"]) == 1
