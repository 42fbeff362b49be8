"""§2 matmul / acc_bits and §3 dyadic / requant of the reference, against
independent derivations:

* matmul against plain Python ``int`` arithmetic (arbitrary precision, no numpy);
* acc_bits against widths derived by hand below, and the extreme corner of
  each configuration actually evaluated (it fits the width, and one bit less
  would overflow);
* matmul + requant against Brevitas ``QuantLinear`` on power-of-two scales;
* dyadic against an exact ``fractions.Fraction`` construction of §3, and
  requant against exact rational round-half-up of ``acc·M/2^sh``.
"""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from codesign.sim import reference as ref
from codesign.sim.reference import IntType

# ---------------------------------------------------------------------------
# helpers (pure Python ints)
# ---------------------------------------------------------------------------


def py_matmul(a2d, w2d, bias=None):
    """Python-int matmul of nested lists: (M, K) x (K, N) + (N,)."""
    K, N = len(w2d), len(w2d[0])
    out = []
    for row in a2d:
        out.append([sum(int(row[k]) * int(w2d[k][n]) for k in range(K)) + (int(bias[n]) if bias is not None else 0)
                    for n in range(N)])
    return out


def type_range(t: IntType):
    """Range of §0, written out here from the table (not ref.int_range)."""
    if t.bits == 1 and t.signed:
        return -1, 1
    if t.signed:
        return -(1 << (t.bits - 1)) + (1 if t.narrow else 0), (1 << (t.bits - 1)) - 1
    return 0, (1 << t.bits) - 1 - (1 if t.narrow else 0)


def random_codes(rng, t: IntType, shape):
    lo, hi = type_range(t)
    if t.bits == 1 and t.signed:
        return rng.choice(np.array([-1, 1]), size=shape)
    # mix uniform codes with the extremes, which decide overflow
    u = rng.integers(lo, hi + 1, size=shape)
    ext = rng.choice(np.array([lo, hi]), size=shape)
    return np.where(rng.random(shape) < 0.3, ext, u)


act_types = st.one_of(
    st.just(IntType(1, True)),                                          # bipolar
    st.builds(IntType, st.integers(2, 8), st.booleans(), st.booleans()),
    st.builds(IntType, st.integers(2, 8), st.just(False), st.just(False)),
)  # (an unsigned 1-bit operand is rejected by matmul, see the bad-input tests)
weight_types = st.one_of(
    st.just(IntType(1, True)),
    st.builds(IntType, st.integers(2, 8), st.just(True), st.booleans()),
)


# ---------------------------------------------------------------------------
# matmul vs Python ints
# ---------------------------------------------------------------------------

@given(a_t=act_types, w_t=weight_types, batch=st.lists(st.integers(1, 3), min_size=0, max_size=2),
       K=st.one_of(st.integers(1, 40), st.sampled_from([255, 256, 1023])), N=st.integers(1, 6),
       bias=st.sampled_from(["none", "small", "int32"]), seed=st.integers(0, 2**32 - 1))
def test_matmul_vs_python_ints(a_t, w_t, batch, K, N, bias, seed):
    rng = np.random.default_rng(seed)
    a = random_codes(rng, a_t, tuple(batch) + (K,))
    w = random_codes(rng, w_t, (K, N))
    b = None
    if bias == "small":
        b = rng.integers(-1000, 1001, size=N)
    elif bias == "int32":
        b = rng.choice(np.array([-(2**31), 2**31 - 1, 0, 12345]), size=N)
    acc = ref.matmul(a, w, b, a_t, w_t)
    assert acc.dtype == np.int64 and acc.shape == tuple(batch) + (N,)
    a2 = a.reshape(-1, K).tolist()
    exp = py_matmul(a2, w.tolist(), None if b is None else b.tolist())
    assert acc.reshape(-1, N).tolist() == exp
    # every value lies in the claimed accumulator range (bias: its actual min/max)
    blo, bhi = (0, 0) if b is None else (int(b.min()), int(b.max()))
    W = ref.acc_bits(K, a_t, w_t, blo, bhi)
    flat = [v for row in exp for v in row]
    assert all(-(1 << (W - 1)) <= v <= (1 << (W - 1)) - 1 for v in flat)


