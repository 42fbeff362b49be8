"""codesign.hls: the HLS C++ kernel library and its C-simulation driver.

The headers live in ``include/codesign/`` (shipped as package data; find them
with ``importlib.resources.files("codesign.hls") / "include"``). The C-sim
driver compiles kernels with g++ against the ap_types headers and checks them
bit-exactly against the numpy reference in ``codesign.sim``.
"""
