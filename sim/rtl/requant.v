// codesign FQ-BERT engine: requantization with a dyadic multiplier
// (docs/arithmetic.md §3; codesign.sim.reference.requant; hls requant.h).
//
//   y = sat_Y(rshr(acc * mult, shift)),   rshr(v, s) = floor((v + 2^(s-1)) / 2^s), rshr(v, 0) = v
//
// i.e. round half toward +inf, then clamp to Y = int OUT_BITS (y_signed = 1) or
// uint OUT_BITS (y_signed = 0, a fused ReLU). mult is unsigned MBITS bits (dyadic()
// gives 2^(m-1) <= M < 2^m, m = 16), shift is 0..62.
//
// Widths: |acc * mult| < 2^(ACC_BITS - 1 + MBITS); the contract requires
// ACC_BITS + MBITS <= 62, so the rounding addition (half <= 2^61) is exact in 64 bits.
//
// Pipeline: 2 registers (advance on ce): R1 = product, R2 = rounded, saturated code.
// A value presented at edge E appears on y after edge E + 1 (REQUANT_DEPTH = 2 edges
// from the acc input register's perspective: sampled at E, y valid from E + 1).
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
    localparam integer PROD_BITS = ACC_BITS + MBITS + 1;

    generate
        if (ACC_BITS + MBITS > 62 || OUT_BITS < 2 || OUT_BITS > 16) begin : g_bad
            requant_requires_ACC_BITS_plus_MBITS_at_most_62_and_OUT_BITS_2_to_16 u_error ();
        end
    endgenerate

    // R1: the exact product.
    reg signed [PROD_BITS-1:0] r1_prod;
    reg [5:0]                  r1_shift;
    reg                        r1_signed;
    wire signed [PROD_BITS-1:0] mult_x = {{(PROD_BITS-MBITS){1'b0}}, mult};  // non-negative
    wire signed [PROD_BITS-1:0] acc_x  = {{(PROD_BITS-ACC_BITS){acc[ACC_BITS-1]}}, acc};
    always @(posedge clk) begin
        if (ce) begin
            r1_prod   <= acc_x * mult_x;
            r1_shift  <= shift;
            r1_signed <= y_signed;
        end
    end

    // R2: round half up, arithmetic shift, saturate.
    wire signed [63:0] prod64  = {{(64-PROD_BITS){r1_prod[PROD_BITS-1]}}, r1_prod};
    wire signed [63:0] half    = (r1_shift == 6'd0) ? 64'sd0 : (64'sd1 <<< (r1_shift - 6'd1));
    wire signed [63:0] rounded = (prod64 + half) >>> r1_shift;
    wire signed [63:0] y_lo = r1_signed ? -(64'sd1 <<< (OUT_BITS - 1)) : 64'sd0;
    wire signed [63:0] y_hi = r1_signed ? ((64'sd1 <<< (OUT_BITS - 1)) - 64'sd1)
                                        : ((64'sd1 <<< OUT_BITS) - 64'sd1);
    /* verilator lint_off UNUSEDSIGNAL */  // the clamped value fits its low OUT_BITS bits
    wire signed [63:0] clamped = (rounded < y_lo) ? y_lo : ((rounded > y_hi) ? y_hi : rounded);
    /* verilator lint_on UNUSEDSIGNAL */
    always @(posedge clk) begin
        if (ce) y <= clamped[OUT_BITS-1:0];
    end
endmodule

`default_nettype wire
