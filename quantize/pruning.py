"""Latency-constrained SIMD-structured pruning (ALCS) by ADMM.

The accelerator's matrix-vector unit (MVAU, FINN style) reads a layer's weight matrix
``W[OC, K]`` as blocks of ``PE`` rows by ``SIMD`` consecutive columns, one block per cycle.
A block whose weights are all zero is a cycle the sparse kernel can skip, so pruning whole
blocks (**groups**) buys latency in proportion; pruning scattered single weights buys
nothing (a block with one non-zero weight still costs its cycle). This module prunes
groups, under a budget on the accelerator's *estimated latency*, which it receives as a
function: ``quantize/`` knows no board.

Matrix view (the order the sparse kernel must read): a ``Linear`` weight is ``W[OC, K]``
as stored; a ``Conv2d`` weight ``w[OC, IC/groups, kh, kw]`` is ``w.reshape(OC, -1)``, i.e.
``K`` runs over ``(ic, ky, kx)`` with ``kx`` fastest. Group ``(r, c)`` of a layer is rows
``r·PE .. r·PE+PE−1`` and columns ``c·SIMD .. c·SIMD+SIMD−1`` (the last row/column group
may be partial). With ``PE = 1`` a group is exactly ``SIMD`` consecutive weights of one
output channel.

Latency model (:class:`PiecewiseLinear`): per layer, latency as a function of the
fraction ``d`` of groups kept, sampled from the accelerator's cycle model at a few
densities and linearly interpolated between them. For the sparse MVAU the relation is
affine in the number of kept groups (``tests/test_pruning.py`` checks the model at the
sample points against the function it was built from).

ADMM (Boyd et al.; as in ADMM weight pruning, Zhang et al. 2018), for
``min_W loss(W)  s.t.  W ∈ S = {Σ_l lat_l(d_l(W)) ≤ budget}``:

* **W-step**: ``inner_steps`` of SGD on ``loss(W) + ρ/2 · Σ_l ‖W_l − Z_l + U_l‖²``;
* **Z-step**: ``Z = Π_S(W + U)``, the projection onto the latency constraint, by
  :func:`project_latency`: keep the groups with the largest squared norm per unit of the
  marginal latency they cost, greedily, while the budget allows (the knapsack greedy:
  exact when every group of a layer has the same marginal latency and the budget is met
  with equality, otherwise within one group's value of the optimum — tested against brute
  force);
* **dual update**: ``U ← U + W − Z``; ``ρ ← ρ · rho_growth``.

Then **hard pruning** to the support of the last ``Z`` and **masked fine-tuning** (the
gradient and the weights of pruned groups are held at zero), so the returned model meets
the budget exactly under the latency model.

The baseline :func:`magnitude_prune` removes single weights by magnitude at a given density
(unstructured); :func:`layer_latency` evaluates either kind of mask under the same
group-based latency model, which is how the accuracy-vs-latency table compares them.
"""
from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

__all__ = ["GroupSpec", "PiecewiseLinear", "group_norms", "group_mask_to_weight", "weight_to_group_mask",
           "project_latency", "layer_latency", "total_latency", "admm_prune", "magnitude_prune",
           "apply_masks", "PruneResult", "prunable_layers", "finetune_masked"]


