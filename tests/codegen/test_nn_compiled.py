"""Compiled nn ops against the interpreter: convolution (GEMM path, pointwise, grouped,
depthwise, 1-D/3-D loop nests, other dtypes, fused epilogues), transposed convolution, pooling
(pads, strides, dilations, ceil mode, count_include_pad, integer max pool, indices), global
pooling, the normalizations, softmax family, lrn, lp_normalization and resize in every
coordinate mode; plus hypothesis-drawn conv and pool configurations."""

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

import slimc
from slimc.ir import Graph, TensorType, dtypes, interpret
from slimc.ir.errors import UnsupportedError
from slimc.ir.ops.window import window_out_dim
from slimc.passes.pipeline import PASSES

from ..one_node import add_node, build

rng = np.random.default_rng(0)
# The winograd pass would take the 3x3 stride-1 convolutions; these tests are for conv's own
# lowering.
OWN_LOWERING = [p for p in ("winograd",) if p in PASSES]


def rand(*shape, dtype=np.float32):
    return rng.standard_normal(shape).astype(dtype)


def check(g, args, threads=1, rtol=1e-4, atol=1e-4):
    expected = interpret(g, *args)
    got = slimc.compile(g, threads=threads, disable_passes=OWN_LOWERING)(*args)
    for e, a in zip(expected, got):
        assert a.shape == e.shape and a.dtype == e.dtype
        if a.dtype.kind in "iub":
            np.testing.assert_array_equal(a, e)
        else:
            np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64), rtol=rtol,
                                       atol=atol)


def run(op, inputs, consts=(), nout=1, threads=1, rtol=1e-4, atol=1e-4, then=None, **attrs):
    g, args = build(op, inputs, consts, nout, then, **attrs)
    check(g, args, threads, rtol, atol)


# ----------------------------------------------------------------------------------------------
# conv
# ----------------------------------------------------------------------------------------------

# (x shape, w shape, bias, attrs, threads): the first group takes the GEMM path (float32,
# 1-D/2-D, >= 4 output channels per group; with at most 4 input channels and one group, the
# stem path, gen_conv_stem.py), the rest the loop nest.
CONV_CASES = [
    ((2, 3, 9, 11), (8, 3, 3, 3), True, dict(pads=[1, 1, 1, 1]), 1),
    ((2, 5, 9, 11), (8, 5, 3, 3), False,
     dict(pads=[0, 1, 2, 1], strides=[2, 1], dilations=[2, 1]), 2),
    ((1, 8, 7, 9), (12, 4, 3, 3), True, dict(pads=[1, 1, 1, 1], group=2), 1),
    ((2, 16, 7, 7), (24, 16, 1, 1), True, {}, 2),                       # pointwise, no im2col
    ((1, 16, 9, 9), (8, 16, 1, 1), True, dict(strides=[2, 2]), 1),      # strided 1x1
    ((2, 5, 17), (8, 5, 3), True, dict(pads=[2, 1], strides=[2], dilations=[2]), 1),  # 1-D
    ((1, 32, 5, 5), (64, 32, 3, 3), True, dict(pads=[1, 1, 1, 1]), 2),  # row blocks split
    ((1, 16, 40, 40), (8, 16, 3, 3), True, dict(pads=[1, 1, 1, 1]), 2),  # several chunks
    ((1, 1, 7, 7), (7, 1, 3, 3), True, {}, 1),                          # K = 9, odd Cout
    ((3, 3, 17, 1), (5, 3, 3, 1), True, dict(pads=[1, 0, 1, 0]), 1),    # width 1
    ((1, 6, 9, 11), (6, 1, 3, 3), True, dict(pads=[1, 1, 1, 1], group=6), 2),  # depthwise
    ((1, 3, 9, 11), (6, 1, 3, 3), False, dict(pads=[1, 1, 1, 1], group=3, strides=[2, 2]), 1),
    # depthwise rows (gen_depthwise.py): plain and masked vectors, stride 2, 5x5 and 7x7
    ((1, 4, 20, 45), (4, 1, 3, 3), True, dict(pads=[1, 1, 1, 1], group=4, strides=[2, 2]), 3),
    ((2, 3, 13, 37), (3, 1, 5, 5), False, dict(pads=[2, 1, 0, 2], group=3), 2),
    ((1, 2, 30, 70), (2, 1, 7, 7), True, dict(pads=[3, 3, 3, 3], group=2, strides=[2, 2]), 1),
    ((1, 2, 6, 40), (2, 1, 3, 3), True, dict(group=2), 1),
    ((2, 3, 1, 20), (3, 1, 2, 2), True, dict(pads=[1, 1, 1, 1], group=3), 1),  # H < K
    ((1, 6, 9, 11), (6, 2, 3, 3), True, dict(group=3, dilations=[2, 2]), 1),  # 2 per group
    ((1, 3, 5, 6, 7), (4, 3, 2, 2, 3), True, dict(pads=[1, 0, 0, 1, 1, 1]), 1),  # 3-D
    ((2, 4, 1, 1), (3, 4, 1, 1), True, {}, 1),
]


