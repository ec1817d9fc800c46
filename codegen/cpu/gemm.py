"""fp32 GEMM kernels generated as LLVM IR with explicit vector types. (One job over 600 lines:
the register tile, its edges, the cache blocking and A's packing of one GEMM generator; the
epilogue interface is gemm_epilogue.py, the run-time-shape driver gemm_runtime.py, B's panels
(numpy and generated) gemm_pack.py.)

    C[M, N] (+)= A[M, K] @ B[K, N]          (row-major, leading dimensions lda, ldc, ldb)

Design (tile and block sizes measured with llvmlite 0.50 / LLVM 22 on Zen 3 and Xeon hosts):

* Register tile MR x NR, NR = NV vectors of VW floats. AVX2 (16 ymm): 6 x 16 = 12 accumulators,
  one broadcast of A per row and NV loads of B per k step. AVX-512 (32 zmm): 6 x 64 = 24
  accumulators. NEON / SSE: 6 x 8 (SSE) or 6 x 16 (NEON, 32 registers).
* B is packed into column panels of NR floats: panel p holds B[0:K, p*NR:(p+1)*NR] as K rows
  of NR contiguous floats (zero-padded past N), panels one after another. Weights are packed
  once at compile time with `pack_b` (numpy); activations are packed at run time by the
  generated `pack_b_<name>` routine.
* Cache blocking (Goto/BLIS loop order): jc over NC columns, pc over KC of K, ic over MC rows
  (the MR-row tiles of that MC x KC block of A are copied k-major into a stack buffer: without
  it, rows 4 KB apart thrash the caches at K = 1024), then the B micro-panels (KC x NR,
  L1-resident) and, innermost, the MR-row tiles. Each micro-kernel prefetches its C tile
  before its k loop (worth ~15% at 1024^3 on Zen 3).
* Edges: N is a compile-time constant, so the last (partial) panel gets its own micro-kernels
  with exactly ceil(n/VW) vectors and constant-masked loads/stores of C. M is a run-time
  range [m0, m1); leftover rows (< MR) go to micro-kernels for 1..MR-1 rows, which read A in
  place and split the k loop over several accumulator chains (k mod S) so that ~8 FMAs are in
  flight: batch-1 rows are FMA-latency bound otherwise.
* Fewer than MR rows in all (batch-1 transformer rows): no cache blocking (each B panel is
  streamed once over all of K), no A packing; with runtime B (not transposed) B is read in
  place instead of packed.
* Shapes known only at run time (every GEMM convolution: N = output pixels of a chunk, K =
  Cin*kh*kw) go through `gemm_runtime.emit_runtime_gemm`: one driver per module with N and K as
  arguments, over the same micro-kernels with the columns of the last panel a run-time
  argument (masked C), so there is one GEMM generator to extend (int8 adds dtypes here).
* Epilogue hook: a Python callback gets an `EpilogueContext` (builder, absolute row and column
  of the vector, lane mask, extra kernel arguments) and the finished vector (already
  including C when accumulating) and returns the vector to store. It runs in a function of
  the GEMM's own, on each tile after its last K block (the tile read back from L1), so that
  the micro-kernels depend on the tile shape alone and every GEMM of a module shares them.

Generated functions (all C ABI, `float*` = `ptr`, `i64` = int64_t; A, B and C must not
overlap; any alignment; the stack needs MC*KC*4 bytes (~150-200 KB) for the A blocks):

    void gemm_<name>(float* A, i64 lda, float* Bp, float* C, i64 ldc, i64 m0, i64 m1, <extra>)
        rows [m0, m1) of C = A @ B (or C += A @ B with accumulate=True), Bp pre-packed.
        Threads may run disjoint row ranges at the same time (split M for 2 cores).
    void pack_b_<name>(float* B, i64 ldb, float* Bp)                  (runtime_b=True)
        packs B[K, N] (or B^T stored as [N, K] with trans_b=True) into Bp.
    void gemm_rt_<name>(float* A, i64 lda, float* B, i64 ldb, float* C, i64 ldc,
                        i64 m0, i64 m1, float* ws, <extra>)              (runtime_b=True)
        pack_b into ws (packed_size floats) then gemm_<name>; for m1 - m0 < MR (and not
        trans_b) multiplies from B in place. To split rows over threads, pack once with
        pack_b_<name> and call gemm_<name> from each thread instead.

The micro-kernels are slimc_ukr_<rows>x<cols>[p][d][a] (p: packed A, d: unpacked B, a:
accumulate), one per module; a GEMM's epilogue is <name>.epilogue_<cols>. The configuration
and the packing of weights in numpy are in gemm_pack.py, a JIT harness for tests and
benchmarks in gemm_jit.py.
LLVM's pass pipeline is optional for these modules: the IR already holds explicit vectors, and
opt level 0 (codegen only) compiles ~2-3x faster with the same speed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from llvmlite import ir

from .common import smin
from .gemm_epilogue import Epilogue, EpilogueContext
from .gemm_pack import GemmConfig, emit_pack_b, gemm_config, pack_b, packed_b_size
from .llvm_util import OPAQUE_PTR as PTR, masked_load_vector, masked_store_vector
from .llvm_util import (first_lanes, for_range, new_shared_function, shared_functions, splat,
                        unique_name)
from .target import CpuTarget

__all__ = ["GemmKernel", "emit_gemm"]

F32 = ir.FloatType()
I1 = ir.IntType(1)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
VOID = ir.VoidType()


def _i64(v: int) -> ir.Constant:
    return ir.Constant(I64, v)


# --------------------------------------------------------------------------------------------
# IR helpers
# --------------------------------------------------------------------------------------------


def _vec(vw: int) -> ir.VectorType:
    return ir.VectorType(F32, vw)


def _intrinsic(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, fnty, name)
    return fn


def _lane_mask(b: ir.IRBuilder, vw: int, start: int, limit: ir.Value, name: str) -> ir.Value:
    """<vw x i1>: lane j is (start + j < limit), for a run-time limit."""
    ids = ir.Constant(ir.VectorType(I64, vw), [start + j for j in range(vw)])
    lim = b.insert_element(ir.Constant(ir.VectorType(I64, vw), ir.Undefined), limit,
                           ir.Constant(I32, 0), name=name + ".l0")
    lim = b.shuffle_vector(lim, ir.Constant(ir.VectorType(I64, vw), ir.Undefined),
                           ir.Constant(ir.VectorType(I32, vw), [0] * vw), name=name + ".l")
    return b.icmp_signed("<", ids, lim, name=name)


def _fma(b, module, x, y, acc, vw, name):
    vt = _vec(vw)
    fn = _intrinsic(module, f"llvm.fma.v{vw}f32", ir.FunctionType(vt, [vt, vt, vt]))
    return b.call(fn, [x, y, acc], name=name)


def _muladd(b, module, x, y, acc, vw, name, use_fma):
    if use_fma:
        return _fma(b, module, x, y, acc, vw, name)
    p = b.fmul(x, y, name=name + ".mul", flags=("contract",))
    return b.fadd(acc, p, name=name, flags=("contract",))


def _row_ptrs(b: ir.IRBuilder, base, ld, rows: int, tag: str) -> list:
    """[base + r*ld for r in range(rows)] as float pointers named <tag>.row<r>."""
    out = [base]
    for r in range(1, rows):
        off = ld if r == 1 else b.mul(ld, _i64(r), name=f"{tag}.ld.x{r}")
        out.append(b.gep(base, [off], source_etype=F32, name=f"{tag}.row{r}"))
    return out


def _leftover_rows(b: ir.IRBuilder, rem: ir.Value, mr: int, call_rows: Callable) -> None:
    """The rows left after the full MR-row tiles: `call_rows(r)` for the run-time count r in
    1..mr-1 (a switch: one micro-kernel per row count), then on."""
    fn = b.function
    done = fn.append_basic_block("rows.left.done")
    sw = b.switch(rem, done)
    for r in range(1, mr):
        blk = fn.append_basic_block(f"rows.left.{r}")
        sw.add_case(_i64(r), blk)
        b.position_at_end(blk)
        call_rows(r)
        b.branch(done)
    b.position_at_end(done)


def _if(b: ir.IRBuilder, cond: ir.Value, name: str):
    """Context manager: code inside runs when cond is true; continues after."""

    class _If:
        def __enter__(self_):
            fn = b.function
            self_.then = fn.append_basic_block(name + ".then")
            self_.end = fn.append_basic_block(name + ".end")
            b.cbranch(cond, self_.then, self_.end)
            b.position_at_end(self_.then)

        def __exit__(self_, et, ev, tb):
            if et is None:
                b.branch(self_.end)
                b.position_at_end(self_.end)
            return False

    return _If()


# --------------------------------------------------------------------------------------------
# Kernel generation
# --------------------------------------------------------------------------------------------


@dataclass
class GemmKernel:
    """What emit_gemm put in the module, and how to call it."""

    name: str
    N: int
    K: int
    cfg: GemmConfig
    accumulate: bool
    trans_b: bool
    gemm_fn: str                   # gemm_<name>(A, lda, Bp, C, ldc, m0, m1, *extra)
    pack_fn: str | None = None     # pack_b_<name>(B, ldb, Bp)
    rt_fn: str | None = None       # gemm_rt_<name>(A, lda, B, ldb, C, ldc, m0, m1, ws, *extra)
    extra_args: tuple = ()

    @property
    def packed_size(self) -> int:
        """Floats of the packed B (and of the gemm_rt workspace)."""
        return packed_b_size(self.K, self.N, self.cfg)

    def pack(self, B: np.ndarray) -> np.ndarray:
        return pack_b(B, self.cfg, trans_b=self.trans_b)


class _Gen:
    def __init__(self, module: ir.Module, name: str, N: int, K: int, cfg: GemmConfig,
                 target: CpuTarget, accumulate: bool, epilogue: Epilogue | None,
                 extra_args: Sequence[tuple[str, ir.Type]]):
        self.m = module
        self.name = name
        self.N, self.K, self.cfg = N, K, cfg
        self.use_fma = target.has_fma or target.arch == "aarch64"
        self.accumulate = accumulate
        self.epilogue = epilogue
        self.extra = list(extra_args)
        self.epis: dict = {}

    # ---- micro-kernel -----------------------------------------------------------------

    def chains_for(self, mr: int) -> int:
        """k-split factor S (power of two <= max_split) so that a full-width tile of mr rows,
        mr*NV*S accumulators, reaches cfg.chains without running out of registers.

        S decides the order in which each output's K products are summed, so it depends on
        the row count only, never on the columns: the last, narrower panel of C uses the
        same S as the full ones, and identical columns of B give bitwise identical columns
        of C wherever they fall (a softmax over equal huge logits depends on it)."""
        cfg = self.cfg
        nvec = cfg.nv
        s = 1
        while (mr * nvec * s < cfg.chains and s * 2 <= cfg.max_split
               and mr * nvec * s * 2 + nvec + 1 <= cfg.nregs):
            s *= 2
        return s

    def ukr(self, mr: int, ncols: int | None, packed_a: bool = False,
            b_direct: bool = False) -> ir.Function:
        """Micro-kernel for an mr x ncols tile of C. With packed_a, A points at a packed
        tile (k-major, mr floats per k step) and lda is ignored. B points at a packed panel
        (k-major, NR floats per k step; ldb ignored) or, with b_direct, into an unpacked
        row-major B (k step = ldb floats; the partial last vector is loaded masked).

        ncols None: the columns are a run-time argument ``ncols`` (at most NR, after `col`):
        C is read and written under run-time lane masks, and B must be readable for all NR
        columns (packed, or padded with zeros). The run-time-shape GEMM uses it."""
        cfg, m = self.cfg, self.m
        key = ("gemm.ukr", mr, ncols, packed_a, b_direct, self.accumulate, self.use_fma, cfg)
        shared = shared_functions(m)
        if key in shared:
            return shared[key]
        vw, nr = cfg.vw, cfg.nr
        vt = _vec(vw)
        runtime_cols = ncols is None
        if runtime_cols:
            ncols = nr
        nvec = -(-ncols // vw)
        tail_lanes = ncols - (nvec - 1) * vw  # valid lanes of the last vector
        S = self.chains_for(mr)
        # k steps per loop iteration: the full tile unrolls k_unroll times; the small-row
        # kernels one step per chain (at least 2), which keeps the module small
        U = cfg.k_unroll if mr == cfg.mr else max(2, S)

        arg_tys = [PTR, I64, PTR, I64, PTR, I64, I64, I1] + ([I64] if runtime_cols else [])
        suffix = ("p" if packed_a else "") + ("d" if b_direct else "") + \
            ("a" if self.accumulate else "")
        name = f"slimc_ukr_{mr}x{'N' if runtime_cols else ncols}{suffix}"
        if cfg.inline_ukr:  # internal: in every part that calls it, for LLVM to inline
            fn = ir.Function(m, ir.FunctionType(VOID, arg_tys), unique_name(m, name))
            fn.linkage = "internal"
            fn.attributes.add("nounwind")
        else:
            fn = new_shared_function(m, key, name, ir.FunctionType(VOID, arg_tys))
        names = ["A", "lda", "B", "ldb", "C", "ldc", "kc", "first"] + \
                (["ncols"] if runtime_cols else [])
        for a, n in zip(fn.args, names):
            a.name = n
        A, lda, Bp, ldb, C, ldc, kc, first = fn.args[:8]
        for a in (A, Bp, C):
            a.add_attribute("noalias")

        b = ir.IRBuilder(fn.append_basic_block("entry"))
        if packed_a:
            arow = [A if r == 0 else b.gep(A, [_i64(r)], source_etype=F32, name=f"a.row{r}")
                    for r in range(mr)]
        else:
            arow = _row_ptrs(b, A, lda, mr, "a")
        crows = _row_ptrs(b, C, ldc, mr, "c")

        if cfg.prefetch_c:
            # The C tile is touched only after the k loop: start fetching it now.
            pf = _intrinsic(m, "llvm.prefetch.p0", ir.FunctionType(VOID, [PTR, I32, I32, I32]))
            for r in range(mr):
                crow = crows[r]
                for off in sorted(set(range(0, ncols, 16)) | {ncols - 1}):  # every line
                    pp = crow if off == 0 else b.gep(crow, [_i64(off)], source_etype=F32,
                                                     name=f"pf.c.r{r}.{off}")
                    b.call(pf, [pp, ir.Constant(I32, 1), ir.Constant(I32, 3), ir.Constant(I32, 1)])

        zero = ir.Constant(vt, None)
        nacc = mr * nvec * S

        def step(bld, k, accs, s, tag):
            """One k step on chain s: returns updated accumulator list."""
            bbase = bld.mul(k, ldb if b_direct else _i64(nr), name=f"b.off{tag}")
            bv = []
            for v in range(nvec):
                off = bbase if v == 0 else bld.add(bbase, _i64(v * vw), name=f"b.off{tag}.{v}")
                p = bld.gep(Bp, [off], source_etype=F32, name=f"b.ptr{tag}.{v}")
                if b_direct and not runtime_cols and v == nvec - 1 and tail_lanes < vw:
                    bv.append(masked_load_vector(bld, p, _vec(vw), first_lanes(vw, tail_lanes),
                                                  f"b{tag}.{v}"))
                else:
                    bv.append(bld.load(p, typ=vt, align=4, name=f"b{tag}.{v}"))
            accs = list(accs)
            koff = bld.mul(k, _i64(mr), name=f"a.koff{tag}") if packed_a else k
            for r in range(mr):
                pa = bld.gep(arow[r], [koff], source_etype=F32, name=f"a.ptr{tag}.r{r}")
                a = bld.load(pa, typ=F32, align=4, name=f"a{tag}.r{r}")
                av = splat(bld, a, vw, name=f"a{tag}.r{r}.bc")
                for v in range(nvec):
                    i = (s * mr + r) * nvec + v
                    accs[i] = _muladd(bld, m, av, bv[v], accs[i], vw,
                                      f"acc.c{s}.r{r}.v{v}", self.use_fma)
            return accs

        # main loop: k in [0, kc - U], U steps per iteration, step u on chain u % S
        pre = b.block
        kmain = b.sub(kc, _i64(U - 1), name="k.main.stop")
        head = fn.append_basic_block("k.main.head")
        body = fn.append_basic_block("k.main.body")
        rhead = fn.append_basic_block("k.rem.head")
        rbody = fn.append_basic_block("k.rem.body")
        done = fn.append_basic_block("k.done")
        b.branch(head)

        b.position_at_end(head)
        k = b.phi(I64, name="k")
        k.add_incoming(_i64(0), pre)
        accs_phi = []
        for s in range(S):
            for r in range(mr):
                for v in range(nvec):
                    ph = b.phi(vt, name=f"acc.c{s}.r{r}.v{v}.m")
                    ph.add_incoming(zero, pre)
                    accs_phi.append(ph)
        b.cbranch(b.icmp_signed("<", k, kmain, name="k.main.cond"), body, rhead)

        b.position_at_end(body)
        accs = accs_phi
        for u in range(U):
            ku = k if u == 0 else b.add(k, _i64(u), name=f"k.u{u}")
            accs = step(b, ku, accs, u % S, f".u{u}")
        knext = b.add(k, _i64(U), name="k.next")
        k.add_incoming(knext, body)
        for ph, a in zip(accs_phi, accs):
            ph.add_incoming(a, body)
        b.branch(head)

        # remainder loop: one k step at a time on chain 0
        b.position_at_end(rhead)
        k2 = b.phi(I64, name="k.r")
        k2.add_incoming(k, head)
        raccs_phi = []
        for i in range(nacc):
            ph = b.phi(vt, name=accs_phi[i].name.replace(".m", ".r"))
            ph.add_incoming(accs_phi[i], head)
            raccs_phi.append(ph)
        b.cbranch(b.icmp_signed("<", k2, kc, name="k.rem.cond"), rbody, done)

        b.position_at_end(rbody)
        raccs = step(b, k2, raccs_phi, 0, ".r")
        k2.add_incoming(b.add(k2, _i64(1), name="k.r.next"), rbody)
        for ph, a in zip(raccs_phi, raccs):
            ph.add_incoming(a, rbody)
        b.branch(rhead)

        # combine the chains, add C, epilogue, store
        b.position_at_end(done)
        final = []
        for r in range(mr):
            for v in range(nvec):
                t = raccs_phi[r * nvec + v]
                for s in range(1, S):
                    t = b.fadd(t, raccs_phi[(s * mr + r) * nvec + v], name=f"acc.r{r}.v{v}.sum{s}")
                final.append(t)

        addc = _i1(True) if self.accumulate else b.not_(first, name="add.c")
        lane_masks = [_lane_mask(b, vw, v * vw, fn.args[8], f"mask.v{v}")
                      for v in range(nvec)] if runtime_cols else None
        cptrs, masks = [], []
        for r in range(mr):
            crow = crows[r]
            for v in range(nvec):
                cptrs.append(crow if v == 0 else
                             b.gep(crow, [_i64(v * vw)], source_etype=F32, name=f"c.ptr.r{r}.v{v}"))
                if runtime_cols:
                    masks.append(lane_masks[v])
                else:
                    masks.append(first_lanes(vw, tail_lanes) if (v == nvec - 1 and tail_lanes < vw)
                                 else None)

        def load_c(i, r, v):
            if masks[i] is None:
                return b.load(cptrs[i], typ=vt, align=4, name=f"c.r{r}.v{v}")
            return masked_load_vector(b, cptrs[i], _vec(vw), masks[i], f"c.r{r}.v{v}")

        def store_c(i, val):
            if masks[i] is None:
                b.store(val, cptrs[i], align=4)
            else:
                masked_store_vector(b, val, cptrs[i], masks[i])

        # C += : load C where needed (branch once for the whole tile)
        with_c = fn.append_basic_block("c.add")
        after_c = fn.append_basic_block("c.added")
        b.cbranch(addc, with_c, after_c)
        from_blk = b.block
        b.position_at_end(with_c)
        summed = []
        for r in range(mr):
            for v in range(nvec):
                i = r * nvec + v
                summed.append(b.fadd(final[i], load_c(i, r, v), name=f"acc.r{r}.v{v}.c"))
        b.branch(after_c)
        b.position_at_end(after_c)
        vals = []
        for i in range(len(final)):
            ph = b.phi(vt, name=f"out.{i // nvec}.{i % nvec}")
            ph.add_incoming(final[i], from_blk)
            ph.add_incoming(summed[i], with_c)
            vals.append(ph)

        for i, val in enumerate(vals):
            store_c(i, val)
        b.ret_void()

        shared[key] = fn
        return fn

    def epilogue_fn(self, ncols: int | None) -> ir.Function:
        """The kernel's epilogue over a finished tile of `nrows` rows and `ncols` columns (None:
        a run-time argument): each row's vectors loaded back from C (L1), finished, stored.

        It lives apart from the micro-kernels so that they depend on the tile shape alone and
        one serves every kernel of a module (`shared_functions`); in them, a GELU epilogue was 24
        erf polynomials per 6-row micro-kernel (5 MB of BERT's 15 MB of IR). The values the
        epilogue sees are the micro-kernel's, bit for bit."""
        key = ncols
        if key in self.epis:
            return self.epis[key]
        vw = self.cfg.vw
        runtime_cols = ncols is None
        width = self.cfg.nr if runtime_cols else ncols
        nvec = -(-width // vw)
        tail_lanes = width - (nvec - 1) * vw
        arg_tys = [PTR, I64, I64, I64, I64] + ([I64] if runtime_cols else []) + \
            [t for _, t in self.extra]
        fn = ir.Function(self.m, ir.FunctionType(VOID, arg_tys),
                         f"{self.name}.epilogue_{'N' if runtime_cols else ncols}")
        fn.linkage = "internal"
        fn.attributes.add("nounwind")
        names = ["C", "ldc", "nrows", "row", "col"] + (["ncols"] if runtime_cols else []) + \
            [n for n, _ in self.extra]
        for a, n in zip(fn.args, names):
            a.name = n
        C, ldc, nrows, row, col = fn.args[:5]
        C.add_attribute("noalias")
        extra = {n: a for (n, _), a in zip(self.extra, fn.args[6 if runtime_cols else 5:])}
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        if runtime_cols:
            masks = [_lane_mask(b, vw, v * vw, fn.args[5], f"mask.v{v}") for v in range(nvec)]
        else:
            masks = [first_lanes(vw, tail_lanes) if (v == nvec - 1 and tail_lanes < vw) else None
                     for v in range(nvec)]
        with for_range(b, 0, nrows, 1, "r") as r:
            crow = b.gep(C, [b.mul(r, ldc)], source_etype=F32, name="c.row")
            rowr = b.add(row, r, name="row.r")
            for v in range(nvec):
                ptr = crow if v == 0 else b.gep(crow, [_i64(v * vw)], source_etype=F32,
                                                name=f"c.v{v}")
                colv = col if v == 0 else b.add(col, _i64(v * vw), name=f"col.{v}")
                lanes = tail_lanes if masks[v] is not None else vw
                ctx = EpilogueContext(b, self.m, rowr, colv, masks[v], lanes, vw, extra)
                if masks[v] is None:
                    value = b.load(ptr, typ=_vec(vw), align=4, name=f"c.r.v{v}")
                    b.store(self.epilogue(ctx, value), ptr, align=4)
                else:
                    value = masked_load_vector(b, ptr, _vec(vw), masks[v], f"c.r.v{v}")
                    masked_store_vector(b, self.epilogue(ctx, value), ptr, masks[v])
        b.ret_void()
        self.epis[key] = fn
        return fn

    def call_ukr(self, b, ukr, ncols, args, nrows, last, row, col, extra) -> None:
        """A micro-kernel on one tile (`args`: A, lda, B, ldb, C, ldc, kc, first[, ncols]),
        then, after the last K block, the epilogue on its `nrows` rows."""
        b.call(ukr, args)
        if self.epilogue is None:
            return
        epi = self.epilogue_fn(ncols)
        cols = [args[8]] if ncols is None else []
        with _if(b, last, "epi"):
            b.call(epi, [args[4], args[5], nrows, row, col] + cols + list(extra))

    # ---- driver -----------------------------------------------------------------------

    def emit_driver(self) -> ir.Function:
        cfg, N, K = self.cfg, self.N, self.K
        nr, mr = cfg.nr, cfg.mr
        # balanced blocks: nb blocks of (at most) kc / nc
        nkb = -(-K // cfg.kc)
        kc_blk = -(-K // nkb)
        npan = -(-N // nr)
        nfull = N // nr
        tail = N - nfull * nr
        pan_per_nc = max(1, cfg.nc // nr)
        njb = -(-npan // pan_per_nc)
        pan_blk = -(-npan // njb)

        arg_tys = [PTR, I64, PTR, PTR, I64, I64, I64] + [t for _, t in self.extra]
        fn = ir.Function(self.m, ir.FunctionType(VOID, arg_tys), f"gemm_{self.name}")
        fn.attributes.add("nounwind")
        names = ["A", "lda", "Bp", "C", "ldc", "m0", "m1"] + [n for n, _ in self.extra]
        for a, n in zip(fn.args, names):
            a.name = n
        A, lda, Bp, C, ldc, m0, m1 = fn.args[:7]
        for a in (A, Bp, C):
            a.add_attribute("noalias")
        extra = list(fn.args[7:])

        # Pack A (MR-row tiles, k-major) when B has enough panels to amortize the copy;
        # leftover rows (< MR) are always read in place.
        pack_a = cfg.pack_a and npan >= 2
        full_ukrs = {r: self.ukr(r, nr) for r in range(1, mr)} if nfull else {}
        tail_ukrs = {r: self.ukr(r, tail) for r in range(1, mr)} if tail else {}
        if nfull:
            full_ukrs[mr] = self.ukr(mr, nr, packed_a=pack_a)
        if tail:
            tail_ukrs[mr] = self.ukr(mr, tail, packed_a=pack_a)

        b = ir.IRBuilder(fn.append_basic_block("entry"))
        ap = None
        if pack_a:
            ap = b.alloca(F32, size=ir.Constant(I64, cfg.mc * kc_blk), name="a.pack")
            ap.align = 64
        ret = fn.append_basic_block("ret")
        blocked = fn.append_basic_block("blocked")
        small = fn.append_basic_block("small.m")
        nrows_all = b.sub(m1, m0, name="rows")
        with _if(b, b.icmp_signed(">", nrows_all, _i64(0), name="nonempty"), "rows"):
            b.cbranch(b.icmp_signed("<", nrows_all, _i64(mr), name="is.small"), small, blocked)
            # Fewer than MR rows (batch-1 rows): no reuse of B to block for, so stream each
            # B panel once over the whole K (kc = K), no A packing.
            b.position_at_end(small)
            self.emit_small_m(b, A, lda, Bp, None, C, ldc, m0, m1, extra)
            b.branch(ret)
            b.position_at_end(blocked)
            with for_range(b, 0, npan, pan_blk, "jp") as jp:            # NC block of panels
                jp_end = smin(b, b.add(jp, _i64(pan_blk), name="jp.end0"), _i64(npan), "jp.end")
                full_end = smin(b, jp_end, _i64(nfull), "jp.full.end")
                with for_range(b, 0, K, kc_blk, "pc") as pc:             # KC block
                    kc = smin(b, b.sub(_i64(K), pc, name="k.left"), _i64(kc_blk), "kc")
                    first = b.icmp_signed("==", pc, _i64(0), name="first")
                    last = b.icmp_signed(">=", b.add(pc, kc, name="pc.end"), _i64(K), name="last")
                    with for_range(b, m0, m1, cfg.mc, "ic") as ic:        # MC block of rows
                        ic_end = smin(b, b.add(ic, _i64(cfg.mc), name="ic.end0"), m1, "ic.end")
                        a_blk = b.gep(A, [pc], source_etype=F32, name="a.blk")
                        nrows = b.sub(ic_end, ic, name="ic.rows")
                        tiles_end = b.add(ic, b.mul(b.udiv(nrows, _i64(mr), name="ic.tiles"),
                                                    _i64(mr), name="ic.tile.rows"),
                                          name="ic.tiles.end")
                        if pack_a:
                            self.emit_pack_a(b, a_blk, lda, ic, tiles_end, kc, ap)
                        blk = dict(a_blk=a_blk, lda=lda, Bp=Bp, ldb=None, C=C, ldc=ldc, pc=pc,
                                   kc=kc,
                                   first=first, last=last, ic=ic, ic_end=ic_end,
                                   tiles_end=tiles_end, ap=ap, extra=extra)
                        if nfull:
                            with for_range(b, jp, full_end, 1, "p") as p:    # B micro-panels
                                self.emit_row_tiles(b, p, full_ukrs, nr, **blk)
                        if tail:
                            has_tail = b.icmp_signed("==", jp_end, _i64(npan), name="has.tail")
                            with _if(b, has_tail, "tail"):
                                self.emit_row_tiles(b, _i64(nfull), tail_ukrs, tail, **blk)
        b.branch(ret)
        b.position_at_end(ret)
        b.ret_void()
        return fn

    def emit_small_m(self, b, A, lda, B, ldb, C, ldc, m0, m1, extra):
        """Rows [m0, m1), fewer than MR: each B panel once over all of K. B is packed
        (ldb None) or read in place from row-major B with leading dimension ldb."""
        cfg, N, K = self.cfg, self.N, self.K
        nr, mr = cfg.nr, cfg.mr
        nfull = N // nr
        tail = N - nfull * nr
        direct = ldb is not None
        yes = ir.Constant(I1, 1)
        blk = dict(a_blk=A, lda=lda, Bp=B, ldb=ldb, C=C, ldc=ldc, pc=_i64(0), kc=_i64(K),
                   first=yes, last=yes, ic=m0, ic_end=m1, tiles_end=m0, ap=None, extra=extra)
        if nfull:
            ukrs = {r: self.ukr(r, nr, b_direct=direct) for r in range(1, mr)}
            with for_range(b, 0, nfull, 1, "sp") as p:
                self.emit_row_tiles(b, p, ukrs, nr, skip_tiles=True, **blk)
        if tail:
            ukrs = {r: self.ukr(r, tail, b_direct=direct) for r in range(1, mr)}
            self.emit_row_tiles(b, _i64(nfull), ukrs, tail, skip_tiles=True, **blk)

    def emit_pack_a(self, b, a_blk, lda, ic, tiles_end, kc, ap):
        """ap[(ir-ic)*kc + k*MR + r] = A[ir + r, pc + k] for the full MR-row tiles."""
        mr = self.cfg.mr
        with for_range(b, ic, tiles_end, mr, "pa.ir") as irow:
            dst = b.gep(ap, [b.mul(b.sub(irow, ic, name="pa.rel"), kc, name="pa.toff")],
                        source_etype=F32, name="pa.dst")
            srcs = [b.gep(a_blk, [b.mul(b.add(irow, _i64(r), name=f"pa.row{r}"), lda,
                                        name=f"pa.roff{r}")],
                          source_etype=F32, name=f"pa.src{r}") for r in range(mr)]
            with for_range(b, 0, kc, 1, "pa.k") as k:
                d = b.gep(dst, [b.mul(k, _i64(mr), name="pa.koff")], source_etype=F32,
                          name="pa.d")
                for r in range(mr):
                    x = b.load(b.gep(srcs[r], [k], source_etype=F32, name=f"pa.s{r}"),
                               typ=F32, align=4, name=f"pa.a{r}")
                    b.store(x, d if r == 0 else
                            b.gep(d, [_i64(r)], source_etype=F32, name=f"pa.d{r}"), align=4)

    def emit_row_tiles(self, b, p, ukrs, ncols, *, a_blk, lda, Bp, ldb, C, ldc, pc, kc, first,
                       last, ic, ic_end, tiles_end, ap, extra, skip_tiles=False):
        """Micro-kernels (of `ncols` columns) over rows [ic, ic_end) of B panel p: full MR-row
        tiles (from the packed A block when ap is given), then the leftover rows."""
        cfg, K = self.cfg, self.K
        mr, nr = cfg.mr, cfg.nr
        col = b.mul(p, _i64(nr), name="col")
        if ldb is None:   # packed panel p, rows from pc
            b_off = b.add(b.mul(p, _i64(K * nr), name="pan.off"),
                          b.mul(pc, _i64(nr), name="pc.off"), name="b.off")
            ldb = _i64(nr)
        else:             # unpacked B: row pc, column col
            b_off = b.add(b.mul(pc, ldb, name="pc.off"), col, name="b.off")
        bptr = b.gep(Bp, [b_off], source_etype=F32, name="b.pan")
        cblk = b.gep(C, [col], source_etype=F32, name="c.col")

        def call(ukr, irow, packed, nrows):
            if packed:
                aptr = b.gep(ap, [b.mul(b.sub(irow, ic, name="a.rel"), kc, name="a.poff")],
                             source_etype=F32, name="a.ptile")
            else:
                aptr = b.gep(a_blk, [b.mul(irow, lda, name="a.roff")], source_etype=F32,
                             name="a.tile")
            cptr = b.gep(cblk, [b.mul(irow, ldc, name="c.roff")], source_etype=F32, name="c.tile")
            self.call_ukr(b, ukr, ncols, [aptr, lda, bptr, ldb, cptr, ldc, kc, first], nrows,
                          last, irow, col, extra)

        if not skip_tiles:
            with for_range(b, ic, tiles_end, mr, "ir") as irow:
                call(ukrs[mr], irow, ap is not None, _i64(mr))
        _leftover_rows(b, b.sub(ic_end, tiles_end, name="rows.left"), mr,
                       lambda r: call(ukrs[r], tiles_end, False, _i64(r)))

    # ---- packing and runtime-B entry ---------------------------------------------------

    def emit_rt(self, gemm_fn: ir.Function, pack_fn: ir.Function, trans_b: bool) -> ir.Function:
        arg_tys = [PTR, I64, PTR, I64, PTR, I64, I64, I64, PTR] + [t for _, t in self.extra]
        fn = ir.Function(self.m, ir.FunctionType(VOID, arg_tys), f"gemm_rt_{self.name}")
        fn.attributes.add("nounwind")
        names = ["A", "lda", "B", "ldb", "C", "ldc", "m0", "m1", "ws"] + [n for n, _ in self.extra]
        for a, n in zip(fn.args, names):
            a.name = n
        A, lda, B, ldb, C, ldc, m0, m1, ws = fn.args[:9]
        extra = list(fn.args[9:])
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        if not trans_b:
            # Fewer than MR rows: read B in place (packing would cost as much as the product)
            rows = b.sub(m1, m0, name="rows")
            small = b.and_(b.icmp_signed(">", rows, _i64(0), name="nonempty"),
                           b.icmp_signed("<", rows, _i64(self.cfg.mr), name="few"),
                           name="is.small")
            direct = fn.append_basic_block("direct")
            packed = fn.append_basic_block("packed")
            b.cbranch(small, direct, packed)
            b.position_at_end(direct)
            self.emit_small_m(b, A, lda, B, ldb, C, ldc, m0, m1, extra)
            b.ret_void()
            b.position_at_end(packed)
        b.call(pack_fn, [B, ldb, ws])
        b.call(gemm_fn, [A, lda, ws, C, ldc, m0, m1] + extra)
        b.ret_void()
        return fn


def _i1(v: bool) -> ir.Constant:
    return ir.Constant(I1, 1 if v else 0)


def emit_gemm(module: ir.Module, name: str, N: int, K: int, target: CpuTarget | None = None, *,
              accumulate: bool = False, epilogue: Epilogue | None = None,
              extra_args: Sequence[tuple[str, ir.Type]] = (), runtime_b: bool = False,
              trans_b: bool = False, cfg: GemmConfig | None = None) -> GemmKernel:
    """Add a GEMM specialized to constant N and K to `module` (see the module docstring for
    the generated signatures). extra_args: (name, llvmlite type) pairs appended to the gemm
    signatures and visible to the epilogue as ctx.args[name]. runtime_b adds pack_b_<name> and
    gemm_rt_<name>; trans_b says the runtime B is stored as [N, K] (it also applies to
    GemmKernel.pack for compile-time packing)."""
    if N < 1 or K < 1:
        raise ValueError(f"gemm {name}: N and K must be >= 1 (got N={N}, K={K})")
    target = target or CpuTarget.host()
    cfg = cfg or gemm_config(target)
    g = _Gen(module, name, N, K, cfg, target, accumulate, epilogue, extra_args)
    gemm_fn = g.emit_driver()
    k = GemmKernel(name=name, N=N, K=K, cfg=cfg, accumulate=accumulate,
                   trans_b=trans_b, gemm_fn=gemm_fn.name, extra_args=tuple(extra_args))
    if runtime_b:
        pack_fn = emit_pack_b(module, name, N, K, cfg, trans_b)
        rt_fn = g.emit_rt(gemm_fn, pack_fn, trans_b)
        k.pack_fn, k.rt_fn = pack_fn.name, rt_fn.name
    return k
