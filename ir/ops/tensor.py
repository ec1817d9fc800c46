"""Shape and data-movement ops: reshape, transpose, concat, split, slice, gathers and scatters,
padding, tiling, generators (range, constant_of_shape, eye_like) and data-dependent selection.

Shape-deciding inputs. Where an input's *values* decide the output shape (a reshape's target,
slice bounds, pads, tile repeats, a range's bounds, ...) it is a real input listed in the op's
``shape_inputs``, never an attribute, so slimc has one spelling whatever the ONNX opset. When
that input is a constant, type inference gives the exact output shape. When it is not (a graph
input, or computed from one), inference still gives the rank -- read off the static length of
the shape input -- with unknown (``?``) dimensions where the values would decide them; the
reference computes the real shape at run time and a compiled module specializes on those
values (they are part of its cache key), after which inference is exact again. Only when even
the rank cannot be known (a shape input whose own length is unknown) is it refused.

Data-dependent shapes. ``nonzero``, ``compress`` and ``unique`` have output sizes decided by
the data itself, not by a small integer input. Their inputs are not ``shape_inputs``: their
outputs get an unknown dimension unless the deciding input is a constant (then the frontend
folds the op away anyway). The interpreter runs them; a backend that needs static shapes must
refuse them by name when it meets a ``?``.

Symbolic dimensions are kept where the result provably equals one (``reshape(x[N,3,4],
[0,-1])`` is ``[N,12]``; slicing a whole ``N`` axis keeps ``N``) and become ``?`` otherwise.

Fusion kinds: everything whose output element is a copy of one input element chosen by index
arithmetic (reshape ... gather, pad, tile, one_hot, trilu) is INJECTIVE, and so are the
generators that read no tensor data (range, constant_of_shape, eye_like). Scatters are OPAQUE
(several updates may land on one element, so no output element is a function of one index).
``shape``/``size`` are OPAQUE: they read metadata, not data, and are folded to constants
whenever the input shape is static. Data-dependent-shape ops are OPAQUE.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..infer import broadcast_shapes, dim_product, normalize_axis
from ..errors import UnsupportedError
from ..registry import REQUIRED, FusionKind, InferContext, register_op
from ..types import Dim, DType, TensorType, dtypes

INJ = FusionKind.INJECTIVE
OPAQUE = FusionKind.OPAQUE
INT_TYPES = ("i32", "i64")


# ----- helpers -----------------------------------------------------------------------------
def _ints(a) -> list[int]:
    return [int(v) for v in np.asarray(a).reshape(-1)]


def _scalar_int(a) -> int:
    return int(np.asarray(a).reshape(-1)[0])


def _product(dims: Sequence[Dim]) -> Dim:
    """Product of dims: an int when all are, a symbol when it is the only factor not 1."""
    n = dim_product(dims)
    if n is not None:
        return n
    rest = [d for d in dims if d != 1]
    if len(rest) == 1 and isinstance(rest[0], str):
        return rest[0]
    return None


def _quotient(num: Sequence[Dim], den: Sequence[Dim]) -> tuple[Dim, bool]:
    """prod(num) / prod(den), cancelling equal symbols. Returns (dim, exact): exact is False
    when the division provably leaves a remainder (static sizes that do not divide)."""
    num, den = list(num), list(den)
    for d in list(den):
        if isinstance(d, str) and d in num:
            num.remove(d)
            den.remove(d)
    if any(not isinstance(d, int) for d in den):
        return None, True
    q = 1
    for d in den:
        q *= d
    n_int = 1
    syms = []
    for d in num:
        if isinstance(d, int):
            n_int *= d
        else:
            syms.append(d)
    if q == 0:
        return None, bool(syms)
    if n_int % q:
        return None, bool(syms)
    n_int //= q
    if not syms:
        return n_int, True
    if len(syms) == 1 and n_int == 1 and isinstance(syms[0], str):
        return syms[0], True
    return None, True


def _vector_len(ctx: InferContext, i: int, what: str) -> int:
    """Static length of 1-D input i (a shape input that is not constant)."""
    t = ctx[i]
    if t.rank > 1:
        ctx.fail(f"{what} (input {i}) must be 1-D, got {t}")
    n = 1 if t.rank == 0 else t.shape[0]
    if not isinstance(n, int):
        ctx.const_required(i, what)
    return n


def _axes(values: Sequence[int], rank: int, ctx: InferContext, what: str = "axes") -> list[int]:
    out = [normalize_axis(int(a), rank, ctx) for a in values]
    if len(set(out)) != len(out):
        ctx.fail(f"{what} {list(values)} repeat an axis")
    return out


def _norm_axes(axes, rank: int) -> list[int]:
    """Runtime twin of `_axes` for references (errors become ValueError)."""
    out = []
    for a in _ints(axes):
        if not -rank <= a < rank:
            raise ValueError(f"axis {a} out of range for rank {rank}")
        out.append(a + rank if a < 0 else a)
    if len(set(out)) != len(out):
        raise ValueError(f"repeated axis in {out}")
    return out


def _check_index_dtype(ctx: InferContext, i: int, what: str = "indices") -> None:
    if ctx[i].dtype.name not in INT_TYPES:
        ctx.fail(f"{what} (input {i}) must be int32 or int64, got {ctx[i].dtype}")


def _wrap_indices(idx: np.ndarray, dim) -> np.ndarray:
    """ONNX indices may be negative (counting from the end); out-of-range ones are errors."""
    idx = idx.astype(np.int64)
    dim = np.asarray(dim, dtype=np.int64)
    bad = (idx < -dim) | (idx >= dim)
    if np.any(bad):
        raise IndexError(f"index {int(idx[bad].reshape(-1)[0])} is out of range "
                         f"for a dimension of size {int(np.broadcast_to(dim, idx.shape)[bad][0])}")
    return np.where(idx < 0, idx + dim, idx)


# ----- reshape, flatten, squeeze, unsqueeze, transpose --------------------------------------
def _reshape(x, shape, allowzero=0):
    target = _ints(shape)
    if not allowzero:
        target = [x.shape[i] if s == 0 else s for i, s in enumerate(target)]
    return x.reshape(target)


def _infer_reshape(ctx: InferContext) -> TensorType:
    x = ctx[0]
    target = ctx.const(1)
    if target is None:
        return TensorType(x.dtype, (None,) * _vector_len(ctx, 1, "the target shape"))
    target = _ints(target)
    allowzero = ctx.attrs["allowzero"]
    out: list[Dim] = []
    minus = None
    for i, t in enumerate(target):
        if t == -1:
            if minus is not None:
                ctx.fail(f"target shape {target} has more than one -1")
            minus = i
            out.append(None)
        elif t == 0 and not allowzero:
            if i >= x.rank:
                ctx.fail(f"target shape {target} copies dimension {i} (a 0) but the input "
                         f"{x} has rank {x.rank}")
            out.append(x.shape[i])
        elif t < 0:
            ctx.fail(f"target shape {target} has a negative size {t}")
        else:
            out.append(t)
    if minus is not None:
        if allowzero and 0 in target:
            ctx.fail(f"target shape {target} has both -1 and 0 with allowzero=1")
        rest = [d for j, d in enumerate(out) if j != minus]
        if 0 in rest:
            ctx.fail(f"target shape {target} for {x} has -1 next to a 0-size dimension: "
                     f"the -1 is ambiguous")
        dim, exact = _quotient(x.shape, rest)
        if not exact or (dim is None and all(isinstance(d, int) for d in x.shape + tuple(
                d for j, d in enumerate(out) if j != minus))):
            ctx.fail(f"cannot reshape {x} to {target}: the -1 does not come out whole")
        out[minus] = dim
    elif x.is_static and all(isinstance(d, int) for d in out) and dim_product(out) != x.numel:
        ctx.fail(f"cannot reshape {x} ({x.numel} elements) to {target} "
                 f"({dim_product(out)} elements)")
    return TensorType(x.dtype, tuple(out))


register_op("reshape", reference=_reshape, infer=_infer_reshape, attrs={"allowzero": 0},
            fusion=INJ, num_inputs=2, shape_inputs=(1,),
            doc="reshape(x, shape): 0 copies the input's dimension (unless allowzero=1), "
                "one -1 takes what is left")


def _flatten(x, axis=1):
    axis = axis + x.ndim if axis < 0 else axis
    outer = int(np.prod(x.shape[:axis], dtype=np.int64))
    return x.reshape(outer, int(np.prod(x.shape[axis:], dtype=np.int64)))


def _infer_flatten(ctx: InferContext) -> TensorType:
    x = ctx[0]
    axis = ctx.attrs["axis"]
    if not -x.rank <= axis <= x.rank:
        ctx.fail(f"axis {axis} is out of range for rank {x.rank}")
    axis = axis + x.rank if axis < 0 else axis  # -1 splits off the last axis
    return TensorType(x.dtype, (_product(x.shape[:axis]), _product(x.shape[axis:])))


register_op("flatten", reference=_flatten, infer=_infer_flatten, attrs={"axis": 1},
            fusion=INJ, num_inputs=1, doc="flatten(x): 2-D, dims before `axis` x dims from it")


def _squeeze(x, axes=None):
    if axes is None or np.size(axes) == 0:  # no axes, or an empty list: every size-1 axis
        return np.squeeze(x)
    axes = _norm_axes(axes, x.ndim)
    for a in axes:
        if x.shape[a] != 1:
            raise ValueError(f"cannot squeeze axis {a} of size {x.shape[a]}")
    return x.reshape([d for i, d in enumerate(x.shape) if i not in axes])


def _infer_squeeze(ctx: InferContext) -> TensorType:
    x = ctx[0]
    empty = ctx.has(1) and ctx[1].rank == 1 and ctx[1].shape[0] == 0
    if not ctx.has(1) or empty:
        if not x.is_static:  # (the output's rank is unknown: a limitation, not the model's fault)
            raise UnsupportedError(f"squeeze without axes needs a static shape to know which "
                                   f"dimensions are 1, got {x}", node=ctx.node_label, op="squeeze")
        return TensorType(x.dtype, tuple(d for d in x.shape if d != 1))
    axes = ctx.const(1)
    if axes is None:
        n = _vector_len(ctx, 1, "the squeezed axes")
        if n > x.rank:
            ctx.fail(f"cannot squeeze {n} axes of {x}")
        return TensorType(x.dtype, (None,) * (x.rank - n))
    axes = _axes(_ints(axes), x.rank, ctx)
    for a in axes:
        if isinstance(x.shape[a], int) and x.shape[a] != 1:
            ctx.fail(f"cannot squeeze axis {a} of {x}: its size is {x.shape[a]}, not 1")
    return TensorType(x.dtype, tuple(d for i, d in enumerate(x.shape) if i not in axes))


register_op("squeeze", reference=_squeeze, infer=_infer_squeeze, fusion=INJ, num_inputs=(1, 2),
            shape_inputs=(1,),
            doc="squeeze(x, axes?): drop size-1 axes (all of them if axes is absent or empty)")


def _unsqueeze(x, axes):
    axes = _norm_axes(axes, x.ndim + len(_ints(axes)))
    shape = list(x.shape)
    for a in sorted(axes):
        shape.insert(a, 1)
    return x.reshape(shape)


def _infer_unsqueeze(ctx: InferContext) -> TensorType:
    x = ctx[0]
    axes = ctx.const(1)
    if axes is None:
        return TensorType(x.dtype, (None,) * (x.rank + _vector_len(ctx, 1, "the new axes")))
    axes = _ints(axes)
    axes = _axes(axes, x.rank + len(axes), ctx)
    shape: list[Dim] = list(x.shape)
    for a in sorted(axes):
        shape.insert(a, 1)
    return TensorType(x.dtype, tuple(shape))


register_op("unsqueeze", reference=_unsqueeze, infer=_infer_unsqueeze, fusion=INJ, num_inputs=2,
            shape_inputs=(1,), doc="unsqueeze(x, axes): insert size-1 axes (axes of the output)")


def _transpose(x, perm):
    return np.transpose(x, perm)


def _infer_transpose(ctx: InferContext) -> TensorType:
    x = ctx[0]
    perm = [int(p) for p in ctx.attrs["perm"]]
    if sorted(perm) != list(range(x.rank)):
        ctx.fail(f"perm {perm} is not a permutation of the {x.rank} axes of {x}")
    return TensorType(x.dtype, tuple(x.shape[p] for p in perm))


register_op("transpose", reference=_transpose, infer=_infer_transpose, attrs={"perm": REQUIRED},
            fusion=INJ, num_inputs=1,
            doc="transpose(x) {perm}: output axis i is input axis perm[i]")


# ----- concat, split ----------------------------------------------------------------------
def _same_dim(a: Dim, b: Dim, ctx: InferContext, what: str) -> Dim:
    if a == b:
        return a
    if isinstance(a, int) and isinstance(b, int):
        ctx.fail(what)
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return a if a is not None else b  # both must be equal in a valid program


def _concat(*xs, axis):
    return np.concatenate(xs, axis=axis)


def _infer_concat(ctx: InferContext) -> TensorType:
    ts = [ctx[i] for i in range(len(ctx.inputs))]
    if not ts:
        ctx.fail("concat needs at least one input")
    first = ts[0]
    if first.rank == 0:
        ctx.fail("cannot concatenate scalars")
    axis = normalize_axis(ctx.attrs["axis"], first.rank, ctx)
    shape = list(first.shape)
    for t in ts[1:]:
        if t.rank != first.rank or t.dtype != first.dtype:
            ctx.fail(f"inputs {first} and {t} differ in rank or dtype")
        for i, d in enumerate(t.shape):
            if i != axis:
                shape[i] = _same_dim(shape[i], d, ctx, f"inputs {first} and {t} differ off the "
                                                       f"concatenation axis {axis}")
    along = [t.shape[axis] for t in ts]
    nonzero = [d for d in along if d != 0]
    if all(isinstance(d, int) for d in along):
        shape[axis] = sum(along)
    elif len(nonzero) == 1:
        shape[axis] = nonzero[0]
    else:
        shape[axis] = None
    return TensorType(first.dtype, tuple(shape))


register_op("concat", reference=_concat, infer=_infer_concat, attrs={"axis": REQUIRED},
            fusion=INJ, num_inputs=(1, None), doc="concat(*xs) {axis}")


def even_split(dim: int, parts: int) -> list[int]:
    """ONNX's split into `parts`: chunks of ceil(dim/parts), the last one smaller."""
    chunk = -(-dim // parts)
    sizes = [chunk] * (parts - 1) + [dim - chunk * (parts - 1)]
    if parts <= 0 or sizes[-1] < 0:
        raise ValueError(f"cannot split a dimension of {dim} into {parts} parts")
    return sizes


def _split(x, sizes=None, axis=0, num_outputs=0):
    d = x.shape[axis]
    sizes = even_split(d, num_outputs) if sizes is None else _ints(sizes)
    if sum(sizes) != d or min(sizes, default=0) < 0:
        raise ValueError(f"split sizes {sizes} do not add up to the dimension {d}")
    return np.split(x, np.cumsum(sizes)[:-1], axis=axis)


def _infer_split(ctx: InferContext) -> list[TensorType]:
    x = ctx[0]
    axis = normalize_axis(ctx.attrs["axis"], x.rank, ctx)
    d = x.shape[axis]
    if ctx.has(1):
        sizes = ctx.const(1)
        if sizes is None:
            n = _vector_len(ctx, 1, "the split sizes")
            dims: list[Dim] = [d] if n == 1 else [None] * n
        else:
            dims = _ints(sizes)
            if any(s < 0 for s in dims) or (isinstance(d, int) and sum(dims) != d):
                ctx.fail(f"split sizes {dims} do not add up to dimension {axis} of {x}")
    else:
        n = ctx.attrs["num_outputs"]
        if n <= 0:
            ctx.fail("split needs the sizes input or num_outputs > 0")
        if isinstance(d, int):
            try:
                dims = even_split(d, n)
            except ValueError as e:
                ctx.fail(str(e))
        else:
            dims = [d] if n == 1 else [None] * n
    out = []
    for s in dims:
        shape = list(x.shape)
        shape[axis] = s
        out.append(TensorType(x.dtype, tuple(shape)))
    return out


register_op("split", reference=_split, infer=_infer_split, attrs={"axis": 0, "num_outputs": 0},
            fusion=INJ, num_inputs=(1, 2), num_outputs=-1, shape_inputs=(1,),
            doc="split(x, sizes?) {axis, num_outputs}: one output per size; without sizes, "
                "num_outputs chunks of ceil(dim/num_outputs)")


# ----- slice ------------------------------------------------------------------------------
def slice_bounds(start: int, end: int, step: int, dim: int) -> tuple[int, int, int]:
    """ONNX's clamping: (start, end, length) of a slice of a dimension of size `dim`."""
    if step == 0:
        raise ValueError("slice step cannot be 0")
    if start < 0:
        start += dim
    if end < 0:
        end += dim
    if step > 0:
        start = min(max(start, 0), dim)
        end = min(max(end, 0), dim)
        length = max(0, -(-(end - start) // step))
    else:
        start = min(max(start, 0), dim - 1)
        end = min(max(end, -1), dim - 1)
        length = max(0, -(-(start - end) // -step))
    return start, end, length


def _slice_args(rank, starts, ends, axes, steps):
    starts, ends = _ints(starts), _ints(ends)
    if len(starts) != len(ends):
        raise ValueError(f"starts {starts} and ends {ends} differ in length")
    axes = list(range(len(starts))) if axes is None else _ints(axes)
    steps = [1] * len(starts) if steps is None else _ints(steps)
    if not len(axes) == len(steps) == len(starts):
        raise ValueError("starts, ends, axes and steps differ in length")
    return starts, ends, axes, steps


def _slice(x, starts, ends, axes=None, steps=None):
    starts, ends, axes, steps = _slice_args(x.ndim, starts, ends, axes, steps)
    index = [slice(None)] * x.ndim
    for a, s, e, st in zip(_norm_axes(axes, x.ndim), starts, ends, steps):
        s, e, _ = slice_bounds(s, e, st, x.shape[a])
        index[a] = slice(s, e if e >= 0 else None, st)
    return x[tuple(index)]


_BIG = 2 ** 31 - 1


def _infer_slice(ctx: InferContext) -> TensorType:
    x = ctx[0]
    consts = [ctx.const(i) if ctx.has(i) else None for i in range(1, 5)]
    have = [ctx.has(i) for i in range(1, 5)]
    n = None
    for i in range(1, 5):
        if ctx.has(i):
            n = _vector_len(ctx, i, "a slice parameter") if n is None else n
    shape = list(x.shape)
    if have[2] and consts[2] is None:  # unknown axes: any dimension may change
        return TensorType(x.dtype, (None,) * x.rank)
    if any(h and c is None for h, c in zip(have, consts)):
        axes = list(range(n)) if not have[2] else _ints(consts[2])
        for a in _axes(axes, x.rank, ctx):
            shape[a] = None
        return TensorType(x.dtype, tuple(shape))
    try:
        starts, ends, axes, steps = _slice_args(x.rank, *consts)
    except ValueError as e:
        ctx.fail(str(e))
    for a, s, e, st in zip(_axes(axes, x.rank, ctx), starts, ends, steps):
        if st == 0:
            ctx.fail("slice step cannot be 0")
        d = x.shape[a]
        if isinstance(d, int):
            shape[a] = slice_bounds(s, e, st, d)[2]
        elif st == 1 and s == 0 and e >= _BIG:
            shape[a] = d
        elif st == -1 and s >= _BIG and e <= -_BIG:
            shape[a] = d
        else:
            shape[a] = None
    return TensorType(x.dtype, tuple(shape))


register_op("slice", reference=_slice, infer=_infer_slice, fusion=INJ, num_inputs=(3, 5),
            shape_inputs=(1, 2, 3, 4),
            doc="slice(x, starts, ends, axes?, steps?): ONNX clamping, negative steps")


# ----- gathers ----------------------------------------------------------------------------
def _gather(data, indices, axis=0):
    axis = axis + data.ndim if axis < 0 else axis
    return np.take(data, _wrap_indices(indices, data.shape[axis]), axis=axis)


def _infer_gather(ctx: InferContext) -> TensorType:
    data, idx = ctx[0], ctx[1]
    _check_index_dtype(ctx, 1)
    axis = normalize_axis(ctx.attrs["axis"], data.rank, ctx)
    return TensorType(data.dtype, data.shape[:axis] + idx.shape + data.shape[axis + 1:])


register_op("gather", reference=_gather, infer=_infer_gather, attrs={"axis": 0}, fusion=INJ,
            num_inputs=2, doc="gather(data, indices) {axis}: np.take with negative indices")


def _gather_elements(data, indices, axis=0):
    axis = axis + data.ndim if axis < 0 else axis
    return np.take_along_axis(data, _wrap_indices(indices, data.shape[axis]), axis=axis)


def _infer_gather_elements(ctx: InferContext) -> TensorType:
    data, idx = ctx[0], ctx[1]
    _check_index_dtype(ctx, 1)
    if data.rank != idx.rank or data.rank == 0:
        ctx.fail(f"data {data} and indices {idx} must have the same rank >= 1")
    normalize_axis(ctx.attrs["axis"], data.rank, ctx)
    return TensorType(data.dtype, idx.shape)


register_op("gather_elements", reference=_gather_elements, infer=_infer_gather_elements,
            attrs={"axis": 0}, fusion=INJ, num_inputs=2,
            doc="gather_elements(data, indices) {axis}: np.take_along_axis")


def _nd_index(data_shape, indices, b):
    """Flatten batch dims: (batch, data shape after batch, index tuples (batch, m, k))."""
    k = indices.shape[-1]
    batch = int(np.prod(data_shape[:b], dtype=np.int64))
    m = int(np.prod(indices.shape[b:-1], dtype=np.int64))
    idx = _wrap_indices(indices, np.asarray(data_shape[b:b + k], dtype=np.int64))
    return batch, idx.reshape(batch, m, k)


def _gather_nd(data, indices, batch_dims=0):
    b = batch_dims
    k = indices.shape[-1]
    out_shape = indices.shape[:-1] + data.shape[b + k:]
    batch, idx = _nd_index(data.shape, indices, b)
    flat = data.reshape((batch,) + data.shape[b:])
    parts = [flat[i][tuple(idx[i].T)] if k else
             np.broadcast_to(flat[i], (idx.shape[1],) + flat[i].shape) for i in range(batch)]
    if not parts:
        return np.empty(out_shape, dtype=data.dtype)
    return np.stack(parts).reshape(out_shape)


def _infer_gather_nd(ctx: InferContext) -> TensorType:
    data, idx = ctx[0], ctx[1]
    _check_index_dtype(ctx, 1)
    b = ctx.attrs["batch_dims"]
    if idx.rank < 1 or data.rank < 1 or not 0 <= b < min(data.rank, idx.rank):
        ctx.fail(f"batch_dims={b} does not fit data {data} and indices {idx}")
    k = idx.shape[-1]
    if not isinstance(k, int):
        ctx.fail(f"the last dimension of indices {idx} must be static")
    if b + k > data.rank:
        ctx.fail(f"indices {idx} index {k} dimensions past {b} batch dims of data {data}")
    batch = [_same_dim(a, c, ctx, f"batch dimensions of {data} and {idx} differ")
             for a, c in zip(data.shape[:b], idx.shape[:b])]
    return TensorType(data.dtype, tuple(batch) + idx.shape[b:-1] + data.shape[b + k:])


register_op("gather_nd", reference=_gather_nd, infer=_infer_gather_nd, attrs={"batch_dims": 0},
            fusion=INJ, num_inputs=2,
            doc="gather_nd(data, indices) {batch_dims}: index tuples in the last axis of indices")


# ----- scatters ---------------------------------------------------------------------------
_REDUCE_AT = {"add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _scatter_at(out, index, updates, reduction):
    if reduction == "none":
        out[index] = updates
    elif reduction in _REDUCE_AT:
        _REDUCE_AT[reduction].at(out, index, updates)
    else:
        raise ValueError(f"unknown reduction {reduction!r}")
    return out


def _scatter_nd(data, indices, updates, reduction="none"):
    k = indices.shape[-1]
    idx = _wrap_indices(indices, np.asarray(data.shape[:k], dtype=np.int64)).reshape(-1, k)
    upd = updates.reshape((idx.shape[0],) + data.shape[k:])
    return _scatter_at(data.copy(), tuple(idx.T), upd, reduction)


def _check_reduction(ctx: InferContext) -> None:
    if ctx.attrs["reduction"] not in ("none", *_REDUCE_AT):
        ctx.fail(f"unknown reduction {ctx.attrs['reduction']!r} "
                 f"(none, {', '.join(_REDUCE_AT)})")


def _infer_scatter_nd(ctx: InferContext) -> TensorType:
    data, idx, upd = ctx[0], ctx[1], ctx[2]
    _check_index_dtype(ctx, 1)
    _check_reduction(ctx)
    k = idx.shape[-1] if idx.rank else None
    if not isinstance(k, int) or k > data.rank:
        ctx.fail(f"indices {idx} must end in a static dimension <= rank of data {data}")
    want = idx.shape[:-1] + data.shape[k:]
    if upd.rank != len(want) or upd.dtype != data.dtype:
        ctx.fail(f"updates {upd} do not match {data.dtype}[{','.join(map(str, want))}]")
    for a, c in zip(upd.shape, want):
        _same_dim(a, c, ctx, f"updates {upd} do not match the shape implied by {idx}, {data}")
    return data


register_op("scatter_nd", reference=_scatter_nd, infer=_infer_scatter_nd,
            attrs={"reduction": "none"}, fusion=OPAQUE, num_inputs=3,
            doc="scatter_nd(data, indices, updates) {reduction: none/add/mul/max/min}")


def _scatter_elements(data, indices, updates, axis=0, reduction="none"):
    axis = axis + data.ndim if axis < 0 else axis
    index = list(np.indices(indices.shape, sparse=True))
    index[axis] = _wrap_indices(indices, data.shape[axis])
    return _scatter_at(data.copy(), tuple(index), updates, reduction)


def _infer_scatter_elements(ctx: InferContext) -> TensorType:
    data, idx, upd = ctx[0], ctx[1], ctx[2]
    _check_index_dtype(ctx, 1)
    _check_reduction(ctx)
    normalize_axis(ctx.attrs["axis"], data.rank, ctx)
    if not (data.rank == idx.rank == upd.rank) or upd.dtype != data.dtype:
        ctx.fail(f"data {data}, indices {idx} and updates {upd} must have one rank")
    for a, c in zip(idx.shape, upd.shape):
        _same_dim(a, c, ctx, f"indices {idx} and updates {upd} differ in shape")
    return data


register_op("scatter_elements", reference=_scatter_elements, infer=_infer_scatter_elements,
            attrs={"axis": 0, "reduction": "none"}, fusion=OPAQUE, num_inputs=3,
            doc="scatter_elements(data, indices, updates) {axis, reduction}")


# ----- expand, tile, pad ------------------------------------------------------------------
def _expand(x, shape):
    return np.broadcast_to(x, np.broadcast_shapes(x.shape, tuple(_ints(shape)))).copy()


def _infer_expand(ctx: InferContext) -> TensorType:
    x = ctx[0]
    shape = ctx.const(1)
    if shape is None:
        n = _vector_len(ctx, 1, "the target shape")
        rank = max(n, x.rank)
        kept = [d if isinstance(d, int) and d > 1 else None for d in x.shape]
        return TensorType(x.dtype, (None,) * (rank - x.rank) + tuple(kept))
    return TensorType(x.dtype, broadcast_shapes([x.shape, tuple(_ints(shape))], ctx))


register_op("expand", reference=_expand, infer=_infer_expand, fusion=INJ, num_inputs=2,
            shape_inputs=(1,), doc="expand(x, shape): broadcast x and shape against each other")


def _tile(x, repeats):
    reps = _ints(repeats)
    if len(reps) != x.ndim or min(reps, default=0) < 0:
        raise ValueError(f"repeats {reps} do not fit rank {x.ndim}")
    return np.tile(x, reps)


def _infer_tile(ctx: InferContext) -> TensorType:
    x = ctx[0]
    reps = ctx.const(1)
    if reps is None:
        if _vector_len(ctx, 1, "the repeats") != x.rank:
            ctx.fail(f"repeats has length {ctx[1].shape[0]}, not the rank of {x}")
        return TensorType(x.dtype, (None,) * x.rank)
    reps = _ints(reps)
    if len(reps) != x.rank or any(r < 0 for r in reps):
        ctx.fail(f"repeats {reps} must be {x.rank} non-negative numbers")
    return TensorType(x.dtype, tuple(
        d * r if isinstance(d, int) else (d if r == 1 else 0 if r == 0 else None)
        for d, r in zip(x.shape, reps)))


register_op("tile", reference=_tile, infer=_infer_tile, fusion=INJ, num_inputs=2,
            shape_inputs=(1,), doc="tile(x, repeats)")

PAD_MODES = ("constant", "reflect", "edge", "wrap")


def _pad_widths(rank, pads, axes):
    axes = list(range(rank)) if axes is None else _norm_axes(axes, rank)
    pads = _ints(pads)
    if len(pads) != 2 * len(axes):
        raise ValueError(f"pads {pads} must hold 2 numbers per axis ({len(axes)} axes)")
    width = [(0, 0)] * rank
    for i, a in enumerate(axes):
        width[a] = (pads[i], pads[len(axes) + i])
    return width


def _pad(x, pads, value=None, axes=None, mode="constant"):
    width = _pad_widths(x.ndim, pads, axes)
    # Negative pads crop first; the rest pads what is left (as onnxruntime does).
    crop = tuple(slice(-min(b, 0), d - (-min(e, 0))) for (b, e), d in zip(width, x.shape))
    if any(d + min(b, 0) + min(e, 0) < 0 for (b, e), d in zip(width, x.shape)):
        raise ValueError(f"pads {_ints(pads)} remove more elements than {list(x.shape)} has")
    x = x[crop]
    grow = [(max(b, 0), max(e, 0)) for b, e in width]
    if mode == "constant":
        fill = np.zeros((), x.dtype) if value is None or np.size(value) == 0 else \
            np.asarray(value).reshape(-1)[0]
        return np.pad(x, grow, mode="constant", constant_values=fill).astype(x.dtype, copy=False)
    if mode not in PAD_MODES:
        raise ValueError(f"unknown pad mode {mode!r}")
    for (b, e), d in zip(grow, x.shape):
        if (b or e) and (d == 0 or (mode == "reflect" and max(b, e) > d - 1)):
            raise ValueError(f"{mode} padding by {max(b, e)} needs an axis longer than "
                             f"that (after cropping), got {d}")
    return np.pad(x, grow, mode=mode)


def _infer_pad(ctx: InferContext) -> TensorType:
    x = ctx[0]
    if ctx.attrs["mode"] not in PAD_MODES:
        ctx.fail(f"unknown pad mode {ctx.attrs['mode']!r} ({', '.join(PAD_MODES)})")
    if ctx.has(2) and ctx[2].dtype != x.dtype:
        ctx.fail(f"the pad value's dtype {ctx[2].dtype} differs from the input's {x.dtype}")
    pads = ctx.const(1)
    axes = ctx.const(3) if ctx.has(3) else None
    if ctx.has(3) and axes is None:
        _vector_len(ctx, 3, "the padded axes")
        return TensorType(x.dtype, (None,) * x.rank)
    if pads is None:
        n = _vector_len(ctx, 1, "the pads")
        if axes is None and n != 2 * x.rank:
            ctx.fail(f"pads has {n} numbers; {x} needs {2 * x.rank}")
        changed = range(x.rank) if axes is None else _axes(_ints(axes), x.rank, ctx)
        return TensorType(x.dtype, tuple(None if i in changed else d
                                         for i, d in enumerate(x.shape)))
    if axes is not None:
        _axes(_ints(axes), x.rank, ctx)
    try:
        width = _pad_widths(x.rank, pads, axes)
    except ValueError as e:
        ctx.fail(str(e))
    shape = []
    mode = ctx.attrs["mode"]
    for d, (b, e) in zip(x.shape, width):
        if isinstance(d, int):
            left = d + min(b, 0) + min(e, 0)
            if left < 0:
                ctx.fail(f"pads {_ints(pads)} remove more than the {d} elements of an axis")
            grow = max(b, e, 0)
            if grow and mode != "constant" and (left == 0 or (mode == "reflect" and grow >= left)):
                ctx.fail(f"{mode} padding by {grow} needs an axis longer than that (after "
                         f"cropping), got {left}")
            shape.append(d + b + e)
        else:
            shape.append(d if b == e == 0 else None)
    return TensorType(x.dtype, tuple(shape))


register_op("pad", reference=_pad, infer=_infer_pad, attrs={"mode": "constant"}, fusion=INJ,
            num_inputs=(2, 4), shape_inputs=(1, 3),
            doc="pad(x, pads, value?, axes?) {mode: constant/reflect/edge/wrap}: pads are "
                "[begins..., ends...]; negative pads crop")


# ----- shape metadata and generators ------------------------------------------------------
def _shape(x, start=0, end=None):
    return np.array(x.shape[start:end], dtype=np.int64)


def _infer_shape(ctx: InferContext) -> TensorType:
    x = ctx[0]
    n = len(range(x.rank)[ctx.attrs["start"]:ctx.attrs["end"]])
    return TensorType(dtypes.i64, (n,))


register_op("shape", reference=_shape, infer=_infer_shape, attrs={"start": 0, "end": None},
            fusion=OPAQUE, num_inputs=1,
            doc="shape(x) {start, end}: x's dims [start:end] as i64 (Python slice rules)")

def _infer_size(ctx: InferContext) -> TensorType:
    ctx[0]
    return TensorType(dtypes.i64, ())


register_op("size", reference=lambda x: np.array(x.size, dtype=np.int64), infer=_infer_size,
            fusion=OPAQUE, num_inputs=1, doc="size(x): the element count as an i64 scalar")


def _constant_of_shape(shape, value=0.0, dtype=dtypes.f32):
    return np.full(tuple(_ints(shape)), value, dtype=dtype.numpy)


def _infer_constant_of_shape(ctx: InferContext) -> TensorType:
    dtype = ctx.attrs["dtype"]
    if not isinstance(dtype, DType):
        ctx.fail(f"dtype must be a slimc dtype, got {dtype!r}")
    shape = ctx.const(0)
    if shape is None:
        return TensorType(dtype, (None,) * _vector_len(ctx, 0, "the shape"))
    dims = _ints(shape)
    if any(d < 0 for d in dims):
        ctx.fail(f"shape {dims} has a negative size")
    return TensorType(dtype, tuple(dims))


register_op("constant_of_shape", reference=_constant_of_shape, infer=_infer_constant_of_shape,
            attrs={"value": 0.0, "dtype": dtypes.f32}, fusion=INJ, num_inputs=1,
            shape_inputs=(0,), doc="constant_of_shape(shape) {value, dtype}: filled tensor")


def _range_count(start, limit, delta) -> int:
    """ceil((limit - start) / delta), at least 0. Integers exactly; float32/64 subtract in
    their own precision and divide in double, as onnxruntime does (f16/bf16: in double)."""
    dt = np.asarray(start).dtype
    s, l, d = (np.asarray(v).reshape(-1)[0] for v in (start, limit, delta))
    if d == 0:
        raise ValueError("range delta cannot be 0")
    if dt.kind in "iu":
        s, l, d = int(s), int(l), int(d)
        return max(-((s - l) // d), 0)
    diff = float(l - s) if dt in (np.float32, np.float64) else float(l) - float(s)
    return max(int(math.ceil(diff / float(d))), 0)


def _range(start, limit, delta):
    n = _range_count(start, limit, delta)
    s, d = (np.asarray(v).reshape(-1)[0] for v in (start, delta))
    if start.dtype.kind in "iu":
        return (int(s) + np.arange(n, dtype=np.int64) * int(d)).astype(start.dtype)
    return (float(s) + np.arange(n, dtype=np.float64) * float(d)).astype(start.dtype)


def _infer_range(ctx: InferContext) -> TensorType:
    t = ctx[0]
    for i in range(3):
        if ctx[i].rank != 0 and ctx[i].shape != (1,):
            ctx.fail(f"range bounds must be scalars, input {i} is {ctx[i]}")
        if ctx[i].dtype != t.dtype:
            ctx.fail(f"range bounds must share one dtype, got {t.dtype} and {ctx[i].dtype}")
    vals = [ctx.const(i) for i in range(3)]
    if any(v is None for v in vals):
        return TensorType(t.dtype, (None,))
    try:
        return TensorType(t.dtype, (_range_count(*vals),))
    except ValueError as e:
        ctx.fail(str(e))


register_op("range", reference=_range, infer=_infer_range, fusion=INJ, num_inputs=3,
            shape_inputs=(0, 1, 2),
            doc="range(start, limit, delta): start + i*delta for i < ceil((limit-start)/delta)")


def _eye_like(x, k=0, dtype=None):
    dt = x.dtype if dtype is None else dtype.numpy
    return np.eye(x.shape[0], x.shape[1], k, dtype=dt)


def _infer_eye_like(ctx: InferContext) -> TensorType:
    x = ctx[0]
    if x.rank != 2:
        ctx.fail(f"eye_like needs a 2-D input, got {x}")
    return TensorType(ctx.attrs["dtype"] or x.dtype, x.shape)


register_op("eye_like", reference=_eye_like, infer=_infer_eye_like,
            attrs={"k": 0, "dtype": None}, fusion=INJ, num_inputs=1,
            doc="eye_like(x) {k, dtype}: ones on diagonal k, of x's shape")


def _one_hot(indices, depth, values, axis=-1):
    d = int(np.asarray(depth).reshape(-1)[0])
    if d < 1:
        raise ValueError(f"one_hot depth must be positive, got {d}")
    axis = axis + indices.ndim + 1 if axis < 0 else axis
    idx = np.trunc(indices) if indices.dtype.kind == "f" else indices
    idx = idx.astype(np.int64)
    idx = np.where(idx < 0, idx + d, idx)
    shape = [1] * (indices.ndim + 1)
    shape[axis] = d
    hot = np.expand_dims(idx, axis) == np.arange(d).reshape(shape)
    values = values.reshape(-1)
    return np.where(hot, values[1], values[0]).astype(values.dtype)


def _infer_one_hot(ctx: InferContext) -> TensorType:
    idx, values = ctx[0], ctx[2]
    if values.rank != 1 or values.shape[0] not in (2, None) and isinstance(values.shape[0], int):
        ctx.fail(f"values must hold [off, on], got {values}")
    axis = normalize_axis(ctx.attrs["axis"], idx.rank + 1, ctx)
    depth = ctx.const(1)
    if depth is None:
        _vector_len(ctx, 1, "the depth")
        d = None
    else:
        d = int(np.asarray(depth).reshape(-1)[0])
        if d < 1:
            ctx.fail(f"depth must be positive, got {d}")
    shape = list(idx.shape)
    shape.insert(axis, d)
    return TensorType(values.dtype, tuple(shape))


register_op("one_hot", reference=_one_hot, infer=_infer_one_hot, attrs={"axis": -1}, fusion=INJ,
            num_inputs=3, shape_inputs=(1,),
            doc="one_hot(indices, depth, values[off,on]) {axis}; indices < 0 count from depth")


def _trilu(x, k=None, upper=1):
    k = 0 if k is None else _scalar_int(k)
    return np.triu(x, k) if upper else np.tril(x, k)


def _infer_trilu(ctx: InferContext) -> TensorType:
    x = ctx[0]
    if x.rank < 2:
        ctx.fail(f"trilu needs rank >= 2, got {x}")
    return x


register_op("trilu", reference=_trilu, infer=_infer_trilu, attrs={"upper": 1}, fusion=INJ,
            num_inputs=(1, 2), doc="trilu(x, k?) {upper}: keep the upper (or lower) triangle "
                                   "from diagonal k of the last two axes")


def _reverse_sequence(x, lens, batch_axis=1, time_axis=0):
    out = x.copy()
    for b, n in enumerate(_ints(lens)):
        n = min(max(n, 0), x.shape[time_axis])
        src = [slice(None)] * x.ndim
        src[batch_axis] = b
        dst = list(src)
        src[time_axis] = slice(n - 1, None, -1) if n else slice(0, 0)
        dst[time_axis] = slice(0, n)
        out[tuple(dst)] = x[tuple(src)]
    return out


def _infer_reverse_sequence(ctx: InferContext) -> TensorType:
    x = ctx[0]
    b, t = ctx.attrs["batch_axis"], ctx.attrs["time_axis"]
    if x.rank < 2 or {b, t} != {0, 1}:
        ctx.fail(f"batch_axis={b}, time_axis={t} must be 0 and 1 of a rank >= 2 input ({x})")
    if ctx[1].rank != 1:
        ctx.fail(f"sequence_lens must be 1-D, got {ctx[1]}")
    return x


register_op("reverse_sequence", reference=_reverse_sequence, infer=_infer_reverse_sequence,
            attrs={"batch_axis": 1, "time_axis": 0}, fusion=INJ, num_inputs=2,
            doc="reverse_sequence(x, lens) {batch_axis, time_axis}")


# ----- data-dependent shapes --------------------------------------------------------------
def _nonzero(x):
    x = x.reshape(1) if x.ndim == 0 else x  # a scalar reads as a 1-element vector (onnxruntime)
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)


def _infer_nonzero(ctx: InferContext) -> TensorType:
    x = ctx[0]
    c = ctx.const(0)
    return TensorType(dtypes.i64, (max(x.rank, 1),
                                   None if c is None else int(np.count_nonzero(c))))


register_op("nonzero", reference=_nonzero, infer=_infer_nonzero, fusion=OPAQUE, num_inputs=1,
            doc="nonzero(x): i64[rank, count] indices of the non-zero elements (count is "
                "known only for constant x)")


def _compress(x, condition, axis=None):
    cond = np.asarray(condition).reshape(-1).astype(bool)
    n = x.size if axis is None else x.shape[axis]
    if cond.size > n:
        raise ValueError(f"condition has {cond.size} entries for {n} elements")
    return np.compress(cond, x, axis=axis)


def _infer_compress(ctx: InferContext) -> TensorType:
    x = ctx[0]
    c = ctx.const(1)
    n = None if c is None else int(np.count_nonzero(c))
    if ctx.attrs["axis"] is None:
        return TensorType(x.dtype, (n,))
    axis = normalize_axis(ctx.attrs["axis"], x.rank, ctx)
    return TensorType(x.dtype, x.shape[:axis] + (n,) + x.shape[axis + 1:])


register_op("compress", reference=_compress, infer=_infer_compress, attrs={"axis": None},
            fusion=OPAQUE, num_inputs=2,
            doc="compress(x, condition) {axis}: keep the slices where condition is true "
                "(axis none: of the flattened x)")


def _unique(x, sorted=1, axis=None):
    src = x.reshape(-1) if axis is None else x
    ax = 0 if axis is None else (axis + x.ndim if axis < 0 else axis)
    y, idx, inv, cnt = np.unique(src, return_index=True, return_inverse=True,
                                 return_counts=True, axis=None if axis is None else ax)
    inv = inv.reshape(-1)
    if not sorted:
        order = np.argsort(idx, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        idx, cnt, inv = idx[order], cnt[order], rank[inv]
        y = np.take(src, idx, axis=ax)
    i64 = np.int64
    return y, idx.astype(i64), inv.astype(i64), cnt.astype(i64)


def _infer_unique(ctx: InferContext) -> list[TensorType]:
    x = ctx[0]
    c = ctx.const(0)
    if c is not None:
        outs = _unique(c, ctx.attrs["sorted"], ctx.attrs["axis"])
        return [TensorType(x.dtype, outs[0].shape)] + [TensorType(dtypes.i64, o.shape)
                                                      for o in outs[1:]]
    if ctx.attrs["axis"] is None:
        y, inv = (None,), (_product(x.shape),)
    else:
        axis = normalize_axis(ctx.attrs["axis"], x.rank, ctx)
        y = x.shape[:axis] + (None,) + x.shape[axis + 1:]
        inv = (x.shape[axis],)
    return [TensorType(x.dtype, y), TensorType(dtypes.i64, (None,)),
            TensorType(dtypes.i64, inv), TensorType(dtypes.i64, (None,))]


register_op("unique", reference=_unique, infer=_infer_unique, attrs={"sorted": 1, "axis": None},
            fusion=OPAQUE, num_inputs=1, num_outputs=4,
            doc="unique(x) {sorted, axis}: (values, first indices, inverse indices, counts)")
