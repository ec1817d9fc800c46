"""Quantized ops: matmul_integer on the int8 tiles of gemm_int8.py, dynamic_quantize, and
exact loops for the cases the tiles do not take.

matmul_integer(a, b, a_zp, b_zp) with a constant 2-D b (a quantized layer's weights):

* b is packed once at compile time as the signed panel side; a (the activations, u8 or i8)
  is read in place as the row side, its batch axes folded into rows.
* (a - za)(b - zb) summed over k is acc - za * (colsum(b) - K * zb) - zb * rowsum(a). With a
  constant za the first term is one constant per column, added to the accumulator: the
  zero-point compensation folded into a bias at compile time. A per-row za (dynamic
  quantization) multiplies the same constant vector by the row's zero point. The rowsum term
  exists only for weights with a nonzero zero point (never for slimc.quantize's symmetric
  weights) and costs one pass over the row block's bytes.
* The fused consumers (dequantize, bias, activation, the next layer's quantize) run on the
  int32 accumulator vector in the store (`kb.gemm_epilogue`): the int32 never reaches memory.
* Work items are blocks of rows x blocks of panels, about ITEMS of them, so two threads
  share a batch-1 layer (few rows) as well as a long sequence.

SLIMC_DEBUG=quant prints, per layer, the path the target gave it and why. conv_integer, on the
same tiles, is in gen_qconv.py.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.graph import constant_data

from . import gemm_int8 as q8
from .common import const_table, hreduce, smin, stack_row
from .gemm_epilogue import EpilogueContext
from .gen_linalg import _batch_index, _norm_shapes, _out_batch
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import F32, I8, I32, const, i64, masked_store_vector, splat, vector_of
from .scalar_ops import LOWERINGS, Emitter

ITEMS = 8  # work items to aim for: blocks of rows x blocks of panels


def debug(message: str) -> None:
    """SLIMC_DEBUG=quant: which kernel a quantized layer got and why."""
    from slimc.ir import debug

    if debug.enabled("quant"):
        debug.log("quant", message)


def _gemm_plan(kb: KernelBuilder, node):
    """(M, K, N, rows) when the int8 tiles take this matmul_integer, else (None, why)."""
    a, b = node.inputs[0], node.inputs[1]
    a_zp = node.inputs[2] if len(node.inputs) > 2 else None
    b_zp = node.inputs[3] if len(node.inputs) > 3 else None
    a_shape, b_shape = kb.shape(a), kb.shape(b)
    if constant_data(b) is None:
        return None, "b is computed at run time (the tiles pack constant weights)"
    if len(b_shape) > 2:
        return None, f"b has batch axes {list(b_shape[:-2])}"
    if b_zp is not None and constant_data(b_zp) is None:
        return None, "b's zero point is computed at run time"
    batch_a, M, K, _, N = _norm_shapes(a_shape, b_shape)
    if K == 0:
        return None, "K is 0"
    rows = M
    for d in batch_a:
        rows *= d
    if a_zp is not None and a_zp.type.numel not in (1, M, rows):
        return None, f"a's zero point {a_zp.type} is neither per tensor nor per row"
    return (M, K, N, rows), None


@generator("matmul_integer", epilogue=True, epilogue_any_dtype=True)
def matmul_integer(kb: KernelBuilder, node) -> None:
    plan, why = _gemm_plan(kb, node)
    if plan is None:
        debug(f"{node.label}: matmul_integer by exact loops: {why}")
        return matmul_integer_loops(kb, node)
    M, K, N, R = plan
    path = q8.int8_path(kb.target)
    debug(f"{node.label}: int8 GEMM {R}x{K} @ {K}x{N}: {q8.why_path(kb.target)}")
    a, bw = node.inputs[0], node.inputs[1]
    a_zp = node.inputs[2] if len(node.inputs) > 2 else None
    b_zp = node.inputs[3] if len(node.inputs) > 3 else None
    out = node.outputs[0]
    bld = kb.b
    name = llvm_name(out.name)
    kb.cost = 2 * R * N * K

    # the weights as the signed panel side; the compensation constants per column
    B = bw.data.reshape(K, N) if bw.data.ndim == 2 else bw.data.reshape(K, 1)
    zb_raw = np.zeros(N, np.int64) if b_zp is None else \
        np.broadcast_to(np.asarray(b_zp.data).reshape(-1).astype(np.int64), (N,))
    Bs, zb = q8.to_s8_side(B, zb_raw)
    npan = q8.panel_count(N, path)
    width = npan * path.nr
    colsum = Bs.astype(np.int64).sum(axis=0)
    cc = np.zeros(width, np.int64)
    cc[:N] = colsum - K * zb
    a_signed = a.type.dtype == dtypes.i8
    za_shift = 128 if a_signed else 0
    za_const = constant_data(a_zp) if a_zp is not None else np.zeros((), np.int64)
    packed = q8.pack_panels(Bs, path)
    Bp = bld.bitcast(kb.substitute_constant(bw, packed, name + ".packed"), ir.PointerType(I8))
    if za_const is not None and np.asarray(za_const).size == 1:
        za = int(np.asarray(za_const).reshape(())) + za_shift
        col_term, za_runtime = -za * cc, None
    else:
        col_term, za_runtime = cc, a_zp
    check_i32(col_term, node)
    col_table = const_table(kb, col_term.astype(np.int64), "zp.cols", I32)
    has_zb = bool(np.any(zb != 0))
    zb_table = None
    if has_zb:
        zbw = np.zeros(width, np.int64)
        zbw[:N] = zb
        zb_table = const_table(kb, zbw, "zp.b", I32)

    epilogue, extra, values = kb.gemm_epilogue(out, N)
    args = {nm: v for (nm, _), v in zip(extra, values)}
    dst = kb.ptr(kb.outputs[0])
    dst_dt = kb.outputs[0].type.dtype
    A = bld.bitcast(kb.ptr(a), ir.PointerType(I8))

    # work items: blocks of rows x blocks of panels
    tiles = -(-R // path.mr)
    n_rb = min(tiles, 2 if npan >= 4 else ITEMS)
    RB = path.mr * -(-tiles // n_rb)
    n_rb = -(-R // RB)
    n_pb = min(npan, max(1, -(-ITEMS // n_rb)))
    PB = -(-npan // n_pb)
    n_pb = -(-npan // PB)
    kb.parallel_extent = n_rb * n_pb
    nfull = N // path.nr
    last_cols = N - nfull * path.nr
    rowsum = stack_row(kb, I32, RB, name + ".rowsum") if has_zb else None
    dot = q8.DotStep(bld, path, row_is_u8=True, row_flip=a_signed)

    with kb.loop(kb.begin, kb.end, name="item") as item:
        rb = bld.udiv(item, i64(n_pb), name="rb")
        pb = bld.urem(item, i64(n_pb), name="pb")
        r0 = bld.mul(rb, i64(RB), name="r0")
        r1 = smin(bld, bld.add(r0, i64(RB)), i64(R), "r1")
        p0 = bld.mul(pb, i64(PB), name="p0")
        p1 = smin(bld, bld.add(p0, i64(PB)), i64(npan), "p1")
        if has_zb:
            _row_sums(kb, A, K, r0, r1, rowsum, a_signed)

        def row_ptr(r):
            return bld.gep(A, [bld.mul(r, i64(K))], inbounds=True, name="a.row")

        def store(b, row, col, acc, mask, nlanes):
            vt = acc.type
            if za_runtime is None:
                v = b.add(acc, _vec_load(b, col_table, col, vt, "zp.col"), name="acc.zp")
            else:
                zr = _za_at(kb, za_runtime, row, M, R, za_shift)
                cv = _vec_load(b, col_table, col, vt, "cc")
                v = b.sub(acc, b.mul(splat(b, zr, vt.count), cv), name="acc.zp")
            if has_zb:
                rs = b.load(b.gep(rowsum, [b.sub(row, r0)]), name="rowsum")
                v = b.sub(v, b.mul(_vec_load(b, zb_table, col, vt, "zb"), splat(b, rs, vt.count)),
                          name="acc.zpb")
            if epilogue is not None:
                ctx = EpilogueContext(b, kb.module, row, col, mask, nlanes, vt.count, args)
                v = epilogue(ctx, v)
            store_vector(b, v, dst, b.add(b.mul(row, i64(N)), col), mask, dst_dt)

        def panels(lo, hi, ncols, tag):
            with kb.loop(lo, hi, name=tag) as p:
                panel = bld.gep(Bp, [bld.mul(p, i64(q8.padded_k(K, path) * path.nr))],
                                inbounds=True, name=tag + ".ptr")
                col0 = bld.mul(p, i64(path.nr), name=tag + ".col0")
                q8.emit_row_tiles(bld, dot, row_ptr, r0, r1, panel, col0, K, ncols, store, tag)

        if nfull:
            panels(p0, smin(bld, p1, i64(nfull), "p1.full"), path.nr, "pan")
        if last_cols:
            has_last = bld.icmp_signed("==", p1, i64(npan), name="has.last")
            with bld.if_then(has_last):
                panels(i64(nfull), i64(npan), last_cols, "pan.last")
    bld.ret_void()


def check_i32(x: np.ndarray, node) -> None:
    """Compile-time zero-point terms must fit the int32 accumulators."""
    if np.abs(x).max(initial=0) >= 2 ** 31:
        from slimc.ir import UnsupportedError

        raise UnsupportedError("zero-point compensation overflows int32 (K too large)",
                               node=node.label, op=node.op)


def _vec_load(b, table, col, vt, name):
    """vt from a column table padded to whole panels (never read past its end)."""
    p = b.bitcast(b.gep(table, [col], inbounds=True), ir.PointerType(vt))
    return b.load(p, align=4, name=name)


def store_vector(b, v, dst, index, mask, dt):
    """Store a kernel's result (any dtype, scalar or vector, masked when partial)."""
    p = b.gep(dst, [index], inbounds=True)
    if mask is None:
        b.store(v, b.bitcast(p, ir.PointerType(v.type)), align=max(1, dt.itemsize))
    else:
        masked_store_vector(b, v, p, mask)


