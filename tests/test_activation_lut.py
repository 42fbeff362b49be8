"""Elementwise activations (Sigmoid, Tanh, ReLU6/Hardtanh as Clip, LeakyReLU, ELU, SELU,
Hardswish, Hardsigmoid, GELU) between quantizers lower to one §4 ``lut``
(``LowerActivationLUT``): the integer IR equals qonnx's ``execute_onnx`` of the exported
Brevitas graph with ``==`` on every output, ReLU6's table equals a hand-derived one, and a
build with a tabulated activation passes C simulation with ``predict`` == ``execute_onnx``."""
from __future__ import annotations

import json
import warnings
from fractions import Fraction

import numpy as np
import pytest

from codesign.accel import cli
from codesign.accel.lower import lower
from codesign.accel.passes import LoweringError, UnsupportedOpError
from codesign.accel.qonnx_exec import execute_qonnx
from codesign.hls import csim
from codesign.sim.run_ir import run_reference

torch = pytest.importorskip("torch")
qnn = pytest.importorskip("brevitas.nn")

ACTS = {
    "sigmoid": lambda: torch.nn.Sigmoid(),
    "tanh": lambda: torch.nn.Tanh(),
    "relu6": lambda: torch.nn.ReLU6(),
    "hardtanh": lambda: torch.nn.Hardtanh(-0.5, 0.75),
    "leaky": lambda: torch.nn.LeakyReLU(0.1),
    "elu": lambda: torch.nn.ELU(),
    "selu": lambda: torch.nn.SELU(),
    "hardswish": lambda: torch.nn.Hardswish(),
    "hardsigmoid": lambda: torch.nn.Hardsigmoid(),
    "gelu": lambda: torch.nn.GELU(),
}
needs_csim = pytest.mark.skipif(csim.available() is not None, reason=f"csim unavailable: {csim.available()}")


def _model(act: str, float_scales: bool = False):
    """int8 input -> 4-bit conv -> int8 -> act -> int8 -> linear -> int8. Power-of-two scales by
    default; ``float_scales``: per-tensor float scales (the lowering's m = 24 requants then
    meet no exact ties on these inputs, so a default build equals execute_onnx)."""
    from brevitas.quant import (Int8ActPerTensorFixedPoint, Int8ActPerTensorFloat, Int8WeightPerTensorFixedPoint,
                                Int8WeightPerTensorFloat)

    A = Int8ActPerTensorFloat if float_scales else Int8ActPerTensorFixedPoint
    Wq = Int8WeightPerTensorFloat if float_scales else Int8WeightPerTensorFixedPoint

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q0 = qnn.QuantIdentity(act_quant=A)
            self.conv = qnn.QuantConv2d(1, 4, 3, padding=1, bias=False, weight_quant=Wq, weight_bit_width=4)
            self.q1 = qnn.QuantIdentity(act_quant=A)
            self.act = ACTS[act]()
            self.q2 = qnn.QuantIdentity(act_quant=A)
            self.fc = qnn.QuantLinear(4 * 8 * 8, 10, bias=False, weight_quant=Wq)
            self.q3 = qnn.QuantIdentity(act_quant=A)  # integer outputs: no float accumulation to compare

        def forward(self, x):
            y = self.q2(self.act(self.q1(self.conv(self.q0(x)))))
            return self.q3(self.fc(torch.flatten(y, 1)))

    torch.manual_seed(0)
    m = M()
    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(16, 1, 8, 8) * 2)
    m.eval()
    return m


def _export(m, path):
    from brevitas.export import export_qonnx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(m, torch.zeros(1, 1, 8, 8), export_path=str(path))
    return path


@pytest.fixture(scope="module")
def act_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("acts")
    return {a: _export(_model(a), d / f"{a}.onnx") for a in ACTS}


def _inputs(n: int, seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((n, 1, 8, 8)) * 3).astype(np.float32)


