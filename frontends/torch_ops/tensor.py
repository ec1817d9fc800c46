"""Shape ATen ops (view, permute, expand, cat, split, ...), tensor creation (full, arange, ...)
and the size arithmetic torch.export records for symbolic dims.

Sizes: where a size depends on a symbolic dim, torch.export writes ``sym_size`` and Python
operators (``operator.mul``) on SymInts. Each becomes an i64[1] slimc value computed from
``shape`` (a `SymInt`), and a list of sizes one i64 vector: once the compiled Module binds
concrete shapes, constant folding turns them back into constants, as ONNX's Shape ->
Gather -> Concat chains are.
"""

from __future__ import annotations

import operator

import numpy as np
import torch

from slimc.ir import Value

from . import INT64_MAX, SymInt, aten, converter


def _axis(d: int, rank: int) -> int:
    return d + rank if d < 0 else d


# ----- views and shapes -------------------------------------------------------------------------

def _same_dim(size, d) -> bool:
    return isinstance(size, SymInt) and size.dim is not None and size.dim == d


@converter(aten.view.default, aten._unsafe_view.default, aten.reshape.default,
           aten.view_copy.default)
def view(ctx):
    """A symbolic size equal to the input's dim at the same place becomes 0 (keep it); a
    size that is 0 (an empty tensor) stays 0 (allowzero)."""
    x = ctx.tensor("self")
    sizes = list(ctx["size"] if "size" in ctx.raw else ctx["shape"])
    if any(isinstance(s, int) and s == 0 for s in sizes):
        return ctx.emit("reshape", [x, ctx.shape_value(sizes)], allowzero=1)
    sizes = [0 if i < x.type.rank and _same_dim(s, x.type.shape[i]) else s
             for i, s in enumerate(sizes)]
    return ctx.emit("reshape", [x, ctx.shape_value(sizes)])


def _row_major_strides(shape) -> list:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= n
    return strides[::-1]


def _is_row_major(shape, strides) -> bool:
    """Whether `strides` lay `shape` out in row-major order (dims of size 1 have any stride)."""
    return all(n == 1 or st == want for n, st, want in
               zip(shape, strides, _row_major_strides(shape)))


@converter(aten.as_strided.default, aten.as_strided_copy.default)
def as_strided(ctx):
    """A view of the input's storage at the given sizes, strides and offset. slimc's values
    have no storage, only their elements in row-major order, so it is taken where the input
    tensor is laid out so in PyTorch (what the strides then index) and every size is static:
    a reshape where the view reads the elements in order (AdaptiveAvgPool1d's decomposition
    restrides a pooled [N, C, 1, 1] that way), else a gather of the flattened input at the
    view's element offsets."""
    x = ctx.tensor("self")
    val = ctx.meta("self")
    sizes, strides = ctx.ints("size"), ctx.ints("stride")
    offset = int(ctx.raw.get("storage_offset") or 0)
    shape, layout = list(val.shape), list(val.stride()) + [val.storage_offset()]
    if not all(isinstance(n, int) for n in shape + layout):
        ctx.unsupported("as_strided of a tensor of symbolic shape")
    if not _is_row_major(shape, layout[:-1]) or layout[-1] != 0:
        ctx.unsupported(f"as_strided of a tensor that is not laid out row-major in PyTorch "
                        f"(strides {tuple(val.stride())}, offset {val.storage_offset()}): "
                        f"its storage order is not its element order")
    if len(sizes) != len(strides) or any(n < 0 for n in sizes) or any(s < 0 for s in strides):
        ctx.fail(f"as_strided sizes {sizes} and strides {strides} do not describe a view")
    numel = int(np.prod(shape, dtype=np.int64))
    grid = np.indices(sizes, dtype=np.int64) if sizes else np.zeros((0,), np.int64)
    where = offset + sum((g * st for g, st in zip(grid, strides)), np.zeros(sizes, np.int64))
    if where.size and (where.min() < 0 or where.max() >= numel):
        ctx.fail(f"as_strided(size={sizes}, stride={strides}, storage_offset={offset}) reads "
                 f"outside the input's {numel} elements")
    if where.size == numel and np.array_equal(where.reshape(-1), np.arange(numel)):
        return ctx.emit("reshape", [x, ctx.shape_value(sizes)])
    flat = ctx.emit("reshape", [x, ctx.const([-1], np.int64)])
    return ctx.emit("gather", [flat, ctx.const(where)], axis=0)


