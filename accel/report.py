"""``report.json`` and ``report.md`` of a build (keys documented in ``docs/report.md``).

Only what the flow has measured or computed exactly is given a number: bit widths,
packed weight bytes and the compression against fp32 come from the IR's constants, op
counts from its ops, csim figures from the C-simulation.

Resources, latency, throughput and power of **FQ-BERT** builds are **estimates** of the
engine's cost model (``codesign.accel.engine``, docs/engine.md): the folding search's
fastest folding for the build's config, board and clock, labelled with
``engine.ESTIMATE_LABEL`` wherever they appear.

Every other build (user QONNX CNNs, MLPs, BNNs) gets **estimates** of the CNN dataflow
cost model (``codesign.accel.dataflow``, docs/dataflow.md): the IR's conv2d / matmul /
xnor_popcount ops become MVAU layers (``codesign.accel.dataflow_ir``), the folding search
picks the smallest initiation interval within 85 % of the board at the build's clock, and
the report carries per-layer folding, cycles and resources, labelled with
:data:`DATAFLOW_LABEL`. The ops that model does not cover are listed by name in
``dataflow.not_modelled`` and their cost is not estimated. An IR without any such layer
keeps the figures ``null``, marked ``"pending engine issue"``. Nothing is invented.
"""
from __future__ import annotations

import copy
import json
import math
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from codesign.accel.boards import Board
# the dataflow search's resource limit (each of LUT, FF, DSP, RAMB18), as FQ-BERT's; defined
# with the folding plan that the emit step and this report share
from codesign.accel.folding import DATAFLOW_LIMIT

__all__ = ["make_report", "write", "weight_summary", "dataflow_estimates", "mvau_stage_label", "emitted_summary",
           "uses_dataflow", "PUBLISHED_FQBERT", "PENDING", "RESOURCE_KEYS", "DATAFLOW_LABEL", "DATAFLOW_LIMIT"]

PENDING = "pending engine issue"
RESOURCE_KEYS = ("lut", "ff", "dsp", "bram18", "uram")
NOT_ESTIMATED = "not estimated yet"

#: The label of every figure from the CNN dataflow cost model.
DATAFLOW_LABEL = ("cost model (docs/dataflow.md: accel/dataflow.py cycles, exact for sim/rtl/mvau.v by "
                  "tests/test_rtl_mvau.py; resources fitted to Yosys synthesis of mvau.v, "
                  "accel/dataflow_calibration.json; sliding-window units estimated without RTL; power: "
                  "accel/boards.py PowerModel with engine.POWER_SCALE); latency at an assumed clock; "
                  "ops in dataflow.not_modelled are not costed")

#: FQ-BERT's published figures (Liu et al., "Hardware Acceleration of Fully Quantized BERT
#: for Efficient Natural Language Processing", DATE 2021), BERT-base, 4-bit weights / 8-bit
#: activations, 214 MHz, 12 PUs. ``boards`` holds the Table IV row (latency, power, fps/W)
#: and the resources of the same (N, M); ``table3`` every Table III row.
PUBLISHED_FQBERT: dict[str, Any] = {
    "source": "FQ-BERT (Liu et al., DATE 2021), BERT-base, w4/a8",
    "clock_mhz": 214.0,
    "compression_vs_fp32": 7.94,
    "boards": {
        "zcu102": {"N": 8, "M": 16, "latency_ms": 43.89, "power_w": 9.8, "fps_per_w": 2.32, "dsp": 1751,
                   "lut": 123_157, "ff": 124_433, "bram18": 838, "uram": 0},
        "zcu111": {"N": 16, "M": 16, "latency_ms": 23.79, "power_w": 13.2, "fps_per_w": 3.18, "dsp": 3287,
                   "lut": 189_724, "ff": 201_469, "bram18": 679, "uram": None},
    },
    "table3": [
        {"board": "zcu102", "N": 8, "M": 16, "bram18": 838, "dsp": 1751, "ff": 124_433, "lut": 123_157,
         "latency_ms": 43.89},
        {"board": "zcu102", "N": 16, "M": 8, "bram18": 877, "dsp": 1671, "ff": 151_010, "lut": 154_192,
         "latency_ms": 45.35},
        {"board": "zcu111", "N": 16, "M": 16, "bram18": 679, "dsp": 3287, "ff": 201_469, "lut": 189_724,
         "latency_ms": 23.79},
    ],
    "notes": "ZCU111's URAM use is not reported",
}


def _bits_count(items) -> dict[str, int]:
    """{bits as a string: number of tensors}, sorted by bits."""
    c = Counter(int(b) for b in items)
    return {str(k): c[k] for k in sorted(c)}


