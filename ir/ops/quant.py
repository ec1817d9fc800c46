"""Quantization: the int8 semantics, defined exactly by these references.

* ``quantize(x, scale, zero_point?) {dtype}`` -- ``saturate(round_half_even(x / scale) + zp)``
  as ONNX's QuantizeLinear computes it, in float32, to u8 or i8 (the zero point's dtype when
  given, else the `dtype` attribute). ``scale`` and ``zero_point`` broadcast against ``x``
  numpy-style: a per-tensor scale is a scalar, a per-channel one has its channel axis in
  place (``[C, 1, 1]`` for NCHW, ``[N]`` for a matmul's columns). NaN quantizes to the
  lowest value of the type (LLVM's maxnum/minnum clamp does the same).
* ``dequantize(x, scale, zero_point?)`` -- ``f32(x - zp) * scale`` for u8, i8 and i32 ``x``
  (i32: the accumulator of an integer matmul or convolution); the subtraction is exact in
  int32 and the product is one float32 rounding. The result has the scale's dtype.
* ``dynamic_quantize(x) {per_row}`` -> ``(q: u8, scale: f32, zero_point: u8)``: ONNX's
  DynamicQuantizeLinear: ``lo = min(0, min x)``, ``hi = max(0, max x)``,
  ``scale = (hi - lo) / 255``, ``zp = saturate(round(-lo / scale))``, then ``quantize``.
  With ``per_row`` the range is taken over the last axis (scale and zp keep it as size 1):
  per token for a transformer's activations. An all-zero range gets scale 1 (q = zp = 0)
  rather than a division by zero.
* ``conv_integer(x, w, x_zero_point?, w_zero_point?) {conv attributes}`` -> i32: the
  convolution of ``x - x_zp`` with ``w - w_zp``, exact; padding pads with ``x_zp`` (so it
  contributes 0), as ONNX's ConvInteger says. ``w_zp`` is a scalar or one per output channel.
  (The matmul counterpart, ``matmul_integer``, lives with matmul in linalg.py.)

Quantized layers are these ops in a row, as ONNX's QDQ and TVM's QNN have them: ``quantize``
-> ``matmul_integer`` / ``conv_integer`` -> ``dequantize`` (with the product of the two
scales) -> bias, activation -> ``quantize`` for the next layer. The CPU backend fuses the
chain after the integer op into its kernel's store, so the int32 accumulators never reach
memory.
"""

from __future__ import annotations

import numpy as np

from ..infer import broadcast_shapes
from ..registry import FusionKind, InferContext, register_op
from ..types import TensorType, dtypes
from .window import (_check_out_dims, _kernel_offsets, _pad_spatial, _window_params,
                     _window_slices, window_out_dim)

QUANT_DTYPES = (dtypes.u8, dtypes.i8)
_RANGE = {"u8": (0, 255), "i8": (-128, 127)}


def quant_range(dtype) -> tuple[int, int]:
    """(lowest, highest) value of an 8-bit quantized type."""
    return _RANGE[dtype.name if hasattr(dtype, "name") and not isinstance(dtype, np.dtype)
                  else dtypes.from_numpy(dtype).name]


# ----- quantize --------------------------------------------------------------------------------

def quantize(x, scale, zero_point=None, dtype="u8"):
    out_dt = dtypes.from_numpy(zero_point.dtype) if zero_point is not None else dtypes.parse(dtype)
    lo, hi = quant_range(out_dt)
    q = np.rint(x.astype(np.float32) / scale.astype(np.float32))
    if zero_point is not None:
        q = q + zero_point.astype(np.float32)
    q = np.where(np.isnan(q), np.float32(lo), q)
    return np.clip(q, lo, hi).astype(out_dt.numpy)


def _check_params(ctx: InferContext, x: TensorType, what: str) -> None:
    if not ctx[1].dtype.is_float:
        ctx.fail(f"scale must be a float tensor, got {ctx[1]}")
    shapes = [x.shape, ctx[1].shape]
    if ctx.has(2):
        shapes.append(ctx[2].shape)
    out = broadcast_shapes(shapes, ctx)
    if tuple(out) != tuple(x.shape):
        ctx.fail(f"scale {ctx[1]} and zero point must broadcast to the {what} {x} without "
                 f"growing it (per-channel parameters keep their axis: [C, 1, 1] for NCHW)")