STEM_CASES = [  # (x shape, w shape, attrs, threads): partial runs and row blocks, 1-4 channels
    ((2, 3, 23, 70), (33, 3, 3, 3), dict(pads=[1, 1, 1, 1], strides=[2, 2]), 3),
    ((1, 3, 30, 40), (64, 3, 7, 7), dict(pads=[3, 3, 3, 3], strides=[2, 2]), 2),
    ((1, 1, 9, 37), (5, 1, 5, 3), dict(pads=[2, 0, 1, 2], strides=[3, 1]), 1),
    ((2, 4, 12, 17), (6, 4, 1, 1), dict(strides=[1, 2]), 1),
]


@pytest.mark.parametrize("xs,ws,attrs,threads", STEM_CASES)
def test_conv_few_input_channels(xs, ws, attrs, threads):
    """The stem path (gen_conv_stem.py): float tiles over a phase-split copy of the input
    rows, against the reference; the kernel took that path (its row copy is scratch)."""
    g, args = build("conv", [rand(*xs), rand(*ws), rand(ws[0])], consts=(1, 2), **attrs)
    mod = slimc.compile(g, threads=threads, disable_passes=OWN_LOWERING + ["layout"])
    assert any(v.name.endswith(".rows") for k in mod.kernels for v in k.scratch)
    np.testing.assert_allclose(mod(*args)[0], interpret(g, *args)[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("xs,ws,bias,attrs,threads", CONV_CASES)
def test_conv(xs, ws, bias, attrs, threads):
    inputs = [rand(*xs), rand(*ws), rand(ws[0]) if bias else None]
    run("conv", inputs, consts=(1, 2), threads=threads, **attrs)


def test_conv_runtime_weights():
    run("conv", [rand(1, 4, 8, 8), rand(8, 4, 3, 3), rand(8)], pads=[1, 1, 1, 1])


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_conv_other_dtypes(dtype):
    x, w, b = rand(2, 4, 7, 8, dtype=dtype), rand(6, 4, 3, 3, dtype=dtype), rand(6, dtype=dtype)
    tol = 1e-2 if dtype == np.float16 else 1e-9
    run("conv", [x, w, b], consts=(1, 2), rtol=tol, atol=tol, pads=[1, 1, 1, 1])


def _relu(g, outs):
    return add_node(g, "relu", outs)


def _channel_add_relu(g, outs):
    c = outs[0].type.shape[1]
    b = g.add_constant("chan", rand(c, 1, 1))
    return add_node(g, "relu", add_node(g, "add", [outs[0], b]))


def _residual(g, outs):
    r = g.add_input("res", outs[0].type)
    return add_node(g, "add", [outs[0], r])


def _row_broadcast(g, outs):  # an operand broadcast along the last axis only: no flat indices
    w = outs[0].type.shape[-1]
    return add_node(g, "mul", [outs[0], g.add_constant("roww", rand(w))])


def _to_half(g, outs):
    return add_node(g, "cast", outs, to=dtypes.f16)


EPILOGUES = {"relu": _relu, "chan_add_relu": _channel_add_relu, "residual": _residual,
             "row_broadcast": _row_broadcast, "to_half": _to_half}


@pytest.mark.parametrize("epi", sorted(EPILOGUES))
@pytest.mark.parametrize("path", ["gemm", "pointwise", "stem", "direct"])
def test_conv_fused_epilogue(epi, path):
    w = {"gemm": rand(8, 5, 3, 3), "pointwise": rand(8, 5, 1, 1), "stem": rand(8, 3, 3, 3),
         "direct": rand(3, 1, 3, 3)}[path]
    attrs = {"gemm": dict(pads=[1, 1, 1, 1]), "pointwise": {},
             "stem": dict(pads=[1, 0, 1, 2], strides=[2, 2]),
             "direct": dict(pads=[1, 1, 1, 1], group=3)}[path]
    g, args = build("conv", [rand(2, w.shape[1] * attrs.get("group", 1), 6, 11), w,
                             rand(w.shape[0])], consts=(1, 2), then=EPILOGUES[epi], **attrs)
    if epi == "residual":
        args.append(rand(*g.inputs[1].type.shape))
    tol = 2e-3 if epi == "to_half" else 1e-4
    check(g, args, threads=2, rtol=tol, atol=tol)


CONV_T_CASES = [
    ((2, 3, 5, 6), (3, 4, 3, 3), True, {}),
    ((2, 4, 5, 6), (4, 3, 3, 2), True,
     dict(group=2, strides=[2, 3], pads=[1, 0, 0, 1], dilations=[1, 2], output_padding=[1, 1])),
    ((1, 3, 7), (3, 2, 4), False, dict(strides=[3], pads=[2, 1])),
    ((1, 2, 3, 4, 5), (2, 2, 2, 2, 2), False, dict(strides=[2, 1, 2])),
    ((1, 1, 3, 3), (1, 2, 3, 3), True, dict(strides=[3, 2], pads=[-1, 0, 1, -1])),
]


@pytest.mark.parametrize("xs,ws,bias,attrs", CONV_T_CASES)
def test_conv_transpose(xs, ws, bias, attrs):
    run("conv_transpose", [rand(*xs), rand(*ws), rand(ws[1] * attrs.get("group", 1))
                           if bias else None], consts=(1, 2), threads=2, **attrs)


# ----------------------------------------------------------------------------------------------
# pooling
# ----------------------------------------------------------------------------------------------

POOL_ATTRS = [
    dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
    dict(kernel_shape=[3, 2], strides=[2, 1], pads=[1, 0, 1, 1], ceil_mode=1),
    dict(kernel_shape=[2, 3], strides=[3, 2], dilations=[2, 2], ceil_mode=1),
    dict(kernel_shape=[7, 7]),
]


@pytest.mark.parametrize("attrs", POOL_ATTRS)
@pytest.mark.parametrize("op,extra", [("max_pool", {}), ("avg_pool", {}),
                                      ("avg_pool", {"count_include_pad": 1}), ("lp_pool", {}),
                                      ("lp_pool", {"p": 3})])
def test_pool(op, extra, attrs):
    run(op, [rand(2, 3, 9, 11)], **attrs, **extra)


@pytest.mark.parametrize("op", ["max_pool", "avg_pool", "lp_pool"])
def test_pool_1d_3d(op):
    run(op, [rand(2, 3, 17)], kernel_shape=[3], strides=[2], dilations=[2], pads=[1, 2])
    run(op, [rand(1, 2, 5, 6, 7)], kernel_shape=[2, 2, 3], strides=[1, 2, 1], ceil_mode=1)


@pytest.mark.parametrize("dtype", [np.int8, np.uint8])
def test_max_pool_integers(dtype):
    x = rng.integers(np.iinfo(dtype).min, np.iinfo(dtype).max, (2, 3, 9, 11)).astype(dtype)
    run("max_pool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_pool_other_floats(dtype):
    x = rand(2, 3, 9, 11, dtype=dtype)
    for op in ("max_pool", "avg_pool"):
        run(op, [x], kernel_shape=[3, 3], pads=[1, 1, 1, 1], rtol=1e-3, atol=1e-3)


def test_max_pool_propagates_nan():
    x = rand(1, 2, 6, 6)
    x[0, 0, 2, 3] = np.nan
    run("max_pool", [x], kernel_shape=[3, 3], strides=[1, 1])
    run("global_max_pool", [x])


@pytest.mark.parametrize("attrs", [dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]),
                                   dict(kernel_shape=[2, 4], strides=[1, 1], pads=[0, 2, 1, 1]),
                                   dict(kernel_shape=[3, 2], strides=[1, 2], ceil_mode=1)])
def test_max_pool_wide_rows(attrs):
    """Rows of several vectors and a partial one (37, 64 and 70 columns), NaN in the middle
    and at the last column: a float 2-D pool with row stride 1 or 2 takes rows of taps first,
    then columns (ResNet's stem pool), with the generic form's maxima exactly."""
    for w in (37, 64, 70):
        x = rand(2, 3, 7, w)
        x[0, 1, 3, w // 2] = np.nan
        x[1, 2, 6, w - 1] = np.nan
        run("max_pool", [x], **attrs)


@pytest.mark.parametrize("storage_order", [0, 1])
@pytest.mark.parametrize("attrs", POOL_ATTRS[:3])
def test_max_pool_with_indices(storage_order, attrs):
    x = rand(2, 3, 9, 11)
    x[0, 0, :3, :3] = 5.0  # ties: the first window position wins
    run("max_pool_with_indices", [x], nout=2, storage_order=storage_order, **attrs)


@pytest.mark.parametrize("op,p", [("global_avg_pool", None), ("global_max_pool", None),
                                  ("global_lp_pool", 2), ("global_lp_pool", 3)])
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 5, 33), (2, 2, 1, 1)])
def test_global_pool(op, p, shape):
    run(op, [rand(*shape)], **({} if p is None else {"p": p}))


