"""Runners with the `run(model, inputs) -> outputs` shape that conformance harnesses call.

`interpreter_run` imports an ONNX ModelProto and runs slimc's reference interpreter on it;
input shapes are bound from the arrays given, as a user calling the model would.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _free_inputs(model, inputs: Sequence) -> dict:
    """{input name: array} for the graph inputs that are not initializers. Sequences, maps and
    optionals (lists, dicts, None) are refused here, the way slimc refuses such graphs."""
    from slimc.ir import UnsupportedError

    inits = {t.name for t in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in inits]
    out = {}
    for n, a in zip(names, inputs):
        if a is None or isinstance(a, (list, tuple, dict)):
            kind = "an empty optional" if a is None else f"a {type(a).__name__}"
            raise UnsupportedError(f"input {n!r} is {kind}: slimc takes tensors only "
                                   f"(sequences, maps and optionals are not supported)")
        out[n] = np.asarray(a)
    return out


# Integer inputs this small are bound as constants (the values a caller passes decide shapes:
# reduction axes, reshape targets, the K of TopK), as a compiled Module specializes on them.
SHAPE_LIKE_LIMIT = 64


def _shape_like(by_name: dict) -> dict:
    return {n: a for n, a in by_name.items()
            if a.dtype in (np.int64, np.int32) and a.size <= SHAPE_LIKE_LIMIT}


def _import(model, inputs: Sequence[np.ndarray]):
    from slimc.frontends.onnx import from_onnx

    by_name = _free_inputs(model, inputs)
    graph = from_onnx(model, input_shapes={n: a.shape for n, a in by_name.items()},
                      input_values=_shape_like(by_name))
    return graph, [by_name[v.name] for v in graph.inputs]


def interpreter_run(model, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    from slimc.ir import interpret

    graph, free = _import(model, inputs)
    return interpret(graph, *free)


def compiled_run(model, inputs: Sequence[np.ndarray], **compile_options) -> list[np.ndarray]:
    """Import, compile for the host (x86) and run: the conformance path through native code."""
    import slimc

    graph, free = _import(model, inputs)
    return slimc.compile(graph, **compile_options)(*free)
