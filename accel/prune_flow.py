"""``codesign prune mpcnn``: latency-constrained SIMD-structured pruning (ALCS) of the mpcnn.

The co-design loop of :mod:`codesign.quantize.pruning` with the accelerator's sparse MVAU
(``hls/include/codesign/sparse.h``, :mod:`codesign.hls.sparse`) as the latency model, in
the order it runs:

1. **baseline**: the tiny mpcnn (:data:`codesign.accel.flow.MPCNN_BUILD_BITS` weight
   widths) trained on digits;
2. **latency model**: every conv/linear layer runs on the sparse MVAU at ``PE × SIMD``
   folding; a layer's weight matrix ``W[OC, K]`` is cut into ``PE × SIMD`` groups and the
   kernel spends one cycle per stored group per output pixel (``hls/sparse.py``). ALCS
   keeps at least one group in every row group (``per_row_group``), so no row group is
   ever empty and a layer's cycles are exactly ``pixels · kept groups``: linear in the
   density, ``lat_l(d) = pixels_l · groups_l · d / f``. The budget is on the sum over the
   layers (the emitted design runs them one after another); other ops (pools, adds,
   thresholds) add a constant that is not part of the budget;
3. **ALCS**: ADMM under each latency budget, hard pruning, masked fine-tuning;
4. **baseline pruning**: unstructured magnitude pruning at the same weight density, the
   same fine-tuning; its latency is what the same sparse kernel needs for its mask (every
   group holding a non-zero weight is read);
5. **exact check**: the pruned models' quantized integer weights packed with
   :func:`codesign.hls.sparse.pack_sparse`; their iteration count
   (:func:`codesign.hls.sparse.sparse_trips`) is reported next to the model's (it can only
   be lower: a kept latent weight may quantize to 0);
6. **export**: the ALCS model of the tightest budget to ``model.onnx`` (build it with
   ``codesign build DIR/model.onnx --sparse PE,SIMD``).

Outputs (all or nothing): ``prune.json``, ``prune.md``, ``prune.svg`` (accuracy vs
latency, both methods), ``model.onnx``, ``model.pt``.
"""
from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

__all__ = ["PruneError", "PruneRun", "prune_mpcnn", "parse_budgets", "layer_cycles_exact"]


class PruneError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class PruneRun:
    out: Path
    summary: str
    files: list[str]
    result: dict


def parse_budgets(text: str) -> list[float]:
    """``"0.02,0.03"`` -> ``[0.02, 0.03]`` (ms, positive, sorted ascending, unique)."""
    vals = []
    for part in str(text).split(","):
        try:
            v = float(part)
        except ValueError:
            raise PruneError(f"--latency-budget-ms {text!r}: {part.strip()!r} is not a number "
                             "(give one or more comma-separated milliseconds)") from None
        if not math.isfinite(v) or v <= 0:
            raise PruneError(f"--latency-budget-ms {text!r}: budgets must be positive")
        vals.append(v)
    return sorted(set(vals))


def _codes(layer) -> np.ndarray:
    """The integer weight codes of a Brevitas layer (``quant_weight() / scale``)."""
    qw = layer.quant_weight()
    return (qw.value / qw.scale).detach().round().numpy().astype(np.int64)


def layer_cycles_exact(model, names, pixels, pe: int, simd: int) -> dict[str, int]:
    """Per layer: the sparse MVAU's iterations for the model's quantized weights (packed as
    the kernel stores them), ``pixels · (stored blocks + empty row groups)``."""
    from codesign.hls.sparse import pack_sparse, sparse_trips

    out = {}
    for n in names:
        w = _codes(getattr(model, n)).reshape(getattr(model, n).weight.shape[0], -1)
        sw = pack_sparse(w, pe, simd)
        out[n] = int(sparse_trips(sw.row_ptr, pixels[n]))
    return out


