// codesign FQ-BERT engine: two products that share one activation, formed by ONE
// multiplication (docs/engine.md §3, packing "dsp2").
//
//   P  = a * (w0 + w1 * 2^SHIFT) = a*w0 + a*w1 * 2^SHIFT
//   p0 = sign_extend(P[SHIFT-1:0])      = a*w0
//   p1 = (P - p0) / 2^SHIFT             = a*w1
//
// The packed operand w0 + w1*2^SHIFT (24 bits for 5-bit weights) is what the DSP48E2's
// 27-bit A/D pre-adder path carries, the 9-bit activation goes to the 18-bit B port, and
// the product is one 27x18 multiplication: synthesis maps this module onto ONE DSP48E2
// (checked with Yosys synth_xilinx, see sim/rtl.py).
//
// Exactness. With A_BITS-bit a and W_BITS-bit w0 (both signed), |a*w0| <= 2^(P_BITS-2)
// where P_BITS = A_BITS + W_BITS, so a*w0 lies in the signed SHIFT-bit field
// [-2^(SHIFT-1), 2^(SHIFT-1)) whenever SHIFT >= P_BITS (checked at elaboration).
// Then P[SHIFT-1:0], read as a signed SHIFT-bit number, is exactly a*w0 (P - a*w0 is a
// multiple of 2^SHIFT), and P - a*w0 = a*w1 * 2^SHIFT exactly. In hardware:
//   P >>> SHIFT = floor(P / 2^SHIFT) = a*w1 + floor(a*w0 / 2^SHIFT) = a*w1 - (a*w0 < 0),
// and a*w0 < 0 exactly when bit SHIFT-1 of P is set, so p1 = (P >>> SHIFT) + P[SHIFT-1]:
// one small adder after the DSP, no subtraction of the full product.
// The products are not accumulated inside the DSP (its 48-bit accumulator would mix the
// two fields); they leave it and enter the PEs' adder trees.
//
// Operands (engine use): a is the 9-bit internal activation (int8 sign-extended or uint8
// zero-extended), w0/w1 the 5-bit internal nibbles (int4 sign-extended, or an int8's
// unsigned low nibble zero-extended): P_BITS = 14, SHIFT = 18 gives 4 guard bits.
// tests/test_rtl.py checks p0, p1 against numpy for ALL 2^9 * 2^5 * 2^5 operand
// combinations (sim/cocotb/dsp2_all.v).
`default_nettype none

module dsp2_mul #(
    parameter integer A_BITS = 9,   // signed activation operand width
    parameter integer W_BITS = 5,   // signed weight operand width
    parameter integer SHIFT  = 18   // weight of w1 in the packed operand: 2^SHIFT
) (
    input  wire signed [A_BITS-1:0]        a,
    input  wire signed [W_BITS-1:0]        w0,
    input  wire signed [W_BITS-1:0]        w1,
    output wire signed [A_BITS+W_BITS-1:0] p0,  // a * w0
    output wire signed [A_BITS+W_BITS-1:0] p1   // a * w1
);
    localparam integer P_BITS    = A_BITS + W_BITS;
    // w0 + w1*2^SHIFT lies in [-2^(W_BITS-1) * (2^SHIFT + 1), (2^(W_BITS-1) - 1) * (2^SHIFT + 1)]:
    // W_BITS + SHIFT + 1 bits signed (24 for the engine, <= 27: the DSP48E2 A/D width).
    localparam integer PK_BITS   = W_BITS + SHIFT + 1;
    localparam integer PROD_BITS = PK_BITS + A_BITS;

    generate
        if (SHIFT < P_BITS) begin : g_bad_shift
            // Elaboration error: the low field would overflow into the high one.
            dsp2_mul_requires_SHIFT_at_least_A_BITS_plus_W_BITS u_error ();
        end
    endgenerate

    // Pre-adder: the packed weight operand.
    wire signed [PK_BITS-1:0] w0_x = {{(PK_BITS-W_BITS){w0[W_BITS-1]}}, w0};
    wire signed [PK_BITS-1:0] w1_x = {{(PK_BITS-W_BITS){w1[W_BITS-1]}}, w1};
    wire signed [PK_BITS-1:0] packed_w = w0_x + (w1_x <<< SHIFT);

    // The one multiplication (27x18 DSP48E2 multiplier).
    wire signed [PROD_BITS-1:0] prod = a * packed_w;

    // Extraction: the low field as a signed number, the high field corrected by the
    // low field's sign (see the header).
    // Only the low P_BITS bits of each field are needed (the values fit them).
    wire signed [P_BITS-1:0] hi_floor = prod[SHIFT +: P_BITS];  // (P >>> SHIFT) mod 2^P_BITS
    assign p0 = prod[P_BITS-1:0];
    assign p1 = hi_floor + {{(P_BITS-1){1'b0}}, prod[SHIFT-1]};
endmodule

`default_nettype wire
