"""qonnx's float execution of a QONNX file on a batch: the peer every codesign build is
compared with (``predict`` == this, with ``==``, wherever docs/ir.md §5 says the lowering
is exact).

:func:`execute_qonnx` sets the file's batch axis to ``len(x)``, infers shapes and runs
``qonnx.core.onnx_exec.execute_onnx`` (onnxruntime for standard ops, qonnx's own
``Quant``/``BipolarQuant``/``MultiThreshold``, codesign's custom ops through their
domain). The file is not modified.
"""
from __future__ import annotations

import os

import numpy as np

__all__ = ["execute_qonnx"]


def execute_qonnx(path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """The first graph output of the QONNX model at ``path`` for the batch ``x`` (fed to its
    first graph input)."""
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.change_batchsize import ChangeBatchSize
    from qonnx.transformation.infer_shapes import InferShapes

    m = ModelWrapper(str(path)).transform(ChangeBatchSize(len(x))).transform(InferShapes())
    return execute_onnx(m, {m.graph.input[0].name: x})[m.graph.output[0].name]
