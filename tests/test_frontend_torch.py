"""The PyTorch frontend's ATen ops: one table per family, one compile per table, each op
compared on its own, through `slimc.compile(module, example_inputs=...)` and the reference
interpreter, against eager PyTorch. (The corpus models, symbolic dims, names and source lines
and the errors: test_frontend_torch_models.py.)"""

from __future__ import annotations

import numpy as np
import pytest

import slimc

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from .torch_check import Fn, check, check_table, ints, randn  # noqa: E402


X = randn(2, 3, 4)
Y = randn(2, 3, 4, seed=1)
P = randn(2, 3, 4, seed=2).abs() + 0.1  # positive

# ----- elementwise ------------------------------------------------------------------------------

UNARY = {
    "abs": torch.abs, "neg": torch.neg, "exp": torch.exp, "sin": torch.sin, "cos": torch.cos,
    "tan": lambda x: torch.tan(x.clamp(-1, 1)), "tanh": torch.tanh, "sigmoid": torch.sigmoid,
    "erf": torch.erf, "atan": torch.atan, "asin": lambda x: torch.asin(x.clamp(-0.9, 0.9)),
    "acos": lambda x: torch.acos(x.clamp(-0.9, 0.9)), "sinh": torch.sinh, "cosh": torch.cosh,
    "asinh": torch.asinh, "acosh": lambda x: torch.acosh(x.abs() + 1),
    "atanh": lambda x: torch.atanh(x.clamp(-0.9, 0.9)), "floor": torch.floor, "ceil": torch.ceil,
    "round": lambda x: torch.round(x * 2), "trunc": lambda x: torch.trunc(x * 3),
    "sign": torch.sign, "sqrt": lambda x: torch.sqrt(x.abs()),
    "rsqrt": lambda x: (x.abs() + 1).rsqrt(), "log": lambda x: torch.log(x.abs() + 0.1),
    "log2": lambda x: torch.log2(x.abs() + 0.1), "log10": lambda x: torch.log10(x.abs() + 0.1),
    "log1p": lambda x: torch.log1p(x.abs()), "expm1": torch.expm1,
    "reciprocal": lambda x: torch.reciprocal(x.abs() + 0.5), "square": torch.square, "relu": F.relu,
    "relu6": lambda x: F.relu6(x * 5), "leaky_relu": lambda x: F.leaky_relu(x, 0.2), "elu": F.elu,
    "selu": F.selu, "celu": lambda x: F.celu(x, 0.5), "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu,
    "hardswish": lambda x: F.hardswish(x * 4), "hardsigmoid": lambda x: F.hardsigmoid(x * 4),
    "mish": F.mish, "softplus": F.softplus, "softplus_beta": lambda x: F.softplus(x, beta=2.0),
    "hardtanh": lambda x: F.hardtanh(x, -0.5, 0.5), "clamp": lambda x: x.clamp(-0.5, 0.7),
    "clamp_min": lambda x: x.clamp(min=0.1), "logsigmoid": F.logsigmoid,
    "isnan": lambda x: torch.isnan(torch.log(x)), "isinf": lambda x: torch.isinf(1 / (x * 0)),
    "logical_not": lambda x: torch.logical_not(x > 0), "to_int": lambda x: (x * 10).to(torch.int32),
    "to_bool": lambda x: x.round().bool(), "masked_fill": lambda x: x.masked_fill(x > 0.5, -1.0),
}


def test_unary():
    check_table(UNARY, X)


