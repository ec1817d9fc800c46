"""slimc: a graph-level neural-network compiler. ONNX in, native code out.

This module only wires the rooms together: `slimc.ir` (the IR), `slimc.frontends`,
`slimc.passes`, `slimc.codegen`, `slimc.runtime`.
"""

from slimc.ir import (Graph, InputError, InternalError, ModelError, SlimcError, TensorType,
                      UnsupportedError, dtypes, interpret, parse, register_op)
from slimc.frontends.onnx import from_onnx
from slimc.compiler import Module, compile
from slimc.runtime.export import load

__version__ = "0.1.0"

__all__ = ["compile", "load", "Module", "from_onnx", "interpret", "parse", "register_op", "Graph", "TensorType", "dtypes",
           "SlimcError", "ModelError", "UnsupportedError", "InternalError", "InputError"]
