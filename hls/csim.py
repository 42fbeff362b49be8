"""C-simulation driver: compile and run HLS C++ test harnesses from Python.

Every integer operator of codesign exists three times (numpy reference, HLS
C++ template, RTL) and the three are compared bit-exactly with ``==``. This
module is the bridge to the C++ side: a test writes a tiny ``main()`` harness
around a kernel header, :func:`run` compiles it with g++ against the Xilinx
``ap_types`` headers (cached), pipes named numpy arrays into it and returns the
arrays the harness writes back.

Example (a kernel test)::

    import numpy as np
    from codesign.hls import csim

    HARNESS = r'''
    #include <ap_int.h>
    #include "csim_io.h"
    int main() {
        csim::In in;
        csim::Out out;
        const std::vector<long long>& x = in.i64("x");
        std::vector<long long> y(x.size());
        for (std::size_t i = 0; i < x.size(); ++i) {
            ap_int<8> v = csim::fit_check<8, true>(x[i], "x");  // no silent wrap
            ap_int<9> r = v + 1;
            y[i] = r.to_int64();
        }
        out.put_i64("y", in.shape("x"), y);
    }
    '''

    def test_add_one() -> None:
        x = np.arange(-128, 128).reshape(16, 16)
        assert np.array_equal(csim.run(HARNESS, {"x": x})["y"], x + 1)

Harness side
    ``hls/csim_support/csim_io.h`` (``#include "csim_io.h"``; not
    synthesizable) provides ``csim::In`` (``i64/f32/f64/shape/scalar_*``),
    ``csim::Out`` (``put_i64/put_f32/put_f64``) and
    ``csim::fit_check<W, SIGNED>``. Harness-side misuse (missing input, wrong
    dtype, out-of-range value) prints ``csim_io: ...`` to stderr and exits
    with status 3, which :func:`run` turns into :class:`CsimRunError`.
    Kernel headers live under ``hls/include/`` (``#include "codesign/..."``).

Protocol
    The same framing is used on stdin (inputs) and stdout (outputs); all
    integers are little-endian::

        stream     := b"CSIO" record* terminator
        record     := name_len:u32  name:utf-8[name_len]  dtype:u8
                      ndim:u32  dims:u64[ndim]  data
        terminator := u32 0                      (a zero-length name)
        dtype      := 0 int64 | 1 float32 | 2 float64

    ``data`` is ``prod(dims)`` elements in C order (a 0-d array has one). Floats
    travel as raw IEEE-754 bit patterns (NaN payloads, -0.0 and subnormals are
    preserved). Inputs of any numpy integer/bool dtype are sent as int64 (an
    error if a value does not fit); outputs come back as ``int64``,
    ``float32`` or ``float64`` arrays of the written shape. Anything else on
    stdout (a stray ``printf``) is a protocol error: debug to stderr.

Cache
    :func:`build` caches executables under ``$CODESIGN_CACHE`` (default
    ``$XDG_CACHE_HOME/codesign/csim``, i.e. ``~/.cache/codesign/csim``), keyed
    by the sha256 of the source, the content of every file under
    :func:`include_dir`, ``csim_support/`` and :func:`ap_types_dir`, the
    compiler's ``--version`` output and the full command line. A build
    compiles to a temporary name in the cache folder and ``os.replace``-s it
    into place, so concurrent builds of the same key (pytest-xdist) are safe.
    The source of every build is kept next to the binary
    (``<name>-<key>.cpp``); delete the folder at will to reclaim space.

Environment
    ``CODESIGN_AP_TYPES`` (folder holding ``ap_int.h``; default: the copy
    inside the installed hls4ml package, found without importing it),
    ``CXX`` (compiler command, default ``g++``), ``CODESIGN_CACHE``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import math
import os
import re
import shlex
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CsimError",
    "CsimCompileError",
    "CsimRunError",
    "ap_types_dir",
    "include_dir",
    "support_dir",
    "compiler",
    "available",
    "cache_dir",
    "build",
    "run",
    "encode",
    "decode",
]

MAGIC = b"CSIO"
"""First four bytes of every stream, in both directions."""

DTYPE_CODES: dict[np.dtype[Any], int] = {
    np.dtype("<i8"): 0,
    np.dtype("<f4"): 1,
    np.dtype("<f8"): 2,
}
"""Wire dtype codes (little-endian numpy dtypes -> u8 code)."""
_CODE_DTYPES = {code: dt for dt, code in DTYPE_CODES.items()}
_NATIVE = {0: np.dtype(np.int64), 1: np.dtype(np.float32), 2: np.dtype(np.float64)}

CXX_STD = "-std=c++14"
OPT_FLAGS: tuple[str, ...] = ("-O1",)
HLS4ML_PIN = "hls4ml==1.3.0"
_STDERR_LINES = 60
# Bumped whenever the build recipe or the protocol changes (invalidates cache).
_CACHE_VERSION = "csim-1"


class CsimError(RuntimeError):
    """Base class of the C-simulation driver errors."""


class CsimCompileError(CsimError):
    """g++ rejected a harness.

    Attributes:
        stderr: the full compiler diagnostics.
        source_path: the kept copy of the source the diagnostics refer to.
        command: the compiler command line.
    """

    def __init__(self, stderr: str, source_path: Path, command: Sequence[str]) -> None:
        self.stderr = stderr
        self.source_path = source_path
        self.command = list(command)
        lines = stderr.splitlines()
        shown = "\n".join(lines[:_STDERR_LINES])
        if len(lines) > _STDERR_LINES:
            shown += f"\n... ({len(lines) - _STDERR_LINES} more lines)"
        super().__init__(f"C++ compilation failed (source kept at {source_path}):\n{shown}")


class CsimRunError(CsimError):
    """A harness exited non-zero, timed out, or wrote a malformed stream.

    Attributes:
        returncode: exit status (negative: killed by that signal; None: timeout
            or protocol error after a zero exit).
        stderr: the harness's stderr (decoded, full).
        executable: the program that was run.
    """

    def __init__(self, message: str, returncode: int | None, stderr: str, executable: Path) -> None:
        self.returncode = returncode
        self.stderr = stderr
        self.executable = executable
        tail = "\n".join(stderr.splitlines()[-_STDERR_LINES:])
        super().__init__(f"{message} [{executable}]" + (f"\nstderr:\n{tail}" if tail else ""))


# --------------------------------------------------------------------------
# Toolchain discovery
# --------------------------------------------------------------------------


def ap_types_dir() -> Path:
    """Folder with the Xilinx ``ap_int.h``/``ap_fixed.h``/``hls_stream.h``.

    ``$CODESIGN_AP_TYPES`` if set, else ``templates/vivado/ap_types`` inside
    the installed hls4ml package (located with ``find_spec``; hls4ml is never
    imported, its dependencies need not be installed).
    """
    env = os.environ.get("CODESIGN_AP_TYPES")
    if env:
        path = Path(env).expanduser()
        if not (path / "ap_int.h").is_file():
            raise RuntimeError(f"CODESIGN_AP_TYPES={env!r} does not contain ap_int.h")
        return path
    fix = (
        f"install them with `pip install --no-deps {HLS4ML_PIN}` (only its bundled "
        "headers are used) or point CODESIGN_AP_TYPES at a folder holding ap_int.h"
    )
    spec = importlib.util.find_spec("hls4ml")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"Xilinx ap_types headers not found (hls4ml is not installed): {fix}")
    path = Path(next(iter(spec.submodule_search_locations))) / "templates" / "vivado" / "ap_types"
    if not (path / "ap_int.h").is_file():
        raise RuntimeError(f"Xilinx ap_types headers not found at {path}: {fix}")
    return path


def include_dir() -> Path:
    """The package's kernel header root (``#include "codesign/<kernel>.h"``)."""
    return Path(__file__).parent / "include"


