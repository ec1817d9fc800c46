"""Random ONNX models for differential fuzzing (tests/test_fuzz.py): one ModelProto (built
with onnx.helper) that every oracle reads -- slimc's interpreter, slimc's compiled code,
onnxruntime -- with its inputs and what is known about each output (`FuzzCase`).

`builder` holds the values and the node builder; `elementwise`, `nn` and `shape` one function
per op family, each drawing its operands from the values built so far (or returning None when
none fits).
"""

from __future__ import annotations

from hypothesis import strategies as st
from onnx import helper

from . import elementwise as ew
from . import nn
from . import shape as sh
from .builder import BOOL, F16, F32, F64, I32, I64, OPSET, Builder, FuzzCase, Val

__all__ = ["FuzzCase", "Val", "onnx_cases"]

FAMILIES = {  # family -> weight
    ew.op_unary: 4, ew.op_binary: 4, ew.op_compare: 1, ew.op_logic: 1, ew.op_where: 1,
    ew.op_cast: 2, ew.op_clip: 1, ew.op_variadic: 1, ew.op_reduce: 2, ew.op_arg: 1,
    ew.op_softmax: 1, ew.op_hardmax: 1, ew.op_cumsum: 1, ew.op_topk: 1,
    nn.op_matmul: 2, nn.op_gemm: 1, nn.op_einsum: 1, nn.op_conv: 2, nn.op_conv_transpose: 1,
    nn.op_pool: 1, nn.op_norm: 1, nn.op_instance_norm: 1, nn.op_resize: 1,
    sh.op_transpose: 2, sh.op_reshape: 2, sh.op_flatten: 1, sh.op_unsqueeze: 1, sh.op_squeeze: 1,
    sh.op_expand: 1, sh.op_slice: 2, sh.op_concat: 2, sh.op_split: 1, sh.op_gather: 2,
    sh.op_gather_elements: 1, sh.op_pad: 1, sh.op_tile: 1, sh.op_trilu: 1, sh.op_shape: 1,
    sh.op_depth_space: 1,
}
_FAMILY_LIST = [f for f, w in FAMILIES.items() for _ in range(w)]


@st.composite
def onnx_cases(draw, max_nodes: int = 10) -> FuzzCase:
    """A random ONNX model over 1-3 inputs with its inputs: chains and DAGs of the ops above,
    mixed dtypes (f32, f16, f64, i32, i64, bool), odd shapes (0-size, one element, primes, rank 6)."""
    b = Builder(draw)
    b.input(b.choice([F32, F32, F32, F16, I64, I32, BOOL, F64]), b.shape())
    for _ in range(draw(st.integers(1, max_nodes))):
        draw(st.sampled_from(_FAMILY_LIST))(b)
    made = [v for v in b.values if v not in b.input_vals]
    if not made:
        x = b.input_vals[0]
        made = [b.emit1("Identity", [x], x.dtype, x.shape, x.bound, x.exact)]
    outs = [made[-1]] + [v for v in draw(st.lists(st.sampled_from(made), max_size=2, unique_by=lambda v: v.name))
                         if v is not made[-1]]
    if b.one_in(6):  # an output the runtime copies instead of a kernel writing it
        pool = b.choice([b.input_vals, b.consts, outs])  # a graph input, a constant, an output again
        if pool:
            outs.append(b.choice(pool))
    graph = helper.make_graph(b.nodes, "fuzz", _infos(b.input_vals), _infos(outs), b.initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    return FuzzCase(model, dict(b.inputs), outs)


def _infos(vals) -> list:
    return [helper.make_tensor_value_info(v.name, helper.np_dtype_to_tensor_dtype(v.dtype), list(v.shape))
            for v in vals]
