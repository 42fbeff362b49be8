"""RTL of the FQ-BERT engine (sim/rtl/*.v, docs/engine.md) == codesign.sim.reference.

Every simulated value is compared with ``==`` against the numpy reference
(``ref.matmul`` + ``ref.requant``), every cycle count with ``==`` against the cycle model
of docs/engine.md §4 (``codesign.sim.rtl.matmul_cycles`` / ``d_pe``). Simulated under
Verilator (always: a missing Verilator fails these tests) and Icarus Verilog (when
``iverilog`` is installed), through cocotb (sim/cocotb/tb_*.py).

Coverage: the bit-split identity of §2 (exhaustive, Python); the dsp2 packed multiplier
(exhaustive over every 9-bit activation and pair of 5-bit weights, in RTL); the PE array
(both modes, int8/uint8 activations, each packing, a few (G, M) shapes, corners: most
negative codes, saturation at both ends, rounding ties, shift 0 and 62, K not a multiple
of M, parameter slots switching between back-to-back tiles, random stalls); the tiled
engine (multi-tile, Nout not a multiple of G, R = 1, one beat per row, two runs in a row,
stalls) and its Python entry point run_matmul_tile.

Budget: one simulator run per test, all cases of a configuration inside it; builds are
cached (~/.cache/codesign/rtl), so only the first run compiles.
"""
from __future__ import annotations

import os
import subprocess

import numpy as np
import pytest

from codesign.sim import reference as ref
from codesign.sim import rtl
from codesign.sim.reference import IntType





# ---------------------------------------------------------------------------
# Python-only checks (no simulator)
# ---------------------------------------------------------------------------

def test_bitsplit_identity_exhaustive():
    """§2: 16*(b >> 4) + (b & 15) == b for every int8 b; a*b == 16*a*hi + a*lo for every
    8-bit a of either signedness; hi is a signed nibble, lo an unsigned one."""
    b = np.arange(-128, 128, dtype=np.int64)
    hi, lo = b >> 4, b & 15
    assert np.array_equal(16 * hi + lo, b)
    assert hi.min() == -8 and hi.max() == 7 and lo.min() == 0 and lo.max() == 15
    a = np.arange(-128, 256, dtype=np.int64)[:, None]  # int8 and uint8 values
    assert np.array_equal(a * b[None, :], 16 * a * hi[None, :] + a * lo[None, :])
    # the engine's weight packing splits bytes the same way (low nibble first)
    beat = rtl.pack_weights(b[:4, None], G=1, M=8, mode=1)[0]
    nibbles = [(beat >> (4 * j)) & 15 for j in range(8)]
    assert nibbles == [int(x) for v in b[:4] for x in ((v & 15), (v >> 4) & 15)]


def test_cycle_model():
    """docs/engine.md §4 with the RTL's D_pe = 5 + clog2(M) (at least 6)."""
    assert [rtl.d_pe(m) for m in (2, 4, 6, 8, 16, 32)] == [6, 7, 8, 8, 9, 10]
    assert rtl.kbeats(24, 8, 0) == 3 and rtl.kbeats(25, 8, 0) == 4
    assert rtl.kbeats(24, 8, 1) == 6 and rtl.kbeats(25, 8, 1) == 7  # ceil(2K/M)
    assert rtl.tile_cycles(R=5, K=24, M=8, mode=0) == 5 * 3 + 8
    assert rtl.matmul_cycles(R=128, K=384, Nout=384, G=32, M=16, mode=0) == 12 * 128 * 24 + 9
    with pytest.raises(ValueError):
        rtl.d_pe(3)
    # dsp2c: 5 + C + max(1, clog2(M/C)), chains of C = min(M/2, 32) lanes
    assert [rtl.d_pe(m, "dsp2") for m in (2, 8, 16)] == [6, 8, 9]
    assert [rtl.d_pe(m, "dsp2c") for m in (2, 6, 8, 16, 32, 64, 128)] == [7, 9, 10, 14, 22, 38, 39]
    assert rtl.matmul_cycles(R=128, K=384, Nout=384, G=32, M=16, mode=0, packing="dsp2c") == 12 * 128 * 24 + 14
    with pytest.raises(ValueError):
        rtl.d_pe(96, "dsp2c")  # M/2 = 48: neither <= 32 nor a multiple of 32


