"""Binary ResNets in the Bi-Real style (Brevitas), with latent-weight supervision.

Architecture (``docs/bnn.md`` has the full description and the measured accuracies)::

    inp     QuantIdentity int8, power-of-two (po2) scale                 (graph input)
    stem    QuantConv2d C_in->C0, int8 per-channel po2 weights, no bias
            BatchNorm2d -> stage-0 residual quantizer (int8, po2)  [-> MaxPool 3x3/2 for resnet18]
    stages  per binary conv ("Bi-Real block", one shortcut per conv):
              main      sign(x)       QuantIdentity 1-bit bipolar (BipolarQuant, scale 1)
                        binconv 3x3   QuantConv2d, weights sign(W) * alpha_c, alpha_c a po2
                                      per output channel (2^round(log2 mean|W_c|)), no bias
                        BatchNorm2d -> stage residual quantizer (int8, po2)
              shortcut  x, or for a block that changes stride/width:
                        AvgPool2d(stride) -> QuantIdentity int8 -> QuantConv2d 1x1 int8
                        -> BatchNorm2d -> stage residual quantizer
              y = stage residual quantizer(main + shortcut)
    head    AdaptiveAvgPool2d(1) -> Flatten -> QuantIdentity int8 -> QuantLinear int8
            per-channel po2 weights, Int32Bias -> logits (float accumulator, no output quant)

Every block of a stage quantizes its BatchNorm output, its shortcut and its sum with *one
shared* quantizer (``Stage.act``), so both operands of each residual ``Add`` are codes on
the same po2 grid and the sum is on that grid too: the ``Add -> Quant`` pair is an exact
integer add with saturation, no rounding.

Training-only parts (none are exported):

* :class:`ApproxSign`: Bi-Real's approximate-sign straight-through estimator. Forward
  ``+1`` if ``x >= 0`` else ``-1`` (the same values as the bipolar quantizer); backward
  ``dy/dx = 2 + 2x`` on ``[-1, 0)``, ``2 - 2x`` on ``[0, 1)``, ``0`` elsewhere, i.e.
  ``max(0, 2 - 2|x|)``. :class:`SignActivation` uses it in training mode and the
  Brevitas bipolar ``QuantIdentity`` in eval mode (and therefore at export).
* :class:`LatentBranch`: the real-valued branch. It owns no parameters; in training it
  runs the *same* conv/linear weights unquantized (the latent weights ``W``), with the
  sign replaced by its smooth polynomial approximation :func:`approx_sign_poly` (whose
  derivative is exactly the STE above), through the same BatchNorm affine parameters
  normalised with the real branch's own batch statistics (running statistics are not
  touched), without any activation quantizer. :func:`bnn_loss` combines both outputs:
  ``CE(binary) + CE(real) + kd_weight * T^2 * KL(softmax(real/T) || softmax(binary/T))``
  with the real logits detached (teacher), ``T = 2``, ``kd_weight = 1`` by default.

Export (:func:`export_bnn`): Brevitas ``export_qonnx`` with the TorchScript exporter
(``dynamo=False``) of the eval model; the graph holds only ``Quant``, ``BipolarQuant``,
``Conv``, ``BatchNormalization``, ``Add``, ``MaxPool``, ``AveragePool``,
``GlobalAveragePool``, ``Flatten`` and ``Gemm``.

Exactness: every scale is a power of two and every conv/linear accumulates integers far
below 2^24 units, so ``Conv``/``Gemm``/pooling/``Add``/``Quant`` give the same float32
values in torch and in qonnx/onnxruntime regardless of summation order. The one float op
with arbitrary constants is ``BatchNormalization``: :class:`BatchNorm2d` evaluates it in
eval mode exactly as onnxruntime's CPU kernel does (``a = gamma * (1/sqrt(var + eps))``,
``c = beta - mean * a``, ``y = x * a + c``, each op rounded to binary32), instead of
torch's fused kernel, which differs by an ulp on some elements. With that, the torch eval
model and ``qonnx.core.onnx_exec.execute_onnx`` of the export agree with ``==``
(``tests/test_bnn.py``).

Data: ``tiny`` trains on scikit-learn's bundled ``load_digits`` (8x8 kept, pixel / 16 in
``[0, 1]``; the first 1400 samples train, the remaining 397 test; nothing downloads).
scikit-learn is only installed with the ``minilm`` extra; :func:`digits` says so if absent.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

import brevitas.nn as qnn
from brevitas.core.function_wrapper import RoundSte
from brevitas.core.quant import BinaryQuant
from brevitas.inject.enum import RestrictValueType, ScalingImplType, ScalingPerOutputType, StatsOp
from brevitas.quant import Int8ActPerTensorFixedPoint, Int32Bias, SignedBinaryActPerTensorConst
from brevitas.quant.fixed_point import Int8WeightPerChannelFixedPoint
from brevitas.quant.solver import WeightQuantSolver

__all__ = ["BNNConfig", "CONFIGS", "TRAIN_SIZE", "INPUT_NAME", "OUTPUT_NAME", "ApproxSign", "approx_sign_poly",
           "SignActivation", "BatchNorm2d", "BinaryWeightPerChannelPo2", "Int8ActPo2", "BiRealBlock", "Stage",
           "BiRealNet", "LatentBranch", "build_bnn", "bnn_loss", "count_parameters", "digits", "evaluate",
           "train_one", "train_bnn", "export_bnn", "save_checkpoint", "load_checkpoint"]

TRAIN_SIZE = 1400
"""``load_digits``: samples ``[:TRAIN_SIZE]`` train, the rest (397) test."""
CHECKPOINT_FORMAT = "codesign.quantize.bnn/1"
INPUT_NAME = "image"
"""Name of the exported graph's input (float32 ``(batch, C, H, W)``)."""
OUTPUT_NAME = "logits"
"""Name of the exported graph's output (float32 ``(batch, num_classes)``)."""


