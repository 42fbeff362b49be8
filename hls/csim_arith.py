"""C-simulation face of the contract's basic ops (docs/arithmetic.md §1-§4, §7).

Each function here has the name and the signature of its numpy reference in
:mod:`codesign.sim.reference` (a few keyword-only extras: folding, the code type
of ``dequantize``'s input, the output type of ``lut``) and computes the op by
generating a small C++ harness around the real HLS header
(``hls/include/codesign/{quant,matmul,requant,lut,add}.h``), compiling it with
:func:`codesign.hls.csim.run` (cached by source hash) and running it.

Shapes are static template parameters in HLS, so every distinct configuration
(types, the per-row length, folding) is one compile. The harness source depends
on the configuration only, never on the data: equal configurations hash equal.
Elementwise ops with per-tensor parameters stream the flattened data through the
row kernel in rows of :data:`CHUNK` elements (the last row padded with a valid
word), so their compiled configuration does not depend on the shape at all;
per-channel ops use the last axis as the row. ``matmul`` processes
``block_rows`` rows per kernel call, padding the last block.

Each op also has an ``*_ex`` variant returning ``(result, info)``; ``info["trips"]``
is the number of pipelined (II = 1) loop iterations the kernels ran
(``CODESIGN_TRIP`` in types.h), which the tests compare with the cycle formulas
documented in the headers.

Every int64 that enters an ``ap_int``/``ap_uint`` in a harness goes through
``csim::fit_check`` (and codes through their type's range check) first, so a
wrapped value can never hide a bug. Arguments are also validated here (with the
helpers of :mod:`codesign.sim.checks`), and unsupported ones raise ``ValueError``
naming the op, as the reference does.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from codesign.hls import csim
from codesign.sim.checks import as_type, check_bits, check_broadcast, check_codes, check_scale, int_codes
from codesign.sim.reference import IntType

__all__ = [
    "CHUNK",
    "ROUNDING_MODES",
    "quantize",
    "quantize_ex",
    "dequantize",
    "dequantize_ex",
    "matmul",
    "matmul_ex",
    "requant",
    "requant_ex",
    "lut",
    "lut_ex",
    "add",
    "add_ex",
    "cpp_type",
]

CHUNK = 8
"""Row length of the elementwise harnesses with per-tensor parameters."""

ROUNDING_MODES = ("ROUND", "HALF_EVEN", "FLOOR", "CEIL", "DOWN", "UP", "HALF_UP", "HALF_DOWN")

MAX_SHIFT = 62

# Included by every harness after the kernel header.
_PRELUDE = r"""
#include <string>
#include <vector>
#include "csim_io.h"

namespace {

// int64 -> hardware word of code type T. The value must be a code of T (its
// range; bipolar: -1/+1) and fit_check guards the assignment into the word.
template <class T>
typename T::storage load_code(long long v, const char* what) {
    if (T::bipolar) {
        if (v != 1 && v != -1) csim::fail(std::string(what) + ": bipolar code " + std::to_string(v) + " is not -1/+1");
        return typename T::storage(v > 0 ? 1 : 0);
    }
    if (v < T::LO || v > T::HI)
        csim::fail(std::string(what) + ": code " + std::to_string(v) + " outside [" + std::to_string(T::LO) + ", " +
                   std::to_string(T::HI) + "]");
    return typename T::storage(csim::fit_check<T::bits, T::is_signed>(v, what));
}

template <class T>
long long code_value(const typename T::storage& s) {
    return T::value(s).to_int64();
}

ap_uint<6> load_shift(long long v, const char* what) {
    csim::fit_check<6, false>(v, what);
    if (v > 62) csim::fail(std::string(what) + ": shift " + std::to_string(v) + " > 62");
    return ap_uint<6>(v);
}

}  // namespace
"""


def _sub(template: str, **values: Any) -> str:
    out = template.replace("@PRELUDE@", _PRELUDE)
    for key, value in values.items():
        out = out.replace(f"@{key}@", str(value))
    if "@" in out:
        raise AssertionError(f"unsubstituted placeholder in harness: {out[out.index('@'):][:40]}")
    return out


def cpp_type(t: IntType | tuple) -> str:
    """The HLS code type of an IntType: ``codesign::IntT<BITS, SIGNED, NARROW>``."""
    t = as_type("cpp_type", t)
    narrow = False if t.bipolar else bool(t.narrow)
    return f"codesign::IntT<{int(t.bits)}, {'true' if t.signed else 'false'}, {'true' if narrow else 'false'}>"


def _chunked(flat: np.ndarray, pad: Any) -> np.ndarray:
    """Reshape a 1-D array to rows of CHUNK, padding the last row with ``pad``."""
    n = flat.size
    rows = max(1, -(-n // CHUNK))
    out = np.full(rows * CHUNK, pad, dtype=flat.dtype)
    out[:n] = flat
    return out.reshape(rows, CHUNK)


def _per_channel_rows(p: np.ndarray, full: tuple[int, ...], C: int) -> np.ndarray:
    """Per-channel parameters as rows of C: one row if ``p`` varies along the last
    axis only, else ``p`` broadcast to the full shape (one row per data row)."""
    if p.ndim >= 1 and all(d == 1 for d in p.shape[:-1]) and p.shape[-1] == C:
        return p.reshape(1, C)
    return np.broadcast_to(p, full).reshape(-1, C)


def _scaled_rows(data: np.ndarray, s: np.ndarray, full: tuple[int, ...], pad: Any
                 ) -> tuple[int, int, np.ndarray, np.ndarray]:
    """``data`` broadcast to ``full`` as kernel rows, with its scales ``s``: a per-tensor
    scale streams rows of CHUNK (the last padded with ``pad``), per-channel scales use the
    last axis as the row. Returns (PER_TENSOR, C, data rows, scale rows)."""
    db = np.broadcast_to(data, full)
    if s.size == 1:
        return 1, CHUNK, _chunked(db.ravel(), pad), s.reshape(1)
    C = full[-1]
    return 0, C, db.reshape(-1, C), _per_channel_rows(s, full, C)


# ---------------------------------------------------------------------------
# §1 quantize / dequantize
# ---------------------------------------------------------------------------

_QUANT_SRC = r"""
#include "codesign/quant.h"
@PRELUDE@
typedef @T@ T;
static const codesign::Rounding R = codesign::Rounding::@R@;
static const int C = @C@;

