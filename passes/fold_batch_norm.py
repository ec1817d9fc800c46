"""Algebra on convolutions: batch norm, bias adds and per-channel scales folded into weights.

At inference a batch norm is an affine map per channel, y = x * s + t with
s = scale / sqrt(var + eps) and t = bias - mean * s. After a convolution with constant
weights it folds into them (w' = w * s per output channel, b' = b * s + t) and costs nothing.
A constant per-channel add after a convolution becomes its bias, and a constant per-channel
multiply scales its weights. A batch norm that follows something else becomes ``mul`` + ``add``
with constants, which fusion then puts into its neighbours' kernels.
"""

from __future__ import annotations

import numpy as np

from slimc.ir import Value

from .rewriter import Any, Builder, Const, Match, Op, Opt, RewritePass, Rule


def _affine(m: Match):
    """(s, t) of the matched batch norm, in the dtype of its input."""
    eps = m.attrs("bn")["epsilon"]
    var = m.data("var").astype(np.float64)
    s = m.data("scale").astype(np.float64) / np.sqrt(var + eps)
    t = m.data("bias").astype(np.float64) - m.data("mean").astype(np.float64) * s
    return s, t


def _per_channel(data: np.ndarray, channels: int, rank: int):
    """`data` as a vector over the channel axis (1) of a rank-`rank` tensor, or None if it is
    not constant along every other axis."""
    if data.ndim > rank:
        return None
    shape = (1,) * (rank - data.ndim) + data.shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return None
    return np.broadcast_to(data.reshape(-1) if shape[1] == channels else data.reshape(()), (channels,))


def _conv_parts(m: Match):
    conv = m.node("conv")
    w = conv.inputs[1].data
    b = conv.inputs[2].data if len(conv.inputs) > 2 and conv.inputs[2] is not None else \
        np.zeros(w.shape[0], w.dtype)
    return conv, w, b


def _new_conv(b: Builder, m: Match, w: np.ndarray, bias: np.ndarray) -> Value:
    conv = m.node("conv")
    dt = conv.inputs[1].data.dtype
    return b.op("conv", [m["x"], b.const(w.astype(dt)), b.const(bias.astype(dt))], **conv.attrs)


def _fold_bn_into_conv(m: Match, b: Builder) -> Value:
    conv, w, bias = _conv_parts(m)
    s, t = _affine(m)
    scale = s.reshape((-1,) + (1,) * (w.ndim - 1))
    return _new_conv(b, m, w * scale, bias * s + t)


def _bn_to_mul_add(m: Match, b: Builder) -> Value:
    x = m["x"]
    s, t = _affine(m)
    shape = (-1,) + (1,) * (x.type.rank - 2)
    dt = x.type.dtype.numpy
    scaled = b.op("mul", [x, b.const(s.reshape(shape).astype(dt))])
    return b.op("add", [scaled, b.const(t.reshape(shape).astype(dt))])


def _channel_const(name: str):
    """Condition: constant `name` is per output channel of the matched conv."""

    def where(m: Match):
        out = m.node("conv").outputs[0]
        if _per_channel(m.data(name), out.type.shape[1], out.type.rank) is None:
            return f"%{m[name].name} {m[name].type} is not one value per output channel"
        return True

    return where


def _fold_add_into_bias(m: Match, b: Builder) -> Value:
    conv, w, bias = _conv_parts(m)
    out = conv.outputs[0]
    return _new_conv(b, m, w, bias + _per_channel(m.data("c"), out.type.shape[1], out.type.rank))


def _fold_mul_into_weights(m: Match, b: Builder) -> Value:
    conv, w, bias = _conv_parts(m)
    out = conv.outputs[0]
    s = _per_channel(m.data("c"), out.type.shape[1], out.type.rank).astype(np.float64)
    return _new_conv(b, m, w * s.reshape((-1,) + (1,) * (w.ndim - 1)), bias * s)


_CONV = Op("conv", Any("x"), Const("w"), Opt(Const("b")), name="conv")


def _bn(x):
    return Op("batch_norm", x, Const("scale"), Const("bias"), Const("mean"), Const("var"), name="bn")


RULES = [
    Rule("fold_batch_norm_into_conv", _bn(_CONV), _fold_bn_into_conv),
    Rule("fold_add_into_conv_bias", Op("add", _CONV, Const("c"), commutative=True),
         _fold_add_into_bias, where=_channel_const("c")),
    Rule("fold_mul_into_conv_weights", Op("mul", _CONV, Const("c"), commutative=True),
         _fold_mul_into_weights, where=_channel_const("c")),
    Rule("batch_norm_to_mul_add", _bn(Any("x")), _bn_to_mul_add,
         where=lambda m: True if m["x"].type.rank >= 2 else "the input has no channel axis"),
]


class FoldBatchNorm(RewritePass):
    def __init__(self):
        super().__init__("fold_batch_norm", RULES)