def _za_at(kb: KernelBuilder, za, row, M: int, R: int, shift: int):
    """The (run-time) zero point of `row` as i32: per tensor, per row of a matrix, or per row
    of the folded batch."""
    b = kb.b
    n = za.type.numel
    idx = i64(0) if n == 1 else row if n == R else b.urem(row, i64(M))
    raw = b.load(b.gep(kb.ptr(za), [idx], inbounds=True), name="za")
    z = b.sext(raw, I32) if za.type.dtype == dtypes.i8 else b.zext(raw, I32)
    return b.add(z, I32(shift)) if shift else z


def _row_sums(kb: KernelBuilder, A, K: int, r0, r1, out, flip: bool) -> None:
    """out[r - r0] = sum_k a'[r, k] (bytes as the unsigned side) for rows [r0, r1)."""
    b = kb.b
    acc = b.alloca(I32, name="rowsum.acc")
    with kb.loop(r0, r1, name="rs.r") as r:
        b.store(I32(0), acc)
        base = b.mul(r, i64(K))
        with kb.loop(0, K, name="rs.k") as k:
            x = b.load(b.gep(A, [b.add(base, k)]))
            if flip:
                x = b.xor(x, ir.Constant(I8, 0x80))
            b.store(b.add(b.load(acc), b.zext(x, I32)), acc)
        b.store(b.load(acc), b.gep(out, [b.sub(r, r0)]))


