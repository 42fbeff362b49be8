"""C-simulation face of the nonlinear, binary and pooling kernels (docs/arithmetic.md §5, §6, §8, §9).

Every function has the name and signature of its numpy reference in
:mod:`codesign.sim.reference` (``softmax``, ``isqrt``, ``layernorm``,
``xnor_popcount``, ``threshold``, ``maxpool2d``, ``avgpool2d``) and returns the
same ``np.int64`` codes, computed by the HLS C++ kernels of
``hls/include/codesign/{softmax,layernorm,binary,pool}.h``: each call generates a
small C++ harness for the template configuration it needs, compiles it through
:func:`codesign.hls.csim.run` (cached by source hash) and runs it on the data.

Shapes, types and foldings are template parameters in HLS, so each distinct
configuration is one compile (about 1-2 s, then cached). The harness source
depends on the configuration only, never on the data, so equal configurations
hash equal: the number of rows/images is a runtime loop count, and runtime
constants (LayerNorm's S and E, pooling's M and sh) are harness inputs.

Every int64 that enters an ``ap_int``/``ap_uint`` is first checked with
``csim::fit_check`` (and codes against their type's range), so a silent wrap can
never hide a bug. Arguments are validated here as the contract requires
(``ValueError`` naming the op), with the helpers of :mod:`codesign.sim.checks`.

Extra keyword-only arguments select the hardware folding where the reference
has none: ``xnor_popcount(..., pe=, simd=)``. :func:`binary_mvau` (no reference
counterpart of the same name) is the fused XNOR matrix-vector unit with
thresholds, equal to ``threshold(xnor_popcount(a, w, K), T, ...)``.

Each op also has an ``*_ex`` variant returning ``(result, {"trips": n})``: ``n`` is
the number of pipelined (II = 1) loop iterations the kernels ran
(``CODESIGN_TRIP`` in types.h), i.e. their cycle count without pipeline fill and
drain, which the tests compare with the cycle formulas documented in the headers:

=================  ==============================================================
softmax            rows * 3N  (max, exp+sum, normalise passes; + one divider latency per row)
isqrt              32 per value
layernorm          rows * (3H + 32)  (+ the mu, v, z divider latencies per row)
xnor_popcount      0 unfolded (combinational); folded: rows * (N/PE) * ceil(K/SIMD)
binary_mvau        rows * (N/PE) * ceil(K/SIMD)
threshold          rows * C
maxpool2d          images * C * OH * OW * KH * KW
avgpool2d          images * C * OH * OW * KH * KW  (global: images * C * H * W)
conv2d             images * OH * OW * ceil(OC/PE) * ceil(K/SIMD)  (MVAU; the window
                   generator's count comes back as "swg_trips", see conv.h)
=================  ==============================================================
"""
from __future__ import annotations

import numpy as np

from codesign.hls import csim
from codesign.sim.checks import as_type, check_bits, check_codes, int_codes, packed_bytes, scalar_int
from codesign.sim.reference import IntType, LayerNormParams

__all__ = [
    "softmax", "softmax_ex", "isqrt", "isqrt_ex", "layernorm", "layernorm_ex",
    "xnor_popcount", "xnor_popcount_ex", "binary_mvau", "binary_mvau_ex", "threshold", "threshold_ex",
    "maxpool2d", "maxpool2d_ex", "avgpool2d", "avgpool2d_ex", "conv2d", "conv2d_ex",
]

MAX_SHIFT = 62
AP_INT_MAX_W = 1024  # default ap_int width limit: the widest SIMD word of a binary kernel

# ---------------------------------------------------------------------------
# Harness building blocks
# ---------------------------------------------------------------------------

# code_in<T>(v, what): fit_check v against T's storage word, then against T's code range
# (narrow types, bipolar +-1), then encode it. code_out<T>(s): the numeric value.
_HELPERS = r"""
#include "csim_io.h"
#include <string>
#include <vector>

template <class T>
typename T::storage code_in(long long v, const char* what) {
    const long long f = csim::fit_check<(T::bipolar ? 2 : T::bits), T::is_signed>(v, what);
    if (f < T::LO || f > T::HI || (T::bipolar && f == 0))
        csim::fail(std::string(what) + ": value " + std::to_string(f) + " is not a code of the kernel's type");
    return T::encode(typename T::value_t(f));
}

template <class T>
long long code_out(const typename T::storage& s) {
    return (long long)T::value(s).to_int64();
}
"""


def _b(v: bool) -> str:
    return "true" if v else "false"


def _ctype(t: IntType) -> str:
    """The C++ code type of an IntType (narrow is irrelevant for bipolar)."""
    return f"codesign::IntT<{t.bits}, {_b(t.signed)}, {_b(t.narrow and not t.bipolar)}>"


def _render(template: str, **subs) -> str:
    src = template
    for key, val in subs.items():
        src = src.replace(f"@{key}@", str(val))
    if "@" in src.replace('"csim_io.h"', ""):
        leftover = src[src.index("@"):][:40]
        raise AssertionError(f"unfilled harness placeholder near {leftover!r}")
    return src


def _run(op: str, source: str, inputs: dict, tag: str) -> dict[str, np.ndarray]:
    return csim.run(source, inputs, name=f"{op}-{tag}")


Ex = tuple[np.ndarray, dict[str, int]]
"""What the ``*_ex`` variants return: the result and ``{"trips": n}``."""


def _ex(res: dict[str, np.ndarray], y: np.ndarray) -> Ex:
    return y, {"trips": int(res["trips"])}


# ---------------------------------------------------------------------------
# §5 softmax
# ---------------------------------------------------------------------------

