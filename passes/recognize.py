"""Recognizing what exporters spelled out op by op, so it can run as one kernel.

Layer normalization written as ReduceMean/Sub/Pow/ReduceMean/Add/Sqrt/Div (older PyTorch
exporters, opset < 17) becomes one ``layer_norm``, and the Mul/Add by constant gamma and beta
after it become its scale and bias.

GELU written out (PyTorch before opset 20, Hugging Face's NewGELU/gelu_new) becomes one
``gelu``, erf or tanh form: the dump says what the model computes, and the kernel evaluates
one erf (or tanh) per element with the constants in one place. Products are matched as the
multiset of their factors, so every association and order an exporter writes (``x*0.5*(1+e)``,
``0.5*(x*(1+e))``, ``(1+e)*x/2``) is one rule. ``x*sigmoid(1.702x)`` ("quick GELU") is left
alone: it is an approximation with its own numbers (0.02 away from GELU), not a spelling of it,
and as an elementwise chain it already fuses into the producing matmul.

Attention as exporters write it (MatMul of q and k_t, an optional scalar Mul, an optional mask
Add, Softmax over the last axis, PyTorch's optional ``Where(IsNaN(P), 0, P)`` guard, MatMul by
v) becomes one ``attention`` op (ir/ops/attention.py): its kernel computes each block of scores,
their softmax and the product by v while the block is in cache, and splits the work by rows of
every head. Only float32 with static shapes, the case the kernel takes.

Softmax written as ``exp(x - max(x)) / sum(exp(x - max(x)))`` (TensorFlow exports, hand-built
attention) becomes one ``softmax``: one kernel that keeps the row in cache instead of a max, an
exp, a sum and a division each walking it. Without the max subtraction the written-out form
overflows for logits above 88; ``softmax`` subtracts the max, so it gives the same numbers
where the original is finite and the right ones where it is not.
"""

from __future__ import annotations

import numpy as np

from slimc.ir import dtypes, get_op
from slimc.ir.ops.attention import heads_split

from .rewriter import Any, Const, Either, Match, Op, Opt, Product, RewritePass, Rule, Scalar


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
    old = ln.inputs[2].data if len(ln.inputs) > 2 and ln.inputs[2] is not None else 0
    bias = np.broadcast_to(m.data("beta"), x.type.shape[axis:]) + old
    return b.op("layer_norm", [x, ln.inputs[1], b.const(bias.astype(x.type.dtype.numpy))], **ln.attrs)


# --- GELU ------------------------------------------------------------------------------------

_SQRT_HALF = 0.7071067811865476
_SQRT_2_OVER_PI = 0.7978845608028654


def _one_plus(fn: str, argument) -> Op:
    """1 + fn(argument), in either order."""
    return Op("add", Scalar(1.0), Op(fn, argument), commutative=True)


# 0.5 * x * (1 + erf(x / sqrt 2)), and 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3))),
# each product in any order and association (x * 0.5 * (1 + e), (1 + e) * x / 2, ...)
_GELU_ERF = Product(Any("x"), _one_plus("erf", Product(Any("x"), scale=_SQRT_HALF,
                                                         what="x / sqrt(2)")),
                    scale=0.5, name="erf_form", what="0.5 x (1 + erf(x / sqrt(2)))")
_GELU_TANH = Product(
    Any("x"),
    _one_plus("tanh", Product(Op("add", Any("x"), Product(Any("x"), Any("x"), Any("x"),
                                                          scale=0.044715, what="0.044715 x^3"),
                                 commutative=True),
                              scale=_SQRT_2_OVER_PI, what="sqrt(2/pi) (x + 0.044715 x^3)")),
    scale=0.5, name="tanh_form", what="0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))")


def _gelu_types(m: Match):
    x = m["x"]
    if x.type != m.root.outputs[0].type or x.type.dtype.numpy.kind != "f":
        return "x is not a floating-point tensor of the product's type"
    return True


