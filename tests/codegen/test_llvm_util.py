"""Shared LLVM helpers: declarations that several generators use must agree in one module."""

import ctypes

import numpy as np
from llvmlite import ir

from slimc.codegen.cpu import llvm_util as U
from slimc.codegen.cpu.target import CpuTarget, jit_compile


def test_masked_intrinsics_from_every_generator_share_one_module():
    # Regression: gemm.py, gen_nn.py and llvm_util each declared llvm.masked.load.v8f32.p0,
    # with different pointer types, and a kernel using two of them failed with a TypeError.
    # Typed (float*) and vector-typed addresses now meet one declaration.
    m = ir.Module(name="masked")
    fpt = ir.PointerType(U.F32)
    fn = ir.Function(m, ir.FunctionType(U.VOID, [fpt, fpt]), "copy3")
    src, dst = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    mask = ir.Constant(ir.VectorType(U.I1, 8), [1, 1, 1, 0, 0, 0, 0, 0])
    a = U.masked_load(b, src, U.i64(0), mask, "a")
    vt = ir.VectorType(U.F32, 8)
    c = U.masked_load_vector(b, b.bitcast(src, ir.PointerType(vt)), vt, mask, "c")
    U.masked_store_vector(b, b.fadd(a, c, name="twice"), dst, mask)
    b.ret_void()
    jit = jit_compile(m, CpuTarget.host())
    x = np.arange(1, 9, dtype=np.float32)
    y = np.full(8, -1.0, np.float32)
    f = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(jit.address("copy3"))
    f(x.ctypes.data, y.ctypes.data)
    np.testing.assert_array_equal(y, [2, 4, 6, -1, -1, -1, -1, -1])


def test_all_finite_finds_every_nan_and_infinity():
    """`all_finite` over n floats: whole vectors, the re-read tail, and runs shorter than a
    vector, with a NaN or an infinity at each position in turn (denormals, zeros, and the
    largest finite floats are finite); numpy's isfinite is the oracle."""
    m = ir.Module(name="finite")
    fpt = ir.PointerType(U.F32)
    sizes = [1, 5, 8, 16, 37]
    for n in sizes:
        fn = ir.Function(m, ir.FunctionType(U.I32, [fpt]), f"finite{n}")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        b.ret(b.zext(U.all_finite(b, fn.args[0], n, 8), U.I32))
    jit = jit_compile(m, CpuTarget.host())
    big = np.finfo(np.float32)
    for n in sizes:
        f = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p)(jit.address(f"finite{n}"))
        base = np.resize(np.array([big.max, -big.max, big.smallest_subnormal, -0.0, 1.5],
                                  np.float32), n)
        assert f(base.ctypes.data) == 1
        for i in range(n):
            for bad in (np.nan, np.inf, -np.inf):
                x = base.copy()
                x[i] = bad
                assert f(x.ctypes.data) == int(np.isfinite(x).all()) == 0, (n, i, bad)
