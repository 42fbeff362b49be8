"""QONNX export of the eval FQ-BERT (:mod:`codesign.quantize.fqbert`).

:func:`export_qonnx` writes a graph whose execution with qonnx's ``execute_onnx`` equals
the torch eval model bit for bit (``==`` on the float64 logits). It is built from
:meth:`FQBert.integer_params` alone, so it is a deterministic function of the model: the
same model gives a byte-identical file.

Graph structure (``B`` = ``batch_size``, ``T`` = ``max_seq``, ``H`` hidden, ``h`` heads,
``d = H/h``; tensors carry dequantized float32 values ``fl32(code·scale)`` unless said)::

    input_ids (int64, B×T)
    embeddings (host): Quant(word table) → Gather(input_ids) ─┐
                       Quant(position table) ─────────────────┴ IntAdd → int16
                       Quant(type table) → Gather(0) ─────────── IntAdd → int16 → IntLayerNorm → int8
    per layer:
      Q, K, V:   IntMatMul(x, W codes, bias codes) → float64 acc → Requant → int8
                 Reshape(B,T,h,d) → Transpose (Q, V: B,h,T,d; K: B,h,d,T)
      scores:    IntMatMul(Q, Kᵀ) → Requant (1/√d folded into M/sh) → int8
                 IntSoftmax → uint8 at 2^-8
      context:   IntMatMul(P, V) → Requant → int8 → Transpose → Reshape(B,T,H)
      O:         IntMatMul → Requant → int8;  IntAdd(O, x) → int16 → IntLayerNorm → int8
      FFN:       IntMatMul → Requant → int8 → IntLUT(gelu) → int8 → IntMatMul → Requant → int8
                 IntAdd(FFN, h) → int16 → IntLayerNorm → int8
    pooler (host): Gather(index 0, axis 1) → IntMatMul → Requant → IntLUT(tanh)
    classifier (host): IntMatMul → logit_codes (float64 accumulator codes)
                       Mul(acc_scale, float64) → logits

Weights: linear weights are **integer code initializers** (int8 storage of the int4
codes, ``(K, N)``) and biases int32 code initializers, read by the ``IntMatMul`` custom op
(``codesign.accel.custom_ops``) with their types and scales as attributes. A float32
``MatMul`` on dequantized values would *not* be exact (rounded products and partial sums;
accumulators beyond 2^24 units), see ``IntMatMul``. Embedding tables (host ops) are QONNX
``Quant`` nodes (4-bit, narrow) on float32 initializers holding the dequantized values
``fl32(code·s)``, on which ``Quant`` is the identity (``round(fl32(q·s)/s) = q``), so the
graph states each table's type while the executed values are the model's exactly.

Host ops (FQ-BERT runs them on the ARM cores: the embedding tables, gathers, sums and
LayerNorm; the pooler and classifier) carry ``doc_string = "codesign:host"`` on their
nodes (:data:`HOST_TAG`; node doc strings survive ``cleanup_model``'s renaming); every
other node is for the programmable logic. Both follow the same integer contract.

Every intermediate tensor gets a ``value_info`` (static shapes), which
``IntMatMul``'s shape inference needs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from qonnx.core.modelwrapper import ModelWrapper
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.util.basic import qonnx_make_model

import codesign.accel.custom_ops as co
from codesign.sim import reference as ref
from codesign.sim.reference import IntType

__all__ = ["build_qonnx", "export_qonnx", "INPUT_NAME", "OUTPUT_NAME", "CODES_NAME", "HOST_TAG"]

INPUT_NAME = "input_ids"
OUTPUT_NAME = "logits"
CODES_NAME = "logit_codes"
HOST_TAG = "codesign:host"
"""``doc_string`` of the nodes that run on the host CPU."""
QONNX_DOMAIN = "qonnx.custom_op.general"
ONNX_OPSET = 13

INT8 = IntType(8, True)
UINT8 = IntType(8, False)
INT16 = IntType(16, True)

_FLOAT, _DOUBLE, _INT64 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT64


class _Graph:
    """Nodes in topological order, initializers and value_info, all in insertion order."""

    def __init__(self):
        self.nodes: list = []
        self.inits: dict[str, np.ndarray] = {}
        self.vi: dict[str, tuple[int, list[int]]] = {}

    def const(self, name: str, value, dtype) -> str:
        if name in self.inits:
            raise ValueError(f"export: duplicate initializer {name!r}")
        self.inits[name] = np.asarray(value, dtype=dtype)
        return name

    def add(self, node, shape, elem=_FLOAT) -> str:
        if isinstance(node, co.CodesignNode):
            for k, v in node.initializers.items():
                if k in self.inits:
                    raise ValueError(f"export: duplicate initializer {k!r}")
                self.inits[k] = np.asarray(v)
            node = node.node
        self.nodes.append(node)
        out = node.output[0]
        self.vi[out] = (elem, [int(d) for d in shape])
        return out

    def node(self, op: str, inputs: list[str], out: str, shape, elem=_FLOAT, **attrs) -> str:
        return self.add(helper.make_node(op, inputs, [out], name=f"{op}_{out}", **attrs), shape, elem)


def _wtype(t) -> IntType:
    return IntType(*t)


def _quant_table(g: _Graph, name: str, p: dict) -> str:
    """QONNX Quant on a float32 initializer of dequantized codes (identity on those values)."""
    t = _wtype(p["type"])
    s = np.float32(p["scale"])
    vals = g.const(f"{name}_values", ref.dequantize(p["codes"], s), np.float32)
    node = helper.make_node("Quant", [vals, g.const(f"{name}_scale", s, np.float32),
                                      g.const(f"{name}_zeropt", 0.0, np.float32),
                                      g.const(f"{name}_bitwidth", float(t.bits), np.float32)],
                            [name], name=f"Quant_{name}", domain=QONNX_DOMAIN,
                            signed=int(t.signed), narrow=int(t.narrow), rounding_mode="ROUND")
    return g.add(node, p["codes"].shape)


def _acc_bits(K: int, a_type: IntType, w_type: IntType, bias=None) -> int:
    lo = hi = 0
    if bias is not None and np.size(bias):
        lo, hi = min(int(np.min(bias)), 0), max(int(np.max(bias)), 0)
    return ref.acc_bits(K, a_type, w_type, lo, hi)


def _linear_acc(g: _Graph, name: str, p: dict, x: str, shape: list[int]) -> tuple[str, list[int], int]:
    w = np.asarray(p["w"])                  # (N, K) codes
    N, K = w.shape
    wt = _wtype(p["w_type"])
    out_shape = list(shape[:-1]) + [N]
    acc = g.add(co.make_intmatmul_node(x, w.T.astype(np.int8), f"{name}_acc", INT8, float(p["in_scale"]), wt,
                                       np.asarray(p["w_scale"], dtype=np.float32), bias=p["bias"],
                                       name=f"{name}_mm"), out_shape, _DOUBLE)
    return acc, out_shape, _acc_bits(K, INT8, wt, p["bias"])


def _linear(g: _Graph, name: str, p: dict, x: str, shape: list[int]) -> tuple[str, list[int]]:
    acc, out_shape, wacc = _linear_acc(g, name, p, x, shape)
    y = g.add(co.make_requant_node(acc, name, p["M"], p["sh"], INT8, float(p["out_scale"]), acc_bits=wacc,
                                   name=f"{name}_rq"), out_shape)
    return y, out_shape


def _add(g: _Graph, name: str, p: dict, a: str, a_type: IntType, b: str, b_type: IntType, shape) -> str:
    return g.add(co.make_add_node(a, b, name, a_type, float(p["a_scale"]), b_type, float(p["b_scale"]), INT16,
                                  float(p["out_scale"]), Ma=p["Ma"], Mb=p["Mb"], sh=p["sh"], name=f"{name}_add"),
                 shape)


def _layernorm(g: _Graph, name: str, p: dict, x: str, shape) -> str:
    params = ref.LayerNormParams(G=np.asarray(p["G"]), B=np.asarray(p["B"]), S=int(p["S"]), E=int(p["E"]))
    return g.add(co.make_layernorm_node(x, name, float(p["in_scale"]), INT8, float(p["out_scale"]), params=params,
                                        name=f"{name}_ln"), shape)


def _lut(g: _Graph, name: str, p: dict, x: str, shape) -> str:
    return g.add(co.make_lut_node(x, name, INT8, float(p["in_scale"]), INT8, float(p["out_scale"]),
                                  table=np.asarray(p["table"]), function=p["function"], name=f"{name}_lut"), shape)


def _attention(g: _Graph, pre: str, p: dict, x: str, B: int, T: int, H: int, heads: int) -> str:
    d = H // heads
    shape = [B, T, H]
    q, _ = _linear(g, f"{pre}_q", p["q"], x, shape)
    k, _ = _linear(g, f"{pre}_k", p["k"], x, shape)
    v, _ = _linear(g, f"{pre}_v", p["v"], x, shape)
    split = g.const(f"{pre}_split_shape", [0, 0, heads, d], np.int64)
    merge = g.const(f"{pre}_merge_shape", [0, 0, H], np.int64)
    heads_shape = [B, T, heads, d]

    def to_heads(t: str, perm: list[int]) -> str:
        r = g.node("Reshape", [t, split], f"{t}_split", heads_shape)
        return g.node("Transpose", [r], f"{t}_heads", [heads_shape[i] for i in perm], perm=perm)

    qh = to_heads(q, [0, 2, 1, 3])      # (B, h, T, d)
    kt = to_heads(k, [0, 2, 3, 1])      # (B, h, d, T)
    vh = to_heads(v, [0, 2, 1, 3])      # (B, h, T, d)
    s_q, s_k, s_v = (float(p[n]["out_scale"]) for n in ("q", "k", "v"))
    sc, sm, cx = p["scores"], p["softmax"], p["context"]
    acc = g.add(co.make_intmatmul_node(qh, kt, f"{pre}_scores_acc", INT8, s_q, INT8, s_k, name=f"{pre}_qk"),
                [B, heads, T, T], _DOUBLE)
    scores = g.add(co.make_requant_node(acc, f"{pre}_scores", sc["M"], sc["sh"], INT8, float(sc["out_scale"]),
                                        acc_bits=_acc_bits(d, INT8, INT8), name=f"{pre}_scores_rq"), [B, heads, T, T])
    probs = g.add(co.make_softmax_node(scores, f"{pre}_probs", INT8, float(sm["in_scale"]), eb=int(sm["eb"]),
                                       ob=int(sm["ob"]), table=np.asarray(sm["table"]), name=f"{pre}_softmax"),
                  [B, heads, T, T])
    acc = g.add(co.make_intmatmul_node(probs, vh, f"{pre}_context_acc", UINT8, 2.0 ** -int(sm["ob"]), INT8, s_v,
                                       name=f"{pre}_pv"), [B, heads, T, d], _DOUBLE)
    ctx = g.add(co.make_requant_node(acc, f"{pre}_context_heads", cx["M"], cx["sh"], INT8, float(cx["out_scale"]),
                                     acc_bits=_acc_bits(T, UINT8, INT8), name=f"{pre}_context_rq"), [B, heads, T, d])
    ctx = g.node("Transpose", [ctx], f"{pre}_context_t", heads_shape, perm=[0, 2, 1, 3])
    ctx = g.node("Reshape", [ctx, merge], f"{pre}_context", shape)
    o, _ = _linear(g, f"{pre}_o", p["o"], ctx, shape)
    return o


def build_qonnx(model_or_params, batch_size: int = 1) -> ModelWrapper:
    """The QONNX ``ModelWrapper`` of an FQBert (or of its ``integer_params()``), batch ``batch_size``."""
    params = model_or_params if isinstance(model_or_params, dict) else model_or_params.integer_params()
    cfg = params["config"]
    B, T, H = int(batch_size), int(cfg["max_seq"]), int(cfg["hidden"])
    if B < 1:
        raise ValueError(f"export: batch_size={batch_size} must be >= 1")
    shape = [B, T, H]
    g = _Graph()
    zero = g.const("index_0", 0, np.int64)

    # embeddings (host)
    n0 = len(g.nodes)
    emb = params["embeddings"]
    word_t = _quant_table(g, "emb_word_table", emb["word"])
    pos_t = _quant_table(g, "emb_position_table", emb["position"])
    type_t = _quant_table(g, "emb_type_table", emb["token_type"])
    word = g.node("Gather", [word_t, INPUT_NAME], "emb_word", shape, axis=0)
    typ = g.node("Gather", [type_t, zero], "emb_type", [H], axis=0)
    wt, tt = _wtype(emb["word"]["type"]), _wtype(emb["token_type"]["type"])
    e = _add(g, "emb_sum_position", emb["add_position"], word, wt, pos_t, _wtype(emb["position"]["type"]), shape)
    e = _add(g, "emb_sum_type", emb["add_type"], e, INT16, typ, tt, shape)
    x = _layernorm(g, "emb_out", emb["ln"], e, shape)
    host = list(range(n0, len(g.nodes)))

    for i, lp in enumerate(params["layers"]):
        pre = f"l{i}"
        a = _attention(g, f"{pre}_attn", lp["attn"], x, B, T, H, int(cfg["heads"]))
        r = _add(g, f"{pre}_res1", lp["add1"], a, INT8, x, INT8, shape)
        h = _layernorm(g, f"{pre}_ln1", lp["ln1"], r, shape)
        f, fshape = _linear(g, f"{pre}_ffn1", lp["ffn1"], h, shape)
        f = _lut(g, f"{pre}_gelu", lp["gelu"], f, fshape)
        f, _ = _linear(g, f"{pre}_ffn2", lp["ffn2"], f, fshape)
        r = _add(g, f"{pre}_res2", lp["add2"], f, INT8, h, INT8, shape)
        x = _layernorm(g, f"{pre}_ln2", lp["ln2"], r, shape)

    # pooler and classifier (host)
    pool = params["pooler"]
    n0 = len(g.nodes)
    cls_tok = g.node("Gather", [x, zero], "pool_cls", [B, H], axis=1)
    hp, pshape = _linear(g, "pool_dense", pool["dense"], cls_tok, [B, H])
    hp = _lut(g, "pool_tanh", pool["tanh"], hp, pshape)
    codes, cshape, _ = _linear_acc(g, "classifier", params["classifier"], hp, pshape)
    g.nodes[-1].output[0] = CODES_NAME
    g.vi[CODES_NAME] = g.vi.pop(codes)
    scale = g.const("classifier_acc_scale", params["classifier"]["acc_scale"], np.float64)
    g.node("Mul", [CODES_NAME, scale], OUTPUT_NAME, cshape, _DOUBLE)
    host += list(range(n0, len(g.nodes)))
    for i in host:
        g.nodes[i].doc_string = HOST_TAG

    outputs = (OUTPUT_NAME, CODES_NAME)
    graph = helper.make_graph(
        g.nodes, "fqbert",
        [helper.make_tensor_value_info(INPUT_NAME, _INT64, [B, T])],
        [helper.make_tensor_value_info(n, g.vi[n][0], g.vi[n][1]) for n in outputs],
        initializer=[numpy_helper.from_array(v, name=k) for k, v in g.inits.items()],
        value_info=[helper.make_tensor_value_info(n, e_, s) for n, (e_, s) in g.vi.items() if n not in outputs],
        doc_string="FQ-BERT (codesign.quantize.fqbert), config " + ", ".join(f"{k}={v}" for k, v in cfg.items()),
    )
    proto = qonnx_make_model(graph, producer_name="codesign.quantize.export",
                             opset_imports=[helper.make_opsetid("", ONNX_OPSET), helper.make_opsetid(QONNX_DOMAIN, 1),
                                            co.opset_import()])
    model = ModelWrapper(proto)
    # Shapes are all given as value_info. InferDataTypes adds the integer annotations
    # (IntMatMul accumulators: INT<W_acc>); cleanup=False keeps the nodes in build order
    # (qonnx's cleanup would re-sort them, also deterministically).
    model = model.transform(InferDataTypes(), cleanup=False)
    return model


def export_qonnx(model, path, batch_size: int = 1) -> ModelWrapper:
    """Write the eval FQBert ``model`` as a QONNX file at ``path``; returns the ``ModelWrapper``.

    Deterministic: the same model (parameters and calibrated scales) gives a byte-identical
    file. The graph input is ``input_ids`` (int64, ``batch_size × max_seq``); the outputs
    are ``logits`` (float64 values) and ``logit_codes`` (float64 integer accumulator codes).
    """
    m = build_qonnx(model, batch_size)
    onnx.checker.check_model(m.model)
    Path(path).write_bytes(m.model.SerializeToString(deterministic=True))
    return m
