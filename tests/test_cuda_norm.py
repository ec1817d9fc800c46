"""The CUDA backend's normalizations (codegen/cuda/gen_norm.py), arg_max / arg_min
(gen_reduce.py) and resize (gen_resize.py), without a GPU: ptxas must take their PTX for sm_80
and sm_90, and the emulator must give the interpreter's results.

Why these shapes: planes of 1, 5, 33 and 1000 elements reach every row layout (a thread per
row, rows sharing a warp, a warp, a block per row with shared memory), a group of 40000
elements is streamed; arg_max's ties and NaN test the (value, index) order that the
butterfly relies on, along the last axis (rows) and other axes (a thread per output); resize
runs every mode on odd up and down sampling, with tap loops (antialias) and the crop's
extrapolation. Each test also checks that the work is spread over many threads: the point of
these generators over the CPU's (a whole plane, row or slab per thread).
"""

import numpy as np
import pytest

import slimc
from slimc.codegen.cuda import gen_resize
from slimc.ir import dtypes

from .test_cuda_reduce import Net

rng = np.random.default_rng(0)


def threads(mod, op) -> int:
    """Threads launched by the one kernel anchored on `op`."""
    ks = [k for k in mod.kernels if op in k.ops]
    assert len(ks) == 1, [k.name for k in mod.kernels]
    return ks[0].grid[0] * ks[0].block[0]


def params(n, C):
    return [n.input((C,)), n.input((C,))]


# ----- instance_norm, group_norm ------------------------------------------------------------

