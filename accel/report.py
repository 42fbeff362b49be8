"""``report.json`` and ``report.md`` of a build (keys documented in ``docs/report.md``).

Only what the flow has measured or computed exactly is given a number: bit widths,
packed weight bytes and the compression against fp32 come from the IR's constants, op
counts from its ops, csim figures from the C-simulation. Resource, latency, throughput and
power estimates come with the engine issue (cost models calibrated by Yosys); until then
they are ``null`` and marked ``"pending engine issue"``. Nothing is invented.
"""
from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path
from typing import Any

from codesign.accel.boards import Board

__all__ = ["make_report", "write", "weight_summary", "PUBLISHED_FQBERT", "PENDING", "RESOURCE_KEYS"]

PENDING = "pending engine issue"
RESOURCE_KEYS = ("lut", "ff", "dsp", "bram18", "uram")
NOT_ESTIMATED = "not estimated yet"

#: FQ-BERT's published figures (Liu et al., "Hardware Acceleration of Fully Quantized BERT
#: for Efficient Natural Language Processing", DATE 2021), BERT-base, 4-bit weights / 8-bit
#: activations, 214 MHz.
PUBLISHED_FQBERT: dict[str, Any] = {
    "source": "FQ-BERT (Liu et al., DATE 2021), BERT-base, w4/a8",
    "clock_mhz": 214.0,
    "compression_vs_fp32": 7.94,
    "boards": {
        "zcu102": {"latency_ms": 43.89, "power_w": 9.8, "fps_per_w": 2.32, "dsp": 1751},
        "zcu111": {"latency_ms": 23.79, "power_w": 13.2, "fps_per_w": 3.18, "dsp": None},
    },
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


def make_report(*, ir, model: str, source: str, board: Board, clock_mhz: float, config: str | None, seed: int,
                csim: dict, hls: dict, golden: dict, seconds: dict, params: dict | None = None) -> dict[str, Any]:
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
    if model == "fqbert" and params is not None:
        doc["fqbert"] = {"config": params["config"], "scope": (
            "IR = encoder layers + pooler + classifier (codes); embeddings run on the host, not in the IR; "
            "weights_bytes covers the IR's matmul weights only")}
        doc["published"] = PUBLISHED_FQBERT
    return doc


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
              f"- IR ops: " + ", ".join(f"{k} {v}" for k, v in doc["ops"].items()), ""]
    c = doc["csim"]
    if c.get("skipped"):
        csim = f"skipped ({c['skipped']})"
    else:
        csim = (f"{'passed' if c['passed'] else 'FAILED'}: {c['cases']} case(s), "
                f"{c['mismatches']} mismatch(es)")
    hls = "hls/" if doc["hls"].get("emitted") else f"not emitted ({doc['hls'].get('reason', '')})"
    lines += ["## Verification", "", f"- golden vectors: {doc['golden']['cases']} case(s) in golden/",
              f"- HLS project: {hls}", f"- C-simulation: {csim}", ""]
    lines += ["## Resources and performance", "",
              f"Estimates are {PENDING}: resources, latency, throughput and power are "
              f"{NOT_ESTIMATED}.", "",
              "| resource | used | available |", "|---|---:|---:|"]
    for k in RESOURCE_KEYS:
        lines.append(f"| {k} | {_fmt(doc['resources'][k])} | {doc['capacity'][k]:,} |")
    lines += ["", "| figure | ours |", "|---|---|",
              f"| latency (ms) | {_fmt(doc['latency_ms'])} |", f"| throughput (fps) | {_fmt(doc['fps'])} |",
              f"| power (W) | {_fmt(doc['power_w'])} |", f"| fps/W | {_fmt(doc['fps_per_w'])} |", ""]
    pub = doc.get("published")
    if pub:
        p = pub["boards"].get(doc["board"], {})
        lines += [f"## Against FQ-BERT's published figures ({doc['board']})", "",
                  f"Published: {pub['source']}, {pub['clock_mhz']:g} MHz. Ours: config "
                  f"`{doc['config']}` at {doc['clock_mhz']:g} MHz.", "",
                  "| figure | FQ-BERT (published) | ours |", "|---|---:|---:|",
                  f"| latency (ms) | {_fmt(p.get('latency_ms'))} | {_fmt(doc['latency_ms'])} |",
                  f"| power (W) | {_fmt(p.get('power_w'))} | {_fmt(doc['power_w'])} |",
                  f"| fps/W | {_fmt(p.get('fps_per_w'))} | {_fmt(doc['fps_per_w'])} |",
                  f"| DSP | {_fmt(p.get('dsp')) if p.get('dsp') is not None else 'not published'} | "
                  f"{_fmt(doc['resources']['dsp'])} |",
                  f"| clock (MHz) | {pub['clock_mhz']:g} | {doc['clock_mhz']:g} |",
                  f"| weight compression vs fp32 | {pub['compression_vs_fp32']:g}x | "
                  f"{_fmt(doc['compression_vs_fp32'])}x (IR matmul weights only) |", ""]
    s = doc["seconds"]
    lines += ["## Timings", "", "| step | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in s.items()]
    return "\n".join(lines) + "\n"


def write(doc: dict[str, Any], directory: str | Path) -> None:
    d = Path(directory)
    (d / "report.json").write_text(json.dumps(doc, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    (d / "report.md").write_text(to_markdown(doc), encoding="utf-8")
