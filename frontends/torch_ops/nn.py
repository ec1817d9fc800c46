"""Neural-network ATen ops: convolution, linear algebra, normalization, softmax, attention,
padding, resizing, embedding (pooling is in pool.py).

Most map onto one slimc op each; what differs is spelling: PyTorch gives symmetric padding per
spatial dim where slimc takes [begins..., ends...], and pads the last dim first in
``constant_pad_nd``. Outputs PyTorch computes only for training (batch norm's saved mean) are
refused when something reads them.
"""

from __future__ import annotations

import math

import numpy as np

from slimc.ir import dtypes

from . import aten, converter


def _pads(padding, nsp: int) -> list[int]:
    p = list(padding) * nsp if len(padding) == 1 else list(padding)
    return p + p


def _expand_list(values, nsp: int, default) -> list[int]:
    values = list(values) if values else list(default)
    return values * nsp if len(values) == 1 else values


# ----- convolution and linear algebra -----------------------------------------------------------

@converter(aten.convolution.default)
def convolution(ctx):
    x, w = ctx.tensor("input"), ctx.tensor("weight")
    b = ctx.tensor("bias") if ctx.raw["bias"] is not None else None
    nsp = w.type.rank - 2
    attrs = dict(strides=_expand_list(ctx.ints("stride"), nsp, [1]),
                 pads=_pads(ctx.ints("padding"), nsp),
                 dilations=_expand_list(ctx.ints("dilation"), nsp, [1]), group=ctx["groups"])
    if ctx["transposed"]:
        attrs["output_padding"] = _expand_list(ctx.ints("output_padding"), nsp, [0])
        return ctx.emit("conv_transpose", [x, w, b], **attrs)
    padded = _zero_pad_before(ctx, x, nsp)
    if padded is None:
        return ctx.emit("conv", [x, w, b], **attrs)
    source, extra = padded
    attrs["pads"] = [p + e for p, e in zip(attrs["pads"], extra)]
    y = ctx.emit("conv", [source, w, b], **attrs)
    if not x.uses and x not in ctx.graph.outputs:
        ctx.graph.remove_node(x.producer)
    return y


def _zero_pad_before(ctx, x, nsp: int):
    """(unpadded input, spatial [begins..., ends...]) when the input is a zero constant_pad_nd
    of the spatial dims only (TensorFlow-style 'same' padding, as in MobileNetV2 and
    EfficientNet): the convolution pads instead, as ONNX exporters fold it."""
    node = ctx.raw["input"]
    if getattr(node, "target", None) != aten.constant_pad_nd.default or len(node.users) != 1:
        return None
    pad = list(node.args[1])
    value = node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)
    if value != 0 or len(pad) > 2 * nsp or min(pad, default=0) < 0 or x.producer is None \
            or x.producer.op != "pad":
        return None
    pad += [0] * (2 * nsp - len(pad))
    begins = [pad[2 * (nsp - 1 - i)] for i in range(nsp)]
    ends = [pad[2 * (nsp - 1 - i) + 1] for i in range(nsp)]
    return x.producer.inputs[0], begins + ends


def transposed_weight(ctx, w):
    """w with its last two dims swapped; a weight's data is transposed here, at any size."""
    if w.is_constant and w.data is not None and w.type.rank == 2:
        return ctx.graph.add_constant(w.name + ".T", np.ascontiguousarray(w.data.T))
    perm = list(range(w.type.rank - 2)) + [w.type.rank - 1, w.type.rank - 2]
    return ctx.emit("transpose", [w], perm=perm)


@converter(aten.linear.default)
def linear(ctx):
    x, w = ctx.tensor("input"), ctx.tensor("weight")
    b = ctx.tensor("bias") if ctx.raw["bias"] is not None else None
    if x.type.rank == 2:
        return ctx.emit("gemm", [x, w, b], trans_b=1)
    y = ctx.emit("matmul", [x, transposed_weight(ctx, w)])
    return y if b is None else ctx.emit("add", [y, b])


@converter(aten.addmm.default)
def addmm(ctx):
    c, a, b = ctx.tensor("self"), ctx.tensor("mat1"), ctx.tensor("mat2")
    return ctx.emit("gemm", [a, b, c], alpha=float(ctx["alpha"]), beta=float(ctx["beta"]))


def _scaled_sum(ctx, c, product):
    """beta * c + alpha * product (c left out when beta is 0: PyTorch ignores its NaNs)."""
    alpha, beta = float(ctx["alpha"]), float(ctx["beta"])
    dt = product.type.dtype
    if alpha != 1:
        product = ctx.emit("mul", [product, ctx.const(alpha, dt)])
    if beta == 0:  # (c broadcasts to the product's shape: it cannot change it)
        return product
    return ctx.emit("add", [ctx.emit("mul", [c, ctx.const(beta, dt)]) if beta != 1 else c,
                            product])


