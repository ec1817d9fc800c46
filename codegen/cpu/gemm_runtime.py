"""The run-time-shape GEMM: N and K are arguments, one copy per module serves every GEMM
convolution (N = output pixels of a chunk, K = Cin*kh*kw).

It is built on gemm.py's generator: the same micro-kernels (`_Gen.ukr` with the columns of
the last panel a run-time argument, masked C), register tile, k-split and summation order,
and its loop helpers; this module adds the driver (K blocks, MC blocks of A, NR panels of B)
and the packing of B for shapes only known at run time.
"""

from __future__ import annotations

from llvmlite import ir

from .common import smin
from .gemm import F32, I1, I64, VOID, _Gen, _i64, _lane_mask, _leftover_rows, _vec
from .gemm_epilogue import EpilogueContext
from .gemm_pack import GemmConfig, gemm_config
from .llvm_util import OPAQUE_PTR as PTR, for_range, masked_load_vector
from .target import CpuTarget

RUNTIME_KC = 256  # K block: a KC x NR panel of B stays in L1 across the row tiles


def _row_bias(ctx: EpilogueContext, v: ir.Value) -> ir.Value:
    """Epilogue of the run-time GEMM: + bias[row] when has_bias (without one, the bias
    pointer may be null: a zero constant is read instead, and the sum is not taken, so -0.0
    stays -0.0)."""
    b, m = ctx.builder, ctx.module
    bias, has_bias = ctx.args["bias"], ctx.args["has_bias"]
    zero = m.globals.get("slimc_gemm_rt.no_bias")
    if zero is None:
        zero = ir.GlobalVariable(m, F32, name="slimc_gemm_rt.no_bias")
        zero.global_constant = True
        zero.linkage = "internal"
        zero.initializer = ir.Constant(F32, 0.0)
    p = b.select(has_bias, b.gep(bias, [ctx.row], source_etype=F32, name="bias.p"), zero,
                 name="bias.src")
    plus = b.fadd(v, ctx.splat(b.load(p, typ=F32, name="bias"), "bias.v"), name="acc.bias")
    return b.select(has_bias, plus, v, name="acc.out")


def emit_runtime_gemm(module: ir.Module, target: CpuTarget | None = None,
                      cfg: GemmConfig | None = None) -> tuple[ir.Function, ir.Function]:
    """(gemm, pack) for shapes known only at run time, emitted once per module:

        void slimc_gemm_rt(float* A, i64 lda, float* B, i64 ldb, i64 pstride, i64 K, i64 N,
                           float* C, i64 ldc, i64 m0, i64 m1, float* bias, i1 has_bias)
            rows [m0, m1) of C = A[:, :K] @ B (+ bias[row]). B in panels of NR columns: panel
            p starts at B + p*pstride, its rows ldb apart -- packed (ldb = NR, pstride = K*NR)
            or row-major with the columns padded to a multiple of NR (ldb, pstride = NR).
        void slimc_pack_rt(float* B, i64 ldb, i64 K, i64 N, float* Bp)
            Bp[p][k][0:NR] = B[k, p*NR : p*NR+NR], zero past N.

    The micro-kernels are the compile-time GEMM's (`_Gen.ukr`, with the columns a run-time
    argument): the same register tile, k-split and summation order. A is read in place."""
    target = target or CpuTarget.host()
    cfg = cfg or gemm_config(target)
    existing = module.globals.get("slimc_gemm_rt")
    if existing is not None:
        return existing, module.globals["slimc_pack_rt"]
    g = _Gen(module, "slimc_gemm_rt", 0, 0, cfg, target, False, _row_bias,
             [("bias", PTR), ("has_bias", I1)])
    ukrs = {r: g.ukr(r, None, b_direct=True) for r in range(1, cfg.mr + 1)}
    return _emit_runtime_driver(module, g, ukrs), _emit_runtime_pack(module, cfg)