_SOFTMAX = r"""@HELPERS@
#include "codesign/softmax.h"
typedef @X@ X;
static const int N = @N@;
static const int EB = @EB@;
static const int OB = @OB@;
typedef X::storage row_t[N];
typedef ap_uint<OB> orow_t[N];
int main() {
    csim::In in;
    csim::Out out;
    const std::vector<long long>& x = in.i64("x");
    const std::vector<long long>& t = in.i64("table");
    if (t.size() != (std::size_t)(1 << X::bits) || x.size() % N != 0) csim::fail("softmax: bad input sizes");
    static ap_uint<EB> table[1 << X::bits];
    for (std::size_t i = 0; i < t.size(); ++i) table[i] = csim::fit_check<EB, false>(t[i], "table");
    std::vector<X::storage> xb(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) xb[i] = code_in<X>(x[i], "x");
    std::vector<ap_uint<OB> > yb(x.size());
    const int rows = (int)(x.size() / N);
    codesign::softmax_rows<X, N, EB, OB>(rows, reinterpret_cast<const row_t*>(xb.data()), table,
                                         reinterpret_cast<orow_t*>(yb.data()));
    std::vector<long long> y(x.size());
    for (std::size_t i = 0; i < y.size(); ++i) y[i] = (long long)yb[i].to_uint64();
    out.put_i64("y", in.shape("x"), y);
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    return 0;
}
"""


def softmax_ex(x, table, in_type: IntType, eb: int = 8, ob: int = 8) -> Ex:
    """§5 integer softmax over the last axis, by ``codesign::softmax_rows``."""
    op = "softmax"
    t = as_type(op, in_type)
    check_bits(op, "input bits", t.bits, 2, 8)
    eb = check_bits(op, "EB", eb, 1, 16)
    ob = check_bits(op, "OB", ob, 1, 16)
    table = int_codes(op, "table", table)
    if table.shape != (1 << t.bits,):
        raise ValueError(f"{op}: table shape {table.shape}, expected ({1 << t.bits},)")
    if table.min() < 0 or table.max() > (1 << eb) - 1 or table[0] < 1:
        raise ValueError(f"{op}: table entries must be in 0..2^EB-1 with T[0] >= 1")
    x = int_codes(op, "x", x)
    if x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"{op}: need at least one element per row, got shape {x.shape}")
    x = check_codes(op, "x", x, t)
    n = x.shape[-1]
    if n * ((1 << eb) - 1) >= 1 << 32:
        raise ValueError(f"{op}: row length {n} x (2^{eb}-1) overflows the 32-bit sum")
    src = _render(_SOFTMAX, HELPERS=_HELPERS, X=_ctype(t), N=n, EB=eb, OB=ob)
    res = _run(op, src, {"x": x, "table": table}, f"{t}-N{n}-EB{eb}-OB{ob}")
    return _ex(res, res["y"])


# ---------------------------------------------------------------------------
# §6 isqrt and LayerNorm
# ---------------------------------------------------------------------------

_ISQRT = r"""@HELPERS@
#include "codesign/layernorm.h"
int main() {
    csim::In in;
    csim::Out out;
    const std::vector<long long>& hi = in.i64("hi");
    const std::vector<long long>& lo = in.i64("lo");
    if (hi.size() != lo.size()) csim::fail("isqrt: hi/lo sizes differ");
    std::vector<long long> r(hi.size());
    for (std::size_t i = 0; i < hi.size(); ++i) {
        ap_uint<64> v = 0;
        v.range(63, 32) = ap_uint<32>(csim::fit_check<32, false>(hi[i], "hi"));
        v.range(31, 0) = ap_uint<32>(csim::fit_check<32, false>(lo[i], "lo"));
        r[i] = (long long)codesign::isqrt(v).to_uint64();
    }
    out.put_i64("r", in.shape("hi"), r);
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    return 0;
}
"""


def isqrt_ex(v) -> Ex:
    """floor(sqrt(v)) for 0 <= v < 2^64 (§6 step 6), by ``codesign::isqrt`` (digit by digit).

    ``v``: integers; values >= 2^63 may be given as ``np.uint64`` (or Python ints).
    """
    op = "isqrt"
    a = np.asarray(v)
    if a.dtype == np.uint64:
        u = a
    else:
        q = int_codes(op, "v", a)
        if q.size and q.min() < 0:
            raise ValueError(f"{op}: negative input {int(q.min())}")
        u = q.astype(np.uint64)
    hi = (u >> np.uint64(32)).astype(np.int64)
    lo = (u & np.uint64(0xFFFFFFFF)).astype(np.int64)
    res = _run(op, _render(_ISQRT, HELPERS=_HELPERS), {"hi": hi, "lo": lo}, "u64")
    return _ex(res, res["r"])


_LAYERNORM = r"""@HELPERS@
#include "codesign/layernorm.h"
typedef @Y@ Y;
static const int H = @H@;
typedef ap_int<16> row_t[H];
typedef Y::storage orow_t[H];
int main() {
    csim::In in;
    csim::Out out;
    const std::vector<long long>& x = in.i64("x");
    const std::vector<long long>& g = in.i64("G");
    const std::vector<long long>& b = in.i64("B");
    if (g.size() != (std::size_t)H || b.size() != (std::size_t)H || x.size() % H != 0)
        csim::fail("layernorm: bad input sizes");
    static ap_int<16> G[H];
    static ap_int<32> B[H];
    for (int i = 0; i < H; ++i) {
        G[i] = csim::fit_check<16, true>(g[i], "G");
        B[i] = csim::fit_check<32, true>(b[i], "B");
    }
    const ap_uint<6> S = csim::fit_check<6, false>(in.scalar_i64("S"), "S");
    const ap_uint<40> E = csim::fit_check<40, false>(in.scalar_i64("E"), "E");
    std::vector<ap_int<16> > xb(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) xb[i] = csim::fit_check<16, true>(x[i], "x");
    std::vector<Y::storage> yb(x.size());
    const int rows = (int)(x.size() / H);
    codesign::layernorm_rows<H, Y>(rows, reinterpret_cast<const row_t*>(xb.data()), G, B, S, E,
                                   reinterpret_cast<orow_t*>(yb.data()));
    std::vector<long long> y(x.size());
    for (std::size_t i = 0; i < y.size(); ++i) y[i] = code_out<Y>(yb[i]);
    out.put_i64("y", in.shape("x"), y);
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    return 0;
}
"""


