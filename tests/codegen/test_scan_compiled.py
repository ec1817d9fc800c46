"""Compiled arg_max / arg_min, cumsum, top_k, einsum and det against the interpreter.

Shapes cross the vector and column-block boundaries (1, 7, 15, 17, 63, 65, 300); inputs are
drawn with ties and NaNs where the references define an order for them.
"""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import slimc
import slimc.codegen.cpu.gen_scan  # noqa: F401  (registers the generators)
from slimc.ir import Graph, TensorType, dtypes, interpret
from slimc.ir.registry import infer_node

FLOATS = [np.float32, np.float64, np.float16]
NUMBERS = [np.float32, np.float64, np.int32, np.int64, np.float16]
SIZES = [1, 7, 15, 17, 63, 65]


def op_graph(op, arrays, attrs, consts=(), n_out=1, outputs=None):
    """A graph of one node: graph inputs for `arrays`, then constant inputs."""
    g = Graph(op)
    ins = [g.add_input(f"x{i}", TensorType(dtypes.from_numpy(a.dtype), a.shape))
           for i, a in enumerate(arrays)]
    cs = [g.add_constant(f"c{i}", np.asarray(c)) for i, c in enumerate(consts)]
    n = g.make_node(op, ins + cs, attrs, output_types=[TensorType(dtypes.f32, ())] * n_out)
    for v, t in zip(n.outputs, infer_node(n)):
        v.type = t
    g.outputs = [n.outputs[i] for i in (outputs if outputs is not None else range(n_out))]
    return g


def check(g, *arrays, rtol=1e-5, atol=1e-5):
    expected = interpret(g, *arrays)
    got = slimc.compile(g)(*arrays)
    assert len(got) == len(expected)
    for e, a in zip(expected, got):
        assert a.shape == e.shape and a.dtype == e.dtype, (a.shape, e.shape, a.dtype, e.dtype)
        if e.dtype.kind in "iub":
            np.testing.assert_array_equal(a, e)
        else:
            np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), rtol=rtol,
                                       atol=atol, equal_nan=True)


def data(shape, dtype, seed=0, ties=False, nans=0.0):
    """Random data; `ties` draws from a few values; `nans` is the fraction made NaN."""
    rng = np.random.default_rng(seed)
    if ties or np.dtype(dtype).kind in "iu":
        x = rng.integers(-3, 4, shape).astype(dtype)
    else:
        x = rng.standard_normal(shape).astype(dtype)
    if nans:
        x[rng.random(shape) < nans] = np.nan
    return x


def tol(dtype):
    return dict(rtol=2e-3, atol=2e-3) if dtype == np.float16 else dict(rtol=1e-5, atol=1e-5)


# ----- arg_max / arg_min ----------------------------------------------------------------------

@pytest.mark.parametrize("op", ["arg_max", "arg_min"])
@pytest.mark.parametrize("dtype", NUMBERS + [np.uint8])
def test_arg_reduce(op, dtype):
    x = data((5, 17, 9), dtype, ties=True)
    for axis, keepdims, last in ((0, 1, 0), (1, 0, 1), (-1, 1, 1)):
        check(op_graph(op, [x], {"axis": axis, "keepdims": keepdims, "select_last_index": last}), x)


@pytest.mark.parametrize("op", ["arg_max", "arg_min"])
@pytest.mark.parametrize("last", [0, 1])
@pytest.mark.parametrize("dtype", FLOATS)
def test_arg_reduce_nan(op, last, dtype):
    x = data((6, 65), dtype, ties=True, nans=0.1)
    x[0, :] = np.nan  # an all-NaN row
    x[1, 3] = np.inf
    x[2, 4] = -np.inf
    check(op_graph(op, [x], {"axis": last, "keepdims": 0, "select_last_index": last}), x)
    check(op_graph(op, [x], {"axis": 1 - last, "keepdims": 1, "select_last_index": last}), x)