@converter(aten.narrow_copy.default)
def narrow_copy(ctx):
    x = ctx.tensor("self")
    axis = _axis(ctx["dim"], x.type.rank)
    start, length = ctx.ints("start")[0], ctx.ints("length")[0]
    n = x.type.shape[axis]
    if start < 0:
        if not isinstance(n, int):
            ctx.unsupported("narrow from the end of a symbolic dimension")
        start += n
    return ctx.emit("slice", [x, ctx.const([start], np.int64),
                              ctx.const([start + length], np.int64), ctx.axes_const([axis])])


@converter(aten.permute.default, aten.permute_copy.default)
def permute(ctx):
    x = ctx.tensor("self")
    perm = [_axis(d, x.type.rank) for d in ctx.ints("dims")]
    return x if perm == sorted(perm) else ctx.emit("transpose", [x], perm=perm)


@converter(aten.transpose.int)
def transpose(ctx):
    x = ctx.tensor("self")
    perm = list(range(x.type.rank))
    a, b = _axis(ctx["dim0"], x.type.rank), _axis(ctx["dim1"], x.type.rank)
    perm[a], perm[b] = perm[b], perm[a]
    return x if a == b else ctx.emit("transpose", [x], perm=perm)


@converter(aten.t.default)
def t(ctx):
    x = ctx.tensor("self")
    return x if x.type.rank < 2 else ctx.emit("transpose", [x], perm=[1, 0])


@converter(aten.unsqueeze.default)
def unsqueeze(ctx):
    x = ctx.tensor("self")
    return ctx.emit("unsqueeze", [x, ctx.axes_const([_axis(ctx["dim"], x.type.rank + 1)])])


