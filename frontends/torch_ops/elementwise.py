"""Elementwise ATen ops: unary math, binary arithmetic and comparisons, activations, casts.

PyTorch promotes types inside an op (``int_tensor * 0.5`` is float, ``x > 1`` compares in
x's type); slimc's ops take one dtype, so each converter casts its operands to the type PyTorch
computes in (the recorded result type, or for comparisons the promoted operand type) and
Python numbers become constants of that type.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from slimc.ir import dtypes

from . import aten, converter, slimc_dtype

# ATen op -> slimc op, for unary ops that compute in the result's type.
UNARY = {
    aten.abs.default: "abs", aten.neg.default: "neg", aten.ceil.default: "ceil",
    aten.floor.default: "floor", aten.round.default: "round", aten.sign.default: "sign",
    aten.exp.default: "exp", aten.log.default: "log", aten.sqrt.default: "sqrt",
    aten.reciprocal.default: "reciprocal", aten.sin.default: "sin", aten.cos.default: "cos",
    aten.tan.default: "tan", aten.asin.default: "asin", aten.acos.default: "acos",
    aten.atan.default: "atan", aten.sinh.default: "sinh", aten.cosh.default: "cosh",
    aten.tanh.default: "tanh", aten.asinh.default: "asinh", aten.acosh.default: "acosh",
    aten.atanh.default: "atanh", aten.erf.default: "erf", aten.sigmoid.default: "sigmoid",
    aten.relu.default: "relu", aten.hardswish.default: "hard_swish", aten.mish.default: "mish",
    aten.selu.default: "selu",
}

# ATen op -> slimc op, for binary ops that compute in the result's type (broadcasting).
BINARY = {
    aten.mul.Tensor: "mul", aten.mul.Scalar: "mul", aten.maximum.default: "max",
    aten.minimum.default: "min", aten.remainder.Tensor: "mod", aten.remainder.Scalar: "mod",
    aten.pow.Tensor_Tensor: "pow", aten.pow.Tensor_Scalar: "pow", aten.pow.Scalar: "pow",
}

# ATen comparison -> (slimc op, negate): operands compare in their promoted type.
COMPARE = {
    aten.eq.Tensor: ("equal", False), aten.eq.Scalar: ("equal", False),
    aten.ne.Tensor: ("equal", True), aten.ne.Scalar: ("equal", True),
    aten.lt.Tensor: ("less", False), aten.lt.Scalar: ("less", False),
    aten.le.Tensor: ("less_equal", False), aten.le.Scalar: ("less_equal", False),
    aten.gt.Tensor: ("greater", False), aten.gt.Scalar: ("greater", False),
    aten.ge.Tensor: ("greater_equal", False), aten.ge.Scalar: ("greater_equal", False),
}

# ATen logical / bitwise op -> (slimc op on bools, slimc op on integers).
LOGICAL = {
    aten.logical_and.default: ("and", None), aten.logical_or.default: ("or", None),
    aten.logical_xor.default: ("xor", None),
    aten.bitwise_and.Tensor: ("and", "bitwise_and"),
    aten.bitwise_and.Scalar: ("and", "bitwise_and"),
    aten.bitwise_or.Tensor: ("or", "bitwise_or"), aten.bitwise_or.Scalar: ("or", "bitwise_or"),
    aten.bitwise_xor.Tensor: ("xor", "bitwise_xor"),
    aten.bitwise_xor.Scalar: ("xor", "bitwise_xor"),
}

# Ops that only pass their input on (in inference, after functionalization).
IDENTITY = (aten.clone.default, aten.alias.default, aten.lift_fresh_copy.default,
            aten.detach.default)


def _arg_names(ctx) -> list:
    return [k for k in ctx.raw if k in ("self", "other", "exponent")]


@converter(*UNARY)
def unary(ctx):
    return ctx.emit(UNARY[ctx.node.target], [ctx.tensor("self", ctx.out_dtype)])


@converter(*BINARY)
def binary(ctx):
    a, b = _arg_names(ctx)
    return ctx.emit(BINARY[ctx.node.target], [ctx.tensor(a, ctx.out_dtype),
                                             ctx.tensor(b, ctx.out_dtype)])


def _scaled(ctx, name: str):
    """`other * alpha` of add/sub."""
    y = ctx.tensor(name, ctx.out_dtype)
    alpha = ctx["alpha"]
    return y if alpha == 1 else ctx.emit("mul", [y, ctx.const(alpha, ctx.out_dtype)])


@converter(aten.add.Tensor, aten.add.Scalar)
def add(ctx):
    return ctx.emit("add", [ctx.tensor("self", ctx.out_dtype), _scaled(ctx, "other")])


@converter(aten.sub.Tensor, aten.sub.Scalar)
def sub(ctx):
    return ctx.emit("sub", [ctx.tensor("self", ctx.out_dtype), _scaled(ctx, "other")])


@converter(aten.rsub.Tensor, aten.rsub.Scalar)
def rsub(ctx):
    return ctx.emit("sub", [_scaled(ctx, "other"), ctx.tensor("self", ctx.out_dtype)])


def trunc_of(ctx, x):
    """Round toward zero: slimc has floor and ceil but no trunc."""
    return ctx.emit("where", [ctx.emit("less", [x, ctx.const(0, x.type.dtype)]),
                              ctx.emit("ceil", [x]), ctx.emit("floor", [x])])


@converter(aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode, aten.div.Scalar_mode)
def div(ctx):
    dt = ctx.out_dtype
    a, b = ctx.tensor("self", dt), ctx.tensor("other", dt)
    q = ctx.emit("div", [a, b])  # integers: truncated, as slimc's div does
    mode = ctx.raw.get("rounding_mode")
    if mode is None or (mode == "trunc" and not dt.is_float):
        return q
    if mode == "trunc":
        return trunc_of(ctx, q)
    if dt.is_float:
        return ctx.emit("floor", [q])
    # integer floor division: one less where the remainder is non-zero and signs differ
    r = ctx.emit("sub", [a, ctx.emit("mul", [q, b])])
    zero = ctx.const(0, dt)
    off = ctx.emit("and", [ctx.emit("not", [ctx.emit("equal", [r, zero])]),
                           ctx.emit("xor", [ctx.emit("less", [r, zero]),
                                            ctx.emit("less", [b, zero])])])
    return ctx.emit("sub", [q, ctx.cast(off, dt)])


@converter(aten.fmod.Tensor, aten.fmod.Scalar)
def fmod(ctx):
    dt = ctx.out_dtype
    return ctx.emit("mod", [ctx.tensor("self", dt), ctx.tensor("other", dt)], fmod=1)


@converter(aten.trunc.default)
def trunc(ctx):
    x = ctx.tensor("self", ctx.out_dtype)
    return trunc_of(ctx, x) if x.type.dtype.is_float else x


@converter(aten.atan2.default)
def atan2(ctx):
    dt = ctx.out_dtype
    y, x = ctx.tensor("self", dt), ctx.tensor("other", dt)
    zero, pi = ctx.const(0, dt), ctx.const(math.pi, dt)
    base = ctx.emit("atan", [ctx.emit("div", [y, x])])
    y_neg = ctx.emit("less", [y, zero])
    turn = ctx.emit("where", [y_neg, ctx.emit("neg", [pi]), pi])  # x < 0: add +-pi
    left = ctx.emit("add", [base, turn])
    half = ctx.emit("where", [y_neg, ctx.const(-math.pi / 2, dt),
                              ctx.emit("where", [ctx.emit("greater", [y, zero]),
                                                 ctx.const(math.pi / 2, dt), zero])])
    on_axis = ctx.emit("where", [ctx.emit("less", [x, zero]), left, half])
    return ctx.emit("where", [ctx.emit("greater", [x, zero]), base, on_axis])


def _composite(build):
    """A unary converter from `build(ctx, x)` with x in the result type."""
    return lambda ctx: build(ctx, ctx.tensor("self", ctx.out_dtype))


def _k(ctx, x, value):
    return ctx.const(value, x.type.dtype)


_COMPOSITE_UNARY = {
    aten.expm1.default: lambda c, x: c.emit("sub", [c.emit("exp", [x]), _k(c, x, 1)]),
    aten.log1p.default: lambda c, x: c.emit("log", [c.emit("add", [x, _k(c, x, 1)])]),
    aten.log2.default: lambda c, x: c.emit("div", [c.emit("log", [x]), _k(c, x, math.log(2))]),
    aten.log10.default: lambda c, x: c.emit("div", [c.emit("log", [x]),
                                                     _k(c, x, math.log(10))]),
    aten.rsqrt.default: lambda c, x: c.emit("reciprocal", [c.emit("sqrt", [x])]),
    aten.silu.default: lambda c, x: c.emit("mul", [x, c.emit("sigmoid", [x])]),
    aten.hardsigmoid.default: lambda c, x: c.emit("hard_sigmoid", [x], alpha=1 / 6, beta=0.5),
    aten.relu6.default: lambda c, x: c.emit("clip", [x, _k(c, x, 0), _k(c, x, 6)]),
    aten.square.default: lambda c, x: c.emit("mul", [x, x]),
    aten.exp2.default: lambda c, x: c.emit("pow", [_k(c, x, 2), x]),
    aten.erfc.default: lambda c, x: c.emit("sub", [_k(c, x, 1), c.emit("erf", [x])]),
}
for _op, _build in _COMPOSITE_UNARY.items():
    converter(_op)(_composite(_build))


@converter(aten.gelu.default)
def gelu(ctx):
    return ctx.emit("gelu", [ctx.tensor("self")], approximate=ctx["approximate"])


@converter(aten.leaky_relu.default)
def leaky_relu(ctx):
    return ctx.emit("leaky_relu", [ctx.tensor("self")], alpha=float(ctx["negative_slope"]))


@converter(aten.celu.default)
def celu(ctx):
    return ctx.emit("celu", [ctx.tensor("self")], alpha=float(ctx["alpha"]))


@converter(aten.elu.default)
def elu(ctx):
    x = ctx.tensor("self")
    alpha, scale, in_scale = (float(ctx[k]) for k in ("alpha", "scale", "input_scale"))
    if scale == 1 and in_scale == 1:
        return ctx.emit("elu", [x], alpha=alpha)
    # scale * (x if x > 0 else alpha * (exp(x * input_scale) - 1))
    neg = ctx.emit("mul", [_k(ctx, x, alpha), ctx.emit("sub", [
        ctx.emit("exp", [ctx.emit("mul", [x, _k(ctx, x, in_scale)])]), _k(ctx, x, 1)])])
    y = ctx.emit("where", [ctx.emit("greater", [x, _k(ctx, x, 0)]), x, neg])
    return y if scale == 1 else ctx.emit("mul", [y, _k(ctx, x, scale)])


@converter(aten.softplus.default)
def softplus(ctx):
    # slimc's softplus is log(1 + e^x) computed stably; PyTorch returns x where beta * x is
    # above the threshold, the same to float precision unless the threshold is small.
    x = ctx.tensor("self")
    beta, threshold = float(ctx["beta"]), float(ctx["threshold"])
    bx = x if beta == 1 else ctx.emit("mul", [x, _k(ctx, x, beta)])
    y = ctx.emit("softplus", [bx])
    y = y if beta == 1 else ctx.emit("div", [y, _k(ctx, x, beta)])
    if threshold >= 20:  # log1p(exp(-20)) is below float32's resolution of 20
        return y
    return ctx.emit("where", [ctx.emit("greater", [bx, _k(ctx, x, threshold)]), x, y])


@converter(aten.hardtanh.default)
def hardtanh(ctx):
    x = ctx.tensor("self")
    return ctx.emit("clip", [x, _k(ctx, x, ctx["min_val"]), _k(ctx, x, ctx["max_val"])])


@converter(aten.clamp.default)
def clamp(ctx):
    x = ctx.tensor("self", ctx.out_dtype)
    lo, hi = ctx["min"], ctx["max"]
    return ctx.emit("clip", [x, None if lo is None else _k(ctx, x, lo),
                             None if hi is None else _k(ctx, x, hi)])


@converter(aten.clamp.Tensor, aten.clamp_min.default, aten.clamp_max.default,
           aten.clamp_min.Tensor, aten.clamp_max.Tensor)
def clamp_tensor(ctx):
    y = ctx.tensor("self", ctx.out_dtype)
    name = str(ctx.node.target)
    bounds = [("max", "min")] if "clamp_max" in name else \
        [("min", "max")] if "clamp_min" in name else [("min", "max"), ("max", "min")]
    for arg, op in bounds:
        if ctx.raw.get(arg) is not None:
            y = ctx.emit(op, [y, ctx.tensor(arg, ctx.out_dtype)])
    return y


@converter(*COMPARE)
def compare(ctx):
    op, negate = COMPARE[ctx.node.target]
    dt = promoted(ctx, "self", "other")
    y = ctx.emit(op, [ctx.tensor("self", dt), ctx.tensor("other", dt)])
    return ctx.emit("not", [y]) if negate else y


def promoted(ctx, *names):
    """The dtype PyTorch computes `names` in (tensors outrank 0-d tensors outrank numbers)."""
    probes = []
    for n in names:
        m = ctx.meta(n)
        if isinstance(m, torch.Tensor):
            probes.append(torch.empty([0] * m.dim(), dtype=m.dtype))
        else:
            probes.append(m if isinstance(m, (bool, float)) else 1)
    return slimc_dtype(torch.result_type(*probes))


@converter(*LOGICAL)
def logical(ctx):
    on_bool, on_int = LOGICAL[ctx.node.target]
    dt = ctx.out_dtype
    if dt == dtypes.bool or on_int is None:
        return ctx.emit(on_bool, [ctx.tensor("self", dtypes.bool),
                                  ctx.tensor("other", dtypes.bool)])
    return ctx.emit(on_int, [ctx.tensor("self", dt), ctx.tensor("other", dt)])


@converter(aten.logical_not.default)
def logical_not(ctx):
    return ctx.emit("not", [ctx.tensor("self", dtypes.bool)])


@converter(aten.bitwise_not.default)
def bitwise_not(ctx):
    x = ctx.tensor("self")
    return ctx.emit("not" if x.type.dtype == dtypes.bool else "bitwise_not", [x])


@converter(aten.isnan.default)
def isnan(ctx):
    return ctx.emit("isnan", [ctx.tensor("self")])


@converter(aten.isinf.default)
def isinf(ctx):
    return ctx.emit("isinf", [ctx.tensor("self")])


@converter(aten.where.self)
def where(ctx):
    dt = ctx.out_dtype
    return ctx.emit("where", [ctx.tensor("condition", dtypes.bool), ctx.tensor("self", dt),
                              ctx.tensor("other", dt)])


@converter(aten._to_copy.default)
def to_copy(ctx):
    x = ctx.tensor("self")
    return ctx.cast(x, ctx.out_dtype)


@converter(*IDENTITY)
def identity(ctx):
    return ctx.tensor("self")


@converter(aten.copy.default)
def copy(ctx):
    """copy(dst, src): src in dst's dtype, broadcast to dst's shape."""
    dst, src = ctx.tensor("self"), ctx.tensor("src", ctx.out_dtype)
    if src.type.shape == dst.type.shape:
        return src
    return ctx.emit("expand", [src, ctx.shape_of(dst)])


@converter(aten.scalar_tensor.default)
def scalar_tensor(ctx):
    return ctx.const(np.asarray(ctx["s"]), ctx.out_dtype)


@converter(aten.fmax.default, aten.fmin.default)
def fmax(ctx):
    """max / min where a NaN loses to a number (NaN only where both are NaN)."""
    dt = ctx.out_dtype
    a, b = ctx.tensor("self", dt), ctx.tensor("other", dt)
    m = ctx.emit("max" if ctx.node.target == aten.fmax.default else "min", [a, b])
    if not dt.is_float:
        return m
    m = ctx.emit("where", [ctx.emit("isnan", [a]), b, m])
    return ctx.emit("where", [ctx.emit("isnan", [b]), a, m])


@converter(aten.hypot.default)
def hypot(ctx):
    dt = ctx.out_dtype
    a, b = ctx.tensor("self", dt), ctx.tensor("other", dt)
    return ctx.emit("sqrt", [ctx.emit("add", [ctx.emit("mul", [a, a]),
                                               ctx.emit("mul", [b, b])])])


@converter(aten.round.decimals)
def round_decimals(ctx):
    """PyTorch's own formula: round(x * 10^d) / 10^d, or round(x / 10^-d) * 10^-d."""
    x, d = ctx.tensor("self"), int(ctx["decimals"])
    if not x.type.dtype.is_float:
        return x
    scale = _k(ctx, x, 10.0 ** abs(d))
    inward, outward = ("mul", "div") if d > 0 else ("div", "mul")
    return ctx.emit(outward, [ctx.emit("round", [ctx.emit(inward, [x, scale])]), scale])


@converter(aten.ldexp.Tensor)
def ldexp(ctx):
    dt = ctx.out_dtype
    x, e = ctx.tensor("self", dt), ctx.tensor("other", dt)
    return ctx.emit("mul", [x, ctx.emit("pow", [ctx.const(2.0, dt), e])])
