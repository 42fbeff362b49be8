"""§4 LUTs, §5 softmax, §6 isqrt and LayerNorm of the reference, against
independent derivations: torch float64 functions quantized half-to-even here,
hand-computed integer cases, derived error bounds against float64 softmax and
LayerNorm, ``math.isqrt`` and a Python model of the hardware's digit-by-digit
square root.
"""
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, event, given
from hypothesis import strategies as st

from codesign.sim import reference as ref
from codesign.sim.reference import IntType

# ---------------------------------------------------------------------------
# §4 LUT
# ---------------------------------------------------------------------------

TORCH_F = {
    "identity": lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "gelu": lambda x: F.gelu(x, approximate="none"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "exp": torch.exp,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "elu": lambda x: F.elu(x, alpha=1.0),
    "selu": F.selu,
    # torch switches to the identity above `threshold` (an O(e^-20) approximation);
    # disable it so that torch evaluates log(1 + e^x) like the contract
    "softplus": lambda x: F.softplus(x, beta=1.0, threshold=800.0),
    "leaky_relu": lambda x: F.leaky_relu(x, negative_slope=0.01),
    "abs": torch.abs,
    "square": torch.square,
    "neg": torch.neg,
}


def test_lut_registry_is_covered():
    assert set(TORCH_F) == set(ref.LUT_FUNCTIONS)


def codes_of(t: IntType):
    """Every bit pattern's code, derived here: bipolar {-1,+1}; unsigned 0..2^b-1;
    signed: two's complement patterns (including the code a narrow type excludes)."""
    if t.bits == 1 and t.signed:
        return [-1, 1]
    if t.signed:
        return list(range(-(2 ** (t.bits - 1)), 2 ** (t.bits - 1)))
    return list(range(2**t.bits))


def index_of(q: int, t: IntType) -> int:
    if t.bits == 1 and t.signed:
        return (q + 1) // 2
    return q % (2**t.bits)  # Python % is the two's-complement pattern: -1 -> 2^b - 1


def valid_code(q: int, t: IntType) -> int:
    """Nearest code of the (possibly narrow) type."""
    return min(max(q, t.lo), t.hi)


def torch_quant(v: float, s_y: float, y: IntType) -> int:
    """round_half_even(v/s_y) clamped, in float64 via torch; bipolar: +1 iff v >= 0."""
    if y.bits == 1 and y.signed:
        return 1 if v >= 0 else -1
    u = torch.tensor(v / s_y, dtype=torch.float64)
    return int(min(max(torch.round(u).item(), y.lo), y.hi))


in_types = st.one_of(
    st.just(IntType(1, True)),
    st.builds(IntType, st.integers(1, 8), st.just(False), st.booleans()),
    st.builds(IntType, st.integers(2, 8), st.just(True), st.booleans()),
)
out_types = st.one_of(
    st.just(IntType(1, True)),
    st.builds(IntType, st.integers(2, 16), st.booleans(), st.booleans()),
)


@st.composite
def lut_scales(draw, bits):
    # |x| <= 2^b·s_x stays below ~600 so that exp() is finite
    smax = min(4.0, 512.0 / 2**bits)
    if draw(st.booleans()):
        s_x = 2.0 ** draw(st.integers(-8, int(math.floor(math.log2(smax)))))
    else:
        s_x = draw(st.floats(2.0**-9, smax))
    if draw(st.booleans()):
        s_y = 2.0 ** draw(st.integers(-10, 2))
    else:
        s_y = draw(st.floats(2.0**-10, 4.0))
    return s_x, s_y


@pytest.mark.parametrize("name", sorted(ref.LUT_FUNCTIONS))
@given(x_t=in_types, y_t=out_types, data=st.data())
def test_lut_table_vs_torch(name, x_t, y_t, data):
    s_x, s_y = data.draw(lut_scales(x_t.bits))
    table = ref.lut_table(name, x_t, s_x, y_t, s_y)
    codes = codes_of(x_t)
    assert table.shape == (len(codes),)
    xs = torch.tensor([valid_code(q, x_t) * s_x for q in codes], dtype=torch.float64)
    vs = TORCH_F[name](xs).tolist()
    exp = [0] * len(codes)
    for q, v in zip(codes, vs):
        exp[index_of(q, x_t)] = torch_quant(v, s_y, y_t)
    # == everywhere except a value within float64 noise of a rounding tie, on it or not:
    # numpy and torch may differ by an ulp there, e.g. hardsigmoid(33 * 0.025) / 0.025 is
    # exactly 25.5 by torch's relu6(x + 3) / 6 and just below it by the reference's
    # x / 6 + 1/2, so one rounds to 26 and the other to 25
    got = table.tolist()
    by_index = {index_of(q, x_t): (q, v) for q, v in zip(codes, vs)}
    for i, (g, e) in enumerate(zip(got, exp)):
        if g != e:
            q, v = by_index[i]
            u = v / s_y
            if y_t.bipolar:
                # a bipolar output is the sign: float noise matters only next to 0 (§4),
                # e.g. gelu_tanh(-7.19) is -4e-16 in numpy and -0.0 in torch
                assert abs(v) < 1e-9 and abs(g - e) == 2, (name, q, g, e, v)
                event("float64 noise at the sign boundary")
                continue
            frac = abs(u - math.floor(u) - 0.5)
            assert frac < 1e-9 and abs(g - e) == 1, (name, q, g, e, u)
            event("float64 near-tie")
    # lut() looks entries up by the bit pattern of every code
    q = np.array(codes)
    assert ref.lut(q, table, x_t).tolist() == [got[index_of(c, x_t)] for c in codes]


def test_lut_index_mapping():
    # signed: two's complement pattern; -1 -> 2^b - 1, -2^(b-1) -> 2^(b-1)
    for b in range(2, 9):
        t = IntType(b, True)
        table = np.arange(2**b)
        assert ref.lut([-1], table, t).tolist() == [2**b - 1]
        assert ref.lut([-(2 ** (b - 1))], table, t).tolist() == [2 ** (b - 1)]
        assert ref.lut([0, 1, 2 ** (b - 1) - 1], table, t).tolist() == [0, 1, 2 ** (b - 1) - 1]
        assert ref.lut_index(np.array([-1, -2, 1]), t).tolist() == [2**b - 1, 2**b - 2, 1]
        ut = IntType(b, False)
        assert ref.lut(np.arange(2**b), table, ut).tolist() == list(range(2**b))
    # bipolar: -1 -> 0, +1 -> 1
    assert ref.lut([-1, 1, 1, -1], np.array([7, 9]), IntType(1, True)).tolist() == [7, 9, 9, 7]
    # int8 pattern check against numpy's own int8 -> uint8 reinterpretation
    q = np.arange(-128, 128)
    assert np.array_equal(ref.lut_index(q, IntType(8, True)), q.astype(np.int8).view(np.uint8))


def test_lut_table_hand_cases():
    # relu on int4 at s_x = 1 -> uint4 at s_y = 1: index order 0..7, then -8..-1
    t = ref.lut_table("relu", IntType(4, True), 1.0, IntType(4, False), 1.0)
    assert t.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 0, 0, 0, 0, 0, 0, 0, 0]
    # identity at s_y = 2·s_x: q/2 rounded half to even: 0,0,1,2,2,2,3,4 ...
    t = ref.lut_table("identity", IntType(4, True), 1.0, IntType(8, True), 2.0)
    assert t.tolist() == [0, 0, 1, 2, 2, 2, 3, 4, -4, -4, -3, -2, -2, -2, -1, 0]
    # narrow int3 input: the code -4 takes the entry of -3 (neg: 3 at s_y = 1)
    t = ref.lut_table("neg", IntType(3, True, True), 1.0, IntType(8, True), 1.0)
    assert t.tolist() == [0, -1, -2, -3, 3, 3, 2, 1]
    # bipolar output: +1 iff f(x) >= 0; tanh(0) = 0 -> +1
    t = ref.lut_table("tanh", IntType(2, True), 1.0, IntType(1, True), 1.0)
    assert t.tolist() == [1, 1, -1, -1]
    # sigmoid(0) = 0.5 exactly: a tie at s_y = 1 -> 0 (half to even), at s_y = 1/4 -> 2
    assert ref.lut_table("sigmoid", IntType(2, True), 1.0, IntType(8, False), 1.0)[0] == 0
    assert ref.lut_table("sigmoid", IntType(2, True), 1.0, IntType(8, False), 0.25)[0] == 2


