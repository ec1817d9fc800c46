"""What is known of values from the ops that compute them: that an element can never be NaN,
and bounds a clip or relu puts on it. A CPU kernel asks about the values it computes
(codegen/cpu/kernel.py): its lowerings drop work whose only purpose is an edge case that
cannot occur (codegen/cpu/scalar_ops.py: max and min without NaN propagation, a quantize
without clamps the range cannot reach), so a requantizing epilogue (int32 -> dequantize ->
+ bias -> clip -> quantize) takes ~5 instructions a vector fewer. A pass asks about a whole
graph (`graph_facts`): a max_pool moves after a quantize only where no NaN reaches it."""

from __future__ import annotations

import numpy as np

from .graph import Graph, Value

# ops that give no NaN from operands that are not NaN; add, sub and mul only with a
# constant operand (inf - inf and inf * 0 are NaN: a constant is finite and nonzero)
NO_NAN_OPS = frozenset({"clip", "relu", "max", "min", "neg", "abs", "dequantize", "cast"})


class ValueFacts:
    """Facts about the values of one kernel; `produced` maps id(value) to the node of the
    kernel that computes it (values from buffers are read: nothing is known of them)."""

    def __init__(self, produced: dict):
        self.produced = produced
        self._never_nan: dict = {}

    def never_nan(self, v: Value) -> bool:
        """True if no element of `v` can be NaN."""
        if id(v) in self._never_nan:
            return self._never_nan[id(v)]
        if not v.type.dtype.is_float:
            result = True
        elif v.is_constant:
            result = v.data is not None and bool(np.all(np.isfinite(v.data)))
        else:
            node = self.produced.get(id(v))
            operands = [x for x in (node.inputs if node is not None else ()) if x is not None]
            if node is None or not all(self.never_nan(x) for x in operands):
                result = False
            elif node.op in NO_NAN_OPS:
                result = True
            elif node.op in ("add", "sub", "mul") and len(operands) == 2:
                const = [x for x in operands if x.is_constant]
                result = bool(const) and (node.op != "mul" or bool(np.all(const[0].data != 0)))
            else:
                result = False
        self._never_nan[id(v)] = result
        return result

    def value_range(self, v: Value):
        """(lo, hi) that every element of `v` lies in, where a clip or relu in the kernel
        bounds it (and it is never NaN), else None: a quantize after a clip to [0, 6] then
        skips clamps that cannot bite."""
        node = self.produced.get(id(v))
        if node is None or not self.never_nan(v):
            return None
        if node.op == "relu":
            return (0.0, float("inf"))
        if node.op != "clip":
            return None
        bounds = []
        for i, default in ((1, float("-inf")), (2, float("inf"))):
            b = node.inputs[i] if len(node.inputs) > i else None
            if b is not None and not (b.is_constant and b.data is not None and b.data.size == 1):
                return None
            bounds.append(default if b is None else float(b.data.reshape(())))
        # clip(x, 10, -5) is -5 everywhere (numpy's min(max(x, lo), hi)): no range claimed
        return tuple(bounds) if bounds[0] <= bounds[1] else None


def graph_facts(graph: Graph) -> ValueFacts:
    """The facts of every value a node of `graph` computes."""
    return ValueFacts({id(v): n for n in graph.nodes for v in n.outputs})
