"""codesign's integer IR: a readable, deterministic description of a lowered network.

The compiler (:mod:`codesign.accel.lower`) turns a QONNX graph into an :class:`IR`; the
numpy executor (:mod:`codesign.sim.run_ir`) runs it with the reference functions of the
arithmetic contract, and the HLS emitter consumes it. ``docs/ir.md`` is the format's
specification; this module is its only reader and writer.

On disk an IR is a folder with

* ``ir.json`` — everything, written with sorted keys, a stable op order, no timestamps and
  no absolute paths; floats are written by Python's ``repr`` so they read back exactly.
  The same IR always gives the same bytes.
* ``ir.npz`` — only when a constant has more than :data:`INLINE_MAX` elements: those
  constants' integer values, one array per constant (key = the constant's name), in the
  smallest numpy integer dtype that holds them. The zip is written with fixed entry dates,
  so it is byte-deterministic too, and ``numpy.load`` reads it. ``ir.json`` records each
  array's SHA-256 (of its int64 little-endian bytes), checked on load.

Imports numpy, the standard library and the contract's reference/registry only (never
onnx, qonnx or torch): the executor in ``codesign.sim`` uses it.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = [
    "FORMAT", "IR_JSON", "IR_NPZ", "INLINE_MAX", "STRUCTURAL_OPS", "CONTRACT_OPS", "TARGETS",
    "IRError", "CodeType", "Scale", "Tensor", "Constant", "Op", "Boundary", "IR",
    "save", "load", "dumps", "validate", "is_safe_id",
]

FORMAT = "codesign-ir/1"
IR_JSON = "ir.json"
IR_NPZ = "ir.npz"
INLINE_MAX = 64
"""Constants with at most this many elements are written inline in ``ir.json``."""

STRUCTURAL_OPS = ("reshape", "transpose", "flatten", "concat", "gather", "identity")
"""Ops that move codes without changing them (type and scale pass through)."""

TARGETS = ("host", "accel")


def _contract_ops() -> tuple[str, ...]:
    from codesign.accel.ops import OPS
    return tuple(OPS)


CONTRACT_OPS = _contract_ops()
"""The arithmetic contract's ops (``codesign.accel.ops.OPS``)."""

_SAFE_ID = re.compile(r"[a-z][a-z0-9_]*")


def is_safe_id(name: object) -> bool:
    """``[a-z][a-z0-9_]*`` without ``__``: usable as a C++/Python identifier and a file name."""
    return isinstance(name, str) and bool(_SAFE_ID.fullmatch(name)) and "__" not in name


class IRError(ValueError):
    """An IR that breaks the format or the contract; the message names the op/tensor."""


# ---------------------------------------------------------------------------------------
# types and scales
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CodeType:
    """An integer code type (contract §0): ``bits`` wide, signed or not, optionally narrow.

    A 1-bit signed type is bipolar ({-1, +1}). Up to 64 bits, so that constants such as
    thresholds (``W_acc + 1`` bits) are described by the same class; the contract limits
    each op's operands further (checked by :func:`validate`).
    """

    bits: int
    signed: bool = True
    narrow: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.bits, bool) or not isinstance(self.bits, (int, np.integer)) or not 1 <= self.bits <= 64:
            raise IRError(f"code type: bits={self.bits!r} not supported (1..64)")
        object.__setattr__(self, "bits", int(self.bits))
        object.__setattr__(self, "signed", bool(self.signed))
        object.__setattr__(self, "narrow", bool(self.narrow))

    @property
    def bipolar(self) -> bool:
        return self.bits == 1 and self.signed

    @property
    def lo(self) -> int:
        if self.bipolar:
            return -1
        if self.signed:
            return -(1 << (self.bits - 1)) + int(self.narrow)
        return 0

    @property
    def hi(self) -> int:
        if self.bipolar:
            return 1
        if self.signed:
            return (1 << (self.bits - 1)) - 1
        return (1 << self.bits) - 1 - int(self.narrow)

    def contains(self, other: "CodeType") -> bool:
        """Every code of ``other`` is a code of ``self``."""
        if self.bipolar:
            return other.bipolar
        return self.lo <= other.lo and other.hi <= self.hi

    def holds(self, values: np.ndarray) -> bool:
        v = np.asarray(values)
        if v.size == 0:
            return True
        if self.bipolar:
            return bool(np.all((v == 1) | (v == -1)))
        return int(v.min()) >= self.lo and int(v.max()) <= self.hi

    def width(self) -> int:
        """Two's-complement width that holds every code (e.g. 9 for uint8)."""
        return twos_complement_bits(self.lo, self.hi)

    def int_type(self):
        """The reference's :class:`~codesign.sim.reference.IntType` (bits <= 32)."""
        from codesign.sim.reference import IntType
        return IntType(self.bits, self.signed, self.narrow)

    @classmethod
    def smallest(cls, lo: int, hi: int, signed: bool | None = None) -> "CodeType":
        """The narrowest non-narrow type holding ``[lo, hi]`` (signed if ``lo < 0`` or asked)."""
        lo, hi = int(lo), int(hi)
        if signed is None:
            signed = lo < 0
        if signed:
            b = max(2, twos_complement_bits(lo, hi))
        else:
            if lo < 0:
                raise IRError(f"code type: [{lo}, {hi}] needs a signed type")
            b = max(1, hi.bit_length())
        return cls(b, signed)

    def __str__(self) -> str:
        if self.bipolar:
            return "bipolar"
        return f"{'int' if self.signed else 'uint'}{self.bits}{'n' if self.narrow else ''}"

    def to_json(self) -> dict:
        return {"bits": self.bits, "signed": self.signed, "narrow": self.narrow}

    @classmethod
    def from_json(cls, d: Any, where: str = "type") -> "CodeType":
        if isinstance(d, CodeType):
            return d
        if not isinstance(d, Mapping) or "bits" not in d or "signed" not in d:
            raise IRError(f"{where}: expected a code type {{bits, signed, narrow}}, got {d!r}")
        extra = set(d) - {"bits", "signed", "narrow"}
        if extra:
            raise IRError(f"{where}: unknown keys {sorted(extra)} in code type")
        if not isinstance(d["signed"], bool) or not isinstance(d.get("narrow", False), bool):
            raise IRError(f"{where}: 'signed' and 'narrow' must be booleans, got {d!r}")
        try:
            return cls(d["bits"], d["signed"], d.get("narrow", False))
        except IRError as e:
            raise IRError(f"{where}: {e}") from None


