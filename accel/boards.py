"""Target boards and the resources of their FPGA parts.

Figures are the device totals from the Zynq UltraScale+ product tables
(AMD/Xilinx DS891): programmable-logic LUTs and flip-flops, DSP48E2 slices,
block RAM counted in 18 Kb halves (one RAMB36 = two RAMB18), and UltraRAM
blocks (288 Kb each).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Board", "BOARDS", "get_board"]


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

    @property
    def bram36(self) -> int:
        """Block RAM counted as RAMB36 blocks."""
        return self.bram18 // 2

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
