// codesign HLS kernel library: quantize float32 -> integer codes and dequantize
// codes -> float32 at the graph boundaries (docs/arithmetic.md §1).
//
// Synthesizable Vitis HLS C++14, header only. Every float operation below is a
// single IEEE-754 binary32 operation exactly as the contract writes it; never
// compile this with -ffast-math (or anything that enables FMA contraction,
// reciprocal division or flush-to-zero), or the C simulation stops being the
// contract.
//
// Scalar kernels return the code's numeric value (T::value_t); the row kernels
// write hardware words (T::storage, a bipolar code is one bit).
#ifndef CODESIGN_QUANT_H
#define CODESIGN_QUANT_H

#include "types.h"

namespace codesign {

// QONNX rounding modes (§1). ROUND and HALF_EVEN are the same mode.
enum class Rounding { ROUND, HALF_EVEN, FLOOR, CEIL, DOWN, UP, HALF_UP, HALF_DOWN };

namespace detail {

// R(u) for a binary32 u with |u| <= 2^16 (§1 table), as an int.
//
// Decomposition: a = |u| (exact), n = (int)a = floor(a) (exact: a < 2^31),
// frac = a - n. frac is exact: for a < 1 it is a itself; for a >= 1 both a and
// n are multiples of ulp(a) and n <= a < 2n (Sterbenz), so a - n is
// representable. FLOOR/CEIL/DOWN/UP/HALF_EVEN are exact functions of
// (sign, n, frac). HALF_UP and HALF_DOWN evaluate fl32(|u| +- 0.5) exactly as
// the contract (QONNX) does, so the binary32 rounding of that addition is
// reproduced, e.g. HALF_UP(0.49999997f) = 1 because fl32(0.49999997 + 0.5) = 1.
template <Rounding R>
int round_f32(float u) {
#pragma HLS INLINE
    const bool neg = u < 0.0f;
    const float a = neg ? -u : u;
    const int n = (int)a;
    const float frac = a - (float)n;
    const bool has_frac = frac > 0.0f;
    int m;  // magnitude of the result (sign applied below)
    switch (R) {
        case Rounding::ROUND:
        case Rounding::HALF_EVEN:
            m = n + ((frac > 0.5f || (frac == 0.5f && (n & 1))) ? 1 : 0);
            break;
        case Rounding::FLOOR:
            m = n + ((neg && has_frac) ? 1 : 0);
            break;
        case Rounding::CEIL:
            m = n + ((!neg && has_frac) ? 1 : 0);
            break;
        case Rounding::DOWN:
            m = n;
            break;
        case Rounding::UP:
            m = n + (has_frac ? 1 : 0);
            break;
        case Rounding::HALF_UP: {
            const float t = a + 0.5f;  // fl32(|u| + 0.5), t >= 0.5
            m = (int)t;                // floor (t > 0)
            break;
        }
        case Rounding::HALF_DOWN:
        default: {
            const float t = a - 0.5f;  // fl32(|u| - 0.5), t >= -0.5
            int c = (int)t;            // trunc; ceil below
            if ((float)c < t) c += 1;
            m = c;                     // t in [-0.5, 0] gives 0
            break;
        }
    }
    return neg ? -m : m;
}

}  // namespace detail

// §1 quantize: q = R(clamp(fl32(x / s), lo_T, hi_T)); bipolar T: q = (fl32(x / s) >= 0) ? +1 : -1.
// s > 0 (finite) is a precondition. T: IntT<BITS, SIGNED, NARROW> with BITS <= 16.
template <class T, Rounding R = Rounding::ROUND>
typename T::value_t quantize(float x, float s) {
#pragma HLS INLINE
    static_assert(T::bits >= 1 && T::bits <= 16, "codesign::quantize: 1..16-bit code types (docs/arithmetic.md §1)");
    typedef typename T::value_t value_t;
    const float t = x / s;  // one correctly rounded binary32 division, not x * (1/s)
    if (T::bipolar) return value_t(t >= 0.0f ? 1 : -1);  // -0.0 -> +1
    const float lo = (float)T::LO;  // exact: |LO|, |HI| <= 2^16
    const float hi = (float)T::HI;
    float u = t;
    if (u < lo) u = lo;  // clamp before rounding (QONNX's order; §1)
    if (u > hi) u = hi;
    return value_t(detail::round_f32<R>(u));
}

// §1 quantize to the hardware word (a bipolar code becomes its bit).
template <class T, Rounding R = Rounding::ROUND>
typename T::storage quantize_code(float x, float s) {
#pragma HLS INLINE
    return T::encode(quantize<T, R>(x, s));
}

// §1 quantize, one row of C elements with one scale (per tensor), one element per cycle.
template <class T, Rounding R, int C>
void quantize_row(const float x[C], float s, typename T::storage q[C]) {
quantize_row_pt:
    for (int c = 0; c < C; ++c) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        q[c] = quantize_code<T, R>(x[c], s);
    }
}

// §1 quantize, one row of C elements with a scale per channel (s[c] for x[c]).
template <class T, Rounding R, int C>
void quantize_row(const float x[C], const float s[C], typename T::storage q[C]) {
quantize_row_pc:
    for (int c = 0; c < C; ++c) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        q[c] = quantize_code<T, R>(x[c], s[c]);
    }
}

// §1 dequantize: fl32(q * s). q converts to binary32 exactly (|q| <= 2^24 for
// the <= 24-bit code types accepted here), so the product is the single
// rounding of the exact q*s.
template <class T>
float dequantize(typename T::storage q, float s) {
#pragma HLS INLINE
    static_assert(T::bits >= 1 && T::bits <= 24,
                  "codesign::dequantize: codes of at most 24 bits convert to binary32 exactly (docs/arithmetic.md §1)");
    const float qf = (float)T::value(q).to_int();
    return qf * s;
}

// §1 dequantize, one row of C codes with one scale (per tensor).
template <class T, int C>
void dequantize_row(const typename T::storage q[C], float s, float y[C]) {
dequantize_row_pt:
    for (int c = 0; c < C; ++c) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        y[c] = dequantize<T>(q[c], s);
    }
}

// §1 dequantize, one row of C codes with a scale per channel.
template <class T, int C>
void dequantize_row(const typename T::storage q[C], const float s[C], float y[C]) {
dequantize_row_pc:
    for (int c = 0; c < C; ++c) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        y[c] = dequantize<T>(q[c], s[c]);
    }
}

}  // namespace codesign

#endif  // CODESIGN_QUANT_H
