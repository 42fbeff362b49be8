"""Run the streaming pooling units, max (``sim/rtl/pool.v``) and average
(``sim/rtl/avgpool.v``, with ``requant.v``; docs/dataflow.md "Pooling unit"), under
cocotb, from Python.

The glue between numpy NCHW code tensors and the testbenches (max: ``sim/cocotb/tb_pool.py``;
average: :func:`avgpool_cases` in this module, which also drives the requant inputs
``q_m``/``q_shift``), built and run through
:mod:`codesign.sim.rtl` (cached builds, Verilator or Icarus):

* :class:`PoolConfig`: the RTL's parameters (channels ``C``, lanes per beat ``P``, input
  ``H x W``, square window ``K``, stride ``S``, padding ``PAD``, code type; ``avg`` with
  the output type) and the geometry it derives (``CF``, ``OH``, ``OW``);
* :func:`pool_cycles`: the cycle model of pool.v / avgpool.v (derived in their headers),
  from the slot indices of the first input and of the last output (``D_POOL`` = 2 max,
  ``D_AVG`` = 4 average);
* the stream encodings (:func:`pixel_beats`, :func:`decode_pixels`);
* :func:`run_pools` / :func:`run_maxpool` / :func:`run_avgpool`: codes in (and, for
  average pooling, the per-tensor requant ``M``, ``sh`` of §9), pooled codes and measured
  cycles out.

Codes: a signed type is two's complement in ``B`` bits, an unsigned one plain, and a
bipolar one (1-bit signed, values -1/+1) is its bit ``(v + 1) / 2`` on an unsigned
1-bit RTL (``SIGNED = 0``: bit 0 = -1 = lo, so the maximum of the bits is the bit of the
maximum); avgpool.v takes a bipolar input as ``SIGNED = 1``, ``B = 1`` (it decodes bit b as
the value 2b - 1).
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import cocotb
import numpy as np

from codesign.sim import rtl
from codesign.sim.checks import check_codes
from codesign.sim.reference import IntType

__all__ = ["POOL_SOURCES", "AVGPOOL_SOURCES", "D_POOL", "D_AVG", "PoolConfig", "PoolRun", "pool_cycles",
           "pixel_beats", "decode_pixels", "run_pools", "run_maxpool", "run_avgpool", "avgpool_cases"]

POOL_SOURCES = ("pool.v",)
#: avgpool.v instantiates requant.v (one per lane)
AVGPOOL_SOURCES = ("requant.v", "avgpool.v")
#: pool.v's pipeline depth in the cycle model: R1 and R2 after the slot, the sink taking
#: the beat at the next edge (the RTL reports it on ``d_pool``).
D_POOL = 2
#: avgpool.v: R1, R2 (window sum), R3 (requant product), R4 (rounded, saturated code).
D_AVG = 4


@dataclass(frozen=True)
class PoolConfig:
    """Parameters of one pool.v build (module header of sim/rtl/pool.v), or with ``avg`` of
    one avgpool.v build (sim/rtl/avgpool.v): ``C`` channels,
    ``P`` lanes per beat (``CF = ceil(C/P)`` beats per pixel; lanes past ``C`` are
    don't-cares), ``H x W`` input, ``K x K`` window, stride ``S``, padding ``PAD < K``
    on every side, code type ``bits``/``signed`` (1-bit signed = bipolar).

    ``avg``: average pooling on avgpool.v (§9: window sum with the padding counted as 0,
    then requant §3 with a runtime ``M``, ``sh``), output type ``out_bits``/``out_signed``
    (2..16 bits; default the input type, which must then not be bipolar). Global average
    pooling is ``K = H = W``, ``PAD = 0`` (square maps only: the window is square)."""

    C: int
    P: int
    H: int
    W: int
    K: int
    S: int
    PAD: int = 0
    bits: int = 8
    signed: bool = True
    avg: bool = False
    out_bits: int | None = None
    out_signed: bool | None = None

    def __post_init__(self) -> None:
        where = (f"PoolConfig(C={self.C}, P={self.P}, H={self.H}, W={self.W}, K={self.K}, S={self.S}, "
                 f"PAD={self.PAD})")
        if min(self.C, self.P, self.H, self.W, self.K, self.S) < 1 or self.P > self.C:
            raise ValueError(f"{where}: need C, H, W, K, S >= 1 and 1 <= P <= C")
        if not 0 <= self.PAD < self.K:
            raise ValueError(f"{where}: padding must satisfy 0 <= PAD < K (§9)")
        if self.H + 2 * self.PAD < self.K or self.W + 2 * self.PAD < self.K:
            raise ValueError(f"{where}: the {self.K}x{self.K} window does not fit the padded input")
        if not 1 <= self.bits <= 8:
            raise ValueError(f"{where}: bits={self.bits}; supported 1..8 (§9)")
        if self.bits == 1 and not self.signed:
            raise ValueError(f"{where}: 1-bit codes are bipolar (signed=True); unsigned 1-bit is not a §0 type")
        if not self.avg and (self.out_bits is not None or self.out_signed is not None):
            raise ValueError(f"{where}: out_bits/out_signed are for average pooling (avg=True); max pooling "
                             "outputs the input type")
        if self.avg and not 2 <= self.out_type.bits <= 16:
            raise ValueError(f"{where}: average pooling outputs {self.out_type.bits}-bit codes; requant (§3) "
                             "outputs have 2..16 bits (give out_bits)")

    @property
    def in_type(self) -> IntType:
        return IntType(self.bits, self.signed)

    @property
    def out_type(self) -> IntType:
        """The output code type: the input type for max pooling; for average pooling
        ``out_bits``/``out_signed``, defaulting to the input's (§9)."""
        if not self.avg:
            return self.in_type
        return IntType(self.bits if self.out_bits is None else int(self.out_bits),
                       self.signed if self.out_signed is None else bool(self.out_signed))

    @property
    def rtl_signed(self) -> int:
        """The RTL's SIGNED: pool.v takes bipolar codes as unsigned bits; avgpool.v takes a
        bipolar input as SIGNED = 1 with B = 1 (decoded to -1/+1)."""
        return int(self.signed and (self.bits > 1 or self.avg))

    @property
    def depth(self) -> int:
        """The cycle model's pipeline depth: D_POOL (max) or D_AVG (average)."""
        return D_AVG if self.avg else D_POOL

    @property
    def CF(self) -> int:
        return -(-self.C // self.P)

    @property
    def HP(self) -> int:
        return self.H + 2 * self.PAD

    @property
    def WP(self) -> int:
        return self.W + 2 * self.PAD

    @property
    def OH(self) -> int:
        return (self.HP - self.K) // self.S + 1

    @property
    def OW(self) -> int:
        return (self.WP - self.K) // self.S + 1

    def parameters(self) -> dict[str, int]:
        p = {"C": self.C, "P": self.P, "H": self.H, "W": self.W, "K": self.K, "S": self.S, "PAD": self.PAD,
             "B": self.bits, "SIGNED": self.rtl_signed}
        if self.avg:
            p.update(OB=self.out_type.bits, O_SIGNED=int(self.out_type.signed))
        return p

    @property
    def toplevel(self) -> str:
        return "avgpool" if self.avg else "pool"


def pool_cycles(cfg: PoolConfig, images: int = 1) -> int:
    """pool.v's / avgpool.v's cycles for ``images`` images offered back to back without gaps, output
    never stalled, from the edge that accepts the first input beat to the edge that
    accepts the last output beat (inclusive):

    ``(images - 1)·HP·WP·CF + (s_last - s_first + 1) + D`` with the padded grid
    ``HP x WP`` walked one slot per (row, column, channel group), ``s_first = (PAD·WP +
    PAD)·CF`` the first real slot and ``s_last = (((OH-1)·S + K-1)·WP + (OW-1)·S + K-1)·CF
    + CF - 1`` the slot closing the last window, ``D = D_POOL`` (max) or ``D_AVG``
    (average) (the headers of sim/rtl/pool.v and sim/rtl/avgpool.v)."""
    if images < 1:
        raise ValueError(f"pool_cycles: images={images} must be >= 1")
    slots = cfg.HP * cfg.WP * cfg.CF
    s_first = (cfg.PAD * cfg.WP + cfg.PAD) * cfg.CF
    last_row, last_col = (cfg.OH - 1) * cfg.S + cfg.K - 1, (cfg.OW - 1) * cfg.S + cfg.K - 1
    s_last = (last_row * cfg.WP + last_col) * cfg.CF + cfg.CF - 1
    return (images - 1) * slots + (s_last - s_first + 1) + cfg.depth


@dataclass(frozen=True)
class PoolRun:
    """Result of :func:`run_pools`: pooled codes ``(N, C, OH, OW)``, the measured cycles and
    the model's (:func:`pool_cycles`)."""

    y: np.ndarray
    cycles: int
    expected_cycles: int


def _bits(v: np.ndarray, t: IntType) -> np.ndarray:
    v = np.asarray(v, dtype=np.int64)
    return (v > 0).astype(np.int64) if t.bipolar else v & ((1 << t.bits) - 1)


def pixel_beats(cfg: PoolConfig, x: np.ndarray, pad_lanes: np.ndarray | None = None) -> list[int]:
    """NCHW codes -> beats: images in order, pixels in raster order, ``CF`` beats per pixel,
    lane ``l`` of beat ``g`` = channel ``g·P + l`` at bits ``[B·l +: B]``. Lanes past ``C``
    take ``pad_lanes`` (codes, shape ``(N, CF·P - C, H, W)``) or lo."""
    x = np.asarray(x, dtype=np.int64)
    N = x.shape[0]
    full = np.full((N, cfg.CF * cfg.P, cfg.H, cfg.W), cfg.in_type.lo, dtype=np.int64)
    full[:, :cfg.C] = x
    if pad_lanes is not None and cfg.CF * cfg.P > cfg.C:
        full[:, cfg.C:] = pad_lanes
    lanes = _bits(full, cfg.in_type).transpose(0, 2, 3, 1).reshape(-1, cfg.P)  # (N·H·W·CF, P)
    return rtl.pack_lanes(lanes, cfg.bits)


def decode_pixels(cfg: PoolConfig, beats: Sequence[int], N: int) -> np.ndarray:
    """Output beats -> ``(N, C, OH, OW)`` codes of ``cfg.out_type`` (padding lanes dropped)."""
    if cfg.avg:
        vals = rtl.unpack_outputs(beats, cfg.P, cfg.out_type.bits, signed=cfg.out_type.signed)
    else:
        vals = rtl.unpack_outputs(beats, cfg.P, cfg.bits, signed=bool(cfg.rtl_signed))
    if cfg.out_type.bipolar:
        vals = 2 * vals - 1
    y = vals.reshape(N, cfg.OH, cfg.OW, cfg.CF * cfg.P)[..., :cfg.C]
    return np.ascontiguousarray(y.transpose(0, 3, 1, 2))


def _case(cfg: PoolConfig, prob: Mapping[str, Any]) -> dict:
    x = np.asarray(prob["x"], dtype=np.int64)
    if x.ndim != 4 or x.shape[1:] != (cfg.C, cfg.H, cfg.W) or x.shape[0] < 1:
        raise ValueError(f"run_pools: x must be (N >= 1, C, H, W) = (N, {cfg.C}, {cfg.H}, {cfg.W}), got {x.shape}")
    check_codes("run_pools", "x", x, cfg.in_type)
    N = x.shape[0]
    per_image = cfg.OH * cfg.OW * cfg.CF
    stall = float(prob.get("stall", 0.0))
    slots = N * cfg.HP * cfg.WP * cfg.CF
    case = {"data": pixel_beats(cfg, x, prob.get("pad_lanes")), "n_out": N * per_image,
            "tlast": [int(i % per_image == per_image - 1) for i in range(N * per_image)],
            "idle": cfg.HP * cfg.WP * cfg.CF + 4, "budget": 4 * (slots + 100) * (1 + int(10 * stall)),
            "stall": stall, "seed": int(prob.get("seed", 1))}
    if cfg.avg:
        M, sh = prob.get("M"), prob.get("sh")
        for name, v, hi in (("M", M, (1 << 24) - 1), ("sh", sh, 62)):
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)) or not 0 <= v <= hi:
                raise ValueError(f"run_pools: average pooling needs an integer {name} in 0..{hi} per problem "
                                 f"(§3, §9), got {v!r}")
        case.update(q_m=int(M), q_shift=int(sh))
    elif "M" in prob or "sh" in prob:
        raise ValueError("run_pools: M/sh given for a max-pooling build (avg=False)")
    return case


