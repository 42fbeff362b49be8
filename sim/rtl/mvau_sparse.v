// codesign CNN dataflow: a block-sparse matrix-vector-activation unit (docs/pruning.md
// "RTL check of the latency model"; the dense unit is sim/rtl/mvau.v, the HLS face
// hls/include/codesign/sparse.h; runner codesign.sim.rtl_mvau_sparse).
//
// The layer is an MH x MW matrix W applied to a stream of input vectors x:
// y[n] = act(sum_k W[n][k] * x[k]), as mvau.v, except that W is cut into PE x SIMD blocks
// (NRG = ceil(MH/PE) row groups by CG = ceil(MW/SIMD) column groups) and only the blocks
// holding a non-zero weight are stored and read: a pruned block contributes 0 and costs
// no cycle. Arithmetic (per channel n of one vector; S(n) = the stored blocks of n's row
// group, lanes(b) = the block's lanes inside MW):
//   BINARY = 1 (WB = AB = 1, bipolar {-1,+1} as bits b = (v+1)/2 in stored blocks):
//       acc = sum_{b in S(n)} (2 * popcount(XNOR(x, W[n]) over lanes(b)) - |lanes(b)|)
//           = sum_k W'[n][k] * x[k] with W' = W inside stored blocks and 0 elsewhere
//   BINARY = 0: acc = sum_{b in S(n)} sum_{k in lanes(b)} W[n][k] * x[k]   (§2, no bias)
//   then thresholds (NT >= 1) or the raw accumulator (NT = 0), exactly as mvau.v, or
//   RQ = 1 (NT = 0): mvau.v's requant output, per channel n
//       code = sat_Y(rshr((acc + B[n]) * M[n], SH[n]))         (sim/rtl/requant.v, §3)
//   with Y = int RQ_BITS (RQ_SIGNED = 1) or uint RQ_BITS (RQ_SIGNED = 0, a fused ReLU),
//   OB = RQ_BITS (2..16), B[n] signed BIAS_W bits, M[n] unsigned MBITS bits, SH[n] in
//   0..62: codesign.sim.reference.requant(matmul(x, W'^T) + B, M, SH, Y) with W' the
//   masked weights (an empty row group's channels: requant(B[n], M[n], SH[n])).
// A row group without any stored block outputs acc = 0 for its PE channels (a bias is
// folded into the thresholds, as in mvau.v). ACC_W, TW, OB, the operand encodings and
// the product/popcount datapath are mvau.v's (the sum of any subset of the MW products
// lies in mvau.v's exact range).
//
// Block-CSR storage: the arrays of codesign.hls.sparse.pack_sparse(W, PE, SIMD)
// .kernel_arrays(), written before streaming through three write ports:
//   row_ptr  NRG + 1 words of BA bits: row group rg's blocks are row_ptr[rg] ..
//            row_ptr[rg+1]-1; row_ptr[0] = 0, row_ptr[NRG] = NB <= NB_MAX.
//            Port r_we / r_addr / r_data. (Read asynchronously: LUT RAM.)
//   col_idx  NB_MAX words of SFA bits: the column group of block b, strictly increasing
//            within a row group. Port c_we / c_addr / c_data. (Read asynchronously.)
//   vals     one memory per PE, NB_MAX words of SIMD*WB bits: word b of PE p holds
//            vals[b][p][j] = W[rg*PE + p][col_idx[b]*SIMD + j] at [WB*j +: WB].
//            Port w_we / w_pe / w_addr / w_data. (Synchronous read: BRAM/LUT RAM.)
//   thresholds as mvau.v (one memory per (PE, t), NRG words).
//   requant (RQ = 1) as mvau.v: three memories per PE, NRG words each, through the
//            threshold port: t_idx = 0 bias B (BIAS_W bits, two's complement), 1 the
//            multiplier M (MBITS bits), 2 the shift SH (6 bits); word rg of PE p holds
//            channel rg*PE + p's value in the low bits of t_data (TDW = max(BIAS_W, MBITS,
//            6) bits in this mode, TW bits otherwise; t_idx is 2 bits in this mode).
// Lanes past MW of a block in the last column group are masked (weight and activation
// don't-cares), in both modes. Every stored block must be written; words past NB are
// never read. The contents may be rewritten only while no vector is in flight.
//
// Streams: exactly mvau.v's. s: SF = CG beats of SIMD lanes per vector (dense order,
// every column group, whatever is stored). m: one beat of PE codes per (vector, row
// group), row groups in order, tlast on the vector's last row group; tacc the raw
// accumulators when ACC_OUT = 1.
//
// Structure: a loader writes the SF beats of a vector into one bank of a two-bank input
// buffer (2 x SF words); once the vector is complete its bank is "full", and the
// sequencer walks its schedule: per row group its stored blocks in CSR order, one block
// per slot (reading chunk col_idx[b] of the buffered vector and vals[b]), or one
// bias-only slot (no lanes) for a row group without blocks. The last slot of a vector
// frees its bank. The loader fills the other bank meanwhile (s_tready = that bank is
// free), so a vector's load overlaps the previous vector's schedule.
//
// Pipeline (as mvau.v): issue (sequencer, async col_idx/row_ptr read, sync buffer/vals
// read) -> R1 operands -> R2 products / XNOR bits -> R3 beat sum -> R4 accumulator
// (+ threshold read) -> R5 output register. The pipeline advances when the output
// register is empty or taken (ce = !m_tvalid | m_tready); the loader does not depend on
// ce.
//
// Cycle model (codesign.sim.rtl_mvau_sparse.sparse_rtl_cycles): with
//     T = NB + NE slots per vector  (NE = row groups without a stored block; the HLS
//         kernel's iterations per vector, codesign.hls.sparse.sparse_trips / vectors),
// counting clock edges inclusively from the edge that accepts the first input beat to
// the edge that accepts the last output beat, inputs offered every cycle, m_tready = 1,
// V vectors take exactly
//     V * max(SF, T) + min(SF, T) + D_MVAU_SPARSE,     D_MVAU_SPARSE = 5.
// Derivation: vector v's last beat is taken at edge A_v, its slots fire at edges
// B_v .. E_v = B_v + T - 1 with B_v = max(A_v, E_{v-1}) + 1, and the loader takes vector
// v+1's first beat at max(A_v, E_{v-1}) + 1 (its bank is freed by vector v-1's last
// slot), so A_{v+1} = max(A_v, E_{v-1}) + SF. A_0 = SF. If T >= SF the schedule never
// waits after the first vector: E_{V-1} = SF + V*T; if T < SF the loader never waits:
// E_{V-1} = V*SF + T. The last slot's operands reach R1 at its edge, R5 four edges
// later, and the sink takes the beat at the next edge (+5).
// Relation to the latency models: when T >= SF (compute-bound; always true for a layer
// with NRG >= CG, e.g. every conv of the tiny CNNs at PE = 1), cycles = V*T + SF + 5: the
// HLS kernel's / pruning model's per-vector count T exactly, plus a one-time fill of one
// vector (SF) and the pipeline depth. When T < SF (very sparse, few row groups) the unit
// is input-bound at SF cycles per vector, which a model counting T underestimates.
// (mvau.v, dense: V*NRG*CG + 5; at density 1 this unit takes SF more.)
// Requant mode (RQ = 1) replaces R5 by mvau.v's three requant stages: R5 = acc + B (B
// read at R3's row group into R4 beside the accumulator, M and SH at R4's into R5),
// R6 = requant.v's product register, R7 = requant.v's rounded, saturated code (the
// output register), so the last slot's beat is taken two edges later:
//     V * max(SF, T) + min(SF, T) + D_MVAU_SPARSE_RQ,   D_MVAU_SPARSE_RQ = 7
// (d_mvau reports 7; the loader and sequencer are unchanged). Threshold and raw modes
// are unchanged by RQ (RQ = 0 builds none of these stages).
`default_nettype none

module mvau_sparse #(
    parameter integer MH       = 8,   // output channels (matrix rows)
    parameter integer MW       = 16,  // inputs per row (matrix columns)
    parameter integer PE       = 2,   // rows per block (PE <= MH)
    parameter integer SIMD     = 4,   // columns per block (SIMD <= MW)
    parameter integer WB       = 4,   // weight bits (1: bipolar inside stored blocks)
    parameter integer AB       = 4,   // activation bits
    parameter integer A_SIGNED = 1,   // activations signed (AB = 1: bipolar) / unsigned
    parameter integer BINARY   = 0,   // 1: XNOR-popcount (needs WB = AB = 1, A_SIGNED = 1)
    parameter integer RESTYPE  = 0,   // products: 0 LUT shift-add, 1 '*' (DSP)
    parameter integer NT       = 1,   // thresholds per channel; 0: output the accumulator
    parameter integer OUT_BIAS = 0,   // added to the threshold count
    parameter integer ACC_OUT  = 0,   // 1: drive m_tacc with the accumulators
    parameter integer NB_MAX   = ((MH + PE - 1) / PE) * ((MW + SIMD - 1) / SIMD),  // block capacity
    parameter integer RQ       = 0,   // 1: bias + multiplier-shift requant output (NT = 0)
    parameter integer RQ_BITS  = 8,   // RQ: output code bits (2..16)
    parameter integer RQ_SIGNED = 1,  // RQ: output int (1) or uint (0, fused ReLU)
    parameter integer MBITS    = 16,  // RQ: multiplier bits (unsigned, 1..24)
    parameter integer BIAS_W   = 16,  // RQ: bias bits (signed, 2..32)
    // ---- derived (do not override)
    localparam integer NRG    = (MH + PE - 1) / PE,
    localparam integer SF     = (MW + SIMD - 1) / SIMD,
    localparam integer NFA    = (NRG <= 2) ? 1 : $clog2(NRG),
    localparam integer RPA    = $clog2(NRG + 1),                 // row_ptr address (0..NRG)
    localparam integer SFA    = (SF <= 2) ? 1 : $clog2(SF),
    localparam integer BA     = $clog2(NB_MAX + 1),               // block pointer (0..NB_MAX)
    localparam integer WA     = (NB_MAX <= 2) ? 1 : $clog2(NB_MAX), // block memory address
    localparam integer IBA    = SFA + 1,                          // input buffer address {bank, chunk}
    localparam integer PEA    = (PE <= 2) ? 1 : $clog2(PE),
    localparam integer NTA    = (RQ != 0) ? 2 : ((NT <= 2) ? 1 : $clog2(NT)),
    localparam integer ACC_W  = range_bits(MW),
    localparam integer TW     = ACC_W + 1,
    localparam integer TDW    = (RQ == 0) ? TW
                              : ((BIAS_W >= MBITS && BIAS_W >= 6) ? BIAS_W : (MBITS >= 6 ? MBITS : 6)),
    localparam integer OB     = (RQ != 0) ? RQ_BITS : ((NT == 0) ? ACC_W : $clog2(NT + 1))
) (
    input  wire                  clk,
    input  wire                  rst,          // synchronous, active high
    // row_ptr write port
    input  wire                  r_we,
    input  wire [RPA-1:0]        r_addr,
    input  wire [BA-1:0]         r_data,
    // col_idx write port
    input  wire                  c_we,
    input  wire [WA-1:0]         c_addr,
    input  wire [SFA-1:0]        c_data,
    // block values write port
    input  wire                  w_we,
    input  wire [PEA-1:0]        w_pe,
    input  wire [WA-1:0]         w_addr,
    input  wire [SIMD*WB-1:0]    w_data,
    // threshold memory write port (unused when NT = 0)
    /* verilator lint_off UNUSEDSIGNAL */
    input  wire                  t_we,
    input  wire [PEA-1:0]        t_pe,
    input  wire [NTA-1:0]        t_idx,
    input  wire [NFA-1:0]        t_addr,
    input  wire [TDW-1:0]        t_data,       // signed (RQ: see the header)
    /* verilator lint_on UNUSEDSIGNAL */
    // activation stream
    input  wire                  s_tvalid,
    output wire                  s_tready,
    input  wire [SIMD*AB-1:0]    s_tdata,
    // output stream
    output reg                   m_tvalid,
    input  wire                  m_tready,
    output wire [PE*OB-1:0]      m_tdata,
    output reg                   m_tlast,
    output wire [PE*ACC_W-1:0]   m_tacc,
    // constants of the cycle model and the datapath
    output wire [31:0]           d_mvau,
    output wire [31:0]           acc_w
);
    // ------------------------------------------------------------ widths (§2, as mvau.v)
    function integer lo_of(input integer bits, input integer signed_);
        lo_of = (signed_ == 0) ? 0 : ((bits == 1) ? -1 : -(1 << (bits - 1)));
    endfunction
    function integer hi_of(input integer bits, input integer signed_);
        hi_of = (signed_ == 0) ? (1 << bits) - 1 : ((bits == 1) ? 1 : (1 << (bits - 1)) - 1);
    endfunction
    function integer min2(input integer a, input integer b);
        min2 = (a < b) ? a : b;
    endfunction
    function integer max2(input integer a, input integer b);
        max2 = (a > b) ? a : b;
    endfunction
    // Smallest two's-complement width holding every sum of n products (acc_range of §2).
    function integer range_bits(input integer n);
        integer alo, ahi, wlo, whi, plo, phi, lo, hi, b;
        begin
            alo = lo_of(AB, A_SIGNED);
            ahi = hi_of(AB, A_SIGNED);
            wlo = lo_of(WB, 1);
            whi = hi_of(WB, 1);
            plo = min2(min2(alo * wlo, alo * whi), min2(ahi * wlo, ahi * whi));
            phi = max2(max2(alo * wlo, alo * whi), max2(ahi * wlo, ahi * whi));
            lo = n * min2(plo, 0);
            hi = n * max2(phi, 0);
            range_bits = 1;
            for (b = 30; b >= 1; b = b - 1)
                if (-(1 << (b - 1)) <= lo && hi <= (1 << (b - 1)) - 1) range_bits = b;
        end
    endfunction

    localparam integer AE    = (AB == 1) ? 2 : (A_SIGNED != 0 ? AB : AB + 1);
    localparam integer WE    = (WB == 1) ? 2 : WB;
    localparam integer PW    = AE + WE;                          // signed product width
    localparam integer SUM_W = range_bits(SIMD);                 // one block's sum
    localparam integer CNT_W = $clog2(SIMD + 1);                 // one block's popcount
    localparam integer BS_W  = CNT_W + 2;                        // binary block sum, signed
    localparam integer LAST_LANES = MW - (SF - 1) * SIMD;        // valid lanes of column group SF-1
    localparam integer XW     = (PW > SUM_W) ? PW : SUM_W;
    localparam integer XB     = (ACC_W > BS_W) ? ACC_W : BS_W;   // binary block sum, internal
    localparam integer D_MVAU_SPARSE = (RQ != 0) ? 7 : 5;
    // RQ: the biased accumulator's width (holds every acc + B: ACC_W- and BIAS_W-bit terms)
    localparam integer SUMB_W = ((ACC_W > BIAS_W) ? ACC_W : BIAS_W) + 1;
    /* verilator lint_off WIDTHTRUNC */  // sized copies of integer constants
    localparam [CNT_W-1:0] CNT_ONE = 1;
    localparam [OB-1:0]    OB_ONE  = 1;
    localparam [OB-1:0]    OBIAS   = OUT_BIAS;                   // mod 2^OB
    localparam [SFA-1:0]   SF_LAST = SF - 1;
    localparam [NFA-1:0]   NRG_LAST = NRG - 1;
    localparam [RPA-1:0]   RP_ONE  = 1;
    localparam [BA-1:0]    B_ONE   = 1;
    localparam [BS_W-1:0]  NV_FULL = SIMD;                       // lanes of a full block
    localparam [BS_W-1:0]  NV_LAST = LAST_LANES;                 // lanes of a last-column block
    /* verilator lint_on WIDTHTRUNC */

    generate
        if (PE < 1 || PE > MH || SIMD < 1 || SIMD > MW || WB < 1 || WB > 8 || AB < 1 || AB > 8
            || (BINARY != 0 && (WB != 1 || AB != 1 || A_SIGNED == 0))
            || NT < 0 || NT > 255 || MW * 16384 > 1073741824 || (RESTYPE != 0 && RESTYPE != 1)
            || NB_MAX < 1 || NB_MAX > NRG * SF) begin : g_bad
            mvau_sparse_requires_PE_le_MH_SIMD_le_MW_bits_1_to_8_BINARY_bipolar_NT_0_to_255_NB_MAX_1_to_NRG_x_SF u_error ();
        end
        if (RQ != 0 && (NT != 0 || RQ_BITS < 2 || RQ_BITS > 16 || MBITS < 1 || MBITS > 24
                        || BIAS_W < 2 || BIAS_W > 32)) begin : g_bad_rq
            mvau_sparse_RQ_requires_NT_0_RQ_BITS_2_to_16_MBITS_1_to_24_BIAS_W_2_to_32 u_error ();
        end
    endgenerate

    assign d_mvau = D_MVAU_SPARSE;
    assign acc_w  = ACC_W;

    // ------------------------------------------------------------ CSR index memories
    reg [BA-1:0]  rpmem [0:NRG];          // row_ptr
    reg [SFA-1:0] cmem  [0:NB_MAX-1];     // col_idx
    always @(posedge clk) begin
        if (r_we) rpmem[r_addr] <= r_data;
        if (c_we) cmem[c_addr] <= c_data;
    end

    // ------------------------------------------------------------ loader (two banks)
    wire ce = ~m_tvalid | m_tready;
    reg  [1:0]     full;       // bank holds a complete vector not yet scheduled to its end
    reg            lbank;      // bank the loader writes
    reg  [SFA-1:0] lsf;        // next beat of the vector being loaded
    reg            cbank;      // bank the sequencer reads
    wire lfree = ~full[lbank];
    assign s_tready = lfree;
    wire take = s_tvalid & lfree;
    wire lsf_last = (lsf == SF_LAST);

    // ------------------------------------------------------------ sequencer
    reg  [NFA-1:0] rg;         // row group of the slot
    reg  [BA-1:0]  b;          // next stored block (CSR index)
    wire fire = ce & full[cbank];
    /* verilator lint_off WIDTHEXPAND */
    wire [RPA-1:0] rg_ext = rg;                        // RPA >= NFA
    /* verilator lint_on WIDTHEXPAND */
    wire [RPA-1:0] rg_next_addr = rg_ext + RP_ONE;
    wire [BA-1:0]  rg_end = rpmem[rg_next_addr];
    wire has  = (b < rg_end);                          // false: a bias-only slot
    wire last = ~has | (b + B_ONE == rg_end);          // the row group's last slot
    wire rg_last = (rg == NRG_LAST);
    wire [WA-1:0]  b_rd = has ? b[WA-1:0] : {WA{1'b0}}; // in-range read address (has: b < NB_MAX)
    wire [SFA-1:0] col  = has ? cmem[b_rd] : {SFA{1'b0}};
    reg  rg_first;                                     // the slot opens its row group

    always @(posedge clk) begin
        if (rst) begin
            full <= 2'b00;
            lbank <= 1'b0;
            lsf <= {SFA{1'b0}};
            cbank <= 1'b0;
            rg <= {NFA{1'b0}};
            b <= {BA{1'b0}};
            rg_first <= 1'b1;
        end else begin
            if (take) begin
                lsf <= lsf_last ? {SFA{1'b0}} : lsf + 1'b1;
                if (lsf_last) lbank <= ~lbank;
            end
            if (fire) begin
                if (has) b <= b + B_ONE;
                rg_first <= last;
                if (last) begin
                    rg <= rg_last ? {NFA{1'b0}} : rg + 1'b1;
                    if (rg_last) begin
                        b <= {BA{1'b0}};
                        cbank <= ~cbank;
                    end
                end
            end
            // the loader completes bank lbank / the schedule frees bank cbank (never the
            // same bank in one cycle: the loader only writes a free bank, the sequencer
            // only reads a full one)
            full[0] <= (full[0] | (take & lsf_last & (lbank == 1'b0)))
                       & ~(fire & last & rg_last & (cbank == 1'b0));
            full[1] <= (full[1] | (take & lsf_last & (lbank == 1'b1)))
                       & ~(fire & last & rg_last & (cbank == 1'b1));
        end
    end

    // Input buffer: bank k holds chunk c at address {k, c}.
    reg [SIMD*AB-1:0] ibuf [0:(1 << IBA)-1];
    reg [SIMD*AB-1:0] r1_act;
    always @(posedge clk) begin
        if (take) ibuf[{lbank, lsf}] <= s_tdata;
        if (fire) r1_act <= ibuf[{cbank, col}];
    end

    // R1 control
    reg r1_v, r1_first, r1_last, r1_has;
    /* verilator lint_off UNUSEDSIGNAL */
    reg r1_lastcol;                                    // unused when LAST_LANES = SIMD (low-bit)
    /* verilator lint_on UNUSEDSIGNAL */
    reg [NFA-1:0] r1_rg;
    always @(posedge clk) begin
        if (rst) r1_v <= 1'b0;
        else if (ce) r1_v <= fire;
        if (ce) begin
            r1_first   <= rg_first;
            r1_last    <= last;
            r1_has     <= has;
            r1_lastcol <= (col == SF_LAST);
            r1_rg      <= rg;
        end
    end

    // R2/R3 control
    reg r2_v, r2_first, r2_last, r3_v, r3_first, r3_last;
    reg [NFA-1:0] r2_rg, r3_rg;
    always @(posedge clk) begin
        if (rst) begin
            r2_v <= 1'b0;
            r3_v <= 1'b0;
        end else if (ce) begin
            r2_v <= r1_v;
            r3_v <= r2_v;
        end
        if (ce) begin
            {r2_first, r2_last, r2_rg} <= {r1_first, r1_last, r1_rg};
            {r3_first, r3_last, r3_rg} <= {r2_first, r2_last, r2_rg};
        end
    end

    // Lane mask of the slot's block: nothing for a bias-only slot, lanes < LAST_LANES in
    // the last column group, every lane otherwise.
    wire [SIMD-1:0] lane_ok;
    genvar j;
    generate
        for (j = 0; j < SIMD; j = j + 1) begin : g_mask
            if (j < LAST_LANES) begin : g_full
                assign lane_ok[j] = r1_has;
            end else begin : g_tail
                assign lane_ok[j] = r1_has & ~r1_lastcol;
            end
        end
    endgenerate

    // R4/R5 control (RQ: R4/R5/R6/R7)
    reg r4_v;
    reg [NFA-1:0] r4_rg;
    generate
        if (RQ == 0) begin : g_ctl_thr
            always @(posedge clk) begin
                if (rst) begin
                    r4_v <= 1'b0;
                    m_tvalid <= 1'b0;
                end else if (ce) begin
                    r4_v <= r3_v & r3_last;
                    m_tvalid <= r4_v;
                end
                if (ce) begin
                    r4_rg <= r3_rg;
                    m_tlast <= (r4_rg == NRG_LAST);
                end
            end
        end else begin : g_ctl_rq
            reg r5_v, r6_v, r5_last, r6_last;
            always @(posedge clk) begin
                if (rst) begin
                    r4_v <= 1'b0;
                    r5_v <= 1'b0;
                    r6_v <= 1'b0;
                    m_tvalid <= 1'b0;
                end else if (ce) begin
                    r4_v <= r3_v & r3_last;
                    r5_v <= r4_v;
                    r6_v <= r5_v;
                    m_tvalid <= r6_v;
                end
                if (ce) begin
                    r4_rg <= r3_rg;
                    r5_last <= (r4_rg == NRG_LAST);
                    r6_last <= r5_last;
                    m_tlast <= r6_last;
                end
            end
        end
    endgenerate

    // ------------------------------------------------------------ PEs
    genvar p, t;
    // Binary mode: valid lanes of the slot's block (R2), shared by the PEs.
    /* verilator lint_off UNUSEDSIGNAL */
    reg [BS_W-1:0] r2_nv;
    /* verilator lint_on UNUSEDSIGNAL */
    always @(posedge clk)
        if (ce) r2_nv <= ~r1_has ? {BS_W{1'b0}} : (r1_lastcol ? NV_LAST : NV_FULL);

    generate
        for (p = 0; p < PE; p = p + 1) begin : g_pe
            reg [SIMD*WB-1:0] wmem [0:NB_MAX-1];
            reg [SIMD*WB-1:0] r1_w;
            always @(posedge clk) begin
                if (w_we && w_pe == p) wmem[w_addr] <= w_data;
                if (fire) r1_w <= wmem[b_rd];
            end

            wire signed [ACC_W-1:0] acc_now;

            if (BINARY != 0) begin : g_bin
                reg [SIMD-1:0] r2_x;                 // XNOR bits, masked
                reg signed [BS_W-1:0] r3_bs;         // 2 * popcount - valid lanes
                reg signed [ACC_W-1:0] r4_acc;
                always @(posedge clk) if (ce) r2_x <= ~(r1_act ^ r1_w) & lane_ok;
                integer k;
                reg [CNT_W-1:0] cnt;
                always @(*) begin
                    cnt = {CNT_W{1'b0}};
                    for (k = 0; k < SIMD; k = k + 1) cnt = cnt + (r2_x[k] ? CNT_ONE : {CNT_W{1'b0}});
                end
                always @(posedge clk) if (ce) r3_bs <= $signed({1'b0, cnt, 1'b0}) - $signed(r2_nv);
                // the block sum (|.| <= SIMD <= MW) and every partial sum (|.| <= MW) fit
                // ACC_W = range_bits(MW) bits; BS_W may exceed ACC_W by one bit
                /* verilator lint_off UNUSEDSIGNAL */
                wire [XB-1:0] bs_x = {{(XB-BS_W+1){r3_bs[BS_W-1]}}, r3_bs[BS_W-2:0]};
                /* verilator lint_on UNUSEDSIGNAL */
                always @(posedge clk) if (ce && r3_v)
                    r4_acc <= (r3_first ? $signed({ACC_W{1'b0}}) : r4_acc) + $signed(bs_x[ACC_W-1:0]);
                assign acc_now = r4_acc;
            end else begin : g_low
                wire [SIMD*PW-1:0] r2_prods;
                for (j = 0; j < SIMD; j = j + 1) begin : g_lane
                    wire [AB-1:0] ac = r1_act[AB*j +: AB];
                    wire [WB-1:0] wc = r1_w[WB*j +: WB];
                    wire signed [AE-1:0] a_e;
                    wire signed [WE-1:0] w_e;
                    if (AB == 1 && A_SIGNED != 0) begin : g_abip
                        assign a_e = ac[0] ? 2'sd1 : -2'sd1;
                    end else if (A_SIGNED != 0) begin : g_asgn
                        assign a_e = ac;
                    end else begin : g_auns
                        assign a_e = {1'b0, ac};
                    end
                    if (WB == 1) begin : g_wbip
                        assign w_e = wc[0] ? 2'sd1 : -2'sd1;
                    end else begin : g_wsgn
                        assign w_e = wc;
                    end
                    wire signed [PW-1:0] a_x = {{(PW-AE){a_e[AE-1]}}, a_e};
                    reg  signed [PW-1:0] prod;
                    if (RESTYPE == 0) begin : g_lut
                        integer i;
                        always @(*) begin
                            prod = {PW{1'b0}};
                            for (i = 0; i < WE - 1; i = i + 1)
                                if (w_e[i]) prod = prod + (a_x <<< i);
                            if (w_e[WE-1]) prod = prod - (a_x <<< (WE - 1));
                        end
                    end else begin : g_dsp
                        wire signed [PW-1:0] w_x = {{(PW-WE){w_e[WE-1]}}, w_e};
                        always @(*) prod = a_x * w_x;
                    end
                    reg signed [PW-1:0] r2_prod;
                    always @(posedge clk) if (ce) r2_prod <= lane_ok[j] ? prod : {PW{1'b0}};
                    assign r2_prods[PW*j +: PW] = r2_prod;
                end
                reg signed [SUM_W-1:0] r3_sum;
                reg signed [ACC_W-1:0] r4_acc;
                integer k;
                /* verilator lint_off UNUSEDSIGNAL */
                reg signed [XW-1:0] sum;
                /* verilator lint_on UNUSEDSIGNAL */
                always @(*) begin
                    sum = {XW{1'b0}};
                    for (k = 0; k < SIMD; k = k + 1)
                        sum = sum + $signed({{(XW-PW+1){r2_prods[PW*k+PW-1]}}, r2_prods[PW*k +: PW-1]});
                end
                always @(posedge clk) if (ce) r3_sum <= sum[SUM_W-1:0];
                always @(posedge clk) if (ce && r3_v)
                    r4_acc <= (r3_first ? $signed({ACC_W{1'b0}}) : r4_acc)
                              + $signed({{(ACC_W-SUM_W+1){r3_sum[SUM_W-1]}}, r3_sum[SUM_W-2:0]});
                assign acc_now = r4_acc;
            end

            reg [OB-1:0] code;
            if (RQ != 0) begin : g_rq
                // bias, multiplier and shift memories (t_idx 0, 1, 2), as mvau.v: bias read
                // at R3's row group (aligned with R4's accumulator), M and SH at R4's (R5)
                reg [BIAS_W-1:0] bmem [0:NRG-1];
                reg [MBITS-1:0]  mmem [0:NRG-1];
                reg [5:0]        smem [0:NRG-1];
                reg [BIAS_W-1:0] r4_bias;
                reg [MBITS-1:0]  r5_m;
                reg [5:0]        r5_sh;
                always @(posedge clk) begin
                    if (t_we && t_pe == p && t_idx == 2'd0) bmem[t_addr] <= t_data[BIAS_W-1:0];
                    if (t_we && t_pe == p && t_idx == 2'd1) mmem[t_addr] <= t_data[MBITS-1:0];
                    if (t_we && t_pe == p && t_idx == 2'd2) smem[t_addr] <= t_data[5:0];
                    if (ce) begin
                        r4_bias <= bmem[r3_rg];
                        r5_m    <= mmem[r4_rg];
                        r5_sh   <= smem[r4_rg];
                    end
                end
                // R5: acc + B, exact in SUMB_W bits
                reg signed [SUMB_W-1:0] r5_sum;
                always @(posedge clk) if (ce)
                    r5_sum <= $signed({{(SUMB_W-ACC_W){acc_now[ACC_W-1]}}, acc_now})
                              + $signed({{(SUMB_W-BIAS_W){r4_bias[BIAS_W-1]}}, r4_bias});
                // R6 (product), R7 (code): the engine's requantizer (docs/arithmetic.md §3)
                wire [OB-1:0] rq_y;
                wire rq_signed = (RQ_SIGNED != 0);
                requant #(.ACC_BITS(SUMB_W), .MBITS(MBITS), .OUT_BITS(OB)) u_rq (
                    .clk(clk), .ce(ce), .y_signed(rq_signed), .acc(r5_sum), .mult(r5_m), .shift(r5_sh),
                    .y(rq_y));
                always @(*) code = rq_y;
            end else if (NT > 0) begin : g_thr
                reg [TW*NT-1:0] r4_thr;
                for (t = 0; t < NT; t = t + 1) begin : g_t
                    reg [TW-1:0] tmem [0:NRG-1];
                    always @(posedge clk) begin
                        if (t_we && t_pe == p && t_idx == t) tmem[t_addr] <= t_data;
                        if (ce) r4_thr[TW*t +: TW] <= tmem[r3_rg];
                    end
                end
                wire signed [TW-1:0] acc_x = {acc_now[ACC_W-1], acc_now};
                integer u;
                reg [OB-1:0] cnt_ge;
                always @(*) begin
                    cnt_ge = {OB{1'b0}};
                    for (u = 0; u < NT; u = u + 1)
                        cnt_ge = cnt_ge + ((acc_x >= $signed(r4_thr[TW*u +: TW])) ? OB_ONE : {OB{1'b0}});
                    code = cnt_ge + OBIAS;
                end
            end else begin : g_raw
                always @(*) code = acc_now;
            end

            if (RQ != 0) begin : g_out_rq  // requant.v's y is the output register (R7)
                assign m_tdata[OB*p +: OB] = code;
            end else begin : g_out
                reg [OB-1:0] r5_code;
                always @(posedge clk) if (ce) r5_code <= code;
                assign m_tdata[OB*p +: OB] = r5_code;
            end

            if (ACC_OUT != 0 && RQ != 0) begin : g_acc_out_rq  // aligned with R7
                reg [ACC_W-1:0] r5_acc, r6_acc, r7_acc;
                always @(posedge clk) if (ce) begin
                    r5_acc <= acc_now;
                    r6_acc <= r5_acc;
                    r7_acc <= r6_acc;
                end
                assign m_tacc[ACC_W*p +: ACC_W] = r7_acc;
            end else if (ACC_OUT != 0) begin : g_acc_out
                reg [ACC_W-1:0] r5_acc;
                always @(posedge clk) if (ce) r5_acc <= acc_now;
                assign m_tacc[ACC_W*p +: ACC_W] = r5_acc;
            end else begin : g_no_acc
                assign m_tacc[ACC_W*p +: ACC_W] = {ACC_W{1'b0}};
            end
        end
    endgenerate
endmodule

`default_nettype wire
