"""Yosys cross-check of the dataflow resource model (accel/dataflow.py) against mvau.v.

    python -m codesign.bench.dataflow_crosscheck [--write] [--fit]

Synthesises ``sim/rtl/mvau.v`` at the configurations of :data:`CONFIGS` with Yosys
(``codesign.sim.yosys.synth``: ``synth_xilinx -family xcup -flatten -noiopad``, cached
under ``~/.cache/codesign/yosys``; about 10-50 s each when cold) and compares LUT, FF,
DSP48E2 and RAMB18 with :func:`codesign.accel.dataflow.mvau_resources` of the same layer
and folding. Ratios are model / Yosys; LUTs count LUTRAM at the LUTs it occupies
(``codesign.sim.yosys.lut_equivalent``). Every ratio must lie within
``1 ± THRESHOLD`` (25 %).

``--write`` rewrites ``accel/dataflow_calibration.json`` (sorted keys, no timestamps:
the same tools and sources give the same file). ``--fit`` prints the least-squares fit
of the Yosys-fitted LUT coefficients (relative errors) from which ``COEFFS`` was set.
``OUT_BIAS`` is 0 in every configuration: Yosys's ``chparam`` does not take negative
values, and the constant it adds costs nothing measurable.

The pooling unit ``sim/rtl/pool.v`` is checked the same way at :data:`POOL_CONFIGS`
against :func:`codesign.accel.dataflow.pool_resources` (key ``pool_configs`` of the
calibration file; kept apart from ``configs``, which are the MVAU's).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from codesign.accel import dataflow as D

__all__ = ["CONFIGS", "POOL_CONFIGS", "pool_of", "pool_crosscheck", "CALIBRATION_PATH", "THRESHOLD", "layer_of", "model_counts", "yosys_counts",
           "crosscheck", "calibration_doc", "fit"]

CALIBRATION_PATH = Path(D.__file__).resolve().parent / "dataflow_calibration.json"
THRESHOLD = 0.25
KEYS = ("lut", "ff", "dsp", "bram18")

#: id -> mvau.v parameters. Binary (LUTRAM and RAMB18 weights, 1 and 3 thresholds),
#: 2x2 / 4x4 (unsigned activations) / 8x8 DSP low-bit, several PE x SIMD shapes.
CONFIGS: dict[str, dict[str, int]] = {
    "binary 64x64 PE4 SIMD32 NT1": dict(MH=64, MW=64, PE=4, SIMD=32, WB=1, AB=1, BINARY=1, NT=1),
    "binary 64x576 PE4 SIMD32 NT1 (BRAM)": dict(MH=64, MW=576, PE=4, SIMD=32, WB=1, AB=1, BINARY=1, NT=1),
    "binary 32x256 PE8 SIMD64 NT3": dict(MH=32, MW=256, PE=8, SIMD=64, WB=1, AB=1, BINARY=1, NT=3),
    "w2a2 32x64 PE4 SIMD16 NT3": dict(MH=32, MW=64, PE=4, SIMD=16, WB=2, AB=2, NT=3),
    "w4a4u 32x64 PE4 SIMD8 NT15": dict(MH=32, MW=64, PE=4, SIMD=8, WB=4, AB=4, A_SIGNED=0, NT=15),
    "w4a4 64x32 PE8 SIMD4 NT3": dict(MH=64, MW=32, PE=8, SIMD=4, WB=4, AB=4, NT=3),
    "w8a8 dsp 16x64 PE2 SIMD8 NT15": dict(MH=16, MW=64, PE=2, SIMD=8, WB=8, AB=8, RESTYPE=1, NT=15),
}


#: id -> pool.v parameters: LUTRAM line buffers (8-bit), a RAMB18 line buffer, a 3x3
#: window with padding on 1 lane group (delay line in FFs), 3x3/2 with padding (shift
#: registers), bipolar (1-bit) codes.
POOL_CONFIGS: dict[str, dict[str, int]] = {
    "pool 2x2/2 C64 P4 int8 16x16": dict(C=64, P=4, H=16, W=16, K=2, S=2, PAD=0, B=8, SIGNED=1),
    "pool 2x2/2 C256 P4 uint4 32x32 (BRAM)": dict(C=256, P=4, H=32, W=32, K=2, S=2, PAD=0, B=4, SIGNED=0),
    "pool 3x3/1 p1 C16 P16 int2 8x8": dict(C=16, P=16, H=8, W=8, K=3, S=1, PAD=1, B=2, SIGNED=1),
    "pool 3x3/2 p1 C64 P8 int8 16x16": dict(C=64, P=8, H=16, W=16, K=3, S=2, PAD=1, B=8, SIGNED=1),
    "pool 2x2/2 C64 P8 bipolar 16x16": dict(C=64, P=8, H=16, W=16, K=2, S=2, PAD=0, B=1, SIGNED=0),
}


def pool_of(p: Mapping[str, int]) -> tuple[D.Pool, int]:
    """The cost model's pool and lane count for pool.v parameters ``p``."""
    return D.Pool("pool", C=p["C"], ifm_h=p["H"], ifm_w=p["W"], k=p["K"], stride=p["S"], pad=p["PAD"],
                  bits=p["B"]), p["P"]


def pool_crosscheck(ids=None) -> list[dict[str, Any]]:
    """One row per pool configuration: parameters, Yosys counts, model counts, ratios."""
    from codesign.sim.yosys import synth

    rows = []
    for cid, p in POOL_CONFIGS.items():
        if ids and cid not in ids:
            continue
        c = synth("pool", ["pool.v"], p)
        y = {"lut": c.lut, "ff": c.ff, "dsp": c.dsp, "bram18": c.bram18, "carry": c.carry}
        r = D.pool_resources(*pool_of(p)).rounded()
        m = {k: int(r[k]) for k in KEYS}
        rows.append({"id": cid, "params": dict(sorted(p.items())), "yosys": y, "model": m,
                     "ratio": {k: _ratio(m[k], y[k]) for k in KEYS}})
    return rows


