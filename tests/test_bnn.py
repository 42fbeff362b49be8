"""Bi-Real binary ResNet (codesign.quantize.bnn): STE, latent branch, QONNX export.

The exactness tests compare two independent executions: the torch eval model and qonnx's
``execute_onnx`` of the export (QONNX's numpy Quant/BipolarQuant, onnxruntime for the
standard ops). Hand-derived values are written out as literals.
"""
import hashlib

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("sklearn")

from qonnx.core.onnx_exec import execute_onnx  # noqa: E402
from qonnx.custom_op.general.bipolar_quant import binary_quant  # noqa: E402

from codesign.quantize import bnn  # noqa: E402

ALLOWED_OPS = {"Quant", "BipolarQuant", "Conv", "BatchNormalization", "Add", "Relu", "MaxPool", "AveragePool",
               "GlobalAveragePool", "Flatten", "Reshape", "MatMul", "Gemm"}


@pytest.fixture(scope="module")
def data():
    return bnn.digits()


@pytest.fixture(scope="module")
def trained(data):
    """Tiny BNN trained for 4 epochs with the latent branch (seed 0, one thread)."""
    model, acc = bnn.train_one("tiny", seed=0, latent_branch=True, epochs=4, data=data)
    return model, acc


def _run_onnx(wrapper, x: np.ndarray) -> np.ndarray:
    assert [i.name for i in wrapper.graph.input] == [bnn.INPUT_NAME]
    assert [o.name for o in wrapper.graph.output] == [bnn.OUTPUT_NAME]
    return execute_onnx(wrapper, {bnn.INPUT_NAME: x})[bnn.OUTPUT_NAME]


def _sha(path) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


# --------------------------------------------------------------------------- STE

def test_approx_sign_gradient_hand_values():
    # d/dx: 2 + 2x on [-1, 0), 2 - 2x on [0, 1), 0 elsewhere (derived by hand)
    x = torch.tensor([-3.0, -1.5, -1.0, -0.75, -0.5, -0.25, -0.0, 0.0, 0.125, 0.5, 0.75, 0.999755859375, 1.0, 2.0],
                     requires_grad=True)
    want = torch.tensor([0.0, 0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.0, 1.75, 1.0, 0.5, 0.00048828125, 0.0, 0.0])
    y = bnn.ApproxSign.apply(x)
    assert torch.equal(y.detach(), torch.tensor([-1.0] * 6 + [1.0] * 8))  # -0.0 and 0.0 -> +1
    up = torch.tensor([1.0, 2.0, 3.0, 4.0, 0.5, -2.0, 1.0, 3.0, 1.0, -1.0, 2.0, 1.0, 5.0, 1.0])
    (y * up).sum().backward()
    assert torch.equal(x.grad, want * up)


def test_approx_sign_poly_values_and_derivative():
    x = torch.tensor([-2.0, -1.0, -0.5, -0.25, 0.0, 0.25, 0.5, 1.0, 3.0], requires_grad=True)
    # 2x + x^2 on [-1, 0), 2x - x^2 on [0, 1), +-1 outside (by hand)
    want = torch.tensor([-1.0, -1.0, -0.75, -0.4375, 0.0, 0.4375, 0.75, 1.0, 1.0])
    f = bnn.approx_sign_poly(x)
    assert torch.equal(f.detach(), want)
    # autograd's derivative of the polynomial equals the STE's hand-coded backward
    g_poly, = torch.autograd.grad(f.sum(), x)
    x2 = torch.linspace(-1.5, 1.5, 301, requires_grad=True)
    g_poly2, = torch.autograd.grad(bnn.approx_sign_poly(x2).sum(), x2)
    x3 = x2.detach().clone().requires_grad_(True)
    bnn.ApproxSign.apply(x3).sum().backward()
    inside = x2.detach().abs() != 1.0  # the clamp's kink: both sides agree on 0 only away from it
    assert torch.equal(g_poly2[inside], x3.grad[inside])
    assert torch.equal(g_poly[[2, 3, 5, 6]], torch.tensor([1.0, 1.5, 1.5, 1.0]))


def test_sign_activation_train_equals_bipolar_quant_eval():
    x = torch.cat([torch.randn(1000), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 5.0, -5.0])])
    s = bnn.SignActivation()
    s.train()
    y_train = s(x)
    s.eval()
    y_eval = s(x)
    assert torch.equal(y_train, y_eval)
    assert torch.equal(y_eval, torch.where(x >= 0, 1.0, -1.0))