def _markdown(r: dict) -> str:
    rows = "\n".join(
        f"| {b['budget_ms']:.4g} | {b['alcs']['latency_ms']:.4g} | {b['alcs']['exact_latency_ms']:.4g} | "
        f"{100 * b['alcs']['density']:.1f} % | {100 * b['alcs']['test_acc']:.2f} % | "
        f"{b['magnitude']['latency_ms']:.4g} | {100 * b['magnitude']['test_acc']:.2f} % |"
        for b in r["budgets"])
    return f"""# codesign prune mpcnn --latency-budget-ms {r['budgets_arg']}

Tiny mpcnn on digits (weight bits {', '.join(f"{n} {b}" for n, b in r['bits'].items())}), seed
{r['seed']}; dense test accuracy {100 * r['dense_test_acc']:.2f} %. Latency model: the sparse MVAU at
PE = {r['pe']}, SIMD = {r['simd']}, {r['clock_mhz']:g} MHz, one cycle per stored {r['pe']}x{r['simd']}
weight group per output pixel, conv/linear layers one after another (other ops not
counted); dense {r['dense_latency_ms']:.4g} ms ({r['dense_cycles']:,} cycles). Estimates from the
kernel's cycle model (C-simulation counts these iterations exactly: tests/test_sparse.py).

Both methods are fine-tuned for {r['finetune_epochs']} epochs with their masks. Magnitude pruning
removes single weights at ALCS's weight density; its latency counts every group that
still holds a non-zero weight.

| budget (ms) | ALCS latency (model) | ALCS latency (packed codes) | ALCS density | ALCS accuracy | magnitude latency | magnitude accuracy |
|---:|---:|---:|---:|---:|---:|---:|
{rows}

`prune.svg` plots accuracy against latency for both.
"""