# --------------------------------------------------------------------------- configs

@dataclass(frozen=True)
class BNNConfig:
    """Shape of a Bi-Real network.

    ``stages``: one ``(channels, binary_convs, stride)`` per stage; ``stride`` applies to
    the stage's first binary conv (whose shortcut is then AvgPool + 1x1 conv + BN). A
    Bi-Real "basic block" is two binary convs, so ResNet-18's 2 blocks per stage are 4.
    """

    name: str
    in_channels: int
    input_size: int
    num_classes: int
    stem_channels: int
    stem_kernel: int
    stem_stride: int
    stem_pool: bool
    stages: tuple[tuple[int, int, int], ...]

    def __post_init__(self) -> None:
        if not self.stages or any(len(s) != 3 or min(s) < 1 for s in self.stages):
            raise ValueError(f"BNNConfig {self.name!r}: stages must be a non-empty tuple of "
                             f"(channels, convs, stride) triples, each >= 1")
        if min(self.in_channels, self.input_size, self.num_classes, self.stem_channels, self.stem_kernel,
               self.stem_stride) < 1:
            raise ValueError(f"BNNConfig {self.name!r}: sizes must be >= 1")


CONFIGS: dict[str, BNNConfig] = {
    # 8x8 digits: stem 3x3 -> 16 ch at 8x8; 2 binary convs at 16 ch; 2 at 32 ch, 4x4; GAP /16.
    "tiny": BNNConfig("tiny", in_channels=1, input_size=8, num_classes=10, stem_channels=16, stem_kernel=3,
                      stem_stride=1, stem_pool=False, stages=((16, 2, 1), (32, 2, 2))),
    # Bi-Real-18 on 224x224 ImageNet shapes (random weights; build/estimate only).
    "resnet18": BNNConfig("resnet18", in_channels=3, input_size=224, num_classes=1000, stem_channels=64,
                          stem_kernel=7, stem_stride=2, stem_pool=True,
                          stages=((64, 4, 1), (128, 4, 2), (256, 4, 2), (512, 4, 2))),
}


