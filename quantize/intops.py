"""Torch functional layer of codesign's integer arithmetic (docs/arithmetic.md).

Every function takes torch tensors holding **dequantized values** (``value = code ·
scale``, float32 or float64), recovers the integer codes, evaluates the contract's
integer op **exactly** (torch int64, or float64 where that is provably exact) and
returns the result dequantized again (``code · out_scale``). The forward pass is
therefore bit-exact with the integer reference ``codesign.sim.reference`` (this
module does not import it: the tests compare two independent implementations),
in training and in eval mode alike. The backward pass is a documented
straight-through surrogate, listed per function under *Backward*.

Conventions
-----------
* **Codes from values.** ``codes(x, s) = round_half_even(fl64(x) / fl64(s))`` in
  float64. For ``x = dequant(q, s)`` this returns ``q`` exactly when ``x`` was made
  in float64 and ``|q| < 2^50`` (the quotient is within ``|q|·2^-51 < 1/2`` of
  ``q``), or in float32 and ``|q| < 2^22``, also when ``s`` was rounded to float32
  for the product (the product's rounding and the scale's each contribute at most
  ``|q|·2^-24``, the float64 quotient ``2^-52`` relative: in all less than 1/2). A
  float32 accumulator is therefore only safe below ``2^22``, which is why
  :func:`int_matmul` returns float64 by default. Values off the grid are
  rounded to the nearest code; codes outside the type an op requires raise
  ``ValueError`` (named after the op), as in the reference.
* **Values from codes.** ``dequant(q, s, dtype) = dtype(q) · dtype(s)`` evaluated in
  ``dtype``: in float32 with a float32 scale this is the contract's
  ``fl32(fl32(q)·s)`` (§1). Outputs have the dtype of the (first) value input,
  except :func:`int_matmul` (float64 by default: accumulators exceed float32's
  exact range) and :func:`requant` (``torch.get_default_dtype()`` by default: its
  codes have at most 16 bits).
* **Scales** are Python floats, numpy values or tensors broadcasting against the
  input (per tensor, or per channel on the last axis where the op allows it). They
  receive no gradient (Brevitas learns scales in its own quantizers; the integer
  op treats them as constants).
* **Integer parameters** (multipliers ``M``, shifts ``sh``, tables, LayerNorm
  ``G``/``B``) are ints, sequences, numpy arrays or integer tensors.
* **Saturation mask.** Where an op ends in ``sat_Y``, the straight-through gradient
  is multiplied by ``lo_Y <= pre <= hi_Y`` with ``pre`` the integer value before the
  clamp (as ``torch.clamp``'s gradient, which Brevitas' quantizers use).

The functions are plain ``torch.autograd.Function``s (no TorchScript), vectorised
over any leading batch axes.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "int_range", "codes", "dequant", "rshr",
    "quantize_ste", "int_matmul", "MATMUL_EXACT_BOUND",
    "dyadic", "requant",
    "lut_table", "lut",
    "softmax_table", "int_softmax",
    "isqrt", "LN_F", "LN_Z", "LayerNormParams", "layernorm_params", "int_layernorm",
    "add_params", "int_add",
]

_I64 = torch.int64
_F64 = torch.float64
MAX_SHIFT = 62
LN_F = 8    # §6: fraction bits of the standard deviation
LN_Z = 16   # §6: fraction bits of the normalised value
_LN_E_MAX = (1 << 40) - 1
MATMUL_EXACT_BOUND = 2**52  # §2: float64 integer matmul is exact below this bound

# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


def int_range(bits: int, signed: bool, narrow: bool = False) -> tuple[int, int]:
    """(lo, hi) of a code type (§0; QONNX min_int/max_int); 1-bit signed is bipolar (-1, +1)."""
    _check_int("int_range", "bits", bits, 1, 32)
    if bits == 1 and signed:
        return -1, 1
    if signed:
        return -(1 << (bits - 1)) + int(bool(narrow)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1 - int(bool(narrow))


def _check_int(op: str, what: str, v, lo: int, hi: int) -> int:
    try:
        if isinstance(v, bool):
            raise TypeError
        v = operator.index(v)  # int, numpy integer, 0-d integer tensor; not float, not bool
    except TypeError:
        raise ValueError(f"{op}: {what}={v!r} must be an integer in {lo}..{hi}") from None
    if not lo <= v <= hi:
        raise ValueError(f"{op}: {what}={v!r} not supported ({lo}..{hi})")
    return v


def _f64(v) -> Tensor:
    """float64 tensor of a tensor, array or Python number (never through the float32 default dtype)."""
    return v.detach().to(_F64) if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v, dtype=np.float64))


def _scale64(op: str, s, what: str = "scale") -> Tensor:
    """A positive finite scale as a float64 tensor (no gradient)."""
    t = _f64(s)
    if t.numel() == 0 or not bool(torch.all(torch.isfinite(t) & (t > 0))):
        raise ValueError(f"{op}: {what} must be finite and > 0, got {t.flatten()[:4].tolist()}")
    return t


def _int_tensor(op: str, what: str, v) -> Tensor:
    t = v.detach() if isinstance(v, Tensor) else torch.as_tensor(np.asarray(v))
    if t.is_floating_point():
        if t.numel() and not bool(torch.all(torch.isfinite(t) & (t == torch.round(t)))):
            raise ValueError(f"{op}: {what} must hold integers")
    elif t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{op}: {what} must hold integers, got {t.dtype}")
    return t.to(_I64)


def _codes(op: str, what: str, x: Tensor, scale: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"{op}: {what} must be a floating-point tensor of dequantized values")
    try:
        t = x.detach().to(_F64) / scale
    except RuntimeError:
        raise ValueError(f"{op}: scale shape {tuple(scale.shape)} does not broadcast to {what} "
                         f"{tuple(x.shape)}") from None
    if t.numel() and not bool(torch.all(torch.abs(t) < 2.0**62)):
        raise ValueError(f"{op}: {what} holds NaN, infinity or values beyond 2^62 codes")
    return torch.round(t).to(_I64)


def codes(x: Tensor, scale) -> Tensor:
    """Integer codes (int64) of dequantized values: ``round_half_even(x / scale)`` in float64."""
    return _codes("codes", "x", x, _scale64("codes", scale))


def dequant(q: Tensor, scale, dtype: torch.dtype = torch.float32) -> Tensor:
    """``dtype(q) · dtype(scale)``, evaluated in ``dtype`` (float32: the contract's dequantize, §1)."""
    return q.to(dtype) * _scale64("dequant", scale).to(dtype)


def _check_range(op: str, what: str, q: Tensor, lo: int, hi: int) -> None:
    if q.numel():
        qlo, qhi = int(q.min()), int(q.max())
        if qlo < lo or qhi > hi:
            raise ValueError(f"{op}: {what} codes [{qlo}, {qhi}] outside [{lo}, {hi}]")


def _check_type(op: str, what: str, q: Tensor, bits: int, signed: bool) -> None:
    lo, hi = int_range(bits, signed)
    if bits == 1 and signed:
        if q.numel() and not bool(torch.all((q == 1) | (q == -1))):
            raise ValueError(f"{op}: {what} must be bipolar (-1/+1)")
    else:
        _check_range(op, what, q, lo, hi)


def rshr(v: Tensor, s) -> Tensor:
    """§0 rounding right shift, ties toward +inf: ``floor((v + 2^(s-1)) / 2^s)``, ``rshr(v, 0) = v``.

    int64; ``s`` broadcasts against ``v``; requires ``|v| < 2^62`` (no overflow of the addition).
    """
    s = torch.as_tensor(s, dtype=_I64)
    half = torch.where(s > 0, torch.ones_like(s) << (s - 1).clamp(min=0), torch.zeros_like(s))
    return (v + half) >> s  # >> on int64 tensors is arithmetic (floor)


def _bits_for(lo: int, hi: int) -> int:
    """Smallest two's-complement width holding [lo, hi]."""
    w = 1
    while not (-(1 << (w - 1)) <= lo and hi <= (1 << (w - 1)) - 1):
        w += 1
    return w


def _grad_to(g: Tensor, like) -> Tensor:
    """Reduce a broadcast gradient to the shape and dtype of an input (a tensor or a ``_Meta``)."""
    if g.shape != like.shape:
        g = g.sum_to_size(like.shape)
    return g.to(like.dtype)


@dataclass(frozen=True)
class _Meta:
    """Shape and dtype of an input, kept for backward instead of the tensor."""

    shape: torch.Size
    dtype: torch.dtype

    @staticmethod
    def of(t: Tensor | None):
        return None if t is None else _Meta(t.shape, t.dtype)


def _needs(ctx, i: int) -> bool:
    return bool(ctx.needs_input_grad[i])


# ---------------------------------------------------------------------------
# §1 quantize with a straight-through estimator
# ---------------------------------------------------------------------------

class _QuantizeSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale32, bits, signed, narrow):
        t = x.detach().to(torch.float32) / scale32  # one binary32 division (§1 step 1)
        if bits == 1 and signed:  # bipolar: +1 iff t >= 0
            q = torch.where(t >= 0, 1.0, -1.0)
            mask = torch.abs(t) <= 1.0
        else:
            lo, hi = int_range(bits, signed, narrow)
            q = torch.round(t.clamp(float(lo), float(hi)))  # clamp then half-to-even, binary32
            mask = (t >= lo) & (t <= hi)
        ctx.save_for_backward(mask)
        ctx.x = _Meta.of(x)
        return q.to(x.dtype) * scale32.to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return _grad_to(g * mask, ctx.x), None, None, None, None


