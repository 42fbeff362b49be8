// codesign HLS kernel library: stream-interface kernels for the streaming (FINN-style)
// top level of CNN builds (docs/dataflow.md "Streaming top level").
//
// Synthesizable Vitis HLS C++14, header only. Every kernel here reads and writes
// hls::stream<T> with ONE code per beat; a stream carries one IR tensor (batch axis
// dropped) in the C order of tensor.transpose(perm) for a perm chosen by the emitter
// (codesign.hls.stream_emit). The arithmetic is the buffer kernels' (conv.h, matmul.h,
// binary.h, requant.h, add.h, pool.h, lut.h) and bit-exact with codesign.sim.reference; the
// conv and matmul stages are those kernels' loops themselves (templated on their ends).
//
// Element classes ("XC", "YC" below): a code type codesign::IntT<...> or the emitter's
// cs_sint<W> / cs_uint<W> (storage, value_t, value(), encode()). A kernel converts its
// input beats to the class its arithmetic takes with ConvCls (a no-op for equal classes),
// exactly as the buffer path's conversion copies do.
//
// Trip counting (C simulation): the loops that do an op's arithmetic count
// CODESIGN_TRIP() exactly as their buffer-path counterparts (MVAU: rows*NF*SF or
// OH*OW*NF*SF; threshold/requant/lut/add: one per element; pooling: C*OH*OW*KH*KW), and
// the conv window generator counts CODESIGN_SWG_TRIP() as conv.h's Conv2d::swg, so the cost
// model tests hold for both top-level styles. Every cycle the streaming style adds (input
// and output stages, forks, reorders, concats, the matmul row read, draining rows no window
// reads, the pooling line-buffer loads) counts CODESIGN_STREAM_TRIP() instead (stream_trips()).
#ifndef CODESIGN_STREAM_H
#define CODESIGN_STREAM_H

#include <ap_int.h>
#include <hls_stream.h>

#include "codesign/add.h"
#include "codesign/binary.h"
#include "codesign/conv.h"
#include "codesign/lut.h"
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

// CODESIGN_STAGE_BUF (conv.h): storage of a stage's buffers (local in synthesis, static in C
// simulation).

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

// Reads and drops n beats of `in`, one per cycle (stream trips). Inlined into its caller.
template <class T>
void stream_skip(hls::stream<T>& in, int n) {
#pragma HLS INLINE
stream_skip_loop:
    for (int i = 0; i < n; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_STREAM_TRIP();
        (void)in.read();
    }
}

// Drain stage: reads and drops N beats (a tensor nothing consumes).
template <class T, int N>
void stream_drain(hls::stream<T>& in) {
#pragma HLS INLINE off
    stream_skip(in, N);
}

// Accumulator sink of Conv2d::mvau_to / Mvau::fold: every accumulator to the stream, in the
// order the kernel produces them (conv: NHWC, channel ascending per pixel; matmul: C order
// of each row).
template <class T>
struct StreamSink {
    hls::stream<T>& out;
    explicit StreamSink(hls::stream<T>& o) : out(o) {}
    CODESIGN_ALWAYS_INLINE void write(int, int, const T& a) { out.write(a); }
};

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
    stream_skip(in, (H - loaded) * W * C);  // rows no window reads
}

// §11 convolution as two stages of the streaming top level: conv.h's Conv2d (`base`) with
// stream ends. Template arguments, window chunk, accumulator type, lane sum (XNOR-popcount
// for bipolar x bipolar), loops, pragmas and iteration counts are Conv2d's:
//  * swg<XC>(): Conv2d::swg_from over the NHWC input stream (row source StreamRows: a row
//    arrives as W pixels of IC channels, one beat per cycle). Rows below H_USED (no window
//    reads them) are then read and dropped (stream trips).
//  * mvau(): Conv2d::mvau_to into the output stream (StreamSink): the PE accumulators of
//    the last input fold, channel o = nf*PE + p ascending, i.e. NHWC. With PE > 1 that is
//    PE beats in one iteration (a PE-wide beat, FINN's choice, would keep II = 1 in
//    synthesis; C simulation is unaffected).
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
    typedef typename base::acc_t acc_t;
    static const int OH = base::OH, OW = base::OW, K = base::K, SF = base::SF;
    static const int WINDOW_DEPTH = 2 * G * SF;  // the window stream's depth, as conv.h

    // Row source (conv.h's ConvWindow) over an NHWC stream of class XC.
    template <class XC>
    struct StreamRows {
        static const bool channels_last = true;
        hls::stream<typename XC::storage>& in;
        explicit StreamRows(hls::stream<typename XC::storage>& s) : in(s) {}
        CODESIGN_ALWAYS_INLINE x_t load(int, int, int) { return ConvCls<XC, X>::run(in.read()); }
    };

    template <class XC>
    static void swg(hls::stream<typename XC::storage>& in, hls::stream<Chunk>& s) {
#pragma HLS INLINE off
        StreamRows<XC> src(in);
        base::swg_from(src, s);
        stream_skip(in, (H - geom::H_USED) * W * IC);
    }

    template <class BIAS>
    static void mvau(hls::stream<Chunk>& s, const w_t w[OC][K], BIAS bias, hls::stream<acc_t>& out) {
#pragma HLS INLINE off
        StreamSink<acc_t> sink(out);
        base::mvau_to(s, w, bias, sink);
    }
};

