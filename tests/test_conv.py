"""Convolutional networks through codesign (docs/arithmetic.md §11, docs/ir.md):

* csim (hls/include/codesign/conv.h through ``codesign.hls.csim_nonlinear.conv2d``) ==
  reference with hypothesis over shapes, groups (depthwise included), stride, dilation,
  asymmetric pads and PE/SIMD folding; the MVAU's counted iterations == the cost model's
  formula (``codesign.accel.ops`` ``conv2d``) and the window generator's == its formula;
  named corner cases (bipolar x bipolar with padding, 4-bit weights x 8-bit activations).
* a user's Brevitas CNN on 8x8 digits (QuantIdentity 8-bit input, QuantConv2d 4-bit 3x3
  pad 1 + BatchNorm2d + QuantReLU, MaxPool2d 2, depthwise QuantConv2d stride 2, QuantReLU,
  AvgPool2d, flatten, QuantLinear), exported with Brevitas ``export_qonnx``:
  * ``lower(..., threshold_all=True)``: the IR equals qonnx ``execute_onnx`` with ``==``
    on every sample (power-of-two scales: the float path is exact and thresholds
    reproduce QONNX's rounding, ties included);
  * ``lower`` with the defaults (requant, round half up): ``==`` except on samples where a
    requant/avgpool2d meets an exact tie (checked element by element for every op);
  * ``codesign build <file.onnx> --board zcu111`` (csim passes) and ``codesign predict``
    == ``execute_onnx`` of DIR/model.onnx on 300 digits, for a variant whose quantizers all
    lower exactly (BatchNorm -> thresholds; the post-pool quantizer's ratio is a power of
    two >= 1, so its requant has no ties);
* one-line errors for what the lowering does not support (ceil_mode=1, auto_pad, float
  weights, count_include_pad=0 with pads).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from codesign.accel import cli, ops
from codesign.accel.lower import LoweringError, lower
from codesign.accel.qonnx_exec import execute_qonnx
from codesign.hls import csim
from codesign.sim import reference as R
from codesign.sim.run_ir import run_reference

I = R.IntType
needs_csim = pytest.mark.skipif(csim.available() is not None, reason=f"csim unavailable: {csim.available()}")


def _sim():
    from codesign.hls import csim_nonlinear
    return csim_nonlinear


def _codes(rng, t, shape):
    if t.bipolar:
        return rng.choice(np.array([-1, 1]), size=shape)
    return rng.integers(t.lo, t.hi + 1, size=shape)


# ---------------------------------------------------------------------------------------
# csim == reference


def _check_csim(x, w, b, stride, pad, dil, groups, xt, wt, pe, simd):
    want = R.conv2d(x, w, b, stride, pad, dil, groups, xt, wt)
    got, info = _sim().conv2d_ex(x, w, b, stride, pad, dil, groups, xt, wt, pe=pe, simd=simd)
    assert got.dtype == np.int64 and np.array_equal(got, want)
    N, _, OH, OW = want.shape
    OC, ICg, KH, KW = w.shape
    K = ICg * KH * KW
    assert info["trips"] == ops.get_op("conv2d").trips(OH=OH, OW=OW, OC=OC, K=K, pe=pe, simd=simd, images=N)
    # window generator: every input row any window reads, loaded once (IC*W each), plus
    # G*ceil(K/SIMD) chunks per output pixel
    pt, pl, pb, pr = R.conv_pads("t", pad)
    sh = stride if np.isscalar(stride) else stride[0]
    dh = dil if np.isscalar(dil) else dil[0]
    H, W = x.shape[2], x.shape[3]
    h_used = min(H, max(0, (OH - 1) * sh - pt + dh * (KH - 1) + 1))
    assert info["swg_trips"] == N * (h_used * x.shape[1] * W + OH * OW * groups * -(-K // simd))
    assert info["acc_bits"] == R.acc_bits(K, xt, wt, *((-(2**31), 2**31 - 1) if b is not None else (0, 0)))
    return want


@needs_csim
@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 2**31 - 1),
       types=st.sampled_from([(I(8, False), I(4, True)), (I(8, True), I(4, True)), (I(1, True), I(1, True)),
                              (I(4, False), I(2, True)), (I(8, False), I(1, True)), (I(2, True), I(8, True, True))]),
       g=st.integers(1, 2), icg=st.integers(1, 3), ocg=st.integers(1, 3), k=st.sampled_from([1, 3, 5]),
       s=st.integers(1, 2), d=st.integers(1, 2), pads=st.tuples(*[st.integers(0, 2)] * 4),
       bias=st.booleans(), depthwise=st.booleans(), pe=st.integers(1, 3), simd=st.integers(1, 7))
def test_csim_equals_reference(seed, types, g, icg, ocg, k, s, d, pads, bias, depthwise, pe, simd):
    rng = np.random.default_rng(seed)
    xt, wt = types
    if depthwise:
        g, icg, ocg = 3, 1, 1
    e = d * (k - 1) + 1
    H = int(rng.integers(max(1, e - pads[0] - pads[2]), e + 4))
    W = int(rng.integers(max(1, e - pads[1] - pads[3]), e + 4))
    x = _codes(rng, xt, (2, g * icg, H, W))
    w = _codes(rng, wt, (g * ocg, icg, k, k))
    b = rng.integers(-(2**31), 2**31, size=g * ocg) if bias else None
    _check_csim(x, w, b, s, pads, d, g, xt, wt, min(pe, ocg), simd)


@needs_csim
@pytest.mark.parametrize("case", ["depthwise_s2", "dilation2", "bipolar_pad", "w4_x8_folded", "extremes"])
def test_csim_named_cases(case):
    rng = np.random.default_rng(7)
    if case == "depthwise_s2":  # depthwise 3x3 stride 2 pad 1, 8-bit x 4-bit
        x, w = _codes(rng, I(8, False), (1, 4, 7, 7)), _codes(rng, I(4, True), (4, 1, 3, 3))
        _check_csim(x, w, rng.integers(-50, 50, 4), 2, 1, 1, 4, I(8, False), I(4, True), 1, 2)
    elif case == "dilation2":
        x, w = _codes(rng, I(8, True), (1, 3, 9, 8)), _codes(rng, I(4, True), (5, 3, 3, 3))
        _check_csim(x, w, None, 1, (2, 1, 2, 1), 2, 1, I(8, True), I(4, True), 5, 9)
    elif case == "bipolar_pad":  # padded taps add 0: all-ones corner = 4 taps (§11)
        x = np.ones((1, 2, 4, 4), np.int64)
        w = np.ones((3, 2, 3, 3), np.int64)
        y = _check_csim(x, w, None, 1, 1, 1, 1, I(1, True), I(1, True), 3, 4)
        assert y[0, 0, 0, 0] == 2 * 4 and y[0, 0, 1, 1] == 2 * 9 and y[0, 0, 0, 1] == 2 * 6
        x, w = _codes(rng, I(1, True), (2, 4, 6, 5)), _codes(rng, I(1, True), (6, 2, 3, 3))
        _check_csim(x, w, None, 2, (1, 0, 2, 1), 1, 2, I(1, True), I(1, True), 2, 5)
    elif case == "w4_x8_folded":  # 4-bit weights x 8-bit activations, PE not dividing OC, SIMD not dividing K
        x, w = _codes(rng, I(8, False), (3, 6, 6, 6)), _codes(rng, I(4, True), (10, 6, 3, 3))
        _check_csim(x, w, rng.integers(-1000, 1000, 10), 1, 1, 1, 1, I(8, False), I(4, True), 4, 5)
    else:  # most-negative products over the whole window, int32 bias ends
        x = np.full((1, 8, 5, 5), -128)
        w = np.full((2, 8, 5, 5), -128)
        _check_csim(x, w, np.array([2**31 - 1, -(2**31)]), 1, 2, 1, 1, I(8, True), I(8, True), 2, 8)


def test_cost_model():
    c = ops.get_op("conv2d")
    assert c.section == "§11"
    assert c.trips(OH=4, OW=4, OC=8, K=9) == 4 * 4 * 8 * 9
    assert c.trips(OH=4, OW=4, OC=10, K=9, pe=4, simd=5) == 16 * 3 * 2
    with pytest.raises(ValueError, match="conv2d cost"):
        c.trips(OH=4, OW=4, OC=8, K=9, pe=0)


# ---------------------------------------------------------------------------------------
# the Brevitas CNN


def build_cnn(exact: bool, seed: int = 0):
    """The user's CNN on 1x8x8 digits, calibrated on digits, eval mode.

    ``exact``: BatchNorm + 4-bit QuantReLU after both convolutions (thresholds) and no
    bias on the depthwise conv; else the depthwise conv has an Int32 bias and an 8-bit
    QuantReLU (requant)."""
    import torch
    import brevitas.nn as qnn
    from brevitas.quant import (Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, Int32Bias,
                                Uint8ActPerTensorFixedPoint)

    class U4(Uint8ActPerTensorFixedPoint):
        bit_width = 4

    torch.manual_seed(seed)

    class CNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=True)
            self.conv1 = qnn.QuantConv2d(1, 8, 3, padding=1, bias=False, weight_quant=Int8WeightPerTensorFixedPoint,
                                         weight_bit_width=4)
            self.bn1 = torch.nn.BatchNorm2d(8)
            self.relu1 = qnn.QuantReLU(act_quant=U4, return_quant_tensor=True)
            self.pool1 = torch.nn.MaxPool2d(2)
            self.dw = qnn.QuantConv2d(8, 8, 3, stride=2, padding=1, groups=8, bias=not exact,
                                      bias_quant=Int32Bias, weight_quant=Int8WeightPerTensorFixedPoint,
                                      return_quant_tensor=not exact)
            self.bn2 = torch.nn.BatchNorm2d(8) if exact else torch.nn.Identity()
            self.relu2 = qnn.QuantReLU(act_quant=U4 if exact else Uint8ActPerTensorFixedPoint,
                                       return_quant_tensor=True)
            self.pool2 = torch.nn.AvgPool2d(2)
            self.q3 = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=True)
            self.fc = qnn.QuantLinear(8, 10, bias=True, bias_quant=Int32Bias,
                                      weight_quant=Int8WeightPerTensorFixedPoint)

        def forward(self, x):
            x = self.pool1(self.relu1(self.bn1(self.conv1(self.inp(x)))))
            x = self.relu2(self.bn2(self.dw(x)))
            x = self.q3(self.pool2(x))
            return self.fc(torch.flatten(x, 1))

    m = CNN()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            if isinstance(bn, torch.nn.BatchNorm2d):
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(-1, 1)  # negative gammas: channels the lowering negates
                bn.bias.uniform_(-1, 1)
    m.train()
    x = torch.from_numpy(_digits(0, 256))
    with torch.no_grad():
        for i in range(4):
            m(x[i * 64:(i + 1) * 64])
    m.eval()
    return m


def _digits(start: int, n: int) -> np.ndarray:
    from sklearn.datasets import load_digits
    return load_digits().images[start:start + n].astype(np.float32).reshape(-1, 1, 8, 8)


def export_cnn(path: Path, exact: bool) -> Path:
    import torch
    from brevitas.export import export_qonnx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(build_cnn(exact), torch.zeros(1, 1, 8, 8), export_path=str(path))
    return path


@pytest.fixture(scope="module")
def cnn_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("cnn")
    return {e: export_cnn(d / f"cnn_{'exact' if e else 'requant'}.onnx", e) for e in (True, False)}


def _tie_elements(ir, trace) -> dict[str, np.ndarray]:
    """Per rounding op (requant, avgpool2d): where its input meets an exact tie
    (acc*M ≡ 2^(sh-1) mod 2^sh), as a boolean array of the op's output shape."""
    out = {}
    for op in ir.ops:
        if op.op == "requant":
            acc = trace[op.inputs[0]]
            M, sh = ir.constants[op.inputs[1]].values, ir.constants[op.inputs[2]].values
        elif op.op == "avgpool2d":
            a = trace[op.inputs[0]]
            (kh, kw), (s1, s2) = op.attrs["kernel"], op.attrs["stride"]
            assert (kh, kw) == (s1, s2) and op.attrs["pad"] == [0, 0]
            n, c, h, w = a.shape
            acc = a[:, :, :h // kh * kh, :w // kw * kw].reshape(n, c, h // kh, kh, w // kw, kw).sum(axis=(3, 5))
            M, sh = op.attrs["M"], op.attrs["sh"]
        else:
            continue
        out[op.name] = (sh > 0) & (np.mod(acc * M, 2 ** np.maximum(sh, 1)) == 2 ** (np.maximum(sh, 1) - 1))
    return out


def test_cnn_lowered_ops(cnn_files):
    ir = lower(cnn_files[False])
    kinds = [o.op for o in ir.ops]
    assert kinds == ["quantize", "conv2d", "transpose", "threshold", "transpose", "maxpool2d", "conv2d", "requant",
                     "avgpool2d", "reshape", "matmul", "dequantize"]
    dw = ir.ops[6]
    assert dw.attrs["groups"] == 8 and dw.attrs["stride"] == [2, 2] and dw.attrs["pad"] == [1, 1, 1, 1]
    assert ir.constants[dw.inputs[1]].shape == (8, 1, 3, 3) and len(dw.inputs) == 3  # Int32 bias folded
    assert ir.tensors[ir.ops[5].outputs[0]].shape == (1, 8, 4, 4)
    assert not ir.notes  # every bias exact on the accumulator grid


def test_cnn_threshold_all_equals_execute_onnx(cnn_files):
    """Power-of-two scales and thresholds that reproduce QONNX's rounding: ``==`` everywhere."""
    x = _digits(0, 500)
    for f in cnn_files.values():
        ir = lower(f, threshold_all=True)
        assert "requant" not in [o.op for o in ir.ops]
        y = run_reference(ir, {ir.inputs[0].onnx_name: x})[ir.outputs[0].onnx_name]
        ye = execute_qonnx(f, x)
        assert y.shape == ye.shape == (500, 10)
        assert np.array_equal(y, ye)
        assert len(np.unique(y)) > 100  # not degenerate (the model is untrained: logits, not accuracy)


def test_cnn_requant_differs_only_at_ties(cnn_files):
    """Default lowering (requant rounds half up): the depthwise conv's requant, fed the same
    codes as the exact (threshold_all) IR's thresholds, differs from them only at its tie
    elements, by +1; a sample's end result differs from execute_onnx only if some rounding
    op (requant, avgpool2d) met a tie."""
    x = _digits(0, 300)
    f = cnn_files[False]
    ir, ir_x = lower(f), lower(f, threshold_all=True)
    name = ir.inputs[0].onnx_name
    y, tr = run_reference(ir, {name: x}, trace=True)
    _, tx = run_reference(ir_x, {name: x}, trace=True)
    ye = execute_qonnx(f, x)
    ties = _tie_elements(ir, tr)
    assert ties and sum(int(t.sum()) for t in ties.values()) > 0
    # the depthwise requant: same input codes in both IRs (everything before it is exact)
    rq = next(o for o in ir.ops if o.op == "requant")
    thr = [o for o in ir_x.ops if o.op == "threshold"][1]  # the depthwise conv's quantizer
    assert np.array_equal(tr[rq.inputs[0]], tx[thr.inputs[0]])
    diff = tr[rq.outputs[0]] - tx[thr.outputs[0]]
    assert set(np.unique(diff)) <= {0, 1}  # ties up vs ties to even: +1 or equal
    assert np.all((diff == 0) | ties[rq.name])
    same = np.all(y[ir.outputs[0].onnx_name] == ye, axis=1)
    hit = np.zeros(len(x), bool)
    for t in ties.values():
        hit |= t.reshape(len(x), -1).any(axis=1)
    assert np.all(same | hit)


@needs_csim
def test_cnn_build_predict_equals_execute_onnx(cnn_files, tmp_path, capsys):
    """``codesign build`` of the user's QONNX file (csim passes) and ``codesign predict``
    == qonnx ``execute_onnx`` of DIR/model.onnx on 300 digits, with both engines."""
    out = tmp_path / "cnn-zcu111"
    assert cli.main(["build", str(cnn_files[True]), "--board", "zcu111", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["csim"]["passed"] is True and rep["csim"]["mismatches"] == 0
    assert {"conv2d", "maxpool2d", "avgpool2d", "threshold", "matmul"} <= set(rep["ops"])
    x = _digits(1000, 300)
    np.save(tmp_path / "x.npy", x)
    ys = []
    for engine in ("reference", "csim"):
        assert cli.main(["predict", str(out), "--input", str(tmp_path / "x.npy"), "--output",
                         str(tmp_path / f"y_{engine}.npy"), "--engine", engine]) == 0
        ys.append(np.load(tmp_path / f"y_{engine}.npy"))
    assert np.array_equal(ys[0], ys[1])
    ye = execute_qonnx(out / "model.onnx", x)
    assert ys[0].shape == ye.shape == (300, 10)
    assert np.array_equal(ys[0], ye)
    assert np.array_equal(ye, execute_qonnx(cnn_files[True], x))


# ---------------------------------------------------------------------------------------
# unsupported attributes: one line, naming the node


def _mutate(path: Path, tmp: Path, op_type: str, **attrs) -> Path:
    m = onnx.load(str(path))
    n = next(n for n in m.graph.node if n.op_type == op_type)
    for k, v in attrs.items():
        for a in list(n.attribute):
            if a.name == k:
                n.attribute.remove(a)
        n.attribute.append(helper.make_attribute(k, v))
    out = tmp / f"{op_type}_{'_'.join(attrs)}.onnx"
    onnx.save(m, str(out))
    return out


@pytest.mark.parametrize("op_type, attrs, needle", [
    ("MaxPool", {"ceil_mode": 1}, "ceil_mode=1 not supported"),
    ("Conv", {"auto_pad": "SAME_UPPER"}, "auto_pad=SAME_UPPER not supported"),
    ("AveragePool", {"pads": [1, 1, 1, 1], "count_include_pad": 0}, "count_include_pad=0"),
])
def test_unsupported_attributes(cnn_files, tmp_path, op_type, attrs, needle):
    f = _mutate(cnn_files[False], tmp_path, op_type, **attrs)
    with pytest.raises(LoweringError) as e:
        lower(f)
    msg = str(e.value)
    assert needle in msg and "\n" not in msg and msg.startswith("node '") and f"(op_type {op_type})" in msg


def test_float_conv_weights_rejected(cnn_files, tmp_path):
    """A Conv whose weights are a float initializer (no Quant) is a one-line LoweringError."""
    m = onnx.load(str(cnn_files[False]))
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    q = next(n for n in m.graph.node if conv.input[1] in n.output)
    conv.input[1] = q.input[0]  # the float weight initializer itself
    m.graph.node.remove(q)
    used = {i for n in m.graph.node for i in n.input}
    inits = {i.name for i in m.graph.initializer}
    for i in [i for i in m.graph.input if i.name in inits and i.name not in used]:
        m.graph.input.remove(i)  # the removed Quant's parameters (exported as graph inputs too)
    onnx.save(m, str(tmp_path / "f.onnx"))
    with pytest.raises(LoweringError) as e:
        lower(tmp_path / "f.onnx")
    msg = str(e.value)
    assert "(op_type Conv)" in msg and "Quant/BipolarQuant of a constant" in msg and "\n" not in msg
