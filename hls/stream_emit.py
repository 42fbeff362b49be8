"""Streaming (FINN-style) top level for the HLS emitter: the IR's ops as stages of one
``#pragma HLS DATAFLOW`` region connected by ``hls::stream``s (docs/dataflow.md
"Streaming top level").

:func:`codesign.hls.emit.emit_project` uses this module for ``style="stream"`` (and for
``style="auto"`` when the IR has a conv2d and every accelerator op has a stream form). The
project's ports, testbench, golden files and ``weights.bin`` are exactly the buffer style's;
only ``<top>.cpp`` and the README differ.

Top function: the weight loader of the buffer style (static on-chip constant arrays filled
from ``weights``), then one call of ``<top>_dataflow(ports..., constants...)`` whose body is
a DATAFLOW region: an input stage per input port, one or two stage functions per IR op
(conv2d: window generator + MVAU), fork stages for tensors read by several consumers,
reorder stages where a consumer needs another element order, and an output stage per
output port. Stage functions live in ``namespace cs_stream`` and call the stream kernels
of ``include/codesign/stream.h``.

**Stream order.** A stream carries one IR tensor (batch axis dropped), one code per beat,
in the C order of ``tensor.transpose(perm)``; ``perm`` (over the non-batch axes) is
recorded per tensor. conv2d and the pools read and write NHWC (perm ``(1, 2, 0)`` of
``(C, H, W)``); elementwise ops keep their input's order (per-channel parameters follow the
channel index of each beat, computed from the order); ``transpose`` is a relabelling
(perms compose, no stage); ``reshape``/``flatten``/``identity`` alias the stream when the
input's order is its C order (size-1 axes ignored), else a reorder stage re-emits it in C
order first; ``matmul`` needs the reduction axis innermost; an ``add`` whose inputs differ
in order reorders the second; ``lut`` is elementwise; ``concat`` (any non-batch axis) keeps
its first input's order, reorders the others to it where they differ, and interleaves the
inputs' slabs (NHWC along channels: per pixel the first input's channels, then the
second's). Input stages read their port in the order the consumers
prefer (a backward pass through elementwise ops and transposes), output stages write their
port in C order from any stream order.

**FIFO depths.** 2 for a plain producer -> consumer stream; ``2*G*SF`` for a conv's window
stream (conv.h's depth); the whole tensor (its beat count) for every fork output: then a
fork never blocks, so no branch of a fork/join (residual) can starve the other however much
it buffers (a conv's line buffer, a reorder's whole tensor) -- the bypass FIFO needs at most
what the other branch holds before its first output, which is at most the whole tensor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from codesign.accel.ir import IR, CodeType, Op, twos_complement_bits
from codesign.hls.emit import (_Buf, _Emitter, _Port, _b, _intt, _port_ctype, _rc, _sint, _strides)

__all__ = ["STREAM_OPS", "StreamUnsupportedError", "StreamEmitter", "has_conv"]

STREAM_OPS = ("conv2d", "matmul", "threshold", "requant", "add", "lut", "maxpool2d", "avgpool2d", "concat", "transpose",
              "reshape", "flatten", "identity")
"""Accelerator ops with a stream form (conv2d / matmul: dense, constant weight)."""

NHWC = (1, 2, 0)  # perm of a (C, H, W) tensor whose stream is channels-last
MAX_WALK_AXES = 4  # stream.h's Walk: at most 4 axes of size > 1


class StreamUnsupportedError(NotImplementedError):
    """The IR has something the streaming top level cannot emit (one line, naming it)."""


def has_conv(ir: IR) -> bool:
    """Whether ``ir`` has an accelerator conv2d (the ``auto`` style's CNN test)."""
    return any(op.op == "conv2d" and op.target != "host" for op in ir.ops)


def _no(op: Op | None, why: str) -> StreamUnsupportedError:
    where = f"op '{op.name}' ({op.op})" if op is not None else "the IR"
    return StreamUnsupportedError(f"emit: style 'stream': {where}: {why}; use style='buffers' (or 'auto')")


def _inv(p) -> tuple[int, ...]:
    out = [0] * len(p)
    for i, a in enumerate(p):
        out[a] = i
    return tuple(out)


def _same_order(shape, p, q) -> bool:
    """Whether views ``p`` and ``q`` of a tensor of ``shape`` give the same beat order."""
    return [a for a in p if shape[a] > 1] == [a for a in q if shape[a] > 1]


def _is_c_order(shape, p) -> bool:
    return _same_order(shape, p, tuple(range(len(shape))))


@dataclass
class _Stream:
    ident: str
    cls: str            # element class: storage type is <cls>::storage
    count: int          # beats per image
    producer: int       # index of the producing stage
    tensor: str
    depth: int = 2
    why: str = "producer -> consumer"
    uses: list = field(default_factory=list)  # placeholder tokens of its consumers
    elem: str = ""      # C++ element type (default <cls>::storage)
    fork_out: bool = False

    @property
    def ctype(self) -> str:
        return self.elem or f"{self.cls}::storage"


@dataclass
class _View:
    stream: _Stream
    shape: tuple        # the IR tensor's shape without the batch axis
    perm: tuple         # stream order = C order of tensor.transpose(perm)


@dataclass
class _Stage:
    name: str           # C++ function name (in namespace cs_stream)
    kind: str           # input, output, conv_swg, conv_mvau, matmul, threshold, ..., fork, reorder, drain
    op: str             # IR op name, or what it serves
    params: list        # C++ parameter declarations
    body: list          # C++ body lines
    args: list          # call arguments (stream placeholders / port / constant names)
    ins: list = field(default_factory=list)   # placeholder tokens read
    outs: list = field(default_factory=list)  # stream idents written
    note: str = ""


class StreamEmitter(_Emitter):
    """The streaming top level of ``ir`` (see the module docstring). Reuses the buffer
    emitter's weight packing, constant arrays and loader (so ``weights.bin``/``weights.h``
    and the loader are identical) and its port rules. :meth:`run` returns the ports like
    :meth:`_Emitter.run`; :meth:`top_body` the C++ of the stage functions and the dataflow
    function. Raises :class:`StreamUnsupportedError` (one line) for anything without a
    stream form."""

    style = "stream"

    def __init__(self, ir: IR, top: str, folds=None) -> None:
        super().__init__(ir, top, folds)
        self.views: dict[str, _View] = {}
        self.streams: list[_Stream] = []
        self.stages: list[_Stage] = []
        self.units: list[str] = []   # typedefs of kernel units (namespace scope)
        self.nstream = 0
        self.ntok = 0
        self.reorders = 0
        self.pref: dict[str, tuple] = {}

    # -- streams ---------------------------------------------------------------------
    def new_stream(self, cls: str, count: int, tensor: str, depth: int = 2, why: str = "producer -> consumer"):
        self.nstream += 1
        s = _Stream(f"s_{self.nstream}", cls, int(count), len(self.stages), tensor, depth, why)
        self.streams.append(s)
        return s

    def use(self, v: _View) -> str:
        self.ntok += 1
        tok = f"@{self.ntok}@"
        v.stream.uses.append(tok)
        return tok

    def view(self, op: Op, name: str) -> _View:
        if name in self.ir.constants:
            raise _no(op, f"constant '{name}' where a stream is expected")
        if name not in self.views:
            raise _no(op, f"input '{name}' is not produced on the accelerator")
        return self.views[name]

    def add_stage(self, st: _Stage) -> _Stage:
        self.stages.append(st)
        return st

    @staticmethod
    def st(s: _Stream | str) -> str:
        cls = s.cls if isinstance(s, _Stream) else s
        return f"hls::stream<{cls}::storage>&"

    def walk(self, op: Op | None, shape, perm) -> str:
        """stream.h ``Walk`` type of the view ``perm`` of a tensor of ``shape``."""
        strides = _strides(shape)
        dims = [(shape[a], strides[a]) for a in perm if shape[a] > 1]
        if len(dims) > MAX_WALK_AXES:
            raise _no(op, f"tensor of shape {list(shape)} has more than {MAX_WALK_AXES} axes of size > 1")
        dims = [(1, 0)] * (MAX_WALK_AXES - len(dims)) + dims
        return "codesign::Walk<" + ", ".join(str(d) for d, _ in dims) + ", " + ", ".join(str(s) for _, s in dims) + ">"

    def need(self, op: Op, v: _View, perm: tuple) -> _View:
        """``v`` in the order ``perm``: ``v`` itself (relabelled) when the beat order is
        already that, else through a reorder stage (buffers the tensor)."""
        perm = tuple(perm)
        if _same_order(v.shape, v.perm, perm):
            return _View(v.stream, v.shape, perm)
        src = v.stream
        tok = self.use(v)
        out = self.new_stream(src.cls, src.count, src.tensor)
        n = len(self.stages)
        self.reorders += 1
        self.add_stage(_Stage(
            f"st_{n}_reorder", "reorder", op.name,
            [f"{self.st(src)} in", f"{self.st(out)} out"],
            [f"codesign::stream_reorder<{src.cls}::storage, {self.walk(op, v.shape, v.perm)}, "
             f"{self.walk(op, v.shape, perm)}>(in, out);"],
            [tok, out.ident], [tok], [out.ident],
            note=f"'{src.tensor}' perm {list(v.perm)} -> {list(perm)} for {op.name}"))
        return _View(out, v.shape, perm)

    def out_view(self, op: Op, cls: str, perm, name: str | None = None, depth: int = 2, why: str = "") -> _View:
        name = name or op.outputs[0]
        shape = tuple(self.ir.tensors[name].shape[1:])
        s = self.new_stream(cls, math.prod(shape), name, depth, why or "producer -> consumer")
        v = _View(s, shape, tuple(perm))
        self.views[name] = v
        return v

    def channel(self, v: _View) -> tuple[int, int]:
        """(C, INNER) of the last axis (the channel of per-channel parameters) in ``v``'s
        beat order: beat i has channel (i / INNER) % C."""
        n = len(v.shape)
        if n == 0:
            return 1, 1
        j = v.perm.index(n - 1)
        return v.shape[n - 1], math.prod(v.shape[a] for a in v.perm[j + 1:])

    # -- order preferences (input stages) -------------------------------------------------
    def preferences(self) -> None:
        """``self.pref[tensor]``: the order its consumers want, propagated backwards through
        elementwise ops and transposes (used only to choose an input stage's order)."""
        for op in reversed(self.ir.ops):
            if op.target == "host" or not op.inputs:
                continue
            x = op.inputs[0]
            want = None
            if op.op in ("conv2d", "maxpool2d", "avgpool2d") and len(self.ir.tensors[x].shape) == 4:
                want = NHWC
            elif op.op in ("threshold", "requant", "lut", "identity", "add", "concat"):
                want = self.pref.get(op.outputs[0])
            elif op.op == "transpose":
                r = self.pref.get(op.outputs[0])
                if r is not None:
                    p = [a - 1 for a in op.attrs["perm"][1:]]
                    want = tuple(p[r[i]] for i in range(len(r)))
            if want is None:
                continue
            for t in (op.inputs if op.op == "concat" else [x]):  # a concat's inputs: one order
                if t not in self.pref:
                    self.pref[t] = want

    # -- ops -------------------------------------------------------------------------
    def emit_op(self, op: Op) -> None:
        if op.op not in STREAM_OPS:
            raise _no(op, f"no stream form (stream ops: {', '.join(STREAM_OPS)})")
        if "sparse" in op.attrs:
            raise _no(op, "block-sparse kernels have no stream form yet")
        getattr(self, f"sop_{op.op}")(op)

    def _stage(self, op: Op, kind: str, params, body, args, ins, outs, suffix: str = "") -> None:
        n = len(self.stages)
        self.add_stage(_Stage(f"st_{n}_{self.ident(op.name)}{suffix}", kind, op.name, params, body, args, ins, outs))

    def _bias(self, op: Op, n: int) -> tuple[bool, int, int, str | None]:
        if len(op.inputs) != 3:
            return False, 0, 0, None
        bv = self.ir.constants[op.inputs[2]].values
        return True, int(bv.min()), int(bv.max()), self.const(op.inputs[2], _sint(32), 1, n).name

    def sop_conv2d(self, op: Op) -> None:
        X = CodeType.from_json(op.attrs["x_type"])
        Wt = CodeType.from_json(op.attrs["w_type"])
        xt, yt = self.ir.tensors[op.inputs[0]], self.ir.tensors[op.outputs[0]]
        if len(xt.shape) != 4:
            raise _no(op, f"input of shape {xt.shape} is not NCHW")
        if op.inputs[1] not in self.ir.constants:
            raise _no(op, "the weight is not a constant")
        _, IC, H, W = xt.shape
        _, OC, OH, OW = yt.shape
        wc = self.ir.constants[op.inputs[1]]
        _, ICg, KH, KW = wc.values.shape
        sh, sw = op.attrs["stride"]
        pt, pl, pb, pr = op.attrs["pad"]
        dh, dw = op.attrs["dilation"]
        G = int(op.attrs["groups"])
        x = self.need(op, self.view(op, op.inputs[0]), NHWC)
        w = self.const(op.inputs[1], _intt(Wt), OC, ICg * KH * KW)
        has_bias, blo, bhi, bias = self._bias(op, OC)
        pe, simd = self.fold(op)
        unit = f"u_{self.ident(op.name)}"
        self.units += [
            f"// {op.name} (conv2d): SWG + MVAU, PE = {pe}, SIMD = {simd}",
            f"typedef codesign::StreamConv2d<{_intt(X)}, {_intt(Wt)}, {IC}, {H}, {W}, {OC}, {KH}, {KW}, {sh}, {sw}, "
            f"{pt}, {pl}, {pb}, {pr}, {dh}, {dw}, {G}, {pe}, {simd}, {_b(has_bias)}, {blo}LL, {bhi}LL, "
            f"{yt.acc_bits}> {unit};",
            f'static_assert({unit}::OH == {OH} && {unit}::OW == {OW}, "{op.name}: output size");']
        K = ICg * KH * KW
        SF = -(-K // simd)
        win = self.new_stream(f"{unit}::Chunk", OH * OW * G * SF, f"{op.name} window", 2 * G * SF,
                              "window chunks, 2*G*SF as conv.h")
        win.elem = f"cs_stream::{unit}::Chunk"
        tok = self.use(x)
        self._stage(op, "conv_swg", [f"{self.st(x.stream)} in", f"hls::stream<{unit}::Chunk>& win"],
                    [f"{unit}::swg<{x.stream.cls}>(in, win);"], [tok, win.ident], [tok], [win.ident], "_swg")
        wtok = self.use(_View(win, (), ()))
        y = self.out_view(op, _sint(yt.acc_bits), NHWC)
        wparam = f"const {_intt(Wt)}::storage w[{OC}][{K}]"
        if has_bias:
            self._stage(op, "conv_mvau", [f"hls::stream<{unit}::Chunk>& win", wparam,
                                          f"const ap_int<32> bias[{OC}]", f"{self.st(y.stream)} out"],
                        [f"{unit}::mvau(win, w, bias, out);"], [wtok, w.name, f"{bias}[0]", y.stream.ident],
                        [wtok], [y.stream.ident], "_mvau")
        else:
            self._stage(op, "conv_mvau", [f"hls::stream<{unit}::Chunk>& win", wparam, f"{self.st(y.stream)} out"],
                        ["codesign::detail::NoBias nb;", f"{unit}::mvau(win, w, nb, out);"],
                        [wtok, w.name, y.stream.ident], [wtok], [y.stream.ident], "_mvau")

    def sop_matmul(self, op: Op) -> None:
        A = CodeType.from_json(op.attrs["a_type"])
        W = CodeType.from_json(op.attrs["w_type"])
        if not W.signed:
            raise _no(op, f"unsigned weight type {W}")
        if op.inputs[1] not in self.ir.constants:
            raise _no(op, "a code tensor as the second operand (batched matmul) has no stream form")
        x = self.view(op, op.inputs[0])
        n = len(x.shape)
        if n == 0:
            raise _no(op, "a scalar operand")
        if x.perm[-1] != n - 1:  # the reduction axis must be innermost: C order (a relabel if it already is)
            x = self.need(op, x, tuple(range(n)))
        yt = self.ir.tensors[op.outputs[0]]
        K, N = x.shape[-1], yt.shape[-1]
        wc = self.ir.constants[op.inputs[1]]
        if wc.values.shape != (K, N):
            raise _no(op, f"constant weight of shape {wc.values.shape}, expected ({K}, {N})")
        rows = max(1, math.prod(x.shape[:-1]))
        w = self.const(op.inputs[1], _intt(W), K, N)
        has_bias, blo, bhi, bias = self._bias(op, N)
        pe, simd = self.fold(op)
        unit = f"u_{self.ident(op.name)}"
        self.units += [f"// {op.name} (matmul): MVAU, PE = {pe}, SIMD = {simd}",
                       f"typedef codesign::StreamMvau<{_intt(A)}, {_intt(W)}, {K}, {N}, {pe}, {simd}, {_b(has_bias)}, "
                       f"{blo}LL, {bhi}LL, {yt.acc_bits}> {unit};"]
        tok = self.use(x)
        y = self.out_view(op, _sint(yt.acc_bits), x.perm)
        wparam = f"const {_intt(W)}::storage w[{K}][{N}]"
        call = f"{unit}::run<{x.stream.cls}, {rows}>"
        if has_bias:
            self._stage(op, "matmul", [f"{self.st(x.stream)} in", wparam, f"const ap_int<32> bias[{N}]",
                                       f"{self.st(y.stream)} out"],
                        [f"{call}(in, w, bias, out);"], [tok, w.name, f"{bias}[0]", y.stream.ident], [tok],
                        [y.stream.ident])
        else:
            self._stage(op, "matmul", [f"{self.st(x.stream)} in", wparam, f"{self.st(y.stream)} out"],
                        ["codesign::detail::NoBias nb;", f"{call}(in, w, nb, out);"],
                        [tok, w.name, y.stream.ident], [tok], [y.stream.ident])

    def sop_threshold(self, op: Op) -> None:
        x = self.view(op, op.inputs[0])
        xt = self.ir.tensors[op.inputs[0]]
        T = self.ir.constants[op.inputs[1]]
        TC, NT = T.values.shape
        C, inner = self.channel(x)
        if TC not in (1, C):
            raise _no(op, f"thresholds of shape {T.values.shape} for a tensor of shape {xt.shape} (rows: 1 or the "
                          f"last axis)")
        if TC == 1:
            C, inner = 1, 1
        lo, hi = xt.value_range()
        W = max(twos_complement_bits(min(lo, int(T.values.min()), 0), max(hi, int(T.values.max()), 0)), 2)
        if W > 64:
            raise _no(op, "thresholds wider than 64 bits")
        thr = self.const(op.inputs[1], _sint(W), TC, NT)
        bias, bip = int(op.attrs["out_bias"]), bool(op.attrs["bipolar"])
        tok = self.use(x)
        y = self.out_view(op, self.tcls(self.ir.tensors[op.outputs[0]]), x.perm)
        self._stage(op, "threshold", [f"{self.st(x.stream)} in", f"const ap_int<{W}> thr[{TC}][{NT}]",
                                      f"{self.st(y.stream)} out"],
                    [f"codesign::stream_threshold<{x.stream.cls}, {y.stream.cls}, {x.stream.count}, {C}, {inner}, "
                     f"{NT}, {TC}, {W}, {bias}, {_b(bip)}>(in, thr, out);"],
                    [tok, thr.name, y.stream.ident], [tok], [y.stream.ident])

    def _param(self, op: Op, name: str, C: int, cls: str) -> tuple[int, str | None, str]:
        """(count, constant array or None, literal) of a per-tensor / per-channel parameter."""
        c = self.ir.constants[name]
        if c.values.size == 1:
            return 1, None, f"{int(c.values.ravel()[0])}"
        if c.values.size == C and c.values.shape[-1] == C:
            return C, self.const(name, cls, 1, C).name, ""
        raise _no(op, f"parameter '{name}' of shape {c.values.shape} is neither per tensor nor per channel along "
                      f"the last axis")

    def sop_requant(self, op: Op) -> None:
        x = self.view(op, op.inputs[0])
        xt = self.ir.tensors[op.inputs[0]]
        W = xt.int_width()
        Mv = self.ir.constants[op.inputs[1]].values
        mbits = max(int(op.attrs["m"]), int(Mv.max()).bit_length() if Mv.size else 1, 1)
        C, inner = self.channel(x)
        mc, mk, mlit = self._param(op, op.inputs[1], xt.shape[-1] if xt.shape[1:] else 1, f"cs_uint<{mbits}>")
        sc, sk, slit = self._param(op, op.inputs[2], xt.shape[-1] if xt.shape[1:] else 1, "cs_uint<6>")
        if mc == 1 and sc == 1:
            C, inner = 1, 1
        Y = self.tcls(self.ir.tensors[op.outputs[0]])
        tok = self.use(x)
        y = self.out_view(op, Y, x.perm)
        params, args, body = [f"{self.st(x.stream)} in"], [tok], []
        for what, cnt, k, lit, cls in (("M", mc, mk, mlit, f"ap_uint<{mbits}>"), ("sh", sc, sk, slit, "ap_uint<6>")):
            if k is None:
                body.append(f"const {cls} {what}[1] = {{{cls}({lit})}};")
            else:
                params.append(f"const {cls} {what}[{cnt}]")
                args.append(f"{k}[0]")
        params.append(f"{self.st(y.stream)} out")
        args.append(y.stream.ident)
        body.append(f"codesign::stream_requant<{x.stream.cls}, {Y}, {x.stream.count}, {C}, {inner}, {W}, {mbits}, "
                    f"{mc}, {sc}>(in, M, sh, out);")
        self._stage(op, "requant", params, body, args, [tok], [y.stream.ident])

    def sop_add(self, op: Op) -> None:
        a, b = self.view(op, op.inputs[0]), self.view(op, op.inputs[1])
        if a.shape != b.shape:
            raise _no(op, f"broadcasting add of shapes {list(a.shape)} and {list(b.shape)}")
        b = self.need(op, b, a.perm)
        At, Bt, Yt = (CodeType.from_json(op.attrs[k]) for k in ("a_type", "b_type", "out_type"))
        Ma, Mb, sh = int(op.attrs["Ma"]), int(op.attrs["Mb"]), int(op.attrs["sh"])
        mbits = max(1, Ma.bit_length(), Mb.bit_length())
        ta, tb = self.use(a), self.use(b)
        y = self.out_view(op, self.tcls(self.ir.tensors[op.outputs[0]]), a.perm)
        self._stage(op, "add", [f"{self.st(a.stream)} a", f"{self.st(b.stream)} b", f"{self.st(y.stream)} out"],
                    [f"codesign::stream_add<{a.stream.cls}, {b.stream.cls}, {_intt(At)}, {_intt(Bt)}, {_intt(Yt)}, "
                     f"{y.stream.cls}, {a.stream.count}, {mbits}>(a, b, ap_uint<{mbits}>({Ma}), ap_uint<{mbits}>({Mb}), "
                     f"ap_uint<6>({sh}), out);"],
                    [ta, tb, y.stream.ident], [ta, tb], [y.stream.ident])

    def sop_lut(self, op: Op) -> None:
        """§4 table, elementwise: the output keeps the input's order (``stream_lut``)."""
        X = CodeType.from_json(op.attrs["in_type"])
        x = self.view(op, op.inputs[0])
        Y = self.tcls(self.ir.tensors[op.outputs[0]])
        n = self.ir.constants[op.inputs[1]].values.size
        table = self.const(op.inputs[1], Y, 1, n)
        tok = self.use(x)
        y = self.out_view(op, Y, x.perm)
        self._stage(op, "lut",
                    [f"{self.st(x.stream)} in", f"const {Y}::storage table[{n}]", f"{self.st(y.stream)} out"],
                    [f"codesign::stream_lut<{x.stream.cls}, {_intt(X)}, {Y}, {x.stream.count}>(in, table, out);"],
                    [tok, f"{table.name}[0]", y.stream.ident], [tok], [y.stream.ident])

    def sop_concat(self, op: Op) -> None:
        """Concatenation along any non-batch axis, in the first input's order: every other
        input is brought to that order (a relabelling, else a reorder stage), then joined
        by a chain of two-input ``stream_concat`` stages. In the order ``perm`` the stream
        is OUTER blocks (the axes before the concat axis), each the first input's slab (its
        extent of the axis times the axes after it) then the second's; for NHWC streams
        concatenated along channels: per pixel, C1 beats then C2 beats."""
        ax = int(op.attrs["axis"]) - 1
        views = [self.view(op, name) for name in op.inputs]
        perm = views[0].perm
        if ax < 0 or ax >= len(views[0].shape):
            raise _no(op, f"axis {ax + 1} of an input of shape {list(views[0].shape)}")
        Y = self.tcls(self.ir.tensors[op.outputs[0]])
        j = perm.index(ax)
        a = views[0]
        for i, nxt in enumerate(views[1:], 1):
            b = self.need(op, nxt, perm)
            outer = math.prod(a.shape[q] for q in perm[:j])
            inner = math.prod(a.shape[q] for q in perm[j + 1:])
            shape = a.shape[:ax] + (a.shape[ax] + b.shape[ax],) + a.shape[ax + 1:]
            ta, tb = self.use(a), self.use(b)
            if i == len(views) - 1:
                y = self.out_view(op, Y, perm)
            else:
                y = _View(self.new_stream(Y, math.prod(shape), f"{op.name} inputs 0..{i}"), shape, perm)
            self._stage(op, "concat", [f"{self.st(a.stream)} a", f"{self.st(b.stream)} b", f"{self.st(y.stream)} out"],
                        [f"codesign::stream_concat<{a.stream.cls}, {b.stream.cls}, {Y}, {outer}, "
                         f"{a.shape[ax] * inner}, {b.shape[ax] * inner}>(a, b, out);"],
                        [ta, tb, y.stream.ident], [ta, tb], [y.stream.ident], f"_{i}" if len(views) > 2 else "")
            a = y

    def _pool(self, op: Op, X: CodeType, Y: CodeType, avg: bool, M: int, sh: int) -> None:
        xt, yt = self.ir.tensors[op.inputs[0]], self.ir.tensors[op.outputs[0]]
        if len(xt.shape) != 4:
            raise _no(op, f"input of shape {xt.shape} is not NCHW")
        _, C, H, W = xt.shape
        (kh, kw) = op.attrs["kernel"]
        (s1, s2) = op.attrs.get("stride") or op.attrs["kernel"]
        (ph, pw) = op.attrs.get("pad", [0, 0])
        x = self.need(op, self.view(op, op.inputs[0]), NHWC)
        tok = self.use(x)
        y = self.out_view(op, self.tcls(yt), NHWC)
        self._stage(op, "avgpool" if avg else "maxpool", [f"{self.st(x.stream)} in", f"{self.st(y.stream)} out"],
                    [f"codesign::stream_pool<{x.stream.cls}, {_intt(X)}, {_intt(Y)}, {y.stream.cls}, {C}, {H}, {W}, "
                     f"{kh}, {kw}, {s1}, {s2}, {ph}, {pw}, {_b(avg)}>(in, ap_uint<24>({M}), ap_uint<6>({sh}), out);"],
                    [tok, y.stream.ident], [tok], [y.stream.ident])

    def sop_maxpool2d(self, op: Op) -> None:
        X = CodeType.from_json(op.attrs["in_type"])
        self._pool(op, X, X, False, 0, 0)

    def sop_avgpool2d(self, op: Op) -> None:
        X = CodeType.from_json(op.attrs["in_type"])
        Y = CodeType.from_json(op.attrs.get("out_type") or op.attrs["in_type"])
        self._pool(op, X, Y, True, int(op.attrs["M"]), int(op.attrs["sh"]))

    def sop_transpose(self, op: Op) -> None:
        x = self.view(op, op.inputs[0])
        p = [a - 1 for a in op.attrs["perm"][1:]]
        inv = _inv(p)
        shape = tuple(self.ir.tensors[op.outputs[0]].shape[1:])
        self.views[op.outputs[0]] = _View(x.stream, shape, tuple(inv[q] for q in x.perm))

    def sop_reshape(self, op: Op) -> None:
        x = self.view(op, op.inputs[0])
        x = self.need(op, x, tuple(range(len(x.shape))))
        shape = tuple(self.ir.tensors[op.outputs[0]].shape[1:])
        self.views[op.outputs[0]] = _View(x.stream, shape, tuple(range(len(shape))))

    sop_flatten = sop_reshape

    def sop_identity(self, op: Op) -> None:
        x = self.view(op, op.inputs[0])
        self.views[op.outputs[0]] = _View(x.stream, x.shape, x.perm)

    # -- whole graph -----------------------------------------------------------------
    def run(self):
        ir = self.ir
        self.pack_weights()
        self.preferences()
        ins: list[_Port] = []
        outs: list[_Port] = []
        for op in ir.ops:
            if op.target == "host":
                if op.op == "quantize":
                    name = op.outputs[0]
                    t = ir.tensors[name]
                    lo, hi = t.value_range()
                    shape = tuple(t.shape[1:])
                    R, C = _rc(t.shape)
                    port = _Port("p_" + self.ident(name), _port_ctype(lo, hi),
                                 _Buf("", self.tcls(t), R, C, shape), name)
                    ins.append(port)
                    perm = self.pref.get(name, tuple(range(len(shape))))
                    if len(perm) != len(shape):
                        perm = tuple(range(len(shape)))
                    y = self.out_view(op, self.tcls(t), perm, name)
                    n = len(self.stages)
                    self.add_stage(_Stage(
                        f"st_{n}_in_{port.name}", "input", name, [f"const {port.ctype}* port", f"{self.st(y.stream)} out"],
                        [f"codesign::stream_in<{port.ctype}, {y.stream.cls}, {self.walk(op, shape, perm)}>(port, out);"],
                        [port.name, y.stream.ident], [], [y.stream.ident], note=f"perm {list(perm)}"))
                elif op.op == "dequantize":
                    continue
                else:
                    raise _no(op, "only quantize/dequantize run on the host")
            else:
                self.emit_op(op)
        for bd in ir.outputs:
            p = ir.producer(bd.name)
            if p is None or p.op != "dequantize":
                raise _no(None, f"output '{bd.name}' is not produced by a dequantize")
            src = p.inputs[0]
            if src not in self.views:
                raise _no(None, f"output '{bd.name}': '{src}' is not computed on the accelerator")
            t = ir.tensors[src]
            lo, hi = t.value_range()
            R, C = _rc(t.shape)
            v = self.views[src]
            port = _Port("p_" + self.ident(bd.name), _port_ctype(lo, hi), _Buf("", v.stream.cls, R, C, v.shape), src)
            outs.append(port)
            tok = self.use(v)
            n = len(self.stages)
            self.add_stage(_Stage(
                f"st_{n}_out_{port.name}", "output", src, [f"{self.st(v.stream)} in", f"{port.ctype}* port"],
                [f"codesign::stream_out<{port.ctype}, {v.stream.cls}, {self.walk(None, v.shape, v.perm)}>(in, port);"],
                [tok, port.name], [tok], [], note=f"perm {list(v.perm)}"))
        self._resolve()
        return ins, outs

    def _resolve(self) -> None:
        """Forks (several consumers) and drains (none); substitute the stream placeholders.
        A fork of k consumers is a chain of k - 1 two-way forks, placed right after the
        producer (C simulation runs the stages in call order)."""
        sub: dict[str, str] = {}
        after: dict[int, list[_Stage]] = {}
        for s in list(self.streams):
            extra = after.setdefault(s.producer, [])
            k = len(s.uses)
            if k == 1:
                sub[s.uses[0]] = s.ident
            elif k == 0:
                extra.append(_Stage(f"st_drain_{s.ident}", "drain", s.tensor, [f"hls::stream<{s.ctype}>& in"],
                                    [f"codesign::stream_drain<{s.ctype}, {s.count}>(in);"],
                                    [s.ident], [s.ident], [], note="nothing reads it"))
            else:
                src = s.ident
                for i in range(k - 1):
                    a = self._fork_out(s, f"{s.ident}_f{i}")
                    b = self._fork_out(s, f"{s.ident}_f{k - 1}" if i == k - 2 else f"{s.ident}_t{i}")
                    sub[s.uses[i]] = a
                    if i == k - 2:
                        sub[s.uses[k - 1]] = b
                    t = f"hls::stream<{s.ctype}>&"
                    extra.append(_Stage(f"st_fork_{s.ident}_{i}", "fork", s.tensor, [f"{t} in", f"{t} a", f"{t} b"],
                                        [f"codesign::stream_fork<{s.ctype}, {s.count}>(in, a, b);"],
                                        [src, a, b], [src], [a, b], note=f"{k} consumers"))
                    src = b
        order: list[_Stage] = []
        for i, st in enumerate(self.stages):
            order.append(st)
            order += after.get(i, [])
        for st in order:
            st.args = [sub.get(a, a) for a in st.args]
            st.ins = [sub.get(a, a) for a in st.ins]
        self.stages = order

    def _fork_out(self, s: _Stream, ident: str) -> str:
        self.streams.append(_Stream(ident, s.cls, s.count, -1, s.tensor, max(2, s.count),
                                    f"fork output: the whole tensor ({s.count} beats), so the fork never blocks "
                                    f"and no branch of a fork/join can starve the other", elem=s.elem, fork_out=True))
        return ident

    # -- C++ -------------------------------------------------------------------------
    def dataflow_cpp(self, ins: list[_Port], outs: list[_Port]) -> list[str]:
        """Stage functions (namespace cs_stream) and ``<top>_dataflow``."""
        L = ["namespace cs_stream {", ""]
        L += self.units
        L.append("")
        for st in self.stages:
            L.append(f"// {st.op}: {st.kind}" + (f" ({st.note})" if st.note else ""))
            L.append(f"static void {st.name}({', '.join(st.params)}) {{")
            L.append("#pragma HLS INLINE off")
            L += ["    " + b for b in st.body]
            L += ["}", ""]
        L += ["}  // namespace cs_stream", ""]
        consts = [b for b in self.kconsts.values()]
        params = [f"const {p.ctype}* {p.name}" for p in ins] + [f"{p.ctype}* {p.name}" for p in outs]
        params += [f"const {b.cls}::storage {b.name}[{b.R}][{b.C}]" for b in consts]
        L.append(f"static void {self.top}_dataflow({', '.join(params)}) {{")
        L.append("#pragma HLS DATAFLOW")
        for s in self.streams:
            L.append(f"    hls::stream<{s.ctype}> {s.ident}(\"{s.ident}\");  // {s.tensor}: {s.count} beats")
            L.append(f"#pragma HLS STREAM variable = {s.ident} depth = {s.depth}  // {s.why}")
        for st in self.stages:
            L.append(f"    cs_stream::{st.name}({', '.join(st.args)});")
        L += ["}", ""]
        return L

    def dataflow_call(self, ins: list[_Port], outs: list[_Port]) -> str:
        args = [p.name for p in ins + outs] + [b.name for b in self.kconsts.values()]
        return f"    {self.top}_dataflow({', '.join(args)});"

    def readme_section(self) -> str:
        """README section: the style, the stages in call order, the streams' depths."""
        rows = [f"| {i} | `{st.name}` | {st.kind} | `{st.op}` | {', '.join(f'`{a}`' for a in st.ins) or '-'} | "
                f"{', '.join(f'`{a}`' for a in st.outs) or '-'} | {st.note or ''} |" for i, st in enumerate(self.stages)]
        srows = [f"| `{s.ident}` | `{s.tensor}` | {s.count} | {s.depth} | {s.why} |" for s in self.streams]
        forks = sum(1 for st in self.stages if st.kind == "fork")
        return "\n".join([
            "## Top level: stream (DATAFLOW)", "",
            "Style **stream**: after the weight loader the top calls `<top>_dataflow`, a `#pragma HLS DATAFLOW`",
            "region of the stage functions below (namespace `cs_stream`, kernels of `include/codesign/stream.h`),",
            "connected by `hls::stream`s of one code per beat. A stream carries one IR tensor in the C order of",
            "`tensor.transpose(perm)` (conv2d / pooling: NHWC); transposes are relabellings without a stage.",
            f"Stages: {len(self.stages)}, of which {self.reorders} reorder stage(s) (buffer a whole tensor to",
            f"change its order) and {forks} fork stage(s).", "",
            "| # | stage | kind | IR op / tensor | reads | writes | note |", "|---:|---|---|---|---|---|---|",
            *rows, "",
            "| stream | tensor | beats | depth | why |", "|---|---|---:|---:|---|", *srows, "", ""])