def _gelu(m: Match, b):
    return b.op("gelu", [m["x"]], approximate="none" if "erf_form" in m.values else "tanh")


# --- softmax ---------------------------------------------------------------------------------

def _single_axis(attrs, rank: int):
    axes = attrs["axes"]
    if axes is None or len(axes) != 1 or not attrs["keepdims"]:
        return None
    return int(axes[0]) % rank


def _is_softmax(m: Match):
    x = m["z"]
    axis = _single_axis(m.attrs("sum"), x.type.rank) if x.type.rank else None
    if axis is None:
        return "the sum is not over one axis with keepdims"
    if x.type.dtype.numpy.kind != "f":
        return "not a floating-point softmax"
    others = [u for u, _ in m["e"].uses if u is not m.root and u is not m.node("sum")]
    if others or m["e"] in m.graph.outputs:
        return "exp(x) is used outside the softmax"
    return True


def _softmax(m: Match, b):
    z = m["z"]
    axis = _single_axis(m.attrs("sum"), z.type.rank)
    shift = z.producer
    # softmax(x - max(x)) is softmax(x), and softmax subtracts the max itself
    if shift is not None and shift.op == "sub":
        mx = shift.inputs[1].producer
        if mx is not None and mx.op == "reduce_max" and mx.inputs[0] is shift.inputs[0] and \
                _single_axis(get_op("reduce_max").resolve_attrs(mx.attrs, mx.label),
                             z.type.rank) == axis:
            z = shift.inputs[0]
    return b.op("softmax", [z], axis=axis)


# --- attention -------------------------------------------------------------------------------

# q @ k_t, optionally times a scalar, optionally plus a mask; its softmax; optionally PyTorch's
# Where(IsNaN(P), 0, P) guard; then the product by v. Each intermediate has one use, but the
# guarded probabilities, which the guard reads twice.
_QK = Op("matmul", Any("q"), Any("k"), name="qk")
_SCALED = Either(Op("mul", _QK, Const("scale", where=lambda d: d.size == 1,
                                      why="the scale is not a scalar"), commutative=True), _QK,
                 name="scaled")
_SCORES = Either(Op("add", _SCALED, Any("mask"), commutative=True), _SCALED, name="scores")
_PROBS = Op("softmax", _SCORES, name="softmax")
_SHARED_PROBS = Op("softmax", _SCORES, name="softmax", one_use=False)
_GUARDED = Op("where", Op("isnan", _SHARED_PROBS), Scalar(0.0), _SHARED_PROBS, name="guard")
_ATTENTION = Op("matmul", Either(_GUARDED, _PROBS), Any("v"))


def _is_attention(m: Match):
    """where-check: what the pattern cannot say -- the softmax is over the last axis, the
    guarded probabilities have no use outside the guard, a mask is added to the full scores,
    and the kernel's case: float32, static and non-empty shapes, shared batch dims."""
    softmax = m.node("softmax")
    scores, probs = m["scores"], softmax.outputs[0]
    rank = scores.type.rank
    if int(softmax.attrs.get("axis", -1)) % max(rank, 1) != rank - 1:
        return "the softmax is not over the last axis"
    if "guard" in m.nodes and (len(probs.uses) != 2 or probs in m.graph.outputs):
        return "the guarded probabilities are used outside the attention"
    mask = m.values.get("mask")
    if mask is not None and m["scaled"].type.shape != scores.type.shape:
        return "the mask is not added to the full scores"
    q, k, v = m["q"], m["k"], m["v"]
    values = [q, k, v] + ([mask] if mask is not None else [])
    if any(x.type.dtype != dtypes.f32 or not x.type.is_static for x in values):
        return "not float32 with static shapes (the attention kernel's case)"
    if any(0 in x.type.shape for x in values):
        return "a dimension is empty"
    if not (q.type.rank == k.type.rank == v.type.rank >= 2) or \
            not (q.type.shape[:-2] == k.type.shape[:-2] == v.type.shape[:-2]):
        return "q, k_t and v do not share their batch dims (a broadcast matmul)"
    if mask is not None and mask.type.rank > rank:
        return "the mask has more dims than the scores"
    return True