# ----------------------------------------------------------------------------------------------
# normalization, softmax family
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (2, 5), (1, 3, 17)])
def test_batch_norm(shape):
    c = shape[1]
    run("batch_norm", [rand(*shape), rand(c), rand(c), rand(c), np.abs(rand(c))])
    run("batch_norm", [rand(*shape), rand(c), rand(c), rand(c), np.abs(rand(c))],
        consts=(1, 2, 3, 4), epsilon=1e-3)


def test_norms():
    run("instance_norm", [rand(2, 5, 7, 9), rand(5), rand(5)], consts=(1, 2), threads=2)
    run("instance_norm", [rand(1, 3, 1, 1), rand(3), rand(3)], consts=(1, 2))
    run("group_norm", [rand(2, 6, 7, 9), rand(6), rand(6)], consts=(1, 2), num_groups=3)
    run("group_norm", [rand(2, 6, 5), rand(6), rand(6)], num_groups=6, epsilon=1e-3)
    run("lrn", [rand(2, 7, 5, 9)], size=3)
    run("lrn", [rand(2, 7, 5, 9)], size=4, alpha=0.01, beta=0.5, bias=2.0)
    for axes in ([0, 2, 3], [1], [0, 1, 2, 3], [2]):
        run("mean_variance_normalization", [rand(2, 3, 5, 19)], axes=axes)


