"""ATen op converters: one small function per op, found in one table keyed by the op overload.

A converter turns one FX node (an ATen op call) into slimc ops through a `TorchContext`::

    @converter(aten.hardtanh.default)
    def hardtanh(ctx):
        x = ctx.tensor("self")
        lo, hi = ctx.const(ctx["min_val"], x.type.dtype), ctx.const(ctx["max_val"], x.type.dtype)
        return ctx.emit("clip", [x, lo, hi])

Arguments are read by their schema names (``ctx["dim"]``), positional or keyword, defaults
filled in; an FX node argument reads as its converted slimc `Value`, a size computed from
symbolic dims as a `SymInt`. One-to-one elementwise ops are data (`elementwise.UNARY`, ...),
not functions. A converter may name a `refuse` check: the frontend's scan calls it on every
node before converting anything, so argument combinations slimc cannot take (a pooling's
indices that are used, a bool mask index) are listed with the missing ops, all at once.

Every value a converter returns is checked against the dtype and static shape PyTorch
recorded for the node (``meta["val"]``), so a converter bug is an InternalError naming the op
and the module, not a wrong answer.

This package imports torch; only `slimc.frontends.torch` imports it, when a model is converted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from slimc.ir import (Graph, ModelError, SlimcError, TensorType, UnsupportedError, Value,
                      dtypes, get_op)
from slimc.ir.builder import infer_op
from slimc.ir.errors import InternalError

aten = torch.ops.aten

# Ops emitted with only constant inputs fold on the spot up to this many elements (as the
# ONNX frontend does), so sizes computed from static shapes are known when a reshape converts.
EAGER_FOLD_LIMIT = 1 << 16
INT64_MAX = 2 ** 63 - 1


@dataclass
class Converter:
    fn: Callable
    check: Optional[Callable] = None

    def refuse(self, node) -> Optional[str]:
        """Why this node cannot be converted (None: it can)."""
        return self.check(node) if self.check is not None else None


CONVERTERS: dict = {}


def converter(*ops, refuse: Optional[Callable] = None) -> Callable:
    def wrap(fn: Callable) -> Callable:
        for op in ops:
            CONVERTERS[op] = Converter(fn, refuse)
        return fn

    return wrap


def find_converter(target) -> Optional[Converter]:
    return CONVERTERS.get(target)


def supported_ops() -> list[str]:
    """The ATen overloads (and Python size operators) with a converter, by name."""
    return sorted(str(op) if not str(op).startswith("<") else op.__name__ for op in CONVERTERS)


# ----- dtypes and types -------------------------------------------------------------------------

_DTYPES = {torch.float32: dtypes.f32, torch.float16: dtypes.f16, torch.bfloat16: dtypes.bf16,
           torch.int8: dtypes.i8, torch.int16: dtypes.i16, torch.int32: dtypes.i32,
           torch.int64: dtypes.i64, torch.uint8: dtypes.u8, torch.bool: dtypes.bool}


def slimc_dtype(dtype):
    try:
        return _DTYPES[dtype]
    except KeyError:
        raise UnsupportedError(f"dtype {dtype} is not supported") from None


def torch_dtype(dtype) -> "torch.dtype":
    return next(t for t, s in _DTYPES.items() if s == dtype)


@dataclass
class SymInt:
    """A size known only at run time: an i64[1] value computing it, and the symbolic dim it
    equals, if it is one (then a reshape or expand can say "keep that dim" instead of
    computing it, so shapes stay inferable without the value)."""

    value: Value
    dim: Optional[str] = None


def dim_of(d, symbol_names: Optional[dict] = None):
    """A torch size (int or SymInt) as a slimc dim: an int, a symbol name (the user's Dim
    name where `symbol_names` has one for torch's symbol), or None for an expression."""
    if isinstance(d, int):
        return d
    expr = d.node.expr
    if not expr.is_Symbol:
        return None
    return (symbol_names or {}).get(str(expr), str(expr))


def input_type(example, symbol_names: Optional[dict] = None) -> TensorType:
    """The slimc type of an input from its example value (tensor or FakeTensor)."""
    if not isinstance(example, torch.Tensor):
        raise UnsupportedError(f"an input is a {type(example).__name__}: slimc models take "
                               f"tensors")
    dims = [dim_of(d, symbol_names) for d in example.shape]
    return TensorType(slimc_dtype(example.dtype), tuple(dims))


# ----- the context ------------------------------------------------------------------------------

def _bind(target, args: tuple, kwargs: dict) -> dict:
    """Arguments by schema name, defaults filled in."""
    schema = getattr(target, "_schema", None)
    if schema is None:
        return {i: a for i, a in enumerate(args)}
    out = {}
    for i, a in enumerate(schema.arguments):
        if i < len(args) and not a.kwarg_only:
            out[a.name] = args[i]
        elif a.name in kwargs:
            out[a.name] = kwargs[a.name]
        elif a.has_default_value():
            out[a.name] = a.default_value
        else:
            out[a.name] = None
    return out


class TorchContext:
    """What a converter sees: the FX node's arguments (converted), its recorded result, and ways
    to emit slimc ops named after the node's module and located at its source line."""

    def __init__(self, graph: Graph, node, env: dict, name: str, loc: str, label: str):
        self.graph = graph
        self.node = node
        self.env = env
        self.name = name
        self.loc = loc
        self.label = label
        self.raw = _bind(node.target, tuple(node.args), dict(node.kwargs))
        self._created: list = []  # nodes this conversion made

    # ----- reading the node ---------------------------------------------------------------
    def _resolve(self, a):
        import torch.fx as fx

        if isinstance(a, fx.Node):
            if a not in self.env:
                raise ModelError(f"argument {a.name} has no converted value (an output of an "
                                 f"op slimc leaves out is used)", node=self.label,
                                 op=str(self.node.target))
            return self.env[a]
        if isinstance(a, (list, tuple)):
            return [self._resolve(x) for x in a]
        return a

    def __getitem__(self, name):
        return self._resolve(self.raw[name])

    def meta(self, name=None):
        """PyTorch's example value of argument `name` (FakeTensor, SymInt...), or of the node's
        result when name is None."""
        if name is None:
            return self.node.meta.get("val")
        a = self.raw[name]
        return a.meta.get("val") if hasattr(a, "meta") else a

    @property
    def out_dtype(self):
        val = self.meta()
        if isinstance(val, (list, tuple)):
            val = val[0]
        return slimc_dtype(val.dtype)

    def fail(self, message: str):
        raise ModelError(message, node=self.label, op=str(self.node.target))

    def unsupported(self, message: str):
        raise UnsupportedError(message, node=self.label, op=str(self.node.target))

    # ----- building -----------------------------------------------------------------------
    def const(self, data, dtype=None) -> Value:
        arr = np.asarray(data, dtype=None if dtype is None else getattr(dtype, "numpy", dtype))
        return self.graph.add_constant(self.name + ".const", arr)

    def emit(self, op: str, inputs: Sequence[Optional[Value]], num_outputs: int = 1, *,
             attrs: Optional[dict] = None, **more) -> Any:
        """One slimc node (types inferred; folded at once when every input is a constant)."""
        attrs = {**more, **(attrs or {})}
        inputs = list(inputs)
        opdef = get_op(op, self.label)
        while inputs and inputs[-1] is None and len(inputs) > opdef.num_inputs[0]:
            inputs.pop()
        try:
            types = infer_op(op, inputs, attrs, self.label)
        except SlimcError:
            raise
        except Exception as e:
            raise InternalError(f"type inference of {op} failed: {type(e).__name__}: {e}",
                                where=f"torch converter for {self.node.target}") from e
        base = f"{self.name}.{op}"
        foldable = all(v is None or (v.is_constant and v.data is not None) for v in inputs) \
            and all(t.is_static and t.numel <= EAGER_FOLD_LIMIT for t in types)
        if foldable:
            from slimc.ir.graph import Node
            from slimc.ir.interpreter import run_node

            probe = Node(op, [], attrs, [Value(base, t) for t in types], self.loc)
            datas = run_node(probe, [None if v is None else v.data for v in inputs])
            outs = [self.graph.add_constant(base, d, t) for d, t in zip(datas, types)]
        else:
            node = self.graph.make_node(op, inputs, attrs, types, [base] * len(types),
                                        name=self.loc)
            self._created.append(node)
            outs = node.outputs
        return outs[0] if num_outputs == 1 else list(outs)

    def cast(self, v: Value, dtype) -> Value:
        return v if v.type.dtype == dtype else self.emit("cast", [v], to=dtype)

    def tensor(self, name_or_value, dtype=None) -> Value:
        """Argument `name` (or a given argument value) as a Value: Python numbers become
        constants of `dtype` (default: the node's result dtype), sizes their i64 value."""
        x = self[name_or_value] if isinstance(name_or_value, str) else name_or_value
        if isinstance(x, Value):
            return x if dtype is None else self.cast(x, dtype)
        if isinstance(x, SymInt):
            v = self.emit("reshape", [x.value, self.const(np.zeros(0, np.int64))])
            return self.cast(v, dtype or dtypes.i64)
        if isinstance(x, (bool, int, float, np.number)):
            return self.const(x, dtype or self.out_dtype)
        self.fail(f"expected a tensor or a number, got {type(x).__name__} {x!r}")

    def ints(self, name, what: str = "") -> list[int]:
        """Argument `name` as static ints (a size that depends on a symbolic dim is refused)."""
        x = self[name] if isinstance(name, str) else name
        items = x if isinstance(x, (list, tuple)) else [x]
        if any(isinstance(i, (SymInt, Value)) for i in items):
            self.unsupported(f"{what or name} must be static, got a size that depends on a "
                             f"symbolic dimension")
        return [int(i) for i in items]

    def int_value(self, x) -> Value:
        """An int or a SymInt as an i64[1] value."""
        if isinstance(x, SymInt):
            return x.value
        if isinstance(x, Value):
            return self.emit("reshape", [self.cast(x, dtypes.i64), self.const([1], np.int64)])
        return self.const([int(x)], np.int64)

    def shape_value(self, sizes: Sequence) -> Value:
        """A list of ints and SymInts as one i64[n] value (a constant when all are static)."""
        if all(isinstance(s, (int, np.integer)) for s in sizes):
            return self.const([int(s) for s in sizes], np.int64)
        parts, run = [], []
        for s in sizes:
            if isinstance(s, (int, np.integer)):
                run.append(int(s))
                continue
            if run:
                parts.append(self.const(run, np.int64))
                run = []
            parts.append(self.int_value(s))
        if run:
            parts.append(self.const(run, np.int64))
        return parts[0] if len(parts) == 1 else self.emit("concat", parts, axis=0)

    def dim_size(self, v: Value, axis: int):
        """Dimension `axis` of `v`: an int when static, else a SymInt from its shape."""
        d = v.type.shape[axis]
        if isinstance(d, int):
            return d
        axis %= v.type.rank
        return SymInt(self.emit("shape", [v], start=axis, end=axis + 1), d)

    def shape_of(self, v: Value, start: int = 0, end: Optional[int] = None) -> Value:
        """v's dims [start:end] as an i64 vector: a constant when they are static."""
        dims = v.type.shape[start:end]
        if all(isinstance(d, int) for d in dims):
            return self.const(list(dims), np.int64)
        return self.emit("shape", [v], start=start, end=end)

    def axes_const(self, axes: Sequence[int]) -> Value:
        return self.const([int(a) for a in axes], np.int64)

    # ----- finishing --------------------------------------------------------------------------
    def finish(self, result):
        """Check results against PyTorch's record of the node and name the main value."""
        val = self.meta()
        if isinstance(result, (list, tuple)):
            vals = val if isinstance(val, (list, tuple)) else [None] * len(result)
            return [self._check(r, m, rename=True) for r, m in zip(result, vals)]
        return self._check(result, val, rename=True)

    def _check(self, v, val, rename: bool = False):
        if not isinstance(v, Value) or not isinstance(val, torch.Tensor):
            return v
        want = slimc_dtype(val.dtype)
        if v.type.dtype != want or v.type.rank != val.dim():
            raise InternalError(f"gave {v.type} where PyTorch computes {want}"
                                f"{list(val.shape)} ({self.label})",
                                where=f"torch converter for {self.node.target}")
        for got, d in zip(v.type.shape, val.shape):
            if isinstance(d, int) and isinstance(got, int) and got != d:
                raise InternalError(f"gave {v.type} where PyTorch computes {want}"
                                    f"{list(val.shape)} ({self.label})",
                                    where=f"torch converter for {self.node.target}")
        created = any(n is v.producer for n in self._created)
        if rename and created and v.name != self.name:
            self.graph.rename(v, self.graph.unique_name(self.name))
        return v


# Importing the families registers their converters.
from . import elementwise, indexing, nn, pool, reduce, tensor  # noqa: E402,F401
