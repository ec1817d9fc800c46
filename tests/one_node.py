"""A graph of one op node for kernel tests (compiled for the CPU in tests/codegen, for the GPU
in tests/test_cuda_*.py), checked against slimc's interpreter."""

from slimc.ir import Graph, TensorType, dtypes
from slimc.ir.registry import infer_node


def add_node(g, op, ins, nout=1, **attrs):
    n = g.make_node(op, ins, attrs, output_types=[TensorType(dtypes.f32, ())] * nout)
    for o, t in zip(n.outputs, infer_node(n)):
        o.type = t
    return n.outputs


def build(op, inputs, consts=(), nout=1, then=None, **attrs):
    """A graph of one `op` node. inputs: arrays (None: an absent optional input); the indices in
    `consts` become constants, the others graph inputs. then(g, outs) -> outs adds consumers
    (which the fusion planner may fuse into the op's kernel). Returns (graph, runtime args)."""
    g = Graph(op)
    ins = []
    for i, a in enumerate(inputs):
        if a is None:
            ins.append(None)
        elif i in consts:
            ins.append(g.add_constant(f"c{i}", a))
        else:
            ins.append(g.add_input(f"x{i}", TensorType(dtypes.from_numpy(a.dtype), a.shape)))
    outs = add_node(g, op, ins, nout, **attrs)
    if then is not None:
        outs = then(g, outs)
    g.outputs = list(outs)
    return g, [a for i, a in enumerate(inputs) if a is not None and i not in consts]
