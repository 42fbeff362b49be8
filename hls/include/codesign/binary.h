// codesign HLS kernel library: binary (XNOR-popcount) dot products, a folded binary
// matrix-vector unit, and multi-thresholding (docs/arithmetic.md §8).
//
// Synthesizable Vitis HLS C++14: static sizes, no dynamic memory, no recursion.
// Bit-exact with codesign.sim.reference.xnor_popcount / .threshold
// (tests/test_csim_nonlinear.py).
//
// Bit layout: a bipolar value v is the bit (v + 1) / 2 (§2, §8); element k of a vector is
// bit k of its ap_uint word (the reference packs bytes little-endian: element k is bit
// k % 8 of byte k / 8, which is the same order).
#ifndef CODESIGN_BINARY_H
#define CODESIGN_BINARY_H

#include <ap_int.h>

#include "codesign/types.h"

namespace codesign {

// Number of set bits of a W-bit word: an adder tree of W one-bit inputs (combinational).
template <int W>
ap_uint<bits_for<0, W>::value - 1> popcount(const ap_uint<W>& x) {
#pragma HLS INLINE
    ap_uint<bits_for<0, W>::value - 1> c = 0;
POPCOUNT_BITS:
    for (int i = 0; i < W; ++i) {
#pragma HLS UNROLL
        c += x[i];
    }
    return c;
}

// Widths of a K-element binary dot product (§8): dot in [-K, K], width ceil(log2(K+1)) + 1.
template <int K>
struct XnorCfg {
    static_assert(K >= 1, "codesign: xnor_popcount needs K >= 1 (docs/arithmetic.md §8)");
    static const int ACC_W = bits_for<-K, K>::value;
    typedef ap_int<ACC_W> acc_t;                          // the dot product
    typedef ap_uint<bits_for<0, K>::value - 1> count_t;   // popcount in 0..K
};

// §8: dot = 2 * popcount(XNOR(a, w)) - K for two K-element bipolar vectors, fully parallel
// (K-bit words hold exactly K elements, so mask_K is implicit). Combinational: 1 cycle
// (K XNOR gates and a K-input popcount tree).
template <int K>
typename XnorCfg<K>::acc_t xnor_popcount(const ap_uint<K>& a, const ap_uint<K>& w) {
#pragma HLS INLINE
    const ap_uint<K> agree_bits = ~(a ^ w);
    const typename XnorCfg<K>::count_t agree = popcount<K>(agree_bits);
    return typename XnorCfg<K>::acc_t(ap_int<XnorCfg<K>::ACC_W + 2>(agree) * 2 - K);
}

// ---------------------------------------------------------------------------
// Multi-thresholding (§8, QONNX/FINN MultiThreshold).
// ---------------------------------------------------------------------------

// Output of NT thresholds: y = #{t : acc >= T[t]} in [0, NT], then code = y + OUT_BIAS,
// or code = 2y - 1 for a bipolar output (NT = 1, OUT_BIAS ignored).
template <int NT, int OUT_BIAS, bool BIPOLAR>
struct ThresholdCfg {
    static_assert(NT >= 1, "codesign: threshold needs NT >= 1 thresholds (docs/arithmetic.md §8)");
    static_assert(!BIPOLAR || NT == 1, "codesign: a bipolar threshold output takes exactly one threshold");
    static const long long LO = BIPOLAR ? -1 : (long long)OUT_BIAS;
    static const long long HI = BIPOLAR ? 1 : (long long)NT + OUT_BIAS;
    static const int OUT_W = bits_for<(LO < 0 ? LO : 0), (HI > 0 ? HI : 0)>::value;
    typedef ap_uint<bits_for<0, NT>::value - 1> count_t;
    typedef ap_int<OUT_W> out_t;
};

// y = sum_t [acc >= T[t]] (§8): NT comparators in parallel and an adder tree, 1 cycle.
// Thresholds need not be distinct; ascending order is the caller's contract (it is not
// needed for the count itself).
template <int NT, int AW, int TW>
ap_uint<bits_for<0, NT>::value - 1> threshold_count(const ap_int<AW>& acc, const ap_int<TW> thr[NT]) {
#pragma HLS INLINE
    ap_uint<bits_for<0, NT>::value - 1> y = 0;
THRESHOLD_CMP:
    for (int t = 0; t < NT; ++t) {
#pragma HLS UNROLL
        y += (acc >= thr[t]) ? 1 : 0;
    }
    return y;
}

// code = y + OUT_BIAS, or 2y - 1 for a bipolar output (§8).
template <int NT, int OUT_BIAS, bool BIPOLAR>
typename ThresholdCfg<NT, OUT_BIAS, BIPOLAR>::out_t threshold_code(
    const typename ThresholdCfg<NT, OUT_BIAS, BIPOLAR>::count_t& y) {
#pragma HLS INLINE
    typedef typename ThresholdCfg<NT, OUT_BIAS, BIPOLAR>::out_t out_t;
    const ap_int<ThresholdCfg<NT, OUT_BIAS, BIPOLAR>::OUT_W + 2> yy = y;
    return BIPOLAR ? out_t(2 * yy - 1) : out_t(yy + OUT_BIAS);
}

// §8: MultiThreshold of one vector of C channels of W-bit accumulators.
//   thr  [TC][NT] ascending thresholds per channel (TC = C) or shared (TC = 1)
// Cycles: C (one channel per cycle, NT comparators in parallel, II = 1).
template <int C, int NT, int TC, int W, int OUT_BIAS, bool BIPOLAR>
void multithreshold(const ap_int<W> acc[C], const ap_int<W> thr[TC][NT],
                    typename ThresholdCfg<NT, OUT_BIAS, BIPOLAR>::out_t y[C]) {
#pragma HLS INLINE off
#pragma HLS ARRAY_PARTITION variable = thr complete dim = 2
    static_assert(TC == 1 || TC == C, "codesign: threshold rows must be 1 (shared) or C (per channel)");
    static_assert(W >= 1 && W <= 64, "codesign: threshold accumulator width must be 1..64");
THRESHOLD_CHANNELS:
    for (int c = 0; c < C; ++c) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        const int tc = TC == 1 ? 0 : c;
        y[c] = threshold_code<NT, OUT_BIAS, BIPOLAR>(threshold_count<NT, W, W>(acc[c], thr[tc]));
    }
}

