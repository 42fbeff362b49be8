// codesign HLS kernel library: folded integer matrix multiply, FINN MVAU style
// (docs/arithmetic.md §2).
//
// Synthesizable Vitis HLS C++14, header only.
//
//   acc[r][n] = sum_k a[r][k] * w[k][n] (+ bias[n]), exact.
//
// A: activation code type (IntT, 1..8 bits: signed, unsigned or bipolar).
// W: weight code type (IntT, 1..8 bits: signed or bipolar). The same template
//    computes activation x activation products (attention Q.K^T with int8 x
//    int8, softmax(.).V with uint8 x int8): `w` is then a runtime array.
// Bipolar operands are stored as one bit b = (v + 1) / 2; a product with a
// bipolar operand is a conditional negation (b ? a : -a).
//
// Binary layers (bipolar x bipolar, §8): the SIMD lanes of one PE are not
// multiplied and added one by one. The lanes' stored bits are packed into an
// ap_uint<SIMD> word (lane j = bit j, the order of §8), XNORed with the packed
// weight bits and counted: lane sum = 2 * popcount(XNOR(a, w) & valid) -
// popcount(valid), the FINN XNOR-popcount datapath (SIMD XNOR gates and one
// SIMD-input popcount tree per PE instead of SIMD +-1 products and an adder
// tree). `valid` masks lanes that are not elements of the dot product (the conv's
// padded taps and the tail beyond K, conv.h; every lane here since SIMD | K), which
// therefore contribute 0. The weights keep their storage (w_t = ap_uint<1> per
// element, partitioned per lane): packing SIMD partitioned 1-bit lanes into a word
// is wiring, so no packed copy is stored. detail::LaneSum selects the datapath by
// template specialization; everything else (accumulator width, bias, folding, one
// II = 1 iteration per (row, output fold, input fold)) is the same for both, and
// the per-fold lane sum is one exact partial sum, so the AccBits bound still holds.
// In C simulation each XNOR-popcount word evaluation counts one
// CODESIGN_XNOR_WORD() (csim_xnor_words()), so tests can check that a binary
// layer takes this datapath (PE words per iteration in Mvau).
//
// Accumulator: ap_int<AccBits<A, W, K, B_LO, B_HI>::value> (types.h), the
// smallest width that holds the exact reachable range of every partial sum
// (§2), so no input can overflow it. ACC_BITS > 0 overrides it with a wider
// accumulator (e.g. to align to a DSP cascade); narrower is a compile error.
#ifndef CODESIGN_MATMUL_H
#define CODESIGN_MATMUL_H

#include "codesign/binary.h"
#include "types.h"

