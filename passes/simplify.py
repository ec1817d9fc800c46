"""Canonicalization: the many spellings exporters use for "nothing" or "just a view".

Every view op (flatten, squeeze, unsqueeze, reshape) with a static result becomes one
``reshape`` to a constant shape, so chains of them collapse into one; ops that change nothing
disappear (identity, a cast to the same type, a reshape or expand to the same shape, a
transpose by the identity permutation); two transposes become one; a power by 2 or 3 becomes
products; a pool whose single window covers its input becomes a global pool.

Two rules reach across views. A transpose of a reshape that only adds or drops dimensions of
size 1 becomes a reshape of a transpose, so the transposes on either side meet and merge
(attention's ``K^T`` is exported as transpose, reshape to 3-D, transpose, reshape back: one
transpose is left). A multiply by a scalar constant moves towards its producer, through
transposes, reshapes and an add of a constant, until it lands on the constant weights of a
matmul or gemm and disappears into them (attention scales queries and keys by
``1/sqrt(sqrt(d))`` each: two elementwise passes a layer, now none).
Each rule is a few lines of data below.
"""

from __future__ import annotations

import numpy as np

from slimc.ir import Value

from .rewriter import Any, Builder, Const, Match, Op, Opt, RewritePass, Rule
from .views import compose_views


def _not_graph_output(m: Match):
    return True if m.root.outputs[0] not in m.graph.outputs else \
        "the value is a graph output and keeps its own name"


def _same_type(m: Match):
    ok = _not_graph_output(m)
    if ok is not True:
        return ok
    return True if m.root.outputs[0].type == m["x"].type else \
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
        if m.root.outputs[0].type != m["x"].type:
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


def _unit_free_reshape(m: Match):
    """where-check: the inner reshape only adds or drops dimensions of size 1 (so a transpose
    after it is a transpose of its input), and the shapes are static."""
    x, mid = m["x"], m.node("view").outputs[0]
    if not (x.type.is_static and mid.type.is_static):
        return "the shapes are not static"
    if [d for d in x.type.shape if d != 1] != [d for d in mid.type.shape if d != 1]:
        return "the reshape does more than add or drop dimensions of size 1"
    if 1 not in [d for d in mid.type.shape] and 1 not in x.type.shape:
        return "the reshape changes nothing"
    return True


def _transpose_before_reshape(m: Match, b: Builder) -> Value:
    """transpose(reshape(x), perm) as reshape(transpose(x, perm')): perm' puts x's unit
    dimensions first, then its other dimensions in the order the transpose leaves them."""
    x, mid = m["x"], m.node("view").outputs[0]
    mid_to_x = [i for i, d in enumerate(x.type.shape) if d != 1]  # k-th non-unit dim of each
    mid_non_unit = [i for i, d in enumerate(mid.type.shape) if d != 1]
    where_in_x = dict(zip(mid_non_unit, mid_to_x))
    order = [where_in_x[p] for p in m.root.attrs["perm"] if mid.type.shape[p] != 1]
    perm = [i for i, d in enumerate(x.type.shape) if d == 1] + order
    return _reshape_to(b, b.op("transpose", [x], perm=perm), m.root.outputs[0].type.shape)


def _transposes_through_reshape(m: Match):
    """where-check: transpose(reshape(transpose(x))) with static shapes, whose inner values
    serve nothing else, composes into one transpose."""
    first, view = m.node("first"), m.node("view")
    if not all(v.type.is_static for v in (m["x"], first.outputs[0], view.outputs[0])):
        return "the shapes are not static"
    for v in (first.outputs[0], view.outputs[0]):
        if len(v.uses) != 1 or v in m.graph.outputs:
            return f"%{v.name} has other uses"
    found = compose_views(m["x"].type.shape, [("transpose", first.attrs["perm"]),
                                              ("reshape", view.outputs[0].type.shape),
                                              ("transpose", m.root.attrs["perm"])])
    if isinstance(found, str):
        return found
    m.found["composed"] = found
    return True


def _one_transpose(m: Match, b: Builder) -> Value:
    """attention's K^T at batch > 1, exported as transpose [0, 2, 1, 3], reshape to [B * H,
    S, D], transpose [0, 2, 1]: one transpose [0, 2, 3, 1] between reshapes."""
    split, perm = m.found["composed"]
    x = m["x"]
    if tuple(split) != tuple(x.type.shape):
        x = _reshape_to(b, x, split)
    y = b.op("transpose", [x], perm=perm)
    return _reshape_to(b, y, m.root.outputs[0].type.shape)


def _lands_on_weights(v: Value, graph) -> bool:
    """Following single-use views and constant-bias adds up from `v` reaches a matmul with
    constant weights or a gemm: a scalar multiply pushed that way disappears there. (Pushed
    anywhere else it would only move, and could break up a pattern such as GELU's.)"""
    while v.producer is not None and (len(v.uses) <= 1 and v not in graph.outputs):
        node = v.producer
        if node.op == "gemm" or node.op == "matmul" and node.inputs[1].is_constant:
            return True
        if node.op in ("transpose", "reshape"):
            v = node.inputs[0]
        elif node.op == "add" and node.inputs[1].is_constant:
            v = node.inputs[0]
        elif node.op == "add" and node.inputs[0].is_constant:
            v = node.inputs[1]
        else:
            return False
    return False