def _fn(m: ir.Module, name: str, args, names) -> tuple[ir.Function, ir.IRBuilder]:
    fn = ir.Function(m, ir.FunctionType(VOID, args), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    for a, n in zip(fn.args, names):
        a.name = n
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _emit_runtime_driver(m: ir.Module, g: _Gen, ukrs: dict) -> ir.Function:
    cfg = g.cfg
    mr, NR = cfg.mr, cfg.nr
    fn, b = _fn(m, "slimc_gemm_rt",
                [PTR, I64, PTR, I64, I64, I64, I64, PTR, I64, I64, I64, PTR, I1],
                ["A", "lda", "B", "ldb", "pstride", "K", "N", "C", "ldc", "m0", "m1", "bias",
                 "has_bias"])
    A, lda, B, ldb, pstride, K, N, C, ldc, m0, m1, bias, has_bias = fn.args
    npan = b.udiv(b.add(N, _i64(NR - 1)), _i64(NR), name="npan")
    with for_range(b, 0, K, RUNTIME_KC, "pc") as pc:
        kc = smin(b, b.sub(K, pc), _i64(RUNTIME_KC), "kc")
        first = b.icmp_signed("==", pc, _i64(0), name="first")
        last = b.icmp_signed(">=", b.add(pc, kc, name="pc.end"), K, name="last")
        apc = b.gep(A, [pc], source_etype=F32, name="a.pc")
        with for_range(b, m0, m1, cfg.mc, "ic") as ic:  # MC x KC block of A: L2-resident
            ic_end = smin(b, b.add(ic, _i64(cfg.mc)), m1, "ic.end")
            rows = b.sub(ic_end, ic, name="rows")
            tiles_end = b.add(ic, b.mul(b.udiv(rows, _i64(mr)), _i64(mr)), name="tiles.end")
            rem = b.sub(ic_end, tiles_end, name="rows.left")
            with for_range(b, 0, npan, 1, "p") as p:  # KC x NR panel of B: L1-resident
                col = b.mul(p, _i64(NR), name="col")
                ncols = smin(b, b.sub(N, col), _i64(NR), "ncols")
                bpan = b.gep(B, [b.add(b.mul(p, pstride), b.mul(pc, ldb))], source_etype=F32,
                             name="b.pan")
                cpan = b.gep(C, [col], source_etype=F32, name="c.pan")

                def call(ukr, i, nrows):
                    a = b.gep(apc, [b.mul(i, lda)], source_etype=F32, name="a.tile")
                    c = b.gep(cpan, [b.mul(i, ldc)], source_etype=F32, name="c.tile")
                    g.call_ukr(b, ukr, None, [a, lda, bpan, ldb, c, ldc, kc, first, ncols],
                               nrows, last, i, col, [bias, has_bias])

                with for_range(b, ic, tiles_end, mr, "i") as i:
                    call(ukrs[mr], i, _i64(mr))
                _leftover_rows(b, rem, mr, lambda r: call(ukrs[r], tiles_end, _i64(r)))
    b.ret_void()
    return fn


def _emit_runtime_pack(m: ir.Module, cfg: GemmConfig) -> ir.Function:
    vw, nv, NR = cfg.vw, cfg.nv, cfg.nr
    vt = _vec(vw)
    fn, b = _fn(m, "slimc_pack_rt", [PTR, I64, I64, I64, PTR], ["B", "ldb", "K", "N", "Bp"])
    B, ldb, K, N, Bp = fn.args
    B.add_attribute("noalias")
    Bp.add_attribute("noalias")
    npan = b.udiv(b.add(N, _i64(NR - 1)), _i64(NR), name="npan")
    with for_range(b, 0, npan, 1, "p") as p:
        col = b.mul(p, _i64(NR), name="col")
        full = b.icmp_signed(">=", b.sub(N, col), _i64(NR), name="full")
        masks = [_lane_mask(b, vw, 0, b.sub(N, b.add(col, _i64(v * vw))), f"m{v}")
                 for v in range(nv)]
        src0 = b.gep(B, [col], source_etype=F32, name="src.pan")
        dst0 = b.gep(Bp, [b.mul(p, b.mul(K, _i64(NR)))], source_etype=F32, name="dst.pan")
        with b.if_else(full) as (whole, part):
            for masked, blk in ((False, whole), (True, part)):
                with blk:
                    with for_range(b, 0, K, 1, "k" + ("m" if masked else "")) as k:
                        src = b.gep(src0, [b.mul(k, ldb)], source_etype=F32, name="src")
                        dst = b.gep(dst0, [b.mul(k, _i64(NR))], source_etype=F32, name="dst")
                        for v in range(nv):
                            sp = b.gep(src, [_i64(v * vw)], source_etype=F32, name=f"s{v}")
                            if masked:
                                x = masked_load_vector(b, sp, vt, masks[v], name=f"x{v}")
                            else:
                                x = b.load(sp, typ=vt, align=4, name=f"x{v}")
                            b.store(x, b.gep(dst, [_i64(v * vw)], source_etype=F32), align=4)
    b.ret_void()
    return fn
