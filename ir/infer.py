"""Building blocks for type inference, shared by the op declarations.

Shapes here may hold symbolic (str) or unknown (None) dimensions; every helper keeps a symbol
when it can prove the result and falls back to unknown when it cannot, never guessing.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from .registry import InferContext
from .types import Dim, TensorType, dtypes


def same_as_input(i: int = 0):
    def infer(ctx: InferContext) -> TensorType:
        return ctx[i]

    infer.__name__ = f"same_as_input_{i}"
    return infer


def broadcast_dims(a: Dim, b: Dim, ctx: Optional[InferContext] = None) -> Dim:
    if a == b:
        return a
    if a == 1:
        return b
    if b == 1:
        return a
    if isinstance(a, int) and isinstance(b, int):
        msg = f"shapes cannot broadcast: dimension {a} against {b}"
        if ctx is not None:
            ctx.fail(msg)
        raise ValueError(msg)
    # One side is symbolic/unknown: if the other is a concrete size > 1 the result is that size
    # (a valid program must have the symbol equal to it or 1).
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return None


def broadcast_shapes(shapes: Sequence[Sequence[Dim]], ctx: Optional[InferContext] = None) -> tuple:
    rank = max((len(s) for s in shapes), default=0)
    out: list[Dim] = [1] * rank
    for s in shapes:
        padded = (1,) * (rank - len(s)) + tuple(s)
        out = [broadcast_dims(a, b, ctx) for a, b in zip(out, padded)]
    return tuple(out)


def same_dtype_or_fail(ctx: InferContext, first: int = 0) -> None:
    """Inputs `first`.. must share one dtype, as the single type constraint T of ONNX's Add,
    Mul, Where, ... says: a mixed pair would pass inference and then fail in code generation
    (whose kernels take one element type) or be computed by numpy's promotion."""
    typed = [(i, t) for i, t in enumerate(ctx.inputs) if i >= first and t is not None]
    for i, t in typed[1:]:
        if t.dtype != typed[0][1].dtype:
            ctx.fail(f"input {typed[0][0]} is {typed[0][1].dtype} and input {i} is {t.dtype}: "
                     f"the inputs must have one dtype (cast one of them)")


def broadcast_infer(result_dtype=None, dtype_from: int = 0, same_dtype: bool = False):
    """Inference for n-ary broadcasting ops; the output dtype is `result_dtype` or input's.
    With `same_dtype`, the inputs from `dtype_from` on must share it (`same_dtype_or_fail`)."""

    def infer(ctx: InferContext) -> TensorType:
        if same_dtype:
            same_dtype_or_fail(ctx, dtype_from)
        present = [t for t in ctx.inputs if t is not None]
        shape = broadcast_shapes([t.shape for t in present], ctx)
        dt = result_dtype or ctx[dtype_from].dtype
        return TensorType(dt, shape)

    return infer


def normalize_axis(axis: int, rank: int, ctx: InferContext, allow_end: bool = False) -> int:
    hi = rank + 1 if allow_end else rank
    if not -hi <= axis < hi:
        ctx.fail(f"axis {axis} is out of range for rank {rank}")
    return axis + hi if axis < 0 else axis


def dim_product(dims: Sequence[Dim]) -> Dim:
    n = 1
    for d in dims:
        if not isinstance(d, int):
            return None
        n *= d
    return n


def static_shape_or_fail(t: TensorType, ctx: InferContext, what: str = "input") -> tuple:
    if not t.is_static:
        ctx.fail(f"{what} needs a static shape here, got {t}")
    return t.shape


def infer_by_reference(ctx: InferContext) -> list[TensorType]:
    """Types from running the reference on stand-in inputs (constant data, else zeros).

    For ops whose output shape is a complicated but pure function of input shapes, attributes
    and the constant ``shape_inputs`` (resize, einsum): it cannot disagree with the reference.
    Refused when a shape-deciding input is not constant or a shape is not static.
    """
    args = []
    for i, t in enumerate(ctx.inputs):
        if t is None:
            args.append(None)
            continue
        c = ctx.const(i)
        if c is None and i in ctx.opdef.shape_inputs:
            ctx.const_required(i, "a shape-deciding input")
        if c is None:
            if not t.is_static:
                ctx.fail(f"input {i} needs a static shape for type inference, got {t}")
            c = np.zeros(t.shape, dtype=t.dtype.numpy)
        args.append(c)
    with np.errstate(all="ignore"):
        outs = ctx.opdef.run_reference(args, ctx.attrs)
    return [TensorType(dtypes.from_numpy(o.dtype), o.shape) for o in outs]
