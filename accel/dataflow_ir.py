"""Map the integer IR (:mod:`codesign.accel.ir`, docs/ir.md) onto the CNN dataflow's layers.

:func:`layers_from_ir` turns every matrix-vector op of an IR into one
:class:`codesign.accel.dataflow.Layer` (one MVAU, optionally fed by a sliding-window unit);
:func:`map_ir` also says which op became which layer, which ops the dataflow cost model
does not cover (``not_modelled``, with the reason) and what the mapping assumed
(``notes``). Nothing is costed here: :mod:`codesign.accel.report` runs the folding search
(:func:`codesign.accel.dataflow.search`) on the layers.

Mapping (per image: the IR's batch axis 0 is never counted):

* ``conv2d``, ``groups = 1``: ``MH = OC``, ``MW = IC·KH·KW``, ``vectors = OH·OW``. A square
  kernel with equal strides, one symmetric pad and no dilation gets its sliding
  :class:`~codesign.accel.dataflow.Window` (``k, C = IC, ifm_h, ifm_w, stride, pad``); any
  other geometry is costed without a window (the SWU is then not costed; a note says so).
* ``conv2d`` with a **bipolar input and padding** (any pad > 0, :func:`two_lanes_per_tap`):
  docs/arithmetic.md §11 says a padded tap adds 0, but every mvau.v lane adds ±1 for a
  1-bit activation (``2·popcount − MW`` in binary mode), so one lane per tap cannot express
  it. The layer is costed as the exact **two-lanes-per-tap** encoding that
  ``codesign verify`` runs on mvau.v: input channel ``c`` becomes the channel pair
  ``(2c, 2c + 1)`` — a real tap ``a`` the lanes ``(a, a)``, a padded tap ``(+1, −1)`` —
  against the weights ``(w, w)``, so the MVAU accumulates exactly ``2·acc`` and its
  thresholds are ``2·T``. Hence ``MW = 2·(IC/g)·KH·KW`` (NF·SF·V cycles, weight memories
  and product lanes of the encoded layer) and, with a window, ``C = 2·IC`` (the SWU of the
  channel-duplicated map, padding +1 / −1 per channel pair; its line buffer holds both
  lanes, an upper bound for an SWU that encodes at its output). A note says so. Without
  padding the plain one-lane encoding (FINN's) is exact and used.
* ``conv2d``, ``groups = g > 1`` (grouped and depthwise): VVAU-style, ``MH = OC``,
  ``MW = (IC/g)·KH·KW``, ``vectors = OH·OW`` — every output channel is a dot product of
  ``(IC/g)·KH·KW`` terms, so the product count ``MH·MW·vectors``, the cycles
  ``NF·SF·vectors`` and the weight memories (``OC x (IC/g)·KH·KW``) are exact for this
  mapping; the per-group routing of the inputs (mvau.v broadcasts one input vector to all
  PEs) and the SWU are not costed (no window; a note says so).
* ``matmul`` with a constant weight ``(K, N)``: ``MH = N``, ``MW = K``,
  ``vectors`` = the product of the input's axes between the batch and the last (1 for a
  ``(batch, K)`` input). A matmul of two activations (attention) is not modelled.
* ``xnor_popcount``: ``MH`` = the weight rows, ``MW = K``, binary.
* Widths: ``WB``/``AB`` are the weight/activation code types' bits; a 1-bit signed type is
  bipolar; ``mode = "binary"`` when both are bipolar (XNOR-popcount), else ``"lowbit"``.
  mvau.v's weights are signed: an unsigned ``b``-bit weight type is costed as ``b + 1``
  signed bits. 1-bit unsigned activations (``{0, 1}``), which mvau.v does not take, are
  costed as 2-bit unsigned ones (a note says so). Products on DSPs as
  :func:`~codesign.accel.dataflow.mult_on_dsp`'s ``"auto"`` rule.
* The output stage, found by following the accumulator through structural ops with one
  consumer (the lowering puts ``transpose``\\ s around per-channel stages):

  * **requant mode** (mvau.v ``RQ = 1``: per-channel bias add + multiplier-shift
    requantizer, ``Layer.out_stage = "requant"``, docs/dataflow.md "Requant output
    stage") for a stage of ``b >= REQUANT_MIN_BITS = 5`` output bits that it reproduces
    exactly. The rule comes from the cost model: from 5 bits one requantizer per PE
    (~70 LUTs, 1-2 DSP48E2s, three ``NF``-word parameter memories) is cheaper than
    ``2^b - 1`` threshold memories and comparators per PE at every folding (in LUT + FF/2 +
    100·RAMB18; ``tests/test_dataflow.py::test_requant_stage_costs``), below it thresholds
    are not dearer. Exact means (:func:`requant_stage_params`):

    - an IR ``requant`` to ``5..16`` bits whose ``M`` and shift are constants, one per
      output channel: its own ``M``, shift and the layer's bias (``B = bias``);
    - an IR ``threshold`` stage with ``n = 2^b - 1`` thresholds, ``out_bias`` 0 or
      ``-2^(b-1)``, not bipolar, **only when** an integer ``(B, M, SH)`` reproduces it on
      every accumulator of the layer's exact range (:func:`threshold_requant`, checked
      against the reference requant). The lowering's thresholds stay the reference: this
      is a change of hardware, never of codes. A folded BatchNorm converts only when its
      real offset lies on the accumulator grid (e.g. BatchNorm at its initial statistics),
      so trained models usually keep their thresholds (a note says so);
    - under two lanes per tap (the MVAU accumulates ``2·acc``) ``B = 2·bias`` and
      ``SH = sh + 1``.

    ``m_bits`` = the bit length of the largest ``M``, ``bias_bits`` = the signed width of
    the ``B`` range; ``NT = 0``, pipeline ``D_MVAU_RQ``.
  * otherwise ``threshold`` with ``n`` thresholds per channel: ``out_bits = bitlength(n)``
    (bipolar: 1), so the MVAU's ``NT = 2^out_bits - 1 >= n`` (the model costs ``NT``
    threshold memories; a note says when ``n < NT``);
  * otherwise ``requant`` to ``b <= 8`` bits (``b < 5``, or not per channel): costed as
    ``2^b - 1`` thresholds, FINN style (a ``b``-bit requant is a monotone step function of
    the accumulator, so ``2^b - 1`` thresholds reproduce it; ``codesign verify`` derives
    them by bisection);
  * a requant to more than 8 bits that the requant mode cannot take, or no stage: the
    MVAU outputs its accumulator (``out_bits = 0``); such a requant is listed as not
    modelled.

  In threshold mode a bias is folded into the thresholds (docs/dataflow.md §1), in requant
  mode it is the requantizer's bias; without a stage the bias add is not costed (a note
  says so).
* ``maxpool2d`` and ``avgpool2d``: a pool unit (:class:`~codesign.accel.dataflow.Pool`;
  ``maxpool2d``: ``sim/rtl/pool.v``, ``mode="max"``; ``avgpool2d``: ``sim/rtl/avgpool.v``,
  ``mode="avg"`` with ``out_bits`` = the bits of its ``out_type`` and ``in_signed`` = the
  signedness of its ``in_type``, its ``M`` and shift being avgpool.v's runtime inputs)
  attached to the layer whose output codes it pools (``Layer.pool``; it takes the MVAU's
  ``PE`` lanes per beat, so the folding search costs it with each candidate ``PE``), found
  by following the pool's input back through single-consumer structural ops to a layer's
  output stage. Needs a square window (so a global average pool of a non-square map is not
  modelled: avgpool.v's window is square), equal strides, one symmetric pad, a layer with
  an output stage (threshold or requant mode, codes of 1..8 bits, not a raw accumulator)
  that feeds only this pool, and ``C = MH``, ``H·W = vectors`` (an average pool also an
  ``M`` below ``2^24`` and a shift of 0..62); otherwise the pool stays in ``not_modelled``
  with the reason. :func:`layers_from_ir` returns the layers **without** their pools (as
  before pools were costed); :func:`map_ir`'s ``layers`` carry them.
* Everything else — ``add``, ``softmax``, ``layernorm``, ``lut``, the structural
  ops (``transpose``, ``reshape``, …), requants and thresholds that do not follow a layer,
  and the host's ``quantize``/``dequantize`` — is listed in ``not_modelled`` with its name
  and a reason; its cost is not estimated. A layer whose widths mvau.v cannot hold (e.g. an
  accumulator wider than 30 bits) is listed there too, with the model's one-line error.

numpy only (through the IR and the dataflow model).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from codesign.accel.dataflow import Layer, Pool, Sparse, Window

__all__ = ["MappedLayer", "DataflowMapping", "map_ir", "layers_from_ir", "two_lanes_per_tap", "LAYER_OPS",
           "STAGE_OPS", "POOL_OPS", "REQUANT_MIN_BITS", "REQUANT_MAX_BITS", "RQ_MAX_MBITS", "threshold_requant",
           "requant_stage_params", "bits_signed"]

#: IR ops that become a dataflow layer (an MVAU).
LAYER_OPS = ("conv2d", "matmul", "xnor_popcount")
#: IR ops that become a layer's output stage (its thresholds).
STAGE_OPS = ("threshold", "requant")
#: IR ops that become a pool unit attached to a layer (pool.v max, avgpool.v average).
POOL_OPS = ("maxpool2d", "avgpool2d")
#: Ops followed from an accumulator to its output stage (they move codes only).
_PASS_OPS = ("transpose", "reshape", "flatten", "identity")
#: mvau.v's largest threshold count per channel (``NT <= 255``, 8-bit outputs).
MAX_OUT_BITS = 8
#: Output stages of at least this many bits use mvau.v's requant mode (when they can, module
#: docstring): by the cost model a requantizer per PE is cheaper than ``2^b - 1`` threshold
#: memories and comparators from b = 5 at every folding (tests/test_dataflow.py).
REQUANT_MIN_BITS = 5
#: The widest requant output mvau.v's requant mode takes (requant.v: 2..16 bits).
REQUANT_MAX_BITS = 16
#: The widest multiplier a threshold stage converted to requant may use (mvau.v MBITS).
RQ_MAX_MBITS = 24


def bits_signed(lo: int, hi: int) -> int:
    """The smallest two's-complement width (at least 2) holding ``[lo, hi]``."""
    b = 2
    while not (-(1 << (b - 1)) <= lo and hi <= (1 << (b - 1)) - 1):
        b += 1
    return b


