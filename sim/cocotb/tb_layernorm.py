"""cocotb testbench of layernorm_core (sim/rtl/layernorm_core.v); not a pytest module.

Input: {"cases": [case, ...]}; a case gives the configuration (y_signed, shift S, eps
E), the parameter words (prm_g, prm_b: one packed int per beat address), the input
beats (data, keep, last), and the flow-control randomness (stall, seed). Output: per
case the output beats (data, keep, last) and the measured cycles (streamdrv).
"""
from __future__ import annotations

import cocotb
from cocotb.triggers import FallingEdge
from streamdrv import load_inputs, run_row_core, save_outputs, start_clock_and_reset


@cocotb.test()
async def layernorm_cases(dut):
    spec = load_inputs()
    await start_clock_and_reset(dut, idle=("s_tvalid", "prm_we", "m_tready"))
    results = []
    for case in spec["cases"]:
        dut.cfg_y_signed.value = case["y_signed"]
        dut.cfg_shift.value = case["S"]
        dut.cfg_eps.value = case["E"]
        for addr, (g, b) in enumerate(zip(case["prm_g"], case["prm_b"])):
            dut.prm_we.value = 1
            dut.prm_addr.value = addr
            dut.prm_g.value = g
            dut.prm_b.value = b
            await FallingEdge(dut.clk)
        dut.prm_we.value = 0
        results.append(await run_row_core(dut, case, 200))
    save_outputs(results)