# ---------------------------------------------------------------------------
# §5 softmax
# ---------------------------------------------------------------------------

LN2_TABLE_INT4 = [255, 128, 64, 32, 16, 8, 4, 2, 1, 0, 0, 0, 0, 0, 0, 0]


def test_softmax_table_hand():
    # s_x = ln 2: T[k] = rne(255·2^-k) = 255, 127.5 -> 128 (tie, even; float64's exp(-ln 2)
    # is 0.5 or one ulp above, both give 128), 63.75 -> 64, 31.875 -> 32, 15.94 -> 16,
    # 7.97 -> 8, 3.98 -> 4, 1.99 -> 2, 0.996 -> 1, 0.498 -> 0, then 0
    assert ref.softmax_table(IntType(4, True), math.log(2)).tolist() == LN2_TABLE_INT4
    # EB = 4 (A = 15), s_x = 1: 15·e^-k = 15, 5.52 -> 6, 2.03 -> 2, 0.75 -> 1, 0.27 -> 0
    assert ref.softmax_table(IntType(2, False), 1.0, eb=4).tolist() == [15, 6, 2, 1]


def test_softmax_hand_cases():
    T = np.array(LN2_TABLE_INT4)
    i4 = IntType(4, True)
    # row [3, 0]: k = [0, 3], e = [255, 32], S = 287, R = floor(2^32/287) = 14 965 042
    # (287·14 965 042 = 4 294 967 054, remainder 242).
    # OB = 8: p0 = floor((255·R + 2^23)/2^24) = floor(3 824 474 318/16 777 216) = 227,
    #         p1 = floor((32·R + 2^23)/2^24) = floor(487 269 952/16 777 216) = 29
    #         (float: 256·8/9 = 227.6, 256/9 = 28.4)
    assert ref.softmax([[3, 0]], T, i4).tolist() == [[227, 29]]
    # OB = 16: p0 = rshr(3 816 085 710, 16) = round(58 228.85) = 58 229,
    #          p1 = rshr(478 881 344, 16) = round(7 307.15) = 7 307
    assert ref.softmax([[3, 0]], T, i4, ob=16).tolist() == [[58229, 7307]]
    # all-equal row of 3: S = 765, R = floor(2^32/765) = 5 614 336 (rem 256),
    # p = floor((255·R + 2^23)/2^24) = floor(1 440 044 288/16 777 216) = 85 (256/3 = 85.3)
    assert ref.softmax([[-2, -2, -2]], T, i4).tolist() == [[85, 85, 85]]
    # all mass in one element: [7, -8]: k = [0, 15], e = [255, 0], S = 255,
    # R = floor(2^32/255) = 16 843 009, p0 = floor((255·R + 2^23)/2^24) = 256 -> clamped 255, p1 = 0
    assert ref.softmax([[7, -8]], T, i4).tolist() == [[255, 0]]
    # N = 1: p = 255 (clamped from 256)
    assert ref.softmax([[5]], T, i4).tolist() == [[255]]
    # rows are independent; the shift by the max only depends on differences
    assert ref.softmax([[3, 0], [7, 4]], T, i4).tolist() == [[227, 29], [227, 29]]