namespace codesign {

// ---------------------------------------------------------------------------
// Probe of the binary datapath: every evaluation of an XNOR-popcount lane word
// (detail::LaneSum<..., true>) calls CODESIGN_XNOR_WORD() once. In C simulation
// this counts them (csim_xnor_words()); in synthesis it expands to nothing. A
// multiplying datapath never counts, so a bipolar x bipolar layer whose count
// stays 0 did not take the XNOR-popcount path.
// ---------------------------------------------------------------------------
#ifndef __SYNTHESIS__
inline unsigned long long& csim_xnor_words() {
    static unsigned long long n = 0;
    return n;
}
#define CODESIGN_XNOR_WORD() (++::codesign::csim_xnor_words())
#else
#define CODESIGN_XNOR_WORD() ((void)0)
#endif

namespace detail {

// Width of one product of an A code and a W code: the corner products (§2).
template <class A, class W>
struct ProdBits {
    static const long long lo = AccBits<A, W, 1>::p_lo;
    static const long long hi = AccBits<A, W, 1>::p_hi;
    static const int value = bits_for<lo, hi>::value;
};

// One product a*w of two stored codes (§2), by operand kind.
template <class A, class W, bool A_BIPOLAR = A::bipolar, bool W_BIPOLAR = W::bipolar>
struct Mul {  // multi-bit x multi-bit: a DSP / LUT multiplier
#ifdef __SYNTHESIS__
    typedef ap_int<ProdBits<A, W>::value> prod_t;
#else
    // C-simulation forms the same exact product in int (|a*w| <= 2^15 for codes of
    // at most 8 bits): g++ runs ap_int's operator* and width conversions about 5x
    // slower, and the accumulator below adds the identical integer either way.
    typedef int prod_t;
#endif
    CODESIGN_ALWAYS_INLINE static prod_t prod(typename A::storage a, typename W::storage w) {
#pragma HLS INLINE
#ifdef __SYNTHESIS__
        return prod_t(A::value(a) * W::value(w));
#else
        return int(A::value(a)) * int(W::value(w));
#endif
    }
};

template <class A, class W>
struct Mul<A, W, false, true> {  // multi-bit activation x bipolar weight: b ? a : -a
    typedef ap_int<ProdBits<A, W>::value> prod_t;
    CODESIGN_ALWAYS_INLINE static prod_t prod(typename A::storage a, typename W::storage w) {
#pragma HLS INLINE
        const prod_t v = A::value(a);
        return w == 1 ? v : prod_t(-v);
    }
};

template <class A, class W>
struct Mul<A, W, true, false> {  // bipolar activation x multi-bit weight: b ? w : -w
    typedef ap_int<ProdBits<A, W>::value> prod_t;
    CODESIGN_ALWAYS_INLINE static prod_t prod(typename A::storage a, typename W::storage w) {
#pragma HLS INLINE
        const prod_t v = W::value(w);
        return a == 1 ? v : prod_t(-v);
    }
};

template <class A, class W>
struct Mul<A, W, true, true> {  // bipolar x bipolar: XNOR -> +1 / -1
    typedef ap_int<2> prod_t;
    CODESIGN_ALWAYS_INLINE static prod_t prod(typename A::storage a, typename W::storage w) {
#pragma HLS INLINE
        return a == w ? prod_t(1) : prod_t(-1);
    }
};

// The SIMD-lane sum of one MVAU iteration for one PE (§2), read straight from the
// kernels' arrays (k = sf * SIMD + j is lane j's element):
//   mvau<K, N>(s, a_row, w, sf, n)   s += sum_j a_row[k] * w[k][n]             (Mvau: all
//                                    lanes valid, SIMD | K)
//   conv<K>(s, d, valid, w_row, sf)  s += sum_j [valid bit j] d[j] * w_row[k]  (Conv2d's
//                                    window chunk; invalid lanes add 0, k >= K is invalid)
// Generic operands: one product per lane (Mul), each added to the accumulator s.
// `xnor` tells which datapath the kernel was built with.
template <class A, class W, int SIMD, bool BINARY = (A::bipolar && W::bipolar)>
struct LaneSum {
    static const bool xnor = false;
    typedef Mul<A, W> mul_t;

    template <int K, int N, class ACC>
    CODESIGN_ALWAYS_INLINE static void mvau(ACC& s, const typename A::storage a_row[K],
                                            const typename W::storage w[K][N], int sf, int n) {
#pragma HLS INLINE
    lane_mul:
        for (int j = 0; j < SIMD; ++j) {
#pragma HLS UNROLL
            const int k = sf * SIMD + j;
            s += mul_t::prod(a_row[k], w[k][n]);
        }
    }

    template <int K, class ACC>
    CODESIGN_ALWAYS_INLINE static void conv(ACC& s, const typename A::storage d[SIMD], const ap_uint<SIMD>& valid,
                                            const typename W::storage w_row[K], int sf) {
#pragma HLS INLINE
    lane_mul_masked:
        for (int j = 0; j < SIMD; ++j) {
#pragma HLS UNROLL
            const int k = sf * SIMD + j;
            if (valid[j]) s += mul_t::prod(d[j], w_row[k < K ? k : 0]);
        }
    }
};

// Bipolar x bipolar (§8): XNOR-popcount over the packed lane bits. A lane whose bits
// agree is +1, one whose bits differ is -1, so over the valid lanes
//   sum = agree - (n_valid - agree) = 2 * popcount(XNOR(a, w) & valid) - popcount(valid),
// in [-SIMD, SIMD]; invalid lanes add 0 whatever bits they hold. Packing lane j's stored
// bit (v + 1) / 2 into bit j of an ap_uint<SIMD> word is wiring.
template <class A, class W, int SIMD>
struct LaneSum<A, W, SIMD, true> {
    static const bool xnor = true;
    static const int SUM_W = bits_for<-SIMD, SIMD>::value;  // lane sum in [-SIMD, SIMD]
    typedef ap_int<SUM_W + 1> sum_t;                           // also holds 2 * popcount

