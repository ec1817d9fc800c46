"""Reductions, arg_max/arg_min, cumsum and top_k: slimc's interpreter against onnxruntime.

Also: type inference keeps symbolic dimensions, the converter resolves ONNX's two spellings
of axes (attribute / input with noop_with_empty_axes) and refuses run-time axes clearly.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import slimc
from slimc.ir import ModelError, TensorType, UnsupportedError, dtypes, get_op
from tests.ops.common import infer
from tests.oracle import (check_against_onnxruntime, make_model, run_onnx_reference,
                          run_slimc_interpreter)

RNG = np.random.default_rng(1234)

ONNX_REDUCE = {
    "ReduceSum": "reduce_sum", "ReduceMean": "reduce_mean", "ReduceMax": "reduce_max",
    "ReduceMin": "reduce_min", "ReduceProd": "reduce_prod", "ReduceL1": "reduce_l1",
    "ReduceL2": "reduce_l2", "ReduceSumSquare": "reduce_sum_square",
    "ReduceLogSum": "reduce_log_sum", "ReduceLogSumExp": "reduce_log_sum_exp",
}
AXES_AS_INPUT_SINCE = {op: (13 if op == "ReduceSum" else 18) for op in ONNX_REDUCE}


def data_for(op: str, shape, dtype=np.float32) -> np.ndarray:
    if np.dtype(dtype).kind in "iu":
        lo = 0 if np.dtype(dtype).kind == "u" or op in ("ReduceLogSum", "ReduceL2") else -3
        return RNG.integers(lo, 4, size=shape).astype(dtype)
    lo = 0.5 if op in ("ReduceLogSum", "ReduceProd") else -2.0
    return RNG.uniform(lo, 2.0, size=shape).astype(dtype)


def reduce_model(op: str, x: np.ndarray, axes, keepdims=1, opset=18, noop=None,
                 axes_as_graph_input=False):
    """axes None: not given. Spelled as attribute or input as the opset dictates."""
    inits, attrs, ins = {}, {"keepdims": keepdims}, ["x"]
    inputs = {"x": x}
    if opset >= AXES_AS_INPUT_SINCE[op]:
        if noop is not None:
            attrs["noop_with_empty_axes"] = noop
        if axes is not None:
            ins.append("axes")
            if axes_as_graph_input:
                inputs["axes"] = np.array(axes, np.int64)
            else:
                inits["axes"] = np.array(axes, np.int64)
    elif axes is not None:
        attrs["axes"] = list(axes)
    node = helper.make_node(op, ins, ["y"], **attrs)
    return make_model([node], inputs, ["y"], inits, opset=opset), inputs


# ----- reductions against onnxruntime ----------------------------------------------------------

@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axes", [None, [0], [1], [-1], [0, 2], [2, 0], [-3, -2, -1]])
@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("op", list(ONNX_REDUCE))
def test_reduce_matches_onnxruntime(op, opset, axes, keepdims):
    x = data_for(op, (3, 4, 5))
    model, inputs = reduce_model(op, x, axes, keepdims, opset)
    got = check_against_onnxruntime(model, inputs)
    assert got[0].dtype == np.float32


@pytest.mark.parametrize("op,dtype", [
    (op, dt) for op in ("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd",
                        "ReduceL1", "ReduceSumSquare")
    for dt in (np.float64, np.int32, np.int64)] + [
    (op, np.float16) for op in ONNX_REDUCE] + [
    ("ReduceMax", np.int8), ("ReduceMin", np.uint8), ("ReduceMax", np.uint8),
    ("ReduceL2", np.int32), ("ReduceLogSum", np.int32), ("ReduceLogSumExp", np.int64),
    ("ReduceMean", np.int64),
])
def test_reduce_dtypes(op, dtype):
    x = data_for(op, (4, 6), dtype)
    model, inputs = reduce_model(op, x, [1], 0, opset=18)
    rtol = 1e-2 if dtype == np.float16 else 1e-3
    check_against_onnxruntime(model, inputs, rtol=rtol, atol=1e-2 if dtype == np.float16 else 1e-4)


def test_reduce_mean_of_ints_truncates_toward_zero():
    x = np.array([[1, 2], [4, -7], [-1, -2]], np.int32)
    model, inputs = reduce_model("ReduceMean", x, [1], 0)
    got = check_against_onnxruntime(model, inputs)
    np.testing.assert_array_equal(got[0], [1, -1, -1])


@pytest.mark.parametrize("op", [o for o in ONNX_REDUCE if o != "ReduceMean"])
@pytest.mark.parametrize("shape,axes", [((2, 0, 4), [1]), ((2, 0, 4), [2]), ((0, 3), None)])
def test_reduce_empty_sets(op, shape, axes):
    x = np.zeros(shape, np.float32)
    model, inputs = reduce_model(op, x, axes, 1)
    check_against_onnxruntime(model, inputs)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # onnx.reference's np.mean of nothing
def test_reduce_mean_of_empty_set_is_nan():
    x = np.zeros((2, 0), np.float32)
    model, inputs = reduce_model("ReduceMean", x, [1], 0)
    got = run_slimc_interpreter(model, inputs)
    assert got[0].shape == (2,) and np.isnan(got[0]).all()
    np.testing.assert_array_equal(got[0], run_onnx_reference(model, inputs)[0])


@pytest.mark.parametrize("op,dtype", [("ReduceMax", np.int32), ("ReduceMin", np.uint8),
                                      ("ReduceMax", np.float64), ("ReduceMin", np.float32)])
def test_reduce_extremes_of_empty_set_are_dtype_limits(op, dtype):
    x = np.zeros((3, 0), dtype)
    model, inputs = reduce_model(op, x, [1], 0)
    check_against_onnxruntime(model, inputs)


@pytest.mark.parametrize("op", ["ReduceMax", "ReduceMin"])
def test_reduce_bool(op):
    x = RNG.random((3, 4)) > 0.5
    x[0] = True
    x[1] = False
    for axes in ([1], [0], None):
        model, inputs = reduce_model(op, x, axes, 0, opset=20)
        check_against_onnxruntime(model, inputs)
    model, inputs = reduce_model(op, np.zeros((2, 0), bool), [1], 1, opset=20)
    got = run_slimc_interpreter(model, inputs)
    np.testing.assert_array_equal(got[0], np.full((2, 1), op == "ReduceMin"))


@pytest.mark.parametrize("noop", [0, 1])
@pytest.mark.parametrize("op", list(ONNX_REDUCE))
def test_reduce_empty_axes_input(op, noop):
    """Empty axes: all axes, or with noop_with_empty_axes none (the elementwise part alone)."""
    x = data_for(op, (2, 3))
    model, inputs = reduce_model(op, x, [], 1, opset=18, noop=noop)
    check_against_onnxruntime(model, inputs)
    model, inputs = reduce_model(op, x, None, 0, opset=18, noop=noop)
    check_against_onnxruntime(model, inputs)


def test_reduce_empty_axes_known_from_the_type_alone():
    """An axes graph input of static shape [0] is empty whatever its values: no refusal."""
    x = data_for("ReduceSum", (2, 3))
    model, inputs = reduce_model("ReduceSum", x, [], 1, opset=13, noop=1, axes_as_graph_input=True)
    check_against_onnxruntime(model, inputs)


def test_reduce_duplicate_axes_are_merged():
    x = data_for("ReduceSum", (2, 3, 4))
    model, inputs = reduce_model("ReduceSum", x, [1, -2], 1, opset=18)
    check_against_onnxruntime(model, inputs)


def test_reduce_runtime_axes_refused_clearly():
    x = data_for("ReduceMean", (2, 3))
    model, inputs = reduce_model("ReduceMean", x, [1], 1, opset=18, axes_as_graph_input=True)
    model.graph.node[0].name = "my_mean"
    with pytest.raises(UnsupportedError, match=r"my_mean.*ReduceMean.*axes.*constant"):
        run_slimc_interpreter(model, inputs)


def test_reduce_axis_out_of_range_is_a_model_error():
    x = data_for("ReduceSum", (2, 3))
    model, inputs = reduce_model("ReduceMax", x, [2], 1, opset=13)
    with pytest.raises(ModelError, match="out of range"):
        run_slimc_interpreter(model, inputs)


def test_reduce_scalar_input():
    x = np.array(3.5, np.float32)
    for op in ("ReduceSum", "ReduceMax", "ReduceL2"):
        model, inputs = reduce_model(op, x, None, 1, opset=18)
        check_against_onnxruntime(model, inputs)


def test_reduce_log_sum_exp_is_stable():
    x = np.array([[1000.0, 1000.0], [-1000.0, -1001.0], [-np.inf, -np.inf]], np.float32)
    model, inputs = reduce_model("ReduceLogSumExp", x, [1], 0)
    got = run_slimc_interpreter(model, inputs)[0]
    np.testing.assert_allclose(got[:2], [1000 + np.log(2), -1000 + np.log1p(np.exp(-1))], rtol=1e-6)
    assert got[2] == -np.inf


# ----- type inference --------------------------------------------------------------------------

def test_reduce_inference_keeps_symbols():
    t = TensorType(dtypes.f32, ("N", None, 7, "C"))
    assert infer("reduce_sum", [t], axes=[2])[0] == TensorType(dtypes.f32, ("N", None, 1, "C"))
    assert infer("reduce_max", [t], axes=[-1, 1], keepdims=0)[0] == TensorType(dtypes.f32, ("N", 7))
    assert infer("reduce_mean", [t], keepdims=0)[0] == TensorType(dtypes.f32, ())
    assert infer("reduce_l2", [t])[0] == TensorType(dtypes.f32, (1, 1, 1, 1))
    assert infer("reduce_l1", [t], axes=[])[0] == t
    assert infer("arg_max", [t], axis=-1, keepdims=0)[0] == TensorType(dtypes.i64, ("N", None, 7))
    assert infer("cumsum", [t, TensorType(dtypes.i64, ())])[0] == t
    k = TensorType(dtypes.i64, (1,))
    v, i = infer("top_k", [t, k], axis=2)
    assert v == TensorType(dtypes.f32, ("N", None, None, "C")) and i.dtype == dtypes.i64
    v, i = infer("top_k", [t, k], [None, np.array([3], np.int64)], axis=0)
    assert v == TensorType(dtypes.f32, (3, None, 7, "C")) == i.with_dtype(dtypes.f32)


@pytest.mark.parametrize("bad", [dict(axes=[0, 0]), dict(axes=[4]), dict(axes="1"),
                                 dict(keepdims=2)])
def test_reduce_inference_rejects_bad_attributes(bad):
    with pytest.raises(ModelError):
        infer("reduce_sum", [TensorType(dtypes.f32, (2, 3, 4, 5))], **bad)


def test_top_k_inference_rejects_k_too_large():
    with pytest.raises(ModelError, match="larger"):
        infer("top_k", [TensorType(dtypes.f32, (2, 3)), TensorType(dtypes.i64, (1,))],
              [None, np.array([4], np.int64)])


def test_symbolic_onnx_model_types():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 16])
    y = helper.make_value_info("y", onnx.TypeProto())
    axes = onnx.numpy_helper.from_array(np.array([-1], np.int64), "axes")
    node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], keepdims=1)
    g = helper.make_graph([node], "g", [x], [y], [axes])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    graph = slimc.from_onnx(m)
    assert graph.outputs[0].type == TensorType(dtypes.f32, ("batch", "seq", 1))
    text = slimc.ir.print_graph(graph)
    assert "reduce_mean" in text and "axes=[2]" in text
    assert slimc.ir.print_graph(slimc.parse(text)) == text


# ----- arg_max / arg_min -----------------------------------------------------------------------

@pytest.mark.parametrize("select_last_index", [0, 1])
@pytest.mark.parametrize("keepdims", [0, 1])
@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("op", ["ArgMax", "ArgMin"])
def test_arg_reductions(op, axis, keepdims, select_last_index):
    x = RNG.integers(0, 3, size=(4, 5, 3)).astype(np.float32)  # many ties
    node = helper.make_node(op, ["x"], ["y"], axis=axis, keepdims=keepdims,
                            select_last_index=select_last_index)
    check_against_onnxruntime(make_model([node], {"x": x}, ["y"], opset=13), {"x": x})


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float64, np.float16, np.uint8])
def test_arg_reductions_dtypes(dtype):
    x = RNG.integers(0, 5, size=(3, 6)).astype(dtype)
    for op in ("ArgMax", "ArgMin"):
        node = helper.make_node(op, ["x"], ["y"], axis=1)
        check_against_onnxruntime(make_model([node], {"x": x}, ["y"], opset=13), {"x": x})


def test_arg_max_over_empty_axis_is_refused():
    x = np.zeros((3, 0), np.float32)
    node = helper.make_node("ArgMax", ["x"], ["y"], axis=1)
    with pytest.raises(ModelError, match="size 0"):
        run_slimc_interpreter(make_model([node], {"x": x}, ["y"], opset=13), {"x": x})


# ----- cumsum ----------------------------------------------------------------------------------

@pytest.mark.parametrize("reverse", [0, 1])
@pytest.mark.parametrize("exclusive", [0, 1])
@pytest.mark.parametrize("axis", [0, 1, -1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_cumsum(dtype, axis, exclusive, reverse):
    x = (RNG.standard_normal((3, 4, 5)) * 4).astype(dtype)
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], exclusive=exclusive, reverse=reverse)
    model = make_model([node], {"x": x}, ["y"], {"axis": np.array(axis, np.int32)}, opset=14)
    check_against_onnxruntime(model, {"x": x})


def test_cumsum_axis_at_run_time():
    x = RNG.standard_normal((3, 4)).astype(np.float32)
    node = helper.make_node("CumSum", ["x", "axis"], ["y"], reverse=1)
    for axis in (0, -1):
        inputs = {"x": x, "axis": np.array(axis, np.int64)}
        check_against_onnxruntime(make_model([node], inputs, ["y"], opset=14), inputs)


# ----- top_k -----------------------------------------------------------------------------------

def top_k_model(x, k, axis=-1, largest=1, sorted_=1, opset=11, k_as_input=False):
    node = helper.make_node("TopK", ["x", "k"], ["values", "indices"], axis=axis,
                            largest=largest, sorted=sorted_)
    inputs = {"x": x}
    kk = np.array([k], np.int64)
    if k_as_input:
        inputs["k"] = kk
        return make_model([node], inputs, ["values", "indices"], opset=opset), inputs
    return make_model([node], inputs, ["values", "indices"], {"k": kk}, opset=opset), inputs


@pytest.mark.parametrize("largest", [0, 1])
@pytest.mark.parametrize("axis,k", [(-1, 1), (-1, 3), (1, 5), (0, 2), (0, 0), (2, 6)])
@pytest.mark.parametrize("dtype", [np.float32, np.int64, np.float64, np.int32])
def test_top_k(dtype, axis, k, largest):
    x = RNG.integers(-3, 4, size=(4, 5, 6)).astype(dtype)  # ties everywhere
    model, inputs = top_k_model(x, k, axis, largest)
    check_against_onnxruntime(model, inputs)


def test_top_k_k_at_run_time_and_old_opset():
    x = RNG.standard_normal((3, 7)).astype(np.float32)
    model, inputs = top_k_model(x, 4, k_as_input=True)
    check_against_onnxruntime(model, inputs)
    node = helper.make_node("TopK", ["x"], ["v", "i"], k=3, axis=0)
    check_against_onnxruntime(make_model([node], {"x": x}, ["v", "i"], opset=9), {"x": x})


def test_top_k_unsorted_returns_the_same_set():
    x = RNG.permutation(40).reshape(5, 8).astype(np.float32)
    model, inputs = top_k_model(x, 3, sorted_=0)
    got = run_slimc_interpreter(model, inputs)
    want = run_onnx_reference(model, inputs)
    np.testing.assert_array_equal(np.sort(got[0], -1), np.sort(want[0], -1))
    np.testing.assert_array_equal(np.take_along_axis(x, got[1], -1), got[0])


def test_top_k_ties_lower_index_first():
    x = np.array([[1, 3, 3, 2, 3, 1]], np.float32)
    got = run_slimc_interpreter(*top_k_model(x, 4))
    np.testing.assert_array_equal(got[1], [[1, 2, 4, 3]])
    got = run_slimc_interpreter(*top_k_model(x, 3, largest=0))
    np.testing.assert_array_equal(got[1], [[0, 5, 3]])


def test_top_k_k_too_large_is_a_model_error():
    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ModelError, match="larger"):
        run_slimc_interpreter(*top_k_model(x, 4))


# ----- hypothesis ------------------------------------------------------------------------------

@st.composite
def reduce_case(draw):
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=rank, max_size=rank)))
    axes = draw(st.one_of(st.none(), st.lists(st.integers(-rank, rank - 1), min_size=1,
                                              max_size=rank, unique_by=lambda a: a % rank)))
    op = draw(st.sampled_from(sorted(ONNX_REDUCE)))
    keepdims = draw(st.integers(0, 1))
    opset = draw(st.sampled_from([13, 18]))
    return op, shape, axes, keepdims, opset


def symbolize(shape, mask):
    """Dims where mask is set become symbols named after their size (so they can be bound)."""
    return tuple(f"s{d}" if m else d for d, m in zip(shape, mask))


def bind(shape):
    return tuple(int(d[1:]) if isinstance(d, str) else d for d in shape)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reduce_case(), st.lists(st.booleans(), min_size=4, max_size=4))
def test_reduce_hypothesis(case, mask):
    op, shape, axes, keepdims, opset = case
    x = data_for(op, shape)
    model, inputs = reduce_model(op, x, axes, keepdims, opset)
    got = check_against_onnxruntime(model, inputs)
    # The reference's dtype and shape are what inference says, symbolic dims included.
    name = ONNX_REDUCE[op]
    attrs = dict(axes=axes, keepdims=keepdims)
    ref = get_op(name).run_reference([x], get_op(name).resolve_attrs(attrs))[0]
    (t,) = infer(name, [TensorType(dtypes.f32, symbolize(shape, mask))], **attrs)
    assert ref.dtype == np.float32 and ref.shape == got[0].shape == bind(t.shape)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.integers(1, 6), min_size=1, max_size=3), st.data())
def test_top_k_hypothesis(shape, data):
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    k = data.draw(st.integers(0, shape[axis]))
    largest = data.draw(st.integers(0, 1))
    x = RNG.integers(-2, 3, size=shape).astype(np.float32)
    model, inputs = top_k_model(x, k, axis, largest)
    check_against_onnxruntime(model, inputs)