def support_dir() -> Path:
    """Folder of the testbench-only headers (``csim_io.h``)."""
    return Path(__file__).parent / "csim_support"


def compiler() -> list[str]:
    """The C++ compiler command as an argv prefix: ``$CXX`` (may hold a
    wrapper such as ``ccache g++``) or ``g++``, with the executable resolved."""
    cmd = shlex.split(os.environ.get("CXX", "") or "g++")
    exe = shutil.which(cmd[0]) if cmd else None
    if exe is None:
        raise RuntimeError(
            f"C++ compiler {cmd[0] if cmd else '(empty $CXX)'!r} not found: install g++ "
            "(e.g. `apt-get install g++`) or set CXX"
        )
    return [exe, *cmd[1:]]


def available() -> str | None:
    """None if :func:`build` can work here, else the reason (for ``skipif``)."""
    try:
        compiler()
        ap_types_dir()
    except RuntimeError as exc:
        return str(exc)
    return None


def cache_dir() -> Path:
    """``$CODESIGN_CACHE``, else ``$XDG_CACHE_HOME/codesign/csim`` (default
    ``~/.cache/codesign/csim``). Not created here."""
    from codesign.sim.paths import cache_dir as _cache_dir

    return _cache_dir("csim", "CODESIGN_CACHE")


