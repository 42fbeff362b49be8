// codesign HLS kernel library: 2-D convolution, FINN style (docs/arithmetic.md §11).
//
// Synthesizable Vitis HLS C++14, header only. Bit-exact with
// codesign.sim.reference.conv2d (tests/test_ref_conv.py, tests/test_conv.py).
//
//   acc[o][i][j] = bias[o] + sum_{c,u,v} x[g*ICG + c][i*SH - PT + u*DH][j*SW - PL + v*DW] * w[o][c][u][v]
//
// over the input positions inside the image (padding contributes 0, for bipolar
// inputs too: §11), g = o / (OC/G). One image per call; the batch is the caller's loop.
//
// Layout (what codesign's emitter keeps in its on-chip buffers): x[IC*H][W] is the
// NCHW image with row index c*H + h; y[OC*OH][OW] likewise; w[OC][K] is the ONNX weight
// (OC, IC/G, KH, KW) flattened, K = IC/G * KH * KW, im2col index k = (c*KH + u)*KW + v.
//
// Two stages in a DATAFLOW region, connected by an hls::stream of SIMD-wide chunks:
//
// 1. Sliding-window generator (ConvolutionInputGenerator): a line buffer of the last
//    EH = DH*(KH-1) + 1 input rows (all channels) is filled row by row (IC*W cycles per
//    input row, one element per cycle); for every output pixel (i, j) and group g it then
//    emits the group's im2col row as ceil(K/SIMD) chunks of SIMD codes, each with a
//    valid mask (padding positions and the tail beyond K are invalid: they contribute 0).
//    Cycles: H_used*IC*W + OH*OW*G*ceil(K/SIMD), H_used = the input rows any window reads
//    (swg_cycles()), counted by conv_swg_trips() in C simulation.
// 2. Matrix-vector unit with PE/SIMD folding (MVAU): per output pixel, ceil(OC/PE) output
//    folds x ceil(K/SIMD) input folds, each iteration PE accumulators (channels
//    o = nf*PE + p) add SIMD products. The window of the pixel is read from the stream
//    into a window buffer while the first folds compute (one chunk per iteration at most;
//    PE <= OC/G guarantees each chunk arrives no later than its first use), and re-used
//    by the later output folds. Accumulators are ap_int<AccBits<X, Wt, K, B_LO, B_HI>>
//    (§2's exact width, §11), so nothing can overflow.
//    Binary layers (X and Wt bipolar, §8/§11): each PE's SIMD lanes are one
//    XNOR-popcount word (detail::LaneSum of matmul.h): the chunk's lane bits and the
//    weight lanes' bits are packed into ap_uint<SIMD> words and the lane sum is
//      2 * popcount(XNOR(x, w) & valid) - popcount(valid),
//    with `valid` the chunk's mask (padded taps and the tail beyond K are 0 there), so a
//    padded tap adds 0 as §11 requires: it is neither a -1 nor a +1 lane. Weight storage
//    is unchanged (1 bit per element, lanes partitioned: packing is wiring). Folding,
//    trip counts and the accumulator are the same as for multi-bit layers; in C
//    simulation every word counts one CODESIGN_XNOR_WORD() (OC * SF per output pixel).
//    Cycles (the cost model, codesign.accel.ops "conv2d"):
//      OH * OW * ceil(OC/PE) * ceil(K/SIMD) + D,
//    D the pipeline depth (about 3 + L_mul + ceil(log2(SIMD)), as the Mvau of matmul.h),
//    counted by CODESIGN_TRIP() in C simulation (the II = 1 iterations).
//    In the DATAFLOW region the two stages overlap; the call takes about
//    max(MVAU, generator) cycles plus both pipeline depths.
//
// Memory: the line buffer is partitioned by SIMD along its column axis and the window
// buffer completely along SIMD, so each lane reads its own bank once per cycle.
#ifndef CODESIGN_CONV_H
#define CODESIGN_CONV_H

#include <ap_int.h>
#include <hls_stream.h>

#include "codesign/matmul.h"
#include "codesign/types.h"

