"""FQ-BERT (quantize/fqbert.py): torch eval == integer reference == exported QONNX graph.

* ``FQBert`` in eval against ``fqbert_ref.reference_forward`` (numpy + codesign.sim.reference
  on ``integer_params()``): ``==`` on the logit codes and the float64 logit values.
* ``export_qonnx`` executed by qonnx's ``execute_onnx``, raw and after ``cleanup_model``:
  ``==`` on the logits; the file is byte-identical across exports.
* QAT steps (intops STE surrogates) lower the loss; eval stays == reference afterwards.
* Compression ratio from actual bit widths; ``base``/``minilm`` construct and run.
* The ``IntMatMul`` custom op (accel/custom_ops.py) against ``reference.matmul``.
"""
from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from qonnx.core.modelwrapper import ModelWrapper
from qonnx.core.onnx_exec import execute_onnx
from qonnx.custom_op import registry
from qonnx.transformation.infer_datatypes import InferDataTypes
from qonnx.util.cleanup import cleanup_model

import codesign.accel.custom_ops as co
from codesign.accel.qonnx_build import graph_model
from codesign.quantize import fqbert_ref
from codesign.quantize.export import CODES_NAME, HOST_TAG, INPUT_NAME, OUTPUT_NAME, build_qonnx, export_qonnx
from codesign.quantize.fqbert import FQBert, FQBertConfig, compression_ratio, storage_report
from codesign.quantize.fqbert_ref import reference_forward
from codesign.sim import reference as ref
from codesign.sim.reference import IntType

N_EXAMPLES = settings.default.max_examples  # single-node graphs: ~2 ms per example


# ---------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------

def make_tiny(seed: int = 0, **overrides) -> FQBert:
    """Random tiny FQ-BERT with non-trivial biases and LayerNorm affine parameters.

    ``init_std = 0.1`` (instead of BERT's 0.02) makes the attention rows far from uniform,
    so the softmax, its table and the P·V product are exercised over a wide code range.
    """
    torch.manual_seed(seed)
    m = FQBert(FQBertConfig.preset("tiny", **{"init_std": 0.1, **overrides}))
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias") or name.endswith("beta"):
                p.normal_(0.0, 0.05)
            elif name.endswith("gamma"):
                p.normal_(1.0, 0.2)
    return m


def random_ids(cfg: FQBertConfig, batch: int, seed: int, T: int | None = None) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (batch, T or cfg.max_seq), generator=g)


def calibrated_tiny(seed: int = 0) -> FQBert:
    m = make_tiny(seed)
    return m.calibrate([random_ids(m.cfg, 8, 100 + i) for i in range(4)])


@pytest.fixture(scope="module")
def tiny() -> FQBert:
    return calibrated_tiny()


def torch_eval(m: FQBert, ids, types=None):
    assert not m.training
    with torch.no_grad():
        y = m(ids, types)
    return m.logit_codes(y).numpy(), y.numpy()


# ---------------------------------------------------------------------------------------
# torch eval == integer reference
# ---------------------------------------------------------------------------------------

def test_tiny_eval_equals_reference(tiny):
    ids = random_ids(tiny.cfg, 6, 1)
    codes, values = torch_eval(tiny, ids)
    trace = {}
    rcodes, rvalues = reference_forward(tiny.integer_params(), ids.numpy(), trace=trace)
    assert rcodes.dtype == np.int64 and rcodes.shape == (6, tiny.cfg.classes)
    assert np.array_equal(codes, rcodes)
    assert values.dtype == np.float64 and np.array_equal(values, rvalues)
    assert len(np.unique(rcodes)) > 6  # the sequences give different logits
    # the datapath is not degenerate: codes spread over their types
    for name in ("embeddings", "layers.1.attn.q", "layers.1.attn.scores", "layers.1.ffn1", "layers.1.ln2"):
        assert np.ptp(trace[name]) > 150, name
    assert np.ptp(trace["layers.1.attn.probs"]) > 20
    assert trace["layers.0.gelu"].min() < 0 < trace["layers.0.gelu"].max()
    assert np.abs(trace["layers.0.res1"]).max() > 2**13  # int16 residuals use their range


