"""The GEMM's tile and block sizes per target, and B packed into NR-column panels: in numpy
(`pack_b`: weights, at compile time) and as generated code (`emit_pack_b`: activations, at
run time), the one layout gemm.py's micro-kernels read."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from llvmlite import ir

from slimc.ir.buffers import aligned_zeros

from .llvm_util import (F32, I64, OPAQUE_PTR as PTR, VOID, first_lanes, for_range, i64,
                        masked_load_vector)
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


def _copy_panel(b: ir.IRBuilder, src0, dst0, ldb, K: int, cols: int, cfg: GemmConfig,
                tag: str) -> None:
    """K rows of one panel: `cols` floats of each row of B (ldb apart) to NR floats of the
    panel, whole vectors copied, the vector at the edge masked and the ones past it zero."""
    vw, vt = cfg.vw, ir.VectorType(F32, cfg.vw)
    with for_range(b, 0, K, 1, f"k{tag}") as k:
        src = b.gep(src0, [b.mul(k, ldb, name=f"src.{tag}roff")], source_etype=F32,
                    name=f"src.{tag}")
        dst = b.gep(dst0, [b.mul(k, i64(cfg.nr), name=f"dst.{tag}koff")], source_etype=F32,
                    name=f"dst.{tag}")
        for v in range(cfg.nv):
            lanes = min(vw, max(0, cols - v * vw))
            d = b.gep(dst, [i64(v * vw)], source_etype=F32, name=f"dst.{tag}{v}")
            sv = b.gep(src, [i64(v * vw)], source_etype=F32, name=f"src.{tag}{v}")
            if lanes == vw:
                val = b.load(sv, typ=vt, align=4, name=f"b{tag}.v{v}")
            elif lanes > 0:
                val = masked_load_vector(b, sv, vt, first_lanes(vw, lanes), f"b{tag}.v{v}")
            else:
                val = ir.Constant(vt, None)
            b.store(val, d, align=4)


def emit_pack_b(module: ir.Module, name: str, N: int, K: int, cfg: GemmConfig,
                trans_b: bool) -> ir.Function:
    """`void pack_b_<name>(B, ldb, Bp)`: B [K, N] (or stored [N, K], `trans_b`) packed at run
    time into the panels `pack_b` makes at compile time: NR columns a panel, K rows of NR
    floats, zero past N (vector copies, the last panel's masked)."""
    nr = cfg.nr
    npan = -(-N // nr)
    nfull = N // nr
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR, I64, PTR]), f"pack_b_{name}")
    fn.attributes.add("nounwind")
    B, ldb, Bp = fn.args
    B.name, ldb.name, Bp.name = "B", "ldb", "Bp"
    B.add_attribute("noalias")
    Bp.add_attribute("noalias")
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    if not trans_b:
        # Bp[p][k][0:nr] = B[k][p*nr : p*nr+nr]: vector copies, masked at the edge.
        # Panel-major order: the packed side is written sequentially.
        if nfull:
            with for_range(b, 0, nfull, 1, "p") as p:
                src0 = b.gep(B, [b.mul(p, i64(nr), name="src.col")], source_etype=F32,
                             name="src.pan")
                dst0 = b.gep(Bp, [b.mul(p, i64(K * nr), name="dst.off")],
                             source_etype=F32, name="dst.pan")
                _copy_panel(b, src0, dst0, ldb, K, nr, cfg, "")
        if nfull < npan:
            src0 = b.gep(B, [i64(nfull * nr)], source_etype=F32, name="src.tpan")
            dst0 = b.gep(Bp, [i64(nfull * K * nr)], source_etype=F32, name="dst.tpan")
            _copy_panel(b, src0, dst0, ldb, K, N - nfull * nr, cfg, "t")
    else:
        # B is stored transposed, Bt[n][k] at Bt + n*ldb + k: Bp[p][k][j] = Bt[p*nr+j][k]
        with for_range(b, 0, npan, 1, "p") as p:
            dst_p = b.gep(Bp, [b.mul(p, i64(K * nr), name="dst.off")], source_etype=F32,
                          name="dst.pan")
            with for_range(b, 0, nr, 1, "j") as j:
                n = b.add(b.mul(p, i64(nr), name="n0"), j, name="n")
                inb = b.icmp_signed("<", n, i64(N), name="n.in")
                nn = b.select(inb, n, i64(0), name="n.safe")
                srow = b.gep(B, [b.mul(nn, ldb, name="bt.roff")], source_etype=F32,
                             name="bt.row")
                with for_range(b, 0, K, 1, "k") as k:
                    x = b.load(b.gep(srow, [k], source_etype=F32, name="bt.ptr"), typ=F32,
                               align=4, name="bt")
                    x = b.select(inb, x, ir.Constant(F32, 0.0), name="bt.z")
                    d = b.gep(dst_p, [b.add(b.mul(k, i64(nr), name="dk"), j, name="dkj")],
                              source_etype=F32, name="bp.ptr")
                    b.store(x, d, align=4)
    b.ret_void()
    return fn
