"""Run the block-sparse MVAU RTL (``sim/rtl/mvau_sparse.v``, docs/pruning.md) under cocotb.

The sparse sibling of :mod:`codesign.sim.rtl_mvau` (same stream encodings, same
threshold memories), for weights pruned in ``PE x SIMD`` blocks
(:mod:`codesign.quantize.pruning`):

* :class:`SparseMvauConfig`: the RTL's parameters (those of
  :class:`codesign.sim.rtl_mvau.MvauConfig` plus the block capacity ``nb_max``);
* :func:`csr_writes`: the block-CSR arrays of
  ``codesign.hls.sparse.pack_sparse(w, PE, SIMD).kernel_arrays()`` as memory writes;
* :func:`sparse_rtl_cycles`: mvau_sparse.v's cycle model (derived in its header),
  ``V·max(SF, T) + min(SF, T) + D_MVAU_SPARSE`` with ``T = NB + NE`` the HLS kernel's
  iterations per vector;
* :func:`run_sparse_mvaus` / :func:`run_sparse_mvau`: numpy in (activations ``V x MW``,
  masked weights ``MH x MW`` whose pruned blocks are 0, thresholds ``MH x NT`` or the
  per-channel ``requant = (bias, M, sh)``), codes, accumulators and measured cycles out.

Requant mode (``SparseMvauConfig(rq=True)``, mvau_sparse.v ``RQ = 1``, as
:mod:`codesign.sim.rtl_mvau`'s ``MvauConfig(rq=True)``): the output is
``codesign.sim.reference.requant(acc + bias, M, sh, Y)`` per channel of the masked-weight
accumulator, the parameters written through the threshold port by
:func:`codesign.sim.rtl_mvau.requant_writes` (row group ``rg`` = mvau.v's fold); the
pipeline is two stages deeper (``D_MVAU_SPARSE_RQ = 7``).

Weights: ``w[n, k]`` (the MVAU's ``MH x MW`` matrix, pruning's ``[OC, K]`` view). A block
is stored iff it holds a non-zero weight (``pack_sparse``). With ``WB = 1`` (bipolar weights,
binary mode included) the weights are -1/+1 inside stored blocks and 0 in pruned
blocks: a bipolar weight has no 0, so a zero anywhere else is an error.

The cocotb testbench is :func:`mvau_sparse_cases` in this module (it runs inside the
simulator; ``codesign.sim.rtl.run_cocotb`` is given this module's name).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import cocotb
import numpy as np

from codesign.hls.sparse import SparseWeights, pack_sparse
from codesign.sim import rtl
from codesign.sim.checks import check_codes
from codesign.sim.reference import IntType
from codesign.sim.rtl_mvau import MvauConfig, activation_beats, decode_outputs, requant_writes, threshold_writes

__all__ = ["MVAU_SPARSE_SOURCES", "D_MVAU_SPARSE", "D_MVAU_SPARSE_RQ", "SparseMvauConfig", "SparseMvauRun",
           "sparse_rtl_cycles", "pack_masked", "csr_writes", "run_sparse_mvaus", "run_sparse_mvau",
           "mvau_sparse_cases"]

#: mvau_sparse.v and the requantizer it instantiates per PE in requant mode (sim/rtl/requant.v).
MVAU_SPARSE_SOURCES = ("mvau_sparse.v", "requant.v")
#: mvau_sparse.v's pipeline depth in its cycle model (R1..R5, the sink one edge after R5).
D_MVAU_SPARSE = 5
#: ... in requant mode (RQ = 1: R5 = acc + bias, R6 product, R7 code).
D_MVAU_SPARSE_RQ = 7


@dataclass(frozen=True)
class SparseMvauConfig:
    """Parameters of one mvau_sparse.v build: those of :class:`MvauConfig` (module header
    of sim/rtl/mvau.v) plus ``nb_max``, the number of blocks the memories hold (default
    ``NRG·SF``, every block: then one build serves every density of a layer). ``rq``,
    ``rq_bits``, ``rq_signed``, ``mbits``, ``bias_bits``: the requant output stage, as
    :class:`MvauConfig` (mvau_sparse.v's ``RQ``, ``RQ_BITS``, ``RQ_SIGNED``, ``MBITS``,
    ``BIAS_W``; needs ``NT = 0``)."""

    MH: int
    MW: int
    PE: int
    SIMD: int
    WB: int = 4
    AB: int = 4
    a_signed: bool = True
    binary: bool = False
    NT: int = 1
    out_bias: int = 0
    restype: int = 0
    acc_out: bool = True
    nb_max: int | None = None
    rq: bool = False
    rq_bits: int = 8
    rq_signed: bool = True
    mbits: int = 16
    bias_bits: int = 16
    dense: MvauConfig = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        d = MvauConfig(MH=self.MH, MW=self.MW, PE=self.PE, SIMD=self.SIMD, WB=self.WB, AB=self.AB,
                       a_signed=self.a_signed, binary=self.binary, NT=self.NT, out_bias=self.out_bias,
                       restype=self.restype, acc_out=self.acc_out, rq=self.rq, rq_bits=self.rq_bits,
                       rq_signed=self.rq_signed, mbits=self.mbits,
                       bias_bits=self.bias_bits)  # validates the shared parameters
        object.__setattr__(self, "dense", d)
        if self.nb_max is not None and not 1 <= self.nb_max <= self.NRG * self.SF:
            raise ValueError(f"SparseMvauConfig: nb_max={self.nb_max} outside 1..NRG*SF = {self.NRG * self.SF}")

    @property
    def NRG(self) -> int:
        """Row groups (= mvau.v's output folds NF)."""
        return self.dense.NF

    @property
    def SF(self) -> int:
        """Column groups (= beats per input vector)."""
        return self.dense.SF

    @property
    def capacity(self) -> int:
        return self.NRG * self.SF if self.nb_max is None else int(self.nb_max)

    @property
    def w_type(self) -> IntType:
        return self.dense.w_type

    @property
    def a_type(self) -> IntType:
        return self.dense.a_type

    @property
    def acc_bits(self) -> int:
        return self.dense.acc_bits

    @property
    def out_type(self) -> IntType:
        """The requant output type Y (requant mode only)."""
        return self.dense.out_type

    @property
    def depth(self) -> int:
        """mvau_sparse.v's pipeline depth: D_MVAU_SPARSE, or D_MVAU_SPARSE_RQ in requant mode."""
        return D_MVAU_SPARSE_RQ if self.rq else D_MVAU_SPARSE

    def parameters(self) -> dict[str, int]:
        """mvau_sparse.v's Verilog parameters (listed here, not taken from MvauConfig, whose
        mvau.v may grow parameters this module does not have; the requant ones only in
        requant mode, so threshold and raw builds keep their parameter sets)."""
        p = {"MH": self.MH, "MW": self.MW, "PE": self.PE, "SIMD": self.SIMD, "WB": self.WB, "AB": self.AB,
             "A_SIGNED": int(self.a_signed), "BINARY": int(self.binary), "RESTYPE": self.restype,
             "NT": self.NT, "OUT_BIAS": self.out_bias, "ACC_OUT": int(self.acc_out), "NB_MAX": self.capacity}
        if self.rq:
            p.update(RQ=1, RQ_BITS=self.rq_bits, RQ_SIGNED=int(self.rq_signed), MBITS=self.mbits,
                     BIAS_W=self.bias_bits)
        return p


@dataclass(frozen=True)
class SparseMvauRun:
    """Result of :func:`run_sparse_mvaus`: output codes (V x MH), raw accumulators (V x MH,
    None without ``acc_out``), the measured cycles, the model's (:func:`sparse_rtl_cycles`),
    the stored blocks ``nb``, the empty row groups ``ne`` and ``T = nb + ne``."""

    codes: np.ndarray
    acc: np.ndarray | None
    cycles: int
    expected_cycles: int
    nb: int
    ne: int

    @property
    def T(self) -> int:
        return self.nb + self.ne


def sparse_rtl_cycles(T: int, SF: int, vectors: int, requant: bool = False) -> int:
    """mvau_sparse.v's cycles for ``vectors`` input vectors offered back to back, output
    never stalled, first input beat accepted .. last output beat accepted (inclusive):
    ``V·max(SF, T) + min(SF, T) + D_MVAU_SPARSE``, ``T = NB + NE`` slots per vector and
    ``SF`` beats per vector (derived in the RTL's header). For ``T >= SF`` this is the HLS
    kernel's ``V·T`` iterations plus a one-vector fill ``SF`` and the pipeline depth. With
    the requant output stage (``requant``) ``+ D_MVAU_SPARSE_RQ = 7`` instead."""
    for name, v in (("T", T), ("SF", SF), ("vectors", vectors)):
        if not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"sparse_rtl_cycles: {name}={v!r} must be a positive integer")
    return int(vectors * max(SF, T) + min(SF, T) + (D_MVAU_SPARSE_RQ if requant else D_MVAU_SPARSE))


