"""codesign.quantize.intops (torch functional layer, FQ-BERT QAT) against the numpy
reference codesign.sim.reference: forward codes ``==`` on the same integer inputs,
backward equal to the documented straight-through surrogates, and a tiny QAT run.

Forward: inputs are integer codes drawn here, dequantized as ``code · scale`` in
float32 or float64, fed to the torch op; the output codes ``rint(out / out_scale)``
must equal the reference's codes. Backward: ``torch.autograd.gradcheck`` checks each
hand-written surrogate gradient against the float function it claims to be the
derivative of, and small hand-computed cases check what the integer ops return.
"""
import math
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import assume, example, given
from hypothesis import strategies as st

from codesign.quantize import intops as io
from codesign.sim import reference as ref
from codesign.sim.reference import IntType

F32, F64 = torch.float32, torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tensors here are tiny; torch's intra-op threads only contend with the
    other pytest-xdist worker (2 cores: a QAT step went from 2 ms to 30 ms)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

dtypes = st.sampled_from([F32, F64])


def deq(q, s, dtype=F64):
    """Dequantized values made here: dtype(code) · dtype(scale)."""
    return torch.as_tensor(np.asarray(q)).to(dtype) * torch.as_tensor(np.asarray(s, dtype=np.float64)).to(dtype)


def out_codes(y: torch.Tensor, s) -> np.ndarray:
    """rint(out / out_scale), checking that out is on the grid (a float32 output of a
    16-bit code at a scale that is not a float32 number is off by up to 2^-8 of a code)."""
    t = y.detach().double() / torch.as_tensor(np.asarray(s, dtype=np.float64))
    r = torch.round(t)
    assert torch.all((t - r).abs() < 2.0**-4)
    return r.long().numpy()


def rng_codes(rng, lo, hi, shape, p_edge=0.2):
    """Uniform codes with a share of the extremes lo/hi (saturation and most-negative cases)."""
    u = rng.integers(lo, hi + 1, size=shape)
    return np.where(rng.random(shape) < p_edge, rng.choice(np.array([lo, hi]), size=shape), u)


def tcodes(rng, t: IntType, shape):
    if t.bipolar:
        return rng.choice(np.array([-1, 1]), size=shape)
    return rng_codes(rng, t.lo, t.hi, shape)


scales = st.one_of(st.integers(-12, 2).map(lambda e: 2.0**e), st.floats(2.0**-12, 4.0, width=32))
seeds = st.integers(0, 2**32 - 1)


def same_error(f_ref, f_torch):
    """Run both; both must raise ValueError or both return. Returns (ref, torch) or None."""
    try:
        r = f_ref()
    except ValueError:
        with pytest.raises(ValueError):
            f_torch()
        return None
    return r, f_torch()


# ---------------------------------------------------------------------------
# §3 dyadic
# ---------------------------------------------------------------------------

ratios = st.one_of(
    st.floats(2.0**-70, 2.0**25, allow_subnormal=False),
    st.floats(5e-324, 1e-300),  # subnormal / tiny: the sh > 62 branch
    st.integers(1, 2**25).map(float),
    st.integers(-40, 25).map(lambda e: 2.0**e),
    st.sampled_from([0.0, -1.0, math.inf, math.nan]),
)


@given(r=ratios, m=st.integers(2, 24))
@example(r=1 - 2.0**-20, m=16)          # carry: M rounds up to 2^m
@example(r=2.0**16 - 0.5, m=16)         # first rejected ratio
@example(r=2.0**16 - 0.5 - 2.0**-37, m=16)
@example(r=3 * 2.0**-70, m=16)          # tiny: sh > 62
def test_dyadic_matches_reference(r, m):
    res = same_error(lambda: ref.dyadic(r, m), lambda: io.dyadic(r, m))
    if res is not None:
        (Mr, shr), (Mt, sht) = res
        assert (int(Mt), int(sht)) == (int(Mr), int(shr))
        assert Mt.dtype == torch.int64 and Mt.shape == ()


@pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")  # reference's np.where
@given(rs=st.lists(st.floats(2.0**-60, 2.0**15, width=32), min_size=1, max_size=8), m=st.integers(2, 24))
def test_dyadic_vectorised(rs, m):
    res = same_error(lambda: ref.dyadic(np.array(rs), m), lambda: io.dyadic(torch.tensor(rs), m))
    if res is not None:
        (Mr, shr), (Mt, sht) = res
        assert Mt.tolist() == Mr.tolist() and sht.tolist() == shr.tolist()


# ---------------------------------------------------------------------------
# §1 quantize_ste
# ---------------------------------------------------------------------------

@given(xs=st.lists(st.floats(-1e4, 1e4, width=32), min_size=1, max_size=24), s=st.floats(2.0**-13, 10.0, width=32),
       bits=st.integers(1, 16), signed=st.booleans(), narrow=st.booleans(), dtype=dtypes)
def test_quantize_matches_reference(xs, s, bits, signed, narrow, dtype):
    x = torch.tensor(xs, dtype=dtype)
    y = io.quantize_ste(x, s, bits, signed, narrow)
    q = ref.quantize(np.array(xs, dtype=np.float32), s, bits, signed, narrow)
    assert y.dtype == dtype
    assert out_codes(y, np.float32(s)).tolist() == q.tolist()
    if dtype == F32:  # the value itself is QONNX's fl32(q·s)
        assert np.array_equal(y.numpy(), ref.dequantize(q, s))


