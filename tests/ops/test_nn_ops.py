"""The nn family (conv, pooling, normalization, softmax, resize, depth/space): slimc's
interpreter against onnxruntime, and against onnx.reference where the two runtimes disagree
on a point the ONNX spec leaves to the reference, or where onnxruntime refuses a valid model.
Resize has a file of its own (test_resize_ops.py).

Each case is a one-node ONNX model, imported, verified and interpreted. Type inference is also
checked directly on symbolic shapes, and the converters' refusals are checked to be clear
slimc errors naming the node.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

import slimc
from slimc.ir import (ModelError, TensorType, UnsupportedError, dtypes, get_op,
                      parse, print_graph, verify)
from tests.ops.common import check, f32, infer, random_arrays
from tests.oracle import make_model

RNG = np.random.default_rng(0)
HYP = settings(max_examples=20, deadline=None, derandomize=True)


rand = random_arrays(RNG)


# ----------------------------------------------------------------------------------------------
# Conv
# ----------------------------------------------------------------------------------------------

SPATIAL = {1: (11,), 2: (9, 8), 3: (5, 6, 4)}
KERNEL = {1: (3,), 2: (3, 2), 3: (2, 3, 2)}


@pytest.mark.parametrize("nsp", [1, 2, 3])
@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2), (3, 2)])
@pytest.mark.parametrize("pad", ["zero", "asym", "SAME_UPPER", "SAME_LOWER", "VALID"])
def test_conv(nsp, group, stride, dilation, pad):
    # onnxruntime refuses auto_pad SAME with dilations; the spec and onnx.reference allow it.
    oracle = "onnx" if pad.startswith("SAME") and dilation > 1 else "ort"
    x = rand(2, 4, *SPATIAL[nsp])
    w = rand(6, 4 // group, *KERNEL[nsp])
    attrs = dict(strides=[stride] * nsp, dilations=[dilation] * nsp, group=group)
    if pad == "asym":
        attrs["pads"] = list(range(nsp)) + [1] * nsp
    elif pad != "zero":
        attrs["auto_pad"] = pad
    check("Conv", {"x": x}, {"w": w, "b": rand(6)}, oracle=oracle, **attrs)


def test_conv_depthwise_and_pointwise():
    check("Conv", {"x": rand(1, 8, 10, 10)}, {"w": rand(8, 1, 3, 3)}, group=8, pads=[1] * 4)
    check("Conv", {"x": rand(2, 8, 5, 5)}, {"w": rand(16, 8, 1, 1), "b": rand(16)})
    check("Conv", {"x": rand(1, 3, 6, 6)}, {"w": rand(4, 3, 3, 3)}, opset=1 + 10,
          kernel_shape=[3, 3])


def test_conv_weight_as_input():
    check("Conv", {"x": rand(1, 2, 6, 6), "w": rand(3, 2, 2, 2)}, strides=[2, 2])


# ----------------------------------------------------------------------------------------------
# ConvTranspose
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("nsp", [1, 2, 3])
@pytest.mark.parametrize("group", [1, 2])
@pytest.mark.parametrize("variant", ["plain", "pads", "opad", "dil", "SAME_UPPER", "SAME_LOWER",
                                     "VALID", "out_shape_small", "out_shape_big"])
def test_conv_transpose(nsp, group, variant):
    sp = SPATIAL[nsp]
    x = rand(2, 4, *sp)
    w = rand(4, 6 // group, *KERNEL[nsp])
    attrs = dict(strides=[2] * nsp, group=group)
    if variant == "pads":
        attrs["pads"] = list(range(nsp)) + [1] * nsp
    elif variant == "opad":
        attrs.update(strides=[3] * nsp, output_padding=[1] * nsp, pads=[1] * (2 * nsp))
    elif variant == "dil":
        attrs.update(strides=[1] * nsp, dilations=[2] * nsp)
    elif variant in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        attrs["auto_pad"] = variant
    elif variant == "out_shape_small":
        attrs["output_shape"] = [2 * s - 1 for s in sp]
    elif variant == "out_shape_big":  # one beyond natural: zeros at the end
        attrs["output_shape"] = [2 * (s - 1) + k + 1 for s, k in zip(sp, KERNEL[nsp])]
    check("ConvTranspose", {"x": x}, {"w": w, "b": rand(6)}, **attrs)


def test_conv_transpose_output_shape_same_upper():
    # onnxruntime puts the odd padding at the start here; the spec and onnx.reference at the end.
    check("ConvTranspose", {"x": rand(1, 3, 4, 5)}, {"w": rand(3, 2, 3, 3)}, oracle="onnx",
          strides=[2, 2], output_shape=[8, 9], auto_pad="SAME_UPPER")


def test_conv_transpose_output_shape_too_big():
    model = make_model([helper.make_node("ConvTranspose", ["x", "w"], ["y"], name="up",
                                         strides=[2], output_shape=[30])],
                       {"x": rand(1, 1, 9)}, ["y"], {"w": rand(1, 1, 3)})
    with pytest.raises(ModelError, match="up.*output_shape"):
        slimc.from_onnx(model)


# ----------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------

POOL_CASES = [  # kernel, strides, pads, dilations, ceil_mode
    ([3, 3], [1, 1], [0, 0, 0, 0], [1, 1], 0),
    ([3, 2], [2, 2], [1, 0, 1, 1], [1, 1], 0),
    ([3, 2], [3, 3], [1, 1, 1, 1], [2, 2], 1),
    ([2, 2], [2, 2], [0, 0, 0, 0], [1, 1], 1),
    ([3, 3], [3, 2], [1, 0, 2, 1], [1, 2], 1),
    ([2, 3], [2, 1], [0, 1, 1, 1], [2, 1], 0),
]


@pytest.mark.parametrize("kernel,strides,pads,dil,ceil", POOL_CASES)
def test_max_pool(kernel, strides, pads, dil, ceil):
    x = rand(2, 3, 9, 10)
    check("MaxPool", {"x": x}, kernel_shape=kernel, strides=strides, pads=pads, dilations=dil,
          ceil_mode=ceil)
    for order in (0, 1):
        check("MaxPool", {"x": x}, outs=("y", "i"), kernel_shape=kernel, strides=strides,
              pads=pads, dilations=dil, ceil_mode=ceil, storage_order=order)


@pytest.mark.parametrize("kernel,strides,pads,dil,ceil", POOL_CASES)
@pytest.mark.parametrize("count_include_pad", [0, 1])
def test_avg_pool(kernel, strides, pads, dil, ceil, count_include_pad):
    check("AveragePool", {"x": rand(2, 3, 9, 10)}, opset=19, kernel_shape=kernel,
          strides=strides, pads=pads, dilations=dil, ceil_mode=ceil,
          count_include_pad=count_include_pad)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool", "LpPool"])
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER", "VALID"])
def test_pool_auto_pad(op, auto_pad):
    check(op, {"x": rand(1, 2, 7, 8)}, opset=18, kernel_shape=[3, 2], strides=[2, 3],
          auto_pad=auto_pad)


@pytest.mark.parametrize("nsp", [1, 3])
def test_pools_1d_3d(nsp):
    x = rand(2, 3, *SPATIAL[nsp])
    kw = dict(kernel_shape=[2] * nsp, strides=[2] * nsp, pads=[1] * nsp + [0] * nsp)
    check("MaxPool", {"x": x}, outs=("y", "i"), **kw)
    check("AveragePool", {"x": x}, count_include_pad=1, ceil_mode=1, **kw)
    check("LpPool", {"x": x}, p=3, opset=18, **kw)


@pytest.mark.parametrize("op", ["MaxPool", "AveragePool", "LpPool"])
def test_pool_kernel_larger_than_input_with_ceil_mode(op):
    # torch exports adaptive pooling this way: one window, mostly overhang, visited cheaply.
    extra = {"count_include_pad": 1} if op == "AveragePool" else {}
    check(op, {"x": rand(1, 3, 2, 3)}, opset=19, kernel_shape=[320, 320], strides=[320, 320],
          ceil_mode=1, **extra)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.float16, np.float64])
def test_max_pool_dtypes(dtype):
    check("MaxPool", {"x": rand(1, 2, 6, 7, dtype=dtype)}, kernel_shape=[3, 3],
          pads=[1, 1, 1, 1], strides=[2, 2])


@pytest.mark.parametrize("p", [1, 2, 3])
def test_lp_pool(p):
    check("LpPool", {"x": rand(2, 3, 7, 6)}, opset=18, p=p, kernel_shape=[2, 3],
          pads=[1, 0, 1, 1], strides=[2, 1])
    check("LpPool", {"x": rand(2, 3, 7, 6)}, opset=11, p=p, kernel_shape=[3, 3])


@pytest.mark.parametrize("op,attrs", [("GlobalAveragePool", {}), ("GlobalMaxPool", {}),
                                      ("GlobalLpPool", {}), ("GlobalLpPool", {"p": 3})])
@pytest.mark.parametrize("nsp", [1, 2, 3])
def test_global_pools(op, attrs, nsp):
    check(op, {"x": rand(2, 3, *SPATIAL[nsp])}, **attrs)


# ----------------------------------------------------------------------------------------------
# Normalization
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opset", [7, 9, 15])
@pytest.mark.parametrize("shape", [(2, 3), (2, 3, 5), (2, 3, 4, 5)])
def test_batch_norm(opset, shape):
    c = shape[1]
    check("BatchNormalization", {"x": rand(*shape)},
          {"s": rand(c), "b": rand(c), "m": rand(c), "v": np.abs(rand(c)) + 0.1},
          opset=opset, epsilon=1e-3)


def test_batch_norm_training_mode():
    c = 4
    check("BatchNormalization", {"x": rand(3, c, 5, 2)},
          {"s": rand(c), "b": rand(c), "m": rand(c), "v": np.abs(rand(c))},
          outs=("y", "rm", "rv"), opset=15, training_mode=1, momentum=0.7)


def test_batch_norm_f16():
    c = 3
    check("BatchNormalization", {"x": rand(2, c, 4, 4, dtype=np.float16)},
          {k: (np.abs(rand(c)) + 0.5).astype(np.float16) for k in "sbmv"}, opset=15,
          rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 4, 5), (1, 2, 3, 4, 2)])
def test_instance_norm(shape):
    check("InstanceNormalization", {"x": rand(*shape)}, {"s": rand(shape[1]),
                                                         "b": rand(shape[1])}, epsilon=1e-3)


@pytest.mark.parametrize("axis", [-1, -2, 1, 0])
@pytest.mark.parametrize("stats", [False, True])
def test_layer_norm(axis, stats):
    x = rand(2, 3, 4, 5)
    norm = x.shape[axis:] if axis != 0 else x.shape
    outs = ("y", "mean", "inv") if stats else ("y",)
    check("LayerNormalization", {"x": x}, {"s": rand(*norm), "b": rand(*norm)}, outs=outs,
          axis=axis, epsilon=1e-3)


def test_layer_norm_variants():
    x = rand(3, 4, 6)
    check("LayerNormalization", {"x": x}, {"s": rand(6)})  # no bias
    check("LayerNormalization", {"x": x}, {"s": rand(6)}, axis=-2)  # scale broadcasts
    check("LayerNormalization", {"x": x}, {"s": rand(6)}, order=["x", "s", ""],
          outs=("y", "", "inv"), oracle="onnx")  # onnxruntime crashes on a skipped output
    check("LayerNormalization", {"x": x.astype(np.float16)}, {"s": rand(6, dtype=np.float16)},
          outs=("y", "mean", "inv"), rtol=5e-3, atol=5e-3)


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
def test_group_norm(groups):
    x = rand(2, 6, 4, 3)
    check("GroupNormalization", {"x": x}, {"s": rand(6), "b": rand(6)}, opset=21,
          num_groups=groups)
    check("GroupNormalization", {"x": x}, {"s": rand(groups), "b": rand(groups)}, opset=18,
          num_groups=groups, epsilon=1e-3)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_lrn(size):
    check("LRN", {"x": rand(2, 7, 3, 4)}, size=size, alpha=0.01, beta=0.6, bias=2.0)


def test_lrn_even_size():
    # onnxruntime refuses even sizes; the window is [c - (size-1)//2, c + ceil((size-1)/2)].
    x = rand(1, 5, 2, 2).astype(np.float64)
    y = get_op("lrn").run_reference([x], dict(size=4, alpha=0.1, beta=0.5, bias=1.0))[0]
    sq = x * x
    want = np.stack([x[:, c] / (1 + 0.1 / 4 * sq[:, max(0, c - 1):c + 3].sum(1)) ** 0.5
                     for c in range(5)], 1)
    np.testing.assert_allclose(y, want)


@pytest.mark.parametrize("axes", [None, [1, -1], [0, 1, 2, 3]])
def test_mean_variance_normalization(axes):
    kw = {} if axes is None else {"axes": axes}
    check("MeanVarianceNormalization", {"x": rand(2, 3, 4, 5)}, **kw)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_lp_normalization(p, axis):
    x = rand(3, 4, 5)
    x[0, 0] = 0
    check("LpNormalization", {"x": x}, p=p, axis=axis)


# ----------------------------------------------------------------------------------------------
# Softmax family
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("opset", [11, 13])
@pytest.mark.parametrize("axis", [None, 0, 1, 2, -1])
def test_softmax_family(op, opset, axis):
    kw = {} if axis is None else {"axis": axis}
    x = rand(2, 3, 4, 5)
    x[0, 1, 2] = 7.0  # ties for hardmax
    check(op, {"x": x}, opset=opset, **kw)


def test_softmax_legacy_trailing_ones_needs_no_reshape():
    model = make_model([helper.make_node("Softmax", ["x"], ["y"], axis=1)],
                       {"x": rand(2, 5, 1, 1)}, ["y"], opset=11)
    graph = slimc.from_onnx(model)
    assert [n.op for n in graph.nodes if n.op != "identity"] == ["softmax"]
    check("Softmax", {"x": rand(2, 5, 1, 1)}, opset=11, axis=1)


def test_softmax_large_and_f16():
    check("Softmax", {"x": np.array([[1000.0, 1001.0, -np.inf]], np.float32)}, opset=13)
    check("LogSoftmax", {"x": np.array([[1000.0, 1001.0, 3.0]], np.float32)}, opset=13)
    x = rand(3, 8, dtype=np.float16)
    check("Softmax", {"x": x}, opset=13, oracle="onnx")
    check("LogSoftmax", {"x": x}, opset=13, oracle="onnx", rtol=2e-3, atol=2e-3)


# ----------------------------------------------------------------------------------------------
# DepthToSpace / SpaceToDepth
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("b", [1, 2, 3])
def test_depth_to_space(mode, b):
    check("DepthToSpace", {"x": rand(2, 2 * b * b, 3, 4)}, opset=13, blocksize=b, mode=mode)


@pytest.mark.parametrize("b", [1, 2])
def test_space_to_depth(b):
    check("SpaceToDepth", {"x": rand(2, 3, 4, 6)}, opset=13, blocksize=b)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
def test_space_to_depth_modes_invert_depth_to_space(mode):
    x = rand(1, 3, 4, 6)
    s2d = get_op("space_to_depth").run_reference([x], dict(blocksize=2, mode=mode))[0]
    back = get_op("depth_to_space").run_reference([s2d], dict(blocksize=2, mode=mode))[0]
    np.testing.assert_array_equal(back, x)


# ----------------------------------------------------------------------------------------------
# Drawn configurations
# ----------------------------------------------------------------------------------------------


@st.composite
def conv_configs(draw):
    nsp = draw(st.integers(1, 3))
    k = [draw(st.integers(1, 3)) for _ in range(nsp)]
    s = [draw(st.integers(1, 3)) for _ in range(nsp)]
    d = [draw(st.integers(1, 2)) for _ in range(nsp)]
    pads = [draw(st.integers(0, kk - 1)) for kk in k + k]
    size = [draw(st.integers(dd * (kk - 1) + 1, 9)) for kk, dd in zip(k, d)]
    group = draw(st.sampled_from([1, 2]))
    return nsp, k, s, d, pads, size, group


@HYP
@given(conv_configs(), st.booleans())
def test_conv_drawn(cfg, transpose):
    nsp, k, s, d, pads, size, group = cfg
    x = rand(1, 2 * group, *size)
    if transpose:
        attrs = dict(strides=s, dilations=d, group=group, pads=pads,
                     output_padding=[min(ss - 1, 1) for ss in s])
        check("ConvTranspose", {"x": x}, {"w": rand(2 * group, 3, *k)}, **attrs)
    else:
        check("Conv", {"x": x}, {"w": rand(3 * group, 2, *k), "b": rand(3 * group)},
              strides=s, dilations=d, group=group, pads=pads)


@HYP
@given(conv_configs(), st.sampled_from(["MaxPool", "AveragePool"]), st.integers(0, 1),
       st.integers(0, 1))
def test_pool_drawn(cfg, op, ceil, cip):
    nsp, k, s, d, pads, size, _ = cfg
    extra = {"count_include_pad": cip} if op == "AveragePool" else {}
    check(op, {"x": rand(1, 2, *size)}, opset=19, kernel_shape=k, strides=s, dilations=d,
          pads=pads, ceil_mode=ceil, **extra)


# ----------------------------------------------------------------------------------------------
# Type inference, printing, errors
# ----------------------------------------------------------------------------------------------


def test_infer_symbolic_shapes():
    # Batch stays symbolic; a "same" stride-1 window keeps a symbolic spatial size.
    assert infer("conv", [f32("N", 3, "H", "W"), f32(8, 3, 3, 3)], pads=[1, 1, 1, 1]) == \
        [f32("N", 8, "H", "W")]
    assert infer("conv", [f32("N", 3, "H", 32), f32(8, 3, 3, 3)], strides=[2, 2]) == \
        [f32("N", 8, None, 15)]
    assert infer("conv", [f32(1, 4, 9), f32(6, 2, 3)], group=2, dilations=[2]) == \
        [f32(1, 6, 5)]
    assert infer("conv_transpose", [f32("N", 4, 5, "W"), f32(4, 3, 3, 3)], strides=[2, 1],
                 pads=[0, 1, 0, 1], output_padding=[1, 0]) == [f32("N", 3, 12, "W")]
    assert infer("max_pool", [f32("N", 3, 112, 112)], kernel_shape=[3, 3], strides=[2, 2],
                 pads=[1, 1, 1, 1]) == [f32("N", 3, 56, 56)]
    assert infer("avg_pool", [f32(1, 3, 7, 7)], kernel_shape=[2, 2], strides=[2, 2],
                 ceil_mode=1) == [f32(1, 3, 4, 4)]
    types = infer("max_pool_with_indices", [f32(2, 3, 4, 4)], kernel_shape=[2, 2])
    assert types == [f32(2, 3, 3, 3), TensorType(dtypes.i64, (2, 3, 3, 3))]
    assert infer("global_avg_pool", [f32("N", "C", "H", "W")]) == [f32("N", "C", 1, 1)]
    assert infer("layer_norm_stats", [f32("B", "S", 64)], axis=-1) == [f32("B", "S", 1)] * 2
    assert infer("depth_to_space", [f32("N", 12, 3, "W")], blocksize=2) == \
        [f32("N", 3, 6, None)]
    assert infer("space_to_depth", [f32(1, 3, 4, 6)], blocksize=2) == [f32(1, 12, 2, 3)]


def test_symbolic_model_keeps_batch_symbol():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])
    y = helper.make_value_info("y", __import__("onnx").TypeProto())
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("GlobalAveragePool", ["p"], ["y"])]
    from onnx import numpy_helper
    graph = helper.make_graph(nodes, "g", [x], [y], [numpy_helper.from_array(rand(4, 3, 3, 3),
                                                                             "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    g = slimc.from_onnx(model)
    assert g.outputs[0].type == f32("N", 4, 1, 1)
    verify(g)
    # print -> parse -> print is a fixed point with these ops' attributes
    text = print_graph(g)
    assert print_graph(parse(text)) == text


def test_round_trip_resize_and_norm_attrs():
    nodes = [helper.make_node("Resize", ["x", "", "s"], ["r"], mode="cubic",
                              coordinate_transformation_mode="align_corners",
                              cubic_coeff_a=-0.5),
             helper.make_node("LayerNormalization", ["r", "g"], ["y", "m", "i"], axis=-2),
             helper.make_node("Softmax", ["y"], ["z"], axis=1)]
    model = make_model(nodes, {"x": rand(1, 2, 3, 4)}, ["z", "m"],
                       {"s": np.array([1, 1, 2, 2], np.float32), "g": rand(6, 8)}, opset=18)
    g = slimc.from_onnx(model)
    text = print_graph(g)
    g2 = parse(text)
    assert print_graph(g2) == text
    verify(g2)


def _model(op, inputs, inits=None, outs=("y",), opset=17, **attrs):
    return make_model([helper.make_node(op, list(inputs) + list(inits or {}), list(outs),
                                        name="bad", **attrs)], inputs, list(outs), inits,
                      opset=opset)


@pytest.mark.parametrize("model,error,pattern", [
    (lambda: _model("Conv", {"x": rand(1, 3, 5, 5)}, {"w": rand(4, 2, 3, 3)}), ModelError,
     "bad.*channels"),
    (lambda: _model("Conv", {"x": rand(1, 3, 2, 2)}, {"w": rand(4, 3, 3, 3)}), ModelError,
     "bad.*window larger"),
    (lambda: _model("MaxPool", {"x": rand(1, 3, 5, 5)}), ModelError, "kernel_shape"),
    (lambda: _model("AveragePool", {"x": rand(1, 3, 5, 5)}, kernel_shape=[2, 2],
                    strides=[1, 1, 1]), ModelError, "strides"),
    (lambda: _model("LpNormalization", {"x": rand(2, 3)}, p=3), UnsupportedError, "p = 3"),
    (lambda: _model("GroupNormalization", {"x": rand(1, 4, 2), "s": rand(2), "b": rand(2)},
                    opset=18, num_groups=2), UnsupportedError, "constant"),
    (lambda: _model("Resize", {"x": rand(1, 1, 4, 4)}, {"s": np.array([1, 1, 2, .5],
                                                                      np.float32)},
                    opset=10), UnsupportedError, "grow and shrink"),
    (lambda: _model("Resize", {"x": rand(1, 1, 4, 4)},
                    {"r": np.zeros(0, np.float32), "s": np.array([1, 1, 2, 2], np.float32),
                     "z": np.array([1, 1, 8, 8], np.int64)}), ModelError, "only one"),
    (lambda: _model("DepthToSpace", {"x": rand(1, 6, 2, 2)}, blocksize=2), ModelError,
     "divisible"),
    (lambda: _model("BatchNormalization", {"x": rand(2, 3)},
                    {k: rand(3) for k in "sbmv"}, outs=("y", "mean"), opset=9),
     UnsupportedError, "training"),
])
def test_errors_name_the_node(model, error, pattern):
    with pytest.raises(error, match=pattern):
        slimc.from_onnx(model())


def test_fusion_kinds():
    from slimc.ir import FusionKind

    assert get_op("conv").fusion == FusionKind.OUT_FUSABLE
    assert get_op("conv_transpose").fusion == FusionKind.OUT_FUSABLE
    assert get_op("resize").fusion == FusionKind.INJECTIVE
    assert get_op("depth_to_space").fusion == FusionKind.INJECTIVE
    assert get_op("softmax").fusion == FusionKind.REDUCTION
    assert get_op("batch_norm").fusion == FusionKind.BROADCAST
    assert get_op("resize").shape_inputs == (2, 3)
