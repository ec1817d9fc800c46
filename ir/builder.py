"""Creating a node the one way: check its arity and attributes, infer its output types, insert.

The ONNX frontend (`ConvertContext.emit`), the rewriter (`Builder.op`) and the layout pass all
create nodes through `add_op`, so a node made anywhere has been checked the same way and its
types come from the op's own inference (with the data of constant inputs, for ops whose
output shape depends on them). `infer_op` is the check without the insertion, for a caller
that may fold the op into a constant instead.
"""

from __future__ import annotations

from typing import Optional, Sequence

from .graph import Graph, Node, Value, constant_data
from .registry import get_op
from .types import TensorType


def infer_op(op: str, inputs: Sequence[Optional[Value]], attrs: Optional[dict] = None,
             label: str = "") -> list[TensorType]:
    """The output types of `op` on `inputs` with `attrs`; a `ModelError` naming `label` (the
    node as the source model calls it) for a wrong input count or attribute."""
    opdef = get_op(op, label)
    opdef.check_arity(len(inputs), label)
    resolved = opdef.resolve_attrs(dict(attrs or {}), label)
    return opdef.infer_types([None if v is None else v.type for v in inputs], resolved,
                             [constant_data(v) for v in inputs], label)


def add_op(graph: Graph, op: str, inputs: Sequence[Optional[Value]],
           attrs: Optional[dict] = None, *, name: str = "", output_name: str = "",
           before: Optional[Node] = None, label: str = "") -> Node:
    """A checked `op` node in `graph` (before `before`, else at the end). `name` is the node's
    (its source location); its outputs are named `output_name` (made unique), else after it."""
    types = infer_op(op, inputs, attrs, label or name)
    return graph.make_node(op, list(inputs), dict(attrs or {}), types,
                           [output_name or name or op] * len(types), name=name, before=before)
