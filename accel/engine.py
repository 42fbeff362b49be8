"""Cost model of the FQ-BERT engine (cycles, resources, power) and its folding search.

The engine is the one of [`docs/engine.md`](../docs/engine.md): ``P`` processing units
(PUs) of ``N`` processing elements (PEs), each PE a bit-split inner product of ``M``
multiplier lanes; ``P_dsp`` PUs build their multipliers from DSP48E2 slices (``packing``
``"dsp1"``: one product per DSP, FQ-BERT's; ``"dsp2"``: two lanes that share their
activation per DSP, §3; ``"dsp2c"``: dsp2's packing with the products accumulated along
chains of DSPs instead of a fabric adder tree per PE, §3) and ``P_lut`` PUs from LUTs. One softmax core per PU with ``L_sm``
lanes, one LayerNorm core with ``L_ln`` lanes.

* **Cycles** are exactly docs/engine.md §4: each formula is one small function below,
  named after the quantity and tagged with its section (``linear_cycles``,
  ``qk_head_cycles``, ...). The RTL (``sim/rtl``) implements the same formulas and its
  testbenches compare cycle counts with them; ``D_PE_BASE``, ``D_SM`` and ``D_LN`` are
  provisional pipeline depths to be reconciled with the RTL's parameters.
* **Resources** are a sum of components (multipliers, adder trees, accumulators,
  requantizers, GELU tables, softmax cores, LayerNorm core, weight and activation
  buffers, control) that follow the RTL's structure. Every coefficient is a named entry of
  ``COEFFS`` with a comment saying where it comes from: register and adder widths of the
  RTL, least-squares fits to Yosys synthesis of the RTL modules (bench/yosys_crosscheck.py,
  accel/yosys_calibration.json; LUTs calibrated to Yosys, which packs less tightly than
  Vivado), or first-principles estimates for parts without RTL. ``coefficients(**overrides)``
  and the ``coeffs=`` argument of every function override them.
* **Power** is the board model of ``codesign.accel.boards.PowerModel`` (static + dynamic
  per resource, linear in the clock, + DDR traffic) with one global scale of the dynamic
  part fitted to FQ-BERT's published board power (``fit_power_scale``).
* **Latency** = cycles / clock at an *assumed* clock (the board's range, 200-300 MHz):
  an estimate, labelled as such wherever it is reported (``ESTIMATE_LABEL``).

Every formula accepts Python integers or numpy arrays (``ceil_div`` and ``np.maximum``
work on both), so ``search`` evaluates the whole folding grid with the same functions
that ``evaluate`` uses for one folding.

Batch 1, one inference at a time; the host's embedding and classifier time (ARM) is not
counted (docs/engine.md §4).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping

import numpy as np

from codesign.accel.boards import Board, get_board

__all__ = [
    "PACKINGS", "DSP_PACKINGS", "VERIFIED_PACKINGS",
    "D_PE_BASE", "D_SM", "D_LN", "SQRT_STEPS", "COEFFS", "coefficients", "ESTIMATE_LABEL",
    "Workload", "Folding", "Res", "Estimate", "FoldingResult",
    "ceil_div", "ceil_log2", "d_pe", "linear_tile_cycles", "linear_cycles", "tile_weight_bytes",
    "load_cycles", "linear_cycles_with_memory", "qk_head_cycles", "pv_head_cycles", "attention_cycles",
    "softmax_row_cycles", "softmax_stream_cycles", "softmax_cycles", "layernorm_row_cycles",
    "layernorm_stream_cycles", "layernorm_cycles",
    "memory_stall_cycles", "layer_cycles", "inference_cycles", "weight_bytes_per_inference",
    "resources", "total_resources", "power_w", "fit_power_scale", "POWER_SCALE",
    "evaluate", "search", "fqbert_folding", "calibrate_fqbert", "FQBERT_TABLE3", "GOALS_MS",
]

ESTIMATE_LABEL = ("cost model (docs/engine.md §4 cycles, accel/engine.py resources and power); "
                  "latency at an assumed clock; calibrated against FQ-BERT's published Table III "
                  "(bench/engine_fqbert.py); resource coefficients calibrated to Yosys synthesis of the RTL "
                  "(bench/yosys_crosscheck.py)")

# ---------------------------------------------------------------------------------------
# Pipeline constants of docs/engine.md §4 (provisional; the RTL states them as parameters)

#: PE array depth without the adder tree: input register 1, product register 1, accumulate
#: 1, requant 2 (sim/rtl/pe_array.v at the time of writing: ``D_PE = 5 + clog2(M)``, at
#: least one tree level). ``D_pe = D_PE_BASE + max(1, ceil(log2 M))``; to be kept equal to
#: the RTL's parameter (``codesign.sim.rtl.d_pe``) when the two are reconciled.
D_PE_BASE = 5
#: dsp2c (§3): the longest DSP chain. The chain's low 18-bit field holds the sum of C lane
#: products exactly while C·255·15 < 2^17 (8x8 mode's unsigned low nibble; 8x4: C·2040):
#: C <= 34, so chains of at most 32 lanes.
CHAIN_MAX = 32
#: Softmax core depth per row beyond its three passes and the 32-step divider
#: (sim/rtl/softmax_core.v; tests/test_engine.py compares with codesign.sim.rtl).
D_SM = 6
#: LayerNorm core depth per row beyond its two passes and its sequential steps (the mean
#: division, mu·T, the variance division, the square root): the moments pipeline, one
#: handoff per unit and the 28-stage normalise pipeline (sim/rtl/layernorm_core.v;
#: checked against codesign.sim.rtl).
D_LN = 34
#: layernorm_core.v's sequential steps per row: the 16-step mean division, 16 shift-and-add
#: steps of mu·T (SS = Sxx − mu·T from the moments), the 48-step division
#: floor(SS·2^16/H), the 25-step square root (v < 2^49: the contract's first 7 of 32 steps
#: are no-ops). Each runs in its own unit on its own row; the variance division and its
#: handoff (``LN_V_STEPS + 1``) is the slowest, so rows stream every max(B, 49).
LN_MU_STEPS = 16
LN_SS_STEPS = 16
LN_V_STEPS = 48
LN_SQRT_STEPS = 25
#: Steps of the digit-by-digit square root (docs/arithmetic.md §6 step 6: 32 iterations).
SQRT_STEPS = 32
#: Passes over a row: softmax (max, exp-sum, normalise), LayerNorm (moments, normalise).
SOFTMAX_PASSES = 3
LAYERNORM_PASSES = 2
#: LayerNorms per encoder layer (after attention, after the FFN).
LAYERNORMS_PER_LAYER = 2

#: Latency goals of the engine issue (BERT-base, seq 128, batch 1), ms.
GOALS_MS = {"zcu102": 11.0, "zcu111": 6.5}


# ---------------------------------------------------------------------------------------
# integer helpers that work on ints and numpy arrays alike


def ceil_div(a, b):
    """``ceil(a / b)`` for non-negative integers (or integer arrays)."""
    return -((-a) // b)


def ceil_log2(x):
    """``ceil(log2 x)`` for integers ``x >= 1`` (or integer arrays)."""
    if isinstance(x, np.ndarray):
        return np.ceil(np.log2(np.maximum(x, 1))).astype(np.int64)
    return (int(x) - 1).bit_length()


def _ceil(x):
    """``ceil`` of a float (or array) to an integer (or int64 array)."""
    if isinstance(x, np.ndarray):
        return np.ceil(x - 1e-9).astype(np.int64)
    return int(math.ceil(x - 1e-9))


# ---------------------------------------------------------------------------------------
# Workload and folding


@dataclass(frozen=True)
class Workload:
    """The encoder's shape: ``R`` rows (sequence length), hidden ``H``, heads, FFN width, layers."""

    R: int
    H: int
    heads: int
    ffn: int
    layers: int

    @property
    def d(self) -> int:
        """Head dimension."""
        return self.H // self.heads

    @property
    def K_max(self) -> int:
        """Longest reduction of a linear layer (FFN2's ``K = ffn``)."""
        return max(self.H, self.ffn)

    def linears(self) -> dict[str, tuple[int, int]]:
        """``{name: (K, Nout)}`` of the six linear layers of one encoder layer."""
        H, F = self.H, self.ffn
        return {"q": (H, H), "k": (H, H), "v": (H, H), "o": (H, H), "ffn1": (H, F), "ffn2": (F, H)}

    def macs(self) -> int:
        """Multiply-accumulates per inference (linears + Q·Kᵀ + P·V)."""
        lin = sum(K * n for K, n in self.linears().values()) * self.R
        att = 2 * self.heads * self.R * self.R * self.d
        return self.layers * (lin + att)

    @classmethod
    def from_config(cls, cfg: Any, seq: int | None = None) -> "Workload":
        """From a ``Workload``, an ``FQBertConfig``, its ``as_dict()`` (``params["config"]``) or a
        preset name (``tiny``, ``minilm``, ``base``); ``seq`` overrides ``max_seq``."""
        if isinstance(cfg, Workload):
            return cfg if seq is None else replace(cfg, R=int(seq))
        if isinstance(cfg, str):
            if cfg not in PRESET_SHAPES:
                raise ValueError(f"unknown config {cfg!r} ({', '.join(PRESET_SHAPES)})")
            cfg = PRESET_SHAPES[cfg]
        get = cfg.get if isinstance(cfg, Mapping) else (lambda k: getattr(cfg, k))
        return cls(R=int(seq if seq is not None else get("max_seq")), H=int(get("hidden")),
                   heads=int(get("heads")), ffn=int(get("ffn")), layers=int(get("layers")))


