"""The op registry: every integer op of the arithmetic contract, with its faces side by side.

One entry per op of ``docs/arithmetic.md``. Each names

* ``reference``: the numpy function in :mod:`codesign.sim.reference`;
* ``csim``: the wrapper in :mod:`codesign.hls.csim_arith` / :mod:`codesign.hls.csim_nonlinear`
  that runs the HLS template through g++ with the same signature (its ``*_ex`` twin
  also returns the counted pipeline iterations);
* ``header`` / ``entry``: the HLS C++ header and template in ``hls/include/``;
* ``rtl``: the Verilog module (the engine issue adds these; ``None`` until then);
* ``trips``: the cost model's cycle count of the kernel's pipelined (II = 1) loops as a
  function of shape and folding. C-simulation counts the same iterations
  (``CODESIGN_TRIP()`` in every pipelined loop body), and ``tests/test_ops.py`` checks
  formula == count for every op. Wall-clock cycles add each loop's pipeline fill and,
  for softmax/LayerNorm, divider latency; those constants come from RTL simulation
  (engine issue) and are deliberately not guessed here;
* ``resources``: LUT/FF/DSP/BRAM estimate; ``None`` until the engine issue calibrates it
  against Yosys. Asking for it raises ``NotImplementedError`` rather than inventing numbers.

The registry knows no board and imports neither torch nor the csim driver at import time.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping

__all__ = ["OpSpec", "OPS", "get_op", "header_path"]


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _elementwise(n: int, pe: int = 1) -> int:
    """n elements, pe per cycle."""
    if n < 0 or pe < 1:
        raise ValueError(f"elementwise cost: n={n}, pe={pe}")
    return _cdiv(n, pe)


def _matmul(rows: int, K: int, N: int, pe: int = 1, simd: int = 1) -> int:
    """FINN MVAU: rows x (N/PE) x (K/SIMD); PE | N and SIMD | K (§2)."""
    if N % pe or K % simd:
        raise ValueError(f"matmul cost: pe={pe} must divide N={N} and simd={simd} must divide K={K}")
    return rows * (N // pe) * (K // simd)


def _binary_mvau(rows: int, K: int, N: int, pe: int = 1, simd: int = 1) -> int:
    """XNOR MVAU: rows x (N/PE) x ceil(K/SIMD); the last SIMD fold is masked (§8)."""
    if N % pe:
        raise ValueError(f"binary_mvau cost: pe={pe} must divide N={N}")
    return rows * (N // pe) * _cdiv(K, simd)


def _softmax(rows: int, N: int) -> int:
    """Three passes of N per row: max, lookup + sum, normalise (§5)."""
    return rows * 3 * N


def _layernorm(rows: int, H: int) -> int:
    """Three passes of H per row (sum; d and SS; divide-scale-shift) and 32 isqrt steps (§6)."""
    return rows * (3 * H + 32)


def _isqrt(n: int) -> int:
    """32 digit-by-digit steps per value (§6)."""
    return 32 * n


def _pool(C: int, OH: int, OW: int, KH: int, KW: int) -> int:
    """One window element per cycle: C x OH x OW x KH x KW (§9)."""
    return C * OH * OW * KH * KW


def _conv2d(OH: int, OW: int, OC: int, K: int, pe: int = 1, simd: int = 1, images: int = 1) -> int:
    """FINN MVAU over the sliding-window stream (§11): images x OH x OW x ceil(OC/PE) x
    ceil(K/SIMD), K = IC/groups x KH x KW; 1 <= PE <= OC/groups (conv.h). Wall-clock cycles
    add the pipeline depth D ~ 3 + L_mul + ceil(log2(SIMD)) (as matmul) and the window
    generator, which runs concurrently (DATAFLOW) and needs H_used*IC*W + OH*OW*G*ceil(K/SIMD)
    cycles (``Conv2d::swg_cycles``): the call takes about max of the two plus both depths."""
    if min(OH, OW, OC, K, pe, simd) < 1 or images < 0:
        raise ValueError(f"conv2d cost: OH={OH}, OW={OW}, OC={OC}, K={K}, pe={pe}, simd={simd} must be >= 1")
    return images * OH * OW * _cdiv(OC, pe) * _cdiv(K, simd)


def _sparse_mvau(row_ptr, vectors: int) -> int:
    """Block-sparse MVAU (sparse.h): vectors x sum over row groups of max(1, stored blocks),
    i.e. vectors x (NB + NE); an empty row group costs one bias-only iteration (§2, §11)."""
    rp = [int(v) for v in row_ptr]
    if len(rp) < 2 or rp[0] != 0 or any(b < a for a, b in zip(rp, rp[1:])) or vectors < 0:
        raise ValueError(f"sparse MVAU cost: row_ptr must rise from 0 (got {rp[:8]}...), vectors={vectors} >= 0")
    return int(vectors) * sum(max(1, b - a) for a, b in zip(rp, rp[1:]))


@dataclass(frozen=True)
class OpSpec:
    name: str
    section: str
    summary: str
    reference: str
    csim: str
    header: str
    entry: str
    trips: Callable[..., int]
    rtl: str | None = None
    resources: Callable[..., Mapping[str, int]] | None = None

    def reference_fn(self) -> Callable:
        return _resolve(self.reference)

    def csim_fn(self) -> Callable:
        return _resolve(self.csim)

    def csim_ex_fn(self) -> Callable:
        return _resolve(self.csim + "_ex")

    def estimate_resources(self, **kw) -> Mapping[str, int]:
        if self.resources is None:
            raise NotImplementedError(f"{self.name}: resource model lands with the engine issue "
                                      "(calibrated against Yosys); no estimate is invented before that")
        return self.resources(**kw)


def _resolve(dotted: str) -> Callable:
    mod, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(mod), attr)


def header_path(spec: OpSpec) -> Path:
    """Path of the op's HLS header inside the installed package."""
    return Path(importlib.import_module("codesign.hls").__file__).parent / "include" / spec.header


