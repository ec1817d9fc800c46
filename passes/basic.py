"""The first passes: type inference, dead code, common subexpressions, constant folding."""

from __future__ import annotations

from slimc.ir import Graph
from slimc.ir.debug import log
from slimc.ir.errors import ModelError
from slimc.ir.interpreter import run_node
from slimc.ir.registry import infer_node

from .pass_manager import Pass


class InferShapes(Pass):
    """Re-derive every node's output types from its inputs (after inputs were re-typed or
    shapes bound)."""

    name = "infer_shapes"

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in graph.nodes:
            for v, t in zip(node.outputs, infer_node(node)):
                if t != v.type:
                    v.type = t
                    changed = True
        return changed


class DeadCodeElimination(Pass):
    """Remove nodes no output depends on, and constants nothing uses."""

    name = "dce"

    def run(self, graph: Graph) -> bool:
        live = {id(v) for v in graph.outputs}
        keep = []
        for node in reversed(graph.nodes):
            if any(id(v) in live for v in node.outputs):
                keep.append(node)
                live.update(id(v) for v in node.inputs if v is not None)
        dead = [n for n in graph.nodes if not any(id(v) in live for v in n.outputs)]
        for node in reversed(dead):
            for v in node.outputs:  # dead nodes may use each other; drop their uses first
                for user, i in list(v.uses):
                    user.set_input(i, None)
        for node in dead:
            graph.remove_node(node)
        unused = [c for c in graph.constants.values() if not c.uses and c not in graph.outputs]
        for c in unused:
            graph.remove_constant(c)
        return bool(dead or unused)


def _attr_key(x):
    if isinstance(x, list):
        return tuple(_attr_key(e) for e in x)
    return x


class CommonSubexpressionElimination(Pass):
    """Nodes with the same op, inputs and attributes compute the same thing: keep the first.
    Small constants with equal data are merged first so their users can match."""

    name = "cse"
    CONST_MERGE_LIMIT = 1024  # elements; bigger constants are not compared

    def run(self, graph: Graph) -> bool:
        changed = False
        seen_consts: dict = {}
        for c in list(graph.constants.values()):
            if c.data is None or c.data.size > self.CONST_MERGE_LIMIT or c in graph.outputs:
                continue
            key = (c.type, c.data.tobytes())
            first = seen_consts.setdefault(key, c)
            if first is not c and c.uses:
                c.replace_all_uses_with(first)
                changed = True
        seen: dict = {}
        for node in list(graph.nodes):
            key = (node.op, tuple(id(v) for v in node.inputs), len(node.outputs),
                   tuple(sorted((k, _attr_key(v)) for k, v in node.attrs.items())))
            try:
                hash(key)
            except TypeError:
                continue
            first = seen.setdefault(key, node)
            if first is node or any(v in graph.outputs for v in node.outputs):
                continue  # (a graph output keeps its own name)
            for old, new in zip(node.outputs, first.outputs):
                old.replace_all_uses_with(new)
            graph.remove_node(node)
            changed = True
        return changed


class FoldConstants(Pass):
    """Evaluate nodes whose inputs are all constants, through the op references.

    A result is kept only if it is not much larger than the constants it consumes, so folding
    never bloats a model (an `expand` of a scalar to a big tensor stays an expand), and, when it
    is larger at all, small (at most `max_elements`). Results no larger than their inputs (a
    transposed or reshaped weight, a weight times a scale) always fold: computing them once
    here is what saves the run-time copy.
    """

    name = "fold_constants"

    def __init__(self, max_elements: int = 1 << 20, growth_slack: int = 4096):
        self.max_elements = max_elements
        self.growth_slack = growth_slack

    def run(self, graph: Graph) -> bool:
        changed = False
        for node in list(graph.nodes):
            if not node.inputs and node.op not in ("constant_of_shape", "range"):
                continue
            if any(v is not None and (not v.is_constant or v.data is None) for v in node.inputs):
                continue
            if not all(v.type.is_static for v in node.outputs):
                continue
            out_elems = sum(v.type.numel for v in node.outputs)
            in_elems = sum(v.data.size for v in node.inputs if v is not None)
            grows = out_elems > in_elems
            if (grows and out_elems > self.max_elements) or out_elems > in_elems + self.growth_slack:
                log("passes", f"fold_constants: not folding %{node.outputs[0].name} "
                              f"({node.op}): {out_elems} elements from {in_elems}")
                continue
            try:
                results = run_node(node, [None if v is None else v.data for v in node.inputs])
            except ModelError:
                continue  # the node fails at run time too; leave it to report there
            names = [v.name for v in node.outputs]
            consts = [graph.add_constant(v.name + ".folded", data, v.type)
                      for v, data in zip(node.outputs, results)]
            for v, c in zip(node.outputs, consts):
                v.replace_all_uses_with(c)
            graph.remove_node(node)
            for c, name in zip(consts, names):  # the constant takes the value's name
                graph.rename(c, name)
            changed = True
        return changed
