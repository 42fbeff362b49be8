"""`codesign build` emits every matmul / conv2d kernel with the dataflow search's folding.

* the zoo mpcnn (trained 5 epochs, csim): the C++ template arguments of every Conv2d / Mvau
  call (parsed from hls/codesign_top.cpp) are the search's (PE, SIMD) of report.json, the
  report's ``emitted_folding`` says so, csim passes, and the MVAU trips the C-simulation
  counts (CODESIGN_TRIP) change against the unfolded project by exactly
  ``sum cases * pixels * (ceil(OC/PE) * ceil(K/SIMD) - OC * K)``, with OC, K, pixels read
  off the IR (an independent count: the kernels' loops against the formula);
* two builds give byte-identical hls/;
* a folding the kernel does not accept (Mvau: PE | N, SIMD | K; Conv2d: PE <= OC/groups, e.g.
  the search's PE of a depthwise conv) is emitted at the nearest accepted value, with a note
  in the project's README and the report, and csim still passes;
* ``--target-fps``: a reachable rate gets a folding whose II meets it (fewest LUTs), an
  unreachable one is one error line, exit 2, no output folder;
* ``folding=None`` keeps the emitted project as it was (PE = SIMD = 1 everywhere).
"""
from __future__ import annotations

import json
import re
import math
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from codesign.accel import cli, flow
from codesign.accel import folding as F
from codesign.accel import ir as irm
from codesign.accel.boards import get_board
from codesign.hls import csim
from codesign.hls.emit import emit_project, resolve_folding, run_project_csim

pytest.importorskip("sklearn")

BOARD = "zcu111"


# ---------------------------------------------------------------------------------------
# helpers


def _targs(text: str) -> list[str]:
    """Top-level template arguments of ``text`` starting right after a '<'."""
    args, depth, cur = [], 0, ""
    for ch in text:
        if ch == "<":
            depth += 1
        elif ch == ">":
            if depth == 0:
                args.append(cur.strip())
                return args
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
            continue
        cur += ch
    raise AssertionError(f"unbalanced template arguments: {text[:80]}")


def _emitted_calls(cpp: str) -> dict[str, tuple[str, int, int]]:
    """{IR op name: (kernel, PE, SIMD)} of the dense Conv2d / Mvau ``::run`` calls, from the
    '// <op> (<kind>)' comment above each op's code (conv.h: PE, SIMD are the 18th and 19th
    template arguments of Conv2d; matmul.h: the 5th and 6th of Mvau)."""
    out: dict[str, tuple[str, int, int]] = {}
    op = None
    for line in cpp.splitlines():
        s = line.strip()
        if s.startswith("// ") and s.endswith(")") and " (" in s:
            op = s[3:].split(" (")[0]
            continue
        if s.startswith("static_assert"):
            continue
        for kernel, ipe in (("Conv2d", 17), ("Mvau", 4)):
            key = f"codesign::{kernel}<"
            skey = f"typedef codesign::Stream{kernel}<"  # the stream style's unit (same template arguments)
            if s.startswith(key) and "::run" in s:
                a, name = _targs(s[len(key):]), op
            elif s.startswith(skey):
                a, name = _targs(s[len(skey):]), s.rsplit(" ", 1)[1].rstrip(";")[len("u_"):]
            else:
                continue
            assert name not in out, f"two kernel calls for {name}"
            out[name] = (kernel, int(a[ipe]), int(a[ipe + 1]))
    return out


def _mvau_shapes(ir) -> dict[str, tuple[int, int, int]]:
    """{op: (OC, K, pixels)} of the IR's conv2d / constant-weight matmul ops, from the IR's
    tensor shapes (per image)."""
    out = {}
    for op in ir.ops:
        if op.op == "conv2d":
            w = ir.constants[op.inputs[1]].values
            y = ir.tensors[op.outputs[0]].shape
            out[op.name] = (int(w.shape[0]), int(np.prod(w.shape[1:])), int(y[2] * y[3]))
        elif op.op == "matmul" and op.inputs[1] in ir.constants:
            K, N = ir.constants[op.inputs[1]].values.shape
            rows = int(np.prod(ir.tensors[op.inputs[0]].shape[1:-1]))
            out[op.name] = (int(N), int(K), max(rows, 1))
    return out