    template <int K, int N, class ACC>
    CODESIGN_ALWAYS_INLINE static void mvau(ACC& s, const typename A::storage a_row[K],
                                            const typename W::storage w[K][N], int sf, int n) {
#pragma HLS INLINE
        CODESIGN_XNOR_WORD();
        ap_uint<SIMD> a_bits = 0, w_bits = 0;
    lane_pack:
        for (int j = 0; j < SIMD; ++j) {
#pragma HLS UNROLL
            const int k = sf * SIMD + j;
            a_bits[j] = a_row[k][0];
            w_bits[j] = w[k][n][0];
        }
        const ap_uint<SIMD> agree_bits = ~(a_bits ^ w_bits);
        s += sum_t(sum_t(popcount<SIMD>(agree_bits)) * 2 - SIMD);
    }

    template <int K, class ACC>
    CODESIGN_ALWAYS_INLINE static void conv(ACC& s, const typename A::storage d[SIMD], const ap_uint<SIMD>& valid,
                                            const typename W::storage w_row[K], int sf) {
#pragma HLS INLINE
        CODESIGN_XNOR_WORD();
        ap_uint<SIMD> a_bits = 0, w_bits = 0;
    lane_pack_masked:
        for (int j = 0; j < SIMD; ++j) {
#pragma HLS UNROLL
            const int k = sf * SIMD + j;
            a_bits[j] = d[j][0];
            w_bits[j] = w_row[k < K ? k : 0][0];  // lanes with k >= K are invalid
        }
        const ap_uint<SIMD> agree_bits = ~(a_bits ^ w_bits) & valid;
        s += sum_t(sum_t(popcount<SIMD>(agree_bits)) * 2 - sum_t(popcount<SIMD>(valid)));
    }
};

// Bias source of the MVAU loop: none (0) or an int32 array.
struct NoBias {
    ap_int<2> operator[](int) const { return 0; }
};

}  // namespace detail

// §2: folded matrix-vector / matrix-matrix unit (FINN MVAU).
//
//   K, N       inner and output dimension (w is K x N, a row of a has K codes)
//   PE         output channels computed in parallel (N % PE == 0)
//   SIMD       inner-dimension elements consumed per cycle per PE (K % SIMD == 0)
//   HAS_BIAS   whether run() takes an int32 bias[N]
//   B_LO, B_HI bias range used for the accumulator width (§2: the actual
//              min/max of the bias constant; default for a bias: the int32
//              range, i.e. an unknown bias). Precondition: B_LO <= bias[n] <= B_HI.
//   ACC_BITS   0: AccBits (the contract's width); > 0: a wider override.
//
// Loop nest (run<ROWS>): one flattened loop over (row r, output fold nf, input
// fold sf) = ROWS x (N/PE) x (K/SIMD) iterations, pipelined at II = 1. Each
// iteration performs PE x SIMD multiply-accumulates (fully unrolled): PE
// accumulators add SIMD products each (bipolar x bipolar: one XNOR-popcount lane
// sum each, see the top of this file); after the last input fold the PE
// accumulators are written to out[r][nf*PE .. nf*PE + PE - 1].
//
// Cycle count (latency of run<ROWS>):
//   cycles = ROWS * (N / PE) * (K / SIMD) + D
// where D is the pipeline depth reported by Vitis HLS; it is about
// 3 + L_mul + ceil(log2(SIMD)) (operand read, multiply with latency L_mul
// (0 for LUT/bipolar products, ~3 for DSP48E2), adder tree over SIMD products
// (binary: the popcount tree), accumulate/write). cycles_per_row() and
// iterations<ROWS>() give the II = 1 part, which is also the number of
// CODESIGN_TRIP() counts (types.h) per call.
//
// Memory: a is partitioned cyclically by SIMD along k, w by SIMD along k and PE
// along n, so each of the PE x SIMD lanes reads its own bank once per cycle.
// (The pragmas sit on run()'s array arguments, as hls4ml does for its dense
// layers; when run() is itself the top function, whose arguments Vitis only
// partitions along dim 1, declare the caller's arrays with this partitioning.)
template <class A, class W, int K, int N, int PE = 1, int SIMD = 1, bool HAS_BIAS = false,
          long long B_LO = (HAS_BIAS ? -2147483648LL : 0LL), long long B_HI = (HAS_BIAS ? 2147483647LL : 0LL),
          int ACC_BITS = 0>
struct Mvau {
    static_assert(K >= 1 && N >= 1, "codesign::Mvau: K and N must be >= 1");
    static_assert(PE >= 1 && N % PE == 0, "codesign::Mvau: N % PE must be 0");
    static_assert(SIMD >= 1 && K % SIMD == 0, "codesign::Mvau: K % SIMD must be 0");
    static_assert(A::bits >= 1 && A::bits <= 8, "codesign::Mvau: activations have 1..8 bits (docs/arithmetic.md §2)");
    static_assert(A::bits > 1 || A::bipolar, "codesign::Mvau: 1-bit activations are bipolar (signed)");
    static_assert(W::bits >= 1 && W::bits <= 8, "codesign::Mvau: weights have 1..8 bits (docs/arithmetic.md §2)");
    static_assert(W::is_signed, "codesign::Mvau: weights are signed or bipolar (docs/arithmetic.md §2)");
    static_assert(B_LO <= B_HI && B_LO >= -2147483648LL && B_HI <= 2147483647LL,
                  "codesign::Mvau: bias range must lie in int32");
    static_assert(HAS_BIAS || (B_LO == 0 && B_HI == 0), "codesign::Mvau: bias range without a bias");