# --------------------------------------------------------------------------- shapes / counts

def test_tiny_parameter_count():
    m = bnn.build_bnn("tiny", 0)
    stem = 1 * 16 * 9 + 2 * 16
    stage1 = 2 * (16 * 16 * 9 + 2 * 16)
    stage2 = (16 * 32 * 9 + 2 * 32) + (16 * 32 + 2 * 32) + (32 * 32 * 9 + 2 * 32)
    fc = 32 * 10 + 10
    assert bnn.count_parameters(m) == stem + stage1 + stage2 + fc == 19706


def test_resnet18_construction_and_parameter_count():
    m = bnn.build_bnn("resnet18", 0)
    stem = 7 * 7 * 3 * 64 + 2 * 64
    convs = 0
    cin = 64
    for c in (64, 128, 256, 512):
        convs += cin * c * 9 + 3 * c * c * 9 + 4 * 2 * c   # 4 binary 3x3 convs + their BNs
        if cin != c:
            convs += cin * c + 2 * c                     # 1x1 downsample conv + BN
        cin = c
    fc = 512 * 1000 + 1000
    assert bnn.count_parameters(m) == stem + convs + fc
    assert bnn.count_parameters(m) == 11_689_512          # torchvision's ResNet-18: same layers
    n_bin = sum(isinstance(mod, bnn.BiRealBlock) for mod in m.modules())
    assert n_bin == 16
    m.eval()
    with torch.no_grad():
        assert m(torch.rand(1, 3, 224, 224)).shape == (1, 1000)


def test_resnet18_exports(tmp_path):
    m = bnn.build_bnn("resnet18", 1).eval()
    w = bnn.export_bnn(m, tmp_path / "r18.onnx")
    ops = [n.op_type for n in w.graph.node]
    assert set(ops) <= ALLOWED_OPS
    assert ops.count("Conv") == 1 + 16 + 3 and ops.count("MaxPool") == 1 and ops.count("Gemm") == 1
    # 16 binary weight quantizers + 16 sign activations
    assert ops.count("BipolarQuant") == 32


def test_unknown_config():
    with pytest.raises(ValueError, match="unknown config 'resnet50'; supported: tiny, resnet18"):
        bnn.build_bnn("resnet50")


# --------------------------------------------------------------------------- training

def test_tiny_training_accuracy(trained):
    _, acc = trained
    # measured 0.83-0.87 after 3-4 epochs, 0.93 after 15 (docs/bnn.md); a wide margin below
    assert acc > 0.6


def test_train_bnn_result_shape(data):
    r = bnn.train_bnn("tiny", latent_branch=True, seeds=(5,), epochs=1, data=data)
    assert r["config"] == "tiny" and r["seeds"] == [5] and r["epochs"] == 1
    for k in ("with_branch", "without_branch"):
        assert len(r[k]["acc"]) == 1 and r[k]["mean"] == r[k]["acc"][0] and r[k]["std"] == 0.0
        assert 0.0 <= r[k]["mean"] <= 1.0
    with pytest.raises(ValueError, match="trainable: tiny"):
        bnn.train_bnn("resnet18")


# --------------------------------------------------------------------------- export

