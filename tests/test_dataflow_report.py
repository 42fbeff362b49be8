"""Dataflow estimates in the build report of CNN / MLP / BNN models (accel/dataflow_ir.py,
accel/report.py ``dataflow_estimates``, docs/report.md).

* ``map_ir`` / ``layers_from_ir`` on real lowerings (the mpcnn of codesign.quantize.mpcnn and a
  small Brevitas CNN with BatchNorm thresholds and a depthwise conv) and on hand-built IRs
  (xnor_popcount, wide requants, non-square kernels, attention matmuls, too-wide
  accumulators): MH / MW / vectors / windows / widths / output stages against numbers
  derived by hand from the architectures, and the not-modelled ops by name;
* ``codesign build`` of the mpcnn (``csim=False``): folding for every conv2d / matmul, per-layer
  cycles re-derived here from the MVAU and SWU formulas of docs/dataflow.md (and equal to
  ``dataflow.layer_cycles``), the latency formula, resources within 85 %, power from the
  board model, report.json identical across two builds but for the timings;
* edge cases of the report: nothing fits the board, no layer at all, FQ-BERT untouched.
"""
from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from codesign.accel import dataflow as D
from codesign.accel import ir as irm
from codesign.accel import report as rp
from codesign.accel.boards import Board, get_board
from codesign.accel.dataflow_ir import layers_from_ir, map_ir

INT8 = irm.CodeType(8, True)
UINT8 = irm.CodeType(8, False)


# ---------------------------------------------------------------------------------------
# fixtures: real lowerings


@pytest.fixture(scope="module")
def mpcnn_file(tmp_path_factory) -> Path:
    from codesign.quantize.mpcnn import build_mpcnn, export_mpcnn

    path = tmp_path_factory.mktemp("mpcnn") / "mpcnn.onnx"
    export_mpcnn(build_mpcnn(8), path)
    return path


@pytest.fixture(scope="module")
def mpcnn_builds(mpcnn_file, tmp_path_factory) -> tuple[Path, Path]:
    from codesign.accel import flow

    d = tmp_path_factory.mktemp("mpcnn-builds")
    for name in ("a", "b"):
        flow.build(mpcnn_file, "zcu111", d / name, csim=False)
    return d / "a", d / "b"


def _small_cnn_file(path: Path) -> Path:
    """QuantIdentity int8 -> QuantConv2d 1->4 3x3 pad 1 (4-bit weights, no bias) -> BatchNorm ->
    QuantReLU 2-bit (thresholds) -> depthwise QuantConv2d 4->4 3x3 stride 2 pad 1 (groups 4, 8-bit
    weights) -> QuantReLU uint8 (requant), on 1x8x8."""
    import torch
    import brevitas.nn as qnn
    from brevitas.export import export_qonnx
    from brevitas.quant import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, Uint8ActPerTensorFixedPoint

    class U2(Uint8ActPerTensorFixedPoint):
        bit_width = 2

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=True)
            self.conv = qnn.QuantConv2d(1, 4, 3, padding=1, bias=False, weight_quant=Int8WeightPerTensorFixedPoint,
                                        weight_bit_width=4)
            self.bn = torch.nn.BatchNorm2d(4)
            self.r1 = qnn.QuantReLU(act_quant=U2, return_quant_tensor=True)
            self.dw = qnn.QuantConv2d(4, 4, 3, stride=2, padding=1, groups=4, bias=False,
                                      weight_quant=Int8WeightPerTensorFixedPoint)
            self.r2 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, return_quant_tensor=True)

        def forward(self, x):
            return self.r2(self.dw(self.r1(self.bn(self.conv(self.inp(x))))))

    m = Net()
    with torch.no_grad():
        m.bn.running_mean.uniform_(-1, 1)
        m.bn.running_var.uniform_(0.5, 2)
        m.bn.weight.uniform_(0.5, 1)
        m.bn.bias.uniform_(-1, 1)
    m.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(m, torch.zeros(1, 1, 8, 8), export_path=str(path))
    return path


# ---------------------------------------------------------------------------------------
# layers_from_ir on real lowerings


