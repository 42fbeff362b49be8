"""Block-sparse MVAUs for SIMD-structured pruning: packer, cycle model and C-simulation faces.

:mod:`codesign.quantize.pruning` prunes a layer's weight matrix ``W[OC, K]`` in blocks of
``PE`` rows x ``SIMD`` consecutive columns (a ``Linear``/IR-matmul weight ``w[K, N]`` has
``W = w.T``; a conv weight ``w[OC, IC/G, KH, KW]`` has ``W = w.reshape(OC, -1)``, ``K`` over
``(ic, ky, kx)`` with ``kx`` fastest, conv.h's im2col order). The sparse kernels of
``hls/include/codesign/sparse.h`` store only the blocks holding a non-zero weight:

* :func:`pack_sparse` -> :class:`SparseWeights`: ``row_ptr[NRG + 1]``, ``col_idx[NB]``,
  ``vals[NB, PE, SIMD]`` (CSR over blocks; missing lanes of a partial last row/column group
  hold 0). Deterministic: blocks in row-group order, columns ascending.
* cycles: per input vector (matmul row / conv output pixel) one II = 1 iteration per stored
  block, plus ONE bias-only iteration for each row group that stores no block (it must
  still write its ``PE`` outputs = bias). So ``T = NB + NE`` iterations per vector
  (:func:`sparse_trips`, the ops registry's ``sparse_matmul``/``sparse_conv2d`` trips) and
  :func:`sparse_cycles` adds the pipeline depth. The dense MVAU runs ``NRG * CG``: every
  pruned block of a row group that keeps at least one block is exactly one skipped cycle.
* :func:`sparse_matmul` / :func:`sparse_conv2d` (and ``*_ex``, which also return the
  counted iterations): the reference's signature (the dense op's: sparse storage is an
  implementation detail, the arithmetic is §2/§11's), ``pe``/``simd`` keyword-only; they
  pack ``w``, compile a harness around ``SparseMvau``/``SparseConv2d`` with g++
  (:func:`codesign.hls.csim.run`, cached) and run it.

The harness depends on the configuration and on ``NB``/``NE`` (static trip counts), not on
the data: configurations with equal shapes, folding and (NB, NE) share one compile.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from codesign.sim.checks import as_type, check_bits, check_codes, int_codes
from codesign.sim.reference import IntType

__all__ = ["SparseWeights", "block_mask", "pack_sparse", "matrix_view", "sparse_trips", "sparse_cycles",
           "pipeline_depth", "sparse_matmul", "sparse_matmul_ex", "sparse_conv2d", "sparse_conv2d_ex"]


# ---------------------------------------------------------------------------------------
# Packing
# ---------------------------------------------------------------------------------------

def _pos_int(where: str, what: str, v) -> int:
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ValueError(f"{where}: {what}={v!r} must be a positive integer")
    return int(v)


def matrix_view(w) -> np.ndarray:
    """The ``[OC, K]`` matrix view of a weight given as pruning stores it: 2-D ``[OC, K]``
    as is, a conv weight ``[OC, IC/G, KH, KW]`` flattened to ``[OC, IC/G*KH*KW]``. (An IR
    matmul weight ``w[K, N]`` is passed as ``w.T``.)"""
    a = np.asarray(w)
    if a.ndim < 2:
        raise ValueError(f"sparse: weight of shape {a.shape} has no [OC, K] matrix view (need >= 2 axes)")
    return a.reshape(a.shape[0], -1)


def _padded(m: np.ndarray, pe: int, simd: int) -> np.ndarray:
    OC, K = m.shape
    nrg, cg = -(-OC // pe), -(-K // simd)
    p = np.zeros((nrg * pe, cg * simd), dtype=np.int64)
    p[:OC, :K] = m
    return p.reshape(nrg, pe, cg, simd)


def block_mask(w, pe: int, simd: int) -> np.ndarray:
    """``(NRG, CG)`` booleans: block ``(rg, cg)`` holds a non-zero weight (= it is stored)."""
    pe, simd = _pos_int("block_mask", "pe", pe), _pos_int("block_mask", "simd", simd)
    m = int_codes("block_mask", "w", matrix_view(w))
    return (_padded(m, pe, simd) != 0).any(axis=(1, 3))


@dataclass(frozen=True)
class SparseWeights:
    """A ``[OC, K]`` weight matrix in block-CSR form (``hls/include/codesign/sparse.h``).

    ``row_ptr`` (``NRG + 1``, int64): row group ``rg``'s blocks are ``row_ptr[rg] ..
    row_ptr[rg+1]-1``; ``col_idx`` (``NB``): their column groups, ascending per row group;
    ``vals`` (``NB, PE, SIMD``): ``vals[b, p, j] = W[rg*PE + p, col_idx[b]*SIMD + j]`` (0
    outside ``W``)."""

    oc: int
    k: int
    pe: int
    simd: int
    row_ptr: np.ndarray
    col_idx: np.ndarray
    vals: np.ndarray

    @property
    def row_groups(self) -> int:
        return -(-self.oc // self.pe)

    @property
    def col_groups(self) -> int:
        return -(-self.k // self.simd)

    @property
    def nb(self) -> int:
        """Stored blocks."""
        return int(self.row_ptr[-1])

    @property
    def empty_row_groups(self) -> int:
        """Row groups without a stored block (each costs one bias-only iteration)."""
        return int(np.count_nonzero(np.diff(self.row_ptr) == 0))

    @property
    def density(self) -> float:
        """Fraction of the ``NRG * CG`` blocks that are stored."""
        return self.nb / (self.row_groups * self.col_groups)

    @property
    def iterations_per_vector(self) -> int:
        """``NB + NE``: the kernel's II = 1 iterations per input vector / output pixel."""
        return self.nb + self.empty_row_groups

    def kernel_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(row_ptr, col_idx, vals)`` as the kernel declares them: ``col_idx`` and ``vals``
        have ``max(NB, 1)`` entries (a C++ array needs one; the extra entry is 0, never read)."""
        nba = max(self.nb, 1)
        ci = np.zeros(nba, np.int64)
        ci[:self.nb] = self.col_idx
        v = np.zeros((nba, self.pe, self.simd), np.int64)
        v[:self.nb] = self.vals
        return self.row_ptr.copy(), ci, v

    def to_dense(self) -> np.ndarray:
        """The ``[OC, K]`` matrix back (for checks)."""
        p = np.zeros((self.row_groups, self.pe, self.col_groups, self.simd), dtype=np.int64)
        for rg in range(self.row_groups):
            for b in range(int(self.row_ptr[rg]), int(self.row_ptr[rg + 1])):
                p[rg, :, int(self.col_idx[b]), :] = self.vals[b]
        return p.reshape(self.row_groups * self.pe, self.col_groups * self.simd)[:self.oc, :self.k]


def pack_sparse(w, pe: int, simd: int) -> SparseWeights:
    """Pack integer weights into block-CSR with ``pe`` x ``simd`` blocks (module docstring).

    ``w``: ``[OC, K]`` or a conv weight ``[OC, IC/G, KH, KW]`` (:func:`matrix_view`), integer
    codes. A block is stored iff it holds a non-zero weight; blocks are ordered by row group,
    then column group (deterministic). ``OC % pe`` and ``K % simd`` need not be 0."""
    pe, simd = _pos_int("pack_sparse", "pe", pe), _pos_int("pack_sparse", "simd", simd)
    m = int_codes("pack_sparse", "w", matrix_view(w))
    OC, K = m.shape
    if OC < 1 or K < 1:
        raise ValueError(f"pack_sparse: empty weight matrix {m.shape}")
    blocks = _padded(m, pe, simd)                      # (NRG, PE, CG, SIMD)
    keep = (blocks != 0).any(axis=(1, 3))              # (NRG, CG)
    rg_idx, cg_idx = np.nonzero(keep)                  # C order: row group major, columns ascending
    row_ptr = np.zeros(keep.shape[0] + 1, dtype=np.int64)
    row_ptr[1:] = np.cumsum(keep.sum(axis=1))
    vals = blocks[rg_idx, :, cg_idx, :].astype(np.int64)  # (NB, PE, SIMD)
    return SparseWeights(OC, K, pe, simd, row_ptr, cg_idx.astype(np.int64), vals.reshape(-1, pe, simd))


# ---------------------------------------------------------------------------------------
# Cycle model
# ---------------------------------------------------------------------------------------

def sparse_trips(row_ptr, vectors: int) -> int:
    """II = 1 iterations of the sparse MVAU: ``vectors * sum_rg max(1, blocks of rg)``
    (= ``vectors * (NB + NE)``); the ops registry's ``sparse_matmul``/``sparse_conv2d``."""
    from codesign.accel.ops import get_op
    return get_op("sparse_matmul").trips(row_ptr=row_ptr, vectors=vectors)