def test_onnxruntime_batchnorm_formula():
    """The premise of BatchNorm2d's eval forward: onnxruntime's CPU BatchNormalization is
    y = x*a + c, a = gamma*(1/sqrt(var+eps)), c = beta - mean*a, each op in binary32."""
    import onnxruntime as ort
    rng = np.random.default_rng(1)
    C = 24
    x = (rng.integers(-300, 301, size=(8, C, 6, 6)) * 2.0 ** -4).astype(np.float32)
    g, b = rng.uniform(-2, 2, C).astype(np.float32), rng.uniform(-1, 1, C).astype(np.float32)
    mu, var = rng.uniform(-5, 5, C).astype(np.float32), rng.uniform(0.01, 30, C).astype(np.float32)
    node = helper.make_node("BatchNormalization", ["x", "g", "b", "m", "v"], ["y"], epsilon=1e-5)
    graph = helper.make_graph([node], "bn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(x.shape))],
                              initializer=[numpy_helper.from_array(v, n) for v, n in
                                           ((g, "g"), (b, "b"), (mu, "m"), (var, "v"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    y = sess.run(None, {"x": x})[0]
    a = g * (np.float32(1) / np.sqrt(var + np.float32(1e-5)))
    c = b - mu * a
    assert np.array_equal(y, x * a[:, None, None] + c[:, None, None])
    bn = bnn.BatchNorm2d(C).eval()
    with torch.no_grad():
        bn.weight.copy_(torch.from_numpy(g)), bn.bias.copy_(torch.from_numpy(b))
        bn.running_mean.copy_(torch.from_numpy(mu)), bn.running_var.copy_(torch.from_numpy(var))
        assert np.array_equal(bn(torch.from_numpy(x)).numpy(), y)


def test_export_equals_torch_on_digits(trained, data, tmp_path):
    """``==`` on the float32 logits of all 397 test digits: torch eval vs execute_onnx."""
    model, _ = trained
    x_te = data[2]
    w = bnn.export_bnn(model, tmp_path / "tiny.onnx", batch_size=len(x_te))
    assert set(n.op_type for n in w.graph.node) <= ALLOWED_OPS
    with torch.no_grad():
        ref = model(x_te).numpy()
    got = _run_onnx(w, x_te.numpy())
    assert got.dtype == np.float32 and got.shape == ref.shape == (397, 10)
    assert np.array_equal(got, ref)
    assert (ref.argmax(1) == data[3].numpy()).mean() > 0.6


def test_integer_ir_equals_qonnx(trained, data, tmp_path):
    """Cross-check with the compiler: the integer IR (codesign.accel.lower, BatchNorm +
    8-bit Quant lowered to thresholds, ``threshold_all=True``) run by the numpy reference
    gives the same float32 logits (``==``) as qonnx on all test digits. (The default
    lowering turns BatchNorm + 8-bit Quant into a requant with a rounded offset, which
    differs by 1 LSB on some codes: docs/bnn.md.)"""
    from codesign.accel.lower import lower
    from codesign.sim.run_ir import run_reference
    model, _ = trained
    x = data[2].numpy()
    w = bnn.export_bnn(model, tmp_path / "tiny.onnx", batch_size=len(x))
    ir = lower(str(tmp_path / "tiny.onnx"), threshold_all=True)
    got = run_reference(ir, {bnn.INPUT_NAME: x})[bnn.OUTPUT_NAME]
    assert np.array_equal(got, _run_onnx(w, x))


def test_exported_quantizers(trained, tmp_path):
    """Binary weights are sign(W) * a po2 per-channel scale; activations 1 or 8 bits, po2."""
    model, _ = trained
    w = bnn.export_bnn(model, tmp_path / "tiny.onnx")
    inits = {i.name: numpy_helper.to_array(i) for i in w.graph.initializer}
    blocks = {name: mod for name, mod in model.named_modules() if isinstance(mod, bnn.BiRealBlock)}
    seen_w, seen_a = 0, 0
    for node in w.graph.node:
        if node.op_type == "BipolarQuant":
            scale = inits[node.input[1]]
            if node.input[0] in inits:  # a weight
                wt = inits[node.input[0]]
                block = blocks[node.input[0].removesuffix(".conv.weight")]
                assert np.array_equal(wt, block.conv.weight.detach().numpy())
                C = wt.shape[0]
                assert scale.shape == (C, 1, 1, 1)
                mant, _ = np.frexp(scale)
                assert np.all(mant == 0.5)  # powers of two
                # the scale is 2^round(log2(mean|W_c|)) (computed here in float64)
                want = 2.0 ** np.round(np.log2(np.abs(wt.astype(np.float64)).reshape(C, -1).mean(1)))
                assert np.array_equal(scale.reshape(C), want.astype(np.float32))
                q = binary_quant(wt, scale)  # QONNX's own BipolarQuant execution
                assert np.array_equal(q / scale, np.where(wt >= 0, 1.0, -1.0))
                assert np.array_equal(q, block.conv.quant_weight().value.detach().numpy())
                seen_w += 1
            else:
                assert scale.size == 1 and float(scale.reshape(())) == 1.0
                seen_a += 1
        elif node.op_type == "Quant":
            scale, bits = inits[node.input[1]], inits[node.input[3]]
            mant, _ = np.frexp(scale)
            assert np.all(mant == 0.5), node.name
            assert float(bits) in (8.0, 32.0), node.name  # 32: the classifier's Int32Bias
            if float(bits) == 32.0:  # exactness premise of the Gemm (docs/bnn.md)
                codes = np.round(inits[node.input[0]] / scale)  # QONNX Quant, ROUND, power-of-two scale
                assert np.abs(codes).max() + 32 * 128 * 127 < 2 ** 24
    assert seen_w == 4 and seen_a == 4


def test_latent_branch_leaves_no_trace(trained, tmp_path):
    # fresh models, same seed, with and without the branch: same state, outputs, export
    a, b = bnn.build_bnn("tiny", 7, latent_branch=True), bnn.build_bnn("tiny", 7, latent_branch=False)
    assert isinstance(a.latent_branch, bnn.LatentBranch) and b.latent_branch is None
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        for _ in range(3):  # train mode: stats collection, batch-norm statistics
            assert torch.equal(a(x), b(x))
    a.eval(), b.eval()
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
    pa, pb = bnn.export_bnn(a, tmp_path / "a.onnx"), bnn.export_bnn(b, tmp_path / "b.onnx")
    assert _sha(tmp_path / "a.onnx") == _sha(tmp_path / "b.onnx")

    # the trained model: removing its branch changes neither the outputs nor the file
    model, _ = trained
    assert model.latent_branch is not None
    w1 = bnn.export_bnn(model, tmp_path / "with.onnx")
    with torch.no_grad():
        y1 = model(x)
    branch, model.latent_branch = model.latent_branch, None
    try:
        bnn.export_bnn(model, tmp_path / "without.onnx")
        with torch.no_grad():
            y2 = model(x)
    finally:
        model.latent_branch = branch
    assert torch.equal(y1, y2)
    assert _sha(tmp_path / "with.onnx") == _sha(tmp_path / "without.onnx")
    text = onnx.load(str(tmp_path / "with.onnx")).SerializeToString()
    assert b"latent" not in text
    assert [n.op_type for n in w1.graph.node] == [n.op_type for n in pa.graph.node] == \
        [n.op_type for n in pb.graph.node]


def test_latent_branch_runs_real_weights(data):
    """The real branch is float: its logits change continuously with the latent weights,
    and it does not update BatchNorm running statistics."""
    m = bnn.build_bnn("tiny", 0, latent_branch=True).train()
    x = data[0][:64]
    rm = m.stem_bn.running_mean.clone()
    z = m.latent_branch(m, x)
    assert z.shape == (64, 10) and torch.equal(m.stem_bn.running_mean, rm)
    with torch.no_grad():
        m.stem_conv.weight.mul_(1.0 + 1e-3)   # below the binary path's resolution, not the real one's
    z2 = m.latent_branch(m, x)
    assert not torch.equal(z2, z)
    loss = bnn.bnn_loss(m(x), z2, data[1][:64])
    loss.backward()
    assert m.stages[1].blocks[1].conv.weight.grad.abs().sum() > 0


def test_bnn_loss_definition():
    torch.manual_seed(0)
    zb, zr, y = torch.randn(5, 10), torch.randn(5, 10), torch.randint(0, 10, (5,))
    T, lam = 2.0, 0.5
    pr = torch.softmax(zr / T, 1)
    kl = (pr * (torch.log(pr) - torch.log_softmax(zb / T, 1))).sum(1).mean()
    ce = lambda z: -torch.log_softmax(z, 1)[torch.arange(5), y].mean()  # noqa: E731
    want = ce(zb) + ce(zr) + lam * T * T * kl
    got = bnn.bnn_loss(zb, zr, y, kd_weight=lam, temperature=T)
    assert torch.allclose(got, want, rtol=1e-6, atol=0)  # float losses, different op order
    assert torch.equal(bnn.bnn_loss(zb, None, y), torch.nn.functional.cross_entropy(zb, y))


def test_export_deterministic(trained, tmp_path):
    model, _ = trained
    bnn.export_bnn(model, tmp_path / "1.onnx")
    bnn.export_bnn(model, tmp_path / "2.onnx")
    assert _sha(tmp_path / "1.onnx") == _sha(tmp_path / "2.onnx")


def test_checkpoint_roundtrip(trained, data, tmp_path):
    model, _ = trained
    bnn.save_checkpoint(model, tmp_path / "m.pt", epochs=4)
    loaded = bnn.load_checkpoint(tmp_path / "m.pt")
    assert not loaded.training and loaded.latent_branch is not None
    assert bnn.load_checkpoint(tmp_path / "m.pt", latent_branch=False).latent_branch is None
    with torch.no_grad():
        assert torch.equal(loaded(data[2]), model(data[2]))
    torch.save({"format": "other"}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a codesign.quantize.bnn/1 checkpoint"):
        bnn.load_checkpoint(tmp_path / "bad.pt")
