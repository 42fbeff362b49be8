"""ALCS pruning (codesign.quantize.pruning): groups, latency model, the latency projection
against brute force, and ADMM meeting its budget on a small digits model."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from torch import nn

from codesign.quantize import pruning as P


def test_group_norms_hand_example():
    # OC = 3, K = 5, PE = 2, SIMD = 2: groups are rows {0,1},{2} x cols {0,1},{2,3},{4}.
    w = np.arange(15, dtype=float).reshape(3, 5)
    s = P.GroupSpec("l", 3, 5, pe=2, simd=2)
    g = P.group_norms(s, w)
    want = np.array([
        [0 ** 2 + 1 ** 2 + 5 ** 2 + 6 ** 2, 2 ** 2 + 3 ** 2 + 7 ** 2 + 8 ** 2, 4 ** 2 + 9 ** 2],
        [10 ** 2 + 11 ** 2, 12 ** 2 + 13 ** 2, 14 ** 2],
    ], float)
    assert np.array_equal(g, want)
    assert (s.row_groups, s.col_groups, s.n_groups) == (2, 3, 6)


def test_conv_weight_matrix_view_and_masks():
    # Conv weight [OC=2, IC=3, 1, 2]: K runs over (ic, kx): 6 columns, SIMD = 4 -> 2 column groups.
    s = P.GroupSpec("c", 2, 6, pe=1, simd=4)
    gm = np.array([[True, False], [False, True]])
    m = P.group_mask_to_weight(s, gm, (2, 3, 1, 2))
    flat = m.reshape(2, 6)
    assert flat[0].tolist() == [True] * 4 + [False] * 2
    assert flat[1].tolist() == [False] * 4 + [True] * 2
    w = np.ones((2, 3, 1, 2)) * m
    assert np.array_equal(P.weight_to_group_mask(s, w), gm)


def test_unstructured_mask_is_charged_for_every_touched_group():
    s = P.GroupSpec("l", 1, 8, pe=1, simd=4)
    lat = P.PiecewiseLinear((0.0, 1.0), (0.0, 100.0))
    w = np.zeros((1, 8))
    w[0, 1] = 1.0  # one weight in group 0
    assert P.layer_latency(s, lat, w) == 50.0
    w[0, 6] = 1.0  # and one in group 1
    assert P.layer_latency(s, lat, w) == 100.0


def test_piecewise_linear_sample_and_checks():
    f = lambda d: 10 + 30 * d if d < 0.5 else 25 + 60 * (d - 0.5)  # noqa: E731  (kink at 0.5)
    pl = P.PiecewiseLinear.sample(f, points=5)
    for d in (0.0, 0.25, 0.5, 0.75, 1.0):
        assert pl(d) == pytest.approx(f(d), abs=1e-12)
    assert pl(0.125) == pytest.approx(10 + 30 * 0.125)
    with pytest.raises(ValueError, match="rise strictly"):
        P.PiecewiseLinear((0.0, 0.5), (1.0, 2.0))
    with pytest.raises(ValueError, match="non-decreasing"):
        P.PiecewiseLinear((0.0, 1.0), (2.0, 1.0))


def _brute(specs, models, norms, budget, min_groups=1):
    """The optimum of the projection over all group subsets (tiny cases only)."""
    names = list(specs)
    sizes = [specs[n].n_groups for n in names]
    best = -1.0
    for bits in itertools.product(*[itertools.product((0, 1), repeat=k) for k in sizes]):
        lat, val, ok = 0.0, 0.0, True
        for n, b in zip(names, bits):
            b = np.array(b, bool)
            if b.sum() < min(min_groups, b.size):
                ok = False
                break
            lat += models[n](b.sum() / b.size)
            val += float(norms[n].reshape(-1)[b].sum())
        if ok and lat <= budget + 1e-9:
            best = max(best, val)
    return best


@pytest.mark.parametrize("seed", range(40))
def test_projection_vs_brute_force(seed):
    rng = np.random.default_rng(seed)
    specs, models, norms = {}, {}, {}
    for i in range(rng.integers(1, 4)):
        n = f"l{i}"
        specs[n] = P.GroupSpec(n, int(rng.integers(1, 3)), int(rng.integers(1, 5)), 1, 2)
        per = float(rng.uniform(1, 10))  # linear latency: each group costs `per`
        base = float(rng.uniform(0, 5))
        models[n] = P.PiecewiseLinear((0.0, 1.0), (base, base + per * specs[n].n_groups))
        norms[n] = rng.exponential(1.0, (specs[n].row_groups, specs[n].col_groups))
    lo = sum(models[n](1 / specs[n].n_groups) for n in specs)
    hi = sum(models[n](1.0) for n in specs)
    budget = float(rng.uniform(lo, hi + 1))
    gm = P.project_latency(specs, models, norms, budget)
    lat = sum(models[n](gm[n].mean()) for n in specs)
    val = sum(float(norms[n][gm[n]].sum()) for n in specs)
    opt = _brute(specs, models, norms, budget)
    assert lat <= budget + 1e-9  # feasible
    assert val <= opt + 1e-9
    # Knapsack greedy bound: within the largest single group value of the optimum.
    assert val >= opt - max(float(v.max()) for v in norms.values()) - 1e-9


def test_projection_exact_for_equal_marginal_latency():
    # Every group of every layer costs 1: the optimum keeps the largest norms overall.
    rng = np.random.default_rng(7)
    specs = {f"l{i}": P.GroupSpec(f"l{i}", 4, 8, 1, 2) for i in range(3)}  # 16 groups each
    models = {n: P.PiecewiseLinear((0.0, 1.0), (0.0, 16.0)) for n in specs}
    norms = {n: rng.exponential(1.0, (4, 4)) for n in specs}
    budget = 20.0
    gm = P.project_latency(specs, models, norms, budget)
    kept = sorted((float(v) for n in specs for v in norms[n][gm[n]]), reverse=True)
    assert len(kept) == 20
    # the 3 per-layer minimum groups are each layer's largest, so the top 20 overall are kept
    top = sorted((float(v) for n in specs for v in norms[n].reshape(-1)), reverse=True)[:20]
    assert kept == top


def test_projection_infeasible_budget_one_line():
    specs = {"a": P.GroupSpec("a", 2, 2, 1, 1)}
    models = {"a": P.PiecewiseLinear((0.0, 1.0), (10.0, 20.0))}
    with pytest.raises(ValueError, match="below the minimum"):
        P.project_latency(specs, models, {"a": np.ones((2, 2))}, budget=5.0)


def _digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data / 16.0, dtype=torch.float32)
    y = torch.tensor(d.target, dtype=torch.long)
    return x[:1400], y[:1400], x[1400:], y[1400:]


def test_admm_meets_latency_budget_and_beats_unstructured():
    torch.manual_seed(0)
    xtr, ytr, xte, yte = _digits()
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    gen = torch.Generator().manual_seed(0)

    def batches():
        perm = torch.randperm(len(ytr), generator=gen)
        return [(xtr[perm[i:i + 64]], ytr[perm[i:i + 64]]) for i in range(0, len(ytr), 64)]

    loss_fn = nn.CrossEntropyLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(8):
        for xb, yb in batches():
            opt.zero_grad()
            loss_fn(model(xb), yb).backward()
            opt.step()
    layers = P.prunable_layers(model)
    specs = {n: P.GroupSpec.of(n, m, pe=1, simd=8) for n, m in layers.items()}
    # Sparse-MVAU-like model: a fixed pipeline cost plus one cycle per kept group.
    lat = {n: P.PiecewiseLinear.sample(lambda d, s=s: 20 + d * s.n_groups, points=3) for n, s in specs.items()}
    dense = sum(lat[n](1.0) for n in specs)
    budget = 0.4 * dense
    unstructured = {n: layers[n].weight.detach().clone() for n in specs}
    res = P.admm_prune(model, specs, lat, budget, loss_fn, batches, admm_iters=4, finetune_epochs=3,
                       lr=0.02, rho=1e-2)
    assert res.latency <= budget + 1e-9
    assert res.dense_latency == pytest.approx(dense)
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yte).float().mean().item()
    assert acc > 0.85, acc  # dense ~0.95 here; 60 % of the latency removed
    # the pruned groups are exactly zero, and the kept fraction matches the group masks
    for n in specs:
        gm = P.weight_to_group_mask(specs[n], layers[n].weight)
        assert (gm <= res.group_masks[n]).all()
    # Unstructured magnitude pruning at the same weight density touches almost every group.
    density = float(np.mean([res.masks[n].mean() for n in specs]))
    base = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    with torch.no_grad():
        for (n, m), w in zip(P.prunable_layers(base).items(), unstructured.values()):
            m.weight.copy_(w)
    P.magnitude_prune(base, specs, density)
    base_lat = P.total_latency(specs, lat, {n: m.weight for n, m in P.prunable_layers(base).items()})
    assert base_lat > res.latency * 1.5, (base_lat, res.latency)


def test_admm_rejects_unknown_layer():
    model = nn.Sequential(nn.Linear(4, 2))
    specs = {"9": P.GroupSpec("9", 2, 4)}
    lat = {"9": P.PiecewiseLinear((0.0, 1.0), (0.0, 1.0))}
    with pytest.raises(ValueError, match="no Conv2d/Linear named '9'"):
        P.admm_prune(model, specs, lat, 1.0, nn.CrossEntropyLoss(), lambda: [])


@pytest.mark.parametrize("seed", range(20))
def test_projection_per_row_group_keeps_every_row_group(seed):
    rng = np.random.default_rng(100 + seed)
    specs, models, norms = {}, {}, {}
    for i in range(2):
        n = f"l{i}"
        specs[n] = P.GroupSpec(n, int(rng.integers(2, 6)), int(rng.integers(4, 12)), int(rng.integers(1, 3)), 2)
        models[n] = P.PiecewiseLinear((0.0, 1.0), (0.0, float(specs[n].n_groups)))  # one cycle per group
        norms[n] = rng.exponential(1.0, (specs[n].row_groups, specs[n].col_groups))
    floor_ = sum(specs[n].row_groups for n in specs)  # one group per row group
    budget = float(rng.integers(floor_, sum(s.n_groups for s in specs.values()) + 1))
    gm = P.project_latency(specs, models, norms, budget, per_row_group=True)
    kept = sum(int(gm[n].sum()) for n in specs)
    assert kept == int(budget)  # unit costs: the budget is filled exactly
    for n in specs:
        assert gm[n].any(axis=1).all()  # no empty row group
        # each row group's largest group is kept
        assert gm[n][np.arange(specs[n].row_groups), norms[n].argmax(axis=1)].all()
    with pytest.raises(ValueError, match="one group per row group"):
        P.project_latency(specs, models, norms, floor_ - 1, per_row_group=True)
