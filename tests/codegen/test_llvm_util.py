"""Shared LLVM helpers: declarations that several generators use must agree in one module."""

import ctypes

import numpy as np
from llvmlite import ir

from slimc.codegen.cpu import gemm, llvm_util as U
from slimc.codegen.cpu.target import CpuTarget, jit_compile


def test_masked_intrinsics_from_every_generator_share_one_module():
    # Regression: gemm.py and llvm_util declared llvm.masked.load.v8f32.p0 with different
    # pointer types, and a kernel using both failed with a TypeError.
    m = ir.Module(name="masked")
    fpt = ir.PointerType(U.F32)
    fn = ir.Function(m, ir.FunctionType(U.VOID, [fpt, fpt]), "copy3")
    src, dst = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    mask = ir.Constant(ir.VectorType(U.I1, 8), [1, 1, 1, 0, 0, 0, 0, 0])
    a = U.masked_load(b, src, U.i64(0), mask, "a")
    c = gemm._masked_load(b, m, src, mask, 8, "c")
    gemm._masked_store(b, m, b.fadd(a, c, name="twice"), dst, mask, 8)
    b.ret_void()
    jit = jit_compile(m, CpuTarget.host())
    x = np.arange(1, 9, dtype=np.float32)
    y = np.full(8, -1.0, np.float32)
    f = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p)(jit.address("copy3"))
    f(x.ctypes.data, y.ctypes.data)
    np.testing.assert_array_equal(y, [2, 4, 6, -1, -1, -1, -1, -1])