def layernorm_ex(x, params: LayerNormParams, out_type: IntType = IntType(8, True)) -> Ex:
    """§6 integer LayerNorm over the last axis of int16 codes, by ``codesign::layernorm_rows``."""
    op = "layernorm"
    y_t = as_type(op, out_type)
    check_bits(op, "output bits", y_t.bits, 2, 8)
    x = int_codes(op, "x", x)
    if x.ndim < 1:
        raise ValueError(f"{op}: input must have at least one axis")
    H = x.shape[-1]
    if not 1 <= H <= 4096:
        raise ValueError(f"{op}: row length H={H} not supported (1..4096)")
    x = check_codes(op, "x", x, IntType(16, True))
    G = int_codes(op, "G", params.G)
    B = int_codes(op, "B", params.B)
    if G.shape != (H,) or B.shape != (H,):
        raise ValueError(f"{op}: G {G.shape} / B {B.shape} must have shape ({H},)")
    if np.abs(G).max() > 2**15 - 1 or np.abs(B).max() > 2**31 - 1:
        raise ValueError(f"{op}: G must fit int16 and B int32")
    S = scalar_int(op, "S", params.S, 1, MAX_SHIFT)
    E = scalar_int(op, "E", params.E, 0, (1 << 40) - 1)
    src = _render(_LAYERNORM, HELPERS=_HELPERS, Y=_ctype(y_t), H=H)
    res = _run(op, src, {"x": x, "G": G, "B": B, "S": S, "E": E}, f"H{H}-{y_t}")
    return _ex(res, res["y"])


# ---------------------------------------------------------------------------
# §8 binary dot products and thresholds
# ---------------------------------------------------------------------------

# Bytes -> bits: element k is bit k % 8 of byte k / 8 (reference.pack_bipolar's order).
_BITS = r"""
static int bit_of(const std::vector<long long>& bytes, std::size_t row, std::size_t nb, int k, int fill) {
    if ((std::size_t)(k >> 3) >= nb) return fill;
    const long long byte = csim::fit_check<8, false>(bytes[row * nb + (k >> 3)], "packed byte");
    return (int)((byte >> (k & 7)) & 1);
}
"""

# main() of the packed-bits harnesses: reads the packed rows a (..., nb) and w (N, nb), and
# (after the op's body, which fills y with rows * N values) writes y of shape (..., N).
_PACKED_MAIN_HEAD = r"""int main() {
    csim::In in;
    csim::Out out;
    const std::vector<long long>& a = in.i64("a");
    const std::vector<long long>& w = in.i64("w");
    const std::size_t nb = (K + 7) / 8;
"""
_PACKED_MAIN_TAIL = r"""    std::vector<std::size_t> shape = in.shape("a");
    shape.back() = N;
    out.put_i64("y", shape, y);
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    return 0;
}
"""

_XNOR_FLAT = r"""@HELPERS@
#include "codesign/binary.h"
@BITS@
static const int K = @K@;
""" + _PACKED_MAIN_HEAD + r"""    const std::size_t rows = a.size() / nb, N = w.size() / nb;
    std::vector<ap_uint<K> > wv(N);
    for (std::size_t n = 0; n < N; ++n)
        for (int k = 0; k < K; ++k) wv[n][k] = bit_of(w, n, nb, k, 0);
    std::vector<long long> y(rows * N);
    for (std::size_t r = 0; r < rows; ++r) {
        ap_uint<K> av = 0;
        for (int k = 0; k < K; ++k) av[k] = bit_of(a, r, nb, k, 0);
        for (std::size_t n = 0; n < N; ++n) y[r * N + n] = codesign::xnor_popcount<K>(av, wv[n]).to_int64();
    }
""" + _PACKED_MAIN_TAIL

# Folded MVAU (optionally with fused thresholds). Lanes past K in the last synapse fold are
# filled from the bytes' padding bits, then with 1 in both a and w (so XNOR = 1 there):
# only the kernel's mask_K keeps them out of the count.
_MVAU = r"""@HELPERS@
#include "codesign/binary.h"
@BITS@
static const int K = @K@, N = @N@, PE = @PE@, SIMD = @SIMD@;
typedef codesign::BinaryMvauCfg<K, N, PE, SIMD> Cfg;
@THR_DECL@
typedef ap_uint<SIMD> in_row_t[Cfg::SF];
typedef out_t out_row_t[N];
""" + _PACKED_MAIN_HEAD + r"""    if (w.size() != N * nb || a.size() % nb != 0) csim::fail("binary mvau: bad input sizes");
    const std::size_t rows = a.size() / nb;
    static ap_uint<SIMD> weights[PE][Cfg::NF * Cfg::SF];
    for (int n = 0; n < N; ++n)
        for (int sf = 0; sf < Cfg::SF; ++sf) {
            ap_uint<SIMD> word = 0;
            for (int j = 0; j < SIMD; ++j) word[j] = bit_of(w, n, nb, sf * SIMD + j, 1);
            weights[n % PE][(n / PE) * Cfg::SF + sf] = word;
        }
    @THR_LOAD@
    std::vector<ap_uint<SIMD> > ib(rows * Cfg::SF);
    for (std::size_t r = 0; r < rows; ++r)
        for (int sf = 0; sf < Cfg::SF; ++sf) {
            ap_uint<SIMD> word = 0;
            for (int j = 0; j < SIMD; ++j) word[j] = bit_of(a, r, nb, sf * SIMD + j, 1);
            ib[r * Cfg::SF + sf] = word;
        }
    std::vector<out_t> ob(rows * N);
    @CALL@
    std::vector<long long> y(rows * N);
    for (std::size_t i = 0; i < y.size(); ++i) y[i] = ob[i].to_int64();
""" + _PACKED_MAIN_TAIL

_MVAU_PLAIN = dict(
    THR_DECL="typedef Cfg::acc_t out_t;",
    THR_LOAD="",
    CALL="codesign::binary_mvau_batch<K, N, PE, SIMD>((int)rows, reinterpret_cast<const in_row_t*>(ib.data()), "
         "weights, reinterpret_cast<out_row_t*>(ob.data()));",
)