def _config(config: str | BNNConfig) -> BNNConfig:
    if isinstance(config, BNNConfig):
        return config
    if config not in CONFIGS:
        raise ValueError(f"bnn: unknown config {config!r}; supported: {', '.join(CONFIGS)}")
    return CONFIGS[config]


# --------------------------------------------------------------------------- quantizers

class BinaryWeightPerChannelPo2(WeightQuantSolver):
    """1-bit bipolar weights ``sign(W) * alpha_c`` with one power-of-two scale per output
    channel, ``alpha_c = 2^round(log2(mean |W_c|))`` (XNOR-Net's mean magnitude, rounded to
    a po2 so the integer path stays exact). Exported as QONNX ``BipolarQuant`` with a
    ``(C_out, 1, 1, 1)`` scale."""

    tensor_quant = BinaryQuant
    scaling_impl_type = ScalingImplType.STATS
    scaling_stats_op = StatsOp.AVE
    scaling_per_output_type = ScalingPerOutputType.CHANNEL
    restrict_scaling_type = RestrictValueType.POWER_OF_TWO
    restrict_value_float_to_int_impl = RoundSte
    scaling_min_val = 2.0 ** -16
    bit_width = 1
    signed = True
    narrow_range = True


class Int8ActPo2(Int8ActPerTensorFixedPoint):
    """Signed int8 activations with a learned po2 scale, initialised from 30 training
    batches of statistics (Brevitas' default is 300, longer than a tiny run)."""

    collect_stats_steps = 30


# --------------------------------------------------------------------------- sign / STE

class ApproxSign(torch.autograd.Function):
    """Bi-Real's approximate-sign estimator.

    Forward: ``+1`` where ``x >= 0`` (``-0.0`` included), else ``-1`` (the values of
    Brevitas' and QONNX's bipolar quantization). Backward: the derivative of
    :func:`approx_sign_poly`, ``2 + 2x`` on ``[-1, 0)``, ``2 - 2x`` on ``[0, 1)``, ``0``
    elsewhere, i.e. ``max(0, 2 - 2|x|)``.
    """

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        one = torch.ones_like(x)
        return torch.where(x >= 0, one, -one)

    @staticmethod
    def backward(ctx, grad_out):
        (x,) = ctx.saved_tensors
        return grad_out * torch.clamp(2.0 - 2.0 * x.abs(), min=0.0)


def approx_sign_poly(x: torch.Tensor) -> torch.Tensor:
    """Bi-Real's piecewise polynomial approximation of sign: ``-1`` for ``x < -1``,
    ``2x + x^2`` on ``[-1, 0)``, ``2x - x^2`` on ``[0, 1)``, ``1`` for ``x >= 1``.
    Continuous, differentiable; its derivative is :class:`ApproxSign`'s backward."""
    c = torch.clamp(x, -1.0, 1.0)
    return 2.0 * c - c * c.abs()


class SignActivation(nn.Module):
    """sign(x) in {-1, +1}: :class:`ApproxSign` in training mode, Brevitas' 1-bit bipolar
    ``QuantIdentity`` (``SignedBinaryActPerTensorConst``, scale 1) in eval mode and at
    export. Both give the same values (``+1`` iff ``x >= 0``)."""

    def __init__(self):
        super().__init__()
        self.quant = qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst)

    def forward(self, x):
        if self.training:
            return ApproxSign.apply(x)
        return self.quant(x)