def prune_mpcnn(budgets: str, out: Path, force: bool = False, seed: int = 0, pe: int = 1, simd: int = 8,
                clock_mhz: float = 214.0, epochs: int = 20, admm_iters: int = 4, finetune_epochs: int = 5,
                threads: int | None = 1, progress: Callable[[str], None] | None = None) -> PruneRun:
    """Run the loop of the module docstring and write ``out``."""
    from codesign.accel.outdir import atomic_output_dir

    say = progress or (lambda m: None)
    ms = parse_budgets(budgets)
    for name, v in (("pe", pe), ("simd", simd), ("epochs", epochs), ("admm-iters", admm_iters),
                    ("finetune-epochs", finetune_epochs)):
        if not isinstance(v, int) or v < 1:
            raise PruneError(f"--{name} must be an integer >= 1, got {v!r}")
    if not 0 < clock_mhz < 1000:
        raise PruneError(f"--clock {clock_mhz} MHz out of range (0, 1000)")
    import torch

    from codesign.accel.flow import MPCNN_BUILD_BITS
    from codesign.accel.svgplot import line_plot
    from codesign.quantize import mpcnn as M
    from codesign.quantize import pruning as P

    if threads:
        torch.set_num_threads(threads)
    shapes = M.layer_shapes()
    names = list(M.LAYERS)
    pixels = {n: shapes[n]["pixels"] for n in names}
    specs = {n: P.GroupSpec(n, shapes[n]["oc"], shapes[n]["k"], pe, simd) for n in names}
    f_hz = clock_mhz * 1e6
    lat = {n: P.PiecewiseLinear((0.0, 1.0), (0.0, 1e3 * pixels[n] * specs[n].n_groups / f_hz)) for n in names}
    dense_cycles = sum(pixels[n] * specs[n].n_groups for n in names)
    dense_ms = 1e3 * dense_cycles / f_hz
    floor_ms = sum(1e3 * pixels[n] * specs[n].row_groups / f_hz for n in names)
    if ms[0] < floor_ms * (1 + 1e-9):
        raise PruneError(f"--latency-budget-ms {ms[0]:g} is below the minimum {floor_ms:.4g} ms (one {pe}x{simd} "
                         f"group per row group of every layer at {clock_mhz:g} MHz); dense is {dense_ms:.4g} ms")
    data = M.digits()
    xtr, ytr, xte, yte = data
    gen = torch.Generator().manual_seed(seed)

    def batches():
        perm = torch.randperm(len(ytr), generator=gen)
        return [(xtr[perm[i:i + 64]], ytr[perm[i:i + 64]]) for i in range(0, len(ytr), 64)]

    ce = torch.nn.CrossEntropyLoss()
    with atomic_output_dir(Path(out), force) as stage:
        say(f"baseline: mpcnn, {epochs} epochs")
        base = M.build_mpcnn(MPCNN_BUILD_BITS, seed=seed)
        dense_acc = M.train_mpcnn(base, epochs=epochs, seed=seed, data=data).test_acc
        say(f"dense: test accuracy {100 * dense_acc:.2f} %, {dense_ms:.4g} ms ({dense_cycles:,} cycles)")
        rows, tightest = [], None
        for b in ms:
            if b >= dense_ms:
                say(f"budget {b:g} ms >= dense {dense_ms:.4g} ms: nothing to prune")
            m = copy.deepcopy(base)
            res = P.admm_prune(m, specs, lat, b, ce, batches, admm_iters=admm_iters, finetune_epochs=finetune_epochs,
                               lr=1e-3, rho=1e-2, rho_growth=3.0, per_row_group=True, optimizer="adam")
            acc = M.evaluate(m, xte, yte)
            exact = layer_cycles_exact(m, names, pixels, pe, simd)
            dens = float(sum(res.masks[n].sum() for n in names) / sum(res.masks[n].size for n in names))
            say(f"ALCS {b:g} ms: {res.latency:.4g} ms, density {100 * dens:.1f} %, accuracy {100 * acc:.2f} %")
            mag = copy.deepcopy(base)
            mmask = P.magnitude_prune(mag, names, dens)
            P.finetune_masked(mag, mmask, ce, batches, epochs=finetune_epochs, lr=1e-3, optimizer="adam")
            mag_acc = M.evaluate(mag, xte, yte)
            mag_cyc = layer_cycles_exact(mag, names, pixels, pe, simd)
            mag_ms = 1e3 * sum(mag_cyc.values()) / f_hz
            say(f"magnitude at {100 * dens:.1f} %: {mag_ms:.4g} ms, accuracy {100 * mag_acc:.2f} %")
            rows.append({
                "budget_ms": b,
                "alcs": {"latency_ms": res.latency, "exact_cycles": exact,
                         "exact_latency_ms": 1e3 * sum(exact.values()) / f_hz, "density": dens,
                         "layer_density": res.densities, "test_acc": acc},
                "magnitude": {"density": dens, "cycles": mag_cyc, "latency_ms": mag_ms, "test_acc": mag_acc},
            })
            if tightest is None:
                tightest = m
        result = {"budgets_arg": budgets, "seed": seed, "pe": pe, "simd": simd, "clock_mhz": clock_mhz,
                  "bits": dict(MPCNN_BUILD_BITS), "epochs": epochs, "admm_iters": admm_iters,
                  "finetune_epochs": finetune_epochs, "dense_test_acc": dense_acc, "dense_cycles": dense_cycles,
                  "dense_latency_ms": dense_ms, "min_latency_ms": floor_ms,
                  "layers": {n: {"oc": specs[n].oc, "k": specs[n].k, "pixels": pixels[n],
                                 "groups": specs[n].n_groups} for n in names},
                  "estimate": "latency: the sparse MVAU's cycle model (hls/sparse.py) at an assumed clock",
                  "budgets": rows}
        svg = line_plot({"ALCS (SIMD groups, ADMM)": [(r["alcs"]["exact_latency_ms"], 100 * r["alcs"]["test_acc"])
                                                     for r in rows],
                         "magnitude (unstructured)": [(r["magnitude"]["latency_ms"], 100 * r["magnitude"]["test_acc"])
                                                      for r in rows],
                         "dense": [(dense_ms, 100 * dense_acc)]},
                        title=f"mpcnn on digits: accuracy vs latency (sparse MVAU {pe}x{simd}, {clock_mhz:g} MHz)",
                        xlabel="estimated latency of the conv/linear layers (ms)", ylabel="test accuracy (%)")
        (stage / "prune.svg").write_text(svg, encoding="utf-8")
        M.export_mpcnn(tightest, stage / "model.onnx")
        torch.save({"bits": dict(tightest.bits), "act_bits": tightest.act_bits, "state_dict": tightest.state_dict()},
                   stage / "model.pt")
        (stage / "prune.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        (stage / "prune.md").write_text(_markdown(result), encoding="utf-8")
    first = rows[0]
    summary = (f"dense {dense_ms:.4g} ms, {100 * dense_acc:.2f} %; at {first['budget_ms']:g} ms: ALCS "
               f"{first['alcs']['exact_latency_ms']:.4g} ms, {100 * first['alcs']['test_acc']:.2f} % vs magnitude "
               f"{first['magnitude']['latency_ms']:.4g} ms, {100 * first['magnitude']['test_acc']:.2f} %")
    return PruneRun(Path(out), summary, ["prune.json", "prune.md", "prune.svg", "model.onnx", "model.pt"], result)
