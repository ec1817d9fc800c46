"""Reduction ATen ops: sum, mean, prod, amax/amin, max/min with indices, argmax/argmin,
any/all, var/std, cumsum, logsumexp, topk and sort.

PyTorch reduces over every dim when ``dim`` is None or empty, sums integers and bools as
int64, and counts a reduction over a 0-d tensor as the tensor itself; the converters spell
these out in slimc's ops.
"""

from __future__ import annotations

import numpy as np

from slimc.ir import dtypes

from . import aten, converter


def _axes(ctx, x=None, name: str = "dim"):
    """The reduced axes as a sorted list, None for all."""
    dim = ctx.raw.get(name)
    if dim is None or dim == []:
        return None
    dims = dim if isinstance(dim, (list, tuple)) else [dim]
    rank = max(ctx.meta("self").dim(), 1)
    return sorted({int(d) % rank for d in dims})


def _reduce(op: str):
    def convert(ctx):
        dt = ctx.out_dtype
        x = ctx.tensor("self", dt)  # sums of ints and bools are int64 in PyTorch
        if x.type.rank == 0:
            return x
        keep = int(bool(ctx.raw.get("keepdim", False)))
        return ctx.emit(op, [x], axes=_axes(ctx, x), keepdims=keep)

    convert.__name__ = op
    return convert


REDUCTIONS = {
    aten.sum.dim_IntList: "reduce_sum", aten.sum.default: "reduce_sum",
    aten.mean.dim: "reduce_mean", aten.mean.default: "reduce_mean",
    aten.prod.default: "reduce_prod", aten.prod.dim_int: "reduce_prod",
    aten.amax.default: "reduce_max", aten.amin.default: "reduce_min",
    aten.max.default: "reduce_max", aten.min.default: "reduce_min",
    aten.logsumexp.default: "reduce_log_sum_exp",
}
for _op, _name in REDUCTIONS.items():
    converter(_op)(_reduce(_name))


def _boolean(op: str):
    """any / all: max / min of the values as 0/1 floats (exact), compared with 0."""

    def convert(ctx):
        x = ctx.tensor("self", dtypes.bool)
        if x.type.rank == 0:
            return x
        keep = int(bool(ctx.raw.get("keepdim", False)))
        y = ctx.emit(op, [ctx.cast(x, dtypes.f32)], axes=_axes(ctx, x), keepdims=keep)
        return ctx.emit("greater", [y, ctx.const(0.0, np.float32)])

    return convert


converter(aten.any.default, aten.any.dim, aten.any.dims)(_boolean("reduce_max"))
converter(aten.all.default, aten.all.dim, aten.all.dims)(_boolean("reduce_min"))


@converter(aten.max.dim, aten.min.dim)
def max_with_indices(ctx):
    x = ctx.tensor("self")
    kind = "max" if ctx.node.target == aten.max.dim else "min"
    if x.type.rank == 0:
        return [x, ctx.const(0, np.int64)]
    axis = int(ctx["dim"]) % x.type.rank
    keep = int(bool(ctx["keepdim"]))
    values = ctx.emit(f"reduce_{kind}", [x], axes=[axis], keepdims=keep)
    return [values, ctx.emit(f"arg_{kind}", [x], axis=axis, keepdims=keep)]


@converter(aten.argmax.default, aten.argmin.default)
def arg(ctx):
    x = ctx.tensor("self")
    op = "arg_max" if ctx.node.target == aten.argmax.default else "arg_min"
    keep = int(bool(ctx["keepdim"]))
    if x.type.rank == 0:
        return ctx.const(0, np.int64)
    if ctx["dim"] is None:  # over the flattened tensor
        flat = ctx.emit("reshape", [x, ctx.const([-1], np.int64)])
        y = ctx.emit(op, [flat], axis=0, keepdims=keep)
        if keep:
            return ctx.emit("reshape", [y, ctx.const([1] * x.type.rank, np.int64)])
        return y
    return ctx.emit(op, [x], axis=int(ctx["dim"]) % x.type.rank, keepdims=keep)


