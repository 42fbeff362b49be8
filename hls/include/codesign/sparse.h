// codesign HLS kernel library: block-sparse MVAUs for SIMD-structured pruning
// (docs/arithmetic.md §2 matmul and §11 convolution; docs/dataflow.md "Sparse MVAU").
//
// Synthesizable Vitis HLS C++14, header only. The arithmetic is the dense ops' (§2, §11):
// the same sums, the same exact accumulator width AccBits<A, W, K, B_LO, B_HI>; sparse
// storage only decides which PE x SIMD weight blocks are read. Bit-exact with
// codesign.sim.reference.matmul / conv2d (tests/test_sparse.py).
//
// Matrix view (codesign.quantize.pruning): a layer's weight is W[OC][K], OC output
// channels, K the dot-product length; matmul's w[K][N] is W = w^T (OC = N), conv's
// w[OC][IC/G][KH][KW] is W[o][k] with k = (c*KH + u)*KW + v. Block (rg, cg) is rows
// rg*PE .. rg*PE+PE-1 and columns cg*SIMD .. cg*SIMD+SIMD-1 (the last row/column block may
// be partial: its missing lanes hold weight 0). There are NRG = ceil(OC/PE) row groups and
// CG = ceil(K/SIMD) column groups.
//
// Compressed storage (CSR over blocks; codesign.hls.sparse.pack_sparse builds it):
//   row_ptr[NRG + 1]        stored blocks of row group rg are rg's entries
//                           row_ptr[rg] .. row_ptr[rg+1]-1; row_ptr[0] = 0, row_ptr[NRG] = NB
//   col_idx[NB]             column group of each stored block, strictly increasing per row group
//   vals[NB][PE][SIMD]      the block's weights, vals[b][p][j] = W[rg*PE + p][col_idx[b]*SIMD + j]
// Only blocks with at least one non-zero weight are stored (NB of them). NE is the number
// of row groups with no stored block.
//
// Schedule: per input vector (matmul row / conv output pixel) the MVAU runs one pipelined
// (II = 1) iteration per stored block, row group by row group; the PE accumulators start
// at the bias in a row group's first iteration and are written after its last. A row group
// with no stored block still has to emit its PE outputs (= bias): it costs exactly ONE
// bias-only iteration. So
//   iterations per vector T = NB + NE,
// every pruned block of a row group that keeps >= 1 block is exactly one skipped cycle,
// and a fully pruned row group costs 1 cycle instead of CG. (Dense: NRG * CG.)
// Cycles = vectors * T + D, D the pipeline depth (as the dense Mvau: about
// 3 + L_mul + ceil(log2(SIMD))). CODESIGN_TRIP() counts the vectors * T iterations.
#ifndef CODESIGN_SPARSE_H
#define CODESIGN_SPARSE_H

#include <ap_int.h>
#include <hls_stream.h>

#include "codesign/conv.h"
#include "codesign/matmul.h"
#include "codesign/types.h"

namespace codesign {

// Index types and a C-simulation consistency check of the CSR arrays, shared by both units.
template <int NRG, int CG, int NB, int NE>
struct SparsePattern {
    static_assert(NRG >= 1 && CG >= 1, "codesign::sparse: at least one row and one column group");
    static_assert(NB >= 0 && NB <= (long long)NRG * CG, "codesign::sparse: 0 <= NB <= NRG * CG stored blocks");
    static_assert(NE >= 0 && NE <= NRG && (NE == NRG || NB >= NRG - NE) && NB - (NRG - NE) <= (long long)(NRG - NE) * (CG - 1),
                  "codesign::sparse: NE empty row groups do not fit NB stored blocks");
    static const int NBA = NB > 0 ? NB : 1;  // array extent (a C++ array needs >= 1 element)
    static const int T = NB + NE;            // iterations per vector
    typedef ap_uint<bits_for<0, NB>::value> ptr_t;
    typedef ap_uint<bits_for<0, CG - 1>::value> col_t;