@pytest.mark.parametrize("space", [(1,), (5,), (3, 11), (1000,)])
def test_instance_norm_planes(space):
    n = Net()
    x = n.input((2, 3) + space)
    mod = n.run(n.op("instance_norm", [x] + params(n, 3), epsilon=1e-3), anchor="instance_norm",
                atol=1e-4)
    plane = int(np.prod(space))
    # a thread per 8 elements of a plane, up to a block per plane
    assert threads(mod, "instance_norm") >= 6 * min(128, plane // 8)


@pytest.mark.parametrize("shape,groups", [((2, 6, 5), 3), ((1, 8, 33), 2), ((2, 4, 10, 100), 4),
                                          ((3, 5, 7), 1), ((1, 40, 1000), 1)])
def test_group_norm(shape, groups):
    """Several groups, one group (the whole sample), and a group of 40000 elements: over a
    block's registers, streamed once per pass."""
    n = Net()
    x = n.input(shape)
    mod = n.run(n.op("group_norm", [x] + params(n, shape[1]), num_groups=groups, epsilon=1e-2),
                anchor="group_norm", atol=1e-4)
    slab = int(np.prod(shape[1:])) // groups
    assert threads(mod, "group_norm") >= shape[0] * groups * min(1024, slab // 8)


def test_norms_fuse_producers_epilogues_and_take_halves():
    n = Net()
    x, res = n.input((2, 4, 33)), n.input((2, 4, 33))
    y = n.op("group_norm", [n.op("add", [x, n.input((33,))])] + params(n, 4), num_groups=2)
    mod = n.run(n.op("relu", [n.op("add", [y, res])]), atol=1e-4)
    assert len(mod.kernels) == 1, mod.kernels
    n = Net()
    y = n.op("instance_norm", [n.op("mul", [n.input((2, 3, 50)), n.const(2.0)])] + params(n, 3))
    mod = n.run(n.op("tanh", [y]), atol=1e-4)
    assert len(mod.kernels) == 1, mod.kernels
    n = Net()
    n.run(n.op("instance_norm", [n.input((2, 3, 40), np.float16), n.input((3,), np.float16),
                                 n.input((3,), np.float16)]), rtol=2e-3, atol=2e-3)
    n = Net()  # f64: a thread per row, no shuffles
    n.run(n.op("group_norm", [n.input((2, 4, 30), np.float64), n.input((4,), np.float64),
                              n.input((4,), np.float64)], num_groups=2), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape,axes", [((2, 3, 5, 7), [0, 2, 3]), ((2, 3, 5, 7), [2, 3]),
                                        ((4, 33, 6), [1]), ((3, 1000), [1]), ((5, 4), [])])
def test_mean_variance_normalization(shape, axes):
    """Rows over outer and inner axes, a kept inner axis (the column layout), no axis."""
    n = Net()
    n.run(n.op("mean_variance_normalization", [n.input(shape)], axes=axes, epsilon=1e-6),
          anchor="mean_variance_normalization", atol=1e-4)


# ----- batch_norm, lrn: a thread per output element -----------------------------------------

@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (3, 4), (1, 5, 1000)])
def test_batch_norm(shape):
    n = Net()
    C = shape[1]
    var = rng.uniform(0.5, 2.0, C).astype(np.float32)
    x = n.input(shape)
    ins = [x] + params(n, C) + [n.input((C,)), n.input((C,), data=var)]
    mod = n.run(n.op("relu", [n.op("batch_norm", ins, epsilon=1e-3)]), atol=1e-5)
    assert len(mod.kernels) == 1, mod.kernels
    assert mod.kernels[0].items == int(np.prod(shape))
    n = Net()
    ins = [n.input(shape, np.float16)] + [n.input((C,)) for _ in range(3)] + \
        [n.input((C,), data=var)]
    n.run(n.op("batch_norm", ins), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("size", [1, 3, 4, 5])
def test_lrn(size):
    n = Net()
    mod = n.run(n.op("lrn", [n.input((2, 7, 3, 5))], size=size, alpha=0.1, beta=0.6, bias=1.5),
                anchor="lrn", atol=1e-5)
    assert mod.kernels[0].items == 2 * 7 * 3 * 5


# ----- arg_max, arg_min ---------------------------------------------------------------------

def ties_and_nans(shape, nan_rows=True):
    """Integers in [-2, 2] (many ties); row 1 has two NaN, row 2 is all NaN (along the last
    axis), and -0.0 next to 0.0."""
    data = rng.integers(-2, 3, shape).astype(np.float32)
    flat = data.reshape(-1, shape[-1])
    flat[0, 0] = -0.0
    if nan_rows and flat.shape[0] > 2:
        flat[1, [0, -1]] = np.nan
        flat[2] = np.nan
    return data


@pytest.mark.parametrize("last", [0, 1])
@pytest.mark.parametrize("op", ["arg_max", "arg_min"])
@pytest.mark.parametrize("shape,axis", [((7, 1), -1), ((5, 6), 1), ((4, 33), 1), ((3, 1000), 1),
                                        ((3, 50000), 1), ((33, 5), 0), ((3, 40, 7), 1)])
def test_arg_ties_and_nan(op, last, shape, axis):
    """Rows of 1..8 elements (a thread), a warp, a block (shared memory) and 50000 (streamed)
    along the last axis; a thread per output along other axes."""
    n = Net()
    x = n.input(shape, data=ties_and_nans(shape))
    mod = n.run(n.op(op, [x], axis=axis, select_last_index=last, keepdims=last),
                anchor=op)
    outputs = int(np.prod(shape)) // shape[axis]
    per_output = max(1, min(1024, shape[axis] // 8)) if axis % len(shape) == len(shape) - 1 \
        else 1
    assert threads(mod, op) >= outputs * per_output


@pytest.mark.parametrize("dtype", [np.int32, np.uint8, np.int64, np.float16, np.float64])
def test_arg_other_dtypes(dtype):
    """Integers and f64 scan a row per thread; halves compare as f32 rows."""
    for shape, axis in [((4, 37), 1), ((6, 5, 3), 1)]:
        data = rng.integers(0 if dtype == np.uint8 else -3, 4, shape).astype(dtype)
        for op in ("arg_max", "arg_min"):
            n = Net()
            n.run(n.op(op, [n.input(shape, dtype, data)], axis=axis, select_last_index=1))


def test_results_do_not_depend_on_thread_order():
    """Blocks of shuffles and barriers give the same bits in any schedule the emulator
    draws: the pair order is total, the sums' order fixed."""
    for build in (lambda n: n.op("arg_min", [n.input((3, 1000), data=ties_and_nans((3, 1000)))],
                                 axis=1, select_last_index=1),
                  lambda n: n.op("group_norm", [n.input((2, 4, 250))] + params(n, 4),
                                 num_groups=2)):
        n = Net()
        n.g.outputs = [build(n)]
        mod = slimc.compile(n.g, target="cuda:sm_80")
        first, second = mod.emulate(*n.feeds, seed=0), mod.emulate(*n.feeds, seed=7)
        np.testing.assert_array_equal(first[0], second[0])


def test_arg_fused_producer():
    n = Net()
    x = n.input((5, 300))
    mod = n.run(n.op("arg_max", [n.op("mul", [x, n.input((300,))])], axis=1, keepdims=0))
    assert len(mod.kernels) == 1, mod.kernels


# ----- resize -------------------------------------------------------------------------------

RESIZES = [
    # mode, attrs, scales (NCHW, (1, 2, 9, 11) input)
    ("nearest", dict(nearest_mode="round_prefer_floor"), [1, 1, 1.7, 0.6]),
    ("nearest", dict(nearest_mode="round_prefer_ceil", coordinate_transformation_mode=
                     "asymmetric"), [1, 1, 2.0, 3.0]),
    ("nearest", dict(nearest_mode="floor", coordinate_transformation_mode="align_corners"),
     [1, 1, 0.6, 1.5]),
    ("nearest", dict(nearest_mode="ceil", coordinate_transformation_mode="half_pixel"),
     [1, 1, 3.0, 0.3]),
    ("linear", dict(), [1, 1, 1.7, 0.6]),
    ("linear", dict(coordinate_transformation_mode="pytorch_half_pixel"), [1, 1, 2.0, 0.2]),
    ("linear", dict(coordinate_transformation_mode="align_corners"), [1, 1, 2.6, 1.3]),
    ("linear", dict(coordinate_transformation_mode="half_pixel_symmetric"), [1, 1, 1.4, 0.75]),
    ("linear", dict(antialias=1), [1, 1, 0.4, 0.3]),  # many taps: loops
    ("cubic", dict(), [1, 1, 1.7, 0.6]),
    ("cubic", dict(coordinate_transformation_mode="asymmetric", cubic_coeff_a=-0.5,
                   exclude_outside=1), [1, 1, 2.0, 1.5]),
    ("cubic", dict(antialias=1), [1, 1, 0.5, 0.45]),
]


@pytest.mark.parametrize("mode,attrs,scales", RESIZES)
def test_resize_modes(mode, attrs, scales):
    n = Net()
    x = n.input((1, 2, 9, 11))
    y = n.op("resize", [x, None, n.const(scales)], mode=mode, **attrs)
    mod = n.run(y, anchor="resize", atol=1e-5)
    assert threads(mod, "resize") >= int(np.prod(y.type.shape))


@pytest.mark.parametrize("mode", ["nearest", "linear"])
def test_resize_crop_sizes_and_other_ranks(mode):
    """tf_crop_and_resize (extrapolation outside the roi), sizes, 1-D and 3-D."""
    n = Net()
    roi = n.const([0, 0, -0.2, 0.3, 1, 1, 0.9, 1.4])
    y = n.op("resize", [n.input((1, 2, 6, 5)), roi, n.const([1, 1, 1.5, 1.8])], mode=mode,
             coordinate_transformation_mode="tf_crop_and_resize", extrapolation_value=-7.0)
    n.run(y, atol=1e-5)
    n = Net()
    y = n.op("resize", [n.input((3, 11)), None, None, n.const([4], np.int64)], mode=mode,
             axes=[1])
    n.run(y, atol=1e-5)
    n = Net()
    y = n.op("resize", [n.input((1, 1, 3, 4, 5)), None, n.const([1, 1, 1.5, 0.5, 1.4])],
             mode=mode)
    n.run(y, atol=1e-5)


def test_resize_integers_halves_and_epilogue():
    """uint8 interpolates in f64 and rounds as the reference; f16 in f32; a producer and a
    consumer fused."""
    data = rng.integers(0, 256, (1, 3, 5, 7)).astype(np.uint8)
    n = Net()
    n.run(n.op("resize", [n.input(data.shape, np.uint8, data), None,
                          n.const([1, 1, 1.7, 2.3])], mode="cubic"))
    n = Net()
    n.run(n.op("resize", [n.input((1, 2, 5, 7), np.float16), None, n.const([1, 1, 2.0, 0.6])],
               mode="linear"), rtol=2e-3, atol=2e-3)
    n = Net()
    x = n.op("mul", [n.input((1, 2, 5, 7)), n.input((7,))])
    y = n.op("resize", [x, None, n.const([1, 1, 2.0, 2.0])], mode="linear")
    mod = n.run(n.op("relu", [y]))
    assert len(mod.kernels) == 1, mod.kernels


def test_resize_compute_type():
    """f32 where f32 is close enough (floats), f64 where a result rounds (integers)."""
    f16, f32, f64, u8 = dtypes.f16, dtypes.f32, dtypes.f64, dtypes.u8
    assert gen_resize._compute_dtype(f16, True, False) == f32
    assert gen_resize._compute_dtype(f64, True, False) == f64
    assert gen_resize._compute_dtype(u8, False, True) == f64
    assert gen_resize._compute_dtype(u8, False, False) == u8