def _refuse_symbolic_count(node):
    val = node.args[0].meta.get("val")
    if val is not None and not all(isinstance(d, int) for d in val.shape):
        return "variance over symbolic dimensions"
    return None


@converter(aten.var.correction, aten.var.dim, aten.std.correction, aten.std.dim,
           aten.var_mean.correction, refuse=_refuse_symbolic_count)
def var(ctx):
    """sum((x - mean)^2) / (N - correction), and its square root for std; var_mean gives
    the mean too."""
    x = ctx.tensor("self", ctx.out_dtype)
    axes = _axes(ctx, x)
    reduced = range(x.type.rank) if axes is None else axes
    n = int(np.prod([x.type.shape[a] for a in reduced]))
    if "correction" in ctx.raw:
        c = ctx["correction"]
        correction = 1.0 if c is None else float(c)
    else:
        correction = 1.0 if ctx["unbiased"] else 0.0
    keep = int(bool(ctx["keepdim"]))
    mean = ctx.emit("reduce_mean", [x], axes=axes, keepdims=1)
    centered = ctx.emit("sub", [x, mean])
    total = ctx.emit("reduce_sum_square", [centered], axes=axes, keepdims=keep)
    dt = x.type.dtype
    y = ctx.emit("div", [total, ctx.const(max(n - correction, 0.0), dt)])
    if ctx.node.target == aten.var_mean.correction:
        return [y, mean if keep else ctx.emit("reduce_mean", [x], axes=axes, keepdims=0)]
    return ctx.emit("sqrt", [y]) if "std" in str(ctx.node.target) else y


@converter(aten.cumsum.default)
def cumsum(ctx):
    x = ctx.tensor("self", ctx.out_dtype)
    if x.type.rank == 0:
        return x
    axis = int(ctx["dim"]) % x.type.rank
    return ctx.emit("cumsum", [x, ctx.const(axis, np.int64)])


@converter(aten.topk.default)
def topk(ctx):
    x = ctx.tensor("self")
    k = ctx.ints("k")[0]
    if x.type.rank == 0 and k == 1:
        return [x, ctx.const(0, np.int64)]
    # sorted=False leaves the order to the implementation: slimc's sorted order is one
    return ctx.emit("top_k", [x, ctx.const([k], np.int64)], 2,
                    axis=int(ctx["dim"]) % max(x.type.rank, 1),
                    largest=int(bool(ctx["largest"])), sorted=1)


@converter(aten.sort.default, aten.sort.stable)
def sort(ctx):
    """A top_k of the whole axis: ties keep their order, as a stable sort does."""
    x = ctx.tensor("self")
    if x.type.rank == 0:
        return [x, ctx.const(0, np.int64)]
    axis = int(ctx["dim"]) % x.type.rank
    k = ctx.dim_size(x, axis)
    return ctx.emit("top_k", [x, ctx.int_value(k)], 2, axis=axis,
                    largest=int(bool(ctx["descending"])), sorted=1)


@converter(aten.linalg_vector_norm.default)
def vector_norm(ctx):
    x = ctx.tensor("self", ctx.out_dtype)
    return norm(ctx, x, float(ctx["ord"]), _axes(ctx), int(bool(ctx["keepdim"])))


def norm(ctx, x, p: float, axes, keep: int = 0):
    """The p-norm of x over `axes` (None: all), PyTorch's for every p: 0 counts x != 0 (NaN
    included), +-inf is the max / min of |x|. A 0-d x is one element."""
    if x.type.rank == 0:
        x, axes, keep = ctx.emit("reshape", [x, ctx.const([1], np.int64)]), [0], 0
    if p == 2:
        return ctx.emit("reduce_l2", [x], axes=axes, keepdims=keep)
    if p == 1:
        return ctx.emit("reduce_l1", [x], axes=axes, keepdims=keep)
    a = ctx.emit("abs", [x])
    if p in (np.inf, -np.inf):
        return ctx.emit("reduce_max" if p > 0 else "reduce_min", [a], axes=axes, keepdims=keep)
    if p == 0:
        zero = ctx.emit("equal", [x, ctx.const(0, x.type.dtype)])
        nonzero = ctx.cast(ctx.emit("not", [zero]), x.type.dtype)
        return ctx.emit("reduce_sum", [nonzero], axes=axes, keepdims=keep)
    powered = ctx.emit("pow", [a, ctx.const(p, x.type.dtype)])
    total = ctx.emit("reduce_sum", [powered], axes=axes, keepdims=keep)
    return ctx.emit("pow", [total, ctx.const(1 / p, x.type.dtype)])


