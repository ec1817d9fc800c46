"""The CUDA backend's matmul, gemm and conv kernels (codegen/cuda/gen_gemm.py).

Two checks that need no GPU: the PTX assembles with ptxas for sm_80 and sm_90 with no
register spills (a spill in the tiled GEMM's main loop costs more than the tiling gains),
and the kernels, run by the GPU emulator (runtime/gpu_emulator.py: CUDA's thread semantics,
NaN-filled shared memory, shuffled thread orders), compute what the interpreter does. The
shapes are small (the emulator runs every thread) but chosen to hit every edge: sizes of 1,
sizes just past a tile, tiles with and without bounds checks, each tile shape, batch
broadcasting, 1-D operands, gemm's transposes/alpha/beta/C, every convolution geometry,
other dtypes, and fused epilogues.
"""

import numpy as np
import pytest

import slimc
from slimc.codegen.cuda import gen_gemm
from slimc.codegen.cuda.ptx import ptxas, ptxas_path
from slimc.ir import Graph, TensorType, dtypes, parse

from . import cuda_check
from .cuda_check import TARGET
from .one_node import add_node, build
rng = np.random.default_rng(0)

needs_ptxas = pytest.mark.skipif(ptxas_path() is None,
                                 reason="ptxas not installed (pip install nvidia-cuda-nvcc)")


def rand(*shape, dtype=np.float32):
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-4, 5, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def emulated(g, args, rtol=1e-4, atol=5e-5, seed=0):
    """cuda_check.emulated without ptxas (its own tests assemble every tile shape). (atol: f32
    sums of a few hundred products of N(0, 1) values, rounded in another order than the
    interpreter's float64, are off by about 1e-5 where they cancel to near 0.)"""
    return cuda_check.emulated(g, args, rtol=rtol, atol=atol, seeds=(seed,), assemble=False)


def tiled(mod) -> list:
    """The module's kernels that stage tiles in shared memory (the tiled GEMM)."""
    return [k for k in mod.kernels if k.shared_bytes > 0]


@pytest.fixture
def wave(monkeypatch):
    """Set how many blocks make a wave, which picks the tile shape (1: the largest tiles
    even for small problems, so that the emulator's small shapes run them too)."""
    return lambda n: monkeypatch.setattr(gen_gemm, "WAVE", n)


# ----- tile shapes ---------------------------------------------------------------------------

def test_tile_shape_fills_a_wave_before_growing_tiles():
    ts = gen_gemm._tile_shape
    assert ts(4096, 4096, 1) == (64, 64)
    assert ts(512, 512, 1) == (64, 32)  # 64 blocks of 64x64 would idle half an H100
    assert ts(256, 1024, 1) == (32, 64)
    assert ts(64, 3136, 1) == (32, 32)  # a batch-1 ResNet layer: 196 blocks
    assert ts(7, 4096, 4) == (32, 64)  # few rows: no 64-row tile
    assert ts(1, 1, 1) == (32, 32)


# ----- matmul --------------------------------------------------------------------------------

@pytest.mark.parametrize("M,K,N", [(1, 1, 1), (1, 33, 7), (7, 1, 33), (33, 65, 1), (65, 100, 33),
                                   (100, 7, 65), (64, 32, 64), (128, 16, 65), (33, 17, 100)])
@pytest.mark.parametrize("blocks", [1, 5, 128])
def test_matmul_edges_and_tile_shapes(M, K, N, blocks, wave):
    wave(blocks)
    g, args = build("matmul", [rand(M, K), rand(K, N)])
    mod = emulated(g, args)
    assert len(tiled(mod)) == 1


@pytest.mark.parametrize("a,b", [((2, 3, 7, 33), (3, 33, 5)), ((2, 1, 7, 33), (4, 33, 5)),
                                 ((5, 33), (3, 33, 7)), ((33,), (2, 33, 5)), ((2, 4, 33), (33,)),
                                 ((33,), (33,)), ((3, 1, 7), (1, 7, 40)), ((2, 65, 3), (2, 3, 70))])
def test_batched_and_broadcast_matmul(a, b):
    g, args = build("matmul", [rand(*a), rand(*b)])
    emulated(g, args)


def test_matmul_constant_weights_with_the_largest_tiles(wave):
    wave(1)
    g, args = build("matmul", [rand(3, 70, 40), rand(40, 90)], consts=(1,))
    mod = emulated(g, args, seed=1)
    assert [k.block[0] for k in tiled(mod)] == [256]


