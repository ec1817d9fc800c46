"""The tensor (shape / data movement) family: slimc's interpreter against onnxruntime.

Each case builds a one-node ONNX model, imports it, verifies the graph and runs the
interpreter; the outputs must equal onnxruntime's (onnx.reference where onnxruntime lacks a
kernel). Shape-deciding inputs are tried both as constants (exact static types, often folded
at import) and as graph inputs (unknown dims until run time). Type inference is also checked
directly on symbolic shapes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import TensorProto, helper

import slimc
from slimc.ir import ModelError, SlimcError, TensorType, UnsupportedError, dtypes, get_op
from tests.ops.common import infer
from tests.oracle import (assert_close, check_against_onnxruntime, make_model,
                          run_onnx_reference, run_slimc_interpreter)

RNG = np.random.default_rng(0)
HYP = settings(max_examples=25, deadline=None, derandomize=True)


def rand(*shape, dtype=np.float32):
    if np.dtype(dtype).kind == "f":
        return RNG.standard_normal(shape).astype(dtype)
    if np.dtype(dtype).kind == "b":
        return RNG.random(shape) > 0.5
    return RNG.integers(-5, 6, shape).astype(dtype)


def i64(*values):
    return np.array(values, dtype=np.int64)


def one_node(op, data: dict, shape_args: dict = None, *, const: bool = True, order=None,
             opset: int = 17, n_out: int = 1, **attrs):
    """(model, runtime inputs): `data` are graph inputs; `shape_args` are initializers when
    `const`, else graph inputs too. `order` lists the node's inputs ("" for an absent one)."""
    shape_args = shape_args or {}
    names = order or list(data) + list(shape_args)
    inputs = dict(data) if const else {**data, **shape_args}
    outs = [f"out{i}" for i in range(n_out)]
    model = make_model([helper.make_node(op, names, outs, **attrs)], inputs, outs,
                       shape_args if const else None, opset=opset)
    return model, inputs


def check(op, data, shape_args=None, *, oracle="ort", **kw):
    model, inputs = one_node(op, data, shape_args, **kw)
    if oracle == "ort":
        return check_against_onnxruntime(model, inputs)
    got = run_slimc_interpreter(model, inputs)
    assert_close(got, run_onnx_reference(model, inputs))
    return got


def out_types(op, data, shape_args=None, **kw):
    model, inputs = one_node(op, data, shape_args, **kw)
    graph = slimc.from_onnx(model, input_shapes={k: np.asarray(v).shape for k, v in inputs.items()})
    return [v.type for v in graph.outputs]


CONST = pytest.mark.parametrize("const", [True, False], ids=["const", "runtime"])
f32 = dtypes.f32


# ----- reshape / flatten / squeeze / unsqueeze / transpose -----------------------------------
@CONST
@pytest.mark.parametrize("shape,target,allowzero", [
    ((2, 3, 4), (4, 6), 0), ((2, 3, 4), (-1,), 0), ((2, 3, 4), (0, -1), 0),
    ((2, 3, 4), (0, 0, 2, 2), 0), ((2, 3, 4), (-1, 2, 0), 0), ((1, 6), (3, 2, 1, 1), 0),
    ((0, 3), (3, 0), 1), ((0, 3), (-1, 3), 0), ((2, 0, 4), (0, 0, 5), 1), ((5,), (1, 5), 0),
])
def test_reshape(shape, target, allowzero, const):
    x = rand(*shape)
    got = check("Reshape", {"x": x}, {"s": i64(*target)}, const=const, opset=14,
                allowzero=allowzero)
    if const:
        assert out_types("Reshape", {"x": x}, {"s": i64(*target)}, opset=14,
                         allowzero=allowzero)[0].shape == got[0].shape


def test_reshape_symbolic_and_errors():
    n = TensorType(f32, ("N", 3, 4))
    s = TensorType(dtypes.i64, (2,))
    assert infer("reshape", [n, s], [None, i64(0, -1)])[0].shape == ("N", 12)
    assert infer("reshape", [n, s], [None, i64(-1, 12)])[0].shape == ("N", 12)
    assert infer("reshape", [n, s], [None, i64(-1, 4)])[0].shape == (None, 4)
    assert infer("reshape", [n, TensorType(dtypes.i64, (3,))], [None, i64(0, 4, 3)])[0].shape \
        == ("N", 4, 3)
    assert infer("reshape", [n, s])[0].shape == (None, None)
    with pytest.raises(ModelError, match="elements"):
        infer("reshape", [TensorType(f32, (2, 3)), s], [None, i64(4, 2)])
    with pytest.raises(ModelError, match="more than one -1"):
        infer("reshape", [TensorType(f32, (2, 3)), s], [None, i64(-1, -1)])
    with pytest.raises(ModelError, match="does not come out whole"):
        infer("reshape", [TensorType(f32, (2, 3)), s], [None, i64(-1, 4)])


