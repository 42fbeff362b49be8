"""``codesign verify DIR --rtl`` for CNN/MLP/BNN builds (accel/verify.py): every MVAU layer of
the build's dataflow (report.json ``dataflow``) runs on ``sim/rtl/mvau.v`` at the build's
folding, on the first golden cases; its output codes must equal (``==``) the IR's
threshold/requant codes of the numpy reference trace, and its cycle count the model's
``NF·SF·V + D_MVAU``.

A conv2d with a bipolar input and padding (the Bi-Real ``bnn``'s binary 3x3 convs) runs in
the two-lanes-per-tap encoding (docs/arithmetic.md §11: a padded tap adds 0): its
dataflow layer (``accel/dataflow_ir.py``) has ``MW = 2·C·KH·KW`` and the verifier feeds
mvau.v real taps as ``(a, a)``, padded ones as ``(+1, -1)`` against weights ``(w, w)``, with
thresholds ``2·T``; checked here against ``reference.conv2d`` (numpy), on the bnn build's
four such layers on the RTL, and with a deliberately wrong encoding that must fail.

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
D_MVAU_RQ = 7  # requant mode: R5 = acc + bias, R6 product, R7 code (mvau.v header)


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


BIP = ref.IntType(1, True)


@pytest.mark.parametrize("C, OC, k, stride, pad, dil, H, W", [
    (3, 5, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), 5, 6),    # the bnn's 3x3 pad 1
    (2, 4, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1), 7, 7),    # stride 2 (bnn's down conv)
    (4, 3, (3, 2), (2, 1), (0, 2, 1, 0), (2, 1), 6, 5),    # asymmetric pads, dilation
    (1, 2, (5, 5), (1, 1), (2, 2, 2, 2), (1, 1), 3, 3),    # more padding than image
])
def test_two_lane_encoding_equals_twice_reference_conv2d(C, OC, k, stride, pad, dil, H, W):
    """Random bipolar x bipolar conv with padding: encoded im2col @ encoded weights ==
    2 x reference.conv2d (padded taps add 0, §11), every lane a bipolar code, real taps
    (a, a), padded taps (+1, -1); the plain im2col with the padded taps as -1 (the bit 0)
    is not the contract (so the encoding is needed)."""
    rng = np.random.default_rng(C * 100 + H)
    x = rng.choice(np.array([-1, 1]), size=(C, H, W))
    w = rng.choice(np.array([-1, 1]), size=(OC, C, *k))
    want = ref.conv2d(x[None], w, None, list(stride), list(pad), list(dil), 1, BIP, BIP)[0]
    cols, inside = vf._im2col(x, k[0], k[1], stride, pad, dil)
    assert not inside.all()
    x2, w2 = vf.two_lane_encoding(cols, inside, w)
    K = C * k[0] * k[1]
    assert x2.shape == (cols.shape[0], 2 * K) and w2.shape == (OC, 2 * K)
    assert set(np.unique(x2)) <= {-1, 1} and set(np.unique(w2)) <= {-1, 1}
    assert np.array_equal(x2 @ w2.T, 2 * want.reshape(OC, -1).T)
    # the lanes, by hand: channel pair (2c, 2c + 1), tap t = ky·KW + kx
    T = k[0] * k[1]
    for v in range(cols.shape[0]):
        for c in range(C):
            for t in range(T):
                pair = (x2[v, (2 * c) * T + t], x2[v, (2 * c + 1) * T + t])
                assert pair == ((cols[v, c * T + t],) * 2 if inside[v, c * T + t] else (1, -1))
                assert w2[0, (2 * c) * T + t] == w2[0, (2 * c + 1) * T + t] == w[0].reshape(-1)[c * T + t]
    one_lane = np.where(inside, cols, -1)
    assert not np.array_equal(one_lane @ w.reshape(OC, -1).T, want.reshape(OC, -1).T)


class _IR:
    """A tiny hand-written IR (only what dataflow_ir.map_ir reads)."""

    def __init__(self):
        self.tensors, self.constants, self.ops = {}, {}, []

    def conv(self, name, C, OC, H, W, x_type, w_type, pad, k=3, stride=1):
        OH = (H + pad[0] + pad[2] - k) // stride + 1
        OW = (W + pad[1] + pad[3] - k) // stride + 1
        x, wn, a = f"{name}_x", f"{name}_w", f"{name}_acc"
        self.tensors[x] = irm.Tensor((1, C, H, W), "code", type=x_type, scale=irm.Scale.scalar(1.0))
        self.tensors[a] = irm.Tensor((1, OC, OH, OW), "acc", acc_bits=16, scale=irm.Scale.scalar(1.0))
        self.constants[wn] = irm.Constant(w_type, np.ones((OC, C, k, k), dtype=np.int64))
        self.ops.append(irm.Op(name, "conv2d", [x, wn], [a], dict(
            stride=[stride, stride], pad=list(pad), dilation=[1, 1], groups=1, x_type=x_type.to_json(),
            w_type=w_type.to_json(), acc_bits=16)))

    def ir(self):
        return irm.IR("t", [], [], self.tensors, self.constants, self.ops)


def test_dataflow_ir_two_lanes_for_bipolar_padding():
    """A bipolar-input conv with padding is costed as the encoded layer: MW = 2·C·KH·KW and a
    window over 2·C channels, with the note; without padding (or with a multi-bit input)
    MW = C·KH·KW and no note. Numbers by hand."""
    from codesign.accel.dataflow_ir import map_ir, two_lanes_per_tap

    b1, i4, u4 = irm.CodeType(1, True), irm.CodeType(4, True), irm.CodeType(4, False)
    g = _IR()
    g.conv("conv2d_0", 16, 8, 8, 8, b1, b1, (1, 1, 1, 1))     # binary, pad 1: 2·16·9 = 288
    g.conv("conv2d_1", 16, 8, 8, 8, b1, b1, (0, 0, 0, 0))     # binary, no pad: 16·9 = 144
    g.conv("conv2d_2", 6, 4, 5, 5, b1, i4, (0, 0, 1, 0))      # bipolar x int4 (lowbit), bottom pad only
    g.conv("conv2d_3", 6, 4, 5, 5, u4, b1, (1, 1, 1, 1))      # multi-bit input: zero padding is a code
    g.conv("conv2d_4", 4, 4, 9, 9, b1, b1, (1, 1, 1, 1), stride=2)  # stride 2: (9 + 2 - 3) // 2 + 1 = 5
    ir = g.ir()
    assert [two_lanes_per_tap(o) for o in ir.ops] == [True, False, True, False, True]
    m = map_ir(ir)
    L = {x.layer.name: x.layer for x in m.layers}
    got = {n: (l.MH, l.MW, l.vectors, l.mode, None if l.window is None else (l.window.k, l.window.C))
           for n, l in L.items()}
    assert got == {"conv2d_0": (8, 288, 64, "binary", (3, 32)),
                   "conv2d_1": (8, 144, 36, "binary", (3, 16)),
                   "conv2d_2": (4, 108, 12, "lowbit", None),   # asymmetric pad: no window; 2·6·9; 4x3 out
                   "conv2d_3": (4, 54, 25, "lowbit", (3, 6)),
                   "conv2d_4": (4, 72, 25, "binary", (3, 8))}
    notes = [n for n in m.notes if "two lanes per tap" in n]
    assert [n.split(":")[0] for n in notes] == ["conv2d_0", "conv2d_2", "conv2d_4"]
    assert notes[0].startswith("conv2d_0: bipolar input with padding: two lanes per tap (padded taps contribute "
                               "0, §11), MW = 2·(C/groups)·KH·KW = 2·16·3·3 = 288")
    assert "C = 2·16 = 32" in notes[0] and "channel-duplicated" not in notes[1]


# ---------------------------------------------------------------------------
# DIR/rtl of a dataflow build
# ---------------------------------------------------------------------------

def test_write_dataflow_rtl(builds):
    from codesign.sim import rtl

    d = builds["mpcnn"]
    cfg = json.loads((d / "rtl" / "dataflow.json").read_text())
    rep = json.loads((d / "report.json").read_text())["dataflow"]
    assert cfg["top"] == "mvau" and cfg["sources"] == ["mvau.v", "requant.v"]
    assert sorted(p.name for p in (d / "rtl").iterdir()) == ["dataflow.json", "mvau.v", "requant.v"]
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
    # the trained model's BatchNorm thresholds are no exact requant: threshold mode, no RQ parameters
    assert all(l["out_stage"] == "threshold" and "RQ" not in l["parameters"] for l in cfg["layers"])
    # the global average pool is costed in conv2d_4's row (avgpool.v) but not simulated: dataflow.json
    # describes MVAU instances only, conv2d_4's ops end at its stage, and verify runs mvau.v alone
    pooled = {l["name"]: l["pool"] for l in rep["layers"] if l["pool"]}
    assert list(pooled) == ["conv2d_4"] and (pooled["conv2d_4"]["op"], pooled["conv2d_4"]["mode"]) == \
        ("avgpool2d_0", "avg")
    assert "avgpool2d_0" not in by["conv2d_4"]["ops"] and all("pool" not in l for l in cfg["layers"])


#: bnn (zoo, Bi-Real on 1x8x8): the binary 3x3 pad-1 convs, (input channels, output pixels); the
#: stem conv2d_0 (int8 input), the 1x1 shortcut conv2d_4 and the classifier are multi-bit.
BNN_PADDED = {"conv2d_1": (16, 64), "conv2d_2": (16, 64), "conv2d_3": (16, 16), "conv2d_5": (32, 16)}


def test_bnn_dataflow_json_carries_the_encoded_layers(builds):
    """bnn's binary convs with padding: report.json's layers and dataflow.json's parameters
    have MW = 2·C·3·3 (two lanes per tap) and a window over 2·C channels; dataflow.json names
    the encoding; the other layers are plain. Hand-derived from the architecture."""
    d = builds["bnn"]
    df = json.loads((d / "report.json").read_text())["dataflow"]
    rep = {l["name"]: l for l in df["layers"]}
    cfg = {l["name"]: l for l in json.loads((d / "rtl" / "dataflow.json").read_text())["layers"]}
    for name, (C, V) in BNN_PADDED.items():
        l, e = rep[name], cfg[name]
        assert (l["MW"], l["vectors"], l["mode"], l["window"]["C"]) == (2 * C * 9, V, "binary", 2 * C), name
        assert e["parameters"]["MW"] == e["MW"] == 2 * C * 9 and e["parameters"]["BINARY"] == 1
        assert e["encoding"] == "two-lanes-per-tap"
        assert e["model_cycles_per_vector"] == -(-e["MH"] // e["PE"]) * -(-2 * C * 9 // e["SIMD"])
        assert any(n.startswith(f"{name}: bipolar input with padding: two lanes per tap (padded taps contribute "
                                f"0, §11), MW = 2·(C/groups)·KH·KW = 2·{C}·3·3 = {2 * C * 9}") for n in df["notes"])
    assert (rep["conv2d_0"]["MW"], rep["conv2d_4"]["MW"], rep["matmul_0"]["MW"]) == (9, 16, 32)
    assert [cfg[n]["encoding"] for n in ("conv2d_0", "conv2d_4", "matmul_0")] == ["plain"] * 3


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


def test_unencoded_dataflow_json_fails(builds, tmp_path):
    """A dataflow.json that maps a padded binary conv with one lane per tap (MW = C·KH·KW,
    as before the encoding) does not describe what verify runs: FAIL, naming the encoding."""
    d = tmp_path / "copy"
    shutil.copytree(builds["bnn"], d)
    p = d / "rtl" / "dataflow.json"
    cfg = json.loads(p.read_text())
    e = next(l for l in cfg["layers"] if l["name"] == "conv2d_5")
    e["MW"] = e["parameters"]["MW"] = 288
    p.write_text(json.dumps(cfg))
    r = _rows(vf.verify(d, rtl=True, rtl_layers=["conv2d_5"]))["conv2d_5"]
    assert r.status == "FAIL" and (
        "disagrees with DIR/ir: MW 288 (IR: 576, two lanes per tap: bipolar input with padding)" in r.detail), r


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
    """bnn: every layer passes (codes ==, cycles == model), none skipped; the binary 3x3 convs
    with padding run in the two-lanes-per-tap encoding (MW = 2·C·9) at the build's folding of
    the encoded layer, and their rows say so."""
    d = builds["bnn"]
    rep = vf.verify(d, rtl=True, sim="verilator")
    assert rep.ok, rep.table()
    rows = _rows(rep)
    assert list(rows) == ["conv2d_0", "conv2d_1", "conv2d_2", "conv2d_3", "conv2d_4", "conv2d_5", "matmul_0"]
    assert not [r for r in rep.rows if r.status == "skip" and r.check == "rtl"], rep.table()
    _check_passes(d, rep, list(rows))
    layers = {l["name"]: l for l in json.loads((d / "report.json").read_text())["dataflow"]["layers"]}
    for name, (C, V) in BNN_PADDED.items():
        r, lay = rows[name], layers[name]
        assert f"MW {2 * C * 9}," in r.what
        assert ("two lanes per tap (bipolar input with padding, §11" in r.detail
                and f"MW = 2·{C * 9} = {2 * C * 9}, accumulator 2·acc, thresholds 2·T" in r.detail), r.detail
        # the encoded layer's cycles, from the folding and the hand-derived MW
        cyc = -(-lay["MH"] // lay["PE"]) * -(-2 * C * 9 // lay["SIMD"]) * V + D_MVAU
        assert f"{cyc} cycles per case" in r.detail, (name, cyc, r.detail)
    assert "two lanes" not in rows["conv2d_0"].detail + rows["conv2d_4"].detail
    # conv2d_0: 3x3 over 1 channel, 8x8 pixels, PE 16 = MH: NF = 1, SF = 9/SIMD
    assert "581 cycles per case" in rows["conv2d_0"].detail  # 1·9·64 + 5 (SIMD = 1)


@pytest.mark.rtl
def test_bnn_wrong_padding_encoding_fails(builds, monkeypatch):
    """The check can fail: with padded taps encoded as (-1, -1) (a bipolar -1 per lane, not
    the contract's 0) conv2d_1's codes differ from the reference and the row names where."""
    real = vf.two_lane_encoding

    def wrong(cols, inside, w):
        x2, w2 = real(cols, inside, w)
        inside2 = np.repeat(inside.reshape(len(cols), w.shape[1], 1, -1), 2, axis=2).reshape(x2.shape)
        return np.where(inside2, x2, -1), w2  # padded pair (-1, -1): adds -2·w instead of 0

    monkeypatch.setattr(vf, "two_lane_encoding", wrong)
    rep = vf.verify(builds["bnn"], rtl=True, sim="verilator", rtl_cases=1, rtl_layers=["conv2d_1"])
    r = _rows(rep)["conv2d_1"]
    assert r.status == "FAIL" and re.match(r"first divergence: conv2d_1 \(threshold_2: .*two lanes per tap.*\), "
                                           r"case 0, vector \d+ \(output pixel \d+, \d+\), channel \d+", r.detail), r


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


def _relowered(src, d):
    """``d``: ``src``'s golden vectors with ``src``'s model lowered without threshold_all
    (requant output stages), under this IR's tensor names; returns the IR."""
    from codesign.accel.lower import lower

    d.mkdir()
    shutil.copytree(src / "golden", d / "golden")
    ir = lower(str(src / "model.onnx"))
    irm.save(ir, d / "ir")
    man = json.loads((d / "golden" / "golden.json").read_text())  # same vectors, this IR's names
    (_, spec_in), = man["inputs"].items()
    (_, spec_out), = man["outputs"].items()
    man["inputs"], man["outputs"] = {ir.inputs[0].name: spec_in}, {ir.outputs[0].name: spec_out}
    (d / "golden" / "golden.json").write_text(json.dumps(man))
    return ir


@pytest.mark.rtl
def test_bnn_requant_stage_on_encoded_layer(builds, tmp_path):
    """bnn lowered without threshold_all: conv2d_3 (binary, stride 2, pad 1) ends in an int8
    requant (the stage's residual quantizer); on the two-lane layer (MW = 2·16·9 = 288) it runs in mvau.v's requant mode with
    doubled bias and shift + 1 (the MVAU accumulates 2·acc): codes == reference, cycles ==
    NF·SF·V + D_MVAU_RQ."""
    from codesign.accel import report as rp
    from codesign.accel.boards import get_board

    src = builds["bnn"]
    d = tmp_path / "rq"
    ir = _relowered(src, d)
    doc = json.loads((src / "report.json").read_text())
    df = rp.dataflow_estimates(ir, get_board("zcu111"), doc["dataflow"]["clock_mhz"])
    vf.write_dataflow_rtl(d / "rtl", df, ir)
    e = next(l for l in json.loads((d / "rtl" / "dataflow.json").read_text())["layers"] if l["name"] == "conv2d_3")
    assert e["ops"][-1].startswith("requant_") and (e["MW"], e["encoding"]) == (288, "two-lanes-per-tap")
    assert e["out_stage"] == "requant" and e["parameters"]["RQ"] == 1 and e["parameters"]["NT"] == 0
    assert (e["parameters"]["RQ_BITS"], e["parameters"]["RQ_SIGNED"]) == (8, 1)
    rep = vf.verify(d, rtl=True, rtl_cases=1, rtl_layers=["conv2d_3"])
    r = _rows(rep)["conv2d_3"]
    assert r.status == "pass", r.detail
    assert "requant on mvau.v's requant mode (8-bit int" in r.detail and "two lanes per tap" in r.detail
    assert "doubled bias and shift + 1" in r.detail
    cyc = -(-e["MH"] // e["PE"]) * -(-288 // e["SIMD"]) * 16 + D_MVAU_RQ  # 4x4 output pixels
    assert f"{cyc} cycles per case" in r.detail


@pytest.mark.rtl
def test_requant_stage_runs_in_requant_mode(builds, tmp_path):
    """mpcnn lowered without threshold_all: conv2d_3's output stage is a per-channel requant
    (requant_4, uint8, with the conv's bias), run in mvau.v's requant mode; a requant of
    fewer than REQUANT_MIN_BITS bits would still run as thresholds (bisection)."""
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
    assert e["out_stage"] == "requant" and e["parameters"]["RQ"] == 1 and e["parameters"]["RQ_SIGNED"] == 0
    rep = vf.verify(d, rtl=True, rtl_cases=1, rtl_layers=["conv2d_3"])
    r = _rows(rep)["conv2d_3"]
    assert r.status == "pass", r.detail
    assert "requant_4: requant on mvau.v's requant mode (8-bit uint" in r.detail
    lay = next(l for l in df["dataflow"]["layers"] if l["name"] == "conv2d_3")
    assert int(re.search(r"(\d+) cycles per case", r.detail).group(1)) == _expected_cycles(lay) - D_MVAU + D_MVAU_RQ
    # a dataflow.json whose requant widths are too narrow for the IR's parameters fails
    p = d / "rtl" / "dataflow.json"
    bad = json.loads(p.read_text())
    next(l for l in bad["layers"] if l["name"] == "conv2d_3")["m_bits"] = 2
    p.write_text(json.dumps(bad))
    r = _rows(vf.verify(d, rtl=True, rtl_cases=1, rtl_layers=["conv2d_3"]))["conv2d_3"]
    assert r.status == "FAIL" and "requant mode needs" in r.detail, r.detail
