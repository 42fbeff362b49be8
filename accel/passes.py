"""The lowering passes: small qonnx ``Transformation``s from QONNX to codesign's IR ops.

Each pass rewrites one pattern of the QONNX graph (``ModelWrapper``) and returns
``(model, changed)``; :func:`codesign.accel.lower.lower` applies them to a fixed point and
then converts the graph into an :class:`~codesign.accel.ir.IR`. ``docs/ir.md`` describes
what each pass recognises and the exactness of every rewrite.

Lowered nodes stay in the ONNX graph as nodes of the private domain :data:`IR_DOMAIN`
(``op_type`` = the IR op, one string attribute ``ir`` holding JSON: the IR attributes, the
output tensors' type/scale/shape, the constants' code types and the original node names).
They are never executed; later passes read their outputs' types and scales from them.
Integer constants (weight codes, biases, multipliers, thresholds) are int64 initializers.

Passes, in the order :func:`~codesign.accel.lower.lower` applies them:

===========================  =========================================================
``StashOnnxNames``           remember each node's original name (``metadata_props``)
``RejectUnsupportedOps``     ``UnsupportedOpError`` for any op type outside the list
``FoldReluIntoQuant``        ``Relu -> Quant`` becomes one Quant of the unsigned range
``FoldWeightQuants``         ``Quant``/``BipolarQuant`` of an initializer -> integer codes
``QuantizeInputs``           ``Quant``/``BipolarQuant`` of a graph input -> ``quantize``
``LowerCodesignOps``         ``Requant``/``IntSoftmax``/``IntLayerNorm``/``IntLUT``/``IntAdd``
``LowerMatMul``              ``MatMul``/``Gemm`` (bias, transB) -> ``matmul``
``LowerConv``                ``Conv`` (folded weights, bias) -> ``conv2d`` (NCHW accumulators)
``FoldBiasAdd``              ``matmul -> Add(constant)`` -> the matmul's bias
``LowerBatchNorm``           ``matmul/conv2d -> BatchNormalization -> Quant`` -> requant/threshold
``LowerActQuant``            ``Quant``/``BipolarQuant`` of an integer tensor -> requant/threshold
``LowerAdd``                 ``Add`` of two code tensors (``-> Quant``) -> ``add``
``LowerMultiThreshold``      ``MultiThreshold`` -> ``threshold``
``LowerPool``                ``MaxPool`` -> ``maxpool2d``; ``AveragePool``/``GlobalAveragePool`` (-> Quant) -> ``avgpool2d``
``LowerStructural``          ``Reshape``/``Flatten``/``Transpose``/``Concat``/``Gather``/``Identity``
``LowerActivationLUT``       ``Sigmoid``/``Tanh``/``Clip`` (ReLU6)/... ``-> Quant`` on codes -> ``lut``
``DequantizeOutputs``        integer graph outputs -> ``dequantize`` (host)
``CheckLowered``             ``LoweringError`` for any node left over, with the reason
===========================  =========================================================
"""
from __future__ import annotations

import json
import math
from fractions import Fraction
from typing import Any, Sequence

import numpy as np
from onnx import NodeProto, helper

from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.base import Transformation

from codesign.accel import custom_ops as co
from codesign.accel.ir import CodeType, Scale, Tensor
from codesign.sim import reference as ref

__all__ = [
    "LoweringError", "UnsupportedOpError", "OnnxReadError", "IR_DOMAIN", "SUPPORTED_OPS",
    "StashOnnxNames", "RejectUnsupportedOps", "FoldReluIntoQuant", "FoldWeightQuants", "QuantizeInputs",
    "LowerCodesignOps", "LowerMatMul", "FoldBiasAdd", "LowerBatchNorm", "LowerActQuant", "LowerAdd",
    "LowerMultiThreshold", "LowerStructural", "LowerConv", "LowerPool", "LowerActivationLUT", "DequantizeOutputs",
    "RemoveDeadConstants",
    "CheckLowered",
    "is_ir", "ir_info", "onnx_names", "mark_sparse",
]

IR_DOMAIN = "codesign.lowering"
"""Domain of lowered nodes inside the ONNX graph (never executed)."""

QONNX_DOMAIN = "qonnx.custom_op.general"
NAME_KEY = "codesign.onnx_name"
TENSOR_NAMES_KEY = "codesign.input_names"  # model metadata: cleaned graph input name -> original

SUPPORTED_OPS = {
    "": ("Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Conv", "Elu", "Erf", "Flatten", "Gather",
         "Gelu", "Gemm", "GlobalAveragePool", "HardSigmoid", "HardSwish", "Identity", "LeakyRelu", "MatMul",
         "MaxPool", "Mish", "Relu", "Reshape", "Selu", "Sigmoid", "Softplus", "Softsign", "Tanh", "Transpose"),
    QONNX_DOMAIN: ("BipolarQuant", "MultiThreshold", "Quant"),
    # codesign's custom ops that LowerCodesignOps maps (IntMatMul when custom_ops has it)
    co.DOMAIN: tuple(k for k in ("Requant", "IntSoftmax", "IntLayerNorm", "IntLUT", "IntAdd", "IntMatMul")
                     if k in co.OPS),
}
"""Op types the lowering knows, per ONNX domain ("" = standard ONNX)."""

#: rounding modes for which requant's round-half-up gives the Quant's result except at
#: exact ties (ROUND/HALF_EVEN: ties to even; requant: ties up)
_REQUANT_ROUNDING = ("ROUND", "HALF_EVEN")


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------

def one_line(text: Any) -> str:
    """Control characters escaped, so that a message stays on one line."""
    s = str(text)
    return s.translate({10: "\\n", 13: "\\r", 9: "\\t", 0: "\\0", 11: "\\v", 12: "\\f", 0x85: "\\x85",
                        0x2028: "\\u2028", 0x2029: "\\u2029"})


class LoweringError(ValueError):
    """The graph cannot be lowered; one line naming the node."""


class UnsupportedOpError(LoweringError):
    """A node whose op type the lowering does not know."""


class OnnxReadError(LoweringError):
    """The ONNX file cannot be read (missing, truncated, malformed)."""


def node_error(model: ModelWrapper | None, node: NodeProto, msg: str, cls=LoweringError) -> LoweringError:
    name = onnx_names(node)[0] if node is not None else "?"
    return cls(one_line(f"node '{name}' (op_type {node.op_type}): {msg}"))


def supported_list() -> str:
    return ", ".join(sorted({t for ts in SUPPORTED_OPS.values() for t in ts}))


# ---------------------------------------------------------------------------------------
# graph helpers
# ---------------------------------------------------------------------------------------

def onnx_names(node: NodeProto) -> list[str]:
    """The original ONNX names of the nodes a node stands for (stashed before cleanup)."""
    if node.domain == IR_DOMAIN:
        return list(ir_info(node)["onnx_name"])
    for p in node.metadata_props:
        if p.key == NAME_KEY:
            return json.loads(p.value)
    return [node.name]


def is_ir(node: NodeProto | None) -> bool:
    return node is not None and node.domain == IR_DOMAIN


def ir_info(node: NodeProto) -> dict:
    for a in node.attribute:
        if a.name == "ir":
            return json.loads(a.s.decode("utf-8"))
    raise AssertionError("IR node without info")


def make_ir_node(op: str, inputs: Sequence[str], outputs: Sequence[str], attrs: dict, out: Sequence[Tensor],
                 names: Sequence[str], target: str = "accel", const_types: dict[str, CodeType] | None = None,
                 notes: Sequence[str] = ()) -> NodeProto:
    info = {
        "op": op, "attrs": attrs, "target": target, "onnx_name": list(names),
        "out": [t.to_json() for t in out],
        "const_types": {k: v.to_json() for k, v in (const_types or {}).items()},
        "notes": list(notes),
    }
    return helper.make_node(op, list(inputs), list(outputs), name=f"lowered_{op}", domain=IR_DOMAIN,
                            ir=json.dumps(info, sort_keys=True))


def spec(model: ModelWrapper, tensor: str) -> Tensor | None:
    """Type/scale of a tensor once lowered: IR node output or float graph input; else None."""
    p = model.find_producer(tensor)
    if p is None:
        if tensor in [i.name for i in model.graph.input] and model.get_initializer(tensor) is None:
            return Tensor(_shape(model, tensor), "float")
        return None
    if not is_ir(p):
        return None
    info = ir_info(p)
    if info["op"] == "const":
        return None
    return Tensor.from_json(info["out"][list(p.output).index(tensor)], tensor)


class Const:
    """Integer codes of a folded weight/bias and their type and (raw, per-axis) scale."""

    def __init__(self, codes: np.ndarray, type_: CodeType, scale: np.ndarray, names: list[str]) -> None:
        self.codes, self.type, self.scale, self.names = codes, type_, scale, names


def const_of(model: ModelWrapper, tensor: str) -> Const | None:
    """The folded constant behind ``tensor`` (output of a ``const`` IR node), else None."""
    p = model.find_producer(tensor)
    if not is_ir(p):
        return None
    info = ir_info(p)
    if info["op"] != "const":
        return None
    codes = model.get_initializer(p.input[0]).astype(np.int64)
    scale = np.asarray(info["attrs"]["scale"], dtype=np.float64).reshape(info["attrs"]["scale_shape"])
    return Const(codes, CodeType.from_json(info["attrs"]["type"]), scale, info["onnx_name"])


def _shape(model: ModelWrapper, tensor: str) -> tuple[int, ...]:
    s = model.get_tensor_shape(tensor)
    if s is None:
        raise LoweringError(one_line(f"tensor '{tensor}' has no inferred shape"))
    return tuple(int(d) for d in s)


def replace_nodes(model: ModelWrapper, old: Sequence[NodeProto], new: Sequence[NodeProto]) -> None:
    """Insert ``new`` where the last of ``old`` stood (keeps the graph topologically sorted)."""
    g = model.graph
    idx = max(list(g.node).index(n) for n in old)
    for i, n in enumerate(new):
        g.node.insert(idx + 1 + i, n)
    for n in old:
        g.node.remove(n)


def single_consumer(model: ModelWrapper, tensor: str) -> NodeProto | None:
    if tensor in [o.name for o in model.graph.output]:
        return None
    cons = model.find_consumers(tensor)
    return cons[0] if len(cons) == 1 else None


