"""Neural-network ops: convolution, pooling, normalization, softmax, resize, depth/space shuffles.

Every op here works on channels-first tensors ``[N, C, *spatial]`` with 1, 2 or 3 (any number
of) spatial dimensions. Attributes are normalized: explicit per-dimension lists, pads written as
``[begin_0, begin_1, ..., end_0, end_1, ...]``; ``None`` for `strides`, `pads` or `dilations`
means "all ones" (strides, dilations) or "all zeros" (pads). Frontends resolve their own
spellings (ONNX's ``auto_pad``, ``output_shape``, opset<13 softmax) before emitting these ops.

References are numpy only and vectorized: convolution is im2col (one strided slice per kernel
position) followed by one batched matmul; pooling reduces over the same kernel-position slices;
resize is separable, one axis at a time, as a gather (nearest) or a small matrix (linear,
cubic, antialiased). Convolutions accumulate in float64, resize weighs in float64, softmax
computes in the input's type, other ops compute half-precision inputs in float32; each rounds
once at the end.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional, Sequence

import numpy as np

from ..infer import normalize_axis
from ..registry import REQUIRED, FusionKind, InferContext, register_op
from ..types import Dim, TensorType, dtypes

# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


def _compute_dtype(dt: np.dtype) -> np.dtype:
    """The dtype references compute in: float32 for half types, the type itself otherwise."""
    dt = np.dtype(dt)
    if dt == np.float64:
        return dt
    return np.dtype(np.float32)


# Convolutions accumulate in float64 and round once: every output channel then gets the same
# float32 result for the same data, whatever order the BLAS kernel sums in (a model whose
# channels are identical must keep them identical, as onnxruntime does).
_CONV_ACC = np.dtype(np.float64)


def _float_input(ctx: InferContext, i: int = 0, what: str = "input") -> TensorType:
    t = ctx[i]
    if not t.dtype.is_float:
        ctx.fail(f"{what} must be a floating-point tensor, got {t}")
    return t


def _window_params(attrs: dict, nsp: int, ctx: Optional[InferContext] = None,
                   kernel: Optional[Sequence[int]] = None):
    """(strides, pads, dilations) as full lists, checked for length and sign."""

    def fail(msg):
        if ctx is not None:
            ctx.fail(msg)
        raise ValueError(msg)

    strides = list(attrs.get("strides") or [1] * nsp)
    pads = list(attrs.get("pads") or [0] * (2 * nsp))
    dilations = list(attrs.get("dilations") or [1] * nsp)
    if len(strides) != nsp:
        fail(f"strides {strides} must have {nsp} entries (one per spatial dimension)")
    if len(dilations) != nsp:
        fail(f"dilations {dilations} must have {nsp} entries (one per spatial dimension)")
    if len(pads) != 2 * nsp:
        fail(f"pads {pads} must have {2 * nsp} entries (begins then ends)")
    if any(int(s) < 1 for s in strides):
        fail(f"strides {strides} must be positive")
    if any(int(d) < 1 for d in dilations):
        fail(f"dilations {dilations} must be positive")
    if kernel is not None:
        if len(kernel) != nsp:
            fail(f"kernel_shape {list(kernel)} must have {nsp} entries")
        if any(isinstance(k, int) and k < 1 for k in kernel):
            fail(f"kernel_shape {list(kernel)} must be positive")
    return [int(s) for s in strides], [int(p) for p in pads], [int(d) for d in dilations]


def window_out_dim(size: Dim, k: Dim, s: int, d: int, pb: int, pe: int,
                   ceil_mode: bool = False) -> Dim:
    """Output length of a sliding window (conv, pooling) along one dimension.

    ceil_mode follows ONNX/PyTorch: round up, but the last window must start inside the input
    or its leading padding. A symbolic size is kept when the window preserves the length
    (stride 1, padding equal to the dilated kernel extent minus one); otherwise unknown.
    """
    if not isinstance(k, int):
        return None
    extent = d * (k - 1) + 1
    if not isinstance(size, int):
        if s == 1 and pb + pe == extent - 1:
            return size
        return None
    span = size + pb + pe - extent
    if ceil_mode:
        out = -(-span // s) + 1
        if out > 0 and (out - 1) * s >= size + pb:
            out -= 1
    else:
        out = span // s + 1
    return max(out, 0)


def _check_out_dims(ctx: InferContext, out: Sequence[Dim], what: str) -> None:
    for o in out:
        if isinstance(o, int) and o < 1:
            ctx.fail(f"{what}: the output would have a spatial dimension of size {o} "
                     f"(window larger than the padded input)")


def _kernel_offsets(kernel: Sequence[int]):
    return list(itertools.product(*[range(k) for k in kernel]))


def _window_slices(out: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
                   offset: Sequence[int]) -> tuple:
    """Index of the padded input seen by kernel position `offset` for every output position."""
    return (slice(None), slice(None)) + tuple(
        slice(o * d, o * d + s * (n - 1) + 1, s)
        for o, d, s, n in zip(offset, dilations, strides, out))


def _pad_spatial(x: np.ndarray, begins: Sequence[int], ends: Sequence[int], value) -> np.ndarray:
    if not any(begins) and not any(ends):
        return x
    width = [(0, 0), (0, 0)] + [(int(b), int(e)) for b, e in zip(begins, ends)]
    return np.pad(x, width, mode="constant", constant_values=value)


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

# ----------------------------------------------------------------------------------------------
# Normalization
# ----------------------------------------------------------------------------------------------


def _channel_param(x: np.ndarray, p: np.ndarray, cdt) -> np.ndarray:
    return p.astype(cdt, copy=False).reshape((1, -1) + (1,) * (x.ndim - 2))


def _check_channel_vectors(ctx: InferContext, x: TensorType, indices, what: str) -> None:
    c = x.shape[1] if x.rank >= 2 else None
    for i in indices:
        if not ctx.has(i):
            continue
        t = ctx[i]
        if t.rank != 1 or (isinstance(t.shape[0], int) and isinstance(c, int) and t.shape[0] != c):
            ctx.fail(f"{what} input {i} must be a vector of the {c} channels, got {t}")


def _infer_batch_norm(ctx: InferContext) -> TensorType:
    x = _float_input(ctx, 0)
    if x.rank < 2:
        ctx.fail(f"input must be [N, C, ...] (rank >= 2), got {x}")
    _check_channel_vectors(ctx, x, range(1, 5), "batch_norm")
    return x


def _batch_norm(x, scale, bias, mean, var, epsilon=1e-5):
    """Inference batch normalization with running statistics (per channel, axis 1)."""
    cdt = _compute_dtype(x.dtype)
    inv = scale.astype(cdt) / np.sqrt(var.astype(cdt) + cdt.type(epsilon))
    y = (x.astype(cdt) - _channel_param(x, mean, cdt)) * _channel_param(x, inv, cdt) \
        + _channel_param(x, bias, cdt)
    return y.astype(x.dtype)


register_op("batch_norm", reference=_batch_norm, infer=_infer_batch_norm,
            attrs={"epsilon": 1e-5}, fusion=FusionKind.BROADCAST, num_inputs=5,
            doc="batch_norm(x, scale, bias, mean, var): (x-mean)/sqrt(var+eps)*scale+bias")


def _infer_batch_norm_training(ctx: InferContext):
    x = _infer_batch_norm(ctx)
    c = TensorType(ctx[3].dtype, ctx[3].shape)
    return [x, c, TensorType(ctx[4].dtype, ctx[4].shape)]


def _batch_norm_training(x, scale, bias, mean, var, epsilon=1e-5, momentum=0.9):
    """Training-mode batch normalization: normalizes with the batch's own statistics and
    returns the updated running mean and (biased) variance."""
    cdt = _compute_dtype(x.dtype)
    axes = (0,) + tuple(range(2, x.ndim))
    xc = x.astype(cdt)
    bm = xc.mean(axis=axes)
    bv = xc.var(axis=axes)
    y = _batch_norm(x, scale, bias, bm, bv, epsilon)
    mom = cdt.type(momentum)
    rm = mean.astype(cdt) * mom + bm * (1 - mom)
    rv = var.astype(cdt) * mom + bv * (1 - mom)
    return y, rm.astype(mean.dtype), rv.astype(var.dtype)


register_op("batch_norm_training", reference=_batch_norm_training,
            infer=_infer_batch_norm_training, attrs={"epsilon": 1e-5, "momentum": 0.9},
            fusion=FusionKind.OPAQUE, num_inputs=5, num_outputs=3,
            doc="batch_norm_training(x, scale, bias, mean, var) -> (y, running_mean, running_var)")


def _infer_instance_norm(ctx: InferContext) -> TensorType:
    x = _float_input(ctx, 0)
    if x.rank < 3:
        ctx.fail(f"input must be [N, C, spatial...] (rank >= 3), got {x}")
    _check_channel_vectors(ctx, x, (1, 2), "instance_norm")
    return x


def _normalize(xc: np.ndarray, axes: tuple, epsilon: float):
    mean = xc.mean(axis=axes, keepdims=True)
    d = xc - mean
    var = (d * d).mean(axis=axes, keepdims=True)
    inv = 1 / np.sqrt(var + xc.dtype.type(epsilon))
    return d * inv, mean, inv


def _instance_norm(x, scale, bias, epsilon=1e-5):
    cdt = _compute_dtype(x.dtype)
    y, _, _ = _normalize(x.astype(cdt), tuple(range(2, x.ndim)), epsilon)
    y = y * _channel_param(x, scale, cdt) + _channel_param(x, bias, cdt)
    return y.astype(x.dtype)


register_op("instance_norm", reference=_instance_norm, infer=_infer_instance_norm,
            attrs={"epsilon": 1e-5}, fusion=FusionKind.REDUCTION, num_inputs=3,
            doc="instance_norm(x, scale[C], bias[C]): normalize each (n, c) over space")


def _infer_layer_norm(ctx: InferContext) -> TensorType:
    x = _float_input(ctx, 0)
    axis = normalize_axis(int(ctx.attrs["axis"]), x.rank, ctx)
    norm_shape = x.shape[axis:]
    for i in (1, 2):
        if not ctx.has(i):
            continue
        t = ctx[i]
        if t.rank > len(norm_shape):
            ctx.fail(f"input {i} {t} must broadcast to the normalized shape "
                     f"{list(norm_shape)}")
        for a, b in zip(reversed(t.shape), reversed(norm_shape)):
            if isinstance(a, int) and isinstance(b, int) and a not in (1, b):
                ctx.fail(f"input {i} {t} does not broadcast to the normalized shape "
                         f"{list(norm_shape)}")
    return x


def _layer_norm(x, scale, bias=None, axis=-1, epsilon=1e-5):
    """Normalize over dimensions [axis, rank); scale and bias broadcast over them."""
    cdt = _compute_dtype(x.dtype)
    axis = axis % x.ndim if x.ndim else 0
    y, _, _ = _normalize(x.astype(cdt), tuple(range(axis, x.ndim)), epsilon)
    y = y * scale.astype(cdt)
    if bias is not None:
        y = y + bias.astype(cdt)
    return y.astype(x.dtype)


register_op("layer_norm", reference=_layer_norm, infer=_infer_layer_norm,
            attrs={"axis": -1, "epsilon": 1e-5}, fusion=FusionKind.REDUCTION, num_inputs=(2, 3),
            doc="layer_norm(x, scale, bias?): normalize over dims [axis, rank)")


def _infer_layer_norm_stats(ctx: InferContext):
    x = _float_input(ctx, 0)
    axis = normalize_axis(int(ctx.attrs["axis"]), x.rank, ctx)
    dt = ctx.attrs["dtype"]
    if not dt.is_float:
        ctx.fail(f"dtype must be a floating-point type, got {dt}")
    t = TensorType(dt, x.shape[:axis] + (1,) * (x.rank - axis))
    return [t, t]


def _layer_norm_stats(x, axis=-1, epsilon=1e-5, dtype=dtypes.f32):
    """(mean, 1/sqrt(var+eps)) over dims [axis, rank), kept as size-1 dims."""
    cdt = _compute_dtype(x.dtype)
    axis = axis % x.ndim if x.ndim else 0
    _, mean, inv = _normalize(x.astype(cdt), tuple(range(axis, x.ndim)), epsilon)
    return mean.astype(dtype.numpy), inv.astype(dtype.numpy)


register_op("layer_norm_stats", reference=_layer_norm_stats, infer=_infer_layer_norm_stats,
            attrs={"axis": -1, "epsilon": 1e-5, "dtype": dtypes.f32},
            fusion=FusionKind.REDUCTION, num_inputs=1, num_outputs=2,
            doc="layer_norm_stats(x) -> (mean, inv_std_dev): layer_norm's saved statistics")


def _infer_group_norm(ctx: InferContext) -> TensorType:
    x = _float_input(ctx, 0)
    if x.rank < 2:
        ctx.fail(f"input must be [N, C, ...] (rank >= 2), got {x}")
    g = int(ctx.attrs["num_groups"])
    c = x.shape[1]
    if g < 1 or (isinstance(c, int) and c % g):
        ctx.fail(f"num_groups={g} must be positive and divide the {c} channels")
    _check_channel_vectors(ctx, x, (1, 2), "group_norm")
    return x


def _group_norm(x, scale, bias, num_groups, epsilon=1e-5):
    """Normalize each group of C/num_groups channels over (channels, space); then a
    per-channel affine transform."""
    cdt = _compute_dtype(x.dtype)
    n, c = x.shape[:2]
    xg = x.astype(cdt).reshape(n, num_groups, -1)
    y, _, _ = _normalize(xg, (2,), epsilon)
    y = y.reshape(x.shape) * _channel_param(x, scale, cdt) + _channel_param(x, bias, cdt)
    return y.astype(x.dtype)


register_op("group_norm", reference=_group_norm, infer=_infer_group_norm,
            attrs={"num_groups": REQUIRED, "epsilon": 1e-5}, fusion=FusionKind.REDUCTION,
            num_inputs=3, doc="group_norm(x, scale[C], bias[C])")


def _infer_lrn(ctx: InferContext) -> TensorType:
    x = _float_input(ctx, 0)
    if x.rank < 3:
        ctx.fail(f"input must be [N, C, spatial...] (rank >= 3), got {x}")
    if int(ctx.attrs["size"]) < 1:
        ctx.fail(f"size must be positive, got {ctx.attrs['size']}")
    return x


def _lrn(x, size, alpha=1e-4, beta=0.75, bias=1.0):
    """Local response normalization across channels: y = x / (bias + alpha/size * S)^beta,
    S the sum of x^2 over channels [c - (size-1)//2, c + ceil((size-1)/2)]."""
    cdt = _compute_dtype(x.dtype)
    xc = x.astype(cdt)
    c = x.shape[1]
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    sq = np.concatenate([np.zeros((x.shape[0], 1) + x.shape[2:], cdt), np.cumsum(xc * xc, 1)], 1)
    idx = np.arange(c)
    top = np.minimum(idx + hi + 1, c)
    bot = np.maximum(idx - lo, 0)
    ssum = sq[:, top] - sq[:, bot]
    y = xc / (cdt.type(bias) + cdt.type(alpha / size) * ssum) ** cdt.type(beta)
    return y.astype(x.dtype)


register_op("lrn", reference=_lrn, infer=_infer_lrn,
            attrs={"size": REQUIRED, "alpha": 1e-4, "beta": 0.75, "bias": 1.0},
            fusion=FusionKind.OPAQUE, num_inputs=1, doc="local response normalization")


def _infer_mvn(ctx: InferContext) -> TensorType:
    x = _float_input(ctx, 0)
    for a in ctx.attrs["axes"]:
        normalize_axis(int(a), x.rank, ctx)
    return x


def _mvn(x, axes=(0, 2, 3), epsilon=1e-9):
    """(x - mean) / (sqrt(variance) + epsilon) over `axes` (ONNX MeanVarianceNormalization)."""
    cdt = _compute_dtype(x.dtype)
    xc = x.astype(cdt)
    axes = tuple(int(a) % x.ndim for a in axes)
    mean = xc.mean(axis=axes, keepdims=True)
    var = (xc * xc).mean(axis=axes, keepdims=True) - mean * mean
    y = (xc - mean) / (np.sqrt(np.maximum(var, 0)) + cdt.type(epsilon))
    return y.astype(x.dtype)


register_op("mean_variance_normalization", reference=_mvn, infer=_infer_mvn,
            attrs={"axes": [0, 2, 3], "epsilon": 1e-9}, fusion=FusionKind.REDUCTION,
            num_inputs=1, doc="(x - mean) / (std + epsilon) over axes")


def _infer_lp_norm(ctx: InferContext) -> TensorType:
    x = _float_input(ctx, 0)
    normalize_axis(int(ctx.attrs["axis"]), x.rank, ctx)
    if int(ctx.attrs["p"]) not in (1, 2):
        ctx.fail(f"p must be 1 or 2, got {ctx.attrs['p']}")
    return x


def _lp_normalization(x, axis=-1, p=2):
    """x / ||x||_p along axis; a zero norm gives 0."""
    cdt = _compute_dtype(x.dtype)
    xc = x.astype(cdt)
    if p == 1:
        norm = np.abs(xc).sum(axis=axis, keepdims=True)
    else:
        norm = np.sqrt((xc * xc).sum(axis=axis, keepdims=True))
    with np.errstate(divide="ignore", invalid="ignore"):
        y = np.where(norm == 0, cdt.type(0), xc / norm)
    return y.astype(x.dtype)


register_op("lp_normalization", reference=_lp_normalization, infer=_infer_lp_norm,
            attrs={"axis": -1, "p": 2}, fusion=FusionKind.REDUCTION, num_inputs=1,
            doc="x / ||x||_p along axis (p is 1 or 2)")

# ----------------------------------------------------------------------------------------------
# softmax family (one axis; opset<13 ONNX semantics are reshapes around it)
# ----------------------------------------------------------------------------------------------


def _infer_softmax(ctx: InferContext) -> TensorType:
    x = _float_input(ctx, 0)
    if x.rank == 0:
        ctx.fail("input must have rank >= 1")
    normalize_axis(int(ctx.attrs["axis"]), x.rank, ctx)
    return x


# softmax and log_softmax compute in the input's own type (per-op rounding for half types),
# as the ONNX reference does: the conformance data of f16 models is made that way.
def _softmax(x, axis=-1):
    if x.size == 0:
        return x.copy()
    xc = x
    m = xc.max(axis=axis, keepdims=True)
    e = np.exp(xc - np.where(np.isfinite(m), m, 0))
    return (e / e.sum(axis=axis, keepdims=True)).astype(x.dtype)


def _log_softmax(x, axis=-1):
    if x.size == 0:
        return x.copy()
    xc = x
    m = xc.max(axis=axis, keepdims=True)
    d = xc - np.where(np.isfinite(m), m, 0)
    return (d - np.log(np.exp(d).sum(axis=axis, keepdims=True))).astype(x.dtype)


def _hardmax(x, axis=-1):
    """1 at the first maximum along axis, 0 elsewhere."""
    axis = axis % x.ndim
    if x.shape[axis] == 0:
        return np.zeros_like(x)
    am = np.expand_dims(np.argmax(x, axis=axis), axis)
    y = np.zeros_like(x)
    np.put_along_axis(y, am, 1, axis=axis)
    return y


for _name, _fn, _kind in (("softmax", _softmax, FusionKind.REDUCTION),
                          ("log_softmax", _log_softmax, FusionKind.REDUCTION),
                          ("hardmax", _hardmax, FusionKind.REDUCTION)):
    register_op(_name, reference=_fn, infer=_infer_softmax, attrs={"axis": -1}, fusion=_kind,
                num_inputs=1, doc=f"{_name} along one axis")

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
    if has_scales and np.any(data <= 0):
        ctx.fail(f"scales {data.tolist()} must be positive")
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

__all__ = ["window_out_dim", "conv_transpose_out_dim", "resize_plan"]