# ----- gemm ----------------------------------------------------------------------------------

GEMM_C = [  # (C's shape for M x N = 33 x 5, or None; alpha; beta)
    (None, 1.0, 1.0), ((33, 5), 1.0, 1.0), ((5,), 0.5, 2.0), ((33, 1), -1.5, 1.0),
    ((1,), 1.0, -0.25), ((), 2.0, 3.0), ((33, 5), 1.0, 0.0)]


@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
@pytest.mark.parametrize("c,alpha,beta", GEMM_C)
def test_gemm_attributes(trans_a, trans_b, c, alpha, beta):
    M, K, N = 33, 19, 5
    a = rand(K, M) if trans_a else rand(M, K)
    b = rand(N, K) if trans_b else rand(K, N)
    g, args = build("gemm", [a, b, None if c is None else rand(*c)], trans_a=trans_a,
                    trans_b=trans_b, alpha=alpha, beta=beta)
    emulated(g, args)


def test_gemm_linear_layer_with_constant_weights_and_bias():
    """ONNX's classifier layer: Gemm(x, W[out, in], b) with transB."""
    g, args = build("gemm", [rand(3, 70), rand(100, 70), rand(100)], consts=(1, 2), trans_b=1)
    mod = emulated(g, args)
    assert len(tiled(mod)) == 1


# ----- other dtypes --------------------------------------------------------------------------

@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float16, 2e-2), (np.int32, 0),
                                       (np.int64, 0)])
def test_matmul_other_dtypes_per_element(dtype, tol):
    g, args = build("matmul", [rand(2, 7, 33, dtype=dtype), rand(33, 5, dtype=dtype)])
    mod = emulated(g, args, rtol=tol, atol=tol)
    assert not tiled(mod)


@pytest.mark.parametrize("dtype,tol", [(np.float16, 2e-2), (np.int32, 0), (np.float64, 1e-12)])
def test_gemm_other_dtypes(dtype, tol):
    g, args = build("gemm", [rand(19, 7, dtype=dtype), rand(5, 19, dtype=dtype),
                             rand(7, 5, dtype=dtype)], trans_a=1, trans_b=1, alpha=0.5, beta=2.0)
    emulated(g, args, rtol=tol, atol=tol)


# ----- conv ----------------------------------------------------------------------------------

CONVS = [  # (x, w, bias?, attrs)
    ((2, 3, 9, 9), (8, 3, 3, 3), True, dict(pads=[1, 1, 1, 1])),
    ((1, 4, 11, 10), (6, 4, 3, 3), True, dict(pads=[1, 1, 1, 1], strides=[2, 2])),
    ((1, 3, 12, 12), (5, 3, 3, 3), False, dict(pads=[2, 2, 2, 2], dilations=[2, 2])),
    ((1, 3, 8, 9), (4, 3, 2, 3), True, dict(pads=[0, 1, 2, 0], strides=[1, 2])),
    ((1, 8, 7, 7), (6, 4, 3, 3), True, dict(pads=[1, 1, 1, 1], group=2)),
    ((1, 16, 5, 7), (24, 16, 1, 1), True, {}),
    ((1, 16, 9, 9), (8, 16, 1, 1), False, dict(strides=[2, 2])),
    ((1, 3, 20, 20), (8, 3, 7, 7), True, dict(pads=[3, 3, 3, 3], strides=[2, 2])),
    ((1, 8, 3, 3), (16, 8, 3, 3), True, {}),  # one output pixel
    ((1, 40, 6, 6), (70, 40, 3, 3), True, dict(pads=[1, 1, 1, 1])),  # several K steps
    ((2, 4, 17), (6, 4, 3), True, dict(pads=[1, 1], strides=[2])),  # 1-D
    ((1, 4, 17), (6, 2, 3), False, dict(pads=[2, 0], dilations=[3], group=2)),
    ((1, 1, 12, 12), (16, 1, 5, 5), True, dict(pads=[2, 2, 2, 2])),  # one input channel
]


@pytest.mark.parametrize("xs,ws,bias,attrs", CONVS)
def test_conv_implicit_gemm(xs, ws, bias, attrs):
    g, args = build("conv", [rand(*xs), rand(*ws), rand(ws[0]) if bias else None],
                    consts=(1, 2), **attrs)
    mod = emulated(g, args)
    assert len(tiled(mod)) == 1


