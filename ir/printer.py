"""The text form of a graph. `parser.parse` reads it back; print -> parse -> print is a fixed point.

    # slimc-ir v1
    graph @mlp(%x: f32[1,784]) -> (f32[1,10]) {
      const %w1: f32[784,512] = elided
      const %shape: i64[2] = [1, -1]
      %fc1 = matmul(%x, %w1) : f32[1,512] loc("/fc1/MatMul")
      %r1 = relu(%fc1) : f32[1,512]
      return %r1
    }

Names are printed bare when they are plain identifiers and quoted (JSON escapes) otherwise, so
any source-model name survives. A node's source name is its ``loc(...)``. Constants of up to
`INLINE_LIMIT` elements are printed with their data; larger ones print as ``elided`` and parse
back as data-less placeholders of the same type (`save`/`load` keep their data in a .npz).
"""

from __future__ import annotations

import json
import math
import re

from typing import TYPE_CHECKING

import numpy as np

from .types import DType

if TYPE_CHECKING:  # graph.py prints through this module
    from .graph import Graph, Node, Value

# The IR text's version, in its first line. It bumps when text this slimc writes would be
# misread by the slimc before it, or text that one wrote would be read differently now: new
# syntax (a new kind of literal, nested graphs for control flow), an op or attribute renamed
# or removed, an attribute's meaning changed. A new op alone does not bump it: an older slimc
# reads the text and names the op it does not know. `parse` refuses every other version and
# names both. History: v1 (the first).
FORMAT_VERSION = 1
HEADER = f"# slimc-ir v{FORMAT_VERSION}"
INLINE_LIMIT = 16
_BARE = re.compile(r"[A-Za-z0-9_.$\-]+\Z")


def quote_name(name: str) -> str:
    return name if _BARE.match(name) else json.dumps(name)


def value_ref(v) -> str:
    return "none" if v is None else "%" + quote_name(v.name)


def format_scalar(x) -> str:
    if isinstance(x, (bool, np.bool_)):
        return "true" if x else "false"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    f = float(x)
    if math.isnan(f):
        return "nan"
    if math.isinf(f):
        return "inf" if f > 0 else "-inf"
    return repr(f)


def format_attr(x) -> str:
    if isinstance(x, DType):
        return x.name
    if x is None:
        return "none"
    if isinstance(x, str):
        return json.dumps(x)
    if isinstance(x, (list, tuple)):
        return "[" + ", ".join(format_attr(e) for e in x) + "]"
    if isinstance(x, np.ndarray):
        return format_attr(x.tolist())
    return format_scalar(x)


def format_data(data: np.ndarray) -> str:
    flat = np.asarray(data).reshape(-1)
    if flat.dtype.kind == "f" or flat.dtype.kind == "V":  # V: bfloat16 fallback
        items = [format_scalar(float(e)) for e in flat.astype(np.float64)]
    else:
        items = [format_scalar(e) for e in flat.tolist()]
    return "[" + ", ".join(items) + "]"


def print_node(node: Node) -> str:
    outs = ", ".join(value_ref(v) for v in node.outputs)
    ins = ", ".join(value_ref(v) for v in node.inputs)
    text = f"{outs} = {node.op}({ins})"
    if node.attrs:
        text += " {" + ", ".join(f"{k}={format_attr(node.attrs[k])}" for k in sorted(node.attrs)) + "}"
    text += " : " + ", ".join(str(v.type) for v in node.outputs)
    if node.name:
        text += f" loc({json.dumps(node.name)})"
    return text


def print_constant(v: Value) -> str:
    if v.data is not None and v.data.size <= INLINE_LIMIT:
        body = format_data(v.data)
    else:
        body = "elided"
    return f"const {value_ref(v)}: {v.type} = {body}"


def print_graph(graph: Graph) -> str:
    ins = ", ".join(f"{value_ref(v)}: {v.type}" for v in graph.inputs)
    outs = ", ".join(str(v.type) for v in graph.outputs)
    lines = [HEADER, f"graph @{quote_name(graph.name)}({ins}) -> ({outs}) {{"]
    lines += ["  " + print_constant(v) for v in graph.constants.values()]
    lines += ["  " + print_node(n) for n in graph.nodes]
    lines.append("  return " + ", ".join(value_ref(v) for v in graph.outputs))
    lines.append("}")
    return "\n".join(lines) + "\n"
