"""Convolution and transposed convolution (see window.py for the attribute conventions).

The reference is im2col (one strided slice per kernel position) followed by one batched
matmul, accumulated in float64 and rounded once at the end.
"""

from __future__ import annotations


import numpy as np

from ..registry import FusionKind, InferContext, register_op
from ..types import Dim, TensorType
from .window import (_CONV_ACC, _check_out_dims, _float_input, _kernel_offsets, _pad_spatial,
                    _window_params, _window_slices, window_out_dim)


# ----------------------------------------------------------------------------------------------
# conv / conv_transpose
# ----------------------------------------------------------------------------------------------


def _infer_conv(ctx: InferContext) -> TensorType:
    x = _float_input(ctx, 0)
    w = ctx[1]
    if x.rank < 3:
        ctx.fail(f"input must be [N, C, spatial...] (rank >= 3), got {x}")
    if w.rank != x.rank:
        ctx.fail(f"weight {w} must have the input's rank {x.rank} ([M, C/group, kernel...])")
    if w.dtype != x.dtype:
        ctx.fail(f"weight dtype {w.dtype} differs from input dtype {x.dtype}")
    nsp = x.rank - 2
    group = int(ctx.attrs["group"])
    if group < 1:
        ctx.fail(f"group must be positive, got {group}")
    kernel = list(w.shape[2:])
    strides, pads, dil = _window_params(ctx.attrs, nsp, ctx, kernel)
    if any(p < 0 for p in pads):
        ctx.fail(f"pads {pads} must not be negative")
    c, m, cg = x.shape[1], w.shape[0], w.shape[1]
    if isinstance(c, int) and isinstance(cg, int) and c != cg * group:
        ctx.fail(f"input has {c} channels but weight {w} with group={group} expects "
                 f"{cg * group}")
    if isinstance(m, int) and m % group:
        ctx.fail(f"weight has {m} output channels, not divisible by group={group}")
    if ctx.has(2):
        b = ctx[2]
        if b.rank != 1 or (isinstance(b.shape[0], int) and isinstance(m, int) and b.shape[0] != m):
            ctx.fail(f"bias {b} must be a vector of {m} (output channels)")
    out = [window_out_dim(x.shape[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[nsp + i])
           for i in range(nsp)]
    _check_out_dims(ctx, out, "conv")
    return TensorType(x.dtype, (x.shape[0], m, *out))


# im2col columns are built for a block of output rows at a time, at most this many elements.
_COLS_BUDGET = 1 << 24


def _conv(x, w, b=None, strides=None, pads=None, dilations=None, group=1):
    """Convolution (cross-correlation, as in ONNX and PyTorch), N-d, grouped, dilated."""
    nsp = x.ndim - 2
    strides, pads, dilations = _window_params(
        {"strides": strides, "pads": pads, "dilations": dilations}, nsp)
    cdt = _CONV_ACC
    kernel = w.shape[2:]
    n, c = x.shape[:2]
    m = w.shape[0]
    g = int(group)
    out = [window_out_dim(x.shape[2 + i], kernel[i], strides[i], dilations[i], pads[i],
                          pads[nsp + i]) for i in range(nsp)]
    xp = _pad_spatial(x.astype(cdt, copy=False), pads[:nsp], pads[nsp:], 0)
    offsets = _kernel_offsets(kernel)
    k = len(offsets)
    wm = w.astype(cdt, copy=False).reshape(g, m // g, (c // g) * k)
    y = np.empty((n, m, *out), dtype=cdt)
    inner = int(np.prod(out[1:], dtype=np.int64))
    rows = max(1, _COLS_BUDGET // max(1, n * c * k * inner))
    for r0 in range(0, out[0], rows):
        r1 = min(out[0], r0 + rows)
        block = [r1 - r0] + out[1:]
        cols = np.empty((n, c, k, *block), dtype=cdt)
        for ki, off in enumerate(offsets):
            sl = _window_slices(block, strides, dilations, off)
            shift = r0 * strides[0]
            sl = sl[:2] + (slice(sl[2].start + shift, sl[2].stop + shift, sl[2].step),) + sl[3:]
            cols[:, :, ki] = xp[sl]
        cols = cols.reshape(n, g, (c // g) * k, (r1 - r0) * inner)
        y[:, :, r0:r1] = np.matmul(wm, cols).reshape(n, m, *block)
    if b is not None:
        y += b.astype(cdt, copy=False).reshape((1, m) + (1,) * nsp)
    return y.astype(x.dtype, copy=False)


def conv_transpose_out_dim(size: Dim, k: Dim, s: int, d: int, pb: int, pe: int,
                           output_padding: int) -> Dim:
    if not isinstance(k, int):
        return None
    grow = output_padding + d * (k - 1) + 1 - pb - pe
    if isinstance(size, int):
        return s * (size - 1) + grow
    if s == 1 and grow == 1:
        return size
    return None


def _infer_conv_transpose(ctx: InferContext) -> TensorType:
    x = _float_input(ctx, 0)
    w = ctx[1]
    if x.rank < 3:
        ctx.fail(f"input must be [N, C, spatial...] (rank >= 3), got {x}")
    if w.rank != x.rank:
        ctx.fail(f"weight {w} must have the input's rank {x.rank} ([C, M/group, kernel...])")
    if w.dtype != x.dtype:
        ctx.fail(f"weight dtype {w.dtype} differs from input dtype {x.dtype}")
    nsp = x.rank - 2
    group = int(ctx.attrs["group"])
    if group < 1:
        ctx.fail(f"group must be positive, got {group}")
    kernel = list(w.shape[2:])
    strides, pads, dil = _window_params(ctx.attrs, nsp, ctx, kernel)
    opad = list(ctx.attrs["output_padding"] or [0] * nsp)
    if len(opad) != nsp:
        ctx.fail(f"output_padding {opad} must have {nsp} entries")
    c = x.shape[1]
    if isinstance(c, int) and isinstance(w.shape[0], int) and c != w.shape[0]:
        ctx.fail(f"input has {c} channels but weight {w} expects {w.shape[0]}")
    if isinstance(c, int) and c % group:
        ctx.fail(f"input channels {c} not divisible by group={group}")
    m = w.shape[1] * group if isinstance(w.shape[1], int) else None
    if ctx.has(2):
        b = ctx[2]
        if b.rank != 1 or (isinstance(b.shape[0], int) and isinstance(m, int) and b.shape[0] != m):
            ctx.fail(f"bias {b} must be a vector of {m} (output channels)")
    out = [conv_transpose_out_dim(x.shape[2 + i], kernel[i], strides[i], dil[i], pads[i],
                                  pads[nsp + i], int(opad[i])) for i in range(nsp)]
    _check_out_dims(ctx, out, "conv_transpose")
    return TensorType(x.dtype, (x.shape[0], m, *out))


def _conv_transpose(x, w, b=None, strides=None, pads=None, dilations=None, group=1,
                    output_padding=None):
    """Transposed convolution: matmul to columns, then col2im (one strided add per kernel
    position). Negative pads (from a requested output larger than natural) add zeros."""
    nsp = x.ndim - 2
    strides, pads, dilations = _window_params(
        {"strides": strides, "pads": pads, "dilations": dilations}, nsp)
    opad = list(output_padding or [0] * nsp)
    cdt = _CONV_ACC
    n, c = x.shape[:2]
    ins = x.shape[2:]
    kernel = w.shape[2:]
    g = int(group)
    mg = w.shape[1]
    m = mg * g
    offsets = _kernel_offsets(kernel)
    k = len(offsets)
    pin = int(np.prod(ins, dtype=np.int64))
    xm = x.astype(cdt, copy=False).reshape(n, g, c // g, pin)
    wm = w.astype(cdt, copy=False).reshape(g, c // g, mg * k).transpose(0, 2, 1)
    cols = np.matmul(wm, xm).reshape(n, m, k, *ins)
    full = [strides[i] * (ins[i] - 1) + dilations[i] * (kernel[i] - 1) + 1 for i in range(nsp)]
    out = [full[i] + opad[i] - pads[i] - pads[nsp + i] for i in range(nsp)]
    base = [max(0, -pads[i]) for i in range(nsp)]  # room for negative leading pads
    size = [base[i] + max(full[i], pads[i] + out[i]) for i in range(nsp)]
    buf = np.zeros((n, m, *size), dtype=cdt)
    for ki, off in enumerate(offsets):
        idx = (slice(None), slice(None)) + tuple(
            slice(base[i] + off[i] * dilations[i],
                  base[i] + off[i] * dilations[i] + strides[i] * (ins[i] - 1) + 1, strides[i])
            for i in range(nsp))
        buf[idx] += cols[:, :, ki]
    crop = (slice(None), slice(None)) + tuple(
        slice(base[i] + pads[i], base[i] + pads[i] + out[i]) for i in range(nsp))
    y = buf[crop]
    if b is not None:
        y = y + b.astype(cdt, copy=False).reshape((1, m) + (1,) * nsp)
    return np.ascontiguousarray(y).astype(x.dtype, copy=False)


_CONV_ATTRS = {"strides": None, "pads": None, "dilations": None, "group": 1}
register_op("conv", reference=_conv, infer=_infer_conv, attrs=dict(_CONV_ATTRS),
            fusion=FusionKind.OUT_FUSABLE, num_inputs=(2, 3),
            doc="conv(x[N,C,*S], w[M,C/group,*K], bias[M]?): N-d grouped, dilated convolution")
register_op("conv_transpose", reference=_conv_transpose, infer=_infer_conv_transpose,
            attrs={**_CONV_ATTRS, "output_padding": None}, fusion=FusionKind.OUT_FUSABLE,
            num_inputs=(2, 3),
            doc="conv_transpose(x[N,C,*S], w[C,M/group,*K], bias[M]?): the gradient of conv "
                "with respect to its input; out = s*(in-1) + output_padding + d*(k-1)+1 - pads")
