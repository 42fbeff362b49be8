"""Yosys cross-check of the dataflow resource model (accel/dataflow.py) against mvau.v.

    python -m codesign.bench.dataflow_crosscheck [--write] [--fit]

Synthesises ``sim/rtl/mvau.v`` at the configurations of :data:`CONFIGS` with Yosys
(``codesign.sim.yosys.synth``: ``synth_xilinx -family xcup -flatten -noiopad``, cached
under ``~/.cache/codesign/yosys``; about 10-50 s each when cold) and compares LUT, FF,
DSP48E2 and RAMB18 with :func:`codesign.accel.dataflow.mvau_resources` of the same layer
and folding. ``CONFIGS`` holds the threshold/raw-accumulator configurations
(:data:`THRESHOLD_CONFIGS`, ``RQ = 0``: mvau.v alone) and the requant output stage's
(:data:`RQ_CALIBRATION`, ``RQ = 1``: mvau.v + requant.v, costed as
``Layer(out_stage="requant")``). Ratios are model / Yosys; LUTs count LUTRAM at the LUTs
it occupies (``codesign.sim.yosys.lut_equivalent``). Every ratio must lie within
``1 ± THRESHOLD`` (25 %).

``--write`` rewrites ``accel/dataflow_calibration.json`` (sorted keys, no timestamps:
the same tools and sources give the same file). ``--fit`` prints the least-squares fit
of the Yosys-fitted LUT coefficients (relative errors) from which ``COEFFS`` was set.
``OUT_BIAS`` is 0 in every configuration: Yosys's ``chparam`` does not take negative
values, and the constant it adds costs nothing measurable.

The pooling units are checked the same way at :data:`POOL_CONFIGS` against
:func:`codesign.accel.dataflow.pool_resources` (key ``pool_configs`` of the calibration
file; kept apart from ``configs``, which are the MVAU's): ``sim/rtl/pool.v`` (max,
:data:`MAX_POOL_CONFIGS`) and ``sim/rtl/avgpool.v`` + ``requant.v`` (average,
:data:`AVG_POOL_CONFIGS`, ids ``avg ...``; a configuration is an average pool iff its
parameters have ``OB``, which only avgpool.v has).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from codesign.accel import dataflow as D

__all__ = ["CONFIGS", "THRESHOLD_CONFIGS", "RQ_CALIBRATION", "POOL_CONFIGS", "MAX_POOL_CONFIGS", "AVG_POOL_CONFIGS",
           "pool_of", "pool_sources", "pool_yosys_counts", "pool_model_counts", "pool_crosscheck", "CALIBRATION_PATH",
           "THRESHOLD", "layer_of", "model_counts", "rq_model_counts", "mvau_sources", "yosys_counts", "crosscheck",
           "calibration_doc", "fit"]

CALIBRATION_PATH = Path(D.__file__).resolve().parent / "dataflow_calibration.json"
THRESHOLD = 0.25
KEYS = ("lut", "ff", "dsp", "bram18")

#: id -> mvau.v parameters, threshold output stage (RQ = 0). Binary (LUTRAM and RAMB18
#: weights, 1 and 3 thresholds), 2x2 / 4x4 (unsigned activations) / 8x8 DSP low-bit,
#: several PE x SIMD shapes.
THRESHOLD_CONFIGS: dict[str, dict[str, int]] = {
    "binary 64x64 PE4 SIMD32 NT1": dict(MH=64, MW=64, PE=4, SIMD=32, WB=1, AB=1, BINARY=1, NT=1),
    "binary 64x576 PE4 SIMD32 NT1 (BRAM)": dict(MH=64, MW=576, PE=4, SIMD=32, WB=1, AB=1, BINARY=1, NT=1),
    "binary 32x256 PE8 SIMD64 NT3": dict(MH=32, MW=256, PE=8, SIMD=64, WB=1, AB=1, BINARY=1, NT=3),
    "w2a2 32x64 PE4 SIMD16 NT3": dict(MH=32, MW=64, PE=4, SIMD=16, WB=2, AB=2, NT=3),
    "w4a4u 32x64 PE4 SIMD8 NT15": dict(MH=32, MW=64, PE=4, SIMD=8, WB=4, AB=4, A_SIGNED=0, NT=15),
    "w4a4 64x32 PE8 SIMD4 NT3": dict(MH=64, MW=32, PE=8, SIMD=4, WB=4, AB=4, NT=3),
    "w8a8 dsp 16x64 PE2 SIMD8 NT15": dict(MH=16, MW=64, PE=2, SIMD=8, WB=8, AB=8, RESTYPE=1, NT=15),
}

#: id -> mvau.v parameters of the requant output stage (RQ = 1, NT = 0): binary with
#: RAMB18 weights, unsigned 4-bit and 2-bit activations, DSP products with a 25-bit biased
#: accumulator (two requant DSPs), a 24-bit multiplier; 5, 6 and 8 output bits.
RQ_CALIBRATION: dict[str, dict[str, int]] = {
    "binary 64x576 PE4 SIMD32 RQ8s (BRAM)": dict(MH=64, MW=576, PE=4, SIMD=32, WB=1, AB=1, BINARY=1, NT=0, RQ=1,
                                                 RQ_BITS=8, RQ_SIGNED=1, MBITS=16, BIAS_W=16),
    "w4a4u 32x64 PE4 SIMD8 RQ8u": dict(MH=32, MW=64, PE=4, SIMD=8, WB=4, AB=4, A_SIGNED=0, NT=0, RQ=1, RQ_BITS=8,
                                       RQ_SIGNED=0, MBITS=16, BIAS_W=16),
    "w8a8 dsp 16x64 PE2 SIMD8 RQ8s b24": dict(MH=16, MW=64, PE=2, SIMD=8, WB=8, AB=8, RESTYPE=1, NT=0, RQ=1,
                                              RQ_BITS=8, RQ_SIGNED=1, MBITS=16, BIAS_W=24),
    "w2a2 32x64 PE4 SIMD16 RQ5u b12": dict(MH=32, MW=64, PE=4, SIMD=16, WB=2, AB=2, NT=0, RQ=1, RQ_BITS=5,
                                           RQ_SIGNED=0, MBITS=16, BIAS_W=12),
    "binary 64x64 PE8 SIMD32 RQ6s m24": dict(MH=64, MW=64, PE=8, SIMD=32, WB=1, AB=1, BINARY=1, NT=0, RQ=1,
                                             RQ_BITS=6, RQ_SIGNED=1, MBITS=24, BIAS_W=16),
}

#: Every MVAU configuration, in the calibration file's row order: the threshold ones, then
#: the requant ones.
CONFIGS: dict[str, dict[str, int]] = {**THRESHOLD_CONFIGS, **RQ_CALIBRATION}


#: id -> pool.v parameters: LUTRAM line buffers (8-bit), a RAMB18 line buffer, a 3x3
#: window with padding on 1 lane group (delay line in FFs), 3x3/2 with padding (shift
#: registers), bipolar (1-bit) codes (a bit on an unsigned 1-bit unit).
MAX_POOL_CONFIGS: dict[str, dict[str, int]] = {
    "pool 2x2/2 C64 P4 int8 16x16": dict(C=64, P=4, H=16, W=16, K=2, S=2, PAD=0, B=8, SIGNED=1),
    "pool 2x2/2 C256 P4 uint4 32x32 (BRAM)": dict(C=256, P=4, H=32, W=32, K=2, S=2, PAD=0, B=4, SIGNED=0),
    "pool 3x3/1 p1 C16 P16 int2 8x8": dict(C=16, P=16, H=8, W=8, K=3, S=1, PAD=1, B=2, SIGNED=1),
    "pool 3x3/2 p1 C64 P8 int8 16x16": dict(C=64, P=8, H=16, W=16, K=3, S=2, PAD=1, B=8, SIGNED=1),
    "pool 2x2/2 C64 P8 bipolar 16x16": dict(C=64, P=8, H=16, W=16, K=2, S=2, PAD=0, B=1, SIGNED=0),
}

#: id -> avgpool.v parameters (pool.v's plus the output type ``OB``, ``O_SIGNED``; a bipolar
#: input is ``B = 1, SIGNED = 1``): unsigned 2x2/2, padded signed 3x3/1 on 8 lanes, global
#: 7x7, a RAMB18 line buffer widening int4 to int8, global bipolar to int4.
AVG_POOL_CONFIGS: dict[str, dict[str, int]] = {
    "avg 2x2/2 C64 P4 uint4->u4 16x16": dict(C=64, P=4, H=16, W=16, K=2, S=2, PAD=0, B=4, SIGNED=0, OB=4,
                                             O_SIGNED=0),
    "avg 3x3/1 p1 C16 P8 int8->i8 8x8": dict(C=16, P=8, H=8, W=8, K=3, S=1, PAD=1, B=8, SIGNED=1, OB=8,
                                             O_SIGNED=1),
    "avg global 7x7 C64 P4 uint8->u8": dict(C=64, P=4, H=7, W=7, K=7, S=1, PAD=0, B=8, SIGNED=0, OB=8, O_SIGNED=0),
    "avg 2x2/2 C256 P4 int4->i8 32x32 (BRAM)": dict(C=256, P=4, H=32, W=32, K=2, S=2, PAD=0, B=4, SIGNED=1, OB=8,
                                                    O_SIGNED=1),
    "avg global 4x4 C32 P8 bipolar->i4": dict(C=32, P=8, H=4, W=4, K=4, S=1, PAD=0, B=1, SIGNED=1, OB=4,
                                              O_SIGNED=1),
}

#: Every pool configuration, in the calibration file's row order: max, then average.
POOL_CONFIGS: dict[str, dict[str, int]] = {**MAX_POOL_CONFIGS, **AVG_POOL_CONFIGS}


def _is_avg(p: Mapping[str, int]) -> bool:
    return "OB" in p


def pool_of(p: Mapping[str, int]) -> tuple[D.Pool, int]:
    """The cost model's pool and lane count for pool.v or avgpool.v parameters ``p``
    (avgpool.v iff ``p`` has ``OB``: ``Pool(mode="avg", out_bits=OB, in_signed=SIGNED)``)."""
    kw = dict(mode="avg", out_bits=p["OB"], in_signed=bool(p["SIGNED"])) if _is_avg(p) else {}
    return D.Pool("pool", C=p["C"], ifm_h=p["H"], ifm_w=p["W"], k=p["K"], stride=p["S"], pad=p["PAD"],
                  bits=p["B"], **kw), p["P"]


def pool_sources(p: Mapping[str, int]) -> tuple[str, list[str]]:
    """Yosys top and sources (names under sim/rtl/) for pool parameters ``p``."""
    return ("avgpool", ["requant.v", "avgpool.v"]) if _is_avg(p) else ("pool", ["pool.v"])


def pool_yosys_counts(p: Mapping[str, int]) -> dict[str, Any]:
    """Yosys counts (LUT, FF, DSP, RAMB18, CARRY) of the pool unit for parameters ``p``."""
    from codesign.sim.yosys import synth

    c = synth(*pool_sources(p), p)
    return {"lut": c.lut, "ff": c.ff, "dsp": c.dsp, "bram18": c.bram18, "carry": c.carry}


def pool_model_counts(p: Mapping[str, int], coeffs: Mapping[str, float] | None = None) -> dict[str, int]:
    """:func:`codesign.accel.dataflow.pool_resources` (rounded) for pool parameters ``p``."""
    r = D.pool_resources(*pool_of(p), coeffs).rounded()
    return {k: int(r[k]) for k in KEYS}


def pool_crosscheck(ids=None) -> list[dict[str, Any]]:
    """One row per pool configuration of :data:`POOL_CONFIGS` (max, then average; only
    ``ids`` when given): parameters, Yosys counts, model counts, ratios."""
    rows = []
    for cid, p in POOL_CONFIGS.items():
        if ids and cid not in ids:
            continue
        y, m = pool_yosys_counts(p), pool_model_counts(p)
        rows.append({"id": cid, "params": dict(sorted(p.items())), "yosys": y, "model": m,
                     "ratio": {k: _ratio(m[k], y[k]) for k in KEYS}})
    return rows


def layer_of(p: Mapping[str, int]) -> D.Layer:
    """The cost model's layer for mvau.v parameters ``p``: with ``RQ = 1`` the requant
    output stage (``Layer(out_stage="requant", out_bits=RQ_BITS, m_bits=MBITS,
    bias_bits=BIAS_W)``; ``NT`` must be 0), else ``NT = 2^out_bits - 1`` thresholds."""
    binary = p.get("BINARY", 0) == 1
    res = "auto" if binary else ("dsp" if p.get("RESTYPE", 0) else "lut")
    common = dict(name="mvau", MH=p["MH"], MW=p["MW"], vectors=1, WB=p["WB"], AB=p["AB"],
                  mode="binary" if binary else "lowbit", a_signed=bool(p.get("A_SIGNED", 1)), res_type=res)
    if p.get("RQ", 0):
        if p.get("NT", 0):
            raise ValueError(f"RQ=1 with NT={p['NT']}: mvau.v's requant stage needs NT = 0")
        return D.Layer(**common, out_bits=p["RQ_BITS"], out_stage="requant", m_bits=p["MBITS"],
                       bias_bits=p["BIAS_W"])
    nt = p.get("NT", 1)
    if nt & (nt + 1):
        raise ValueError(f"NT={nt} is not 2^b - 1: the cost model's layers have NT = 2^out_bits - 1")
    return D.Layer(**common, out_bits=int(nt).bit_length())


def model_counts(p: Mapping[str, int], coeffs: Mapping[str, float] | None = None) -> dict[str, int]:
    """:func:`codesign.accel.dataflow.mvau_resources` (rounded) of :func:`layer_of` ``p`` at
    its ``PE``, ``SIMD``."""
    r = D.mvau_resources(layer_of(p), p["PE"], p["SIMD"], coeffs).rounded()
    return {k: int(r[k]) for k in KEYS}


def rq_model_counts(p: Mapping[str, int], coeffs: Mapping[str, float] | None = None) -> dict[str, int]:
    """:func:`model_counts` of requant-mode parameters ``p`` (``RQ = 1`` required)."""
    if not p.get("RQ", 0):
        raise ValueError("rq_model_counts: parameters without RQ = 1; use model_counts")
    return model_counts(p, coeffs)


def mvau_sources(p: Mapping[str, int]) -> list[str]:
    """mvau.v's Yosys sources: ``mvau.v`` (plus ``requant.v`` with ``RQ = 1``)."""
    return ["mvau.v", "requant.v"] if p.get("RQ", 0) else ["mvau.v"]