def quantize_ste(x: Tensor, scale, bits: int, signed: bool = True, narrow: bool = False) -> Tensor:
    """§1 quantize (QONNX ``Quant``, ``ROUND``, zero point 0) then dequantize, with an STE.

    Forward: ``t = fl32(fl32(x) / fl32(scale))`` (one binary32 division); bipolar
    (``bits = 1``, signed): ``q = +1`` iff ``t >= 0``; otherwise
    ``q = round_half_even(clamp(t, lo, hi))`` in binary32. Returns ``q · scale`` in
    ``x.dtype`` (float32: ``fl32(q·s)``, QONNX's output). ``scale`` is taken as
    float32 (as QONNX) and broadcasts (per tensor or per channel).

    Backward: ``dx = grad · [lo <= t <= hi]`` (clamp STE; bipolar: ``[|t| <= 1]``,
    the hard-tanh STE). No gradient to the scale.
    """
    op = "quantize_ste"
    bits = _check_int(op, "bits", bits, 1, 16)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ValueError(f"{op}: x must be a floating-point tensor")
    s32 = _scale64(op, scale).to(torch.float32)
    if not bool(torch.all(s32 > 0)):
        raise ValueError(f"{op}: scale underflows binary32")
    try:
        torch.broadcast_shapes(x.shape, s32.shape)
    except RuntimeError:
        raise ValueError(f"{op}: scale shape {tuple(s32.shape)} does not broadcast to {tuple(x.shape)}") from None
    if x.numel() and not bool(torch.all(torch.isfinite(x))):
        raise ValueError(f"{op}: input contains NaN or infinity")
    return _QuantizeSTE.apply(x, s32, bits, bool(signed), bool(narrow))


# ---------------------------------------------------------------------------
# §2 integer matmul
# ---------------------------------------------------------------------------

