"""Fusion planning: which nodes share a kernel. Values inside a kernel never go to memory.

The planner is the same for every target. It reads each op's declared `FusionKind` (TVM's op
pattern kinds: elementwise < broadcast < injective < reduction < out-fusable < opaque) and
asks the backend what it can do with a node (codegen/backend.py), as Inductor asks each
backend's `can_fuse`:

* an elementwise, broadcasting or injective op the backend computes inline is computed
  inside whatever reads it -- an elementwise chain, a transpose feeding an add, the producer
  of a reduction's operand -- if that reader fetches operands through index expressions
  (`backend.reads_operands_inline(anchor)`), and unless the reader broadcasts it
  (RECOMPUTE_LIMIT): inline, a value is computed again wherever it is read, and a
  squeeze-and-excite gate's sigmoid over 144 channels, read by the scaling of a 144 x 56 x 56
  image, cost 2.3x the kernel it sat in;
* any other op has a loop nest of its own (the kernel's *anchor*); it takes the elementwise
  and broadcasting ops that consume it as its epilogue if `backend.epilogue(anchor)` says
  yes and the chain keeps the anchor's output shape and element type;
* a row-major view (reshape, flatten, squeeze, unsqueeze) read by an anchor that reads its
  operands from memory joins the anchor's kernel as an alias: the anchor reads the view's
  input buffer, and no kernel copies it (the view's own producer is then written to memory);
* every kernel has at most one anchor, and a value used by two kernels, or returned by the
  graph, is written to memory (fusing it would compute it twice).

The walk goes from outputs to inputs and tries to merge each node into the kernel of its
consumers. Every producer/consumer pair that stays apart gets its reason, shown with
``SLIMC_DEBUG=fusion`` and written to ``fusion.txt`` in the dump folder. The IR stays one
node per op: groups are a code generation decision, not a graph rewrite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from slimc.ir import Graph, Node
from slimc.ir.debug import log

from .backend import ROW_MAJOR_VIEWS, Backend, computed_inline, elementwise_epilogue


@dataclass
class Group:
    nodes: list = field(default_factory=list)  # in graph order once finished
    anchor: Optional[Node] = None  # the op with its own loop nest, if any
    aliases: set = field(default_factory=set)  # ids of views the anchor reads from memory

    @property
    def root(self) -> Node:
        return self.nodes[-1]


@dataclass
class FusionPlan:
    groups: list  # lists of nodes, one per kernel, in execution order
    decisions: list  # one line per pair that did not fuse, and per merge

    @property
    def report(self) -> str:
        return "\n".join(self.decisions)


# An inline op whose values the consuming kernel reads this many times each, or more, is
# computed in a kernel of its own (a view costs nothing to recompute and always fuses).
RECOMPUTE_LIMIT = 16


def _broadcast_into(p: Node, target: Group) -> Optional[str]:
    """Why `p` would be computed many times over inside `target` (its values broadcast to
    the kernel's larger result), or None."""
    made, used = p.outputs[0].type, target.root.outputs[0].type
    if p.op in ROW_MAJOR_VIEWS or not (made.is_static and used.is_static):
        return None
    if made.numel * RECOMPUTE_LIMIT > used.numel:
        return None
    return (f"its {made.numel} values would each be computed {used.numel // max(1, made.numel)} "
            f"times over for the kernel's {used.numel} results (a broadcast)")


def _why_not(backend: Backend, p: Node, target: Group, users: list) -> Optional[str]:
    """None if `p` may join `target` (the one group that uses it), else the reason."""
    if len(p.outputs) != 1:
        return f"{p.op} has {len(p.outputs)} outputs"
    if not backend.lowers(p):
        return f"{p.op} has no lowering"
    if computed_inline(backend, p):
        if _read_from_memory(backend, p, target, users) and p.op not in ROW_MAJOR_VIEWS:
            return f"{target.anchor.op} reads its operands from memory"
        return _broadcast_into(p, target)
    # p has its own loop nest: it can only be the anchor of an elementwise epilogue group
    if target.anchor is not None:
        return f"the consumer's kernel already has a loop nest ({target.anchor.op})"
    why = backend.epilogue(p)
    if why is not None:
        return f"{p.op}'s code generator does not apply epilogues" + (f" {why}" if why else "")
    other = next((n for n in target.nodes if not elementwise_epilogue(backend, n)), None)
    if other is not None:
        return f"its consumers include {other.op}, which is not elementwise"
    if target.root.outputs[0].type.shape != p.outputs[0].type.shape:
        return (f"the consumer's result {target.root.outputs[0].type} has another shape than "
                f"{p.outputs[0].type}")
    if target.root.outputs[0].type.dtype != p.outputs[0].type.dtype and \
            not backend.epilogue_changes_dtype(p):
        # GEMM-based generators store the epilogue's value where their accumulator would go
        return (f"the consumer's result is {target.root.outputs[0].type.dtype.name}, not "
                f"{p.outputs[0].type.dtype.name}: epilogues keep the heavy op's element type")
    return None


def _read_from_memory(backend: Backend, p: Node, target: Group, users: list) -> bool:
    """Whether `target` reads p's value from memory: its anchor reads operands from memory
    and uses p directly or through views aliased to p's buffer."""
    if target.anchor is None or backend.reads_operands_inline(target.anchor):
        return False
    return any(u is target.anchor or id(u) in target.aliases for u in users)


def plan_fusion(graph: Graph, backend: Backend, enabled: bool = True) -> FusionPlan:
    """Partition the graph's nodes into kernels for `backend` (every node alone when not
    `enabled`)."""
    group_of: dict[int, Group] = {}
    groups: list[Group] = []
    decisions: list[str] = []
    graph_outputs = {id(v) for v in graph.outputs}
    for node in reversed(graph.nodes):
        target = None
        if enabled:
            users = [u for v in node.outputs for u, _ in v.uses]
            names = f"%{node.outputs[0].name} ({node.op})"
            user_groups = {id(group_of[id(u)]): group_of[id(u)] for u in users}
            if any(id(v) in graph_outputs for v in node.outputs):
                reason = "it is a graph output, so it must be written to memory"
            elif not users:
                reason = None  # dead: nothing to fuse with
            elif len(user_groups) > 1:
                reason = f"its value is used by {len(user_groups)} kernels; fusing would compute it again in each"
            else:
                (candidate,) = user_groups.values()
                reason = _why_not(backend, node, candidate, users)
                if reason is None:
                    target = candidate
            if reason:
                for u in dict.fromkeys(users):
                    decisions.append(f"not fused: {names} -> %{u.outputs[0].name} ({u.op}): {reason}")
        if target is None:
            target = Group()
            groups.append(target)
        else:
            alias = _read_from_memory(backend, node, target, users)
            if alias:
                target.aliases.add(id(node))
            decisions.append(f"fused: %{node.outputs[0].name} ({node.op}) into the kernel of "
                             f"%{target.root.outputs[0].name if target.nodes else '?'}"
                             + (", read as its input's buffer" if alias else ""))
        target.nodes.insert(0, node)
        if not computed_inline(backend, node):
            target.anchor = node
        group_of[id(node)] = target
    order = {id(n): i for i, n in enumerate(graph.nodes)}
    for g in groups:
        g.nodes.sort(key=lambda n: order[id(n)])
    groups.sort(key=lambda g: order[id(g.root)])
    for line in decisions:
        log("fusion", line)
    return FusionPlan([g.nodes for g in groups], decisions)
