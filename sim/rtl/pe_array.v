// codesign FQ-BERT engine: the PE array (docs/engine.md §1, §2, §4, §5).
//
// G bit-split PEs (G = P*N output channels of one tile) share one activation stream:
// each input beat is M activation codes (one row chunk) joined with one weight beat
// (M nibbles per PE). A row is a run of beats closed by s_act_tlast; at the end of each
// row every PE requantizes its accumulator (requant.v, per-channel M, sh) and the array
// emits one output beat: G codes (and, if ACC_OUT, the G raw accumulators).
//
// Streams (AXI4-Stream handshakes, a beat moves when tvalid & tready):
//   s_act   tdata  M codes, lane l at [8l+7:8l] (8x8 mode: the low M/2 codes)
//           tlast  last beat of a row
//           tuser  USER_BITS sideband, taken from the row's last beat to m_tuser
//           qslot  parameter slot of the row (tile index): bias, M and sh come from
//                  qp slot `qslot` (AXI TUSER-like sideband of the same beat)
//   s_wgt   tdata  PE g's weights at [4M*g +: 4M]; within it nibble l at [4l+3:4l]
//                  (8x4: int4 w[k][n]; 8x8: M/2 int8 codes b, byte i = nibbles 2i, 2i+1)
//           The two input streams are joined: a beat moves when both are valid.
//   m       tdata  PE g's code at [OUT_BITS*g +: OUT_BITS]
//           tacc   PE g's accumulator at [ACC_BITS*g +: ACC_BITS] (0 when ACC_OUT = 0):
//                  the raw sum_k a*w + bias, e.g. Q.K^T scores before requantization
//           tuser  sideband of the row
// Flow control: the whole pipeline advances when the output register is empty or taken
// (ce = !m_tvalid | m_tready); the input handshakes are qualified by the same ce.
//
// Per-channel parameters live in a small memory of QDEPTH slots (one per tile of a
// layer, written through qp_we/qp_addr before the tile's rows reach the accumulator):
// each row carries its slot number down the pipeline, so consecutive tiles with
// different parameters stream back to back without draining the pipeline.
//
// Cycle model (docs/engine.md §4). Counting clock edges inclusively from the edge that
// accepts the first input beat to the edge that accepts the last output beat, with
// inputs offered every cycle and m_tready = 1, R rows of B beats take exactly
//     R*B + D_PE cycles,   D_PE = 5 + clog2(M)   (M = 2: 6)
// B = ceil(K / M) in 8x4 mode and ceil(2K / M) = ceil(K / (M/2)) in 8x8 mode (the
// driver pads the last beat of a row with zero codes and zero weights).
// D_PE is the latency from accepting a row's last beat to accepting its output beat:
// input register 1 + product register 1 + adder tree clog2(M) + accumulate 1 +
// requant 2 (product, round/saturate = output register).
`default_nettype none

module pe_array #(
    parameter integer G         = 4,   // PEs = output channels per tile
    parameter integer M         = 8,   // lanes per PE (even)
    parameter integer ACC_BITS  = 32,
    parameter integer BIAS_BITS = 32,
    parameter integer MBITS     = 16,  // requant multiplier width (m)
    parameter integer OUT_BITS  = 8,
    parameter integer PACKING   = 0,   // 0 dsp2, 1 dsp1, 2 lut, 3 dsp2c (see bitsplit_pe.v)
    parameter integer QDEPTH    = 2,   // parameter slots
    parameter integer USER_BITS = 1,
    parameter integer ACC_OUT   = 1,   // 1: drive m_tacc with the raw accumulators
    localparam integer QA       = (QDEPTH <= 2) ? 1 : $clog2(QDEPTH)  // slot address bits
) (
    input  wire                       clk,
    input  wire                       rst,           // synchronous, active high
    // Static configuration (change only while the array is empty).
    input  wire                       cfg_mode,      // 0: 8x4 (int4 weights), 1: 8x8 (int8)
    input  wire                       cfg_a_signed,  // activations int8 (1) / uint8 (0)
    input  wire                       cfg_y_signed,  // outputs int (1) / uint (0)
    // Per-channel parameter memory write port.
    input  wire                       qp_we,
    input  wire [QA-1:0]              qp_addr,
    input  wire [G*BIAS_BITS-1:0]     qp_bias,       // channel g at [BIAS_BITS*g +: BIAS_BITS], signed
    input  wire [G*MBITS-1:0]         qp_mult,       // unsigned M per channel
    input  wire [G*6-1:0]             qp_shift,      // sh per channel, 0..62
    // Activation stream.
    input  wire                       s_act_tvalid,
    output wire                       s_act_tready,
    input  wire [M*8-1:0]             s_act_tdata,
    input  wire                       s_act_tlast,
    input  wire [USER_BITS-1:0]       s_act_tuser,
    input  wire [QA-1:0]              s_act_qslot,
    // Weight stream (joined with the activation stream).
    input  wire                       s_wgt_tvalid,
    output wire                       s_wgt_tready,
    input  wire [G*M*4-1:0]           s_wgt_tdata,
    // Output stream: one beat per row.
    output reg                        m_tvalid,
    input  wire                       m_tready,
    output wire [G*OUT_BITS-1:0]      m_tdata,
    output wire [G*ACC_BITS-1:0]      m_tacc,
    output reg  [USER_BITS-1:0]       m_tuser,
    // The pipeline depth of the cycle model (constant).
    output wire [31:0]                d_pe
);
    // D_PE: input register, product register, clog2(M) tree levels (at least 1),
    // accumulate, 2 requant registers; dsp2c (bitsplit_pe.v): input register, the chain
    // (C = min(M/2, 32) positions: M and P registers with skew), clog2(M/C) tree levels
    // (at least 1), accumulate, 2 requant registers.
    localparam         PAIRED = (PACKING == 0 || PACKING == 3);  // 1-bit flag
    localparam integer LT    = (M <= 2) ? 1 : $clog2(M);
    localparam integer CL    = (M / 2 <= 32) ? M / 2 : 32;
    localparam integer LTC   = (M / CL <= 2) ? 1 : $clog2(M / CL);
    localparam integer D_PE  = (PACKING == 3) ? 5 + CL + LTC : 5 + LT;
    localparam integer UB    = QA + USER_BITS;       // sideband through the PEs: {user, slot}
    localparam integer NINST = PAIRED ? (G + 1) / 2 : G;

    assign d_pe = D_PE;

    // ---------------------------------------------------------------- handshakes
    wire ce   = ~m_tvalid | m_tready;
    wire fire = s_act_tvalid & s_wgt_tvalid & ce;
    assign s_act_tready = ce & s_wgt_tvalid;
    assign s_wgt_tready = ce & s_act_tvalid;

    reg row_start;  // the next accepted beat opens a row
    always @(posedge clk) begin
        if (rst)       row_start <= 1'b1;
        else if (fire) row_start <= s_act_tlast;
    end

    // ---------------------------------------------------------------- parameter slots
    reg [G*BIAS_BITS-1:0] qp_bias_mem  [0:QDEPTH-1];
    reg [G*MBITS-1:0]     qp_mult_mem  [0:QDEPTH-1];
    reg [G*6-1:0]         qp_shift_mem [0:QDEPTH-1];
    always @(posedge clk) begin
        if (qp_we) begin
            qp_bias_mem[qp_addr]  <= qp_bias;
            qp_mult_mem[qp_addr]  <= qp_mult;
            qp_shift_mem[qp_addr] <= qp_shift;
        end
    end

    // ---------------------------------------------------------------- PEs
    wire [UB-1:0] pe_in_user = {s_act_tuser, s_act_qslot};
    /* verilator lint_off UNUSEDSIGNAL */  // the bias lookup uses the slot bits only
    wire [UB-1:0] sum_user;
    /* verilator lint_on UNUSEDSIGNAL */
    wire [UB-1:0] drain_user;
    wire          drain_valid;
    wire [G*ACC_BITS-1:0] drain_acc;
    wire [G*BIAS_BITS-1:0] row_bias = qp_bias_mem[sum_user[QA-1:0]];

    genvar q;
    generate
        for (q = 0; q < NINST; q = q + 1) begin : g_pe
            // Instance q holds PEs [first, first + npe); dsp2/dsp2c pair PEs (2q, 2q+1); an
            // odd last PE of a dsp2 array uses one DSP per lane (dsp1), of a dsp2c array a
            // chain with w1 = 0 (same depth).
            localparam integer NPE   = (PAIRED && 2*q + 1 < G) ? 2 : 1;
            localparam integer FIRST = PAIRED ? 2*q : q;
            localparam integer PK    = (PACKING == 0 && NPE == 1) ? 1 : PACKING;
            /* verilator lint_off UNUSEDSIGNAL */  // instances q > 0: control unused
            wire [UB-1:0] su, du;
            wire          dv;
            /* verilator lint_on UNUSEDSIGNAL */
            bitsplit_pe #(
                .M(M), .NPE(NPE), .ACC_BITS(ACC_BITS), .BIAS_BITS(BIAS_BITS),
                .USER_BITS(UB), .PACKING(PK)
            ) u_pe (
                .clk(clk), .rst(rst), .ce(ce),
                .mode(cfg_mode), .a_signed(cfg_a_signed),
                .in_valid(fire), .in_first(row_start), .in_last(s_act_tlast),
                .in_user(pe_in_user),
                .in_a(s_act_tdata),
                .in_w(s_wgt_tdata[4*M*FIRST +: 4*M*NPE]),
                .sum_user(su),
                .bias(row_bias[BIAS_BITS*FIRST +: BIAS_BITS*NPE]),
                .out_valid(dv), .out_user(du),
                .out_acc(drain_acc[ACC_BITS*FIRST +: ACC_BITS*NPE])
            );
            if (q == 0) begin : g_ctl  // all instances run in lockstep
                assign sum_user    = su;
                assign drain_valid = dv;
                assign drain_user  = du;
            end
        end
    endgenerate

    // ---------------------------------------------------------------- requantizers
    wire [QA-1:0]         drain_slot = drain_user[QA-1:0];
    wire [G*MBITS-1:0]    row_mult   = qp_mult_mem[drain_slot];
    wire [G*6-1:0]        row_shift  = qp_shift_mem[drain_slot];
    wire [G*OUT_BITS-1:0] codes;

    genvar c;
    generate
        for (c = 0; c < G; c = c + 1) begin : g_rq
            requant #(.ACC_BITS(ACC_BITS), .MBITS(MBITS), .OUT_BITS(OUT_BITS)) u_rq (
                .clk(clk), .ce(ce), .y_signed(cfg_y_signed),
                .acc(drain_acc[ACC_BITS*c +: ACC_BITS]),
                .mult(row_mult[MBITS*c +: MBITS]),
                .shift(row_shift[6*c +: 6]),
                .y(codes[OUT_BITS*c +: OUT_BITS])
            );
        end
    endgenerate

    // Control (and optional accumulator) alongside the two requant registers.
    reg                 r1_valid;
    reg [USER_BITS-1:0] r1_user;
    always @(posedge clk) begin
        if (rst) begin
            r1_valid <= 1'b0;
            m_tvalid <= 1'b0;
        end else if (ce) begin
            r1_valid <= drain_valid;
            m_tvalid <= r1_valid;
        end
        if (ce) begin
            r1_user <= drain_user[UB-1:QA];
            m_tuser <= r1_user;
        end
    end
    assign m_tdata = codes;  // the requantizers' output registers

    generate
        if (ACC_OUT != 0) begin : g_acc_out
            reg [G*ACC_BITS-1:0] r1_acc, r2_acc;
            always @(posedge clk) begin
                if (ce) begin
                    r1_acc <= drain_acc;
                    r2_acc <= r1_acc;
                end
            end
            assign m_tacc = r2_acc;
        end else begin : g_no_acc_out
            assign m_tacc = {G*ACC_BITS{1'b0}};
        end
    endgenerate
endmodule

`default_nettype wire