@pytest.mark.parametrize("axis,scale_shape,bias", [(2, (7, 9), True), (2, (1, 9), True),
                                                   (-1, (37,), False), (1, (6, 1, 1), True),
                                                   (0, (2, 6, 7, 37), False)])
def test_layer_norm(axis, scale_shape, bias):
    x = rand(2, 6, 7, 37) if scale_shape != (7, 9) and scale_shape != (1, 9) else rand(2, 6, 7, 9)
    run("layer_norm", [x, rand(*scale_shape), rand(*scale_shape[-1:]) if bias else None],
        consts=(1, 2), axis=axis)


def test_layer_norm_stats():
    run("layer_norm_stats", [rand(2, 6, 37)], nout=2, axis=1)
    run("layer_norm_stats", [rand(3, 17)], nout=2, axis=-1, epsilon=1e-3)


@pytest.mark.parametrize("op", ["softmax", "log_softmax", "hardmax", "lp_normalization"])
@pytest.mark.parametrize("axis", [-1, 0, 1])
def test_softmax_family(op, axis):
    extra = {"p": 1} if op == "lp_normalization" and axis == 1 else {}
    run(op, [rand(3, 5, 19)], axis=axis, threads=2, **extra)


def test_softmax_special_values():
    x = rand(4, 17)
    x[0, :] = -np.inf           # no finite maximum: the shift is 0, as the reference
    x[1, 3] = np.nan
    x[2, 5] = np.inf
    x[3, 2] = x[3, 9] = 50.0    # hardmax ties: the first wins
    for op in ("softmax", "log_softmax", "hardmax"):
        g, args = build(op, [x], axis=-1)
        e, a = interpret(g, *args)[0], slimc.compile(g, threads=1)(*args)[0]
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)
    run("lp_normalization", [np.zeros((2, 5), np.float32)], axis=-1)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_softmax_other_floats(dtype):
    x = (rand(3, 33) * 4).astype(dtype)
    for op in ("softmax", "log_softmax"):
        run(op, [x], axis=-1, rtol=1e-3, atol=1e-3)
    run("layer_norm", [rand(3, 33, dtype=dtype), rand(33, dtype=dtype)], axis=-1, rtol=1e-2,
        atol=1e-2)


