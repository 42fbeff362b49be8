"""`codesign quantize mpcnn`: budget parsing, an end-to-end short run, errors."""
from __future__ import annotations

import json

import pytest
from qonnx.core.modelwrapper import ModelWrapper

from codesign.accel.cli import main
from codesign.accel.mp_flow import QuantizeError, parse_budget
from codesign.quantize import mpcnn as M


def test_parse_budget():
    assert parse_budget("avg-bits=3.5") == ("avg-bits", 3.5)
    assert parse_budget("bops=12") == ("bops", 12.0)
    for bad in ("avg-bits", "size=3", "avg-bits=x", "bops=-1", "avg-bits=nan"):
        with pytest.raises(QuantizeError):
            parse_budget(bad)


def test_quantize_mpcnn_short_run(tmp_path, capsys):
    out = tmp_path / "q"
    rc = main(["quantize", "mpcnn", "--budget", "avg-bits=4", "--out", str(out), "--epochs", "2",
               "--finetune-epochs", "1"])
    assert rc == 0
    r = json.loads((out / "quantize.json").read_text())
    shapes = M.layer_shapes()
    n = {k: shapes[k]["oc"] * shapes[k]["k"] for k in M.LAYERS}
    bits = r["allocation"]["exact"]["choice"]
    # the cost recomputed by hand: sum of n_l * b_l, within 4 bits per weight on average
    size = sum(n[k] * bits[k] for k in M.LAYERS)
    assert size == r["configs"][0]["cost"] and size <= 4 * sum(n.values())
    assert r["configs"][1]["cost"] == 4 * sum(n.values())  # uniform 4-bit
    assert [c["within_budget"] for c in r["configs"]] == [True, True, False]  # 4 bits fit: no extra row
    # the exported graph carries the chosen widths, layer by layer
    model = ModelWrapper(str(out / "model.onnx"))
    got = [int(model.get_initializer(model.find_producer(nd.input[1]).input[3]))
           for nd in model.graph.node if nd.op_type in ("Conv", "Gemm")]
    assert got == [bits[k] for k in M.LAYERS]
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "model.pt", "quantize.json", "quantize.md"]
    assert "uniform 4-bit" in capsys.readouterr().out


def test_quantize_errors_one_line(tmp_path, capsys):
    assert main(["quantize", "mpcnn", "--budget", "avg-bits=1", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "infeasible" in err[0]
    assert main(["quantize", "resnet", "--budget", "avg-bits=4", "--out", str(tmp_path / "b")]) == 2
    assert "supported: mpcnn" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_quantize_lut_budget_uses_the_accelerator_model(tmp_path, capsys):
    import dataclasses

    from codesign.accel import dataflow as D
    from codesign.accel.dataflow_ir import layers_from_ir
    from codesign.accel.lower import lower

    out = tmp_path / "q"
    assert main(["quantize", "mpcnn", "--budget", "lut=180000", "--board", "zcu102", "--out", str(out),
                 "--epochs", "1", "--finetune-epochs", "1"]) == 0
    r = json.loads((out / "quantize.json").read_text())
    bits, fold = r["allocation"]["exact"]["choice"], r["folding"]
    # recompute the chosen allocation's LUTs from the dataflow model on the exported graph
    layers = layers_from_ir(lower(str(out / "model.onnx"), threshold_all=True))
    total = sum(D.layer_resources(dataclasses.replace(lay, WB=bits[n]), fold[n]["PE"], fold[n]["SIMD"]).lut
                for n, lay in zip(M.LAYERS, layers))
    assert [lay.WB for lay in layers] == [bits[n] for n in M.LAYERS]
    assert total == pytest.approx(r["configs"][0]["cost"]) and total <= 180000
    assert main(["quantize", "mpcnn", "--budget", "lut=180000", "--out", str(tmp_path / "x")]) == 2
    assert "needs --board" in capsys.readouterr().err
    assert main(["quantize", "mpcnn", "--budget", "avg-bits=4", "--board", "zcu102", "--out", str(tmp_path / "y")]) == 2
    assert "--board applies to --budget lut" in capsys.readouterr().err
