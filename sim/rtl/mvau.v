// codesign CNN dataflow: a FINN-style matrix-vector-activation unit (MVAU)
// (docs/dataflow.md; docs/arithmetic.md §2 matmul, §8 xnor_popcount and threshold;
// codesign.sim.reference; cost model codesign.accel.dataflow).
//
// The layer is an MH x MW matrix W (MH output channels, rows of MW inputs) applied to a
// stream of input vectors x (one per output pixel): y[n] = act(sum_k W[n][k] * x[k]).
// PE rows x SIMD columns of W are processed per cycle, so each vector takes
// NF * SF cycles, NF = ceil(MH / PE) output folds of SF = ceil(MW / SIMD) beats.
//
// Arithmetic (per output channel n of one vector):
//   BINARY = 1 (WB = AB = 1, bipolar {-1,+1} stored as bits b = (v + 1) / 2):
//       acc = 2 * popcount(XNOR(x, W[n]) masked to MW lanes) - MW           (§8)
//   BINARY = 0: acc = sum_k W[n][k] * x[k], exact, in ACC_W bits          (§2, no bias)
//       x: AB-bit codes, signed (A_SIGNED = 1; AB = 1: bipolar) or unsigned;
//       W: WB-bit signed codes (WB = 1: bipolar). A bias b[n] is folded into the
//       thresholds (acc + b >= T  <=>  acc >= T - b), as FINN does.
//   NT >= 1: code = sum_{t < NT} [acc >= T[n][t]] + OUT_BIAS                (§8 threshold)
//            (OB = clog2(NT + 1) bits, two's complement when OUT_BIAS < 0;
//             a bipolar output is its count y in {0, 1}, i.e. its bit b)
//   NT = 0:  code = acc (OB = ACC_W bits, two's complement): no activation.
//   RQ = 1 (NT = 0): per-channel bias add and multiplier-shift requantizer (§3):
//            code = sat_Y(rshr((acc + B[n]) * M[n], SH[n]))       (sim/rtl/requant.v)
//            Y = int RQ_BITS (RQ_SIGNED = 1) or uint RQ_BITS (RQ_SIGNED = 0, a fused
//            ReLU), OB = RQ_BITS (2..16); B[n] signed BIAS_W bits, M[n] unsigned MBITS
//            bits, SH[n] in 0..62. This is codesign.sim.reference.requant of the
//            reference's matmul/conv2d accumulator with bias, acc + B[n] (§2: the bias is
//            part of the accumulator), so requant(matmul(x, W^T, B), M, SH, Y) is exact.
// ACC_W is the exact accumulator width of §2 for MW products (acc_range, no bias);
// thresholds are TW = ACC_W + 1 bits signed (§8: clipping T to [lo_acc, hi_acc + 1]
// leaves every comparison unchanged, and that range fits ACC_W + 1 bits).
//
// Streams (AXI4-Stream handshakes: a beat moves when tvalid & tready):
//   s  tdata  SIMD activation codes, lane j at [AB*j +: AB] (bipolar: the bit b).
//             Vector v is SF consecutive beats: beat s holds x[s*SIMD + j]; lanes past
//             MW in the last beat are ignored (masked in both modes).
//   m  tdata  PE codes, lane p at [OB*p +: OB]: channel nf*PE + p of the vector. One
//             beat per (vector, fold nf), folds in order; lanes of channels >= MH (last
//             fold when MH % PE != 0) carry the padding rows' results, to be dropped.
//      tlast  the vector's last fold (nf = NF - 1).
//      tacc   the PE raw accumulators (ACC_W bits each) when ACC_OUT = 1, else 0.
//
// Parameters in memories (written before streaming, through write ports; a write and a
// stream may overlap only for rows not being read):
//   weights     one memory per PE, WDEPTH = NF * SF words of SIMD*WB bits:
//               word nf*SF + s of PE p holds W[nf*PE + p][s*SIMD + j] at [WB*j +: WB].
//               Port w_we / w_pe / w_addr / w_data. Padding rows/lanes are don't-cares
//               for the channels < MH but must be written (4-state simulators).
//   thresholds  one memory per (PE, threshold t), NF words of TW bits:
//               word nf of memory (p, t) holds T[nf*PE + p][t], ascending in t.
//               Port t_we / t_pe / t_idx / t_addr / t_data.
//   requant     (RQ = 1) three memories per PE, NF words each, through the same port:
//               t_idx = 0: bias B (BIAS_W bits, two's complement), 1: multiplier M
//               (MBITS bits), 2: shift SH (6 bits); word nf of PE p holds channel
//               nf*PE + p's value in the low bits of t_data (TDW = max(BIAS_W, MBITS, 6)
//               bits in this mode, TW bits otherwise; t_idx is 2 bits in this mode).
//
// Input reuse: the NF folds of one vector need the same SF beats; fold 0 takes them from
// s (and stores them in an SF-deep input buffer), folds 1..NF-1 replay the buffer, so
// s_tready is low during the replays (FINN's MVAU does the same).
//
// Flow control and timing: the whole pipeline advances when the output register is
// empty or taken (ce = !m_tvalid | m_tready), as sim/rtl/pe_array.v. Pipeline:
//   issue (fold counters, sync weight/buffer read) -> R1 operands
//   R2 products / XNOR bits (masked lanes = 0) -> R3 beat sum / popcount
//   R4 accumulator (+ threshold read) -> R5 output register (compare and count).
// Cycle model (codesign.accel.dataflow.mvau_cycles): counting clock edges inclusively
// from the edge that accepts the first input beat to the edge that accepts the last
// output beat, with inputs offered every cycle and m_tready = 1, V vectors take exactly
//     NF * SF * V + D_MVAU cycles,   D_MVAU = 5
// (one issue slot per cycle; the last slot's operands are registered in R1 at its edge,
// then R2, R3, R4, R5 one edge each, and the sink takes the beat at the next edge).
// Requant mode (RQ = 1) replaces R5 by three stages: R5 = acc + B (B read at R3's fold
// into R4 beside the accumulator, as the thresholds; M and SH read at R4's fold into R5),
// R6 = requant.v's product register,
// R7 = requant.v's rounded, saturated code (the output register). So
//     NF * SF * V + D_MVAU_RQ cycles,   D_MVAU_RQ = 7   (d_mvau reports 7).
// Threshold and raw modes are unchanged by RQ (RQ = 0 builds none of these stages).
//
// Products: RESTYPE = 0 builds each product in LUTs as a shift-and-add over the weight
// bits (no '*' for Yosys to map to a DSP48E2); RESTYPE = 1 writes a '*' (Yosys/Vivado
// map it to one DSP48E2 per product once it is 9 bits wide or more).
`default_nettype none

module mvau #(
    parameter integer MH       = 8,   // output channels (matrix rows)
    parameter integer MW       = 16,  // inputs per row (matrix columns)
    parameter integer PE       = 2,   // rows per cycle (PE <= MH)
    parameter integer SIMD     = 4,   // columns per cycle (SIMD <= MW)
    parameter integer WB       = 4,   // weight bits (1: bipolar)
    parameter integer AB       = 4,   // activation bits
    parameter integer A_SIGNED = 1,   // activations signed (AB = 1: bipolar) / unsigned
    parameter integer BINARY   = 0,   // 1: XNOR-popcount (needs WB = AB = 1, A_SIGNED = 1)
    parameter integer RESTYPE  = 0,   // products: 0 LUT shift-add, 1 '*' (DSP)
    parameter integer NT       = 1,   // thresholds per channel; 0: output the accumulator
    parameter integer OUT_BIAS = 0,   // added to the threshold count
    parameter integer ACC_OUT  = 0,   // 1: drive m_tacc with the accumulators
    parameter integer RQ       = 0,   // 1: bias + multiplier-shift requant output (NT = 0)
    parameter integer RQ_BITS  = 8,   // RQ: output code bits (2..16)
    parameter integer RQ_SIGNED = 1,  // RQ: output int (1) or uint (0, fused ReLU)
    parameter integer MBITS    = 16,  // RQ: multiplier bits (unsigned, 1..24)
    parameter integer BIAS_W   = 16,  // RQ: bias bits (signed, 2..32)
    // ---- derived (do not override)
    localparam integer NF     = (MH + PE - 1) / PE,
    localparam integer SF     = (MW + SIMD - 1) / SIMD,
    localparam integer WDEPTH = NF * SF,
    localparam integer WA     = (WDEPTH <= 2) ? 1 : $clog2(WDEPTH),
    localparam integer NFA    = (NF <= 2) ? 1 : $clog2(NF),
    localparam integer SFA    = (SF <= 2) ? 1 : $clog2(SF),
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
    // weight memory write port
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
    // ------------------------------------------------------------ widths (§2)
    // Operand ranges: bipolar {-1, +1}; signed b bits; unsigned b bits.
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

    // Decoded operand widths: bipolar -> 2-bit signed +-1, unsigned -> zero-extended.
    localparam integer AE    = (AB == 1) ? 2 : (A_SIGNED != 0 ? AB : AB + 1);
    localparam integer WE    = (WB == 1) ? 2 : WB;
    localparam integer PW    = AE + WE;                          // signed product width
    localparam integer SUM_W = range_bits(SIMD);                 // one beat's sum
    localparam integer CNT_W = $clog2(SIMD + 1);                 // one beat's popcount
    localparam integer POP_W = $clog2(MW + 1);                   // a row's popcount
    localparam integer LAST_LANES = MW - (SF - 1) * SIMD;        // valid lanes of beat SF-1
    localparam integer XW     = (PW > SUM_W) ? PW : SUM_W;        // beat sum, internal
    localparam integer D_MVAU = (RQ != 0) ? 7 : 5;
    // RQ: the biased accumulator's width (holds every acc + B: ACC_W- and BIAS_W-bit terms)
    localparam integer SUMB_W = ((ACC_W > BIAS_W) ? ACC_W : BIAS_W) + 1;
    /* verilator lint_off WIDTHTRUNC */  // sized copies of integer constants
    localparam [CNT_W-1:0] CNT_ONE = 1;
    localparam [OB-1:0]    OB_ONE  = 1;
    localparam [OB-1:0]    OBIAS   = OUT_BIAS;                   // mod 2^OB
    localparam [ACC_W-1:0] MW_X    = MW;                         // BINARY: ACC_W = POP_W + 1
    localparam [SFA-1:0]   SF_LAST = SF - 1;
    localparam [NFA-1:0]   NF_LAST = NF - 1;
    /* verilator lint_on WIDTHTRUNC */

    generate
        if (PE < 1 || PE > MH || SIMD < 1 || SIMD > MW || WB < 1 || WB > 8 || AB < 1 || AB > 8
            || (BINARY != 0 && (WB != 1 || AB != 1 || A_SIGNED == 0))
            || NT < 0 || NT > 255 || MW * 16384 > 1073741824 || (RESTYPE != 0 && RESTYPE != 1)) begin : g_bad
            mvau_requires_PE_le_MH_SIMD_le_MW_bits_1_to_8_BINARY_bipolar_NT_0_to_255_MW_le_65536 u_error ();
        end
        if (RQ != 0 && (NT != 0 || RQ_BITS < 2 || RQ_BITS > 16 || MBITS < 1 || MBITS > 24
                        || BIAS_W < 2 || BIAS_W > 32)) begin : g_bad_rq
            mvau_RQ_requires_NT_0_RQ_BITS_2_to_16_MBITS_1_to_24_BIAS_W_2_to_32 u_error ();
        end
    endgenerate

    assign d_mvau = D_MVAU;
    assign acc_w  = ACC_W;

    // ------------------------------------------------------------ issue
    wire ce = ~m_tvalid | m_tready;
    reg  [NFA-1:0] nf;   // output fold of the current slot
    reg  [SFA-1:0] sf;   // beat within the row
    reg  [WA-1:0]  waddr; // nf * SF + sf
    wire take = (nf == {NFA{1'b0}});           // fold 0 reads the stream
    assign s_tready = ce & take;
    wire fire = ce & (~take | s_tvalid);      // one slot per fire
    wire sf_last = (sf == SF_LAST);
    wire nf_last = (nf == NF_LAST);

    always @(posedge clk) begin
        if (rst) begin
            nf <= {NFA{1'b0}};
            sf <= {SFA{1'b0}};
            waddr <= {WA{1'b0}};
        end else if (fire) begin
            sf <= sf_last ? {SFA{1'b0}} : sf + 1'b1;
            if (sf_last) nf <= nf_last ? {NFA{1'b0}} : nf + 1'b1;
            waddr <= (sf_last && nf_last) ? {WA{1'b0}} : waddr + 1'b1;
        end
    end

    // Input buffer: the SF beats of the current vector, replayed for folds 1..NF-1.
    reg [SIMD*AB-1:0] ibuf [0:SF-1];
    reg [SIMD*AB-1:0] r1_act;
    always @(posedge clk) begin
        if (fire && take) ibuf[sf] <= s_tdata;
        if (fire) r1_act <= take ? s_tdata : ibuf[sf];
    end

    // R1 control
    reg r1_v, r1_first, r1_last;
    reg [NFA-1:0] r1_nf;
    always @(posedge clk) begin
        if (rst) r1_v <= 1'b0;
        else if (ce) r1_v <= fire;
        if (ce) begin
            r1_first <= (sf == {SFA{1'b0}});
            r1_last  <= sf_last;
            r1_nf    <= nf;
        end
    end

    // R2/R3 control
    reg r2_v, r2_first, r2_last, r3_v, r3_first, r3_last;
    reg [NFA-1:0] r2_nf, r3_nf;
    always @(posedge clk) begin
        if (rst) begin
            r2_v <= 1'b0;
            r3_v <= 1'b0;
        end else if (ce) begin
            r2_v <= r1_v;
            r3_v <= r2_v;
        end
        if (ce) begin
            {r2_first, r2_last, r2_nf} <= {r1_first, r1_last, r1_nf};
            {r3_first, r3_last, r3_nf} <= {r2_first, r2_last, r2_nf};
        end
    end

    // Lane mask of the current beat: lanes past MW in the last beat contribute nothing.
    wire [SIMD-1:0] lane_ok;
    genvar j;
    generate
        for (j = 0; j < SIMD; j = j + 1) begin : g_mask
            if (j < LAST_LANES) begin : g_full
                assign lane_ok[j] = 1'b1;
            end else begin : g_tail
                assign lane_ok[j] = ~r1_last;
            end
        end
    endgenerate

    // R4/R5 control (RQ: R4/R5/R6/R7)
    reg r4_v;
    reg [NFA-1:0] r4_nf;
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
                    r4_nf <= r3_nf;
                    m_tlast <= (r4_nf == NF_LAST);
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
                    r4_nf <= r3_nf;
                    r5_last <= (r4_nf == NF_LAST);
                    r6_last <= r5_last;
                    m_tlast <= r6_last;
                end
            end
        end
    endgenerate

    // ------------------------------------------------------------ PEs
    genvar p, t;
    generate
        for (p = 0; p < PE; p = p + 1) begin : g_pe
            // weights: sync read at the issue slot's address (BRAM/LUTRAM friendly)
            reg [SIMD*WB-1:0] wmem [0:WDEPTH-1];
            reg [SIMD*WB-1:0] r1_w;
            always @(posedge clk) begin
                if (w_we && w_pe == p) wmem[w_addr] <= w_data;
                if (fire) r1_w <= wmem[waddr];
            end

            // the accumulator value of a completed row (R4), signed ACC_W bits
            wire signed [ACC_W-1:0] acc_now;

            if (BINARY != 0) begin : g_bin
                reg [SIMD-1:0] r2_x;       // XNOR bits, masked
                reg [CNT_W-1:0] r3_cnt;     // popcount of the beat
                reg [POP_W-1:0] r4_pop;     // popcount of the row so far
                always @(posedge clk) if (ce) r2_x <= ~(r1_act ^ r1_w) & lane_ok;
                integer k;
                reg [CNT_W-1:0] cnt;
                always @(*) begin
                    cnt = {CNT_W{1'b0}};
                    for (k = 0; k < SIMD; k = k + 1) cnt = cnt + (r2_x[k] ? CNT_ONE : {CNT_W{1'b0}});
                end
                wire [POP_W-1:0] cnt_x;
                if (POP_W > CNT_W) begin : g_ext
                    assign cnt_x = {{(POP_W-CNT_W){1'b0}}, r3_cnt};
                end else begin : g_same
                    assign cnt_x = r3_cnt;
                end
                always @(posedge clk) if (ce) r3_cnt <= cnt;
                always @(posedge clk) if (ce && r3_v)
                    r4_pop <= (r3_first ? {POP_W{1'b0}} : r4_pop) + cnt_x;
                // acc = 2 * pop - MW: ACC_W = POP_W + 1 bits hold [-MW, MW]
                assign acc_now = $signed({r4_pop, 1'b0}) - $signed(MW_X);
            end else begin : g_low
                wire [SIMD*PW-1:0] r2_prods;  // lane j at [PW*j +: PW], signed
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
                        // sum_i w_i * (a << i) - w_{WE-1} * (a << (WE-1))
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
                // the beat's sum in XW = max(PW, SUM_W) bits; its value fits SUM_W bits
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

            // thresholds: one memory per threshold index, read at R3's fold
            reg [OB-1:0] code;
            if (RQ != 0) begin : g_rq
                // bias, multiplier and shift memories (t_idx 0, 1, 2); bias read at R3's
                // fold (aligned with R4's accumulator), M and SH at R4's (aligned with R5)
                reg [BIAS_W-1:0] bmem [0:NF-1];
                reg [MBITS-1:0]  mmem [0:NF-1];
                reg [5:0]        smem [0:NF-1];
                reg [BIAS_W-1:0] r4_bias;
                reg [MBITS-1:0]  r5_m;
                reg [5:0]        r5_sh;
                always @(posedge clk) begin
                    if (t_we && t_pe == p && t_idx == 2'd0) bmem[t_addr] <= t_data[BIAS_W-1:0];
                    if (t_we && t_pe == p && t_idx == 2'd1) mmem[t_addr] <= t_data[MBITS-1:0];
                    if (t_we && t_pe == p && t_idx == 2'd2) smem[t_addr] <= t_data[5:0];
                    if (ce) begin
                        r4_bias <= bmem[r3_nf];
                        r5_m    <= mmem[r4_nf];
                        r5_sh   <= smem[r4_nf];
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
                    reg [TW-1:0] tmem [0:NF-1];
                    always @(posedge clk) begin
                        if (t_we && t_pe == p && t_idx == t) tmem[t_addr] <= t_data;
                        if (ce) r4_thr[TW*t +: TW] <= tmem[r3_nf];
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