def test_conv_runtime_weights_and_the_largest_tiles(wave):
    wave(1)
    g, args = build("conv", [rand(2, 12, 9, 9), rand(70, 12, 3, 3), rand(70)],
                    pads=[1, 1, 1, 1])
    mod = emulated(g, args)
    assert [k.block[0] for k in tiled(mod)] == [256]


DIRECT = [  # convolutions one thread per output element computes
    ((2, 8, 9, 9), (8, 1, 3, 3), True, dict(pads=[1, 1, 1, 1], strides=[2, 2], group=8)),
    ((1, 6, 10, 9), (6, 1, 5, 5), False, dict(pads=[2, 1, 2, 3], dilations=[1, 2], group=6)),
    ((1, 4, 7, 7), (8, 1, 3, 3), True, dict(pads=[1, 1, 1, 1], group=4)),  # channel multiplier
    ((1, 5, 9), (5, 1, 3), True, dict(pads=[1, 1], group=5)),  # 1-D depthwise
    ((1, 3, 5, 6, 7), (4, 3, 3, 3, 3), True, dict(pads=[1, 1, 1, 1, 1, 1])),  # 3-D
    ((1, 4, 5, 5, 6), (4, 2, 2, 3, 3), False, dict(strides=[1, 2, 2], group=2)),
    ((1, 2, 4, 4, 4), (3, 2, 1, 7, 7), False, dict(pads=[0, 3, 3, 0, 3, 3])),  # 49 taps: loops
]


@pytest.mark.parametrize("xs,ws,bias,attrs", DIRECT)
def test_conv_depthwise_and_3d_direct(xs, ws, bias, attrs):
    g, args = build("conv", [rand(*xs), rand(*ws), rand(ws[0]) if bias else None],
                    consts=(1, 2), **attrs)
    mod = emulated(g, args)
    assert not tiled(mod)


@pytest.mark.parametrize("dtype,tol", [(np.float16, 2e-2), (np.float64, 1e-12)])
def test_conv_other_dtypes(dtype, tol):
    g, args = build("conv", [rand(1, 4, 6, 6, dtype=dtype), rand(5, 4, 3, 3, dtype=dtype),
                             rand(5, dtype=dtype)], consts=(1, 2), pads=[1, 1, 1, 1])
    emulated(g, args, rtol=tol, atol=tol)


# ----- fused epilogues -----------------------------------------------------------------------

MATMUL_EPILOGUE = """# slimc-ir v1
graph @mlp(%x: f32[2,7,33], %w: f32[33,40], %b: f32[40], %res: f32[2,7,40]) -> (f32[2,7,40]) {
  %y = matmul(%x, %w) : f32[2,7,40]
  %z = add(%y, %b) : f32[2,7,40]
  %s = add(%z, %res) : f32[2,7,40]
  %r = relu(%s) : f32[2,7,40]
  return %r
}
"""

GEMM_SILU = """# slimc-ir v1
graph @silu(%a: f32[19,33], %b: f32[19,5], %c: f32[5]) -> (f32[33,5]) {
  %y = gemm(%a, %b, %c) {alpha=0.5, beta=2.0, trans_a=1} : f32[33,5]
  %s = sigmoid(%y) : f32[33,5]
  %m = mul(%y, %s) : f32[33,5]
  return %m
}
"""


@pytest.mark.parametrize("text", [MATMUL_EPILOGUE, GEMM_SILU], ids=["bias_residual_relu", "silu"])
def test_gemm_fused_epilogue(text):
    g = parse(text)
    args = [rand(*v.type.shape) for v in g.inputs]
    mod = emulated(g, args)
    assert len(mod.kernels) == 1 and len(tiled(mod)) == 1


def _relu(g, outs):
    return add_node(g, "relu", outs)


def _residual_relu(g, outs):
    res = g.add_input("res", outs[0].type)
    return add_node(g, "relu", add_node(g, "add", [outs[0], res]))


def _relu6(g, outs):
    lo, hi = g.add_constant("lo", np.float32(0)), g.add_constant("hi", np.float32(6))
    return add_node(g, "clip", [outs[0], lo, hi])


