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


def interpreter_run(model, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    from slimc.frontends.onnx import from_onnx
    from slimc.ir import interpret

    bound = _shape_like(model, inputs)
    graph = from_onnx(model, input_shapes=_bind_shapes(model, inputs), input_values=bound)
    free = [v.name for v in graph.inputs]
    by_name = dict(zip([vi.name for vi in model.graph.input
                        if vi.name not in {t.name for t in model.graph.initializer}], inputs))
    return interpret(graph, *[np.asarray(by_name[n]) for n in free])
