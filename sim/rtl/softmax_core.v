// codesign FQ-BERT engine: the integer softmax core (docs/arithmetic.md §5,
// codesign.sim.reference.softmax; docs/engine.md §1, §4).
//
// Per row x (N codes, int8 or uint8, L codes per beat), with the exp table T (256 entries
// of EB bits, T[0] >= 1; entries past 2^b - 1 unused for b-bit codes):
//   mx = max_j x_j;  e_j = T[mx - x_j];  S = sum_j e_j;  R = floor(2^32 / S);
//   p_j = min(2^OB - 1, rshr(e_j * R, 32 - OB))          (unsigned OB-bit codes)
//
// Organisation: two units and two row buffers, so that consecutive rows overlap.
//   front: IN   accepts the row's B = ceil(N / L) beats into buffer f, tracking the max;
//          SUM  reads the buffer again (B cycles) and sums T[mx - x] (3-stage pipeline);
//          then hands (mx, S, B, buffer) to the back unit as soon as that is idle, and
//          takes the next row into the other buffer.
//   back:  DIV  R = floor(2^32 / S), radix-2 restoring division: 32 cycles, one quotient
//               bit each (bit 32, set only for S = 1, is resolved when loading);
//          NORM reads the buffer (B cycles) and emits p (3-stage pipeline to the output
//               register); the back unit is free again after issuing the last read.
// The buffer of row r is rewritten by row r + 2 only after row r's NORM pass: the front
// hands row r + 1 over only once the back unit is idle.
//
// Streams (AXI4-Stream): s_* input beats (tkeep: valid lanes; a row is the beats up to
// tlast; at least one valid lane per row; at most NMAX codes per row), m_* output beats
// with the same tkeep/tlast (lanes off in tkeep carry 0). The output pipeline stalls
// on m_tready; the DIV and the front unit do not depend on it.
//
// Cycle count (docs/engine.md §4), counted as for the PE array (inclusive, from the edge
// accepting the first input beat to the edge accepting the last output beat), for
// `rows` rows of N elements offered without gaps and m_tready = 1:
//     C = 3B + 38 + (rows - 1) * max(2B + 3, B + 33),     B = ceil(N / L)
// i.e. one row alone takes 3*ceil(N/L) + 32 + D_SM with D_SM = 6, and in a stream of
// rows the front (2B + 3: input B, exp-sum B, pipeline drain 2, handoff 1) and the back
// (B + 33: handoff 1, division 32, normalise B) overlap; the last row adds the output
// pipeline (3). (codesign.sim.rtl.softmax_cycles.)
`default_nettype none

module softmax_core #(
    parameter integer L    = 8,    // lanes (codes per beat)
    parameter integer NMAX = 256,  // longest row
    parameter integer EB   = 8,    // exp-table bits (1..16)
    parameter integer OB   = 8     // output bits (1..16)
) (
    input  wire              clk,
    input  wire              rst,
    input  wire              cfg_x_signed,  // input codes int8 (1) / uint8 (0)
    // Exp table write port: T[tbl_addr] = tbl_data.
    input  wire              tbl_we,
    input  wire [7:0]        tbl_addr,
    input  wire [EB-1:0]     tbl_data,
    // Input rows.
    input  wire              s_tvalid,
    output wire              s_tready,
    input  wire [L*8-1:0]    s_tdata,
    input  wire [L-1:0]      s_tkeep,
    input  wire              s_tlast,
    // Output rows.
    output reg               m_tvalid,
    input  wire              m_tready,
    output reg  [L*OB-1:0]   m_tdata,
    output reg  [L-1:0]      m_tkeep,
    output reg               m_tlast
);
    localparam integer BMAX = (NMAX + L - 1) / L;            // beats per row buffer
    localparam integer BA   = (BMAX <= 2) ? 1 : $clog2(BMAX);
    localparam integer SUMW = 32;

    generate
        if (EB < 1 || EB > 16 || OB < 1 || OB > 16) begin : g_bad
            softmax_core_requires_EB_and_OB_in_1_to_16 u_error ();
        end
    endgenerate

    // ------------------------------------------------------------ table and buffers
    reg [EB-1:0]   tbl [0:255];
    reg [L*8-1:0]  row_data [0:2*BMAX-1];  // {buffer, beat}
    reg [L-1:0]    row_keep [0:2*BMAX-1];
    always @(posedge clk) if (tbl_we) tbl[tbl_addr] <= tbl_data;

    // 9-bit signed value of lane j's code.
    function automatic signed [8:0] code_value(input [7:0] c, input is_signed);
        code_value = {is_signed & c[7], c};
    endfunction

    // ------------------------------------------------------------ front unit
    localparam [1:0] F_IN = 2'd0, F_SUM = 2'd1, F_DRAIN = 2'd2, F_HAND = 2'd3;
    reg [1:0]    f_state;
    reg          f_buf;            // buffer being filled / summed
    reg [BA-1:0] f_idx;            // beat index (IN: write, SUM: read)
    reg [BA-1:0] f_nbeats_m1;      // beats in the row - 1
    reg signed [8:0] f_max;        // running max (IN), final max (SUM .. HAND)
    reg [1:0]    f_drain;          // SUM pipeline drain counter
    reg [SUMW-1:0] f_sum;

    wire in_fire = s_tvalid & s_tready;
    assign s_tready = (f_state == F_IN);

    // Max over the kept lanes of the incoming beat, folded into the running max.
    reg signed [8:0] beat_max;
    integer j;
    always @(*) begin
        beat_max = f_max;
        for (j = 0; j < L; j = j + 1)
            if (s_tkeep[j] && code_value(s_tdata[8*j +: 8], cfg_x_signed) > beat_max)
                beat_max = code_value(s_tdata[8*j +: 8], cfg_x_signed);
    end

    // SUM pipeline: (1) buffer read, (2) e_j = T[mx - x_j] per lane, (3) S += sum_j e_j.
    reg              su1_v, su2_v;
    reg [L*8-1:0]    su1_data;
    reg [L-1:0]      su1_keep;
    reg [L*EB-1:0]   su2_e;
    reg [SUMW-1:0]   su2_beat_sum;
    always @(*) begin
        su2_beat_sum = {SUMW{1'b0}};
        for (j = 0; j < L; j = j + 1)
            su2_beat_sum = su2_beat_sum + {{(SUMW-EB){1'b0}}, su2_e[EB*j +: EB]};
    end
    wire su_issue = (f_state == F_SUM);

    // Handoff to the back unit.
    wire b_idle;
    wire hand = (f_state == F_HAND) & b_idle;

    always @(posedge clk) begin
        if (rst) begin
            f_state <= F_IN;
            f_buf   <= 1'b0;
            f_idx   <= {BA{1'b0}};
            f_max   <= -9'sd256;  // below every code: the first beat sets it
            su1_v   <= 1'b0;
            su2_v   <= 1'b0;
        end else begin
            su1_v <= su_issue;
            su2_v <= su1_v;
            case (f_state)
                F_IN: if (in_fire) begin
                    f_max <= beat_max;
                    if (s_tlast) begin
                        f_nbeats_m1 <= f_idx;
                        f_idx       <= {BA{1'b0}};
                        f_sum       <= {SUMW{1'b0}};
                        f_state     <= F_SUM;
                    end else begin
                        f_idx <= f_idx + 1'b1;
                    end
                end
                F_SUM: begin
                    if (f_idx == f_nbeats_m1) begin
                        f_drain <= 2'd0;
                        f_state <= F_DRAIN;
                    end
                    f_idx <= f_idx + 1'b1;
                end
                F_DRAIN: begin  // the last beat's e values reach the sum
                    f_drain <= f_drain + 1'b1;
                    if (f_drain == 2'd1) f_state <= F_HAND;
                end
                default: if (hand) begin  // F_HAND
                    f_state <= F_IN;
                    f_buf   <= ~f_buf;
                    f_idx   <= {BA{1'b0}};
                    f_max   <= -9'sd256;
                end
            endcase
            if (su2_v) f_sum <= f_sum + su2_beat_sum;
        end
        if (in_fire) begin
            row_data[{f_buf, f_idx}] <= s_tdata;
            row_keep[{f_buf, f_idx}] <= s_tkeep;
        end
        su1_data <= row_data[{f_buf, f_idx}];
        su1_keep <= row_keep[{f_buf, f_idx}];
    end

    genvar q;
    generate
        for (q = 0; q < L; q = q + 1) begin : g_sum_lane
            // k = mx - x lies in 0 .. 255 for a kept lane: its value mod 2^8 is exact.
            wire [7:0] k = f_max[7:0] - su1_data[8*q +: 8];
            always @(posedge clk) su2_e[EB*q +: EB] <= su1_keep[q] ? tbl[k] : {EB{1'b0}};
        end
    endgenerate

    // ------------------------------------------------------------ back unit
    localparam [1:0] B_IDLE = 2'd0, B_DIV = 2'd1, B_NORM = 2'd2;
    reg [1:0]        b_state;
    reg              b_buf;
    reg [BA-1:0]     b_idx, b_nbeats_m1;
    reg [7:0]        b_max;
    reg [SUMW-1:0]   b_sum;
    reg [32:0]       b_quot;       // R = floor(2^32 / S), 33 bits (2^32 for S = 1)
    reg [31:0]       b_rem;        // < S < 2^32
    reg [5:0]        b_step;
    assign b_idle = (b_state == B_IDLE);

    wire ce_out = ~m_tvalid | m_tready;            // output pipeline advance
    wire nm_issue = (b_state == B_NORM) & ce_out;

    // One restoring-division step: remainder * 2 (the numerator's remaining bits are 0).
    wire [32:0] div_shift = {b_rem, 1'b0};
    wire        div_ge    = div_shift >= {1'b0, b_sum};
    /* verilator lint_off UNUSEDSIGNAL */  // the new remainder is < S: bit 32 is 0
    wire [32:0] div_sub   = div_shift - {1'b0, b_sum};
    /* verilator lint_on UNUSEDSIGNAL */

    always @(posedge clk) begin
        if (rst) begin
            b_state <= B_IDLE;
        end else begin
            case (b_state)
                B_IDLE: if (hand) begin
                    b_buf       <= f_buf;
                    b_nbeats_m1 <= f_nbeats_m1;
                    b_max       <= f_max[7:0];
                    b_sum       <= f_sum;
                    // quotient bit 32: 2^32 >= S * 2^32 only for S = 1
                    b_quot      <= {(f_sum == 32'd1), 32'd0};
                    b_rem       <= (f_sum == 32'd1) ? 32'd0 : 32'd1;
                    b_step      <= 6'd0;
                    b_state     <= B_DIV;
                end
                B_DIV: begin
                    b_rem  <= div_ge ? div_sub[31:0] : div_shift[31:0];
                    b_quot <= {b_quot[32], b_quot[30:0], div_ge};
                    b_step <= b_step + 1'b1;
                    if (b_step == 6'd31) begin
                        b_idx   <= {BA{1'b0}};
                        b_state <= B_NORM;
                    end
                end
                B_NORM: if (nm_issue) begin
                    b_idx <= b_idx + 1'b1;
                    if (b_idx == b_nbeats_m1) b_state <= B_IDLE;
                end
                default: b_state <= B_IDLE;
            endcase
        end
    end

    // NORM pipeline: (1) buffer read with the row's mx and R, (2) e_j = T[mx - x_j],
    // (3) p_j = min(2^OB - 1, rshr(e_j * R, 32 - OB)) into the output register.
    reg              nm1_v, nm1_last, nm2_v, nm2_last;
    reg [L*8-1:0]    nm1_data;
    reg [L-1:0]      nm1_keep, nm2_keep;
    reg [7:0]        nm1_max;       // mx mod 2^8 (see k below)
    reg [32:0]       nm1_r, nm2_r;
    reg [L*EB-1:0]   nm2_e;
    always @(posedge clk) begin
        if (rst) begin
            nm1_v    <= 1'b0;
            nm2_v    <= 1'b0;
            m_tvalid <= 1'b0;
        end else if (ce_out) begin
            nm1_v    <= nm_issue;
            nm2_v    <= nm1_v;
            m_tvalid <= nm2_v;
        end
        if (ce_out) begin
            nm1_data <= row_data[{b_buf, b_idx}];
            nm1_keep <= row_keep[{b_buf, b_idx}];
            nm1_last <= (b_idx == b_nbeats_m1);
            nm1_max  <= b_max;
            nm1_r    <= b_quot;
            nm2_keep <= nm1_keep;
            nm2_last <= nm1_last;
            nm2_r    <= nm1_r;
            m_tkeep  <= nm2_keep;
            m_tlast  <= nm2_last;
        end
    end

    localparam [OB-1:0] P_TOP = {OB{1'b1}};
    generate
        for (q = 0; q < L; q = q + 1) begin : g_norm_lane
            wire [7:0] k = nm1_max[7:0] - nm1_data[8*q +: 8];
            always @(posedge clk) if (ce_out) nm2_e[EB*q +: EB] <= nm1_keep[q] ? tbl[k] : {EB{1'b0}};
            // e <= S gives e * R <= 2^32: 33 bits; the rounding adds 2^(31 - OB).
            wire [EB+32:0] prod    = nm2_e[EB*q +: EB] * nm2_r;
            wire [EB+32:0] rounded = (prod + ({{(EB+32){1'b0}}, 1'b1} << (31 - OB))) >> (32 - OB);
            wire           over    = |rounded[EB+32:OB];
            always @(posedge clk) if (ce_out) m_tdata[OB*q +: OB] <= over ? P_TOP : rounded[OB-1:0];
        end
    endgenerate
endmodule

`default_nettype wire
