"""The verifier: the IR's invariants, checked after every pass in tests and debug mode.

SSA (each value defined once), topological order (every input defined before its use),
use lists that match the inputs exactly, outputs that exist, known ops with valid attributes,
and every node's output types equal to what type inference gives for its inputs.
"""

from __future__ import annotations

from .errors import ModelError, VerificationError
from .graph import Graph
from .registry import infer_node


def verify(graph: Graph, check_types: bool = True) -> None:
    """Raise `VerificationError` describing the first broken invariant."""
    defined: dict[int, str] = {}
    names: set[str] = set()

    def define(v, where: str) -> None:
        if v.name in names:
            raise VerificationError(f"value %{v.name} is defined twice ({where})")
        if v.graph is not graph:
            raise VerificationError(f"value %{v.name} ({where}) does not belong to graph "
                                    f"@{graph.name}")
        names.add(v.name)
        defined[id(v)] = where

    for v in graph.inputs:
        define(v, "graph input")
        if v.producer is not None:
            raise VerificationError(f"graph input %{v.name} has a producer")
    for name, v in graph.constants.items():
        if name != v.name:
            raise VerificationError(f"constant table key {name!r} != value name {v.name!r}")
        define(v, "constant")
        if v.data is not None and (v.data.shape != v.type.shape or
                                   v.data.dtype != v.type.dtype.numpy):
            raise VerificationError(f"constant %{v.name} has data {v.data.dtype}{list(v.data.shape)} "
                                    f"but type {v.type}")
    expected_uses: dict[int, list] = {}
    for node in graph.nodes:
        where = f"{node.op} node {node.label!r}"
        if node.graph is not graph:
            raise VerificationError(f"{where} does not belong to graph @{graph.name}")
        for i, v in enumerate(node.inputs):
            if v is None:
                continue
            if id(v) not in defined:
                raise VerificationError(f"{where}: input {i} %{v.name} is used before it is "
                                        f"defined (or is not in the graph)")
            expected_uses.setdefault(id(v), []).append((id(node), i))
        if not node.outputs:
            raise VerificationError(f"{where} has no outputs")
        for k, v in enumerate(node.outputs):
            if v.producer is not node or v.index != k:
                raise VerificationError(f"{where}: output %{v.name} does not point back to it")
            define(v, where)
        if check_types:
            try:
                inferred = infer_node(node)
            except ModelError as e:
                raise VerificationError(f"{where}: type inference fails: {e}") from e
            actual = [v.type for v in node.outputs]
            if len(inferred) != len(actual) or any(
                    a != b for a, b in zip(actual, inferred)):
                raise VerificationError(
                    f"{where}: output types ({', '.join(map(str, actual))}) differ from inferred "
                    f"({', '.join(map(str, inferred))})")
    for v in graph.values():
        got = sorted((id(n), i) for n, i in v.uses)
        want = sorted(expected_uses.get(id(v), []))
        if got != want:
            raise VerificationError(f"use list of %{v.name} is stale: it lists {len(got)} uses, "
                                    f"the graph has {len(want)}")
    for v in graph.outputs:
        if id(v) not in defined:
            raise VerificationError(f"graph output %{v.name} is not defined in the graph")
