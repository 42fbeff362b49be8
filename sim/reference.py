"""Numpy integer reference of codesign's arithmetic contract (docs/arithmetic.md).

One function per op, vectorised, exact. Section numbers (§n) refer to the
contract. This module imports numpy and the Python standard library only — never
torch, brevitas or qonnx — so it stays an implementation independent of the
frameworks it is tested against.

All integer results are ``np.int64`` arrays. Every function validates its
arguments and raises ``ValueError`` naming the op and the offending value.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import numpy as np

from codesign.sim.checks import (as_type, check_bits, check_broadcast, check_codes, check_scale, int_codes,
                                 packed_bytes)

__all__ = [
    "IntType", "int_range", "sat", "rshr",
    "ROUNDING_MODES", "quantize", "dequantize",
    "acc_range", "acc_bits", "exact_weights", "matmul",
    "dyadic", "requant",
    "LUT_FUNCTIONS", "lut_index", "lut_table", "lut",
    "softmax_table", "softmax",
    "isqrt", "LN_F", "LN_Z", "layernorm_params", "layernorm",
    "add_params", "add",
    "pack_bipolar", "xnor_popcount", "threshold", "bn_thresholds",
    "maxpool2d", "avgpool2d",
    "conv_geometry", "conv2d",
]

# ---------------------------------------------------------------------------
# §0 primitives
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class IntType:
    """An integer code type: ``bits`` wide, signed or not, optionally narrow.

    A 1-bit signed type is bipolar ({-1, +1}); a 1-bit unsigned type is {0, 1}.
    """

    bits: int
    signed: bool = True
    narrow: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.bits, (int, np.integer)) or not 1 <= self.bits <= 32:
            raise ValueError(f"IntType: bits={self.bits!r} not supported (1..32)")

    @property
    def bipolar(self) -> bool:
        return self.bits == 1 and self.signed

    @property
    def lo(self) -> int:
        return int_range(self.bits, self.signed, self.narrow)[0]

    @property
    def hi(self) -> int:
        return int_range(self.bits, self.signed, self.narrow)[1]

    def __str__(self) -> str:
        if self.bipolar:
            return "bipolar"
        return f"{'int' if self.signed else 'uint'}{self.bits}{'n' if self.narrow else ''}"


def int_range(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """(lo, hi) of a code type, as QONNX's min_int/max_int (§0)."""
    check_bits("int_range", "bits", bits, 1, 32)
    if bits == 1 and signed:
        return -1, 1
    if signed:
        return -(2 ** (bits - 1)) + int(narrow), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1 - int(narrow)


def sat(v, lo: int, hi: int) -> np.ndarray:
    """Clamp to [lo, hi]."""
    if lo > hi:
        raise ValueError(f"sat: lo={lo} > hi={hi}")
    return np.clip(int_codes("sat", "v", v), lo, hi)


def rshr(v, s) -> np.ndarray:
    """Rounding right shift, ties toward +inf: floor((v + 2^(s-1)) / 2^s); rshr(v, 0) = v (§0).

    ``v`` must satisfy |v| < 2^62 so that the addition cannot overflow int64.
    """
    v = int_codes("rshr", "v", v)
    s = int_codes("rshr", "shift", s)
    if s.size and (s.min() < 0 or s.max() > 62):
        raise ValueError(f"rshr: shift {int(s.min())}..{int(s.max())} outside 0..62")
    half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0)
    return np.right_shift(v + half, s)  # numpy >> on int64 is arithmetic (floor)


# ---------------------------------------------------------------------------
# §1 quantize / dequantize
# ---------------------------------------------------------------------------

def _half_up(u):
    return np.sign(u) * np.floor(np.abs(u) + np.float32(0.5))


def _half_down(u):
    return np.sign(u) * np.ceil(np.abs(u) - np.float32(0.5))


ROUNDING_MODES: Mapping[str, Callable[[np.ndarray], np.ndarray]] = {
    "ROUND": np.rint,       # half to even
    "HALF_EVEN": np.rint,
    "FLOOR": np.floor,
    "CEIL": np.ceil,
    "DOWN": np.trunc,
    "UP": lambda u: np.sign(u) * np.ceil(np.abs(u)),
    "HALF_UP": _half_up,
    "HALF_DOWN": _half_down,
}


def quantize(x, scale, bits: int, signed: bool = True, narrow: bool = False,
             rounding: str = "ROUND", zero_point=0) -> np.ndarray:
    """§1: codes = R(clamp(fl32(x / scale))) in binary32; 1-bit signed is bipolar.

    ``scale`` broadcasts against ``x`` (per tensor or per channel).
    """
    op = "quantize"
    check_bits(op, "bits", bits, 1, 16)
    if np.any(np.asarray(zero_point) != 0):
        raise ValueError(f"{op}: zero_point must be 0 (symmetric quantization), got {zero_point!r}")
    mode = str(rounding).upper()
    if mode not in ROUNDING_MODES:
        raise ValueError(f"{op}: rounding mode {rounding!r} not supported ({', '.join(ROUNDING_MODES)})")
    x = np.asarray(x, dtype=np.float32)
    s = check_scale(op, scale)
    check_broadcast(op, x.shape, s.shape,
                    message=f"scale shape {s.shape} does not broadcast to input shape {x.shape}")
    if x.size and not np.all(np.isfinite(x)):
        raise ValueError(f"{op}: input contains NaN or infinity")
    t = np.divide(x, s, dtype=np.float32)
    if bits == 1 and signed:
        return np.where(t >= 0, 1, -1).astype(np.int64)
    lo, hi = int_range(bits, signed, narrow)
    t = np.clip(t, np.float32(lo), np.float32(hi))
    return ROUNDING_MODES[mode](t).astype(np.int64)