def pipeline_depth(simd: int, mul_latency: int = 3) -> int:
    """The MVAU pipeline depth estimate of matmul.h: ``3 + L_mul + ceil(log2(SIMD))`` (L_mul:
    0 for LUT products, about 3 for a DSP48E2). An estimate, not a measured number."""
    return 3 + int(mul_latency) + math.ceil(math.log2(_pos_int("pipeline_depth", "simd", simd)))


def sparse_cycles(sw: SparseWeights, vectors: int, depth: int | None = None) -> int:
    """Cycles of one sparse MVAU call over ``vectors`` input vectors (matmul rows, or conv
    output pixels x images): ``sum_rg max(1, blocks of rg) * vectors + depth``, ``depth``
    defaulting to :func:`pipeline_depth` ``(sw.simd)``. (A sparse conv's window generator
    runs concurrently and needs ``H_used*IC*W + vectors*(NB + NE)`` cycles, see sparse.h.)"""
    d = pipeline_depth(sw.simd) if depth is None else int(depth)
    return sparse_trips(sw.row_ptr, vectors) + d


# ---------------------------------------------------------------------------------------
# C simulation
# ---------------------------------------------------------------------------------------

_MATMUL = r"""@HELPERS@
#include "codesign/sparse.h"
typedef @A@ A;
typedef @W@ W;
static const int K = @K@, N = @N@, PE = @PE@, SIMD = @SIMD@, ROWS = @ROWS@;
typedef codesign::SparseMvau<A, W, K, N, PE, SIMD, @NB@, @NE@, @HAS_BIAS@> U;
static U::a_t a_blk[ROWS][K];
static U::ptr_t rp[U::NRG + 1];
static U::col_t ci[U::NBA];
static U::w_t vals[U::NBA][PE][SIMD];
static U::bias_t bias[N];
static U::acc_t o_blk[ROWS][N];
int main() {
    csim::In in;
    csim::Out out;
    const std::vector<long long>& a = in.i64("a");
    const std::vector<long long>& r = in.i64("row_ptr");
    const std::vector<long long>& c = in.i64("col_idx");
    const std::vector<long long>& v = in.i64("vals");
    if (a.size() % K || r.size() != (std::size_t)U::NRG + 1 || c.size() != (std::size_t)U::NBA ||
        v.size() != (std::size_t)U::NBA * PE * SIMD)
        csim::fail("sparse_matmul: bad input sizes");
    for (int i = 0; i <= U::NRG; ++i) rp[i] = U::ptr_t(csim::fit_check<U::ptr_t::width, false>(r[i], "row_ptr"));
    for (int i = 0; i < U::NBA; ++i) ci[i] = U::col_t(csim::fit_check<U::col_t::width, false>(c[i], "col_idx"));
    for (int i = 0; i < U::NBA * PE * SIMD; ++i) vals[i / (PE * SIMD)][(i / SIMD) % PE][i % SIMD] = code_in<W>(v[i], "vals");
    if (const char* e = U::pattern::check(rp, ci)) csim::fail(std::string("sparse_matmul: ") + e);
#if @HAS_BIAS@
    const std::vector<long long>& b = in.i64("bias");
    if (b.size() != (std::size_t)N) csim::fail("sparse_matmul: bias must have N elements");
    for (int n = 0; n < N; ++n) bias[n] = U::bias_t(csim::fit_check<32, true>(b[n], "bias"));
#endif
    const std::size_t M = a.size() / K;
    std::vector<long long> o(M * N);
    for (std::size_t m0 = 0; m0 < M; m0 += ROWS) {
        for (int rr = 0; rr < ROWS; ++rr)
            for (int k = 0; k < K; ++k) a_blk[rr][k] = m0 + rr < M ? code_in<A>(a[(m0 + rr) * K + k], "a") : U::a_t(0);
#if @HAS_BIAS@
        U::run<ROWS>(a_blk, rp, ci, vals, bias, o_blk);
#else
        U::run<ROWS>(a_blk, rp, ci, vals, o_blk);
#endif
        for (int rr = 0; rr < ROWS && m0 + rr < M; ++rr)
            for (int n = 0; n < N; ++n) o[(m0 + rr) * N + n] = o_blk[rr][n].to_int64();
    }
    out.put_i64("acc", std::vector<std::size_t>{M, (std::size_t)N}, o);
    out.put_scalar_i64("acc_bits", U::acc_bits);
    out.put_scalar_i64("iterations_per_row", U::cycles_per_row());
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    return 0;
}
"""

