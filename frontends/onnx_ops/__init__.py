"""ONNX op converters: one small function per ONNX op and opset range, found in one table.

A converter turns one ONNX node into slimc ops through a `ConvertContext`::

    @converter("LeakyRelu", since=6)
    def leaky_relu(ctx):
        return ctx.emit("leaky_relu", [ctx.input(0)], alpha=ctx.attr("alpha", 0.01))

`since` is the first opset whose semantics the converter implements; the frontend picks the
converter with the highest `since` not above the model's opset. Converters read attributes
through `ctx.attr` (which checks their ONNX type), may emit several slimc nodes, and return
the values for the ONNX node's outputs in order. ONNX spellings stop here: what they emit is
slimc's op set.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional, Sequence

import numpy as np

from slimc.ir import Graph, ModelError, UnsupportedError, Value, dtypes, get_op
from slimc.ir.builder import infer_op
from slimc.ir.registry import InternalError, SlimcError

# (domain, op_type) -> [(since_version, converter)], sorted by since.
CONVERTERS: dict[tuple[str, str], list[tuple[int, Callable]]] = {}

# Ops emitted with only constant inputs are folded on the spot (so a Reshape's target shape
# computed by Shape/Gather/Concat is known when the Reshape converts) up to this many elements.
EAGER_FOLD_LIMIT = 1 << 16


def converter(op_type: str, since: int = 1, domain: str = "") -> Callable[[Callable], Callable]:
    def wrap(fn: Callable) -> Callable:
        entries = CONVERTERS.setdefault((domain, op_type), [])
        entries.append((since, fn))
        entries.sort(key=lambda e: e[0])
        return fn

    return wrap


def find_converter(domain: str, op_type: str, opset: int) -> Optional[Callable]:
    domain = "" if domain == "ai.onnx" else domain
    best = None
    for since, fn in CONVERTERS.get((domain, op_type), []):
        if since <= opset:
            best = fn
    return best


# ONNX TensorProto element type name -> slimc dtype name: the one table both directions use.
_ELEM_TYPES = {"FLOAT": "f32", "DOUBLE": "f64", "FLOAT16": "f16", "BFLOAT16": "bf16",
               "INT8": "i8", "INT16": "i16", "INT32": "i32", "INT64": "i64", "UINT8": "u8",
               "UINT16": "u16", "UINT32": "u32", "UINT64": "u64", "BOOL": "bool"}


def onnx_dtype(elem_type: int, where: str = ""):
    """ONNX TensorProto element type -> slimc dtype (unsupported types are a clear error)."""
    import onnx

    values = onnx.TensorProto.DataType.values()
    name = onnx.TensorProto.DataType.Name(elem_type) if elem_type in values else str(elem_type)
    if name not in _ELEM_TYPES:
        raise UnsupportedError(f"element type {name} is not supported{where}")
    return dtypes.parse(_ELEM_TYPES[name])


def onnx_elem_type(dtype) -> int:
    """slimc dtype -> ONNX TensorProto element type (the inverse of `onnx_dtype`)."""
    import onnx

    name = next(k for k, v in _ELEM_TYPES.items() if v == dtype.name)
    return onnx.TensorProto.DataType.Value(name)


_ATTR_KINDS = {1: "float", 2: "int", 3: "string", 4: "tensor", 5: "graph", 6: "floats",
               7: "ints", 8: "strings", 9: "tensors", 10: "graphs", 11: "sparse_tensor",
               12: "sparse_tensors", 13: "type_proto", 14: "type_protos"}


class ConvertContext:
    """What a converter sees: the ONNX node, its inputs as slimc values, and ways to emit."""

    def __init__(self, graph: Graph, node, inputs: Sequence[Optional[Value]], opset: int):
        self.graph = graph
        self.node = node
        self.inputs = list(inputs)
        self.opset = opset
        self.label = node.name or (node.output[0] if node.output else node.op_type)
        self._attrs = {a.name: a for a in node.attribute}

    # ----- reading the ONNX node ---------------------------------------------------------
    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def input(self, i: int) -> Optional[Value]:
        return self.inputs[i] if i < len(self.inputs) else None

    def has_input(self, i: int) -> bool:
        return self.input(i) is not None

    def const_value(self, i: int) -> Optional[np.ndarray]:
        """The data of input i if it is a constant (initializer, Constant, or folded)."""
        v = self.input(i)
        if v is None or not v.is_constant:
            return None
        return v.data

    def has_attr(self, name: str) -> bool:
        return name in self._attrs

    def attr(self, name: str, default: Any = None, kind: Optional[str] = None) -> Any:
        """An attribute's value (str for strings, np.ndarray for tensors), or `default`.

        `kind` ("int", "float", "ints", "floats", "string", "tensor") is checked when given:
        an attribute of the wrong type is a model error, not a crash later.
        """
        import onnx

        a = self._attrs.get(name)
        if a is None:
            return default
        got = _ATTR_KINDS.get(a.type, str(a.type))
        if kind is not None and got != kind and not (kind == "float" and got == "int"):
            self.fail(f"attribute {name!r} must be of type {kind}, got {got}")
        if got in ("graph", "graphs"):
            raise UnsupportedError("control flow (subgraph attributes) is not supported",
                                   node=self.label, op=self.node.op_type)
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            return value.decode("utf-8", errors="replace")
        if got == "strings":
            return [v.decode("utf-8", errors="replace") for v in value]
        if got == "tensor":
            return tensor_to_numpy(value, self.label)
        if got in ("ints", "floats"):
            return list(value)
        return value

    def fail(self, message: str):
        raise ModelError(message, node=self.label, op=self.node.op_type)

    def unsupported(self, message: str):
        raise UnsupportedError(message, node=self.label, op=self.node.op_type)

    # ----- building slimc IR -------------------------------------------------------------
    def const(self, data, dtype=None, name: str = "") -> Value:
        arr = np.asarray(data, dtype=None if dtype is None else getattr(dtype, "numpy", dtype))
        base = name or (self.node.output[0] if self.node.output else "const") + ".const"
        return self.graph.add_constant(base, arr)

    def emit(self, op: str, inputs: Sequence[Optional[Value]], num_outputs: int = 1, *,
             attrs: Optional[dict] = None, **more_attrs) -> Any:
        """Emit one slimc node (types inferred, folded if all inputs are constant).

        Attributes come as keywords, or in `attrs` for one whose name is taken here (split's
        num_outputs). Returns the output value, or a list of them when `num_outputs` != 1.
        """
        attrs = {**more_attrs, **(attrs or {})}
        opdef = get_op(op, self.label)
        while inputs and inputs[-1] is None and len(inputs) > opdef.num_inputs[0]:
            inputs = list(inputs)[:-1]
        try:
            out_types = infer_op(op, inputs, attrs, self.label)
        except SlimcError:
            raise
        except Exception as e:
            raise InternalError(f"type inference of {op} failed: {type(e).__name__}: {e}",
                                where=f"converter for {self.node.op_type}") from e
        if num_outputs != 1 and len(out_types) != num_outputs and opdef.num_outputs != -1:
            raise InternalError(f"{op} gives {len(out_types)} outputs, converter expected "
                                f"{num_outputs}", where=f"converter for {self.node.op_type}")
        foldable = all(v is None or (v.is_constant and v.data is not None) for v in inputs) and \
            all(t.is_static and t.numel <= EAGER_FOLD_LIMIT for t in out_types)
        base = (self.node.output[0] if self.node.output and self.node.output[0] else op)
        if foldable:
            from slimc.ir.interpreter import run_node
            from slimc.ir.graph import Node

            probe = Node(op, [], attrs, [Value(base, t) for t in out_types], self.node.name)
            # A failure here is the model's: this subgraph would fail the same way at run time.
            datas = run_node(probe, [None if v is None else v.data for v in inputs])
            outs = [self.graph.add_constant(base, d, t) for d, t in zip(datas, out_types)]
            return outs[0] if num_outputs == 1 else outs
        node = self.graph.make_node(op, inputs, attrs, out_types, [base] * len(out_types),
                                    name=self.node.name)
        return node.outputs[0] if num_outputs == 1 else list(node.outputs)


_KIND_OF_DEFAULT = {float: "float", int: "int", str: "string"}


def simple(onnx_op: str, slimc_op: str, since: int = 1, attrs: Sequence[tuple] = (),
           num_inputs: Optional[int] = None) -> None:
    """Register a one-to-one converter: same inputs, attributes copied (onnx name, slimc name,
    default)."""

    def convert(ctx: ConvertContext):
        inputs = ctx.inputs if num_inputs is None else ctx.inputs[:num_inputs]
        kw = {}
        for onnx_name, slimc_name, default in attrs:
            value = ctx.attr(onnx_name, default, kind=_KIND_OF_DEFAULT.get(type(default)))
            if value is not None:
                kw[slimc_name] = value
        return ctx.emit(slimc_op, inputs, **kw)

    convert.__name__ = f"convert_{onnx_op}"
    converter(onnx_op, since)(convert)


# Importing the families registers their converters.
from . import elementwise, linalg, nn, quant, reduce, tensor  # noqa: E402,F401


# ----- tensors ---------------------------------------------------------------------------------

def tensor_to_numpy(t, where: str = "", base_dir: Optional[str] = None) -> np.ndarray:
    """An ONNX TensorProto as a numpy array (external data read from `base_dir`)."""
    import onnx
    from onnx import numpy_helper

    onnx_dtype(t.data_type, f" (tensor {t.name!r}{where and ' in ' + where})")
    if t.data_location == onnx.TensorProto.EXTERNAL:
        _load_external(t, base_dir)
    try:
        arr = numpy_helper.to_array(t)
    except Exception as e:
        raise ModelError(f"tensor {t.name!r} cannot be read: {e}", node=where or None) from e
    # (np.ascontiguousarray would turn a 0-d scalar into shape (1,))
    return arr if arr.flags.c_contiguous else np.ascontiguousarray(arr)


def _load_external(t, base_dir: Optional[str]) -> None:
    info = {e.key: e.value for e in t.external_data}
    location = info.get("location", "")
    if base_dir is None:
        raise ModelError(f"tensor {t.name!r} has external data {location!r} but the model was "
                         f"not loaded from a file, so there is no folder to find it in")
    root = os.path.realpath(base_dir)
    path = os.path.realpath(os.path.join(root, location))
    if os.path.isabs(location) or os.path.commonpath([root, path]) != root:
        raise ModelError(f"tensor {t.name!r}: external data location {location!r} leaves the "
                         f"model's folder; refused")
    if not os.path.isfile(path):
        raise ModelError(f"tensor {t.name!r}: external data file {location!r} does not exist")
    offset = int(info.get("offset", 0))
    length = int(info["length"]) if "length" in info else None
    with open(path, "rb") as f:
        f.seek(offset)
        raw = f.read() if length is None else f.read(length)
    if length is not None and len(raw) != length:
        raise ModelError(f"tensor {t.name!r}: external data file {location!r} is truncated")
    t.raw_data = raw
    del t.external_data[:]
    import onnx

    t.data_location = onnx.TensorProto.DEFAULT
