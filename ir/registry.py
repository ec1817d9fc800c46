"""The op registry: one declaration per op.

A declaration (`OpDef`) says everything the rest of slimc needs to know about an op:

* its attributes and their defaults (`REQUIRED` for none),
* how many inputs and outputs it has, and which inputs' *values* decide output shapes
  (``shape_inputs``: the target shape of a reshape, the K of top_k) so that compilation can
  specialize on them,
* type inference (`infer`), given the input types, the attributes and constant input data,
* a numpy reference implementation -- the oracle of every test and the engine of constant
  folding,
* its fusion kind, which is all the fusion pass needs to know about it.

A custom op is one call::

    slimc.ir.register_op("my_swish", reference=lambda x, beta=1.0: x / (1 + np.exp(-beta * x)),
                         infer=same_as_input(0), attrs={"beta": 1.0},
                         fusion=FusionKind.ELEMENTWISE)

or the same as a decorator, ``@op("my_swish", ...)`` on the reference function.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .errors import InternalError, ModelError, SlimcError, UnsupportedError
from .types import TensorType


class FusionKind(enum.IntEnum):
    """TVM's ordering: a producer can be fused into a consumer of a higher or equal kind."""

    ELEMENTWISE = 0
    BROADCAST = 1
    INJECTIVE = 2
    REDUCTION = 3
    OUT_FUSABLE = 4
    OPAQUE = 5


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED = _Required()


class InferContext:
    """What type inference sees of a node: input types, resolved attributes, constant inputs."""

    def __init__(self, opdef: "OpDef", inputs: Sequence[Optional[TensorType]], attrs: dict,
                 consts: Sequence[Optional[np.ndarray]], node_label: str = ""):
        self.opdef = opdef
        self.inputs = list(inputs)
        self.attrs = attrs
        self.consts = list(consts)
        self.node_label = node_label

    def __getitem__(self, i: int) -> TensorType:
        t = self.inputs[i] if i < len(self.inputs) else None
        if t is None:
            self.fail(f"input {i} is required")
        return t

    def has(self, i: int) -> bool:
        return i < len(self.inputs) and self.inputs[i] is not None

    def const(self, i: int) -> Optional[np.ndarray]:
        return self.consts[i] if i < len(self.consts) else None

    def const_required(self, i: int, what: str) -> np.ndarray:
        c = self.const(i)
        if c is None:
            raise UnsupportedError(f"{what} (input {i}) must be a constant or known once input "
                                   f"shapes are bound", node=self.node_label, op=self.opdef.name)
        return c

    def fail(self, message: str):
        raise ModelError(message, node=self.node_label, op=self.opdef.name)

    def unsupported(self, message: str):
        """A valid model that slimc does not implement (an UnsupportedError naming the node)."""
        raise UnsupportedError(message, node=self.node_label, op=self.opdef.name)


InferFn = Callable[[InferContext], "TensorType | Sequence[TensorType]"]


