"""Lower a QONNX graph to codesign's integer IR (``docs/ir.md``).

:func:`lower` reads a QONNX model (a qonnx ``ModelWrapper``, an ONNX ``ModelProto`` or a
path), runs qonnx's cleanup and shape/datatype inference, applies the lowering passes of
:mod:`codesign.accel.passes` (small qonnx ``Transformation``\\ s) to a fixed point and
converts the result into an :class:`~codesign.accel.ir.IR`, which it validates.

Errors are one line: ``UnsupportedOpError`` (``node '<name>' (op_type <T>) is not
supported; supported: ...``), ``OnnxReadError`` (``cannot read '<path>': <reason>``) and
``LoweringError`` for graphs whose ops are known but whose pattern or parameters cannot be
lowered (naming the node and the reason).

``accel/`` consumes QONNX only: nothing here imports torch or brevitas.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any

import numpy as np
import onnx

from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.cleanup import cleanup_model

from codesign.accel import passes as P
from codesign.accel.ir import IR, Boundary, CodeType, Constant, Op, Tensor, validate
from codesign.accel.passes import LoweringError, OnnxReadError, UnsupportedOpError, one_line
from codesign.hls.naming import Namer

__all__ = ["lower", "LoweringError", "UnsupportedOpError", "OnnxReadError", "to_ir", "SUPPORTED_OPS"]

SUPPORTED_OPS = P.SUPPORTED_OPS

#: names of each IR op's inputs, for the constants' names (``<op name>_<role>``)
ROLES = {
    "matmul": ("a", "w", "bias"), "requant": ("acc", "m", "sh"), "threshold": ("acc", "t"),
    "lut": ("q", "table"), "softmax": ("x", "table"), "layernorm": ("x", "g", "b"),
    "gather": ("x", "indices"), "add": ("a", "b"), "conv2d": ("x", "w", "bias"),
}


def _read(model: Any) -> tuple[onnx.ModelProto, str | None]:
    if isinstance(model, ModelWrapper):
        return copy.deepcopy(model.model), None
    if isinstance(model, onnx.ModelProto):
        return copy.deepcopy(model), None
    if isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        try:
            proto = onnx.load(path)
        except Exception as e:  # DecodeError, OSError, ...
            reason = str(e) or type(e).__name__
            raise OnnxReadError(one_line(f"cannot read '{path}': {' '.join(reason.split())}")) from None
        problem = _incomplete(proto)
        if problem:
            raise OnnxReadError(one_line(f"cannot read '{path}': {problem}"))
        return proto, path
    raise TypeError(f"lower: expected a ModelWrapper, ModelProto or path, got {type(model).__name__}")


def _incomplete(proto: onnx.ModelProto) -> str | None:
    """A reason if the parsed model is not a usable graph (e.g. a truncated file that
    happened to parse), else None."""
    g = proto.graph
    if not g.node:
        return "not an ONNX model with a graph (no nodes)"
    if not g.output:
        return "the graph has no outputs"
    defined = {i.name for i in g.input} | {i.name for i in g.initializer}
    defined |= {o for n in g.node for o in n.output}
    for n in g.node:
        for i in n.input:
            if i and i not in defined:
                return f"the graph is incomplete: input '{i}' of node '{n.name}' is not defined"
    for o in g.output:
        if o.name not in defined:
            return f"the graph is incomplete: output '{o.name}' is not produced"
    return None


def _fix_batch(model: ModelWrapper) -> None:
    """A dynamic batch axis on a graph input is set to 1 (the IR's shapes are static; the
    executor runs any batch size); any other dynamic axis is an error."""
    for i in model.graph.input:
        if model.get_initializer(i.name) is not None:
            continue
        dims = i.type.tensor_type.shape.dim
        for k, d in enumerate(dims):
            if d.HasField("dim_value") and d.dim_value > 0:
                continue
            if k == 0:
                d.Clear()
                d.dim_value = 1
            else:
                raise LoweringError(one_line(f"graph input '{i.name}' has a dynamic axis {k}; only the batch "
                                             "axis 0 may be dynamic"))


def lower(model: ModelWrapper | onnx.ModelProto | str | os.PathLike, *, m: int = 24,
          bn_threshold_bits: int = 4, threshold_all: bool = False, name: str | None = None) -> IR:
    """Lower a QONNX model to a validated :class:`~codesign.accel.ir.IR`.

    ``m``: multiplier width of every dyadic requant the lowering derives from float scales
    (§3; default 24, as FQ-BERT's wide fixed-point s_f: with arbitrary float scales the
    2^-m multiplier error widens the near-tie window where the integer op can differ from
    QONNX's float path by 1 LSB; tests/test_lower.py counts 0.12% of outputs at m = 16 and
    none at m = 24 on the float-scale MLP). Custom ``Requant`` nodes keep their own M/sh.
    ``bn_threshold_bits``: a BatchNorm before an output quantizer of at most this many bits
    (and always before bipolar/1-bit outputs) folds into ``threshold``; wider outputs fold
    into ``requant`` with per-channel multipliers.
    ``threshold_all``: lower every quantizer of an integer tensor to ``threshold`` (exact
    with respect to QONNX's rounding, ties included) instead of ``requant`` (round half up,
    which differs from QONNX's half-to-even at exact ties); at most 8-bit outputs.
    ``name``: the IR's model name (default: the ONNX graph's name).

    The caller's model is not modified.
    """
    proto, _ = _read(model)
    mw = ModelWrapper(proto)
    in_names = [i.name for i in mw.graph.input if mw.get_initializer(i.name) is None]
    out_names = [o.name for o in mw.graph.output]
    graph_name = name or mw.graph.name or "model"
    mw = mw.transform(P.StashOnnxNames(), make_deepcopy=False, cleanup=False)
    mw = mw.transform(P.RejectUnsupportedOps(domains_only=True), make_deepcopy=False, cleanup=False)
    _fix_batch(mw)
    try:
        mw = cleanup_model(mw)
        mw = mw.transform(InferShapes())
        mw = mw.transform(InferDataTypes())
    except LoweringError:
        raise
    except Exception as e:
        raise LoweringError(one_line(f"qonnx cleanup/shape inference failed: {type(e).__name__}: "
                                     f"{' '.join(str(e).split())}")) from None
    mw = mw.transform(P.RejectUnsupportedOps(), make_deepcopy=False, cleanup=False)
    clean_in = [i.name for i in mw.graph.input if mw.get_initializer(i.name) is None]
    if len(clean_in) != len(in_names) or len(mw.graph.output) != len(out_names):
        raise LoweringError("qonnx cleanup changed the number of graph inputs/outputs")
    mw.set_metadata_prop(P.TENSOR_NAMES_KEY, json.dumps(dict(zip(clean_in, in_names))))
    opts = {"m": m, "bn_threshold_bits": bn_threshold_bits, "threshold_all": threshold_all}
    for p in (P.FoldReluIntoQuant(), P.FoldWeightQuants(), P.QuantizeInputs(**opts)):
        mw = mw.transform(p, make_deepcopy=False, cleanup=False)
    loop = [P.LowerCodesignOps(**opts), P.LowerMatMul(**opts), P.LowerConv(**opts), P.FoldBiasAdd(**opts),
            P.LowerBatchNorm(**opts), P.LowerActQuant(**opts), P.LowerAdd(**opts), P.LowerMultiThreshold(**opts),
            P.LowerPool(**opts), P.LowerStructural(**opts), P.LowerActivationLUT(**opts)]
    while True:
        before = sum(p.hits for p in loop)
        for p in loop:
            mw = mw.transform(p, make_deepcopy=False, cleanup=False)
        if sum(p.hits for p in loop) == before:
            break
    for p in (P.DequantizeOutputs(), P.RemoveDeadConstants(), P.CheckLowered()):
        mw = mw.transform(p, make_deepcopy=False, cleanup=False)
    ir = to_ir(mw, in_names, out_names, graph_name)
    validate(ir)
    return ir


def to_ir(model: ModelWrapper, in_names: list[str], out_names: list[str], model_name: str) -> IR:
    """Convert a fully lowered graph (only IR-domain nodes) into an :class:`IR`.

    Names: graph inputs/outputs ``in_<name>``/``out_<name>`` (``codesign.hls.naming.Namer``
    of the original ONNX names), ops ``<op>_<k>`` in graph order, op outputs
    ``<op name>_out``, constants ``<op name>_<role>`` (e.g. ``matmul_0_w``).
    """
    g = model.graph
    tensors: dict[str, Tensor] = {}
    constants: dict[str, Constant] = {}
    tmap: dict[str, str] = {}
    cmap: dict[str, str] = {}
    inputs, outputs = [], []
    in_namer, out_namer = Namer(prefix="in_"), Namer(prefix="out_")
    for i, orig in zip([i for i in g.input if model.get_initializer(i.name) is None], in_names):
        n = in_namer(orig)
        tmap[i.name] = n
        tensors[n] = Tensor(tuple(model.get_tensor_shape(i.name)), "float")
        inputs.append(Boundary(n, orig))
    for o, orig in zip(g.output, out_names):
        n = out_namer(orig)
        tmap[o.name] = n
        outputs.append(Boundary(n, orig))
    const_nodes = {n.output[0]: n for n in g.node if P.is_ir(n) and P.ir_info(n)["op"] == "const"}
    counters: dict[str, int] = {}
    ops: list[Op] = []
    notes: list[str] = []
    for node in g.node:
        info = P.ir_info(node)
        op = info["op"]
        if op == "const":
            continue
        k = counters.get(op, 0)
        counters[op] = k + 1
        name = f"{op}_{k}"
        ins = []
        for idx, inp in enumerate(node.input):
            if inp in tmap:
                ins.append(tmap[inp])
                continue
            if inp in cmap:
                ins.append(cmap[inp])
                continue
            roles = ROLES.get(op, ())
            cname = f"{name}_{roles[idx] if idx < len(roles) else f'in{idx}'}"
            init = model.get_initializer(inp)
            if init is not None:
                vals = np.asarray(init).astype(np.int64)
                ct = info["const_types"].get(inp)
                ctype = CodeType.from_json(ct) if ct else CodeType.smallest(int(vals.min()), int(vals.max()))
            elif inp in const_nodes:
                c = P.const_of(model, inp)
                vals, ctype = c.codes, c.type
            else:
                raise LoweringError(one_line(f"internal: input '{inp}' of lowered {op} is not defined"))
            constants[cname] = Constant(ctype, vals)
            cmap[inp] = cname
            ins.append(cname)
        outs = []
        for j, o in enumerate(node.output):
            t = Tensor.from_json(info["out"][j], o)
            if o not in tmap:
                tmap[o] = f"{name}_out" if j == 0 else f"{name}_out{j}"
            tensors[tmap[o]] = t
            outs.append(tmap[o])
        ops.append(Op(name=name, op=op, inputs=ins, outputs=outs, attrs=info["attrs"], target=info["target"],
                      onnx_name=info["onnx_name"]))
        notes += [f"{name}: {n}" for n in info["notes"]]
    return IR(model=model_name, inputs=inputs, outputs=outputs, tensors=tensors, constants=constants, ops=ops,
              notes=notes)