namespace codesign {

#ifndef __SYNTHESIS__
// Iterations of the sliding-window generator's pipelined loops (C simulation only), kept
// apart from CODESIGN_TRIP() so that the MVAU's count stays the cost model's formula.
inline unsigned long long& conv_swg_trips() {
    static unsigned long long n = 0;
    return n;
}
#define CODESIGN_SWG_TRIP() (++::codesign::conv_swg_trips())
#else
#define CODESIGN_SWG_TRIP() ((void)0)
#endif

// Output size of §11: floor((H + PT + PB - EH) / SH) + 1, EH = DH*(KH-1) + 1 (and for W).
template <int H, int W, int KH, int KW, int SH, int SW, int PT, int PL, int PB, int PR, int DH, int DW>
struct ConvGeom {
    static_assert(H >= 1 && W >= 1, "codesign::conv2d: H, W must be >= 1");
    static_assert(KH >= 1 && KW >= 1 && SH >= 1 && SW >= 1 && DH >= 1 && DW >= 1,
                  "codesign::conv2d: kernel, stride and dilation must be >= 1");
    static_assert(PT >= 0 && PL >= 0 && PB >= 0 && PR >= 0, "codesign::conv2d: pads must be >= 0");
    static const int EH = DH * (KH - 1) + 1;
    static const int EW = DW * (KW - 1) + 1;
    static_assert(H + PT + PB >= EH && W + PL + PR >= EW,
                  "codesign::conv2d: dilated kernel larger than the padded input");
    static const int OH = (H + PT + PB - EH) / SH + 1;
    static const int OW = (W + PL + PR - EW) / SW + 1;
    // input rows any window reads: rows 0 .. min(H, (OH-1)*SH - PT + EH) - 1
    static const int LAST = (OH - 1) * SH - PT + EH;
    static const int H_USED = LAST < H ? (LAST > 0 ? LAST : 0) : H;
};

// Storage of a stage's working buffers (line buffers, windows; stream.h's reorder and
// pooling buffers too). Synthesis: a local array, one per function instance (a static would
// be one memory shared by every caller of the same template instance, e.g. two concurrent
// DATAFLOW stages). C simulation: static, off the C stack; exact because every caller fills
// the buffer before it reads it, and the calls run one after another.
#ifndef __SYNTHESIS__
#define CODESIGN_STAGE_BUF static
#else
#define CODESIGN_STAGE_BUF
#endif

// §11 sliding-window generator, shared by Conv2d and SparseConv2d (sparse.h): a line buffer
// of the last EH input rows (all channels), refilled row by row from a row source, and
// per output row a sequence of SIMD-wide im2col chunks chosen by a plan.
//
// Row source (SRC): where input element (channel c, row h, column col) comes from.
//   static const bool channels_last   the order in which load() is called within a row:
//                                     false: c outer, col inner (an NCHW array, ArrayRows);
//                                     true: col outer, c inner (an NHWC stream, stream.h)
//   x_t load(int h, int c, int col)   called once per element of rows 0 .. H_USED-1, rows
//                                     in ascending order, one call per cycle
// Plan (PLAN): which chunks are emitted per output row.
//   typedef ... Chunk                  the stream's element (holds d[SIMD] and valid)
//   static const int PER_ROW           chunks per output row
//   void next(lb, top, ch)             fills chunk ch of the current output row (first input
//                                      row of its windows: top, may be < 0) with lanes(),
//                                      then advances; called PER_ROW times per output row
// Cycles: H_USED*IC*W (loads, one element per cycle) + OH*PER_ROW (emits), all counted
// by CODESIGN_SWG_TRIP().
template <class X, int IC, int H, int W, int KH, int KW, int SH, int SW, int PT, int PL, int PB, int PR, int DH,
          int DW, int G, int SIMD>
struct ConvWindow {
    typedef ConvGeom<H, W, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW> geom;
    static const int OH = geom::OH, OW = geom::OW, EH = geom::EH;
    static const int ICG = IC / G;
    static const int K = ICG * KH * KW;
    typedef typename X::storage x_t;

    // Row source over the NCHW array x[IC*H][W] (row index c*H + h).
    struct ArrayRows {
        static const bool channels_last = false;
        const x_t (*x)[W];
        explicit ArrayRows(const x_t xa[IC * H][W]) : x(xa) {}
        CODESIGN_ALWAYS_INLINE x_t load(int h, int c, int col) const { return x[c * H + h][col]; }
    };

    // Lanes j < SIMD of group g's im2col row at output column ow, elements k = f*SIMD + j
    // (k = (c*KH + u)*KW + v): d[j] = x[g*ICG + c][top + u*DH][ow*SW - PL + v*DW] from the
    // line buffer, valid[j] = 1 iff `on`, k < K and the position lies inside the image
    // (padding and the tail beyond K are invalid and contribute 0; their d[j] is some
    // in-range line-buffer word).
    CODESIGN_ALWAYS_INLINE static void lanes(const x_t lb[EH][IC][W], int top, int ow, int g, int f, bool on,
                                             x_t d[SIMD], ap_uint<SIMD>& valid) {
#pragma HLS INLINE
    swg_lane:
        for (int j = 0; j < SIMD; ++j) {
#pragma HLS UNROLL
            const int k = f * SIMD + j;
            const int c = g * ICG + k / (KH * KW);
            const int u = (k / KW) % KH, v = k % KW;
            const int ih = top + u * DH;
            const int iw = ow * SW - PL + v * DW;
            const bool inside = on && k < K && ih >= 0 && ih < H && iw >= 0 && iw < W;
            d[j] = lb[inside ? ih % EH : 0][inside ? c : 0][inside ? iw : 0];
            valid[j] = inside ? 1 : 0;
        }
    }

