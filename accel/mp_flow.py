"""``codesign quantize mpcnn``: Hessian-sensitivity mixed precision under a budget.

The co-design loop of :mod:`codesign.quantize.mixed_precision` on the ``mpcnn`` model
(:mod:`codesign.quantize.mpcnn`), in the order it runs:

1. **baseline**: the tiny mpcnn trained with 8-bit weights and activations (QAT, digits);
2. **sensitivity**: ``Omega_l(b)`` for ``b`` in 2, 3, 4, 5, 6, 8 on calibration batches,
   with the model's own weight quantizer (power-of-two per-channel scale
   ``2^ceil(log2(max|W_c| / (2^(b-1) - 1)))``, narrow range: Brevitas' fixed-point rule);
3. **allocation**: the exact multiple-choice knapsack (dynamic programming; the greedy's
   answer is reported next to it) under the budget;
4. **fine-tuning**: the chosen widths, started from the baseline's weights, QAT for
   ``finetune_epochs``; the same fine-tuning for uniform 4-bit, uniform 8-bit and the
   widest uniform width within the budget (when that is neither), so the table compares
   like with like;
5. **export**: the mixed-precision model to QONNX (``model.onnx``, per-layer ``Quant`` bit
   widths), buildable with ``codesign build DIR/model.onnx``.

Budgets (``--budget KIND=VALUE``; the cost a layer at ``b`` bits adds):

* ``avg-bits=V``: weight storage ``n_l · b``; budget ``V · Σ n_l`` (average bits per weight);
* ``bops=V``: bit operations per inference ``MACs_l · b · a`` (``a`` = 8-bit activations),
  ``V`` in millions;
* ``lut=V`` (the co-design budget; ``--board``): the LUTs of the layers' matrix-vector
  units on the accelerator (:mod:`codesign.accel.dataflow`, Yosys-calibrated), each layer
  at the folding (PE, SIMD) the dataflow search picks for the 8-bit baseline on the board;
  a layer at ``b``-bit weights costs the LUTs of its MVAU with ``WB = b`` at that folding.

Outputs (all or nothing): ``quantize.json`` (every number), ``quantize.md``, ``model.onnx``,
``model.pt`` (state dict + bit widths).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

__all__ = ["BUDGET_KINDS", "QuantizeError", "parse_budget", "quantize_mpcnn", "QuantizeRun", "pow2_quantizer"]

BUDGET_KINDS = ("avg-bits", "bops", "lut")
CANDIDATE_BITS = (2, 3, 4, 5, 6, 8)


class QuantizeError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class QuantizeRun:
    out: Path
    summary: str
    files: list[str]
    result: dict


def parse_budget(text: str) -> tuple[str, float]:
    """``KIND=VALUE`` -> ``(kind, value)``; one clear error otherwise."""
    kind, sep, val = str(text).partition("=")
    kind = kind.strip()
    if not sep or kind not in BUDGET_KINDS:
        raise QuantizeError(f"--budget {text!r}: expected KIND=VALUE with KIND one of {', '.join(BUDGET_KINDS)} "
                            "(e.g. avg-bits=4)")
    try:
        v = float(val)
    except ValueError:
        raise QuantizeError(f"--budget {text!r}: {val!r} is not a number") from None
    if not math.isfinite(v) or v <= 0:
        raise QuantizeError(f"--budget {text!r}: the value must be a positive number")
    return kind, v


def pow2_quantizer(name, weight, bits):
    """The mpcnn weight quantizer as a function (for the sensitivity): per output channel,
    scale ``2^ceil(log2(max|W_c| / (2^(b-1)-1)))``, round half to even, narrow range."""
    import torch

    w = weight.detach()
    q = 2 ** (bits - 1) - 1
    m = w.reshape(w.shape[0], -1).abs().amax(dim=1).clamp_min(torch.finfo(w.dtype).tiny)
    s = torch.exp2(torch.ceil(torch.log2(m / q))).reshape((-1,) + (1,) * (w.dim() - 1))
    return torch.clamp(torch.round(w / s), -q, q) * s


def lut_cost(model, board: str):
    """``(cost(layer, bits), folding)``: the LUTs of each mpcnn layer's MVAU at ``bits``-bit
    weights, at the folding :func:`codesign.accel.dataflow.search` chooses for ``model``
    (exported and lowered as ``codesign build`` does) on ``board``."""
    import dataclasses
    import tempfile

    from codesign.accel import dataflow as D
    from codesign.accel.dataflow_ir import layers_from_ir
    from codesign.accel.lower import lower
    from codesign.quantize import mpcnn as M

    with tempfile.TemporaryDirectory() as td:
        M.export_mpcnn(model, f"{td}/m.onnx")
        ir = lower(f"{td}/m.onnx", threshold_all=True)
    layers = layers_from_ir(ir)
    if len(layers) != len(M.LAYERS):
        raise QuantizeError(f"internal: {len(layers)} dataflow layers for the {len(M.LAYERS)} mpcnn layers", 1)
    fold = D.search(layers, board).folding
    by_name = dict(zip(M.LAYERS, zip(layers, fold)))

    def cost(layer: str, bits: int) -> float:
        lay, (pe, simd) = by_name[layer]
        return float(D.layer_resources(dataclasses.replace(lay, WB=int(bits)), pe, simd).lut)

    return cost, {n: {"PE": int(f[0]), "SIMD": int(f[1])} for n, (_, f) in by_name.items()}


def _markdown(r: dict) -> str:
    rows = "\n".join(
        f"| {c['name']} | {', '.join(str(c['bits'][n]) for n in r['layers'])} | {c['cost']:.6g} | "
        f"{'yes' if c['cost'] <= r['budget_value'] * (1 + 1e-12) else 'no'} | {100 * c['test_acc']:.2f} % |"
        for c in r["configs"])
    sens = "\n".join(f"| {n} | " + " | ".join(f"{r['sensitivity']['omega'][n][str(b)]:.3g}" for b in r["bits"]) + " |"
                     for n in r["layers"])
    return f"""# codesign quantize mpcnn --budget {r['budget']}