def weight_summary(ir) -> dict[str, Any]:
    """Bit widths and packed sizes of the IR's weights, biases, activations and accumulators.

    Weights: constant ``w`` inputs of ``matmul`` ops; biases: their ``bias`` inputs;
    activations: integer code tensors; accumulators: ``acc`` tensors. ``weights_bytes`` packs
    each weight tensor at its bit width (``ceil(numel·bits/8)``); ``compression_vs_fp32`` is
    ``4·numel / weights_bytes`` over the same tensors.
    """
    w_names, b_names = [], []
    for op in ir.ops:
        if op.op != "matmul":
            continue
        if len(op.inputs) > 1 and op.inputs[1] in ir.constants:
            w_names.append(op.inputs[1])
        if len(op.inputs) > 2 and op.inputs[2] in ir.constants:
            b_names.append(op.inputs[2])
    w_names = list(dict.fromkeys(w_names))
    b_names = list(dict.fromkeys(b_names))
    w_elems = sum(int(ir.constants[n].values.size) for n in w_names)
    w_bytes = sum(math.ceil(ir.constants[n].values.size * ir.constants[n].type.bits / 8) for n in w_names)
    b_bytes = sum(math.ceil(ir.constants[n].values.size * ir.constants[n].type.bits / 8) for n in b_names)
    acts = [t.type.bits for t in ir.tensors.values() if t.kind == "code"]
    accs = [t.acc_bits for t in ir.tensors.values() if t.kind == "acc"]
    bit_widths = {
        "weights": _bits_count(ir.constants[n].type.bits for n in w_names),
        "bias": _bits_count(ir.constants[n].type.bits for n in b_names),
        "activations": _bits_count(acts),
        "accumulators": _bits_count(accs),
        "weight_elements": w_elems,
        "bias_bytes": b_bytes,
        "counts": "bit width -> number of tensors",
    }
    ratio = round(4.0 * w_elems / w_bytes, 4) if w_bytes else None
    return {"bit_widths": bit_widths, "weights_bytes": w_bytes, "compression_vs_fp32": ratio}


def uses_dataflow(model: str, params: dict | None) -> bool:
    """Whether a build's estimates come from the CNN dataflow model (everything but FQ-BERT,
    whose report runs the engine's folding search)."""
    return not (model == "fqbert" and params is not None)


def make_report(*, ir, model: str, source: str, board: Board, clock_mhz: float, config: str | None, seed: int,
                csim: dict, hls: dict, golden: dict, seconds: dict, params: dict | None = None,
                folding_plan=None, emitted: dict | None = None) -> dict[str, Any]:
    """The report document (docs/report.md).

    ``folding_plan``: the build's :func:`codesign.accel.folding.plan` (the search the HLS
    kernels were emitted with); without it the dataflow search runs here (same answer: it is
    deterministic). ``emitted``: what the emit step did with that folding,
    ``{"folding": [FoldChoice.as_dict(), ...] or None, "note": one line}``
    (:func:`emitted_summary` turns it into ``dataflow.emitted_folding`` and
    ``dataflow.emitted_equals_search``)."""
    w = weight_summary(ir)
    doc: dict[str, Any] = {
        "format": "codesign-report/1",
        "model": model,
        "source": source,
        "config": config,
        "seed": seed,
        "board": board.name,
        "part": board.part,
        "clock_mhz": clock_mhz,
        **w,
        "resources": {**{k: None for k in RESOURCE_KEYS}, "estimate": PENDING},
        "capacity": board.resources(),
        "latency_ms": None,
        "fps": None,
        "power_w": None,
        "fps_per_w": None,
        "estimates": PENDING,
        "csim": dict(csim),
        "hls": dict(hls),
        "golden": {"cases": golden["cases"], "inputs": sorted(golden["inputs"]),
                   "outputs": sorted(golden["outputs"])},
        "ops": dict(sorted(Counter(o.op for o in ir.ops).items())),
        "targets": dict(sorted(Counter(o.target for o in ir.ops).items())),
        "notes": len(ir.notes),
        "seconds": dict(seconds),
    }
    if not uses_dataflow(model, params):
        doc["fqbert"] = {"config": params["config"], "scope": (
            "IR = encoder layers + pooler + classifier (codes); embeddings run on the host, not in the IR; "
            "weights_bytes covers the IR's matmul weights only")}
        doc["published"] = PUBLISHED_FQBERT
        doc.update(engine_estimates(params["config"], board, clock_mhz))
    else:
        doc.update(dataflow_estimates(ir, board, clock_mhz, plan=folding_plan))
        if "dataflow" in doc:
            hls = folding_plan.hls_folding(ir) if folding_plan is not None and folding_plan.ok else None
            doc["dataflow"].update(emitted_summary(doc["dataflow"], emitted, hls))
    return doc


def emitted_summary(dataflow: dict[str, Any], emitted: dict | None,
                    hls: dict[str, tuple[int, int]] | None = None) -> dict[str, Any]:
    """``emitted_folding``, ``emitted_equals_search`` and ``emitted_note`` of the report's
    ``dataflow`` section.

    ``emitted_folding``: per layer of ``dataflow.folding`` (same order) the folding its HLS
    kernel was emitted with: ``name``, ``op``, ``kernel``, ``PE``, ``SIMD``, ``requested``
    (the search's PE/SIMD), ``equal`` and ``note`` (why it differs; ``null`` when equal);
    ``null`` when no HLS project was emitted with a folding. ``emitted_equals_search``:
    whether every layer's emitted (PE, SIMD) is the search's (``null`` without a search
    folding or an emitted one), where ``hls`` (``FoldingPlan.hls_folding``) names the HLS
    form of a search folding (a bipolar padded conv: SIMD/2 lanes, the same cycles).
    ``emitted_note``: one line saying which case holds."""
    search = {f["name"]: (f["PE"], f["SIMD"]) for f in dataflow.get("folding", [])}
    if hls:
        search = {n: tuple(hls.get(n, f)) for n, f in search.items()}
    got = None if emitted is None else emitted.get("folding")
    if got is None:
        note = (emitted or {}).get("note") or "no HLS project was emitted with a folding"
        return {"emitted_folding": None, "emitted_equals_search": None, "emitted_note": note}
    by_name = {f["name"]: f for f in got}
    rows = []
    for name, (pe, simd) in search.items():
        f = by_name.get(name)
        if f is None:  # the emitter was not asked for this layer: PE = SIMD = 1 (cannot happen in a build)
            rows.append({"name": name, "op": None, "kernel": None, "PE": 1, "SIMD": 1,
                         "requested": {"PE": pe, "SIMD": simd}, "equal": (pe, simd) == (1, 1),
                         "note": "not passed to the emitter: emitted with PE = SIMD = 1"})
        else:
            rows.append(dict(f))
    extra = sorted(set(by_name) - set(search))
    equal = bool(search) and not extra and all((r["PE"], r["SIMD"]) == search[r["name"]] for r in rows)
    if equal:
        note = f"every layer's HLS kernel is emitted with the search's folding ({len(rows)} layers)"
    else:
        differ = [r["name"] for r in rows if (r["PE"], r["SIMD"]) != search[r["name"]]] + extra
        note = f"emitted folding differs from the search's for {', '.join(differ)} (see each layer's note)"
    return {"emitted_folding": rows, "emitted_equals_search": equal, "emitted_note": note}


