"""Pre-quantized ONNX models: the quantization converters and the fold_qdq pass against
onnxruntime.

Per op: models built with onnx.helper at several zero points and types, run by onnxruntime and
by slimc's interpreter (and by slimc.compile once the int8 kernels exist: until then those
checks skip, saying the backend has no lowering). Requantized outputs may differ from
onnxruntime by one quantization step (a tie rounded the other way); integer and dequantized
outputs must be exact. Then whole models quantized by onnxruntime.quantization (QDQ static
per channel, and dynamic) imported by slimc: after the standard pipeline they hold
conv_integer / matmul_integer, and agree with onnxruntime on the same file.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import slimc
from slimc.ir import UnsupportedError
from slimc.passes import PassManager, standard_pipeline
from slimc.passes.fold_qdq import FoldQDQ, explain_qdq

from .oracle import make_model, run_onnxruntime

RNG = np.random.default_rng(0)


# ----- helpers ---------------------------------------------------------------------------------

def _interp(model, feeds: dict) -> list:
    graph = slimc.from_onnx(model)
    slimc.ir.verify(graph)
    return slimc.interpret(graph, **feeds)


def _compiled(model, feeds: dict) -> list:
    """slimc.compile's answer; a skip (with the backend's reason) while int8 kernels are
    missing."""
    try:
        mod = slimc.compile(model)
    except UnsupportedError as e:
        if "no lowering" in str(e):
            pytest.skip(f"int8 kernels not there yet: {e}")
        raise
    out = mod(**feeds)
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _steps(a: np.ndarray, e: np.ndarray) -> int:
    assert a.shape == e.shape and a.dtype == e.dtype, (a.shape, a.dtype, e.shape, e.dtype)
    return int(np.abs(a.astype(np.int64) - e.astype(np.int64)).max()) if a.size else 0


def _check(model, feeds: dict, tolerance_steps: int = 0, compiled: bool = True) -> None:
    """slimc's interpreter (and compile, where it can) against onnxruntime: integer outputs
    within `tolerance_steps`, float outputs exactly."""
    expected = run_onnxruntime(model, feeds)
    runs = [("interpreter", _interp)] + ([("compiled", _compiled)] if compiled else [])
    for how, run in runs:
        got = run(model, feeds)
        assert len(got) == len(expected)
        for i, (a, e) in enumerate(zip(got, expected)):
            a, e = np.asarray(a), np.asarray(e)
            if e.dtype.kind in "iu":
                assert _steps(a, e) <= tolerance_steps, f"{how} output {i}:\n{a}\n{e}"
            else:
                assert a.dtype == e.dtype and a.shape == e.shape
                np.testing.assert_array_equal(a, e, err_msg=f"{how} output {i}")


def _q(dtype, shape):
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, shape).astype(dtype)


def _x_with_ties(shape, scale):
    """Floats including exact halves of the scale (ties) and values past the type's range."""
    x = RNG.standard_normal(shape).astype(np.float32) * np.float32(scale * 100)
    flat = x.reshape(-1)
    k = min(flat.size, 8)
    flat[:k] = (np.arange(k, dtype=np.float32) - 3.5) * np.float32(scale)
    return x


# ----- QuantizeLinear / DequantizeLinear -------------------------------------------------------

QZP = [(np.uint8, 0), (np.uint8, 128), (np.uint8, 255), (np.int8, -128), (np.int8, 0),
       (np.int8, 7)]