def twos_complement_bits(lo: int, hi: int) -> int:
    """Smallest two's-complement width whose range contains ``[lo, hi]``."""
    w = 1
    while not (-(1 << (w - 1)) <= lo and hi <= (1 << (w - 1)) - 1):
        w += 1
    return w


def _check_float(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)):
        raise IRError(f"{where}: expected a number, got {v!r}")
    f = float(v)
    if not (math.isfinite(f) and f > 0):
        raise IRError(f"{where}: scale must be finite and > 0, got {v!r}")
    return f


@dataclass(frozen=True)
class Scale:
    """A scale: one value per tensor, or one per channel along ``axis`` (of the full shape,
    batch axis 0 included). Values are Python floats, written with ``repr``."""

    values: tuple[float, ...]
    axis: int | None = None

    def __post_init__(self) -> None:
        vals = tuple(_check_float(v, "scale") for v in self.values)
        object.__setattr__(self, "values", vals)
        if not vals:
            raise IRError("scale: no values")
        if self.axis is None and len(vals) != 1:
            raise IRError(f"scale: {len(vals)} values need an axis")
        if self.axis is not None:
            if isinstance(self.axis, bool) or not isinstance(self.axis, (int, np.integer)) or self.axis < 1:
                raise IRError(f"scale: axis={self.axis!r} must be an integer >= 1 (axis 0 is the batch)")
            object.__setattr__(self, "axis", int(self.axis))

    @classmethod
    def scalar(cls, v: float) -> "Scale":
        return cls((float(v),))

    @classmethod
    def make(cls, values, axis: int | None = None) -> "Scale":
        """From an array: constant arrays collapse to a scalar scale."""
        a = np.asarray(values, dtype=np.float64).ravel()
        if a.size and np.all(a == a[0]):
            return cls.scalar(float(a[0]))
        return cls(tuple(float(x) for x in a), axis)

    @property
    def per_channel(self) -> bool:
        return self.axis is not None

    @property
    def value(self) -> float:
        if self.axis is not None:
            raise IRError("scale: per-channel scale has no single value")
        return self.values[0]

    def array(self, ndim: int, dtype=np.float64) -> np.ndarray:
        """Broadcastable array for a tensor of ``ndim`` axes (values along ``axis``)."""
        v = np.asarray(self.values, dtype=dtype)
        if self.axis is None:
            return v.reshape(())
        if self.axis >= ndim:
            raise IRError(f"scale: axis {self.axis} outside a {ndim}-d tensor")
        return v.reshape((-1,) + (1,) * (ndim - 1 - self.axis))

    def to_json(self) -> dict:
        if self.axis is None:
            return {"scale": self.values[0]}
        return {"scale": list(self.values), "axis": self.axis}

    @classmethod
    def from_json(cls, d: Mapping, where: str) -> "Scale":
        s = d.get("scale")
        if isinstance(s, list):
            if "axis" not in d:
                raise IRError(f"{where}: a per-channel scale needs an 'axis'")
            try:
                return cls(tuple(_check_float(v, where) for v in s), d["axis"])
            except IRError as e:
                raise IRError(f"{where}: {e}") from None
        if "axis" in d and d["axis"] is not None:
            raise IRError(f"{where}: 'axis' given with a scalar scale")
        return cls((_check_float(s, where),))


# ---------------------------------------------------------------------------------------
# tensors, constants, ops
# ---------------------------------------------------------------------------------------

KINDS = ("code", "acc", "float")


@dataclass
class Tensor:
    """A graph tensor: integer codes of ``type`` at ``scale`` (kind ``code``), an accumulator
    of ``acc_bits`` at ``scale`` (kind ``acc``), or float32 values (kind ``float``, graph
    boundaries only). ``shape`` includes the batch axis (axis 0)."""

    shape: tuple[int, ...]
    kind: str = "code"
    type: CodeType | None = None
    acc_bits: int | None = None
    scale: Scale | None = None

    def __post_init__(self) -> None:
        self.shape = tuple(int(d) for d in self.shape)
        if self.kind not in KINDS:
            raise IRError(f"tensor: kind {self.kind!r} not one of {KINDS}")
        if self.kind == "code" and (self.type is None or self.scale is None):
            raise IRError("tensor: a code tensor needs a type and a scale")
        if self.kind == "acc" and (self.acc_bits is None or self.scale is None):
            raise IRError("tensor: an accumulator needs acc_bits and a scale")

    @property
    def is_int(self) -> bool:
        return self.kind in ("code", "acc")

    def value_range(self) -> tuple[int, int]:
        """(lo, hi) of the integer values this tensor may hold."""
        if self.kind == "code":
            return self.type.lo, self.type.hi
        if self.kind == "acc":
            return -(1 << (self.acc_bits - 1)), (1 << (self.acc_bits - 1)) - 1
        raise IRError("tensor: a float tensor has no integer range")

    def int_width(self) -> int:
        """Two's-complement width of the values (acc_bits, or the code type's width)."""
        return self.acc_bits if self.kind == "acc" else self.type.width()

    def to_json(self) -> dict:
        d: dict[str, Any] = {"shape": list(self.shape)}
        if self.kind == "float":
            d["type"] = "float"
        elif self.kind == "acc":
            d["type"] = "acc"
            d["acc_bits"] = self.acc_bits
        else:
            d["type"] = self.type.to_json()
        if self.scale is not None:
            d.update(self.scale.to_json())
        return d

    @classmethod
    def from_json(cls, d: Mapping, where: str) -> "Tensor":
        extra = set(d) - {"shape", "type", "acc_bits", "scale", "axis"}
        if extra:
            raise IRError(f"{where}: unknown keys {sorted(extra)}")
        _shape(d.get("shape"), where)
        t = d.get("type")
        scale = Scale.from_json(d, where) if "scale" in d else None
        if t == "float":
            if scale is not None:
                raise IRError(f"{where}: a float tensor has no scale")
            return cls(d["shape"], "float")
        if t == "acc":
            ab = d.get("acc_bits")
            if isinstance(ab, bool) or not isinstance(ab, int) or not 1 <= ab <= 64:
                raise IRError(f"{where}: acc_bits={ab!r} must be an integer 1..64")
            if scale is None:
                raise IRError(f"{where}: an accumulator needs a scale")
            return cls(d["shape"], "acc", acc_bits=ab, scale=scale)
        if scale is None:
            raise IRError(f"{where}: a code tensor needs a scale")
        return cls(d["shape"], "code", type=CodeType.from_json(t, where), scale=scale)


def _shape(s: Any, where: str) -> tuple[int, ...]:
    if not isinstance(s, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in s):
        raise IRError(f"{where}: shape must be a list of non-negative integers, got {s!r}")
    return tuple(s)