@converter(aten.addmv.default)
def addmv(ctx):
    return _scaled_sum(ctx, ctx.tensor("self"),
                       ctx.emit("matmul", [ctx.tensor("mat"), ctx.tensor("vec")]))


@converter(aten.addbmm.default)
def addbmm(ctx):
    batches = ctx.emit("matmul", [ctx.tensor("batch1"), ctx.tensor("batch2")])
    return _scaled_sum(ctx, ctx.tensor("self"),
                       ctx.emit("reduce_sum", [batches], axes=[0], keepdims=0))


@converter(aten.mm.default, aten.bmm.default, aten.matmul.default)
def matmul(ctx):
    return ctx.emit("matmul", [ctx.tensor("self"), ctx.tensor(list(ctx.raw)[1])])


@converter(aten.einsum.default)
def einsum(ctx):
    return ctx.emit("einsum", [ctx.tensor(t) for t in ctx["tensors"]],
                    equation=ctx["equation"].replace(" ", ""))


# ----- normalization ----------------------------------------------------------------------------

def _param(ctx, name: str, channels, fill: float, like):
    """An optional per-channel parameter, or a constant `fill` vector when it is None."""
    if ctx.raw.get(name) is not None:
        return ctx.tensor(name)
    if not isinstance(channels, int):
        ctx.unsupported(f"{name} is None and the channel count is not static")
    return ctx.const(np.full(channels, fill), like.type.dtype)


def _only_first_output_used(node):
    """Refuse when a statistic output (a training-only result) is read."""
    for user in node.users:
        if getattr(user.target, "__name__", "") != "getitem" or (user.args[1] and user.users):
            return "only the normalized output is supported, not the saved statistics"
    return None


def _refuse_batch_norm(node):
    training = node.args[5] if len(node.args) > 5 else node.kwargs.get("training", False)
    if node.target == aten.native_batch_norm.default and training:
        return _batch_norm_training(node)
    return _only_first_output_used(node)


@converter(aten._native_batch_norm_legit_no_training.default, aten.native_batch_norm.default,
           refuse=_refuse_batch_norm)
def batch_norm(ctx):
    x = ctx.tensor("input")
    c = x.type.shape[1]
    out = ctx.emit("batch_norm", [x, _param(ctx, "weight", c, 1.0, x),
                                  _param(ctx, "bias", c, 0.0, x), ctx.tensor("running_mean"),
                                  ctx.tensor("running_var")], epsilon=float(ctx["eps"]))
    return [out, None, None]


def _batch_norm_training(node):
    return "batch norm with batch statistics: the module is in training mode (module.eval())"


converter(aten._native_batch_norm_legit.default, aten._native_batch_norm_legit.no_stats,
          refuse=_batch_norm_training)(batch_norm)


@converter(aten.layer_norm.default)
def layer_norm(ctx):
    x = ctx.tensor("input")
    shape = ctx.ints("normalized_shape")
    axis = x.type.rank - len(shape)
    scale = ctx.tensor("weight") if ctx.raw["weight"] is not None else \
        ctx.const(np.ones(shape), x.type.dtype)
    bias = ctx.tensor("bias") if ctx.raw["bias"] is not None else None
    return ctx.emit("layer_norm", [x, scale, bias], axis=axis, epsilon=float(ctx["eps"]))


def _stats_used(node) -> bool:
    return _only_first_output_used(node) is not None


def _mean_rstd(ctx, x, axes, eps: float):
    """The saved statistics of a normalization: the mean and 1 / sqrt(biased var + eps)."""
    mean = ctx.emit("reduce_mean", [x], axes=axes, keepdims=1)
    var = ctx.emit("reduce_mean", [ctx.emit("mul", [ctx.emit("sub", [x, mean])] * 2)],
                   axes=axes, keepdims=1)
    eps_c = ctx.const(eps, x.type.dtype)
    return mean, ctx.emit("reciprocal", [ctx.emit("sqrt", [ctx.emit("add", [var, eps_c])])])


@converter(aten.native_layer_norm.default)
def native_layer_norm(ctx):
    """layer_norm, and its mean and rstd (over the normalized dims, kept as 1s) if read."""
    if not _stats_used(ctx.node):
        return [layer_norm(ctx), None, None]
    x = ctx.tensor("input")
    n = len(ctx.ints("normalized_shape"))
    return [layer_norm(ctx)] + list(_mean_rstd(ctx, x, list(range(x.type.rank - n,
                                                                   x.type.rank)),
                                               float(ctx["eps"])))


