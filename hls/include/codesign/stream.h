// codesign HLS kernel library: stream-interface kernels for the streaming (FINN-style)
// top level of CNN builds (docs/dataflow.md "Streaming top level").
//
// Synthesizable Vitis HLS C++14, header only. Every kernel here reads and writes
// hls::stream<T> with ONE code per beat; a stream carries one IR tensor (batch axis
// dropped) in the C order of tensor.transpose(perm) for a perm chosen by the emitter
// (codesign.hls.stream_emit). The arithmetic is the buffer kernels' (conv.h, matmul.h,
// binary.h, requant.h, add.h, pool.h) and bit-exact with codesign.sim.reference.
//
// Element classes ("XC", "YC" below): a code type codesign::IntT<...> or the emitter's
// cs_sint<W> / cs_uint<W> (storage, value_t, value(), encode()). A kernel converts its
// input beats to the class its arithmetic takes with ConvCls (a no-op for equal classes),
// exactly as the buffer path's conversion copies do.
//
// Trip counting (C simulation): the loops that do an op's arithmetic count
// CODESIGN_TRIP() exactly as their buffer-path counterparts (MVAU: rows*NF*SF or
// OH*OW*NF*SF; threshold/requant/add: one per element; pooling: C*OH*OW*KH*KW), and the
// conv window generator counts CODESIGN_SWG_TRIP() as conv.h's Conv2d::swg, so the cost
// model tests hold for both top-level styles. Every cycle the streaming style adds (input
// and output stages, forks, reorders, the matmul row read, draining rows no window reads,
// the pooling line-buffer loads) counts CODESIGN_STREAM_TRIP() instead (stream_trips()).
#ifndef CODESIGN_STREAM_H
#define CODESIGN_STREAM_H

#include <ap_int.h>
#include <hls_stream.h>

#include "codesign/add.h"
#include "codesign/binary.h"
#include "codesign/conv.h"
#include "codesign/matmul.h"
#include "codesign/pool.h"
#include "codesign/requant.h"
#include "codesign/types.h"