class BatchNorm2d(nn.BatchNorm2d):
    """``nn.BatchNorm2d`` whose eval forward is ONNX ``BatchNormalization`` as onnxruntime's
    CPU kernel evaluates it, op by op in binary32::

        a = gamma * (1 / sqrt(running_var + eps));  c = beta - running_mean * a;  y = x * a + c

    Training mode (batch statistics) and ONNX export (a plain ``BatchNormalization``
    node) are ``nn.BatchNorm2d``'s. Torch's own eval kernel differs from this by an ulp on
    some elements, enough to flip a following quantizer at a rounding tie.
    """

    def forward(self, x):
        if self.training or not self.track_running_stats or torch.onnx.is_in_onnx_export():
            return super().forward(x)
        eps = torch.tensor(self.eps, dtype=self.running_var.dtype)
        a = self.weight * (1.0 / torch.sqrt(self.running_var + eps))
        c = self.bias - self.running_mean * a
        return x * a[None, :, None, None] + c[None, :, None, None]


# --------------------------------------------------------------------------- network

class Stage(nn.Module):
    """Binary convs at one width; ``act`` is the stage's shared int8 residual quantizer."""

    def __init__(self, in_channels: int, channels: int, convs: int, stride: int):
        super().__init__()
        self.act = qnn.QuantIdentity(act_quant=Int8ActPo2)
        self.blocks = nn.ModuleList(
            BiRealBlock(in_channels if i == 0 else channels, channels, stride if i == 0 else 1) for i in range(convs))

    def forward(self, x):
        for b in self.blocks:
            x = b(x, self.act)
        return x


class BiRealBlock(nn.Module):
    """One binary 3x3 conv with its own real-valued shortcut (Bi-Real):
    ``y = act(act(BN(binconv(sign(x)))) + shortcut(x))``, ``act`` the stage's quantizer.
    The shortcut is ``x`` itself, or ``act(BN(conv1x1_int8(q8(AvgPool(x)))))`` when the
    block changes stride or width."""

    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.stride = stride
        self.sign = SignActivation()
        self.conv = qnn.QuantConv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False,
                                    weight_quant=BinaryWeightPerChannelPo2)
        self.bn = BatchNorm2d(channels)
        self.downsample = stride != 1 or in_channels != channels
        if self.downsample:
            self.pool = nn.AvgPool2d(stride) if stride > 1 else nn.Identity()
            self.sc_quant = qnn.QuantIdentity(act_quant=Int8ActPo2)
            self.sc_conv = qnn.QuantConv2d(in_channels, channels, 1, bias=False,
                                           weight_quant=Int8WeightPerChannelFixedPoint)
            self.sc_bn = BatchNorm2d(channels)

    def shortcut(self, x, act):
        if not self.downsample:
            return x
        return act(self.sc_bn(self.sc_conv(self.sc_quant(self.pool(x)))))

    def forward(self, x, act):
        y = act(self.bn(self.conv(self.sign(x))))
        return act(y + self.shortcut(x, act))


