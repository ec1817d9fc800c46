"""The graph: SSA values with use lists, nodes in topological order.

A `Value` is produced by exactly one `Node` (or is a graph input, or a constant carrying numpy
data) and knows every `(node, input_index)` that uses it, so rewriting is
``old.replace_all_uses_with(new)`` and a dead node is one whose outputs have no uses, as in
torch.fx and MLIR. `Graph.nodes` is always in a valid topological order: insertion helpers place
a node before its first user, and `Graph.sort()` restores order after a rewrite that moved
things around.

Names come from the source model and are unique within a graph; `Graph.unique_name` makes a
fresh one when a pass creates values. A node keeps its source model's name in `Node.name`
(which need not be unique, and may be empty) so errors and dumps can point at it.
"""

from __future__ import annotations

import itertools
from typing import Any, Iterable, Iterator, Optional, Sequence

import numpy as np

from .errors import SlimcError
from .types import TensorType


class Value:
    __slots__ = ("name", "type", "producer", "index", "uses", "data", "graph")

    def __init__(self, name: str, type: TensorType, data: Optional[np.ndarray] = None):
        self.name = name
        self.type = type
        self.producer: Optional[Node] = None
        self.index = 0  # which output of the producer
        self.uses: list[tuple[Node, int]] = []
        # A constant carries its data. An elided constant (parsed from a dump without its .npz)
        # is a constant whose data is None but `is_constant` stays true via `graph.constants`.
        self.data = data
        self.graph: Optional[Graph] = None

    @property
    def is_constant(self) -> bool:
        return self.graph is not None and self.name in self.graph.constants and \
            self.graph.constants[self.name] is self

    @property
    def is_graph_input(self) -> bool:
        return self.graph is not None and self in self.graph.inputs

    @property
    def users(self) -> list["Node"]:
        """Distinct nodes using this value, in order of first use."""
        seen: dict[int, Node] = {}
        for node, _ in self.uses:
            seen.setdefault(id(node), node)
        return list(seen.values())

    @property
    def shape(self) -> tuple:
        return self.type.shape

    @property
    def dtype(self):
        return self.type.dtype

    def replace_all_uses_with(self, other: "Value") -> None:
        if other is self:
            return
        for node, i in list(self.uses):
            node.set_input(i, other)
        if self.graph is not None:
            self.graph.outputs = [other if v is self else v for v in self.graph.outputs]

    def __repr__(self) -> str:
        return f"%{self.name}: {self.type}"


class Node:
    __slots__ = ("op", "inputs", "attrs", "outputs", "name", "graph", "origin")

    def __init__(self, op: str, inputs: Sequence[Optional[Value]], attrs: Optional[dict] = None,
                 outputs: Sequence[Value] = (), name: str = ""):
        self.op = op
        self.inputs: list[Optional[Value]] = []
        self.attrs: dict[str, Any] = dict(attrs or {})
        self.outputs: list[Value] = []
        self.name = name
        self.graph: Optional[Graph] = None
        self.origin = ""  # the pass that created this node ("" = the frontend), for debugging
        for v in inputs:
            self._append_input(v)
        for v in outputs:
            self.add_output(v)

    def _append_input(self, v: Optional[Value]) -> None:
        i = len(self.inputs)
        self.inputs.append(v)
        if v is not None:
            v.uses.append((self, i))

    def set_input(self, i: int, v: Optional[Value]) -> None:
        old = self.inputs[i]
        if old is not None:
            old.uses.remove((self, i))
        self.inputs[i] = v
        if v is not None:
            v.uses.append((self, i))

    def set_inputs(self, values: Sequence[Optional[Value]]) -> None:
        self.drop_inputs()
        for v in values:
            self._append_input(v)

    def drop_inputs(self) -> None:
        for i, v in enumerate(self.inputs):
            if v is not None:
                v.uses.remove((self, i))
        self.inputs = []

    def add_output(self, v: Value) -> Value:
        v.producer = self
        v.index = len(self.outputs)
        self.outputs.append(v)
        return v

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise SlimcError(f"{self.op} node {self.name!r} has {len(self.outputs)} outputs")
        return self.outputs[0]

    @property
    def label(self) -> str:
        """How errors refer to this node: its source name, else its first output's name."""
        if self.name:
            return self.name
        return self.outputs[0].name if self.outputs else self.op

    def __repr__(self) -> str:
        outs = ", ".join("%" + v.name for v in self.outputs)
        ins = ", ".join("none" if v is None else "%" + v.name for v in self.inputs)
        return f"<{outs} = {self.op}({ins})>"