@pytest.mark.parametrize("opset", [10, 13, 19, 21])
@pytest.mark.parametrize("dtype,zp", QZP)
def test_quantize_linear_per_tensor(opset, dtype, zp):
    scale = np.float32(0.05)
    m = make_model([helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q")],
                   {"x": np.zeros((2, 3, 4), np.float32)}, ["y"],
                   {"s": scale, "z": np.asarray(zp, dtype)}, opset=opset)
    _check(m, {"x": _x_with_ties((2, 3, 4), scale)})


@pytest.mark.parametrize("opset", [10, 13, 21])
def test_quantize_linear_default_zero_point_is_uint8(opset):
    m = make_model([helper.make_node("QuantizeLinear", ["x", "s"], ["y"])],
                   {"x": np.zeros(7, np.float32)}, ["y"], {"s": np.float32(0.1)}, opset=opset)
    _check(m, {"x": _x_with_ties((7,), 0.1)})


def test_quantize_linear_output_dtype_int8_without_zero_point():
    m = make_model([helper.make_node("QuantizeLinear", ["x", "s"], ["y"],
                                     output_dtype=TensorProto.INT8)],
                   {"x": np.zeros(9, np.float32)}, ["y"], {"s": np.float32(0.02)}, opset=21)
    out = _interp(m, {"x": _x_with_ties((9,), 0.02)})[0]
    assert out.dtype == np.int8
    _check(m, {"x": _x_with_ties((9,), 0.02)})


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8])
def test_quantize_and_dequantize_per_axis(axis, dtype):
    shape = (3, 4, 5)
    c = shape[axis]
    scale = (RNG.random(c) * 0.1 + 0.01).astype(np.float32)
    zp = _q(dtype, (c,))
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], axis=axis),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], axis=axis)]
    m = make_model(nodes, {"x": np.zeros(shape, np.float32)}, ["q", "y"],
                   {"s": scale, "z": zp}, opset=13)
    _check(m, {"x": RNG.standard_normal(shape).astype(np.float32)})


@pytest.mark.parametrize("opset", [10, 13, 19, 21])
@pytest.mark.parametrize("dtype,zp", QZP + [(np.int32, 0)])
def test_dequantize_linear(opset, dtype, zp):
    x = _q(dtype, (2, 6)) if dtype != np.int32 else \
        RNG.integers(-10 ** 6, 10 ** 6, (2, 6)).astype(np.int32)
    inits = {"s": np.float32(0.037), "z": np.asarray(zp, dtype)}
    m = make_model([helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"])],
                   {"x": x}, ["y"], inits, opset=opset)
    _check(m, {"x": x})


def test_dequantize_linear_float16_scale():
    x = _q(np.uint8, (3, 4))
    m = make_model([helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"])], {"x": x},
                   ["y"], {"s": np.float16(0.0123), "z": np.uint8(17)}, opset=19)
    _check(m, {"x": x}, compiled=False)


def test_blocked_quantization_matches_onnx_reference():
    from onnx.reference import ReferenceEvaluator

    x = RNG.standard_normal((3, 5)).astype(np.float32)
    scale = (RNG.random((3, 3)) * 0.1 + 0.01).astype(np.float32)
    nodes = [helper.make_node("QuantizeLinear", ["x", "s"], ["q"], axis=1, block_size=2,
                              output_dtype=TensorProto.INT8),
             helper.make_node("DequantizeLinear", ["q", "s"], ["y"], axis=1, block_size=2)]
    m = make_model(nodes, {"x": x, "s": scale}, ["q", "y"], opset=21)
    expected = ReferenceEvaluator(m).run(None, {"x": x, "s": scale})
    got = _interp(m, {"x": x, "s": scale})
    np.testing.assert_array_equal(got[0], expected[0])
    np.testing.assert_array_equal(got[1], expected[1])


@pytest.mark.parametrize("what,node,inits", [
    ("int16", helper.make_node("QuantizeLinear", ["x", "s", "z"], ["y"], name="q16"),
     {"s": np.float32(0.1), "z": np.int16(0)}),
    ("uint16", helper.make_node("DequantizeLinear", ["x16", "s"], ["y"], name="dq16"),
     {"s": np.float32(0.1), "x16": np.zeros(4, np.uint16)}),
    ("int4", helper.make_node("QuantizeLinear", ["x", "s"], ["y"], name="q4",
                              output_dtype=TensorProto.INT4), {"s": np.float32(0.1)}),
    ("float8", helper.make_node("QuantizeLinear", ["x", "s"], ["y"], name="q8",
                                output_dtype=TensorProto.FLOAT8E4M3FN), {"s": np.float32(0.1)}),
])
def test_unrepresentable_types_are_refused_naming_the_node(what, node, inits):
    m = make_model([node], {"x": np.zeros(4, np.float32)}, ["y"], inits, opset=21)
    with pytest.raises(UnsupportedError) as e:
        slimc.from_onnx(m)
    msg = str(e.value)
    assert node.name in msg and ("not supported" in msg), msg


# ----- DynamicQuantizeLinear -----------------------------------------------------------------

@pytest.mark.parametrize("kind", ["normal", "positive", "negative", "zeros", "wide"])
def test_dynamic_quantize_linear(kind):
    x = RNG.standard_normal((3, 17)).astype(np.float32)
    x = {"normal": x, "positive": np.abs(x) + 0.5, "negative": -np.abs(x) - 0.5,
         "zeros": np.zeros_like(x), "wide": x * 1e4}[kind].astype(np.float32)
    m = make_model([helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])],
                   {"x": x}, ["y", "s", "z"], opset=11)
    _check(m, {"x": x})