namespace codesign {

#ifndef __SYNTHESIS__
// Iterations of the stages only the streaming top level has (C simulation only).
inline unsigned long long& stream_trips() {
    static unsigned long long n = 0;
    return n;
}
#define CODESIGN_STREAM_TRIP() (++::codesign::stream_trips())
#else
#define CODESIGN_STREAM_TRIP() ((void)0)
#endif

// Storage of a stage's buffers (line buffers, reorder buffers, windows). Synthesis: a local
// array, one per stage instance (a static would be one memory shared by every stage that
// calls the same template instance). C simulation: static, off the C stack; exact because
// the stages run one after another and each fills its buffer before reading it.
#ifndef __SYNTHESIS__
#define CODESIGN_STAGE_BUF static
#else
#define CODESIGN_STAGE_BUF
#endif

// Value-preserving conversion of one stored word between element classes (the buffer
// path's conversion copy: D::encode(D::value_t(S::value(x)))); identity for S == D.
template <class S, class D>
struct ConvCls {
    CODESIGN_ALWAYS_INLINE static typename D::storage run(const typename S::storage& x) {
#pragma HLS INLINE
        return D::encode(typename D::value_t(S::value(x)));
    }
};
template <class S>
struct ConvCls<S, S> {
    CODESIGN_ALWAYS_INLINE static typename S::storage run(const typename S::storage& x) {
#pragma HLS INLINE
        return x;
    }
};

// Walk over a tensor in the C order of a view of up to four axes (D0..D3, outermost
// first; unused axes have size 1): addr() is the element's C-order index in the tensor
// itself, sum_k i_k * S_k (S_k = the tensor's stride of the axis that view axis k is).
// Counters instead of divisions: one increment per beat.
template <int D0, int D1, int D2, int D3, int S0, int S1, int S2, int S3>
struct Walk {
    static const int N = D0 * D1 * D2 * D3;
    int i0, i1, i2, i3;
    Walk() : i0(0), i1(0), i2(0), i3(0) {}
    int addr() const { return i0 * S0 + i1 * S1 + i2 * S2 + i3 * S3; }
    void next() {
        if (++i3 == D3) {
            i3 = 0;
            if (++i2 == D2) {
                i2 = 0;
                if (++i1 == D1) {
                    i1 = 0;
                    ++i0;
                }
            }
        }
    }
};

// Input stage: the port array (C order of the IR tensor) -> a stream in the order of the
// view WALK. One beat per cycle; a view other than the C order reads the port out of
// order (the AXI master then issues short bursts).
template <class P, class YC, class WALK>
void stream_in(const P* port, hls::stream<typename YC::storage>& out) {
#pragma HLS INLINE off
    WALK w;
stream_in_loop:
    for (int i = 0; i < WALK::N; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_STREAM_TRIP();
        out.write(YC::encode(typename YC::value_t(port[w.addr()])));
        w.next();
    }
}

// Output stage: a stream in the order of the view WALK -> the port array (C order).
template <class P, class XC, class WALK>
void stream_out(hls::stream<typename XC::storage>& in, P* port) {
#pragma HLS INLINE off
    WALK w;
stream_out_loop:
    for (int i = 0; i < WALK::N; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_STREAM_TRIP();
        port[w.addr()] = (P)XC::value(in.read()).to_int64();
        w.next();
    }
}

// Reorder stage: buffers one whole tensor (N words), written in the order of view WIN
// and read out in the order of view WOUT (N + N cycles; the two loops do not overlap,
// FINN would ping-pong two buffers to overlap consecutive images).
template <class T, class WIN, class WOUT>
void stream_reorder(hls::stream<T>& in, hls::stream<T>& out) {
#pragma HLS INLINE off
    static_assert(WIN::N == WOUT::N, "codesign::stream_reorder: both views must cover the tensor");
    CODESIGN_STAGE_BUF T buf[WIN::N];
    WIN wi;
reorder_in:
    for (int i = 0; i < WIN::N; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_STREAM_TRIP();
        buf[wi.addr()] = in.read();
        wi.next();
    }
    WOUT wo;
reorder_out:
    for (int i = 0; i < WOUT::N; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_STREAM_TRIP();
        out.write(buf[wo.addr()]);
        wo.next();
    }
}

// Fork stage: every beat of `in` to both outputs (N beats, one per cycle).
template <class T, int N>
void stream_fork(hls::stream<T>& in, hls::stream<T>& a, hls::stream<T>& b) {
#pragma HLS INLINE off
stream_fork_loop:
    for (int i = 0; i < N; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_STREAM_TRIP();
        const T v = in.read();
        a.write(v);
        b.write(v);
    }
}

// Drain stage: reads and drops N beats (a tensor nothing consumes).
template <class T, int N>
void stream_drain(hls::stream<T>& in) {
#pragma HLS INLINE off
stream_drain_loop:
    for (int i = 0; i < N; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_STREAM_TRIP();
        (void)in.read();
    }
}

// §8 MultiThreshold over a stream of N beats whose channel (the tensor's last axis, C
// channels) advances every INNER beats: c = (i / INNER) % C. thr[TC][NT], TC = 1
// (shared) or C. Input beats of class XC are compared as ap_int<W>; outputs are encoded
// in class YC. Cycles: N (one beat per cycle, NT comparators).
template <class XC, class YC, int N, int C, int INNER, int NT, int TC, int W, int OUT_BIAS, bool BIPOLAR>
void stream_threshold(hls::stream<typename XC::storage>& in, const ap_int<W> thr[TC][NT],
                      hls::stream<typename YC::storage>& out) {
#pragma HLS INLINE off
#pragma HLS ARRAY_PARTITION variable = thr complete dim = 2
    static_assert(TC == 1 || TC == C, "codesign::stream_threshold: threshold rows must be 1 or C");
    int k = 0, c = 0;
stream_threshold_loop:
    for (int i = 0; i < N; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        const ap_int<W> x = ap_int<W>(XC::value(in.read()));
        const int tc = TC == 1 ? 0 : c;
        const typename ThresholdCfg<NT, OUT_BIAS, BIPOLAR>::out_t y =
            threshold_code<NT, OUT_BIAS, BIPOLAR>(threshold_count<NT, W, W>(x, thr[tc]));
        out.write(YC::encode(typename YC::value_t(y)));
        if (++k == INNER) {
            k = 0;
            if (++c == C) c = 0;
        }
    }
}

// §3 requant over a stream (channel as stream_threshold): M[MC], sh[SC] with MC, SC = 1
// (per tensor) or C (per channel). Inputs are taken as ap_int<W_ACC>; Y is the output
// code type (IntT). Cycles: N.
template <class XC, class Y, int N, int C, int INNER, int W_ACC, int MBITS, int MC, int SC>
void stream_requant(hls::stream<typename XC::storage>& in, const ap_uint<MBITS> M[MC], const ap_uint<6> sh[SC],
                    hls::stream<typename Y::storage>& out) {
#pragma HLS INLINE off
    static_assert((MC == 1 || MC == C) && (SC == 1 || SC == C),
                  "codesign::stream_requant: parameters are per tensor (1) or per channel (C)");
    int k = 0, c = 0;
stream_requant_loop:
    for (int i = 0; i < N; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        const ap_int<W_ACC> a = ap_int<W_ACC>(XC::value(in.read()));
        out.write(requant_code<W_ACC, Y, MBITS>(a, M[MC == 1 ? 0 : c], sh[SC == 1 ? 0 : c]));
        if (++k == INNER) {
            k = 0;
            if (++c == C) c = 0;
        }
    }
}

// §7 residual add of two streams in the same order (N beats each, one pair per cycle).
// AC, BC: the streams' classes; A, B, Y: the op's code types; YC: the output class.
template <class AC, class BC, class A, class B, class Y, class YC, int N, int MBITS>
void stream_add(hls::stream<typename AC::storage>& a, hls::stream<typename BC::storage>& b,
                const ap_uint<MBITS> Ma, const ap_uint<MBITS> Mb, const ap_uint<6> sh,
                hls::stream<typename YC::storage>& out) {
#pragma HLS INLINE off
stream_add_loop:
    for (int i = 0; i < N; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        const typename A::storage x = ConvCls<AC, A>::run(a.read());
        const typename B::storage y = ConvCls<BC, B>::run(b.read());
        out.write(ConvCls<Y, YC>::run(add_code<A, B, Y, MBITS>(x, y, Ma, Mb, sh)));
    }
}

// §9 max / average pooling over an NHWC stream (C channels per pixel, pixels in raster
// order), output NHWC. A line buffer of the last KH input rows (all channels) is filled
// row by row (one beat per cycle, counted as stream trips); for every output row the
// windows are then evaluated one window element per cycle, C*OW*KH*KW cycles (the
// CODESIGN_TRIP count of pool.h's loop). Rows no window reads are read and dropped.
// AVG = false: y = max (padding = lo_X), Y = X. AVG = true: window sum (padding 0,
// divisor KH*KW) then requant (M, sh) as pool.h's avgpool2d. Global average pooling is
// the case KH = H, KW = W (the line buffer then holds the whole image; FINN's
// GlobalAccPool keeps only C running sums and needs no line buffer).
// FINN's streaming pool would also overlap loading and computing (II = 1 per input beat).
template <class XC, class X, class Y, class YC, int C, int H, int W, int KH, int KW, int SH, int SW, int PH, int PW,
          bool AVG>
void stream_pool(hls::stream<typename XC::storage>& in, const ap_uint<24> M, const ap_uint<6> sh,
                 hls::stream<typename YC::storage>& out) {
#pragma HLS INLINE off
    typedef PoolGeom<H, W, KH, KW, SH, SW, PH, PW> G;
    typedef PoolSumCfg<X, KH, KW> S;
    typedef typename X::value_t val_t;
    static_assert(X::bits >= 1 && X::bits <= 8, "codesign::stream_pool: pooling inputs have 1..8 bits (§9)");
    static_assert(!AVG || (!Y::bipolar && Y::bits >= 2 && Y::bits <= 16),
                  "codesign::stream_pool: avgpool output must have 2..16 bits (§9, §3)");
    CODESIGN_STAGE_BUF typename X::storage lb[KH][W][C];  // input row r in slot r % KH
    int loaded = 0;
pool_rows:
    for (int oh = 0; oh < G::OH; ++oh) {
        const int top = oh * SH - PH;
        const int need = top + KH < H ? top + KH : H;
    pool_load:
        for (; loaded < need; ++loaded) {
        pool_load_row:
            for (int i = 0; i < W * C; ++i) {
#pragma HLS PIPELINE II = 1
                CODESIGN_STREAM_TRIP();
                lb[loaded % KH][i / C][i % C] = ConvCls<XC, X>::run(in.read());
            }
        }
        val_t m = val_t(X::LO);
        typename S::sum_t acc = 0;
        int ow = 0, c = 0, kh = 0, kw = 0;
    pool_window:
        for (int i = 0; i < G::OW * C * KH * KW; ++i) {
#pragma HLS PIPELINE II = 1
            CODESIGN_TRIP();
            const int ih = top + kh, iw = ow * SW - PW + kw;
            const bool inside = ih >= 0 && ih < H && iw >= 0 && iw < W;
            const typename X::storage raw = lb[inside ? ih % KH : 0][inside ? iw : 0][c];
            const bool first = kh == 0 && kw == 0;
            if (AVG) {
                const typename S::sum_t v = inside ? typename S::sum_t(X::value(raw)) : typename S::sum_t(0);
                acc = (first ? typename S::sum_t(0) : acc) + v;
            } else {
                const val_t v = inside ? X::value(raw) : val_t(X::LO);
                const val_t cur = first ? val_t(X::LO) : m;
                m = v > cur ? v : cur;
            }
            if (kh == KH - 1 && kw == KW - 1) {
                if (AVG) {
                    const typename S::prod_t p = typename S::prod_t(acc) * ap_int<25>(M);
                    out.write(ConvCls<Y, YC>::run(Y::encode(sat<Y, S::SUM_W + 26>(rshr<S::SUM_W + 25>(p, sh)))));
                } else {
                    out.write(ConvCls<Y, YC>::run(Y::encode(typename Y::value_t(m))));
                }
            }
            // advance (ow, c, kh, kw): windows in NHWC order, window elements innermost
            if (++kw == KW) {
                kw = 0;
                if (++kh == KH) {
                    kh = 0;
                    if (++c == C) {
                        c = 0;
                        ++ow;
                    }
                }
            }
        }
    }
pool_drain:
    for (int i = loaded * W * C; i < H * W * C; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_STREAM_TRIP();
        (void)in.read();
    }
}

// §11 convolution as two stages of the streaming top level: the sliding-window generator
// (SWG) reading an NHWC input stream, and the folded MVAU writing an NHWC accumulator
// stream. The template arguments, the window chunk, the accumulator type, the lane sum
// (XNOR-popcount for bipolar x bipolar) and the iteration counts are codesign::Conv2d's
// (conv.h, `base`); only the two stages' stream ends differ from Conv2d::swg / ::mvau:
//  * swg(): the line buffer is filled from the stream, one beat per cycle, a row arriving
//    as W pixels of IC channels (conv.h fills it from an NCHW array). Rows below H_USED
//    (no window reads them) are read and dropped after the last window (stream trips).
//  * mvau(): instead of writing y[o*OH + pix/OW][pix%OW], the PE accumulators of the last
//    input fold are written to the output stream, channel o = nf*PE + p ascending, i.e.
//    NHWC. With PE > 1 that is PE beats in one iteration (a PE-wide beat, FINN's choice,
//    would keep II = 1 in synthesis; C simulation is unaffected).
template <class X, class Wt, int IC, int H, int W, int OC, int KH, int KW, int SH = 1, int SW = 1, int PT = 0,
          int PL = 0, int PB = 0, int PR = 0, int DH = 1, int DW = 1, int G = 1, int PE = 1, int SIMD = 1,
          bool HAS_BIAS = false, long long B_LO = (HAS_BIAS ? -2147483648LL : 0LL),
          long long B_HI = (HAS_BIAS ? 2147483647LL : 0LL), int ACC_BITS = 0>
struct StreamConv2d {
    typedef Conv2d<X, Wt, IC, H, W, OC, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, G, PE, SIMD, HAS_BIAS, B_LO, B_HI,
                   ACC_BITS>
        base;
    typedef typename base::geom geom;
    typedef typename base::Chunk Chunk;
    typedef typename base::x_t x_t;
    typedef typename base::w_t w_t;
    typedef typename base::bias_t bias_t;
    typedef typename base::acc_t acc_t;
    typedef typename base::lanes_t lanes_t;
    static const int OH = base::OH, OW = base::OW, EH = base::EH, ICG = base::ICG, OCG = base::OCG;
    static const int K = base::K, SF = base::SF, NF = base::NF;
    static const int WINDOW_DEPTH = 2 * G * SF;  // the window stream's depth, as conv.h

