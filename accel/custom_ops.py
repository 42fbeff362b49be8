"""codesign's integer ops as QONNX custom ops (domain ``codesign.accel.custom_ops``).

The integer requantization, softmax, LayerNorm, lookup table and residual add of the
arithmetic contract (``docs/arithmetic.md`` §3-§7) as qonnx ``CustomOp`` subclasses, so
that a QONNX graph states them exactly: ``qonnx.core.onnx_exec.execute_onnx`` runs each
node through :mod:`codesign.sim.reference` and reproduces the integer result bit for bit.
``docs/qonnx_ops.md`` documents every op, its attributes and the exactness argument.

Registration. qonnx 1.0 resolves a custom node by its ``domain``: it imports the domain
string as a Python module (``importlib.import_module(domain)``) and looks the node's
``op_type`` up among the classes listed in that module's ``__all__``. The domain of these
ops is therefore this module's own import path, ``codesign.accel.custom_ops``, and a graph
that uses them executes in any process where codesign is installed, without an explicit
import. Importing the module also registers the classes directly
(``qonnx.custom_op.registry.add_op_to_domain``), so lookups never depend on the lazy
discovery.

Tensors between nodes carry dequantized float values ``fl32(code * scale)``, as after a
QONNX ``Quant`` node. Each op recovers the integer codes of its inputs exactly (or raises
``ValueError`` naming the node), calls the reference function and writes
``fl32(code * out_scale)`` (float32).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
from onnx import NodeProto, TensorProto, helper

from qonnx.core.datatype import DataType
from qonnx.custom_op.base import CustomOp
from qonnx.custom_op.registry import add_op_to_domain

from codesign.sim import reference as ref
from codesign.sim.reference import IntType

__all__ = [
    # op classes (qonnx discovers them through __all__)
    "Requant", "IntSoftmax", "IntLayerNorm", "IntLUT", "IntAdd", "IntMatMul",
    # constants and helpers
    "DOMAIN", "OPSET_VERSION", "OPS", "CodesignNode", "opset_import", "add_opset_import",
    "recover_codes", "requant_params",
    "make_requant_node", "make_softmax_node", "make_layernorm_node", "make_lut_node", "make_add_node",
    "make_intmatmul_node",
]

DOMAIN = "codesign.accel.custom_ops"
"""ONNX domain of every op here; also the module qonnx imports to resolve it."""

OPSET_VERSION = 1
"""Opset version of :data:`DOMAIN` (classes without a ``_vN`` suffix are version 1)."""

# Largest |code| recoverable from a float tensor of the given dtype (see recover_codes).
_RECOVER_LIMIT = {np.dtype(np.float32): 1 << 23, np.dtype(np.float64): 1 << 51}


def recover_codes(x, scale, what: str = "input") -> np.ndarray:
    """Integer codes ``c`` with ``x == fl(c * scale)`` exactly, as int64; ``ValueError`` otherwise.

    * float32 ``x``: ``scale`` must be representable in float32; ``c = rint(x / scale)``
      (division in float64) and ``fl32(fl32(c) * scale) == x`` is checked element by
      element. The recovery is exact and unique for ``|c| < 2^23``: if ``x = fl32(c*s)``
      then ``x/s = c(1 + d)`` with ``|d| <= 2^-24 + 2^-52``, so ``|x/s - c| < 1/2``.
      Larger codes are rejected (two codes can then map to the same float32), and so
      are subnormal scales (the bound assumes ``c * s`` does not underflow).
    * float64 ``x``: the same in float64, for ``|c| < 2^51`` (covers the contract's
      48-bit accumulators).
    * integer ``x`` (int32, int64, ...): the values are the codes; ``scale`` must be 1.

    ``scale`` broadcasts against ``x`` (per tensor or per channel).
    """
    x = np.asarray(x)
    s = np.asarray(scale)
    if s.size == 0 or s.dtype.kind not in "fiu" or not np.all(np.isfinite(s)) or np.any(s <= 0):
        raise ValueError(f"{what}: scale must be finite and > 0, got {s.ravel()[:4].tolist()}")
    try:
        full = np.broadcast_shapes(x.shape, s.shape)
    except ValueError:
        full = None
    if full != x.shape:
        raise ValueError(f"{what}: scale shape {s.shape} does not broadcast to shape {x.shape}")
    if x.dtype.kind in "iu":
        if not np.all(s == 1):
            raise ValueError(f"{what}: an integer tensor ({x.dtype}) holds the codes themselves, "
                             f"its scale must be 1, got {s.ravel()[:4].tolist()}")
        if x.dtype == np.uint64 and x.size and int(x.max()) >= 1 << 63:
            raise ValueError(f"{what}: uint64 values beyond int64")
        return x.astype(np.int64)
    if x.dtype not in _RECOVER_LIMIT:
        raise ValueError(f"{what}: dtype {x.dtype} not supported (float32, float64 or an integer type)")
    ft = x.dtype.type
    if x.size and not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: contains NaN or infinity")
    sf = s.astype(ft)
    if not np.all(sf.astype(np.float64) == s.astype(np.float64)):
        raise ValueError(f"{what}: scale {s.ravel()[:4].tolist()} is not representable in {x.dtype}")
    if np.any(sf < np.finfo(ft).tiny):  # |c * s| >= s is then normal: no underflow in the argument
        raise ValueError(f"{what}: subnormal scale {float(sf.min())!r} not supported for {x.dtype}")
    q = np.rint(x.astype(np.float64) / sf.astype(np.float64))
    lim = _RECOVER_LIMIT[x.dtype]
    if q.size and np.abs(q).max() >= lim:
        raise ValueError(f"{what}: codes up to {int(np.abs(q).max())} reach 2^{lim.bit_length() - 1}: "
                         f"not recoverable exactly from {x.dtype} (use float64, |code| < 2^51, "
                         f"or an integer tensor at scale 1)")
    back = np.multiply(q.astype(ft), sf, dtype=ft)
    bad = back != x
    if np.any(bad):
        i = tuple(int(v) for v in np.argwhere(bad)[0])
        sv = np.broadcast_to(sf, x.shape)[i] if sf.ndim else sf
        raise ValueError(f"{what}: values are not integer multiples of the scale: {what}{list(i)} = "
                         f"{float(x[i])!r} at scale {float(sv)!r} (nearest code {int(q[i])} gives "
                         f"{float(back[i])!r}); {int(bad.sum())} of {x.size} values differ")
    return q.astype(np.int64)


def _qonnx_datatype(t: IntType, scale: float):
    """Output annotation, as qonnx's own Quant: an integer type at scale 1, else SCALEDINT<bits>."""
    if float(scale) != 1.0:
        return DataType[f"SCALEDINT<{t.bits}>"]
    if t.bits == 1:
        return DataType["BIPOLAR"] if t.signed else DataType["BINARY"]
    return DataType[f"{'INT' if t.signed else 'UINT'}{t.bits}"]