def _bits(v: np.ndarray, t: IntType) -> np.ndarray:
    v = np.asarray(v, dtype=np.int64)
    return (v > 0).astype(np.int64) if t.bipolar else v & ((1 << t.bits) - 1)


def pack_masked(cfg: SparseMvauConfig, w: np.ndarray) -> SparseWeights:
    """Check the masked ``MH x MW`` weights and pack them (``pack_sparse(w, PE, SIMD)``).

    ``WB >= 2``: codes of the signed WB-bit type (zeros anywhere). ``WB = 1``: -1/+1 inside
    the stored blocks, 0 in whole pruned blocks (``ValueError`` otherwise). Also checks
    that the stored blocks fit the memories (``nb <= capacity``)."""
    w = np.asarray(w, dtype=np.int64)
    if w.shape != (cfg.MH, cfg.MW):
        raise ValueError(f"run_sparse_mvau: weights must be MH x MW = {cfg.MH} x {cfg.MW}, got {w.shape}")
    if cfg.w_type.bipolar:
        check_codes("run_sparse_mvau", "w", w, IntType(2, True))
        if not np.all(np.isin(w, (-1, 0, 1))):
            raise ValueError("run_sparse_mvau: bipolar weights must be -1/+1 (stored) or 0 (pruned blocks)")
    else:
        check_codes("run_sparse_mvau", "w", w, cfg.w_type)
    sw = pack_sparse(w, cfg.PE, cfg.SIMD)
    if cfg.w_type.bipolar:
        dense = sw.to_dense()
        stored = np.repeat(np.repeat(_block_mask(sw), cfg.PE, 0), cfg.SIMD, 1)[:cfg.MH, :cfg.MW]
        if np.any(dense[stored] == 0):
            raise ValueError("run_sparse_mvau: a bipolar weight is 0 inside a stored block; prune whole "
                             f"{cfg.PE} x {cfg.SIMD} blocks")
    if sw.nb > cfg.capacity:
        raise ValueError(f"run_sparse_mvau: {sw.nb} stored blocks exceed the build's capacity nb_max={cfg.capacity}")
    return sw


