"""Max pooling in the quantized domain (passes/fold_qdq.py): quantize(max_pool(x)) pools
the bytes where no NaN reaches x, and a quantize undoing a dequantize disappears."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import slimc
from slimc.passes.fold_qdq import FoldQDQ

from .oracle import make_model, run_onnxruntime
from .test_quant_onnx import RNG, _ops, _optimized


def _pool_model(s_out: float):
    """x -> quantize -> dequantize -> MaxPool 3x3 s2 -> quantize (scale s_out, same zero point)
    -> dequantize: onnxruntime's QDQ form of a max pool."""
    inits = {"s": np.float32(0.05), "z": np.uint8(9), "s2": np.float32(s_out)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["qx"]),
             helper.make_node("DequantizeLinear", ["qx", "s", "z"], ["dx"]),
             helper.make_node("MaxPool", ["dx"], ["p"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("QuantizeLinear", ["p", "s2", "z"], ["qp"]),
             helper.make_node("DequantizeLinear", ["qp", "s2", "z"], ["y"])]
    return make_model(nodes, {"x": np.zeros((1, 3, 9, 8), np.float32)}, ["y"], inits, opset=13)


@pytest.mark.parametrize("s_out", [0.05, 0.07])
def test_max_pool_moves_into_the_quantized_domain(s_out):
    """quantize(max_pool(dequantize(q))) pools the bytes: the max pool moves after the
    quantize (no NaN can reach it: it reads a dequantized value), and with the same scale and
    zero point the quantize of the dequantize is q itself; another scale requantizes. The
    compiled model against slimc's reference of the model as imported, exactly, and the
    onnxruntime result."""
    model = _pool_model(s_out)
    before, after = _optimized(model)
    pools = [n for n in after.nodes if n.op == "max_pool"]
    assert len(pools) == 1 and pools[0].inputs[0].type.dtype == slimc.dtypes.u8, after
    requantized = s_out != 0.05  # then dequantize -> quantize by s_out before the pool
    assert _ops(after).count("quantize") == 1 + requantized, after
    assert _ops(after).count("dequantize") == 1 + requantized, after
    x = (RNG.standard_normal((1, 3, 9, 8)) * 4).astype(np.float32)
    want = slimc.interpret(before, x)[0]
    np.testing.assert_array_equal(slimc.interpret(after, x)[0], want)
    np.testing.assert_array_equal(slimc.compile(model)(x)[0], want)
    np.testing.assert_array_equal(want, run_onnxruntime(model, {"x": x})[0])


def test_max_pool_of_a_value_that_may_be_nan_stays_before_the_quantize():
    """quantize(max_pool(x)) of a graph input stays as it is: a NaN wins the float max (and
    quantizes to the lowest value), where pooling quantized bytes would lose it."""
    from slimc.ir import interpret, parse

    g = parse("""# slimc-ir v1
graph @p(%x: f32[1, 2, 4, 4]) -> (u8[1, 2, 2, 2]) {
  const %s: f32[] = [0.1]
  const %z: u8[] = [20]
  %m = max_pool(%x) {kernel_shape=[2, 2], strides=[2, 2]} : f32[1, 2, 2, 2]
  %q = quantize(%m, %s, %z) : u8[1, 2, 2, 2]
  return %q
}
""")
    before = g.clone()
    assert not FoldQDQ().run(g)
    assert [n.op for n in g.nodes] == ["max_pool", "quantize"]
    x = np.arange(32, dtype=np.float32).reshape(1, 2, 4, 4) - 9
    x[0, 0, 0, 0] = np.nan
    want = interpret(before, x)[0]
    assert want[0, 0, 0, 0] == 0  # the NaN won and quantized to the lowest value
    np.testing.assert_array_equal(slimc.compile(before)(x)[0], want)