@pytest.mark.parametrize("shape", [(2, 3, 4), (2, 3, 4, 5), (1,), (3, 0, 2)])
def test_flatten(shape):
    for axis in range(-len(shape), len(shape) + 1):
        check("Flatten", {"x": rand(*shape)}, axis=axis)
    assert infer("flatten", [TensorType(f32, ("N", 3, 4))], axis=1)[0].shape == ("N", 12)
    assert infer("flatten", [TensorType(f32, ("N", 1, 4))], axis=-1)[0].shape == ("N", 4)


@CONST
@pytest.mark.parametrize("shape,axes", [((1, 3, 1, 4), (0, 2)), ((1, 3, 1, 4), (-2,)),
                                        ((1, 3, 1, 4), None), ((1,), (0,)), ((1, 3, 1), ())])
def test_squeeze(shape, axes, const):
    x = rand(*shape)
    if axes is None:
        check("Squeeze", {"x": x}, opset=13)
        check("Squeeze", {"x": x}, opset=11)
    else:
        check("Squeeze", {"x": x}, {"axes": np.array(axes, np.int64)}, const=const, opset=13)
        if axes:
            check("Squeeze", {"x": x}, opset=11, axes=list(axes))


@CONST
@pytest.mark.parametrize("shape,axes", [((3, 4), (0,)), ((3, 4), (2, 0)), ((3, 4), (-1, 1)),
                                        ((), (0, 1)), ((2,), (-3, 1))])
def test_unsqueeze(shape, axes, const):
    x = rand(*shape)
    check("Unsqueeze", {"x": x}, {"axes": i64(*axes)}, const=const, opset=13)
    check("Unsqueeze", {"x": x}, opset=11, axes=list(axes))


def test_squeeze_unsqueeze_errors():
    with pytest.raises(ModelError, match="not 1"):
        infer("squeeze", [TensorType(f32, (2, 3)), TensorType(dtypes.i64, (1,))], [None, i64(0)])
    with pytest.raises(ModelError, match="static shape"):
        infer("squeeze", [TensorType(f32, ("N", 1))])
    with pytest.raises(ModelError, match="repeat"):
        infer("unsqueeze", [TensorType(f32, (2,)), TensorType(dtypes.i64, (2,))],
              [None, i64(0, -3)])
    assert infer("unsqueeze", [TensorType(f32, ("N",)), TensorType(dtypes.i64, (2,))],
                 [None, i64(0, -1)])[0].shape == (1, "N", 1)


@pytest.mark.parametrize("perm", [None, (0, 1, 2), (2, 0, 1), (1, 2, 0), (2, 1, 0)])
def test_transpose(perm):
    kw = {} if perm is None else {"perm": list(perm)}
    check("Transpose", {"x": rand(2, 3, 4)}, **kw)


# ----- concat / split / slice ---------------------------------------------------------------
@pytest.mark.parametrize("axis", [0, 1, 2, -1, -3])
def test_concat(axis):
    shapes = []
    for n in (1, 3, 0):
        s = [2, 3, 4]
        s[axis] = n
        shapes.append(s)
    data = {f"x{i}": rand(*s) for i, s in enumerate(shapes)}
    check("Concat", data, axis=axis)
    t = infer("concat", [TensorType(f32, ("N", 3)), TensorType(f32, (5, 4))], axis=1)[0]
    assert t.shape == (5, 7)
    assert infer("concat", [TensorType(f32, ("N", 3)), TensorType(f32, (0, 3))],
                 axis=0)[0].shape == ("N", 3)


def test_concat_mismatch():
    with pytest.raises(ModelError, match="differ"):
        infer("concat", [TensorType(f32, (2, 3)), TensorType(f32, (2, 4))], axis=0)


