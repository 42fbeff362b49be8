"""Target boards and the resources of their FPGA parts.

Figures are the device totals from the Zynq UltraScale+ product tables
(AMD/Xilinx DS891): programmable-logic LUTs and flip-flops, DSP48E2 slices,
block RAM counted in 18 Kb halves (one RAMB36 = two RAMB18), and UltraRAM
blocks (288 Kb each).

Board model for the engine's cost model (``codesign.accel.engine``); every figure below is
an **assumption** stated where it is made, not a measurement:

* **Clock.** FQ-BERT (Vivado HLS 2019.1) closed 214 MHz on both boards. The engine is
  hand-written RTL with every DSP48E2 fully registered (A/B/D, M, P) and pipelined adder
  trees, so we plan for ``target_clock_mhz = 250`` and treat 200-300 MHz as the achievable
  range (``clock_min_mhz``..``clock_max_mhz``): the -2 speed grade's DSP48E2 and RAMB36 run
  above 600 MHz (DS925), and the Vitis AI DPU closes 281 MHz on the ZCU102 (its DSP array
  at twice that). 300 MHz is the optimistic end: a design at 85 % utilisation may not
  close it. The cost model does not derate the clock with utilisation.
* **DDR bandwidth available to the PL.** Both boards put a 64-bit DDR4-2666 on the PS
  (2666 MT/s x 8 B = 21.3 GB/s peak); the PL reaches it through the S_AXI_HP ports
  (128 bit each). We assume the PL sustains ``ddr_pl_efficiency = 0.70`` of the peak
  (14.9 GB/s): Xilinx gives about 75 % as the DDR controller's maximum efficiency for
  streaming traffic (UG585, section 22.3.2, Zynq-7000; the UltraScale+ PS DDR controller
  is of the same family), less a margin for the PS's own traffic. The ZCU111 also has a
  4 GB 64-bit DDR4 component memory on the PL side (UG1271); we record its peak assuming
  DDR4-2400 (19.2 GB/s) but the cost model does not use it (it needs a memory controller
  in the PL, whose resources the model does not count): ``ddr_gbps`` is the PS DDR only.
* **Power** (``PowerModel``): board static power (PS, DDR, PL static, other board loads;
  typical values, assumed) plus PL dynamic power per used resource, linear in the clock,
  at the stated toggle rate, plus DDR traffic. ``codesign.accel.engine`` fits one global
  scale of the dynamic part to FQ-BERT's published board power (9.8 W ZCU102, 13.2 W
  ZCU111) at their Table III resources and 214 MHz, and reports the residuals.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Board", "BOARDS", "PowerModel", "get_board"]


@dataclass(frozen=True)
class PowerModel:
    """Board power: static components (W) + dynamic per used PL resource, linear in the clock.

    Static components are typical values for the board running Linux on the PS with the
    accelerator configured (assumptions: neither the boards' nor FQ-BERT's breakdowns are
    published). Dynamic coefficients are in microwatts per MHz per used element (LUT, FF,
    DSP48E2, RAMB18, URAM288) at ``toggle_rate`` (Xilinx Power Estimator's default 12.5 %
    for logic; block RAM at 50 % enable), typical of 16 nm UltraScale+ -2 parts in XPE;
    the LUT figure includes its share of routing, the FF figure its share of the clock
    tree. ``ddr_w_per_gbps`` is the DDR4 + PHY energy of off-chip traffic (about 19 pJ/bit).
    """

    ps_w: float  # APU (4x Cortex-A53) + PS interconnect + peripherals, active
    ddr_w: float  # DDR4 devices and PHY, idle/refresh share
    pl_static_w: float  # PL leakage of the part at typical junction temperature
    board_w: float  # clocking, PHYs, fan, regulator losses
    lut_uw_per_mhz: float = 0.06
    ff_uw_per_mhz: float = 0.025
    dsp_uw_per_mhz: float = 2.5
    bram18_uw_per_mhz: float = 6.0
    uram_uw_per_mhz: float = 15.0
    ddr_w_per_gbps: float = 0.15
    toggle_rate: float = 0.125

    @property
    def static_w(self) -> float:
        """Power drawn with the accelerator idle (W)."""
        return self.ps_w + self.ddr_w + self.pl_static_w + self.board_w

    def dynamic_w(self, resources: dict, clock_mhz: float, ddr_gbps: float = 0.0) -> float:
        """Dynamic power (W) of ``resources`` (keys lut, ff, dsp, bram18, uram) at ``clock_mhz``
        plus ``ddr_gbps`` of average DDR traffic, before any fitted scale."""
        per_mhz = (self.lut_uw_per_mhz * resources.get("lut", 0) + self.ff_uw_per_mhz * resources.get("ff", 0)
                   + self.dsp_uw_per_mhz * resources.get("dsp", 0)
                   + self.bram18_uw_per_mhz * resources.get("bram18", 0)
                   + self.uram_uw_per_mhz * resources.get("uram", 0))
        return per_mhz * clock_mhz * 1e-6 + self.ddr_w_per_gbps * ddr_gbps


@dataclass(frozen=True)
class Board:
    """One evaluation board and the resources of its FPGA part."""

    name: str
    part: str  # Vivado part name
    lut: int
    ff: int
    dsp: int  # DSP48E2 slices
    bram18: int  # RAMB18 blocks (18 Kb)
    uram: int  # URAM288 blocks
    description: str = ""
    # --- board model for the cost model (assumptions, see the module docstring)
    clock_min_mhz: float = 200.0
    clock_max_mhz: float = 300.0
    target_clock_mhz: float = 250.0
    ddr_peak_gbps: float = 21.33  # PS DDR4-2666, 64 bit
    ddr_pl_efficiency: float = 0.70  # sustained fraction reachable from the PL (HP ports)
    ddr_pl_side_peak_gbps: float = 0.0  # a PL-side DDR (not used by the cost model)
    power: PowerModel | None = None

    @property
    def bram36(self) -> int:
        """Block RAM counted as RAMB36 blocks."""
        return self.bram18 // 2

    @property
    def ddr_gbps(self) -> float:
        """Sustained DDR bandwidth available to the PL (GB/s, 1e9 bytes/s)."""
        return self.ddr_peak_gbps * self.ddr_pl_efficiency

    def clock_grid_mhz(self) -> tuple[float, ...]:
        """Clocks the folding search tries: FQ-BERT's 214 MHz and 25 MHz steps in the range."""
        grid = {float(self.clock_min_mhz), float(self.clock_max_mhz), 214.0, float(self.target_clock_mhz)}
        f = float(self.clock_min_mhz)
        while f < self.clock_max_mhz:
            grid.add(f)
            f += 25.0
        return tuple(sorted(g for g in grid if self.clock_min_mhz <= g <= self.clock_max_mhz))

    def resources(self) -> dict[str, int]:
        """The countable resources, keyed as in cost-model reports."""
        return {
            "lut": self.lut,
            "ff": self.ff,
            "dsp": self.dsp,
            "bram18": self.bram18,
            "uram": self.uram,
        }