class BiRealNet(nn.Module):
    """The binary network; ``forward`` is the binary branch only (what is exported).
    ``latent_branch`` is a :class:`LatentBranch` or ``None``; it is never called by
    ``forward`` and owns no parameters or buffers."""

    def __init__(self, config: BNNConfig, latent_branch: bool = False):
        super().__init__()
        self.config = config
        k = config.stem_kernel
        self.inp = qnn.QuantIdentity(act_quant=Int8ActPo2)
        self.stem_conv = qnn.QuantConv2d(config.in_channels, config.stem_channels, k, stride=config.stem_stride,
                                         padding=k // 2, bias=False, weight_quant=Int8WeightPerChannelFixedPoint)
        self.stem_bn = BatchNorm2d(config.stem_channels)
        self.stem_pool = nn.MaxPool2d(3, stride=2, padding=1) if config.stem_pool else nn.Identity()
        stages, c = [], config.stem_channels
        for channels, convs, stride in config.stages:
            stages.append(Stage(c, channels, convs, stride))
            c = channels
        self.stages = nn.ModuleList(stages)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.head_quant = qnn.QuantIdentity(act_quant=Int8ActPo2, return_quant_tensor=True)
        self.fc = qnn.QuantLinear(c, config.num_classes, bias=True, weight_quant=Int8WeightPerChannelFixedPoint,
                                  bias_quant=Int32Bias)
        self.latent_branch = LatentBranch() if latent_branch else None

    def forward(self, x):
        x = self.stages[0].act(self.stem_bn(self.stem_conv(self.inp(x))))
        x = self.stem_pool(x)
        for s in self.stages:
            x = s(x)
        x = torch.flatten(self.gap(x), 1)
        return self.fc(self.head_quant(x))


class LatentBranch(nn.Module):
    """The real-valued branch of latent-weight supervision (training only).

    ``branch(net, x)`` runs ``net``'s architecture on the float input with: the latent
    (unquantized) conv/linear weights and biases of ``net``; no activation quantizers;
    :func:`approx_sign_poly` in place of sign; every BatchNorm with ``net``'s affine
    parameters and the branch's own batch statistics (running statistics untouched).
    It owns nothing, so adding or removing it changes neither ``state_dict`` nor
    ``net(x)`` nor the export.
    """

    @staticmethod
    def _bn(bn: nn.BatchNorm2d, x):
        return F.batch_norm(x, None, None, bn.weight, bn.bias, True, 0.0, bn.eps)

    def forward(self, net: BiRealNet, x):
        c = net.stem_conv
        h = self._bn(net.stem_bn, F.conv2d(x, c.weight, None, c.stride, c.padding))
        h = net.stem_pool(h)
        for stage in net.stages:
            for b in stage.blocks:
                y = self._bn(b.bn, F.conv2d(approx_sign_poly(h), b.conv.weight, None, b.conv.stride, b.conv.padding))
                if b.downsample:
                    h = self._bn(b.sc_bn, F.conv2d(b.pool(h), b.sc_conv.weight))
                h = y + h
        h = torch.flatten(net.gap(h), 1)
        return F.linear(h, net.fc.weight, net.fc.bias)


def build_bnn(config: str | BNNConfig = "tiny", seed: int = 0, latent_branch: bool = False) -> BiRealNet:
    """A freshly initialised :class:`BiRealNet` (``torch.manual_seed(seed)``), train mode.

    ``latent_branch`` attaches a :class:`LatentBranch` (it consumes no random numbers, so
    the same ``seed`` gives the same parameters either way)."""
    cfg = _config(config)
    torch.manual_seed(int(seed))
    return BiRealNet(cfg, latent_branch=latent_branch)


def count_parameters(model: nn.Module) -> int:
    """Conv and linear weights and biases plus BatchNorm affine parameters (the network's
    weights; Brevitas' learned quantizer scales are not counted)."""
    n = 0
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)):
            n += sum(p.numel() for p in (m.weight, m.bias) if p is not None)
    return n


def bnn_loss(logits_bin, logits_real, target, kd_weight: float = 1.0, temperature: float = 2.0):
    """``CE(binary) + CE(real) + kd_weight * T^2 * KL(p_real || p_bin)`` at temperature
    ``T``, the real logits detached (teacher). ``logits_real=None``: ``CE(binary)``."""
    loss = F.cross_entropy(logits_bin, target)
    if logits_real is None:
        return loss
    t = float(temperature)
    teacher = F.log_softmax(logits_real.detach() / t, dim=1)
    student = F.log_softmax(logits_bin / t, dim=1)
    kl = F.kl_div(student, teacher, reduction="batchmean", log_target=True)
    return loss + F.cross_entropy(logits_real, target) + kd_weight * t * t * kl


# --------------------------------------------------------------------------- data / training

def digits():
    """``(x_train, y_train, x_test, y_test)`` from scikit-learn's bundled ``load_digits``:
    ``x`` float32 ``(n, 1, 8, 8)`` = pixel / 16 in ``[0, 1]`` (multiples of 1/16),
    ``y`` int64. The first :data:`TRAIN_SIZE` samples train, the rest test."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise RuntimeError("bnn: the 'tiny' data needs scikit-learn (pip install scikit-learn, or the "
                           "'minilm' extra)") from e
    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    return x[:TRAIN_SIZE], y[:TRAIN_SIZE], x[TRAIN_SIZE:], y[TRAIN_SIZE:]


@torch.no_grad()
def evaluate(model: nn.Module, x, y, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` in eval mode (its mode is restored afterwards)."""
    was = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), batch_size):
        correct += int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum())
    model.train(was)
    return correct / len(x)