@pytest.mark.parametrize("opset,sizes,axis,n", [
    (11, [2, 4], 1, 2), (11, None, 1, 3), (13, [1, 5], -1, 2), (13, None, 0, 2),
    (13, [0, 6, 0], 1, 3), (18, [3, 3], 1, 2), (18, None, 1, 4), (18, None, 0, 1),
])
def test_split(opset, sizes, axis, n):
    x = rand(4, 6)
    kw = {"axis": axis}
    shape_args = {}
    if sizes is not None and opset < 13:
        kw["split"] = sizes
    elif sizes is not None:
        shape_args["split"] = i64(*sizes)
    elif opset >= 18:
        kw["num_outputs"] = n
    got = check("Split", {"x": x}, shape_args, opset=opset, n_out=n, **kw)
    assert len(got) == n
    if shape_args:  # sizes as a run-time input
        check("Split", {"x": x}, shape_args, const=False, opset=opset, n_out=n, **kw)


def test_split_uneven_refused_before_18():
    model, inputs = one_node("Split", {"x": rand(5)}, opset=13, n_out=2)
    with pytest.raises(ModelError, match="equal parts"):
        run_slimc_interpreter(model, inputs)


SLICES = [  # shape, starts, ends, axes, steps
    ((5, 6), [1, 0], [3, 6], None, None),
    ((5, 6), [0], [-1], [1], None),
    ((5, 6), [-2, 10], [1000, -1000], [0, 1], [1, -2]),
    ((5, 6), [4], [-1000], [0], [-1]),
    ((5, 6), [-1, -1], [-6, -7], [-2, -1], [-2, -3]),
    ((5, 6), [7], [9], [1], [1]),
    ((5, 6), [2], [2], [0], [1]),
    ((4, 3, 5), [1, 1], [2 ** 63 - 1, 3], [0, 2], [2, 1]),
    ((4, 3, 5), [-(2 ** 63)], [2 ** 63 - 1], [2], [3]),
]


@CONST
@pytest.mark.parametrize("shape,starts,ends,axes,steps", SLICES)
def test_slice(shape, starts, ends, axes, steps, const):
    x = rand(*shape)
    args = {"starts": i64(*starts), "ends": i64(*ends)}
    order = ["x", "starts", "ends"]
    if axes is not None:
        args["axes"] = i64(*axes)
        order.append("axes")
    if steps is not None:
        if axes is None:
            order.append("")
        args["steps"] = i64(*steps)
        order.append("steps")
    got = check("Slice", {"x": x}, args, const=const, order=order, opset=13)
    if const:
        assert out_types("Slice", {"x": x}, args, order=order, opset=13)[0].shape == got[0].shape
    if steps is None:  # opset 1-9: attributes
        kw = {"starts": starts, "ends": ends}
        if axes is not None:
            kw["axes"] = axes
        check("Slice", {"x": x}, opset=9, **kw)


@HYP
@given(st.data())
def test_slice_drawn(data):
    shape = data.draw(st.lists(st.integers(0, 5), min_size=1, max_size=3))
    rank = len(shape)
    axes = data.draw(st.lists(st.integers(-rank, rank - 1), min_size=1, max_size=rank,
                              unique_by=lambda a: a % rank))
    bound = st.integers(-8, 8)
    starts = [data.draw(bound) for _ in axes]
    ends = [data.draw(bound) for _ in axes]
    steps = [data.draw(st.integers(-3, 3).filter(bool)) for _ in axes]
    check("Slice", {"x": rand(*shape)}, {"s": i64(*starts), "e": i64(*ends),
                                         "a": i64(*axes), "t": i64(*steps)}, opset=13)


def test_slice_symbolic_and_errors():
    x = TensorType(f32, ("N", 6))
    v = TensorType(dtypes.i64, (1,))
    whole = infer("slice", [x, v, v, v], [None, i64(0), i64(2 ** 63 - 1), i64(0)])
    assert whole[0].shape == ("N", 6)
    part = infer("slice", [x, v, v, v], [None, i64(1), i64(3), i64(1)])
    assert part[0].shape == ("N", 2)
    assert infer("slice", [x, v, v, v], [None, i64(1), i64(3), i64(0)])[0].shape == (None, 6)
    with pytest.raises(ModelError, match="step cannot be 0"):
        infer("slice", [x, v, v, v, v], [None, i64(1), i64(3), i64(1), i64(0)])


