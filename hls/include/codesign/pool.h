// codesign HLS kernel library: 2-D max and average pooling, global average pooling
// (docs/arithmetic.md §9).
//
// Synthesizable Vitis HLS C++14: static sizes, no dynamic memory, no recursion.
// Bit-exact with codesign.sim.reference.maxpool2d / .avgpool2d (tests/test_csim_nonlinear.py).
//
// One image in NCHW layout, x[C][H][W]; the batch dimension is a loop of the caller.
// Window (KH, KW), stride (SH, SW), symmetric zero-based padding (PH, PW) with PH < KH and
// PW < KW, so every window holds at least one real element. Output size
// OH = (H + 2*PH - KH) / SH + 1, OW = (W + 2*PW - KW) / SW + 1 (floor: trailing rows/columns
// that do not fill a window are dropped, as torch/QONNX with ceil_mode = 0).
#ifndef CODESIGN_POOL_H
#define CODESIGN_POOL_H

#include <ap_int.h>

#include "codesign/types.h"

namespace codesign {

template <int H, int W, int KH, int KW, int SH, int SW, int PH, int PW>
struct PoolGeom {
    static_assert(H >= 1 && W >= 1, "codesign: pooling needs H, W >= 1");
    static_assert(KH >= 1 && KW >= 1 && SH >= 1 && SW >= 1, "codesign: pooling kernel and stride must be >= 1");
    static_assert(PH >= 0 && PH < KH && PW >= 0 && PW < KW,
                  "codesign: pooling padding must satisfy 0 <= pad < kernel (docs/arithmetic.md §9)");
    static_assert(H + 2 * PH >= KH && W + 2 * PW >= KW, "codesign: pooling window larger than the padded input");
    static const int OH = (H + 2 * PH - KH) / SH + 1;
    static const int OW = (W + 2 * PW - KW) / SW + 1;
};

// Window-sum range and requant widths of average pooling (§9, §3): |sum| <= KH*KW*max|x|.
template <class X, int KH, int KW>
struct PoolSumCfg {
    static const long long LO = (long long)KH * KW * (X::LO < 0 ? X::LO : 0);
    static const long long HI = (long long)KH * KW * (X::HI > 0 ? X::HI : 0);
    static const int SUM_W = bits_for<LO, HI>::value;
    typedef ap_int<SUM_W> sum_t;
    typedef ap_int<SUM_W + 25> prod_t;  // sum * M, M < 2^24 unsigned
};

// §9 maxpool: y = max over the window; padded positions hold lo_X (so they never win).
// X: any code type of 1..8 bits (bipolar included).
// Cycles: C * OH * OW * KH * KW (one window element per cycle, one flattened pipelined
// loop, II = 1; x is read once per window element from a single-port memory).
template <class X, int C, int H, int W, int KH, int KW, int SH, int SW, int PH, int PW>
void maxpool2d(const typename X::storage x[C][H][W],
               typename X::storage y[C][PoolGeom<H, W, KH, KW, SH, SW, PH, PW>::OH]
                                    [PoolGeom<H, W, KH, KW, SH, SW, PH, PW>::OW]) {
#pragma HLS INLINE off
    static_assert(X::bits >= 1 && X::bits <= 8, "codesign: maxpool input must have 1..8 bits (docs/arithmetic.md §9)");
    static_assert(C >= 1, "codesign: pooling needs C >= 1");
    typedef PoolGeom<H, W, KH, KW, SH, SW, PH, PW> G;
    typedef typename X::value_t val_t;
    val_t m = val_t(X::LO);
    int c = 0, oh = 0, ow = 0, kh = 0, kw = 0;
MAXPOOL_LOOP:
    for (int i = 0; i < C * G::OH * G::OW * KH * KW; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        const int ih = oh * SH + kh - PH;
        const int iw = ow * SW + kw - PW;
        const bool inside = ih >= 0 && ih < H && iw >= 0 && iw < W;
        const typename X::storage raw = x[c][inside ? ih : 0][inside ? iw : 0];  // in-range address
        const val_t v = inside ? X::value(raw) : val_t(X::LO);
        const val_t cur = (kh == 0 && kw == 0) ? val_t(X::LO) : m;
        m = v > cur ? v : cur;
        if (kh == KH - 1 && kw == KW - 1) y[c][oh][ow] = X::encode(m);
        // advance (c, oh, ow, kh, kw) in row-major order
        if (++kw == KW) {
            kw = 0;
            if (++kh == KH) {
                kh = 0;
                if (++ow == G::OW) {
                    ow = 0;
                    if (++oh == G::OH) {
                        oh = 0;
                        ++c;
                    }
                }
            }
        }
    }
}

// §9 avgpool: window sum (padding contributes 0, divisor always KH*KW:
// count_include_pad = 1) followed by requant (§3): y = sat_Y(rshr(sum * M, sh)), with
// M / 2^sh ~ s_x / (KH*KW*s_y) (per tensor; M < 2^24, sh <= 62: runtime constants).
// X: 1..8 bits; Y: 2..16 bits (signed/unsigned, narrow allowed).
// Cycles: C * OH * OW * KH * KW (as maxpool2d; the requant is pipelined into the same
// loop, one multiplier).
template <class X, class Y, int C, int H, int W, int KH, int KW, int SH, int SW, int PH, int PW>
void avgpool2d(const typename X::storage x[C][H][W], const ap_uint<24> M, const ap_uint<6> sh,
               typename Y::storage y[C][PoolGeom<H, W, KH, KW, SH, SW, PH, PW>::OH]
                                    [PoolGeom<H, W, KH, KW, SH, SW, PH, PW>::OW]) {
#pragma HLS INLINE off
    static_assert(X::bits >= 1 && X::bits <= 8, "codesign: avgpool input must have 1..8 bits (docs/arithmetic.md §9)");
    static_assert(!Y::bipolar && Y::bits >= 2 && Y::bits <= 16,
                  "codesign: avgpool output must have 2..16 bits (requant, docs/arithmetic.md §3)");
    static_assert(C >= 1, "codesign: pooling needs C >= 1");
    typedef PoolGeom<H, W, KH, KW, SH, SW, PH, PW> G;
    typedef PoolSumCfg<X, KH, KW> S;
    typename S::sum_t acc = 0;
    int c = 0, oh = 0, ow = 0, kh = 0, kw = 0;
AVGPOOL_LOOP:
    for (int i = 0; i < C * G::OH * G::OW * KH * KW; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        const int ih = oh * SH + kh - PH;
        const int iw = ow * SW + kw - PW;
        const bool inside = ih >= 0 && ih < H && iw >= 0 && iw < W;
        const typename X::storage raw = x[c][inside ? ih : 0][inside ? iw : 0];  // in-range address
        const typename S::sum_t v = inside ? typename S::sum_t(X::value(raw)) : typename S::sum_t(0);
        const typename S::sum_t cur = (kh == 0 && kw == 0) ? typename S::sum_t(0) : acc;
        acc = cur + v;
        if (kh == KH - 1 && kw == KW - 1) {
            const typename S::prod_t p = typename S::prod_t(acc) * ap_int<25>(M);
            y[c][oh][ow] = Y::encode(sat<Y, S::SUM_W + 26>(rshr<S::SUM_W + 25>(p, sh)));
        }
        if (++kw == KW) {
            kw = 0;
            if (++kh == KH) {
                kh = 0;
                if (++ow == G::OW) {
                    ow = 0;
                    if (++oh == G::OH) {
                        oh = 0;
                        ++c;
                    }
                }
            }
        }
    }
}

// §9 global average pooling: the window is the whole H x W plane (no padding), then
// requant as avgpool2d: y[c] = sat_Y(rshr(sum_{h,w} x[c][h][w] * M, sh)).
// Cycles: C * H * W (one element per cycle, II = 1).
template <class X, class Y, int C, int H, int W>
void global_avgpool(const typename X::storage x[C][H][W], const ap_uint<24> M, const ap_uint<6> sh,
                    typename Y::storage y[C]) {
#pragma HLS INLINE off
    static_assert(X::bits >= 1 && X::bits <= 8, "codesign: avgpool input must have 1..8 bits (docs/arithmetic.md §9)");
    static_assert(!Y::bipolar && Y::bits >= 2 && Y::bits <= 16,
                  "codesign: avgpool output must have 2..16 bits (requant, docs/arithmetic.md §3)");
    static_assert(C >= 1 && H >= 1 && W >= 1, "codesign: pooling needs C, H, W >= 1");
    typedef PoolSumCfg<X, H, W> S;
    typename S::sum_t acc = 0;
    int c = 0, h = 0, w = 0;
GAP_LOOP:
    for (int i = 0; i < C * H * W; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        const typename S::sum_t cur = (h == 0 && w == 0) ? typename S::sum_t(0) : acc;
        acc = cur + typename S::sum_t(X::value(x[c][h][w]));
        if (h == H - 1 && w == W - 1) {
            const typename S::prod_t p = typename S::prod_t(acc) * ap_int<25>(M);
            y[c] = Y::encode(sat<Y, S::SUM_W + 26>(rshr<S::SUM_W + 25>(p, sh)));
        }
        if (++w == W) {
            w = 0;
            if (++h == H) {
                h = 0;
                ++c;
            }
        }
    }
}

}  // namespace codesign

#endif  // CODESIGN_POOL_H
