"""Normalizations (batch, instance, layer, group, LRN, mean-variance, Lp) and the softmax
family. Half-precision inputs compute in float32 and softmax in the input's type; each rounds
once at the end."""

from __future__ import annotations


import numpy as np

from ..infer import normalize_axis
from ..registry import REQUIRED, FusionKind, InferContext, register_op
from ..types import TensorType, dtypes
from .window import _compute_dtype, _float_input


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
