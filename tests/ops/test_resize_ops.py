"""Resize and Upsample: slimc's interpreter against onnxruntime, and against onnx.reference where
the two runtimes disagree on a point the ONNX spec leaves to the reference (align_corners with
fractional scales, integer rounding, antialias); type inference of the output shape."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from slimc.ir import TensorType, dtypes
from tests.ops.common import check, f32, infer, random_arrays
from tests.oracle import make_model, run_onnx_reference, run_slimc_interpreter

rand = random_arrays(np.random.default_rng(0))

SCALES = [[1, 1, 2.0, 1.5], [1, 1, 0.5, 0.25], [1, 1, 1.0, 3.0]]
SIZES = [[1, 2, 3, 11], [1, 2, 10, 4], [1, 2, 1, 1]]
CTMS = ["half_pixel", "pytorch_half_pixel", "asymmetric", "align_corners",
        "half_pixel_symmetric", "tf_crop_and_resize"]


def _resize(x, mode, ctm, *, scales=None, sizes=None, opset=19, oracle="ort", roi=None, **kw):
    inits = {"roi": np.array(roi or [0, 0, 0.1, 0.2, 1, 1, 0.8, 0.9], np.float32)
             if ctm == "tf_crop_and_resize" else np.zeros(0, np.float32)}
    if scales is not None:
        inits["scales"] = np.array(scales, np.float32)
        order = ["x", "roi", "scales"]
    else:
        inits["sizes"] = np.array(sizes, np.int64)
        order = ["x", "roi", "", "sizes"]
    return check("Resize", {"x": x}, inits, order=order, opset=opset, oracle=oracle, mode=mode,
                 coordinate_transformation_mode=ctm, **kw)


@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("ctm", CTMS)
@pytest.mark.parametrize("which", ["scales", "sizes"])
def test_resize(mode, ctm, which):
    x = rand(1, 2, 5, 7)
    for i in range(3):
        kw = {"scales": SCALES[i]} if which == "scales" else {"sizes": SIZES[i]}
        # onnxruntime maps align_corners / tf_crop_and_resize with the integer output length
        # where the spec (and onnx.reference) use input * scale; identical for sizes.
        fractional = which == "scales" and ctm in ("align_corners", "tf_crop_and_resize")
        _resize(x, mode, ctm, oracle="onnx" if fractional else "ort", extrapolation_value=-2.0,
                **kw)


@pytest.mark.parametrize("nearest_mode", ["round_prefer_floor", "round_prefer_ceil", "floor",
                                          "ceil"])
@pytest.mark.parametrize("ctm", ["half_pixel", "asymmetric", "align_corners"])
def test_resize_nearest_modes(nearest_mode, ctm):
    x = rand(1, 1, 6, 5)
    _resize(x, "nearest", ctm, sizes=[1, 1, 13, 3], nearest_mode=nearest_mode)
    _resize(x, "nearest", ctm, scales=[1, 1, 2.0, 0.5], nearest_mode=nearest_mode,
            oracle="onnx" if ctm == "align_corners" else "ort")


@pytest.mark.parametrize("a,exclude_outside", [(-0.75, 0), (-0.5, 1), (-0.6, 0)])
def test_resize_cubic_options(a, exclude_outside):
    _resize(rand(1, 2, 6, 5), "cubic", "half_pixel", scales=[1, 1, 1.5, 0.6],
            cubic_coeff_a=a, exclude_outside=exclude_outside)


@pytest.mark.parametrize("mode", ["linear", "cubic"])
@pytest.mark.parametrize("scales", [[1, 1, 0.5, 0.3], [1, 1, 0.7, 1.6]])
@pytest.mark.parametrize("ctm", ["half_pixel", "asymmetric", "align_corners"])
def test_resize_antialias(mode, scales, ctm):
    _resize(rand(1, 2, 9, 13), mode, ctm, scales=scales, antialias=1, oracle="onnx")


@pytest.mark.parametrize("policy", ["stretch", "not_larger", "not_smaller"])
@pytest.mark.parametrize("axes", [[2, 3], [3, 2]])
def test_resize_axes_and_policy(policy, axes):
    x = rand(1, 2, 9, 13)
    sizes = [4, 20] if axes == [2, 3] else [20, 4]
    check("Resize", {"x": x}, {"sizes": np.array(sizes, np.int64)}, order=["x", "", "", "sizes"],
          opset=18, mode="linear", axes=axes, keep_aspect_ratio_policy=policy)
    check("Resize", {"x": x}, {"scales": np.array([2.0, 0.5], np.float32)},
          order=["x", "", "scales"], opset=18, mode="nearest", axes=axes)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int32])
@pytest.mark.parametrize("mode", ["nearest", "linear", "cubic"])
@pytest.mark.parametrize("scales, out_shape", [([1, 1, 2, 2], (1, 1, 10, 12)),
                                               ([1, 1, 1.5, 2.5], (1, 1, 7, 15))])
def test_resize_integer(dtype, mode, scales, out_shape):
    """Integer outputs round half to even, as onnx.reference does (onnxruntime truncates).

    With scale 2 every weight is a multiple of 1/4, 1/16 or 1/64 and every sum exact: the two
    agree everywhere, ties included. With 1.5 x 2.5, where the exact result is a tie (x.5 in
    real arithmetic, found by resizing the same values as float64), float rounding in the
    weighted sums decides which way it goes, and slimc (axis by axis, outer axis first) and
    onnx.reference (inner axis first) sum in different orders: there the two may differ by one
    (on 25-43 of 200 random inputs, linear mode). Everywhere else they agree exactly, on any
    input: this test draws its own."""
    info = np.iinfo(dtype)
    x = np.random.default_rng(7).integers(max(info.min, -100), min(info.max, 100), (1, 1, 5, 6),
                                          endpoint=True).astype(dtype)
    models = [make_model([helper.make_node("Resize", ["x", "roi", "scales"], ["y"], mode=mode,
                                           coordinate_transformation_mode="half_pixel")],
                         {"x": x.astype(t)}, ["y"],
                         {"roi": np.zeros(0, np.float32), "scales": np.array(scales, np.float32)},
                         opset=19)
              for t in (dtype, np.float64)]
    got = run_slimc_interpreter(models[0], {"x": x})[0]
    want = run_onnx_reference(models[0], {"x": x})[0]
    assert got.dtype == want.dtype == dtype and got.shape == want.shape == out_shape
    diff = got.astype(np.int64) - want.astype(np.int64)
    if scales[2] == 2:
        np.testing.assert_array_equal(diff, 0)
        return
    exact = run_onnx_reference(models[1], {"x": x.astype(np.float64)})[0]
    tie = np.abs(exact - np.floor(exact) - 0.5) < 1e-9
    np.testing.assert_array_equal(diff[~tie], 0)
    assert np.abs(diff[tie]).max(initial=0) <= 1


def test_resize_f16():
    _resize(rand(1, 2, 5, 6, dtype=np.float16), "linear", "half_pixel", scales=[1, 1, 2, 1.5],
            rtol=2e-3, atol=2e-3)


def test_resize_opset11_empty_scales_and_runtime_inputs():
    x = rand(1, 2, 5, 7)
    check("Resize", {"x": x}, {"roi": np.zeros(0, np.float32), "s": np.zeros(0, np.float32),
                               "sz": np.array([1, 2, 4, 20], np.int64)}, opset=11,
          order=["x", "roi", "s", "sz"], mode="linear")
    # scales and roi given at run time: the output shape is unknown until then.
    check("Resize", {"x": x, "roi": np.array([0, 0, .2, .1, 1, 1, .9, .7], np.float32),
                     "s": np.array([1, 1, 2, 2], np.float32)}, opset=13, mode="nearest",
          coordinate_transformation_mode="tf_crop_and_resize")


@pytest.mark.parametrize("mode", ["nearest", "linear"])
@pytest.mark.parametrize("scales", [[1, 1, 2, 3], [1, 1, 1.5, 2.5]])
def test_upsample_and_resize10(mode, scales):
    x = rand(1, 2, 4, 5)
    s = {"s": np.array(scales, np.float32)}
    check("Upsample", {"x": x}, s, opset=9, mode=mode)
    check("Upsample", {"x": x}, opset=7, mode=mode, scales=[float(v) for v in scales])
    check("Resize", {"x": x}, s, opset=10, mode=mode)
    check("Resize", {"x": rand(1, 2, 8, 10)}, {"s": np.array([1, 1, 0.5, 0.25], np.float32)},
          opset=10, mode=mode)



def test_infer_resize_shapes():
    sizes = np.array([4, 20], np.int64)
    scales = np.array([1, 1, 2.0, 0.5], np.float32)
    x = f32("N", 3, "H", "W")
    assert infer("resize", [x, None, None, TensorType(dtypes.i64, (2,))], [None, None, None, sizes],
                 axes=[2, 3]) == [f32("N", 3, 4, 20)]
    assert infer("resize", [f32("N", 3, 9, 13), None, TensorType(dtypes.f32, (4,))],
                 [None, None, scales]) == [f32("N", 3, 18, 6)]
    assert infer("resize", [x, None, TensorType(dtypes.f32, (4,))], [None, None, scales]) == \
        [f32("N", 3, None, None)]
    # A non-constant scales input leaves the resized dims unknown until run time.
    assert infer("resize", [f32(1, 3, 9, 13), None, TensorType(dtypes.f32, (2,))],
                 axes=[2, 3]) == [f32(1, 3, None, None)]
    assert infer("resize", [f32(1, 3, 9, 13), None, None, TensorType(dtypes.i64, (2,))],
                 [None, None, None, sizes], axes=[2, 3],
                 keep_aspect_ratio_policy="not_larger") == [f32(1, 3, 4, 6)]
