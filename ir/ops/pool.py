"""Pooling: max (with indices), average, Lp, and their global forms. The references reduce
over the same kernel-position slices as convolution's im2col (window.py)."""

from __future__ import annotations

import itertools
from typing import Sequence

import numpy as np

from ..registry import REQUIRED, FusionKind, InferContext, register_op
from ..types import TensorType, dtypes
from .window import (_check_out_dims, _compute_dtype, _float_input, _pad_spatial, _window_params,
                    _window_slices, window_out_dim)


# ----------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------


def _pool_geometry(shape: Sequence[int], kernel, strides, pads, dilations, ceil_mode):
    """(output sizes, kernel positions worth visiting, end padding).

    Only kernel positions that land on real input for some output are visited: the others see
    padding only, which never wins a max and adds nothing to a sum (avg_pool counts the
    divisor separately). A huge kernel over a small input (PyTorch's adaptive pooling exported
    with ceil_mode) then costs what the input does. The end padding is what the visited
    positions reach, which ceil mode may push past the explicit pads.
    """
    nsp = len(shape) - 2
    out, taps, ends = [], [], []
    for i in range(nsp):
        size, s, d = shape[2 + i], strides[i], dilations[i]
        o = max(int(window_out_dim(size, kernel[i], s, d, pads[i], pads[nsp + i],
                                   bool(ceil_mode))), 0)
        first = np.arange(o) * s - pads[i]  # unpadded position of each window's first tap
        used = [k for k in range(kernel[i])
                if o and np.any((first + k * d >= 0) & (first + k * d < size))] or [0]
        out.append(o)
        taps.append(used)
        ends.append(max(0, (o - 1) * s + used[-1] * d + 1 - size - pads[i]))
    return out, list(itertools.product(*taps)), ends


def _infer_pool(ctx: InferContext, allow_int: bool = False) -> TensorType:
    x = ctx[0]
    if not (x.dtype.is_float or (allow_int and x.dtype in (dtypes.i8, dtypes.u8))):
        ctx.fail(f"input must be a floating-point tensor{' or i8/u8' if allow_int else ''}, "
                 f"got {x}")
    if x.rank < 3:
        ctx.fail(f"input must be [N, C, spatial...] (rank >= 3), got {x}")
    nsp = x.rank - 2
    kernel = [int(k) for k in ctx.attrs["kernel_shape"]]
    strides, pads, dil = _window_params(ctx.attrs, nsp, ctx, kernel)
    for i in range(nsp):
        if pads[i] < 0 or pads[nsp + i] < 0:
            ctx.fail(f"pads {pads} must not be negative")
    ceil_mode = bool(ctx.attrs.get("ceil_mode", 0))
    out = [window_out_dim(x.shape[2 + i], kernel[i], strides[i], dil[i], pads[i],
                          pads[nsp + i], ceil_mode) for i in range(nsp)]
    _check_out_dims(ctx, out, ctx.opdef.name)
    return TensorType(x.dtype, (x.shape[0], x.shape[1], *out))


def _lowest(dt: np.dtype):
    dt = np.dtype(dt)
    if dt.kind == "f":
        return -np.inf
    return np.iinfo(dt).min


def _max_pool(x, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0,
              storage_order=0):
    nsp = x.ndim - 2
    strides, pads, dilations = _window_params(
        {"strides": strides, "pads": pads, "dilations": dilations}, nsp)
    out, offsets, ends = _pool_geometry(x.shape, kernel_shape, strides, pads, dilations,
                                        ceil_mode)
    xp = _pad_spatial(x, pads[:nsp], ends, _lowest(x.dtype))
    y = None
    for off in offsets:
        v = xp[_window_slices(out, strides, dilations, off)]
        y = v.copy() if y is None else np.maximum(y, v, out=y)
    return y


