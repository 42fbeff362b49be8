"""HLS emitter: a codesign IR (``docs/ir.md``) -> a self-contained Vitis HLS project.

:func:`emit_project` writes one folder (deterministic: the same IR and inputs give
byte-identical files):

* ``<top>.cpp`` / ``<top>.h`` -- the top function. One call processes ONE sample: integer
  codes in (the outputs of the IR's boundary ``quantize`` ops; the host quantizes floats)
  and integer codes out (the inputs of the boundary ``dequantize`` ops; the host
  dequantizes). Ports: one ``m_axi`` pointer per input (bundle ``gmem0``), per output
  (``gmem1``) and one byte pointer to the packed weights (``gmem2``), each with a ``depth``
  for cosim; ``s_axilite`` for the pointers' offsets and ``return``. Inside: a static
  on-chip buffer per IR tensor, declared ``[R][C]`` (``C`` = last axis, ``R`` = product of
  the other non-batch axes), one call per IR op into the kernel library
  (``include/codesign/*.h``) with static shapes and code types from the IR, structural ops
  as plain loops. Every port element is a plain signed C integer (``int8_t`` .. ``int64_t``,
  the smallest holding the tensor's values). The matmul / conv2d kernels are unfolded
  (PE = SIMD = 1) unless ``folding`` names them (:func:`resolve_folding`: the requested
  (PE, SIMD), or the nearest folding the kernel accepts; README.md lists what was emitted).
  That is the ``"buffers"`` style; ``emit_project(..., style="stream")`` (and ``"auto"``
  for CNN IRs) emits the same ports and loader followed by one DATAFLOW region of stream
  stages instead (:mod:`codesign.hls.stream_emit`).
* ``weights.bin`` / ``weights.h`` -- every IR constant, little-endian, each aligned to 8
  bytes, stored in the smallest of 1/2/4/8 bytes (signed iff its type has negative codes)
  that holds its code type; ``weights.h`` gives each constant's offset, count and byte
  width. **Loader cost**: at the start of every call the kernel copies each constant from
  the weight pointer into its on-chip array, one element per ``bytes`` cycles (byte reads
  over ``gmem2``), i.e. about ``WEIGHTS_BYTES`` cycles per call in total (plus the AXI
  latency per burst). Keeping the weights resident across calls comes with the engine.
* ``tb.cpp`` + ``golden/inputs.bin`` / ``golden/outputs.bin`` -- the C testbench and the
  golden vectors computed by :func:`codesign.sim.run_ir.run_reference` (format below).
* ``include/codesign/*.h`` -- a copy of the kernel library.
* ``run_hls.tcl`` -- csim, csynth, cosim, export (``vitis_hls -f run_hls.tcl``).
* ``README.md`` -- the files, the commands, the binary formats.

Golden vector format (``golden/inputs.bin``, ``golden/outputs.bin``), little-endian::

    "CSGV"  u32 version (1)  u32 cases  u32 arrays  u32 count[arrays]
    int64 data: for each case, for each array (port order), count[a] codes in C order

:func:`run_project_csim` compiles ``tb.cpp`` + ``<top>.cpp`` with g++ against the Xilinx
``ap_types`` headers (cached by content) and runs it in the project folder.
"""
from __future__ import annotations

import hashlib
import math
import os
import re
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from codesign.accel.boards import Board
from codesign.accel.ir import IR, CodeType, Op, Tensor, twos_complement_bits
from codesign.hls import csim
from codesign.hls.naming import Namer

__all__ = ["emit_project", "run_project_csim", "CsimReport", "SUPPORTED_OPS", "GOLDEN_MAGIC", "FoldChoice",
           "resolve_folding", "FOLDED_OPS", "STYLES"]

SUPPORTED_OPS = ("matmul", "conv2d", "requant", "threshold", "add", "lut", "softmax", "layernorm",
                 "maxpool2d", "avgpool2d", "reshape", "flatten", "identity", "transpose", "gather", "concat")
"""Accelerator ops the emitter handles (plus the host boundary ops quantize/dequantize)."""

GOLDEN_MAGIC = b"CSGV"
GOLDEN_VERSION = 1
SOLUTION = "solution1"
HLS_PROJECT = "codesign_prj"

# Names the generated code uses itself; every IR-derived identifier also carries a prefix
# (p_ ports, b_ buffers, k_ constants, t_ temporaries), so none can clash with these.
RESERVED = ("weights", "cs_sint", "cs_uint", "cs_rd", "codesign", "main", "case_idx", "i", "r", "c")

#: Top-level styles of ``emit_project``: "buffers" (one function over static per-tensor
#: buffers), "stream" (a DATAFLOW region of stream stages, codesign.hls.stream_emit) and
#: "auto" (stream for an IR with a conv2d whose ops all have a stream form, else buffers).
STYLES = ("auto", "buffers", "stream")

#: IR ops whose kernels take a folding (PE, SIMD): ``emit_project(..., folding=...)``.
FOLDED_OPS = ("matmul", "conv2d")
#: Xilinx ap_int's default width limit: conv.h's window chunk carries an ``ap_uint<SIMD>`` mask.
AP_INT_MAX_W = 1024

HEADERS = ("types.h", "matmul.h", "requant.h", "add.h", "lut.h", "softmax.h", "layernorm.h", "binary.h", "pool.h",
           "conv.h")


# ---------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------

def _unsupported(op: Op, why: str | None = None) -> NotImplementedError:
    if why:
        return NotImplementedError(f"emit: op '{op.name}' ({op.op}): {why}")
    return NotImplementedError(f"emit: op '{op.name}' ({op.op}) is not supported by the HLS emitter yet; "
                               f"supported: {', '.join(SUPPORTED_OPS)}")


def _b(v: bool) -> str:
    return "true" if v else "false"


def _intt(t: CodeType) -> str:
    return f"codesign::IntT<{t.bits}, {_b(t.signed)}, {_b(t.narrow)}>"


def _sint(w: int) -> str:
    return f"cs_sint<{w}>"


def _port_ctype(lo: int, hi: int) -> str:
    w = twos_complement_bits(lo, hi)
    for n in (8, 16, 32, 64):
        if w <= n:
            return f"int{n}_t"
    raise ValueError(f"values [{lo}, {hi}] do not fit int64")


def _rc(shape: tuple[int, ...]) -> tuple[int, int]:
    """(R, C) of a tensor's on-chip buffer: shape without the batch axis, C the last axis."""
    s = tuple(shape[1:])
    if not s:
        return 1, 1
    return max(1, math.prod(s[:-1])), s[-1]


def _strides(shape) -> list[int]:
    st, acc = [], 1
    for d in reversed(list(shape)):
        st.append(acc)
        acc *= d
    return list(reversed(st))


def _elem(buf: str, idx: str, C: int) -> str:
    if C == 1:
        return f"{buf}[{idx}][0]"
    return f"{buf}[({idx}) / {C}][({idx}) % {C}]"


@dataclass
class _Buf:
    name: str   # C++ identifier
    cls: str    # type class (IntT<...> / cs_sint<W> / cs_uint<W>): storage, value(), encode()
    R: int
    C: int
    shape: tuple[int, ...]  # without the batch axis


@dataclass
class _Port:
    name: str
    ctype: str
    buf: _Buf
    tensor: str


# ---------------------------------------------------------------------------------------
# folding (PE, SIMD) of the matmul / conv2d kernels
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FoldChoice:
    """The folding one IR op's kernel is emitted with.

    ``requested``: the ``(PE, SIMD)`` asked for (``emit_project``'s ``folding``);
    ``PE``/``SIMD``: what the emitted kernel's template arguments are; ``kernel``: the
    kernel-library unit (``Mvau``, ``Conv2d``, ``SparseMvau``, ``SparseConv2d``); ``note``:
    one line saying why the emitted folding differs from the request (``None`` when equal)."""

    name: str
    op: str
    kernel: str
    requested: tuple[int, int]
    PE: int
    SIMD: int
    note: str | None = None

    @property
    def equal(self) -> bool:
        """Whether the kernel was emitted with exactly the requested folding."""
        return (self.PE, self.SIMD) == tuple(self.requested)

    def as_dict(self) -> dict:
        return {"name": self.name, "op": self.op, "kernel": self.kernel, "PE": self.PE, "SIMD": self.SIMD,
                "requested": {"PE": int(self.requested[0]), "SIMD": int(self.requested[1])},
                "equal": self.equal, "note": self.note}


def _largest_divisor(n: int, at_most: int) -> int:
    """The largest divisor of ``n`` that is ``<= at_most`` (at least 1)."""
    return max(d for d in range(1, max(1, min(n, at_most)) + 1) if n % d == 0)


def _fold_arg(name: str, value) -> tuple[int, int]:
    try:
        pe, simd = value
    except (TypeError, ValueError):
        raise ValueError(f"emit: folding[{name!r}] = {value!r} is not a (PE, SIMD) pair") from None
    for what, v in (("PE", pe), ("SIMD", simd)):
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"emit: folding[{name!r}]: {what}={v!r} must be an integer >= 1")
    return int(pe), int(simd)


