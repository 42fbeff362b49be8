"""Integer reference forward of FQ-BERT: numpy and :mod:`codesign.sim.reference` only.

:func:`reference_forward` recomputes the eval forward of
:class:`codesign.quantize.fqbert.FQBert` from its :meth:`~codesign.quantize.fqbert.FQBert.integer_params`
with the contract's numpy reference ops, one call per op, on int64 codes
(:func:`reference_encode`: the encoder alone, the last layer's codes). It imports no
torch (the model module is not imported either), so it is the test oracle for
"torch eval == reference": the same dataflow written a second time over a second
implementation of every integer op.
"""
from __future__ import annotations

import numpy as np

from codesign.sim import reference as ref
from codesign.sim.reference import IntType

__all__ = ["reference_forward", "reference_encode", "reference_embeddings", "INT8", "UINT8", "INT16"]

INT8 = IntType(8, True)
UINT8 = IntType(8, False)
INT16 = IntType(16, True)


def _wtype(p) -> IntType:
    return IntType(*p)


def _linear_acc(p: dict, x: np.ndarray) -> np.ndarray:
    """§2: int8 codes (..., K) × weight codes (N, K)ᵀ + int32 bias → int64 accumulator."""
    return ref.matmul(x, p["w"].T, p["bias"], a_type=INT8, w_type=_wtype(p["w_type"]))


def _linear(p: dict, x: np.ndarray) -> np.ndarray:
    """§2 + §3: accumulator requantized to int8 per output channel."""
    return ref.requant(_linear_acc(p, x), p["M"], p["sh"], INT8)


def _add(p: dict, a: np.ndarray, b: np.ndarray, a_type: IntType, b_type: IntType) -> np.ndarray:
    return ref.add(a, b, p["Ma"], p["Mb"], p["sh"], a_type, b_type, INT16)


def _layernorm(p: dict, x: np.ndarray) -> np.ndarray:
    return ref.layernorm(x, ref.LayerNormParams(G=p["G"], B=p["B"], S=int(p["S"]), E=int(p["E"])), INT8)


def _attention(p: dict, x: np.ndarray, heads: int, tr: dict, pre: str) -> np.ndarray:
    B, T, H = x.shape
    d = H // heads
    q, k, v = (_linear(p[n], x) for n in ("q", "k", "v"))
    qh = q.reshape(B, T, heads, d).transpose(0, 2, 1, 3)   # (B, h, T, d)
    kt = k.reshape(B, T, heads, d).transpose(0, 2, 3, 1)   # (B, h, d, T)
    vh = v.reshape(B, T, heads, d).transpose(0, 2, 1, 3)   # (B, h, T, d)
    sc = p["scores"]
    scores = ref.requant(ref.matmul(qh, kt, a_type=INT8, w_type=INT8), sc["M"], sc["sh"], INT8)
    sm = p["softmax"]
    probs = ref.softmax(scores, sm["table"], INT8, eb=int(sm["eb"]), ob=int(sm["ob"]))   # uint8 at 2^-8
    cx = p["context"]
    ctx = ref.requant(ref.matmul(probs, vh, a_type=UINT8, w_type=INT8), cx["M"], cx["sh"], INT8)
    tr.update({f"{pre}.q": q, f"{pre}.k": k, f"{pre}.v": v, f"{pre}.scores": scores, f"{pre}.probs": probs,
               f"{pre}.context": ctx})
    ctx = ctx.transpose(0, 2, 1, 3).reshape(B, T, H)
    out = _linear(p["o"], ctx)
    tr[f"{pre}.o"] = out
    return out


def _layer(p: dict, x: np.ndarray, heads: int, tr: dict, pre: str) -> np.ndarray:
    a = _attention(p["attn"], x, heads, tr, f"{pre}.attn")
    r1 = _add(p["add1"], a, x, INT8, INT8)
    h = _layernorm(p["ln1"], r1)
    f1 = _linear(p["ffn1"], h)
    g = ref.lut(f1, p["gelu"]["table"], INT8)
    f2 = _linear(p["ffn2"], g)
    r2 = _add(p["add2"], f2, h, INT8, INT8)
    y = _layernorm(p["ln2"], r2)
    tr.update({f"{pre}.res1": r1, f"{pre}.ln1": h, f"{pre}.ffn1": f1, f"{pre}.gelu": g, f"{pre}.ffn2": f2,
               f"{pre}.res2": r2, f"{pre}.ln2": y})
    return y