def _attention(m: Match, b):
    mask = m.values.get("mask")
    inputs = [m["q"], m["k"], m["v"]] + ([mask] if mask is not None else [])
    scale = float(m.data("scale").reshape(())) if "scale" in m.values else 1.0
    return b.op("attention", inputs, scale=scale, zero_nan=int("guard" in m.nodes))


def _heads_swapped(m: Match):
    """where-check: the transpose swaps the heads and rows of an attention's result (perm
    [.., r-2, r-3, r-1]) and is its only user."""
    attn = m.node("attn")
    rank = attn.outputs[0].type.rank
    want = list(range(rank - 3)) + [rank - 2, rank - 3, rank - 1]
    if rank < 3 or list(m.root.attrs["perm"]) != want:
        return "the transpose does not swap the heads and rows of the attention's result"
    if attn.attrs.get("heads_last", 0):
        return "the attention already stores heads last"
    return True


def _reads_heads_split(m: Match):
    """where-check: q, k_t and v are each the transpose that splits a projection's heads
    ([..., rows, H, dim] -> heads first), so the attention can read the projections as they
    are."""
    attn = m.root
    if attn.attrs.get("inputs_heads_last", 0):
        return "the attention already reads its inputs heads last"
    rank = attn.outputs[0].type.rank
    if rank < 3:
        return "no heads dim"
    for name, keys in (("tq", False), ("tk", True), ("tv", False)):
        perm = list(m.node(name).attrs["perm"])
        if perm != heads_split(rank, keys):
            what = "keys" if keys else name[1]
            return f"the transpose of {what} (perm {perm}) is not the heads split " \
                   f"{heads_split(rank, keys)}"
    return True


def _read_heads_last(m: Match, b):
    attn = m.root
    mask = m.values.get("mask")
    inputs = [m["q"], m["k"], m["v"]] + ([mask] if mask is not None else [])
    return b.op("attention", inputs, **{**attn.attrs, "inputs_heads_last": 1})


_SPLIT = {name: Op("transpose", Any(name[1]), name=name, one_use=False)
          for name in ("tq", "tk", "tv")}

RULES = [
    Rule("attention_reads_heads_last",
         Op("attention", _SPLIT["tq"], _SPLIT["tk"], _SPLIT["tv"], Opt(Any("mask"))),
         _read_heads_last, where=_reads_heads_split),
    Rule("attention_heads_last", Op("transpose", Op("attention", name="attn")),
         lambda m, b: b.op("attention", list(m.node("attn").inputs),
                           **{**m.node("attn").attrs, "heads_last": 1}),
         where=_heads_swapped),
    Rule("attention_from_parts", _ATTENTION, _attention, where=_is_attention),
    Rule("gelu_from_parts", Either(_GELU_ERF, _GELU_TANH), _gelu, where=_gelu_types),
    Rule("softmax_from_parts",
         Op("div", Op("exp", Any("z"), name="e", one_use=False),
            Op("reduce_sum", Op("exp", Any("z"), name="e", one_use=False), name="sum")),
         _softmax, where=_is_softmax),
    Rule("layer_norm_from_parts", _LAYER_NORM, _layer_norm, where=_is_layer_norm),
    Rule("layer_norm_scale", Op("mul", Op("layer_norm", Any(), Const(), name="ln"), Const("gamma"),
                                commutative=True), _with_scale, where=_fits("gamma")),
    Rule("layer_norm_bias", Op("add", Op("layer_norm", Any(), Const(), Opt(Const()), name="ln"),
                               Const("beta"), commutative=True), _with_bias, where=_fits("beta")),
]


class Recognize(RewritePass):
    def __init__(self):
        super().__init__("recognize", RULES)