def test_eval_equals_reference_token_types_and_short_sequences(tiny):
    ids = random_ids(tiny.cfg, 4, 2, T=9)
    types = torch.randint(0, tiny.cfg.type_vocab, ids.shape, generator=torch.Generator().manual_seed(3))
    codes, values = torch_eval(tiny, ids, types)
    rcodes, rvalues = reference_forward(tiny.integer_params(), ids.numpy(), types.numpy())
    assert np.array_equal(codes, rcodes) and np.array_equal(values, rvalues)


def test_reference_imports_no_torch():
    code = ("import sys, codesign.quantize.fqbert_ref\n"
            "assert not any(m == 'torch' or m.startswith('torch.') for m in sys.modules), 'torch imported'\n"
            "print('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_eval_is_deterministic_and_frozen(tiny):
    ids = random_ids(tiny.cfg, 3, 4)
    before = {n: b.clone() for n, b in tiny.named_buffers() if n.endswith("amax")}
    a, b = torch_eval(tiny, ids), torch_eval(tiny, random_ids(tiny.cfg, 5, 5))
    assert np.array_equal(torch_eval(tiny, ids)[0], a[0])
    after = {n: bf for n, bf in tiny.named_buffers() if n.endswith("amax")}
    assert all(torch.equal(before[n], after[n]) for n in before)


def test_uncalibrated_eval_refuses():
    m = make_tiny().eval()
    with pytest.raises(RuntimeError, match="calibrate"):
        m(random_ids(m.cfg, 1, 0))


def test_integer_params_are_numpy_and_fit_their_types(tiny):
    p = tiny.integer_params()
    lin = p["layers"][0]["ffn1"]
    assert lin["w"].dtype == np.int64 and lin["w"].shape == (tiny.cfg.ffn, tiny.cfg.hidden)
    assert lin["w"].min() >= -7 and lin["w"].max() <= 7          # int4, narrow
    assert lin["w_scale"].dtype == np.float32 and lin["w_scale"].shape == (tiny.cfg.ffn,)
    assert np.abs(lin["bias"]).max() < 2**31
    assert lin["M"].shape == lin["sh"].shape == (tiny.cfg.ffn,)
    assert lin["M"].min() >= 2**15 and lin["M"].max() < 2**16   # m = 16 dyadic multipliers
    ln = p["layers"][0]["ln1"]
    assert np.abs(ln["G"]).max() <= 2**15 - 1 and np.abs(ln["B"]).max() <= 2**31 - 1
    sm = p["layers"][0]["attn"]["softmax"]
    assert sm["table"].shape == (256,) and sm["table"][0] == 255
    emb = p["embeddings"]
    assert emb["word"]["codes"].shape == (tiny.cfg.vocab_size, tiny.cfg.hidden)
    assert np.abs(emb["word"]["codes"]).max() <= 7


# ---------------------------------------------------------------------------------------
# QONNX export
# ---------------------------------------------------------------------------------------

def test_export_executes_equal_to_torch(tiny, tmp_path):
    B = 3
    ids = random_ids(tiny.cfg, B, 7)
    codes, values = torch_eval(tiny, ids)
    path = tmp_path / "fqbert.onnx"
    export_qonnx(tiny, path, batch_size=B)

    model = ModelWrapper(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert ops == {"Quant", "Gather", "IntAdd", "IntLayerNorm", "IntMatMul", "Requant", "Reshape", "Transpose",
                   "IntSoftmax", "IntLUT", "Mul"}  # no float MatMul / Softmax / LayerNormalization / Erf
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.INT64
    out = execute_onnx(model, {INPUT_NAME: ids.numpy()})
    assert out[OUTPUT_NAME].dtype == np.float64
    assert np.array_equal(out[OUTPUT_NAME], values)
    assert np.array_equal(out[CODES_NAME], codes.astype(np.float64))

    clean = cleanup_model(ModelWrapper(str(path)))
    assert sum(n.domain == co.DOMAIN for n in clean.graph.node) == sum(n.domain == co.DOMAIN
                                                                      for n in model.graph.node)
    host = [n.op_type for n in clean.graph.node if n.doc_string == HOST_TAG]
    assert host == ["Quant"] * 3 + ["Gather"] * 2 + ["IntAdd"] * 2 + ["IntLayerNorm", "Gather", "IntMatMul",
                                                                    "Requant", "IntLUT", "IntMatMul", "Mul"]
    out = execute_onnx(clean, {clean.graph.input[0].name: ids.numpy()})
    y = out[clean.graph.output[0].name]
    assert np.array_equal(y, values)


def test_export_is_deterministic(tiny, tmp_path):
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    export_qonnx(tiny, a, batch_size=2)
    export_qonnx(tiny, b, batch_size=2)
    assert a.read_bytes() == b.read_bytes()
    # the same model rebuilt from the same seed and calibration gives the same file
    c = tmp_path / "c.onnx"
    export_qonnx(calibrated_tiny(), c, batch_size=2)
    assert c.read_bytes() == a.read_bytes()
    # and the graph depends on integer_params() only
    m = build_qonnx(tiny.integer_params(), batch_size=2)
    assert m.model.SerializeToString(deterministic=True) == a.read_bytes()
    onnx.checker.check_model(onnx.load(str(a)))


# ---------------------------------------------------------------------------------------
# QAT
# ---------------------------------------------------------------------------------------

def test_qat_steps_lower_the_loss_and_keep_eval_exact():
    m = make_tiny(seed=5)
    ids = random_ids(m.cfg, 16, 11)
    labels = torch.randint(0, m.cfg.classes, (16,), generator=torch.Generator().manual_seed(12))
    m.calibrate([ids])
    m.train()
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        loss = torch.nn.functional.cross_entropy(m(ids), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.8 * losses[0], losses
    assert sum(b < a for a, b in zip(losses, losses[1:])) >= 5, losses
    # every parameter receives a gradient through the integer ops' surrogates
    assert all(p.grad is not None and bool(torch.any(p.grad != 0)) for p in m.parameters())
    m.eval()
    test_ids = random_ids(m.cfg, 5, 13)
    codes, values = torch_eval(m, test_ids)
    rcodes, rvalues = reference_forward(m.integer_params(), test_ids.numpy())
    assert np.array_equal(codes, rcodes) and np.array_equal(values, rvalues)


# ---------------------------------------------------------------------------------------
# compression
# ---------------------------------------------------------------------------------------

def test_compression_ratio_tiny_from_bit_widths():
    # tiny: V=1000, H=64, 2 layers, FFN 128, T=16, 2 token types, 2 classes.
    # fp32 parameters:
    #   embeddings  1000*64 + 16*64 + 2*64 = 65152 weights, LayerNorm 2*64 = 128
    #   per layer   Q,K,V,O 4*(64*64 + 64) = 16640, FFN1 64*128 + 128 = 8320,
    #               FFN2 128*64 + 64 = 8256, 2 LayerNorms 256        -> 33472; x2 = 66944
    #   pooler 64*64 + 64 = 4160, classifier 64*2 + 2 = 130
    #   total 65152 + 128 + 66944 + 4160 + 130 = 136514 -> 32 * 136514 = 4368448 bits
    # stored:
    #   4-bit weight codes: 65152 + 2*(4*4096 + 2*8192) + 4096 + 128 = 134912  -> 539648 bits
    #   float32 weight scales: 3 tables + 2*(4*64 + 128 + 64) + 64 + 2 = 965    ->  30880 bits
    #   int32 biases: 2*(4*64 + 128 + 64) + 64 + 2 = 962                        ->  30784 bits
    #   LayerNorm G int16 + B int32: 5 LayerNorms * 64 * (16 + 32)              ->  15360 bits
    #   total 616672 bits -> 4368448 / 616672 = 7.0839...
    m = FQBert("tiny")
    assert sum(p.numel() for p in m.parameters()) == 136514
    assert sum(n * b for _, n, b in storage_report(m)) == 616672
    assert compression_ratio(m) == pytest.approx(4368448 / 616672, rel=1e-12)
    # the bit widths are the quantizers': 8-bit weights change exactly the weight term
    m8 = FQBert(FQBertConfig.preset("tiny", weight_bits=8))
    assert compression_ratio(m8) == pytest.approx(4368448 / (616672 + 4 * 134912), rel=1e-12)


# ---------------------------------------------------------------------------------------
# larger configurations
# ---------------------------------------------------------------------------------------

def _run_config(cfg: FQBertConfig, check_reference: bool) -> FQBert:
    t0 = time.perf_counter()
    torch.manual_seed(0)
    m = FQBert(cfg)
    t1 = time.perf_counter()
    ids = random_ids(cfg, 1, 21)
    m.calibrate([ids])
    t2 = time.perf_counter()
    codes, values = torch_eval(m, ids)
    t3 = time.perf_counter()
    print(f"\n{cfg.layers}x{cfg.hidden}: construct {t1 - t0:.2f} s, calibrate {t2 - t1:.2f} s, "
          f"eval forward {t3 - t2:.2f} s (B=1, T={cfg.max_seq})")
    assert values.shape == (1, cfg.classes) and np.all(np.isfinite(values))
    if check_reference:
        rcodes, rvalues = reference_forward(m.integer_params(), ids.numpy())
        assert np.array_equal(codes, rcodes) and np.array_equal(values, rvalues)
    return m


def test_base_constructs_and_runs():
    m = _run_config(FQBertConfig.preset("base"), check_reference=False)
    r = compression_ratio(m)
    print(f"BERT-base compression ratio {r:.4f}")
    # FQ-BERT reports 7.94x for BERT-base (4-bit weights, 32-bit biases and LayerNorm);
    # codesign also stores float32 per-channel weight scales (and int16 LayerNorm G)
    assert 7.85 < r < 7.94, r


def test_minilm_shaped_one_layer_equals_reference():
    m = _run_config(FQBertConfig.preset("minilm", layers=1), check_reference=True)
    assert 7.9 < compression_ratio(m) < 8.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["minilm", "base"])
def test_full_size_equals_reference(name):
    _run_config(FQBertConfig.preset(name), check_reference=True)


# ---------------------------------------------------------------------------------------
# IntMatMul custom op (accel/custom_ops.py)
# ---------------------------------------------------------------------------------------

def make_model(nodes, inputs, outputs, inits=None) -> ModelWrapper:
    """nodes: NodeProto or CodesignNode; inputs: [(name, shape[, elem])]; outputs: [(name, elem)]."""
    return graph_model(nodes, inputs, outputs, inits)


def f32_scales(lo=-12, hi=4):
    return st.builds(lambda e, m, p2: float(np.float32(2.0**e if p2 else m * 2.0**e)),
                     st.integers(lo, hi), st.floats(0.5, 1.0, exclude_max=True), st.booleans())


def codes(rng, t: IntType, shape):
    if t.bipolar:
        return rng.choice(np.array([-1, 1]), size=shape).astype(np.int64)
    q = rng.integers(t.lo, t.hi, size=shape, endpoint=True, dtype=np.int64)
    if q.size >= 2:
        q.flat[0], q.flat[-1] = t.lo, t.hi
    return q


a_types = st.one_of(st.just(IntType(1, True)),
                    st.builds(lambda b, s: IntType(b, s), st.integers(2, 8), st.booleans()))
w_types = st.one_of(st.just(IntType(1, True)),
                    st.builds(lambda b, n: IntType(b, True, n), st.integers(2, 8), st.booleans()))


def test_intmatmul_registered():
    assert "IntMatMul" in co.__all__ and co.OPS["IntMatMul"] is co.IntMatMul
    assert registry.is_custom_op(co.DOMAIN, "IntMatMul")
    assert registry._discover_custom_op_versions(co.DOMAIN, "IntMatMul") == {1: co.IntMatMul}
    node = helper.make_node("IntMatMul", ["a", "w"], ["y"], domain=co.DOMAIN)
    assert type(registry.getCustomOp(node)) is co.IntMatMul


@settings(max_examples=N_EXAMPLES)
@given(a_type=a_types, w_type=w_types, a_scale=f32_scales(), w_scale=f32_scales(),
       runtime=st.booleans(), per_channel=st.booleans(), with_bias=st.booleans(),
       K=st.integers(1, 40), N=st.integers(1, 6), rows=st.integers(1, 4), batch=st.integers(0, 2),
       seed=st.integers(0, 2**32 - 1))
def test_intmatmul_equals_reference(a_type, w_type, a_scale, w_scale, runtime, per_channel, with_bias, K, N, rows,
                                    batch, seed):
    rng = np.random.default_rng(seed)
    lead = [batch] if batch else []
    qa = codes(rng, a_type, lead + [rows, K])
    wshape = (lead + [K, N]) if runtime else [K, N]
    qw = codes(rng, w_type, wshape)
    ws = (np.float32(w_scale) * rng.choice([1.0, 0.75, 1.5], size=N)).astype(np.float32) if per_channel \
        else np.float32(w_scale)
    qb = rng.integers(-(2**31), 2**31, size=N, dtype=np.int64) if with_bias else None
    if qb is not None:
        qb[0] = -(2**31)
    inputs = [("a", lead + [rows, K])]
    if runtime:  # the weight is a graph input holding dequantized values
        node = co.make_intmatmul_node("a", "w", "acc", a_type, a_scale, w_type, ws, bias=qb)
        inputs.append(("w", wshape))
    else:
        node = co.make_intmatmul_node("a", qw, "acc", a_type, a_scale, w_type, ws, bias=qb)
        assert node.initializers["IntMatMul_acc_W"].dtype == np.int8
    model = make_model([node], inputs, [("acc", TensorProto.DOUBLE)])
    feed = {"a": ref.dequantize(qa, a_scale)}
    if runtime:
        feed["w"] = ref.dequantize(qw, ws)
    y = execute_onnx(model, feed)["acc"]
    expect = ref.matmul(qa, qw, qb, a_type=a_type, w_type=w_type)
    assert y.dtype == np.float64 and y.shape == expect.shape
    assert np.array_equal(y, expect.astype(np.float64))
    assert model.get_tensor_shape("acc") == list(expect.shape)


def test_float32_matmul_is_not_exact_but_intmatmul_is():
    """uint8 x int8, K = 4096: the accumulator needs 28 bits. A float32 MatMul on the
    (here even unscaled) values cannot represent it; IntMatMul returns it exactly."""
    K = 4096
    qa = np.full((1, K), 255, dtype=np.int64)
    qa[0, 0] = 254
    qw = np.full((K, 1), 127, dtype=np.int64)
    exact = int((qa @ qw)[0, 0])
    assert exact == 255 * 127 * K - 127 and exact % 2 == 1 and exact > 2**24
    fmodel = make_model([helper.make_node("MatMul", ["a", "W"], ["acc"])], [("a", [1, K])],
                        [("acc", TensorProto.FLOAT)], {"W": qw.astype(np.float32)})
    f = execute_onnx(fmodel, {"a": qa.astype(np.float32)})["acc"]
    assert f[0, 0] != exact  # float32 has no odd integers above 2^24
    node = co.make_intmatmul_node("a", qw, "acc", IntType(8, False), 1.0, IntType(8, True), 1.0)
    imodel = make_model([node], [("a", [1, K])], [("acc", TensorProto.DOUBLE)])
    assert execute_onnx(imodel, {"a": qa.astype(np.float32)})["acc"][0, 0] == exact


def test_intmatmul_feeds_requant_and_survives_cleanup():
    rng = np.random.default_rng(3)
    K, N, s_a = 24, 5, 0.0371
    qa = codes(rng, IntType(8, True), (2, 3, K))
    qw = codes(rng, IntType(4, True, True), (K, N))
    ws = rng.uniform(0.01, 0.05, N).astype(np.float32)
    qb = rng.integers(-500, 500, N)
    M, sh = co.requant_params(np.float64(np.float32(s_a)) * ws.astype(np.float64), np.float32(0.02))
    nodes = [co.make_intmatmul_node("x", qw, "acc", IntType(8, True), s_a, IntType(4, True, True), ws, bias=qb),
             co.make_requant_node("acc", "y", M, sh, IntType(8, True), 0.02)]
    model = make_model(nodes, [("x", [2, 3, K])], [("y", TensorProto.FLOAT)])
    model = model.transform(InferDataTypes())
    wacc = ref.acc_bits(K, IntType(8, True), IntType(4, True, True), int(qb.min()), int(qb.max()))
    assert model.get_tensor_datatype("acc").name == f"INT{wacc}"
    assert model.get_tensor_valueinfo("acc").type.tensor_type.elem_type == TensorProto.DOUBLE
    expect = ref.dequantize(ref.requant(ref.matmul(qa, qw, qb, IntType(8, True), IntType(4, True, True)),
                                        M, sh, IntType(8, True)), 0.02)
    x = ref.dequantize(qa, s_a)
    assert np.array_equal(execute_onnx(model, {"x": x})["y"], expect)
    clean = cleanup_model(model)
    assert [n.op_type for n in clean.graph.node] == ["IntMatMul", "Requant"]
    assert np.array_equal(execute_onnx(clean, {clean.graph.input[0].name: x})[clean.graph.output[0].name], expect)


def test_intmatmul_errors():
    qw = np.array([[1, -2], [3, 4]])
    node = co.make_intmatmul_node("a", qw, "acc", IntType(8, True), 0.5, IntType(4, True), [0.1, 0.2], name="mm")
    model = make_model([node], [("a", [1, 2])], [("acc", TensorProto.DOUBLE)])
    with pytest.raises(ValueError, match=r"IntMatMul node 'mm'.*not integer multiples"):
        execute_onnx(model, {"a": np.array([[0.5, 0.3]], dtype=np.float32)})
    with pytest.raises(ValueError, match=r"IntMatMul node 'mm'.*outside int8"):
        execute_onnx(model, {"a": np.array([[0.5, 64.0]], dtype=np.float32)})
    bad = helper.make_node("IntMatMul", ["a", "w"], ["y"], name="bad", domain=co.DOMAIN, a_bits=8, a_signed=1,
                           a_scale=1.0, w_bits=4, w_signed=0, w_scale=[1.0])
    assert any("signed or bipolar" in m and "'bad'" in m for m in registry.getCustomOp(bad).verify_node())
    three = co.make_intmatmul_node("a", "w", "y", IntType(8, True), 1.0, IntType(8, True), [1.0, 1.0, 1.0], name="n3")
    ctx = {"a": np.ones((1, 2), np.float32), "w": np.ones((2, 2), np.float32)}
    with pytest.raises(ValueError, match="w_scale has 3 values"):
        registry.getCustomOp(three.node).execute_node(ctx, None)
    with pytest.raises(ValueError, match="integer codes"):
        co.make_intmatmul_node("a", np.array([[0.5]]), "y", IntType(8, True), 1.0, IntType(8, True))