def _block_mask(sw: SparseWeights) -> np.ndarray:
    m = np.zeros((sw.row_groups, sw.col_groups), dtype=bool)
    for rg in range(sw.row_groups):
        m[rg, sw.col_idx[sw.row_ptr[rg]:sw.row_ptr[rg + 1]]] = True
    return m


def csr_writes(cfg: SparseMvauConfig, sw: SparseWeights) -> dict[str, list[list[int]]]:
    """Memory writes of ``sw.kernel_arrays()``: ``rp`` [addr, row_ptr[addr]] (NRG + 1),
    ``col`` [b, col_idx[b]] and ``wgt`` [pe, b, word] for the NB stored blocks, word b of PE
    p holding ``vals[b][p][j]`` at ``[WB·j +: WB]`` (bipolar: the bit ``(v + 1) / 2``; the
    padding lanes' 0 becomes bit 0, masked by the RTL)."""
    row_ptr, col_idx, vals = sw.kernel_arrays()
    rp = [[a, int(v)] for a, v in enumerate(row_ptr)]
    col = [[b, int(col_idx[b])] for b in range(sw.nb)]
    bits = _bits(vals[:sw.nb], cfg.w_type)  # (NB, PE, SIMD)
    wgt = []
    for p in range(cfg.PE):
        words = rtl.pack_lanes(bits[:, p, :].reshape(sw.nb, cfg.SIMD), cfg.WB) if sw.nb else []
        wgt.extend([p, b, x] for b, x in enumerate(words))
    return {"rp": rp, "col": col, "wgt": wgt}


