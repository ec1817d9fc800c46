"""Compiled matmul and gemm against the interpreter: the GEMM paths (constant B prepacked,
runtime and batched B), numpy's 1-D rules, gemm's transposes, alpha, beta and C, and the loop
path for other dtypes."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import slimc
from slimc.ir import Graph, TensorType, dtypes, interpret
from slimc.ir.registry import infer_node

EDGE = [1, 7, 16, 17, 65]


def build(op, a, b, c=None, const_b=False, dtype=dtypes.f32, **attrs):
    g = Graph(op)
    ins = [g.add_input("a", TensorType(dtype, a.shape))]
    ins.append(g.add_constant("w", b) if const_b else g.add_input("b", TensorType(dtype, b.shape)))
    if c is not None:
        ins.append(g.add_constant("c", c))
    n = g.make_node(op, ins, attrs, output_types=[TensorType(dtype, ())])
    n.outputs[0].type = infer_node(n)[0]
    g.outputs = [n.outputs[0]]
    return g


def check(g, *args, threads=None, rtol=1e-4, atol=1e-4):
    expected = interpret(g, *args)
    got = slimc.compile(g, threads=threads)(*args)
    for e, a in zip(expected, got):
        assert a.shape == e.shape and a.dtype == e.dtype
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


rng = np.random.default_rng(0)


def rand(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


@pytest.mark.parametrize("M", EDGE)
@pytest.mark.parametrize("N", [1, 17, 64])
@pytest.mark.parametrize("const_b", [True, False])
def test_2d(M, N, const_b):
    a, b = rand(M, 33), rand(33, N)
    g = build("matmul", a, b, const_b=const_b)
    check(g, a) if const_b else check(g, a, b)


@pytest.mark.parametrize("a_shape,b_shape", [((2, 3, 5, 7), (7, 9)), ((4, 5, 7), (4, 7, 9)),
                                             ((1, 5, 7), (3, 7, 9)), ((3, 5, 7), (7,)),
                                             ((7,), (3, 7, 9)), ((7,), (7,)), ((2, 1, 5, 7), (3, 7, 4))])
def test_batched_and_1d(a_shape, b_shape):
    a, b = rand(*a_shape), rand(*b_shape)
    check(build("matmul", a, b), a, b)
    check(build("matmul", a, b, const_b=True), a)


@pytest.mark.parametrize("trans_a", [0, 1])
@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("c_shape", [None, (), (9,), (1, 9), (5, 1), (5, 9)])
def test_gemm(trans_a, trans_b, c_shape):
    a = rand(7, 5) if trans_a else rand(5, 7)
    b = rand(9, 7) if trans_b else rand(7, 9)
    c = None if c_shape is None else rand(*c_shape)
    g = build("gemm", a, b, c, const_b=True, alpha=0.5, beta=2.0, trans_a=trans_a, trans_b=trans_b)
    check(g, a)
    g = build("gemm", a, b, None, trans_a=trans_a, trans_b=trans_b)
    check(g, a, b)


@pytest.mark.parametrize("dtype", [dtypes.f64, dtypes.i32, dtypes.i64, dtypes.f16])
def test_other_dtypes_take_the_loop_path(dtype):
    a = (rng.integers(-3, 4, (3, 4, 5))).astype(dtype.numpy)
    b = (rng.integers(-3, 4, (5, 6))).astype(dtype.numpy)
    check(build("matmul", a, b, dtype=dtype), a, b, rtol=1e-3, atol=1e-3)


def test_threads_split_rows_identically():
    a, b = rand(300, 64), rand(64, 48)
    g = build("matmul", a, b, const_b=True)
    one = slimc.compile(g, threads=1)(a)[0]
    two = slimc.compile(g, threads=2)(a)[0]
    np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(one, a @ b, rtol=1e-4, atol=1e-4)


def test_weights_are_prepacked():
    a, b = rand(4, 64), rand(64, 20)
    mod = slimc.compile(build("matmul", a, b, const_b=True))
    (kernel,) = mod.kernels
    assert [v.name for v in kernel.inputs] == ["a", "matmul.packed"]


@settings(max_examples=15, deadline=None)
@given(st.integers(1, 70), st.integers(1, 70), st.integers(1, 70), st.booleans())
def test_random_shapes(M, K, N, const_b):
    a, b = rand(M, K), rand(K, N)
    g = build("matmul", a, b, const_b=const_b)
    check(g, a) if const_b else check(g, a, b)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("heads,M", [(3, 197), (1, 50), (2, 25), (5, 7), (4, 131)])
def test_few_batch_entries_split_rows(heads, M, threads):
    """Attention at batch 1: few batch entries, each split into blocks of rows (a thread packs
    an entry's B once for its run of blocks); blocks that straddle entries, ragged last
    blocks and thread counts that do not divide the work."""
    q, k = rand(1, heads, M, 64), rand(1, heads, 64, M)
    check(build("matmul", q, k), q, k, threads=threads)
    # the scores' epilogue (scale, mask add) indexes rows of the whole batch
    g = Graph("scores")
    qa = g.add_input("q", TensorType(dtypes.f32, q.shape))
    ka = g.add_input("k", TensorType(dtypes.f32, k.shape))
    mask = g.add_constant("mask", rand(1, 1, M, M))
    s = g.make_node("matmul", [qa, ka], {}, [TensorType(dtypes.f32, (1, heads, M, M))]).outputs[0]
    y = g.make_node("add", [s, mask], {}, [TensorType(dtypes.f32, (1, heads, M, M))]).outputs[0]
    g.outputs = [y]
    check(g, q, k, threads=threads)