def test_softmax_fused_consumer():
    run("softmax", [rand(2, 7, 19)], axis=1, then=lambda g, o: add_node(g, "mul", [
        o[0], g.add_constant("s", rand(19))]))
    run("softmax", [rand(2, 7, 19)], axis=-1, then=_relu)


# ----------------------------------------------------------------------------------------------
# resize
# ----------------------------------------------------------------------------------------------

CTMS = ["half_pixel", "half_pixel_symmetric", "pytorch_half_pixel", "align_corners",
        "asymmetric"]


def resize_graph(x, mode, ctm="half_pixel", scales=None, sizes=None, roi=None, **attrs):
    g = Graph("resize")
    ins = [g.add_input("x", TensorType(dtypes.from_numpy(x.dtype), x.shape)),
           None if roi is None else g.add_constant("roi", roi),
           None if scales is None else g.add_constant("scales", scales)]
    if sizes is not None:
        ins.append(g.add_constant("sizes", sizes))
    g.outputs = add_node(g, "resize", ins, mode=mode, coordinate_transformation_mode=ctm,
                         **attrs)
    return g


@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize(mode, ctm):
    x = rand(2, 3, 5, 7)
    check(resize_graph(x, mode, ctm, scales=np.array([1, 1, 1.7, 0.6], np.float32)), [x])
    check(resize_graph(x, mode, ctm, sizes=np.array([2, 3, 9, 4], np.int64)), [x])


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
def test_resize_options(mode):
    x = rand(2, 3, 5, 7)
    roi = np.array([0, 0, 0.2, -0.3, 1, 1, 1.3, 0.8], np.float32)
    check(resize_graph(x, mode, "tf_crop_and_resize", sizes=np.array([2, 3, 9, 4], np.int64),
                       roi=roi, extrapolation_value=3.0), [x])
    check(resize_graph(x, mode, scales=np.array([1.7, 0.6], np.float32), axes=[3, 2],
                       exclude_outside=1, cubic_coeff_a=-0.5), [x])
    check(resize_graph(x, mode, sizes=np.array([4, 4], np.int64), axes=[2, 3],
                       keep_aspect_ratio_policy="not_larger"), [x])
    if mode != "nearest":
        check(resize_graph(x, mode, scales=np.array([1, 1, 0.5, 0.4], np.float32),
                           antialias=1), [x])


