"""The reference interpreter: runs a graph node by node with the registry's numpy references.

It is the oracle of slimc's tests and the engine of constant folding, so it is plain and
direct. A failure inside names the node and op, with the original exception chained, as
torch.fx's Interpreter does.
"""

from __future__ import annotations

import os
from typing import Mapping, Optional, Sequence

import numpy as np

from .errors import InputError, InternalError, ModelError, SlimcError
from .graph import Graph, Node
from .registry import node_opdef

# Under verification (tests, SLIMC_VERIFY=1) a reference returning another dtype than its
# declared type is a bug to report; otherwise the result is cast to the declared type.
STRICT_DTYPES = os.environ.get("SLIMC_VERIFY") == "1"


def run_node(node: Node, args: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
    opdef = node_opdef(node)
    attrs = opdef.resolve_attrs(node.attrs, node.label)
    try:
        with np.errstate(all="ignore"):
            outs = opdef.run_reference(args, attrs)
    except SlimcError:
        raise
    except Exception as e:
        raise ModelError(f"while executing %{node.outputs[0].name}: {type(e).__name__}: {e}",
                         node=node.label, op=node.op) from e
    if len(outs) != len(node.outputs):
        raise InternalError(f"reference of {node.op} returned {len(outs)} results for "
                            f"{len(node.outputs)} outputs", where=f"op {node.op}")
    fixed = []
    for v, o in zip(node.outputs, outs):
        want = v.type.dtype.numpy
        if o.dtype != want:
            if STRICT_DTYPES:
                raise InternalError(f"reference of {node.op} returned {o.dtype} for %{v.name}, "
                                    f"declared {v.type}", where=f"op {node.op}")
            o = o.astype(want)
        if STRICT_DTYPES and v.type.is_static and o.shape != v.type.shape:
            raise InternalError(f"reference of {node.op} returned shape {list(o.shape)} for "
                                f"%{v.name}, type inference said {v.type}", where=f"op {node.op}")
        fixed.append(o)
    return fixed


def check_arrays(specs: Sequence[tuple], arrays: Sequence, what: str = "the model") -> list[np.ndarray]:
    """Check arrays against (name, numpy dtype, shape, type text) specs; symbolic dims (str or
    None) match any size."""
    if len(arrays) != len(specs):
        raise InputError(f"{what} takes {len(specs)} inputs ({', '.join(s[0] for s in specs)}), "
                         f"got {len(arrays)}")
    out = []
    for (name, dtype, shape, text), a in zip(specs, arrays):
        a = np.asarray(a)
        if a.dtype != dtype:
            raise InputError(f"input {name!r} expects {text}, got dtype {a.dtype}")
        if a.ndim != len(shape) or any(isinstance(d, int) and d != s for d, s in zip(shape, a.shape)):
            raise InputError(f"input {name!r} expects {text}, got shape {list(a.shape)}")
        out.append(a)
    return out


def input_specs(graph: Graph) -> list[tuple]:
    return [(v.name, v.type.dtype.numpy, v.type.shape, str(v.type)) for v in graph.inputs]


def check_inputs(graph: Graph, arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    return check_arrays(input_specs(graph), arrays, f"graph @{graph.name}")


def order_inputs(names: Sequence[str], arrays: Sequence, named: dict) -> list:
    """Positional and named arguments as one positional list (unknown or missing names are
    errors). Shared by the interpreter and compiled modules. One mapping given by position is
    the inputs by name (`mod(feeds)`, as onnxruntime's `run(None, feeds)` takes them)."""
    if not named and len(arrays) == 1 and isinstance(arrays[0], Mapping):
        named, arrays = dict(arrays[0]), []
    if not named:
        return list(arrays)
    unknown = set(named) - set(names)
    if unknown:
        raise InputError(f"unknown input name(s) {sorted(unknown)}; inputs are {list(names)}")
    doubled = set(names[:len(arrays)]) & set(named)
    if doubled:
        raise InputError(f"input(s) {sorted(doubled)} given both by position and by name")
    missing = [n for n in names[len(arrays):] if n not in named]
    if missing:
        raise InputError(f"missing input(s) {missing}")
    return list(arrays) + [named[n] for n in names[len(arrays):]]


def _check_graph(graph) -> None:
    """The interpreter runs slimc IR only: importing a model is the frontends' work (a layer
    above this one), so anything else is refused with the call that imports it."""
    if not isinstance(graph, Graph):
        raise InputError(f"slimc.interpret runs a slimc Graph, got {type(graph).__name__}; "
                         f"import the model first: slimc.interpret(slimc.from_onnx(model), ...) "
                         f"(or slimc.from_torch for a torch.nn.Module)")


def interpret(graph: Graph, *arrays: np.ndarray, **named: np.ndarray) -> list[np.ndarray]:
    """Run `graph` on numpy inputs (positional, or by input name); returns its outputs."""
    _check_graph(graph)
    arrays = check_inputs(graph, order_inputs([v.name for v in graph.inputs], arrays, named))
    env: dict[int, np.ndarray] = {id(v): a for v, a in zip(graph.inputs, arrays)}
    for c in graph.constants.values():
        if c.data is None:
            raise InputError(f"constant %{c.name} has no data (the graph was parsed from a dump "
                             f"with elided constants; load it with slimc.ir.load)")
        env[id(c)] = c.data
    remaining = {}
    for node in graph.nodes:
        for v in node.inputs:
            if v is not None:
                remaining[id(v)] = remaining.get(id(v), 0) + 1
    keep = {id(v) for v in graph.outputs}
    for node in graph.nodes:
        args = [None if v is None else env[id(v)] for v in node.inputs]
        for v, o in zip(node.outputs, run_node(node, args)):
            env[id(v)] = o
        for v in node.inputs:  # free intermediates as soon as they are dead
            if v is not None:
                remaining[id(v)] -= 1
                if remaining[id(v)] == 0 and id(v) not in keep and v.producer is not None:
                    env.pop(id(v), None)
    return [np.array(env[id(v)], copy=True) for v in graph.outputs]