    // nullptr when row_ptr / col_idx describe NB blocks with NE empty row groups, column
    // indices < CG and strictly increasing per row group; else what is wrong. C simulation
    // only (harnesses call it before running the kernel).
    static const char* check(const ptr_t row_ptr[NRG + 1], const col_t col_idx[NBA]) {
        if (row_ptr[0] != 0) return "row_ptr[0] != 0";
        if ((int)row_ptr[NRG] != NB) return "row_ptr[NRG] != NB";
        int empty = 0;
        for (int rg = 0; rg < NRG; ++rg) {
            const int b0 = row_ptr[rg], b1 = row_ptr[rg + 1];
            if (b1 < b0) return "row_ptr decreases";
            if (b1 == b0) ++empty;
            for (int b = b0; b < b1; ++b) {
                if ((int)col_idx[b] >= CG) return "col_idx >= CG";
                if (b > b0 && col_idx[b] <= col_idx[b - 1]) return "col_idx not increasing within a row group";
            }
        }
        return empty == NE ? nullptr : "NE differs from the row groups without a stored block";
    }
};

// §2 with block-sparse constant weights: out[r][n] = sum_k a[r][k] * w[k][n] (+ bias[n]),
// w given compressed as W = w^T (header). Parameters as codesign::Mvau (matmul.h), except:
//   PE, SIMD   any >= 1 (the last row/column group may be partial: N % PE and K % SIMD
//              need not be 0; missing weights are stored as 0, missing lanes write nothing)
//   NB, NE     stored blocks and empty row groups (the loop's static trip count NB + NE)
// W must be signed multi-bit (a bipolar weight has no 0, so it cannot be pruned).
// Loop: ROWS * (NB + NE) iterations at II = 1, each PE x SIMD multiply-accumulates of one
// stored block (reading a[r][col_idx*SIMD .. +SIMD-1]) or one bias-only iteration.
// Memory: vals is partitioned completely along PE and SIMD (one stored block per cycle),
// a completely along k (the block's column group is data-dependent).
template <class A, class W, int K, int N, int PE, int SIMD, int NB, int NE, bool HAS_BIAS = false,
          long long B_LO = (HAS_BIAS ? -2147483648LL : 0LL), long long B_HI = (HAS_BIAS ? 2147483647LL : 0LL),
          int ACC_BITS = 0>
struct SparseMvau {
    static_assert(K >= 1 && N >= 1, "codesign::SparseMvau: K and N must be >= 1");
    static_assert(PE >= 1 && PE <= N && SIMD >= 1, "codesign::SparseMvau: 1 <= PE <= N and SIMD >= 1");
    static_assert(A::bits >= 1 && A::bits <= 8, "codesign::SparseMvau: activations have 1..8 bits (§2)");
    static_assert(A::bits > 1 || A::bipolar, "codesign::SparseMvau: 1-bit activations are bipolar (signed)");
    static_assert(W::bits >= 2 && W::bits <= 8 && W::is_signed,
                  "codesign::SparseMvau: weights are signed with 2..8 bits (bipolar weights cannot be pruned)");
    static_assert(B_LO <= B_HI && B_LO >= -2147483648LL && B_HI <= 2147483647LL,
                  "codesign::SparseMvau: bias range must lie in int32");
    static_assert(HAS_BIAS || (B_LO == 0 && B_HI == 0), "codesign::SparseMvau: bias range without a bias");

    static const int NRG = (N + PE - 1) / PE;
    static const int CG = (K + SIMD - 1) / SIMD;
    typedef SparsePattern<NRG, CG, NB, NE> pattern;
    static const int NBA = pattern::NBA;
    static const int T = pattern::T;
    static const int required_acc_bits = AccBits<A, W, K, B_LO, B_HI>::value;
    static const int acc_bits = ACC_BITS > 0 ? ACC_BITS : required_acc_bits;
    static_assert(ACC_BITS == 0 || (ACC_BITS >= required_acc_bits && ACC_BITS <= 48),
                  "codesign::SparseMvau: an accumulator override must be at least AccBits and at most 48 bits");

