"""cocotb testbench of the requantizer (sim/rtl/requant.v); not a pytest module.

Input JSON: ``{"acc": [...], "mult": [...], "shift": [...], "y_signed": [...], "ce": [...]}``,
one entry per clock cycle (``acc`` as a signed integer, the others non-negative). At the
falling edge before cycle t's rising edge the testbench drives cycle t's values; it
samples ``y`` at every falling edge, i.e. the register value after the previous rising
edge. Output JSON: ``{"y": [...]}``, the raw OUT_BITS-bit code (unsigned) sampled before
each cycle's rising edge, plus one final sample after the last edge. The checking
(pipeline model and ``codesign.sim.reference.requant``) is done by
tests/test_rtl_requant.py, independently of the RTL.
"""
from __future__ import annotations

import cocotb
from cocotb.clock import Clock
from cocotb.triggers import FallingEdge
from streamdrv import load_inputs, save_outputs


@cocotb.test()
async def requant_vectors(dut):
    spec = load_inputs()
    acc_bits = len(dut.acc)
    acc_mask = (1 << acc_bits) - 1
    n = len(spec["acc"])
    if any(len(spec[k]) != n for k in ("mult", "shift", "y_signed", "ce")):
        raise ValueError("tb_requant: acc, mult, shift, y_signed and ce need one value per cycle")
    Clock(dut.clk, 10, unit="ns").start()
    # defined values from the start, so that no X reaches a 4-state simulator's registers
    dut.ce.value = 0
    dut.acc.value = 0
    dut.mult.value = 0
    dut.shift.value = 0
    dut.y_signed.value = 0
    await FallingEdge(dut.clk)
    ys = []
    for t in range(n):
        ys.append(int(dut.y.value) if dut.y.value.is_resolvable else -1)
        dut.acc.value = spec["acc"][t] & acc_mask
        dut.mult.value = spec["mult"][t]
        dut.shift.value = spec["shift"][t]
        dut.y_signed.value = spec["y_signed"][t]
        dut.ce.value = spec["ce"][t]
        await FallingEdge(dut.clk)
    ys.append(int(dut.y.value) if dut.y.value.is_resolvable else -1)
    save_outputs({"y": ys})