def _r(x: float, nd: int) -> float:
    return float(round(float(x), nd))


def _g(x: float, digits: int = 6) -> float:
    """``x`` to ``digits`` significant digits (dataflow figures span µs to s)."""
    return float(f"{float(x):.{digits}g}")


@lru_cache(maxsize=16)
def _search(shape: tuple, board_name: str, clock_mhz: float):
    from codesign.accel import engine
    from codesign.accel.boards import get_board

    return engine.search(dict(shape), get_board(board_name), clock=clock_mhz)


#: The Yosys cross-check of the engine's resource model (bench/yosys_crosscheck.py --write).
YOSYS_CALIBRATION = Path(__file__).resolve().parent / "yosys_calibration.json"


@lru_cache(maxsize=1)
def _yosys_calibration() -> dict[str, Any] | None:
    if not YOSYS_CALIBRATION.is_file():
        return None
    doc = json.loads(YOSYS_CALIBRATION.read_text(encoding="utf-8"))
    return {"source": "accel/yosys_calibration.json", "tool": doc["yosys"],
            "flow": doc["flow"], "threshold": doc["threshold"], "ratio": "model / Yosys",
            "summary": doc["summary"],
            "ratios": {r["id"]: {k: r["ratio"][k] for k in ("lut", "ff", "dsp", "bram18")} for r in doc["configs"]}}


def yosys_crosscheck() -> dict[str, Any] | None:
    """``report.json["yosys"]``: the ratios (cost model / Yosys) of the RTL modules in
    accel/yosys_calibration.json, per configuration, and their summary (min, max, how many
    within the threshold, per resource); ``None`` when the file is missing."""
    doc = _yosys_calibration()
    return copy.deepcopy(doc)


def engine_estimates(config: dict, board: Board, clock_mhz: float) -> dict[str, Any]:
    """The report keys filled by the engine's cost model for an FQ-BERT encoder of shape
    ``config`` (``hidden``, ``layers``, ``heads``, ``ffn``, ``max_seq``) on ``board`` at
    ``clock_mhz``: the fastest folding within 85 % of every resource (``engine.search``), its
    resources, latency, fps, power, fps/W and per-layer cycles, and the model of FQ-BERT's
    own folding on this board next to the published row. All estimates."""
    from codesign.accel import engine

    shape = tuple(sorted((k, int(config[k])) for k in ("hidden", "layers", "heads", "ffn", "max_seq")))
    res = _search(shape, board.name, float(clock_mhz))
    label = engine.ESTIMATE_LABEL
    if res.best is None:
        return {"estimates": f"{label}; no folding fits {res.limit:.0%} of {board.name}"}
    e = res.best
    pub = PUBLISHED_FQBERT["boards"].get(board.name)
    calib = None
    if pub is not None:
        f = engine.evaluate("base", engine.fqbert_folding(pub["N"], pub["M"]), board, limit=1.0)
        ratio = {k: getattr(f, k) / pub[k] for k in ("latency_ms", "power_w", "fps_per_w")}
        ratio.update({k: (f.resources[k] / pub[k] if pub.get(k) else None) for k in RESOURCE_KEYS})
        calib = {"folding": f.folding.as_dict(), "config": "base", "latency_ms": _r(f.latency_ms, 4),
                 "power_w": _r(f.power_w, 3), "fps_per_w": _r(f.fps_per_w, 4), "resources": f.resources,
                 "ratio_to_published": {k: (None if v is None else _r(v, 4)) for k, v in ratio.items()}}
    fit = engine.fit_power_scale()
    return {
        "resources": {**e.resources, "estimate": label},
        "latency_ms": _r(e.latency_ms, 4),
        "fps": _r(e.fps, 3),
        "power_w": _r(e.power_w, 3),
        "fps_per_w": _r(e.fps_per_w, 4),
        "estimates": label,
        "folding": e.folding.as_dict(),
        "cycles": copy.deepcopy(e.cycles),  # the search result is cached: never share its dicts
        "engine": {
            "estimate": label,
            "limit": res.limit,
            "utilisation": {k: round(v, 4) for k, v in e.utilisation.items()},
            "components": copy.deepcopy(e.components),
            "ddr_gbps": _r(e.ddr_gbps, 3),
            "ddr_available_gbps": _r(board.ddr_gbps, 3),
            "power": {"static_w": _r(board.power.static_w, 3), "dynamic_scale": _r(fit["scale"], 4),
                      "fit_residuals_w": {f"{r['board']} ({r['N']},{r['M']})": _r(r["residual_w"], 4)
                                          for r in fit["rows"]}},
            "search": {"evaluated": res.evaluated, "feasible": res.feasible, "clocks": list(res.clocks)},
            "host_ms": None,  # embeddings and classifier on the ARM: not estimated
            "fqbert_folding_model": calib,
        },
        "yosys": yosys_crosscheck(),
    }