class _IntMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, w, bias, a_s, w_s, out_dtype):
        qa = _codes("int_matmul", "a", a, a_s).to(_F64)
        qw = _codes("int_matmul", "w", w, w_s).to(_F64)
        K = a.shape[-1]
        amax = float(qa.abs().max()) if qa.numel() else 0.0
        wmax = float(qw.abs().max()) if qw.numel() else 0.0
        if K * amax * wmax >= MATMUL_EXACT_BOUND:
            raise ValueError(f"int_matmul: K={K} x max|a|={amax:.0f} x max|w|={wmax:.0f} reaches 2^52: "
                             f"the float64 matmul would not be exact")
        acc = torch.matmul(qa, qw)  # exact: integers, every partial sum < 2^52 (see int_matmul)
        out_s = a_s * w_s
        if bias is not None:
            qb = _codes("int_matmul", "bias", bias, out_s)
            _check_range("int_matmul", "bias", qb, -(2**31), 2**31 - 1)
            acc = acc + qb.to(_F64)  # |acc| < 2^52 + 2^31: still exact in float64
        ctx.save_for_backward(a, w)
        ctx.bias = _Meta.of(bias)
        return (acc * out_s).to(out_dtype)

    @staticmethod
    def backward(ctx, g):
        a, w = ctx.saved_tensors
        ga = gw = gb = None
        if _needs(ctx, 0):
            ga = _grad_to(torch.matmul(g.to(w.dtype), w.transpose(-1, -2)), a)
        if _needs(ctx, 1):
            gw = _grad_to(torch.matmul(a.transpose(-1, -2), g.to(a.dtype)), w)
        if ctx.bias is not None and _needs(ctx, 2):
            gb = _grad_to(g, ctx.bias)
        return ga, gw, gb, None, None, None


def int_matmul(a: Tensor, w: Tensor, a_scale, w_scale, bias: Tensor | None = None,
               out_dtype: torch.dtype = torch.float64) -> Tensor:
    """§2: ``acc = codes(a) @ codes(w) (+ codes(bias))``, exact; returns ``acc · a_scale · w_scale``.

    ``a``: ``(..., K)`` values at ``a_scale`` (per tensor, or per row with a size-1
    last axis); ``w``: ``(K, N)`` or batched ``(..., K, N)`` values at ``w_scale``
    (per tensor, per output channel ``(N,)``, or broadcastable with a size-1 ``K``
    axis) — a runtime tensor for activation × activation products (``Q·Kᵀ``: pass
    ``k.transpose(-1, -2)``). ``bias``: values at ``a_scale · w_scale``, shape
    ``(N,)``; its codes (``round_half_even`` in float64) must fit int32.

    Exactness: the codes are float64 integers and the matmul runs in float64. Every
    product and every partial sum, in whatever order or blocking the BLAS uses
    (FMA included), is an integer of magnitude ``<= K·max|a|·max|w| < 2^52``
    (checked, else ``ValueError``; with codes of at most 8 bits this is
    ``K < 2^37``), and float64 represents every integer below ``2^53``, so no
    operation rounds. Adding an int32 bias stays below ``2^53``.

    The output is ``fl(acc · fl64(a_scale·w_scale))`` in ``out_dtype``, float64 by
    default so that :func:`requant` recovers ``acc`` for ``|acc| < 2^50``; pass
    ``acc_scale = a_scale·w_scale`` computed in float64 to it.

    Backward: the gradient of the float matmul ``a @ w (+ bias)`` at the input
    values (``da = g @ wᵀ``, ``dw = aᵀ @ g``, ``dbias = Σ g``), in each input's dtype.
    """
    op = "int_matmul"
    for what, t in (("a", a), ("w", w)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{op}: {what} must be a floating-point tensor")
    if w.ndim < 2:
        raise ValueError(f"{op}: w must be (K, N) or batched (..., K, N), got shape {tuple(w.shape)}")
    squeeze = a.ndim == 1
    if squeeze:
        a = a.unsqueeze(0)
    if a.shape[-1] != w.shape[-2] or a.shape[-1] < 1:
        raise ValueError(f"{op}: inner dimensions differ or are empty: a {tuple(a.shape)}, w {tuple(w.shape)}")
    a_s, w_s = _scale64(op, a_scale, "a_scale"), _scale64(op, w_scale, "w_scale")
    if a_s.ndim >= 1 and a_s.shape[-1] != 1 and a_s.numel() != 1:
        raise ValueError(f"{op}: a_scale must be constant along K (size-1 last axis), got {tuple(a_s.shape)}")
    if w_s.ndim >= 2 and w_s.shape[-2] != 1:
        raise ValueError(f"{op}: w_scale must be constant along K (size-1 axis -2), got {tuple(w_s.shape)}")
    if a_s.ndim == 1 and a_s.numel() == 1:
        a_s = a_s.reshape(())
    if bias is not None and (not isinstance(bias, Tensor) or not bias.is_floating_point()
                             or bias.shape not in ((), (w.shape[-1],))):
        raise ValueError(f"{op}: bias must be a floating-point tensor of shape ({w.shape[-1]},)")
    out = _IntMatmul.apply(a, w, bias, a_s, w_s, out_dtype)
    return out.squeeze(-2) if squeeze else out


# ---------------------------------------------------------------------------
# §3 dyadic requantization
# ---------------------------------------------------------------------------

def dyadic(r, m: int = 16) -> tuple[Tensor, Tensor]:
    """§3: ``(M, sh)`` int64 tensors (shaped like ``r``) with ``M·2^-sh`` the nearest m-bit-mantissa value to ``r``.

    Exact and platform independent: ``torch.frexp`` splits the float64 ``r`` into
    ``f·2^e`` exactly, ``f·2^m`` is a power-of-two scaling (exact), ``torch.round``
    is half-to-even. Carry ``M = 2^m`` → ``(2^(m-1), sh-1)``; ``sh > 62`` →
    ``M = round_half_even(r·2^62)``, ``sh = 62`` (again an exact scaling, up);
    ``sh < 0`` (``r >= 2^m - 1/2``), ``r <= 0``, NaN, inf → ``ValueError``.
    """
    op = "dyadic"
    m = _check_int(op, "m", m, 2, 24)
    r = _f64(r)
    if r.numel() == 0 or not bool(torch.all(torch.isfinite(r) & (r > 0))):
        raise ValueError(f"{op}: ratio must be finite and > 0, got {r.flatten()[:4].tolist()}")
    f, e = torch.frexp(r)  # r = f * 2^e, f in [0.5, 1)
    M = torch.round(f * float(1 << m)).to(_I64)
    sh = m - e.to(_I64)
    carry = M == (1 << m)
    M = torch.where(carry, torch.full_like(M, 1 << (m - 1)), M)
    sh = torch.where(carry, sh - 1, sh)
    if bool(torch.any(sh < 0)):
        raise ValueError(f"{op}: ratio {float(r[sh < 0].flatten()[0])!r} >= 2^{m} - 1/2: output scale too small "
                         f"for a {m}-bit dyadic multiplier")
    tiny = sh > MAX_SHIFT
    if bool(torch.any(tiny)):
        M = torch.where(tiny, torch.round(r * 2.0**MAX_SHIFT).to(_I64), M)
        sh = torch.where(tiny, torch.full_like(sh, MAX_SHIFT), sh)
    return M, sh


class _Requant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, acc, acc_s, M, sh, lo, hi, out_s, out_dtype, m):
        q = _codes("requant", "acc", acc, acc_s)
        mbits = max(m, int(M.max()).bit_length() if M.numel() else 0)
        if q.numel():
            wacc = _bits_for(int(q.min()), int(q.max()))
            if wacc + mbits > 62:
                raise ValueError(f"requant: accumulator of {wacc} bits x {mbits}-bit multiplier exceeds 62 bits")
        pre = rshr(q * M, sh)
        y = pre.clamp(lo, hi)
        ctx.save_for_backward((pre >= lo) & (pre <= hi))
        # d(value out)/d(value in) of the real map the op rounds: acc·M·2^-sh codes at out_s
        ctx.gain = M.to(_F64) * torch.pow(2.0, -sh.to(_F64)) * out_s / acc_s
        ctx.acc = _Meta.of(acc)
        return y.to(out_dtype) * out_s.to(out_dtype)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        return _grad_to(g.to(_F64) * mask * ctx.gain, ctx.acc), None, None, None, None, None, None, None, None