    typedef typename A::storage a_t;
    typedef typename W::storage w_t;
    typedef typename pattern::ptr_t ptr_t;
    typedef typename pattern::col_t col_t;
    typedef ap_int<32> bias_t;
    typedef ap_int<acc_bits> acc_t;
    typedef detail::Mul<A, W> mul_t;

    static long long cycles_per_row() { return T; }
    template <int ROWS>
    static long long iterations() { return (long long)ROWS * T; }

    template <int ROWS>
    static void run(const a_t a[ROWS][K], const ptr_t row_ptr[NRG + 1], const col_t col_idx[NBA],
                    const w_t vals[NBA][PE][SIMD], acc_t out[ROWS][N]) {
#pragma HLS INLINE off
        static_assert(!HAS_BIAS || ROWS < 0, "codesign::SparseMvau: HAS_BIAS is set, pass the bias");
        loop<ROWS>(a, row_ptr, col_idx, vals, detail::NoBias(), out);
    }

    template <int ROWS>
    static void run(const a_t a[ROWS][K], const ptr_t row_ptr[NRG + 1], const col_t col_idx[NBA],
                    const w_t vals[NBA][PE][SIMD], const bias_t bias[N], acc_t out[ROWS][N]) {
#pragma HLS INLINE off
        static_assert(HAS_BIAS || ROWS < 0, "codesign::SparseMvau: declare HAS_BIAS = true to pass a bias");
        loop<ROWS>(a, row_ptr, col_idx, vals, bias, out);
    }

   private:
    template <int ROWS, class BIAS>
    static void loop(const a_t a[ROWS][K], const ptr_t row_ptr[NRG + 1], const col_t col_idx[NBA],
                     const w_t vals[NBA][PE][SIMD], BIAS bias, acc_t out[ROWS][N]) {
#pragma HLS INLINE
#pragma HLS ARRAY_PARTITION variable = a complete dim = 2
#pragma HLS ARRAY_PARTITION variable = vals complete dim = 2
#pragma HLS ARRAY_PARTITION variable = vals complete dim = 3
#pragma HLS ARRAY_PARTITION variable = out cyclic factor = PE dim = 2
        static_assert(ROWS >= 1, "codesign::SparseMvau: ROWS must be >= 1");
        static_assert((long long)ROWS * T < 2147483647LL, "codesign::SparseMvau: too many iterations");
        acc_t acc[PE];
#pragma HLS ARRAY_PARTITION variable = acc complete
        int r = 0, rg = 0, b = 0;  // vector, row group, next stored block
    sparse_mvau:
        for (int i = 0; i < ROWS * T; ++i) {
#pragma HLS PIPELINE II = 1
            CODESIGN_TRIP();
            const int end = row_ptr[rg + 1];
            const bool has = b < end;                       // false: an empty row group's bias-only iteration
            const bool first = !has || b == (int)row_ptr[rg];
            const bool last = !has || b + 1 == end;
            const int bb = has ? b : 0;
            const int c = has ? (int)col_idx[bb] : 0;
        sparse_pe:
            for (int p = 0; p < PE; ++p) {
#pragma HLS UNROLL
                const int n = rg * PE + p;
                // every partial sum (bias + a subset of the K products) lies in the AccBits interval
                acc_t s = first ? acc_t(bias[n < N ? n : N - 1]) : acc[p];
                if (has) {
                sparse_simd:
                    for (int j = 0; j < SIMD; ++j) {
#pragma HLS UNROLL
                        const int k = c * SIMD + j;  // k >= K: a padding lane, weight 0
                        s += mul_t::prod(a[r][k < K ? k : K - 1], vals[bb][p][j]);
                    }
                }
                acc[p] = s;
                if (last && n < N) out[r][n] = s;
            }
            if (has) ++b;
            if (last && ++rg == NRG) {
                rg = 0;
                b = 0;
                ++r;
            }
        }
    }
};

// §11 with block-sparse constant weights (W[o][k], k = (c*KH + u)*KW + v, header): conv.h's
// sliding-window generator (ConvWindow, with the sparse Plan below) and an MVAU, where the
// window stream carries ONE SIMD-wide chunk per schedule iteration: for every output pixel,
// for each stored block of row group rg (in CSR order) the chunk of the pixel's im2col row
// at that block's column group (from the line buffer, which serves any column), and one
// empty chunk for a row group without stored blocks. Both stages therefore run vectors *
// (NB + NE) iterations (the generator adds its H_used*IC*W line-buffer loads); the MVAU
// needs no window buffer. Template parameters as codesign::Conv2d, plus NB, NE (header).
// PE: 1 <= PE <= OC/G and, with G > 1, PE | OC/G (a row group's channels share one group's
// window); SIMD >= 1.
template <class X, class Wt, int IC, int H, int W, int OC, int KH, int KW, int SH, int SW, int PT, int PL, int PB,
          int PR, int DH, int DW, int G, int PE, int SIMD, int NB, int NE, bool HAS_BIAS = false,
          long long B_LO = (HAS_BIAS ? -2147483648LL : 0LL), long long B_HI = (HAS_BIAS ? 2147483647LL : 0LL),
          int ACC_BITS = 0>
struct SparseConv2d {
    typedef ConvWindow<X, IC, H, W, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, G, SIMD> window;  // conv.h's generator
    typedef typename window::geom geom;
    static const int OH = geom::OH, OW = geom::OW, EH = geom::EH;
    static const int ICG = IC / G, OCG = OC / G;
    static const int K = ICG * KH * KW;
    static const int NRG = (OC + PE - 1) / PE;
    static const int CG = (K + SIMD - 1) / SIMD;
    typedef SparsePattern<NRG, CG, NB, NE> pattern;
    static const int NBA = pattern::NBA;
    static const int T = pattern::T;