def _infer_quantize(ctx: InferContext) -> TensorType:
    x = ctx[0]
    if not x.dtype.is_float:
        ctx.fail(f"input must be a float tensor, got {x}")
    _check_params(ctx, x, "input")
    if ctx.has(2):
        out = ctx[2].dtype
        if out not in QUANT_DTYPES:
            ctx.fail(f"zero point must be u8 or i8, got {ctx[2]}")
    else:
        try:
            out = dtypes.parse(str(ctx.attrs["dtype"]))
        except Exception:
            out = None
        if out not in QUANT_DTYPES:
            ctx.fail(f"dtype must be 'u8' or 'i8', got {ctx.attrs['dtype']!r}")
    return TensorType(out, x.shape)


register_op("quantize", reference=quantize, infer=_infer_quantize, attrs={"dtype": "u8"},
            fusion=FusionKind.BROADCAST, num_inputs=(2, 3),
            doc="quantize(x, scale, zp?) {dtype}: saturate(round_half_even(x / scale) + zp)")


# ----- dequantize ------------------------------------------------------------------------------

def dequantize(x, scale, zero_point=None):
    xi = x.astype(np.int32)
    if zero_point is not None:
        xi = xi - zero_point.astype(np.int32)
    return (xi.astype(np.float32) * scale.astype(np.float32)).astype(scale.dtype)


def _infer_dequantize(ctx: InferContext) -> TensorType:
    x = ctx[0]
    if x.dtype not in QUANT_DTYPES + (dtypes.i32,):
        ctx.fail(f"input must be u8, i8 or i32, got {x}")
    _check_params(ctx, x, "input")
    if ctx.has(2) and ctx[2].dtype != x.dtype:
        ctx.fail(f"zero point {ctx[2]} must have the input's dtype {x.dtype}")
    if ctx[1].dtype != dtypes.f32:
        ctx.fail(f"scale must be f32, got {ctx[1]}")
    return TensorType(ctx[1].dtype, x.shape)


register_op("dequantize", reference=dequantize, infer=_infer_dequantize,
            fusion=FusionKind.BROADCAST, num_inputs=(2, 3),
            doc="dequantize(x, scale, zp?): f32(x - zp) * scale")


# ----- dynamic_quantize ------------------------------------------------------------------------

def dynamic_quantize(x, per_row=0):
    x = x.astype(np.float32)
    axis = (-1,) if per_row else None
    keep = bool(per_row)
    if x.size == 0:
        shape = x.shape[:-1] + (1,) if per_row else ()
        return (np.zeros(x.shape, np.uint8), np.ones(shape, np.float32), np.zeros(shape, np.uint8))
    lo = np.minimum(np.float32(0), np.min(x, axis=axis, keepdims=keep))
    hi = np.maximum(np.float32(0), np.max(x, axis=axis, keepdims=keep))
    scale = ((hi - lo) / np.float32(255)).astype(np.float32)
    scale = np.where(scale == 0, np.float32(1), scale).astype(np.float32)
    zp = np.clip(np.rint(np.float32(0) - lo / scale), 0, 255).astype(np.uint8)
    return quantize(x, scale, zp), np.asarray(scale, np.float32), np.asarray(zp)


def _infer_dynamic_quantize(ctx: InferContext):
    x = ctx[0]
    if x.dtype != dtypes.f32:
        ctx.fail(f"input must be f32, got {x}")
    if ctx.attrs["per_row"]:
        if x.rank < 1:
            ctx.fail("per_row needs an input of rank >= 1")
        pshape = tuple(x.shape[:-1]) + (1,)
    else:
        pshape = ()
    return [TensorType(dtypes.u8, x.shape), TensorType(dtypes.f32, pshape),
            TensorType(dtypes.u8, pshape)]


register_op("dynamic_quantize", reference=dynamic_quantize, infer=_infer_dynamic_quantize,
            attrs={"per_row": 0}, fusion=FusionKind.OPAQUE, num_inputs=1, num_outputs=3,
            doc="dynamic_quantize(x) {per_row} -> (u8, scale, zp): ONNX DynamicQuantizeLinear, "
                "per tensor or per row of the last axis")


