"""Yosys cross-check of the engine's resource model (accel/engine.py) against the RTL.

    python -m codesign.bench.yosys_crosscheck [--only ID ...] [--tested] [--fit] [--write]

Synthesises RTL modules of ``sim/rtl`` with Yosys (``codesign.sim.yosys.synth``:
``synth_xilinx -family xcup -flatten -noiopad``, cached) and compares LUT, FF, DSP48E2 and
RAMB18 counts with the cost model's components for **exactly what each module contains**:

* ``bitsplit_pe`` (M = 8, 16, 32 x dsp2 / dsp1 / lut / dsp2c): the lanes
  (``multipliers``; dsp2c with its skew registers and chain extraction,
  ``dsp_chain_parts``), one adder tree and one accumulator per PE (``adder_trees``,
  ``accumulators``) and the PE input stage of one PU (``pe_input_stages``: activation
  register, 8x4/8x8 select, control flags); no requantizer. A dsp2 or dsp2c instance is a
  PE pair (NPE = 2).
* ``requant``: one requantizer (``requant_units``), without the channel-parameter memory
  (the module takes M and sh as inputs).
* ``pe_array`` (G = 4, M = 8, each packing, ``ACC_OUT = 0``: the raw-accumulator bypass is
  a test port the cost model does not count): ``G`` PEs with their requantizers and
  parameter slots (``requantizers``) and one input stage.
* ``softmax_core`` (L = 2, 4): ``softmax_cores`` of one PU with ``R = NMAX``.
* ``layernorm_core`` (L = 1, 2, 4, HMAX = 768): ``layernorm_unit``, i.e. the engine's
  ``layernorm_core`` without the §7 residual add (not in the RTL).

Yosys's LUT figure here counts LUT1-LUT6, SRL16E/SRLC32E and LUTRAM **in LUTs** (a
RAM64M8 is 8 LUTs, a RAM32M16 8, a RAM128X1D 4, ...: ``lut_equivalent``), as
``codesign.sim.yosys.Counts.lut`` does; ``lut_cells`` (one per LUTRAM cell) is in the
table too (``cells`` column).
CARRY4 and MUXF7/8/9 are not LUTs (the cost model folds carry chains into its LUT
figures). Ratios are model / Yosys.

``--write`` rewrites ``accel/yosys_calibration.json`` (sorted keys, no timestamps: the
same tools and sources give the same file); ``tests/test_yosys.py`` checks it against a
fresh synthesis of the tested configurations. ``--fit`` prints the least-squares fit of
the Yosys-fitted coefficients of ``COEFFS`` (relative errors, per module family).

Not synthesised: ``softmax_core`` with L >= 8. Its exp table has 2L read ports and Yosys
0.23's ``memory_libmap`` exhausts memory on 16 ports (killed at 22 GB); the model
extrapolates the L = 2, 4 fit. A cold run of every configuration takes about 20 minutes
on two cores (``layernorm_core`` L = 4 alone about 10), later runs read the cache.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from codesign.accel import engine as E
from codesign.sim.yosys import LUTMEM_LUTS, lut_equivalent

__all__ = ["Config", "CONFIGS", "TESTED", "lut_equivalent", "yosys_counts", "model_counts", "crosscheck",
           "calibration_doc", "fit", "CALIBRATION_PATH", "THRESHOLD", "load_calibration", "summary"]

CALIBRATION_PATH = Path(E.__file__).resolve().parent / "yosys_calibration.json"
THRESHOLD = 0.25  # |model / Yosys - 1| allowed for LUT, FF, DSP (the issue's 25 %)
KEYS = ("lut", "ff", "dsp", "bram18")
PACKING = {"dsp2": 0, "dsp1": 1, "lut": 2}
#: packings synthesised as bitsplit_pe only (M = 8, 16, 32), appended after the others
PE_ONLY_PACKING = {"dsp2c": 3}



@dataclass(frozen=True)
class Config:
    """One synthesised module configuration and the cost-model components it contains."""

    id: str
    top: str
    sources: tuple[str, ...]
    params: dict = field(default_factory=dict)
    compares: str = ""

    def model(self, c: Mapping[str, float]) -> E.Res:
        return _MODELS[self.top](self.params, c)


def _bitsplit_pe(p: Mapping[str, int], c) -> E.Res:
    M, npe, pk = p["M"], p["NPE"], p["PACKING"]
    chain = pk == 3
    mult = (E.multipliers(0, npe, M, False, c) if pk == 2
            else E.multipliers(npe, 0, M, pk in (0, 3), c, chain=chain))
    return (mult + E.adder_trees(npe, M, c, npe if chain else 0) + E.accumulators(npe, c)
            + E.pe_input_stages(1, M, c))


def _pe_array(p: Mapping[str, int], c) -> E.Res:
    G, M, pk = p["G"], p["M"], p["PACKING"]
    mult = (E.multipliers(0, G, M, False, c) if pk == 2 else E.multipliers(G, 0, M, pk == 0, c))
    return (mult + E.adder_trees(G, M, c) + E.accumulators(G, c) + E.requantizers(G, c)
            + E.pe_input_stages(1, M, c))


_MODELS: dict[str, Callable[[Mapping[str, int], Mapping[str, float]], E.Res]] = {
    "bitsplit_pe": _bitsplit_pe,
    "requant": lambda p, c: E.requant_units(1, c),
    "pe_array": _pe_array,
    "softmax_core": lambda p, c: E.softmax_cores(1, p["L"], p["NMAX"], c),
    "layernorm_core": lambda p, c: E.layernorm_unit(p["L"], p["HMAX"], c),
}

_PE_SRC = ("dsp2_mul.v", "dsp2_chain.v", "bitsplit_pe.v")
_ARRAY_SRC = ("dsp2_mul.v", "dsp2_chain.v", "bitsplit_pe.v", "requant.v", "pe_array.v")  # ENGINE_SOURCES[:5]


def _configs() -> list[Config]:
    out = []
    for M in (8, 16, 32):
        for name, pk in PACKING.items():
            out.append(Config(f"bitsplit_pe M={M} {name}", "bitsplit_pe", _PE_SRC,
                              {"M": M, "NPE": 2 if name == "dsp2" else 1, "PACKING": pk},
                              "multipliers + adder_trees + accumulators (NPE PEs) + pe_input_stages (1 PU)"))
    out.append(Config("requant", "requant", ("requant.v",), {}, "requant_units (1)"))
    arrays = [(4, 8, name) for name in PACKING] + [(2, 8, "lut"), (8, 8, "lut"), (8, 16, "dsp2")]
    for G, M, name in arrays:
        out.append(Config(f"pe_array G={G} M={M} {name}", "pe_array", _ARRAY_SRC,
                          {"G": G, "M": M, "PACKING": PACKING[name], "ACC_OUT": 0},
                          "multipliers + adder_trees + accumulators + requantizers (G PEs) + pe_input_stages (1 PU)"))
    for L, n in ((2, 64), (2, 128), (4, 128), (4, 256)):
        out.append(Config(f"softmax_core L={L} NMAX={n}", "softmax_core", ("softmax_core.v",),
                          {"L": L, "NMAX": n}, "softmax_cores (P=1, L_sm=L, R=NMAX)"))
    for L in (1, 2, 4):
        out.append(Config(f"layernorm_core L={L} HMAX=768", "layernorm_core", ("layernorm_core.v",),
                          {"L": L, "HMAX": 768}, "layernorm_unit (L_ln=L, H=HMAX): no residual add"))
    for M in (8, 16, 32):
        for name, pk in PE_ONLY_PACKING.items():
            out.append(Config(f"bitsplit_pe M={M} {name}", "bitsplit_pe", _PE_SRC, {"M": M, "NPE": 2, "PACKING": pk},
                              "multipliers + dsp_chain_parts + adder_trees + accumulators (NPE PEs) "
                              "+ pe_input_stages (1 PU)"))
    return out


CONFIGS: tuple[Config, ...] = tuple(_configs())
#: The subset tests/test_yosys.py synthesises (cold: about 30 s on two cores).
TESTED: tuple[str, ...] = ("bitsplit_pe M=8 dsp2", "bitsplit_pe M=8 dsp1", "bitsplit_pe M=8 lut", "requant",
                           "softmax_core L=2 NMAX=64")


def yosys_counts(cfg: Config) -> dict[str, Any]:
    """Yosys's counts of ``cfg`` (``lut``: LUT-equivalent, ``lut_cells``: ``Counts.lut``)."""
    from codesign.sim.yosys import synth

    n = synth(cfg.top, cfg.sources, cfg.params)
    cells = sum(k for c, k in n.cells.items() if (c.startswith("LUT") and c[3:].isdigit()) or c in LUTMEM_LUTS)
    return {"lut": lut_equivalent(n.cells), "lut_cells": cells, "ff": n.ff, "dsp": n.dsp, "bram18": n.bram18,
            "carry": n.carry}


