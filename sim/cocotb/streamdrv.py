"""AXI4-Stream drivers for the engine testbenches (cocotb, not a pytest module).

One coroutine drives every stream of a DUT cycle by cycle, which is both race free in
every simulator and fast (two awaits per clock cycle):

* at the falling edge, each :class:`Source` presents its next beat (or a gap) and each
  :class:`Sink` sets its tready;
* in the read-only phase that follows, the combinational tready/tvalid are settled, so a
  handshake seen there happens at the next rising edge. Rising edges are numbered from 1
  (the first one after :func:`run_streams` starts).

A source never withdraws tvalid before its beat is taken (AXI rule); gaps are only
inserted between beats. Cycle counts follow docs/engine.md §4: from the edge that
accepts the first input beat to the edge that accepts the last output beat, inclusive.
"""
from __future__ import annotations

import json
import os
import random
from typing import Any, Sequence

from cocotb.clock import Clock
from cocotb.triggers import FallingEdge, ReadOnly, RisingEdge


def load_inputs() -> Any:
    """The JSON written by codesign.sim.rtl.run_cocotb ($CODESIGN_RTL_IN)."""
    with open(os.environ["CODESIGN_RTL_IN"]) as fh:
        return json.load(fh)


def save_outputs(obj: Any) -> None:
    """JSON handed back to codesign.sim.rtl.run_cocotb ($CODESIGN_RTL_OUT)."""
    with open(os.environ["CODESIGN_RTL_OUT"], "w") as fh:
        json.dump(obj, fh)


async def start_clock_and_reset(dut, idle: Sequence[str] = (), cycles: int = 3) -> None:
    """10 ns clock on dut.clk, synchronous active-high dut.rst for ``cycles`` edges; the
    inputs named in ``idle`` (tvalid, write enables) are driven to 0 from the start, so
    that no X enters a 4-state simulator's pipeline after the reset."""
    for name in idle:
        getattr(dut, name).value = 0
    Clock(dut.clk, 10, unit="ns").start()
    dut.rst.value = 1
    for _ in range(cycles):
        await RisingEdge(dut.clk)
    await FallingEdge(dut.clk)
    dut.rst.value = 0


class Source:
    """Drives ``valid`` and the ``fields`` (handle -> beats) of one input stream."""

    def __init__(self, valid, ready, fields: Sequence[tuple[Any, Sequence[int]]], p_gap: float = 0.0,
                 rng: random.Random | None = None):
        self.valid, self.ready = valid, ready
        self.fields = [(h, list(v)) for h, v in fields]
        self.n = len(self.fields[0][1]) if self.fields else 0
        if any(len(v) != self.n for _, v in self.fields):
            raise ValueError("Source: all fields need one value per beat")
        self.p_gap, self.rng = p_gap, rng or random.Random(0)
        self.i = 0
        self.pending = False
        self.first: int | None = None  # edge of the first accepted beat
        self.last: int | None = None

    def drive(self) -> None:
        if self.i >= self.n:
            self.valid.value = 0
            return
        if not self.pending:
            self.pending = self.p_gap <= 0 or self.rng.random() >= self.p_gap
            if self.pending:
                for h, v in self.fields:
                    h.value = v[self.i]
        self.valid.value = 1 if self.pending else 0

    def sample(self, edge: int) -> None:
        if self.pending and int(self.ready.value):
            self.i += 1
            self.pending = False
            if self.first is None:
                self.first = edge
            self.last = edge

    @property
    def done(self) -> bool:
        return self.i >= self.n


class Sink:
    """Drives ``ready`` of one output stream and records the ``fields`` of each beat."""

    def __init__(self, valid, ready, fields: Sequence[Any], p_stall: float = 0.0,
                 rng: random.Random | None = None):
        self.valid, self.ready, self.fields = valid, ready, list(fields)
        self.p_stall, self.rng = p_stall, rng or random.Random(1)
        self.beats: list[list[int]] = []
        self.edges: list[int] = []
        self.r = 1

    def drive(self) -> None:
        self.r = 0 if (self.p_stall > 0 and self.rng.random() < self.p_stall) else 1
        self.ready.value = self.r

    def sample(self, edge: int) -> None:
        if self.r and int(self.valid.value):
            self.beats.append([int(h.value) for h in self.fields])
            self.edges.append(edge)


async def run_streams(dut, sources: Sequence[Source], sinks: Sequence[Sink], n_out: int,
                      max_cycles: int) -> dict:
    """Run until ``n_out`` beats left the (first) sink. Starts and ends just after a
    falling edge's read-only phase. Returns the beats and the cycle count."""
    edge = 0
    sink = sinks[0]
    while len(sink.beats) < n_out:
        await FallingEdge(dut.clk)
        for s in sources:
            s.drive()
        for k in sinks:
            k.drive()
        await ReadOnly()
        edge += 1
        for s in sources:
            s.sample(edge)
        for k in sinks:
            k.sample(edge)
        if edge > max_cycles:
            raise AssertionError(f"timeout after {edge} cycles: {len(sink.beats)}/{n_out} output beats, "
                                 f"inputs taken {[s.i for s in sources]}/{[s.n for s in sources]}")
    await FallingEdge(dut.clk)
    for s in sources:
        s.valid.value = 0
    for k in sinks:
        k.ready.value = 1
    firsts = [s.first for s in sources if s.first is not None]
    if not all(s.done for s in sources):
        raise AssertionError(f"outputs complete but inputs left: {[s.i for s in sources]}/{[s.n for s in sources]}")
    first = min(firsts) if firsts else 1
    return {"beats": sink.beats, "edges": sink.edges, "first_in": first,
            "cycles": sink.edges[-1] - first + 1 if sink.edges else 0}


async def run_row_core(dut, case: dict, cycles_per_row: int) -> dict:
    """One case of a row-streaming core (softmax_core, layernorm_core): drive ``case``'s
    input beats (``data``, ``keep``, ``last``) on ``s_*`` and collect as many beats from
    ``m_*``, with random gaps and back-pressure of probability ``case["stall"]``. The
    cycle budget allows ``cycles_per_row`` per row. Returns the output beats and cycles."""
    import random

    rng = random.Random(case.get("seed", 1))
    p = float(case.get("stall", 0.0))
    src = Source(dut.s_tvalid, dut.s_tready,
                 [(dut.s_tdata, case["data"]), (dut.s_tkeep, case["keep"]), (dut.s_tlast, case["last"])],
                 p_gap=p, rng=rng)
    out = Sink(dut.m_tvalid, dut.m_tready, [dut.m_tdata, dut.m_tkeep, dut.m_tlast], p_stall=p, rng=rng)
    n_out = len(case["data"])
    budget = 4 * (n_out * 3 + cycles_per_row * case["rows"] + 100) * (1 + int(10 * p))
    res = await run_streams(dut, [src], [out], n_out, budget)
    return {"data": [b[0] for b in res["beats"]], "keep": [b[1] for b in res["beats"]],
            "last": [b[2] for b in res["beats"]], "cycles": res["cycles"]}