def _trips(project: Path, work: Path) -> tuple[int, int]:
    """(cases, CODESIGN_TRIP count over all of them) of the project's C++: its testbench,
    compiled with one more line that prints codesign::csim_trips() at the end."""
    tb = (project / "tb.cpp").read_text()
    marker = '    printf("RESULT cases='
    assert tb.count(marker) == 1
    tb = '#include "codesign/types.h"\n' + tb.replace(
        marker, '    printf("TRIPS %llu\\n", (unsigned long long)codesign::csim_trips());\n' + marker)
    src = work / "tb_trips.cpp"
    src.write_text(tb)
    exe = work / "tb_trips"
    top = next(p for p in sorted(project.glob("*.cpp")) if p.name != "tb.cpp")
    cmd = [*csim.compiler(), csim.CXX_STD, *csim.OPT_FLAGS, "-isystem", str(csim.ap_types_dir()),
           "-I", str(project / "include"), "-I", str(project), str(src), str(top), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    r = subprocess.run([str(exe)], cwd=project, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stdout[-2000:]
    trips = int(next(l for l in r.stdout.splitlines() if l.startswith("TRIPS ")).split()[1])
    cases = int(next(l for l in r.stdout.splitlines() if l.startswith("RESULT ")).split("cases=")[1].split()[0])
    return cases, trips


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _one_error(err: str) -> str:
    lines = [l for l in err.strip().splitlines() if l.strip()]
    assert len(lines) == 1, err
    return lines[0]


# ---------------------------------------------------------------------------------------
# the zoo mpcnn


@pytest.fixture(scope="module")
def mpcnn(tmp_path_factory) -> tuple[Path, Path]:
    """Two builds of the zoo mpcnn (the first with csim)."""
    d = tmp_path_factory.mktemp("fold")
    a = flow.build("mpcnn", BOARD, d / "a").out
    b = flow.build("mpcnn", BOARD, d / "b", csim=False).out
    return a, b


def test_mpcnn_emits_the_search_folding(mpcnn):
    out = mpcnn[0]
    rep = json.loads((out / "report.json").read_text())
    assert rep["csim"]["passed"] is True and rep["csim"]["cases"] == flow.CNN_CASES
    df = rep["dataflow"]
    search = {f["name"]: (f["PE"], f["SIMD"]) for f in df["folding"]}
    ir = irm.load(out / "ir")
    assert sorted(search) == sorted(o.name for o in ir.ops if o.op in ("conv2d", "matmul"))
    assert any(pe * simd > 1 for pe, simd in search.values())  # else the test would prove nothing
    calls = _emitted_calls((out / "hls" / "codesign_top.cpp").read_text())
    assert {k: (pe, simd) for k, (_, pe, simd) in calls.items()} == search
    assert {k: kern for k, (kern, _, _) in calls.items()} == \
        {o.name: {"conv2d": "Conv2d", "matmul": "Mvau"}[o.op] for o in ir.ops if o.name in search}
    # the report: what was emitted, per layer, and that it is the search's
    assert df["emitted_equals_search"] is True
    assert [e["name"] for e in df["emitted_folding"]] == [f["name"] for f in df["folding"]]
    for e in df["emitted_folding"]:
        assert (e["PE"], e["SIMD"]) == calls[e["name"]][1:] == search[e["name"]]
        assert e["equal"] is True and e["note"] is None
    md = (out / "report.md").read_text()
    assert "HLS folding: every layer's HLS kernel is emitted with the search's folding" in md
    readme = (out / "hls" / "README.md").read_text()
    assert "## Folding" in readme and readme.count("| as requested |") == len(search)
    # the same search as a fresh plan of the IR (deterministic)
    p = F.plan(ir, get_board(BOARD), rep["clock_mhz"])
    assert p.folding() == search


def test_mpcnn_csim_trips_follow_the_folding(mpcnn, tmp_path):
    """The kernels' counted MVAU iterations against the formula, with the emitted folding."""
    out = mpcnn[0]
    ir = irm.load(out / "ir")
    calls = _emitted_calls((out / "hls" / "codesign_top.cpp").read_text())
    gin = np.load(out / "golden" / f"{ir.inputs[0].name}.npy")
    flat = tmp_path / "flat"
    emit_project(ir, flat, get_board(BOARD), 214.0, {ir.inputs[0].name: gin})
    assert all(pe == simd == 1 for _, pe, simd in _emitted_calls((flat / "codesign_top.cpp").read_text()).values())
    (tmp_path / "w1").mkdir()
    (tmp_path / "w2").mkdir()
    cases, folded = _trips(out / "hls", tmp_path / "w1")
    cases2, unfolded = _trips(flat, tmp_path / "w2")
    assert cases == cases2 == flow.CNN_CASES
    shapes = _mvau_shapes(ir)
    assert sorted(shapes) == sorted(calls)
    # every other kernel is the same code in both projects: only the MVAU iterations differ
    delta = sum(pix * (math.ceil(oc / calls[n][1]) * math.ceil(k / calls[n][2]) - oc * k)
                for n, (oc, k, pix) in shapes.items())
    assert folded - unfolded == cases * delta
    assert folded < unfolded


def test_mpcnn_conv_layer_trips_per_layer(mpcnn):
    """One conv layer through the csim face of conv.h at its emitted folding: its trips are
    pixels * ceil(OC/PE) * ceil(K/SIMD) and its codes the reference's."""
    from codesign.hls.csim_nonlinear import conv2d_ex
    from codesign.sim import reference as ref
    from codesign.sim.reference import IntType

    out = mpcnn[0]
    ir = irm.load(out / "ir")
    calls = _emitted_calls((out / "hls" / "codesign_top.cpp").read_text())
    name = max((n for n in calls if calls[n][0] == "Conv2d"), key=lambda n: calls[n][1] * calls[n][2])
    op = next(o for o in ir.ops if o.name == name)
    w = ir.constants[op.inputs[1]].values.astype(np.int64)
    xt = irm.CodeType.from_json(op.attrs["x_type"])
    wt = irm.CodeType.from_json(op.attrs["w_type"])
    IC, H, W = ir.tensors[op.inputs[0]].shape[1:]
    rng = np.random.default_rng(0)
    x = rng.integers(xt.lo, xt.hi + 1, size=(1, IC, H, W))
    kw = dict(stride=op.attrs["stride"][0], pad=op.attrs["pad"][0], x_type=IntType(xt.bits, xt.signed),
              w_type=IntType(wt.bits, wt.signed))
    y, info = conv2d_ex(x, w, pe=calls[name][1], simd=calls[name][2], **kw)
    assert np.array_equal(y, ref.conv2d(x, w, **kw))
    oc, k, pix = _mvau_shapes(ir)[name]
    assert info["trips"] == pix * math.ceil(oc / calls[name][1]) * math.ceil(k / calls[name][2])


def test_mpcnn_builds_are_deterministic(mpcnn):
    a, b = mpcnn
    ta, tb = _tree(a / "hls"), _tree(b / "hls")
    assert ta == tb
    ra, rb = (json.loads((d / "report.json").read_text())["dataflow"] for d in mpcnn)
    assert ra["emitted_folding"] == rb["emitted_folding"] and ra["folding"] == rb["folding"]


def test_unaccepted_folding_is_adjusted_and_noted(mpcnn, tmp_path):
    """Mvau takes PE | N and SIMD | K: the largest divisor below the request is emitted; Conv2d
    takes PE <= OC/groups: clamped. Each with a note, and csim still passes."""
    out = mpcnn[0]
    ir = irm.load(out / "ir")
    mm = next(o for o in ir.ops if o.op == "matmul")
    cv = next(o for o in ir.ops if o.op == "conv2d")
    K, N = ir.constants[mm.inputs[1]].values.shape
    OC = ir.constants[cv.inputs[1]].values.shape[0]
    assert (K, N) == (32, 10) and OC == 16  # the mpcnn tiny's classifier and first conv
    req = {mm.name: (4, 5), cv.name: (OC + 3, 2)}
    got = {f.name: f for f in resolve_folding(ir, req)}
    assert (got[mm.name].PE, got[mm.name].SIMD) == (2, 4)  # divisors of 10 and 32 not above 4 and 5
    assert "N % PE == 0" in got[mm.name].note and "K % SIMD == 0" in got[mm.name].note
    assert (got[cv.name].PE, got[cv.name].SIMD) == (OC, 2) and "PE <= OC/groups" in got[cv.name].note
    gin = np.load(out / "golden" / f"{ir.inputs[0].name}.npy")
    proj = emit_project(ir, tmp_path / "p", get_board(BOARD), 214.0, {ir.inputs[0].name: gin}, folding=req)
    calls = _emitted_calls((proj / "codesign_top.cpp").read_text())
    assert calls[mm.name] == ("Mvau", 2, 4) and calls[cv.name] == ("Conv2d", OC, 2)
    assert all(calls[n][1:] == (1, 1) for n in calls if n not in req)
    readme = (proj / "README.md").read_text()
    assert got[mm.name].note in readme and got[cv.name].note in readme
    assert run_project_csim(proj, jobs=1).passed
    # the report says which layers differ from the search, and why
    from codesign.accel import report as rp

    doc = {"folding": [{"name": n, "PE": pe, "SIMD": s} for n, (pe, s) in req.items()]}
    summ = rp.emitted_summary(doc, {"folding": [f.as_dict() for f in got.values()], "note": None})
    assert summ["emitted_equals_search"] is False
    assert mm.name in summ["emitted_note"] and cv.name in summ["emitted_note"]
    with pytest.raises(ValueError, match="not in IR model"):
        resolve_folding(ir, {"nope": (1, 1)})
    other = next(o for o in ir.ops if o.op not in ("conv2d", "matmul"))
    with pytest.raises(ValueError, match="applies to the accelerator's matmul and conv2d"):
        resolve_folding(ir, {other.name: (1, 1)})
    with pytest.raises(ValueError, match="integer >= 1"):
        resolve_folding(ir, {mm.name: (0, 1)})
    # a block-sparse op keeps its pruning block shape, and says so
    ir2 = irm.load(out / "ir")
    next(o for o in ir2.ops if o.name == mm.name).attrs["sparse"] = {"pe": 2, "simd": 8}
    (f,) = resolve_folding(ir2, {mm.name: (1, 1)})
    assert (f.kernel, f.PE, f.SIMD, f.equal) == ("SparseMvau", 2, 8, False) and "block-sparse" in f.note


def test_no_folding_keeps_the_project(mpcnn, tmp_path):
    """folding=None emits PE = SIMD = 1 everywhere and no folding section: the project as
    before this option; {} differs only in the README's (empty) folding table."""
    out = mpcnn[0]
    ir = irm.load(out / "ir")
    gin = {ir.inputs[0].name: np.load(out / "golden" / f"{ir.inputs[0].name}.npy")}
    a = emit_project(ir, tmp_path / "a", get_board(BOARD), 214.0, gin)
    b = emit_project(ir, tmp_path / "b", get_board(BOARD), 214.0, gin, folding={})
    ta, tb = _tree(a), _tree(b)
    assert "## Folding" not in ta["README.md"].decode()
    assert {k: v for k, v in ta.items() if k != "README.md"} == {k: v for k, v in tb.items() if k != "README.md"}
    # the build's project differs from the unfolded one in the kernel calls only
    fa = ta["codesign_top.cpp"].decode().splitlines()
    fb = (out / "hls" / "codesign_top.cpp").read_text().splitlines()
    assert len(fa) == len(fb)
    assert all(x == y or re.search(r"codesign::(Stream)?(Conv2d|Mvau)<|PE = \d+, SIMD = \d+|window", x)
               for x, y in zip(fa, fb))


def _depthwise_file(path: Path) -> Path:
    """QuantIdentity int8 -> QuantConv2d 4->16 3x3 pad 1 (4-bit) -> QuantReLU uint8 ->
    depthwise QuantConv2d 16->16 3x3 pad 1 (groups 16, 8-bit) -> QuantReLU uint8, on 4x8x8.
    The depthwise layer needs PE = 2 to keep up with the first (II 576: 16 channels x 64
    pixels / PE), which conv.h does not accept (PE <= OC/groups = 1)."""
    import torch
    import brevitas.nn as qnn
    from brevitas.export import export_qonnx
    from brevitas.quant import Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, Uint8ActPerTensorFixedPoint

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, return_quant_tensor=True)
            self.conv = qnn.QuantConv2d(4, 16, 3, padding=1, bias=False, weight_quant=Int8WeightPerTensorFixedPoint,
                                        weight_bit_width=4)
            self.r1 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, return_quant_tensor=True)
            self.dw = qnn.QuantConv2d(16, 16, 3, padding=1, groups=16, bias=False,
                                      weight_quant=Int8WeightPerTensorFixedPoint)
            self.r2 = qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, return_quant_tensor=True)

        def forward(self, x):
            return self.r2(self.dw(self.r1(self.conv(self.inp(x)))))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(Net().eval(), torch.zeros(1, 4, 8, 8), export_path=str(path))
    return path