_MVAU_THR = dict(
    THR_DECL="static const int NT = @NT@, OUT_BIAS = @OUT_BIAS@;\nstatic const bool BIPOLAR = @BIPOLAR@;\n"
             "typedef codesign::ThresholdCfg<NT, OUT_BIAS, BIPOLAR>::out_t out_t;",
    THR_LOAD="""const std::vector<long long>& t = in.i64("T");
    if (t.size() != (std::size_t)N * NT) csim::fail("binary mvau: bad threshold size");
    static Cfg::thr_t thr[PE][Cfg::NF][NT];
    for (int n = 0; n < N; ++n)
        for (int i = 0; i < NT; ++i)
            thr[n % PE][n / PE][i] = csim::fit_check<Cfg::ACC_W + 1, true>(t[n * NT + i], "T");""",
    CALL="codesign::binary_mvau_threshold_batch<K, N, PE, SIMD, NT, OUT_BIAS, BIPOLAR>((int)rows, "
         "reinterpret_cast<const in_row_t*>(ib.data()), weights, thr, reinterpret_cast<out_row_t*>(ob.data()));",
)


def _xnor_args(op: str, a_bits, w_bits, K) -> tuple[np.ndarray, np.ndarray, int, int]:
    if isinstance(K, (bool, np.bool_)) or not isinstance(K, (int, np.integer)) or K < 1:
        raise ValueError(f"{op}: K={K!r} must be an integer >= 1")
    K = int(K)
    nb = (K + 7) // 8
    a = np.asarray(a_bits)
    w = np.asarray(w_bits)
    if a.ndim < 1 or a.shape[-1] != nb or w.ndim != 2 or w.shape[-1] != nb:
        raise ValueError(f"{op}: K={K} needs packed rows of {nb} bytes, got a {a.shape}, w {w.shape}")
    return packed_bytes(op, "a_bits", a), packed_bytes(op, "w_bits", w), K, nb


def _folding(op: str, K: int, N: int, pe, simd) -> tuple[int, int]:
    pe = 1 if pe is None else pe
    simd = min(K, AP_INT_MAX_W) if simd is None else simd
    pe = check_bits(op, "pe", pe, 1, max(N, 1))
    simd = check_bits(op, "simd", simd, 1, min(K, AP_INT_MAX_W))
    if N % pe:
        raise ValueError(f"{op}: pe={pe} must divide the number of rows N={N}")
    return pe, simd


def xnor_popcount_ex(a_bits, w_bits, K: int, *, pe: int | None = None, simd: int | None = None) -> Ex:
    """§8: dot = 2*popcount(XNOR(a, w) & mask_K) - K on packed bipolar vectors.

    ``a_bits`` (..., ceil(K/8)) and ``w_bits`` (N, ceil(K/8)) bytes as reference.pack_bipolar
    makes them; returns (..., N). With ``pe`` and ``simd`` both None (and K <= 1024) the
    unfolded ``codesign::xnor_popcount<K>`` computes each dot product; otherwise the folded
    ``codesign::binary_mvau_batch<K, N, PE, SIMD>`` does (pe default 1, simd default
    min(K, 1024); K need not be a multiple of simd).
    """
    op = "xnor_popcount"
    a, w, K, nb = _xnor_args(op, a_bits, w_bits, K)
    N = w.shape[0]
    if pe is None and simd is None and K <= AP_INT_MAX_W:
        src = _render(_XNOR_FLAT, HELPERS=_HELPERS, BITS=_BITS, K=K)
        res = _run(op, src, {"a": a.reshape(-1, nb), "w": w}, f"K{K}")
        return _ex(res, res["y"].reshape(*a.shape[:-1], N))
    if N < 1:
        return np.zeros((*a.shape[:-1], 0), dtype=np.int64), {"trips": 0}
    pe, simd = _folding(op, K, N, pe, simd)
    src = _render(_render_partial(_MVAU, _MVAU_PLAIN), HELPERS=_HELPERS, BITS=_BITS, K=K, N=N, PE=pe, SIMD=simd)
    res = _run(op, src, {"a": a.reshape(-1, nb), "w": w}, f"K{K}-N{N}-PE{pe}-SIMD{simd}")
    return _ex(res, res["y"].reshape(*a.shape[:-1], N))


def _render_partial(template: str, parts: dict) -> str:
    for key, val in parts.items():
        template = template.replace(f"@{key}@", val)
    return template


def _thresholds(op: str, T, C: int | None, bipolar: bool) -> np.ndarray:
    T = int_codes(op, "thresholds", T)
    if T.ndim != 2 or T.shape[1] < 1:
        raise ValueError(f"{op}: thresholds must have shape (C, n>=1), got {T.shape}")
    if C is not None and T.shape[0] not in (1, C):
        raise ValueError(f"{op}: {T.shape[0]} threshold rows for {C} channels")
    if np.any(np.diff(T, axis=1) < 0):
        raise ValueError(f"{op}: thresholds must be ascending per channel")
    if bipolar and T.shape[1] != 1:
        raise ValueError(f"{op}: a bipolar output takes exactly one threshold per channel, got {T.shape[1]}")
    return T


def _out_bias(op: str, out_bias, bipolar: bool) -> int:
    if bipolar:
        return 0  # ignored, as in the reference
    return scalar_int(op, "out_bias", out_bias, -(2**31), 2**31 - 1)