def dequantize(q, scale) -> np.ndarray:
    """§1: fl32(q * scale)."""
    q = int_codes("dequantize", "q", q)
    s = check_scale("dequantize", scale)
    check_broadcast("dequantize", q.shape, s.shape,
                    message=f"scale shape {s.shape} does not broadcast to input shape {q.shape}")
    return np.multiply(q.astype(np.float32), s, dtype=np.float32)


# ---------------------------------------------------------------------------
# §2 integer matmul
# ---------------------------------------------------------------------------

def acc_range(K: int, a: IntType, w: IntType, bias_lo: int = 0, bias_hi: int = 0,
              _op: str = "acc_range") -> tuple[int, int]:
    """Exact reachable range of sum_{k<K} a_k*w_k + b (§2)."""
    if not isinstance(K, (int, np.integer)) or K < 1:
        raise ValueError(f"{_op}: K={K!r} must be an integer >= 1")
    a, w = as_type(_op, a), as_type(_op, w)
    _check_mm_type(_op, "activation", a, True)
    _check_mm_type(_op, "weight", w, False)  # §2: W is signed or bipolar
    if bias_lo > bias_hi:
        raise ValueError(f"{_op}: bias_lo={bias_lo} > bias_hi={bias_hi}")
    corners = [a.lo * w.lo, a.lo * w.hi, a.hi * w.lo, a.hi * w.hi]
    p_lo, p_hi = min(corners), max(corners)
    return K * min(p_lo, 0) + bias_lo, K * max(p_hi, 0) + bias_hi


def _bits_for(lo: int, hi: int) -> int:
    w = 1
    while not (-(1 << (w - 1)) <= lo and hi <= (1 << (w - 1)) - 1):
        w += 1
    return w


def acc_bits(K: int, a: IntType, w: IntType, bias_lo: int = 0, bias_hi: int = 0) -> int:
    """Smallest two's-complement accumulator width that provably never overflows (§2)."""
    return _bits_for(*acc_range(K, a, w, bias_lo, bias_hi, _op="acc_bits"))


def _check_mm_type(op: str, what: str, t: IntType, allow_unsigned: bool) -> None:
    check_bits(op, f"{what} bits", t.bits, 1, 8)
    if t.bits == 1 and not t.signed:
        raise ValueError(f"{op}: 1-bit {what} must be bipolar (signed=True), unsigned 1-bit is not supported")
    if not allow_unsigned and not t.signed:
        raise ValueError(f"{op}: {what} must be signed or bipolar")



@dataclass(frozen=True, eq=False)
class ExactWeights:
    """Weight codes validated once and kept as float64, for repeated matmuls (§2's float64
    evaluation). Build with :func:`exact_weights`; pass in place of ``w`` to :func:`matmul`."""

    codes: np.ndarray  # float64, integer-valued, read-only
    w_type: IntType


def exact_weights(w, w_type: IntType = IntType(4, True)) -> ExactWeights:
    """Validate weight codes against ``w_type`` once and keep their float64 copy."""
    op = "exact_weights"
    w_type = as_type(op, w_type)
    _check_mm_type(op, "weight", w_type, False)
    w = np.asarray(w)
    if w.dtype.kind not in "iu":
        w = int_codes(op, "w", w)
    check_codes(op, "w", w, w_type)  # on the (narrow) integer array: cheaper than on float64
    codes = w.astype(np.float64)
    codes.setflags(write=False)
    return ExactWeights(codes, w_type)


def matmul(a, w, bias=None, a_type: IntType = IntType(8, False), w_type: IntType = IntType(4, True),
           check: bool = True) -> np.ndarray:
    """§2: acc[..., n] = sum_k a[..., k] * w[k, n] + bias[n], exact, int64.

    ``w`` may be 2-D (K, N) or batched (..., K, N) (activation x activation, e.g. Q·Kᵀ).
    Evaluated as a float64 matmul: every product is an integer with |p| <= 2^15 and the
    accumulator is at most 48 bits (checked; it implies K < 2^37), so every partial sum
    is an integer below 2^52, where float64 is exact.
    """
    op = "matmul"
    a_type, w_type = as_type(op, a_type), as_type(op, w_type)
    _check_mm_type(op, "activation", a_type, True)
    _check_mm_type(op, "weight", w_type, False)  # §2: W is signed or bipolar
    a = int_codes(op, "a", a)
    if isinstance(w, ExactWeights):  # validated when prepared
        if w.w_type != w_type:
            raise ValueError(f"{op}: weights were prepared as {w.w_type}, the call says {w_type}")
        w, wf, w_checked = w.codes, w.codes, True
    else:
        w = int_codes(op, "w", w)
        wf, w_checked = None, False
    if a.ndim < 1 or w.ndim < 2:
        raise ValueError(f"{op}: need a (..., K) and w (K, N), got shapes {a.shape} and {w.shape}")
    K = a.shape[-1]
    if w.shape[-2] != K:
        raise ValueError(f"{op}: inner dimensions differ: a {a.shape} (K={K}) vs w {w.shape} (K={w.shape[-2]})")
    if K < 1:
        raise ValueError(f"{op}: K={K}, need at least one product per output")
    if check:
        check_codes(op, "a", a, a_type)
        if not w_checked:
            check_codes(op, "w", w, w_type)
    wacc = acc_bits(K, a_type, w_type, *((-(2**31), 2**31 - 1) if bias is not None else (0, 0)))
    if wacc > 48:
        raise ValueError(f"{op}: K={K} needs a {wacc}-bit accumulator, more than 48 bits (§2)")
    acc = np.matmul(a.astype(np.float64), wf if wf is not None else w.astype(np.float64)).astype(np.int64)
    if bias is not None:
        b = int_codes(op, "bias", bias)
        if b.shape not in ((), (w.shape[-1],)):
            raise ValueError(f"{op}: bias shape {b.shape} does not match N={w.shape[-1]}")
        if b.size and (b.min() < -(2**31) or b.max() > 2**31 - 1):
            raise ValueError(f"{op}: bias outside int32: [{int(b.min())}, {int(b.max())}]")
        acc = acc + b
    return acc


