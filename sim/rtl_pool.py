"""Run the streaming max-pooling unit (``sim/rtl/pool.v``, docs/dataflow.md "Pooling
unit") under cocotb, from Python.

The glue between numpy NCHW code tensors and the testbench ``sim/cocotb/tb_pool.py``,
built and run through :mod:`codesign.sim.rtl` (cached builds, Verilator or Icarus):

* :class:`PoolConfig`: the RTL's parameters (channels ``C``, lanes per beat ``P``, input
  ``H x W``, square window ``K``, stride ``S``, padding ``PAD``, code type) and the
  geometry it derives (``CF``, ``OH``, ``OW``);
* :func:`pool_cycles`: the cycle model of pool.v (derived in its header), from the slot
  indices of the first input and of the last output;
* the stream encodings (:func:`pixel_beats`, :func:`decode_pixels`);
* :func:`run_pools` / :func:`run_maxpool`: codes in, pooled codes and measured cycles out.

Codes: a signed type is two's complement in ``B`` bits, an unsigned one plain, and a
bipolar one (1-bit signed, values -1/+1) is its bit ``(v + 1) / 2`` on an unsigned
1-bit RTL (``SIGNED = 0``: bit 0 = -1 = lo, so the maximum of the bits is the bit of the
maximum).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from codesign.sim import rtl
from codesign.sim.checks import check_codes
from codesign.sim.reference import IntType

__all__ = ["POOL_SOURCES", "D_POOL", "PoolConfig", "PoolRun", "pool_cycles", "pixel_beats", "decode_pixels",
           "run_pools", "run_maxpool"]

POOL_SOURCES = ("pool.v",)
#: pool.v's pipeline depth in the cycle model: R1 and R2 after the slot, the sink taking
#: the beat at the next edge (the RTL reports it on ``d_pool``).
D_POOL = 2


@dataclass(frozen=True)
class PoolConfig:
    """Parameters of one pool.v build (module header of sim/rtl/pool.v): ``C`` channels,
    ``P`` lanes per beat (``CF = ceil(C/P)`` beats per pixel; lanes past ``C`` are
    don't-cares), ``H x W`` input, ``K x K`` window, stride ``S``, padding ``PAD < K``
    on every side, code type ``bits``/``signed`` (1-bit signed = bipolar)."""

    C: int
    P: int
    H: int
    W: int
    K: int
    S: int
    PAD: int = 0
    bits: int = 8
    signed: bool = True

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

    @property
    def in_type(self) -> IntType:
        return IntType(self.bits, self.signed)

    @property
    def rtl_signed(self) -> int:
        """pool.v's SIGNED: bipolar codes travel as unsigned bits."""
        return int(self.signed and self.bits > 1)

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
        return {"C": self.C, "P": self.P, "H": self.H, "W": self.W, "K": self.K, "S": self.S, "PAD": self.PAD,
                "B": self.bits, "SIGNED": self.rtl_signed}


def pool_cycles(cfg: PoolConfig, images: int = 1) -> int:
    """pool.v's cycles for ``images`` images offered back to back without gaps, output
    never stalled, from the edge that accepts the first input beat to the edge that
    accepts the last output beat (inclusive):

    ``(images - 1)·HP·WP·CF + (s_last - s_first + 1) + D_POOL`` with the padded grid
    ``HP x WP`` walked one slot per (row, column, channel group), ``s_first = (PAD·WP +
    PAD)·CF`` the first real slot and ``s_last = (((OH-1)·S + K-1)·WP + (OW-1)·S + K-1)·CF
    + CF - 1`` the slot closing the last window (sim/rtl/pool.v's header)."""
    if images < 1:
        raise ValueError(f"pool_cycles: images={images} must be >= 1")
    slots = cfg.HP * cfg.WP * cfg.CF
    s_first = (cfg.PAD * cfg.WP + cfg.PAD) * cfg.CF
    last_row, last_col = (cfg.OH - 1) * cfg.S + cfg.K - 1, (cfg.OW - 1) * cfg.S + cfg.K - 1
    s_last = (last_row * cfg.WP + last_col) * cfg.CF + cfg.CF - 1
    return (images - 1) * slots + (s_last - s_first + 1) + D_POOL


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
    """Output beats -> ``(N, C, OH, OW)`` codes (padding lanes dropped)."""
    vals = rtl.unpack_outputs(beats, cfg.P, cfg.bits, signed=bool(cfg.rtl_signed))
    if cfg.in_type.bipolar:
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
    return {"data": pixel_beats(cfg, x, prob.get("pad_lanes")), "n_out": N * per_image,
            "tlast": [int(i % per_image == per_image - 1) for i in range(N * per_image)],
            "idle": cfg.HP * cfg.WP * cfg.CF + 4, "budget": 4 * (slots + 100) * (1 + int(10 * stall)),
            "stall": stall, "seed": int(prob.get("seed", 1))}


def run_pools(cfg: PoolConfig, problems: Sequence[Mapping[str, Any]], sim: str = "verilator") -> list[PoolRun]:
    """Several problems (dicts with ``x`` ``(N, C, H, W)`` codes and optionally ``stall``,
    ``seed``, ``pad_lanes``) one after the other in one simulation of one pool.v build."""
    cases = [_case(cfg, p) for p in problems]
    results = rtl.run_cocotb(sim, "pool", POOL_SOURCES, "tb_pool", inputs={"cases": cases},
                             parameters=cfg.parameters())
    runs = []
    for prob, res in zip(problems, results):
        if res["d_pool"] != D_POOL:
            raise rtl.RtlError(f"pool.v reports D_POOL={res['d_pool']}; the model says {D_POOL}")
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