def test_quantize_ties_and_per_channel():
    s = 2.0**-3
    k = np.arange(-20, 20)
    x = torch.tensor((k + 0.5) * s, dtype=F32)  # exact ties: half to even
    q = out_codes(io.quantize_ste(x, s, 8), s)
    assert q.tolist() == np.rint(k + 0.5).astype(int).tolist() == ref.quantize(x.numpy(), s, 8).tolist()
    # per-channel scales on the last axis, and -0.0 -> +1 for bipolar
    xc = torch.randn(5, 3, dtype=F32)
    sc = np.array([0.1, 0.02, 0.5], dtype=np.float32)
    assert out_codes(io.quantize_ste(xc, torch.tensor(sc), 4), sc).tolist() == \
        ref.quantize(xc.numpy(), sc, 4).tolist()
    assert io.quantize_ste(torch.tensor([-0.0, -1e-30, 0.3]), 1.0, 1).tolist() == [1.0, -1.0, 1.0]


def test_quantize_ste_backward_hand():
    # int4 at s = 1/4: t = [-8, -1.2, 1.04, 20, 7] -> mask [1, 1, 1, 0, 1] (clamp STE, bounds included)
    x = torch.tensor([-2.0, -0.3, 0.26, 5.0, 1.75], requires_grad=True)
    y = io.quantize_ste(x, 0.25, 4, signed=True)
    assert y.tolist() == [-2.0, -0.25, 0.25, 1.75, 1.75]
    y.backward(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))
    assert x.grad.tolist() == [1.0, 2.0, 3.0, 0.0, 5.0]
    # narrow int4: lo = -7, so t = -8 is outside; bipolar: hard-tanh mask |t| <= 1
    x = torch.tensor([-2.0, 0.1], requires_grad=True)
    io.quantize_ste(x, 0.25, 4, narrow=True).sum().backward()
    assert x.grad.tolist() == [0.0, 1.0]
    x = torch.tensor([-2.0, -0.5, 0.0, 1.0, 1.5], requires_grad=True)
    y = io.quantize_ste(x, 1.0, 1)
    assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0]


# ---------------------------------------------------------------------------
# §2 int_matmul
# ---------------------------------------------------------------------------

a_types = st.one_of(st.just(IntType(1, True)), st.builds(IntType, st.integers(2, 8), st.booleans()),
                    st.builds(IntType, st.integers(1, 8), st.just(False)).filter(lambda t: t.bits > 1))
w_types = st.one_of(st.just(IntType(1, True)), st.builds(IntType, st.integers(2, 8), st.just(True)))


@given(a_t=a_types, w_t=w_types, batch=st.sampled_from([(), (1,), (3,), (2, 2)]), M=st.integers(1, 4),
       K=st.integers(1, 24), N=st.integers(1, 5), per_channel=st.booleans(), use_bias=st.booleans(),
       runtime_w=st.booleans(), s_a=scales, s_w=scales, dtype=dtypes, seed=seeds)
def test_matmul_matches_reference(a_t, w_t, batch, M, K, N, per_channel, use_bias, runtime_w, s_a, s_w, dtype,
                                  seed):
    rng = np.random.default_rng(seed)
    qa = tcodes(rng, a_t, batch + (M, K))
    qw = tcodes(rng, w_t, (batch if runtime_w else ()) + (K, N))
    sw = (s_w * rng.uniform(0.5, 2.0, N)).astype(np.float32) if per_channel else np.float32(s_w)
    sa = np.float32(s_a)
    out_s = np.float64(sa) * sw.astype(np.float64)  # the float64 product, as int_matmul states
    qb = rng.integers(-(2**31), 2**31, size=N) if use_bias else None
    bias = deq(qb, out_s, dtype) if use_bias else None
    if dtype == F32 and use_bias:
        bias = deq(qb, out_s, F64)  # an int32 bias code is not float32-exact at this scale
    y = io.int_matmul(deq(qa, sa, dtype), deq(qw, sw, dtype), sa, torch.tensor(sw), bias=bias)
    acc = ref.matmul(qa, qw, qb, a_t, w_t)
    assert y.dtype == F64 and y.shape == acc.shape
    assert out_codes(y, out_s).tolist() == acc.tolist()


