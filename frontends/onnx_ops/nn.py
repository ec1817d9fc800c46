"""Converters for ONNX's neural-network ops: Conv, ConvTranspose, pooling, normalization,
softmax family, Resize/Upsample, DepthToSpace/SpaceToDepth.

ONNX spellings end here: ``auto_pad`` and ConvTranspose's ``output_shape`` become explicit
pads, opset<13 softmax (which flattens to 2-D at ``axis``) becomes reshapes around a one-axis
softmax, Upsample and Resize-10 become a resize with their fixed coordinate rules.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np

from slimc.ir import dtypes, has_op

from . import ConvertContext, converter, onnx_dtype

# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------


def _spatial_rank(ctx: ConvertContext, x) -> int:
    if x is None:
        ctx.fail("input 0 is required")
    if x.type.rank < 3:
        ctx.fail(f"input must be [N, C, spatial...] (rank >= 3), got {x.type}")
    return x.type.rank - 2


def _ints(ctx: ConvertContext, name: str, n: int, default: int, what: str = "") -> list:
    v = ctx.attr(name, None, kind="ints")
    if v is None:
        return [default] * n
    v = [int(e) for e in v]
    if len(v) != n:
        ctx.fail(f"attribute {name} = {v} must have {n} entries{what}")
    return v


def _kernel(ctx: ConvertContext, w, nsp: int) -> list:
    """Kernel sizes from the weight's shape, checked against kernel_shape when given."""
    shape = list(w.type.shape[2:])
    given = ctx.attr("kernel_shape", None, kind="ints")
    if given is not None:
        given = [int(k) for k in given]
        if len(given) != nsp:
            ctx.fail(f"kernel_shape {given} must have {nsp} entries")
        for a, b in zip(given, shape):
            if isinstance(b, int) and a != b:
                ctx.fail(f"kernel_shape {given} disagrees with the weight's shape {w.type}")
        return given
    return shape