# ---------------------------------------------------------------------------
# §3 requantization
# ---------------------------------------------------------------------------

MAX_SHIFT = 62


def dyadic(r, m: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """§3: integer multiplier M and shift sh with M * 2^-sh ~ r, 2^(m-1) <= M < 2^m.

    Vectorised over ``r`` (per-channel ratios). Exact: uses frexp and a
    power-of-two scaling, so the result does not depend on the platform.
    """
    op = "dyadic"
    check_bits(op, "m", m, 2, 24)
    r = check_scale(op, r, np.float64, what="ratio")
    f, e = np.frexp(r)  # r = f * 2^e, f in [0.5, 1)
    M = np.rint(np.ldexp(f, m)).astype(np.int64)
    sh = (m - e).astype(np.int64)
    carry = M == (1 << m)
    M = np.where(carry, 1 << (m - 1), M)
    sh = np.where(carry, sh - 1, sh)
    if np.any(sh < 0):
        raise ValueError(f"{op}: ratio {float(r[sh < 0].ravel()[0])!r} >= 2^{m} - 1/2: output scale too small "
                         f"for a {m}-bit dyadic multiplier")
    tiny = sh > MAX_SHIFT
    if np.any(tiny):
        M = np.where(tiny, np.rint(np.ldexp(r, MAX_SHIFT)).astype(np.int64), M)
        sh = np.where(tiny, MAX_SHIFT, sh)
    return M, sh


def requant(acc, M, sh, out_type: IntType = IntType(8, True), acc_bits_max: int | None = None,
            m: int = 16) -> np.ndarray:
    """§3: sat_Y(rshr(acc * M, sh)); M, sh broadcast per channel.

    ``acc_bits_max``: the declared accumulator width W_acc (values must fit it); by
    default the width of the actual values. ``m``: the multiplier width (at least the
    width of the largest M). §3 requires W_acc + m <= 62.
    """
    op = "requant"
    out_type = as_type(op, out_type)
    check_bits(op, "output bits", out_type.bits, 2, 16)
    acc = int_codes(op, "acc", acc)
    M = int_codes(op, "M", M)
    sh = int_codes(op, "shift", sh)
    check_broadcast(op, acc.shape, M.shape, sh.shape,
                    message=f"M {M.shape} / shift {sh.shape} do not broadcast to acc {acc.shape}")
    if M.size and (M.min() < 0 or M.max() >= 1 << 24):
        raise ValueError(f"{op}: multiplier outside 0..2^24-1: [{int(M.min())}, {int(M.max())}]")
    if sh.size and (sh.min() < 0 or sh.max() > MAX_SHIFT):
        raise ValueError(f"{op}: shift outside 0..{MAX_SHIFT}: [{int(sh.min())}, {int(sh.max())}]")
    mbits = max(m, int(M.max()).bit_length() if M.size else 0)
    if acc.size or acc_bits_max is not None:
        wacc = _bits_for(int(acc.min()), int(acc.max())) if acc.size else 1
        if acc_bits_max is not None:
            check_bits(op, "acc_bits_max", acc_bits_max, 1, 62)
            if wacc > acc_bits_max:
                raise ValueError(f"{op}: accumulator values [{int(acc.min())}, {int(acc.max())}] "
                                 f"do not fit the declared {acc_bits_max} bits")
            wacc = int(acc_bits_max)
        if wacc + mbits > 62:
            raise ValueError(f"{op}: accumulator of {wacc} bits x {mbits}-bit multiplier exceeds 62 bits")
    return sat(rshr(acc * M, sh), out_type.lo, out_type.hi)


# ---------------------------------------------------------------------------
# §4 lookup tables
# ---------------------------------------------------------------------------

_SQRT2 = math.sqrt(2.0)
_erf = np.vectorize(math.erf, otypes=[np.float64])
_SELU_ALPHA = 1.6732632423543772
_SELU_LAMBDA = 1.0507009873554805

LUT_FUNCTIONS: Mapping[str, Callable[[np.ndarray], np.ndarray]] = {
    "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, 0.0),
    "relu6": lambda x: np.clip(x, 0.0, 6.0),
    "gelu": lambda x: 0.5 * x * (1.0 + _erf(x / _SQRT2)),
    "gelu_tanh": lambda x: 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3))),
    "exp": np.exp,
    "tanh": np.tanh,
    "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x)),
    "silu": lambda x: x / (1.0 + np.exp(-x)),
    "hardswish": lambda x: x * np.clip(x + 3.0, 0.0, 6.0) / 6.0,
    "hardsigmoid": lambda x: np.clip(x / 6.0 + 0.5, 0.0, 1.0),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),
    "selu": lambda x: _SELU_LAMBDA * np.where(x > 0, x, _SELU_ALPHA * np.expm1(np.minimum(x, 0.0))),
    "softplus": lambda x: np.logaddexp(0.0, x),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "abs": np.abs,
    "square": np.square,
    "neg": np.negative,
}