@converter(aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
def squeeze(ctx):
    """Only dims of size 1 go (PyTorch leaves others alone, where slimc's squeeze refuses)."""
    x = ctx.tensor("self")
    shape = list(ctx.meta("self").shape)
    if not shape:  # a 0-d tensor squeezes to itself
        return x
    dims = ctx.raw.get("dim", ctx.raw.get("dims"))
    dims = range(len(shape)) if dims is None else dims if isinstance(dims, (list, tuple)) \
        else [dims]
    axes = sorted({_axis(d, len(shape)) for d in dims if isinstance(shape[d], int)
                   and shape[d] == 1})
    return ctx.emit("squeeze", [x, ctx.axes_const(axes)]) if axes else x


@converter(aten.expand.default)
def expand(ctx):
    """PyTorch's -1 keeps the input's dim; slimc's expand (ONNX's) has no -1."""
    x = ctx.tensor("self")
    sizes = list(ctx["size"])
    lead = len(sizes) - x.type.rank
    # a 1 broadcasts to whatever the input has: it keeps a dim, symbolic or not
    sizes = [1 if i >= lead and ((isinstance(s, int) and s == -1) or
                                 _same_dim(s, x.type.shape[i - lead])) else s
             for i, s in enumerate(sizes)]
    if all(isinstance(s, int) and s == 1 for s in sizes[lead:]) and lead == 0:
        return x
    return ctx.emit("expand", [x, ctx.shape_value(sizes)])


@converter(aten.cat.default)
def cat(ctx):
    dt = ctx.out_dtype
    parts = [ctx.tensor(v, dt) for v in ctx["tensors"]]
    rank = max(p.type.rank for p in parts)
    # PyTorch skips 1-D empty tensors in cat (a legacy rule); slimc's concat would refuse them
    parts = [p for p in parts if not (p.type.rank == 1 and p.type.shape[0] == 0 and rank > 1)]
    if len(parts) == 1:
        return parts[0]
    return ctx.emit("concat", parts, axis=_axis(ctx["dim"], rank))


@converter(aten.split_with_sizes.default, aten.split.Tensor)
def split(ctx):
    x = ctx.tensor("self")
    axis = _axis(ctx["dim"], x.type.rank)
    if "split_sizes" in ctx.raw:
        sizes = ctx.ints("split_sizes")
    else:
        n = x.type.shape[axis]
        if not isinstance(n, int):
            ctx.unsupported("split of a symbolic dimension by a chunk size")
        step = int(ctx["split_size"])
        sizes = [min(step, n - i) for i in range(0, n, step)] or [0]
    if len(sizes) == 1:
        return [x]
    return ctx.emit("split", [x, ctx.const(sizes, np.int64)], len(sizes), axis=axis,
                    attrs={"num_outputs": len(sizes)})


@converter(aten.flip.default)
def flip(ctx):
    x = ctx.tensor("self")
    dims = [_axis(d, x.type.rank) for d in ctx.ints("dims")]
    if not dims:
        return x
    n = len(dims)
    return ctx.emit("slice", [x, ctx.const([-1] * n, np.int64),
                              ctx.const([-INT64_MAX] * n, np.int64), ctx.axes_const(dims),
                              ctx.const([-1] * n, np.int64)])


@converter(aten.repeat.default)
def repeat(ctx):
    x = ctx.tensor("self")
    reps = ctx.ints("repeats")
    extra = len(reps) - x.type.rank
    if extra:
        x = ctx.emit("unsqueeze", [x, ctx.axes_const(range(extra))])
    return ctx.emit("tile", [x, ctx.const(reps, np.int64)])


@converter(aten.triu.default, aten.tril.default)
def trilu(ctx):
    upper = int(ctx.node.target == aten.triu.default)
    return ctx.emit("trilu", [ctx.tensor("self"), ctx.const(int(ctx["diagonal"]), np.int64)],
                    upper=upper)


@converter(aten.diagonal.default)
def diagonal(ctx):
    """x[..., i, i + offset] with the two dims moved last: one gather of the flattened pair."""
    x = ctx.tensor("self")
    r = x.type.rank
    d1, d2, off = _axis(ctx["dim1"], r), _axis(ctx["dim2"], r), int(ctx["offset"])
    n1, n2 = x.type.shape[d1], x.type.shape[d2]
    if not (isinstance(n1, int) and isinstance(n2, int)):
        ctx.unsupported("diagonal of symbolic dimensions")
    others = [i for i in range(r) if i not in (d1, d2)]
    xt = ctx.emit("transpose", [x], perm=others + [d1, d2])
    flat = ctx.emit("reshape", [xt, ctx.const([0] * len(others) + [n1 * n2], np.int64)])
    length = max(0, min(n1, n2 - off) if off >= 0 else min(n1 + off, n2))
    rows = np.arange(length) + max(-off, 0)
    idx = rows * n2 + rows + off
    return ctx.emit("gather", [flat, ctx.const(idx, np.int64)], axis=len(others))


# ----- creation ---------------------------------------------------------------------------------

def _fill(ctx, shape: Value, value):
    dt = ctx.out_dtype
    if shape.is_constant and shape.data is not None:
        return ctx.const(np.full(tuple(int(s) for s in shape.data), value, dt.numpy))
    return ctx.emit("constant_of_shape", [shape], value=value, dtype=dt)


@converter(aten.full.default)
def full(ctx):
    return _fill(ctx, ctx.shape_value(ctx["size"]), ctx["fill_value"])


@converter(aten.empty.memory_format, aten.empty_strided.default, aten.empty_permuted.default,
           aten.new_empty_strided.default, aten.zeros.default)
def zeros(ctx):  # (empty's values are undefined: zeros are as good as any)
    return _fill(ctx, ctx.shape_value(ctx["size"]), 0)


@converter(aten.ones.default)
def ones(ctx):
    return _fill(ctx, ctx.shape_value(ctx["size"]), 1)


@converter(aten.full_like.default, aten.fill.Scalar)
def full_like(ctx):
    value = ctx["fill_value"] if "fill_value" in ctx.raw else ctx["value"]
    return _fill(ctx, ctx.shape_of(ctx.tensor("self")), value)


@converter(aten.zeros_like.default, aten.ones_like.default, aten.empty_like.default)
def zeros_like(ctx):
    one = ctx.node.target == aten.ones_like.default
    return _fill(ctx, ctx.shape_of(ctx.tensor("self")), 1 if one else 0)


@converter(aten.fill.Tensor)
def fill_tensor(ctx):
    x = ctx.tensor("self")
    return ctx.emit("expand", [ctx.tensor("value", x.type.dtype), ctx.shape_of(x)])


@converter(aten.arange.start_step, aten.arange.default, aten.arange.start)
def arange(ctx):
    dt = ctx.out_dtype
    start = ctx["start"] if "start" in ctx.raw else 0
    step = ctx["step"] if "step" in ctx.raw else 1
    bounds = [ctx.tensor(v, dt) for v in (start, ctx["end"], step)]
    return ctx.emit("range", bounds)


# ----- sizes ------------------------------------------------------------------------------------

@converter(aten.sym_size.int)
def sym_size(ctx):
    return ctx.dim_size(ctx.tensor("self"), ctx["dim"])


@converter(aten.sym_numel.default)
def sym_numel(ctx):
    x = ctx.tensor("self")
    if x.type.is_static:
        return x.type.numel
    return SymInt(ctx.emit("reshape", [ctx.emit("size", [x]), ctx.const([1], np.int64)]))


def _refuse_non_int(node):
    if not isinstance(node.meta.get("val"), (int, torch.SymInt)):
        return "size arithmetic on non-integers"
    return None


# Python operator (on sizes) -> (slimc op, the same on Python ints). Sizes are not negative,
# so slimc's truncating division is floor division here.
SIZE_OPS = {
    operator.add: ("add", operator.add), operator.sub: ("sub", operator.sub),
    operator.mul: ("mul", operator.mul), operator.floordiv: ("div", operator.floordiv),
    operator.mod: ("mod", operator.mod), torch.sym_max: ("max", max),
    torch.sym_min: ("min", min),
}


@converter(*SIZE_OPS, refuse=_refuse_non_int)
def size_arithmetic(ctx):
    op, py = SIZE_OPS[ctx.node.target]
    a, b = ctx[0], ctx[1]
    if not isinstance(a, SymInt) and not isinstance(b, SymInt):
        return py(int(a), int(b))
    return SymInt(ctx.emit(op, [ctx.int_value(a), ctx.int_value(b)]))


@converter(operator.neg, refuse=_refuse_non_int)
def size_neg(ctx):
    a = ctx[0]
    return SymInt(ctx.emit("neg", [a.value])) if isinstance(a, SymInt) else -int(a)


@converter(operator.getitem)
def getitem(ctx):
    items, i = ctx[0], ctx[1]
    if not isinstance(items, (list, tuple)):
        ctx.fail(f"getitem on a {type(items).__name__}")
    if items[i] is None:
        ctx.unsupported(f"output {i} of {ctx.node.args[0].target} is not supported")
    return items[i]



def _refuse_unfold(node):
    val, dim = node.args[0].meta["val"], node.args[1]
    if val.dim() == 0:
        return "unfold of a 0-d tensor"
    return None if isinstance(val.shape[dim], int) else "unfold of a symbolic dimension"


@converter(aten.unfold.default, refuse=_refuse_unfold)
def unfold(ctx):
    """Windows of `size` every `step` along a dim: one gather of a constant [windows, size]
    index, then the window's own axis moved last."""
    x = ctx.tensor("self")
    axis = _axis(ctx["dimension"], x.type.rank)
    size, step = int(ctx["size"]), int(ctx["step"])
    starts = np.arange((x.type.shape[axis] - size) // step + 1) * step
    index = starts[:, None] + np.arange(size)[None, :]
    y = ctx.emit("gather", [x, ctx.const(index, np.int64)], axis=axis)
    perm = [d for d in range(y.type.rank) if d != axis + 1] + [axis + 1]
    return ctx.emit("transpose", [y], perm=perm)