# ----- integer matmul / conv -------------------------------------------------------------------

@pytest.mark.parametrize("ta,tb", [(np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.int8)])
def test_matmul_integer(ta, tb):
    a, b = _q(ta, (5, 7)), _q(tb, (7, 3))
    m = make_model([helper.make_node("MatMulInteger", ["a", "b", "za", "zb"], ["y"])],
                   {"a": a}, ["y"], {"b": b, "za": np.asarray(3, ta), "zb": _q(tb, (3,))})
    _check(m, {"a": a})


@pytest.mark.parametrize("pads,strides,group", [([0, 0, 0, 0], [1, 1], 1),
                                                ([1, 1, 1, 1], [1, 1], 1),
                                                ([1, 0, 2, 1], [2, 1], 1),
                                                ([1, 1, 1, 1], [1, 1], 2)])
@pytest.mark.parametrize("xzp", [0, 77, 255])
def test_conv_integer(pads, strides, group, xzp):
    x, w = _q(np.uint8, (2, 4, 6, 5)), _q(np.uint8, (6, 4 // group, 3, 3))
    node = helper.make_node("ConvInteger", ["x", "w", "zx", "zw"], ["y"], pads=pads,
                            strides=strides, group=group)
    m = make_model([node], {"x": x}, ["y"], {"w": w, "zx": np.uint8(xzp), "zw": np.uint8(9)},
                   opset=10)
    _check(m, {"x": x})


@pytest.mark.parametrize("kernel,strides,dilations,pads", [
    ((3, 3), (1, 1), (1, 1), (1, 1, 1, 1)), ((3, 3), (2, 2), (1, 1), (1, 1, 1, 1)),
    ((3, 3), (1, 2), (2, 1), (2, 0, 1, 2)), ((1, 3), (1, 1), (1, 3), (0, 3, 0, 3)),
    ((5, 5), (2, 2), (1, 1), (2, 2, 2, 2)), ((3, 4), (2, 1), (1, 1), (0, 1, 2, 2))])
@pytest.mark.parametrize("width", [7, 16, 37])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_conv_integer(kernel, strides, dilations, pads, width, multiplier):
    """Depthwise int8 convolutions (group = channels) of every width class against
    onnxruntime, exactly: rows of taps per dword (3x3, 1x3 dilated, 3x4), four taps per
    dword (5x5), both strides, padding with the activation's zero point."""
    c = 5
    x = _q(np.uint8, (1, c, 9, width))
    w = _q(np.int8, (c * multiplier, 1) + kernel)
    node = helper.make_node("ConvInteger", ["x", "w", "zx", "zw"], ["y"], group=c,
                            pads=list(pads), strides=list(strides), dilations=list(dilations))
    m = make_model([node], {"x": x}, ["y"], {"w": w, "zx": np.uint8(131), "zw": np.int8(0)},
                   opset=10)
    _check(m, {"x": x})


def _qlinear_matmul(ta, tb, per_column, shape_a, opset=10):
    a, b = _q(ta, shape_a), _q(tb, (shape_a[-1], 6))
    inits = {"sa": np.float32(0.023), "za": np.asarray(11, ta), "b": b,
             "sb": (RNG.random(6) * 0.02 + 0.005).astype(np.float32) if per_column
             else np.float32(0.017),
             "zb": np.zeros(6 if per_column else (), tb) if tb == np.int8 else np.asarray(130, tb),
             "sy": np.float32(0.09), "zy": np.asarray(100 if ta == np.uint8 else -3, ta)}
    node = helper.make_node("QLinearMatMul", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"])
    return make_model([node], {"a": a}, ["y"], inits, opset=opset), {"a": a}


@pytest.mark.parametrize("ta,tb", [(np.uint8, np.int8), (np.uint8, np.uint8), (np.int8, np.int8)])
@pytest.mark.parametrize("per_column", [False, True])
@pytest.mark.parametrize("shape_a", [(5, 9), (2, 3, 9)])
def test_qlinear_matmul(ta, tb, per_column, shape_a):
    m, feeds = _qlinear_matmul(ta, tb, per_column, shape_a)
    _check(m, feeds, tolerance_steps=1)


@pytest.mark.parametrize("wdt", [np.int8, np.uint8])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("pads,strides,group", [([1, 1, 1, 1], [1, 1], 1),
                                                ([0, 1, 0, 1], [2, 2], 2)])
def test_qlinear_conv(wdt, per_channel, bias, pads, strides, group):
    m_out, c = 4, 4
    x = _q(np.uint8, (1, c, 7, 6))
    w = _q(wdt, (m_out, c // group, 3, 3))
    inits = {"sx": np.float32(0.02), "zx": np.uint8(128), "w": w,
             "sw": (RNG.random(m_out) * 0.01 + 0.002).astype(np.float32) if per_channel
             else np.float32(0.004),
             "zw": np.asarray(0 if wdt == np.int8 else 120, wdt),
             "sy": np.float32(0.15), "zy": np.uint8(60)}
    names = ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy"]
    if bias:
        inits["b"] = RNG.integers(-5000, 5000, m_out).astype(np.int32)
        names.append("b")
    node = helper.make_node("QLinearConv", names, ["y"], pads=pads, strides=strides, group=group)
    m = make_model([node], {"x": x}, ["y"], inits, opset=10)
    _check(m, {"x": x}, tolerance_steps=1)


# ----- fold_qdq --------------------------------------------------------------------------------

def _qdq_conv_model(per_channel_act=False, bias="float", group=1):
    w = _q(np.int8, (4, 4 // group, 3, 3))
    sw = (RNG.random(4) * 0.01 + 0.001).astype(np.float32)
    inits = {"sx": np.full(4, 0.02, np.float32) if per_channel_act else np.float32(0.02),
             "zx": np.full(4, 120, np.uint8) if per_channel_act else np.uint8(120),
             "w": w, "sw": sw, "zw": np.zeros(4, np.int8)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["qx"]),
             helper.make_node("DequantizeLinear", ["qx", "sx", "zx"], ["dx"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["dw"], axis=0)]
    conv_in = ["dx", "dw"]
    if bias == "float":
        inits["b"] = RNG.standard_normal(4).astype(np.float32)
        conv_in.append("b")
    elif bias == "int32":
        inits["bq"] = RNG.integers(-3000, 3000, 4).astype(np.int32)
        inits["bs"] = (np.float32(0.02) * sw).astype(np.float32)
        nodes.append(helper.make_node("DequantizeLinear", ["bq", "bs"], ["b"], axis=0))
        conv_in.append("b")
    nodes.append(helper.make_node("Conv", conv_in, ["y"], name="conv1", pads=[1, 1, 1, 1],
                                  group=group))
    return make_model(nodes, {"x": np.zeros((1, 4, 6, 6), np.float32)}, ["y"], inits, opset=13)


def _optimized(model):
    g = slimc.from_onnx(model)
    before = g.clone()
    PassManager(standard_pipeline(), verify=True).run(g)
    return before, g


def _ops(graph) -> list:
    return [n.op for n in graph.nodes]


@pytest.mark.parametrize("bias,group", [("none", 1), ("float", 1), ("int32", 1), ("float", 2)])
def test_fold_qdq_conv(bias, group):
    before, after = _optimized(_qdq_conv_model(bias=bias, group=group))
    assert "conv_integer" in _ops(after) and "conv" not in _ops(after), after
    if bias == "int32":  # the bias joins the int32 accumulator, not the float result
        acc_add = [n for n in after.nodes if n.op == "add"]
        assert acc_add and acc_add[0].outputs[0].type.dtype == slimc.dtypes.i32, after
    x = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    np.testing.assert_allclose(slimc.interpret(after, x)[0], slimc.interpret(before, x)[0],
                               rtol=1e-5, atol=1e-5)


def test_fold_qdq_keeps_float_conv_and_says_why(capfd, monkeypatch):
    g = slimc.from_onnx(_qdq_conv_model(per_channel_act=True))
    lines = explain_qdq(g)
    assert any("conv1" in l and "not per tensor" in l for l in lines), lines
    monkeypatch.setenv("SLIMC_DEBUG", "quant")
    assert not FoldQDQ().run(g)
    err = capfd.readouterr().err
    assert "[slimc:quant]" in err and "stays float" in err and "not per tensor" in err, err
    assert "conv" in _ops(g) and "conv_integer" not in _ops(g)


def _qdq_dense_model(op, trans_b=0, alpha=1.0, beta=1.0, zero_point=0):
    k, n = 8, 5
    w = _q(np.int8, (n, k) if trans_b else (k, n))
    axis = 0 if trans_b else 1
    inits = {"sx": np.float32(0.03), "zx": np.uint8(128), "w": w,
             "sw": (RNG.random(n) * 0.01 + 0.001).astype(np.float32),
             "zw": np.full(n, zero_point, np.int8), "c": RNG.standard_normal(n).astype(np.float32)}
    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["qx"]),
             helper.make_node("DequantizeLinear", ["qx", "sx", "zx"], ["dx"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["dw"], axis=axis)]
    if op == "MatMul":
        nodes.append(helper.make_node("MatMul", ["dx", "dw"], ["y"], name="mm"))
    else:
        nodes.append(helper.make_node("Gemm", ["dx", "dw", "c"], ["y"], name="gemm",
                                      transB=trans_b, alpha=alpha, beta=beta))
    return make_model(nodes, {"x": np.zeros((3, k), np.float32)}, ["y"], inits, opset=13)


@pytest.mark.parametrize("op,trans_b,alpha,beta,zp", [
    ("MatMul", 0, 1.0, 1.0, 0), ("MatMul", 0, 1.0, 1.0, 3), ("Gemm", 0, 1.0, 1.0, 0),
    ("Gemm", 1, 1.0, 1.0, 0), ("Gemm", 1, 0.5, 2.0, -2)])
def test_fold_qdq_matmul_and_gemm(op, trans_b, alpha, beta, zp):
    before, after = _optimized(_qdq_dense_model(op, trans_b, alpha, beta, zp))
    ops = _ops(after)
    assert "matmul_integer" in ops and "matmul" not in ops and "gemm" not in ops, after
    x = RNG.standard_normal((3, 8)).astype(np.float32)
    np.testing.assert_allclose(slimc.interpret(after, x)[0], slimc.interpret(before, x)[0],
                               rtol=1e-5, atol=1e-5)


def test_fold_qdq_refuses_a_weight_quantized_along_the_wrong_axis():
    m = _qdq_dense_model("MatMul")
    m.graph.node[2].attribute[0].i = 0  # per row of the [K, N] weight: not per output column
    sw = onnx.numpy_helper.from_array(np.full(8, 0.01, np.float32), "sw")
    m.graph.initializer[3].CopyFrom(sw)
    m.graph.initializer[4].CopyFrom(onnx.numpy_helper.from_array(np.zeros(8, np.int8), "zw"))
    g = slimc.from_onnx(m)
    lines = explain_qdq(g)
    assert any("per output column" in l for l in lines), lines
    assert not FoldQDQ().run(g)


# ----- models quantized by onnxruntime ---------------------------------------------------------

def _float_cnn():
    c1 = (RNG.standard_normal((8, 3, 3, 3)) * 0.3).astype(np.float32)
    c2 = (RNG.standard_normal((8, 8, 3, 3)) * 0.15).astype(np.float32)
    fc = (RNG.standard_normal((10, 8 * 4 * 4)) * 0.05).astype(np.float32)
    inits = {"c1": c1, "b1": RNG.standard_normal(8).astype(np.float32) * 0.1, "c2": c2,
             "b2": RNG.standard_normal(8).astype(np.float32) * 0.1, "fc": fc,
             "fb": RNG.standard_normal(10).astype(np.float32) * 0.1,
             "shape": np.array([1, -1], np.int64)}
    nodes = [helper.make_node("Conv", ["x", "c1", "b1"], ["h1"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h1"], ["r1"]),
             helper.make_node("Conv", ["r1", "c2", "b2"], ["h2"], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node("Relu", ["h2"], ["r2"]),
             helper.make_node("Reshape", ["r2", "shape"], ["f"]),
             helper.make_node("Gemm", ["f", "fc", "fb"], ["y"], transB=1)]
    return make_model(nodes, {"x": np.zeros((1, 3, 8, 8), np.float32)}, ["y"], inits, opset=13), \
        (1, 3, 8, 8)


def _float_mlp():
    inits = {"w1": (RNG.standard_normal((16, 32)) * 0.25).astype(np.float32),
             "b1": RNG.standard_normal(32).astype(np.float32) * 0.1,
             "w2": (RNG.standard_normal((32, 8)) * 0.2).astype(np.float32),
             "b2": RNG.standard_normal(8).astype(np.float32) * 0.1}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"]),
             helper.make_node("Add", ["m1", "b1"], ["a1"]),
             helper.make_node("Relu", ["a1"], ["r1"]),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"]),
             helper.make_node("Add", ["m2", "b2"], ["y"])]
    return make_model(nodes, {"x": np.zeros((4, 16), np.float32)}, ["y"], inits, opset=13), (4, 16)


def _fix_outputs(model):
    """onnxruntime.quantization wants typed graph outputs: infer them."""
    return onnx.shape_inference.infer_shapes(model)


def _quantized(tmp_path, build, mode):
    from onnxruntime.quantization import (CalibrationDataReader, QuantFormat, QuantType,
                                          quantize_dynamic, quantize_static)

    model, shape = build()
    src, dst = tmp_path / "float.onnx", tmp_path / f"{mode}.onnx"
    onnx.save(_fix_outputs(model), str(src))
    if mode == "dynamic":
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8)
    else:
        class Reader(CalibrationDataReader):
            def __init__(self):
                rng = np.random.default_rng(1)
                self.data = iter([{"x": rng.standard_normal(shape).astype(np.float32)}
                                  for _ in range(16)])

            def get_next(self):
                return next(self.data, None)

        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8)
    return onnx.load(str(dst)), shape


def _cosine(a, b) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("build,mode,integer_op,float_op", [
    (_float_cnn, "static", "conv_integer", "conv"),
    (_float_mlp, "static", "matmul_integer", "matmul"),
    (_float_mlp, "dynamic", "matmul_integer", "matmul"),
    (_float_cnn, "dynamic", "conv_integer", "conv"),
])
def test_onnxruntime_quantized_models(tmp_path, build, mode, integer_op, float_op):
    pytest.importorskip("onnxruntime.quantization")
    model, shape = _quantized(tmp_path, build, mode)
    graph = slimc.from_onnx(model)
    PassManager(standard_pipeline(), verify=True).run(graph)
    ops = _ops(graph)
    assert integer_op in ops, graph
    dequantized_weights = [n for n in graph.nodes if n.op in ("conv", "matmul", "gemm") and
                           any(v is not None and v.producer is not None and
                               v.producer.op == "dequantize" for v in n.inputs)]
    assert not dequantized_weights, explain_qdq(graph)
    if build is _float_cnn and mode == "static":
        assert float_op not in ops and "gemm" not in ops, graph
    x = np.random.default_rng(7).standard_normal(shape).astype(np.float32)
    expected = run_onnxruntime(model, {"x": x})[0]
    got = slimc.interpret(graph, x)[0]
    assert got.shape == expected.shape
    assert _cosine(got, expected) >= 0.99
    compiled = _compiled(model, {"x": x})[0]  # last: skips while a kernel is missing
    assert _cosine(compiled, expected) >= 0.99


@pytest.mark.parametrize("dtype,zp", QZP)
def test_quantize_of_nan_inf_and_huge_values_matches_the_reference(dtype, zp):
    """The compiled quantize (clamped before it rounds, on x86) against slimc's reference:
    NaN to the lowest value, infinities and values past 2**31 saturated, ties to even, in
    vector lanes and the scalar tail (37 values)."""
    from slimc.ir import interpret, parse

    name = np.dtype(dtype).name.replace("uint", "u").replace("int", "i")
    g = parse(f"""# slimc-ir v1
graph @q(%x: f32[37]) -> ({name}[37]) {{
  const %s: f32[] = [0.05]
  const %z: {name}[] = [{zp}]
  %y = quantize(%x, %s, %z) : {name}[37]
  return %y
}}
""")
    x = _x_with_ties((37,), 0.05)
    x[8:16] = [np.nan, np.inf, -np.inf, 1e30, -1e30, 3e9, -3e9, 2.0 ** 31]
    x[30:] = [np.nan, np.inf, -np.inf, 6.3e9, -0.0, 0.025, 0.075]  # in the tail
    np.testing.assert_array_equal(slimc.compile(g)(x)[0], interpret(g, x)[0])


@pytest.mark.parametrize("scale", [0.01, 0.03, 0.0235294])
@pytest.mark.parametrize("zp", [0, 3])
@pytest.mark.parametrize("lo,hi", [(0.0, 6.0), (6.0, -2.0)])
def test_quantize_after_clip_skips_only_clamps_that_cannot_bite(scale, zp, lo, hi):
    """clip(0, 6) of a value that cannot be NaN (from integers), then quantize: with scale
    0.03 (6 / s = 200) no clamp can bite and none is emitted, with 0.01 (600) the upper one
    stays, and with 0.0235294 (255.0001) too; a clip whose bounds cross claims no range.
    Results against slimc's reference, exactly."""
    from slimc.ir import interpret, parse

    g = parse(f"""# slimc-ir v1
graph @q(%x: i32[50]) -> (u8[50]) {{
  const %step: f32[] = [0.0625]
  const %lo: f32[] = [{lo}]
  const %hi: f32[] = [{hi}]
  const %s: f32[] = [{scale}]
  const %z: u8[] = [{zp}]
  %f = cast(%x) {{to=f32}} : f32[50]
  %a = mul(%f, %step) : f32[50]
  %c = clip(%a, %lo, %hi) : f32[50]
  %q = quantize(%c, %s, %z) : u8[50]
  return %q
}}
""")
    x = np.arange(-100, 150, 5).astype(np.int32)
    mod = slimc.compile(g)
    np.testing.assert_array_equal(mod(x)[0], interpret(g, x)[0])
    upper_can_bite = np.float32(6.0) / np.float32(scale) > 255 - zp  # 0.0235294: 255.0001
    if lo <= hi:  # (clip(x, 6, -2) is -2 everywhere: LLVM folds it; the values are checked)
        assert ("clamped" in mod.llvm_ir) == bool(upper_can_bite)


@pytest.mark.parametrize("c,k", [(320, 1), (32, 3), (24, 3)])
def test_conv_integer_narrow_rows_pixels_as_tile_rows(c, k):
    """Output rows narrower than a vector (7 columns) with K = c*k*k products per result:
    K >= 256 with no epilogue runs pixels as the tile rows (320, 288), K = 216 does not."""
    x, w = _q(np.uint8, (1, c, 5, 7)), _q(np.int8, (40, c, k, k))
    node = helper.make_node("ConvInteger", ["x", "w", "zx", "zw"], ["y"],
                            pads=[k // 2] * 4)
    m = make_model([node], {"x": x}, ["y"], {"w": w, "zx": np.uint8(17), "zw": np.int8(0)},
                   opset=10)
    _check(m, {"x": x})


@pytest.mark.parametrize("hw", [(7, 7), (5, 3), (4, 15)])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_qlinear_conv_1x1_narrow_rows_as_one_row_of_pixels(hw, threads):
    """A 1x1 stride-1 QLinearConv with output rows narrower than a vector runs as one row of
    the plane's pixels, its work split by blocks of output channels (40: 7 tiles of 6 rows
    and a remainder); the requantizing epilogue indexes the real (row, column). Against
    slimc's reference exactly, at 1, 2 and 3 threads."""
    c, m_out = 160, 40
    x = _q(np.uint8, (1, c) + hw)
    inits = {"sx": np.float32(0.02), "zx": np.uint8(3), "w": _q(np.int8, (m_out, c, 1, 1)),
             "sw": (RNG.random(m_out) * 0.01 + 0.002).astype(np.float32),
             "zw": np.zeros(m_out, np.int8), "sy": np.float32(0.5), "zy": np.uint8(60),
             "b": RNG.integers(-5000, 5000, m_out).astype(np.int32)}
    node = helper.make_node("QLinearConv", ["x", "sx", "zx", "w", "sw", "zw", "sy", "zy", "b"],
                            ["y"])
    m = make_model([node], {"x": x}, ["y"], inits, opset=10)
    want = slimc.interpret(slimc.from_onnx(m), x)[0]
    np.testing.assert_array_equal(slimc.compile(m, threads=threads)(x)[0], want)
