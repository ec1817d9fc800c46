"""The ONNX frontend: an ONNX model (path, bytes or ModelProto) becomes a slimc `Graph`.

The work happens in three steps, so a model that cannot be imported fails before anything is
built and says everything that is wrong at once:

1. read: parse the protobuf (corrupt or truncated files are a clear `ModelError`), read external
   data (refusing locations outside the model's folder), inline model-local functions;
2. scan: every node's op and opset is looked up in the converter table; everything missing is
   reported in one `UnsupportedError` with counts and the first node names;
3. convert: graph inputs (symbolic dimensions bound by ``input_shapes``), initializers as
   constants (sparse ones densified), then one converter call per node in order.
"""

from __future__ import annotations

import os
from collections import defaultdict
from typing import Mapping, Optional, Sequence

import numpy as np

from slimc.ir import Graph, ModelError, SlimcError, TensorType, UnsupportedError, Value
from slimc.ir.errors import InternalError

from .onnx_functions import expand, function_body, has_function_body
from .onnx_ops import ConvertContext, find_converter, onnx_dtype, onnx_elem_type, tensor_to_numpy
from .onnx_ops.tensor import sparse_to_numpy

# Ops that need control flow, sequences, optionals or strings: refused with a reason.
_OUT_OF_SCOPE = {
    "If": "control flow", "Loop": "control flow", "Scan": "control flow",
    "SequenceConstruct": "sequences", "SequenceAt": "sequences", "SequenceEmpty": "sequences",
    "SequenceInsert": "sequences", "SequenceErase": "sequences", "SequenceLength": "sequences",
    "SplitToSequence": "sequences", "ConcatFromSequence": "sequences", "SequenceMap": "sequences",
    "Optional": "optionals", "OptionalHasElement": "optionals", "OptionalGetElement": "optionals",
    "StringNormalizer": "strings", "StringConcat": "strings", "StringSplit": "strings",
    "RegexFullMatch": "strings", "TfIdfVectorizer": "strings",
}
MIN_OPSET = 6  # opset 6 models are common (older PyTorch exports); see the legacy converters


def model_files(path: str) -> list[str]:
    """The model file and every external data file its tensors (subgraphs' included) name:
    what a compile of `path` read, for the compile cache to notice a change to any of them."""
    import onnx

    proto, base = read_model(path)
    found = set()

    def tensors(graph):
        yield from graph.initializer
        for node in graph.node:
            for a in node.attribute:
                yield from ([a.t] if a.HasField("t") else []) + list(a.tensors)
                for g in ([a.g] if a.HasField("g") else []) + list(a.graphs):
                    yield from tensors(g)

    for t in tensors(proto.graph):
        if t.data_location == onnx.TensorProto.EXTERNAL:
            location = {e.key: e.value for e in t.external_data}.get("location", "")
            found.add(os.path.join(base, location))
    return [path] + sorted(found)


def read_model(model):
    """Returns (ModelProto, folder for external data or None)."""
    import onnx
    from google.protobuf.message import DecodeError

    if isinstance(model, onnx.ModelProto):
        return model, None
    if isinstance(model, (bytes, bytearray)):
        data, base = bytes(model), None
        name = "<bytes>"
    else:
        path = os.fspath(model)
        if not os.path.isfile(path):
            raise ModelError(f"model file {path!r} does not exist")
        with open(path, "rb") as f:
            data = f.read()
        base, name = os.path.dirname(os.path.abspath(path)), path
    proto = onnx.ModelProto()
    try:
        proto.ParseFromString(data)
    except (DecodeError, Exception) as e:
        raise ModelError(f"{name} is not a readable ONNX model (corrupt or truncated "
                         f"protobuf): {e}") from None
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"{name} is not an ONNX model: it has no graph (empty, truncated, or "
                         f"another kind of file)")
    return proto, base


def _opsets(proto) -> dict:
    opsets = {}
    for o in proto.opset_import:
        opsets["" if o.domain == "ai.onnx" else o.domain] = o.version
    if "" not in opsets:
        opsets[""] = 1 if proto.opset_import else 13
    return opsets


