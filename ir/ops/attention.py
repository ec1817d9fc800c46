"""Scaled dot-product attention as one op: ``attention(q, k_t, v, mask?) {scale, zero_nan,
heads_last, inputs_heads_last}``::

    scores = q @ k_t * scale (+ mask)
    P      = softmax(scores, axis=-1)        (then P[isnan(P)] = 0 when zero_nan)
    out    = P @ v

``q`` is [..., M, D], ``k_t`` [..., D, N] (the keys already transposed: the operand the
exported MatMul multiplies by), ``v`` [..., N, E], with equal batch dims; ``mask`` broadcasts
to the scores [..., M, N]. ``zero_nan`` is the guard PyTorch's exporter writes after the softmax
(``Where(IsNaN(P), 0, P)``) for rows the mask removes entirely. ``heads_last`` stores the
result as [..., M, H, E] (H = the last batch dim: the heads) instead of [..., H, M, E], the
transpose exporters write before merging the heads back into one hidden dim: the kernel writes
each head's rows into place instead of a transpose kernel copying them.
``inputs_heads_last`` is the same on the way in: q is [..., M, H, D], the keys [..., N, H, D]
(not transposed) and v [..., N, H, E], the projections' results as the exporters' reshape
leaves them, and the kernel reads each head's rows in place of the transposes that split the
heads (three kernels a layer, each a round trip through memory).

Not an ONNX op: `recognize` forms it from the MatMul, Mul, Add, Softmax, MatMul chain that
exporters write, so that the code generator can keep each block of scores in cache (they never
go to memory) and split the work by blocks of rows of every head.
"""

from __future__ import annotations

import numpy as np

from ..infer import broadcast_shapes
from ..registry import FusionKind, InferContext, register_op
from ..types import TensorType
from .linalg import matmul
from .norm import _softmax


def attention(q, k_t, v, mask=None, scale=1.0, zero_nan=0, heads_last=0, inputs_heads_last=0):
    if inputs_heads_last:  # [..., M, H, D], keys [..., N, H, D], [..., N, H, E]
        rank = q.ndim
        q, k_t, v = (np.transpose(a, heads_split(rank, keys))
                     for a, keys in ((q, False), (k_t, True), (v, False)))
    scores = matmul(q, k_t)
    if scale != 1.0:
        scores = scores * np.asarray(scale, scores.dtype)
    if mask is not None:
        scores = scores + mask
    p = _softmax(scores, axis=-1)
    if zero_nan:
        p = np.where(np.isnan(p), np.zeros((), p.dtype), p)
    out = matmul(p, v)
    return np.swapaxes(out, -3, -2) if heads_last else out


def heads_split(rank: int, keys: bool) -> list:
    """The perm of the transpose exporters write after the reshape that splits the heads, and
    that `inputs_heads_last` reads in its place: [..., rows, H, dim] -> [..., H, rows, dim],
    or for the keys [..., H, dim, rows]."""
    outer = list(range(rank - 3))
    return outer + ([rank - 2, rank - 1, rank - 3] if keys else [rank - 2, rank - 3, rank - 1])


def _heads_first(t: TensorType, keys: bool) -> TensorType:
    """An input given heads last as the op computes on it."""
    return TensorType(t.dtype, tuple(t.shape[i] for i in heads_split(t.rank, keys)))


def _infer_attention(ctx: InferContext) -> TensorType:
    q, k, v = ctx[0], ctx[1], ctx[2]
    for name, t in (("q", q), ("k_t", k), ("v", v)):
        if t.dtype != q.dtype or not t.dtype.is_float:
            ctx.fail(f"{name} is {t}: q, k_t and v must share one floating-point type")
        if t.rank < 2 or t.rank != q.rank:
            ctx.fail(f"{name} is {t}: q, k_t and v must have one rank, at least 2")
    if ctx.attrs["inputs_heads_last"]:
        if q.rank < 3:
            ctx.fail(f"inputs_heads_last needs a heads dim: q is {q}")
        q, k, v = _heads_first(q, False), _heads_first(k, True), _heads_first(v, False)
    if not (q.shape[:-2] == k.shape[:-2] == v.shape[:-2]):
        ctx.fail(f"the batch dims of q {q}, k_t {k} and v {v} differ")
    if q.shape[-1] != k.shape[-2] or k.shape[-1] != v.shape[-2]:
        ctx.fail(f"q {q} @ k_t {k} @ v {v}: the contracted dims differ")
    scores = tuple(q.shape[:-1]) + (k.shape[-1],)
    if ctx.has(3):
        mask = ctx[3]
        if mask.dtype != q.dtype:
            ctx.fail(f"the mask is {mask}, not {q.dtype}")
        if mask.rank > len(scores) or broadcast_shapes([mask.shape, scores], ctx) != scores:
            ctx.fail(f"the mask {mask} does not broadcast to the scores {list(scores)}")
    out = list(q.shape[:-1]) + [v.shape[-1]]
    if ctx.attrs["heads_last"]:
        if len(out) < 3:
            ctx.fail(f"heads_last needs a heads dim: q is {q}")
        out[-3], out[-2] = out[-2], out[-3]
    return TensorType(q.dtype, tuple(out))


register_op("attention", reference=attention, infer=_infer_attention, fusion=FusionKind.OUT_FUSABLE,
            num_inputs=(3, 4),
            attrs={"scale": 1.0, "zero_nan": 0, "heads_last": 0, "inputs_heads_last": 0},
            doc="attention(q, k_t, v, mask?) {scale, zero_nan, heads_last, inputs_heads_last}: "
                "softmax(q@k_t*scale + mask) @ v")
