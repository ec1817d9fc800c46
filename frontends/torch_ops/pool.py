"""Pooling ATen ops: max and average pooling (with a max pool's indices where they are
read), and adaptive pooling.

PyTorch pools an unbatched [C, *spatial] tensor as well as a batched one; `_pool` gives the
former a batch dim of 1. Spatial sizes the indices or a window sum depend on must be static.
"""

from __future__ import annotations

import re

import numpy as np

from slimc.ir import dtypes

from . import aten, converter
from .nn import _expand_list, _pads


def _indices_unused(node):
    for user in node.users:
        if user.args[1] != 0 and user.users:
            return "the indices of a max pool are used (slimc gives the pooled values only)"
    return None


def _pool(fn):
    """A pooling converter fn(ctx, x, nsp) for batched [N, C, *spatial] input; PyTorch also
    pools an unbatched [C, *spatial] tensor, which gets a batch dim of 1 around fn."""

    def convert(ctx):
        nsp = int(re.search(r"(\d)d", str(ctx.node.target)).group(1))
        x = ctx.tensor("self")
        if x.type.rank != nsp + 1:
            return fn(ctx, x, nsp)
        y = fn(ctx, ctx.emit("unsqueeze", [x, ctx.axes_const([0])]), nsp)

        def squeeze(v):
            return v if v is None else ctx.emit("squeeze", [v, ctx.axes_const([0])])

        return [squeeze(v) for v in y] if isinstance(y, list) else squeeze(y)

    convert.__name__ = fn.__name__
    return convert


def _refuse_pool_indices(node):
    if _indices_unused(node) is None:
        return None
    val, out = node.args[0].meta.get("val"), node.meta.get("val")[0]
    if not all(isinstance(d, int) for d in list(val.shape[2:]) + list(out.shape[2:])):
        return "max pool indices of symbolic sizes"
    return None


@converter(aten.max_pool2d_with_indices.default, aten.max_pool3d_with_indices.default,
           refuse=_refuse_pool_indices)
@_pool
def max_pool_with_indices(ctx, x, nsp):
    if _indices_unused(ctx.node) is None:
        return [_max_pool(ctx, x, nsp), None]
    return _max_pool_indices(ctx, x, nsp)


def _max_pool_indices(ctx, x, nsp):
    k = _expand_list(ctx.ints("kernel_size"), nsp, [])
    st = _expand_list(ctx.ints("stride"), nsp, k)
    pad = _expand_list(ctx.ints("padding"), nsp, [0])
    dil = _expand_list(ctx.ints("dilation"), nsp, [1])
    out = [int(d) for d in ctx.meta()[0].shape[-nsp:]]
    windows = [np.arange(o)[:, None] * s - p + np.arange(kk)[None, :] * d
               for o, s, p, kk, d in zip(out, st, pad, k, dil)]
    return _window_max(ctx, x, windows)


def _window_max(ctx, x, windows: list):
    """Max and index (flat over the spatial dims, as PyTorch counts) of every window, given
    per spatial axis an [outputs, window] array of input positions (outside the input:
    padding). The windows' elements are gathered from the flattened image with a -inf
    appended, by one constant index; the index of the max goes through a constant table."""
    size = [int(d) for d in x.type.shape[2:]]
    out, k = [w.shape[0] for w in windows], [w.shape[1] for w in windows]
    flat = np.zeros(out + k, np.int64)
    inside = np.ones(out + k, bool)
    for i, w in enumerate(windows):  # axis i's position of output cell o, window element j
        shape = [1] * (2 * len(windows))
        shape[i], shape[len(windows) + i] = w.shape
        along = w.reshape(shape)
        flat = flat + along * int(np.prod(size[i + 1:]))
        inside = inside & (along >= 0) & (along < size[i])
    total = int(np.prod(size))
    flat = np.where(inside, flat, total)  # the appended -inf
    n, c = ctx.dim_size(x, 0), ctx.dim_size(x, 1)
    xf = ctx.emit("reshape", [x, ctx.shape_value([n, c, total])])
    low = ctx.emit("expand", [ctx.const(-np.inf, x.type.dtype), ctx.shape_value([n, c, 1])])
    xf = ctx.emit("concat", [xf, low], axis=2)
    found = ctx.emit("gather", [xf, ctx.const(flat.reshape(-1), np.int64)], axis=2)
    found = ctx.emit("reshape", [found, ctx.shape_value([n, c] + out + [int(np.prod(k))])])
    values = ctx.emit("reduce_max", [found], axes=[-1], keepdims=0)
    which = ctx.emit("arg_max", [found], axis=-1, keepdims=0)
    table = ctx.const(flat.reshape(out + [-1]), np.int64)
    one_hot = ctx.emit("equal", [ctx.emit("unsqueeze", [which, ctx.axes_const([-1])]),
                                 ctx.const(np.arange(int(np.prod(k))), np.int64)])
    chosen = ctx.emit("mul", [ctx.cast(one_hot, dtypes.i64), table])
    return [values, ctx.emit("reduce_sum", [chosen], axes=[-1], keepdims=0)]