def _attr(node: NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _is(node: NodeProto | None, op_type: str, domain: str = "") -> bool:
    return node is not None and node.op_type == op_type and node.domain in ((domain, "ai.onnx") if domain == ""
                                                                            else (domain,))


def _is_quant(node: NodeProto | None) -> bool:
    return node is not None and node.domain == QONNX_DOMAIN and node.op_type in ("Quant", "BipolarQuant")


def _init(model: ModelWrapper, node: NodeProto, idx: int, what: str) -> np.ndarray:
    if idx >= len(node.input) or not node.input[idx]:
        raise node_error(model, node, f"missing {what}")
    v = model.get_initializer(node.input[idx])
    if v is None:
        raise node_error(model, node, f"{what} '{node.input[idx]}' must be a constant (initializer)")
    return np.asarray(v)


class QuantSpec:
    """What a Quant/BipolarQuant node does: code type, raw scale array, rounding mode."""

    def __init__(self, type_: CodeType, scale: np.ndarray, rounding: str) -> None:
        self.type, self.scale, self.rounding = type_, scale, rounding


def read_quant(model: ModelWrapper, node: NodeProto, max_bits: int = 16) -> QuantSpec:
    if node.op_type == "BipolarQuant":
        s = _init(model, node, 1, "scale").astype(np.float32)
        t, rounding = CodeType(1, True), "ROUND"
    else:
        s = _init(model, node, 1, "scale").astype(np.float32)
        z = _init(model, node, 2, "zero point")
        b = _init(model, node, 3, "bit width")
        if np.any(z != 0):
            raise node_error(model, node, "non-zero zero point not supported (codesign is symmetric, §1)")
        if b.size != 1 or float(b.ravel()[0]) != int(b.ravel()[0]):
            raise node_error(model, node, f"bit width {b.ravel().tolist()} must be one integer")
        bits = int(b.ravel()[0])
        if not 1 <= bits <= max_bits:
            raise node_error(model, node, f"bit width {bits} not supported here (1..{max_bits})")
        signed, narrow = bool(_attr(node, "signed", 1)), bool(_attr(node, "narrow", 0))
        rounding = _attr(node, "rounding_mode", b"ROUND")
        rounding = (rounding.decode() if isinstance(rounding, bytes) else str(rounding)).upper()
        if rounding not in ref.ROUNDING_MODES:
            raise node_error(model, node, f"rounding mode {rounding!r} not supported")
        t = CodeType(bits, signed, narrow and bits > 1)
    if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise node_error(model, node, "scale must be finite and > 0")
    return QuantSpec(t, s, rounding)


def scale_on(model: ModelWrapper, node: NodeProto, s: np.ndarray, shape: Sequence[int], what: str,
             batch_axis: bool = True) -> tuple[np.ndarray, int | None]:
    """A raw scale array as (values, axis) for a tensor of ``shape``: one value (axis None)
    or values along one axis. ``batch_axis``: axis 0 is the batch and may not vary."""
    s = np.asarray(s, dtype=np.float64)
    if s.size == 1 or np.all(s == s.ravel()[0]):
        return np.asarray([s.ravel()[0]]), None
    nd = len(shape)
    if s.ndim > nd:
        raise node_error(model, node, f"{what} scale of shape {s.shape} does not fit tensor shape {tuple(shape)}")
    full = (1,) * (nd - s.ndim) + s.shape
    axes = [i for i, d in enumerate(full) if d != 1]
    if len(axes) != 1 or full[axes[0]] != shape[axes[0]]:
        raise node_error(model, node, f"{what} scale of shape {s.shape} must vary along one axis of "
                                      f"{tuple(shape)} (per tensor or per channel)")
    if batch_axis and axes[0] == 0:
        raise node_error(model, node, f"{what} scale varies along the batch axis")
    return s.ravel(), axes[0]


def to_scale(vals: np.ndarray, axis: int | None) -> Scale:
    return Scale.make(vals, axis) if axis is not None else Scale.scalar(float(vals[0]))


def fold_codes(x: np.ndarray, s: np.ndarray, t: CodeType, rounding: str) -> np.ndarray:
    """Integer codes of a constant, exactly as QONNX's Quant computes them (binary32)."""
    x32 = np.asarray(x, dtype=np.float32)
    q = np.divide(x32, np.asarray(s, dtype=np.float32), dtype=np.float32)
    if t.bipolar:
        return np.where(q >= 0, 1, -1).astype(np.int64)
    q = np.clip(q, np.float32(t.lo), np.float32(t.hi))
    codes = ref.ROUNDING_MODES[rounding](q)
    return np.clip(codes.astype(np.float64), t.lo, t.hi).astype(np.int64)


def int32_type() -> CodeType:
    return CodeType(32, True)


def acc_type_bits(K: int, a: CodeType, w: CodeType, bias: np.ndarray | None) -> int:
    blo, bhi = (int(bias.min()), int(bias.max())) if bias is not None and bias.size else (0, 0)
    return ref.acc_bits(K, a.int_type(), w.int_type(), blo, bhi)


def _frac_scale(s: Scale, n: int) -> list[Fraction]:
    """Exact rational per-channel scales (broadcast to n entries)."""
    vals = [Fraction(v) for v in s.values]
    return vals * n if len(vals) == 1 else vals


def level_boundary(c: int, rounding: str) -> tuple[Fraction, bool]:
    """(b, inclusive): a Quant with ``rounding`` gives a code >= c iff x >= b (inclusive)
    or x > b (exclusive), x being the input divided by the scale, for lo < c <= hi."""
    half = Fraction(1, 2)
    if rounding in ("ROUND", "HALF_EVEN"):
        return c - half, c % 2 == 0
    if rounding == "HALF_UP":  # ties away from zero
        return c - half, c >= 1
    if rounding == "HALF_DOWN":  # ties toward zero
        return c - half, c <= 0
    if rounding == "FLOOR":
        return Fraction(c), True
    if rounding == "CEIL":
        return Fraction(c - 1), False
    if rounding == "UP":  # away from zero
        return (Fraction(c - 1), False) if c >= 1 else (Fraction(c), True)
    if rounding == "DOWN":  # toward zero
        return (Fraction(c), True) if c >= 1 else (Fraction(c - 1), False)
    raise ValueError(rounding)


def _ceil(f: Fraction) -> int:
    return -((-f.numerator) // f.denominator)


def exact_thresholds(rho: Sequence[Fraction], t: CodeType, rounding: str, acc_lo: int, acc_hi: int) -> np.ndarray:
    """Thresholds T[c, k] on an integer accumulator ``acc`` such that counting ``acc >= T``
    reproduces ``Quant(acc * rho_c)`` exactly (rho = s_acc / s_out as exact rationals),
    clipped to ``[acc_lo, acc_hi + 1]`` (§8). Bipolar: one threshold at 0 (x >= 0)."""
    if t.bipolar:
        return np.zeros((len(rho), 1), dtype=np.int64)
    rows = []
    for r in rho:
        row = []
        for c in range(t.lo + 1, t.hi + 1):
            b, inclusive = level_boundary(c, rounding)
            v = b / r
            T = _ceil(v) if inclusive else math.floor(v) + 1
            row.append(min(max(T, acc_lo), acc_hi + 1))
        rows.append(row)
    return np.asarray(rows, dtype=np.int64)


def bn_levels(t: CodeType, rounding: str, s_out: float) -> np.ndarray:
    """Real boundaries u (ascending) where a quantizer of the BatchNorm output steps up."""
    if t.bipolar:
        return np.zeros(1)
    return np.asarray([float(level_boundary(c, rounding)[0]) * s_out for c in range(t.lo + 1, t.hi + 1)])


class _Pass(Transformation):
    """A lowering pass: ``apply`` rewrites one match and reports it (qonnx style);
    ``hits`` counts rewrites for the driver's fixed-point loop."""

    def __init__(self, **options) -> None:
        super().__init__()
        self.hits = 0
        self.options = options

    def apply(self, model: ModelWrapper):
        for node in list(model.graph.node):
            if self.rewrite(model, node):
                self.hits += 1
                return model, True
        return model, False

    def rewrite(self, model: ModelWrapper, node: NodeProto) -> bool:  # pragma: no cover
        raise NotImplementedError


# ---------------------------------------------------------------------------------------
# preparation
# ---------------------------------------------------------------------------------------

class StashOnnxNames(Transformation):
    """Record every node's original name in its ``metadata_props`` (qonnx's cleanup renames
    nodes; the IR keeps the original names in ``onnx_name``)."""

    def apply(self, model):
        for n in model.graph.node:
            if not any(p.key == NAME_KEY for p in n.metadata_props):
                p = n.metadata_props.add()
                p.key, p.value = NAME_KEY, json.dumps([n.name])
        return model, False


class RejectUnsupportedOps(Transformation):
    """``UnsupportedOpError`` for the first node whose (domain, op type) is not in
    :data:`SUPPORTED_OPS`. ``domains_only``: only nodes of unknown custom domains and
    unknown ops of known custom domains (run before qonnx's cleanup, which would fail on
    them); standard ONNX ops are checked after cleanup has folded constant subgraphs."""

    def __init__(self, domains_only: bool = False) -> None:
        super().__init__()
        self.domains_only = domains_only

    def apply(self, model):
        for n in model.graph.node:
            dom = {"ai.onnx": "", "onnx.brevitas": QONNX_DOMAIN}.get(n.domain, n.domain)
            if self.domains_only and dom == "":
                continue
            if n.op_type not in SUPPORTED_OPS.get(dom, ()):
                shown = n.op_type if dom == "" else f"{n.op_type} of domain {dom}"
                raise UnsupportedOpError(one_line(
                    f"node '{onnx_names(n)[0]}' (op_type {shown}) is not supported; supported: {supported_list()}"))
        return model, False


class FoldReluIntoQuant(_Pass):
    """``Relu -> Quant`` (the Relu's only consumer) becomes one ``Quant`` with the unsigned
    range: ``Quant(relu(x))`` of a signed ``b``-bit type equals ``Quant(x)`` of unsigned
    ``b-1`` bits (every rounding mode is monotone with R(0) = 0), and an unsigned Quant
    absorbs the Relu unchanged. Exact: the rewritten graph executes identically."""

    def rewrite(self, model, node):
        if not _is(node, "Relu"):
            return False
        q = single_consumer(model, node.output[0])
        if not (_is(q, "Quant", QONNX_DOMAIN) and q.input[0] == node.output[0]):
            return False
        if bool(_attr(q, "signed", 1)):
            b = model.get_initializer(q.input[3])
            if b is None or b.size != 1 or int(b.ravel()[0]) < 2:
                return False
            new_bits = int(b.ravel()[0]) - 1
            name = model.make_new_valueinfo_name()
            model.set_initializer(name, np.asarray(new_bits, dtype=np.float32))
            q.input[3] = name
            for a in q.attribute:
                if a.name == "signed":
                    a.i = 0
                if a.name == "narrow":
                    a.i = 0
            if _attr(q, "signed") is None:
                q.attribute.append(helper.make_attribute("signed", 0))
        q.input[0] = node.input[0]
        names = onnx_names(node) + onnx_names(q)
        _set_names(q, names)
        model.graph.node.remove(node)
        return True


def _set_names(node: NodeProto, names: list[str]) -> None:
    for p in node.metadata_props:
        if p.key == NAME_KEY:
            p.value = json.dumps(names)
            return
    p = node.metadata_props.add()
    p.key, p.value = NAME_KEY, json.dumps(names)


class FoldWeightQuants(_Pass):
    """``Quant``/``BipolarQuant`` of an initializer -> integer codes (int64 initializer) and
    their type and scale (a ``const`` IR node, folded into the consumer by later passes).
    The codes are computed as QONNX's Quant does, in binary32 (``fold_codes``)."""

    def rewrite(self, model, node):
        if not _is_quant(node) or model.get_initializer(node.input[0]) is None:
            return False
        qs = read_quant(model, node, max_bits=32)
        x = model.get_initializer(node.input[0])
        try:
            s_b = np.broadcast_to(qs.scale, np.broadcast_shapes(qs.scale.shape, x.shape))
        except ValueError:
            raise node_error(model, node, f"scale shape {qs.scale.shape} does not broadcast to {x.shape}") from None
        codes = fold_codes(x, s_b, qs.type, qs.rounding)
        if codes.shape != x.shape:
            raise node_error(model, node, "scale would enlarge the constant")
        init = f"{node.output[0]}_codes"
        model.set_initializer(init, codes)
        s = qs.scale.astype(np.float64)
        s = s.reshape((1,) * (x.ndim - s.ndim) + s.shape)
        attrs = {"type": qs.type.to_json(), "scale": s.ravel().tolist(), "scale_shape": list(s.shape)}
        ir_node = make_ir_node("const", [init], [node.output[0]], attrs, [], onnx_names(node))
        replace_nodes(model, [node], [ir_node])
        return True


class QuantizeInputs(_Pass):
    """``Quant``/``BipolarQuant`` of a float graph input -> ``quantize`` (host, §1)."""

    def rewrite(self, model, node):
        if not _is_quant(node):
            return False
        x = spec(model, node.input[0])
        if x is None or x.kind != "float":
            return False
        qs = read_quant(model, node, max_bits=16)
        vals, axis = scale_on(model, node, qs.scale, x.shape, "input")
        sc = to_scale(vals, axis)
        attrs = {"bits": qs.type.bits, "signed": qs.type.signed, "narrow": qs.type.narrow,
                 "rounding": qs.rounding, **sc.to_json()}
        out = Tensor(_shape(model, node.output[0]), "code", type=qs.type, scale=sc)
        replace_nodes(model, [node], [make_ir_node("quantize", [node.input[0]], [node.output[0]], attrs, [out],
                                                   onnx_names(node), target="host")])
        return True


# ---------------------------------------------------------------------------------------
# codesign custom ops: 1:1
# ---------------------------------------------------------------------------------------

def _code_input(model, node, idx: int, what: str, kinds=("code",)) -> Tensor | None:
    t = spec(model, node.input[idx])
    if t is None:
        return None
    if t.kind not in kinds:
        raise node_error(model, node, f"{what} '{node.input[idx]}' is a {t.kind} tensor, expected "
                                      f"{' or '.join(kinds)}")
    return t


def _same_scale(model, node, t: Tensor, scale: float, what: str) -> None:
    if t.scale.per_channel or np.float32(t.scale.value) != np.float32(scale):
        raise node_error(model, node, f"{what} scale {t.scale.values[:4]} differs from the node's "
                                      f"attribute {float(scale)!r}")


def _type_within(model, node, t: Tensor, want: CodeType, what: str) -> None:
    if not want.contains(t.type):
        raise node_error(model, node, f"{what} of type {t.type} is not within the node's type {want}")


class LowerCodesignOps(_Pass):
    """codesign's QONNX custom ops map 1:1 to contract ops: ``Requant`` -> requant,
    ``IntSoftmax`` -> softmax, ``IntLayerNorm`` -> layernorm, ``IntLUT`` -> lut,
    ``IntAdd`` -> add. Input scales and types must match the node's attributes (the node
    recovers codes with them); the IR tensors then carry the same codes."""

    def rewrite(self, model, node):
        if node.domain != co.DOMAIN or node.op_type not in co.OPS:
            return False
        inst = co.OPS[node.op_type](node)

        def a(name):
            return inst.get_nodeattr(name)

        def typ(p):
            return CodeType(int(a(f"{p}_bits")), bool(a(f"{p}_signed")),
                            bool(a(f"{p}_narrow")) if f"{p}_narrow" in inst.get_nodeattr_types() else False)

        names = onnx_names(node)
        out_name = node.output[0]
        shape = _shape(model, out_name)
        consts: dict[str, CodeType] = {}
        k = node.op_type
        if k == "Requant":
            x = _code_input(model, node, 0, "accumulator", ("code", "acc"))
            if x is None:
                return False
            M = _init(model, node, 1, "M").astype(np.int64)
            sh = _init(model, node, 2, "sh").astype(np.int64)
            acc_scale = model.get_initializer(node.input[3]) if len(node.input) > 3 and node.input[3] else None
            if len(node.input) > 3 and node.input[3] and acc_scale is None:
                raise node_error(model, node, "acc_scale must be a constant")
            want = np.asarray(1.0 if acc_scale is None else acc_scale, dtype=np.float64)
            have = x.scale.array(len(x.shape))
            try:
                same = np.all(np.broadcast_to(np.float32(have) == np.float32(want),
                                              np.broadcast_shapes(have.shape, want.shape)))
            except ValueError:
                same = False
            if not same:
                raise node_error(model, node, f"acc_scale {want.ravel()[:4].tolist()} differs from the scale "
                                              f"{list(x.scale.values[:4])} of its input '{node.input[0]}'")
            t = typ("out")
            acc_bits = max(int(a("acc_bits")), x.int_width())
            m = int(a("m"))
            attrs = {"out_type": t.to_json(), "acc_bits_max": acc_bits, "m": m}
            m_init, sh_init = f"{out_name}_M", f"{out_name}_sh"
            model.set_initializer(m_init, M)
            model.set_initializer(sh_init, sh)
            consts = {m_init: CodeType(24, False), sh_init: CodeType(6, False)}
            out = Tensor(shape, "code", type=t, scale=Scale.scalar(float(np.float32(a("out_scale")))))
            new = make_ir_node("requant", [node.input[0], m_init, sh_init], [out_name], attrs, [out], names,
                               const_types=consts)
        elif k == "IntLUT":
            x = _code_input(model, node, 0, "input")
            if x is None:
                return False
            ti, to = typ("in"), typ("out")
            _type_within(model, node, x, CodeType(ti.bits, ti.signed), "input")
            _same_scale(model, node, x, a("in_scale"), "input")
            table = _init(model, node, 1, "table").astype(np.int64)
            init = f"{out_name}_table"
            model.set_initializer(init, table)
            out = Tensor(shape, "code", type=to, scale=Scale.scalar(float(np.float32(a("out_scale")))))
            new = make_ir_node("lut", [node.input[0], init], [out_name], {"in_type": ti.to_json()}, [out], names,
                               const_types={init: to})
        elif k == "IntSoftmax":
            x = _code_input(model, node, 0, "input")
            if x is None:
                return False
            ti = CodeType(int(a("in_bits")), bool(a("in_signed")))
            _type_within(model, node, x, ti, "input")
            _same_scale(model, node, x, a("in_scale"), "input")
            eb, ob = int(a("eb")), int(a("ob"))
            if len(node.input) > 1 and node.input[1]:
                table = _init(model, node, 1, "table").astype(np.int64)
            else:
                table = ref.softmax_table(ti.int_type(), float(np.float32(a("in_scale"))), eb)
            init = f"{out_name}_table"
            model.set_initializer(init, table)
            out = Tensor(shape, "code", type=CodeType(ob, False), scale=Scale.scalar(math.ldexp(1.0, -ob)))
            new = make_ir_node("softmax", [node.input[0], init], [out_name],
                               {"in_type": ti.to_json(), "eb": eb, "ob": ob}, [out], names,
                               const_types={init: CodeType(max(eb, 1), False)})
        elif k == "IntLayerNorm":
            x = _code_input(model, node, 0, "input")
            if x is None:
                return False
            _type_within(model, node, x, CodeType(16, True), "input")
            _same_scale(model, node, x, a("in_scale"), "input")
            G = _init(model, node, 1, "G").astype(np.int64)
            B = _init(model, node, 2, "B").astype(np.int64)
            g_init, b_init = f"{out_name}_G", f"{out_name}_B"
            model.set_initializer(g_init, G)
            model.set_initializer(b_init, B)
            t = typ("out")
            out = Tensor(shape, "code", type=t, scale=Scale.scalar(float(np.float32(a("out_scale")))))
            new = make_ir_node("layernorm", [node.input[0], g_init, b_init], [out_name],
                               {"S": int(a("S")), "E": int(a("E")), "out_type": t.to_json()}, [out], names,
                               const_types={g_init: CodeType(16, True), b_init: CodeType(32, True)})
        elif k == "IntAdd":
            xa = _code_input(model, node, 0, "input a")
            xb = _code_input(model, node, 1, "input b")
            if xa is None or xb is None:
                return False
            ta, tb, ty = typ("a"), typ("b"), typ("out")
            _type_within(model, node, xa, ta, "input a")
            _type_within(model, node, xb, tb, "input b")
            _same_scale(model, node, xa, a("a_scale"), "input a")
            _same_scale(model, node, xb, a("b_scale"), "input b")
            out = Tensor(shape, "code", type=ty, scale=Scale.scalar(float(np.float32(a("out_scale")))))
            attrs = {"Ma": int(a("Ma")), "Mb": int(a("Mb")), "sh": int(a("sh")), "a_type": ta.to_json(),
                     "b_type": tb.to_json(), "out_type": ty.to_json()}
            new = make_ir_node("add", [node.input[0], node.input[1]], [out_name], attrs, [out], names)
        elif k == "IntMatMul":
            new = self._intmatmul(model, node, a, typ, names, shape)
            if new is None:
                return False
        else:  # pragma: no cover
            return False
        replace_nodes(model, [node], [new])
        return True

    @staticmethod
    def _intmatmul(model, node, a, typ, names, shape) -> NodeProto | None:
        """``IntMatMul`` -> ``matmul``. The graph holds the accumulator as integers (scale 1),
        and so does the IR: the real scale ``a_scale * w_scale`` is already folded into the
        consumer's multiplier (e.g. a ``Requant`` without ``acc_scale``)."""
        x = _code_input(model, node, 0, "input a")
        if x is None:
            return None
        ta, tw = typ("a"), typ("w")
        _type_within(model, node, x, ta, "input a")
        _same_scale(model, node, x, a("a_scale"), "input a")
        ws = np.asarray(a("w_scale"), dtype=np.float32).astype(np.float64).ravel()
        out_name = node.output[0]
        consts: dict[str, CodeType] = {}
        w = model.get_initializer(node.input[1])
        if w is not None:
            w = np.asarray(w)
            if w.dtype.kind not in "iu":
                try:
                    w = co.recover_codes(w, ws.astype(np.float32) if ws.size > 1 else np.float32(ws[0]), "w")
                except ValueError as e:
                    raise node_error(model, node, str(e)) from None
            w = w.astype(np.int64)
            if w.ndim != 2 or not tw.holds(w):
                raise node_error(model, node, f"weights of shape {w.shape} must be (K, N) codes of {tw}")
            w_in = f"{out_name}_w"
            model.set_initializer(w_in, w)
            consts[w_in] = tw
            K, N = w.shape
        else:
            wt = _code_input(model, node, 1, "input w")
            if wt is None:
                return None
            _type_within(model, node, wt, tw, "input w")
            if ws.size != 1:
                raise node_error(model, node, "a runtime w needs one w_scale")
            _same_scale(model, node, wt, ws[0], "input w")
            w_in, (K, N) = node.input[1], wt.shape[-2:]
        if ws.size not in (1, N):
            raise node_error(model, node, f"w_scale has {ws.size} values, need 1 or N={N}")
        inputs = [node.input[0], w_in]
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias = _init(model, node, 2, "bias")
            if bias.dtype.kind not in "iu" and not np.all(bias == np.rint(bias)):
                raise node_error(model, node, "bias must hold integer codes")
            bias = np.broadcast_to(bias.astype(np.int64).ravel(), (N,)).copy()
            b_in = f"{out_name}_bias"
            model.set_initializer(b_in, bias)
            consts[b_in] = int32_type()
            inputs.append(b_in)
        acc = acc_type_bits(K, ta, tw, bias)
        if acc > 48:
            raise node_error(model, node, f"needs a {acc}-bit accumulator, more than 48 (§2)")
        out = Tensor(shape, "acc", acc_bits=acc, scale=Scale.scalar(1.0))
        attrs = {"a_type": ta.to_json(), "w_type": tw.to_json(), "acc_bits": acc}
        w_txt = repr(float(ws[0])) if ws.size == 1 else f"{ws.size} per-channel values"
        note = (f"IntMatMul accumulator kept at scale 1 as in the graph (real scale a_scale*w_scale = "
                f"{x.scale.value!r}*{w_txt})")
        return make_ir_node("matmul", inputs, [out_name], attrs, [out], names, const_types=consts, notes=[note])


# ---------------------------------------------------------------------------------------
# matmul
# ---------------------------------------------------------------------------------------

def _bias_to_acc(model, node, bias_real: np.ndarray, s_acc: np.ndarray, N: int) -> tuple[np.ndarray, list[str]]:
    """A real bias as int32 codes at the accumulator scale: round_half_even(b / s_acc) in
    float64. Returns the codes and a note if the rounding was not exact."""
    b = np.asarray(bias_real, dtype=np.float64)
    if b.size not in (1, N):
        b2 = b.reshape(-1, b.shape[-1]) if b.ndim else b
        if b2.ndim == 2 and b2.shape[-1] == N and np.all(b2 == b2[0]):
            b = b2[0]
        else:
            raise node_error(model, node, f"bias of shape {b.shape} is not per output channel (N={N})")
    b = np.broadcast_to(b.ravel() if b.size == N else b.ravel()[:1], (N,))
    q = b / np.broadcast_to(s_acc, (N,))
    codes = np.rint(q)
    if np.any(np.abs(codes) > 2**31 - 1):
        raise node_error(model, node, f"bias needs more than 32 bits at the accumulator scale "
                                      f"(up to {float(np.abs(codes).max()):.4g})")
    err = float(np.abs(q - codes).max()) if q.size else 0.0
    notes = []
    if err != 0.0:
        notes.append(f"bias rounded to the accumulator grid s_a*s_w (round half to even; largest "
                      f"error {err:.3g} of an accumulator unit)")
    return codes.astype(np.int64), notes


class LowerMatMul(_Pass):
    """``MatMul``/``Gemm`` between a code tensor and folded weight codes (or a second code
    tensor) -> ``matmul`` (§2). ``Gemm``'s ``transB`` transposes the weight codes; its
    bias ``C`` (a folded Quant or a float initializer) is folded to int32 at the
    accumulator scale ``s_a * s_w`` (``_bias_to_acc``). The output is an accumulator of
    ``acc_bits`` (the contract's exact width) at scale ``s_a * s_w`` (per output channel when
    the weights are)."""

    def rewrite(self, model, node):
        if not (_is(node, "MatMul") or _is(node, "Gemm")):
            return False
        a = spec(model, node.input[0])
        if a is None or a.kind != "code":
            return False
        wc = const_of(model, node.input[1])
        wt = None if wc is not None else spec(model, node.input[1])
        if wc is None and (wt is None or wt.kind != "code"):
            return False
        names = onnx_names(node)
        gemm = node.op_type == "Gemm"
        if gemm:
            if int(_attr(node, "transA", 0)):
                raise node_error(model, node, "transA=1 not supported")
            if float(_attr(node, "alpha", 1.0)) != 1.0 or float(_attr(node, "beta", 1.0)) != 1.0:
                raise node_error(model, node, "alpha/beta other than 1 not supported")
        transB = gemm and int(_attr(node, "transB", 0))
        if a.scale.per_channel:
            raise node_error(model, node, f"input '{node.input[0]}' has a per-channel scale along the "
                                          "reduction axis; matmul needs a per-tensor input scale")
        if a.type.bits == 1 and not a.type.signed:
            raise node_error(model, node, "1-bit unsigned activations are not supported by matmul (§2)")
        consts: dict[str, CodeType] = {}
        out_name = node.output[0]
        out_shape = _shape(model, out_name)
        if wc is not None:
            w = wc.codes
            if w.ndim != 2:
                raise node_error(model, node, f"weights of shape {w.shape} are not 2-D")
            vals, axis = scale_on(model, node, wc.scale, w.shape, "weight", batch_axis=False)
            if transB:
                w = w.T
                axis = None if axis is None else 1 - axis
            if axis == 0:
                raise node_error(model, node, "weight scale varies along the reduction axis K "
                                              "(per-input-channel scales are not supported)")
            w_type = wc.type
            if not w_type.signed:
                raise node_error(model, node, f"weights of type {w_type} must be signed or bipolar (§2)")
            if w_type.bits > 8:
                raise node_error(model, node, f"weights of {w_type.bits} bits not supported (1..8, §2)")
            K, N = w.shape
            s_w = np.broadcast_to(vals, (N,)) if axis is not None else vals
            names = names + wc.names
            w_init = f"{out_name}_w"
            model.set_initializer(w_init, np.ascontiguousarray(w))
            consts[w_init] = w_type
            w_in = w_init
        else:
            if transB:
                raise node_error(model, node, "transB on a runtime operand is not supported")
            if wt.scale.per_channel:
                raise node_error(model, node, "runtime weight with a per-channel scale not supported")
            w_type = wt.type
            if not w_type.signed or w_type.bits > 8:
                raise node_error(model, node, f"runtime weight of type {w_type} must be signed or bipolar, "
                                              "1..8 bits (§2)")
            K, N = wt.shape[-2], wt.shape[-1]
            s_w = np.asarray([wt.scale.value])
            w_in = node.input[1]
        if not 1 <= a.type.bits <= 8:
            raise node_error(model, node, f"activations of {a.type.bits} bits not supported (1..8, §2)")
        if a.shape[-1] != K:
            raise node_error(model, node, f"inner dimensions differ: {a.shape} x ({K}, {N})")
        s_acc = a.scale.value * np.asarray(s_w, dtype=np.float64)  # exact: two binary32 values
        inputs = [node.input[0], w_in]
        notes: list[str] = []
        bias = None
        if gemm and len(node.input) > 2 and node.input[2]:
            bias, notes, b_names = self._bias(model, node, node.input[2], s_acc, N)
            names = names + b_names
            b_init = f"{out_name}_bias"
            model.set_initializer(b_init, bias)
            consts[b_init] = int32_type()
            inputs.append(b_init)
        acc = acc_type_bits(K, a.type, w_type, bias)
        if acc > 48:
            raise node_error(model, node, f"needs a {acc}-bit accumulator, more than 48 (§2)")
        attrs = {"a_type": a.type.to_json(), "w_type": w_type.to_json(), "acc_bits": acc}
        sc = Scale.make(s_acc, len(out_shape) - 1) if np.size(s_acc) > 1 else Scale.scalar(float(s_acc.ravel()[0]))
        out = Tensor(out_shape, "acc", acc_bits=acc, scale=sc)
        replace_nodes(model, [node], [make_ir_node("matmul", inputs, [out_name], attrs, [out], names,
                                                   const_types=consts, notes=notes)])
        return True

    def _bias(self, model, node, name: str, s_acc: np.ndarray, N: int):
        bc = const_of(model, name)
        names: list[str] = []
        if bc is not None:
            real = bc.codes.astype(np.float64) * np.broadcast_to(bc.scale, bc.codes.shape)
            names = bc.names
        else:
            real = model.get_initializer(name)
            if real is None:
                raise node_error(model, node, f"bias '{name}' must be a constant")
        codes, notes = _bias_to_acc(model, node, real, s_acc, N)
        return codes, notes, names


class FoldBiasAdd(_Pass):
    """``matmul -> Add(constant)`` (the accumulator's only use) -> the matmul's bias, at the
    accumulator scale (same rounding rule as a Gemm bias)."""

    def rewrite(self, model, node):
        if not _is(node, "Add"):
            return False
        for i in (0, 1):
            mm = model.find_producer(node.input[i])
            if not (is_ir(mm) and ir_info(mm)["op"] == "matmul"):
                continue
            if single_consumer(model, node.input[i]) is not node:
                continue
            other = node.input[1 - i]
            bc = const_of(model, other)
            if bc is not None:
                real = bc.codes.astype(np.float64) * np.broadcast_to(bc.scale, bc.codes.shape)
                extra_names = bc.names
            else:
                real = model.get_initializer(other)
                if real is None:
                    continue
                extra_names = []
            info = ir_info(mm)
            acc_t = Tensor.from_json(info["out"][0], "acc")
            N = acc_t.shape[-1]
            s_acc = np.broadcast_to(acc_t.scale.array(1), (N,)) if acc_t.scale.per_channel else \
                np.asarray([acc_t.scale.value])
            codes, notes = _bias_to_acc(model, node, real, s_acc, N)
            inputs = list(mm.input)
            if len(inputs) == 3:
                codes = codes + model.get_initializer(inputs[2]).astype(np.int64)
                if np.any(np.abs(codes) > 2**31 - 1):
                    raise node_error(model, node, "bias exceeds int32")
            b_init = f"{node.output[0]}_bias"
            model.set_initializer(b_init, codes)
            inputs = inputs[:2] + [b_init]
            w = model.get_initializer(inputs[1])
            a_t = CodeType.from_json(info["attrs"]["a_type"])
            w_t = CodeType.from_json(info["attrs"]["w_type"])
            K = w.shape[-2] if w is not None else spec(model, inputs[1]).shape[-2]
            acc = acc_type_bits(K, a_t, w_t, codes)
            if acc > 48:
                raise node_error(model, node, f"needs a {acc}-bit accumulator, more than 48 (§2)")
            attrs = dict(info["attrs"], acc_bits=acc)
            out = Tensor(_shape(model, node.output[0]), "acc", acc_bits=acc, scale=acc_t.scale)
            consts = {k: CodeType.from_json(v) for k, v in info["const_types"].items() if k in inputs}
            consts[b_init] = int32_type()
            new = make_ir_node("matmul", inputs, [node.output[0]], attrs, [out],
                               info["onnx_name"] + onnx_names(node) + extra_names, const_types=consts,
                               notes=info["notes"] + notes)
            replace_nodes(model, [mm, node], [new])
            return True
        return False


# ---------------------------------------------------------------------------------------
# quantizers of integer tensors: requant / threshold
# ---------------------------------------------------------------------------------------

def _requant_ok(qs: QuantSpec, threshold_all: bool) -> bool:
    """requant (round half up) stands for this quantizer: ROUND/HALF_EVEN (differs at exact
    ties only), or HALF_UP with a non-negative range (identical); 2..16 bits."""
    if threshold_all or qs.type.bits < 2:
        return False
    return qs.rounding in _REQUANT_ROUNDING or (qs.rounding == "HALF_UP" and qs.type.lo >= 0)


def _thr_type(acc_bits: int) -> CodeType:
    return CodeType(acc_bits + 1, True)


class LowerActQuant(_Pass):
    """``Quant``/``BipolarQuant`` of an integer tensor (accumulator or codes) -> ``requant``
    with the dyadic form of ``s_in / s_out`` (§3), or -> ``threshold`` (§8) with thresholds
    that reproduce the quantizer exactly: for bipolar and 1-bit outputs, rounding modes other
    than ROUND/HALF_EVEN (and HALF_UP on unsigned outputs), and for every quantizer when
    ``threshold_all`` is set. A Quant that maps codes onto the same codes is an
    ``identity``."""

    def rewrite(self, model, node):
        if not _is_quant(node):
            return False
        x = spec(model, node.input[0])
        if x is None or not x.is_int:
            return False
        o = self.options
        qs = read_quant(model, node, max_bits=16)
        names = onnx_names(node)
        out_name = node.output[0]
        shape = _shape(model, out_name)
        nd = len(shape)
        vals, axis = scale_on(model, node, qs.scale, shape, "output")
        s_out = to_scale(vals, axis)
        if x.kind == "code" and s_out == x.scale and qs.type.contains(x.type):
            out = Tensor(shape, "code", type=x.type, scale=x.scale)
            replace_nodes(model, [node], [make_ir_node("identity", [node.input[0]], [out_name], {}, [out], names)])
            return True
        if nd == 4 and any(s.per_channel and s.axis == 1 for s in (x.scale, s_out)):
            self._channels_last(model, node, x, shape, names)  # NCHW per-channel: lowered next round
            return True
        for s in (x.scale, s_out):
            if s.per_channel and s.axis != nd - 1:
                raise node_error(model, node, f"per-channel scale along axis {s.axis} not supported "
                                              f"(channels must be the last axis)")
        out = Tensor(shape, "code", type=qs.type, scale=s_out)
        if _requant_ok(qs, o.get("threshold_all", False)):
            r = x.scale.array(nd) / s_out.array(nd)
            C = shape[-1] if r.size > 1 else 1
            r = np.broadcast_to(r.reshape(-1), (C,)) if r.size > 1 else r.reshape(())
            try:
                M, sh = ref.dyadic(r, o.get("m", 16))
            except ValueError as e:
                raise node_error(model, node, str(e)) from None
            wacc = x.int_width()
            m = o.get("m", 16)
            if wacc + m > 62:
                raise node_error(model, node, f"{wacc}-bit input x {m}-bit multiplier exceeds 62 bits (§3)")
            m_init, sh_init = f"{out_name}_M", f"{out_name}_sh"
            model.set_initializer(m_init, np.asarray(M, dtype=np.int64))
            model.set_initializer(sh_init, np.asarray(sh, dtype=np.int64))
            attrs = {"out_type": qs.type.to_json(), "acc_bits_max": wacc, "m": m}
            new = make_ir_node("requant", [node.input[0], m_init, sh_init], [out_name], attrs, [out], names,
                               const_types={m_init: CodeType(24, False), sh_init: CodeType(6, False)})
        else:
            if qs.type.bits > 8:
                raise node_error(model, node, f"a {qs.type} quantizer with rounding {qs.rounding} needs "
                                              f"{qs.type.hi - qs.type.lo} thresholds per channel; at most 8-bit "
                                              f"outputs are lowered to thresholds")
            C = shape[-1] if (x.scale.per_channel or s_out.per_channel) else 1
            rho = [sx / so for sx, so in zip(_frac_scale(x.scale, C), _frac_scale(s_out, C))]
            lo, hi = x.value_range()
            T = exact_thresholds(rho, qs.type, qs.rounding, lo, hi)
            t_init = f"{out_name}_T"
            model.set_initializer(t_init, T)
            attrs = {"out_bias": 0 if qs.type.bipolar else qs.type.lo, "bipolar": qs.type.bipolar}
            new = make_ir_node("threshold", [node.input[0], t_init], [out_name], attrs, [out], names,
                               const_types={t_init: _thr_type(x.int_width())})
        replace_nodes(model, [node], [new])
        return True


    @staticmethod
    def _channels_last(model, node, x: Tensor, shape, names) -> None:
        """A quantizer of an NCHW tensor with a per-channel (axis 1) scale becomes
        ``transpose`` (IR, to NHWC) -> the Quant on NHWC (scale transposed) -> ONNX
        ``Transpose`` back (lowered by LowerStructural), so that requant/threshold see their
        per-channel parameters along the last axis. Exact: transposes move codes only."""
        out_name = node.output[0]
        x_nhwc, y_nhwc = f"{out_name}_in_nhwc", f"{out_name}_nhwc"
        t1, _ = _transpose_node(model, node.input[0], x_nhwc, x, NHWC, names)
        sc = np.asarray(model.get_initializer(node.input[1]))
        if sc.size > 1:
            sc4 = sc.reshape((1,) * (4 - sc.ndim) + sc.shape)
            s_init = f"{out_name}_scale_nhwc"
            model.set_initializer(s_init, np.ascontiguousarray(np.transpose(sc4, NHWC)))
            node.input[1] = s_init
        node.input[0] = x_nhwc
        node.output[0] = y_nhwc
        model.set_tensor_shape(y_nhwc, [shape[p] for p in NHWC])
        back = helper.make_node("Transpose", [y_nhwc], [out_name], perm=NCHW, name=f"{out_name}_to_nchw")
        _set_names(back, list(names))
        g = model.graph
        g.node.insert(list(g.node).index(node), t1)
        g.node.insert(list(g.node).index(node) + 1, back)


class LowerBatchNorm(_Pass):
    """``matmul -> BatchNormalization -> Quant/BipolarQuant`` (each the previous one's only
    consumer; a Relu before the Quant is already folded into it) -> the matmul and either

    * ``threshold`` (§8 ``bn_thresholds``) for bipolar and low-bit outputs (``bits <=
      bn_threshold_bits``) or rounding modes requant cannot express: output channels with
      ``gamma < 0`` get their weight column and bias negated first;
    * ``requant`` otherwise: per channel ``r_c = s_acc * |gamma_c| / (sigma_c * s_out)`` and
      the BatchNorm offset ``(beta_c * sigma_c / |gamma_c| - sign_c * mu_c) / s_acc`` rounded
      (half to even) into the int32 bias, with the same negation for ``gamma_c < 0``.

    ``sigma_c = sqrt(var_c + eps)``, all in float64."""

    def rewrite(self, model, node):
        if not _is(node, "BatchNormalization"):
            return False
        mm = model.find_producer(node.input[0])
        if not (is_ir(mm) and ir_info(mm)["op"] in ("matmul", "conv2d")):
            return False
        if single_consumer(model, node.input[0]) is not node:
            return False
        q = single_consumer(model, node.output[0])
        if not (_is_quant(q) and q.input[0] == node.output[0]):
            return False
        o = self.options
        info = ir_info(mm)
        conv = info["op"] == "conv2d"  # NCHW: channels on axis 1, worked on channels-last (NHWC)
        acc_t = Tensor.from_json(info["out"][0], "acc")
        if len(acc_t.shape) != (4 if conv else 2):
            raise node_error(model, node, f"BatchNormalization on a {len(acc_t.shape)}-d accumulator "
                                          "(channels not the last axis) not supported")
        C = acc_t.shape[1]
        gamma = _init(model, node, 1, "scale").astype(np.float64).ravel()
        beta = _init(model, node, 2, "bias").astype(np.float64).ravel()
        mean = _init(model, node, 3, "mean").astype(np.float64).ravel()
        var = _init(model, node, 4, "var").astype(np.float64).ravel()
        eps = float(np.float32(_attr(node, "epsilon", 1e-5)))
        if any(p.shape != (C,) for p in (gamma, beta, mean, var)):
            raise node_error(model, node, f"parameters must have shape ({C},)")
        qs = read_quant(model, q, max_bits=16)
        vals, axis = scale_on(model, q, qs.scale, acc_t.shape, "output")
        if axis is not None and axis != 1:
            raise node_error(model, q, "per-channel output scale must be along the channel axis")
        s_out = np.broadcast_to(vals, (C,)).astype(np.float64)
        s_acc = np.broadcast_to(np.asarray(acc_t.scale.values, dtype=np.float64), (C,))
        sigma = np.sqrt(var + eps)
        sign = np.where(gamma < 0, -1, 1)
        # negate weight columns / bias of gamma < 0 channels
        inputs = list(mm.input)
        w = model.get_initializer(inputs[1])
        if w is None and np.any(sign < 0):
            raise node_error(model, node, "negative gamma with a runtime weight operand not supported")
        w_t = CodeType.from_json(info["attrs"]["w_type"])
        a_t = CodeType.from_json(info["attrs"]["x_type" if conv else "a_type"])
        bias = model.get_initializer(inputs[2]).astype(np.int64) if len(inputs) == 3 else np.zeros(C, np.int64)
        consts = {k: CodeType.from_json(v) for k, v in info["const_types"].items()}
        out_name = q.output[0]
        out_shape = _shape(model, out_name)
        use_thr = (qs.type.bits <= o.get("bn_threshold_bits", 4) or not _requant_ok(qs, False)
                   or o.get("threshold_all", False))
        notes = list(info["notes"])
        if use_thr and qs.type.bits > 8:
            raise node_error(model, q, f"{qs.type} output with rounding {qs.rounding} would need "
                                       f"{qs.type.hi - qs.type.lo} thresholds per channel (at most 8 bits)")
        if not use_thr and np.any(gamma == 0):
            raise node_error(model, node, f"gamma = 0 in channel(s) {np.nonzero(gamma == 0)[0][:8].tolist()}: "
                                          "a constant channel needs thresholds (raise bn_threshold_bits)")
        if w is not None and np.any(sign < 0):
            w = w.astype(np.int64) * (sign[:, None, None, None] if conv else sign[None, :])
            if not w_t.holds(w):
                wider = CodeType(w_t.bits + 1, True)
                if w_t.bipolar or wider.bits > 8 or not wider.holds(w):
                    raise node_error(model, node, f"negating weight columns for gamma < 0 leaves the {w_t} range "
                                                  "(a most-negative code); use narrow weights")
                w_t = wider
            w_init = f"{mm.output[0]}_wn"
            model.set_initializer(w_init, w)
            consts.pop(inputs[1], None)
            consts[w_init] = w_t
            inputs[1] = w_init
            bias = bias * sign
        if conv:
            K = int(np.prod(model.get_initializer(inputs[1]).shape[1:]))
        else:
            K = model.get_initializer(inputs[1]).shape[0] if w is not None else spec(model, inputs[1]).shape[-2]
        if use_thr:
            g_abs = np.where(gamma == 0, 1.0, np.abs(gamma))
            mu = sign * mean
            acc = acc_type_bits(K, a_t, w_t, bias if len(inputs) == 3 else None)
            lo, hi = -(1 << (acc - 1)), (1 << (acc - 1)) - 1
            # bias is part of acc: thresholds on (acc_without_bias + bias) in real units
            if np.all(s_out == s_out[0]):
                levels = bn_levels(qs.type, qs.rounding, float(s_out[0]))
                T = ref.bn_thresholds(g_abs, beta, mu, var, eps, s_acc, levels)
            else:
                T = np.concatenate([ref.bn_thresholds(g_abs[c:c + 1], beta[c:c + 1], mu[c:c + 1], var[c:c + 1], eps,
                                                      s_acc[c:c + 1], bn_levels(qs.type, qs.rounding, s_out[c]))
                                    for c in range(C)])
            for c in np.nonzero(gamma == 0)[0]:  # constant channel: the BN output is beta
                levels = bn_levels(qs.type, qs.rounding, float(s_out[c]))
                T[c] = np.where(beta[c] >= levels, lo, hi + 1)
            T = np.clip(T, lo, hi + 1)
            t_init = f"{out_name}_T"
            model.set_initializer(t_init, T)
            b_list = inputs
            if len(inputs) == 3:
                b_init = f"{mm.output[0]}_bn_bias"
                model.set_initializer(b_init, bias)
                consts.pop(inputs[2], None)
                consts[b_init] = int32_type()
                b_list = inputs[:2] + [b_init]
            mm_new = self._matmul(model, mm, info, b_list, a_t, w_t, acc, consts, notes)
            attrs = {"out_bias": 0 if qs.type.bipolar else qs.type.lo, "bipolar": qs.type.bipolar}
            out = Tensor(out_shape, "code", type=qs.type, scale=to_scale(vals, None if axis is None else 1))
            fin = [make_ir_node("threshold", [mm.output[0], t_init], [out_name], attrs, [out],
                                onnx_names(node) + onnx_names(q), const_types={t_init: _thr_type(acc)})]
        else:
            g_abs = np.abs(gamma)
            r = s_acc * g_abs / (sigma * s_out)
            offset = (beta * sigma / g_abs - sign * mean) / s_acc
            off_codes = np.rint(offset)
            if np.any(offset != off_codes):
                notes.append("BatchNorm offset rounded to the accumulator grid (round half to even; largest "
                             f"error {float(np.abs(offset - off_codes).max()):.3g} of an accumulator unit)")
            bias = bias + off_codes.astype(np.int64)
            if np.any(np.abs(bias) > 2**31 - 1):
                raise node_error(model, node, "folded BatchNorm offset exceeds the int32 bias")
            b_init = f"{mm.output[0]}_bn_bias"
            model.set_initializer(b_init, bias)
            if len(inputs) == 3:
                consts.pop(inputs[2], None)
            consts[b_init] = int32_type()
            acc = acc_type_bits(K, a_t, w_t, bias)
            if acc > 48:
                raise node_error(model, node, f"needs a {acc}-bit accumulator, more than 48 (§2)")
            try:
                M, sh = ref.dyadic(r, o.get("m", 16))
            except ValueError as e:
                raise node_error(model, node, str(e)) from None
            m = o.get("m", 16)
            if acc + m > 62:
                raise node_error(model, node, f"{acc}-bit accumulator x {m}-bit multiplier exceeds 62 bits (§3)")
            mm_new = self._matmul(model, mm, info, inputs[:2] + [b_init], a_t, w_t, acc, consts, notes)
            m_init, sh_init = f"{out_name}_M", f"{out_name}_sh"
            model.set_initializer(m_init, np.asarray(M, dtype=np.int64))
            model.set_initializer(sh_init, np.asarray(sh, dtype=np.int64))
            attrs = {"out_type": qs.type.to_json(), "acc_bits_max": acc, "m": m}
            out = Tensor(out_shape, "code", type=qs.type, scale=to_scale(vals, None if axis is None else 1))
            fin = [make_ir_node("requant", [mm.output[0], m_init, sh_init], [out_name], attrs, [out],
                                onnx_names(node) + onnx_names(q),
                                const_types={m_init: CodeType(24, False), sh_init: CodeType(6, False)})]
        if conv:
            fin = self._channels_last(model, mm_new, fin[0])
        replace_nodes(model, [mm, node, q], [mm_new, *fin])
        return True

    @staticmethod
    def _channels_last(model, conv_node: NodeProto, fin: NodeProto) -> list[NodeProto]:
        """Per-channel requant/threshold on an NCHW conv accumulator, done channels-last (the
        contract's per-channel parameters run along the last axis): ``transpose`` to NHWC,
        ``fin`` on it, ``transpose`` back to NCHW. Returns the three nodes."""
        acc_name, out_name = conv_node.output[0], fin.output[0]
        info = ir_info(fin)
        acc_t = Tensor.from_json(ir_info(conv_node)["out"][0], "acc")
        y_t = Tensor.from_json(info["out"][0], "y")
        names = info["onnx_name"]
        a_nhwc, y_nhwc = f"{acc_name}_nhwc", f"{out_name}_nhwc"
        t1, a_t = _transpose_node(model, acc_name, a_nhwc, acc_t, NHWC, names)
        y_t_nhwc = _channels_last_tensor(y_t)
        model.set_tensor_shape(y_nhwc, list(y_t_nhwc.shape))
        info["out"] = [y_t_nhwc.to_json()]
        fin_n = helper.make_node(fin.op_type, [a_nhwc, *fin.input[1:]], [y_nhwc], name=fin.name, domain=IR_DOMAIN,
                                 ir=json.dumps(info, sort_keys=True))
        t2, _ = _transpose_node(model, y_nhwc, out_name, y_t_nhwc, NCHW, names)
        return [t1, fin_n, t2]

    @staticmethod
    def _matmul(model, mm, info, inputs, a_t, w_t, acc, consts, notes) -> NodeProto:
        acc_old = Tensor.from_json(info["out"][0], "acc")
        if acc > 48:
            raise node_error(model, mm, f"needs a {acc}-bit accumulator, more than 48 (§2)")
        out = Tensor(acc_old.shape, "acc", acc_bits=acc, scale=acc_old.scale)
        attrs = dict(info["attrs"], w_type=w_t.to_json(), acc_bits=acc)  # matmul: a_type; conv2d: x_type
        if info["op"] == "matmul":
            attrs["a_type"] = a_t.to_json()
        return make_ir_node(info["op"], inputs, [mm.output[0]], attrs, [out], info["onnx_name"],
                            const_types={k: v for k, v in consts.items() if k in inputs}, notes=notes)


# ---------------------------------------------------------------------------------------
# add, MultiThreshold, structural ops
# ---------------------------------------------------------------------------------------

class LowerAdd(_Pass):
    """``Add`` of two code tensors -> ``add`` (§7): with its only consumer a ``Quant``
    (ROUND/HALF_EVEN, 2..16 bits) that Quant gives the output type and scale and
    ``add_params(s_a, s_b, s_y)`` the multipliers; without one, the inputs must share a
    scale and the output is their exact sum in the smallest type that holds it."""

    def rewrite(self, model, node):
        if not _is(node, "Add"):
            return False
        xa, xb = spec(model, node.input[0]), spec(model, node.input[1])
        if xa is None or xb is None or xa.kind != "code" or xb.kind != "code":
            return False
        for i, t in ((0, xa), (1, xb)):
            if t.scale.per_channel:
                raise node_error(model, node, f"input '{node.input[i]}' has a per-channel scale (add needs "
                                              "per-tensor scales)")
            if not 2 <= t.type.bits <= 16:
                raise node_error(model, node, f"input '{node.input[i]}' of type {t.type} not supported "
                                              "(2..16 bits, §7)")
        m = self.options.get("m", 16)
        q = single_consumer(model, node.output[0])
        names = onnx_names(node)
        if _is(q, "Quant", QONNX_DOMAIN) and q.input[0] == node.output[0]:
            qs = read_quant(model, q, max_bits=16)
            if qs.type.bits < 2 or qs.rounding not in _REQUANT_ROUNDING + (("HALF_UP",) if qs.type.lo >= 0 else ()):
                raise node_error(model, q, f"{qs.type} output with rounding {qs.rounding} after an Add is not "
                                           "supported (add rounds half up, 2..16 bits)")
            shape = _shape(model, q.output[0])
            vals, axis = scale_on(model, q, qs.scale, shape, "output")
            if axis is not None:
                raise node_error(model, q, "per-channel output scale after an Add not supported")
            s_y = float(vals[0])
            try:
                Ma, Mb, sh = ref.add_params(xa.scale.value, xb.scale.value, s_y, m)
            except ValueError as e:
                raise node_error(model, node, str(e)) from None
            t_out, out_name, old = qs.type, q.output[0], [node, q]
            names = names + onnx_names(q)
        else:
            if xa.scale != xb.scale:
                return False
            s_y = xa.scale.value
            t_out = CodeType.smallest(xa.type.lo + xb.type.lo, xa.type.hi + xb.type.hi)
            if t_out.bits > 16:
                raise node_error(model, node, f"the exact sum needs {t_out} (more than 16 bits)")
            Ma, Mb, sh = ref.add_params(s_y, s_y, s_y, m)
            shape, out_name, old = _shape(model, node.output[0]), node.output[0], [node]
        attrs = {"Ma": int(Ma), "Mb": int(Mb), "sh": int(sh), "a_type": xa.type.to_json(),
                 "b_type": xb.type.to_json(), "out_type": t_out.to_json()}
        out = Tensor(shape, "code", type=t_out, scale=Scale.scalar(s_y))
        replace_nodes(model, old, [make_ir_node("add", [node.input[0], node.input[1]], [out_name], attrs, [out],
                                                names)])
        return True


class LowerMultiThreshold(_Pass):
    """QONNX ``MultiThreshold`` on an integer tensor -> ``threshold`` (§8): float thresholds
    ``T`` at the input's scale ``s`` become ``ceil(T / s)`` (exact rationals; ``v >= T`` iff
    ``acc >= ceil(T / s)``), sorted per channel; ``out_scale * count + out_bias`` must be
    codes ``count + k`` at scale ``out_scale`` (integer ``k = out_bias / out_scale``) or
    bipolar (``out_scale = 2s``, ``out_bias = -s``). Channels must be the last axis."""

    def rewrite(self, model, node):
        if not _is(node, "MultiThreshold", QONNX_DOMAIN):
            return False
        x = spec(model, node.input[0])
        if x is None or not x.is_int:
            return False
        T = _init(model, node, 1, "thresholds").astype(np.float64)
        shape = _shape(model, node.output[0])
        nd = len(shape)
        layout = _attr(node, "data_layout", b"")
        layout = layout.decode() if isinstance(layout, bytes) else str(layout)
        if not layout:
            layout = {2: "NC", 3: "NWC", 4: "NCHW"}.get(nd, "")
        cdim = layout.index("C") if "C" in layout else 1
        if T.ndim != 2:
            raise node_error(model, node, f"thresholds must be 2-D (C, n), got {T.shape}")
        if T.shape[0] != 1 and cdim != nd - 1:
            raise node_error(model, node, f"channel axis {cdim} is not the last axis (layout {layout})")
        if x.scale.per_channel and x.scale.axis != nd - 1:
            raise node_error(model, node, "per-channel input scale must be along the last axis")
        C = T.shape[0] if not x.scale.per_channel else shape[-1]
        T = np.broadcast_to(T, (C, T.shape[1])) if T.shape[0] == 1 else T
        sx = _frac_scale(x.scale, C)
        lo, hi = x.value_range()
        Ti = np.asarray([[min(max(_ceil(Fraction(float(v)) / sx[c]), lo), hi + 1) for v in T[c]]
                         for c in range(C)], dtype=np.int64)
        Ti = np.sort(Ti, axis=1)
        n = Ti.shape[1]
        o_s = Fraction(float(_attr(node, "out_scale", 1.0)))
        o_b = Fraction(float(_attr(node, "out_bias", 0.0)))
        dt = _attr(node, "out_dtype", b"")
        dt = dt.decode() if isinstance(dt, bytes) else str(dt)
        if n == 1 and o_s > 0 and o_b == -o_s / 2:
            t_out, scale, attrs = CodeType(1, True), float(-o_b), {"out_bias": 0, "bipolar": True}
        elif o_s > 0 and (o_b / o_s).denominator == 1:
            k = int(o_b / o_s)
            t_out = CodeType.smallest(k, k + n)
            import re
            mt = re.fullmatch(r"(U?)INT(\d+)", dt)
            if mt:
                cand = CodeType(int(mt.group(2)), not mt.group(1))
                if cand.lo <= k and k + n <= cand.hi:
                    t_out = cand
            if t_out.bits > 16:
                raise node_error(model, node, f"output codes {k}..{k + n} need more than 16 bits")
            scale, attrs = float(o_s), {"out_bias": k, "bipolar": False}
        else:
            raise node_error(model, node, f"out_scale={float(o_s)!r}, out_bias={float(o_b)!r} do not give integer "
                                          "codes (need out_bias/out_scale integer, or a bipolar output)")
        t_init = f"{node.output[0]}_T"
        model.set_initializer(t_init, Ti)
        out = Tensor(shape, "code", type=t_out, scale=Scale.scalar(scale))
        replace_nodes(model, [node], [make_ir_node("threshold", [node.input[0], t_init], [node.output[0]], attrs,
                                                   [out], onnx_names(node),
                                                   const_types={t_init: _thr_type(x.int_width())})])
        return True


class LowerStructural(_Pass):
    """``Reshape``/``Flatten``/``Transpose``/``Concat``/``Gather``/``Identity`` of integer
    tensors -> structural IR ops (codes, type and scale pass through; the batch axis 0
    stays first). Reshape targets come from shape inference without the batch axis."""

    OPS = ("Reshape", "Flatten", "Transpose", "Concat", "Gather", "Identity")

    def rewrite(self, model, node):
        if not any(_is(node, k) for k in self.OPS):
            return False
        k = node.op_type
        data = list(node.input) if k == "Concat" else [node.input[0]]
        xs = [spec(model, n) for n in data]
        if any(t is None or not t.is_int for t in xs):
            return False
        x = xs[0]
        out_name = node.output[0]
        shape = _shape(model, out_name)
        nd = len(x.shape)
        scale, typ, acc_bits = x.scale, x.type, x.acc_bits
        inputs = list(data)
        consts: dict[str, CodeType] = {}
        if k in ("Reshape", "Flatten", "Gather", "Concat") and x.scale.per_channel:
            raise node_error(model, node, "a per-channel scale cannot pass this op")
        if k in ("Reshape", "Flatten") and shape[0] != x.shape[0]:
            raise node_error(model, node, f"reshape {x.shape} -> {shape} moves the batch axis")
        if k == "Reshape":
            op, attrs = "reshape", {"shape": list(shape[1:])}
        elif k == "Flatten":
            axis = int(_attr(node, "axis", 1))
            axis = axis + nd if axis < 0 else axis
            if axis != 1:
                raise node_error(model, node, f"Flatten axis {axis} not supported (axis 1 keeps the batch)")
            op, attrs = "flatten", {"axis": 1}
        elif k == "Transpose":
            perm = [int(p) for p in (_attr(node, "perm") or list(range(nd))[::-1])]
            if perm[0] != 0:
                raise node_error(model, node, f"perm {perm} moves the batch axis")
            op, attrs = "transpose", {"perm": perm}
            if x.scale.per_channel:
                scale = Scale(x.scale.values, perm.index(x.scale.axis))
        elif k == "Concat":
            axis = int(_attr(node, "axis"))
            axis = axis + nd if axis < 0 else axis
            if axis < 1:
                raise node_error(model, node, "concat along the batch axis not supported")
            if any(t.scale != x.scale or t.kind != x.kind for t in xs):
                raise node_error(model, node, "inputs must share kind and scale")
            if x.kind == "code":
                typ = CodeType.smallest(min(t.type.lo for t in xs), max(t.type.hi for t in xs),
                                        signed=any(t.type.signed for t in xs))
                if all(t.type == x.type for t in xs):
                    typ = x.type
            else:
                acc_bits = max(t.acc_bits for t in xs)
            op, attrs = "concat", {"axis": axis}
        elif k == "Gather":
            axis = int(_attr(node, "axis", 0))
            axis = axis + nd if axis < 0 else axis
            if axis < 1:
                raise node_error(model, node, "gather along the batch axis not supported")
            idx = _init(model, node, 1, "indices").astype(np.int64)
            i_init = f"{out_name}_indices"
            model.set_initializer(i_init, idx)
            inputs.append(i_init)
            consts[i_init] = CodeType(64, True)
            op, attrs = "gather", {"axis": axis}
        else:
            op, attrs = "identity", {}
        out = Tensor(shape, x.kind, type=typ if x.kind == "code" else None,
                     acc_bits=acc_bits if x.kind == "acc" else None, scale=scale)
        replace_nodes(model, [node], [make_ir_node(op, inputs, [out_name], attrs, [out], onnx_names(node),
                                                   const_types=consts)])
        return True


# ---------------------------------------------------------------------------------------
# convolution and pooling (NCHW)
# ---------------------------------------------------------------------------------------

NHWC = [0, 2, 3, 1]
NCHW = [0, 3, 1, 2]


def _ints(node: NodeProto, name: str, default: Sequence[int]) -> list[int]:
    v = _attr(node, name)
    return [int(e) for e in (default if v is None else v)]


def _check_2d_window(model, node, nd: int, what: str) -> None:
    auto_pad = _attr(node, "auto_pad", b"NOTSET")
    auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else str(auto_pad)
    if auto_pad != "NOTSET":
        raise node_error(model, node, f"auto_pad={auto_pad} not supported (NOTSET with explicit pads)")
    if nd != 4:
        raise node_error(model, node, f"{what} on a {nd}-d tensor not supported (2-D, NCHW)")


def _channels_last_tensor(t: Tensor) -> Tensor:
    """The NHWC view of a 4-d NCHW IR tensor (a per-channel scale moves to axis 3)."""
    shape = tuple(t.shape[p] for p in NHWC)
    scale = Scale(t.scale.values, 3) if t.scale.per_channel and t.scale.axis == 1 else t.scale
    return Tensor(shape, t.kind, type=t.type, acc_bits=t.acc_bits, scale=scale)


def _transpose_node(model: ModelWrapper, src: str, dst: str, t: Tensor, perm: list[int],
                    names: Sequence[str]) -> tuple[NodeProto, Tensor]:
    """An IR ``transpose`` of ``src`` (IR tensor ``t``) into ``dst``; returns it and ``dst``'s spec."""
    shape = tuple(t.shape[p] for p in perm)
    scale = Scale(t.scale.values, perm.index(t.scale.axis)) if t.scale.per_channel else t.scale
    out = Tensor(shape, t.kind, type=t.type, acc_bits=t.acc_bits, scale=scale)
    model.set_tensor_shape(dst, list(shape))
    return make_ir_node("transpose", [src], [dst], {"perm": list(perm)}, [out], names), out


class LowerConv(_Pass):
    """QONNX ``Conv`` (2-D, NCHW) of a code tensor (per-tensor scale) with folded weight codes
    (``Quant``/``BipolarQuant`` of a constant, per-tensor or per-output-channel scale) and an
    optional bias (a folded Quant, e.g. ``Int32Bias``, or a float initializer) -> ``conv2d``
    (§11). The output is an NCHW accumulator of §11's exact width at scale ``s_x * s_w``
    (per output channel along axis 1 when the weights are); the bias goes to the accumulator
    grid as a Gemm bias does (``_bias_to_acc``). ``auto_pad`` must be NOTSET; pads, strides,
    dilations and groups are taken as given (ONNX pads = [top, left, bottom, right])."""

    def rewrite(self, model, node):
        if not _is(node, "Conv"):
            return False
        x = spec(model, node.input[0])
        if x is None or x.kind != "code":
            return False
        if len(node.input) < 2 or not node.input[1]:
            raise node_error(model, node, "Conv without a weight input")
        wc = const_of(model, node.input[1])
        if wc is None:
            if model.get_initializer(node.input[1]) is not None or spec(model, node.input[1]) is not None:
                raise node_error(model, node, "weights must be a Quant/BipolarQuant of a constant (a float or "
                                              "runtime weight tensor is not supported)")
            return False
        names = onnx_names(node)
        _check_2d_window(model, node, len(x.shape), "Conv")
        if x.scale.per_channel:
            raise node_error(model, node, f"input '{node.input[0]}' has a per-channel scale; conv2d needs a "
                                          "per-tensor input scale (§11)")
        if not 1 <= x.type.bits <= 8 or (x.type.bits == 1 and not x.type.signed):
            raise node_error(model, node, f"activations of type {x.type} not supported (1..8 bits, 1-bit "
                                          "bipolar, §11)")
        w = wc.codes
        if w.ndim != 4:
            raise node_error(model, node, f"weights of shape {w.shape} are not (OC, C/group, KH, KW)")
        w_type = wc.type
        if not w_type.signed or w_type.bits > 8:
            raise node_error(model, node, f"weights of type {w_type} must be signed or bipolar, 1..8 bits (§11)")
        OC, ICg, KH, KW = w.shape
        C = x.shape[1]
        group = int(_attr(node, "group", 1))
        if group < 1 or C % group or OC % group or ICg != C // group:
            raise node_error(model, node, f"group={group} does not fit input channels {C} and weights {w.shape}")
        ks = _ints(node, "kernel_shape", [KH, KW])
        if ks != [KH, KW]:
            raise node_error(model, node, f"kernel_shape {ks} differs from the weights' {[KH, KW]}")
        strides = _ints(node, "strides", [1, 1])
        dil = _ints(node, "dilations", [1, 1])
        pads = _ints(node, "pads", [0, 0, 0, 0])
        if len(strides) != 2 or len(dil) != 2 or len(pads) != 4 or min(strides + dil) < 1 or min(pads) < 0:
            raise node_error(model, node, f"strides {strides}, dilations {dil}, pads {pads} not supported "
                                          "(2-D: two strides/dilations >= 1, four pads >= 0)")
        vals, axis = scale_on(model, node, wc.scale, w.shape, "weight", batch_axis=False)
        if axis not in (None, 0):
            raise node_error(model, node, f"weight scale varies along axis {axis}; only per-tensor or per-output-"
                                          "channel (axis 0) weight scales are supported")
        s_w = np.broadcast_to(vals, (OC,)) if axis is not None else vals
        s_acc = x.scale.value * np.asarray(s_w, dtype=np.float64)  # exact: two binary32 values
        out_name = node.output[0]
        out_shape = _shape(model, out_name)
        try:
            oh_ow = ref.conv_geometry(x.shape[2], x.shape[3], (KH, KW), strides, pads, dil)
        except ValueError as e:
            raise node_error(model, node, str(e)) from None
        if tuple(out_shape) != (x.shape[0], OC, *oh_ow):
            raise node_error(model, node, f"output shape {out_shape} differs from §11's {(x.shape[0], OC, *oh_ow)}")
        consts: dict[str, CodeType] = {}
        w_init = f"{out_name}_w"
        model.set_initializer(w_init, np.ascontiguousarray(w))
        consts[w_init] = w_type
        inputs = [node.input[0], w_init]
        names = names + wc.names
        notes: list[str] = []
        bias = None
        if len(node.input) > 2 and node.input[2]:
            bias, notes, b_names = LowerMatMul._bias(self, model, node, node.input[2], s_acc, OC)
            names = names + b_names
            b_init = f"{out_name}_bias"
            model.set_initializer(b_init, bias)
            consts[b_init] = int32_type()
            inputs.append(b_init)
        K = ICg * KH * KW
        acc = acc_type_bits(K, x.type, w_type, bias)
        if acc > 48:
            raise node_error(model, node, f"needs a {acc}-bit accumulator, more than 48 (§2, §11)")
        attrs = {"stride": strides, "pad": pads, "dilation": dil, "groups": group, "x_type": x.type.to_json(),
                 "w_type": w_type.to_json(), "acc_bits": acc}
        sc = Scale.make(s_acc, 1) if np.size(s_acc) > 1 else Scale.scalar(float(s_acc.ravel()[0]))
        out = Tensor(out_shape, "acc", acc_bits=acc, scale=sc)
        replace_nodes(model, [node], [make_ir_node("conv2d", inputs, [out_name], attrs, [out], names,
                                                   const_types=consts, notes=notes)])
        return True


class LowerPool(_Pass):
    """Pooling of NCHW code tensors (§9):

    * ``MaxPool`` -> ``maxpool2d`` (codes, type and scale pass through);
    * ``AveragePool`` / ``GlobalAveragePool`` -> ``avgpool2d``: the window sum and a dyadic
      requant by ``r = s_x / (kh * kw * s_y)`` (§9). With a ``Quant`` as the pool's only
      consumer (ROUND/HALF_EVEN, or HALF_UP unsigned; 2..16 bits, per tensor) ``s_y`` and
      the output type are the Quant's (round half up: as requant, it differs from QONNX's
      half-to-even at exact ties only); without one, or with ``threshold_all`` (the Quant is
      then lowered on its own, to thresholds that reproduce its rounding exactly), the output
      is the exact window sum at ``s_y = s_x / (kh * kw)`` (``r = 1``) in the smallest type
      that holds it (<= 16 bits).

    Supported: ``ceil_mode = 0``, ``auto_pad = NOTSET``, symmetric pads smaller than the
    kernel, no dilation, ``storage_order = 0``; ``AveragePool`` with pads needs
    ``count_include_pad = 1`` (the divisor is always kh * kw, §9)."""

    def rewrite(self, model, node):
        kind = node.op_type
        if not any(_is(node, k) for k in ("MaxPool", "AveragePool", "GlobalAveragePool")):
            return False
        x = spec(model, node.input[0])
        if x is None or x.kind != "code":
            return False
        nd = len(x.shape)
        _check_2d_window(model, node, nd, kind)
        if not 1 <= x.type.bits <= 8:
            raise node_error(model, node, f"input of type {x.type} not supported (1..8 bits, §9)")
        H, W = x.shape[2], x.shape[3]
        if kind == "GlobalAveragePool":
            k, st, pads = [H, W], [H, W], [0, 0, 0, 0]
        else:
            if len(node.output) > 1 and node.output[1]:
                raise node_error(model, node, "the Indices output is not supported")
            if int(_attr(node, "ceil_mode", 0)):
                raise node_error(model, node, "ceil_mode=1 not supported (ceil_mode=0, §9)")
            if int(_attr(node, "storage_order", 0)):
                raise node_error(model, node, "storage_order=1 not supported")
            if any(d != 1 for d in _ints(node, "dilations", [1, 1])):
                raise node_error(model, node, "dilated pooling not supported")
            k = _ints(node, "kernel_shape", [])
            st = _ints(node, "strides", [1, 1])
            pads = _ints(node, "pads", [0, 0, 0, 0])
            if len(k) != 2 or len(st) != 2 or len(pads) != 4 or min(k + st) < 1:
                raise node_error(model, node, f"kernel_shape {k}, strides {st}, pads {pads} not supported (2-D)")
        if pads[:2] != pads[2:] or not (0 <= pads[0] < k[0] and 0 <= pads[1] < k[1]):
            raise node_error(model, node, f"pads {pads} not supported (symmetric, 0 <= pad < kernel {k}, §9)")
        if kind == "AveragePool" and any(pads) and not int(_attr(node, "count_include_pad", 0)):
            raise node_error(model, node, "count_include_pad=0 with padding not supported (the divisor is "
                                          "always kh*kw, §9: count_include_pad=1)")
        pad = pads[:2]
        names = onnx_names(node)
        if kind == "MaxPool":
            out = Tensor(_shape(model, node.output[0]), "code", type=x.type, scale=x.scale)
            attrs = {"kernel": k, "stride": st, "pad": pad, "in_type": x.type.to_json()}
            replace_nodes(model, [node], [make_ir_node("maxpool2d", [node.input[0]], [node.output[0]], attrs,
                                                       [out], names)])
            return True
        if x.scale.per_channel:
            raise node_error(model, node, "per-channel input scale not supported (avgpool2d requantizes per "
                                          "tensor, §9)")
        m = self.options.get("m", 16)
        area = k[0] * k[1]
        q = single_consumer(model, node.output[0])
        old = [node]
        if _is(q, "Quant", QONNX_DOMAIN) and q.input[0] == node.output[0] and not self.options.get("threshold_all"):
            qs = read_quant(model, q, max_bits=16)
            if not _requant_ok(qs, False):
                raise node_error(model, q, f"{qs.type} output with rounding {qs.rounding} after an average pool "
                                           "is not supported (requant: ROUND/HALF_EVEN, 2..16 bits)")
            shape = _shape(model, q.output[0])
            vals, axis = scale_on(model, q, qs.scale, shape, "output")
            if axis is not None:
                raise node_error(model, q, "per-channel output scale after an average pool not supported")
            s_y, t_out, out_name = float(vals[0]), qs.type, q.output[0]
            r = Fraction(x.scale.value) / (area * Fraction(s_y))
            old.append(q)
            names = names + onnx_names(q)
        else:
            t_out = CodeType.smallest(area * min(x.type.lo, 0), area * max(x.type.hi, 0))
            if t_out.bits > 16:
                raise node_error(model, node, f"the window sum needs {t_out} (more than 16 bits); put a Quant "
                                              "after the pool")
            s_y, out_name, r = x.scale.value / area, node.output[0], Fraction(1)
            shape = _shape(model, out_name)
        try:
            M, sh = ref.dyadic(float(r), m)
        except ValueError as e:
            raise node_error(model, node, str(e)) from None
        attrs = {"kernel": k, "stride": st, "pad": pad, "M": int(M), "sh": int(sh), "in_type": x.type.to_json(),
                 "out_type": t_out.to_json()}
        out = Tensor(shape, "code", type=t_out, scale=Scale.scalar(s_y))
        replace_nodes(model, old, [make_ir_node("avgpool2d", [node.input[0]], [out_name], attrs, [out], names)])
        return True


# ---------------------------------------------------------------------------------------
# elementwise activations
# ---------------------------------------------------------------------------------------

#: unary float activations (standard ONNX) that LowerActivationLUT tabulates; inputs after
#: the first (Clip's min/max) must be constants
ACTIVATIONS = ("Clip", "Elu", "Erf", "Gelu", "HardSigmoid", "HardSwish", "LeakyRelu", "Mish", "Selu", "Sigmoid",
               "Softplus", "Softsign", "Tanh")


def activation_table(model: ModelWrapper, act: NodeProto, quant: NodeProto, in_type: CodeType,
                     in_scale: float) -> np.ndarray:
    """The §4 table of ``Quant(act(x))`` over every code of ``in_type`` at ``in_scale``,
    in ``lut_index`` order, computed by qonnx's ``execute_onnx`` on a two-node copy of the
    graph (the activation with its attributes and constant inputs, then the Quant with its
    own), so the table is what ``execute_onnx`` computes for the original graph, element by
    element: the input element is ``fl32(code * s)`` exactly as a Quant writes it (§1), and
    the output codes are recovered exactly (``custom_ops.recover_codes``)."""
    from onnx import TensorProto
    from qonnx.core.onnx_exec import execute_onnx

    it = in_type.int_type()
    if in_type.bipolar:
        codes = np.asarray([-1, 1], dtype=np.int64)
    else:
        codes = np.arange(it.lo, it.hi + 1, dtype=np.int64)
        order = np.argsort(ref.lut_index(codes, it), kind="stable")
        codes = codes[order]
    x = (codes.astype(np.float32) * np.float32(in_scale)).astype(np.float32)
    inits, ins_a = [], ["x"]
    for k, name in enumerate(act.input[1:], 1):
        if not name:
            ins_a.append("")
            continue
        v = model.get_initializer(name)
        if v is None:
            raise node_error(model, act, f"input {k} ('{name}') of a tabulated activation must be a constant")
        inits.append(helper.make_tensor(f"a{k}", TensorProto.FLOAT, np.shape(v),
                                        np.asarray(v, dtype=np.float32).ravel().tolist()))
        ins_a.append(f"a{k}")
    ins_q = ["y"]
    for k, name in enumerate(quant.input[1:], 1):
        v = np.asarray(model.get_initializer(name), dtype=np.float32)
        inits.append(helper.make_tensor(f"q{k}", TensorProto.FLOAT, v.shape, v.ravel().tolist()))
        ins_q.append(f"q{k}")
    n = len(x)
    g = helper.make_graph(
        [helper.make_node(act.op_type, ins_a, ["y"], **{a.name: helper.get_attribute_value(a) for a in act.attribute}),
         helper.make_node(quant.op_type, ins_q, ["z"], domain=quant.domain,
                          **{a.name: helper.get_attribute_value(a) for a in quant.attribute})],
        "activation_table", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [n])], initializer=inits,
        value_info=[helper.make_tensor_value_info("y", TensorProto.FLOAT, [n])])
    opset = max([o.version for o in model.model.opset_import if o.domain in ("", "ai.onnx")] + [13])
    proto = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset), helper.make_opsetid(quant.domain, 1)])
    try:
        z = execute_onnx(ModelWrapper(proto), {"x": x})["z"]
    except Exception as e:  # noqa: BLE001 - any execution failure is the node's problem
        raise node_error(model, act, f"could not tabulate the activation: {type(e).__name__}: "
                                     f"{' '.join(str(e).split())}") from None
    qs = read_quant(model, quant)
    try:
        table = co.recover_codes(np.asarray(z, dtype=np.float32), np.float32(qs.scale.ravel()[0]), "output")
    except ValueError as e:
        raise node_error(model, quant, str(e)) from None
    return np.asarray(table, dtype=np.int64).reshape(-1)