int main() {
    csim::In in;
    csim::Out out;
    const std::vector<float>& x = in.f32("x");
    const std::vector<float>& s = in.f32("s");
    const std::size_t rows = x.size() / C;
    const std::size_t srows = s.size() / C;
    if (x.size() % C != 0 || (@PER_TENSOR@ ? s.size() != 1 : (srows == 0 || s.size() % C != 0)))
        csim::fail("quantize harness: bad input sizes");
    std::vector<long long> q(x.size());
    float xr[C], sr[C];
    T::storage qr[C];
    for (std::size_t r = 0; r < rows; ++r) {
        for (int c = 0; c < C; ++c) xr[c] = x[r * C + c];
#if @PER_TENSOR@
        (void)sr;
        codesign::quantize_row<T, R, C>(xr, s[0], qr);
#else
        for (int c = 0; c < C; ++c) sr[c] = s[(r % srows) * C + c];
        codesign::quantize_row<T, R, C>(xr, sr, qr);
#endif
        for (int c = 0; c < C; ++c) q[r * C + c] = code_value<T>(qr[c]);
    }
    out.put_i64("q", in.shape("x"), q);
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    return 0;
}
"""


def quantize(x, scale, bits: int, signed: bool = True, narrow: bool = False,
             rounding: str = "ROUND", zero_point=0) -> np.ndarray:
    """§1 through ``codesign::quantize_row`` (quant.h); same contract as the reference."""
    return quantize_ex(x, scale, bits, signed, narrow, rounding, zero_point)[0]


def quantize_ex(x, scale, bits: int, signed: bool = True, narrow: bool = False,
                rounding: str = "ROUND", zero_point=0) -> tuple[np.ndarray, dict[str, int]]:
    """:func:`quantize`, also returning ``{"trips": pipelined iterations}`` (rows x C)."""
    op = "quantize"
    check_bits(op, "bits", bits, 1, 16)
    if np.any(np.asarray(zero_point) != 0):
        raise ValueError(f"{op}: zero_point must be 0 (symmetric quantization), got {zero_point!r}")
    mode = str(rounding).upper()
    if mode not in ROUNDING_MODES:
        raise ValueError(f"{op}: rounding mode {rounding!r} not supported ({', '.join(ROUNDING_MODES)})")
    x = np.asarray(x, dtype=np.float32)
    s = check_scale(op, scale)
    full = check_broadcast(op, x.shape, s.shape)
    if x.size and not np.all(np.isfinite(x)):
        raise ValueError(f"{op}: input contains NaN or infinity")
    n = math.prod(full)
    if n == 0:
        return np.zeros(full, dtype=np.int64), {"trips": 0}
    t = IntType(int(bits), bool(signed), bool(narrow))
    if t.bipolar:
        mode = "ROUND"  # no rounding for bipolar codes: one configuration
    per_tensor, C, xr, sr = _scaled_rows(x, s, full, np.float32(0))
    src = _sub(_QUANT_SRC, T=cpp_type(t), R=mode, C=C, PER_TENSOR=per_tensor)
    res = csim.run(src, {"x": np.ascontiguousarray(xr), "s": np.ascontiguousarray(sr)}, name=op)
    return res["q"].ravel()[:n].reshape(full), {"trips": int(res["trips"])}


_DEQUANT_SRC = r"""
#include "codesign/quant.h"
@PRELUDE@
typedef @T@ T;
static const int C = @C@;