def binary_mvau_ex(a_bits, w_bits, K: int, T=None, out_bias: int = 0, bipolar: bool = False, *,
                   pe: int = 1, simd: int | None = None) -> Ex:
    """§8 fused XNOR MVAU + MultiThreshold (``codesign::binary_mvau_threshold_batch``).

    Equals ``threshold(xnor_popcount(a_bits, w_bits, K), T, out_bias, bipolar)`` of the
    reference; ``T``: (N, n) or (1, n) ascending. Thresholds are clipped to [-K, K+1] (the
    code generator's compile-time step; exact for dot products in [-K, K]). ``T=None``
    gives the plain MVAU (the dot products).
    """
    op = "binary_mvau"
    a, w, K, nb = _xnor_args(op, a_bits, w_bits, K)
    N = w.shape[0]
    if T is None:
        return xnor_popcount_ex(a, w, K, pe=pe, simd=simd)
    bipolar = bool(bipolar)
    T = _thresholds(op, T, N, bipolar)
    ob = _out_bias(op, out_bias, bipolar)
    if N < 1:
        return np.zeros((*a.shape[:-1], 0), dtype=np.int64), {"trips": 0}
    pe, simd = _folding(op, K, N, pe, simd)
    nt = T.shape[1]
    Tc = np.clip(np.broadcast_to(T, (N, nt)), -K, K + 1)
    tmpl = _render_partial(_MVAU, _MVAU_THR)
    src = _render(tmpl, HELPERS=_HELPERS, BITS=_BITS, K=K, N=N, PE=pe, SIMD=simd, NT=nt, OUT_BIAS=ob,
                  BIPOLAR=_b(bipolar))
    tag = f"K{K}-N{N}-PE{pe}-SIMD{simd}-T{nt}{'bip' if bipolar else f'b{ob}'}"
    res = _run(op, src, {"a": a.reshape(-1, nb), "w": w, "T": Tc}, tag)
    return _ex(res, res["y"].reshape(*a.shape[:-1], N))


_THRESHOLD = r"""@HELPERS@
#include "codesign/binary.h"
static const int C = @C@, NT = @NT@, TC = @TC@, W = @W@, OUT_BIAS = @OUT_BIAS@;
static const bool BIPOLAR = @BIPOLAR@;
typedef codesign::ThresholdCfg<NT, OUT_BIAS, BIPOLAR>::out_t out_t;
typedef ap_int<W> acc_row_t[C];
typedef out_t out_row_t[C];
int main() {
    csim::In in;
    csim::Out out;
    const std::vector<long long>& acc = in.i64("acc");
    const std::vector<long long>& t = in.i64("T");
    if (t.size() != (std::size_t)TC * NT || acc.size() % C != 0) csim::fail("threshold: bad input sizes");
    static ap_int<W> thr[TC][NT];
    for (int c = 0; c < TC; ++c)
        for (int i = 0; i < NT; ++i) thr[c][i] = csim::fit_check<W, true>(t[c * NT + i], "T");
    std::vector<ap_int<W> > ab(acc.size());
    for (std::size_t i = 0; i < acc.size(); ++i) ab[i] = csim::fit_check<W, true>(acc[i], "acc");
    std::vector<out_t> yb(acc.size());
    codesign::multithreshold_rows<C, NT, TC, W, OUT_BIAS, BIPOLAR>(
        (int)(acc.size() / C), reinterpret_cast<const acc_row_t*>(ab.data()), thr,
        reinterpret_cast<out_row_t*>(yb.data()));
    std::vector<long long> y(acc.size());
    for (std::size_t i = 0; i < y.size(); ++i) y[i] = yb[i].to_int64();
    out.put_i64("y", in.shape("acc"), y);
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    return 0;
}
"""

_ACC_WIDTHS = (16, 32, 48, 64)  # accumulator/threshold width buckets (fewer distinct compiles)


def _width_bucket(*arrays: np.ndarray) -> int:
    lo = min((int(a.min()) for a in arrays if a.size), default=0)
    hi = max((int(a.max()) for a in arrays if a.size), default=0)
    for w in _ACC_WIDTHS:
        if -(1 << (w - 1)) <= lo and hi <= (1 << (w - 1)) - 1:
            return w
    return 64


def threshold_ex(acc, T, out_bias: int = 0, bipolar: bool = False) -> Ex:
    """§8 MultiThreshold by ``codesign::multithreshold_rows``: y = sum_t [acc >= T[c, t]] + out_bias
    (bipolar: 2y - 1), channels on the last axis of ``acc``; ``T`` (C, n) or (1, n)."""
    op = "threshold"
    acc = int_codes(op, "acc", acc)
    bipolar = bool(bipolar)
    if acc.ndim < 1:
        raise ValueError(f"{op}: 0 threshold rows for 0 channels (acc must have a channel axis)")
    C = acc.shape[-1]
    T = _thresholds(op, T, C, bipolar)
    ob = _out_bias(op, out_bias, bipolar)
    if C == 0:
        return np.zeros(acc.shape, dtype=np.int64), {"trips": 0}
    w = _width_bucket(acc, T)
    nt, tc = T.shape[1], T.shape[0]
    src = _render(_THRESHOLD, HELPERS=_HELPERS, C=C, NT=nt, TC=tc, W=w, OUT_BIAS=ob, BIPOLAR=_b(bipolar))
    tag = f"C{C}-T{tc}x{nt}-W{w}-{'bip' if bipolar else f'b{ob}'}"
    res = _run(op, src, {"acc": acc, "T": T}, tag)
    return _ex(res, res["y"])


# ---------------------------------------------------------------------------
# §9 pooling
# ---------------------------------------------------------------------------

def _pair(op: str, what: str, v) -> tuple[int, int]:
    vals = (v, v) if np.isscalar(v) else tuple(v)
    if len(vals) != 2 or not all(isinstance(e, (int, np.integer)) and not isinstance(e, (bool, np.bool_))
                                 for e in vals):
        raise ValueError(f"{op}: {what}={v!r} must be an integer or a pair of integers")
    return int(vals[0]), int(vals[1])


def _pool_geometry(op: str, x: np.ndarray, kernel, stride, pad) -> tuple[tuple[int, int], ...]:
    if x.ndim != 4:
        raise ValueError(f"{op}: input must be NCHW, got shape {x.shape}")
    k = _pair(op, "kernel", kernel)
    s = _pair(op, "stride", stride if stride is not None else kernel)
    p = _pair(op, "pad", pad)
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    if kh < 1 or kw < 1 or sh < 1 or sw < 1 or not (0 <= ph < kh and 0 <= pw < kw):
        raise ValueError(f"{op}: kernel {k}, stride {s}, pad {p} not supported (pad < kernel)")
    H, W = x.shape[2] + 2 * ph, x.shape[3] + 2 * pw
    if H < kh or W < kw:
        raise ValueError(f"{op}: window {k} larger than padded input {(H, W)}")
    if x.shape[1] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{op}: empty channel/spatial dimension in input shape {x.shape}")
    return k, s, p


