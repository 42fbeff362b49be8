"""cocotb testbench of layernorm_core (sim/rtl/layernorm_core.v); not a pytest module.

Input: {"cases": [case, ...]}; a case gives the configuration (y_signed, shift S, eps
E), the parameter words (prm_g, prm_b: one packed int per beat address), the input
beats (data, keep, last), and the flow-control randomness (stall, seed). Output: per
case the output beats (data, keep, last) and the measured cycles (streamdrv).
"""
from __future__ import annotations

import random

import cocotb
from cocotb.triggers import FallingEdge
from streamdrv import Sink, Source, load_inputs, run_streams, save_outputs, start_clock_and_reset


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
        rng = random.Random(case.get("seed", 1))
        p = float(case.get("stall", 0.0))
        src = Source(dut.s_tvalid, dut.s_tready,
                     [(dut.s_tdata, case["data"]), (dut.s_tkeep, case["keep"]), (dut.s_tlast, case["last"])],
                     p_gap=p, rng=rng)
        out = Sink(dut.m_tvalid, dut.m_tready, [dut.m_tdata, dut.m_tkeep, dut.m_tlast], p_stall=p, rng=rng)
        n_out = len(case["data"])
        budget = 4 * (n_out * 3 + 200 * case["rows"] + 100) * (1 + int(10 * p))
        res = await run_streams(dut, [src], [out], n_out, budget)
        results.append({"data": [b[0] for b in res["beats"]], "keep": [b[1] for b in res["beats"]],
                        "last": [b[2] for b in res["beats"]], "cycles": res["cycles"]})
    save_outputs(results)