def test_depthwise_pe_is_clamped_in_a_build(tmp_path, capsys):
    """A search folding conv.h does not take: emitted at the nearest accepted PE, csim passes,
    and README + report say which layer differs and why."""
    src = _depthwise_file(tmp_path / "dw.onnx")
    out = tmp_path / "b"
    assert cli.main(["build", str(src), "--board", "zcu102", "--out", str(out)]) == 0
    rep = json.loads((out / "report.json").read_text())
    assert rep["csim"]["passed"] is True
    ir = irm.load(out / "ir")
    dw = next(o for o in ir.ops if o.op == "conv2d" and o.attrs["groups"] > 1)
    df = rep["dataflow"]
    search = {f["name"]: (f["PE"], f["SIMD"]) for f in df["folding"]}
    assert search[dw.name][0] > 1  # the search's (VVAU-style) choice
    calls = _emitted_calls((out / "hls" / "codesign_top.cpp").read_text())
    assert calls[dw.name] == ("Conv2d", 1, search[dw.name][1])  # OC/groups = 1
    assert all(calls[n][1:] == search[n] for n in search if n != dw.name)
    assert df["emitted_equals_search"] is False and dw.name in df["emitted_note"]
    (e,) = [e for e in df["emitted_folding"] if e["name"] == dw.name]
    assert (e["PE"], e["SIMD"], e["equal"]) == (1, search[dw.name][1], False)
    assert "PE <= OC/groups = 16/16 = 1" in e["note"]
    assert e["note"] in (out / "hls" / "README.md").read_text() and e["note"] in (out / "report.md").read_text()


