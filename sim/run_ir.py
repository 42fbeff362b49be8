"""Execute a codesign IR (``docs/ir.md``) op by op with the numpy reference.

:func:`run_reference` is the golden model of a lowered network: every contract op runs
through its function in :mod:`codesign.sim.reference` with the op's attributes as the
function's parameters, structural ops (reshape, transpose, ...) run as numpy moves. The
batch is axis 0 of every tensor and may have any size, whatever batch the graph was
exported with. Graph outputs come back dequantized (float32, as the IR's ``dequantize``
ops define them); ``trace=True`` also returns every intermediate tensor (integer codes as
int64) for golden vectors and debugging.

numpy and the standard library only (plus :mod:`codesign.accel.ir`, which is numpy only):
never torch, brevitas, qonnx or onnx.
"""
from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from codesign.accel import ir as irm
from codesign.accel.ir import IR, CodeType, Op, Scale
from codesign.sim import reference as ref

__all__ = ["run_reference", "RunError"]


class RunError(ValueError):
    """A failure while running an IR; the message names the op."""


# float64 copies of weight constants, kept while the constant array lives (a repeated
# run of the same IR, e.g. `predict` or a benchmark, converts each weight only once)
_EXACT: dict[int, tuple[weakref.ref, ref.ExactWeights]] = {}


def _exact_weights(values: np.ndarray, w_type: ref.IntType) -> ref.ExactWeights:
    hit = _EXACT.get(id(values))
    if hit is not None and hit[0]() is values and hit[1].w_type == w_type:
        return hit[1]
    prepared = ref.exact_weights(values, w_type)
    _EXACT[id(values)] = (weakref.ref(values), prepared)
    weakref.finalize(values, _EXACT.pop, id(values), None)
    return prepared


def _type(op: Op, key: str) -> ref.IntType:
    return CodeType.from_json(op.attrs[key], f"op '{op.name}' attribute '{key}'").int_type()


def _scale(op: Op, ndim: int) -> np.ndarray:
    return Scale.from_json(op.attrs, f"op '{op.name}' attribute 'scale'").array(ndim, np.float32)


def _quantize(op: Op, x):
    a = op.attrs
    x = np.asarray(x, dtype=np.float32)
    return ref.quantize(x, _scale(op, x.ndim), a["bits"], a["signed"], a["narrow"], a["rounding"])


def _dequantize(op: Op, q):
    q = np.asarray(q)
    return ref.dequantize(q, _scale(op, q.ndim))


def _matmul(op: Op, a, w, bias=None):
    return ref.matmul(a, w, bias, _type(op, "a_type"), _type(op, "w_type"))


def _conv2d(op: Op, x, w, bias=None):
    at = op.attrs
    return ref.conv2d(x, w, bias, at["stride"], at["pad"], at["dilation"], at["groups"], _type(op, "x_type"),
                      _type(op, "w_type"))


def _requant(op: Op, acc, M, sh):
    return ref.requant(acc, M, sh, _type(op, "out_type"), op.attrs["acc_bits_max"], op.attrs["m"])


def _threshold(op: Op, acc, T):
    return ref.threshold(acc, T, op.attrs["out_bias"], op.attrs["bipolar"])


def _add(op: Op, a, b):
    at = op.attrs
    return ref.add(a, b, at["Ma"], at["Mb"], at["sh"], _type(op, "a_type"), _type(op, "b_type"),
                   _type(op, "out_type"))


def _lut(op: Op, q, table):
    return ref.lut(q, table, _type(op, "in_type"))


def _softmax(op: Op, x, table):
    return ref.softmax(x, table, _type(op, "in_type"), op.attrs["eb"], op.attrs["ob"])


def _layernorm(op: Op, x, G, B):
    params = ref.LayerNormParams(G=np.asarray(G), B=np.asarray(B), S=op.attrs["S"], E=op.attrs["E"])
    return ref.layernorm(x, params, _type(op, "out_type"))


def _generic(op: Op, *args):
    """Other contract ops (maxpool2d, avgpool2d, xnor_popcount, isqrt): inputs positional,
    attrs as keywords (code types converted)."""
    from codesign.accel.ops import OPS
    kw = {k: (CodeType.from_json(v).int_type() if k.endswith("_type") else v) for k, v in op.attrs.items()}
    return OPS[op.op].reference_fn()(*args, **kw)


def _reshape(op: Op, x):
    return x.reshape((x.shape[0], *op.attrs["shape"]))


def _flatten(op: Op, x):
    return x.reshape((x.shape[0], -1))


