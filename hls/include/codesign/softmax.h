// codesign HLS kernel library: integer softmax (docs/arithmetic.md §5).
//
// Synthesizable Vitis HLS C++14: static sizes, no dynamic memory, no recursion.
// Bit-exact with codesign.sim.reference.softmax (tests/test_csim_nonlinear.py).
#ifndef CODESIGN_SOFTMAX_H
#define CODESIGN_SOFTMAX_H

#include <ap_int.h>

#include "codesign/types.h"

namespace codesign {

// Compile-time configuration of one softmax row (§5).
//   X   input code type (IntT<b, SIGNED>, 2 <= b <= 8, not bipolar)
//   N   row length
//   EB  exp-table bits (1..16): table entries are uint EB-bit, T[0] = 2^EB - 1
//   OB  output bits (1..16): unsigned OB-bit codes at scale 2^-OB
template <class X, int N, int EB, int OB>
struct SoftmaxCfg {
    static_assert(!X::bipolar && X::bits >= 2 && X::bits <= 8,
                  "codesign: softmax input must be a 2..8-bit signed/unsigned type (docs/arithmetic.md §5)");
    static_assert(EB >= 1 && EB <= 16, "codesign: softmax EB must be 1..16 (docs/arithmetic.md §5)");
    static_assert(OB >= 1 && OB <= 16, "codesign: softmax OB must be 1..16 (docs/arithmetic.md §5)");
    static_assert(N >= 1, "codesign: softmax row length N must be >= 1");
    static_assert((unsigned long long)N * ((1ULL << EB) - 1) < (1ULL << 32),
                  "codesign: softmax needs N*(2^EB-1) < 2^32 so that the row sum fits uint32 "
                  "(docs/arithmetic.md §5)");
    static const int TABLE = 1 << X::bits;  // 2^b table entries, indexed by k = max - x in 0..2^b-1
    typedef typename X::storage in_t;
    typedef typename X::value_t val_t;
    typedef ap_uint<X::bits> idx_t;   // k = mx - x_j
    typedef ap_uint<EB> exp_t;        // e_j = T[k_j]
    typedef ap_uint<32> sum_t;        // S < 2^32 (static_assert above)
    typedef ap_uint<33> recip_t;      // R = floor(2^32 / S) <= 2^32
    typedef ap_uint<OB> out_t;
};

// §5 steps 3 (part) and 6 for one element: p = min(2^OB - 1, rshr(e * R, 32 - OB)).
// e <= S implies e * R <= S * floor(2^32 / S) <= 2^32, so the product fits 33 bits
// unsigned (34 signed for rshr), and rshr(.) <= 2^OB before the clamp.
template <int EB, int OB>
ap_uint<OB> softmax_normalise(const ap_uint<EB>& e, const ap_uint<33>& R) {
#pragma HLS INLINE
    const ap_int<34> prod = ap_uint<33>(e * R);
    const ap_int<35> p = rshr<34>(prod, 32 - OB);
    const ap_int<35> top = (1 << OB) - 1;
    return ap_uint<OB>(p > top ? top : p);
}

// §5: integer softmax of one row of N codes.
//   x      the row (codes of X)
//   table  T[k] for k = 0 .. 2^b - 1 (a ROM, contents from reference.softmax_table or the
//          model); requires T[0] >= 1 and entries < 2^EB (so S >= 1: no division by zero)
//   y      unsigned OB-bit probabilities at scale 2^-OB
//
// Cycles per row (no dataflow between the passes), each pass pipelined at II = 1:
//   N (pass 1: max) + N (pass 2: table lookup, uint32 sum) + D_div (one 33/32-bit
//   division R = floor(2^32 / S), HLS divider latency, about 36) + N (pass 3: multiply,
//   round, clamp) + the three pipeline depths  ~=  3*N + D_div + ~10.
// Pipelined iterations (CODESIGN_TRIP): exactly 3*N per row.
// Pass 3 recomputes e_j = T[mx - x_j] from x instead of buffering e (saves N*EB bits).
// Resources: one 2^b x EB-bit ROM (read once per cycle), one 32-bit adder, one divider
// per instance (used once per row), one EB x 33-bit multiplier.
template <class X, int N, int EB, int OB>
void softmax_row(const typename X::storage x[N], const ap_uint<EB> table[1 << X::bits], ap_uint<OB> y[N]) {
#pragma HLS INLINE off
    typedef SoftmaxCfg<X, N, EB, OB> C;
    typedef typename C::val_t val_t;

    // Pass 1 (§5.1): mx = max_j x_j.
    val_t mx = val_t(X::LO);
SOFTMAX_MAX:
    for (int j = 0; j < N; ++j) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        const val_t v = X::value(x[j]);
        if (v > mx) mx = v;
    }

    // Pass 2 (§5.2-4): k_j = mx - x_j in 0..2^b-1, e_j = T[k_j], S = sum_j e_j (< 2^32).
    typename C::sum_t S = 0;
SOFTMAX_SUM:
    for (int j = 0; j < N; ++j) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        const typename C::idx_t k = ap_int<X::bits + 2>(mx - X::value(x[j]));
        S += table[k];
    }

    // §5.5: R = floor(2^32 / S), the only division of the row. S >= T[0] >= 1.
    const typename C::recip_t num = typename C::recip_t(1) << 32;
    const typename C::recip_t R = num / S;

    // Pass 3 (§5.6): p_j = min(2^OB - 1, rshr(e_j * R, 32 - OB)).
SOFTMAX_NORM:
    for (int j = 0; j < N; ++j) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        const typename C::idx_t k = ap_int<X::bits + 2>(mx - X::value(x[j]));
        y[j] = softmax_normalise<EB, OB>(table[k], R);
    }
}

// §5 over `rows` rows of N codes (the last axis), one row after the other.
// Cycles: rows * (3*N + D_div + ~10) (see softmax_row); pipelined iterations rows * 3*N.
// `rows` is a runtime count, as FINN's numReps; the arrays have static row length N.
template <class X, int N, int EB, int OB>
void softmax_rows(int rows, const typename X::storage x[][N], const ap_uint<EB> table[1 << X::bits],
                  ap_uint<OB> y[][N]) {
SOFTMAX_ROWS:
    for (int r = 0; r < rows; ++r) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 1024
        softmax_row<X, N, EB, OB>(x[r], table, y[r]);
    }
}

}  // namespace codesign

#endif  // CODESIGN_SOFTMAX_H
