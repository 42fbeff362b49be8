"""Block-sparse MVAUs (hls/include/codesign/sparse.h, codesign.hls.sparse) for ALCS pruning.

* the packer: a hand-derived CSR example, round trip, determinism;
* C simulation of SparseMvau / SparseConv2d == the dense numpy reference (``==``) under
  hypothesis over shapes, PE, SIMD and random block masks (all-zero row groups, fully
  dense, a single block, K % SIMD != 0, OC % PE != 0, conv stride/pad/groups/dilation);
* the counted CODESIGN_TRIP iterations == the ops registry's cycle model == (stored
  non-zero blocks + empty row groups) x vectors, the block count taken by a loop written
  here (independent of the packer);
* a weight pruned by codesign.quantize.pruning stores exactly its kept groups;
* emission: an IR with pruned layers emitted dense and via ``mark_sparse`` gives the same
  csim outputs, and the testbench's iteration count drops by exactly the skipped blocks.
"""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codesign.accel import ops
from codesign.hls import csim
from codesign.hls import sparse as S
from codesign.sim import reference as R

pytestmark = pytest.mark.skipif(csim.available() is not None, reason=f"csim unavailable: {csim.available()}")

I4, I8, U8, U4, BIP = R.IntType(4, True), R.IntType(8, True), R.IntType(8, False), R.IntType(4, False), \
    R.IntType(1, True)
