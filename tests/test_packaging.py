"""Packaging: one `codesign` namespace, no bare stage modules, data shipped.

The stage folders (quantize/, accel/, hls/, sim/, bench/) are mapped onto
`codesign.<stage>` by pyproject.toml; `codesign` itself is an implicit
namespace package. These tests check the installed environment (editable
install from `make setup`) and a wheel built from a copy of the sources.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from importlib.resources import files
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
STAGES = ("quantize", "accel", "hls", "sim", "bench")
DATA_SUFFIXES = (".h", ".hpp", ".v", ".sv", ".md", ".json", ".tcl", ".j2")
SKIP_DIRS = {"__pycache__", ".pytest_cache", ".hypothesis", "sim_build", "obj_dir"}


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def walk_stage(stage: str):
    """(dir, filenames) under a stage folder, skipping caches and build outputs."""
    for dirpath, dirnames, filenames in os.walk(REPO / stage):
        dirnames[:] = [
            d for d in dirnames if d not in SKIP_DIRS and not d.endswith(".egg-info")
        ]
        yield Path(dirpath), filenames


def package_dirs() -> dict[str, Path]:
    """Every folder with an __init__.py under the stage folders, by dotted name."""
    found = {}
    for stage in STAGES:
        for d, names in walk_stage(stage):
            if "__init__.py" in names:
                rel = d.relative_to(REPO / stage).parts
                found[".".join(("codesign", stage, *rel))] = d
    return found


def run_py(code: str, cwd: Path, python: str = sys.executable, *flags: str):
    # -I: no PYTHONPATH, no cwd/script dir on sys.path, no user site.
    return subprocess.run(
        [python, "-I", *flags, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120
    )


# ---------------------------------------------------------------- pyproject / layout


def test_layout_has_no_codesign_folder_or_setup_py():
    assert not (REPO / "codesign").exists()
    assert not (REPO / "setup.py").exists()
    assert not (REPO / "tests" / "__init__.py").exists()


def test_package_dir_maps_each_stage():
    cfg = pyproject()["tool"]["setuptools"]
    assert cfg["package-dir"] == {f"codesign.{s}": s for s in STAGES}
    for s in STAGES:
        assert (REPO / s / "__init__.py").is_file(), f"{s}/__init__.py missing"


def test_every_package_folder_is_listed_in_pyproject():
    """setuptools cannot discover sub-packages for this layout: each one must be
    listed in [tool.setuptools] packages, or the wheel silently lacks it (an
    editable install would still import it)."""
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    on_disk = set(package_dirs())
    missing = sorted(on_disk - listed)
    stale = sorted(listed - on_disk)
    assert not missing, f"add to [tool.setuptools] packages in pyproject.toml: {missing}"
    assert not stale, f"listed in pyproject.toml but no folder with __init__.py: {stale}"


def test_pytest_config():
    opts = pyproject()["tool"]["pytest"]["ini_options"]
    assert opts["testpaths"] == ["tests"]
    assert "--import-mode=importlib" in opts["addopts"]
    markers = {m.split(":")[0] for m in opts["markers"]}
    assert {"slow", "rtl"} <= markers


def test_ci_script_is_strict_and_executable():
    ci = REPO / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    text = ci.read_text()
    assert "set -euo pipefail" in text
    assert "make test" in text


# ---------------------------------------------------------------- installed environment


def test_installed_distribution(tmp_path):
    """The installed distribution (looked up from outside the repo, so the editable
    install's codesign.egg-info in the repo root is not what is found)."""
    code = (
        "import importlib.metadata as m, json, pathlib\n"
        "d = m.distribution('codesign')\n"
        "print(json.dumps({'version': d.version,\n"
        "  'scripts': {e.name: e.value for e in d.entry_points if e.group == 'console_scripts'},\n"
        "  'tops': sorted({pathlib.Path(str(f)).parts[0] for f in d.files or []})}))\n"
    )
    out = subprocess.run([sys.executable, "-P", "-c", code], cwd=tmp_path, capture_output=True, text=True,
                         check=True)
    info = json.loads(out.stdout)
    assert info["version"] == "0.1.0"
    assert info["scripts"] == {"codesign": "codesign.accel.cli:main"}
    # No file of the distribution is a bare stage module at site-packages level.
    assert not set(info["tops"]) & set(STAGES), info["tops"]


def test_only_namespaced_imports_work(tmp_path):
    """From a folder that is not the repo: `import sim` etc. fail, while
    `import codesign.sim` etc. succeed, from the installed packages."""
    code = (
        "import importlib, importlib.util, sys\n"
        f"stages = {STAGES!r}\n"
        "bare = [s for s in stages if importlib.util.find_spec(s) is not None]\n"
        "assert not bare, f'bare top-level modules importable: {bare}'\n"
        "for s in stages:\n"
        "    try:\n"
        "        importlib.import_module(s)\n"
        "    except ModuleNotFoundError:\n"
        "        pass\n"
        "    else:\n"
        "        raise AssertionError(f'import {s} worked')\n"
        "import codesign\n"
        "assert not hasattr(codesign, '__file__') or codesign.__file__ is None, codesign\n"
        "for s in stages:\n"
        "    m = importlib.import_module('codesign.' + s)\n"
        "    print(s, m.__file__)\n"
    )
    r = run_py(code, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    got = dict(line.split(" ", 1) for line in r.stdout.splitlines())
    assert set(got) == set(STAGES)


def test_hls_include_dir_is_found_via_importlib_resources():
    inc = files("codesign.hls") / "include" / "codesign"
    assert inc.is_dir(), "hls/include/codesign/ not found through importlib.resources"


def test_hls_headers_are_resources():
    src = sorted(p.name for p in (REPO / "hls" / "include" / "codesign").glob("*.h"))
    assert {"types.h", "matmul.h", "requant.h", "softmax.h", "layernorm.h"} <= set(src)
    inc = files("codesign.hls") / "include" / "codesign"
    found = sorted(t.name for t in inc.iterdir() if t.name.endswith(".h"))
    assert found == src


# ---------------------------------------------------------------- wheel


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """Build a wheel from a clean copy of the sources (keeps build/ and
    *.egg-info out of the repo), without build isolation."""
    pytest.importorskip("setuptools")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    ignore = shutil.ignore_patterns(*SKIP_DIRS, "*.egg-info", "*.pyc")
    for stage in STAGES:
        shutil.copytree(REPO / stage, src / stage, ignore=ignore)
    out = tmp / "whl"
    r = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(src), "-w", str(out),
         "--no-deps", "--no-build-isolation", "-q"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    (whl,) = out.glob("codesign-0.1.0-*.whl")
    return whl


def test_wheel_has_only_the_codesign_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/", 1)[0] for n in names}
    assert tops == {"codesign", "codesign-0.1.0.dist-info"}, tops
    assert "codesign/__init__.py" not in names  # implicit namespace package
    for s in STAGES:
        assert f"codesign/{s}/__init__.py" in names
    assert "codesign/accel/cli.py" in names


def test_wheel_ships_all_packages_and_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for stage in STAGES:
        for d, filenames in walk_stage(stage):
            is_pkg = "__init__.py" in filenames
            for f in filenames:
                if f.endswith(DATA_SUFFIXES) or (is_pkg and f.endswith(".py")):
                    rel = (d / f).relative_to(REPO / stage).as_posix()
                    expected.add(f"codesign/{stage}/{rel}")
    missing = sorted(expected - names)
    assert not missing, f"not in the wheel: {missing}"


def test_wheel_entry_point(wheel):
    with zipfile.ZipFile(wheel) as z:
        ep = z.read("codesign-0.1.0.dist-info/entry_points.txt").decode()
    assert "codesign = codesign.accel.cli:main" in ep


def test_wheel_installs_and_runs(wheel, tmp_path):
    """Unpacked on its own (no site-packages, so no editable finder), the wheel
    provides codesign.accel.cli and no bare stage module."""
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as z:
        z.extractall(target)
    code = (
        "import sys, importlib.util\n"
        f"sys.path.insert(0, {str(target)!r})\n"
        f"assert all(importlib.util.find_spec(s) is None for s in {STAGES!r})\n"
        "import codesign.accel.cli as cli\n"
        f"assert cli.__file__.startswith({str(target)!r}), cli.__file__\n"
        "sys.exit(cli.main(['boards']))\n"
    )
    r = run_py(code, tmp_path, sys.executable, "-S")
    assert r.returncode == 0, r.stderr
    assert "xczu28dr-ffvg1517-2-e" in r.stdout