class Graph:
    """Inputs, constants, ordered nodes, outputs. See the module docstring for the invariants."""

    def __init__(self, name: str = "main"):
        self.name = name
        self.inputs: list[Value] = []
        self.outputs: list[Value] = []
        self.constants: dict[str, Value] = {}
        self.nodes: list[Node] = []
        self._names: set[str] = set()
        # Names a frontend has promised to source-model values not yet created: generated
        # names avoid them, and the value they were reserved for can still take them.
        self._reserved: set[str] = set()
        self.current_pass = ""  # set by the PassManager; nodes created meanwhile remember it

    # ----- names -------------------------------------------------------------------------
    def unique_name(self, base: str) -> str:
        """`base` if unused, else `base.1`, `base.2`, ... (never clashes with a model name)."""
        if base not in self._names and base not in self._reserved:
            return base
        for i in itertools.count(1):
            cand = f"{base}.{i}"
            if cand not in self._names and cand not in self._reserved:
                return cand
        raise AssertionError  # pragma: no cover

    def reserve(self, names) -> None:
        self._reserved.update(n for n in names if n not in self._names)

    def _claim(self, v: Value, unique: bool) -> Value:
        if not unique and v.name in self._reserved:
            self._reserved.discard(v.name)
        elif unique:
            v.name = self.unique_name(v.name)
        elif v.name in self._names:
            raise SlimcError(f"value name {v.name!r} is already used in graph {self.name!r}")
        self._names.add(v.name)
        v.graph = self
        return v

    # ----- building ----------------------------------------------------------------------
    def add_input(self, name: str, type: TensorType, unique: bool = False) -> Value:
        v = self._claim(Value(name, type), unique)
        self.inputs.append(v)
        return v

    def add_constant(self, name: str, data: Optional[np.ndarray], type: Optional[TensorType] = None,
                     unique: bool = True) -> Value:
        if data is not None:
            data = np.asarray(data)
            if type is None:
                type = TensorType.of(data)
        v = self._claim(Value(name, type, data), unique)
        self.constants[v.name] = v
        return v

    def make_node(self, op: str, inputs: Sequence[Optional[Value]], attrs: Optional[dict] = None,
                  output_types: Sequence[TensorType] = (), output_names: Sequence[str] = (),
                  name: str = "", before: Optional[Node] = None, after: Optional[Node] = None) -> Node:
        """Create a node with fresh outputs and insert it (at the end, or before/after a node)."""
        outputs = []
        for i, t in enumerate(output_types):
            base = output_names[i] if i < len(output_names) and output_names[i] else (name or op)
            outputs.append(self._claim(Value(base, t), unique=True))
        node = Node(op, inputs, attrs, outputs, name)
        self.insert(node, before=before, after=after)
        return node

    def insert(self, node: Node, before: Optional[Node] = None, after: Optional[Node] = None) -> Node:
        node.graph = self
        node.origin = node.origin or self.current_pass
        for v in node.outputs:
            if v.graph is not self:
                self._claim(v, unique=True)
        if before is not None:
            self.nodes.insert(self.nodes.index(before), node)
        elif after is not None:
            self.nodes.insert(self.nodes.index(after) + 1, node)
        else:
            self.nodes.append(node)
        return node

    def remove_node(self, node: Node) -> None:
        """Remove a node whose outputs are unused (replace its uses first)."""
        for v in node.outputs:
            if v.uses or v in self.outputs:
                raise SlimcError(f"cannot remove {node!r}: output %{v.name} is still used")
        node.drop_inputs()
        self.nodes.remove(node)
        for v in node.outputs:
            self._names.discard(v.name)
            v.graph = None
        node.graph = None

    def remove_constant(self, v: Value) -> None:
        if v.uses or v in self.outputs:
            raise SlimcError(f"cannot remove constant %{v.name}: it is still used")
        del self.constants[v.name]
        self._names.discard(v.name)
        v.graph = None

    def rename(self, v: Value, new: str) -> None:
        if new == v.name:
            return
        if new in self._names:
            raise SlimcError(f"value name {new!r} is already used")
        self._reserved.discard(new)
        self._names.discard(v.name)
        was_const = self.constants.pop(v.name, None)
        v.name = new
        self._names.add(new)
        if was_const is not None:
            self.constants[new] = v

    # ----- order -------------------------------------------------------------------------
    def sort(self) -> None:
        """Restore topological order, stable with respect to the current order."""
        position = {id(n): i for i, n in enumerate(self.nodes)}
        pending = {id(n): sum(1 for v in n.inputs if v is not None and v.producer is not None
                              and id(v.producer) in position) for n in self.nodes}
        import heapq

        ready = [(position[id(n)], id(n), n) for n in self.nodes if pending[id(n)] == 0]
        heapq.heapify(ready)
        order = []
        while ready:
            _, _, n = heapq.heappop(ready)
            order.append(n)
            for v in n.outputs:
                for user, _ in v.uses:
                    if id(user) in pending:
                        pending[id(user)] -= 1
                        if pending[id(user)] == 0:
                            heapq.heappush(ready, (position[id(user)], id(user), user))
        if len(order) != len(self.nodes):
            stuck = [n for n in self.nodes if pending[id(n)] > 0]
            raise SlimcError(f"graph {self.name!r} has a cycle through {stuck[0].label!r} "
                             f"({stuck[0].op})")
        self.nodes = order

    # ----- queries -----------------------------------------------------------------------
    def values(self) -> Iterator[Value]:
        yield from self.inputs
        yield from self.constants.values()
        for n in self.nodes:
            yield from n.outputs

    def find_value(self, name: str) -> Value:
        for v in self.values():
            if v.name == name:
                return v
        raise KeyError(name)

    def to_networkx(self):
        """The dataflow as a networkx MultiDiGraph, for passes that want graph algorithms
        (dominators, paths, cuts): one vertex per node (the Node itself), one edge per value
        a node reads from another, keyed by the reading node's input position; attribute
        ``value`` is the Value. Graph inputs and constants are not vertices."""
        import networkx as nx

        g = nx.MultiDiGraph()
        g.add_nodes_from(self.nodes)
        for n in self.nodes:
            for i, v in enumerate(n.inputs):
                if v is not None and v.producer is not None:
                    g.add_edge(v.producer, n, key=i, value=v)
        return g

    def find_nodes(self, op: str) -> list[Node]:
        return [n for n in self.nodes if n.op == op]

    def __str__(self) -> str:
        from .printer import print_graph

        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph @{self.name}: {len(self.inputs)} inputs, {len(self.nodes)} nodes>"

    def clone(self) -> "Graph":
        """A deep structural copy (constant data is shared: passes never mutate it in place)."""
        g = Graph(self.name)
        vmap: dict[int, Value] = {}
        for v in self.inputs:
            vmap[id(v)] = g.add_input(v.name, v.type)
        for v in self.constants.values():
            vmap[id(v)] = g.add_constant(v.name, v.data, v.type, unique=False)
        for n in self.nodes:
            outs = [g._claim(Value(v.name, v.type), unique=False) for v in n.outputs]
            for o in outs:
                vmap[id(o)] = o
            for old, new in zip(n.outputs, outs):
                vmap[id(old)] = new
            node = Node(n.op, [None if v is None else vmap[id(v)] for v in n.inputs],
                        dict(n.attrs), outs, n.name)
            node.graph = g
            node.origin = n.origin
            g.nodes.append(node)
        g.outputs = [vmap[id(v)] for v in self.outputs]
        return g


def constant_data(v: Optional[Value]) -> Optional[np.ndarray]:
    """The numpy data of a constant value, or None if it is not a constant with data."""
    if v is None or not v.is_constant:
        return None
    return v.data


def iter_constants(values: Iterable[Optional[Value]]) -> list[Optional[np.ndarray]]:
    return [constant_data(v) for v in values]