def _case(cfg: SparseMvauConfig, prob: Mapping[str, Any]) -> tuple[dict, SparseWeights]:
    x = np.asarray(prob["x"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != cfg.MW or x.shape[0] < 1:
        raise ValueError(f"run_sparse_mvau: activations must be V x MW = V x {cfg.MW}, got {x.shape}")
    check_codes("run_sparse_mvau", "x", x, cfg.a_type)
    sw = pack_masked(cfg, prob["w"])
    T = prob.get("T")
    if cfg.NT:
        T = np.asarray(T, dtype=np.int64)
        if T.shape != (cfg.MH, cfg.NT) or np.any(np.diff(T, axis=1) < 0):
            raise ValueError(f"run_sparse_mvau: thresholds must be MH x NT = {cfg.MH} x {cfg.NT}, ascending, "
                             f"got {T.shape}")
    if cfg.rq:
        rq = prob.get("requant")
        if rq is None and all(prob.get(k) is not None for k in ("bias", "M", "sh")):
            rq = (prob["bias"], prob["M"], prob["sh"])
        if rq is None or len(rq) != 3:
            raise ValueError("run_sparse_mvau: requant mode needs per-channel requant=(bias, M, sh)")
        thr = requant_writes(cfg.dense, *rq)
    else:
        thr = threshold_writes(cfg.dense, T)
    V = x.shape[0]
    slots = V * max(cfg.SF, sw.iterations_per_vector) + cfg.SF
    case = {**csr_writes(cfg, sw), "thr": thr,
            "act": activation_beats(cfg.dense, x, prob.get("x_pad")), "n_out": V * cfg.NRG,
            "tlast": [int(i % cfg.NRG == cfg.NRG - 1) for i in range(V * cfg.NRG)],
            "slots": slots, "stall": float(prob.get("stall", 0.0)), "seed": int(prob.get("seed", 1))}
    return case, sw


def run_sparse_mvaus(cfg: SparseMvauConfig, problems: Sequence[Mapping[str, Any]],
                     sim: str = "verilator") -> list[SparseMvauRun]:
    """Several problems (dicts with ``x`` V x MW, ``w`` MH x MW masked weights, ``T`` MH x NT
    when NT > 0, ``requant`` = (bias, M, sh) (MH integers each; or keys ``bias``, ``M``,
    ``sh``) in requant mode, optionally ``stall``, ``seed`` and ``x_pad`` (V x SF·SIMD codes
    for the padding lanes)) one after the other in one simulation of one mvau_sparse.v
    build; every problem rewrites the CSR memories (its own sparsity pattern) and the
    threshold / requant parameters."""
    built = [_case(cfg, p) for p in problems]
    results = rtl.run_cocotb(sim, "mvau_sparse", MVAU_SPARSE_SOURCES, __name__,
                             inputs={"cases": [c for c, _ in built]}, parameters=cfg.parameters())
    runs = []
    for prob, (_, sw), res in zip(problems, built, results):
        V = np.asarray(prob["x"]).shape[0]
        if res["d_mvau"] != cfg.depth or res["acc_w"] != cfg.acc_bits:
            raise rtl.RtlError(f"mvau_sparse.v reports D={res['d_mvau']}, ACC_W={res['acc_w']}; the model says "
                               f"{cfg.depth}, {cfg.acc_bits}")
        d = cfg.dense
        codes = decode_outputs(d, res["out"], d.out_bits, d.out_signed, V)
        acc = decode_outputs(d, res["acc"], d.acc_bits, True, V) if cfg.acc_out else None
        runs.append(SparseMvauRun(codes=codes, acc=acc, cycles=int(res["cycles"]),
                                  expected_cycles=sparse_rtl_cycles(sw.iterations_per_vector, cfg.SF, V,
                                                                    requant=cfg.rq),
                                  nb=sw.nb, ne=sw.empty_row_groups))
    return runs


def run_sparse_mvau(x: np.ndarray, w: np.ndarray, T: np.ndarray | None = None, *, PE: int, SIMD: int, WB: int,
                    AB: int, a_signed: bool = True, binary: bool = False, out_bias: int = 0, restype: int = 0,
                    nb_max: int | None = None, sim: str = "verilator", stall: float = 0.0,
                    seed: int = 1, requant: tuple | None = None, rq_bits: int = 8, rq_signed: bool = True,
                    mbits: int = 16, bias_bits: int = 16) -> SparseMvauRun:
    """One problem: ``x`` (V x MW codes), masked ``w`` (MH x MW), ``T`` (MH x NT ascending
    thresholds, or None for the raw accumulator) on a build with the given folding; or,
    with ``requant = (bias, M, sh)`` (MH integers each; ``T`` must be None), the requant
    output stage with ``rq_bits``, ``rq_signed``, ``mbits``, ``bias_bits``."""
    x, w = np.asarray(x), np.asarray(w)
    NT = 0 if T is None else int(np.asarray(T).shape[1])
    cfg = SparseMvauConfig(MH=w.shape[0], MW=w.shape[1], PE=PE, SIMD=SIMD, WB=WB, AB=AB, a_signed=a_signed,
                           binary=binary, NT=NT, out_bias=out_bias, restype=restype, nb_max=nb_max,
                           rq=requant is not None, rq_bits=rq_bits, rq_signed=rq_signed, mbits=mbits,
                           bias_bits=bias_bits)
    return run_sparse_mvaus(cfg, [dict(x=x, w=w, T=T, requant=requant, stall=stall, seed=seed)], sim=sim)[0]


# ---------------------------------------------------------------------------
# cocotb testbench (runs inside the simulator; streamdrv is on its PYTHONPATH)
# ---------------------------------------------------------------------------

async def _write_memories(dut, case: dict) -> None:
    """One memory write per clock: row_ptr, col_idx, block values, thresholds."""
    from cocotb.triggers import FallingEdge

    ports = (("r_we", ("r_addr", "r_data"), "rp"), ("c_we", ("c_addr", "c_data"), "col"),
             ("w_we", ("w_pe", "w_addr", "w_data"), "wgt"), ("t_we", ("t_pe", "t_idx", "t_addr", "t_data"), "thr"))
    for we, names, key in ports:
        for values in case[key]:
            getattr(dut, we).value = 1
            for n, v in zip(names, values):
                getattr(dut, n).value = v
            await FallingEdge(dut.clk)
        getattr(dut, we).value = 0


@cocotb.test()
async def mvau_sparse_cases(dut):
    """Cases one after the other on one instance (the stream is idle between cases, so
    the memories may be rewritten): memory writes, then the activation beats with
    ``stall``-probability gaps and back-pressure; outputs, tlast checked, cycles
    (streamdrv: first input beat accepted .. last output beat accepted, inclusive)."""
    from streamdrv import Sink, Source, load_inputs, run_streams, save_outputs, start_clock_and_reset

    spec = load_inputs()
    await start_clock_and_reset(dut, idle=("s_tvalid", "r_we", "c_we", "w_we", "t_we", "m_tready"))
    results = []
    for case in spec["cases"]:
        await _write_memories(dut, case)
        rng = random.Random(case.get("seed", 1))
        p = float(case.get("stall", 0.0))
        src = Source(dut.s_tvalid, dut.s_tready, [(dut.s_tdata, case["act"])], p_gap=p, rng=rng)
        out = Sink(dut.m_tvalid, dut.m_tready, [dut.m_tdata, dut.m_tlast, dut.m_tacc], p_stall=p, rng=rng)
        budget = 4 * (case["slots"] + 100) * (1 + int(10 * p))
        res = await run_streams(dut, [src], [out], case["n_out"], budget)
        tlast = [b[1] for b in res["beats"]]
        assert tlast == case["tlast"], f"m_tlast {tlast} != last row group of each vector {case['tlast']}"
        results.append({"out": [b[0] for b in res["beats"]], "acc": [b[2] for b in res["beats"]],
                        "cycles": res["cycles"], "d_mvau": int(dut.d_mvau.value), "acc_w": int(dut.acc_w.value)})
    save_outputs(results)