class LowerActivationLUT(_Pass):
    """``act -> Quant`` on a code tensor, ``act`` one of :data:`ACTIVATIONS` (ReLU6 and
    Hardtanh export as ``Clip``), becomes one §4 ``lut``: ``table[idx(q)]`` holds the Quant's
    code of ``act(fl32(q * s_x))`` for every input code ``q`` (:func:`activation_table`).
    Exact: the activation is elementwise and its input takes at most ``2^b`` values, so
    the table is the graph's own computation on each of them. Needs a per-tensor input
    scale, 1..8-bit input codes (§4's table size) and a per-tensor output quantizer with
    the activation as its only producer-consumer pair. A ``Relu -> Quant`` never gets here
    (``FoldReluIntoQuant`` makes it one Quant)."""

    def rewrite(self, model, node):
        if node.op_type not in ACTIVATIONS or node.domain not in ("", "ai.onnx"):
            return False
        x = spec(model, node.input[0])
        if x is None:
            return False
        q = single_consumer(model, node.output[0])
        if not _is_quant(q) or q.input[0] != node.output[0]:
            return False  # CheckLowered names the problem
        if x.kind != "code":
            raise node_error(model, node, f"its input '{node.input[0]}' is a {x.kind} tensor; a tabulated "
                                          f"activation takes quantized codes (put a Quant before it)")
        if x.scale.per_channel:
            raise node_error(model, node, "a tabulated activation needs a per-tensor input scale")
        if not 1 <= x.type.bits <= 8:
            raise node_error(model, node, f"{x.type.bits}-bit input: a tabulated activation takes 1..8-bit "
                                          f"codes (a 2^b-entry table, §4)")
        qs = read_quant(model, q)
        if np.unique(qs.scale).size != 1:
            raise node_error(model, q, "the Quant after a tabulated activation must be per tensor")
        table = activation_table(model, node, q, x.type, float(np.float32(x.scale.value)))
        out_name = q.output[0]
        init = f"{out_name}_table"
        model.set_initializer(init, table)
        out = Tensor(_shape(model, out_name), "code", type=qs.type,
                     scale=Scale.scalar(float(np.float32(qs.scale.ravel()[0]))))
        new = make_ir_node("lut", [node.input[0], init], [out_name], {"in_type": x.type.to_json()}, [out],
                           onnx_names(node) + onnx_names(q), const_types={init: qs.type})
        replace_nodes(model, [node, q], [new])
        return True


