"""Canonicalization: the many spellings exporters use for "nothing" or "just a view".

Every view op (flatten, squeeze, unsqueeze, reshape) with a static result becomes one
``reshape`` to a constant shape, so chains of them collapse into one; ops that change nothing
disappear (identity, a cast to the same type, a reshape or expand to the same shape, a
transpose by the identity permutation); two transposes become one; a power by 2 or 3 becomes
products; a pool whose single window covers its input becomes a global pool. Each rule is a few lines of data below.
"""

from __future__ import annotations

import numpy as np

from slimc.ir import Value

from .rewriter import Any, Builder, Const, Match, Op, RewritePass, Rule


def _not_graph_output(m: Match):
    return True if m.root.outputs[0] not in m.graph.outputs else \
        "the value is a graph output and keeps its own name"


def _same_type(m: Match):
    ok = _not_graph_output(m)
    if ok is not True:
        return ok
    return True if m.root.outputs[0].type.plain() == m["x"].type.plain() else \
        "the result's type differs from the input's"


def _static_result(m: Match):
    return True if m.root.outputs[0].type.is_static else "the result's shape is not static"


def _reshape_to(b: Builder, x: Value, shape) -> Value:
    # a 0 in the result shape is a 0 (without allowzero it would copy the input's dim)
    attrs = {"allowzero": 1} if 0 in shape else {}
    return b.op("reshape", [x, b.const(np.array(shape, np.int64))], **attrs)


def _exponent(k: float):
    """where-check: pow(x, e) with e a scalar constant equal to k, on a float x that keeps its
    shape (the exponent does not broadcast x)."""

    def check(m: Match):
        e = m.data("e")
        if e.size != 1 or float(e.reshape(())) != k:
            return f"the exponent is not {k:g}"
        if not m["x"].type.dtype.is_float:
            return "the base is not floating point"
        if m.root.outputs[0].type.plain() != m["x"].type.plain():
            return "the exponent broadcasts the base to another shape"
        return True

    return check


def _window_covers_input(m: Match):
    """where-check: a pool whose one window per channel covers the whole (unpadded) input:
    exporters write adaptive pooling to 1x1 as kernel_shape = the input size, or larger with
    ceil_mode (EfficientNet: 1280x1280 over 7x7), and the pool then walks every empty tap."""
    node, x = m.root, m["x"]
    a = node.attrs
    spatial = x.type.shape[2:]
    if not x.type.is_static or not node.outputs[0].type.is_static:
        return "the shapes are not static"
    if any(int(p) != 0 for p in (a.get("pads") or [])):
        return "the window is padded"
    if any(int(d) != 1 for d in (a.get("dilations") or [])):
        return "the window is dilated"
    if any(d != 1 for d in node.outputs[0].type.shape[2:]):
        return "there is more than one window per channel"
    if any(int(k) < d for k, d in zip(a["kernel_shape"], spatial)):
        return "the window does not cover the input"
    return True


# view op -> the input counts it comes with (squeeze's axes are optional)
VIEW_OPS = {"flatten": (1,), "squeeze": (1, 2), "unsqueeze": (2,)}

RULES = [
    Rule("drop_identity", Op("identity", Any("x")), lambda m, b: m["x"], where=_not_graph_output),
    Rule("drop_same_type_cast", Op("cast", Any("x")), lambda m, b: m["x"], where=_same_type),
    Rule("drop_same_shape_reshape", Op("reshape", Any("x"), Any()), lambda m, b: m["x"],
         where=_same_type),
    Rule("drop_same_shape_expand", Op("expand", Any("x"), Any()), lambda m, b: m["x"],
         where=_same_type),
    Rule("drop_identity_transpose",
         Op("transpose", Any("x"), attrs={"perm": lambda p: list(p) == list(range(len(p)))}),
         lambda m, b: m["x"], where=_not_graph_output),
    Rule("merge_transposes", Op("transpose", Op("transpose", Any("x"), name="inner")),
         # out[i] = inner[outer[i]] = x[inner_perm[outer_perm[i]]]
         lambda m, b: b.op("transpose", [m["x"]], perm=[m.node("inner").attrs["perm"][p]
                                                       for p in m.root.attrs["perm"]])),
    Rule("merge_reshapes", Op("reshape", Op("reshape", Any("x"), Any()), Any()),
         lambda m, b: _reshape_to(b, m["x"], m.root.outputs[0].type.shape), where=_static_result),
    # x**2 and x**3 (GELU's tanh form, variances) as products: pow is a libm call per element,
    # a product is one vector instruction; x*x is exact to 0.5 ulp like pow, x*x*x to 1 ulp
    Rule("pow_two_to_mul", Op("pow", Any("x"), Const("e")),
         lambda m, b: b.op("mul", [m["x"], m["x"]]), where=_exponent(2.0)),
    Rule("pow_three_to_mul", Op("pow", Any("x"), Const("e")),
         lambda m, b: b.op("mul", [b.op("mul", [m["x"], m["x"]]), m["x"]]), where=_exponent(3.0)),
    Rule("avg_pool_to_global", Op("avg_pool", Any("x")),
         lambda m, b: b.op("global_avg_pool", [m["x"]]), where=_window_covers_input),
    Rule("max_pool_to_global", Op("max_pool", Any("x")),
         lambda m, b: b.op("global_max_pool", [m["x"]]), where=_window_covers_input),
] + [
    Rule(f"{op}_to_reshape", Op(op, Any("x"), *[Any()] * (n - 1)),
         lambda m, b: _reshape_to(b, m["x"], m.root.outputs[0].type.shape), where=_static_result)
    for op, counts in VIEW_OPS.items() for n in counts
]


class Simplify(RewritePass):
    def __init__(self):
        super().__init__("simplify", RULES)
