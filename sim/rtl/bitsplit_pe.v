// codesign FQ-BERT engine: the bit-split processing element (docs/engine.md §2).
//
// One instance holds NPE PEs (1, or 2 for a "dsp2" PE pair) that receive the same
// activation beat (the PE array broadcasts the input row). Each PE has M multiplier
// lanes, a pipelined adder tree and a double-buffered accumulator:
//
//   8x4 mode (mode = 0): lane l multiplies activation code a[l] by the int4 weight
//     nibble w[l]; the PE adds the M products: acc += sum_l a[l]*w[l].
//   8x8 mode (mode = 1): the weight word carries M/2 int8 codes b_i (byte i = nibbles
//     2i (low) and 2i+1 (high)); lanes 2i and 2i+1 both take activation a[i] (the low
//     M/2 codes of the beat; the high half is ignored), with lo = b & 15 (unsigned) on
//     lane 2i and hi = b >> 4 (signed) on lane 2i+1; the tree adds 16*(a*hi) + a*lo = a*b.
//     M/2 8x8 products per cycle.
//
// Internal operands: activation 9-bit signed (a_signed ? int8 sign-extended : uint8
// zero-extended), weight nibble 5-bit signed (sign-extended, except the unsigned low
// nibble of 8x8 mode), product 14-bit signed.
//
// Multipliers, by PACKING:
//   0 "dsp2": the lanes l of the two PEs of a pair share a[l] (in both modes, since the
//             activation is broadcast), so one dsp2_mul (one DSP48E2) forms both
//             products (docs/engine.md §3): M DSPs for the pair's 2M lanes. Needs NPE = 2.
//   1 "dsp1": one multiplication per lane (one DSP48E2 per lane, FQ-BERT's mapping).
//   2 "lut" : shift-and-add multipliers in LUTs (no '*' operator, so no DSP inference).
//   3 "dsp2c": the dsp2 packing (one DSP per lane index l of the PE pair, operand
//             w0 + w1*2^18, activation a[l]), but the packed products are ACCUMULATED
//             along chains of DSPs (systolic dot product, the DSP48E2 P cascade) and
//             the two PE sums are extracted once per chain (docs/engine.md §3). The
//             lanes of one parity (even: the lo nibbles of 8x8 mode, odd: the hi
//             nibbles) form chains of C = min(M/2, 32) lanes, NCH = M/C chains; the lane
//             at chain position j is delayed by j cycles (skew registers), so chain
//             position j's P register holds the packed sum of positions 0..j of one
//             beat. Guard bits: |a*w| <= 255*15 = 3825 (a: int8/uint8, w: int4 or the
//             unsigned lo nibble), so a chain sum of C <= 32 lanes has
//             |sum| <= 122400 < 2^17: the signed 18-bit low field is exact, and
//             lo = sign_extend(P[17:0]), hi = (P >>> 18) + P[17] as in dsp2_mul.v.
//             The NCH extracted chain sums of each PE enter its adder tree (x16 on the
//             odd-parity chains in 8x8 mode). NPE = 2 (or 1: w1 = 0, an odd last PE).
//
// Pipeline (every register advances on ce; one beat per cycle, II = 1):
//   S0  input register (beat, first/last flags, user sideband)
//   S1  product register (the DSP's M register)
//   T1..T_LT  adder-tree levels, LT = clog2(M) (the x16 of the high lanes is applied
//             at the tree's input)
//   ACC accumulate: a row's first beat starts the bank with bias + sum, the others add;
//       a row's last beat leaves its final value in the current bank, flips the bank
//       select and pulses out_valid. The drained bank (out_acc) is read by the
//       requantizer while the other bank accumulates the next row (docs/engine.md §2).
// So a beat accepted at clock edge E is accumulated at edge E + 2 + LT (PE_DEPTH).
// PACKING 3 (dsp2c) replaces S1 and the M-leaf tree by the chains: the lane at chain
// position j passes j skew registers after S0, then the DSP's M register, then its P
// register (adding the previous position's P): a chain's sum of a beat accepted at E is
// in the last P register at E + 1 + C; the tree over the NCH chain sums has
// LT = clog2(NCH) levels (at least 1): accumulated at E + 2 + C + LT.
//
// Accumulator: ACC_BITS two's complement, wraps on overflow (the contract's width rule,
// docs/arithmetic.md §2, keeps real layers inside). |bias| must fit BIAS_BITS <= ACC_BITS.
`default_nettype none

module bitsplit_pe #(
    parameter integer M         = 8,   // lanes per PE (even, >= 2)
    parameter integer NPE       = 1,   // PEs in this instance (2 for PACKING = 0)
    parameter integer ACC_BITS  = 32,  // accumulator width
    parameter integer BIAS_BITS = 32,  // bias width (<= ACC_BITS)
    parameter integer USER_BITS = 1,   // sideband carried with each beat
    parameter integer PACKING   = 1    // 0 dsp2, 1 dsp1, 2 lut, 3 dsp2c
) (
    input  wire                      clk,
    input  wire                      rst,        // synchronous, active high
    input  wire                      ce,         // pipeline advance (global stall when 0)
    input  wire                      mode,       // 0: 8x4, 1: 8x8
    input  wire                      a_signed,   // activation codes int8 (1) or uint8 (0)
    // Input beat (taken when in_valid & ce).
    input  wire                      in_valid,
    input  wire                      in_first,   // first beat of a row
    input  wire                      in_last,    // last beat of a row
    input  wire [USER_BITS-1:0]      in_user,
    input  wire [M*8-1:0]            in_a,       // M activation codes, lane l at [8l+7:8l]
    input  wire [NPE*M*4-1:0]        in_w,       // PE p lane l nibble at [4(pM+l)+3 : 4(pM+l)]
    // Accumulate stage: the sideband of the beat there, and its row's bias (a
    // combinational lookup by the caller, used when the beat opens a row).
    output wire [USER_BITS-1:0]      sum_user,
    input  wire [NPE*BIAS_BITS-1:0]  bias,
    // Drained row: valid one ce-cycle, value stable until the bank is reused.
    output reg                       out_valid,
    output reg  [USER_BITS-1:0]      out_user,
    output wire [NPE*ACC_BITS-1:0]   out_acc
);
    localparam         CHAIN    = (PACKING == 3);      // 1-bit flag
    localparam integer C        = (M / 2 <= 32) ? M / 2 : 32;  // dsp2c: chain length
    localparam integer NCH      = M / C;                       // dsp2c: chains per PE
    localparam integer NL       = CHAIN ? NCH : M;             // adder-tree leaves
    localparam integer LT       = (NL <= 2) ? 1 : $clog2(NL);  // adder-tree levels
    localparam integer P_BITS   = 14;                        // 9-bit x 5-bit signed product
    localparam integer L_BITS   = CHAIN ? 18 : P_BITS;       // leaf: product or chain sum
    localparam integer SUM_BITS = L_BITS + 4 + LT;           // x16 high lanes, LT additions

    generate
        if (M < 2 || (M % 2) != 0) begin : g_bad_m
            bitsplit_pe_requires_even_M_at_least_2 u_error ();
        end
        if (PACKING == 0 && NPE != 2) begin : g_bad_npe
            bitsplit_pe_dsp2_packing_requires_NPE_2 u_error ();
        end
        if (PACKING == 3 && (NPE > 2 || (M / 2) % C != 0)) begin : g_bad_chain
            bitsplit_pe_dsp2c_requires_NPE_le_2_and_M_half_le_32_or_multiple_of_32 u_error ();
        end
        if (BIAS_BITS > ACC_BITS || SUM_BITS > ACC_BITS) begin : g_bad_acc
            bitsplit_pe_accumulator_too_narrow u_error ();
        end
    endgenerate

    genvar p, l, v, n;

    // ---------------------------------------------------------------- S0: input register
    reg                 s0_valid, s0_first, s0_last, s0_mode, s0_a_signed;
    reg [USER_BITS-1:0] s0_user;
    reg [M*8-1:0]       s0_a;
    reg [NPE*M*4-1:0]   s0_w;
    always @(posedge clk) begin
        if (rst) begin
            s0_valid <= 1'b0;
        end else if (ce) begin
            s0_valid <= in_valid;
        end
        if (ce) begin
            s0_first    <= in_first;
            s0_last     <= in_last;
            s0_mode     <= mode;      // the configuration travels with the beat: the
            s0_a_signed <= a_signed;  // decode below depends on registers only
            s0_user  <= in_user;
            s0_a     <= in_a;
            s0_w     <= in_w;
        end
    end

    // ------------------------------------------------- operand decode (before S1 register)
    // Activation of lane l: a[l] (8x4) or a[l/2] (8x8), as a 9-bit signed value.
    // Weight of PE p lane l: nibble l, signed except the low nibble (even l) in 8x8 mode.
    wire signed [8:0] lane_a [0:M-1];
    wire signed [4:0] lane_w [0:NPE*M-1];
    generate
        for (l = 0; l < M; l = l + 1) begin : g_adec
            wire [7:0] code = s0_mode ? s0_a[8*(l/2) +: 8] : s0_a[8*l +: 8];
            assign lane_a[l] = {s0_a_signed & code[7], code};
        end
        for (p = 0; p < NPE; p = p + 1) begin : g_wdec_pe
            for (l = 0; l < M; l = l + 1) begin : g_wdec
                wire [3:0] nib = s0_w[4*(p*M+l) +: 4];
                wire       w_signed = ~(s0_mode & ((l % 2) == 0));
                assign lane_w[p*M+l] = {w_signed & nib[3], nib};
            end
        end
    endgenerate

    // ---------------------------------------------------------------- S1: products
    wire signed [P_BITS-1:0] prod_c [0:NPE*M-1];  // combinational products
    generate
        if (CHAIN) begin : g_noprod  // dsp2c: the products are formed in the chains
            for (v = 0; v < NPE*M; v = v + 1) begin : g_lane
                assign prod_c[v] = {P_BITS{1'b0}};
            end
        end else if (PACKING == 0) begin : g_dsp2
            // One DSP per lane index: PE 0 lane l and PE 1 lane l share lane_a[l].
            for (l = 0; l < M; l = l + 1) begin : g_lane
                dsp2_mul #(.A_BITS(9), .W_BITS(5), .SHIFT(18)) u_mul (
                    .a (lane_a[l]),
                    .w0(lane_w[l]),
                    .w1(lane_w[M+l]),
                    .p0(prod_c[l]),
                    .p1(prod_c[M+l])
                );
            end
        end else if (PACKING == 1) begin : g_dsp1
            for (v = 0; v < NPE*M; v = v + 1) begin : g_lane
                assign prod_c[v] = lane_a[v % M] * lane_w[v];
            end
        end else begin : g_lut
            // a * w = sum_{i<4} w[i] * (a << i) - w[4] * (a << 4)  (w 5-bit two's complement)
            for (v = 0; v < NPE*M; v = v + 1) begin : g_lane
                wire        [8:0]        an = lane_a[v % M];
                wire signed [P_BITS-1:0] ax = {{(P_BITS-9){an[8]}}, an};
                wire        [4:0]        wb = lane_w[v];
                wire signed [P_BITS-1:0] pp0 = wb[0] ? ax         : {P_BITS{1'b0}};
                wire signed [P_BITS-1:0] pp1 = wb[1] ? (ax <<< 1) : {P_BITS{1'b0}};
                wire signed [P_BITS-1:0] pp2 = wb[2] ? (ax <<< 2) : {P_BITS{1'b0}};
                wire signed [P_BITS-1:0] pp3 = wb[3] ? (ax <<< 3) : {P_BITS{1'b0}};
                wire signed [P_BITS-1:0] pp4 = wb[4] ? (ax <<< 4) : {P_BITS{1'b0}};
                assign prod_c[v] = pp0 + pp1 + pp2 + pp3 - pp4;
            end
        end
    endgenerate

    reg                 s1_valid, s1_first, s1_last, s1_mode;
    reg [USER_BITS-1:0] s1_user;
    /* verilator lint_off UNUSEDSIGNAL */  // dsp2c: the chains form the products
    reg signed [P_BITS-1:0] s1_prod [0:NPE*M-1];  // one word per lane
    /* verilator lint_on UNUSEDSIGNAL */
    always @(posedge clk) begin
        if (rst) begin
            s1_valid <= 1'b0;
        end else if (ce) begin
            s1_valid <= s0_valid;
        end
        if (ce) begin
            s1_first <= s0_first;
            s1_last  <= s0_last;
            s1_user  <= s0_user;
            s1_mode  <= s0_mode;
        end
    end
    generate
        for (v = 0; v < NPE*M; v = v + 1) begin : g_preg  // (constant 0 for dsp2c: removed)
            always @(posedge clk) if (ce) s1_prod[v] <= prod_c[v];
        end
    endgenerate

    // ---------------------------------------------------------------- dsp2c: DSP chains
    // Chain ch = par*(NCH/2) + k holds the lanes l = 2*(k*C + j) + par, j = 0 .. C-1 (j:
    // the chain position). Per position: j skew registers of (a, w0, w1) after S0, the
    // packed multiplication into the M register, the P register adding the previous
    // position's P (the cascade). The control flags of the beat follow S1 through C
    // registers (d_*), so they arrive with the chain sums (E + 1 + C).
    localparam integer CP_BITS = 48;                 // the DSP48E2's P width
    /* verilator lint_off UNUSEDSIGNAL */  // unused by the other packings
    wire signed [L_BITS-1:0] chain_lo [0:NCH-1];     // PE 0's chain sums
    wire signed [L_BITS-1:0] chain_hi [0:NCH-1];     // PE 1's chain sums
    wire                     ch_valid, ch_first, ch_last, ch_mode;  // flags at the chain ends
    wire [USER_BITS-1:0]     ch_user;
    /* verilator lint_on UNUSEDSIGNAL */
    generate
        if (!CHAIN) begin : g_nochain
            assign ch_valid = 1'b0;
            assign ch_first = 1'b0;
            assign ch_last  = 1'b0;
            assign ch_mode  = 1'b0;
            assign ch_user  = {USER_BITS{1'b0}};
            for (n = 0; n < NCH; n = n + 1) begin : g_z
                assign chain_lo[n] = {L_BITS{1'b0}};
                assign chain_hi[n] = {L_BITS{1'b0}};
            end
        end else begin : g_chain
            reg  [C-1:0]         d_valid, d_first, d_last, d_mode;
            reg  [USER_BITS-1:0] d_user [0:C-1];
            integer kk;
            assign ch_valid = d_valid[C-1];
            assign ch_first = d_first[C-1];
            assign ch_last  = d_last[C-1];
            assign ch_mode  = d_mode[C-1];
            assign ch_user  = d_user[C-1];
            always @(posedge clk) begin
                if (rst) begin
                    d_valid <= {C{1'b0}};
                end else if (ce) begin
                    d_valid[0] <= s1_valid;
                    for (kk = 1; kk < C; kk = kk + 1) d_valid[kk] <= d_valid[kk-1];
                end
                if (ce) begin
                    d_first[0] <= s1_first;
                    d_last[0]  <= s1_last;
                    d_mode[0]  <= s1_mode;
                    d_user[0]  <= s1_user;
                    for (kk = 1; kk < C; kk = kk + 1) begin
                        d_first[kk] <= d_first[kk-1];
                        d_last[kk]  <= d_last[kk-1];
                        d_mode[kk]  <= d_mode[kk-1];
                        d_user[kk]  <= d_user[kk-1];
                    end
                end
            end
            for (n = 0; n < NCH; n = n + 1) begin : g_ch
                localparam integer PAR = n / (NCH / 2);
                localparam integer K0  = n % (NCH / 2);
                /* verilator lint_off UNUSEDSIGNAL */  // pc[C]: the last PCOUT, unused
                wire signed [CP_BITS-1:0] pc [0:C];  // pc[j+1]: position j's PCOUT
                /* verilator lint_on UNUSEDSIGNAL */
                wire signed [CP_BITS-1:0] pc_end;    // the last position's P
                assign pc[0] = {CP_BITS{1'b0}};
                for (l = 0; l < C; l = l + 1) begin : g_pos
                    localparam integer LANE = 2 * (K0 * C + l) + PAR;
                    wire signed [8:0] a_in  = lane_a[LANE];
                    wire signed [4:0] w0_in = lane_w[LANE];
                    wire signed [4:0] w1_in;
                    if (NPE == 2) begin : g_w1
                        assign w1_in = lane_w[M + LANE];
                    end else begin : g_w1z
                        assign w1_in = 5'sd0;
                    end
                    // skew: l registers (position 0 takes S0 directly)
                    wire signed [8:0] a_d;
                    wire signed [4:0] w0_d, w1_d;
                    if (l == 0) begin : g_noskew
                        assign a_d  = a_in;
                        assign w0_d = w0_in;
                        assign w1_d = w1_in;
                    end else begin : g_skew
                        reg signed [8:0] a_sr  [0:l-1];
                        reg signed [4:0] w0_sr [0:l-1];
                        reg signed [4:0] w1_sr [0:l-1];
                        integer s;
                        always @(posedge clk) begin
                            if (ce) begin
                                a_sr[0]  <= a_in;
                                w0_sr[0] <= w0_in;
                                w1_sr[0] <= w1_in;
                                for (s = 1; s < l; s = s + 1) begin
                                    a_sr[s]  <= a_sr[s-1];
                                    w0_sr[s] <= w0_sr[s-1];
                                    w1_sr[s] <= w1_sr[s-1];
                                end
                            end
                        end
                        assign a_d  = a_sr[l-1];
                        assign w0_d = w0_sr[l-1];
                        assign w1_d = w1_sr[l-1];
                    end
                    // pre-adder, multiplier (M register), post-adder with the cascade (P):
                    // one DSP48E2 (dsp2_chain.v)
                    /* verilator lint_off UNUSEDSIGNAL */  // P of the inner stages: the cascade
                    wire signed [CP_BITS-1:0] p_st;
                    /* verilator lint_on UNUSEDSIGNAL */
                    dsp2_chain_stage #(.FIRST(l == 0 ? 1 : 0)) u_stage (
                        .clk(clk), .ce(ce), .a(a_d), .w0(w0_d), .w1(w1_d),
                        .pcin(pc[l]), .pcout(pc[l+1]), .p(p_st)
                    );
                    if (l == C - 1) begin : g_end
                        assign pc_end = p_st;
                    end
                end
                // extraction of the two PE sums (exact: |sum| < 2^17, see the header)
                /* verilator lint_off UNUSEDSIGNAL */  // bits above the two fields: zero
                wire [CP_BITS-1:0] pt = pc_end;
                /* verilator lint_on UNUSEDSIGNAL */
                assign chain_lo[n] = pt[L_BITS-1:0];
                assign chain_hi[n] = pt[18 +: L_BITS] + {{(L_BITS-1){1'b0}}, pt[17]};
            end
        end
    endgenerate

    // ---------------------------------------------------------------- adder trees
    // Leaves: the products, x16 on the high lanes in 8x8 mode. Level t (0 .. LT-1) adds
    // pairs of the ceil(M / 2^t) values entering it (an odd last value passes) into
    // ceil(M / 2^(t+1)) registers: node n of level t of PE p is tree[(p*LT + t)*M + n].
    // The control flags travel in shift registers of the same length.
    // dsp2c: the leaves are the NCH chain sums of each PE (the odd-parity chains, the
    // second half, carry the hi nibbles of 8x8 mode), with the control of d_*.
    wire signed [SUM_BITS-1:0] leaf [0:NPE*NL-1];
    reg  signed [SUM_BITS-1:0] tree [0:NPE*LT*NL-1];
    wire                 lf_valid = CHAIN ? ch_valid : s1_valid;
    wire                 lf_first = CHAIN ? ch_first : s1_first;
    wire                 lf_last  = CHAIN ? ch_last  : s1_last;
    wire                 lf_mode  = CHAIN ? ch_mode  : s1_mode;
    wire [USER_BITS-1:0] lf_user  = CHAIN ? ch_user  : s1_user;
    generate
        for (v = 0; v < NPE*NL; v = v + 1) begin : g_leaf
            wire signed [L_BITS-1:0] lv;
            if (CHAIN) begin : g_cl
                if (v < NL) begin : g_p0
                    assign lv = chain_lo[v];
                end else begin : g_p1
                    assign lv = chain_hi[v - NL];
                end
            end else begin : g_pl
                assign lv = s1_prod[v];
            end
            wire signed [SUM_BITS-1:0] pr = {{(SUM_BITS-L_BITS){lv[L_BITS-1]}}, lv};
            wire hi_lane = CHAIN ? ((v % NL) >= NL / 2) : ((v % 2) == 1);
            assign leaf[v] = (lf_mode && hi_lane) ? (pr <<< 4) : pr;
        end
        for (p = 0; p < NPE; p = p + 1) begin : g_tree
            for (v = 0; v < LT; v = v + 1) begin : g_lvl
                localparam integer NIN  = (NL + (1 << v) - 1) >> v;  // values entering level v
                localparam integer NOUT = (NIN + 1) / 2;
                localparam integer DST  = (p*LT + v) * NL;          // this level's nodes
                localparam integer SRC  = (p*LT + v - 1) * NL;      // the previous level's
                for (n = 0; n < NOUT; n = n + 1) begin : g_node
                    wire signed [SUM_BITS-1:0] x0, x1;
                    if (v == 0) begin : g_in0
                        assign x0 = leaf[p*NL + 2*n];
                        assign x1 = (2*n + 1 < NIN) ? leaf[p*NL + 2*n + 1] : {SUM_BITS{1'b0}};
                    end else begin : g_inn
                        assign x0 = tree[SRC + 2*n];
                        assign x1 = (2*n + 1 < NIN) ? tree[SRC + 2*n + 1] : {SUM_BITS{1'b0}};
                    end
                    always @(posedge clk) if (ce) tree[DST + n] <= x0 + x1;
                end
            end
        end
    endgenerate

    reg [LT-1:0] t_valid, t_first, t_last;
    reg [USER_BITS-1:0] t_user [0:LT-1];
    integer k;
    always @(posedge clk) begin
        if (rst) begin
            t_valid <= {LT{1'b0}};
        end else if (ce) begin
            t_valid[0] <= lf_valid;
            for (k = 1; k < LT; k = k + 1) t_valid[k] <= t_valid[k-1];
        end
        if (ce) begin
            t_first[0] <= lf_first;
            t_last[0]  <= lf_last;
            t_user[0]  <= lf_user;
            for (k = 1; k < LT; k = k + 1) begin
                t_first[k] <= t_first[k-1];
                t_last[k]  <= t_last[k-1];
                t_user[k]  <= t_user[k-1];
            end
        end
    end

    // ---------------------------------------------------------------- accumulate
    wire sum_valid  = t_valid[LT-1];
    wire sum_first  = t_first[LT-1];
    wire sum_last   = t_last[LT-1];
    assign sum_user = t_user[LT-1];

    reg bank;  // bank being accumulated; ~bank holds the last drained row
    always @(posedge clk) begin
        if (rst) begin
            bank      <= 1'b0;
            out_valid <= 1'b0;
        end else if (ce) begin
            out_valid <= sum_valid & sum_last;
            if (sum_valid & sum_last) bank <= ~bank;
        end
        if (ce && sum_valid && sum_last) out_user <= sum_user;
    end

    generate
        for (p = 0; p < NPE; p = p + 1) begin : g_acc
            reg  signed [ACC_BITS-1:0] bank0, bank1;
            wire [SUM_BITS-1:0]        s_n = tree[(p*LT + LT - 1) * NL];  // the root
            wire [BIAS_BITS-1:0]       b_n = bias[BIAS_BITS*p +: BIAS_BITS];
            wire signed [ACC_BITS-1:0] s_x = {{(ACC_BITS-SUM_BITS){s_n[SUM_BITS-1]}}, s_n};
            wire signed [ACC_BITS-1:0] b_x;
            if (BIAS_BITS < ACC_BITS) begin : g_bext
                assign b_x = {{(ACC_BITS-BIAS_BITS){b_n[BIAS_BITS-1]}}, b_n};
            end else begin : g_bfull
                assign b_x = b_n;
            end
            wire signed [ACC_BITS-1:0] base = sum_first ? b_x : (bank ? bank1 : bank0);
            wire signed [ACC_BITS-1:0] nxt  = base + s_x;
            always @(posedge clk) begin
                if (ce && sum_valid) begin
                    if (bank) bank1 <= nxt;
                    else      bank0 <= nxt;
                end
            end
            assign out_acc[ACC_BITS*p +: ACC_BITS] = bank ? bank0 : bank1;  // the drained bank
        end
    endgenerate
endmodule

`default_nettype wire