# ---------------------------------------------------------------------------------------
# CNN dataflow estimates (every build but FQ-BERT)

#: The Yosys cross-check of the dataflow model's MVAU resources (bench/dataflow_crosscheck.py --write).
DATAFLOW_CALIBRATION = Path(__file__).resolve().parent / "dataflow_calibration.json"


@lru_cache(maxsize=1)
def _dataflow_calibration() -> dict[str, Any] | None:
    if not DATAFLOW_CALIBRATION.is_file():
        return None
    doc = json.loads(DATAFLOW_CALIBRATION.read_text(encoding="utf-8"))
    keys = ("lut", "ff", "dsp", "bram18")
    thr = float(doc["threshold"])
    ratios = {r["id"]: {k: r["ratio"][k] for k in keys} for r in doc["configs"]}
    summary = {}
    for k in keys:
        v = [q[k] for q in ratios.values() if q[k] is not None]
        summary[k] = {"min": min(v), "max": max(v), "within": sum(abs(x - 1) <= thr for x in v), "of": len(v)}
    return {"source": "accel/dataflow_calibration.json", "rtl": "sim/rtl/mvau.v", "threshold": thr,
            "ratio": "model / Yosys", "ratios": ratios, "summary": summary,
            "cycles": "mvau_cycles == RTL simulation (tests/test_rtl_mvau.py, Verilator and Icarus)"}


def _boundary_bytes(ir) -> tuple[int, int]:
    """Bytes per image (batch axis excluded) of the codes entering the accelerator from host
    ops and leaving it to host ops, packed at their widths (``acc_bits`` or code bits)."""
    host = {o.name for o in ir.ops if getattr(o, "target", "accel") == "host"}
    made_by_host = {t for o in ir.ops if o.name in host for t in o.outputs}
    made_by_accel = {t for o in ir.ops if o.name not in host for t in o.outputs}
    ins = {t for o in ir.ops if o.name not in host for t in o.inputs if t in made_by_host}
    outs = {t for o in ir.ops if o.name in host for t in o.inputs if t in made_by_accel}

    def nbytes(name: str) -> int:
        t = ir.tensors[name]
        bits = t.acc_bits if t.kind == "acc" else t.type.bits
        return math.ceil(math.prod(t.shape[1:]) * bits / 8)

    return sum(nbytes(t) for t in sorted(ins)), sum(nbytes(t) for t in sorted(outs))


def mvau_stage_label(mapped, ir) -> str:
    """The output stage mvau.v builds for a mapped layer (:class:`codesign.accel.dataflow_ir.MappedLayer`),
    as report.json's ``dataflow.layers[].mvau_stage``: ``"thr N"`` (``N = NT`` thresholds per
    channel), ``"rq Bs"`` / ``"rq Bu"`` (the requant mode, ``B``-bit signed / unsigned codes:
    the IR requant's ``out_type``, or for a threshold stage converted to requant the sign of
    its ``out_bias``, as ``dataflow_ir.requant_stage_params`` derives ``Y``) or ``"acc"`` (no
    stage: the raw accumulator)."""
    L = mapped.layer
    if L.requant:
        stage = next((o for o in ir.ops if o.name == mapped.stage), None)
        if stage is None:
            raise ValueError(f"mvau_stage_label: {mapped.op}'s requant stage {mapped.stage!r} is not an op of the IR")
        if stage.op == "requant":
            from codesign.accel.ir import CodeType

            signed = CodeType.from_json(stage.attrs["out_type"], f"op '{stage.name}' out_type").signed
        else:
            signed = int(stage.attrs.get("out_bias", 0)) < 0
        return f"rq {L.out_bits}{'s' if signed else 'u'}"
    return f"thr {L.NT}" if L.NT else "acc"


