"""Synthesize codesign's RTL with Yosys for UltraScale+ and count what it maps to.

:func:`synth` runs ``synth_xilinx -family xcup -flatten -noiopad`` (Yosys ≥ 0.10; the
project machine has Debian's 0.23) on a top module with given parameters and returns the
primitive counts in the cost model's terms (:class:`Counts`):

* ``lut``: LUT1–LUT6 plus LUTs used as memory (shift registers, LUTRAM), each primitive
  at the LUTs it occupies (:data:`LUTMEM_LUTS`: a RAM64M8 is 8);
* ``ff``: FDRE/FDSE/FDCE/FDPE;
* ``dsp``: DSP48E2;
* ``bram18``: RAMB18E2 + 2·RAMB36E2;
* ``carry``: CARRY4/CARRY8 cells (reported, not compared: the cost model folds carry
  chains into its LUT figures).

Yosys's mapping is a *proxy* for Vivado's: it packs LUTs less aggressively and does not
retime, so ratios near 1 mean the cost model's structure is right, not that a Vivado run
would give these exact numbers. Results are cached by source hash, parameters and Yosys
version under ``~/.cache/codesign/yosys`` (``CODESIGN_YOSYS_CACHE`` overrides it).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Mapping, Sequence

__all__ = ["Counts", "synth", "yosys_path", "YosysError", "RTL_DIR", "lut_equivalent", "LUTMEM_LUTS"]

RTL_DIR = Path(__file__).resolve().parent / "rtl"

_LUT = re.compile(r"^LUT[1-6]$")
_FF = {"FDRE", "FDSE", "FDCE", "FDPE"}

#: LUTs per shift-register / LUTRAM primitive (UltraScale+ SLICEM).
LUTMEM_LUTS = {
    "SRL16E": 1, "SRLC16E": 1, "SRLC32E": 1,
    "RAM32X1S": 1, "RAM32X1D": 2, "RAM32M": 4, "RAM32M16": 8,
    "RAM64X1S": 1, "RAM64X1D": 2, "RAM64M": 4, "RAM64M8": 8,
    "RAM128X1S": 2, "RAM128X1D": 4, "RAM256X1S": 4, "RAM256X1D": 8, "RAM512X1S": 8,
}


def lut_equivalent(cells: Mapping[str, int]) -> int:
    """LUTs of a cell count: LUT1-6, plus shift registers and LUTRAM primitives at the
    number of LUTs each occupies."""
    n = 0
    for cell, k in cells.items():
        if _LUT.match(cell):
            n += k
        elif cell in LUTMEM_LUTS:
            n += k * LUTMEM_LUTS[cell]
        elif cell.startswith("RAM") and not cell.startswith("RAMB"):
            raise YosysError(f"unknown LUTRAM primitive {cell}: add it to LUTMEM_LUTS")
    return n


class YosysError(RuntimeError):
    """Yosys is missing or failed (the message holds the tail of its log)."""


@dataclass(frozen=True)
class Counts:
    lut: int
    ff: int
    dsp: int
    bram18: int
    carry: int
    cells: dict

    def as_dict(self) -> dict:
        return asdict(self)


def yosys_path() -> str | None:
    return shutil.which("yosys")


def _cache_root() -> Path:
    from codesign.sim.paths import cache_dir

    return cache_dir("yosys", "CODESIGN_YOSYS_CACHE")


def _version(exe: str) -> str:
    return subprocess.run([exe, "-V"], capture_output=True, text=True, check=False).stdout.strip()


def _count(cells: Mapping[str, int]) -> Counts:
    lut = lut_equivalent(cells)
    ff = sum(n for c, n in cells.items() if c in _FF)
    dsp = cells.get("DSP48E2", 0)
    bram = cells.get("RAMB18E2", 0) + 2 * cells.get("RAMB36E2", 0)
    carry = cells.get("CARRY4", 0) + cells.get("CARRY8", 0)
    return Counts(lut, ff, dsp, bram, carry, dict(sorted(cells.items())))


def synth(top: str, sources: Sequence[str | Path], params: Mapping[str, int] | None = None) -> Counts:
    """Synthesize ``top`` from ``sources`` (paths, or names under ``sim/rtl/``) with Verilog
    ``params``; return its primitive counts. Raises :class:`YosysError`."""
    exe = yosys_path()
    if exe is None:
        raise YosysError("yosys not found: install it (apt-get install yosys; `make setup` does when root)")
    files = [Path(s) if Path(s).is_absolute() or Path(s).exists() else RTL_DIR / s for s in sources]
    for f in files:
        if not f.is_file():
            raise YosysError(f"RTL source '{f}' does not exist")
    params = dict(sorted((params or {}).items()))
    h = hashlib.sha256()
    for f in files:
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    h.update(json.dumps([top, params, _version(exe)]).encode())
    cached = _cache_root() / f"{top}-{h.hexdigest()[:24]}.json"
    if cached.is_file():
        return _count(json.loads(cached.read_text())["cells"])
    chparam = " ".join(f"-set {k} {int(v)}" for k, v in params.items())
    script = (f"read_verilog -sv {' '.join(str(f) for f in files)}; "
              + (f"chparam {chparam} {top}; " if chparam else "")
              + f"synth_xilinx -family xcup -flatten -noiopad -top {top}; "
              "tee -q -o {out} stat -json")
    with tempfile.TemporaryDirectory(prefix="codesign-yosys-") as tmp:
        out = Path(tmp) / "stat.json"
        proc = subprocess.run([exe, "-q", "-l", str(Path(tmp) / "log"), "-p", script.format(out=out)],
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0 or not out.is_file():
            log = (Path(tmp) / "log").read_text(errors="replace") if (Path(tmp) / "log").is_file() else ""
            tail = " | ".join((log or proc.stderr).strip().splitlines()[-5:])
            raise YosysError(f"yosys failed on {top} {params}: {tail}")
        stat = json.loads(out.read_text())
    mods = stat["modules"]
    (name,) = [m for m in mods if m.endswith(top) or m.endswith("\\" + top)] or list(mods)[:1]
    cells = {k: int(v) for k, v in mods[name]["num_cells_by_type"].items()}
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmpf = cached.with_suffix(".tmp")
    tmpf.write_text(json.dumps({"top": top, "params": params, "cells": cells}, sort_keys=True))
    os.replace(tmpf, cached)
    return _count(cells)