# ----- gathers and scatters -----------------------------------------------------------------
@pytest.mark.parametrize("axis,idx", [(0, [[0, 1], [-1, 2]]), (1, [3, -4, 0]), (-1, 2),
                                      (2, np.zeros((0, 2), np.int64))])
@pytest.mark.parametrize("idx_dtype", [np.int64, np.int32])
def test_gather(axis, idx, idx_dtype):
    check("Gather", {"x": rand(3, 4, 5), "i": np.asarray(idx, idx_dtype)}, axis=axis)


def test_gather_out_of_range():
    model, inputs = one_node("Gather", {"x": rand(3), "i": i64(3)})
    with pytest.raises(ModelError, match="out of range"):
        run_slimc_interpreter(model, inputs)


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_gather_elements(axis):
    x = rand(3, 4)
    dim = x.shape[axis]
    idx = RNG.integers(-dim, dim, (2, 4) if axis == 0 else (3, 2)).astype(np.int64)
    check("GatherElements", {"x": x, "i": idx}, axis=axis)


@pytest.mark.parametrize("data_shape,idx,batch_dims", [
    ((2, 2), [[0, 0], [1, 1]], 0), ((2, 2), [[1], [0]], 0), ((2, 2, 2), [[0, 1], [1, 0]], 0),
    ((2, 2, 2), [[[0, 1]], [[1, 0]]], 0), ((2, 2, 2), [[1], [0]], 1),
    ((2, 3, 4), [[[1, -1], [0, 2]], [[2, 3], [-3, 0]]], 1), ((3, 2, 4), [[0], [-1]], 0),
])
def test_gather_nd(data_shape, idx, batch_dims):
    check("GatherND", {"x": rand(*data_shape), "i": i64(*idx) if np.ndim(idx) else i64(idx)},
          batch_dims=batch_dims, opset=13)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
def test_scatter_nd(reduction):
    x = rand(4, 3, 2)
    idx = i64([0], [2], [-1]) if reduction == "none" else i64([0], [2], [0])
    check("ScatterND", {"x": x, "i": idx, "u": rand(3, 3, 2)}, opset=18, reduction=reduction)
    idx2 = i64([0, 1], [3, 2])
    check("ScatterND", {"x": x, "i": idx2, "u": rand(2, 2)}, opset=18, reduction=reduction)


@pytest.mark.parametrize("reduction", ["none", "add", "mul", "max", "min"])
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_scatter_elements(reduction, axis):
    x = rand(3, 4)
    dim = x.shape[axis]
    shape = (2, 4) if axis == 0 else (3, 2)
    if reduction == "none":  # distinct targets per line: duplicates have no defined winner
        lines = shape[1 - axis % 2]
        idx = np.stack([RNG.permutation(np.arange(-dim, 0))[:2] for _ in range(lines)])
        idx = idx.T if axis == 0 else idx
    else:
        idx = RNG.integers(-dim, dim, shape)
    check("ScatterElements", {"x": x, "i": idx.astype(np.int64), "u": rand(*shape)},
          axis=axis, reduction=reduction, opset=18)


def test_scatter_opset9():
    x = rand(3, 3)
    idx = i64([1, 0, 2], [0, 2, 1])
    check("Scatter", {"x": x, "i": idx, "u": rand(2, 3)}, opset=9, axis=0)


# ----- expand / tile / pad ------------------------------------------------------------------
@CONST
@pytest.mark.parametrize("shape,target", [((3, 1), (2, 1, 6)), ((3, 1), (3, 4)), ((1,), (2, 3)),
                                          ((2, 3), (1, 1)), ((2, 1, 3), (2, 4, 1)), ((), (0,))])
def test_expand(shape, target, const):
    check("Expand", {"x": rand(*shape)}, {"s": i64(*target)}, const=const)


def test_expand_infer():
    t = infer("expand", [TensorType(f32, ("N", 1)), TensorType(dtypes.i64, (3,))],
              [None, i64(2, 1, 5)])[0]
    assert t.shape == (2, "N", 5)
    assert infer("expand", [TensorType(f32, (3, 1)), TensorType(dtypes.i64, (3,))])[0].shape \
        == (None, 3, None)


@CONST
@pytest.mark.parametrize("shape,reps", [((2, 3), (1, 2)), ((2, 3), (3, 1)), ((2,), (0,)),
                                        ((1, 2, 1), (2, 2, 2))])