def yosys_counts(p: Mapping[str, int]) -> dict[str, Any]:
    """Yosys counts (LUT, FF, DSP, RAMB18, CARRY) of mvau.v for parameters ``p``."""
    from codesign.sim.yosys import synth

    c = synth("mvau", mvau_sources(p), p)
    return {"lut": c.lut, "ff": c.ff, "dsp": c.dsp, "bram18": c.bram18, "carry": c.carry}


def _ratio(m: int, y: int) -> float:
    if y == 0:
        return 1.0 if m == 0 else float("inf")
    return round(m / y, 4)


def crosscheck(ids=None) -> list[dict[str, Any]]:
    """One row per MVAU configuration of :data:`CONFIGS` (threshold, then requant; only
    ``ids`` when given): parameters, Yosys counts, model counts, ratios."""
    rows = []
    for cid, p in CONFIGS.items():
        if ids and cid not in ids:
            continue
        y, m = yosys_counts(p), model_counts(p)
        rows.append({"id": cid, "params": dict(sorted(p.items())), "yosys": y, "model": m,
                     "ratio": {k: _ratio(m[k], y[k]) for k in KEYS}})
    return rows


def calibration_doc(rows, pool_rows=None) -> dict[str, Any]:
    """The calibration file's content: ``rows`` (``configs``), ``pool_rows``
    (``pool_configs``, when given), the threshold and every coefficient of ``D.COEFFS``."""
    doc = {"about": "Yosys synthesis of sim/rtl/mvau.v (+ requant.v where RQ = 1) against accel/dataflow.py's "
                    "mvau_resources (configs) and of sim/rtl/pool.v and avgpool.v + requant.v (ids 'avg ...') "
                    "against pool_resources (pool_configs) (bench/dataflow_crosscheck.py --write). "
                    "ratio = model / Yosys; lut counts LUTRAM and shift registers in LUTs.",
           "threshold": THRESHOLD, "coefficients": {k: D.COEFFS[k] for k in sorted(D.COEFFS)},
           "configs": rows}
    if pool_rows is not None:
        doc["pool_configs"] = pool_rows
    return doc


def fit() -> dict[str, float]:
    """Relative least-squares fit of lut_mult_per_pp_bit, lut_tree_per_bit,
    lut_xnor_pop_per_lane and lut_cmp_per_bit to the Yosys LUTs of
    :data:`THRESHOLD_CONFIGS`, with the memories, the accumulators and the control taken
    from the model."""
    A, b = [], []
    for p in THRESHOLD_CONFIGS.values():
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
