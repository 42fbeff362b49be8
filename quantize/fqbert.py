"""FQ-BERT: a fully quantized BERT built from codesign's integer ops (docs/arithmetic.md).

FQ-BERT (Liu et al., "Hardware Acceleration of Fully Quantized BERT for Efficient Natural
Language Processing", DATE 2021) quantizes *every* tensor of BERT: 4-bit weights, 8-bit
activations, integer softmax, LayerNorm and GELU, int32 biases. This module writes that
network from codesign's own quantized blocks (no ``nn.TransformerEncoder``, no Brevitas
``QuantMultiheadAttention``): every op of the forward pass is one of the contract's integer
ops, evaluated through :mod:`codesign.quantize.intops`, whose forward pass is exactly the
integer op and whose backward pass is a straight-through surrogate. Hence:

* **eval** (``model.eval()``): scales are frozen and the forward pass is the exact integer
  computation; :func:`codesign.quantize.fqbert_ref.reference_forward` recomputes it from
  :meth:`FQBert.integer_params` with :mod:`codesign.sim.reference` and numpy alone, and
  :func:`codesign.quantize.export.export_qonnx` writes the same computation as a QONNX graph;
  the three agree with ``==`` on the logits.
* **train** (``model.train()``): the same integer forward, activation scales follow an EMA of
  ``max|A|``, gradients flow through the intops surrogates (QAT).

Quantization, per op (``s_*`` are float32 scales; ``codes`` are integers; int4n = narrow
signed 4-bit, codes -7..7)
---------------------------------------------------------------------------------------

=====================  ==================================================================
op                     codes, types and scales
=====================  ==================================================================
embedding tables       word / position / token-type tables int4n, one scale per table
(host)                 ``s = max|T|/7`` (Brevitas ``Int8WeightPerTensorFloat`` at 4 bits)
embedding sum (host)   two §7 adds to int16: ``word + pos`` then ``+ type``; the int16
                       output scale is chosen so the sum cannot saturate:
                       ``s_y = fl32((7 s_a + 7 s_b) / 32767)`` (first add),
                       ``fl32((32768 s_a + 7 s_b) / 32767)`` (second)
LayerNorm              §6: int16 codes in, int8 out at ``s_y = fl32(EMA max|LN(x)| / 127)``;
                       ``G, B, S, E = layernorm_params(γ, β, ε, s_x, s_y)``
Linear (Q, K, V, O,    §2 + §3: int8 activation × int4n weights, per output channel
FFN1, FFN2, pooler)    ``s_w[n] = max|W[n]|/7`` (Brevitas ``QuantLinear`` with
                       ``Int8WeightPerChannelFloat`` at 4 bits: codes ``.int()``, ``.scale``);
                       bias codes int32 ``= rne(b / (s_x s_w[n]))``; the accumulator is
                       requantized to int8 at ``s_y = fl32(EMA max|acc·s_x s_w| / 127)`` by
                       ``(M, sh) = dyadic(s_x s_w[n] / s_y)`` per channel
attention scores       §2: int8 Q × int8 Kᵀ per head; §3 requant to int8 at
                       ``s_s = fl32(EMA max|QKᵀ/√d| / 127)`` with the 1/√d folded into the
                       ratio: ``(M, sh) = dyadic(s_q s_k / √d / s_s)``
softmax                §5: int8 scores at ``s_s`` → uint8 at ``2^-8`` (EB = OB = 8), table
                       ``T[k] = rne(255 exp(-k s_s))``
context                §2: uint8 P × int8 V; §3 requant to int8 at
                       ``fl32(EMA max|PV| / 127)``
residual               §7: int8 + int8 → int16 at ``s_r = fl32((128 s_a + 128 s_b)/32767)``
                       (no saturation; LayerNorm is scale invariant), then LayerNorm → int8
GELU                   §4: 8-bit LUT, int8 at the FFN1 output scale → int8 at
                       ``fl32(EMA max|GELU| / 127)``; table from ``F.gelu`` (exact erf) in
                       float64
pooler (host)          [CLS] row → Linear → int8 → tanh LUT (§4) → int8 at ``fl32(1/127)``
classifier (host)      §2: int8 × int4n + int32 bias; the logits are the accumulator codes
                       at ``acc_scale = s_t s_w[n]`` (float64), values ``codes · acc_scale``
=====================  ==================================================================

Every multiplier has ``m = 16`` bits; every rounding is the contract's (``rshr``, half up;
``round_half_even`` only in parameter derivation). Scales are float32 values throughout so
that QONNX attributes (float32) carry them exactly. Activation scales are EMA statistics
(momentum ``ema_momentum``; the first observation initialises them) updated in training
mode only; :meth:`FQBert.calibrate` runs batches in training mode without gradients. An
uncalibrated model refuses to run in eval.

The sequence is processed without an attention mask (FQ-BERT's fixed-length inputs): the
caller pads with real tokens.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from brevitas.nn import QuantEmbedding, QuantLinear
from brevitas.quant import Int8WeightPerChannelFloat, Int8WeightPerTensorFloat
from torch import Tensor, nn

from codesign.quantize import intops

__all__ = [
    "FQBertConfig", "PRESETS", "FQBert", "compression_ratio", "storage_report",
    "ACT_BITS", "BIAS_BITS", "LN_G_BITS", "LN_B_BITS", "SCALE_BITS", "TANH_SCALE",
]

ACT_BITS = 8          # activations: signed 8-bit codes
BIAS_BITS = 32        # biases: int32 codes at s_x·s_w
LN_G_BITS = 16        # §6: |G| <= 2^15 - 1
LN_B_BITS = 32        # §6: |B| <= 2^31 - 1
SCALE_BITS = 32       # float32 weight scales (per output channel / per table)
RESIDUAL_BITS = 16    # §7: residual sums feeding LayerNorm
SOFTMAX_BITS = 8      # §5: EB = OB = 8
TANH_SCALE = float(np.float32(1.0 / 127.0))  # tanh ∈ [-1, 1] → int8 codes -127..127

_F64 = torch.float64


# ---------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FQBertConfig:
    """Shape and quantization of an FQ-BERT. ``max_seq`` is the sequence length ``T``."""

    vocab_size: int = 1000
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    ffn: int = 128
    max_seq: int = 16
    type_vocab: int = 2
    classes: int = 2
    weight_bits: int = 4
    ln_eps: float = 1e-12
    ema_momentum: float = 0.9
    init_std: float = 0.02

    def __post_init__(self):
        if self.hidden % self.heads:
            raise ValueError(f"FQBertConfig: hidden={self.hidden} not divisible by heads={self.heads}")
        if not 2 <= self.weight_bits <= 8:
            raise ValueError(f"FQBertConfig: weight_bits={self.weight_bits} not supported (2..8)")
        if self.hidden > 4096:
            raise ValueError("FQBertConfig: hidden > 4096 exceeds the LayerNorm row limit (§6)")

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def preset(cls, name: str, **overrides) -> "FQBertConfig":
        """``tiny``, ``minilm`` or ``base``, with fields overridden (e.g. ``layers=1``)."""
        if name not in PRESETS:
            raise ValueError(f"FQBertConfig: unknown preset {name!r} ({', '.join(PRESETS)})")
        return replace(PRESETS[name], **overrides)

    def as_dict(self) -> dict:
        return asdict(self)


PRESETS: dict[str, FQBertConfig] = {
    "tiny": FQBertConfig(),
    "minilm": FQBertConfig(vocab_size=30522, hidden=384, layers=6, heads=12, ffn=1536, max_seq=128),
    "base": FQBertConfig(vocab_size=30522, hidden=768, layers=12, heads=12, ffn=3072, max_seq=128),
}


# ---------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------

def _f32(v) -> float:
    """A positive scale rounded to float32 (returned as the Python float of that value)."""
    s = float(np.float32(v))
    if not (s > 0 and math.isfinite(s)):
        raise ValueError(f"fqbert: scale {v!r} is not a positive float32")
    return s


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy() if isinstance(t, Tensor) else np.asarray(t)


def _sum_scale(terms: Iterable[tuple[int, float]], out_bits: int = RESIDUAL_BITS) -> float:
    """Scale of a sum that cannot saturate: fl32(Σ max|code|·s / hi_out)."""
    hi = (1 << (out_bits - 1)) - 1
    return _f32(sum(m * s for m, s in terms) / hi)


class EMAMax(nn.Module):
    """Activation scale from an EMA of ``max|A|`` (signed ``bits``-bit codes, scale ``max/hi``).

    Updated by :meth:`update` in training mode only (the caller checks); frozen in eval. The
    first finite positive observation initialises the average.
    """

    def __init__(self, bits: int = ACT_BITS, momentum: float = 0.9):
        super().__init__()
        self.hi = (1 << (bits - 1)) - 1
        self.momentum = float(momentum)
        self.register_buffer("amax", torch.tensor(float("nan"), dtype=_F64))

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        m = float(x.detach().abs().max()) if x.numel() else 0.0
        if not (m > 0 and math.isfinite(m)):
            if torch.isnan(self.amax):
                self.amax.fill_(1.0)  # an all-zero first batch: any positive scale will do
            return
        if torch.isnan(self.amax):
            self.amax.fill_(m)
        else:
            self.amax.mul_(self.momentum).add_((1.0 - self.momentum) * m)

    def scale(self) -> float:
        a = float(self.amax)
        if math.isnan(a):
            raise RuntimeError("FQBert: activation scales are not calibrated; run model.calibrate(batches) "
                               "or a training step first")
        return _f32(max(a, 1e-30) / self.hi)


def _requant_params(acc_scale: Tensor, out_scale: float) -> tuple[Tensor, Tensor]:
    """(M, sh) = dyadic(acc_scale / out_scale), float64, per channel if acc_scale is."""
    return intops.dyadic(acc_scale / out_scale)


# ---------------------------------------------------------------------------------------
# blocks
# ---------------------------------------------------------------------------------------

class QLinear(nn.Module):
    """Int8 activation × int4n per-channel weights + int32 bias → accumulator (§2).

    The weight quantizer is a Brevitas ``QuantLinear``'s (``Int8WeightPerChannelFloat`` at
    ``weight_bits``: narrow, scale ``max|W[n]|/(2^(b-1)-1)``); only its ``quant_weight()`` is
    used, the matmul is :func:`intops.int_matmul`.
    """

    def __init__(self, cfg: FQBertConfig, fin: int, fout: int):
        super().__init__()
        self.lin = QuantLinear(fin, fout, bias=True, weight_quant=Int8WeightPerChannelFloat,
                               weight_bit_width=cfg.weight_bits)
        nn.init.normal_(self.lin.weight, 0.0, cfg.init_std)
        nn.init.zeros_(self.lin.bias)
        self.w_type = (cfg.weight_bits, True, True)

    def weight_params(self, s_x: float) -> dict:
        """Quantized weight (values ``(N, K)``, codes, scales), ``acc_scale`` and bias (STE) at ``s_x``."""
        qw = self.lin.quant_weight()
        w = qw.value                                   # (N, K) float32, codes · s_w, STE to the weight
        s_w = qw.scale.detach().reshape(-1)            # (N,) float32
        acc_s = torch.tensor(s_x, dtype=_F64) * s_w.to(_F64)   # s_x·s_w[n] in float64, as int_matmul
        b = self.lin.bias
        b64 = b.to(_F64)
        bcode = torch.round(b64.detach() / acc_s).clamp(-(2**31), 2**31 - 1)
        bias = b64 + (bcode * acc_s - b64).detach()    # values at acc_s whose codes are bcode; STE
        return {"w": w, "s_w": s_w, "acc_s": acc_s, "bias": bias, "bcode": bcode}

    def acc(self, x: Tensor, s_x: float) -> tuple[Tensor, dict]:
        wp = self.weight_params(s_x)
        acc = intops.int_matmul(x, wp["w"].t(), s_x, wp["s_w"], bias=wp["bias"])
        return acc, wp

    def export(self, s_x: float) -> dict:
        with torch.no_grad():
            wp = self.weight_params(s_x)
            qw = self.lin.quant_weight()
            codes = qw.int().to(torch.int64)
            if not torch.equal(codes.to(torch.float32) * wp["s_w"][:, None], wp["w"]):
                raise RuntimeError("fqbert: Brevitas quant weight value != int() * scale")
        return {"w": _np(codes), "w_type": self.w_type, "w_scale": _np(wp["s_w"]).astype(np.float32),
                "bias": _np(wp["bcode"]).astype(np.int64), "in_scale": np.float32(s_x),
                "acc_scale": _np(wp["acc_s"]).astype(np.float64)}

    def storage(self, prefix: str) -> list[tuple[str, int, int]]:
        qw = self.lin.quant_weight()
        n = self.lin.out_features
        return [(f"{prefix}.weight", self.lin.weight.numel(), int(qw.bit_width)),
                (f"{prefix}.weight_scale", n, SCALE_BITS),
                (f"{prefix}.bias", n, BIAS_BITS)]


class QLinearRequant(QLinear):
    """:class:`QLinear` followed by §3 requantization to int8 at an EMA-calibrated scale."""

    def __init__(self, cfg: FQBertConfig, fin: int, fout: int):
        super().__init__(cfg, fin, fout)
        self.out_obs = EMAMax(ACT_BITS, cfg.ema_momentum)

    def forward(self, x: Tensor, s_x: float) -> tuple[Tensor, float]:
        acc, wp = self.acc(x, s_x)
        if self.training:
            self.out_obs.update(acc)
        s_y = self.out_obs.scale()
        M, sh = _requant_params(wp["acc_s"], s_y)
        return intops.requant(acc, wp["acc_s"], M, sh, ACT_BITS, True, out_scale=s_y), s_y

    def export(self, s_x: float) -> dict:
        p = super().export(s_x)
        s_y = self.out_obs.scale()
        M, sh = _requant_params(torch.as_tensor(p["acc_scale"]), s_y)
        p.update(M=_np(M), sh=_np(sh), out_scale=np.float32(s_y))
        return p


class QLayerNorm(nn.Module):
    """§6 integer LayerNorm: int16 codes → int8 at an EMA-calibrated scale."""

    def __init__(self, cfg: FQBertConfig, hidden: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(hidden))
        self.beta = nn.Parameter(torch.zeros(hidden))
        self.eps = cfg.ln_eps
        self.out_obs = EMAMax(ACT_BITS, cfg.ema_momentum)

    def params(self, s_x: float) -> intops.LayerNormParams:
        return intops.layernorm_params(self.gamma, self.beta, self.eps, s_x, self.out_obs.scale())

    def forward(self, x: Tensor, s_x: float) -> tuple[Tensor, float]:
        if self.training:
            with torch.no_grad():
                H = x.shape[-1]
                self.out_obs.update(F.layer_norm(x.detach().to(_F64), (H,), self.gamma.detach().to(_F64),
                                                 self.beta.detach().to(_F64), self.eps))
        s_y = self.out_obs.scale()
        p = self.params(s_x)
        y = intops.int_layernorm(x, s_x, p, ACT_BITS, s_y, gamma=self.gamma, beta=self.beta)
        return y, s_y

    def export(self, s_x: float) -> dict:
        p = self.params(s_x)
        return {"G": _np(p.G).astype(np.int64), "B": _np(p.B).astype(np.int64), "S": int(p.S), "E": int(p.E),
                "in_scale": np.float32(s_x), "out_scale": np.float32(self.out_obs.scale())}

    def storage(self, prefix: str) -> list[tuple[str, int, int]]:
        n = self.gamma.numel()
        return [(f"{prefix}.G", n, LN_G_BITS), (f"{prefix}.B", n, LN_B_BITS)]


class QLut(nn.Module):
    """§4 8-bit lookup table int8 → int8 of ``fn`` (evaluated on float64 tensors).

    The output scale is EMA-calibrated, or fixed (``out_scale``).
    """

    def __init__(self, cfg: FQBertConfig, fn, name: str, out_scale: float | None = None):
        super().__init__()
        self.fn, self.name = fn, name
        self.fixed = out_scale
        self.out_obs = None if out_scale is not None else EMAMax(ACT_BITS, cfg.ema_momentum)

    def out_scale(self) -> float:
        return self.fixed if self.fixed is not None else self.out_obs.scale()

    def table(self, s_x: float) -> Tensor:
        return intops.lut_table(self.fn, ACT_BITS, True, s_x, ACT_BITS, True, self.out_scale())

    def forward(self, x: Tensor, s_x: float) -> tuple[Tensor, float]:
        if self.training and self.out_obs is not None:
            with torch.no_grad():
                self.out_obs.update(self.fn(x.detach().to(_F64)))
        s_y = self.out_scale()
        return intops.lut(x, s_x, ACT_BITS, True, self.table(s_x), s_y, fn=self.fn), s_y

    def export(self, s_x: float) -> dict:
        return {"table": _np(self.table(s_x)).astype(np.int64), "function": self.name,
                "in_scale": np.float32(s_x), "out_scale": np.float32(self.out_scale())}


def _gelu(x: Tensor) -> Tensor:
    return F.gelu(x)  # exact erf form


def residual_params(s_a: float, mag_a: int, s_b: float, mag_b: int) -> dict:
    """§7 add of two code tensors (max |code| ``mag_a``, ``mag_b``) into int16 without saturation."""
    s_y = _sum_scale([(mag_a, s_a), (mag_b, s_b)])
    Ma, Mb, sh = intops.add_params(s_a, s_b, s_y)
    return {"Ma": int(Ma), "Mb": int(Mb), "sh": int(sh), "a_scale": np.float32(s_a), "b_scale": np.float32(s_b),
            "out_scale": np.float32(s_y)}


def _int_add(a: Tensor, b: Tensor, p: dict) -> tuple[Tensor, float]:
    y = intops.int_add(a, float(p["a_scale"]), b, float(p["b_scale"]), p["Ma"], p["Mb"], p["sh"],
                       RESIDUAL_BITS, True, out_scale=float(p["out_scale"]))
    return y, float(p["out_scale"])


class Embeddings(nn.Module):
    """Host: int4n tables, gather, two §7 adds to int16, §6 LayerNorm → int8."""

    def __init__(self, cfg: FQBertConfig):
        super().__init__()
        kw = dict(weight_quant=Int8WeightPerTensorFloat, weight_bit_width=cfg.weight_bits)
        self.word = QuantEmbedding(cfg.vocab_size, cfg.hidden, **kw)
        self.position = QuantEmbedding(cfg.max_seq, cfg.hidden, **kw)
        self.token_type = QuantEmbedding(cfg.type_vocab, cfg.hidden, **kw)
        for e in (self.word, self.position, self.token_type):
            nn.init.normal_(e.weight, 0.0, cfg.init_std)
        self.ln = QLayerNorm(cfg, cfg.hidden)
        self.wmax = (1 << (cfg.weight_bits - 1)) - 1  # narrow: max |code|
        self.w_type = (cfg.weight_bits, True, True)

    def _tables(self):
        out = []
        for e in (self.word, self.position, self.token_type):
            qw = e.quant_weight()
            out.append((qw, _f32(float(qw.scale.detach()))))
        return out

    def _add_params(self, s_w: float, s_p: float, s_t: float) -> tuple[dict, dict]:
        p1 = residual_params(s_w, self.wmax, s_p, self.wmax)
        p2 = residual_params(float(p1["out_scale"]), 1 << (RESIDUAL_BITS - 1), s_t, self.wmax)
        return p1, p2

    def forward(self, ids: Tensor, type_ids: Tensor | None = None) -> tuple[Tensor, float]:
        (qw, s_w), (qp, s_p), (qt, s_t) = self._tables()
        T = ids.shape[-1]
        if type_ids is None:
            type_ids = torch.zeros_like(ids)
        w = F.embedding(ids, qw.value)
        p = qp.value[:T]
        t = F.embedding(type_ids, qt.value)
        p1, p2 = self._add_params(s_w, s_p, s_t)
        e, s_e = _int_add(w, p, p1)
        e, s_e = _int_add(e, t, p2)
        return self.ln(e, s_e)

    def export(self) -> tuple[dict, float]:
        out = {}
        tables = self._tables()
        for name, (qw, s) in zip(("word", "position", "token_type"), tables):
            out[name] = {"codes": _np(qw.int()).astype(np.int64), "scale": np.float32(s), "type": self.w_type}
        p1, p2 = self._add_params(*(s for _, s in tables))
        out["add_position"], out["add_type"] = p1, p2
        out["ln"] = self.ln.export(float(p2["out_scale"]))
        return out, float(out["ln"]["out_scale"])

    def storage(self, prefix: str) -> list[tuple[str, int, int]]:
        rows = []
        for name in ("word", "position", "token_type"):
            e = getattr(self, name)
            rows += [(f"{prefix}.{name}", e.weight.numel(), int(e.quant_weight().bit_width)),
                     (f"{prefix}.{name}_scale", 1, SCALE_BITS)]
        return rows + self.ln.storage(f"{prefix}.ln")


class Attention(nn.Module):
    """Multi-head self-attention on int8 codes: Q, K, V projections, int8 scores with 1/√d
    folded into their scale, §5 softmax → uint8 at 2^-8, uint8 P × int8 V, output projection."""

    def __init__(self, cfg: FQBertConfig):
        super().__init__()
        H = cfg.hidden
        self.heads, self.d = cfg.heads, cfg.head_dim
        self.q, self.k, self.v, self.o = (QLinearRequant(cfg, H, H) for _ in range(4))
        self.scores_obs = EMAMax(ACT_BITS, cfg.ema_momentum)
        self.context_obs = EMAMax(ACT_BITS, cfg.ema_momentum)

    def _score_params(self, s_q: float, s_k: float) -> dict:
        s_s = self.scores_obs.scale()
        acc_s = torch.tensor(s_q, dtype=_F64) * s_k
        M, sh = intops.dyadic(acc_s / math.sqrt(self.d) / s_s)
        return {"acc_scale": acc_s, "M": M, "sh": sh, "out_scale": s_s,
                "table": intops.softmax_table(ACT_BITS, s_s, SOFTMAX_BITS)}

    def _context_params(self, s_v: float) -> dict:
        s_c = self.context_obs.scale()
        acc_s = torch.tensor(2.0 ** -SOFTMAX_BITS, dtype=_F64) * s_v
        M, sh = intops.dyadic(acc_s / s_c)
        return {"acc_scale": acc_s, "M": M, "sh": sh, "out_scale": s_c}

    def forward(self, x: Tensor, s_x: float) -> tuple[Tensor, float]:
        B, T, H = x.shape
        q, s_q = self.q(x, s_x)
        k, s_k = self.k(x, s_x)
        v, s_v = self.v(x, s_x)
        qh = q.reshape(B, T, self.heads, self.d).transpose(1, 2)       # (B, h, T, d)
        kt = k.reshape(B, T, self.heads, self.d).permute(0, 2, 3, 1)   # (B, h, d, T)
        vh = v.reshape(B, T, self.heads, self.d).transpose(1, 2)       # (B, h, T, d)
        acc = intops.int_matmul(qh, kt, s_q, s_k)
        if self.training:
            self.scores_obs.update(acc / math.sqrt(self.d))
        sp = self._score_params(s_q, s_k)
        scores = intops.requant(acc, sp["acc_scale"], sp["M"], sp["sh"], ACT_BITS, True, out_scale=sp["out_scale"])
        p = intops.int_softmax(scores, sp["out_scale"], ACT_BITS, True, sp["table"], SOFTMAX_BITS, SOFTMAX_BITS)
        acc = intops.int_matmul(p, vh, 2.0 ** -SOFTMAX_BITS, s_v)
        if self.training:
            self.context_obs.update(acc)
        cp = self._context_params(s_v)
        ctx = intops.requant(acc, cp["acc_scale"], cp["M"], cp["sh"], ACT_BITS, True, out_scale=cp["out_scale"])
        ctx = ctx.transpose(1, 2).reshape(B, T, H)
        return self.o(ctx, cp["out_scale"])

    def export(self, s_x: float) -> tuple[dict, float]:
        out = {name: getattr(self, name).export(s_x) for name in ("q", "k", "v")}
        s_q, s_k, s_v = (float(out[n]["out_scale"]) for n in ("q", "k", "v"))
        sp, cp = self._score_params(s_q, s_k), self._context_params(s_v)
        out["scores"] = {"M": _np(sp["M"]), "sh": _np(sp["sh"]), "acc_scale": float(sp["acc_scale"]),
                         "out_scale": np.float32(sp["out_scale"])}
        out["softmax"] = {"table": _np(sp["table"]).astype(np.int64), "in_scale": np.float32(sp["out_scale"]),
                          "eb": SOFTMAX_BITS, "ob": SOFTMAX_BITS}
        out["context"] = {"M": _np(cp["M"]), "sh": _np(cp["sh"]), "acc_scale": float(cp["acc_scale"]),
                          "out_scale": np.float32(cp["out_scale"])}
        out["o"] = self.o.export(cp["out_scale"])
        return out, float(out["o"]["out_scale"])


class EncoderLayer(nn.Module):
    """Post-LN BERT layer: attention, int16 residual, LayerNorm, FFN (GELU LUT), residual, LayerNorm."""

    def __init__(self, cfg: FQBertConfig):
        super().__init__()
        self.attn = Attention(cfg)
        self.ln1 = QLayerNorm(cfg, cfg.hidden)
        self.ffn1 = QLinearRequant(cfg, cfg.hidden, cfg.ffn)
        self.gelu = QLut(cfg, _gelu, "gelu")
        self.ffn2 = QLinearRequant(cfg, cfg.ffn, cfg.hidden)
        self.ln2 = QLayerNorm(cfg, cfg.hidden)

    def forward(self, x: Tensor, s_x: float) -> tuple[Tensor, float]:
        a, s_a = self.attn(x, s_x)
        r, s_r = _int_add(a, x, residual_params(s_a, 128, s_x, 128))
        h, s_h = self.ln1(r, s_r)
        f, s_f = self.ffn1(h, s_h)
        g, s_g = self.gelu(f, s_f)
        f, s_f = self.ffn2(g, s_g)
        r, s_r = _int_add(f, h, residual_params(s_f, 128, s_h, 128))
        return self.ln2(r, s_r)

    def export(self, s_x: float) -> tuple[dict, float]:
        out = {}
        out["attn"], s_a = self.attn.export(s_x)
        out["add1"] = residual_params(s_a, 128, s_x, 128)
        out["ln1"] = self.ln1.export(float(out["add1"]["out_scale"]))
        s_h = float(out["ln1"]["out_scale"])
        out["ffn1"] = self.ffn1.export(s_h)
        out["gelu"] = self.gelu.export(float(out["ffn1"]["out_scale"]))
        out["ffn2"] = self.ffn2.export(float(out["gelu"]["out_scale"]))
        out["add2"] = residual_params(float(out["ffn2"]["out_scale"]), 128, s_h, 128)
        out["ln2"] = self.ln2.export(float(out["add2"]["out_scale"]))
        return out, float(out["ln2"]["out_scale"])

    def storage(self, prefix: str) -> list[tuple[str, int, int]]:
        rows = []
        for n in ("q", "k", "v", "o"):
            rows += getattr(self.attn, n).storage(f"{prefix}.attn.{n}")
        rows += self.ln1.storage(f"{prefix}.ln1")
        rows += self.ffn1.storage(f"{prefix}.ffn1") + self.ffn2.storage(f"{prefix}.ffn2")
        return rows + self.ln2.storage(f"{prefix}.ln2")


# ---------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------

class FQBert(nn.Module):
    """Fully quantized BERT sequence classifier (see the module docstring for the arithmetic).

    ``forward(input_ids, token_type_ids=None)`` takes ``(B, T)`` int64 token ids
    (``T <= max_seq``) and returns the logits as float64 values ``codes · acc_scale``
    (the classifier's exact int accumulator at ``s_t·s_w[n]``; :meth:`logit_codes` gives
    the codes).
    """

    def __init__(self, cfg: FQBertConfig | str = "tiny"):
        super().__init__()
        if isinstance(cfg, str):
            cfg = FQBertConfig.preset(cfg)
        self.cfg = cfg
        self.embeddings = Embeddings(cfg)
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg.layers))
        self.pooler = QLinearRequant(cfg, cfg.hidden, cfg.hidden)
        self.pooler_act = QLut(cfg, torch.tanh, "tanh", out_scale=TANH_SCALE)
        self.classifier = QLinear(cfg, cfg.hidden, cfg.classes)

    def _check_ids(self, ids: Tensor) -> Tensor:
        ids = torch.as_tensor(ids)
        if ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32) or not 1 <= ids.shape[1] <= self.cfg.max_seq:
            raise ValueError(f"FQBert: input_ids must be (B, T) integers with T <= {self.cfg.max_seq}, "
                             f"got {tuple(ids.shape)} {ids.dtype}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.cfg.vocab_size):
            raise ValueError(f"FQBert: token ids outside 0..{self.cfg.vocab_size - 1}")
        return ids.to(torch.int64)

    def encode(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> tuple[Tensor, float]:
        """The last encoder layer's output ``(B, T, hidden)`` as values ``codes · s`` (int8
        codes) and its scale ``s``: the token representations a sentence embedding pools."""
        ids = self._check_ids(input_ids)
        x, s = self.embeddings(ids, token_type_ids)
        for layer in self.layers:
            x, s = layer(x, s)
        return x, s

    def forward(self, input_ids: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        x, s = self.encode(input_ids, token_type_ids)
        h, s = self.pooler(x[:, 0, :], s)
        h, s = self.pooler_act(h, s)
        acc, _ = self.classifier.acc(h, s)
        return acc

    def logit_scale(self) -> Tensor:
        """float64 ``(classes,)`` scale of the logit codes: ``s_t · s_w[n]`` (eval scales)."""
        with torch.no_grad():
            return self.classifier.weight_params(self.pooler_act.out_scale())["acc_s"]

    def logit_codes(self, logits: Tensor) -> Tensor:
        """The int64 accumulator codes of :meth:`forward`'s logits (exact, ``|code| < 2^50``)."""
        return intops.codes(logits, self.logit_scale())

    @torch.no_grad()
    def calibrate(self, batches: Iterable[Tensor]) -> "FQBert":
        """Run ``batches`` of token ids in training mode without gradients (EMA scale
        statistics), then switch to eval (scales frozen)."""
        self.train()
        for ids in batches:
            self(ids)
        return self.eval()

    @torch.no_grad()
    def integer_params(self) -> dict:
        """Every integer parameter and scale of the eval model, as numpy (and Python) values.

        Layout (``linear`` = ``w`` int64 codes ``(N, K)``, ``w_type`` ``(bits, signed,
        narrow)``, ``w_scale`` float32 ``(N,)``, ``bias`` int64 codes ``(N,)``, ``in_scale``,
        ``acc_scale`` float64 ``(N,)``, and for requantized linears ``M``, ``sh`` ``(N,)``,
        ``out_scale``)::

            config       FQBertConfig fields
            embeddings   word/position/token_type {codes, scale, type}, add_position and
                         add_type {Ma, Mb, sh, a_scale, b_scale, out_scale},
                         ln {G, B, S, E, in_scale, out_scale}
            layers[i]    attn {q, k, v, o: linear; scores {M, sh, acc_scale, out_scale};
                         softmax {table, in_scale, eb, ob}; context {M, sh, acc_scale, out_scale}},
                         add1, ln1, ffn1, gelu {table, function, in_scale, out_scale}, ffn2, add2, ln2
            pooler       dense: linear, tanh: {table, function, in_scale, out_scale}
            classifier   linear without requant (logit codes at acc_scale)

        These are exactly the values the eval forward uses (computed by the same code).
        """
        emb, s = self.embeddings.export()
        layers = []
        for layer in self.layers:
            p, s = layer.export(s)
            layers.append(p)
        dense = self.pooler.export(s)
        tanh = self.pooler_act.export(float(dense["out_scale"]))
        cls = self.classifier.export(float(tanh["out_scale"]))
        return {"config": self.cfg.as_dict(), "embeddings": emb, "layers": layers,
                "pooler": {"dense": dense, "tanh": tanh}, "classifier": cls}