def test_layers_from_mpcnn_hand_derived(mpcnn_file):
    """mpcnn tiny on 1x8x8 (quantize/mpcnn.py's docstring): every 3x3 conv has pad 1, so
    8x8 -> 8x8 except `down` (stride 2: (8 + 2 - 3) // 2 + 1 = 4)."""
    from codesign.accel.lower import lower

    m = map_ir(lower(mpcnn_file))
    # name, MH = OC, MW = IC*3*3, vectors = OH*OW, window (k, C, H, W, stride, pad), AB, a_signed, out_bits
    want = [
        ("conv2d_0", 16, 1 * 9, 64, (3, 1, 8, 8, 1, 1), 8, True, 8),      # int8 input quantizer
        ("conv2d_1", 16, 16 * 9, 64, (3, 16, 8, 8, 1, 1), 8, False, 8),   # after QuantReLU: uint8
        ("conv2d_2", 16, 16 * 9, 64, (3, 16, 8, 8, 1, 1), 8, False, 8),
        ("conv2d_3", 32, 16 * 9, 16, (3, 16, 8, 8, 2, 1), 8, False, 8),   # down, stride 2
        ("conv2d_4", 32, 32 * 9, 16, (3, 32, 4, 4, 1, 1), 8, False, 8),
        ("matmul_0", 10, 32, 1, None, 8, True, 0),                        # fc: logits = accumulator
    ]
    got = [(x.layer.name, x.layer.MH, x.layer.MW, x.layer.vectors,
            None if x.layer.window is None else (x.layer.window.k, x.layer.window.C, x.layer.window.ifm_h,
                                                 x.layer.window.ifm_w, x.layer.window.stride, x.layer.window.pad),
            x.layer.AB, x.layer.a_signed, x.layer.out_bits) for x in m.layers]
    assert got == want
    assert all(x.layer.WB == 8 and x.layer.mode == "lowbit" for x in m.layers)
    assert [x.stage for x in m.layers] == ["requant_0", "requant_2", "requant_3", "requant_4", "requant_5", None]
    # 8-bit requants (>= REQUANT_MIN_BITS): mvau.v's requant mode, no thresholds; M of the
    # lowering's m = 24 dyadic multipliers, the conv's int32 bias
    assert [x.layer.NT for x in m.layers] == [0] * 6
    assert [x.layer.out_stage for x in m.layers] == ["requant"] * 5 + ["threshold"]
    # the residual branch's requant (of codes, not of an accumulator), the add, the flatten and
    # the host ops are not costed, and say so
    nm = {d["name"]: d for d in m.not_modelled}
    assert list(nm) == ["quantize_0", "requant_1", "add_0", "flatten_0", "dequantize_0"]
    # the global 4x4 average pool (4x4 map after `down`, stride 4, uint8 in, int8 out: the
    # QuantIdentity) pools conv2d_4's requant codes: an avgpool.v unit attached to conv2d_4
    assert [x.pool for x in m.layers] == [None] * 4 + ["avgpool2d_0", None]
    assert m.layers[4].layer.pool == D.Pool("avgpool2d_0", C=32, ifm_h=4, ifm_w=4, k=4, stride=4, pad=0, bits=8,
                                            mode="avg", out_bits=8, in_signed=False)
    assert nm["quantize_0"]["target"] == "host" and nm["add_0"]["target"] == "accel"
    assert "no MVAU" in nm["requant_1"]["reason"]
    assert sum("mvau.v's requant output stage (8-bit" in n for n in m.notes) == 5
    assert not any("2^8 - 1 = 255 thresholds" in n for n in m.notes)
    assert any(n.startswith("matmul_0: bias without a threshold stage") for n in m.notes)
    assert [l.name for l in layers_from_ir(lower(mpcnn_file))] == [w[0] for w in want]


def test_layers_from_brevitas_cnn_threshold_and_depthwise(tmp_path):
    """BatchNorm + 2-bit QuantReLU lowers to transpose -> threshold (3 per channel) ->
    transpose; the depthwise conv is mapped VVAU-style (MH = OC, MW = (C/groups)*9)."""
    from codesign.accel.lower import lower

    ir = lower(_small_cnn_file(tmp_path / "cnn.onnx"))
    assert [o.op for o in ir.ops] == ["quantize", "conv2d", "transpose", "threshold", "transpose", "conv2d",
                                      "requant", "dequantize"]
    m = map_ir(ir)
    c, dw = (x.layer for x in m.layers)
    assert (c.MH, c.MW, c.vectors, c.WB, c.AB, c.a_signed, c.out_bits, c.NT) == (4, 9, 64, 4, 8, True, 2, 3)
    assert (c.window.k, c.window.C, c.window.ifm_h, c.window.stride, c.window.pad) == (3, 1, 8, 1, 1)
    assert m.layers[0].stage == "threshold_0" and m.layers[0].between == ("transpose_0",)
    # depthwise 4 -> 4, groups 4, stride 2 on 8x8: 4x4 outputs, one input channel per filter
    assert (dw.MH, dw.MW, dw.vectors, dw.window, dw.WB, dw.AB, dw.a_signed) == (4, 9, 16, None, 8, 2, False)
    assert dw.out_bits == 8 and m.layers[1].stage == "requant_0"
    assert any(n.startswith("conv2d_1: grouped conv (groups = 4) mapped VVAU-style") for n in m.notes)
    assert [d["name"] for d in m.not_modelled] == ["quantize_0", "transpose_0", "transpose_1", "dequantize_0"]


