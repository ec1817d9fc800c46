"""The int8 kernels against the numpy references (ir/ops/quant.py, linalg.matmul_integer).

Integer results must be exact, so every path (VNNI where the host has it, AVX-512BW through
target x86-64-v4, the AVX2 path through x86-64-v3 on every machine) is compared for equality
with the reference, which makes their accumulators bit-identical to each other too.
"""

from __future__ import annotations

import numpy as np
import pytest

import slimc
from slimc.codegen.cpu import gemm_int8
from slimc.codegen.cpu.target import CpuTarget
from slimc.ir import Graph, TensorType, dtypes
from slimc.ir.builder import add_op


def _runnable(name: str) -> bool:
    return CpuTarget.from_name(name).is_host


TARGETS = [pytest.param(t, marks=pytest.mark.skipif(not _runnable(t),
                                                    reason=f"host cannot run {t}"))
           for t in ("x86", "x86-64-v4", "x86-64-v3")]


def _run(g: Graph, *inputs, target="x86", threads=None):
    out = slimc.compile(g, target=target, threads=threads)(*inputs)
    return out if isinstance(out, (list, tuple)) else [out]


def _ints(rng, dt, shape, extreme=False):
    info = np.iinfo(dt)
    if extreme:  # only the ends of the range: what saturates a 16-bit pair sum
        return rng.choice(np.array([info.min, info.max], dt), size=shape)
    return rng.integers(info.min, int(info.max) + 1, shape).astype(dt)


def _matmul_integer_graph(rng, M, K, N, adt, bdt, za, zb, batch=(), extreme=False,
                          za_per_row=False):
    g = Graph("mmi")
    a = g.add_input("a", TensorType(dtypes.from_numpy(np.dtype(adt)), batch + (M, K)))
    w = g.add_constant("w", _ints(rng, bdt, (K, N), extreme))
    ins = [a, w, None, None]
    if za_per_row:
        ins[2] = g.add_input("za", TensorType(dtypes.from_numpy(np.dtype(adt)), batch + (M, 1)))
    elif za is not None:
        ins[2] = g.add_constant("za", np.asarray(za, adt))
    if zb is not None:
        ins[3] = g.add_constant("zb", np.asarray(zb, bdt))
    while ins[-1] is None:
        ins.pop()
    g.outputs = [add_op(g, "matmul_integer", ins).outputs[0]]
    return g


SHAPES = [(1, 1, 1), (1, 7, 5), (7, 13, 70), (6, 3, 17), (13, 64, 64), (20, 129, 130), (2, 300, 96)]
DTYPES = [(np.uint8, np.int8), (np.int8, np.int8), (np.uint8, np.uint8), (np.int8, np.uint8)]


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("adt,bdt", DTYPES, ids=lambda d: np.dtype(d).name)
def test_matmul_integer_exact(target, adt, bdt):
    rng = np.random.default_rng(1)
    for M, K, N in SHAPES:
        for za, zb in [(None, None), (3, None), (0, 5), (int(np.iinfo(adt).max), None)]:
            g = _matmul_integer_graph(rng, M, K, N, adt, bdt, za, zb)
            a = _ints(rng, adt, (M, K))
            np.testing.assert_array_equal(_run(g, a, target=target)[0], slimc.interpret(g, a)[0],
                                          err_msg=f"{target} {M}x{K}x{N} za={za} zb={zb}")


@pytest.mark.parametrize("target", TARGETS)
def test_inputs_that_would_saturate_int16_pairs(target):
    """255 against +-127/-128 everywhere: vpmaddubsw's pair sums would clip at 32767."""
    rng = np.random.default_rng(2)
    for K in (2, 4, 64, 301):
        g = _matmul_integer_graph(rng, 9, K, 40, np.uint8, np.int8, 0, None, extreme=True)
        a = _ints(rng, np.uint8, (9, K), extreme=True)
        ref = slimc.interpret(g, a)[0]
        assert np.abs(ref).max() > 32767 * (K > 2)  # the test reaches beyond int16
        np.testing.assert_array_equal(_run(g, a, target=target)[0], ref)


@pytest.mark.parametrize("target", TARGETS)
def test_per_row_zero_points_batch_and_threads(target):
    rng = np.random.default_rng(3)
    g = _matmul_integer_graph(rng, 11, 77, 150, np.uint8, np.int8, None, None, batch=(3,),
                              za_per_row=True)
    a = _ints(rng, np.uint8, (3, 11, 77))
    za = _ints(rng, np.uint8, (3, 11, 1))
    ref = slimc.interpret(g, a, za)[0]
    for threads in (1, 2, 3):
        np.testing.assert_array_equal(_run(g, a, za, target=target, threads=threads)[0], ref)