@pytest.mark.parametrize("act", sorted(ACTS))
def test_activation_lut_equals_execute_onnx(act_files, act):
    """threshold_all makes every other rounding exact, so the whole IR is ``==`` to QONNX;
    the trace shows the lut's input taking many distinct codes (a real test of the table)."""
    ir = lower(act_files[act], threshold_all=True)
    kinds = [o.op for o in ir.ops]
    assert kinds.count("lut") == 1, kinds
    x = _inputs(256)
    name = ir.inputs[0].onnx_name
    y, tr = run_reference(ir, {name: x}, trace=True)
    lut = next(o for o in ir.ops if o.op == "lut")
    assert len(np.unique(tr[lut.inputs[0]])) > 100
    assert np.array_equal(y[ir.outputs[0].onnx_name], execute_qonnx(act_files[act], x))


def _pow2(s: float) -> Fraction:
    f = Fraction(s)
    assert f.numerator == 1 or f.denominator == 1, f"scale {s} is not a power of two"
    return f


def test_relu6_table_hand_derived(act_files):
    """ReLU6 between two power-of-two int8 quantizers: code q maps to
    clamp(round_half_even(min(max(q * s_in, 0), 6) / s_out), -128, 127), computed here in
    exact rational arithmetic, independently of ONNX."""
    ir = lower(act_files["relu6"], threshold_all=True)
    lut = next(o for o in ir.ops if o.op == "lut")
    s_in = _pow2(ir.tensors[lut.inputs[0]].scale.value)
    s_out = _pow2(ir.tensors[lut.outputs[0]].scale.value)
    table = ir.constants[lut.inputs[1]].values.reshape(-1)
    assert table.shape == (256,)
    for q in range(-128, 128):
        v = min(max(q * s_in, Fraction(0)), Fraction(6)) / s_out
        want = max(-128, min(127, round(v)))  # Python's round on a Fraction: half to even
        assert table[q & 0xFF] == want, q
    assert table[0] == 0 and table[0x80] == 0  # q = 0 and q = -128 both give relu(.) = 0


def test_unsupported_activation_shapes_one_line(tmp_path):
    """An activation on the float graph input (not quantized) and a decomposed one (Softplus
    exports as Softplus/Greater/Where) are one-line errors naming the node."""
    from brevitas.quant import Int8ActPerTensorFixedPoint

    class F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint)

        def forward(self, x):
            return self.q(torch.sigmoid(x))

    with pytest.raises(LoweringError) as e:
        lower(_export(F(), tmp_path / "float_in.onnx"))
    msg = str(e.value)
    assert "\n" not in msg and "Sigmoid" in msg and "quantized" in msg

    class S(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q0 = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint)
            self.q1 = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint)

        def forward(self, x):
            return self.q1(torch.nn.functional.softplus(self.q0(x)))

    with pytest.raises(UnsupportedOpError) as e:
        lower(_export(S(), tmp_path / "softplus.onnx"))
    assert "\n" not in str(e.value) and "not supported" in str(e.value)


@needs_csim
def test_build_with_activation_lut_csim_and_predict(tmp_path, capsys):
    """``codesign build`` of a graph with a tabulated Sigmoid (float scales, default
    lowering): csim passes, and predict by the reference and by the compiled C++ agree
    ``==`` and equal ``execute_onnx``."""
    out = tmp_path / "sig"
    f = _export(_model("sigmoid", float_scales=True), tmp_path / "sigmoid_float.onnx")
    assert cli.main(["build", str(f), "--board", "zcu102", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["csim"]["passed"] is True and rep["csim"]["mismatches"] == 0
    assert "lut" in rep["ops"]
    x = _inputs(64, seed=7)
    np.save(tmp_path / "x.npy", x)
    ys = []
    for engine in ("reference", "csim"):
        assert cli.main(["predict", str(out), "--input", str(tmp_path / "x.npy"), "--output",
                         str(tmp_path / f"y_{engine}.npy"), "--engine", engine]) == 0
        ys.append(np.load(tmp_path / f"y_{engine}.npy"))
    assert np.array_equal(ys[0], ys[1])
    assert np.array_equal(ys[0], execute_qonnx(out / "model.onnx", x))
