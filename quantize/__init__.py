"""codesign.quantize: Brevitas models, quantization-aware training and the
co-design searches (bit widths, sparsity) that pick a network.

This stage knows no board: it produces a trained, quantized model and its
QONNX export; everything FPGA-specific happens in ``codesign.accel``.
"""
