// codesign HLS kernel library: elementwise lookup tables (docs/arithmetic.md §4).
//
// Synthesizable Vitis HLS C++14, header only.
//
//   y = table[idx(q)],  idx(q) = the bit pattern of q's hardware word
//
// which is exactly the contract's index: q for an unsigned X, q mod 2^b (two's
// complement pattern) for a signed X, (q + 1) / 2 for a bipolar X (its stored
// bit). X: IntT of 1..8 bits; Y: IntT of 1..16 bits (bipolar allowed). The
// table holds 2^b hardware words of Y (bipolar X: 2); in hardware it is a ROM
// (declare the caller's table `static const` to get one).
#ifndef CODESIGN_LUT_H
#define CODESIGN_LUT_H

#include "types.h"

namespace codesign {

// Number of entries of a table indexed by X codes (§4).
template <class X>
struct LutSize {
    static_assert(X::bits >= 1 && X::bits <= 8, "codesign::lut: inputs have 1..8 bits (docs/arithmetic.md §4)");
    static const int value = 1 << X::bits;
};

// §4 lookup of one code; returns Y's numeric value.
template <class X, class Y>
typename Y::value_t lut(typename X::storage q, const typename Y::storage table[LutSize<X>::value]) {
#pragma HLS INLINE
    static_assert(LutSize<X>::value == (1 << X::bits), "");  // instantiates LutSize's input-width check
    static_assert(Y::bits >= 1 && Y::bits <= 16, "codesign::lut: outputs have 1..16 bits (docs/arithmetic.md §4)");
    const ap_uint<X::bits> idx = q;  // the word's bit pattern
    return Y::value(table[idx.to_uint()]);
}

// §4 lookup to the hardware word.
template <class X, class Y>
typename Y::storage lut_code(typename X::storage q, const typename Y::storage table[LutSize<X>::value]) {
#pragma HLS INLINE
    static_assert(LutSize<X>::value == (1 << X::bits), "");  // instantiates LutSize's input-width check
    static_assert(Y::bits >= 1 && Y::bits <= 16, "codesign::lut: outputs have 1..16 bits (docs/arithmetic.md §4)");
    const ap_uint<X::bits> idx = q;
    return table[idx.to_uint()];
}

// §4 one row of N codes, one ROM read per cycle: N cycles plus the depth.
template <class X, class Y, int N>
void lut_row(const typename X::storage q[N], const typename Y::storage table[LutSize<X>::value],
             typename Y::storage y[N]) {
lut_row_loop:
    for (int i = 0; i < N; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        y[i] = lut_code<X, Y>(q[i], table);
    }
}

}  // namespace codesign

#endif  // CODESIGN_LUT_H
