"""``mpcnn``: a small ResNet-style CNN with one weight bit width per layer (mixed precision).

The model the mixed-precision and pruning co-design searches work on
(:mod:`codesign.quantize.mixed_precision`, :mod:`codesign.quantize.pruning`). Every scale is
a power of two (Brevitas fixed-point quantizers), so the integer path the compiler emits
is exact against QONNX's float execution (requant multipliers are powers of two; see
``docs/arithmetic.md`` §3).

``tiny`` (8×8 greyscale digits from ``sklearn.datasets.load_digits``; nothing downloads)::

    inp    QuantIdentity, int8, scale 2^-6 after x/16 in [0, 1]
    conv1  QuantConv2d 1->16, 3x3, pad 1, bias          + QuantReLU (uint8)      8x8
    b1c1   QuantConv2d 16->16, 3x3, pad 1, bias         + QuantReLU              8x8
    b1c2   QuantConv2d 16->16, 3x3, pad 1, bias         -> + shortcut, QuantReLU 8x8
    down   QuantConv2d 16->32, 3x3, stride 2, pad 1     + QuantReLU              4x4
    b2c1   QuantConv2d 32->32, 3x3, pad 1, bias         + QuantReLU              4x4
    pool   AvgPool2d 4 (global, torch), QuantIdentity (int8)
    fc     QuantLinear 32->10, bias                     (logits)

No BatchNorm: a per-channel BN would turn the power-of-two requant multipliers into float
ones; the biases (``Int32Bias``) take its place for a net this small. Weights are
per-output-channel, power-of-two scaled, narrow range, ``bits[layer]`` bits (2..8);
activations are ``act_bits`` (default 8). The residual add quantizes both branches to the
same int8 grid first (a shared ``QuantIdentity``), as the contract's add (§7) expects.

Data split: scikit-learn's order, the first 1400 of the 1797 digits train and the remaining
397 test (the split :mod:`codesign.quantize.bnn` uses too; the last writers' digits are
harder than a random split's).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Mapping

import numpy as np

__all__ = ["LAYERS", "CONFIGS", "digits", "build_mpcnn", "build_mpcnn_fp32", "train_mpcnn", "evaluate", "export_mpcnn",
           "layer_shapes", "TrainResult"]

#: Quantized layers in forward order (the names the per-layer bit widths use).
LAYERS: tuple[str, ...] = ("conv1", "b1c1", "b1c2", "down", "b2c1", "fc")
CONFIGS: tuple[str, ...] = ("tiny",)
BITS_SUPPORTED = (2, 3, 4, 5, 6, 7, 8)
TRAIN_SIZE = 1400


def digits():
    """``(x_train, y_train, x_test, y_test)`` as torch tensors, ``x`` of shape ``(n, 1, 8, 8)``
    in ``[0, 1]`` (pixel / 16), split as the module docstring says."""
    import torch
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images / 16.0, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(d.target, dtype=torch.long)
    return x[:TRAIN_SIZE], y[:TRAIN_SIZE], x[TRAIN_SIZE:], y[TRAIN_SIZE:]


def _bits(bits: int | Mapping[str, int]) -> dict[str, int]:
    if isinstance(bits, (int, np.integer)):
        bits = {n: int(bits) for n in LAYERS}
    out = {}
    for n in LAYERS:
        if n not in bits:
            raise ValueError(f"mpcnn: no bit width for layer {n!r} (layers: {', '.join(LAYERS)})")
        b = int(bits[n])
        if b not in BITS_SUPPORTED:
            raise ValueError(f"mpcnn: layer {n}: {b}-bit weights not supported (2..8)")
        out[n] = b
    extra = set(bits) - set(LAYERS)
    if extra:
        raise ValueError(f"mpcnn: unknown layer(s) {sorted(extra)} (layers: {', '.join(LAYERS)})")
    return out


def build_mpcnn(bits: int | Mapping[str, int] = 8, act_bits: int = 8, seed: int = 0, config: str = "tiny"):
    """The ``tiny`` mpcnn with ``bits`` (one int, or one per name of :data:`LAYERS`) weight
    bits and ``act_bits`` activation bits, initialised with ``torch.manual_seed(seed)``."""
    import torch
    import brevitas.nn as qnn
    from brevitas.quant import (Int8ActPerTensorFixedPoint, Int8WeightPerTensorFixedPoint, Int32Bias,
                                Uint8ActPerTensorFixedPoint)

    if config not in CONFIGS:
        raise ValueError(f"mpcnn: unknown config {config!r} (supported: {', '.join(CONFIGS)})")
    if not 2 <= int(act_bits) <= 8:
        raise ValueError(f"mpcnn: act_bits={act_bits} not supported (2..8)")
    wb = _bits(bits)

    class WeightQ(Int8WeightPerTensorFixedPoint):
        scaling_per_output_channel = True
        narrow_range = True

    torch.manual_seed(seed)

    def conv(name, cin, cout, stride=1):
        return qnn.QuantConv2d(cin, cout, 3, stride=stride, padding=1, bias=True, weight_quant=WeightQ,
                               weight_bit_width=wb[name], bias_quant=Int32Bias, return_quant_tensor=True)

    def relu():
        return qnn.QuantReLU(act_quant=Uint8ActPerTensorFixedPoint, bit_width=act_bits, return_quant_tensor=True)

    class MPCNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, bit_width=8,
                                         return_quant_tensor=True)
            self.conv1, self.r1 = conv("conv1", 1, 16), relu()
            self.b1c1, self.r2 = conv("b1c1", 16, 16), relu()
            self.b1c2 = conv("b1c2", 16, 16)
            # both residual operands on one int8 grid (shared quantizer) before the add
            self.res = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, bit_width=8,
                                         return_quant_tensor=True)
            self.r3 = relu()
            self.down, self.r4 = conv("down", 16, 32, stride=2), relu()
            self.b2c1, self.r5 = conv("b2c1", 32, 32), relu()
            self.pool = torch.nn.AvgPool2d(kernel_size=4, stride=4)
            self.pq = qnn.QuantIdentity(act_quant=Int8ActPerTensorFixedPoint, bit_width=8,
                                        return_quant_tensor=True)
            self.fc = qnn.QuantLinear(32, 10, bias=True, weight_quant=WeightQ, weight_bit_width=wb["fc"],
                                      bias_quant=Int32Bias, return_quant_tensor=False)
            self.bits = dict(wb)
            self.act_bits = int(act_bits)

        def forward(self, x):
            x = self.inp(x)
            x = self.r1(self.conv1(x))
            y = self.r2(self.b1c1(x))
            y = self.b1c2(y)
            x = self.r3(self.res(y) + self.res(x))
            x = self.r4(self.down(x))
            x = self.r5(self.b2c1(x))
            x = self.pq(self.pool(x))
            return self.fc(x.flatten(1))

    return MPCNN()


def build_mpcnn_fp32(seed: int = 0):
    """The same network in plain float torch (no quantizers; ReLU, the same residual and
    pooling): the fp32 reference accuracy of the tiny config. Same layer names."""
    import torch
    from torch import nn

    torch.manual_seed(seed)

    class MPCNNFloat(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
            self.b1c1 = nn.Conv2d(16, 16, 3, padding=1)
            self.b1c2 = nn.Conv2d(16, 16, 3, padding=1)
            self.down = nn.Conv2d(16, 32, 3, stride=2, padding=1)
            self.b2c1 = nn.Conv2d(32, 32, 3, padding=1)
            self.pool = nn.AvgPool2d(4, 4)
            self.fc = nn.Linear(32, 10)

        def forward(self, x):
            x = torch.relu(self.conv1(x))
            x = torch.relu(self.b1c2(torch.relu(self.b1c1(x))) + x)
            x = torch.relu(self.b2c1(torch.relu(self.down(x))))
            return self.fc(self.pool(x).flatten(1))

    return MPCNNFloat()


def layer_shapes() -> dict[str, dict[str, int]]:
    """Per quantized layer: ``oc``, ``k`` (inputs per output: ``ic·kh·kw``), ``pixels``
    (output positions per inference) and ``macs`` (``oc·k·pixels``) of the tiny config."""
    spec = {"conv1": (16, 1 * 9, 64), "b1c1": (16, 16 * 9, 64), "b1c2": (16, 16 * 9, 64),
            "down": (32, 16 * 9, 16), "b2c1": (32, 32 * 9, 16), "fc": (10, 32, 1)}
    return {n: {"oc": oc, "k": k, "pixels": px, "macs": oc * k * px} for n, (oc, k, px) in spec.items()}


def evaluate(model, x, y, batch: int = 512) -> float:
    """Top-1 accuracy of ``model`` (eval mode) on ``(x, y)``."""
    import torch

    model.eval()
    hits = 0
    with torch.no_grad():
        for i in range(0, len(y), batch):
            hits += int((model(x[i:i + batch]).argmax(1) == y[i:i + batch]).sum())
    return hits / len(y)


@dataclass
class TrainResult:
    test_acc: float
    train_loss: float
    epochs: int


def train_mpcnn(model, epochs: int = 20, lr: float = 5e-3, batch: int = 64, seed: int = 0,
                data=None, log=None) -> TrainResult:
    """Adam on the cross-entropy (QAT: the forward is Brevitas' fake-quantized one), cosine
    learning-rate decay, seeded shuffles; returns the final test accuracy (no selection on
    the test set)."""
    import torch

    xtr, ytr, xte, yte = data if data is not None else digits()
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * -(-len(ytr) // batch)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    loss_fn = torch.nn.CrossEntropyLoss()
    last = float("nan")
    for e in range(int(epochs)):
        model.train()
        perm = torch.randperm(len(ytr), generator=gen)
        tot = 0.0
        for i in range(0, len(ytr), batch):
            idx = perm[i:i + batch]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xtr[idx]), ytr[idx])
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * len(idx)
        last = tot / len(ytr)
        if log is not None:
            log(f"epoch {e + 1}/{epochs}: loss {last:.4f}")
    return TrainResult(test_acc=evaluate(model, xte, yte), train_loss=last, epochs=int(epochs))


def with_bits(model, bits: Mapping[str, int], act_bits: int | None = None, seed: int = 0):
    """A new mpcnn with ``bits`` whose float parameters (latent weights, biases, activation
    scales' parameters where shapes agree) are copied from ``model``: the start of the
    mixed-precision fine-tuning."""
    new = build_mpcnn(bits, act_bits if act_bits is not None else model.act_bits, seed=seed)
    src = copy.deepcopy(model.state_dict())
    own = new.state_dict()
    keep = {k: v for k, v in src.items() if k in own and own[k].shape == v.shape}
    new.load_state_dict(keep, strict=False)
    return new


def export_mpcnn(model, path) -> None:
    """QONNX export (Brevitas ``export_qonnx`` through the TorchScript exporter, ``dynamo=False``:
    one self-contained file; input ``(1, 1, 8, 8)``), warnings silenced."""
    import warnings

    import torch
    from brevitas.export import export_qonnx

    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(model, torch.zeros(1, 1, 8, 8), export_path=str(path), dynamo=False)