def matmul_integer_loops(kb: KernelBuilder, node) -> None:
    """Any matmul_integer, one exact int32 dot product per output element."""
    a, bv = node.inputs[0], node.inputs[1]
    a_zp = node.inputs[2] if len(node.inputs) > 2 else None
    b_zp = node.inputs[3] if len(node.inputs) > 3 else None
    out = node.outputs[0]
    a_shape, b_shape = kb.shape(a), kb.shape(bv)
    batch_a, M, K, batch_b, N = _norm_shapes(a_shape, b_shape)
    out_batch = _out_batch(kb.shape(out), a_shape, b_shape)
    n_batch = int(np.prod(out_batch, dtype=np.int64)) if out_batch else 1
    b = kb.b
    kb.parallel_extent = n_batch * M
    kb.cost = 2 * n_batch * M * N * K
    A, B = kb.ptr(a), kb.ptr(bv)

    def ext(x, dt):
        return b.sext(x, I32) if dt == dtypes.i8 else b.zext(x, I32)

    def zp_at(zp, index_last, per: int):
        if zp is None:
            return I32(0)
        n = zp.type.numel
        idx = i64(0) if n == 1 else index_last
        if n != 1 and n != per:
            idx = b.urem(index_last, i64(n))
        return ext(b.load(b.gep(kb.ptr(zp), [idx])), zp.type.dtype)

    acc = b.alloca(I32, name=llvm_name(out.name) + ".acc")
    with kb.loop(kb.begin, kb.end, name="row") as row:
        bi = b.udiv(row, i64(M), name="bi")
        i = b.urem(row, i64(M), name="i")
        a_base = kb.imul(_batch_index(kb, bi, out_batch, batch_a), M * K)
        b_base = kb.imul(_batch_index(kb, bi, out_batch, batch_b), K * N)
        za = zp_at(a_zp, i if (a_zp is not None and a_zp.type.numel == M) else row, M)
        with kb.loop(0, N, name="j") as j:
            zb = zp_at(b_zp, j, N)
            b.store(I32(0), acc)
            with kb.loop(0, K, name="k") as k:
                x = b.load(b.gep(A, [kb._ir(kb.iadd(a_base, b.add(b.mul(i, i64(K)), k)))]))
                y = b.load(b.gep(B, [kb._ir(kb.iadd(b_base, b.add(b.mul(k, i64(N)), j)))]))
                prod = b.mul(b.sub(ext(x, a.type.dtype), za), b.sub(ext(y, bv.type.dtype), zb))
                b.store(b.add(b.load(acc), prod), acc)
            flat = b.add(b.mul(row, i64(N)), j)
            kb.store_result(out, kb.delinear(flat, kb.shape(out)), b.load(acc, name="dot"))
    b.ret_void()


