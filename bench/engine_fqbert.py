"""The engine's cost model on BERT-base against FQ-BERT's published implementations.

    python -m codesign.bench.engine_fqbert [--config base] [--boards zcu102 zcu111] [--json out.json]

Prints (all figures are cost-model **estimates**, docs/engine.md §4 + accel/engine.py):

1. the board assumptions (clock range, DDR bandwidth to the PL, static power);
2. the power fit (one global dynamic scale) and its residuals on FQ-BERT's two boards;
3. the calibration: our model of FQ-BERT's own foldings (P = 12, dsp1, 214 MHz) against
   its Table III rows, with the ratios ours / published;
4. per board: the folding search's choice (clock enumerated over the board's range, and at
   214 MHz and the board's target clock), latency, fps, power, fps/W, resources next to
   FQ-BERT's published row with ratios, the per-layer cycle breakdown, the latency goal
   (11 ms ZCU102, 6.5 ms ZCU111) and the Pareto fronts;
5. what-if sensitivities to single coefficients (not the model's answer: design options).
"""
from __future__ import annotations

import argparse
import json
import time

from codesign.accel import engine as E
from codesign.accel.boards import get_board

RES = ("lut", "ff", "dsp", "bram18", "uram")


def _fold(f: E.Folding) -> str:
    return (f"P_dsp={f.P_dsp} ({f.packing}) P_lut={f.P_lut} N={f.N} M={f.M} L_sm={f.L_sm} L_ln={f.L_ln} "
            f"@ {f.clock_mhz:g} MHz")


def _ratio(a, b) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def board_assumptions(boards) -> None:
    print("== Board model (assumptions, accel/boards.py)")
    for name in boards:
        b = get_board(name)
        print(f"  {name}: clock {b.clock_min_mhz:g}-{b.clock_max_mhz:g} MHz (target {b.target_clock_mhz:g}), "
              f"DDR to PL {b.ddr_gbps:.1f} GB/s ({b.ddr_pl_efficiency:.0%} of {b.ddr_peak_gbps:g}), "
              f"static {b.power.static_w:.2f} W (PS {b.power.ps_w:g} + DDR {b.power.ddr_w:g} + "
              f"PL static {b.power.pl_static_w:g} + board {b.power.board_w:g})")
    print()


def power_fit() -> dict:
    fit = E.fit_power_scale()
    print(f"== Power fit: dynamic scale k = {fit['scale']:.4f} (one parameter, two published powers)")
    for r in fit["rows"]:
        print(f"  {r['board']} ({r['N']},{r['M']}): static {r['static_w']:.2f} + dynamic {r['dynamic_w']:.2f} = "
              f"{r['model_w']:.2f} W vs published {r['published_w']:g} W, residual {r['residual_w']:+.3f} W")
    print()
    return fit


def calibration() -> list[dict]:
    rows = E.calibrate_fqbert()
    print("== Calibration: our model of FQ-BERT's foldings (P=12, dsp1, 214 MHz, L_sm=L_ln=M) vs Table III")
    keys = ("latency_ms", "lut", "ff", "dsp", "bram18", "uram", "power_w", "fps_per_w")
    head = "".join(f"{r['board'] + ' (' + str(r['N']) + ',' + str(r['M']) + ')':>33s}" for r in rows)
    print(f"  {'':11s}{head}")
    print(f"  {'':11s}" + f"{'ours':>12s}{'published':>12s}{'ratio':>9s}" * len(rows))
    for k in keys:
        cells = ""
        for r in rows:
            o, p = r["ours"][k], r["published"][k]
            cells += f"{o:>12,.4g}" if isinstance(o, float) else f"{o:>12,}"
            cells += f"{'-' if p is None else format(p, ',.4g') if isinstance(p, float) else format(p, ','):>12s}"
            cells += f"{_ratio(o, p):>9s}"
        print(f"  {k:11s}{cells}")
    print("  Gaps: latency ~0.80-0.82: the model counts the RTL's exact cycles (LayerNorm rows pipelined);\n"
          "  FQ-BERT's HLS adds loop pipeline fill/flush per tile and task synchronisation. BRAM ~0.6-0.75:\n"
          "  FQ-BERT's HLS dataflow double-buffers intermediates; we count the live activations once (URAM\n"
          "  on ZCU111). LUT ~0.9-1.3 and DSP ~1.2-1.3: the resource model is Yosys-calibrated on *our* RTL;\n"
          "  its narrow requantizer (107 LUT, 2 DSPs per PE) is cheap, its LayerNorm lanes (a 24-stage\n"
          "  divider each) and per-port softmax exp tables cost more than FQ-BERT's HLS; power follows the LUTs.")
    print()
    return [{k: v for k, v in r.items() if k != "estimate"} for r in rows]


