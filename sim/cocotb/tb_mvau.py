"""cocotb testbench of the MVAU (sim/rtl/mvau.v); not a pytest module.

Input (codesign.sim.rtl_mvau via codesign.sim.rtl.run_cocotb): {"cases": [case, ...]}.
A case gives the memory writes to make first (``wgt``: [pe, addr, word] per weight word,
``thr``: [pe, idx, addr, value] per threshold), the activation beats (``act``), the
number of output beats to collect (``n_out``), the expected tlast of each output beat
(``tlast``) and the flow-control randomness (``stall``, ``seed``). Cases run one after the
other on the same instance (the stream is idle between cases, so the memories may be
rewritten). Output: per case the output beats (codes, accumulators), the measured cycle
count (streamdrv: first input beat accepted .. last output beat accepted, inclusive) and
the RTL's constants d_mvau and acc_w.
"""
from __future__ import annotations

import random

import cocotb
from cocotb.triggers import FallingEdge
from streamdrv import Sink, Source, load_inputs, run_streams, save_outputs, start_clock_and_reset


async def _write_memories(dut, case: dict) -> None:
    """One memory write per clock: weights, then thresholds (ports idle afterwards)."""
    for pe, addr, word in case["wgt"]:
        dut.w_we.value = 1
        dut.w_pe.value = pe
        dut.w_addr.value = addr
        dut.w_data.value = word
        await FallingEdge(dut.clk)
    dut.w_we.value = 0
    for pe, idx, addr, value in case["thr"]:
        dut.t_we.value = 1
        dut.t_pe.value = pe
        dut.t_idx.value = idx
        dut.t_addr.value = addr
        dut.t_data.value = value
        await FallingEdge(dut.clk)
    dut.t_we.value = 0


@cocotb.test()
async def mvau_cases(dut):
    spec = load_inputs()
    await start_clock_and_reset(dut, idle=("s_tvalid", "w_we", "t_we", "m_tready"))
    results = []
    for case in spec["cases"]:
        await _write_memories(dut, case)
        rng = random.Random(case.get("seed", 1))
        p = float(case.get("stall", 0.0))
        src = Source(dut.s_tvalid, dut.s_tready, [(dut.s_tdata, case["act"])], p_gap=p, rng=rng)
        out = Sink(dut.m_tvalid, dut.m_tready, [dut.m_tdata, dut.m_tlast, dut.m_tacc], p_stall=p, rng=rng)
        n_out = case["n_out"]
        budget = 4 * (case["slots"] + 100) * (1 + int(10 * p))
        res = await run_streams(dut, [src], [out], n_out, budget)
        tlast = [b[1] for b in res["beats"]]
        assert tlast == case["tlast"], f"m_tlast {tlast} != last fold of each vector {case['tlast']}"
        results.append({"out": [b[0] for b in res["beats"]], "acc": [b[2] for b in res["beats"]],
                        "cycles": res["cycles"], "d_mvau": int(dut.d_mvau.value),
                        "acc_w": int(dut.acc_w.value)})
    save_outputs(results)