def run_pools(cfg: PoolConfig, problems: Sequence[Mapping[str, Any]], sim: str = "verilator") -> list[PoolRun]:
    """Several problems (dicts with ``x`` ``(N, C, H, W)`` codes, for an ``avg`` build the
    requant ``M`` (0..2^24-1) and ``sh`` (0..62), and optionally ``stall``, ``seed``,
    ``pad_lanes``) one after the other in one simulation of one pool.v (avgpool.v) build
    (average: the requant inputs change between problems, one build serves every ``M``, ``sh``)."""
    cases = [_case(cfg, p) for p in problems]
    if cfg.avg:
        results = rtl.run_cocotb(sim, "avgpool", AVGPOOL_SOURCES, __name__, inputs={"cases": cases},
                                 parameters=cfg.parameters())
    else:
        results = rtl.run_cocotb(sim, "pool", POOL_SOURCES, "tb_pool", inputs={"cases": cases},
                                 parameters=cfg.parameters())
    runs = []
    for prob, res in zip(problems, results):
        if res["d_pool"] != cfg.depth:
            raise rtl.RtlError(f"{cfg.toplevel}.v reports depth {res['d_pool']}; the model says {cfg.depth}")
        N = np.asarray(prob["x"]).shape[0]
        runs.append(PoolRun(y=decode_pixels(cfg, res["out"], N), cycles=int(res["cycles"]),
                            expected_cycles=pool_cycles(cfg, N)))
    return runs