_POOL = r"""@HELPERS@
#include "codesign/pool.h"
typedef @X@ X;
@YDECL@
static const int C = @C@, H = @H@, W = @W@;
@GEOM@
int main() {
    csim::In in;
    csim::Out out;
    const std::vector<long long>& x = in.i64("x");
    if (x.size() % (C * H * W) != 0) csim::fail("pool: bad input size");
    const std::size_t images = x.size() / (C * H * W);
    @PARAMS@
    static X::storage xb[C][H][W];
    static Y::storage yb[C][OH][OW];
    std::vector<long long> y(images * C * OH * OW);
    for (std::size_t n = 0; n < images; ++n) {
        const long long* xi = &x[n * C * H * W];
        for (int c = 0; c < C; ++c)
            for (int h = 0; h < H; ++h)
                for (int w = 0; w < W; ++w) xb[c][h][w] = code_in<X>(xi[(c * H + h) * W + w], "x");
        @CALL@
        long long* yi = &y[n * C * OH * OW];
        for (int c = 0; c < C; ++c)
            for (int h = 0; h < OH; ++h)
                for (int w = 0; w < OW; ++w) yi[(c * OH + h) * OW + w] = code_out<Y>(yb[c][h][w]);
    }
    std::vector<std::size_t> shape = in.shape("x");
    shape[2] = OH;
    shape[3] = OW;
    out.put_i64("y", shape, y);
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    return 0;
}
"""

_GEOM_WINDOW = """static const int KH = @KH@, KW = @KW@, SH = @SH@, SW = @SW@, PH = @PH@, PW = @PW@;
typedef codesign::PoolGeom<H, W, KH, KW, SH, SW, PH, PW> G;
static const int OH = G::OH, OW = G::OW;"""
_GEOM_GLOBAL = "static const int OH = 1, OW = 1;"
_REQUANT_PARAMS = """const ap_uint<24> M = csim::fit_check<24, false>(in.scalar_i64("M"), "M");
    const ap_uint<6> sh = csim::fit_check<6, false>(in.scalar_i64("sh"), "sh");"""