def requant_stage_params(kind: str, *, acc_lo: int, acc_hi: int, bias=None, scale: int = 1, T=None,
                         out_bias: int = 0, M=None, sh=None, out_type=None
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray, Any] | None:
    """The per-channel parameters of mvau.v's requant mode for a layer's output stage, or None.

    ``kind``: the IR stage op, "requant" (``M``, ``sh`` per channel, ``out_type`` an
    ``IntType``) or "threshold" (``T`` ``(C, n)`` per channel, ``out_bias``; converted by
    :func:`threshold_requant`, None when not exactly a requant). ``bias``: the layer's bias
    per channel (or None); ``[acc_lo, acc_hi]``: the IR accumulator's exact range without
    bias; ``scale``: what the MVAU accumulates per unit of it (2 for two lanes per tap).
    Returns ``(B, M, SH, Y)`` for the MVAU's accumulator ``scale·acc``:
    ``requant(scale·acc + B, M, SH, Y) == stage(acc + bias)`` for every ``acc`` in the range
    — with ``scale = 2``, ``B = 2·b`` and ``SH = sh + 1`` (``(2acc + 2b)·M / 2^(sh+1)`` is
    the same rational number; a shift of 62 keeps 62 with ``M = 0``: both give 0 since
    §3 bounds ``|acc·M| < 2^61``)."""
    from codesign.sim import reference as ref

    if scale not in (1, 2):
        raise ValueError(f"requant_stage_params: scale={scale}; supported 1, 2")
    if kind == "requant":
        M = np.asarray(M, dtype=np.int64).reshape(-1)
        sh = np.asarray(sh, dtype=np.int64).reshape(-1)
        C = M.size
        b = np.zeros(C, dtype=np.int64) if bias is None else np.asarray(bias, dtype=np.int64).reshape(-1)
        yt = out_type
        if not 2 <= yt.bits <= REQUANT_MAX_BITS:
            return None
    elif kind == "threshold":
        T = np.asarray(T, dtype=np.int64)
        b0 = np.zeros(T.shape[0], dtype=np.int64) if bias is None else np.asarray(bias, dtype=np.int64).reshape(-1)
        got = threshold_requant(T - b0[:, None], int(out_bias), int(acc_lo), int(acc_hi))
        if got is None:
            return None
        b, M, sh = got
        n = T.shape[1]
        yt = ref.IntType(n.bit_length(), out_bias < 0)
    else:
        raise ValueError(f"requant_stage_params: kind {kind!r}; supported requant, threshold")
    if scale == 2:
        top = sh >= 62
        b, M, sh = np.where(top, 0, 2 * b), np.where(top, 0, M), np.where(top, 62, sh + 1)
    return b.astype(np.int64), M.astype(np.int64), sh.astype(np.int64), yt