def _fold_op(ir: IR, op: Op, requested: tuple[int, int]) -> FoldChoice:
    """What ``op``'s kernel accepts of ``requested`` (see :func:`resolve_folding`)."""
    pe, simd = requested
    if "sparse" in op.attrs:  # the block-sparse kernels are packed with their own block shape
        sp = op.attrs["sparse"]
        kernel = "SparseMvau" if op.op == "matmul" else "SparseConv2d"
        epe, esimd = int(sp["pe"]), int(sp["simd"])
        note = None if (epe, esimd) == (pe, simd) else (
            f"block-sparse kernel ({kernel}): emitted with its pruning block shape PE={epe}, SIMD={esimd} "
            f"(attrs['sparse']), not the requested PE={pe}, SIMD={simd}")
        return FoldChoice(op.name, op.op, kernel, (pe, simd), epe, esimd, note)
    notes = []
    if op.op == "matmul":
        K = int(ir.tensors[op.inputs[0]].shape[-1])
        N = int(ir.tensors[op.outputs[0]].shape[-1])
        epe, esimd = _largest_divisor(N, pe), _largest_divisor(K, simd)
        if epe != pe:
            notes.append(f"PE={pe} is not accepted by Mvau (needs N % PE == 0, N = {N}): emitted PE={epe}, "
                         f"the largest divisor of {N} not above {pe}")
        if esimd != simd:
            notes.append(f"SIMD={simd} is not accepted by Mvau (needs K % SIMD == 0, K = {K}): emitted "
                         f"SIMD={esimd}, the largest divisor of {K} not above {simd}")
        return FoldChoice(op.name, op.op, "Mvau", (pe, simd), epe, esimd, "; ".join(notes) or None)
    # conv2d: 1 <= PE <= OC/G (conv.h), SIMD >= 1 (the last fold is masked), an ap_uint<SIMD> mask
    OC = int(ir.tensors[op.outputs[0]].shape[1])
    G = int(op.attrs.get("groups", 1))
    ocg = max(1, OC // G)
    epe, esimd = min(pe, ocg), min(simd, AP_INT_MAX_W)
    if epe != pe:
        notes.append(f"PE={pe} is not accepted by Conv2d (needs PE <= OC/groups = {OC}/{G} = {ocg}): "
                     f"emitted PE={epe}")
    if esimd != simd:
        notes.append(f"SIMD={simd} is not accepted by Conv2d (its window mask is an ap_uint<SIMD>, at most "
                     f"{AP_INT_MAX_W} bits): emitted SIMD={esimd}")
    return FoldChoice(op.name, op.op, "Conv2d", (pe, simd), epe, esimd, "; ".join(notes) or None)


def resolve_folding(ir: IR, folding: Mapping[str, tuple[int, int]] | None) -> list[FoldChoice]:
    """The folding :func:`emit_project` emits for ``folding`` (``{IR op name: (PE, SIMD)}``),
    one :class:`FoldChoice` per named op, in IR op order; ``[]`` for ``None``.

    The kernels' constraints decide what is emitted when the request is not accepted:
    ``Mvau`` (matmul.h) needs ``N % PE == 0`` and ``K % SIMD == 0``: the largest divisor not
    above the request is emitted; ``Conv2d`` (conv.h) needs ``1 <= PE <= OC/groups`` and
    ``SIMD <= 1024`` (PE need not divide OC; a SIMD that does not divide K masks the last
    fold): the request is clamped to the bound. The block-sparse kernels (ops with
    ``attrs["sparse"]``) keep their pruning block shape. Each difference carries a one-line
    ``note``. Ops not named in ``folding`` are emitted with PE = SIMD = 1 and not listed.

    Raises ``ValueError`` (one line) for a name that is not an accelerator matmul/conv2d
    op of ``ir`` or a value that is not a pair of integers >= 1, and the emitter's
    ``NotImplementedError`` for an op it cannot emit at all (e.g. ``xnor_popcount``)."""
    if folding is None:
        return []
    ops = {op.name: op for op in ir.ops}
    req = {}
    for name in sorted(folding):
        op = ops.get(name)
        if op is None:
            raise ValueError(f"emit: folding names op {name!r}, which is not in IR model '{ir.model}'")
        if op.op not in SUPPORTED_OPS and op.target != "host":
            raise _unsupported(op)  # as emitting it would (the folding is not the problem)
        if op.op not in FOLDED_OPS or op.target == "host":
            raise ValueError(f"emit: folding names op {name!r} ({op.op}, {op.target}); a folding applies to "
                             f"the accelerator's {' and '.join(FOLDED_OPS)} ops")
        req[name] = _fold_arg(name, folding[name])
    return [_fold_op(ir, op, req[op.name]) for op in ir.ops if op.name in req]


# ---------------------------------------------------------------------------------------
# the emitter
# ---------------------------------------------------------------------------------------

class _Emitter:
    style = "buffers"  # the top-level style (codesign.hls.stream_emit.StreamEmitter: "stream")

    def __init__(self, ir: IR, top: str, folds: list[FoldChoice] | None = None) -> None:
        self.ir, self.top = ir, top
        self.folds = {f.name: f for f in folds or ()}  # resolve_folding's answer: the emitted PE/SIMD
        self.namer = Namer(reserved=set(RESERVED) | {top})
        self.bufs: dict[str, _Buf] = {}
        self.decls: list[str] = []        # static buffers
        self.body: list[str] = []         # op calls
        self.loads: list[str] = []        # weight loader loops
        self.kconsts: dict[tuple[str, str, int, int], _Buf] = {}
        self.ntmp = 0
        self.nloop = 0
        self.weights: dict[str, tuple[int, int, int, bool]] = {}  # name -> (offset, count, bytes, signed)
        self.blob = b""
        self.const_ids: dict[str, str] = {}
        self.sparse = False  # some op uses the block-sparse kernels (sparse.h)

    # -- identifiers -----------------------------------------------------------------
    def ident(self, name: str) -> str:
        return self.namer(name)

    def label(self, what: str) -> str:
        self.nloop += 1
        return f"{what}_{self.nloop}"

    # -- weights ---------------------------------------------------------------------
    def pack_weights(self) -> None:
        out = bytearray()
        for name in sorted(self.ir.constants):
            c = self.ir.constants[name]
            lo, hi = (c.type.lo, c.type.hi)
            signed = lo < 0
            for nb in (1, 2, 4, 8):
                if signed and -(1 << (8 * nb - 1)) <= lo and hi < (1 << (8 * nb - 1)):
                    break
                if not signed and hi < (1 << (8 * nb)):
                    break
            dt = np.dtype(f"<{'i' if signed else 'u'}{nb}")
            while len(out) % 8:
                out.append(0)
            off = len(out)
            out += np.asarray(c.values, dtype=np.int64).astype(dt).tobytes(order="C")
            self.weights[name] = (off, int(c.values.size), nb, signed)
            self.const_ids[name] = self.ident(name)
        while len(out) % 8:
            out.append(0)
        self.blob = bytes(out)

    def const(self, name: str, cls: str, R: int, C: int) -> _Buf:
        """On-chip array [R][C] of class ``cls`` holding constant ``name`` (loaded per call)."""
        key = (name, cls, R, C)
        if key in self.kconsts:
            return self.kconsts[key]
        c = self.ir.constants[name]
        if R * C != c.values.size:
            raise AssertionError(f"constant {name}: {R}x{C} != {c.values.size}")
        k = sum(1 for kk in self.kconsts if kk[0] == name)
        ident = "k_" + self.const_ids[name] + (f"_v{k}" if k else "")
        b = _Buf(ident, cls, R, C, (R, C))
        self.kconsts[key] = b
        off, n, nb, sg = self.weights[name]
        cid = self.const_ids[name]
        self.decls.append(f"    static {cls}::storage {ident}[{R}][{C}];")
        lab = self.label("load")
        self.loads += [
            f"{lab}:",
            f"    for (int i = 0; i < {n}; ++i) {{  // {name}: {n} x {nb} byte(s)",
            f"#pragma HLS PIPELINE II = {nb}",
            f"        {_elem(ident, 'i', C)} = {cls}::encode({cls}::value_t(cs_rd<{nb}, {_b(sg)}>(weights, "
            f"W_OFF_{cid.upper()} + {nb} * i)));",
            "    }",
        ]
        return b

    # -- tensors ---------------------------------------------------------------------
    def tcls(self, t: Tensor) -> str:
        if t.kind == "acc":
            return _sint(t.acc_bits)
        if t.kind == "code":
            return _intt(t.type)
        raise NotImplementedError("emit: float tensors only exist at the host boundary")

    def buf(self, name: str) -> _Buf:
        if name in self.bufs:
            return self.bufs[name]
        t = self.ir.tensors[name]
        R, C = _rc(t.shape)
        b = _Buf("b_" + self.ident(name), self.tcls(t), R, C, tuple(t.shape[1:]))
        self.decls.append(f"    static {b.cls}::storage {b.name}[{R}][{C}];  // {name} {list(t.shape[1:])}")
        self.bufs[name] = b
        return b

    def operand(self, op: Op, name: str) -> _Buf:
        if name in self.ir.constants:
            raise _unsupported(op, f"constant '{name}' where a tensor is expected")
        if name not in self.bufs:
            raise _unsupported(op, f"input '{name}' is not produced on the accelerator")
        return self.bufs[name]

    def tmp(self, cls: str, R: int, C: int, shape=None) -> _Buf:
        self.ntmp += 1
        b = _Buf(f"t_{self.ntmp}", cls, R, C, tuple(shape) if shape else (R, C))
        self.decls.append(f"    static {cls}::storage {b.name}[{R}][{C}];")
        return b

    def conv_expr(self, src_cls: str, dst_cls: str, expr: str) -> str:
        if src_cls == dst_cls:
            return expr
        return f"{dst_cls}::encode({dst_cls}::value_t({src_cls}::value({expr})))"

    def as_cls(self, b: _Buf, cls: str) -> _Buf:
        """``b`` itself if it already has class ``cls``, else a converted copy."""
        if b.cls == cls:
            return b
        t = self.tmp(cls, b.R, b.C, b.shape)
        lab = self.label("conv")
        self.body += [
            f"{lab}:",
            f"    for (int i = 0; i < {b.R * b.C}; ++i) {{",
            "#pragma HLS PIPELINE II = 1",
            f"        {_elem(t.name, 'i', t.C)} = {self.conv_expr(b.cls, cls, _elem(b.name, 'i', b.C))};",
            "    }",
        ]
        return t

    # -- ops -------------------------------------------------------------------------
    def fold(self, op: Op) -> tuple[int, int]:
        """(PE, SIMD) of ``op``'s dense kernel: resolve_folding's choice, else (1, 1)."""
        f = self.folds.get(op.name)
        return (1, 1) if f is None else (f.PE, f.SIMD)

    def emit_op(self, op: Op) -> None:
        fn = getattr(self, f"op_{op.op}", None)
        if fn is None or op.op not in SUPPORTED_OPS:
            raise _unsupported(op)
        self.body.append(f"    // {op.name} ({op.op})")
        fn(op)

    def op_matmul(self, op: Op) -> None:
        A = CodeType.from_json(op.attrs["a_type"])
        W = CodeType.from_json(op.attrs["w_type"])
        if not W.signed:
            raise _unsupported(op, f"unsigned weight type {W} (the MVAU takes signed or bipolar weights)")
        a = self.operand(op, op.inputs[0])
        aa = self.as_cls(a, _intt(A))
        y = self.buf(op.outputs[0])
        acc = self.ir.tensors[op.outputs[0]].acc_bits
        K, N = a.C, y.C
        has_bias = len(op.inputs) == 3
        blo = bhi = 0
        bias_arg = ""
        if has_bias:
            bv = self.ir.constants[op.inputs[2]].values
            blo, bhi = int(bv.min()), int(bv.max())
            bias_arg = self.const(op.inputs[2], _sint(32), 1, N).name + "[0], "
        if "sparse" in op.attrs:  # block-sparse MVAU (sparse.h) over the packed constant weight
            wv = self.ir.constants[op.inputs[1]].values
            if wv.shape != (K, N):
                raise _unsupported(op, f"sparse weight of shape {wv.shape}, expected ({K}, {N})")
            sw = self._sparse_weights(op, wv.T)
            u = self._sparse_unit(
                f"codesign::SparseMvau<{_intt(A)}, {_intt(W)}, {K}, {N}, {sw.pe}, {sw.simd}, {sw.nb}, "
                f"{sw.empty_row_groups}, {_b(has_bias)}, {blo}LL, {bhi}LL, {acc}>", sw)
            self.body.append(f"    {u[0]}::run<{a.R}>({aa.name}, {u[1]}, {u[2]}, {u[3]}, {bias_arg}{y.name});")
            return
        pe, simd = self.fold(op)
        mv = (f"codesign::Mvau<{_intt(A)}, {_intt(W)}, {K}, {N}, {pe}, {simd}, {_b(has_bias)}, {blo}LL, {bhi}LL, "
              f"{acc}>")
        wname = op.inputs[1]
        if wname in self.ir.constants:
            wc = self.ir.constants[wname]
            if wc.values.shape != (K, N):
                raise _unsupported(op, f"constant weight of shape {wc.values.shape}, expected ({K}, {N})")
            w = self.const(wname, _intt(W), K, N)
            self.body.append(f"    {mv}::run<{a.R}>({aa.name}, {w.name}, {bias_arg}{y.name});")
            return
        # a code tensor as the second operand: batched a[g] (M x K) . w[g] (K x N)
        wt = self.ir.tensors[wname]
        at = self.ir.tensors[op.inputs[0]]
        if len(at.shape) < 3 or len(wt.shape) != len(at.shape) or at.shape[:-2] != wt.shape[:-2]:
            raise _unsupported(op, f"batched matmul of shapes {at.shape} x {wt.shape} (needs equal leading axes)")
        wb = self.as_cls(self.operand(op, wname), _intt(W))
        Mr = at.shape[-2]
        G = math.prod(at.shape[1:-2])
        lab = self.label("bmm")
        self.body += [
            f"{lab}:",
            f"    for (int g = 0; g < {G}; ++g) {{",
            f"        {mv}::run<{Mr}>(&{aa.name}[g * {Mr}], &{wb.name}[g * {K}], {bias_arg}&{y.name}[g * {Mr}]);",
            "    }",
        ]

    def op_conv2d(self, op: Op) -> None:
        """§11: ``codesign::Conv2d`` (conv.h) on the NCHW buffers as they are: the input
        ``[IC*H][W]``, the accumulator ``[OC*OH][OW]``, the weights ``[OC][IC/G*KH*KW]``
        (the ONNX layout flattened). Folded as :meth:`fold` says (default PE = SIMD = 1)."""
        X = CodeType.from_json(op.attrs["x_type"])
        Wt = CodeType.from_json(op.attrs["w_type"])
        xt, yt = self.ir.tensors[op.inputs[0]], self.ir.tensors[op.outputs[0]]
        if len(xt.shape) != 4:
            raise _unsupported(op, f"input of shape {xt.shape} is not NCHW")
        _, IC, H, W = xt.shape
        _, OC, OH, OW = yt.shape
        wc = self.ir.constants[op.inputs[1]]
        _, ICg, KH, KW = wc.values.shape
        sh, sw = op.attrs["stride"]
        pt, pl, pb, pr = op.attrs["pad"]
        dh, dw = op.attrs["dilation"]
        G = int(op.attrs["groups"])
        xa = self.as_cls(self.operand(op, op.inputs[0]), _intt(X))
        y = self.buf(op.outputs[0])
        sparse = "sparse" in op.attrs
        w = None if sparse else self.const(op.inputs[1], _intt(Wt), OC, ICg * KH * KW)
        has_bias = len(op.inputs) == 3
        blo = bhi = 0
        bias_arg = ""
        if has_bias:
            bv = self.ir.constants[op.inputs[2]].values
            blo, bhi = int(bv.min()), int(bv.max())
            bias_arg = self.const(op.inputs[2], _sint(32), 1, OC).name + "[0], "
        acc = yt.acc_bits
        if sparse:  # block-sparse SWG + MVAU (sparse.h) over the packed constant weight
            pk = self._sparse_weights(op, wc.values)
            u = self._sparse_unit(
                f"codesign::SparseConv2d<{_intt(X)}, {_intt(Wt)}, {IC}, {H}, {W}, {OC}, {KH}, {KW}, {sh}, {sw}, "
                f"{pt}, {pl}, {pb}, {pr}, {dh}, {dw}, {G}, {pk.pe}, {pk.simd}, {pk.nb}, {pk.empty_row_groups}, "
                f"{_b(has_bias)}, {blo}LL, {bhi}LL, {acc}>", pk)
            self.body.append(f"    static_assert({u[0]}::OH == {OH} && {u[0]}::OW == {OW}, \"{op.name}: output size\");")
            self.body.append(f"    {u[0]}::run({xa.name}, {u[1]}, {u[2]}, {u[3]}, {bias_arg}{y.name});")
            return
        pe, simd = self.fold(op)
        cv = (f"codesign::Conv2d<{_intt(X)}, {_intt(Wt)}, {IC}, {H}, {W}, {OC}, {KH}, {KW}, {sh}, {sw}, {pt}, {pl}, "
              f"{pb}, {pr}, {dh}, {dw}, {G}, {pe}, {simd}, {_b(has_bias)}, {blo}LL, {bhi}LL, {acc}>")
        self.body.append(f"    static_assert({cv}::OH == {OH} && {cv}::OW == {OW}, \"{op.name}: output size\");")
        self.body.append(f"    {cv}::run({xa.name}, {w.name}, {bias_arg}{y.name});")

    def _sparse_weights(self, op: Op, wmat: np.ndarray):
        """The op's constant weight in pruning's [OC, K] matrix view, packed with the
        ``attrs["sparse"]`` block shape (``codesign.hls.sparse.pack_sparse``)."""
        from codesign.hls.sparse import pack_sparse
        sp = op.attrs["sparse"]
        return pack_sparse(wmat, int(sp["pe"]), int(sp["simd"]))

    def _sparse_unit(self, unit: str, sw) -> tuple[str, str, str, str]:
        """Declare a typedef of the sparse unit and its CSR arrays as ROM constants
        (``static const``, initialised in the source, not loaded from ``weights.bin``);
        returns (typedef, row_ptr, col_idx, vals) identifiers."""
        names = []
        for _ in range(4):
            self.ntmp += 1
            names.append(f"t_{self.ntmp}")
        t, rp, ci, vv = names

        def init(values) -> str:
            flat = [str(int(v)) for v in np.asarray(values).reshape(-1)]
            rows = [", ".join(flat[i:i + 32]) for i in range(0, len(flat), 32)]
            return "{\n        " + ",\n        ".join(rows) + "}"

        row_ptr, col, vals = sw.kernel_arrays()
        nba = col.size
        self.sparse = True
        self.decls += [
            f"    typedef {unit} {t};  // {sw.nb} of {sw.row_groups}x{sw.col_groups} blocks stored, "
            f"{sw.empty_row_groups} empty row group(s)",
            f"    static const {t}::ptr_t {rp}[{sw.row_groups + 1}] = {init(row_ptr)};",
            f"    static const {t}::col_t {ci}[{nba}] = {init(col)};",
            f"    static const {t}::w_t {vv}[{nba}][{sw.pe}][{sw.simd}] = {init(vals)};",
        ]
        return t, rp, ci, vv

    def _chw(self, cls: str, C: int, H: int, W: int) -> str:
        """A static [C][H][W] array (pool.h's image layout)."""
        self.ntmp += 1
        name = f"t_{self.ntmp}"
        self.decls.append(f"    static {cls}::storage {name}[{C}][{H}][{W}];")
        return name

    def _copy_chw(self, src: str, dst: str, C: int, H: int, W: int, to_chw: bool) -> None:
        """Copy between a [C*H][W] buffer and a [C][H][W] array (same element order)."""
        lab = self.label("chw")
        a, b = (f"{dst}[c][h][w]", f"{src}[c * {H} + h][w]") if to_chw else (f"{dst}[c * {H} + h][w]", f"{src}[c][h][w]")
        self.body += [
            f"{lab}:",
            f"    for (int c = 0; c < {C}; ++c)",
            f"        for (int h = 0; h < {H}; ++h)",
            f"            for (int w = 0; w < {W}; ++w) {{",
            "#pragma HLS PIPELINE II = 1",
            f"                {a} = {b};",
            "            }",
        ]

    def _pool(self, op: Op, X: CodeType, Y: CodeType, call) -> None:
        """pool.h takes x[C][H][W]: the NCHW buffer is copied into one and the result out
        of one (C*H*W and C*OH*OW extra cycles, one element each)."""
        xt, yt = self.ir.tensors[op.inputs[0]], self.ir.tensors[op.outputs[0]]
        if len(xt.shape) != 4:
            raise _unsupported(op, f"input of shape {xt.shape} is not NCHW")
        _, C, H, W = xt.shape
        _, _, OH, OW = yt.shape
        xa = self.as_cls(self.operand(op, op.inputs[0]), _intt(X))
        y = self.buf(op.outputs[0])
        xi = self._chw(_intt(X), C, H, W)
        yo = self._chw(_intt(Y), C, OH, OW)
        self._copy_chw(xa.name, xi, C, H, W, True)
        self.body.append("    " + call(C, H, W, xi, yo))
        if y.cls == _intt(Y):
            self._copy_chw(yo, y.name, C, OH, OW, False)
        else:
            t = self.tmp(_intt(Y), y.R, y.C, y.shape)
            self._copy_chw(yo, t.name, C, OH, OW, False)
            self._copy_flat(t, y)

    @staticmethod
    def _window(op: Op) -> str:
        (kh, kw), (sh, sw), (ph, pw) = op.attrs["kernel"], op.attrs.get("stride") or op.attrs["kernel"], \
            op.attrs.get("pad", [0, 0])
        return f"{kh}, {kw}, {sh}, {sw}, {ph}, {pw}"

    def op_maxpool2d(self, op: Op) -> None:
        X = CodeType.from_json(op.attrs["in_type"])
        win = self._window(op)
        self._pool(op, X, X, lambda C, H, W, xi, yo:
                   f"codesign::maxpool2d<{_intt(X)}, {C}, {H}, {W}, {win}>({xi}, {yo});")

    def op_avgpool2d(self, op: Op) -> None:
        X = CodeType.from_json(op.attrs["in_type"])
        Y = CodeType.from_json(op.attrs.get("out_type") or op.attrs["in_type"])
        M, sh = int(op.attrs["M"]), int(op.attrs["sh"])
        win = self._window(op)
        self._pool(op, X, Y, lambda C, H, W, xi, yo:
                   f"codesign::avgpool2d<{_intt(X)}, {_intt(Y)}, {C}, {H}, {W}, {win}>({xi}, ap_uint<24>({M}), "
                   f"ap_uint<6>({sh}), {yo});")

    def _per_channel(self, op: Op, name: str, C: int, cls: str) -> tuple[str, bool]:
        c = self.ir.constants[name]
        if c.values.size == 1:
            return f"{cls}::storage({int(c.values.ravel()[0])}LL)", False
        if c.values.size == C and c.values.shape[-1] == C:
            return self.const(name, cls, 1, C).name + "[0]", True
        raise _unsupported(op, f"parameter '{name}' of shape {c.values.shape} is neither per tensor nor "
                               f"per channel along the last axis")

    def _fill(self, cls: str, C: int, value: str) -> str:
        t = self.tmp(cls, 1, C)
        lab = self.label("fill")
        self.body += [f"{lab}:", f"    for (int i = 0; i < {C}; ++i) {t.name}[0][i] = {value};"]
        return t.name + "[0]"

    def op_requant(self, op: Op) -> None:
        x = self.operand(op, op.inputs[0])
        xt = self.ir.tensors[op.inputs[0]]
        W = xt.int_width()
        xa = self.as_cls(x, _sint(W))
        Mv = self.ir.constants[op.inputs[1]].values
        mbits = max(int(op.attrs["m"]), int(Mv.max()).bit_length() if Mv.size else 1, 1)
        y = self.buf(op.outputs[0])
        M, pcm = self._per_channel(op, op.inputs[1], x.C, f"cs_uint<{mbits}>")
        sh, pcs = self._per_channel(op, op.inputs[2], x.C, "cs_uint<6>")
        if pcm != pcs:  # one per tensor, the other per channel: spread the scalar over the channels
            if not pcm:
                M = self._fill(f"cs_uint<{mbits}>", x.C, M)
            else:
                sh = self._fill("cs_uint<6>", x.C, sh)
        lab = self.label("requant")
        self.body += [
            f"{lab}:",
            f"    for (int r = 0; r < {x.R}; ++r) {{",
            f"        codesign::requant_row<{W}, {self.tcls(self.ir.tensors[op.outputs[0]])}, {x.C}, {mbits}>"
            f"({xa.name}[r], {M}, {sh}, {y.name}[r]);",
            "    }",
        ]

    def op_threshold(self, op: Op) -> None:
        x = self.operand(op, op.inputs[0])
        xt = self.ir.tensors[op.inputs[0]]
        T = self.ir.constants[op.inputs[1]]
        TC, NT = T.values.shape
        lo, hi = xt.value_range()
        W = max(twos_complement_bits(min(lo, int(T.values.min()), 0), max(hi, int(T.values.max()), 0)), 2)
        if W > 64:
            raise _unsupported(op, "thresholds wider than 64 bits")
        xa = self.as_cls(x, _sint(W))
        thr = self.const(op.inputs[1], _sint(W), TC, NT)
        bias, bip = int(op.attrs["out_bias"]), bool(op.attrs["bipolar"])
        olo, ohi = (-1, 1) if bip else (bias, NT + bias)
        ow = twos_complement_bits(min(olo, 0), max(ohi, 0))
        out = self.tmp(_sint(ow), x.R, x.C, x.shape)
        self.body.append(f"    codesign::multithreshold_rows<{x.C}, {NT}, {TC}, {W}, {bias}, {_b(bip)}>"
                         f"({x.R}, {xa.name}, {thr.name}, {out.name});")
        y = self.buf(op.outputs[0])
        self._copy_flat(out, y)

    def op_add(self, op: Op) -> None:
        a, b = self.operand(op, op.inputs[0]), self.operand(op, op.inputs[1])
        if a.shape != b.shape:
            raise _unsupported(op, f"broadcasting add of shapes {a.shape} and {b.shape}")
        At, Bt, Yt = (CodeType.from_json(op.attrs[k]) for k in ("a_type", "b_type", "out_type"))
        aa, bb = self.as_cls(a, _intt(At)), self.as_cls(b, _intt(Bt))
        Ma, Mb, sh = int(op.attrs["Ma"]), int(op.attrs["Mb"]), int(op.attrs["sh"])
        mbits = max(1, Ma.bit_length(), Mb.bit_length())
        y = self.buf(op.outputs[0])
        lab = self.label("add")
        self.body += [
            f"{lab}:",
            f"    for (int r = 0; r < {a.R}; ++r) {{",
            f"        codesign::add_row<{_intt(At)}, {_intt(Bt)}, {_intt(Yt)}, {a.C}, {mbits}>({aa.name}[r], "
            f"{bb.name}[r], {Ma}, {Mb}, {sh}, {y.name}[r]);",
            "    }",
        ]

    def op_lut(self, op: Op) -> None:
        X = CodeType.from_json(op.attrs["in_type"])
        q = self.as_cls(self.operand(op, op.inputs[0]), _intt(X))
        y = self.buf(op.outputs[0])
        n = self.ir.constants[op.inputs[1]].values.size
        table = self.const(op.inputs[1], y.cls, 1, n)
        lab = self.label("lut")
        self.body += [
            f"{lab}:",
            f"    for (int r = 0; r < {q.R}; ++r) {{",
            f"        codesign::lut_row<{_intt(X)}, {y.cls}, {q.C}>({q.name}[r], {table.name}[0], {y.name}[r]);",
            "    }",
        ]

    def op_softmax(self, op: Op) -> None:
        X = CodeType.from_json(op.attrs["in_type"])
        eb, ob = int(op.attrs["eb"]), int(op.attrs["ob"])
        x = self.as_cls(self.operand(op, op.inputs[0]), _intt(X))
        y = self.buf(op.outputs[0])
        yy = y if y.cls == f"cs_uint<{ob}>" else self.tmp(f"cs_uint<{ob}>", y.R, y.C, y.shape)
        n = self.ir.constants[op.inputs[1]].values.size
        table = self.const(op.inputs[1], f"cs_uint<{eb}>", 1, n)
        self.body.append(f"    codesign::softmax_rows<{_intt(X)}, {x.C}, {eb}, {ob}>({x.R}, {x.name}, "
                         f"{table.name}[0], {yy.name});")
        if yy is not y:
            self._copy_flat(yy, y)

    def op_layernorm(self, op: Op) -> None:
        x = self.as_cls(self.operand(op, op.inputs[0]), _sint(16))
        Y = CodeType.from_json(op.attrs["out_type"])
        y = self.buf(op.outputs[0])
        G = self.const(op.inputs[1], _sint(16), 1, x.C)
        B = self.const(op.inputs[2], _sint(32), 1, x.C)
        S, E = int(op.attrs["S"]), int(op.attrs["E"])
        self.body.append(f"    codesign::layernorm_rows<{x.C}, {_intt(Y)}>({x.R}, {x.name}, {G.name}[0], "
                         f"{B.name}[0], ap_uint<6>({S}), ap_uint<40>({E}ULL), {y.name});")

    # structural ops ------------------------------------------------------------------
    def _copy_flat(self, src: _Buf, dst: _Buf) -> None:
        lab = self.label("copy")
        self.body += [
            f"{lab}:",
            f"    for (int i = 0; i < {src.R * src.C}; ++i) {{",
            "#pragma HLS PIPELINE II = 1",
            f"        {_elem(dst.name, 'i', dst.C)} = {self.conv_expr(src.cls, dst.cls, _elem(src.name, 'i', src.C))};",
            "    }",
        ]

    def _nest(self, shape, stmt_fn) -> None:
        """Nested loops over ``shape`` (loop variables i0, i1, ...), innermost pipelined."""
        lab = self.label("move")
        vars_ = [f"i{k}" for k in range(len(shape))]
        lines = [f"{lab}:"]
        ind = "    "
        for k, (v, d) in enumerate(zip(vars_, shape)):
            lines.append(f"{ind}for (int {v} = 0; {v} < {d}; ++{v}) {{")
            ind += "    "
            if k == len(shape) - 1:
                lines.append("#pragma HLS PIPELINE II = 1")
        lines += [ind + s for s in stmt_fn(vars_)]
        for _ in shape:
            ind = ind[:-4]
            lines.append(f"{ind}}}")
        self.body += lines

    @staticmethod
    def _flat(vars_, strides) -> str:
        terms = [f"{v} * {s}" if s != 1 else v for v, s in zip(vars_, strides)]
        return " + ".join(terms) if terms else "0"

    def op_identity(self, op: Op) -> None:
        self._copy_flat(self.operand(op, op.inputs[0]), self.buf(op.outputs[0]))

    op_reshape = op_identity
    op_flatten = op_identity

    def op_transpose(self, op: Op) -> None:
        x = self.operand(op, op.inputs[0])
        y = self.buf(op.outputs[0])
        perm = [p - 1 for p in op.attrs["perm"][1:]]
        xs = _strides(x.shape)
        if not y.shape:
            return self._copy_flat(x, y)
        ys = _strides(y.shape)

        def stmt(v):
            src = self._flat(v, [xs[p] for p in perm])
            dst = self._flat(v, ys)
            return [f"{_elem(y.name, dst, y.C)} = {self.conv_expr(x.cls, y.cls, _elem(x.name, src, x.C))};"]
        self._nest(y.shape, stmt)

    def op_concat(self, op: Op) -> None:
        y = self.buf(op.outputs[0])
        ax = int(op.attrs["axis"]) - 1
        ys = _strides(y.shape)
        offset = 0
        for name in op.inputs:
            x = self.operand(op, name)
            xs = _strides(x.shape)

            def stmt(v, x=x, xs=xs, offset=offset):
                src = self._flat(v, xs)
                dst = self._flat(v, ys) + (f" + {offset * ys[ax]}" if offset else "")
                return [f"{_elem(y.name, dst, y.C)} = {self.conv_expr(x.cls, y.cls, _elem(x.name, src, x.C))};"]
            self._nest(x.shape, stmt)
            offset += x.shape[ax]

    def op_gather(self, op: Op) -> None:
        x = self.operand(op, op.inputs[0])
        y = self.buf(op.outputs[0])
        ax = int(op.attrs["axis"]) - 1
        idx = self.ir.constants[op.inputs[1]]
        ishape = idx.values.shape
        iv = idx.values
        w = max(2, twos_complement_bits(min(int(iv.min()), 0) if iv.size else 0, max(int(iv.max()), 0) if iv.size else 0))
        k = self.const(op.inputs[1], _sint(w), 1, max(1, iv.size))
        xs = _strides(x.shape)
        ys_shape = y.shape
        L = x.shape[ax]
        nI = len(ishape)

        def stmt(v):
            pre, ivars, post = v[:ax], v[ax:ax + nI], v[ax + nI:]
            iflat = self._flat(ivars, _strides(ishape))
            lines = [f"int j = {k.name}[0][{iflat}].to_int();", f"if (j < 0) j += {L};"]
            src_terms = [self._flat(pre, xs[:ax]), f"j * {xs[ax]}", self._flat(post, xs[ax + 1:])]
            src = " + ".join(t for t in src_terms if t != "0")
            dst = self._flat(v, _strides(ys_shape))
            lines.append(f"{_elem(y.name, dst, y.C)} = {self.conv_expr(x.cls, y.cls, _elem(x.name, src, x.C))};")
            return lines
        self._nest(ys_shape, stmt)

    # -- whole graph -----------------------------------------------------------------
    def run(self):
        ir = self.ir
        self.pack_weights()
        in_ports: list[_Port] = []
        out_ports: list[_Port] = []
        for op in ir.ops:
            if op.target == "host":
                if op.op == "quantize":
                    name = op.outputs[0]
                    b = self.buf(name)
                    lo, hi = ir.tensors[name].value_range()
                    in_ports.append(_Port("p_" + self.ident(name), _port_ctype(lo, hi), b, name))
                elif op.op == "dequantize":
                    continue
                else:
                    raise _unsupported(op, "only quantize/dequantize run on the host")
            else:
                self.emit_op(op)
        for bd in ir.outputs:
            p = ir.producer(bd.name)
            if p is None or p.op != "dequantize":
                raise NotImplementedError(f"emit: output '{bd.name}' is not produced by a dequantize")
            src = p.inputs[0]
            if src not in self.bufs:
                raise NotImplementedError(f"emit: output '{bd.name}': '{src}' is not computed on the accelerator")
            lo, hi = ir.tensors[src].value_range()
            out_ports.append(_Port("p_" + self.ident(bd.name), _port_ctype(lo, hi), self.bufs[src], src))
        return in_ports, out_ports


# ---------------------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------------------

_PRELUDE = r"""
// Type classes for accumulators and parameter words: storage, value(), encode(), as
// codesign::IntT (include/codesign/types.h).
template <int W>
struct cs_sint {
    typedef ap_int<W> storage;
    typedef ap_int<W> value_t;
    static value_t value(storage s) { return s; }
    static storage encode(value_t v) { return v; }
};
template <int W>
struct cs_uint {
    typedef ap_uint<W> storage;
    typedef ap_int<W + 1> value_t;
    static value_t value(storage s) { return s; }
    static storage encode(value_t v) { return storage(v); }
};

// One little-endian constant element of NB bytes from the weight buffer.
template <int NB, bool SGN>
long long cs_rd(const unsigned char* w, unsigned long off) {
#pragma HLS INLINE
    unsigned long long u = 0;
    for (int b = 0; b < NB; ++b) {
#pragma HLS UNROLL
        u |= (unsigned long long)w[off + b] << (8 * b);
    }
    if (SGN && NB < 8 && ((u >> (8 * NB - 1)) & 1)) u |= ~0ULL << (8 * (NB % 8));
    return (long long)u;
}
"""


def _signature(top: str, ins: list[_Port], outs: list[_Port]) -> str:
    args = [f"const {p.ctype}* {p.name}" for p in ins] + [f"{p.ctype}* {p.name}" for p in outs]
    args.append("const unsigned char* weights")
    return f"void {top}({', '.join(args)})"


def _top_h(ir: IR, top: str, ins, outs, nbytes: int) -> str:
    g = f"CODESIGN_{top.upper()}_H"
    lines = [f"// {top}: generated by codesign.hls.emit from IR model '{ir.model}'. Do not edit.",
             f"#ifndef {g}", f"#define {g}", "", "#include <stdint.h>", "",
             "// One sample per call. Inputs: codes after the host's quantize; outputs: codes before",
             "// the host's dequantize; weights: weights.bin (see weights.h).",
             "// Ports (elements per call):"]
    for p in ins:
        lines.append(f"//   {p.name}: {p.ctype}[{p.buf.R * p.buf.C}]  IR tensor '{p.tensor}' {list(p.buf.shape)}")
    for p in outs:
        lines.append(f"//   {p.name}: {p.ctype}[{p.buf.R * p.buf.C}]  IR tensor '{p.tensor}' {list(p.buf.shape)}")
    lines.append(f"//   weights: {nbytes} bytes")
    lines += [_signature(top, ins, outs) + ";", "", f"#endif  // {g}", ""]
    return "\n".join(lines)


def _weights_h(em: _Emitter) -> str:
    lines = ["// Packed constants of weights.bin: generated by codesign.hls.emit. Do not edit.",
             "// Each constant: little-endian, aligned to 8 bytes, W_BYTES_<c> bytes per element",
             "// (signed iff W_SIGNED_<c>), W_COUNT_<c> elements in C order of its IR shape.",
             "#ifndef CODESIGN_WEIGHTS_H", "#define CODESIGN_WEIGHTS_H", "",
             f"#define WEIGHTS_BYTES {len(em.blob)}UL", ""]
    for name in sorted(em.weights):
        off, n, nb, sg = em.weights[name]
        c = em.const_ids[name].upper()
        lines.append(f"// {name}: shape {list(em.ir.constants[name].shape)}, type {em.ir.constants[name].type}")
        lines.append(f"#define W_OFF_{c} {off}UL")
        lines.append(f"#define W_COUNT_{c} {n}UL")
        lines.append(f"#define W_BYTES_{c} {nb}")
        lines.append(f"#define W_SIGNED_{c} {int(sg)}")
    lines += ["", "#endif  // CODESIGN_WEIGHTS_H", ""]
    return "\n".join(lines)


def _interface(ins, outs, nbytes: int) -> list[str]:
    """The top function's interface pragmas (both styles)."""
    L = []
    for p in ins:
        L.append(f"#pragma HLS INTERFACE m_axi port = {p.name} offset = slave bundle = gmem0 depth = "
                 f"{p.buf.R * p.buf.C}")
    for p in outs:
        L.append(f"#pragma HLS INTERFACE m_axi port = {p.name} offset = slave bundle = gmem1 depth = "
                 f"{p.buf.R * p.buf.C}")
    L.append(f"#pragma HLS INTERFACE m_axi port = weights offset = slave bundle = gmem2 depth = {max(1, nbytes)}")
    for p in ins + outs:
        L.append(f"#pragma HLS INTERFACE s_axilite port = {p.name} bundle = control")
    L.append("#pragma HLS INTERFACE s_axilite port = weights bundle = control")
    L.append("#pragma HLS INTERFACE s_axilite port = return bundle = control")
    return L


def _top_cpp(ir: IR, top: str, board: Board, clock_mhz: float, em: _Emitter, ins, outs) -> str:
    L = [f"// {top}: generated by codesign.hls.emit from IR model '{ir.model}' for {board.name} "
         f"({board.part}) at {clock_mhz:g} MHz. Do not edit.",
         "// One call = one sample; see README.md.",
         f'#include "{top}.h"', '#include "weights.h"', ""]
    L += [f'#include "codesign/{h}"' for h in HEADERS]
    if em.sparse:
        L.append('#include "codesign/sparse.h"')
    if em.style == "stream":
        L.append('#include "codesign/stream.h"')
    L.append(_PRELUDE)
    if em.style == "stream":
        L += em.dataflow_cpp(ins, outs)
        L.append(_signature(top, ins, outs) + " {")
        L += _interface(ins, outs, len(em.blob))
        L.append("")
        L.append("    // on-chip constants (loaded from weights.bin every call)")
        L += em.decls
        L.append("")
        L.append(f"    // weight loader: {len(em.blob)} bytes from gmem2, one byte per cycle")
        L += em.loads
        L.append("")
        L.append("    // the layers: one DATAFLOW region of stream stages (README.md, 'Top level')")
        L.append(em.dataflow_call(ins, outs))
        L += ["}", ""]
        return "\n".join(L)
    L.append(_signature(top, ins, outs) + " {")
    L += _interface(ins, outs, len(em.blob))
    L.append("")
    L.append("    // on-chip buffers: one per IR tensor ([R][C], batch axis dropped), constants, temporaries")
    L += em.decls
    L.append("")
    L.append(f"    // weight loader: {len(em.blob)} bytes from gmem2, one byte per cycle")
    L += em.loads
    L.append("")
    L.append("    // inputs")
    for p in ins:
        n = p.buf.R * p.buf.C
        L += [f"in_{p.name}:", f"    for (int i = 0; i < {n}; ++i) {{", "#pragma HLS PIPELINE II = 1",
              f"        {_elem(p.buf.name, 'i', p.buf.C)} = {p.buf.cls}::encode({p.buf.cls}::value_t({p.name}[i]));",
              "    }"]
    L.append("")
    L += em.body
    L.append("")
    L.append("    // outputs")
    for p in outs:
        n = p.buf.R * p.buf.C
        L += [f"out_{p.name}:", f"    for (int i = 0; i < {n}; ++i) {{", "#pragma HLS PIPELINE II = 1",
              f"        {p.name}[i] = ({p.ctype}){p.buf.cls}::value({_elem(p.buf.name, 'i', p.buf.C)}).to_int64();",
              "    }"]
    L += ["}", ""]
    return "\n".join(L)


def _tb_cpp(top: str, ins, outs) -> str:
    L = [f"// Testbench for {top}: generated by codesign.hls.emit. Do not edit.",
         "// Reads weights.bin, golden/inputs.bin and golden/outputs.bin (format: README.md), calls the",
         "// top once per case, compares every output code with ==. Prints 'PASS n/n' or the first",
         "// mismatch, then 'RESULT cases=<n> mismatches=<m>'; exits 1 on any mismatch, 2 on an I/O error.",
         "#include <stdint.h>", "#include <stdio.h>", "#include <stdlib.h>", "#include <string.h>",
         "#include <string>", "#include <vector>",
         "", f'#include "{top}.h"', "",
         "static bool read_file(const char* rel, std::vector<unsigned char>& out) {",
         "    // the project folder, or Vitis HLS's csim/build folder four levels below it",
         '    static const char* prefixes[] = {"", "../../../../"};',
         "    for (int k = 0; k < 2; ++k) {",
         "        std::string path = std::string(prefixes[k]) + rel;",
         '        FILE* f = fopen(path.c_str(), "rb");',
         "        if (!f) continue;",
         "        fseek(f, 0, SEEK_END);",
         "        long n = ftell(f);",
         "        fseek(f, 0, SEEK_SET);",
         "        out.resize(n > 0 ? n : 0);",
         "        size_t got = n > 0 ? fread(&out[0], 1, n, f) : 0;",
         "        fclose(f);",
         "        return (long)got == n;",
         "    }",
         "    return false;",
         "}",
         "",
         "static uint32_t rd_u32(const std::vector<unsigned char>& b, size_t o) {",
         "    return (uint32_t)b[o] | ((uint32_t)b[o + 1] << 8) | ((uint32_t)b[o + 2] << 16) | ((uint32_t)b[o + 3] << 24);",
         "}",
         "",
         "static long long rd_i64(const std::vector<unsigned char>& b, size_t o) {",
         "    unsigned long long u = 0;",
         "    for (int k = 0; k < 8; ++k) u |= (unsigned long long)b[o + k] << (8 * k);",
         "    return (long long)u;",
         "}",
         "",
         "// Parse a golden file; returns the offset of the data (0 on error).",
         "static size_t golden_header(const std::vector<unsigned char>& b, const char* what, uint32_t arrays,",
         "                            const uint32_t* counts, uint32_t& cases) {",
         '    if (b.size() < 16 || memcmp(&b[0], "CSGV", 4) != 0 || rd_u32(b, 4) != 1) {',
         '        printf("ERROR %s: not a codesign golden file (version 1)\\n", what);',
         "        return 0;",
         "    }",
         "    cases = rd_u32(b, 8);",
         "    if (rd_u32(b, 12) != arrays) {",
         '        printf("ERROR %s: %u arrays, the top has %u\\n", what, rd_u32(b, 12), arrays);',
         "        return 0;",
         "    }",
         "    size_t per_case = 0;",
         "    for (uint32_t a = 0; a < arrays; ++a) {",
         "        if (rd_u32(b, 16 + 4 * a) != counts[a]) {",
         '            printf("ERROR %s: array %u has %u codes per case, expected %u\\n", what, a, rd_u32(b, 16 + 4 * a), counts[a]);',
         "            return 0;",
         "        }",
         "        per_case += counts[a];",
         "    }",
         "    size_t data = 16 + 4 * (size_t)arrays;",
         "    if (b.size() != data + 8 * per_case * cases) {",
         '        printf("ERROR %s: size %lu does not match %u cases\\n", what, (unsigned long)b.size(), cases);',
         "        return 0;",
         "    }",
         "    return data;",
         "}",
         "",
         "// Usage: tb [FIRST COUNT] runs golden cases FIRST .. FIRST+COUNT-1 (default: all), so",
         "// that several processes can share the cases.",
         "int main(int argc, char** argv) {",
         "    std::vector<unsigned char> weights, gin, gout;",
         '    if (!read_file("weights.bin", weights) || !read_file("golden/inputs.bin", gin) ||',
         '        !read_file("golden/outputs.bin", gout)) {',
         '        printf("ERROR: cannot read weights.bin / golden/inputs.bin / golden/outputs.bin\\n");',
         "        return 2;",
         "    }",
         "    if (weights.empty()) weights.push_back(0);"]
    cin = ", ".join(str(p.buf.R * p.buf.C) for p in ins) or "0"
    cout = ", ".join(str(p.buf.R * p.buf.C) for p in outs) or "0"
    L += [f"    static const uint32_t in_counts[] = {{{cin}}};",
          f"    static const uint32_t out_counts[] = {{{cout}}};",
          "    uint32_t cases = 0, cases_out = 0;",
          f'    size_t di = golden_header(gin, "golden/inputs.bin", {len(ins)}, in_counts, cases);',
          f'    size_t dout = golden_header(gout, "golden/outputs.bin", {len(outs)}, out_counts, cases_out);',
          "    if (!di || !dout) return 2;",
          "    if (cases != cases_out) {",
          '        printf("ERROR: %u input cases but %u output cases\\n", cases, cases_out);',
          "        return 2;",
          "    }",
          "    uint32_t first = 0, last = cases;",
          "    if (argc == 3) {",
          "        first = (uint32_t)strtoul(argv[1], 0, 10);",
          "        unsigned long count = strtoul(argv[2], 0, 10);",
          "        if (first > cases || count > cases - first) {",
          '            printf("ERROR: cases %s..+%s outside 0..%u\\n", argv[1], argv[2], cases);',
          "            return 2;",
          "        }",
          "        last = first + (uint32_t)count;",
          "    } else if (argc != 1) {",
          '        printf("ERROR: usage: %s [FIRST COUNT]\\n", argv[0]);',
          "        return 2;",
          "    }",
          f"    di += 8 * (size_t)first * ({' + '.join(str(p.buf.R * p.buf.C) for p in ins) or '0'});",
          f"    dout += 8 * (size_t)first * ({' + '.join(str(p.buf.R * p.buf.C) for p in outs) or '0'});"]
    for p in ins + outs:
        L.append(f"    static {p.ctype} {p.name}[{p.buf.R * p.buf.C}];")
    L += ["    unsigned long long mismatches = 0;", "    uint32_t bad_cases = 0;",
          "    for (uint32_t case_idx = first; case_idx < last; ++case_idx) {"]
    for p in ins:
        n = p.buf.R * p.buf.C
        L += [f"        for (uint32_t i = 0; i < {n}; ++i, di += 8) {p.name}[i] = ({p.ctype})rd_i64(gin, di);"]
    call = ", ".join([p.name for p in ins + outs] + ["&weights[0]"])
    L.append(f"        {top}({call});")
    L.append("        bool bad = false;")
    for p in outs:
        n = p.buf.R * p.buf.C
        L += [f"        for (uint32_t i = 0; i < {n}; ++i, dout += 8) {{",
              "            long long want = rd_i64(gout, dout);",
              f"            long long got = (long long){p.name}[i];",
              "            if (got != want) {",
              "                if (mismatches == 0)",
              f'                    printf("MISMATCH case %u output {p.tensor} index %u: expected %lld got %lld\\n",',
              "                           case_idx, i, want, got);",
              "                ++mismatches;",
              "                bad = true;",
              "            }",
              "        }"]
    L += ["        if (bad) ++bad_cases;", "    }",
          "    const uint32_t ran = last - first;",
          "    if (mismatches == 0) {",
          '        printf("PASS %u/%u\\n", ran, ran);',
          "    } else {",
          '        printf("FAIL %u/%u cases differ\\n", bad_cases, ran);',
          "    }",
          '    printf("RESULT cases=%u mismatches=%llu\\n", ran, mismatches);',
          "    return mismatches == 0 ? 0 : 1;",
          "}", ""]
    return "\n".join(L)


def _tcl(top: str, board: Board, clock_mhz: float) -> str:
    period = f"{1000.0 / clock_mhz:.3f}"
    return "\n".join([
        f"# Vitis HLS script for {top} ({board.name}, {board.part}, {clock_mhz:g} MHz): generated by codesign.hls.emit.",
        "# Run from this folder: vitis_hls -f run_hls.tcl",
        f"open_project -reset {HLS_PROJECT}",
        f"set_top {top}",
        f'add_files {top}.cpp -cflags "-Iinclude -I."',
        'add_files -tb tb.cpp -cflags "-Iinclude -I."',
        "add_files -tb weights.bin",
        "add_files -tb golden",
        f"open_solution -reset {SOLUTION} -flow_target vivado",
        f"set_part {{{board.part}}}",
        f"create_clock -period {period} -name default",
        "csim_design",
        "csynth_design",
        "cosim_design",
        "export_design -format ip_catalog",
        "exit",
        "",
    ])


def _gpp_command(top: str) -> list[str]:
    return ["g++", csim.CXX_STD, *csim.OPT_FLAGS, "-isystem", "$AP_TYPES", "-Iinclude", "-I.", "tb.cpp",
            f"{top}.cpp", "-o", "csim_tb"]


def _readme(ir: IR, top: str, board: Board, clock_mhz: float, em: _Emitter, ins, outs, cases: int) -> str:
    ports = "\n".join(f"| `{p.name}` | in | `{p.ctype}[{p.buf.R * p.buf.C}]` | `{p.tensor}` {list(p.buf.shape)} |"
                      for p in ins)
    ports += "\n" + "\n".join(f"| `{p.name}` | out | `{p.ctype}[{p.buf.R * p.buf.C}]` | `{p.tensor}` "
                              f"{list(p.buf.shape)} |" for p in outs)
    return f"""# `{top}`: HLS project for IR model `{ir.model}`

Generated by `codesign.hls.emit` for **{board.name}** (`{board.part}`) at **{clock_mhz:g} MHz**
(clock period {1000.0 / clock_mhz:.3f} ns). Do not edit; regenerate instead.

## Files

| file | what |
|---|---|
| `{top}.cpp`, `{top}.h` | the top function: one sample per call, {"one kernel-library call per IR op" if em.style == "buffers"
                                                                   else "a DATAFLOW region of stream stages"} |
| `weights.bin`, `weights.h` | every IR constant, packed ({len(em.blob)} bytes); offsets/counts/widths |
| `tb.cpp` | C testbench: runs every golden case, compares with `==` |
| `golden/inputs.bin`, `golden/outputs.bin` | {cases} golden cases from `codesign.sim.run_ir.run_reference` |
| `include/codesign/*.h` | copy of the codesign HLS kernel library |
| `run_hls.tcl` | Vitis HLS: csim, csynth, cosim, export (IP catalog) |

## Interface

The host quantizes the float inputs (the IR's `quantize` ops) and dequantizes the outputs
(the IR's `dequantize` ops); the accelerator sees integer codes only.

| port | dir | elements | IR tensor (shape without batch) |
|---|---|---|---|
{ports}
| `weights` | in | `unsigned char[{len(em.blob)}]` | `weights.bin` |

Inputs on `m_axi` bundle `gmem0`, outputs on `gmem1`, weights on `gmem2`; offsets and
`return` on `s_axilite` (`control`). **Weight loader**: every call copies each constant
from `weights` into its on-chip array (one byte per cycle, about {len(em.blob)} cycles per call)
before computing; {"the tensors live in static on-chip buffers `[R][C]` (C = last axis)" if em.style == "buffers"
                   else "the tensors flow through `hls::stream`s between the stages (see 'Top level')"}.

## Running

Vitis HLS (csim, synthesis, co-simulation, IP export), from this folder:

    vitis_hls -f run_hls.tcl

C simulation with g++ only (`$AP_TYPES`: a folder holding the Xilinx `ap_int.h`, e.g.
`python -c "from codesign.hls.csim import ap_types_dir; print(ap_types_dir())"`), from this folder:

    {' '.join(_gpp_command(top))} && ./csim_tb

It prints `PASS n/n`, or the first mismatch (`MISMATCH case <k> output <tensor> index <i>:
expected <e> got <g>`) and exits 1; the last line is `RESULT cases=<n> mismatches=<m>`.
From Python: `codesign.hls.emit.run_project_csim(<this folder>)`.

## Binary formats (little-endian)

`golden/inputs.bin` (arrays = the input ports, in order) and `golden/outputs.bin` (the
output ports):

    "CSGV"  u32 version=1  u32 cases  u32 arrays  u32 count[arrays]
    int64 codes: for each case, for each array, count[a] codes in C order

`weights.bin`: the constants in name order, each starting at an offset that is a multiple
of 8 (zero padding), elements in C order, each `W_BYTES_<c>` bytes little-endian, two's
complement iff `W_SIGNED_<c>`; see `weights.h` for `W_OFF_<c>`, `W_COUNT_<c>`.
"""


def _folding_md(folds: list[FoldChoice]) -> str:
    """README section: the PE/SIMD every folded kernel was emitted with, and why any differs."""
    lines = ["## Folding", "",
             "The matmul / conv2d kernels below were emitted with the folding (PE output channels x SIMD",
             "inputs per cycle) requested by the build (the dataflow search's choice); every other one",
             "with PE = SIMD = 1. A kernel that does not accept the request gets the nearest value it",
             "accepts; the note says why.", "",
             "| op | kernel | requested PE x SIMD | emitted PE | emitted SIMD | note |", "|---|---|---|---:|---:|---|"]
    for f in folds:
        lines.append(f"| `{f.name}` | `{f.kernel}` | {f.requested[0]} x {f.requested[1]} | {f.PE} | {f.SIMD} | "
                     f"{f.note or 'as requested'} |")
    if not folds:
        lines.append("| (none) | | | | | |")
    return "\n".join(lines) + "\n\n"


def _choose_emitter(ir: IR, top: str, folds: list[FoldChoice], style: str):
    """(emitter, input ports, output ports) for ``style`` (see :func:`emit_project`)."""
    from codesign.hls import stream_emit

    if style == "stream" or (style == "auto" and stream_emit.has_conv(ir)):
        if top == "cs_stream":
            raise ValueError("emit: top name 'cs_stream' is the stream style's stage namespace; choose another")
        try:
            em = stream_emit.StreamEmitter(ir, top, folds)
            ins, outs = em.run()
            return em, ins, outs
        except stream_emit.StreamUnsupportedError:
            if style == "stream":
                raise
    em = _Emitter(ir, top, folds)
    ins, outs = em.run()
    return em, ins, outs


def _style_md(em: _Emitter) -> str:
    """README section: which top-level style was emitted (stream: its stages and FIFOs)."""
    if em.style == "stream":
        return em.readme_section()
    return "\n".join([
        "## Top level: buffers", "",
        "Style **buffers**: the top function runs the IR's ops one after another, each reading and writing",
        "static on-chip buffers (one `[R][C]` buffer per IR tensor); the conv2d kernels are DATAFLOW regions",
        "(window generator + MVAU) inside. (`emit_project(..., style=\"stream\")` emits a streaming",
        "top level instead where every op has a stream form.)", "", ""])


def _golden(arrays_per_case: list[np.ndarray], cases: int) -> bytes:
    head = GOLDEN_MAGIC + struct.pack("<III", GOLDEN_VERSION, cases, len(arrays_per_case))
    head += b"".join(struct.pack("<I", int(np.prod(a.shape[1:], dtype=np.int64))) for a in arrays_per_case)
    if arrays_per_case:
        data = np.concatenate([np.asarray(a, dtype=np.int64).reshape(cases, -1) for a in arrays_per_case], axis=1)
    else:
        data = np.zeros((cases, 0), dtype=np.int64)
    return head + data.astype("<i8").tobytes(order="C")


def _write(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.write_bytes(data)


def emit_project(ir: IR, out_dir: Path, board: Board, clock_mhz: float, golden_inputs: Mapping[str, np.ndarray],
                 top: str = "codesign_top", folding: Mapping[str, tuple[int, int]] | None = None,
                 style: str = "auto") -> Path:
    """Write the Vitis HLS project of ``ir`` into ``out_dir`` and return it.

    ``golden_inputs``: float inputs keyed by ONNX (or IR) input name, batch on axis 0 =
    the cases; the golden outputs come from ``run_reference(ir, golden_inputs, trace=True)``.
    ``folding``: ``{IR op name: (PE, SIMD)}`` for matmul / conv2d ops (e.g. the dataflow
    search's choice, :mod:`codesign.accel.folding`); each named op's kernel is emitted with
    what :func:`resolve_folding` returns for it (the request, or the nearest folding the
    kernel accepts), every other with PE = SIMD = 1, and ``README.md`` gets a "Folding"
    table of what was emitted. ``None`` (default): every kernel PE = SIMD = 1, the project
    exactly as without this argument.
    ``style``: the top level (``STYLES``). ``"buffers"``: one function running the ops one
    after another over static on-chip buffers (one per IR tensor). ``"stream"``: the weight
    loader, then one ``#pragma HLS DATAFLOW`` region of stream stages (input stage, one or
    two stages per op, forks, reorders, output stage; :mod:`codesign.hls.stream_emit`,
    docs/dataflow.md "Streaming top level"). ``"auto"`` (default): ``"stream"`` when the IR
    has a conv2d and every accelerator op has a stream form, else ``"buffers"``. Ports,
    testbench, golden files and ``weights.bin`` are the same in both styles; ``README.md``
    says which style was emitted and lists the stream stages.
    Raises ``NotImplementedError`` naming the first op the emitter cannot handle (for
    ``style="stream"``: the first op without a stream form,
    :class:`codesign.hls.stream_emit.StreamUnsupportedError`), ``ValueError`` for a folding
    naming anything but a matmul / conv2d op or an unknown style.
    """
    from codesign.sim.run_ir import run_reference

    if not re.fullmatch(r"[a-z][a-z0-9_]*", top) or "__" in top or top.startswith(("p_", "b_", "k_", "t_")):
        raise ValueError(f"emit: top name {top!r} must be a plain identifier ([a-z][a-z0-9_]*, no p_/b_/k_/t_ prefix)")
    if not clock_mhz or clock_mhz <= 0:
        raise ValueError(f"emit: clock_mhz={clock_mhz!r} must be > 0")
    if style not in STYLES:
        raise ValueError(f"emit: style={style!r} is not one of {', '.join(STYLES)}")
    folds = resolve_folding(ir, folding)
    em, ins, outs = _choose_emitter(ir, top, folds, style)

    _, env = run_reference(ir, golden_inputs, trace=True)
    cases = int(next(iter(env[b.name] for b in ir.inputs)).shape[0]) if ir.inputs else 0
    gin = [env[p.tensor] for p in ins]
    gout = [env[p.tensor] for p in outs]

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write(out / f"{top}.h", _top_h(ir, top, ins, outs, len(em.blob)))
    _write(out / f"{top}.cpp", _top_cpp(ir, top, board, clock_mhz, em, ins, outs))
    _write(out / "weights.h", _weights_h(em))
    _write(out / "weights.bin", em.blob)
    _write(out / "tb.cpp", _tb_cpp(top, ins, outs))
    _write(out / "golden" / "inputs.bin", _golden(gin, cases))
    _write(out / "golden" / "outputs.bin", _golden(gout, cases))
    _write(out / "run_hls.tcl", _tcl(top, board, clock_mhz))
    readme = _readme(ir, top, board, clock_mhz, em, ins, outs, cases)
    if folding is not None:
        head, tail = readme.split("\n## Running\n", 1)
        readme = head + "\n" + _folding_md(folds) + "## Running\n" + tail
    head, tail = readme.split("\n## Running\n", 1)
    readme = head + "\n" + _style_md(em) + "## Running\n" + tail
    _write(out / "README.md", readme)
    inc = csim.include_dir() / "codesign"
    for h in sorted(inc.glob("*.h")):
        _write(out / "include" / "codesign" / h.name, h.read_bytes())
    return out


# ---------------------------------------------------------------------------------------
# C simulation
# ---------------------------------------------------------------------------------------

@dataclass
class CsimReport:
    passed: bool
    cases: int
    mismatches: int
    first_mismatch: str | None
    seconds: float
    log: str = ""
    executable: str = ""  # the compiled testbench (cached)


def _find_top(project: Path) -> str:
    tops = sorted(p.stem for p in project.glob("*.cpp") if p.name != "tb.cpp")
    if len(tops) != 1:
        raise FileNotFoundError(f"run_project_csim: expected one top .cpp besides tb.cpp in {project}, found {tops}")
    return tops[0]


def _golden_cases(project: Path) -> int | None:
    """The case count in the header of ``golden/inputs.bin`` (None if unreadable)."""
    try:
        with open(project / "golden" / "inputs.bin", "rb") as f:
            head = f.read(12)
    except OSError:
        return None
    if len(head) < 12 or head[:4] != b"CSGV":
        return None
    return struct.unpack("<I", head[8:12])[0]


def run_project_csim(project_dir: Path, jobs: int | None = None) -> CsimReport:
    """Compile the project's ``tb.cpp`` + top with g++ (cached by content) and run it.

    The golden cases are shared among ``jobs`` testbench processes (default: one per
    CPU, at most one per case), each running a contiguous range (``tb FIRST COUNT``); the
    report adds them up, and its first mismatch is the lowest case's.
    """
    t0 = time.monotonic()
    project = Path(project_dir).resolve()
    top = _find_top(project)
    cxx = csim.compiler()
    flags = [csim.CXX_STD, *csim.OPT_FLAGS, "-isystem", str(csim.ap_types_dir()), "-I",
             str(project / "include"), "-I", str(project)]
    h = hashlib.sha256()
    for p in sorted([*project.glob("*.cpp"), *project.glob("*.h"), *(project / "include").rglob("*.h")]):
        rel = p.relative_to(project).as_posix().encode()
        data = p.read_bytes()
        h.update(struct.pack("<Q", len(rel)) + rel + struct.pack("<Q", len(data)) + data)
    h.update(csim._compiler_version(cxx).encode())
    h.update(csim._tree_digest(csim.ap_types_dir()).encode())
    h.update("\0".join([*cxx, *flags[:2]]).encode())
    folder = csim.cache_dir() / "emit"
    folder.mkdir(parents=True, exist_ok=True)
    exe = folder / f"{top}-{h.hexdigest()[:32]}"
    if not (exe.is_file() and os.access(exe, os.X_OK)):
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{exe.name}.", suffix=".tmp")
        os.close(fd)
        cmd = [*cxx, *flags, str(project / "tb.cpp"), str(project / f"{top}.cpp"), "-o", tmp]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise csim.CsimCompileError(proc.stderr or proc.stdout, project / f"{top}.cpp", cmd)
            os.replace(tmp, exe)
        finally:
            Path(tmp).unlink(missing_ok=True)
    total = _golden_cases(project)
    if jobs is None:
        jobs = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    jobs = max(1, min(int(jobs), total or 1))
    if total is None or jobs == 1:
        ranges = [[]]
    else:
        step, extra = divmod(total, jobs)
        ranges, first = [], 0
        for j in range(jobs):
            n = step + (j < extra)
            ranges.append([str(first), str(n)])
            first += n
    procs = [subprocess.Popen([str(exe), *r], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in ranges]
    results = [(p, *p.communicate()) for p in procs]
    cases = mism = 0
    first_mismatch = None
    passed = True
    log = ""
    for p, out, err in results:
        log += out + err
        m = re.search(r"^RESULT cases=(\d+) mismatches=(\d+)$", out, re.M)
        if m is None:
            e = re.search(r"^ERROR.*$", out + err, re.M)
            return CsimReport(False, 0, 0, e.group(0) if e else f"testbench exited {p.returncode}: {(out + err)[-500:]}",
                              time.monotonic() - t0, log, str(exe))
        cases += int(m.group(1))
        mism += int(m.group(2))
        passed = passed and p.returncode == 0 and int(m.group(2)) == 0
        f = re.search(r"^MISMATCH (.*)$", out, re.M)
        if f and first_mismatch is None:
            first_mismatch = f.group(1)
    return CsimReport(passed, cases, mism, first_mismatch, time.monotonic() - t0, log, str(exe))