_CONV = r"""@HELPERS@
#include "codesign/sparse.h"
typedef @X@ X;
typedef @WT@ WT;
static const int IC = @IC@, H = @H@, W = @W@, OC = @OC@, KH = @KH@, KW = @KW@, PE = @PE@, SIMD = @SIMD@;
typedef codesign::SparseConv2d<X, WT, IC, H, W, OC, KH, KW, @SH@, @SW@, @PT@, @PL@, @PB@, @PR@, @DH@, @DW@, @G@,
                               PE, SIMD, @NB@, @NE@, @HAS_BIAS@> U;
static const int OH = U::OH, OW = U::OW;
static U::x_t xb[IC * H][W];
static U::ptr_t rp[U::NRG + 1];
static U::col_t ci[U::NBA];
static U::w_t vals[U::NBA][PE][SIMD];
static U::bias_t bb[OC];
static U::acc_t yb[OC * OH][OW];
int main() {
    csim::In in;
    csim::Out out;
    const std::vector<long long>& x = in.i64("x");
    const std::vector<long long>& r = in.i64("row_ptr");
    const std::vector<long long>& c = in.i64("col_idx");
    const std::vector<long long>& v = in.i64("vals");
    if (x.size() % (IC * H * W) || r.size() != (std::size_t)U::NRG + 1 || c.size() != (std::size_t)U::NBA ||
        v.size() != (std::size_t)U::NBA * PE * SIMD)
        csim::fail("sparse_conv2d: bad input sizes");
    for (int i = 0; i <= U::NRG; ++i) rp[i] = U::ptr_t(csim::fit_check<U::ptr_t::width, false>(r[i], "row_ptr"));
    for (int i = 0; i < U::NBA; ++i) ci[i] = U::col_t(csim::fit_check<U::col_t::width, false>(c[i], "col_idx"));
    for (int i = 0; i < U::NBA * PE * SIMD; ++i) vals[i / (PE * SIMD)][(i / SIMD) % PE][i % SIMD] = code_in<WT>(v[i], "vals");
    if (const char* e = U::pattern::check(rp, ci)) csim::fail(std::string("sparse_conv2d: ") + e);
#if @HAS_BIAS@
    const std::vector<long long>& b = in.i64("bias");
    if (b.size() != (std::size_t)OC) csim::fail("sparse_conv2d: bias must have OC elements");
    for (int o = 0; o < OC; ++o) bb[o] = U::bias_t(csim::fit_check<32, true>(b[o], "bias"));
#endif
    const std::size_t images = x.size() / (IC * H * W);
    std::vector<long long> y(images * OC * OH * OW);
    for (std::size_t n = 0; n < images; ++n) {
        const long long* xi = &x[n * IC * H * W];
        for (int rr = 0; rr < IC * H; ++rr)
            for (int cc = 0; cc < W; ++cc) xb[rr][cc] = code_in<X>(xi[rr * W + cc], "x");
#if @HAS_BIAS@
        U::run(xb, rp, ci, vals, bb, yb);
#else
        U::run(xb, rp, ci, vals, yb);
#endif
        long long* yi = &y[n * OC * OH * OW];
        for (int rr = 0; rr < OC * OH; ++rr)
            for (int cc = 0; cc < OW; ++cc) yi[rr * OW + cc] = yb[rr][cc].to_int64();
    }
    out.put_i64("y", std::vector<std::size_t>{images, (std::size_t)OC, (std::size_t)OH, (std::size_t)OW}, y);
    out.put_scalar_i64("acc_bits", U::acc_bits);
    out.put_scalar_i64("trips", (long long)codesign::csim_trips());
    out.put_scalar_i64("swg_trips", (long long)codesign::conv_swg_trips());
    out.put_scalar_i64("mvau_cycles", U::mvau_cycles());
    out.put_scalar_i64("swg_cycles", U::swg_cycles());
    return 0;
}
"""