@pytest.mark.parametrize("dtype", NUMBERS + [np.uint8])
def test_arg_reduce_last_axis_vectors(dtype):
    """Rows of at least two vectors run interleaved lane scans, combined by index."""
    for shape in ((3, 65), (33,)):
        x = data(shape, dtype, seed=7, ties=True,
                 nans=0.05 if np.dtype(dtype).kind == "f" else 0)
        if np.dtype(dtype).kind == "f":
            x[..., [5, 13, 22, 30]] = np.nan  # NaNs in several lanes and in the tail
        for op, last in (("arg_max", 0), ("arg_min", 1)):
            check(op_graph(op, [x], {"axis": -1, "keepdims": 0, "select_last_index": last}), x)


def test_arg_reduce_1d_compiles_fast():
    """A 1-D scan of 16 elements once took LLVM's loop vectorizer seconds (see _work_items)."""
    import time

    x = data((17,), np.float32, nans=0.1)
    start = time.process_time()
    check(op_graph("arg_max", [x], {"axis": 0, "keepdims": 0}), x)
    assert time.process_time() - start < 3


def test_arg_reduce_column_blocks():
    """More post-axis columns than one block holds (300 = 256 + a partial 44)."""
    x = data((3, 7, 300), np.float32, ties=True, nans=0.01)
    check(op_graph("arg_max", [x], {"axis": 1, "keepdims": 1, "select_last_index": 0}), x)
    check(op_graph("arg_min", [x], {"axis": 0, "keepdims": 0, "select_last_index": 1}), x)


def test_arg_reduce_bool():
    x = data((4, 17), np.int32) > 0
    check(op_graph("arg_max", [x], {"axis": 1, "keepdims": 0, "select_last_index": 0}), x)
    check(op_graph("arg_min", [x], {"axis": 1, "keepdims": 0, "select_last_index": 1}), x)


# ----- cumsum -----------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", NUMBERS)
@pytest.mark.parametrize("axis,exclusive,reverse", [(0, 0, 0), (1, 1, 0), (-1, 0, 1), (2, 1, 1)])
def test_cumsum(dtype, axis, exclusive, reverse):
    x = data((3, 17, 7), dtype)
    check(op_graph("cumsum", [x], {"exclusive": exclusive, "reverse": reverse},
                   [np.array(axis, np.int64)]), x, **tol(dtype))


def test_cumsum_axis_forms():
    """axis as an i32 scalar or a 1-element tensor; a rank-1 input; many columns."""
    x = data((65,), np.float32)
    check(op_graph("cumsum", [x], {}, [np.array([0], np.int32)]), x)
    y = data((2, 5, 300), np.float64)
    check(op_graph("cumsum", [y], {"exclusive": 1}, [np.array(1, np.int32)]), y)
    check(op_graph("cumsum", [y], {"reverse": 1}, [np.array(-3, np.int64)]), y)


def test_cumsum_nan_inf():
    x = data((4, 15), np.float32, nans=0.1)
    x[1, 2] = np.inf
    check(op_graph("cumsum", [x], {}, [np.array(1, np.int64)]), x)


# ----- top_k ------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", NUMBERS)
@pytest.mark.parametrize("largest", [0, 1])
def test_top_k(dtype, largest):
    x = data((17, 15), dtype, ties=True)
    for axis, k in ((0, 5), (-1, 1), (-1, 15)):
        check(op_graph("top_k", [x], {"axis": axis, "largest": largest},
                       [np.array([k], np.int64)], n_out=2), x)


@pytest.mark.parametrize("largest", [0, 1])
@pytest.mark.parametrize("dtype", FLOATS)
def test_top_k_nan_inf(largest, dtype):
    x = data((5, 65), dtype, ties=True, nans=0.1)
    x[0, :] = np.nan
    x[1, ::3] = np.inf
    x[2, ::4] = -np.inf
    for k in (3, 65) if dtype == np.float32 else (65,):
        check(op_graph("top_k", [x], {"axis": 1, "largest": largest},
                       [np.array([k], np.int64)], n_out=2), x)