class _Threads:
    def __init__(self, n: int | None):
        self.n, self.old = n, None

    def __enter__(self):
        if self.n is not None:
            self.old = torch.get_num_threads()
            torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        if self.old is not None:
            torch.set_num_threads(self.old)


def train_one(config: str | BNNConfig = "tiny", seed: int = 0, latent_branch: bool = True, epochs: int = 15,
              lr: float = 5e-3, batch_size: int = 64, kd_weight: float = 1.0, temperature: float = 2.0,
              data=None, threads: int | None = 1) -> tuple[BiRealNet, float]:
    """Train one network on ``data`` (default :func:`digits`) and return ``(eval model,
    test accuracy)``.

    Adam (``lr``, cosine decay to 0 over all steps, no weight decay), batches drawn by a
    ``torch.Generator`` seeded with ``seed``; the loss is :func:`bnn_loss` (the real
    branch only when ``latent_branch``). Deterministic for a given thread count
    (``threads``, default 1; ``None`` leaves torch's setting)."""
    cfg = _config(config)
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"bnn.train_one: epochs={epochs} and batch_size={batch_size} must be >= 1")
    x_tr, y_tr, x_te, y_te = data if data is not None else digits()
    with _Threads(threads):
        model = build_bnn(cfg, seed, latent_branch=latent_branch)
        gen = torch.Generator().manual_seed(int(seed))
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        steps = epochs * math.ceil(len(x_tr) / batch_size)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
        model.train()
        for _ in range(epochs):
            perm = torch.randperm(len(x_tr), generator=gen)
            for i in range(0, len(x_tr), batch_size):
                idx = perm[i:i + batch_size]
                xb, yb = x_tr[idx], y_tr[idx]
                real = model.latent_branch(model, xb) if model.latent_branch is not None else None
                loss = bnn_loss(model(xb), real, yb, kd_weight, temperature)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
        model.eval()
        return model, evaluate(model, x_te, y_te)


def _summary(accs: list[float]) -> dict:
    a = np.asarray(accs, dtype=np.float64)
    return {"acc": [float(v) for v in a], "mean": float(a.mean()), "std": float(a.std(ddof=1)) if len(a) > 1 else 0.0}


def train_bnn(config: str = "tiny", latent_branch: bool = True, seeds: Iterable[int] = (0, 1, 2), epochs: int = 15,
              baseline: bool = True, return_models: bool = False, **kw) -> dict:
    """Train ``config`` for every seed, with the latent branch (if ``latent_branch``) and,
    if ``baseline``, without it on the same seeds.

    Returns ``{"config", "epochs", "seeds", "with_branch"?, "without_branch"?}``, each
    variant ``{"acc": [per seed], "mean", "std"}`` (sample std, ``ddof=1``), test accuracy
    in ``[0, 1]``; with ``return_models`` also ``"models": {variant: [eval models]}``.
    Other keyword arguments go to :func:`train_one`. Only ``tiny`` has data."""
    cfg = _config(config)
    if cfg.name != "tiny":
        raise ValueError(f"bnn.train_bnn: config {cfg.name!r} has no dataset here; trainable: tiny")
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("bnn.train_bnn: seeds is empty")
    variants = [latent_branch] + ([False] if baseline and latent_branch else [])
    data = kw.pop("data", None)
    data = digits() if data is None else data
    out: dict = {"config": cfg.name, "epochs": int(epochs), "seeds": seeds}
    models: dict = {}
    for v in variants:
        key = "with_branch" if v else "without_branch"
        accs = []
        for s in seeds:
            m, acc = train_one(cfg, s, latent_branch=v, epochs=epochs, data=data, **kw)
            accs.append(acc)
            models.setdefault(key, []).append(m)
        out[key] = _summary(accs)
    if return_models:
        out["models"] = models
    return out


