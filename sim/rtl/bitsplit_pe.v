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
    parameter integer PACKING   = 1    // 0 dsp2, 1 dsp1, 2 lut
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
    localparam integer LT       = (M <= 2) ? 1 : $clog2(M);  // adder-tree levels
    localparam integer P_BITS   = 14;                        // 9-bit x 5-bit signed product
    localparam integer SUM_BITS = P_BITS + 4 + LT;           // x16 high lanes, LT additions

    generate
        if (M < 2 || (M % 2) != 0) begin : g_bad_m
            bitsplit_pe_requires_even_M_at_least_2 u_error ();
        end
        if (PACKING == 0 && NPE != 2) begin : g_bad_npe
            bitsplit_pe_dsp2_packing_requires_NPE_2 u_error ();
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
        if (PACKING == 0) begin : g_dsp2
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
    reg signed [P_BITS-1:0] s1_prod [0:NPE*M-1];  // one word per lane
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
        for (v = 0; v < NPE*M; v = v + 1) begin : g_preg
            always @(posedge clk) if (ce) s1_prod[v] <= prod_c[v];
        end
    endgenerate

    // ---------------------------------------------------------------- adder trees
    // Leaves: the products, x16 on the high lanes in 8x8 mode. Level t (0 .. LT-1) adds
    // pairs of the ceil(M / 2^t) values entering it (an odd last value passes) into
    // ceil(M / 2^(t+1)) registers: node n of level t of PE p is tree[(p*LT + t)*M + n].
    // The control flags travel in shift registers of the same length.
    wire signed [SUM_BITS-1:0] leaf [0:NPE*M-1];
    reg  signed [SUM_BITS-1:0] tree [0:NPE*LT*M-1];
    generate
        for (v = 0; v < NPE*M; v = v + 1) begin : g_leaf
            wire signed [SUM_BITS-1:0] pr = {{(SUM_BITS-P_BITS){s1_prod[v][P_BITS-1]}}, s1_prod[v]};
            assign leaf[v] = (s1_mode && (v % 2) == 1) ? (pr <<< 4) : pr;
        end
        for (p = 0; p < NPE; p = p + 1) begin : g_tree
            for (v = 0; v < LT; v = v + 1) begin : g_lvl
                localparam integer NIN  = (M + (1 << v) - 1) >> v;  // values entering level v
                localparam integer NOUT = (NIN + 1) / 2;
                localparam integer DST  = (p*LT + v) * M;           // this level's nodes
                localparam integer SRC  = (p*LT + v - 1) * M;       // the previous level's
                for (n = 0; n < NOUT; n = n + 1) begin : g_node
                    wire signed [SUM_BITS-1:0] x0, x1;
                    if (v == 0) begin : g_in0
                        assign x0 = leaf[p*M + 2*n];
                        assign x1 = (2*n + 1 < NIN) ? leaf[p*M + 2*n + 1] : {SUM_BITS{1'b0}};
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
            t_valid[0] <= s1_valid;
            for (k = 1; k < LT; k = k + 1) t_valid[k] <= t_valid[k-1];
        end
        if (ce) begin
            t_first[0] <= s1_first;
            t_last[0]  <= s1_last;
            t_user[0]  <= s1_user;
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
            wire [SUM_BITS-1:0]        s_n = tree[(p*LT + LT - 1) * M];  // the root
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
