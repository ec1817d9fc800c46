"""Lowering a whole graph: kernel groups -> one LLVM module of kernel functions.

`groups` partitions the graph's nodes (fusion.py decides them; without fusion every node is
its own group). For each group this finds the values it reads from and writes to buffers, and
builds its kernel. Kernel names carry the source model's names, so `mod.llvm_ir` reads like the
model: ``k12_conv_layer1.0.conv1``.
"""

from __future__ import annotations

from typing import Sequence

from llvmlite import ir

from slimc.ir import Graph, Node, Value

from . import gen_conv, gen_linalg, gen_nn, gen_norm, gen_reduce, gen_resize, gen_scan  # noqa: F401
from . import gen_softmax  # noqa: F401
from . import gen_qconv, gen_quant, gen_sparse, gen_transpose  # noqa: F401  (int8; sparse)
from . import gen_scatter, gen_tensor, gen_views  # noqa: F401  (each registers its lowerings)
from . import gen_attention, gen_blocked, gen_winograd  # noqa: F401  (attention, blocked layout, winograd_conv2d)
from .kernel import Kernel, build_kernel, llvm_name
from .target import CpuTarget


def group_boundary(graph: Graph, group: Sequence[Node]) -> tuple[list[Value], list[Value]]:
    """(values the group reads from buffers, values it must write to buffers)."""
    inside = {id(n) for n in group}
    produced = {id(v) for n in group for v in n.outputs}
    inputs, seen = [], set()
    for n in group:
        for v in n.inputs:
            if v is not None and id(v) not in produced and id(v) not in seen:
                seen.add(id(v))
                inputs.append(v)
    outputs = []
    graph_outputs = {id(v) for v in graph.outputs}
    for n in group:
        for v in n.outputs:
            if id(v) in graph_outputs or any(id(u) not in inside for u, _ in v.uses):
                outputs.append(v)
    return inputs, outputs


def lower_graph(graph: Graph, target: CpuTarget, groups: Sequence[Sequence[Node]],
                fast_math: Sequence[str] = ("contract",)) -> tuple[ir.Module, list[Kernel]]:
    module = target.new_ir_module(graph.name)
    kernels = []
    for i, group in enumerate(groups):
        inputs, outputs = group_boundary(graph, group)
        if not outputs:
            continue  # nothing outside needs it (dead code the pipeline did not remove)
        head = group[-1]
        name = f"k{i}_{head.op}_{llvm_name(head.name or head.outputs[0].name)}"
        kernels.append(build_kernel(module, name, group, inputs, outputs, target, fast_math))
    return module, kernels
