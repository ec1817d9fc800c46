"""Blocked (NCHW[b]c) layout: the conversions and the convolutions that work in it.

A blocked tensor keeps channels in groups of `b` as its innermost axis:

    NCHW [N, C, H, W]   <->   NCHW[b]c [N, C/b, H, W, b],   x_b[n, c // b, h, w, c % b] = x[n, c, h, w]

With b the vector width (8 floats for AVX2, 16 for AVX-512) one vector holds b channels of one
pixel, so a convolution multiplies whole vectors with no tails and no gathers, whatever the
image size (7x7 planes leave NCHW kernels with mostly tails). The `layout` pass
(passes/layout.py) decides where to use it; these ops are what it writes, so the IR dump
shows every conversion.

* ``to_blocked(x) {block}`` / ``from_blocked(x) {block}``: the two conversions (any spatial
  rank; C must be a multiple of block).
* ``conv2d_nchwc(x, w, bias?) {strides, pads, dilations}``: group-1 2-D convolution,
  x [N, Cin/bi, H, W, bi], w [Cout/bo, Cin/bi, kh, kw, bi, bo], bias [Cout/bo, bo], result
  [N, Cout/bo, Ho, Wo, bo]. The input block bi may differ from the output block bo: with
  bi = 1, x may also be plain NCHW [N, Cin, H, W] (a first layer with 3 input channels).
  An optional fourth input ``scale`` [N, Cin/bi, 1, 1, bi] multiplies the input per channel:
  a squeeze-and-excite scale, which the kernel folds into its weights per call (Cout*Cin
  multiplies instead of a pass over the whole feature map).
* ``depthwise_conv2d_nchwc(x, w, bias?) {strides, pads, dilations}``: one filter per channel
  (group = C), x [N, C/b, H, W, b], w [C/b, kh, kw, b], bias [C/b, b].

The references convert to NCHW, call the `conv` reference and convert back: they are only as
clever as needed to be an oracle.
"""

from __future__ import annotations

import numpy as np

from ..registry import FusionKind, InferContext, register_op
from ..types import TensorType
from .conv import _conv
from .window import _check_out_dims, _float_input, _window_params, window_out_dim


# ----------------------------------------------------------------------------------------------
# numpy helpers (also used by the pass to repack constants at compile time)
# ----------------------------------------------------------------------------------------------


