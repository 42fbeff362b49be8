"""RTL of the MVAU (sim/rtl/mvau.v, docs/dataflow.md) == codesign.sim.reference.

Every simulated accumulator is compared with ``==`` against ``ref.matmul`` (low-bit mode)
or ``ref.xnor_popcount`` (binary mode), every output code against ``ref.threshold`` of
the reference accumulator, and every cycle count of a run without stalls with ``==``
against the cycle model ``codesign.accel.dataflow.mvau_cycles`` (NF·SF·V + D_MVAU).
Simulated under Verilator (always: a missing Verilator fails these tests) and Icarus
Verilog (when installed), through cocotb (sim/cocotb/tb_mvau.py).

Coverage: binary mode with MW not a multiple of SIMD and MH not a multiple of PE (the
padding lanes carry random bits in both operands, so the lane mask is exercised); a
fully parallel binary layer (NF = SF = 1); 1-, 2-, 4- and 8-bit weights (1: bipolar);
signed, unsigned and bipolar activations; LUT and DSP products; 0 (raw accumulator), 1,
3, 15 and 255 thresholds with unsigned and signed (out_bias < 0) codes; the accumulator at
both ends of its exact range (§2); thresholds equal to the accumulator (ties count),
below and above the range; a bias folded into the thresholds; several vectors per run;
random input gaps and output back-pressure.

Requant output stage (mvau.v ``RQ = 1``, ``RQ_CONFIGS``): codes ``==``
``ref.requant(acc + bias, M, sh, Y)`` of the reference accumulator with per-channel bias,
multiplier and shift (extreme biases, M = 0 / 1 / 2^m - 1, shifts 0 and 62, both saturation
ends required), signed and unsigned outputs of 2 and 4..8 bits, multipliers of 8..24 bits,
biases of 6..32 bits (a 33-bit biased accumulator: requant.v's two-product path), cycles
``==`` NF·SF·V + D_MVAU_RQ (7).
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from codesign.accel import dataflow as D
from codesign.sim import reference as ref
from codesign.sim import rtl
from codesign.sim import rtl_mvau as M





# ---------------------------------------------------------------------------
# Python-only checks
# ---------------------------------------------------------------------------

def test_cycle_model_hand_derived():
    """NF·SF·V + D_MVAU with NF = ceil(MH/PE), SF = ceil(MW/SIMD), D_MVAU = 5 (R1..R5 of
    mvau.v, the sink taking the beat one edge after R5)."""
    assert D.D_MVAU == 5
    assert D.mvau_cycles(MH=10, MW=37, PE=4, SIMD=8, vectors=3) == 3 * 5 * 3 + 5
    assert D.mvau_cycles(MH=64, MW=576, PE=64, SIMD=576, vectors=1) == 1 + 5
    assert D.mvau_cycles(MH=1, MW=1, PE=1, SIMD=1, vectors=7) == 7 + 5


def test_config_errors():
    with pytest.raises(ValueError, match="PE <= MH"):
        M.MvauConfig(MH=4, MW=8, PE=5, SIMD=2)
    with pytest.raises(ValueError, match="binary mode"):
        M.MvauConfig(MH=4, MW=8, PE=2, SIMD=2, WB=2, AB=1, binary=True)
    with pytest.raises(ValueError, match="unsigned 1-bit"):
        M.MvauConfig(MH=4, MW=8, PE=2, SIMD=2, AB=1, a_signed=False)
    with pytest.raises(ValueError, match="NT="):
        M.MvauConfig(MH=4, MW=8, PE=2, SIMD=2, NT=256)


def test_verilator_lint_clean():
    """mvau.v passes `verilator --lint-only -Wall` for the tested parameter sets and more."""
    exe = rtl.verilator_path()
    if exe is None:
        pytest.fail(rtl.simulator_problem("verilator"))
    env = {**os.environ, **rtl._verilator_env()}
    sets = [c.parameters() for c, _ in CONFIGS.values()] + [
        {"MH": 1, "MW": 1, "PE": 1, "SIMD": 1, "WB": 1, "AB": 1},
        {"MH": 64, "MW": 576, "PE": 8, "SIMD": 32, "WB": 1, "AB": 1, "BINARY": 1, "NT": 1},
        {"MH": 16, "MW": 64, "PE": 4, "SIMD": 8, "WB": 8, "AB": 8, "RESTYPE": 1, "NT": 255, "OUT_BIAS": -128},
    ]
    for params in sets:
        cmd = [str(exe), "--lint-only", "-Wall", "-Wno-DECLFILENAME", "--top-module", "mvau",
               *[f"-G{k}={v}" for k, v in params.items()], str(rtl.RTL_DIR / "mvau.v")]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert out.returncode == 0 and "%Warning" not in out.stderr, f"{params}:\n{out.stderr}"


# ---------------------------------------------------------------------------
# Problems
# ---------------------------------------------------------------------------

def _codes(rng, t: ref.IntType, shape) -> np.ndarray:
    if t.bipolar:
        return rng.choice(np.array([-1, 1]), size=shape)
    return rng.integers(t.lo, t.hi + 1, size=shape)


def _reference_acc(cfg: M.MvauConfig, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The independent reference: xnor_popcount on packed bits (binary) or matmul."""
    if cfg.binary:
        return ref.xnor_popcount(ref.pack_bipolar(x), ref.pack_bipolar(w), cfg.MW)
    return ref.matmul(x, w.T, a_type=cfg.a_type, w_type=cfg.w_type)