def test_top_k_middle_axis_and_single_outputs():
    x = data((3, 17, 7), np.float32)
    k = np.array(4, np.int64)  # a scalar k
    check(op_graph("top_k", [x], {"axis": 1}, [k], n_out=2), x)
    # values only: the sorted list lives on the stack
    check(op_graph("top_k", [x], {"axis": 1, "largest": 0}, [k], n_out=2, outputs=[0]), x)
    check(op_graph("top_k", [x], {"axis": 2}, [k], n_out=2, outputs=[1]), x)
    y = data((1, 65), np.int64, ties=True)  # values only, one row
    check(op_graph("top_k", [y], {}, [np.array([65], np.int64)], n_out=2, outputs=[0]), y)


def test_top_k_zero():
    x = data((4, 7), np.float32)
    check(op_graph("top_k", [x], {}, [np.array([0], np.int64)], n_out=2), x)


# ----- einsum ------------------------------------------------------------------------------------

EQUATIONS = [
    ("ij,jk->ik", [(7, 17), (17, 15)]),
    ("ij,jk", [(7, 1), (3, 5)]),  # implicit output; j of size 1 broadcasts
    ("bij,bjk->bik", [(2, 7, 17), (2, 17, 5)]),
    ("ij->ji", [(7, 17)]),
    ("ii->i", [(7, 7)]),
    ("ii", [(15, 15)]),  # trace
    ("iji->j", [(3, 5, 3)]),
    ("i,j->ij", [(7,), (17,)]),
    ("i,i->", [(65,), (65,)]),
    ("ijk->", [(3, 5, 7)]),
    ("ijk->kj", [(3, 5, 7)]),
    ("...ij,...jk->...ik", [(2, 1, 3, 4), (3, 4, 5)]),  # the ellipsis broadcasts
    ("...i->...", [(2, 3, 17)]),
    ("i...", [(4, 2, 3)]),
    ("ij,jk,kl->il", [(3, 4), (4, 5), (5, 2)]),
    ("bA,Ab->", [(3, 4), (4, 3)]),
    ("ab,ab->ab", [(1, 17), (7, 17)]),
]


@pytest.mark.parametrize("eq,shapes", EQUATIONS)
def test_einsum(eq, shapes):
    xs = [data(s, np.float32, seed=i) for i, s in enumerate(shapes)]
    check(op_graph("einsum", xs, {"equation": eq}), *xs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("eq,shapes", EQUATIONS[::3])
def test_einsum_int64(eq, shapes):
    xs = [data(s, np.int64, seed=i) for i, s in enumerate(shapes)]
    check(op_graph("einsum", xs, {"equation": eq}), *xs)


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.bool_])
def test_einsum_dtypes(dtype):
    for eq, shapes in (("ij,jk->ik", [(7, 17), (17, 15)]), ("ii->", [(5, 5)]),
                       ("i,j->ji", [(7,), (3,)])):
        xs = [data(s, np.int32 if dtype == np.bool_ else dtype, seed=i) for i, s in enumerate(shapes)]
        if dtype == np.bool_:
            xs = [x > 0 for x in xs]
        check(op_graph("einsum", xs, {"equation": eq}), *xs, **tol(dtype))


# ----- det ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(1, 1), (2, 2), (7, 7), (4, 5, 5), (2, 3, 17, 17)])
def test_det(dtype, shape):
    x = data(shape, np.float64, seed=3) + 2 * np.eye(shape[-1])  # not too ill-conditioned
    x = x.astype(dtype)
    t = dict(rtol=1e-2, atol=1e-2) if dtype == np.float16 else dict(rtol=1e-4, atol=1e-5)
    check(op_graph("det", [x], {}), x, **t)


