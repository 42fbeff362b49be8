"""`codesign train bnn` and `codesign build bnn --weights`."""
from __future__ import annotations

import json

import pytest

from codesign.accel import cli

pytest.importorskip("sklearn")


def test_train_bnn_then_build_with_weights(tmp_path, capsys):
    out = tmp_path / "t"
    assert cli.main(["train", "bnn", "--epochs", "1", "--seeds", "2", "--out", str(out)]) == 0
    r = json.loads((out / "train.json").read_text())
    assert r["seeds"] == [0, 1] and r["epochs"] == 1
    for k in ("with_branch", "without_branch"):
        accs = r[k]["acc"]
        assert len(accs) == 2 and all(0.1 < a <= 1 for a in accs)
        assert r[k]["mean"] == pytest.approx(sum(accs) / 2)
    assert "with the latent branch" in (out / "train.md").read_text()
    capsys.readouterr()
    b = tmp_path / "b"
    assert cli.main(["build", "bnn", "--board", "zcu102", "--weights", str(out / "model.pt"), "--out", str(b),
                     "--no-csim"]) == 0
    assert "weights from model.pt" in capsys.readouterr().out


def test_train_bnn_errors_one_line(tmp_path, capsys):
    assert cli.main(["train", "bnn", "--steps", "3", "--out", str(tmp_path / "a")]) == 2
    assert capsys.readouterr().err.strip() == ("error: --steps does not apply to bnn (it trains for --epochs "
                                               "over --seeds seeds)")
    assert cli.main(["train", "bnn", "--config", "resnet18", "--out", str(tmp_path / "b")]) == 2
    assert "unknown config 'resnet18' for train bnn (supported: tiny)" in capsys.readouterr().err
    assert cli.main(["train", "fqbert", "--seeds", "2", "--out", str(tmp_path / "c")]) == 2
    assert "--seeds applies to bnn" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