def test_tile(shape, reps, const):
    check("Tile", {"x": rand(*shape)}, {"r": i64(*reps)}, const=const)


@CONST
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
@pytest.mark.parametrize("pads", [(1, 2, 0, 1), (0, -1, 2, 0), (2, 2, 2, 2), (-1, 0, 1, -2)])
def test_pad(mode, pads, const):
    x = np.arange(1, 21, dtype=np.float32).reshape(4, 5)
    args = {"pads": i64(*pads)}
    order = ["x", "pads"]
    if mode == "constant":
        args["v"] = np.array(2.5, np.float32)
        order.append("v")
    check("Pad", {"x": x}, args, const=const, order=order, opset=19, mode=mode)
    if mode != "wrap":  # opset 2-10: attributes
        check("Pad", {"x": x}, opset=10, mode=mode, pads=list(pads), value=2.5)


@pytest.mark.parametrize("axes,pads", [((1,), (1, 2)), ((-1, 0), (0, 1, 2, 3)), ((0,), (-1, 1))])
def test_pad_axes(axes, pads):
    x = rand(3, 4).astype(np.int32)
    check("Pad", {"x": x}, {"pads": i64(*pads), "v": np.array(7, np.int32), "axes": i64(*axes)},
          opset=18)
    check("Pad", {"x": x}, {"pads": i64(*pads), "axes": i64(*axes)},
          order=["x", "pads", "", "axes"], opset=18, mode="edge")


def test_pad_reflect_too_far():
    model, inputs = one_node("Pad", {"x": rand(2, 3)}, {"p": i64(0, 3, 0, 0)}, opset=19,
                             mode="reflect")
    with pytest.raises(ModelError, match="reflect padding"):
        run_slimc_interpreter(model, inputs)


# ----- shape metadata and generators --------------------------------------------------------
@pytest.mark.parametrize("start,end", [(None, None), (1, None), (-1, None), (0, -1), (1, 2),
                                       (3, 1), (-10, 10)])
def test_shape(start, end):
    kw = {k: v for k, v in (("start", start), ("end", end)) if v is not None}
    check("Shape", {"x": rand(2, 3, 4)}, opset=15, **kw)