int main() {
    csim::In in;
    csim::Out out;
    const std::vector<long long>& q = in.i64("q");
    const std::vector<float>& s = in.f32("s");
    const std::size_t rows = q.size() / C;
    const std::size_t srows = s.size() / C;
    if (q.size() % C != 0 || (@PER_TENSOR@ ? s.size() != 1 : (srows == 0 || s.size() % C != 0)))
        csim::fail("dequantize harness: bad input sizes");
    std::vector<float> y(q.size());
    T::storage qr[C];
    float sr[C], yr[C];
    for (std::size_t r = 0; r < rows; ++r) {
        for (int c = 0; c < C; ++c) qr[c] = load_code<T>(q[r * C + c], "q");
#if @PER_TENSOR@
        (void)sr;
        codesign::dequantize_row<T, C>(qr, s[0], yr);
#else
        for (int c = 0; c < C; ++c) sr[c] = s[(r % srows) * C + c];
        codesign::dequantize_row<T, C>(qr, sr, yr);
#endif
        for (int c = 0; c < C; ++c) y[r * C + c] = yr[c];
    }
    out.put_f32("y", in.shape("q"), y);
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    return 0;
}
"""


def dequantize(q, scale, *, q_type: IntType | tuple | None = None) -> np.ndarray:
    """§1 through ``codesign::dequantize_row`` (quant.h): fl32(q * s); see :func:`dequantize_ex`."""
    return dequantize_ex(q, scale, q_type=q_type)[0]


def dequantize_ex(q, scale, *, q_type: IntType | tuple | None = None) -> tuple[np.ndarray, dict[str, int]]:
    """§1 through ``codesign::dequantize_row`` (quant.h): fl32(q * s).

    ``q_type``: the code type of ``q`` (a template parameter in HLS). The
    reference takes any integer codes; by default the smallest of int8, int16,
    int24 that holds ``q`` is used (codes beyond 24 bits do not convert to
    binary32 exactly and are not supported by the kernel).
    """
    op = "dequantize"
    q = int_codes(op, "q", q)
    s = check_scale(op, scale)
    full = check_broadcast(op, q.shape, s.shape)
    n = math.prod(full)
    if n == 0:
        return np.zeros(full, dtype=np.float32), {"trips": 0}
    if q_type is None:
        lo, hi = int(q.min()), int(q.max())
        for b in (8, 16, 24):
            if -(1 << (b - 1)) <= lo and hi < 1 << (b - 1):
                t = IntType(b, True)
                break
        else:
            raise ValueError(f"{op}: codes [{lo}, {hi}] need more than 24 bits (not exact in binary32)")
    else:
        t = as_type(op, q_type)
        check_bits(op, "code bits", t.bits, 1, 24)
        check_codes(op, "q", q, t)
    per_tensor, C, qr, sr = _scaled_rows(q, s, full, -1 if t.bipolar else 0)
    src = _sub(_DEQUANT_SRC, T=cpp_type(t), C=C, PER_TENSOR=per_tensor)
    res = csim.run(src, {"q": np.ascontiguousarray(qr), "s": np.ascontiguousarray(sr)}, name=op)
    return res["y"].ravel()[:n].reshape(full), {"trips": int(res["trips"])}


# ---------------------------------------------------------------------------
# §2 matmul
# ---------------------------------------------------------------------------

_MATMUL_SRC = r"""
#include "codesign/matmul.h"
@PRELUDE@
typedef @A@ A;
typedef @W@ W;
static const int K = @K@, N = @N@, ROWS = @ROWS@;
typedef codesign::Mvau<A, W, K, N, @PE@, @SIMD@, @HAS_BIAS@, @B_LO@LL, @B_HI@LL, @ACC@> U;

static U::a_t a_blk[ROWS][K];
static U::w_t w_mat[K][N];
static U::bias_t bias[N];
static U::acc_t o_blk[ROWS][N];