BINARY = {
    "add": torch.add, "add_alpha": lambda a, b: torch.add(a, b, alpha=2.5), "sub_alpha": lambda a,
    b: torch.sub(a, b, alpha=0.5), "rsub": lambda a, b: 2.0 - a, "mul": torch.mul, "div": torch.div,
    "div_floor": lambda a, b: torch.div(a, b, rounding_mode="floor"), "div_trunc": lambda a,
    b: torch.div(a, b, rounding_mode="trunc"), "remainder": torch.remainder, "fmod": torch.fmod,
    "pow": lambda a, b: torch.pow(a.abs() + 0.5, b), "pow_scalar": lambda a, b: a ** 3,
    "scalar_pow": lambda a, b: 2.0 ** a, "maximum": torch.maximum, "minimum": torch.minimum,
    "atan2": torch.atan2, "eq": lambda a, b: a.round() == b.round(), "ne": lambda a,
    b: a.round() != b.round(), "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": lambda a,
    b: a >= 0.25, "logical_and": lambda a, b: torch.logical_and(a > 0, b > 0),
    "logical_xor": lambda a, b: torch.logical_xor(a > 0, b > 0), "bool_and": lambda a,
    b: (a > 0) & (b > 0), "bool_or": lambda a, b: (a > 0) | (b > 0), "where": lambda a,
    b: torch.where(a > b, a, b), "where_scalar": lambda a, b: torch.where(a > 0, a, 0.0),
    "clamp_tensor": lambda a, b: torch.clamp(a, min=b, max=b + 1), "broadcast": lambda a,
    b: a[:, :1] * b[0] + a.sum(), "int_float": lambda a, b: a.long() * 0.5 + b, "lerp": lambda a,
    b: torch.lerp(a, b, 0.3), "addcmul": lambda a, b: torch.addcmul(a, a, b, value=0.5),
}


def test_binary():
    check_table(BINARY, X, Y)


INTEGER = {
    "add": lambda a, b: a + b * 2, "floordiv": lambda a, b: a // torch.where(b == 0, 1, b),
    "div_trunc": lambda a, b: torch.div(a, torch.where(b == 0, 1, b), rounding_mode="trunc"),
    "true_div": lambda a, b: a / torch.where(b == 0, 1, b), "remainder": lambda a, b: a % 3,
    "bitwise": lambda a, b: (a & b) | (a ^ 3), "bitwise_not": lambda a, b: ~a, "max": torch.maximum,
    "abs_neg": lambda a, b: (-a).abs(), "sum": lambda a, b: a.sum(1), "compare": lambda a,
    b: (a > b) & (a != 0), "to_float": lambda a, b: a.float() / 3,
}


def test_integer_ops():
    check_table(INTEGER, ints(3, 5), ints(3, 5, seed=1))


# ----- reductions -------------------------------------------------------------------------------

REDUCE = {
    "sum": lambda x: x.sum(), "sum_dims": lambda x: x.sum((0, 2), keepdim=True),
    "mean": lambda x: x.mean(-1), "mean_all": lambda x: x.mean(), "prod": lambda x: x.prod(1),
    "amax": lambda x: x.amax((1, 2)), "amin": lambda x: x.amin(0, keepdim=True),
    "max_dim": lambda x: x.max(1), "min_dim": lambda x: x.min(-1, keepdim=True),
    "max_all": lambda x: x.max(), "argmax": lambda x: x.argmax(2), "argmin": lambda x: x.argmin(),
    "argmax_keep": lambda x: x.argmax(1, keepdim=True), "var": lambda x: x.var(1),
    "var_unbiased0": lambda x: x.var((0, 2), unbiased=False),
    "std": lambda x: x.std(-1, keepdim=True), "any": lambda x: (x > 1).any(1),
    "all": lambda x: (x > -1).all(), "cumsum": lambda x: x.cumsum(1),
    "logsumexp": lambda x: torch.logsumexp(x, 2), "norm": lambda x: x.norm(dim=-1),
    "topk": lambda x: torch.topk(x, 2, dim=-1),
    "topk_small": lambda x: torch.topk(x, 2, 1, largest=False),
    "sort": lambda x: torch.sort(x, dim=1, descending=True),
    "argsort": lambda x: torch.argsort(x, -1), "normalize": lambda x: F.normalize(x, dim=-1),
}


def test_reductions():
    check_table(REDUCE, X)


# ----- shapes, indexing and creation ------------------------------------------------------------

