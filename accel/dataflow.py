"""Cost model of a FINN-style CNN dataflow accelerator and its folding search.

Every layer of the network is one matrix-vector-activation unit (MVAU, ``sim/rtl/mvau.v``,
[`docs/dataflow.md`](../docs/dataflow.md)), optionally fed by a sliding-window unit (SWU)
that turns a feature map into the MVAU's input vectors (im2col as a stream); all layers
run concurrently and stream into each other. Folding = ``(PE, SIMD)`` per layer.

* **Cycles** (exact for the RTL): one MVAU run of ``V`` vectors takes
  ``mvau_cycles = NF·SF·V + D_MVAU`` clock cycles, ``NF = ceil(MH/PE)``,
  ``SF = ceil(MW/SIMD)``, ``D_MVAU = 5`` (``D_MVAU_RQ = 7`` with the requant output
  stage; mvau.v's pipeline; tests/test_rtl_mvau.py
  compares it with ``==`` against simulation). Per inference a layer is busy
  ``layer_cycles = max(NF·SF·V, SWU read cycles)``; the dataflow's initiation interval is
  ``II = max_l layer_cycles_l`` and its latency is :func:`dataflow_cycles`'s formula.
* **Resources** (LUT, FF, DSP48E2, RAMB18 per layer) follow mvau.v's structure: weight
  memories (one per PE, ``NF·SF`` words of ``SIMD·WB`` bits: LUTRAM when small, RAMB18
  otherwise, as Yosys maps them), the input buffer, the products (LUT shift-add or one
  DSP48E2 each), the beat adder tree / popcount, the accumulator, the output stage —
  threshold memories and comparators, or (``Layer.out_stage = "requant"``, mvau.v
  ``RQ = 1``) one requantizer per PE with its bias/multiplier/shift memories — the pipeline
  registers (counted bit by bit from the RTL) and control.
  LUT coefficients are least-squares fits to Yosys synthesis of mvau.v
  (``bench/dataflow_crosscheck.py``, ``accel/dataflow_calibration.json``; Yosys's
  ``synth_xilinx`` is a proxy for Vivado, see codesign.sim.yosys). The SWU has no RTL here:
  its line buffer is sized exactly, its logic is a first-principles estimate.
* **Pooling** (:class:`Pool`, ``sim/rtl/pool.v`` max, ``sim/rtl/avgpool.v`` average): a
  pool unit fed by a layer's output stream (``Layer.pool``), ``P = PE`` channels per beat;
  its cycles are the RTL's exact model (:func:`pool_cycles`, tests/test_rtl_pool.py), its
  resources a Yosys-fitted model (:func:`pool_resources`, ``bench/dataflow_crosscheck.py``;
  the average unit's rows ``avg ...`` of ``pool_configs`` in the calibration file).
* **Search** (:func:`search`): per layer ``PE | MH`` and ``SIMD | MW`` (``SIMD | C`` under
  a sliding window, as FINN's SWU needs); minimise II within ``limit`` of the board's
  LUT/FF/DSP/BRAM18 (default 85 %), or meet a target frame rate at minimum LUTs. Exact:
  for a candidate II every layer's foldings that meet it are reduced to their Pareto set
  in (LUT, FF, DSP, BRAM18) and the sets are combined layer by layer, dropping sums over
  the budget; the smallest feasible II is found by bisection over the candidate II values.

numpy only (plus the board table and the engine model's memory helpers).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from codesign.accel.boards import Board, get_board
from codesign.accel.engine import Res, bram18_count, ceil_div, lutram_luts

__all__ = [
    "D_MVAU", "D_MVAU_RQ", "D_POOL", "D_POOL_AVG", "POOL_MODES", "pool_depth", "pool_widths", "OUT_STAGES", "mvau_depth", "MODES", "RES_TYPES", "COEFFS", "coefficients", "Window", "Pool", "Layer", "LayerCost",
    "DataflowEstimate", "SearchResult", "Sparse", "mvau_cycles", "mvau_stream_cycles", "swu_read_cycles",
    "sparse_stream_cycles", "sparse_fill_cycles",
    "window_fill_cycles", "layer_cycles", "dataflow_cycles", "widths", "mult_on_dsp", "memory",
    "mvau_resources", "swu_resources", "layer_resources", "evaluate", "candidates", "search",
    "pool_stream_cycles", "pool_cycles", "pool_fill_cycles", "pool_resources",
]

#: mvau.v's pipeline depth in the cycle model: issue slot + R1 (operands) .. R5 (output
#: register) and the sink taking the beat at the next edge (see the RTL's header).
D_MVAU = 5
#: mvau.v's pipeline depth with the requant output stage (``RQ = 1``): R5 = acc + bias,
#: R6 = requant.v's product, R7 = its rounded, saturated code (see the RTL's header).
D_MVAU_RQ = 7
#: pool.v's pipeline depth in its cycle model: R1 and R2 after the slot, the sink taking
#: the beat at the next edge (see the RTL's header).
D_POOL = 2
#: avgpool.v's depth: R1, R2 (window sum), R3 (requant.v's product), R4 (its rounded,
#: saturated code, the output register), the sink one edge later.
D_POOL_AVG = 4
#: Pool.mode: "max" (§9 maxpool) or "avg" (§9 avgpool: window sum, then requant §3).
POOL_MODES = ("max", "avg")
MODES = ("binary", "lowbit")
#: A layer's output stage: "threshold" (NT = 2^out_bits - 1 thresholds per channel, or the
#: raw accumulator when out_bits = 0) or "requant" (bias add + multiplier-shift requantizer
#: per PE, mvau.v ``RQ = 1``, docs/dataflow.md "Requant output stage").
OUT_STAGES = ("threshold", "requant")
RES_TYPES = ("auto", "lut", "dsp")

#: Resource coefficients (per element named). "Yosys fit": least-squares fit to the Yosys
#: counts of bench/dataflow_crosscheck.py (accel/dataflow_calibration.json). "RTL":
#: read off mvau.v. "estimate": first principles, no RTL (the SWU).
COEFFS: dict[str, float] = {
    # --- products (low-bit mode, LUT), per partial-product bit AE·WE of a lane (the RTL's
    # shift-add sum_i w_i·(a << i) over the decoded operands)  [Yosys fit]
    "lut_mult_per_pp_bit": 1.04,
    # --- beat adder tree, per input bit: (SIMD - 1)·PW per PE. Yosys/ABC merges the
    # shift-add products into the tree, so most of the lane logic lands here  [Yosys fit]
    "lut_tree_per_bit": 5.55,
    # --- binary: XNOR + mask + popcount, per lane  [Yosys fit]
    "lut_xnor_pop_per_lane": 4.31,
    # --- accumulator, per bit (one LUT per bit of a ripple adder; carries in CARRY8)  [RTL]
    "lut_acc_per_bit": 1.0,
    # --- threshold comparators and their count, per threshold bit (NT·TW per PE); the
    # comparisons run on carry chains, which are not LUTs  [Yosys fit]
    "lut_cmp_per_bit": 0.21,
    # --- control (fold counters, handshakes, lane masks)  [estimate]
    "lut_control": 20.0,
    # --- requant output stage (mvau.v RQ = 1), per PE: requant.v's rounding window, round
    # and saturation logic, a base plus a part per output bit (its product is on DSP48E2s,
    # the bias add is an ACC-wide adder at lut_acc_per_bit)  [Yosys fit]
    "lut_rq_base": 11.0,
    "lut_rq_per_out_bit": 11.4,
    # --- requant.v's product: one DSP48E2 up to this biased-accumulator width (acc x M
    # fits a 27 x 18 multiplier), two above it (requant.v splits acc at bit 17)  [Yosys]
    "rq_one_dsp_max_acc_bits": 18.0,
    # --- memories: LUTRAM up to this many bits and this depth, else RAMB18 (Yosys
    # memory_libmap on mvau.v: 32x32 and 16x32 LUTRAM, 288x32 RAMB18)  [Yosys]
    "lutram_max_bits": 4096.0,
    "lutram_max_depth": 256.0,
    # --- DSP products: one DSP48E2 per product (the product register stays in fabric:
    # Yosys does not pack it into the DSP's M register on mvau.v)  [Yosys]
    "dsp_per_product": 1.0,
    # --- SWU (no RTL): address counters and read/write control, and per bit of the
    # output word (read mux)  [estimate]
    "swu_lut_base": 120.0,
    "swu_ff_base": 100.0,
    "swu_lut_per_bit": 1.0,
    # --- pool unit (pool.v): lane-wise max, per bit of each of the 2·(K-1)·P two-input
    # maxima (horizontal taps and buffered rows); ABC merges 1- and 2-bit maxima into few
    # LUTs, wider ones need a comparator and a mux per bit  [Yosys fit]
    "lut_pool_max_per_bit_wide": 2.7,
    "lut_pool_max_per_bit_narrow": 0.8,
    # --- pool unit: slot counters, padding test, window-closing comparisons  [Yosys fit]
    "lut_pool_control": 55.0,
    # --- pool unit: delay-line segments deeper than this many words are shift registers
    # (Yosys shregmap: SRL16E/SRLC32E, one per bit per 32 words), shallower ones FFs  [Yosys]
    "pool_srl_min_depth": 3.0,
    # --- average pool unit (avgpool.v): window-sum adders, per bit of the (K-1)·P row adders
    # (HS_W bits) and (K-1)·P column adders (SUM_W bits); and per lane, the input decode and
    # what requant.v's wider product (SUM_W + 24 bits) adds over lut_rq_base +
    # lut_rq_per_out_bit·OB (its rounding window's sign reductions)  [Yosys fit, 5 configs]
    "lut_avgpool_sum_per_bit": 1.4,
    "lut_avgpool_per_lane": 25.0,
}


def coefficients(**overrides: float) -> dict[str, float]:
    """``COEFFS`` with ``overrides``; unknown names are an error."""
    unknown = set(overrides) - set(COEFFS)
    if unknown:
        raise KeyError(f"unknown dataflow coefficients: {sorted(unknown)}")
    return {**COEFFS, **overrides}


# ---------------------------------------------------------------------------------------
# Layers


@dataclass(frozen=True)
class Window:
    """A ``k x k`` sliding window over a ``C``-channel ``ifm_h x ifm_w`` feature map with
    ``stride`` and symmetric zero ``pad`` (square kernel). ``line_buffer``: elements the
    SWU buffers; default the minimum of a streaming window generator,
    ``((k - 1)·(ifm_w + 2·pad) + k)·C`` ((k-1) padded rows plus k pixels)."""

    k: int
    C: int
    ifm_h: int
    ifm_w: int
    stride: int = 1
    pad: int = 0
    line_buffer: int | None = None

    def __post_init__(self) -> None:
        if min(self.k, self.C, self.ifm_h, self.ifm_w, self.stride) < 1 or self.pad < 0 or self.pad >= self.k:
            raise ValueError(f"Window {self}: need k, C, ifm_h, ifm_w, stride >= 1 and 0 <= pad < k")
        if self.ofm_h < 1 or self.ofm_w < 1:
            raise ValueError(f"Window {self}: the kernel does not fit the padded input")

    @property
    def ofm_h(self) -> int:
        return (self.ifm_h + 2 * self.pad - self.k) // self.stride + 1

    @property
    def ofm_w(self) -> int:
        return (self.ifm_w + 2 * self.pad - self.k) // self.stride + 1

    @property
    def buffer_elems(self) -> int:
        if self.line_buffer is not None:
            return int(self.line_buffer)
        return ((self.k - 1) * (self.ifm_w + 2 * self.pad) + self.k) * self.C


@dataclass(frozen=True)
class Pool:
    """A ``k x k`` pooling unit (``sim/rtl/pool.v``) over a ``C``-channel
    ``ifm_h x ifm_w`` stream of ``bits``-bit codes, ``stride``, symmetric ``pad < k``
    (docs/arithmetic.md §9; square window, equal strides: pool.v's parameters). Its lanes
    per beat are the feeding layer's ``PE``.

    ``mode``: "max" (pool.v, the padding holds lo) or "avg" (``sim/rtl/avgpool.v``: the
    window sum, padding 0, then requant §3 by a runtime 24-bit ``M`` and shift, one
    requant.v per lane;
    ``out_bits`` (2..16, default ``bits``) is the output code width; global average
    pooling is ``k = ifm_h = ifm_w``, ``pad = 0``). ``in_signed`` (avg only) selects the
    input's value range for the sum width (a bipolar input is 1-bit signed)."""

    name: str
    C: int
    ifm_h: int
    ifm_w: int
    k: int
    stride: int
    pad: int = 0
    bits: int = 8
    mode: str = "max"
    out_bits: int | None = None
    in_signed: bool = True

    def __post_init__(self) -> None:
        if min(self.C, self.ifm_h, self.ifm_w, self.k, self.stride) < 1 or not 0 <= self.pad < self.k:
            raise ValueError(f"pool {self.name!r}: need C, ifm_h, ifm_w, k, stride >= 1 and 0 <= pad < k, "
                             f"got {self}")
        if not 1 <= self.bits <= 8:
            raise ValueError(f"pool {self.name!r}: bits={self.bits}; pool.v takes 1..8-bit codes")
        if self.mode not in POOL_MODES:
            raise ValueError(f"pool {self.name!r}: mode={self.mode!r} not in {POOL_MODES}")
        if self.mode == "max" and self.out_bits is not None:
            raise ValueError(f"pool {self.name!r}: out_bits is for mode 'avg' (a max pool outputs its input type)")
        if self.mode == "avg" and not 2 <= self.ob <= 16:
            raise ValueError(f"pool {self.name!r}: average pooling outputs {self.ob}-bit codes; requant (§3) "
                             "outputs have 2..16 bits")
        if self.ifm_h + 2 * self.pad < self.k or self.ifm_w + 2 * self.pad < self.k:
            raise ValueError(f"pool {self.name!r}: the {self.k}x{self.k} window does not fit the padded input")

    @property
    def ofm_h(self) -> int:
        return (self.ifm_h + 2 * self.pad - self.k) // self.stride + 1

    @property
    def ofm_w(self) -> int:
        return (self.ifm_w + 2 * self.pad - self.k) // self.stride + 1

    @property
    def ob(self) -> int:
        """Output code bits: ``bits`` for a max pool, ``out_bits`` (default ``bits``) for avg."""
        return self.bits if self.out_bits is None else int(self.out_bits)


@dataclass(frozen=True)
class Sparse:
    """Block sparsity of a layer's weight matrix (docs/pruning.md; the block-CSR of
    ``codesign.hls.sparse.pack_sparse``): ``pe`` x ``simd`` blocks, of which ``nb`` are
    stored (hold a non-zero weight) and ``ne`` row groups store none. The block shape is
    the folding, so a sparse layer has the one candidate ``(PE, SIMD) = (pe, simd)``; the
    block-sparse MVAU (``sim/rtl/mvau_sparse.v``, ``hls/include/codesign/sparse.h``) walks
    ``slots = nb + ne`` blocks per vector (an empty row group costs one bias-only slot)."""

    pe: int
    simd: int
    nb: int
    ne: int = 0

    def __post_init__(self) -> None:
        if min(self.pe, self.simd) < 1 or self.nb < 0 or self.ne < 0:
            raise ValueError(f"Sparse: need pe, simd >= 1 and nb, ne >= 0, got {self}")

    @property
    def slots(self) -> int:
        return self.nb + self.ne


@dataclass(frozen=True)
class Layer:
    """One MVAU layer: an ``MH x MW`` matrix applied to ``vectors`` input vectors per
    inference (output pixels; 1 for a fully connected layer). ``WB``/``AB``: weight and
    activation bits (1 = bipolar); ``mode``: "binary" (XNOR-popcount, WB = AB = 1) or
    "lowbit"; ``out_bits``: output code bits, thresholds ``NT = 2^out_bits - 1`` (0: the
    raw accumulator, no thresholds); ``res_type``: products in "lut", "dsp" or "auto"
    (:func:`mult_on_dsp`); ``window``: the SWU feeding it (then ``MW = k·k·C`` and
    ``vectors = ofm_h·ofm_w``); ``pool``: a max-pooling unit fed by the layer's output
    stream (then ``pool.C = MH`` and ``pool.ifm_h·pool.ifm_w = vectors``; it takes the
    MVAU's ``PE`` lanes per beat); ``pe_max``: the largest PE the layer's kernel accepts
    (a grouped convolution's ``OC/groups``: conv.h keeps a PE fold inside one group), None
    for no bound; ``out_stage``: "threshold" (above) or "requant" — per-channel bias add
    and multiplier-shift requantizer (mvau.v ``RQ = 1``): ``out_bits`` (2..16) output
    bits, ``m_bits`` (1..24) multiplier bits, ``bias_bits`` (2..32) signed bias bits; then
    ``NT = 0`` and the pipeline is ``D_MVAU_RQ`` deep; ``sparse``: the layer's weight is
    block-sparse (:class:`Sparse`) and runs on the block-sparse MVAU at the block shape's
    folding (:func:`layer_cycles`, :func:`mvau_resources`; mvau_sparse.v has mvau.v's
    threshold, requant and raw-accumulator stages)."""

    name: str
    MH: int
    MW: int
    vectors: int = 1
    WB: int = 1
    AB: int = 1
    mode: str = "binary"
    a_signed: bool = True
    out_bits: int = 1
    res_type: str = "auto"
    window: Window | None = None
    pool: Pool | None = None
    pe_max: int | None = None
    out_stage: str = "threshold"
    m_bits: int = 16
    bias_bits: int = 16
    sparse: Sparse | None = None

    def __post_init__(self) -> None:
        where = f"layer {self.name!r}"
        sp = self.sparse
        if sp is not None:
            nf, sf = ceil_div(self.MH, sp.pe), ceil_div(self.MW, sp.simd)
            if sp.pe > self.MH or sp.simd > self.MW or sp.nb > nf * sf or sp.ne > nf:
                raise ValueError(f"{where}: sparse blocks {sp} do not fit {nf} x {sf} blocks of {sp.pe} x {sp.simd}")
        if min(self.MH, self.MW, self.vectors) < 1:
            raise ValueError(f"{where}: MH={self.MH}, MW={self.MW}, vectors={self.vectors} must be >= 1")
        if not (1 <= self.WB <= 8 and 1 <= self.AB <= 8):
            raise ValueError(f"{where}: WB={self.WB}, AB={self.AB}; supported 1..8 bits")
        if self.AB == 1 and not self.a_signed:
            raise ValueError(f"{where}: unsigned 1-bit activations are not supported (1-bit is bipolar)")
        if self.mode not in MODES:
            raise ValueError(f"{where}: mode {self.mode!r}; supported {', '.join(MODES)}")
        if self.mode == "binary" and not (self.WB == 1 and self.AB == 1):
            raise ValueError(f"{where}: binary mode needs WB = AB = 1 (bipolar), got WB={self.WB}, AB={self.AB}")
        if self.out_stage not in OUT_STAGES:
            raise ValueError(f"{where}: out_stage {self.out_stage!r}; supported {', '.join(OUT_STAGES)}")
        if self.out_stage == "requant":
            if not (2 <= self.out_bits <= 16 and 1 <= self.m_bits <= 24 and 2 <= self.bias_bits <= 32):
                raise ValueError(f"{where}: requant stage out_bits={self.out_bits}, m_bits={self.m_bits}, "
                                 f"bias_bits={self.bias_bits}; supported 2..16, 1..24, 2..32")
        elif not 0 <= self.out_bits <= 8:
            raise ValueError(f"{where}: out_bits={self.out_bits}; supported 0 (accumulator) .. 8")
        if self.res_type not in RES_TYPES:
            raise ValueError(f"{where}: res_type {self.res_type!r}; supported {', '.join(RES_TYPES)}")
        if self.pe_max is not None and self.pe_max < 1:
            raise ValueError(f"{where}: pe_max={self.pe_max} must be >= 1")
        if self.res_type == "dsp" and self.mode == "binary":
            raise ValueError(f"{where}: a binary layer has no multipliers to put on DSPs")
        w = self.window
        if w is not None and (self.MW != w.k * w.k * w.C or self.vectors != w.ofm_h * w.ofm_w):
            raise ValueError(f"{where}: with a {w.k}x{w.k}x{w.C} window MW must be {w.k * w.k * w.C} "
                             f"and vectors {w.ofm_h * w.ofm_w}, got MW={self.MW}, vectors={self.vectors}")
        pl = self.pool
        if pl is not None and (pl.C != self.MH or pl.ifm_h * pl.ifm_w != self.vectors):
            raise ValueError(f"{where}: its pool {pl.name!r} must take C = MH = {self.MH} channels of "
                             f"{self.vectors} pixels, got C={pl.C}, {pl.ifm_h}x{pl.ifm_w}")
        if widths(self)["ACC_W"] > 30:
            raise ValueError(f"{where}: needs a {widths(self)['ACC_W']}-bit accumulator; mvau.v supports 30")

    @property
    def NT(self) -> int:
        if self.out_stage == "requant":
            return 0
        return 0 if self.out_bits == 0 else (1 << self.out_bits) - 1

    @property
    def requant(self) -> bool:
        """Whether the output stage is the requantizer (mvau.v ``RQ = 1``)."""
        return self.out_stage == "requant"


# ---------------------------------------------------------------------------------------
# Cycles


def mvau_stream_cycles(MH, MW, PE, SIMD, vectors):
    """Cycles the MVAU is busy per inference: ``ceil(MH/PE)·ceil(MW/SIMD)·vectors``."""
    return ceil_div(MH, PE) * ceil_div(MW, SIMD) * vectors


def mvau_cycles(MH, MW, PE, SIMD, vectors, requant: bool = False):
    """One MVAU run of ``vectors`` vectors, first input beat accepted to last output beat
    accepted (inclusive), inputs offered every cycle, no back-pressure:
    ``ceil(MH/PE)·ceil(MW/SIMD)·vectors + D_MVAU`` (exact for mvau.v); with the requant
    output stage (``requant``) ``+ D_MVAU_RQ`` instead."""
    return mvau_stream_cycles(MH, MW, PE, SIMD, vectors) + (D_MVAU_RQ if requant else D_MVAU)


def sparse_stream_cycles(layer: Layer, PE, SIMD) -> int:
    """Cycles the block-sparse MVAU is busy per inference: ``V·max(SF, nb + ne)``, one
    stored block (or empty row group) per cycle, but never faster than the input stream's
    ``SF`` beats per vector (sim/rtl/mvau_sparse.v's header; its whole run takes this plus
    :func:`sparse_fill_cycles`, ``min(SF, nb + ne) + D_MVAU``). ``(PE, SIMD)`` must be
    the block shape."""
    sp = layer.sparse
    if (PE, SIMD) != (sp.pe, sp.simd):
        raise ValueError(f"layer {layer.name!r}: a block-sparse layer is folded as its blocks, PE={sp.pe}, "
                         f"SIMD={sp.simd}; got PE={PE}, SIMD={SIMD}")
    return layer.vectors * max(ceil_div(layer.MW, SIMD), sp.slots)


def sparse_fill_cycles(layer: Layer, SIMD) -> int:
    """The block-sparse MVAU's cycles beyond its stream: the first vector's input beats
    that overlap no block walk, ``min(SF, nb + ne)`` (0 for a dense layer)."""
    if layer.sparse is None:
        return 0
    return min(ceil_div(layer.MW, SIMD), layer.sparse.slots)


def mvau_depth(layer: Layer) -> int:
    """mvau.v's pipeline depth for ``layer``: ``D_MVAU_RQ`` with the requant output stage,
    else ``D_MVAU``."""
    return D_MVAU_RQ if layer.requant else D_MVAU


def swu_read_cycles(window: Window, SIMD):
    """Cycles the SWU needs to read one input feature map, SIMD channels per beat."""
    return window.ifm_h * window.ifm_w * ceil_div(window.C, SIMD)


def window_fill_cycles(window: Window | None, SIMD):
    """Input beats the SWU takes before its first window is complete: the line buffer's
    ``(k-1)`` padded rows plus ``k`` pixels, SIMD channels per beat (0 without a window)."""
    if window is None:
        return 0
    return ((window.k - 1) * (window.ifm_w + 2 * window.pad) + window.k) * ceil_div(window.C, SIMD)


def pool_depth(pool: Pool) -> int:
    """The pool unit's pipeline depth in the cycle model: ``D_POOL`` (pool.v) or
    ``D_POOL_AVG`` (avgpool.v)."""
    return D_POOL_AVG if pool.mode == "avg" else D_POOL


def pool_stream_cycles(pool: Pool, P):
    """Cycles the pool unit is busy per image with ``P`` lanes: one slot per (row, column,
    channel group) of the padded grid, ``(ifm_h + 2·pad)·(ifm_w + 2·pad)·ceil(C/P)``."""
    return (pool.ifm_h + 2 * pool.pad) * (pool.ifm_w + 2 * pool.pad) * ceil_div(pool.C, P)


def pool_cycles(pool: Pool, P, images: int = 1) -> int:
    """pool.v's exact cycles for ``images`` images offered back to back, output never
    stalled, first input beat accepted to last output beat accepted (inclusive), in
    closed form: with ``CF = ceil(C/P)``, ``WP = ifm_w + 2·pad``, ``L_r = (ofm_h-1)·stride
    + k - 1`` and ``L_c = (ofm_w-1)·stride + k - 1`` (the padded row and column closing the
    last window),

    ``(images - 1)·pool_stream_cycles + ((L_r - pad)·WP + L_c - pad + 1)·CF + pool_depth``

    (``pool_depth`` = ``D_POOL`` for a max pool, ``D_POOL_AVG`` for an average pool; =
    sim/rtl/pool.v's header and ``codesign.sim.rtl_pool.pool_cycles``, which the tests
    compare with this function and with simulation)."""
    if images < 1:
        raise ValueError(f"pool_cycles: images={images} must be >= 1")
    CF = ceil_div(pool.C, P)
    WP = pool.ifm_w + 2 * pool.pad
    L_r = (pool.ofm_h - 1) * pool.stride + pool.k - 1
    L_c = (pool.ofm_w - 1) * pool.stride + pool.k - 1
    return int((images - 1) * pool_stream_cycles(pool, P) + ((L_r - pool.pad) * WP + L_c - pool.pad + 1) * CF
               + pool_depth(pool))


def pool_fill_cycles(pool: Pool | None, P):
    """Slots from the pool's first input beat to its first output's slot (the first
    window's last row and column), plus :func:`pool_depth`; 0 without a pool."""
    if pool is None:
        return 0
    WP = pool.ifm_w + 2 * pool.pad
    k1 = pool.k - 1 - pool.pad
    return (k1 * WP + k1 + 1) * ceil_div(pool.C, P) + pool_depth(pool)


def layer_cycles(layer: Layer, PE, SIMD):
    """Cycles per inference of one layer: the MVAU's ``NF·SF·V``, or the SWU's input read
    when that is longer (stride > 1 reads more pixels than it produces), or the pool
    unit's slots (:func:`pool_stream_cycles` with ``P = PE``) when that is longer (its
    padding slots). A block-sparse layer streams ``V·max(SF, slots)`` cycles
    (:func:`sparse_stream_cycles`) instead of ``NF·SF·V``."""
    c = (sparse_stream_cycles(layer, PE, SIMD) if layer.sparse is not None
         else mvau_stream_cycles(layer.MH, layer.MW, PE, SIMD, layer.vectors))
    if layer.window is not None:
        c = np.maximum(c, swu_read_cycles(layer.window, SIMD))
    if layer.pool is not None:
        c = np.maximum(c, pool_stream_cycles(layer.pool, PE))
    return c


def dataflow_cycles(layers: Sequence[Layer], folding: Sequence[tuple[int, int]]) -> dict[str, Any]:
    """Cycle figures of the whole dataflow for one folding ``[(PE, SIMD), ...]``.

    * ``layer_cycles``: per layer, :func:`layer_cycles`;
    * ``ii``: the initiation interval, ``max_l layer_cycles_l`` (the slowest layer, index
      ``bottleneck``): with enough FIFO depth between layers, a new inference starts every
      ``ii`` cycles, so ``n`` inferences take ``latency + (n - 1)·ii``;
    * ``latency``: one inference through an empty pipeline, estimated as
      ``ii + Σ_l (D_l + window_fill_l) + Σ_{l ≠ bottleneck} NF_l·SF_l``: the bottleneck
      streams for ``ii`` cycles; every layer adds its pipeline depth ``D_l``
      (:func:`mvau_depth`: ``D_MVAU``, or ``D_MVAU_RQ`` with a requant stage), its SWU's fill and
      its pool unit's fill (:func:`pool_fill_cycles`), a block-sparse layer's
      :func:`sparse_fill_cycles`,
      and every other layer one vector's processing (it must still process the last
      vector it receives). Exact for one layer without a window (= :func:`mvau_cycles`);
      for a chain it assumes each layer starts as soon as its first vector is complete;
    * ``latency_bound``: FINN's critical-path bound ``Σ_l (layer_cycles_l + D_l +
      window_fill_l)`` (no overlap between layers at all)."""
    if len(layers) != len(folding):
        raise ValueError(f"dataflow_cycles: {len(layers)} layers but {len(folding)} foldings")
    cyc = [int(layer_cycles(l, pe, simd)) for l, (pe, simd) in zip(layers, folding)]
    ii = max(cyc)
    b = cyc.index(ii)
    fills = [mvau_depth(l) + sparse_fill_cycles(l, simd) + window_fill_cycles(l.window, simd)
             + pool_fill_cycles(l.pool, pe) for l, (pe, simd) in zip(layers, folding)]
    vec = [max(ceil_div(l.MW, simd), l.sparse.slots) if l.sparse is not None
           else ceil_div(l.MH, pe) * ceil_div(l.MW, simd) for l, (pe, simd) in zip(layers, folding)]
    latency = ii + sum(fills) + sum(v for i, v in enumerate(vec) if i != b)
    return {"layer_cycles": cyc, "ii": ii, "bottleneck": b, "latency": int(latency),
            "latency_bound": int(sum(cyc) + sum(fills))}


# ---------------------------------------------------------------------------------------
# Widths and resources


def _range(bits: int, signed: bool) -> tuple[int, int]:
    if bits == 1 and signed:
        return -1, 1
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def _sum_bits(n: int, plo: int, phi: int) -> int:
    lo, hi = n * min(plo, 0), n * max(phi, 0)
    b = 1
    while not (-(1 << (b - 1)) <= lo and hi <= (1 << (b - 1)) - 1):
        b += 1
    return b


def widths(layer: Layer, SIMD: int | None = None) -> dict[str, int]:
    """mvau.v's datapath widths for ``layer`` (and ``SIMD``): decoded operands AE/WE,
    product PW, beat sum SUM_W, accumulator ACC_W (docs/arithmetic.md §2's exact width),
    threshold TW = ACC_W + 1, output OB, binary popcounts CNT_W/POP_W."""
    alo, ahi = _range(layer.AB, layer.a_signed)
    wlo, whi = _range(layer.WB, True)
    corners = (alo * wlo, alo * whi, ahi * wlo, ahi * whi)
    plo, phi = min(corners), max(corners)
    AE = 2 if layer.AB == 1 else (layer.AB if layer.a_signed else layer.AB + 1)
    WE = 2 if layer.WB == 1 else layer.WB
    acc = _sum_bits(layer.MW, plo, phi)
    out = {"AE": AE, "WE": WE, "PW": AE + WE, "ACC_W": acc, "TW": acc + 1,
           "OB": layer.out_bits if layer.requant else (acc if layer.NT == 0 else int(layer.NT).bit_length()),
           "POP_W": int(layer.MW).bit_length()}
    if layer.requant:  # the biased accumulator acc + B fed to the requantizer (mvau.v SUMB_W)
        out["SUMB_W"] = max(acc, layer.bias_bits) + 1
    if SIMD is not None:
        out["SUM_W"] = _sum_bits(SIMD, plo, phi)
        out["CNT_W"] = int(SIMD).bit_length()
    return out


def mult_on_dsp(layer: Layer) -> bool:
    """Whether the products go to DSP48E2s: ``res_type`` "dsp"; "auto": low-bit layers with
    ``WB + AB >= 12`` (e.g. 4x8, 6x6, 8x8; FINN-like: narrow products are cheaper in LUTs).
    A product narrower than 9 bits is never put on a DSP (Yosys's and Vivado's minimum)."""
    if layer.mode == "binary":
        return False
    pw = widths(layer)["PW"]
    if layer.res_type == "dsp":
        return pw >= 9
    return layer.res_type == "auto" and layer.WB + layer.AB >= 12


def _clog2(n: int) -> int:
    return max(1, (int(n) - 1).bit_length()) if n > 2 else 1


def memory(depth: int, width: int, c: Mapping[str, float]) -> Res:
    """One synchronous-read memory as Yosys maps mvau.v's: a single word is registers;
    LUTRAM up to ``lutram_max_depth`` deep and ``lutram_max_bits`` bits; else RAMB18."""
    if depth <= 1:
        return Res(ff=width)
    if depth <= c["lutram_max_depth"] and depth * width <= c["lutram_max_bits"]:
        return Res(lut=lutram_luts(depth, width))
    return Res(bram18=bram18_count(depth, width))


def mvau_resources(layer: Layer, PE: int, SIMD: int, coeffs: Mapping[str, float] | None = None,
                   parts: bool = False) -> Res | dict[str, Res]:
    """Resources of one mvau.v instance for ``layer`` folded ``(PE, SIMD)`` (ACC_OUT = 0,
    the test port is not counted). ``parts``: the components by name instead of the sum.
    A threshold stage costs ``PE·NT`` threshold memories and comparators; a requant stage
    (``layer.out_stage == "requant"``) ``PE`` requantizers (requant.v, 1 or 2 DSP48E2s
    each) and ``3·PE`` parameter memories (bias, multiplier, shift) of ``NF`` words. A
    block-sparse layer (``layer.sparse``, mvau_sparse.v) stores ``nb`` blocks per PE
    memory, a column index per block and ``NF + 1`` row pointers, and double-buffers its
    input (``2·SF`` words); its datapath is the dense one's. mvau_sparse.v has no Yosys
    calibration row: these memory counts follow its header, the LUT coefficients are the
    dense unit's."""
    c = COEFFS if coeffs is None else coeffs
    w = widths(layer, SIMD)
    NF, SF = ceil_div(layer.MH, PE), ceil_div(layer.MW, SIMD)
    NT, TW, ACC_W, OB = layer.NT, w["TW"], w["ACC_W"], w["OB"]
    binary = layer.mode == "binary"
    dsp = mult_on_dsp(layer)
    out: dict[str, Res] = {}
    # memories: weights (one per PE), input buffer (replays, NF > 1), thresholds (PE x NT)
    sp = layer.sparse
    if sp is None:
        out["weights"] = memory(NF * SF, SIMD * layer.WB, c) * PE
        out["input_buffer"] = memory(SF, SIMD * layer.AB, c) if NF > 1 else Res()
    else:  # mvau_sparse.v: the stored blocks, their column indices and row pointers, a 2-bank input buffer
        nb = max(sp.nb, 1)
        out["weights"] = memory(nb, SIMD * layer.WB, c) * PE
        out["sparse_index"] = memory(nb, _clog2(SF), c) + memory(NF + 1, _clog2(nb + 1), c)
        out["input_buffer"] = memory(2 * SF, SIMD * layer.AB, c)
    out["thresholds"] = memory(NF, TW, c) * (PE * NT)
    # requant stage: per PE the bias, multiplier and shift memories (NF words each)
    rq = layer.requant
    out["requant_params"] = ((memory(NF, layer.bias_bits, c) + memory(NF, layer.m_bits, c) + memory(NF, 6, c)) * PE
                             if rq else Res())
    # datapath per PE
    if binary:
        lanes = Res(lut=c["lut_xnor_pop_per_lane"] * SIMD, ff=SIMD + w["CNT_W"])
        acc = Res(lut=c["lut_acc_per_bit"] * w["POP_W"], ff=w["POP_W"])
    else:
        if dsp:
            lanes = Res(dsp=c["dsp_per_product"] * SIMD, ff=SIMD * w["PW"])
        else:
            lanes = Res(lut=c["lut_mult_per_pp_bit"] * SIMD * w["AE"] * w["WE"], ff=SIMD * w["PW"])
        lanes = lanes + Res(lut=c["lut_tree_per_bit"] * (SIMD - 1) * w["PW"], ff=w["SUM_W"])
        acc = Res(lut=c["lut_acc_per_bit"] * ACC_W, ff=ACC_W)
    out["lanes"] = lanes * PE
    out["accumulators"] = acc * PE
    if rq:
        # per PE: bias add (SUMB_W-bit adder) and requant.v; FFs: r4_bias, r5_m, r5_sh, r5_sum,
        # requant.v's product and shift registers and its output code (the output register)
        sb = w["SUMB_W"]
        dsp_rq = 1 if sb <= c["rq_one_dsp_max_acc_bits"] else 2
        out["activation"] = Res(lut=PE * (c["lut_acc_per_bit"] * sb + c["lut_rq_base"] + c["lut_rq_per_out_bit"] * OB),
                                ff=PE * (layer.bias_bits + layer.m_bits + 6 + sb + (sb + layer.m_bits) + 6 + OB),
                                dsp=PE * dsp_rq)
    else:
        out["activation"] = Res(lut=c["lut_cmp_per_bit"] * NT * TW * PE, ff=PE * (NT * TW + OB))
    # operand registers (r1_act, r1_w) and control: counters, valid/first/last/fold flags
    nfa, sfa, wa = _clog2(NF), _clog2(SF), _clog2(NF * SF)
    # (a weight word read from RAMB18 is registered in the block RAM's output register)
    w_reg = 0 if out["weights"].bram18 else PE * SIMD * layer.WB
    out["operands"] = Res(ff=SIMD * layer.AB + w_reg)
    out["control"] = Res(lut=c["lut_control"], ff=nfa + sfa + wa + (3 + nfa) + 2 * (3 + nfa) + (1 + nfa) + 2
                         + (4 if rq else 0))  # RQ: r5_v, r6_v, r5_last, r6_last
    return out if parts else sum(out.values(), Res())


def swu_resources(layer: Layer, SIMD: int, coeffs: Mapping[str, float] | None = None) -> Res:
    """The SWU feeding ``layer`` (none without a window): its line buffer (exact size,
    ``buffer_elems/SIMD`` words of ``SIMD·AB`` bits, LUTRAM or RAMB18 by :func:`memory`)
    and its control and output word (first-principles estimate: no RTL)."""
    if layer.window is None:
        return Res()
    c = COEFFS if coeffs is None else coeffs
    words = ceil_div(layer.window.buffer_elems, SIMD)
    buf = memory(max(2, words), SIMD * layer.AB, c)
    return buf + Res(lut=c["swu_lut_base"] + c["swu_lut_per_bit"] * SIMD * layer.AB,
                     ff=c["swu_ff_base"] + SIMD * layer.AB)


def pool_widths(pool: Pool) -> dict[str, int]:
    """avgpool.v's widths (its header): ``VW`` bits per decoded value (``B`` signed, 2
    bipolar, ``B + 1`` unsigned),
    ``HS_W`` the exact width of a row of ``k`` values, ``SUM_W`` of the ``k·k`` window
    (both two's complement, the input's value range: bipolar ±1, signed, unsigned)."""
    B = pool.bits
    lo = 0 if not pool.in_signed else (-1 if B == 1 else -(1 << (B - 1)))
    hi = (1 << B) - 1 if not pool.in_signed else (1 if B == 1 else (1 << (B - 1)) - 1)

    def rbits(a: int, b: int) -> int:
        return max(1, (-a - 1).bit_length() + 1 if a < 0 else 1, b.bit_length() + 1)

    vw = rbits(lo, hi) if pool.in_signed else B + 1
    return {"VW": vw, "HS_W": rbits(pool.k * lo, pool.k * hi), "SUM_W": rbits(pool.k ** 2 * lo, pool.k ** 2 * hi)}


def pool_resources(pool: Pool | None, P: int, coeffs: Mapping[str, float] | None = None,
                   parts: bool = False) -> Res | dict[str, Res]:
    """Resources of one pool.v instance with ``P`` lanes (nothing without a pool), by its
    structure: the delay line (``K-1`` segments of ``CF`` words of ``P·B`` bits: FFs when
    shallow, else shift registers), the ``K-1`` line buffers (``OW·CF`` words, LUTRAM or
    RAMB18 by :func:`memory`; the read register is in the RAMB18 when they are), the
    ``2·(K-1)·P`` lane maxima, the R1/R2 registers and the counters (bit by bit from the
    RTL). An average pool (avgpool.v, :func:`_avgpool_resources`) has the same walk with
    decoded values and sums instead. ``parts``: the components by name."""
    if pool is None:
        return {} if parts else Res()
    c = COEFFS if coeffs is None else coeffs
    if pool.mode == "avg":
        out = _avgpool_resources(pool, P, c)
        return out if parts else sum(out.values(), Res())
    CF = ceil_div(pool.C, P)
    LW = P * pool.bits
    K1 = pool.k - 1
    WP, HP = pool.ifm_w + 2 * pool.pad, pool.ifm_h + 2 * pool.pad
    out: dict[str, Res] = {}
    if K1 == 0:
        out["delay_line"] = Res()
    elif CF >= c["pool_srl_min_depth"]:
        out["delay_line"] = Res(lut=K1 * LW * ceil_div(CF, 32))
    else:
        out["delay_line"] = Res(ff=K1 * CF * LW)
    lb = memory(pool.ofm_w * CF, LW, c) if K1 else Res()
    out["line_buffers"] = (lb + Res(ff=0 if lb.bram18 else LW)) * K1
    per_bit = c["lut_pool_max_per_bit_wide"] if pool.bits >= 3 else c["lut_pool_max_per_bit_narrow"]
    out["maxima"] = Res(lut=per_bit * 2 * K1 * P * pool.bits)
    out["registers"] = Res(ff=2 * LW)  # r1_h, m_tdata
    cfa, lba, pha = _clog2(CF), _clog2(pool.ofm_w * CF), _clog2(max(1, K1))
    xa, ya = max(1, (WP + pool.stride).bit_length()), max(1, (HP + pool.stride).bit_length())
    out["control"] = Res(lut=c["lut_pool_control"], ff=cfa + 2 * xa + 2 * ya + lba + pha + 5)
    return out if parts else sum(out.values(), Res())


def _avgpool_resources(pool: Pool, P: int, c: Mapping[str, float]) -> dict[str, Res]:
    """avgpool.v by its structure (:func:`pool_widths`): the delay line of decoded
    values (``K-1`` segments of ``CF`` words of ``P·VW`` bits), the ``K-1`` line buffers of
    row sums (``OW·CF`` words of ``P·HS_W`` bits), the window-sum adders (``(K-1)·P`` of
    ``HS_W`` bits in the rows, ``(K-1)·P`` of ``SUM_W`` bits across them, one LUT per bit
    at ``lut_avgpool_sum_per_bit``), ``P`` requant.v instances (``M`` of 24 bits: one
    DSP48E2 per lane up to a ``rq_one_dsp_max_acc_bits``-bit sum, two above; the rounding
    window and saturation at ``lut_rq_base + lut_rq_per_out_bit·OB`` plus
    ``lut_avgpool_per_lane``; the product, shift and code registers), the R1/R2 registers
    and the counters."""
    w = pool_widths(pool)
    VW, HS_W, SUM_W, OB = w["VW"], w["HS_W"], w["SUM_W"], pool.ob
    CF = ceil_div(pool.C, P)
    K1 = pool.k - 1
    WP, HP = pool.ifm_w + 2 * pool.pad, pool.ifm_h + 2 * pool.pad
    DW, LH = P * VW, P * HS_W
    out: dict[str, Res] = {}
    if K1 == 0:
        out["delay_line"] = Res()
    elif CF >= c["pool_srl_min_depth"]:
        out["delay_line"] = Res(lut=K1 * DW * ceil_div(CF, 32))
    else:
        out["delay_line"] = Res(ff=K1 * CF * DW)
    lb = memory(pool.ofm_w * CF, LH, c) if K1 else Res()
    out["line_buffers"] = (lb + Res(ff=0 if lb.bram18 else LH)) * K1
    out["sums"] = Res(lut=c["lut_avgpool_sum_per_bit"] * K1 * P * (HS_W + SUM_W))
    dsp = 1 if SUM_W <= c["rq_one_dsp_max_acc_bits"] else 2
    out["requant"] = Res(lut=P * (c["lut_rq_base"] + c["lut_rq_per_out_bit"] * OB + c["lut_avgpool_per_lane"]),
                         dsp=P * dsp,
                         ff=P * (SUM_W + 24 + OB) + 7)  # product, code; shift + sign (shared)
    out["registers"] = Res(ff=LH + P * SUM_W + 4)  # r1_h, r2_sum, r2/r3 valid and last
    cfa, lba, pha = _clog2(CF), _clog2(pool.ofm_w * CF), _clog2(max(1, K1))
    xa, ya = max(1, (WP + pool.stride).bit_length()), max(1, (HP + pool.stride).bit_length())
    out["control"] = Res(lut=c["lut_pool_control"], ff=cfa + 2 * xa + 2 * ya + lba + pha + 5)
    return out


def layer_resources(layer: Layer, PE: int, SIMD: int, coeffs: Mapping[str, float] | None = None) -> Res:
    """MVAU + SWU + pool unit (``P = PE``) of one layer."""
    return (mvau_resources(layer, PE, SIMD, coeffs) + swu_resources(layer, SIMD, coeffs)
            + pool_resources(layer.pool, PE, coeffs))


# ---------------------------------------------------------------------------------------
# Evaluation and search

KEYS = ("lut", "ff", "dsp", "bram18")


def _board(board: Board | str) -> Board:
    return board if isinstance(board, Board) else get_board(board)


def _resvec(r: Res) -> np.ndarray:
    return np.array([math.ceil(getattr(r, k) - 1e-9) for k in KEYS], dtype=np.int64)


@dataclass(frozen=True)
class LayerCost:
    """One layer at one folding: cycles per inference and resources."""

    name: str
    PE: int
    SIMD: int
    cycles: int
    resources: dict


@dataclass(frozen=True)
class DataflowEstimate:
    """A whole folding: per-layer costs, II, latency (cycles, and fps / ms at ``clock_mhz``),
    total resources and their fraction of the board."""

    layers: list
    ii: int
    latency: int
    latency_bound: int
    bottleneck: str
    resources: dict
    utilisation: dict
    clock_mhz: float

    @property
    def fps(self) -> float:
        return self.clock_mhz * 1e6 / self.ii

    @property
    def latency_ms(self) -> float:
        return self.latency / (self.clock_mhz * 1e3)

    @property
    def folding(self) -> list[tuple[int, int]]:
        return [(l.PE, l.SIMD) for l in self.layers]


def evaluate(layers: Sequence[Layer], folding: Sequence[tuple[int, int]], board: Board | str,
             clock_mhz: float | None = None, coeffs: Mapping[str, float] | None = None) -> DataflowEstimate:
    """Cycles and resources of ``layers`` at ``folding`` ``[(PE, SIMD), ...]`` on ``board``."""
    b = _board(board)
    clock = float(clock_mhz or b.target_clock_mhz)
    for l, (pe, simd) in zip(layers, folding):
        _check_fold(l, pe, simd)
    cyc = dataflow_cycles(layers, folding)
    costs, total = [], np.zeros(len(KEYS), dtype=np.int64)
    for l, (pe, simd), cy in zip(layers, folding, cyc["layer_cycles"]):
        r = _resvec(layer_resources(l, pe, simd, coeffs))
        total += r
        costs.append(LayerCost(l.name, pe, simd, cy, dict(zip(KEYS, r.tolist()))))
    cap = b.resources()
    res = dict(zip(KEYS, total.tolist()))
    return DataflowEstimate(layers=costs, ii=cyc["ii"], latency=cyc["latency"], latency_bound=cyc["latency_bound"],
                            bottleneck=layers[cyc["bottleneck"]].name, resources=res,
                            utilisation={k: res[k] / cap[k] if cap[k] else float("inf") * bool(res[k]) for k in KEYS},
                            clock_mhz=clock)


def _check_fold(layer: Layer, PE: int, SIMD: int) -> None:
    if not (1 <= PE <= layer.MH and 1 <= SIMD <= layer.MW):
        raise ValueError(f"layer {layer.name!r}: folding PE={PE}, SIMD={SIMD} outside 1..MH={layer.MH}, "
                         f"1..MW={layer.MW}")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def candidates(layer: Layer) -> list[tuple[int, int]]:
    """The foldings the search tries: ``PE | MH`` (and ``PE <= pe_max``) and ``SIMD | MW``
    (``SIMD | C`` under a window: the SWU emits whole SIMD-channel groups); a block-sparse
    layer has one, its block shape."""
    if layer.sparse is not None:
        return [(layer.sparse.pe, layer.sparse.simd)]
    simds = _divisors(layer.window.C) if layer.window is not None else _divisors(layer.MW)
    pes = [pe for pe in _divisors(layer.MH) if layer.pe_max is None or pe <= layer.pe_max]
    return [(pe, s) for pe in pes for s in simds]


@dataclass
class SearchResult:
    """The chosen folding, its estimate, the (II, LUT) Pareto points found and the search
    time. ``pareto``: list of dicts (ii, fps, lut, ff, dsp, bram18, folding), II ascending."""

    folding: list
    estimate: DataflowEstimate
    pareto: list
    objective: str
    seconds: float = 0.0
    notes: list = field(default_factory=list)


class _Table:
    """Per layer: candidate foldings, their cycles and resource vectors."""

    def __init__(self, layers: Sequence[Layer], coeffs):
        self.folds, self.cyc, self.res = [], [], []
        for l in layers:
            f = candidates(l)
            self.folds.append(f)
            self.cyc.append(np.array([int(layer_cycles(l, pe, s)) for pe, s in f], dtype=np.int64))
            self.res.append(np.stack([_resvec(layer_resources(l, pe, s, coeffs)) for pe, s in f]))


def _pareto_mask(pts: np.ndarray, block: int = 256) -> np.ndarray:
    """Rows of ``pts`` not dominated by another row (<= everywhere); of equal rows the
    first in lexicographic order is kept. In lexicographic order a row can only be
    dominated by an earlier one, so the rows are swept in blocks against the rows kept so
    far and against the earlier rows of their block (transitivity makes the latter safe)."""
    n, d = pts.shape
    order = np.lexsort(pts.T[::-1])
    srt = pts[order]
    keep_sorted = np.zeros(n, dtype=bool)
    kept = np.empty((0, d), dtype=pts.dtype)
    for start in range(0, n, block):
        blk = srt[start:start + block]
        bad = np.zeros(len(blk), dtype=bool)
        if len(kept):
            bad |= np.all(kept[None, :, :] <= blk[:, None, :], axis=2).any(axis=1)
        inner = np.tril(np.all(blk[None, :, :] <= blk[:, None, :], axis=2), -1)
        bad |= inner.any(axis=1)
        keep_sorted[start:start + block] = ~bad
        kept = np.concatenate([kept, blk[~bad]])
    keep = np.zeros(n, dtype=bool)
    keep[order[keep_sorted]] = True
    return keep


def _front(tab: _Table, T: int, cap: np.ndarray, max_points: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Pareto front of total resources over foldings with every layer's cycles <= T and the
    total within ``cap``: (sums (n, 4), choice indices (n, layers)); None if empty."""
    sums = np.zeros((1, len(KEYS)), dtype=np.int64)
    picks = np.zeros((1, 0), dtype=np.int64)
    for cyc, res in zip(tab.cyc, tab.res):
        ok = np.nonzero(cyc <= T)[0]
        if ok.size == 0:
            return None
        loc = ok[_pareto_mask(res[ok])]
        s = (sums[:, None, :] + res[loc][None, :, :]).reshape(-1, len(KEYS))
        p = np.concatenate([np.repeat(picks, loc.size, axis=0),
                            np.tile(loc, picks.shape[0])[:, None]], axis=1)
        fit = np.all(s <= cap, axis=1)
        s, p = s[fit], p[fit]
        if s.shape[0] == 0:
            return None
        keep = _pareto_mask(s)
        s, p = s[keep], p[keep]
        if s.shape[0] > max_points:  # keep the cheapest by normalised maximum use
            order = np.argsort(np.max(s / np.maximum(cap, 1), axis=1), kind="stable")[:max_points]
            s, p = s[order], p[order]
        sums, picks = s, p
    return sums, picks


def _min_lut(front) -> np.ndarray:
    sums, picks = front
    i = np.lexsort(sums.T[::-1])[0]  # LUT first, then FF, DSP, BRAM
    return picks[i]


def search(layers: Sequence[Layer], board: Board | str, *, limit: float = 0.85, target_fps: float | None = None,
           clock_mhz: float | None = None, coeffs: Mapping[str, float] | None = None,
           max_pareto: int = 24, max_front: int = 20000) -> SearchResult:
    """Choose ``(PE, SIMD)`` per layer (:func:`candidates`).

    Without ``target_fps``: the smallest II whose folding fits ``limit`` of the board's
    LUT, FF, DSP and RAMB18 (each), and among those the fewest LUTs. With ``target_fps``:
    every layer within ``clock / target_fps`` cycles, fewest LUTs within the limit.
    ``pareto``: (II, LUT) trade-off points, each the fewest-LUT folding within the limit for
    its II (up to ``max_pareto`` II values, evenly spread over the candidates). Exact while
    a combined front stays under ``max_front`` points (otherwise a note says it was cut).
    Raises ``ValueError`` (one line) when nothing fits."""
    t0 = time.perf_counter()
    b = _board(board)
    clock = float(clock_mhz or b.target_clock_mhz)
    if not layers:
        raise ValueError("dataflow search: no layers")
    if not 0 < limit <= 1:
        raise ValueError(f"dataflow search: limit={limit} must be in (0, 1]")
    cap_d = b.resources()
    cap = np.array([math.floor(limit * cap_d[k]) for k in KEYS], dtype=np.int64)
    tab = _Table(layers, coeffs)
    notes: list[str] = []
    # every achievable II is one layer's cycles at one folding, at least the slowest
    # layer's fastest folding
    lo_ii = max(int(c.min()) for c in tab.cyc)
    iis = np.unique(np.concatenate(tab.cyc))
    iis = iis[iis >= lo_ii]

    def front(T):
        f = _front(tab, int(T), cap, max_front)
        if f is not None and f[0].shape[0] >= max_front and "front cut" not in " ".join(notes):
            notes.append(f"front cut at {max_front} points: the result may not be optimal")
        return f

    if target_fps is not None:
        if not target_fps > 0:
            raise ValueError(f"dataflow search: target_fps={target_fps} must be > 0")
        T = math.floor(clock * 1e6 / target_fps)
        if T < lo_ii:
            raise ValueError(f"dataflow search: {target_fps} fps at {clock} MHz needs II <= {T} cycles, but layer "
                             f"{layers[int(np.argmax([c.min() for c in tab.cyc]))].name!r} needs at least {lo_ii}")
        f = front(T)
        if f is None:
            raise ValueError(f"dataflow search: no folding reaches {target_fps} fps (II <= {T}) within "
                             f"{limit:.0%} of {b.name} ({_cap_text(cap)})")
        objective = f"target {target_fps} fps: II <= {T} cycles at {clock} MHz, fewest LUTs"
    else:
        # bisection: feasibility is monotone in II (a larger II admits more foldings)
        if front(iis[-1]) is None:
            smallest = sum((r.min(axis=0) for r in tab.res), np.zeros(len(KEYS), dtype=np.int64))
            raise ValueError(f"dataflow search: no folding fits {limit:.0%} of {b.name} ({_cap_text(cap)}); "
                             f"the smallest per-resource needs are {_cap_text(smallest)}")
        lo, hi = 0, len(iis) - 1
        while lo < hi:
            mid = (lo + hi) // 2
            if front(iis[mid]) is None:
                lo = mid + 1
            else:
                hi = mid
        T = int(iis[lo])
        f = front(T)
        objective = f"minimum II within {limit:.0%} of {b.name}, fewest LUTs"
    pick = _min_lut(f)
    folding = [tab.folds[i][int(j)] for i, j in enumerate(pick)]
    est = evaluate(layers, folding, b, clock, coeffs)
    # Pareto points over II: the fewest-LUT folding for each sampled II >= the optimum
    pareto = []
    grid = iis[iis >= est.ii]
    if grid.size > max_pareto:
        grid = grid[np.unique(np.linspace(0, grid.size - 1, max_pareto).round().astype(int))]
    best_lut = None
    for T2 in grid:
        f2 = front(T2)
        if f2 is None:
            continue
        p2 = _min_lut(f2)
        fold2 = [tab.folds[i][int(j)] for i, j in enumerate(p2)]
        e2 = evaluate(layers, fold2, b, clock, coeffs)
        if best_lut is None or e2.resources["lut"] < best_lut:
            best_lut = e2.resources["lut"]
            pareto.append({"ii": e2.ii, "fps": e2.fps, **e2.resources, "folding": fold2})
    # keep only points that are not dominated in (II, LUT)
    pareto = [p for i, p in enumerate(pareto) if not any(q["ii"] <= p["ii"] and q["lut"] < p["lut"]
                                                         for q in pareto[:i] + pareto[i + 1:])]
    return SearchResult(folding=folding, estimate=est, pareto=pareto, objective=objective,
                        seconds=time.perf_counter() - t0, notes=notes)


def _cap_text(v) -> str:
    return ", ".join(f"{k.upper()} {int(x):,}" for k, x in zip(KEYS, v))
