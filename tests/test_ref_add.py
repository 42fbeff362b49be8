"""§7 residual add of the reference against exact rational arithmetic.

``add_params(s_a, s_b, s_y)`` + ``add`` compute ``sat_Y(rshr(a·M_a + b·M_b, sh))``;
the derivation here is the real value ``x = a·s_a/s_y + b·s_b/s_y`` as a
``fractions.Fraction`` (exact, from the float64 scales), rounded half up with
``floor(x + 1/2)`` and clamped.

* Power-of-two ratios: ``M_a·2^-sh`` and ``M_b·2^-sh`` equal the ratios exactly
  (provided the smaller ratio is >= 2^-sh, i.e. it has an integer multiplier),
  so the integer add equals the exact rounding: ``==``.
* Other ratios: ``|M_x − r_x·2^sh| <= 1/2`` (checked), so the integer
  pre-rounding value ``x'`` differs from ``x`` by at most
  ``δ = (|a| + |b|)/2^(sh+1)``. Then (i) ``|floor(x'+1/2) − floor(x+1/2)| <=
  ceil(δ)`` (an integer strictly less than δ + 1), clamping being
  non-expansive; (ii) when no half-integer lies within δ of ``x`` the two are
  equal. For 8-bit inputs and ratios within [2^-6, 2^6] (sh >= 9), δ < 1/2: the
  result is within 1 LSB everywhere and exact away from near-ties.
"""
import math
from fractions import Fraction

import numpy as np
from hypothesis import event, given
from hypothesis import strategies as st

from codesign.sim import reference as ref
from codesign.sim.reference import IntType


def rng_codes(rng, t: IntType, n):
    lo, hi = t.lo, t.hi
    u = rng.integers(lo, hi + 1, size=n)
    return np.where(rng.random(n) < 0.2, rng.choice(np.array([lo, hi]), size=n), u)


def exact_half_up(x: Fraction) -> int:
    return math.floor(x + Fraction(1, 2))


types16 = st.builds(IntType, st.integers(2, 16), st.booleans(), st.booleans())


@given(E=st.integers(-20, 14), d=st.integers(0, 15), a_big=st.booleans(), ey=st.integers(-12, 4),
       a_t=types16, b_t=types16, y_t=types16, seed=st.integers(0, 2**32 - 1))
def test_add_power_of_two_ratios_exact(E, d, a_big, ey, a_t, b_t, y_t, seed):
    # r_big = 2^E: dyadic gives M = 2^15, sh = 15 - E (>= 1 needs E <= 14); r_small =
    # 2^(E-d) has the multiplier r_small·2^sh = 2^(15-d), an integer for d <= 15.
    ea, eb = (E, E - d) if a_big else (E - d, E)
    s_a, s_b, s_y = 2.0 ** (ea + ey), 2.0 ** (eb + ey), 2.0**ey
    Ma, Mb, sh = ref.add_params(s_a, s_b, s_y)
    assert sh >= 1
    assert Fraction(Ma, 2**sh) == Fraction(2) ** ea and Fraction(Mb, 2**sh) == Fraction(2) ** eb
    rng = np.random.default_rng(seed)
    n = 64
    a, b = rng_codes(rng, a_t, n), rng_codes(rng, b_t, n)
    y = ref.add(a, b, Ma, Mb, sh, a_t, b_t, y_t)
    ra, rb = Fraction(s_a) / Fraction(s_y), Fraction(s_b) / Fraction(s_y)
    exp = [min(max(exact_half_up(int(ai) * ra + int(bi) * rb), y_t.lo), y_t.hi) for ai, bi in zip(a, b)]
    assert y.tolist() == exp
    ties = sum((int(ai) * ra + int(bi) * rb) % 1 == Fraction(1, 2) for ai, bi in zip(a, b))
    event("ties present" if ties else "no ties")


def test_add_hand_cases():
    i8 = IntType(8, True)
    # s_a = s_b = s_y/2: y = round_half_up((a + b)/2): r = 1/2 -> M = 2^15, sh = 16
    Ma, Mb, sh = ref.add_params(0.5, 0.5, 1.0)
    assert (Ma, Mb, sh) == (2**15, 2**15, 16)
    a = np.array([1, -1, 3, -3, 127, -128, 100])
    b = np.array([0, 0, 0, 0, 127, -128, 100])
    # (1)/2 = .5 -> 1; -.5 -> 0; 1.5 -> 2; -1.5 -> -1; 127 -> 127; -128; 100
    assert ref.add(a, b, Ma, Mb, sh, i8, i8, i8).tolist() == [1, 0, 2, -1, 127, -128, 100]
    # s_a = 1, s_b = 1/4, s_y = 1: r_a = 1 (M = 2^15, sh = 15), r_b -> 2^13
    assert ref.add_params(1.0, 0.25, 1.0) == (2**15, 2**13, 15)
    # saturation: 127 + 127 at s_y = s_a = s_b -> 254 -> 127; -128 - 128 -> -128; int16 output keeps it
    Ma, Mb, sh = ref.add_params(1.0, 1.0, 1.0)
    assert ref.add([127, -128], [127, -128], Ma, Mb, sh, i8, i8, i8).tolist() == [127, -128]
    assert ref.add([127, -128], [127, -128], Ma, Mb, sh, i8, i8, IntType(16, True)).tolist() == [254, -256]
    # unsigned output clamps negatives to 0
    assert ref.add([-5, 5], [-5, 5], Ma, Mb, sh, i8, i8, IntType(8, False)).tolist() == [0, 10]


@given(la=st.floats(-6, 6), lb=st.floats(-6, 6), ly=st.floats(-10, 3),
       a_t=st.builds(IntType, st.integers(2, 8), st.booleans(), st.booleans()),
       b_t=st.builds(IntType, st.integers(2, 8), st.booleans(), st.booleans()),
       y_t=types16, seed=st.integers(0, 2**32 - 1))
def test_add_general_ratios_within_one_lsb(la, lb, ly, a_t, b_t, y_t, seed):
    s_y = 2.0**ly
    s_a, s_b = s_y * 2.0**la, s_y * 2.0**lb
    Ma, Mb, sh = ref.add_params(s_a, s_b, s_y)
    ra, rb = Fraction(s_a / s_y), Fraction(s_b / s_y)  # the float64 ratios the op is defined on
    # multipliers: shared shift, each within 1/2 of r·2^sh; the larger one normalised
    assert sh >= 9
    assert abs(Ma - ra * 2**sh) <= Fraction(1, 2) and abs(Mb - rb * 2**sh) <= Fraction(1, 2)
    assert 2**15 <= max(Ma, Mb) < 2**16
    rng = np.random.default_rng(seed)
    a, b = rng_codes(rng, a_t, 128), rng_codes(rng, b_t, 128)
    y = ref.add(a, b, Ma, Mb, sh, a_t, b_t, y_t)
    near = 0
    for ai, bi, yi in zip(a.tolist(), b.tolist(), y.tolist()):
        x = ai * ra + bi * rb
        e = min(max(exact_half_up(x), y_t.lo), y_t.hi)
        delta = Fraction(abs(ai) + abs(bi), 2 ** (sh + 1))
        assert delta < Fraction(1, 2)
        assert abs(yi - e) <= 1
        dist = abs((x - Fraction(1, 2)) - round(x - Fraction(1, 2)))  # distance to the nearest half-integer
        if dist > delta:
            assert yi == e
        else:
            near += 1
    event("near-ties present" if near else "no near-ties")
