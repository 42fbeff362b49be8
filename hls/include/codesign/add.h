// codesign HLS kernel library: residual add (docs/arithmetic.md §7).
//
// Synthesizable Vitis HLS C++14, header only.
//
//   y = sat_Y(rshr(a * Ma + b * Mb, sh))
//
// A, B, Y: signed or unsigned IntT of 2..16 bits. Ma, Mb: unsigned
// multipliers of MBITS bits (add_params gives m = 16 by default, up to 24),
// sharing one shift sh (1..62 per the contract, a precondition), so the sum is
// rounded once. The sum is exact in ap_int<max(W_A, W_B) + MBITS + 1>, W_X
// being the width of X's numeric values (bits, +1 for unsigned).
#ifndef CODESIGN_ADD_H
#define CODESIGN_ADD_H

#include "types.h"

namespace codesign {

namespace detail {
template <class T>
struct ValueBits {  // width of the signed numeric value of a code of T
    static const int value = T::bits + (T::is_signed ? 0 : 1);
};
}  // namespace detail

// §7 one residual add; returns Y's numeric value.
template <class A, class B, class Y, int MBITS = 16>
typename Y::value_t add(typename A::storage a, typename B::storage b, const ap_uint<MBITS>& Ma,
                        const ap_uint<MBITS>& Mb, const ap_uint<6>& sh) {
#pragma HLS INLINE
    static_assert(A::bits >= 2 && A::bits <= 16, "codesign::add: inputs have 2..16 bits (docs/arithmetic.md §7)");
    static_assert(B::bits >= 2 && B::bits <= 16, "codesign::add: inputs have 2..16 bits (docs/arithmetic.md §7)");
    static_assert(Y::bits >= 2 && Y::bits <= 16, "codesign::add: outputs have 2..16 bits (docs/arithmetic.md §7)");
    static_assert(MBITS >= 1 && MBITS <= 24, "codesign::add: multipliers have at most 24 bits");
    const int WA = detail::ValueBits<A>::value, WB = detail::ValueBits<B>::value;
    const int WS = (WA > WB ? WA : WB) + MBITS + 1;
    const ap_int<WA + MBITS> pa = A::value(a) * Ma;  // exact products
    const ap_int<WB + MBITS> pb = B::value(b) * Mb;
    const ap_int<WS> s = ap_int<WS>(pa) + ap_int<WS>(pb);
    return sat<Y>(rshr(s, sh));
}

// §7 to the hardware word.
template <class A, class B, class Y, int MBITS = 16>
typename Y::storage add_code(typename A::storage a, typename B::storage b, const ap_uint<MBITS>& Ma,
                             const ap_uint<MBITS>& Mb, const ap_uint<6>& sh) {
#pragma HLS INLINE
    return Y::encode(add<A, B, Y, MBITS>(a, b, Ma, Mb, sh));
}

// §7 one row of N element pairs, PE lanes per cycle (N % PE == 0): N / PE
// cycles plus the pipeline depth.
template <class A, class B, class Y, int N, int MBITS = 16, int PE = 1>
void add_row(const typename A::storage a[N], const typename B::storage b[N], ap_uint<MBITS> Ma, ap_uint<MBITS> Mb,
             ap_uint<6> sh, typename Y::storage y[N]) {
#pragma HLS ARRAY_PARTITION variable = a cyclic factor = PE dim = 1
#pragma HLS ARRAY_PARTITION variable = b cyclic factor = PE dim = 1
#pragma HLS ARRAY_PARTITION variable = y cyclic factor = PE dim = 1
    static_assert(PE >= 1 && N % PE == 0, "codesign::add_row: N % PE must be 0");
add_row_loop:
    for (int i = 0; i < N / PE; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        for (int p = 0; p < PE; ++p) {
#pragma HLS UNROLL
            y[i * PE + p] = add_code<A, B, Y, MBITS>(a[i * PE + p], b[i * PE + p], Ma, Mb, sh);
        }
    }
}

}  // namespace codesign

#endif  // CODESIGN_ADD_H
