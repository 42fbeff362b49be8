"""Mixed-precision co-design: per-layer quantization sensitivity and bit-width allocation.

Board-independent (numpy and torch only; nothing here imports ``codesign.accel``). The
accelerator enters only through a cost callable ``cost(layer_name, bits) -> float``.

Two halves, maths in ``docs/mixed_precision.md``:

**Sensitivity** (:func:`sensitivity`). For every weight layer ``l`` (each ``nn.Conv2d`` and
``nn.Linear`` of the model, Brevitas ``QuantConv2d``/``QuantLinear`` included since they
subclass them) and each candidate bit width ``b``, the second-order Taylor estimate of the
loss increase when only that layer's weight is quantized::

    Omega_l(b) = 1/2 * dW^T H_l dW,    dW = Q_b(W_l) - W_l,

``H_l`` the Hessian of the calibration loss with respect to ``W_l`` (the diagonal block of
the full Hessian: cross-layer terms are ignored, as is the first-order term ``g^T dW``,
assumed small at a trained minimum). Three estimators (``method``):

* ``"hvp"``: the exact quadratic form, one Hessian-vector product ``H_l dW`` per
  (layer, bit width, batch) by double backward;
* ``"hutchinson"``: ``Tr(H_l)`` by Hutchinson's estimator with Rademacher vectors, then
  ``Omega = 1/2 * Tr(H_l)/n_l * ||dW||^2`` (HAWQ-v2: ``H_l`` replaced by its mean
  eigenvalue times the identity);
* ``"fisher"``: the empirical Fisher diagonal ``F_ii = mean_n (dl_n/dW_i)^2`` over
  per-sample gradients, ``Omega = 1/2 * sum_i F_ii dW_i^2``.

``Q_b`` defaults to :func:`quantize_per_channel`: symmetric, per output channel, max-abs,
narrow range. Any other weight quantizer (a Brevitas one, say) is passed as ``quantizer``.

**Allocation** (multiple-choice knapsack, MCKP). Pick one bit width per layer minimising
``sum_l Omega_l(b_l)`` subject to ``sum_l cost(l, b_l) <= budget``:
:func:`solve_greedy` (convex-hull greedy), :func:`solve_exact` (dynamic programming over
integer costs) and :func:`solve_bruteforce` (enumeration, for tiny cases and tests). Cost
functions: :func:`size_cost` (model size in bits), :func:`bops_cost` (bit operations from
:func:`count_macs`) or any user callable.

Determinism: the same model, data, arguments and torch thread count give the same table;
only ``"hutchinson"`` draws random numbers, from generators seeded by
``(seed, layer index, sample index)``. The model is returned as it was (weights, training
mode and ``requires_grad`` flags restored; ``.grad`` fields untouched).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = [
    "DEFAULT_BITS",
    "METHODS",
    "quantize_per_channel",
    "find_layers",
    "SensitivityTable",
    "sensitivity",
    "hutchinson_trace",
    "count_macs",
    "size_cost",
    "bops_cost",
    "Option",
    "Allocation",
    "build_options",
    "prune_dominated",
    "lower_convex_hull",
    "solve_greedy",
    "solve_exact",
    "solve_bruteforce",
]

DEFAULT_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
METHODS: tuple[str, ...] = ("hvp", "hutchinson", "fisher")
MAX_BITS = 32

Quantizer = Callable[[str, torch.Tensor, int], torch.Tensor]
LossFn = Callable[[nn.Module, Any], torch.Tensor]
CostFn = Callable[[str, int], float]


# --------------------------------------------------------------------------------------
# Quantizer and layers
# --------------------------------------------------------------------------------------
def _check_bits(bits: Iterable[int], where: str) -> tuple[int, ...]:
    out = tuple(bits)
    if not out:
        raise ValueError(f"{where}: empty bit-width list; give widths in 2..{MAX_BITS}")
    for b in out:
        if isinstance(b, bool) or not isinstance(b, (int, np.integer)) or not 2 <= b <= MAX_BITS:
            raise ValueError(f"{where}: bit width {b!r} unsupported; widths are integers in 2..{MAX_BITS}")
    if len(set(out)) != len(out):
        raise ValueError(f"{where}: repeated bit width in {out}")
    return tuple(sorted(int(b) for b in out))


def quantize_per_channel(weight: torch.Tensor, bits: int) -> torch.Tensor:
    """``Q_b(W)``: symmetric per-output-channel max-abs uniform quantization, dequantized.

    Row ``r`` is ``weight[r]`` flattened (dim 0 = output channel, for ``nn.Linear``
    ``(out, in)`` and ``nn.Conv2d`` ``(out, in/groups, kh, kw)`` alike). Narrow signed
    range: codes ``q`` in ``[-(2^(b-1)-1), 2^(b-1)-1]``, scale
    ``s_r = max|W_r| / (2^(b-1)-1)``, ``Q(W_r) = s_r * clamp(round(W_r / s_r))`` with
    ``torch.round`` (half to even). An all-zero row stays zero. Returns a new tensor of
    ``weight``'s shape and dtype, outside autograd. ``bits`` in ``2..32``.
    """
    _check_bits([bits], "quantize_per_channel")
    if weight.dim() < 1 or weight.shape[0] == 0:
        raise ValueError(f"quantize_per_channel: weight of shape {tuple(weight.shape)} has no output channel")
    with torch.no_grad():
        w = weight.detach().reshape(weight.shape[0], -1)
        qmax = float(2 ** (bits - 1) - 1)
        scale = w.abs().amax(dim=1, keepdim=True) / qmax
        safe = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.clamp(torch.round(w / safe), -qmax, qmax) * scale
        return q.reshape(weight.shape).clone()


def _default_quantizer(name: str, weight: torch.Tensor, bits: int) -> torch.Tensor:
    return quantize_per_channel(weight, bits)


def find_layers(model: nn.Module, types: tuple[type, ...] = (nn.Conv2d, nn.Linear)) -> dict[str, nn.Module]:
    """Weight layers of ``model`` by qualified name, in ``named_modules`` order.

    Every module that is an instance of ``types`` (subclasses included: Brevitas
    ``QuantConv2d``/``QuantLinear``) and has a ``weight`` parameter. The model itself,
    if it is such a layer, is named ``""``. Shared modules appear once (first name).
    """
    layers: dict[str, nn.Module] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, types) and isinstance(getattr(mod, "weight", None), nn.Parameter):
            layers[name] = mod
    return layers


# --------------------------------------------------------------------------------------
# Sensitivity
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SensitivityTable:
    """Result of :func:`sensitivity`.

    ``omega[layer][bits]``: the estimated loss increase ``Omega_l(b)`` (float, loss units).
    ``num_params[layer]``: weight elements ``n_l`` (bias excluded). ``trace[layer]``: the
    Hutchinson estimate of ``Tr(H_l)`` (method ``"hutchinson"`` only, else empty).
    ``num_samples``: calibration samples seen. Layers keep model order.
    """

    method: str
    bits: tuple[int, ...]
    omega: dict[str, dict[int, float]]
    num_params: dict[str, int]
    num_samples: int
    seed: int
    trace: dict[str, float] = field(default_factory=dict)

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(self.omega)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (bit widths become string keys)."""
        return {
            "method": self.method,
            "bits": list(self.bits),
            "seed": self.seed,
            "num_samples": self.num_samples,
            "num_params": dict(self.num_params),
            "omega": {l: {str(b): v for b, v in row.items()} for l, row in self.omega.items()},
            "trace": dict(self.trace),
        }