def test_shape_folds_to_constant_and_symbolic_shape():
    """Shape -> Gather -> Unsqueeze -> Concat -> Reshape folds to a constant target."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "zero1"], ["n1"]),  # [1] -> [1, 1]
             helper.make_node("Squeeze", ["n1", "zero1"], ["n2"]),
             helper.make_node("Concat", ["n2", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    model = make_model(nodes, {"x": rand(2, 3, 4)}, ["y"],
                       {"zero": i64(0), "zero1": i64(1), "minus1": i64(-1)})
    graph = slimc.from_onnx(model)
    assert [n.op for n in graph.nodes] == ["reshape"]
    assert graph.outputs[0].type.shape == (2, 12)
    check_against_onnxruntime(model, {"x": rand(2, 3, 4)})
    # With a symbolic batch the shape op stays and the reshape target is known at run time.
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    graph = slimc.from_onnx(model)
    assert "shape" in [n.op for n in graph.nodes]
    slimc.ir.verify(graph)
    x = rand(5, 3, 4)
    np.testing.assert_array_equal(slimc.interpret(graph, x)[0], x.reshape(5, 12))


def test_scalar_initializer_index_keeps_rank():
    model, inputs = one_node("Gather", {"x": rand(3, 4)}, {"i": np.array(-1, np.int64)})
    check_against_onnxruntime(model, inputs)


def test_size():
    check("Size", {"x": rand(2, 3, 4)})
    check("Size", {"x": rand(0, 3)})


@CONST
@pytest.mark.parametrize("value", [None, np.array([3.5], np.float32), np.array([7], np.int64),
                                   np.array([True]), np.array([2], np.int32)])
def test_constant_of_shape(value, const):
    kw = {} if value is None else {"value": helper.make_tensor(
        "v", {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
              np.dtype(np.bool_): TensorProto.BOOL, np.dtype(np.int32): TensorProto.INT32}[
            value.dtype], [1], value.tolist())}
    for shape in [(2, 3), (0,), ()]:
        model, inputs = one_node("ConstantOfShape", {}, {"s": np.array(shape, np.int64)},
                                 const=const, **kw)
        assert_close(run_slimc_interpreter(model, inputs), run_onnx_reference(model, inputs))


@CONST
@pytest.mark.parametrize("start,limit,delta,dtype", [
    (0, 10, 3, np.int64), (10, -3, -4, np.int32), (1, 1, 1, np.int64), (5, 1, 1, np.int32),
    (0.5, 3.2, 0.7, np.float32), (3.0, -1.0, -0.5, np.float64), (1.0, 2.0, 5.0, np.float32),
])
def test_range(start, limit, delta, dtype, const):
    args = {k: np.array(v, dtype) for k, v in (("a", start), ("b", limit), ("c", delta))}
    check("Range", {}, args, const=const)


@pytest.mark.parametrize("upper", [0, 1])
@pytest.mark.parametrize("k", [None, 0, 2, -1, -7, 9])
def test_trilu(upper, k):
    x = rand(2, 3, 5)
    if k is None:
        check("Trilu", {"x": x}, upper=upper, opset=14)
    else:
        check("Trilu", {"x": x}, {"k": np.array(k, np.int64)}, upper=upper, opset=14)


@pytest.mark.parametrize("axis", [-1, 0, 1, -2])
@pytest.mark.parametrize("idx_dtype,values", [(np.int64, np.array([0, 1], np.int64)),
                                              (np.int64, np.array([-2.0, 3.0], np.float32)),
                                              (np.float32, np.array([1.0, 0.0], np.float32))])
def test_one_hot(axis, idx_dtype, values):
    idx = np.array([[1, -1, 4], [0, 5, -6]], idx_dtype)  # 5 and -6 are out of range: all off
    oracle = "ort" if idx_dtype == np.int64 else "ref"  # onnxruntime lacks (f32, i64, f32)
    check("OneHot", {"i": idx}, {"d": np.array(5, np.int64), "v": values}, axis=axis,
          oracle=oracle)
    check("OneHot", {"i": idx}, {"d": np.array(5.0, np.float32), "v": values}, axis=axis,
          oracle="ref", const=False)


@pytest.mark.parametrize("shape,k", [((3, 4), 0), ((4, 3), 1), ((3, 3), -2), ((2, 5), 7)])
def test_eye_like(shape, k):
    check("EyeLike", {"x": rand(*shape)}, k=k)
    check("EyeLike", {"x": rand(*shape)}, k=k, dtype=TensorProto.INT32)


@pytest.mark.parametrize("axis,cond", [(None, [1, 0, 1]), (0, [0, 1, 1]), (1, [1, 0]),
                                       (-1, [True]), (0, [0, 0, 0])])
def test_compress(axis, cond):
    kw = {} if axis is None else {"axis": axis}
    data = {"x": rand(3, 2)}
    got = check("Compress", data, {"c": np.array(cond, bool)}, **kw)  # condition constant
    assert out_types("Compress", data, {"c": np.array(cond, bool)}, **kw)[0].shape == got[0].shape
    check("Compress", data, {"c": np.array(cond, bool)}, const=False, **kw)


@pytest.mark.parametrize("batch_axis,time_axis", [(1, 0), (0, 1)])
def test_reverse_sequence(batch_axis, time_axis):
    x = rand(4, 4, 2) if batch_axis == 1 else rand(4, 5, 2)
    lens = i64(4, 1, 2, 3)
    check("ReverseSequence", {"x": x, "l": lens}, batch_axis=batch_axis, time_axis=time_axis)


@pytest.mark.parametrize("shape", [(3, 4), (5,), (2, 0, 3), (2, 2, 2)])
def test_nonzero(shape):
    x = (rand(*shape) > 0.3).astype(np.float32)
    got = check("NonZero", {"x": x})
    assert out_types("NonZero", {"x": x})[0].shape == (len(shape), None)
    check("NonZero", {}, {"x": x})  # a constant input folds: static count
    assert out_types("NonZero", {}, {"x": x})[0].shape == got[0].shape


def test_nonzero_scalar_and_gather_nd_empty_tuple():
    check("NonZero", {"x": np.array(3.0, np.float32)})
    check("GatherND", {"x": rand(2, 3), "i": np.zeros((2, 0), np.int64)})


def test_symbolic_batch_model():
    """A batch left symbolic: shapes keep N where provable, the interpreter runs any N."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[0, 2, 1]),
             helper.make_node("Reshape", ["t", "s"], ["r"]),
             helper.make_node("Slice", ["r", "st", "en", "ax"], ["sl"]),
             helper.make_node("Concat", ["sl", "sl"], ["c"], axis=1),
             helper.make_node("Unsqueeze", ["c", "ax"], ["u"]),
             helper.make_node("Flatten", ["x"], ["f"], axis=1)]
    model = make_model(nodes, {"x": rand(2, 3, 4)}, ["u", "f"],
                       {"s": i64(0, -1), "st": i64(2), "en": i64(7), "ax": i64(1)})
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    graph = slimc.from_onnx(model)
    slimc.ir.verify(graph)
    assert [v.type.shape for v in graph.outputs] == [("N", 1, 10), ("N", 12)]
    for n in (1, 3):
        x = rand(n, 3, 4)
        r = x.transpose(0, 2, 1).reshape(n, -1)[:, 2:7]
        got = slimc.interpret(graph, x)
        np.testing.assert_array_equal(got[0], np.concatenate([r, r], 1)[:, None])
        np.testing.assert_array_equal(got[1], x.reshape(n, 12))


