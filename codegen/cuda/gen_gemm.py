"""GPU generators for matmul, gemm and conv: a shared-memory tiled SGEMM, and plain loops.

* **Tiled GEMM** (float32 matmul and gemm, float32 1-D and 2-D convolutions as implicit
  GEMM): a block computes a tile of C, 64x64 with 256 threads (or 64x32, 32x64, 32x32 when
  64x64 tiles are too few to fill the GPU, `_tile_shape`), each thread a 4x4 micro-tile in
  registers, accumulating in f32. Per step of BK = 16 along K the block stages a tile of A
  and one of B in shared memory (both k-major, so a thread reads its 4 rows of A and 4
  columns of B as two 16-byte loads), between two barriers; the next step's global loads
  are issued before the multiply-adds, so their latency hides behind them. Edges are checked
  only where the shape needs it: a row, column or k past the end reads 0 from a clamped,
  always-valid address (no branch). A convolution gathers its im2col columns while loading
  the B tile, the padding reading 0 the same way.
* **One thread per output element** (other dtypes, depthwise convolutions, 3-D and other
  N-D ones): a dot product or a window sum, in f32 for halves.

Every result goes through `kb.store_result` at the output's full index, so fused epilogues
(bias, relu, residual add, ...) run before the store. Index arithmetic is 32-bit unless a
buffer has 2**30 elements or more (64-bit multiplies cost several instructions on a GPU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

from llvmlite import ir

from slimc.ir import dtypes

from ..cpu.common import acc_dtype, cdiv, numel
from ..cpu.kernel import llvm_name
from ..cpu.llvm_util import F32, I32, const, llvm_type
from ..cpu.scalar_ops import Emitter, convert
from .index import (Ix, all_of, counted_loop, fmuladd, load_or_zero, maybe, per_element,
                    per_element_done, wide_index)
from .kernel import SHARED, GpuKernelBuilder, gpu_generator, sreg

BM, BN, BK = 64, 64, 16  # the block's tile of C (256 threads), and its step along K
BM_SMALL, BN_SMALL = 32, 32  # the small tile (64 threads)
TM, TN = 4, 4  # each thread's micro-tile
# blocks that fill an A100 or H100 once (108 or 132 SMs): fewer 64x64 tiles take 32x32 ones
WAVE = 128
V4 = ir.VectorType(F32, 4)


# ----- index arithmetic ----------------------------------------------------------------------

# ----- the tiled GEMM ------------------------------------------------------------------------

@dataclass
class Gemm:
    """A (batched) GEMM for `tiled_gemm`: C[g] (M x N) = A[g] (M x K) @ B[g] (K x N) for g in
    range(count). The callbacks emit code in the kernel (integers are `ix.t` values):

    setup(g) -> ctx                          once per block: pointers of entry g
    a_elem(ctx, m, k, ok) -> f32             A[m, k] (0 where `ok`, an i1 or None, is false)
    b_elem(ctx, k, n, ok) -> f32             B[k, n], the same
    row(ctx, m) -> row                       once per row of a thread's micro-tile (what
                                             its columns share, e.g. a conv's bias); m if None
    finish(ctx, row, n, acc)                 C[m, n] = acc: apply what follows and store

    a_k_contiguous / b_k_contiguous say which way each operand is contiguous in memory, so
    that the threads of a warp load consecutive addresses."""

    M: int
    N: int
    K: int
    count: int
    setup: Callable
    a_elem: Callable
    b_elem: Callable
    finish: Callable
    a_k_contiguous: bool
    b_k_contiguous: bool
    row: Optional[Callable] = None


def _tile_shape(M: int, N: int, count: int) -> tuple:
    """The block's tile of C: the largest of 64x64, 64x32 or 32x64, 32x32 that makes a wave
    of blocks (batch-1 convolutions and small GEMMs keep more SMs busy with more, smaller
    blocks than with fewer that each do more), 32 along a dimension of at most 32."""
    bm_max = BM_SMALL if M <= BM_SMALL else BM
    bn_max = BN_SMALL if N <= BN_SMALL else BN
    shapes = [(bm_max, bn_max)]
    if bm_max > BM_SMALL and bn_max > BN_SMALL:
        shapes += [(BM, BN_SMALL), (BM_SMALL, BN)] if M >= N else [(BM_SMALL, BN), (BM, BN_SMALL)]
    shapes.append((BM_SMALL, BN_SMALL))
    for bm, bn in shapes:
        if cdiv(M, bm) * cdiv(N, bn) * count >= WAVE:
            return bm, bn
    return shapes[-1]


def _tile_slots(ix: Ix, t, rows: int, threads: int, k_contiguous: bool) -> list:
    """This thread's elements (row, k) of a rows x BK operand tile, rows*BK/threads of
    them: a run along k (at row t % rows) when the operand is contiguous along k, else a
    run along the rows, so that a warp's loads are consecutive in memory."""
    run = rows * BK // threads
    if k_contiguous:
        r = ix.rem(t, rows, "ld.r")
        k = ix.mul(ix.div(t, rows), run, "ld.k")
        return [(r, ix.add(k, i)) for i in range(run)]
    per_k = rows // run  # threads per k
    r = ix.mul(ix.rem(t, per_k), run, "ld.r")
    k = ix.div(t, per_k, "ld.k")
    return [(ix.add(r, i), k) for i in range(run)]


