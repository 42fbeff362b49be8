// Test wrapper (not part of the engine): NW1 dsp2_mul instances; instance i has the
// constant weight operand w1 = W1_LO + i (5-bit signed), and all share the activation a
// (9 bits) and the weight w0 (5 bits). tb_dsp2.py sweeps (a, w0), so with NW1 = 32,
// W1_LO = -16 every (a, w0, w1) of the multiplier's operand ranges is checked
// (2^9 * 2^5 * 2^5 = 524288 packed multiplications). Instance i drives
// p[32i +: 16] = a*w0 and p[32i+16 +: 16] = a*w1 (sign-extended to 16 bits).
`default_nettype none

module dsp2_all #(
    parameter integer NW1   = 32,
    parameter integer W1_LO = -16
) (
    input  wire [8:0]        a,
    input  wire [4:0]        w0,
    output wire [NW1*32-1:0] p
);
    genvar i;
    generate
        for (i = 0; i < NW1; i = i + 1) begin : g_mul
            localparam integer W1 = W1_LO + i;
            wire [31:0]        w1_word = W1;  // two's complement; the low 5 bits are w1
            wire signed [13:0] p0, p1;
            dsp2_mul #(.A_BITS(9), .W_BITS(5), .SHIFT(18)) u_mul (
                .a(a), .w0(w0), .w1(w1_word[4:0]), .p0(p0), .p1(p1)
            );
            assign p[32*i +: 32] = {{2{p1[13]}}, p1, {2{p0[13]}}, p0};
        end
    endgenerate
endmodule

`default_nettype wire