    // The generator: OH output rows, each loading the input rows its windows need (up to
    // row min(top + EH, H) - 1) and emitting PLAN::PER_ROW chunks to s. Reads rows
    // 0 .. H_USED-1 of the source and no more.
    template <class SRC, class PLAN>
    static void run(SRC& src, PLAN& plan, hls::stream<typename PLAN::Chunk>& s) {
#pragma HLS INLINE
        CODESIGN_STAGE_BUF x_t lb[EH][IC][W];  // line buffer: input row r in slot r % EH
#pragma HLS ARRAY_PARTITION variable = lb cyclic factor = SIMD dim = 3
        int loaded = 0;  // input rows 0 .. loaded-1 have been read
    swg_rows:
        for (int oh = 0; oh < OH; ++oh) {
            const int top = oh * SH - PT;
            const int need = top + EH < H ? top + EH : H;  // rows below `need` must be present
        swg_load:
            for (; loaded < need; ++loaded) {
            swg_load_row:
                for (int i = 0; i < IC * W; ++i) {
#pragma HLS PIPELINE II = 1
                    CODESIGN_SWG_TRIP();
                    const int c = SRC::channels_last ? i % IC : i / W;
                    const int col = SRC::channels_last ? i / IC : i % W;
                    lb[loaded % EH][c][col] = src.load(loaded, c, col);
                }
            }
        swg_emit:
            for (int i = 0; i < PLAN::PER_ROW; ++i) {
#pragma HLS PIPELINE II = 1
                CODESIGN_SWG_TRIP();
                typename PLAN::Chunk ch;
                plan.next(lb, top, ch);
                s.write(ch);
            }
        }
    }
};

// §11 convolution unit (sliding-window generator + folded MVAU).
//
//   X, Wt      code types of the input (1..8 bits, 1 = bipolar) and the weights (signed or
//              bipolar, 1..8 bits)
//   IC, H, W   input channels and size; OC output channels; KH x KW kernel
//   SH, SW     stride; PT, PL, PB, PR pads (top, left, bottom, right); DH, DW dilation
//   G          groups (IC % G == 0, OC % G == 0; G == IC == OC is depthwise)
//   PE         output channels per cycle, 1 <= PE <= OC/G (PE need not divide OC: the last
//              fold leaves its missing lanes idle)
//   SIMD       im2col elements per cycle per PE, 1 <= SIMD (the last fold is masked when
//              SIMD does not divide K)
//   HAS_BIAS, B_LO, B_HI, ACC_BITS as codesign::Mvau (matmul.h).
//
// Each stage exists once, as a template over its ends: swg_from(src, s) over a row source
// (ConvWindow), mvau_to(s, w, bias, sink) over an accumulator sink (sink.write(o, pix, acc):
// output channel o of output pixel pix, raster order; called in pixel order and, within a
// pixel, for o ascending, the PE channels of one iteration in one cycle). swg() / mvau()
// are their array forms (NCHW x, y[OC*OH][OW]); stream.h's StreamConv2d their stream forms.
template <class X, class Wt, int IC, int H, int W, int OC, int KH, int KW, int SH = 1, int SW = 1, int PT = 0,
          int PL = 0, int PB = 0, int PR = 0, int DH = 1, int DW = 1, int G = 1, int PE = 1, int SIMD = 1,
          bool HAS_BIAS = false, long long B_LO = (HAS_BIAS ? -2147483648LL : 0LL),
          long long B_HI = (HAS_BIAS ? 2147483647LL : 0LL), int ACC_BITS = 0>
struct Conv2d {
    typedef ConvWindow<X, IC, H, W, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, G, SIMD> window;
    typedef typename window::geom geom;
    static const int OH = geom::OH, OW = geom::OW, EH = geom::EH;
    static const int ICG = IC / G, OCG = OC / G;
    static const int K = ICG * KH * KW;
    static const int SF = (K + SIMD - 1) / SIMD;  // input folds (last one masked)
    static const int NF = (OC + PE - 1) / PE;     // output folds (last one may be partial)