int main() {
    csim::In in;
    csim::Out out;
    const std::vector<std::size_t>& sa = in.shape("a");
    const std::vector<std::size_t>& sw = in.shape("w");
    if (sa.size() != 3 || sw.size() != 3 || sa[2] != (std::size_t)K || sw[1] != (std::size_t)K ||
        sw[2] != (std::size_t)N || sw[0] != sa[0])
        csim::fail("matmul harness: expected a (B, M, K) and w (B, K, N)");
    const std::size_t B = sa[0], M = sa[1];
    const std::vector<long long>& a = in.i64("a");
    const std::vector<long long>& w = in.i64("w");
#if @HAS_BIAS@
    const std::vector<long long>& b = in.i64("bias");
    if (b.size() != (std::size_t)N) csim::fail("matmul harness: bias must have N elements");
    for (int n = 0; n < N; ++n) {
        if (b[n] < @B_LO@LL || b[n] > @B_HI@LL) csim::fail("matmul harness: bias outside the declared range");
        bias[n] = U::bias_t(csim::fit_check<32, true>(b[n], "bias"));
    }
#endif
    std::vector<long long> o(B * M * N);
    for (std::size_t bb = 0; bb < B; ++bb) {
        for (int k = 0; k < K; ++k)
            for (int n = 0; n < N; ++n) w_mat[k][n] = load_code<W>(w[(bb * K + k) * N + n], "w");
        for (std::size_t m0 = 0; m0 < M; m0 += ROWS) {
            for (int r = 0; r < ROWS; ++r)
                for (int k = 0; k < K; ++k)
                    a_blk[r][k] = m0 + r < M ? load_code<A>(a[(bb * M + m0 + r) * K + k], "a") : U::a_t(0);
#if @HAS_BIAS@
            U::run<ROWS>(a_blk, w_mat, bias, o_blk);
#else
            U::run<ROWS>(a_blk, w_mat, o_blk);
#endif
            for (int r = 0; r < ROWS && m0 + r < M; ++r)
                for (int n = 0; n < N; ++n) o[(bb * M + m0 + r) * N + n] = o_blk[r][n].to_int64();
        }
    }
    out.put_i64("acc", std::vector<std::size_t>{B, M, (std::size_t)N}, o);
    out.put_scalar_i64("acc_bits", U::acc_bits);
    out.put_scalar_i64("required_acc_bits", U::required_acc_bits);
    out.put_scalar_i64("iterations_per_row", U::cycles_per_row());
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    out.put_scalar_i64("xnor_words", (long long)codesign::csim_xnor_words());
    return 0;
}
"""

_INT32 = (-(2**31), 2**31 - 1)


def _acc_bits(K: int, a: IntType, w: IntType, b_lo: int, b_hi: int) -> int:
    c = [a.lo * w.lo, a.lo * w.hi, a.hi * w.lo, a.hi * w.hi]
    lo, hi = K * min(min(c), 0) + b_lo, K * max(max(c), 0) + b_hi
    m = max(hi, -lo - 1, 0)
    return 1 + m.bit_length()


def matmul_ex(a, w, bias=None, a_type: IntType = IntType(8, False), w_type: IntType = IntType(4, True),
              check: bool = True, *, pe: int = 1, simd: int = 1, block_rows: int = 2,
              acc_bits: int | None = None, bias_bounds: tuple[int, int] | None = None
              ) -> tuple[np.ndarray, dict[str, int]]:
    """:func:`matmul`, also returning facts of the compiled unit:
    ``acc_bits`` (the accumulator width used), ``required_acc_bits`` (AccBits),
    ``iterations_per_row`` ((N/PE)*(K/SIMD)), ``trips`` (pipelined iterations
    run: batches x row blocks x block_rows x iterations_per_row) and ``xnor_words``
    (XNOR-popcount lane words evaluated: trips x PE for bipolar x bipolar, else 0)."""
    op = "matmul"
    a_type, w_type = as_type(op, a_type), as_type(op, w_type)
    for what, t in (("activation", a_type), ("weight", w_type)):
        check_bits(op, f"{what} bits", t.bits, 1, 8)
        if t.bits == 1 and not t.signed:
            raise ValueError(f"{op}: 1-bit {what} must be bipolar (signed=True), unsigned 1-bit is not supported")
    if not w_type.signed:
        raise ValueError(f"{op}: weight must be signed or bipolar")
    a = int_codes(op, "a", a)
    w = int_codes(op, "w", w)
    if a.ndim < 1 or w.ndim < 2:
        raise ValueError(f"{op}: need a (..., K) and w (K, N), got shapes {a.shape} and {w.shape}")
    K, N = a.shape[-1], w.shape[-1]
    if w.shape[-2] != K:
        raise ValueError(f"{op}: inner dimensions differ: a {a.shape} (K={K}) vs w {w.shape} (K={w.shape[-2]})")
    if K < 1 or N < 1:
        raise ValueError(f"{op}: empty inner or output dimension (K={K}, N={N})")
    check_codes(op, "a", a, a_type)
    check_codes(op, "w", w, w_type)
    for what, v in (("pe", pe), ("simd", simd), ("block_rows", block_rows)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{op}: {what}={v!r} must be a positive integer")
    if N % pe or K % simd:
        raise ValueError(f"{op}: folding pe={pe}, simd={simd} must divide N={N}, K={K}")
    has_bias = bias is not None
    if has_bias:
        b = int_codes(op, "bias", bias)
        if b.shape not in ((), (N,)):
            raise ValueError(f"{op}: bias shape {b.shape} does not match N={N}")
        b = np.broadcast_to(b, (N,))
        if b.min() < _INT32[0] or b.max() > _INT32[1]:
            raise ValueError(f"{op}: bias outside int32: [{int(b.min())}, {int(b.max())}]")
        b_lo, b_hi = _INT32 if bias_bounds is None else (int(bias_bounds[0]), int(bias_bounds[1]))
        if not (_INT32[0] <= b_lo <= b_hi <= _INT32[1]) or b.min() < b_lo or b.max() > b_hi:
            raise ValueError(f"{op}: bias [{int(b.min())}, {int(b.max())}] outside bias_bounds {bias_bounds}")
    else:
        b_lo = b_hi = 0
    need = _acc_bits(K, a_type, w_type, b_lo, b_hi)
    if need > 48:
        raise ValueError(f"{op}: accumulator needs {need} > 48 bits (K={K})")
    if acc_bits is not None and not need <= acc_bits <= 48:
        raise ValueError(f"{op}: acc_bits={acc_bits} must be in [{need}, 48]")
    # batch: w 2-D -> one batch of all rows of a; else np.matmul broadcasting
    if w.ndim == 2:
        out_shape = a.shape[:-1] + (N,)
        a3 = a.reshape(1, -1, K)
        w3 = w.reshape(1, K, N)
    else:
        a2 = a if a.ndim >= 2 else a[None, :]
        batch = check_broadcast(op, a2.shape[:-2], w.shape[:-2])
        Mr = a2.shape[-2]
        a3 = np.broadcast_to(a2, batch + (Mr, K)).reshape(-1, Mr, K)
        w3 = np.broadcast_to(w, batch + (K, N)).reshape(-1, K, N)
        out_shape = batch + ((Mr, N) if a.ndim >= 2 else (N,))
    src = _sub(
        _MATMUL_SRC, A=cpp_type(a_type), W=cpp_type(w_type), K=K, N=N, ROWS=int(block_rows), PE=int(pe),
        SIMD=int(simd), HAS_BIAS=int(has_bias), B_LO=b_lo, B_HI=b_hi, ACC=int(acc_bits or 0),
    )
    if a3.size == 0:  # no rows: nothing to run
        return np.zeros(out_shape, dtype=np.int64), {"trips": 0}
    inputs = {"a": np.ascontiguousarray(a3), "w": np.ascontiguousarray(w3)}
    if has_bias:
        inputs["bias"] = np.ascontiguousarray(b)
    res = csim.run(src, inputs, name=op)
    info = {k: int(res[k]) for k in ("acc_bits", "required_acc_bits", "iterations_per_row", "trips", "xnor_words")}
    return res["acc"].reshape(out_shape), info


def matmul(a, w, bias=None, a_type: IntType = IntType(8, False), w_type: IntType = IntType(4, True),
           check: bool = True, *, pe: int = 1, simd: int = 1, block_rows: int = 2,
           acc_bits: int | None = None, bias_bounds: tuple[int, int] | None = None) -> np.ndarray:
    """§2 through ``codesign::Mvau<A, W, K, N, PE, SIMD, ...>::run<block_rows>`` (matmul.h).

    ``w`` is (K, N) or batched (..., K, N) as in the reference. Codes are always
    checked (``check`` is accepted for signature compatibility). ``pe``/``simd``:
    folding (must divide N/K). ``bias_bounds``: the bias range the accumulator is
    sized for (default: int32, an unknown bias). ``acc_bits``: a wider override.
    """
    return matmul_ex(a, w, bias, a_type, w_type, check, pe=pe, simd=simd, block_rows=block_rows,
                     acc_bits=acc_bits, bias_bounds=bias_bounds)[0]


# ---------------------------------------------------------------------------
# §3 requant
# ---------------------------------------------------------------------------

_REQUANT_SRC = r"""
#include "codesign/requant.h"
@PRELUDE@
typedef @Y@ Y;
static const int WACC = @WACC@, MB = @MBITS@, N = @N@, PE = @PE@;

