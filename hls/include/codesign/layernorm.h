// codesign HLS kernel library: integer square root and integer LayerNorm
// (docs/arithmetic.md §6).
//
// Synthesizable Vitis HLS C++14: static sizes, no dynamic memory, no recursion.
// Bit-exact with codesign.sim.reference.isqrt / .layernorm (tests/test_csim_nonlinear.py).
#ifndef CODESIGN_LAYERNORM_H
#define CODESIGN_LAYERNORM_H

#include <ap_int.h>

#include "codesign/types.h"

namespace codesign {

// §6 step 6: isqrt(v) = floor(sqrt(v)) for every 0 <= v < 2^64, by the digit-by-digit
// (restoring, shift-and-subtract) method, exactly as the contract states:
//   res = 0, bit = 4^31; 32 iterations of
//     if v >= res + bit: v -= res + bit, res = res/2 + bit  else: res = res/2;   bit = bit/4.
// No divider. res stays < 2^64 (res/2 + bit < 2^63 + 2^62), res + bit < 2^65 is compared
// in 65 bits. Cycles: 32 (one iteration per cycle; the iterations are a dependence chain).
inline ap_uint<32> isqrt(const ap_uint<64>& v_in) {
#pragma HLS INLINE off
    ap_uint<64> v = v_in;
    ap_uint<64> res = 0;
    ap_uint<64> bit = ap_uint<64>(1) << 62;  // 4^31
ISQRT_DIGITS:
    for (int i = 0; i < 32; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        const ap_uint<65> t = ap_uint<65>(res) + bit;
        if (ap_uint<65>(v) >= t) {
            v = ap_uint<64>(ap_uint<65>(v) - t);
            res = (res >> 1) + bit;
        } else {
            res = res >> 1;
        }
        bit = bit >> 2;
    }
    return ap_uint<32>(res);  // floor(sqrt(v_in)) < 2^32
}

// Constants of §6.
static const int LN_F = 8;   // fraction bits of the standard deviation
static const int LN_Z = 16;  // fraction bits of the normalised value

// Widths of the §6 datapath for a row of H int16 codes (H <= 4096). Bounds (§6):
//   sum      |sum| <= H * 2^15                      -> bits_for<-H*2^15, H*(2^15-1)>
//   mu       in [min x, max x] (mean rounded half up)  -> int16
//   d_i      |d_i| <= 2^16 - 1                        -> int17
//   SS       < H * 2^32 <= 2^44                       -> uint45
//   v        SS*2^16/H + E < 2^48 + 2^40 (< 2^62 as the contract states) -> uint64
//   sigma    1 <= sigma <= isqrt(v) < 2^31             -> uint32 (2*sigma: int33)
//   num      |d_i*2^25 + sigma| < 2^41 + 2^31          -> int43
//   z_i      |z_i| < 2^23 (proof below)                -> int24
//   z*G + B  |.| < 2^23*2^15 + 2^31 < 2^39              -> int40
// |z_i| < 2^23: if d_i != 0 then SS >= d_i^2, so t = d_i^2*2^16/H >= 2^16/4096 = 16 and
// sigma >= isqrt(floor(t)) >= sqrt(t) - 1 >= (3/4)*sqrt(t); hence
// |d_i|*2^24/sigma <= (4/3)*2^16*sqrt(H) <= (4/3)*2^22 and |z_i| <= that + 1/2 < 2^23.
template <int H>
struct LayerNormCfg {
    static_assert(H >= 1 && H <= 4096, "codesign: layernorm row length H must be 1..4096 (docs/arithmetic.md §6)");
    static const long long SUM_LO = -(long long)H * (1LL << 15);
    static const long long SUM_HI = (long long)H * ((1LL << 15) - 1);
    static const int SUM_W = bits_for<SUM_LO, SUM_HI>::value;
    typedef ap_int<16> in_t;
    typedef ap_int<16> g_t;   // |G_i| <= 2^15 - 1
    typedef ap_int<32> b_t;   // |B_i| <= 2^31 - 1
    typedef ap_uint<6> s_t;   // S in 1..62
    typedef ap_uint<40> e_t;  // E < 2^40
    typedef ap_int<SUM_W> sum_t;
    typedef ap_int<SUM_W + 2> mu_num_t;  // 2*sum + H
    typedef ap_int<16> mu_t;
    typedef ap_int<17> d_t;
    typedef ap_uint<45> ss_t;
    typedef ap_uint<64> v_t;
    typedef ap_uint<32> sigma_t;
    typedef ap_int<43> z_num_t;
    typedef ap_int<24> z_t;
    typedef ap_int<40> y_pre_t;
};

// §6: integer LayerNorm of one row of H int16 codes.
//   x     the row, -2^15 <= x_i < 2^15
//   G, B  per-element gain (|G_i| <= 2^15-1) and bias (|B_i| <= 2^31-1), ROMs
//   S     shift, 1..62;  E  epsilon term, 0 <= E < 2^40 (per-layer constants; passed
//         as arguments so that one instance serves any layer of the same H and Y)
//   y     codes of the output type Y (2..8 bits), stored as Y::storage
// Every floor division with a possibly negative numerator (mu, z_i) uses floor_div
// (C++ '/' truncates toward zero); the divisors (2H, H, 2*sigma) are positive.
//
// Cycles per row, each pass pipelined at II = 1 (no dataflow between the passes):
//   H (pass 1: sum) + D_mu (division by the constant 2H) + H (pass 2: d_i, SS)
//   + D_v (division by the constant H) + 32 (isqrt) + H (pass 3: one 43/33-bit division
//   per element, pipelined, then multiply-add, rshr, saturate) + D_z (divider depth, ~45)
//   ~= 3*H + 32 + D_mu + D_v + D_z.
// Pipelined iterations (CODESIGN_TRIP): exactly 3*H + 32 per row (isqrt included).
// Passes 2 and 3 recompute d_i = x_i - mu from x (no d buffer).
template <int H, class Y>
void layernorm_row(const ap_int<16> x[H], const ap_int<16> G[H], const ap_int<32> B[H], const ap_uint<6> S,
                   const ap_uint<40> E, typename Y::storage y[H]) {
#pragma HLS INLINE off
    static_assert(!Y::bipolar && Y::bits >= 2 && Y::bits <= 8,
                  "codesign: layernorm output type must have 2..8 bits (docs/arithmetic.md §6)");
    typedef LayerNormCfg<H> C;

    // Pass 1 (§6.1): sum = sum_i x_i.
    typename C::sum_t sum = 0;
LN_SUM:
    for (int i = 0; i < H; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        sum += x[i];
    }

    // §6.2: mu = floor((2*sum + H) / (2H)), the mean rounded half up (numerator may be < 0).
    const typename C::mu_num_t mu_num = typename C::mu_num_t(2 * sum) + H;
    const typename C::mu_t mu = floor_div<C::SUM_W + 2, 15>(mu_num, ap_int<15>(2 * H));

    // Pass 2 (§6.3-4): d_i = x_i - mu, SS = sum_i d_i^2.
    typename C::ss_t SS = 0;
LN_VAR:
    for (int i = 0; i < H; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        const typename C::d_t d = typename C::d_t(x[i]) - mu;
        SS += typename C::ss_t(d * d);
    }

    // §6.5-6: v = floor(SS * 2^(2F) / H) + E (numerator >= 0), sigma = max(1, isqrt(v)).
    const ap_uint<61> ss_scaled = ap_uint<61>(SS) << (2 * LN_F);
    const typename C::v_t v = typename C::v_t(ss_scaled / ap_uint<13>(H)) + E;
    typename C::sigma_t sigma = isqrt(v);
    if (sigma == 0) sigma = 1;
    const ap_int<33> two_sigma = ap_int<33>(sigma) << 1;

    // Pass 3 (§6.7-8): z_i = floor((d_i * 2^(Z+F+1) + sigma) / (2 sigma)) (one division per
    // element, numerator may be < 0), y_i = sat_Y(rshr(z_i * G_i + B_i, S)).
LN_NORM:
    for (int i = 0; i < H; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        const typename C::d_t d = typename C::d_t(x[i]) - mu;
        const typename C::z_num_t num = (typename C::z_num_t(d) << (LN_Z + LN_F + 1)) + sigma;
        const typename C::z_t z = floor_div<43, 33>(num, two_sigma);
        const typename C::y_pre_t acc = typename C::y_pre_t(z * G[i]) + B[i];
        y[i] = Y::encode(sat<Y, 41>(rshr<40>(acc, S)));
    }
}

// §6 over `rows` rows (the last axis), one after the other. `rows` is a runtime count.
// Cycles: rows * (3*H + 32 + D_mu + D_v + D_z) (see layernorm_row); iterations rows * (3*H + 32).
template <int H, class Y>
void layernorm_rows(int rows, const ap_int<16> x[][H], const ap_int<16> G[H], const ap_int<32> B[H],
                    const ap_uint<6> S, const ap_uint<40> E, typename Y::storage y[][H]) {
LN_ROWS:
    for (int r = 0; r < rows; ++r) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 1024
        layernorm_row<H, Y>(x[r], G, B, S, E, y[r]);
    }
}

}  // namespace codesign

#endif  // CODESIGN_LAYERNORM_H
