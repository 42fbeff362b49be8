"""§8 binary dot product / thresholds / BN folding and §9 pooling of the
reference, against independent derivations: a ±1 integer matmul, a direct
Python loop, the float64 BatchNorm + quantizer, and torch's pooling on
integer-valued float64 tensors (window sums of powers of two are exact in
float64, so torch's mean times the window size recovers the exact sum).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import event, given
from hypothesis import strategies as st

from codesign.sim import reference as ref
from codesign.sim.reference import IntType

# ---------------------------------------------------------------------------
# §8 xnor-popcount
# ---------------------------------------------------------------------------


@given(M=st.integers(1, 4), N=st.integers(1, 5), K=st.one_of(st.integers(1, 300), st.integers(1, 40).map(lambda v: 8 * v)),
       garbage=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_xnor_popcount_equals_pm1_matmul(M, N, K, garbage, seed):
    rng = np.random.default_rng(seed)
    a = rng.choice(np.array([-1, 1]), size=(M, K))
    w = rng.choice(np.array([-1, 1]), size=(N, K))
    ab, wb = ref.pack_bipolar(a), ref.pack_bipolar(w)
    assert ab.shape == (M, (K + 7) // 8) and ab.dtype == np.uint8
    if garbage and K % 8:
        # bits beyond K in the last byte must be masked out
        pad = np.uint8(0xFF ^ ((1 << (K % 8)) - 1))
        ab[:, -1] |= rng.integers(0, 256, size=M, dtype=np.uint8) & pad
        wb[:, -1] |= rng.integers(0, 256, size=N, dtype=np.uint8) & pad
    dot = ref.xnor_popcount(ab, wb, K)
    assert dot.shape == (M, N)
    assert np.array_equal(dot, a @ w.T)
    event("K % 8 != 0" if K % 8 else "K % 8 == 0")


def test_pack_bipolar_bit_order():
    # bit = (v+1)/2, little bit order: element k -> bit k % 8 of byte k // 8
    v = [1, -1, 1, 1, -1, -1, -1, -1, 1]
    assert ref.pack_bipolar(v).tolist() == [0b00001101, 0b00000001]
    # dot of a vector with itself is K, with its negation -K
    a = np.array(v)
    assert ref.xnor_popcount(ref.pack_bipolar(a), ref.pack_bipolar(a[None]), 9).tolist() == [9]
    assert ref.xnor_popcount(ref.pack_bipolar(a), ref.pack_bipolar(-a[None]), 9).tolist() == [-9]


# ---------------------------------------------------------------------------
# §8 threshold
# ---------------------------------------------------------------------------

def loop_threshold(acc, T, out_bias, bipolar):
    out = []
    for row in acc:
        r = []
        for c, v in enumerate(row):
            ts = T[c] if len(T) > 1 else T[0]
            y = sum(1 for t in ts if v >= t)
            r.append(2 * y - 1 if bipolar else y + out_bias)
        out.append(r)
    return out


@given(B=st.integers(1, 4), C=st.integers(1, 6), n=st.integers(1, 15), shared=st.booleans(),
       kind=st.sampled_from(["unsigned", "signed", "bipolar"]), seed=st.integers(0, 2**32 - 1))
def test_threshold_vs_python_loop(B, C, n, shared, kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "bipolar":
        n = 1
    T = np.sort(rng.integers(-50, 51, size=(1 if shared else C, n)), axis=1)  # duplicates allowed
    acc = rng.integers(-60, 61, size=(B, C))
    acc[0, 0] = T[0, 0]  # exactly on a threshold: counts as reached
    out_bias = -(2 ** (max(1, math.ceil(math.log2(n + 1))) - 1)) if kind == "signed" else 0
    got = ref.threshold(acc, T, out_bias, kind == "bipolar")
    assert got.tolist() == loop_threshold(acc.tolist(), T.tolist(), out_bias, kind == "bipolar")


# ---------------------------------------------------------------------------
# §8 BatchNorm + quantizer folded into thresholds
# ---------------------------------------------------------------------------

def quantizer(kind, bits, s_q):
    """(levels u_t, float function y -> code, out_bias, bipolar) of a monotone quantizer
    rounding half up (the level is reached when y >= u_t)."""
    if kind == "bipolar":
        return np.array([0.0]), (lambda y: np.where(y >= 0, 1, -1)), 0, True
    lo, hi = (0, 2**bits - 1) if kind == "unsigned" else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
    levels = (lo + np.arange(hi - lo) + 0.5) * s_q
    return levels, (lambda y: np.clip(np.floor(y / s_q + 0.5), lo, hi).astype(np.int64)), lo, False


@given(C=st.integers(1, 6), kind=st.sampled_from(["bipolar", "unsigned", "signed"]), bits=st.integers(2, 4),
       per_channel_scale=st.booleans(), neg_gamma=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_bn_thresholds_vs_float_bn(C, kind, bits, per_channel_scale, neg_gamma, seed):
    rng = np.random.default_rng(seed)
    gamma = rng.uniform(0.2, 3.0, C) * np.where(rng.random(C) < 0.5, 1, -1) if neg_gamma else rng.uniform(0.2, 3.0, C)
    beta = rng.normal(0, 1, C)
    mean = rng.normal(0, 1, C)
    var = rng.uniform(0.05, 4.0, C)
    eps = 1e-5
    s_acc = 2.0 ** -rng.uniform(2, 8, C) if per_channel_scale else 2.0 ** -rng.uniform(2, 8)
    s_q = rng.uniform(0.1, 1.0)
    levels, quant, out_bias, bipolar = quantizer(kind, bits, s_q)
    # §8: a channel with gamma < 0 is handled by negating its weights and bias, i.e. its
    # accumulator: BN(acc) = |γ|·(acc'·s − (−μ))/√(σ²+ε) + β with acc' = −acc.
    sign = np.where(gamma < 0, -1, 1)
    T = ref.bn_thresholds(gamma * sign, beta, mean * sign, var, eps, s_acc, levels)
    assert T.shape == (C, len(levels))
    lo, hi = int(T.min()) - 3, int(T.max()) + 3
    acc = np.arange(lo, hi + 1)[:, None] * np.ones((1, C), dtype=np.int64)       # every acc in range
    y = gamma * (acc * s_acc - mean) / np.sqrt(var + eps) + beta                 # float64 BN
    exp = quant(y)
    got = ref.threshold(acc * sign, T, out_bias, bipolar)
    # skip accumulators whose BN output is within float64 noise of a level boundary
    near = np.zeros_like(y, dtype=bool)
    for u in levels:
        near |= np.abs(y - u) <= 1e-9 * (1 + abs(u))
    assert np.array_equal(got[~near], exp[~near])
    assert near.mean() < 0.01
    # every level is actually crossed inside the range (the test exercises all thresholds)
    assert np.all(T >= lo) and np.all(T <= hi)


def test_bn_thresholds_hand_case():
    # gamma = 2, beta = -1, mean = 0.5, var + eps = 4 (std 2), s_acc = 1/4, sign quantizer:
    # T = ceil((0.5 + (0 + 1)·2/2) / (1/4)) = ceil(1.5·4) = 6; BN(acc=6) = 2(1.5 - 0.5)/2 - 1 = 0 -> +1
    T = ref.bn_thresholds([2.0], [-1.0], [0.5], [4.0], 0.0, 0.25, [0.0])
    assert T.tolist() == [[6]]
    assert ref.threshold([[5], [6], [7]], T, bipolar=True).tolist() == [[-1], [1], [1]]


# ---------------------------------------------------------------------------
# §9 pooling
# ---------------------------------------------------------------------------

pool_types = st.builds(IntType, st.integers(2, 8), st.booleans())


@st.composite
def pool_geometry(draw, pot=False):
    ks = [1, 2, 4] if pot else [1, 2, 3, 4, 5]
    kh, kw = draw(st.sampled_from(ks)), draw(st.sampled_from(ks))
    ph, pw = draw(st.integers(0, kh - 1)), draw(st.integers(0, kw - 1))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    H = draw(st.integers(max(1, kh - 2 * ph), 9))
    W = draw(st.integers(max(1, kw - 2 * pw), 9))
    return (kh, kw), (sh, sw), (ph, pw), H, W


@given(geo=pool_geometry(), x_t=pool_types, N=st.integers(1, 2), C=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_maxpool_vs_torch(geo, x_t, N, C, seed):
    (kh, kw), (sh, sw), (ph, pw), H, W = geo
    rng = np.random.default_rng(seed)
    x = rng.integers(x_t.lo, x_t.hi + 1, size=(N, C, H, W))
    y = ref.maxpool2d(x, (kh, kw), (sh, sw), (ph, pw), x_t)
    # torch pads max-pooling with -inf (and limits padding to k/2): pad explicitly with
    # -inf, pool without padding. The contract pads with lo_X; since every window holds at
    # least one real element (p < k) and lo_X <= every code, the maxima agree.
    xt = F.pad(torch.tensor(x, dtype=torch.float64), (pw, pw, ph, ph), value=-math.inf)
    yt = F.max_pool2d(xt, (kh, kw), stride=(sh, sw))
    assert np.isfinite(yt.numpy()).all()
    assert np.array_equal(y, yt.numpy().astype(np.int64))


def half_up_div(s: int, n: int) -> int:
    return (2 * s + n) // (2 * n)  # floor(s/n + 1/2) with Python ints


@given(geo=pool_geometry(pot=True), x_t=pool_types, N=st.integers(1, 2), C=st.integers(1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_avgpool_pot_window_exact(geo, x_t, N, C, seed):
    (kh, kw), (sh, sw), (ph, pw), H, W = geo
    n = kh * kw
    rng = np.random.default_rng(seed)
    x = rng.integers(x_t.lo, x_t.hi + 1, size=(N, C, H, W))
    M, shift = ref.dyadic(1.0 / n)  # s_y = s_x: r = 1/(kh·kw), a power of two: exact
    y = ref.avgpool2d(x, (kh, kw), M, shift, (sh, sw), (ph, pw), x_t)
    # zero padding, divisor kh·kw (count_include_pad); torch's mean·n is the exact sum
    xt = F.pad(torch.tensor(x, dtype=torch.float64), (pw, pw, ph, ph), value=0.0)
    sums = (F.avg_pool2d(xt, (kh, kw), stride=(sh, sw)) * n).numpy()
    assert np.array_equal(sums, np.round(sums))
    exp = np.vectorize(lambda s: min(max(half_up_div(int(s), n), x_t.lo), x_t.hi))(sums)
    assert np.array_equal(y, exp)


@pytest.mark.parametrize("H,W", [(2, 2), (4, 4), (2, 8), (8, 8), (3, 3), (5, 5), (7, 7), (1, 9), (11, 11)])
@pytest.mark.parametrize("x_t", [IntType(8, True), IntType(8, False), IntType(4, True)])
def test_global_avgpool(H, W, x_t):
    """Window = whole plane, s_y = s_x. Power-of-two n = H·W: exactly Σ/n rounded half up.
    Odd n <= 127: M·2^-sh = (1/n)(1 + ρ), |ρ| <= 2^-16, so the error in Σ/n is at most
    |Σ/n|·2^-16 <= 255·2^-16 < 1/256, while Σ/n is at least 1/(2n) >= 1/254 away from any
    half-integer (2Σ − n(2j+1) is odd): the result is exactly round(Σ/n), there are no ties."""
    n = H * W
    rng = np.random.default_rng(n)
    x = rng.integers(x_t.lo, x_t.hi + 1, size=(4, 3, H, W))
    x[0, 0] = x_t.hi
    x[0, 1] = x_t.lo
    M, shift = ref.dyadic(1.0 / n)
    y = ref.avgpool2d(x, (H, W), M, shift, in_type=x_t)
    assert y.shape == (4, 3, 1, 1)
    exp = np.array([[[[half_up_div(int(s), n)]] for s in row] for row in x.sum(axis=(2, 3)).tolist()])
    assert np.array_equal(y, exp)


def test_avgpool_hand_case():
    # 2x2 windows of [[1, 2], [3, 5]] -> 11/4 = 2.75 -> 3; [[-1, -2], [0, 1]] -> -2/4 = -0.5 -> 0 (half up)
    x = np.array([[[[1, 2, -1, -2], [3, 5, 0, 1]]]])
    M, sh = ref.dyadic(0.25)
    assert ref.avgpool2d(x, 2, M, sh).tolist() == [[[[3, 0]]]]
    # padding counts as 0 in a divisor of kh·kw: 1-row input, kernel 2x1, pad (1, 0):
    # padded rows [0, 0], [4, -3], [0, 0]; stride 2 -> one window (rows 0-1): 4/2 = 2, -3/2 -> -1 (half up)
    x = np.array([[[[4, -3]]]])
    M, sh = ref.dyadic(0.5)
    assert ref.avgpool2d(x, (2, 1), M, sh, stride=(2, 1), pad=(1, 0)).tolist() == [[[[2, -1]]]]
    # maxpool padding never wins: all-negative input, pad 1
    x = np.full((1, 1, 2, 2), -100)
    assert ref.maxpool2d(x, 2, 1, 1).tolist() == [[[[-100] * 3] * 3]]