# ---------------------------------------------------------------------------------------
# graph outputs, checks
# ---------------------------------------------------------------------------------------

class DequantizeOutputs(Transformation):
    """Every graph output produced by an integer IR op gets a ``dequantize`` (host, §1):
    the integer tensor is renamed and the float output keeps the graph's name."""

    def apply(self, model):
        for o in model.graph.output:
            t = spec(model, o.name)
            if t is None or not t.is_int:
                continue
            p = model.find_producer(o.name)
            codes = f"{o.name}_codes"
            idx = list(p.output).index(o.name)
            p.output[idx] = codes
            info = ir_info(p)
            for n in model.find_consumers(o.name):
                for i, inp in enumerate(n.input):
                    if inp == o.name:
                        n.input[i] = codes
            out = Tensor(t.shape, "float")
            dq = make_ir_node("dequantize", [codes], [o.name], t.scale.to_json(), [out], info["onnx_name"][-1:],
                              target="host")
            g = model.graph
            g.node.insert(list(g.node).index(p) + 1, dq)
            return model, True
        return model, False


class RemoveDeadConstants(Transformation):
    """Drop ``const`` IR nodes whose codes were folded into their consumers."""

    def apply(self, model):
        for n in list(model.graph.node):
            if is_ir(n) and ir_info(n)["op"] == "const" and not model.find_consumers(n.output[0]) \
                    and n.output[0] not in [o.name for o in model.graph.output]:
                model.graph.node.remove(n)
        return model, False