    static const int NF = N / PE;     // output folds
    static const int SF = K / SIMD;   // input folds
    static const int required_acc_bits = AccBits<A, W, K, B_LO, B_HI>::value;
    static const int acc_bits = ACC_BITS > 0 ? ACC_BITS : required_acc_bits;
    static_assert(ACC_BITS == 0 || (ACC_BITS >= required_acc_bits && ACC_BITS <= 48),
                  "codesign::Mvau: an accumulator override must be at least AccBits and at most 48 bits");

    typedef typename A::storage a_t;
    typedef typename W::storage w_t;
    typedef ap_int<32> bias_t;
    typedef ap_int<acc_bits> acc_t;
    typedef detail::LaneSum<A, W, SIMD> lanes_t;
    // true: bipolar x bipolar, the XNOR-popcount datapath; false: multipliers.
    static const bool xnor_datapath = lanes_t::xnor;

    // Pipelined iterations per input row, and for ROWS rows (cycles minus the pipeline depth).
    static long long cycles_per_row() { return (long long)NF * SF; }
    template <int ROWS>
    static long long iterations() { return (long long)ROWS * NF * SF; }

    // §2 without bias: out[r][n] = sum_k a[r][k] * w[k][n].
    template <int ROWS>
    static void run(const a_t a[ROWS][K], const w_t w[K][N], acc_t out[ROWS][N]) {
#pragma HLS INLINE off
        static_assert(!HAS_BIAS || ROWS < 0, "codesign::Mvau: HAS_BIAS is set, call run(a, w, bias, out)");
        loop<ROWS>(a, w, detail::NoBias(), out);
    }

    // §2 with bias: out[r][n] = sum_k a[r][k] * w[k][n] + bias[n] (bias added once, first).
    template <int ROWS>
    static void run(const a_t a[ROWS][K], const w_t w[K][N], const bias_t bias[N], acc_t out[ROWS][N]) {
#pragma HLS INLINE off
#pragma HLS ARRAY_PARTITION variable = bias cyclic factor = PE dim = 1
        static_assert(HAS_BIAS || ROWS < 0, "codesign::Mvau: declare HAS_BIAS = true to pass a bias");
        loop<ROWS>(a, w, bias, out);
    }