#: Shapes of ``codesign.quantize.fqbert.PRESETS`` (copied so that this module does not import
#: torch; tests/test_engine.py checks they agree).
PRESET_SHAPES: dict[str, dict[str, int]] = {
    "tiny": {"hidden": 64, "layers": 2, "heads": 2, "ffn": 128, "max_seq": 16},
    "minilm": {"hidden": 384, "layers": 6, "heads": 12, "ffn": 1536, "max_seq": 128},
    "base": {"hidden": 768, "layers": 12, "heads": 12, "ffn": 3072, "max_seq": 128},
}

PACKINGS = ("dsp1", "dsp2", "lut", "dsp2c")
#: the DSP PUs' packings (``search``'s ``packings``)
DSP_PACKINGS = ("dsp1", "dsp2", "dsp2c")
#: The packings whose synthesised RTL is the simulated RTL. dsp2c's chains instantiate
#: DSP48E2 primitives for synthesis (Yosys 0.23 does not infer the cascade for xcup) and a
#: behavioural equivalent for simulation; no DSP48E2 simulation model is available here to
#: check the two against each other, so :func:`search` leaves dsp2c out unless asked.
VERIFIED_PACKINGS = ("dsp1", "dsp2")


@dataclass(frozen=True)
class Folding:
    """One folding of the engine (docs/engine.md §1, §3).

    ``P_dsp`` PUs with DSP multipliers packed as ``packing`` (``dsp1``/``dsp2``/``dsp2c``) and ``P_lut``
    PUs of LUT multipliers, all with ``N`` PEs of ``M`` lanes; ``L_sm`` softmax lanes (one
    core per PU), ``L_ln`` LayerNorm lanes (one core); ``clock_mhz`` the assumed clock. An
    all-LUT folding has ``P_dsp = 0`` and ``packing = "lut"``.
    """

    P_dsp: int
    P_lut: int
    N: int
    M: int
    packing: str = "dsp2"
    clock_mhz: float = 250.0
    L_sm: int = 16
    L_ln: int = 16

    def __post_init__(self):
        if self.packing not in PACKINGS:
            raise ValueError(f"packing {self.packing!r} not in {PACKINGS}")
        if self.packing == "lut" and self.P_dsp:
            raise ValueError("packing 'lut' means P_dsp = 0 (put LUT PUs in P_lut)")
        if min(self.P_dsp, self.P_lut) < 0 or self.P_dsp + self.P_lut < 1:
            raise ValueError("need P_dsp, P_lut >= 0 and at least one PU")
        if self.N < 1 or self.M < 2 or self.M % 2:
            raise ValueError("need N >= 1 and an even M >= 2 (8x8 mode pairs lanes, §2)")
        if self.packing in ("dsp2", "dsp2c") and self.P_dsp and self.N % 2:
            raise ValueError(f"{self.packing} packs lanes of PE pairs (2q, 2q+1): N must be even (§3)")
        if self.packing == "dsp2c" and self.M // 2 > CHAIN_MAX and (self.M // 2) % CHAIN_MAX:
            raise ValueError(f"dsp2c chains of min(M/2, {CHAIN_MAX}) lanes: M/2 must be at most {CHAIN_MAX} "
                             f"or a multiple of it (§3)")
        if min(self.L_sm, self.L_ln) < 1 or self.clock_mhz <= 0:
            raise ValueError("need L_sm, L_ln >= 1 and a positive clock")

    @property
    def P(self) -> int:
        return self.P_dsp + self.P_lut

    @property
    def G(self) -> int:
        """PEs working on a linear layer's output channels: ``P·N`` (§1)."""
        return self.P * self.N

    @property
    def dsp2(self) -> bool:
        """Two lanes per DSP48E2 (dsp2, dsp2c)."""
        return self.packing in ("dsp2", "dsp2c")

    @property
    def chain(self) -> bool:
        """dsp2c: the DSP PUs' products accumulate along DSP chains (§3)."""
        return self.packing == "dsp2c"

    @property
    def lanes(self) -> int:
        return self.G * self.M

    def as_dict(self) -> dict[str, Any]:
        return {"P_dsp": self.P_dsp, "P_lut": self.P_lut, "N": self.N, "M": self.M, "packing": self.packing,
                "clock_mhz": self.clock_mhz, "L_sm": self.L_sm, "L_ln": self.L_ln}


def fqbert_folding(N: int, M: int, P: int = 12, clock_mhz: float = 214.0) -> Folding:
    """FQ-BERT's own folding: ``P`` PUs of ``(N, M)``, one product per DSP, at 214 MHz.
    The SIMD width of its softmax and LayerNorm cores is not published: we assume ``M``."""
    return Folding(P_dsp=P, P_lut=0, N=N, M=M, packing="dsp1", clock_mhz=clock_mhz, L_sm=M, L_ln=M)


# ---------------------------------------------------------------------------------------
# Cycle model: docs/engine.md §4, one function per formula