@converter(aten.group_norm.default)
def group_norm(ctx):
    x = ctx.tensor("input")
    c = x.type.shape[1]
    return ctx.emit("group_norm", [x, _param(ctx, "weight", c, 1.0, x),
                                   _param(ctx, "bias", c, 0.0, x)],
                    num_groups=int(ctx["num_groups"]), epsilon=float(ctx["eps"]))


@converter(aten.native_group_norm.default)
def native_group_norm(ctx):
    """group_norm, and its mean and rstd ([N, groups]) if read."""
    x = ctx.tensor("input")
    c, groups = x.type.shape[1], int(ctx["group"])
    y = ctx.emit("group_norm", [x, _param(ctx, "weight", c, 1.0, x),
                                _param(ctx, "bias", c, 0.0, x)],
                 num_groups=groups, epsilon=float(ctx["eps"]))
    if not _stats_used(ctx.node):
        return [y, None, None]
    rest = x.type.shape[1:]  # (a static row length: -1 beside a batch of 0 is ambiguous)
    row = int(np.prod(rest)) // groups if all(isinstance(d, int) for d in rest) else -1
    rows = ctx.emit("reshape", [x, ctx.shape_value([ctx.dim_size(x, 0), groups, row])])
    stats = _mean_rstd(ctx, rows, [2], float(ctx["eps"]))
    return [y] + [ctx.emit("squeeze", [v, ctx.axes_const([2])]) for v in stats]


@converter(aten.instance_norm.default)
def instance_norm(ctx):
    x = ctx.tensor("input")
    c = x.type.shape[1]
    scale, bias = _param(ctx, "weight", c, 1.0, x), _param(ctx, "bias", c, 0.0, x)
    if ctx["use_input_stats"]:
        return ctx.emit("instance_norm", [x, scale, bias], epsilon=float(ctx["eps"]))
    return ctx.emit("batch_norm", [x, scale, bias, ctx.tensor("running_mean"),
                                   ctx.tensor("running_var")], epsilon=float(ctx["eps"]))


# ----- softmax and attention --------------------------------------------------------------------

def _softmax(op: str):
    def convert(ctx):
        x = ctx.tensor("self", ctx.out_dtype)
        if x.type.rank == 0:  # PyTorch takes a 0-d tensor as one element
            one = ctx.emit(op, [ctx.emit("reshape", [x, ctx.const([1], np.int64)])], axis=0)
            return ctx.emit("reshape", [one, ctx.const(np.zeros(0, np.int64))])
        return ctx.emit(op, [x], axis=int(ctx["dim"]))

    return convert


converter(aten._softmax.default, aten.softmax.int)(_softmax("softmax"))
converter(aten._log_softmax.default, aten.log_softmax.int)(_softmax("log_softmax"))


def _refuse_sdpa(node):
    kw = dict(zip(["query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale",
                   "enable_gqa"], node.args))
    kw.update(node.kwargs)
    if kw.get("dropout_p", 0.0):
        return "attention dropout (training)"
    if kw.get("enable_gqa"):
        return "grouped-query attention (enable_gqa)"
    return None


@converter(aten.scaled_dot_product_attention.default, refuse=_refuse_sdpa)
def scaled_dot_product_attention(ctx):
    q, k, v = ctx.tensor("query"), ctx.tensor("key"), ctx.tensor("value")
    dt = q.type.dtype
    scale = ctx["scale"]
    scale = 1.0 / math.sqrt(q.type.shape[-1]) if scale is None else float(scale)
    rank = max(q.type.rank, k.type.rank, v.type.rank)
    if not (q.type.rank == k.type.rank == v.type.rank) or rank < 2:
        ctx.unsupported("query, key and value of different ranks")
    mask, zero_nan = None, 0
    if ctx.raw["attn_mask"] is not None:
        mask = ctx.tensor("attn_mask")
        if mask.type.dtype == dtypes.bool:  # PyTorch gives 0 for rows the mask removes wholly
            mask = ctx.emit("where", [mask, ctx.const(0.0, dt), ctx.const(-np.inf, dt)])
            zero_nan = 1
        mask = ctx.cast(mask, dt)
    if ctx["is_causal"]:
        mask = _causal_mask(ctx, q, k, dt)
    k_t = transposed_weight(ctx, k)
    return ctx.emit("attention", [q, k_t, v, mask], scale=scale, zero_nan=zero_nan)