def maxpool2d_ex(x, kernel, stride=None, pad=0, in_type: IntType = IntType(8, True)) -> Ex:
    """§9 max pooling (padding holds lo_X) by ``codesign::maxpool2d``; x is NCHW."""
    op = "maxpool2d"
    t = as_type(op, in_type)
    check_bits(op, "input bits", t.bits, 1, 8)
    x = check_codes(op, "x", int_codes(op, "x", x), t)
    (kh, kw), (sh, sw), (ph, pw) = _pool_geometry(op, x, kernel, stride, pad)
    _, C, H, W = x.shape
    if x.shape[0] == 0:
        empty = np.zeros((0, C, (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1), dtype=np.int64)
        return empty, {"trips": 0}
    geom = _render_partial(_GEOM_WINDOW, dict(KH=str(kh), KW=str(kw), SH=str(sh), SW=str(sw), PH=str(ph),
                                              PW=str(pw)))
    call = "codesign::maxpool2d<X, C, H, W, KH, KW, SH, SW, PH, PW>(xb, yb);"
    src = _render(_POOL, HELPERS=_HELPERS, X=_ctype(t), YDECL="typedef X Y;", C=C, H=H, W=W, GEOM=geom,
                  PARAMS="", CALL=call)
    tag = f"{t}-C{C}H{H}W{W}-k{kh}x{kw}s{sh}x{sw}p{ph}x{pw}"
    res = _run(op, src, {"x": x}, tag)
    return _ex(res, res["y"])


def avgpool2d_ex(x, kernel, M, sh, stride=None, pad=0, in_type: IntType = IntType(8, True),
                 out_type: IntType | None = None) -> Ex:
    """§9 average pooling: window sum (padding 0, divisor kh*kw) then sat_Y(rshr(sum*M, sh)).

    By ``codesign::avgpool2d``, or ``codesign::global_avgpool`` when the window is the
    whole unpadded plane. ``M`` and ``sh`` are per tensor (scalars).
    """
    op = "avgpool2d"
    t = as_type(op, in_type)
    y_t = as_type(op, out_type) if out_type is not None else t
    check_bits(op, "input bits", t.bits, 1, 8)
    if y_t.bipolar:
        raise ValueError(f"{op}: output type {y_t} not supported (requant outputs have 2..16 bits)")
    check_bits(op, "output bits", y_t.bits, 2, 16)
    x = check_codes(op, "x", int_codes(op, "x", x), t)
    (kh, kw), (s_h, s_w), (ph, pw) = _pool_geometry(op, x, kernel, stride, pad)
    M = scalar_int(op, "M", M, 0, (1 << 24) - 1)
    sh = scalar_int(op, "shift", sh, 0, MAX_SHIFT)
    _, C, H, W = x.shape
    OH, OW = (H + 2 * ph - kh) // s_h + 1, (W + 2 * pw - kw) // s_w + 1
    if x.shape[0] == 0:
        return np.zeros((0, C, OH, OW), dtype=np.int64), {"trips": 0}
    if (kh, kw) == (H, W) and (ph, pw) == (0, 0):
        geom = _GEOM_GLOBAL
        call = ("static Y::storage yg[C];\n        codesign::global_avgpool<X, Y, C, H, W>(xb, M, sh, yg);\n"
                "        for (int c = 0; c < C; ++c) yb[c][0][0] = yg[c];")
        tag = f"{t}-{y_t}-C{C}H{H}W{W}-global"
    else:
        geom = _render_partial(_GEOM_WINDOW, dict(KH=str(kh), KW=str(kw), SH=str(s_h), SW=str(s_w),
                                                  PH=str(ph), PW=str(pw)))
        call = "codesign::avgpool2d<X, Y, C, H, W, KH, KW, SH, SW, PH, PW>(xb, M, sh, yb);"
        tag = f"{t}-{y_t}-C{C}H{H}W{W}-k{kh}x{kw}s{s_h}x{s_w}p{ph}x{pw}"
    src = _render(_POOL, HELPERS=_HELPERS, X=_ctype(t), YDECL=f"typedef {_ctype(y_t)} Y;", C=C, H=H, W=W,
                  GEOM=geom, PARAMS=_REQUANT_PARAMS, CALL=call)
    res = _run(op, src, {"x": x, "M": M, "sh": sh}, tag)
    return _ex(res, res["y"])



# ---------------------------------------------------------------------------
# §11 convolution
# ---------------------------------------------------------------------------

_CONV = r"""@HELPERS@
#include "codesign/conv.h"
typedef @X@ X;
typedef @WT@ WT;
static const int IC = @IC@, H = @H@, W = @W@, OC = @OC@, KH = @KH@, KW = @KW@;
typedef codesign::Conv2d<X, WT, IC, H, W, OC, KH, KW, @SH@, @SW@, @PT@, @PL@, @PB@, @PR@, @DH@, @DW@, @G@, @PE@,
                         @SIMD@, @HAS_BIAS@> U;
static const int K = U::K, OH = U::OH, OW = U::OW;
static U::x_t xb[IC * H][W];
static U::w_t wb[OC][K];
static U::bias_t bb[OC];
static U::acc_t yb[OC * OH][OW];
int main() {
    csim::In in;
    csim::Out out;
    const std::vector<long long>& x = in.i64("x");
    const std::vector<long long>& w = in.i64("w");
    if (x.size() % (IC * H * W) != 0 || w.size() != (std::size_t)OC * K) csim::fail("conv2d: bad input sizes");
    for (int o = 0; o < OC; ++o)
        for (int k = 0; k < K; ++k) wb[o][k] = code_in<WT>(w[o * K + k], "w");
#if @HAS_BIAS@
    const std::vector<long long>& b = in.i64("bias");
    if (b.size() != (std::size_t)OC) csim::fail("conv2d: bias must have OC elements");
    for (int o = 0; o < OC; ++o) bb[o] = U::bias_t(csim::fit_check<32, true>(b[o], "bias"));
#endif
    const std::size_t images = x.size() / (IC * H * W);
    std::vector<long long> y(images * OC * OH * OW);
    for (std::size_t n = 0; n < images; ++n) {
        const long long* xi = &x[n * IC * H * W];
        for (int r = 0; r < IC * H; ++r)
            for (int c = 0; c < W; ++c) xb[r][c] = code_in<X>(xi[r * W + c], "x");
#if @HAS_BIAS@
        U::run(xb, wb, bb, yb);
#else
        U::run(xb, wb, yb);
#endif
        long long* yi = &y[n * OC * OH * OW];
        for (int r = 0; r < OC * OH; ++r)
            for (int c = 0; c < OW; ++c) yi[r * OW + c] = yb[r][c].to_int64();
    }
    std::vector<std::size_t> shape = in.shape("x");
    shape[1] = OC;
    shape[2] = OH;
    shape[3] = OW;
    out.put_i64("y", shape, y);
    out.put_scalar_i64("acc_bits", U::acc_bits);
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    out.put_scalar_i64("swg_trips", (long long)codesign::conv_swg_trips());
    out.put_scalar_i64("xnor_words", (long long)codesign::csim_xnor_words());
    out.put_scalar_i64("mvau_cycles", U::mvau_cycles());
    out.put_scalar_i64("swg_cycles", U::swg_cycles());
    return 0;
}
"""


def conv_operands(op: str, x, w, xt: IntType, wt: IntType, stride, pad, dilation, groups):
    """The checked codes of a §11 convolution's ``x`` (N, C, H, W) and ``w`` (OC, C/groups,
    KH, KW) and its geometry ``(N, IC, H, W, OC, ICg, KH, KW, s_h, s_w, d_h, d_w, pt, pl, pb,
    pr, OH, OW)``; one-line ``ValueError``s naming ``op`` (the dense and sparse csim faces)."""
    from codesign.sim import reference as ref

    x = check_codes(op, "x", int_codes(op, "x", x), xt)
    w = check_codes(op, "w", int_codes(op, "w", w), wt)
    if x.ndim != 4 or w.ndim != 4:
        raise ValueError(f"{op}: need x (N, C, H, W) and w (OC, C/groups, KH, KW), got {x.shape} and {w.shape}")
    if isinstance(groups, (bool, np.bool_)) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"{op}: groups={groups!r} must be an integer >= 1")
    N, IC, H, W = x.shape
    OC, ICg, KH, KW = w.shape
    if IC % groups or OC % groups or ICg != IC // groups:
        raise ValueError(f"{op}: groups={groups} does not fit x {x.shape} and w {w.shape}")
    s_h, s_w = _pair(op, "stride", stride)
    d_h, d_w = _pair(op, "dilation", dilation)
    pt, pl, pb, pr = ref.conv_pads(op, pad)
    OH, OW = ref.conv_geometry(H, W, (KH, KW), (s_h, s_w), (pt, pl, pb, pr), (d_h, d_w), op)
    return x, w, (N, IC, H, W, OC, ICg, KH, KW, s_h, s_w, d_h, d_w, pt, pl, pb, pr, OH, OW)