# ---------------------------------------------------------------------------------------
# storage and compression
# ---------------------------------------------------------------------------------------

def storage_report(model: FQBert) -> list[tuple[str, int, int]]:
    """Every tensor the quantized model stores in place of its float parameters:
    ``(name, number of elements, bits per element)``.

    Weights (linear and embedding tables) at their quantizer's bit width, their float32
    scales (one per output channel, one per embedding table), int32 bias codes, LayerNorm
    ``G`` (int16) and ``B`` (int32). Compile-time constants derived from scales (``M``,
    ``sh``, LUT/softmax tables, LayerNorm ``S``/``E``) replace the float model's
    activation handling, not its weights, and are not listed.
    """
    rows = model.embeddings.storage("embeddings")
    for i, layer in enumerate(model.layers):
        rows += layer.storage(f"layers.{i}")
    rows += model.pooler.storage("pooler") + model.classifier.storage("classifier")
    return rows


def compression_ratio(model: FQBert) -> float:
    """Weight compression versus fp32: ``32 · (# float parameters) / Σ numel · bits`` over
    :func:`storage_report` (FQ-BERT reports 7.94× for BERT-base)."""
    n_float = sum(p.numel() for p in model.parameters())
    bits = sum(n * b for _, n, b in storage_report(model))
    return 32.0 * n_float / bits