def _causal_mask(ctx, q, k, dt):
    """0 on and below the diagonal, -inf above: [L, S] (PyTorch's is_causal, top-left)."""
    L, S = q.type.shape[-2], k.type.shape[-2]
    if isinstance(L, int) and isinstance(S, int):
        return ctx.const(np.where(np.tril(np.ones((L, S), bool)), 0.0, -np.inf), dt)
    shape = ctx.shape_value([ctx.dim_size(q, -2), ctx.dim_size(k, -2)])
    ones = ctx.emit("constant_of_shape", [shape], value=1.0, dtype=dt)
    keep = ctx.emit("trilu", [ones], upper=0)
    return ctx.emit("where", [ctx.emit("greater", [keep, ctx.const(0.0, dt)]),
                              ctx.const(0.0, dt), ctx.const(-np.inf, dt)])


# ----- padding and resizing ---------------------------------------------------------------------

@converter(aten.constant_pad_nd.default)
def constant_pad(ctx):
    x = ctx.tensor("self")
    pad = ctx.ints("pad")
    value = ctx.const(ctx["value"], x.type.dtype)
    return ctx.emit("pad", [x, _torch_pads(x, pad, ctx), value], mode="constant")


def _torch_pads(x, pad, ctx):
    """PyTorch's (last dim begin, last dim end, second-last begin, ...) as slimc's pads."""
    rank = x.type.rank
    begins, ends = [0] * rank, [0] * rank
    for i in range(len(pad) // 2):
        begins[rank - 1 - i], ends[rank - 1 - i] = pad[2 * i], pad[2 * i + 1]
    return ctx.const(begins + ends, np.int64)


def _mode_pad(mode: str):
    def convert(ctx):
        x = ctx.tensor("self")
        return ctx.emit("pad", [x, _torch_pads(x, ctx.ints("padding"), ctx)], mode=mode)

    return convert


converter(aten.reflection_pad1d.default, aten.reflection_pad2d.default,
          aten.reflection_pad3d.default)(_mode_pad("reflect"))
converter(aten.replication_pad1d.default, aten.replication_pad2d.default,
          aten.replication_pad3d.default)(_mode_pad("edge"))


_RESIZE = {
    aten.upsample_nearest1d.vec: ("nearest", "asymmetric", "floor"),
    aten.upsample_nearest2d.vec: ("nearest", "asymmetric", "floor"),
    aten.upsample_nearest3d.vec: ("nearest", "asymmetric", "floor"),
    aten._upsample_nearest_exact1d.vec: ("nearest", "half_pixel", "round_prefer_ceil"),
    aten._upsample_nearest_exact2d.vec: ("nearest", "half_pixel", "round_prefer_ceil"),
    aten._upsample_nearest_exact3d.vec: ("nearest", "half_pixel", "round_prefer_ceil"),
    aten.upsample_linear1d.vec: ("linear", None, "floor"),
    aten.upsample_bilinear2d.vec: ("linear", None, "floor"),
    aten.upsample_trilinear3d.vec: ("linear", None, "floor"),
    aten.upsample_bicubic2d.vec: ("cubic", None, "floor"),
}


@converter(*_RESIZE)
def resize(ctx):
    x = ctx.tensor("input")
    mode, ctm, nearest = _RESIZE[ctx.node.target]
    if ctm is None:
        ctm = "align_corners" if ctx["align_corners"] else "half_pixel"
    attrs = dict(mode=mode, coordinate_transformation_mode=ctm, nearest_mode=nearest)
    if mode == "cubic":
        attrs["cubic_coeff_a"] = -0.75
    if ctx.raw["output_size"] is not None:
        sizes = ctx.shape_value([ctx.dim_size(x, 0), ctx.dim_size(x, 1)] +
                                list(ctx["output_size"]))
        return ctx.emit("resize", [x, None, None, sizes], **attrs)
    scales = [1.0, 1.0] + [float(s) for s in ctx["scale_factors"]]
    if ctm == "align_corners":
        # PyTorch maps corners through the integer output size, (in - 1) / (out - 1); ONNX's
        # align_corners with scales uses the fractional in * scale: give the size instead
        out = list(ctx.meta().shape[2:])
        if not all(isinstance(d, int) for d in out):
            ctx.unsupported("align_corners with scale factors needs a static output size")
        sizes = ctx.shape_value([ctx.dim_size(x, 0), ctx.dim_size(x, 1)] + out)
        return ctx.emit("resize", [x, None, None, sizes], **attrs)
    return ctx.emit("resize", [x, None, ctx.const(scales, np.float32)], **attrs)


@converter(aten.pixel_shuffle.default)
def pixel_shuffle(ctx):
    return ctx.emit("depth_to_space", [ctx.tensor("self")],
                    blocksize=int(ctx["upscale_factor"]), mode="CRD")


@converter(aten.embedding.default)
def embedding(ctx):
    return ctx.emit("gather", [ctx.tensor("weight"), ctx.tensor("indices")], axis=0)