    static_assert(IC >= 1 && OC >= 1 && G >= 1 && IC % G == 0 && OC % G == 0,
                  "codesign::sparse_conv2d: IC and OC must be multiples of the groups G");
    static_assert(PE >= 1 && PE <= OCG && (G == 1 || OCG % PE == 0),
                  "codesign::sparse_conv2d: 1 <= PE <= OC/G, and PE | OC/G when G > 1");
    static_assert(SIMD >= 1, "codesign::sparse_conv2d: SIMD must be >= 1");
    static_assert(X::bits >= 1 && X::bits <= 8, "codesign::sparse_conv2d: activations have 1..8 bits (§11)");
    static_assert(X::bits > 1 || X::bipolar, "codesign::sparse_conv2d: 1-bit activations are bipolar (signed)");
    static_assert(Wt::bits >= 2 && Wt::bits <= 8 && Wt::is_signed,
                  "codesign::sparse_conv2d: weights are signed with 2..8 bits (bipolar weights cannot be pruned)");
    static_assert(B_LO <= B_HI && B_LO >= -2147483648LL && B_HI <= 2147483647LL,
                  "codesign::sparse_conv2d: bias range must lie in int32");
    static_assert(HAS_BIAS || (B_LO == 0 && B_HI == 0), "codesign::sparse_conv2d: bias range without a bias");
    static_assert((long long)OH * OW * T < 2147483647LL, "codesign::sparse_conv2d: too many iterations");

    static const int required_acc_bits = AccBits<X, Wt, K, B_LO, B_HI>::value;
    static const int acc_bits = ACC_BITS > 0 ? ACC_BITS : required_acc_bits;
    static_assert(ACC_BITS == 0 || (ACC_BITS >= required_acc_bits && ACC_BITS <= 48),
                  "codesign::sparse_conv2d: an accumulator override must be at least AccBits and at most 48 bits");

    typedef typename X::storage x_t;
    typedef typename Wt::storage w_t;
    typedef typename pattern::ptr_t ptr_t;
    typedef typename pattern::col_t col_t;
    typedef ap_int<32> bias_t;
    typedef ap_int<acc_bits> acc_t;
    typedef detail::Mul<X, Wt> mul_t;

    // One schedule iteration's chunk: codes, valid lanes, and where it sits in the schedule.
    struct Chunk {
        x_t d[SIMD];
        ap_uint<SIMD> valid;
        bool has;    // false: a bias-only iteration of an empty row group
        bool first;  // first iteration of its row group: start from the bias
        bool last;   // last iteration of its row group: write the PE outputs
    };

