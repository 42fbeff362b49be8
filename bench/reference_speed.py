"""Speed of the numpy integer reference against its peers, measured in the same run.

    python -m codesign.bench.reference_speed [--reps N]

The reference multiplies integer codes as float64 (exact while every partial
sum stays below 2^52, docs/arithmetic.md §2) because numpy has no integer BLAS.
This prints, for BERT-shaped layers, the time of ``reference.matmul`` next to
the plain int64 ``np.matmul`` it replaces, checks that both give identical
integers, and reports the ratio. It also times the nonlinear ops on a BERT-base
sized activation (128 tokens x 768, 12 heads x 128 x 128 attention scores).
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from codesign.sim import reference as R


def _best(fn, reps: int) -> float:
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=3, help="repetitions; the best time is reported")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    u8, i4, i8 = R.IntType(8, False), R.IntType(4, True), R.IntType(8, True)

    print("matmul (BERT-base, seq 128): reference float64 path vs int64 np.matmul")
    print(f"{'layer':<22}{'M x K x N':>20}{'reference ms':>15}{'int64 ms':>12}{'speed-up':>10}")
    for name, (m, k, n) in {"attention projection": (128, 768, 768), "FFN up": (128, 768, 3072),
                            "FFN down": (128, 3072, 768)}.items():
        a = rng.integers(0, 256, (m, k))
        w = rng.integers(-8, 8, (k, n))
        ref = R.matmul(a, w, a_type=u8, w_type=i4)
        peer = np.matmul(a, w)
        if not np.array_equal(ref, peer):
            raise SystemExit(f"{name}: reference and int64 matmul disagree")
        t_ref = _best(lambda: R.matmul(a, w, a_type=u8, w_type=i4), args.reps)
        t_int = _best(lambda: np.matmul(a, w), args.reps)
        print(f"{name:<22}{f'{m}x{k}x{n}':>20}{t_ref * 1e3:>15.1f}{t_int * 1e3:>12.1f}{t_int / t_ref:>9.1f}x")

    x = rng.integers(-128, 128, (12, 128, 128))
    table = R.softmax_table(i8, 0.05)
    t = _best(lambda: R.softmax(x, table, i8), args.reps)
    print(f"softmax 12x128x128: {t * 1e3:.1f} ms")
    h = rng.integers(-(2**15), 2**15, (128, 768))
    p = R.layernorm_params(np.ones(768), np.zeros(768), 1e-12, 1e-3, 0.05)
    t = _best(lambda: R.layernorm(h, p), args.reps)
    print(f"layernorm 128x768: {t * 1e3:.1f} ms")
    g = R.lut_table("gelu", i8, 0.05, i8, 0.05)
    q = rng.integers(-128, 128, (128, 3072))
    t = _best(lambda: R.lut(q, g, i8), args.reps)
    print(f"gelu lut 128x3072: {t * 1e3:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
