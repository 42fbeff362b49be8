"""Argument checks shared by every face of codesign's arithmetic contract.

The numpy reference (:mod:`codesign.sim.reference`) and the C-simulation wrappers
(:mod:`codesign.hls.csim_arith`, :mod:`codesign.hls.csim_nonlinear`) validate their
arguments the same way; the helpers live here once. Each raises ``ValueError``
whose message starts with the op's name (contract §0: "An op given anything else
raises ValueError naming the op and the offending value").

numpy and the Python standard library only, like the reference.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from codesign.sim.reference import IntType

__all__ = [
    "as_type", "check_bits", "int_codes", "check_codes", "check_scale", "check_broadcast",
    "scalar_int", "packed_bytes",
]

_INT64_MAX = int(np.iinfo(np.int64).max)


def as_type(op: str, t: Any) -> IntType:
    """``t`` as an :class:`~codesign.sim.reference.IntType` (an IntType or the tuple of its fields)."""
    # Imported here: the reference may import this module at its top.
    from codesign.sim.reference import IntType

    try:
        return t if isinstance(t, IntType) else IntType(*t)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{op}: bad type {t!r} ({exc})") from None


def check_bits(op: str, what: str, v: Any, lo: int, hi: int) -> int:
    """An integer parameter (a bit width, a shift, a folding) in ``lo..hi``; bools are rejected."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
        raise ValueError(f"{op}: {what}={v!r} not supported ({lo}..{hi})")
    return int(v)


def int_codes(op: str, what: str, x: Any) -> np.ndarray:
    """``x`` as an int64 array of integer values.

    Accepted: integer and bool arrays whose values fit int64, and float arrays of
    finite integral values below 2^63 in magnitude; an empty array only of those
    dtypes.
    """
    a = np.asarray(x)
    if a.dtype.kind in "iub":
        if a.dtype.kind == "u" and a.size and int(a.max()) > _INT64_MAX:
            raise ValueError(f"{op}: {what} value {int(a.max())} does not fit int64")
        return a.astype(np.int64)
    if a.dtype.kind == "f" and (a.size == 0 or (np.all(np.isfinite(a)) and np.all(a == np.round(a))
                                                and np.all(np.abs(a) < 2.0**63))):
        return a.astype(np.int64)
    raise ValueError(f"{op}: {what} must be integer codes, got dtype {a.dtype}")


def check_codes(op: str, what: str, q: np.ndarray, t: IntType) -> np.ndarray:
    """Raise if integer codes ``q`` fall outside type ``t`` (bipolar: -1/+1); return ``q``."""
    if q.size:
        lo, hi = int(q.min()), int(q.max())
        if t.bipolar:
            if not np.all((q == 1) | (q == -1)):
                raise ValueError(f"{op}: {what} must be bipolar (-1/+1), got values in [{lo}, {hi}]")
        elif lo < t.lo or hi > t.hi:
            raise ValueError(f"{op}: {what} values [{lo}, {hi}] outside {t} range [{t.lo}, {t.hi}]")
    return q


def check_scale(op: str, s: Any, dtype: Any = np.float32, what: str = "scale") -> np.ndarray:
    """A non-empty array of finite values > 0, as ``dtype``; the message lists the offending values."""
    s = np.asarray(s, dtype=dtype)
    if s.size == 0 or not np.all(np.isfinite(s)) or np.any(s <= 0):
        bad = s[~(np.isfinite(s) & (s > 0))] if s.size else s
        raise ValueError(f"{op}: {what} must be finite and > 0, got {bad.ravel()[:4].tolist()}")
    return s


def check_broadcast(op: str, *shapes: tuple[int, ...], message: str | None = None) -> tuple[int, ...]:
    """The broadcast of ``shapes``; else ``ValueError("{op}: {message}")``, by default
    ``shapes A / B do not broadcast``."""
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        if message is None:
            message = f"shapes {' / '.join(str(s) for s in shapes)} do not broadcast"
        raise ValueError(f"{op}: {message}") from None


def scalar_int(op: str, what: str, v: Any, lo: int, hi: int) -> int:
    """One integer value (any array of one element, see :func:`int_codes`) in ``lo..hi``."""
    a = np.asarray(v)
    if a.size != 1:
        raise ValueError(f"{op}: {what} must be a scalar, got shape {a.shape}")
    q = int(int_codes(op, what, a).reshape(()))
    if not lo <= q <= hi:
        raise ValueError(f"{op}: {what}={q} outside {lo}..{hi}")
    return q


def packed_bytes(op: str, what: str, x: Any) -> np.ndarray:
    """Packed bit words (bytes 0..255, as ``reference.pack_bipolar`` makes them) as int64."""
    q = int_codes(op, what, x)
    if q.size and (q.min() < 0 or q.max() > 255):
        raise ValueError(f"{op}: {what} must hold packed bytes 0..255, got [{int(q.min())}, {int(q.max())}]")
    return q
