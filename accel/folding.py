"""The dataflow folding of a CNN / MLP / BNN build, computed once for the emitter and the report.

:func:`plan` maps an integer IR onto dataflow layers (:func:`codesign.accel.dataflow_ir.map_ir`)
and runs the folding search (:func:`codesign.accel.dataflow.search`) for a board, clock,
resource limit and optional target frame rate. ``codesign build`` calls it once, before the
emit step: the HLS emitter gets :meth:`FoldingPlan.folding` (``{IR op name: (PE, SIMD)}``,
``codesign.hls.emit.emit_project(..., folding=...)``) and the report
(:func:`codesign.accel.report.dataflow_estimates`) the same plan, so the folding the report
shows is the one the C++ was emitted with. The search is deterministic: the same IR, board,
clock, limit and target give the same plan.

FQ-BERT builds do not use this (their report runs the engine's own folding search).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from codesign.accel.boards import Board

__all__ = ["FoldingPlan", "plan", "DATAFLOW_LIMIT"]

#: The dataflow search's resource limit (each of LUT, FF, DSP, RAMB18), as FQ-BERT's.
DATAFLOW_LIMIT = 0.85


@dataclass
class FoldingPlan:
    """The dataflow search for one IR on one board.

    ``mapping``: :func:`~codesign.accel.dataflow_ir.map_ir`'s answer (layers in IR op
    order, ``not_modelled``, notes); ``result``: the search's
    :class:`~codesign.accel.dataflow.SearchResult`, or ``None`` when there is no layer or
    the search found no folding; ``error``: then the one-line reason (``None`` otherwise).
    ``board``, ``clock_mhz``, ``limit``, ``target_fps``: what was searched for."""

    board: str
    clock_mhz: float
    limit: float
    target_fps: float | None
    mapping: Any
    result: Any = None
    error: str | None = None
    layers: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether the search chose a folding."""
        return self.result is not None

    def folding(self) -> dict[str, tuple[int, int]] | None:
        """``{layer (= IR op) name: (PE, SIMD)}`` of the chosen folding, in layer order;
        ``None`` when there is none (no layer, or nothing fits)."""
        if self.result is None:
            return None
        return {c.name: (int(c.PE), int(c.SIMD)) for c in self.result.estimate.layers}

    def hls_folding(self, ir) -> dict[str, tuple[int, int]] | None:
        """:meth:`folding` as the HLS kernels take it: a bipolar conv with padding is costed
        on mvau.v with two lanes per tap (:func:`codesign.accel.dataflow_ir.two_lanes_per_tap`),
        while conv.h masks padded taps and needs one lane per tap, so it gets ``SIMD/2``
        lanes (``ceil(2K/SIMD) == ceil(K/(SIMD/2))`` cycles per fold: the same count) when
        SIMD is even, else SIMD unchanged (then it is faster than the model says)."""
        from codesign.accel.dataflow_ir import two_lanes_per_tap

        fold = self.folding()
        if fold is None:
            return None
        ops = {op.name: op for op in ir.ops}
        return {n: ((pe, simd // 2) if n in ops and two_lanes_per_tap(ops[n]) and simd % 2 == 0 else (pe, simd))
                for n, (pe, simd) in fold.items()}

    def matches(self, board: Board, clock_mhz: float, limit: float) -> bool:
        """Whether this plan was searched for ``board`` at ``clock_mhz`` within ``limit``."""
        return (self.board, self.clock_mhz, self.limit) == (board.name, float(clock_mhz), float(limit))


def plan(ir, board: Board, clock_mhz: float, *, limit: float = DATAFLOW_LIMIT,
         target_fps: float | None = None) -> FoldingPlan:
    """Map ``ir`` onto dataflow layers and search their folding (module docstring).

    Without ``target_fps``: the smallest initiation interval within ``limit`` of every
    resource of ``board`` at ``clock_mhz``, fewest LUTs among those; with it: every layer
    within ``clock / target_fps`` cycles, fewest LUTs within the limit. Never raises for a
    search that finds nothing: the plan then has ``result = None`` and ``error`` (one line,
    e.g. an unreachable ``target_fps``); the caller decides whether that is fatal.
    ``ValueError`` only for a ``target_fps`` that is not a positive number."""
    from codesign.accel import dataflow as D
    from codesign.accel.dataflow_ir import map_ir

    if target_fps is not None and not (isinstance(target_fps, (int, float)) and not isinstance(target_fps, bool)
                                       and target_fps > 0 and target_fps != float("inf")):
        raise ValueError(f"target fps {target_fps!r} must be a positive number")
    m = map_ir(ir)
    layers = [x.layer for x in m.layers]
    p = FoldingPlan(board=board.name, clock_mhz=float(clock_mhz), limit=float(limit),
                    target_fps=None if target_fps is None else float(target_fps), mapping=m, layers=layers)
    if not layers:
        p.error = "no conv2d, matmul or xnor_popcount layer with constant weights for the dataflow cost model"
        return p
    try:
        p.result = D.search(layers, board, limit=float(limit), clock_mhz=float(clock_mhz),
                            target_fps=p.target_fps)
    except ValueError as e:
        p.error = str(e).splitlines()[0]
    return p