    // The sparse plan (ConvWindow): per output pixel of the row, the schedule's chunks: for
    // each stored block of row group rg (CSR order) the chunk of the pixel's im2col row at
    // the block's column group, one empty chunk (has = false) for a row group without one.
    struct Plan {
        typedef SparseConv2d::Chunk Chunk;
        static const int PER_ROW = OW * T;
        const ptr_t* row_ptr;
        const col_t* col_idx;
        int ow, rg, b;  // output column, row group, next stored block
        Plan(const ptr_t rp[NRG + 1], const col_t ci[NBA]) : row_ptr(rp), col_idx(ci), ow(0), rg(0), b(0) {}
        CODESIGN_ALWAYS_INLINE void next(const x_t lb[EH][IC][W], int top, Chunk& ch) {
            const int end = row_ptr[rg + 1];
            ch.has = b < end;
            ch.first = !ch.has || b == (int)row_ptr[rg];
            ch.last = !ch.has || b + 1 == end;
            const int cg = ch.has ? (int)col_idx[b] : 0;
            const int g = (rg * PE) / OCG;  // the row group's conv group (PE | OCG when G > 1)
            window::lanes(lb, top, ow, g, cg, ch.has, ch.d, ch.valid);
            if (ch.has) ++b;
            if (ch.last && ++rg == NRG) {
                rg = 0;
                b = 0;
                if (++ow == OW) ow = 0;
            }
        }
    };

    // The cost model's count (MVAU, II = 1 iterations) and the generator's.
    static long long mvau_cycles() { return (long long)OH * OW * T; }
    static long long swg_cycles() { return (long long)geom::H_USED * IC * W + (long long)OH * Plan::PER_ROW; }

    static void run(const x_t x[IC * H][W], const ptr_t row_ptr[NRG + 1], const col_t col_idx[NBA],
                    const w_t vals[NBA][PE][SIMD], acc_t y[OC * OH][OW]) {
#pragma HLS INLINE off
        static_assert(!HAS_BIAS || OC < 0, "codesign::sparse_conv2d: HAS_BIAS is set, pass the bias");
        top(x, row_ptr, col_idx, vals, detail::NoBias(), y);
    }

    static void run(const x_t x[IC * H][W], const ptr_t row_ptr[NRG + 1], const col_t col_idx[NBA],
                    const w_t vals[NBA][PE][SIMD], const bias_t bias[OC], acc_t y[OC * OH][OW]) {
#pragma HLS INLINE off
        static_assert(HAS_BIAS || OC < 0, "codesign::sparse_conv2d: declare HAS_BIAS = true to pass a bias");
        top(x, row_ptr, col_idx, vals, bias, y);
    }

    // Stage 1: conv.h's generator (ConvWindow) over the NCHW input with the sparse plan;
    // emits OH*OW*T chunks in schedule order.
    static void swg(const x_t x[IC * H][W], const ptr_t row_ptr[NRG + 1], const col_t col_idx[NBA],
                    hls::stream<Chunk>& s) {
#pragma HLS INLINE off
        typename window::ArrayRows src(x);
        Plan plan(row_ptr, col_idx);
        window::run(src, plan, s);
    }

