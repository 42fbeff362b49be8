"""cocotb testbench of engine_top (sim/rtl/engine_top.v); not a pytest module.

Input (codesign.sim.rtl.run_cocotb): {"cases": [case, ...]}, a case being the stream
beats packed by codesign.sim.rtl (act, wgt, qp), the configuration (mode, a_signed,
y_signed, rows, kbeats, tiles) and the flow-control randomness (stall, seed). Cases run
one after the other on the same instance (the engine re-arms after each run).
Output: per case the output beats (codes, accumulators), their tlast flags, d_pe and the
measured cycle count (docs/engine.md §4; see streamdrv). The pytest side compares the
values with codesign.sim.reference and the cycles with the model.
"""
from __future__ import annotations

import random

import cocotb
from streamdrv import Sink, Source, load_inputs, run_streams, save_outputs, start_clock_and_reset


@cocotb.test()
async def engine_cases(dut):
    spec = load_inputs()
    await start_clock_and_reset(dut, idle=("s_act_tvalid", "s_wgt_tvalid", "s_qp_tvalid", "m_tready"))
    results = []
    for case in spec["cases"]:
        dut.cfg_mode.value = case["mode"]
        dut.cfg_a_signed.value = case["a_signed"]
        dut.cfg_y_signed.value = case["y_signed"]
        dut.cfg_rows.value = case["rows"]
        dut.cfg_kbeats.value = case["kbeats"]
        dut.cfg_tiles.value = case["tiles"]
        rng = random.Random(case.get("seed", 1))
        p = float(case.get("stall", 0.0))
        act = Source(dut.s_act_tvalid, dut.s_act_tready,
                     [(dut.s_act_tdata, case["act"]),
                      (dut.s_act_tlast, [int((i + 1) % case["kbeats"] == 0) for i in range(len(case["act"]))])],
                     p_gap=p, rng=rng)
        wgt = Source(dut.s_wgt_tvalid, dut.s_wgt_tready, [(dut.s_wgt_tdata, case["wgt"])], p_gap=p, rng=rng)
        qp = Source(dut.s_qp_tvalid, dut.s_qp_tready, [(dut.s_qp_tdata, case["qp"])], p_gap=p, rng=rng)
        out = Sink(dut.m_tvalid, dut.m_tready, [dut.m_tdata, dut.m_tacc, dut.m_tlast], p_stall=p, rng=rng)
        n_out = case["tiles"] * case["rows"]
        budget = 4 * (n_out * case["kbeats"] + len(case["wgt"]) + 100) * (1 + int(10 * p))
        res = await run_streams(dut, [act, wgt, qp], [out], n_out, budget)
        tlast = [b[2] for b in res["beats"]]
        want = [int((i + 1) % case["rows"] == 0) for i in range(n_out)]
        assert tlast == want, f"m_tlast {tlast} != last row of each tile {want}"
        results.append({"out": [b[0] for b in res["beats"]], "acc": [b[1] for b in res["beats"]],
                        "cycles": res["cycles"], "d_pe": int(dut.d_pe.value)})
    save_outputs(results)