_REF = "codesign.sim.reference."
_AR = "codesign.hls.csim_arith."
_NL = "codesign.hls.csim_nonlinear."
_SP = "codesign.hls.sparse."

OPS: Mapping[str, OpSpec] = {s.name: s for s in [
    OpSpec("quantize", "§1", "float32 -> code, QONNX Quant rounding modes, bipolar at 1 bit",
           _REF + "quantize", _AR + "quantize", "codesign/quant.h", "quantize_row", _elementwise),
    OpSpec("dequantize", "§1", "code -> float32, fl32(q * s)",
           _REF + "dequantize", _AR + "dequantize", "codesign/quant.h", "dequantize_row", _elementwise),
    OpSpec("matmul", "§2", "acc = sum a*w + b, PE/SIMD-folded MVAU, exact accumulator width",
           _REF + "matmul", _AR + "matmul", "codesign/matmul.h", "matmul", _matmul),
    OpSpec("requant", "§3", "sat(rshr(acc * M, sh)), dyadic per-channel multiplier",
           _REF + "requant", _AR + "requant", "codesign/requant.h", "requant_row", _elementwise),
    OpSpec("lut", "§4", "table[bit pattern of q], 2^b-entry ROM",
           _REF + "lut", _AR + "lut", "codesign/lut.h", "lut_row", _elementwise),
    OpSpec("softmax", "§5", "max, exp LUT, 32-bit sum, one reciprocal per row, rshr",
           _REF + "softmax", _NL + "softmax", "codesign/softmax.h", "softmax_row", _softmax),
    OpSpec("isqrt", "§6", "floor(sqrt(v)), digit-by-digit, 32 steps, no divider",
           _REF + "isqrt", _NL + "isqrt", "codesign/layernorm.h", "isqrt", _isqrt),
    OpSpec("layernorm", "§6", "integer mean/variance, isqrt, per-element division, fixed-point gamma/beta",
           _REF + "layernorm", _NL + "layernorm", "codesign/layernorm.h", "layernorm_row", _layernorm),
    OpSpec("add", "§7", "sat(rshr(a*Ma + b*Mb, sh)), one shared shift",
           _REF + "add", _AR + "add", "codesign/add.h", "add_row", _elementwise),
    OpSpec("xnor_popcount", "§8", "binary MVAU: 2*popcount(XNOR) - K, PE/SIMD-folded",
           _REF + "xnor_popcount", _NL + "xnor_popcount", "codesign/binary.h", "binary_mvau", _binary_mvau),
    OpSpec("threshold", "§8", "MultiThreshold: count of acc >= T[c, t] + out_bias",
           _REF + "threshold", _NL + "threshold", "codesign/binary.h", "multithreshold", _elementwise),
    OpSpec("maxpool2d", "§9", "window max, padding holds lo",
           _REF + "maxpool2d", _NL + "maxpool2d", "codesign/pool.h", "maxpool2d", _pool),
    OpSpec("avgpool2d", "§9", "window sum then dyadic requant (divisor kh*kw)",
           _REF + "avgpool2d", _NL + "avgpool2d", "codesign/pool.h", "avgpool2d", _pool),
    OpSpec("conv2d", "§11", "sliding-window generator + PE/SIMD-folded MVAU, exact accumulator width",
           _REF + "conv2d", _NL + "conv2d", "codesign/conv.h", "conv2d", _conv2d),
    # block-sparse storage of the same ops (pruned PE x SIMD weight blocks are skipped):
    # the reference is the dense op's, the arithmetic is unchanged
    OpSpec("sparse_matmul", "§2", "matmul with block-CSR constant weights: one cycle per stored PE x SIMD block",
           _REF + "matmul", _SP + "sparse_matmul", "codesign/sparse.h", "sparse_matmul", _sparse_mvau),
    OpSpec("sparse_conv2d", "§11", "conv2d with block-CSR weights: one window chunk and cycle per stored block",
           _REF + "conv2d", _SP + "sparse_conv2d", "codesign/sparse.h", "sparse_conv2d", _sparse_mvau),
]}


def get_op(name: str) -> OpSpec:
    try:
        return OPS[name]
    except KeyError:
        raise ValueError(f"unknown op {name!r} (supported: {', '.join(OPS)})") from None

