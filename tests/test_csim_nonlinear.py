"""reference == csim, with ``==`` on int64 codes, for softmax (§5), isqrt and LayerNorm (§6),
XNOR-popcount, the binary MVAU and MultiThreshold (§8), and pooling (§9).

Each property test draws its template configuration from a small covering set (one compile
per configuration, cached by codesign.hls.csim) and lets hypothesis vary the data within
it. Every test also checks the kernel's pipelined-iteration count (CODESIGN_TRIP) against
the cycle formula documented in its header.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from codesign.hls import csim
from codesign.hls import csim_nonlinear as hw
from codesign.sim import reference as ref
from codesign.sim.reference import IntType

pytestmark = pytest.mark.skipif(csim.available() is not None, reason=str(csim.available()))

I8, U8 = IntType(8, True), IntType(8, False)
BIP = IntType(1, True)


def assert_same(expected: np.ndarray, got: np.ndarray) -> None:
    assert got.dtype == np.int64 and expected.dtype == np.int64
    assert got.shape == expected.shape
    if not np.array_equal(expected, got):
        bad = np.argwhere(expected != got)[:8]
        raise AssertionError(f"{len(np.argwhere(expected != got))} mismatches, first at {bad.tolist()}: "
                             f"reference {expected[tuple(bad.T)].tolist()} vs csim {got[tuple(bad.T)].tolist()}")


def codes(t: IntType) -> st.SearchStrategy[int]:
    return st.sampled_from([-1, 1]) if t.bipolar else st.integers(t.lo, t.hi)


def lead_shape(draw, max_rows: int = 4) -> tuple[int, ...]:
    """Leading (batch) dimensions: (), (r,) or (a, b); the kernels loop over them at runtime."""
    return draw(st.sampled_from([(), (1,), (2,), (max_rows,), (2, 2)]))


# ---------------------------------------------------------------------------
# §5 softmax
# ---------------------------------------------------------------------------

# (in_type, N, EB, OB)
SOFTMAX_CONFIGS = [
    (I8, 16, 8, 8),                     # FQ-BERT defaults
    (IntType(4, False), 7, 12, 16),
    (IntType(2, True), 1, 1, 1),        # single-element rows, smallest EB/OB
    (IntType(5, True, True), 33, 16, 4),  # narrow input
    (U8, 64, 3, 2),
]


@st.composite
def softmax_case(draw):
    t, n, eb, ob = draw(st.sampled_from(SOFTMAX_CONFIGS))
    shape = lead_shape(draw) + (n,)
    x = draw(hnp.arrays(np.int64, shape, elements=codes(t)))
    if draw(st.booleans()):
        scale = draw(st.floats(1e-3, 8.0))
        table = ref.softmax_table(t, scale, eb)
    else:  # any valid ROM content, not only the default table (non-monotone, zeros)
        table = draw(hnp.arrays(np.int64, 1 << t.bits, elements=st.integers(0, (1 << eb) - 1)))
        table[0] = max(table[0], 1)
    return x, table, t, eb, ob


@given(softmax_case())
def test_softmax_matches_reference(case) -> None:
    x, table, t, eb, ob = case
    expected = ref.softmax(x, table, t, eb, ob)
    got, info = hw.softmax_ex(x, table, t, eb, ob)
    assert_same(expected, got)
    n = x.shape[-1]
    assert info["trips"] == 3 * n * (x.size // n)  # 3 passes of N per row


def test_softmax_all_equal_rows() -> None:
    t, n, eb, ob = SOFTMAX_CONFIGS[0]
    table = ref.softmax_table(t, 0.1, eb)
    x = np.array([[v] * n for v in (-128, -1, 0, 127)], dtype=np.int64)
    got = hw.softmax(x, table, t, eb, ob)
    assert_same(ref.softmax(x, table, t, eb, ob), got)
    # S = N (2^EB - 1), R = floor(2^32 / S), every p equal
    R = (1 << 32) // (n * ((1 << eb) - 1))
    p = (((1 << eb) - 1) * R + (1 << (31 - ob))) >> (32 - ob)
    assert np.all(got == p)


def test_softmax_dominant_element_clamps() -> None:
    # One element holds all the mass: e = S = 2^EB - 1, e*R = 2^32 - 1 rounds to 2^OB -> clamp.
    t, n, eb, ob = SOFTMAX_CONFIGS[0]
    table = np.zeros(256, dtype=np.int64)
    table[0] = 255
    x = np.full((3, n), -100, dtype=np.int64)
    x[0, 5] = 100
    x[1, 0] = 127
    x[2, :] = -128
    x[2, 15] = -127
    assert (255 * ((1 << 32) // 255) + (1 << 23)) >> 24 == 256  # unclamped value would be 2^OB
    expected = ref.softmax(x, table, t, eb, ob)
    assert_same(expected, hw.softmax(x, table, t, eb, ob))
    assert expected[0, 5] == expected[1, 0] == expected[2, 15] == 255
    # EB = 1, a single-element row: S = 1, R = 2^32 exactly (33 bits), e*R = 2^32 -> 2^OB -> clamp.
    t1, n1, eb1, ob1 = SOFTMAX_CONFIGS[2]
    table1 = ref.softmax_table(t1, 1.0, eb1)
    x1 = np.array([[-2], [-1], [0], [1]], dtype=np.int64)
    expected1 = ref.softmax(x1, table1, t1, eb1, ob1)
    assert_same(expected1, hw.softmax(x1, table1, t1, eb1, ob1))
    assert np.all(expected1 == 1)


def test_softmax_row_length_at_the_32_bit_limit() -> None:
    # EB = 16: N (2^16 - 1) < 2^32  <=>  N <= 65537; an all-equal row makes S = 2^32 - 1.
    t, eb, ob = IntType(3, False), 16, 16
    n = 65537
    assert n * ((1 << eb) - 1) == (1 << 32) - 1
    table = ref.softmax_table(t, 0.5, eb)
    rng = np.random.default_rng(5)
    x = np.stack([np.full(n, 7), rng.integers(0, 8, n), np.where(np.arange(n) == 3, 7, 0)]).astype(np.int64)
    got, info = hw.softmax_ex(x, table, t, eb, ob)
    assert_same(ref.softmax(x, table, t, eb, ob), got)
    assert np.all(got[0] == 1)  # R = 1, p = rshr(65535, 16) = 1
    assert info["trips"] == 3 * 3 * n
    for f in (ref.softmax, hw.softmax):
        with pytest.raises(ValueError, match="softmax"):
            f(np.zeros((1, n + 1), dtype=np.int64), table, t, eb, ob)


# ---------------------------------------------------------------------------
# §6 isqrt
# ---------------------------------------------------------------------------

ISQRT_CORNERS = sorted({0, 1, 2, 3, 4, 15, 16, 17, 99, 100, 101,
                        *[s * s + d for s in (2, 3, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 3037000499,
                                              2**32 - 1) for d in (-1, 0, 1) if 0 <= s * s + d < 2**64],
                        2**62 - 1, 2**62, 2**62 + 1, 2**63 - 1, 2**63, 2**64 - 2, 2**64 - 1})


def test_isqrt_corners() -> None:
    v = np.array(ISQRT_CORNERS, dtype=np.uint64)
    expected = np.array([math.isqrt(int(a)) for a in ISQRT_CORNERS], dtype=np.int64)
    got, info = hw.isqrt_ex(v)
    assert_same(expected, got)
    assert_same(expected, ref.isqrt(v))
    assert info["trips"] == 32 * v.size  # 32 digit iterations per value
    small = np.array([a for a in ISQRT_CORNERS if a < 2**63], dtype=np.int64)  # plain int64 input
    assert_same(ref.isqrt(small), hw.isqrt(small))


@given(st.lists(st.one_of(st.integers(0, 2**64 - 1), st.integers(0, 2**20),
                          st.tuples(st.integers(1, 2**32 - 1), st.sampled_from([-1, 0, 1])).map(
                              lambda sd: min(sd[0] * sd[0] + sd[1], 2**64 - 1))), min_size=1, max_size=40))
def test_isqrt_random(vals) -> None:
    v = np.array(vals, dtype=np.uint64)
    expected = np.array([math.isqrt(a) for a in vals], dtype=np.int64)
    assert_same(expected, hw.isqrt(v))
    assert_same(expected, ref.isqrt(v))


# ---------------------------------------------------------------------------
# §6 LayerNorm
# ---------------------------------------------------------------------------

# (H, output type)
LN_CONFIGS = [(1, I8), (4, IntType(4, True)), (16, I8), (96, IntType(3, False))]
E_VALUES = st.one_of(st.just(0), st.integers(0, 2**16), st.integers(0, 2**40 - 1))


@st.composite
def int16_rows(draw, shape):
    kind = draw(st.sampled_from(["full", "narrow", "equal", "extreme"]))
    if kind == "full":
        return draw(hnp.arrays(np.int64, shape, elements=st.integers(-(2**15), 2**15 - 1)))
    if kind == "extreme":
        return draw(hnp.arrays(np.int64, shape, elements=st.sampled_from([-(2**15), 2**15 - 1])))
    center = draw(st.integers(-(2**15) + 8, 2**15 - 9))
    if kind == "equal":
        return np.full(shape, center, dtype=np.int64)
    return center + draw(hnp.arrays(np.int64, shape, elements=st.integers(-8, 8)))  # tiny variance


@st.composite
def ln_params(draw, x: np.ndarray):
    H = x.shape[-1]
    mode = draw(st.sampled_from(["float", "random", "probe"]))
    if mode == "probe":
        # B = -G z_exact(first row) + small offset, small S: y = rshr(G (z - z_exact) + offset, S)
        # shows any error of z (floor divisions, sigma) in the first row.
        E = draw(E_VALUES)
        z = np.array(_z_exact(x.reshape(-1, H)[0].tolist(), E))
        G = draw(hnp.arrays(np.int64, H, elements=st.sampled_from([-4, -3, -2, -1, 1, 2, 3, 4])))
        S = draw(st.integers(1, 3))
        off = draw(hnp.arrays(np.int64, H, elements=st.integers(-(4 << S), 4 << S)))
        return ref.LayerNormParams(G=G, B=-G * z + off, S=S, E=E)
    if mode == "float":
        gamma = draw(hnp.arrays(np.float64, H, elements=st.floats(-4, 4)))
        beta = draw(hnp.arrays(np.float64, H, elements=st.floats(-4, 4)))
        eps = draw(st.sampled_from([0.0, 1e-12, 1e-5, 1.0]))
        s_x = draw(st.sampled_from([2.0**-8, 0.01, 0.5]))
        p = ref.layernorm_params(gamma, beta, eps, s_x, draw(st.sampled_from([0.02, 0.1, 1.0])))
        if draw(st.booleans()):
            return p
        return ref.LayerNormParams(G=p.G, B=p.B, S=p.S, E=draw(E_VALUES))
    G = draw(hnp.arrays(np.int64, H, elements=st.integers(-(2**15) + 1, 2**15 - 1)))
    B = draw(hnp.arrays(np.int64, H, elements=st.integers(-(2**31) + 1, 2**31 - 1)))
    return ref.LayerNormParams(G=G, B=B, S=draw(st.integers(1, 62)), E=draw(E_VALUES))


@st.composite
def layernorm_case(draw):
    H, y_t = draw(st.sampled_from(LN_CONFIGS))
    x = draw(int16_rows(lead_shape(draw) + (H,)))
    return x, draw(ln_params(x)), y_t


@given(layernorm_case())
def test_layernorm_matches_reference(case) -> None:
    x, p, y_t = case
    note(f"S={p.S} E={p.E}")
    expected = ref.layernorm(x, p, y_t)
    got, info = hw.layernorm_ex(x, p, y_t)
    assert_same(expected, got)
    H = x.shape[-1]
    assert info["trips"] == (3 * H + 32) * (x.size // H)


def _z_exact(row: list[int], E: int = 0) -> list[int]:
    """§6 steps 1-7 with Python integers (// is floor division), for one row."""
    H = len(row)
    mu = (2 * sum(row) + H) // (2 * H)
    assert mu == math.floor(Fraction(sum(row), H) + Fraction(1, 2))  # mean rounded half up
    d = [v - mu for v in row]
    sigma = max(1, math.isqrt(((sum(e * e for e in d) << 16) // H) + E))
    return [((e << 25) + sigma) // (2 * sigma) for e in d]


def test_layernorm_negative_numerators_exact() -> None:
    # G = 2, B = -2 z_exact, S = 1 makes y = z - z_exact: every floor division (mu with a negative
    # sum and half-way means, z with negative d) is visible in the output, which must be 0.
    H, y_t = LN_CONFIGS[1]  # signed output, so that z - z_exact = -1 would show
    rows = [[-1, -1, 0, 0], [-3, -3, 0, 0], [-5, -4, -4, -4], [-32768, -32768, -32768, -32767],
            [-7, 3, -2, -9], [-32768, 32767, -32768, 32767], [1, -2, 0, 0], [-100, -101, -99, -98]]
    for row in rows:
        z = _z_exact(row)
        p = ref.LayerNormParams(G=np.full(H, 2), B=-2 * np.array(z), S=1, E=0)
        xr = np.array([row], dtype=np.int64)
        expected = ref.layernorm(xr, p, y_t)
        assert np.all(expected == 0), (row, expected)
        assert_same(expected, hw.layernorm(xr, p, y_t))


def test_layernorm_zero_variance() -> None:
    H, y_t = LN_CONFIGS[2]
    rng = np.random.default_rng(1)
    G = rng.integers(-(2**15) + 1, 2**15, H)
    B = rng.integers(-(2**31) + 1, 2**31, H)
    B[:4] = [-(2**31) + 1, 2**31 - 1, -(2**20) - 2**19, 2**19]  # saturate both ends, ties of rshr
    x = np.array([[v] * H for v in (-(2**15), -1, 0, 12345, 2**15 - 1)], dtype=np.int64)
    for E in (0, 1, 2**39, 2**40 - 1):
        for S in (1, 20, 62):
            p = ref.LayerNormParams(G=G, B=B, S=S, E=E)
            expected = ref.layernorm(x, p, y_t)
            assert_same(expected, hw.layernorm(x, p, y_t))
            beta_q = np.clip(ref.rshr(B, S), y_t.lo, y_t.hi)
            assert np.all(expected == beta_q)  # y = sat(rshr(B, S)) whatever E is


def test_layernorm_extreme_alternating_h4096() -> None:
    H, y_t = 4096, I8
    alt = np.where(np.arange(H) % 2 == 0, -(2**15), 2**15 - 1)
    rng = np.random.default_rng(2)
    x = np.stack([alt, -alt - 1, rng.integers(-(2**15), 2**15, H), np.full(H, -(2**15))]).astype(np.int64)
    x[3, 0] = 2**15 - 1  # one outlier: the largest |z| the contract bounds
    p = ref.layernorm_params(rng.uniform(-2, 2, H), rng.uniform(-1, 1, H), 1e-5, 2.0**-8, 0.05)
    for params in (p, ref.LayerNormParams(G=p.G, B=p.B, S=p.S, E=0)):
        expected = ref.layernorm(x, params, y_t)
        got, info = hw.layernorm_ex(x, params, y_t)
        assert_same(expected, got)
        assert info["trips"] == 4 * (3 * H + 32)


# ---------------------------------------------------------------------------
# §8 XNOR-popcount, binary MVAU, MultiThreshold
# ---------------------------------------------------------------------------

# (K, N, PE, SIMD); N/PE/SIMD None: the unfolded xnor_popcount<K>, N drawn at runtime
XNOR_CONFIGS = [
    (1, None, None, None), (13, None, None, None), (64, None, None, None),
    (13, 4, 2, 4),    # K % SIMD != 0 (last fold: 1 lane)
    (100, 6, 3, 32),  # last fold: 4 lanes
    (40, 2, 1, 40),   # SIMD = K: one fold
    (9, 1, 1, 1),     # SIMD = 1: nine folds
]


def unpack_pm1(bits: np.ndarray, K: int) -> np.ndarray:
    """Packed bytes -> +-1 values (independent of both faces)."""
    b = np.unpackbits(bits.astype(np.uint8), axis=-1, bitorder="little")[..., :K]
    return 2 * b.astype(np.int64) - 1


@st.composite
def xnor_case(draw):
    K, N, pe, simd = draw(st.sampled_from(XNOR_CONFIGS))
    nb = (K + 7) // 8
    n = draw(st.integers(0, 5)) if N is None else N
    a = draw(hnp.arrays(np.int64, lead_shape(draw) + (nb,), elements=st.integers(0, 255)))
    w = draw(hnp.arrays(np.int64, (n, nb), elements=st.integers(0, 255)))  # padding bits are garbage
    return a, w, K, pe, simd


@given(xnor_case())
def test_xnor_popcount_matches_reference(case) -> None:
    a, w, K, pe, simd = case
    expected = ref.xnor_popcount(a, w, K)
    got, info = hw.xnor_popcount_ex(a, w, K, pe=pe, simd=simd)
    assert_same(expected, got)
    assert_same(unpack_pm1(a, K) @ unpack_pm1(w, K).T, expected)  # = sum of +-1 products
    rows = a.size // a.shape[-1]
    if pe is None:
        assert info["trips"] == 0  # combinational
    else:
        assert info["trips"] == rows * (w.shape[0] // pe) * -(-K // simd)  # rows * NF * SF


def test_xnor_popcount_k_beyond_one_word() -> None:
    # K > 1024 (ap_int's default width limit): the wrapper folds with SIMD = 1024.
    K, N = 1100, 2
    rng = np.random.default_rng(3)
    a = rng.integers(0, 256, (3, (K + 7) // 8))
    w = rng.integers(0, 256, (N, (K + 7) // 8))
    got, info = hw.xnor_popcount_ex(a, w, K)
    assert_same(ref.xnor_popcount(a, w, K), got)
    assert info["trips"] == 3 * N * 2


# (K, N, PE, SIMD, n thresholds, out_bias, bipolar)
MVAU_T_CONFIGS = [
    (13, 4, 2, 4, 3, -2, False),   # signed 2-bit output
    (100, 6, 3, 32, 1, 0, True),   # bipolar output (sign)
    (40, 2, 1, 40, 15, 0, False),  # unsigned 4-bit output
]


@st.composite
def ascending_thresholds(draw, rows: int, n: int, lo: int, hi: int):
    pool = draw(st.lists(st.integers(lo, hi), min_size=1, max_size=6))  # few values: many equal
    T = draw(hnp.arrays(np.int64, (rows, n), elements=st.one_of(st.sampled_from(pool), st.integers(lo, hi))))
    return np.sort(T, axis=1)


@st.composite
def mvau_threshold_case(draw):
    K, N, pe, simd, n, ob, bip = draw(st.sampled_from(MVAU_T_CONFIGS))
    nb = (K + 7) // 8
    a = draw(hnp.arrays(np.int64, lead_shape(draw) + (nb,), elements=st.integers(0, 255)))
    w = draw(hnp.arrays(np.int64, (N, nb), elements=st.integers(0, 255)))
    rows = draw(st.sampled_from([1, N]))
    T = draw(ascending_thresholds(rows, n, -K - 3, K + 3))  # beyond [-K, K]: clipping
    return a, w, K, T, ob, bip, pe, simd


@given(mvau_threshold_case())
def test_binary_mvau_thresholds_match_reference(case) -> None:
    a, w, K, T, ob, bip, pe, simd = case
    expected = ref.threshold(ref.xnor_popcount(a, w, K), T, ob, bip)
    got, info = hw.binary_mvau_ex(a, w, K, T, ob, bip, pe=pe, simd=simd)
    assert_same(expected, got)
    assert info["trips"] == (a.size // a.shape[-1]) * (w.shape[0] // pe) * -(-K // simd)


# (C, n, shared thresholds, out_bias, bipolar, magnitude of acc/thresholds)
THRESHOLD_CONFIGS = [
    (4, 3, False, -2, False, 100),        # signed 2-bit, 16-bit accumulators
    (1, 1, False, 0, True, 2**20),        # bipolar, 32-bit
    (5, 15, True, 0, False, 2**40),       # shared thresholds, 48-bit
    (3, 255, False, -128, False, 2**62),  # 8-bit output, 64-bit
]


@st.composite
def threshold_case(draw):
    C, n, shared, ob, bip, mag = draw(st.sampled_from(THRESHOLD_CONFIGS))
    T = draw(ascending_thresholds(1 if shared else C, n, -mag, mag - 1))
    near = st.builds(lambda t, d: int(np.clip(t + d, -mag, mag - 1)),
                     st.sampled_from(T.ravel().tolist()), st.sampled_from([-1, 0, 0, 1]))
    acc = draw(hnp.arrays(np.int64, lead_shape(draw) + (C,),
                          elements=st.one_of(near, st.integers(-mag, mag - 1))))
    acc = np.concatenate([acc.reshape(-1, C), np.full((1, C), -mag), np.full((1, C), mag - 1)])  # fixes W
    return acc, T, ob, bip


@given(threshold_case())
def test_threshold_matches_reference(case) -> None:
    acc, T, ob, bip = case
    expected = ref.threshold(acc, T, ob, bip)
    got, info = hw.threshold_ex(acc, T, ob, bip)
    assert_same(expected, got)
    assert info["trips"] == acc.size  # rows * C


def test_threshold_equal_values_and_exact_hits() -> None:
    C, n, _, ob, _, _ = THRESHOLD_CONFIGS[0]
    T = np.array([[0, 0, 0], [-5, 3, 3], [7, 7, 8], [-100, 99, 99]], dtype=np.int64)
    acc = np.array([[-1, -5, 6, -100], [0, -6, 7, 99], [1, 3, 8, 98], [-100, 2, 9, -101 + 1]], dtype=np.int64)
    acc = np.concatenate([acc, np.full((1, C), -100), np.full((1, C), 99)])
    expected = ref.threshold(acc, T, ob)
    assert_same(expected, hw.threshold(acc, T, ob))
    assert expected[1].tolist() == [3 - 2, 0 - 2, 2 - 2, 3 - 2]  # acc == threshold counts


# ---------------------------------------------------------------------------
# §9 pooling
# ---------------------------------------------------------------------------

# (in_type, C, H, W, kernel, stride, pad)
MAXPOOL_CONFIGS = [
    (I8, 2, 5, 6, 3, 2, 1),
    (IntType(4, False), 1, 4, 4, 2, None, 0),
    (BIP, 3, 7, 5, (3, 2), (1, 2), (1, 0)),
    (IntType(8, True, True), 1, 3, 3, 3, 1, 2),  # windows mostly padding (pad = kernel - 1)
]

# (in_type, out_type, C, H, W, kernel, stride, pad); kernel == (H, W), pad 0: global pooling
AVGPOOL_CONFIGS = [
    (I8, I8, 2, 5, 6, 3, 2, 1),
    (I8, I8, 1, 4, 4, 2, 2, 0),
    (IntType(4, True), IntType(6, False), 3, 7, 5, (3, 2), (1, 2), (1, 0)),
    (BIP, IntType(4, True, True), 2, 3, 3, 2, 1, 1),
    (I8, IntType(16, True), 4, 3, 5, (3, 5), None, 0),  # global average pooling
]


def _out_hw(H, W, kernel, stride, pad):
    kh, kw = (kernel, kernel) if np.isscalar(kernel) else kernel
    stride = kernel if stride is None else stride
    sh, sw = (stride, stride) if np.isscalar(stride) else stride
    ph, pw = (pad, pad) if np.isscalar(pad) else pad
    return (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1, kh * kw


@st.composite
def maxpool_case(draw):
    t, C, H, W, k, s, p = draw(st.sampled_from(MAXPOOL_CONFIGS))
    x = draw(hnp.arrays(np.int64, (draw(st.integers(1, 2)), C, H, W), elements=codes(t)))
    return x, k, s, p, t


@given(maxpool_case())
def test_maxpool_matches_reference(case) -> None:
    x, k, s, p, t = case
    expected = ref.maxpool2d(x, k, s, p, t)
    got, info = hw.maxpool2d_ex(x, k, s, p, t)
    assert_same(expected, got)
    oh, ow, kk = _out_hw(x.shape[2], x.shape[3], k, s, p)
    assert info["trips"] == x.shape[0] * x.shape[1] * oh * ow * kk


@st.composite
def avgpool_case(draw):
    t, y_t, C, H, W, k, s, p = draw(st.sampled_from(AVGPOOL_CONFIGS))
    x = draw(hnp.arrays(np.int64, (draw(st.integers(1, 2)), C, H, W), elements=codes(t)))
    kk = _out_hw(H, W, k, s, p)[2]
    if draw(st.booleans()):
        M, sh = ref.dyadic(draw(st.floats(1e-4, 100.0)) / kk)  # s_x / (kh kw s_y)
    else:
        M, sh = draw(st.integers(0, 2**24 - 1)), draw(st.integers(0, 62))
    return x, k, int(M), int(sh), s, p, t, y_t


@given(avgpool_case())
def test_avgpool_matches_reference(case) -> None:
    x, k, M, sh, s, p, t, y_t = case
    note(f"M={M} sh={sh}")
    expected = ref.avgpool2d(x, k, M, sh, s, p, t, y_t)
    got, info = hw.avgpool2d_ex(x, k, M, sh, s, p, t, y_t)
    assert_same(expected, got)
    oh, ow, kk = _out_hw(x.shape[2], x.shape[3], k, s, p)
    assert info["trips"] == x.shape[0] * x.shape[1] * oh * ow * kk  # global: C * H * W, the same


def test_avgpool_negative_ties_round_half_up() -> None:
    t, y_t, C, H, W, k, s, p = AVGPOOL_CONFIGS[1]  # 2x2 windows, M = 1, sh = 2: sum / 4 half up
    x = np.array([[[[-1, -1, -3, -3], [0, 0, 0, 0], [-128, -128, 127, -128], [-128, -128, -128, 127]]]])
    expected = ref.avgpool2d(x, k, 1, 2, s, p, t, y_t)
    assert_same(expected, hw.avgpool2d(x, k, 1, 2, s, p, t, y_t))
    sums = [[-2, -6], [-512, -2]]  # -0.5 -> 0, -1.5 -> -1, -128, -0.5 -> 0
    assert expected[0, 0].tolist() == [[math.floor(Fraction(v, 4) + Fraction(1, 2)) for v in r] for r in sums]
    assert expected[0, 0].tolist() == [[0, -1], [-128, 0]]


def test_pool_borders_and_padding() -> None:
    t, C, H, W, k, s, p = MAXPOOL_CONFIGS[3]
    x = np.full((1, C, H, W), t.lo, dtype=np.int64)  # all lo_X: the padding (also lo_X) ties
    assert_same(ref.maxpool2d(x, k, s, p, t), hw.maxpool2d(x, k, s, p, t))
    x = np.arange(9).reshape(1, 1, 3, 3) - 127
    expected = ref.maxpool2d(x, k, s, p, t)
    assert_same(expected, hw.maxpool2d(x, k, s, p, t))
    assert expected[0, 0, 0, 0] == -127  # the corner window holds one real element
    # average pooling: padding contributes 0, the divisor stays kh*kw
    t, y_t, C, H, W, k, s, p = AVGPOOL_CONFIGS[0]  # 3x3 windows, stride 2, pad 1 on 5x6
    x = np.full((1, C, H, W), -128, dtype=np.int64)
    M, sh = 1, 4  # y = rshr(sum, 4)
    expected = ref.avgpool2d(x, k, M, sh, s, p, t, y_t)
    assert_same(expected, hw.avgpool2d(x, k, M, sh, s, p, t, y_t))
    for oh in range(expected.shape[2]):
        for ow in range(expected.shape[3]):
            rows = [r for r in range(2 * oh - 1, 2 * oh + 2) if 0 <= r < H]
            cols = [c for c in range(2 * ow - 1, 2 * ow + 2) if 0 <= c < W]
            real = len(rows) * len(cols)  # 4 at a corner, 6 on an edge, 9 inside
            assert expected[0, 0, oh, ow] == (-128 * real + 8) >> 4
    assert expected[0, 0, 0, 0] == -32


# ---------------------------------------------------------------------------
# Bad input: both faces raise ValueError naming the op (no compile happens)
# ---------------------------------------------------------------------------

_T8 = ref.softmax_table(I8, 0.1)
_P4 = ref.LayerNormParams(G=np.ones(4, dtype=np.int64), B=np.zeros(4, dtype=np.int64), S=16, E=0)
_X44 = np.zeros((1, 1, 4, 4), dtype=np.int64)

BAD = [
    ("softmax", lambda f: f(np.zeros((2, 4)), np.ones(2), IntType(1, True), 8, 8)),
    ("softmax", lambda f: f(np.zeros((2, 4)), np.ones(512), IntType(9, True), 8, 8)),
    ("softmax", lambda f: f(np.zeros((2, 4)), _T8, I8, 0, 8)),
    ("softmax", lambda f: f(np.zeros((2, 4)), _T8, I8, 17, 8)),
    ("softmax", lambda f: f(np.zeros((2, 4)), _T8, I8, 8, 0)),
    ("softmax", lambda f: f(np.zeros((2, 4)), _T8, I8, 8, 17)),
    ("softmax", lambda f: f(np.zeros((2, 4)), _T8[:100], I8, 8, 8)),
    ("softmax", lambda f: f(np.zeros((2, 4)), np.where(np.arange(256) == 0, 0, 1), I8, 8, 8)),
    ("softmax", lambda f: f(np.zeros((2, 4)), _T8 * 2, I8, 8, 8)),
    ("softmax", lambda f: f(np.full((2, 4), 128), _T8, I8, 8, 8)),
    ("softmax", lambda f: f(np.zeros((2, 0)), _T8, I8, 8, 8)),
    ("softmax", lambda f: f(np.zeros((1, 65538)), ref.softmax_table(I8, 0.1, 16), I8, 16, 8)),
    ("softmax", lambda f: f(np.full((2, 4), 0.5), _T8, I8, 8, 8)),
    ("isqrt", lambda f: f(np.array([4, -1]))),
    ("isqrt", lambda f: f(np.array([1.5]))),
    ("layernorm", lambda f: f(np.zeros((2, 4)), _P4, IntType(1, True))),
    ("layernorm", lambda f: f(np.zeros((2, 4)), _P4, IntType(9, True))),
    ("layernorm", lambda f: f(np.zeros((2, 0)), _P4)),
    ("layernorm", lambda f: f(np.zeros((1, 4097)), _P4)),
    ("layernorm", lambda f: f(np.full((2, 4), 2**15), _P4)),
    ("layernorm", lambda f: f(np.zeros((2, 5)), _P4)),
    ("layernorm", lambda f: f(np.zeros((2, 4)), ref.LayerNormParams(G=np.full(4, 2**15), B=_P4.B, S=16, E=0))),
    ("layernorm", lambda f: f(np.zeros((2, 4)), ref.LayerNormParams(G=_P4.G, B=np.full(4, -(2**31)), S=16, E=0))),
    ("layernorm", lambda f: f(np.zeros((2, 4)), ref.LayerNormParams(G=_P4.G, B=_P4.B, S=0, E=0))),
    ("layernorm", lambda f: f(np.zeros((2, 4)), ref.LayerNormParams(G=_P4.G, B=_P4.B, S=63, E=0))),
    ("layernorm", lambda f: f(np.zeros((2, 4)), ref.LayerNormParams(G=_P4.G, B=_P4.B, S=16, E=-1))),
    ("layernorm", lambda f: f(np.zeros((2, 4)), ref.LayerNormParams(G=_P4.G, B=_P4.B, S=16, E=2**40))),
    ("xnor_popcount", lambda f: f(np.zeros((2, 2)), np.zeros((3, 2)), 0)),
    ("xnor_popcount", lambda f: f(np.zeros((2, 2)), np.zeros((3, 2)), 17)),
    ("xnor_popcount", lambda f: f(np.zeros((2, 2)), np.zeros((3, 3, 2)), 13)),
    ("xnor_popcount", lambda f: f(np.full((2, 2), 256), np.zeros((3, 2)), 13)),
    ("xnor_popcount", lambda f: f(np.zeros((2, 2)), np.full((3, 2), -1), 13)),
    ("threshold", lambda f: f(np.zeros((2, 3)), np.zeros((3,)))),
    ("threshold", lambda f: f(np.zeros((2, 3)), np.zeros((2, 4)))),
    ("threshold", lambda f: f(np.zeros((2, 3)), np.array([[1, 0]] * 3))),
    ("threshold", lambda f: f(np.zeros((2, 3)), np.zeros((3, 2)), 0, True)),
    ("threshold", lambda f: f(np.zeros((2, 3)), np.zeros((3, 0)))),
    ("maxpool2d", lambda f: f(np.zeros((4, 4)), 2)),
    ("maxpool2d", lambda f: f(_X44, 2, 2, 2)),
    ("maxpool2d", lambda f: f(_X44, 6)),
    ("maxpool2d", lambda f: f(_X44, 2, 0)),
    ("maxpool2d", lambda f: f(_X44 + 200, 2)),
    ("maxpool2d", lambda f: f(_X44, 2, in_type=IntType(16, True))),
    ("avgpool2d", lambda f: f(_X44, 2, 1, 2, 2, 2)),
    ("avgpool2d", lambda f: f(_X44, 2, 1, 2, in_type=IntType(9, True))),
    ("avgpool2d|requant", lambda f: f(_X44, 2, 1, 63)),
    ("avgpool2d|requant", lambda f: f(_X44, 2, 2**24, 2)),
    ("avgpool2d|requant", lambda f: f(_X44, 2, 1, 2, out_type=IntType(17, True))),
    ("avgpool2d|requant", lambda f: f(_X44, 2, 1, 2, out_type=BIP)),
]


@pytest.mark.parametrize("op, call", BAD, ids=[f"{op.split('|')[0]}-{i}" for i, (op, _) in enumerate(BAD)])
def test_bad_input_raises_value_error(op, call) -> None:
    name = op.split("|")[0]
    for face in (ref, hw):
        with pytest.raises(ValueError, match=op):
            call(getattr(face, name))


def test_wrapper_only_bad_input() -> None:
    """Folding and per-tensor requant parameters exist only in the HLS face."""
    a, w = np.zeros((2, 2), dtype=np.int64), np.zeros((3, 2), dtype=np.int64)
    with pytest.raises(ValueError, match="xnor_popcount: pe=2 must divide"):
        hw.xnor_popcount(a, w, 13, pe=2, simd=4)
    with pytest.raises(ValueError, match="xnor_popcount: simd=14"):
        hw.xnor_popcount(a, w, 13, simd=14)
    with pytest.raises(ValueError, match="binary_mvau"):
        hw.binary_mvau(a, w, 13, np.array([[2, 1]] * 3), pe=1)
    with pytest.raises(ValueError, match="avgpool2d: M must be a scalar"):
        hw.avgpool2d(_X44, 2, np.ones(2, dtype=np.int64), 2)


# ---------------------------------------------------------------------------
# Headers: standalone includes, and the static_asserts on bad configurations
# ---------------------------------------------------------------------------

HEADERS = ["softmax.h", "layernorm.h", "binary.h", "pool.h"]


@pytest.mark.parametrize("header", HEADERS)
def test_header_compiles_standalone(header) -> None:
    src = f'#include "codesign/{header}"\nint main() {{ return 0; }}\n'
    csim.build(src, name=f"standalone-{header[:-2]}",
               extra_flags=["-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas", "-Wno-unused-label"])


def test_static_asserts_reject_bad_configurations() -> None:
    src = r"""
#include "codesign/softmax.h"
#include "codesign/layernorm.h"
#include "codesign/binary.h"
#include "codesign/pool.h"
using namespace codesign;
template struct codesign::SoftmaxCfg<IntT<8, true>, 65538, 16, 8>;
template struct codesign::SoftmaxCfg<IntT<1, true>, 4, 8, 8>;
template struct codesign::LayerNormCfg<4097>;
template struct codesign::BinaryMvauCfg<13, 6, 4, 4>;
template struct codesign::ThresholdCfg<2, 0, true>;
template struct codesign::PoolGeom<4, 4, 2, 2, 2, 2, 2, 0>;
int main() { return 0; }
"""
    with pytest.raises(csim.CsimCompileError) as info:
        csim.build(src, name="static-asserts")
    msg = info.value.stderr
    for needle in ("row sum fits uint32", "softmax input must be a 2..8-bit", "H must be 1..4096",
                   "PE to divide N", "bipolar threshold output takes exactly one", "padding must satisfy"):
        assert needle in msg, needle
