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
  with no transpose after it (the kernel transposes its result tiles in registers).

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


def sparse_matmul(b, values, indices, offsets, rows=None, block=1, transpose_out=0):
    a = densify(values, indices, offsets, int(rows), int(block), b.shape[-2])
    y = np.matmul(a, b.astype(np.float32)).astype(b.dtype)
    return np.swapaxes(y, -1, -2) if transpose_out else y


def _infer(ctx: InferContext) -> TensorType:
    b, values, indices, offsets = ctx[0], ctx[1], ctx[2], ctx[3]
    rows, block = ctx.attrs["rows"], ctx.attrs["block"]
    if not isinstance(rows, int) or rows < 1:
        ctx.fail(f"rows must be a positive integer, got {rows!r}")
    if not isinstance(block, int) or block < 1:
        ctx.fail(f"block must be a positive integer, got {block!r}")
    if b.dtype != dtypes.f32 or b.rank < 2:
        ctx.fail(f"b must be an f32 matrix [..., K, C], got {b}")
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
    tail = (b.shape[-1], rows) if ctx.attrs["transpose_out"] else (rows, b.shape[-1])
    return TensorType(b.dtype, tuple(b.shape[:-2]) + tail)


register_op("sparse_matmul", reference=sparse_matmul, infer=_infer,
            attrs={"rows": REQUIRED, "block": 1, "transpose_out": 0}, fusion=FusionKind.OUT_FUSABLE,
            num_inputs=(4, 4),
            doc="sparse_matmul(b[..., K, C], values, indices, offsets) {rows, block, "
                "transpose_out}: A @ b (transposed: [..., C, rows]), A a constant [rows, K] "
                "matrix in block-compressed rows (blocks of block x 1)")