// §8 over `rows` vectors (channels on the last axis). Cycles: rows * C.
template <int C, int NT, int TC, int W, int OUT_BIAS, bool BIPOLAR>
void multithreshold_rows(int rows, const ap_int<W> acc[][C], const ap_int<W> thr[TC][NT],
                         typename ThresholdCfg<NT, OUT_BIAS, BIPOLAR>::out_t y[][C]) {
THRESHOLD_ROWS:
    for (int r = 0; r < rows; ++r) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 1024
        multithreshold<C, NT, TC, W, OUT_BIAS, BIPOLAR>(acc[r], thr, y[r]);
    }
}

// ---------------------------------------------------------------------------
// Folded binary matrix-vector unit (FINN MVAU in XNOR mode).
// ---------------------------------------------------------------------------

// Folding of an N x K binary weight matrix onto PE processing elements (rows in parallel)
// of SIMD lanes (columns in parallel): NF = N / PE neuron folds, SF = ceil(K / SIMD)
// synapse folds. K need not be a multiple of SIMD: the last synapse fold holds
// LAST = K - (SF-1)*SIMD valid lanes and its other lanes are masked out (mask_K of §8),
// whatever bits they hold.
// Memory layout (FINN's): output channel n = nf*PE + pe; weights[pe][nf*SF + sf] holds the
// SIMD bits of columns sf*SIMD .. sf*SIMD+SIMD-1 of row n; in[sf] likewise for the input.
template <int K, int N, int PE, int SIMD>
struct BinaryMvauCfg {
    static_assert(K >= 1 && N >= 1, "codesign: binary MVAU needs K, N >= 1");
    static_assert(PE >= 1 && N % PE == 0, "codesign: binary MVAU needs PE to divide N");
    static_assert(SIMD >= 1 && SIMD <= K, "codesign: binary MVAU needs 1 <= SIMD <= K");
    static const int NF = N / PE;
    static const int SF = (K + SIMD - 1) / SIMD;
    static const int LAST = K - (SF - 1) * SIMD;  // valid lanes of the last synapse fold
    static const int WDEPTH = NF * SF;            // words per PE weight memory
    static const int ACC_W = XnorCfg<K>::ACC_W;
    typedef typename XnorCfg<K>::acc_t acc_t;
    typedef typename XnorCfg<K>::count_t count_t;
    typedef ap_int<ACC_W + 1> thr_t;  // thresholds clipped to [-K, K+1] (see below)
};