int main() {
    csim::In in;
    csim::Out out;
    const std::vector<long long>& acc = in.i64("acc");
    const std::vector<long long>& M = in.i64("M");
    const std::vector<long long>& sh = in.i64("sh");
    const std::size_t rows = acc.size() / N, prow = M.size() / N;
    if (acc.size() % N != 0 || M.size() != sh.size() ||
        (@PER_TENSOR@ ? M.size() != 1 : (prow == 0 || M.size() % N != 0)))
        csim::fail("requant harness: bad input sizes");
    std::vector<long long> y(acc.size());
    ap_int<WACC> ar[N];
    ap_uint<MB> mr[N];
    ap_uint<6> sr[N];
    Y::storage yr[N];
#if @PER_TENSOR@
    const ap_uint<MB> m0 = ap_uint<MB>(csim::fit_check<MB, false>(M[0], "M"));
    const ap_uint<6> s0 = load_shift(sh[0], "sh");
    (void)mr;
    (void)sr;
#endif
    for (std::size_t r = 0; r < rows; ++r) {
        for (int n = 0; n < N; ++n) ar[n] = ap_int<WACC>(csim::fit_check<WACC, true>(acc[r * N + n], "acc"));
#if @PER_TENSOR@
        codesign::requant_row<WACC, Y, N, MB, PE>(ar, m0, s0, yr);
#else
        for (int n = 0; n < N; ++n) {
            mr[n] = ap_uint<MB>(csim::fit_check<MB, false>(M[(r % prow) * N + n], "M"));
            sr[n] = load_shift(sh[(r % prow) * N + n], "sh");
        }
        codesign::requant_row<WACC, Y, N, MB, PE>(ar, mr, sr, yr);
#endif
        for (int n = 0; n < N; ++n) y[r * N + n] = code_value<Y>(yr[n]);
    }
    out.put_i64("y", in.shape("acc"), y);
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    return 0;
}
"""


def requant(acc, M, sh, out_type: IntType = IntType(8, True), acc_bits_max: int | None = None,
            m: int = 16, *, pe: int = 1) -> np.ndarray:
    """§3 through ``codesign::requant_row`` (requant.h); see :func:`requant_ex`."""
    return requant_ex(acc, M, sh, out_type, acc_bits_max, m, pe=pe)[0]


def requant_ex(acc, M, sh, out_type: IntType = IntType(8, True), acc_bits_max: int | None = None,
               m: int = 16, *, pe: int = 1) -> tuple[np.ndarray, dict[str, int]]:
    """§3 through ``codesign::requant_row`` (requant.h): sat_Y(rshr(acc * M, sh)).

    Template parameters: the multiplier width MBITS = max(m, bit length of
    max M) and the accumulator width W_ACC = ``acc_bits_max`` if given, else
    62 - MBITS (the widest the contract allows), so the accepted inputs are the
    reference's. Per-tensor M/sh use the one-(M, sh) row kernel; per-channel
    (last axis) or other broadcasts the per-channel one. ``pe``: lanes per cycle.
    """
    op = "requant"
    out_type = as_type(op, out_type)
    check_bits(op, "output bits", out_type.bits, 2, 16)
    check_bits(op, "m", m, 1, 24)
    acc = int_codes(op, "acc", acc)
    M = int_codes(op, "M", M)
    sh = int_codes(op, "shift", sh)
    full = check_broadcast(op, acc.shape, M.shape, sh.shape)
    if M.size and (M.min() < 0 or M.max() >= 1 << 24):
        raise ValueError(f"{op}: multiplier outside 0..2^24-1: [{int(M.min())}, {int(M.max())}]")
    if sh.size and (sh.min() < 0 or sh.max() > MAX_SHIFT):
        raise ValueError(f"{op}: shift outside 0..{MAX_SHIFT}: [{int(sh.min())}, {int(sh.max())}]")
    n = math.prod(full)
    if n == 0:
        return np.zeros(full, dtype=np.int64), {"trips": 0}
    mbits = max(int(m), int(M.max()).bit_length())
    wacc = 62 - mbits if acc_bits_max is None else int(acc_bits_max)
    if not 1 <= wacc <= 62 - mbits:
        raise ValueError(f"{op}: accumulator of {wacc} bits x {mbits}-bit multiplier exceeds 62 bits")
    lo, hi = int(acc.min()), int(acc.max())
    if lo < -(1 << (wacc - 1)) or hi > (1 << (wacc - 1)) - 1:
        raise ValueError(f"{op}: accumulator values [{lo}, {hi}] exceed {wacc} bits "
                         f"({wacc} + {mbits}-bit multiplier must stay <= 62)")
    accb = np.broadcast_to(acc, full)
    if M.size == 1 and sh.size == 1:
        per_tensor, N = 1, CHUNK
        ar, mr, sr = _chunked(accb.ravel(), 0), M.reshape(1), sh.reshape(1)
    else:
        per_tensor, N = 0, full[-1]
        ar = accb.reshape(-1, N)
        if M.size == 1 and M.ndim <= 1:
            M = np.broadcast_to(M.reshape(()), (N,))
        if sh.size == 1 and sh.ndim <= 1:
            sh = np.broadcast_to(sh.reshape(()), (N,))
        mr, sr = _per_channel_rows(M, full, N), _per_channel_rows(sh, full, N)
        if mr.shape != sr.shape:  # different broadcasts: both per element
            mr = np.broadcast_to(M, full).reshape(-1, N)
            sr = np.broadcast_to(sh, full).reshape(-1, N)
    if not isinstance(pe, (int, np.integer)) or pe < 1 or N % pe:
        raise ValueError(f"{op}: pe={pe!r} must divide the row length {N}")
    src = _sub(_REQUANT_SRC, Y=cpp_type(out_type), WACC=wacc, MBITS=mbits, N=N, PE=int(pe), PER_TENSOR=per_tensor)
    inputs = {"acc": np.ascontiguousarray(ar), "M": np.ascontiguousarray(mr), "sh": np.ascontiguousarray(sr)}
    res = csim.run(src, inputs, name=op)
    return res["y"].ravel()[:n].reshape(full), {"trips": int(res["trips"]), "W_ACC": wacc, "MBITS": mbits}


# ---------------------------------------------------------------------------
# §4 lookup tables
# ---------------------------------------------------------------------------

_LUT_SRC = r"""
#include "codesign/lut.h"
@PRELUDE@
typedef @X@ X;
typedef @Y@ Y;
static const int N = @N@, TS = codesign::LutSize<X>::value;