def one_board(cfg: str, name: str, front: int) -> dict:
    b = get_board(name)
    pub = next(r for r in E.FQBERT_TABLE3 if r["board"] == name and r["power_w"] is not None)
    out = {}
    print(f"== {cfg} on {name}")
    for label, clock in (("best over the clock range", None), ("at 214 MHz (FQ-BERT's clock)", 214.0),
                         ("at the target clock", b.target_clock_mhz)):
        t0 = time.perf_counter()
        res = E.search(cfg, b, clock=clock)
        dt = time.perf_counter() - t0
        e = res.best
        out[label] = {"seconds": dt, **res.as_dict()}
        print(f"-- {label}: search {dt:.2f} s, {res.feasible:,} feasible of {res.evaluated:,}")
        print(f"   folding: {_fold(e.folding)}")
        print(f"   latency {e.latency_ms:.3f} ms, {e.fps:.1f} fps, power {e.power_w:.2f} W, "
              f"{e.fps_per_w:.2f} fps/W, DDR {e.ddr_gbps:.2f} GB/s of {b.ddr_gbps:.1f}")
        if clock is None:
            c2 = E.search(cfg, b, clock=None, packings=E.DSP_PACKINGS).best
            print(f"   with dsp2c allowed (DSP-cascade chains; their DSP48E2 synthesis path is not "
                  f"simulated here): {c2.latency_ms:.3f} ms, {_fold(c2.folding)}")
        if cfg == "base":
            goal = E.GOALS_MS[name]
            print(f"   goal {goal} ms: {'MET' if e.latency_ms <= goal else 'not met'} "
                  f"({e.latency_ms / goal:.2f}x the goal)")
        if clock is None:
            print(f"   {'':8s}{'ours':>10s}{'FQ-BERT':>10s}{'ratio':>7s}{'capacity':>10s}{'util':>7s}")
            for k in RES:
                pv = "n/r" if pub[k] is None else format(pub[k], ",")
                print(f"   {k:8s}{e.resources[k]:>10,}{pv:>10s}{_ratio(e.resources[k], pub[k]):>7s}"
                      f"{b.resources()[k]:>10,}{e.utilisation[k]:>7.1%}")
            for k, fmt in (("latency_ms", ".3f"), ("power_w", ".2f"), ("fps_per_w", ".2f")):
                print(f"   {k:10s}{getattr(e, k):>8{fmt}}{pub[k]:>10}{_ratio(getattr(e, k), pub[k]):>7s}")
            per = e.cycles["per_layer"]
            print("   cycles per layer: " + ", ".join(f"{k} {v:,}" for k, v in per.items()))
            print("   components (lut/dsp/bram18): " + ", ".join(
                f"{k} {v['lut']:,}/{v['dsp']:,}/{v['bram18']:,}" for k, v in e.components.items()))
            for fr in ("power", "lut"):
                pts = res.pareto[fr]
                step = max(1, len(pts) // front)
                print(f"   Pareto front, latency vs {fr} ({len(pts)} points, every {step}):")
                for p in pts[::step]:
                    f = p["folding"]
                    print(f"     {p['latency_ms']:9.3f} ms {p['power_w']:6.2f} W {p['lut']:>8,} LUT "
                          f"{p['dsp']:>5,} DSP  P_dsp={f['P_dsp']} ({f['packing']}) P_lut={f['P_lut']} "
                          f"N={f['N']} M={f['M']} L_sm={f['L_sm']} L_ln={f['L_ln']} @ {f['clock_mhz']:g}")
    print()
    return out


WHAT_IF = {
    "ternary adder trees (LUT6+CARRY8 3-input adds: ~half the tree LUTs)":
        {"tree_lut_per_bit": 0.5, "tree_ff_per_bit": 0.6},
    "LayerNorm divider as reciprocal-multiply (no per-lane restoring divider; +3 DSP/lane)":
        {"ln_div_stage_lut": 4, "ln_div_stage_ff": 10, "ln_lane_dsp": 5},
    "requantizer on one DSP (2-cycle multiply, outputs >= 2 cycles apart)": {"requant_dsp": 1},
}


def what_if(cfg: str, boards) -> dict:
    print("== What-if (single design options, NOT the model's answer), best over the clock range")
    out = {}
    for label, over in WHAT_IF.items():
        c = E.coefficients(**over)
        for name in boards:
            e = E.search(cfg, name, coeffs=c).best
            out[f"{label} / {name}"] = {"latency_ms": e.latency_ms, "folding": e.folding.as_dict()}
            print(f"  {name}: {e.latency_ms:7.3f} ms  {_fold(e.folding)}   <- {label}")
    c = E.coefficients(**{k: v for over in WHAT_IF.values() for k, v in over.items()})
    for name in boards:
        e = E.search(cfg, name, coeffs=c).best
        out[f"all of the above / {name}"] = {"latency_ms": e.latency_ms, "folding": e.folding.as_dict()}
        print(f"  {name}: {e.latency_ms:7.3f} ms  {_fold(e.folding)}   <- all of the above")
    print()
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="base", choices=tuple(E.PRESET_SHAPES))
    ap.add_argument("--boards", nargs="+", default=["zcu102", "zcu111"])
    ap.add_argument("--front", type=int, default=12, help="Pareto points to print per front")
    ap.add_argument("--no-what-if", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="also write everything as JSON")
    args = ap.parse_args(argv)
    print(f"Estimates: {E.ESTIMATE_LABEL}.\n")
    doc = {"label": E.ESTIMATE_LABEL}
    board_assumptions(args.boards)
    doc["power_fit"] = power_fit()
    doc["calibration"] = calibration()
    doc["boards"] = {b: one_board(args.config, b, args.front) for b in args.boards}
    if not args.no_what_if:
        doc["what_if"] = what_if(args.config, args.boards)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(doc, fh, indent=1, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
