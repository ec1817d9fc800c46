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

from typing import Sequence

import numpy as np

from ..infer import dim_product, normalize_axis
from ..errors import UnsupportedError
from ..registry import REQUIRED, FusionKind, InferContext, register_op
from ..types import Dim, TensorType

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
