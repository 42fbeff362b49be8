"""Run the MVAU RTL (``sim/rtl/mvau.v``, docs/dataflow.md) under cocotb, from Python.

The glue between numpy problems and the testbench ``sim/cocotb/tb_mvau.py``, built and run
through the helpers of :mod:`codesign.sim.rtl` (cached builds, Verilator or Icarus):

* :class:`MvauConfig`: the RTL's parameters (MH, MW, PE, SIMD, bit widths, signedness,
  binary or low-bit mode, thresholds or the requant output stage) and the widths it
  derives (accumulator, output);
* the memory and stream encodings (:func:`weight_words`, :func:`threshold_writes`,
  :func:`requant_writes`, :func:`activation_beats`, :func:`decode_outputs`);
* :func:`run_mvaus` / :func:`run_mvau` / :func:`run_mvau_layer`: numpy in (activations
  V x MW, weights MH x MW, thresholds MH x NT or per-channel bias/M/shift), codes and
  measured cycles out, with the cycle model of
  :func:`codesign.accel.dataflow.mvau_cycles` alongside.

Requant mode (``MvauConfig(rq=True)``, mvau.v ``RQ = 1``): the output is
``codesign.sim.reference.requant(acc + bias, M, sh, Y)`` per channel (docs/arithmetic.md
§3, the engine's ``sim/rtl/requant.v`` per PE), ``Y`` = ``rq_bits`` bits, signed or not;
its pipeline is two stages deeper (``D_MVAU_RQ = 7``).

Matrix convention: ``w[n, k]`` is the weight of output channel ``n`` and input ``k`` (the
MVAU's MH x MW matrix, FINN's orientation); the reference's ``matmul(x, w.T)`` is the
same product. Bipolar operands (1-bit signed, values -1/+1) are given as -1/+1 and
encoded as the bit ``(v + 1) / 2``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from codesign.accel.dataflow import D_MVAU, D_MVAU_RQ, mvau_cycles
from codesign.sim import reference as ref
from codesign.sim import rtl
from codesign.sim.checks import check_codes
from codesign.sim.reference import IntType

__all__ = ["MVAU_SOURCES", "MvauConfig", "MvauRun", "weight_words", "threshold_writes", "requant_writes",
           "requant_params", "activation_beats", "decode_outputs", "run_mvaus", "run_mvau", "run_mvau_layer"]

#: mvau.v and the requantizer it instantiates per PE in requant mode (sim/rtl/requant.v).
MVAU_SOURCES = ("mvau.v", "requant.v")


@dataclass(frozen=True)
class MvauConfig:
    """Parameters of one mvau.v build (see the module header of sim/rtl/mvau.v).

    ``binary``: XNOR-popcount mode (``WB = AB = 1``, ``a_signed``: bipolar operands).
    ``NT``: thresholds per channel (0: the output is the raw accumulator);
    ``out_bias``: added to the threshold count. ``restype``: products in LUTs (0) or as
    ``*`` (1, DSP). ``acc_out``: also stream the raw accumulators (a test port).
    ``rq``: requant output stage instead (needs ``NT = 0``): ``rq_bits`` (2..16) output
    bits, ``rq_signed`` output type, ``mbits`` (1..24) multiplier bits, ``bias_bits``
    (2..32) signed bias bits (mvau.v's ``RQ_BITS``, ``RQ_SIGNED``, ``MBITS``, ``BIAS_W``)."""

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
    rq: bool = False
    rq_bits: int = 8
    rq_signed: bool = True
    mbits: int = 16
    bias_bits: int = 16

    def __post_init__(self) -> None:
        where = f"MvauConfig(MH={self.MH}, MW={self.MW}, PE={self.PE}, SIMD={self.SIMD})"
        if not (1 <= self.PE <= self.MH and 1 <= self.SIMD <= self.MW):
            raise ValueError(f"{where}: need 1 <= PE <= MH and 1 <= SIMD <= MW")
        if not (1 <= self.WB <= 8 and 1 <= self.AB <= 8):
            raise ValueError(f"{where}: WB={self.WB}, AB={self.AB}; supported 1..8 bits")
        if self.AB == 1 and not self.a_signed:
            raise ValueError(f"{where}: unsigned 1-bit activations are not supported (§2: 1-bit is bipolar)")
        if self.binary and not (self.WB == 1 and self.AB == 1 and self.a_signed):
            raise ValueError(f"{where}: binary mode needs WB = AB = 1 and bipolar (signed) activations")
        if not 0 <= self.NT <= 255:
            raise ValueError(f"{where}: NT={self.NT}; supported 0..255 thresholds per channel")
        if self.restype not in (0, 1):
            raise ValueError(f"{where}: restype={self.restype}; supported 0 (LUT) or 1 (DSP)")
        if self.acc_bits > 30:
            raise ValueError(f"{where}: a {self.acc_bits}-bit accumulator; mvau.v supports up to 30 bits")
        if self.rq:
            if self.NT != 0:
                raise ValueError(f"{where}: requant mode needs NT = 0 (got NT={self.NT})")
            if not (2 <= self.rq_bits <= 16 and 1 <= self.mbits <= 24 and 2 <= self.bias_bits <= 32):
                raise ValueError(f"{where}: requant rq_bits={self.rq_bits}, mbits={self.mbits}, "
                                 f"bias_bits={self.bias_bits}; supported 2..16, 1..24, 2..32")

    @property
    def a_type(self) -> IntType:
        return IntType(self.AB, self.a_signed)

    @property
    def w_type(self) -> IntType:
        return IntType(self.WB, True)

    @property
    def NF(self) -> int:
        return -(-self.MH // self.PE)

    @property
    def SF(self) -> int:
        return -(-self.MW // self.SIMD)

    @property
    def acc_range(self) -> tuple[int, int]:
        """Exact accumulator range of MW products (§2, no bias; binary: [-MW, MW])."""
        return ref.acc_range(self.MW, self.a_type, self.w_type)

    @property
    def acc_bits(self) -> int:
        return ref.acc_bits(self.MW, self.a_type, self.w_type)

    @property
    def out_bits(self) -> int:
        """OB: bits of one output code (NT = 0: the accumulator's; requant: rq_bits)."""
        if self.rq:
            return self.rq_bits
        return self.acc_bits if self.NT == 0 else int(self.NT).bit_length()

    @property
    def out_signed(self) -> bool:
        if self.rq:
            return self.rq_signed
        return self.NT == 0 or self.out_bias < 0

    @property
    def out_type(self) -> IntType:
        """The requant output type Y (requant mode only)."""
        return IntType(self.rq_bits, self.rq_signed)

    @property
    def depth(self) -> int:
        """mvau.v's pipeline depth in the cycle model: D_MVAU, or D_MVAU_RQ in requant mode."""
        return D_MVAU_RQ if self.rq else D_MVAU

    def parameters(self) -> dict[str, int]:
        """mvau.v's Verilog parameters (the requant ones only in requant mode, so threshold
        and raw builds keep their parameter sets and build caches)."""
        p = {"MH": self.MH, "MW": self.MW, "PE": self.PE, "SIMD": self.SIMD, "WB": self.WB, "AB": self.AB,
             "A_SIGNED": int(self.a_signed), "BINARY": int(self.binary), "RESTYPE": self.restype,
             "NT": self.NT, "OUT_BIAS": self.out_bias, "ACC_OUT": int(self.acc_out)}
        if self.rq:
            p.update(RQ=1, RQ_BITS=self.rq_bits, RQ_SIGNED=int(self.rq_signed), MBITS=self.mbits,
                     BIAS_W=self.bias_bits)
        return p


@dataclass(frozen=True)
class MvauRun:
    """Result of :func:`run_mvau`: output codes (V x MH), raw accumulators (V x MH, None
    without ``acc_out``), the measured cycles and the model's (``mvau_cycles``)."""

    codes: np.ndarray
    acc: np.ndarray | None
    cycles: int
    expected_cycles: int


def _bits(v: np.ndarray, t: IntType) -> np.ndarray:
    """Codes -> their bit patterns (bipolar: (v + 1) / 2; else two's complement)."""
    v = np.asarray(v, dtype=np.int64)
    return (v > 0).astype(np.int64) if t.bipolar else v & ((1 << t.bits) - 1)


def _pack(fields: np.ndarray, bits: int) -> list[int]:
    """Rows of non-negative fields -> ints with field j at [bits*j +: bits]."""
    return rtl.pack_lanes(np.asarray(fields, dtype=np.int64), bits)


def weight_words(cfg: MvauConfig, w: np.ndarray, pad: np.ndarray | None = None) -> list[list[int]]:
    """[pe, addr, word] writes of the MH x MW weights: word nf*SF + s of PE p holds
    W[nf*PE + p][s*SIMD + j] at [WB*j +: WB]. Padding rows (channels >= MH) and lanes
    (inputs >= MW) take ``pad`` (same padded shape NF*PE x SF*SIMD, codes of the weight
    type) or 0 (bipolar: -1)."""
    NF, SF = cfg.NF, cfg.SF
    full = np.full((NF * cfg.PE, SF * cfg.SIMD), -1 if cfg.w_type.bipolar else 0, dtype=np.int64)
    if pad is not None:
        full[:] = pad
    full[:cfg.MH, :cfg.MW] = w
    bits = _bits(full, cfg.w_type).reshape(NF, cfg.PE, SF, cfg.SIMD)
    out = []
    for p in range(cfg.PE):
        words = _pack(bits[:, p].reshape(NF * SF, cfg.SIMD), cfg.WB)
        out.extend([p, a, x] for a, x in enumerate(words))
    return out


def threshold_writes(cfg: MvauConfig, T: np.ndarray | None) -> list[list[int]]:
    """[pe, idx, addr, value] writes of the MH x NT thresholds (TW = acc_bits + 1 bits,
    two's complement), clipped to [lo_acc, hi_acc + 1] (§8: no comparison changes);
    padding channels get 0."""
    if cfg.NT == 0:
        return []
    lo, hi = cfg.acc_range
    tw = cfg.acc_bits + 1
    full = np.zeros((cfg.NF * cfg.PE, cfg.NT), dtype=np.int64)
    full[:cfg.MH] = np.clip(np.asarray(T, dtype=np.int64), lo, hi + 1)
    full &= (1 << tw) - 1
    return [[p, t, nf, int(full[nf * cfg.PE + p, t])]
            for p in range(cfg.PE) for t in range(cfg.NT) for nf in range(cfg.NF)]


def requant_params(rng, cfg: MvauConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Test parameters for the requant stage (``cfg.rq``): per channel (bias, M, shift),
    mostly a multiplier of ``mbits`` bits and a shift that maps the biased accumulator range
    onto the output range (so codes spread and round), and per channel ``n % 7`` a corner:
    the extreme biases, M = 0, 1 and 2^mbits - 1, shifts 0 and 62, and a shift small
    enough that most outputs saturate at both ends. ``rng``: a numpy Generator."""
    m, bb = cfg.mbits, cfg.bias_bits
    blo, bhi = -(1 << (bb - 1)), (1 << (bb - 1)) - 1
    lo, hi = cfg.acc_range
    bias = rng.integers(max(blo, lo - hi), min(bhi, hi - lo) + 1, size=cfg.MH)
    Mv = rng.integers(1 << (m - 1), 1 << m, size=cfg.MH) if m > 1 else np.ones(cfg.MH, dtype=np.int64)
    span = max(1, hi - lo) + int(np.abs(bias).max())
    base = max(0, int(span * Mv.max()).bit_length() - cfg.rq_bits)
    sh = np.clip(base + rng.integers(-2, 3, size=cfg.MH), 0, 62)
    for n in range(cfg.MH):
        kind = n % 7
        if kind == 1:
            bias[n] = blo
        elif kind == 2:
            bias[n], Mv[n] = bhi, (1 << m) - 1
        elif kind == 3:
            Mv[n] = 0
        elif kind == 4:
            Mv[n], sh[n] = 1, 0
        elif kind == 5:
            sh[n] = 62
        elif kind == 6:
            sh[n] = max(0, base - cfg.rq_bits - 2)  # saturates at both ends
    return bias.astype(np.int64), Mv.astype(np.int64), sh.astype(np.int64)


def requant_writes(cfg: MvauConfig, bias, M, sh) -> list[list[int]]:
    """[pe, idx, addr, value] writes of the per-channel requant parameters through the
    threshold port (mvau.v header): idx 0 the bias (``bias_bits`` two's complement), 1 the
    multiplier M (``0 <= M < 2^mbits``), 2 the shift (0..62); padding channels get 0.
    ``bias``, ``M``, ``sh``: MH integers each. Raises ``ValueError`` (one line) for a value
    outside its field."""
    vals = []
    for what, v, lo, hi in (("bias", bias, -(1 << (cfg.bias_bits - 1)), (1 << (cfg.bias_bits - 1)) - 1),
                            ("M", M, 0, (1 << cfg.mbits) - 1), ("shift", sh, 0, 62)):
        v = np.asarray(v, dtype=np.int64).reshape(-1)
        if v.shape != (cfg.MH,):
            raise ValueError(f"requant_writes: {what} must hold MH = {cfg.MH} values, got {v.shape}")
        if v.size and (v.min() < lo or v.max() > hi):
            raise ValueError(f"requant_writes: {what} [{int(v.min())}, {int(v.max())}] outside {lo}..{hi} "
                             f"(bias_bits={cfg.bias_bits}, mbits={cfg.mbits})")
        full = np.zeros(cfg.NF * cfg.PE, dtype=np.int64)
        full[:cfg.MH] = v
        vals.append(full & ((1 << max(cfg.bias_bits, cfg.mbits, 6)) - 1))
    return [[p, idx, nf, int(vals[idx][nf * cfg.PE + p])]
            for idx in range(3) for p in range(cfg.PE) for nf in range(cfg.NF)]


def activation_beats(cfg: MvauConfig, x: np.ndarray, pad: np.ndarray | None = None) -> list[int]:
    """V x MW activation codes -> V * SF beats of SIMD lanes (lane j at [AB*j +: AB]);
    lanes past MW in each vector's last beat take ``pad`` (V x SF*SIMD codes) or 0
    (bipolar: -1)."""
    V = x.shape[0]
    full = np.full((V, cfg.SF * cfg.SIMD), -1 if cfg.a_type.bipolar else 0, dtype=np.int64)
    if pad is not None:
        full[:] = pad
    full[:, :cfg.MW] = x
    return _pack(_bits(full, cfg.a_type).reshape(V * cfg.SF, cfg.SIMD), cfg.AB)


def decode_outputs(cfg: MvauConfig, beats: Sequence[int], bits: int, signed: bool, V: int) -> np.ndarray:
    """V * NF output beats of PE fields -> V x MH values (padding channels dropped)."""
    vals = rtl.unpack_outputs(beats, cfg.PE, bits, signed=signed)
    return vals.reshape(V, cfg.NF * cfg.PE)[:, :cfg.MH]


def _case(cfg: MvauConfig, prob: Mapping[str, Any]) -> dict:
    x = np.asarray(prob["x"], dtype=np.int64)
    w = np.asarray(prob["w"], dtype=np.int64)
    if x.ndim != 2 or x.shape[1] != cfg.MW or x.shape[0] < 1:
        raise ValueError(f"run_mvau: activations must be V x MW = V x {cfg.MW}, got {x.shape}")
    if w.shape != (cfg.MH, cfg.MW):
        raise ValueError(f"run_mvau: weights must be MH x MW = {cfg.MH} x {cfg.MW}, got {w.shape}")
    check_codes("run_mvau", "x", x, cfg.a_type)
    check_codes("run_mvau", "w", w, cfg.w_type)
    T = prob.get("T")
    if cfg.rq:
        if any(prob.get(k) is None for k in ("bias", "M", "sh")):
            raise ValueError("run_mvau: requant mode needs per-channel 'bias', 'M' and 'sh'")
        thr = requant_writes(cfg, prob["bias"], prob["M"], prob["sh"])
    if cfg.NT:
        T = np.asarray(T, dtype=np.int64)
        if T.shape != (cfg.MH, cfg.NT) or np.any(np.diff(T, axis=1) < 0):
            raise ValueError(f"run_mvau: thresholds must be MH x NT = {cfg.MH} x {cfg.NT}, ascending, got {T.shape}")
    V = x.shape[0]
    if not cfg.rq:
        thr = threshold_writes(cfg, T)
    return {"wgt": weight_words(cfg, w, prob.get("w_pad")), "thr": thr,
            "act": activation_beats(cfg, x, prob.get("x_pad")), "n_out": V * cfg.NF,
            "tlast": [int(i % cfg.NF == cfg.NF - 1) for i in range(V * cfg.NF)],
            "slots": V * cfg.NF * cfg.SF, "stall": float(prob.get("stall", 0.0)), "seed": int(prob.get("seed", 1))}


def run_mvaus(cfg: MvauConfig, problems: Sequence[Mapping[str, Any]], sim: str = "verilator") -> list[MvauRun]:
    """Several problems (dicts with ``x`` V x MW, ``w`` MH x MW, ``T`` MH x NT when NT > 0,
    ``bias``/``M``/``sh`` (MH each) in requant mode, and optionally ``stall``, ``seed``, ``x_pad``/``w_pad`` for the padding lanes) one
    after the other in one simulation of one mvau.v build of ``cfg``."""
    cases = [_case(cfg, p) for p in problems]
    results = rtl.run_cocotb(sim, "mvau", MVAU_SOURCES, "tb_mvau", inputs={"cases": cases},
                             parameters=cfg.parameters())
    runs = []
    for prob, res in zip(problems, results):
        V = np.asarray(prob["x"]).shape[0]
        if res["d_mvau"] != cfg.depth or res["acc_w"] != cfg.acc_bits:
            raise rtl.RtlError(f"mvau.v reports D_MVAU={res['d_mvau']}, ACC_W={res['acc_w']}; the model says "
                               f"{cfg.depth}, {cfg.acc_bits}")
        codes = decode_outputs(cfg, res["out"], cfg.out_bits, cfg.out_signed, V)
        acc = decode_outputs(cfg, res["acc"], cfg.acc_bits, True, V) if cfg.acc_out else None
        runs.append(MvauRun(codes=codes, acc=acc, cycles=int(res["cycles"]),
                            expected_cycles=mvau_cycles(cfg.MH, cfg.MW, cfg.PE, cfg.SIMD, V, requant=cfg.rq)))
    return runs


def run_mvau(x: np.ndarray, w: np.ndarray, T: np.ndarray | None = None, *, PE: int, SIMD: int, WB: int, AB: int,
             a_signed: bool = True, binary: bool = False, out_bias: int = 0, restype: int = 0,
             sim: str = "verilator", stall: float = 0.0, seed: int = 1) -> MvauRun:
    """One MVAU problem: ``x`` (V x MW codes), ``w`` (MH x MW codes), ``T`` (MH x NT
    ascending thresholds, or None for the raw accumulator) on a build with the given
    folding and widths. Returns the codes, accumulators and cycles (:class:`MvauRun`)."""
    x, w = np.asarray(x), np.asarray(w)
    NT = 0 if T is None else int(np.asarray(T).shape[1])
    cfg = MvauConfig(MH=w.shape[0], MW=w.shape[1], PE=PE, SIMD=SIMD, WB=WB, AB=AB, a_signed=a_signed,
                     binary=binary, NT=NT, out_bias=out_bias, restype=restype)
    return run_mvaus(cfg, [dict(x=x, w=w, T=T, stall=stall, seed=seed)], sim=sim)[0]



def run_mvau_layer(cfg: MvauConfig, w: np.ndarray, T: np.ndarray | None, xs: Sequence[np.ndarray],
                   sim: str = "verilator", requant: tuple | None = None) -> list[MvauRun]:
    """One layer's streams on one mvau.v build of ``cfg``: the weights ``w`` (MH x MW) and
    thresholds ``T`` (MH x NT, None when NT = 0) or, in requant mode (``cfg.rq``), the
    per-channel ``requant = (bias, M, sh)`` are written to the memories **once**, then
    every ``xs[i]`` (V_i x MW codes, e.g. one golden case's vectors) streams through in
    turn, without stalls, in the same simulation (the memories keep their contents between
    cases, sim/cocotb/tb_mvau.py). One :class:`MvauRun` per stream: its codes (V_i x MH),
    accumulators (with ``cfg.acc_out``), measured cycles and ``mvau_cycles``. Writing the
    memories once matters for large ``PE·NT`` (one memory write per clock cycle)."""
    if not xs:
        raise ValueError("run_mvau_layer: no input streams")
    cases = []
    for i, x in enumerate(xs):
        rq = {} if requant is None else dict(zip(("bias", "M", "sh"), requant))
        c = _case(cfg, dict(x=x, w=w, T=T, **rq))
        if i:
            c["wgt"], c["thr"] = [], []
        cases.append(c)
    results = rtl.run_cocotb(sim, "mvau", MVAU_SOURCES, "tb_mvau", inputs={"cases": cases},
                             parameters=cfg.parameters())
    runs = []
    for x, res in zip(xs, results):
        V = np.asarray(x).shape[0]
        if res["d_mvau"] != cfg.depth or res["acc_w"] != cfg.acc_bits:
            raise rtl.RtlError(f"mvau.v reports D_MVAU={res['d_mvau']}, ACC_W={res['acc_w']}; the model says "
                               f"{cfg.depth}, {cfg.acc_bits}")
        codes = decode_outputs(cfg, res["out"], cfg.out_bits, cfg.out_signed, V)
        acc = decode_outputs(cfg, res["acc"], cfg.acc_bits, True, V) if cfg.acc_out else None
        runs.append(MvauRun(codes=codes, acc=acc, cycles=int(res["cycles"]),
                            expected_cycles=mvau_cycles(cfg.MH, cfg.MW, cfg.PE, cfg.SIMD, V, requant=cfg.rq)))
    return runs