def _thresholds(rng, cfg: M.MvauConfig, acc: np.ndarray) -> np.ndarray:
    """Ascending thresholds per channel: random points of the accumulator range, values
    the accumulators take (ties), and for some channels points outside the range."""
    if cfg.NT == 0:
        return None
    lo, hi = cfg.acc_range
    T = np.empty((cfg.MH, cfg.NT), dtype=np.int64)
    for n in range(cfg.MH):
        pool = np.concatenate([rng.integers(lo, hi + 2, size=cfg.NT), acc[:, n]])
        kind = n % 4
        if kind == 1:
            pool = np.concatenate([pool, [lo - 3, lo, hi + 1, hi + 5]])
        if kind == 2:  # concentrate around the channel's accumulators
            pool = np.concatenate([acc[:, n] + d for d in (-1, 0, 1)])
        T[n] = np.sort(rng.choice(pool, size=cfg.NT, replace=True))
    return T


def _problem(rng, cfg: M.MvauConfig, V: int, corners: bool = True, **kw) -> dict:
    x = _codes(rng, cfg.a_type, (V, cfg.MW))
    w = _codes(rng, cfg.w_type, (cfg.MH, cfg.MW))
    at, wt = cfg.a_type, cfg.w_type
    if corners and V >= 3 and cfg.MH >= 3:
        # accumulators at both ends of the §2 range: lo*lo, hi*lo, lo*hi, hi*hi products
        x[0], x[1] = at.lo, at.hi
        w[0], w[1], w[2] = wt.lo, wt.hi, np.where(np.arange(cfg.MW) % 2, wt.lo, wt.hi)
    pad_x = _codes(rng, at, (V, cfg.SF * cfg.SIMD))
    pad_w = _codes(rng, wt, (cfg.NF * cfg.PE, cfg.SF * cfg.SIMD))
    acc = _reference_acc(cfg, x, w)
    return dict(x=x, w=w, T=_thresholds(rng, cfg, acc), x_pad=pad_x, w_pad=pad_w, **kw)