def _same_pads(ctx: ConvertContext, mode: str, in_dims: Sequence, kernel: Sequence,
               strides: Sequence[int], dilations: Sequence[int]) -> list:
    """Explicit pads for auto_pad SAME_UPPER / SAME_LOWER: out = ceil(in / stride), the total
    padding split evenly with the odd one at the end (UPPER) or the beginning (LOWER)."""
    nsp = len(in_dims)
    begins, ends = [], []
    for i in range(nsp):
        extent = dilations[i] * (kernel[i] - 1) + 1 if isinstance(kernel[i], int) else None
        size = in_dims[i]
        if extent is None:
            ctx.unsupported("auto_pad SAME needs a known kernel size")
        if isinstance(size, int):
            out = -(-size // strides[i])
            total = max(0, (out - 1) * strides[i] + extent - size)
        elif strides[i] == 1:
            total = extent - 1
        else:
            ctx.unsupported(f"auto_pad {mode} with stride {strides[i]} needs a static input "
                            f"size, got spatial dimension {size!r}")
        small, big = total // 2, total - total // 2
        begins.append(small if mode == "SAME_UPPER" else big)
        ends.append(big if mode == "SAME_UPPER" else small)
    return begins + ends


def _explicit_pads(ctx: ConvertContext, x, kernel, strides, dilations) -> list:
    nsp = x.type.rank - 2
    auto_pad = ctx.attr("auto_pad", "NOTSET", kind="string")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return _same_pads(ctx, auto_pad, x.type.shape[2:], kernel, strides, dilations)
    if auto_pad == "VALID":
        return [0] * (2 * nsp)
    if auto_pad not in ("NOTSET", ""):
        ctx.fail(f"auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got {auto_pad!r}")
    pads = _ints(ctx, "pads", 2 * nsp, 0, " (begins then ends)")
    if any(p < 0 for p in pads):
        ctx.unsupported(f"negative pads {pads} are not supported")
    return pads


def _window_attrs(ctx: ConvertContext, x, kernel) -> dict:
    nsp = x.type.rank - 2
    strides = _ints(ctx, "strides", nsp, 1)
    dilations = _ints(ctx, "dilations", nsp, 1)
    pads = _explicit_pads(ctx, x, kernel, strides, dilations)
    return {"strides": strides, "pads": pads, "dilations": dilations}


def _named_outputs(ctx: ConvertContext) -> list:
    """Which of the ONNX node's outputs are wanted (non-empty names)."""
    return [bool(n) for n in ctx.node.output]


def _extra_outputs_wanted(ctx: ConvertContext) -> bool:
    return any(_named_outputs(ctx)[1:])


# ----------------------------------------------------------------------------------------------
# Conv, ConvTranspose
# ----------------------------------------------------------------------------------------------


@converter("Conv", since=1)
def conv(ctx: ConvertContext):
    x, w = ctx.input(0), ctx.input(1)
    nsp = _spatial_rank(ctx, x)
    if w is None:
        ctx.fail("weight (input 1) is required")
    kernel = _kernel(ctx, w, nsp)
    attrs = _window_attrs(ctx, x, kernel)
    return ctx.emit("conv", [x, w, ctx.input(2)], group=int(ctx.attr("group", 1, kind="int")),
                    **attrs)


@converter("ConvTranspose", since=1)
def conv_transpose(ctx: ConvertContext):
    x, w = ctx.input(0), ctx.input(1)
    nsp = _spatial_rank(ctx, x)
    if w is None:
        ctx.fail("weight (input 1) is required")
    kernel = _kernel(ctx, w, nsp)
    strides = _ints(ctx, "strides", nsp, 1)
    dilations = _ints(ctx, "dilations", nsp, 1)
    opad = _ints(ctx, "output_padding", nsp, 0)
    group = int(ctx.attr("group", 1, kind="int"))
    auto_pad = ctx.attr("auto_pad", "NOTSET", kind="string")
    output_shape = ctx.attr("output_shape", None, kind="ints")
    in_dims = x.type.shape[2:]

    def natural(i):  # output length with no padding
        if not isinstance(in_dims[i], int) or not isinstance(kernel[i], int):
            ctx.unsupported(f"output_shape/auto_pad need static spatial sizes, got {x.type}")
        return strides[i] * (in_dims[i] - 1) + opad[i] + dilations[i] * (kernel[i] - 1) + 1

    if output_shape is not None:
        output_shape = [int(v) for v in output_shape][-nsp:]
        if len(output_shape) != nsp:
            ctx.fail(f"output_shape must have {nsp} spatial entries")
        pads = [0] * (2 * nsp)
        for i in range(nsp):
            total = natural(i) - output_shape[i]
            if total < 0:  # a longer output than natural: zeros at the end, as output_padding
                if -total >= strides[i]:
                    ctx.fail(f"output_shape {output_shape} is larger than ConvTranspose can "
                             f"produce from input {x.type} (at most stride - 1 = "
                             f"{strides[i] - 1} beyond {natural(i)} in dimension {i})")
                pads[nsp + i] = total
                continue
            small, big = total // 2, total - total // 2
            pads[i], pads[nsp + i] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        pads = [0] * (2 * nsp)
        for i in range(nsp):
            total = max(0, natural(i) - in_dims[i] * strides[i])
            small, big = total // 2, total - total // 2
            pads[i], pads[nsp + i] = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    elif auto_pad == "VALID":
        pads = [0] * (2 * nsp)
    elif auto_pad in ("NOTSET", ""):
        pads = _ints(ctx, "pads", 2 * nsp, 0, " (begins then ends)")
        if any(p < 0 for p in pads):
            ctx.unsupported(f"negative pads {pads} are not supported")
    else:
        ctx.fail(f"auto_pad must be NOTSET, SAME_UPPER, SAME_LOWER or VALID, got {auto_pad!r}")
    return ctx.emit("conv_transpose", [x, w, ctx.input(2)], strides=strides, pads=pads,
                    dilations=dilations, group=group, output_padding=opad)


# ----------------------------------------------------------------------------------------------
# Pooling
# ----------------------------------------------------------------------------------------------


def _pool_attrs(ctx: ConvertContext, x) -> dict:
    nsp = _spatial_rank(ctx, x)
    kernel = ctx.attr("kernel_shape", None, kind="ints")
    if kernel is None:
        ctx.fail("attribute kernel_shape is required")
    kernel = [int(k) for k in kernel]
    if len(kernel) != nsp:
        ctx.fail(f"kernel_shape {kernel} must have {nsp} entries for input {x.type}")
    attrs = {"kernel_shape": kernel, **_window_attrs(ctx, x, kernel)}
    attrs["ceil_mode"] = int(ctx.attr("ceil_mode", 0, kind="int"))
    return attrs


@converter("MaxPool", since=1)
def max_pool(ctx: ConvertContext):
    x = ctx.input(0)
    attrs = _pool_attrs(ctx, x)
    attrs["storage_order"] = int(ctx.attr("storage_order", 0, kind="int"))
    if _extra_outputs_wanted(ctx):
        return ctx.emit("max_pool_with_indices", [x], num_outputs=2, **attrs)
    return ctx.emit("max_pool", [x], **attrs)


@converter("AveragePool", since=1)
def average_pool(ctx: ConvertContext):
    x = ctx.input(0)
    attrs = _pool_attrs(ctx, x)
    return ctx.emit("avg_pool", [x], count_include_pad=int(ctx.attr("count_include_pad", 0,
                                                                     kind="int")), **attrs)


def _p_attr(ctx: ConvertContext) -> int:
    p = ctx.attr("p", 2)
    if float(p) != int(p) or int(p) < 1:
        ctx.unsupported(f"p = {p} (only positive integer p is supported)")
    return int(p)


@converter("LpPool", since=1)
def lp_pool(ctx: ConvertContext):
    x = ctx.input(0)
    attrs = _pool_attrs(ctx, x)
    return ctx.emit("lp_pool", [x], p=_p_attr(ctx), **attrs)


@converter("GlobalAveragePool", since=1)
def global_average_pool(ctx: ConvertContext):
    _spatial_rank(ctx, ctx.input(0))
    return ctx.emit("global_avg_pool", [ctx.input(0)])


@converter("GlobalMaxPool", since=1)
def global_max_pool(ctx: ConvertContext):
    _spatial_rank(ctx, ctx.input(0))
    return ctx.emit("global_max_pool", [ctx.input(0)])


@converter("GlobalLpPool", since=1)
def global_lp_pool(ctx: ConvertContext):
    _spatial_rank(ctx, ctx.input(0))
    return ctx.emit("global_lp_pool", [ctx.input(0)], p=_p_attr(ctx))


# ----------------------------------------------------------------------------------------------
# Normalization
# ----------------------------------------------------------------------------------------------


@converter("BatchNormalization", since=6)
def batch_norm_6(ctx: ConvertContext):
    """Opset 6: is_test=0 normalizes with the batch's own statistics (training mode)."""
    if int(ctx.attr("is_test", 0, kind="int")):
        return batch_norm(ctx)
    if _extra_outputs_wanted(ctx):
        ctx.unsupported("the training-mode statistics outputs of BatchNormalization-6")
    ins = [ctx.input(i) for i in range(5)]
    if any(v is None for v in ins):
        ctx.fail("BatchNormalization takes 5 inputs (X, scale, B, mean, var)")
    return ctx.emit("batch_norm_training", ins, num_outputs=3,
                    epsilon=float(ctx.attr("epsilon", 1e-5, kind="float")),
                    momentum=float(ctx.attr("momentum", 0.9, kind="float")))[0]


@converter("BatchNormalization", since=7)
def batch_norm(ctx: ConvertContext):
    ins = [ctx.input(i) for i in range(5)]
    if any(v is None for v in ins):
        ctx.fail("BatchNormalization takes 5 inputs (X, scale, B, mean, var)")
    eps = float(ctx.attr("epsilon", 1e-5, kind="float"))
    if ctx.opset < 9 and int(ctx.attr("spatial", 1, kind="int")) == 0 and \
            any(v.type.rank != 1 for v in ins[1:]):
        ctx.unsupported("spatial=0 (per-element statistics) is not supported")
    training = int(ctx.attr("training_mode", 0, kind="int")) if ctx.opset >= 14 else 0
    if training:
        outs = ctx.emit("batch_norm_training", ins, num_outputs=3, epsilon=eps,
                        momentum=float(ctx.attr("momentum", 0.9, kind="float")))
        return outs[:len(ctx.node.output)]
    if _extra_outputs_wanted(ctx):
        ctx.unsupported("the mean/variance outputs exist only in training mode, which this "
                        "opset does not mark; training-mode batch norm needs opset >= 14 "
                        "with training_mode=1")
    return ctx.emit("batch_norm", ins, epsilon=eps)


@converter("InstanceNormalization", since=1)
def instance_norm(ctx: ConvertContext):
    return ctx.emit("instance_norm", ctx.inputs[:3],
                    epsilon=float(ctx.attr("epsilon", 1e-5, kind="float")))


@converter("LayerNormalization", since=17)
def layer_norm(ctx: ConvertContext):
    x = ctx.input(0)
    axis = int(ctx.attr("axis", -1, kind="int"))
    eps = float(ctx.attr("epsilon", 1e-5, kind="float"))
    stash = onnx_dtype(int(ctx.attr("stash_type", 1, kind="int")), " (stash_type)")
    wanted = _named_outputs(ctx)
    y = ctx.emit("layer_norm", [x, ctx.input(1), ctx.input(2)], axis=axis, epsilon=eps)
    if not any(wanted[1:]):
        return y
    mean, inv = ctx.emit("layer_norm_stats", [x], num_outputs=2, axis=axis, epsilon=eps,
                         dtype=stash)
    return [y, mean, inv][:len(wanted)]


@converter("GroupNormalization", since=18)
def group_norm_18(ctx: ConvertContext):
    """Opset 18: scale and bias are per group; repeated to per channel (they must be
    constants)."""
    x = ctx.input(0)
    g = int(ctx.attr("num_groups", None, kind="int"))
    c = x.type.shape[1] if x.type.rank >= 2 else None
    if not isinstance(c, int):
        ctx.unsupported(f"GroupNormalization-18 needs a static channel count, got {x.type}")
    params = []
    for i in (1, 2):
        data = ctx.const_value(i)
        if data is None:
            ctx.unsupported("GroupNormalization-18 (per-group scale/bias) needs constant scale "
                            "and bias")
        if data.shape != (g,):
            ctx.fail(f"input {i} must have num_groups={g} entries, got shape {list(data.shape)}")
        if c % g:
            ctx.fail(f"num_groups={g} must divide the {c} channels")
        params.append(ctx.const(np.repeat(data, c // g)))
    return ctx.emit("group_norm", [x] + params, num_groups=g,
                    epsilon=float(ctx.attr("epsilon", 1e-5, kind="float")))


@converter("GroupNormalization", since=21)
def group_norm(ctx: ConvertContext):
    g = ctx.attr("num_groups", None, kind="int")
    if g is None:
        ctx.fail("attribute num_groups is required")
    return ctx.emit("group_norm", ctx.inputs[:3], num_groups=int(g),
                    epsilon=float(ctx.attr("epsilon", 1e-5, kind="float")))


@converter("LRN", since=1)
def lrn(ctx: ConvertContext):
    size = ctx.attr("size", None, kind="int")
    if size is None:
        ctx.fail("attribute size is required")
    return ctx.emit("lrn", [ctx.input(0)], size=int(size),
                    alpha=float(ctx.attr("alpha", 1e-4, kind="float")),
                    beta=float(ctx.attr("beta", 0.75, kind="float")),
                    bias=float(ctx.attr("bias", 1.0, kind="float")))


@converter("MeanVarianceNormalization", since=9)
def mean_variance_normalization(ctx: ConvertContext):
    x = ctx.input(0)
    axes = ctx.attr("axes", [0, 2, 3], kind="ints")
    rank = x.type.rank
    norm = []
    for a in axes:
        a = int(a)
        if not -rank <= a < rank:
            ctx.fail(f"axis {a} is out of range for {x.type}")
        norm.append(a % rank)
    return ctx.emit("mean_variance_normalization", [x], axes=sorted(set(norm)))


@converter("LpNormalization", since=1)
def lp_normalization(ctx: ConvertContext):
    p = int(ctx.attr("p", 2, kind="int"))
    if p not in (1, 2):
        ctx.unsupported(f"p = {p} (LpNormalization takes p = 1 or 2)")
    return ctx.emit("lp_normalization", [ctx.input(0)],
                    axis=int(ctx.attr("axis", -1, kind="int")), p=p)


# ----------------------------------------------------------------------------------------------
# Softmax, LogSoftmax, Hardmax
# ----------------------------------------------------------------------------------------------


def _softmax_13(slimc_op: str):
    def convert(ctx: ConvertContext):
        return ctx.emit(slimc_op, [ctx.input(0)], axis=int(ctx.attr("axis", -1, kind="int")))

    return convert


def _softmax_legacy(slimc_op: str):
    """Opset 1-12: the input is seen as 2-D [prod(shape[:axis]), prod(shape[axis:])] and the
    op runs along the second dimension. When the trailing block has at most one dimension
    other than 1 that is a one-axis op; otherwise a reshape to 2-D and back."""

    def convert(ctx: ConvertContext):
        x = ctx.input(0)
        shape = list(x.type.shape)
        rank = len(shape)
        axis = int(ctx.attr("axis", 1, kind="int"))
        if not -rank <= axis < max(rank, 1):
            ctx.fail(f"axis {axis} is out of range for {x.type}")
        axis = axis % rank if rank else 0
        tail = shape[axis:]
        big = [axis + i for i, d in enumerate(tail) if d != 1]
        if len(big) <= 1:
            return ctx.emit(slimc_op, [x], axis=big[0] if big else rank - 1)
        if not has_op("reshape"):
            ctx.unsupported(f"{ctx.node.op_type}-{ctx.opset} over several dimensions needs the "
                            f"reshape op")
        head, rest = math.prod(shape[:axis]) if all(isinstance(d, int) for d in shape[:axis]) \
            else None, None
        if all(isinstance(d, int) for d in tail):
            rest = math.prod(tail)
        if head is None and rest is None:
            ctx.unsupported(f"{ctx.node.op_type}-{ctx.opset} over several dimensions with "
                            f"symbolic sizes on both sides of axis {axis}: {x.type}")
        flat = ctx.const(np.array([-1 if head is None else head, -1 if rest is None else rest],
                                  dtype=np.int64))
        y = ctx.emit(slimc_op, [ctx.emit("reshape", [x, flat],
                                         allowzero=int(head is not None and rest is not None))],
                     axis=1)
        if x.type.is_static:
            back = ctx.const(np.array(shape, dtype=np.int64))
        else:
            back = ctx.emit("shape", [x])
        return ctx.emit("reshape", [y, back])

    return convert


for _onnx, _slimc in (("Softmax", "softmax"), ("LogSoftmax", "log_softmax"),
                      ("Hardmax", "hardmax")):
    converter(_onnx, since=1)(_softmax_legacy(_slimc))
    converter(_onnx, since=13)(_softmax_13(_slimc))


# ----------------------------------------------------------------------------------------------
# DepthToSpace, SpaceToDepth
# ----------------------------------------------------------------------------------------------


def _block_op(slimc_op: str):
    def convert(ctx: ConvertContext):
        b = ctx.attr("blocksize", None, kind="int")
        if b is None:
            ctx.fail("attribute blocksize is required")
        mode = ctx.attr("mode", "DCR", kind="string")
        return ctx.emit(slimc_op, [ctx.input(0)], blocksize=int(b), mode=mode)

    return convert


converter("DepthToSpace", since=1)(_block_op("depth_to_space"))
converter("SpaceToDepth", since=1)(_block_op("space_to_depth"))


# ----------------------------------------------------------------------------------------------
# Resize, Upsample
# ----------------------------------------------------------------------------------------------


def _present(ctx: ConvertContext, i: int):
    """Input i, or None when absent or an empty tensor (how opset 11 leaves scales out)."""
    v = ctx.input(i)
    if v is None:
        return None
    if v.type.rank == 1 and v.type.shape[0] == 0:
        return None
    return v


@converter("Resize", since=11)
def resize(ctx: ConvertContext):
    x = ctx.input(0)
    mode = ctx.attr("mode", "nearest", kind="string")
    ctm = ctx.attr("coordinate_transformation_mode", "half_pixel", kind="string")
    roi, scales, sizes = _present(ctx, 1), _present(ctx, 2), _present(ctx, 3)
    if scales is not None and sizes is not None:
        ctx.fail("only one of scales and sizes may be given")
    if scales is None and sizes is None:
        ctx.fail("one of scales and sizes is required")
    if scales is not None and scales.dtype != dtypes.f32:
        scales = ctx.emit("cast", [scales], to=dtypes.f32)
    if sizes is not None and sizes.dtype != dtypes.i64:
        ctx.fail(f"sizes must be int64, got {sizes.type}")
    antialias = int(ctx.attr("antialias", 0, kind="int"))
    if mode == "nearest":
        antialias = 0  # no effect on nearest
    axes = ctx.attr("axes", None, kind="ints")
    if axes is not None:
        rank = x.type.rank
        for a in axes:
            if not -rank <= int(a) < rank:
                ctx.fail(f"axis {a} is out of range for {x.type}")
        axes = [int(a) % rank for a in axes]
    if ctm != "tf_crop_and_resize":
        roi = None
    elif roi is None:
        ctx.fail("coordinate_transformation_mode tf_crop_and_resize needs roi")
    return ctx.emit(
        "resize", [x, roi, scales, sizes], mode=mode, coordinate_transformation_mode=ctm,
        nearest_mode=ctx.attr("nearest_mode", "round_prefer_floor", kind="string"),
        cubic_coeff_a=float(ctx.attr("cubic_coeff_a", -0.75, kind="float")),
        exclude_outside=int(ctx.attr("exclude_outside", 0, kind="int")),
        extrapolation_value=float(ctx.attr("extrapolation_value", 0.0, kind="float")),
        antialias=antialias, axes=axes,
        keep_aspect_ratio_policy=ctx.attr("keep_aspect_ratio_policy", "stretch",
                                          kind="string"))


def _legacy_resize(ctx: ConvertContext, scales, scales_data: Optional[np.ndarray]):
    """Upsample-7/9 and Resize-10: asymmetric coordinates; nearest rounds down when an axis
    grows and up when it shrinks (what onnxruntime does for these opsets)."""
    x = ctx.input(0)
    mode = ctx.attr("mode", "nearest", kind="string")
    if mode == "bilinear":
        mode = "linear"
    if mode not in ("nearest", "linear"):
        ctx.fail(f"mode must be nearest or linear, got {mode!r}")
    nearest_mode = "floor"
    if mode == "nearest":
        if scales_data is None:
            if ctx.node.op_type != "Upsample":  # Upsample's scales are >= 1 by definition
                ctx.unsupported("Resize-10 nearest needs constant scales (its rounding depends "
                                "on whether each axis grows or shrinks)")
        else:
            shrink = [s < 1 for s in scales_data.tolist() if s != 1]
            if any(shrink) and not all(shrink):
                ctx.unsupported(f"Resize-10 nearest with scales {scales_data.tolist()} that "
                                f"both grow and shrink axes")
            if shrink and all(shrink):
                nearest_mode = "ceil"
    if scales.dtype != dtypes.f32:
        scales = ctx.emit("cast", [scales], to=dtypes.f32)
    return ctx.emit("resize", [x, None, scales], mode=mode,
                    coordinate_transformation_mode="asymmetric", nearest_mode=nearest_mode)


@converter("Resize", since=10)
def resize_10(ctx: ConvertContext):
    return _legacy_resize(ctx, ctx.input(1), ctx.const_value(1))


@converter("Upsample", since=7)
def upsample_7(ctx: ConvertContext):
    scales = ctx.attr("scales", None, kind="floats")
    if scales is None:
        ctx.fail("attribute scales is required")
    data = np.asarray(scales, dtype=np.float32)
    return _legacy_resize(ctx, ctx.const(data), data)


@converter("Upsample", since=9)
def upsample_9(ctx: ConvertContext):
    return _legacy_resize(ctx, ctx.input(1), ctx.const_value(1))