def _batch_size(batch: Any, where: str = "sensitivity") -> int:
    if isinstance(batch, torch.Tensor):
        if batch.dim() == 0:
            raise ValueError(f"{where}: a batch tensor is 0-d; batches need a leading sample dimension")
        return int(batch.shape[0])
    if isinstance(batch, Mapping):
        for v in batch.values():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return int(v.shape[0])
    elif isinstance(batch, (tuple, list)):
        for v in batch:
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                return int(v.shape[0])
    raise ValueError(
        f"{where}: batch of type {type(batch).__name__} holds no tensor; "
        "a batch is a tensor, or a tuple/list/dict of tensors sharing the leading dimension"
    )


def _sample(batch: Any, i: int) -> Any:
    """Sample ``i`` of a batch, keeping a leading dimension of 1."""
    if isinstance(batch, torch.Tensor):
        return batch[i : i + 1]
    if isinstance(batch, Mapping):
        return type(batch)({k: (v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 else v) for k, v in batch.items()})
    seq = [v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 else v for v in batch]
    return tuple(seq) if isinstance(batch, tuple) else seq


def _rademacher(shape: torch.Size, dtype: torch.dtype, seed: int, layer_index: int, sample: int) -> torch.Tensor:
    state = np.random.SeedSequence([seed, layer_index, sample]).generate_state(1, np.uint64)[0]
    gen = torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))
    return (torch.randint(0, 2, tuple(shape), generator=gen) * 2 - 1).to(dtype)


