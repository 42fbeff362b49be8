// codesign FQ-BERT engine: requantization with a dyadic multiplier
// (docs/arithmetic.md §3; codesign.sim.reference.requant; hls requant.h).
//
//   y = sat_Y(rshr(acc * mult, shift)),   rshr(v, s) = floor((v + 2^(s-1)) / 2^s), rshr(v, 0) = v
//
// i.e. round half toward +inf, then clamp to Y = int OUT_BITS (y_signed = 1) or
// uint OUT_BITS (y_signed = 0, a fused ReLU). mult is unsigned MBITS bits (dyadic()
// gives 2^(m-1) <= M < 2^m, m = 16), shift is 0..62 (63 gives 0 before the clamp).
//
// Pipeline: 2 registers (advance on ce): R1 = product, R2 = rounded, saturated code.
// A value presented at edge E appears on y after edge E + 1 (REQUANT_DEPTH = 2 edges
// from the acc input register's perspective: sampled at E, y valid from E + 1).
//
// Implementation (narrow: no 64-bit add, shift or compare). Let W = ACC_BITS + MBITS,
// N = OUT_BITS, s = shift, and let ">>>" be the arithmetic (floor) shift of an integer
// with infinite sign extension.
//
// (1) p = acc * mult fits W bits signed: acc in [-2^(W-MBITS-1), 2^(W-MBITS-1) - 1] and
//     mult in [0, 2^MBITS - 1] give |p| <= 2^(W-MBITS-1) * (2^MBITS - 1) < 2^(W-1).
// (2) rshr(p, s) = (q + 1) >>> 1 with q = (2p) >>> s, for every s >= 0:
//     s = 0: q = 2p and (2p + 1) >>> 1 = p. s >= 1: q = floor(p / 2^(s-1)), and for an
//     integer x, floor((floor(x) + 1) / 2) = floor((x + 1) / 2), so
//     (q + 1) >>> 1 = floor((p / 2^(s-1) + 1) / 2) = floor((p + 2^(s-1)) / 2^s).
//     This holds for every s (also s >= W, where q is 0 or -1 and the result 0, as the
//     formula gives for |p| < 2^(W-1) <= 2^(s-1)), so no shift is special-cased.
// (3) Saturation from a window of q. If q fits N+2 bits signed (q in [-2^(N+1), 2^(N+1)-1])
//     then r = (q + 1) >>> 1 lies in [-2^N, 2^N] and is computed exactly in N+2 bits from
//     q's low N+1 bits and its sign (= the sign of p), then clamped by a look at r's top
//     three bits. Otherwise ("ovf") q >= 2^(N+1) gives r >= 2^N, above both clamps' hi
//     (2^(N-1) - 1 and 2^N - 1), and q < -2^(N+1) gives r <= -2^N, below both lo (-2^(N-1)
//     and 0): the clamp is decided by the sign of p alone.
// (4) q's window and ovf in three 4:1 stages, coarse first: s = 16a + 4b + c.
//     Stage A: qa = (2p) >>> 16a, kept to its low N+16 bits; stage B: qb = qa >>> 4b, low
//     N+4 bits; stage C: qc = qb >>> c, low N+1 bits (= q[N:0]). Each stage's remaining
//     shift is below its keep width's margin (15, 3, 0), so the bits it drops are bits of
//     q at position N+1 or above: q fits N+2 bits iff every dropped bit equals the sign,
//     i.e. iff no stage's dropped range (a fixed range for each value of that stage's
//     two shift bits, decided by a reduction over constant bit ranges) differs from the
//     sign, and the remaining bits of q[N+1..] are the sign extension of the kept window.
//     If some dropped bit differs, q does not fit (ovf) and the window is not used.
// Proofs (2)-(4) are checked by tests/test_rtl_requant.py, which runs this RTL against
// codesign.sim.reference.requant (==) for every shift 0..62 and corner/random operands.
`default_nettype none

module requant #(
    parameter integer ACC_BITS = 32,
    parameter integer MBITS    = 16,
    parameter integer OUT_BITS = 8
) (
    input  wire                 clk,
    input  wire                 ce,
    input  wire                 y_signed,  // output int (1) or uint (0)
    input  wire [ACC_BITS-1:0]  acc,       // signed accumulator
    input  wire [MBITS-1:0]     mult,      // unsigned multiplier M
    input  wire [5:0]           shift,     // sh, 0..62
    output reg  [OUT_BITS-1:0]  y          // the code (two's complement if y_signed)
);
    localparam integer W  = ACC_BITS + MBITS;  // product width, (1)
    localparam integer N  = OUT_BITS;
    localparam integer QW = W + 1;             // 2p
    localparam integer AW = N + 16;            // window kept after stage A
    localparam integer BW = N + 4;             // after stage B
    localparam integer CW = N + 1;             // after stage C: q[N:0]

    generate
        if (ACC_BITS + MBITS > 62 || OUT_BITS < 2 || OUT_BITS > 16) begin : g_bad
            requant_requires_ACC_BITS_plus_MBITS_at_most_62_and_OUT_BITS_2_to_16 u_error ();
        end
    endgenerate

    // R1: the exact product.
    reg signed [W-1:0] r1_prod;
    reg [5:0]          r1_shift;
    reg                r1_signed;
    wire signed [W-1:0] prod;
    generate
        if (ACC_BITS > 17) begin : g_split
            // acc = acc_hi * 2^17 + acc_lo (acc_lo unsigned 17 bits): two DSP products
            // whose sum Yosys otherwise forms over all W bits; mod 2^W the sum is p (1).
            // (p_hi is only needed mod 2^(W-17), the bits left of the 17-bit offset)
            wire signed [W-18:0] hi_x = {{(W-ACC_BITS){acc[ACC_BITS-1]}}, acc[ACC_BITS-1:17]};
            wire signed [W-18:0] m_hx = {{(W-17-MBITS){1'b0}}, mult};
            wire signed [W-18:0] p_hi = hi_x * m_hx;
            wire        [W-1:0]  lo_x = {{(W-17){1'b0}}, acc[16:0]};
            wire        [W-1:0]  m_x  = {{(W-MBITS){1'b0}}, mult};
            wire        [W-1:0]  p_lo = lo_x * m_x;
            assign prod = {p_hi, 17'd0} + p_lo;
        end else begin : g_one
            wire signed [W-1:0] mult_x = {{(W-MBITS){1'b0}}, mult};  // non-negative
            wire signed [W-1:0] acc_x  = {{(W-ACC_BITS){acc[ACC_BITS-1]}}, acc};
            assign prod = acc_x * mult_x;
        end
    endgenerate
    always @(posedge clk) begin
        if (ce) begin
            r1_prod   <= prod;
            r1_shift  <= shift;
            r1_signed <= y_signed;
        end
    end

    // R2: q = (2p) >>> s in three stages (4), round (2), saturate (3).
    wire          sgn = r1_prod[W-1];
    wire [1:0]    sa = r1_shift[5:4], sb = r1_shift[3:2], sc = r1_shift[1:0];
    // sign-extended sources, wide enough for every index a stage reads (their top bits
    // and the low bits of the d* vectors are unused: the stages read fixed ranges)
    /* verilator lint_off UNUSEDSIGNAL */
    wire [QW+AW+47:0] q0_x = {{(AW+48){sgn}}, r1_prod, 1'b0};
    (* keep *) wire [AW-1:0] qa;  // keep: stage boundaries (Yosys/ABC maps smaller)
    wire [AW+11:0]    qa_x = {{12{sgn}}, qa};
    (* keep *) wire [BW-1:0] qb;
    wire [BW+2:0]     qb_x = {{3{sgn}}, qb};
    wire [CW-1:0]     qc;
    // bits that differ from the sign, per stage input
    wire [QW-1:0] d0 = {r1_prod, 1'b0} ^ {QW{sgn}};
    wire [AW-1:0] da = qa ^ {AW{sgn}};
    wire [BW-1:0] db = qb ^ {BW{sgn}};
    /* verilator lint_on UNUSEDSIGNAL */
    // dropped[k]: the bits stage X drops when its shift bits are k (a constant range)
    wire [3:0] drop_a, drop_b, drop_c;
    genvar i, k;
    for (i = 0; i < AW; i = i + 1) begin : g_a
        assign qa[i] = sa[1] ? (sa[0] ? q0_x[i + 48] : q0_x[i + 32]) : (sa[0] ? q0_x[i + 16] : q0_x[i]);
    end
    for (i = 0; i < BW; i = i + 1) begin : g_b
        assign qb[i] = sb[1] ? (sb[0] ? qa_x[i + 12] : qa_x[i + 8]) : (sb[0] ? qa_x[i + 4] : qa_x[i]);
    end
    for (i = 0; i < CW; i = i + 1) begin : g_c
        assign qc[i] = sc[1] ? (sc[0] ? qb_x[i + 3] : qb_x[i + 2]) : (sc[0] ? qb_x[i + 1] : qb_x[i]);
    end
    for (k = 0; k < 4; k = k + 1) begin : g_drop
        if (AW + 16 * k < QW) begin : g_a_some
            assign drop_a[k] = |d0[QW-1:AW+16*k];
        end else begin : g_a_none
            assign drop_a[k] = 1'b0;
        end
        if (k < 3) begin : g_bc_some
            assign drop_b[k] = |da[AW-1:BW+4*k];
            assign drop_c[k] = |db[BW-1:CW+k];
        end else begin : g_bc_none  // shift bits 3: stage B/C keep every bit they read
            assign drop_b[k] = 1'b0;
            assign drop_c[k] = 1'b0;
        end
    end
    wire ovf = drop_a[sa] | drop_b[sb] | drop_c[sc];

    // r = (q + 1) >>> 1 in N+2 bits (valid when !ovf): q = {sgn, qc}.
    wire [N+1:0] r = {sgn, sgn, qc[CW-1:1]} + {{(N+1){1'b0}}, qc[0]};
    wire sat_hi = ovf ? ~sgn : (~r[N+1] & (r[N] | (r1_signed & r[N-1])));
    wire sat_lo = ovf ?  sgn : ( r[N+1] & ~(r1_signed & r[N] & r[N-1]));
    wire [N-1:0] y_hi = {~r1_signed, {(N-1){1'b1}}};
    wire [N-1:0] y_lo = { r1_signed, {(N-1){1'b0}}};
    always @(posedge clk) begin
        if (ce) y <= sat_hi ? y_hi : (sat_lo ? y_lo : r[N-1:0]);
    end
endmodule

`default_nettype wire