def layer_of(p: Mapping[str, int]) -> D.Layer:
    """The cost model's layer for mvau.v parameters ``p`` (NT = 2^out_bits - 1)."""
    binary = p.get("BINARY", 0) == 1
    nt = p.get("NT", 1)
    if nt & (nt + 1):
        raise ValueError(f"NT={nt} is not 2^b - 1: the cost model's layers have NT = 2^out_bits - 1")
    res = "auto" if binary else ("dsp" if p.get("RESTYPE", 0) else "lut")
    return D.Layer("mvau", p["MH"], p["MW"], 1, p["WB"], p["AB"], "binary" if binary else "lowbit",
                   bool(p.get("A_SIGNED", 1)), out_bits=int(nt).bit_length(), res_type=res)


def model_counts(p: Mapping[str, int], coeffs: Mapping[str, float] | None = None) -> dict[str, int]:
    r = D.mvau_resources(layer_of(p), p["PE"], p["SIMD"], coeffs).rounded()
    return {k: int(r[k]) for k in KEYS}


def yosys_counts(p: Mapping[str, int]) -> dict[str, Any]:
    from codesign.sim.yosys import synth

    c = synth("mvau", ["mvau.v"], p)
    return {"lut": c.lut, "ff": c.ff, "dsp": c.dsp, "bram18": c.bram18, "carry": c.carry}


def _ratio(m: int, y: int) -> float:
    if y == 0:
        return 1.0 if m == 0 else float("inf")
    return round(m / y, 4)


def crosscheck(ids=None) -> list[dict[str, Any]]:
    """One row per configuration: parameters, Yosys counts, model counts, ratios."""
    rows = []
    for cid, p in CONFIGS.items():
        if ids and cid not in ids:
            continue
        y, m = yosys_counts(p), model_counts(p)
        rows.append({"id": cid, "params": dict(sorted(p.items())), "yosys": y, "model": m,
                     "ratio": {k: _ratio(m[k], y[k]) for k in KEYS}})
    return rows


def calibration_doc(rows, pool_rows=None) -> dict[str, Any]:
    doc = {"about": "Yosys synthesis of sim/rtl/mvau.v against accel/dataflow.py's mvau_resources "
                    "(configs) and of sim/rtl/pool.v against pool_resources (pool_configs) "
                    "(bench/dataflow_crosscheck.py --write). ratio = model / Yosys; lut counts LUTRAM and "
                    "shift registers in LUTs.",
           "threshold": THRESHOLD, "coefficients": {k: D.COEFFS[k] for k in sorted(D.COEFFS)},
           "configs": rows}
    if pool_rows is not None:
        doc["pool_configs"] = pool_rows
    return doc


def fit() -> dict[str, float]:
    """Relative least-squares fit of lut_mult_per_pp_bit, lut_tree_per_bit,
    lut_xnor_pop_per_lane and lut_cmp_per_bit to the Yosys LUTs, with the memories, the
    accumulators and the control taken from the model."""
    A, b = [], []
    for p in CONFIGS.values():
        L = layer_of(p)
        PE, S = p["PE"], p["SIMD"]
        w = D.widths(L, S)
        parts = D.mvau_resources(L, PE, S, parts=True)
        binary, dsp = L.mode == "binary", D.mult_on_dsp(L)
        fixed = (sum(parts[k].lut for k in ("weights", "input_buffer", "thresholds", "control"))
                 + parts["accumulators"].lut)
        f = [0 if (binary or dsp) else PE * S * w["AE"] * w["WE"], 0 if binary else PE * (S - 1) * w["PW"],
             PE * S if binary else 0, PE * L.NT * w["TW"]]
        y = yosys_counts(p)["lut"]
        A.append(np.array(f, float) / y)
        b.append((y - fixed) / y)
    x, *_ = np.linalg.lstsq(np.array(A), np.array(b), rcond=None)
    return dict(zip(("lut_mult_per_pp_bit", "lut_tree_per_bit", "lut_xnor_pop_per_lane", "lut_cmp_per_bit"),
                    np.round(x, 3).tolist()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", action="store_true", help=f"rewrite {CALIBRATION_PATH.name}")
    ap.add_argument("--fit", action="store_true", help="print the least-squares LUT coefficients")
    args = ap.parse_args(argv)
    rows = crosscheck()
    pool_rows = pool_crosscheck()
    bad = 0
    print(f"{'configuration':40s} " + " ".join(f"{k:>17s}" for k in KEYS))
    for r in rows + pool_rows:
        cells = []
        for k in KEYS:
            ok = abs(r["ratio"][k] - 1) <= THRESHOLD
            bad += not ok
            cells.append(f"{r['model'][k]:>5d}/{r['yosys'][k]:<5d} {r['ratio'][k]:5.2f}{'' if ok else '!'}")
        print(f"{r['id']:40s} " + " ".join(f"{c:>17s}" for c in cells))
    if args.fit:
        print("fit:", fit())
    if args.write:
        CALIBRATION_PATH.write_text(json.dumps(calibration_doc(rows, pool_rows), indent=1, sort_keys=True) + "\n")
        print(f"wrote {CALIBRATION_PATH}")
    print(f"{bad} ratio(s) outside 1 ± {THRESHOLD}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