#: name -> (build configuration, vectors per problem)
CONFIGS = {
    "binary_ragged": (M.MvauConfig(MH=10, MW=37, PE=4, SIMD=8, WB=1, AB=1, binary=True, NT=1), 4),
    "binary_parallel_2bit": (M.MvauConfig(MH=6, MW=16, PE=6, SIMD=16, WB=1, AB=1, binary=True, NT=3), 3),
    "w2a2_signed_out": (M.MvauConfig(MH=7, MW=20, PE=3, SIMD=6, WB=2, AB=2, NT=3, out_bias=-2), 4),
    "w4a4_unsigned": (M.MvauConfig(MH=8, MW=24, PE=2, SIMD=8, WB=4, AB=4, a_signed=False, NT=15), 3),
    "w8a8_dsp_raw": (M.MvauConfig(MH=5, MW=9, PE=1, SIMD=1, WB=8, AB=8, restype=1, NT=0), 3),
    "w8a8u_lut_255": (M.MvauConfig(MH=3, MW=12, PE=3, SIMD=4, WB=8, AB=8, a_signed=False, NT=255,
                                   out_bias=-128), 3),
    "w1_bipolar_a3": (M.MvauConfig(MH=5, MW=11, PE=2, SIMD=3, WB=1, AB=3, NT=1), 3),
    "w4_a1_bipolar": (M.MvauConfig(MH=4, MW=10, PE=4, SIMD=5, WB=4, AB=1, NT=2, out_bias=-1), 3),
}


def _check(cfg: M.MvauConfig, prob: dict, run: M.MvauRun, stalled: bool) -> None:
    acc = _reference_acc(cfg, prob["x"], prob["w"])
    if cfg.acc_out:
        assert np.array_equal(run.acc, acc), f"accumulators differ:\nrtl {run.acc}\nref {acc}"
    want = acc if cfg.NT == 0 else ref.threshold(acc, prob["T"], out_bias=cfg.out_bias)
    assert np.array_equal(run.codes, want), f"codes differ:\nrtl {run.codes}\nref {want}"
    if stalled:
        assert run.cycles >= run.expected_cycles
    else:
        assert run.cycles == run.expected_cycles


@pytest.mark.rtl
@pytest.mark.parametrize("name", list(CONFIGS))
def test_mvau_matches_reference(sim, name):
    """Random and corner problems on one build: codes and accumulators == reference,
    cycles == model without stalls; a run with input gaps and output back-pressure."""
    cfg, V = CONFIGS[name]
    rng = np.random.default_rng(abs(hash(name)) % 2**32)
    probs = [_problem(rng, cfg, V), _problem(rng, cfg, 1, corners=False),
             _problem(rng, cfg, V + 2, stall=0.3, seed=7)]
    runs = M.run_mvaus(cfg, probs, sim=sim)
    for prob, run in zip(probs, runs):
        _check(cfg, prob, run, stalled=prob.get("stall", 0) > 0)


@pytest.mark.rtl
def test_mvau_bias_folded_into_thresholds(sim):
    """FINN folds a bias into the thresholds: threshold(matmul(x, w.T, b), T) equals the
    RTL's codes with thresholds T - b (run_mvau, the single-problem entry point)."""
    cfg, _ = CONFIGS["w4a4_unsigned"]
    rng = np.random.default_rng(5)
    x = _codes(rng, cfg.a_type, (3, cfg.MW))
    w = _codes(rng, cfg.w_type, (cfg.MH, cfg.MW))
    b = rng.integers(-300, 300, size=cfg.MH)
    acc_b = ref.matmul(x, w.T, bias=b, a_type=cfg.a_type, w_type=cfg.w_type)
    T = np.sort(rng.integers(-600, 600, size=(cfg.MH, cfg.NT)), axis=1)
    run = M.run_mvau(x, w, T - b[:, None], PE=cfg.PE, SIMD=cfg.SIMD, WB=cfg.WB, AB=cfg.AB,
                     a_signed=False, sim=sim)
    assert np.array_equal(run.codes, ref.threshold(acc_b, T))
    assert run.cycles == run.expected_cycles == D.mvau_cycles(cfg.MH, cfg.MW, cfg.PE, cfg.SIMD, 3)


# ---------------------------------------------------------------------------
# Requant output stage (mvau.v RQ = 1): bias add + multiplier-shift requantizer
# ---------------------------------------------------------------------------