def _max_pool_with_indices(x, kernel_shape, strides=None, pads=None, dilations=None,
                           ceil_mode=0, storage_order=0):
    """Max pooling that also returns, for each output, the flat index of the chosen input
    element in the whole input tensor (row-major, or spatially column-major when
    storage_order=1). Ties go to the first window position in row-major order."""
    nsp = x.ndim - 2
    strides, pads, dilations = _window_params(
        {"strides": strides, "pads": pads, "dilations": dilations}, nsp)
    out, offsets, ends = _pool_geometry(x.shape, kernel_shape, strides, pads, dilations,
                                        ceil_mode)
    xp = _pad_spatial(x, pads[:nsp], ends, _lowest(x.dtype))
    # Which (output position, kernel position) pairs see real input, per dimension.
    spatial = x.shape[2:]
    best = best_k = None
    for ki, off in enumerate(offsets):
        v = xp[_window_slices(out, strides, dilations, off)]
        valid = np.ones(out, dtype=bool)
        for i in range(nsp):
            pos = np.arange(out[i]) * strides[i] + off[i] * dilations[i] - pads[i]
            ok = (pos >= 0) & (pos < spatial[i])
            valid &= ok.reshape([-1 if j == i else 1 for j in range(nsp)])
        if best is None:
            best = np.where(valid, v, _lowest(x.dtype)).astype(x.dtype)
            best_k = np.where(valid, 0, -1) + np.zeros(v.shape, dtype=np.int64)
            continue
        better = valid & ((v > best) | (best_k < 0))
        best = np.where(better, v, best)
        best_k = np.where(better, ki, best_k)
    best_k = np.maximum(best_k, 0)
    offs = np.asarray(offsets, dtype=np.int64)  # [K, nsp]
    coords = []
    for i in range(nsp):
        o = np.arange(out[i]).reshape([-1 if j == i else 1 for j in range(nsp)])
        coords.append(o * strides[i] + offs[best_k, i] * dilations[i] - pads[i])
    flat = np.zeros(best_k.shape, dtype=np.int64)
    order = range(nsp) if not storage_order else reversed(range(nsp))
    for i in order:
        flat = flat * spatial[i] + coords[i]
    n, c = x.shape[:2]
    plane = int(np.prod(spatial, dtype=np.int64))
    base = (np.arange(n).reshape(n, 1) * c + np.arange(c).reshape(1, c)) * plane
    flat = flat + base.reshape((n, c) + (1,) * nsp)
    return best, flat


def _avg_pool(x, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0,
              count_include_pad=0):
    nsp = x.ndim - 2
    strides, pads, dilations = _window_params(
        {"strides": strides, "pads": pads, "dilations": dilations}, nsp)
    out, offsets, ends = _pool_geometry(x.shape, kernel_shape, strides, pads, dilations,
                                        ceil_mode)
    cdt = _compute_dtype(x.dtype)
    xp = _pad_spatial(x.astype(cdt, copy=False), pads[:nsp], ends, 0)
    acc = np.zeros(x.shape[:2] + tuple(out), dtype=cdt)
    for off in offsets:
        acc += xp[_window_slices(out, strides, dilations, off)]
    # The divisor is separable: per dimension, how many window taps land on counted positions
    # (the input, plus the explicit pads when count_include_pad; never ceil mode's overhang).
    count = np.ones(out, dtype=cdt)
    for i in range(nsp):
        n_in = x.shape[2 + i]
        lo, hi = (-pads[i], n_in + pads[nsp + i]) if count_include_pad else (0, n_in)
        pos = (np.arange(out[i])[:, None] * strides[i]
               + np.arange(kernel_shape[i])[None, :] * dilations[i] - pads[i])
        ci = ((pos >= lo) & (pos < hi)).sum(axis=1).astype(cdt)
        count = count * ci.reshape([-1 if j == i else 1 for j in range(nsp)])
    with np.errstate(divide="ignore", invalid="ignore"):
        y = acc / count
    return y.astype(x.dtype, copy=False)


