"""`codesign prune mpcnn` (ALCS) and building its pruned model with block-sparse MVAUs."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from codesign.accel import cli
from codesign.accel.prune_flow import PruneError, parse_budgets

pytest.importorskip("sklearn")


def test_parse_budgets():
    assert parse_budgets("0.2,0.1,0.2") == [0.1, 0.2]
    for bad in ("x", "0", "-1", "0.1,,0.2"):
        with pytest.raises(PruneError):
            parse_budgets(bad)


def test_prune_then_sparse_build(tmp_path, capsys):
    out = tmp_path / "p"
    assert cli.main(["prune", "mpcnn", "--latency-budget-ms", "0.12", "--out", str(out), "--epochs", "2",
                     "--admm-iters", "1", "--finetune-epochs", "1"]) == 0
    r = json.loads((out / "prune.json").read_text())
    (b,) = r["budgets"]
    f = r["clock_mhz"] * 1e6
    # the dense latency by hand: sum over layers of pixels x ceil(OC/PE) x ceil(K/SIMD) cycles
    dense = sum(L["pixels"] * L["oc"] * -(-L["k"] // 8) for L in r["layers"].values())
    assert r["dense_cycles"] == dense and r["dense_latency_ms"] == pytest.approx(1e3 * dense / f)
    assert b["alcs"]["latency_ms"] <= 0.12 * (1 + 1e-9)
    # the packed integer weights never need more cycles than the model charges
    assert b["alcs"]["exact_latency_ms"] <= b["alcs"]["latency_ms"] * (1 + 1e-9)
    # unstructured pruning at the same density leaves far more groups to read
    assert b["magnitude"]["latency_ms"] > 1.2 * b["alcs"]["exact_latency_ms"]
    assert ET.fromstring((out / "prune.svg").read_text()).tag.endswith("svg")
    capsys.readouterr()
    d = tmp_path / "b"
    assert cli.main(["build", str(out / "model.onnx"), "--board", "zcu111", "--sparse", "1,8", "--out", str(d)]) == 0
    rep = json.loads((d / "report.json").read_text())
    assert rep["csim"]["passed"] is True
    ir = json.loads((d / "ir" / "ir.json").read_text())
    marked = [o["name"] for o in ir["ops"] if "sparse" in o.get("attrs", {})]
    assert marked, "no op was emitted sparse"
    src = (d / "hls" / "codesign_top.cpp").read_text()
    assert "SparseConv2d" in src or "SparseMvau" in src


def test_prune_errors_one_line(tmp_path, capsys):
    assert cli.main(["prune", "mpcnn", "--latency-budget-ms", "0.001", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "below the minimum" in err[0]
    assert cli.main(["build", "mpcnn", "--board", "zcu111", "--sparse", "8", "--out", str(tmp_path / "b")]) == 2
    assert "expected PE,SIMD" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