@converter(aten.dist.default)
def dist(ctx):
    dt = ctx.out_dtype
    diff = ctx.emit("sub", [ctx.tensor("self", dt), ctx.tensor("other", dt)])
    return norm(ctx, diff, float(ctx["p"]), None)


@converter(aten._cdist_forward.default)
def cdist(ctx):
    """[..., P, M] and [..., R, M] -> [..., P, R]: the norm of every row difference (PyTorch
    may use a matmul for p=2 on large inputs: the same values to rounding)."""
    x1, x2 = ctx.tensor("x1"), ctx.tensor("x2")
    diff = ctx.emit("sub", [ctx.emit("unsqueeze", [x1, ctx.axes_const([-2])]),
                            ctx.emit("unsqueeze", [x2, ctx.axes_const([-3])])])
    return norm(ctx, diff, float(ctx["p"]), [diff.type.rank - 1])


def _refuse_pdist(node):
    n = node.args[0].meta["val"].shape[0]
    return None if isinstance(n, int) else "pdist of a symbolic number of rows"


@converter(aten._pdist_forward.default, refuse=_refuse_pdist)
def pdist(ctx):
    """The norms of row i - row j for every pair i < j, in row-major order."""
    x = ctx.tensor("self")
    i, j = np.triu_indices(x.type.shape[0], 1)
    diff = ctx.emit("sub", [ctx.emit("gather", [x, ctx.const(i, np.int64)], axis=0),
                            ctx.emit("gather", [x, ctx.const(j, np.int64)], axis=0)])
    return norm(ctx, diff, float(ctx["p"]), [1])


def _refuse_symbolic_dim(node):
    val = node.args[0].meta["val"]
    dim = node.args[1] if node.target != aten.kthvalue.default else \
        (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", -1))
    if val.dim() and not isinstance(val.shape[dim], int):
        return "a median over a symbolic dimension"
    return None


@converter(aten.kthvalue.default, aten.median.dim, refuse=_refuse_symbolic_dim)
def kthvalue(ctx):
    """The k-th smallest along a dim, with its index: the last of a sorted top_k of the k
    smallest. median is the lower middle one, k = (n - 1) // 2 + 1."""
    x = ctx.tensor("self")
    if x.type.rank == 0:
        return [x, ctx.const(0, np.int64)]
    axis = int(ctx["dim"]) % x.type.rank
    n = x.type.shape[axis]
    k = int(ctx["k"]) if ctx.node.target == aten.kthvalue.default else (n - 1) // 2 + 1
    values, indices = ctx.emit("top_k", [x, ctx.const([k], np.int64)], 2, axis=axis,
                               largest=0, sorted=1)
    last = [ctx.const([k - 1], np.int64), ctx.const([k], np.int64), ctx.axes_const([axis])]
    out = [ctx.emit("slice", [v] + last) for v in (values, indices)]
    if ctx.node.target == aten.median.dim and x.type.dtype.is_float:
        # a NaN sorts last, but the median of a row holding one is NaN, at its first place
        nan = ctx.cast(ctx.emit("isnan", [x]), dtypes.f32)
        has = ctx.emit("greater", [ctx.emit("reduce_max", [nan], axes=[axis], keepdims=1),
                                   ctx.const(0.0, np.float32)])
        out = [ctx.emit("where", [has, ctx.const(np.nan, x.type.dtype), out[0]]),
               ctx.emit("where", [has, ctx.emit("arg_max", [nan], axis=axis, keepdims=1),
                                  out[1]])]
    if ctx["keepdim"]:
        return out
    return [ctx.emit("squeeze", [v, ctx.axes_const([axis])]) for v in out]