    static_assert(IC >= 1 && OC >= 1 && G >= 1 && IC % G == 0 && OC % G == 0,
                  "codesign::conv2d: IC and OC must be multiples of the groups G");
    static_assert(PE >= 1 && PE <= OCG,
                  "codesign::conv2d: 1 <= PE <= OC/G (depthwise: PE = 1; each chunk of the window stream "
                  "belongs to one group)");
    static_assert(SIMD >= 1, "codesign::conv2d: SIMD must be >= 1");
    static_assert(X::bits >= 1 && X::bits <= 8, "codesign::conv2d: activations have 1..8 bits (§2, §11)");
    static_assert(X::bits > 1 || X::bipolar, "codesign::conv2d: 1-bit activations are bipolar (signed)");
    static_assert(Wt::bits >= 1 && Wt::bits <= 8 && Wt::is_signed,
                  "codesign::conv2d: weights are signed or bipolar, 1..8 bits (§2, §11)");
    static_assert(B_LO <= B_HI && B_LO >= -2147483648LL && B_HI <= 2147483647LL,
                  "codesign::conv2d: bias range must lie in int32");
    static_assert(HAS_BIAS || (B_LO == 0 && B_HI == 0), "codesign::conv2d: bias range without a bias");
    static_assert((long long)OH * OW * NF * SF < 2147483647LL, "codesign::conv2d: too many iterations");

    static const int required_acc_bits = AccBits<X, Wt, K, B_LO, B_HI>::value;
    static const int acc_bits = ACC_BITS > 0 ? ACC_BITS : required_acc_bits;
    static_assert(ACC_BITS == 0 || (ACC_BITS >= required_acc_bits && ACC_BITS <= 48),
                  "codesign::conv2d: an accumulator override must be at least AccBits and at most 48 bits");

    typedef typename X::storage x_t;
    typedef typename Wt::storage w_t;
    typedef ap_int<32> bias_t;
    typedef ap_int<acc_bits> acc_t;
    typedef detail::LaneSum<X, Wt, SIMD> lanes_t;
    // true: bipolar x bipolar, the XNOR-popcount datapath; false: multipliers.
    static const bool xnor_datapath = lanes_t::xnor;

    // One SIMD-wide piece of an im2col row: codes and which of them are real.
    struct Chunk {
        x_t d[SIMD];
        ap_uint<SIMD> valid;
    };

    // The dense plan (ConvWindow): per output pixel of the row, for every group g, the
    // group's im2col row as SF chunks, i.e. chunk (ow, g, sf) in that order.
    struct Plan {
        typedef Conv2d::Chunk Chunk;
        static const int PER_ROW = OW * G * SF;
        int ow, g, sf;
        Plan() : ow(0), g(0), sf(0) {}
        CODESIGN_ALWAYS_INLINE void next(const x_t lb[EH][IC][W], int top, Chunk& ch) {
            window::lanes(lb, top, ow, g, sf, true, ch.d, ch.valid);
            if (++sf == SF) {
                sf = 0;
                if (++g == G) {
                    g = 0;
                    if (++ow == OW) ow = 0;
                }
            }
        }
    };

    // Accumulator sink of the array form: y[OC*OH][OW] (NCHW, row index o*OH + i).
    struct ArraySink {
        acc_t (*y)[OW];
        explicit ArraySink(acc_t ya[OC * OH][OW]) : y(ya) {}
        CODESIGN_ALWAYS_INLINE void write(int o, int pix, const acc_t& a) { y[o * OH + pix / OW][pix % OW] = a; }
    };

    // The cost model's count (MVAU, II = 1 iterations) and the generator's.
    static long long mvau_cycles() { return (long long)OH * OW * NF * SF; }
    static long long swg_cycles() { return (long long)geom::H_USED * IC * W + (long long)OH * Plan::PER_ROW; }

    // §11 without bias.
    static void run(const x_t x[IC * H][W], const w_t w[OC][K], acc_t y[OC * OH][OW]) {
#pragma HLS INLINE off
        static_assert(!HAS_BIAS || OC < 0, "codesign::conv2d: HAS_BIAS is set, call run(x, w, bias, y)");
        top(x, w, detail::NoBias(), y);
    }

    // §11 with bias: the bias is added once, first.
    static void run(const x_t x[IC * H][W], const w_t w[OC][K], const bias_t bias[OC], acc_t y[OC * OH][OW]) {
#pragma HLS INLINE off
        static_assert(HAS_BIAS || OC < 0, "codesign::conv2d: declare HAS_BIAS = true to pass a bias");
        top(x, w, bias, y);
    }