def _types(op: str, a_type, w_type) -> tuple[IntType, IntType]:
    at, wt = as_type(op, a_type), as_type(op, w_type)
    check_bits(op, "activation bits", at.bits, 1, 8)
    if at.bits == 1 and not at.signed:
        raise ValueError(f"{op}: 1-bit activation must be bipolar (signed=True)")
    check_bits(op, "weight bits", wt.bits, 1, 8)
    if not wt.signed or wt.bits < 2:
        raise ValueError(f"{op}: weight type {wt} not supported: the sparse MVAU takes signed 2..8-bit weights "
                         "(a bipolar weight has no 0 and cannot be pruned)")
    return at, wt


def _packed_inputs(sw: SparseWeights) -> dict[str, np.ndarray]:
    return dict(zip(("row_ptr", "col_idx", "vals"), sw.kernel_arrays()))


def _bias(op: str, bias, n: int) -> np.ndarray | None:
    if bias is None:
        return None
    b = int_codes(op, "bias", bias)
    if b.shape not in ((), (n,)):
        raise ValueError(f"{op}: bias shape {b.shape} does not match {n} output channels")
    b = np.ascontiguousarray(np.broadcast_to(b, (n,)))
    if b.min() < -(2**31) or b.max() > 2**31 - 1:
        raise ValueError(f"{op}: bias outside int32: [{int(b.min())}, {int(b.max())}]")
    return b