def lut_index(q, in_type: IntType) -> np.ndarray:
    """§4: table index = bit pattern of the code."""
    op = "lut_index"
    in_type = as_type(op, in_type)
    check_bits(op, "input bits", in_type.bits, 1, 8)
    q = int_codes(op, "q", q)
    check_codes(op, "q", q, IntType(in_type.bits, in_type.signed))
    if in_type.bipolar:
        return (q + 1) // 2
    if in_type.signed:
        return np.bitwise_and(q, (1 << in_type.bits) - 1)
    return q


def _all_codes(t: IntType) -> np.ndarray:
    """Every code of a type, in index order 0 .. 2^b - 1 (bit patterns)."""
    if t.bipolar:
        return np.array([-1, 1], dtype=np.int64)
    idx = np.arange(1 << t.bits, dtype=np.int64)
    if t.signed:
        return np.where(idx >= 1 << (t.bits - 1), idx - (1 << t.bits), idx)
    return idx


def _quant64(v: np.ndarray, s_y: float, out_type: IntType) -> np.ndarray:
    if out_type.bipolar:
        return np.where(v >= 0, 1, -1).astype(np.int64)
    return np.clip(np.rint(v / s_y), out_type.lo, out_type.hi).astype(np.int64)


def lut_table(f: str | Callable, in_type: IntType, in_scale: float, out_type: IntType,
              out_scale: float) -> np.ndarray:
    """§4: default table: table[idx(q)] = quant64(f(q * s_x)) in float64, half to even."""
    op = "lut_table"
    in_type, out_type = as_type(op, in_type), as_type(op, out_type)
    check_bits(op, "input bits", in_type.bits, 1, 8)
    check_bits(op, "output bits", out_type.bits, 1, 16)
    if isinstance(f, str):
        if f not in LUT_FUNCTIONS:
            raise ValueError(f"{op}: unknown function {f!r} (supported: {', '.join(LUT_FUNCTIONS)})")
        f = LUT_FUNCTIONS[f]
    s_x = float(check_scale(op, in_scale, np.float64))
    s_y = float(check_scale(op, out_scale, np.float64))
    codes = _all_codes(in_type)
    valid = np.clip(codes, in_type.lo, in_type.hi)  # narrow types: nearest valid code
    x = valid.astype(np.float64) * s_x
    with np.errstate(over="ignore"):
        v = np.asarray(f(x), dtype=np.float64)
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{op}: function is not finite on the input range [{x.min()}, {x.max()}]")
    return _quant64(v, s_y, out_type)


def lut(q, table, in_type: IntType) -> np.ndarray:
    """§4: y = table[idx(q)]."""
    op = "lut"
    in_type = as_type(op, in_type)
    check_bits(op, "input bits", in_type.bits, 1, 8)
    table = int_codes(op, "table", table)
    n = 2 if in_type.bipolar else 1 << in_type.bits
    if table.shape != (n,):
        raise ValueError(f"{op}: table has shape {table.shape}, {in_type} input needs ({n},)")
    q = int_codes(op, "q", q)
    check_codes(op, "q", q, IntType(in_type.bits, in_type.signed))
    return table[lut_index(q, in_type)]


# ---------------------------------------------------------------------------
# §5 integer softmax
# ---------------------------------------------------------------------------

def softmax_table(in_type: IntType, in_scale: float, eb: int = 8) -> np.ndarray:
    """§5: T[k] = round_half_even((2^EB - 1) * exp(-k * s_x)), k = 0 .. 2^b - 1."""
    op = "softmax_table"
    in_type = as_type(op, in_type)
    check_bits(op, "input bits", in_type.bits, 2, 8)
    check_bits(op, "EB", eb, 1, 16)
    s = float(check_scale(op, in_scale, np.float64))
    k = np.arange(1 << in_type.bits, dtype=np.float64)
    return np.rint(((1 << eb) - 1) * np.exp(-k * s)).astype(np.int64)


def softmax(x, table, in_type: IntType, eb: int = 8, ob: int = 8) -> np.ndarray:
    """§5: integer softmax over the last axis; unsigned ``ob``-bit codes at scale 2^-ob."""
    op = "softmax"
    in_type = as_type(op, in_type)
    check_bits(op, "input bits", in_type.bits, 2, 8)
    check_bits(op, "EB", eb, 1, 16)
    check_bits(op, "OB", ob, 1, 16)
    table = int_codes(op, "table", table)
    if table.shape != (1 << in_type.bits,):
        raise ValueError(f"{op}: table shape {table.shape}, expected ({1 << in_type.bits},)")
    if table.size and (table.min() < 0 or table.max() > (1 << eb) - 1 or table[0] < 1):
        raise ValueError(f"{op}: table entries must be in 0..2^EB-1 with T[0] >= 1")
    x = int_codes(op, "x", x)
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"{op}: need at least one element per row, got shape {x.shape}")
    check_codes(op, "x", x, in_type)
    n = x.shape[-1]
    if n * ((1 << eb) - 1) >= 1 << 32:
        raise ValueError(f"{op}: row length {n} x (2^{eb}-1) overflows the 32-bit sum")
    k = x.max(axis=-1, keepdims=True) - x
    e = table[k]
    S = e.sum(axis=-1, keepdims=True)
    R = (np.int64(1) << 32) // S
    p = rshr(e * R, 32 - ob)
    return np.minimum(p, (1 << ob) - 1)


# ---------------------------------------------------------------------------
# §6 integer LayerNorm
# ---------------------------------------------------------------------------

LN_F = 8   # fraction bits of the standard deviation
LN_Z = 16  # fraction bits of the normalised value
_LN_E_MAX = (1 << 40) - 1


