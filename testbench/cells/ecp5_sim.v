// Behavioural models of the ECP5 cells that Yosys's library declares without a body (DP16KD,
// EHXPLLL) or with a tristate Verilator refuses on a top-level port (TRELLIS_IO), for
// simulating the synthesized ULX3S netlist (testbench/gatelevel.py). LUT4, CCU2C, TRELLIS_FF
// and TRELLIS_DPR16X4 use Yosys's own models.
//
// DP16KD follows Lattice TN1264 (ECP5 and ECP5-5G Memory Usage Guide): 18,432 bits read and
// written a word at a time on the rising clock edge when CE is high and the chip select bits
// match CSDECODE; a read's word appears on DO after that edge (REGMODE NOREG), or one edge
// later through the output register, which OCE enables (REGMODE OUTREG); RST clears the
// output (at once with RESETMODE ASYNC, at the edge with SYNC). WRITEMODE says what a write
// puts on its own port's output: nothing new (NORMAL), the new data (WRITETHROUGH) or the old
// (READBEFOREWRITE). Address bits by width: x9 AD[13:3], x18 AD[13:4] with byte enables
// AD[1:0], and x36 (port A writes DIA and DIB, port B reads onto DOA and DOB) AD[13:5] with
// byte enables on port A's AD[3:0]. The memory is 1,024 words of 18 bits: a x9 word w is half
// w % 2 (low bits first) of word w / 2, a x36 word w is words 2w (DIA, DOA) and 2w + 1, so
// ports of different widths see one memory as Yosys's block RAM mapping assumes
// (lattice/brams_map_16kd.v); INITVAL_xx holds 18-bit words xx*16 .. xx*16+15, each in a
// 20-bit slot. Only the widths the chip uses (9, 18, 36) are modelled, x36 on both ports or
// neither: any other stops the simulation at time 0. An asynchronous RST (RESETMODE ASYNC)
// clears the output while it is high and the latch and register at the next edge; a pulse
// that ends between two edges is not modelled (the chip ties RST to 0: a block RAM with a
// read reset is not folded, rtl/bramfold.py).