@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor",
                                          "ceil"])
def test_resize_nearest_modes(nearest_mode):
    x = rand(1, 2, 4, 6)
    check(resize_graph(x, "nearest", "asymmetric", scales=np.array([1, 1, 2.5, 1.5], np.float32),
                       nearest_mode=nearest_mode), [x])


def test_resize_integers():
    x = rng.integers(-128, 127, (1, 2, 4, 5)).astype(np.int8)
    for mode in ("nearest", "linear", "cubic"):
        check(resize_graph(x, mode, scales=np.array([1, 1, 1.5, 2.2], np.float32)), [x])


def test_resize_runtime_scales_are_refused():
    x = rand(1, 1, 4, 4)
    g = Graph("resize")
    xi = g.add_input("x", TensorType(dtypes.f32, x.shape))
    s = g.add_input("s", TensorType(dtypes.f32, (4,)))
    n = g.make_node("resize", [xi, None, s], {"mode": "linear"},
                    output_types=[TensorType(dtypes.f32, (1, 1, 8, 8))])
    g.outputs = list(n.outputs)
    with pytest.raises(UnsupportedError, match="resize"):
        slimc.compile(g)(x, np.array([1, 1, 2, 2], np.float32))


# ----------------------------------------------------------------------------------------------
# drawn configurations
# ----------------------------------------------------------------------------------------------

SIZES = st.sampled_from([1, 7, 17])


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(h=SIZES, w=SIZES, cin_g=st.sampled_from([1, 3, 5]), cout_g=st.sampled_from([1, 4, 7]),
       group=st.sampled_from([1, 2, 3]), k=st.sampled_from([1, 2, 3]),
       s=st.sampled_from([1, 2]), d=st.sampled_from([1, 2]),
       pads=st.lists(st.integers(0, 2), min_size=4, max_size=4), bias=st.booleans())
def test_conv_drawn(h, w, cin_g, cout_g, group, k, s, d, pads, bias):
    pads = [min(p, k - 1) for p in pads]
    for i, n in enumerate((h, w)):
        assume(window_out_dim(n, k, s, d, pads[i], pads[2 + i]) >= 1)
    x = rand(2, cin_g * group, h, w)
    wt = rand(cout_g * group, cin_g, k, k)
    run("conv", [x, wt, rand(cout_g * group) if bias else None], consts=(1, 2), group=group,
        strides=[s, s], dilations=[d, d], pads=pads, threads=2)


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(op=st.sampled_from(["max_pool", "avg_pool", "lp_pool"]), h=SIZES, w=SIZES,
       kh=st.sampled_from([1, 2, 3]), kw=st.sampled_from([1, 2, 3]), s=st.sampled_from([1, 2]),
       d=st.sampled_from([1, 2]), ceil=st.booleans(), include=st.booleans(),
       pads=st.lists(st.integers(0, 1), min_size=4, max_size=4))
def test_pool_drawn(op, h, w, kh, kw, s, d, ceil, include, pads):
    kernel = [kh, kw]
    pads = [min(p, kernel[i % 2] - 1) for i, p in enumerate(pads)]
    for i, n in enumerate((h, w)):
        assume(window_out_dim(n, kernel[i], s, d, pads[i], pads[2 + i], ceil) >= 1)
    extra = {"count_include_pad": int(include)} if op == "avg_pool" else {}
    run(op, [rand(1, 3, h, w)], kernel_shape=kernel, strides=[s, s], dilations=[d, d],
        pads=pads, ceil_mode=int(ceil), **extra)


