"""cocotb testbench of softmax_core (sim/rtl/softmax_core.v); not a pytest module.

Input: {"cases": [case, ...]}; a case gives the exp table (256 entries), the input
signedness (x_signed), the input beats (data, keep, last), the number of output beats
and the flow-control randomness (stall, seed). Output: per case the output beats
(data, keep, last) and the measured cycles (streamdrv).
"""
from __future__ import annotations

import cocotb
from cocotb.triggers import FallingEdge
from streamdrv import load_inputs, run_row_core, save_outputs, start_clock_and_reset


@cocotb.test()
async def softmax_cases(dut):
    spec = load_inputs()
    await start_clock_and_reset(dut, idle=("s_tvalid", "tbl_we", "m_tready"))
    results = []
    table = None
    for case in spec["cases"]:
        dut.cfg_x_signed.value = case["x_signed"]
        if case["table"] != table:
            table = case["table"]
            for k, t in enumerate(table):
                dut.tbl_we.value = 1
                dut.tbl_addr.value = k
                dut.tbl_data.value = t
                await FallingEdge(dut.clk)
            dut.tbl_we.value = 0
        results.append(await run_row_core(dut, case, 64))
    save_outputs(results)