def requant(acc: Tensor, acc_scale, M, sh, out_bits: int, out_signed: bool = True, narrow: bool = False,
            out_scale=1.0, m: int = 16, out_dtype: torch.dtype | None = None) -> Tensor:
    """§3: ``y = sat_Y(rshr(codes(acc)·M, sh))``, returned as ``y · out_scale``.

    ``M``/``sh`` per tensor or per channel on the last axis (anything broadcasting
    against the accumulator); ``0 <= M < 2^24``, ``0 <= sh <= 62``; ``Y`` has 2–16
    bits. ``m``: multiplier width for the overflow check, which mirrors the
    reference: (two's-complement width of the actual accumulator values) +
    max(m, bit length of max M) <= 62, so ``|acc·M| < 2^61`` and the int64
    computation cannot overflow. Output dtype ``out_dtype`` (default
    ``torch.get_default_dtype()``).

    Backward: ``d acc = grad · [lo <= pre <= hi] · (M·2^-sh · out_scale / acc_scale)``,
    the derivative of the real linear map the op rounds (≈ 1 when
    ``(M, sh) = dyadic(acc_scale/out_scale)``), masked where it saturates.
    """
    op = "requant"
    out_bits = _check_int(op, "output bits", out_bits, 2, 16)
    m = _check_int(op, "m", m, 2, 24)
    lo, hi = int_range(out_bits, out_signed, narrow)
    acc_s = _scale64(op, acc_scale, "acc_scale")
    out_s = _scale64(op, out_scale, "out_scale")
    M = _int_tensor(op, "M", M)
    sh = _int_tensor(op, "shift", sh)
    if M.numel() and (int(M.min()) < 0 or int(M.max()) >= 1 << 24):
        raise ValueError(f"{op}: multiplier outside 0..2^24-1: [{int(M.min())}, {int(M.max())}]")
    if sh.numel() and (int(sh.min()) < 0 or int(sh.max()) > MAX_SHIFT):
        raise ValueError(f"{op}: shift outside 0..{MAX_SHIFT}: [{int(sh.min())}, {int(sh.max())}]")
    try:
        torch.broadcast_shapes(acc.shape, M.shape, sh.shape, acc_s.shape, out_s.shape)
    except RuntimeError:
        raise ValueError(f"{op}: M {tuple(M.shape)} / shift {tuple(sh.shape)} / scales do not broadcast to "
                         f"acc {tuple(acc.shape)}") from None
    return _Requant.apply(acc, acc_s, M, sh, lo, hi, out_s, out_dtype or torch.get_default_dtype(), m)


# ---------------------------------------------------------------------------
# §4 lookup tables
# ---------------------------------------------------------------------------

def _all_codes(bits: int, signed: bool) -> Tensor:
    """Every code of a type in index (bit-pattern) order 0 .. 2^b - 1 (bipolar: -1, +1)."""
    if bits == 1 and signed:
        return torch.tensor([-1, 1], dtype=_I64)
    idx = torch.arange(1 << bits, dtype=_I64)
    return torch.where(idx >= 1 << (bits - 1), idx - (1 << bits), idx) if signed else idx


def _lut_index(q: Tensor, bits: int, signed: bool) -> Tensor:
    if bits == 1 and signed:
        return (q + 1) // 2
    return q & ((1 << bits) - 1) if signed else q  # two's-complement pattern


def lut_table(fn: Callable[[Tensor], Tensor], in_bits: int, in_signed: bool, in_scale, out_bits: int,
              out_signed: bool, out_scale, in_narrow: bool = False, out_narrow: bool = False) -> Tensor:
    """§4 default table: ``table[idx(q)] = quant64(fn(q·s_x))`` for every code ``q`` (int64, index order).

    ``fn`` is a torch function evaluated on a float64 tensor; ``quant64(v) =
    clamp(round_half_even(v / s_y), lo_Y, hi_Y)`` in float64 (bipolar ``Y``: ``+1``
    iff ``v >= 0``). Codes outside a narrow input range get the entry of the
    nearest valid code.
    """
    op = "lut_table"
    in_bits = _check_int(op, "input bits", in_bits, 1, 8)
    out_bits = _check_int(op, "output bits", out_bits, 1, 16)
    s_x = _scale64(op, in_scale, "in_scale").reshape(-1)
    s_y = _scale64(op, out_scale, "out_scale").reshape(-1)
    if s_x.numel() != 1 or s_y.numel() != 1:
        raise ValueError(f"{op}: scales must be per tensor")
    lo_x, hi_x = int_range(in_bits, in_signed, in_narrow)
    x = _all_codes(in_bits, in_signed).clamp(lo_x, hi_x).to(_F64) * s_x
    with torch.no_grad():
        v = torch.as_tensor(fn(x)).to(_F64)
    if v.shape != x.shape or not bool(torch.all(torch.isfinite(v))):
        raise ValueError(f"{op}: function is not finite (or not elementwise) on [{float(x.min())}, {float(x.max())}]")
    if out_bits == 1 and out_signed:
        return torch.where(v >= 0, 1, -1).to(_I64)
    lo, hi = int_range(out_bits, out_signed, out_narrow)
    return torch.round(v / s_y).clamp(lo, hi).to(_I64)


