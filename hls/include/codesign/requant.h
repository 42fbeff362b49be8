// codesign HLS kernel library: requantization with a dyadic multiplier
// (docs/arithmetic.md §3).
//
// Synthesizable Vitis HLS C++14, header only.
//
//   y = sat_Y(rshr(acc * M, sh))
//
// acc: ap_int<W_ACC> accumulator (Mvau<...>::acc_t); M: unsigned multiplier of
// MBITS bits (dyadic(r, m) gives M < 2^m, m = 16 by default, up to 24); sh: the
// shift, 0..62 (a precondition: a 6-bit port can carry 63). Y: signed or
// unsigned IntT of 2..16 bits (narrow allowed; an unsigned Y is a fused ReLU).
// The product is formed in ap_int<W_ACC + MBITS + 1> (§3), exact because the
// contract requires W_ACC + m <= 62.
#ifndef CODESIGN_REQUANT_H
#define CODESIGN_REQUANT_H

#include "types.h"

namespace codesign {

// §3 requant of one value; returns Y's numeric value.
template <int W_ACC, class Y, int MBITS = 16>
typename Y::value_t requant(const ap_int<W_ACC>& acc, const ap_uint<MBITS>& M, const ap_uint<6>& sh) {
#pragma HLS INLINE
    static_assert(W_ACC >= 1, "codesign::requant: W_ACC must be >= 1");
    static_assert(MBITS >= 1 && MBITS <= 24, "codesign::requant: multipliers have at most 24 bits (docs/arithmetic.md §3)");
    static_assert(W_ACC + MBITS <= 62, "codesign::requant: W_acc + m must be <= 62 (docs/arithmetic.md §3)");
    static_assert(Y::bits >= 2 && Y::bits <= 16 && !Y::bipolar,
                  "codesign::requant: outputs are 2..16-bit signed/unsigned types (1-bit outputs use thresholds, §8)");
    const ap_int<W_ACC + MBITS + 1> prod = acc * M;  // exact: |acc * M| < 2^(W_ACC - 1 + MBITS)
    return sat<Y>(rshr(prod, sh));
}

// §3 requant to the hardware word.
template <int W_ACC, class Y, int MBITS = 16>
typename Y::storage requant_code(const ap_int<W_ACC>& acc, const ap_uint<MBITS>& M, const ap_uint<6>& sh) {
#pragma HLS INLINE
    return Y::encode(requant<W_ACC, Y, MBITS>(acc, M, sh));
}

// §3 one row of N accumulators with one (M, sh) for the tensor. PE lanes per
// cycle (N % PE == 0): N / PE cycles plus the pipeline depth.
template <int W_ACC, class Y, int N, int MBITS = 16, int PE = 1>
void requant_row(const ap_int<W_ACC> acc[N], ap_uint<MBITS> M, ap_uint<6> sh, typename Y::storage y[N]) {
#pragma HLS ARRAY_PARTITION variable = acc cyclic factor = PE dim = 1
#pragma HLS ARRAY_PARTITION variable = y cyclic factor = PE dim = 1
    static_assert(PE >= 1 && N % PE == 0, "codesign::requant_row: N % PE must be 0");
requant_row_pt:
    for (int i = 0; i < N / PE; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        for (int p = 0; p < PE; ++p) {
#pragma HLS UNROLL
            y[i * PE + p] = requant_code<W_ACC, Y, MBITS>(acc[i * PE + p], M, sh);
        }
    }
}

// §3 one row of N accumulators with a multiplier and shift per channel
// (M[n], sh[n] for acc[n]). PE lanes per cycle: N / PE cycles plus the depth.
template <int W_ACC, class Y, int N, int MBITS = 16, int PE = 1>
void requant_row(const ap_int<W_ACC> acc[N], const ap_uint<MBITS> M[N], const ap_uint<6> sh[N],
                 typename Y::storage y[N]) {
#pragma HLS ARRAY_PARTITION variable = acc cyclic factor = PE dim = 1
#pragma HLS ARRAY_PARTITION variable = M cyclic factor = PE dim = 1
#pragma HLS ARRAY_PARTITION variable = sh cyclic factor = PE dim = 1
#pragma HLS ARRAY_PARTITION variable = y cyclic factor = PE dim = 1
    static_assert(PE >= 1 && N % PE == 0, "codesign::requant_row: N % PE must be 0");
requant_row_pc:
    for (int i = 0; i < N / PE; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        for (int p = 0; p < PE; ++p) {
#pragma HLS UNROLL
            const int n = i * PE + p;
            y[n] = requant_code<W_ACC, Y, MBITS>(acc[n], M[n], sh[n]);
        }
    }
}

}  // namespace codesign

#endif  // CODESIGN_REQUANT_H
