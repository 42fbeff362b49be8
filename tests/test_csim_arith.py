"""reference == csim, with ``==`` on integer codes, for the basic ops
(docs/arithmetic.md §1 quantize/dequantize, §2 matmul, §3 requant, §4 lut,
§7 add): codesign.sim.reference against codesign.hls.csim_arith, which runs the
HLS headers under hls/include/codesign/ through g++.

Budget: every compiled configuration (types, row length, folding) is drawn from
a small covering set per op, in which every bit width 1..8 and both signs
appear; hypothesis varies the data within a configuration. A module fixture
per op compiles its covering set up front on all cores (cached by source hash).
"""
from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, NamedTuple

import numpy as np
import pytest
from hypothesis import given, note
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from codesign.hls import csim
from codesign.hls import csim_arith as C
from codesign.sim import reference as R
from codesign.sim.reference import IntType

pytestmark = [
    pytest.mark.skipif(csim.available() is not None, reason=str(csim.available())),
    # x / s may overflow binary32 to +-inf, which the clamp then saturates (§1): expected
    pytest.mark.filterwarnings("ignore:overflow encountered in divide:RuntimeWarning"),
]

F32 = np.float32
BIP = IntType(1, True)


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)


def _same_f32(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.dtype == b.dtype == np.float32 and a.shape == b.shape
            and np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def _warm(calls: list[Callable[[], object]]) -> None:
    """Compile a covering set up front, one compiler per core (cache-safe)."""
    def one(f: Callable[[], object]) -> None:
        try:
            f()
        except Exception:  # noqa: BLE001 - the tests report it properly
            pass
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        list(pool.map(one, calls))


def _codes(t: IntType, shape, corner: bool = True) -> st.SearchStrategy[np.ndarray]:
    """Arrays of valid codes of t, with the range ends (the corners) favoured."""
    if t.bipolar:
        elems = st.sampled_from([-1, 1])
    else:
        elems = st.one_of(st.sampled_from([t.lo, t.hi]), st.integers(t.lo, t.hi)) if corner else st.integers(t.lo, t.hi)
    return hnp.arrays(np.int64, shape, elements=elems)


def _chunk_trips(n: int, pe: int = 1) -> int:
    """Pipelined iterations of a per-tensor elementwise harness: n elements in rows of CHUNK, PE per cycle."""
    return max(1, -(-n // C.CHUNK)) * C.CHUNK // pe


def _nudge(x: float, k: int) -> np.float32:
    v = F32(x)
    for _ in range(abs(k)):
        v = np.nextafter(v, F32(np.inf if k > 0 else -np.inf), dtype=np.float32)
    return v


SCALES = st.one_of(
    st.sampled_from([2.0**k for k in range(-10, 6)] + [0.1, 0.3, 3.0, 1e-3, 7.5]),
    st.floats(min_value=float(F32(1e-4)), max_value=float(F32(1e4)), width=32),
    st.floats(min_value=float(np.finfo(np.float32).smallest_subnormal), max_value=float(F32(1e-37)), width=32),
)


# ---------------------------------------------------------------------------
# §1 quantize
# ---------------------------------------------------------------------------

class Q(NamedTuple):
    bits: int
    signed: bool
    narrow: bool
    rounding: str
    layout: str  # tensor (one scale) | channel (scale per last-axis channel) | full (scale per element)
    C: int = 0   # row length for channel/full

    @property
    def type(self) -> IntType:
        return IntType(self.bits, self.signed, self.narrow)


QUANT = [
    Q(1, True, False, "ROUND", "tensor"),  # bipolar
    Q(1, False, False, "FLOOR", "channel", 3),
    Q(2, True, True, "HALF_UP", "channel", 4),
    Q(2, False, False, "HALF_DOWN", "tensor"),
    Q(3, True, False, "CEIL", "tensor"),
    Q(3, False, True, "UP", "full", 2),
    Q(4, True, False, "HALF_DOWN", "channel", 5),
    Q(4, True, True, "FLOOR", "tensor"),
    Q(5, True, False, "DOWN", "tensor"),
    Q(6, True, True, "UP", "full", 3),
    Q(7, True, False, "HALF_EVEN", "tensor"),
    Q(7, False, False, "CEIL", "channel", 2),
    Q(8, True, False, "ROUND", "channel", 4),
    Q(8, False, False, "HALF_UP", "tensor"),
    Q(16, True, False, "ROUND", "tensor"),
]


def _q_args(cfg: Q) -> dict:
    return dict(bits=cfg.bits, signed=cfg.signed, narrow=cfg.narrow, rounding=cfg.rounding)


def _q_scale_shape(cfg: Q, rows: int):
    return {"tensor": (), "channel": (cfg.C,), "full": (rows, cfg.C)}[cfg.layout]


@pytest.fixture(scope="module")
def warm_quant() -> None:
    calls = []
    for cfg in QUANT:
        shape = (1, cfg.C) if cfg.C else (3,)
        s = np.ones(_q_scale_shape(cfg, 1), F32)
        calls.append(lambda cfg=cfg, shape=shape, s=s: C.quantize(np.zeros(shape, F32), s, **_q_args(cfg)))
    _warm(calls)


def _x_elem(s: float, lo: int, hi: int) -> st.SearchStrategy[np.float32]:
    """x near k*s and (k+1/2)*s (exact ties when s is a power of two), nudged by
    a few ulps, plus arbitrary finite float32 values (huge, tiny, subnormal, -0.0)."""
    quot = st.one_of(
        st.integers(lo - 2, hi + 2).map(float),
        st.integers(lo - 2, hi + 1).map(lambda k: k + 0.5),
        st.floats(lo - 3.0, hi + 3.0),
    )
    near = st.tuples(quot, st.sampled_from([0, 0, 0, 1, -1, 2, -2])).map(lambda p: _nudge(p[0] * s, p[1]))
    raw = st.floats(width=32, allow_nan=False, allow_infinity=False).map(F32)
    return st.one_of(near, near, raw)


@st.composite
def quant_cases(draw):
    cfg = draw(st.sampled_from(QUANT))
    t = cfg.type
    if cfg.layout == "tensor":
        shape = draw(st.sampled_from([(), (1,), (5,), (2, 3), (3, 9), (2, 2, 4), (17,)]))
        s = np.asarray(draw(SCALES), F32)
    else:
        rows = draw(st.integers(1, 4))
        shape = (draw(st.sampled_from([(), (2,)])) + (rows, cfg.C)) if cfg.layout == "channel" else (rows, cfg.C)
        s_shape = _q_scale_shape(cfg, rows)
        if cfg.layout == "channel" and draw(st.booleans()):
            s_shape = (1,) + s_shape
        s = np.array(draw(st.lists(SCALES, min_size=math.prod(s_shape), max_size=math.prod(s_shape))),
                     F32).reshape(s_shape)
    sb = np.broadcast_to(s, shape).ravel()
    x = np.array([draw(_x_elem(float(si), t.lo, t.hi)) for si in sb], F32).reshape(shape)
    return cfg, x, s


@given(quant_cases())
def test_quantize(warm_quant, case) -> None:
    cfg, x, s = case
    note(f"{cfg} x={x!r} s={s!r}")
    ref = R.quantize(x, s, **_q_args(cfg))
    got, info = C.quantize_ex(x, s, **_q_args(cfg))
    assert _same(got, ref), f"{cfg}\nx={x!r}\ns={s!r}\nref={ref}\ncsim={got}"
    assert info["trips"] == (_chunk_trips(got.size) if cfg.layout == "tensor" else got.size)  # one element per cycle


def _tie_expect(mode: str, u: float) -> int:
    """The contract's R on an exact tie or integer u (hand-written, independent)."""
    f = math.floor(u)
    if u == f:
        return int(u)
    sign = 1 if u > 0 else -1
    a = abs(u)
    return {
        "ROUND": f if f % 2 == 0 else f + 1,
        "HALF_EVEN": f if f % 2 == 0 else f + 1,
        "FLOOR": f,
        "CEIL": f + 1,
        "DOWN": int(math.trunc(u)),
        "UP": sign * math.ceil(a),
        "HALF_UP": sign * math.floor(a + 0.5),
        "HALF_DOWN": sign * math.ceil(a - 0.5),
    }[mode]


@pytest.mark.parametrize("cfg", QUANT, ids=lambda c: f"{c.type}-{c.rounding}-{c.layout}")
def test_quantize_ties_and_saturation(warm_quant, cfg: Q) -> None:
    t = cfg.type
    C_ = cfg.C or 1
    for s in (1.0, 0.25, 3.0, 0.1):
        s32 = F32(s)
        u = np.arange(t.lo - 2, t.hi + 2, dtype=np.float64) + 0.5  # every tie, both signs, beyond both ends
        x = (u * s).astype(F32)
        exact = np.divide(x, s32, dtype=np.float32) == u  # keep only exact binary32 ties
        xs = np.concatenate([
            x[exact],
            np.nextafter(x[exact], F32(np.inf)), np.nextafter(x[exact], F32(-np.inf)),
            np.array([0.0, -0.0, 0.49999997, -0.49999997, 0.5, -0.5, 1e30, -1e30, 3.4e38, -3.4e38,
                      1e-45, -1e-45, 1.5e-39, -1.5e-39], F32),
            (np.array([t.lo - 0.5, t.hi + 0.5, t.lo - 1, t.hi + 1, t.lo, t.hi]) * s).astype(F32),
        ]).astype(F32)
        pad = (-xs.size) % C_
        xs = np.concatenate([xs, np.zeros(pad, F32)]).reshape(-1, C_)
        sc = {"tensor": s32, "channel": np.full(C_, s32), "full": np.full(xs.shape, s32)}[cfg.layout]
        ref = R.quantize(xs, sc, **_q_args(cfg))
        got = C.quantize(xs, sc, **_q_args(cfg))
        assert _same(got, ref), f"{cfg} s={s}\nx={xs}\nref={ref}\ncsim={got}"
        if not t.bipolar:  # independent check of the exact ties
            ties = u[exact]
            want = np.clip([_tie_expect(cfg.rounding, v) for v in ties], t.lo, t.hi)
            assert np.array_equal(got.ravel()[: ties.size], want), (cfg, s)
    # QONNX's HALF_UP adds 0.5 in binary32: fl32(0.49999997 + 0.5) = 1.0
    if cfg.rounding == "HALF_UP" and t.hi >= 1:
        x = np.full((1, C_), 0.49999997, F32)
        sc = {"tensor": F32(1), "channel": np.ones(C_, F32), "full": np.ones((1, C_), F32)}[cfg.layout]
        assert C.quantize(x, sc, **_q_args(cfg))[0, 0] == 1
    if t.bipolar:  # -0.0 -> +1, any negative (even subnormal) -> -1
        x = np.array([-0.0, 0.0, -1e-45, 1e-45, -5.0, 5.0], F32)
        assert C.quantize(x, 1.0, 1).tolist() == [1, 1, -1, 1, -1, 1]


# ---------------------------------------------------------------------------
# §1 dequantize
# ---------------------------------------------------------------------------

class DQ(NamedTuple):
    q_type: IntType | None  # None: the wrapper infers int8 from int8-range data
    layout: str
    C: int = 0


DEQUANT = [
    DQ(None, "tensor"),
    DQ(IntType(16, True), "channel", 4),
    DQ(BIP, "tensor"),
    DQ(IntType(4, False), "full", 3),
    DQ(IntType(24, True), "tensor"),
]


@pytest.fixture(scope="module")
def warm_dequant() -> None:
    calls = []
    for cfg in DEQUANT:
        shape = (1, cfg.C) if cfg.C else (3,)
        q = np.full(shape, 1, np.int64)
        s = np.ones({"tensor": (), "channel": (cfg.C,), "full": shape}[cfg.layout], F32)
        calls.append(lambda q=q, s=s, cfg=cfg: C.dequantize(q, s, q_type=cfg.q_type))
    _warm(calls)


@st.composite
def dequant_cases(draw):
    cfg = draw(st.sampled_from(DEQUANT))
    t = cfg.q_type or IntType(8, True)
    if cfg.layout == "tensor":
        shape = draw(st.sampled_from([(), (4,), (3, 5), (2, 2, 3)]))
        s_shape = ()
    else:
        shape = (draw(st.integers(1, 4)), cfg.C)
        s_shape = (cfg.C,) if cfg.layout == "channel" else shape
    q = draw(_codes(t, shape))
    s = np.array(draw(st.lists(SCALES, min_size=math.prod(s_shape), max_size=math.prod(s_shape))), F32)
    return cfg, q, s.reshape(s_shape)


@given(dequant_cases())
def test_dequantize(warm_dequant, case) -> None:
    cfg, q, s = case
    ref = R.dequantize(q, s)
    got, info = C.dequantize_ex(q, s, q_type=cfg.q_type)
    assert _same_f32(got, ref), f"{cfg}\nq={q}\ns={s!r}\nref={ref!r}\ncsim={got!r}"
    assert info["trips"] == (_chunk_trips(got.size) if cfg.layout == "tensor" else got.size)


# ---------------------------------------------------------------------------
# §2 matmul
# ---------------------------------------------------------------------------

class MM(NamedTuple):
    a: IntType
    w: IntType
    K: int
    N: int
    pe: int
    simd: int
    bias: bool
    batched: bool = False
    block_rows: int = 2


MATMUL = [
    MM(BIP, BIP, 16, 4, 2, 4, False, block_rows=1),            # XNOR
    MM(IntType(2, False), IntType(2, True), 6, 6, 3, 2, True),
    MM(IntType(3, True), BIP, 8, 4, 4, 8, True),                # b ? a : -a
    MM(BIP, IntType(3, True), 5, 3, 1, 1, True),                # b ? w : -w
    MM(IntType(4, False, True), IntType(5, True), 12, 4, 2, 3, False),
    MM(IntType(5, True), IntType(6, True, True), 9, 2, 1, 9, True),
    MM(IntType(6, False), IntType(7, True), 10, 5, 5, 5, False, block_rows=3),
    MM(IntType(7, True), IntType(4, True), 7, 3, 3, 1, True),
    MM(IntType(8, False), IntType(8, True), 8, 8, 2, 4, False, batched=True),   # softmax(.).V
    MM(IntType(8, True), IntType(8, True), 16, 6, 3, 8, False, batched=True),   # Q.K^T
    MM(IntType(8, False), IntType(4, True), 32, 8, 4, 8, True),                 # BERT-style uint8 x int4
    MM(IntType(8, True, True), BIP, 24, 2, 2, 6, False),
]


def _mm(cfg: MM, a, w, bias, **kw):
    return C.matmul_ex(a, w, bias, cfg.a, cfg.w, pe=cfg.pe, simd=cfg.simd, block_rows=cfg.block_rows, **kw)


@pytest.fixture(scope="module")
def warm_matmul() -> None:
    calls = []
    for cfg in MATMUL:
        a = np.full((1, cfg.K), cfg.a.hi, np.int64)
        w = np.full((cfg.K, cfg.N), cfg.w.hi, np.int64)
        b = np.zeros(cfg.N, np.int64) if cfg.bias else None
        calls.append(lambda cfg=cfg, a=a, w=w, b=b: _mm(cfg, a, w, b))
    for cfg in CORNER:
        calls.append(lambda cfg=cfg: _corner_run(cfg))
    _warm(calls)


@st.composite
def matmul_cases(draw):
    cfg = draw(st.sampled_from(MATMUL))
    rows = draw(st.integers(1, 5))
    if cfg.batched:
        B = draw(st.integers(1, 2))
        a_shape, w_shape = draw(st.sampled_from([
            ((B, rows, cfg.K), (B, cfg.K, cfg.N)),
            ((B, rows, cfg.K), (1, cfg.K, cfg.N)),   # broadcast weights
            ((rows, cfg.K), (B, cfg.K, cfg.N)),      # broadcast activations
            ((cfg.K,), (B, cfg.K, cfg.N)),           # a vector
        ]))
    else:
        a_shape = draw(st.sampled_from([(rows, cfg.K), (cfg.K,), (2, rows, cfg.K)]))
        w_shape = (cfg.K, cfg.N)
    a = draw(_codes(cfg.a, a_shape))
    w = draw(_codes(cfg.w, w_shape))
    bias = None
    if cfg.bias:
        bias = draw(hnp.arrays(np.int64, (cfg.N,), elements=st.one_of(
            st.sampled_from([-(2**31), 2**31 - 1, 0]), st.integers(-(2**31), 2**31 - 1), st.integers(-300, 300))))
    return cfg, a, w, bias


@given(matmul_cases())
def test_matmul(warm_matmul, case) -> None:
    cfg, a, w, bias = case
    ref = R.matmul(a, w, bias, cfg.a, cfg.w)
    got, info = _mm(cfg, a, w, bias)
    assert _same(got, ref), f"{cfg}\na={a}\nw={w}\nbias={bias}\nref={ref}\ncsim={got}"
    # AccBits (types.h) is the reference's acc_bits; the loop nest runs (N/PE)(K/SIMD) iterations per row
    b_lo, b_hi = (-(2**31), 2**31 - 1) if cfg.bias else (0, 0)
    assert info["acc_bits"] == info["required_acc_bits"] == R.acc_bits(cfg.K, cfg.a, cfg.w, b_lo, b_hi)
    assert info["iterations_per_row"] == (cfg.N // cfg.pe) * (cfg.K // cfg.simd)
    # the loop nest ran rows x (N/PE) x (K/SIMD) iterations (rows padded to whole blocks, per batch)
    if w.ndim == 2:
        batches, rows = 1, math.prod(a.shape[:-1])
    else:
        batches, rows = math.prod(np.broadcast_shapes(a.shape[:-2], w.shape[:-2])), (a.shape[-2] if a.ndim >= 2 else 1)
    blocks = -(-rows // cfg.block_rows)
    assert info["trips"] == batches * blocks * cfg.block_rows * info["iterations_per_row"]


class Corner(NamedTuple):
    a: IntType
    w: IntType
    simd: int
    pe: int = 1
    bias: tuple[int, int] | None = None  # exact bias bounds (and the bias values of the two columns)


K_MAX = 4096
CORNER = [
    Corner(IntType(8, True), IntType(8, True), 64, 2),                 # (-128)(-128) * 4096 = 2^26
    Corner(IntType(8, False), IntType(4, True), 128),                  # BERT FFN2-style uint8 x int4
    Corner(BIP, BIP, 256),                                             # XNOR, +-4096
    Corner(IntType(8, True), BIP, 32, 2),                              # +-128 * 4096
    Corner(IntType(8, True), IntType(8, True), 16, 1, (-(2**31), 2**31 - 1)),  # plus an int32 bias at both ends
]


def _corner_data(cfg: Corner):
    """Rows of a and columns of w each constant at one end of their ranges."""
    a = np.array([[cfg.a.lo] * K_MAX, [cfg.a.hi] * K_MAX], np.int64)
    w = np.array([[cfg.w.lo, cfg.w.hi]] * K_MAX, np.int64)
    bias = None if cfg.bias is None else np.array([cfg.bias[1], cfg.bias[0]], np.int64)
    return a, w, bias


def _corner_run(cfg: Corner):
    a, w, bias = _corner_data(cfg)
    return C.matmul_ex(a, w, bias, cfg.a, cfg.w, pe=cfg.pe, simd=cfg.simd, bias_bounds=cfg.bias)


def _fits(v: int, bits: int) -> bool:
    return -(1 << (bits - 1)) <= v <= (1 << (bits - 1)) - 1


@pytest.mark.parametrize("cfg", CORNER, ids=lambda c: f"{c.a}x{c.w}{'+bias' if c.bias else ''}")
def test_matmul_max_length_corner(warm_matmul, cfg: Corner) -> None:
    """K = 4096 with every operand at a corner of its range: the accumulator
    reaches the ends of the §2 interval; AccBits holds them and one bit less would not."""
    a, w, bias = _corner_data(cfg)
    got, info = _corner_run(cfg)
    ref = R.matmul(a, w, bias, cfg.a, cfg.w)
    assert _same(got, ref)
    want = np.array([[K_MAX * x * y for y in (cfg.w.lo, cfg.w.hi)] for x in (cfg.a.lo, cfg.a.hi)])
    if bias is not None:
        want = want + bias
    assert np.array_equal(got, want)
    b_lo, b_hi = cfg.bias or (0, 0)
    lo, hi = R.acc_range(K_MAX, cfg.a, cfg.w, b_lo, b_hi)
    assert info["acc_bits"] == R.acc_bits(K_MAX, cfg.a, cfg.w, b_lo, b_hi)
    assert int(got.min()) == lo or int(got.max()) == hi  # an end of the interval is reached...
    extreme = int(got.max()) if int(got.max()) == hi else int(got.min())
    assert _fits(extreme, info["acc_bits"]) and not _fits(extreme, info["acc_bits"] - 1)  # ...and needs every bit


# ---------------------------------------------------------------------------
# §3 requant
# ---------------------------------------------------------------------------

class RQ(NamedTuple):
    y: IntType
    layout: str  # tensor | channel | full
    N: int
    m: int
    wacc: int | None  # acc_bits_max (None: 62 - m)
    pe: int = 1

    @property
    def acc_w(self) -> int:
        return self.wacc if self.wacc is not None else 62 - self.m


REQUANT = [
    RQ(IntType(2, True), "tensor", 0, 16, None),
    RQ(IntType(3, False, True), "channel", 4, 16, 20, 2),
    RQ(IntType(4, True, True), "channel", 3, 24, 38),
    RQ(IntType(5, False), "full", 2, 16, None),
    RQ(IntType(6, True), "tensor", 0, 8, 24),
    RQ(IntType(7, False, True), "channel", 5, 16, None),
    RQ(IntType(8, True), "channel", 6, 16, None, 3),
    RQ(IntType(8, False), "tensor", 0, 16, None),
    RQ(IntType(16, True), "channel", 4, 16, 32),
    RQ(IntType(16, False), "tensor", 0, 24, None),
]


def _rq(cfg: RQ, acc, M, sh):
    return C.requant(acc, M, sh, cfg.y, cfg.wacc, cfg.m, pe=cfg.pe)


def _rq_ref(cfg: RQ, acc, M, sh):
    return R.requant(acc, M, sh, cfg.y, cfg.wacc, cfg.m)


@pytest.fixture(scope="module")
def warm_requant() -> None:
    calls = []
    for cfg in REQUANT:
        if cfg.layout == "tensor":
            args = (np.zeros(3, np.int64), 1, 1)
        else:
            args = (np.zeros((1, cfg.N), np.int64), np.ones(cfg.N, np.int64), np.ones(cfg.N, np.int64))
            if cfg.layout == "full":
                args = (args[0], np.ones((1, 1), np.int64), np.ones(cfg.N, np.int64))
        calls.append(lambda cfg=cfg, args=args: _rq(cfg, *args))
    _warm(calls)


def _tie_values(acc: np.ndarray, M: np.ndarray, sh: np.ndarray, mask: np.ndarray, odd: np.ndarray,
                wacc: int) -> np.ndarray:
    """Overwrite acc where mask holds with values that make acc*M an exact tie
    (an odd multiple of 2^(sh-1)): acc = odd * 2^(sh-1-e) where 2^e divides M exactly."""
    acc = acc.copy()
    for idx in np.ndindex(mask.shape):
        if not mask[idx]:
            continue
        Mi, si = int(M[idx]), int(sh[idx])
        if Mi == 0 or si == 0:
            continue
        e = (Mi & -Mi).bit_length() - 1
        p = si - 1 - e
        if p < 0:
            continue
        v = int(odd[idx]) << p
        if _fits(v, wacc):
            acc[idx] = v
    return acc


@st.composite
def requant_cases(draw):
    cfg = draw(st.sampled_from(REQUANT))
    W, m = cfg.acc_w, cfg.m
    a_lo, a_hi = -(1 << (W - 1)), (1 << (W - 1)) - 1
    m_el = st.one_of(st.integers(0, (1 << m) - 1), st.sampled_from([0, 1, 2, 3, (1 << m) - 1, 1 << (m - 1)]))
    s_el = st.one_of(st.integers(0, 62), st.integers(0, 20), st.sampled_from([0, 1, 61, 62]))
    if cfg.layout == "tensor":
        shape = draw(st.sampled_from([(), (3,), (2, 5), (4, 4), (9,)]))
        M = np.int64(draw(m_el))
        sh = np.int64(draw(s_el))
        if draw(st.booleans()):
            M, sh = np.array([M]), np.array([[sh]])
    else:
        rows = draw(st.integers(1, 4))
        shape = (rows, cfg.N)
        if cfg.layout == "channel":
            M = draw(hnp.arrays(np.int64, draw(st.sampled_from([(cfg.N,), (1, cfg.N), ()])), elements=m_el))
            sh = draw(hnp.arrays(np.int64, (cfg.N,) if M.ndim == 0 else draw(st.sampled_from([(cfg.N,), ()])),
                                 elements=s_el))
        else:  # full: a multiplier per row, a shift per channel
            M = draw(hnp.arrays(np.int64, (rows, 1), elements=m_el))
            sh = draw(hnp.arrays(np.int64, (cfg.N,), elements=s_el))
    acc_el = st.one_of(st.integers(a_lo, a_hi), st.integers(-300, 300), st.sampled_from([a_lo, a_hi, 0, -1, 1]))
    acc = draw(hnp.arrays(np.int64, shape, elements=acc_el))
    full = np.broadcast_shapes(acc.shape, np.shape(M), np.shape(sh))
    acc = np.broadcast_to(acc, full).copy()
    mask = draw(hnp.arrays(np.bool_, full))
    odd = draw(hnp.arrays(np.int64, full, elements=st.integers(-40, 40).map(lambda v: 2 * v + 1)))
    acc = _tie_values(acc, np.broadcast_to(M, full), np.broadcast_to(sh, full), mask, odd, W)
    return cfg, acc, M, sh


@given(requant_cases())
def test_requant(warm_requant, case) -> None:
    cfg, acc, M, sh = case
    ref = _rq_ref(cfg, acc, M, sh)
    got, info = C.requant_ex(acc, M, sh, cfg.y, cfg.wacc, cfg.m, pe=cfg.pe)
    assert _same(got, ref), f"{cfg}\nacc={acc}\nM={M}\nsh={sh}\nref={ref}\ncsim={got}"
    per_tensor = np.size(M) == 1 and np.size(sh) == 1
    assert info["trips"] == (_chunk_trips(got.size, cfg.pe) if per_tensor else got.size // cfg.pe)
    assert (info["W_ACC"], info["MBITS"]) == (cfg.acc_w, cfg.m)  # the covering set's configuration


def test_requant_corners(warm_requant) -> None:
    int8c = REQUANT[6]   # int8, per channel N=6, W_acc = 46, m = 16
    u8t = REQUANT[7]     # uint8, per tensor, W_acc = 46
    i16c = REQUANT[8]    # int16, per channel N=4, W_acc = 32
    W = int8c.acc_w
    amin, amax, Mmax = -(1 << (W - 1)), (1 << (W - 1)) - 1, (1 << 16) - 1

    def check(cfg, acc, M, sh, want=None):
        acc = np.asarray(acc, np.int64)
        ref, got = _rq_ref(cfg, acc, M, sh), _rq(cfg, acc, M, sh)
        assert _same(got, ref), f"{cfg}\nacc={acc}\nM={M}\nsh={sh}\nref={ref}\ncsim={got}"
        if want is not None:
            assert got.tolist() == want

    # exact ties, both signs: rshr rounds half toward +inf
    check(int8c, [[3, -3, 1, -1, 5, -5]], np.ones(6, np.int64), np.ones(6, np.int64), [[2, -1, 1, 0, 3, -2]])
    check(int8c, [[3, -3, 7, -7, 1, -1]], np.full(6, 3), np.full(6, 2),
          [[2, -2, 5, -5, 1, -1]])  # 9/4=2.25, -2.25, 21/4=5.25, -5.25, 0.75, -0.75 (no ties)
    check(int8c, [[6, -6, 10, -10, 2, -2]], np.full(6, 3), np.full(6, 2), [[5, -4, 8, -7, 2, -1]])  # 4.5 .. -1.5
    # saturation at both ends, most negative accumulator, largest multiplier
    check(int8c, [[amin, amax, amin, amax, 128, -129]], np.array([Mmax, Mmax, 1, 1, 1, 1]), np.zeros(6, np.int64),
          [[-128, 127, -128, 127, 127, -128]])
    check(u8t, [amin, amax, -1, 255, 256, 0], Mmax, 0, [0, 255, 0, 255, 255, 0])
    # M = 0 gives 0, sh = 0 is a plain product, sh = 62 and 61 at the widest product
    check(int8c, [[amin, amax, 5, -5, 0, 1]], np.zeros(6, np.int64), np.array([0, 62, 1, 0, 5, 61]), [[0] * 6])
    check(int8c, [[5, -5, 25, -25, 0, -1]], np.array([5, 5, 5, 5, 7, 128]), np.zeros(6, np.int64),
          [[25, -25, 125, -125, 0, -128]])
    check(int8c, [[amax, amin, amin, -(1 << 45), 1 << 44, -(1 << 44)]],
          np.array([Mmax, Mmax, Mmax, 1 << 15, 1 << 15, 1 << 15]), np.array([62, 62, 61, 61, 61, 60]),
          [[0, 0, -1, 0, 0, 0]])  # (-2^61 + 2^45)/2^61 -> -1; -2^60/2^61 = -0.5 -> 0; -2^59/2^60 = -0.5 -> 0
    check(int8c, [[1 << 43, -(1 << 43), 3 << 43, -(3 << 43), -(1 << 45), (1 << 45) - 1]], np.full(6, 1 << 15),
          np.full(6, 59), [[1, 0, 2, -1, -2, 2]])  # +-0.5, +-1.5 ties at sh = 59; -2 exactly; 2 - 2^-45
    # per-channel M and sh, every channel different
    check(i16c, [[1000, -1000, 12345, -32768], [7, -7, 1 << 30, -(1 << 31)]], np.array([40000, 1, 65535, 3]),
          np.array([16, 0, 20, 2]))
    check(i16c, [[(1 << 31) - 1, -(1 << 31), 0, 1]], np.array([65535, 65535, 65535, 65535]), np.array([0, 0, 0, 0]),
          [[32767, -32768, 0, 32767]])


# ---------------------------------------------------------------------------
# §4 lut
# ---------------------------------------------------------------------------

class LU(NamedTuple):
    x: IntType
    y: IntType | None  # None: the wrapper's default (int16)


LUT = [
    LU(BIP, IntType(8, True)),
    LU(IntType(1, False), BIP),
    LU(IntType(2, True), IntType(1, False)),
    LU(IntType(3, False), IntType(16, True)),
    LU(IntType(4, True), IntType(16, False)),
    LU(IntType(5, False), IntType(4, True, True)),
    LU(IntType(6, True), IntType(8, False)),
    LU(IntType(7, False), IntType(8, True)),
    LU(IntType(8, True), None),
    LU(IntType(8, False), IntType(16, False)),
]


def _lut_size(t: IntType) -> int:
    return 2 if t.bipolar else 1 << t.bits


def _all_codes(t: IntType) -> np.ndarray:
    return np.array([-1, 1]) if t.bipolar else np.arange(IntType(t.bits, t.signed).lo, IntType(t.bits, t.signed).hi + 1)


@pytest.fixture(scope="module")
def warm_lut() -> None:
    calls = []
    for cfg in LUT:
        tab = np.full(_lut_size(cfg.x), (cfg.y or IntType(16, True)).hi, np.int64)
        calls.append(lambda cfg=cfg, tab=tab: C.lut(_all_codes(cfg.x), tab, cfg.x, out_type=cfg.y))
    _warm(calls)


@st.composite
def lut_cases(draw):
    cfg = draw(st.sampled_from(LUT))
    tab = draw(_codes(cfg.y or IntType(16, True), (_lut_size(cfg.x),)))
    shape = draw(st.sampled_from([(), (1,), (7,), (3, 4), (2, 3, 5)]))
    q = draw(_codes(IntType(cfg.x.bits, cfg.x.signed), shape))
    return cfg, q, tab


@given(lut_cases())
def test_lut(warm_lut, case) -> None:
    cfg, q, tab = case
    ref = R.lut(q, tab, cfg.x)
    got, info = C.lut_ex(q, tab, cfg.x, out_type=cfg.y)
    assert _same(got, ref), f"{cfg}\nq={q}\ntable={tab}\nref={ref}\ncsim={got}"
    assert info["trips"] == _chunk_trips(got.size)


@pytest.mark.parametrize("cfg", LUT, ids=lambda c: f"{c.x}-to-{c.y}")
def test_lut_every_code(warm_lut, cfg: LU) -> None:
    """Every input code, with a table of distinct entries: the index is the code's bit pattern."""
    y = cfg.y or IntType(16, True)
    n = _lut_size(cfg.x)
    tab = np.resize(np.arange(y.lo, y.hi + 1) if not y.bipolar else np.array([1, -1]), n).astype(np.int64)
    q = _all_codes(cfg.x)
    got = C.lut(q, tab, cfg.x, out_type=cfg.y)
    assert _same(got, R.lut(q, tab, cfg.x))
    idx = (q + 1) // 2 if cfg.x.bipolar else q % n  # bit patterns (two's complement)
    assert np.array_equal(got, tab[idx])


@pytest.mark.parametrize("f", ["gelu", "exp", "sigmoid", "relu"])
def test_lut_from_lut_table(warm_lut, f: str) -> None:
    x_t, y_t = IntType(8, True), IntType(8, True)  # the LU(int8, None) configuration
    tab = R.lut_table(f, x_t, 0.05, y_t, 0.02)
    q = np.arange(-128, 128).reshape(16, 16)
    assert _same(C.lut(q, tab, x_t), R.lut(q, tab, x_t))


# ---------------------------------------------------------------------------
# §7 add
# ---------------------------------------------------------------------------

class AD(NamedTuple):
    a: IntType
    b: IntType
    y: IntType
    m: int  # multipliers drawn below 2^m
    pe: int = 1


ADD = [
    AD(IntType(8, True), IntType(8, True), IntType(8, True), 16),
    AD(IntType(4, False), IntType(6, True), IntType(16, True), 16, 2),
    AD(IntType(16, True), IntType(16, True), IntType(16, True), 24),
    AD(IntType(2, True), IntType(3, False), IntType(2, False), 16),
    AD(IntType(8, False, True), IntType(5, True), IntType(7, True, True), 16, 4),
    AD(IntType(16, False), IntType(12, True), IntType(16, False), 16),
]


def _add(cfg: AD, a, b, Ma, Mb, sh, impl=C):
    if impl is C:
        return C.add(a, b, Ma, Mb, sh, cfg.a, cfg.b, cfg.y, pe=cfg.pe)
    return R.add(a, b, Ma, Mb, sh, cfg.a, cfg.b, cfg.y)


@pytest.fixture(scope="module")
def warm_add() -> None:
    calls = []
    for cfg in ADD:
        for Ma in sorted({1, (1 << cfg.m) - 1}):  # m = 24 configurations compile for 16- and 24-bit multipliers
            calls.append(lambda cfg=cfg, Ma=Ma: _add(cfg, np.zeros(2, np.int64), np.zeros(2, np.int64), Ma, 1, 1))
    _warm(calls)


@st.composite
def add_cases(draw):
    cfg = draw(st.sampled_from(ADD))
    m = cfg.m
    m_el = st.one_of(st.integers(0, (1 << m) - 1), st.sampled_from([0, 1, (1 << m) - 1, 1 << (m - 1)]))
    Ma, Mb = draw(m_el), draw(m_el)
    sh = draw(st.one_of(st.integers(1, 62), st.integers(max(1, m - 4), m + 4), st.sampled_from([1, 61, 62])))
    a_shape, b_shape = draw(st.sampled_from([((), ()), ((5,), (5,)), ((3, 4), (3, 4)), ((3, 4), (4,)),
                                             ((2, 1), (1, 6)), ((9,), ())]))
    a = draw(_codes(cfg.a, a_shape))
    b = draw(_codes(cfg.b, b_shape))
    if draw(st.booleans()) and sh - 1 < m:  # exact ties: a*Ma an odd multiple of 2^(sh-1), b*Mb a multiple of 2^sh
        Ma = (1 << (sh - 1)) * draw(st.integers(0, ((1 << m) - 1) >> sh).map(lambda v: 2 * v + 1))
        Mb = (Mb >> sh) << sh
        a = np.where(a % 2 == 0, np.where(a + 1 <= cfg.a.hi, a + 1, a - 1), a)
    return cfg, a, b, Ma, Mb, sh


@given(add_cases())
def test_add(warm_add, case) -> None:
    cfg, a, b, Ma, Mb, sh = case
    ref = _add(cfg, a, b, Ma, Mb, sh, R)
    got, info = C.add_ex(a, b, Ma, Mb, sh, cfg.a, cfg.b, cfg.y, pe=cfg.pe)
    assert _same(got, ref), f"{cfg}\na={a}\nb={b}\nMa={Ma} Mb={Mb} sh={sh}\nref={ref}\ncsim={got}"
    assert info["trips"] == _chunk_trips(got.size, cfg.pe)


def test_add_corners(warm_add) -> None:
    i8, i16 = ADD[0], ADD[2]

    def check(cfg, a, b, Ma, Mb, sh, want=None):
        a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
        ref, got = _add(cfg, a, b, Ma, Mb, sh, R), _add(cfg, a, b, Ma, Mb, sh)
        assert _same(got, ref), f"{cfg}\na={a}\nb={b}\nMa={Ma} Mb={Mb} sh={sh}\nref={ref}\ncsim={got}"
        if want is not None:
            assert got.tolist() == want

    # ties both signs: (a + b)/2 with a + b odd
    check(i8, [1, -1, 3, -3, 0, 0], [0, 0, 0, 0, 5, -5], 1, 1, 1, [1, 0, 2, -1, 3, -2])
    # saturation, most negative inputs, largest multipliers
    check(i8, [-128, 127, -128, 127], [-128, 127, 127, -128], (1 << 16) - 1, (1 << 16) - 1, 1, [-128, 127, -128, -128])
    check(i16, [-32768, 32767, -32768, 32767], [-32768, 32767, 0, 0], (1 << 24) - 1, (1 << 24) - 1, 24,
          [-32768, 32767, -32768, 32767])
    check(i16, [-32768, 32767], [-32768, 32767], (1 << 24) - 1, (1 << 24) - 1, 62, [0, 0])
    # M = 0 on either side
    check(i8, [5, -7, 100], [3, 3, 3], 0, 1 << 15, 16, [2, 2, 2])
    # realistic multipliers from add_params (one shared shift)
    for s_a, s_b, s_y in ((0.02, 0.05, 0.04), (1.0, 0.001, 0.5), (0.1, 0.1, 0.1), (3e-3, 7e-4, 9e-3)):
        Ma, Mb, sh = R.add_params(s_a, s_b, s_y)
        rng = np.random.default_rng(0)
        a = rng.integers(-128, 128, 64)
        b = rng.integers(-128, 128, 64)
        check(i8, a, b, Ma, Mb, sh)


# ---------------------------------------------------------------------------
# Bad input: both faces raise ValueError naming the op
# ---------------------------------------------------------------------------

x23 = np.zeros((2, 3), F32)
q23 = np.zeros((2, 3), np.int64)
BAD = [
    ("quantize", lambda M: M.quantize(x23, 1.0, bits=0)),
    ("quantize", lambda M: M.quantize(x23, 1.0, bits=17)),
    ("quantize", lambda M: M.quantize(x23, 0.0, bits=8)),
    ("quantize", lambda M: M.quantize(x23, -1.0, bits=8)),
    ("quantize", lambda M: M.quantize(x23, np.array([1.0, 0.0, 1.0], F32), bits=8)),
    ("quantize", lambda M: M.quantize(x23, np.ones(2, F32), bits=8)),
    ("quantize", lambda M: M.quantize(x23, 1.0, bits=8, rounding="NEAREST")),
    ("quantize", lambda M: M.quantize(x23, 1.0, bits=8, zero_point=1)),
    ("dequantize", lambda M: M.dequantize(q23, 0.0)),
    ("dequantize", lambda M: M.dequantize(q23, np.ones(2, F32))),
    ("matmul", lambda M: M.matmul(q23, np.zeros((3, 2), np.int64), a_type=IntType(9, True))),
    ("matmul", lambda M: M.matmul(q23, np.zeros((3, 2), np.int64), w_type=IntType(9, True))),
    ("matmul", lambda M: M.matmul(q23, np.zeros((3, 2), np.int64), w_type=IntType(4, False))),
    ("matmul", lambda M: M.matmul(q23, np.zeros((3, 2), np.int64), a_type=IntType(1, False))),
    ("matmul", lambda M: M.matmul(q23, np.zeros((4, 2), np.int64))),
    ("matmul", lambda M: M.matmul(q23, np.zeros((3, 2), np.int64), bias=np.zeros(3, np.int64))),
    ("matmul", lambda M: M.matmul(q23 + 300, np.zeros((3, 2), np.int64))),
    ("requant", lambda M: M.requant(q23, 1, 1, IntType(1, True))),
    ("requant", lambda M: M.requant(q23, 1, 1, IntType(17, True))),
    ("requant", lambda M: M.requant(q23, np.ones(2, np.int64), 1)),
    ("requant", lambda M: M.requant(q23, 1, 63)),
    ("requant", lambda M: M.requant(q23, 1 << 24, 1)),
    ("requant", lambda M: M.requant(q23 + (1 << 50), 1, 1)),
    ("lut", lambda M: M.lut(q23, np.zeros(512, np.int64), IntType(9, True))),
    ("lut", lambda M: M.lut(q23, np.zeros(15, np.int64), IntType(4, True))),
    ("add", lambda M: M.add(q23, q23, 1, 1, 1, a_type=IntType(1, True))),
    ("add", lambda M: M.add(q23, q23, 1, 1, 1, out_type=IntType(17, True))),
    ("add", lambda M: M.add(q23, np.zeros((3, 2), np.int64), 1, 1, 1)),
    ("add", lambda M: M.add(q23, q23, 1, 1, 0)),
]


@pytest.mark.parametrize("impl", [R, C], ids=["reference", "csim"])
@pytest.mark.parametrize("op,call", BAD, ids=[f"{op}-{i}" for i, (op, _) in enumerate(BAD)])
def test_bad_input(impl, op: str, call) -> None:
    with pytest.raises(ValueError, match=rf"^{op}:"):
        call(impl)


# ---------------------------------------------------------------------------
# Every header compiles on its own
# ---------------------------------------------------------------------------

HEADERS = ["types.h", "quant.h", "matmul.h", "requant.h", "lut.h", "add.h"]


def test_headers_standalone() -> None:
    """#include each header alone into an empty main (-Wall -Wextra -Werror; HLS pragmas are unknown to g++)."""
    def build(h: str):
        return csim.build(f'#include "codesign/{h}"\nint main() {{ return 0; }}\n', name=f"standalone_{h[:-2]}",
                          extra_flags=("-Wall", "-Wextra", "-Werror", "-Wno-unknown-pragmas"))
    with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:
        for exe in pool.map(build, HEADERS):
            assert exe.is_file()


# Out-of-contract template configurations fail to compile through static_assert (§0).
BAD_TEMPLATES = r"""
#include "codesign/quant.h"
#include "codesign/matmul.h"
#include "codesign/requant.h"
#include "codesign/lut.h"
#include "codesign/add.h"
using namespace codesign;
typedef IntT<8, true> i8;
void q17() { (void)quantize<IntT<17, true> >(1.0f, 1.0f); }
void a9() { Mvau<IntT<9, true>, i8, 4, 4>::acc_t x = 0; (void)x; }
void wu() { Mvau<i8, IntT<4, false>, 4, 4>::acc_t x = 0; (void)x; }
void pe() { Mvau<i8, i8, 4, 3, 2>::acc_t x = 0; (void)x; }
void acc() { Mvau<i8, i8, 4, 4, 1, 1, false, 0, 0, 8>::acc_t x = 0; (void)x; }
void rq() { (void)requant<47, i8, 16>(ap_int<47>(0), ap_uint<16>(1), ap_uint<6>(0)); }
void lx() { ap_int<8> t[512]; (void)lut<IntT<9, true>, i8>(ap_int<9>(0), t); }
void ad() { (void)add<IntT<1, true>, i8, i8>(ap_uint<1>(0), ap_int<8>(0), ap_uint<16>(1), ap_uint<16>(1), ap_uint<6>(1)); }
int main() { return 0; }
"""


def test_out_of_contract_templates_do_not_compile() -> None:
    with pytest.raises(csim.CsimCompileError) as err:
        csim.build(BAD_TEMPLATES, name="bad_templates")
    msgs = err.value.stderr
    for want in ("codesign::quantize: 1..16-bit", "codesign::Mvau: activations have 1..8 bits",
                 "codesign::Mvau: weights are signed or bipolar", "codesign::Mvau: N % PE must be 0",
                 "codesign::Mvau: an accumulator override must be at least AccBits",
                 "codesign::requant: W_acc + m must be <= 62", "codesign::lut: inputs have 1..8 bits",
                 "codesign::add: inputs have 2..16 bits"):
        assert want in msgs, want
