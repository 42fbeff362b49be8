// codesign CNN dataflow: a streaming average-pooling unit (docs/dataflow.md "Pooling
// unit"; docs/arithmetic.md §9 avgpool and global average pooling, §3 requant;
// codesign.sim.reference.avgpool2d; HLS avgpool2d/global_avgpool in
// hls/include/codesign/pool.h; runner codesign.sim.rtl_pool (PoolConfig(avg=True)); cost
// model codesign.accel.dataflow.pool_cycles/pool_resources with Pool(mode="avg")).
//
// The max-pooling unit sim/rtl/pool.v with sums instead of maxima and a requantizer; the
// geometry, the streams, the slot walk (counters, padding slots, flow control) and the
// cycle model are pool.v's, line for line (pool.v is left untouched so that its
// Yosys-calibrated netlist stays what accel/dataflow_calibration.json records).
//
//   y[c][i][j] = sat_Y(rshr(sum * M, sh)),
//   sum = the sum of the input values in the K x K window, rows i*S .. i*S+K-1 and
//         columns j*S .. j*S+K-1 of the (H + 2*PAD) x (W + 2*PAD) grid whose border holds 0
// (§9: the divisor 1/(K*K) is folded into M / 2^sh, count_include_pad = 1; rshr rounds
// half up; sat_Y clamps to the output type). OH = (H + 2*PAD - K) / S + 1, OW likewise
// (floor), PAD < K. Global average pooling is K = H = W, PAD = 0 (one output pixel per
// image and channel; square maps).
// Input values: SIGNED = 1 two's complement (B = 1: bipolar, bit b is the value 2b - 1),
// SIGNED = 0 unsigned, B = 1..8. Output Y: OB bits (2..16), O_SIGNED two's complement or
// unsigned. M (q_m, unsigned, < 2^24) and sh (q_shift, 0..62) are runtime inputs, one per
// tensor, held stable while a stream is in flight.
//
// Streams (AXI4-Stream, a beat moves when tvalid & tready):
//   s  tdata  one channel group of one pixel: P lanes of B bits, lane l at [B*l +: B] is
//             channel g*P + l of group g. Pixels in raster order, each pixel CF = ceil(C/P)
//             consecutive beats, groups in order. Lanes past C in the last group are
//             don't-cares (computed, to be dropped).
//   m  tdata  the OH x OW output pixels in raster order, CF beats each: P lanes of OB
//             bits, lane l at [OB*l +: OB].
//      tlast  the image's last output beat.
// Images follow each other without a gap or a marker: the unit counts H*W*CF beats.
//
// Structure (pool.v's walk): one slot per (row y, column x, group g) of the padded grid;
// a real slot takes one input beat, a padding slot none (value 0). Horizontal sum: a
// delay line of (K-1)*CF decoded words (VW bits per lane, two's complement: B for a
// signed input, 2 for bipolar, B + 1 for unsigned) holds the K-1 previous
// pixels of the same group; at a column closing a window hsum = slot value + the K-1
// taps (HS_W bits per lane: the exact range of K values). Vertical sum: K-1 line buffers
// of OW*CF words (P*HS_W bits) hold hsum of the K-1 previous rows (read-first); at a row
// closing a window the window sum (SUM_W bits per lane: the exact range of K*K values,
// < K*K*2^8 as §9 states) is hsum + the K-1 buffered rows. Requant: one requant.v per
// lane (ACC_BITS = SUM_W, MBITS = 24, OUT_BITS = OB; its header proves it equals §3).
// Padding slots at the top of an image wait until its first beat is offered.
//
// Flow control: the whole unit advances when the output register is empty or taken,
// ce = !m_tvalid | m_tready. Pipeline: slot (taps, hsum, line-buffer read/write) -> R1
// (hsum, buffered rows, flags) -> R2 (window sum) -> R3 (requant.v's product) -> R4
// (requant.v's rounded, saturated code = the output register).
//
// Cycle model (codesign.sim.rtl_pool.pool_cycles == codesign.accel.dataflow.pool_cycles
// for an average pool): counting clock edges inclusively from the edge that accepts an
// image's first input beat to the edge that accepts the last image's last output beat,
// inputs offered every cycle and m_tready = 1, N images take exactly
//     (N - 1) * HP*WP*CF + (s_last - s_first + 1) + D_AVG,   D_AVG = 4,
//     HP = H + 2*PAD, WP = W + 2*PAD, CF = ceil(C/P),
//     s_first = (PAD*WP + PAD) * CF,
//     s_last  = (((OH-1)*S + K-1) * WP + (OW-1)*S + K-1) * CF + CF - 1
// (pool.v's model with its D_POOL = 2 replaced by the two extra stages R3, R4).
`default_nettype none

module avgpool #(
    parameter integer C        = 4,   // channels
    parameter integer P        = 2,   // channels (lanes) per beat
    parameter integer H        = 4,   // input rows
    parameter integer W        = 4,   // input columns
    parameter integer K        = 2,   // window K x K
    parameter integer S        = 2,   // stride (rows and columns)
    parameter integer PAD      = 0,   // padding on every side, PAD < K
    parameter integer B        = 8,   // input bits (1..8)
    parameter integer SIGNED   = 1,   // input signed (B = 1: bipolar) / unsigned
    parameter integer OB       = 8,   // output bits (2..16)
    parameter integer O_SIGNED = 1,   // output signed / unsigned
    // ---- derived (do not override)
    localparam integer CF    = (C + P - 1) / P,
    localparam integer HP    = H + 2 * PAD,
    localparam integer WP    = W + 2 * PAD,
    localparam integer OH    = (HP - K) / S + 1,
    localparam integer OW    = (WP - K) / S + 1,
    localparam integer LW    = P * B,
    localparam integer KM1   = (K > 1) ? K - 1 : 1,       // line buffers / taps (>= 1 declared)
    localparam integer LBD   = OW * CF,                   // line-buffer depth
    localparam integer LBA   = (LBD <= 2) ? 1 : $clog2(LBD),
    localparam integer CFA   = (CF <= 2) ? 1 : $clog2(CF),
    localparam integer XA    = $clog2(WP + S + 1),        // column counters (up to WP-1+S)
    localparam integer YA    = $clog2(HP + S + 1),        // row counters (up to HP-1+S)
    localparam integer PHA   = (KM1 <= 2) ? 1 : $clog2(KM1)
) (
    input  wire            clk,
    input  wire            rst,        // synchronous, active high
    input  wire            s_tvalid,
    output wire            s_tready,
    input  wire [LW-1:0]   s_tdata,
    output reg             m_tvalid,
    input  wire            m_tready,
    output wire [P*OB-1:0] m_tdata,
    output reg             m_tlast,
    input  wire [23:0]     q_m,        // requant multiplier M (unsigned)
    input  wire [5:0]      q_shift,    // requant shift sh, 0..62
    output wire [31:0]     d_pool      // D_AVG of the cycle model
);
    localparam integer D_AVG = 4;
    generate
        if (C < 1 || P < 1 || P > C || H < 1 || W < 1 || K < 1 || S < 1 || PAD < 0 || PAD >= K
            || B < 1 || B > 8 || HP < K || WP < K || (SIGNED != 0 && SIGNED != 1)
            || OB < 2 || OB > 16 || (O_SIGNED != 0 && O_SIGNED != 1)) begin : g_bad
            avgpool_requires_P_le_C_PAD_lt_K_window_fits_padded_input_B_1_to_8_OB_2_to_16 u_error ();
        end
    endgenerate
    assign d_pool = D_AVG;

    // Smallest two's-complement width holding every integer of [lo, hi] (lo <= 0 <= hi).
    function integer rbits(input integer lo, input integer hi);
        integer b;
        begin
            rbits = 31;
            for (b = 30; b >= 1; b = b - 1)
                if (-(1 << (b - 1)) <= lo && hi <= (1 << (b - 1)) - 1) rbits = b;
        end
    endfunction


    /* verilator lint_off WIDTHTRUNC */  // sized copies of integer constants
    localparam [CFA-1:0] CF_LAST   = CF - 1;
    localparam [XA-1:0]  WP_LAST   = WP - 1;
    localparam [YA-1:0]  HP_LAST   = HP - 1;
    localparam [XA-1:0]  X_FIRST_W = K - 1;                      // first column closing a window
    localparam [YA-1:0]  Y_FIRST_W = K - 1;
    localparam [XA-1:0]  XS        = S;
    localparam [YA-1:0]  YS        = S;
    localparam [XA-1:0]  X_LO      = PAD;
    localparam [XA-1:0]  X_HI      = PAD + W;                    // real columns [X_LO, X_HI)
    localparam [YA-1:0]  Y_LO      = PAD;
    localparam [YA-1:0]  Y_HI      = PAD + H;
    localparam [YA-1:0]  Y_OUT_LAST = (OH - 1) * S + K - 1;      // row of the last output row
    localparam [LBA-1:0] LB_LAST   = LBD - 1;
    localparam [PHA-1:0] PH_LAST   = KM1 - 1;
    /* verilator lint_on WIDTHTRUNC */

    // ------------------------------------------------------------ slot counters
    wire ce = ~m_tvalid | m_tready;
    reg [CFA-1:0] g;          // channel group of the slot
    reg [XA-1:0]  x;          // padded column
    reg [YA-1:0]  y;          // padded row
    reg [XA-1:0]  x_next;     // next column closing a window
    reg [YA-1:0]  y_next;     // next row closing a window
    reg [LBA-1:0] la;         // line-buffer address of the next window column, j*CF + g
    reg [PHA-1:0] ph;         // line buffer that row y is written to
    reg           started;    // the image's first real beat was taken

    wire real_slot;
    generate
        if (PAD > 0) begin : g_pad
            assign real_slot = (x >= X_LO) && (x < X_HI) && (y >= Y_LO) && (y < Y_HI);
        end else begin : g_nopad
            assign real_slot = (x < X_HI) && (y < Y_HI);
        end
    endgenerate
    assign s_tready = ce & real_slot;
    wire fire = ce & (real_slot ? s_tvalid : (started | s_tvalid));
    wire g_last = (g == CF_LAST);
    wire x_last = (x == WP_LAST);
    wire y_last = (y == HP_LAST);
    wire h_emit = (x == x_next);              // the column closes a horizontal window
    wire v_emit = (y == y_next);              // the row closes a vertical window
    wire frame_end = g_last & x_last & y_last;

    always @(posedge clk) begin
        if (rst) begin
            g <= {CFA{1'b0}};
            x <= {XA{1'b0}};
            y <= {YA{1'b0}};
            x_next <= X_FIRST_W;
            y_next <= Y_FIRST_W;
            la <= {LBA{1'b0}};
            ph <= {PHA{1'b0}};
            started <= 1'b0;
        end else if (fire) begin
            g <= g_last ? {CFA{1'b0}} : g + 1'b1;
            if (h_emit) la <= la + 1'b1;
            if (g_last) begin
                x <= x_last ? {XA{1'b0}} : x + 1'b1;
                if (x_last) x_next <= X_FIRST_W;
                else if (h_emit) x_next <= x_next + XS;
                if (x_last) begin
                    la <= {LBA{1'b0}};
                    y <= y_last ? {YA{1'b0}} : y + 1'b1;
                    if (y_last) y_next <= Y_FIRST_W;
                    else if (v_emit) y_next <= y_next + YS;
                    ph <= (y_last || ph == PH_LAST) ? {PHA{1'b0}} : ph + 1'b1;
                end
            end
            if (frame_end) started <= 1'b0;
            else if (real_slot) started <= 1'b1;
        end
    end

    // ------------------------------------------------------------ decoded values
    // VW bits signed per lane (padding slots: 0); exact sum widths.
    localparam integer VW    = (SIGNED != 0) ? ((B == 1) ? 2 : B) : B + 1;
    localparam integer V_LO  = (SIGNED == 0) ? 0 : ((B == 1) ? -1 : -(1 << (B - 1)));
    localparam integer V_HI  = (SIGNED == 0) ? (1 << B) - 1 : ((B == 1) ? 1 : (1 << (B - 1)) - 1);
    localparam integer HS_W  = rbits(K * V_LO, K * V_HI);          // a row of K values
    localparam integer SUM_W = rbits(K * K * V_LO, K * K * V_HI);  // the window (§9: < K*K*2^8)
    localparam integer LH    = P * HS_W;

    wire [P*VW-1:0] dv;   // the slot's decoded lanes
    genvar l, m;
    generate
    for (l = 0; l < P; l = l + 1) begin : g_dec
        wire [B-1:0] raw = s_tdata[B*l +: B];
        wire [VW-1:0] val;
        if (SIGNED != 0 && B == 1) begin : g_bip
            assign val = raw[0] ? 2'b01 : 2'b11;
        end else if (SIGNED != 0) begin : g_sgn
            assign val = raw;
        end else begin : g_uns
            assign val = {1'b0, raw};
        end
        assign dv[VW*l +: VW] = real_slot ? val : {VW{1'b0}};
    end
    endgenerate

    // ------------------------------------------------------------ horizontal sum
    wire [LH-1:0] hsum;
    generate
    if (K > 1) begin : g_dl
        reg [P*VW-1:0] dl [0:(K-1)*CF-1];   // dl[i]: the decoded slot of i + 1 slots ago
        integer i;
        always @(posedge clk)
            if (fire) begin
                dl[0] <= dv;
                for (i = 1; i < (K - 1) * CF; i = i + 1) dl[i] <= dl[i - 1];
            end
        for (l = 0; l < P; l = l + 1) begin : g_h
            reg signed [HS_W-1:0] h;
            integer t;
            always @(*) begin
                h = {{(HS_W-VW){dv[VW*l+VW-1]}}, dv[VW*l +: VW]};
                for (t = 1; t < K; t = t + 1)
                    h = h + {{(HS_W-VW){dl[t * CF - 1][VW*l+VW-1]}}, dl[t * CF - 1][VW*l +: VW]};  // pixel x - t
            end
            assign hsum[HS_W*l +: HS_W] = h;
        end
    end else begin : g_nodl
        for (l = 0; l < P; l = l + 1) begin : g_h
            assign hsum[HS_W*l +: HS_W] = {{(HS_W-VW){dv[VW*l+VW-1]}}, dv[VW*l +: VW]};
        end
    end
    endgenerate

    // ------------------------------------------------------------ vertical sum (R1, R2)
    reg          r1_v, r1_last;
    reg [LH-1:0] r1_h;
    always @(posedge clk) begin
        if (rst) r1_v <= 1'b0;
        else if (ce) r1_v <= fire & h_emit & v_emit;
        if (ce) begin
            r1_h <= hsum;
            r1_last <= (la == LB_LAST) && (y == Y_OUT_LAST);
        end
    end
    wire [LH*KM1-1:0] r1_rows;      // the K-1 buffered rows' words (K = 1: unused zeros)
    generate
    if (K > 1) begin : g_lb
        for (m = 0; m < K - 1; m = m + 1) begin : g_buf
            reg [LH-1:0] lb [0:LBD-1];
            reg [LH-1:0] r1_lb;
            always @(posedge clk)
                if (fire && h_emit) begin
                    r1_lb <= lb[la];                    // read-first: row y - (K-1) .. y - 1
                    if (ph == m) lb[la] <= hsum;
                end
            assign r1_rows[LH*m +: LH] = r1_lb;
        end
    end else begin : g_nolb
        assign r1_rows = {LH{1'b0}};
        wire unused_ph = &{1'b0, ph, r1_rows};
    end
    endgenerate
    reg r2_v, r2_last, r3_v, r3_last;
    always @(posedge clk) begin
        if (rst) begin
            r2_v <= 1'b0;
            r3_v <= 1'b0;
            m_tvalid <= 1'b0;
        end else if (ce) begin
            r2_v <= r1_v;
            r3_v <= r2_v;
            m_tvalid <= r3_v;
        end
        if (ce) begin
            r2_last <= r1_last;
            r3_last <= r2_last;
            m_tlast <= r3_last;
        end
    end
    // ------------------------------------------------------------ window sum and requant
    generate
    for (l = 0; l < P; l = l + 1) begin : g_lane
        reg signed [SUM_W-1:0] s;
        integer t;
        always @(*) begin
            s = {{(SUM_W-HS_W){r1_h[HS_W*l+HS_W-1]}}, r1_h[HS_W*l +: HS_W]};
            for (t = 0; t < K - 1; t = t + 1)
                s = s + {{(SUM_W-HS_W){r1_rows[LH*t+HS_W*l+HS_W-1]}}, r1_rows[LH*t+HS_W*l +: HS_W]};
        end
        reg [SUM_W-1:0] r2_sum;
        always @(posedge clk) if (ce) r2_sum <= s;
        // R3 = requant.v's product, R4 = its rounded, saturated code (the output register)
        requant #(.ACC_BITS(SUM_W), .MBITS(24), .OUT_BITS(OB)) u_rq (
            .clk(clk), .ce(ce), .y_signed(O_SIGNED != 0), .acc(r2_sum), .mult(q_m), .shift(q_shift),
            .y(m_tdata[OB*l +: OB]));
    end
    endgenerate
endmodule

`default_nettype wire
