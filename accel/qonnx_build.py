"""Small helpers to build QONNX graphs by hand.

For examples, experiments and tests: a graph of a few nodes (QONNX ``Quant``, standard ONNX
ops, :mod:`codesign.accel.custom_ops` nodes) without going through Brevitas::

    from onnx import helper
    import codesign.accel.custom_ops as co
    from codesign.accel.qonnx_build import graph_model, quant

    nodes = [quant("x", "xq", 2.0**-4, 8, True),
             quant("w", "wq", 2.0**-6, 8, True, narrow=True),
             helper.make_node("MatMul", ["xq", "wq"], ["acc"], name="mm")]
    model = graph_model(nodes, [("x", [1, 16])], ["acc"], {"w": w})

:func:`graph_model` lists the opsets of ONNX (13), QONNX and ``codesign.accel.custom_ops``
and runs qonnx's ``InferShapes``, so the result can be lowered
(:func:`codesign.accel.lower.lower`) or executed (``qonnx.core.onnx_exec.execute_onnx``)
as it is.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import onnx
from onnx import NodeProto, TensorProto, ValueInfoProto, helper

from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.basic import qonnx_make_model

import codesign.accel.custom_ops as co

__all__ = ["QONNX_DOMAIN", "vi", "quant", "graph_model", "structural_example", "custom_op_example"]

QONNX_DOMAIN = "qonnx.custom_op.general"
"""ONNX domain of QONNX's own ops (``Quant``, ``BipolarQuant``, ``MultiThreshold``, ...)."""


def vi(name: str, shape, elem: int = TensorProto.FLOAT) -> ValueInfoProto:
    """A ``ValueInfoProto`` for tensor ``name`` of ``shape`` (``None``: unknown) and element
    type ``elem`` (float32 by default)."""
    return helper.make_tensor_value_info(name, elem, shape)


def quant(x: str, y: str, scale, bits, signed: bool, narrow: bool = False, name: str | None = None,
          rounding: str = "ROUND") -> tuple[NodeProto, dict[str, np.ndarray]]:
    """A QONNX ``Quant`` node ``x -> y`` and its initializers (scale, zero point 0, bit width).

    ``scale`` may be a scalar or an array (per channel). The node is named ``name``
    (default ``Quant_<y>``) and its initializers ``<name>_s``, ``<name>_z`` and ``<name>_b``.
    Returns ``(node, initializers)``, which :func:`graph_model` accepts as one entry of
    its ``nodes``.
    """
    name = name or f"Quant_{y}"
    inits = {f"{name}_s": np.asarray(scale, dtype=np.float32), f"{name}_z": np.float32(0),
             f"{name}_b": np.float32(bits)}
    node = helper.make_node("Quant", [x, f"{name}_s", f"{name}_z", f"{name}_b"], [y], name=name,
                            domain=QONNX_DOMAIN, signed=int(signed), narrow=int(narrow), rounding_mode=rounding)
    return node, inits


def graph_model(nodes: Iterable, inputs: Sequence[tuple], outputs: Sequence,
                inits: Mapping[str, np.ndarray] | None = None, name: str = "g",
                value_info: Sequence[tuple[str, Sequence[int]]] = ()) -> ModelWrapper:
    """A ``ModelWrapper`` of a graph of ``nodes``, with shapes inferred.

    nodes: in topological order, each a ``NodeProto``, a ``(NodeProto, initializers)`` pair
    (as :func:`quant` returns) or a :class:`codesign.accel.custom_ops.CodesignNode`; their
    initializers are added to the graph's.
    inputs: ``[(name, shape)]`` or ``[(name, shape, elem)]`` of the graph inputs (element
    type ``elem``, a ``TensorProto`` code; float32 when left out).
    outputs: names of the graph outputs, or ``(name, elem)`` pairs (float32 when a bare
    name; shape left to inference).
    inits: further initializers, name -> array.
    value_info: ``[(name, shape)]`` of intermediate float32 tensors whose shape inference
    cannot give.
    """
    protos, all_inits = [], dict(inits or {})
    for n in nodes:
        if isinstance(n, co.CodesignNode):
            protos.append(n.node)
            all_inits.update(n.initializers)
        elif isinstance(n, tuple):
            protos.append(n[0])
            all_inits.update(n[1])
        else:
            protos.append(n)
    outs = [vi(o, None) if isinstance(o, str) else vi(o[0], None, o[1]) for o in outputs]
    g = helper.make_graph(protos, name, [vi(*i) for i in inputs], outs,
                          initializer=[onnx.numpy_helper.from_array(np.asarray(v), name=k)
                                       for k, v in all_inits.items()],
                          value_info=[vi(n, sh) for n, sh in value_info])
    model = qonnx_make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX_DOMAIN, 1),
                                               co.opset_import()])
    return ModelWrapper(model).transform(InferShapes())


