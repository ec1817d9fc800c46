"""Runners with the `run(model, inputs) -> outputs` shape that conformance harnesses call.

`interpreter_run` imports an ONNX ModelProto and runs slimc's reference interpreter on it;
input shapes are bound from the arrays given, as a user calling the model would.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def _bind_shapes(model, inputs: Sequence[np.ndarray]) -> dict:
    inits = {t.name for t in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in inits]
    return {n: tuple(np.asarray(a).shape) for n, a in zip(names, inputs)}


# Integer inputs this small are bound as constants (the values a caller passes decide shapes:
# reduction axes, reshape targets, the K of TopK), as a compiled Module specializes on them.
SHAPE_LIKE_LIMIT = 64


def _shape_like(model, inputs: Sequence[np.ndarray]) -> dict:
    inits = {t.name for t in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in inits]
    return {n: np.asarray(a) for n, a in zip(names, inputs)
            if np.asarray(a).dtype in (np.int64, np.int32) and np.asarray(a).size <= SHAPE_LIKE_LIMIT}


def _import(model, inputs: Sequence[np.ndarray]):
    from slimc.frontends.onnx import from_onnx

    inits = {t.name for t in model.graph.initializer}
    names = [vi.name for vi in model.graph.input if vi.name not in inits]
    by_name = dict(zip(names, (np.asarray(a) for a in inputs)))
    graph = from_onnx(model, input_shapes=_bind_shapes(model, inputs),
                      input_values=_shape_like(model, inputs))
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