def _describe(model: ModelWrapper, tensor: str) -> str:
    """A tensor as the user knows it (qonnx's cleanup renamed the graph's tensors)."""
    names = json.loads(model.get_metadata_prop(TENSOR_NAMES_KEY) or "{}")
    if tensor in names:
        return f"graph input '{names[tensor]}'"
    p = model.find_producer(tensor)
    if p is not None:
        return f"the output of node '{onnx_names(p)[-1]}'"
    return f"tensor '{tensor}'"


def _reason(model: ModelWrapper, node: NodeProto) -> str:
    ins = [i for i in node.input if i and model.get_initializer(i) is None]
    for i in ins:
        t = spec(model, i)
        if t is not None and t.kind == "float":
            return (f"its input, {_describe(model, i)}, is a float tensor, not quantized "
                    "(put a Quant/QuantIdentity before it)")
    for i in ins:
        if const_of(model, i) is not None and node.op_type not in ("MatMul", "Gemm", "Add", "Conv"):
            return f"its input, {_describe(model, i)}, is a quantized constant, which only MatMul/Gemm/Conv take"
    if node.op_type == "BatchNormalization":
        return ("BatchNormalization must follow a MatMul/Gemm/Conv and feed exactly one Quant/BipolarQuant "
                "(directly or through a Relu)")
    if node.op_type == "Conv" and len(node.input) > 1 and const_of(model, node.input[1]) is None:
        return "its weights must be a Quant/BipolarQuant of a constant"
    if node.op_type == "Relu":
        return "Relu must feed exactly one Quant (it folds into the quantizer's unsigned range)"
    if node.op_type in ACTIVATIONS:
        return (f"{node.op_type} must take a quantized code tensor (per tensor, 1..8 bits) and feed exactly one "
                "Quant/BipolarQuant (it becomes a lookup table)")
    if node.op_type == "Add":
        if any(const_of(model, i) is not None or model.get_initializer(i) is not None for i in node.input):
            return "adding a constant is only supported as the bias of a MatMul/Gemm"
        return "an Add of tensors at different scales needs a Quant after it"
    if node.op_type in ("MatMul", "Gemm"):
        for i in ins:
            t = spec(model, i)
            if t is not None and t.kind == "acc":
                return (f"its input, {_describe(model, i)}, is an accumulator; quantize it (Quant) before "
                        "the next MatMul")
    for i in ins:
        p = model.find_producer(i)
        if p is not None and not is_ir(p):
            return f"its input comes from node '{onnx_names(p)[-1]}' (op_type {p.op_type}), which was not lowered"
    return "pattern not recognised"