def custom_op_example() -> ModelWrapper:
    """An example graph of the codesign custom ops, all built with the ``make_*`` helpers:
    x -> Quant int8 -> MatMul -> Requant (int8) -> IntLUT (gelu) -> IntAdd (int16, with the
    input) -> IntLayerNorm (int8) -> IntSoftmax -> y; seeded weights."""
    from codesign.sim.reference import IntType

    rng = np.random.default_rng(4)
    K, N = 16, 16
    s_x, s_w = 2.0**-4, 2.0**-6
    w = rng.integers(-127, 128, size=(K, N)).astype(np.float32) * np.float32(s_w)
    nodes = [quant("x", "xq", s_x, 8, True), quant("w", "wq", s_w, 8, True, narrow=True),
             helper.make_node("MatMul", ["xq", "wq"], ["acc"], name="mm")]
    s_acc = s_x * s_w
    M, sh = co.requant_params(s_acc, 2.0**-4)
    nodes.append(co.make_requant_node("acc", "h", M, sh, IntType(8, True), 2.0**-4, acc_scale=s_acc, name="rq"))
    nodes.append(co.make_lut_node("h", "g", IntType(8, True), 2.0**-4, IntType(8, True), 2.0**-4,
                                  function="gelu", name="gelu"))
    nodes.append(co.make_add_node("g", "xq", "r", IntType(8, True), 2.0**-4, IntType(8, True), s_x,
                                  IntType(16, True), 2.0**-6, name="res"))
    nodes.append(co.make_layernorm_node("r", "ln", 2.0**-6, IntType(8, True), 2.0**-5,
                                        gamma=rng.uniform(0.5, 1.5, N), beta=rng.uniform(-0.5, 0.5, N), name="ln"))
    nodes.append(co.make_softmax_node("ln", "y", IntType(8, True), 2.0**-5, name="sm"))
    return graph_model(nodes, [("x", [1, 3, K])], ["y"], {"w": w})


def structural_example() -> ModelWrapper:
    """An example graph exercising the structural ops: Quant -> Reshape -> Transpose ->
    Flatten -> MatMul -> Quant; residual Add at equal scales (exact); Identity; Concat;
    Gather; MultiThreshold to a 2-bit output. Two outputs ("y", "res"); seeded weights."""
    rng = np.random.default_rng(5)
    s = 2.0**-3
    w = rng.integers(-7, 8, size=(16, 16)).astype(np.float32) * np.float32(2.0**-3)
    T = np.sort(rng.uniform(-3, 3, size=(1, 3)).astype(np.float32), axis=1)
    nodes = [quant("x", "xq", s, 6, True),
             helper.make_node("Reshape", ["xq", "shp"], ["x3"], name="reshape"),
             helper.make_node("Transpose", ["x3"], ["xt"], name="transpose", perm=[0, 2, 1]),
             helper.make_node("Flatten", ["xt"], ["xf"], name="flatten", axis=1),
             quant("w", "wq", 2.0**-3, 4, True, narrow=True),
             helper.make_node("MatMul", ["xf", "wq"], ["acc"], name="mm"),
             quant("acc", "h", s, 6, True),
             helper.make_node("Add", ["h", "xq"], ["res"], name="add"),
             helper.make_node("Identity", ["res"], ["resi"], name="identity"),
             helper.make_node("Concat", ["resi", "xq"], ["cat"], name="concat", axis=1),
             helper.make_node("Gather", ["cat", "idx"], ["gat"], name="gather", axis=1),
             helper.make_node("MultiThreshold", ["gat", "T"], ["y"], name="mt", domain=QONNX_DOMAIN,
                              out_dtype="UINT2", out_scale=1.0, out_bias=0.0)]
    inits = {"w": w, "shp": np.asarray([1, 4, 4], dtype=np.int64), "T": T,
             "idx": np.asarray([0, 3, 17, 31, 5], dtype=np.int64)}
    return graph_model(nodes, [("x", [1, 16])], ["y", "res"], inits)
