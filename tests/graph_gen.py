"""Hypothesis strategies that draw random graphs.

* `elementwise_graphs`: slimc graphs, chains and DAGs of elementwise and broadcasting ops over
  float32 tensors with constant operands mixed in, so that folding, CSE and DCE all have work
  to do (pass semantics, print/parse round trips).
* `onnx_cases` (from tests/onnx_gen/): ONNX models (onnx.helper) with their inputs, for
  differential fuzzing: the same ModelProto goes to slimc's interpreter, slimc's compiled code
  and onnxruntime.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from slimc.ir import Graph, TensorType, dtypes
from slimc.ir.registry import infer_node

from .onnx_gen import FuzzCase, onnx_cases  # noqa: F401 (the fuzzer's strategy lives there)

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