def _transpose(op: Op, x):
    return np.transpose(x, op.attrs["perm"])


def _concat(op: Op, *xs):
    return np.concatenate(xs, axis=op.attrs["axis"])


def _gather(op: Op, x, idx):
    return np.take(x, np.asarray(idx), axis=op.attrs["axis"])


def _identity(op: Op, x):
    return np.array(x, copy=True)


_RUN: dict[str, Callable[..., np.ndarray]] = {
    "quantize": _quantize, "dequantize": _dequantize, "matmul": _matmul, "conv2d": _conv2d, "requant": _requant,
    "threshold": _threshold, "add": _add, "lut": _lut, "softmax": _softmax, "layernorm": _layernorm,
    "reshape": _reshape, "flatten": _flatten, "transpose": _transpose, "concat": _concat,
    "gather": _gather, "identity": _identity,
}


def _check_output(op: Op, name: str, value: np.ndarray, t: irm.Tensor) -> None:
    if t.kind == "float":
        return
    lo, hi = t.value_range()
    if value.size and (t.kind == "code" and t.type.bipolar and not np.all((value == 1) | (value == -1))
                       or int(value.min()) < lo or int(value.max()) > hi):
        raise RunError(f"op '{op.name}' ({op.op}): output '{name}' values [{int(value.min())}, "
                       f"{int(value.max())}] outside its declared {t.type if t.kind == 'code' else 'acc'} "
                       f"range [{lo}, {hi}]")


def _input_value(ir: IR, b: irm.Boundary, inputs: Mapping[str, Any]) -> np.ndarray:
    if b.onnx_name in inputs:
        v = inputs[b.onnx_name]
    elif b.name in inputs:
        v = inputs[b.name]
    else:
        raise RunError(f"missing input '{b.onnx_name}' (IR name '{b.name}')")
    x = np.asarray(v)
    if x.dtype.kind not in "fiub":
        raise RunError(f"input '{b.onnx_name}': dtype {x.dtype} is not numeric")
    x = x.astype(np.float32)
    want = ir.tensors[b.name].shape
    if x.ndim != len(want) or tuple(x.shape[1:]) != tuple(want[1:]):
        raise RunError(f"input '{b.onnx_name}': shape {x.shape} does not match (batch, {', '.join(map(str, want[1:]))})"
                       .replace("(batch, )", "(batch,)"))
    return x


def run_reference(ir: IR | str | Path, inputs: Mapping[str, Any], trace: bool = False):
    """Run ``ir`` on float ``inputs`` (keyed by ONNX input name, or by IR name).

    Returns ``{onnx output name: float32 array}``; with ``trace=True`` a pair
    ``(outputs, tensors)`` where ``tensors`` maps every IR tensor name (graph inputs
    included) to its value: int64 codes/accumulators, float32 at the boundaries.
    ``ir`` may also be the path of a saved IR folder.
    """
    if isinstance(ir, (str, Path)):
        ir = irm.load(ir)
    known = {b.onnx_name for b in ir.inputs} | {b.name for b in ir.inputs}
    extra = sorted(set(inputs) - known)
    if extra:
        raise RunError(f"unknown input(s) {extra}; the IR takes {[b.onnx_name for b in ir.inputs]}")
    env: dict[str, np.ndarray] = {}
    batch = None
    for b in ir.inputs:
        env[b.name] = x = _input_value(ir, b, inputs)
        if batch is not None and x.shape[0] != batch:
            raise RunError(f"input '{b.onnx_name}': batch {x.shape[0]} differs from {batch}")
        batch = x.shape[0]
    for op in ir.ops:
        args = [env[n] if n in env else ir.constants[n].values for n in op.inputs]
        if op.op == "matmul" and op.inputs[1] in ir.constants:  # weights: validated and converted once
            try:
                args[1] = _exact_weights(args[1], _type(op, "w_type"))
            except ValueError as e:
                raise RunError(f"op '{op.name}' ({op.op}): {' '.join(str(e).split())}") from None
        fn = _RUN.get(op.op, _generic)
        try:
            y = fn(op, *args)
        except (ValueError, KeyError, TypeError) as e:
            raise RunError(f"op '{op.name}' ({op.op}): {' '.join(str(e).split())}") from None
        name = op.outputs[0]
        t = ir.tensors[name]
        y = np.asarray(y)
        y = y.astype(np.float32) if t.kind == "float" else y.astype(np.int64)
        _check_output(op, name, y, t)
        env[name] = y
    outputs = {b.onnx_name: env[b.name] for b in ir.outputs}
    if trace:
        return outputs, env
    return outputs