    // Stage 2: the MVAU over the schedule-ordered chunk stream.
    template <class BIAS>
    static void mvau(hls::stream<Chunk>& s, const w_t vals[NBA][PE][SIMD], BIAS bias, acc_t y[OC * OH][OW]) {
#pragma HLS INLINE off
#pragma HLS ARRAY_PARTITION variable = vals complete dim = 2
#pragma HLS ARRAY_PARTITION variable = vals complete dim = 3
        acc_t acc[PE];
#pragma HLS ARRAY_PARTITION variable = acc complete
        int pix = 0, rg = 0, b = 0;
    sconv_mvau:
        for (int i = 0; i < OH * OW * T; ++i) {
#pragma HLS PIPELINE II = 1
            CODESIGN_TRIP();
            const Chunk ch = s.read();
            const int bb = ch.has ? b : 0;
        sconv_pe:
            for (int p = 0; p < PE; ++p) {
#pragma HLS UNROLL
                const int o = rg * PE + p;
                acc_t a = ch.first ? acc_t(bias[o < OC ? o : OC - 1]) : acc[p];
            sconv_simd:
                for (int j = 0; j < SIMD; ++j) {
#pragma HLS UNROLL
                    if (ch.valid[j]) a += mul_t::prod(ch.d[j], vals[bb][p][j]);
                }
                acc[p] = a;
                if (ch.last && o < OC) y[o * OH + pix / OW][pix % OW] = a;
            }
            if (ch.has) ++b;
            if (ch.last && ++rg == NRG) {
                rg = 0;
                b = 0;
                ++pix;
            }
        }
    }

   private:
    template <class BIAS>
    static void top(const x_t x[IC * H][W], const ptr_t row_ptr[NRG + 1], const col_t col_idx[NBA],
                    const w_t vals[NBA][PE][SIMD], BIAS bias, acc_t y[OC * OH][OW]) {
#pragma HLS INLINE
#pragma HLS DATAFLOW
        hls::stream<Chunk> s("sparse_conv_window");
#pragma HLS STREAM variable = s depth = 4
        swg(x, row_ptr, col_idx, s);
        mvau(s, vals, bias, y);
    }
};

// §2 convenience entry point: sparse_matmul<...>(a, row_ptr, col_idx, vals, out).
template <class A, class W, int K, int N, int PE, int SIMD, int NB, int NE, int ROWS>
void sparse_matmul(const typename A::storage a[ROWS][K],
                   const typename SparseMvau<A, W, K, N, PE, SIMD, NB, NE>::ptr_t row_ptr[(N + PE - 1) / PE + 1],
                   const typename SparseMvau<A, W, K, N, PE, SIMD, NB, NE>::col_t col_idx[NB > 0 ? NB : 1],
                   const typename W::storage vals[NB > 0 ? NB : 1][PE][SIMD],
                   typename SparseMvau<A, W, K, N, PE, SIMD, NB, NE>::acc_t out[ROWS][N]) {
#pragma HLS INLINE
    SparseMvau<A, W, K, N, PE, SIMD, NB, NE>::template run<ROWS>(a, row_ptr, col_idx, vals, out);
}

// §11 convenience entry point: sparse_conv2d<...>(x, row_ptr, col_idx, vals, y) = SparseConv2d<...>::run.
template <class X, class Wt, int IC, int H, int W, int OC, int KH, int KW, int SH, int SW, int PT, int PL, int PB,
          int PR, int DH, int DW, int G, int PE, int SIMD, int NB, int NE>
void sparse_conv2d(
    const typename X::storage x[IC * H][W],
    const typename SparseConv2d<X, Wt, IC, H, W, OC, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, G, PE, SIMD, NB,
                                NE>::ptr_t row_ptr[(OC + PE - 1) / PE + 1],
    const typename SparseConv2d<X, Wt, IC, H, W, OC, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, G, PE, SIMD, NB,
                                NE>::col_t col_idx[NB > 0 ? NB : 1],
    const typename Wt::storage vals[NB > 0 ? NB : 1][PE][SIMD],
    typename SparseConv2d<X, Wt, IC, H, W, OC, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, G, PE, SIMD, NB, NE>::acc_t
        y[OC * SparseConv2d<X, Wt, IC, H, W, OC, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, G, PE, SIMD, NB, NE>::OH]
         [SparseConv2d<X, Wt, IC, H, W, OC, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, G, PE, SIMD, NB, NE>::OW]) {
#pragma HLS INLINE
    SparseConv2d<X, Wt, IC, H, W, OC, KH, KW, SH, SW, PT, PL, PB, PR, DH, DW, G, PE, SIMD, NB, NE>::run(
        x, row_ptr, col_idx, vals, y);
}

}  // namespace codesign

#endif  // CODESIGN_SPARSE_H
