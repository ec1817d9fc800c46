"""Compiled reductions against the interpreter, over axes, keepdims and edge sizes."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import slimc
from slimc.ir import Graph, TensorType, dtypes, interpret
from slimc.ir.registry import infer_node

from slimc.codegen.cpu.gen_reduce import REDUCTIONS


def reduce_graph(op, shape, axes, keepdims, dtype=dtypes.f32):
    g = Graph(op)
    x = g.add_input("x", TensorType(dtype, shape))
    n = g.make_node(op, [x], {"axes": axes, "keepdims": keepdims},
                    output_types=[TensorType(dtype, ())])
    n.outputs[0].type = infer_node(n)[0]
    g.outputs = [n.outputs[0]]
    return g


def check(g, x, rtol=1e-5, atol=1e-5):
    expected = interpret(g, x)
    got = slimc.compile(g)(x)
    for e, a in zip(expected, got):
        assert a.shape == e.shape and a.dtype == e.dtype
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("op", REDUCTIONS)
@pytest.mark.parametrize("axes,keepdims", [(None, 1), ([1], 0), ([0, 2], 1), ([2], 1), ([], 1)])
def test_float_reductions(op, axes, keepdims):
    rng = np.random.default_rng(0)
    x = rng.uniform(0.5, 2.0, (3, 5, 17)).astype(np.float32)
    check(reduce_graph(op, x.shape, axes, keepdims), x)


@pytest.mark.parametrize("op", ["reduce_sum", "reduce_max", "reduce_min", "reduce_mean", "reduce_prod"])
@pytest.mark.parametrize("dtype", [dtypes.i32, dtypes.i64])
def test_integer_reductions(op, dtype):
    x = np.random.default_rng(1).integers(-5, 6, (4, 7)).astype(dtype.numpy)
    check(reduce_graph(op, x.shape, [1], 0, dtype), x)


def test_nan_propagates_through_max():
    x = np.array([[1, np.nan, 3], [1, 2, 3]], np.float32)
    check(reduce_graph("reduce_max", x.shape, [1], 0), x)


@settings(max_examples=20, deadline=None)
@given(st.lists(st.sampled_from([1, 2, 7, 16, 17, 65]), min_size=1, max_size=4),
       st.sampled_from(["reduce_sum", "reduce_mean", "reduce_max", "reduce_log_sum_exp"]),
       st.data())
def test_random_axes(shape, op, data):
    axes = data.draw(st.lists(st.integers(0, len(shape) - 1), unique=True, max_size=len(shape)))
    x = np.random.default_rng(2).standard_normal(shape).astype(np.float32)
    check(reduce_graph(op, tuple(shape), sorted(axes) or None, data.draw(st.integers(0, 1))), x,
          rtol=1e-4, atol=1e-4)


def test_a_pool_over_many_pixels_is_priced_by_what_it_reads():
    """A global average pool to few outputs reads many elements: its kernel's cost is the
    elements read (so it is split across threads), and 1 and 3 threads agree with the
    interpreter."""
    x = np.random.default_rng(3).standard_normal((1, 2, 56, 56, 16)).astype(np.float32)
    g = reduce_graph("reduce_mean", x.shape, [2, 3], 1)
    for threads in (1, 3):
        mod = slimc.compile(g, threads=threads, target="x86-64-v3")  # 8-float vectors
        (k,) = mod.kernels
        assert k.cost == x.size and k.parallel_extent == 4  # 2 blocks x 2 vectors each
        np.testing.assert_allclose(mod(x)[0], interpret(g, x)[0], rtol=1e-5, atol=1e-6)
