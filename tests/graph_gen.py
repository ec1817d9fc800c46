"""Hypothesis strategies that draw random slimc graphs (for pass semantics and fuzzing).

Graphs are chains and DAGs of elementwise and broadcasting ops over float32 tensors, with
constant operands mixed in so that folding, CSE and DCE all have work to do.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from slimc.ir import Graph, TensorType, dtypes
from slimc.ir.registry import infer_node

UNARY = ["relu", "neg", "abs", "tanh", "sigmoid", "exp", "floor", "identity"]
BINARY = ["add", "sub", "mul", "max", "min"]


@st.composite
def elementwise_graphs(draw, max_nodes: int = 12):
    shape = tuple(draw(st.lists(st.sampled_from([1, 2, 3, 5, 7]), min_size=1, max_size=3)))
    g = Graph("random")
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    values = [g.add_input("x", TensorType(dtypes.f32, shape))]
    for i in range(draw(st.integers(1, max_nodes))):
        kind = draw(st.sampled_from(["unary", "binary", "binary_const", "const_only"]))
        if kind == "unary":
            op, ins = draw(st.sampled_from(UNARY)), [draw(st.sampled_from(values))]
        else:
            op = draw(st.sampled_from(BINARY))
            a = draw(st.sampled_from(values))
            if kind == "binary":
                b = draw(st.sampled_from(values))
            else:
                bshape = shape[draw(st.integers(0, len(shape))):]
                b = g.add_constant(f"c{i}", rng.uniform(-2, 2, bshape).astype(np.float32))
                if kind == "const_only":
                    a = g.add_constant(f"k{i}", rng.uniform(-2, 2, shape).astype(np.float32))
            ins = [a, b]
        node = g.make_node(op, ins, output_types=[TensorType(dtypes.f32, ())], name=f"n{i}")
        node.outputs[0].type = infer_node(node)[0]
        values.append(node.outputs[0])
    outs = draw(st.lists(st.sampled_from(values[1:] or values), min_size=1, max_size=2, unique_by=id))
    g.outputs = outs
    return g


SIZES = [1, 2, 3, 5, 7, 8, 16, 17]


def _add(g: Graph, op: str, inputs, **attrs):
    """Append a node, its type inferred first (so a combination that does not type-check
    raises before anything is added)."""
    from slimc.ir import get_op
    from slimc.ir.graph import constant_data

    opdef = get_op(op)
    types = opdef.infer_types([v.type for v in inputs], opdef.resolve_attrs(attrs),
                              [constant_data(v) for v in inputs])
    return g.make_node(op, inputs, attrs, output_types=types).outputs[0]


@st.composite
def mixed_graphs(draw, max_nodes: int = 10):
    """Random float32 DAGs of elementwise, broadcast, reduction, matmul and view ops over
    odd sizes: what the fusion planner and the kernel builder must get right together."""
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.sampled_from(SIZES)) for _ in range(rank))
    g = Graph("fuzz")
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    values = [g.add_input("x", TensorType(dtypes.f32, shape))]
    for i in range(draw(st.integers(1, max_nodes))):
        v = draw(st.sampled_from(values))
        s = v.type.shape
        kind = draw(st.sampled_from(["unary", "binary", "const", "reduce", "matmul", "transpose",
                                     "reshape", "softmax_like", "slice", "concat", "conv"]))
        try:
            if kind == "unary":
                out = _add(g, draw(st.sampled_from(UNARY)), [v])
            elif kind == "binary":
                w = draw(st.sampled_from(values))
                out = _add(g, draw(st.sampled_from(BINARY)), [v, w])
            elif kind == "const":
                cshape = s[draw(st.integers(0, len(s))):]
                c = g.add_constant(f"c{i}", rng.uniform(-2, 2, cshape).astype(np.float32))
                out = _add(g, draw(st.sampled_from(BINARY)), [v, c])
            elif kind == "reduce" and s:
                axes = sorted(draw(st.sets(st.integers(0, len(s) - 1), min_size=1)))
                op = draw(st.sampled_from(["reduce_sum", "reduce_max", "reduce_mean"]))
                out = _add(g, op, [v], axes=axes, keepdims=draw(st.integers(0, 1)))
            elif kind == "matmul" and s:
                n = draw(st.sampled_from(SIZES))
                w = g.add_constant(f"w{i}", rng.uniform(-1, 1, (s[-1], n)).astype(np.float32))
                out = _add(g, "matmul", [v, w])
            elif kind == "transpose" and len(s) >= 2:
                perm = draw(st.permutations(list(range(len(s)))))
                out = _add(g, "transpose", [v], perm=list(perm))
            elif kind == "reshape" and s:
                flat = int(np.prod(s))
                out = _add(g, "reshape", [v, g.add_constant(f"s{i}", np.array([flat], np.int64))])
            elif kind == "slice" and s and s[-1] > 1:
                ends = g.add_constant(f"e{i}", np.array([s[-1] - 1], np.int64))
                starts = g.add_constant(f"b{i}", np.array([0], np.int64))
                axes = g.add_constant(f"a{i}", np.array([len(s) - 1], np.int64))
                out = _add(g, "slice", [v, starts, ends, axes])
            elif kind == "concat" and s:
                w = draw(st.sampled_from(values))
                axis = draw(st.integers(0, len(s) - 1))
                out = _add(g, "concat", [v, w], axis=axis)
            elif kind == "conv" and len(s) == 4:
                k = draw(st.sampled_from([1, 3]))
                cout = draw(st.sampled_from([1, 3, 8, 17]))
                group = draw(st.sampled_from([1, s[1]])) if cout % s[1] == 0 else 1
                w = g.add_constant(f"k{i}", rng.uniform(-1, 1, (cout, s[1] // group, k, k))
                                   .astype(np.float32))
                p = k // 2 if draw(st.booleans()) else 0
                stride = draw(st.sampled_from([1, 2]))
                out = _add(g, "conv", [v, w], kernel_shape=[k, k], pads=[p] * 4,
                           strides=[stride] * 2, group=group)
            elif kind == "softmax_like" and s:
                m = _add(g, "reduce_max", [v], axes=[len(s) - 1], keepdims=1)
                e = _add(g, "exp", [_add(g, "sub", [v, m])])
                out = _add(g, "div", [e, _add(g, "reduce_sum", [e], axes=[len(s) - 1], keepdims=1)])
            else:
                continue
        except Exception:
            continue  # shapes that do not combine: draw again
        values.append(out)
    outs = draw(st.lists(st.sampled_from(values[1:] or values), min_size=1, max_size=3, unique_by=id))
    g.outputs = outs
    return g
