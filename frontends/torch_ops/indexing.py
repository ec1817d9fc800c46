"""Indexing ATen ops: slice, select, index_select, advanced indexing (``x[i, j]``), gather,
scatter and their ``*_scatter`` / ``index_put`` writes.

Advanced indexing with several index tensors becomes one ``gather_nd`` over the indexed dims
moved to the front, then the broadcast index dims put where PyTorch puts them (in place of
the indexed dims when those are adjacent, in front otherwise). Boolean masks as indices give
data-dependent shapes, which a compiled model cannot have: they are refused.
"""

from __future__ import annotations

import numpy as np
import torch

from slimc.ir import dtypes

from . import INT64_MAX, aten, converter


def _axis(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


@converter(aten.slice.Tensor)
def slice_(ctx):
    x = ctx.tensor("self")
    start, end, step = ctx["start"], ctx["end"], ctx["step"]
    start = 0 if start is None else start
    end = INT64_MAX if end is None else end
    if start == 0 and isinstance(end, int) and end >= INT64_MAX and step == 1:
        return x
    axis = _axis(ctx["dim"], x.type.rank)
    return ctx.emit("slice", [x, ctx.int_value(start), ctx.int_value(end),
                              ctx.axes_const([axis]), ctx.const([int(step)], np.int64)])


@converter(aten.select.int)
def select(ctx):
    x = ctx.tensor("self")
    index = ctx.tensor("index", dtypes.i64)  # a 0-d index drops the dim, as select does
    return ctx.emit("gather", [x, index], axis=_axis(ctx["dim"], x.type.rank))


@converter(aten.index_select.default)
def index_select(ctx):
    x = ctx.tensor("self")
    return ctx.emit("gather", [x, ctx.tensor("index", dtypes.i64)],
                    axis=_axis(ctx["dim"], x.type.rank))


def _refuse_masks(node):
    indices = node.args[1] if len(node.args) > 1 else node.kwargs.get("indices", [])
    for t in indices:
        val = t.meta.get("val") if hasattr(t, "meta") else None
        if isinstance(val, torch.Tensor) and val.dtype in (torch.bool, torch.uint8):
            return "indexing with a boolean mask (the result's shape depends on the data)"
    return None


def _stacked_indices(ctx, indices):
    """Index tensors broadcast against each other, stacked on a new last axis: [B..., k]."""
    indices = [ctx.cast(t, dtypes.i64) for t in indices]
    if len(indices) > 1:
        zero = None
        for t in indices:  # the broadcast shape, as a zero tensor of it
            z = ctx.emit("mul", [t, ctx.const(0, np.int64)])
            zero = z if zero is None else ctx.emit("add", [zero, z])
        indices = [ctx.emit("add", [t, zero]) for t in indices]
    last = ctx.axes_const([-1])
    return ctx.emit("concat", [ctx.emit("unsqueeze", [t, last]) for t in indices], axis=-1)


def _front(ctx, x, positions):
    """x with the indexed dims moved to the front, and the order of the others."""
    rest = [d for d in range(x.type.rank) if d not in positions]
    perm = positions + rest
    return (x if perm == sorted(perm) else ctx.emit("transpose", [x], perm=perm)), rest


@converter(aten.index.Tensor, refuse=_refuse_masks)
def index(ctx):
    x = ctx.tensor("self")
    indices = ctx["indices"]
    positions = [i for i, t in enumerate(indices) if t is not None]
    if len(positions) == 1:
        p = positions[0]
        return ctx.emit("gather", [x, ctx.cast(indices[p], dtypes.i64)], axis=p)
    xt, rest = _front(ctx, x, positions)
    idx = _stacked_indices(ctx, [indices[p] for p in positions])
    out = ctx.emit("gather_nd", [xt, idx])
    nb = out.type.rank - len(rest)
    adjacent = positions == list(range(positions[0], positions[-1] + 1))
    if not adjacent or positions[0] == 0:
        return out
    # adjacent indexed dims: the index dims take their place among the others
    p0 = positions[0]
    perm = [nb + j for j in range(p0)] + list(range(nb)) + \
        [nb + j for j in range(p0, len(rest))]
    return ctx.emit("transpose", [out], perm=perm)


@converter(aten.index_put.default, refuse=_refuse_masks)
def index_put(ctx):
    """x[indices] = values (or += with accumulate): one scatter_nd on the indexed dims moved
    to the front, values broadcast to the indexed block."""
    x = ctx.tensor("self")
    indices = ctx["indices"]
    positions = [i for i, t in enumerate(indices) if t is not None]
    xt, rest = _front(ctx, x, positions)
    idx = _stacked_indices(ctx, [indices[p] for p in positions])
    p0, nb = positions[0], idx.type.rank - 1
    if positions != list(range(p0, positions[-1] + 1)):
        p0 = 0  # indexed dims apart: x[indices] has the index dims first
    # values broadcast to x[indices]'s shape (index dims at p0), then laid out as xt
    shape = ctx.emit("concat", [ctx.shape_of(xt, len(positions), len(positions) + p0),
                                ctx.shape_of(idx, end=-1),
                                ctx.shape_of(xt, start=len(positions) + p0)], axis=0)
    values = ctx.emit("expand", [ctx.tensor("values", x.type.dtype), shape])
    if p0:
        perm = list(range(p0, p0 + nb)) + list(range(p0)) + \
            list(range(p0 + nb, values.type.rank))
        values = ctx.emit("transpose", [values], perm=perm)
    out = ctx.emit("scatter_nd", [xt, idx, values],
                   reduction="add" if ctx["accumulate"] else "none")
    if xt is x:
        return out
    back = np.argsort(positions + rest).tolist()
    return ctx.emit("transpose", [out], perm=back)


def _fit_to_index(ctx, src, index, axis=None):
    """PyTorch lets gather's index be smaller than the data outside `axis`, and scatter's
    smaller than the source anywhere: the operand cut to the index's shape."""
    if src.type.shape == index.type.shape:
        return src
    starts, ends, axes = [], [], []
    for a, (s, i) in enumerate(zip(src.type.shape, index.type.shape)):
        if a != axis and s != i:
            if not isinstance(i, int):
                ctx.unsupported("an index smaller than the data in a symbolic dimension")
            starts.append(0), ends.append(i), axes.append(a)
    if not axes:
        return src
    return ctx.emit("slice", [src, ctx.const(starts, np.int64), ctx.const(ends, np.int64),
                              ctx.axes_const(axes)])


@converter(aten.gather.default)
def gather(ctx):
    x, index = ctx.tensor("self"), ctx.tensor("index", dtypes.i64)
    axis = _axis(ctx["dim"], x.type.rank)
    return ctx.emit("gather_elements", [_fit_to_index(ctx, x, index, axis), index], axis=axis)


_REDUCTIONS = {"sum": "add", "add": "add", "prod": "mul", "multiply": "mul", "amax": "max",
               "amin": "min"}


def _refuse_scatter_reduce(node):
    kw = dict(zip(["self", "dim", "index", "src", "reduce", "include_self"], node.args))
    kw.update(node.kwargs)
    if kw.get("reduce") not in _REDUCTIONS and kw.get("reduce") != "mean":
        return f"scatter_reduce with reduce={kw.get('reduce')!r}"
    if kw.get("reduce") == "mean" and not node.meta["val"].dtype.is_floating_point:
        return "scatter_reduce mean of integers"
    return None


@converter(aten.scatter.src, aten.scatter.value, aten.scatter_add.default,
           aten.scatter.reduce, aten.scatter.value_reduce)
@converter(aten.scatter_reduce.two, refuse=_refuse_scatter_reduce)
def scatter(ctx):
    x, index = ctx.tensor("self"), ctx.tensor("index", dtypes.i64)
    scalar = x.type.rank == 0  # PyTorch scatters into a 0-d tensor as into one element
    if scalar:
        x, index = (ctx.emit("reshape", [v, ctx.const([1], np.int64)]) for v in (x, index))
    axis = _axis(ctx["dim"], x.type.rank)
    if "src" in ctx.raw:
        src = ctx.tensor("src", x.type.dtype)
        if src.type.rank == 0 and scalar:
            src = ctx.emit("reshape", [src, ctx.const([1], np.int64)])
        src = _fit_to_index(ctx, src, index)
    else:
        src = ctx.emit("expand", [ctx.tensor("value", x.type.dtype), ctx.shape_of(index)])
    y = _scatter(ctx, x, index, src, axis)
    return ctx.emit("reshape", [y, ctx.const(np.zeros(0, np.int64))]) if scalar else y


def _scatter(ctx, x, index, src, axis):
    def put(data, updates, reduction="none"):
        return ctx.emit("scatter_elements", [data, index, updates], axis=axis,
                        reduction=reduction)

    def fill(value):  # a constant where each update goes
        return ctx.emit("expand", [ctx.const(value, x.type.dtype), ctx.shape_of(index)])

    reduce = ctx.raw.get("reduce")
    if ctx.node.target == aten.scatter_add.default:
        return put(x, src, "add")
    if reduce is None:
        return put(x, src)
    include_self = ctx.node.target != aten.scatter_reduce.two or ctx["include_self"]
    if reduce == "mean":  # sums over counts; a place nothing reaches keeps x (x / 1)
        ones = ctx.emit("expand", [ctx.const(1, x.type.dtype), ctx.shape_of(x)])
        total = put(x if include_self else put(x, fill(0)), src, "add")
        count = put(ones if include_self else put(ones, fill(0)), fill(1), "add")
        return ctx.emit("div", [total, count])
    reduction = _REDUCTIONS[reduce]
    if not include_self:  # the places updates reach start from the reduction's identity
        dt = x.type.dtype
        big = np.inf if dt.is_float else np.iinfo(dt.numpy).max
        x = put(x, fill({"add": 0, "mul": 1, "max": -big, "min": big}[reduction]))
    return put(x, src, reduction)


@converter(aten.slice_scatter.default)
def slice_scatter(ctx):
    x = ctx.tensor("self")
    src = ctx.tensor("src", x.type.dtype)
    axis = _axis(ctx["dim"], x.type.rank)
    start = 0 if ctx["start"] is None else ctx["start"]
    end = INT64_MAX if ctx["end"] is None else ctx["end"]
    return _write_slice(ctx, x, src, axis, start, end, int(ctx["step"]))


@converter(aten.select_scatter.default)
def select_scatter(ctx):
    x = ctx.tensor("self")
    axis = _axis(ctx["dim"], x.type.rank)
    i = ctx["index"]
    src = ctx.emit("unsqueeze", [ctx.tensor("src", x.type.dtype), ctx.axes_const([axis])])
    if not isinstance(i, int):
        ctx.unsupported("select_scatter at a symbolic index")
    return _write_slice(ctx, x, src, axis, i, i + 1 if i != -1 else INT64_MAX, 1)


def _write_slice(ctx, x, src, axis, start, end, step):
    """x with x[start:end:step] along `axis` replaced by src."""
    if step == 1:  # what comes before, src, what comes after
        parts = [src]
        if not (isinstance(start, int) and start == 0):
            parts.insert(0, ctx.emit("slice", [x, ctx.const([0], np.int64), ctx.int_value(start),
                                               ctx.axes_const([axis])]))
        if not (isinstance(end, int) and end >= INT64_MAX):
            parts.append(ctx.emit("slice", [x, ctx.int_value(end),
                                            ctx.const([INT64_MAX], np.int64),
                                            ctx.axes_const([axis])]))
        return parts[0] if len(parts) == 1 else ctx.emit("concat", parts, axis=axis)
    n = x.type.shape[axis]
    if not (isinstance(n, int) and isinstance(start, int) and isinstance(end, int)
            and src.type.is_static):
        ctx.unsupported("a strided slice write needs static sizes")
    positions = np.arange(n)[slice(start, end, step)]
    shape = [1] * src.type.rank
    shape[axis] = len(positions)
    index = np.broadcast_to(positions.reshape(shape), src.type.shape)
    return ctx.emit("scatter_elements", [x, ctx.const(index, np.int64), src], axis=axis)


# ----- searching -----------------------------------------------------------------------------

def _insertion_points(ctx, seq, values, right: bool):
    """How many elements of each sorted row of `seq` come before each value (<, or <= when
    `right`): a comparison against the whole row, counted (the rows are short here, and a
    count needs no data-dependent control flow)."""
    if values.type.dtype != seq.type.dtype:
        values = ctx.cast(values, seq.type.dtype)
    v = ctx.emit("unsqueeze", [values, ctx.axes_const([-1])])
    s = seq if seq.type.rank == 1 else ctx.emit("unsqueeze", [seq, ctx.axes_const([-2])])
    before = ctx.emit("less_equal" if right else "less", [s, v])
    count = ctx.emit("reduce_sum", [ctx.cast(before, dtypes.i64)], axes=[-1], keepdims=0)
    return ctx.cast(count, ctx.out_dtype)


@converter(aten.searchsorted.Tensor, aten.searchsorted.Scalar)
def searchsorted(ctx):
    seq = ctx.tensor("sorted_sequence")
    if ctx.raw.get("sorter") is not None:
        seq = ctx.emit("gather_elements", [seq, ctx.tensor("sorter", dtypes.i64)], axis=-1)
    right = bool(ctx["right"]) or ctx["side"] == "right"
    return _insertion_points(ctx, seq, ctx.tensor("self", seq.type.dtype), right)


@converter(aten.bucketize.Tensor, aten.bucketize.Scalar)
def bucketize(ctx):
    seq = ctx.tensor("boundaries")
    return _insertion_points(ctx, seq, ctx.tensor("self", seq.type.dtype), bool(ctx["right"]))


@converter(aten.put.default)
def put(ctx):
    """x.put(index, source): a scatter into x flattened (indices may be negative)."""
    x = ctx.tensor("self")
    flat = ctx.emit("reshape", [x, ctx.const([-1], np.int64)])
    index = ctx.emit("reshape", [ctx.tensor("index", dtypes.i64), ctx.const([-1, 1], np.int64)])
    src = ctx.emit("reshape", [ctx.tensor("source", x.type.dtype), ctx.const([-1], np.int64)])
    out = ctx.emit("scatter_nd", [flat, index, src],
                   reduction="add" if ctx["accumulate"] else "none")
    return ctx.emit("reshape", [out, ctx.shape_of(x)])