# ---------------------------------------------------------------------------------------
# layers_from_ir on hand-built IRs


class _Builder:
    """A tiny IR written by hand (shapes and types consistent; not run)."""

    def __init__(self):
        self.tensors, self.constants, self.ops = {}, {}, []

    def code(self, name, shape, t=INT8):
        self.tensors[name] = irm.Tensor(shape, "code", type=t, scale=irm.Scale.scalar(1.0))
        return name

    def acc(self, name, shape, bits=24):
        self.tensors[name] = irm.Tensor(shape, "acc", acc_bits=bits, scale=irm.Scale.scalar(1.0))
        return name

    def const(self, name, values, t=INT8):
        self.constants[name] = irm.Constant(t, np.asarray(values))
        return name

    def op(self, name, kind, inputs, outputs, **attrs):
        self.ops.append(irm.Op(name, kind, list(inputs), list(outputs), attrs))

    def ir(self):
        return irm.IR("t", [], [], self.tensors, self.constants, self.ops)


def test_hand_built_edge_cases():
    b = _Builder()
    # 2x3 kernel (non-square): no window model, MW = 4*2*3, vectors = 5*4
    b.code("x", (1, 4, 6, 6))
    b.const("w0", np.ones((8, 4, 2, 3)))
    b.acc("a0", (1, 8, 5, 4))
    b.op("conv2d_0", "conv2d", ["x", "w0"], ["a0"], stride=[1, 1], pad=[0, 0, 0, 0], dilation=[1, 1], groups=1,
         x_type=INT8.to_json(), w_type=irm.CodeType(4).to_json(), acc_bits=24)
    # ... followed by a threshold with 5 thresholds per channel: out_bits 3, NT 7 (a note)
    b.const("t0", np.tile(np.arange(5), (8, 1)), irm.CodeType(25))
    b.code("y0", (1, 8, 5, 4), irm.CodeType(3, False))
    b.op("threshold_0", "threshold", ["a0", "t0"], ["y0"], out_bias=0, bipolar=False)
    # matmul of (1, 20, 40) codes (a sequence of 20 rows) with unsigned 3-bit weights (costed as 4-bit
    # signed), requant to 16 bits: more than mvau.v's thresholds -> accumulator out, requant not modelled
    b.code("s", (1, 20, 40), UINT8)
    b.const("w1", np.ones((40, 12)), irm.CodeType(3, False))
    b.acc("a1", (1, 20, 12))
    b.op("matmul_0", "matmul", ["s", "w1"], ["a1"], a_type=UINT8.to_json(),
         w_type=irm.CodeType(3, False).to_json(), acc_bits=24)
    b.code("y1", (1, 20, 12), irm.CodeType(16))
    b.op("requant_0", "requant", ["a1", "m1", "sh1"], ["y1"], out_type=irm.CodeType(16).to_json(),
         acc_bits_max=24, m=24)
    # attention-style matmul of two activations: not modelled
    b.code("k", (1, 40, 20), INT8)
    b.acc("a2", (1, 20, 20))
    b.op("matmul_1", "matmul", ["s", "k"], ["a2"], a_type=UINT8.to_json(), w_type=INT8.to_json(), acc_bits=24)
    # xnor_popcount: 70 packed bipolar inputs (9 bytes) x 30 rows -> binary MH 30, MW 70
    b.code("pa", (1, 9), irm.CodeType(8, False))
    b.const("pw", np.zeros((30, 9)), irm.CodeType(8, False))
    b.acc("a3", (1, 30), 8)
    b.op("xnor_popcount_0", "xnor_popcount", ["pa", "pw"], ["a3"], K=70)
    # bipolar x bipolar matmul -> binary; 1-bit unsigned activations x int2 -> costed as uint2
    b.code("bx", (1, 64), irm.CodeType(1))
    b.const("bw", np.ones((64, 16)), irm.CodeType(1))
    b.acc("a4", (1, 16), 8)
    b.op("matmul_2", "matmul", ["bx", "bw"], ["a4"], a_type=irm.CodeType(1).to_json(),
         w_type=irm.CodeType(1).to_json(), acc_bits=8)
    b.code("ux", (1, 64), irm.CodeType(1, False))
    b.const("uw", np.ones((64, 16)), irm.CodeType(2))
    b.acc("a5", (1, 16), 8)
    b.op("matmul_3", "matmul", ["ux", "uw"], ["a5"], a_type=irm.CodeType(1, False).to_json(),
         w_type=irm.CodeType(2).to_json(), acc_bits=8)
    # an accumulator mvau.v cannot hold: 70000 products of int8 x int8 need 32 bits (> 30)
    b.code("wide", (1, 70000), INT8)
    b.const("ww", np.zeros((70000, 1)), INT8)
    b.acc("a6", (1, 1), 32)
    b.op("matmul_4", "matmul", ["wide", "ww"], ["a6"], a_type=INT8.to_json(), w_type=INT8.to_json(), acc_bits=32)
    b.code("sm", (1, 20, 20), INT8)
    b.op("softmax_0", "softmax", ["y1", "tab"], ["sm"])
    m = map_ir(b.ir())
    L = {x.layer.name: x for x in m.layers}
    assert list(L) == ["conv2d_0", "matmul_0", "xnor_popcount_0", "matmul_2", "matmul_3"]
    c = L["conv2d_0"].layer
    assert (c.MH, c.MW, c.vectors, c.window, c.WB, c.out_bits, c.NT) == (8, 24, 20, None, 4, 3, 7)
    mm = L["matmul_0"].layer
    assert (mm.MH, mm.MW, mm.vectors, mm.WB, mm.AB, mm.a_signed, mm.out_bits) == (12, 40, 20, 4, 8, False, 0)
    assert L["matmul_0"].stage is None
    x = L["xnor_popcount_0"].layer
    assert (x.MH, x.MW, x.vectors, x.mode, x.WB, x.AB) == (30, 70, 1, "binary", 1, 1)
    assert L["matmul_2"].layer.mode == "binary" and L["matmul_2"].layer.NT == 0
    u = L["matmul_3"].layer
    assert (u.mode, u.WB, u.AB, u.a_signed) == ("lowbit", 2, 2, False)
    nm = {d["name"]: d["reason"] for d in m.not_modelled}
    assert list(nm) == ["requant_0", "matmul_1", "matmul_4", "softmax_0"]
    assert "both operands are activations" in nm["matmul_1"]
    assert "30" in nm["matmul_4"] and "\n" not in nm["matmul_4"]
    assert "no softmax unit" in nm["softmax_0"]
    assert nm["requant_0"] == "requant to 16 bits after matmul_0: more than mvau.v's 255 thresholds per channel"
    notes = "\n".join(m.notes)
    assert "conv2d_0: 2x3 kernel" in notes and "SWU is not costed" in notes
    assert "NT = 2^3 - 1 = 7" in notes
    assert "matmul_0: its requant requant_0 needs 16-bit outputs" in notes
    assert "matmul_3: 1-bit unsigned activations" in notes