BOARDS: dict[str, Board] = {
    "zcu102": Board(
        name="zcu102",
        part="xczu9eg-ffvb1156-2-e",
        lut=274_080,
        ff=548_160,
        dsp=2_520,
        bram18=1_824,
        uram=0,
        description="Zynq UltraScale+ MPSoC ZCU102 (XCZU9EG)",
        ddr_peak_gbps=21.33,  # PS DDR4-2666 SODIMM, 64 bit (UG1182)
        power=PowerModel(ps_w=2.0, ddr_w=1.0, pl_static_w=0.8, board_w=1.5),
    ),
    "zcu111": Board(
        name="zcu111",
        part="xczu28dr-ffvg1517-2-e",
        lut=425_280,
        ff=850_560,
        dsp=4_272,
        bram18=2_160,
        uram=80,
        description="Zynq UltraScale+ RFSoC ZCU111 (XCZU28DR)",
        ddr_peak_gbps=21.33,  # PS DDR4-2666 SODIMM, 64 bit (UG1271)
        ddr_pl_side_peak_gbps=19.2,  # PL DDR4 component, 64 bit, assumed 2400 MT/s; unused
        # larger PL (and idle RF data converter tiles), RF clocking chips, PL-side DDR4 powered
        power=PowerModel(ps_w=2.0, ddr_w=1.5, pl_static_w=1.2, board_w=2.0),
    ),
}


def get_board(name: str) -> Board:
    """Return the board called ``name`` (case-insensitive).

    Raises ``ValueError`` with a one-line message listing the supported boards.
    """
    key = str(name).strip().lower()
    try:
        return BOARDS[key]
    except KeyError:
        supported = ", ".join(sorted(BOARDS))
        raise ValueError(f"unknown board {name!r} (supported: {supported})") from None
