"""Sparse ops: a constant sparse matrix times a dense tensor.

* ``sparse_matmul(b, values, indices, offsets) {rows, block}`` -- ``A @ b`` for a constant
  sparse ``A`` of shape [rows, K] (K = ``b.shape[-2]``), ``b`` dense [..., K, C], the result
  [..., rows, C]. ``A`` is stored in block-compressed rows (BSR with blocks of ``block`` x 1):
  row block ``i`` (rows ``i*block`` to ``i*block + block - 1``) owns blocks
  ``offsets[i]`` to ``offsets[i+1] - 1``; block ``j`` sits in column ``indices[j]`` and holds
  ``values[j*block : (j+1)*block]``, one value per row of the block. ``block`` = 1 is plain
  CSR (unstructured sparsity); ``block`` = 8 or 16 is a pruned model's 1x8 / 1x16 pattern
  seen from the weight's [K, N] side (one input, that many consecutive outputs). Rows past
  ``rows`` in the last block hold zeros. With ``transpose_out`` = 1 the result is stored
  transposed, [..., C, rows]: a matmul ``x @ W`` is ``sparse_matmul(transpose(x), A = W^T)``
  with no transpose after it (the kernel transposes its result tiles in registers). With
  ``tiled`` = 1 as well, b holds x's rows in tiles, [..., tiles, K, tile], and the result
  puts them back in one run, [..., tiles * tile, rows]: the same bytes as [..., tiles, tile,
  rows], so threads that split the tiles each read and write whole runs of memory of their
  own (see the `sparsify` pass's TOKEN_TILE). With ``x_rows`` = 1 the first input is b's
  transpose, x [..., C, K] (a matmul's activation rows, as the `sparsify` pass gives a tiled
  product its tiles [..., tiles, tile, K]): each thread transposes the entries it works on
  into scratch of its own, in cache, instead of a kernel before it writing x^T to memory.

* ``sparse_conv(x, values, indices, offsets) {rows, block}`` -- a 1x1 convolution (stride 1,
  no padding, one group) of ``x`` [N, K, *spatial] by the same compressed ``A`` [rows, K]:
  ``sparse_matmul`` on ``x`` seen as [N, K, prod(spatial)], the result [N, rows, *spatial].
  An op of its own, rather than reshapes around a sparse_matmul, so the image stays an image:
  the layout pass sees a convolution's neighbours, and elementwise producers and consumers
  fuse into it.

Why ``A @ b`` with the sparse matrix on the left: the kernel then runs along the columns of
``b`` (the pixels of an NCHW image, the tokens of a transposed activation), so each nonzero
multiplies a contiguous vector. The `sparsify` pass writes a matmul ``x @ W`` as
``(W^T @ transpose(x))^T`` and a 1x1 convolution ``W[O, C] * x[N, C, H*W]`` as is.

The three arrays are ordinary constant inputs: the interpreter, constant folding and the
printer treat them like any weight. `compress` and `densify` convert, and define the format.
"""

from __future__ import annotations

import numpy as np

from ..registry import REQUIRED, FusionKind, InferContext, register_op
from ..types import TensorType, dtypes