class _Lut(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s_x, s_y, table, bits, signed, fn):
        q = _codes("lut", "x", x, s_x)
        _check_type("lut", "x", q, bits, signed)
        idx = _lut_index(q, bits, signed)
        y = table[idx]
        ctx.save_for_backward(x, idx, y)
        ctx.s = (s_x, s_y, table, bits, signed, fn)
        return y.to(x.dtype) * s_y.to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, idx, y = ctx.saved_tensors
        s_x, s_y, table, bits, signed, fn = ctx.s
        ctx.s = None
        if fn is None:
            slope = _table_slope(table, bits, signed) * (s_y / s_x)
            gx = g.to(_F64) * slope[idx]
        else:
            with torch.enable_grad():
                xv = x.detach().to(_F64).requires_grad_(True)
                v = fn(xv)
                (d,) = torch.autograd.grad(v.sum(), xv)
            # pass where the entry is the rounding of fn, not a clamped value
            mask = (v.detach() / s_y - y.to(_F64)).abs() <= 0.5
            gx = g.to(_F64) * d * mask
        return _grad_to(gx, x), None, None, None, None, None, None


def _table_slope(table: Tensor, bits: int, signed: bool) -> Tensor:
    """Slope (codes of Y per code of X) of the table along ascending codes, in index order.

    Central difference between the neighbouring codes inside the type range,
    one-sided at both ends (``torch.gradient`` with ``edge_order=1``); bipolar: the
    one difference ``(T(+1) - T(-1)) / 2``.
    """
    lo, hi = int_range(bits, signed)
    cs = torch.arange(lo, hi + 1, dtype=_I64)
    if bits == 1 and signed:
        cs = torch.tensor([-1, 1], dtype=_I64)
    tv = table[_lut_index(cs, bits, signed)].to(_F64)
    (d,) = torch.gradient(tv, spacing=(cs.to(_F64),), edge_order=1)
    out = torch.empty(len(table), dtype=_F64)
    out[_lut_index(cs, bits, signed)] = d
    return out


def lut(x: Tensor, in_scale, in_bits: int, in_signed: bool, table, out_scale,
        fn: Callable[[Tensor], Tensor] | None = None) -> Tensor:
    """§4: ``y = table[idx(codes(x))]`` (idx = the code's bit pattern), returned as ``y · out_scale``.

    ``table``: ``2^b`` integer codes in index order (bipolar input: 2); input codes
    must lie in the (non-narrow) input type, as in the reference.

    Backward: with ``fn`` (the torch function the table was built from),
    ``dx = grad · fn'(x) · [|fn(x)/s_y − y| <= 1/2]`` — the derivative of the float
    function, masked where the entry is a saturated (clamped) value rather than the
    rounding of ``fn``. Without ``fn``: ``dx = grad · slope(q) · s_y/s_x`` with
    ``slope`` the table's central difference over neighbouring codes (one-sided at
    the ends of the input range), i.e. the derivative of the table's own
    interpolation, which is flat where the table saturates.
    """
    op = "lut"
    in_bits = _check_int(op, "input bits", in_bits, 1, 8)
    s_x = _scale64(op, in_scale, "in_scale")
    s_y = _scale64(op, out_scale, "out_scale")
    if s_x.numel() != 1 or s_y.numel() != 1:
        raise ValueError(f"{op}: scales must be per tensor")
    s_x, s_y = s_x.reshape(()), s_y.reshape(())
    table = _int_tensor(op, "table", table)
    n = 2 if in_bits == 1 and in_signed else 1 << in_bits
    if table.shape != (n,):
        raise ValueError(f"{op}: table has shape {tuple(table.shape)}, a {in_bits}-bit input needs ({n},)")
    return _Lut.apply(x, s_x, s_y, table, in_bits, bool(in_signed), fn)


# ---------------------------------------------------------------------------
# §5 integer softmax
# ---------------------------------------------------------------------------

def softmax_table(in_bits: int, in_scale, eb: int = 8) -> Tensor:
    """§5: ``T[k] = round_half_even((2^EB − 1)·exp(−k·s_x))``, ``k = 0 .. 2^b − 1``, float64 (int64)."""
    op = "softmax_table"
    in_bits = _check_int(op, "input bits", in_bits, 2, 8)
    eb = _check_int(op, "EB", eb, 1, 16)
    s = _scale64(op, in_scale, "in_scale").reshape(-1)
    if s.numel() != 1:
        raise ValueError(f"{op}: in_scale must be per tensor")
    k = torch.arange(1 << in_bits, dtype=_F64)
    return torch.round(((1 << eb) - 1) * torch.exp(-k * s)).to(_I64)


def _softmax_grad(x: Tensor, g: Tensor) -> Tensor:
    """Gradient of ``torch.softmax(x, -1)``: ``y ⊙ (g − Σ g⊙y)``, ``y = softmax(x)``."""
    y = torch.softmax(x, dim=-1)
    return y * (g - (g * y).sum(dim=-1, keepdim=True))


class _Softmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, s_x, table, bits, signed, eb, ob):
        q = _codes("int_softmax", "x", x, s_x)
        _check_type("int_softmax", "x", q, bits, signed)
        k = q.max(dim=-1, keepdim=True).values - q       # 0 <= k <= 2^b - 1
        e = table[k]                                      # <= 2^EB - 1
        S = e.sum(dim=-1, keepdim=True)                   # < 2^32, >= T[0] >= 1
        R = torch.div(torch.full_like(S, 1 << 32), S, rounding_mode="floor")  # <= 2^32
        p = torch.clamp(rshr(e * R, 32 - ob), max=(1 << ob) - 1)  # e*R <= 2^32
        ctx.save_for_backward(x)
        return p.to(x.dtype) * (2.0 ** -ob)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return _softmax_grad(x.detach(), g.to(x.dtype)), None, None, None, None, None, None