# --- a convolution whose output rows are one pixel wide, with a fused epilogue -------------
# On AVX-512 an 8-channel conv stays NCHW (the block is 16) and its GEMM path copied each
# output row segment out with a vector loop even when the row is one pixel wide: the clip's
# operand, looked up at the canonical index of a size-1 axis, missed the vector stored there
# ("conv node 'y' is inside a kernel but has no inline lowering"). Checked on every x86
# target this host runs and with the layout pass off, so the NCHW path is taken on every
# kind of machine; onnxruntime is the oracle.
def _runnable_x86_targets():
    from slimc.codegen.cpu.target import CpuTarget

    return ["x86"] + [t for t in ("x86-64-v3", "x86-64-v4") if CpuTarget.from_name(t).is_host]


@pytest.mark.parametrize("target", _runnable_x86_targets())
@pytest.mark.parametrize("layout", [True, False])
@pytest.mark.parametrize("shape,k", [((1, 8, 5, 1), 1), ((1, 8, 1, 5), 1), ((2, 8, 5, 1), 3),
                                     ((1, 8, 1, 1), 1), ((1, 24, 14, 1), 1)])
def test_conv_clip_one_pixel_rows(shape, k, layout, target):
    from onnx import helper

    from ..oracle import assert_close, make_model, run_onnxruntime

    c = shape[1]
    x = rand(*shape)
    w = rand(c, c, k, k)
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="y", pads=[k // 2] * 4),
             helper.make_node("Clip", ["y", "lo", "hi"], ["z"], name="z")]
    model = make_model(nodes, {"x": x}, ["z"], {"w": w, "lo": np.float32(0), "hi": np.float32(6)})
    mod = slimc.compile(model, target=target, disable_passes=[] if layout else ["layout"])
    assert_close(mod(x), run_onnxruntime(model, {"x": x}), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("cout,k", [(17, 1), (17, 3), (48, 1), (48, 3), (1001, 1)])
def test_conv_equal_filters_give_bitwise_equal_channels(cout, k, threads):
    """Identical filters give identical output channels, whatever channel block, register
    tile or thread computes them (the GEMM, Winograd and blocked paths)."""
    from onnx import helper

    from ..oracle import assert_close, make_model, run_onnxruntime

    r = np.random.default_rng(cout * 10 + k)
    x = r.standard_normal((1, 16, 9, 11)).astype(np.float32)
    w = np.repeat(r.standard_normal((1, 16, k, k)).astype(np.float32), cout, axis=0)
    model = make_model([helper.make_node("Conv", ["x", "w"], ["y"], name="y", pads=[k // 2] * 4)],
                       {"x": x}, ["y"], {"w": w})
    (y,) = slimc.compile(model, threads=threads)(x)
    assert (y == y[:, :1]).all(), f"{(y != y[:, :1]).sum()} outputs differ from channel 0"
    assert_close([y], run_onnxruntime(model, {"x": x}), rtol=1e-4, atol=1e-4)


def test_one_image_gemm_conv_is_cut_for_threads():
    """A batch-1 pointwise conv in NCHW whose image would make one GEMM chunk (one task) is
    cut into whole panels so threads share it; 1 and 2 threads against the interpreter."""
    g = Graph("pointwise")
    x = g.add_input("x", TensorType(dtypes.f32, (1, 40, 30, 30)))
    w = g.add_constant("w", rand(12, 40, 1, 1))
    y = g.make_node("conv", [x, w], {}, [TensorType(dtypes.f32, (1, 12, 30, 30))],
                    ["y"]).outputs[0]
    g.outputs.append(y)
    args = [rand(1, 40, 30, 30)]
    for threads in (1, 2):
        mod = slimc.compile(g, threads=threads, disable_passes=["layout"], target="x86-64-v3")
        (k,) = mod.kernels
        assert k.parallel_extent >= 2, k.parallel_extent
        np.testing.assert_allclose(mod(*args)[0], interpret(g, *args)[0], rtol=1e-4, atol=1e-4)