def sparse_matmul_ex(a, w, bias=None, a_type: IntType = IntType(8, False), w_type: IntType = IntType(4, True),
                     check: bool = True, *, pe: int = 1, simd: int = 1, block_rows: int = 2
                     ) -> tuple[np.ndarray, dict[str, int]]:
    """:func:`sparse_matmul` also returning ``{"trips", "iterations_per_row", "acc_bits", "nb", "ne"}``;
    ``trips`` = rows (padded to a multiple of ``block_rows``) x (NB + NE)."""
    from codesign.hls.csim_nonlinear import _HELPERS, _b, _ctype, _render, _run
    from codesign.sim import reference as ref

    op = "sparse_matmul"
    at, wt = _types(op, a_type, w_type)
    a, w = int_codes(op, "a", a), int_codes(op, "w", w)
    if w.ndim != 2 or a.ndim < 1:
        raise ValueError(f"{op}: need a (..., K) and a constant 2-D w (K, N), got {a.shape} and {w.shape}")
    K, N = w.shape
    if a.shape[-1] != K or K < 1 or N < 1:
        raise ValueError(f"{op}: inner dimensions differ or are empty: a {a.shape} vs w {w.shape}")
    check_codes(op, "a", a, at)
    check_codes(op, "w", w, wt)
    pe, simd = _pos_int(op, "pe", pe), _pos_int(op, "simd", simd)
    rows = _pos_int(op, "block_rows", block_rows)
    if pe > N:
        raise ValueError(f"{op}: pe={pe} must be <= N={N}")
    b = _bias(op, bias, N)
    need = ref.acc_bits(K, at, wt, *((-(2**31), 2**31 - 1) if b is not None else (0, 0)))
    if need > 48:
        raise ValueError(f"{op}: K={K} needs a {need}-bit accumulator, more than 48 bits (§2)")
    sw = pack_sparse(w.T, pe, simd)
    out_shape = a.shape[:-1] + (N,)
    a2 = np.ascontiguousarray(a.reshape(-1, K))
    info0 = {"nb": sw.nb, "ne": sw.empty_row_groups, "iterations_per_row": sw.iterations_per_vector,
             "acc_bits": need}
    if a2.shape[0] == 0:
        return np.zeros(out_shape, dtype=np.int64), {**info0, "trips": 0}
    src = _render(_MATMUL, HELPERS=_HELPERS, A=_ctype(at), W=_ctype(wt), K=K, N=N, PE=pe, SIMD=simd, ROWS=rows,
                  NB=sw.nb, NE=sw.empty_row_groups, HAS_BIAS=_b(b is not None))
    inputs = {"a": a2, **_packed_inputs(sw)}
    if b is not None:
        inputs["bias"] = b
    res = _run(op, src, inputs, f"{at}-{wt}-k{K}n{N}-pe{pe}simd{simd}-nb{sw.nb}ne{sw.empty_row_groups}")
    info = {**info0, **{k: int(res[k]) for k in ("acc_bits", "iterations_per_row", "trips")}}
    return res["acc"].reshape(out_shape), info


def sparse_matmul(a, w, bias=None, a_type: IntType = IntType(8, False), w_type: IntType = IntType(4, True),
                  check: bool = True, *, pe: int = 1, simd: int = 1, block_rows: int = 2) -> np.ndarray:
    """§2 ``matmul(a, w, bias, a_type, w_type)`` through ``codesign::SparseMvau`` (sparse.h):
    ``w`` (K, N) is packed with :func:`pack_sparse` (``w.T``, ``pe`` x ``simd`` blocks; any
    ``pe <= N``, ``simd >= 1``, no divisibility needed) and only its non-zero blocks are
    read. Result ``==`` :func:`codesign.sim.reference.matmul`. ``check`` is accepted for
    signature compatibility (codes are always checked)."""
    return sparse_matmul_ex(a, w, bias, a_type, w_type, check, pe=pe, simd=simd, block_rows=block_rows)[0]


