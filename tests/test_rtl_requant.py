"""The requantizer RTL (sim/rtl/requant.v) == codesign.sim.reference.requant.

y = sat_Y(rshr(acc * M, sh)) (docs/arithmetic.md §3) for every shift 0..62, both output
signednesses (int / uint OUT_BITS), on:

* corners: acc in {min, min + 1, -1, 0, 1, max} x M in {0, 1, 2^(m-1), 2^m - 1};
* products just around each rounding tie and each clamp boundary, p = c*2^sh + e with
  c in {lo - 1, lo, -1, 0, hi, hi + 1} and e in {-2^(sh-1) - 1, -2^(sh-1), -2^(sh-1) + 1,
  2^(sh-1) - 1, 2^(sh-1)} (written as acc * 2^j exactly when the product is reachable);
* random operands (acc of random bit length and sign, M uniform).

The vectors are shuffled (the shift changes every cycle) and ``ce`` is low on random
cycles; the expected output stream comes from a two-register pipeline model of the
module's contract (sampled at E, y valid after the next enabled edge), independent of
the RTL. Parameter sets: the engine's (ACC_BITS 32, MBITS 16, OUT_BITS 8), OUT_BITS 2
and 16, a narrow accumulator (one multiplier, no split) and the widest product (62 bits).
Verilator and Icarus Verilog (when installed) through cocotb (sim/cocotb/tb_requant.py).
"""
from __future__ import annotations

import numpy as np
import pytest

from codesign.sim import reference as ref
from codesign.sim import rtl
from codesign.sim.reference import IntType


#: (ACC_BITS, MBITS, OUT_BITS, random vectors per (shift, signedness))
CONFIGS = [(32, 16, 8, 60), (32, 16, 2, 12), (32, 16, 16, 12), (12, 16, 8, 12), (46, 16, 5, 12)]




def _vectors(acc_bits: int, mbits: int, out_bits: int, n_random: int, seed: int):
    """(acc, M, sh, y_signed) arrays: corners, boundary/tie products, random operands."""
    rng = np.random.default_rng(seed)
    amin, amax, mmax = -(1 << (acc_bits - 1)), (1 << (acc_bits - 1)) - 1, (1 << mbits) - 1
    rows = []
    for sh in range(63):
        for ys in (0, 1):
            t = IntType(out_bits, bool(ys))
            for a in (amin, amin + 1, -1, 0, 1, amax):
                for m in (0, 1, 1 << (mbits - 1), mmax):
                    rows.append((a, m, sh, ys))
            half = 1 << (sh - 1) if sh else 0
            offsets = (-half - 1, -half, -half + 1, half - 1, half) if sh else (-1, 0, 1)
            for c in (t.lo - 1, t.lo, -1, 0, t.hi, t.hi + 1):
                for e in offsets:
                    p = c * (1 << sh) + e
                    for j in range(mbits):  # p = acc * 2^j, the smallest j that fits acc
                        if p % (1 << j) == 0 and amin <= p >> j <= amax:
                            rows.append((p >> j, 1 << j, sh, ys))
                            break
            for _ in range(n_random):
                bits = int(rng.integers(1, acc_bits + 1))
                a = int(rng.integers(-(1 << (bits - 1)), 1 << (bits - 1)))
                m = int(rng.integers(0, mmax + 1))
                rows.append((a, m, sh, ys))
    rows = [rows[i] for i in rng.permutation(len(rows))]
    acc, M, sh, ys = (np.array(col, dtype=np.int64) for col in zip(*rows))
    return acc, M, sh, ys


def _expected(acc, M, sh, ys, acc_bits: int, mbits: int, out_bits: int) -> np.ndarray:
    out = np.empty_like(acc)
    for s in (0, 1):
        sel = ys == s
        out[sel] = ref.requant(acc[sel], M[sel], sh[sel], IntType(out_bits, bool(s)),
                               acc_bits_max=acc_bits, m=mbits)
    return out


def _check_stream(got_raw, want, vectors, ce, out_bits: int) -> int:
    """Compare the sampled y stream with a two-register pipeline model; returns how many
    vectors were checked. got_raw[t] is y before cycle t's edge (got_raw[n]: after the
    last edge); on an enabled edge y takes the value of the vector in R1 and R1 the
    vector driven in that cycle. ``vectors``: (acc, M, sh, y_signed) for the messages."""
    acc, M, sh, ys = vectors
    r1 = None   # index of the vector in R1
    y = None    # index of the vector whose result y holds
    checked = set()
    for t in range(len(ce) + 1):
        if y is not None:
            raw = got_raw[t]
            assert raw >= 0, f"cycle {t}: y is not a resolvable value"
            val = raw - (1 << out_bits) if ys[y] and raw >> (out_bits - 1) else raw
            assert val == want[y], (f"cycle {t}: vector {y} (acc={int(acc[y])}, M={int(M[y])}, "
                                    f"sh={int(sh[y])}, y_signed={int(ys[y])}): RTL {val}, reference {int(want[y])}")
            checked.add(y)
        if t < len(ce) and ce[t]:
            y, r1 = r1, t
    return len(checked)


@pytest.mark.rtl
@pytest.mark.parametrize("acc_bits,mbits,out_bits,n_random", CONFIGS,
                         ids=[f"A{a}_M{m}_Y{y}" for a, m, y, _ in CONFIGS])
def test_requant_rtl(sim, acc_bits, mbits, out_bits, n_random):
    seed = acc_bits * 1000 + out_bits
    acc, M, sh, ys = _vectors(acc_bits, mbits, out_bits, n_random, seed)
    want = _expected(acc, M, sh, ys, acc_bits, mbits, out_bits)
    # every value reaches the saturation and rounding paths of both signednesses
    assert (want == (1 << out_bits) - 1).any() and (want == -(1 << (out_bits - 1))).any()
    rng = np.random.default_rng(seed + 1)
    n = len(acc)
    ce = (rng.random(n) >= 0.1).astype(np.int64)
    # two enabled flush cycles (zero operands) push the last vectors through both registers
    acc, M, sh, ys = (np.concatenate([x, [0, 0]]) for x in (acc, M, sh, ys))
    want = np.concatenate([want, [0, 0]])
    ce = np.concatenate([ce, [1, 1]])
    spec = {"acc": acc.tolist(), "mult": M.tolist(), "shift": sh.tolist(), "y_signed": ys.tolist(),
            "ce": ce.tolist()}
    out = rtl.run_cocotb(sim, "requant", ["requant.v"], "tb_requant", inputs=spec,
                         parameters={"ACC_BITS": acc_bits, "MBITS": mbits, "OUT_BITS": out_bits})
    got = out["y"]
    assert len(got) == len(ce) + 1
    checked = _check_stream(got, want, (acc, M, sh, ys), ce, out_bits)
    # every vector driven on an enabled edge (the last one excepted: it is still in R1)
    assert checked == int(ce.sum()) - 1