def _bound(num: int, den: int) -> tuple[int, int]:
    """num/den as a fraction with a positive denominator."""
    return (-num, -den) if den < 0 else (num, den)


def _requant_of_row(C: list[int], lo_y: int, A: int, B: int, m_max: int) -> tuple[int, int, int] | None:
    """(bias, M, sh) with ``sat(rshr((a + bias)·M, sh))`` == ``lo_y + #{t: a >= C[t]}`` for
    every integer ``a`` in ``[A, B]`` (``C`` ascending, clipped to ``[A, B + 1]``), or None.

    For ``M >= 1``, ``sh >= 1`` and ``ρ = 2^(sh-1)/M`` the requant reaches level ``lo_y + t``
    exactly from ``R_t = ceil(k_t·ρ) - bias`` on, ``k_t = 2·(lo_y + t) - 1`` (§3: ``rshr`` rounds
    half up, so ``(a + bias)·M >= (lo_y + t - ½)·2^sh``). Equality with the thresholds over
    ``[A, B]`` is, per level: ``C_t - 1 < k_t·ρ - bias <= C_t`` for ``A < C_t <= B``,
    ``k_t·ρ - bias <= A`` for ``C_t = A`` and ``> B`` for ``C_t = B + 1`` — linear bounds on ρ
    for a fixed bias, intersected exactly in integers. Bias candidates come from a pivot level
    and a slope estimate; for each, the smallest ``sh`` with an integer ``M < 2^m_max`` in the
    interval wins (deterministic)."""
    n = len(C)
    ks = [2 * (lo_y + t) - 1 for t in range(1, n + 1)]
    inr = [i for i in range(n) if A < C[i] <= B]
    if len(inr) >= 2:
        i, j = inr[0], inr[-1]
        rho_n, rho_d = C[j] - C[i], ks[j] - ks[i]  # slope estimate (levels 2 apart in k)
        piv = inr[len(inr) // 2]
    else:
        rho_n, rho_d = 2 * (B - A + 2), 1  # one level change at most: a slow ramp
        below = [i for i in range(n) if C[i] <= A]
        piv = inr[0] if inr else (below[-1] if below else 0)
    # bias ≈ k_piv·ρ - C_piv (integer candidates around it)
    base = -((-ks[piv] * rho_n) // rho_d) - C[piv]
    for delta in (0, -1, 1, -2, 2, -3, 3):
        bias = base + delta
        lo_b, lo_strict = (0, 1), True  # ρ > 0
        hi_b, hi_strict = None, False
        ok = True

        def lower(b, strict):
            nonlocal lo_b, lo_strict
            c = b[0] * lo_b[1] - lo_b[0] * b[1]
            if c > 0 or (c == 0 and strict):
                lo_b, lo_strict = b, strict

        def upper(b, strict):
            nonlocal hi_b, hi_strict
            if hi_b is None:
                hi_b, hi_strict = b, strict
                return
            c = b[0] * hi_b[1] - hi_b[0] * b[1]
            if c < 0 or (c == 0 and strict):
                hi_b, hi_strict = b, strict

        for t in range(n):
            k, c = ks[t], C[t]
            if c <= A:  # k·ρ <= A + bias
                (upper if k > 0 else lower)(_bound(A + bias, k), False)
            elif c > B:  # k·ρ > B + bias
                (lower if k > 0 else upper)(_bound(B + bias, k), True)
            else:  # c + bias - 1 < k·ρ <= c + bias
                if k > 0:
                    lower(_bound(c + bias - 1, k), True)
                    upper(_bound(c + bias, k), False)
                else:
                    upper(_bound(c + bias - 1, k), True)
                    lower(_bound(c + bias, k), False)
        if hi_b is not None:
            c = hi_b[0] * lo_b[1] - lo_b[0] * hi_b[1]
            if c < 0 or (c == 0 and (lo_strict or hi_strict)):
                ok = False
        if not ok or (hi_b is not None and hi_b[0] <= 0):
            continue
        for sh in range(1, 63):
            P = 1 << (sh - 1)
            # ρ = P/M: ρ <= U  <=>  M >= P/U;  ρ >= L  <=>  M <= P/L (strict: > / <)
            if hi_b is None:
                m_lo = 1
            else:
                q, r = divmod(P * hi_b[1], hi_b[0])
                m_lo = q + 1 if (hi_strict or r) else q
                m_lo = max(1, m_lo)
            if lo_b[0] > 0:
                q, r = divmod(P * lo_b[1], lo_b[0])
                m_hi = q - 1 if (lo_strict and r == 0) else q
            else:
                m_hi = m_lo
            if m_lo >= 1 << m_max:
                break
            if m_lo <= m_hi:
                return bias, m_lo, sh
    return None


def threshold_requant(T, out_bias: int, acc_lo: int, acc_hi: int, m_max: int = RQ_MAX_MBITS
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """A threshold stage as an exactly equal requant stage, or None.

    ``T``: ``(C, n)`` ascending thresholds on the MVAU accumulator (any bias already folded
    in), ``out_bias`` the code of count 0, ``[acc_lo, acc_hi]`` the accumulator's exact range.
    Needs ``n = 2^b - 1`` and ``out_bias`` ``0`` (uint b) or ``-2^(b-1)`` (int b). Returns
    per-channel ``(bias, M, sh)`` with ``codesign.sim.reference.requant(a + bias, M, sh, Y)
    == threshold(a, T, out_bias)`` for **every** ``a`` in the range (checked here with the
    reference requant at both sides of every threshold, which suffices because both are
    non-decreasing step functions of ``a``), or None when some channel has no such
    parameters (e.g. a BatchNorm whose real offset is not on the accumulator grid)."""
    from codesign.sim import reference as ref

    T = np.asarray(T, dtype=np.int64)
    C, n = T.shape
    b = n.bit_length()
    if n != (1 << b) - 1 or out_bias not in (0, -(1 << (b - 1))) or b < 2:
        return None
    yt = ref.IntType(b, out_bias < 0)
    Tc = np.clip(T, acc_lo, acc_hi + 1)
    rows, inv = np.unique(Tc, axis=0, return_inverse=True)
    params = []
    for row in rows:
        got = _requant_of_row([int(v) for v in row], int(out_bias), int(acc_lo), int(acc_hi), m_max)
        if got is None:
            return None
        params.append(got)
    P = np.array(params, dtype=np.int64)[np.asarray(inv).reshape(-1)]
    bias, M, sh = P[:, 0], P[:, 1], P[:, 2]
    # the exact check, against the reference requant: on both sides of every threshold
    pts = np.concatenate([Tc - 1, Tc], axis=1)
    pts = np.clip(pts, acc_lo, acc_hi)
    want = (pts[:, :, None] >= Tc[:, None, :]).sum(axis=-1) + out_bias
    got = ref.requant(pts + bias[:, None], M[:, None], sh[:, None], yt, m=max(16, int(M.max()).bit_length()))
    ends = np.array([[acc_lo, acc_hi]] * C, dtype=np.int64)
    want_e = (ends[:, :, None] >= Tc[:, None, :]).sum(axis=-1) + out_bias
    got_e = ref.requant(ends + bias[:, None], M[:, None], sh[:, None], yt, m=max(16, int(M.max()).bit_length()))
    if not (np.array_equal(got, want) and np.array_equal(got_e, want_e)):
        return None
    return bias, M, sh


@dataclass(frozen=True)
class MappedLayer:
    """One dataflow layer and where it came from: the IR ``op`` (and its ONNX names), the
    output-stage op (``None``: the accumulator) and the structural ops between them (not
    costed: they stay in ``not_modelled``)."""

    layer: Layer
    op: str
    kind: str
    onnx_name: tuple[str, ...]
    stage: str | None
    stage_kind: str | None
    between: tuple[str, ...] = ()
    pool: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """The mapping as plain JSON values (window as a dict or ``None``)."""
        l = self.layer
        w = l.window
        return {"name": l.name, "op": self.kind, "onnx_name": list(self.onnx_name), "MH": l.MH, "MW": l.MW,
                "vectors": l.vectors, "WB": l.WB, "AB": l.AB, "a_signed": l.a_signed, "mode": l.mode,
                "out_bits": l.out_bits, "NT": l.NT, "output_stage": self.stage, "out_stage": l.out_stage,
                "m_bits": l.m_bits if l.requant else None, "bias_bits": l.bias_bits if l.requant else None,
                "window": None if w is None else {"k": w.k, "C": w.C, "ifm_h": w.ifm_h, "ifm_w": w.ifm_w,
                                                  "stride": w.stride, "pad": w.pad,
                                                  "line_buffer": w.buffer_elems},
                "pool": None if l.pool is None else {"op": self.pool, "mode": l.pool.mode, "k": l.pool.k,
                                                     "stride": l.pool.stride, "pad": l.pool.pad, "C": l.pool.C,
                                                     "ifm_h": l.pool.ifm_h, "ifm_w": l.pool.ifm_w,
                                                     "bits": l.pool.bits, "out_bits": l.pool.ob}}


@dataclass
class DataflowMapping:
    """:func:`map_ir`'s answer: ``layers`` in IR op order, ``not_modelled`` ops
    (``{"name", "op", "target", "reason"}``, IR op order) and ``notes`` (one line each,
    prefixed by the op's name)."""

    layers: list[MappedLayer] = field(default_factory=list)
    not_modelled: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class _Graph:
    """Producer/consumer look-ups over ``ir.ops`` (works for any object with ``ops``,
    ``tensors`` and ``constants``)."""

    def __init__(self, ir):
        self.ir = ir
        self.consumers: dict[str, list] = {}
        for op in ir.ops:
            for t in op.inputs:
                self.consumers.setdefault(t, []).append(op)

    def shape(self, name: str) -> tuple[int, ...]:
        if name in self.ir.tensors:
            return tuple(self.ir.tensors[name].shape)
        return tuple(self.ir.constants[name].shape)


def _code_type(d: Any, where: str):
    from codesign.accel.ir import CodeType

    try:
        return CodeType.from_json(d, where)
    except Exception as e:  # noqa: BLE001 - re-raised as one line
        raise ValueError(f"{where}: {e}") from None


def _weight_bits(t) -> int:
    """mvau.v's signed weight width for code type ``t`` (1 = bipolar)."""
    return t.bits if t.signed else t.bits + 1


def _act(t, where: str, notes: list[str]) -> tuple[int, bool]:
    """(AB, a_signed) for activation code type ``t``."""
    if t.bits == 1 and not t.signed:
        notes.append(f"{where}: 1-bit unsigned activations ({{0, 1}}) are costed as 2-bit unsigned "
                     "(mvau.v takes 1-bit codes as bipolar only)")
        return 2, False
    return t.bits, t.signed


def _mode(wt, at) -> str:
    return "binary" if (wt.bipolar and at.bipolar) else "lowbit"


def _stage(g: _Graph, acc: str) -> tuple[Any, list]:
    """The threshold/requant fed by accumulator ``acc`` through single-consumer structural
    ops, and the structural ops passed; ``(None, [])`` when there is none."""
    passed = []
    t = acc
    while True:
        cons = g.consumers.get(t, [])
        if len(cons) != 1:
            return None, []
        op = cons[0]
        if op.op in STAGE_OPS and op.inputs[0] == t:
            return op, passed
        if op.op in _PASS_OPS and op.inputs[0] == t and len(op.outputs) == 1:
            passed.append(op)
            t = op.outputs[0]
            continue
        return None, []


def _out_bits(g: _Graph, stage, where: str, notes: list[str]) -> int | None:
    """Output bits of the MVAU for ``stage``; ``None`` when mvau.v cannot take it."""
    if stage is None:
        return 0
    if stage.op == "threshold":
        n = int(g.shape(stage.inputs[1])[-1])
        if stage.attrs.get("bipolar"):
            return 1
        b = max(1, n.bit_length())
        if b > MAX_OUT_BITS:
            return None
        if n < (1 << b) - 1:
            notes.append(f"{where}: {stage.name} has {n} thresholds per channel; the MVAU model costs "
                         f"NT = 2^{b} - 1 = {(1 << b) - 1} (it takes NT = 2^out_bits - 1)")
        return b
    b = _code_type(stage.attrs.get("out_type"), f"op '{stage.name}' out_type").bits
    return b if b <= MAX_OUT_BITS else None


def _per_channel_const(g: _Graph, name: str, MH: int) -> np.ndarray | None:
    """A stage constant as one value per output channel (scalar or MH values), else None."""
    if name not in g.ir.constants:
        return None
    v = np.asarray(g.ir.constants[name].values, dtype=np.int64).reshape(-1)
    if v.size == 1:
        return np.full(MH, int(v[0]), dtype=np.int64)
    return v if v.size == MH else None


def _requant_mode(g: _Graph, op, kw: dict, stage, notes: list[str]) -> dict | None:
    """Layer keywords of mvau.v's requant mode for ``stage`` (module docstring), or None to
    keep thresholds (with a note saying why when the stage has >= REQUANT_MIN_BITS bits)."""
    from codesign.sim import reference as ref

    where = f"{op.name}: {stage.name}"
    MH = int(kw["MH"])
    if stage.op == "threshold":
        if stage.attrs.get("bipolar"):
            return None
        n = int(g.shape(stage.inputs[1])[-1])
        if n.bit_length() < REQUANT_MIN_BITS:
            return None
        T = np.asarray(g.ir.constants[stage.inputs[1]].values, dtype=np.int64)
        if T.ndim != 2 or T.shape[0] not in (1, MH):
            notes.append(f"{where}: thresholds not one row per output channel: kept as thresholds")
            return None
        T = np.broadcast_to(T, (MH, n))
        args = dict(T=T, out_bias=int(stage.attrs.get("out_bias", 0)))
    else:
        yt = _code_type(stage.attrs.get("out_type"), f"op '{stage.name}' out_type")
        if not REQUANT_MIN_BITS <= yt.bits <= REQUANT_MAX_BITS:
            return None
        M = _per_channel_const(g, stage.inputs[1], MH)
        sh = _per_channel_const(g, stage.inputs[2], MH)
        if M is None or sh is None:
            notes.append(f"{where}: multipliers/shifts not constants, one per output channel: not the requant mode")
            return None
        args = dict(M=M, sh=sh, out_type=yt.int_type())
    scale = 2 if two_lanes_per_tap(op) else 1
    bias = None
    if len(op.inputs) > 2 and op.inputs[2] in g.ir.constants:
        bias = _per_channel_const(g, op.inputs[2], MH)
    at = ref.IntType(int(kw["AB"]), bool(kw["a_signed"]))
    lo, hi = ref.acc_range(int(kw["MW"]) // scale, at, ref.IntType(int(kw["WB"]), True))
    got = requant_stage_params(stage.op, acc_lo=lo, acc_hi=hi, bias=bias, scale=scale, **args)
    if got is None:
        if stage.op == "threshold":
            notes.append(f"{where}: its thresholds are not exactly a requant sat(rshr((acc + B)·M, sh)) (integer "
                         "bias B on the accumulator grid) over the accumulator range: kept as thresholds")
        else:
            notes.append(f"{where}: output type not of the requant mode: kept as thresholds")
        return None
    B, Mv, SH, yt = got
    mb = max(1, int(Mv.max()).bit_length())
    bb = bits_signed(min(0, int(B.min())), max(0, int(B.max())))
    if mb > RQ_MAX_MBITS or bb > 32:
        notes.append(f"{where}: a {mb}-bit multiplier / {bb}-bit bias exceeds mvau.v's requant mode: kept as "
                     "thresholds")
        return None
    how = ("its requant" if stage.op == "requant" else
           f"its {2 ** yt.bits - 1} thresholds per channel equal a requant exactly over the accumulator range "
           "(integer bias, M, shift found and checked against the reference requant at every threshold)")
    notes.append(f"{where}: mvau.v's requant output stage ({yt.bits}-bit {'int' if yt.signed else 'uint'}, "
                 f"{mb}-bit M, {bb}-bit bias): {how}; {REQUANT_MIN_BITS}+ bits: cheaper than 2^b - 1 thresholds")
    return dict(out_bits=yt.bits, out_stage="requant", m_bits=mb, bias_bits=bb)


def two_lanes_per_tap(op) -> bool:
    """Whether IR op ``op`` is mapped onto mvau.v with two lanes per kernel tap (module
    docstring): a ``conv2d`` whose input code type (``x_type``) is bipolar and whose pads
    (``pad``, ``[pt, pl, pb, pr]``) are not all 0. Decided by the op's attributes alone, not by
    whether a padded tap occurs in the data, so the cost model (:func:`map_ir`) and
    ``codesign verify`` (accel/verify.py) always agree on the layer's ``MW``. Raises
    ``ValueError`` (one line) for a malformed ``x_type``."""
    if op.op != "conv2d":
        return False
    at = _code_type(op.attrs.get("x_type"), f"op '{op.name}' (conv2d) x_type")
    return bool(at.bipolar) and any(int(v) != 0 for v in op.attrs.get("pad", [0, 0, 0, 0]))


def _window(attrs, kh: int, kw: int, C: int, H: int, W: int, OH: int, OW: int) -> Window | None:
    """The sliding window of a conv2d with ``attrs``, or ``None`` when Window cannot
    describe its geometry (non-square kernel or strides, asymmetric pads, dilation)."""
    stride = [int(v) for v in attrs.get("stride", [1, 1])]
    pad = [int(v) for v in attrs.get("pad", [0, 0, 0, 0])]
    dil = [int(v) for v in attrs.get("dilation", [1, 1])]
    if kh != kw or stride[0] != stride[1] or len(set(pad)) != 1 or dil != [1, 1] or pad[0] >= kh:
        return None
    try:
        w = Window(k=kh, C=C, ifm_h=H, ifm_w=W, stride=stride[0], pad=pad[0])
    except ValueError:
        return None
    return w if (w.ofm_h, w.ofm_w) == (OH, OW) else None


def _layer(g: _Graph, op, notes: list[str]) -> tuple[dict, str | None]:
    """The Layer keyword arguments for ``op`` (without ``out_bits``) and the accumulator
    tensor whose stage follows; raises ``ValueError`` (one line) for what cannot be mapped."""
    where = f"op '{op.name}' ({op.op})"
    if op.op == "conv2d":
        x, wname = op.inputs[0], op.inputs[1]
        xs, ws, ys = g.shape(x), g.shape(wname), g.shape(op.outputs[0])
        if len(xs) != 4 or len(ws) != 4 or len(ys) != 4:
            raise ValueError(f"{where}: expected NCHW input/output and (OC, C/groups, KH, KW) weights")
        _, C, H, W = xs
        OC, Cg, KH, KW = ws
        _, _, OH, OW = ys
        groups = int(op.attrs.get("groups", 1))
        wt = _code_type(op.attrs.get("w_type"), f"{where} w_type")
        at = _code_type(op.attrs.get("x_type"), f"{where} x_type")
        AB, a_signed = _act(at, op.name, notes)
        lanes = 2 if two_lanes_per_tap(op) else 1  # bipolar padding: two lanes per tap (module docstring)
        kw_ = dict(name=op.name, MH=int(OC), MW=int(lanes * Cg * KH * KW), vectors=int(OH * OW),
                   WB=_weight_bits(wt), AB=AB, a_signed=a_signed, mode=_mode(wt, at))
        win = None
        if groups == 1:
            win = _window(op.attrs, int(KH), int(KW), int(lanes * C), int(H), int(W), int(OH), int(OW))
        if lanes == 2:
            notes.append(f"{op.name}: bipolar input with padding: two lanes per tap (padded taps contribute 0, "
                         f"§11), MW = 2·(C/groups)·KH·KW = 2·{Cg}·{KH}·{KW} = {2 * Cg * KH * KW}: a real tap a is "
                         "the lane pair (a, a), a padded tap (+1, -1), against weights (w, w), so the MVAU "
                         "accumulates 2·acc against thresholds 2·T; the HLS Conv2d masks padded taps itself "
                         "and is emitted with SIMD/2 lanes (the same cycles when SIMD is even)"
                         + (f"; the window is costed on the channel-duplicated map (C = 2·{C} = {2 * C})"
                            if win is not None else ""))
        if groups == 1:
            if win is None:
                notes.append(f"{op.name}: {KH}x{KW} kernel, stride {op.attrs.get('stride')}, pad "
                             f"{op.attrs.get('pad')}, dilation {op.attrs.get('dilation')}: no sliding-window "
                             "model for this geometry (square kernel, equal strides, one symmetric pad, no "
                             "dilation); the SWU is not costed")
            kw_["window"] = win
        else:
            notes.append(f"{op.name}: grouped conv (groups = {groups}) mapped VVAU-style: MH = OC = {OC}, "
                         f"MW = {'2·' if lanes == 2 else ''}(C/groups)·KH·KW = {lanes * Cg * KH * KW}, "
                         f"vectors = OH·OW = {OH * OW}; products, cycles "
                         "and weight memories are exact for this mapping, the per-group input routing and the "
                         "SWU are not costed")
        return kw_, op.outputs[0]
    if op.op == "matmul":
        a, wname = op.inputs[0], op.inputs[1]
        if wname not in g.ir.constants:
            raise ValueError(f"{where}: both operands are activations (e.g. attention); the dataflow model "
                             "covers matmuls with constant weights")
        as_, ws = g.shape(a), g.shape(wname)
        if len(ws) != 2 or len(as_) < 2:
            raise ValueError(f"{where}: expected (batch, ..., K) activations and (K, N) weights")
        wt = _code_type(op.attrs.get("w_type"), f"{where} w_type")
        at = _code_type(op.attrs.get("a_type"), f"{where} a_type")
        AB, a_signed = _act(at, op.name, notes)
        return dict(name=op.name, MH=int(ws[1]), MW=int(ws[0]), vectors=int(math.prod(as_[1:-1])),
                    WB=_weight_bits(wt), AB=AB, a_signed=a_signed, mode=_mode(wt, at)), op.outputs[0]
    # xnor_popcount(a_bits, w_bits, K): packed bipolar rows, K from the attributes
    a, wname = op.inputs[0], op.inputs[1]
    if wname not in g.ir.constants:
        raise ValueError(f"{where}: the packed weights are not a constant")
    K = int(op.attrs.get("K", 0))
    if K < 1:
        raise ValueError(f"{where}: attribute K (bits per row) missing")
    return dict(name=op.name, MH=int(g.shape(wname)[0]), MW=K, vectors=int(math.prod(g.shape(a)[1:-1])),
                WB=1, AB=1, a_signed=True, mode="binary"), op.outputs[0]


def _sparse_blocks(g: _Graph, op, notes: list[str]) -> Sparse:
    """The block sparsity of an op that ``mark_sparse`` marked (``attrs["sparse"]``): its
    constant weight in pruning's ``[OC, K]`` view (matmul ``w.T``, conv2d
    ``w.reshape(OC, -1)``), packed as the emitter packs it (``hls.sparse.pack_sparse``)."""
    from codesign.hls.sparse import pack_sparse

    sp = op.attrs["sparse"]
    w = np.asarray(g.ir.constants[op.inputs[1]].values)
    mat = w.T if op.op == "matmul" else w.reshape(w.shape[0], -1)
    pk = pack_sparse(mat, int(sp["pe"]), int(sp["simd"]))
    notes.append(f"{op.name}: block-sparse, {pk.nb} of {pk.row_groups * pk.col_groups} blocks of "
                 f"{pk.pe} x {pk.simd} stored ({pk.empty_row_groups} empty row groups): folded as its blocks, "
                 f"max(SF, {pk.nb + pk.empty_row_groups}) cycles per vector (mvau_sparse.v)")
    return Sparse(pe=pk.pe, simd=pk.simd, nb=pk.nb, ne=pk.empty_row_groups)


def _reason(op, wide: dict[str, str]) -> str:
    if op.name in wide:
        return wide[op.name]
    if getattr(op, "target", "accel") == "host":
        return "host op (ARM): not part of the dataflow"
    if op.op in _PASS_OPS or op.op in ("concat", "gather"):
        return "structural op (moves codes): not costed by the dataflow model"
    if op.op in STAGE_OPS:
        return f"{op.op} not fed by a conv2d/matmul accumulator: no MVAU to fold it into"
    return f"no {op.op} unit in the dataflow model"


def _attach_pool(g: _Graph, op, out: DataflowMapping, used: dict[str, str]) -> str | None:
    """Attach pool ``op`` (``maxpool2d``: pool.v, ``Pool(mode="max")``; ``avgpool2d``:
    avgpool.v, ``Pool(mode="avg", out_bits=<out_type bits>, in_signed=<in_type signed>)``) to
    the layer whose output codes it pools (module docstring); returns None on success, else
    the one-line reason it is not modelled (prefixed by the op kind)."""
    producer = {t: o for o in g.ir.ops for t in o.outputs}
    t = op.inputs[0]
    unit = "avgpool.v" if op.op == "avgpool2d" else "pool.v"
    while True:
        src = producer.get(t)
        if src is None:
            return f"{op.op} of a graph input: no layer to attach the pool unit to"
        if len(g.consumers.get(t, [])) != 1:
            return f"{op.op} input {t} has several consumers: the pool unit takes a layer's only output stream"
        if src.name in used:
            break
        if src.op in _PASS_OPS and len(src.outputs) == 1:
            t = src.inputs[0]
            continue
        return f"{op.op} fed by {src.op} {src.name}, not by a conv2d/matmul layer's output stage"
    idx = next(i for i, m in enumerate(out.layers) if m.op == used[src.name])
    m = out.layers[idx]
    L = m.layer
    if m.stage is None or src.name != m.stage or L.out_bits == 0:
        return f"{op.op} of {m.op}'s accumulators: the pool unit takes codes of 1..8 bits (a threshold stage)"
    if L.pool is not None:
        return f"{m.op} already feeds pool {m.pool}"
    k = [int(v) for v in op.attrs.get("kernel", [])]
    st = [int(v) for v in op.attrs.get("stride", k)]
    pd = [int(v) for v in op.attrs.get("pad", [0, 0])]
    if op.op == "avgpool2d" and len(k) == 2 and k[0] != k[1]:
        return f"{op.op} kernel {k} (e.g. global pooling of a non-square map): avgpool.v's window is square"
    if len(k) != 2 or k[0] != k[1] or st[0] != st[1] or pd[0] != pd[1]:
        return f"{op.op} kernel {k}, stride {st}, pad {pd}: {unit} takes a square window, equal strides, one pad"
    xs = g.shape(op.inputs[0])
    if len(xs) != 4:
        return f"{op.op} input shape {xs}: expected NCHW"
    _, C, H, W = (int(v) for v in xs)
    kw: dict[str, Any] = {}
    if op.op == "avgpool2d":
        M, sh = int(op.attrs["M"]), int(op.attrs["sh"])
        if not (0 <= M < 1 << 24 and 0 <= sh <= 62):
            return f"{op.op} M={M}, sh={sh}: avgpool.v takes a 24-bit unsigned M and a shift of 0..62"
        kw = dict(mode="avg", out_bits=_code_type(op.attrs.get("out_type"), f"op '{op.name}' out_type").bits,
                  in_signed=_code_type(op.attrs.get("in_type"), f"op '{op.name}' in_type").signed)
    try:
        pool = Pool(op.name, C=C, ifm_h=H, ifm_w=W, k=k[0], stride=st[0], pad=pd[0], bits=L.out_bits, **kw)
        layer = replace(L, pool=pool)
    except ValueError as e:
        return str(e).splitlines()[0]
    out.layers[idx] = replace(m, layer=layer, pool=op.name)
    used[op.name] = m.op
    return None


def map_ir(ir) -> DataflowMapping:
    """Map ``ir`` (an :class:`~codesign.accel.ir.IR`, or any object with ``ops``,
    ``tensors`` and ``constants`` alike) onto dataflow layers (module docstring). Never
    raises for an op it cannot map: such ops go to ``not_modelled`` with the reason."""
    g = _Graph(ir)
    out = DataflowMapping()
    used: dict[str, str] = {}  # op name -> the layer it belongs to
    wide: dict[str, str] = {}  # output stages mvau.v cannot take -> why
    for op in ir.ops:
        if op.op not in LAYER_OPS or op.name in used:
            continue
        if getattr(op, "target", "accel") == "host":
            continue
        notes: list[str] = []
        try:
            kw, acc = _layer(g, op, notes)
            stage, passed = _stage(g, acc)
            rq = _requant_mode(g, op, kw, stage, notes) if stage is not None else None
            ob = rq["out_bits"] if rq is not None else _out_bits(g, stage, op.name, notes)
            if ob is None:  # a requant/threshold mvau.v cannot hold: the accumulator leaves the MVAU
                bits = (_code_type(stage.attrs["out_type"], stage.name).bits if stage.op == "requant"
                        else int(g.shape(stage.inputs[1])[-1]).bit_length())
                notes.append(f"{op.name}: its {stage.op} {stage.name} needs {bits}-bit outputs, more than mvau.v's "
                             f"{(1 << MAX_OUT_BITS) - 1} thresholds: the MVAU is costed with its accumulator as "
                             f"output (out_bits = 0), {stage.name} is not modelled")
                wide[stage.name] = (f"{stage.op} to {bits} bits after {op.name}: more than mvau.v's "
                                    f"{(1 << MAX_OUT_BITS) - 1} thresholds per channel")
                stage, passed, ob = None, [], 0
            if stage is None and len(op.inputs) > 2 and op.inputs[2] in ir.constants:
                notes.append(f"{op.name}: bias without a threshold stage: the bias add is not costed "
                             "(mvau.v folds biases into thresholds)")
            if "sparse" in op.attrs:
                kw["sparse"] = _sparse_blocks(g, op, notes)
            layer = Layer(**kw, **rq) if rq is not None else Layer(**kw, out_bits=ob)
        except ValueError as e:
            out.not_modelled.append({"name": op.name, "op": op.op, "target": getattr(op, "target", "accel"),
                                     "reason": str(e).splitlines()[0]})
            continue
        except (KeyError, IndexError, TypeError) as e:  # a malformed op: reported, never fatal to a build
            out.not_modelled.append({"name": op.name, "op": op.op, "target": getattr(op, "target", "accel"),
                                     "reason": f"cannot be mapped ({type(e).__name__}: {e})".splitlines()[0]})
            continue
        if stage is not None and stage.op == "requant" and not layer.requant:
            notes.append(f"{op.name}: its requant {stage.name} to {ob} bits is costed as 2^{ob} - 1 = "
                         f"{(1 << ob) - 1} thresholds per channel (FINN style; mvau.v has thresholds, no "
                         "multiplier-shift requantizer)")
        out.notes.extend(notes)
        used[op.name] = op.name
        if stage is not None:
            used[stage.name] = op.name
        out.layers.append(MappedLayer(layer=layer, op=op.name, kind=op.op, onnx_name=tuple(op.onnx_name or ()),
                                      stage=None if stage is None else stage.name,
                                      stage_kind=None if stage is None else stage.op,
                                      between=tuple(p.name for p in passed)))
    for op in ir.ops:
        if op.op in POOL_OPS and getattr(op, "target", "accel") != "host" and op.name not in used:
            try:
                why = _attach_pool(g, op, out, used)
            except (KeyError, IndexError, TypeError, ValueError) as e:  # malformed: reported, never fatal
                why = f"cannot be mapped ({type(e).__name__}: {e})".splitlines()[0]
            if why is not None:
                wide[op.name] = why
    failed = {d["name"] for d in out.not_modelled}
    rest = [{"name": op.name, "op": op.op, "target": getattr(op, "target", "accel"), "reason": _reason(op, wide)}
            for op in ir.ops if op.name not in used and op.name not in failed]
    order = {op.name: i for i, op in enumerate(ir.ops)}
    out.not_modelled = sorted(out.not_modelled + rest, key=lambda d: order[d["name"]])
    return out


def layers_from_ir(ir) -> list[Layer]:
    """The dataflow's MVAU layers of ``ir``, in IR op order (:func:`map_ir`'s ``layers``),
    without the pool units :func:`map_ir` attaches (``pool = None``)."""
    return [replace(m.layer, pool=None) for m in map_ir(ir).layers]