def isqrt(v) -> np.ndarray:
    """floor(sqrt(v)) for 0 <= v < 2^64 (§6), exact (Python's math.isqrt per element).

    Values >= 2^63 come as ``np.uint64`` (or Python ints, which numpy makes uint64).
    """
    a = np.asarray(v)
    if a.dtype != np.uint64:  # uint64 is non-negative and < 2^64; anything else via int64
        a = int_codes("isqrt", "v", a)
        if a.size and a.min() < 0:
            raise ValueError(f"isqrt: negative input {int(a.min())}")
    return np.array([math.isqrt(int(t)) for t in a.ravel()], dtype=np.int64).reshape(a.shape)


@dataclass(frozen=True)
class LayerNormParams:
    """Integer LayerNorm parameters (§6): G (per element), B (per element), shift S, eps E."""

    G: np.ndarray
    B: np.ndarray
    S: int
    E: int


def layernorm_params(gamma, beta, eps: float, in_scale: float, out_scale: float,
                     S: int | None = None) -> LayerNormParams:
    """§6: G_i = rne(gamma_i/s_y * 2^(S-Z)), B_i = rne(beta_i/s_y * 2^S), E = rne(eps/s_x^2 * 2^2F)."""
    op = "layernorm_params"
    gamma = np.asarray(gamma, dtype=np.float64)
    beta = np.asarray(beta, dtype=np.float64)
    if gamma.ndim != 1 or beta.shape != gamma.shape:
        raise ValueError(f"{op}: gamma {gamma.shape} and beta {beta.shape} must be equal 1-D shapes")
    if not (np.all(np.isfinite(gamma)) and np.all(np.isfinite(beta))):
        raise ValueError(f"{op}: gamma/beta must be finite")
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"{op}: eps={eps!r} must be finite and >= 0")
    s_x = float(check_scale(op, in_scale, np.float64))
    s_y = float(check_scale(op, out_scale, np.float64))

    def make(shift: int):  # floats, so that the range check sees values beyond int64
        return np.rint(np.ldexp(gamma / s_y, shift - LN_Z)), np.rint(np.ldexp(beta / s_y, shift))

    def fits(shift: int) -> bool:
        G, B = make(shift)
        return bool(np.all(np.abs(G) <= 2**15 - 1) and np.all(np.abs(B) <= 2**31 - 1))

    if S is None:
        if not fits(LN_Z):
            raise ValueError(f"{op}: gamma/s_y up to {np.abs(gamma / s_y).max():.4g} or beta/s_y up to "
                             f"{np.abs(beta / s_y).max():.4g} do not fit 16/32-bit fixed point")
        S = LN_Z
        while S < MAX_SHIFT and fits(S + 1):
            S += 1
    else:
        check_bits(op, "S", S, 1, MAX_SHIFT)
        if not fits(S):
            raise ValueError(f"{op}: gamma/beta do not fit 16/32-bit fixed point at S={S}")
    G, B = make(S)
    E = int(min(_LN_E_MAX, np.rint(np.ldexp(eps / (s_x * s_x), 2 * LN_F))))
    return LayerNormParams(G=G.astype(np.int64), B=B.astype(np.int64), S=int(S), E=E)


def layernorm(x, params: LayerNormParams, out_type: IntType = IntType(8, True)) -> np.ndarray:
    """§6: integer LayerNorm over the last axis of int16 codes."""
    op = "layernorm"
    out_type = as_type(op, out_type)
    check_bits(op, "output bits", out_type.bits, 2, 8)
    x = int_codes(op, "x", x)
    if x.ndim < 1:
        raise ValueError(f"{op}: input must have at least one axis")
    H = x.shape[-1]
    if not 1 <= H <= 4096:
        raise ValueError(f"{op}: row length H={H} not supported (1..4096)")
    check_codes(op, "x", x, IntType(16, True))
    G = int_codes(op, "G", params.G)
    B = int_codes(op, "B", params.B)
    if G.shape != (H,) or B.shape != (H,):
        raise ValueError(f"{op}: G {G.shape} / B {B.shape} must have shape ({H},)")
    if np.abs(G).max() > 2**15 - 1 or np.abs(B).max() > 2**31 - 1:
        raise ValueError(f"{op}: G must fit int16 and B int32")
    S, E = int(params.S), int(params.E)
    check_bits(op, "S", S, 1, MAX_SHIFT)
    if not 0 <= E <= _LN_E_MAX:
        raise ValueError(f"{op}: E={E} outside 0..2^40-1")
    s = x.sum(axis=-1, keepdims=True)
    mu = (2 * s + H) // (2 * H)
    d = x - mu
    SS = (d * d).sum(axis=-1, keepdims=True)
    v = (SS << (2 * LN_F)) // H + E
    sigma = np.maximum(isqrt(v), 1)
    z = ((d << (LN_Z + LN_F + 1)) + sigma) // (2 * sigma)
    return sat(rshr(z * G + B, S), out_type.lo, out_type.hi)


# ---------------------------------------------------------------------------
# §7 residual add
# ---------------------------------------------------------------------------

def add_params(s_a: float, s_b: float, s_y: float, m: int = 16) -> tuple[int, int, int]:
    """§7: (M_a, M_b, sh) sharing one shift, from the larger ratio's dyadic form."""
    op = "add_params"
    r_a = float(check_scale(op, s_a, np.float64)) / float(check_scale(op, s_y, np.float64))
    r_b = float(s_b) / float(s_y)
    if not (r_b > 0 and math.isfinite(r_b)):
        raise ValueError(f"{op}: scale s_b={s_b!r} must be finite and > 0")
    M, sh = dyadic(max(r_a, r_b), m)
    M, sh = int(M), int(sh)
    if sh < 1:
        raise ValueError(f"{op}: scale ratio {max(r_a, r_b)!r} too large for a {m}-bit multiplier with shift >= 1")
    small = int(np.rint(math.ldexp(min(r_a, r_b), sh)))
    return (M, small, sh) if r_a >= r_b else (small, M, sh)


