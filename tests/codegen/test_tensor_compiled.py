"""The tensor family compiled (codegen/cpu/gen_tensor.py) against the interpreter.

Data movement must be exact, so results are compared bit for bit (NaN equal to NaN). Data is a
graph input (a constant would be folded away before code generation); the shape-deciding
inputs (slice bounds, pads, repeats, ...) are constants, as compilation needs. Sizes cross
vector boundaries (1, 7, 15, 17, 63, 65), and chains check that index maps fuse.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import slimc
from slimc.ir import Graph, TensorType, dtypes, interpret
from slimc.ir.registry import infer_node

DTYPES = {"f32": dtypes.f32, "i64": dtypes.i64, "bool": dtypes.bool, "u8": dtypes.u8,
          "f16": dtypes.f16, "i32": dtypes.i32}


def rotate(cases, variants, per_case=1):
    """Each case with `per_case` of the variants, taken in turn: every variant is covered
    without the full cross product (each compile costs ~0.1 s)."""
    out, k = [], 0
    for case in cases:
        for _ in range(per_case):
            out.append((*case, variants[k % len(variants)]))
            k += 1
    return out


def data(shape, dtype="f32", seed=0):
    rng = np.random.default_rng(seed)
    dt = DTYPES[dtype].numpy
    if dtype == "bool":
        return rng.integers(0, 2, shape).astype(bool)
    if np.dtype(dt).kind in "iu":
        return rng.integers(0, 100, shape).astype(dt)
    return rng.standard_normal(shape).astype(dt)


class Builder:
    """A graph of one or more nodes: inputs are fed at run time, consts are folded in."""

    def __init__(self, name="t"):
        self.g = Graph(name)
        self.feeds = []

    def input(self, array, name=None):
        a = np.asarray(array)
        v = self.g.add_input(name or f"x{len(self.feeds)}", TensorType(dtypes.from_numpy(a.dtype), a.shape))
        self.feeds.append(a)
        return v

    def const(self, array, dtype=None):
        a = np.asarray(array, dtype=dtype)
        return self.g.add_constant("c", a)

    def op(self, op, inputs, n_outputs=1, **attrs):
        n = self.g.make_node(op, inputs, attrs, output_types=[TensorType(dtypes.f32, ())] * n_outputs)
        for v, t in zip(n.outputs, infer_node(n)):
            v.type = t
        return n.outputs[0] if n_outputs == 1 else n.outputs

    def check(self, *outputs, rtol=0.0, **compile_options):
        self.g.outputs = list(outputs)
        expected = interpret(self.g, *self.feeds)
        mod = slimc.compile(self.g, **compile_options)
        got = mod(*self.feeds)
        for e, a in zip(expected, got):
            assert a.dtype == e.dtype and a.shape == e.shape, (a.dtype, a.shape, e.dtype, e.shape)
            if rtol:
                np.testing.assert_allclose(a, e, rtol=rtol, atol=rtol)
            else:
                np.testing.assert_array_equal(a, e)
        return mod


def one(op, x, *consts, dtype="f32", **attrs):
    """op(x, *consts) with x fed at run time; returns the compiled module."""
    b = Builder(op)
    xv = b.input(x)
    cs = [None if c is None else b.const(c) for c in consts]
    return b.check(b.op(op, [xv] + cs, **attrs))


# ----- slice --------------------------------------------------------------------------------

SLICES = [
    ((17,), [2], [15], None, None),
    ((65,), [-1], [-66], None, [-1]),
    ((63,), [60], [-100], [0], [-3]),
    ((5, 17), [1, 3], [4, 100], None, None),
    ((5, 17), [0], [17], [-1], [2]),
    ((7, 15, 3), [6, 14], [-8, -16], [0, 1], [-1, -1]),
    ((4, 65), [-3, 1], [1000, -1], [0, 1], [1, 1]),
    ((3, 7), [5], [9], [1], None),  # start past the end: empty
]


@pytest.mark.parametrize("shape,starts,ends,axes,steps,dtype",
                         rotate(SLICES, ["f32", "i64", "bool", "u8", "f16"], 2))
def test_slice(shape, starts, ends, axes, steps, dtype):
    consts = [np.array(starts, np.int64), np.array(ends, np.int64),
              None if axes is None else np.array(axes, np.int64),
              None if steps is None else np.array(steps, np.int64)]
    while consts and consts[-1] is None:
        consts.pop()
    if len(consts) == 4 and consts[2] is None:
        consts[2] = np.arange(len(starts), dtype=np.int64)
    one("slice", data(shape, dtype), *consts)


# ----- gathers ------------------------------------------------------------------------------

GATHERS = [
    ((17, 5), 0, [0, 16, -1, -17, 3]),
    ((5, 17), 1, [[0, -1], [16, 2]]),
    ((3, 7, 65), 1, [-2]),
    ((3, 7, 65), -1, [[64, 0, -65], [1, 2, 3]]),
    ((9, 15), 0, 4),  # a scalar index drops the axis
    ((9, 15), 1, -3),
    ((17,), 0, -5),  # a scalar from a vector: a rank-0 result
]


@pytest.mark.parametrize("shape,axis,indices,dtype", rotate(GATHERS, ["f32", "i64", "f16", "bool"]))
@pytest.mark.parametrize("fed", [False, True])
def test_gather(shape, axis, indices, dtype, fed):
    b = Builder()
    x = b.input(data(shape, dtype))
    idx = np.array(indices, np.int64)
    iv = b.input(idx.astype(np.int32), "idx") if fed else b.const(idx)
    b.check(b.op("gather", [x, iv], axis=axis))


@pytest.mark.parametrize("shape,ishape,axis,dtype", rotate(
    [((5, 17), (3, 17), 0), ((5, 17), (5, 9), 1), ((4, 7, 3), (4, 2, 3), -2), ((65,), (70,), 0)],
    ["f32", "u8"]))
def test_gather_elements(shape, ishape, axis, dtype):
    d = shape[axis]
    idx = np.random.default_rng(3).integers(-d, d, ishape).astype(np.int64)
    b = Builder()
    x = b.input(data(shape, dtype))
    b.check(b.op("gather_elements", [x, b.input(idx, "idx")], axis=axis))


@pytest.mark.parametrize("shape,indices,batch_dims", [
    ((4, 17), [[0, 1], [3, -1], [-4, 16]], 0),
    ((4, 17), [[1], [-1], [0]], 0),  # whole rows: contiguous, vectorized
    ((2, 3, 65), [[[1], [0]], [[2], [-1]]], 1),
    ((2, 3, 4), [[1, 2], [0, -1]], 1),
])
def test_gather_nd(shape, indices, batch_dims):
    b = Builder()
    x = b.input(data(shape))
    b.check(b.op("gather_nd", [x, b.input(np.array(indices, np.int64), "idx")], batch_dims=batch_dims))


# ----- tile, pad, trilu, depth/space ---------------------------------------------------------

@pytest.mark.parametrize("shape,reps,dtype", rotate(
    [((7,), [3]), ((3, 5), [2, 1]), ((2, 1, 17), [1, 4, 2]), ((1, 15), [65, 1])], ["f32", "i64", "bool"]))
def test_tile(shape, reps, dtype):
    one("tile", data(shape, dtype), np.array(reps, np.int64))


PADS = [((17,), [3, 2], None), ((5, 7), [1, 2, 3, 4], None), ((5, 7), [0, 3, 0, 2], None),
        ((4, 65), [2, 1], [1]), ((3, 15, 17), [-1, 2, 1, -3], [0, -1]),
        ((2, 3, 4, 5), [0, 0, 1, 1, 0, 0, 1, 1], None)]


@pytest.mark.parametrize("shape,pads,axes", PADS)
@pytest.mark.parametrize("mode", ["constant", "reflect", "edge", "wrap"])
def test_pad(shape, pads, axes, mode):
    b = Builder()
    x = b.input(data(shape))
    ins = [x, b.const(np.array(pads, np.int64)), b.const(np.array(1.5, np.float32))]
    if axes is not None:
        ins.append(b.const(np.array(axes, np.int64)))
    b.check(b.op("pad", ins, mode=mode))


@pytest.mark.parametrize("dtype", ["i64", "u8", "bool", "f16"])
def test_pad_dtypes_default_value(dtype):
    b = Builder()
    x = b.input(data((3, 17), dtype))
    b.check(b.op("pad", [x, b.const(np.array([1, 9, 2, 0], np.int64))]))


def test_pad_value_fed_at_run_time():
    b = Builder()
    x = b.input(data((5, 17), "i64"))
    b.check(b.op("pad", [x, b.const(np.array([2, 1, 0, 20], np.int64)), b.input(np.array(7, np.int64), "v")]))


def test_pad_wrap_wider_than_input():
    one("pad", data((3, 2)), np.array([0, 5, 0, 7], np.int64), mode="wrap")


@pytest.mark.parametrize("shape,upper,k", rotate(
    [((5, 7), 0), ((5, 7), 1), ((2, 17, 17), 0), ((2, 17, 17), 1), ((65, 3), 1), ((1, 1), 0)],
    [None, 0, 2, -3, 100, -1]))
def test_trilu(shape, upper, k):
    if k is None:
        one("trilu", data(shape), upper=upper)
    else:
        one("trilu", data(shape, "i64"), np.array(k, np.int64), upper=upper)


def test_trilu_runtime_k():
    b = Builder()
    x = b.input(data((9, 17)))
    b.check(b.op("trilu", [x, b.input(np.array(-2, np.int64), "k")], upper=0))


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("bs,shape", [(2, (1, 8, 3, 5)), (3, (2, 9, 2, 7)), (1, (1, 3, 4, 17))])
def test_depth_to_space(mode, bs, shape):
    one("depth_to_space", data(shape), blocksize=bs, mode=mode)


@pytest.mark.parametrize("mode", ["DCR", "CRD"])
@pytest.mark.parametrize("bs,shape", [(2, (1, 3, 6, 10)), (3, (2, 2, 9, 3))])
def test_space_to_depth(mode, bs, shape):
    one("space_to_depth", data(shape), blocksize=bs, mode=mode)


@pytest.mark.parametrize("shape,batch_axis,time_axis", [((7, 3, 5), 1, 0), ((4, 9), 0, 1),
                                                        ((9, 4), 1, 0)])
def test_reverse_sequence(shape, batch_axis, time_axis):
    T, B = shape[time_axis], shape[batch_axis]
    lens = np.random.default_rng(4).integers(0, T + 1, B).astype(np.int64)
    b = Builder()
    x = b.input(data(shape))
    b.check(b.op("reverse_sequence", [x, b.input(lens, "lens")], batch_axis=batch_axis,
                 time_axis=time_axis))


# ----- concat, split ------------------------------------------------------------------------

@pytest.mark.parametrize("shapes,axis,dtype", rotate([
    ([(7,), (65,), (1,)], 0),
    ([(3, 17), (3, 1), (3, 15)], 1),
    ([(2, 5, 7), (2, 3, 7)], -2),
    ([(2, 5, 7), (4, 5, 7)], 0),
    ([(2, 0, 7), (2, 3, 7)], 1),  # an empty piece
], ["f32", "u8", "bool", "f16"], 2))
def test_concat(shapes, axis, dtype):
    b = Builder()
    xs = [b.input(data(s, dtype, seed=i)) for i, s in enumerate(shapes)]
    b.check(b.op("concat", xs, axis=axis))


def test_concat_with_fused_producers_and_epilogue():
    b = Builder()
    x = b.input(data((17, 5)))
    y = b.input(data((5, 3), seed=1))
    t = b.op("transpose", [x], perm=[1, 0])
    c = b.op("concat", [t, y], axis=1)
    mod = b.check(b.op("relu", [c]))
    assert [k.ops for k in mod.kernels] == [["transpose", "concat", "relu"]]


def test_concat_with_a_constant_piece():
    b = Builder()
    x = b.input(data((3, 17)))
    b.check(b.op("concat", [b.const(data((3, 2), seed=9)), x], axis=1))


@pytest.mark.parametrize("shape,sizes,axis,dtype", rotate(
    [((17,), [7, 10], 0), ((5, 65), [1, 63, 1], 1), ((6, 3, 7), [2, 0, 4], 0), ((4, 15), None, 1)],
    ["f32", "i64"]))
def test_split(shape, sizes, axis, dtype):
    b = Builder()
    x = b.input(data(shape, dtype))
    if sizes is None:
        outs = b.op("split", [x], n_outputs=4, axis=axis, num_outputs=4)
    else:
        outs = b.op("split", [x, b.const(np.array(sizes, np.int64))], n_outputs=len(sizes), axis=axis)
    b.check(*outs)


def test_split_of_a_fused_producer_one_output_unused():
    b = Builder()
    x = b.input(data((6, 17)))
    r = b.op("neg", [x])
    outs = b.op("split", [r, b.const(np.array([2, 4], np.int64))], n_outputs=2, axis=0)
    b.check(b.op("relu", [outs[1]]))


# ----- scatters -----------------------------------------------------------------------------

@pytest.mark.parametrize("reduction,dtype", rotate([("none",), ("add",), ("mul",), ("max",), ("min",)],
                                                  ["f32", "i64", "f16"], 2))
def test_scatter_nd(reduction, dtype):
    b = Builder()
    x = b.input(data((5, 4, 17), dtype))
    idx = np.array([[0, 1], [4, -1], [0, 1], [-5, 2]], np.int64)  # one repeated tuple
    upd = data((4, 17), dtype, seed=2)
    b.check(b.op("scatter_nd", [x, b.input(idx, "idx"), b.input(upd, "upd")], reduction=reduction))


def test_scatter_nd_element_indices():
    b = Builder()
    x = b.input(data((4, 7)))
    idx = np.array([[0, 1], [3, 6], [0, 1]], np.int64)
    b.check(b.op("scatter_nd", [x, b.input(idx, "idx"), b.input(data((3,), seed=5), "upd")],
                 reduction="add"))


def test_scatter_into_a_fused_producer():
    b = Builder()
    x = b.input(data((6, 17)))
    t = b.op("neg", [x])
    idx = np.array([[1, 0, 5], [2, -1, 3]], np.int64)
    b.check(b.op("scatter_elements", [t, b.input(idx, "idx"), b.input(data((2, 3), seed=3), "upd")], axis=1))


@pytest.mark.parametrize("axis,reduction,dtype", rotate(
    [(a, r) for a in (0, 1, -1) for r in ("none", "add", "mul", "max", "min")], ["f32", "i64", "bool", "u8"]))
def test_scatter_elements(axis, reduction, dtype):
    shape, ishape = (6, 17), (4, 9)
    d = shape[axis]
    idx = np.random.default_rng(6).integers(-d, d, ishape).astype(np.int64)
    b = Builder()
    x = b.input(data(shape, dtype))
    b.check(b.op("scatter_elements", [x, b.input(idx, "idx"), b.input(data(ishape, dtype, 7), "upd")],
                 axis=axis, reduction=reduction))


# ----- values from indices ------------------------------------------------------------------

@pytest.mark.parametrize("start,limit,delta,dt", [(0, 17, 1, np.int64), (65, -3, -4, np.int32),
                                                  (0.5, 20.0, 0.3, np.float32), (1.0, 9.0, 0.5, np.float16),
                                                  (-2.5, 63.0, 1.0, np.float64)])
def test_range(start, limit, delta, dt):
    b = Builder()
    vs = [b.const(np.array(v, dt)) for v in (start, limit, delta)]
    r = b.op("range", vs)
    z = b.input(np.zeros(r.type.shape, dt))  # keep range out of constant folding's reach
    b.check(b.op("add", [r, z]), opt_level=0)
    b2 = Builder()
    vs = [b2.const(np.array(v, dt)) for v in (start, limit, delta)]
    r = b2.op("range", vs)
    b2.check(r, opt_level=0)


@pytest.mark.parametrize("shape,value,dtype", [([17, 3], 1.5, dtypes.f32), ([65], 7, dtypes.i64),
                                               ([], 1, dtypes.bool), ([2, 0], 3, dtypes.u8),
                                               ([4, 9], -2.25, dtypes.f16)])
def test_constant_of_shape(shape, value, dtype):
    b = Builder()
    c = b.op("constant_of_shape", [b.const(np.array(shape, np.int64))], value=value, dtype=dtype)
    b.check(c, opt_level=0)


@pytest.mark.parametrize("shape,k,dtype", [((5, 7), 0, None), ((17, 65), 3, dtypes.i64),
                                           ((9, 4), -2, dtypes.bool), ((3, 3), 5, dtypes.f16)])
def test_eye_like(shape, k, dtype):
    b = Builder()
    x = b.input(data(shape))
    b.check(b.op("eye_like", [x], k=k, dtype=dtype))


@pytest.mark.parametrize("ishape,depth,axis,idt", rotate(
    [((5,), 17, -1), ((3, 4), 7, 0), ((3, 4), 65, 1), ((2, 3), 9, -1)], [np.int64, np.int32, np.float32], 2))
def test_one_hot(ishape, depth, axis, idt):
    idx = np.random.default_rng(8).integers(-depth - 2, depth + 2, ishape).astype(idt)
    if idt == np.float32:
        idx = idx + np.float32(0.25)
    b = Builder()
    iv = b.input(idx, "idx")
    b.check(b.op("one_hot", [iv, b.const(np.array(depth, np.int64)),
                             b.const(np.array([-1.0, 2.5], np.float32))], axis=axis))


@pytest.mark.parametrize("start,end", [(0, None), (1, None), (-2, -1), (3, 1)])
def test_shape_and_size_reaching_codegen(start, end):
    b = Builder()
    x = b.input(data((2, 3, 5)))
    b.check(b.op("shape", [x], start=start, end=end), b.op("size", [x]), opt_level=0)


# ----- refused: data-dependent shapes --------------------------------------------------------

def test_data_dependent_shapes_are_refused_by_name():
    b = Builder()
    x = b.input(data((4, 5)))
    n = b.g.make_node("nonzero", [x], {}, output_types=[TensorType(dtypes.i64, ())], name="nz_node")
    n.outputs[0].type = infer_node(n)[0]
    b.g.outputs = [n.outputs[0]]
    with pytest.raises(slimc.UnsupportedError, match="nonzero.*nz_node"):
        slimc.compile(b.g)(*b.feeds)


# ----- fused chains -------------------------------------------------------------------------

def test_transpose_relu_slice_is_one_kernel():
    b = Builder()
    x = b.input(data((17, 9, 65)))
    t = b.op("transpose", [x], perm=[2, 0, 1])
    r = b.op("relu", [t])
    s = b.op("slice", [r, b.const(np.array([60, 1, 8], np.int64)), b.const(np.array([1, 16, -100], np.int64)),
                       b.const(np.array([0, 1, 2], np.int64)), b.const(np.array([-7, 2, -1], np.int64))])
    mod = b.check(s)
    assert [k.ops for k in mod.kernels] == [["transpose", "relu", "slice"]]


def test_embedding_gather_add_fuses():
    b = Builder()
    table = b.input(data((50, 17)), "table")
    ids = b.input(np.array([[3, 49, -1], [0, 7, 7]], np.int64), "ids")
    pos = b.input(data((3, 17), seed=1), "pos")
    e = b.op("gather", [table, ids], axis=0)
    mod = b.check(b.op("add", [e, pos]))
    assert [k.ops for k in mod.kernels] == [["gather", "add"]]


def test_slice_of_pad_and_tile_chain():
    b = Builder()
    x = b.input(data((3, 15)))
    p = b.op("pad", [x, b.const(np.array([1, 2, 1, 2], np.int64))], mode="reflect")
    t = b.op("tile", [p, b.const(np.array([2, 3], np.int64))])
    s = b.op("slice", [t, b.const(np.array([-1], np.int64)), b.const(np.array([-100], np.int64)),
                       b.const(np.array([1], np.int64)), b.const(np.array([-3], np.int64))])
    b.check(b.op("sigmoid", [s]), rtol=1e-6)


def test_generated_ir_names_the_ops():
    b = Builder()
    x = b.input(data((4, 17)))
    p = b.op("pad", [x, b.const(np.array([0, 3, 0, 2], np.int64))])
    mod = b.check(p)
    assert "pad.row" in mod.llvm_ir  # loops named after the value they compute


def test_large_ops_split_across_threads():
    """Big enough for the work items to be shared between threads."""
    b = Builder()
    x = b.input(data((2, 64, 33, 31)))
    y = b.input(data((2, 16, 33, 31), seed=1))
    c = b.op("concat", [x, y], axis=1)
    p = b.op("pad", [x, b.const(np.array([0, 0, 2, 3, 0, 0, 1, 4], np.int64))], mode="edge")
    t = b.op("trilu", [b.op("neg", [x])], upper=0)
    s = b.op("split", [y, b.const(np.array([5, 11], np.int64))], n_outputs=2, axis=1)
    b.check(c, p, t, *s, threads=2)


# ----- drawn shapes -------------------------------------------------------------------------

SIZES = st.sampled_from([1, 7, 15, 17, 63, 65])


@settings(max_examples=12, deadline=None)
@given(st.lists(SIZES, min_size=1, max_size=3), st.data())
def test_drawn_slices(shape, draw):
    axis = draw.draw(st.integers(0, len(shape) - 1))
    d = shape[axis]
    start = draw.draw(st.integers(-d - 2, d + 2))
    end = draw.draw(st.integers(-d - 2, d + 2))
    step = draw.draw(st.sampled_from([1, 2, 3, -1, -2]))
    one("slice", data(tuple(shape)), np.array([start], np.int64), np.array([end], np.int64),
        np.array([axis], np.int64), np.array([step], np.int64))


@settings(max_examples=10, deadline=None)
@given(st.lists(SIZES, min_size=1, max_size=3), st.data())
def test_drawn_pads_and_concats(shape, draw):
    rank = len(shape)
    mode = draw.draw(st.sampled_from(["constant", "edge", "wrap", "reflect"]))
    lim = [d - 1 if mode == "reflect" else d for d in shape]
    pads = [draw.draw(st.integers(0, min(3, m))) for m in lim * 2]
    one("pad", data(tuple(shape)), np.array(pads, np.int64), mode=mode)
    axis = draw.draw(st.integers(0, rank - 1))
    other = list(shape)
    other[axis] = draw.draw(SIZES)
    b = Builder()
    xs = [b.input(data(tuple(shape))), b.input(data(tuple(other), seed=1))]
    b.check(b.op("concat", xs, axis=axis))


@pytest.mark.parametrize("shape,to,perm", [
    ((1, 197, 192), (1, 197, 3, 64), (0, 2, 1, 3)),   # attention's head split: vector loads
    ((2, 6, 12), (2, 6, 3, 4), (0, 2, 1, 3)),          # a split narrower than a vector
    ((3, 10), (3, 2, 5), (1, 0, 2)),
    ((2, 35), (2, 5, 7), (0, 2, 1)),                    # last axis moved: gathers
    ((1, 3, 5, 64), (1, 3, 320), None),                 # a merge: runs cross rows of 64
    ((4, 8, 16), (4, 128), None),
])
def test_reshape_views_fused_with_elementwise(shape, to, perm):
    """A bias add, a reshape and a transpose in one kernel: the reshape's reads stay vector
    loads when the input's last dim is a multiple of the output's."""
    rng = np.random.default_rng(0)
    rand = lambda *s: rng.standard_normal(s).astype(np.float32)  # noqa: E731
    g = Graph("view")
    x = g.add_input("x", TensorType(dtypes.f32, shape))
    bias = g.add_constant("bias", rand(shape[-1]))
    a = g.make_node("add", [x, bias], {}, [TensorType(dtypes.f32, shape)]).outputs[0]
    target = g.add_constant("to", np.array(to, np.int64))
    r = g.make_node("reshape", [a, target], {}, [TensorType(dtypes.f32, to)]).outputs[0]
    if perm is not None:
        r = g.make_node("transpose", [r], {"perm": list(perm)},
                        [TensorType(dtypes.f32, tuple(to[p] for p in perm))]).outputs[0]
    g.outputs = [r]
    xv = rand(*shape)
    mod = slimc.compile(g)
    assert len(mod.kernels) == 1
    np.testing.assert_array_equal(mod(xv)[0], interpret(g, xv)[0])
