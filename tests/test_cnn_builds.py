"""`codesign build bnn|mpcnn`: the zoo CNNs go quantize -> export -> lower -> emit -> csim, and
`codesign predict` equals qonnx's `execute_onnx` of DIR/model.onnx (==) on every test digit."""
from __future__ import annotations

import json

import numpy as np
import pytest

from codesign.accel import cli, flow
from codesign.accel.qonnx_exec import execute_qonnx

pytest.importorskip("sklearn")


def _digits_test() -> tuple[np.ndarray, np.ndarray]:
    from codesign.quantize import mpcnn

    _, _, x, y = mpcnn.digits()
    return x.numpy().astype(np.float32), y.numpy()


@pytest.mark.parametrize("model, board", [("mpcnn", "zcu111"), ("bnn", "zcu102")])
def test_cnn_zoo_build_predict_equals_execute_onnx(model, board, tmp_path, capsys):
    out = tmp_path / f"{model}-{board}"
    assert cli.main(["build", model, "--board", board, "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["csim"]["passed"] is True and rep["csim"]["cases"] == flow.CNN_CASES
    assert "conv2d" in rep["ops"]
    x, labels = _digits_test()
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["predict", str(out), "--input", str(tmp_path / "x.npy"), "--output",
                     str(tmp_path / "y.npy")]) == 0
    y = np.load(tmp_path / "y.npy")
    # the compiled C++ (re-emitted with the build's folding: its sources must equal DIR/hls)
    np.save(tmp_path / "x40.npy", x[:40])
    assert cli.main(["predict", str(out), "--input", str(tmp_path / "x40.npy"), "--output",
                     str(tmp_path / "y40.npy"), "--engine", "csim"]) == 0
    assert np.array_equal(np.load(tmp_path / "y40.npy"), y[:40])
    ye = execute_qonnx(out / "model.onnx", x)
    assert y.shape == ye.shape == (len(x), 10)
    assert np.array_equal(y, ye)  # every logit of all 397 test digits
    # the deployed model classifies digits (chance is 10 %)
    assert (y.argmax(1) == labels).mean() > 0.6


def test_mpcnn_build_keeps_per_layer_widths(tmp_path, capsys):
    from codesign.accel import ir as irm

    out = tmp_path / "m"
    assert cli.main(["build", "mpcnn", "--board", "zcu111", "--out", str(out), "--no-csim"]) == 0
    ir = irm.load(out / "ir")
    widths = [ir.constants[op.inputs[1]].type.bits for op in ir.ops if op.op in ("conv2d", "matmul")]
    assert widths == list(flow.MPCNN_BUILD_BITS.values())
    src = (out / "hls" / "codesign_top.cpp").read_text()
    for b in set(widths):
        assert f"IntT<{b}, true, true>" in src  # the weight arrays' ap_int widths


def test_cnn_zoo_bad_config_one_line(tmp_path, capsys):
    assert cli.main(["build", "bnn", "--board", "zcu102", "--config", "base", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: unknown config 'base' for bnn (supported: tiny, resnet18)"]
    assert not (tmp_path / "x").exists()