Tiny mpcnn on sklearn digits ({r['train_size']} train / {r['test_size']} test), seed {r['seed']}.
Baseline: uniform 8-bit, {r['baseline_epochs']} QAT epochs. Every row below is fine-tuned from
the baseline for {r['finetune_epochs']} epochs (uniform 8-bit included), then evaluated once.

Budget `{r['budget']}`: total cost <= {r['budget_total']:.6g} ({r['cost_unit']}).
Layers: {', '.join(r['layers'])}.

| config | bits per layer | cost | within budget | test accuracy |
|---|---|---:|---|---:|
{rows}

Allocation: exact MCKP (dynamic programming) Omega = {r['allocation']['exact']['omega']:.4g};
the convex-hull greedy gives {', '.join(str(r['allocation']['greedy']['choice'][n]) for n in r['layers'])}
with Omega = {r['allocation']['greedy']['omega']:.4g}.

Sensitivity Omega_l(b) ({r['sensitivity']['method']}, {r['sensitivity']['num_samples']} calibration samples;
loss units):

| layer | {' | '.join(str(b) for b in r['bits'])} |
|---|{'---:|' * len(r['bits'])}
{sens}
"""


def quantize_mpcnn(budget: str, out: Path, force: bool = False, seed: int = 0, method: str = "hvp",
                   epochs: int = 20, finetune_epochs: int = 4, calib_size: int = 256, threads: int | None = 1,
                   board: str | None = None, progress: Callable[[str], None] | None = None) -> QuantizeRun:
    """Run the loop of the module docstring and write ``out``."""
    from codesign.accel.outdir import atomic_output_dir

    say = progress or (lambda m: None)
    kind, value = parse_budget(budget)
    from codesign.quantize import mixed_precision as mp

    if method not in mp.METHODS:
        raise QuantizeError(f"--method {method!r} unknown (supported: {', '.join(mp.METHODS)})")
    for name, v in (("epochs", epochs), ("finetune-epochs", finetune_epochs), ("calib-size", calib_size)):
        if v < 1:
            raise QuantizeError(f"--{name} must be >= 1, got {v}")
    import torch

    from codesign.quantize import mpcnn as M

    if threads:
        torch.set_num_threads(threads)
    data = M.digits()
    xtr, ytr = data[0], data[1]
    shapes = M.layer_shapes()
    n_params = {n: shapes[n]["oc"] * shapes[n]["k"] for n in M.LAYERS}
    if kind == "lut":
        if board is None:
            raise QuantizeError("--budget lut=... needs --board (the accelerator whose LUTs are budgeted)")
        from codesign.accel.boards import get_board

        try:
            get_board(board)
        except ValueError as e:
            raise QuantizeError(str(e)) from None
    elif board is not None:
        raise QuantizeError(f"--board applies to --budget lut=... (the {kind} budget knows no board)")
    folding = None
    if kind == "avg-bits":
        cost, total, unit = mp.size_cost(n_params), value * sum(n_params.values()), "weight bits"
    elif kind == "bops":
        cost = mp.bops_cost({n: shapes[n]["macs"] for n in M.LAYERS}, 8)
        total, unit = value * 1e6, "bit operations per inference"
    else:
        cost, folding = lut_cost(M.build_mpcnn(8, seed=seed), board)
        total, unit = value, f"MVAU LUTs on {board}"

    cheapest = math.fsum(min(cost(n, b) for b in CANDIDATE_BITS) for n in M.LAYERS)
    if cheapest > total:
        raise QuantizeError(f"--budget {budget}: infeasible, the cheapest allocation (each layer at its cheapest "
                            f"width) costs {cheapest:.6g} {unit} > {total:.6g}")
    with atomic_output_dir(Path(out), force) as stage:
        say(f"baseline: uniform 8-bit, {epochs} epochs")
        base = M.build_mpcnn(8, seed=seed)
        b_res = M.train_mpcnn(base, epochs=epochs, seed=seed, data=data)
        say(f"baseline test accuracy {100 * b_res.test_acc:.2f} %")

        say(f"sensitivity ({method}) on {calib_size} calibration samples")
        ce = torch.nn.CrossEntropyLoss()
        batches = [(xtr[i:i + 64], ytr[i:i + 64]) for i in range(0, calib_size, 64)]
        table = mp.sensitivity(base, lambda m, b: ce(m(b[0]), b[1]), batches, CANDIDATE_BITS, method, seed,
                               layers=list(M.LAYERS), quantizer=pow2_quantizer)
        options = mp.build_options(table, cost)
        try:
            # LUT costs are fractional model figures: the DP rounds them up to whole LUTs
            exact = mp.solve_exact(options, total, resolution=1.0 if kind == "lut" else None)
            greedy = mp.solve_greedy(options, total)
        except ValueError as e:
            raise QuantizeError(f"--budget {budget}: {e}") from e
        say("allocation: " + ", ".join(f"{n} {exact.choice[n]}" for n in M.LAYERS))

        configs = []
        chosen = None
        rows = [("mixed (MCKP)", exact.choice), ("uniform 4-bit", {n: 4 for n in M.LAYERS}),
                ("uniform 8-bit", {n: 8 for n in M.LAYERS})]
        # the widest uniform width within the budget: the like-for-like alternative
        fits = [b for b in CANDIDATE_BITS if math.fsum(cost(n, b) for n in M.LAYERS) <= total * (1 + 1e-12)]
        if fits and max(fits) not in (4, 8):
            rows.append((f"uniform {max(fits)}-bit", {n: max(fits) for n in M.LAYERS}))
        for name, bits in rows:
            say(f"fine-tune {name}: {finetune_epochs} epochs")
            m = M.with_bits(base, bits, seed=seed)
            r = M.train_mpcnn(m, epochs=finetune_epochs, lr=1e-3, seed=seed + 1, data=data)
            c = math.fsum(cost(n, bits[n]) for n in M.LAYERS)
            configs.append({"name": name, "bits": dict(bits), "cost": c, "test_acc": r.test_acc})
            say(f"{name}: test accuracy {100 * r.test_acc:.2f} %, cost {c:.6g}")
            if chosen is None:
                chosen = m
        result = {
            "budget": budget, "budget_kind": kind, "budget_value": value, "budget_total": total, "cost_unit": unit,
            "seed": seed, "train_size": int(len(ytr)), "test_size": int(len(data[3])), "baseline_epochs": epochs,
            "finetune_epochs": finetune_epochs, "baseline_test_acc": b_res.test_acc, "layers": list(M.LAYERS),
            "bits": list(CANDIDATE_BITS), "sensitivity": table.to_dict(),
            "allocation": {"exact": {"choice": exact.choice, "cost": exact.cost, "omega": exact.omega},
                           "greedy": {"choice": greedy.choice, "cost": greedy.cost, "omega": greedy.omega}},
            "configs": configs, "board": board, "folding": folding,
        }
        for c in configs:
            c["within_budget"] = bool(c["cost"] <= total * (1 + 1e-12))
        M.export_mpcnn(chosen, stage / "model.onnx")
        torch.save({"bits": exact.choice, "act_bits": chosen.act_bits, "state_dict": chosen.state_dict()},
                   stage / "model.pt")
        (stage / "quantize.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n", encoding="utf-8")
        (stage / "quantize.md").write_text(_markdown(result), encoding="utf-8")
    mixed = configs[0]
    summary = (f"mixed {', '.join(str(exact.choice[n]) for n in M.LAYERS)} bits: {100 * mixed['test_acc']:.2f} % "
               f"at {mixed['cost']:.6g} {unit} (budget {total:.6g}); "
               + "; ".join(f"{c['name']} {100 * c['test_acc']:.2f} % at {c['cost']:.6g}" for c in configs[1:]))
    return QuantizeRun(Path(out), summary, ["quantize.json", "quantize.md", "model.onnx", "model.pt"], result)
