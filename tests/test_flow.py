"""``codesign build`` / ``codesign predict`` end to end (accel/flow.py, accel/report.py, accel/cli.py).

* a user-style Brevitas MLP exported to QONNX: the build folder's artefacts and report, and
  ``predict`` against qonnx's ``execute_onnx`` of the original graph (power-of-two scales:
  ``==`` except samples where a requant meets an exact tie, which rounds up where QONNX
  rounds to even, see tests/test_lower.py);
* ``codesign build fqbert --board zcu102`` (tiny);
* bad input: one ``error:`` line, the right exit code, no output folder, an existing one untouched;
* an injected failure mid-build leaves nothing behind;
* the artefacts are byte-identical across runs.
"""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from codesign.accel import cli, flow
from codesign.accel.qonnx_exec import execute_qonnx

QONNX = "qonnx.custom_op.general"

REPORT_KEYS = {"model", "board", "part", "clock_mhz", "bit_widths", "weights_bytes", "compression_vs_fp32",
               "resources", "capacity", "latency_ms", "fps", "power_w", "fps_per_w", "csim", "ops", "seconds"}


# ---------------------------------------------------------------------------------------
# fixtures


@pytest.fixture(scope="module")
def mlp_file(tmp_path_factory) -> Path:
    """QuantIdentity input, QuantLinear with Int32 bias, QuantReLU, fixed-point (power-of-two)
    scales: 16-32-10 (codesign.quantize.examples)."""
    from codesign.quantize.examples import export_mlp_pow2_small
    path = tmp_path_factory.mktemp("mlp") / "mlp.onnx"
    export_mlp_pow2_small(path)
    return path


