"""atomic_output_dir: no partial output folder, ever."""
from __future__ import annotations

import pytest

from codesign.accel.outdir import OutputExistsError, atomic_output_dir


def test_success_moves_into_place(tmp_path):
    out = tmp_path / "build" / "m-zcu102"
    with atomic_output_dir(out) as stage:
        assert not out.exists()
        (stage / "ir.json").write_text("{}")
    assert (out / "ir.json").read_text() == "{}"
    assert [p.name for p in out.parent.iterdir()] == ["m-zcu102"]  # no staging leftovers


@pytest.mark.parametrize("exc", [RuntimeError("step failed"), KeyboardInterrupt()])
def test_failure_leaves_nothing(tmp_path, exc):
    out = tmp_path / "o"
    with pytest.raises(type(exc)):
        with atomic_output_dir(out) as stage:
            (stage / "half.txt").write_text("partial")
            raise exc
    assert list(tmp_path.iterdir()) == []


def test_existing_refused_without_force(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep").write_text("old")
    with pytest.raises(OutputExistsError, match="--force"):
        with atomic_output_dir(out):
            pass
    assert (out / "keep").read_text() == "old"


def test_force_replaces_only_after_success(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep").write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_output_dir(out, force=True) as stage:
            (stage / "new").write_text("new")
            raise RuntimeError("boom")
    assert (out / "keep").read_text() == "old" and not (out / "new").exists()
    with atomic_output_dir(out, force=True) as stage:
        (stage / "new").write_text("new")
    assert (out / "new").read_text() == "new" and not (out / "keep").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["o"]