@dataclass
class OpDef:
    name: str
    reference: Callable[..., Any]
    infer: InferFn
    attrs: dict = field(default_factory=dict)
    fusion: FusionKind = FusionKind.OPAQUE
    num_inputs: tuple = (0, None)  # (min, max); max None = variadic
    num_outputs: int = 1  # -1: decided by the node (split)
    shape_inputs: tuple = ()
    doc: str = ""

    def resolve_attrs(self, attrs: dict, node_label: str = "") -> dict:
        """The node's attributes with defaults filled in; unknown or missing ones are errors."""
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise ModelError(f"unknown attribute(s) {sorted(unknown)}; {self.name} takes "
                             f"{sorted(self.attrs) or 'none'}", node=node_label, op=self.name)
        out = {}
        for k, default in self.attrs.items():
            if k in attrs:
                out[k] = self._checked_kind(k, attrs[k], default, node_label)
            elif default is REQUIRED:
                raise ModelError(f"attribute {k!r} is required", node=node_label, op=self.name)
            else:
                out[k] = default
        return out

    def _checked_kind(self, key: str, value, default, node_label: str):
        """A string where the default is a number (axis="1" in IR text) is the model's error:
        passed on, it would reach the op's inference as int("1") and read as a slimc bug."""
        if isinstance(value, str) and isinstance(default, (int, float)) and \
                not isinstance(default, bool):
            raise ModelError(f"attribute {key}={value!r} must be a number, as its default "
                             f"{default!r} is (write it unquoted)", node=node_label, op=self.name)
        return value

    def check_arity(self, n_inputs: int, node_label: str = "") -> None:
        lo, hi = self.num_inputs
        if n_inputs < lo or (hi is not None and n_inputs > hi):
            want = f"{lo}" if lo == hi else f"{lo}..{'' if hi is None else hi}"
            raise ModelError(f"takes {want} inputs, got {n_inputs}", node=node_label, op=self.name)

    def run_reference(self, inputs: Sequence[Optional[np.ndarray]], attrs: dict) -> list[np.ndarray]:
        out = self.reference(*inputs, **attrs)
        if isinstance(out, (tuple, list)):
            return [np.asarray(o) for o in out]
        return [np.asarray(out)]

    def infer_types(self, inputs: Sequence[Optional[TensorType]], attrs: dict,
                    consts: Sequence[Optional[np.ndarray]], node_label: str = "") -> list[TensorType]:
        ctx = InferContext(self, inputs, attrs, consts, node_label)
        out = self.infer(ctx)
        return [out] if isinstance(out, TensorType) else list(out)


_REGISTRY: dict[str, OpDef] = {}


def register_op(name: str, *, reference: Callable, infer: InferFn, attrs: Optional[dict] = None,
                fusion: FusionKind = FusionKind.OPAQUE, num_inputs=None, num_outputs: int = 1,
                shape_inputs: Sequence[int] = (), doc: str = "", replace: bool = False) -> OpDef:
    """Declare an op. `num_inputs` is an int, a (min, max) pair, or None for 'any number'."""
    if name in _REGISTRY and not replace:
        raise SlimcError(f"op {name!r} is already registered (pass replace=True to override)")
    if num_inputs is None:
        num_inputs = (0, None)
    elif isinstance(num_inputs, int):
        num_inputs = (num_inputs, num_inputs)
    opdef = OpDef(name, reference, infer, dict(attrs or {}), FusionKind(fusion), tuple(num_inputs),
                  num_outputs, tuple(shape_inputs), doc or (reference.__doc__ or "").strip())
    _REGISTRY[name] = opdef
    return opdef


def op(name: str, **kwargs) -> Callable[[Callable], Callable]:
    """Decorator form of `register_op`: decorates the reference implementation."""

    def wrap(fn: Callable) -> Callable:
        register_op(name, reference=fn, **kwargs)
        return fn

    return wrap


def get_op(name: str, node_label: str = "") -> OpDef:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnsupportedError(f"op {name!r} is not registered", node=node_label, op=name) from None


def has_op(name: str) -> bool:
    return name in _REGISTRY


def all_ops() -> dict[str, OpDef]:
    return dict(_REGISTRY)


def node_opdef(node) -> OpDef:
    return get_op(node.op, node.label)


def infer_node(node) -> list[TensorType]:
    """Type inference for a node already in a graph (constant inputs feed value-dependent ops)."""
    from .graph import constant_data

    opdef = node_opdef(node)
    opdef.check_arity(len(node.inputs), node.label)
    attrs = opdef.resolve_attrs(node.attrs, node.label)
    types = [None if v is None else v.type for v in node.inputs]
    consts = [constant_data(v) for v in node.inputs]
    try:
        return opdef.infer_types(types, attrs, consts, node.label)
    except SlimcError:
        raise
    except Exception as e:  # a bug in an inference function, not in the model
        raise InternalError(f"type inference of {node.op} failed on {node.label!r}: "
                            f"{type(e).__name__}: {e}", where=f"op {node.op}") from e
