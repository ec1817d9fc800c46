"""Correctness of the generated fp32 GEMM kernels (codegen/cpu/gemm.py) against numpy.

Each (N, K) pair needs a compile (~0.1-0.2 s at opt level 0, which is how GEMM modules run as
fast: the IR already holds explicit vectors); M is a run-time argument, so every compile is
checked at many M. Tiny block sizes (kc/mc/nc of a few tiles) exercise every cache-block
boundary cheaply; the AVX-512 generator configuration (16-float vectors, 6x64 tile) runs here
too, since LLVM legalizes <16 x float> on AVX2 machines.
"""

from __future__ import annotations

import dataclasses
import threading

import numpy as np
import pytest
from hypothesis import given, settings, HealthCheck, strategies as st
from llvmlite import ir

from slimc.codegen.cpu.gemm import emit_gemm
from slimc.codegen.cpu.gemm_epilogue import bias_epilogue, relu
from slimc.codegen.cpu.gemm_jit import CompiledGemm, compile_gemm
from slimc.codegen.cpu.gemm_pack import GemmConfig, gemm_config, pack_b, packed_b_size
from slimc.ir.buffers import aligned_zeros
from slimc.codegen.cpu.target import CpuTarget, emit_assembly, emit_object, jit_compile

HOST = CpuTarget.host()
CFG = gemm_config(HOST)
# Small blocks so that K, M and N block boundaries are crossed at small sizes.
TINY = dataclasses.replace(CFG, kc=16, mc=2 * CFG.mr, nc=2 * CFG.nr)
# The AVX-512 configuration (zmm-sized vectors, 6x64 tile), runnable here through legalization.
WIDE = GemmConfig(vw=16, mr=6, nv=4, kc=256, mc=192, nc=2048, nregs=32)

EDGE_M = [1, 2, 5, 6, 7, 13, 15, 17, 63, 65]
RNG = np.random.default_rng(1234)


def rand(*shape):
    return RNG.standard_normal(shape, dtype=np.float32)


def check(C, A, B, bias=None, act=None):
    ref = A.astype(np.float64) @ B.astype(np.float64)
    bound = np.abs(A).astype(np.float64) @ np.abs(B).astype(np.float64)
    if bias is not None:
        ref = ref + bias
        bound = bound + np.abs(bias)
    if act == "relu":
        ref = np.maximum(ref, 0)
    K = A.shape[1]
    tol = (K + 2) * 1.2e-7 * bound + 1e-30
    err = np.abs(C.astype(np.float64) - ref)
    assert C.shape == ref.shape
    bad = ~(err <= tol)
    assert not bad.any(), (f"{bad.sum()} of {bad.size} wrong; first at "
                           f"{np.argwhere(bad)[0]}: got {C[tuple(np.argwhere(bad)[0])]}, "
                           f"want {ref[tuple(np.argwhere(bad)[0])]}")


def run_all_m(g: CompiledGemm, N, K, Ms=EDGE_M):
    B = rand(K, N)
    Bp = g.kernel.pack(B)
    for M in Ms:
        A = rand(M, K)
        C = np.full((M, N), np.nan, np.float32)
        g(A, Bp, C)
        check(C, A, B)


# ---------------------------------------------------------------------------------------------
# Edge shapes
# ---------------------------------------------------------------------------------------------

EDGE_NK = [(n, k) for n in (1, 7, 15, 17, 63, 65, 97) for k in (1, 17, 65)] + \
          [(16, 257), (24, 521), (CFG.nr, 3), (2 * CFG.nr + 1, 300), (131, 131)]


@pytest.mark.parametrize("N,K", EDGE_NK)
def test_edge_shapes(N, K):
    run_all_m(compile_gemm(N, K, opt_level=0), N, K)