def _scalar(m: Match):
    """where-check: the multiplier is a floating-point scalar constant that does not broadcast
    the other operand to a new shape, on its way to constant weights."""
    c = m.data("c")
    if c.size != 1 or c.dtype.kind != "f":
        return "the multiplier is not a floating-point scalar"
    inner = m.node("inner").outputs[0]
    if m.root.outputs[0].type != inner.type:
        return "the multiplier broadcasts the other operand to another shape"
    if not _lands_on_weights(inner, m.graph):
        return "no matmul or gemm with constant weights to fold it into on the way up"
    return True


def _scalar_through_matmul(m: Match):
    """where-check: a scalar times a product of two computed matrices (attention's scores):
    it moves onto whichever operand leads to constant weights."""
    c = m.data("c")
    if c.size != 1 or c.dtype.kind != "f":
        return "the multiplier is not a floating-point scalar"
    if m.root.outputs[0].type != m.node("inner").outputs[0].type:
        return "the multiplier broadcasts the other operand to another shape"
    if m["b"].is_constant:
        return "the weights are constant (scalar_into_matmul_weights' case)"
    for operand in ("b", "a"):
        if _lands_on_weights(m[operand], m.graph):
            m.found["operand"] = operand
            return True
    return "neither operand leads to constant weights to fold it into"


def _scalar_into_operand(m: Match, b: Builder) -> Value:
    a, bv = m["a"], m["b"]
    if m.found["operand"] == "b":
        return b.op("matmul", [a, _scale(m, b, bv)], like=m.node("inner"))
    return b.op("matmul", [_scale(m, b, a), bv], like=m.node("inner"))


def _scalar_on_weights(m: Match):
    ok = _scalar(m)
    if ok is not True:
        return ok
    w = m["w"]
    if len(w.uses) != 1 or w in m.graph.outputs:
        return f"the weights %{w.name} are shared with another node"
    if w.type.dtype != m.root.outputs[0].type.dtype:
        return "the weights have another dtype"
    return True


def _scaled(m: Match, b: Builder, name: str) -> Value:
    """Constant `name` times the scalar, in its own dtype."""
    data = m.data(name)
    return b.const((data * m.data("c").reshape(())).astype(data.dtype))


def _scale(m: Match, b: Builder, y: Value) -> Value:
    """y times the scalar, named after y: the multiply that moved past y's consumer."""
    return b.op("mul", [y, m["c"]], value_name=y.name + ".scaled")


def _push_scalar(op: str):
    """mul(op(y, rest...), c) -> op(mul(y, c), rest...) for a view op."""
    def rewrite(m: Match, b: Builder) -> Value:
        inner = m.node("inner")
        return b.op(op, [_scale(m, b, m["y"])] + list(inner.inputs[1:]), like=inner, **inner.attrs)
    return rewrite


def _scalar_into_gemm(m: Match, b: Builder) -> Value:
    g = m.node("inner")
    c = float(m.data("c").reshape(()))
    attrs = dict(g.attrs)
    attrs["alpha"] = float(attrs.get("alpha", 1.0)) * c
    if len(g.inputs) > 2:
        attrs["beta"] = float(attrs.get("beta", 1.0)) * c
    return b.op("gemm", list(g.inputs), like=g, **attrs)


_SCALAR = Const("c")

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
    Rule("transpose_before_reshape",
         Op("transpose", Op("reshape", Any("x"), Any(), name="view")),
         _transpose_before_reshape, where=_unit_free_reshape),
    Rule("transposes_through_reshape",
         Op("transpose", Op("reshape", Op("transpose", Any("x"), name="first"), Any(),
                            name="view")),
         _one_transpose, where=_transposes_through_reshape),
    # a scalar multiply sinks towards constant weights (mul's operands in either order)
    Rule("scalar_through_transpose", Op("mul", Op("transpose", Any("y"), name="inner"), _SCALAR,
                                        commutative=True), _push_scalar("transpose"), where=_scalar),
    Rule("scalar_through_reshape", Op("mul", Op("reshape", Any("y"), Any(), name="inner"), _SCALAR,
                                      commutative=True), _push_scalar("reshape"), where=_scalar),
    Rule("scalar_through_bias_add",
         Op("mul", Op("add", Any("y"), Const("bias"), name="inner", commutative=True), _SCALAR,
            commutative=True),
         lambda m, b: b.op("add", [_scale(m, b, m["y"]), _scaled(m, b, "bias")],
                           like=m.node("inner")),
         where=_scalar),
    Rule("scalar_into_matmul_weights",
         Op("mul", Op("matmul", Any("x"), Const("w"), name="inner"), _SCALAR, commutative=True),
         lambda m, b: b.op("matmul", [m["x"], _scaled(m, b, "w")], like=m.node("inner")),
         where=_scalar_on_weights),
    Rule("scalar_through_matmul",
         Op("mul", Op("matmul", Any("a"), Any("b"), name="inner"), _SCALAR, commutative=True),
         _scalar_into_operand, where=_scalar_through_matmul),
    Rule("scalar_into_gemm", Op("mul", Op("gemm", Any(), Any(), Opt(Any()), name="inner"), _SCALAR,
                                commutative=True), _scalar_into_gemm, where=_scalar),
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