def model_counts(cfg: Config, coeffs: Mapping[str, float] | None = None) -> dict[str, int]:
    """The cost model's counts for what ``cfg`` contains (rounded up as ``Res.rounded``)."""
    r = cfg.model(E.COEFFS if coeffs is None else coeffs).rounded()
    return {k: int(r[k]) for k in KEYS}


def _ratio(model: int, yosys: int) -> float | None:
    """model / Yosys, 4 decimals; 1.0 when both are zero, None when only Yosys's is."""
    if yosys == 0:
        return 1.0 if model == 0 else None
    return round(model / yosys, 4)


def crosscheck(configs=CONFIGS, coeffs: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """One row per configuration: Yosys's counts, the model's, their ratios."""
    rows = []
    for cfg in configs:
        y = yosys_counts(cfg)
        m = model_counts(cfg, coeffs)
        rows.append({"id": cfg.id, "module": cfg.top, "params": dict(sorted(cfg.params.items())),
                     "compares": cfg.compares, "yosys": y, "model": m,
                     "ratio": {k: _ratio(m[k], y[k]) for k in KEYS}})
    return rows


def summary(rows) -> dict[str, Any]:
    """Per resource: min and max ratio and how many rows lie within ``THRESHOLD``."""
    out = {}
    for k in ("lut", "ff", "dsp", "bram18"):
        q = [r["ratio"][k] for r in rows if r["ratio"][k] is not None]
        out[k] = {"min": min(q), "max": max(q), "within": sum(abs(x - 1) <= THRESHOLD for x in q), "of": len(q)}
    return out


def calibration_doc(rows) -> dict[str, Any]:
    """The content of accel/yosys_calibration.json (deterministic)."""
    from codesign.sim.yosys import _version, yosys_path

    exe = yosys_path()
    return {
        "about": ("Yosys synthesis of sim/rtl modules against the cost model of accel/engine.py "
                  "(bench/yosys_crosscheck.py --write). ratio = model / Yosys; lut counts LUTRAM in LUTs "
                  "(lut_cells: one per LUTRAM cell)."),
        "flow": "synth_xilinx -family xcup -flatten -noiopad",
        "yosys": _version(exe) if exe else None,
        "threshold": THRESHOLD,
        "configs": rows,
        "summary": summary(rows),
        "not_synthesized": [
            {"id": "softmax_core L>=8",
             "why": "Yosys 0.23 memory_libmap exhausts memory (>22 GB) on the exp table's 2L >= 16 read ports"},
            {"id": "engine_top", "why": "not in the issue's scope (weight/activation buffers are BRAM geometry)"},
        ],
    }


def load_calibration(path: Path = CALIBRATION_PATH) -> dict[str, Any]:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def dump(doc: Mapping[str, Any]) -> str:
    return json.dumps(doc, indent=1, sort_keys=True) + "\n"


# ---------------------------------------------------------------------------------------
# least-squares fit of the Yosys-fitted coefficients

#: (rows fitted: ids starting with one of these, resource, coefficients fitted; the others
#: stay at COEFFS or at an earlier group's fit). The PE arrays of M = 8 with dsp2 / dsp1 /
#: G = 8 M = 16 are not fitted: they validate the PE fit.
FIT_GROUPS = (
    (("requant",), "lut", ("requant_lut",)),
    (("requant",), "ff", ("requant_ff",)),
    (tuple(f"bitsplit_pe M={M} {pk}" for M in (8, 16, 32) for pk in ("dsp2", "dsp1")), "lut",
     ("act_decode_lut_per_lane", "dsp2_unpack_lut", "acc_lut")),
    (tuple(f"bitsplit_pe M={M} {pk}" for M in (8, 16, 32) for pk in PACKING), "ff",
     ("dsp2_unpack_ff", "lut_mult_lane_ff", "pe_ctrl_ff")),
    (tuple(f"bitsplit_pe M={M} dsp2c" for M in (8, 16, 32)), "lut", ("dsp2c_skew_lut", "dsp2c_chain_lut")),
    (tuple(f"bitsplit_pe M={M} dsp2c" for M in (8, 16, 32)), "ff", ("dsp2c_skew_ff", "dsp2c_chain_ff")),
    (("bitsplit_pe M=8 lut", "bitsplit_pe M=16 lut", "bitsplit_pe M=32 lut", "pe_array G=2 M=8 lut",
      "pe_array G=4 M=8 lut", "pe_array G=8 M=8 lut"), "lut", ("lut_mult_lane_lut", "lut_mult_act_lut")),
    (("softmax_core",), "lut", ("sm_lane_lut", "sm_core_lut")),
    (("softmax_core",), "ff", ("sm_lane_ff", "sm_core_ff")),
    (("layernorm_core",), "lut", ("ln_lane_lut", "ln_core_lut")),
    (("layernorm_core",), "ff", ("ln_lane_ff", "ln_core_ff")),
)


def fit(rows, coeffs: Mapping[str, float] | None = None) -> dict[str, float]:
    """Least squares (relative residuals) of each group's coefficients on its module's rows.
    The model is affine in each coefficient, so its columns are model(c=1) - model(c=0)."""
    base = dict(E.COEFFS if coeffs is None else coeffs)
    by_id = {c.id: c for c in CONFIGS}
    out: dict[str, float] = {}
    for prefixes, key, names in FIT_GROUPS:
        sel = [r for r in rows if r["id"].startswith(prefixes)]
        if not sel:
            continue
        y = np.array([r["yosys"][key] for r in sel], dtype=float)

        def val(cfg, **over):
            return float(getattr(cfg.model({**base, **over}), key))

        zero = {n: 0.0 for n in names}
        A = np.array([[val(by_id[r["id"]], **{**zero, n: 1.0}) - val(by_id[r["id"]], **zero) for n in names]
                      for r in sel])
        b = y - np.array([val(by_id[r["id"]], **zero) for r in sel])
        w = 1.0 / y
        sol, *_ = np.linalg.lstsq(A * w[:, None], b * w, rcond=None)
        out.update({n: float(v) for n, v in zip(names, sol)})
        base.update(out)  # later groups see this group's fit
    return out


# ---------------------------------------------------------------------------------------


def print_table(rows) -> None:
    print(f"{'module / config':32s} {'Yosys LUT':>9s} {'(cells)':>7s} {'FF':>6s} {'DSP':>4s} {'BRAM':>4s} | "
          f"{'model LUT':>9s} {'FF':>6s} {'DSP':>4s} {'BRAM':>4s} | {'LUT':>5s} {'FF':>5s} {'DSP':>5s} {'BRAM':>5s}")
    for r in rows:
        y, m, q = r["yosys"], r["model"], r["ratio"]
        flag = " <-- >25 %" if any(q[k] is None or abs(q[k] - 1) > THRESHOLD for k in ("lut", "ff", "dsp")) else ""
        cells = "".join(f"{'-' if q[k] is None else format(q[k], '.2f'):>6s}" for k in KEYS)
        print(f"{r['id']:32s} {y['lut']:9,d} {y['lut_cells']:7,d} {y['ff']:6,d} {y['dsp']:4d} {y['bram18']:4d} | "
              f"{m['lut']:9,d} {m['ff']:6,d} {m['dsp']:4d} {m['bram18']:4d} |{cells}{flag}")
    s = summary(rows)
    print("ratio ranges (model / Yosys): " + ", ".join(
        f"{k} {v['min']:.2f}-{v['max']:.2f} ({v['within']}/{v['of']} within {THRESHOLD:.0%})" for k, v in s.items()))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", default=None, help="configuration ids (default: all)")
    ap.add_argument("--tested", action="store_true", help="only the configurations tests/test_yosys.py checks")
    ap.add_argument("--fit", action="store_true", help="print the least-squares fit of the Yosys-fitted coefficients")
    ap.add_argument("--write", action="store_true", help=f"rewrite {CALIBRATION_PATH.name} (needs every configuration)")
    a = ap.parse_args(argv)
    ids = a.only if a.only else (TESTED if a.tested else None)
    configs = CONFIGS if ids is None else tuple(c for c in CONFIGS if c.id in set(ids))
    if ids is not None and len(configs) != len(set(ids)):
        ap.error(f"unknown ids: {sorted(set(ids) - {c.id for c in CONFIGS})}")
    if a.write and ids is not None:
        ap.error("--write needs every configuration")
    print("Yosys cross-check of accel/engine.py (ratio = model / Yosys; Yosys LUT = LUT1-6 + SRL + LUTRAM in LUTs)")
    rows = []
    for cfg in configs:
        rows += crosscheck((cfg,))
        print(f"  synthesised {cfg.id}", file=sys.stderr, flush=True)
    print_table(rows)
    if a.fit:
        print("least-squares fit (relative residuals):")
        for n, v in fit(rows).items():
            print(f"  {n:26s} {v:10.2f}   (COEFFS: {E.COEFFS[n]:g})")
    if a.write:
        CALIBRATION_PATH.write_text(dump(calibration_doc(rows)), encoding="utf-8")
        print(f"wrote {CALIBRATION_PATH}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
