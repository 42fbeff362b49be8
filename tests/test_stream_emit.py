"""The streaming top level of the HLS emitter (``emit_project(..., style="stream")``,
``codesign.hls.stream_emit``, ``include/codesign/stream.h``; docs/dataflow.md "Streaming
top level").

For IRs lowered from real QONNX exports (the Brevitas CNN of tests/test_conv.py: conv +
BatchNorm thresholds, maxpool, depthwise stride-2 conv with bias + requant, avgpool,
flatten -> linear; the tiny Bi-Real BNN of codesign.quantize.bnn: bipolar convs, residual
adds, a downsampling fork/join, global average pooling, linear head) and the pruned IR of
tests/test_sparse.py (conv -> requant -> flatten of an NHWC stream: a reorder stage), a
tabulated Sigmoid (tests/test_activation_lut.py: conv -> requant -> §4 lut -> linear) and
concatenations (tests/test_cnn_concat.py: two conv branches joined along channels; inline:
three branches along channels, then two along the height), both styles are emitted for
random inputs and compiled with g++: the testbench compares every output code with ``==``
against the numpy reference (``codesign.sim.run_ir``'s golden outputs, an independent
implementation), at PE = SIMD = 1 and folded (PE, SIMD > 1, SIMD not dividing K). Also:
the stream top has a DATAFLOW region and a depth for every stream, the C simulation leaves
no stream with leftover data and reads none while empty, the kernels' CODESIGN_TRIP count
equals the buffer style's (the cost model tests rely on it), emitting twice gives
identical bytes, and an op without a stream form falls back to buffers under "auto" and is
a one-line error under "stream".
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from codesign.accel.boards import get_board
from codesign.accel.lower import lower
from codesign.hls import csim
from codesign.hls.emit import emit_project, run_project_csim
from codesign.hls.stream_emit import StreamUnsupportedError

pytest.importorskip("sklearn")
pytestmark = pytest.mark.skipif(csim.available() is not None, reason=f"csim unavailable: {csim.available()}")

BOARD = get_board("zcu102")
CASES = 5


def _helpers(name: str):
    """Another test module of this folder, for its helpers (pytest runs in importlib mode,
    so tests/ is not on sys.path)."""
    import importlib.util
    import sys

    key = f"_stream_emit_uses_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, Path(__file__).with_name(f"{name}.py"))
        mod = importlib.util.module_from_spec(spec)
        sys.modules[key] = mod
        spec.loader.exec_module(mod)
    return sys.modules[key]


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _emit(ir, out: Path, x: np.ndarray, style: str, folding=None) -> Path:
    return emit_project(ir, out, BOARD, 214.0, {ir.inputs[0].name: x}, folding=folding, style=style)


def _check_csim(proj: Path) -> None:
    """The project's testbench: every output code == the reference's, no stream warning."""
    rep = run_project_csim(proj, jobs=1)
    assert rep.passed and rep.cases == CASES and rep.mismatches == 0, rep.log[-2000:]
    assert "WARNING" not in rep.log, rep.log[-2000:]  # hls::stream: leftover data / read while empty


def _stream_checks(proj: Path) -> str:
    src = (proj / "codesign_top.cpp").read_text()
    assert src.count("#pragma HLS DATAFLOW") == 1
    streams = re.findall(r"^    hls::stream<[^\n]*> (s_\w+)\(", src, re.M)
    depths = re.findall(r"^#pragma HLS STREAM variable = (s_\w+) depth = (\d+)", src, re.M)
    assert streams and [s for s, _ in depths] == streams and all(int(d) >= 2 for _, d in depths)
    readme = (proj / "README.md").read_text()
    assert "## Top level: stream (DATAFLOW)" in readme
    return src


def _trip_count(proj: Path, work: Path) -> int:
    _trips = _helpers("test_emit_folding")._trips  # the testbench + a CODESIGN_TRIP printout

    work.mkdir()
    cases, trips = _trips(proj, work)
    assert cases == CASES
    return trips


# ---------------------------------------------------------------------------------------
# IRs from real QONNX exports


@pytest.fixture(scope="module")
def cnn_ir(tmp_path_factory):
    export_cnn = _helpers("test_conv").export_cnn  # the Brevitas CNN (requant variant: depthwise conv + bias)

    d = tmp_path_factory.mktemp("scnn")
    ir = lower(export_cnn(d / "cnn.onnx", exact=False))
    x = np.random.default_rng(11).uniform(0, 16, (CASES, 1, 8, 8)).astype(np.float32)
    return ir, x


@pytest.fixture(scope="module")
def bnn_ir(tmp_path_factory):
    from codesign.quantize import bnn

    d = tmp_path_factory.mktemp("sbnn")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = bnn.build_bnn("tiny", 3).eval()
        bnn.export_bnn(model, d / "bnn.onnx")
    ir = lower(str(d / "bnn.onnx"), threshold_all=True)
    shape = ir.tensors[ir.inputs[0].name].shape[1:]
    x = np.random.default_rng(12).uniform(-1.5, 1.5, (CASES, *shape)).astype(np.float32)
    return ir, x


def test_cnn_ir_has_what_the_stream_style_must_handle(cnn_ir, bnn_ir):
    kinds = [o.op for o in cnn_ir[0].ops]
    assert {"conv2d", "maxpool2d", "avgpool2d", "requant", "threshold", "reshape", "matmul"} <= set(kinds)
    assert any(o.op == "conv2d" and o.attrs["groups"] > 1 for o in cnn_ir[0].ops)
    ir = bnn_ir[0]
    assert "add" in {o.op for o in ir.ops}
    bip = [o for o in ir.ops if o.op == "conv2d" and o.attrs["x_type"]["bits"] == 1 and o.attrs["w_type"]["bits"] == 1]
    assert bip  # bipolar x bipolar convs (the XNOR-popcount datapath)
    consumers = {}
    for o in ir.ops:
        for i in o.inputs:
            consumers[i] = consumers.get(i, 0) + 1
    assert max(consumers.values()) >= 2  # residual forks


@pytest.mark.parametrize("which", ["cnn", "bnn"])
@pytest.mark.parametrize("fold", [False, True])
def test_stream_equals_reference_and_buffers(which, fold, cnn_ir, bnn_ir, tmp_path):
    """Both styles pass the testbench (== the numpy reference's codes on every output of
    every random case), the stream one with a DATAFLOW top, and they count the same
    kernel iterations (CODESIGN_TRIP)."""
    ir, x = {"cnn": cnn_ir, "bnn": bnn_ir}[which]
    folding = None
    if fold:  # PE > 1 and SIMD > 1 on every conv / matmul; SIMD = 5 divides no K here but 25
        folding = {o.name: (2, 5) for o in ir.ops if o.op in ("conv2d", "matmul")}
    s = _emit(ir, tmp_path / "stream", x, "stream", folding)
    b = _emit(ir, tmp_path / "buffers", x, "buffers", folding)
    a = _emit(ir, tmp_path / "auto", x, "auto", folding)
    assert _tree(a) == _tree(s)  # a CNN whose ops all stream: auto = stream
    src = _stream_checks(s)
    assert "#pragma HLS DATAFLOW" not in (b / "codesign_top.cpp").read_text().split("void codesign_top(")[1]
    for name in ("tb.cpp", "codesign_top.h", "weights.bin", "weights.h", "golden/inputs.bin", "golden/outputs.bin"):
        assert (s / name).read_bytes() == (b / name).read_bytes(), name
    if fold:
        assert re.search(r"StreamConv2d<[^;]*, 2, 5, (true|false), -?\d+LL, -?\d+LL, \d+> u_", src)
    _check_csim(s)
    _check_csim(b)
    assert _trip_count(s, tmp_path / "ts") == _trip_count(b, tmp_path / "tb")


def test_bnn_stream_stages(bnn_ir, tmp_path):
    """The residual network's stream graph: one fork per tensor with two consumers, whole
    -tensor FIFOs on the fork outputs, no reorder (transposes are relabellings), the
    conv stages in pairs (window generator, MVAU), stages listed in the README in call order."""
    ir, x = bnn_ir
    s = _emit(ir, tmp_path / "s", x, "stream")
    src = _stream_checks(s)
    # structural ops alias their input's stream (no reorder here): count the consumers of
    # each underlying tensor; the output stage (dequantize) is a consumer too
    alias = {o.outputs[0]: o.inputs[0] for o in ir.ops if o.op in ("transpose", "reshape", "flatten", "identity")}

    def root(t):
        while t in alias:
            t = alias[t]
        return t
    uses = {}
    for o in ir.ops:
        if o.op in ("transpose", "reshape", "flatten", "identity", "quantize"):
            continue
        for t in o.inputs:
            if t in ir.tensors:
                uses[root(t)] = uses.get(root(t), 0) + 1
    forks = sum(n - 1 for n in uses.values() if n > 1)
    calls = re.findall(r"^    cs_stream::(st_\w+)\(", src, re.M)
    assert sum(1 for c in calls if c.startswith("st_fork_")) == forks > 0
    assert not any("_reorder" in c for c in calls)
    nconv = sum(1 for o in ir.ops if o.op == "conv2d")
    assert sum(1 for c in calls if c.endswith("_swg")) == sum(1 for c in calls if c.endswith("_mvau")) == nconv
    for m in re.finditer(r"^#pragma HLS STREAM variable = (s_\d+_[ft]\d+) depth = (\d+)", src, re.M):
        n = int(re.search(rf"hls::stream<[^\n]*> {m.group(1)}\(\"\w+\"\);  // \w+: (\d+) beats", src).group(1))
        assert int(m.group(2)) == n
    readme = (s / "README.md").read_text()
    assert [r for r in re.findall(r"^\| \d+ \| `(st_\w+)` \|", readme, re.M)] == calls
    assert "0 reorder stage(s)" in readme


def test_reorder_stage_for_flatten_of_nhwc(tmp_path):
    """conv -> requant -> flatten -> matmul: the conv's NHWC stream is re-emitted in C
    order for the flatten (one reorder stage, listed in the README); == reference."""
    _pruned_ir = _helpers("test_sparse")._pruned_ir

    ir, _, _ = _pruned_ir()
    x = np.random.default_rng(3).normal(0, 1.5, (CASES, 3, 5, 4)).astype(np.float32)
    s = emit_project(ir, tmp_path / "s", BOARD, 214.0, {"x": x}, style="stream", folding={"conv2d_0": (3, 4)})
    src = _stream_checks(s)
    calls = re.findall(r"^    cs_stream::(st_\w+)\(", src, re.M)
    assert [c.split("_", 2)[2] for c in calls] == ["in_p_quantize_0_out", "conv2d_0_swg", "conv2d_0_mvau",
                                                   "requant_0", "reorder", "matmul_0", "out_p_out_y"]
    assert "1 reorder stage(s)" in (s / "README.md").read_text()
    _check_csim(s)


def test_deterministic(cnn_ir, tmp_path):
    ir, x = cnn_ir
    a = _emit(ir, tmp_path / "a", x, "stream", {o.name: (2, 3) for o in ir.ops if o.op == "conv2d"})
    b = _emit(ir, tmp_path / "b", x, "stream", {o.name: (2, 3) for o in ir.ops if o.op == "conv2d"})
    assert _tree(a) == _tree(b)


def test_no_stream_form_falls_back_or_errors(cnn_ir, tmp_path):
    """A block-sparse conv has no stream form: "auto" emits buffers (csim passes), "stream"
    raises one line naming the op. An IR without a conv2d stays buffers under "auto"."""
    from codesign.accel.passes import mark_sparse

    ir, x = cnn_ir
    sp = mark_sparse(ir, 1, 1, max_density=1.0)
    name = next(o.name for o in sp.ops if "sparse" in o.attrs)
    a = _emit(sp, tmp_path / "a", x, "auto")
    src = (a / "codesign_top.cpp").read_text()
    assert "SparseConv2d<" in src and "cs_stream" not in src
    assert "## Top level: buffers" in (a / "README.md").read_text()
    _check_csim(a)
    with pytest.raises(StreamUnsupportedError) as e:
        _emit(sp, tmp_path / "s", x, "stream")
    msg = str(e.value)
    assert "\n" not in msg and f"op '{name}'" in msg and "style='buffers'" in msg
    assert isinstance(e.value, NotImplementedError)
    assert not (tmp_path / "s").exists()
    with pytest.raises(ValueError, match="style='fast' is not one of auto, buffers, stream"):
        _emit(ir, tmp_path / "v", x, "fast")


def test_mlp_auto_is_buffers_stream_on_request(tmp_path):
    """An IR without a conv2d (a Brevitas MLP) stays buffers under "auto"; "stream" emits
    it as a stream top anyway (all its ops have a stream form) and it passes csim."""
    from codesign.quantize.examples import export_mlp_pow2

    ir = lower(export_mlp_pow2(tmp_path / "mlp.onnx"))
    x = np.random.default_rng(4).normal(0, 1.5, (CASES, *ir.tensors[ir.inputs[0].name].shape[1:])).astype(np.float32)
    a = _emit(ir, tmp_path / "a", x, "auto")
    assert "cs_stream" not in (a / "codesign_top.cpp").read_text()
    assert "## Top level: buffers" in (a / "README.md").read_text()
    s = _emit(ir, tmp_path / "s", x, "stream", {o.name: (2, 2) for o in ir.ops if o.op == "matmul"})
    _stream_checks(s)
    _check_csim(s)


def _trailing_rows_file(path: Path) -> Path:
    """QuantIdentity int8 -> QuantConv2d 2->4 3x3 stride 2, no pad (8x8 -> 3x3: input row 7
    is read by no window) -> QuantReLU uint4 -> MaxPool2d 2 (3x3 -> 1x1: row 2 unused) ->
    flatten -> QuantLinear 4->3, on 2x8x8. Both stream stages must drop the unused rows."""
    import torch
    import brevitas.nn as qnn
    from brevitas.export import export_qonnx
    from brevitas.quant import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, Uint8ActPerTensorFixedPoint

    class U4(Uint8ActPerTensorFixedPoint):
        bit_width = 4

    torch.manual_seed(5)
    m = torch.nn.Sequential(
        qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=True),
        qnn.QuantConv2d(2, 4, 3, stride=2, bias=False, weight_quant=Int8WeightPerTensorFixedPoint, weight_bit_width=4),
        qnn.QuantReLU(act_quant=U4, return_quant_tensor=True),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        qnn.QuantLinear(4, 3, bias=False, weight_quant=Int8WeightPerTensorFixedPoint)).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(m, torch.zeros(1, 2, 8, 8), export_path=str(path))
    return path


def test_rows_no_window_reads_are_drained(tmp_path):
    """A stride that leaves trailing input rows unread (conv and maxpool): the stream
    stages still consume the whole tensor (no leftover data, no read while empty) and the
    outputs are the reference's."""
    ir = lower(_trailing_rows_file(tmp_path / "t.onnx"))
    assert [o.op for o in ir.ops if o.target != "host"][:1] == ["conv2d"] and "maxpool2d" in {o.op for o in ir.ops}
    x = np.random.default_rng(6).normal(0, 1.0, (CASES, 2, 8, 8)).astype(np.float32)
    s = _emit(ir, tmp_path / "s", x, "stream")
    _stream_checks(s)
    _check_csim(s)