def add(a, b, Ma: int, Mb: int, sh: int, a_type: IntType = IntType(8, True),
        b_type: IntType = IntType(8, True), out_type: IntType = IntType(8, True)) -> np.ndarray:
    """§7: sat_Y(rshr(a*Ma + b*Mb, sh))."""
    op = "add"
    a_type, b_type, out_type = (as_type(op, t) for t in (a_type, b_type, out_type))
    for what, t in (("a", a_type), ("b", b_type), ("output", out_type)):
        check_bits(op, f"{what} bits", t.bits, 2, 16)
    a, b = int_codes(op, "a", a), int_codes(op, "b", b)
    check_broadcast(op, a.shape, b.shape, message=f"shapes {a.shape} and {b.shape} do not broadcast")
    check_codes(op, "a", a, a_type)
    check_codes(op, "b", b, b_type)
    for what, M in (("Ma", Ma), ("Mb", Mb)):
        if not 0 <= int(M) < 1 << 24:
            raise ValueError(f"{op}: {what}={M} outside 0..2^24-1")
    check_bits(op, "shift", int(sh), 1, MAX_SHIFT)
    return sat(rshr(a * int(Ma) + b * int(Mb), int(sh)), out_type.lo, out_type.hi)


# ---------------------------------------------------------------------------
# §8 binary dot product and thresholds
# ---------------------------------------------------------------------------

def pack_bipolar(v) -> np.ndarray:
    """Pack bipolar values along the last axis into uint8 bit words (bit = (v+1)/2, little bit order)."""
    v = int_codes("pack_bipolar", "v", v)
    check_codes("pack_bipolar", "v", v, IntType(1, True))
    return np.packbits((v > 0).astype(np.uint8), axis=-1, bitorder="little")


def xnor_popcount(a_bits, w_bits, K: int) -> np.ndarray:
    """§8: dot = 2*popcount(XNOR(a, w) & mask_K) - K on packed bipolar vectors.

    ``a_bits``: (..., ceil(K/8)) uint8, ``w_bits``: (N, ceil(K/8)) uint8 (one row per output).
    Returns (..., N) int64. Implemented with bitwise ops and np.bitwise_count — an
    independent path from matmul on +-1 values, which the tests compare against.
    """
    op = "xnor_popcount"
    a_bits = packed_bytes(op, "a_bits", a_bits)  # 0..255: no silent uint8 wrap
    w_bits = packed_bytes(op, "w_bits", w_bits)
    a_bits, w_bits = a_bits.astype(np.uint8), w_bits.astype(np.uint8)
    nb = (K + 7) // 8
    if K < 1 or a_bits.shape[-1] != nb or w_bits.ndim != 2 or w_bits.shape[-1] != nb:
        raise ValueError(f"{op}: K={K} needs packed rows of {nb} bytes, got a {a_bits.shape}, w {w_bits.shape}")
    mask = np.full(nb, 0xFF, dtype=np.uint8)
    if K % 8:
        mask[-1] = (1 << (K % 8)) - 1
    x = np.bitwise_not(np.bitwise_xor(a_bits[..., None, :], w_bits)) & mask
    agree = np.bitwise_count(x).sum(axis=-1, dtype=np.int64)
    return 2 * agree - K


def threshold(acc, T, out_bias: int = 0, bipolar: bool = False) -> np.ndarray:
    """§8: y = sum_t [acc >= T[c, t]] + out_bias, channels on the last axis of acc; bipolar: 2y - 1.

    ``T`` has shape (C, n) or (1, n) (shared), ascending along n.
    """
    op = "threshold"
    acc = int_codes(op, "acc", acc)
    T = int_codes(op, "thresholds", T)
    if T.ndim != 2 or T.shape[1] < 1:
        raise ValueError(f"{op}: thresholds must have shape (C, n>=1), got {T.shape}")
    if acc.ndim < 1 or T.shape[0] not in (1, acc.shape[-1]):
        raise ValueError(f"{op}: {T.shape[0]} threshold rows for {acc.shape[-1] if acc.ndim else 0} channels")
    if np.any(np.diff(T, axis=1) < 0):
        raise ValueError(f"{op}: thresholds must be ascending per channel")
    if bipolar and T.shape[1] != 1:
        raise ValueError(f"{op}: a bipolar output takes exactly one threshold per channel, got {T.shape[1]}")
    y = (acc[..., None] >= T).sum(axis=-1, dtype=np.int64)
    return 2 * y - 1 if bipolar else y + int(out_bias)