class _Prepared:
    """Puts the model in eval mode with gradients on the chosen weights; restores on exit."""

    def __init__(self, model: nn.Module, weights: list[nn.Parameter]):
        self.model, self.weights = model, weights

    def __enter__(self) -> "_Prepared":
        self.training = self.model.training
        self.flags = [p.requires_grad for p in self.weights]
        self.model.eval()
        for p in self.weights:
            p.requires_grad_(True)
        return self

    def __exit__(self, *exc: Any) -> None:
        for p, f in zip(self.weights, self.flags):
            p.requires_grad_(f)
        self.model.train(self.training)


def _loss(loss_fn: LossFn, model: nn.Module, batch: Any, where: str) -> torch.Tensor:
    loss = loss_fn(model, batch)
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
        raise ValueError(f"{where}: loss_fn must return a scalar tensor (the mean loss of the batch), got {type(loss).__name__}")
    return loss.reshape(())


def _grads(loss: torch.Tensor, weights: list[nn.Parameter], create_graph: bool) -> list[torch.Tensor]:
    gs = torch.autograd.grad(loss, weights, create_graph=create_graph, allow_unused=True)
    return [torch.zeros_like(w) if g is None else g for w, g in zip(weights, gs)]


def _hvp_dot(g: torch.Tensor, w: nn.Parameter, v: torch.Tensor) -> float:
    """``v^T H v`` with ``H`` the Hessian block of ``w``, from the first-order graph ``g``."""
    if not g.requires_grad:  # the loss is linear (or constant) in w: zero Hessian block
        return 0.0
    (hv,) = torch.autograd.grad(g, w, grad_outputs=v, retain_graph=True, allow_unused=True)
    if hv is None:
        return 0.0
    return float(torch.sum(v.to(torch.float64) * hv.to(torch.float64)))


def _resolve_layers(model: nn.Module, layers: Sequence[str] | None, where: str) -> dict[str, nn.Module]:
    found = find_layers(model)
    if layers is None:
        if not found:
            raise ValueError(f"{where}: the model has no nn.Conv2d or nn.Linear layer")
        return found
    out: dict[str, nn.Module] = {}
    for name in layers:
        if name not in found:
            raise ValueError(f"{where}: layer {name!r} is not an nn.Conv2d/nn.Linear of the model (found: {sorted(found)})")
        out[name] = found[name]
    return out


def hutchinson_trace(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    samples: int = 64,
    seed: int = 0,
    layers: Sequence[str] | None = None,
) -> dict[str, float]:
    """Hutchinson estimates of ``Tr(H_l)`` for each layer: ``mean_s z_s^T H_l z_s``.

    ``z_s`` Rademacher (+-1), drawn for (seed, layer index, sample) and the same for all
    batches, so each term is ``z^T H z`` of the Hessian of the whole calibration loss
    ``L = sum_batches n_b L_b / N``. Unbiased; the variance of one term is
    ``2 * sum_{i != j} H_ij^2``. Contracts of ``loss_fn``/``batches`` as :func:`sensitivity`.
    """
    traces, _ = _hessian_pass(model, loss_fn, batches, None, "hutchinson", seed, layers, None, samples, "hutchinson_trace")
    return traces