def scan_unsupported(proto, opsets: dict) -> None:
    """Raise one error listing every op the model uses that slimc cannot convert."""
    problems: dict[str, list] = defaultdict(list)
    for node in proto.graph.node:
        domain = "" if node.domain == "ai.onnx" else node.domain
        key = node.op_type if not domain else f"{domain}.{node.op_type}"
        if node.op_type in _OUT_OF_SCOPE and not domain:
            problems[f"{key} ({_OUT_OF_SCOPE[node.op_type]} are not supported)"].append(node.name)
        elif domain not in opsets:
            problems[f"{key} (domain {domain!r} is not imported by the model)"].append(node.name)
        elif find_converter(domain, node.op_type, opsets[domain]) is None and not (
                not domain and has_function_body(node.op_type, opsets[domain])):
            problems[f"{key} (opset {opsets[domain]})"].append(node.name)
    lines = []
    if opsets[""] < MIN_OPSET:
        lines.append(f"  default-domain opset {opsets['']}: slimc reads opset {MIN_OPSET} and newer")
    for what, names in sorted(problems.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(repr(n) for n in names[:3]) + (", ..." if len(names) > 3 else "")
        lines.append(f"  {what}: {len(names)} node(s), first {shown}")
    if lines:
        raise UnsupportedError("the model uses what slimc does not support:\n" + "\n".join(lines))


def _value_type(vi, input_shapes: Mapping, where: str) -> TensorType:
    t = vi.type
    if t.WhichOneof("value") != "tensor_type":
        kind = t.WhichOneof("value") or "no type"
        raise UnsupportedError(f"{where} {vi.name!r} is a {kind}; only tensors are supported")
    dt = onnx_dtype(t.tensor_type.elem_type, f" ({where} {vi.name!r})")
    if not t.tensor_type.HasField("shape"):
        if vi.name in input_shapes:
            return TensorType(dt, tuple(input_shapes[vi.name]))
        raise ModelError(f"{where} {vi.name!r} has no shape; give it with input_shapes=")
    dims = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    if vi.name in input_shapes:
        given = tuple(input_shapes[vi.name])
        if len(given) != len(dims) or any(isinstance(a, int) and a != b for a, b in zip(dims, given)):
            raise ModelError(f"input_shapes[{vi.name!r}] = {list(given)} contradicts the model's "
                             f"shape {TensorType(dt, tuple(dims))}")
        dims = list(given)
    return TensorType(dt, tuple(dims))


def from_onnx(model, input_shapes: Optional[Mapping[str, Sequence[int]]] = None,
              name: Optional[str] = None,
              input_values: Optional[Mapping[str, np.ndarray]] = None) -> Graph:
    """Import an ONNX model (path, bytes or ModelProto) as a slimc Graph.

    `input_shapes` binds symbolic dimensions of inputs. `input_values` binds whole inputs to
    constants: the way to give integer inputs that decide shapes (a Reshape's target, the K of
    TopK, reduction axes), which makes the graph specialized to those values.
    """
    input_shapes = dict(input_shapes or {})
    input_values = {k: np.asarray(v) for k, v in (input_values or {}).items()}
    proto, base_dir = read_model(model)
    if proto.functions:
        try:
            from onnx import inliner

            proto = inliner.inline_local_functions(proto)
        except Exception as e:
            raise ModelError(f"model-local functions could not be inlined: {e}") from e
    opsets = _opsets(proto)
    scan_unsupported(proto, opsets)
    g = proto.graph
    graph = Graph(name or g.name or "main")
    known_inputs = {vi.name for vi in g.input}
    for what, given in (("input_shapes", input_shapes), ("input_values", input_values)):
        unknown = set(given) - known_inputs
        if unknown:
            raise ModelError(f"{what} names {sorted(unknown)}, which are not model inputs "
                             f"(inputs: {sorted(known_inputs)})")
    initializers = {t.name for t in g.initializer} | {t.values.name for t in g.sparse_initializer}
    all_names = {n for node in g.node for n in list(node.output)} | known_inputs | initializers
    graph.reserve(all_names - {""})
    env: dict[str, Value] = {}
    symbol_values = _symbol_binding(g, initializers, input_shapes)
    for vi in g.input:
        if vi.name in initializers:
            continue  # old exporters list weights as inputs too; the initializer wins
        t = _value_type(vi, input_shapes, "input")
        t = t.with_shape([symbol_values.get(d, d) if isinstance(d, str) else d for d in t.shape])
        if vi.name in input_values:
            data = input_values[vi.name]
            if data.dtype != t.dtype.numpy or data.ndim != t.rank or any(
                    isinstance(d, int) and d != s for d, s in zip(t.shape, data.shape)):
                raise ModelError(f"input_values[{vi.name!r}] is {data.dtype}{list(data.shape)}, "
                                 f"the model says {t}")
            env[vi.name] = graph.add_constant(vi.name, data, unique=False)
            continue
        env[vi.name] = graph.add_input(vi.name, t)
    for t in g.initializer:
        env[t.name] = graph.add_constant(t.name, tensor_to_numpy(t, "", base_dir), unique=False)
    for t in g.sparse_initializer:  # densified: slimc's constants are dense
        name = t.values.name
        env[name] = graph.add_constant(name, sparse_to_numpy(t, "", base_dir), unique=False)
    for node in g.node:
        _convert_node(graph, node, env, opsets)
    outputs = []
    for vi in g.output:
        if vi.name not in env:
            raise ModelError(f"graph output {vi.name!r} is produced by no node")
        outputs.append(env[vi.name])
    graph.outputs = outputs
    _name_outputs(graph, [vi.name for vi in g.output])
    for c in [c for c in graph.constants.values() if not c.uses and c not in graph.outputs]:
        graph.remove_constant(c)  # initializers only a converter read (axes, shapes, ...)
    return graph


def _symbol_binding(g, initializers, input_shapes: Mapping) -> dict:
    """Symbol -> size for symbolic dims that input_shapes bound on some input."""
    binding = {}
    for vi in g.input:
        if vi.name in initializers or vi.name not in input_shapes:
            continue
        dims = vi.type.tensor_type.shape.dim
        for d, size in zip(dims, input_shapes[vi.name]):
            if d.HasField("dim_param") and d.dim_param and isinstance(size, int):
                binding[d.dim_param] = size
    return binding


def _convert_node(graph: Graph, node, env: dict, opsets: dict) -> None:
    domain = "" if node.domain == "ai.onnx" else node.domain
    label = node.name or (node.output[0] if node.output else node.op_type)
    inputs = []
    for i, name in enumerate(node.input):
        if name == "":
            inputs.append(None)
        elif name in env:
            inputs.append(env[name])
        else:
            raise ModelError(f"input {i} {name!r} is not produced by any earlier node, "
                             f"initializer or graph input (missing, or the graph has a cycle / "
                             f"is not topologically sorted)", node=label, op=node.op_type)
    fn = find_converter(domain, node.op_type, opsets[domain])
    if fn is None:
        _expand_function(graph, node, inputs, env, opsets, label)
        return
    ctx = ConvertContext(graph, node, inputs, opsets[domain])
    nodes_before, consts_before = len(graph.nodes), len(graph.constants)
    try:
        result = fn(ctx)
    except SlimcError:
        raise
    except Exception as e:
        raise InternalError(f"{type(e).__name__}: {e} (while converting node {label!r})",
                            where=f"ONNX converter for {node.op_type}") from e
    results = result if isinstance(result, (list, tuple)) else [result]
    created = {id(v) for n in graph.nodes[nodes_before:] for v in n.outputs}
    created.update(id(v) for _, v in zip(range(len(graph.constants) - consts_before),
                                          reversed(graph.constants.values())))
    for out_name, v in zip(node.output, results):
        if not out_name:
            continue
        if out_name in env:
            raise ModelError(f"output {out_name!r} is defined twice (not SSA)", node=label,
                             op=node.op_type)
        if v is None:
            raise ModelError(f"output {out_name!r} is not produced by this node", node=label,
                             op=node.op_type)
        if v.name != out_name and id(v) in created:
            graph.rename(v, out_name)  # the name was reserved for it
        env[out_name] = v
    for out_name in node.output[len(results):]:
        if out_name:
            raise ModelError(f"optional output {out_name!r} is not supported", node=label,
                             op=node.op_type)


def _expand_function(graph: Graph, node, inputs, env: dict, opsets: dict, label: str) -> None:
    """A function op with no converter: convert the ops of its ONNX definition instead."""
    import onnx

    domain = "" if node.domain == "ai.onnx" else node.domain
    types = None
    if all(v is not None for v in inputs):
        types = [onnx.helper.make_tensor_type_proto(onnx_elem_type(v.type.dtype), list(v.type.shape))
                 for v in inputs]
    body = function_body(node, opsets[domain], types) if not domain else None
    if body is None:
        raise UnsupportedError(f"no converter for opset {opsets.get(domain)} and ONNX defines "
                               f"no function body for it", node=label, op=node.op_type)
    nodes, body_opsets = expand(node, body, opsets[domain])
    merged = dict(opsets)
    merged.update(body_opsets)
    for n in nodes:
        _convert_node(graph, n, env, merged)


def _name_outputs(graph: Graph, names: Sequence[str]) -> None:
    """Graph outputs carry the ONNX output names (callers look them up by name)."""
    for i, (v, want) in enumerate(zip(list(graph.outputs), names)):
        if v.name == want:
            continue
        node = graph.make_node("identity", [v], output_types=[v.type],
                               output_names=[want])
        graph.outputs[i] = node.outputs[0]