    template <class XC>
    static void swg(hls::stream<typename XC::storage>& in, hls::stream<Chunk>& s) {
#pragma HLS INLINE off
        CODESIGN_STAGE_BUF x_t lb[EH][IC][W];  // line buffer: input row r in slot r % EH
#pragma HLS ARRAY_PARTITION variable = lb cyclic factor = SIMD dim = 3
        int loaded = 0;
    sswg_rows:
        for (int oh = 0; oh < OH; ++oh) {
            const int top = oh * SH - PT;
            const int need = top + EH < H ? top + EH : H;
        sswg_load:
            for (; loaded < need; ++loaded) {
            sswg_load_row:
                for (int i = 0; i < W * IC; ++i) {  // NHWC: pixel col = i / IC, channel i % IC
#pragma HLS PIPELINE II = 1
                    CODESIGN_SWG_TRIP();
                    lb[loaded % EH][i % IC][i / IC] = ConvCls<XC, X>::run(in.read());
                }
            }
        sswg_emit:
            for (int i = 0; i < OW * G * SF; ++i) {
#pragma HLS PIPELINE II = 1
                CODESIGN_SWG_TRIP();
                const int ow = i / (G * SF), g = (i / SF) % G, sf = i % SF;
                Chunk ch;
            sswg_lane:
                for (int j = 0; j < SIMD; ++j) {
#pragma HLS UNROLL
                    const int k = sf * SIMD + j;
                    const int c = g * ICG + k / (KH * KW);
                    const int u = (k / KW) % KH, v = k % KW;
                    const int ih = top + u * DH;
                    const int iw = ow * SW - PL + v * DW;
                    const bool inside = k < K && ih >= 0 && ih < H && iw >= 0 && iw < W;
                    ch.d[j] = lb[inside ? ih % EH : 0][inside ? c : 0][inside ? iw : 0];
                    ch.valid[j] = inside ? 1 : 0;
                }
                s.write(ch);
            }
        }
    sswg_drain:
        for (int i = loaded * W * IC; i < H * W * IC; ++i) {
#pragma HLS PIPELINE II = 1
            CODESIGN_STREAM_TRIP();
            (void)in.read();
        }
    }