def bn_thresholds(gamma, beta, mean, var, eps: float, acc_scale, levels) -> np.ndarray:
    """§8: thresholds T[c, t] = ceil((mu + (u_t - beta) * sqrt(var + eps) / gamma) / s_acc), gamma > 0.

    ``levels``: the real boundaries u_t of the output quantizer (ascending), e.g. [0.0] for sign.
    Channels with gamma <= 0 must be fixed by the compiler first (negate the channel's weights).
    """
    op = "bn_thresholds"
    g, b, mu, v = (np.asarray(p, dtype=np.float64) for p in (gamma, beta, mean, var))
    u = np.asarray(levels, dtype=np.float64)
    s = np.asarray(acc_scale, dtype=np.float64)
    if g.ndim != 1 or any(p.shape != g.shape for p in (b, mu, v)) or s.shape not in ((), g.shape):
        raise ValueError(f"{op}: gamma {g.shape}, beta {b.shape}, mean {mu.shape}, var {v.shape} must be equal "
                         f"1-D shapes and acc_scale {s.shape} scalar or the same")
    if u.ndim != 1 or u.size < 1 or np.any(np.diff(u) < 0):
        raise ValueError(f"{op}: levels must be a non-empty ascending 1-D sequence, got {u.tolist()}")
    if not all(np.all(np.isfinite(p)) for p in (g, b, mu, v, u, s, np.float64(eps))):
        raise ValueError(f"{op}: parameters must be finite")
    if np.any(g <= 0):
        raise ValueError(f"{op}: gamma must be > 0 (negate the weights of channels {np.nonzero(g <= 0)[0][:8].tolist()})")
    if not eps >= 0 or np.any(v < 0) or np.any(v + eps <= 0):
        raise ValueError(f"{op}: need var >= 0, eps >= 0 and var + eps > 0 (eps={eps!r})")
    if np.any(s <= 0):
        raise ValueError(f"{op}: acc_scale must be > 0")
    real = mu[:, None] + (u[None, :] - b[:, None]) * (np.sqrt(v + eps) / g)[:, None]
    T = np.ceil(real / (s[:, None] if s.ndim else s))
    if not np.all(np.abs(T) < 2.0**62):
        raise ValueError(f"{op}: thresholds beyond int64 (|T| >= 2^62): gamma too small for the scale")
    return T.astype(np.int64)


# ---------------------------------------------------------------------------
# §9 pooling
# ---------------------------------------------------------------------------

def _windows(x: np.ndarray, k: tuple[int, int], stride: tuple[int, int], pad: tuple[int, int], fill: int,
             op: str = "pool"):
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be NCHW, got shape {x.shape}")
    kh, kw = k
    sh, sw = stride
    ph, pw = pad
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or not (0 <= ph < kh and 0 <= pw < kw):
        raise ValueError(f"{op}: kernel {k}, stride {stride}, pad {pad} not supported (pad < kernel)")
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    H, W = xp.shape[2], xp.shape[3]
    if H < kh or W < kw:
        raise ValueError(f"{op}: window {k} larger than padded input {(H, W)}")
    oh, ow = (H - kh) // sh + 1, (W - kw) // sw + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))
    return win[:, :, : (oh - 1) * sh + 1 : sh, : (ow - 1) * sw + 1 : sw]


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if np.isscalar(v) else (int(v[0]), int(v[1]))


def maxpool2d(x, kernel, stride=None, pad=0, in_type: IntType = IntType(8, True)) -> np.ndarray:
    """§9: max over each window; padding holds lo_X."""
    in_type = as_type("maxpool2d", in_type)
    check_bits("maxpool2d", "input bits", in_type.bits, 1, 8)  # §0/§9: activations of 1..8 bits
    x = int_codes("maxpool2d", "x", x)
    check_codes("maxpool2d", "x", x, in_type)
    k = _pair(kernel)
    win = _windows(x, k, _pair(stride if stride is not None else kernel), _pair(pad), in_type.lo, "maxpool2d")
    return win.max(axis=(-2, -1))


def avgpool2d(x, kernel, M, sh, stride=None, pad=0, in_type: IntType = IntType(8, True),
              out_type: IntType | None = None) -> np.ndarray:
    """§9: window sum (padding 0, divisor kh*kw) then requant with M/2^sh ~ s_x/(kh*kw*s_y)."""
    in_type = as_type("avgpool2d", in_type)
    out_type = as_type("avgpool2d", out_type) if out_type is not None else in_type
    check_bits("avgpool2d", "input bits", in_type.bits, 1, 8)  # §9: |sum| < kh*kw*2^8
    x = int_codes("avgpool2d", "x", x)
    check_codes("avgpool2d", "x", x, in_type)
    if np.ndim(M) or np.ndim(sh):
        raise ValueError(f"avgpool2d: one (M, sh) per tensor (§9), got shapes {np.shape(M)} and {np.shape(sh)}")
    k = _pair(kernel)
    win = _windows(x, k, _pair(stride if stride is not None else kernel), _pair(pad), 0, "avgpool2d")
    try:
        return requant(win.sum(axis=(-2, -1)), M, sh, out_type)
    except ValueError as e:  # name this op first (§0)
        raise ValueError(f"avgpool2d: {e}") from None


# ---------------------------------------------------------------------------
# §11 convolution
# ---------------------------------------------------------------------------

def _conv_pair(op: str, what: str, v, lo: int) -> tuple[int, int]:
    vals = (v, v) if np.isscalar(v) else tuple(v)
    if len(vals) != 2 or not all(isinstance(e, (int, np.integer)) and not isinstance(e, (bool, np.bool_))
                                 for e in vals) or min(vals) < lo:
        raise ValueError(f"{op}: {what}={v!r} must be an integer >= {lo} or a pair of them")
    return int(vals[0]), int(vals[1])


