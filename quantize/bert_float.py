"""The full-precision BERT that an :class:`~codesign.quantize.fqbert.FQBert` quantizes.

:func:`float_forward` evaluates a standard post-LN BERT on the *float* parameters of an
``FQBert`` (``lin.weight``/``lin.bias`` of every linear, ``gamma``/``beta`` of every
LayerNorm, the three embedding tables): no quantizer, float softmax, exact-erf GELU, tanh
pooler. It shares the parameters, it does not copy them, so

* fp32 fine-tuning is gradient descent through :func:`float_forward`, after which the same
  module is calibrated and trained quantization-aware through ``FQBert.forward`` (the
  FQ-BERT recipe: fine-tune in full precision, then QAT from those weights);
* it is the fp32 teacher when a pretrained checkpoint (MiniLM) is loaded into the module:
  the teacher is the very network the student quantizes.

The computation is the Hugging Face ``BertModel`` one (no attention mask, fixed-length
inputs, as ``FQBert``): ``LN(word + position + type)``; per layer
``h = LN(x + O(softmax(QKᵀ/√d)V))``, ``y = LN(h + W2·gelu(W1·h))``; pooler
``tanh(W_p·y[:, 0])``; classifier ``W_c·pooled``. All in the parameters' dtype (float32)
unless ``dtype`` says otherwise.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["float_forward", "float_encode"]


def _linear(q, x: Tensor, dtype) -> Tensor:
    return F.linear(x, q.lin.weight.to(dtype), q.lin.bias.to(dtype))


def _ln(q, x: Tensor, dtype) -> Tensor:
    return F.layer_norm(x, (x.shape[-1],), q.gamma.to(dtype), q.beta.to(dtype), q.eps)


def _attention(a, x: Tensor, dtype) -> Tensor:
    B, T, H = x.shape
    q, k, v = (_linear(getattr(a, n), x, dtype).reshape(B, T, a.heads, a.d).transpose(1, 2)
               for n in ("q", "k", "v"))
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(a.d), dim=-1)
    ctx = (p @ v).transpose(1, 2).reshape(B, T, H)
    return _linear(a.o, ctx, dtype)


def float_encode(model, input_ids: Tensor, token_type_ids: Tensor | None = None,
                 dtype: torch.dtype = torch.float32) -> Tensor:
    """The last layer's hidden states ``(B, T, hidden)`` of the float BERT (see the module doc)."""
    ids = model._check_ids(input_ids)
    if token_type_ids is None:
        token_type_ids = torch.zeros_like(ids)
    e = model.embeddings
    T = ids.shape[-1]
    x = (F.embedding(ids, e.word.weight.to(dtype)) + e.position.weight.to(dtype)[:T]
         + F.embedding(token_type_ids, e.token_type.weight.to(dtype)))
    x = _ln(e.ln, x, dtype)
    for layer in model.layers:
        h = _ln(layer.ln1, x + _attention(layer.attn, x, dtype), dtype)
        f = _linear(layer.ffn2, F.gelu(_linear(layer.ffn1, h, dtype)), dtype)
        x = _ln(layer.ln2, h + f, dtype)
    return x


def float_forward(model, input_ids: Tensor, token_type_ids: Tensor | None = None,
                  dtype: torch.dtype = torch.float32) -> Tensor:
    """Float logits ``(B, classes)`` of the full-precision BERT behind ``model``."""
    x = float_encode(model, input_ids, token_type_ids, dtype)
    pooled = torch.tanh(_linear(model.pooler, x[:, 0, :], dtype))
    return _linear(model.classifier, pooled, dtype)
