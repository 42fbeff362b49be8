"""codesign's QONNX custom ops (accel/custom_ops.py, docs/qonnx_ops.md) against the reference.

Every op runs inside ONNX graphs through qonnx's ``execute_onnx``; the float output must be
exactly ``dequantize(code, out_scale)`` of the reference's integer result, and the codes
recovered from it must be ``==`` to the reference codes.
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import onnx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from qonnx.core.datatype import DataType
from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.custom_op import registry
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.transformation.infer_shapes import InferShapes
from qonnx.util.cleanup import cleanup_model

import codesign.accel.custom_ops as co
from codesign.accel.qonnx_build import graph_model
from codesign.sim import reference as ref
from codesign.sim.reference import IntType

# Single-node graphs run without onnxruntime (a few ms per example): the profile's count.
# Graphs with standard ONNX nodes open an onnxruntime session per node: half of it.
N_FAST = settings.default.max_examples
N_SLOW = max(10, settings.default.max_examples // 2)

QONNX = "qonnx.custom_op.general"


# ---------------------------------------------------------------------------------------
# graph building
# ---------------------------------------------------------------------------------------

def make_model(nodes, inputs, outputs, inits=None) -> ModelWrapper:
    """nodes: NodeProto or CodesignNode; inputs: [(name, shape[, elem])]; outputs: [name]."""
    return graph_model(nodes, inputs, outputs, inits)


def run(model: ModelWrapper, feed: dict) -> dict:
    return execute_onnx(model, feed)


def quant_node(x, y, scale, bits, signed, narrow=False, name=None):
    """A standard QONNX Quant node and its initializers."""
    name = name or f"Quant_{y}"
    inits = {f"{name}_s": np.float32(scale), f"{name}_z": np.float32(0), f"{name}_b": np.float32(bits)}
    node = helper.make_node("Quant", [x, f"{name}_s", f"{name}_z", f"{name}_b"], [y], name=name, domain=QONNX,
                            signed=int(signed), narrow=int(narrow), rounding_mode="ROUND")
    return co.CodesignNode(node, inits)


def check_output(y, codes, scale):
    """y must be exactly dequantize(codes, scale); codes recovered from y must be ==."""
    expect = ref.dequantize(codes, scale)
    assert y.dtype == np.float32
    assert y.shape == expect.shape
    assert np.array_equal(y, expect)
    assert np.array_equal(co.recover_codes(y, np.float32(scale)), codes)


# ---------------------------------------------------------------------------------------
# strategies
# ---------------------------------------------------------------------------------------

def f32_scales(lo=-12, hi=4):
    """float32 scales: powers of two and arbitrary mantissas."""
    return st.builds(lambda e, m, p2: float(np.float32(2.0**e if p2 else m * 2.0**e)),
                     st.integers(lo, hi), st.floats(0.5, 1.0, exclude_max=True), st.booleans())


def int_types(lo_bits, hi_bits, bipolar=False, narrow=True):
    def mk(bits, signed, nar):
        return IntType(bits, signed, bool(nar and narrow and bits > 1))
    t = st.builds(mk, st.integers(max(lo_bits, 2), hi_bits), st.booleans(), st.booleans())
    if lo_bits <= 1:
        t = t | st.builds(lambda s: IntType(1, s), st.just(True) if bipolar else st.booleans())
    return t


def codes(rng, t: IntType, shape, corners=True):
    if t.bipolar:
        return rng.choice(np.array([-1, 1]), size=shape).astype(np.int64)
    q = rng.integers(t.lo, t.hi, size=shape, endpoint=True, dtype=np.int64)
    if corners and q.size >= 2:
        q.flat[0], q.flat[-1] = t.lo, t.hi
    return q


# ---------------------------------------------------------------------------------------
# registration
# ---------------------------------------------------------------------------------------

def test_domain_is_the_module_path():
    assert co.DOMAIN == co.__name__ == "codesign.accel.custom_ops"
    assert set(co.OPS) == {"Requant", "IntSoftmax", "IntLayerNorm", "IntLUT", "IntAdd", "IntMatMul"}
    for op, cls in co.OPS.items():
        assert registry.is_custom_op(co.DOMAIN, op)
        assert registry.get_supported_versions(co.DOMAIN, op) == [1]
        # qonnx's lazy discovery (import the domain, look in __all__) finds the same class
        assert registry._discover_custom_op_versions(co.DOMAIN, op) == {1: cls}
        node = helper.make_node(op, ["x"], ["y"], domain=co.DOMAIN)
        assert type(registry.getCustomOp(node)) is cls
    assert dict(registry.get_ops_in_domain(co.DOMAIN)) == dict(co.OPS)


def test_fresh_process_resolves_the_domain_without_import(tmp_path):
    """qonnx imports the domain as a module: a saved model runs where codesign is installed."""
    q = np.array([[-8, -1, 0, 3, 7, 5, -3, 2]], dtype=np.int64)
    lut = co.make_lut_node("x", "y", IntType(4, True), 0.25, IntType(8, True), 0.125, function="gelu")
    m = make_model([lut], [("x", [1, 8])], ["y"])
    m.save(str(tmp_path / "m.onnx"))
    expect = ref.dequantize(ref.lut(q, lut.initializers["IntLUT_y_table"], IntType(4, True)), 0.125)
    np.save(tmp_path / "x.npy", ref.dequantize(q, 0.25))
    np.save(tmp_path / "e.npy", expect)
    code = (
        "import sys, numpy as np\n"
        "from qonnx.core.modelwrapper import ModelWrapper\n"
        "from qonnx.core.onnx_exec import execute_onnx\n"
        f"d = {str(tmp_path)!r}\n"
        "y = execute_onnx(ModelWrapper(d + '/m.onnx'), {'x': np.load(d + '/x.npy')})['y']\n"
        "assert np.array_equal(y, np.load(d + '/e.npy')), y\n"
        "assert 'codesign.accel.custom_ops' in sys.modules\n"
        "print('ok')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_verify_node():
    good = co.make_requant_node("acc", "y", [30000], [20], IntType(8, True), 0.5).node
    msgs = registry.getCustomOp(good).verify_node()
    assert msgs == ["The number of inputs is correct", "The number of outputs is correct",
                    "All necessary attributes exist and are valid"]
    bad = helper.make_node("Requant", ["acc", "M"], ["y"], name="rq", domain=co.DOMAIN, out_bits=20,
                           out_signed=1, out_scale=1.0)
    msgs = registry.getCustomOp(bad).verify_node()
    assert any("takes 3..4 inputs" in m and "'rq'" in m for m in msgs)
    assert any("out_bits=20" in m for m in msgs)


# ---------------------------------------------------------------------------------------
# one op per graph, hypothesis against the reference
# ---------------------------------------------------------------------------------------

@settings(max_examples=N_FAST)
@given(out_type=int_types(2, 16), out_scale=f32_scales(), mode=st.sampled_from(["f32", "f64", "int", "f64int"]),
       m=st.integers(2, 24), per_channel=st.booleans(), rows=st.integers(1, 3), N=st.integers(1, 6),
       wacc=st.integers(2, 48), declare=st.booleans(), acc_scale=f32_scales(-30, 6), derived=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_requant(out_type, out_scale, mode, m, per_channel, rows, N, wacc, declare, acc_scale, derived, seed):
    rng = np.random.default_rng(seed)
    wacc = min(wacc, 24 if mode == "f32" else 48, 62 - m)
    lo, hi = -(1 << (wacc - 1)), (1 << (wacc - 1)) - 1
    c = rng.integers(lo, hi, size=(rows, N), endpoint=True, dtype=np.int64)
    c.flat[0], c.flat[-1] = lo, hi
    cs = (N,) if per_channel else ()
    if derived:  # a ratio that maps the accumulator range onto about the output range
        r = (out_type.hi - out_type.lo + 1) / 2.0**wacc * rng.uniform(0.05, 4.0, size=cs)
        try:
            M, sh = ref.dyadic(r, m)
        except ValueError:  # r >= 2^m - 1/2: output scale too small for an m-bit multiplier
            assume(False)
    else:
        M = rng.integers(0, 1 << m, size=cs, dtype=np.int64)
        sh = rng.integers(0, 63, size=cs, dtype=np.int64)
    if mode == "f32":
        c = np.clip(c, -(1 << 23) + 1, (1 << 23) - 1)
        s = (np.float32(acc_scale) * rng.choice([1, 0.75, 1.25], size=cs)).astype(np.float32)
        acc = np.multiply(c.astype(np.float32), s, dtype=np.float32)
    elif mode == "f64":
        s = np.float64(acc_scale) * rng.choice([1, 0.7, 1.3], size=cs)
        acc = c.astype(np.float64) * s
    else:
        s = None
        acc = c.astype(np.float64 if mode == "f64int" else np.int64)
    node = co.make_requant_node("acc", "y", M, sh, out_type, out_scale, acc_scale=s,
                                acc_bits=wacc if declare else 0, m=m)
    elem = {np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.int64: TensorProto.INT64}
    model = make_model([node], [("acc", [rows, N], elem[acc.dtype.type])], ["y"])
    y = run(model, {"acc": acc})["y"]
    check_output(y, ref.requant(c, M, sh, out_type, m=m), out_scale)


@settings(max_examples=N_FAST)
@given(in_type=int_types(2, 8, narrow=False), in_scale=f32_scales(-8, 1), eb=st.integers(1, 16),
       ob=st.integers(1, 16), rows=st.integers(1, 4), N=st.integers(1, 40),
       table_kind=st.sampled_from(["default", "random", "omitted"]), flat_rows=st.booleans(),
       seed=st.integers(0, 2**32 - 1))
def test_softmax(in_type, in_scale, eb, ob, rows, N, table_kind, flat_rows, seed):
    rng = np.random.default_rng(seed)
    q = codes(rng, in_type, (rows, N))
    if flat_rows:
        q[0, :] = q[0, 0]
    if table_kind == "random":
        table = rng.integers(0, 1 << eb, size=1 << in_type.bits, dtype=np.int64)
        table[0] = max(table[0], 1)
    else:
        table = ref.softmax_table(in_type, np.float32(in_scale), eb)
    node = co.make_softmax_node("x", "y", in_type, in_scale, eb, ob,
                                table={"default": None, "random": table, "omitted": False}[table_kind])
    assert len(node.node.input) == (1 if table_kind == "omitted" else 2)
    model = make_model([node], [("x", [rows, N])], ["y"])
    y = run(model, {"x": ref.dequantize(q, in_scale)})["y"]
    check_output(y, ref.softmax(q, table, in_type, eb, ob), 2.0**-ob)


@settings(max_examples=N_FAST)
@given(H=st.integers(1, 48), rows=st.integers(1, 3), in_scale=f32_scales(-14, 0), out_type=int_types(2, 8),
       out_scale=f32_scales(-6, 1), small=st.booleans(), from_float=st.booleans(), S=st.integers(1, 62),
       E=st.sampled_from([0, 1, 255, (1 << 40) - 1]), seed=st.integers(0, 2**32 - 1))
def test_layernorm(H, rows, in_scale, out_type, out_scale, small, from_float, S, E, seed):
    rng = np.random.default_rng(seed)
    q = codes(rng, IntType(6 if small else 16, True), (rows, H))
    if rows > 1:
        q[1, :] = q[1, 0]  # zero variance
    if from_float:
        params = ref.layernorm_params(rng.normal(1, 0.3, H), rng.normal(0, 0.5, H), 1e-5,
                                      np.float32(in_scale), np.float32(out_scale))
    else:
        params = ref.LayerNormParams(G=rng.integers(-(2**15) + 1, 2**15, H), B=rng.integers(-(2**31) + 1, 2**31, H),
                                     S=S, E=E)
    node = co.make_layernorm_node("x", "y", in_scale, out_type, out_scale, params=params)
    model = make_model([node], [("x", [rows, H])], ["y"])
    y = run(model, {"x": ref.dequantize(q, in_scale)})["y"]
    check_output(y, ref.layernorm(q, params, out_type), out_scale)


@settings(max_examples=N_FAST)
@given(in_type=int_types(1, 8, bipolar=False), out_type=int_types(1, 16, bipolar=False),
       in_scale=f32_scales(-8, 1), out_scale=f32_scales(-10, 2),
       function=st.sampled_from([None, "gelu", "exp", "tanh", "silu", "identity"]),
       shape=st.sampled_from([(5,), (2, 7), (1, 3, 2, 2)]), seed=st.integers(0, 2**32 - 1))
def test_lut(in_type, out_type, in_scale, out_scale, function, shape, seed):
    rng = np.random.default_rng(seed)
    if function is None:
        n = 2 if in_type.bipolar else 1 << in_type.bits
        table = codes(rng, out_type, (n,), corners=False)
    else:
        try:
            table = ref.lut_table(function, in_type, np.float32(in_scale), out_type, np.float32(out_scale))
        except ValueError:  # exp overflowing the input range
            assume(False)
    q = codes(rng, IntType(in_type.bits, in_type.signed), shape)
    node = co.make_lut_node("x", "y", in_type, in_scale, out_type, out_scale, table=table, function=function)
    model = make_model([node], [("x", list(shape))], ["y"])
    y = run(model, {"x": ref.dequantize(q, in_scale)})["y"]
    check_output(y, ref.lut(q, table, in_type), out_scale)


@settings(max_examples=N_FAST)
@given(a_type=int_types(2, 16), b_type=int_types(2, 16), out_type=int_types(2, 16),
       a_scale=f32_scales(-12, 0), b_scale=f32_scales(-12, 0), out_scale=f32_scales(-12, 2),
       derived=st.booleans(), broadcast=st.booleans(), rows=st.integers(1, 3), N=st.integers(1, 8),
       seed=st.integers(0, 2**32 - 1))
def test_add(a_type, b_type, out_type, a_scale, b_scale, out_scale, derived, broadcast, rows, N, seed):
    rng = np.random.default_rng(seed)
    if derived:
        try:
            Ma, Mb, sh = ref.add_params(np.float32(a_scale), np.float32(b_scale), np.float32(out_scale))
        except ValueError:
            assume(False)
    else:
        Ma, Mb = (int(v) for v in rng.integers(0, 1 << 24, 2))
        sh = int(rng.integers(1, 63))
    qa = codes(rng, a_type, (rows, N))
    qb = codes(rng, b_type, (N,) if broadcast else (rows, N))
    node = co.make_add_node("a", "b", "y", a_type, a_scale, b_type, b_scale, out_type, out_scale,
                            *((None,) * 3 if derived else (Ma, Mb, sh)))
    model = make_model([node], [("a", [rows, N]), ("b", list(qb.shape))], ["y"])
    y = run(model, {"a": ref.dequantize(qa, a_scale), "b": ref.dequantize(qb, b_scale)})["y"]
    check_output(y, ref.add(qa, qb, Ma, Mb, sh, a_type, b_type, out_type), out_scale)


# ---------------------------------------------------------------------------------------
# graphs with standard QONNX Quant and MatMul nodes
# ---------------------------------------------------------------------------------------

@settings(max_examples=N_SLOW)
@given(in_type=int_types(1, 8, bipolar=True), scale=f32_scales(-10, 3), op=st.sampled_from(["lut", "softmax"]),
       seed=st.integers(0, 2**32 - 1))
def test_quant_output_is_accepted_at_any_scale(in_type, scale, op, seed):
    """QONNX Quant writes fl32(code * scale): the ops recover its codes exactly, for any float32 scale."""
    if op == "softmax" and in_type.bits == 1:
        in_type = IntType(2, in_type.signed)  # §5: softmax inputs have 2..8 bits
    rng = np.random.default_rng(seed)
    x = (rng.normal(0, 1, (3, 9)) * scale * 2.0**in_type.bits).astype(np.float32)
    q = ref.quantize(x, scale, in_type.bits, in_type.signed, in_type.narrow)
    if op == "lut":
        table = codes(rng, IntType(8, True), (2 if in_type.bipolar else 1 << in_type.bits,))
        node = co.make_lut_node("xq", "y", in_type, scale, IntType(8, True), 1.0, table=table)
        expect, s_y = ref.lut(q, table, in_type), 1.0
    else:
        node = co.make_softmax_node("xq", "y", in_type, scale)
        expect, s_y = ref.softmax(q, ref.softmax_table(in_type, np.float32(scale)), in_type), 2.0**-8
    model = make_model([quant_node("x", "xq", scale, in_type.bits, in_type.signed, in_type.narrow), node],
                       [("x", [3, 9])], ["y"])
    check_output(run(model, {"x": x})["y"], expect, s_y)


def ffn_model(rng, K=16, N=8, rows=3):
    """Quant (uint8) -> MatMul (int4 weights) -> Requant (per channel) -> IntLUT (GELU)."""
    s_a, s_w = 2.0**-4, 2.0**-3  # powers of two: the float32 MatMul is exact (|acc| < 2^24)
    w = codes(rng, IntType(4, True), (K, N))
    s_h = np.float32(0.05)
    M, sh = co.requant_params(np.full(N, s_a * s_w) * rng.choice([1.0, 0.5, 2.0], N), s_h)
    nodes = [
        quant_node("x", "xq", s_a, 8, False),
        helper.make_node("MatMul", ["xq", "W"], ["acc"], name="mm"),
        co.make_requant_node("acc", "h", M, sh, IntType(8, True), s_h, acc_scale=np.float32(s_a * s_w),
                             name="rq"),
        co.make_lut_node("h", "y", IntType(8, True), s_h, IntType(8, False), 0.02, function="gelu", name="gelu"),
    ]
    model = make_model(nodes, [("x", [rows, K])], ["y"], {"W": ref.dequantize(w, s_w)})

    def expect(x):
        a = ref.quantize(x, s_a, 8, False)
        h = ref.requant(ref.matmul(a, w, a_type=IntType(8, False), w_type=IntType(4, True)), M, sh, IntType(8, True))
        return ref.lut(h, nodes[3].initializers["gelu_table"], IntType(8, True))
    return model, expect


@settings(max_examples=N_SLOW)
@given(seed=st.integers(0, 2**32 - 1), K=st.integers(1, 64), N=st.integers(1, 8), rows=st.integers(1, 4))
def test_quant_matmul_requant_gelu(seed, K, N, rows):
    rng = np.random.default_rng(seed)
    model, expect = ffn_model(rng, K, N, rows)
    x = rng.normal(0, 6, (rows, K)).astype(np.float32)
    check_output(run(model, {"x": x})["y"], expect(x), 0.02)


def attention_model(rng, T=6, D=8):
    """Q·Kᵀ (int8 x int8 through Quant) -> Requant -> IntSoftmax."""
    s_q = s_k = 2.0**-5
    s_s = np.float32(0.0625)  # the 1/sqrt(D) is folded into the requant ratio
    M, sh = co.requant_params(s_q * s_k / np.sqrt(D), s_s)
    nodes = [
        quant_node("q", "qq", s_q, 8, True),
        quant_node("kt", "kq", s_k, 8, True),
        helper.make_node("MatMul", ["qq", "kq"], ["acc"], name="qk"),
        co.make_requant_node("acc", "scores", M, sh, IntType(8, True), s_s, acc_scale=np.float32(s_q * s_k),
                             name="rq"),
        co.make_softmax_node("scores", "p", IntType(8, True), s_s, name="softmax"),
    ]
    model = make_model(nodes, [("q", [T, D]), ("kt", [D, T])], ["p"])

    def expect(q, kt):
        a = ref.quantize(q, s_q, 8, True)
        b = ref.quantize(kt, s_k, 8, True)
        sc = ref.requant(ref.matmul(a, b, a_type=IntType(8, True), w_type=IntType(8, True)), M, sh, IntType(8, True))
        return ref.softmax(sc, ref.softmax_table(IntType(8, True), s_s), IntType(8, True))
    return model, expect


def residual_model():
    """IntAdd (int8 + int8 -> int16) -> IntLayerNorm -> int8."""
    s_a, s_b, s_r, s_y = 0.03, 0.05, 0.01, 0.04
    rng = np.random.default_rng(7)
    nodes = [
        co.make_add_node("a", "b", "r", IntType(8, True), s_a, IntType(8, True), s_b, IntType(16, True), s_r,
                         name="add"),
        co.make_layernorm_node("r", "y", s_r, IntType(8, True), s_y, gamma=rng.normal(1, 0.2, 16),
                               beta=rng.normal(0, 0.3, 16), eps=1e-5, name="ln"),
    ]
    model = make_model(nodes, [("a", [4, 16]), ("b", [4, 16])], ["y"])
    add = registry.getCustomOp(nodes[0].node)
    Ma, Mb, sh = (add.get_nodeattr(k) for k in ("Ma", "Mb", "sh"))
    ln = registry.getCustomOp(nodes[1].node)
    params = ref.LayerNormParams(G=nodes[1].initializers["ln_G"], B=nodes[1].initializers["ln_B"],
                                 S=ln.get_nodeattr("S"), E=ln.get_nodeattr("E"))

    def expect(qa, qb):
        r = ref.add(qa, qb, Ma, Mb, sh, IntType(8, True), IntType(8, True), IntType(16, True))
        return ref.layernorm(r, params, IntType(8, True))
    return model, expect, (s_a, s_b, s_y)


def test_attention_and_residual_graphs():
    rng = np.random.default_rng(1)
    model, expect = attention_model(rng)
    q, kt = rng.normal(0, 2, (6, 8)).astype(np.float32), rng.normal(0, 2, (8, 6)).astype(np.float32)
    check_output(run(model, {"q": q, "kt": kt})["p"], expect(q, kt), 2.0**-8)

    model, expect, (s_a, s_b, s_y) = residual_model()
    qa, qb = codes(rng, IntType(8, True), (4, 16)), codes(rng, IntType(8, True), (4, 16))
    y = run(model, {"a": ref.dequantize(qa, s_a), "b": ref.dequantize(qb, s_b)})["y"]
    check_output(y, expect(qa, qb), s_y)


def test_requant_48_bit_accumulator_through_float64_matmul():
    """An int8 x int8 MatMul with K = 2^15 on integer codes in float64: |acc| up to 2^29 (float32 would
    round), then an accumulator of 47 bits fed directly; Requant is exact on both."""
    rng = np.random.default_rng(3)
    K, N = 1 << 15, 4
    a = np.full((2, K), -128, dtype=np.int64)
    a[1] = codes(rng, IntType(8, True), (K,))
    w = np.full((K, N), -128, dtype=np.int64)
    w[:, 1:] = codes(rng, IntType(8, True), (K, N - 1))
    M, sh = co.requant_params(np.float64(2.0**-20) * np.array([1.0, 0.3, 0.7, 1.1]), 1.0)
    nodes = [helper.make_node("MatMul", ["a", "W"], ["acc"], name="mm"),
             co.make_requant_node("acc", "y", M, sh, IntType(16, True), 0.5, acc_bits=31, name="rq")]
    model = make_model(nodes, [("a", [2, K], TensorProto.DOUBLE)], ["y"], {"W": w.astype(np.float64)})
    acc = ref.matmul(a, w, a_type=IntType(8, True), w_type=IntType(8, True))
    assert np.abs(acc).max() == 1 << 29
    check_output(run(model, {"a": a.astype(np.float64)})["y"], ref.requant(acc, M, sh, IntType(16, True)), 0.5)

    c = np.array([[-(2**47), 2**47 - 1, 2**47 - 3, -(2**46) - 1]], dtype=np.int64)
    M, sh = np.array([10000, 16383, 1, 8192]), np.array([62, 50, 0, 40])  # 48 + 14 bits = 62 (§3)
    for acc_scale, feed in ((None, c.astype(np.float64)), (None, c), (2.0**-30, c * 2.0**-30),
                            (np.float64(0.3), c.astype(np.float64) * 0.3)):
        elem = TensorProto.INT64 if feed.dtype == np.int64 else TensorProto.DOUBLE
        node = co.make_requant_node("acc", "y", M, sh, IntType(16, True), 1.0, acc_scale=acc_scale, acc_bits=48,
                                    m=14)
        y = run(make_model([node], [("acc", [1, 4], elem)], ["y"]), {"acc": feed})["y"]
        check_output(y, ref.requant(c, M, sh, IntType(16, True), m=14), 1.0)


# ---------------------------------------------------------------------------------------
# qonnx transformations, cleanup, save/load, checker
# ---------------------------------------------------------------------------------------

def test_infer_datatypes():
    rng = np.random.default_rng(0)
    model, _ = ffn_model(rng)
    m = model.transform(InferDataTypes(allow_scaledint_dtypes=True))
    assert m.get_tensor_datatype("h") == DataType["SCALEDINT<8>"]  # scaled, as qonnx's Quant
    assert m.get_tensor_datatype("y") == DataType["SCALEDINT<8>"]
    m = model.transform(InferDataTypes())
    assert m.get_tensor_datatype("y") == DataType["FLOAT32"]
    # at scale 1 the codes' own type, as Quant
    for t, name in ((IntType(8, True), "INT8"), (IntType(4, False), "UINT4"), (IntType(1, True), "BIPOLAR"),
                    (IntType(1, False), "BINARY"), (IntType(16, True), "INT16")):
        node = co.make_lut_node("x", "y", IntType(2, True), 1.0, t, 1.0, table=np.array([0, 1, 1, 0]) if
                                not t.bipolar else np.array([1, -1, 1, 1]))
        m = make_model([node], [("x", [3])], ["y"]).transform(InferDataTypes())
        assert m.get_tensor_datatype("y") == DataType[name]
        x = np.array([-2, 1, 0], dtype=np.float32)  # sanitize_quant_values sees integer outputs: unchanged
        check_output(run(m, {"x": x})["y"], ref.lut(x, node.initializers["IntLUT_y_table"], IntType(2, True)), 1.0)
    node = co.make_softmax_node("x", "y", IntType(8, True), 0.1)
    m = make_model([node], [("x", [2, 3])], ["y"]).transform(InferDataTypes(allow_scaledint_dtypes=True))
    assert m.get_tensor_datatype("y") == DataType["SCALEDINT<8>"]


def test_shapes_inferred_with_broadcast():
    node = co.make_add_node("a", "b", "y", IntType(8, True), 0.5, IntType(8, True), 0.25, IntType(9, True), 0.25)
    m = make_model([node], [("a", [2, 3, 5]), ("b", [5])], ["y"])
    assert m.get_tensor_shape("y") == [2, 3, 5]
    model, _ = ffn_model(np.random.default_rng(0), K=16, N=8, rows=3)
    assert [model.get_tensor_shape(t) for t in ("acc", "h", "y")] == [[3, 8]] * 3


def _signature(model):
    return [(n.op_type, n.domain) for n in model.graph.node]


def test_cleanup_save_load_and_checker(tmp_path):
    rng = np.random.default_rng(5)
    builders = [ffn_model(rng)[0], attention_model(rng)[0], residual_model()[0]]
    for model in builders:
        feed = {i.name: rng.normal(0, 3, model.get_tensor_shape(i.name)).astype(np.float32)
                for i in model.graph.input}
        if model.graph.node[0].op_type == "IntAdd":  # inputs must be codes at the declared scales
            feed = {"a": ref.dequantize(codes(rng, IntType(8, True), (4, 16)), 0.03),
                    "b": ref.dequantize(codes(rng, IntType(8, True), (4, 16)), 0.05)}
        out = model.graph.output[0].name
        y = run(model, feed)[out]
        onnx.checker.check_model(model.model)

        clean = cleanup_model(model)
        assert [t for t in _signature(clean) if t[1] == co.DOMAIN] == \
               [t for t in _signature(model) if t[1] == co.DOMAIN]
        # cleanup renames tensors (GiveReadableTensorNames): map by position
        clean_feed = {ci.name: feed[mi.name] for ci, mi in zip(clean.graph.input, model.graph.input)}
        assert np.array_equal(run(clean, clean_feed)[clean.graph.output[0].name], y)

        path = tmp_path / f"{model.graph.node[-1].name}.onnx"
        model.save(str(path))
        loaded = ModelWrapper(str(path))
        assert _signature(loaded) == _signature(model)
        assert np.array_equal(run(loaded, feed)[out], y)
        loaded = loaded.transform(InferShapes()).transform(InferDataTypes())
        assert np.array_equal(run(loaded, feed)[out], y)


# ---------------------------------------------------------------------------------------
# errors name the node
# ---------------------------------------------------------------------------------------

def _lut_model(table, in_type=IntType(4, True), name="my_gelu"):
    node = co.make_lut_node("x", "y", in_type, 0.25, IntType(8, True), 0.5, table=table, name=name)
    return make_model([node], [("x", [4])], ["y"])


def test_non_integer_input_is_rejected():
    model = _lut_model(np.arange(16) - 8)
    x = np.array([0.25, 0.5, -2.0, 0.3], dtype=np.float32)  # 0.3 is no multiple of 0.25
    with pytest.raises(ValueError, match=r"IntLUT node 'my_gelu'.*not integer multiples of the scale.*x\[3\]"):
        run(model, {"x": x})
    x = np.array([0.25, 0.5, -2.0, np.nextafter(np.float32(0.5), np.float32(1))], dtype=np.float32)
    with pytest.raises(ValueError, match="'my_gelu'.*not integer multiples"):  # one ulp off
        run(model, {"x": x})
    with pytest.raises(ValueError, match="'my_gelu'.*NaN"):
        run(model, {"x": np.array([0, 0, 0, np.nan], dtype=np.float32)})


def test_out_of_range_codes_are_rejected():
    model = _lut_model(np.arange(16) - 8)
    with pytest.raises(ValueError, match=r"IntLUT node 'my_gelu'.*outside int4 range"):
        run(model, {"x": np.array([0, 0, 0, 2.0], dtype=np.float32)})  # code 8
    node = co.make_softmax_node("x", "p", IntType(4, False), 0.5, name="sm")
    with pytest.raises(ValueError, match=r"IntSoftmax node 'sm'.*outside uint4"):
        run(make_model([node], [("x", [3])], ["p"]), {"x": np.array([0, -0.5, 1], dtype=np.float32)})
    node = co.make_layernorm_node("x", "y", 1.0, IntType(8, True), 1.0, params=ref.LayerNormParams(
        G=np.ones(2, np.int64), B=np.zeros(2, np.int64), S=16, E=0), name="ln")
    with pytest.raises(ValueError, match=r"IntLayerNorm node 'ln'.*int16"):
        run(make_model([node], [("x", [2])], ["y"]), {"x": np.array([0, 40000], dtype=np.float32)})


def test_table_errors():
    with pytest.raises(ValueError, match=r"IntLUT node 'my_gelu'.*table has shape \(15,\).*\(16,\)"):
        run(_lut_model(np.zeros(15, np.int64)), {"x": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match=r"IntLUT node 'my_gelu'.*table\[3\] = 200 .*int8"):
        run(_lut_model(np.array([0, 1, 2, 200] + [0] * 12)), {"x": np.zeros(4, np.float32)})
    node = co.make_softmax_node("x", "p", IntType(4, True), 0.5, table=np.full(8, 255), name="sm")
    with pytest.raises(ValueError, match=r"IntSoftmax node 'sm'.*table shape \(8,\)"):
        run(make_model([node], [("x", [3])], ["p"]), {"x": np.zeros(3, np.float32)})


def test_requant_errors():
    def rq(acc, M=(40000,), sh=(20,), acc_scale=None, elem=TensorProto.FLOAT, **kw):
        node = co.make_requant_node("acc", "y", np.array(M), np.array(sh), IntType(8, True), 1.0,
                                    acc_scale=acc_scale, name="rq", **kw)
        return run(make_model([node], [("acc", list(np.shape(acc)), elem)], ["y"]), {"acc": acc})

    with pytest.raises(ValueError, match=r"Requant node 'rq'.*reach 2\^23.*float64"):
        rq(np.array([2.0**23, 1], dtype=np.float32))
    with pytest.raises(ValueError, match=r"Requant node 'rq'.*not integer multiples"):
        rq(np.array([0.5, 1], dtype=np.float32))
    with pytest.raises(ValueError, match=r"Requant node 'rq'.*not integer multiples"):
        rq(np.array([0.1, 1], dtype=np.float32), acc_scale=np.float32(0.2))
    with pytest.raises(ValueError, match=r"Requant node 'rq'.*integer tensor.*scale must be 1"):
        rq(np.array([3, 1]), acc_scale=np.float32(0.5), elem=TensorProto.INT64)
    with pytest.raises(ValueError, match=r"Requant node 'rq'.*must broadcast to the accumulator's shape"):
        rq(np.array([3, 1], dtype=np.float32), M=(1, 2, 3), sh=(1, 2, 3))
    with pytest.raises(ValueError, match=r"Requant node 'rq'.*do not fit the declared 8 bits"):
        rq(np.array([300, 1], dtype=np.float32), acc_bits=8)
    with pytest.raises(ValueError, match=r"Requant node 'rq'.*exceeds 62 bits"):
        rq(np.array([2.0**47, 1]), elem=TensorProto.DOUBLE)
    with pytest.raises(ValueError, match=r"Requant node 'rq'.*acc_bits=50"):
        rq(np.array([3, 1], dtype=np.float32), acc_bits=50)


def test_attribute_errors():
    bad = helper.make_node("IntSoftmax", ["x"], ["y"], name="sm", domain=co.DOMAIN, in_bits=8, in_scale=0.5)
    with pytest.raises(ValueError, match=r"IntSoftmax node 'sm'.*attribute 'in_signed'"):
        run(make_model([bad], [("x", [3])], ["y"]), {"x": np.zeros(3, np.float32)})
    bad = co.make_add_node("a", "b", "y", IntType(8, True), 0.5, IntType(8, True), 0.5, IntType(8, True), 0.5,
                           Ma=1 << 24, Mb=1, sh=1, name="add")
    with pytest.raises(ValueError, match=r"IntAdd node 'add'.*Ma=16777216"):
        run(make_model([bad], [("a", [3]), ("b", [3])], ["y"]), {"a": np.zeros(3, np.float32),
                                                               "b": np.zeros(3, np.float32)})


def test_recover_codes_bounds():
    """The recovery is exact up to (and rejects from) the documented limits."""
    s = np.float32(0.1)
    c = np.array([-(2**23) + 1, 2**23 - 1, 1, 0, -1, 12345], dtype=np.int64)
    assert np.array_equal(co.recover_codes(np.multiply(c.astype(np.float32), s, dtype=np.float32), s), c)
    c = np.array([-(2**51) + 1, 2**51 - 1, 2**47, -3], dtype=np.int64)
    assert np.array_equal(co.recover_codes(c.astype(np.float64) * np.float64(s), s), c)
    with pytest.raises(ValueError, match=r"reach 2\^51"):
        co.recover_codes(np.array([2.0**51]), 1.0)
    with pytest.raises(ValueError, match="not representable in float32"):
        co.recover_codes(np.zeros(2, np.float32), 0.1)
    with pytest.raises(ValueError, match=r"scale shape \(2, 3\) does not broadcast to shape \(3,\)"):
        co.recover_codes(np.zeros(3, np.float32), np.ones((2, 3), np.float32))
    with pytest.raises(ValueError, match="subnormal scale"):
        co.recover_codes(np.zeros(2, np.float32), np.float32(1e-40))
    with pytest.raises(ValueError, match="finite and > 0"):
        co.recover_codes(np.zeros(2, np.float32), np.float32(0))