def chain_length(M):
    """dsp2c (§3): lanes per DSP chain, ``C = min(M/2, 32)`` (chains over the lanes of one
    parity; ``M/2`` at most 32 or a multiple of 32)."""
    return np.minimum(M // 2, CHAIN_MAX)


def d_pe(M, packing="dsp2"):
    """``D_pe`` (§4): the PE array's pipeline depth, ``D_PE_BASE + max(1, ceil(log2 M))``
    (input and product registers, the adder tree's levels, accumulate, requant); for
    ``packing = "dsp2c"`` ``D_PE_BASE + C + max(1, ceil(log2(M/C)))``, ``C = min(M/2, 32)``
    (input register, the chain's C positions, its output one cycle after the last M
    register, the tree over the M/C chain sums, accumulate, requant). ``packing`` may be a
    boolean array (True: dsp2c) for the vectorised search."""
    chain = (packing == "dsp2c") if isinstance(packing, str) else np.asarray(packing, dtype=bool)
    C = chain_length(M)
    deep = D_PE_BASE + C + np.maximum(1, ceil_log2(M // np.maximum(C, 1)))
    flat = D_PE_BASE + np.maximum(1, ceil_log2(M))
    out = np.where(chain, deep, flat)
    return out.item() if np.ndim(out) == 0 else out


def linear_tile_cycles(R, K, M):
    """§4 ``C_tile = R · ceil(K / M)``: one tile of ``G`` output channels, II = 1."""
    return R * ceil_div(K, M)


def linear_cycles(R, K, Nout, G, M, D_pe):
    """§4 ``C_lin = ceil(Nout / G) · R · ceil(K / M) + D_pe`` (8×4 linear layer, no DDR stalls)."""
    return ceil_div(Nout, G) * linear_tile_cycles(R, K, M) + D_pe


def tile_weight_bytes(K, G):
    """§4 weight traffic of one tile: ``K·G`` nibbles plus ``4·G`` bias bytes."""
    return ceil_div(K * G, 2) + 4 * G


def load_cycles(nbytes, bytes_per_cycle):
    """§4 ``ceil(bytes · f / BW)``: cycles to bring ``nbytes`` from DDR at ``BW/f`` bytes/cycle."""
    return _ceil(nbytes / bytes_per_cycle)


def linear_cycles_with_memory(R, K, Nout, G, M, D_pe, bytes_per_cycle):
    """§4 with the double-buffered weight buffer: tile ``g+1`` loads while tile ``g``
    computes, a tile takes ``max(C_tile, load)``, the first tile's load is exposed:
    ``load + (T−1)·max(C_tile, load) + C_tile + D_pe`` for ``T = ceil(Nout/G)`` tiles."""
    T = ceil_div(Nout, G)
    C = linear_tile_cycles(R, K, M)
    L = load_cycles(tile_weight_bytes(K, G), bytes_per_cycle)
    return L + (T - 1) * np.maximum(C, L) + C + D_pe


def qk_head_cycles(R, d, N, M):
    """§4 Q·Kᵀ of one head on one PU (8×8 mode): ``R · ceil(R / N) · ceil(2d / M)``."""
    return R * ceil_div(R, N) * ceil_div(2 * d, M)


def pv_head_cycles(R, d, N, M):
    """§4 P·V of one head on one PU (8×8 mode): ``R · ceil(d / N) · ceil(2R / M)``."""
    return R * ceil_div(d, N) * ceil_div(2 * R, M)


def attention_cycles(R, d, heads, P, N, M):
    """§4 per layer: ``ceil(heads / P)`` rounds of Q·Kᵀ and P·V (head ``h`` on PU ``h mod P``)."""
    return ceil_div(heads, P) * (qk_head_cycles(R, d, N, M) + pv_head_cycles(R, d, N, M))


def softmax_row_cycles(R, L_sm, D_sm=None):
    """§4 one softmax row of ``R`` scores alone: ``3 · ceil(R / L_sm) + 32 + D_sm`` (input,
    exp-sum and normalise passes; the 32-step reciprocal divider). ``D_sm`` defaults to
    ``D_SM`` (softmax_core.v)."""
    D_sm = D_SM if D_sm is None else D_sm
    return SOFTMAX_PASSES * ceil_div(R, L_sm) + SQRT_STEPS + D_sm


def softmax_stream_cycles(rows, R, L_sm):
    """§4 ``rows`` rows of ``R`` scores streamed through one core (softmax_core.v): the
    front of a row (input and exp-sum passes, ``2B + 3``) overlaps the back of the previous
    one (divider and normalise pass, ``B + 33``), ``B = ceil(R / L_sm)``:
    ``3B + 38 + (rows − 1) · max(2B + 3, B + 33)``."""
    B = ceil_div(R, L_sm)
    return 3 * B + 32 + D_SM + (rows - 1) * np.maximum(2 * B + 3, B + 33)


def softmax_cycles(R, heads, P, L_sm, D_sm=None):
    """§4 per layer: ``heads · R`` rows over the ``P`` cores (one per PU). Rows stay on the PU
    that computed their head (head ``h`` on PU ``h mod P``), so a core streams
    ``ceil(heads / P) · R`` rows (:func:`softmax_stream_cycles`). ``D_sm`` is accepted for
    compatibility and must be ``D_SM`` (the RTL's)."""
    if D_sm is not None and D_sm != D_SM:
        raise ValueError(f"softmax_cycles: D_sm={D_sm} differs from the RTL's {D_SM}")
    return softmax_stream_cycles(ceil_div(heads, P) * R, R, L_sm)


def layernorm_row_cycles(H, L_ln, D_ln=None):
    """§4 one LayerNorm row alone: ``2 · ceil(H / L_ln) + 16 + 16 + 48 + 25 + D_ln``
    (moments and normalise passes; the 16-step mean division, 16 steps of mu·T, the
    48-step division for ``v``, the 25-step square root). ``D_ln`` defaults to ``D_LN``
    (layernorm_core.v)."""
    D_ln = D_LN if D_ln is None else D_ln
    return (LAYERNORM_PASSES * ceil_div(H, L_ln) + LN_MU_STEPS + LN_SS_STEPS + LN_V_STEPS + LN_SQRT_STEPS
            + D_ln)


def layernorm_stream_cycles(rows, H, L_ln):
    """§4 ``rows`` rows streamed through the core (layernorm_core.v): its units work on
    different rows, and the slower of the input pass (``B = ceil(H / L_ln)``) and the
    variance division with its handoff (49) sets the row interval:
    ``2B + 139 + (rows − 1) · max(B, 49)``."""
    B = ceil_div(H, L_ln)
    return layernorm_row_cycles(H, L_ln) + (rows - 1) * np.maximum(B, LN_V_STEPS + 1)


def layernorm_cycles(R, H, L_ln, D_ln=None):
    """§4 per layer: two LayerNorms (after attention, after the FFN) of ``R`` rows each on
    the one core. ``D_ln`` is accepted for compatibility and must be ``D_LN``."""
    if D_ln is not None and D_ln != D_LN:
        raise ValueError(f"layernorm_cycles: D_ln={D_ln} differs from the RTL's {D_LN}")
    return LAYERNORMS_PER_LAYER * layernorm_stream_cycles(R, H, L_ln)


def _bytes_per_cycle(board: Board, clock_mhz: float) -> float:
    """DDR bytes per engine cycle: ``BW / f``."""
    return board.ddr_gbps * 1e9 / (float(clock_mhz) * 1e6)


def memory_stall_cycles(work: Workload, fold, bytes_per_cycle):
    """What the weight loads add to one layer's six linears (§4): ``linear_cycles_with_memory``
    minus ``linear_cycles``, summed."""
    R, M, G = work.R, fold.M, fold.G
    dp = d_pe(M, fold.chain)
    return sum(linear_cycles_with_memory(R, K, Nout, G, M, dp, bytes_per_cycle) - linear_cycles(R, K, Nout, G, M, dp)
               for K, Nout in work.linears().values())


def layer_cycles(work: Workload, fold, board: Board | None = None) -> dict[str, Any]:
    """Cycles of one encoder layer, by part (§4). ``board`` gives the DDR bandwidth for the
    weight-traffic stalls (``None``: no stalls). Keys: the six linears (compute, with
    ``D_pe``), ``attention_qk``, ``attention_pv``, ``softmax``, ``layernorm``,
    ``memory_stall`` (what the weight loads add to the linears), ``total``."""
    R, P, N, M, G = work.R, fold.P, fold.N, fold.M, fold.G
    dp = d_pe(M, fold.chain)
    parts: dict[str, Any] = {name: linear_cycles(R, K, Nout, G, M, dp) for name, (K, Nout) in work.linears().items()}
    rounds = ceil_div(work.heads, P)
    parts["attention_qk"] = rounds * qk_head_cycles(R, work.d, N, M)
    parts["attention_pv"] = rounds * pv_head_cycles(R, work.d, N, M)
    parts["softmax"] = softmax_cycles(R, work.heads, P, fold.L_sm)
    parts["layernorm"] = layernorm_cycles(R, work.H, fold.L_ln)
    parts["memory_stall"] = (memory_stall_cycles(work, fold, _bytes_per_cycle(board, fold.clock_mhz))
                             if board is not None else 0)
    parts["total"] = sum(parts.values())
    return parts


def inference_cycles(work: Workload, fold, board: Board | None = None):
    """§4 per inference: ``layers ·`` per layer (host embeddings and classifier not counted)."""
    return work.layers * layer_cycles(work, fold, board)["total"]


def weight_bytes_per_inference(work: Workload, G) -> Any:
    """DDR bytes of one inference: every tile of every linear of every layer, once (batch 1)."""
    per_layer = sum(ceil_div(Nout, G) * tile_weight_bytes(K, G) for K, Nout in work.linears().values())
    return work.layers * per_layer


# ---------------------------------------------------------------------------------------
# Resource model
#
# The formulas follow what the RTL (sim/rtl) contains, register by register and adder by
# adder, and their per-element coefficients are calibrated to Yosys: ``synth_xilinx
# -family xcup -flatten`` of the RTL modules (bench/yosys_crosscheck.py; the counts, the
# model's counts and their ratios are committed in accel/yosys_calibration.json and
# checked by tests/test_yosys.py). FF and DSP counts are structural (register widths of
# the RTL, one DSP48E2 per product the RTL forms); the LUT coefficients of random logic
# (multiplexers, barrel shifters, comparators, LUT multipliers) are Yosys's. Yosys maps
# LUTs less tightly than Vivado (no cross-boundary LUT combining, its own ABC mapping of
# multiplexer trees and shift-add multipliers), so the LUT figures are a Yosys-calibrated,
# conservative estimate of a Vivado implementation, not a Vivado prediction; FFs, DSPs
# and BRAMs do not depend much on the tool. Components without RTL (GELU, the §7
# residual add, the AXI/DMA control, the weight and activation buffers) keep their
# documented first-principles values.


def finn_lut_mult(W: int, A: int) -> int:
    """FINN-R's LUT estimate of one ``W×A``-bit LUT multiplier: ``(2⌈(W+A)/6⌉ − 1)·(W+A)``
    (kept for comparison: Yosys maps the RTL's 9x5 shift-add lane to ~3x this, see
    ``lut_mult_lane_lut``)."""
    return (2 * ceil_div(W + A, 6) - 1) * (W + A)


#: Widths of the RTL (sim/rtl/bitsplit_pe.v, requant.v) that the formulas use.
PE_PRODUCT_BITS = 14   # 9-bit signed activation x 5-bit signed nibble (P_BITS)
PE_TREE_FIRST_BITS = 19  # first tree level: 14-bit lo + (14-bit hi << 4 in 8x8 mode), +1 carry
PE_CHAIN_TREE_FIRST_BITS = 23  # dsp2c: 18-bit chain sums, x16 on the hi chains, +1 carry
PE_ACC_BITS = 32
CHAN_PARAM_BITS = 32 + 16 + 6  # bias, requant multiplier M, shift sh of one channel

#: Resource coefficients, each with its source. "Yosys fit" values are least-squares fits
#: to the Yosys counts of bench/yosys_crosscheck.py (``--fit`` prints them); "RTL" values
#: are register or adder widths read off the RTL; the rest are first-principles estimates
#: of parts that have no RTL yet. ``coefficients(**overrides)`` / the ``coeffs=`` argument
#: override them. Units: per element named.
COEFFS: dict[str, float] = {
    # --- multiplier lanes (docs/engine.md §2, §3; sim/rtl/bitsplit_pe.v)
    # LUT multiplier lane (PACKING 2): the RTL's shift-add a*w = sum_i w[i]*(a<<i) - w[4]*(a<<4)
    # on 14-bit words. Yosys maps a lane to ~107 LUTs in a lone PE (ABC builds the four
    # adders and their AND/select terms with LUT6+MUXF7/F8: about 3x FINN-R's 36 for an
    # 8x4 multiplier; a Vivado '*' in fabric would be nearer FINN-R's figure). In a PE
    # array part of it depends on the activation only and is shared by the PEs of a PU
    # (one activation lane feeds N LUT lanes): per lane + per activation lane of a LUT PU,
    # Yosys fit over bitsplit_pe M = 8, 16, 32 and pe_array G = 2, 4, 8 (M = 8).
    "lut_mult_lane_lut": 74.4,
    "lut_mult_act_lut": 32.8,
    # FFs per LUT lane beyond the common lane registers (Yosys fit: about one more per lane
    # than a dsp1 lane)
    "lut_mult_lane_ff": 1.2,
    # per lane (all packings): the 5-bit weight operand, w_signed & nibble[3] on even lanes
    # (RTL: one LUT per lane pair)
    "lane_operand_lut": 0.5,
    # per lane (all packings): S0 weight-nibble register (4) and S1 product register (14)
    # (RTL: bitsplit_pe.v s0_w, s1_prod)
    "lane_weight_ff": 4,
    "lane_product_ff": PE_PRODUCT_BITS,
    # dsp2 (§3): per DSP, p1 = (P >>> 18) + P[17] (a 14-bit increment, partly absorbed by
    # the carry chain) and the few FFs Yosys keeps beyond two 14-bit product registers
    # (Yosys fit over M = 8, 16, 32)
    "dsp2_unpack_lut": 5.4,
    "dsp2_unpack_ff": 1.8,
    # dsp2c (§3; bitsplit_pe.v PACKING 3, dsp2_chain.v): no product register and no
    # per-lane unpack (the pre-adder, multiplier, M/P registers and the chain's adders are
    # inside the DSP48E2s); per chain position j >= 1 the (a, w0, w1) operands (9 + 5 + 5 =
    # 19 bits) wait j cycles in skew registers, which Yosys maps to SRL16E/SRLC32E (about one
    # LUT per operand bit: 19.1) and into which it folds the lane's S0 registers (fewer FFs
    # than the common lane registers count: -6.5 per skewed position); per chain the
    # extraction of the two 18-bit sums, the chain's depth-1 operand FFs and the control
    # flags' C-stage delay line, less the per-PE parts Yosys shares in this variant (the
    # negative LUT term). Yosys fit over bitsplit_pe dsp2c M = 8, 16, 32 (exact there).
    "dsp2c_skew_lut": 19.1,
    "dsp2c_skew_ff": -6.5,
    "dsp2c_chain_lut": -24.2,
    "dsp2c_chain_ff": 49.1,
    # --- the PE input stage, once per PU: the S0 activation register (8 bits per lane;
    # the PEs of a PU register the same broadcast row, and synthesis merges the equal
    # registers), the 8x4/8x8 activation select and sign extension (a[l] or a[l/2]: a
    # 2:1 mux of 8 bits + sign, Yosys fit 7.9 per lane), and the pipeline's control flags
    # (valid/first/last/mode/user along S0, S1, the tree and the accumulator; Yosys fit,
    # the rest of them become SRL16E shift registers counted in the LUTs).
    "act_stage_ff_per_lane": 8,
    "act_decode_lut_per_lane": 7.9,
    "pe_ctrl_ff": 4.5,
    # --- adder tree per PE: M leaves of 14-bit products; the first level adds a lane pair
    # (the high lane x16 in 8x8 mode) into 19 bits, each level one bit wider (Yosys's
    # wreduce trims the sign extension to exactly these widths); one LUT (carry chain) and
    # one FF (pipelined levels) per sum bit.
    "tree_first_width": PE_TREE_FIRST_BITS,
    "tree_lut_per_bit": 1.0,
    "tree_ff_per_bit": 1.0,
    # 8x4/8x8 select of the x16 lane: Yosys folds it into the first level's adder LUTs
    "tree_mode_mux_lut_per_pair": 0,
    # --- accumulator per PE (§2): two ACC_BITS banks (64 FF); LUTs: the 32-bit add with
    # its bias/bank operand select and the drained-bank read mux (Yosys fit)
    "acc_lut": 60.8,
    "acc_ff": 2 * PE_ACC_BITS,
    # --- requantizer per PE (docs/arithmetic.md §3; sim/rtl/requant.v): acc (32) x M (16)
    # on two DSP48E2 (acc split at bit 17, the two partial products summed in fabric:
    # 16 LUTs + carry); FFs: the 48-bit product register, shift (6), y_signed (1), the
    # 8-bit code (RTL: 63); LUTs: the partial-product sum, then a narrow datapath: the
    # 49-bit 2p shifted by sh in three 4:1 stages that keep only a 9-bit window plus an
    # out-of-range flag (constant-range sign checks), a 10-bit rounding increment and the
    # 8-bit clamp (Yosys: 107).
    "requant_dsp": 2,
    "requant_lut": 107,
    "requant_ff": 63,
    # the PE's channel parameters (bias, M, sh: 54 bits) in the parameter-slot memory,
    # ``chan_param_slots`` slots (one per tile in flight: double-buffered), LUTRAM
    # (Yosys: RAM32M16, 14 bits per 8 LUTs)
    "chan_param_slots": 2,
    # --- GELU (§4 LUT) at each PE output of a PU: 256x8 ROM in distributed RAM (8 bits x
    # 4 LUT6 + F7/F8 muxes) + bypass mux. No RTL yet: first-principles estimate.
    "gelu_port_lut": 40,
    "gelu_port_ff": 8,
    # --- softmax core (docs/arithmetic.md §5; sim/rtl/softmax_core.v), one per PU.
    # per lane: k = mx - x twice (exp-sum and normalise passes), the running-max compare/
    # select, the exp-sum adder chain, e x R (8 x 33 bits: two DSP48E2), the rounding add,
    # the overflow test and clamp; FFs: the lane's stage registers (codes, e, output,
    # keep). Yosys fit over L = 2, 4 (the exp table and the row buffers are counted apart:
    # ``lutram_mp_luts``, ``ram_dp``).
    "sm_lane_lut": 163.3,
    "sm_lane_ff": 44,
    "sm_lane_dsp": 2,
    # per core: the 32-step radix-2 divider for R = floor(2^32/S) (33-bit compare/subtract,
    # quotient and remainder registers), the exp-sum accumulator, R and max registers along
    # the normalise pipeline, the two state machines (Yosys fit)
    "sm_core_lut": 132.4,
    "sm_core_ff": 264,
    # --- LayerNorm (docs/arithmetic.md §6, §7)
    # residual add a·M_a + b·M_b (§7) per lane: two DSPs (16x24 each), add + round + shift
    # + saturate. Not in the RTL (layernorm_core.v takes the sum): first-principles estimate.
    "ln_residual_dsp": 2,
    "ln_residual_lut": 176,
    # per lane of sim/rtl/layernorm_core.v, the divider z = floor((d·2^25 + sigma)/(2 sigma))
    # (§6 step 7): a pipelined restoring divider of 24 stages (|z| < 2^23), each a 50-bit
    # (RW = 26 + 24) compare/subtract on the carry chain (50 LUTs) and remainder select
    # (50 LUTs) with its 50-bit remainder register (RTL; the Yosys netlist of L = 1 has
    # 1193 remainder FFs; the quotient bits ride in SRLs, the divisor is per core) ...
    "ln_div_stages": 24,
    "ln_div_stage_lut": 100,
    "ln_div_stage_ff": 50,
    # ... and the rest of the lane: x² (one DSP) with its registers and its share of the
    # moments' adder trees, d = x - mu, the numerator and its magnitude, z·G (one DSP) + B,
    # the 64-bit rshr and clamp, their registers (Yosys fit over L = 1, 2, 4 of the
    # layernorm_core with the moments pipeline, less the divider)
    "ln_lane_dsp": 2,
    "ln_lane_lut": 427,
    "ln_lane_ff": 140,
    # per core: the 16-step (mu, with remainder) and 48-step (v) sequential dividers, the
    # 16-step mu·T shift-and-add (46-bit), the 25-step isqrt of a 49-bit value (three
    # 49-bit registers), the moment accumulators and the row contexts of the units (moments,
    # mu, nbeats), the ring pointers and count, the divider pipeline's shared divisor
    # registers (25 bits x 24 stages), control. No DSP: the scalar steps are sequential.
    # Yosys fit.
    "ln_core_lut": 1371,
    "ln_core_ff": 1598,
    "ln_core_dsp": 0,
    # --- memories
    # LUTRAM for simple-dual-port buffers when shallow and small, else RAMB18 (``ram``);
    # dual-port row buffers (a read at the write address and a second read port) stay in
    # LUTRAM up to ``lutram_max_bits`` whatever their depth, as Yosys maps them (``ram_dp``)
    "lutram_max_depth": 64,
    "lutram_max_bits": 8192,
    # --- control: AXI4 master (weight DMA) + AXI4-Lite registers + layer sequencer;
    # FIFOs in 4 RAMB36 (8 RAMB18). Typical AXI DataMover + SmartConnect sizes.
    "ctrl_lut": 6000,
    "ctrl_ff": 9000,
    "ctrl_bram18": 8,
    # per PU: tile/row sequencing, PE enables, output collection
    "pu_ctrl_lut": 250,
    "pu_ctrl_ff": 300,
    # per PU: register stages of the broadcast activation row (M codes x 8 bits) between
    # the activation buffer and the PEs, beyond the PEs' own input register (which the
    # PE input stage counts): one stage for the fan-out to N PEs
    "bcast_stages": 1,
}


def coefficients(**overrides: float) -> dict[str, float]:
    """``COEFFS`` with ``overrides`` (e.g. from a Yosys calibration); unknown names are an error."""
    unknown = set(overrides) - set(COEFFS)
    if unknown:
        raise KeyError(f"unknown cost-model coefficients: {sorted(unknown)}")
    return {**COEFFS, **overrides}


@dataclass
class Res:
    """LUT, FF, DSP48E2, RAMB18 and URAM288 counts (numbers or numpy arrays)."""

    lut: Any = 0
    ff: Any = 0
    dsp: Any = 0
    bram18: Any = 0
    uram: Any = 0

    KEYS = ("lut", "ff", "dsp", "bram18", "uram")

    def __add__(self, o: "Res") -> "Res":
        return Res(*(getattr(self, k) + getattr(o, k) for k in self.KEYS))

    def __radd__(self, o) -> "Res":  # sum() starts from 0
        return self if isinstance(o, int) and o == 0 else self.__add__(o)

    def __mul__(self, s) -> "Res":
        return Res(*(getattr(self, k) * s for k in self.KEYS))

    __rmul__ = __mul__

    def rounded(self) -> dict[str, Any]:
        """``{key: integer count}`` (fractions rounded up)."""
        return {k: _ceil(getattr(self, k) * 1.0) for k in self.KEYS}


def _where(cond, a: Res, b: Res) -> Res:
    return Res(*(np.where(cond, getattr(a, k), getattr(b, k)) for k in Res.KEYS))


#: RAMB18 aspect ratios (depth, width): true dual port up to 1K x 18, simple dual port 512 x 36.
BRAM18_MODES = ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
#: The true-dual-port ones (two read/write ports): up to 1K x 18.
BRAM18_TDP_MODES = BRAM18_MODES[:-1]


def bram18_count(depth, width, true_dual_port: bool = False):
    """RAMB18s for a ``depth x width`` memory: the best aspect ratio,
    ``min over modes of ceil(depth/d)·ceil(width/w)`` (FINN uses the 1K x 18 mode only);
    ``true_dual_port``: two read ports, so no 512 x 36 mode."""
    modes = BRAM18_TDP_MODES if true_dual_port else BRAM18_MODES
    return np.minimum.reduce([ceil_div(depth, d) * ceil_div(width, w) for d, w in modes]) \
        if isinstance(depth, np.ndarray) or isinstance(width, np.ndarray) else \
        min(ceil_div(depth, d) * ceil_div(width, w) for d, w in modes)


def uram_count(depth, width):
    """URAM288s (4K x 72) for a ``depth x width`` memory: ``ceil(depth/4096)·ceil(width/72)``."""
    return ceil_div(depth, 4096) * ceil_div(width, 72)


def lutram_luts(depth, width):
    """LUTs of a simple-dual-port LUTRAM ``depth x width`` (one write, one read port), per 64
    rows the cheapest UltraScale+ SLICEM primitive: RAM64M (4 LUTs, 3 bits), RAM64M8 (8
    LUTs, 7 bits) or, 32 rows deep at most, RAM32M16 (8 LUTs, 14 bits; what Yosys picks
    for the PE array's parameter slots)."""
    m64 = np.minimum(ceil_div(width, 3) * 4, ceil_div(width, 7) * 8)
    m32 = np.minimum(m64, ceil_div(width, 14) * 8)
    out = ceil_div(depth, 64) * np.where(depth <= 32, m32, m64)
    return out if isinstance(out, np.ndarray) and out.ndim else int(out)


def lutram_dp_luts(depth, width):
    """LUTs of a dual-port LUTRAM (a read/write port and a second read port:
    RAM64X1D / RAM128X1D / RAM256X1D, two LUTs per bit per 64 rows, as Yosys maps the
    cores' row buffers)."""
    return 2 * ceil_div(depth, 64) * width


def lutram_mp_luts(depth, width, read_ports):
    """LUTs of a LUTRAM with one write port and ``read_ports`` read ports as Yosys maps it:
    RAM64M8 (8 LUTs: seven one-bit read ports on one copy of a 64 x 1 column), replicated
    per 7 read ports, per bit, per 64 rows (the softmax core's exp table, one read port per
    lane in each of two passes). The 4:1 read multiplexers of a 256-deep table are in the
    per-lane LUTs."""
    return 8 * ceil_div(read_ports, 7) * width * ceil_div(depth, 64)


def ram(depth, width, c: Mapping[str, float]) -> Res:
    """One simple-dual-port memory: LUTRAM when shallow and small, else RAMB18."""
    small = (depth <= c["lutram_max_depth"]) & (depth * width <= c["lutram_max_bits"])
    return _where(small, Res(lut=lutram_luts(depth, width)), Res(bram18=bram18_count(depth, width)))


def ram_dp(depth, width, c: Mapping[str, float]) -> Res:
    """One dual-port memory (the cores' row buffers: written and read by one unit, read by
    the other): LUTRAM up to ``lutram_max_bits``, else true-dual-port RAMB18 (Yosys's
    choice for layernorm_core's rows)."""
    small = depth * width <= c["lutram_max_bits"]
    return _where(small, Res(lut=lutram_dp_luts(depth, width)),
                  Res(bram18=bram18_count(depth, width, true_dual_port=True)))


def adder_tree_bits(n, first_width):
    """Sum bits of a pipelined adder tree over ``n`` inputs: ``n−1`` adders, the first level
    ``first_width`` bits, one bit more per level: ``(n−1)(w1−1) + 2n − k − 2`` for
    ``n = 2^k`` (exact for powers of two, an estimate otherwise)."""
    k = ceil_log2(n)
    return np.maximum((n - 1) * (first_width - 1) + 2 * n - k - 2, 0)


def adder_tree_luts(n, first_width, c: Mapping[str, float]):
    """LUTs of a pipelined adder tree over ``n`` inputs: ``adder_tree_bits`` times
    ``tree_lut_per_bit`` (one LUT per sum bit on the carry chain)."""
    return adder_tree_bits(n, first_width) * c["tree_lut_per_bit"]


# --- components (each returns a Res; arguments are ints or arrays)


def multipliers(n_pes_dsp, n_pes_lut, M, dsp2, c: Mapping[str, float], n_pus_lut=None, chain=False) -> Res:
    """The multiplier lanes: ``n_pes_dsp`` PEs on DSPs (``dsp2``: one DSP per two lanes that
    share an activation, §3; else one per lane) and ``n_pes_lut`` PEs of LUT multipliers in
    ``n_pus_lut`` PUs (default: one PU if there are LUT PEs), whose activation-side terms
    are shared by the PU's PEs. Every lane has its weight-nibble register and product
    register (bitsplit_pe.v S0, S1). ``chain`` (dsp2c, with ``dsp2``): the DSP PEs' lanes
    have no product register and no unpack; instead ``dsp_chain_parts``."""
    dsp_lanes, lut_lanes = n_pes_dsp * M, n_pes_lut * M
    lanes = dsp_lanes + lut_lanes
    n_dsp = np.where(dsp2, dsp_lanes / 2, dsp_lanes)
    unpack = np.where(dsp2 & ~np.asarray(chain, dtype=bool), n_dsp, 0)
    prod_lanes = np.where(chain, lut_lanes, lanes)
    if n_pus_lut is None:
        n_pus_lut = np.minimum(n_pes_lut, 1)
    return Res(lut=lanes * c["lane_operand_lut"] + unpack * c["dsp2_unpack_lut"]
               + lut_lanes * c["lut_mult_lane_lut"] + n_pus_lut * M * c["lut_mult_act_lut"],
               ff=lanes * c["lane_weight_ff"] + prod_lanes * c["lane_product_ff"] + unpack * c["dsp2_unpack_ff"]
               + lut_lanes * c["lut_mult_lane_ff"],
               dsp=n_dsp) + dsp_chain_parts(np.where(chain, n_pes_dsp, 0), M, c)


def dsp_chain_parts(n_pes, M, c: Mapping[str, float]) -> Res:
    """dsp2c (§3) around the DSPs of ``n_pes`` PEs (``n_pes/2`` PE pairs): per pair ``M/C``
    chains of ``C = min(M/2, 32)`` positions; the operands of position ``j`` wait ``j``
    cycles (skew registers), each chain ends in the extraction of the pair's two sums."""
    C = chain_length(M)
    pairs = n_pes / 2
    chains = pairs * (M // np.maximum(C, 1))
    skewed = chains * np.maximum(C - 1, 0)
    return Res(lut=skewed * c["dsp2c_skew_lut"] + chains * c["dsp2c_chain_lut"],
               ff=skewed * c["dsp2c_skew_ff"] + chains * c["dsp2c_chain_ff"])


def pe_input_stages(P, M, c: Mapping[str, float]) -> Res:
    """The PEs' input stage, once per PU (its PEs take the same activation beat): the S0
    activation register, the 8x4/8x8 activation select and the pipeline's control flags."""
    return Res(lut=P * M * c["act_decode_lut_per_lane"],
               ff=P * (M * c["act_stage_ff_per_lane"] + c["pe_ctrl_ff"]))


def adder_trees(n_pes, M, c: Mapping[str, float], n_chain_pes=0) -> Res:
    """One adder tree per PE over its ``M`` lane products (+ the 8x4/8x8 mode select); of the
    ``n_pes``, ``n_chain_pes`` are dsp2c PEs (§3) whose tree only adds the ``M/C`` chain sums
    (18 bits, the hi chains x16 in 8x8 mode)."""
    flat = n_pes - n_chain_pes
    bits = adder_tree_bits(M, c["tree_first_width"])
    C = chain_length(M)
    cbits = adder_tree_bits(M // np.maximum(C, 1), PE_CHAIN_TREE_FIRST_BITS)
    return Res(lut=flat * (bits * c["tree_lut_per_bit"] + (M // 2) * c["tree_mode_mux_lut_per_pair"])
               + n_chain_pes * cbits * c["tree_lut_per_bit"],
               ff=(flat * bits + n_chain_pes * cbits) * c["tree_ff_per_bit"])


def accumulators(n_pes, c: Mapping[str, float]) -> Res:
    """Double-buffered 32-bit accumulators, one per PE (§2)."""
    return Res(lut=n_pes * c["acc_lut"], ff=n_pes * c["acc_ff"])


def requant_units(n, c: Mapping[str, float]) -> Res:
    """``n`` requantizers (sim/rtl/requant.v: 32x16 multiply on two DSPs, then a narrow
    round/shift/saturate datapath: a 9-bit window of the shifted product, an out-of-range
    flag, a 10-bit rounding increment, the clamp)."""
    return Res(lut=n * c["requant_lut"], ff=n * c["requant_ff"], dsp=n * c["requant_dsp"])


def channel_params(n_pes, c: Mapping[str, float]) -> Res:
    """The per-channel bias/M/sh of ``n_pes`` PEs in the parameter-slot LUTRAM (pe_array.v:
    one memory of all PEs' parameters; per PE its share, ``CHAN_PARAM_BITS`` bits wide)."""
    return Res(lut=n_pes * lutram_luts(c["chan_param_slots"], CHAN_PARAM_BITS))


def requantizers(n_pes, c: Mapping[str, float]) -> Res:
    """One requantizer per PE (32x16 multiply on two DSPs, narrow round/shift/saturate:
    ``requant_units``) + its channel's bias/M/sh slots."""
    return requant_units(n_pes, c) + channel_params(n_pes, c)


def gelu_tables(P, N, c: Mapping[str, float]) -> Res:
    """The GELU table of each PU, one read port per PE output."""
    return Res(lut=P * N * c["gelu_port_lut"], ff=P * N * c["gelu_port_ff"])


def softmax_cores(P, L_sm, R, c: Mapping[str, float]) -> Res:
    """One softmax core per PU with ``L_sm`` lanes (sim/rtl/softmax_core.v, NMAX = ``R``): the
    lanes, the divider and control, the 256 x 8 exp table (one read port per lane in each of
    the exp-sum and normalise passes) and the two row buffers (``2·ceil(R/L_sm)`` beats of
    ``L_sm`` codes and keep bits, dual port)."""
    B = ceil_div(R, L_sm)
    core = Res(lut=L_sm * c["sm_lane_lut"] + c["sm_core_lut"] + lutram_mp_luts(256, 8, 2 * L_sm),
               ff=L_sm * c["sm_lane_ff"] + c["sm_core_ff"],
               dsp=L_sm * c["sm_lane_dsp"])
    bufs = ram_dp(2 * B, 8 * L_sm, c) + ram_dp(2 * B, L_sm, c)
    return (core + bufs) * P


def layernorm_ring_depth(H, L_ln):
    """Beats in layernorm_core.v's row ring with HMAX = ``H``, ``BMAX = ceil(H / L_ln)``:
    ``max(BMAX + 128, 6 · min(BMAX, 48) + 32)`` (its header: enough that the ring never
    stalls the input in a stream)."""
    Bm = ceil_div(H, L_ln)
    return np.maximum(Bm + 128, 6 * np.minimum(Bm, 48) + 32)


def layernorm_unit(L_ln, H, c: Mapping[str, float]) -> Res:
    """sim/rtl/layernorm_core.v with ``L_ln`` lanes and HMAX = ``H``: the lanes (x² of
    the moments, the normalise pipeline with its divider), the scalar units (dividers,
    mu·T, square root, their row contexts), the ring of row beats (int16 codes: one write
    and one read port; the keep bits in LUTRAM, one RAM64M8 per 64 beats and 7 lanes, as
    Yosys maps them) and the per-element G (int16) and B (int32) memories."""
    B = ceil_div(H, L_ln)
    RD = layernorm_ring_depth(H, L_ln)
    lanes = Res(lut=L_ln * (c["ln_lane_lut"] + c["ln_div_stages"] * c["ln_div_stage_lut"]),
                ff=L_ln * (c["ln_lane_ff"] + c["ln_div_stages"] * c["ln_div_stage_ff"]),
                dsp=L_ln * c["ln_lane_dsp"])
    core = Res(lut=c["ln_core_lut"], ff=c["ln_core_ff"], dsp=c["ln_core_dsp"])
    ring = ram(RD, 16 * L_ln, c) + Res(lut=8 * ceil_div(RD, 64) * ceil_div(L_ln, 7))
    params = ram(B, 16 * L_ln, c) + ram(B, 32 * L_ln, c)
    return lanes + core + ring + params


def layernorm_core(L_ln, H, c: Mapping[str, float]) -> Res:
    """The LayerNorm core with ``L_ln`` lanes: the §7 residual add in front (not in the
    RTL) + ``layernorm_unit`` (the RTL core)."""
    residual = Res(lut=L_ln * c["ln_residual_lut"], dsp=L_ln * c["ln_residual_dsp"])
    return residual + layernorm_unit(L_ln, H, c)


def weight_buffer(P, N, M, K_max, c: Mapping[str, float]) -> Res:
    """Double-buffered weight buffer (§4): per PU ``2·ceil(K_max/M)`` words of ``N·M``
    nibbles (all PEs read the same address each cycle), i.e. ``2·K_max·G·4`` bits in all.
    During attention it holds the heads' K and V codes (the 8x8 mode's "weights", §2),
    which fit: a PE needs ``ceil(R/N)·d`` or ``ceil(d/N)·R`` bytes, its share is ``K_max``."""
    return ram(2 * ceil_div(K_max, M), 4 * N * M, c) * P


def activation_bytes(work: Workload) -> int:
    """Bytes of live activations: during attention the layer input (kept for the residual),
    Q, K, V and the context (``5·R·H``); during the FFN the LayerNorm output (residual), the
    FFN1 output and the FFN2 output (``R·(2H + ffn)``). int8 codes."""
    return work.R * max(5 * work.H, 2 * work.H + work.ffn)


def activation_buffer(work: Workload, M, uram_budget, c: Mapping[str, float]) -> Res:
    """The activation memory, read ``M`` codes per cycle by the PE array: URAM288 when the
    board has enough (``uram_budget``), else RAMB18."""
    nbytes = activation_bytes(work)
    depth, width = ceil_div(nbytes, M), 8 * M
    n_uram = uram_count(depth, width)
    return _where(n_uram <= uram_budget, Res(uram=n_uram), Res(bram18=bram18_count(depth, width)))


def control(P, M, c: Mapping[str, float]) -> Res:
    """AXI/DMA/sequencer (fixed) + per PU: control, activation broadcast registers and the
    PEs' input stage (``pe_input_stages``)."""
    return Res(lut=c["ctrl_lut"] + P * c["pu_ctrl_lut"],
               ff=c["ctrl_ff"] + P * (c["pu_ctrl_ff"] + c["bcast_stages"] * 8 * M),
               bram18=c["ctrl_bram18"]) + pe_input_stages(P, M, c)


def resources(work: Workload, fold, board: Board, coeffs: Mapping[str, float] | None = None,
              limit: float = 0.85) -> dict[str, Res]:
    """Resources of ``fold`` by component (``Res`` of floats or arrays)."""
    c = COEFFS if coeffs is None else coeffs
    P, N, M = fold.P, fold.N, fold.M
    n_dsp, n_lut = fold.P_dsp * N, fold.P_lut * N
    G = n_dsp + n_lut
    return {
        "multipliers": multipliers(n_dsp, n_lut, M, fold.dsp2, c, fold.P_lut, fold.chain),
        "adder_trees": adder_trees(G, M, c, np.where(fold.chain, n_dsp, 0)),
        "accumulators": accumulators(G, c),
        "requantizers": requantizers(G, c),
        "gelu": gelu_tables(P, N, c),
        "softmax": softmax_cores(P, fold.L_sm, work.R, c),
        "layernorm": layernorm_core(fold.L_ln, work.H, c),
        "weight_buffer": weight_buffer(P, N, M, work.K_max, c),
        "activation_buffer": activation_buffer(work, M, math.floor(limit * board.uram), c),
        "control": control(P, M, c),
    }


def total_resources(components: Mapping[str, Res]) -> dict[str, Any]:
    """Sum of the components, rounded up to integer counts."""
    return sum(components.values(), Res()).rounded()


# ---------------------------------------------------------------------------------------
# Power


def power_w(board: Board, totals: Mapping[str, Any], clock_mhz, ddr_gbps=0.0, scale: float | None = None):
    """Board power (W): the board's static power + ``scale`` x dynamic (per resource, linear
    in the clock, + DDR traffic). ``scale`` defaults to the fit to FQ-BERT (``POWER_SCALE``)."""
    pm = board.power
    if pm is None:
        raise ValueError(f"board {board.name} has no power model")
    k = POWER_SCALE if scale is None else scale
    return pm.static_w + k * pm.dynamic_w(totals, clock_mhz, ddr_gbps)


#: FQ-BERT's published implementations (Liu et al., DATE 2021, Table III and IV), BERT-base,
#: seq 128, 12 PUs, 214 MHz. ZCU111's URAM count is not reported (``None``; 0 in the power fit).
FQBERT_TABLE3: tuple[dict[str, Any], ...] = (
    {"board": "zcu102", "N": 8, "M": 16, "bram18": 838, "dsp": 1751, "ff": 124_433, "lut": 123_157,
     "uram": 0, "latency_ms": 43.89, "power_w": 9.8, "fps_per_w": 2.32},
    {"board": "zcu102", "N": 16, "M": 8, "bram18": 877, "dsp": 1671, "ff": 151_010, "lut": 154_192,
     "uram": 0, "latency_ms": 45.35, "power_w": None, "fps_per_w": None},
    {"board": "zcu111", "N": 16, "M": 16, "bram18": 679, "dsp": 3287, "ff": 201_469, "lut": 189_724,
     "uram": None, "latency_ms": 23.79, "power_w": 13.2, "fps_per_w": 3.18},
)
FQBERT_CLOCK_MHZ = 214.0


def fit_power_scale() -> dict[str, Any]:
    """Fit the one free parameter of the power model: a global scale ``k`` of the dynamic
    part (the per-resource coefficients and the static split are the boards' stated typical
    values). Least squares over FQ-BERT's two published board powers, each computed from its
    own Table III resources at 214 MHz and its DDR traffic (BERT-base weights once per
    inference over the published latency). Returns ``k`` and the residuals (W)."""
    work = Workload.from_config("base")
    rows = [r for r in FQBERT_TABLE3 if r["power_w"] is not None]
    static, dyn, meas = [], [], []
    for r in rows:
        b = get_board(r["board"])
        gbps = weight_bytes_per_inference(work, 12 * r["N"]) / (r["latency_ms"] * 1e-3) / 1e9
        static.append(b.power.static_w)
        dyn.append(b.power.dynamic_w({k: r[k] or 0 for k in Res.KEYS}, FQBERT_CLOCK_MHZ, gbps))
        meas.append(r["power_w"])
    s, d, m = map(np.asarray, (static, dyn, meas))
    k = float(np.dot(d, m - s) / np.dot(d, d))
    fitted = s + k * d
    return {"scale": k, "rows": [
        {"board": r["board"], "N": r["N"], "M": r["M"], "published_w": r["power_w"], "static_w": float(si),
         "dynamic_w": float(k * di), "model_w": float(fi), "residual_w": float(r["power_w"] - fi)}
        for r, si, di, fi in zip(rows, s, d, fitted)]}


POWER_SCALE: float = fit_power_scale()["scale"]


# ---------------------------------------------------------------------------------------
# One folding


@dataclass
class Estimate:
    """The cost model's figures for one folding on one board (all estimates)."""

    folding: Folding
    workload: Workload
    board: str
    cycles: dict[str, Any]  # {"per_layer": {part: cycles}, "per_inference": int}
    latency_ms: float
    fps: float
    resources: dict[str, int]
    components: dict[str, dict[str, int]]
    capacity: dict[str, int]
    power_w: float
    fps_per_w: float
    ddr_gbps: float
    limit: float = 0.85

    @property
    def utilisation(self) -> dict[str, float]:
        return {k: (self.resources[k] / self.capacity[k] if self.capacity[k] else
                    (0.0 if self.resources[k] == 0 else math.inf)) for k in Res.KEYS}

    @property
    def feasible(self) -> bool:
        return all(self.resources[k] <= self.limit * self.capacity[k] for k in Res.KEYS)

    def as_dict(self) -> dict[str, Any]:
        return {"folding": self.folding.as_dict(), "board": self.board, "latency_ms": self.latency_ms,
                "fps": self.fps, "power_w": self.power_w, "fps_per_w": self.fps_per_w,
                "resources": dict(self.resources), "capacity": dict(self.capacity),
                "utilisation": {k: round(v, 4) for k, v in self.utilisation.items()},
                "components": self.components, "cycles": self.cycles, "ddr_gbps": self.ddr_gbps,
                "feasible": self.feasible, "limit": self.limit}


def evaluate(cfg: Any, fold: Folding, board: Board | str, coeffs: Mapping[str, float] | None = None,
             limit: float = 0.85) -> Estimate:
    """Cycles, latency, resources and power of ``fold`` for the workload ``cfg`` on ``board``."""
    b = get_board(board) if isinstance(board, str) else board
    work = Workload.from_config(cfg)
    parts = {k: int(v) for k, v in layer_cycles(work, fold, b).items()}
    per_inf = work.layers * parts["total"]
    lat = per_inf / (fold.clock_mhz * 1e3)
    comps = resources(work, fold, b, coeffs, limit)
    tot = total_resources(comps)
    gbps = weight_bytes_per_inference(work, fold.G) / (lat * 1e-3) / 1e9
    pw = float(power_w(b, tot, fold.clock_mhz, gbps))
    fps = 1e3 / lat
    return Estimate(folding=fold, workload=work, board=b.name,
                    cycles={"per_layer": parts, "layers": work.layers, "per_inference": per_inf},
                    latency_ms=lat, fps=fps, resources={k: int(v) for k, v in tot.items()},
                    components={k: {kk: int(vv) for kk, vv in v.rounded().items()} for k, v in comps.items()},
                    capacity=b.resources(), power_w=pw, fps_per_w=fps / pw, ddr_gbps=gbps, limit=limit)


# ---------------------------------------------------------------------------------------
# Folding search


@dataclass
class _Grid:
    """Folding fields as numpy arrays (duck-types ``Folding`` for the formulas)."""

    P_dsp: np.ndarray
    P_lut: np.ndarray
    N: np.ndarray
    M: np.ndarray
    dsp2: np.ndarray
    L_sm: np.ndarray
    L_ln: np.ndarray
    clock_mhz: Any = 250.0
    chain: Any = False  # dsp2c (bool array)

    @property
    def P(self):
        return self.P_dsp + self.P_lut

    @property
    def G(self):
        return self.P * self.N

    def take(self, idx) -> "_Grid":
        return _Grid(*(getattr(self, f)[idx] for f in ("P_dsp", "P_lut", "N", "M", "dsp2", "L_sm", "L_ln")),
                     clock_mhz=self.clock_mhz, chain=np.broadcast_to(self.chain, self.N.shape)[idx])


@dataclass
class FoldingResult:
    """``search``'s answer: the fastest feasible folding and the Pareto fronts."""

    best: Estimate | None
    pareto: dict[str, list[dict[str, Any]]]  # "power" / "lut": latency vs that cost
    evaluated: int
    feasible: int
    clocks: tuple[float, ...]
    limit: float
    seconds: float
    space: dict[str, Any] = field(default_factory=dict)

    @property
    def folding(self) -> Folding | None:
        return None if self.best is None else self.best.folding

    def as_dict(self) -> dict[str, Any]:
        return {"best": None if self.best is None else self.best.as_dict(), "pareto": self.pareto,
                "evaluated": self.evaluated, "feasible": self.feasible, "clocks": list(self.clocks),
                "limit": self.limit, "seconds": self.seconds, "space": self.space}


def _pareto_indices(lat: np.ndarray, cost: np.ndarray) -> np.ndarray:
    """Indices of the points not dominated in (latency, cost), by increasing latency."""
    # a cheap pass (sort on latency alone) leaves a superset: the front plus tied points
    order = np.argsort(lat, kind="stable")
    c = cost[order]
    cand = order[c <= np.minimum.accumulate(c)]
    # the exact pass on the few candidates: by latency, then cost
    order = cand[np.lexsort((cost[cand], lat[cand]))]
    c = cost[order]
    keep = np.ones(len(order), dtype=bool)
    keep[1:] = c[1:] < np.minimum.accumulate(c)[:-1]
    return order[keep]


def search(cfg: Any, board: Board | str, clock: float | None = None, limit: float = 0.85, *,
           packings: Iterable[str] = VERIFIED_PACKINGS, max_pus: int = 24,
           Ns: Iterable[int] = (2, 4, 8, 16, 32), Ms: Iterable[int] = (8, 16, 32, 64, 128),
           L_sms: Iterable[int] = (4, 8, 16, 32), L_lns: Iterable[int] = (8, 16, 32, 64),
           coeffs: Mapping[str, float] | None = None, front_points: int = 40) -> FoldingResult:
    """The fastest folding of the engine for ``cfg`` (batch 1) on ``board`` with every resource
    at most ``limit`` of the board's.

    Enumerates ``P_dsp`` (0..max_pus) DSP PUs packed as each of ``packings``, ``P_lut``
    (0..max_pus) LUT PUs, ``N``, ``M``, ``L_sm``, ``L_ln`` and the clock (``clock``, or every
    clock of ``board.clock_grid_mhz()`` when ``None``). Minimises latency, ties broken by
    lower power then fewer LUTs. The Pareto fronts (latency vs power, latency vs LUTs) are
    over all feasible points and clocks, thinned to ``front_points`` each.
    """
    t0 = time.perf_counter()
    b = get_board(board) if isinstance(board, str) else board
    work = Workload.from_config(cfg)
    c = COEFFS if coeffs is None else coeffs
    clocks = (float(clock),) if clock is not None else b.clock_grid_mhz()
    packings = tuple(packings)
    for p in packings:
        if p not in DSP_PACKINGS:
            raise ValueError(f"packings: {p!r} (the DSP PUs' packing: {', '.join(DSP_PACKINGS)}; "
                             "LUT PUs are P_lut)")
    # the grid: packing code x P_dsp x P_lut x N x M x L_sm x L_ln; P_dsp = 0 only once (all LUT)
    pk = np.array([p in ("dsp2", "dsp2c") for p in packings] + [False], dtype=bool)
    ch = np.array([p == "dsp2c" for p in packings] + [False], dtype=bool)
    is_lut_only = np.array([False] * len(packings) + [True])
    axes = np.meshgrid(np.arange(len(pk)), np.arange(0, max_pus + 1), np.arange(0, max_pus + 1),
                       np.asarray(list(Ns)), np.asarray(list(Ms)), np.asarray(list(L_sms)),
                       np.asarray(list(L_lns)), indexing="ij")
    ipk, Pd, Pl, N, M, Ls, Ll = (a.ravel() for a in axes)
    ok = ((Pd > 0) != is_lut_only[ipk]) & (Pd + Pl >= 1) & ((N % 2 == 0) | ~pk[ipk] | (Pd == 0))
    ok &= ~ch[ipk] | (M // 2 <= CHAIN_MAX) | ((M // 2) % CHAIN_MAX == 0)  # dsp2c chains (§3)
    g = _Grid(Pd[ok], Pl[ok], N[ok], M[ok], pk[ipk[ok]], Ls[ok], Ll[ok], chain=ch[ipk[ok]])
    packing_of = np.where(is_lut_only[ipk[ok]], "lut", np.asarray(packings + ("lut",))[ipk[ok]])
    comps = resources(work, g, b, c, limit)
    tot = total_resources(comps)
    cap = b.resources()
    feas = np.ones(len(g.N), dtype=bool)
    for k in Res.KEYS:
        feas &= tot[k] <= limit * cap[k]
    fi = np.nonzero(feas)[0]
    gf = g.take(fi)
    totf = {k: v[fi] for k, v in tot.items()}
    if len(fi) == 0:
        return FoldingResult(None, {"power": [], "lut": []}, int(ok.sum()) * len(clocks), 0, clocks, limit,
                             time.perf_counter() - t0)
    # Cycles depend on (P, N, M, L_sm, L_ln), D_pe's packing (dsp2c or not) and the clock
    # only: evaluate each such key once.
    key = np.stack([gf.P, gf.N, gf.M, gf.L_sm, gf.L_ln, gf.chain.astype(np.int64)], axis=1)
    ukeys, first, inv = np.unique(key, axis=0, return_index=True, return_inverse=True)
    inv = inv.ravel()
    gu = gf.take(first)
    # Within a key every point has the same latency and DDR traffic at every clock, so the
    # lowest-power point is the one of least dynamic power per MHz, whatever the clock.
    dyn_per_mhz = b.power.dynamic_w(totf, 1.0)
    lutf = totf["lut"].astype(float)

    def argmin_per_key(cost: np.ndarray) -> np.ndarray:
        order = np.lexsort((totf["lut"], cost, inv))  # by key, then cost, then LUTs
        starts = np.ones(len(order), dtype=bool)
        starts[1:] = inv[order][1:] != inv[order][:-1]
        return order[starts]  # one feasible-point index per key, in key order

    low_power, low_lut = argmin_per_key(dyn_per_mhz), argmin_per_key(lutf)
    compute = layer_cycles(work, gu, None)["total"]  # clock-independent part (§4)
    wbytes = weight_bytes_per_inference(work, gu.G)
    nu = len(ukeys)
    lat = np.empty((len(clocks), nu))
    pw = np.empty((len(clocks), nu))  # power of each key's lowest-power point
    for ci, f in enumerate(clocks):
        lat[ci] = work.layers * (compute + memory_stall_cycles(work, gu, _bytes_per_cycle(b, f))) / (f * 1e3)
        gbps = wbytes / (lat[ci] * 1e-3) / 1e9
        pw[ci] = power_w(b, {k: v[low_power] for k, v in totf.items()}, f, gbps)
    lat, pw = lat.ravel(), pw.ravel()
    clk = np.repeat(np.asarray(clocks), nu)
    ukey = np.tile(np.arange(nu), len(clocks))
    lut_lp = np.tile(lutf[low_power], len(clocks))  # LUTs of the lowest-power point
    lut_ll = np.tile(lutf[low_lut], len(clocks))

    def folding_at(point: int, f: float) -> Folding:
        i = fi[point]
        return Folding(P_dsp=int(g.P_dsp[i]), P_lut=int(g.P_lut[i]), N=int(g.N[i]), M=int(g.M[i]),
                       packing=str(packing_of[i]), clock_mhz=float(f), L_sm=int(g.L_sm[i]),
                       L_ln=int(g.L_ln[i]))

    near = np.nonzero(lat <= lat.min() * (1 + 1e-12))[0]
    j = int(near[np.lexsort((lut_lp[near], pw[near]))[0]])
    best = evaluate(work, folding_at(low_power[ukey[j]], clk[j]), b, c, limit)
    fronts = {}
    for name, cost, pick in (("power", pw, low_power), ("lut", lut_ll, low_lut)):
        pts = _pareto_indices(lat, cost)
        if len(pts) > front_points:
            pts = pts[np.unique(np.linspace(0, len(pts) - 1, front_points).round().astype(int))]
        fronts[name] = []
        for jj in pts:
            point = pick[ukey[jj]]
            tot_p = {k: int(totf[k][point]) for k in Res.KEYS}
            gb = float(wbytes[ukey[jj]] / (lat[jj] * 1e-3) / 1e9)
            fronts[name].append({"folding": folding_at(point, clk[jj]).as_dict(), "latency_ms": float(lat[jj]),
                                 "power_w": float(power_w(b, tot_p, clk[jj], gb)), **tot_p})
    space = {"packings": list(packings) + ["lut"], "max_pus": max_pus, "N": list(Ns), "M": list(Ms),
             "L_sm": list(L_sms), "L_ln": list(L_lns)}
    return FoldingResult(best, fronts, int(ok.sum()) * len(clocks), int(len(fi)) * len(clocks), clocks, limit,
                         time.perf_counter() - t0, space)


# ---------------------------------------------------------------------------------------
# Calibration against FQ-BERT


def calibrate_fqbert(coeffs: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """Our model of FQ-BERT's own foldings (``fqbert_folding``: P = 12, dsp1, 214 MHz) on
    BERT-base against its Table III rows: ours, published, and ratios ours/published."""
    out = []
    for r in FQBERT_TABLE3:
        est = evaluate("base", fqbert_folding(r["N"], r["M"]), r["board"], coeffs, limit=1.0)
        ours = {**est.resources, "latency_ms": est.latency_ms, "power_w": est.power_w, "fps_per_w": est.fps_per_w}
        pub = {k: r[k] for k in ("lut", "ff", "dsp", "bram18", "uram", "latency_ms", "power_w", "fps_per_w")}
        ratio = {k: (ours[k] / pub[k] if pub[k] else None) for k in pub}
        out.append({"board": r["board"], "N": r["N"], "M": r["M"], "ours": ours, "published": pub,
                    "ratio": ratio, "estimate": est})
    return out