IDX = torch.tensor([2, 0, 1, 2])
SHAPE = {
    "view": lambda x: x.view(6, 4), "reshape_infer": lambda x: x.reshape(-1, 2),
    "flatten": lambda x: x.flatten(1), "permute": lambda x: x.permute(2, 0, 1) + 1,
    "transpose": lambda x: x.transpose(0, 2).contiguous(), "t": lambda x: x[0].t() * 2,
    "unsqueeze": lambda x: x.unsqueeze(-1) * 2, "squeeze": lambda x: x[:, :1].squeeze(1),
    "squeeze_noop": lambda x: x.squeeze(0) + 1, "expand": lambda x: x[:, :1].expand(2, 5, 4),
    "expand_new_dims": lambda x: x[0, 0].expand(3, 2, 4), "cat": lambda x: torch.cat([x, x * 2], 1),
    "stack": lambda x: torch.stack([x, -x], 0), "split": lambda x: x.split([1, 3], dim=-1),
    "chunk": lambda x: x.chunk(3, dim=1), "unbind": lambda x: x.unbind(1),
    "flip": lambda x: x.flip(0, 2), "repeat": lambda x: x.repeat(1, 2, 1),
    "repeat_new_dims": lambda x: x[0].repeat(2, 1, 3), "roll": lambda x: torch.roll(x, 1, 2),
    "tril": lambda x: torch.tril(x, -1), "triu": torch.triu,
    "diagonal": lambda x: torch.diagonal(x, 1, 1, 2) * 2,
    "diag_embed": lambda x: torch.diag_embed(x[0]), "slice": lambda x: x[:, 1:, ::2],
    "slice_negative": lambda x: x[..., -3:-1], "select": lambda x: x[:, -1],
    "index_select": lambda x: x.index_select(2, IDX), "index_one": lambda x: x[:, IDX[:2]],
    "index_two": lambda x: x[IDX[:2] % 2, IDX[1:3]],
    "index_middle": lambda x: x[:, IDX[:2], IDX[1:3]],
    "index_apart": lambda x: x[IDX[:2] % 2, :, IDX[1:3]],
    "gather": lambda x: x.gather(2, IDX[:3].expand(2, 3, 3)),
    "gather_smaller": lambda x: x.gather(1, IDX[:2].view(1, 2, 1).expand(2, 2, 2)),
    "scatter": lambda x: torch.zeros(2, 3, 5).scatter(2, IDX[:3].expand(2, 3, 3), x[..., :3]),
    "scatter_value": lambda x: x.scatter(1, IDX[:2].view(1, 2, 1).expand(2, 2, 4) % 3, 2.0),
    "scatter_add": lambda x: x.scatter_add(0, torch.ones(2, 3, 4, dtype=torch.long), x),
    "scatter_amax": lambda x: x.scatter_reduce(2, IDX[:3].expand(2, 3, 3), x * 3, "amax"),
    "index_put": lambda x: x.index_put((IDX[:2] % 2,), torch.ones(3, 4)),
    "index_put_acc": lambda x: x.index_put((IDX[:3] % 2, IDX[1:]), torch.ones(4), accumulate=True),
    "setitem_slice": lambda x: _setitem(x, (slice(None), slice(1, 3)), 7.0),
    "setitem_select": lambda x: _setitem(x, (1,), -x[0]),
    "setitem_step": lambda x: _setitem(x, (slice(None), slice(None), slice(0, 4, 2)), 0.5),
    "setitem_index_middle": lambda x: _setitem(x, (slice(None), IDX[:2] % 3), x[:, :2] * 2),
    "setitem_two_middle": lambda x: _setitem(x, (slice(None), IDX[:2] % 3, IDX[1:3]),
                                             x[:, 0, :2] + 1),
    "setitem_apart": lambda x: _setitem(x, (IDX[:2] % 2, slice(None), IDX[1:3]), x[0, :, :2].t()),
    "index_add_last": lambda x: x.index_add(-1, IDX, x[..., :4] * 3, alpha=-1),
    "zeros": lambda x: x + torch.zeros(3, 4), "ones_like": lambda x: torch.ones_like(x) * x,
    "full": lambda x: torch.full((2, 1, 4), 3.5) - x,
    "full_like": lambda x: torch.full_like(x, 2) * x, "arange": lambda x: x * torch.arange(4),
    "arange_float": lambda x: x + torch.arange(0.5, 2.5, 0.5),
    "new_tensor": lambda x: x * torch.tensor([1.0, 2.0, 3.0, 4.0]),
    "one_hot": lambda x: F.one_hot(IDX, 5),
    "zeros_like_int": lambda x: torch.zeros_like(x, dtype=torch.int64) + 3,
}