int main() {
    csim::In in;
    csim::Out out;
    const std::vector<long long>& q = in.i64("q");
    const std::vector<long long>& t = in.i64("table");
    if (q.size() % N != 0 || t.size() != (std::size_t)TS) csim::fail("lut harness: bad input sizes");
    Y::storage table[TS];
    for (int i = 0; i < TS; ++i) table[i] = load_code<Y>(t[i], "table");
    std::vector<long long> y(q.size());
    X::storage qr[N];
    Y::storage yr[N];
    for (std::size_t r = 0; r < q.size() / N; ++r) {
        for (int i = 0; i < N; ++i) qr[i] = load_code<X>(q[r * N + i], "q");
        codesign::lut_row<X, Y, N>(qr, table, yr);
        for (int i = 0; i < N; ++i) y[r * N + i] = code_value<Y>(yr[i]);
    }
    out.put_i64("y", in.shape("q"), y);
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    return 0;
}
"""


def _fit_type(lo: int, hi: int) -> IntType | None:
    if -(1 << 15) <= lo and hi < 1 << 15:
        return IntType(16, True)
    if 0 <= lo and hi < 1 << 16:
        return IntType(16, False)
    return None


def lut(q, table, in_type: IntType, *, out_type: IntType | tuple | None = None) -> np.ndarray:
    """§4 through ``codesign::lut_row`` (lut.h); see :func:`lut_ex`."""
    return lut_ex(q, table, in_type, out_type=out_type)[0]


def lut_ex(q, table, in_type: IntType, *, out_type: IntType | tuple | None = None
           ) -> tuple[np.ndarray, dict[str, int]]:
    """§4 through ``codesign::lut_row`` (lut.h): y = table[idx(q)].

    ``out_type``: the code type Y of the table entries (a template parameter in
    HLS); by default int16 (or uint16 if the entries need it).
    """
    op = "lut"
    in_type = as_type(op, in_type)
    check_bits(op, "input bits", in_type.bits, 1, 8)
    table = int_codes(op, "table", table)
    nt = 2 if in_type.bipolar else 1 << in_type.bits
    if table.shape != (nt,):
        raise ValueError(f"{op}: table has shape {table.shape}, {in_type} input needs ({nt},)")
    if out_type is None:
        y_type = _fit_type(int(table.min()), int(table.max()))
        if y_type is None:
            raise ValueError(f"{op}: table entries [{int(table.min())}, {int(table.max())}] exceed 16 bits")
    else:
        y_type = as_type(op, out_type)
        check_bits(op, "output bits", y_type.bits, 1, 16)
        check_codes(op, "table", table, y_type)
    q = int_codes(op, "q", q)
    x_type = IntType(in_type.bits, in_type.signed)  # narrow does not change the index
    check_codes(op, "q", q, x_type)
    if q.size == 0:
        return np.zeros(q.shape, dtype=np.int64), {"trips": 0}
    qr = _chunked(q.ravel(), -1 if x_type.bipolar else 0)
    src = _sub(_LUT_SRC, X=cpp_type(x_type), Y=cpp_type(y_type), N=CHUNK)
    res = csim.run(src, {"q": qr, "table": table}, name=op)
    return res["y"].ravel()[: q.size].reshape(q.shape), {"trips": int(res["trips"])}


# ---------------------------------------------------------------------------
# §7 residual add
# ---------------------------------------------------------------------------

_ADD_SRC = r"""
#include "codesign/add.h"
@PRELUDE@
typedef @A@ A;
typedef @B@ B;
typedef @Y@ Y;
static const int N = @N@, MB = @MBITS@, PE = @PE@;

