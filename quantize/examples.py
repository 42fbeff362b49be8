"""Small example Brevitas models, exported to QONNX: what a user hands to ``codesign build``.

Each ``export_*`` function builds the model with a fixed seed, calibrates it
deterministically (activation statistics from seeded random batches, or seeded BatchNorm
statistics), exports it with Brevitas' ``export_qonnx`` to the given path and returns the
loaded ``ModelWrapper``. The same call gives the same weights, scales and graph every time.

* :func:`export_mlp_pow2` - a user-style MLP 16-32-24-10 with fixed-point (power-of-two)
  scales: ``QuantIdentity`` input, ``QuantLinear`` layers with ``Int32Bias``, ``QuantReLU``,
  a quantized output. Lowers to ``matmul``/``requant`` whose codes equal QONNX's float path
  (up to exact rounding ties, see ``docs/ir.md``).
* :func:`export_mlp_pow2_small` - the same with one hidden layer (16-32-10).
* :func:`export_mlp_float` - the 16-32-24-10 MLP with float scales (per-channel weights in
  the first layer): requant within 1 LSB of QONNX at near-ties.
* :func:`export_bnn` - a binary MLP 24-32-16: bipolar (sign) activations and weights with
  BatchNorm between the layers, which the lowering folds into thresholds.

:func:`build_mlp` and :func:`build_bnn` return the calibrated eval ``torch`` modules and
:func:`export` writes any module, for variations. torch and Brevitas are imported on call.
"""
from __future__ import annotations

import warnings
from pathlib import Path

from qonnx.core.modelwrapper import ModelWrapper

__all__ = ["build_mlp", "build_bnn", "export", "export_mlp_pow2", "export_mlp_pow2_small", "export_mlp_float",
           "export_bnn"]


def export(module, in_features: int, path: str | Path) -> ModelWrapper:
    """Export ``module`` (input ``(1, in_features)``) to QONNX at ``path``, Brevitas' export
    warnings silenced, and load it."""
    import torch
    from brevitas.export import export_qonnx
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_qonnx(module, torch.zeros(1, in_features), export_path=str(path))
    return ModelWrapper(str(path))


def build_mlp(hidden: tuple[int, ...] = (32, 24), pow2: bool = True, seed: int = 0, in_features: int = 16,
              out_features: int = 10):
    """A calibrated eval MLP ``in_features -> *hidden -> out_features``.

    ``QuantIdentity`` input, ``QuantLinear`` layers with ``Int32Bias`` and quant-tensor
    outputs, a ``QuantReLU`` after each hidden layer, a quantized ``QuantIdentity`` output.
    Int8 activations (uint8 after the ReLUs) and int8 weights, with fixed-point
    (power-of-two) scales if ``pow2``, else float scales with per-channel weights in the
    first layer. Seeded with ``seed``; the scales are initialised from 8 training-mode
    batches of ``randn(64, in_features) * 2``.

    Modules are named ``inp``, ``fc1`` ... ``fcN``, ``relu1`` ... (``relu`` when there is a
    single hidden layer) and ``out``: the names the exported graph's nodes carry.
    """
    import torch
    import brevitas.nn as qnn
    from brevitas.quant import (Int8ActPerTensorFixedPoint, Int8ActPerTensorFloat, Int8WeightPerChannelFloat,
                                Int8WeightPerTensorFixedPoint, Int8WeightPerTensorFloat, Int32Bias,
                                Uint8ActPerTensorFixedPoint, Uint8ActPerTensorFloat)
    torch.manual_seed(seed)
    act, relu = ((Int8ActPerTensorFixedPoint, Uint8ActPerTensorFixedPoint) if pow2
                 else (Int8ActPerTensorFloat, Uint8ActPerTensorFloat))
    w1, w = ((Int8WeightPerTensorFixedPoint,) * 2 if pow2 else (Int8WeightPerChannelFloat, Int8WeightPerTensorFloat))
    widths = [in_features, *hidden, out_features]
    relu_names = ["relu"] if len(hidden) == 1 else [f"relu{i}" for i in range(1, len(hidden) + 1)]

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            kw = dict(bias=True, bias_quant=Int32Bias, return_quant_tensor=True)
            self.inp = qnn.QuantIdentity(act_quant=act, return_quant_tensor=True)
            self.layers = []  # (fc name, relu name or None), in forward order
            for i, (k, n) in enumerate(zip(widths[:-1], widths[1:])):
                setattr(self, f"fc{i + 1}", qnn.QuantLinear(k, n, weight_quant=w1 if i == 0 else w, **kw))
                r = relu_names[i] if i < len(hidden) else None
                if r is not None:
                    setattr(self, r, qnn.QuantReLU(act_quant=relu, return_quant_tensor=True))
                self.layers.append((f"fc{i + 1}", r))
            self.out = qnn.QuantIdentity(act_quant=act)

        def forward(self, x):
            x = self.inp(x)
            for fc, r in self.layers:
                x = getattr(self, fc)(x)
                if r is not None:
                    x = getattr(self, r)(x)
            return self.out(x)

    m = MLP()
    m.train()
    with torch.no_grad():  # collect activation statistics (scale initialisation)
        for _ in range(8):
            m(torch.randn(64, in_features) * 2)
    m.eval()
    return m