    template <class BIAS>
    static void mvau(hls::stream<Chunk>& s, const w_t w[OC][K], BIAS bias, hls::stream<acc_t>& out) {
#pragma HLS INLINE off
#pragma HLS ARRAY_PARTITION variable = w cyclic factor = PE dim = 1
#pragma HLS ARRAY_PARTITION variable = w cyclic factor = SIMD dim = 2
        CODESIGN_STAGE_BUF Chunk win[G][SF];  // the current pixel's window, one im2col row per group
#pragma HLS ARRAY_PARTITION variable = win complete dim = 1
        acc_t acc[PE];
#pragma HLS ARRAY_PARTITION variable = acc complete
        int nf = 0, sf = 0, rd = 0;
    smvau:
        for (int i = 0; i < OH * OW * NF * SF; ++i) {
#pragma HLS PIPELINE II = 1
            CODESIGN_TRIP();
            if (rd < G * SF) {
                win[rd / SF][rd % SF] = s.read();
                ++rd;
            }
        smvau_pe:
            for (int p = 0; p < PE; ++p) {
#pragma HLS UNROLL
                const int o = nf * PE + p;
                if (o < OC) {
                    const Chunk& ch = win[o / OCG][sf];
                    acc_t a = (sf == 0) ? acc_t(bias[o]) : acc[p];
                    lanes_t::template conv<K>(a, ch.d, ch.valid, w[o], sf);
                    acc[p] = a;
                    if (sf == SF - 1) out.write(a);
                }
            }
            if (++sf == SF) {
                sf = 0;
                if (++nf == NF) {
                    nf = 0;
                    rd = 0;
                }
            }
        }
    }
};

// §2 matmul with a constant weight over a stream: ROWS rows of K beats in, ROWS rows of N
// accumulator beats out (C order within a row). Mvau's types, lane sum and fold loop
// (matmul.h, `base`): per row, the K codes are read into a row buffer (K cycles, stream
// trips; FINN overlaps this with the previous row's folds), then NF*SF iterations
// (CODESIGN_TRIP, the cost model's count) of PE x SIMD products; the PE accumulators of
// the last input fold go out as beats n = nf*PE + p ascending.
template <class A, class Wt, int K, int N, int PE = 1, int SIMD = 1, bool HAS_BIAS = false,
          long long B_LO = (HAS_BIAS ? -2147483648LL : 0LL), long long B_HI = (HAS_BIAS ? 2147483647LL : 0LL),
          int ACC_BITS = 0>
struct StreamMvau {
    typedef Mvau<A, Wt, K, N, PE, SIMD, HAS_BIAS, B_LO, B_HI, ACC_BITS> base;
    typedef typename base::a_t a_t;
    typedef typename base::w_t w_t;
    typedef typename base::acc_t acc_t;
    typedef typename base::lanes_t lanes_t;
    static const int NF = base::NF, SF = base::SF;

