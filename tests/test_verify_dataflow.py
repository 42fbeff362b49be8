"""``codesign verify DIR --rtl`` for CNN/MLP/BNN builds (accel/verify.py): every MVAU layer of
the build's dataflow (report.json ``dataflow``) runs on ``sim/rtl/mvau.v`` at the build's
folding, on the first golden cases; its output codes must equal (``==``) the IR's
threshold/requant codes of the numpy reference trace, and its cycle count the model's
``NF·SF·V + D_MVAU``.

Independent checks: the im2col of the verifier against ``reference.conv2d``; the requant ->
thresholds conversion against ``reference.requant`` on every accumulator of a range
(brute force); expected cycle counts computed here from report.json's folding with the
formula of docs/dataflow.md (hand-derived constants where given); a reference trace
tampered at one hand-picked position must be named (layer, case, vector, channel).

Cost: two zoo builds (~20 s) and, cold, one Verilator build per layer parameter set
(~15-30 s each, cached in ``~/.cache/codesign/rtl``). The full mpcnn run (all six layers)
is marked ``slow``.
"""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest

from codesign.accel import flow
from codesign.accel import ir as irm
from codesign.accel import verify as vf
from codesign.sim import reference as ref

pytest.importorskip("sklearn")

D_MVAU = 5  # docs/dataflow.md §1: issue slot + R1..R5


def _build(root, model: str):
    out = root / model
    flow.build(model, "zcu111", out=out, csim=False)
    shutil.rmtree(out / "rtl")  # flow.py still writes the engine RTL; write the MVAU's instead
    doc = json.loads((out / "report.json").read_text())
    vf.write_build_rtl(out / "rtl", doc, irm.load(out / "ir"))
    return out


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    root = tmp_path_factory.mktemp("vdf")
    return {m: _build(root, m) for m in ("mpcnn", "bnn")}


def _rows(rep, check="rtl"):
    return {r.what.split(" ")[0]: r for r in rep.rows if r.check == check}