def _max_pool(ctx, x, nsp):
    kernel = _expand_list(ctx.ints("kernel_size"), nsp, [])
    return ctx.emit("max_pool", [x], kernel_shape=kernel,
                    strides=_expand_list(ctx.ints("stride"), nsp, kernel),
                    pads=_pads(ctx.ints("padding"), nsp),
                    dilations=_expand_list(ctx.ints("dilation"), nsp, [1]),
                    ceil_mode=int(bool(ctx["ceil_mode"])))


converter(aten.max_pool1d.default, aten.max_pool2d.default,
          aten.max_pool3d.default)(_pool(_max_pool))


def _refuse_divisor(node):
    divisor = node.args[6] if len(node.args) > 6 else node.kwargs.get("divisor_override")
    val = node.args[0].meta["val"]
    if divisor and not all(isinstance(d, int) for d in val.shape[-3:]):
        return "avg_pool with divisor_override over symbolic sizes"
    return None


@converter(aten.avg_pool1d.default, aten.avg_pool2d.default, aten.avg_pool3d.default,
           refuse=_refuse_divisor)
@_pool
def avg_pool(ctx, x, nsp):
    kernel = _expand_list(ctx.ints("kernel_size"), nsp, [])
    strides = _expand_list(ctx.ints("stride"), nsp, kernel)
    pads = _pads(ctx.ints("padding"), nsp)
    if ctx.raw.get("divisor_override"):
        return _window_sum(ctx, x, kernel, strides, pads[:nsp], float(ctx["divisor_override"]))
    return ctx.emit("avg_pool", [x], kernel_shape=kernel, strides=strides, pads=pads,
                    ceil_mode=int(bool(ctx["ceil_mode"])),
                    count_include_pad=int(bool(ctx["count_include_pad"])))


def _window_sum(ctx, x, kernel, strides, pads, divisor: float):
    """Each window's sum over `divisor` (avg_pool's divisor_override): a depthwise
    convolution with ones, zero padded at the end as far as ceil_mode's windows reach."""
    c, size = x.type.shape[1], x.type.shape[2:]
    out = ctx.meta().shape[-len(kernel):]
    end = [max(p, (o - 1) * s + k - n - p)
           for o, s, k, n, p in zip(out, strides, kernel, size, pads)]
    ones = ctx.const(np.ones([c, 1] + kernel), x.type.dtype)
    total = ctx.emit("conv", [x, ones], strides=strides, pads=pads + end,
                     dilations=[1] * len(kernel), group=c)
    return ctx.emit("div", [total, ctx.const(divisor, x.type.dtype)])


def _refuse_adaptive(node):
    val, out = node.args[0].meta.get("val"), list(node.args[1])
    sizes = list(val.shape[-len(out):])
    if all(o == 1 for o in out):
        return None
    if not all(isinstance(s, int) for s in sizes):
        return "adaptive pooling of symbolic sizes"
    return None


def _averaging_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in]: PyTorch's adaptive windows [floor(i*n/o), ceil((i+1)*n/o)), averaged."""
    a = np.zeros((n_out, n_in))
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        a[i, lo:hi] = 1.0 / (hi - lo)
    return a


def _adaptive(kind: str):
    """Global pooling; a plain one when each output cell covers an equal input window; else
    (average) one matmul per spatial axis with PyTorch's averaging windows: a window's mean
    is the product of its per-axis means; (max, or when its indices are read) the windows
    gathered."""

    def convert(ctx, x, nsp):
        out = ctx.ints("output_size")
        sizes = x.type.shape[2:]
        uneven = any(s % o for s, o in zip(sizes, out))
        if kind == "max" and (uneven or _indices_unused(ctx.node) is not None):
            windows = []
            for n, o in zip(sizes, out):  # [floor(i*n/o), ceil((i+1)*n/o)), -1 beyond
                lo = np.arange(o) * n // o
                hi = -(-(np.arange(o) + 1) * n // o)
                j = lo[:, None] + np.arange(int((hi - lo).max()))[None, :]
                windows.append(np.where(j < hi[:, None], j, -1))
            return _window_max(ctx, x, windows)
        if all(o == 1 for o in out):
            y = ctx.emit(f"global_{kind}_pool", [x])
        elif all(s % o == 0 for s, o in zip(sizes, out)):
            kernel = [s // o for s, o in zip(sizes, out)]
            y = ctx.emit(f"{kind}_pool", [x], kernel_shape=kernel, strides=kernel)
        else:
            y = x
            for i, (s, o) in enumerate(zip(sizes, out)):
                axis = 2 + i
                last = axis == x.type.rank - 1
                perm = list(range(x.type.rank))
                perm[axis], perm[-1] = perm[-1], perm[axis]
                if not last:
                    y = ctx.emit("transpose", [y], perm=perm)
                weights = ctx.const(_averaging_matrix(s, o).T, x.type.dtype)
                y = ctx.emit("matmul", [y, weights])
                if not last:
                    y = ctx.emit("transpose", [y], perm=perm)
        return [y, None] if kind == "max" else y

    return _pool(convert)


_ADAPTIVE_MAX = (aten.adaptive_max_pool2d.default, aten.adaptive_max_pool3d.default,
                 aten.adaptive_max_pool1d.default)
converter(aten._adaptive_avg_pool2d.default, aten._adaptive_avg_pool3d.default,
          aten.adaptive_avg_pool1d.default, refuse=_refuse_adaptive)(_adaptive("avg"))
converter(*_ADAPTIVE_MAX, refuse=_refuse_adaptive)(_adaptive("max"))
