"""cocotb testbench of pe_array (sim/rtl/pe_array.v); not a pytest module.

Input: {"cases": [case, ...]}; a case gives the configuration (mode, a_signed,
y_signed), the parameter slots to write first (qp: [{slot, bias, mult, shift}] as packed
ints), the input beats (act, last, user, qslot, wgt: one value per beat), the number of
output rows and the flow-control randomness (stall, seed). Output: per case the output
beats (codes, accumulators, tuser), d_pe and the measured cycles (streamdrv).
"""
from __future__ import annotations

import random

import cocotb
from cocotb.triggers import FallingEdge
from streamdrv import Sink, Source, load_inputs, run_streams, save_outputs, start_clock_and_reset


@cocotb.test()
async def pe_array_cases(dut):
    spec = load_inputs()
    await start_clock_and_reset(dut, idle=("s_act_tvalid", "s_wgt_tvalid", "qp_we", "m_tready"))
    results = []
    for case in spec["cases"]:
        dut.cfg_mode.value = case["mode"]
        dut.cfg_a_signed.value = case["a_signed"]
        dut.cfg_y_signed.value = case["y_signed"]
        for q in case["qp"]:
            dut.qp_we.value = 1
            dut.qp_addr.value = q["slot"]
            dut.qp_bias.value = q["bias"]
            dut.qp_mult.value = q["mult"]
            dut.qp_shift.value = q["shift"]
            await FallingEdge(dut.clk)
        dut.qp_we.value = 0
        rng = random.Random(case.get("seed", 1))
        p = float(case.get("stall", 0.0))
        act = Source(dut.s_act_tvalid, dut.s_act_tready,
                     [(dut.s_act_tdata, case["act"]), (dut.s_act_tlast, case["last"]),
                      (dut.s_act_tuser, case["user"]), (dut.s_act_qslot, case["qslot"])], p_gap=p, rng=rng)
        wgt = Source(dut.s_wgt_tvalid, dut.s_wgt_tready, [(dut.s_wgt_tdata, case["wgt"])], p_gap=p, rng=rng)
        out = Sink(dut.m_tvalid, dut.m_tready, [dut.m_tdata, dut.m_tacc, dut.m_tuser], p_stall=p, rng=rng)
        n_out = case["rows"]
        budget = 4 * (len(case["act"]) + 100) * (1 + int(10 * p))
        res = await run_streams(dut, [act, wgt], [out], n_out, budget)
        results.append({"out": [b[0] for b in res["beats"]], "acc": [b[1] for b in res["beats"]],
                        "user": [b[2] for b in res["beats"]], "cycles": res["cycles"],
                        "d_pe": int(dut.d_pe.value)})
    save_outputs(results)