# ----- conv_integer ----------------------------------------------------------------------------

def conv_integer(x, w, x_zero_point=None, w_zero_point=None, strides=None, pads=None,
                 dilations=None, group=1):
    nsp = x.ndim - 2
    strides, pads, dilations = _window_params(
        {"strides": strides, "pads": pads, "dilations": dilations}, nsp)
    xs = x.astype(np.float64)
    if x_zero_point is not None:
        xs = xs - np.float64(np.asarray(x_zero_point).reshape(()))
    ws = w.astype(np.float64)
    if w_zero_point is not None:
        wz = np.asarray(w_zero_point).astype(np.float64)
        ws = ws - (wz.reshape((-1,) + (1,) * (w.ndim - 1)) if wz.size > 1 else wz.reshape(()))
    kernel = w.shape[2:]
    n, c = x.shape[:2]
    m = w.shape[0]
    g = int(group)
    out = [window_out_dim(x.shape[2 + i], kernel[i], strides[i], dilations[i], pads[i],
                          pads[nsp + i]) for i in range(nsp)]
    xp = _pad_spatial(xs, pads[:nsp], pads[nsp:], 0)  # 0 after subtracting zp: padding is zp
    offsets = _kernel_offsets(kernel)
    cols = np.empty((n, c, len(offsets), *out), dtype=np.float64)
    for ki, off in enumerate(offsets):
        cols[:, :, ki] = xp[_window_slices(out, strides, dilations, off)]
    cols = cols.reshape(n, g, (c // g) * len(offsets), -1)
    wm = ws.reshape(g, m // g, (c // g) * len(offsets))
    y = np.matmul(wm, cols)  # exact: |sums| < 2**53 for any real layer
    return np.rint(y).astype(np.int32).reshape(n, m, *out)


def _infer_conv_integer(ctx: InferContext) -> TensorType:
    x, w = ctx[0], ctx[1]
    for name, t in (("input", x), ("weight", w)):
        if t.dtype not in QUANT_DTYPES:
            ctx.fail(f"{name} must be u8 or i8, got {t}")
    if x.rank < 3 or w.rank != x.rank:
        ctx.fail(f"input {x} must be [N, C, spatial...] and weight {w} of the same rank")
    nsp = x.rank - 2
    group = int(ctx.attrs["group"])
    kernel = list(w.shape[2:])
    strides, pads, dil = _window_params(ctx.attrs, nsp, ctx, kernel)
    c, m, cg = x.shape[1], w.shape[0], w.shape[1]
    if group < 1 or (isinstance(c, int) and isinstance(cg, int) and c != cg * group):
        ctx.fail(f"input has {c} channels but weight {w} with group={group} expects {cg * group}")
    if isinstance(m, int) and m % group:
        ctx.fail(f"weight has {m} output channels, not divisible by group={group}")
    for i, (name, src) in ((2, ("x_zero_point", x)), (3, ("w_zero_point", w))):
        if ctx.has(i):
            zp = ctx[i]
            if zp.dtype != src.dtype:
                ctx.fail(f"{name} must have the dtype of its operand ({src.dtype}), got {zp}")
            size = zp.numel if zp.is_static else None
            if i == 2 and size not in (None, 1):
                ctx.fail(f"x_zero_point must be a scalar, got {zp}")
            if i == 3 and size not in (None, 1, m):
                ctx.fail(f"w_zero_point {zp} must be a scalar or one per output channel ({m})")
    out = [window_out_dim(x.shape[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[nsp + i])
           for i in range(nsp)]
    _check_out_dims(ctx, out, "conv_integer")
    return TensorType(dtypes.i32, (x.shape[0], m, *out))


register_op("conv_integer", reference=conv_integer, infer=_infer_conv_integer,
            attrs={"strides": None, "pads": None, "dilations": None, "group": 1},
            fusion=FusionKind.OUT_FUSABLE, num_inputs=(2, 4),
            doc="conv_integer(x, w, x_zp?, w_zp?) -> i32: conv of (x - x_zp) and (w - w_zp), "
                "padding with x_zp")