def dataflow_estimates(ir, board: Board, clock_mhz: float, limit: float = DATAFLOW_LIMIT,
                       plan=None) -> dict[str, Any]:
    """The report keys filled by the CNN dataflow cost model for ``ir`` on ``board`` at
    ``clock_mhz`` (docs/report.md, "Dataflow estimates"): ``resources``, ``latency_ms``, ``fps``,
    ``power_w``, ``fps_per_w``, ``estimates`` (the label), ``cycles`` and ``dataflow`` (folding,
    per-layer cycles and resources, utilisation, power assumptions, ``not_modelled``,
    mapping notes, Pareto points, the MVAU's Yosys calibration). All estimates.

    ``plan``: a :func:`codesign.accel.folding.plan` of ``ir`` for ``board``, ``clock_mhz``
    and ``limit`` (e.g. with a target frame rate) to report instead of searching here.

    Returns ``{}`` for an IR without ops (nothing to say), and only ``dataflow`` (mapping,
    ``not_modelled``) when no op maps to a layer: the figures then stay ``null``, pending.
    Deterministic: the same IR, board and clock give the same values (no timings)."""
    from codesign.accel import dataflow as D
    from codesign.accel import engine
    from codesign.accel import folding as F

    if not list(ir.ops):
        return {}
    if plan is None:
        plan = F.plan(ir, board, float(clock_mhz), limit=limit)
    elif not plan.matches(board, clock_mhz, limit):
        raise ValueError(f"dataflow_estimates: the folding plan is for {plan.board} at {plan.clock_mhz:g} MHz, "
                         f"limit {plan.limit}; the report is for {board.name} at {float(clock_mhz):g} MHz, "
                         f"limit {limit}")
    m = plan.mapping
    layers = plan.layers
    base = {"estimate": DATAFLOW_LABEL, "limit": limit, "clock_mhz": float(clock_mhz),
            "layers": [{**x.as_dict(), "mvau_stage": mvau_stage_label(x, ir)} for x in m.layers],
            "not_modelled": copy.deepcopy(m.not_modelled),
            "notes": list(m.notes)}
    if plan.target_fps is not None:
        base["target_fps"] = plan.target_fps
    if not layers:
        return {"dataflow": {**base, "estimate": f"{PENDING}: no conv2d, matmul or xnor_popcount layer "
                                                 "with constant weights for the dataflow cost model"}}
    if plan.result is None:
        why = plan.error
        return {"resources": {**{k: None for k in RESOURCE_KEYS}, "estimate": f"{DATAFLOW_LABEL}; {why}"},
                "estimates": f"{DATAFLOW_LABEL}; {why}", "dataflow": {**base, "search": why}}
    res = plan.result
    e = res.estimate
    resources = {**{k: int(e.resources[k]) for k in D.KEYS}, "uram": 0}  # the model maps no memory to URAM
    fps = e.fps  # streaming: a new image every II cycles
    in_b, out_b = _boundary_bytes(ir)
    gbps = (in_b + out_b) * fps / 1e9
    pw = float(engine.power_w(board, resources, float(clock_mhz), gbps)) if board.power is not None else None
    notes = list(m.notes)
    if gbps > board.ddr_gbps:
        notes.append(f"image I/O at {fps:.6g} fps needs {gbps:.4g} GB/s, more than the {board.ddr_gbps:.4g} GB/s "
                     f"the PL gets from DDR: streaming would be DDR-bound at "
                     f"{board.ddr_gbps * 1e9 / (in_b + out_b):.6g} fps (not applied to the figures)")
    layers_out = [{**x, "PE": c.PE, "SIMD": c.SIMD, "cycles": int(c.cycles),
                   "window_fill": int(D.window_fill_cycles(l.window, c.SIMD)),
                   "resources": {k: int(c.resources[k]) for k in D.KEYS}}
                  for x, l, c in zip(base["layers"], layers, e.layers)]
    pm = board.power
    power = None if pm is None else {
        "static_w": _r(pm.static_w, 3), "dynamic_w": _g(pw - pm.static_w), "dynamic_scale": _r(engine.POWER_SCALE, 4),
        "toggle_rate": pm.toggle_rate,
        "assumption": (f"board static power + engine.POWER_SCALE x the PowerModel's per-resource dynamic power "
                       f"at {clock_mhz:g} MHz, every layer clocked continuously (streaming at full throughput), "
                       f"logic toggling at {pm.toggle_rate:.1%} and block RAM at 50 % enable (XPE defaults), "
                       "scale fitted to FQ-BERT's published board power; plus the image I/O over DDR")}
    dataflow = {
        **base,
        "layers": layers_out,
        "notes": notes,
        "objective": res.objective,
        "folding": [{"name": c.name, "PE": c.PE, "SIMD": c.SIMD, "MH": l.MH, "MW": l.MW, "vectors": l.vectors}
                    for c, l in zip(e.layers, layers)],
        "utilisation": {**{k: round(e.utilisation[k], 4) for k in D.KEYS},
                        "uram": 0.0},
        "fps_batch1": _g(1e3 / e.latency_ms),
        "io_bytes_per_image": {"in": in_b, "out": out_b},
        "ddr_gbps": _g(gbps),
        "ddr_available_gbps": _r(board.ddr_gbps, 3),
        "power": power,
        "host_ms": None,  # quantize/dequantize on the ARM: not estimated
        "pareto": [{"ii": int(p["ii"]), "fps": _g(p["fps"]), **{k: int(p[k]) for k in D.KEYS},
                    "folding": [[int(a), int(b)] for a, b in p["folding"]]} for p in res.pareto],
        "search_notes": list(res.notes),
        "calibration": copy.deepcopy(_dataflow_calibration()),
    }
    return {
        "resources": {**resources, "estimate": DATAFLOW_LABEL},
        "latency_ms": _g(e.latency_ms),
        "fps": _g(fps),
        "power_w": None if pw is None else _g(pw),
        "fps_per_w": None if pw is None else _g(fps / pw),
        "estimates": DATAFLOW_LABEL,
        "cycles": {"per_layer": {c.name: int(c.cycles) for c in e.layers}, "ii": int(e.ii),
                   "latency": int(e.latency), "latency_bound": int(e.latency_bound), "bottleneck": e.bottleneck},
        "dataflow": dataflow,
    }


def _fmt(v, unit: str = "") -> str:
    if v is None:
        return NOT_ESTIMATED
    if isinstance(v, float):
        return f"{v:g}{unit}"
    if isinstance(v, int):
        return f"{v:,}{unit}"
    return f"{v}{unit}"