class CheckLowered(Transformation):
    """``LoweringError`` for the first node that no pass lowered, with the likely reason."""

    def apply(self, model):
        for n in model.graph.node:
            if not is_ir(n):
                raise node_error(model, n, f"cannot be lowered: {_reason(model, n)}")
        for o in model.graph.output:
            t = spec(model, o.name)
            if t is None or t.kind != "float":
                raise LoweringError(one_line(f"graph output '{o.name}' is not produced by a lowered op"))
        return model, False


# ---------------------------------------------------------------------------------------
# IR-level option: block-sparse MVAUs for pruned layers
# ---------------------------------------------------------------------------------------

def mark_sparse(ir, pe: int, simd: int, max_density: float = 0.75):
    """A copy of ``ir`` whose pruned ``matmul``/``conv2d`` ops carry
    ``attrs["sparse"] = {"pe": pe, "simd": simd}``, so the emitter uses the block-sparse
    MVAU (``hls/include/codesign/sparse.h``, ``docs/dataflow.md`` "Sparse MVAU").

    An op is marked when its weight is a constant of a signed multi-bit type, the block
    shape fits (matmul: ``pe <= N``; conv2d: ``pe <= OC/groups``, dividing it when
    ``groups > 1``) and the fraction of ``pe`` x ``simd`` blocks of its ``[OC, K]`` matrix
    view (pruning's: matmul ``w.T``, conv ``w.reshape(OC, -1)``) holding a non-zero weight
    is at most ``max_density``; other ops are left as they are. Each marked op gets a note
    (stored blocks, density). Arithmetic and the reference executor are unchanged. The
    input IR is not modified; the result is validated."""
    import dataclasses

    from codesign.accel.ir import validate
    from codesign.hls.sparse import block_mask

    for what, v in (("pe", pe), ("simd", simd)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"mark_sparse: {what}={v!r} must be a positive integer")
    if not 0.0 <= float(max_density) <= 1.0:
        raise ValueError(f"mark_sparse: max_density={max_density!r} must lie in [0, 1]")
    ops, notes = [], list(ir.notes)
    for op in ir.ops:
        new = op
        w = ir.constants.get(op.inputs[1]) if op.op in ("matmul", "conv2d") and len(op.inputs) > 1 else None
        wt = CodeType.from_json(op.attrs["w_type"]) if w is not None else None
        if w is not None and op.target == "accel" and wt.signed and not wt.bipolar:
            v = w.values
            if op.op == "matmul":
                fits, mat = v.ndim == 2 and pe <= v.shape[1], v.T if v.ndim == 2 else None
            else:
                g = int(op.attrs["groups"])
                ocg = v.shape[0] // g
                fits, mat = pe <= ocg and (g == 1 or ocg % pe == 0), v
            if fits:
                m = block_mask(mat, int(pe), int(simd))
                density = float(m.mean())
                if density <= float(max_density):
                    new = dataclasses.replace(op, attrs={**op.attrs, "sparse": {"pe": int(pe), "simd": int(simd)}})
                    notes.append(f"{op.name}: sparse MVAU, {int(m.sum())} of {m.size} blocks of {pe}x{simd} "
                                 f"stored (density {density:.4g})")
        ops.append(new)
    return validate(dataclasses.replace(ir, ops=ops, notes=notes))
