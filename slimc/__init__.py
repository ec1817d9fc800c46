"""slimc: a graph-level neural-network compiler. ONNX in, native code out.

This module only wires the rooms together: `slimc.ir` (the IR), `slimc.frontends`,
`slimc.passes`, `slimc.codegen`, `slimc.runtime`.
"""

from slimc.ir import (Graph, InputError, InternalError, ModelError, SlimcError, TargetError,
                      TensorType, UnsupportedError, dtypes, interpret, parse)
from slimc.ir import register_op as _register_ir_op
from slimc.frontends.onnx import from_onnx
from slimc.frontends.torch import from_torch
from slimc.compiler import Module, compile
from slimc.quantize import quantize
from slimc import prune
from slimc.target import Target
from slimc.runtime.export import load

from importlib.metadata import PackageNotFoundError as _NotInstalled, version as _version  # noqa: E402

try:
    __version__ = _version("slimc")  # one version: pyproject.toml's
except _NotInstalled:  # a source tree on sys.path without `pip install -e .`
    __version__ = "unknown"


def register_op(name: str, *, reference, infer, lower=None, **options):
    """Declare a custom op in one call: its numpy reference and type inference (what the
    interpreter and constant folding run) and, for an elementwise op, its native lowering per
    backend: ``lower={"cpu": f}`` (a bare function means the CPU's), where the CPU's is
    ``f(emitter, args, attrs) -> value`` (see codegen/cpu/scalar_ops.py). An op given a
    lowering and no `fusion` kind is declared elementwise, so it fuses like a built-in one.
    Other options (attrs, fusion, num_inputs, ...) are those of slimc.ir.register_op."""
    lowerings = {} if lower is None else lower if isinstance(lower, dict) else {"cpu": lower}
    unknown = set(lowerings) - set(_LOWERING_REGISTRARS)
    if unknown:
        raise SlimcError(f"register_op({name!r}): no backend {sorted(unknown)} takes lowerings; "
                         f"known: {', '.join(sorted(_LOWERING_REGISTRARS))}")
    if lowerings and "fusion" not in options:
        from slimc.ir import FusionKind

        options["fusion"] = FusionKind.ELEMENTWISE
    opdef = _register_ir_op(name, reference=reference, infer=infer, **options)
    for kind, fn in lowerings.items():
        _LOWERING_REGISTRARS[kind](name, fn)
    return opdef


def _register_cpu_lowering(name, fn):
    from slimc.codegen.cpu.scalar_ops import register_lowering

    register_lowering(name, fn)


# backend kind -> how it takes a custom op's lowering (the CUDA backend adds its own)
_LOWERING_REGISTRARS = {"cpu": _register_cpu_lowering}

__all__ = ["compile", "quantize", "prune", "load", "Module", "Target", "from_onnx", "from_torch", "interpret", "parse", "register_op", "Graph", "TensorType", "dtypes",
           "SlimcError", "ModelError", "UnsupportedError", "InternalError", "InputError", "TargetError"]