def sparse_conv2d_ex(x, w, bias=None, stride=1, pad=0, dilation=1, groups: int = 1,
                     x_type: IntType = IntType(8, False), w_type: IntType = IntType(4, True), *,
                     pe: int = 1, simd: int = 1) -> tuple[np.ndarray, dict[str, int]]:
    """:func:`sparse_conv2d` also returning ``{"trips", "swg_trips", "acc_bits", "nb", "ne"}``:
    ``trips`` = images x OH x OW x (NB + NE) (the MVAU), ``swg_trips`` the window generator's
    (images x (H_used*IC*W + OH*OW*(NB + NE)))."""
    from codesign.hls.csim_nonlinear import _HELPERS, _b, _ctype, _render, _run, conv_operands
    from codesign.sim import reference as ref

    op = "sparse_conv2d"
    xt, wt = _types(op, x_type, w_type)
    x, w, (N, IC, H, W, OC, ICg, KH, KW, s_h, s_w, d_h, d_w, pt, pl, pb, pr, OH, OW) = conv_operands(
        op, x, w, xt, wt, stride, pad, dilation, groups)
    pe, simd = _pos_int(op, "pe", pe), _pos_int(op, "simd", simd)
    ocg = OC // groups
    if pe > ocg or (groups > 1 and ocg % pe):
        raise ValueError(f"{op}: pe={pe} must be <= OC/groups={ocg} and, with groups > 1, divide it")
    b = _bias(op, bias, OC)
    K = ICg * KH * KW
    need = ref.acc_bits(K, xt, wt, *((-(2**31), 2**31 - 1) if b is not None else (0, 0)))
    if need > 48:
        raise ValueError(f"{op}: K={K} needs a {need}-bit accumulator, more than 48 bits (§2, §11)")
    sw = pack_sparse(w, pe, simd)
    info0 = {"nb": sw.nb, "ne": sw.empty_row_groups, "acc_bits": need}
    if N == 0:
        return np.zeros((0, OC, OH, OW), dtype=np.int64), {**info0, "trips": 0, "swg_trips": 0}
    src = _render(_CONV, HELPERS=_HELPERS, X=_ctype(xt), WT=_ctype(wt), IC=IC, H=H, W=W, OC=OC, KH=KH, KW=KW,
                  SH=s_h, SW=s_w, PT=pt, PL=pl, PB=pb, PR=pr, DH=d_h, DW=d_w, G=groups, PE=pe, SIMD=simd,
                  NB=sw.nb, NE=sw.empty_row_groups, HAS_BIAS=_b(b is not None))
    inputs = {"x": x, **_packed_inputs(sw)}
    if b is not None:
        inputs["bias"] = b
    tag = (f"{xt}-{wt}-{IC}x{H}x{W}-o{OC}k{KH}x{KW}s{s_h}x{s_w}p{pt}{pl}{pb}{pr}d{d_h}x{d_w}g{groups}"
           f"-pe{pe}simd{simd}-nb{sw.nb}ne{sw.empty_row_groups}")
    res = _run(op, src, inputs, tag)
    info = {**info0, **{k: int(res[k]) for k in ("acc_bits", "trips", "swg_trips")}}
    return res["y"], info


def sparse_conv2d(x, w, bias=None, stride=1, pad=0, dilation=1, groups: int = 1,
                  x_type: IntType = IntType(8, False), w_type: IntType = IntType(4, True), *,
                  pe: int = 1, simd: int = 1) -> np.ndarray:
    """§11 ``conv2d(x, w, bias, stride, pad, dilation, groups, x_type, w_type)`` through
    ``codesign::SparseConv2d`` (sparse.h): ``w`` is packed with :func:`pack_sparse` (matrix
    view ``w.reshape(OC, -1)``, ``pe`` x ``simd`` blocks; ``pe <= OC/groups``, dividing it
    when ``groups > 1``) and only its non-zero blocks are read. Result ``==``
    :func:`codesign.sim.reference.conv2d`."""
    return sparse_conv2d_ex(x, w, bias, stride, pad, dilation, groups, x_type, w_type, pe=pe, simd=simd)[0]
