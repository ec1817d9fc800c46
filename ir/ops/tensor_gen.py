"""Copies that grow a tensor (expand, tile, pad), metadata and generators (shape, size, range,
constant_of_shape, eye_like, one_hot, ...), and ops whose output shape the data decides
(nonzero, compress, unique). The shape-input and fusion-kind conventions are tensor.py's.
"""

from __future__ import annotations

import math

import numpy as np

from ..infer import broadcast_shapes, normalize_axis
from ..registry import FusionKind, InferContext, register_op
from ..types import DType, TensorType, dtypes
from .tensor import (_axes, _ints, _norm_axes, _product, _scalar_int, _vector_len)

INJ = FusionKind.INJECTIVE
OPAQUE = FusionKind.OPAQUE


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