def _sha256(values: np.ndarray) -> str:
    return hashlib.sha256(np.array(values, dtype="<i8", order="C").tobytes()).hexdigest()


def _storage_dtype(values: np.ndarray) -> np.dtype:
    lo, hi = (int(values.min()), int(values.max())) if values.size else (0, 0)
    for dt in (np.int8, np.int16, np.int32, np.int64):
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return np.dtype(dt)
    return np.dtype(np.int64)


@dataclass
class Constant:
    """Integer constant (weights, biases, multipliers, shifts, thresholds, tables)."""

    type: CodeType
    values: np.ndarray

    def __post_init__(self) -> None:
        v = np.asarray(self.values)
        if v.dtype.kind not in "iub":
            if v.dtype.kind == "f" and np.all(np.isfinite(v)) and np.all(v == np.rint(v)):
                v = v.astype(np.int64)
            else:
                raise IRError(f"constant: values must be integers, got dtype {v.dtype}")
        self.values = np.array(v, dtype=np.int64, order="C")  # (ascontiguousarray would make 0-d 1-d)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.values.shape)


_OP_KEYS = {"name", "onnx_name", "op", "inputs", "outputs", "attrs", "target"}


@dataclass
class Op:
    """One IR op. ``attrs`` are JSON values: the reference function's scalar parameters
    (code types as ``{bits, signed, narrow}``); array parameters are constants listed in
    ``inputs``."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    target: str = "accel"
    onnx_name: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"name": self.name, "onnx_name": list(self.onnx_name), "op": self.op, "inputs": list(self.inputs),
                "outputs": list(self.outputs), "attrs": _jsonable(self.attrs, f"op '{self.name}'"),
                "target": self.target}


@dataclass
class Boundary:
    """A graph input or output: the IR tensor ``name`` and the ONNX graph's name for it."""

    name: str
    onnx_name: str


@dataclass
class IR:
    model: str
    inputs: list[Boundary]
    outputs: list[Boundary]
    tensors: dict[str, Tensor]
    constants: dict[str, Constant]
    ops: list[Op]
    notes: list[str] = field(default_factory=list)

    def producer(self, tensor: str) -> Op | None:
        for op in self.ops:
            if tensor in op.outputs:
                return op
        return None

    def consumers(self, tensor: str) -> list[Op]:
        return [op for op in self.ops if tensor in op.inputs]

    def op(self, name: str) -> Op:
        for o in self.ops:
            if o.name == name:
                return o
        raise KeyError(name)


def _jsonable(v: Any, where: str) -> Any:
    """Plain JSON values: bool/int/float/str/list/dict; numpy scalars converted; floats finite."""
    if isinstance(v, CodeType):
        return v.to_json()
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        if not math.isfinite(f):
            raise IRError(f"{where}: non-finite number {v!r}")
        return f
    if isinstance(v, str):
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x, where) for x in v]
    if isinstance(v, Mapping):
        return {str(k): _jsonable(x, where) for k, x in v.items()}
    raise IRError(f"{where}: value {v!r} of type {type(v).__name__} is not JSON")


# ---------------------------------------------------------------------------------------
# JSON / files
# ---------------------------------------------------------------------------------------

def _boundary_json(ir: IR) -> tuple[list, list]:
    """Inputs/outputs with the derived details (quantizers, dequantizer) for readers."""
    ins = []
    for b in ir.inputs:
        t = ir.tensors.get(b.name)
        qs = []
        for op in ir.consumers(b.name):
            if op.op == "quantize":
                out = ir.tensors.get(op.outputs[0])
                q = {"op": op.name, "output": op.outputs[0], "rounding": op.attrs.get("rounding")}
                if out is not None and out.kind == "code":
                    q["type"] = out.type.to_json()
                    q.update(out.scale.to_json())
                qs.append(q)
        ins.append({"name": b.name, "onnx_name": b.onnx_name, "shape": list(t.shape) if t else None,
                    "type": "float", "quantizers": qs})
    outs = []
    for b in ir.outputs:
        t = ir.tensors.get(b.name)
        p = ir.producer(b.name)
        d: dict[str, Any] = {"name": b.name, "onnx_name": b.onnx_name, "shape": list(t.shape) if t else None,
                             "type": "float"}
        if p is not None and p.op == "dequantize":
            src = ir.tensors.get(p.inputs[0])
            dq: dict[str, Any] = {"op": p.name, "input": p.inputs[0]}
            if src is not None and src.scale is not None:
                dq["type"] = src.type.to_json() if src.kind == "code" else "acc"
                dq.update(src.scale.to_json())
            d["dequantizer"] = dq
        outs.append(d)
    return ins, outs


def to_json_dict(ir: IR) -> tuple[dict, dict[str, np.ndarray]]:
    """The ``ir.json`` document and the arrays that go to ``ir.npz``."""
    side: dict[str, np.ndarray] = {}
    consts = {}
    for name, c in ir.constants.items():
        d: dict[str, Any] = {"shape": list(c.shape), "type": c.type.to_json()}
        if c.values.size <= INLINE_MAX:
            d["values"] = c.values.tolist()
        else:
            d["file"] = IR_NPZ
            d["sha256"] = _sha256(c.values)
            side[name] = c.values
        consts[name] = d
    ins, outs = _boundary_json(ir)
    doc = {
        "format": FORMAT,
        "model": ir.model,
        "inputs": ins,
        "outputs": outs,
        "tensors": {k: t.to_json() for k, t in ir.tensors.items()},
        "constants": consts,
        "ops": [op.to_json() for op in ir.ops],
        "notes": list(ir.notes),
    }
    return doc, side


def _format(v: Any, indent: int) -> str:
    """JSON with sorted keys; objects and lists of containers one item per line, lists of
    plain values (shapes, small constants, scales) on one line."""
    pad, inner = " " * indent, " " * (indent + 1)
    if isinstance(v, dict):
        if not v:
            return "{}"
        if len(v) <= 4 and all(not isinstance(x, (dict, list)) for x in v.values()):
            return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)}: {_format(v[k], 0)}" for k in sorted(v)) + "}"
        items = [f"{inner}{json.dumps(k, ensure_ascii=False)}: {_format(v[k], indent + 1)}" for k in sorted(v)]
        return "{\n" + ",\n".join(items) + "\n" + pad + "}"
    if isinstance(v, list):
        if not v:
            return "[]"
        if all(not isinstance(x, (dict, list)) for x in v):
            return "[" + ", ".join(json.dumps(x, ensure_ascii=False, allow_nan=False) for x in v) + "]"
        return "[\n" + ",\n".join(inner + _format(x, indent + 1) for x in v) + "\n" + pad + "]"
    return json.dumps(v, ensure_ascii=False, allow_nan=False)