module DP16KD(
  input DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7, DIA6, DIA5,
        DIA4, DIA3, DIA2, DIA1, DIA0,
  input ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2, ADA1, ADA0,
  input CEA, OCEA, CLKA, WEA, RSTA,
  input CSA2, CSA1, CSA0,
  output DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5,
         DOA4, DOA3, DOA2, DOA1, DOA0,
  input DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7, DIB6, DIB5,
        DIB4, DIB3, DIB2, DIB1, DIB0,
  input ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2, ADB1, ADB0,
  input CEB, OCEB, CLKB, WEB, RSTB,
  input CSB2, CSB1, CSB0,
  output DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5,
         DOB4, DOB3, DOB2, DOB1, DOB0
);
  parameter DATA_WIDTH_A = 18;
  parameter DATA_WIDTH_B = 18;
  parameter REGMODE_A = "NOREG";
  parameter REGMODE_B = "NOREG";
  parameter RESETMODE = "SYNC";
  parameter ASYNC_RESET_RELEASE = "SYNC";
  parameter CSDECODE_A = "0b000";
  parameter CSDECODE_B = "0b000";
  parameter WRITEMODE_A = "NORMAL";
  parameter WRITEMODE_B = "NORMAL";
  parameter CLKAMUX = "CLKA";
  parameter CLKBMUX = "CLKB";
  parameter GSR = "ENABLED";
  parameter WID = 0;
  parameter [319:0] INITVAL_00 = 0, INITVAL_01 = 0, INITVAL_02 = 0, INITVAL_03 = 0,
    INITVAL_04 = 0, INITVAL_05 = 0, INITVAL_06 = 0, INITVAL_07 = 0, INITVAL_08 = 0,
    INITVAL_09 = 0, INITVAL_0A = 0, INITVAL_0B = 0, INITVAL_0C = 0, INITVAL_0D = 0,
    INITVAL_0E = 0, INITVAL_0F = 0, INITVAL_10 = 0, INITVAL_11 = 0, INITVAL_12 = 0,
    INITVAL_13 = 0, INITVAL_14 = 0, INITVAL_15 = 0, INITVAL_16 = 0, INITVAL_17 = 0,
    INITVAL_18 = 0, INITVAL_19 = 0, INITVAL_1A = 0, INITVAL_1B = 0, INITVAL_1C = 0,
    INITVAL_1D = 0, INITVAL_1E = 0, INITVAL_1F = 0, INITVAL_20 = 0, INITVAL_21 = 0,
    INITVAL_22 = 0, INITVAL_23 = 0, INITVAL_24 = 0, INITVAL_25 = 0, INITVAL_26 = 0,
    INITVAL_27 = 0, INITVAL_28 = 0, INITVAL_29 = 0, INITVAL_2A = 0, INITVAL_2B = 0,
    INITVAL_2C = 0, INITVAL_2D = 0, INITVAL_2E = 0, INITVAL_2F = 0, INITVAL_30 = 0,
    INITVAL_31 = 0, INITVAL_32 = 0, INITVAL_33 = 0, INITVAL_34 = 0, INITVAL_35 = 0,
    INITVAL_36 = 0, INITVAL_37 = 0, INITVAL_38 = 0, INITVAL_39 = 0, INITVAL_3A = 0,
    INITVAL_3B = 0, INITVAL_3C = 0, INITVAL_3D = 0, INITVAL_3E = 0, INITVAL_3F = 0;

  localparam W36 = DATA_WIDTH_A == 36 || DATA_WIDTH_B == 36;
  localparam OUTREG_A = REGMODE_A == "OUTREG";
  localparam OUTREG_B = REGMODE_B == "OUTREG";
  localparam ASYNC = RESETMODE == "ASYNC";

  wire [17:0] dia = {DIA17, DIA16, DIA15, DIA14, DIA13, DIA12, DIA11, DIA10, DIA9, DIA8, DIA7,
                     DIA6, DIA5, DIA4, DIA3, DIA2, DIA1, DIA0};
  wire [17:0] dib = {DIB17, DIB16, DIB15, DIB14, DIB13, DIB12, DIB11, DIB10, DIB9, DIB8, DIB7,
                     DIB6, DIB5, DIB4, DIB3, DIB2, DIB1, DIB0};
  wire [13:0] ada = {ADA13, ADA12, ADA11, ADA10, ADA9, ADA8, ADA7, ADA6, ADA5, ADA4, ADA3, ADA2,
                     ADA1, ADA0};
  wire [13:0] adb = {ADB13, ADB12, ADB11, ADB10, ADB9, ADB8, ADB7, ADB6, ADB5, ADB4, ADB3, ADB2,
                     ADB1, ADB0};
  // CSDECODE is a string "0bXYZ": the low bit of each of its last three characters.
  wire [2:0] csa_want = {CSDECODE_A[16], CSDECODE_A[8], CSDECODE_A[0]};
  wire [2:0] csb_want = {CSDECODE_B[16], CSDECODE_B[8], CSDECODE_B[0]};
  wire clka = CLKAMUX == "INV" ? ~CLKA : CLKA;
  wire clkb = CLKBMUX == "INV" ? ~CLKB : CLKB;
  wire ena = CEA && {CSA2, CSA1, CSA0} == csa_want;
  wire enb = CEB && {CSB2, CSB1, CSB0} == csb_want;

  reg [17:0] mem [0:1023];
  reg [17:0] lat_a, lat_b, reg_a, reg_b;   // the read latches and the output registers

  function [319:0] initval(input integer row);
    case (row)
      'h00: initval = INITVAL_00; 'h01: initval = INITVAL_01; 'h02: initval = INITVAL_02;
      'h03: initval = INITVAL_03; 'h04: initval = INITVAL_04; 'h05: initval = INITVAL_05;
      'h06: initval = INITVAL_06; 'h07: initval = INITVAL_07; 'h08: initval = INITVAL_08;
      'h09: initval = INITVAL_09; 'h0A: initval = INITVAL_0A; 'h0B: initval = INITVAL_0B;
      'h0C: initval = INITVAL_0C; 'h0D: initval = INITVAL_0D; 'h0E: initval = INITVAL_0E;
      'h0F: initval = INITVAL_0F; 'h10: initval = INITVAL_10; 'h11: initval = INITVAL_11;
      'h12: initval = INITVAL_12; 'h13: initval = INITVAL_13; 'h14: initval = INITVAL_14;
      'h15: initval = INITVAL_15; 'h16: initval = INITVAL_16; 'h17: initval = INITVAL_17;
      'h18: initval = INITVAL_18; 'h19: initval = INITVAL_19; 'h1A: initval = INITVAL_1A;
      'h1B: initval = INITVAL_1B; 'h1C: initval = INITVAL_1C; 'h1D: initval = INITVAL_1D;
      'h1E: initval = INITVAL_1E; 'h1F: initval = INITVAL_1F; 'h20: initval = INITVAL_20;
      'h21: initval = INITVAL_21; 'h22: initval = INITVAL_22; 'h23: initval = INITVAL_23;
      'h24: initval = INITVAL_24; 'h25: initval = INITVAL_25; 'h26: initval = INITVAL_26;
      'h27: initval = INITVAL_27; 'h28: initval = INITVAL_28; 'h29: initval = INITVAL_29;
      'h2A: initval = INITVAL_2A; 'h2B: initval = INITVAL_2B; 'h2C: initval = INITVAL_2C;
      'h2D: initval = INITVAL_2D; 'h2E: initval = INITVAL_2E; 'h2F: initval = INITVAL_2F;
      'h30: initval = INITVAL_30; 'h31: initval = INITVAL_31; 'h32: initval = INITVAL_32;
      'h33: initval = INITVAL_33; 'h34: initval = INITVAL_34; 'h35: initval = INITVAL_35;
      'h36: initval = INITVAL_36; 'h37: initval = INITVAL_37; 'h38: initval = INITVAL_38;
      'h39: initval = INITVAL_39; 'h3A: initval = INITVAL_3A; 'h3B: initval = INITVAL_3B;
      'h3C: initval = INITVAL_3C; 'h3D: initval = INITVAL_3D; 'h3E: initval = INITVAL_3E;
      default: initval = INITVAL_3F;
    endcase
  endfunction

  integer r, i;
  initial begin
    if (!((DATA_WIDTH_A == 9 || DATA_WIDTH_A == 18 || DATA_WIDTH_A == 36) &&
          (DATA_WIDTH_B == 9 || DATA_WIDTH_B == 18 || DATA_WIDTH_B == 36) &&
          (DATA_WIDTH_A == 36) == (DATA_WIDTH_B == 36)))
      $fatal(1, "DP16KD model: DATA_WIDTH_A=%0d DATA_WIDTH_B=%0d not modelled (9, 18; 36 on both)",
             DATA_WIDTH_A, DATA_WIDTH_B);
    for (r = 0; r < 64; r = r + 1)
      for (i = 0; i < 16; i = i + 1)
        mem[r * 16 + i] = initval(r)[i * 20 +: 18];
    lat_a = 0; lat_b = 0; reg_a = 0; reg_b = 0;
  end

  // The 18-bit word a port's address selects (x36: the even one of a pair), and which 9-bit
  // half of it a x9 port reads and writes.
  wire [9:0] wa = W36 ? {ada[13:5], 1'b0} : ada[13:4];
  wire [9:0] wb = W36 ? {adb[13:5], 1'b0} : adb[13:4];
  // A port's write mask over its 18-bit word (x36: over each word of the pair).
  wire [17:0] ma = DATA_WIDTH_A == 9 ? (ada[3] ? 18'h3fe00 : 18'h001ff)
                 : {{9{ada[1]}}, {9{ada[0]}}};
  wire [17:0] ma_hi = {{9{ada[3]}}, {9{ada[2]}}};
  wire [17:0] mb = DATA_WIDTH_B == 9 ? (adb[3] ? 18'h3fe00 : 18'h001ff)
                 : {{9{adb[1]}}, {9{adb[0]}}};
  // A x9 port's data is the low 9 bits of DI and DO, whichever half it uses.
  function [17:0] wide(input integer width, input sel, input [17:0] d);
    wide = width == 9 ? (sel ? {d[8:0], 9'b0} : {9'b0, d[8:0]}) : d;
  endfunction
  function [17:0] narrow(input integer width, input sel, input [17:0] w);
    narrow = width == 9 ? {9'b0, sel ? w[17:9] : w[8:0]} : w;
  endfunction

  // Port A: writes (x36: the whole word from DIA and DIB), and reads when it is not x36.
  always @(posedge clka) begin
    if (ena && WEA) begin
      if (W36) begin
        mem[wa] <= (mem[wa] & ~ma) | (dia & ma);
        mem[wa + 1] <= (mem[wa + 1] & ~ma_hi) | (dib & ma_hi);
      end else begin
        mem[wa] <= (mem[wa] & ~ma) | (wide(DATA_WIDTH_A, ada[3], dia) & ma);
        if (WRITEMODE_A == "WRITETHROUGH")
          lat_a <= narrow(DATA_WIDTH_A, ada[3], (mem[wa] & ~ma)
                                                | (wide(DATA_WIDTH_A, ada[3], dia) & ma));
        if (WRITEMODE_A == "READBEFOREWRITE")
          lat_a <= narrow(DATA_WIDTH_A, ada[3], mem[wa]);
      end
    end else if (ena && !W36)
      lat_a <= narrow(DATA_WIDTH_A, ada[3], mem[wa]);
    if (!W36) begin
      if (RSTA) lat_a <= 0;
      if (RSTA) reg_a <= 0;
      else if (OCEA) reg_a <= lat_a;
    end
  end

  // Port B: reads (x36: the whole word onto DOA and DOB), and writes when it is not x36.
  always @(posedge clkb) begin
    if (enb && WEB && !W36) begin
      mem[wb] <= (mem[wb] & ~mb) | (wide(DATA_WIDTH_B, adb[3], dib) & mb);
      if (WRITEMODE_B == "WRITETHROUGH")
        lat_b <= narrow(DATA_WIDTH_B, adb[3], (mem[wb] & ~mb)
                                              | (wide(DATA_WIDTH_B, adb[3], dib) & mb));
      if (WRITEMODE_B == "READBEFOREWRITE")
        lat_b <= narrow(DATA_WIDTH_B, adb[3], mem[wb]);
    end else if (enb) begin
      if (W36) begin
        lat_a <= mem[wb];
        lat_b <= mem[wb + 1];
      end else
        lat_b <= narrow(DATA_WIDTH_B, adb[3], mem[wb]);
    end
    if (RSTB) begin
      lat_b <= 0;
      if (W36) lat_a <= 0;
    end
    if (RSTB) reg_b <= 0;
    else if (OCEB) reg_b <= lat_b;
    if (W36) begin
      if (RSTB) reg_a <= 0;
      else if (OCEA) reg_a <= lat_a;
    end
  end

  wire [17:0] doa = OUTREG_A ? reg_a : lat_a;
  wire [17:0] dob = OUTREG_B ? reg_b : lat_b;
  // RESETMODE ASYNC: the output reads zero while RST is high.
  wire rst_a = ASYNC && (W36 ? RSTB : RSTA);
  wire rst_b = ASYNC && RSTB;
  assign {DOA17, DOA16, DOA15, DOA14, DOA13, DOA12, DOA11, DOA10, DOA9, DOA8, DOA7, DOA6, DOA5,
          DOA4, DOA3, DOA2, DOA1, DOA0} = rst_a ? 18'b0 : doa;
  assign {DOB17, DOB16, DOB15, DOB14, DOB13, DOB12, DOB11, DOB10, DOB9, DOB8, DOB7, DOB6, DOB5,
          DOB4, DOB3, DOB2, DOB1, DOB0} = rst_b ? 18'b0 : dob;
endmodule

// The PLL as the simulation sees it: CLKOP is the clock the testbench drives on CLKI (the chip's
// own clock, whatever the PLL would make of the oscillator), and LOCK rises after
// PLL_LOCK_CYCLES edges of it, so the board wrapper's reset hold after lock runs as on the board.
module EHXPLLL(CLKI, CLKFB, PHASESEL1, PHASESEL0, PHASEDIR, PHASESTEP, PHASELOADREG, STDBY,
               PLLWAKESYNC, RST, ENCLKOP, ENCLKOS, ENCLKOS2, ENCLKOS3, CLKOP, CLKOS, CLKOS2,
               CLKOS3, LOCK, INTLOCK, REFCLK, CLKINTFB);
  parameter CLKI_DIV = 1;
  parameter CLKFB_DIV = 1;
  parameter CLKOP_DIV = 8;
  parameter CLKOS_DIV = 8;
  parameter CLKOS2_DIV = 8;
  parameter CLKOS3_DIV = 8;
  parameter CLKOP_ENABLE = "ENABLED";
  parameter CLKOS_ENABLE = "DISABLED";
  parameter CLKOS2_ENABLE = "DISABLED";
  parameter CLKOS3_ENABLE = "DISABLED";
  parameter CLKOP_CPHASE = 0;
  parameter CLKOS_CPHASE = 0;
  parameter CLKOS2_CPHASE = 0;
  parameter CLKOS3_CPHASE = 0;
  parameter CLKOP_FPHASE = 0;
  parameter CLKOS_FPHASE = 0;
  parameter CLKOS2_FPHASE = 0;
  parameter CLKOS3_FPHASE = 0;
  parameter FEEDBK_PATH = "CLKOP";
  parameter CLKOP_TRIM_POL = "RISING";
  parameter CLKOP_TRIM_DELAY = 0;
  parameter CLKOS_TRIM_POL = "RISING";
  parameter CLKOS_TRIM_DELAY = 0;
  parameter OUTDIVIDER_MUXA = "DIVA";
  parameter OUTDIVIDER_MUXB = "DIVB";
  parameter OUTDIVIDER_MUXC = "DIVC";
  parameter OUTDIVIDER_MUXD = "DIVD";
  parameter PLL_LOCK_MODE = 0;
  parameter PLL_LOCK_DELAY = 200;
  parameter STDBY_ENABLE = "DISABLED";
  parameter REFIN_RESET = "DISABLED";
  parameter SYNC_ENABLE = "DISABLED";
  parameter INT_LOCK_STICKY = "ENABLED";
  parameter DPHASE_SOURCE = "DISABLED";
  parameter PLLRST_ENA = "DISABLED";
  parameter INTFB_WAKE = "DISABLED";
  input CLKI, CLKFB, PHASESEL1, PHASESEL0, PHASEDIR, PHASESTEP, PHASELOADREG, STDBY,
        PLLWAKESYNC, RST, ENCLKOP, ENCLKOS, ENCLKOS2, ENCLKOS3;
  output CLKOP, CLKOS, CLKOS2, CLKOS3, LOCK, INTLOCK, REFCLK, CLKINTFB;
  localparam PLL_LOCK_CYCLES = 16;
  reg [4:0] edges = 0;
  always @(posedge CLKI) if (edges != PLL_LOCK_CYCLES) edges <= edges + 1;
  assign CLKOP = CLKI;
  assign CLKOS = CLKI;
  assign CLKOS2 = CLKI;
  assign CLKOS3 = CLKI;
  assign REFCLK = CLKI;
  assign CLKINTFB = CLKI;
  assign LOCK = edges == PLL_LOCK_CYCLES;
  assign INTLOCK = LOCK;
endmodule

// An I/O pad without its tristate (Verilator has none on top-level ports): an input pad passes
// its pin to O, an output pad drives its pin from I. The chip's pads are fixed in direction.
module TRELLIS_IO(inout B, input I, input T, output O);
  parameter DIR = "INPUT";
  generate
    if (DIR == "INPUT") begin
      assign O = B;
    end else begin
      assign B = I;
      assign O = I;
    end
  endgenerate
endmodule
