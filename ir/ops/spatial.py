"""Ops that move pixels: depth/space shuffles and resize. Resize is separable, one axis at a
time, as a gather (nearest) or a small matrix (linear, cubic, antialiased), weighed in float64.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from ..infer import normalize_axis
from ..registry import REQUIRED, FusionKind, InferContext, register_op
from ..types import Dim, TensorType


# ----------------------------------------------------------------------------------------------
# depth_to_space / space_to_depth
# ----------------------------------------------------------------------------------------------

_BLOCK_MODES = ("DCR", "CRD")


def _infer_d2s(ctx: InferContext) -> TensorType:
    x = ctx[0]
    b = int(ctx.attrs["blocksize"])
    if x.rank != 4:
        ctx.fail(f"input must be [N, C, H, W], got {x}")
    if b < 1:
        ctx.fail(f"blocksize must be positive, got {b}")
    if ctx.attrs["mode"] not in _BLOCK_MODES:
        ctx.fail(f"mode must be one of {_BLOCK_MODES}, got {ctx.attrs['mode']!r}")
    n, c, h, w = x.shape
    if isinstance(c, int) and c % (b * b):
        ctx.fail(f"channels {c} not divisible by blocksize^2 = {b * b}")

    def mul(d):
        return d * b if isinstance(d, int) else (d if b == 1 else None)

    return TensorType(x.dtype, (n, c // (b * b) if isinstance(c, int) else (c if b == 1 else None),
                                mul(h), mul(w)))


def _depth_to_space(x, blocksize, mode="DCR"):
    n, c, h, w = x.shape
    b = blocksize
    if mode == "DCR":
        t = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        t = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return np.ascontiguousarray(t).reshape(n, c // (b * b), h * b, w * b)


def _infer_s2d(ctx: InferContext) -> TensorType:
    x = ctx[0]
    b = int(ctx.attrs["blocksize"])
    if x.rank != 4:
        ctx.fail(f"input must be [N, C, H, W], got {x}")
    if b < 1:
        ctx.fail(f"blocksize must be positive, got {b}")
    if ctx.attrs["mode"] not in _BLOCK_MODES:
        ctx.fail(f"mode must be one of {_BLOCK_MODES}, got {ctx.attrs['mode']!r}")
    n, c, h, w = x.shape
    for d in (h, w):
        if isinstance(d, int) and d % b:
            ctx.fail(f"spatial size {d} not divisible by blocksize {b}")

    def div(d):
        return d // b if isinstance(d, int) else (d if b == 1 else None)

    return TensorType(x.dtype, (n, c * b * b if isinstance(c, int) else (c if b == 1 else None),
                                div(h), div(w)))


def _space_to_depth(x, blocksize, mode="DCR"):
    n, c, h, w = x.shape
    b = blocksize
    t = x.reshape(n, c, h // b, b, w // b, b)
    t = t.transpose(0, 3, 5, 1, 2, 4) if mode == "DCR" else t.transpose(0, 1, 3, 5, 2, 4)
    return np.ascontiguousarray(t).reshape(n, c * b * b, h // b, w // b)


register_op("depth_to_space", reference=_depth_to_space, infer=_infer_d2s,
            attrs={"blocksize": REQUIRED, "mode": "DCR"}, fusion=FusionKind.INJECTIVE,
            num_inputs=1, doc="move channel blocks into spatial blocks (DCR or CRD order)")
register_op("space_to_depth", reference=_space_to_depth, infer=_infer_s2d,
            attrs={"blocksize": REQUIRED, "mode": "DCR"}, fusion=FusionKind.INJECTIVE,
            num_inputs=1, doc="move spatial blocks into channels (DCR or CRD order)")

# ----------------------------------------------------------------------------------------------
# resize
# ----------------------------------------------------------------------------------------------

RESIZE_MODES = ("nearest", "linear", "cubic")
COORD_MODES = ("half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
               "asymmetric", "tf_crop_and_resize")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")
ASPECT_POLICIES = ("stretch", "not_larger", "not_smaller")


def _resize_axes(axes, rank: int) -> list:
    if axes is None:
        return list(range(rank))
    return [int(a) % rank if rank else 0 for a in axes]


def resize_plan(shape: Sequence[Dim], scales, sizes, axes, policy: str):
    """Per-dimension (scale, output size) of a resize; dims it cannot know are None.

    `scales`/`sizes` hold one entry per resized axis (`axes`, default all). With sizes and a
    keep-aspect-ratio policy the scale is the min/max ratio over the axes and the size is
    round_half_up(scale * input)."""
    rank = len(shape)
    axes = _resize_axes(axes, rank)
    scale_of: list = [1.0] * rank
    out: list = list(shape)
    if sizes is not None:
        sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
        if policy == "stretch":
            for a, s in zip(axes, sizes):
                out[a] = s
                scale_of[a] = s / shape[a] if isinstance(shape[a], int) and shape[a] else None
        else:
            if not all(isinstance(shape[a], int) for a in axes):
                for a in axes:
                    out[a] = scale_of[a] = None
                return scale_of, out
            ratios = [s / shape[a] for a, s in zip(axes, sizes)]
            sc = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                scale_of[a] = sc
                out[a] = int(sc * shape[a] + 0.5)
    elif scales is not None:
        for a, s in zip(axes, np.asarray(scales, dtype=np.float64).reshape(-1).tolist()):
            scale_of[a] = s
            if isinstance(shape[a], int):
                out[a] = int(math.floor(s * shape[a]))
            elif s != 1.0:
                out[a] = None
    return scale_of, out


def _optional_array(a):
    if a is None:
        return None
    a = np.asarray(a)
    return None if a.size == 0 else a


def _infer_resize(ctx: InferContext) -> TensorType:
    x = ctx[0]
    a = ctx.attrs
    for key, allowed in (("mode", RESIZE_MODES), ("coordinate_transformation_mode", COORD_MODES),
                         ("nearest_mode", NEAREST_MODES),
                         ("keep_aspect_ratio_policy", ASPECT_POLICIES)):
        if a[key] not in allowed:
            ctx.fail(f"{key} must be one of {allowed}, got {a[key]!r}")
    if a["antialias"] and a["mode"] == "nearest":
        ctx.fail("antialias applies to linear and cubic modes only")
    axes = a["axes"]
    if axes is not None:
        for ax in axes:
            normalize_axis(int(ax), x.rank, ctx)
        if len(set(int(ax) % x.rank for ax in axes)) != len(axes):
            ctx.fail(f"axes {list(axes)} has duplicates")
    naxes = x.rank if axes is None else len(axes)
    has_scales = ctx.has(2) and ctx[2].shape != (0,)
    has_sizes = ctx.has(3) and ctx[3].shape != (0,)
    if has_scales == has_sizes:
        ctx.fail("exactly one of scales (input 2) and sizes (input 3) must be given")
    i = 2 if has_scales else 3
    t = ctx[i]
    if t.rank != 1 or (isinstance(t.shape[0], int) and t.shape[0] != naxes):
        ctx.fail(f"{'scales' if has_scales else 'sizes'} {t} must have {naxes} entries")
    if a["coordinate_transformation_mode"] == "tf_crop_and_resize" and not ctx.has(1):
        ctx.fail("coordinate_transformation_mode tf_crop_and_resize needs roi (input 1)")
    data = _optional_array(ctx.const(i))
    if data is None:
        out = [None if axes is None or d in [int(v) % x.rank for v in axes] else x.shape[d]
               for d in range(x.rank)]
        return TensorType(x.dtype, tuple(out))
    if has_scales and not np.all(np.isfinite(data) & (data > 0)):
        ctx.fail(f"scales {data.tolist()} must be finite and positive")
    if has_sizes and np.any(data < 0):
        ctx.fail(f"sizes {data.tolist()} must not be negative")
    resized = range(x.rank) if axes is None else [int(v) % x.rank for v in axes]
    empty = [d for d in resized if x.shape[d] == 0]
    if empty and has_sizes and a["keep_aspect_ratio_policy"] != "stretch":
        ctx.fail(f"keep_aspect_ratio_policy {a['keep_aspect_ratio_policy']} over the empty "
                 f"dimension {empty[0]} of {x}")
    _, out = resize_plan(x.shape, data if has_scales else None, data if has_sizes else None,
                         axes, a["keep_aspect_ratio_policy"])
    for d in empty:
        if out[d] != 0:
            ctx.fail(f"resizing the empty dimension {d} of {x} to {out[d]}: there is nothing "
                     f"to interpolate from")
    return TensorType(x.dtype, tuple(out))


def _source_coords(ctm: str, out_len: int, in_len: int, scale: float, roi_s: float, roi_e: float):
    """Source coordinate of each output position along one axis (float64)."""
    y = np.arange(out_len, dtype=np.float64)
    width = scale * in_len  # the (fractional) resized length the coordinate maps use
    if ctm == "half_pixel":
        return (y + 0.5) / scale - 0.5
    if ctm == "half_pixel_symmetric":
        adjustment = out_len / width
        offset = in_len / 2 * (1 - adjustment)
        return offset + (y + 0.5) / scale - 0.5
    if ctm == "pytorch_half_pixel":
        return (y + 0.5) / scale - 0.5 if out_len > 1 else np.zeros(out_len)
    if ctm == "align_corners":
        return y * (in_len - 1) / (width - 1) if width != 1 else np.zeros(out_len)
    if ctm == "asymmetric":
        return y / scale
    # tf_crop_and_resize. roi_s/roi_e are numpy scalars of the roi's own type: the span and
    # the start are rounded in it, as onnx.reference does (it decides nearest-mode ties).
    span, start = roi_e - roi_s, roi_s * (in_len - 1)
    if width == 1:
        return np.full(out_len, span * (in_len - 1) / 2 + start, dtype=np.float64)
    return y * span * (in_len - 1) / (width - 1) + start


def _cubic_kernel(t: np.ndarray, a: float) -> np.ndarray:
    t = np.abs(t)
    t2, t3 = t * t, t * t * t
    near = (a + 2) * t3 - (a + 3) * t2 + 1
    far = a * t3 - 5 * a * t2 + 8 * a * t - 4 * a
    return np.where(t <= 1, near, np.where(t < 2, far, 0.0))


def _resize_axis(data: np.ndarray, axis: int, out_len: int, scale: float, attrs: dict,
                 roi_s: float, roi_e: float) -> np.ndarray:
    in_len = data.shape[axis]
    mode = attrs["mode"]
    ctm = attrs["coordinate_transformation_mode"]
    x = _source_coords(ctm, out_len, in_len, scale, roi_s, roi_e)
    outside = (x < 0) | (x > in_len - 1) if ctm == "tf_crop_and_resize" else None
    if out_len == 0 or in_len == 0:
        shape = list(data.shape)
        shape[axis] = out_len
        return np.zeros(shape, dtype=data.dtype)
    if mode == "nearest":
        nm = attrs["nearest_mode"]
        if nm == "round_prefer_floor":
            idx = np.ceil(x - 0.5)
        elif nm == "round_prefer_ceil":
            idx = np.floor(x + 0.5)
        elif nm == "floor":
            idx = np.floor(x)
        else:
            idx = np.ceil(x)
        idx = np.clip(idx, 0, in_len - 1).astype(np.intp)
        res = np.take(data, idx, axis=axis)
    else:
        antialias = bool(attrs["antialias"]) and scale < 1
        s_eff = scale if antialias else 1.0
        radius = (1.0 if mode == "linear" else 2.0) / s_eff
        reach = int(math.ceil(radius))
        base = np.floor(x).astype(np.int64)
        offs = np.arange(-reach, reach + 2)
        taps = base[:, None] + offs[None, :]  # [out, n]
        t = (taps - x[:, None]) * s_eff
        if mode == "linear":
            wts = np.clip(1 - np.abs(t), 0, None)
        else:
            wts = _cubic_kernel(t, float(attrs["cubic_coeff_a"]))
        if antialias:
            wts = wts / wts.sum(axis=1, keepdims=True)
        if attrs["exclude_outside"]:
            wts = np.where((taps < 0) | (taps >= in_len), 0.0, wts)
            tot = wts.sum(axis=1, keepdims=True)
            wts = wts / np.where(tot == 0, 1.0, tot)
        mat = np.zeros((out_len, in_len), dtype=np.float64)
        rows = np.repeat(np.arange(out_len), taps.shape[1])
        np.add.at(mat, (rows, np.clip(taps, 0, in_len - 1).reshape(-1)), wts.reshape(-1))
        moved = np.moveaxis(data, axis, -1)
        res = np.moveaxis(moved @ mat.T, -1, axis)
    if outside is not None and outside.any():
        mshape = [1] * data.ndim
        mshape[axis] = out_len
        if res.dtype != np.float64:  # the fill value may not fit the type; cast at the end
            res = res.astype(np.float64)
        res = np.where(outside.reshape(mshape), np.float64(attrs["extrapolation_value"]), res)
    return res


def _resize(x, roi=None, scales=None, sizes=None, *, mode="nearest",
            coordinate_transformation_mode="half_pixel", nearest_mode="round_prefer_floor",
            cubic_coeff_a=-0.75, exclude_outside=0, extrapolation_value=0.0, antialias=0,
            keep_aspect_ratio_policy="stretch", axes=None):
    """Resize, separable per axis. scales/sizes/roi list the resized `axes` (default all)."""
    attrs = dict(mode=mode, coordinate_transformation_mode=coordinate_transformation_mode,
                 nearest_mode=nearest_mode, cubic_coeff_a=cubic_coeff_a,
                 exclude_outside=exclude_outside, extrapolation_value=extrapolation_value,
                 antialias=antialias)
    scales, sizes, roi = _optional_array(scales), _optional_array(sizes), _optional_array(roi)
    rank = x.ndim
    ax = _resize_axes(axes, rank)
    scale_of, out = resize_plan(x.shape, scales, sizes, axes, keep_aspect_ratio_policy)
    if x.size == 0:  # (type inference refuses an empty axis resized to a non-empty one)
        return np.zeros(out, x.dtype)
    roi_full = [np.float64(0.0)] * rank + [np.float64(1.0)] * rank
    if roi is not None:
        r = list(np.asarray(roi).reshape(-1))
        k = len(r) // 2
        dims = ax if k == len(ax) else list(range(rank))
        for j, d in enumerate(dims):
            roi_full[d], roi_full[rank + d] = r[j], r[k + j]
    # nearest gathers in the input's own type; linear and cubic weigh in float64.
    res = x if mode == "nearest" or x.dtype == np.float64 else x.astype(np.float64)
    tf_crop = coordinate_transformation_mode == "tf_crop_and_resize"
    for d in ax:
        if out[d] == res.shape[d] and scale_of[d] == 1.0 and (
                not tf_crop or (roi_full[d] == 0.0 and roi_full[rank + d] == 1.0)):
            continue
        res = _resize_axis(res, d, int(out[d]), float(scale_of[d]), attrs, roi_full[d],
                           roi_full[rank + d])
    if res.dtype == x.dtype:
        return res if res is not x else res.copy()
    if x.dtype.kind in "iu":
        info = np.iinfo(x.dtype)
        return np.clip(np.round(res), info.min, info.max).astype(x.dtype)
    if x.dtype == np.bool_:
        return res != 0
    return res.astype(x.dtype)


register_op("resize", reference=_resize, infer=_infer_resize,
            attrs={"mode": "nearest", "coordinate_transformation_mode": "half_pixel",
                   "nearest_mode": "round_prefer_floor", "cubic_coeff_a": -0.75,
                   "exclude_outside": 0, "extrapolation_value": 0.0, "antialias": 0,
                   "keep_aspect_ratio_policy": "stretch", "axes": None},
            fusion=FusionKind.INJECTIVE, num_inputs=(3, 4), shape_inputs=(2, 3),
            doc="resize(x, roi?, scales?, sizes?): nearest/linear/cubic interpolation of the "
                "`axes` (default all); exactly one of scales and sizes")