// §2 matmul with a constant weight over a stream: ROWS rows of K beats in, ROWS rows of N
// accumulator beats out (C order within a row). matmul.h's Mvau (`base`) with stream ends:
// per row, the K codes are read into a one-row buffer (K cycles, stream trips; FINN overlaps
// this with the previous row's folds), then Mvau::fold<1> (NF*SF iterations, CODESIGN_TRIP,
// the cost model's count) into the output stream (StreamSink: n = nf*PE + p ascending).
template <class A, class Wt, int K, int N, int PE = 1, int SIMD = 1, bool HAS_BIAS = false,
          long long B_LO = (HAS_BIAS ? -2147483648LL : 0LL), long long B_HI = (HAS_BIAS ? 2147483647LL : 0LL),
          int ACC_BITS = 0>
struct StreamMvau {
    typedef Mvau<A, Wt, K, N, PE, SIMD, HAS_BIAS, B_LO, B_HI, ACC_BITS> base;
    typedef typename base::a_t a_t;
    typedef typename base::w_t w_t;
    typedef typename base::acc_t acc_t;

    template <class AC, int ROWS, class BIAS>
    static void run(hls::stream<typename AC::storage>& in, const w_t w[K][N], BIAS bias, hls::stream<acc_t>& out) {
#pragma HLS INLINE off
        static_assert(ROWS >= 1 && (long long)ROWS * base::NF * base::SF < 2147483647LL, "codesign::StreamMvau: ROWS");
        a_t row[1][K];
        StreamSink<acc_t> sink(out);
    smm_rows:
        for (int r = 0; r < ROWS; ++r) {
        smm_read:
            for (int k = 0; k < K; ++k) {
#pragma HLS PIPELINE II = 1
                CODESIGN_STREAM_TRIP();
                row[0][k] = ConvCls<AC, A>::run(in.read());
            }
            base::template fold<1>(row, w, bias, sink);
        }
    }
};

// §4 lookup table over a stream (elementwise: the output keeps the input's order): N beats,
// each converted to the code type X, looked up (lut.h's lut_code) and encoded in class Y.
// One ROM read per cycle, N cycles (CODESIGN_TRIP, as lut_row).
template <class XC, class X, class Y, int N>
void stream_lut(hls::stream<typename XC::storage>& in, const typename Y::storage table[LutSize<X>::value],
                hls::stream<typename Y::storage>& out) {
#pragma HLS INLINE off
stream_lut_loop:
    for (int i = 0; i < N; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        out.write(lut_code<X, Y>(ConvCls<XC, X>::run(in.read()), table));
    }
}

// Concatenation of two streams in one order along an axis of that order: OUTER blocks, each
// NA beats of `a` then NB beats of `b` (NA, NB: the inputs' extents of the axis times the
// beats of the axes after it in the order; OUTER: the beats of the axes before it). E.g.
// channels of NHWC streams: OUTER = H*W pixels, C1 beats of a then C2 of b per pixel.
// Values are preserved (ConvCls to the output class YC). OUTER*(NA + NB) cycles (stream
// trips: the buffer style's concat is a copy).
template <class AC, class BC, class YC, int OUTER, int NA, int NB>
void stream_concat(hls::stream<typename AC::storage>& a, hls::stream<typename BC::storage>& b,
                   hls::stream<typename YC::storage>& out) {
#pragma HLS INLINE off
    int k = 0;  // beat within the block of NA + NB
stream_concat_loop:
    for (int i = 0; i < OUTER * (NA + NB); ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_STREAM_TRIP();
        out.write(k < NA ? ConvCls<AC, YC>::run(a.read()) : ConvCls<BC, YC>::run(b.read()));
        if (++k == NA + NB) k = 0;
    }
}

}  // namespace codesign

#endif  // CODESIGN_STREAM_H
