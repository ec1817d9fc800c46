"""slimc's IR: types, graphs, the op registry, the text format, the verifier, the interpreter."""

from .errors import (InputError, InternalError, ModelError, ResourceError, SlimcError,
                     TargetError, UnsupportedError, VerificationError)
from .types import DType, TensorType, dtypes
from .graph import Graph, Node, Value
from .registry import (REQUIRED, FusionKind, InferContext, OpDef, all_ops, get_op, has_op, op,
                       register_op)
from .infer import broadcast_infer, infer_by_reference, same_as_input
from . import ops  # noqa: F401  (registers the op set)
from .printer import print_graph
from .parser import ParseError, parse
from .verifier import verify
from .interpreter import interpret
from .serialize import load, save

__all__ = [
    "Graph", "Node", "Value", "TensorType", "DType", "dtypes",
    "FusionKind", "OpDef", "InferContext", "REQUIRED", "register_op", "op", "get_op", "has_op",
    "all_ops", "same_as_input", "broadcast_infer", "infer_by_reference", "print_graph", "parse",
    "ParseError", "verify", "interpret", "save", "load", "SlimcError", "ModelError",
    "UnsupportedError", "InternalError", "VerificationError", "InputError", "ResourceError",
    "TargetError",
]