@pytest.mark.parametrize("target", TARGETS)
def test_fused_requantizing_epilogue(target):
    """matmul_integer -> dequantize (per column) -> + bias -> relu -> quantize: one kernel,
    equal to the reference up to float rounding of the last step (at most one step)."""
    rng = np.random.default_rng(4)
    M, K, N = 37, 96, 70
    g = Graph("layer")
    a = g.add_input("a", TensorType(dtypes.u8, (M, K)))
    w = g.add_constant("w", _ints(rng, np.int8, (K, N)))
    acc = add_op(g, "matmul_integer", [a, w, g.add_constant("za", np.uint8(131))]).outputs[0]
    scale = (rng.random(N) * 1e-3 + 1e-4).astype(np.float32)
    y = add_op(g, "dequantize", [acc, g.add_constant("s", scale)]).outputs[0]
    bias = rng.standard_normal(N).astype(np.float32)
    y = add_op(g, "add", [y, g.add_constant("bias", bias)]).outputs[0]
    y = add_op(g, "relu", [y]).outputs[0]
    q = add_op(g, "quantize", [y, g.add_constant("sy", np.float32(0.02)),
                               g.add_constant("zy", np.uint8(0))]).outputs[0]
    g.outputs = [q]
    a_v = _ints(rng, np.uint8, (M, K))
    mod = slimc.compile(g, target=target)
    assert len(mod.kernels) == 1, [k.name for k in mod.kernels]
    out = mod(a_v)
    out = out[0] if isinstance(out, (list, tuple)) else out
    ref = slimc.interpret(g, a_v)[0]
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1


def test_runtime_weights_take_the_exact_loops():
    rng = np.random.default_rng(5)
    g = Graph("rt")
    a = g.add_input("a", TensorType(dtypes.i8, (2, 5, 9)))
    b = g.add_input("b", TensorType(dtypes.u8, (2, 9, 4)))
    za = g.add_constant("za", np.int8(-3))
    zb = g.add_constant("zb", np.uint8(200))
    g.outputs = [add_op(g, "matmul_integer", [a, b, za, zb]).outputs[0]]
    av, bv = _ints(rng, np.int8, (2, 5, 9)), _ints(rng, np.uint8, (2, 9, 4))
    np.testing.assert_array_equal(_run(g, av, bv)[0], slimc.interpret(g, av, bv)[0])


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("per_row", [0, 1])
def test_dynamic_quantize_exact(target, per_row):
    rng = np.random.default_rng(6)
    for shape in [(1,), (3, 17), (2, 5, 64), (4, 1)]:
        g = Graph("dq")
        x = g.add_input("x", TensorType(dtypes.f32, shape))
        g.outputs = list(add_op(g, "dynamic_quantize", [x], {"per_row": per_row}).outputs)
        xv = (rng.standard_normal(shape) * 3).astype(np.float32)
        if xv.size > 2:
            xv.reshape(-1)[1] = 0.0
        for got, want in zip(_run(g, xv, target=target), slimc.interpret(g, xv)):
            np.testing.assert_array_equal(got, want)
    g = Graph("zeros")  # an all-zero row: scale 1, not a division by zero
    x = g.add_input("x", TensorType(dtypes.f32, (2, 8)))
    g.outputs = list(add_op(g, "dynamic_quantize", [x], {"per_row": per_row}).outputs)
    z = np.zeros((2, 8), np.float32)
    for got, want in zip(_run(g, z, target=target), slimc.interpret(g, z)):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("qdt", [np.uint8, np.int8])
def test_quantize_dequantize_exact(target, qdt):
    rng = np.random.default_rng(7)
    g = Graph("qdq")
    x = g.add_input("x", TensorType(dtypes.f32, (3, 37)))
    s = g.add_constant("s", (rng.random(37) * 0.1 + 0.01).astype(np.float32))
    z = g.add_constant("z", _ints(rng, qdt, (3, 1)))
    q = add_op(g, "quantize", [x, s, z]).outputs[0]
    d = add_op(g, "dequantize", [q, g.add_constant("s2", np.float32(0.05)), z]).outputs[0]
    g.outputs = [q, d]
    xv = (rng.standard_normal((3, 37)) * 5).astype(np.float32)
    xv[0, :4] = [np.nan, 1e30, -np.inf, 0.5 * 0.05]  # NaN, saturation, a tie
    for got, want in zip(_run(g, xv, target=target), slimc.interpret(g, xv)):
        np.testing.assert_array_equal(got, want)


