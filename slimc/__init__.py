"""slimc: a graph-level neural-network compiler. ONNX in, native code out.

This module only wires the rooms together: `slimc.ir` (the IR), `slimc.frontends`,
`slimc.passes`, `slimc.codegen`, `slimc.runtime`.
"""

from slimc.ir import (Graph, InputError, InternalError, ModelError, SlimcError, TargetError,
                      TensorType, UnsupportedError, dtypes, interpret, parse)
from slimc.ir import register_op as _register_ir_op
from slimc.frontends.onnx import from_onnx
from slimc.compiler import Module, compile
from slimc.runtime.export import load

__version__ = "0.1.0"


def register_op(name: str, *, reference, infer, lower=None, **options):
    """Declare a custom op in one call: its numpy reference and type inference (what the
    interpreter and constant folding run) and, for an elementwise op, its native lowering
    ``lower(emitter, args, attrs) -> value`` (see codegen/cpu/scalar_ops.py). Other options
    (attrs, fusion, num_inputs, ...) are those of slimc.ir.register_op."""
    opdef = _register_ir_op(name, reference=reference, infer=infer, **options)
    if lower is not None:
        from slimc.codegen.cpu.scalar_ops import register_lowering

        register_lowering(name, lower)
    return opdef

__all__ = ["compile", "load", "Module", "from_onnx", "interpret", "parse", "register_op", "Graph", "TensorType", "dtypes",
           "SlimcError", "ModelError", "UnsupportedError", "InternalError", "InputError", "TargetError"]
