"""The `codesign` command line: boards table, build arguments, error handling.

The board figures below are written out from the issue (AMD/Xilinx DS891
device tables), not read from codesign.accel.boards, so a wrong edit there
fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from codesign.accel import cli
from codesign.accel.boards import BOARDS, Board, get_board

# name, part, LUT, FF, DSP48E2, BRAM18, URAM
EXPECTED = {
    "zcu102": ("xczu9eg-ffvb1156-2-e", 274080, 548160, 2520, 1824, 0),
    "zcu111": ("xczu28dr-ffvg1517-2-e", 425280, 850560, 4272, 2160, 80),
}
EXPECTED_TABLE = [
    ["name", "part", "LUT", "FF", "DSP", "BRAM18", "URAM"],
    ["zcu102", "xczu9eg-ffvb1156-2-e", "274,080", "548,160", "2,520", "1,824", "0"],
    ["zcu111", "xczu28dr-ffvg1517-2-e", "425,280", "850,560", "4,272", "2,160", "80"],
]


def codesign_exe() -> Path:
    """The installed console script of the environment running the tests."""
    exe = Path(sys.executable).parent / "codesign"
    assert exe.is_file(), f"console script not installed next to {sys.executable}"
    return exe


def run_cli(*args: str, cwd: Path, env_extra: dict[str, str] | None = None):
    env = {k: v for k, v in os.environ.items() if k != "CODESIGN_DEBUG"}
    env.update(env_extra or {})
    return subprocess.run(
        [str(codesign_exe()), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


# ---------------------------------------------------------------- boards


def test_board_figures_match_the_datasheet():
    assert set(BOARDS) == set(EXPECTED)
    for name, (part, lut, ff, dsp, bram18, uram) in EXPECTED.items():
        b = get_board(name)
        assert (b.name, b.part, b.lut, b.ff, b.dsp, b.bram18, b.uram) == (
            name,
            part,
            lut,
            ff,
            dsp,
            bram18,
            uram,
        )
        assert b.bram36 * 2 == bram18


def test_board_is_frozen():
    b = get_board("zcu102")
    with pytest.raises(AttributeError):
        b.lut = 1  # type: ignore[misc]
    assert isinstance(b, Board)


def test_get_board_is_case_insensitive():
    assert get_board("ZCU111") is BOARDS["zcu111"]


def test_get_board_unknown_raises_one_line():
    with pytest.raises(ValueError) as info:
        get_board("zcu104")
    msg = str(info.value)
    assert "\n" not in msg
    assert msg == "unknown board 'zcu104' (supported: zcu102, zcu111)"


def test_boards_table(capsys):
    assert cli.main(["boards"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    rows = [line.split() for line in out.splitlines()]
    assert rows == EXPECTED_TABLE


def test_boards_json(capsys):
    assert cli.main(["boards", "--json"]) == 0
    out, _ = capsys.readouterr()
    data = json.loads(out)
    got = {
        d["name"]: (d["part"], d["lut"], d["ff"], d["dsp"], d["bram18"], d["uram"]) for d in data
    }
    assert got == EXPECTED


# ---------------------------------------------------------------- console script


def test_help_via_console_script(tmp_path):
    r = run_cli("--help", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "usage: codesign" in r.stdout
    for cmd in ("boards", "build"):
        assert cmd in r.stdout


def test_version_via_console_script(tmp_path):
    r = run_cli("--version", cwd=tmp_path)
    assert r.returncode == 0
    assert r.stdout.strip() == "codesign 0.1.0"


def test_boards_via_console_script(tmp_path):
    r = run_cli("boards", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert [line.split() for line in r.stdout.splitlines()] == EXPECTED_TABLE


def test_unknown_board_is_one_line_exit_2(tmp_path):
    r = run_cli("build", "fqbert", "--board", "x", cwd=tmp_path)
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.splitlines() == ["error: unknown board 'x' (supported: zcu102, zcu111)"]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("board", ["zcu102", "zcu111"])
def test_build_existing_out_without_force_exit_2(tmp_path, board):
    """The build itself is tested in tests/test_flow.py; here: the console script's one-line error."""
    out = tmp_path / "out"
    out.mkdir()
    r = run_cli("build", "fqbert", "--board", board, "--out", str(out), "--seed", "3", cwd=tmp_path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.splitlines() == [f"error: output folder '{out}' exists (use --force to replace it)"]
    assert list(out.iterdir()) == []
    assert list(tmp_path.iterdir()) == [out]


def test_build_unknown_model_exit_2(capsys):
    assert cli.main(["build", "resnet", "--board", "zcu102"]) == 2
    _, err = capsys.readouterr()
    assert err.splitlines() == ["error: unknown model 'resnet' (zoo models: fqbert, bnn, mpcnn; or the path of a .onnx file)"]


def test_no_command_prints_help_exit_2(capsys):
    assert cli.main([]) == 2
    _, err = capsys.readouterr()
    assert "usage: codesign" in err


def test_usage_error_returns_2(capsys):
    assert cli.main(["build", "fqbert"]) == 2  # --board is required
    _, err = capsys.readouterr()
    assert "--board" in err


# ---------------------------------------------------------------- error handling


def _boom(args):
    raise RuntimeError("boom\n  second line")


def test_unexpected_exception_is_one_line(monkeypatch, capsys):
    monkeypatch.delenv("CODESIGN_DEBUG", raising=False)
    monkeypatch.setattr(cli, "_cmd_boards", _boom)
    assert cli.main(["boards"]) == 1
    _, err = capsys.readouterr()
    assert err.splitlines() == ["error: RuntimeError: boom second line"]


def test_debug_env_reraises(monkeypatch):
    monkeypatch.setenv("CODESIGN_DEBUG", "1")
    monkeypatch.setattr(cli, "_cmd_boards", _boom)
    with pytest.raises(RuntimeError, match="boom"):
        cli.main(["boards"])


def test_cli_import_does_not_pull_heavy_modules(tmp_path):
    code = (
        "import sys, codesign.accel.cli\n"
        "heavy = {'torch', 'brevitas', 'onnx', 'onnxruntime', 'qonnx'}\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & heavy))\n"
    )
    r = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_ops_lists_every_contract_op(capsys):
    assert cli.main(["ops", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    names = [o["name"] for o in listed]
    # the ops named in docs/arithmetic.md, written out here, not read from the registry
    assert names == ["quantize", "dequantize", "matmul", "requant", "lut", "softmax", "isqrt", "layernorm",
                     "add", "xnor_popcount", "threshold", "maxpool2d", "avgpool2d", "conv2d",
                     "sparse_matmul", "sparse_conv2d"]
    assert all(o["header"].startswith("codesign/") and o["cycles"] for o in listed)
    assert cli.main(["ops"]) == 0
    table = capsys.readouterr().out
    assert "codesign/matmul.h:matmul" in table and "docs/arithmetic.md" in table


def test_third_party_import_noise_is_silenced_only():
    """The CLI drops Brevitas' optional-kernel and deprecation notices, nothing else."""
    import warnings

    with warnings.catch_warnings(record=True) as got:
        warnings.simplefilter("always")
        cli._quiet_third_party_warnings()
        warnings.warn_explicit("fast_hadamard_transform package not found, using standard pytorch kernels",
                               UserWarning, "equalize.py", 70, module="brevitas.graph.equalize")
        warnings.warn_explicit("brevitas.fx is deprecated and will be removed in a future release.",
                               DeprecationWarning, "base.py", 20, module="brevitas.graph.base")
        warnings.warn_explicit("fast_hadamard_transform package not found", UserWarning, "m.py", 1,
                               module="mypackage")  # someone else's: kept
        warnings.warn_explicit("a real problem", UserWarning, "equalize.py", 80, module="brevitas.graph.equalize")
    assert [str(w.message) for w in got] == ["fast_hadamard_transform package not found", "a real problem"]