def test_verilator_lint_clean():
    """Every RTL module passes `verilator --lint-only -Wall` for several parameter sets."""
    exe = rtl.verilator_path()
    if exe is None:
        pytest.fail(rtl.simulator_problem("verilator"))
    env = {**os.environ, **rtl._verilator_env()}
    srcs = [str(rtl.RTL_DIR / f) for f in rtl.ENGINE_SOURCES]
    for top, params in [("engine_top", {"PACKING": 0, "G": 3, "M": 6}), ("engine_top", {"PACKING": 1, "M": 2}),
                        ("engine_top", {"PACKING": 2, "G": 2, "M": 16}), ("pe_array", {"PACKING": 0, "G": 5}),
                        ("engine_top", {"PACKING": 3, "G": 3, "M": 6}), ("pe_array", {"PACKING": 3, "G": 4, "M": 2}),
                        ("pe_array", {"PACKING": 3, "G": 2, "M": 128})]:
        cmd = [str(exe), "--lint-only", "-Wall", "-Wno-DECLFILENAME", "--top-module", top,
               *[f"-G{k}={v}" for k, v in params.items()], *srcs]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert out.returncode == 0 and "%Warning" not in out.stderr, f"{top} {params}:\n{out.stderr}"
    for top, params in [("softmax_core", {"L": 8}), ("softmax_core", {"L": 1, "EB": 16, "OB": 16}),
                        ("layernorm_core", {"L": 8}), ("layernorm_core", {"L": 1, "OUT_BITS": 2})]:
        cmd = [str(exe), "--lint-only", "-Wall", "-Wno-DECLFILENAME", "--top-module", top,
               *[f"-G{k}={v}" for k, v in params.items()], str(rtl.RTL_DIR / f"{top}.v")]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env)
        assert out.returncode == 0 and "%Warning" not in out.stderr, f"{top} {params}:\n{out.stderr}"


# ---------------------------------------------------------------------------
# dsp2 packed multiplier: exhaustive
# ---------------------------------------------------------------------------

@pytest.mark.rtl
def test_dsp2_mul_exhaustive(sim):
    """§3: one multiplication a*(w0 + w1*2^18), both products extracted exactly (numpy ==
    inside the testbench). Verilator: every operand of the multiplier's ports, 2^9
    activations x 2^5 x 2^5 weight pairs. Icarus (slow at 33-bit arithmetic): every
    operand the PE presents, activations -128..255 (int8 and uint8) x weights -8..15 (int4
    and unsigned low nibbles) squared."""
    if sim == "verilator":
        a, w, = range(-256, 256), range(-16, 16)
    else:
        a, w = range(-128, 256), range(-8, 16)
    spec = {"a": list(a), "w0": list(w), "w1_lo": w[0], "nw1": len(w)}
    out = rtl.run_cocotb(sim, "dsp2_all", ["dsp2_mul.v", rtl.TB_DIR / "dsp2_all.v"], "tb_dsp2", inputs=spec,
                         parameters={"NW1": len(w), "W1_LO": w[0]})
    assert out == {"checked": 2 * len(a) * len(w) ** 2, "mismatches": 0}


# ---------------------------------------------------------------------------
# Vectors
# ---------------------------------------------------------------------------

def _a_type(signed: bool) -> IntType:
    return IntType(8, signed)


def _w_type(mode: int) -> IntType:
    return IntType(4 if mode == 0 else 8, True)


def _activations(rng, R: int, K: int, signed: bool) -> np.ndarray:
    """Random codes, with rows of corner values: all lo, all hi, alternating lo/hi."""
    t = _a_type(signed)
    a = rng.integers(t.lo, t.hi + 1, size=(R, K))
    for r in range(R):
        kind = rng.integers(0, 6)
        if kind == 0:
            a[r] = t.lo
        elif kind == 1:
            a[r] = t.hi
        elif kind == 2:
            a[r] = np.where(np.arange(K) % 2, t.lo, t.hi)
    return a


