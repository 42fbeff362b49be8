"""codesign.accel: the compiler from QONNX to the accelerator IR, folding
(parallelism per layer), resource and latency cost models, board
descriptions, and the orchestration behind the ``codesign`` CLI.

Importing this package must stay cheap: no torch, no onnx at import time.
"""