def block_array(x: np.ndarray, b: int) -> np.ndarray:
    """[N, C, *S] -> [N, C/b, *S, b]."""
    n, c, *s = x.shape
    y = x.reshape(n, c // b, b, *s)
    return np.ascontiguousarray(np.moveaxis(y, 2, -1))


def unblock_array(x: np.ndarray) -> np.ndarray:
    """[N, C/b, *S, b] -> [N, C, *S]."""
    n, cb, *s, b = x.shape
    return np.ascontiguousarray(np.moveaxis(x, -1, 2)).reshape(n, cb * b, *s)


def block_conv_weights(w: np.ndarray, bi: int, bo: int) -> np.ndarray:
    """[Cout, Cin, kh, kw] -> [Cout/bo, Cin/bi, kh, kw, bi, bo]."""
    co, ci, kh, kw = w.shape
    y = w.reshape(co // bo, bo, ci // bi, bi, kh, kw)
    return np.ascontiguousarray(y.transpose(0, 2, 4, 5, 3, 1))


def unblock_conv_weights(w: np.ndarray) -> np.ndarray:
    cob, cib, kh, kw, bi, bo = w.shape
    return np.ascontiguousarray(w.transpose(0, 5, 1, 4, 2, 3)).reshape(cob * bo, cib * bi, kh, kw)


def block_depthwise_weights(w: np.ndarray, b: int) -> np.ndarray:
    """[C, 1, kh, kw] -> [C/b, kh, kw, b]."""
    c, _, kh, kw = w.shape
    return np.ascontiguousarray(w.reshape(c // b, b, kh, kw).transpose(0, 2, 3, 1))


def unblock_depthwise_weights(w: np.ndarray) -> np.ndarray:
    cb, kh, kw, b = w.shape
    return np.ascontiguousarray(w.transpose(0, 3, 1, 2)).reshape(cb * b, 1, kh, kw)


# ----------------------------------------------------------------------------------------------
# Conversions
# ----------------------------------------------------------------------------------------------


def _block_of(ctx: InferContext) -> int:
    b = ctx.attrs["block"]
    if not isinstance(b, int) or b < 1:
        ctx.fail(f"block must be a positive integer, got {b!r}")
    return b


def _infer_to_blocked(ctx: InferContext) -> TensorType:
    x, b = ctx[0], _block_of(ctx)
    if x.rank < 3:
        ctx.fail(f"input must be [N, C, spatial...], got {x}")
    c = x.shape[1]
    if not isinstance(c, int) or c % b:
        ctx.fail(f"{c} channels are not a multiple of the block {b}")
    return TensorType(x.dtype, (x.shape[0], c // b, *x.shape[2:], b))


def _infer_from_blocked(ctx: InferContext) -> TensorType:
    x, b = ctx[0], _block_of(ctx)
    if x.rank < 4 or x.shape[-1] != b:
        ctx.fail(f"input must be [N, C/{b}, spatial..., {b}], got {x}")
    cb = x.shape[1]
    return TensorType(x.dtype, (x.shape[0], cb * b if isinstance(cb, int) else None,
                                *x.shape[2:-1]))


def _to_blocked(x, block):
    """NCHW -> NCHW[block]c."""
    return block_array(x, block)


def _from_blocked(x, block):
    """NCHW[block]c -> NCHW."""
    return unblock_array(x)


register_op("to_blocked", reference=_to_blocked, infer=_infer_to_blocked,
            attrs={"block": 8}, fusion=FusionKind.INJECTIVE, num_inputs=1,
            doc="to_blocked(x[N,C,*S]) {block}: [N, C/block, *S, block], channels innermost")
register_op("from_blocked", reference=_from_blocked, infer=_infer_from_blocked,
            attrs={"block": 8}, fusion=FusionKind.INJECTIVE, num_inputs=1,
            doc="from_blocked(x[N,C/block,*S,block]) {block}: back to [N, C, *S]")


# ----------------------------------------------------------------------------------------------
# Convolutions
# ----------------------------------------------------------------------------------------------

_ATTRS = {"strides": None, "pads": None, "dilations": None}


def _infer_blocked_conv(ctx: InferContext, depthwise: bool) -> TensorType:
    x = _float_input(ctx, 0)
    w = ctx[1]
    plain = x.rank == 4 and not depthwise and w.rank == 6 and w.shape[4] == 1
    if x.rank != 5 and not plain:
        ctx.fail(f"input must be blocked [N, C/b, H, W, b], got {x}")
    if w.dtype != x.dtype:
        ctx.fail(f"weight dtype {w.dtype} differs from input dtype {x.dtype}")
    bi = 1 if plain else x.shape[-1]
    if depthwise:
        if w.rank != 4 or w.shape[0] != x.shape[1] or w.shape[3] != bi:
            ctx.fail(f"weight {w} must be [C/b, kh, kw, b] = [{x.shape[1]}, kh, kw, {bi}]")
        kernel, cob, bo = list(w.shape[1:3]), x.shape[1], bi
    else:
        if w.rank != 6 or w.shape[1] != x.shape[1] or w.shape[4] != bi:
            ctx.fail(f"weight {w} must be [Cout/bo, Cin/bi, kh, kw, bi, bo] with "
                     f"Cin/bi = {x.shape[1]}, bi = {bi}")
        kernel, cob, bo = list(w.shape[2:4]), w.shape[0], w.shape[5]
    strides, pads, dil = _window_params(ctx.attrs, 2, ctx, kernel)
    if any(p < 0 for p in pads):
        ctx.fail(f"pads {pads} must not be negative")
    if ctx.has(2):
        b = ctx[2]
        if tuple(b.shape) != (cob, bo):
            ctx.fail(f"bias {b} must be blocked [{cob}, {bo}]")
    if ctx.has(3):
        sc = ctx[3]
        want = (x.shape[0], x.shape[1], 1, 1, bi)
        if depthwise or tuple(sc.shape) != want or sc.dtype != x.dtype:
            ctx.fail(f"input scale {sc} must be [{', '.join(map(str, want))}] of {x.dtype}")
    out = [window_out_dim(x.shape[2 + i], kernel[i], strides[i], dil[i], pads[i], pads[2 + i])
           for i in range(2)]
    _check_out_dims(ctx, out, "conv")
    return TensorType(x.dtype, (x.shape[0], cob, *out, bo))


def _conv2d_nchwc(x, w, b=None, scale=None, strides=None, pads=None, dilations=None):
    """Group-1 convolution in blocked layout (the `conv` reference on unblocked data), of
    x * scale when a per-channel input scale is given."""
    bias = None if b is None else b.reshape(-1)
    if x.ndim == 4:  # NCHW input: blocks of one channel
        x = x[..., None]
    if scale is not None:
        x = x * scale
    y = _conv(unblock_array(x), unblock_conv_weights(w), bias, strides, pads, dilations, 1)
    return block_array(y, w.shape[5])


def _depthwise_conv2d_nchwc(x, w, b=None, strides=None, pads=None, dilations=None):
    """Depthwise convolution in blocked layout (the `conv` reference on unblocked data)."""
    bias = None if b is None else b.reshape(-1)
    c = x.shape[1] * x.shape[-1]
    y = _conv(unblock_array(x), unblock_depthwise_weights(w), bias, strides, pads, dilations, c)
    return block_array(y, w.shape[3])


register_op("conv2d_nchwc", reference=_conv2d_nchwc,
            infer=lambda c: _infer_blocked_conv(c, False), attrs=dict(_ATTRS),
            fusion=FusionKind.OUT_FUSABLE, num_inputs=(2, 4),
            doc="conv2d_nchwc(x[N,Cin/bi,H,W,bi], w[Cout/bo,Cin/bi,kh,kw,bi,bo], "
                "bias[Cout/bo,bo]?, scale[N,Cin/bi,1,1,bi]?): group-1 2-D convolution in "
                "blocked layout, of x * scale when scale is given")
register_op("depthwise_conv2d_nchwc", reference=_depthwise_conv2d_nchwc,
            infer=lambda c: _infer_blocked_conv(c, True), attrs=dict(_ATTRS),
            fusion=FusionKind.OUT_FUSABLE, num_inputs=(2, 3),
            doc="depthwise_conv2d_nchwc(x[N,C/b,H,W,b], w[C/b,kh,kw,b], bias[C/b,b]?): one "
                "filter per channel, in blocked layout")

__all__ = ["block_array", "unblock_array", "block_conv_weights", "block_depthwise_weights"]
