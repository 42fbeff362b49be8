// codesign FQ-BERT engine: the integer LayerNorm core (docs/arithmetic.md §6,
// codesign.sim.reference.layernorm; docs/engine.md §1, §4).
//
// Per row x of H int16 codes (L per beat; H = the number of valid lanes up to tlast,
// 1 .. HMAX <= 4096), with per-element G_i (int16), B_i (int32) and per-layer S, E:
//   sum = sum_i x_i;  mu = floor((2 sum + H) / (2H));  d_i = x_i - mu;  SS = sum_i d_i^2;
//   v = floor(SS * 2^16 / H) + E;  sigma = max(1, isqrt(v));
//   z_i = floor((d_i * 2^25 + sigma) / (2 sigma));  y_i = sat_Y(rshr(z_i * G_i + B_i, S))
//
// Organisation: a row pipeline of five units, each with its own row context and a
// valid/ready handoff to the next, so that they work on different rows at a time:
//   IN    accepts the row (B = ceil(H / L) beats) into a ring buffer of beats and takes
//         its moments Sx = sum x_i, Sxx = sum x_i^2 and H (3-stage pipeline: input
//         register, x_j^2 per lane (one DSP) and the beat's sum, accumulate). The row's
//         moments wait in `mom` until MU takes them; IN goes on with the next row.
//   MU    mu by a 16-step restoring division (ln_seq_div) that also yields the
//         remainder r, then SS from the moments: mu * T by 16 shift-and-add steps.
//   V     floor(SS * 2^16 / H) by a 48-step restoring division.
//   SQRT  sigma = max(1, isqrt(v + E)), 25 digit-by-digit steps.
//   NORM  reads the row from the ring (B cycles); each beat goes through a 28-stage
//         pipeline: read, numerator, 24-stage restoring divider per lane (|z| < 2^23, §6:
//         24 quotient bits), z*G + B, rshr + saturate into the output register.
// Divisions with a negative numerator use floor(n / d) = -floor((-n + d - 1) / d).
//
// Exact widths (x_i in [-2^15, 2^15 - 1], 1 <= H <= 4096):
//   Sx  in [-2^27, 2^27 - 2^12]: 29-bit signed;  Sxx <= 4096 * 2^30 = 2^42: 43 bits.
//   The mean division gives 2 Sx + H = 2H mu + r with 0 <= r < 2H (for a negative
//   numerator n, with q = floor(m / 2H) and r' = m - 2H q of m = -n + 2H - 1: mu = -q,
//   r = 2H - 1 - r'). r = H (mod 2), and with T = 2 Sx - H mu = Sx + (r - H) / 2:
//     SS = sum (x_i - mu)^2 = Sxx - 2 mu Sx + H mu^2 = Sxx - mu T      (exact integers)
//   |T| <= |Sx| + H/2 < 2^28 (30-bit signed register), |mu| <= 2^15 (16-bit magnitude q),
//   |mu T| < 2^43, |d_i| <= 2^16 - 1 so 0 <= SS < 4096 * 2^32 = 2^44 (45-bit register;
//   the 46-bit signed difference is exact). The same bounds as the two-pass form.
//   v: floor(SS * 2^16 / H) < 2^48 (48 quotient bits), E < 2^40, so v < 2^49.
//   isqrt: the contract's 32 steps start with bit = 4^31; while bit > v (bit >= 4^25 >
//   2^49 > v) a step keeps v and res = 0 unchanged, so the first 7 steps are no-ops and
//   the 25 steps from bit = 4^24 give the same floor(sqrt(v)) (< 2^24.5: 25-bit sigma).
//
// Streams (AXI4-Stream): s_* input beats (tkeep: valid lanes; the valid lanes of a row
// are its elements in order; a row ends with tlast), m_* output beats with the same
// tkeep/tlast (lanes off in tkeep carry 0). Parameters: G_i, B_i of element i = lane
// i mod L of parameter word i / L (prm_* write port); cfg_* static while rows stream.
//
// Cycle count (inclusive, first accepted input beat to last accepted output beat; rows
// of H elements offered without gaps, m_tready = 1; codesign.sim.rtl.layernorm_cycles):
//     C = 2B + 139 + (rows - 1) * max(B, 49),     B = ceil(H / L)
// One row: the beats at edges 1 .. B; its moments are in `mom` after edge B + 2; MU
// takes them at B + 3 (1 + 16 division + 16 multiply: 33 cycles), V at B + 36 (49), SQRT
// at B + 85 (26), NORM at B + 111, issues its reads at B + 112 .. 2B + 111, and the last
// beat leaves the 28-stage pipeline at 2B + 139 = 2B + 16 + 16 + 48 + 25 + D_LN, D_LN = 34.
// Each unit takes its next row on the edge it hands the current one on, so a unit is
// busy B (IN, NORM), 33 (MU), 49 (V) or 26 (SQRT) cycles per row and in a stream rows
// follow each other every max(B, 49): B >= 49: every unit is at least as fast as IN,
// no unit ever waits for the next one; B < 49: the V division is the bottleneck, and
// the row after it is already through MU when V is free (IN and MU run ahead).
//
// Ring buffer of RD = max(BMAX + 128, 6 min(BMAX, 48) + 32) beats (IN writes at wp, NORM
// reads at rp, `used` beats in between; IN waits only when it is full). It never fills in
// the count above: with B >= 49 NORM reads each beat B + 111 cycles after IN wrote it,
// so at most B + 111 < BMAX + 128 beats are in it; with B <= 48 a row is in it
// only while it is in one of IN, mom, MU, V, SQRT, NORM, one row each, and while IN's
// last beat waits for `mom` one beat of the next row may be in: <= 6B + 1 < 6*48 + 32.
`default_nettype none

// Restoring division, one quotient bit per cycle: quot = floor(num / den), rem_lo =
// num - quot * den, for num < den * 2^QW (the caller's bound). start loads; the QW
// iterations run in the following QW cycles; quot and rem_lo are valid after the last
// one and held until the next start.
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
    output reg  [QW-1:0] quot,
    output wire [DW-1:0] rem_lo
);
    localparam integer W = (NW > DW + QW) ? NW : DW + QW;
    localparam integer CW = $clog2(QW + 1);
    reg [W-1:0]  rem, dsh;
    reg [CW-1:0] left;  // iterations left
    wire [W-1:0] num_w = {{(W-NW){1'b0}}, num};
    wire [W-1:0] den_w = {{(W-DW){1'b0}}, den};
    wire ge = rem >= dsh;
    assign rem_lo = rem[DW-1:0];  // the remainder is < den
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
    localparam integer BMAX    = (HMAX + L - 1) / L,       // beats per row
    localparam integer BA      = (BMAX <= 2) ? 1 : $clog2(BMAX),
    localparam integer B48     = (BMAX < 48) ? BMAX : 48,
    localparam integer RD      = (BMAX + 128 > 6 * B48 + 32) ? BMAX + 128 : 6 * B48 + 32,  // ring (beats)
    localparam integer AW      = $clog2(RD),
    localparam integer UW      = $clog2(RD + 1)
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
    localparam integer QZ = 24;  // quotient bits of z (|z| < 2^23)
    localparam integer SQ = 25;  // square-root steps (v < 2^49)

    generate
        if (HMAX > 4096 || OUT_BITS < 2 || OUT_BITS > 8) begin : g_bad
            layernorm_core_requires_HMAX_at_most_4096_and_OUT_BITS_2_to_8 u_error ();
        end
    endgenerate

    // ------------------------------------------------------------ memories
    reg [L*16-1:0] ring_data [0:RD-1];
    reg [L-1:0]    ring_keep [0:RD-1];
    reg [L*16-1:0] prm_g_mem [0:BMAX-1];
    reg [L*32-1:0] prm_b_mem [0:BMAX-1];
    always @(posedge clk) begin
        if (prm_we) begin
            prm_g_mem[prm_addr] <= prm_g;
            prm_b_mem[prm_addr] <= prm_b;
        end
    end

    integer j;
    genvar q;

    // ------------------------------------------------------------ IN
    reg [AW-1:0] wp, rp;      // ring write (IN) and read (NORM) addresses
    reg [UW-1:0] used;        // beats in the ring not yet read by NORM
    reg [BA-1:0] in_idx;      // beat of the row being accepted
    wire         ce_in;       // the IN pipeline advances
    wire         nm_issue;    // NORM reads a beat
    assign s_tready = ce_in & (used != RD[UW-1:0]);
    wire in_fire = s_tvalid & s_tready;

    // Stage a: the beat, lanes off in tkeep zeroed.
    reg            a_v, a_last;
    reg [L*16-1:0] a_x;
    reg [L-1:0]    a_keep;
    reg [BA-1:0]   a_nbm1;    // beat index (B - 1 on the last beat)
    // Stage b: x_j^2 per lane, the beat's sum and count.
    reg               b_v, b_last;
    reg [L*31-1:0]    b_sq;   // x^2 <= 2^30
    reg signed [28:0] b_sx;
    reg [12:0]        b_cnt;
    reg [BA-1:0]      b_nbm1;
    // Stage c: the row's accumulators; `mom` holds finished rows' moments for MU.
    reg signed [28:0] acc_sx;
    reg [42:0]        acc_sxx;
    reg [12:0]        acc_h;
    reg               mom_full;
    reg signed [28:0] mom_sx;
    reg [42:0]        mom_sxx;
    reg [12:0]        mom_h;
    reg [BA-1:0]      mom_nbm1;
    wire              mu_take;   // MU takes `mom`
    assign ce_in = ~(b_v & b_last & mom_full & ~mu_take);

    reg signed [28:0] a_sum;
    reg [12:0]        a_cnt;
    reg [42:0]        b_sqsum;
    always @(*) begin
        a_sum = 29'sd0;
        a_cnt = 13'd0;
        b_sqsum = 43'd0;
        for (j = 0; j < L; j = j + 1) begin
            a_sum   = a_sum + {{13{a_x[16*j+15]}}, a_x[16*j +: 16]};
            a_cnt   = a_cnt + {12'd0, a_keep[j]};
            b_sqsum = b_sqsum + {12'd0, b_sq[31*j +: 31]};
        end
    end
    generate
        for (q = 0; q < L; q = q + 1) begin : g_in_lane
            wire signed [15:0] x  = a_x[16*q +: 16];
            /* verilator lint_off UNUSEDSIGNAL */  // x^2 <= 2^30
            wire signed [31:0] x2 = x * x;
            /* verilator lint_on UNUSEDSIGNAL */
            always @(posedge clk) if (ce_in) b_sq[31*q +: 31] <= x2[30:0];
        end
    endgenerate

    wire c_row = ce_in & b_v & b_last;  // a row's moments are complete
    always @(posedge clk) begin
        if (rst) begin
            wp       <= {AW{1'b0}};
            used     <= {UW{1'b0}};
            in_idx   <= {BA{1'b0}};
            a_v      <= 1'b0;
            b_v      <= 1'b0;
            acc_sx   <= 29'sd0;
            acc_sxx  <= 43'd0;
            acc_h    <= 13'd0;
            mom_full <= 1'b0;
        end else begin
            used <= used + {{(UW-1){1'b0}}, in_fire} - {{(UW-1){1'b0}}, nm_issue};
            if (in_fire) begin
                wp     <= (wp == RD[AW-1:0] - 1'b1) ? {AW{1'b0}} : wp + 1'b1;
                in_idx <= s_tlast ? {BA{1'b0}} : in_idx + 1'b1;
            end
            if (ce_in) begin
                a_v <= in_fire;
                b_v <= a_v;
                if (b_v) begin
                    if (b_last) begin
                        acc_sx  <= 29'sd0;
                        acc_sxx <= 43'd0;
                        acc_h   <= 13'd0;
                    end else begin
                        acc_sx  <= acc_sx + b_sx;
                        acc_sxx <= acc_sxx + b_sqsum;
                        acc_h   <= acc_h + b_cnt;
                    end
                end
            end
            if (c_row)        mom_full <= 1'b1;
            else if (mu_take) mom_full <= 1'b0;
        end
        if (in_fire) begin
            ring_data[wp] <= s_tdata;
            ring_keep[wp] <= s_tkeep;
        end
        if (ce_in) begin
            for (j = 0; j < L; j = j + 1) a_x[16*j +: 16] <= s_tkeep[j] ? s_tdata[16*j +: 16] : 16'd0;
            a_keep <= s_tkeep;
            a_last <= s_tlast;
            a_nbm1 <= in_idx;
            b_sx   <= a_sum;
            b_cnt  <= a_cnt;
            b_last <= a_last;
            b_nbm1 <= a_nbm1;
        end
        if (c_row) begin
            mom_sx   <= acc_sx + b_sx;
            mom_sxx  <= acc_sxx + b_sqsum;
            mom_h    <= acc_h + b_cnt;
            mom_nbm1 <= b_nbm1;
        end
    end

    // ------------------------------------------------------------ MU
    // Steps 0 .. 15: the division; 16 .. 31: P = |mu| * T, MSB first; 32: done.
    reg               mu_full, mu_neg;
    reg [5:0]         mu_step;
    reg signed [28:0] mu_sx;
    reg [42:0]        mu_sxx;
    reg [12:0]        mu_h;
    reg [BA-1:0]      mu_nbm1;
    reg signed [45:0] mu_p;
    wire              mu_done = mu_full & (mu_step == 6'd32);
    wire              v_take;   // V takes MU's row
    assign mu_take = mom_full & (~mu_full | v_take);

    // mu = floor((2 Sx + H) / (2H)): magnitude division, then the sign.
    wire signed [29:0] mu_num = {mom_sx, 1'b0} + {17'd0, mom_h};
    wire               mu_nneg = mu_num[29];
    wire [13:0]        mom_2h  = {mom_h, 1'b0};
    wire [29:0]        mu_mag  = mu_nneg ? (30'd0 - mu_num + {16'd0, mom_2h} - 30'd1) : mu_num;
    wire [15:0]        mu_q;
    wire [13:0]        mu_rq;
    ln_seq_div #(.NW(30), .DW(14), .QW(16)) u_mu_div (
        .clk(clk), .rst(rst), .start(mu_take), .num(mu_mag), .den(mom_2h),
        .quot(mu_q), .rem_lo(mu_rq)
    );
    // r = 2 Sx + H - 2H mu, T = Sx + (r - H) / 2 (r - H is even).
    wire [13:0]        mu_2h = {mu_h, 1'b0};
    wire [13:0]        mu_r  = mu_neg ? (mu_2h - 14'd1 - mu_rq) : mu_rq;
    /* verilator lint_off UNUSEDSIGNAL */  // bit 0 of r - H is 0
    wire signed [14:0] mu_e2 = $signed({1'b0, mu_r}) - $signed({2'b0, mu_h});
    /* verilator lint_on UNUSEDSIGNAL */
    wire signed [29:0] mu_t  = {mu_sx[28], mu_sx} + {{16{mu_e2[14]}}, mu_e2[14:1]};
    wire [3:0]         mu_bi = 4'd15 - mu_step[3:0];  // multiplier bit of steps 16 .. 31
    // mu (|mu| <= 2^15: -32768 is 16'h8000 either way, so 16 bits are exact) and SS.
    wire [15:0]        mu_val = mu_neg ? (16'd0 - mu_q) : mu_q;
    wire signed [45:0] sxx_s  = {3'd0, mu_sxx};
    /* verilator lint_off UNUSEDSIGNAL */  // 0 <= SS < 2^44
    wire signed [45:0] ss_s   = mu_neg ? (sxx_s + mu_p) : (sxx_s - mu_p);
    /* verilator lint_on UNUSEDSIGNAL */
    always @(posedge clk) begin
        if (rst) begin
            mu_full <= 1'b0;
        end else if (mu_take) begin
            mu_full <= 1'b1;
            mu_step <= 6'd0;
            mu_neg  <= mu_nneg;
            mu_sx   <= mom_sx;
            mu_sxx  <= mom_sxx;
            mu_h    <= mom_h;
            mu_nbm1 <= mom_nbm1;
            mu_p    <= 46'sd0;
        end else if (v_take) begin
            mu_full <= 1'b0;
        end else if (mu_full && !mu_done) begin
            mu_step <= mu_step + 1'b1;
            if (mu_step[4]) mu_p <= (mu_p <<< 1) + (mu_q[mu_bi] ? {{16{mu_t[29]}}, mu_t} : 46'sd0);
        end
    end

    // ------------------------------------------------------------ V
    reg          v_full;
    reg [5:0]    v_step;
    reg [15:0]   v_mu;
    reg [BA-1:0] v_nbm1;
    wire         v_done = v_full & (v_step == 6'd48);
    wire         sq_take;   // SQRT takes V's row
    assign v_take = mu_done & (~v_full | sq_take);
    wire [47:0]  v_q;
    /* verilator lint_off UNUSEDSIGNAL */
    wire [12:0]  v_rem;
    /* verilator lint_on UNUSEDSIGNAL */
    ln_seq_div #(.NW(61), .DW(13), .QW(48)) u_v_div (
        .clk(clk), .rst(rst), .start(v_take), .num({ss_s[44:0], 16'd0}), .den(mu_h),
        .quot(v_q), .rem_lo(v_rem)
    );
    always @(posedge clk) begin
        if (rst) begin
            v_full <= 1'b0;
        end else if (v_take) begin
            v_full <= 1'b1;
            v_step <= 6'd0;
            v_mu   <= mu_val;
            v_nbm1 <= mu_nbm1;
        end else if (sq_take) begin
            v_full <= 1'b0;
        end else if (v_full && !v_done) begin
            v_step <= v_step + 1'b1;
        end
    end

    // ------------------------------------------------------------ SQRT
    // step (§6): if v >= res + bit: v -= res + bit, res = res/2 + bit; else res /= 2.
    reg          sq_full;
    reg [4:0]    sq_step;
    reg [48:0]   sq_v, sq_res, sq_bit;
    reg [15:0]   sq_mu;
    reg [BA-1:0] sq_nbm1;
    wire         sq_done = sq_full & (sq_step == SQ[4:0]);
    wire         nm_take;   // NORM takes SQRT's row
    assign sq_take = v_done & (~sq_full | nm_take);
    wire [49:0]  sq_t  = {1'b0, sq_res} + {1'b0, sq_bit};
    wire         sq_ge = {1'b0, sq_v} >= sq_t;
    // sigma = max(1, isqrt(v)) once done (isqrt(v) < 2^25).
    wire [24:0]  sigma = (sq_res == 49'd0) ? 25'd1 : sq_res[24:0];
    always @(posedge clk) begin
        if (rst) begin
            sq_full <= 1'b0;
        end else if (sq_take) begin
            sq_full <= 1'b1;
            sq_step <= 5'd0;
            sq_v    <= {1'b0, v_q} + {9'd0, cfg_eps};
            sq_res  <= 49'd0;
            sq_bit  <= 49'd1 << 48;  // 4^24
            sq_mu   <= v_mu;
            sq_nbm1 <= v_nbm1;
        end else if (nm_take) begin
            sq_full <= 1'b0;
        end else if (sq_full && !sq_done) begin
            if (sq_ge) begin
                sq_v   <= sq_v - sq_t[48:0];
                sq_res <= (sq_res >> 1) + sq_bit;
            end else begin
                sq_res <= sq_res >> 1;
            end
            sq_bit  <= sq_bit >> 2;
            sq_step <= sq_step + 1'b1;
        end
    end

    // ------------------------------------------------------------ NORM
    reg               nm_busy;
    reg [BA-1:0]      nm_idx, nm_nbm1;
    reg signed [15:0] nm_mu;
    reg [24:0]        nm_sigma;

    wire ce_out   = ~m_tvalid | m_tready;  // the NORM pipeline advances
    assign nm_issue = nm_busy & ce_out;
    wire nm_end   = nm_issue & (nm_idx == nm_nbm1);
    assign nm_take  = sq_done & (~nm_busy | nm_end);
    always @(posedge clk) begin
        if (rst) begin
            nm_busy <= 1'b0;
            rp      <= {AW{1'b0}};
        end else begin
            if (nm_issue) rp <= (rp == RD[AW-1:0] - 1'b1) ? {AW{1'b0}} : rp + 1'b1;
            if (nm_take) begin
                nm_busy  <= 1'b1;
                nm_nbm1  <= sq_nbm1;
                nm_idx   <= {BA{1'b0}};
                nm_mu    <= sq_mu;
                nm_sigma <= sigma;
            end else if (nm_end) begin
                nm_busy <= 1'b0;
            end else if (nm_issue) begin
                nm_idx <= nm_idx + 1'b1;
            end
        end
    end

    // NORM pipeline. n1: ring read with the row's mu and sigma.
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
            n1_data  <= ring_data[rp];
            n1_keep  <= ring_keep[rp];
            n1_idx   <= nm_idx;
            n1_last  <= (nm_idx == nm_nbm1);
            n1_mu    <= nm_mu;
            n1_sigma <= nm_sigma;
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