_BOOL = {0, 1}


class _IntOp(CustomOp):
    """Shared machinery: attribute access, code recovery, errors naming the node."""

    #: (minimum, maximum) number of inputs
    n_inputs: tuple[int, int] = (1, 1)
    #: names of the inputs, for messages
    input_roles: tuple[str, ...] = ("x",)

    # -- errors ------------------------------------------------------------------------
    def _where(self) -> str:
        n = self.onnx_node
        out = n.output[0] if len(n.output) else "?"
        return f"{n.op_type} node {n.name!r} (output {out!r})"

    def _fail(self, msg: str) -> ValueError:
        return ValueError(f"{self._where()}: {msg}")

    def _attr(self, name: str):
        try:
            return self.get_nodeattr(name)
        except Exception as e:  # missing required attribute, value not in allowed set, ...
            raise self._fail(f"attribute {name!r}: {e}".replace("\n", " ")) from None

    def _type(self, prefix: str) -> IntType:
        bits = self._attr(f"{prefix}_bits")
        signed = bool(self._attr(f"{prefix}_signed"))
        narrow = bool(self._attr(f"{prefix}_narrow")) if f"{prefix}_narrow" in self.get_nodeattr_types() else False
        try:
            return IntType(int(bits), signed, narrow)
        except ValueError as e:
            raise self._fail(str(e)) from None

    def _scale(self, name: str) -> np.float32:
        s = self._attr(name)
        s32 = np.float32(s)
        if not (np.isfinite(s32) and s32 > 0):
            raise self._fail(f"attribute {name!r} = {s!r} must be a finite float32 > 0")
        return s32

    def _ref(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            raise self._fail(str(e)) from None

    def _recover(self, x, scale, what: str) -> np.ndarray:
        try:
            return recover_codes(x, scale, what)
        except ValueError as e:
            raise self._fail(str(e)) from None

    def _inputs(self, context) -> list:
        n = self.onnx_node
        lo, hi = self.n_inputs
        if not lo <= len(n.input) <= hi:
            raise self._fail(f"takes {lo}..{hi} inputs ({', '.join(self.input_roles)}), got {len(n.input)}")
        return [context[name] if name else None for name in n.input]

    def _emit(self, context, codes: np.ndarray, scale) -> None:
        y = ref.dequantize(codes, scale)  # fl32(fl32(q) * s), §1 (codes of <= 16 bits)
        context[self.onnx_node.output[0]] = np.asarray(y, dtype=np.float32)

    # -- CustomOp interface --------------------------------------------------------------
    def _out_spec(self) -> tuple[IntType, float]:
        """(output type, output scale)."""
        return self._type("out"), float(self._scale("out_scale"))

    def _check_attrs(self) -> None:
        """Raise ValueError if attributes are missing or outside the contract."""
        self._out_spec()

    def make_shape_compatible_op(self, model) -> NodeProto:
        # every op here is elementwise/row-wise: the output has input 0's shape, float32
        return helper.make_node("Cast", [self.onnx_node.input[0]], [self.onnx_node.output[0]],
                                to=int(TensorProto.FLOAT))

    def infer_node_datatype(self, model) -> None:
        t, s = self._out_spec()
        model.set_tensor_datatype(self.onnx_node.output[0], _qonnx_datatype(t, s))

    def verify_node(self) -> list[str]:
        """qonnx convention: a list of messages; problems are reported, not raised."""
        msgs = []
        n = self.onnx_node
        lo, hi = self.n_inputs
        if lo <= len(n.input) <= hi:
            msgs.append("The number of inputs is correct")
        else:
            msgs.append(f"{self._where()}: takes {lo}..{hi} inputs ({', '.join(self.input_roles)}), "
                        f"got {len(n.input)}")
        if len(n.output) == 1:
            msgs.append("The number of outputs is correct")
        else:
            msgs.append(f"{self._where()}: has exactly one output, got {len(n.output)}")
        if n.domain != DOMAIN:
            msgs.append(f"{self._where()}: domain {n.domain!r} is not {DOMAIN!r}")
        try:
            self._check_attrs()
            msgs.append("All necessary attributes exist and are valid")
        except ValueError as e:
            msgs.append(str(e))
        return msgs


# ---------------------------------------------------------------------------------------
# §3 requantization
# ---------------------------------------------------------------------------------------

class Requant(_IntOp):
    """§3: ``y = sat_Y(rshr(acc * M, sh))``; inputs ``acc, M, sh[, acc_scale]``.

    ``acc`` holds the accumulator as ``fl(acc_int * acc_scale)`` (float32 for
    ``|acc_int| < 2^23``, float64 for ``|acc_int| < 2^51``, i.e. every 48-bit accumulator)
    or the integer accumulator itself (integer dtype, ``acc_scale`` 1). ``acc_scale``
    (optional input, default 1) and ``M``/``sh`` broadcast per channel against ``acc``.
    """

    n_inputs = (3, 4)
    input_roles = ("acc", "M", "sh", "acc_scale")

    def get_nodeattr_types(self):
        return {
            "out_bits": ("i", True, 8),
            "out_signed": ("i", True, 1, _BOOL),
            "out_narrow": ("i", False, 0, _BOOL),
            "out_scale": ("f", True, 1.0),
            # declared accumulator width W_acc (0: the width of the actual values)
            "acc_bits": ("i", False, 0),
            # multiplier width m of the dyadic form (§3)
            "m": ("i", False, 16),
        }

    def _check_attrs(self) -> None:
        t, _ = self._out_spec()
        if not 2 <= t.bits <= 16:
            raise self._fail(f"out_bits={t.bits} not supported (2..16, §3)")
        acc_bits, m = int(self._attr("acc_bits")), int(self._attr("m"))
        if not 0 <= acc_bits <= 48:
            raise self._fail(f"acc_bits={acc_bits} not supported (0 = from the values, or 1..48, §2)")
        if not 2 <= m <= 24:
            raise self._fail(f"m={m} not supported (2..24, §3)")

    def execute_node(self, context, graph) -> None:
        self._check_attrs()
        acc, M, sh, acc_scale = (self._inputs(context) + [None])[:4]
        if acc_scale is None:
            acc_scale = np.float32(1.0)
        acc, M, sh, acc_scale = map(np.asarray, (acc, M, sh, acc_scale))
        try:
            full = np.broadcast_shapes(acc.shape, M.shape, sh.shape, acc_scale.shape)
        except ValueError:
            full = None
        if full != acc.shape:
            raise self._fail(f"M {M.shape}, sh {sh.shape} and acc_scale {acc_scale.shape} must broadcast "
                             f"to the accumulator's shape {acc.shape}")
        codes = self._recover(acc, acc_scale, "acc")
        t, s = self._out_spec()
        acc_bits = int(self._attr("acc_bits")) or None
        y = self._ref(ref.requant, codes, M, sh, t, acc_bits_max=acc_bits, m=int(self._attr("m")))
        self._emit(context, y, s)


# ---------------------------------------------------------------------------------------
# §5 integer softmax
# ---------------------------------------------------------------------------------------

class IntSoftmax(_IntOp):
    """§5: integer softmax over the last axis; inputs ``x[, table]``.

    Output: unsigned ``ob``-bit codes at scale ``2^-ob``. Without a ``table`` input the
    exp table is ``softmax_table(in_type, in_scale, eb)``.
    """

    n_inputs = (1, 2)
    input_roles = ("x", "table")

    def get_nodeattr_types(self):
        return {
            "in_bits": ("i", True, 8),
            "in_signed": ("i", True, 1, _BOOL),
            "in_scale": ("f", True, 1.0),
            "eb": ("i", False, 8),
            "ob": ("i", False, 8),
        }

    def _out_spec(self) -> tuple[IntType, float]:
        ob = int(self._attr("ob"))
        if not 1 <= ob <= 16:
            raise self._fail(f"ob={ob} not supported (1..16, §5)")
        return IntType(ob, False), float(np.ldexp(np.float32(1), -ob))

    def _check_attrs(self) -> None:
        self._out_spec()
        t = self._type("in")
        if not 2 <= t.bits <= 8:
            raise self._fail(f"in_bits={t.bits} not supported (2..8, §5)")
        eb = int(self._attr("eb"))
        if not 1 <= eb <= 16:
            raise self._fail(f"eb={eb} not supported (1..16, §5)")
        self._scale("in_scale")

    def execute_node(self, context, graph) -> None:
        self._check_attrs()
        x, table = (self._inputs(context) + [None])[:2]
        t, s_x = self._type("in"), self._scale("in_scale")
        eb, ob = int(self._attr("eb")), int(self._attr("ob"))
        q = self._recover(x, s_x, "x")
        if table is None:
            table = self._ref(ref.softmax_table, t, float(s_x), eb)
        y = self._ref(ref.softmax, q, table, t, eb=eb, ob=ob)
        self._emit(context, y, self._out_spec()[1])


# ---------------------------------------------------------------------------------------
# §6 integer LayerNorm
# ---------------------------------------------------------------------------------------

class IntLayerNorm(_IntOp):
    """§6: integer LayerNorm over the last axis of int16 codes; inputs ``x, G, B``."""

    n_inputs = (3, 3)
    input_roles = ("x", "G", "B")

    def get_nodeattr_types(self):
        return {
            "S": ("i", True, 16),
            "E": ("i", True, 0),
            "in_scale": ("f", True, 1.0),
            "out_bits": ("i", True, 8),
            "out_signed": ("i", True, 1, _BOOL),
            "out_narrow": ("i", False, 0, _BOOL),
            "out_scale": ("f", True, 1.0),
        }

    def _check_attrs(self) -> None:
        t, _ = self._out_spec()
        if not 2 <= t.bits <= 8:
            raise self._fail(f"out_bits={t.bits} not supported (2..8, §6)")
        S, E = int(self._attr("S")), int(self._attr("E"))
        if not 1 <= S <= 62:
            raise self._fail(f"S={S} not supported (1..62, §6)")
        if not 0 <= E < 1 << 40:
            raise self._fail(f"E={E} outside 0..2^40-1 (§6)")
        self._scale("in_scale")

    def execute_node(self, context, graph) -> None:
        self._check_attrs()
        x, G, B = self._inputs(context)
        q = self._recover(x, self._scale("in_scale"), "x")
        t, s = self._out_spec()
        params = ref.LayerNormParams(G=np.asarray(G), B=np.asarray(B), S=int(self._attr("S")),
                                     E=int(self._attr("E")))
        y = self._ref(ref.layernorm, q, params, t)
        self._emit(context, y, s)


# ---------------------------------------------------------------------------------------
# §4 lookup table
# ---------------------------------------------------------------------------------------

class IntLUT(_IntOp):
    """§4: ``y = table[idx(x)]``, the index being the input code's bit pattern; inputs ``x, table``.

    ``table`` holds ``2^in_bits`` codes of the output type (bipolar input: 2).
    ``function`` names the function the table was built from (informational).
    """

    n_inputs = (2, 2)
    input_roles = ("x", "table")

    def get_nodeattr_types(self):
        return {
            "in_bits": ("i", True, 8),
            "in_signed": ("i", True, 1, _BOOL),
            "in_narrow": ("i", False, 0, _BOOL),
            "in_scale": ("f", True, 1.0),
            "out_bits": ("i", True, 8),
            "out_signed": ("i", True, 1, _BOOL),
            "out_narrow": ("i", False, 0, _BOOL),
            "out_scale": ("f", True, 1.0),
            "function": ("s", False, ""),
        }

    def _check_attrs(self) -> None:
        t_in = self._type("in")
        t_out, _ = self._out_spec()
        if not 1 <= t_in.bits <= 8:
            raise self._fail(f"in_bits={t_in.bits} not supported (1..8, §4)")
        if not 1 <= t_out.bits <= 16:
            raise self._fail(f"out_bits={t_out.bits} not supported (1..16, §4)")
        self._scale("in_scale")

    def execute_node(self, context, graph) -> None:
        self._check_attrs()
        x, table = self._inputs(context)
        t_in = self._type("in")
        t_out, s = self._out_spec()
        table = np.asarray(table)
        n = 2 if t_in.bipolar else 1 << t_in.bits
        if table.shape != (n,):
            raise self._fail(f"table has shape {table.shape}, a {t_in} input needs ({n},) entries (§4)")
        if table.dtype.kind not in "iu" and not (table.dtype.kind == "f" and np.all(np.isfinite(table))
                                                 and np.all(table == np.rint(table))):
            raise self._fail(f"table must hold integer codes, got dtype {table.dtype}")
        tab = table.astype(np.int64)
        bad = (tab != 1) & (tab != -1) if t_out.bipolar else (tab < t_out.lo) | (tab > t_out.hi)
        if np.any(bad):
            i = int(np.argmax(bad))
            raise self._fail(f"table[{i}] = {int(tab[i])} is not a code of the output type {t_out}")
        q = self._recover(x, self._scale("in_scale"), "x")
        y = self._ref(ref.lut, q, tab, t_in)
        self._emit(context, y, s)


# ---------------------------------------------------------------------------------------
# §7 residual add
# ---------------------------------------------------------------------------------------

class IntAdd(_IntOp):
    """§7: ``y = sat_Y(rshr(a * Ma + b * Mb, sh))``; inputs ``a, b`` (broadcasting)."""

    n_inputs = (2, 2)
    input_roles = ("a", "b")

    def get_nodeattr_types(self):
        attrs = {
            "Ma": ("i", True, 0),
            "Mb": ("i", True, 0),
            "sh": ("i", True, 1),
        }
        for p in ("a", "b", "out"):
            attrs.update({
                f"{p}_bits": ("i", True, 8),
                f"{p}_signed": ("i", True, 1, _BOOL),
                f"{p}_narrow": ("i", False, 0, _BOOL),
                f"{p}_scale": ("f", True, 1.0),
            })
        return attrs

    def make_shape_compatible_op(self, model) -> NodeProto:
        n = self.onnx_node
        return helper.make_node("Add", [n.input[0], n.input[1]], [n.output[0]])

    def _check_attrs(self) -> None:
        for p in ("a", "b", "out"):
            t = self._type(p)
            if not 2 <= t.bits <= 16:
                raise self._fail(f"{p}_bits={t.bits} not supported (2..16, §7)")
            self._scale(f"{p}_scale")
        Ma, Mb, sh = (int(self._attr(k)) for k in ("Ma", "Mb", "sh"))
        if not (0 <= Ma < 1 << 24 and 0 <= Mb < 1 << 24):
            raise self._fail(f"Ma={Ma}, Mb={Mb} must lie in 0..2^24-1 (§7)")
        if not 1 <= sh <= 62:
            raise self._fail(f"sh={sh} not supported (1..62, §7)")

    def execute_node(self, context, graph) -> None:
        self._check_attrs()
        a, b = self._inputs(context)
        qa = self._recover(a, self._scale("a_scale"), "a")
        qb = self._recover(b, self._scale("b_scale"), "b")
        t, s = self._out_spec()
        y = self._ref(ref.add, qa, qb, int(self._attr("Ma")), int(self._attr("Mb")), int(self._attr("sh")),
                      self._type("a"), self._type("b"), t)
        self._emit(context, y, s)


# ---------------------------------------------------------------------------------------
# §2 integer matmul
# ---------------------------------------------------------------------------------------

class IntMatMul(_IntOp):
    """§2: ``acc = a @ w (+ bias)``, exact; inputs ``a, w[, bias]``.

    Output: the accumulator itself as a **float64** tensor of integer values (scale 1):
    exact for every accumulator the contract allows (at most 48 bits, ``|acc| < 2^47 <
    2^53``), and read back exactly by ``Requant`` (float64, no ``acc_scale``). Its real scale
    is ``a_scale · w_scale`` (per tensor or per output channel), for the consumer to fold
    into its requantization multiplier.

    *Why not a float32 ``MatMul`` on dequantized values?* Its products and partial sums are
    rounded to 24-bit mantissas: with arbitrary scales every product ``a·s_a·w·s_w`` is
    rounded, and even at power-of-two scales an accumulator beyond ``2^24`` units (uint8 ×
    int8 with ``K = 4096`` needs 28 bits) is not representable, so the result depends on the
    summation order and is not the contract's integer; and a float32 tensor carries codes
    unambiguously only below ``2^23`` (BERT-base FFN2 needs 24 bits, §2). This op computes
    the integer sum with :func:`codesign.sim.reference.matmul` instead.

    * ``a`` (``(..., M, K)`` or ``(..., K)``): float values ``fl(code · a_scale)`` (codes
      recovered exactly by :func:`recover_codes`), or an integer tensor holding the codes.
    * ``w``: ``(K, N)`` or batched ``(..., K, N)``; an integer tensor of codes (constant
      weights, stored as an initializer), or float values ``fl(code · w_scale)`` (a runtime
      operand, e.g. ``Kᵀ`` in ``Q·Kᵀ``), recovered with ``w_scale``.
    * ``bias`` (optional): ``(N,)`` int32 codes at ``a_scale · w_scale`` (integer dtype, or
      floats holding integers).

    Attributes: ``a_bits``, ``a_signed``, ``a_narrow`` and ``a_scale`` (activation type,
    1–8 bits, signed, unsigned or bipolar); ``w_bits``, ``w_signed``, ``w_narrow`` (weight
    type, 1–8 bits, signed or bipolar) and ``w_scale`` (``floats``: one per-tensor scale,
    or ``N`` per-output-channel scales). For integer inputs the scales are the codes' real
    scales (informational); for float inputs they recover the codes.
    """

    n_inputs = (2, 3)
    input_roles = ("a", "w", "bias")

    def get_nodeattr_types(self):
        return {
            "a_bits": ("i", True, 8),
            "a_signed": ("i", True, 1, _BOOL),
            "a_narrow": ("i", False, 0, _BOOL),
            "a_scale": ("f", True, 1.0),
            "w_bits": ("i", True, 4),
            "w_signed": ("i", True, 1, _BOOL),
            "w_narrow": ("i", False, 0, _BOOL),
            "w_scale": ("floats", True, [1.0]),
        }

    def _w_scale(self) -> np.ndarray:
        s = np.asarray(self._attr("w_scale"), dtype=np.float32)
        if s.ndim != 1 or s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
            raise self._fail(f"attribute 'w_scale' = {s.ravel()[:4].tolist()} must be one or N "
                             f"finite float32 values > 0")
        return s

    def _check_attrs(self) -> None:
        ta, tw = self._type("a"), self._type("w")
        if not 1 <= ta.bits <= 8:
            raise self._fail(f"a_bits={ta.bits} not supported (1..8, §2)")
        if not 1 <= tw.bits <= 8:
            raise self._fail(f"w_bits={tw.bits} not supported (1..8, §2)")
        if not tw.signed:
            raise self._fail("the weight type must be signed or bipolar (§2)")
        self._scale("a_scale")
        self._w_scale()

    def _codes_of(self, x, scale, what: str) -> np.ndarray:
        x = np.asarray(x)
        if x.dtype.kind in "iu":
            return self._recover(x, np.int64(1), what)  # the codes themselves
        return self._recover(x, scale, what)

    def make_shape_compatible_op(self, model) -> NodeProto:
        # The output is float64 with MatMul's shape; no standard op takes a float activation
        # and integer weight codes, so a RandomNormal of the computed shape stands in.
        n = self.onnx_node
        a_shape = model.get_tensor_shape(n.input[0])
        w_shape = model.get_tensor_shape(n.input[1])
        ok = all(s is not None and len(s) >= 1 and all(isinstance(d, int) and d > 0 for d in s)
                 for s in (a_shape, w_shape))
        if not ok or len(w_shape) < 2:
            raise self._fail(f"shape inference needs static shapes of a ({a_shape}) and w ({w_shape}); "
                             f"set their value_info")
        if len(w_shape) == 2:
            out = list(a_shape[:-1]) + [w_shape[-1]]
        else:
            lead = np.broadcast_shapes(tuple(a_shape[:-2]), tuple(w_shape[:-2]))
            out = list(lead) + [a_shape[-2], w_shape[-1]]
        return helper.make_node("RandomNormal", [], [n.output[0]], mean=0.0, scale=1.0,
                                dtype=int(TensorProto.DOUBLE), shape=[int(d) for d in out])

    def acc_bits(self, model) -> int | None:
        """§2 accumulator width from K, the types and the bias constant (None if unknown)."""
        n = self.onnx_node
        w_shape = model.get_tensor_shape(n.input[1])
        if not w_shape or len(w_shape) < 2 or not isinstance(w_shape[-2], int) or w_shape[-2] < 1:
            return None
        lo = hi = 0
        if len(n.input) > 2 and n.input[2]:
            b = model.get_initializer(n.input[2])
            if b is None:
                lo, hi = -(2**31), 2**31 - 1
            elif b.size:
                lo, hi = min(int(b.min()), 0), max(int(b.max()), 0)
        try:
            return ref.acc_bits(int(w_shape[-2]), self._type("a"), self._type("w"), lo, hi)
        except ValueError:
            return None

    def infer_node_datatype(self, model) -> None:
        wacc = self.acc_bits(model)
        dt = DataType[f"INT{wacc}"] if wacc is not None and 2 <= wacc <= 48 else DataType["FLOAT32"]
        model.set_tensor_datatype(self.onnx_node.output[0], dt)

    def execute_node(self, context, graph) -> None:
        self._check_attrs()
        a, w, bias = (self._inputs(context) + [None])[:3]
        ta, tw = self._type("a"), self._type("w")
        qa = self._codes_of(a, self._scale("a_scale"), "a")
        w = np.asarray(w)
        if w.ndim < 2:
            raise self._fail(f"w must be (K, N) or batched (..., K, N), got shape {w.shape}")
        ws = self._w_scale()
        if ws.size not in (1, w.shape[-1]):
            raise self._fail(f"w_scale has {ws.size} values, need 1 or N={w.shape[-1]}")
        qw = self._codes_of(w, ws if ws.size > 1 else ws.reshape(()), "w")
        qb = None if bias is None else self._recover(np.asarray(bias), 1.0, "bias")  # codes at scale 1
        acc = self._ref(ref.matmul, qa, qw, qb, a_type=ta, w_type=tw)
        context[self.onnx_node.output[0]] = acc.astype(np.float64)  # exact: |acc| < 2^47


OPS: Mapping[str, type[CustomOp]] = {
    cls.__name__: cls for cls in (Requant, IntSoftmax, IntLayerNorm, IntLUT, IntAdd, IntMatMul)
}

for _cls in OPS.values():
    add_op_to_domain(DOMAIN, _cls)
del _cls


# ---------------------------------------------------------------------------------------
# helper constructors
# ---------------------------------------------------------------------------------------

@dataclass
class CodesignNode:
    """A node of :data:`DOMAIN` and the initializers it reads (name -> array)."""

    node: NodeProto
    initializers: dict[str, np.ndarray] = field(default_factory=dict)

    def initializer_protos(self) -> list[TensorProto]:
        from onnx import numpy_helper
        return [numpy_helper.from_array(np.asarray(v), name=k) for k, v in self.initializers.items()]

    def add_to(self, model) -> None:
        """Append the node and set its initializers on a qonnx ``ModelWrapper``.

        The node goes to the end of the graph: add nodes in topological order.
        """
        model.graph.node.append(self.node)
        for k, v in self.initializers.items():
            model.set_initializer(k, np.asarray(v))
        add_opset_import(model.model)


def opset_import():
    """The ``OperatorSetIdProto`` a model using these ops should list."""
    return helper.make_opsetid(DOMAIN, OPSET_VERSION)


def add_opset_import(model_proto) -> None:
    """Add :data:`DOMAIN` to a ``ModelProto``'s ``opset_import`` if missing."""
    if not any(o.domain == DOMAIN for o in model_proto.opset_import):
        model_proto.opset_import.append(opset_import())


def _t(t) -> IntType:
    return t if isinstance(t, IntType) else IntType(*t)


def _f32(name: str, v) -> float:
    s = np.float32(v)
    if not (np.isfinite(s) and s > 0):
        raise ValueError(f"{name}={v!r} must be a finite float32 > 0")
    return float(s)


def _tensor_input(node_name: str, role: str, value, inits: dict, dtype) -> str:
    """A tensor name for an input: ``value`` itself if it is a name, else a new initializer."""
    if isinstance(value, str):
        return value
    name = f"{node_name}_{role}"
    inits[name] = np.asarray(value, dtype=dtype)
    return name


def _type_attrs(prefix: str, t: IntType) -> dict:
    return {f"{prefix}_bits": int(t.bits), f"{prefix}_signed": int(t.signed), f"{prefix}_narrow": int(t.narrow)}


def requant_params(acc_scale, out_scale, m: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(M, sh) = dyadic(acc_scale / out_scale, m) (§3), in float64, per channel if acc_scale is."""
    r = np.asarray(acc_scale, dtype=np.float64) / np.float64(out_scale)
    return ref.dyadic(r, m)


def make_requant_node(acc: str, out: str, M, sh, out_type, out_scale: float = 1.0, acc_scale=None,
                      acc_bits: int = 0, m: int = 16, name: str | None = None) -> CodesignNode:
    """``Requant``: ``M``, ``sh`` (and ``acc_scale`` if given) are arrays (stored as
    initializers named ``<name>_M`` etc.) or names of existing tensors.

    ``acc_scale``: a Python float or a float32/integer array is stored as float32 (the
    contract's scales are float32); a float64 numpy array or ``np.float64`` stays float64,
    for float64 accumulators whose scale is not a float32. ``None``: no input (scale 1).
    """
    name = name or f"Requant_{out}"
    t = _t(out_type)
    inits: dict[str, np.ndarray] = {}
    inputs = [acc, _tensor_input(name, "M", M, inits, np.int64), _tensor_input(name, "sh", sh, inits, np.int64)]
    if acc_scale is not None:
        if not isinstance(acc_scale, str):
            # scales are float32 (§1); a float64 numpy value stays float64 (float64 accumulators)
            keep64 = type(acc_scale) is not float and np.asarray(acc_scale).dtype == np.float64
            acc_scale = np.asarray(acc_scale, dtype=np.float64 if keep64 else np.float32)
        inputs.append(_tensor_input(name, "acc_scale", acc_scale, inits, None))
    node = helper.make_node("Requant", inputs, [out], name=name, domain=DOMAIN,
                            **_type_attrs("out", t), out_scale=_f32("out_scale", out_scale),
                            acc_bits=int(acc_bits), m=int(m))
    return CodesignNode(node, inits)


def make_softmax_node(x: str, out: str, in_type, in_scale: float, eb: int = 8, ob: int = 8, table=None,
                      name: str | None = None) -> CodesignNode:
    """``IntSoftmax``: ``table=None`` stores ``softmax_table(in_type, fl32(in_scale), eb)``
    as an initializer; ``table=False`` omits the input (the op then computes that table)."""
    name = name or f"IntSoftmax_{out}"
    t = _t(in_type)
    s = _f32("in_scale", in_scale)
    inits: dict[str, np.ndarray] = {}
    inputs = [x]
    if table is None:
        table = ref.softmax_table(t, s, eb)
    if table is not False:
        inputs.append(_tensor_input(name, "table", table, inits, np.int64))
    node = helper.make_node("IntSoftmax", inputs, [out], name=name, domain=DOMAIN,
                            in_bits=int(t.bits), in_signed=int(t.signed), in_scale=s, eb=int(eb), ob=int(ob))
    return CodesignNode(node, inits)


def make_layernorm_node(x: str, out: str, in_scale: float, out_type, out_scale: float, params=None,
                        gamma=None, beta=None, eps: float = 1e-12, name: str | None = None) -> CodesignNode:
    """``IntLayerNorm``: from ``params`` (a ``LayerNormParams``) or from float ``gamma``,
    ``beta``, ``eps`` via ``layernorm_params`` (with the float32-rounded scales)."""
    name = name or f"IntLayerNorm_{out}"
    t = _t(out_type)
    s_x, s_y = _f32("in_scale", in_scale), _f32("out_scale", out_scale)
    if params is None:
        if gamma is None or beta is None:
            raise ValueError("make_layernorm_node: give params or gamma and beta")
        params = ref.layernorm_params(gamma, beta, eps, s_x, s_y)
    inits: dict[str, np.ndarray] = {}
    inputs = [x, _tensor_input(name, "G", params.G, inits, np.int64),
              _tensor_input(name, "B", params.B, inits, np.int64)]
    node = helper.make_node("IntLayerNorm", inputs, [out], name=name, domain=DOMAIN,
                            S=int(params.S), E=int(params.E), in_scale=s_x, **_type_attrs("out", t),
                            out_scale=s_y)
    return CodesignNode(node, inits)


def make_lut_node(x: str, out: str, in_type, in_scale: float, out_type, out_scale: float, table=None,
                  function: str | None = None, name: str | None = None) -> CodesignNode:
    """``IntLUT``: ``table`` given, or built by ``lut_table(function, ...)`` (e.g. ``"gelu"``)."""
    name = name or f"IntLUT_{out}"
    ti, to = _t(in_type), _t(out_type)
    s_x, s_y = _f32("in_scale", in_scale), _f32("out_scale", out_scale)
    if table is None:
        if function is None:
            raise ValueError("make_lut_node: give a table or a function name")
        table = ref.lut_table(function, ti, s_x, to, s_y)
    inits: dict[str, np.ndarray] = {}
    inputs = [x, _tensor_input(name, "table", table, inits, np.int64)]
    node = helper.make_node("IntLUT", inputs, [out], name=name, domain=DOMAIN,
                            **_type_attrs("in", ti), in_scale=s_x, **_type_attrs("out", to), out_scale=s_y,
                            function=function or "")
    return CodesignNode(node, inits)


def make_add_node(a: str, b: str, out: str, a_type, a_scale: float, b_type, b_scale: float, out_type,
                  out_scale: float, Ma: int | None = None, Mb: int | None = None, sh: int | None = None,
                  m: int = 16, name: str | None = None) -> CodesignNode:
    """``IntAdd``: ``Ma, Mb, sh`` given, or ``add_params`` of the float32-rounded scales."""
    name = name or f"IntAdd_{out}"
    ta, tb, ty = _t(a_type), _t(b_type), _t(out_type)
    sa, sb, sy = _f32("a_scale", a_scale), _f32("b_scale", b_scale), _f32("out_scale", out_scale)
    if Ma is None or Mb is None or sh is None:
        if not (Ma is None and Mb is None and sh is None):
            raise ValueError("make_add_node: give all of Ma, Mb, sh or none")
        Ma, Mb, sh = ref.add_params(sa, sb, sy, m)
    node = helper.make_node("IntAdd", [a, b], [out], name=name, domain=DOMAIN, Ma=int(Ma), Mb=int(Mb), sh=int(sh),
                            **_type_attrs("a", ta), a_scale=sa, **_type_attrs("b", tb), b_scale=sb,
                            **_type_attrs("out", ty), out_scale=sy)
    return CodesignNode(node, {})


def make_intmatmul_node(a: str, w, out: str, a_type, a_scale: float, w_type, w_scale=1.0, bias=None,
                        name: str | None = None) -> CodesignNode:
    """``IntMatMul``: ``w`` and ``bias`` are integer code arrays (stored as initializers
    ``<name>_W`` (int8) and ``<name>_bias`` (int32)) or names of existing tensors (``w`` then
    e.g. a runtime float tensor at ``w_scale``). ``w_scale``: a scalar or ``N`` per-channel
    scales (rounded to float32)."""
    name = name or f"IntMatMul_{out}"
    ta, tw = _t(a_type), _t(w_type)
    sa = _f32("a_scale", a_scale)
    ws = [_f32("w_scale", v) for v in np.asarray(w_scale, dtype=np.float64).ravel()]
    if not ws:
        raise ValueError("make_intmatmul_node: w_scale is empty")
    inits: dict[str, np.ndarray] = {}
    for role, v, dt, lo, hi in (("W", w, np.int8, -128, 127), ("bias", bias, np.int32, -(2**31), 2**31 - 1)):
        if v is None or isinstance(v, str):
            continue
        q = np.asarray(v)
        if q.dtype.kind not in "iu" and not (q.dtype.kind == "f" and np.all(q == np.rint(q))):
            raise ValueError(f"make_intmatmul_node: {role} must hold integer codes, got {q.dtype}")
        if q.size and (q.min() < lo or q.max() > hi):
            raise ValueError(f"make_intmatmul_node: {role} codes outside {np.dtype(dt).name}")
    inputs = [a, _tensor_input(name, "W", w, inits, np.int8)]
    if bias is not None:
        inputs.append(_tensor_input(name, "bias", bias, inits, np.int32))
    node = helper.make_node("IntMatMul", inputs, [out], name=name, domain=DOMAIN,
                            **_type_attrs("a", ta), a_scale=sa, **_type_attrs("w", tw), w_scale=ws)
    return CodesignNode(node, inits)
