// codesign HLS kernel library: integer code types and the contract's primitives (§0).
//
// docs/arithmetic.md is the specification; every function here cites its section.
// Synthesizable Vitis HLS C++14: static sizes, no dynamic memory, no recursion.
#ifndef CODESIGN_TYPES_H
#define CODESIGN_TYPES_H

#include <ap_int.h>

namespace codesign {

// ---------------------------------------------------------------------------
// Trip counting for the cost model. Every pipelined (II=1) loop body of the
// kernel library calls CODESIGN_TRIP() once per iteration. In C-simulation
// this counts the iterations, which tests compare with the cycle formulas of
// codesign.accel.ops (the cost model); in synthesis it expands to nothing.
// ---------------------------------------------------------------------------
#ifndef __SYNTHESIS__
inline unsigned long long& csim_trips() {
    static unsigned long long n = 0;
    return n;
}
#define CODESIGN_TRIP() (++::codesign::csim_trips())
#else
#define CODESIGN_TRIP() ((void)0)
#endif

// Small helpers that g++ must inline for C-simulation to run at a useful speed
// (Vitis HLS inlines them through their INLINE pragmas anyway).
#if defined(__GNUC__) && !defined(__SYNTHESIS__)
#define CODESIGN_ALWAYS_INLINE __attribute__((always_inline)) inline
#else
#define CODESIGN_ALWAYS_INLINE inline
#endif

// ---------------------------------------------------------------------------
// Code types (§0). IntT<BITS, SIGNED, NARROW> describes one integer code type:
//   storage  the hardware word (ap_int / ap_uint; a bipolar value is one bit)
//   value_t  a signed type wide enough for every numeric value of the type
//   LO, HI   the range (QONNX min_int / max_int)
//   value()  numeric value of a stored word; encode() the reverse.
// A 1-bit signed type is bipolar {-1, +1}, stored as the bit (v + 1) / 2.
// ---------------------------------------------------------------------------
template <int BITS, bool SIGNED, bool NARROW = false>
struct IntT {
    static_assert(BITS >= 2 && BITS <= 32, "codesign: signed code types have 2..32 bits (1 bit is bipolar)");
    typedef ap_int<BITS> storage;
    typedef ap_int<BITS> value_t;
    static const int bits = BITS;
    static const bool is_signed = true;
    static const bool bipolar = false;
    static const long long LO = -(1LL << (BITS - 1)) + (NARROW ? 1 : 0);
    static const long long HI = (1LL << (BITS - 1)) - 1;
    CODESIGN_ALWAYS_INLINE static value_t value(storage s) { return s; }
    static storage encode(value_t v) { return v; }
};

template <int BITS, bool NARROW>
struct IntT<BITS, false, NARROW> {
    static_assert(BITS >= 1 && BITS <= 32, "codesign: unsigned code types have 1..32 bits");
    typedef ap_uint<BITS> storage;
    typedef ap_int<BITS + 1> value_t;
    static const int bits = BITS;
    static const bool is_signed = false;
    static const bool bipolar = false;
    static const long long LO = 0;
    static const long long HI = (1LL << BITS) - 1 - (NARROW ? 1 : 0);
    CODESIGN_ALWAYS_INLINE static value_t value(storage s) { return s; }
    static storage encode(value_t v) { return v; }
};

template <bool NARROW>
struct IntT<1, true, NARROW> {  // bipolar
    typedef ap_uint<1> storage;
    typedef ap_int<2> value_t;
    static const int bits = 1;
    static const bool is_signed = true;
    static const bool bipolar = true;
    static const long long LO = -1;
    static const long long HI = 1;
    CODESIGN_ALWAYS_INLINE static value_t value(storage s) { return s ? value_t(1) : value_t(-1); }
    static storage encode(value_t v) { return v > 0 ? storage(1) : storage(0); }
};

// ---------------------------------------------------------------------------
// Compile-time helpers.
// ---------------------------------------------------------------------------

// Smallest two's-complement width holding [LO, HI] (LO <= 0 <= HI assumed by callers).
template <long long LO, long long HI>
struct bits_for {
    static const int value = (LO >= -(1LL << 62) && HI <= (1LL << 62) - 1)
        ? 1 + (((HI > -LO - 1 ? HI : -LO - 1) > 0)
                   ? 64 - __builtin_clzll((unsigned long long)(HI > -LO - 1 ? HI : -LO - 1))
                   : 0)
        : 64;
};

// Accumulator width for K products of types A and W plus a bias in [B_LO, B_HI] (§2).
template <class A, class W, int K, long long B_LO = 0, long long B_HI = 0>
struct AccBits {
    static const long long c0 = A::LO * W::LO, c1 = A::LO * W::HI, c2 = A::HI * W::LO, c3 = A::HI * W::HI;
    static const long long p_lo_ = c0 < c1 ? (c0 < c2 ? (c0 < c3 ? c0 : c3) : (c2 < c3 ? c2 : c3))
                                           : (c1 < c2 ? (c1 < c3 ? c1 : c3) : (c2 < c3 ? c2 : c3));
    static const long long p_hi_ = c0 > c1 ? (c0 > c2 ? (c0 > c3 ? c0 : c3) : (c2 > c3 ? c2 : c3))
                                           : (c1 > c2 ? (c1 > c3 ? c1 : c3) : (c2 > c3 ? c2 : c3));
    static const long long p_lo = p_lo_ < 0 ? p_lo_ : 0;
    static const long long p_hi = p_hi_ > 0 ? p_hi_ : 0;
    static const long long lo = (long long)K * p_lo + B_LO;
    static const long long hi = (long long)K * p_hi + B_HI;
    static const int value = bits_for<lo, hi>::value;
    static_assert(value <= 48, "codesign: accumulator wider than 48 bits (docs/arithmetic.md §2)");
};

// ---------------------------------------------------------------------------
// Primitives (§0).
// ---------------------------------------------------------------------------

// Saturate a signed value into the range of code type T, returning T's numeric value.
template <class T, int W>
typename T::value_t sat(const ap_int<W>& v) {
#pragma HLS INLINE
    const ap_int<W + 34> x = v;
    if (x < ap_int<W + 34>(T::LO)) return typename T::value_t(T::LO);
    if (x > ap_int<W + 34>(T::HI)) return typename T::value_t(T::HI);
    return typename T::value_t(v);
}

// Rounding right shift, ties toward +inf: floor((v + 2^(s-1)) / 2^s); s = 0 returns v.
// s is at most 62 (§3). The addition is done in max(W, 62) + 2 bits so that the
// rounding constant 2^(s-1) is exact even when s exceeds v's width; the result
// fits W + 1 bits (|result| <= |v|/2 + 1 for s >= 1).
template <int W>
ap_int<W + 1> rshr(const ap_int<W>& v, ap_uint<6> s) {
#pragma HLS INLINE
    const int WI = (W > 62 ? W : 62) + 2;
    if (s == 0) return ap_int<W + 1>(v);
    ap_int<WI> x = v;
    ap_int<WI> half = ap_int<WI>(1) << (s - 1);
    return ap_int<W + 1>((x + half) >> s);  // ap_int >> is arithmetic: floor division by 2^s
}

// Floor division for a positive divisor (C++ '/' truncates toward zero).
template <int WN, int WD>
ap_int<WN> floor_div(const ap_int<WN>& n, const ap_int<WD>& d) {
#pragma HLS INLINE
    ap_int<WN> q = n / d;
    ap_int<WN> r = n - q * d;
    if (r != 0 && n < 0) q -= 1;
    return q;
}

}  // namespace codesign

#endif  // CODESIGN_TYPES_H