#: name -> (build configuration, vectors per problem). PE/SIMD folds (ragged and fully
#: parallel), binary and low-bit, LUT and DSP products, signed and unsigned outputs of
#: 4..8 bits (and 2), multipliers of 8..24 bits, biases of 6..32 bits (a 33-bit biased
#: accumulator takes requant.v's two-product path).
RQ_CONFIGS = {
    "rq_w4a4u_s8": (M.MvauConfig(MH=8, MW=24, PE=2, SIMD=8, WB=4, AB=4, a_signed=False, NT=0, rq=True,
                                 rq_bits=8, rq_signed=True, mbits=16, bias_bits=16), 3),
    "rq_binary_u5": (M.MvauConfig(MH=10, MW=37, PE=4, SIMD=8, WB=1, AB=1, binary=True, NT=0, rq=True,
                                  rq_bits=5, rq_signed=False, mbits=16, bias_bits=12), 4),
    "rq_w8a8_dsp_s4_wide": (M.MvauConfig(MH=5, MW=9, PE=1, SIMD=1, WB=8, AB=8, restype=1, NT=0, rq=True,
                                         rq_bits=4, rq_signed=True, mbits=24, bias_bits=32), 3),
    "rq_w2a2_u7_parallel": (M.MvauConfig(MH=7, MW=20, PE=7, SIMD=20, WB=2, AB=2, NT=0, rq=True,
                                         rq_bits=7, rq_signed=False, mbits=8, bias_bits=6), 3),
    "rq_w1a3_s6": (M.MvauConfig(MH=6, MW=11, PE=3, SIMD=3, WB=1, AB=3, NT=0, rq=True,
                                rq_bits=6, rq_signed=True, mbits=16, bias_bits=16), 3),
    "rq_w4a1_s2": (M.MvauConfig(MH=4, MW=10, PE=4, SIMD=5, WB=4, AB=1, NT=0, rq=True,
                                rq_bits=2, rq_signed=True, mbits=12, bias_bits=8), 3),
}


def _rq_problem(rng, cfg: M.MvauConfig, V: int, corners: bool = True, **kw) -> dict:
    prob = _problem(rng, cfg, V, corners=corners, **kw)
    bias, Mv, sh = M.requant_params(rng, cfg)
    return {**prob, "T": None, "bias": bias, "M": Mv, "sh": sh}


def _rq_want(cfg: M.MvauConfig, prob: dict) -> np.ndarray:
    """The independent reference: requant (§3) of the reference accumulator with the bias
    (matmul's bias, or the xnor-popcount plus the bias: §2 adds it to the accumulator)."""
    acc = _reference_acc(cfg, prob["x"], prob["w"]) + prob["bias"][None, :]
    return ref.requant(acc, prob["M"][None, :], prob["sh"][None, :], cfg.out_type, m=cfg.mbits)


def test_requant_cycle_model_hand_derived():
    """Requant mode: two stages deeper (R5 = acc + bias, R6 product, R7 code)."""
    assert D.D_MVAU_RQ == 7
    assert D.mvau_cycles(MH=10, MW=37, PE=4, SIMD=8, vectors=3, requant=True) == 3 * 5 * 3 + 7
    assert D.mvau_cycles(MH=1, MW=1, PE=1, SIMD=1, vectors=7, requant=True) == 7 + 7


def test_requant_config_and_write_errors():
    with pytest.raises(ValueError, match="needs NT = 0"):
        M.MvauConfig(MH=4, MW=8, PE=2, SIMD=2, NT=3, rq=True)
    with pytest.raises(ValueError, match="rq_bits=1"):
        M.MvauConfig(MH=4, MW=8, PE=2, SIMD=2, NT=0, rq=True, rq_bits=1)
    cfg = M.MvauConfig(MH=4, MW=8, PE=2, SIMD=2, NT=0, rq=True, mbits=8, bias_bits=6)
    with pytest.raises(ValueError, match="bias"):
        M.requant_writes(cfg, [32, 0, 0, 0], [1] * 4, [0] * 4)
    with pytest.raises(ValueError, match="M "):
        M.requant_writes(cfg, [0] * 4, [256, 0, 0, 0], [0] * 4)
    with pytest.raises(ValueError, match="shift"):
        M.requant_writes(cfg, [0] * 4, [1] * 4, [63, 0, 0, 0])
    # layout: idx 0 bias (two's complement in max(6, 8, 6) = 8 bits), 1 M, 2 shift; word nf of PE p
    w = M.requant_writes(cfg, [-1, 2, 3, -32], [5, 6, 7, 8], [9, 10, 11, 12])
    assert [-1 & 255, 2, 3, -32 & 255] == [v for p, i, a, v in sorted(w, key=lambda r: (r[1], r[2], r[0])) if i == 0]
    assert [0, 1, 0, 5] in w and [1, 2, 1, 12] in w and [1, 1, 0, 6] in w  # channel 3 = fold 1, PE 1


