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