def conv2d_ex(x, w, bias=None, stride=1, pad=0, dilation=1, groups: int = 1,
              x_type: IntType = IntType(8, False), w_type: IntType = IntType(4, True), *,
              pe: int = 1, simd: int = 1) -> Ex:
    """§11 convolution by ``codesign::Conv2d`` (conv.h): sliding-window generator + MVAU.

    Same arguments as :func:`codesign.sim.reference.conv2d`; ``pe`` (1..OC/groups) and
    ``simd`` (>= 1) choose the folding. The info dict has ``trips`` (the MVAU's pipelined
    iterations, = images * OH * OW * ceil(OC/PE) * ceil(K/SIMD)), ``swg_trips`` (the
    window generator's), ``acc_bits`` (the accumulator width the template chose) and
    ``xnor_words`` (XNOR-popcount lane words evaluated: images * OH * OW * OC * ceil(K/SIMD)
    for bipolar x bipolar, else 0).
    """
    from codesign.sim import reference as ref

    op = "conv2d"
    xt, wt = as_type(op, x_type), as_type(op, w_type)
    for what, t, unsigned_ok in (("activation", xt, True), ("weight", wt, False)):
        check_bits(op, f"{what} bits", t.bits, 1, 8)
        if t.bits == 1 and not t.signed:
            raise ValueError(f"{op}: 1-bit {what} must be bipolar (signed=True)")
        if not unsigned_ok and not t.signed:
            raise ValueError(f"{op}: {what} must be signed or bipolar")
    x, w, (N, IC, H, W, OC, ICg, KH, KW, s_h, s_w, d_h, d_w, pt, pl, pb, pr, OH, OW) = conv_operands(
        op, x, w, xt, wt, stride, pad, dilation, groups)
    if not (isinstance(pe, (int, np.integer)) and 1 <= pe <= OC // groups):
        raise ValueError(f"{op}: pe={pe!r} must be in 1..OC/groups={OC // groups}")
    if not (isinstance(simd, (int, np.integer)) and simd >= 1):
        raise ValueError(f"{op}: simd={simd!r} must be >= 1")
    inputs = {"x": x, "w": w}
    if bias is not None:
        b = int_codes(op, "bias", bias)
        if b.shape != (OC,):
            raise ValueError(f"{op}: bias shape {b.shape} is not ({OC},)")
        inputs["bias"] = b
    K = ICg * KH * KW
    wacc = ref.acc_bits(K, xt, wt, *((-(2**31), 2**31 - 1) if bias is not None else (0, 0)))
    if wacc > 48:
        raise ValueError(f"{op}: K={K} needs a {wacc}-bit accumulator, more than 48 bits (§2, §11)")
    if N == 0:
        return np.zeros((0, OC, OH, OW), dtype=np.int64), {"trips": 0, "swg_trips": 0, "acc_bits": wacc,
                                                           "xnor_words": 0}
    src = _render(_CONV, HELPERS=_HELPERS, X=_ctype(xt), WT=_ctype(wt), IC=IC, H=H, W=W, OC=OC, KH=KH, KW=KW,
                  SH=s_h, SW=s_w, PT=pt, PL=pl, PB=pb, PR=pr, DH=d_h, DW=d_w, G=groups, PE=int(pe), SIMD=int(simd),
                  HAS_BIAS=_b(bias is not None))
    tag = (f"{xt}-{wt}-{IC}x{H}x{W}-o{OC}k{KH}x{KW}s{s_h}x{s_w}p{pt}{pl}{pb}{pr}d{d_h}x{d_w}g{groups}"
           f"-pe{pe}simd{simd}{'-b' if bias is not None else ''}")
    res = _run(op, src, inputs, tag)
    return res["y"], {"trips": int(res["trips"]), "swg_trips": int(res["swg_trips"]),
                      "acc_bits": int(res["acc_bits"]), "xnor_words": int(res["xnor_words"])}


# ---------------------------------------------------------------------------
# The reference's signatures (results only)
# ---------------------------------------------------------------------------

def softmax(x, table, in_type: IntType, eb: int = 8, ob: int = 8) -> np.ndarray:
    """§5 integer softmax over the last axis (see :func:`softmax_ex`)."""
    return softmax_ex(x, table, in_type, eb, ob)[0]


def isqrt(v) -> np.ndarray:
    """floor(sqrt(v)) for 0 <= v < 2^64 (see :func:`isqrt_ex`)."""
    return isqrt_ex(v)[0]


def layernorm(x, params: LayerNormParams, out_type: IntType = IntType(8, True)) -> np.ndarray:
    """§6 integer LayerNorm over the last axis (see :func:`layernorm_ex`)."""
    return layernorm_ex(x, params, out_type)[0]


def xnor_popcount(a_bits, w_bits, K: int, *, pe: int | None = None, simd: int | None = None) -> np.ndarray:
    """§8 XNOR-popcount dot products (see :func:`xnor_popcount_ex`)."""
    return xnor_popcount_ex(a_bits, w_bits, K, pe=pe, simd=simd)[0]


def binary_mvau(a_bits, w_bits, K: int, T=None, out_bias: int = 0, bipolar: bool = False, *,
                pe: int = 1, simd: int | None = None) -> np.ndarray:
    """§8 fused XNOR MVAU + MultiThreshold (see :func:`binary_mvau_ex`)."""
    return binary_mvau_ex(a_bits, w_bits, K, T, out_bias, bipolar, pe=pe, simd=simd)[0]


def threshold(acc, T, out_bias: int = 0, bipolar: bool = False) -> np.ndarray:
    """§8 MultiThreshold (see :func:`threshold_ex`)."""
    return threshold_ex(acc, T, out_bias, bipolar)[0]


def maxpool2d(x, kernel, stride=None, pad=0, in_type: IntType = IntType(8, True)) -> np.ndarray:
    """§9 max pooling (see :func:`maxpool2d_ex`)."""
    return maxpool2d_ex(x, kernel, stride, pad, in_type)[0]


def avgpool2d(x, kernel, M, sh, stride=None, pad=0, in_type: IntType = IntType(8, True),
              out_type: IntType | None = None) -> np.ndarray:
    """§9 average pooling (see :func:`avgpool2d_ex`)."""
    return avgpool2d_ex(x, kernel, M, sh, stride, pad, in_type, out_type)[0]


def conv2d(x, w, bias=None, stride=1, pad=0, dilation=1, groups: int = 1,
           x_type: IntType = IntType(8, False), w_type: IntType = IntType(4, True), *,
           pe: int = 1, simd: int = 1) -> np.ndarray:
    """§11 convolution (see :func:`conv2d_ex`)."""
    return conv2d_ex(x, w, bias, stride, pad, dilation, groups, x_type, w_type, pe=pe, simd=simd)[0]