# ---------------------------------------------------------------------------------------
# --target-fps (a QONNX file of the untrained mpcnn: no training, quick)


@pytest.fixture(scope="module")
def cnn_file(tmp_path_factory) -> Path:
    from codesign.quantize.mpcnn import build_mpcnn, export_mpcnn

    path = tmp_path_factory.mktemp("cnnfile") / "cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_mpcnn(build_mpcnn(8), path)
    return path


def test_target_fps(cnn_file, tmp_path, capsys):
    fast = tmp_path / "fast"
    assert cli.main(["build", str(cnn_file), "--board", BOARD, "--out", str(fast), "--no-csim"]) == 0
    rf = json.loads((fast / "report.json").read_text())
    clock = rf["clock_mhz"]
    ii_min = rf["cycles"]["ii"]
    # a quarter of the fastest rate: II <= 4 * ii_min cycles, at fewer LUTs
    fps = clock * 1e6 / (4 * ii_min)
    slow = tmp_path / "slow"
    assert cli.main(["build", str(cnn_file), "--board", BOARD, "--out", str(slow), "--target-fps", f"{fps!r}"]) == 0
    rs = json.loads((slow / "report.json").read_text())
    assert rs["csim"]["passed"] is True
    df = rs["dataflow"]
    assert df["target_fps"] == fps and "target" in df["objective"]
    assert rs["cycles"]["ii"] <= math.floor(clock * 1e6 / fps) and rs["fps"] >= fps * (1 - 1e-6)
    assert rs["cycles"]["ii"] > ii_min
    assert rs["resources"]["lut"] <= rf["resources"]["lut"]  # the fastest folding meets the rate too
    search = {f["name"]: (f["PE"], f["SIMD"]) for f in df["folding"]}
    calls = _emitted_calls((slow / "hls" / "codesign_top.cpp").read_text())
    assert {k: v[1:] for k, v in calls.items()} == search and df["emitted_equals_search"] is True
    # II from the emitted folding, by docs/dataflow.md's layer formula (MVAU cycles; the SWU reads H*W*ceil(C/SIMD))
    ir = irm.load(slow / "ir")
    for l in df["layers"]:
        oc, k, pix = _mvau_shapes(ir)[l["name"]]
        pe, simd = calls[l["name"]][1:]
        c = pix * math.ceil(oc / pe) * math.ceil(k / simd)
        if l["window"]:
            w = l["window"]
            c = max(c, w["ifm_h"] * w["ifm_w"] * math.ceil(w["C"] / simd))
        assert c <= math.floor(clock * 1e6 / fps)
    # predict through the C-simulation: the project re-emitted with the build's folding
    x = np.load(slow / "golden" / f"{ir.inputs[0].name}.npy")[:2]
    np.save(tmp_path / "x.npy", x)
    capsys.readouterr()
    assert cli.main(["predict", str(slow), "--input", str(tmp_path / "x.npy"), "--output",
                     str(tmp_path / "y.npy"), "--engine", "csim"]) == 0


def test_target_fps_unreachable_one_line(cnn_file, tmp_path, capsys):
    out = tmp_path / "never"
    assert cli.main(["build", str(cnn_file), "--board", BOARD, "--out", str(out), "--target-fps", "1e12"]) == 2
    line = _one_error(capsys.readouterr().err)
    assert line.startswith("error: --target-fps 1e+12: ") and "fps" in line and "II" in line
    assert not out.exists() and list(tmp_path.iterdir()) == []
    for bad in ("0", "-5", "abc", "inf"):
        assert cli.main(["build", str(cnn_file), "--board", BOARD, "--out", str(out), "--target-fps", bad]) == 2
        assert _one_error(capsys.readouterr().err).startswith(f"error: --target-fps '{bad}'")
    assert cli.main(["build", "fqbert", "--board", BOARD, "--out", str(out), "--target-fps", "10"]) == 2
    assert "--target-fps applies to CNN / MLP / BNN builds" in _one_error(capsys.readouterr().err)
    assert not out.exists()