int main() {
    csim::In in;
    csim::Out out;
    const std::vector<long long>& a = in.i64("a");
    const std::vector<long long>& b = in.i64("b");
    if (a.size() != b.size() || a.size() % N != 0) csim::fail("add harness: bad input sizes");
    const ap_uint<MB> Ma = ap_uint<MB>(csim::fit_check<MB, false>(in.scalar_i64("Ma"), "Ma"));
    const ap_uint<MB> Mb = ap_uint<MB>(csim::fit_check<MB, false>(in.scalar_i64("Mb"), "Mb"));
    const ap_uint<6> sh = load_shift(in.scalar_i64("sh"), "sh");
    std::vector<long long> y(a.size());
    A::storage ar[N];
    B::storage br[N];
    Y::storage yr[N];
    for (std::size_t r = 0; r < a.size() / N; ++r) {
        for (int i = 0; i < N; ++i) {
            ar[i] = load_code<A>(a[r * N + i], "a");
            br[i] = load_code<B>(b[r * N + i], "b");
        }
        codesign::add_row<A, B, Y, N, MB, PE>(ar, br, Ma, Mb, sh, yr);
        for (int i = 0; i < N; ++i) y[r * N + i] = code_value<Y>(yr[i]);
    }
    out.put_i64("y", in.shape("a"), y);
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    return 0;
}
"""


def add(a, b, Ma: int, Mb: int, sh: int, a_type: IntType = IntType(8, True),
        b_type: IntType = IntType(8, True), out_type: IntType = IntType(8, True), *, pe: int = 1) -> np.ndarray:
    """§7 through ``codesign::add_row`` (add.h); see :func:`add_ex`."""
    return add_ex(a, b, Ma, Mb, sh, a_type, b_type, out_type, pe=pe)[0]


def add_ex(a, b, Ma: int, Mb: int, sh: int, a_type: IntType = IntType(8, True),
           b_type: IntType = IntType(8, True), out_type: IntType = IntType(8, True), *, pe: int = 1
           ) -> tuple[np.ndarray, dict[str, int]]:
    """§7 through ``codesign::add_row`` (add.h): sat_Y(rshr(a*Ma + b*Mb, sh)).

    The multiplier width (template MBITS) is 16 if both multipliers fit, else 24.
    """
    op = "add"
    a_type, b_type, out_type = (as_type(op, t) for t in (a_type, b_type, out_type))
    for what, t in (("a", a_type), ("b", b_type), ("output", out_type)):
        check_bits(op, f"{what} bits", t.bits, 2, 16)
    a, b = int_codes(op, "a", a), int_codes(op, "b", b)
    full = check_broadcast(op, a.shape, b.shape)
    check_codes(op, "a", a, a_type)
    check_codes(op, "b", b, b_type)
    for what, M in (("Ma", Ma), ("Mb", Mb)):
        if not 0 <= int(M) < 1 << 24:
            raise ValueError(f"{op}: {what}={M} outside 0..2^24-1")
    check_bits(op, "shift", int(sh), 1, MAX_SHIFT)
    if not isinstance(pe, (int, np.integer)) or pe < 1 or CHUNK % pe:
        raise ValueError(f"{op}: pe={pe!r} must divide {CHUNK}")
    n = math.prod(full)
    if n == 0:
        return np.zeros(full, dtype=np.int64), {"trips": 0}
    mbits = 16 if max(int(Ma), int(Mb)) < 1 << 16 else 24
    ar = _chunked(np.broadcast_to(a, full).ravel(), 0)
    br = _chunked(np.broadcast_to(b, full).ravel(), 0)
    src = _sub(_ADD_SRC, A=cpp_type(a_type), B=cpp_type(b_type), Y=cpp_type(out_type), N=CHUNK, MBITS=mbits,
               PE=int(pe))
    inputs = {"a": ar, "b": br, "Ma": np.int64(Ma), "Mb": np.int64(Mb), "sh": np.int64(sh)}
    res = csim.run(src, inputs, name=op)
    return res["y"].ravel()[:n].reshape(full), {"trips": int(res["trips"])}