def int_softmax(x: Tensor, in_scale, in_bits: int, in_signed: bool, table, eb: int = 8, ob: int = 8) -> Tensor:
    """§5 integer softmax over the last axis; returns ``p · 2^-OB`` (``p`` unsigned ``OB``-bit codes).

    ``x``: values of a ``b``-bit (2–8) signed/unsigned type at per-tensor ``in_scale``
    (the attention ``1/√d`` folded in); ``table``: ``2^b`` entries in
    ``[0, 2^EB − 1]`` with ``T[0] >= 1`` (default :func:`softmax_table`). All steps in
    int64: ``S < 2^32`` (checked: ``N·(2^EB−1) < 2^32``), ``R = floor(2^32/S)``,
    ``e·R <= 2^32``.

    Backward: the gradient of the float ``torch.softmax(x, -1)`` at the input values
    (no mask: the clamp at ``2^OB − 1`` only trims a one-hot row's rounding).
    """
    op = "int_softmax"
    in_bits = _check_int(op, "input bits", in_bits, 2, 8)
    eb = _check_int(op, "EB", eb, 1, 16)
    ob = _check_int(op, "OB", ob, 1, 16)
    s_x = _scale64(op, in_scale, "in_scale")
    if s_x.numel() != 1:
        raise ValueError(f"{op}: in_scale must be per tensor")
    table = _int_tensor(op, "table", table)
    if table.shape != (1 << in_bits,):
        raise ValueError(f"{op}: table shape {tuple(table.shape)}, expected ({1 << in_bits},)")
    if int(table.min()) < 0 or int(table.max()) > (1 << eb) - 1 or int(table[0]) < 1:
        raise ValueError(f"{op}: table entries must be in 0..2^EB-1 with T[0] >= 1")
    if not isinstance(x, Tensor) or x.ndim < 1 or x.shape[-1] < 1:
        raise ValueError(f"{op}: need a tensor with at least one element per row")
    if x.shape[-1] * ((1 << eb) - 1) >= 1 << 32:
        raise ValueError(f"{op}: row length {x.shape[-1]} x (2^{eb}-1) overflows the 32-bit sum")
    return _Softmax.apply(x, s_x.reshape(()), table, in_bits, bool(in_signed), eb, ob)


# ---------------------------------------------------------------------------
# §6 integer LayerNorm
# ---------------------------------------------------------------------------

def isqrt(v) -> Tensor:
    """Exact ``floor(sqrt(v))`` of int64 values ``0 <= v < 2^62``, vectorised.

    ``s = floor(fl(sqrt(fl64(v))))`` then one correction each way. Proof: with
    ``r = isqrt(v)``, ``fl64(v) = v(1+δ₁)`` and the correctly rounded square root
    gives ``y = √v(1+δ₁)^½(1+δ₂)``, ``|δᵢ| <= 2^-53``, so ``|y − √v| < √v·2^-51.9 <
    2^31·2^-51.9 < 2^-20`` and ``floor(y) ∈ {r−1, r, r+1}``. ``s −= [s² > v]`` maps
    ``r+1 → r``; ``s += [(s+1)² <= v]`` maps ``r−1 → r``; neither moves ``r``. All
    squares are ``<= (2^31+1)^2 < 2^63``: no int64 overflow.
    """
    v = _int_tensor("isqrt", "v", v)
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 1 << 62):
        raise ValueError(f"isqrt: input outside 0..2^62-1: [{int(v.min())}, {int(v.max())}]")
    s = torch.floor(torch.sqrt(v.to(_F64))).to(_I64)
    s = s - (s * s > v).to(_I64)
    return s + ((s + 1) * (s + 1) <= v).to(_I64)


@dataclass(frozen=True)
class LayerNormParams:
    """Integer LayerNorm parameters (§6): ``G`` (per element), ``B`` (per element), shift ``S``, ``E``."""

    G: Tensor
    B: Tensor
    S: int
    E: int


def layernorm_params(gamma, beta, eps: float, in_scale, out_scale, S: int | None = None) -> LayerNormParams:
    """§6: ``G = rne(γ/s_y·2^(S−Z))``, ``B = rne(β/s_y·2^S)``, ``E = min(2^40−1, rne(ε/s_x²·2^2F))``.

    All in float64 (``·2^k`` exact power-of-two scalings, ``rne`` = ``torch.round``);
    ``S`` is the largest value in ``[Z, 62]`` with every ``|G| <= 2^15 − 1`` and
    ``|B| <= 2^31 − 1`` (``ValueError`` if ``S = Z`` does not fit), or the given ``S``.
    """
    op = "layernorm_params"
    gamma, beta = _f64(gamma), _f64(beta)
    if gamma.ndim != 1 or beta.shape != gamma.shape:
        raise ValueError(f"{op}: gamma {tuple(gamma.shape)} and beta {tuple(beta.shape)} must be equal 1-D shapes")
    if not (bool(torch.all(torch.isfinite(gamma))) and bool(torch.all(torch.isfinite(beta)))):
        raise ValueError(f"{op}: gamma/beta must be finite")
    eps = float(eps)
    if not (eps >= 0 and math.isfinite(eps)):
        raise ValueError(f"{op}: eps={eps!r} must be finite and >= 0")
    s_x = _scale64(op, in_scale, "in_scale")
    s_y = _scale64(op, out_scale, "out_scale")
    if s_x.numel() != 1 or s_y.numel() != 1:
        raise ValueError(f"{op}: scales must be per tensor")
    s_x, s_y = float(s_x), float(s_y)
    gy, by = gamma / s_y, beta / s_y

    def make(shift: int):  # floats, so that the range check sees values beyond int64
        return torch.round(gy * 2.0 ** (shift - LN_Z)), torch.round(by * 2.0**shift)

    def fits(shift: int) -> bool:
        G, B = make(shift)
        return bool(torch.all(G.abs() <= 2**15 - 1)) and bool(torch.all(B.abs() <= 2**31 - 1))

    if S is None:
        if not fits(LN_Z):
            raise ValueError(f"{op}: gamma/s_y up to {float(gy.abs().max()):.4g} or beta/s_y up to "
                             f"{float(by.abs().max()):.4g} do not fit 16/32-bit fixed point")
        S = LN_Z
        while S < MAX_SHIFT and fits(S + 1):
            S += 1
    else:
        S = _check_int(op, "S", S, 1, MAX_SHIFT)
        if not fits(S):
            raise ValueError(f"{op}: gamma/beta do not fit 16/32-bit fixed point at S={S}")
    G, B = make(S)
    sx = torch.tensor(s_x, dtype=_F64)
    e = float(torch.round(torch.tensor(eps, dtype=_F64) / (sx * sx) * 2.0 ** (2 * LN_F)))
    E = int(e) if e <= _LN_E_MAX else _LN_E_MAX  # inf (s_x^2 underflow), NaN (0/0) or huge: the cap
    return LayerNormParams(G=G.to(_I64), B=B.to(_I64), S=int(S), E=E)


