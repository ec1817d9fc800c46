"""JIT one GEMM of gemm.py and call it with numpy arrays: for tests and benchmarks."""

from __future__ import annotations

import ctypes

import numpy as np
from llvmlite import ir

from slimc.ir.buffers import aligned_zeros

from .gemm import GemmKernel, emit_gemm
from .target import CpuTarget, JitModule, jit_compile


def _ptr(a: np.ndarray) -> int:
    return a.ctypes.data


class CompiledGemm:
    """A JIT-compiled GEMM callable on numpy arrays (for tests and benchmarks)."""

    def __init__(self, kernel: GemmKernel, jit: JitModule):
        self.kernel, self.jit = kernel, jit
        ex = [ctypes.c_void_p if isinstance(t, ir.PointerType) else
              ctypes.c_float if isinstance(t, ir.FloatType) else ctypes.c_int64
              for _, t in kernel.extra_args]
        P, L = ctypes.c_void_p, ctypes.c_int64
        self._gemm = jit.cfunc(kernel.gemm_fn, None, P, L, P, P, L, L, L, *ex)
        self._pack = jit.cfunc(kernel.pack_fn, None, P, L, P) if kernel.pack_fn else None
        self._rt = (jit.cfunc(kernel.rt_fn, None, P, L, P, L, P, L, L, L, P, *ex)
                    if kernel.rt_fn else None)
        self.gemm_addr = jit.address(kernel.gemm_fn)

    def _check(self, A, C, M):
        k = self.kernel
        assert A.dtype == np.float32 and C.dtype == np.float32
        assert A.shape[1] == k.K and A.strides[1] == 4 and C.strides[1] == 4
        assert C.shape == (M, k.N)

    def __call__(self, A: np.ndarray, Bp: np.ndarray, C: np.ndarray | None = None, *extra,
                 m0: int = 0, m1: int | None = None) -> np.ndarray:
        """C[m0:m1] (+)= A[m0:m1] @ B with Bp = kernel.pack(B)."""
        M = A.shape[0]
        if C is None:
            C = np.empty((M, self.kernel.N), np.float32)
        self._check(A, C, M)
        assert Bp.size >= self.kernel.packed_size
        m1 = M if m1 is None else m1
        self._gemm(_ptr(A), A.strides[0] // 4, _ptr(Bp), _ptr(C), C.strides[0] // 4, m0, m1,
                   *[_ptr(e) if isinstance(e, np.ndarray) else e for e in extra])
        return C

    def pack_runtime(self, B: np.ndarray, Bp: np.ndarray | None = None) -> np.ndarray:
        k = self.kernel
        if Bp is None:
            Bp = aligned_zeros(k.packed_size, np.float32)
        assert B.dtype == np.float32 and B.strides[1] == 4
        assert B.shape == ((k.N, k.K) if k.trans_b else (k.K, k.N))
        self._pack(_ptr(B), B.strides[0] // 4, _ptr(Bp))
        return Bp

    def run_rt(self, A, B, C=None, *extra, ws=None, m0=0, m1=None):
        k = self.kernel
        M = A.shape[0]
        if C is None:
            C = np.empty((M, k.N), np.float32)
        self._check(A, C, M)
        assert B.dtype == np.float32 and B.strides[1] == 4
        assert B.shape == ((k.N, k.K) if k.trans_b else (k.K, k.N))
        if ws is None:
            ws = aligned_zeros(k.packed_size, np.float32)
        m1 = M if m1 is None else m1
        self._rt(_ptr(A), A.strides[0] // 4, _ptr(B), B.strides[0] // 4, _ptr(C),
                 C.strides[0] // 4, m0, m1, _ptr(ws),
                 *[_ptr(e) if isinstance(e, np.ndarray) else e for e in extra])
        return C


def compile_gemm(N: int, K: int, target: CpuTarget | None = None, *, name: str = "k",
                 opt_level: int = 3, **kw) -> CompiledGemm:
    """Emit one GEMM into a fresh module, JIT it, and wrap it for numpy."""
    target = target or CpuTarget.host()
    mod = target.new_ir_module(f"gemm_{name}")
    kern = emit_gemm(mod, name, N, K, target, **kw)
    return CompiledGemm(kern, jit_compile(mod, target, opt_level=opt_level))
