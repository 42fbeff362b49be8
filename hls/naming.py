"""Safe, deterministic C++ identifiers from arbitrary ONNX node and tensor names.

ONNX names are free-form strings: quotes, spaces, unicode, C++ keywords, leading
digits, shell metacharacters, or two names that differ only in such characters.
Generated HLS C++ must compile whatever they are, and the same graph must always
give the same identifiers (builds are byte-identical).

:class:`Namer` maps each distinct name to an identifier that

* matches ``[a-z][a-z0-9_]*`` after an optional prefix (lower case, ASCII only);
* is never a C++ keyword, never reserved (no ``__``, no leading ``_``), never one of
  the names the emitter itself uses (``reserved=``), and at most ``max_len`` characters;
* keeps the readable part of the original name, and adds an 8-hex-digit hash of
  the original name whenever anything had to change, so the mapping does not depend
  on the order in which names are seen (see :class:`Namer` for the one exception).
"""
from __future__ import annotations

import hashlib
import re
import unicodedata
from typing import Iterable

__all__ = ["CPP_KEYWORDS", "Namer", "cpp_identifier"]

# C++14 keywords and alternative tokens, plus names that clash with the C/C++ and HLS
# headers the generated code includes (macros and common globals).
CPP_KEYWORDS = frozenset("""
alignas alignof and and_eq asm auto bitand bitor bool break case catch char char16_t char32_t
class compl const constexpr const_cast continue decltype default delete do double dynamic_cast
else enum explicit export extern false float for friend goto if inline int long mutable namespace
new noexcept not not_eq nullptr operator or or_eq private protected public register
reinterpret_cast return short signed sizeof static static_assert static_cast struct switch
template this thread_local throw true try typedef typeid typename union unsigned using virtual
void volatile wchar_t while xor xor_eq
char8_t concept consteval constinit co_await co_return co_yield requires import module
main std hls ap_int ap_uint ap_fixed ap_ufixed assert errno stdin stdout stderr null eof
int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t size_t
""".split())

_NON_IDENT = re.compile(r"[^a-z0-9]+")


def _hash8(name: str) -> str:
    return hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _readable(name: str) -> str:
    """ASCII-fold, lower-case, and squeeze every run of other characters to one '_'."""
    folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii").lower()
    return _NON_IDENT.sub("_", folded).strip("_")


def cpp_identifier(name: str, prefix: str = "", max_len: int = 48, reserved: Iterable[str] = ()) -> str:
    """The identifier for one name, on its own (no collision handling across names)."""
    if not isinstance(name, str):
        raise TypeError(f"cpp_identifier: name must be str, got {type(name).__name__}")
    if prefix and not re.fullmatch(r"[a-z][a-z0-9_]*", prefix) or "__" in prefix:
        raise ValueError(f"cpp_identifier: prefix {prefix!r} is not a plain lower-case identifier")
    if max_len < 16:
        raise ValueError(f"cpp_identifier: max_len={max_len} too small (>= 16)")
    base = _readable(name)
    changed = base != name
    if not base or not base[0].isalpha():
        base, changed = "n_" + base if base else "n", True
    ident = prefix + base
    if ident in CPP_KEYWORDS or ident in set(reserved):
        changed = True
    limit = max_len - 9 if changed else max_len  # room for "_" + hash
    if len(ident) > limit:
        ident, changed = ident[: max_len - 9].rstrip("_"), True
    if changed:
        ident = f"{ident}_{_hash8(name)}"
    return ident


class Namer:
    """Maps names to distinct identifiers; identical names map to the same identifier.

    Every changed name carries the hash of the original, so two different names never
    fold to one identifier and each name's identifier depends on that name alone. The one
    exception is a hostile name that literally equals another name's hashed identifier:
    the name seen second gets a longer hash.
    """

    def __init__(self, prefix: str = "", max_len: int = 48, reserved: Iterable[str] = ()) -> None:
        self.prefix, self.max_len = prefix, max_len
        self.reserved = frozenset(reserved)
        self._by_name: dict[str, str] = {}
        self._owner: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        if name in self._by_name:
            return self._by_name[name]
        ident = cpp_identifier(name, self.prefix, self.max_len, self.reserved)
        if ident in self._owner:
            # only possible when a name literally equals another name's hashed identifier:
            # the later name takes a longer hash (and a counter, against the impossible)
            ident = f"{self.prefix}n_{hashlib.sha256(name.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"
            k = 0
            while ident in self._owner:
                k += 1
                ident = f"{ident.rsplit('_x', 1)[0]}_x{k}"
        self._by_name[name] = ident
        self._owner[ident] = name
        return ident

    def mapping(self) -> dict[str, str]:
        return dict(self._by_name)
