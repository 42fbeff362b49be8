"""The engine's cost model (accel/engine.py): docs/engine.md §4 cycles by hand, resource
geometry by hand, monotonicity, the folding search (limit, agreement with a brute-force
loop over ``evaluate``), the FQ-BERT calibration band, the power fit, the latency goals
and the report fields of an FQ-BERT build."""
from __future__ import annotations

import itertools
import json
import time
from types import SimpleNamespace

import numpy as np
import pytest

from codesign.accel import engine as E
from codesign.accel import report as rp
from codesign.accel.boards import BOARDS, get_board

BASE = E.Workload.from_config("base")


@pytest.fixture(scope="module")
def searched():
    """``search`` for BERT-base on both boards (clock enumerated), with its wall time."""
    out = {}
    for b in ("zcu102", "zcu111"):
        t0 = time.perf_counter()
        res = E.search("base", b)
        out[b] = (res, time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------------
# §4 cycle formulas, derived by hand


def test_d_pe():
    # D_pe = 5 + max(1, ceil(log2 M)) (sim/rtl/pe_array.v): M=16 -> 5+4; M=12 -> 5+4
    # (log2 12 = 3.58); M=2 -> 5+1
    assert (E.d_pe(16), E.d_pe(12), E.d_pe(2)) == (9, 9, 6)
    # dsp2c (§3, §4): 5 + C + max(1, ceil(log2(M/C))), C = min(M/2, 32): M=16 -> 5+8+1;
    # M=128 -> 5+32+2; the other packings keep the flat tree's depth
    assert (E.d_pe(16, "dsp2c"), E.d_pe(64, "dsp2c"), E.d_pe(128, "dsp2c"), E.d_pe(2, "dsp2c")) == (14, 38, 39, 7)
    assert E.d_pe(16, "dsp1") == E.d_pe(16, "lut") == E.d_pe(16, "dsp2") == 9
    assert list(E.d_pe(np.array([16, 16]), np.array([False, True]))) == [9, 14]


def test_d_pe_matches_the_rtl_model():
    from codesign.sim import rtl
    for M in (2, 4, 8, 12, 16, 32, 64, 128):
        assert E.d_pe(M) == rtl.d_pe(M), M
        if M // 2 <= 32 or (M // 2) % 32 == 0:
            assert E.d_pe(M, "dsp2c") == rtl.d_pe(M, "dsp2c"), M
            assert (E.linear_cycles(128, 768, 3072, 96, M, E.d_pe(M, "dsp2c"))
                    == rtl.matmul_cycles(128, 768, 3072, 96, M, 0, "dsp2c"))
        # §4 linear layer = the RTL's engine_top matmul in 8x4 mode
        assert E.linear_cycles(128, 768, 3072, 96, M, E.d_pe(M)) == rtl.matmul_cycles(128, 768, 3072, 96, M, 0)


def test_linear_cycles_by_hand():
    # R=4, K=10, Nout=6, G=4, M=4: ceil(6/4)=2 tiles, each 4 rows x ceil(10/4)=3 beats = 12;
    # 2*12 + D_pe(6) = 30
    assert E.linear_tile_cycles(4, 10, 4) == 12
    assert E.linear_cycles(4, 10, 6, 4, 4, 6) == 30
    # exact fit: R=128, K=768, Nout=768, G=96, M=16 -> 8 tiles x 128 x 48 = 49152, + 8
    assert E.linear_cycles(128, 768, 768, 96, 16, 8) == 49_160


def test_linear_with_memory_by_hand():
    # tile bytes: K*G/2 + 4G = 20 + 16 = 36. At 2 bytes/cycle the load is 18 cycles:
    # exposed first load 18 + (2-1)*max(12, 18) + last tile 12 + D_pe 6 = 54
    assert E.tile_weight_bytes(10, 4) == 36
    assert E.load_cycles(36, 2.0) == 18
    assert E.linear_cycles_with_memory(4, 10, 6, 4, 4, 6, 2.0) == 54
    # at 100 bytes/cycle the load (1 cycle) hides behind compute: 1 + 12 + 12 + 6 = 31
    assert E.linear_cycles_with_memory(4, 10, 6, 4, 4, 6, 100.0) == 31


def test_attention_cycles_by_hand():
    # Q·Kᵀ: R=8, d=4, N=3, M=4: 8 x ceil(8/3)=3 x ceil(8/4)=2 = 48
    # P·V:  8 x ceil(4/3)=2 x ceil(16/4)=4 = 64
    # heads=5 on P=2 PUs: ceil(5/2)=3 rounds of (48 + 64) = 336
    assert E.qk_head_cycles(8, 4, 3, 4) == 48
    assert E.pv_head_cycles(8, 4, 3, 4) == 64
    assert E.attention_cycles(8, 4, 5, 2, 3, 4) == 336


def test_softmax_and_layernorm_cycles_by_hand():
    # softmax row of R=10 on L_sm=4 lanes alone: 3 x ceil(10/4)=3 + 32 (divider) + D_sm(6) = 47
    assert E.softmax_row_cycles(10, 4) == 47
    # heads=5 on P=2 cores: ceil(5/2)=3 rounds x 10 = 30 rows streamed, B=3:
    # 3*3 + 38 = 47, then 29 rows x max(2*3+3, 3+33) = 29 x 36 = 1044 -> 1091
    assert E.softmax_cycles(10, 5, 2, 4) == 1091
    # LayerNorm row of H=20 on L_ln=8 alone: 2 passes x 3 + 16 (mean) + 16 (mu*T) + 48 (v)
    # + 25 (isqrt) + D_ln(34) = 145
    assert E.layernorm_row_cycles(20, 8) == 145
    # R=10 rows streamed: 145 + 9 x max(3, 48 + 1) = 586; two LayerNorms per layer -> 1172
    assert E.layernorm_cycles(10, 20, 8) == 1172


def test_softmax_and_layernorm_cycles_match_the_rtl_model():
    from codesign.sim import rtl
    for rows, n, lanes in ((1, 10, 4), (30, 10, 4), (128, 128, 16), (7, 768, 32)):
        assert E.softmax_stream_cycles(rows, n, lanes) == rtl.softmax_cycles(rows, n, lanes)
        assert E.layernorm_stream_cycles(rows, n, lanes) == rtl.layernorm_cycles(rows, n, lanes)


def test_layer_cycles_by_hand():
    # R=4, H=8, heads=2 (d=4), ffn=16, 3 layers; P=2 (1 dsp2 + 1 LUT PU), N=2 -> G=4, M=4
    # (D_pe = 5 + 2 = 7), L_sm=2, L_ln=4:
    #   q,k,v,o: ceil(8/4)=2 tiles x 4 x ceil(8/4)=2 = 16, +7 = 23 each
    #   ffn1:    ceil(16/4)=4 x 4 x 2 = 32, +7 = 39;  ffn2: 2 x 4 x ceil(16/4)=4 = 32, +7 = 39
    #   Q·Kᵀ: 1 round x 4 x ceil(4/2)=2 x ceil(8/4)=2 = 16;  P·V: 4 x ceil(4/2)=2 x ceil(8/4)=2 = 16
    #   softmax: 1 round x 4 rows streamed, B = ceil(4/2) = 2: 3*2 + 38 + 3 x max(7, 35) = 149
    #   layernorm: 2 x (4 rows, B = ceil(8/4) = 2: 2*2 + 139 + 3 x max(2, 49)) = 2 x 290 = 580
    #   total 4*23 + 39 + 39 + 16 + 16 + 149 + 580 = 931; x3 layers = 2793
    w = E.Workload(R=4, H=8, heads=2, ffn=16, layers=3)
    f = E.Folding(P_dsp=1, P_lut=1, N=2, M=4, packing="dsp2", L_sm=2, L_ln=4)
    parts = E.layer_cycles(w, f)
    assert parts == {"q": 23, "k": 23, "v": 23, "o": 23, "ffn1": 39, "ffn2": 39, "attention_qk": 16,
                     "attention_pv": 16, "softmax": 149, "layernorm": 580, "memory_stall": 0, "total": 931}
    assert E.inference_cycles(w, f) == 2793


def test_fqbert_linear_cycles_match_mac_count():
    # (N, M) = (8, 16), 12 PUs: 1536 lanes; BERT-base linears are 905,969,664 MACs per layer
    # at seq 128, all dimensions divide evenly: 905,969,664 / 1536 = 589,824 cycles + 6 D_pe (9)
    parts = E.layer_cycles(BASE, E.fqbert_folding(8, 16))
    assert sum(parts[k] for k in ("q", "k", "v", "o", "ffn1", "ffn2")) == 589_824 + 6 * 9
    assert BASE.macs() == 12 * (905_969_664 + 2 * 12 * 128 * 128 * 64)  # ~11.17 G MAC (reference.md)


# ---------------------------------------------------------------------------------------
# resources


def test_memory_geometry_by_hand():
    # 384 x 64 bits: 512x36 mode -> 1 x ceil(64/36)=2; (1Kx18 would take 4, FINN's mode)
    assert E.bram18_count(384, 64) == 2
    # 3000 x 8: 4Kx4 -> 1 x 2 = 2; 2Kx9 -> 2 x 1 = 2
    assert E.bram18_count(3000, 8) == 2
    # URAM 4Kx72: 36864 x 128 -> 9 x 2 = 18
    assert E.uram_count(36864, 128) == 18
    # LUTRAM: 64 x 12 -> 4 RAM64M (3 bits each) x 4 LUTs = 16
    assert E.lutram_luts(64, 12) == 16


def test_component_formulas_by_hand():
    assert E.finn_lut_mult(4, 8) == 36  # (2*ceil(12/6) - 1) * 12
    # tree of 16 leaves, first level 18 bits: 8x18 + 4x19 + 2x20 + 1x21 = 281
    assert E.adder_tree_luts(16, 18, E.COEFFS) == 281
    assert E.adder_tree_luts(2, 18, E.COEFFS) == 18


def test_dsp2_uses_half_the_dsps():
    c = E.COEFFS
    for n_pes, M in ((32, 16), (96, 16), (8, 64)):
        d1 = E.multipliers(n_pes, 0, M, False, c).dsp
        d2 = E.multipliers(n_pes, 0, M, True, c).dsp
        assert d1 == n_pes * M and d2 * 2 == d1
    f1 = E.evaluate("base", E.Folding(P_dsp=12, P_lut=0, N=8, M=16, packing="dsp1"), "zcu102")
    f2 = E.evaluate("base", E.Folding(P_dsp=12, P_lut=0, N=8, M=16, packing="dsp2"), "zcu102")
    assert f1.components["multipliers"]["dsp"] == 1536 and f2.components["multipliers"]["dsp"] == 768
    assert f1.latency_ms == f2.latency_ms  # packing changes resources, not cycles
    f3 = E.evaluate("base", E.Folding(P_dsp=12, P_lut=0, N=8, M=16, packing="dsp2c"), "zcu102")
    assert f3.components["multipliers"]["dsp"] == 768  # dsp2c: dsp2's DSPs ...
    # ... without the per-PE fabric adder trees (only the two chain sums per PE are added)
    assert f3.components["adder_trees"]["lut"] < f2.components["adder_trees"]["lut"] / 5
    assert f3.resources["lut"] < f2.resources["lut"]
    assert f3.cycles["per_inference"] > f2.cycles["per_inference"]  # the deeper D_pe only
    lut = E.evaluate("base", E.Folding(P_dsp=0, P_lut=12, N=8, M=16, packing="lut"), "zcu102")
    assert lut.components["multipliers"]["dsp"] == 0
    assert lut.components["multipliers"]["lut"] > f1.components["multipliers"]["lut"] + 1536 * 30


@pytest.mark.parametrize("field,values", [("N", (2, 4, 8, 16, 32)), ("M", (8, 16, 32, 64)),
                                          ("P_dsp", (1, 2, 4, 8, 12, 16)), ("L_ln", (8, 16, 32, 64))])
def test_monotonic(field, values):
    """More PEs / lanes: fewer (or equal) cycles and more (or equal) resources."""
    prev = None
    for v in values:
        f = E.Folding(**{**dict(P_dsp=4, P_lut=0, N=8, M=16, packing="dsp2", L_sm=8, L_ln=16), field: v})
        e = E.evaluate("base", f, "zcu111")
        if prev is not None:
            assert e.cycles["per_inference"] <= prev.cycles["per_inference"], (field, v)
            for k in ("lut", "ff", "dsp"):
                assert e.resources[k] >= prev.resources[k], (field, v, k)
        prev = e


def test_coefficients_override():
    c = E.coefficients(requant_dsp=1)
    f = E.Folding(P_dsp=2, P_lut=0, N=4, M=16)
    a, b = E.evaluate("base", f, "zcu102"), E.evaluate("base", f, "zcu102", coeffs=c)
    assert a.resources["dsp"] - b.resources["dsp"] == 8  # 8 PEs, one DSP fewer each
    with pytest.raises(KeyError):
        E.coefficients(not_a_coefficient=1)


def test_folding_validation():
    with pytest.raises(ValueError):
        E.Folding(P_dsp=1, P_lut=0, N=3, M=16, packing="dsp2")  # dsp2 pairs PEs
    with pytest.raises(ValueError):
        E.Folding(P_dsp=1, P_lut=0, N=3, M=16, packing="dsp2c")  # so does dsp2c
    with pytest.raises(ValueError):
        E.Folding(P_dsp=1, P_lut=0, N=4, M=96, packing="dsp2c")  # M/2 = 48: no chains of <= 32
    with pytest.raises(ValueError):
        E.Folding(P_dsp=1, P_lut=0, N=4, M=16, packing="lut")
    with pytest.raises(ValueError):
        E.Folding(P_dsp=0, P_lut=0, N=4, M=16)
    with pytest.raises(ValueError):
        E.Folding(P_dsp=1, P_lut=0, N=4, M=7)


def test_preset_shapes_match_the_model_presets():
    from codesign.quantize.fqbert import PRESETS
    for name, shape in E.PRESET_SHAPES.items():
        assert E.Workload.from_config(name) == E.Workload.from_config(PRESETS[name])
        assert E.Workload.from_config(PRESETS[name].as_dict()) == E.Workload.from_config(shape)


# ---------------------------------------------------------------------------------------
# search


def test_search_is_fast_and_within_limit(searched):
    for b, (res, seconds) in searched.items():
        assert seconds < 4.0, (b, seconds)  # goal < 2 s; slack for loaded CI machines
        board = get_board(b)
        assert res.best is not None and res.best.feasible
        cap = board.resources()
        points = [res.best.resources] + [p for front in res.pareto.values() for p in front]
        for p in points:
            for k in E.Res.KEYS:
                assert p[k] <= 0.85 * cap[k], (b, k, p)
        assert board.clock_min_mhz <= res.best.folding.clock_mhz <= board.clock_max_mhz


def test_search_pareto_fronts_are_monotone(searched):
    for res, _ in searched.values():
        for name, front in res.pareto.items():
            lat = [p["latency_ms"] for p in front]
            cost = [p["power_w"] if name == "power" else p["lut"] for p in front]
            assert lat == sorted(lat) and cost == sorted(cost, reverse=True) and len(front) >= 5
        assert res.pareto["power"][0]["latency_ms"] == pytest.approx(res.best.latency_ms)


def test_default_search_uses_verified_packings_only():
    """dsp2c's synthesis path (DSP48E2 instances) is not simulated here: opt-in only."""
    assert "dsp2c" not in E.VERIFIED_PACKINGS and "dsp2c" in E.DSP_PACKINGS
    assert E.search("tiny", "zcu102", clock=214.0).best.folding.packing in E.VERIFIED_PACKINGS


def test_search_agrees_with_brute_force():
    """The vectorised search and a Python loop over ``evaluate`` find the same optimum."""
    space = dict(max_pus=3, Ns=(2, 4), Ms=(8, 16), L_sms=(4,), L_lns=(8, 16))
    board = get_board("zcu102")
    res = E.search("minilm", board, clock=250.0, limit=0.2, packings=E.DSP_PACKINGS, **space)
    best, feasible = None, 0
    for pk, Pd, Pl, N, M, Ll in itertools.product(("dsp1", "dsp2", "dsp2c", "lut"), range(4), range(4), (2, 4), (8, 16),
                                                  (8, 16)):
        if (pk == "lut") != (Pd == 0) or Pd + Pl == 0:
            continue
        e = E.evaluate("minilm", E.Folding(Pd, Pl, N, M, pk, 250.0, 4, Ll), board, limit=0.2)
        if e.feasible:
            feasible += 1
            if best is None or e.latency_ms < best.latency_ms:
                best = e
    assert res.feasible == feasible > 0
    assert res.best.latency_ms == pytest.approx(best.latency_ms)


def test_search_clock_fixed():
    res = E.search("tiny", "zcu102", clock=214.0)
    assert res.clocks == (214.0,) and res.best.folding.clock_mhz == 214.0


# ---------------------------------------------------------------------------------------
# calibration, power, goals


def test_fqbert_calibration_band():
    """Our model of FQ-BERT's own foldings against its Table III (bands stated here):
    latency 0.75-1.0 (our RTL-exact cycle count has none of HLS's pipeline fill and
    task-synchronisation overheads, so it is lower), FF/DSP within 0.75-1.35, BRAM18
    0.45-1.1 (FQ-BERT's HLS buffers more).

    LUT 0.8-1.4 and power within 12 %: the resource model is calibrated to Yosys on *our*
    RTL (accel/yosys_calibration.json). With the narrow requantizer (107 LUT) our PEs cost
    about what FQ-BERT's do; the LayerNorm lanes (a 24-stage divider each for z_i) and the
    per-port softmax exp tables still cost more than FQ-BERT's HLS, which shows at
    (8, 16) where they are a larger share (1.33), while (16, 8) with twice the PEs is below
    FQ-BERT (0.89). The power follows the LUTs."""
    rows = E.calibrate_fqbert()
    assert len(rows) == 3
    for r in rows:
        q = r["ratio"]
        assert 0.75 <= q["latency_ms"] <= 1.0, r
        assert 0.8 <= q["lut"] <= 1.4, r
        for k in ("ff", "dsp"):
            assert 0.75 <= q[k] <= 1.35, (k, r)
        assert 0.45 <= q["bram18"] <= 1.1, r
        if q["power_w"] is not None:
            assert abs(q["power_w"] - 1) < 0.12, r


def test_power_fit():
    fit = E.fit_power_scale()
    assert 0.8 < fit["scale"] < 1.2 and fit["scale"] == E.POWER_SCALE
    for r in fit["rows"]:
        assert abs(r["residual_w"]) < 0.1, r
    # linear in the clock: static + k·dyn·f
    b = get_board("zcu102")
    res = {"lut": 100_000, "ff": 100_000, "dsp": 1000, "bram18": 500, "uram": 0}
    p1, p2, p3 = (E.power_w(b, res, f) for f in (100.0, 200.0, 300.0))
    assert p1 > b.power.static_w and p3 - p2 == pytest.approx(p2 - p1)


def test_goals_reported(searched):
    """BERT-base, seq 128: goals 11 ms (ZCU102) and 6.5 ms (ZCU111). The model's answer is
    recorded, not forced: met or not, it must be at least 2x faster than FQ-BERT."""
    published = {"zcu102": 43.89, "zcu111": 23.79}
    for b, (res, _) in searched.items():
        e = res.best
        met = e.latency_ms <= E.GOALS_MS[b]
        print(f"{b}: {e.latency_ms:.2f} ms at {e.folding.clock_mhz:g} MHz, goal {E.GOALS_MS[b]} ms: "
              f"{'met' if met else 'NOT met'}")
        assert e.latency_ms < published[b] / 2


# ---------------------------------------------------------------------------------------
# report fields


def _fake_report(params, board="zcu102", model="fqbert"):
    ir = SimpleNamespace(ops=[], constants={}, tensors={}, notes=[])
    return rp.make_report(ir=ir, model=model, source="zoo", board=get_board(board), clock_mhz=214.0,
                          config="base" if params else None, seed=0,
                          csim={"passed": None, "cases": 0, "mismatches": None, "skipped": "--no-csim"},
                          hls={"emitted": False, "reason": "test"}, golden={"cases": 0, "inputs": [], "outputs": []},
                          seconds={"total": 0.0}, params=params)


def test_report_fields_for_fqbert_build():
    cfg = {"hidden": 768, "layers": 12, "heads": 12, "ffn": 3072, "max_seq": 128, "vocab_size": 30522}
    for board in BOARDS:
        doc = _fake_report({"config": cfg}, board)
        json.dumps(doc)  # serialisable
        assert doc["estimates"] == E.ESTIMATE_LABEL == doc["resources"]["estimate"]
        assert all(isinstance(doc["resources"][k], int) for k in E.Res.KEYS)
        for k in ("latency_ms", "fps", "power_w", "fps_per_w"):
            assert isinstance(doc[k], float) and doc[k] > 0
        assert set(doc["folding"]) >= {"P_dsp", "P_lut", "N", "M", "packing", "clock_mhz"}
        assert doc["folding"]["clock_mhz"] == 214.0
        per = doc["cycles"]["per_layer"]
        assert {"q", "ffn1", "attention_qk", "softmax", "layernorm", "memory_stall", "total"} <= set(per)
        assert doc["cycles"]["per_inference"] == 12 * per["total"]
        assert doc["latency_ms"] == pytest.approx(doc["cycles"]["per_inference"] / 214e3, rel=1e-4)
        assert doc["engine"]["fqbert_folding_model"]["ratio_to_published"]["latency_ms"] < 1
        md = rp.to_markdown(doc)
        for s in ("estimate", "FQ-BERT (published)", "model of FQ-BERT's folding", "layernorm",
                  f"{rp.PUBLISHED_FQBERT['boards'][board]['dsp']:,}"):
            assert s in md, s


def test_report_user_build_stays_pending():
    doc = _fake_report(None, model="mlp")
    assert doc["resources"]["estimate"] == rp.PENDING
    assert all(doc[k] is None for k in ("latency_ms", "fps", "power_w", "fps_per_w"))
    assert "engine" not in doc and "not estimated yet" in rp.to_markdown(doc)
