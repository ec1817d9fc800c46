"""Every elementwise lowering, compiled, against the interpreter (the numpy references).

Shapes are drawn to cross vector boundaries (1, 7, 15, 17, 63, 65 ...) and to broadcast.
Special values (NaN, +-Inf, +-0, large magnitudes) are mixed into the inputs so that NaN and
Inf propagation is checked, not just ordinary numbers.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import slimc
from slimc.ir import Graph, TensorType, dtypes, get_op, interpret
from slimc.ir.registry import infer_node
from slimc.codegen.cpu.scalar_ops import LOWERINGS

EDGE_SIZES = [1, 2, 7, 8, 15, 16, 17, 63, 65]
SPECIAL = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30, 1e-40], np.float32)

# Domain restrictions so libm and numpy agree on what is defined.
POSITIVE = {"log", "sqrt"}
UNIT = {"asin", "acos", "atanh"}
GE_ONE = {"acosh"}
FLOAT_UNARY = ["neg", "abs", "sqrt", "reciprocal", "exp", "log", "erf", "tanh", "sigmoid", "relu",
               "floor", "ceil", "round", "sign", "sin", "cos", "tan", "asin", "acos", "atan",
               "sinh", "cosh", "asinh", "acosh", "atanh", "softsign", "softplus", "mish",
               "leaky_relu", "elu", "celu", "selu", "thresholded_relu", "hard_sigmoid",
               "hard_swish", "gelu", "shrink", "identity", "isnan", "isinf"]
FLOAT_BINARY = ["add", "sub", "mul", "div", "pow", "prelu", "max", "min", "mod", "equal", "less",
                "less_equal", "greater", "greater_equal"]


def compile_and_compare(g: Graph, inputs, rtol=2e-6, atol=1e-6, **options):
    expected = interpret(g, *inputs)
    got = slimc.compile(g, opt_level=1, **options)(*inputs)
    for e, a in zip(expected, got):
        assert a.dtype == e.dtype and a.shape == e.shape
        if e.dtype.kind == "f":
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
        else:
            np.testing.assert_array_equal(a, e)


def unary_graph(op, shape, dtype=dtypes.f32, **attrs):
    g = Graph(op)
    x = g.add_input("x", TensorType(dtype, shape))
    n = g.make_node(op, [x], attrs, output_types=[TensorType(dtype, shape)])
    n.outputs[0].type = infer_node(n)[0]
    g.outputs = [n.outputs[0]]
    return g


def sample(op, shape, rng):
    x = rng.uniform(-4, 4, shape).astype(np.float32)
    if op in POSITIVE:
        x = np.abs(x) + 0.01
    elif op in UNIT:
        x = np.clip(x / 4.5, -0.99, 0.99).astype(np.float32)
    elif op in GE_ONE:
        x = np.abs(x) + 1
    return x


@pytest.mark.parametrize("op", FLOAT_UNARY)
@pytest.mark.parametrize("n", [1, 17, 65])
def test_float_unary(op, n):
    rng = np.random.default_rng(n)
    x = sample(op, (3, n), rng)
    # libm and numpy differ by an ulp or two on transcendental functions
    compile_and_compare(unary_graph(op, (3, n)), [x], rtol=4e-6, atol=2e-6)


@pytest.mark.parametrize("op", ["neg", "abs", "relu", "sign", "exp", "tanh", "sigmoid", "floor",
                                "isnan", "isinf", "leaky_relu", "hard_swish", "identity"])
def test_special_values_flow_through(op):
    x = np.tile(SPECIAL, 3)
    # SPECIAL holds a denormal; by default a call flushes denormals to zero (test_compile.py
    # checks that), so compare IEEE behaviour with flushing off.
    compile_and_compare(unary_graph(op, x.shape), [x], rtol=4e-6, atol=2e-6, denormals="keep")


@pytest.mark.parametrize("op", FLOAT_BINARY)
def test_float_binary_with_broadcast(op):
    rng = np.random.default_rng(0)
    g = Graph(op)
    a = g.add_input("a", TensorType(dtypes.f32, (2, 5, 17)))
    b = g.add_input("b", TensorType(dtypes.f32, (5, 1)))
    n = g.make_node(op, [a, b], output_types=[TensorType(dtypes.f32, ())])
    n.outputs[0].type = infer_node(n)[0]
    g.outputs = [n.outputs[0]]
    x = rng.uniform(-3, 3, (2, 5, 17)).astype(np.float32)
    y = rng.uniform(0.5, 3, (5, 1)).astype(np.float32) * rng.choice([-1, 1], (5, 1)).astype(np.float32)
    if op == "pow":
        x = np.abs(x)
    compile_and_compare(g, [x, y], rtol=4e-6, atol=2e-6)


@pytest.mark.parametrize("dtype", [dtypes.i32, dtypes.i64, dtypes.u8, dtypes.i8])
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "mod", "max", "min", "equal", "less",
                                "greater"])
def test_integer_binary(dtype, op):
    rng = np.random.default_rng(1)
    g = Graph(op)
    shape = (4, 17)
    a = g.add_input("a", TensorType(dtype, shape))
    b = g.add_input("b", TensorType(dtype, shape))
    n = g.make_node(op, [a, b], output_types=[TensorType(dtype, shape)])
    n.outputs[0].type = infer_node(n)[0]
    g.outputs = [n.outputs[0]]
    lo = 0 if not dtype.is_signed else -20
    x = rng.integers(lo, 20, shape).astype(dtype.numpy)
    y = rng.integers(lo, 20, shape).astype(dtype.numpy)
    y[y == 0] = 3
    compile_and_compare(g, [x, y])


CAST_TYPES = [dtypes.f32, dtypes.f64, dtypes.f16, dtypes.i32, dtypes.i64, dtypes.u8, dtypes.i8,
              dtypes.bool]


@pytest.mark.parametrize("src", CAST_TYPES)
@pytest.mark.parametrize("dst", CAST_TYPES)
def test_cast(src, dst):
    rng = np.random.default_rng(2)
    x = rng.uniform(-100, 200, (2, 9))
    if not src.is_float:
        x = np.clip(np.round(x), 0 if not src.is_signed else -100, 100)
    if dst in (dtypes.u8, dtypes.i8) and src.is_float:
        x = np.clip(x, 0, 100)  # out-of-range float->int is undefined in ONNX and C
    x = x.astype(src.numpy)
    compile_and_compare(unary_graph("cast", (2, 9), src, to=dst), [x])


def test_where_and_logic():
    g = slimc.parse("# slimc-ir v1\ngraph @w(%c: bool[4,9], %a: f32[4,9], %b: f32[9]) -> (f32[4,9], bool[4,9]) {\n"
                    "  %y = where(%c, %a, %b) : f32[4,9]\n"
                    "  %p = greater(%a, %b) : bool[4,9]\n"
                    "  %q = and(%p, %c) : bool[4,9]\n"
                    "  %r = not(%q) : bool[4,9]\n"
                    "  return %y, %r\n}\n")
    rng = np.random.default_rng(3)
    compile_and_compare(g, [rng.random((4, 9)) > 0.5, rng.standard_normal((4, 9)).astype(np.float32),
                            rng.standard_normal(9).astype(np.float32)])


@settings(max_examples=25, deadline=None)
@given(st.lists(st.sampled_from(EDGE_SIZES), min_size=1, max_size=3),
       st.sampled_from(["add", "mul", "max", "sub"]), st.integers(0, 3))
def test_broadcast_shapes_across_vector_boundaries(shape, op, cut):
    shape = tuple(shape)
    bshape = tuple(1 if i % 2 else d for i, d in enumerate(shape[cut:]))
    g = Graph("b")
    a = g.add_input("a", TensorType(dtypes.f32, shape))
    b = g.add_input("b", TensorType(dtypes.f32, bshape))
    n = g.make_node(op, [a, b], output_types=[TensorType(dtypes.f32, shape)])
    r = g.make_node("relu", [n.outputs[0]], output_types=[TensorType(dtypes.f32, shape)])
    g.outputs = [r.outputs[0]]
    rng = np.random.default_rng(len(shape))
    compile_and_compare(g, [rng.standard_normal(shape).astype(np.float32),
                            rng.standard_normal(bshape).astype(np.float32)])


def test_every_elementwise_op_in_the_registry_has_a_lowering():
    from slimc.ir import FusionKind, all_ops

    missing = [name for name, op in all_ops().items()
               if op.fusion == FusionKind.ELEMENTWISE and name not in LOWERINGS
               and not name.startswith("test_")]
    assert not missing, f"elementwise ops without a CPU lowering: {missing}"