def conv_pads(op: str, pad) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) from an int, a symmetric pair (ph, pw) or ONNX's
    4-tuple (top, left, bottom, right); all >= 0."""
    vals = (pad, pad) if np.isscalar(pad) else tuple(pad)
    if len(vals) == 2:
        ph, pw = _conv_pair(op, "pad", tuple(vals), 0)
        return ph, pw, ph, pw
    if len(vals) != 4 or not all(isinstance(e, (int, np.integer)) and not isinstance(e, (bool, np.bool_))
                                 and e >= 0 for e in vals):
        raise ValueError(f"{op}: pad={pad!r} must be an integer >= 0, a pair (ph, pw) or ONNX "
                         "(top, left, bottom, right)")
    return tuple(int(e) for e in vals)  # type: ignore[return-value]


def conv_geometry(H: int, W: int, kernel, stride=1, pad=0, dilation=1, op: str = "conv2d") -> tuple[int, int]:
    """§11 output size (OH, OW): floor((H + pt + pb - dh*(kh-1) - 1) / sh) + 1 (ONNX/torch)."""
    kh, kw = _conv_pair(op, "kernel", kernel, 1)
    sh, sw = _conv_pair(op, "stride", stride, 1)
    dh, dw = _conv_pair(op, "dilation", dilation, 1)
    pt, pl, pb, pr = conv_pads(op, pad)
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    if H + pt + pb < eh or W + pl + pr < ew:
        raise ValueError(f"{op}: dilated kernel {(eh, ew)} larger than the padded input {(H + pt + pb, W + pl + pr)}")
    return (H + pt + pb - eh) // sh + 1, (W + pl + pr - ew) // sw + 1


def conv2d(x, w, bias=None, stride=1, pad=0, dilation=1, groups: int = 1,
           x_type: IntType = IntType(8, False), w_type: IntType = IntType(4, True)) -> np.ndarray:
    """§11: 2-D convolution of NCHW integer codes, exact int64 accumulators (N, OC, OH, OW).

    ``acc[n, o, i, j] = bias[o] + sum_{c, u, v} x[n, g*ICg + c, i*sh - pt + u*dh, j*sw - pl + v*dw]
    * w[o, c, u, v]`` over the positions inside the input (padding contributes 0, also for
    bipolar inputs: the sum runs over the real elements only), ``g = o // (OC/groups)``.
    ``w``: (OC, IC/groups, KH, KW) codes of ``w_type`` (signed or bipolar, 1..8 bits);
    ``x``: codes of ``x_type`` (1..8 bits; 1-bit is bipolar); ``bias``: int32 (OC,) or None.
    ``pad``: int, (ph, pw) or ONNX (top, left, bottom, right). The accumulator width of §2
    with ``K = IC/groups * KH * KW`` must be at most 48 bits.

    Evaluated as direct window sums in int64: for every kernel tap (u, v) a strided slice of
    the zero-padded input times the tap's weights, summed over the group's input channels.
    Every partial sum lies in §2's interval (< 2^47 in magnitude), so int64 is exact.
    """
    op = "conv2d"
    x_type, w_type = as_type(op, x_type), as_type(op, w_type)
    _check_mm_type(op, "activation", x_type, True)
    _check_mm_type(op, "weight", w_type, False)
    x = int_codes(op, "x", x)
    w = int_codes(op, "w", w)
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"{op}: need x (N, C, H, W) and w (OC, C/groups, KH, KW), got {x.shape} and {w.shape}")
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"{op}: groups={groups!r} must be an integer >= 1")
    groups = int(groups)
    N, C, H, W = x.shape
    OC, ICg, KH, KW = w.shape
    if C < 1 or H < 1 or W < 1 or OC < 1 or KH < 1 or KW < 1:
        raise ValueError(f"{op}: empty axis in x {x.shape} or w {w.shape}")
    if C % groups or OC % groups or ICg != C // groups:
        raise ValueError(f"{op}: groups={groups} needs C={C} and OC={OC} divisible by it and w of shape "
                         f"(OC, C/groups={C // groups if C % groups == 0 else '?'}, KH, KW), got {w.shape}")
    sh, sw = _conv_pair(op, "stride", stride, 1)
    dh, dw = _conv_pair(op, "dilation", dilation, 1)
    pt, pl, pb, pr = conv_pads(op, pad)
    OH, OW = conv_geometry(H, W, (KH, KW), (sh, sw), (pt, pl, pb, pr), (dh, dw), op)
    check_codes(op, "x", x, x_type)
    check_codes(op, "w", w, w_type)
    K = ICg * KH * KW
    blo, bhi = 0, 0
    if bias is not None:
        b = int_codes(op, "bias", bias)
        if b.shape != (OC,):
            raise ValueError(f"{op}: bias shape {b.shape} is not ({OC},)")
        if b.size and (b.min() < -(2**31) or b.max() > 2**31 - 1):
            raise ValueError(f"{op}: bias outside int32: [{int(b.min())}, {int(b.max())}]")
        blo, bhi = -(2**31), 2**31 - 1
    wacc = acc_bits(K, x_type, w_type, blo, bhi)
    if wacc > 48:
        raise ValueError(f"{op}: K={K} needs a {wacc}-bit accumulator, more than 48 bits (§2, §11)")
    xp = np.zeros((N, C, H + pt + pb, W + pl + pr), dtype=np.int64)  # padding contributes 0
    xp[:, :, pt:pt + H, pl:pl + W] = x
    OCg = OC // groups
    acc = np.zeros((N, OC, OH, OW), dtype=np.int64)
    for g in range(groups):
        xg = xp[:, g * ICg:(g + 1) * ICg]
        wg = w[g * OCg:(g + 1) * OCg]
        for u in range(KH):
            for v in range(KW):
                r0, c0 = u * dh, v * dw
                tap = xg[:, :, r0:r0 + (OH - 1) * sh + 1:sh, c0:c0 + (OW - 1) * sw + 1:sw]  # (N, ICg, OH, OW)
                acc[:, g * OCg:(g + 1) * OCg] += np.einsum("nchw,oc->nohw", tap, wg[:, :, u, v])
    if bias is not None:
        acc += b.reshape(1, OC, 1, 1)
    return acc