# ----- dynamic_quantize --------------------------------------------------------------------------

@generator("dynamic_quantize")
def dynamic_quantize(kb: KernelBuilder, node) -> None:
    """Per row (or the whole tensor as one row): the range in one vector pass, then the
    quantize lowering over the row. Rows are the work items."""
    x = node.inputs[0]
    shape = kb.shape(x)
    per_row = bool(kb.attrs(node)["per_row"])
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    L = (shape[-1] if shape else 1) if per_row else n
    rows = n // L if L else 0
    b = kb.b
    W = kb.vector_width
    outs = {id(v): v for v in kb.outputs}
    q, sc, zp = node.outputs
    X = kb.ptr(x)
    e = Emitter(b, [dtypes.f32], dtypes.f32, kb.fast_math, llvm_name(q.name))
    kb.parallel_extent = max(1, rows)
    kb.cost = 3 * n
    if L == 0:
        b.ret_void()
        return
    vt = vector_of(F32, W)
    lo_acc = b.alloca(vt, name="lo.acc")
    hi_acc = b.alloca(vt, name="hi.acc")
    with kb.loop(kb.begin, kb.end, name="row") as r:
        base = b.mul(r, i64(L), name="base")
        b.store(ir.Constant(vt, [0.0] * W), lo_acc)
        b.store(ir.Constant(vt, [0.0] * W), hi_acc)
        vend = (L // W) * W

        def ld(i, lanes):
            p = b.gep(X, [b.add(base, i)], inbounds=True)
            if lanes == 1:
                return b.load(p)
            return b.load(b.bitcast(p, ir.PointerType(vector_of(F32, lanes))), align=4)

        if vend:
            with kb.loop(0, vend, W, name="mm") as i:
                v = ld(i, W)
                b.store(e.intrinsic("minnum", [b.load(lo_acc), v]), lo_acc)
                b.store(e.intrinsic("maxnum", [b.load(hi_acc), v]), hi_acc)
        lo = hreduce(e, b.load(lo_acc), "minnum")
        hi = hreduce(e, b.load(hi_acc), "maxnum")
        if vend < L:
            lo_s = b.alloca(F32)
            hi_s = b.alloca(F32)
            b.store(lo, lo_s)
            b.store(hi, hi_s)
            with kb.loop(vend, L, name="mm.s") as i:
                v = ld(i, 1)
                b.store(e.intrinsic("minnum", [b.load(lo_s), v]), lo_s)
                b.store(e.intrinsic("maxnum", [b.load(hi_s), v]), hi_s)
            lo, hi = b.load(lo_s), b.load(hi_s)
        scale = b.fdiv(b.fsub(hi, lo), const(F32, 255.0), name="scale")
        scale = b.select(b.fcmp_ordered("==", scale, const(F32, 0.0)), const(F32, 1.0), scale,
                         name="scale.nz")
        zpf = e.intrinsic("roundeven", [b.fsub(const(F32, 0.0), b.fdiv(lo, scale))])
        zpf = e.intrinsic("maxnum", [zpf, const(F32, 0.0)])
        zpf = e.intrinsic("minnum", [zpf, const(F32, 255.0)])
        zpi = b.trunc(b.fptosi(zpf, I32), I8, name="zp")
        if id(sc) in outs:
            b.store(scale, b.gep(kb.ptr(sc), [r if per_row else i64(0)]))
        if id(zp) in outs:
            b.store(zpi, b.gep(kb.ptr(zp), [r if per_row else i64(0)]))
        if id(q) in outs:
            Q = kb.ptr(q)
            qe = Emitter(b, [dtypes.f32, dtypes.f32, dtypes.u8], dtypes.u8, kb.fast_math,
                         llvm_name(q.name))
            for lo_i, hi_i, lanes in ((0, vend, W), (vend, L, 1)):
                if hi_i <= lo_i:
                    continue
                with kb.loop(lo_i, hi_i, lanes, name=f"q{lanes}") as i:
                    sv, zv = splat(b, scale, lanes), splat(b, zpi, lanes)
                    y = LOWERINGS["quantize"](qe, [ld(i, lanes), sv, zv], {})
                    p = b.gep(Q, [b.add(base, i)], inbounds=True)
                    b.store(y, b.bitcast(p, ir.PointerType(y.type)) if lanes > 1 else p, align=1)
    b.ret_void()
