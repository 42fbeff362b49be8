// codesign FQ-BERT engine: one stage of a dsp2c DSP chain (docs/engine.md §3, packing
// "dsp2c"; bitsplit_pe.v builds the chains).
//
// Like dsp2_mul.v the stage multiplies the activation a by the packed weight
// w0 + w1 * 2^18 (two lanes sharing a), but instead of extracting the two products it
// ADDS the packed product to the previous stage's output (the P cascade):
//
//   m    <= a * (w0 + w1 * 2^18)          (M register)
//   p    <= (FIRST ? 0 : pcin) + m         (P register)
//   pcout = p                              (to the next stage's pcin)
//
// so the last stage of a chain of C stages whose operands are skewed by one cycle per
// stage holds sum_j a_j*w0_j + 2^18 * sum_j a_j*w1_j for one beat; bitsplit_pe.v extracts
// the two sums as dsp2_mul.v extracts the two products (exact while |sum| < 2^17).
// Latency: operands -> p in 2 clock-enabled cycles (MREG = PREG = 1, no input registers).
//
// Synthesis (Yosys defines SYNTHESIS): one DSP48E2 primitive per stage. Yosys 0.23's
// xilinx_dsp packs registers, post-adders and cascades only for DSP48E1 (xc7), so the
// stage is instantiated: A = w0 (sign-extended, A2 path with AREG = 0), D = w1 * 2^18
// (DREG = 0), INMODE = 00100 (pre-adder AD = D + A, ADREG = 0), AMULTSEL = "AD",
// B = a (BREG = 0), MREG = 1, OPMODE W = 0, Z = PCIN (001; 000 for the first stage),
// Y = X = M (01), ALUMODE = 0000 (Z + W + X + Y), PREG = 1, CEM = CEP = ce; the cascade
// is PCOUT -> PCIN. Simulation (Verilator, Icarus) uses the behavioural description below,
// which is what the primitive computes with these settings (UG579).
`default_nettype none

module dsp2_chain_stage #(
    parameter integer FIRST = 0     // 1: first stage of a chain (no cascade input)
) (
    input  wire               clk,
    input  wire               ce,
    input  wire        [8:0]  a,      // activation (9-bit signed)
    input  wire        [4:0]  w0,     // weight of the low field (5-bit signed)
    input  wire        [4:0]  w1,     // weight of the high field (5-bit signed)
    /* verilator lint_off UNUSEDSIGNAL */
    input  wire        [47:0] pcin,   // previous stage's pcout (ignored when FIRST)
    /* verilator lint_on UNUSEDSIGNAL */
    output wire        [47:0] pcout,  // cascade to the next stage
    output wire        [47:0] p       // this stage's P register
);
`ifdef SYNTHESIS
    wire [47:0] pc_o, p_o;
    wire [47:0] pc_i = (FIRST != 0) ? 48'd0 : pcin;
    DSP48E2 #(
        .AMULTSEL("AD"), .A_INPUT("DIRECT"), .BMULTSEL("B"), .B_INPUT("DIRECT"),
        .PREADDINSEL("A"), .USE_MULT("MULTIPLY"), .USE_SIMD("ONE48"),
        .AREG(0), .ACASCREG(0), .BREG(0), .BCASCREG(0), .CREG(0), .DREG(0), .ADREG(0),
        .MREG(1), .PREG(1), .INMODEREG(0), .OPMODEREG(0), .ALUMODEREG(0),
        .CARRYINREG(0), .CARRYINSELREG(0)
    ) u_dsp (
        .CLK(clk),
        .A({{21{w0[4]}}, w0}),
        .B({{9{a[8]}}, a}),
        .C(48'd0),
        .D({{4{w1[4]}}, w1, 18'd0}),
        .ACIN(30'd0), .BCIN(18'd0), .PCIN(pc_i),
        .CARRYCASCIN(1'b0), .MULTSIGNIN(1'b0), .CARRYIN(1'b0), .CARRYINSEL(3'b000),
        .INMODE(5'b00100),
        .OPMODE(FIRST != 0 ? 9'b00_000_01_01 : 9'b00_001_01_01),
        .ALUMODE(4'b0000),
        .CEA1(1'b0), .CEA2(1'b0), .CEB1(1'b0), .CEB2(1'b0), .CEC(1'b0), .CED(1'b0), .CEAD(1'b0),
        .CEM(ce), .CEP(ce), .CEINMODE(1'b0), .CECTRL(1'b0), .CEALUMODE(1'b0), .CECARRYIN(1'b0),
        .RSTA(1'b0), .RSTB(1'b0), .RSTC(1'b0), .RSTD(1'b0), .RSTM(1'b0), .RSTP(1'b0),
        .RSTINMODE(1'b0), .RSTCTRL(1'b0), .RSTALUMODE(1'b0), .RSTALLCARRYIN(1'b0),
        .P(p_o), .PCOUT(pc_o),
        .ACOUT(), .BCOUT(), .CARRYCASCOUT(), .CARRYOUT(), .MULTSIGNOUT(), .OVERFLOW(),
        .PATTERNBDETECT(), .PATTERNDETECT(), .UNDERFLOW(), .XOROUT()
    );
    assign pcout = pc_o;
    assign p     = p_o;
`else
    // pre-adder (27-bit AD), 27x18 multiplier (45-bit M, sign-extended), 48-bit ALU
    wire signed [26:0] ad   = {{22{w0[4]}}, w0} + {{4{w1[4]}}, w1, 18'd0};
    wire signed [47:0] ad_x = {{21{ad[26]}}, ad};
    wire signed [47:0] a_x  = {{39{a[8]}}, a};
    reg  signed [47:0] m_r, p_r;
    wire signed [47:0] z    = (FIRST != 0) ? 48'sd0 : $signed(pcin);
    always @(posedge clk) begin
        if (ce) begin
            m_r <= a_x * ad_x;
            p_r <= z + m_r;
        end
    end
    assign pcout = p_r;
    assign p     = p_r;
`endif
endmodule

`default_nettype wire