def _setitem(x, index, value):
    y = x.clone()
    y[index] = value
    return y


def test_shapes_indexing_and_creation():
    check_table(SHAPE, X)


def test_embedding_and_negative_indices():
    emb = nn.Embedding(10, 6)
    check(Fn(lambda i: emb(i) + emb.weight[-1]), ints(2, 5, lo=0, hi=10))


# ----- neural-network ops -----------------------------------------------------------------------

IMG = randn(2, 4, 9, 9)
NN = {
    "conv2d": nn.Conv2d(4, 6, 3, padding=1), "conv2d_stride": nn.Conv2d(4, 6, 3, 2, bias=False),
    "conv2d_dilated": nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2),
    "depthwise": nn.Conv2d(4, 4, 5, padding=2, groups=4),
    "conv_same": nn.Conv2d(4, 3, 4, padding="same"),
    "conv_transpose": nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1),
    "batch_norm": nn.BatchNorm2d(4), "group_norm": nn.GroupNorm(2, 4),
    "instance_norm": nn.InstanceNorm2d(4, affine=True), "layer_norm": nn.LayerNorm([9, 9]),
    "max_pool": nn.MaxPool2d(3, 2, 1), "max_pool_ceil": nn.MaxPool2d(2, 2, ceil_mode=True),
    "avg_pool": nn.AvgPool2d(3, 2, 1),
    "avg_pool_exclude": nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
    "adaptive_avg_1": nn.AdaptiveAvgPool2d(1), "adaptive_avg_3": nn.AdaptiveAvgPool2d(3),
    "adaptive_avg_uneven": nn.AdaptiveAvgPool2d((4, 2)), "adaptive_max_3": nn.AdaptiveMaxPool2d(3),
    "adaptive_max_1": nn.AdaptiveMaxPool2d(1),
    "pad_constant": Fn(lambda x: F.pad(x, (1, 2, 0, 1), value=0.5)),
    "pad_crop": Fn(lambda x: F.pad(x, (-1, 2))), "pad_reflect": nn.ReflectionPad2d((1, 2, 2, 1)),
    "pad_replicate": nn.ReplicationPad2d(2), "pixel_shuffle": nn.PixelShuffle(2),
    "upsample_nearest": nn.Upsample(scale_factor=2), "upsample_size": nn.Upsample(size=(5, 13)),
    "bilinear": nn.Upsample(scale_factor=2, mode="bilinear"),
    "bilinear_size": Fn(lambda x: F.interpolate(x, size=(4, 7), mode="bilinear")),
    "bilinear_corners": nn.Upsample(size=(12, 5), mode="bilinear", align_corners=True),
    "bicubic": nn.Upsample(scale_factor=2, mode="bicubic"),
    "nearest_exact": nn.Upsample(size=(13, 5), mode="nearest-exact"), "softmax": nn.Softmax(1),
    "log_softmax": nn.LogSoftmax(-1),
    "flatten_linear": nn.Sequential(nn.Flatten(), nn.Linear(324, 5)), "linear_3d": nn.Linear(9, 7),
    "prelu": nn.PReLU(4), "dropout_eval": nn.Dropout(0.5),
}


@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_nn_modules():
    torch.manual_seed(0)
    modules = nn.ModuleDict(NN)
    for m in modules.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    check_table(dict(modules.items()), IMG)


def test_zero_pad_folds_into_the_convolution():
    """TF-style 'same' padding (MobileNetV2, EfficientNet) is the conv's own padding, as in
    the ONNX export; a pad of another value, or read twice, stays a pad."""
    torch.manual_seed(0)
    folded = nn.Sequential(nn.ZeroPad2d((0, 1, 2, 1)), nn.Conv2d(4, 4, 3, 2, padding=1))
    graph = check(folded, IMG)
    assert [n.op for n in graph.nodes] == ["conv"]
    assert graph.nodes[0].attrs["pads"] == [3, 1, 2, 2]
    conv = nn.Conv2d(4, 4, 3)
    kept = Fn(lambda x: conv(F.pad(x, (1, 1, 1, 1), value=1.0)) + F.pad(x, (0, 0, 0, 0)).sum())
    assert "pad" in [n.op for n in check(kept, IMG).nodes]


