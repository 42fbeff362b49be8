"""cocotb testbench of softmax_core (sim/rtl/softmax_core.v); not a pytest module.

Input: {"cases": [case, ...]}; a case gives the exp table (256 entries), the input
signedness (x_signed), the input beats (data, keep, last), the number of output beats
and the flow-control randomness (stall, seed). Output: per case the output beats
(data, keep, last) and the measured cycles (streamdrv).
"""
from __future__ import annotations

import random

import cocotb
from cocotb.triggers import FallingEdge
from streamdrv import Sink, Source, load_inputs, run_streams, save_outputs, start_clock_and_reset


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
        rng = random.Random(case.get("seed", 1))
        p = float(case.get("stall", 0.0))
        src = Source(dut.s_tvalid, dut.s_tready,
                     [(dut.s_tdata, case["data"]), (dut.s_tkeep, case["keep"]), (dut.s_tlast, case["last"])],
                     p_gap=p, rng=rng)
        out = Sink(dut.m_tvalid, dut.m_tready, [dut.m_tdata, dut.m_tkeep, dut.m_tlast], p_stall=p, rng=rng)
        n_out = len(case["data"])
        budget = 4 * (n_out * 3 + 64 * case["rows"] + 100) * (1 + int(10 * p))
        res = await run_streams(dut, [src], [out], n_out, budget)
        results.append({"data": [b[0] for b in res["beats"]], "keep": [b[1] for b in res["beats"]],
                        "last": [b[2] for b in res["beats"]], "cycles": res["cycles"]})
    save_outputs(results)
