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


def interpreter_run(model, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    from slimc.frontends.onnx import from_onnx
    from slimc.ir import interpret

    graph = from_onnx(model, input_shapes=_bind_shapes(model, inputs))
    return interpret(graph, *[np.asarray(a) for a in inputs])