def _layernorm_grad(x: Tensor, gamma: Tensor, eps_v, floor_v, g: Tensor):
    """Gradient of the float surrogate ``y = γ·(x − mean)/σ + β`` over the last axis.

    ``var`` is the biased variance, ``σ = max(√(var + eps_v), floor_v)`` (the
    integer op's ``σ >= 1`` in units of ``2^-F·s_x``). Returns ``(dx, dγ, dβ)`` with
    ``dγ``, ``dβ`` summed over the leading axes.
    """
    mean = x.mean(dim=-1, keepdim=True)
    d = x - mean
    var = (d * d).mean(dim=-1, keepdim=True)
    root = torch.sqrt(var + eps_v)
    free = root > floor_v  # σ depends on x only where it is not clamped
    sigma = torch.where(free, root, torch.as_tensor(floor_v, dtype=x.dtype).expand_as(root))
    xhat = d / sigma
    gh = g * gamma
    gx = (gh - gh.mean(dim=-1, keepdim=True)
          - free * xhat * (gh * xhat).mean(dim=-1, keepdim=True)) / sigma
    lead = tuple(range(x.ndim - 1))
    return gx, (g * xhat).sum(dim=lead) if lead else g * xhat, g.sum(dim=lead) if lead else g


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, gamma, beta, s_x, G, B, S, E, lo, hi, s_y):
        q = _codes("int_layernorm", "x", x, s_x)
        _check_range("int_layernorm", "x", q, -(1 << 15), (1 << 15) - 1)
        H = q.shape[-1]
        s = q.sum(dim=-1, keepdim=True)
        mu = torch.div(2 * s + H, 2 * H, rounding_mode="floor")          # sum/H rounded half up
        d = q - mu                                                         # |d| < 2^16
        SS = (d * d).sum(dim=-1, keepdim=True)                             # < 2^45
        v = torch.div(SS * (1 << 2 * LN_F), H, rounding_mode="floor") + E  # < 2^62
        sigma = isqrt(v).clamp(min=1)
        z = torch.div(d * (1 << (LN_Z + LN_F + 1)) + sigma, 2 * sigma, rounding_mode="floor")  # |z| < 2^23
        pre = rshr(z * G + B, S)                                           # |z*G + B| < 2^39
        y = pre.clamp(lo, hi)
        ctx.save_for_backward(x, (pre >= lo) & (pre <= hi), gamma, beta)
        ctx.p = (G, S, E, s_x, s_y)
        return y.to(x.dtype) * s_y.to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        x, mask, gamma, beta = ctx.saved_tensors
        G, S, E, s_x, s_y = ctx.p
        xv = x.detach().to(_F64)
        gam = gamma.detach().to(_F64) if gamma is not None else G.to(_F64) * s_y * 2.0 ** (LN_Z - S)
        eps_v = E * 2.0 ** (-2 * LN_F) * s_x * s_x
        floor_v = 2.0 ** -LN_F * s_x
        gx, gg, gb = _layernorm_grad(xv, gam, eps_v, floor_v, g.to(_F64) * mask)
        return (_grad_to(gx, x),
                gg.to(gamma.dtype) if gamma is not None and _needs(ctx, 1) else None,
                gb.to(beta.dtype) if beta is not None and _needs(ctx, 2) else None,
                None, None, None, None, None, None, None, None)


def int_layernorm(x: Tensor, in_scale, params: LayerNormParams, out_bits: int = 8, out_scale=1.0,
                  out_signed: bool = True, narrow: bool = False, gamma: Tensor | None = None,
                  beta: Tensor | None = None) -> Tensor:
    """§6 integer LayerNorm over the last axis of int16 codes; returns ``y · out_scale``.

    ``params``: :class:`LayerNormParams` (``G``, ``B`` of shape ``(H,)``, ``S``, ``E``),
    from :func:`layernorm_params` or given. Every step in int64, with the contract's
    bounds (``SS < 2^45``, ``v < 2^62``, ``|z| < 2^23``, ``|z·G + B| < 2^39``); the
    one square root is :func:`isqrt` (exact), the divisions are
    ``torch.div(..., rounding_mode="floor")`` on int64 (exact floor division).

    Backward: the gradient of the float LayerNorm ``γ·(x − mean)/σ + β`` at the
    input values, with the biased variance, ``σ = max(√(var + ε), 2^-F·s_x)`` where
    ``ε = E·2^-2F·s_x²`` (the op's ``σ >= 1`` in its units, so zero-variance rows
    have finite gradients), masked where the output saturates. ``γ``/``β`` are the
    given float ``gamma``/``beta`` tensors — which then receive their gradients (the
    STE of ``layernorm_params``) — or else ``G·s_y·2^(Z−S)`` and ``B·s_y·2^-S``.
    """
    op = "int_layernorm"
    out_bits = _check_int(op, "output bits", out_bits, 2, 8)
    lo, hi = int_range(out_bits, out_signed, narrow)
    if not isinstance(x, Tensor) or x.ndim < 1 or not 1 <= x.shape[-1] <= 4096:
        raise ValueError(f"{op}: row length H not supported (1..4096), got shape "
                         f"{tuple(x.shape) if isinstance(x, Tensor) else None}")
    H = x.shape[-1]
    s_x = _scale64(op, in_scale, "in_scale")
    s_y = _scale64(op, out_scale, "out_scale")
    if s_x.numel() != 1 or s_y.numel() != 1:
        raise ValueError(f"{op}: scales must be per tensor")
    G = _int_tensor(op, "G", params.G)
    B = _int_tensor(op, "B", params.B)
    if G.shape != (H,) or B.shape != (H,):
        raise ValueError(f"{op}: G {tuple(G.shape)} / B {tuple(B.shape)} must have shape ({H},)")
    if int(G.abs().max()) > 2**15 - 1 or int(B.abs().max()) > 2**31 - 1:
        raise ValueError(f"{op}: G must fit int16 and B int32")
    S = _check_int(op, "S", params.S, 1, MAX_SHIFT)
    E = _check_int(op, "E", params.E, 0, _LN_E_MAX)
    for what, p in (("gamma", gamma), ("beta", beta)):
        if p is not None and (not isinstance(p, Tensor) or p.shape != (H,)):
            raise ValueError(f"{op}: {what} must be a tensor of shape ({H},)")
    return _LayerNorm.apply(x, gamma, beta, float(s_x), G, B, S, E, lo, hi, s_y.reshape(()))