SETTINGS = settings(max_examples=12, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _count_blocks(m: np.ndarray, pe: int, simd: int) -> tuple[int, int]:
    """(non-zero blocks, row groups without one) of an [OC, K] matrix, by plain loops."""
    OC, K = m.shape
    nb = ne = 0
    for r0 in range(0, OC, pe):
        row = 0
        for c0 in range(0, K, simd):
            if any(m[r, c] != 0 for r in range(r0, min(r0 + pe, OC)) for c in range(c0, min(c0 + simd, K))):
                row += 1
        nb += row
        ne += row == 0
    return nb, ne


def _apply_mask(m: np.ndarray, pe: int, simd: int, keep: np.ndarray) -> np.ndarray:
    """Zero the blocks of ``m`` ([OC, K]) where ``keep`` ((NRG, CG)) is False."""
    full = np.repeat(np.repeat(keep, pe, axis=0), simd, axis=1)[:m.shape[0], :m.shape[1]]
    return m * full


@st.composite
def _mask(draw, nrg: int, cg: int):
    kind = draw(st.sampled_from(["random", "dense", "single", "empty_rows", "none"]))
    if kind == "dense":
        return np.ones((nrg, cg), bool)
    if kind == "none":
        return np.zeros((nrg, cg), bool)
    if kind == "single":
        m = np.zeros((nrg, cg), bool)
        m[draw(st.integers(0, nrg - 1)), draw(st.integers(0, cg - 1))] = True
        return m
    bits = draw(st.lists(st.booleans(), min_size=nrg * cg, max_size=nrg * cg))
    m = np.array(bits, bool).reshape(nrg, cg)
    if kind == "empty_rows":
        m[draw(st.integers(0, nrg - 1))] = False
    return m


def _nonzero_codes(rng, t: R.IntType, shape) -> np.ndarray:
    """Codes of ``t`` without 0, so that a kept block is never all-zero by chance."""
    v = rng.integers(t.lo, t.hi + 1, shape)
    v[v == 0] = t.hi
    return v


def _codes(rng, t: R.IntType, shape) -> np.ndarray:
    if t.bipolar:
        return rng.choice([-1, 1], shape)
    return rng.integers(t.lo, t.hi + 1, shape)


# ---------------------------------------------------------------------------------------
# packer
# ---------------------------------------------------------------------------------------

def test_pack_hand_example():
    """OC = 3, K = 5, PE = 2, SIMD = 2: row groups {0,1}, {2}; column groups {0,1}, {2,3}, {4}."""
    W = np.array([[0, 0, 3, 0, 0],
                  [0, 0, 0, -1, 5],
                  [0, 0, 0, 0, 0]])
    sw = S.pack_sparse(W, 2, 2)
    assert sw.row_ptr.tolist() == [0, 2, 2]
    assert sw.col_idx.tolist() == [1, 2]
    assert sw.vals.tolist() == [[[3, 0], [0, -1]], [[0, 0], [5, 0]]]
    assert (sw.nb, sw.empty_row_groups, sw.iterations_per_vector) == (2, 1, 3)
    assert sw.density == 2 / 6
    assert S.block_mask(W, 2, 2).tolist() == [[False, True, True], [False, False, False]]
    # cycle model: 2 stored blocks + 1 bias-only iteration for the empty row group, per vector
    assert S.sparse_trips(sw.row_ptr, 7) == 7 * 3
    assert S.sparse_cycles(sw, 7, depth=5) == 7 * 3 + 5
    assert S.pipeline_depth(2, 3) == 3 + 3 + 1


@given(oc=st.integers(1, 9), k=st.integers(1, 13), pe=st.integers(1, 4), simd=st.integers(1, 6),
       seed=st.integers(0, 2**31))
@settings(max_examples=40, deadline=None, derandomize=True)
def test_pack_roundtrip(oc, k, pe, simd, seed):
    rng = np.random.default_rng(seed)
    m = rng.integers(-3, 4, (oc, k)) * (rng.random((oc, k)) < 0.3)
    sw = S.pack_sparse(m, pe, simd)
    assert np.array_equal(sw.to_dense(), m)
    assert (sw.nb, sw.empty_row_groups) == _count_blocks(m, pe, simd)
    again = S.pack_sparse(m.copy(), pe, simd)
    for a, b in ((sw.row_ptr, again.row_ptr), (sw.col_idx, again.col_idx), (sw.vals, again.vals)):
        assert np.array_equal(a, b)
    for rg in range(sw.row_groups):  # column groups strictly increasing within a row group
        assert np.all(np.diff(sw.col_idx[sw.row_ptr[rg]:sw.row_ptr[rg + 1]]) > 0)


def test_pack_errors():
    with pytest.raises(ValueError, match="pe=0 must be a positive integer"):
        S.pack_sparse(np.ones((2, 2), int), 0, 1)
    with pytest.raises(ValueError, match="no \\[OC, K\\] matrix view"):
        S.pack_sparse(np.ones(4, int), 1, 1)
    with pytest.raises(ValueError, match="bipolar weight has no 0"):
        S.sparse_matmul(np.ones((1, 2), int), np.ones((2, 2), int), None, U8, BIP)
    with pytest.raises(ValueError, match="pe=3 must be <= OC/groups=2"):
        S.sparse_conv2d(np.zeros((1, 2, 3, 3), int), np.zeros((4, 1, 1, 1), int), groups=2, pe=3)


# ---------------------------------------------------------------------------------------
# C simulation == dense reference, trips == model
# ---------------------------------------------------------------------------------------

@given(data=st.data(), k=st.integers(1, 20), n=st.integers(1, 9), rows=st.integers(1, 4),
       types=st.sampled_from([(U8, I4), (I8, I8), (BIP, I4), (U4, R.IntType(2, True))]),
       bias=st.booleans(), seed=st.integers(0, 2**31))
@SETTINGS
def test_sparse_matmul_csim(data, k, n, rows, types, bias, seed):
    at, wt = types
    pe = data.draw(st.integers(1, n), label="pe")
    simd = data.draw(st.integers(1, min(k, 8)), label="simd")
    nrg, cg = -(-n // pe), -(-k // simd)
    keep = data.draw(_mask(nrg, cg), label="mask")
    rng = np.random.default_rng(seed)
    W = _apply_mask(_nonzero_codes(rng, wt, (n, k)), pe, simd, keep)  # [OC = N, K]
    w = W.T                                                             # the op's (K, N)
    a = _codes(rng, at, (rows, k))
    b = rng.integers(-(2**20), 2**20, n) if bias else None
    got, info = S.sparse_matmul_ex(a, w, b, at, wt, pe=pe, simd=simd, block_rows=1)
    assert np.array_equal(got, R.matmul(a, w, b, at, wt))
    nb, ne = _count_blocks(W, pe, simd)
    assert nb == int(keep.sum()) and ne == int((~keep.any(axis=1)).sum())
    assert info["trips"] == rows * (nb + ne)
    assert info["trips"] == ops.get_op("sparse_matmul").trips(row_ptr=S.pack_sparse(W, pe, simd).row_ptr,
                                                              vectors=rows)
    # the dense MVAU would run rows * NRG * CG: every pruned block of a non-empty row group is skipped
    pruned = nrg * cg - nb
    assert rows * nrg * cg - info["trips"] == rows * (pruned - ne)


def test_sparse_matmul_batch_blocks():
    """Rows not a multiple of block_rows: the padded rows of the last block are computed and dropped."""
    rng = np.random.default_rng(3)
    w = rng.integers(-8, 8, (12, 6)) * (rng.random((12, 6)) < 0.4)
    a = rng.integers(0, 256, (2, 5, 12))
    got, info = S.sparse_matmul_ex(a, w, None, U8, I4, pe=2, simd=4, block_rows=4)
    assert np.array_equal(got, R.matmul(a, w, None, U8, I4))
    nb, ne = _count_blocks(w.T, 2, 4)
    assert info["trips"] == 12 * (nb + ne)  # 10 rows in blocks of 4 -> 12 rows run


@st.composite
def _conv_case(draw):
    g = draw(st.sampled_from([1, 1, 2, 3]))
    icg, ocg = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    pads = draw(st.lists(st.integers(0, 2), min_size=4, max_size=4))
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    H = draw(st.integers(max(1, eh - pads[0] - pads[2]), 6))
    W = draw(st.integers(max(1, ew - pads[1] - pads[3]), 6))
    pe = draw(st.sampled_from([d for d in range(1, ocg + 1) if g == 1 or ocg % d == 0]))
    K = icg * kh * kw
    simd = draw(st.integers(1, min(K, 8)))
    return g, icg, ocg, kh, kw, (sh, sw), (dh, dw), pads, H, W, pe, simd


@given(case=_conv_case(), data=st.data(), types=st.sampled_from([(U8, I4), (BIP, I4), (I8, R.IntType(3, True))]),
       bias=st.booleans(), images=st.integers(1, 2), seed=st.integers(0, 2**31))
@SETTINGS
def test_sparse_conv2d_csim(case, data, types, bias, images, seed):
    g, icg, ocg, kh, kw, stride, dil, pads, H, W, pe, simd = case
    xt, wt = types
    IC, OC, K = g * icg, g * ocg, icg * kh * kw
    nrg, cg = -(-OC // pe), -(-K // simd)
    keep = data.draw(_mask(nrg, cg), label="mask")
    rng = np.random.default_rng(seed)
    Wm = _apply_mask(_nonzero_codes(rng, wt, (OC, K)), pe, simd, keep)
    w = Wm.reshape(OC, icg, kh, kw)
    x = _codes(rng, xt, (images, IC, H, W))
    b = rng.integers(-1000, 1000, OC) if bias else None
    got, info = S.sparse_conv2d_ex(x, w, b, stride, pads, dil, g, xt, wt, pe=pe, simd=simd)
    want = R.conv2d(x, w, b, stride, pads, dil, g, xt, wt)
    assert np.array_equal(got, want)
    OH, OW = want.shape[2:]
    nb, ne = _count_blocks(Wm, pe, simd)
    assert nb == int(keep.sum())
    pixels = images * OH * OW
    assert info["trips"] == pixels * (nb + ne)
    assert info["trips"] == ops.get_op("sparse_conv2d").trips(row_ptr=S.pack_sparse(w, pe, simd).row_ptr,
                                                              vectors=pixels)
    # window generator: its line-buffer loads plus one chunk per schedule iteration
    eh = dil[0] * (kh - 1) + 1
    h_used = min(max((OH - 1) * stride[0] - pads[0] + eh, 0), H)
    assert info["swg_trips"] == images * (h_used * IC * W + OH * OW * (nb + ne))


@pytest.mark.parametrize("name,args,kw", [
    ("depthwise", dict(g=4, icg=1, ocg=1, k=(3, 3), stride=1, pad=1, dil=1), dict(pe=1, simd=4)),
    ("k_not_multiple", dict(g=1, icg=3, ocg=5, k=(3, 3), stride=2, pad=(0, 1, 1, 0), dil=1), dict(pe=2, simd=4)),
    ("dilated_groups", dict(g=2, icg=2, ocg=4, k=(2, 3), stride=(1, 2), pad=(2, 1, 0, 1), dil=(2, 1)),
     dict(pe=2, simd=3)),
])
def test_sparse_conv2d_named(name, args, kw):
    rng = np.random.default_rng(7)
    g, icg, ocg = args["g"], args["icg"], args["ocg"]
    kh, kw_ = args["k"]
    OC, K = g * ocg, icg * kh * kw_
    pe, simd = kw["pe"], kw["simd"]
    keep = rng.random((-(-OC // pe), -(-K // simd))) < 0.5
    keep[0] = False  # an empty row group: bias only
    Wm = _apply_mask(_nonzero_codes(rng, I4, (OC, K)), pe, simd, keep)
    w = Wm.reshape(OC, icg, kh, kw_)
    x = rng.integers(0, 256, (1, g * icg, 7, 6))
    b = rng.integers(-500, 500, OC)
    got, info = S.sparse_conv2d_ex(x, w, b, args["stride"], args["pad"], args["dil"], g, U8, I4, **kw)
    want = R.conv2d(x, w, b, args["stride"], args["pad"], args["dil"], g, U8, I4)
    assert np.array_equal(got, want)
    assert np.all(want[:, :pe] == b[:pe, None, None])  # the empty row group's outputs are its bias
    nb, ne = _count_blocks(Wm, pe, simd)
    assert ne >= 1 and info["trips"] == want.shape[2] * want.shape[3] * (nb + ne)


def test_registry_faces():
    for name, dense in (("sparse_matmul", "matmul"), ("sparse_conv2d", "conv2d")):
        spec = ops.get_op(name)
        assert spec.reference == ops.get_op(dense).reference  # the arithmetic is the dense op's
        assert spec.section == ops.get_op(dense).section
        assert spec.csim_fn() is getattr(S, name) and spec.csim_ex_fn() is getattr(S, name + "_ex")
    with pytest.raises(ValueError, match="row_ptr must rise from 0"):
        ops.get_op("sparse_matmul").trips(row_ptr=[0, 2, 1], vectors=1)


# ---------------------------------------------------------------------------------------
# ALCS pruning -> stored blocks
# ---------------------------------------------------------------------------------------

def test_pruned_weights_store_exactly_the_kept_groups():
    """Group masks from project_latency, expanded with group_mask_to_weight, applied to a
    weight without zeros: the packer stores exactly the kept groups, and the kernel's
    iterations per vector are the kept groups plus the fully pruned row groups."""
    from codesign.quantize.pruning import GroupSpec, PiecewiseLinear, group_mask_to_weight, group_norms, \
        project_latency

    rng = np.random.default_rng(11)
    shapes = {"fc": ((10, 13), 3, 4), "conv": ((6, 2, 3, 3), 2, 5)}  # weight shape, pe, simd
    specs = {n: GroupSpec(n, s[0], int(np.prod(s[1:])), pe, simd) for n, (s, pe, simd) in shapes.items()}
    weights = {n: _nonzero_codes(rng, I4, s) for n, (s, _, _) in shapes.items()}
    models = {n: PiecewiseLinear((0.0, 1.0), (10.0, 10.0 + sp.n_groups)) for n, sp in specs.items()}
    norms = {n: group_norms(specs[n], weights[n]) for n in specs}
    budget = sum(10.0 + 0.4 * sp.n_groups for sp in specs.values())
    gm = project_latency(specs, models, norms, budget)
    for n, (shape, pe, simd) in shapes.items():
        kept = int(gm[n].sum())
        assert 0 < kept < specs[n].n_groups
        pruned = weights[n] * group_mask_to_weight(specs[n], gm[n], shape)
        if n == "fc":  # torch Linear [out, in]; the IR matmul weight is its transpose (K, N)
            w_ir = pruned.T
            sw = S.pack_sparse(w_ir.T, pe, simd)
        else:
            sw = S.pack_sparse(pruned, pe, simd)
        assert sw.nb == kept
        assert np.array_equal(S.block_mask(pruned, pe, simd), gm[n])
        assert sw.iterations_per_vector == kept + int((~gm[n].any(axis=1)).sum())
    # and the kernel agrees on the pruned Linear
    pruned = weights["fc"] * group_mask_to_weight(specs["fc"], gm["fc"], (10, 13))
    a = rng.integers(0, 256, (3, 13))
    got, info = S.sparse_matmul_ex(a, pruned.T, None, U8, I4, pe=3, simd=4, block_rows=1)
    assert np.array_equal(got, R.matmul(a, pruned.T, None, U8, I4))
    assert info["trips"] == 3 * (int(gm["fc"].sum()) + int((~gm["fc"].any(axis=1)).sum()))


# ---------------------------------------------------------------------------------------
# IR attribute, mark_sparse, emission
# ---------------------------------------------------------------------------------------

def _pruned_ir(seed: int = 5):
    """quantize (uint8) -> conv2d 3x3 pad 1 (8 -> 6 ch, bias, pruned in 2x4 blocks) -> requant
    -> flatten -> matmul (pruned in 2x4 blocks, bias) -> dequantize."""
    from codesign.accel.ir import IR, Boundary, CodeType, Constant, Op, Scale, Tensor, validate

    rng = np.random.default_rng(seed)
    ct = lambda b, s: CodeType(b, s, False)  # noqa: E731
    s_x, s_w = 2.0**-6, 2.0**-3
    IC, OC, H, W = 3, 6, 5, 4
    K = IC * 9
    wc = _nonzero_codes(rng, I4, (OC, K))
    keep_c = rng.random((3, -(-K // 4))) < 0.45
    keep_c[0, :] = False                       # output channels 0, 1 pruned entirely
    wc = _apply_mask(wc, 2, 4, keep_c).reshape(OC, IC, 3, 3)
    F = OC * H * W
    N = 5
    wm = _nonzero_codes(rng, I4, (N, F))
    keep_m = rng.random((-(-N // 2), -(-F // 4))) < 0.3
    wm = _apply_mask(wm, 2, 4, keep_m).T       # (K, N) = (F, N)
    bc = rng.integers(-300, 300, OC)
    bm = rng.integers(-300, 300, N)
    acc_c = R.acc_bits(K, U8, I4, int(bc.min()), int(bc.max()))
    acc_m = R.acc_bits(F, I8, I4, int(bm.min()), int(bm.max()))
    M, sh = R.dyadic(s_x * s_w / 2.0**-4)
    t = {
        "in_x": Tensor((1, IC, H, W), "float"),
        "quantize_0_out": Tensor((1, IC, H, W), "code", ct(8, False), scale=Scale.scalar(s_x)),
        "conv2d_0_out": Tensor((1, OC, H, W), "acc", acc_bits=acc_c, scale=Scale.scalar(s_x * s_w)),
        "requant_0_out": Tensor((1, OC, H, W), "code", ct(8, True), scale=Scale.scalar(2.0**-4)),
        "flatten_0_out": Tensor((1, F), "code", ct(8, True), scale=Scale.scalar(2.0**-4)),
        "matmul_0_out": Tensor((1, N), "acc", acc_bits=acc_m, scale=Scale.scalar(2.0**-4 * s_w)),
        "out_y": Tensor((1, N), "float"),
    }
    c = {
        "conv2d_0_w": Constant(ct(4, True), wc), "conv2d_0_bias": Constant(ct(32, True), bc),
        "requant_0_m": Constant(ct(24, False), np.array(int(M))), "requant_0_sh": Constant(ct(8, False), np.array(int(sh))),
        "matmul_0_w": Constant(ct(4, True), wm), "matmul_0_bias": Constant(ct(32, True), bm),
    }
    ops_ = [
        Op("quantize_0", "quantize", ["in_x"], ["quantize_0_out"],
           {"scale": s_x, "bits": 8, "signed": False, "narrow": False, "rounding": "ROUND"}, "host"),
        Op("conv2d_0", "conv2d", ["quantize_0_out", "conv2d_0_w", "conv2d_0_bias"], ["conv2d_0_out"],
           {"stride": [1, 1], "pad": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1,
            "x_type": ct(8, False).to_json(), "w_type": ct(4, True).to_json(), "acc_bits": acc_c}),
        Op("requant_0", "requant", ["conv2d_0_out", "requant_0_m", "requant_0_sh"], ["requant_0_out"],
           {"out_type": ct(8, True).to_json(), "acc_bits_max": acc_c, "m": 24}),
        Op("flatten_0", "flatten", ["requant_0_out"], ["flatten_0_out"], {"axis": 1}),
        Op("matmul_0", "matmul", ["flatten_0_out", "matmul_0_w", "matmul_0_bias"], ["matmul_0_out"],
           {"a_type": ct(8, True).to_json(), "w_type": ct(4, True).to_json(), "acc_bits": acc_m}),
        Op("dequantize_0", "dequantize", ["matmul_0_out"], ["out_y"], {"scale": 2.0**-4 * s_w}, "host"),
    ]
    ir = validate(IR("pruned", [Boundary("in_x", "x")], [Boundary("out_y", "y")], t, c, ops_))
    return ir, (wc, 2, 4, H * W), (wm, 2, 4, 1)


_PROBE = r"""
#include <cstdio>
#include "codesign/types.h"
namespace {
struct TripProbe {  // prints the kernels' CODESIGN_TRIP() count when the testbench exits
    ~TripProbe() { std::fprintf(stderr, "TRIPS %llu\n", ::codesign::csim_trips()); }
} trip_probe;
}
"""


def _project_trips(project) -> int:
    """Compile the emitted testbench with a probe that reports csim_trips() at exit; run it."""
    (project / "trip_probe.cc").write_text(_PROBE)
    exe = project / "tb_trips"
    cmd = [*csim.compiler(), csim.CXX_STD, *csim.OPT_FLAGS, "-isystem", str(csim.ap_types_dir()), "-I",
           str(project / "include"), "-I", str(project), str(project / "tb.cpp"), str(project / "codesign_top.cpp"),
           str(project / "trip_probe.cc"), "-o", str(exe)]
    subprocess.run(cmd, check=True, capture_output=True)
    r = subprocess.run([str(exe)], cwd=project, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "RESULT cases=" in r.stdout and "mismatches=0" in r.stdout
    return int(r.stderr.split("TRIPS ")[1].split()[0])


def test_ir_sparse_attr_validation():
    import dataclasses

    from codesign.accel.ir import IRError, validate

    ir, _, _ = _pruned_ir()

    def with_attr(name, value):
        ops_ = [dataclasses.replace(o, attrs={**o.attrs, "sparse": value}) if o.name == name else o for o in ir.ops]
        return dataclasses.replace(ir, ops=ops_)

    validate(with_attr("matmul_0", {"pe": 5, "simd": 3}))
    with pytest.raises(IRError, match=r"op 'matmul_0' \(matmul\): attribute 'sparse'=.*must be"):
        validate(with_attr("matmul_0", {"pe": 0, "simd": 3}))
    with pytest.raises(IRError, match=r"sparse pe=6 needs a 2-D weight \(K, N\) with pe <= N"):
        validate(with_attr("matmul_0", {"pe": 6, "simd": 3}))
    with pytest.raises(IRError, match=r"op 'conv2d_0' \(conv2d\): sparse pe=7 must be <= OC/groups"):
        validate(with_attr("conv2d_0", {"pe": 7, "simd": 1}))
    with pytest.raises(IRError, match=r"op 'requant_0' \(requant\): attribute 'sparse' is only supported"):
        validate(with_attr("requant_0", {"pe": 1, "simd": 1}))
    renamed = [dataclasses.replace(o, op="sparse_matmul") if o.name == "matmul_0" else o for o in ir.ops]
    with pytest.raises(IRError, match="is not an IR op: mark a matmul with attrs"):
        validate(dataclasses.replace(ir, ops=renamed))


def test_mark_sparse():
    from codesign.accel.passes import mark_sparse

    ir, (wc, pe, simd, _), (wm, _, _, _) = _pruned_ir()
    dc = float(S.block_mask(wc, pe, simd).mean())
    dm = float(S.block_mask(wm.T, pe, simd).mean())
    assert dm < dc < 0.75
    marked = mark_sparse(ir, pe, simd)
    assert {o.name: o.attrs.get("sparse") for o in marked.ops if o.op in ("matmul", "conv2d")} == \
        {"conv2d_0": {"pe": 2, "simd": 4}, "matmul_0": {"pe": 2, "simd": 4}}
    assert all("sparse" not in o.attrs for o in ir.ops)  # the input is not modified
    only_m = mark_sparse(ir, pe, simd, max_density=(dm + dc) / 2)
    assert [o.name for o in only_m.ops if "sparse" in o.attrs] == ["matmul_0"]
    assert [o.name for o in mark_sparse(ir, pe, simd, max_density=0.0).ops if "sparse" in o.attrs] == []
    assert any(n.startswith("matmul_0: sparse MVAU") for n in only_m.notes)
    with pytest.raises(ValueError, match="max_density=2 must lie in"):
        mark_sparse(ir, pe, simd, max_density=2)


def test_emit_sparse_equals_dense(tmp_path):
    """The same pruned IR emitted dense (PE = SIMD = 1) and sparse: both testbenches pass
    against the same golden outputs, and the sparse project's iterations are smaller by
    exactly what the cycle model predicts for each MVAU."""
    from codesign.accel.boards import get_board
    from codesign.accel.passes import mark_sparse
    from codesign.hls.emit import emit_project, run_project_csim

    ir, (wc, pe, simd, pix_c), (wm, _, _, pix_m) = _pruned_ir()
    cases = 6
    x = {"x": np.random.default_rng(2).normal(0, 1.5, (cases, 3, 5, 4)).astype(np.float32)}
    board = get_board("zcu102")
    trips = {}
    for label, block in (("dense", None), ("sparse_2x4", (2, 4)), ("sparse_1x1", (1, 1))):
        r = ir if block is None else mark_sparse(ir, *block, max_density=1.0)
        d = emit_project(r, tmp_path / label, board, 200.0, x)
        src = (d / "codesign_top.cpp").read_text()
        assert ("SparseMvau<" in src and "SparseConv2d<" in src) == (block is not None)
        rep = run_project_csim(d, jobs=1)
        assert rep.passed and rep.cases == cases, rep.log
        trips[label] = _project_trips(d)
    Wc, Wm = wc.reshape(wc.shape[0], -1), wm.T
    OC, K = Wc.shape
    N, F = Wm.shape
    # dense (PE = SIMD = 1): one iteration per weight and pixel
    dense_mvau = cases * (pix_c * OC * K + pix_m * N * F)
    for label, (p, s) in (("sparse_2x4", (2, 4)), ("sparse_1x1", (1, 1))):
        (nbc, nec), (nbm, nem) = _count_blocks(Wc, p, s), _count_blocks(Wm, p, s)
        sparse_mvau = cases * (pix_c * (nbc + nec) + pix_m * (nbm + nem))
        assert trips["dense"] - trips[label] == dense_mvau - sparse_mvau, label
    # 1x1 blocks are single weights: the saving is exactly the zero weights x pixels, less one
    # bias-only iteration per output channel with no non-zero weight
    zc, zm = int((Wc == 0).sum()), int((Wm == 0).sum())
    ec, em = int((~Wc.any(axis=1)).sum()), int((~Wm.any(axis=1)).sum())
    assert ec == 2 and em == 0
    assert trips["dense"] - trips["sparse_1x1"] == cases * (pix_c * (zc - ec) + pix_m * (zm - em))


def test_dataflow_model_of_marked_ir():
    """``map_ir`` of a ``mark_sparse``d IR: each pruned layer carries its blocks (counted by
    this file's own loop), the search folds it as its blocks, and its cycles are
    ``V·max(SF, nb + ne)`` (mvau_sparse.v; the HLS kernel's trips are ``V·(nb + ne)``)."""
    from codesign.accel import dataflow as D
    from codesign.accel.dataflow_ir import map_ir
    from codesign.accel.passes import mark_sparse

    ir, (wc, pe, simd, pix_c), (wm, _, _, pix_m) = _pruned_ir()
    dense = {m.op: m.layer for m in map_ir(ir).layers}
    mapped = {m.op: m.layer for m in map_ir(mark_sparse(ir, pe, simd)).layers}
    assert set(mapped) == {"conv2d_0", "matmul_0"} and all(L.sparse is None for L in dense.values())
    for name, m, pix in (("conv2d_0", wc.reshape(wc.shape[0], -1), pix_c), ("matmul_0", wm.T, pix_m)):
        L = mapped[name]
        nb, ne = _count_blocks(m, pe, simd)
        assert (L.sparse.pe, L.sparse.simd, L.sparse.nb, L.sparse.ne) == (pe, simd, nb, ne)
        assert D.candidates(L) == [(pe, simd)]
        SF = -(-m.shape[1] // simd)
        assert int(D.layer_cycles(L, pe, simd)) == pix * max(SF, nb + ne)
        assert int(D.layer_cycles(L, pe, simd)) < int(D.layer_cycles(dense[name], pe, simd))
        with pytest.raises(ValueError, match="folded as its blocks"):
            D.layer_cycles(L, 1, 1)
        r_s, r_d = D.mvau_resources(L, pe, simd, parts=True), D.mvau_resources(dense[name], pe, simd, parts=True)
        assert r_s["weights"].bram18 + r_s["weights"].lut <= r_d["weights"].bram18 + r_d["weights"].lut
    res = D.search([mapped["conv2d_0"], mapped["matmul_0"]], "zcu102")
    assert res.folding == [(pe, simd), (pe, simd)]