# --------------------------------------------------------------------------
# Build (cached)
# --------------------------------------------------------------------------

# Digest memo: folder -> (stat signature, digest). Re-stat every call, re-read
# file content only when a size or mtime changed.
_tree_memo: dict[Path, tuple[tuple[tuple[str, int, int], ...], str]] = {}
_version_memo: dict[tuple[str, ...], tuple[int, str]] = {}


def _tree_digest(root: Path) -> str:
    """sha256 over (relative path, content) of every file under root."""
    if not root.is_dir():
        return "absent"
    files = sorted(
        (p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    sig = []
    for p in files:
        st = p.stat()
        sig.append((p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns))
    signature = tuple(sig)
    memo = _tree_memo.get(root)
    if memo is not None and memo[0] == signature:
        return memo[1]
    h = hashlib.sha256()
    for p in files:
        rel = p.relative_to(root).as_posix().encode()
        data = p.read_bytes()
        h.update(struct.pack("<Q", len(rel)) + rel + struct.pack("<Q", len(data)) + data)
    digest = h.hexdigest()
    _tree_memo[root] = (signature, digest)
    return digest


def _compiler_version(cxx: Sequence[str]) -> str:
    key = tuple(cxx)
    mtime = Path(cxx[0]).stat().st_mtime_ns
    memo = _version_memo.get(key)
    if memo is not None and memo[0] == mtime:
        return memo[1]
    proc = subprocess.run([*cxx, "--version"], capture_output=True, text=True, check=False)
    version = proc.stdout + proc.stderr
    _version_memo[key] = (mtime, version)
    return version


def _flags(extra_flags: Sequence[str]) -> list[str]:
    return [
        CXX_STD,
        *OPT_FLAGS,
        "-isystem",
        str(ap_types_dir()),
        "-I",
        str(include_dir()),
        "-I",
        str(support_dir()),
        *extra_flags,
    ]


def _cache_key(source: str, cxx: Sequence[str], flags: Sequence[str]) -> str:
    h = hashlib.sha256()

    def part(label: str, value: str | bytes) -> None:
        data = value.encode() if isinstance(value, str) else value
        h.update(label.encode() + b"\0" + struct.pack("<Q", len(data)) + data)

    part("version", _CACHE_VERSION)
    part("source", source)
    part("include", _tree_digest(include_dir()))
    part("support", _tree_digest(support_dir()))
    part("ap_types", _tree_digest(ap_types_dir()))
    part("compiler", _compiler_version(cxx))
    part("command", "\0".join([*cxx, *flags]))
    return h.hexdigest()


def _safe_name(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]", "_", name).strip(".")
    return cleaned[:64] or "kernel"


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _compile(cxx: Sequence[str], flags: Sequence[str], src: Path, exe: Path) -> None:
    """Compile src to a temporary file next to exe, then atomically rename it."""
    fd, tmp_name = tempfile.mkstemp(dir=exe.parent, prefix=f".{exe.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    cmd = [*cxx, *flags, str(src), "-o", str(tmp)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise CsimCompileError(proc.stderr or proc.stdout, src, cmd)
        os.replace(tmp, exe)
    finally:
        tmp.unlink(missing_ok=True)


def build(source: str, name: str = "kernel", extra_flags: Sequence[str] = ()) -> Path:
    """Compile a C++ harness (a full program with ``main``) and return the
    executable's path; reuse the cached binary if the key matches.

    Flags: ``-std=c++14 -O1 -isystem <ap_types> -I <include> -I <csim_support>``
    followed by ``extra_flags`` (e.g. ``["-fsanitize=undefined"]``; part of
    the key). ``name`` only labels the cached files.

    Raises:
        CsimCompileError: g++ failed (carries stderr and the kept source path).
        RuntimeError: no compiler or no ap_types headers.
    """
    cxx = compiler()
    flags = _flags(extra_flags)
    key = _cache_key(source, cxx, flags)
    folder = cache_dir()
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{_safe_name(name)}-{key[:32]}"
    exe = folder / stem
    if exe.is_file() and os.access(exe, os.X_OK):
        return exe
    src = folder / f"{stem}.cpp"
    _write_atomic(src, source.encode())
    _compile(cxx, flags, src, exe)
    return exe


# --------------------------------------------------------------------------
# Protocol
# --------------------------------------------------------------------------


def _as_wire_array(name: str, value: Any) -> np.ndarray:
    """Convert one input to a contiguous little-endian int64/float32/float64 array."""
    arr = np.asarray(value)
    kind = arr.dtype.kind
    if kind in "biu":
        if kind == "u" and arr.dtype.itemsize == 8 and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
            raise ValueError(f"input {name!r}: uint64 value {int(arr.max())} does not fit in int64")
        wire = np.dtype("<i8")
    elif kind == "f" and arr.dtype.itemsize in (4, 8):
        wire = np.dtype("<f4") if arr.dtype.itemsize == 4 else np.dtype("<f8")
    else:
        raise TypeError(
            f"input {name!r}: unsupported dtype {arr.dtype} "
            "(integers/bool go as int64; floats must be float32 or float64)"
        )
    return np.asarray(arr, dtype=wire, order="C")


def encode(arrays: Mapping[str, Any]) -> bytes:
    """Serialize named arrays into one protocol stream (see module doc)."""
    parts = [MAGIC]
    for name, value in arrays.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"array names must be non-empty strings, got {name!r}")
        arr = _as_wire_array(name, value)
        raw = name.encode()
        parts.append(struct.pack("<I", len(raw)) + raw)
        parts.append(struct.pack("<BI", DTYPE_CODES[arr.dtype], arr.ndim))
        parts.append(struct.pack(f"<{arr.ndim}Q", *arr.shape))
        parts.append(arr.tobytes(order="C"))
    parts.append(struct.pack("<I", 0))
    return b"".join(parts)


def decode(data: bytes) -> dict[str, np.ndarray]:
    """Parse one protocol stream; raise ValueError if it is malformed."""
    view = memoryview(data)
    if bytes(view[:4]) != MAGIC:
        raise ValueError(f"stream does not start with magic {MAGIC!r} (got {bytes(view[:16])!r})")
    pos = 4

    def take(n: int, what: str) -> memoryview:
        nonlocal pos
        if n > len(view) - pos:
            raise ValueError(f"truncated stream while reading {what} at byte {pos}")
        chunk = view[pos : pos + n]
        pos += n
        return chunk

    out: dict[str, np.ndarray] = {}
    while True:
        (name_len,) = struct.unpack("<I", take(4, "name length"))
        if name_len == 0:
            break
        name = bytes(take(name_len, "name")).decode()
        code, ndim = struct.unpack("<BI", take(5, f"dtype/ndim of {name!r}"))
        if code not in _CODE_DTYPES:
            raise ValueError(f"array {name!r}: unknown dtype code {code}")
        if name in out:
            raise ValueError(f"duplicate array {name!r}")
        shape = struct.unpack(f"<{ndim}Q", take(8 * ndim, f"dims of {name!r}"))
        dtype = _CODE_DTYPES[code]
        payload = take(math.prod(shape) * dtype.itemsize, f"data of {name!r}")
        out[name] = np.frombuffer(payload, dtype=dtype).astype(_NATIVE[code]).reshape(shape)
    if pos != len(view):
        raise ValueError(f"{len(view) - pos} trailing bytes after the terminator")
    return out


# --------------------------------------------------------------------------
# Run
# --------------------------------------------------------------------------


def run(
    source: str,
    inputs: Mapping[str, Any],
    name: str = "kernel",
    timeout: float | None = 60,
    extra_flags: Sequence[str] = (),
) -> dict[str, np.ndarray]:
    """Build (cached) and run a harness: ``inputs`` go to its stdin, the arrays
    it writes with ``csim::Out`` are returned (shapes preserved).

    Inputs: numpy arrays or scalars of integer/bool dtype (sent as int64),
    float32 or float64. Outputs: int64 / float32 / float64 arrays.

    Raises:
        CsimCompileError: see :func:`build`.
        CsimRunError: non-zero exit (e.g. 3 for a ``csim_io`` usage error such
            as a missing input), timeout, or malformed output stream.
    """
    payload = encode(inputs)
    exe = build(source, name=name, extra_flags=extra_flags)
    try:
        proc = subprocess.run([str(exe)], input=payload, capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        stderr = (exc.stderr or b"").decode(errors="replace")
        raise CsimRunError(f"harness timed out after {timeout} s", None, stderr, exe) from None
    stderr = proc.stderr.decode(errors="replace")
    if proc.returncode != 0:
        how = (
            f"killed by signal {-proc.returncode}" if proc.returncode < 0 else f"exited with status {proc.returncode}"
        )
        raise CsimRunError(f"harness {how}", proc.returncode, stderr, exe)
    try:
        return decode(proc.stdout)
    except ValueError as exc:
        raise CsimRunError(
            f"malformed output stream ({exc}); harnesses must write stdout only through csim::Out "
            "(print debug output to stderr)",
            None,
            stderr,
            exe,
        ) from None