# ---------------------------------------------------------------------------------------
# the report of a CNN build


def _layer_from_report(d: dict) -> D.Layer:
    w = d["window"]
    win = None if w is None else D.Window(w["k"], w["C"], w["ifm_h"], w["ifm_w"], w["stride"], w["pad"])
    rq = d.get("out_stage") == "requant"
    p = d.get("pool")  # report.json has no in_signed: it changes an avg pool's resources, not its cycles
    pool = None if p is None else D.Pool(p["op"], C=p["C"], ifm_h=p["ifm_h"], ifm_w=p["ifm_w"], k=p["k"],
                                         stride=p["stride"], pad=p["pad"], bits=p["bits"], mode=p["mode"],
                                         out_bits=p["out_bits"] if p["mode"] == "avg" else None)
    return D.Layer(d["name"], d["MH"], d["MW"], d["vectors"], d["WB"], d["AB"], d["mode"], d["a_signed"],
                   d["out_bits"], window=win, out_stage=d.get("out_stage") or "threshold", pool=pool,
                   **({"m_bits": d["m_bits"], "bias_bits": d["bias_bits"]} if rq else {}))


def test_mpcnn_report_estimates(mpcnn_builds):
    out = mpcnn_builds[0]
    rep = json.loads((out / "report.json").read_text())
    ir = irm.load(out / "ir")
    df = rep["dataflow"]
    assert rep["estimates"] == rp.DATAFLOW_LABEL == rep["resources"]["estimate"] == df["estimate"]
    assert "folding" not in rep  # the top-level key is FQ-BERT's engine folding (rtl/engine.json)
    # a folding for every conv2d / matmul op, in IR order
    assert [f["name"] for f in df["folding"]] == [o.name for o in ir.ops if o.op in ("conv2d", "matmul")]
    clock = rep["clock_mhz"]
    cyc, fills, per_vec = [], [], []
    for f, l in zip(df["folding"], df["layers"]):
        assert (f["name"], f["PE"], f["SIMD"], f["MH"], f["MW"], f["vectors"]) == \
            (l["name"], l["PE"], l["SIMD"], l["MH"], l["MW"], l["vectors"])
        pe, simd, w = l["PE"], l["SIMD"], l["window"]
        assert l["MH"] % pe == 0 and (w["C"] if w else l["MW"]) % simd == 0  # the search's candidates
        # docs/dataflow.md: an MVAU is busy NF*SF*V cycles; its SWU reads H*W*ceil(C/SIMD) beats
        nfsf = -(-l["MH"] // pe) * -(-l["MW"] // simd)
        c = nfsf * l["vectors"]
        depth = 7 if l["out_stage"] == "requant" else 5  # D_MVAU_RQ (requant mode) or D_MVAU
        if w:
            c = max(c, w["ifm_h"] * w["ifm_w"] * -(-w["C"] // simd))
            fills.append(depth + ((w["k"] - 1) * (w["ifm_w"] + 2 * w["pad"]) + w["k"]) * -(-w["C"] // simd))
        else:
            fills.append(depth)
        win_fill = fills[-1] - depth
        p = l["pool"]
        if p:  # the pool unit (P = PE lanes): its padded grid's slots, its first window + its depth
            wp, k1, cf = p["ifm_w"] + 2 * p["pad"], p["k"] - 1 - p["pad"], -(-p["C"] // pe)
            c = max(c, (p["ifm_h"] + 2 * p["pad"]) * wp * cf)
            fills[-1] += (k1 * wp + k1 + 1) * cf + (4 if p["mode"] == "avg" else 2)  # D_POOL_AVG / D_POOL
        assert l["cycles"] == c == int(D.layer_cycles(_layer_from_report(l), pe, simd))
        assert rep["cycles"]["per_layer"][l["name"]] == c
        assert l["window_fill"] == win_fill
        cyc.append(c)
        per_vec.append(nfsf)
    ii, b = max(cyc), cyc.index(max(cyc))
    assert rep["cycles"]["ii"] == ii and rep["cycles"]["bottleneck"] == df["layers"][b]["name"]
    latency = ii + sum(fills) + sum(v for i, v in enumerate(per_vec) if i != b)
    assert rep["cycles"]["latency"] == latency
    assert rep["cycles"]["latency_bound"] == sum(cyc) + sum(fills)
    assert rep["latency_ms"] > 0 and rep["latency_ms"] == pytest.approx(latency / (clock * 1e3), rel=1e-5)
    assert rep["fps"] == pytest.approx(clock * 1e6 / ii, rel=1e-5)
    # resources: the per-layer sums, within 85 % of the board, utilisation = used / available
    cap = get_board("zcu111").resources()
    for k in ("lut", "ff", "dsp", "bram18"):
        assert rep["resources"][k] == sum(l["resources"][k] for l in df["layers"])
        assert 0 <= rep["resources"][k] <= 0.85 * cap[k]
        assert df["utilisation"][k] == pytest.approx(rep["resources"][k] / cap[k], abs=1e-4)
    assert rep["resources"]["uram"] == 0 and rep["resources"]["dsp"] > 0  # 8x8 products on DSPs
    # power: the board's model (static + fitted scale x dynamic), as FQ-BERT's figures
    from codesign.accel import engine

    board = get_board("zcu111")
    res = {k: rep["resources"][k] for k in rp.RESOURCE_KEYS}
    want_w = board.power.static_w + engine.POWER_SCALE * board.power.dynamic_w(res, clock, df["ddr_gbps"])
    assert rep["power_w"] == pytest.approx(want_w, rel=1e-4) and rep["power_w"] > board.power.static_w
    assert rep["fps_per_w"] == pytest.approx(rep["fps"] / rep["power_w"], rel=1e-4)
    # image I/O: int8 1x8x8 in, 10 accumulators of 21 bits out
    assert df["io_bytes_per_image"] == {"in": 64, "out": math.ceil(10 * 21 / 8)}
    assert [d["name"] for d in df["not_modelled"]] == ["quantize_0", "requant_1", "add_0", "flatten_0",
                                                       "dequantize_0"]
    # the global average pool is costed inside conv2d_4's row (avgpool.v, 4x4 window, stride 4)
    assert [l["name"] for l in df["layers"] if l["pool"]] == ["conv2d_4"]
    assert {k: df["layers"][4]["pool"][k] for k in ("op", "mode", "k", "stride", "bits", "out_bits")} == \
        {"op": "avgpool2d_0", "mode": "avg", "k": 4, "stride": 4, "bits": 8, "out_bits": 8}
    # output stages: QuantReLU (uint8) after conv1, b1c1, down, b2c1; the residual's shared int8
    # QuantIdentity after b1c2 (requant_3); the fc's logits are its accumulator
    assert [l["mvau_stage"] for l in df["layers"]] == ["rq 8u", "rq 8u", "rq 8s", "rq 8u", "rq 8u", "acc"]
    assert df["calibration"]["summary"]["lut"]["of"] >= 1
    md = (out / "report.md").read_text()
    for s in ("Resources and performance (estimates)", "| conv2d_0", "| matmul_0 |", "Not modelled",
              "+ requant_5 + avgpool2d_0 (avg 4x4/s4) |", "| rq 8s |", "| out stage |",
              "mvau.v's requant output stage (8-bit", "MVAU calibration", "fps = clock / II"):
        assert s in md, s


def test_mpcnn_report_deterministic(mpcnn_builds):
    a, b = (json.loads((d / "report.json").read_text()) for d in mpcnn_builds)
    for doc in (a, b):
        assert set(doc["seconds"]) >= {"quantize", "lower", "report"}
        doc.pop("seconds")
    assert json.dumps(a, indent=2) == json.dumps(b, indent=2)
    ma, mb = ((d / "report.md").read_text().split("## Timings")[0] for d in mpcnn_builds)
    assert ma == mb


# ---------------------------------------------------------------------------------------
# report edge cases


def _report(ir, board, model="net", params=None):
    return rp.make_report(ir=ir, model=model, source="file", board=board, clock_mhz=214.0, config=None, seed=0,
                          csim={"passed": None, "cases": 0, "mismatches": None, "skipped": "--no-csim"},
                          hls={"emitted": False, "reason": "test"}, golden={"cases": 0, "inputs": [], "outputs": []},
                          seconds={"total": 0.0}, params=params)


def _fc_ir():
    b = _Builder()
    b.code("x", (1, 64), INT8)
    b.const("w", np.ones((64, 32)), INT8)
    b.acc("a", (1, 32))
    b.op("matmul_0", "matmul", ["x", "w"], ["a"], a_type=INT8.to_json(), w_type=INT8.to_json(), acc_bits=24)
    return b.ir()


def test_report_when_nothing_fits():
    tiny = Board(name="tiny", part="test", lut=100, ff=100, dsp=0, bram18=0, uram=0)
    doc = _report(_fc_ir(), tiny)
    assert "no folding fits" in doc["estimates"] and doc["estimates"].startswith(rp.DATAFLOW_LABEL)
    assert all(doc[k] is None for k in ("latency_ms", "fps", "power_w", "fps_per_w"))
    assert all(doc["resources"][k] is None for k in rp.RESOURCE_KEYS)
    md = rp.to_markdown(doc)
    assert "found no folding" in md and "not estimated yet" in md and "\n" not in doc["estimates"]


def test_report_without_layers_stays_pending():
    ops = [irm.Op("softmax_0", "softmax", ["x", "t"], ["y"])]
    doc = _report(SimpleNamespace(ops=ops, constants={}, tensors={}, notes=[]), get_board("zcu102"))
    assert doc["estimates"] == rp.PENDING and doc["latency_ms"] is None
    assert doc["dataflow"]["not_modelled"] == [{"name": "softmax_0", "op": "softmax", "target": "accel",
                                                "reason": "no softmax unit in the dataflow model"}]
    assert "softmax_0" in rp.to_markdown(doc)
    empty = _report(SimpleNamespace(ops=[], constants={}, tensors={}, notes=[]), get_board("zcu102"))
    assert "dataflow" not in empty and empty["estimates"] == rp.PENDING


def test_fqbert_report_has_no_dataflow_keys():
    cfg = {"hidden": 64, "layers": 2, "heads": 2, "ffn": 128, "max_seq": 16}
    doc = _report(_fc_ir(), get_board("zcu102"), model="fqbert", params={"config": cfg})
    assert "dataflow" not in doc and doc["estimates"] != rp.DATAFLOW_LABEL and "engine" in doc


def _stage_ir():
    """Five 64 -> 8 int8 matmuls, one per MVAU output stage (hand-built, not run): 3 thresholds;
    a requant to int6 and one to uint5 (constant M, shift per channel: requant mode); 31
    thresholds T_t = 2t - 33 with out_bias -16 (exactly sat_int5(rshr(acc, 1)): converted to the
    requant mode, signed); no stage (the accumulator)."""
    b = _Builder()
    b.code("x", (1, 64))
    b.const("w", np.ones((64, 8)))
    stages = {
        0: ("threshold", dict(T=np.tile(np.arange(3), (8, 1)), out_bias=0), irm.CodeType(2, False)),
        1: ("requant", dict(out=irm.CodeType(6)), irm.CodeType(6)),
        2: ("requant", dict(out=irm.CodeType(5, False)), irm.CodeType(5, False)),
        3: ("threshold", dict(T=np.tile(2 * np.arange(1, 32) - 33, (8, 1)), out_bias=-16), irm.CodeType(5)),
        4: (None, {}, None),
    }
    for i, (kind, a, yt) in stages.items():
        b.acc(f"a{i}", (1, 8))
        b.op(f"matmul_{i}", "matmul", ["x", "w"], [f"a{i}"], a_type=INT8.to_json(), w_type=INT8.to_json(),
             acc_bits=24)
        if kind == "threshold":
            b.const(f"t{i}", a["T"], irm.CodeType(25))
            b.code(f"y{i}", (1, 8), yt)
            b.op(f"threshold_{i}", "threshold", [f"a{i}", f"t{i}"], [f"y{i}"], out_bias=a["out_bias"], bipolar=False)
        elif kind == "requant":
            b.const(f"m{i}", np.full(8, 3), irm.CodeType(24, False))
            b.const(f"sh{i}", np.full(8, 4), irm.CodeType(8, False))
            b.code(f"y{i}", (1, 8), yt)
            b.op(f"requant_{i}", "requant", [f"a{i}", f"m{i}", f"sh{i}"], [f"y{i}"], out_type=a["out"].to_json(),
                 acc_bits_max=24, m=24)
    return b.ir()


def test_report_shows_the_mvau_output_stage():
    """report.json's dataflow.layers[].mvau_stage and report.md's "out stage" column: thresholds
    by count, the requant mode by bits and sign (hand-derived from the IR above), the raw
    accumulator as "acc" — never "NT = 0" for a requant-mode layer."""
    ir = _stage_ir()
    m = map_ir(ir)
    assert [x.layer.out_stage for x in m.layers] == ["threshold", "requant", "requant", "requant", "threshold"]
    want = ["thr 3", "rq 6s", "rq 5u", "rq 5s", "acc"]
    assert [rp.mvau_stage_label(x, ir) for x in m.layers] == want
    doc = _report(ir, get_board("zcu102"))
    layers = doc["dataflow"]["layers"]
    assert [l["mvau_stage"] for l in layers] == want
    md = rp.to_markdown(doc)
    assert "| out stage |" in md and "| NT |" not in md
    for l, w in zip(layers, want):
        row = next(r for r in md.splitlines() if r.startswith(f"| {l['name']}"))
        assert f" | {w} | " in row, row
    # a report written before the key: the table falls back to NT / out_stage
    old = json.loads(json.dumps(doc))
    for l in old["dataflow"]["layers"]:
        del l["mvau_stage"]
    rows = [r for r in rp.to_markdown(old).splitlines() if r.startswith("| matmul_")]
    assert [r.split(" | ")[7] for r in rows] == ["thr 3", "rq 6", "rq 5", "rq 5", "acc"]