def _hessian_pass(model, loss_fn, batches, bits, method, seed, layers, quantizer, samples, where):
    named = _resolve_layers(model, layers, where)
    names = list(named)
    weights = [named[n].weight for n in names]
    quantizer = quantizer or _default_quantizer
    if method == "hutchinson" and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ValueError(f"{where}: hutchinson_samples={samples!r} must be a positive integer")
    deltas: dict[str, dict[int, torch.Tensor]] = {}
    if bits is not None:
        for n, w in zip(names, weights):
            deltas[n] = {}
            for b in bits:
                q = quantizer(n, w.detach(), b)
                if not isinstance(q, torch.Tensor) or q.shape != w.shape:
                    raise ValueError(f"{where}: quantizer returned {getattr(q, 'shape', type(q).__name__)} for layer {n!r} of shape {tuple(w.shape)}")
                deltas[n][b] = (q.detach().to(w.dtype) - w.detach())
    acc_omega = {n: {b: 0.0 for b in (bits or ())} for n in names}
    acc_trace = {n: 0.0 for n in names}
    fisher = {n: torch.zeros_like(w, dtype=torch.float64) for n, w in zip(names, weights)}
    total = 0
    with _Prepared(model, weights):
        for batch in batches:
            nb = _batch_size(batch, where)
            if nb == 0:
                continue
            total += nb
            if method == "fisher":
                for i in range(nb):
                    gs = _grads(_loss(loss_fn, model, _sample(batch, i), where), weights, create_graph=False)
                    for n, g in zip(names, gs):
                        fisher[n] += g.detach().to(torch.float64) ** 2
                continue
            gs = _grads(_loss(loss_fn, model, batch, where), weights, create_graph=True)
            for li, (n, w, g) in enumerate(zip(names, weights, gs)):
                if method == "hvp":
                    for b in bits:
                        acc_omega[n][b] += nb * 0.5 * _hvp_dot(g, w, deltas[n][b])
                else:
                    s = 0.0
                    for k in range(samples):
                        s += _hvp_dot(g, w, _rademacher(w.shape, w.dtype, seed, li, k))
                    acc_trace[n] += nb * s / samples
            del gs
    if total == 0:
        raise ValueError(f"{where}: no calibration sample (batches empty)")
    if method == "fisher":
        for n in names:
            f = fisher[n] / total
            for b in bits:
                acc_omega[n][b] = 0.5 * float(torch.sum(f * deltas[n][b].to(torch.float64) ** 2))
        return {}, (acc_omega, total)
    traces = {n: acc_trace[n] / total for n in names}
    if method == "hutchinson":
        if bits is not None:
            for n, w in zip(names, weights):
                for b in bits:
                    sq = float(torch.sum(deltas[n][b].to(torch.float64) ** 2))
                    acc_omega[n][b] = 0.5 * traces[n] / w.numel() * sq
        return traces, (acc_omega, total)
    return {}, ({n: {b: v / total for b, v in row.items()} for n, row in acc_omega.items()}, total)


def sensitivity(
    model: nn.Module,
    loss_fn: LossFn,
    batches: Iterable[Any],
    bits: Iterable[int] = DEFAULT_BITS,
    method: str = "hvp",
    seed: int = 0,
    *,
    layers: Sequence[str] | None = None,
    quantizer: Quantizer | None = None,
    hutchinson_samples: int = 64,
) -> SensitivityTable:
    """Per-layer sensitivity table ``Omega[layer][b]`` on calibration data.

    ``loss_fn(model, batch)`` returns the **mean** loss over the batch as a scalar tensor,
    twice differentiable in the weights for ``"hvp"``/``"hutchinson"``. ``batches`` is
    iterated once; a batch is a tensor, or a tuple/list/dict of tensors sharing the
    leading (sample) dimension (``"fisher"`` slices it into one-sample batches). The
    calibration loss is ``L = sum_batches n_b * loss_fn(batch) / N``; ``H_l`` is its
    Hessian in ``W_l``, evaluated with the model in ``eval()`` mode. ``method`` in
    :data:`METHODS` (see the module docstring). ``layers`` restricts the table to the named
    layers (default: all of :func:`find_layers`). ``quantizer(layer_name, weight, bits)``
    replaces ``Q_b`` (default :func:`quantize_per_channel`) and must return a tensor of
    ``weight``'s shape. ``seed`` and ``hutchinson_samples`` (Rademacher vectors per layer)
    matter only for ``"hutchinson"``. Values are accumulated in float64 whatever the
    model's dtype.
    """
    if method not in METHODS:
        raise ValueError(f"sensitivity: method {method!r} unknown; supported: {', '.join(METHODS)}")
    bits = _check_bits(bits, "sensitivity")
    traces, (omega, total) = _hessian_pass(
        model, loss_fn, batches, bits, method, seed, layers, quantizer, hutchinson_samples, "sensitivity"
    )
    named = _resolve_layers(model, layers, "sensitivity")
    return SensitivityTable(
        method=method,
        bits=bits,
        omega={n: dict(omega[n]) for n in named},
        num_params={n: int(m.weight.numel()) for n, m in named.items()},
        num_samples=total,
        seed=seed,
        trace=traces,
    )


