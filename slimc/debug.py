"""Finding where a compiled model goes wrong.

`compare(model, inputs)` answers "which value is the first to differ, in which node, and which
pass made that node?". It checks two things, value by value in execution order:

1. the optimized graph against the imported one, both through the reference interpreter (a
   pass that changed the meaning of the model shows up here), matching values by name;
2. native code against the interpreter on the optimized graph, with every value made an output
   and fusion off, so each one is computed and stored by a kernel (a code generation bug shows
   up here).

The first value beyond tolerance is reported with its node's source name, op, and the pass that
created the node (``origin``; empty means the frontend).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional

import numpy as np

from slimc.ir import Graph, interpret


@dataclass
class Divergence:
    stage: str  # "passes" (optimized vs imported graph) or "codegen" (native vs interpreter)
    value: str
    node: str
    op: str
    origin: str
    max_abs: float
    max_rel: float

    def __str__(self) -> str:
        made = f"created by pass {self.origin}" if self.origin else "from the frontend"
        return (f"[{self.stage}] first divergence at %{self.value} = {self.op} (node "
                f"{self.node!r}, {made}): max abs error {self.max_abs:.3g}, max rel "
                f"{self.max_rel:.3g}")


@dataclass
class Comparison:
    checked: int = 0
    divergences: list = field(default_factory=list)

    @property
    def first(self) -> Optional[Divergence]:
        return self.divergences[0] if self.divergences else None

    @property
    def ok(self) -> bool:
        return not self.divergences

    def __str__(self) -> str:
        if self.ok:
            return f"all {self.checked} values agree"
        return "\n".join(str(d) for d in self.divergences)


def _all_values(graph: Graph, inputs) -> dict:
    probe = graph.clone()
    probe.outputs = [v for n in probe.nodes for v in n.outputs]
    return {v.name: out for v, out in zip(probe.outputs, interpret(probe, *inputs))}


def _error(a: np.ndarray, e: np.ndarray, rtol: float, atol: float):
    if a.shape != e.shape:
        return np.inf, np.inf
    a64, e64 = a.astype(np.float64), e.astype(np.float64)
    both_nan = np.isnan(a64) & np.isnan(e64)
    diff = np.where(both_nan, 0.0, np.abs(a64 - e64))
    diff = np.where(np.isnan(diff), np.inf, diff)
    if not diff.size:
        return 0.0, 0.0
    worst = float(diff.max())
    rel = float((diff / np.maximum(np.abs(e64), 1e-30)).max())
    bad = (diff > atol + rtol * np.abs(e64)).any()
    return (worst, rel) if bad else None


def compare(model, inputs, input_shapes: Optional[Mapping] = None, opt_level: int = 2,
            rtol: float = 1e-3, atol: float = 1e-4, stop_at_first: bool = True,
            target: str = "x86") -> Comparison:
    """Compare a model's values across optimization and code generation (see module doc).

    `model` is an ONNX path/bytes/ModelProto or a slimc Graph; `inputs` a list of arrays (or a
    dict by input name)."""
    import slimc
    from slimc.compiler import _bind, pipeline
    from slimc.passes import PassManager

    if isinstance(model, Graph):
        source = model.clone()
    else:
        source = slimc.from_onnx(model, input_shapes=input_shapes)
    if isinstance(inputs, Mapping):
        inputs = [inputs[v.name] for v in source.inputs]
    inputs = [np.asarray(a) for a in inputs]
    source = _bind(source, tuple(a.shape for a in inputs))
    optimized = source.clone()
    PassManager(pipeline(target, opt_level), verify=True).run(optimized)
    result = Comparison()
    nodes = {v.name: n for n in optimized.nodes for v in n.outputs}

    def check(stage, name, got, expected):
        result.checked += 1
        err = _error(got, expected, rtol, atol)
        if err is not None:
            n = nodes[name]
            result.divergences.append(Divergence(stage, name, n.label, n.op, n.origin, *err))

    before = _all_values(source, inputs)
    after = _all_values(optimized, inputs)
    for name, value in after.items():
        if name in before:
            check("passes", name, value, before[name])
            if stop_at_first and result.divergences:
                return result
    probe = optimized.clone()
    probe.outputs = [v for n in probe.nodes for v in n.outputs]
    native = slimc.compile(probe, target=target, opt_level=0, disable_passes=["fusion"])(*inputs)
    for v, value in zip(probe.outputs, native):
        check("codegen", v.name, value, after[v.name])
        if stop_at_first and result.divergences:
            return result
    return result
