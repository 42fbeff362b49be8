// codesign FQ-BERT engine: a tiled integer matrix multiply with requantization
// (docs/engine.md §1, §4, §5), around one pe_array.
//
//   Y[r][n] = sat(rshr((sum_k A[r][k] * W[k][n] + bias[n]) * M[n], sh[n]))
//
// for an R x K activation matrix A (int8 or uint8) and a K x Nout weight matrix W
// (int4 in 8x4 mode, int8 in 8x8 mode), computed in T = ceil(Nout / G) tiles of G output
// channels. The caller pads: each row is cfg_kbeats = ceil(K / L) beats of L = M (8x4) or
// M/2 (8x8) elements with zero codes past K, and the last tile's missing channels have
// zero weights (their outputs are ignored).
//
// Streams (AXI4-Stream handshakes):
//   s_act  R * cfg_kbeats beats, row-major, M codes per beat (8x8: the low M/2). Consumed
//          once, during tile 0, and kept in the activation buffer for tiles 1 .. T-1.
//          s_act_tlast is accepted but not checked (rows are counted with cfg_kbeats).
//   s_wgt  T * cfg_kbeats beats, tile-major: beat k of tile t holds, for PE g, the
//          weights W[kL + j][tG + g] (j < L) as in pe_array.v. Tile t is written into
//          bank t mod 2 of the double-buffered weight buffer as soon as tile t-2 has been
//          issued, so tile t+1 loads while tile t computes; a beat arriving in the cycle
//          it is needed goes straight through (tile 0 streams in lockstep with row 0).
//   s_qp   T beats, one per tile: channel g's bias at [BIAS_BITS*g +: BIAS_BITS],
//          multiplier M at G*BIAS_BITS + [MBITS*g +: MBITS], shift at
//          G*(BIAS_BITS+MBITS) + [6g +: 6]. Stored in parameter slot t (T <= T_MAX).
//   m      T * R beats, tile-major (tile t, row r: channels tG .. tG+G-1); m_tlast marks
//          the last row of each tile; m_tacc carries the raw accumulators (bypass).
// A run is configured by cfg_* (static during the run); the engine returns to its initial
// state after the last output beat and the next run may follow.
//
// Cycle count (docs/engine.md §4): with the three input streams offered every cycle from
// the first one and m_tready = 1, from the edge that accepts the first input beat to the
// edge that accepts the last output beat (inclusive),
//     C = T * R * cfg_kbeats + D_PE      (D_PE = pe_array's, on port d_pe)
// i.e. ceil(Nout/G) * R * ceil(K/M) + D_pe in 8x4 mode and
// ceil(Nout/G) * R * ceil(2K/M) + D_pe in 8x8 mode: the tiles stream back to back.
//
// The buffers are read combinationally (LUT RAM in this model); an implementation with
// BRAM would fold the BRAM output register into the PEs' input register (same D_PE).
`default_nettype none

module engine_top #(
    parameter integer G         = 4,
    parameter integer M         = 8,
    parameter integer ACC_BITS  = 32,
    parameter integer BIAS_BITS = 32,
    parameter integer MBITS     = 16,
    parameter integer OUT_BITS  = 8,
    parameter integer PACKING   = 0,    // 0 dsp2, 1 dsp1, 2 lut, 3 dsp2c
    parameter integer KB_MAX    = 64,   // max beats per row (weight buffer depth per bank)
    parameter integer R_MAX     = 64,   // max rows (activation buffer: R_MAX * KB_MAX beats)
    parameter integer T_MAX     = 16,   // max tiles (parameter slots)
    parameter integer CW        = 16,   // counter width of cfg_rows/kbeats/tiles
    parameter integer ACC_OUT   = 1,
    localparam integer QPW      = G * (BIAS_BITS + MBITS + 6)
) (
    input  wire                     clk,
    input  wire                     rst,
    input  wire                     cfg_mode,      // 0: 8x4, 1: 8x8
    input  wire                     cfg_a_signed,  // activations int8 (1) / uint8 (0)
    input  wire                     cfg_y_signed,  // outputs int (1) / uint (0)
    input  wire [CW-1:0]            cfg_rows,      // R, 1 .. R_MAX
    input  wire [CW-1:0]            cfg_kbeats,    // beats per row, 1 .. KB_MAX
    input  wire [CW-1:0]            cfg_tiles,     // T, 1 .. T_MAX
    input  wire                     s_act_tvalid,
    output wire                     s_act_tready,
    input  wire [M*8-1:0]           s_act_tdata,
    input  wire                     s_act_tlast,
    input  wire                     s_wgt_tvalid,
    output wire                     s_wgt_tready,
    input  wire [G*M*4-1:0]         s_wgt_tdata,
    input  wire                     s_qp_tvalid,
    output wire                     s_qp_tready,
    input  wire [QPW-1:0]           s_qp_tdata,
    output wire                     m_tvalid,
    input  wire                     m_tready,
    output wire [G*OUT_BITS-1:0]    m_tdata,
    output wire [G*ACC_BITS-1:0]    m_tacc,
    output wire                     m_tlast,
    output wire [31:0]              d_pe
);
    localparam integer WA = (KB_MAX <= 2) ? 1 : $clog2(KB_MAX);          // beat address
    localparam integer AA = (R_MAX * KB_MAX <= 2) ? 1 : $clog2(R_MAX * KB_MAX);
    localparam integer QA = (T_MAX <= 2) ? 1 : $clog2(T_MAX);

    /* verilator lint_off UNUSEDSIGNAL */
    wire unused_tlast = s_act_tlast;  // rows are counted, see the header
    /* verilator lint_on UNUSEDSIGNAL */

    // ------------------------------------------------------------ issue position
    reg [CW-1:0] it_tile, it_row, it_beat;  // next beat to issue: tile, row, beat
    reg [AA-1:0] it_aaddr;                  // it_row * cfg_kbeats + it_beat
    reg          it_done;                   // every beat of the run issued
    // ------------------------------------------------------------ weight loading
    reg [CW-1:0] ld_tile, ld_beat;          // next weight beat to write
    // ------------------------------------------------------------ parameter beats
    reg [CW-1:0] qp_cnt;                    // parameter beats received

    wire last_beat = (it_beat == cfg_kbeats - 1'b1);
    wire last_row  = (it_row == cfg_rows - 1'b1);
    wire last_tile = (it_tile == cfg_tiles - 1'b1);

    // Weight buffer: bank t mod 2 holds tile t; bank b is free once tile t-2 is issued.
    reg [G*M*4-1:0] wbuf [0:2*KB_MAX-1];
    wire wgt_can  = (ld_tile < cfg_tiles) && (ld_tile <= it_tile + 1'b1);
    wire wgt_fire = s_wgt_tvalid & wgt_can;
    assign s_wgt_tready = wgt_can;
    always @(posedge clk) begin
        if (wgt_fire) wbuf[{ld_tile[0], ld_beat[WA-1:0]}] <= s_wgt_tdata;
    end

    // Weights of the beat to issue: from the buffer, or straight from the stream.
    wire w_buffered = (ld_tile > it_tile) || (ld_tile == it_tile && ld_beat > it_beat);
    wire w_through  = (ld_tile == it_tile) && (ld_beat == it_beat) && s_wgt_tvalid;
    wire w_ok       = w_buffered | w_through;
    wire [G*M*4-1:0] w_data = w_through ? s_wgt_tdata : wbuf[{it_tile[0], it_beat[WA-1:0]}];

    // Per-tile parameters: written into the array's slot qp_cnt; a tile may start in the
    // cycle its parameter beat arrives (they are read at the accumulate stage).
    assign s_qp_tready = (qp_cnt < cfg_tiles);
    wire qp_fire = s_qp_tvalid & s_qp_tready;
    wire qp_ok   = (qp_cnt > it_tile) || (qp_cnt == it_tile && s_qp_tvalid);

    // Activations: the stream during tile 0 (also written to the buffer), then the buffer.
    reg [M*8-1:0] abuf [0:R_MAX*KB_MAX-1];
    wire from_stream = (it_tile == {CW{1'b0}});
    wire a_ok = !from_stream || s_act_tvalid;
    wire [M*8-1:0] a_data = from_stream ? s_act_tdata : abuf[it_aaddr];

    // Issue into the PE array.
    wire pe_act_valid = !it_done && a_ok;
    wire pe_wgt_valid = !it_done && w_ok && qp_ok;
    wire pe_act_ready, pe_wgt_ready;
    wire fire = pe_act_valid & pe_act_ready;  // == pe_wgt_valid & pe_wgt_ready
    assign s_act_tready = from_stream && !it_done && pe_act_ready;

    always @(posedge clk) begin
        if (fire && from_stream) abuf[it_aaddr] <= s_act_tdata;
    end

    // Output side.
    wire [1:0] pe_m_tuser;  // {last row of the run, last row of a tile}
    wire       pe_m_tvalid;
    assign m_tvalid = pe_m_tvalid;
    assign m_tlast  = pe_m_tuser[0];
    wire run_end = pe_m_tvalid & m_tready & pe_m_tuser[1];

    always @(posedge clk) begin
        if (rst || run_end) begin
            it_tile  <= {CW{1'b0}};
            it_row   <= {CW{1'b0}};
            it_beat  <= {CW{1'b0}};
            it_aaddr <= {AA{1'b0}};
            it_done  <= 1'b0;
            ld_tile  <= {CW{1'b0}};
            ld_beat  <= {CW{1'b0}};
            qp_cnt   <= {CW{1'b0}};
        end else begin
            if (fire) begin
                if (!last_beat) begin
                    it_beat  <= it_beat + 1'b1;
                    it_aaddr <= it_aaddr + 1'b1;
                end else begin
                    it_beat <= {CW{1'b0}};
                    if (!last_row) begin
                        it_row   <= it_row + 1'b1;
                        it_aaddr <= it_aaddr + 1'b1;
                    end else begin
                        it_row   <= {CW{1'b0}};
                        it_aaddr <= {AA{1'b0}};
                        it_tile  <= it_tile + 1'b1;
                        if (last_tile) it_done <= 1'b1;
                    end
                end
            end
            if (wgt_fire) begin
                if (ld_beat == cfg_kbeats - 1'b1) begin
                    ld_beat <= {CW{1'b0}};
                    ld_tile <= ld_tile + 1'b1;
                end else begin
                    ld_beat <= ld_beat + 1'b1;
                end
            end
            if (qp_fire) qp_cnt <= qp_cnt + 1'b1;
        end
    end

    pe_array #(
        .G(G), .M(M), .ACC_BITS(ACC_BITS), .BIAS_BITS(BIAS_BITS), .MBITS(MBITS),
        .OUT_BITS(OUT_BITS), .PACKING(PACKING), .QDEPTH(T_MAX), .USER_BITS(2),
        .ACC_OUT(ACC_OUT)
    ) u_array (
        .clk(clk), .rst(rst),
        .cfg_mode(cfg_mode), .cfg_a_signed(cfg_a_signed), .cfg_y_signed(cfg_y_signed),
        .qp_we(qp_fire), .qp_addr(qp_cnt[QA-1:0]),
        .qp_bias (s_qp_tdata[0 +: G*BIAS_BITS]),
        .qp_mult (s_qp_tdata[G*BIAS_BITS +: G*MBITS]),
        .qp_shift(s_qp_tdata[G*(BIAS_BITS+MBITS) +: G*6]),
        .s_act_tvalid(pe_act_valid), .s_act_tready(pe_act_ready),
        .s_act_tdata(a_data), .s_act_tlast(last_beat),
        .s_act_tuser({last_row & last_tile, last_row}),
        .s_act_qslot(it_tile[QA-1:0]),
        .s_wgt_tvalid(pe_wgt_valid), .s_wgt_tready(pe_wgt_ready),
        .s_wgt_tdata(w_data),
        .m_tvalid(pe_m_tvalid), .m_tready(m_tready),
        .m_tdata(m_tdata), .m_tacc(m_tacc), .m_tuser(pe_m_tuser),
        .d_pe(d_pe)
    );

    /* verilator lint_off UNUSEDSIGNAL */
    wire unused_ready = pe_wgt_ready;  // joined with pe_act_ready inside the array
    /* verilator lint_on UNUSEDSIGNAL */
endmodule

`default_nettype wire
