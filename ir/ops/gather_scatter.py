"""Gathers and scatters: ops that read or write elements at indices given as data.

Gathers are INJECTIVE (each output element is one input element chosen by index arithmetic);
scatters are OPAQUE (several updates may land on one element). Conventions as in tensor.py.
"""

from __future__ import annotations


import numpy as np

from ..infer import normalize_axis
from ..registry import FusionKind, InferContext, register_op
from ..types import TensorType
from .tensor import (_check_index_dtype, _same_dim, _wrap_indices)

INJ = FusionKind.INJECTIVE
OPAQUE = FusionKind.OPAQUE


# ----- gathers ----------------------------------------------------------------------------
def _check_constant_indices(ctx: InferContext, sizes, i: int = 1) -> None:
    """Constant indices (input i) outside [-n, n) for the dimension each indexes (`sizes`,
    broadcast against them) are the model's error, said at compile time: the compiled code
    cannot raise at run time, and reads element 0 for such an index."""
    idx = ctx.const(i)
    sizes = np.asarray(sizes, dtype=object)
    if idx is None or idx.size == 0 or not all(isinstance(n, (int, np.integer))
                                               for n in sizes.reshape(-1)):
        return
    n = np.broadcast_to(sizes.astype(np.int64), idx.shape)
    bad = (idx < -n) | (idx >= n)
    if np.any(bad):
        where = tuple(int(w[0]) for w in np.nonzero(bad))
        ctx.fail(f"index {int(idx[where])} at {list(where)} of the constant indices (input {i})"
                 f" is outside [-{int(n[where])}, {int(n[where]) - 1}], the dimension it indexes")


def _gather(data, indices, axis=0):
    axis = axis + data.ndim if axis < 0 else axis
    return np.take(data, _wrap_indices(indices, data.shape[axis]), axis=axis)


def _infer_gather(ctx: InferContext) -> TensorType:
    data, idx = ctx[0], ctx[1]
    _check_index_dtype(ctx, 1)
    axis = normalize_axis(ctx.attrs["axis"], data.rank, ctx)
    _check_constant_indices(ctx, data.shape[axis])
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
    _check_constant_indices(ctx, data.shape[normalize_axis(ctx.attrs["axis"], data.rank, ctx)])
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
    _check_constant_indices(ctx, np.array(data.shape[b:b + k], dtype=object))
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
    _check_constant_indices(ctx, np.array(data.shape[:k], dtype=object))
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
    axis = normalize_axis(ctx.attrs["axis"], data.rank, ctx)
    if not (data.rank == idx.rank == upd.rank) or upd.dtype != data.dtype:
        ctx.fail(f"data {data}, indices {idx} and updates {upd} must have one rank")
    _check_constant_indices(ctx, data.shape[axis])
    for a, c in zip(idx.shape, upd.shape):
        _same_dim(a, c, ctx, f"indices {idx} and updates {upd} differ in shape")
    return data


register_op("scatter_elements", reference=_scatter_elements, infer=_infer_scatter_elements,
            attrs={"axis": 0, "reduction": "none"}, fusion=OPAQUE, num_inputs=3,
            doc="scatter_elements(data, indices, updates) {axis, reduction}")