    // Accumulator sink of the array form: out[ROWS][N].
    template <int ROWS>
    struct ArraySink {
        acc_t (*out)[N];
        explicit ArraySink(acc_t o[ROWS][N]) : out(o) {}
        CODESIGN_ALWAYS_INLINE void write(int n, int r, const acc_t& s) { out[r][n] = s; }
    };

    // The fold loop over ROWS rows of a into any accumulator sink: sink.write(n, r, acc)
    // receives output n of row r, in row order and, within a row, n ascending (the PE
    // outputs of one iteration in one cycle). ROWS * NF * SF iterations at II = 1 (the
    // loop nest above); run() is its array form, stream.h's StreamMvau its stream form.
    template <int ROWS, class BIAS, class SINK>
    static void fold(const a_t a[ROWS][K], const w_t w[K][N], BIAS bias, SINK& sink) {
#pragma HLS INLINE
#pragma HLS ARRAY_PARTITION variable = a cyclic factor = SIMD dim = 2
#pragma HLS ARRAY_PARTITION variable = w cyclic factor = SIMD dim = 1
#pragma HLS ARRAY_PARTITION variable = w cyclic factor = PE dim = 2
        static_assert(ROWS >= 1, "codesign::Mvau: ROWS must be >= 1");
        static_assert((long long)ROWS * NF * SF < 2147483647LL, "codesign::Mvau: too many iterations");
        acc_t acc[PE];
#pragma HLS ARRAY_PARTITION variable = acc complete
        int r = 0, nf = 0, sf = 0;
    mvau_fold:
        for (int i = 0; i < ROWS * NF * SF; ++i) {
#pragma HLS PIPELINE II = 1
            CODESIGN_TRIP();
        mvau_pe:
            for (int p = 0; p < PE; ++p) {
#pragma HLS UNROLL
                const int n = nf * PE + p;
                // Every partial sum (bias + j products) lies in the AccBits
                // interval (§2), so acc_t never wraps.
                acc_t s = (sf == 0) ? acc_t(bias[n]) : acc[p];
                lanes_t::template mvau<K, N>(s, a[r], w, sf, n);
                acc[p] = s;
                if (sf == SF - 1) sink.write(n, r, s);
            }
            if (++sf == SF) {
                sf = 0;
                if (++nf == NF) {
                    nf = 0;
                    ++r;
                }
            }
        }
    }

   private:
    template <int ROWS, class BIAS>
    static void loop(const a_t a[ROWS][K], const w_t w[K][N], BIAS bias, acc_t out[ROWS][N]) {
#pragma HLS INLINE
#pragma HLS ARRAY_PARTITION variable = out cyclic factor = PE dim = 2
        ArraySink<ROWS> sink(out);
        fold<ROWS>(a, w, bias, sink);
    }
};

// §2 convenience wrappers around Mvau<...>::run.
template <class A, class W, int K, int N, int PE, int SIMD, int ROWS>
void matmul(const typename A::storage a[ROWS][K], const typename W::storage w[K][N],
            typename Mvau<A, W, K, N, PE, SIMD>::acc_t out[ROWS][N]) {
#pragma HLS INLINE
    Mvau<A, W, K, N, PE, SIMD>::template run<ROWS>(a, w, out);
}

template <class A, class W, int K, int N, int PE, int SIMD, int ROWS>
void matmul(const typename A::storage a[ROWS][K], const typename W::storage w[K][N], const ap_int<32> bias[N],
            typename Mvau<A, W, K, N, PE, SIMD, true>::acc_t out[ROWS][N]) {
#pragma HLS INLINE
    Mvau<A, W, K, N, PE, SIMD, true>::template run<ROWS>(a, w, bias, out);
}

}  // namespace codesign

#endif  // CODESIGN_MATMUL_H
