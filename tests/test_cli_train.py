"""``codesign train`` and ``codesign build --weights`` (accel/train_flow.py, accel/cli.py).

The training recipe itself is tested in tests/test_train.py; here: the command writes its
folder all or nothing, the checkpoint builds into a verified accelerator whose predictions
are the trained model's integer logits, and bad arguments are one line with exit 2.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from codesign.accel import cli


def _one_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train") / "run"
    assert cli.main(["train", "fqbert", "--config", "tiny", "--epochs", "1", "--qat-epochs", "1",
                     "--train-size", "256", "--out", str(out)]) == 0
    return out


def test_train_writes_results_and_checkpoint(trained, capsys):
    assert sorted(p.name for p in trained.iterdir()) == ["model.pt", "train.json", "train.md"]
    r = json.loads((trained / "train.json").read_text())
    assert r["config"] == "tiny" and r["train_size"] == 256 and r["fp32_epochs"] == 1 and r["qat_epochs"] == 1
    for k in ("fp32_acc", "ptq_acc", "qat_acc"):
        assert 0.0 <= r[k] <= 1.0
    assert r["drop_points"] == pytest.approx(100 * (r["fp32_acc"] - r["qat_acc"]))
    md = (trained / "train.md").read_text()
    assert f"{100 * r['qat_acc']:.2f} %" in md and "91.51" in md


def test_build_from_checkpoint_predicts_the_trained_model(trained, tmp_path, capsys):
    from codesign.quantize.train import load_checkpoint

    out = tmp_path / "b"
    assert cli.main(["build", "fqbert", "--board", "zcu102", "--weights", str(trained / "model.pt"),
                     "--out", str(out)]) == 0
    assert "weights from model.pt" in capsys.readouterr().out
    model = load_checkpoint(trained / "model.pt")
    ids = np.random.default_rng(0).integers(0, model.cfg.vocab_size, size=(5, model.cfg.max_seq))
    np.save(tmp_path / "ids.npy", ids)
    assert cli.main(["predict", str(out), "--input", str(tmp_path / "ids.npy"),
                     "--output", str(tmp_path / "y.npy")]) == 0
    with torch.no_grad():
        want = model(torch.from_numpy(ids)).numpy()
    assert np.array_equal(np.load(tmp_path / "y.npy"), want)


@pytest.mark.parametrize("args, needle", [
    (["train", "fqbert", "--config", "base"], "unknown config 'base' for train fqbert"),
    (["train", "bert"], "unknown model 'bert' for train"),
    (["train", "fqbert", "--steps", "3"], "--steps applies to --config minilm"),
    (["train", "fqbert", "--epochs", "0"], "--epochs must be >= 1"),
    (["build", "fqbert", "--board", "zcu102", "--weights", "nope.pt"], "--weights 'nope.pt' does not exist"),
])
def test_train_bad_arguments(args, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cli.main([*args, "--out", str(tmp_path / "o")]) == 2
    assert needle in _one_error(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_weights_not_a_checkpoint_and_wrong_config(trained, tmp_path, capsys):
    assert cli.main(["build", "fqbert", "--board", "zcu102", "--weights", str(trained / "train.json"),
                     "--out", str(tmp_path / "o")]) == 2
    assert "is not a checkpoint written by 'codesign train'" in _one_error(capsys.readouterr().err)
    assert cli.main(["build", "fqbert", "--board", "zcu102", "--config", "base", "--weights",
                     str(trained / "model.pt"), "--out", str(tmp_path / "o")]) == 2
    assert "not the 'base' config" in _one_error(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_train_existing_out_refused(trained, capsys):
    before = (trained / "train.json").read_bytes()
    assert cli.main(["train", "fqbert", "--epochs", "1", "--out", str(trained)]) == 2
    assert "--force" in _one_error(capsys.readouterr().err)
    assert (trained / "train.json").read_bytes() == before
