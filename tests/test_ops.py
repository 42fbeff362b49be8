"""The op registry (codesign.accel.ops): every op's faces exist, and the cost model's
pipelined-iteration formula equals the count C-simulation measures in the real kernel.

The trip formulas in accel/ops.py are derived from the loop nests (one pipelined
iteration per cycle at II = 1); csim counts CODESIGN_TRIP() calls in the kernels'
pipelined loop bodies. The two are independent: a change to a loop nest that is not
reflected in the cost model fails here.
"""
from __future__ import annotations

import inspect
import re

import numpy as np
import pytest

from codesign.accel import ops
from codesign.hls import csim
from codesign.sim import reference as R

pytestmark = pytest.mark.skipif(csim.available() is not None, reason=f"csim unavailable: {csim.available()}")

I8, U8, I4 = R.IntType(8, True), R.IntType(8, False), R.IntType(4, True)


def test_contract_sections_all_registered():
    """Every op section of docs/arithmetic.md has at least one registered op, and every op
    names an op section (the notation section §0 and the test-strategy section are not ops)."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "arithmetic.md").read_text(encoding="utf-8")
    heads = re.findall(r"^## (\d+)\. (.*)$", doc, flags=re.M)
    op_sections = {f"§{n}" for n, title in heads if n != "0" and not title.startswith("What each face")}
    assert len(op_sections) >= 10
    assert {s.section for s in ops.OPS.values()} == op_sections


@pytest.mark.parametrize("name", list(ops.OPS))
def test_faces_exist(name):
    spec = ops.OPS[name]
    ref, sim = spec.reference_fn(), spec.csim_fn()
    assert callable(ref) and callable(sim) and callable(spec.csim_ex_fn())
    # the csim wrapper takes the reference's parameters, in the same order
    ref_params = list(inspect.signature(ref).parameters)
    sim_params = [p.name for p in inspect.signature(sim).parameters.values() if p.kind != p.KEYWORD_ONLY]
    assert sim_params[: len(ref_params)] == ref_params or ref_params[: len(sim_params)] == sim_params
    text = ops.header_path(spec).read_text()
    assert re.search(rf"\b{spec.entry}\s*\(", text), f"{spec.entry} not defined in {spec.header}"
    assert spec.section in text or spec.section.replace("§", "") in text
    assert "CODESIGN_TRIP()" in text or spec.name == "xnor_popcount"


def test_resources_not_invented():
    with pytest.raises(NotImplementedError, match="engine issue"):
        ops.get_op("matmul").estimate_resources(K=8, N=8)
    with pytest.raises(ValueError, match="unknown op 'conv'"):
        ops.get_op("conv")


rng = np.random.default_rng(1)


@pytest.mark.parametrize("rows,K,N,pe,simd", [(3, 16, 8, 2, 4), (1, 12, 6, 3, 2), (4, 8, 4, 1, 1)])
def test_matmul_trips(rows, K, N, pe, simd):
    a = rng.integers(0, 256, (rows, K))
    w = rng.integers(-8, 8, (K, N))
    got, info = ops.get_op("matmul").csim_ex_fn()(a, w, None, U8, I4, pe=pe, simd=simd, block_rows=1)
    assert np.array_equal(got, R.matmul(a, w, None, U8, I4))
    assert info["trips"] == ops.get_op("matmul").trips(rows=rows, K=K, N=N, pe=pe, simd=simd)


@pytest.mark.parametrize("rows,K,N,pe,simd", [(2, 20, 6, 3, 8), (1, 64, 4, 4, 32)])
def test_binary_mvau_trips(rows, K, N, pe, simd):
    a = rng.choice([-1, 1], (rows, K))
    w = rng.choice([-1, 1], (N, K))
    got, info = ops.get_op("xnor_popcount").csim_ex_fn()(R.pack_bipolar(a), R.pack_bipolar(w), K, pe=pe, simd=simd)
    assert np.array_equal(got, a @ w.T)
    assert info["trips"] == ops.get_op("xnor_popcount").trips(rows=rows, K=K, N=N, pe=pe, simd=simd)


@pytest.mark.parametrize("rows,N", [(2, 16), (1, 5)])
def test_softmax_trips(rows, N):
    x = rng.integers(-128, 128, (rows, N))
    T = R.softmax_table(I8, 0.07)
    got, info = ops.get_op("softmax").csim_ex_fn()(x, T, I8)
    assert np.array_equal(got, R.softmax(x, T, I8))
    assert info["trips"] == ops.get_op("softmax").trips(rows=rows, N=N)


@pytest.mark.parametrize("rows,H", [(2, 24), (1, 7)])
def test_layernorm_trips(rows, H):
    x = rng.integers(-(2**15), 2**15, (rows, H))
    p = R.layernorm_params(rng.normal(1, 0.2, H), rng.normal(0, 0.2, H), 1e-5, 1e-3, 0.05)
    got, info = ops.get_op("layernorm").csim_ex_fn()(x, p, I8)
    assert np.array_equal(got, R.layernorm(x, p, I8))
    assert info["trips"] == ops.get_op("layernorm").trips(rows=rows, H=H)


def test_isqrt_trips():
    v = rng.integers(0, 2**62, 5)
    got, info = ops.get_op("isqrt").csim_ex_fn()(v)
    assert np.array_equal(got, R.isqrt(v))
    assert info["trips"] == ops.get_op("isqrt").trips(n=5)


@pytest.mark.parametrize("C,H,W,k,s,p", [(2, 6, 6, 3, 2, 1), (1, 4, 8, 2, 2, 0)])
def test_pool_trips(C, H, W, k, s, p):
    x = rng.integers(-128, 128, (1, C, H, W))
    OH, OW = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    got, info = ops.get_op("maxpool2d").csim_ex_fn()(x, k, s, p, I8)
    assert np.array_equal(got, R.maxpool2d(x, k, s, p, I8))
    assert info["trips"] == ops.get_op("maxpool2d").trips(C=C, OH=OH, OW=OW, KH=k, KW=k)
    M, sh = R.dyadic(1 / (k * k))
    got, info = ops.get_op("avgpool2d").csim_ex_fn()(x, k, int(M), int(sh), s, p, I8)
    assert np.array_equal(got, R.avgpool2d(x, k, int(M), int(sh), s, p, I8))
    assert info["trips"] == ops.get_op("avgpool2d").trips(C=C, OH=OH, OW=OW, KH=k, KW=k)


def test_threshold_trips():
    acc = rng.integers(-50, 50, (3, 4))
    T = np.sort(rng.integers(-40, 40, (4, 3)), axis=1)
    got, info = ops.get_op("threshold").csim_ex_fn()(acc, T)
    assert np.array_equal(got, R.threshold(acc, T))
    assert info["trips"] == ops.get_op("threshold").trips(n=acc.size)


def test_elementwise_trips():
    """quantize, dequantize, requant, lut, add: one element per cycle (n a multiple of the harness row)."""
    n = 4 * 8
    x = rng.normal(0, 3, n).astype(np.float32)
    cases = {
        "quantize": (x, np.float32(0.05), 8, True),
        "dequantize": (rng.integers(-128, 128, n), np.float32(0.05)),
        "requant": (rng.integers(-(2**20), 2**20, n), 40000, 20, I8),
        "lut": (rng.integers(-128, 128, n), R.lut_table("gelu", I8, 0.05, I8, 0.05), I8),
        "add": (rng.integers(-128, 128, n), rng.integers(-128, 128, n), *R.add_params(0.1, 0.03, 0.05)),
    }
    for name, args in cases.items():
        spec = ops.get_op(name)
        got, info = spec.csim_ex_fn()(*args)
        ref = spec.reference_fn()(*args)
        same = np.array_equal(got.view(np.uint32), ref.view(np.uint32)) if got.dtype == np.float32 \
            else np.array_equal(got, ref)
        assert same, name
        assert info["trips"] == spec.trips(n=n), name