def _weights(rng, K: int, N: int, mode: int) -> np.ndarray:
    t = _w_type(mode)
    w = rng.integers(t.lo, t.hi + 1, size=(K, N))
    cols = rng.permutation(N)
    if N >= 3:  # most negative / most positive columns
        w[:, cols[0]] = t.lo
        w[:, cols[1]] = t.hi
    return w


def _requant_params(rng, N: int, acc_scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(bias, M, sh) per channel: mostly dyadic(r) of a ratio that maps the typical
    accumulator to a few dozen codes (some channels saturate), plus corner channels:
    rounding ties (M = 2^15, sh = 16: y = floor((acc + 1) / 2)), identity (M = 1,
    sh = 0: y = sat(acc)) and sh = 62."""
    r = 10.0 ** rng.uniform(-1.5, 0.5, size=N) * 40.0 / max(acc_scale, 1.0)
    M, sh = ref.dyadic(r)
    bias = rng.integers(-(2**12), 2**12, size=N)
    specials = [(32768, 16), (1, 0), (40000, 62)]
    for i, (m, s) in zip(rng.permutation(N)[:len(specials)], specials):
        M[i], sh[i] = m, s
    return bias, M, sh


def _expected(a, w, bias, M, sh, a_signed: bool, mode: int, y_signed: bool):
    acc = ref.matmul(a, w, bias=bias, a_type=_a_type(a_signed), w_type=_w_type(mode))
    return acc, ref.requant(acc, M, sh, IntType(8, y_signed))


# ---------------------------------------------------------------------------
# PE array
# ---------------------------------------------------------------------------

PE_CONFIGS = [  # (G, M, packing)
    pytest.param(4, 8, "dsp2", id="G4-M8-dsp2"),
    pytest.param(5, 2, "dsp2", id="G5-M2-dsp2"),   # odd G: the last PE is unpaired (dsp1)
    pytest.param(3, 6, "lut", id="G3-M6-lut"),     # M not a power of two
    pytest.param(4, 8, "dsp2c", id="G4-M8-dsp2c"),  # DSP chains: 2 chains of 4 lanes per PE pair
    pytest.param(3, 6, "dsp2c", id="G3-M6-dsp2c"),  # odd G (unpaired chain PE), chains of 3 lanes
]


def _pe_case(rng, G: int, M: int, mode: int, a_signed: bool, y_signed: bool, tiles: list[tuple[int, int]],
             stall: float = 0.0, tie_rows: bool = False):
    """A pe_array case: consecutive tiles (R_t rows of K_t elements, own weights and
    parameter slot t) streamed back to back. Returns (case, expected list per tile)."""
    act, last, user, qslot, wgt, qp, expect = [], [], [], [], [], [], []
    for t, (R, K) in enumerate(tiles):
        a = _activations(rng, R, K, a_signed)
        if tie_rows:  # small accumulators: the M = 2^15, sh = 16 channel hits exact ties
            a = rng.integers(-6 if a_signed else 0, 7, size=(R, K))
        w = _weights(rng, K, G, mode)
        bias, Mm, sh = _requant_params(rng, G, acc_scale=float(np.sqrt(K)) * (60 if mode == 0 else 1000))
        if tie_rows:
            bias = rng.integers(-9, 10, size=G)
        acc, y = _expected(a, w, bias, Mm, sh, a_signed, mode, y_signed)
        expect.append((acc, y))
        beats_a = rtl.pack_activations(a, M, mode)
        beats_w = rtl.pack_weights(w, G, M, mode)  # one tile: B beats
        B = len(beats_w)
        for r in range(R):
            for k in range(B):
                act.append(beats_a[r * B + k])
                wgt.append(beats_w[k])
                last.append(int(k == B - 1))
                user.append(int(r % 2))
                qslot.append(t)
        qp.append({"slot": t, "bias": rtl.pack_lanes(bias[None, :], 32)[0],
                   "mult": rtl.pack_lanes(Mm[None, :], 16)[0], "shift": rtl.pack_lanes(sh[None, :], 6)[0]})
    case = {"mode": mode, "a_signed": int(a_signed), "y_signed": int(y_signed), "qp": qp, "act": act,
            "last": last, "user": user, "qslot": qslot, "wgt": wgt, "rows": sum(R for R, _ in tiles),
            "stall": stall, "seed": int(rng.integers(1 << 30))}
    return case, expect


@pytest.mark.rtl
@pytest.mark.parametrize("G, M, packing", PE_CONFIGS)
def test_pe_array(sim, G, M, packing):
    rng = np.random.default_rng([G, M, len(packing)])
    L8 = M // 2
    specs = [  # (mode, a_signed, y_signed, tiles [(R, K)], stall, ties)
        (0, True, True, [(5, 3 * M)], 0.0, False),             # int8 x int4
        (0, False, True, [(4, 2 * M + 1)], 0.0, False),        # uint8 x int4, K padded
        (0, True, False, [(3, M - 1)], 0.0, False),            # uint8 output (fused ReLU), one beat per row
        (1, True, True, [(4, 3 * L8)], 0.0, False),            # Q.K^T: int8 x int8
        (1, False, True, [(3, 2 * L8 + 1)], 0.0, False),       # P.V: uint8 x int8, K padded
        (0, True, True, [(2, 2 * M), (3, M + 2), (1, M)], 0.0, False),  # tiles back to back
        (0, True, True, [(6, M)], 0.0, True),                  # rounding ties
        (1, True, True, [(6, L8)], 0.0, True),
        (0, True, True, [(4, 2 * M), (3, M)], 0.3, False),     # random gaps and back-pressure
        (1, False, False, [(4, 2 * L8 + 1)], 0.3, False),
    ]
    cases, expects = [], []
    for mode, a_signed, y_signed, tiles, stall, ties in specs:
        c, e = _pe_case(rng, G, M, mode, a_signed, y_signed, tiles, stall, ties)
        cases.append(c)
        expects.append(e)
    params = {"G": G, "M": M, "PACKING": rtl.PACKING[packing], "QDEPTH": 4}
    results = rtl.run_cocotb(sim, "pe_array", rtl.ENGINE_SOURCES[:-1], "tb_pe_array",
                             inputs={"cases": cases}, parameters=params)
    for spec, case, exp, res in zip(specs, cases, expects, results):
        mode, a_signed, y_signed, tiles, stall, _ = spec
        label = f"{sim} G={G} M={M} {packing} mode={mode} a_signed={a_signed} y_signed={y_signed} tiles={tiles}"
        acc = np.concatenate([e[0] for e in exp])
        y = np.concatenate([e[1] for e in exp])
        got_acc = rtl.unpack_outputs(res["acc"], G, 32)
        got_y = rtl.unpack_outputs(res["out"], G, 8, signed=y_signed)
        assert np.array_equal(got_acc, acc), f"{label}: accumulators differ"
        assert np.array_equal(got_y, y), f"{label}: requantized codes differ"
        want_user = [r % 2 for R, _ in tiles for r in range(R)]
        assert res["user"] == want_user, f"{label}: tuser not carried"
        assert res["d_pe"] == rtl.d_pe(M, packing)
        if stall == 0.0:
            beats = sum(R * rtl.kbeats(K, M, mode) for R, K in tiles)
            assert res["cycles"] == beats + rtl.d_pe(M, packing), f"{label}: cycles"
    # the vectors reach saturation at both ends of int8
    signed_y = np.concatenate([e[1].ravel() for spec, exp in zip(specs, expects) if spec[2] for e in exp])
    assert signed_y.min() == -128 and signed_y.max() == 127


# ---------------------------------------------------------------------------
# Engine (tiled matmul)
# ---------------------------------------------------------------------------

ENGINE_CONFIGS = [  # (G, M, packing)
    pytest.param(4, 8, "dsp1", id="G4-M8-dsp1"),
    pytest.param(3, 4, "dsp2", id="G3-M4-dsp2"),
    pytest.param(2, 16, "lut", id="G2-M16-lut"),
    pytest.param(4, 16, "dsp2c", id="G4-M16-dsp2c"),
]


def _problem(rng, R, K, N, mode, a_signed, y_signed=True, stall=0.0):
    a = _activations(rng, R, K, a_signed)
    w = _weights(rng, K, N, mode)
    bias, Mm, sh = _requant_params(rng, N, acc_scale=float(np.sqrt(K)) * (60 if mode == 0 else 1000))
    return dict(a_codes=a, w_codes=w, M_mult=Mm, sh=sh, bias=bias, mode=mode, a_signed=a_signed,
                y_signed=y_signed, stall=stall, seed=int(rng.integers(1 << 30)))


@pytest.mark.rtl
@pytest.mark.parametrize("G, M, packing", ENGINE_CONFIGS)
def test_engine_matmul(sim, G, M, packing):
    rng = np.random.default_rng([G, M, 7])
    specs = [  # (R, K, Nout, mode, a_signed, y_signed, stall)
        (4, 3 * M, 3 * G + 1, 0, True, True, 0.0),     # 4 tiles, last one partial
        (3, 2 * M + 3, 2 * G, 0, False, True, 0.0),    # uint8 activations, K padded
        (1, M, 3 * G, 0, True, False, 0.0),            # R = 1, one beat per row: tiles of 1 cycle
        (5, M // 2, 2 * G - 1, 1, True, True, 0.0),    # Q.K^T (8x8), one beat per row
        (3, M + 1, G + 1, 1, False, True, 0.0),        # P.V (uint8 x int8)
        (3, 2 * M, 2 * G + 1, 0, True, True, 0.3),     # random gaps and back-pressure
    ]
    problems = [_problem(rng, *s) for s in specs]
    runs = rtl.run_matmuls(problems, G=G, M=M, packing=packing, sim=sim)
    for spec, p, run in zip(specs, problems, runs):
        R, K, N, mode, a_signed, y_signed, stall = spec
        label = f"{sim} G={G} M={M} {packing} R={R} K={K} N={N} mode={mode} a_signed={a_signed} stall={stall}"
        acc, y = _expected(p["a_codes"], p["w_codes"], p["bias"], p["M_mult"], p["sh"], a_signed, mode, y_signed)
        assert np.array_equal(run.acc, acc), f"{label}: accumulators differ"
        assert np.array_equal(run.codes, y), f"{label}: codes differ"
        assert run.expected_cycles == rtl.matmul_cycles(R, K, N, G, M, mode, packing)
        if stall == 0.0:
            assert run.cycles == run.expected_cycles, f"{label}: {run.cycles} cycles, model {run.expected_cycles}"
        else:
            assert run.cycles > run.expected_cycles


@pytest.mark.rtl
def test_run_matmul_tile(sim):
    """The entry point for real tiles: numpy in, (codes, cycles) out."""
    rng = np.random.default_rng(5)
    R, K, N = 6, 40, 10
    a = rng.integers(-128, 128, size=(R, K))
    w = rng.integers(-8, 8, size=(K, N))
    Mm, sh = ref.dyadic(np.full(N, 0.004))
    # packing dsp1: the build of test_engine_matmul[G4-M8-dsp1] serves this run too
    codes, cycles = rtl.run_matmul_tile(a, w, Mm, sh, mode=0, G=4, M=8, sim=sim, packing="dsp1")
    want = ref.requant(ref.matmul(a, w, a_type=IntType(8, True), w_type=IntType(4, True)), Mm, sh)
    assert np.array_equal(codes, want)
    assert cycles == rtl.matmul_cycles(R, K, N, G=4, M=8, mode=0) == 3 * 6 * 5 + 8
    with pytest.raises(ValueError, match="weight codes"):
        rtl.run_matmul_tile(a, w * 2, Mm, sh, mode=0, G=4, M=8, sim=sim)


# ---------------------------------------------------------------------------
# Softmax core (§5)
# ---------------------------------------------------------------------------

SOFTMAX_CONFIGS = [  # (L, EB, OB)
    pytest.param(8, 8, 8, id="L8-EB8-OB8"),
    pytest.param(3, 12, 10, id="L3-EB12-OB10"),
]


@pytest.mark.rtl
@pytest.mark.parametrize("L, eb, ob", SOFTMAX_CONFIGS)
def test_softmax_core(sim, L, eb, ob):
    """ref.softmax == softmax_core for int8/uint8/int4 inputs, model and arbitrary tables,
    all-equal rows, one-hot rows (the output clamp), N = 1, N not a multiple of L, several
    rows (front/back overlap), stalls; cycles == rtl.softmax_cycles."""
    rng = np.random.default_rng([L, eb, ob])
    i8, u8, i4 = IntType(8, True), IntType(8, False), IntType(4, True)

    def arbitrary(t: IntType) -> np.ndarray:  # any table with entries < 2^EB and T[0] >= 1
        tab = rng.integers(0, 1 << eb, size=1 << t.bits)
        tab[0] = max(1, tab[0])
        return tab

    problems, types = [], []
    for t, N, rows, table, stall in [
        (i8, 3 * L + 1, 4, ref.softmax_table(i8, 0.07, eb), 0.0),
        (u8, 2 * L, 3, ref.softmax_table(u8, 0.02, eb), 0.0),
        (i8, 1, 3, ref.softmax_table(i8, 0.07, eb), 0.0),
        (i4, L + 2, 2, ref.softmax_table(i4, 0.5, eb), 0.0),
        (i8, 40, 5, arbitrary(i8), 0.0),
        (u8, 13, 3, arbitrary(u8), 0.3),
    ]:
        x = rng.integers(t.lo, t.hi + 1, size=(rows, N))
        if N > 1 and rows >= 3:
            x[0] = x[0, 0]                 # all equal
            x[1] = t.lo
            x[1, rng.integers(N)] = t.hi   # one dominant element
        problems.append(dict(x=x, table=table, x_signed=t.signed, stall=stall, seed=int(rng.integers(1 << 30))))
        types.append(t)
    results = rtl.run_softmaxes(problems, L=L, eb=eb, ob=ob, sim=sim)
    for prob, t, (p, cycles) in zip(problems, types, results):
        rows, N = prob["x"].shape
        label = f"{sim} L={L} EB={eb} OB={ob} {t} rows={rows} N={N}"
        want = ref.softmax(prob["x"], prob["table"], t, eb=eb, ob=ob)
        assert np.array_equal(p, want), f"{label}: probabilities differ"
        if prob["stall"] == 0.0:
            assert cycles == rtl.softmax_cycles(rows, N, L), f"{label}: cycles"


# ---------------------------------------------------------------------------
# LayerNorm core (§6)
# ---------------------------------------------------------------------------

LAYERNORM_CONFIGS = [  # (L, output bits)
    pytest.param(8, 8, id="L8-Y8"),
    pytest.param(3, 4, id="L3-Y4"),
]


@pytest.mark.rtl
@pytest.mark.parametrize("L, out_bits", LAYERNORM_CONFIGS)
def test_layernorm_core(sim, L, out_bits):
    """ref.layernorm == layernorm_core: full-range int16 rows (largest variance),
    small-variance rows, zero-variance rows with E = 0 (sigma clamped to 1) and E > 0,
    H = 1, H not a multiple of L, parameters from layernorm_params and arbitrary ones
    (|G| = 2^15 - 1, |B| = 2^31 - 1, S = 1 and 62), signed and unsigned outputs,
    several rows, stalls; cycles == rtl.layernorm_cycles in both of its regimes (row
    interval B = ceil(H/L) > 49 and 49 > B, their boundary B = 49, H < L, one row, many
    rows)."""
    rng = np.random.default_rng([L, out_bits, 3])

    def model_params(H: int, eps: float = 1e-5) -> ref.LayerNormParams:
        return ref.layernorm_params(rng.normal(1.0, 0.5, H), rng.normal(0.0, 0.5, H), eps, 0.01,
                                    4.0 / (1 << out_bits))

    def arbitrary_params(H: int, S: int) -> ref.LayerNormParams:
        G = rng.integers(-(2**15) + 1, 2**15, size=H)
        B = rng.integers(-(2**31) + 1, 2**31, size=H)
        G[0], B[0] = 2**15 - 1, -(2**31) + 1
        return ref.LayerNormParams(G=G, B=B, S=S, E=int(rng.integers(0, 2**40)))

    problems = []
    for H, rows, kind, params, y_signed, stall in [
        (3 * L + 2, 3, "full", None, True, 0.0),
        (2 * L, 2, "small", None, True, 0.0),
        (L + 1, 2, "equal", ref.LayerNormParams(G=np.full(L + 1, 300), B=np.arange(L + 1) * 2**20 - 2**22,
                                                 S=23, E=0), True, 0.0),
        (1, 3, "full", None, False, 0.0),
        (2 * L + 3, 2, "full", "S1", True, 0.0),
        (2 * L + 3, 2, "small", "S62", True, 0.0),
        (2 * L, 3, "full", None, False, 0.3),
        (L - 1, 1, "full", None, True, 0.0),             # H < L, one row
        (L + 1, 12, "full", None, True, 0.0),            # many rows, division-bound
        (48 * L - 1, 4, "full", None, False, 0.0),       # B = 48: still division-bound
        (49 * L, 3, "small", None, True, 0.0),           # B = 49: both bounds meet
        (52 * L + 1, 4, "full", "S62", True, 0.0),       # B = 53: input-bound
        (52 * L + 1, 3, "full", None, True, 0.3),        # input-bound, with stalls
    ]:
        if kind == "full":
            x = rng.integers(-(2**15), 2**15, size=(rows, H))
            x[0, ::2], x[0, 1::2] = -(2**15), 2**15 - 1  # the largest variance
        elif kind == "small":
            x = rng.integers(-3, 4, size=(rows, H)) + int(rng.integers(-1000, 1000))
        else:
            x = np.full((rows, H), int(rng.integers(-(2**15), 2**15)))
        if params is None:
            params = model_params(H)
        elif params == "S1":
            params = arbitrary_params(H, 1)
        elif params == "S62":
            params = arbitrary_params(H, 62)
        problems.append(dict(x=x, params=params, y_signed=y_signed, stall=stall, seed=int(rng.integers(1 << 30))))
    results = rtl.run_layernorms(problems, L=L, out_bits=out_bits, sim=sim)
    for prob, (y, cycles) in zip(problems, results):
        rows, H = prob["x"].shape
        label = f"{sim} L={L} Y={out_bits} rows={rows} H={H} S={prob['params'].S} E={prob['params'].E}"
        want = ref.layernorm(prob["x"], prob["params"], IntType(out_bits, prob["y_signed"]))
        assert np.array_equal(y, want), f"{label}: outputs differ"
        if prob["stall"] == 0.0:
            assert cycles == rtl.layernorm_cycles(rows, H, L), f"{label}: cycles"


def test_nonlinear_cycle_models():
    """softmax_core / layernorm_core formulas (docs/engine.md §4) at BERT sizes."""
    assert rtl.softmax_cycles(1, 128, 16) == 3 * 8 + 32 + 6
    assert rtl.softmax_cycles(128, 128, 16) == 3 * 8 + 38 + 127 * 41  # divider-bound back unit
    assert rtl.softmax_cycles(4, 256, 8) == 3 * 32 + 38 + 3 * 67       # input-bound front unit
    # LayerNorm, B = ceil(H/L): one row = input pass B + mean division 16 + mu*T 16 +
    # variance division 48 + isqrt 25 + normalise pass B + D_ln 34; rows follow every
    # max(B, 48 + 1) (input pass or the variance division with its handoff).
    # H=768, L=16: B=48, one row 96 + 16 + 16 + 48 + 25 + 34 = 235, then 127 x 49
    assert rtl.layernorm_cycles(1, 768, 16) == 235
    assert rtl.layernorm_cycles(128, 768, 16) == 235 + 127 * 49
    # H=1024, L=16: B=64 > 49, input-bound: 128 + 139 = 267, then 3 x 64
    assert rtl.layernorm_cycles(4, 1024, 16) == 267 + 3 * 64
    # H=3, L=16 (H < L): B=1, 2 + 139 = 141, then 9 x 49
    assert rtl.layernorm_cycles(10, 3, 16) == 141 + 9 * 49