# --------------------------------------------------------------------------------------
# Costs
# --------------------------------------------------------------------------------------
def count_macs(model: nn.Module, example: Any, layers: Sequence[str] | None = None) -> dict[str, int]:
    """Multiply-accumulates per sample of each weight layer, from forward hooks.

    Runs ``model(example)`` (``model(*example)`` for a tuple/list) under ``no_grad`` in
    eval mode; ``N`` = the leading dimension of ``example`` (its first tensor). Per layer:
    ``nn.Linear``: ``out.numel() * in_features / N``; ``nn.Conv2d``:
    ``out.numel() * (in_channels / groups) * kh * kw / N``. A layer called several times
    counts every call; a layer never called counts 0.
    """
    named = _resolve_layers(model, layers, "count_macs")
    n = _batch_size(example, "count_macs")
    macs = {name: 0 for name in named}
    hooks = []

    def make(name: str, mod: nn.Module):
        def hook(_m, _inp, out):
            o = out if isinstance(out, torch.Tensor) else out[0]
            if isinstance(mod, nn.Conv2d):
                k = (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
            else:
                k = mod.in_features
            macs[name] += int(o.numel()) * int(k)
        return hook

    for name, mod in named.items():
        hooks.append(mod.register_forward_hook(make(name, mod)))
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(*example) if isinstance(example, (tuple, list)) else model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(training)
    out = {}
    for name, m in macs.items():
        if m % n:
            raise ValueError(f"count_macs: layer {name!r} did {m} MACs, not a multiple of the batch size {n}")
        out[name] = m // n
    return out


def size_cost(num_params: Mapping[str, int]) -> CostFn:
    """Cost callable ``(layer, b) -> n_l * b``: the layer's weight storage in bits."""
    params = dict(num_params)

    def cost(layer: str, bits: int) -> float:
        if layer not in params:
            raise KeyError(f"size_cost: no parameter count for layer {layer!r}")
        return float(params[layer] * bits)

    return cost


def bops_cost(macs: Mapping[str, int], act_bits: int | Mapping[str, int] = 8) -> CostFn:
    """Cost callable ``(layer, b) -> MACs_l * b * a_l``: bit operations per sample.

    ``a_l`` is the layer's input activation width: one int for all layers or a mapping.
    """
    m = dict(macs)

    def cost(layer: str, bits: int) -> float:
        if layer not in m:
            raise KeyError(f"bops_cost: no MAC count for layer {layer!r}")
        a = act_bits if isinstance(act_bits, int) else act_bits[layer]
        return float(m[layer] * bits * a)

    return cost


# --------------------------------------------------------------------------------------
# Multiple-choice knapsack
# --------------------------------------------------------------------------------------
@dataclass(frozen=True, order=True)
class Option:
    """One item of a layer's class: choosing ``bits`` costs ``cost`` and adds ``omega``."""

    cost: float
    omega: float
    bits: int


@dataclass(frozen=True)
class Allocation:
    """An MCKP solution: ``choice[layer] = bits``, its total ``cost`` and total ``omega``
    (``math.fsum`` over layers of the chosen options' values), and the ``solver`` name."""

    choice: dict[str, int]
    cost: float
    omega: float
    solver: str


def build_options(table: SensitivityTable, cost: CostFn, bits: Iterable[int] | None = None) -> dict[str, list[Option]]:
    """MCKP classes from a sensitivity table and a cost callable: for each layer, one
    :class:`Option` per bit width (all of ``table.bits`` unless ``bits`` narrows them).
    ``cost(layer_name, bits)`` must return a finite number >= 0."""
    widths = table.bits if bits is None else _check_bits(bits, "build_options")
    out: dict[str, list[Option]] = {}
    for layer in table.layers:
        row = []
        for b in widths:
            if b not in table.omega[layer]:
                raise ValueError(f"build_options: the table has no entry for layer {layer!r} at {b} bits (it has {table.bits})")
            c = float(cost(layer, b))
            if not math.isfinite(c) or c < 0:
                raise ValueError(f"build_options: cost({layer!r}, {b}) = {c} is not a finite number >= 0")
            row.append(Option(cost=c, omega=float(table.omega[layer][b]), bits=b))
        out[layer] = row
    return out


def _check_options(options: Mapping[str, Sequence[Option]], where: str) -> None:
    if not options:
        raise ValueError(f"{where}: no layer to allocate")
    for layer, opts in options.items():
        if not opts:
            raise ValueError(f"{where}: layer {layer!r} has no option")
        for o in opts:
            if not (math.isfinite(o.cost) and math.isfinite(o.omega)) or o.cost < 0:
                raise ValueError(f"{where}: layer {layer!r} option {o} needs a finite cost >= 0 and a finite omega")


def _check_budget(options: Mapping[str, Sequence[Option]], budget: float, where: str) -> None:
    if not math.isfinite(budget):
        raise ValueError(f"{where}: budget {budget} is not finite")
    cheapest = math.fsum(min(o.cost for o in opts) for opts in options.values())
    if cheapest > budget:
        raise ValueError(f"{where}: budget {budget:g} is infeasible: the cheapest option of every layer already costs {cheapest:g}")


def prune_dominated(options: Sequence[Option]) -> list[Option]:
    """Options not dominated by another, sorted by increasing cost (hence decreasing omega).

    ``o`` is dominated when another option has ``cost <= o.cost`` and ``omega <= o.omega``.
    Of several options with equal cost and omega the one with fewest bits is kept.
    """
    kept: list[Option] = []
    for o in sorted(options, key=lambda o: (o.cost, o.omega, o.bits)):
        if kept and kept[-1].omega <= o.omega:
            continue  # an option at most as expensive is at least as good
        kept.append(o)
    return kept


def lower_convex_hull(options: Sequence[Option]) -> list[Option]:
    """The lower convex hull of the undominated options in the (cost, omega) plane.

    Returned by increasing cost: the vertices from the cheapest option to the one of
    least omega, with strictly increasing slopes (``(omega_j - omega_i) / (cost_j -
    cost_i)`` rising towards 0 from below); options on a hull edge but not at a vertex
    (collinear) are dropped.
    """
    pts = prune_dominated(options)
    hull: list[Option] = []
    for p in pts:
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            # keep b only if it lies strictly below segment a-p: cross product > 0
            cross = (b.cost - a.cost) * (p.omega - a.omega) - (b.omega - a.omega) * (p.cost - a.cost)
            if cross <= 0:
                hull.pop()
            else:
                break
        hull.append(p)
    return hull


def _allocation(options: Mapping[str, Sequence[Option]], picked: Mapping[str, Option], solver: str) -> Allocation:
    return Allocation(
        choice={l: picked[l].bits for l in options},
        cost=math.fsum(picked[l].cost for l in options),
        omega=math.fsum(picked[l].omega for l in options),
        solver=solver,
    )


def solve_greedy(options: Mapping[str, Sequence[Option]], budget: float) -> Allocation:
    """Convex-hull greedy for the MCKP.

    Each layer starts at its cheapest hull vertex; then, repeatedly, among the layers whose
    next hull vertex still fits the budget, the upgrade with the largest
    ``-d_omega / d_cost`` is applied (ties: the earlier layer). Stops when no upgrade fits.
    The result is feasible but not always optimal: an upgrade that does not fit is skipped
    and the budget it would have used can stay idle, so its omega can exceed
    :func:`solve_exact`'s (measured gaps in ``docs/mixed_precision.md``). Raises
    ``ValueError`` when even the cheapest choice exceeds ``budget``.
    """
    _check_options(options, "solve_greedy")
    _check_budget(options, budget, "solve_greedy")
    hulls = {l: lower_convex_hull(opts) for l, opts in options.items()}
    pos = {l: 0 for l in hulls}
    layers = list(hulls)
    while True:
        current = math.fsum(hulls[l][pos[l]].cost for l in layers)
        best, best_eff = None, -math.inf
        for l in layers:
            h, i = hulls[l], pos[l]
            if i + 1 >= len(h):
                continue
            d_cost = h[i + 1].cost - h[i].cost
            if current - h[i].cost + h[i + 1].cost > budget:
                continue
            eff = (h[i].omega - h[i + 1].omega) / d_cost
            if eff > best_eff:
                best, best_eff = l, eff
        if best is None:
            break
        pos[best] += 1
    return _allocation(options, {l: hulls[l][pos[l]] for l in layers}, "greedy")


MAX_DP_CELLS = 50_000_000


def solve_exact(options: Mapping[str, Sequence[Option]], budget: float, resolution: float | None = None) -> Allocation:
    """Exact MCKP by dynamic programming over integer costs.

    ``resolution=None``: every cost must be an integer (``float.is_integer``) and the DP is
    exact; the capacity is ``floor(budget)``. Otherwise costs are measured in units of
    ``resolution``, **rounded up** (``ceil(cost / resolution)``), and the capacity is
    ``floor(budget / resolution)`` (exact rational arithmetic on the float values): the
    answer always satisfies the true budget and is optimal for the rounded problem; it
    can miss the true optimum only through choices whose rounded cost exceeds the
    capacity, i.e. within ``n_layers * resolution`` of the budget. Work and memory are
    ``n_layers * (capacity + 1)`` cells, at most :data:`MAX_DP_CELLS`. Ties in omega go to
    the option listed first. ``ValueError`` on an infeasible budget.
    """
    _check_options(options, "solve_exact")
    _check_budget(options, budget, "solve_exact")
    layers = list(options)
    if resolution is None:
        for l in layers:
            for o in options[l]:
                if not float(o.cost).is_integer():
                    raise ValueError(f"solve_exact: cost {o.cost} of layer {l!r} at {o.bits} bits is not an integer; pass resolution=")
        weights = {l: [int(o.cost) for o in options[l]] for l in layers}
        cap = math.floor(budget)
    else:
        if not (isinstance(resolution, (int, float)) and math.isfinite(resolution) and resolution > 0):
            raise ValueError(f"solve_exact: resolution {resolution!r} must be a finite number > 0")
        r = Fraction(resolution)
        weights = {l: [math.ceil(Fraction(o.cost) / r) for o in options[l]] for l in layers}
        cap = math.floor(Fraction(budget) / r)
    if cap < 0 or sum(min(w) for w in weights.values()) > cap:
        raise ValueError(f"solve_exact: budget {budget:g} is infeasible at resolution {resolution}: costs rounded up to it exceed the budget; use a finer resolution")
    if len(layers) * (cap + 1) > MAX_DP_CELLS:
        raise ValueError(f"solve_exact: {len(layers)} layers x {cap + 1} cost cells exceed {MAX_DP_CELLS}; pass a coarser resolution")
    # dp[c] = least omega of the layers so far with total rounded cost <= c
    dp = np.zeros(cap + 1, dtype=np.float64)
    picks = []
    for l in layers:
        new = np.full(cap + 1, np.inf)
        arg = np.full(cap + 1, -1, dtype=np.int64)
        for k, (o, w) in enumerate(zip(options[l], weights[l])):
            if w > cap:
                continue
            cand = np.full(cap + 1, np.inf)
            cand[w:] = dp[: cap + 1 - w] + o.omega
            better = cand < new
            new[better] = cand[better]
            arg[better] = k
        dp = new
        picks.append(arg)
    if not math.isfinite(dp[cap]):  # pragma: no cover - excluded by the rounded feasibility check
        raise ValueError(f"solve_exact: budget {budget:g} is infeasible")
    picked: dict[str, Option] = {}
    c = cap
    for l, arg in zip(reversed(layers), reversed(picks)):
        k = int(arg[c])
        picked[l] = options[l][k]
        c -= weights[l][k]
    return _allocation(options, picked, "exact")


MAX_BRUTE_FORCE = 2_000_000


def solve_bruteforce(options: Mapping[str, Sequence[Option]], budget: float) -> Allocation:
    """Enumerate every choice (at most :data:`MAX_BRUTE_FORCE`); for tests and tiny cases.

    Feasible: ``math.fsum`` of costs ``<= budget``. Among the feasible choices with least
    ``math.fsum`` of omegas, the first in ``itertools.product`` order.
    """
    _check_options(options, "solve_bruteforce")
    _check_budget(options, budget, "solve_bruteforce")
    layers = list(options)
    count = math.prod(len(options[l]) for l in layers)
    if count > MAX_BRUTE_FORCE:
        raise ValueError(f"solve_bruteforce: {count} combinations exceed {MAX_BRUTE_FORCE}; use solve_exact")
    best, best_omega = None, math.inf
    for combo in itertools.product(*(options[l] for l in layers)):
        if math.fsum(o.cost for o in combo) > budget:
            continue
        om = math.fsum(o.omega for o in combo)
        if om < best_omega:
            best, best_omega = combo, om
    assert best is not None  # the cheapest combination is feasible
    return _allocation(options, dict(zip(layers, best)), "bruteforce")