# --------------------------------------------------------------------------- export / checkpoints

def export_bnn(model: BiRealNet, path: str | Path, batch_size: int = 1):
    """Export the eval binary network to QONNX at ``path`` (Brevitas ``export_qonnx``,
    TorchScript exporter) and return the loaded qonnx ``ModelWrapper``.

    The latent branch is never traced. The model's train/eval mode is restored afterwards.
    The file is Brevitas' graph with the initializers removed from the graph inputs, the
    input and output renamed and qonnx's ``InferShapes`` applied (static shapes, needed by
    ``execute_onnx``). One input :data:`INPUT_NAME`, float32
    ``(batch_size, C, H, W)``; one output :data:`OUTPUT_NAME`, float32
    ``(batch_size, num_classes)``. Deterministic: the same model gives a byte-identical file."""
    from brevitas.export import export_qonnx
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.transformation.general import RemoveStaticGraphInputs
    from qonnx.transformation.infer_shapes import InferShapes

    if not isinstance(model, BiRealNet):
        raise TypeError(f"bnn.export_bnn: expected a BiRealNet, got {type(model).__name__}")
    if batch_size < 1:
        raise ValueError(f"bnn.export_bnn: batch_size={batch_size} must be >= 1")
    cfg = model.config
    was = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            export_qonnx(model, torch.zeros(batch_size, cfg.in_channels, cfg.input_size, cfg.input_size),
                         export_path=str(path), dynamo=False)
    finally:
        model.train(was)
    # The TorchScript exporter lists every initializer as a graph input too (dropped here)
    # and names the image input after a trace counter ("x.647"; renamed). Then static
    # shapes for every tensor (execute_onnx needs them). No qonnx cleanup: its
    # GiveUniqueParameterTensors renames shared constants with random strings.
    wrapper = ModelWrapper(str(path)).transform(RemoveStaticGraphInputs(), cleanup=False)
    if len(wrapper.graph.input) != 1 or len(wrapper.graph.output) != 1:
        raise RuntimeError(f"bnn.export_bnn: expected one graph input and output, got "
                           f"{[i.name for i in wrapper.graph.input]} -> {[o.name for o in wrapper.graph.output]}")
    wrapper.rename_tensor(wrapper.graph.input[0].name, INPUT_NAME)
    wrapper.rename_tensor(wrapper.graph.output[0].name, OUTPUT_NAME)
    wrapper = wrapper.transform(InferShapes(), cleanup=False)
    wrapper.save(str(path))
    return wrapper


def save_checkpoint(model: BiRealNet, path: str | Path, **meta) -> None:
    """Write ``model`` (config, whether it carries a latent branch, ``state_dict``) and
    JSON-like ``meta`` to ``path`` with ``torch.save``."""
    torch.save({"format": CHECKPOINT_FORMAT, "config": dataclasses.asdict(model.config),
                "latent_branch": model.latent_branch is not None, "meta": dict(meta),
                "state_dict": model.state_dict()}, str(path))


def load_checkpoint(path: str | Path, latent_branch: bool | None = None) -> BiRealNet:
    """The eval :class:`BiRealNet` saved by :func:`save_checkpoint` (``latent_branch``
    overrides whether to attach the branch; it has no state either way)."""
    ck = torch.load(str(path), map_location="cpu", weights_only=True)
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"bnn.load_checkpoint: {path} is not a {CHECKPOINT_FORMAT} checkpoint")
    c = dict(ck["config"])
    c["stages"] = tuple(tuple(int(v) for v in s) for s in c["stages"])
    branch = ck["latent_branch"] if latent_branch is None else latent_branch
    model = BiRealNet(BNNConfig(**c), latent_branch=bool(branch))
    model.load_state_dict(ck["state_dict"])
    model.eval()
    return model