    template <class AC, int ROWS, class BIAS>
    static void run(hls::stream<typename AC::storage>& in, const w_t w[K][N], BIAS bias, hls::stream<acc_t>& out) {
#pragma HLS INLINE off
#pragma HLS ARRAY_PARTITION variable = w cyclic factor = SIMD dim = 1
#pragma HLS ARRAY_PARTITION variable = w cyclic factor = PE dim = 2
        static_assert(ROWS >= 1 && (long long)ROWS * NF * SF < 2147483647LL, "codesign::StreamMvau: ROWS");
        a_t row[K];
#pragma HLS ARRAY_PARTITION variable = row cyclic factor = SIMD
        acc_t acc[PE];
#pragma HLS ARRAY_PARTITION variable = acc complete
    smm_rows:
        for (int r = 0; r < ROWS; ++r) {
        smm_read:
            for (int k = 0; k < K; ++k) {
#pragma HLS PIPELINE II = 1
                CODESIGN_STREAM_TRIP();
                row[k] = ConvCls<AC, A>::run(in.read());
            }
            int nf = 0, sf = 0;
        smm_fold:
            for (int i = 0; i < NF * SF; ++i) {
#pragma HLS PIPELINE II = 1
                CODESIGN_TRIP();
            smm_pe:
                for (int p = 0; p < PE; ++p) {
#pragma HLS UNROLL
                    const int n = nf * PE + p;
                    acc_t s = (sf == 0) ? acc_t(bias[n]) : acc[p];
                    lanes_t::template mvau<K, N>(s, row, w, sf, n);
                    acc[p] = s;
                    if (sf == SF - 1) out.write(s);
                }
                if (++sf == SF) {
                    sf = 0;
                    ++nf;
                }
            }
        }
    }
};

}  // namespace codesign

#endif  // CODESIGN_STREAM_H