def test_det_large_in_arena():
    """Matrices over 16 KiB are factored in arena scratch, a region per matrix."""
    x = data((3, 48, 48), np.float64, seed=4) + 8 * np.eye(48)
    check(op_graph("det", [x], {}), x, rtol=1e-9, atol=0)


def test_det_singular_and_pivoting():
    x = np.zeros((4, 3, 3), np.float64)
    x[0] = [[1, 2, 3], [2, 4, 6], [1, 0, 1]]  # dependent rows
    x[1] = [[0, 1, 0], [1, 0, 0], [0, 0, 1]]  # a permutation: det -1, needs pivoting
    x[2] = [[0, 0, 0], [1, 2, 3], [4, 5, 6]]  # a zero row
    x[3] = [[1e-8, 1, 0], [1, 1, 0], [0, 0, 2]]  # a tiny leading pivot
    check(op_graph("det", [x], {}), x, rtol=1e-9, atol=1e-12)


# ----- drawn shapes -------------------------------------------------------------------------------

shapes = st.lists(st.sampled_from(SIZES), min_size=1, max_size=3)


@settings(max_examples=8, deadline=None)
@given(shapes, st.data())
def test_random_arg_reduce(shape, draw):
    op = draw.draw(st.sampled_from(["arg_max", "arg_min"]))
    dtype = draw.draw(st.sampled_from([np.float32, np.int32]))
    axis = draw.draw(st.integers(-len(shape), len(shape) - 1))
    x = data(shape, dtype, seed=len(shape), ties=True, nans=0.02 if dtype == np.float32 else 0)
    attrs = {"axis": axis, "keepdims": draw.draw(st.integers(0, 1)),
             "select_last_index": draw.draw(st.integers(0, 1))}
    check(op_graph(op, [x], attrs), x)


@settings(max_examples=8, deadline=None)
@given(shapes, st.data())
def test_random_cumsum(shape, draw):
    dtype = draw.draw(st.sampled_from([np.float32, np.float64, np.int64]))
    axis = draw.draw(st.integers(-len(shape), len(shape) - 1))
    x = data(shape, dtype, seed=2)
    attrs = {"exclusive": draw.draw(st.integers(0, 1)), "reverse": draw.draw(st.integers(0, 1))}
    check(op_graph("cumsum", [x], attrs, [np.array(axis, np.int64)]), x, rtol=1e-4, atol=1e-4)


@settings(max_examples=8, deadline=None)
@given(shapes, st.data())
def test_random_top_k(shape, draw):
    axis = draw.draw(st.integers(-len(shape), len(shape) - 1))
    k = draw.draw(st.integers(0, shape[axis]))
    dtype = draw.draw(st.sampled_from([np.float32, np.int64]))
    x = data(shape, dtype, seed=5, ties=True, nans=0.02 if dtype == np.float32 else 0)
    attrs = {"axis": axis, "largest": draw.draw(st.integers(0, 1))}
    check(op_graph("top_k", [x], attrs, [np.array([k], np.int64)], n_out=2), x)


@settings(max_examples=8, deadline=None)
@given(st.lists(st.sampled_from([1, 2, 7, 17]), min_size=3, max_size=3), st.data())
def test_random_einsum(sizes, draw):
    """Two operands over labels a, b, c: each operand a random subset in random order, the
    output a random subset of the labels used."""
    size = dict(zip("abc", sizes))
    terms = [draw.draw(st.permutations("abc").map(lambda p: "".join(p[:draw.draw(st.integers(1, 3))])))
             for _ in range(2)]
    used = sorted(set("".join(terms)))
    out = draw.draw(st.permutations(used).map(lambda p: "".join(p[:draw.draw(st.integers(0, len(p)))])))
    xs = [data(tuple(size[l] for l in t), np.float32, seed=i) for i, t in enumerate(terms)]
    check(op_graph("einsum", xs, {"equation": f"{terms[0]},{terms[1]}->{out}"}), *xs,
          rtol=1e-4, atol=1e-4)