in_types_sm = st.builds(IntType, st.integers(2, 8), st.booleans())


@given(x_t=in_types_sm, eb=st.integers(2, 16), ob=st.integers(2, 16), N=st.integers(1, 64),
       s_x=st.floats(2.0**-8, 2.0), rows=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
def test_softmax_error_bound_vs_float(x_t, eb, ob, N, s_x, rows, seed):
    """|p_j·2^-OB − q_j| <= table_j + trunc + out_j, derived as follows.

    u_i = exp(−k_i·s_x), U = Σ u_i, q_j = u_j/U (the float softmax), A = 2^EB − 1,
    e_j = A·u_j + δ_j with |δ_j| <= 1/2 (table rounding), S = Σ e_j.
    * table:  e_j/S − q_j = ((U − u_j)·δ_j − u_j·Σ_{i≠j} δ_i)/(U·S), so
              |·| <= ((1 − q_j) + q_j·(N − 1))/(2·S), with S >= max(A, A·U − N/2).
    * trunc:  R = floor(2^32/S) -> e_j·R·2^-32 ∈ (e_j/S − e_j·2^-32, e_j/S]: <= A·2^-32.
    * out:    rshr to OB bits: <= 2^-(OB+1); when p_j = 2^OB − 1 (possibly clamped from
              2^OB, which needs e_j/S >= 1 − 2^-(OB+1)) the total from e_j/S is <= 2^-OB.
    """
    assume(N * (2**eb - 1) < 2**32)
    rng = np.random.default_rng(seed)
    lo, hi = x_t.lo, x_t.hi
    # rows of random codes, some concentrated near the max so several k are small
    x = rng.integers(lo, hi + 1, size=(rows, N))
    if rng.random() < 0.5:
        x = np.minimum(x, rng.integers(lo, hi + 1, size=(rows, 1))) + rng.integers(0, 3, size=(rows, N))
        x = np.clip(x, lo, hi)
    T = ref.softmax_table(x_t, s_x, eb)
    p = ref.softmax(x, T, x_t, eb, ob)
    A = 2**eb - 1
    xf = x.astype(np.float64) * s_x
    u = np.exp(xf - xf.max(axis=-1, keepdims=True))
    U = u.sum(axis=-1, keepdims=True)
    q = u / U
    S_lo = np.maximum(A, A * U * (1 - 1e-12) - N / 2)
    table_err = ((1 - q) + q * (N - 1)) / (2 * S_lo)
    out_err = np.where(p == 2**ob - 1, 2.0**-ob, 2.0 ** -(ob + 1))
    bound = table_err + A * 2.0**-32 + out_err + 1e-12
    err = np.abs(p * 2.0**-ob - q)
    assert np.all(err <= bound), (err.max(), bound[err > bound])
    assert p.min() >= 0 and p.max() <= 2**ob - 1


@given(x_t=in_types_sm, eb=st.integers(1, 16), ob=st.integers(1, 16), N=st.integers(1, 48),
       s_x=st.floats(2.0**-8, 4.0), seed=st.integers(0, 2**32 - 1))
def test_softmax_monotonic_and_equal_rows(x_t, eb, ob, N, s_x, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(x_t.lo, x_t.hi + 1, size=(3, N))
    T = ref.softmax_table(x_t, s_x, eb)
    assume(T[0] >= 1)
    p = ref.softmax(x, T, x_t, eb, ob)
    # larger input => output not smaller (T is non-increasing in k = max - x)
    for r in range(3):
        order = np.argsort(x[r], kind="stable")
        assert np.all(np.diff(p[r][order]) >= 0)
        assert np.all(p[r][x[r] == x[r].max()] == p[r].max())
    # all-equal rows: equal outputs within 1/2 + A·2^(OB-32) of 2^OB/N (clamped to 2^OB-1 for N=1)
    v = rng.integers(x_t.lo, x_t.hi + 1)
    pe = ref.softmax(np.full((1, N), v), T, x_t, eb, ob)[0]
    assert np.all(pe == pe[0])
    A = int(T[0])
    if N == 1:
        assert pe[0] == 2**ob - 1
    else:
        assert abs(pe[0] - 2**ob / N) <= 0.5 + A * 2.0 ** (ob - 32)
        # and exactly the integer formula with S = N·A
        R = 2**32 // (N * A)
        assert pe[0] == min(2**ob - 1, (A * R + 2 ** (31 - ob)) >> (32 - ob))


# ---------------------------------------------------------------------------
# §6 isqrt
# ---------------------------------------------------------------------------

def hw_isqrt(v: int) -> int:
    """The contract's digit-by-digit (restoring) square root, 32 iterations."""
    res, bit = 0, 4**31
    for _ in range(32):
        if v >= res + bit:
            v -= res + bit
            res = res // 2 + bit
        else:
            res //= 2
        bit //= 4
    return res


isqrt_inputs = st.one_of(
    st.integers(0, 2**63 - 1),
    st.integers(0, 2**20),
    st.builds(lambda n, d: max(0, min(2**63 - 1, n * n + d)), st.integers(0, 3037000499), st.integers(-1, 1)),
)


@given(vs=st.lists(isqrt_inputs, min_size=1, max_size=20))
def test_isqrt_vs_math_isqrt_and_hardware_algorithm(vs):
    got = ref.isqrt(np.array(vs, dtype=np.int64)).tolist()
    assert got == [math.isqrt(v) for v in vs]
    assert got == [hw_isqrt(v) for v in vs]


def test_isqrt_corners():
    vs = [0, 1, 2, 3, 4, 15, 16, 17, 2**62, 2**62 - 1, 2**63 - 1, 3037000499**2, 3037000499**2 - 1]
    assert ref.isqrt(np.array(vs, dtype=np.int64)).tolist() == [math.isqrt(v) for v in vs]
    # the hardware algorithm is exact up to 2^64 - 1
    big = [2**64 - 1, 2**64 - 2, 2**63, (2**32 - 1) ** 2, (2**32 - 1) ** 2 - 1]
    for v in big:
        assert hw_isqrt(v) == math.isqrt(v)
    # §6: the reference takes v < 2^64 as uint64
    assert ref.isqrt(np.array(big, dtype=np.uint64)).tolist() == [math.isqrt(v) for v in big]


# ---------------------------------------------------------------------------
# §6 LayerNorm
# ---------------------------------------------------------------------------

ln_out_types = st.builds(IntType, st.integers(2, 8), st.booleans(), st.booleans())


def frac_round_half_up(f: Fraction) -> int:
    return math.floor(f + Fraction(1, 2))


@given(H=st.integers(1, 256), c=st.integers(-(2**15), 2**15 - 1), y_t=ln_out_types,
       eps=st.sampled_from([0.0, 1e-12, 1e-5, 1e-2]), s_x=st.floats(2.0**-12, 1.0),
       s_y=st.floats(2.0**-8, 1.0), seed=st.integers(0, 2**32 - 1))
def test_layernorm_zero_variance_gives_quantized_beta(H, c, y_t, eps, s_x, s_y, seed):
    rng = np.random.default_rng(seed)
    gamma = rng.normal(1.0, 0.5, size=H)
    beta = rng.normal(0.0, 40 * s_y, size=H)
    p = ref.layernorm_params(gamma, beta, eps, s_x, s_y)
    y = ref.layernorm(np.full((2, H), c), p, y_t)
    # B_i = rne(fl64(β_i/s_y)·2^S) (the scaling by 2^S is exact) is within 1/2 of
    # fl64(β_i/s_y)·2^S, so rshr(B_i, S) = floor(B_i/2^S + 1/2) equals the half-up rounding
    # of fl64(β_i/s_y) unless that lies within 2^-(S+1) of (but not on) a half-integer
    skipped = 0
    for i in range(H):
        bf = Fraction(float(beta[i]) / float(s_y))
        near = abs((bf - Fraction(1, 2)) - round(bf - Fraction(1, 2)))
        if 0 < near <= Fraction(1, 2 ** (p.S + 1)):
            skipped += 1
            continue
        e = min(max(frac_round_half_up(bf), y_t.lo), y_t.hi)
        assert y[0, i] == y[1, i] == e
    assert skipped <= 1


def layernorm_float(x, s_x, gamma, beta, eps, s_y):
    """Float64 LayerNorm of the dequantized input, in output-LSB units (before rounding)."""
    xs = x.astype(np.float64) * s_x
    m = xs.mean(axis=-1, keepdims=True)
    var = xs.var(axis=-1, keepdims=True)
    return ((xs - m) / np.sqrt(var + eps) * gamma + beta) / s_y


def layernorm_bound(x, eps_c, g, S):
    """Per element bound on |pre − t| (pre: the integer op's value before rshr's rounding,
    t: the float LayerNorm in output LSBs), in output LSBs.

    With m = mean, V = var + eps_c (code units), c = m − μ ∈ (−1/2, 1/2]:
      SS = H·var + H·c², v = floor(SS·2^16/H) + E = 2^16·(V + c²) + ε_v, ε_v ∈ (−3/2, 1/2]
      (floor: (−1, 0]; E = rne(eps_c·2^16): ±1/2), σ = isqrt(v) ∈ (√v − 1, √v], so
      ŝ = σ/2^8 satisfies |ŝ − √V| <= Δσ = (1/4 + 2^-15)/√V + 2^-8.
      z/2^16 = d/ŝ + e_z, |e_z| <= 2^-17, and with D = max|x_i − m|:
      |d/ŝ − (x − m)/√V| <= e_n = D·Δσ/(ŝ_lo·√V) + (1/2)/ŝ_lo,  ŝ_lo = √V − Δσ.
      G = g·2^(S−16) + η, B = b·2^S + β', |η|, |β'| <= 1/2, so
      |pre − t| <= |g|·(e_n + 2^-17) + |z/2^16|·2^(15−S) + 2^-(S+1),
      |z/2^16| <= (D + 1/2)/ŝ_lo + 2^-17.
    """
    xf = x.astype(np.float64)
    m = xf.mean(axis=-1, keepdims=True)
    V = xf.var(axis=-1, keepdims=True) + eps_c
    if np.any(V <= 0):
        return None
    D = np.abs(xf - m).max(axis=-1, keepdims=True)
    rv = np.sqrt(V)
    dsig = (0.25 + 2.0**-15) / rv + 2.0**-8
    s_lo = rv - dsig
    if np.any(s_lo <= 0):
        return None
    e_n = D * dsig / (s_lo * rv) + 0.5 / s_lo
    zmax = (D + 0.5) / s_lo + 2.0**-17
    return np.abs(g) * (e_n + 2.0**-17) + zmax * 2.0 ** (15 - S) + 2.0 ** -(S + 1)


@given(H=st.sampled_from([1, 2, 3, 7, 16, 64, 100, 768, 1024]), log_std=st.floats(1.0, 13.0),
       y_t=ln_out_types, eps=st.sampled_from([0.0, 1e-12, 1e-5, 1e-3]), s_x=st.floats(2.0**-12, 2.0**-4),
       y_range=st.floats(1.0, 8.0), seed=st.integers(0, 2**32 - 1))
def test_layernorm_vs_float(H, log_std, y_t, eps, s_x, y_range, seed):
    rng = np.random.default_rng(seed)
    std = 2.0**log_std
    x = np.clip(np.round(rng.normal(rng.uniform(-std, std), std, size=(3, H))), -(2**15), 2**15 - 1).astype(np.int64)
    s_y = y_range / max(y_t.hi, 1)
    gamma = rng.normal(1.0, 0.3, size=H)
    beta = rng.normal(0.0, 0.5, size=H)
    p = ref.layernorm_params(gamma, beta, eps, s_x, s_y)
    y = ref.layernorm(x, p, y_t)
    bound = layernorm_bound(x, eps / (s_x * s_x), gamma / s_y, p.S)
    if bound is None:
        event("variance too small for the bound")
        return
    t = layernorm_float(x, s_x, gamma, beta, eps, s_y)
    bound = bound + 1e-9  # float64 evaluation of t
    y_f = np.clip(np.rint(t), y_t.lo, y_t.hi)
    diff = np.abs(y - y_f)
    # |pre − t| <= bound  =>  |y − y_f| < 1 + bound  =>  |y − y_f| <= ceil(bound)
    assert np.all(diff <= np.ceil(bound)), (diff.max(), bound.max())
    # away from half-integers (farther than bound) the two round identically
    dist = np.abs((t - 0.5) - np.round(t - 0.5))
    far = dist > bound
    assert np.array_equal(y[far], y_f[far].astype(np.int64) if y_f.dtype != np.int64 else y_f[far])
    b = float(bound.max())
    event("bound < 1/8 LSB" if b < 0.125 else "bound < 1 LSB" if b < 1 else "bound >= 1 LSB")


def test_layernorm_typical_within_one_lsb():
    """BERT-like rows (H = 768, std ~ 2^10 codes, gamma ~ 1, 8-bit output over ±4):
    the derived bound is well below 1 LSB, so every output is within 1 LSB of float
    LayerNorm, and equal to it away from near-ties."""
    rng = np.random.default_rng(7)
    H = 768
    x = np.round(rng.normal(0, 1000, size=(16, H))).astype(np.int64)
    gamma, beta = rng.normal(1, 0.1, H), rng.normal(0, 0.2, H)
    s_x, s_y, eps = 2.0**-10, 4 / 127, 1e-12
    p = ref.layernorm_params(gamma, beta, eps, s_x, s_y)
    y = ref.layernorm(x, p, IntType(8, True))
    t = layernorm_float(x, s_x, gamma, beta, eps, s_y)
    bound = layernorm_bound(x, eps / s_x**2, gamma / s_y, p.S)
    assert bound.max() < 0.05
    y_f = np.clip(np.rint(t), -128, 127)
    assert np.abs(y - y_f).max() <= 1
    assert np.mean(y == y_f) > 0.95


@given(H=st.integers(2, 128), s1=st.floats(2.0**-12, 1.0), s2=st.floats(2.0**-12, 1.0),
       y_t=ln_out_types, seed=st.integers(0, 2**32 - 1))
def test_layernorm_scale_invariance(H, s1, s2, y_t, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(-(2**15), 2**15, size=(3, H))
    gamma, beta = rng.normal(1, 0.5, H), rng.normal(0, 0.5, H)
    s_y = 0.05
    p1 = ref.layernorm_params(gamma, beta, 0.0, s1, s_y)
    p2 = ref.layernorm_params(gamma, beta, 0.0, s2, s_y)
    assert p1.E == p2.E == 0
    assert np.array_equal(ref.layernorm(x, p1, y_t), ref.layernorm(x, p2, y_t))


def python_fits(gamma, beta, s_y, S):
    G = [round(math.ldexp(float(g) / s_y, S - 16)) for g in gamma]
    B = [round(math.ldexp(float(b) / s_y, S)) for b in beta]
    return all(abs(v) <= 2**15 - 1 for v in G) and all(abs(v) <= 2**31 - 1 for v in B), G, B


@given(H=st.integers(1, 32), g_scale=st.floats(1e-6, 1e3), b_scale=st.floats(0.0, 1e3),
       s_y=st.floats(2.0**-10, 4.0), s_x=st.floats(2.0**-12, 1.0), eps=st.floats(0.0, 1e-2),
       seed=st.integers(0, 2**32 - 1))
def test_layernorm_params_picks_largest_S(H, g_scale, b_scale, s_y, s_x, eps, seed):
    rng = np.random.default_rng(seed)
    gamma = rng.normal(0, 1, H) * g_scale
    beta = rng.normal(0, 1, H) * b_scale
    ok16, _, _ = python_fits(gamma, beta, s_y, 16)
    if not ok16:
        with pytest.raises(ValueError, match=r"^layernorm_params:"):
            ref.layernorm_params(gamma, beta, eps, s_x, s_y)
        event("does not fit at S = 16")
        return
    p = ref.layernorm_params(gamma, beta, eps, s_x, s_y)
    ok, G, B = python_fits(gamma, beta, s_y, p.S)
    assert ok and 16 <= p.S <= 62
    assert p.G.tolist() == G and p.B.tolist() == B
    if p.S < 62:
        assert not python_fits(gamma, beta, s_y, p.S + 1)[0]
    assert p.E == min(2**40 - 1, round(math.ldexp(eps / (s_x * s_x), 16)))
    # an explicit smaller S is allowed and gives the formula's values
    S2 = max(1, p.S - 5)
    p2 = ref.layernorm_params(gamma, beta, eps, s_x, s_y, S=S2)
    assert p2.S == S2 and p2.G.tolist() == python_fits(gamma, beta, s_y, S2)[1]


def test_layernorm_hand_case():
    # x = [0, 2], H = 2: sum = 2, μ = floor((4 + 2)/4) = 1, d = [-1, 1], SS = 2,
    # v = floor(2·2^16/2) + 0 = 65536, σ = 256, z = floor((∓2^25 + 256)/512) = ∓65536 (= ∓2^16),
    # with G = 2^(S-16)·g and B = 0: y = rshr(∓2^16·G, S) = ∓g.
    gamma, beta = np.array([3.0, 3.0]), np.array([0.0, 0.0])
    p = ref.layernorm_params(gamma, beta, 0.0, 1.0, 1.0)
    assert p.S == 16 + 13  # 3·2^13 = 24576 <= 32767 < 3·2^14
    assert ref.layernorm([[0, 2]], p, IntType(8, True)).tolist() == [[-3, 3]]
    # x = [0, 1]: sum = 1, μ = floor((2 + 2)/4) = 1 (1/2 rounded half up), d = [-1, 0],
    # SS = 1, v = 32768, σ = 181, z0 = floor((-2^25 + 181)/362) = -92 692 (true: -2^24/181 = -92 692.4),
    # y0 = rshr(-92 692·3·2^13, 29) = round(-4.24) = -4, y1 = 0 (float LayerNorm: -3, +3: the
    # mean rounding moves a 2-element row's normalisation; the bound above covers it)
    assert ref.layernorm([[0, 1]], p, IntType(8, True)).tolist() == [[-4, 0]]
