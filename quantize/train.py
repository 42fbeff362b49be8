"""The FQ-BERT training recipe on the offline synthetic sentiment task.

:func:`train_fqbert` runs the three phases of FQ-BERT (Liu et al., DATE 2021) on one
:class:`~codesign.quantize.fqbert.FQBert`, whose float parameters are shared by all of
them:

1. **fp32 fine-tuning**: AdamW on the cross-entropy of
   :func:`~codesign.quantize.bert_float.float_forward`, the full-precision BERT on the
   module's own parameters (no quantizer on the path).
2. **Post-training quantization (PTQ)**: :meth:`FQBert.calibrate` on training batches
   (EMA activation scales), then the W4A8 test accuracy of the integer eval forward.
3. **Quantization-aware training (QAT)**: the same optimiser at a smaller learning rate
   through ``FQBert.forward`` in training mode: the exact integer forward with
   straight-through gradients, activation scales still following their EMA. The model is
   then frozen (``eval()``) and its W4A8 test accuracy is the headline number; the drop
   ``100 · (fp32_acc - qat_acc)`` is in points, as FQ-BERT's -0.81 on SST-2.

Data: :class:`~codesign.quantize.data.SyntheticSentiment` at the model's sequence length
and vocabulary; the training set is drawn with seed ``2·seed``, the test set with
``2·seed + 1`` (independent draws; a test sentence may repeat a training sentence only as
often as two random draws collide). Each phase uses a linear warm-up over the first
``warmup`` fraction of its steps and a linear decay to zero, gradient clipping at norm 1
and weight decay on matrices only (BERT fine-tuning practice). Everything is seeded:
``torch.manual_seed(seed)`` before the model is built and a ``torch.Generator`` for the
shuffles, so the same arguments give the same weights and accuracies (on the same machine
and thread count).

Threads: the library does not change torch's global thread count. On a 2-core machine
shared with other processes, torch's default of 2 intra-op threads is *much* slower than 1
(the threads spin-wait on each other); the caller (the CLI, a test fixture) may call
``torch.set_num_threads(1)``.

Measured results
----------------
``train_fqbert("tiny")`` with the defaults (seed 0), on the 2-core dev machine:

    (filled in below)

:func:`save_checkpoint` / :func:`load_checkpoint` store the configuration and the full
``state_dict`` (float parameters and the EMA activation-scale buffers), so a reloaded
model gives the identical eval logits.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codesign.quantize.bert_float import float_forward
from codesign.quantize.data import SyntheticSentiment
from codesign.quantize.fqbert import PRESETS, FQBert, FQBertConfig, compression_ratio

__all__ = ["TrainResult", "train_fqbert", "save_checkpoint", "load_checkpoint", "DEFAULTS",
           "CHECKPOINT_FORMAT"]

Progress = Callable[[str], None]

#: Defaults of :func:`train_fqbert` (chosen for the ``tiny`` preset on a 2-core machine).
DEFAULTS: dict[str, float | int] = {
    "train_size": 4000,
    "test_size": 1000,
    "calibration_size": 512,
    "fp32_epochs": 8,
    "qat_epochs": 2,
    "batch_size": 32,
    "lr": 2e-3,
    "qat_lr": 2e-4,
    "weight_decay": 0.01,
    "warmup": 0.1,
}

CHECKPOINT_FORMAT = "codesign.fqbert.v1"
_EVAL_BATCH = 256


@dataclass
class TrainResult:
    """What :func:`train_fqbert` did and reached. Accuracies are fractions in [0, 1]."""

    config: str                 # preset name, or "custom" for a config that is no preset
    model_config: dict          # FQBertConfig.as_dict()
    seed: int
    train_size: int
    test_size: int
    calibration_size: int
    fp32_epochs: int
    qat_epochs: int
    batch_size: int
    lr: float
    qat_lr: float
    fp32_acc: float             # float_forward on the test set after fp32 fine-tuning
    ptq_acc: float              # W4A8 integer eval after calibration, before QAT
    qat_acc: float              # W4A8 integer eval after QAT (the deployed model)
    drop_points: float          # 100 · (fp32_acc - qat_acc)
    compression_vs_fp32: float  # compression_ratio(model)
    fp32_loss: float            # mean training loss of the last fp32 epoch
    qat_loss: float             # mean training loss of the last QAT epoch
    fp32_seconds: float
    ptq_seconds: float          # calibration + PTQ evaluation
    qat_seconds: float          # QAT epochs, their evaluations, final evaluation
    history: list[dict] = field(default_factory=list)   # one row per epoch and phase
    model: FQBert | None = field(default=None, repr=False, compare=False)

    @property
    def total_seconds(self) -> float:
        return self.fp32_seconds + self.ptq_seconds + self.qat_seconds

    def as_dict(self) -> dict:
        """Every field except ``model``, as JSON-serialisable values (plus ``total_seconds``)."""
        out = {name: getattr(self, name) for name in self.__dataclass_fields__ if name != "model"}
        out["model_config"] = dict(self.model_config)
        out["history"] = [dict(row) for row in self.history]
        out["total_seconds"] = self.total_seconds
        return out


# ---------------------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------------------

def _error(msg: str) -> ValueError:
    return ValueError(f"train_fqbert: {msg}")


def _check_int(name: str, v, lo: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _error(f"{name}={v!r} must be an integer >= {lo}")
    return v


def _check_float(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
        raise _error(f"{name}={v!r} must be a positive finite number")
    return float(v)


def _resolve_config(config: str | FQBertConfig) -> tuple[str, FQBertConfig]:
    if isinstance(config, FQBertConfig):
        name = next((n for n, c in PRESETS.items() if c == config), "custom")
        return name, config
    if isinstance(config, str) and config in PRESETS:
        return config, PRESETS[config]
    raise _error(f"unknown config {config!r} (a preset: {', '.join(PRESETS)}, or an FQBertConfig)")


# ---------------------------------------------------------------------------------------
# training loop pieces
# ---------------------------------------------------------------------------------------

def _optimizer(model: nn.Module, lr: float, weight_decay: float, steps: int,
               warmup: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW, decay on matrices only; linear warm-up then linear decay to 0 over ``steps``."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=lr, foreach=False)
    n_warm = max(1, round(warmup * steps)) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        return max(0.0, (steps - step) / max(1, steps - n_warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _epoch(model: FQBert, logits_fn: Callable[[Tensor], Tensor], ids: Tensor, labels: Tensor,
           batch_size: int, opt: torch.optim.Optimizer, sched, gen: torch.Generator) -> float:
    """One shuffled pass; returns the sample-weighted mean training loss."""
    perm = torch.randperm(len(ids), generator=gen)
    total = 0.0
    for start in range(0, len(ids), batch_size):
        idx = perm[start:start + batch_size]
        loss = F.cross_entropy(logits_fn(ids[idx]), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        total += float(loss.detach()) * len(idx)
    return total / len(ids)


@torch.no_grad()
def _accuracy(logits_fn: Callable[[Tensor], Tensor], ids: Tensor, labels: Tensor) -> float:
    correct = 0
    for start in range(0, len(ids), _EVAL_BATCH):
        pred = logits_fn(ids[start:start + _EVAL_BATCH]).argmax(dim=-1)
        correct += int((pred == labels[start:start + _EVAL_BATCH]).sum())
    return correct / len(ids)


# ---------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------

def train_fqbert(config: str | FQBertConfig = "tiny", *, seed: int = 0,
                 train_size: int = int(DEFAULTS["train_size"]),
                 test_size: int = int(DEFAULTS["test_size"]),
                 calibration_size: int = int(DEFAULTS["calibration_size"]),
                 fp32_epochs: int = int(DEFAULTS["fp32_epochs"]),
                 qat_epochs: int = int(DEFAULTS["qat_epochs"]),
                 batch_size: int = int(DEFAULTS["batch_size"]),
                 lr: float = DEFAULTS["lr"], qat_lr: float = DEFAULTS["qat_lr"],
                 weight_decay: float = DEFAULTS["weight_decay"], warmup: float = DEFAULTS["warmup"],
                 progress: Progress | None = None) -> TrainResult:
    """Fine-tune an FQ-BERT in fp32, quantize it (PTQ), train it quantization-aware (QAT).

    ``config`` is a preset name (``tiny``, ``minilm``, ``base``) or an
    :class:`FQBertConfig`. ``calibration_size`` training samples (the first of the
    training set, in ``batch_size`` batches) calibrate the activation scales before QAT.
    ``progress(msg)``, when given, receives one line per epoch of each phase, e.g.
    ``"fp32 epoch 3/8: loss 0.410, test acc 0.912"``. Returns a :class:`TrainResult` whose
    ``model`` is the trained FQ-BERT in eval mode. Invalid arguments raise ``ValueError``
    starting with ``"train_fqbert:"``.
    """
    name, cfg = _resolve_config(config)
    seed = _check_int("seed", seed, 0)
    train_size = _check_int("train_size", train_size, 1)
    test_size = _check_int("test_size", test_size, 1)
    calibration_size = _check_int("calibration_size", calibration_size, 1)
    fp32_epochs = _check_int("fp32_epochs", fp32_epochs, 1)
    qat_epochs = _check_int("qat_epochs", qat_epochs, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    lr, qat_lr = _check_float("lr", lr), _check_float("qat_lr", qat_lr)
    if isinstance(weight_decay, bool) or not isinstance(weight_decay, (int, float)) \
            or not (math.isfinite(weight_decay) and weight_decay >= 0):
        raise _error(f"weight_decay={weight_decay!r} must be a finite number >= 0")
    if isinstance(warmup, bool) or not isinstance(warmup, (int, float)) or not 0 <= warmup < 1:
        raise _error(f"warmup={warmup!r} must be a fraction in [0, 1)")
    if progress is not None and not callable(progress):
        raise _error(f"progress={progress!r} is not callable")
    try:
        task = SyntheticSentiment(seq_len=cfg.max_seq, vocab_size=cfg.vocab_size)
    except ValueError as e:
        raise _error(f"config does not fit the synthetic task: {e}") from None
    say: Progress = progress or (lambda msg: None)

    train_np, test_np = task.sample(train_size, seed=2 * seed), task.sample(test_size, seed=2 * seed + 1)
    train_ids, train_y = (torch.from_numpy(a) for a in train_np)
    test_ids, test_y = (torch.from_numpy(a) for a in test_np)

    torch.manual_seed(seed)
    model = FQBert(cfg)
    gen = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(train_size / batch_size)
    history: list[dict] = []

    def fp32_logits(ids: Tensor) -> Tensor:
        return float_forward(model, ids)

    # 1. fp32 fine-tuning ----------------------------------------------------------------
    t0 = time.perf_counter()
    model.train()
    opt, sched = _optimizer(model, lr, weight_decay, fp32_epochs * steps_per_epoch, warmup)
    fp32_loss = fp32_acc = float("nan")
    for epoch in range(1, fp32_epochs + 1):
        fp32_loss = _epoch(model, fp32_logits, train_ids, train_y, batch_size, opt, sched, gen)
        fp32_acc = _accuracy(fp32_logits, test_ids, test_y)
        history.append({"phase": "fp32", "epoch": epoch, "loss": fp32_loss, "test_acc": fp32_acc})
        say(f"fp32 epoch {epoch}/{fp32_epochs}: loss {fp32_loss:.3f}, test acc {fp32_acc:.3f}")
    t1 = time.perf_counter()

    # 2. post-training quantization ------------------------------------------------------
    calib = train_ids[:calibration_size]
    model.calibrate(calib[i:i + batch_size] for i in range(0, len(calib), batch_size))
    ptq_acc = _accuracy(model, test_ids, test_y)
    history.append({"phase": "ptq", "epoch": 0, "loss": None, "test_acc": ptq_acc})
    say(f"ptq (W{cfg.weight_bits}A8, {len(calib)} calibration samples): test acc {ptq_acc:.3f}")
    t2 = time.perf_counter()

    # 3. quantization-aware training -----------------------------------------------------
    opt, sched = _optimizer(model, qat_lr, weight_decay, qat_epochs * steps_per_epoch, warmup)
    qat_loss = qat_acc = float("nan")
    for epoch in range(1, qat_epochs + 1):
        model.train()
        qat_loss = _epoch(model, model, train_ids, train_y, batch_size, opt, sched, gen)
        model.eval()
        qat_acc = _accuracy(model, test_ids, test_y)
        history.append({"phase": "qat", "epoch": epoch, "loss": qat_loss, "test_acc": qat_acc})
        say(f"qat epoch {epoch}/{qat_epochs}: loss {qat_loss:.3f}, W{cfg.weight_bits}A8 test acc {qat_acc:.3f}")
    t3 = time.perf_counter()

    return TrainResult(
        config=name, model_config=cfg.as_dict(), seed=seed, train_size=train_size, test_size=test_size,
        calibration_size=min(calibration_size, train_size), fp32_epochs=fp32_epochs, qat_epochs=qat_epochs,
        batch_size=batch_size, lr=lr, qat_lr=qat_lr, fp32_acc=fp32_acc, ptq_acc=ptq_acc, qat_acc=qat_acc,
        drop_points=100.0 * (fp32_acc - qat_acc), compression_vs_fp32=compression_ratio(model),
        fp32_loss=fp32_loss, qat_loss=qat_loss, fp32_seconds=t1 - t0, ptq_seconds=t2 - t1,
        qat_seconds=t3 - t2, history=history, model=model)


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------

def save_checkpoint(model: FQBert, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``{"format", "config": cfg.as_dict(), "state_dict", "metadata"}`` with
    ``torch.save``: the float parameters and the EMA activation-scale buffers, i.e.
    everything the eval forward depends on. ``metadata`` (e.g. ``TrainResult.as_dict()``)
    must hold plain Python values."""
    if not isinstance(model, FQBert):
        raise TypeError(f"save_checkpoint: expected an FQBert, got {type(model).__name__}")
    path = Path(path)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"format": CHECKPOINT_FORMAT, "config": model.cfg.as_dict(), "state_dict": state,
                "metadata": dict(metadata or {})}, path)
    return path


def load_checkpoint(path: str | Path) -> FQBert:
    """The :class:`FQBert` saved by :func:`save_checkpoint`, in eval mode."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"load_checkpoint: {path} is not a {CHECKPOINT_FORMAT} checkpoint")
    model = FQBert(FQBertConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval()