# ---------------------------------------------------------------------------
# §7 residual add
# ---------------------------------------------------------------------------

def add_params(s_a, s_b, s_y, m: int = 16) -> tuple[int, int, int]:
    """§7: ``(M_a, M_b, sh)``: ``dyadic`` of the larger ratio, the other ``rne(r_small·2^sh)``."""
    op = "add_params"
    sa, sb, sy = (float(_scale64(op, s, w)) for s, w in ((s_a, "s_a"), (s_b, "s_b"), (s_y, "s_y")))
    r_a, r_b = sa / sy, sb / sy
    for what, r in (("s_a/s_y", r_a), ("s_b/s_y", r_b)):
        if not (r > 0 and math.isfinite(r)):
            raise ValueError(f"{op}: ratio {what}={r!r} must be finite and > 0")
    try:
        M, sh = dyadic(max(r_a, r_b), m)
    except ValueError as e:  # name this op first
        raise ValueError(f"{op}: {e}") from None
    M, sh = int(M), int(sh)
    if sh < 1:
        raise ValueError(f"{op}: scale ratio {max(r_a, r_b)!r} too large for a {m}-bit multiplier with shift >= 1")
    small = int(torch.round(torch.tensor(min(r_a, r_b), dtype=_F64) * 2.0**sh))
    return (M, small, sh) if r_a >= r_b else (small, M, sh)


class _Add(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, s_a, s_b, Ma, Mb, sh, lo, hi, s_y, out_dtype):
        qa = _codes("int_add", "a", a, s_a)
        qb = _codes("int_add", "b", b, s_b)
        for what, q in (("a", qa), ("b", qb)):  # 16-bit signed or unsigned: |q| < 2^16
            _check_range("int_add", what, q, -(1 << 15), (1 << 16) - 1)
        pre = rshr(qa * Ma + qb * Mb, sh)  # |qa*Ma + qb*Mb| < 2^17 * 2^24
        y = pre.clamp(lo, hi)
        ctx.save_for_backward((pre >= lo) & (pre <= hi))
        ctx.p = (_Meta.of(a), _Meta.of(b), Ma * 2.0**-sh * s_y / s_a, Mb * 2.0**-sh * s_y / s_b)
        return y.to(out_dtype) * s_y.to(out_dtype)

    @staticmethod
    def backward(ctx, g):
        (mask,) = ctx.saved_tensors
        a, b, ga_, gb_ = ctx.p
        ctx.p = None
        gm = g.to(_F64) * mask
        return (_grad_to(gm * ga_, a), _grad_to(gm * gb_, b)) + (None,) * 9


def int_add(a: Tensor, s_a, b: Tensor, s_b, Ma: int, Mb: int, sh: int, out_bits: int, out_signed: bool = True,
            out_scale=1.0, narrow: bool = False) -> Tensor:
    """§7 residual add: ``y = sat_Y(rshr(codes(a)·M_a + codes(b)·M_b, sh))``, returned as ``y · out_scale``.

    Inputs are codes of up to 16 bits (checked: ``−2^15 <= q < 2^16``); ``0 <= M < 2^24``,
    ``1 <= sh <= 62``, ``Y`` 2–16 bits; int64 throughout (``< 2^41``). Per-tensor scales.

    Backward: the derivative of the real map the op rounds,
    ``da = grad·mask·M_a·2^-sh·s_y/s_a`` and ``db = grad·mask·M_b·2^-sh·s_y/s_b``
    (≈ 1 each with :func:`add_params`), ``mask`` = not saturated.
    """
    op = "int_add"
    out_bits = _check_int(op, "output bits", out_bits, 2, 16)
    lo, hi = int_range(out_bits, out_signed, narrow)
    Ma = _check_int(op, "Ma", Ma, 0, (1 << 24) - 1)
    Mb = _check_int(op, "Mb", Mb, 0, (1 << 24) - 1)
    sh = _check_int(op, "shift", sh, 1, MAX_SHIFT)
    scales = [_scale64(op, s, w) for s, w in ((s_a, "s_a"), (s_b, "s_b"), (out_scale, "out_scale"))]
    if any(s.numel() != 1 for s in scales):
        raise ValueError(f"{op}: scales must be per tensor")
    s_a, s_b, s_y = (s.reshape(()) for s in scales)
    for what, t in (("a", a), ("b", b)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{op}: {what} must be a floating-point tensor")
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        raise ValueError(f"{op}: shapes {tuple(a.shape)} and {tuple(b.shape)} do not broadcast") from None
    return _Add.apply(a, b, s_a, s_b, Ma, Mb, sh, lo, hi, s_y, torch.promote_types(a.dtype, b.dtype))