def compress(a: np.ndarray, block: int = 1):
    """Dense [R, K] -> (values f32 [nblocks*block], indices i32 [nblocks], offsets i32
    [ceil(R/block)+1]): every block of `block` rows x 1 column holding a nonzero is kept."""
    a = np.asarray(a, np.float32)
    r, k = a.shape
    nrb = -(-r // block)
    padded = np.zeros((nrb * block, k), np.float32)
    padded[:r] = a
    blocks = padded.reshape(nrb, block, k).transpose(0, 2, 1)  # [row block, column, row]
    keep = np.any(blocks != 0, axis=2)  # [row block, column]
    rb, col = np.nonzero(keep)  # row-major: by row block, then column
    values = blocks[rb, col].reshape(-1)
    offsets = np.zeros(nrb + 1, np.int64)
    np.cumsum(np.bincount(rb, minlength=nrb), out=offsets[1:])
    return values.astype(np.float32), col.astype(np.int32), offsets.astype(np.int32)


def densify(values, indices, offsets, rows: int, block: int, k: int) -> np.ndarray:
    """The dense [rows, k] matrix the compressed arrays describe (`compress`'s inverse)."""
    nrb = len(offsets) - 1
    a = np.zeros((nrb, k, block), np.float32)
    rb = np.repeat(np.arange(nrb), np.diff(np.asarray(offsets, np.int64)))
    a[rb, np.asarray(indices, np.int64)] = np.asarray(values, np.float32).reshape(-1, block)
    return a.transpose(0, 2, 1).reshape(nrb * block, k)[:rows]


def operand_shape(x_shape, x_rows) -> tuple:
    """The dense operand's shape [..., K, C] from the first input's (x [..., C, K] when
    `x_rows`)."""
    x_shape = tuple(x_shape)
    return x_shape[:-2] + (x_shape[-1], x_shape[-2]) if x_rows else x_shape


def sparse_matmul(b, values, indices, offsets, rows=None, block=1, transpose_out=0, tiled=0,
                  x_rows=0):
    if x_rows:
        b = np.swapaxes(b, -1, -2)
    a = densify(values, indices, offsets, int(rows), int(block), b.shape[-2])
    y = np.matmul(a, b.astype(np.float32)).astype(b.dtype)
    if not transpose_out:
        return y
    y = np.swapaxes(y, -1, -2)
    return y.reshape(y.shape[:-3] + (-1, y.shape[-1])) if tiled else y


def _infer(ctx: InferContext) -> TensorType:
    b = ctx[0]
    rows = ctx.attrs["rows"]
    if b.rank < 2:
        ctx.fail(f"b must be an f32 matrix [..., K, C] (x [..., C, K] with x_rows), got {b}")
    if ctx.attrs["x_rows"] not in (0, 1):
        ctx.fail(f"x_rows must be 0 or 1, got {ctx.attrs['x_rows']!r}")
    b = TensorType(b.dtype, operand_shape(b.shape, ctx.attrs["x_rows"]))
    _check_compressed(ctx, rows, ctx.attrs["block"])
    if not ctx.attrs["transpose_out"]:
        return TensorType(b.dtype, tuple(b.shape[:-2]) + (rows, b.shape[-1]))
    if not ctx.attrs["tiled"]:
        return TensorType(b.dtype, tuple(b.shape[:-2]) + (b.shape[-1], rows))
    if b.rank < 3:
        ctx.fail(f"tiled needs b as [..., tiles, K, tile], got {b}")
    tiles, tile = b.shape[-3], b.shape[-1]
    run = tiles * tile if isinstance(tiles, int) and isinstance(tile, int) else None
    return TensorType(b.dtype, tuple(b.shape[:-3]) + (run, rows))


def _check_compressed(ctx: InferContext, rows, block) -> None:
    b, values, indices, offsets = ctx[0], ctx[1], ctx[2], ctx[3]
    if not isinstance(rows, int) or rows < 1:
        ctx.fail(f"rows must be a positive integer, got {rows!r}")
    if not isinstance(block, int) or block < 1:
        ctx.fail(f"block must be a positive integer, got {block!r}")
    if b.dtype != dtypes.f32:
        ctx.fail(f"the dense operand must be f32, got {b}")
    if values.dtype != dtypes.f32 or values.rank != 1:
        ctx.fail(f"values must be an f32 vector, got {values}")
    for name, t in (("indices", indices), ("offsets", offsets)):
        if t.dtype != dtypes.i32 or t.rank != 1:
            ctx.fail(f"{name} must be an i32 vector, got {t}")
    nrb = -(-rows // block)
    if isinstance(offsets.shape[0], int) and offsets.shape[0] != nrb + 1:
        ctx.fail(f"offsets {offsets} must have {nrb + 1} entries (row blocks + 1)")
    nnz = indices.shape[0]
    if isinstance(nnz, int) and isinstance(values.shape[0], int) and \
            values.shape[0] != nnz * block:
        ctx.fail(f"values {values} must hold {block} per block ({nnz} blocks)")


def sparse_conv(x, values, indices, offsets, rows=None, block=1):
    n, k = x.shape[:2]
    y = sparse_matmul(x.reshape(n, k, -1), values, indices, offsets, rows=rows, block=block)
    return y.reshape((n, int(rows)) + x.shape[2:])


def _infer_conv(ctx: InferContext) -> TensorType:
    x = ctx[0]
    if x.rank < 3:
        ctx.fail(f"x must be [N, C, *spatial], got {x}")
    _check_compressed(ctx, ctx.attrs["rows"], ctx.attrs["block"])
    return TensorType(x.dtype, (x.shape[0], ctx.attrs["rows"]) + tuple(x.shape[2:]))


register_op("sparse_matmul", reference=sparse_matmul, infer=_infer,
            attrs={"rows": REQUIRED, "block": 1, "transpose_out": 0, "tiled": 0, "x_rows": 0},
            fusion=FusionKind.OUT_FUSABLE, num_inputs=(4, 4),
            doc="sparse_matmul(b[..., K, C], values, indices, offsets) {rows, block, "
                "transpose_out, tiled, x_rows}: A @ b (transposed: [..., C, rows]; "
                "transposed and tiled: b [..., T, K, C], the result [..., T * C, rows]; "
                "x_rows: the first input is b's transpose [..., C, K]), A a constant "
                "[rows, K] matrix in block-compressed rows (blocks of block x 1)")
register_op("sparse_conv", reference=sparse_conv, infer=_infer_conv,
            attrs={"rows": REQUIRED, "block": 1}, fusion=FusionKind.OUT_FUSABLE,
            num_inputs=(4, 4),
            doc="sparse_conv(x[N, K, *S], values, indices, offsets) {rows, block}: 1x1 "
                "convolution by a constant [rows, K] matrix in block-compressed rows")
