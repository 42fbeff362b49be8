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

Block-sparse layers run on ``sim/rtl/mvau_sparse.v`` (a hand-written pruned CNN, marked
by ``mark_sparse`` as ``codesign build --sparse 2,4`` does): codes == the IR's, cycles ==
``V·max(SF, NB+NE) + min(SF, NB+NE) + D_MVAU`` from the masks by hand; a requant-mode sparse
layer is a skip; a weight corrupted on its way to the RTL, or a DIR/ir whose blocks no
longer match dataflow.json, fails. Attached pools (max: pool.v, average: avgpool.v, incl.
mpcnn's global pool) get their own rows: codes == the pool op's output in the trace, cycles
== pool_cycles by hand; a tampered reference pool code is named (case, channel, pixel).

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
    assert cfg["top"] == "mvau" and cfg["sources"] == ["mvau.v", "requant.v", "avgpool.v"]  # + conv2d_4's pool
    assert sorted(p.name for p in (d / "rtl").iterdir()) == ["avgpool.v", "dataflow.json", "mvau.v", "requant.v"]
    assert (d / "rtl" / "avgpool.v").read_bytes() == (rtl.RTL_DIR / "avgpool.v").read_bytes()
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
    # the global average pool is costed in conv2d_4's row (avgpool.v) and recorded with it (its own
    # row in verify); conv2d_4's ops still end at its stage; no layer is block-sparse
    pooled = {l["name"]: l["pool"] for l in rep["layers"] if l["pool"]}
    assert list(pooled) == ["conv2d_4"] and (pooled["conv2d_4"]["op"], pooled["conv2d_4"]["mode"]) == \
        ("avgpool2d_0", "avg")
    assert "avgpool2d_0" not in by["conv2d_4"]["ops"]
    assert [l["name"] for l in cfg["layers"] if l["pool"]] == ["conv2d_4"]
    pl = by["conv2d_4"]["pool"]
    assert (pl["op"], pl["mode"], pl["unit"], pl["P"]) == ("avgpool2d_0", "avg", "avgpool.v", by["conv2d_4"]["PE"])
    assert (pl["k"], pl["stride"], pl["pad"], pl["ifm_h"], pl["ifm_w"]) == (4, 4, 0, 4, 4)  # global 4x4
    # pool_cycles by hand (sim/rtl/avgpool.v header): global K = H = W = 4, CF = ceil(C/P) beats per
    # pixel, every slot up to the last pixel: 16·CF, plus D_AVG = 4
    assert pl["model_cycles"] == 16 * -(-pl["C"] // pl["P"]) + 4
    assert all(l["sparse"] is None and "NB_MAX" not in l["parameters"] for l in cfg["layers"])


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


# ---------------------------------------------------------------------------
# Block-sparse layers (mvau_sparse.v) and attached pools (pool.v, avgpool.v)
# ---------------------------------------------------------------------------

def _nonzero_int4(rng, shape):
    v = rng.integers(-8, 8, shape)
    v[v == 0] = 1  # a kept block is never all-zero by chance
    return v


def _masked(m, keep, pe=2, simd=4):
    """Zero the ``pe`` x ``simd`` blocks of ``m`` ([OC, K]) where ``keep`` is False."""
    return m * np.repeat(np.repeat(keep, pe, 0), simd, 1)[:m.shape[0], :m.shape[1]]


#: kept 2x4 blocks of the pruned CNN's [OC, K] weight views (row groups x column groups)
KEEP = {"conv2d_1": np.array([[1, 0], [0, 1], [1, 1], [0, 0]], bool),
        "matmul_0": np.array([[1, 1], [0, 0], [0, 1]], bool)}


def _pruned_cnn(seed: int = 7):
    """A hand-written pruned CNN on 1x3x6x6 (every MVAU pruned in 2x4 blocks):
    quantize (uint4) -> conv2d_0 3x3 pad 1, 3 -> 8 (bias) -> requant_0 uint4 (4 bits: threshold
    mode) -> maxpool2d_0 2x2/2 -> conv2d_1 1x1, 8 -> 8 -> requant_1 int8 (requant mode) ->
    avgpool2d_0 global 3x3 -> flatten -> matmul_0 8 -> 6 (bias, raw accumulator) -> dequantize.
    Returns (ir, {layer: kept-block mask})."""
    from codesign.accel.ir import IR, Boundary, CodeType, Constant, Op, Scale, Tensor, validate

    rng = np.random.default_rng(seed)
    I4, U4, I8 = ref.IntType(4, True), ref.IntType(4, False), ref.IntType(8, True)
    ct = lambda b, s: CodeType(b, s, False)  # noqa: E731
    s_x, s_w, s_a, s_b = 2.0**-4, 2.0**-3, 2.0**-2, 2.0**-3
    k0 = rng.random((4, 7)) < 0.5  # conv2d_0's (8, 27) view: 4 row groups x 7 column groups
    k0[2, :] = False  # output channels 4, 5 pruned: one empty row group
    k0[0, 0] = k0[1, 3] = True
    keep = {"conv2d_0": k0, **KEEP}
    w0 = _masked(_nonzero_int4(rng, (8, 27)), k0).reshape(8, 3, 3, 3)
    w1 = _masked(_nonzero_int4(rng, (8, 8)), keep["conv2d_1"]).reshape(8, 8, 1, 1)
    w2 = _masked(_nonzero_int4(rng, (6, 8)), keep["matmul_0"]).T  # matmul weights are (K, N)
    b0, b1, b2 = rng.integers(-40, 40, 8), rng.integers(-60, 60, 8), rng.integers(-300, 300, 6)
    a0 = ref.acc_bits(27, U4, I4, int(b0.min()), int(b0.max()))
    a1 = ref.acc_bits(8, U4, I4, int(b1.min()), int(b1.max()))
    a2 = ref.acc_bits(8, I8, I4, int(b2.min()), int(b2.max()))
    (M0, sh0), (M1, sh1), (Mp, shp) = (ref.dyadic(r) for r in (s_x * s_w / s_a, s_a * s_w / s_b, 1 / 9))
    code = lambda shape, b, s, sc: Tensor(shape, "code", ct(b, s), scale=Scale.scalar(sc))  # noqa: E731
    acc = lambda shape, bits, sc: Tensor(shape, "acc", acc_bits=bits, scale=Scale.scalar(sc))  # noqa: E731
    t = {"in_x": Tensor((1, 3, 6, 6), "float"), "quantize_0_out": code((1, 3, 6, 6), 4, False, s_x),
         "conv2d_0_out": acc((1, 8, 6, 6), a0, s_x * s_w), "requant_0_out": code((1, 8, 6, 6), 4, False, s_a),
         "maxpool2d_0_out": code((1, 8, 3, 3), 4, False, s_a), "conv2d_1_out": acc((1, 8, 3, 3), a1, s_a * s_w),
         "requant_1_out": code((1, 8, 3, 3), 8, True, s_b), "avgpool2d_0_out": code((1, 8, 1, 1), 8, True, s_b),
         "flatten_0_out": code((1, 8), 8, True, s_b), "matmul_0_out": acc((1, 6), a2, s_b * s_w),
         "out_y": Tensor((1, 6), "float")}
    c = {"conv2d_0_w": Constant(ct(4, True), w0), "conv2d_0_bias": Constant(ct(32, True), b0),
         "requant_0_m": Constant(ct(24, False), np.array(int(M0))),
         "requant_0_sh": Constant(ct(8, False), np.array(int(sh0))),
         "conv2d_1_w": Constant(ct(4, True), w1), "conv2d_1_bias": Constant(ct(32, True), b1),
         "requant_1_m": Constant(ct(24, False), np.array(int(M1))),
         "requant_1_sh": Constant(ct(8, False), np.array(int(sh1))),
         "matmul_0_w": Constant(ct(4, True), w2), "matmul_0_bias": Constant(ct(32, True), b2)}
    conv = dict(dilation=[1, 1], groups=1, x_type=ct(4, False).to_json(), w_type=ct(4, True).to_json())
    ops = [
        Op("quantize_0", "quantize", ["in_x"], ["quantize_0_out"],
           {"scale": s_x, "bits": 4, "signed": False, "narrow": False, "rounding": "ROUND"}, "host"),
        Op("conv2d_0", "conv2d", ["quantize_0_out", "conv2d_0_w", "conv2d_0_bias"], ["conv2d_0_out"],
           {**conv, "stride": [1, 1], "pad": [1, 1, 1, 1], "acc_bits": a0}),
        Op("requant_0", "requant", ["conv2d_0_out", "requant_0_m", "requant_0_sh"], ["requant_0_out"],
           {"out_type": ct(4, False).to_json(), "acc_bits_max": a0, "m": 16}),
        Op("maxpool2d_0", "maxpool2d", ["requant_0_out"], ["maxpool2d_0_out"],
           {"kernel": [2, 2], "stride": [2, 2], "pad": [0, 0], "in_type": ct(4, False).to_json()}),
        Op("conv2d_1", "conv2d", ["maxpool2d_0_out", "conv2d_1_w", "conv2d_1_bias"], ["conv2d_1_out"],
           {**conv, "stride": [1, 1], "pad": [0, 0, 0, 0], "acc_bits": a1}),
        Op("requant_1", "requant", ["conv2d_1_out", "requant_1_m", "requant_1_sh"], ["requant_1_out"],
           {"out_type": ct(8, True).to_json(), "acc_bits_max": a1, "m": 16}),
        Op("avgpool2d_0", "avgpool2d", ["requant_1_out"], ["avgpool2d_0_out"],
           {"kernel": [3, 3], "stride": [3, 3], "pad": [0, 0], "M": int(Mp), "sh": int(shp),
            "in_type": ct(8, True).to_json(), "out_type": ct(8, True).to_json()}),
        Op("flatten_0", "flatten", ["avgpool2d_0_out"], ["flatten_0_out"], {"axis": 1}),
        Op("matmul_0", "matmul", ["flatten_0_out", "matmul_0_w", "matmul_0_bias"], ["matmul_0_out"],
           {"a_type": ct(8, True).to_json(), "w_type": ct(4, True).to_json(), "acc_bits": a2}),
        Op("dequantize_0", "dequantize", ["matmul_0_out"], ["out_y"], {"scale": s_b * s_w}, "host"),
    ]
    return validate(IR("pruned_cnn", [Boundary("in_x", "x")], [Boundary("out_y", "y")], t, c, ops)), keep


def _write_pruned_build(d, ir, cases: int = 3) -> dict:
    """A build folder for ``ir`` (``codesign build --sparse 2,4`` marks it the same way): ir/,
    golden/ (``cases`` random images and the reference outputs), rtl/ from its dataflow estimate
    on the zcu111; returns the report's ``dataflow`` dict."""
    from codesign.accel import report as rp
    from codesign.accel.boards import get_board
    from codesign.accel.passes import mark_sparse
    from codesign.sim.run_ir import run_reference

    ir = mark_sparse(ir, 2, 4)
    d.mkdir()
    irm.save(ir, d / "ir")
    x = np.random.default_rng(1).uniform(0, 1, (cases, 3, 6, 6)).astype(np.float32)
    (d / "golden").mkdir()
    np.save(d / "golden" / "x.npy", x)
    np.save(d / "golden" / "y.npy", run_reference(ir, {"in_x": x})["y"])
    (d / "golden" / "golden.json").write_text(json.dumps({"cases": cases, "inputs": {"in_x": {"file": "x.npy"}},
                                                          "outputs": {"out_y": {"file": "y.npy"}}}))
    df = rp.dataflow_estimates(ir, get_board("zcu111"), 200.0)
    vf.write_dataflow_rtl(d / "rtl", df, ir)
    return df["dataflow"]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    ir, keep = _pruned_cnn()
    d = tmp_path_factory.mktemp("sparse") / "b"
    _write_pruned_build(d, ir)
    return d, keep


def _hand_sparse(keep) -> dict:
    """{pe, simd, nb, ne} of a kept-block mask: every kept block holds non-zero weights."""
    return {"pe": 2, "simd": 4, "nb": int(keep.sum()), "ne": int((~keep.any(axis=1)).sum())}


#: the pruned CNN's layers: vectors V, column groups SF = ceil(MW / 4)
PRUNED_V_SF = {"conv2d_0": (36, 7), "conv2d_1": (9, 2), "matmul_0": (1, 2)}


def _hand_sparse_cycles(name, keep) -> int:
    """docs/dataflow.md §4: V·max(SF, NB + NE) + min(SF, NB + NE) + D_MVAU."""
    V, SF = PRUNED_V_SF[name]
    h = _hand_sparse(keep)
    slots = h["nb"] + h["ne"]
    return V * max(SF, slots) + min(SF, slots) + D_MVAU


def test_sparse_and_pool_dataflow_json(pruned):
    """dataflow.json of the pruned CNN: each layer's sparse blocks == the masks' counts, folded
    as its blocks, NB_MAX on every mvau_sparse.v instance (conv2d_1 in requant mode too);
    the attached pools with their geometry and pool_cycles by hand; mvau_sparse.v, pool.v and
    avgpool.v copied unchanged."""
    from codesign.sim import rtl

    d, keep = pruned
    cfg = json.loads((d / "rtl" / "dataflow.json").read_text())
    by = {l["name"]: l for l in cfg["layers"]}
    assert list(by) == ["conv2d_0", "conv2d_1", "matmul_0"]
    for name, e in by.items():
        assert e["sparse"] == _hand_sparse(keep[name]) and (e["PE"], e["SIMD"]) == (2, 4), name
    assert _hand_sparse(keep["conv2d_0"])["ne"] == 1 and _hand_sparse(keep["matmul_0"]) == \
        {"pe": 2, "simd": 4, "nb": 3, "ne": 1}
    assert by["conv2d_1"]["out_stage"] == "requant" and by["conv2d_1"]["parameters"]["RQ"] == 1
    assert by["conv2d_1"]["parameters"]["NB_MAX"] == max(1, _hand_sparse(keep["conv2d_1"])["nb"])
    assert by["conv2d_0"]["parameters"]["NB_MAX"] == int(keep["conv2d_0"].sum())
    assert by["matmul_0"]["parameters"]["NB_MAX"] == 3 and by["conv2d_0"]["out_stage"] == "threshold"
    assert cfg["sources"] == ["mvau.v", "requant.v", "mvau_sparse.v", "pool.v", "avgpool.v"]
    for s in cfg["sources"]:
        assert (d / "rtl" / s).read_bytes() == (rtl.RTL_DIR / s).read_bytes()
    mp, ap = by["conv2d_0"]["pool"], by["conv2d_1"]["pool"]
    assert by["matmul_0"]["pool"] is None
    assert (mp["op"], mp["mode"], mp["unit"], mp["k"], mp["stride"], mp["pad"], mp["C"], mp["P"]) == \
        ("maxpool2d_0", "max", "pool.v", 2, 2, 0, 8, 2)
    assert (ap["op"], ap["mode"], ap["unit"], ap["k"], ap["stride"], ap["ifm_h"], ap["bits"], ap["out_bits"]) == \
        ("avgpool2d_0", "avg", "avgpool.v", 3, 3, 3, 8, 8)
    # pool_cycles by hand: CF = 8/2 = 4 beats per pixel; max 2x2/2 on 6x6: the last window closes
    # at pixel (5, 5), slot (5·6 + 5)·4 + 3 = 143, so 144 slots + D_POOL 2; global 3x3: 9·4 + D_AVG 4
    assert (mp["model_cycles"], ap["model_cycles"]) == (146, 40)


def test_sparse_record_disagrees_with_corrupted_ir(pruned, tmp_path):
    """DIR/ir with a weight put into a pruned block of matmul_0 (row group 1: 4 stored blocks, no
    empty row group) no longer matches dataflow.json's sparse record: the row fails, naming both."""
    src, _ = pruned
    d = tmp_path / "b"
    shutil.copytree(src, d)
    ir = irm.load(d / "ir")
    c = ir.constants["matmul_0_w"]
    w = np.array(c.values)
    assert np.all(w[:, 2:4] == 0)  # (K, N): output channels 2, 3 = row group 1, pruned
    w[5, 2] = 3
    ir.constants["matmul_0_w"] = irm.Constant(c.type, w)
    shutil.rmtree(d / "ir")
    irm.save(ir, d / "ir")
    r = _rows(vf.verify(d, rtl=True, rtl_layers=["matmul_0"]))["matmul_0"]
    assert r.status == "FAIL" and ("disagrees with DIR/ir: sparse {'nb': 3, 'ne': 1, 'pe': 2, 'simd': 4} "
                                   "(IR: {'pe': 2, 'simd': 4, 'nb': 4, 'ne': 0})") in r.detail, r.detail


@pytest.mark.rtl
def test_sparse_layers_and_pools_on_the_rtl(pruned):
    """Every row of the pruned CNN: conv2d_0 (uint4 requant as 15 thresholds) and matmul_0 (raw
    accumulator) pass on mvau_sparse.v with cycles == V·max(SF, NB+NE) + min(SF, NB+NE) + D_MVAU
    from the masks; conv2d_1 runs mvau_sparse.v's requant mode (depth 7); the max pool after conv2d_0
    and the global average pool after conv2d_1 pass with the hand-derived pool cycles."""
    d, keep = pruned
    rep = vf.verify(d, rtl=True, sim="verilator")
    assert rep.ok, rep.table()
    rows = _rows(rep)
    assert list(rows) == ["conv2d_0", "maxpool2d_0", "conv2d_1", "avgpool2d_0", "matmul_0"]
    for name in ("conv2d_0", "matmul_0"):
        r = rows[name]
        assert r.status == "pass" and r.what.endswith("; mvau_sparse.v"), (name, r)
        assert int(re.search(r"(\d+) cycles per case", r.detail).group(1)) == _hand_sparse_cycles(name, keep[name])
    assert "516 cycles per case" in rows["conv2d_0"].detail  # 36·max(7, 13 + 1) + 7 + 5 (seed 7's mask)
    assert "11 cycles per case" in rows["matmul_0"].detail  # 1·max(2, 3 + 1) + 2 + 5
    assert "requant_0: requant as 15 thresholds/channel" in rows["conv2d_0"].detail
    r = rows["conv2d_1"]  # requant mode on mvau_sparse.v: the same slots, D_MVAU_RQ = 7 instead of D_MVAU
    assert r.status == "pass" and r.what.endswith("; mvau_sparse.v"), r
    assert int(re.search(r"(\d+) cycles per case", r.detail).group(1)) == \
        _hand_sparse_cycles("conv2d_1", keep["conv2d_1"]) - D_MVAU + 7
    assert rows["maxpool2d_0"].status == "pass" and "146 cycles per case" in rows["maxpool2d_0"].detail
    assert rows["avgpool2d_0"].status == "pass" and "40 cycles per case" in rows["avgpool2d_0"].detail
    assert "(pool.v" in rows["maxpool2d_0"].detail and "(avgpool.v" in rows["avgpool2d_0"].detail


@pytest.mark.rtl
def test_corrupted_sparse_weight_fails(pruned, monkeypatch):
    """The check can fail: one stored weight of matmul_0 changed in what mvau_sparse.v gets (on a
    lane whose activation is non-zero in case 0) makes its raw accumulator differ from the IR's:
    FAIL naming case 0, vector 0 and that output channel."""
    real = vf._layer_problem
    hit = {}

    def corrupt(ir, trace, e, n, mapped=None):
        p = real(ir, trace, e, n, mapped)
        if e["name"] == "matmul_0":
            lanes = np.flatnonzero(p.xs[0][0])
            r, c = next((int(r), int(c)) for r, c in np.argwhere(p.w != 0) if c in lanes)
            p.w[r, c] = p.w[r, c] + 1 if p.w[r, c] < 7 else 6  # still a non-zero int4 weight
            hit["channel"] = r
        return p

    monkeypatch.setattr(vf, "_layer_problem", corrupt)
    r = _rows(vf.verify(pruned[0], rtl=True, rtl_cases=1, rtl_layers=["matmul_0"]))["matmul_0"]
    ch = hit["channel"]
    assert r.status == "FAIL" and r.detail.startswith(
        f"first divergence: matmul_0 (raw accumulator (+ bias outside the MVAU)), case 0, vector 0, channel {ch} "
        f"(fold {ch // 2}, PE {ch % 2}): rtl "), r.detail


@pytest.mark.rtl
def test_tampered_pool_reference_names_channel_and_pixel(pruned, monkeypatch):
    """One code of maxpool2d_0's output (1, 8, 3, 3) changed in the reference trace at
    (c, h, w) = (5, 1, 2): the pool row fails at case 0, channel 5 (beat 5 // 2 = 2, lane 1),
    output pixel (1, 2); conv2d_0's row still passes."""
    from codesign.sim import run_ir

    real = run_ir.run_reference

    def tampered(ir, inputs, trace=False):
        res = real(ir, inputs, trace=trace)
        if trace:
            y = res[1]["maxpool2d_0_out"]
            y[0, 5, 1, 2] = (y[0, 5, 1, 2] + 1) % 16
        return res

    monkeypatch.setattr(run_ir, "run_reference", tampered)
    rows = _rows(vf.verify(pruned[0], rtl=True, rtl_cases=1, rtl_layers=["conv2d_0"]))
    assert rows["conv2d_0"].status == "pass", rows["conv2d_0"]
    r = rows["maxpool2d_0"]
    assert r.status == "FAIL" and re.match(r"first divergence: maxpool2d_0, case 0, channel 5 \(beat 2, lane 1\), "
                                           r"output pixel \(1, 2\): rtl \d+ != reference \d+$", r.detail), r.detail


@pytest.mark.rtl
def test_mpcnn_global_avgpool_on_avgpool_v(builds):
    """mpcnn's global 4x4 average pool behind conv2d_4 runs on avgpool.v with conv2d_4's PE lanes:
    codes == the IR's avgpool2d_0 output, cycles == 16·ceil(C/PE) + D_AVG (by hand)."""
    d = builds["mpcnn"]
    rep = vf.verify(d, rtl=True, rtl_layers=["conv2d_4"])
    assert rep.ok, rep.table()
    rows = _rows(rep)
    assert list(rows) == ["conv2d_4", "avgpool2d_0"]
    lay = next(l for l in json.loads((d / "report.json").read_text())["dataflow"]["layers"] if l["name"] == "conv2d_4")
    cyc = 16 * -(-lay["MH"] // lay["PE"]) + 4
    assert rows["avgpool2d_0"].status == "pass" and f"{cyc} cycles per case" in rows["avgpool2d_0"].detail, rows
    assert "cases 0..1 of 8" in rows["avgpool2d_0"].what