// Lane mask of synapse fold sf: all SIMD lanes, or the LAST valid ones in the last fold.
template <int K, int SIMD>
ap_uint<SIMD> binary_fold_mask(int sf) {
#pragma HLS INLINE
    const int SF = (K + SIMD - 1) / SIMD;
    const int LAST = K - (SF - 1) * SIMD;
    ap_uint<SIMD> m = 0;
    m = ~m;
    if (sf == SF - 1) m = m >> (SIMD - LAST);
    return m;
}

// The folded XNOR-popcount loop shared by both binary MVAUs (FINN's MVAU with an
// activation class): every cycle, each PE XNORs one SIMD-bit input word with its weight
// word and adds the popcount to its running agreement count; after the last synapse fold
// of output channel n = nf*PE + pe it hands dot = 2*agree - K to the output stage,
// `stage.write(n, pe, nf, dot)`.
// Cycles: NF * SF = (N / PE) * ceil(K / SIMD) per input vector (II = 1, + pipeline depth).
template <int K, int N, int PE, int SIMD, class Stage>
void binary_mvau_folds(const ap_uint<SIMD> in[BinaryMvauCfg<K, N, PE, SIMD>::SF],
                       const ap_uint<SIMD> weights[PE][BinaryMvauCfg<K, N, PE, SIMD>::WDEPTH], Stage& stage) {
#pragma HLS INLINE
    typedef BinaryMvauCfg<K, N, PE, SIMD> Cfg;
    typename Cfg::count_t agree[PE];
#pragma HLS ARRAY_PARTITION variable = agree complete
    for (int pe = 0; pe < PE; ++pe) {
#pragma HLS UNROLL
        agree[pe] = 0;
    }
    int nf = 0, sf = 0;
BMVAU_FOLDS:
    for (int i = 0; i < Cfg::NF * Cfg::SF; ++i) {
#pragma HLS PIPELINE II = 1
        CODESIGN_TRIP();
        const ap_uint<SIMD> a = in[sf];
        const ap_uint<SIMD> mask = binary_fold_mask<K, SIMD>(sf);
    BMVAU_PE:
        for (int pe = 0; pe < PE; ++pe) {
#pragma HLS UNROLL
            const ap_uint<SIMD> agree_bits = ~(a ^ weights[pe][nf * Cfg::SF + sf]) & mask;
            const typename Cfg::count_t prev = sf == 0 ? typename Cfg::count_t(0) : agree[pe];
            const typename Cfg::count_t c = prev + popcount<SIMD>(agree_bits);
            agree[pe] = c;
            if (sf == Cfg::SF - 1)
                stage.write(nf * PE + pe, pe, nf, typename Cfg::acc_t(ap_int<Cfg::ACC_W + 2>(c) * 2 - K));
        }
        if (++sf == Cfg::SF) {
            sf = 0;
            ++nf;
        }
    }
}

namespace detail {
template <class ACC>
struct DotStage {  // binary_mvau: the dot products themselves
    ACC* out;
    void write(int n, int, int, const ACC& dot) { out[n] = dot; }
};

template <class CFG, int NT, int OUT_BIAS, bool BIPOLAR>
struct ThresholdStage {  // binary_mvau_threshold: MultiThreshold of each dot product
    typedef typename ThresholdCfg<NT, OUT_BIAS, BIPOLAR>::out_t out_t;
    const typename CFG::thr_t (*thresholds)[CFG::NF][NT];
    out_t* out;
    void write(int n, int pe, int nf, const typename CFG::acc_t& dot) {
        out[n] = threshold_code<NT, OUT_BIAS, BIPOLAR>(
            threshold_count<NT, CFG::ACC_W, CFG::ACC_W + 1>(dot, thresholds[pe][nf]));
    }
};
}  // namespace detail

