// codesign FQ-BERT engine: the integer LayerNorm core (docs/arithmetic.md §6,
// codesign.sim.reference.layernorm; docs/engine.md §1, §4).
//
// Per row x of H int16 codes (L per beat; H = the number of valid lanes up to tlast,
// 1 .. HMAX <= 4096), with per-element G_i (int16), B_i (int32) and per-layer S, E:
//   sum = sum_i x_i;  mu = floor((2 sum + H) / (2H));  d_i = x_i - mu;  SS = sum_i d_i^2;
//   v = floor(SS * 2^16 / H) + E;  sigma = max(1, isqrt(v));
//   z_i = floor((d_i * 2^25 + sigma) / (2 sigma));  y_i = sat_Y(rshr(z_i * G_i + B_i, S))
//
// Organisation (two units, two row buffers, as softmax_core.v):
//   front: IN    accepts the row (B = ceil(H / L) beats) into buffer f, sums x, counts H;
//          MU    mu by a 16-step restoring division (ln_seq_div);
//          VAR   reads the buffer again (B cycles), SS += (x - mu)^2 (3-stage pipeline);
//          V     floor(SS * 2^16 / H) by a 48-step restoring division, + E;
//          SQRT  isqrt(v) by the contract's 32-step digit-by-digit method;
//          then hands (mu, sigma, B, buffer) to the back unit when it is idle.
//   back:  NORM  reads the buffer (B cycles); each beat goes through a 28-stage pipeline:
//          read, numerator, 24-stage restoring divider per lane (|z| < 2^23, §6: 24
//          quotient bits), z*G + B, rshr + saturate into the output register.
// Divisions with a negative numerator use floor(n / d) = -floor((-n + d - 1) / d).
//
// Streams (AXI4-Stream): s_* input beats (tkeep: valid lanes; the valid lanes of a row
// are its elements in order; a row ends with tlast), m_* output beats with the same
// tkeep/tlast (lanes off in tkeep carry 0). Parameters: G_i, B_i of element i = lane
// i mod L of parameter word i / L (prm_* write port); cfg_* static while rows stream.
//
// Cycle count (inclusive, first accepted input beat to last accepted output beat; rows
// of H elements offered without gaps, m_tready = 1; codesign.sim.rtl.layernorm_cycles):
//     C = 3B + 130 + (rows - 1) * (2B + 102),     B = ceil(H / L)
// One row: 3*ceil(H/L) + 32 (isqrt) + 16 (mu) + 48 (v) + D_LN with D_LN = 34. The front
// takes 2B + 102 per row (IN B, MU 1 + 16, VAR B + 2, V 1 + 48, SQRT 1 + 32, handoff 1)
// and the back B + 1, so in a stream rows follow each other every 2B + 102; the last
// row adds its NORM pass and the 28-stage pipeline.
`default_nettype none

// Restoring division, one quotient bit per cycle: quot = floor(num / den) for
// num < den * 2^QW (the caller's bound). start loads; the QW iterations run in the
// following QW cycles; `fin` is high during the last one, quot is valid after it.
module ln_seq_div #(
    parameter integer NW = 64,  // numerator width
    parameter integer DW = 16,  // divisor width
    parameter integer QW = 16   // quotient bits
) (
    input  wire          clk,
    input  wire          rst,
    input  wire          start,
    input  wire [NW-1:0] num,
    input  wire [DW-1:0] den,
    output wire          fin,
    output reg  [QW-1:0] quot
);
    localparam integer W = (NW > DW + QW) ? NW : DW + QW;
    localparam integer CW = $clog2(QW + 1);
    reg [W-1:0]  rem, dsh;
    reg [CW-1:0] left;  // iterations left
    wire [W-1:0] num_w = {{(W-NW){1'b0}}, num};
    wire [W-1:0] den_w = {{(W-DW){1'b0}}, den};
    wire ge = rem >= dsh;
    assign fin = (left == 1);
    always @(posedge clk) begin
        if (rst) begin
            left <= {CW{1'b0}};
        end else if (start) begin
            rem  <= num_w;
            dsh  <= den_w << (QW - 1);
            left <= QW[CW-1:0];
        end else if (left != 0) begin
            if (ge) rem <= rem - dsh;
            quot <= {quot[QW-2:0], ge};
            dsh  <= dsh >> 1;
            left <= left - 1'b1;
        end
    end
endmodule

module layernorm_core #(
    parameter integer L        = 8,     // lanes (elements per beat)
    parameter integer HMAX     = 1024,  // longest row (<= 4096)
    parameter integer OUT_BITS = 8,     // output code width (2 .. 8)
    localparam integer BMAX    = (HMAX + L - 1) / L,       // beats per row buffer
    localparam integer BA      = (BMAX <= 2) ? 1 : $clog2(BMAX)
) (
    input  wire                 clk,
    input  wire                 rst,
    input  wire                 cfg_y_signed,  // output int (1) / uint (0)
    input  wire [5:0]           cfg_shift,     // S, 1 .. 62
    input  wire [39:0]          cfg_eps,       // E, 0 .. 2^40 - 1
    // Per-element parameters: word prm_addr holds elements L*prm_addr + j, j < L.
    input  wire                 prm_we,
    input  wire [BA-1:0]        prm_addr,
    input  wire [L*16-1:0]      prm_g,         // G_i, int16
    input  wire [L*32-1:0]      prm_b,         // B_i, int32
    // Input rows: int16 codes.
    input  wire                 s_tvalid,
    output wire                 s_tready,
    input  wire [L*16-1:0]      s_tdata,
    input  wire [L-1:0]         s_tkeep,
    input  wire                 s_tlast,
    // Output rows.
    output reg                  m_tvalid,
    input  wire                 m_tready,
    output reg  [L*OUT_BITS-1:0] m_tdata,
    output reg  [L-1:0]         m_tkeep,
    output reg                  m_tlast
);
    localparam integer QZ   = 24;  // quotient bits of z (|z| < 2^23)

    generate
        if (HMAX > 4096 || OUT_BITS < 2 || OUT_BITS > 8) begin : g_bad
            layernorm_core_requires_HMAX_at_most_4096_and_OUT_BITS_2_to_8 u_error ();
        end
    endgenerate

    // ------------------------------------------------------------ memories
    reg [L*16-1:0] row_data [0:2*BMAX-1];  // {buffer, beat}
    reg [L-1:0]    row_keep [0:2*BMAX-1];
    reg [L*16-1:0] prm_g_mem [0:BMAX-1];
    reg [L*32-1:0] prm_b_mem [0:BMAX-1];
    always @(posedge clk) begin
        if (prm_we) begin
            prm_g_mem[prm_addr] <= prm_g;
            prm_b_mem[prm_addr] <= prm_b;
        end
    end

    integer j;

    // ------------------------------------------------------------ front unit
    localparam [2:0] F_IN = 3'd0, F_MU = 3'd1, F_VAR = 3'd2, F_VDRAIN = 3'd3, F_V = 3'd4,
                     F_SQ0 = 3'd5, F_SQRT = 3'd6, F_HAND = 3'd7;
    reg [2:0]         f_state;
    reg               f_buf;
    reg [BA-1:0]      f_idx, f_nbeats_m1;
    reg signed [28:0] f_sum;         // |sum| <= 4096 * 2^15
    reg [12:0]        f_h;           // H, 1 .. 4096
    reg               f_started;     // the divider of the current state was started
    reg signed [15:0] f_mu;
    reg [44:0]        f_ss;          // SS < 4096 * 2^32
    reg [1:0]         f_drain;
    reg [63:0]        f_v, f_res, f_bit;  // isqrt state
    reg [4:0]         f_step;

    wire in_fire = s_tvalid & s_tready;
    assign s_tready = (f_state == F_IN);

    // Sum and count of the incoming beat's valid lanes.
    reg signed [28:0] beat_sum;
    reg [12:0]        beat_cnt;
    always @(*) begin
        beat_sum = 29'sd0;
        beat_cnt = 13'd0;
        for (j = 0; j < L; j = j + 1) begin
            if (s_tkeep[j]) begin
                beat_sum = beat_sum + {{13{s_tdata[16*j+15]}}, s_tdata[16*j +: 16]};
                beat_cnt = beat_cnt + 1'b1;
            end
        end
    end

    // mu = floor((2 sum + H) / (2H)): magnitude division, then the sign.
    wire signed [29:0] mu_num  = {f_sum, 1'b0} + {17'd0, f_h};
    wire               mu_neg  = mu_num[29];
    wire [13:0]        two_h   = {f_h, 1'b0};
    wire [29:0]        mu_mag  = mu_neg ? (30'd0 - mu_num + {16'd0, two_h} - 30'd1) : mu_num;
    wire               mu_fin;
    wire [15:0]        mu_q;
    ln_seq_div #(.NW(30), .DW(14), .QW(16)) u_mu_div (
        .clk(clk), .rst(rst), .start((f_state == F_MU) && !f_started),  // on entry
        .num(mu_mag), .den(two_h), .fin(mu_fin), .quot(mu_q)
    );

    // v = floor(SS * 2^16 / H) + E.
    wire        v_fin;
    wire [47:0] v_q;
    ln_seq_div #(.NW(61), .DW(13), .QW(48)) u_v_div (
        .clk(clk), .rst(rst), .start((f_state == F_V) && !f_started),
        .num({f_ss, 16'd0}), .den(f_h), .fin(v_fin), .quot(v_q)
    );

    // VAR pipeline: (1) buffer read, (2) d_j^2 per lane, (3) SS += sum_j d_j^2.
    reg            va1_v, va2_v;
    reg [L*16-1:0] va1_data;
    reg [L-1:0]    va1_keep;
    reg [L*32-1:0] va2_sq;
    reg [44:0]     va2_beat;
    always @(*) begin
        va2_beat = 45'd0;
        for (j = 0; j < L; j = j + 1) va2_beat = va2_beat + {13'd0, va2_sq[32*j +: 32]};
    end
    genvar q;
    generate
        for (q = 0; q < L; q = q + 1) begin : g_var_lane
            wire signed [16:0] d  = {va1_data[16*q+15], va1_data[16*q +: 16]} - {f_mu[15], f_mu};
            /* verilator lint_off UNUSEDSIGNAL */  // d^2 < 2^32
            wire signed [33:0] d2 = d * d;
            /* verilator lint_on UNUSEDSIGNAL */
            always @(posedge clk) va2_sq[32*q +: 32] <= va1_keep[q] ? d2[31:0] : 32'd0;
        end
    endgenerate

    // isqrt step (§6): if v >= res + bit: v -= res + bit, res = res/2 + bit; else res /= 2.
    wire [64:0] sq_t  = {1'b0, f_res} + {1'b0, f_bit};
    wire        sq_ge = {1'b0, f_v} >= sq_t;

    // mu from the division's magnitude and the numerator's sign.
    // (|mu| <= 2^15: -32768 is 16'h8000 either way, so 16 bits are exact.)
    wire [15:0] mu_val = mu_neg ? (16'd0 - mu_q) : mu_q;
    // sigma = max(1, isqrt(v)) once the square root is done (isqrt(v) < 2^25).
    wire [24:0] sigma = (f_res == 64'd0) ? 25'd1 : f_res[24:0];

    wire b_idle;
    wire hand = (f_state == F_HAND) & b_idle;

    always @(posedge clk) begin
        if (rst) begin
            f_state   <= F_IN;
            f_buf     <= 1'b0;
            f_idx     <= {BA{1'b0}};
            f_sum     <= 29'sd0;
            f_h       <= 13'd0;
            f_started <= 1'b0;
            va1_v     <= 1'b0;
            va2_v     <= 1'b0;
        end else begin
            va1_v <= (f_state == F_VAR);
            va2_v <= va1_v;
            case (f_state)
                F_IN: if (in_fire) begin
                    f_sum <= f_sum + beat_sum;
                    f_h   <= f_h + beat_cnt;
                    if (s_tlast) begin
                        f_nbeats_m1 <= f_idx;
                        f_started   <= 1'b0;
                        f_state     <= F_MU;
                    end else begin
                        f_idx <= f_idx + 1'b1;
                    end
                end
                F_MU: begin  // divider started on entry, 16 iterations
                    f_started <= 1'b1;
                    if (mu_fin) begin
                        f_idx   <= {BA{1'b0}};
                        f_ss    <= 45'd0;
                        f_state <= F_VAR;
                    end
                end
                F_VAR: begin  // issue the B reads (mu is registered on the first one)
                    if (f_idx == {BA{1'b0}}) f_mu <= mu_val;
                    if (f_idx == f_nbeats_m1) begin
                        f_drain <= 2'd0;
                        f_state <= F_VDRAIN;
                    end
                    f_idx <= f_idx + 1'b1;
                end
                F_VDRAIN: begin  // the last beat's squares reach SS
                    f_drain <= f_drain + 1'b1;
                    if (f_drain == 2'd1) begin
                        f_started <= 1'b0;
                        f_state   <= F_V;
                    end
                end
                F_V: begin  // divider started on entry, 48 iterations
                    f_started <= 1'b1;
                    if (v_fin) f_state <= F_SQ0;
                end
                F_SQ0: begin
                    f_v     <= {16'd0, v_q} + {24'd0, cfg_eps};
                    f_res   <= 64'd0;
                    f_bit   <= 64'd1 << 62;  // 4^31
                    f_step  <= 5'd0;
                    f_state <= F_SQRT;
                end
                F_SQRT: begin  // 32 iterations
                    if (sq_ge) begin
                        f_v   <= f_v - sq_t[63:0];
                        f_res <= (f_res >> 1) + f_bit;
                    end else begin
                        f_res <= f_res >> 1;
                    end
                    f_bit  <= f_bit >> 2;
                    f_step <= f_step + 1'b1;
                    if (f_step == 5'd31) f_state <= F_HAND;
                end
                default: if (hand) begin  // F_HAND
                    f_buf   <= ~f_buf;
                    f_idx   <= {BA{1'b0}};
                    f_sum   <= 29'sd0;
                    f_h     <= 13'd0;
                    f_state <= F_IN;
                end
            endcase
            if (va2_v) f_ss <= f_ss + va2_beat;
        end
        if (in_fire) begin
            row_data[{f_buf, f_idx}] <= s_tdata;
            row_keep[{f_buf, f_idx}] <= s_tkeep;
        end
        va1_data <= row_data[{f_buf, f_idx}];
        va1_keep <= row_keep[{f_buf, f_idx}];
    end

    // ------------------------------------------------------------ back unit
    reg               b_busy;
    reg               b_buf;
    reg [BA-1:0]      b_idx, b_nbeats_m1;
    reg signed [15:0] b_mu;
    reg [24:0]        b_sigma;
    assign b_idle = ~b_busy;

    wire ce_out   = ~m_tvalid | m_tready;  // the NORM pipeline advances
    wire nm_issue = b_busy & ce_out;
    always @(posedge clk) begin
        if (rst) begin
            b_busy <= 1'b0;
        end else if (hand) begin
            b_busy      <= 1'b1;
            b_buf       <= f_buf;
            b_nbeats_m1 <= f_nbeats_m1;
            b_idx       <= {BA{1'b0}};
            b_mu        <= f_mu;
            b_sigma     <= sigma;
        end else if (nm_issue) begin
            b_idx <= b_idx + 1'b1;
            if (b_idx == b_nbeats_m1) b_busy <= 1'b0;
        end
    end

    // NORM pipeline. n1: buffer read with the row's mu and sigma.
    reg               n1_v, n1_last;
    reg [L*16-1:0]    n1_data;
    reg [L-1:0]       n1_keep;
    reg [BA-1:0]      n1_idx;
    reg signed [15:0] n1_mu;
    reg [24:0]        n1_sigma;
    always @(posedge clk) begin
        if (rst)         n1_v <= 1'b0;
        else if (ce_out) n1_v <= nm_issue;
        if (ce_out) begin
            n1_data  <= row_data[{b_buf, b_idx}];
            n1_keep  <= row_keep[{b_buf, b_idx}];
            n1_idx   <= b_idx;
            n1_last  <= (b_idx == b_nbeats_m1);
            n1_mu    <= b_mu;
            n1_sigma <= b_sigma;
        end
    end

    // Divider pipeline: stage 0 (n2) holds the numerator magnitude a and the sign of
    // num = d * 2^25 + sigma; stage s = 1 .. QZ decides quotient bit QZ - s of
    // floor(a / (2 sigma)). Lane j of stage s is element s*L + j of the arrays.
    localparam integer RW = 26 + QZ;  // a < 2 sigma * 2^QZ <= 2^(26 + QZ)
    reg [RW-1:0]  dv_rem  [0:(QZ+1)*L-1];
    reg [QZ-1:0]  dv_quot [0:(QZ+1)*L-1];
    reg [L-1:0]   dv_neg  [0:QZ];
    reg [L-1:0]   dv_keep [0:QZ];
    reg [BA-1:0]  dv_idx  [0:QZ];
    reg [25:0]    dv_den  [0:QZ];       // 2 sigma
    reg [QZ:0]    dv_v, dv_last;

    generate
        for (q = 0; q < L; q = q + 1) begin : g_num_lane
            wire signed [16:0] d   = {n1_data[16*q+15], n1_data[16*q +: 16]} - {n1_mu[15], n1_mu};
            wire signed [42:0] num = {{1{d[16]}}, d, 25'd0} + {18'd0, n1_sigma};
            wire               neg = num[42];
            // floor(num / 2s) = -floor((-num + 2s - 1) / 2s) for num < 0
            wire [42:0]        mag = neg ? (43'd0 - num + {17'd0, n1_sigma, 1'b0} - 43'd1) : num;
            always @(posedge clk) begin
                if (ce_out) begin
                    dv_rem[q]     <= {{(RW-43){1'b0}}, mag};
                    dv_quot[q]    <= {QZ{1'b0}};
                    dv_neg[0][q]  <= neg;
                end
            end
        end
    endgenerate
    always @(posedge clk) begin
        if (rst)         dv_v[0] <= 1'b0;
        else if (ce_out) dv_v[0] <= n1_v;
        if (ce_out) begin
            dv_keep[0] <= n1_keep;
            dv_idx[0]  <= n1_idx;
            dv_last[0] <= n1_last;
            dv_den[0]  <= {n1_sigma, 1'b0};
        end
    end

    genvar st;
    generate
        for (st = 1; st <= QZ; st = st + 1) begin : g_div_stage
            localparam integer BIT = QZ - st;
            wire [RW-1:0] dsh = {{(RW-26){1'b0}}, dv_den[st-1]} << BIT;
            for (q = 0; q < L; q = q + 1) begin : g_lane
                wire [RW-1:0] r  = dv_rem[(st-1)*L + q];
                wire          ge = r >= dsh;
                always @(posedge clk) begin
                    if (ce_out) begin
                        dv_rem[st*L + q]  <= ge ? (r - dsh) : r;
                        dv_quot[st*L + q] <= dv_quot[(st-1)*L + q] | ({{(QZ-1){1'b0}}, ge} << BIT);
                    end
                end
            end
            always @(posedge clk) begin
                if (rst)         dv_v[st] <= 1'b0;
                else if (ce_out) dv_v[st] <= dv_v[st-1];
                if (ce_out) begin
                    dv_neg[st]  <= dv_neg[st-1];
                    dv_keep[st] <= dv_keep[st-1];
                    dv_idx[st]  <= dv_idx[st-1];
                    dv_last[st] <= dv_last[st-1];
                    dv_den[st]  <= dv_den[st-1];
                end
            end
        end
    endgenerate

    // z = +-quotient, acc = z * G + B (|acc| < 2^39), then rshr(acc, S) and saturation.
    reg               nz_v, nz_last;
    reg [L-1:0]       nz_keep;
    reg [L*40-1:0]    nz_acc;
    wire [L*16-1:0]   row_g = prm_g_mem[dv_idx[QZ]];
    wire [L*32-1:0]   row_b = prm_b_mem[dv_idx[QZ]];
    always @(posedge clk) begin
        if (rst)         nz_v <= 1'b0;
        else if (ce_out) nz_v <= dv_v[QZ];
        if (ce_out) begin
            nz_keep <= dv_keep[QZ];
            nz_last <= dv_last[QZ];
        end
    end

    wire signed [63:0] y_lo = cfg_y_signed ? -(64'sd1 <<< (OUT_BITS - 1)) : 64'sd0;
    wire signed [63:0] y_hi = cfg_y_signed ? ((64'sd1 <<< (OUT_BITS - 1)) - 64'sd1)
                                           : ((64'sd1 <<< OUT_BITS) - 64'sd1);
    wire signed [63:0] half = (cfg_shift == 6'd0) ? 64'sd0 : (64'sd1 <<< (cfg_shift - 6'd1));
    generate
        for (q = 0; q < L; q = q + 1) begin : g_out_lane
            wire [QZ-1:0]      qm = dv_quot[QZ*L + q];
            wire signed [24:0] z  = dv_neg[QZ][q] ? -$signed({1'b0, qm}) : $signed({1'b0, qm});
            wire signed [15:0] g  = row_g[16*q +: 16];
            wire signed [31:0] b  = row_b[32*q +: 32];
            wire signed [39:0] zg = z * g;
            always @(posedge clk) if (ce_out) nz_acc[40*q +: 40] <= zg + {{8{b[31]}}, b};
            wire signed [39:0] acc     = nz_acc[40*q +: 40];
            wire signed [63:0] acc64   = {{24{acc[39]}}, acc};
            wire signed [63:0] rounded = (acc64 + half) >>> cfg_shift;
            /* verilator lint_off UNUSEDSIGNAL */  // the clamped value fits OUT_BITS
            wire signed [63:0] clamped = (rounded < y_lo) ? y_lo : ((rounded > y_hi) ? y_hi : rounded);
            /* verilator lint_on UNUSEDSIGNAL */
            always @(posedge clk) if (ce_out) m_tdata[OUT_BITS*q +: OUT_BITS] <= nz_keep[q] ? clamped[OUT_BITS-1:0]
                                                                                           : {OUT_BITS{1'b0}};
        end
    endgenerate
    always @(posedge clk) begin
        if (rst)         m_tvalid <= 1'b0;
        else if (ce_out) m_tvalid <= nz_v;
        if (ce_out) begin
            m_tkeep <= nz_keep;
            m_tlast <= nz_last;
        end
    end
endmodule

`default_nettype wire
