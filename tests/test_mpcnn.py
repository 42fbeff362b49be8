"""mpcnn (codesign.quantize.mpcnn): per-layer bit widths reach the exported QONNX graph."""
from __future__ import annotations

import numpy as np
import pytest
from qonnx.core.modelwrapper import ModelWrapper

from codesign.quantize import mpcnn as M

BITS = {"conv1": 8, "b1c1": 3, "b1c2": 5, "down": 2, "b2c1": 6, "fc": 4}


def _weight_bits(model: ModelWrapper) -> list[int]:
    """Bit width of the Quant node feeding each Conv/Gemm weight input, in graph order."""
    out = []
    for n in model.graph.node:
        if n.op_type not in ("Conv", "Gemm", "MatMul"):
            continue
        q = model.find_producer(n.input[1])
        assert q is not None and q.op_type == "Quant", n.name
        out.append(int(model.get_initializer(q.input[3])))
    return out


def test_per_layer_bits_in_export(tmp_path):
    m = M.build_mpcnn(BITS, seed=1)
    M.export_mpcnn(m, tmp_path / "m.onnx")
    model = ModelWrapper(str(tmp_path / "m.onnx"))
    assert _weight_bits(model) == [BITS[n] for n in M.LAYERS]
    kinds = sorted({n.op_type for n in model.graph.node})
    assert kinds == ["Add", "AveragePool", "Conv", "Flatten", "Gemm", "Quant", "Relu"]


def test_weights_are_power_of_two_scaled_codes():
    import torch

    m = M.build_mpcnn(BITS, seed=0)
    m.eval()
    for name in M.LAYERS:
        qw = getattr(m, name).quant_weight()
        s = qw.scale.detach().reshape(-1).numpy()
        assert np.array_equal(s, 2.0 ** np.round(np.log2(s))), name  # power-of-two scales
        codes = (qw.value / qw.scale).detach()
        assert torch.equal(codes, codes.round()), name
        lim = 2 ** (BITS[name] - 1) - 1  # narrow range
        assert int(codes.abs().max()) <= lim, name


def test_bad_bits_one_line():
    with pytest.raises(ValueError, match=r"layer down: 9-bit weights not supported \(2..8\)"):
        M.build_mpcnn({**BITS, "down": 9})
    with pytest.raises(ValueError, match="no bit width for layer 'fc'"):
        M.build_mpcnn({k: v for k, v in BITS.items() if k != "fc"})
    with pytest.raises(ValueError, match="unknown config"):
        M.build_mpcnn(8, config="huge")


def test_layer_shapes_match_the_model():
    import torch

    m = M.build_mpcnn(8)
    shapes = M.layer_shapes()
    seen = {}
    hooks = [getattr(m, n).register_forward_hook(
        lambda mod, i, o, n=n: seen.__setitem__(n, int(np.prod(o.shape[2:])) if o.dim() == 4 else 1))
        for n in M.LAYERS]
    m.eval()
    with torch.no_grad():
        m(torch.zeros(1, 1, 8, 8))
    for h in hooks:
        h.remove()
    for n in M.LAYERS:
        w = getattr(m, n).weight
        assert shapes[n]["oc"] == w.shape[0] and shapes[n]["k"] == int(np.prod(w.shape[1:])), n
        assert shapes[n]["pixels"] == seen[n], n