@pytest.mark.parametrize("sorted_,axis", [(1, None), (0, None), (1, 0), (1, 1), (0, 1), (0, -1)])
def test_unique(sorted_, axis):
    x = np.array([[1, 3, 1, 3], [2, 0, 2, 0], [1, 3, 1, 3]], np.float32)
    kw = {"sorted": sorted_} if axis is None else {"sorted": sorted_, "axis": axis}
    check("Unique", {"x": x}, n_out=4, **kw)
    check("Unique", {"x": x}, n_out=1, **kw)


# ----- Constant -----------------------------------------------------------------------------
@pytest.mark.parametrize("attr,value", [
    ("value", helper.make_tensor("t", TensorProto.FLOAT, [2, 2], [1, 2, 3, 4])),
    ("value", helper.make_tensor("t", TensorProto.INT32, [], [7])),
    ("value_float", 1.5), ("value_floats", [1.0, -2.5]), ("value_int", 3),
    ("value_ints", [1, 2, 3]),
])
def test_constant(attr, value):
    model = make_model([helper.make_node("Constant", [], ["c"], **{attr: value})], {}, ["c"])
    assert_close(run_slimc_interpreter(model, {}), run_onnx_reference(model, {}))


@pytest.mark.parametrize("attr,value", [("value_string", "hi"), ("value_strings", ["a", "b"])])
def test_constant_refused(attr, value):
    model = make_model([helper.make_node("Constant", [], ["c"], **{attr: value})], {}, ["c"])
    with pytest.raises(UnsupportedError, match=attr):
        slimc.from_onnx(model)


# ----- IR round trip ------------------------------------------------------------------------
def test_print_parse_roundtrip():
    nodes = [helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0]),
             helper.make_node("Split", ["t", "sz"], ["a", "b"], axis=0),
             helper.make_node("ConstantOfShape", ["shp"], ["z"],
                              value=helper.make_tensor("v", TensorProto.INT32, [1], [3])),
             helper.make_node("Shape", ["y"], ["ys"], start=1),
             helper.make_node("Unique", ["x"], ["u"])]
    model = make_model(nodes, {"x": rand(2, 3), "shp": i64(2, 2), "y": rand(1, 2)},
                       ["a", "b", "z", "ys", "u"], {"sz": i64(1, 2)})
    graph = slimc.from_onnx(model)
    text = slimc.ir.print_graph(graph)
    again = slimc.parse(text)
    slimc.ir.verify(again)
    assert slimc.ir.print_graph(again) == text


def test_every_tensor_op_is_registered():
    for name in ["reshape", "flatten", "transpose", "concat", "split", "slice", "gather",
                 "gather_elements", "gather_nd", "scatter_nd", "scatter_elements", "squeeze",
                 "unsqueeze", "expand", "tile", "pad", "shape", "size", "constant_of_shape",
                 "range", "trilu", "one_hot", "eye_like", "compress", "reverse_sequence",
                 "nonzero", "unique"]:
        opdef = get_op(name)
        assert opdef.doc, name
    assert get_op("reshape").shape_inputs == (1,)
    with pytest.raises(SlimcError):
        infer("transpose", [TensorType(f32, (2, 3))], perm=[0, 0])
