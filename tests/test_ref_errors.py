"""Bad input: every public function of the reference raises ``ValueError`` whose
message starts with the op's name (§0: "An op given anything else raises
ValueError naming the op and the offending value")."""
import numpy as np
import pytest

from codesign.sim import reference as ref
from codesign.sim.reference import IntType

I4, I8, U8 = IntType(4, True), IntType(8, True), IntType(8, False)
X44 = np.zeros((1, 1, 4, 4), dtype=np.int64)


def _ln_params(H):
    return ref.layernorm_params(np.ones(H), np.zeros(H), 0.0, 1.0, 1.0)


CASES = {
    "IntType": [
        lambda: IntType(0),
        lambda: IntType(33, False),
    ],
    "int_range": [
        lambda: ref.int_range(0, True),
        lambda: ref.int_range(33, False),
    ],
    "sat": [
        lambda: ref.sat([1, 2], 5, 3),             # lo > hi
        lambda: ref.sat([1.5], 0, 3),              # not integer codes
    ],
    "rshr": [
        lambda: ref.rshr([1], -1),
        lambda: ref.rshr([1], 63),
        lambda: ref.rshr([1.5], 1),
    ],
    "quantize": [
        lambda: ref.quantize([1.0], 1.0, 0),
        lambda: ref.quantize([1.0], 1.0, 17),
        lambda: ref.quantize([1.0], 0.0, 8),
        lambda: ref.quantize([1.0], -1.0, 8),
        lambda: ref.quantize([1.0], np.nan, 8),
        lambda: ref.quantize([1.0], np.inf, 8),
        lambda: ref.quantize([np.nan], 1.0, 8),
        lambda: ref.quantize([np.inf], 1.0, 8),
        lambda: ref.quantize([1.0], 1.0, 8, rounding="NEAREST"),
        lambda: ref.quantize([1.0], 1.0, 8, zero_point=1),
        lambda: ref.quantize(np.zeros((2, 3)), np.ones(2), 8),   # scale does not broadcast
    ],
    "dequantize": [
        lambda: ref.dequantize([1.5], 1.0),
        lambda: ref.dequantize([1], 0.0),
        lambda: ref.dequantize([1], -2.0),
    ],
    "acc_range": [
        lambda: ref.acc_range(0, U8, I4),
        lambda: ref.acc_range(4, IntType(9), I4),
        lambda: ref.acc_range(4, U8, IntType(9)),
        lambda: ref.acc_range(4, U8, I4, 5, -5),    # bias_lo > bias_hi
    ],
    "acc_bits": [
        lambda: ref.acc_bits(0, U8, I4),
        lambda: ref.acc_bits(4, IntType(9), I4),
        lambda: ref.acc_bits(4, U8, I4, 5, -5),
    ],
    "matmul": [
        lambda: ref.matmul(np.zeros((2, 3)), np.zeros((4, 2))),            # K mismatch
        lambda: ref.matmul(np.zeros((2, 3)), np.zeros((3, 2)), np.zeros(3)),  # bias shape
        lambda: ref.matmul(np.zeros((2, 3)), np.zeros((3, 2)), [2**31, 0]),   # bias beyond int32
        lambda: ref.matmul(np.zeros(3), np.zeros(3)),                        # w not 2-D
        lambda: ref.matmul(np.full((1, 3), 256), np.zeros((3, 1)), None, U8, I4),  # a outside uint8
        lambda: ref.matmul(np.zeros((1, 3)), np.full((3, 1), 8), None, U8, I4),    # w outside int4
        lambda: ref.matmul(np.zeros((1, 3)), np.zeros((3, 1)), None, IntType(9, False), I4),
        lambda: ref.matmul(np.zeros((1, 3)), np.zeros((3, 1)), None, U8, IntType(9, True)),
        lambda: ref.matmul(np.zeros((1, 3)), np.zeros((3, 1)), None, IntType(1, False), I4),  # 1-bit unsigned
        lambda: ref.matmul(np.zeros((1, 3)), np.zeros((3, 1)), None, U8, IntType(1, True)),   # 0 not bipolar
        lambda: ref.matmul(np.zeros((1, 3)), np.zeros((3, 1)), None, U8, IntType(4, False)),  # unsigned weights
        lambda: ref.matmul(np.full((1, 3), 0.5), np.zeros((3, 1))),                           # not codes
        lambda: ref.matmul(np.zeros((2, 0)), np.zeros((0, 3))),                               # K = 0
        lambda: ref.matmul(np.zeros((1, 3)), ref.exact_weights(np.zeros((3, 1), np.int8), I4), None, U8,
                           IntType(8, True)),                                                 # prepared as int4
    ],
    "exact_weights": [
        lambda: ref.exact_weights(np.full((3, 1), 8), I4),                 # outside int4
        lambda: ref.exact_weights(np.zeros((3, 1)), IntType(4, False)),    # unsigned weights
        lambda: ref.exact_weights(np.full((3, 1), 0.5), I4),               # not codes
    ],
    "dyadic": [
        lambda: ref.dyadic(0.0),
        lambda: ref.dyadic(-1.0),
        lambda: ref.dyadic(np.nan),
        lambda: ref.dyadic(np.inf),
        lambda: ref.dyadic(2.0**16),
        lambda: ref.dyadic(1.0, m=1),
        lambda: ref.dyadic(1.0, m=25),
        lambda: ref.dyadic([]),
    ],
    "requant": [
        lambda: ref.requant([1], 1, 1, IntType(1, True)),
        lambda: ref.requant([1], 1, 1, IntType(17, True)),
        lambda: ref.requant([1], -1, 1),
        lambda: ref.requant([1], 2**24, 1),
        lambda: ref.requant([1], 1, -1),
        lambda: ref.requant([1], 1, 63),
        lambda: ref.requant(np.ones((2, 3)), np.ones(2), np.ones(2)),   # per-channel M does not broadcast
        lambda: ref.requant([2**47], 1, 1),                             # W_acc + m > 62
        lambda: ref.requant([0.5], 1, 1),
    ],
    "lut_index": [
        lambda: ref.lut_index([1], IntType(9, True)),
        lambda: ref.lut_index([8], I4),             # outside int4
        lambda: ref.lut_index([1.5], I4),
    ],
    "lut_table": [
        lambda: ref.lut_table("nope", I4, 1.0, I8, 1.0),
        lambda: ref.lut_table("exp", I8, 100.0, I8, 1.0),   # not finite on the input range
        lambda: ref.lut_table("relu", IntType(9), 1.0, I8, 1.0),
        lambda: ref.lut_table("relu", I4, 1.0, IntType(17), 1.0),
        lambda: ref.lut_table("relu", I4, 0.0, I8, 1.0),
        lambda: ref.lut_table("relu", I4, 1.0, I8, -1.0),
    ],
    "lut": [
        lambda: ref.lut([1], np.zeros(3), I4),
        lambda: ref.lut([8], np.zeros(16), I4),
        lambda: ref.lut([0], np.zeros(2), IntType(1, True)),     # 0 is not bipolar
        lambda: ref.lut([1], np.zeros(512), IntType(9)),
    ],
    "softmax_table": [
        lambda: ref.softmax_table(IntType(1, True), 1.0),
        lambda: ref.softmax_table(IntType(9), 1.0),
        lambda: ref.softmax_table(I8, 1.0, 17),
        lambda: ref.softmax_table(I8, 1.0, 0),
        lambda: ref.softmax_table(I8, 0.0),
    ],
    "softmax": [
        lambda: ref.softmax([[1]], np.zeros(256), I8),                 # T[0] < 1
        lambda: ref.softmax([[1]], np.full(255, 255), I8),             # table shape
        lambda: ref.softmax([[1]], np.full(256, 256), I8),             # entry > 2^EB - 1
        lambda: ref.softmax([[200]], np.full(256, 255), I8),           # outside int8
        lambda: ref.softmax(np.zeros((1, 0)), np.full(256, 255), I8),  # empty row
        lambda: ref.softmax([[1]], np.full(256, 255), I8, ob=17),
        lambda: ref.softmax([[1]], np.full(256, 255), I8, eb=0),
        lambda: ref.softmax(np.zeros((1, 65538)), np.full(256, 65535), I8, eb=16),  # 65538·65535 >= 2^32
    ],
    "isqrt": [
        lambda: ref.isqrt([-1]),
        lambda: ref.isqrt([1.5]),
    ],
    "layernorm_params": [
        lambda: ref.layernorm_params([1.0, 2.0], [0.0], 0.0, 1.0, 1.0),
        lambda: ref.layernorm_params([[1.0]], [[0.0]], 0.0, 1.0, 1.0),
        lambda: ref.layernorm_params([np.nan], [0.0], 0.0, 1.0, 1.0),
        lambda: ref.layernorm_params([1.0], [0.0], -1.0, 1.0, 1.0),
        lambda: ref.layernorm_params([1.0], [0.0], np.inf, 1.0, 1.0),
        lambda: ref.layernorm_params([1.0], [0.0], 0.0, 0.0, 1.0),
        lambda: ref.layernorm_params([1.0], [0.0], 0.0, 1.0, -1.0),
        lambda: ref.layernorm_params([1.0], [0.0], 0.0, 1.0, 1.0, S=63),
        lambda: ref.layernorm_params([1.0], [0.0], 0.0, 1.0, 1.0, S=0),
        lambda: ref.layernorm_params([1e5], [0.0], 0.0, 1.0, 1.0),      # gamma/s_y too large even at S = 16
        lambda: ref.layernorm_params([1.0], [1e6], 0.0, 1.0, 1e-6),     # beta/s_y too large
        lambda: ref.layernorm_params([1.0], [0.0], 0.0, 1.0, 1.0, S=62),  # explicit S that does not fit
    ],
    "layernorm": [
        lambda: ref.layernorm(np.zeros((1, 4097)), _ln_params(4097)),
        lambda: ref.layernorm(np.full((1, 2), 2**15), _ln_params(2)),
        lambda: ref.layernorm(np.zeros((1, 3)), _ln_params(2)),          # G/B shape vs H
        lambda: ref.layernorm(np.zeros((1, 2)), _ln_params(2), IntType(9)),
        lambda: ref.layernorm(np.zeros((1, 2)), _ln_params(2), IntType(1, True)),
        lambda: ref.layernorm(np.zeros(()), _ln_params(1)),
        lambda: ref.layernorm(np.zeros((1, 2)), ref.LayerNormParams(np.ones(2), np.zeros(2), 16, -1)),
        lambda: ref.layernorm(np.zeros((1, 2)), ref.LayerNormParams(np.ones(2), np.zeros(2), 63, 0)),
        lambda: ref.layernorm(np.zeros((1, 2)), ref.LayerNormParams(np.full(2, 2**15), np.zeros(2), 16, 0)),
    ],
    "add_params": [
        lambda: ref.add_params(0.0, 1.0, 1.0),
        lambda: ref.add_params(1.0, -1.0, 1.0),
        lambda: ref.add_params(1.0, np.nan, 1.0),
        lambda: ref.add_params(1.0, 1.0, 0.0),
        lambda: ref.add_params(2.0**15, 1.0, 1.0),   # sh would be 0
    ],
    "add": [
        lambda: ref.add([1], [1], 1, 1, 1, IntType(1, True)),
        lambda: ref.add([1], [1], 1, 1, 1, I8, IntType(17)),
        lambda: ref.add([1], [1], 1, 1, 1, I8, I8, IntType(1, False)),
        lambda: ref.add([1, 2], [1, 2, 3], 1, 1, 1),       # shapes do not broadcast
        lambda: ref.add([200], [1], 1, 1, 1),              # outside int8
        lambda: ref.add([1], [1], 2**24, 1, 1),
        lambda: ref.add([1], [1], 1, -1, 1),
        lambda: ref.add([1], [1], 1, 1, 0),                # shift >= 1
    ],
    "pack_bipolar": [
        lambda: ref.pack_bipolar([0, 1]),
        lambda: ref.pack_bipolar([0.5]),
    ],
    "xnor_popcount": [
        lambda: ref.xnor_popcount(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8), 9),
        lambda: ref.xnor_popcount(np.zeros((1, 0), np.uint8), np.zeros((1, 0), np.uint8), 0),
        lambda: ref.xnor_popcount(np.zeros((1, 1), np.uint8), np.zeros((1,), np.uint8), 8),
        lambda: ref.xnor_popcount(np.zeros((1, 2), np.uint8), np.zeros((1, 1), np.uint8), 8),
    ],
    "threshold": [
        lambda: ref.threshold([[1]], [[2, 1]]),                       # not ascending
        lambda: ref.threshold([[1, 2]], [[0], [1], [2]]),             # 3 rows for 2 channels
        lambda: ref.threshold([[1]], [1, 2]),                         # not (C, n)
        lambda: ref.threshold([[1]], np.zeros((1, 0))),
        lambda: ref.threshold([[1]], [[1, 2]], bipolar=True),         # bipolar takes one threshold
        lambda: ref.threshold([[0.5]], [[1]]),
        lambda: ref.threshold(5, [[1]]),
    ],
    "bn_thresholds": [
        lambda: ref.bn_thresholds([0.0], [0], [0], [1], 0, 1.0, [0.0]),            # gamma <= 0
        lambda: ref.bn_thresholds([-1.0], [0], [0], [1], 0, 1.0, [0.0]),
        lambda: ref.bn_thresholds([1, 1], [0, 0, 0], [0, 0], [1, 1], 0, 1.0, [0.0]),  # shape mismatch
        lambda: ref.bn_thresholds([1], [0], [0], [-1], 0, 1.0, [0.0]),            # var + eps < 0
        lambda: ref.bn_thresholds([1], [0], [0], [0], 0, 1.0, [0.0]),             # var + eps = 0
        lambda: ref.bn_thresholds([1], [0], [0], [1], -5, 1.0, [0.0]),            # eps < 0
        lambda: ref.bn_thresholds([1], [0], [0], [1], 0, 0.0, [0.0]),             # scale <= 0
        lambda: ref.bn_thresholds([1], [0], [0], [1], 0, -1.0, [0.0]),
        lambda: ref.bn_thresholds([1, 1], [0, 0], [0, 0], [1, 1], 0, [1.0, 1.0, 1.0], [0.0]),  # scale shape
        lambda: ref.bn_thresholds([1], [0], [0], [1], 0, 1.0, [1.0, 0.0]),        # levels not ascending
        lambda: ref.bn_thresholds([1], [np.nan], [0], [1], 0, 1.0, [0.0]),        # not finite
        lambda: ref.bn_thresholds([1e-300], [0], [0], [1], 0, 1.0, [1.0]),        # threshold beyond int64
    ],
    "maxpool2d": [
        lambda: ref.maxpool2d(X44, 0),
        lambda: ref.maxpool2d(X44, 2, pad=2),
        lambda: ref.maxpool2d(np.zeros((4, 4)), 2),
        lambda: ref.maxpool2d(np.full((1, 1, 4, 4), 300), 2),
        lambda: ref.maxpool2d(X44, 2, in_type=IntType(17)),
        lambda: ref.maxpool2d(X44, 5),
        lambda: ref.maxpool2d(X44, 2, stride=0),
    ],
    "avgpool2d": [
        lambda: ref.avgpool2d(X44, 0, 1, 1),
        lambda: ref.avgpool2d(X44, 2, 1, 1, pad=2),
        lambda: ref.avgpool2d(np.zeros((4, 4)), 2, 1, 1),
        lambda: ref.avgpool2d(np.full((1, 1, 4, 4), 300), 2, 1, 1),
        lambda: ref.avgpool2d(np.zeros((1, 1, 2, 2)), 3, 1, 1),
        lambda: ref.avgpool2d(X44, 2, 2**24, 1),     # multiplier out of range
        lambda: ref.avgpool2d(X44, 2, 1, 63),        # shift out of range
        lambda: ref.avgpool2d(X44, 2, 1, 1, in_type=IntType(9)),
    ],
    "conv2d": [
        lambda: ref.conv2d(np.full((1, 2, 4, 4), 0.5), np.zeros((3, 2, 3, 3), np.int64)),  # x not integer codes
        lambda: ref.conv2d(X44, np.zeros((3, 2, 3, 3), np.int64)),                        # IC 1 vs 2
        lambda: ref.conv2d(np.zeros((1, 4, 4, 4), np.int64), np.zeros((3, 2, 3, 3), np.int64), groups=2),  # OC 3
        lambda: ref.conv2d(X44, np.zeros((2, 1, 5, 5), np.int64)),                         # kernel > input
        lambda: ref.conv2d(X44, np.zeros((2, 1, 3, 3), np.int64), stride=0),
        lambda: ref.conv2d(X44, np.full((2, 1, 3, 3), 9, np.int64)),                       # 9 outside int4
        lambda: ref.conv2d(np.full((1, 1, 4, 4), 256, np.int64), np.zeros((2, 1, 3, 3), np.int64)),
        lambda: ref.conv2d(X44, np.zeros((2, 1, 3, 3), np.int64), pad=-1),
    ],
    "conv_geometry": [  # a helper: its errors name the op it is called for
        lambda: ref.conv_geometry(2, 2, 3, op="conv_geometry"),  # the kernel does not fit
        lambda: ref.conv_geometry(4, 4, 3, dilation=0, op="conv_geometry"),
        lambda: ref.conv_geometry(4, 4, (3, 3, 3), op="conv_geometry"),
    ],
}


def test_every_public_function_is_covered():
    public = {n for n in ref.__all__ if callable(getattr(ref, n))} - {"IntType"}
    public.add("IntType")
    assert public <= set(CASES), sorted(public - set(CASES))


@pytest.mark.parametrize("op,idx,fn", [(op, i, fn) for op, fns in CASES.items() for i, fn in enumerate(fns)],
                         ids=[f"{op}-{i}" for op, fns in CASES.items() for i in range(len(fns))])
def test_bad_input_raises_value_error_naming_the_op(op, idx, fn):
    with pytest.raises(ValueError, match=rf"^{op}:"):
        fn()


def test_softmax_sum_width_boundary():
    """§5 requires N·(2^EB − 1) < 2^32: 65537·65535 = 2^32 − 1 is accepted, 65538 is not."""
    T = np.full(256, 65535)
    p = ref.softmax(np.zeros((1, 65537), dtype=np.int64), T, I8, eb=16, ob=16)
    # S = 2^32 - 1, R = 1, p = rshr(65535, 16) = 1
    assert np.all(p == 1)
    with pytest.raises(ValueError, match=r"^softmax:"):
        ref.softmax(np.zeros((1, 65538), dtype=np.int64), T, I8, eb=16, ob=16)