def tiled_gemm(kb: GpuKernelBuilder, p: Gemm, ix: Ix) -> None:
    """Emit the tiled GEMM (see the module docstring) and launch it: one block per bm x bn
    tile of each entry's C, blocks numbered column tile fastest, then row tile, then entry."""
    b = kb.b
    bm, bn = _tile_shape(p.M, p.N, p.count)
    threads = (bm // TM) * (bn // TN)
    tiles_m, tiles_n = cdiv(p.M, bm), cdiv(p.N, bn)
    nk = cdiv(p.K, BK)
    kb.launch((tiles_m * tiles_n * p.count,), (threads,), items=p.M * p.N * p.count)
    kb.parallel_extent = tiles_m * tiles_n * p.count
    kb.cost = 2 * p.M * p.N * p.K * p.count
    acc_slots = [[b.alloca(F32, name=f"acc{i}{j}") for j in range(TN)] for i in range(TM)]
    a_sh = kb.shared_array("a_tile", F32, BK * bm)
    b_sh = kb.shared_array("b_tile", F32, BK * bn)
    t = sreg(b, "tid.x", "t") if ix.t == I32 else kb.sreg("tid.x", "t")
    blk = sreg(b, "ctaid.x", "blk") if ix.t == I32 else kb.sreg("ctaid.x", "blk")
    nt = ix.rem(blk, tiles_n, "tile.n")
    rest = ix.div(blk, tiles_n)
    mt = ix.rem(rest, tiles_m, "tile.m")
    g = ix.div(rest, tiles_m, "entry")
    m0, n0 = ix.mul(mt, bm, "m0"), ix.mul(nt, bn, "n0")
    ctx = p.setup(g)
    # (row, k) in the tile, its shared-memory row length, its tile, its operand
    slots = [(s, bm, a_sh, "a") for s in _tile_slots(ix, t, bm, threads, p.a_k_contiguous)]
    slots += [(s, bn, b_sh, "b") for s in _tile_slots(ix, t, bn, threads, p.b_k_contiguous)]
    regs = [b.alloca(F32, name=f"next{i}") for i in range(len(slots))]

    def fetch(k0) -> list:
        """This thread's elements of A's tile and of B's at k0 (global loads)."""
        vals = []
        for (r, kk), _, _, which in slots:
            k = ix.add(k0, kk)
            k_ok = ix.below(k, p.K) if p.K % BK else None
            if which == "a":
                m = ix.add(m0, r)
                ok = all_of(b, ix.below(m, p.M) if p.M % bm else None, k_ok)
                vals.append(p.a_elem(ctx, m, k, ok))
            else:
                n = ix.add(n0, r)
                ok = all_of(b, ix.below(n, p.N) if p.N % bn else None, k_ok)
                vals.append(p.b_elem(ctx, k, n, ok))
        return vals

    for slot in (s for row in acc_slots for s in row):
        b.store(const(F32, 0.0), slot)
    if nk:
        for reg, v in zip(regs, fetch(0)):
            b.store(v, reg)
    ty, tx = ix.div(t, bn // TN, "ty"), ix.rem(t, bn // TN, "tx")
    a_frag = ix.mul(ty, TM, "a.frag")
    b_frag = ix.mul(tx, TN, "b.frag")
    with counted_loop(b, ix, nk, "kt") as kt:
        # registers -> shared memory, both tiles k-major: [k][row]
        for ((r, kk), width, tile, _), reg in zip(slots, regs):
            at = ix.v(ix.add(ix.mul(kk, width), r))
            b.store(b.load(reg), b.gep(tile, [at], inbounds=True))
        kb.barrier()
        if nk > 1:  # the next step's loads (the last step reloads its own: in bounds)
            last = ix.v(nk - 1)
            nxt = b.add(kt, ix.v(1))
            nxt = b.select(b.icmp_unsigned("<", nxt, last), nxt, last)
            for reg, v in zip(regs, fetch(b.mul(nxt, ix.v(BK)))):
                b.store(v, reg)
        acc = [[b.load(s) for s in row] for row in acc_slots]
        # one step holds all of K: the rows of the tiles past it are zeros, skip them
        for kk in range(BK if nk > 1 else p.K):
            av = _vload4(b, ix, a_sh, ix.add(a_frag, kk * bm))
            bv = _vload4(b, ix, b_sh, ix.add(b_frag, kk * bn))
            for i in range(TM):
                for j in range(TN):
                    acc[i][j] = fmuladd(b, av[i], bv[j], acc[i][j])
        for row_slots, row_vals in zip(acc_slots, acc):
            for s, v in zip(row_slots, row_vals):
                b.store(v, s)
        kb.barrier()
    for i in range(TM):
        m = ix.add(ix.add(m0, a_frag), i)
        with maybe(b, ix.below(m, p.M) if p.M % bm else None):
            row = m if p.row is None else p.row(ctx, m)
            for j in range(TN):
                n = ix.add(ix.add(n0, b_frag), j)
                with maybe(b, ix.below(n, p.N) if p.N % bn else None):
                    p.finish(ctx, row, n, b.load(acc_slots[i][j], name=f"c{i}{j}"))
    b.ret_void()


def _vload4(b: ir.IRBuilder, ix: Ix, tile: ir.Value, at) -> list:
    """4 consecutive floats of a shared tile from a 16-byte aligned element offset."""
    ptr = b.gep(tile, [ix.v(at)], inbounds=True)
    vp = b.bitcast(ptr, ir.PointerType(V4, addrspace=SHARED))
    v = b.load(vp, align=16)
    return [b.extract_element(v, I32(i)) for i in range(4)]


# ----- matmul and gemm ---------------------------------------------------------------------

def _norm_shapes(a_shape, b_shape, trans_a=False, trans_b=False):
    """(batch_a, M, K, batch_b, N) with numpy's 1-D rules (a [K] operand is a row or a
    column) and gemm's transposes applied."""
    a, bs = list(a_shape), list(b_shape)
    if trans_a:
        a[-2], a[-1] = a[-1], a[-2]
    if trans_b:
        bs[-2], bs[-1] = bs[-1], bs[-2]
    if len(a) == 1:
        a = [1] + a
    if len(bs) == 1:
        bs = bs + [1]
    return a[:-2], a[-2], a[-1], bs[:-2], bs[-1]


@dataclass
class _MatmulPlan:
    """What both matmul kernels need to know about a node."""

    a: object
    b: object
    c: object
    out: object
    M: int
    N: int
    K: int
    out_batch: list
    batch_a: list
    batch_b: list
    trans_a: bool
    trans_b: bool
    alpha: float
    beta: float
    a_vec: bool  # A is 1-D: the output has no row dimension
    b_vec: bool  # B is 1-D: no column dimension

    def out_index(self, batch: list, m, n) -> list:
        return list(batch) + ([] if self.a_vec else [m]) + ([] if self.b_vec else [n])

    def a_offset(self, ix: Ix, m, k):
        return ix.add(ix.mul(k, self.M), m) if self.trans_a else ix.add(ix.mul(m, self.K), k)

    def b_offset(self, ix: Ix, k, n):
        return ix.add(ix.mul(n, self.K), k) if self.trans_b else ix.add(ix.mul(k, self.N), n)

    def c_offset(self, ix: Ix, kb, m, n):
        dims = list(kb.shape(self.c))
        dims = [1] * (2 - len(dims)) + dims
        return ix.linear([0 if dims[0] == 1 else m, 0 if dims[1] == 1 else n], dims)

    def batch_offsets(self, ix: Ix, g) -> tuple:
        """(out batch index, A's entry offset, B's entry offset) of output batch entry g."""
        idx = ix.delinear(g, self.out_batch)

        def entry(batch, size):
            off = len(self.out_batch) - len(batch)
            sub = [0 if d == 1 else idx[off + i] for i, d in enumerate(batch)]
            return ix.mul(ix.linear(sub, batch), size)

        return idx, entry(self.batch_a, self.M * self.K), entry(self.batch_b, self.K * self.N)


def _matmul_plan(kb: GpuKernelBuilder, node) -> _MatmulPlan:
    """A matmul or gemm node as a plan (a gemm C that beta zeroes is dropped, as the CPU
    backend does)."""
    a, bv = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    attrs = kb.attrs(node) if node.op == "gemm" else {}
    trans_a, trans_b = bool(attrs.get("trans_a", 0)), bool(attrs.get("trans_b", 0))
    a_shape, b_shape = kb.shape(a), kb.shape(bv)
    batch_a, M, K, batch_b, N = _norm_shapes(a_shape, b_shape, trans_a, trans_b)
    out = node.outputs[0]
    out_shape = kb.shape(out)
    a_vec, b_vec = len(a_shape) == 1, len(b_shape) == 1
    out_batch = list(out_shape[:len(out_shape) - (not a_vec) - (not b_vec)])
    beta = float(attrs.get("beta", 1.0))
    return _MatmulPlan(a, bv, c if c is not None and beta != 0.0 else None, out, M, N, K,
                       out_batch, batch_a, batch_b, trans_a, trans_b,
                       float(attrs.get("alpha", 1.0)), beta, a_vec, b_vec)


@gpu_generator("matmul", "gemm", epilogue=True)
def matmul(kb: GpuKernelBuilder, node) -> None:
    """float32: the tiled GEMM, one grid over every batch entry; other dtypes: one thread per
    output element."""
    p = _matmul_plan(kb, node)
    if numel(kb.shape(p.out)) == 0:
        kb.b.ret_void()
        return
    f32 = all(v is None or v.type.dtype == dtypes.f32 for v in (p.a, p.b, p.c, p.out))
    if not f32:
        return _matmul_per_element(kb, p)
    b = kb.b
    ix = Ix(b, wide_index(kb))
    A, B = kb.ptr(p.a), kb.ptr(p.b)
    C = kb.ptr(p.c) if p.c is not None else None
    name = llvm_name(p.out.name)

    def setup(g):
        batch, a_off, b_off = p.batch_offsets(ix, g)
        a_ptr = b.gep(A, [ix.v(a_off)], inbounds=True, name=name + ".a")
        b_ptr = b.gep(B, [ix.v(b_off)], inbounds=True, name=name + ".b")
        return batch, a_ptr, b_ptr

    def a_elem(ctx, m, k, ok):
        return load_or_zero(b, ix, ctx[1], p.a_offset(ix, m, k), ok, "a", invariant=True)

    def b_elem(ctx, k, n, ok):
        return load_or_zero(b, ix, ctx[2], p.b_offset(ix, k, n), ok, "b", invariant=True)

    def finish(ctx, m, n, acc):
        v = acc
        if p.alpha != 1.0:
            v = b.fmul(v, const(F32, p.alpha), name="alpha.acc")
        if C is not None:
            cv = b.load(b.gep(C, [ix.v(p.c_offset(ix, kb, m, n))], inbounds=True), name="c")
            if p.beta != 1.0:
                cv = b.fmul(cv, const(F32, p.beta), name="beta.c")
            v = b.fadd(v, cv, name="gemm")
        idx = p.out_index([ix.wide(i) for i in ctx[0]], ix.wide(m), ix.wide(n))
        kb.store_result(p.out, idx, v)

    count = numel(p.out_batch)
    tiled_gemm(kb, Gemm(p.M, p.N, p.K, count, setup, a_elem, b_elem, finish,
                          a_k_contiguous=not p.trans_a or p.M == 1,
                          b_k_contiguous=p.trans_b or p.N == 1), ix)


def _matmul_per_element(kb: GpuKernelBuilder, p: _MatmulPlan) -> None:
    """Any dtype: out[.., m, n] = sum_k A[.., m, k] * B[.., k, n] in the accumulation dtype
    (f32 for halves); gemm's alpha/beta/C as the reference computes them."""
    b = kb.b
    dt = p.out.type.dtype
    adt = acc_dtype(dt)
    at = llvm_type(adt)
    e = Emitter(b, [adt, adt], adt, kb.fast_math, llvm_name(p.out.name))
    ix = Ix(b, wide_index(kb))
    kb.cost = 2 * numel(kb.shape(p.out)) * p.K
    acc_slot = b.alloca(at, name="acc")
    flat, done = per_element(kb, ix)
    mn = ix.delinear(flat, p.out_batch + [p.M, p.N])
    batch, m, n = mn[:-2], mn[-2], mn[-1]
    _, a_off, b_off = p.batch_offsets(ix, ix.div(flat, p.M * p.N))
    A, B = kb.ptr(p.a), kb.ptr(p.b)
    b.store(const(at, 0), acc_slot)
    with counted_loop(b, ix, p.K, "k") as k:
        x = load_or_zero(b, ix, A, ix.add(a_off, p.a_offset(ix, m, k)), None, "a", invariant=True)
        y = load_or_zero(b, ix, B, ix.add(b_off, p.b_offset(ix, k, n)), None, "b", invariant=True)
        x, y = convert(e, x, p.a.type.dtype, adt), convert(e, y, p.b.type.dtype, adt)
        b.store(e.add(b.load(acc_slot), e.mul(x, y)), acc_slot)
    r = b.load(acc_slot, name="dot")
    if p.alpha != 1.0 or p.c is not None:
        # numpy: an integer product times a float alpha or beta is float64, truncated back
        wide = not adt.is_float and (p.alpha != 1.0 or p.beta != 1.0)
        cdt = dtypes.f64 if wide else adt
        ce = Emitter(b, [cdt], cdt, kb.fast_math, "gemm")
        r = convert(ce, r, adt, cdt)
        if p.alpha != 1.0:
            r = ce.mul(r, const(llvm_type(cdt), p.alpha))
        if p.c is not None:
            cv = b.load(b.gep(kb.ptr(p.c), [ix.v(p.c_offset(ix, kb, m, n))], inbounds=True))
            cv = convert(ce, cv, p.c.type.dtype, cdt)
            if p.beta != 1.0:
                cv = ce.mul(cv, const(llvm_type(cdt), p.beta))
            r = ce.add(r, cv)
        r = convert(ce, r, cdt, adt)
    idx = p.out_index([ix.wide(i) for i in batch], ix.wide(m), ix.wide(n))
    kb.store_result(p.out, idx, convert(e, r, adt, dt))
    per_element_done(kb, done)