def run_maxpool(x: np.ndarray, kernel: int, stride: int | None = None, pad: int = 0, *, P: int = 1,
                in_type: IntType = IntType(8, True), sim: str = "verilator", stall: float = 0.0,
                seed: int = 1) -> PoolRun:
    """§9 maxpool of NCHW codes ``x`` (square ``kernel``, ``stride`` default = kernel,
    symmetric ``pad``) on a pool.v build with ``P`` lanes: codes and cycles."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"run_maxpool: x must be NCHW, got shape {x.shape}")
    cfg = PoolConfig(C=x.shape[1], P=P, H=x.shape[2], W=x.shape[3], K=kernel,
                     S=kernel if stride is None else stride, PAD=pad, bits=in_type.bits, signed=in_type.signed)
    return run_pools(cfg, [dict(x=x, stall=stall, seed=seed)], sim=sim)[0]


def run_avgpool(x: np.ndarray, kernel: int, M: int, sh: int, stride: int | None = None, pad: int = 0, *,
                P: int = 1, in_type: IntType = IntType(8, True), out_type: IntType | None = None,
                sim: str = "verilator", stall: float = 0.0, seed: int = 1) -> PoolRun:
    """§9 avgpool of NCHW codes ``x`` (square ``kernel``, ``stride`` default = kernel,
    symmetric ``pad``; the divisor is folded into ``M / 2^sh``) on an avgpool.v build
    with ``P`` lanes: ``sat_Y(rshr(window sum · M, sh))`` codes and cycles.
    Global average pooling: ``kernel = H = W``, ``pad = 0``."""
    x = np.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"run_avgpool: x must be NCHW, got shape {x.shape}")
    ot = out_type if out_type is not None else in_type
    cfg = PoolConfig(C=x.shape[1], P=P, H=x.shape[2], W=x.shape[3], K=kernel,
                     S=kernel if stride is None else stride, PAD=pad, bits=in_type.bits, signed=in_type.signed,
                     avg=True, out_bits=ot.bits, out_signed=ot.signed)
    return run_pools(cfg, [dict(x=x, M=M, sh=sh, stall=stall, seed=seed)], sim=sim)[0]


# ---------------------------------------------------------------------------
# cocotb testbench of avgpool.v (runs inside the simulator; streamdrv is on its
# PYTHONPATH). The same loop as sim/cocotb/tb_pool.py (a case ends when its outputs are
# complete and its inputs all taken), plus the requant inputs, set before each case.
# ---------------------------------------------------------------------------

@cocotb.test()
async def avgpool_cases(dut):
    """Cases of :func:`_case` one after the other on one instance: ``q_m``/``q_shift`` set
    while the unit is idle, then the input beats with ``stall``-probability gaps and
    back-pressure; output beats, tlast checked, cycles (first input beat accepted .. last
    output beat accepted, inclusive) and the RTL's D_POOL."""
    from cocotb.triggers import FallingEdge, ReadOnly
    from streamdrv import Sink, Source, load_inputs, save_outputs, start_clock_and_reset

    spec = load_inputs()
    dut.q_m.value = 0
    dut.q_shift.value = 0
    await start_clock_and_reset(dut, idle=("s_tvalid", "m_tready"))
    results = []
    for case in spec["cases"]:
        for _ in range(int(case.get("idle", 0))):
            await FallingEdge(dut.clk)
        dut.q_m.value = case["q_m"]
        dut.q_shift.value = case["q_shift"]
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
            assert len(out.beats) <= n_out, f"more than the {n_out} expected output beats"
            assert edge <= budget, (f"timeout after {edge} cycles: {len(out.beats)}/{n_out} output beats, "
                                    f"{src.i}/{src.n} input beats taken")
        await FallingEdge(dut.clk)
        dut.s_tvalid.value = 0
        dut.m_tready.value = 1
        tlast = [b[1] for b in out.beats]
        assert tlast == case["tlast"], f"m_tlast {tlast} != the last beat of each image {case['tlast']}"
        results.append({"out": [b[0] for b in out.beats], "cycles": out.edges[-1] - src.first + 1,
                        "d_pool": int(dut.d_pool.value)})
    save_outputs(results)
