"""``codesign verify DIR [--rtl]`` (accel/verify.py): reference, csim and the engine RTL
re-checked on a build folder; failures are exit 1 naming the first divergence."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from codesign.accel import cli, flow, verify


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("v") / "fq"
    assert cli.main(["build", "fqbert", "--board", "zcu102", "--out", str(out)]) == 0
    return out


def _copy(built, tmp_path):
    d = tmp_path / "copy"
    shutil.copytree(built, d)
    return d


def test_build_writes_configured_rtl(built):
    cfg = json.loads((built / "rtl" / "engine.json").read_text())
    rep = json.loads((built / "report.json").read_text())
    f = rep["folding"]
    assert cfg["G"] == f["N"] * (f["P_dsp"] + f["P_lut"]) and cfg["M"] == f["M"] and cfg["packing"] == f["packing"]
    assert sorted(p.name for p in (built / "rtl").glob("*.v")) == sorted(cfg["sources"])


def test_verify_passes(built, capsys):
    assert cli.main(["verify", str(built)]) == 0
    out = capsys.readouterr().out
    assert "reference  4 golden cases" in out and "pass" in out and "all checks passed" in out


@pytest.mark.rtl
def test_verify_rtl_runs_every_engine_matmul(built, capsys):
    assert cli.main(["verify", str(built), "--rtl", "--sim", "verilator"]) == 0
    out = capsys.readouterr().out
    # tiny: 2 layers x 6 linears + pooler; 2 layers x 2 heads x (QK^T, PV)
    assert "13 linear matmuls (verilator)" in out and "8 attention matmuls (verilator)" in out
    assert out.count("== cost model") == 2


def test_corrupted_golden_fails_naming_the_case(built, tmp_path, capsys):
    d = _copy(built, tmp_path)
    man = json.loads((d / "golden" / "golden.json").read_text())
    (name, spec), = man["outputs"].items()
    y = np.load(d / "golden" / spec["file"])
    y[2, 1] += 1
    np.save(d / "golden" / spec["file"], y)
    assert cli.main(["verify", str(d)]) == 1
    cap = capsys.readouterr()
    assert "reference" in cap.out and "FAIL" in cap.out
    assert cap.err.startswith("error: verify failed: reference: outputs differ")


def test_rtl_divergence_names_the_first_op(built, tmp_path, capsys, monkeypatch):
    """A stand-in simulator that gets one output code wrong: the first diverging
    layer/tile is named."""
    from codesign.sim import rtl

    def wrong(problems, **kw):
        runs = []
        for p in problems:
            a, w = np.asarray(p["a_codes"], np.int64), np.asarray(p["w_codes"], np.int64)
            codes = np.zeros((a.shape[0], w.shape[1]), np.int64)
            runs.append(rtl.MatmulRun(codes=codes, acc=codes, cycles=1, expected_cycles=1))
        return runs

    monkeypatch.setattr(rtl, "run_matmuls", wrong)
    assert cli.main(["verify", str(built), "--rtl"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: verify failed: rtl: first divergence: matmul_0, row 0") and "tile 0" in err


def test_tampered_rtl_is_refused(built, tmp_path, capsys):
    d = _copy(built, tmp_path)
    with open(d / "rtl" / "requant.v", "a") as f:
        f.write("// edited\n")
    assert cli.main(["verify", str(d), "--rtl"]) == 1
    assert "DIR/rtl differs from this codesign's RTL (requant.v)" in capsys.readouterr().err


def test_verify_bad_folder(tmp_path, capsys):
    assert cli.main(["verify", str(tmp_path)]) == 2
    assert "is not a build folder" in capsys.readouterr().err