def _lp_pool(x, kernel_shape, strides=None, pads=None, dilations=None, ceil_mode=0, p=2):
    nsp = x.ndim - 2
    strides, pads, dilations = _window_params(
        {"strides": strides, "pads": pads, "dilations": dilations}, nsp)
    out, offsets, ends = _pool_geometry(x.shape, kernel_shape, strides, pads, dilations,
                                        ceil_mode)
    cdt = _compute_dtype(x.dtype)
    xp = np.abs(_pad_spatial(x.astype(cdt, copy=False), pads[:nsp], ends, 0))
    acc = np.zeros(x.shape[:2] + tuple(out), dtype=cdt)
    for off in offsets:
        acc += xp[_window_slices(out, strides, dilations, off)] ** cdt.type(p)
    return (acc ** cdt.type(1.0 / p)).astype(x.dtype, copy=False)


_POOL_ATTRS = {"kernel_shape": REQUIRED, "strides": None, "pads": None, "dilations": None,
               "ceil_mode": 0}
register_op("max_pool", reference=_max_pool, infer=lambda c: _infer_pool(c, allow_int=True),
            attrs={**_POOL_ATTRS, "storage_order": 0}, fusion=FusionKind.REDUCTION, num_inputs=1,
            doc="max_pool(x[N,C,*S]): windowed maximum; padding never wins")


def _infer_max_pool_with_indices(ctx: InferContext):
    t = _infer_pool(ctx, allow_int=True)
    return [t, t.with_dtype(dtypes.i64)]


register_op("max_pool_with_indices", reference=_max_pool_with_indices,
            infer=_infer_max_pool_with_indices, attrs={**_POOL_ATTRS, "storage_order": 0},
            fusion=FusionKind.OPAQUE, num_inputs=1, num_outputs=2,
            doc="max_pool_with_indices(x) -> (values, i64 flat indices into x)")
register_op("avg_pool", reference=_avg_pool, infer=_infer_pool,
            attrs={**_POOL_ATTRS, "count_include_pad": 0}, fusion=FusionKind.REDUCTION,
            num_inputs=1, doc="avg_pool(x[N,C,*S]): windowed mean; count_include_pad decides "
                              "whether explicit padding counts in the divisor")
register_op("lp_pool", reference=_lp_pool, infer=_infer_pool, attrs={**_POOL_ATTRS, "p": 2},
            fusion=FusionKind.REDUCTION, num_inputs=1,
            doc="lp_pool(x[N,C,*S]): (sum over the window of |x|^p)^(1/p)")


def _infer_global_pool(ctx: InferContext) -> TensorType:
    x = _float_input(ctx, 0)
    if x.rank < 3:
        ctx.fail(f"input must be [N, C, spatial...] (rank >= 3), got {x}")
    return TensorType(x.dtype, (x.shape[0], x.shape[1]) + (1,) * (x.rank - 2))


def _global_avg_pool(x):
    axes = tuple(range(2, x.ndim))
    return x.astype(_compute_dtype(x.dtype)).mean(axis=axes, keepdims=True).astype(x.dtype)


def _global_max_pool(x):
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)


def _global_lp_pool(x, p=2):
    cdt = _compute_dtype(x.dtype)
    s = (np.abs(x.astype(cdt)) ** cdt.type(p)).sum(axis=tuple(range(2, x.ndim)), keepdims=True)
    return (s ** cdt.type(1.0 / p)).astype(x.dtype)


register_op("global_avg_pool", reference=_global_avg_pool, infer=_infer_global_pool,
            fusion=FusionKind.REDUCTION, num_inputs=1, doc="mean over all spatial dimensions")
register_op("global_max_pool", reference=_global_max_pool, infer=_infer_global_pool,
            fusion=FusionKind.REDUCTION, num_inputs=1, doc="max over all spatial dimensions")
register_op("global_lp_pool", reference=_global_lp_pool, infer=_infer_global_pool,
            attrs={"p": 2}, fusion=FusionKind.REDUCTION, num_inputs=1,
            doc="Lp norm over all spatial dimensions")
