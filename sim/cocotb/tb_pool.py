"""cocotb testbench of the streaming max-pooling unit (sim/rtl/pool.v); not a pytest module.

Input (codesign.sim.rtl_pool via codesign.sim.rtl.run_cocotb): {"cases": [case, ...]}. A
case gives the input beats (``data``), the number of output beats to collect (``n_out``),
the expected tlast of each output beat (``tlast``), idle cycles to wait before it
(``idle``: lets the unit finish the previous case's trailing padding slots), a cycle
budget (``budget``) and the flow-control randomness (``stall``, ``seed``). Cases run one
after the other on the same instance.

The loop is streamdrv.run_streams's, except that a case ends when its outputs are
complete **and** its inputs are all taken: with floor-mode pooling the rows and columns
past the last window are still read (after the last output). Output per case: the
output beats, the measured cycles (first input beat accepted .. last output beat
accepted, inclusive) and the RTL's D_POOL.
"""
from __future__ import annotations

import random

import cocotb
from cocotb.triggers import FallingEdge, ReadOnly
from streamdrv import Sink, Source, load_inputs, save_outputs, start_clock_and_reset


async def _run_case(dut, case: dict) -> dict:
    for _ in range(int(case.get("idle", 0))):
        await FallingEdge(dut.clk)
    rng = random.Random(case.get("seed", 1))
    p = float(case.get("stall", 0.0))
    src = Source(dut.s_tvalid, dut.s_tready, [(dut.s_tdata, case["data"])], p_gap=p, rng=rng)
    out = Sink(dut.m_tvalid, dut.m_tready, [dut.m_tdata, dut.m_tlast], p_stall=p, rng=rng)
    n_out, budget = int(case["n_out"]), int(case["budget"])
    edge = 0
    while len(out.beats) < n_out or not src.done:
        await FallingEdge(dut.clk)
        src.drive()
        out.drive()
        await ReadOnly()
        edge += 1
        src.sample(edge)
        out.sample(edge)
        if len(out.beats) > n_out:
            raise AssertionError(f"more than the {n_out} expected output beats")
        if edge > budget:
            raise AssertionError(f"timeout after {edge} cycles: {len(out.beats)}/{n_out} output beats, "
                                 f"{src.i}/{src.n} input beats taken")
    await FallingEdge(dut.clk)
    dut.s_tvalid.value = 0
    dut.m_tready.value = 1
    tlast = [b[1] for b in out.beats]
    assert tlast == case["tlast"], f"m_tlast {tlast} != the last beat of each image {case['tlast']}"
    return {"out": [b[0] for b in out.beats], "cycles": out.edges[-1] - src.first + 1,
            "d_pool": int(dut.d_pool.value)}


@cocotb.test()
async def pool_cases(dut):
    spec = load_inputs()
    await start_clock_and_reset(dut, idle=("s_tvalid", "m_tready"))
    results = []
    for case in spec["cases"]:
        results.append(await _run_case(dut, case))
    save_outputs(results)
