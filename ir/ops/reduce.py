"""Reductions, arg reductions, scans and top-k.

One spelling for every reduction: ``reduce_<kind>(x) {axes, keepdims}``.

* ``axes`` -- a list of axes (negative counts from the end; duplicates are an error), or
  ``None`` for all axes. An empty list reduces over no axis: the op is then its elementwise
  part alone (``reduce_sum_square`` squares, ``reduce_l1`` takes the absolute value,
  ``reduce_log_sum`` takes the log, ``reduce_sum`` / ``reduce_max`` ... copy), which is what
  ONNX's ``noop_with_empty_axes`` means.
* ``keepdims`` -- 1 keeps each reduced axis with size 1, 0 drops it.

Over an empty set (a reduced axis of size 0) each reduction gives its identity: 0 for sums,
1 for the product, -inf (or the dtype's minimum; False for bool) for the max, +inf (or the
maximum; True) for the min, -inf for the log-sums, and NaN for the mean (0/0).

Numerics: float16 / bfloat16 accumulate in float32; integer inputs of reductions defined
through a float function (mean, l2, log_sum, log_sum_exp) compute in float64 and truncate
toward zero, as onnxruntime does; integer sums wrap as the dtype does.

Also here: ``arg_max`` / ``arg_min`` (int64 indices; ties give the first index, or the last
with ``select_last_index``), ``cumsum(x, axis)`` (``exclusive``, ``reverse``), and
``top_k(x, k)`` with two outputs (values, int64 indices), ties broken by the lower index.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..registry import FusionKind, InferContext, register_op
from ..types import TensorType, dtypes

RED = FusionKind.REDUCTION


# ----- helpers ---------------------------------------------------------------------------------

def _acc_dtype(dt: np.dtype) -> np.dtype:
    """Accumulation dtype: float32 for the half-precision floats, the dtype itself otherwise."""
    if dt == np.float16 or dt.kind == "V" or dt.name == "bfloat16":
        return np.dtype(np.float32)
    return dt


def _is_int(dt: np.dtype) -> bool:
    return dt.kind in "iu"


def _axes_tuple(axes, ndim: int) -> Optional[tuple]:
    if axes is None:
        return None
    return tuple(sorted(int(a) % ndim if ndim else int(a) for a in axes))


def _finish(res, dtype: np.dtype) -> np.ndarray:
    """Cast a float result back; integers truncate toward zero (C casts, onnxruntime)."""
    res = np.asarray(res)
    if _is_int(dtype) and res.dtype.kind == "f":
        with np.errstate(all="ignore"):
            res = np.trunc(res)
    return res.astype(dtype, copy=False)


def _count(shape, axes: Optional[tuple]) -> int:
    n = 1
    for i, d in enumerate(shape):
        if axes is None or i in axes:
            n *= d
    return n


# ----- references ------------------------------------------------------------------------------

def reduce_sum(x, axes=None, keepdims=1):
    ax = _axes_tuple(axes, x.ndim)
    return _finish(np.sum(x, axis=ax, keepdims=bool(keepdims), dtype=_acc_dtype(x.dtype)), x.dtype)


def reduce_mean(x, axes=None, keepdims=1):
    ax = _axes_tuple(axes, x.ndim)
    n = _count(x.shape, ax)
    if _is_int(x.dtype):
        s = np.sum(x, axis=ax, keepdims=bool(keepdims), dtype=np.float64)
        return _finish(s / n if n else np.full_like(s, np.nan), x.dtype)
    acc = _acc_dtype(x.dtype)
    s = np.sum(x, axis=ax, keepdims=bool(keepdims), dtype=acc)
    with np.errstate(all="ignore"):
        return (s / np.asarray(n, acc)).astype(x.dtype)


def _extreme(kind: str):
    ufunc = np.maximum if kind == "max" else np.minimum

    def reference(x, axes=None, keepdims=1):
        ax = _axes_tuple(axes, x.ndim)
        work = x.astype(np.float32) if _acc_dtype(x.dtype) != x.dtype else x
        kw = {}
        if x.size == 0:
            if work.dtype == np.bool_:
                kw["initial"] = kind == "min"
            elif _is_int(work.dtype):
                info = np.iinfo(work.dtype)
                kw["initial"] = info.min if kind == "max" else info.max
            else:
                kw["initial"] = -np.inf if kind == "max" else np.inf
        return np.asarray(ufunc.reduce(work, axis=ax, keepdims=bool(keepdims), **kw)).astype(x.dtype)

    reference.__name__ = f"reduce_{kind}"
    return reference


def reduce_prod(x, axes=None, keepdims=1):
    ax = _axes_tuple(axes, x.ndim)
    return _finish(np.prod(x, axis=ax, keepdims=bool(keepdims), dtype=_acc_dtype(x.dtype)), x.dtype)


def reduce_l1(x, axes=None, keepdims=1):
    ax = _axes_tuple(axes, x.ndim)
    return _finish(np.sum(np.abs(x), axis=ax, keepdims=bool(keepdims), dtype=_acc_dtype(x.dtype)),
                   x.dtype)


def reduce_sum_square(x, axes=None, keepdims=1):
    ax = _axes_tuple(axes, x.ndim)
    xa = x.astype(_acc_dtype(x.dtype), copy=False)
    return _finish(np.sum(xa * xa, axis=ax, keepdims=bool(keepdims)), x.dtype)


def reduce_l2(x, axes=None, keepdims=1):
    ax = _axes_tuple(axes, x.ndim)
    xa = x.astype(np.float64 if _is_int(x.dtype) else _acc_dtype(x.dtype), copy=False)
    return _finish(np.sqrt(np.sum(xa * xa, axis=ax, keepdims=bool(keepdims))), x.dtype)


def reduce_log_sum(x, axes=None, keepdims=1):
    ax = _axes_tuple(axes, x.ndim)
    xa = x.astype(np.float64 if _is_int(x.dtype) else _acc_dtype(x.dtype), copy=False)
    with np.errstate(all="ignore"):
        return _finish(np.log(np.sum(xa, axis=ax, keepdims=bool(keepdims))), x.dtype)


def reduce_log_sum_exp(x, axes=None, keepdims=1):
    """log(sum(exp(x))) computed as m + log(sum(exp(x - m))) with m the (finite) max."""
    ax = _axes_tuple(axes, x.ndim)
    xa = x.astype(np.float64 if _is_int(x.dtype) else _acc_dtype(x.dtype), copy=False)
    kept = tuple(1 if ax is None or i in ax else d for i, d in enumerate(x.shape))
    with np.errstate(all="ignore"):
        if xa.size == 0:
            m = np.zeros(kept, xa.dtype)
        else:
            m = np.max(xa, axis=ax, keepdims=True)
            m = np.where(np.isfinite(m), m, np.zeros((), xa.dtype))
        res = np.log(np.sum(np.exp(xa - m), axis=ax, keepdims=True)) + m
    if not keepdims:
        res = res.reshape(tuple(d for i, d in enumerate(x.shape) if not (ax is None or i in ax)))
    return _finish(res, x.dtype)


REDUCTIONS = {
    "reduce_sum": reduce_sum,
    "reduce_mean": reduce_mean,
    "reduce_max": _extreme("max"),
    "reduce_min": _extreme("min"),
    "reduce_prod": reduce_prod,
    "reduce_l1": reduce_l1,
    "reduce_l2": reduce_l2,
    "reduce_sum_square": reduce_sum_square,
    "reduce_log_sum": reduce_log_sum,
    "reduce_log_sum_exp": reduce_log_sum_exp,
}
# Reductions that accept bool input (the others are arithmetic).
BOOL_OK = {"reduce_max", "reduce_min"}


# ----- type inference --------------------------------------------------------------------------

def normalize_axes(axes, rank: int, ctx: InferContext) -> Optional[list]:
    """Axes attribute -> sorted non-negative list (None stays None); errors name the problem."""
    if axes is None:
        return None
    if isinstance(axes, (int, np.integer)) and not isinstance(axes, bool):
        axes = [axes]
    if not isinstance(axes, (list, tuple)) or not all(
            isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in axes):
        ctx.fail(f"attribute 'axes' must be a list of ints or none, got {axes!r}")
    out = []
    for a in axes:
        a = int(a)
        if not -rank <= a < rank:
            ctx.fail(f"axis {a} is out of range for an input of rank {rank}")
        out.append(a % rank)
    if len(set(out)) != len(out):
        ctx.fail(f"attribute 'axes' {list(axes)} names an axis twice")
    return sorted(out)


def _check_flag(ctx: InferContext, name: str) -> int:
    v = ctx.attrs[name]
    if isinstance(v, bool) or v in (0, 1):
        return int(v)
    ctx.fail(f"attribute {name!r} must be 0 or 1, got {v!r}")


def reduced_shape(shape: tuple, axes: Optional[list], keepdims: int) -> tuple:
    out = []
    for i, d in enumerate(shape):
        if axes is None or i in axes:
            if keepdims:
                out.append(1)
        else:
            out.append(d)
    return tuple(out)


def _reduce_infer(name: str):
    def infer(ctx: InferContext) -> TensorType:
        t = ctx[0]
        if t.dtype == dtypes.bool and name not in BOOL_OK:
            ctx.fail(f"{name} does not take bool input")
        axes = normalize_axes(ctx.attrs["axes"], t.rank, ctx)
        keepdims = _check_flag(ctx, "keepdims")
        return TensorType(t.dtype, reduced_shape(t.shape, axes, keepdims))

    infer.__name__ = f"infer_{name}"
    return infer


for _name, _fn in REDUCTIONS.items():
    register_op(_name, reference=_fn, infer=_reduce_infer(_name), fusion=RED, num_inputs=1,
                attrs={"axes": None, "keepdims": 1},
                doc=f"{_name}(x) {{axes: list of ints or none (all), keepdims: 0/1}}")


# ----- arg_max / arg_min -----------------------------------------------------------------------

def _arg(kind: str):
    fn = np.argmax if kind == "max" else np.argmin

    def reference(x, axis=0, keepdims=1, select_last_index=0):
        axis = int(axis) % x.ndim
        work = x.astype(np.float32) if _acc_dtype(x.dtype) != x.dtype else x
        if select_last_index:
            n = x.shape[axis]
            idx = n - 1 - fn(np.flip(work, axis), axis=axis, keepdims=bool(keepdims))
        else:
            idx = fn(work, axis=axis, keepdims=bool(keepdims))
        return np.asarray(idx, dtype=np.int64)

    reference.__name__ = f"arg_{kind}"
    return reference


def _infer_arg(ctx: InferContext) -> TensorType:
    t = ctx[0]
    if t.rank == 0:
        ctx.fail("input must have rank >= 1")
    axis = ctx.attrs["axis"]
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        ctx.fail(f"attribute 'axis' must be an int, got {axis!r}")
    if not -t.rank <= axis < t.rank:
        ctx.fail(f"axis {axis} is out of range for an input of rank {t.rank}")
    axis = int(axis) % t.rank
    if t.shape[axis] == 0:
        ctx.fail(f"axis {axis} has size 0: there is no index to return")
    keepdims = _check_flag(ctx, "keepdims")
    _check_flag(ctx, "select_last_index")
    return TensorType(dtypes.i64, reduced_shape(t.shape, [axis], keepdims))


for _kind in ("max", "min"):
    register_op(f"arg_{_kind}", reference=_arg(_kind), infer=_infer_arg, fusion=RED, num_inputs=1,
                attrs={"axis": 0, "keepdims": 1, "select_last_index": 0},
                doc=f"arg_{_kind}(x) -> i64 {{axis, keepdims, select_last_index}}: index of the "
                    f"{_kind}imum along axis; ties give the first (or last) index")


# ----- cumsum ----------------------------------------------------------------------------------

def _scalar_int(a, what: str, ctx: Optional[InferContext] = None) -> int:
    a = np.asarray(a)
    if a.size != 1 or a.ndim > 1 or a.dtype.kind not in "iu":
        msg = f"{what} must be an integer scalar (or 1-element tensor), got {a.dtype}{list(a.shape)}"
        if ctx is not None:
            ctx.fail(msg)
        raise ValueError(msg)
    return int(a.reshape(-1)[0])


def cumsum(x, axis, exclusive=0, reverse=0):
    """Running sum along `axis` (an integer scalar input)."""
    ax = _scalar_int(axis, "axis")
    if x.ndim == 0 or not -x.ndim <= ax < x.ndim:
        raise ValueError(f"axis {ax} is out of range for rank {x.ndim}")
    ax %= x.ndim
    work = np.flip(x, ax) if reverse else x
    out = np.cumsum(work, axis=ax, dtype=_acc_dtype(x.dtype))
    if exclusive:
        shifted = np.zeros_like(out)
        src = [slice(None)] * x.ndim
        dst = [slice(None)] * x.ndim
        src[ax] = slice(0, -1)
        dst[ax] = slice(1, None)
        shifted[tuple(dst)] = out[tuple(src)]
        out = shifted
    if reverse:
        out = np.flip(out, ax)
    return np.ascontiguousarray(out.astype(x.dtype, copy=False))


def _infer_cumsum(ctx: InferContext) -> TensorType:
    t = ctx[0]
    if t.dtype == dtypes.bool:
        ctx.fail("cumsum does not take bool input")
    if t.rank == 0:
        ctx.fail("input must have rank >= 1")
    a = ctx[1]
    if a.dtype not in (dtypes.i32, dtypes.i64) or a.rank > 1:
        ctx.fail(f"axis must be an i32/i64 scalar, got {a}")
    c = ctx.const(1)
    if c is not None:
        ax = _scalar_int(c, "axis", ctx)
        if not -t.rank <= ax < t.rank:
            ctx.fail(f"axis {ax} is out of range for an input of rank {t.rank}")
    _check_flag(ctx, "exclusive")
    _check_flag(ctx, "reverse")
    return t


register_op("cumsum", reference=cumsum, infer=_infer_cumsum, fusion=FusionKind.OPAQUE,
            num_inputs=2, shape_inputs=(1,), attrs={"exclusive": 0, "reverse": 0},
            doc="cumsum(x, axis) {exclusive, reverse}: running sum along the scalar input axis")


# ----- top_k -----------------------------------------------------------------------------------

def top_k(x, k, axis=-1, largest=1, sorted=1):
    """The k largest (smallest) entries along axis and their int64 indices; equal values are
    ordered by lower index first. Results are always sorted (ONNX leaves the order free when
    sorted=0)."""
    kk = _scalar_int(k, "k")
    ax = int(axis) % x.ndim
    n = x.shape[ax]
    if not 0 <= kk <= n:
        raise ValueError(f"k = {kk} is out of range for an axis of size {n}")
    work = x.astype(np.float32) if _acc_dtype(x.dtype) != x.dtype else x
    if largest:
        # Stable ascending sort of the reversed axis, read backwards: descending values, and
        # among equal values the lower original index first.
        order = np.argsort(np.flip(work, ax), axis=ax, kind="stable")
        order = np.flip(order, ax)
        idx = (n - 1) - np.take(order, np.arange(kk), axis=ax)
    else:
        order = np.argsort(work, axis=ax, kind="stable")
        idx = np.take(order, np.arange(kk), axis=ax)
    idx = idx.astype(np.int64)
    return np.take_along_axis(x, idx, axis=ax), idx


def _infer_top_k(ctx: InferContext):
    t = ctx[0]
    if t.rank == 0:
        ctx.fail("input must have rank >= 1")
    axis = ctx.attrs["axis"]
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        ctx.fail(f"attribute 'axis' must be an int, got {axis!r}")
    if not -t.rank <= axis < t.rank:
        ctx.fail(f"axis {axis} is out of range for an input of rank {t.rank}")
    axis = int(axis) % t.rank
    _check_flag(ctx, "largest")
    _check_flag(ctx, "sorted")
    kt = ctx[1]
    if kt.dtype != dtypes.i64 or kt.rank > 1 or (kt.rank == 1 and kt.shape[0] not in (1, None)):
        ctx.fail(f"k must be an i64 scalar or 1-element tensor, got {kt}")
    c = ctx.const(1)
    kdim = None
    if c is not None:
        kdim = _scalar_int(c, "k", ctx)
        if kdim < 0:
            ctx.fail(f"k = {kdim} is negative")
        n = t.shape[axis]
        if isinstance(n, int) and kdim > n:
            ctx.fail(f"k = {kdim} is larger than the axis size {n}")
    shape = list(t.shape)
    shape[axis] = kdim
    return [TensorType(t.dtype, tuple(shape)), TensorType(dtypes.i64, tuple(shape))]


register_op("top_k", reference=top_k, infer=_infer_top_k, fusion=FusionKind.OPAQUE,
            num_inputs=2, num_outputs=2, shape_inputs=(1,),
            attrs={"axis": -1, "largest": 1, "sorted": 1},
            doc="top_k(x, k) -> (values, i64 indices) {axis, largest, sorted}: ties by lower "
                "index first; k is a shape-deciding scalar input")