@given(a_t=st.sampled_from([IntType(8, True), IntType(8, False), IntType(8, True, True)]),
       w_t=st.sampled_from([IntType(8, True), IntType(8, True, True)]),
       K=st.integers(2048, 4096), N=st.integers(1, 3), seed=st.integers(0, 2**32 - 1))
def test_matmul_large_k_near_extreme_exact(a_t, w_t, K, N, seed):
    """Sums far beyond 2^24 (float32's exact range) made of non-uniform odd products:
    every partial sum must stay exact (the reference accumulates in float64, < 2^52)."""
    rng = np.random.default_rng(seed)
    (alo, ahi), (wlo, whi) = type_range(a_t), type_range(w_t)
    a = ahi - rng.integers(0, 4, size=(2, K))
    sign = rng.choice(np.array([-1, 1]), size=N)
    w = np.where(sign > 0, whi - rng.integers(0, 4, size=(K, N)), wlo + rng.integers(0, 4, size=(K, N)))
    acc = ref.matmul(a, w, None, a_t, w_t)
    exp = py_matmul(a.tolist(), w.tolist())
    assert acc.tolist() == exp
    assert max(abs(v) for row in exp for v in row) > 2**24


@given(batch=st.integers(1, 3), K=st.integers(1, 24), N=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
def test_matmul_batched_runtime_operand(batch, K, N, seed):
    """Activation x activation (Q·Kᵀ): w is a batched runtime tensor (B, K, N), int8 x int8."""
    rng = np.random.default_rng(seed)
    t = IntType(8, True)
    a = random_codes(rng, t, (batch, 3, K))
    w = random_codes(rng, t, (batch, K, N))
    acc = ref.matmul(a, w, None, t, t)
    for i in range(batch):
        assert acc[i].tolist() == py_matmul(a[i].tolist(), w[i].tolist())


# Hand-derived accumulator widths (§2). P_lo/P_hi are the extreme corner products,
# the interval is [K·min(P_lo,0) + b_lo, K·max(P_hi,0) + b_hi], and W is the smallest
# width with -2^(W-1) <= lo and hi <= 2^(W-1) - 1.
#
#  int8 x int8, K=768: corners (-128)(-128)=16384, (-128)(127)=-16256, 127·127=16129
#     -> [768·-16256, 768·16384] = [-12 484 608, 12 582 912]; 2^23 = 8 388 608 < 12 582 912
#     <= 2^24 - 1 = 16 777 215 -> 25 bits. Extreme corner a = w = -128: 12 582 912.
#  uint8 x int4, K=3072 (BERT FFN2): corners 255·(-8) = -2040, 255·7 = 1785, 0
#     -> [-6 266 880, 5 483 520]; 2^22 = 4 194 304 < both magnitudes <= 2^23 -> 24 bits.
#     Extreme corner a = 255, w = -8: -6 266 880 < -2^22 (overflows 23 bits).
#  uint8 x int8, K=4096: corners 255·(-128) = -32640, 255·127 = 32385
#     -> [-133 693 440, 132 648 960]; 2^26 = 67 108 864 < |lo| <= 2^27 = 134 217 728 -> 28 bits.
#     Extreme corner a = 255, w = -128.
#  int8 x int8, K=4096: [4096·-16256, 4096·16384] = [-66 584 576, 67 108 864 = 2^26];
#     hi = 2^26 exceeds 2^26 - 1 by exactly one -> 28 bits (27 would wrap the corner
#     a = w = -128 to -2^26).
#  int8 x bipolar, K=4096: corners ±128, ±127 -> [-524 288, 524 288 = 2^19] -> 21 bits.
#  bipolar x bipolar, K=255: [-255, 255]; 255 > 2^7 - 1 = 127, 255 <= 2^8 - 1 -> 9 bits.
#  int4 x int4, K=1: corners 64, -56, 49 -> [-56, 64]; 64 > 63 -> 8 bits.
#  uint2 x int2-narrow ([0,3] x [-1,1]), K=10: corners 0, -3, 3 -> [-30, 30] -> 6 bits.
#  int8n x int8n (narrow), K=512: corners ±127·127 = ±16129 -> [-8 258 048, 8 258 048];
#     2^22 = 4 194 304 < 8 258 048 <= 2^23 - 1 = 8 388 607 -> 24 bits.
#  uint8 x int4, K=3072 with an unknown (int32-range) bias:
#     [-6 266 880 - 2^31, 5 483 520 + 2^31 - 1] = [-2 153 750 528, 2 152 967 167]
#     -> |lo| > 2^31 = 2 147 483 648, <= 2^32 -> 33 bits.
ACC_CASES = [
    # (a_type, w_type, K, bias_lo, bias_hi, W, (a corner, w corner) reaching the binding end)
    (IntType(8, True), IntType(8, True), 768, 0, 0, 25, (-128, -128)),
    (IntType(8, False), IntType(4, True), 3072, 0, 0, 24, (255, -8)),
    (IntType(8, False), IntType(8, True), 4096, 0, 0, 28, (255, -128)),
    (IntType(8, True), IntType(8, True), 4096, 0, 0, 28, (-128, -128)),
    (IntType(8, True), IntType(1, True), 4096, 0, 0, 21, (-128, -1)),
    (IntType(1, True), IntType(1, True), 255, 0, 0, 9, (1, 1)),
    (IntType(4, True), IntType(4, True), 1, 0, 0, 8, (-8, -8)),
    (IntType(2, False), IntType(2, True, True), 10, 0, 0, 6, (3, -1)),
    (IntType(8, True, True), IntType(8, True, True), 512, 0, 0, 24, (127, 127)),
    (IntType(8, False), IntType(4, True), 3072, -(2**31), 2**31 - 1, 33, None),
]


@pytest.mark.parametrize("a_t,w_t,K,blo,bhi,W,corner", ACC_CASES)
def test_acc_bits_hand_derived(a_t, w_t, K, blo, bhi, W, corner):
    assert ref.acc_bits(K, a_t, w_t, blo, bhi) == W
    if corner is None:
        return
    ca, cw = corner
    # Evaluate all four corners through matmul and with Python ints.
    (alo, ahi), (wlo, whi) = type_range(a_t), type_range(w_t)
    sums = []
    for av in (alo, ahi):
        for wv in (wlo, whi):
            got = int(ref.matmul(np.full((1, K), av), np.full((K, 1), wv), None, a_t, w_t)[0, 0])
            exp = sum(av * wv for _ in range(K))
            assert got == exp
            sums.append(exp)
    lo, hi = -(1 << (W - 1)), (1 << (W - 1)) - 1
    assert all(lo <= v <= hi for v in sums)
    # the binding corner lies outside the range one bit narrower
    v = K * ca * cw
    assert v in sums
    assert not (-(1 << (W - 2)) <= v <= (1 << (W - 2)) - 1)
    # and the claimed interval is exactly the corners' hull (with 0)
    assert ref.acc_range(K, a_t, w_t) == (min(min(sums), 0), max(max(sums), 0))


def test_acc_bits_documented_ranges():
    """The two product ranges quoted in §2 and the FFN2 interval."""
    # int8 x int4: corners (-128)(-8)=1024, (-128)(7)=-896, 127(-8)=-1016, 127·7=889
    assert ref.acc_range(1, IntType(8, True), IntType(4, True)) == (-1016, 1024)
    assert ref.acc_range(1, IntType(8, False), IntType(4, True)) == (-2040, 1785)
    assert ref.acc_range(3072, IntType(8, False), IntType(4, True)) == (-6266880, 5483520)


# ---------------------------------------------------------------------------
# matmul + requant vs Brevitas QuantLinear (power-of-two scales)
# ---------------------------------------------------------------------------
#
# Relation: every scale is a power of two. The input and weight fake-quant values
# a·s_in and w·s_w are exact in float32, every product and partial sum of F.linear
# is an integer multiple of s_in·s_w[c] below 2^24 of them (|acc| <= 48·255·128 +
# |bias| <= 1 566 720 + √48·2^14/2 < 2^21 here), so the float32 linear output is
# exactly acc·s_in·s_w[c] (the bias a·s_in·s_w is exact too); the
# output quantizer divides by s_out (a power of two: exact) and rounds with
# torch.round (half to even), then clamps. So torch's code is
#     clamp(round_half_even(t)),  t = acc·r  exactly,  r = s_in·s_w[c]/s_out = 2^-k.
# dyadic(2^-k) = (2^(m-1), m-1+k) represents r exactly, so the integer op returns
#     clamp(floor(t + 1/2)).
# They agree everywhere except exact ties t = j + 1/2 (possible when k >= 1):
# the integer op gives clamp(j + 1), torch gives clamp(j) for even j, clamp(j + 1)
# for odd j. The test asserts == off ties and exactly that relation on ties.


def _brevitas_modules(a_signed, a_bits, w_bits, per_channel, out_signed, out_bits, K, N, s_in, e_w, s_out, bmax, rng):
    from brevitas.nn import QuantIdentity, QuantLinear
    from brevitas.quant import Int32Bias
    from brevitas.quant.fixed_point import (Int8ActPerTensorFixedPointMinMaxInit, Int8WeightPerChannelFixedPoint,
                                            Int8WeightPerTensorFixedPoint, Uint8ActPerTensorFixedPointMaxInit)

    # scale = max_val / 2^(b-1) (signed) or max_val / 2^b (unsigned) for these
    # PoT min/max-init quantizers (checked below against the returned .scale)
    if a_signed:
        inp = QuantIdentity(act_quant=Int8ActPerTensorFixedPointMinMaxInit, bit_width=a_bits,
                            min_val=-s_in * 2 ** (a_bits - 1), max_val=s_in * 2 ** (a_bits - 1),
                            return_quant_tensor=True)
    else:
        inp = QuantIdentity(act_quant=Uint8ActPerTensorFixedPointMaxInit, bit_width=a_bits,
                            max_val=s_in * 2**a_bits, return_quant_tensor=True)
    if out_signed:
        out_kw = dict(output_quant=Int8ActPerTensorFixedPointMinMaxInit, output_bit_width=out_bits,
                      output_min_val=-s_out * 2 ** (out_bits - 1), output_max_val=s_out * 2 ** (out_bits - 1))
    else:
        out_kw = dict(output_quant=Uint8ActPerTensorFixedPointMaxInit, output_bit_width=out_bits,
                      output_max_val=s_out * 2**out_bits)
    wq = Int8WeightPerChannelFixedPoint if per_channel else Int8WeightPerTensorFixedPoint
    fc = QuantLinear(K, N, bias=True, weight_quant=wq, weight_bit_width=w_bits, bias_quant=Int32Bias,
                     return_quant_tensor=True, **out_kw)
    # weights: narrow codes with one code at +hi per scale group. The PoT max-stats
    # scale is 2^ceil(log2(max|w| / 2^(b-1))); with max|w| = hi·(1 + 2^-10)·2^e that is
    # exactly 2^e for every b >= 2 (for b = 2, hi/2^(b-1) = 1/2 would otherwise give
    # 2^(e-1)), and the code of that element still rounds to hi.
    hi = 2 ** (w_bits - 1) - 1
    codes = rng.integers(-hi, hi + 1, size=(N, K))
    codes[:, 0] = hi
    s_w = np.array([2.0 ** e for e in e_w])[:, None]
    bias_codes = rng.integers(-bmax, bmax + 1, size=N)
    wf = (codes * s_w).astype(np.float64)
    wf[:, 0] *= 1 + 2.0**-10
    with torch.no_grad():
        fc.weight.copy_(torch.tensor(wf, dtype=torch.float32))
        fc.bias.copy_(torch.tensor(bias_codes * s_in * s_w[:, 0], dtype=torch.float32))
    return inp.eval(), fc.eval(), codes, bias_codes


def _is_pot(v):
    f, _ = np.frexp(np.asarray(v, dtype=np.float64))
    return bool(np.all(f == 0.5))


@given(a_signed=st.booleans(), a_bits=st.integers(2, 8), w_bits=st.integers(2, 8), per_channel=st.booleans(),
       out_signed=st.booleans(), out_bits=st.integers(2, 8), K=st.integers(1, 48), N=st.integers(1, 6),
       B=st.integers(1, 5), e_in=st.integers(-6, 0), e_w0=st.integers(-8, -1),
       e_w_spread=st.lists(st.integers(0, 3), min_size=6, max_size=6), dk=st.integers(-1, 3),
       seed=st.integers(0, 2**32 - 1))
def test_matmul_requant_vs_brevitas_quantlinear(a_signed, a_bits, w_bits, per_channel, out_signed, out_bits,
                                                K, N, B, e_in, e_w0, e_w_spread, dk, seed):
    rng = np.random.default_rng(seed)
    s_in = 2.0**e_in
    # output scale: r = 2^-k puts a typical |acc| ~ sqrt(K)·|a|max·|w|max/2 near the top of
    # the output range (dk = -1..3 moves it into saturation or well inside); the bias codes
    # are of the same magnitude
    typical = math.sqrt(K) * 2.0 ** (a_bits - 1) * 2.0 ** (w_bits - 1) / 2
    k = max(round(math.log2(typical)) - (out_bits - 1) + dk, -10)
    e_w = [e_w0 - (e_w_spread[c] if per_channel else 0) for c in range(N)]
    s_out = s_in * 2.0**e_w0 * 2.0**k  # r_c = 2^(e_w[c] - e_w0 - k) = 2^-(k + spread_c)
    inp, fc, w_codes, b_codes = _brevitas_modules(a_signed, a_bits, w_bits, per_channel, out_signed, out_bits,
                                                  K, N, s_in, e_w, s_out, int(typical), rng)
    a_lo, a_hi = (-(2 ** (a_bits - 1)), 2 ** (a_bits - 1) - 1) if a_signed else (0, 2**a_bits - 1)
    x = torch.tensor(rng.uniform(a_lo - 2, a_hi + 2, size=(B, K)) * s_in, dtype=torch.float32)
    with torch.no_grad():
        qx = inp(x)
        qw = fc.quant_weight()
        qb = fc.bias_quant(fc.bias, qx, qw)
        qy = fc(qx)
    # extract codes and scales through the quant-tensor API
    a = qx.int().numpy().astype(np.int64)
    w = qw.int().numpy().astype(np.int64).T            # (K, N)
    b = qb.int().numpy().astype(np.int64).reshape(N)
    y_torch = qy.int().numpy().astype(np.int64)
    sc_in, sc_w, sc_out = float(qx.scale), qw.scale.double().numpy().reshape(-1), float(qy.scale)
    assert _is_pot(sc_in) and _is_pot(sc_w) and _is_pot(sc_out)
    assert sc_in == s_in and sc_out == s_out and np.all(sc_w == np.array([2.0**e for e in e_w]))
    assert np.array_equal(w.T, w_codes) and np.array_equal(b, b_codes)

    a_t = IntType(a_bits, a_signed)
    w_t = IntType(w_bits, True, True)
    y_t = IntType(out_bits, out_signed)
    acc = ref.matmul(a, w, b, a_t, w_t)
    acc_py = py_matmul(a.tolist(), w.tolist(), b.tolist())
    assert acc.tolist() == acc_py
    r = np.broadcast_to(sc_in * sc_w / sc_out, (N,))
    M, sh = ref.dyadic(r)
    # exact: M·2^-sh == r for every channel
    assert all(Fraction(int(Mi), 2 ** int(si)) == Fraction(float(ri)) for Mi, si, ri in zip(M, sh, r))
    y_ref = ref.requant(acc, M, sh, y_t)

    lo, hi = type_range(y_t)
    clamp = lambda v: min(max(v, lo), hi)  # noqa: E731
    n_ties = 0
    for i in range(B):
        for c in range(N):
            t = acc_py[i][c] * Fraction(float(r[c]))
            j = math.floor(t)
            if t - j == Fraction(1, 2):
                n_ties += 1
                assert y_ref[i, c] == clamp(j + 1)
                assert y_torch[i, c] == clamp(j if j % 2 == 0 else j + 1)
            else:
                assert y_ref[i, c] == y_torch[i, c] == clamp(round(t))
    event("exact ties present" if n_ties else "no ties")
    sat_frac = float(np.mean((y_ref == hi) | ((y_ref == lo) & (lo != 0))))
    event("saturated: none" if sat_frac == 0 else "saturated: some" if sat_frac < 0.5 else "saturated: most")


# ---------------------------------------------------------------------------
# dyadic
# ---------------------------------------------------------------------------

def fraction_dyadic(r: float, m: int):
    """§3 dyadic built with exact rationals: find sh0 with 2^(m-1) <= r·2^sh0 < 2^m,
    M = round_half_even(r·2^sh0) (Python's round on a Fraction), carry, tiny-r rule."""
    F = Fraction(r)
    n = F.numerator.bit_length() - F.denominator.bit_length()  # floor(log2 F) is n or n-1
    if F < Fraction(2) ** n:
        n -= 1
    assert Fraction(2) ** n <= F < Fraction(2) ** (n + 1)
    sh = m - 1 - n
    M = round(F * Fraction(2) ** sh)
    if M == 2**m:
        M, sh = 2 ** (m - 1), sh - 1
    if sh > 62:
        M, sh = round(F * 2**62), 62
    return M, sh


ratios = st.one_of(
    st.floats(min_value=5e-324, max_value=2.0**14, allow_nan=False, allow_infinity=False).filter(lambda v: v > 0),
    st.builds(lambda u: 10.0**u, st.floats(-40, 4.2)),
    st.builds(lambda e: 2.0**e, st.integers(-70, 14)),
    st.builds(lambda e, d: 2.0**e * (1 - d * 2.0**-53), st.integers(-60, 14), st.integers(1, 2**30)),  # just below PoT
)


@given(r=ratios, m=st.sampled_from([2, 8, 12, 16, 16, 16, 18, 24]))
def test_dyadic_exact_construction(r, m):
    if r >= 2.0 ** (m - 1):
        return  # the band [2^(m-1), 2^m - 1/2) is covered separately (contract ambiguity)
    M, sh = ref.dyadic(r, m)
    M, sh = int(M), int(sh)
    assert (M, sh) == fraction_dyadic(r, m)
    F = Fraction(r)
    # nearest: |M - r·2^sh| <= 1/2 always (also in the tiny-r branch)
    assert abs(M - F * 2**sh) <= Fraction(1, 2)
    assert 0 <= sh <= 62
    if sh < 62 or M >= 2 ** (m - 1):
        assert 2 ** (m - 1) <= M < 2**m
        # relative error <= 2^-m
        assert abs(Fraction(M, 2**sh) - F) <= F / 2**m
        event("normal")
    else:
        event("tiny r (sh clamped to 62)")


@given(r=st.lists(st.floats(1e-12, 1e4), min_size=1, max_size=8))
def test_dyadic_vectorised_per_channel(r):
    M, sh = ref.dyadic(np.array(r))
    assert M.shape == sh.shape == (len(r),)
    for Mi, si, ri in zip(M, sh, r):
        assert (int(Mi), int(si)) == fraction_dyadic(ri, 16)


def test_dyadic_hand_cases():
    # r = 1: f = 0.5, e = 1 -> M = 2^15, sh = 15
    assert tuple(map(int, ref.dyadic(1.0))) == (2**15, 15)
    # r = 0.75: f = 0.75, e = 0 -> M = 0.75·2^16 = 49152, sh = 16
    assert tuple(map(int, ref.dyadic(0.75))) == (49152, 16)
    # carry: r = 1 - 2^-20: f·2^16 = 65535.9999... rounds to 2^16 -> M = 2^15, sh = 15
    assert tuple(map(int, ref.dyadic(1 - 2.0**-20))) == (2**15, 15)
    # r = 1/3, m = 16: f = 2/3, e = -1, 2/3·2^16 = 43690.67 -> 43691, sh = 17
    assert tuple(map(int, ref.dyadic(1 / 3))) == (43691, 17)
    # tiny: r = 2^-50: sh = 16 + 49 = 65 > 62 -> M = 2^-50·2^62 = 4096, sh = 62
    assert tuple(map(int, ref.dyadic(2.0**-50))) == (4096, 62)
    # tinier: r = 2^-70 -> M = round(2^-8) = 0
    assert tuple(map(int, ref.dyadic(2.0**-70))) == (0, 62)
    # largest accepted ratio below 2^(m-1): sh = 1
    assert tuple(map(int, ref.dyadic(2.0**14))) == (2**15, 1)


def test_dyadic_rejects_large_and_invalid_ratios():
    for r in (2.0**16, 1e6, 0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"^dyadic:"):
            ref.dyadic(r)
    # r just below 2^m rounds up to the carry with sh = -1
    with pytest.raises(ValueError, match=r"^dyadic:"):
        ref.dyadic(2.0**16 - 0.25)
    with pytest.raises(ValueError, match=r"^dyadic:"):
        ref.dyadic(1.0, m=25)


# ---------------------------------------------------------------------------
# requant vs exact rationals
# ---------------------------------------------------------------------------

def frac_requant(acc: int, M: int, sh: int, lo: int, hi: int) -> int:
    v = math.floor(Fraction(acc * M, 2**sh) + Fraction(1, 2))  # round half up, exactly
    return min(max(v, lo), hi)


out_types = st.builds(IntType, st.integers(2, 16), st.booleans(), st.booleans())


@st.composite
def requant_case(draw):
    C = draw(st.integers(1, 4))
    tie = draw(st.booleans())
    Ms, shs = [], []
    for _ in range(C):
        if tie:  # power-of-two multipliers, so acc can be made an exact tie
            j = draw(st.integers(0, 16))
            Ms.append(2**j)
            shs.append(draw(st.integers(j + 1, min(62, j + 30))))
        else:
            Ms.append(draw(st.integers(0, 2**24 - 1)))
            shs.append(draw(st.integers(0, 62)))
    mbits = max(16, max(M.bit_length() for M in Ms))
    amax = 2 ** (62 - mbits - 1) - 1  # W_acc + mbits <= 62
    rows = draw(st.integers(1, 4))
    acc = []
    for _ in range(rows):
        row = []
        for c in range(C):
            if tie:
                # acc·M/2^sh = o + 1/2 with odd 2o+1  <=>  acc = ±(2o+1)·2^(sh-1-j)
                j = Ms[c].bit_length() - 1
                unit = 2 ** (shs[c] - 1 - j)
                odd_max = amax // unit
                if odd_max >= 1:
                    o = draw(st.integers(0, (odd_max - 1) // 2))
                    row.append(draw(st.sampled_from([1, -1])) * (2 * o + 1) * unit)
                else:
                    row.append(draw(st.integers(-amax, amax)))
            else:
                row.append(draw(st.one_of(st.integers(-amax, amax), st.integers(-(2**20), 2**20),
                                          st.sampled_from([-amax, amax, 0, 1, -1]))))
        acc.append(row)
    return acc, Ms, shs


@given(case=requant_case(), y_t=out_types)
def test_requant_vs_fractions(case, y_t):
    acc, Ms, shs = case
    got = ref.requant(np.array(acc, dtype=np.int64), np.array(Ms), np.array(shs), y_t)
    lo, hi = type_range(y_t)
    exp = [[frac_requant(v, Ms[c], shs[c], lo, hi) for c, v in enumerate(row)] for row in acc]
    assert got.tolist() == exp


def test_requant_hand_cases():
    i8 = IntType(8, True)
    # §0: rshr(-3, 1) = -1, rshr(3, 1) = 2, rshr(-1, 1) = 0 (ties toward +inf)
    assert ref.requant([-3, 3, -1, 1, -5, 5], 1, 1, i8).tolist() == [-1, 2, 0, 1, -2, 3]
    # M = 3, sh = 2: acc·3/4 for acc = -2, 2, -6, 6 -> -1.5, 1.5, -4.5, 4.5 -> -1, 2, -4, 5
    assert ref.requant([-2, 2, -6, 6], 3, 2, i8).tolist() == [-1, 2, -4, 5]
    # sh = 0: identity then saturation
    assert ref.requant([-200, -128, 127, 200], 1, 0, i8).tolist() == [-128, -128, 127, 127]
    # unsigned output = fused ReLU; narrow int8 saturates at -127
    assert ref.requant([-1000, -1, 0, 1000], 1, 0, IntType(8, False)).tolist() == [0, 0, 0, 255]
    assert ref.requant([-1000, 1000], 1, 0, IntType(8, True, True)).tolist() == [-127, 127]
    # per-channel broadcast: channel 0 halves, channel 1 quarters
    assert ref.requant([[5, 5], [-5, -5]], [1, 1], [1, 2], i8).tolist() == [[3, 1], [-2, -1]]
    # 16-bit output
    assert ref.requant([2**40], 1, 10, IntType(16, True)).tolist() == [2**15 - 1]


def test_dyadic_large_ratio_band():
    """§3 step 4, derived by hand for m = 16: r in [2^15, 2^16 - 1/2) gives M = round(r), sh = 0;
    from 2^16 - 1/2 on, round(r) needs 17 bits and the ratio is rejected."""
    assert [int(v) for v in ref.dyadic(40000.0)] == [40000, 0]
    assert [int(v) for v in ref.dyadic(65535.4)] == [65535, 0]
    assert [int(v) for v in ref.dyadic(32768.0)] == [32768, 0]
    with pytest.raises(ValueError, match=r"^dyadic: .*>= 2\^16 - 1/2"):
        ref.dyadic(65535.5)


def test_exact_weights_same_as_plain_weights():
    """Prepared float64 weights (validated once, reused by the IR executor) give the same
    accumulators as plain integer weights, and keep the type and range checks."""
    rng = np.random.default_rng(5)
    a = rng.integers(0, 256, (3, 40))
    w = rng.integers(-8, 8, (40, 7)).astype(np.int8)
    b = rng.integers(-1000, 1000, 7)
    u8, i4 = IntType(8, False), IntType(4, True)
    prepared = ref.exact_weights(w, i4)
    assert np.array_equal(ref.matmul(a, prepared, b, u8, i4), ref.matmul(a, w, b, u8, i4))
    assert not prepared.codes.flags.writeable
    with pytest.raises(ValueError, match=r"^matmul: weights were prepared as int4"):
        ref.matmul(a, prepared, b, u8, IntType(8, True))
    with pytest.raises(ValueError, match=r"^exact_weights: w values \[-9, .*outside int4"):
        ref.exact_weights(np.array([[-9, 0]]), i4)
