"""Concat of two conv branches at one (shared) scale, the DenseNet/Inception pattern:
lowered to ``concat`` on NCHW codes, built (C simulation passes), and ``predict`` by the
reference and by the compiled C++ equal qonnx's ``execute_onnx`` with ``==``."""
from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from codesign.accel import cli
from codesign.accel.lower import lower
from codesign.accel.qonnx_exec import execute_qonnx
from codesign.hls import csim
from codesign.sim.run_ir import run_reference

torch = pytest.importorskip("torch")
qnn = pytest.importorskip("brevitas.nn")
needs_csim = pytest.mark.skipif(csim.available() is not None, reason=f"csim unavailable: {csim.available()}")


def _model(float_scales: bool):
    """Power-of-two scales (exact against QONNX with ``threshold_all``), or float scales
    (the default build's m = 24 requants meet no exact ties on these inputs)."""
    from brevitas.quant import (Int8ActPerTensorFixedPoint, Int8ActPerTensorFloat, Int8WeightPerTensorFixedPoint,
                                Int8WeightPerTensorFloat)
    A = Int8ActPerTensorFloat if float_scales else Int8ActPerTensorFixedPoint
    Wq = Int8WeightPerTensorFloat if float_scales else Int8WeightPerTensorFixedPoint

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q0 = qnn.QuantIdentity(act_quant=A, return_quant_tensor=True)
            self.c1 = qnn.QuantConv2d(1, 4, 3, padding=1, weight_quant=Wq, weight_bit_width=4, bias=False)
            self.c2 = qnn.QuantConv2d(1, 3, 1, weight_quant=Wq, weight_bit_width=4, bias=False)
            self.q = qnn.QuantIdentity(act_quant=A, return_quant_tensor=True)  # shared: one scale for both
            self.c3 = qnn.QuantConv2d(7, 4, 3, padding=1, stride=2, weight_quant=Wq, weight_bit_width=4, bias=False)
            self.q3 = qnn.QuantIdentity(act_quant=A)

        def forward(self, x):
            x = self.q0(x)
            y = torch.cat([self.q(self.c1(x)), self.q(self.c2(x))], dim=1)
            return self.q3(self.c3(y))

    torch.manual_seed(3)
    m = M()
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(8, 1, 8, 8) * 2)
    m.eval()
    return m


def _export(float_scales: bool, path):
    from brevitas.export import export_qonnx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(_model(float_scales), torch.zeros(1, 1, 8, 8), export_path=str(path))
    return path


@pytest.fixture(scope="module")
def cat_file(tmp_path_factory):
    return _export(False, tmp_path_factory.mktemp("cat") / "cat.onnx")


def _x(n, seed):
    return (np.random.default_rng(seed).standard_normal((n, 1, 8, 8)) * 2).astype(np.float32)


def test_concat_lowered_and_exact(cat_file):
    ir = lower(cat_file, threshold_all=True)
    ops = [o.op for o in ir.ops]
    assert ops.count("concat") == 1 and ops.count("conv2d") == 3
    cat = next(o for o in ir.ops if o.op == "concat")
    assert ir.tensors[cat.outputs[0]].shape == (1, 7, 8, 8)
    x = _x(200, 0)
    y = run_reference(ir, {ir.inputs[0].onnx_name: x})[ir.outputs[0].onnx_name]
    assert np.array_equal(y, execute_qonnx(cat_file, x))


@needs_csim
def test_concat_build_csim_predict(tmp_path, capsys):
    out = tmp_path / "cat"
    f = _export(True, tmp_path / "cat_float.onnx")
    assert cli.main(["build", str(f), "--board", "zcu102", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["csim"]["passed"] is True and "concat" in rep["ops"]
    x = _x(48, 5)
    np.save(tmp_path / "x.npy", x)
    ys = []
    for engine in ("reference", "csim"):
        assert cli.main(["predict", str(out), "--input", str(tmp_path / "x.npy"), "--output",
                         str(tmp_path / f"y_{engine}.npy"), "--engine", engine]) == 0
        ys.append(np.load(tmp_path / f"y_{engine}.npy"))
    assert np.array_equal(ys[0], ys[1])
    assert np.array_equal(ys[0], execute_qonnx(f, x))
