"""Recognizing what exporters spelled out op by op, so it can run as one kernel.

Layer normalization written as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div (older PyTorch
exporters, opset < 17) becomes one ``layer_norm``, and the Mul/Add by constant gamma and beta
after it become its scale and bias. (GELU and SiLU written out need no rule: they are
elementwise chains, and fusion puts them into the producing matmul's store.)
"""

from __future__ import annotations

import numpy as np

from .rewriter import Any, Const, Match, Op, RewritePass, Rule


def _suffix_axes(axes, rank) -> bool:
    """The normalized axes are the trailing ones [k, rank)."""
    if axes is None:
        return False
    axes = sorted(a % rank for a in axes)
    return axes == list(range(rank - len(axes), rank)) and len(axes) > 0


def _is_layer_norm(m: Match):
    x = m["x"]
    rank = x.type.rank
    mean, var = m.attrs("mean"), m.attrs("var")
    for which, attrs in (("mean", mean), ("variance", var)):
        if not _suffix_axes(attrs["axes"], rank) or not attrs["keepdims"]:
            return f"the {which} is not taken over trailing axes with keepdims"
    if sorted(a % rank for a in mean["axes"]) != sorted(a % rank for a in var["axes"]):
        return "mean and variance are over different axes"
    if m.data("two").size != 1 or float(m.data("two").reshape(())) != 2.0:
        return "the power is not 2"
    if m.data("eps").size != 1:
        return "epsilon is not a scalar"
    d = m["d"]
    inside = {id(m.node("pow")), id(m.root)}
    if any(id(u) not in inside for u, _ in d.uses) or d in m.graph.outputs:
        return "the centred value is used outside the normalization"
    return True


def _layer_norm(m: Match, b):
    x = m["x"]
    rank = x.type.rank
    axis = min(a % rank for a in m.attrs("mean")["axes"])
    norm_shape = x.type.shape[axis:]
    ones = b.const(np.ones(norm_shape, x.type.dtype.numpy))
    eps = m.data("eps").reshape(())
    # the shortest spelling of the float32 value (1e-05, not 9.999999747378752e-06)
    eps = float(str(eps)) if eps.dtype == np.float32 else float(eps)
    return b.op("layer_norm", [x, ones], axis=axis, epsilon=eps)


_CENTRED = Op("sub", Any("x"), Op("reduce_mean", Any("x"), name="mean"), name="d", one_use=False)
_LAYER_NORM = Op("div", _CENTRED,
                 Op("sqrt", Op("add", Op("reduce_mean", Op("pow", _CENTRED, Const("two"), name="pow"),
                                         name="var"),
                               Const("eps"), commutative=True)))


def _fits(data_name: str):
    """Condition: constant `data_name` broadcasts exactly over the normalized dims."""

    def where(m: Match):
        ln = m.node("ln")
        x = ln.inputs[0]
        axis = m.attrs("ln")["axis"] % x.type.rank
        shape = x.type.shape[axis:]
        data = m.data(data_name)
        if data.ndim > len(shape) or data.shape != shape[len(shape) - data.ndim:]:
            return f"%{m[data_name].name} {m[data_name].type} does not match the normalized dims"
        if ln.inputs[1].data is None or (len(ln.inputs) > 2 and data_name == "gamma"):
            return "the layer norm already has a bias"
        return True

    return where


def _with_scale(m: Match, b):
    ln = m.node("ln")
    x = ln.inputs[0]
    axis = m.attrs("ln")["axis"] % x.type.rank
    scale = np.broadcast_to(m.data("gamma"), x.type.shape[axis:]) * ln.inputs[1].data
    return b.op("layer_norm", [x, b.const(scale.astype(x.type.dtype.numpy))], **ln.attrs)


def _with_bias(m: Match, b):
    ln = m.node("ln")
    x = ln.inputs[0]
    axis = m.attrs("ln")["axis"] % x.type.rank
    old = ln.inputs[2].data if len(ln.inputs) > 2 else 0
    bias = np.broadcast_to(m.data("beta"), x.type.shape[axis:]) + old
    return b.op("layer_norm", [x, ln.inputs[1], b.const(bias.astype(x.type.dtype.numpy))], **ln.attrs)


RULES = [
    Rule("layer_norm_from_parts", _LAYER_NORM, _layer_norm, where=_is_layer_norm),
    Rule("layer_norm_scale", Op("mul", Op("layer_norm", Any(), Const(), name="ln"), Const("gamma"),
                                commutative=True), _with_scale, where=_fits("gamma")),
    Rule("layer_norm_bias", Op("add", Op("layer_norm", Any(), Const(), name="ln"), Const("beta"),
                               commutative=True), _with_bias, where=_fits("beta")),
    Rule("layer_norm_bias", Op("add", Op("layer_norm", Any(), Const(), Const(), name="ln"),
                               Const("beta"), commutative=True), _with_bias, where=_fits("beta")),
]


class Recognize(RewritePass):
    def __init__(self):
        super().__init__("recognize", RULES)
