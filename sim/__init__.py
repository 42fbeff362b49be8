"""codesign.sim: the numpy integer reference and RTL simulation.

The reference implements the arithmetic contract (docs/arithmetic.md) with
plain integer numpy; RTL simulation (cocotb + Verilator/Icarus) checks the
generated hardware against it.
"""