# ---------------------------------------------------------------------------------------
# lut and concat


def _calibrated_export(m, shape: tuple, path: Path) -> Path:
    """Brevitas model ``m``: three training-mode passes of random batches (the activation
    quantizers' statistics), then eval and QONNX export for inputs of ``shape``."""
    import torch
    from brevitas.export import export_qonnx

    m.train()
    with torch.no_grad():
        for _ in range(3):
            m(torch.randn(8, *shape[1:]) * 2)
    m.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(m, torch.zeros(*shape), export_path=str(path))
    return path


def _concat3_file(path: Path) -> Path:
    """int8 1x6x5 -> four conv branches (2, 3, 2, 7 channels; 3x3 pad 1 or 1x1) -> one shared
    int8 quantizer -> cat of the first three along channels (7x6x5) -> cat with the fourth
    along the height (7x12x5) -> conv 7->4 3x3 stride 2 -> int8. Power-of-two scales (exact
    with ``threshold_all``)."""
    import torch
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFixedPoint as A, Int8WeightPerTensorFixedPoint as Wq

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q0 = qnn.QuantIdentity(act_quant=A, return_quant_tensor=True)
            self.branches = torch.nn.ModuleList(
                qnn.QuantConv2d(1, n, k, padding=k // 2, weight_quant=Wq, weight_bit_width=4, bias=False)
                for n, k in ((2, 3), (3, 1), (2, 3), (7, 1)))
            self.q = qnn.QuantIdentity(act_quant=A, return_quant_tensor=True)  # shared: one scale for all
            self.head = qnn.QuantConv2d(7, 4, 3, stride=2, weight_quant=Wq, weight_bit_width=4, bias=False)
            self.q3 = qnn.QuantIdentity(act_quant=A)

        def forward(self, x):
            x = self.q0(x)
            a, b, c, d = (self.q(m(x)) for m in self.branches)
            return self.q3(self.head(torch.cat([torch.cat([a, b, c], dim=1), d], dim=2)))

    torch.manual_seed(4)
    return _calibrated_export(M(), (1, 1, 6, 5), path)


def _concat_mixed_file(path: Path) -> Path:
    """int8 2x4x3 -> [conv 2->3 3x3 pad 1 | flatten -> linear 24->24 -> reshape to 2x4x3] ->
    shared int8 quantizer -> cat along channels (5x4x3) -> conv 5->2 3x3 -> int8: the conv
    branch streams NHWC, the linear branch in C order."""
    import torch
    import brevitas.nn as qnn
    from brevitas.quant import Int8ActPerTensorFixedPoint as A, Int8WeightPerTensorFixedPoint as Wq

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.q0 = qnn.QuantIdentity(act_quant=A, return_quant_tensor=True)
            self.conv = qnn.QuantConv2d(2, 3, 3, padding=1, weight_quant=Wq, weight_bit_width=4, bias=False)
            self.fc = qnn.QuantLinear(24, 24, weight_quant=Wq, weight_bit_width=4, bias=False)
            self.q = qnn.QuantIdentity(act_quant=A, return_quant_tensor=True)
            self.head = qnn.QuantConv2d(5, 2, 3, weight_quant=Wq, weight_bit_width=4, bias=False)
            self.q3 = qnn.QuantIdentity(act_quant=A)

        def forward(self, x):
            x = self.q0(x)
            b = self.q(self.fc(torch.flatten(x, 1))).reshape(-1, 2, 4, 3)
            return self.q3(self.head(torch.cat([self.q(self.conv(x)), b], dim=1)))

    torch.manual_seed(4)
    return _calibrated_export(M(), (1, 2, 4, 3), path)


@pytest.fixture(scope="module")
def lut_ir(tmp_path_factory):
    act = _helpers("test_activation_lut")  # int8 conv -> requant -> Sigmoid as a §4 lut -> linear

    d = tmp_path_factory.mktemp("slut")
    ir = lower(act._export(act._model("sigmoid"), d / "sigmoid.onnx"))
    return ir, act._inputs(CASES, seed=13)


@pytest.fixture(scope="module")
def cat_ir(tmp_path_factory):
    cat = _helpers("test_cnn_concat")  # two conv branches -> concat along channels -> conv

    d = tmp_path_factory.mktemp("scat")
    ir = lower(cat._export(False, d / "cat.onnx"), threshold_all=True)
    return ir, cat._x(CASES, 14)


@pytest.fixture(scope="module")
def cat3_ir(tmp_path_factory):
    d = tmp_path_factory.mktemp("scat3")
    ir = lower(_concat3_file(d / "cat3.onnx"), threshold_all=True)
    x = (np.random.default_rng(15).standard_normal((CASES, 1, 6, 5)) * 2).astype(np.float32)
    return ir, x


def test_lut_and_concat_irs(lut_ir, cat_ir, cat3_ir):
    assert "lut" in {o.op for o in lut_ir[0].ops}
    cats = [o for o in cat_ir[0].ops if o.op == "concat"]
    assert len(cats) == 1 and cats[0].attrs["axis"] == 1 and len(cats[0].inputs) == 2
    cats = [(len(o.inputs), o.attrs["axis"]) for o in cat3_ir[0].ops if o.op == "concat"]
    assert cats == [(3, 1), (2, 2)]


@pytest.mark.parametrize("which", ["lut", "cat", "cat3"])
@pytest.mark.parametrize("fold", [False, True])
def test_lut_and_concat_stream(which, fold, lut_ir, cat_ir, cat3_ir, tmp_path):
    """A §4 lut and channel / height concats have stream forms: "auto" emits the stream top
    (no fallback to buffers), both styles pass the testbench (== the numpy reference) and
    count the same kernel iterations. The lut keeps the conv's NHWC order (the flatten
    before the linear then reorders); concatenated NHWC streams need no reorder: along
    channels a stage alternates C1 beats of one input and C2 of the other per pixel, along
    the height it passes one input's rows, then the other's."""
    ir, x = {"lut": lut_ir, "cat": cat_ir, "cat3": cat3_ir}[which]
    folding = {o.name: (2, 3) for o in ir.ops if o.op in ("conv2d", "matmul")} if fold else None
    s = _emit(ir, tmp_path / "stream", x, "stream", folding)
    b = _emit(ir, tmp_path / "buffers", x, "buffers", folding)
    a = _emit(ir, tmp_path / "auto", x, "auto", folding)
    assert _tree(a) == _tree(s)
    src = _stream_checks(s)
    calls = [c.split("_", 2)[2] for c in re.findall(r"^    cs_stream::(st_\w+)\(", src, re.M)]
    if which == "lut":
        assert "lut_0" in calls and calls.count("reorder") == 1  # the flatten of the NHWC stream
        assert re.search(r"codesign::stream_lut<codesign::IntT<8, true, false>, codesign::IntT<8, true, false>, "
                         r"codesign::IntT<\d+, (true|false), (true|false)>, 256>\(in, table, out\);", src)
    elif which == "cat":
        assert "reorder" not in calls and calls.count("concat_0") == 1
        # (C, H, W) = (4 + 3, 8, 8) in NHWC: 64 pixels of 4 beats, then 3
        assert re.search(r"codesign::stream_concat<[^;]*, 64, 4, 3>\(a, b, out\);", src)
    else:
        assert "reorder" not in calls and calls.count("concat_0_1") == calls.count("concat_0_2") == 1
        assert calls.count("concat_1") == 1
        # channels of 6x5 NHWC: 30 pixels of 2 + 3 (chain), then of 5 + 2; the height of a
        # 7x6x5 and a 7x6x5 tensor in NHWC: one block, 6*5*7 beats of each
        assert re.search(r"stream_concat<[^;]*, 30, 2, 3>\(a, b, out\);", src)
        assert re.search(r"stream_concat<[^;]*, 30, 5, 2>\(a, b, out\);", src)
        assert re.search(r"stream_concat<[^;]*, 1, 210, 210>\(a, b, out\);", src)
    _check_csim(s)
    _check_csim(b)
    assert _trip_count(s, tmp_path / "ts") == _trip_count(b, tmp_path / "tb")


def test_concat_reorders_the_second_input(tmp_path):
    """Inputs of a concat in different orders: the second is re-emitted in the first's
    order. Here the input is read NHWC (for the conv), so the flatten before the linear
    reorders it to C order, and the concat reorders the linear branch's C-order stream to
    NHWC: two reorder stages; both styles == the reference, equal trip counts."""
    ir = lower(_concat_mixed_file(tmp_path / "mixed.onnx"), threshold_all=True)
    assert [o.op for o in ir.ops].count("concat") == 1
    x = (np.random.default_rng(16).standard_normal((CASES, 2, 4, 3)) * 2).astype(np.float32)
    s = _emit(ir, tmp_path / "s", x, "auto")
    src = _stream_checks(s)
    calls = [c.split("_", 2)[2] for c in re.findall(r"^    cs_stream::(st_\w+)\(", src, re.M)]
    assert calls.count("reorder") == 2 and calls[calls.index("concat_0") - 1] == "reorder"
    assert re.search(r"stream_concat<[^;]*, 12, 3, 2>\(a, b, out\);", src)  # 4x3 pixels: 3 beats, then 2
    assert "2 reorder stage(s)" in (s / "README.md").read_text()
    b = _emit(ir, tmp_path / "b", x, "buffers")
    _check_csim(s)
    _check_csim(b)
    assert _trip_count(s, tmp_path / "ts") == _trip_count(b, tmp_path / "tb")