def test_1d_and_3d_layers():
    check(nn.Sequential(nn.Conv1d(3, 4, 3, padding=1), nn.MaxPool1d(2), nn.AvgPool1d(2),
                        nn.Upsample(scale_factor=2, mode="linear"), nn.ReflectionPad1d(2),
                        nn.ReplicationPad1d(1), nn.AdaptiveAvgPool1d(5)), randn(2, 3, 12))
    check(nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.MaxPool3d(2), nn.ReplicationPad3d(1),
                        nn.Upsample(scale_factor=2, mode="trilinear"), nn.AdaptiveAvgPool3d(1)),
          randn(1, 2, 4, 6, 6))


def test_as_strided_views():
    """as_strided of a row-major tensor: Swin's pooler (AdaptiveAvgPool1d(1) over a transposed
    sequence restrides the pooled result), a view that reads the elements in order, and
    overlapping windows (a gather); one of a transposed tensor indexes storage whose order is
    not its element order, and is refused with the reason."""
    x = randn(2, 16, 6)
    check(Fn(lambda x: torch.flatten(nn.AdaptiveAvgPool1d(1)(x.transpose(1, 2)), 1)), x)
    check(Fn(lambda x: (x.as_strided((8, 24), (24, 1)) * 2,
                        (x + 1).as_strided((5, 4), (3, 1), 2))), x)
    with pytest.raises(slimc.UnsupportedError, match="not laid out row-major"):
        slimc.from_torch(Fn(lambda x: x.transpose(1, 2).as_strided((6, 4), (1, 6))).eval(), (x,))


def test_linear_algebra():
    a, b = randn(2, 3, 5), randn(2, 5, 4, seed=1)
    check(Fn(lambda a, b: (torch.bmm(a, b), a @ b[0], torch.mm(a[0], b[1]),
                           torch.addmm(b[0, 0], a[1], b[1], beta=0.5, alpha=2.0),
                           torch.einsum("bij,bjk->bik", a, b), torch.baddbmm(a[:, :, :4], a, b))),
          a, b)


ATTN = [randn(2, 4, 6, 8, seed=i) for i in range(3)]
MASK = torch.from_numpy(np.random.default_rng(3).random((2, 1, 6, 6)) > 0.3)
MASK[0, 0, 2] = False  # a row with nothing to attend to: PyTorch gives zeros


SDPA = {
    "plain": {}, "bool_mask": {"attn_mask": MASK}, "causal": {"is_causal": True},
    "float_mask": {"attn_mask": randn(6, 6, seed=4)}, "scale": {"scale": 0.3},
}


def test_scaled_dot_product_attention():
    table = {k: (lambda q, k_, v, kw=kw: F.scaled_dot_product_attention(q, k_, v, **kw))
             for k, kw in SDPA.items()}
    graph = check_table(table, *ATTN)
    # kept whole, not decomposed: one attention op per call
    assert [n.op for n in graph.nodes].count("attention") == len(SDPA)


def test_multihead_attention_module():
    mha = nn.MultiheadAttention(16, 4, batch_first=True)
    x = randn(2, 5, 16)
    check(Fn(lambda x: mha(x, x, x, need_weights=False)[0]), x)


def test_kept_ops_arrive_whole():
    """linear, layer norm, GELU and softmax are single slimc ops, not decompositions."""
    block = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.GELU(), nn.Softmax(-1))
    graph = check(block, randn(2, 3, 8))
    ops = [n.op for n in graph.nodes]
    assert ops.count("layer_norm") == ops.count("gelu") == ops.count("softmax") == 1
    assert "matmul" in ops and "reduce_mean" not in ops and "erf" not in ops
