"""Regression tests for the bugs differential fuzzing (tests/test_fuzz.py) found.

Each test is the fuzzer's minimized model, written by hand with onnx.helper. Expected values
come from numpy written in the test (or from onnxruntime where named), never from slimc's
output; slimc's interpreter and its compiled code (one and two threads) must both match.
"""

import numpy as np
import pytest
from onnx import helper

import slimc

from .oracle import assert_close, make_model


def check(model, inputs: dict, expected: list, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    graph = slimc.from_onnx(model)
    slimc.ir.verify(graph)
    assert_close(slimc.interpret(graph, **inputs), expected, rtol, atol)
    for threads in (1, 2):
        assert_close(slimc.compile(model, threads=threads)(**inputs), expected, rtol, atol)


def node(op, ins, outs, **attrs):
    return helper.make_node(op, ins, outs, name=f"{op}_{outs[0]}", **attrs)


# --- MatMul / Gemm with an empty reduction dimension (K = 0) --------------------------------
# The float32 GEMM kernels need K >= 1; matmul of [M, 0] by [0, N] raised a bare ValueError
# from codegen. The result is all zeros (gemm: beta * C).
@pytest.mark.parametrize("a_shape,b_shape,b_const", [
    ((0,), (0,), True), ((3, 0), (0, 5), True), ((3, 0), (0, 5), False), ((2, 3, 0), (0, 4), False),
])
def test_matmul_with_k_zero(a_shape, b_shape, b_const):
    x, w = np.zeros(a_shape, np.float32), np.zeros(b_shape, np.float32)
    expected = [np.zeros(np.matmul(x, w).shape, np.float32)]
    if b_const:
        model = make_model([node("MatMul", ["x", "w"], ["y"])], {"x": x}, ["y"], {"w": w})
        check(model, {"x": x}, expected)
    else:
        model = make_model([node("MatMul", ["x", "w"], ["y"])], {"x": x, "w": w}, ["y"])
        check(model, {"x": x, "w": w}, expected)


def test_gemm_with_k_zero_is_beta_c():
    x, w, c = np.zeros((3, 0), np.float32), np.zeros((0, 4), np.float32), np.arange(4, dtype=np.float32)
    model = make_model([node("Gemm", ["x", "w", "c"], ["y"], alpha=2.0, beta=0.5)], {"x": x}, ["y"],
                       {"w": w, "c": c})
    check(model, {"x": x}, [np.broadcast_to(0.5 * c, (3, 4)).astype(np.float32)])


# --- softmax / log_softmax of an empty tensor ---------------------------------------------
# The reference took the max of a zero-size array (numpy: "zero-size array to reduction
# operation maximum which has no identity"), so the interpreter failed on a valid model.
@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax"])
@pytest.mark.parametrize("shape,axis", [((0,), -1), ((2, 0, 3), 1), ((2, 0, 3), -1)])
def test_softmax_of_empty_tensor(op, shape, axis):
    x = np.zeros(shape, np.float32)
    model = make_model([node(op, ["x"], ["y"], axis=axis)], {"x": x}, ["y"])
    check(model, {"x": x}, [np.zeros(shape, np.float32)])


# --- Cast float -> bool ------------------------------------------------------------------------
# The reference truncated first (0.07 -> 0 -> False); ONNX's Cast to bool is x != 0.
@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_cast_float_to_bool_is_nonzero(dtype):
    x = np.array([0.0678, -0.5, 0.0, -0.0, 2.0, 1e-3], dtype)
    model = make_model([node("Cast", ["x"], ["y"], to=9)], {"x": x}, ["y"])
    check(model, {"x": x}, [x != 0])


# --- view ops on zero-size tensors become reshapes with a literal 0 ----------------------------
# simplify turned flatten/unsqueeze/squeeze (and reshape chains) into reshape(x, result shape)
# without allowzero, so a 0 in the result shape meant "copy the input's dim": the compile failed
# ("copies dimension 1 (a 0) but the input f32[0] has rank 1") or could pick a wrong size.
def test_flatten_of_empty_tensor():
    x = np.zeros((0,), np.float32)
    model = make_model([node("Flatten", ["x"], ["y"], axis=0)], {"x": x}, ["y"])
    check(model, {"x": x}, [x.reshape(1, 0)])


def test_unsqueeze_of_empty_tensor():
    x = np.zeros((0, 3), np.float32)
    model = make_model([node("Unsqueeze", ["x", "axes"], ["y"])], {"x": x}, ["y"],
                       {"axes": np.array([0], np.int64)})
    check(model, {"x": x}, [x.reshape(1, 0, 3)])


def test_reshape_chain_of_empty_tensor():
    x = np.zeros((0, 3), np.float32)
    model = make_model([node("Reshape", ["x", "s1"], ["a"], allowzero=1),
                        node("Reshape", ["a", "s2"], ["y"], allowzero=1)], {"x": x}, ["y"],
                       {"s1": np.array([3, 0], np.int64), "s2": np.array([1, 0], np.int64)})
    check(model, {"x": x}, [x.reshape(1, 0)])


# --- softmax family over an axis that is not the last, when the last dim is 1, with a fused
#     consumer ----------------------------------------------------------------------------------
# The softmax generator (softmax, log_softmax, hardmax) stored each result at an index
# that did not have the output's full rank when the last dim is 1 and the axis is not the last
# one: with inner == 1 it stored at outer_idx + [l] (one entry short when size-1 dims follow the
# axis); with inner > 1, at span.index(...) over a last dim of 1. A fused consumer (here relu)
# then looked its operand up at the full-rank index, missed, and the compile failed:
# "InternalError: softmax node ... is inside a kernel but has no inline lowering". Found as
# Softmax(axis=0) of f32[1,1,1,1] and Hardmax(axis=0) of f32[1,2,4,1] feeding a Relu. (Fixed by
# the code generator's owner, now in codegen/cpu/gen_norm.py.)
def _softmax_ref(x, axis, kind):
    m = x.max(axis=axis, keepdims=True)
    s = np.exp(x - m).sum(axis=axis, keepdims=True)
    if kind == "LogSoftmax":
        return x - m - np.log(s)
    if kind == "Hardmax":  # 1 at the first maximum along the axis
        first = np.expand_dims(np.argmax(x, axis=axis), axis)
        out = np.zeros_like(x)
        np.put_along_axis(out, first, 1, axis=axis)
        return out
    return np.exp(x - m) / s


SOFTMAX_LAST_DIM_ONE = [((1, 1, 1, 1), 0), ((3, 1), 0), ((2, 3, 1), 1), ((3, 1), -2),
                        ((1, 2, 4, 1), 0), ((1, 2, 4, 1), 2), ((1, 8, 1), 0)]


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("shape,axis", SOFTMAX_LAST_DIM_ONE)
def test_softmax_last_dim_one_with_epilogue(op, shape, axis):
    x = np.random.default_rng(0).uniform(-3, 3, shape).astype(np.float32)
    model = make_model([node(op, ["x"], ["s"], axis=axis), node("Relu", ["s"], ["y"])], {"x": x}, ["y"])
    expected = np.maximum(_softmax_ref(x.astype(np.float64), axis, op), 0)
    check(model, {"x": x}, [expected.astype(np.float32)])


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("shape,axis", SOFTMAX_LAST_DIM_ONE)
def test_softmax_last_dim_one_alone(op, shape, axis):
    x = np.random.default_rng(0).uniform(-3, 3, shape).astype(np.float32)
    model = make_model([node(op, ["x"], ["y"], axis=axis)], {"x": x}, ["y"])
    check(model, {"x": x}, [_softmax_ref(x.astype(np.float64), axis, op).astype(np.float32)])


# --- Split with num_outputs over a symbolic dimension ----------------------------------------
# The converter passed the op's num_outputs attribute and ConvertContext.emit's own
# num_outputs argument (its output count) in one call: "emit() got multiple values for keyword
# argument 'num_outputs'", an InternalError at import. Found as Split(num_outputs=1) of a
# 1-element input whose shape was left symbolic.
@pytest.mark.parametrize("n,size", [(1, 1), (2, 5), (3, 7)])
def test_split_num_outputs_of_symbolic_dim(n, size):
    x = np.arange(size, dtype=np.float32)
    outs = [f"y{i}" for i in range(n)]
    model = make_model([node("Split", ["x"], outs, axis=0, num_outputs=n)], {"x": x}, outs, opset=18)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    chunk = -(-size // n)
    expected = [x[i * chunk:(i + 1) * chunk] for i in range(n)]
    assert_close(slimc.interpret(slimc.from_onnx(model, input_shapes={"x": [size]}), x=x), expected)
    for threads in (1, 2):
        assert_close(slimc.compile(model, threads=threads)(x=x), expected)


# --- Squeeze without axes of a symbolic shape ------------------------------------------------
# Which dims are 1 is only known once shapes are bound, and the converter needs the output's
# rank: a limitation, which was reported as the model's fault (ModelError). It is now an
# UnsupportedError naming the node; with the shape given at compile time it compiles.
def test_squeeze_without_axes_of_symbolic_shape():
    x = np.array([-1.38], np.float32)
    model = make_model([node("Squeeze", ["x"], ["y"])], {"x": x}, ["y"], opset=18)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    with pytest.raises(slimc.UnsupportedError, match="Squeeze_y.*static shape"):
        slimc.compile(model)
    assert_close(slimc.compile(model, input_shapes={"x": [1]})(x=x), [x.reshape(())])


# --- Resize of zero-size tensors -------------------------------------------------------------
# The reference divided by the empty dim for its scale (None) and failed with "float() argument
# must be ... not 'NoneType'" on any zero-size input, even an empty batch. Resizing an empty
# axis to a non-empty size was compiled and read from an empty buffer (onnxruntime refuses it):
# it is now a ModelError naming the node.
@pytest.mark.parametrize("shape,sizes,mode", [((1, 0, 1, 1), [1, 0, 2, 2], "linear"),
                                              ((0, 1, 2, 2), [0, 1, 4, 4], "cubic"),
                                              ((0, 2, 3, 3), [0, 2, 6, 6], "nearest")])
def test_resize_of_empty_tensor(shape, sizes, mode):
    x = np.zeros(shape, np.float32)
    model = make_model([node("Resize", ["x", "", "", "s"], ["y"], mode=mode)], {"x": x}, ["y"],
                       {"s": np.array(sizes, np.int64)})
    check(model, {"x": x}, [np.zeros(sizes, np.float32)])


def test_resize_of_empty_axis_to_nonempty_is_refused():
    x = np.zeros((1, 1, 0, 1), np.float32)
    model = make_model([node("Resize", ["x", "", "", "s"], ["y"], mode="linear")], {"x": x}, ["y"],
                       {"s": np.array([1, 1, 2, 2], np.int64)})
    with pytest.raises(slimc.ModelError, match="Resize_y.*empty dimension 2"):
        slimc.compile(model)


# --- a 0-d graph input returned as a graph output --------------------------------------------
# runtime/native.py made every input contiguous with np.ascontiguousarray, which turns a 0-d
# array into shape (1,); an output that is a graph input is copied from that array, so it came
# back as f32[1] instead of f32[]. Found as `(float x1) => (float t2, float x1)`.
@pytest.mark.parametrize("dtype", [np.float32, np.bool_])
def test_scalar_input_returned_as_output(dtype):
    x = np.array(1, dtype)
    model = make_model([node("Identity", ["x"], ["y"])], {"x": x}, ["y", "x"])
    check(model, {"x": x}, [x, x])


# --- a convolution of an empty batch --------------------------------------------------------
# The im2col GEMM path sized its work items by N * group * chunks, which is 0 for an empty
# batch, and divided by it (ZeroDivisionError at compile time). Found as a Conv 2->8 (2x2) of
# f32[0,2,3,3] at opt_level 0 (at -O1 and above the layout pass took the conv elsewhere).
@pytest.mark.parametrize("opt_level", [0, 2])
def test_conv_of_empty_batch(opt_level):
    x = np.zeros((0, 2, 3, 3), np.float32)
    w = np.random.default_rng(0).standard_normal((8, 2, 2, 2)).astype(np.float32)
    model = make_model([node("Conv", ["x", "w"], ["y"], kernel_shape=[2, 2])], {"x": x}, ["y"],
                       {"w": w})
    y = slimc.compile(model, opt_level=opt_level)(x=x)[0]
    assert y.shape == (0, 8, 2, 2) and y.dtype == np.float32


# --- matmul of an empty batch (or no rows) with B computed at run time -----------------------
# Splitting few batch entries into blocks of rows divided by the number of entries and by the
# rows per block, both 0 here (ZeroDivisionError at compile time). Found as MatMul(x, x) of
# f32[0,1,1].
@pytest.mark.parametrize("shape", [(0, 1, 1), (2, 0, 0), (3, 0, 4)])
def test_matmul_runtime_b_empty(shape):
    x = np.zeros(shape, np.float32)
    y = np.zeros(shape[:-2] + (shape[-1], 3), np.float32)
    model = make_model([node("MatMul", ["x", "y"], ["z"])], {"x": x, "y": y}, ["z"])
    check(model, {"x": x, "y": y}, [np.matmul(x, y)])


# --- Gather by an empty constant index list, read by a fused consumer ------------------------
# The gather's index map folds constant indices at constant positions, and read element 0 of
# an empty index list while emitting code that never runs (the result is empty): IndexError at
# compile time. Found as Reshape -> Gather(axis 2, indices int64[0]) -> Tile of f32[0].
def test_gather_of_empty_indices_fused():
    x = np.zeros((0,), np.float32)
    model = make_model([node("Reshape", ["x", "shape"], ["r"], allowzero=1),
                        node("Gather", ["r", "idx"], ["g"], axis=2),
                        node("Tile", ["g", "reps"], ["y"])], {"x": x}, ["y"],
                       {"shape": np.array([1, 1, 0], np.int64), "idx": np.zeros((0,), np.int64),
                        "reps": np.array([1, 1, 2], np.int64)})
    check(model, {"x": x}, [np.zeros((1, 1, 0), np.float32)])


# --- a view of an empty tensor read by a fused consumer --------------------------------------
# Delinearizing an index in a shape with a 0 divided by its stride 0 while emitting code that
# never runs. Found as Reshape(f32[1,0,1,1,1] -> [0]) -> Tile.
def test_reshape_of_empty_tensor_fused():
    x = np.zeros((1, 0, 1, 1, 1), np.float32)
    model = make_model([node("Reshape", ["x", "shape"], ["r"], allowzero=1),
                        node("Tile", ["r", "reps"], ["y"])], {"x": x}, ["y"],
                       {"shape": np.array([0], np.int64), "reps": np.array([2], np.int64)})
    check(model, {"x": x}, [np.zeros((0,), np.float32)])