// §8: out[n] = 2 * popcount(XNOR(in, W[n]) & mask_K) - K for the N rows of W, one input
// vector. Cycles: NF * SF = (N / PE) * ceil(K / SIMD) per input vector (II = 1, + pipeline
// depth). Resources: PE * SIMD XNOR gates and PE popcount trees of SIMD inputs; PE weight
// memories of NF*SF words of SIMD bits.
template <int K, int N, int PE, int SIMD>
void binary_mvau(const ap_uint<SIMD> in[BinaryMvauCfg<K, N, PE, SIMD>::SF],
                 const ap_uint<SIMD> weights[PE][BinaryMvauCfg<K, N, PE, SIMD>::WDEPTH],
                 typename BinaryMvauCfg<K, N, PE, SIMD>::acc_t out[N]) {
#pragma HLS INLINE off
#pragma HLS ARRAY_PARTITION variable = weights complete dim = 1
#pragma HLS ARRAY_PARTITION variable = out cyclic factor = PE
    detail::DotStage<typename BinaryMvauCfg<K, N, PE, SIMD>::acc_t> stage = {out};
    binary_mvau_folds<K, N, PE, SIMD>(in, weights, stage);
}

// §8 over `reps` input vectors. Cycles: reps * NF * SF.
template <int K, int N, int PE, int SIMD>
void binary_mvau_batch(int reps, const ap_uint<SIMD> in[][BinaryMvauCfg<K, N, PE, SIMD>::SF],
                       const ap_uint<SIMD> weights[PE][BinaryMvauCfg<K, N, PE, SIMD>::WDEPTH],
                       typename BinaryMvauCfg<K, N, PE, SIMD>::acc_t out[][N]) {
BMVAU_REPS:
    for (int r = 0; r < reps; ++r) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 1024
        binary_mvau<K, N, PE, SIMD>(in[r], weights, out[r]);
    }
}

// §8: binary MVAU with the MultiThreshold activation fused (FINN's MVAU with thresholds):
// out[n] = code of #{t : dot_n >= thr[n][t]}. The thresholds of output channel
// n = nf*PE + pe are thresholds[pe][nf][0..NT-1], ascending, clipped at compile time to
// [-K, K+1] (for dot in [-K, K]: dot >= T  <=>  dot >= clip(T, -K, K+1)), so they fit
// ACC_W + 1 bits. Cycles: NF * SF per input vector, as binary_mvau.
template <int K, int N, int PE, int SIMD, int NT, int OUT_BIAS, bool BIPOLAR>
void binary_mvau_threshold(
    const ap_uint<SIMD> in[BinaryMvauCfg<K, N, PE, SIMD>::SF],
    const ap_uint<SIMD> weights[PE][BinaryMvauCfg<K, N, PE, SIMD>::WDEPTH],
    const typename BinaryMvauCfg<K, N, PE, SIMD>::thr_t thresholds[PE][BinaryMvauCfg<K, N, PE, SIMD>::NF][NT],
    typename ThresholdCfg<NT, OUT_BIAS, BIPOLAR>::out_t out[N]) {
#pragma HLS INLINE off
#pragma HLS ARRAY_PARTITION variable = weights complete dim = 1
#pragma HLS ARRAY_PARTITION variable = thresholds complete dim = 1
#pragma HLS ARRAY_PARTITION variable = thresholds complete dim = 3
#pragma HLS ARRAY_PARTITION variable = out cyclic factor = PE
    detail::ThresholdStage<BinaryMvauCfg<K, N, PE, SIMD>, NT, OUT_BIAS, BIPOLAR> stage = {thresholds, out};
    binary_mvau_folds<K, N, PE, SIMD>(in, weights, stage);
}

// Fused MVAU + thresholds over `reps` input vectors. Cycles: reps * NF * SF.
template <int K, int N, int PE, int SIMD, int NT, int OUT_BIAS, bool BIPOLAR>
void binary_mvau_threshold_batch(
    int reps, const ap_uint<SIMD> in[][BinaryMvauCfg<K, N, PE, SIMD>::SF],
    const ap_uint<SIMD> weights[PE][BinaryMvauCfg<K, N, PE, SIMD>::WDEPTH],
    const typename BinaryMvauCfg<K, N, PE, SIMD>::thr_t thresholds[PE][BinaryMvauCfg<K, N, PE, SIMD>::NF][NT],
    typename ThresholdCfg<NT, OUT_BIAS, BIPOLAR>::out_t out[][N]) {
BMVAU_T_REPS:
    for (int r = 0; r < reps; ++r) {
#pragma HLS LOOP_TRIPCOUNT min = 1 max = 1024
        binary_mvau_threshold<K, N, PE, SIMD, NT, OUT_BIAS, BIPOLAR>(in[r], weights, thresholds, out[r]);
    }
}

}  // namespace codesign

#endif  // CODESIGN_BINARY_H