@pytest.fixture(scope="module")
def mlp_build(mlp_file, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("builds") / "mlp-zcu102"
    assert cli.main(["build", str(mlp_file), "--board", "zcu102", "--out", str(out)]) == 0
    return out


def _tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _artefacts(d: Path) -> dict[str, bytes]:
    return {k: v for k, v in _tree(d).items() if k not in ("report.json", "report.md")}


def _one_error(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


def _requant_ties(ir, trace) -> np.ndarray:
    """Per sample: did any requant meet an exact tie (acc*M ≡ 2^(sh-1) mod 2^sh)?"""
    hit = None
    for op in ir.ops:
        if op.op != "requant":
            continue
        acc = trace[op.inputs[0]]
        M = ir.constants[op.inputs[1]].values
        sh = ir.constants[op.inputs[2]].values
        prod = acc * M
        tie = (np.mod(prod, 2 ** sh) == 2 ** (sh - 1)).reshape(acc.shape[0], -1).any(axis=1)
        hit = tie if hit is None else hit | tie
    return hit if hit is not None else np.zeros(next(iter(trace.values())).shape[0], bool)


# ---------------------------------------------------------------------------------------
# user QONNX file


def test_user_build_artefacts(mlp_build):
    d = mlp_build
    for f in ("model.onnx", "ir/ir.json", "golden/golden.json", "report.json", "report.md"):
        assert (d / f).is_file(), f
    emitter = flow.hls_emitter()
    assert (d / "hls").is_dir() == (emitter is not None)
    rep = json.loads((d / "report.json").read_text())
    assert REPORT_KEYS <= set(rep)
    assert rep["model"] == "mlp" and rep["board"] == "zcu102" and rep["part"] == "xczu9eg-ffvb1156-2-e"
    assert rep["clock_mhz"] == 214.0
    assert rep["bit_widths"]["weights"] == {"8": 2}
    assert rep["weights_bytes"] == 16 * 32 + 32 * 10
    assert rep["compression_vs_fp32"] == 4.0
    from codesign.accel import report as rp
    assert rep["resources"]["estimate"] == rp.DATAFLOW_LABEL == rep["estimates"]
    assert all(isinstance(rep["resources"][k], int) for k in ("lut", "ff", "dsp", "bram18", "uram"))
    assert rep["capacity"]["dsp"] == 2520
    assert all(rep[k] > 0 for k in ("latency_ms", "fps", "power_w", "fps_per_w"))
    # the two matmuls are the dataflow's layers (MH x MW = 32 x 16 and 10 x 32, one vector)
    assert [(l["MH"], l["MW"], l["vectors"]) for l in rep["dataflow"]["layers"]] == [(32, 16, 1), (10, 32, 1)]
    assert rep["ops"] == {"dequantize": 1, "matmul": 2, "quantize": 1, "requant": 2}
    assert set(rep["seconds"]) >= set(flow.STEPS)
    c = rep["csim"]
    if emitter is None:
        assert c["passed"] is None and c["cases"] == 0 and "not available" in c["skipped"]
        assert "HLS emission not available" in (d / "report.md").read_text()
    else:
        assert c["passed"] is True and c["mismatches"] == 0 and c["cases"] == rep["golden"]["cases"]
    assert "not estimated yet" in (d / "report.md").read_text()
    # the cleaned model is a loadable QONNX graph
    onnx.checker.check_model(onnx.load(str(d / "model.onnx")))


def test_golden_vectors_are_the_reference(mlp_build):
    from codesign.sim.run_ir import run_reference
    d = mlp_build
    man = json.loads((d / "golden/golden.json").read_text())
    assert man["cases"] == flow.USER_CASES
    (iname, ispec), = man["inputs"].items()
    (oname, ospec), = man["outputs"].items()
    x = np.load(d / "golden" / ispec["file"])
    y = np.load(d / "golden" / ospec["file"])
    assert x.dtype == np.float32 and x.shape == (flow.USER_CASES, 16)
    assert np.array_equal(run_reference(d / "ir", {iname: x})[ospec["onnx_name"]], y)
    assert len(np.unique(y)) > 10  # not degenerate


@pytest.mark.parametrize("batch", [1, 13])
def test_predict_equals_execute_onnx(mlp_build, mlp_file, tmp_path, capsys, batch):
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    from codesign.accel import ir as irm
    from codesign.sim.run_ir import run_reference

    x = (np.random.default_rng(batch).standard_normal((batch, 16)) * 2).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["predict", str(mlp_build), "--input", str(tmp_path / "x.npy"),
                     "--output", str(tmp_path / "y.npy")]) == 0
    y = np.load(tmp_path / "y.npy")
    m = ModelWrapper(str(mlp_file))
    if batch != 1:
        m = copy.deepcopy(m).transform(ChangeBatchSize(batch)).transform(InferShapes())
    ye = execute_onnx(m, {m.graph.input[0].name: x})[m.graph.output[0].name]
    assert y.shape == ye.shape == (batch, 10) and y.dtype == np.float32
    ir = irm.load(mlp_build / "ir")
    _, trace = run_reference(ir, {ir.inputs[0].name: x}, trace=True)
    same = np.all(y == ye, axis=1)
    assert np.all(same | _requant_ties(ir, trace)), (same,)
    assert same.mean() > 0.5


def test_predict_csim_engine(mlp_build, tmp_path, capsys):
    x = np.random.default_rng(5).standard_normal((3, 16)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    args = ["predict", str(mlp_build), "--input", str(tmp_path / "x.npy")]
    assert cli.main([*args, "--output", str(tmp_path / "ref.npy")]) == 0
    emitter = flow.hls_emitter()
    rc = cli.main([*args, "--output", str(tmp_path / "csim.npy"), "--engine", "csim"])
    if emitter is None:
        assert rc == 2
        assert "not available yet" in _one_error(capsys.readouterr().err)
        return
    assert rc == 0
    assert np.array_equal(np.load(tmp_path / "ref.npy"), np.load(tmp_path / "csim.npy"))


def _predict_both(build: Path, x: np.ndarray, tmp_path: Path) -> np.ndarray:
    """``codesign predict`` with both engines; they must agree exactly."""
    np.save(tmp_path / "x.npy", x)
    ys = []
    for engine in flow.ENGINES if flow.hls_emitter() is not None else ("reference",):
        out = tmp_path / f"y_{engine}.npy"
        assert cli.main(["predict", str(build), "--input", str(tmp_path / "x.npy"), "--output", str(out),
                         "--engine", engine]) == 0
        ys.append(np.load(out))
    assert all(np.array_equal(y, ys[0]) for y in ys)
    return ys[0]


def test_bnn_build_predict_equals_execute_onnx(tmp_path, capsys):
    """Bipolar weights and activations, BatchNorm folded into thresholds: ``==`` with qonnx."""
    from codesign.quantize.examples import export_bnn

    export_bnn(tmp_path / "bnn.onnx")
    out = tmp_path / "bnn-zcu111"
    assert cli.main(["build", str(tmp_path / "bnn.onnx"), "--board", "zcu111", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["bit_widths"]["weights"] == {"1": 2} and "threshold" in rep["ops"]
    x = (np.random.default_rng(3).standard_normal((40, 24)) * 2).astype(np.float32)
    y = _predict_both(out, x, tmp_path)
    ye = execute_qonnx(tmp_path / "bnn.onnx", x)
    assert y.shape == ye.shape == (40, 16)
    assert np.array_equal(y, ye)
    assert set(np.unique(y)) == {-1.0, 1.0}


def test_float_scale_mlp_predict_within_one_lsb(tmp_path, capsys):
    """Arbitrary float scales: at most 1 LSB of the output quantizer on at most 0.1% of the
    outputs against qonnx's float32 execution; the count is printed, not hidden."""
    from codesign.accel import ir as irm
    from codesign.quantize.examples import export_mlp_float

    export_mlp_float(tmp_path / "mlp.onnx")
    out = tmp_path / "mlpf"
    assert cli.main(["build", str(tmp_path / "mlp.onnx"), "--board", "zcu102", "--out", str(out)]) == 0
    x = (np.random.default_rng(11).standard_normal((500, 16)) * 2).astype(np.float32)
    y = _predict_both(out, x, tmp_path)
    ye = execute_qonnx(tmp_path / "mlp.onnx", x)
    ir = irm.load(out / "ir")
    s_out = np.float64(ir.tensors[ir.ops[-1].inputs[0]].scale.value)
    lsb = np.abs(np.round(y / s_out) - np.round(ye / s_out))
    n = int(np.count_nonzero(lsb))
    print(f"float-scale MLP: {n} of {lsb.size} outputs differ by 1 LSB from execute_onnx")
    assert lsb.max() <= 1 and n <= 0.001 * lsb.size


def test_predict_bad_input_shape(mlp_build, tmp_path, capsys):
    np.save(tmp_path / "x.npy", np.zeros((2, 15), np.float32))
    assert cli.main(["predict", str(mlp_build), "--input", str(tmp_path / "x.npy"),
                     "--output", str(tmp_path / "y.npy")]) == 2
    assert "does not match" in _one_error(capsys.readouterr().err)
    assert not (tmp_path / "y.npy").exists()


def test_user_build_deterministic(mlp_file, mlp_build, tmp_path):
    out = tmp_path / "again"
    assert cli.main(["build", str(mlp_file), "--board", "zcu102", "--out", str(out)]) == 0
    assert _artefacts(out) == _artefacts(mlp_build)


# ---------------------------------------------------------------------------------------
# FQ-BERT


def test_fqbert_build_end_to_end(tmp_path, capsys):
    out = tmp_path / "fq"
    assert cli.main(["build", "fqbert", "--board", "zcu102", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for k, s in enumerate(flow.STEPS, 1):
        assert f"[{k}/6] {s}: " in text
    rep = json.loads((out / "report.json").read_text())
    assert REPORT_KEYS <= set(rep)
    assert rep["model"] == "fqbert" and rep["config"] == "tiny"
    assert rep["bit_widths"]["weights"] == {"4": 14}  # 12 encoder linears + pooler + classifier
    assert rep["compression_vs_fp32"] == 8.0
    assert rep["ops"]["softmax"] == 2 and rep["ops"]["layernorm"] == 4
    md = (out / "report.md").read_text()
    for figure in ("43.89", "9.8", "2.32", "1,751", "7.94x", "not estimated yet"):
        assert figure in md, figure
    man = json.loads((out / "golden/golden.json").read_text())
    assert man["cases"] == flow.FQBERT_CASES and "tokens" in man["extra"]
    # predict takes token ids (host front -> IR -> host back) and gives the logits of the
    # whole cleaned QONNX graph under qonnx's execute_onnx, and the golden logits
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx

    import codesign.accel.custom_ops  # noqa: F401  (registers the codesign domain)

    tokens = np.load(out / "golden" / "tokens.npy")
    rng = np.random.default_rng(5)
    tokens = np.concatenate([tokens, rng.integers(0, 1000, size=(3, tokens.shape[1]))]).astype(np.int64)
    x = tmp_path / "tokens.npy"
    np.save(x, tokens)
    assert cli.main(["predict", str(out), "--input", str(x), "--output", str(tmp_path / "y.npy")]) == 0
    y = np.load(tmp_path / "y.npy")
    assert y.dtype == np.float64 and y.shape == (len(tokens), 2)
    assert np.array_equal(y[:flow.FQBERT_CASES], np.load(out / "golden" / "logits.npy"))
    mw = ModelWrapper(str(out / "model.onnx"))
    peer = np.concatenate([execute_onnx(mw, {mw.graph.input[0].name: tokens[i:i + 1]})[mw.graph.output[0].name]
                           for i in range(len(tokens))])
    assert np.array_equal(y, peer)
    if flow.hls_emitter() is not None:
        assert json.loads((out / "report.json").read_text())["csim"]["passed"] is True
        assert cli.main(["predict", str(out), "--input", str(x), "--output", str(tmp_path / "yc.npy"),
                         "--engine", "csim"]) == 0
        assert np.array_equal(np.load(tmp_path / "yc.npy"), y)
    # token ids of the wrong length, out of the vocabulary, or floats: one line, exit 2
    for bad, needle in ((tokens[:, :8], "token ids (batch, 16)"), (tokens + 1000, "outside 0..999"),
                        (tokens.astype(np.float32), "token ids (batch, 16)")):
        np.save(x, bad)
        capsys.readouterr()
        assert cli.main(["predict", str(out), "--input", str(x), "--output", str(tmp_path / "b.npy")]) == 2
        assert needle in _one_error(capsys.readouterr().err)
    # same command again: byte-identical artefacts
    again = tmp_path / "fq2"
    assert cli.main(["build", "fqbert", "--board", "zcu102", "--out", str(again), "--no-csim"]) == 0
    assert _artefacts(again) == _artefacts(out)
    assert json.loads((again / "report.json").read_text())["csim"]["skipped"] == "--no-csim"


# ---------------------------------------------------------------------------------------
# errors


def _softmax_onnx(path: Path) -> Path:
    from qonnx.util.basic import qonnx_make_model
    inits = {"s": np.float32(0.5), "z": np.float32(0), "b": np.float32(8)}
    nodes = [helper.make_node("Quant", ["x", "s", "z", "b"], ["xq"], name="q", domain=QONNX, signed=1, narrow=0,
                              rounding_mode="ROUND"),
             helper.make_node("Softmax", ["xq"], ["y"], name="my softmax")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                          initializer=[onnx.numpy_helper.from_array(np.asarray(v), name=k) for k, v in inits.items()])
    onnx.save(qonnx_make_model(g, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid(QONNX, 1)]),
              str(path))
    return path


def _bad_model(kind: str, where: Path, mlp_file: Path) -> str:
    if kind == "missing":
        return str(where / "nope.onnx")
    if kind == "truncated":
        data = mlp_file.read_bytes()
        (where / "trunc.onnx").write_bytes(data[: len(data) // 2])
        return str(where / "trunc.onnx")
    if kind == "unsupported":
        return str(_softmax_onnx(where / "softmax.onnx"))
    if kind == "unknown":
        return "resnet"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, code, needle", [
    ("missing", 2, "does not exist"),
    ("truncated", 2, "cannot read"),
    ("unsupported", 2, "node 'my softmax' (op_type Softmax) is not supported; supported: "),
    ("unknown", 2, "unknown model 'resnet'"),
])
def test_bad_model_one_line_no_dir(kind, code, needle, mlp_file, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    model = _bad_model(kind, inputs, mlp_file)
    work = tmp_path / "work"
    work.mkdir()
    out = work / "build" / "out"
    assert cli.main(["build", model, "--board", "zcu102", "--out", str(out)]) == code
    line = _one_error(capsys.readouterr().err)
    assert needle in line
    if kind == "unsupported":
        assert "IntSoftmax" in line and "Gemm" in line
    assert list(work.iterdir()) == []  # not even build/


def test_unknown_board_and_config(tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["build", "fqbert", "--board", "zcu999", "--out", str(out)]) == 2
    assert _one_error(capsys.readouterr().err) == "error: unknown board 'zcu999' (supported: zcu102, zcu111)"
    assert cli.main(["build", "fqbert", "--board", "zcu102", "--config", "huge", "--out", str(out)]) == 2
    assert "unknown config 'huge'" in _one_error(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_existing_dir_without_force_untouched(mlp_file, tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    assert cli.main(["build", str(mlp_file), "--board", "zcu111", "--out", str(out)]) == 2
    assert "--force" in _one_error(capsys.readouterr().err)
    assert _tree(out) == {"mine.txt": b"keep"}
    assert cli.main(["build", str(mlp_file), "--board", "zcu111", "--out", str(out), "--force"]) == 0
    assert (out / "report.json").is_file() and not (out / "mine.txt").exists()
    assert json.loads((out / "report.json").read_text())["part"] == "xczu28dr-ffvg1517-2-e"


def test_injected_failure_leaves_nothing(mlp_file, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CODESIGN_DEBUG", raising=False)

    def boom(*a, **k):
        raise RuntimeError("injected\nfailure")

    monkeypatch.setattr(flow, "_golden", boom)
    out = tmp_path / "new" / "o"
    assert cli.main(["build", str(mlp_file), "--board", "zcu102", "--out", str(out)]) == 1
    assert _one_error(capsys.readouterr().err) == "error: RuntimeError: injected failure"
    assert list(tmp_path.iterdir()) == []
    # with --force over an existing build: the old one stays as it was
    old = tmp_path / "old"
    old.mkdir()
    (old / "a").write_text("x")
    assert cli.main(["build", str(mlp_file), "--board", "zcu102", "--out", str(old), "--force"]) == 1
    capsys.readouterr()
    assert _tree(old) == {"a": b"x"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_csim_mismatch_exit_1(mlp_file, tmp_path, capsys, monkeypatch):
    """A failing C-simulation (a stand-in emitter) is exit 1, naming the first mismatch; no DIR."""
    import types

    class Rep:
        passed, cases, mismatches, seconds = False, 8, 1, 0.1
        first_mismatch = "case 3, out_y[0, 7]: csim 5 != reference 6"

    def emit_project(ir, out_dir, board, clock_mhz, golden_inputs, top="codesign_top"):
        out_dir.mkdir()
        (out_dir / "top.cpp").write_text("//\n")
        return out_dir

    fake = types.SimpleNamespace(emit_project=emit_project, run_project_csim=lambda d: Rep())
    monkeypatch.setattr(flow, "hls_emitter", lambda: fake)
    out = tmp_path / "o"
    assert cli.main(["build", str(mlp_file), "--board", "zcu102", "--out", str(out)]) == 1
    line = _one_error(capsys.readouterr().err)
    assert "csim mismatch" in line and Rep.first_mismatch in line
    assert list(tmp_path.iterdir()) == []


def test_build_errors_via_console_script(tmp_path):
    exe = Path(sys.executable).parent / "codesign"
    env = {k: v for k, v in os.environ.items() if k != "CODESIGN_DEBUG"}
    r = subprocess.run([str(exe), "build", str(tmp_path / "missing.onnx"), "--board", "zcu102"], cwd=tmp_path,
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert _one_error(r.stderr) == f"error: model file '{tmp_path / 'missing.onnx'}' does not exist"
    assert list(tmp_path.iterdir()) == []
