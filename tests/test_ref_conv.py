"""Reference conv2d (docs/arithmetic.md §11) against independent derivations.

* ``torch.nn.functional.conv2d`` in float64 on the integer codes: exact, because every
  product and partial sum is an integer of magnitude below 2^48 (the 48-bit accumulator
  bound), far inside float64's exactly represented integers (|n| <= 2^53), whatever order
  torch sums in. Random shapes, groups (depthwise included), strides, dilations and
  symmetric or ONNX-asymmetric pads (torch takes symmetric pads, so asymmetric ones are
  applied with ``F.pad`` first: zeros, which §11 says padding contributes).
* hand-derived tiny cases (values worked out in the comments), including the bipolar
  padding rule: padded taps add 0, not -1 or +1.
* argument checks.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from codesign.sim import reference as R

I = R.IntType


def _torch_conv(x, w, b, stride, pads, dilation, groups):
    pt, pl, pb, pr = pads
    xt = F.pad(torch.from_numpy(x.astype(np.float64)), (pl, pr, pt, pb))  # zeros
    y = F.conv2d(xt, torch.from_numpy(w.astype(np.float64)),
                 None if b is None else torch.from_numpy(b.astype(np.float64)),
                 stride=stride, padding=0, dilation=dilation, groups=groups)
    y = y.numpy()
    assert np.all(np.abs(y) < 2.0**48) and np.all(y == np.rint(y))
    return y.astype(np.int64)


TYPES_X = [I(8, False), I(8, True), I(4, False), I(2, True), I(1, True), I(3, True, True)]
TYPES_W = [I(8, True), I(4, True), I(2, True), I(1, True), I(4, True, True)]


def _codes(rng, t, shape):
    if t.bipolar:
        return rng.choice(np.array([-1, 1]), size=shape)
    return rng.integers(t.lo, t.hi + 1, size=shape)


@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), xt=st.sampled_from(TYPES_X), wt=st.sampled_from(TYPES_W),
       n=st.integers(1, 3), g=st.integers(1, 3), icg=st.integers(1, 3), ocg=st.integers(1, 3),
       kh=st.sampled_from([1, 2, 3, 5, 7]), kw=st.sampled_from([1, 3, 4]), sh=st.integers(1, 3),
       sw=st.integers(1, 3), dh=st.integers(1, 3), dw=st.integers(1, 2), sym=st.booleans(),
       pads=st.tuples(*[st.integers(0, 3)] * 4), bias=st.booleans(), depthwise=st.booleans())
def test_conv2d_equals_torch_float64(seed, xt, wt, n, g, icg, ocg, kh, kw, sh, sw, dh, dw, sym, pads, bias,
                                     depthwise):
    rng = np.random.default_rng(seed)
    if depthwise:
        icg, ocg = 1, 1
    C, OC = g * icg, g * ocg
    pt, pl, pb, pr = pads
    if sym:
        pb, pr = pt, pl
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    H = int(rng.integers(max(1, eh - pt - pb), eh + 6))
    W = int(rng.integers(max(1, ew - pl - pr), ew + 6))
    x = _codes(rng, xt, (n, C, H, W))
    w = _codes(rng, wt, (OC, icg, kh, kw))
    b = rng.integers(-(2**31), 2**31, size=OC) if bias else None
    pad_arg = (pt, pl) if sym else (pt, pl, pb, pr)
    got = R.conv2d(x, w, b, (sh, sw), pad_arg, (dh, dw), g, xt, wt)
    want = _torch_conv(x, w, b, (sh, sw), (pt, pl, pb, pr), (dh, dw), g)
    assert got.dtype == np.int64 and got.shape == want.shape
    assert np.array_equal(got, want)
    assert R.conv_geometry(H, W, (kh, kw), (sh, sw), (pt, pl, pb, pr), (dh, dw)) == want.shape[2:]


def test_conv2d_extreme_codes_equal_torch():
    """Most-negative x most-negative products over a long window (uint8 x int8, 7x7, 64
    channels: K = 3136) and the int32 bias ends."""
    for xt, wt in ((I(8, True), I(8, True)), (I(8, False), I(8, True))):
        x = np.full((1, 64, 9, 9), xt.lo)
        w = np.full((2, 64, 7, 7), wt.lo)
        w[1] = wt.hi
        b = np.array([2**31 - 1, -(2**31)])
        got = R.conv2d(x, w, b, 1, 3, 1, 1, xt, wt)
        assert np.array_equal(got, _torch_conv(x, w, b, (1, 1), (3, 3, 3, 3), (1, 1), 1))
        assert got[0, 0, 4, 4] == 2**31 - 1 + 3136 * xt.lo * wt.lo  # centre: all 49 taps inside


def test_conv2d_hand_values():
    # x = [[1, 2], [3, 4]], 2x2 kernel of ones, pad 1 (zeros): each output is the sum of
    # the input elements its window covers.
    x = np.array([[[[1, 2], [3, 4]]]])
    w = np.ones((1, 1, 2, 2), dtype=np.int64)
    y = R.conv2d(x, w, None, 1, 1, 1, 1, I(4, False), I(2, True))
    assert y.tolist() == [[[[1, 3, 2], [4, 10, 6], [3, 7, 4]]]]
    # stride 2 on a 3x3 ramp with a 1x1 kernel of -2 and bias 5: picks x[0,0], x[0,2], x[2,0], x[2,2]
    x = np.arange(9).reshape(1, 1, 3, 3)
    y = R.conv2d(x, np.full((1, 1, 1, 1), -2), np.array([5]), 2, 0, 1, 1, I(4, False), I(3, True))
    assert y.tolist() == [[[[5, 1], [-7, -11]]]]
    # dilation 2: a 2x2 kernel [[1, 0], [0, -1]] reads x[i, j] - x[i+2, j+2] on a 3x3 ramp
    y = R.conv2d(x, np.array([[[[1, 0], [0, -1]]]]), None, 1, 0, 2, 1, I(4, False), I(2, True))
    assert y.tolist() == [[[[0 - 8]]]]
    # ONNX asymmetric pads (top 1, left 0, bottom 0, right 2), 1x2 kernel [1, 10], ramp 1x3 [1 2 3]:
    # padded row 0 is zeros, row 1 = [1 2 3 0 0] -> OH = 2, OW = 4
    x = np.array([[[[1, 2, 3]]]])
    y = R.conv2d(x, np.array([[[[1, 10]]]]), None, 1, (1, 0, 0, 2), 1, 1, I(3, False), I(5, True))
    assert y.tolist() == [[[[0, 0, 0, 0], [21, 32, 3, 0]]]]
    # depthwise: each channel with its own kernel
    x = np.array([[[[1, 2]], [[3, 4]]]])                       # (1, 2, 1, 2)
    w = np.array([[[[1, 1]]], [[[1, -1]]]])                     # (2, 1, 1, 2)
    assert R.conv2d(x, w, None, 1, 0, 1, 2, I(3, False), I(2, True)).tolist() == [[[[3]], [[-1]]]]


def test_bipolar_padding_contributes_zero():
    """Bipolar x bipolar 3x3, pad 1, all inputs and weights +1: a corner window has 4 taps
    inside, an edge one 6, the centre 9 (padding is neither +1 nor -1: it adds 0)."""
    x = np.ones((1, 1, 3, 3), dtype=np.int64)
    w = np.ones((1, 1, 3, 3), dtype=np.int64)
    y = R.conv2d(x, w, None, 1, 1, 1, 1, I(1, True), I(1, True))
    assert y.tolist() == [[[[4, 6, 4], [6, 9, 6], [4, 6, 4]]]]
    # all -1 inputs: products +-1 only inside; a corner with weights -1 gives +4
    y = R.conv2d(-x, -w, None, 1, 1, 1, 1, I(1, True), I(1, True))
    assert y[0, 0, 0, 0] == 4
    # the centre tap equals §8's xnor-popcount over the 9 taps (all inside)
    rng = np.random.default_rng(0)
    xs = rng.choice([-1, 1], size=(1, 1, 3, 3))
    ws = rng.choice([-1, 1], size=(1, 1, 3, 3))
    c = R.conv2d(xs, ws, None, 1, 1, 1, 1, I(1, True), I(1, True))[0, 0, 1, 1]
    assert c == int(R.xnor_popcount(R.pack_bipolar(xs.reshape(1, 9)), R.pack_bipolar(ws.reshape(1, 9)), 9)[0, 0])


@pytest.mark.parametrize("kwargs, msg", [
    (dict(groups=3), "groups=3"),
    (dict(stride=0), "stride"),
    (dict(dilation=(1, 0)), "dilation"),
    (dict(pad=(1, 2, 3)), "pad"),
    (dict(pad=-1), "pad"),
    (dict(w_type=I(4, False)), "signed or bipolar"),
    (dict(x_type=I(1, False)), "bipolar"),
    (dict(bias=np.zeros(3, np.int64)), "bias shape"),
    (dict(bias=np.array([2**31, 0])), "int32"),
])
def test_conv2d_rejects(kwargs, msg):
    x = np.zeros((1, 2, 4, 4), dtype=np.int64)
    w = np.zeros((2, 2, 3, 3), dtype=np.int64)
    args = dict(bias=None, stride=1, pad=0, dilation=1, groups=1, x_type=I(8, False), w_type=I(4, True))
    args.update(kwargs)
    with pytest.raises(ValueError, match=msg) as e:
        R.conv2d(x, w, **args)
    assert str(e.value).startswith("conv2d: ")


def test_conv2d_rejects_codes_and_sizes():
    with pytest.raises(ValueError, match="conv2d"):
        R.conv2d(np.full((1, 1, 3, 3), 300), np.ones((1, 1, 1, 1)), x_type=I(8, False))
    with pytest.raises(ValueError, match="larger than the padded input"):
        R.conv2d(np.zeros((1, 1, 2, 2)), np.ones((1, 1, 3, 3), np.int64))