@pytest.mark.parametrize("N,K", [(1, 1), (7, 17), (17, 40), (65, 33), (100, 100)])
def test_tiny_blocks(N, K):
    # kc=16, mc=2 tiles, nc=2 panels: every loop of the blocked driver runs several times
    run_all_m(compile_gemm(N, K, opt_level=0, cfg=TINY), N, K, Ms=[1, 5, 6, 7, 12, 13, 25, 40])


@pytest.mark.parametrize("N,K", [(1, 1), (15, 17), (65, 63), (100, 300), (70, 10)])
def test_avx512_configuration(N, K):
    run_all_m(compile_gemm(N, K, opt_level=0, cfg=WIDE), N, K, Ms=[1, 3, 6, 7, 13, 200])
    run_all_m(compile_gemm(N, K, opt_level=0,
                           cfg=dataclasses.replace(WIDE, kc=16, mc=12, nc=64)), N, K,
              Ms=[1, 7, 13, 25])


def test_large_blocked_o3():
    # more than one block in every dimension with the real block sizes, optimized at O3
    M, N, K = 300, 2 * CFG.nc + 3 * CFG.nr + 5, 2 * CFG.kc + 13
    g = compile_gemm(N, K, opt_level=3)
    A, B = rand(M, K), rand(K, N)
    C = g(A, g.kernel.pack(B))
    check(C, A, B)


def test_small_m_path_o3():
    # the batch-1 path (rows < MR: kc = K, chained accumulators) at transformer sizes
    g = compile_gemm(768, 768, opt_level=3)
    run_all_m(g, 768, 768, Ms=[1, 2, 3, 4, 5, 6, 16])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(M=st.integers(1, 200), N=st.integers(1, 200), K=st.integers(1, 400),
       tiny=st.booleans())
def test_hypothesis_shapes(M, N, K, tiny):
    g = compile_gemm(N, K, opt_level=0, cfg=TINY if tiny else None)
    A, B = rand(M, K), rand(K, N)
    C = g(A, g.kernel.pack(B))
    check(C, A, B)


# ---------------------------------------------------------------------------------------------
# Strides, row ranges, threads, accumulate
# ---------------------------------------------------------------------------------------------


def test_leading_dimensions_and_views():
    N, K, M = 37, 45, 23
    g = compile_gemm(N, K, opt_level=0)
    Abig, B = rand(M + 3, K + 11), rand(K, N)
    A = Abig[2:2 + M, 5:5 + K]                      # lda = K + 11
    Cbig = np.full((M, N + 9), 7.0, np.float32)
    C = Cbig[:, 4:4 + N]                            # ldc = N + 9
    g(A, g.kernel.pack(B), C)
    check(C, A, B)
    assert (Cbig[:, :4] == 7).all() and (Cbig[:, 4 + N:] == 7).all()


@pytest.mark.parametrize("cfg", [None, TINY], ids=["default", "tiny"])
def test_row_ranges_touch_only_their_rows(cfg):
    N, K, M = 50, 70, 40
    g = compile_gemm(N, K, opt_level=0, cfg=cfg)
    A, B = rand(M, K), rand(K, N)
    Bp = g.kernel.pack(B)
    for m0, m1 in [(0, 1), (3, 4), (5, 17), (13, 40), (7, 7), (9, 3)]:
        C = np.full((M, N), -3.0, np.float32)
        g(A, Bp, C, m0=m0, m1=m1)
        if m1 > m0:
            check(C[m0:m1], A[m0:m1], B)
        mask = np.ones(M, bool)
        mask[m0:max(m0, m1)] = False
        assert (C[mask] == -3.0).all()


def test_two_threads_split_rows():
    N, K, M = 300, 256, 500
    g = compile_gemm(N, K, opt_level=0)
    A, B = rand(M, K), rand(K, N)
    Bp = g.kernel.pack(B)
    C = np.empty((M, N), np.float32)
    half = M // 2
    t = threading.Thread(target=g, args=(A, Bp, C), kwargs=dict(m0=half, m1=M))
    t.start()
    g(A, Bp, C, m0=0, m1=half)
    t.join()
    check(C, A, B)