def to_markdown(doc: dict[str, Any]) -> str:
    lines = [f"# codesign build: {doc['model']} on {doc['board']}", ""]
    lines += [f"- board: {doc['board']} ({doc['part']}), clock {doc['clock_mhz']:g} MHz"]
    if doc.get("config"):
        lines += [f"- config: {doc['config']}, seed {doc['seed']}"]
    else:
        lines += [f"- seed: {doc['seed']}"]
    bw = doc["bit_widths"]

    def bits(d):
        return ", ".join(f"{k}-bit x{v}" for k, v in d.items()) or "none"

    lines += [f"- weights: {bits(bw['weights'])} ({bw['weight_elements']:,} elements, "
              f"{doc['weights_bytes']:,} bytes packed; {_fmt(doc['compression_vs_fp32'])}x vs fp32)",
              f"- biases: {bits(bw['bias'])} ({bw['bias_bytes']:,} bytes)",
              f"- activations: {bits(bw['activations'])}",
              f"- accumulators: {bits(bw['accumulators'])}",
              "- IR ops: " + ", ".join(f"{k} {v}" for k, v in doc["ops"].items()), ""]
    c = doc["csim"]
    if c.get("skipped"):
        csim = f"skipped ({c['skipped']})"
    else:
        csim = (f"{'passed' if c['passed'] else 'FAILED'}: {c['cases']} case(s), "
                f"{c['mismatches']} mismatch(es)")
    hls = "hls/" if doc["hls"].get("emitted") else f"not emitted ({doc['hls'].get('reason', '')})"
    lines += ["## Verification", "", f"- golden vectors: {doc['golden']['cases']} case(s) in golden/",
              f"- HLS project: {hls}", f"- C-simulation: {csim}", ""]
    est = doc.get("engine")
    df = doc.get("dataflow")
    if est is None and df is not None and "folding" in df:
        lines += _dataflow_markdown(doc)
    elif est is None:
        why = df["search"] if df is not None and "search" in df else None
        lines += ["## Resources and performance", "",
                  (f"The dataflow cost model found no folding: {why}. " if why else "") +
                  f"Estimates are {PENDING}: resources, latency, throughput and power are "
                  f"{NOT_ESTIMATED}.", "",
                  "| resource | used | available |", "|---|---:|---:|"]
        for k in RESOURCE_KEYS:
            lines.append(f"| {k} | {_fmt(doc['resources'][k])} | {doc['capacity'][k]:,} |")
        lines += ["", "| figure | ours |", "|---|---|",
                  f"| latency (ms) | {_fmt(doc['latency_ms'])} |", f"| throughput (fps) | {_fmt(doc['fps'])} |",
                  f"| power (W) | {_fmt(doc['power_w'])} |", f"| fps/W | {_fmt(doc['fps_per_w'])} |", ""]
        if df is not None:
            lines += _emitted_markdown(df)
            lines += _not_modelled_markdown(df)
    else:
        lines += _engine_markdown(doc)
    pub = doc.get("published")
    if pub:
        lines += _published_markdown(doc, pub)
    if doc.get("yosys"):
        lines += _yosys_markdown(doc["yosys"])
    s = doc["seconds"]
    lines += ["## Timings", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in s.items()]
    return "\n".join(lines) + "\n"


def _engine_markdown(doc: dict[str, Any]) -> list[str]:
    """Estimated resources, figures and cycle breakdown of an FQ-BERT build."""
    est, f = doc["engine"], doc["folding"]
    lines = ["## Resources and performance (estimates)", "",
             f"**Estimates** of the {doc['estimates']}.", "",
             f"Folding (fastest within {est['limit']:.0%} of every resource, "
             f"{est['search']['feasible']:,} feasible of {est['search']['evaluated']:,} evaluated): "
             f"P_dsp={f['P_dsp']} ({f['packing']}), P_lut={f['P_lut']}, N={f['N']}, M={f['M']}, "
             f"L_sm={f['L_sm']}, L_ln={f['L_ln']}, clock {f['clock_mhz']:g} MHz (assumed).", "",
             "| resource | used (estimate) | available | utilisation |", "|---|---:|---:|---:|"]
    for k in RESOURCE_KEYS:
        lines.append(f"| {k} | {_fmt(doc['resources'][k])} | {doc['capacity'][k]:,} | "
                     f"{100 * est['utilisation'][k]:.1f} % |")
    lines += ["", "| figure | ours (estimate) |", "|---|---|",
              f"| latency, encoder (ms) | {_fmt(doc['latency_ms'])} |",
              f"| throughput (fps, batch 1) | {_fmt(doc['fps'])} |",
              f"| power, board (W) | {_fmt(doc['power_w'])} |", f"| fps/W | {_fmt(doc['fps_per_w'])} |",
              f"| DDR traffic (GB/s, of {est['ddr_available_gbps']:g} available) | {_fmt(est['ddr_gbps'])} |",
              f"| host: embeddings + classifier on the ARM (ms) | {_fmt(est['host_ms'])} |", ""]
    c = doc["cycles"]
    per = c["per_layer"]
    lines += [f"Cycles per encoder layer (docs/engine.md §4), x{c['layers']} layers = "
              f"{c['per_inference']:,} cycles per inference:", "",
              "| part | cycles | share |", "|---|---:|---:|"]
    for k, v in per.items():
        if k != "total":
            lines.append(f"| {k} | {v:,} | {100 * v / per['total']:.1f} % |")
    lines += [f"| total | {per['total']:,} | 100 % |", ""]
    return lines