@pytest.mark.parametrize("xs,ws,attrs,then", [
    ((1, 5, 8, 8), (12, 5, 3, 3), dict(pads=[1, 1, 1, 1]), _relu),
    ((2, 6, 7, 7), (6, 6, 3, 3), dict(pads=[1, 1, 1, 1], strides=[1, 1]), _residual_relu),
    ((1, 8, 7, 7), (8, 1, 3, 3), dict(pads=[1, 1, 1, 1], group=8), _relu6),  # depthwise
    ((1, 6, 9), (4, 6, 1), {}, _residual_relu),  # 1-D pointwise
])
def test_conv_fused_epilogue(xs, ws, attrs, then):
    x = rand(*xs)
    g, args = build("conv", [x, rand(*ws), rand(ws[0])], consts=(1, 2), then=then, **attrs)
    if len(g.inputs) > 1:
        args.append(rand(*g.inputs[1].type.shape))
    mod = emulated(g, args)
    assert len(mod.kernels) == 1


def test_small_cnn_end_to_end():
    """conv+relu, strided conv+relu, flatten, classifier gemm: kernels feeding kernels."""
    g = Graph("cnn")
    x = g.add_input("x", TensorType(dtypes.f32, (2, 3, 10, 10)))
    w1, b1 = g.add_constant("w1", rand(8, 3, 3, 3)), g.add_constant("b1", rand(8))
    w2, b2 = g.add_constant("w2", rand(16, 8, 3, 3)), g.add_constant("b2", rand(16))
    fw, fb = g.add_constant("fw", rand(10, 16 * 5 * 5)), g.add_constant("fb", rand(10))
    shape = g.add_constant("shape", np.array([2, -1], np.int64))
    h = add_node(g, "relu", add_node(g, "conv", [x, w1, b1], pads=[1, 1, 1, 1]))
    h = add_node(g, "relu", add_node(g, "conv", [h[0], w2, b2], pads=[1, 1, 1, 1],
                                     strides=[2, 2]))
    f = add_node(g, "reshape", [h[0], shape])
    g.outputs = add_node(g, "gemm", [f[0], fw, fb], trans_b=1)
    mod = emulated(g, [rand(2, 3, 10, 10)])
    assert len(tiled(mod)) == 3


# ----- ptxas ---------------------------------------------------------------------------------

def _ptx_models():
    """Models whose kernels cover each kernel shape: tiled GEMM of every tile shape and with
    and without bounds checks, implicit-GEMM convs, direct convs, other dtypes."""
    out = []
    for M, K, N in [(512, 512, 512), (4096, 256, 4096), (65, 100, 33), (7, 1, 33)]:
        out.append(build("matmul", [rand(M, K), rand(K, N)])[0])
    out.append(build("gemm", [rand(64, 48), rand(96, 64), rand(96)], trans_a=1, trans_b=1,
                     alpha=0.5, beta=2.0)[0])
    for xs, ws, attrs in [((1, 64, 56, 56), (64, 64, 3, 3), dict(pads=[1, 1, 1, 1])),
                          ((8, 64, 56, 56), (128, 64, 1, 1), {}),
                          ((1, 3, 224, 224), (64, 3, 7, 7), dict(pads=[3] * 4, strides=[2, 2])),
                          ((1, 32, 112, 112), (32, 1, 3, 3), dict(pads=[1] * 4, group=32)),
                          ((1, 64, 100), (64, 64, 3), dict(pads=[1, 1])),
                          ((1, 4, 8, 8, 8), (8, 4, 3, 3, 3), dict(pads=[1] * 6))]:
        x, w = np.zeros(xs, np.float32), np.zeros(ws, np.float32)
        out.append(build("conv", [x, w, np.zeros(ws[0], np.float32)], consts=(1, 2), **attrs)[0])
    out.append(build("matmul", [rand(7, 33, dtype=np.float16), rand(33, 5, dtype=np.float16)])[0])
    return out


@needs_ptxas
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_ptx_assembles_without_spills(arch):
    seen_tiles = set()
    for g in _ptx_models():
        mod = slimc.compile(g, target=TARGET)
        report = ptxas(mod.ptx, arch)
        assert set(report.kernels) == {k.name for k in mod.kernels}
        assert not report.spills(), report.log
        for k in tiled(mod):
            seen_tiles.add(k.block[0])
            assert report.kernels[k.name]["registers"] <= 128, report.log
    assert seen_tiles == {64, 128, 256}