    // Stage 1, array form: the sliding-window generator over the NCHW input. Writes
    // OH*OW*G*SF chunks to s.
    static void swg(const x_t x[IC * H][W], hls::stream<Chunk>& s) {
#pragma HLS INLINE off
        typename window::ArrayRows src(x);
        swg_from(src, s);
    }

    // Stage 1 over any row source (ConvWindow): reads input rows 0 .. H_USED-1.
    template <class SRC>
    static void swg_from(SRC& src, hls::stream<Chunk>& s) {
#pragma HLS INLINE
        Plan plan;
        window::run(src, plan, s);
    }

    // Stage 2, array form: the folded MVAU over the window stream, into y.
    template <class BIAS>
    static void mvau(hls::stream<Chunk>& s, const w_t w[OC][K], BIAS bias, acc_t y[OC * OH][OW]) {
#pragma HLS INLINE off
        ArraySink sink(y);
        mvau_to(s, w, bias, sink);
    }

    // Stage 2 into any accumulator sink (see above): OH*OW*NF*SF iterations at II = 1.
    template <class BIAS, class SINK>
    static void mvau_to(hls::stream<Chunk>& s, const w_t w[OC][K], BIAS bias, SINK& sink) {
#pragma HLS INLINE
#pragma HLS ARRAY_PARTITION variable = w cyclic factor = PE dim = 1
#pragma HLS ARRAY_PARTITION variable = w cyclic factor = SIMD dim = 2
        CODESIGN_STAGE_BUF Chunk win[G][SF];  // the current pixel's window, one im2col row per group
#pragma HLS ARRAY_PARTITION variable = win complete dim = 1
        acc_t acc[PE];
#pragma HLS ARRAY_PARTITION variable = acc complete
        int pix = 0, nf = 0, sf = 0, rd = 0;  // rd: chunks of this pixel read so far
    conv_mvau:
        for (int i = 0; i < OH * OW * NF * SF; ++i) {
#pragma HLS PIPELINE II = 1
            CODESIGN_TRIP();
            if (rd < G * SF) {  // chunk (g, f) = (rd / SF, rd % SF); in time: see the header
                win[rd / SF][rd % SF] = s.read();
                ++rd;
            }
        conv_pe:
            for (int p = 0; p < PE; ++p) {
#pragma HLS UNROLL
                const int o = nf * PE + p;
                if (o < OC) {
                    const int g = o / OCG;
                    const Chunk& ch = win[g][sf];
                    // every partial sum (bias + j products) lies in the AccBits interval
                    acc_t a = (sf == 0) ? acc_t(bias[o]) : acc[p];
                    // lanes_t: products or XNOR-popcount; invalid lanes (padding, tail
                    // beyond K) add 0
                    lanes_t::template conv<K>(a, ch.d, ch.valid, w[o], sf);
                    acc[p] = a;
                    if (sf == SF - 1) sink.write(o, pix, a);
                }
            }
            if (++sf == SF) {
                sf = 0;
                if (++nf == NF) {
                    nf = 0;
                    rd = 0;
                    ++pix;
                }
            }
        }
    }

   private:
    template <class BIAS>
    static void top(const x_t x[IC * H][W], const w_t w[OC][K], BIAS bias, acc_t y[OC * OH][OW]) {
#pragma HLS INLINE
#pragma HLS DATAFLOW
        hls::stream<Chunk> s("conv_window");
#pragma HLS STREAM variable = s depth = 2 * G * SF
        swg(x, s);
        mvau(s, w, bias, y);
    }
};

// §11 convenience entry point: conv2d<...>(x, w, [bias,] y) = Conv2d<...>::run.
template <class X, class Wt, int IC, int H, int W, int OC, int KH, int KW, int SH, int SW, int PT, int PL, int PB,
          int PR, int DH, int DW, int G, int PE, int SIMD>
void conv2d(const typename X::storage x[IC * H][W], const typename Wt::storage w[OC][IC / G * KH * KW],
            typename Conv2d<X, Wt, IC, H, W, OC, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, G, PE, SIMD>::acc_t
                y[Conv2d<X, Wt, IC, H, W, OC, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, G, PE, SIMD>::OC *
                  Conv2d<X, Wt, IC, H, W, OC, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, G, PE, SIMD>::OH]
                 [Conv2d<X, Wt, IC, H, W, OC, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, G, PE, SIMD>::OW]) {
#pragma HLS INLINE
    Conv2d<X, Wt, IC, H, W, OC, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, G, PE, SIMD>::run(x, w, y);
}

}  // namespace codesign

#endif  // CODESIGN_CONV_H
