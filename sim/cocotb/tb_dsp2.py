"""cocotb testbench of dsp2_mul (sim/rtl/dsp2_mul.v) through sim/cocotb/dsp2_all.v;
not a pytest module.

Exhaustive over a box of operands: every activation in ``a`` x every weight w0 in ``w0``
(input JSON lists of values) x the wrapper's NW1 weights w1 = W1_LO .. W1_LO + NW1 - 1
(``w1_lo``, ``nw1`` in the input, equal to the build's parameters); both extracted
products are compared with numpy's a*w0 and a*w1 (==).
Output: {"checked": number of products compared, "mismatches": count}.
"""
from __future__ import annotations

import cocotb
import numpy as np
from cocotb.triggers import Timer
from streamdrv import load_inputs, save_outputs


@cocotb.test()
async def dsp2_exhaustive(dut):
    spec = load_inputs()
    nw1 = spec["nw1"]
    w1 = spec["w1_lo"] + np.arange(nw1)
    checked = bad = 0
    first_bad = None
    for a in spec["a"]:
        dut.a.value = a & 0x1FF
        for w0 in spec["w0"]:
            dut.w0.value = w0 & 0x1F
            await Timer(1, unit="ns")
            raw = int(dut.p.value).to_bytes(nw1 * 4, "little")
            got = np.frombuffer(raw, dtype="<i2").reshape(nw1, 2)
            ok = (got[:, 0] == a * w0) & (got[:, 1] == a * w1)
            checked += 2 * nw1
            if not ok.all():
                bad += int((got[:, 0] != a * w0).sum() + (got[:, 1] != a * w1).sum())
                if first_bad is None:
                    i = int(np.argmin(ok))
                    first_bad = f"a={a} w0={w0} w1={int(w1[i])}: got {got[i].tolist()}"
    save_outputs({"checked": checked, "mismatches": bad})
    assert bad == 0, f"{bad} of {checked} products wrong, first: {first_bad}"