def dumps(ir: IR) -> str:
    """The text of ``ir.json``: sorted keys, floats by ``repr``, trailing newline."""
    doc, _ = to_json_dict(ir)
    return _format(doc, 0) + "\n"


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """A numpy-loadable .npz with fixed zip dates: byte-identical for identical arrays."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            a = np.asarray(arrays[name])
            a = a.astype(_storage_dtype(a).newbyteorder("<"))
            body = io.BytesIO()
            np.lib.format.write_array(body, np.array(a, order="C"), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            info.external_attr = 0o644 << 16
            zf.writestr(info, body.getvalue())
    path.write_bytes(buf.getvalue())


def save(ir: IR, directory: str | Path) -> Path:
    """Validate and write ``ir.json`` (and ``ir.npz`` if needed) into ``directory``.

    Returns the path of ``ir.json``. A stale ``ir.npz`` from an earlier save is removed
    when this IR needs none.
    """
    validate(ir)
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    doc, side = to_json_dict(ir)
    (d / IR_JSON).write_text(_format(doc, 0) + "\n", encoding="utf-8")
    npz = d / IR_NPZ
    if side:
        _write_npz(npz, side)
    elif npz.exists():
        npz.unlink()
    return d / IR_JSON


def _req(d: Mapping, key: str, where: str, types) -> Any:
    if key not in d:
        raise IRError(f"{where}: missing '{key}'")
    v = d[key]
    if not isinstance(v, types):
        raise IRError(f"{where}: '{key}' has the wrong type ({type(v).__name__})")
    return v


def from_json_dict(doc: Mapping, side: Mapping[str, np.ndarray] | None = None) -> IR:
    """Build an :class:`IR` from a parsed ``ir.json`` (and the ``ir.npz`` arrays)."""
    if not isinstance(doc, Mapping):
        raise IRError("ir.json: not a JSON object")
    if doc.get("format") != FORMAT:
        raise IRError(f"ir.json: format {doc.get('format')!r} is not {FORMAT!r}")
    model = _req(doc, "model", "ir.json", str)
    tensors = {}
    for k, v in _req(doc, "tensors", "ir.json", dict).items():
        if not isinstance(v, Mapping):
            raise IRError(f"tensor '{k}': not an object")
        tensors[k] = Tensor.from_json(v, f"tensor '{k}'")
    constants = {}
    for k, v in _req(doc, "constants", "ir.json", dict).items():
        where = f"constant '{k}'"
        if not isinstance(v, Mapping):
            raise IRError(f"{where}: not an object")
        shape = _shape(v.get("shape"), where)
        ctype = CodeType.from_json(v.get("type"), where)
        if "values" in v:
            vals = np.asarray(v["values"], dtype=object)
            try:
                arr = np.array(v["values"], dtype=np.int64) if vals.size else np.zeros(shape, np.int64)
            except (TypeError, ValueError, OverflowError):
                raise IRError(f"{where}: values must be integers") from None
            if vals.size and any(isinstance(x, bool) or not isinstance(x, int) for x in vals.ravel()):
                raise IRError(f"{where}: values must be integers")
        else:
            if v.get("file") != IR_NPZ:
                raise IRError(f"{where}: needs inline 'values' or file {IR_NPZ!r}")
            if side is None or k not in side:
                raise IRError(f"{where}: not found in {IR_NPZ}")
            arr = np.asarray(side[k])
            if arr.dtype.kind not in "iu":
                raise IRError(f"{where}: {IR_NPZ} holds dtype {arr.dtype}, not integers")
            arr = arr.astype(np.int64)
            if _sha256(arr) != v.get("sha256"):
                raise IRError(f"{where}: SHA-256 of the values in {IR_NPZ} does not match ir.json")
        if tuple(arr.shape) != shape:
            raise IRError(f"{where}: values have shape {tuple(arr.shape)}, declared {shape}")
        constants[k] = Constant(ctype, arr)
    ops = []
    for i, o in enumerate(_req(doc, "ops", "ir.json", list)):
        where = f"ops[{i}]"
        if not isinstance(o, Mapping):
            raise IRError(f"{where}: not an object")
        extra = set(o) - _OP_KEYS
        if extra:
            raise IRError(f"{where}: unknown keys {sorted(extra)}")
        name = _req(o, "name", where, str)
        where = f"op '{name}'"
        onnx_name = _req(o, "onnx_name", where, list)
        ins = _req(o, "inputs", where, list)
        outs = _req(o, "outputs", where, list)
        if not all(isinstance(x, str) for x in [*onnx_name, *ins, *outs]):
            raise IRError(f"{where}: names must be strings")
        ops.append(Op(name=name, op=_req(o, "op", where, str), inputs=list(ins), outputs=list(outs),
                      attrs=dict(_req(o, "attrs", where, dict)), target=_req(o, "target", where, str),
                      onnx_name=list(onnx_name)))

    def boundaries(key: str) -> list[Boundary]:
        out = []
        for i, b in enumerate(_req(doc, key, "ir.json", list)):
            if not isinstance(b, Mapping):
                raise IRError(f"{key}[{i}]: not an object")
            out.append(Boundary(_req(b, "name", f"{key}[{i}]", str), _req(b, "onnx_name", f"{key}[{i}]", str)))
        return out

    notes = doc.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(n, str) for n in notes):
        raise IRError("ir.json: 'notes' must be a list of strings")
    return IR(model=model, inputs=boundaries("inputs"), outputs=boundaries("outputs"), tensors=tensors,
              constants=constants, ops=ops, notes=list(notes))


def load(path: str | Path) -> IR:
    """Read and validate an IR folder (or its ``ir.json``)."""
    p = Path(path)
    if p.is_dir():
        p = p / IR_JSON
    try:
        doc = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IRError(f"cannot read '{p}': {' '.join(str(e).split())}") from None
    side = None
    npz = p.parent / IR_NPZ
    if npz.exists():
        try:
            with np.load(npz, allow_pickle=False) as z:
                side = {k: z[k] for k in z.files}
        except (OSError, ValueError, zipfile.BadZipFile) as e:
            raise IRError(f"cannot read '{npz}': {' '.join(str(e).split())}") from None
    ir = from_json_dict(doc, side)
    validate(ir)
    return ir


# ---------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------

def _err(op: Op, msg: str) -> IRError:
    return IRError(f"op '{op.name}' ({op.op}): {msg}")


def _attr(op: Op, key: str, kind, lo=None, hi=None):
    if key not in op.attrs:
        raise _err(op, f"missing attribute '{key}'")
    v = op.attrs[key]
    if kind is bool:
        if not isinstance(v, bool):
            raise _err(op, f"attribute '{key}'={v!r} must be a boolean")
        return v
    if kind is int:
        if isinstance(v, bool) or not isinstance(v, int):
            raise _err(op, f"attribute '{key}'={v!r} must be an integer")
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise _err(op, f"attribute '{key}'={v} outside {lo}..{hi}")
        return v
    if kind is CodeType:
        try:
            return CodeType.from_json(v, f"op '{op.name}' ({op.op}): attribute '{key}'")
        except IRError:
            raise
    if kind is str:
        if not isinstance(v, str):
            raise _err(op, f"attribute '{key}'={v!r} must be a string")
        return v
    if kind is list:
        if not isinstance(v, list) or any(isinstance(x, bool) or not isinstance(x, int) for x in v):
            raise _err(op, f"attribute '{key}'={v!r} must be a list of integers")
        return v
    raise AssertionError(kind)


def _bits_in(op: Op, what: str, t: CodeType, lo: int, hi: int, bipolar_ok: bool = True,
             unsigned1_ok: bool = True) -> None:
    if not lo <= t.bits <= hi:
        raise _err(op, f"{what} type {t} not supported ({lo}..{hi} bits)")
    if t.bipolar and not bipolar_ok:
        raise _err(op, f"{what} type bipolar not supported")
    if t.bits == 1 and not t.signed and not unsigned1_ok:
        raise _err(op, f"{what} type uint1 not supported (1-bit operands are bipolar)")


class _Ctx:
    def __init__(self, ir: IR) -> None:
        self.ir = ir
        self.defined: set[str] = set()

    def tensor(self, op: Op, name: str, kinds=("code", "acc", "float")) -> Tensor:
        t = self.ir.tensors.get(name)
        if t is None:
            raise _err(op, f"'{name}' is not a declared tensor")
        if t.kind not in kinds:
            raise _err(op, f"'{name}' is a {t.kind} tensor, expected {' or '.join(kinds)}")
        return t

    def const(self, op: Op, name: str) -> Constant:
        c = self.ir.constants.get(name)
        if c is None:
            raise _err(op, f"'{name}' is not a constant")
        return c

    def operand(self, op: Op, name: str) -> tuple[Tensor | None, Constant | None]:
        if name in self.ir.constants:
            return None, self.ir.constants[name]
        return self.tensor(op, name), None


def _n_io(op: Op, n_in: tuple[int, int], n_out: int = 1) -> None:
    if not n_in[0] <= len(op.inputs) <= n_in[1]:
        raise _err(op, f"takes {n_in[0]}..{n_in[1]} inputs, got {len(op.inputs)}")
    if len(op.outputs) != n_out:
        raise _err(op, f"has {n_out} output(s), got {len(op.outputs)}")


def _same_shape(op: Op, got: Sequence[int], want: Sequence[int], what: str = "output") -> None:
    if tuple(got) != tuple(want):
        raise _err(op, f"{what} shape {tuple(got)} does not match the expected {tuple(want)}")


def _broadcast_into(op: Op, what: str, shape: Sequence[int], target: Sequence[int]) -> None:
    try:
        full = np.broadcast_shapes(tuple(shape), tuple(target))
    except ValueError:
        full = None
    if full != tuple(target):
        raise _err(op, f"{what} of shape {tuple(shape)} does not broadcast to {tuple(target)}")


def _check_scale_axis(op: Op, s: Scale, shape: Sequence[int], what: str) -> None:
    if s.axis is not None:
        if s.axis >= len(shape) or shape[s.axis] != len(s.values):
            raise _err(op, f"{what}: {len(s.values)} per-channel scales along axis {s.axis} "
                           f"do not fit shape {tuple(shape)}")


def _v_quantize(c: _Ctx, op: Op) -> None:
    from codesign.sim.reference import ROUNDING_MODES
    _n_io(op, (1, 1))
    x = c.tensor(op, op.inputs[0], ("float",))
    y = c.tensor(op, op.outputs[0], ("code",))
    bits = _attr(op, "bits", int, 1, 16)
    t = CodeType(bits, _attr(op, "signed", bool), _attr(op, "narrow", bool))
    rounding = _attr(op, "rounding", str)
    if rounding.upper() not in ROUNDING_MODES:
        raise _err(op, f"rounding mode {rounding!r} not supported")
    s = Scale.from_json(op.attrs, f"op '{op.name}' ({op.op}): attribute 'scale'")
    _check_scale_axis(op, s, x.shape, "scale")
    if y.type != t:
        raise _err(op, f"output tensor type {y.type} differs from the quantizer's {t}")
    if y.scale != s:
        raise _err(op, "output tensor scale differs from the quantizer's scale")
    _same_shape(op, y.shape, x.shape)


def _v_dequantize(c: _Ctx, op: Op) -> None:
    _n_io(op, (1, 1))
    q = c.tensor(op, op.inputs[0], ("code", "acc"))
    y = c.tensor(op, op.outputs[0], ("float",))
    s = Scale.from_json(op.attrs, f"op '{op.name}' ({op.op}): attribute 'scale'")
    _check_scale_axis(op, s, q.shape, "scale")
    if s != q.scale:
        raise _err(op, f"scale differs from the scale of its input '{op.inputs[0]}'")
    _same_shape(op, y.shape, q.shape)


def _v_matmul(c: _Ctx, op: Op) -> None:
    from codesign.sim.reference import acc_bits as ref_acc_bits
    _n_io(op, (2, 3))
    a = c.tensor(op, op.inputs[0], ("code",))
    wt, wc = c.operand(op, op.inputs[1])
    a_type = _attr(op, "a_type", CodeType)
    w_type = _attr(op, "w_type", CodeType)
    acc = _attr(op, "acc_bits", int, 1, 48)
    _bits_in(op, "activation", a_type, 1, 8, unsigned1_ok=False)
    _bits_in(op, "weight", w_type, 1, 8)
    if not w_type.signed:
        raise _err(op, f"weight type {w_type} must be signed or bipolar (§2)")
    if not a_type.contains(a.type):
        raise _err(op, f"input '{op.inputs[0]}' of type {a.type} is not within a_type {a_type}")
    if wc is not None:
        if not w_type.holds(wc.values):
            raise _err(op, f"weight constant '{op.inputs[1]}' has values outside w_type {w_type}")
        w_shape = wc.shape
        if len(w_shape) != 2:
            raise _err(op, f"weight constant must be 2-D (K, N), got {w_shape}")
    else:
        if wt.kind != "code" or not w_type.contains(wt.type):
            raise _err(op, f"input '{op.inputs[1]}' is not a code tensor within w_type {w_type}")
        w_shape = wt.shape
        if len(w_shape) < 2:
            raise _err(op, f"runtime weight must have >= 2 axes, got {w_shape}")
    K, N = w_shape[-2], w_shape[-1]
    if not a.shape or a.shape[-1] != K:
        raise _err(op, f"inner dimensions differ: a {a.shape} vs w {tuple(w_shape)}")
    blo = bhi = 0
    if len(op.inputs) == 3:
        b = c.const(op, op.inputs[2])
        if b.shape != (N,):
            raise _err(op, f"bias shape {b.shape} is not ({N},)")
        if b.values.size and (b.values.min() < -(2**31) or b.values.max() > 2**31 - 1):
            raise _err(op, "bias outside int32")
        blo, bhi = int(b.values.min()), int(b.values.max())  # §2: the actual bias range
    need = ref_acc_bits(K, a_type.int_type(), w_type.int_type(), blo, bhi)
    if acc < need:
        raise _err(op, f"acc_bits={acc} is less than the {need} bits §2 requires")
    y = c.tensor(op, op.outputs[0], ("acc",))
    if y.acc_bits != acc:
        raise _err(op, f"output tensor acc_bits={y.acc_bits} differs from attribute acc_bits={acc}")
    _same_shape(op, y.shape, tuple(a.shape[:-1]) + (N,))


def _v_requant(c: _Ctx, op: Op) -> None:
    _n_io(op, (3, 3))
    x = c.tensor(op, op.inputs[0], ("code", "acc"))
    M, sh = c.const(op, op.inputs[1]), c.const(op, op.inputs[2])
    t = _attr(op, "out_type", CodeType)
    _bits_in(op, "output", t, 2, 16)
    m = _attr(op, "m", int, 2, 24)
    wacc = _attr(op, "acc_bits_max", int, 1, 48)
    if wacc < x.int_width():
        raise _err(op, f"acc_bits_max={wacc} is less than the input's {x.int_width()} bits")
    for what, k in (("M", M), ("shift", sh)):
        _broadcast_into(op, what, k.shape, x.shape)
    if M.values.size and (M.values.min() < 0 or M.values.max() >= 1 << 24):
        raise _err(op, "multiplier outside 0..2^24-1")
    if sh.values.size and (sh.values.min() < 0 or sh.values.max() > 62):
        raise _err(op, "shift outside 0..62")
    mbits = max(m, int(M.values.max()).bit_length() if M.values.size else 0)
    if wacc + mbits > 62:
        raise _err(op, f"{wacc}-bit accumulator x {mbits}-bit multiplier exceeds 62 bits (§3)")
    y = c.tensor(op, op.outputs[0], ("code",))
    if y.type != t:
        raise _err(op, f"output tensor type {y.type} differs from out_type {t}")
    _same_shape(op, y.shape, x.shape)


def _v_threshold(c: _Ctx, op: Op) -> None:
    _n_io(op, (2, 2))
    x = c.tensor(op, op.inputs[0], ("code", "acc"))
    T = c.const(op, op.inputs[1])
    out_bias = _attr(op, "out_bias", int)
    bipolar = _attr(op, "bipolar", bool)
    if len(T.shape) != 2 or T.shape[1] < 1:
        raise _err(op, f"thresholds must have shape (C, n>=1), got {T.shape}")
    if not x.shape or T.shape[0] not in (1, x.shape[-1]):
        raise _err(op, f"{T.shape[0]} threshold rows for {x.shape[-1] if x.shape else 0} channels")
    if np.any(np.diff(T.values, axis=1) < 0):
        raise _err(op, "thresholds must be ascending per channel")
    y = c.tensor(op, op.outputs[0], ("code",))
    n = T.shape[1]
    if bipolar:
        if n != 1 or not y.type.bipolar:
            raise _err(op, "a bipolar threshold has one threshold per channel and a bipolar output")
    elif not (y.type.lo <= out_bias and out_bias + n <= y.type.hi) or y.type.bipolar:
        raise _err(op, f"outputs {out_bias}..{out_bias + n} do not fit the output type {y.type}")
    _same_shape(op, y.shape, x.shape)


def _v_add(c: _Ctx, op: Op) -> None:
    _n_io(op, (2, 2))
    a = c.tensor(op, op.inputs[0], ("code",))
    b = c.tensor(op, op.inputs[1], ("code",))
    types = {}
    for p, t in (("a", a), ("b", b)):
        tt = _attr(op, f"{p}_type", CodeType)
        _bits_in(op, p, tt, 2, 16)
        if not tt.contains(t.type):
            raise _err(op, f"input '{t}' type is not within {p}_type {tt}")
        types[p] = tt
    out = _attr(op, "out_type", CodeType)
    _bits_in(op, "output", out, 2, 16)
    for k in ("Ma", "Mb"):
        _attr(op, k, int, 0, (1 << 24) - 1)
    _attr(op, "sh", int, 1, 62)
    y = c.tensor(op, op.outputs[0], ("code",))
    if y.type != out:
        raise _err(op, f"output tensor type {y.type} differs from out_type {out}")
    try:
        full = np.broadcast_shapes(a.shape, b.shape)
    except ValueError:
        raise _err(op, f"input shapes {a.shape} and {b.shape} do not broadcast") from None
    _same_shape(op, y.shape, full)


def _v_lut(c: _Ctx, op: Op) -> None:
    _n_io(op, (2, 2))
    q = c.tensor(op, op.inputs[0], ("code",))
    table = c.const(op, op.inputs[1])
    t = _attr(op, "in_type", CodeType)
    _bits_in(op, "input", t, 1, 8)
    if not CodeType(t.bits, t.signed).contains(q.type):
        raise _err(op, f"input type {q.type} is not within in_type {t}")
    n = 2 if t.bipolar else 1 << t.bits
    if table.shape != (n,):
        raise _err(op, f"table has shape {table.shape}, a {t} input needs ({n},)")
    y = c.tensor(op, op.outputs[0], ("code",))
    if not y.type.holds(table.values) or not 1 <= y.type.bits <= 16:
        raise _err(op, f"table entries are not codes of the output type {y.type}")
    _same_shape(op, y.shape, q.shape)


def _v_softmax(c: _Ctx, op: Op) -> None:
    _n_io(op, (2, 2))
    x = c.tensor(op, op.inputs[0], ("code",))
    table = c.const(op, op.inputs[1])
    t = _attr(op, "in_type", CodeType)
    _bits_in(op, "input", t, 2, 8)
    if not CodeType(t.bits, t.signed).contains(x.type):
        raise _err(op, f"input type {x.type} is not within in_type {t}")
    eb, ob = _attr(op, "eb", int, 1, 16), _attr(op, "ob", int, 1, 16)
    if table.shape != (1 << t.bits,):
        raise _err(op, f"table shape {table.shape}, expected ({1 << t.bits},)")
    v = table.values
    if v.min() < 0 or v.max() > (1 << eb) - 1 or v[0] < 1:
        raise _err(op, "table entries must be in 0..2^EB-1 with T[0] >= 1")
    if x.shape and x.shape[-1] * ((1 << eb) - 1) >= 1 << 32:
        raise _err(op, "row length x (2^EB - 1) overflows the 32-bit sum (§5)")
    y = c.tensor(op, op.outputs[0], ("code",))
    if y.type != CodeType(ob, False) or y.scale != Scale.scalar(math.ldexp(1.0, -ob)):
        raise _err(op, f"output must be uint{ob} at scale 2^-{ob}")
    _same_shape(op, y.shape, x.shape)


def _v_layernorm(c: _Ctx, op: Op) -> None:
    _n_io(op, (3, 3))
    x = c.tensor(op, op.inputs[0], ("code",))
    if not CodeType(16, True).contains(x.type):
        raise _err(op, f"input type {x.type} is not within int16 (§6)")
    H = x.shape[-1] if x.shape else 0
    if not 1 <= H <= 4096:
        raise _err(op, f"row length H={H} not supported (1..4096)")
    G, B = c.const(op, op.inputs[1]), c.const(op, op.inputs[2])
    if G.shape != (H,) or B.shape != (H,):
        raise _err(op, f"G {G.shape} / B {B.shape} must have shape ({H},)")
    if np.abs(G.values).max() > 2**15 - 1 or np.abs(B.values).max() > 2**31 - 1:
        raise _err(op, "G must fit int16 and B int32")
    _attr(op, "S", int, 1, 62)
    _attr(op, "E", int, 0, (1 << 40) - 1)
    t = _attr(op, "out_type", CodeType)
    _bits_in(op, "output", t, 2, 8)
    y = c.tensor(op, op.outputs[0], ("code",))
    if y.type != t:
        raise _err(op, f"output tensor type {y.type} differs from out_type {t}")
    _same_shape(op, y.shape, x.shape)


def _v_generic(c: _Ctx, op: Op) -> None:
    """Contract ops the lowering does not produce (pooling, xnor_popcount, isqrt): the
    reference checks their arguments when the IR runs."""
    for name in op.inputs:
        c.operand(op, name)
    if len(op.outputs) != 1:
        raise _err(op, f"has one output, got {len(op.outputs)}")
    c.tensor(op, op.outputs[0], ("code", "acc"))


def _passthrough(op: Op, x: Tensor, y: Tensor, scale: Scale | None) -> None:
    if x.kind != y.kind:
        raise _err(op, f"output kind {y.kind} differs from input kind {x.kind}")
    if x.kind == "code" and not y.type.contains(x.type):
        raise _err(op, f"output type {y.type} does not hold input type {x.type}")
    if x.kind == "acc" and y.acc_bits < x.acc_bits:
        raise _err(op, f"output acc_bits {y.acc_bits} < input acc_bits {x.acc_bits}")
    if y.scale != scale:
        raise _err(op, "output scale does not follow the input scale")


def _v_structural(c: _Ctx, op: Op) -> None:
    kind = op.op
    if kind == "concat":
        if not op.inputs:
            raise _err(op, "needs at least one input")
        xs = [c.tensor(op, n, ("code", "acc")) for n in op.inputs]
    else:
        _n_io(op, (2, 2) if kind == "gather" else (1, 1))
        xs = [c.tensor(op, op.inputs[0], ("code", "acc"))]
    x = xs[0]
    y = c.tensor(op, op.outputs[0], ("code", "acc"))
    if len(op.outputs) != 1:
        raise _err(op, "has one output")
    scale = x.scale
    nd = len(x.shape)
    if kind == "identity":
        want = x.shape
    elif kind == "reshape":
        shp = _attr(op, "shape", list)
        if any(d < 0 for d in shp):
            raise _err(op, f"shape {shp} must be explicit (no -1)")
        want = (x.shape[0],) + tuple(shp)
        if math.prod(want) != math.prod(x.shape):
            raise _err(op, f"cannot reshape {x.shape} to {want}")
        if x.scale.per_channel:
            raise _err(op, "a per-channel scale cannot pass a reshape")
    elif kind == "flatten":
        axis = _attr(op, "axis", int, 1, 1)
        want = (x.shape[0], math.prod(x.shape[axis:]))
        if x.scale.per_channel and not (x.scale.axis == 1 and math.prod(x.shape[2:]) == 1):
            raise _err(op, "a per-channel scale cannot pass a flatten")
    elif kind == "transpose":
        perm = _attr(op, "perm", list)
        if sorted(perm) != list(range(nd)) or perm[0] != 0:
            raise _err(op, f"perm {perm} must permute {nd} axes and keep the batch axis 0 first")
        want = tuple(x.shape[p] for p in perm)
        if x.scale.per_channel:
            scale = Scale(x.scale.values, perm.index(x.scale.axis))
    elif kind == "concat":
        axis = _attr(op, "axis", int, 1, nd - 1)
        for t in xs[1:]:
            if len(t.shape) != nd or any(t.shape[i] != x.shape[i] for i in range(nd) if i != axis):
                raise _err(op, f"input shapes {[t.shape for t in xs]} differ outside axis {axis}")
            if t.scale != x.scale or t.kind != x.kind:
                raise _err(op, "inputs must share kind and scale")
        if x.scale.per_channel:
            raise _err(op, "per-channel scales cannot pass a concat")
        want = x.shape[:axis] + (sum(t.shape[axis] for t in xs),) + x.shape[axis + 1:]
        for t in xs[1:]:
            _passthrough(op, t, y, t.scale)
    elif kind == "gather":
        axis = _attr(op, "axis", int, 1, nd - 1)
        idx = c.const(op, op.inputs[1])
        if idx.values.size and (idx.values.min() < -x.shape[axis] or idx.values.max() >= x.shape[axis]):
            raise _err(op, f"indices outside axis {axis} of length {x.shape[axis]}")
        want = x.shape[:axis] + idx.shape + x.shape[axis + 1:]
        if x.scale.per_channel:
            raise _err(op, "a per-channel scale cannot pass a gather")
    else:  # pragma: no cover
        raise _err(op, "unknown structural op")
    _same_shape(op, y.shape, want)
    _passthrough(op, x, y, scale)


def _v_sparse(c: _Ctx, op: Op) -> None:
    """``attrs["sparse"] = {"pe": p, "simd": s}`` on a matmul/conv2d: emit the block-sparse
    MVAU (``hls/include/codesign/sparse.h``) with ``p`` x ``s`` weight blocks. Needs a
    constant signed multi-bit weight; conv2d: ``p <= OC/groups`` (dividing it when
    ``groups > 1``); matmul: ``p <= N``."""
    sp = op.attrs["sparse"]
    if op.op not in ("matmul", "conv2d"):
        raise _err(op, "attribute 'sparse' is only supported on matmul and conv2d")
    if not isinstance(sp, dict) or set(sp) != {"pe", "simd"} or any(
            isinstance(sp[k], bool) or not isinstance(sp[k], int) or sp[k] < 1 for k in ("pe", "simd")):
        raise _err(op, f"attribute 'sparse'={sp!r} must be {{\"pe\": int >= 1, \"simd\": int >= 1}}")
    if len(op.inputs) < 2 or op.inputs[1] not in c.ir.constants:
        raise _err(op, "attribute 'sparse' needs a constant weight (runtime operands are not pruned)")
    w_type = CodeType.from_json(op.attrs.get("w_type"), f"op '{op.name}' ({op.op}): attribute 'w_type'")
    if w_type.bipolar or not w_type.signed:
        raise _err(op, f"attribute 'sparse' needs a signed multi-bit weight type, not {w_type} "
                       "(a bipolar weight has no 0)")
    shape = c.ir.constants[op.inputs[1]].shape
    pe = sp["pe"]
    if op.op == "matmul":
        if len(shape) != 2 or pe > shape[1]:
            raise _err(op, f"sparse pe={pe} needs a 2-D weight (K, N) with pe <= N, got {shape}")
    else:
        g = op.attrs.get("groups", 1)
        ocg = shape[0] // g if len(shape) == 4 and isinstance(g, int) and g >= 1 else 0
        if ocg < 1 or pe > ocg or (g > 1 and ocg % pe):
            raise _err(op, f"sparse pe={pe} must be <= OC/groups and divide it when groups > 1 "
                           f"(weight {shape}, groups {g})")


def _v_not_ir_op(c: _Ctx, op: Op) -> None:
    raise _err(op, f"is not an IR op: mark a {op.op.removeprefix('sparse_')} with attrs['sparse'] = "
                   "{'pe': .., 'simd': ..} instead")


_VALIDATORS = {
    "sparse_matmul": _v_not_ir_op, "sparse_conv2d": _v_not_ir_op,
    "quantize": _v_quantize, "dequantize": _v_dequantize, "matmul": _v_matmul, "requant": _v_requant,
    "threshold": _v_threshold, "add": _v_add, "lut": _v_lut, "softmax": _v_softmax, "layernorm": _v_layernorm,
    **{k: _v_structural for k in STRUCTURAL_OPS},
}


def validate(ir: IR) -> IR:
    """Check an IR; raise :class:`IRError` naming the op (or tensor/constant) at fault.

    Checked: safe, unique names; every input defined (graph input, constant or an earlier
    op's output) before use and every tensor produced once; shapes consistent with each
    op's rule; types, widths and parameters within the contract (``docs/arithmetic.md``);
    graph inputs and outputs are float tensors, the outputs produced by ops.
    """
    if not isinstance(ir.model, str):
        raise IRError("model name must be a string")
    for kind, names in (("tensor", ir.tensors), ("constant", ir.constants)):
        for n in names:
            if not is_safe_id(n):
                raise IRError(f"{kind} name {n!r} is not a safe id ([a-z][a-z0-9_]*, no '__')")
    clash = set(ir.tensors) & set(ir.constants)
    if clash:
        raise IRError(f"name {sorted(clash)[0]!r} is both a tensor and a constant")
    for name, c in ir.constants.items():
        if not c.type.holds(c.values):
            raise IRError(f"constant '{name}': values outside its type {c.type}")
    c = _Ctx(ir)
    c.defined |= set(ir.constants)
    for b in ir.inputs:
        t = ir.tensors.get(b.name)
        if t is None or t.kind != "float":
            raise IRError(f"input '{b.name}': must be a declared float tensor")
        if b.name in c.defined:
            raise IRError(f"input '{b.name}': declared twice")
        c.defined.add(b.name)
    produced: dict[str, str] = {}
    seen_ops: set[str] = set()
    for op in ir.ops:
        if not is_safe_id(op.name):
            raise IRError(f"op name {op.name!r} is not a safe id")
        if op.name in seen_ops:
            raise IRError(f"op '{op.name}': name used twice")
        seen_ops.add(op.name)
        if op.op not in CONTRACT_OPS and op.op not in STRUCTURAL_OPS:
            raise _err(op, f"unknown op (contract: {', '.join(CONTRACT_OPS)}; structural: "
                           f"{', '.join(STRUCTURAL_OPS)})")
        if op.target not in TARGETS:
            raise _err(op, f"target {op.target!r} is not one of {TARGETS}")
        try:
            _jsonable(op.attrs, f"op '{op.name}'")
        except IRError as e:
            raise _err(op, str(e)) from None
        for name in op.inputs:
            if name not in c.defined:
                later = name in ir.tensors and any(name in o.outputs for o in ir.ops)
                raise _err(op, f"input '{name}' is used before it is defined" if later
                           else f"input '{name}' is not defined")
        for name in op.outputs:
            if name in ir.constants or any(b.name == name for b in ir.inputs):
                raise _err(op, f"output '{name}' is a constant or graph input")
            if name in produced:
                raise _err(op, f"output '{name}' is already produced by op '{produced[name]}'")
            if name not in ir.tensors:
                raise _err(op, f"output '{name}' is not a declared tensor")
        _VALIDATORS.get(op.op, _v_generic)(c, op)
        if "sparse" in op.attrs:
            _v_sparse(c, op)
        for name in op.outputs:
            produced[name] = op.name
            c.defined.add(name)
    for b in ir.outputs:
        t = ir.tensors.get(b.name)
        if t is None or t.kind != "float":
            raise IRError(f"output '{b.name}': must be a declared float tensor")
        if b.name not in produced:
            raise IRError(f"output '{b.name}': not produced by any op")
    names = [b.name for b in ir.inputs + ir.outputs]
    if len(set(names)) != len(names):
        raise IRError("graph input/output names are not distinct")
    for name in ir.tensors:
        if name not in produced and name not in {b.name for b in ir.inputs}:
            raise IRError(f"tensor '{name}': declared but neither a graph input nor produced by an op")
    return ir
