"""The GEMM's tile and block sizes per target, and B packed into NR-column panels in numpy
(weights at compile time; gemm.py's generated `pack_b_<name>` does the same at run time)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slimc.ir.buffers import aligned_zeros

from .target import CpuTarget


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GemmConfig:
    """Tile and block sizes. nr = nv * vw columns per register tile / B panel."""

    vw: int        # floats per vector register
    mr: int        # rows of the register tile
    nv: int        # vectors per tile row
    kc: int        # K block (B micro-panel KC x NR in L1)
    mc: int        # M block (A block MC x KC in L2); multiple of mr
    nc: int        # N block (B block KC x NC in L2/L3); multiple of nr
    chains: int = 8    # accumulator chains to keep in flight in the small-row kernels
    k_unroll: int = 4  # k steps per iteration of the full-tile micro-kernel loop
    max_split: int = 4  # most accumulator chains per C vector in the small-row kernels
    prefetch_c: bool = True  # prefetch the C tile before the k loop
    inline_ukr: bool = False  # let LLVM inline micro-kernels (compile time ~2x, no speed gain)
    pack_a: bool = True  # copy MR-row tiles of A into a k-major stack buffer per block
    nregs: int = 16

    @property
    def nr(self) -> int:
        return self.nv * self.vw


def gemm_config(target: CpuTarget | None = None) -> GemmConfig:
    """Tile/block sizes for a target (measured: see the module docstring)."""
    t = target or CpuTarget.host()
    if t.vector_width == 16:  # AVX-512: 6x64 with 24 zmm accumulators
        return GemmConfig(vw=16, mr=6, nv=4, kc=256, mc=192, nc=2048, nregs=32)
    if t.vector_width == 8:   # AVX2: 6x16 with 12 ymm accumulators
        return GemmConfig(vw=8, mr=6, nv=2, kc=256, mc=144, nc=2048, nregs=16)
    if t.num_vector_regs >= 32:  # NEON: 6x16 with 24 q accumulators
        return GemmConfig(vw=4, mr=6, nv=4, kc=256, mc=144, nc=2048, nregs=32)
    return GemmConfig(vw=4, mr=6, nv=2, kc=256, mc=144, nc=2048, nregs=16)  # SSE: 6x8


def _resolve_cfg(cfg_or_target) -> GemmConfig:
    if isinstance(cfg_or_target, GemmConfig):
        return cfg_or_target
    if cfg_or_target is None or isinstance(cfg_or_target, CpuTarget):
        return gemm_config(cfg_or_target)
    return gemm_config(CpuTarget.from_name(cfg_or_target))


# --------------------------------------------------------------------------------------------
# Packing in Python (weights, at compile time)
# --------------------------------------------------------------------------------------------


def packed_b_size(K: int, N: int, cfg_or_target=None) -> int:
    """Floats in the packed form of a K x N matrix B."""
    cfg = _resolve_cfg(cfg_or_target)
    return -(-N // cfg.nr) * K * cfg.nr


def pack_b(B: np.ndarray, cfg_or_target=None, *, trans_b: bool = False) -> np.ndarray:
    """Pack B[K, N] (or, with trans_b, B given as its transpose [N, K]) into NR-column panels:
    out[p, k, j] = B[k, p*NR + j] (zero past N). Returns a flat, 64-byte-aligned float32 array
    of packed_b_size(K, N) floats."""
    cfg = _resolve_cfg(cfg_or_target)
    B = np.asarray(B, dtype=np.float32)
    if trans_b:
        B = B.T
    K, N = B.shape
    nr = cfg.nr
    npan = -(-N // nr)
    out = aligned_zeros(npan * K * nr, np.float32)
    v = out.reshape(npan, K, nr)
    full = N // nr
    if full:
        v[:full] = B[:, :full * nr].reshape(K, full, nr).transpose(1, 0, 2)
    if full < npan:
        rem = N - full * nr
        v[full, :, :rem] = B[:, full * nr:]
        v[full, :, rem:] = 0.0
    return out