def test_requant_lint_clean():
    """mvau.v + requant.v in requant mode pass `verilator --lint-only -Wall`."""
    exe = rtl.verilator_path()
    if exe is None:
        pytest.fail(rtl.simulator_problem("verilator"))
    env = {**os.environ, **rtl._verilator_env()}
    sets = [c.parameters() for c, _ in RQ_CONFIGS.values()] + [
        {**M.MvauConfig(MH=512, MW=4608, PE=8, SIMD=64, WB=1, AB=1, binary=True, NT=0, rq=True,
                        acc_out=False).parameters()},
    ]
    for params in sets:
        cmd = [str(exe), "--lint-only", "-Wall", "-Wno-DECLFILENAME", "--top-module", "mvau",
               *[f"-G{k}={v}" for k, v in params.items()], *(str(rtl.RTL_DIR / s) for s in M.MVAU_SOURCES)]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert out.returncode == 0 and "%Warning" not in out.stderr, f"{params}:\n{out.stderr}"


@pytest.mark.rtl
@pytest.mark.parametrize("name", list(RQ_CONFIGS))
def test_mvau_requant_matches_reference(sim, name):
    """Requant mode: codes == reference.requant(acc + bias, M, sh, Y) (every channel has its
    own bias, M and shift, corners included), accumulators == reference, cycles ==
    NF·SF·V + D_MVAU_RQ without stalls; a run with input gaps and output back-pressure."""
    cfg, V = RQ_CONFIGS[name]
    rng = np.random.default_rng(sum(map(ord, name)))
    probs = [_rq_problem(rng, cfg, V), _rq_problem(rng, cfg, 1, corners=False),
             _rq_problem(rng, cfg, V + 2, stall=0.3, seed=7)]
    runs = M.run_mvaus(cfg, probs, sim=sim)
    seen_sat = set()
    for prob, run in zip(probs, runs):
        assert np.array_equal(run.acc, _reference_acc(cfg, prob["x"], prob["w"]))
        want = _rq_want(cfg, prob)
        assert np.array_equal(run.codes, want), f"codes differ:\nrtl {run.codes}\nref {want}"
        seen_sat |= {int(v) for v in np.unique(want) if v in (cfg.out_type.lo, cfg.out_type.hi)}
        if prob.get("stall", 0) > 0:
            assert run.cycles >= run.expected_cycles
        else:
            assert run.cycles == run.expected_cycles == D.mvau_cycles(cfg.MH, cfg.MW, cfg.PE, cfg.SIMD,
                                                                     prob["x"].shape[0], requant=True)
    assert seen_sat == {cfg.out_type.lo, cfg.out_type.hi}, "both saturation ends must be exercised"


@pytest.mark.rtl
def test_mvau_requant_layer_writes_once(sim):
    """run_mvau_layer in requant mode: parameters written once, several streams."""
    cfg, _ = RQ_CONFIGS["rq_w4a4u_s8"]
    cfg = M.MvauConfig(**{**cfg.__dict__, "acc_out": False})
    rng = np.random.default_rng(11)
    prob = _rq_problem(rng, cfg, 2)
    xs = [prob["x"], _codes(rng, cfg.a_type, (4, cfg.MW))]
    runs = M.run_mvau_layer(cfg, prob["w"], None, xs, sim=sim, requant=(prob["bias"], prob["M"], prob["sh"]))
    for x, run in zip(xs, runs):
        assert np.array_equal(run.codes, _rq_want(cfg, {**prob, "x": x}))
        assert run.cycles == run.expected_cycles == D.mvau_cycles(cfg.MH, cfg.MW, cfg.PE, cfg.SIMD, x.shape[0],
                                                                 requant=True)