# ---------------------------------------------------------------------------------------
# Groups
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GroupSpec:
    """How one layer's weight is cut into groups: ``pe`` rows by ``simd`` columns of the
    ``[OC, K]`` matrix view (module docstring)."""

    name: str
    oc: int
    k: int
    pe: int = 1
    simd: int = 1

    def __post_init__(self) -> None:
        for f in ("oc", "k", "pe", "simd"):
            v = getattr(self, f)
            if not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"GroupSpec {self.name!r}: {f}={v!r} must be a positive integer")

    @property
    def row_groups(self) -> int:
        return -(-self.oc // self.pe)

    @property
    def col_groups(self) -> int:
        return -(-self.k // self.simd)

    @property
    def n_groups(self) -> int:
        return self.row_groups * self.col_groups

    @classmethod
    def of(cls, name: str, module: nn.Module, pe: int = 1, simd: int = 1) -> "GroupSpec":
        w = module.weight
        return cls(name, int(w.shape[0]), int(np.prod(w.shape[1:])), pe, simd)


def _matrix(w: torch.Tensor | np.ndarray) -> np.ndarray:
    a = w.detach().cpu().numpy() if isinstance(w, torch.Tensor) else np.asarray(w)
    return a.reshape(a.shape[0], -1).astype(np.float64)


def _padded(spec: GroupSpec, m: np.ndarray) -> np.ndarray:
    if m.shape != (spec.oc, spec.k):
        raise ValueError(f"{spec.name}: weight matrix shape {m.shape} != (OC, K) = ({spec.oc}, {spec.k})")
    out = np.zeros((spec.row_groups * spec.pe, spec.col_groups * spec.simd))
    out[:spec.oc, :spec.k] = m
    return out


def group_norms(spec: GroupSpec, w) -> np.ndarray:
    """Squared Frobenius norm of every group, shape ``(row_groups, col_groups)``."""
    p = _padded(spec, _matrix(w))
    return (p ** 2).reshape(spec.row_groups, spec.pe, spec.col_groups, spec.simd).sum(axis=(1, 3))


def group_mask_to_weight(spec: GroupSpec, gmask: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Expand a ``(row_groups, col_groups)`` boolean group mask to a weight-shaped mask."""
    gmask = np.asarray(gmask, dtype=bool)
    if gmask.shape != (spec.row_groups, spec.col_groups):
        raise ValueError(f"{spec.name}: group mask shape {gmask.shape} != "
                         f"({spec.row_groups}, {spec.col_groups})")
    full = np.repeat(np.repeat(gmask, spec.pe, axis=0), spec.simd, axis=1)
    return full[:spec.oc, :spec.k].reshape(tuple(shape))


def weight_to_group_mask(spec: GroupSpec, w) -> np.ndarray:
    """Groups holding at least one non-zero weight (the groups the sparse kernel must read)."""
    p = _padded(spec, _matrix(w) != 0)
    return p.reshape(spec.row_groups, spec.pe, spec.col_groups, spec.simd).any(axis=(1, 3))


# ---------------------------------------------------------------------------------------
# Latency model
# ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PiecewiseLinear:
    """``lat(d)`` for a density ``d ∈ [0, 1]``: linear interpolation between samples
    ``(d_i, lat_i)`` (``d_0 = 0`` and the last ``d = 1`` required, ``lat`` non-decreasing)."""

    densities: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        d, v = np.asarray(self.densities, float), np.asarray(self.values, float)
        if d.ndim != 1 or d.shape != v.shape or d.size < 2:
            raise ValueError("PiecewiseLinear: need >= 2 (density, latency) samples of equal length")
        if d[0] != 0.0 or d[-1] != 1.0 or np.any(np.diff(d) <= 0):
            raise ValueError(f"PiecewiseLinear: densities must rise strictly from 0 to 1, got {d.tolist()}")
        if np.any(np.diff(v) < 0) or v[0] < 0:
            raise ValueError(f"PiecewiseLinear: latencies must be >= 0 and non-decreasing, got {v.tolist()}")

    @classmethod
    def sample(cls, fn: Callable[[float], float], points: int = 9) -> "PiecewiseLinear":
        """Sample ``fn`` (e.g. the accelerator's cycle model of the layer at a density) at
        ``points`` evenly spaced densities."""
        d = np.linspace(0.0, 1.0, int(points))
        return cls(tuple(float(x) for x in d), tuple(float(fn(float(x))) for x in d))

    def __call__(self, d) -> np.ndarray | float:
        out = np.interp(np.clip(d, 0.0, 1.0), self.densities, self.values)
        return float(out) if np.ndim(out) == 0 else out


def layer_latency(spec: GroupSpec, model: PiecewiseLinear, w) -> float:
    """Estimated latency of a layer whose weight is ``w``: the groups with any non-zero
    weight are read (so an unstructured mask is charged for every touched group)."""
    return float(model(weight_to_group_mask(spec, w).mean()))


def total_latency(specs: Mapping[str, GroupSpec], models: Mapping[str, PiecewiseLinear],
                  weights: Mapping[str, object]) -> float:
    return float(sum(layer_latency(specs[n], models[n], weights[n]) for n in specs))


# ---------------------------------------------------------------------------------------
# Projection onto the latency constraint (the Z-step)
# ---------------------------------------------------------------------------------------

def project_latency(specs: Mapping[str, GroupSpec], models: Mapping[str, PiecewiseLinear],
                    norms: Mapping[str, np.ndarray], budget: float, min_groups: int = 1,
                    per_row_group: bool = False) -> dict[str, np.ndarray]:
    """Group masks maximising the kept squared norm with ``Σ_l lat_l(d_l) ≤ budget``.

    Every layer first keeps its ``min_groups`` largest groups (a layer is never removed
    entirely) or, with ``per_row_group``, the largest group of every row group (then no row
    group is ever empty: the sparse MVAU's cost is exactly one cycle per kept group,
    ``hls/sparse.py``); then, greedily, the group with the largest ``norm / Δlat`` is added, where
    ``Δlat`` is the latency the layer's next group adds (``lat_l((n+1)/N) − lat_l(n/N)``,
    so a layer whose latency model has steps is charged correctly); a group that does not
    fit is skipped and its layer closed. Ties are broken by layer order then group index
    (deterministic). Raises ``ValueError`` if the minimum already exceeds the budget."""
    names = list(specs)
    masks: dict[str, np.ndarray] = {}
    order: dict[str, np.ndarray] = {}
    kept: dict[str, int] = {}
    used = 0.0
    for n in names:
        s = specs[n]
        g = np.asarray(norms[n], float).reshape(-1)
        if g.size != s.n_groups:
            raise ValueError(f"project_latency: {n}: {g.size} group norms for {s.n_groups} groups")
        m = np.zeros(s.n_groups, bool)
        if per_row_group:
            rows = g.reshape(s.row_groups, s.col_groups)
            first = np.argmax(rows, axis=1) + np.arange(s.row_groups) * s.col_groups  # lowest index on ties
            m[first] = True
            k = int(m.sum())
        else:
            k = min(int(min_groups), s.n_groups)
        rank = np.lexsort((np.arange(g.size), -g))  # largest first, then lower index
        if per_row_group:
            rank = np.concatenate([rank[m[rank]], rank[~m[rank]]])  # the kept ones first
        else:
            m[rank[:k]] = True
        order[n] = rank
        masks[n], kept[n] = m, k
        used += float(models[n](k / s.n_groups))
    if used > budget * (1 + 1e-12):
        what = "one group per row group" if per_row_group else f"{min_groups} group(s) per layer"
        raise ValueError(f"latency budget {budget:.6g} is below the minimum {used:.6g} ({what}); "
                         "raise the budget")
    heap: list[tuple[float, int, int]] = []

    def push(li: int) -> None:
        n = names[li]
        s, k = specs[n], kept[n]
        if k >= s.n_groups:
            return
        dlat = float(models[n]((k + 1) / s.n_groups)) - float(models[n](k / s.n_groups))
        val = float(np.asarray(norms[n], float).reshape(-1)[order[n][k]])
        score = math.inf if dlat <= 0 else val / dlat
        heapq.heappush(heap, (-score, li, k))

    for li in range(len(names)):
        push(li)
    while heap:
        _, li, k = heapq.heappop(heap)
        n = names[li]
        s = specs[n]
        dlat = float(models[n]((k + 1) / s.n_groups)) - float(models[n](k / s.n_groups))
        if used + dlat > budget * (1 + 1e-12):
            continue  # this layer's next group does not fit: the layer is closed
        used += dlat
        masks[n][order[n][k]] = True
        kept[n] = k + 1
        push(li)
    return {n: masks[n].reshape(specs[n].row_groups, specs[n].col_groups) for n in names}


# ---------------------------------------------------------------------------------------
# ADMM
# ---------------------------------------------------------------------------------------

def prunable_layers(model: nn.Module, skip: Iterable[str] = ()) -> dict[str, nn.Module]:
    """Every ``nn.Conv2d`` / ``nn.Linear`` (Brevitas' quantized layers subclass them) by
    qualified name, minus ``skip``."""
    skip = set(skip)
    return {n: m for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in skip}


def apply_masks(layers: Mapping[str, nn.Module], masks: Mapping[str, np.ndarray]) -> None:
    """Zero the pruned weights in place (``masks`` weight-shaped, True = kept)."""
    with torch.no_grad():
        for n, m in masks.items():
            w = layers[n].weight
            w.mul_(torch.as_tensor(m, dtype=w.dtype, device=w.device))


@dataclass
class PruneResult:
    masks: dict[str, np.ndarray]            # weight-shaped, True = kept
    group_masks: dict[str, np.ndarray]      # (row_groups, col_groups)
    latency: float                          # under the latency model, after pruning
    budget: float
    dense_latency: float
    densities: dict[str, float]             # fraction of groups kept per layer
    history: list[dict] = field(default_factory=list)


def _optimizer(model: nn.Module, kind: str, lr: float, momentum: float):
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    raise ValueError(f"optimizer {kind!r} not supported (sgd, adam)")


def _sgd_epoch(model, layers, loss_fn, batches, opt, extra=None, grad_masks=None):
    total, count = 0.0, 0
    for xb, yb in batches:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(xb), yb)
        full = loss + (extra() if extra is not None else 0.0)
        full.backward()
        if grad_masks is not None:
            for n, m in grad_masks.items():
                layers[n].weight.grad.mul_(m)
        opt.step()
        if grad_masks is not None:
            with torch.no_grad():
                for n, m in grad_masks.items():
                    layers[n].weight.mul_(m)
        total += float(loss.detach()) * len(yb)
        count += len(yb)
    return total / max(count, 1)


def admm_prune(model: nn.Module, specs: Mapping[str, GroupSpec], latency: Mapping[str, PiecewiseLinear],
               budget: float, loss_fn: Callable, batches: Callable[[], Iterable], *, admm_iters: int = 6,
               inner_epochs: int = 1, finetune_epochs: int = 3, rho: float = 1e-3, rho_growth: float = 2.0,
               lr: float = 1e-2, momentum: float = 0.9, min_groups: int = 1, per_row_group: bool = False,
               optimizer: str = "sgd", log: Callable[[str], None] | None = None) -> PruneResult:
    """Prune ``model`` in place so that ``Σ_l latency[l](density_l) ≤ budget`` (module docstring).

    ``specs``/``latency``: per layer name (a key of :func:`prunable_layers`); ``batches()``
    returns a fresh iterable of ``(x, y)`` training batches per epoch; ``loss_fn(out, y)``;
    ``optimizer``: ``"sgd"`` (with ``momentum``) or ``"adam"`` for both the W-step and the
    fine-tuning."""
    layers = prunable_layers(model)
    missing = [n for n in specs if n not in layers]
    if missing:
        raise ValueError(f"admm_prune: no Conv2d/Linear named {missing[0]!r} "
                         f"(prunable layers: {', '.join(layers) or 'none'})")
    if set(specs) != set(latency):
        raise ValueError("admm_prune: specs and latency models must name the same layers")
    for n, s in specs.items():
        if GroupSpec.of(n, layers[n], s.pe, s.simd) != s:
            raise ValueError(f"admm_prune: {n}: spec {s} does not match the weight shape "
                             f"{tuple(layers[n].weight.shape)}")
    say = log or (lambda s: None)
    dense = {n: layers[n].weight for n in specs}
    dense_lat = total_latency(specs, latency, {n: _matrix(w) for n, w in dense.items()})

    def z_of(v: Mapping[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
        norms = {n: group_norms(specs[n], v[n]) for n in specs}
        gm = project_latency(specs, latency, norms, budget, min_groups, per_row_group)
        z = {}
        for n in specs:
            shape = tuple(layers[n].weight.shape)
            mask = group_mask_to_weight(specs[n], gm[n], shape)
            z[n] = torch.as_tensor(v[n].reshape(shape) * mask, dtype=layers[n].weight.dtype)
        return z, gm

    W = {n: layers[n].weight for n in specs}
    Z, gm = z_of({n: _matrix(W[n]) for n in specs})
    U = {n: torch.zeros_like(W[n]) for n in specs}
    opt = _optimizer(model, optimizer, lr, momentum)
    history = []
    r = float(rho)
    for it in range(int(admm_iters)):
        model.train()

        def penalty(r=r):
            return sum(0.5 * r * ((W[n] - Z[n] + U[n]) ** 2).sum() for n in specs)

        for _ in range(int(inner_epochs)):
            loss = _sgd_epoch(model, layers, loss_fn, batches(), opt, extra=penalty)
        v = {n: _matrix(W[n].detach() + U[n]) for n in specs}
        Z, gm = z_of(v)
        with torch.no_grad():
            gap = 0.0
            for n in specs:
                U[n] += W[n].detach() - Z[n]
                gap += float(((W[n].detach() - Z[n]) ** 2).sum())
        history.append({"iter": it, "loss": loss, "rho": r, "primal_gap": gap})
        say(f"admm {it + 1}/{admm_iters}: loss {loss:.4f}, ||W - Z||^2 {gap:.4g}, rho {r:.3g}")
        r *= float(rho_growth)

    masks = {n: group_mask_to_weight(specs[n], gm[n], tuple(layers[n].weight.shape)) for n in specs}
    apply_masks(layers, masks)
    gmask_t = {n: torch.as_tensor(masks[n], dtype=layers[n].weight.dtype) for n in specs}
    ft = _optimizer(model, optimizer, lr, momentum)
    for e in range(int(finetune_epochs)):
        model.train()
        loss = _sgd_epoch(model, layers, loss_fn, batches(), ft, grad_masks=gmask_t)
        history.append({"finetune_epoch": e, "loss": loss})
        say(f"finetune {e + 1}/{finetune_epochs}: loss {loss:.4f}")
    model.eval()
    final = {n: _matrix(layers[n].weight) for n in specs}
    lat = total_latency(specs, latency, final)
    return PruneResult(masks=masks, group_masks=gm, latency=lat, budget=float(budget), dense_latency=dense_lat,
                       densities={n: float(gm[n].mean()) for n in specs}, history=history)


def finetune_masked(model: nn.Module, masks: Mapping[str, np.ndarray], loss_fn: Callable,
                    batches: Callable[[], Iterable], epochs: int = 3, lr: float = 1e-2, momentum: float = 0.9,
                    optimizer: str = "sgd") -> float:
    """SGD with the pruned weights held at zero (their gradient masked, the weights re-zeroed
    after every step); returns the last epoch's mean loss. The model ends in eval mode."""
    layers = prunable_layers(model)
    apply_masks(layers, masks)
    m_t = {n: torch.as_tensor(m, dtype=layers[n].weight.dtype) for n, m in masks.items()}
    opt = _optimizer(model, optimizer, lr, momentum)
    loss = float("nan")
    for _ in range(int(epochs)):
        model.train()
        loss = _sgd_epoch(model, layers, loss_fn, batches(), opt, grad_masks=m_t)
    model.eval()
    return loss


def magnitude_prune(model: nn.Module, names: Iterable[str], density: float) -> dict[str, np.ndarray]:
    """Unstructured baseline: per layer, keep the ``ceil(density · n)`` largest-magnitude
    weights (ties by lower flat index), zero the rest in place; returns the masks."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"magnitude_prune: density={density} outside (0, 1]")
    layers = prunable_layers(model)
    masks = {}
    for n in names:
        w = layers[n].weight.detach().cpu().numpy().reshape(-1)
        k = max(1, math.ceil(density * w.size))
        order = np.lexsort((np.arange(w.size), -np.abs(w)))
        m = np.zeros(w.size, bool)
        m[order[:k]] = True
        masks[n] = m.reshape(tuple(layers[n].weight.shape))
    apply_masks(layers, masks)
    return masks