def _expected_cycles(layer: dict) -> int:
    """docs/dataflow.md §1, from report.json's folding: ceil(MH/PE)·ceil(MW/SIMD)·V + D_MVAU."""
    nf = -(-layer["MH"] // layer["PE"])
    sf = -(-layer["MW"] // layer["SIMD"])
    return nf * sf * layer["vectors"] + D_MVAU


def _check_passes(d, rep, names):
    layers = {l["name"]: l for l in json.loads((d / "report.json").read_text())["dataflow"]["layers"]}
    rows = _rows(rep)
    for name in names:
        r = rows[name]
        assert r.status == "pass", f"{name}: {r.status} {r.detail}"
        assert "cases 0..1 of 8" in r.what  # the default: the first 2 golden cases
        cyc = int(re.search(r"(\d+) cycles per case", r.detail).group(1))
        assert cyc == _expected_cycles(layers[name]), (name, cyc)


# ---------------------------------------------------------------------------
# Python-only
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("stride, pad, dil, k", [((1, 1), (1, 1, 1, 1), (1, 1), (3, 3)),
                                                   ((2, 2), (1, 1, 1, 1), (1, 1), (3, 3)),
                                                   ((2, 1), (0, 2, 1, 0), (2, 1), (3, 2)),
                                                   ((1, 1), (0, 0, 0, 0), (1, 1), (1, 1))])
def test_im2col_matches_reference_conv2d(stride, pad, dil, k):
    """im2col rows (K order c, ky, kx) x the weight matrix == reference.conv2d (padding 0)."""
    rng = np.random.default_rng(3)
    x = rng.integers(-8, 8, size=(3, 7, 6))
    w = rng.integers(-4, 4, size=(5, 3, *k))
    want = ref.conv2d(x[None], w, None, list(stride), list(pad), list(dil), 1, ref.IntType(4, True),
                      ref.IntType(3, True))[0]
    cols, inside = vf._im2col(x, k[0], k[1], stride, pad, dil)
    OC, OH, OW = want.shape
    assert cols.shape == (OH * OW, 3 * k[0] * k[1])
    assert np.array_equal(cols @ w.reshape(OC, -1).T, want.reshape(OC, -1).T)
    assert np.all(cols[~inside] == 0)
    assert inside.all() == (sum(pad) == 0)


@pytest.mark.parametrize("out_type", [ref.IntType(8, False), ref.IntType(4, True), ref.IntType(3, True, True)])
def test_requant_thresholds_reproduce_requant(out_type):
    """Every accumulator of the range: out_lo + #(acc >= T) == reference.requant(acc + bias)."""
    rng = np.random.default_rng(11)
    C, lo, hi = 6, -3000, 2500
    M = rng.integers(1, 1 << 15, size=C)
    M[0] = 0  # a constant channel
    sh = rng.integers(10, 20, size=C)
    bias = rng.integers(-500, 500, size=C)
    T = vf.requant_thresholds(M, sh, bias, out_type, lo, hi)
    assert T.shape == (C, out_type.hi - out_type.lo) and np.all(np.diff(T, axis=1) >= 0)
    assert T.min() >= lo and T.max() <= hi + 1
    acc = np.arange(lo, hi + 1)[:, None]
    got = out_type.lo + (acc[..., None] >= T[None]).sum(axis=-1)
    want = ref.requant(acc + bias[None], M[None], sh[None], out_type)
    assert np.array_equal(got, want)


# ---------------------------------------------------------------------------
# DIR/rtl of a dataflow build
# ---------------------------------------------------------------------------

def test_write_dataflow_rtl(builds):
    from codesign.sim import rtl

    d = builds["mpcnn"]
    cfg = json.loads((d / "rtl" / "dataflow.json").read_text())
    rep = json.loads((d / "report.json").read_text())["dataflow"]
    assert cfg["top"] == "mvau" and cfg["sources"] == ["mvau.v"]
    assert sorted(p.name for p in (d / "rtl").iterdir()) == ["dataflow.json", "mvau.v"]
    assert (d / "rtl" / "mvau.v").read_bytes() == (rtl.RTL_DIR / "mvau.v").read_bytes()
    assert [l["name"] for l in cfg["layers"]] == [f["name"] for f in rep["folding"]]
    for l, f in zip(cfg["layers"], rep["folding"]):
        p = l["parameters"]
        assert (p["PE"], p["SIMD"], p["MH"], p["MW"]) == (f["PE"], f["SIMD"], f["MH"], f["MW"])
    by = {l["name"]: l for l in cfg["layers"]}
    # mpcnn (docs/ir.md names): conv2d_1's stage is threshold_2 behind transpose_0 (channels last)
    assert by["conv2d_1"]["ops"] == ["conv2d_1", "transpose_0", "threshold_2"]
    assert by["conv2d_0"]["parameters"]["OUT_BIAS"] == 0 and by["conv2d_0"]["parameters"]["RESTYPE"] == 1  # 8x8
    assert by["conv2d_0"]["parameters"]["NT"] == 255 and by["conv2d_0"]["parameters"]["A_SIGNED"] == 1
    assert by["matmul_0"]["parameters"]["NT"] == 0 and by["matmul_0"]["output_stage"] is None
    assert by["conv2d_2"]["parameters"]["WB"] == 3 and by["conv2d_2"]["parameters"]["A_SIGNED"] == 0


def test_fqbert_style_report_gets_engine_rtl(tmp_path):
    vf.write_build_rtl(tmp_path / "rtl", {"folding": {"N": 2, "P_dsp": 1, "P_lut": 1, "M": 8, "packing": "dsp2"}})
    assert (tmp_path / "rtl" / vf.RTL_CONFIG).is_file() and not (tmp_path / "rtl" / vf.DATAFLOW_CONFIG).exists()


def test_no_folding_writes_empty_layers(tmp_path):
    vf.write_dataflow_rtl(tmp_path / "rtl", {"dataflow": {"search": "no folding fits 85 % of zcu111"}})
    cfg = json.loads((tmp_path / "rtl" / "dataflow.json").read_text())
    assert cfg["layers"] == [] and "no folding fits" in cfg["note"]


def test_disagreeing_dataflow_json_fails(builds, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(builds["mpcnn"], d)
    p = d / "rtl" / "dataflow.json"
    cfg = json.loads(p.read_text())
    cfg["layers"][1]["MW"] = 145
    p.write_text(json.dumps(cfg))
    rep = vf.verify(d, rtl=True, rtl_layers=["conv2d_1"])
    r = _rows(rep)["conv2d_1"]
    assert r.status == "FAIL" and "disagrees with DIR/ir: MW 145 (IR: 144)" in r.detail


def test_tampered_mvau_is_refused(builds, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(builds["bnn"], d)
    with open(d / "rtl" / "mvau.v", "a") as f:
        f.write("// edited\n")
    rep = vf.verify(d, rtl=True)
    assert not rep.ok and "DIR/rtl differs from this codesign's RTL (mvau.v)" in rep.rows[-1].detail


# ---------------------------------------------------------------------------
# RTL
# ---------------------------------------------------------------------------

@pytest.mark.rtl
def test_bnn_rtl_every_layer(builds):
    """bnn: the multi-bit layers pass (codes ==, cycles == model); the binary 3x3 convs with
    padding are reported as not verifiable (mvau.v has no 0 for a padded bipolar tap)."""
    d = builds["bnn"]
    rep = vf.verify(d, rtl=True, sim="verilator")
    assert rep.ok, rep.table()
    rows = _rows(rep)
    assert list(rows) == ["conv2d_0", "conv2d_1", "conv2d_2", "conv2d_3", "conv2d_4", "conv2d_5", "matmul_0"]
    _check_passes(d, rep, ["conv2d_0", "conv2d_4", "matmul_0"])
    for name in ("conv2d_1", "conv2d_2", "conv2d_3", "conv2d_5"):
        assert rows[name].status == "skip" and rows[name].detail.startswith(
            "not verifiable on mvau.v: bipolar padding"), rows[name]
    # conv2d_0: 3x3 over 1 channel, 8x8 pixels, PE 16 = MH: NF = 1, SF = 9/SIMD
    assert "581 cycles per case" in rows["conv2d_0"].detail  # 1·9·64 + 5 (SIMD = 1)


@pytest.mark.rtl
def test_mpcnn_rtl_layers(builds):
    """mpcnn: a stride-2 conv with 4 output folds behind a transpose, and the classifier
    without output stage (raw accumulator; the bias is added outside the MVAU)."""
    d = builds["mpcnn"]
    rep = vf.verify(d, rtl=True, rtl_layers=["conv2d_3", "matmul_0"])
    assert rep.ok, rep.table()
    _check_passes(d, rep, ["conv2d_3", "matmul_0"])
    assert "325 cycles per case" in _rows(rep)["matmul_0"].detail  # PE = SIMD = 1: 10·32 + 5


@pytest.mark.rtl
@pytest.mark.slow
def test_mpcnn_rtl_every_layer(builds):
    d = builds["mpcnn"]
    rep = vf.verify(d, rtl=True)
    assert rep.ok, rep.table()
    _check_passes(d, rep, ["conv2d_0", "conv2d_1", "conv2d_2", "conv2d_3", "conv2d_4", "matmul_0"])


@pytest.mark.rtl
def test_tampered_reference_names_layer_vector_channel(builds, monkeypatch):
    """One code of threshold_4 (conv2d_3's stage, NHWC (1, 4, 4, 32)) changed in the
    reference trace at (h, w, c) = (2, 1, 5): the row names conv2d_3, case 0, vector
    2·4 + 1 = 9, channel 5 (fold 0 at PE 8: 5 // 8 = 0, PE 5)."""
    from codesign.sim import run_ir

    real = run_ir.run_reference

    def tampered(ir, inputs, trace=False):
        res = real(ir, inputs, trace=trace)
        if trace:
            y = res[1]["threshold_4_out"]
            y[0, 2, 1, 5] = (y[0, 2, 1, 5] + 1) % 256
        return res

    monkeypatch.setattr(run_ir, "run_reference", tampered)
    rep = vf.verify(builds["mpcnn"], rtl=True, rtl_cases=1, rtl_layers=["conv2d_3"])
    r = _rows(rep)["conv2d_3"]
    assert r.status == "FAIL" and "cases 0..0 of 8" in r.what
    assert re.search(r"^first divergence: conv2d_3 \(.*\), case 0, vector 9 \(output pixel 2, 1\), channel 5 "
                     r"\(fold 0, PE 5\): rtl \d+ != reference \d+$", r.detail), r.detail


@pytest.mark.rtl
def test_requant_stage_runs_as_thresholds(builds, tmp_path):
    """mpcnn lowered without threshold_all: conv2d_3's output stage is a per-channel requant
    (requant_4, uint8), run on mvau.v as 255 thresholds derived by bisection."""
    from codesign.accel import report as rp
    from codesign.accel.boards import get_board
    from codesign.accel.lower import lower

    src = builds["mpcnn"]
    d = tmp_path / "rq"
    d.mkdir()
    shutil.copytree(src / "golden", d / "golden")
    ir = lower(str(src / "model.onnx"))
    irm.save(ir, d / "ir")
    man = json.loads((d / "golden" / "golden.json").read_text())  # same vectors, this IR's names
    (_, spec_in), = man["inputs"].items()
    (_, spec_out), = man["outputs"].items()
    man["inputs"], man["outputs"] = {ir.inputs[0].name: spec_in}, {ir.outputs[0].name: spec_out}
    (d / "golden" / "golden.json").write_text(json.dumps(man))
    doc = json.loads((src / "report.json").read_text())
    df = rp.dataflow_estimates(ir, get_board("zcu111"), doc["dataflow"]["clock_mhz"])
    vf.write_dataflow_rtl(d / "rtl", df, ir)
    cfg = json.loads((d / "rtl" / "dataflow.json").read_text())
    e = next(l for l in cfg["layers"] if l["name"] == "conv2d_3")
    assert e["ops"] == ["conv2d_3", "transpose_4", "requant_4"] and e["parameters"]["OUT_BIAS"] == 0
    rep = vf.verify(d, rtl=True, rtl_cases=1, rtl_layers=["conv2d_3"])
    r = _rows(rep)["conv2d_3"]
    assert r.status == "pass", r.detail
    assert "requant_4: requant as 255 thresholds/channel" in r.detail
    lay = next(l for l in df["dataflow"]["layers"] if l["name"] == "conv2d_3")
    assert int(re.search(r"(\d+) cycles per case", r.detail).group(1)) == _expected_cycles(lay)