def _dataflow_markdown(doc: dict[str, Any]) -> list[str]:
    """Estimated resources, figures and the per-layer table of a dataflow (CNN/MLP/BNN) build."""
    df, c = doc["dataflow"], doc["cycles"]
    lines = ["## Resources and performance (estimates)", "",
             f"**Estimates** of the {doc['estimates']}.", "",
             f"Folding: {df['objective']}, at {df['clock_mhz']:g} MHz (assumed). Every conv2d / matmul is one "
             "MVAU (docs/dataflow.md), a conv's sliding window one SWU; all layers stream at once.", "",
             "| resource | used (estimate) | available | utilisation |", "|---|---:|---:|---:|"]
    for k in RESOURCE_KEYS:
        lines.append(f"| {k} | {_fmt(doc['resources'][k])} | {doc['capacity'][k]:,} | "
                     f"{100 * df['utilisation'][k]:.1f} % |")
    p = df["power"]
    lines += ["", "| figure | ours (estimate) |", "|---|---|",
              f"| latency, one image through the empty pipeline (ms) | {_fmt(doc['latency_ms'])} "
              f"({c['latency']:,} cycles) |",
              f"| throughput, streaming (fps = clock / II) | {_fmt(doc['fps'])} (II = {c['ii']:,} cycles, "
              f"bottleneck {c['bottleneck']}) |",
              f"| throughput, one image at a time (fps = 1000 / latency) | {_fmt(df['fps_batch1'])} |",
              f"| power, board, streaming (W) | {_fmt(doc['power_w'])} |",
              f"| fps/W (streaming) | {_fmt(doc['fps_per_w'])} |",
              f"| DDR traffic, image I/O (GB/s, of {df['ddr_available_gbps']:g} available) | "
              f"{_fmt(df['ddr_gbps'])} |",
              f"| host: quantize / dequantize on the ARM (ms) | {_fmt(df['host_ms'])} |", ""]
    if p is not None:
        lines += [f"Power: {p['assumption']} (static {p['static_w']:g} W, dynamic {p['dynamic_w']:g} W, "
                  f"scale {p['dynamic_scale']:g}).", ""]
    lines += [f"Per layer (cycles per image; II = the slowest layer; FINN's no-overlap latency bound "
              f"{c['latency_bound']:,} cycles):", "",
              "| layer | op | MH | MW | vectors | W/A bits | mode | out stage | PE | SIMD | cycles | LUT | FF | DSP "
              "| BRAM18 |", "|---|---|---:|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for l in df["layers"]:
        r = l["resources"]
        mark = " (bottleneck)" if l["name"] == c["bottleneck"] else ""
        win = f" {l['window']['k']}x{l['window']['k']}/s{l['window']['stride']}" if l["window"] else ""
        stage = f" + {l['output_stage']}" if l["output_stage"] else ""
        pl = l.get("pool")
        if pl:
            stage += f" + {pl['op']} ({pl.get('mode', 'max')} {pl['k']}x{pl['k']}/s{pl['stride']})"
        lines.append(f"| {l['name']}{mark} | {l['op']}{win}{stage} | {l['MH']:,} | {l['MW']:,} | {l['vectors']:,} | "
                     f"{l['WB']}/{l['AB']}{'' if l['a_signed'] else 'u'} | {l['mode']} | {_stage_cell(l)} | {l['PE']} | "
                     f"{l['SIMD']} | {l['cycles']:,} | {r['lut']:,} | {r['ff']:,} | {r['dsp']:,} | {r['bram18']:,} |")
    lines.append("")
    lines += _emitted_markdown(df)
    if df["notes"]:
        lines += ["Mapping notes:", ""] + [f"- {n}" for n in df["notes"]] + [""]
    lines += _not_modelled_markdown(df)
    cal = df.get("calibration")
    if cal:
        lines += ["MVAU calibration (`" + cal["source"] + "`): cycles: " + cal["cycles"] + "; resources, ratio "
                  f"{cal['ratio']} of `{cal['rtl']}`, within {cal['threshold']:.0%}: " +
                  ", ".join(f"{k} {v['within']}/{v['of']} ({v['min']:.2f}-{v['max']:.2f})"
                            for k, v in cal["summary"].items()) + ".", ""]
    return lines


def _stage_cell(l: dict[str, Any]) -> str:
    """The per-layer table's output-stage cell: report.json's ``mvau_stage``; for reports
    written before that key, ``thr NT`` or ``acc`` from ``NT`` (a requant-mode layer of such a
    report shows ``rq`` and its bits, without the sign)."""
    if "mvau_stage" in l:
        return l["mvau_stage"]
    if l.get("out_stage") == "requant":
        return f"rq {l['out_bits']}"
    return f"thr {l['NT']}" if l["NT"] else "acc"


def _emitted_markdown(df: dict[str, Any]) -> list[str]:
    """The folding the HLS kernels were emitted with, against the search's (per layer when
    they differ)."""
    if "emitted_note" not in df:
        return []
    rows = df.get("emitted_folding")
    if rows is None:
        return [f"HLS folding: {df['emitted_note']}.", ""]
    if df.get("emitted_equals_search"):
        return [f"HLS folding: {df['emitted_note']}: " +
                ", ".join(f"{r['name']} {r['PE']}x{r['SIMD']}" for r in rows) + " (PE x SIMD).", ""]
    lines = [f"HLS folding: {df['emitted_note']}.", "",
             "| layer | kernel | search PE x SIMD | emitted PE x SIMD | note |", "|---|---|---|---|---|"]
    for r in rows:
        q = r["requested"]
        lines.append(f"| {r['name']} | {r['kernel'] or '-'} | {q['PE']} x {q['SIMD']} | {r['PE']} x {r['SIMD']} | "
                     f"{r['note'] or 'as chosen'} |")
    return lines + [""]


def _not_modelled_markdown(df: dict[str, Any]) -> list[str]:
    """The IR ops the dataflow cost model does not cost, by name."""
    if not df["not_modelled"]:
        return ["Every IR op is covered by the dataflow cost model.", ""]
    lines = ["Not modelled (not costed; their resources and cycles are not in the figures above):", "",
             "| op | kind | target | why |", "|---|---|---|---|"]
    lines += [f"| {d['name']} | {d['op']} | {d['target']} | {d['reason']} |" for d in df["not_modelled"]]
    return lines + [""]


def _published_markdown(doc: dict[str, Any], pub: dict[str, Any]) -> list[str]:
    """FQ-BERT's published row for the board, the model of FQ-BERT's folding, ours."""
    p = pub["boards"].get(doc["board"], {})
    est = doc.get("engine") or {}
    model = est.get("fqbert_folding_model")
    lines = [f"## Against FQ-BERT's published figures ({doc['board']})", "",
             f"Published: {pub['source']}, {pub['clock_mhz']:g} MHz, 12 PUs, (N, M) = "
             f"({p.get('N')}, {p.get('M')}); BERT-base, seq 128. Ours: config `{doc['config']}` at "
             f"{doc['clock_mhz']:g} MHz" + (" (estimates)." if model else "."), ""]
    if model:
        lines += ["The middle column is our cost model of FQ-BERT's own folding (BERT-base, dsp1, 214 MHz, "
                  "L_sm = L_ln = M assumed): its ratio to the published row is the model's calibration.", "",
                  "| figure | FQ-BERT (published) | model of FQ-BERT's folding | ours (estimate) |",
                  "|---|---:|---:|---:|"]

        def row(name, key, unit_fmt=_fmt):
            mv = model["resources"].get(key) if key in RESOURCE_KEYS else model.get(key)
            ours = doc["resources"][key] if key in RESOURCE_KEYS else doc.get(key)
            pv = p.get(key)
            return (f"| {name} | {unit_fmt(pv) if pv is not None else 'not published'} | {unit_fmt(mv)} | "
                    f"{unit_fmt(ours)} |")

        lines += [row("latency (ms)", "latency_ms"), row("power (W)", "power_w"), row("fps/W", "fps_per_w"),
                  row("LUT", "lut"), row("FF", "ff"), row("DSP", "dsp"), row("BRAM18", "bram18"),
                  row("URAM", "uram"),
                  f"| clock (MHz) | {pub['clock_mhz']:g} | {pub['clock_mhz']:g} | {doc['clock_mhz']:g} |",
                  f"| weight compression vs fp32 | {pub['compression_vs_fp32']:g}x | | "
                  f"{_fmt(doc['compression_vs_fp32'])}x (IR matmul weights only) |", ""]
        others = [r for r in pub.get("table3", []) if r["board"] == doc["board"]
                  and (r["N"], r["M"]) != (p.get("N"), p.get("M"))]
        for r in others:
            lines += [f"FQ-BERT's other {doc['board']} row, (N, M) = ({r['N']}, {r['M']}): "
                      f"{r['latency_ms']:g} ms, {r['lut']:,} LUT, {r['ff']:,} FF, {r['dsp']:,} DSP, "
                      f"{r['bram18']:,} BRAM18.", ""]
        return lines
    lines += ["| figure | FQ-BERT (published) | ours |", "|---|---:|---:|",
              f"| latency (ms) | {_fmt(p.get('latency_ms'))} | {_fmt(doc['latency_ms'])} |",
              f"| power (W) | {_fmt(p.get('power_w'))} | {_fmt(doc['power_w'])} |",
              f"| fps/W | {_fmt(p.get('fps_per_w'))} | {_fmt(doc['fps_per_w'])} |",
              f"| DSP | {_fmt(p.get('dsp')) if p.get('dsp') is not None else 'not published'} | "
              f"{_fmt(doc['resources']['dsp'])} |",
              f"| clock (MHz) | {pub['clock_mhz']:g} | {doc['clock_mhz']:g} |",
              f"| weight compression vs fp32 | {pub['compression_vs_fp32']:g}x | "
              f"{_fmt(doc['compression_vs_fp32'])}x (IR matmul weights only) |", ""]
    return lines


def _yosys_markdown(y: dict[str, Any]) -> list[str]:
    """Yosys cross-check: per RTL module, the range of the ratios cost model / Yosys."""
    lines = ["## Yosys cross-check of the resource model", "",
             f"RTL modules synthesised with {y['tool']} (`{y['flow']}`) against the cost model's "
             f"components for the same hardware; ratio = model / Yosys (`{y['source']}`, written by "
             "`python -m codesign.bench.yosys_crosscheck --write`). The LUT "
             "coefficients are calibrated to Yosys, which packs LUTs less tightly than Vivado.", "",
             "| module | configs | LUT | FF | DSP | BRAM18 |", "|---|---:|---:|---:|---:|---:|"]
    by_module: dict[str, list[dict]] = {}
    for cid, q in y["ratios"].items():
        by_module.setdefault(cid.split()[0], []).append(q)

    def rng(qs, k):
        v = [q[k] for q in qs if q[k] is not None]
        if not v:
            return "-"
        lo, hi = min(v), max(v)
        return f"{lo:.2f}" if f"{lo:.2f}" == f"{hi:.2f}" else f"{lo:.2f}-{hi:.2f}"

    for mod, qs in by_module.items():
        lines.append(f"| {mod} | {len(qs)} | " + " | ".join(rng(qs, k) for k in ("lut", "ff", "dsp", "bram18")) + " |")
    within = ", ".join(f"{k} {y['summary'][k]['within']}/{y['summary'][k]['of']}"
                       for k in ("lut", "ff", "dsp", "bram18") if k in y["summary"])
    lines += ["", f"Within {y['threshold']:.0%} of Yosys: {within}.", ""]
    return lines


def write(doc: dict[str, Any], directory: str | Path) -> None:
    d = Path(directory)
    (d / "report.json").write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    (d / "report.md").write_text(to_markdown(doc), encoding="utf-8")