def test_matmul_max_length_and_1d():
    # BERT-base FFN2: K = 3072, uint8 x int4 at the extremes (|acc| up to 6.3e6, 24 bits)
    K = 3072
    qa = np.full((2, K), 255)
    qw = np.stack([np.full(K, -8), np.full(K, 7), np.tile([-8, 7], K // 2)], axis=1)
    y = io.int_matmul(deq(qa, 0.5, F32), deq(qw, 0.25, F32), 0.5, 0.25)
    acc = ref.matmul(qa, qw, None, IntType(8, False), IntType(4, True))
    assert out_codes(y, 0.125).tolist() == acc.tolist()
    assert acc[0].tolist() == [-6266880, 5483520, -255 * 1536]
    # 1-D activations: (K,) @ (K, N) -> (N,)
    y1 = io.int_matmul(deq(qa[0], 0.5, F32), deq(qw, 0.25, F32), 0.5, 0.25)
    assert y1.shape == (3,) and out_codes(y1, 0.125).tolist() == acc[0].tolist()
    with pytest.raises(ValueError, match="int_matmul"):  # partial sums could reach 2^52
        io.int_matmul(deq(np.full((1, 4), 2**25), 1.0), deq(np.full((4, 1), 2**25), 1.0), 1.0, 1.0)


def test_matmul_backward_is_float_matmul():
    torch.manual_seed(0)
    a = io.quantize_ste(torch.randn(2, 3, 5, dtype=F64), 0.1, 8).detach().requires_grad_()
    w = io.quantize_ste(torch.randn(5, 4, dtype=F64), 0.05, 4).detach().requires_grad_()
    b = (torch.randint(-50, 50, (4,), dtype=F64) * 0.005).requires_grad_()
    g = torch.randn(2, 3, 4, dtype=F64)
    io.int_matmul(a, w, 0.1, 0.05, bias=b).backward(g)
    a2, w2, b2 = (t.detach().clone().requires_grad_() for t in (a, w, b))
    (a2 @ w2 + b2).backward(g)
    for t, t2 in ((a, a2), (w, w2), (b, b2)):
        assert torch.allclose(t.grad, t2.grad, rtol=0, atol=1e-12)
    # float32 inputs get float32 gradients although the output is float64
    a3 = a.detach().float().requires_grad_()
    io.int_matmul(a3, w.detach().float(), 0.1, 0.05).sum().backward()
    assert a3.grad.dtype == F32 and torch.isfinite(a3.grad).all()


# ---------------------------------------------------------------------------
# §3 requant
# ---------------------------------------------------------------------------

out_types16 = st.builds(IntType, st.integers(2, 16), st.booleans(), st.booleans())


@given(wacc=st.integers(2, 46), y_t=out_types16, N=st.integers(1, 6), rows=st.integers(1, 5),
       per_channel=st.booleans(), log_spread=st.floats(-4, 4), s_acc=scales, dtype=dtypes, seed=seeds)
def test_requant_dyadic_matches_reference(wacc, y_t, N, rows, per_channel, log_spread, s_acc, dtype, seed):
    assume(dtype == F64 or wacc <= 22)  # float32 carries accumulator codes exactly below 2^22
    rng = np.random.default_rng(seed)
    acc = rng_codes(rng, -(2 ** (wacc - 1)), 2 ** (wacc - 1) - 1, (rows, N))
    # ratios that map the accumulator range around the output range, spread 2^±4
    base = 2.0 ** min(y_t.bits - wacc + log_spread, 14.0)
    r = base * (rng.uniform(0.5, 2.0, N) if per_channel else np.ones(1))
    Mr, shr = ref.dyadic(r)
    Mt, sht = io.dyadic(torch.tensor(r))
    s_y = s_acc / r  # float64
    y = io.requant(deq(acc, s_acc, dtype), s_acc, Mt, sht, y_t.bits, y_t.signed, y_t.narrow, torch.tensor(s_y))
    exp = ref.requant(acc, Mr, shr, y_t)
    assert out_codes(y, s_y).tolist() == exp.tolist()


@given(wacc=st.integers(2, 38), M=st.integers(0, 2**24 - 1), sh=st.integers(0, 62), y_t=out_types16, seed=seeds)
@example(wacc=4, M=1, sh=1, y_t=IntType(8, True), seed=0)   # ties on every odd accumulator
@example(wacc=4, M=3, sh=2, y_t=IntType(2, True), seed=1)   # saturation at both ends
def test_requant_explicit_params(wacc, M, sh, y_t, seed):
    rng = np.random.default_rng(seed)
    acc = np.concatenate([np.arange(-8, 8), rng_codes(rng, -(2 ** (wacc - 1)), 2 ** (wacc - 1) - 1, 32)])
    acc = np.clip(acc, -(2 ** (wacc - 1)), 2 ** (wacc - 1) - 1)
    res = same_error(lambda: ref.requant(acc, M, sh, y_t),
                     lambda: io.requant(deq(acc, 1.0), 1.0, M, sh, y_t.bits, y_t.signed, y_t.narrow, 1.0))
    if res is not None:
        assert out_codes(res[1], 1.0).tolist() == res[0].tolist()


def test_requant_ties_hand():
    acc = torch.tensor([-3.0, -1.0, 1.0, 3.0, 5.0])
    # M = 1, sh = 1: acc/2 rounded half up: -1, 0, 1, 2, 3 (not half to even: 0, 2, 2)
    assert io.requant(acc, 1.0, 1, 1, 8).tolist() == [-1.0, 0.0, 1.0, 2.0, 3.0]
    assert io.requant(acc, 1.0, 1, 1, 2).tolist() == [-1.0, 0.0, 1.0, 1.0, 1.0]  # int2 saturates at 1


def test_requant_backward_hand():
    # acc codes [-1000, 10, 1000] at s_acc = 1/8, out int8 at s_y = 1/2: r = 1/4 -> (M, sh) = (2^15, 17);
    # codes [-250 -> -128 (sat), 2.5 -> 3, 250 -> 127 (sat)]; gain = M 2^-sh s_y / s_acc = 1
    M, sh = io.dyadic(0.25)
    assert (int(M), int(sh)) == (2**15, 17)
    acc = (torch.tensor([-1000.0, 10.0, 1000.0], dtype=F64) / 8).requires_grad_()
    y = io.requant(acc, 0.125, M, sh, 8, True, False, 0.5)
    assert (y * 2).tolist() == [-128.0, 3.0, 127.0]
    y.backward(torch.tensor([1.0, 2.0, 3.0]))
    assert acc.grad.tolist() == [0.0, 2.0, 0.0]
    # a non-dyadic ratio: gain = M·2^-sh·s_y/s_acc, within 2^-16 of 1
    r = 0.3
    M, sh = io.dyadic(r)
    a = torch.tensor([1.0], dtype=F64, requires_grad=True)
    io.requant(a, 1.0, M, sh, 16, out_scale=1 / r).backward()
    assert a.grad.item() == int(M) * 2.0 ** -int(sh) / r
    assert abs(a.grad.item() - 1) <= 2.0**-16


# ---------------------------------------------------------------------------
# §4 LUT
# ---------------------------------------------------------------------------

TORCH_F = {
    "identity": lambda x: x,
    "relu": F.relu,
    "relu6": F.relu6,
    "gelu": lambda x: F.gelu(x, approximate="none"),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "exp": torch.exp,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "silu": F.silu,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "elu": lambda x: F.elu(x, alpha=1.0),
    "selu": F.selu,
    "softplus": lambda x: F.softplus(x, beta=1.0, threshold=800.0),
    "leaky_relu": lambda x: F.leaky_relu(x, negative_slope=0.01),
    "abs": torch.abs,
    "square": torch.square,
    "neg": torch.neg,
}
lut_in = st.one_of(st.just(IntType(1, True)), st.builds(IntType, st.integers(2, 8), st.booleans(), st.booleans()))
lut_out = st.one_of(st.just(IntType(1, True)), st.builds(IntType, st.integers(2, 16), st.booleans(), st.booleans()))


def test_lut_registry_is_covered():
    assert set(TORCH_F) == set(ref.LUT_FUNCTIONS)


@given(name=st.sampled_from(sorted(TORCH_F)), x_t=lut_in, y_t=lut_out, data=st.data())
def test_lut_table_matches_reference(name, x_t, y_t, data):
    """Both build the table from the same torch float64 function, so == is exact: this
    checks index order, narrow inputs, half-to-even rounding, clamping and bipolar
    outputs. (numpy's and torch's float64 libm may differ by an ulp, or in the sign
    of a zero, e.g. gelu_tanh(-8) is -0.0 in numpy and -1e-21 in torch: that is
    between the registry's functions, tested in test_ref_nonlinear.py.)"""
    smax = min(4.0, 512.0 / 2**x_t.bits)  # keeps exp() finite
    s_x = data.draw(st.one_of(st.integers(-8, int(math.log2(smax))).map(lambda e: 2.0**e), st.floats(2.0**-9, smax)))
    s_y = data.draw(st.one_of(st.integers(-10, 2).map(lambda e: 2.0**e), st.floats(2.0**-10, 4.0)))
    f = TORCH_F[name]
    exp = ref.lut_table(lambda v: f(torch.from_numpy(v)).numpy(), x_t, s_x, y_t, s_y)
    got = io.lut_table(f, x_t.bits, x_t.signed, s_x, y_t.bits, y_t.signed, s_y,
                       in_narrow=x_t.narrow, out_narrow=y_t.narrow)
    assert got.dtype == torch.int64 and got.tolist() == exp.tolist()


@given(x_t=lut_in, y_t=lut_out, s_x=scales, s_y=scales, shape=st.sampled_from([(7,), (2, 5), (2, 3, 4)]),
       dtype=dtypes, seed=seeds)
def test_lut_matches_reference(x_t, y_t, s_x, s_y, shape, dtype, seed):
    rng = np.random.default_rng(seed)
    n = 2 if x_t.bipolar else 2**x_t.bits
    table = tcodes(rng, y_t, n)
    q = tcodes(rng, IntType(x_t.bits, x_t.signed), shape)  # lut accepts the full (non-narrow) range
    y = io.lut(deq(q, s_x, dtype), s_x, x_t.bits, x_t.signed, torch.tensor(table), s_y)
    assert y.dtype == dtype and out_codes(y, s_y).tolist() == ref.lut(q, table, x_t).tolist()


def test_lut_backward_hand():
    # int2 input at s_x = 1/2, table by code -2, -1, 0, 1 -> [0, 0, 1, 3] (index order [1, 3, 0, 0]),
    # s_y = 1/4: slopes (codes of Y per code of X) one-sided / central / central / one-sided:
    # [0, 0.5, 1.5, 2] -> times s_y/s_x = 1/2: [0, 0.25, 0.75, 1]
    table = torch.tensor([1, 3, 0, 0])
    x = torch.tensor([-1.0, -0.5, 0.0, 0.5], requires_grad=True)
    y = io.lut(x, 0.5, 2, True, table, 0.25)
    assert (y * 4).tolist() == [0, 0, 1, 3]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 0.25, 0.75, 1.0]
    # with fn = gelu: gelu'(x), masked where the entry is clamped (uint2 at s_y = 1/2: max 1.5)
    gelu = lambda t: F.gelu(t)  # noqa: E731
    tab = io.lut_table(gelu, 4, True, 0.5, 2, False, 0.5)
    x = torch.tensor([-1.0, 0.0, 0.5, 3.0], dtype=F64, requires_grad=True)
    io.lut(x, 0.5, 4, True, tab, 0.5, fn=gelu).sum().backward()
    x2 = x.detach().clone().requires_grad_()
    gelu(x2).sum().backward()
    assert torch.equal(x.grad, x2.grad * torch.tensor([1.0, 1.0, 1.0, 0.0], dtype=F64))
    # bipolar input: one difference (T(+1) - T(-1))/2 per code of X
    x = torch.tensor([-1.0, 1.0], requires_grad=True)
    io.lut(x, 1.0, 1, True, torch.tensor([-3, 5]), 1.0).sum().backward()
    assert x.grad.tolist() == [4.0, 4.0]


# ---------------------------------------------------------------------------
# §5 softmax
# ---------------------------------------------------------------------------

sm_types = st.builds(IntType, st.integers(2, 8), st.booleans())


@given(x_t=sm_types, s_x=st.floats(2.0**-8, 2.0, width=32), eb=st.integers(1, 16))
def test_softmax_table_matches_reference(x_t, s_x, eb):
    assert io.softmax_table(x_t.bits, s_x, eb).tolist() == ref.softmax_table(x_t, s_x, eb).tolist()


@given(x_t=sm_types, s_x=st.floats(2.0**-8, 2.0, width=32), eb=st.integers(1, 16), ob=st.integers(1, 16),
       shape=st.sampled_from([(1,), (5,), (3, 7), (2, 2, 16)]), random_table=st.booleans(),
       rows_mode=st.sampled_from(["random", "equal", "onehot"]), dtype=dtypes, seed=seeds)
def test_softmax_matches_reference(x_t, s_x, eb, ob, shape, random_table, rows_mode, dtype, seed):
    rng = np.random.default_rng(seed)
    if random_table:
        T = rng.integers(0, 2**eb, size=2**x_t.bits)
        T[0] = max(T[0], 1)
    else:
        T = ref.softmax_table(x_t, s_x, eb)
        assume(T[0] >= 1)
    q = tcodes(rng, x_t, shape)
    if rows_mode == "equal":
        q = np.broadcast_to(q[..., :1], shape).copy()
    elif rows_mode == "onehot":  # one maximum, everything else at the minimum: the mass sits in one element
        q = np.full(shape, x_t.lo)
        q[..., rng.integers(shape[-1])] = x_t.hi
    y = io.int_softmax(deq(q, s_x, dtype), s_x, x_t.bits, x_t.signed, torch.tensor(T), eb, ob)
    assert y.dtype == dtype and out_codes(y, 2.0**-ob).tolist() == ref.softmax(q, T, x_t, eb, ob).tolist()


def test_softmax_longest_row():
    # N·(2^EB − 1) = 65537·65535 = 2^32 − 1: the largest sum allowed (all-equal row, EB = 16)
    x_t, n = IntType(2, False), 65537
    T = np.array([65535, 1, 1, 1])
    q = np.zeros((1, n), dtype=np.int64)
    q[0, :3] = [3, 3, 0]
    y = io.int_softmax(deq(q, 0.5), 0.5, 2, False, torch.tensor(T), eb=16, ob=16)
    assert out_codes(y, 2.0**-16).tolist() == ref.softmax(q, T, x_t, 16, 16).tolist()
    with pytest.raises(ValueError, match="int_softmax"):
        io.int_softmax(deq(np.zeros((1, n + 1)), 0.5), 0.5, 2, False, torch.tensor(T), eb=16)


class _FloatSoftmaxWithSurrogate(torch.autograd.Function):
    """torch.softmax forward, intops' hand-written surrogate backward: gradcheck compares the two."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.softmax(x, -1)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return io._softmax_grad(x, g)


def test_softmax_backward():
    torch.manual_seed(1)
    x = torch.randn(3, 6, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(_FloatSoftmaxWithSurrogate.apply, (x,))
    # the integer op's gradient is that of torch.softmax at the input values
    s = 0.125
    xq = (torch.randint(-128, 128, (2, 3, 8)).double() * s).requires_grad_()
    T = io.softmax_table(8, s)
    g = torch.randn(2, 3, 8, dtype=F64)
    io.int_softmax(xq, s, 8, True, T).backward(g)
    x2 = xq.detach().clone().requires_grad_()
    torch.softmax(x2, -1).backward(g)
    assert torch.allclose(xq.grad, x2.grad, rtol=0, atol=1e-15)
    # hand case: all-equal row of 2: y = [1/2, 1/2], g = [1, 0] -> dx = [1/4, -1/4]
    x = torch.tensor([[0.5, 0.5]], requires_grad=True)
    y = io.int_softmax(x, 0.5, 4, True, io.softmax_table(4, 0.5))
    assert y.tolist() == [[0.5, 0.5]]
    y.backward(torch.tensor([[1.0, 0.0]]))
    assert x.grad.tolist() == [[0.25, -0.25]]


# ---------------------------------------------------------------------------
# §6 isqrt and LayerNorm
# ---------------------------------------------------------------------------

@given(vs=st.lists(st.one_of(st.integers(0, 2**62 - 1), st.integers(0, 2**31).map(lambda n: n * n),
                             st.integers(1, 2**31).map(lambda n: n * n - 1)), min_size=1, max_size=32))
def test_isqrt_exact(vs):
    vs = [v for v in vs if v < 2**62]
    assume(vs)
    assert io.isqrt(torch.tensor(vs)).tolist() == [math.isqrt(v) for v in vs]


def test_isqrt_boundaries():
    n = torch.tensor([0, 1, 2, 3, 2**15, 2**31 - 1, 2**31, 3037000499], dtype=torch.int64)
    n = n[n * n < 2**62]
    v = torch.cat([n * n, (n * n - 1).clamp(min=0), n * n + 1, n * n + 2 * n, torch.tensor([2**62 - 1])])
    assert io.isqrt(v).tolist() == [math.isqrt(t) for t in v.tolist()]
    # every v below 2^20 at once
    v = torch.arange(2**20)
    assert torch.equal(io.isqrt(v), torch.tensor(np.floor(np.sqrt(np.arange(2**20))).astype(np.int64)))
    with pytest.raises(ValueError, match="isqrt"):
        io.isqrt(torch.tensor([2**62]))


@given(H=st.integers(1, 48), g_mag=st.floats(2.0**-8, 2.0**8), b_mag=st.floats(0, 2.0**8),
       eps=st.one_of(st.just(0.0), st.floats(0, 1e-3), st.just(1e-12), st.just(1e-5)),
       s_x=scales, s_y=scales, fixed_S=st.one_of(st.none(), st.integers(1, 62)), seed=seeds)
def test_layernorm_params_match_reference(H, g_mag, b_mag, eps, s_x, s_y, fixed_S, seed):
    rng = np.random.default_rng(seed)
    gamma, beta = rng.normal(0, g_mag, H), rng.normal(0, b_mag, H) if b_mag else np.zeros(H)
    res = same_error(lambda: ref.layernorm_params(gamma, beta, eps, s_x, s_y, fixed_S),
                     lambda: io.layernorm_params(torch.tensor(gamma), torch.tensor(beta), eps, s_x, s_y, fixed_S))
    if res is not None:
        pr, pt = res
        assert pt.G.tolist() == pr.G.tolist() and pt.B.tolist() == pr.B.tolist()
        assert (pt.S, pt.E) == (pr.S, pr.E)


ln_out = st.builds(IntType, st.integers(2, 8), st.booleans(), st.booleans())


@given(H=st.integers(1, 64), rows=st.sampled_from([(1,), (3,), (2, 2)]), amp=st.integers(0, 15),
       eps=st.sampled_from([0.0, 1e-12, 1e-5, 1e-2]), g_mag=st.floats(2.0**-4, 2.0**2), s_x=scales,
       s_y=scales, y_t=ln_out, zero_var_rows=st.booleans(), dtype=dtypes, seed=seeds)
def test_layernorm_matches_reference(H, rows, amp, eps, g_mag, s_x, s_y, y_t, zero_var_rows, dtype, seed):
    rng = np.random.default_rng(seed)
    lim = 2**amp
    q = rng_codes(rng, max(-lim, -(2**15)), min(lim, 2**15 - 1), rows + (H,), p_edge=0.1)
    if zero_var_rows:
        q[..., 0, :] = q[..., 0, :1]  # equal rows: d = 0, z = 0, y = rshr(B, S)
    gamma, beta = rng.normal(1.0, g_mag, H), rng.normal(0, g_mag, H)
    try:
        p = ref.layernorm_params(gamma, beta, eps, s_x, s_y)
    except ValueError:
        assume(False)
    pt = io.layernorm_params(torch.tensor(gamma), torch.tensor(beta), eps, s_x, s_y)
    y = io.int_layernorm(deq(q, s_x, dtype), s_x, pt, y_t.bits, s_y, y_t.signed, y_t.narrow)
    assert y.dtype == dtype and out_codes(y, s_y).tolist() == ref.layernorm(q, p, y_t).tolist()


def test_layernorm_corner_rows():
    H = 4096
    G = torch.full((H,), 2**15 - 1)
    B = torch.full((H,), -(2**31) + 1)
    params = io.LayerNormParams(G=G, B=B, S=30, E=0)
    pr = ref.LayerNormParams(G=G.numpy(), B=B.numpy(), S=30, E=0)
    q = np.stack([
        np.tile([-(2**15), 2**15 - 1], H // 2),                    # maximal spread
        np.r_[np.full(H - 1, -(2**15)), 2**15 - 1],                 # one outlier: |z| near its bound
        np.full(H, 2**15 - 1),                                      # zero variance, E = 0 -> sigma = 1
        np.full(H, -7),
    ])
    y = io.int_layernorm(deq(q, 1.0), 1.0, params, 8)
    assert out_codes(y, 1.0).tolist() == ref.layernorm(q, pr, IntType(8, True)).tolist()
    # zero-variance rows give the quantized beta: rshr(-2^31 + 1, 30) = floor(-1.4999...) = -2
    assert out_codes(y, 1.0)[2:].tolist() == [[-2] * H] * 2


class _FloatLayerNormWithSurrogate(torch.autograd.Function):
    """The documented float surrogate forward, intops' hand-written backward: gradcheck compares them."""

    @staticmethod
    def forward(ctx, x, gamma, beta, eps_v, floor_v):
        ctx.save_for_backward(x, gamma)
        ctx.c = (eps_v, floor_v)
        d = x - x.mean(-1, keepdim=True)
        sigma = torch.sqrt((d * d).mean(-1, keepdim=True) + eps_v).clamp(min=floor_v)
        return gamma * d / sigma + beta

    @staticmethod
    def backward(ctx, g):
        x, gamma = ctx.saved_tensors
        gx, gg, gb = io._layernorm_grad(x, gamma, *ctx.c, g)
        return gx, gg, gb, None, None


def test_layernorm_surrogate_gradcheck():
    torch.manual_seed(2)
    x = torch.randn(3, 7, dtype=F64, requires_grad=True)
    gamma = torch.randn(7, dtype=F64, requires_grad=True)
    beta = torch.randn(7, dtype=F64, requires_grad=True)
    f = _FloatLayerNormWithSurrogate.apply
    assert torch.autograd.gradcheck(lambda x, g, b: f(x, g, b, 1e-3, 1e-4), (x, gamma, beta))
    # the clamped regime: sigma = floor_v is a constant
    xs = (torch.randn(2, 5, dtype=F64) * 1e-3).requires_grad_()
    assert torch.autograd.gradcheck(lambda x, g, b: f(x, g, b, 0.0, 1.0), (xs, gamma[:5], beta[:5]))
    # it is the derivative of torch's own layer_norm when unclamped
    x2 = x.detach().clone().requires_grad_()
    go = torch.randn(3, 7, dtype=F64)
    F.layer_norm(x2, (7,), gamma.detach(), beta.detach(), 1e-3).backward(go)
    gx, _, _ = io._layernorm_grad(x.detach(), gamma.detach(), 1e-3, 1e-4, go)
    assert torch.allclose(gx, x2.grad, rtol=0, atol=1e-12)


def test_layernorm_backward_int_op():
    H, s_x, s_y, eps = 6, 0.01, 0.05, 1e-5
    gamma = torch.tensor([1.0, 0.5, -1.0, 2.0, 1.0, 1.0], dtype=F64, requires_grad=True)
    beta = torch.tensor([0.0, 0.1, 0.0, -0.2, 0.0, 6.3], dtype=F64, requires_grad=True)  # 6.3/s_y = 126
    p = io.layernorm_params(gamma, beta, eps, s_x, s_y)
    q = torch.tensor([[-300, -10, 0, 20, 100, 400], [7, 7, 7, 7, 7, 7]])
    x = (q.double() * s_x).requires_grad_()
    y = io.int_layernorm(x, s_x, p, 8, s_y, gamma=gamma, beta=beta)
    g = torch.arange(1.0, 13.0, dtype=F64).reshape(2, H)
    y.backward(g)
    assert all(torch.isfinite(t.grad).all() for t in (x, gamma, beta))
    codes = out_codes(y, s_y)
    pre_sat = (codes > -128) & (codes < 127)  # the last column saturates (beta = 126 + xhat > 0.5)
    assert codes[0, 5] == 127 and not pre_sat[0, 5]
    mask = torch.tensor(pre_sat, dtype=F64)
    gx, gg, gb = io._layernorm_grad(x.detach(), gamma.detach(), p.E * 2.0**-16 * s_x**2, 2.0**-8 * s_x, g * mask)
    assert torch.equal(x.grad, gx) and torch.equal(gamma.grad, gg) and torch.equal(beta.grad, gb)
    # zero-variance row (E > 0 here): dx = gamma·(g − mean) / sqrt(eps), no NaN
    sig = math.sqrt(p.E * 2.0**-16 * s_x**2)
    gh = g[1] * mask[1] * gamma.detach()
    assert torch.allclose(x.grad[1], (gh - gh.mean()) / sig, rtol=1e-12, atol=0)
    # without gamma/beta tensors the surrogate uses G·s_y·2^(Z−S); x still gets a finite gradient
    x3 = (q.double() * s_x).requires_grad_()
    io.int_layernorm(x3, s_x, p, 8, s_y).sum().backward()
    assert torch.isfinite(x3.grad).all()
    # E = 0 and zero variance: sigma clamps to 2^-F·s_x, finite
    p0 = io.LayerNormParams(G=p.G, B=p.B, S=p.S, E=0)
    x4 = (q[1:].double() * s_x).requires_grad_()
    io.int_layernorm(x4, s_x, p0, 8, s_y).backward(g[1:])
    assert torch.isfinite(x4.grad).all()


# ---------------------------------------------------------------------------
# §7 residual add
# ---------------------------------------------------------------------------

add_types = st.builds(IntType, st.integers(2, 16), st.booleans(), st.booleans())


@given(s_a=scales, s_b=scales, s_y=scales, m=st.integers(2, 24))
def test_add_params_match_reference(s_a, s_b, s_y, m):
    res = same_error(lambda: ref.add_params(s_a, s_b, s_y, m), lambda: io.add_params(s_a, s_b, s_y, m))
    if res is not None:
        assert res[0] == res[1]


@given(a_t=add_types, b_t=add_types, y_t=add_types, s_a=scales, s_b=scales, s_y=scales,
       shape=st.sampled_from([(9,), (2, 6), (2, 3, 4)]), broadcast_b=st.booleans(), dtype=dtypes, seed=seeds)
def test_add_matches_reference(a_t, b_t, y_t, s_a, s_b, s_y, shape, broadcast_b, dtype, seed):
    try:
        Ma, Mb, sh = ref.add_params(s_a, s_b, s_y)
    except ValueError:
        assume(False)
    rng = np.random.default_rng(seed)
    qa = tcodes(rng, a_t, shape)
    qb = tcodes(rng, b_t, shape[-1:] if broadcast_b else shape)
    y = io.int_add(deq(qa, s_a, dtype), s_a, deq(qb, s_b, dtype), s_b, Ma, Mb, sh, y_t.bits, y_t.signed, s_y,
                   y_t.narrow)
    assert out_codes(y, s_y).tolist() == ref.add(qa, qb, Ma, Mb, sh, a_t, b_t, y_t, ).tolist()


@given(Ma=st.integers(0, 2**24 - 1), Mb=st.integers(0, 2**24 - 1), sh=st.integers(1, 62), y_t=add_types,
       seed=seeds)
@example(Ma=1, Mb=1, sh=1, y_t=IntType(8, True), seed=0)   # (a + b)/2: ties on every odd sum
def test_add_explicit_params(Ma, Mb, sh, y_t, seed):
    rng = np.random.default_rng(seed)
    t = IntType(16, True)
    qa, qb = tcodes(rng, t, 40), tcodes(rng, t, 40)
    qa[:8], qb[:8] = [-3, -1, 1, 3, -2, 2, 0, 5], [0, 0, 0, 0, -1, 1, 0, 0]
    y = io.int_add(deq(qa, 1.0), 1.0, deq(qb, 1.0), 1.0, Ma, Mb, sh, y_t.bits, y_t.signed, 1.0, y_t.narrow)
    assert out_codes(y, 1.0).tolist() == ref.add(qa, qb, Ma, Mb, sh, t, t, y_t).tolist()


def test_add_backward_hand():
    # s_a = 1/4, s_b = 1/2, s_y = 1/2: r_b = 1 -> (2^15, 15), Ma = 2^14: gains exactly 1 and 1
    Ma, Mb, sh = io.add_params(0.25, 0.5, 0.5)
    assert (Ma, Mb, sh) == (2**14, 2**15, 15)
    a = torch.tensor([1.0, 30.0, -0.25], requires_grad=True)     # codes 4, 120, -1
    b = torch.tensor([0.5, 40.0, 0.0], requires_grad=True)       # codes 1, 80, 0
    y = io.int_add(a, 0.25, b, 0.5, Ma, Mb, sh, 8, True, 0.5)
    assert (y * 2).tolist() == [3.0, 127.0, 0.0]  # 2 + 1; 60 + 80 saturates; -0.5 + 0 -> 0 (half up)
    y.backward(torch.tensor([1.0, 1.0, 2.0]))
    assert a.grad.tolist() == [1.0, 0.0, 2.0] and b.grad.tolist() == [1.0, 0.0, 2.0]


# ---------------------------------------------------------------------------
# errors are ValueErrors naming the op
# ---------------------------------------------------------------------------

def test_errors_name_the_op():
    x = torch.zeros(2, 4)
    cases = [
        ("dyadic", lambda: io.dyadic(0.0)),
        ("requant", lambda: io.requant(x, 1.0, 2**24, 0, 8)),
        ("requant", lambda: io.requant(x, 1.0, 1, 63, 8)),
        ("requant", lambda: io.requant(torch.tensor([2.0**50]), 1.0, 2**16, 0, 8)),  # 52 + 17 bits
        ("quantize_ste", lambda: io.quantize_ste(x, -1.0, 8)),
        ("int_softmax", lambda: io.int_softmax(x + 9, 1.0, 4, True, io.softmax_table(4, 1.0))),
        ("int_softmax", lambda: io.int_softmax(x, 1.0, 4, True, torch.zeros(16, dtype=torch.int64))),
        ("int_layernorm", lambda: io.int_layernorm(x + 2**15, 1.0, io.LayerNormParams(
            torch.zeros(4, dtype=torch.int64), torch.zeros(4, dtype=torch.int64), 20, 0))),
        ("lut", lambda: io.lut(x + 2, 1.0, 2, True, torch.zeros(4, dtype=torch.int64), 1.0)),
        ("int_add", lambda: io.int_add(x, 1.0, x, 1.0, 1, 1, 0, 8)),
        ("int_matmul", lambda: io.int_matmul(x, torch.zeros(3, 2), 1.0, 1.0)),
        ("add_params", lambda: io.add_params(2.0**20, 1.0, 1.0)),
        ("layernorm_params", lambda: io.layernorm_params([1e9], [0.0], 0.0, 1.0, 1.0)),
    ]
    for op, f in cases:
        with pytest.raises(ValueError, match=op):
            f()


# ---------------------------------------------------------------------------
# QAT sanity: a 2-layer model of these ops learns a separable toy task, and in
# eval mode its outputs equal the reference pipeline's on the same codes
# ---------------------------------------------------------------------------

class TinyIntMLP(torch.nn.Module):
    S_X, S_W1, S_H, S_G, S_W2 = 2.0**-4, 2.0**-5, 2.0**-3, 2.0**-4, 2.0**-5

    def __init__(self, d_in=8, d_h=16, n_cls=2):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(d_in, d_h, generator=g) * 0.1)
        self.w2 = torch.nn.Parameter(torch.randn(d_h, n_cls, generator=g) * 0.1)
        self.M1, self.sh1 = io.dyadic(self.S_X * self.S_W1 / self.S_H)
        self.gelu = lambda t: F.gelu(t)
        self.table = io.lut_table(self.gelu, 8, True, self.S_H, 8, True, self.S_G)

    def forward(self, x):
        xq = io.quantize_ste(x, self.S_X, 8)                                    # int8 input
        w1 = io.quantize_ste(self.w1, self.S_W1, 4)                             # int4 weights
        acc = io.int_matmul(xq, w1, self.S_X, self.S_W1)
        h = io.requant(acc, self.S_X * self.S_W1, self.M1, self.sh1, 8, True, False, self.S_H)  # int8
        h = io.lut(h, self.S_H, 8, True, self.table, self.S_G, fn=self.gelu)   # GELU LUT, int8
        w2 = io.quantize_ste(self.w2, self.S_W2, 4)
        return io.int_matmul(h, w2, self.S_G, self.S_W2)                       # logits: accumulators

    def reference(self, x):
        xq = ref.quantize(x.numpy(), self.S_X, 8)
        w1 = ref.quantize(self.w1.detach().numpy(), self.S_W1, 4)
        acc = ref.matmul(xq, w1, None, IntType(8, True), IntType(4, True))
        h = ref.requant(acc, int(self.M1), int(self.sh1), IntType(8, True))
        h = ref.lut(h, self.table.numpy(), IntType(8, True))
        w2 = ref.quantize(self.w2.detach().numpy(), self.S_W2, 4)
        return ref.matmul(h, w2, None, IntType(8, True), IntType(4, True))


def test_qat_toy_task_learns_and_matches_reference():
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(3)
    n, d = 256, 8
    y = torch.randint(0, 2, (n,), generator=g)
    direction = torch.randn(d, generator=g)
    x = torch.randn(n, d, generator=g) * 0.8 + (2 * y[:, None] - 1) * direction / direction.norm() * 1.5
    model = TinyIntMLP(d)
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    losses = []
    for step in range(80):
        opt.zero_grad()
        loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters())
        if step == 0:  # later, weights that leave the int4 range get no gradient (clamp STE)
            assert all(p.grad.abs().sum() > 0 for p in model.parameters())
        opt.step()
        losses.append(loss.item())
    model.eval()
    with torch.no_grad():
        logits = model(x)
    acc = (logits.argmax(-1) == y).float().mean().item()
    assert losses[-1] < 0.5 * losses[0] and acc > 0.9, (losses[0], losses[-1], acc)
    # eval: torch == integer reference, code for code
    assert out_codes(logits, TinyIntMLP.S_G * TinyIntMLP.S_W2).tolist() == model.reference(x).tolist()
    assert time.perf_counter() - t0 < 5.0