def test_paths_by_target():
    assert gemm_int8.int8_path(CpuTarget.from_name("x86-64-v3")).name == "avx2"
    assert gemm_int8.int8_path(CpuTarget.from_name("x86-64-v4")).name == "avx512bw"
    host = CpuTarget.host()
    if "avx512vnni" in host.feature_set:
        assert gemm_int8.int8_path(host).name == "vnni"


CONV_CASES = [  # N, C, H, W, M, k, stride, pad, dilation, group, x dtype, w dtype, x_zp, w_zp
    (1, 3, 9, 9, 8, 3, 1, 1, 1, 1, np.uint8, np.int8, None, None),
    (2, 16, 7, 6, 32, 3, 2, 1, 1, 1, np.uint8, np.int8, 7, None),
    (1, 16, 8, 8, 24, 1, 1, 0, 1, 1, np.uint8, np.int8, 200, None),
    (1, 8, 11, 10, 70, 3, 1, 2, 2, 1, np.int8, np.int8, -5, None),
    (1, 16, 5, 5, 16, 3, 1, 1, 1, 2, np.uint8, np.int8, 3, None),
    (1, 8, 6, 6, 8, 3, 1, 1, 1, 8, np.uint8, np.int8, 3, None),      # depthwise, narrow
    (1, 8, 6, 6, 8, 1, 1, 0, 1, 2, np.uint8, np.int8, 3, None),      # too few per group: loops
    (1, 6, 6, 6, 8, 3, 1, 0, 1, 1, np.uint8, np.uint8, 1, 128),      # u8 weights, zp 128
    (1, 6, 6, 6, 8, 3, 1, 0, 1, 1, np.uint8, np.uint8, 1, 100),      # other zp: loops
    (1, 16, 20, 37, 24, 3, 2, 1, 1, 1, np.uint8, np.int8, 9, None),  # stride 2, wide rows
    (2, 8, 17, 33, 20, 3, 1, 2, 2, 1, np.int8, np.int8, -5, None),   # i8 input, vector fill
    (1, 32, 19, 18, 32, 5, 1, 2, 1, 4, np.uint8, np.int8, 1, None),
    (1, 3, 32, 32, 16, 7, 2, 3, 1, 1, np.uint8, np.int8, 128, None),
    (1, 32, 20, 37, 32, 3, 1, 1, 1, 32, np.uint8, np.int8, 9, None),  # depthwise kernel
    (2, 16, 21, 19, 16, 3, 2, 1, 1, 16, np.uint8, np.int8, 200, None),
    (1, 8, 17, 33, 16, 5, 1, 2, 1, 8, np.int8, np.int8, -3, None),    # channel multiplier 2
    (1, 8, 12, 12, 8, 3, 2, 1, 2, 8, np.uint8, np.int8, 0, None),
    (1, 16, 9, 70, 16, 3, 2, 1, 1, 16, np.uint8, np.int8, 5, None),  # dw stride 2, vector copy
    (1, 8, 9, 65, 24, 1, 2, 0, 1, 1, np.int8, np.int8, 5, None),     # 1x1 stride 2
    (1, 128, 7, 7, 96, 3, 1, 1, 1, 1, np.uint8, np.int8, 9, None),   # narrow rows: pixel rows
    (2, 128, 9, 9, 70, 3, 2, 1, 1, 1, np.int8, np.int8, 3, None),    # pixel rows; partial panel
    (1, 64, 7, 7, 96, 3, 1, 1, 1, 1, np.uint8, np.int8, 9, None),
    (1, 64, 40, 29, 48, 3, 1, 1, 1, 1, np.uint8, np.int8, 9, None),  # pixel rows, wide rows:
    (1, 32, 30, 25, 40, 3, 1, 1, 1, 1, np.int8, np.int8, -9, None),  # staged blocks and tails
    (1, 16, 12, 13, 64, 3, 1, 1, 1, 1, np.uint8, np.int8, 9, None),  # K < 256: pixel runs
    (1, 32, 3, 3, 24, 3, 1, 0, 1, 2, np.uint8, np.int8, 7, None),    # 1x1 output
]