def test_accumulate():
    N, K, M = 33, 300, 19
    g = compile_gemm(N, K, opt_level=0, accumulate=True, cfg=TINY)
    A, B = rand(M, K), rand(K, N)
    C0 = rand(M, N)
    C = C0.copy()
    g(A, g.kernel.pack(B), C)
    ref = C0.astype(np.float64) + A.astype(np.float64) @ B
    np.testing.assert_allclose(C, ref, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Epilogue
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("N,K,cfg", [(1, 1, None), (23, 40, None), (64, 300, None),
                                     (37, 50, TINY), (70, 20, WIDE)])
def test_bias_relu_epilogue(N, K, cfg):
    g = compile_gemm(N, K, opt_level=0, cfg=cfg, epilogue=bias_epilogue("bias", relu),
                     extra_args=[("bias", ir.PointerType())])
    B = rand(K, N)
    Bp = g.kernel.pack(B)
    bias = rand(N)
    for M in (1, 5, 6, 13, 40):
        A = rand(M, K)
        C = np.full((M, N), np.nan, np.float32)
        g(A, Bp, C, bias)
        check(C, A, B, bias=bias, act="relu")


def test_relu_propagates_nan_and_custom_epilogue_sees_positions():
    N, K, M = 21, 9, 8
    seen = []

    def epi(ctx, v):
        # value = acc + 1000 * row + col (per lane), through the ctx helpers
        seen.append(ctx.nlanes)
        b = ctx.builder
        lane = ir.Constant(ir.VectorType(ir.FloatType(), ctx.vw), [float(i) for i in range(ctx.vw)])
        rc = b.add(b.mul(ctx.row, ir.Constant(ir.IntType(64), 1000)), ctx.col)
        pos = b.fadd(ctx.splat(b.sitofp(rc, ir.FloatType())), lane)
        return relu(ctx, b.fadd(v, pos))

    g = compile_gemm(N, K, opt_level=0, epilogue=epi)
    A, B = rand(M, K), rand(K, N)
    A[3, 2] = np.nan
    C = g(A, g.kernel.pack(B))
    ref = np.maximum(A.astype(np.float64) @ B + 1000 * np.arange(M)[:, None] + np.arange(N), 0)
    assert np.isnan(C[3]).all()
    ok = np.arange(M) != 3
    np.testing.assert_allclose(C[ok], ref[ok], rtol=1e-5, atol=1e-3)
    assert N % CFG.vw in seen  # the partial vector reached the callback with its lane count


# ---------------------------------------------------------------------------------------------
# Runtime B (activations): LLVM packing routine and gemm_rt
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("trans_b", [False, True])
@pytest.mark.parametrize("N,K", [(1, 1), (7, 13), (16, 64), (64, 128), (65, 33), (129, 300)])
def test_runtime_b(N, K, trans_b):
    g = compile_gemm(N, K, opt_level=0, runtime_b=True, trans_b=trans_b)
    B = rand(K, N)
    Bsrc = np.ascontiguousarray(B.T) if trans_b else B
    # the LLVM packing routine gives the same layout as the numpy one
    np.testing.assert_array_equal(g.pack_runtime(Bsrc), pack_b(Bsrc, CFG, trans_b=trans_b))
    ws = aligned_zeros(g.kernel.packed_size, np.float32)
    for M in (1, 2, 5, 6, 7, 30):  # < MR rows read B in place (trans_b=False)
        A = rand(M, K)
        check(g.run_rt(A, Bsrc, ws=ws), A, B)


def test_runtime_b_strided_sources_and_epilogue_o3():
    N, K = 45, 96
    # attention-like: Q @ K^T with K^T a strided view
    g = compile_gemm(N, K, opt_level=3, runtime_b=True, trans_b=True)
    Kmat = rand(N, K + 8)[:, 3:3 + K]
    for M in (3, 12):
        A = rand(M, K)
        check(g.run_rt(A, Kmat), A, Kmat.T)
    # plain B as a strided view, with a bias+relu epilogue, on both runtime paths
    g = compile_gemm(N, K, opt_level=3, runtime_b=True, epilogue=bias_epilogue("bias", relu),
                     extra_args=[("bias", ir.PointerType())])
    B = rand(K + 2, N + 7)[1:1 + K, 5:5 + N]
    bias = rand(N)
    for M in (1, 4, 6, 19):
        A = rand(M, K + 3)[:, 2:2 + K]
        C = np.full((M, N), np.nan, np.float32)
        g.run_rt(A, B, C, bias)
        check(C, A, B, bias=bias, act="relu")


def test_pack_b_layout():
    K, N = 5, CFG.nr + 3
    B = np.arange(K * N, dtype=np.float32).reshape(K, N)
    p = pack_b(B, CFG)
    assert p.size == packed_b_size(K, N, CFG) and p.ctypes.data % 64 == 0
    v = p.reshape(-1, K, CFG.nr)
    np.testing.assert_array_equal(v[0], B[:, :CFG.nr])
    np.testing.assert_array_equal(v[1, :, :3], B[:, CFG.nr:])
    assert (v[1, :, 3:] == 0).all()


# ---------------------------------------------------------------------------------------------
# Several kernels in one module; other targets' code generation
# ---------------------------------------------------------------------------------------------


def test_two_kernels_one_module():
    mod = HOST.new_ir_module("two")
    k1 = emit_gemm(mod, "a", 20, 30, HOST)
    k2 = emit_gemm(mod, "b", 10, 20, HOST, epilogue=bias_epilogue("bias"),
                   extra_args=[("bias", ir.PointerType())])
    jit = jit_compile(mod, HOST, opt_level=0)
    g1, g2 = CompiledGemm(k1, jit), CompiledGemm(k2, jit)
    A, B1, B2, bias = rand(9, 30), rand(30, 20), rand(20, 10), rand(10)
    H = g1(A, k1.pack(B1))
    check(H, A, B1)
    check(g2(H, k2.pack(B2), None, bias), H, B2, bias=bias)


def test_generated_ir_is_readable():
    mod = HOST.new_ir_module("names")
    emit_gemm(mod, "fc1", 40, 50, HOST, epilogue=bias_epilogue("bias", relu),
              extra_args=[("bias", ir.PointerType())], runtime_b=True)
    text = str(mod)
    for needle in ("@\"gemm_fc1\"", "@\"pack_b_fc1\"", "@\"gemm_rt_fc1\"", "%\"acc.c0.r0.v0",
                   "%\"relu\"", "%\"bias\"", "ukr_6x"):
        assert needle in text, needle


@pytest.mark.parametrize("name,reg", [("x86-64-v4", "zmm"), ("x86-64-v3", "ymm"),
                                      ("aarch64", "fmla")])
def test_other_targets_codegen(name, reg):
    t = CpuTarget.from_name(name)
    mod = t.new_ir_module("x")
    emit_gemm(mod, "k", 100, 70, t, epilogue=bias_epilogue("bias", relu),
              extra_args=[("bias", ir.PointerType())], runtime_b=True)
    asm = emit_assembly(mod, t, opt_level=0)
    assert reg in asm
    assert len(emit_object(mod, t, opt_level=0)) > 1000


def test_sse_only_target_without_fma():
    # 4-float vectors, 6x8 tile, separate mul and add: runs on any x86-64 host
    t = CpuTarget.from_parts("x86", HOST.triple, "x86-64", "+64bit,+sse,+sse2,+cx8,+cmov",
                             is_host=HOST.name == "x86")
    if not t.is_host:
        pytest.skip("not an x86-64 host")
    assert (t.vector_width, t.has_fma, gemm_config(t).nr) == (4, False, 8)
    g = compile_gemm(19, 23, t, opt_level=0, epilogue=bias_epilogue("bias", relu),
                     extra_args=[("bias", ir.PointerType())])
    B, bias = rand(23, 19), rand(19)
    for M in (1, 4, 6, 15):
        A = rand(M, 23)
        check(g(A, g.kernel.pack(B), None, bias), A, B, bias=bias, act="relu")


def test_target_descriptions():
    h = CpuTarget.host()
    assert h.is_host and h.vector_width in (4, 8, 16)
    assert h.vector_width == (16 if h.has_avx512f else 8 if h.has_avx2 else 4)
    v4 = CpuTarget.from_name("x86-64-v4")
    assert (v4.vector_width, v4.num_vector_regs) == (16, 32)
    v3 = CpuTarget.from_name("x86-64-v3")
    assert (v3.vector_width, v3.num_vector_regs, v3.has_fma) == (8, 16, True)
    a = CpuTarget.from_name("aarch64")
    assert a.triple.startswith("aarch64") and a.vector_width == 4 and not a.is_host
    assert CpuTarget.from_name("x86") is h or h.name != "x86"
    assert gemm_config(v4).nr == 64 and gemm_config(v3).nr == 16
    with pytest.raises(ValueError):
        CpuTarget.from_name("sparc")


# ---------------------------------------------------------------------------------------------
# Every output column is summed in the same order
# ---------------------------------------------------------------------------------------------
# A B whose columns are all equal must give a C whose columns are bitwise equal, whatever a
# column's place: a full register tile, the narrower last panel, a masked vector, another
# thread's block of columns. (The small-row micro-kernels once chose their k-split by the
# panel's vector count, so on AVX-512 columns 960-999 of a 1000-wide batch-1 layer were summed
# in another order; a softmax over 1,000 equal huge logits then gave 1/960 or 0, not 1/1000.)

def _equal_columns(K, N, rng):
    col = rng.standard_normal((K, 1), dtype=np.float32) * 3
    return np.ascontiguousarray(np.repeat(col, N, axis=1))


def _assert_columns_identical(C):
    same = C == C[:, :1]
    assert same.all(), (f"{(~same).sum()} of {C.size} outputs differ from their row's column 0; "
                        f"first at column {np.argwhere(~same)[0][1]}")


@pytest.mark.parametrize("cfg", [CFG, WIDE], ids=["host", "avx512"])
@pytest.mark.parametrize("N", [17, 1000, 1001])
def test_equal_columns_are_bitwise_equal(cfg, N):
    K = 300
    rng = np.random.default_rng(N)
    g = compile_gemm(N, K, opt_level=0, cfg=cfg)
    B = _equal_columns(K, N, rng)
    Bp = g.kernel.pack(B)
    for M in (1, 2, 3, 5, 6, 7, 13):
        A = rng.standard_normal((M, K), dtype=np.float32)
        C = np.full((M, N), np.nan, np.float32)
        g(A, Bp, C)
        check(C, A, B)
        _assert_columns_identical(C)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("N", [17, 1000, 1001])
def test_compiled_dense_layer_equal_columns(N, threads):
    """A batch-1 classifier head through slimc.compile (columns split over threads) and a
    batch-7 one (rows split), compared bitwise across columns and with numpy within rounding."""
    from onnx import helper

    from ..oracle import make_model

    import slimc

    K = 512
    rng = np.random.default_rng(N + threads)
    w = _equal_columns(K, N, rng)
    b = np.full(N, 0.25, np.float32)
    for M in (1, 7):
        x = rng.standard_normal((M, K), dtype=np.float32)
        model = make_model([helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")],
                           {"x": x}, ["y"], {"w": w, "b": b})
        (y,) = slimc.compile(model, threads=threads)(x)
        _assert_columns_identical(y)
        check(y - b, x, w)
