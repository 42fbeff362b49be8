// codesign CNN dataflow: a streaming max-pooling unit (docs/dataflow.md "Pooling unit";
// docs/arithmetic.md §9 maxpool; codesign.sim.reference.maxpool2d; runner
// codesign.sim.rtl_pool; cost model codesign.accel.dataflow.pool_cycles/pool_resources).
//
// y[c][i][j] = max over the K x K window of the padded input, rows i*S .. i*S+K-1 and
// columns j*S .. j*S+K-1 of the (H + 2*PAD) x (W + 2*PAD) grid whose border holds lo of
// the input type (SIGNED = 1: -2^(B-1); SIGNED = 0: 0; a bipolar input is its bit b =
// (v+1)/2, so lo = bit 0 = -1). OH = (H + 2*PAD - K) / S + 1, OW likewise (floor, ONNX
// ceil_mode = 0); PAD < K. Every window holds at least one real element, so a padded
// position never wins.
//
// Streams (AXI4-Stream, a beat moves when tvalid & tready):
//   s  tdata  one channel group of one pixel: P lanes of B bits, lane l at [B*l +: B] is
//             channel g*P + l of group g. Pixels in raster order (row by row, left to
//             right), each pixel CF = ceil(C/P) consecutive beats, groups in order.
//             Lanes past C in the last group are don't-cares (computed, to be dropped).
//   m  tdata  the same layout for the OH x OW output pixels, raster order.
//      tlast  the image's last output beat.
// Images follow each other without a gap or a marker: the unit counts H*W*CF beats.
// (The MVAU's output, PE lanes per beat and NF = ceil(MH/PE) beats per pixel, is this
// layout with P = PE, C = MH: the pool can take an MVAU's stream as it is.)
//
// Structure: the unit walks the padded grid, one slot per (row y, column x, group g) of
// (H + 2*PAD) x (W + 2*PAD) x CF. A real slot takes one input beat; a padding slot takes
// none and uses lo. Horizontal max: a delay line of (K-1)*CF beats holds the K-1
// previous pixels of the same group; at a column that closes a window (x = j*S + K - 1)
// hmax = max(slot value, the K-1 taps). Vertical max: K-1 line buffers of OW*CF words
// (P*B bits) hold hmax of the K-1 previous rows (row y in buffer y mod (K-1), written in
// the same cycle as they are read: read-first); at a row that closes a window
// (y = i*S + K - 1) the output is max(hmax, the K-1 buffered rows).
// Padding slots at the top of an image wait until its first beat is offered (they do
// not run ahead into an image that has not arrived); every other padding slot runs
// without input.
//
// Flow control: the whole unit advances when the output register is empty or taken,
// ce = !m_tvalid | m_tready (as mvau.v). Pipeline: slot (delay-line taps, hmax,
// line-buffer read/write) -> R1 (hmax, buffered rows, flags) -> R2 output register.
//
// Cycle model (codesign.sim.rtl_pool.pool_cycles == codesign.accel.dataflow.pool_cycles):
// counting clock edges inclusively from the edge that accepts an image's first input
// beat to the edge that accepts the last image's last output beat, inputs offered every
// cycle and m_tready = 1, N images take exactly
//     (N - 1) * HP*WP*CF + (s_last - s_first + 1) + D_POOL,   D_POOL = 2,
//     HP = H + 2*PAD, WP = W + 2*PAD, CF = ceil(C/P),
//     s_first = (PAD*WP + PAD) * CF                      (the first real slot),
//     s_last  = (((OH-1)*S + K-1) * WP + (OW-1)*S + K-1) * CF + CF - 1
//                                                         (the last output's slot)
// (one slot per cycle; the last output's slot registers R1 at its edge, R2 at the next,
// and the sink takes the beat at the one after). In a stream of images the unit is busy
// HP*WP*CF cycles per image.
`default_nettype none

module pool #(
    parameter integer C      = 4,   // channels
    parameter integer P      = 2,   // channels (lanes) per beat
    parameter integer H      = 4,   // input rows
    parameter integer W      = 4,   // input columns
    parameter integer K      = 2,   // window K x K
    parameter integer S      = 2,   // stride (rows and columns)
    parameter integer PAD    = 0,   // padding on every side, PAD < K
    parameter integer B      = 8,   // bits per code (1..8)
    parameter integer SIGNED = 1,   // codes signed (two's complement) / unsigned (bipolar: 0)
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
    output reg  [LW-1:0]   m_tdata,
    output reg             m_tlast,
    output wire [31:0]     d_pool      // D_POOL of the cycle model
);
    localparam integer D_POOL = 2;
    generate
        if (C < 1 || P < 1 || P > C || H < 1 || W < 1 || K < 1 || S < 1 || PAD < 0 || PAD >= K
            || B < 1 || B > 8 || HP < K || WP < K || (SIGNED != 0 && SIGNED != 1)) begin : g_bad
            pool_requires_P_le_C_PAD_lt_K_window_fits_padded_input_B_1_to_8 u_error ();
        end
    endgenerate
    assign d_pool = D_POOL;

    // lo of the input type, in every lane
    localparam [B-1:0] LO = (SIGNED != 0) ? (1 << (B - 1)) : 0;
    wire [LW-1:0] lo_word = {P{LO}};

    // lane-wise maximum of two words
    function [LW-1:0] wmax(input [LW-1:0] a, input [LW-1:0] b);
        integer l;
        reg [B-1:0] x, y;
        begin
            for (l = 0; l < P; l = l + 1) begin
                x = a[B*l +: B];
                y = b[B*l +: B];
                if (SIGNED != 0) wmax[B*l +: B] = ($signed(x) >= $signed(y)) ? x : y;
                else             wmax[B*l +: B] = (x >= y) ? x : y;
            end
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

    wire [LW-1:0] v = real_slot ? s_tdata : lo_word;

    // ------------------------------------------------------------ horizontal max
    wire [LW-1:0] hmax;
    genvar m;
    generate
        if (K > 1) begin : g_dl
            // delay line: dl[i] holds the slot value of i + 1 slots ago
            reg [LW-1:0] dl [0:(K-1)*CF-1];
            integer i;
            always @(posedge clk)
                if (fire) begin
                    dl[0] <= v;
                    for (i = 1; i < (K - 1) * CF; i = i + 1) dl[i] <= dl[i - 1];
                end
            reg [LW-1:0] h;
            integer t;
            always @(*) begin
                h = v;
                for (t = 1; t < K; t = t + 1) h = wmax(h, dl[t * CF - 1]);   // pixel x - t
            end
            assign hmax = h;
        end else begin : g_nodl
            assign hmax = v;
        end
    endgenerate

    // ------------------------------------------------------------ vertical max (R1)
    reg          r1_v, r1_last;
    reg [LW-1:0] r1_h;
    wire [LW-1:0] vmax;
    always @(posedge clk) begin
        if (rst) r1_v <= 1'b0;
        else if (ce) r1_v <= fire & h_emit & v_emit;
        if (ce) begin
            r1_h <= hmax;
            r1_last <= (la == LB_LAST) && (y == Y_OUT_LAST);
        end
    end
    generate
        if (K > 1) begin : g_lb
            wire [LW*(K-1)-1:0] r1_rows;   // the K-1 buffered rows' words
            for (m = 0; m < K - 1; m = m + 1) begin : g_buf
                reg [LW-1:0] lb [0:LBD-1];
                reg [LW-1:0] r1_lb;
                always @(posedge clk)
                    if (fire && h_emit) begin
                        r1_lb <= lb[la];                    // read-first: row y - (K-1) .. y - 1
                        if (ph == m) lb[la] <= hmax;
                    end
                assign r1_rows[LW*m +: LW] = r1_lb;
            end
            reg [LW-1:0] vm;
            integer t;
            always @(*) begin
                vm = r1_h;
                for (t = 0; t < K - 1; t = t + 1) vm = wmax(vm, r1_rows[LW*t +: LW]);
            end
            assign vmax = vm;
        end else begin : g_nolb
            assign vmax = r1_h;
            wire unused_ph = &{1'b0, ph};
        end
    endgenerate

    // ------------------------------------------------------------ output register (R2)
    always @(posedge clk) begin
        if (rst) m_tvalid <= 1'b0;
        else if (ce) m_tvalid <= r1_v;
        if (ce) begin
            m_tdata <= vmax;
            m_tlast <= r1_last;
        end
    end
endmodule

`default_nettype wire