@pytest.mark.parametrize("target", TARGETS)
def test_conv_integer_exact(target):
    rng = np.random.default_rng(8)
    for N, C, H, W, M, k, s, p, d, grp, xdt, wdt, zx, zw in CONV_CASES:
        g = Graph("conv")
        x = g.add_input("x", TensorType(dtypes.from_numpy(np.dtype(xdt)), (N, C, H, W)))
        ins = [x, g.add_constant("w", _ints(rng, wdt, (M, C // grp, k, k)))]
        if zx is not None or zw is not None:
            ins.append(g.add_constant("zx", np.asarray(zx or 0, xdt)))
        if zw is not None:
            ins.append(g.add_constant("zw", np.asarray(zw, wdt)))
        attrs = dict(strides=[s, s], pads=[p] * 4, dilations=[d, d], group=grp)
        g.outputs = [add_op(g, "conv_integer", ins, attrs).outputs[0]]
        xv = _ints(rng, xdt, (N, C, H, W))
        np.testing.assert_array_equal(_run(g, xv, target=target)[0], slimc.interpret(g, xv)[0],
                                      err_msg=f"{target} conv {N, C, H, W, M, k, s, p, d, grp}")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("k,hw", [(1, (7, 7)), (1, (20, 20)), (1, (20, 32)), (3, (23, 21)),
                                  (3, (23, 32))],
                         ids=["1x1-one-row", "1x1-regrid", "1x1-rows", "pixel-rows", "runs"])
def test_conv_integer_epilogue_reads_each_pixel(target, k, hw):
    """conv_integer -> dequantize -> + bias -> + a tensor of the output's shape: the
    epilogue reads the residual at each result's own (channel, row, column), whichever way
    the tiles ran (a 1x1 conv's plane taken as one row, or as 5 rows of 80 pixels for 20x20;
    pixels as tile rows; runs along output rows)."""
    rng = np.random.default_rng(10)
    c, m = 96, 40
    g = Graph("qconv_residual")
    x = g.add_input("x", TensorType(dtypes.u8, (1, c) + hw))
    r = g.add_input("r", TensorType(dtypes.f32, (1, m) + hw))
    w = g.add_constant("w", _ints(rng, np.int8, (m, c, k, k)))
    acc = add_op(g, "conv_integer", [x, w, g.add_constant("zx", np.uint8(7))],
                 dict(pads=[k // 2] * 4)).outputs[0]
    sc = g.add_constant("s", (rng.random((m, 1, 1)) * 1e-3).astype(np.float32))
    y = add_op(g, "dequantize", [acc, sc]).outputs[0]
    y = add_op(g, "add", [y, g.add_constant("b", rng.standard_normal((m, 1, 1))
                                            .astype(np.float32))]).outputs[0]
    g.outputs = [add_op(g, "add", [y, r]).outputs[0]]
    xv = _ints(rng, np.uint8, (1, c) + hw)
    rv = (rng.standard_normal((1, m) + hw) * 100).astype(np.float32)
    want = slimc.interpret(g, xv, rv)[0]
    for threads in (1, 3):
        mod = slimc.compile(g, target=target, threads=threads)
        assert len(mod.kernels) == 1
        np.testing.assert_allclose(mod(xv, rv)[0], want, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("c,hw", [(32, (23, 32)), (32, (23, 21)), (128, (7, 7))],
                         ids=["pixel-runs", "pixel-rows-wide", "pixel-rows-narrow"])
def test_conv_integer_fused_requantization_and_threads(target, c, hw):
    """conv_integer -> dequantize (per channel) -> + bias -> relu -> quantize, one kernel,
    at 1, 2 and 3 threads; saturating extremes in input and weights."""
    rng = np.random.default_rng(9)
    g = Graph("qconv")
    x = g.add_input("x", TensorType(dtypes.u8, (1, c) + hw))
    w = g.add_constant("w", _ints(rng, np.int8, (40, c, 3, 3), extreme=True))
    acc = add_op(g, "conv_integer", [x, w, g.add_constant("zx", np.uint8(0))],
                 dict(pads=[1, 1, 1, 1])).outputs[0]
    sc = g.add_constant("s", (rng.random((40, 1, 1)) * 1e-4 + 1e-5).astype(np.float32))
    y = add_op(g, "dequantize", [acc, sc]).outputs[0]
    bias = rng.standard_normal((40, 1, 1)).astype(np.float32)
    y = add_op(g, "add", [y, g.add_constant("b", bias)]).outputs[0]
    y = add_op(g, "relu", [y]).outputs[0]
    g.outputs = [add_op(g, "quantize", [y, g.add_constant("sy", np.float32(0.05)),
                                        g.add_constant("zy", np.uint8(0))]).outputs[0]]
    xv = _ints(rng, np.uint8, (1, c) + hw, extreme=True)
    ref = slimc.interpret(g, xv)[0]
    for threads in (1, 2, 3):
        mod = slimc.compile(g, target=target, threads=threads)
        assert len(mod.kernels) == 1
        out = mod(xv)
        out = out[0] if isinstance(out, (list, tuple)) else out
        assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