def reference_embeddings(params: dict, token_ids, token_type_ids=None) -> tuple[np.ndarray, np.ndarray]:
    """The host front of FQ-BERT: table gathers, two §7 adds to int16, §6 LayerNorm → int8.

    ``params``: the full integer params (``config`` and ``embeddings`` are used).
    Returns ``(sum, x)``: the int16 embedding sum and the int8 LayerNorm codes ``(B, T, H)``.
    """
    cfg = params["config"]
    ids = np.asarray(token_ids)
    if ids.ndim != 2 or ids.dtype.kind not in "iu":
        raise ValueError(f"reference_forward: token_ids must be (B, T) integers, got {ids.shape} {ids.dtype}")
    ids = ids.astype(np.int64)
    T = ids.shape[1]
    if not 1 <= T <= cfg["max_seq"] or (ids.size and (ids.min() < 0 or ids.max() >= cfg["vocab_size"])):
        raise ValueError(f"reference_forward: sequence length {T} or token ids out of range "
                         f"(T <= {cfg['max_seq']}, ids 0..{cfg['vocab_size'] - 1})")
    types = np.zeros_like(ids) if token_type_ids is None else np.asarray(token_type_ids, dtype=np.int64)
    if types.shape != ids.shape or (types.size and (types.min() < 0 or types.max() >= cfg["type_vocab"])):
        raise ValueError("reference_forward: token_type_ids must match token_ids' shape, values "
                         f"0..{cfg['type_vocab'] - 1}")

    emb = params["embeddings"]
    wt = _wtype(emb["word"]["type"])
    word = emb["word"]["codes"][ids]                    # (B, T, H) int4n
    pos = emb["position"]["codes"][:T]                  # (T, H)
    typ = emb["token_type"]["codes"][types]             # (B, T, H)
    e = _add(emb["add_position"], word, pos, wt, wt)    # int16
    e = _add(emb["add_type"], e, typ, INT16, _wtype(emb["token_type"]["type"]))
    return e, _layernorm(emb["ln"], e)                  # int16, int8


def _encoder(params: dict, token_ids, token_type_ids, tr: dict) -> np.ndarray:
    """Embeddings and every encoder layer: the last layer's int8 codes ``(B, T, H)``."""
    e, x = reference_embeddings(params, token_ids, token_type_ids)
    tr.update({"embeddings.sum": e, "embeddings": x})
    for i, lp in enumerate(params["layers"]):
        x = _layer(lp, x, params["config"]["heads"], tr, f"layers.{i}")
    return x


def reference_encode(params: dict, token_ids, token_type_ids=None, trace: dict | None = None) -> np.ndarray:
    """The last encoder layer's output of FQ-BERT from its integer parameters: int64 codes
    ``(B, T, hidden)`` of int8 values at scale ``params["layers"][-1]["ln2"]["out_scale"]``
    (what ``FQBert.encode`` returns as ``codes · scale``). ``trace`` as in
    :func:`reference_forward`, without the pooler entries."""
    return _encoder(params, token_ids, token_type_ids, trace if trace is not None else {})


def reference_forward(params: dict, token_ids, token_type_ids=None,
                      trace: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits of FQ-BERT from its integer parameters: ``(codes, values)``.

    ``codes``: int64 ``(B, classes)``, the classifier's exact accumulator;
    ``values = codes · acc_scale`` in float64 (what the torch model returns).
    ``trace``: a dict that receives every intermediate code tensor (``"embeddings"``,
    ``"layers.<i>.attn.q"`` ... ``"layers.<i>.ln2"``, ``"pooler"``, ``"pooler.tanh"``).
    """
    tr = trace if trace is not None else {}
    x = _encoder(params, token_ids, token_type_ids, tr)

    pool = params["pooler"]
    h = _linear(pool["dense"], x[:, 0, :])
    tr["pooler"] = h
    h = ref.lut(h, pool["tanh"]["table"], INT8)
    tr["pooler.tanh"] = h
    cls = params["classifier"]
    codes = _linear_acc(cls, h)
    return codes, codes.astype(np.float64) * np.asarray(cls["acc_scale"], dtype=np.float64)