def build_bnn(seed: int = 2):
    """A binary eval MLP 24-32-16: ``SignedBinaryActPerTensorConst`` (sign) activations,
    ``SignedBinaryWeightPerTensorConst`` weights, no biases, ``BatchNorm1d`` after each
    linear layer with seeded random statistics and affine parameters (negative gammas
    included: channels the lowering negates)."""
    import torch
    import brevitas.nn as qnn
    from brevitas.quant import SignedBinaryActPerTensorConst, SignedBinaryWeightPerTensorConst
    torch.manual_seed(seed)

    class BNN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            kw = dict(bias=False, weight_quant=SignedBinaryWeightPerTensorConst)
            self.inp = qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True)
            self.fc1 = qnn.QuantLinear(24, 32, **kw)
            self.bn1 = torch.nn.BatchNorm1d(32)
            self.a1 = qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst, return_quant_tensor=True)
            self.fc2 = qnn.QuantLinear(32, 16, **kw)
            self.bn2 = torch.nn.BatchNorm1d(16)
            self.a2 = qnn.QuantIdentity(act_quant=SignedBinaryActPerTensorConst)

        def forward(self, x):
            return self.a2(self.bn2(self.fc2(self.a1(self.bn1(self.fc1(self.inp(x)))))))

    m = BNN()
    with torch.no_grad():
        for bn in (m.bn1, m.bn2):
            bn.running_mean.uniform_(-4, 4)
            bn.running_var.uniform_(0.5, 6)
            bn.weight.uniform_(-1, 1)  # negative gamma: channels negated by the lowering
            bn.bias.uniform_(-1, 1)
    m.eval()
    return m


def export_mlp_pow2(path: str | Path) -> ModelWrapper:
    """The 16-32-24-10 MLP with power-of-two scales (seed 0), exported to ``path``.

    Demonstrates the exact path: every scale a power of two, Int32 biases folded exactly,
    ReLUs folded into unsigned 8-bit requants."""
    return export(build_mlp((32, 24), pow2=True, seed=0), 16, path)


def export_mlp_pow2_small(path: str | Path) -> ModelWrapper:
    """The 16-32-10 MLP (one hidden layer) with power-of-two scales (seed 0), exported to
    ``path``: the smallest user-style model for ``codesign build`` / ``predict``."""
    return export(build_mlp((32,), pow2=True, seed=0), 16, path)


def export_mlp_float(path: str | Path) -> ModelWrapper:
    """The 16-32-24-10 MLP with float scales and per-channel first-layer weights (seed 1),
    exported to ``path``.

    Demonstrates arbitrary scales: requant multipliers/shifts approximate them, within
    1 LSB of QONNX's float path at near-ties."""
    return export(build_mlp((32, 24), pow2=False, seed=1), 16, path)


def export_bnn(path: str | Path) -> ModelWrapper:
    """The binary 24-32-16 MLP with BatchNorm (seed 2), exported to ``path``.

    Demonstrates bipolar activations and weights and BatchNorm folded into thresholds."""
    return export(build_bnn(2), 24, path)
