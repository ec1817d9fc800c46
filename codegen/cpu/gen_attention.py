"""attention: for each block of rows of each head, scores -> softmax -> @ v, in cache.

Work items are (batch entry, block of rows of q), as for a matmul whose B is computed at run
time (`gen_linalg._row_chunk`: attention at batch 1 has few heads). A thread packs k_t and v of
an entry once for its run of items. For each block it computes the scores into its own scratch
(rows x N floats, small enough to stay in L2), scaled and masked in the GEMM's store; takes the
softmax of each row in place; and multiplies by v, the node's fused consumers applied in that
GEMM's store. The scores never go through the arena, and no kernel boundary separates the
three steps.
"""

from __future__ import annotations

from llvmlite import ir

from slimc.ir import InternalError, UnsupportedError, dtypes

from . import gemm as gemm_kernels
from .gen_linalg import _batch_index, _row_chunk, item_rows
from .common import emitter, numel, vload, vstore
from .gen_norm import _Axis
from .gen_softmax import softmax_line
from .gen_transpose import transpose_strip
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import F32, I64, PTR, const, i64


def _scores_epilogue(scale: float, mask_shape, N: int):
    """acc * scale + mask[row, col], the mask pointer already at this block's first row."""
    if scale == 1.0 and mask_shape is None:
        return None
    mask_rows, mask_cols = mask_shape[-2:] if mask_shape is not None else (0, 0)

    def epi(ctx, acc):
        b = ctx.builder
        if scale != 1.0:
            acc = b.fmul(acc, ctx.splat(const(F32, scale)), name="scaled")
        if mask_shape is None:
            return acc
        mp = b.bitcast(ctx.args["mask"], ir.PointerType(F32))
        row = b.mul(ctx.row, i64(mask_cols)) if mask_rows != 1 else i64(0)
        if mask_cols == 1:
            mv = ctx.splat(b.load(b.gep(mp, [row]), name="mask"))
        else:
            mv = ctx.load_vector(mp, b.add(row, ctx.col), name="mask")
        return b.fadd(acc, mv, name="masked")

    return epi


def _epilogue_here(node):
    """Consumers are applied in the store of P @ v, which indexes the result as [.., M, E]
    rows: not when the rows land heads-last."""
    return "when it stores heads last" if node.attrs.get("heads_last", 0) else None


def attention_operands(kb, node) -> tuple:
    """An attention node read for a generator (this one and the GPU's): (q, k, v, mask or
    None, out, scale, zero_nan, heads_last, inputs_heads_last, batch dims, M, D, N, E). The
    batch dims end with the heads where the inputs are heads last; k is k_t [.., D, N], or
    the keys [.., N, H, D] there."""
    q, k, v = node.inputs[:3]
    mask = node.inputs[3] if len(node.inputs) > 3 else None
    attrs = kb.attrs(node)
    qs, ks, vs = kb.shape(q), kb.shape(k), kb.shape(v)
    inputs_heads_last = int(attrs["inputs_heads_last"])
    if inputs_heads_last:  # q [.., M, H, D], keys [.., N, H, D], v [.., N, H, E]
        batch, M, D, N = list(qs[:-3]) + [qs[-2]], qs[-3], qs[-1], ks[-3]
    else:
        batch, M, D, N = list(qs[:-2]), qs[-2], qs[-1], ks[-1]
    return (q, k, v, mask, node.outputs[0], float(attrs["scale"]), int(attrs["zero_nan"]),
            int(attrs["heads_last"]), inputs_heads_last, batch, M, D, N, vs[-1])


def pack_keys(kb: KernelBuilder, keys, ldk: int, packed, N: int, D: int, nr: int) -> None:
    """The scores GEMM's packed B (k_t [D, N] in panels of nr columns: panel p holds
    packed[p*D*nr + d*nr + j] = k_t[d, p*nr + j], zeros past N) straight from the keys as rows
    (keys[n*ldk + d]): each strip of vw keys is transposed in registers into its panel, where
    packing k_t took a transpose kernel and a copy."""
    b, vw = kb.b, kb.vector_width
    if nr % vw:
        raise InternalError(f"panels of {nr} columns are not whole strips of {vw}",
                            where=kb.fn.name)
    npan = -(-N // nr)
    if N % nr:  # the last panel's columns past N
        last = b.gep(packed, [i64((npan - 1) * D * nr)], name="last_panel")
        zero = ir.Constant(ir.VectorType(F32, vw), [0.0] * vw)
        with kb.loop(0, D * nr // vw, name="zero") as z:
            at = b.bitcast(b.gep(last, [b.mul(z, i64(vw))]), ir.PointerType(zero.type))
            b.store(zero, at, align=4)
    with kb.loop(0, -(-N // vw), name="strip") as strip:
        i0 = b.mul(strip, i64(vw), name="key0")
        panel = b.udiv(i0, i64(nr), name="panel")
        # key n of this panel, dim d at panel_base[d*nr + n]
        panel_base = b.gep(packed, [b.mul(panel, i64(nr * (D - 1)))], name="panel_base")
        transpose_strip(kb, keys, panel_base, i0, N, D, ldx=ldk, ldy=nr)


@generator("attention", epilogue=_epilogue_here)
def attention(kb: KernelBuilder, node) -> None:
    q, k, v, mask, out, scale, zero_nan, heads_last, inputs_heads_last, batch, M, D, N, E = \
        attention_operands(kb, node)
    if q.type.dtype != dtypes.f32 or min(M, D, N, E) == 0:
        raise UnsupportedError(f"attention kernel for {q.type} x {k.type} x {v.type}: float32 "
                               f"without empty dims only", node=node.label, op=node.op)
    b = kb.b
    name = llvm_name(out.name)
    n_batch = numel(batch)
    kb.cost = 2 * n_batch * M * N * (D + E) + 20 * n_batch * M * N
    rank = len(batch) + 2
    mask_shape = None
    if mask is not None:
        mask_shape = [1] * (rank - len(kb.shape(mask))) + list(kb.shape(mask))

    scores_gemm = gemm_kernels.emit_gemm(
        kb.module, f"{kb.fn.name}.{name}.scores", N, D, kb.target,
        epilogue=_scores_epilogue(scale, mask_shape, N),
        extra_args=[("mask", PTR)] if mask is not None else [], runtime_b=True)
    epilogue, fused_extra, fused_vals = kb.gemm_epilogue(out, E, None, row_offset=True)
    heads = batch[-1] if heads_last else 1  # of the result's rows
    if heads_last and fused_extra:
        raise InternalError("attention stores heads last with a fused epilogue",
                            where=kb.fn.name)
    # rows of the result: E floats apart, or H * E when each head's rows interleave
    pv_gemm = gemm_kernels.emit_gemm(kb.module, f"{kb.fn.name}.{name}.pv", E, N, kb.target,
                                     epilogue=epilogue, extra_args=fused_extra, runtime_b=True)

    rows_per_item = _row_chunk(n_batch, M, scores_gemm.cfg.mr)
    chunks = -(-M // rows_per_item)
    items = n_batch * chunks
    kb.parallel_extent = items
    # one slot per call (a thread's run of items), at its first item: packed k_t, packed v,
    # and the block of scores
    slot = scores_gemm.packed_size + pv_gemm.packed_size + rows_per_item * N
    ws = b.bitcast(kb.scratch(4 * slot * items, name + ".work"), ir.PointerType(F32))
    kp = kb.call_slot(ws, slot, "k_packed")
    vp = b.gep(kp, [i64(scores_gemm.packed_size)], name="v_packed")
    scores = b.gep(vp, [i64(pv_gemm.packed_size)], name="scores")
    packed_entry = b.alloca(I64, name="packed_entry")
    b.store(i64(-1), packed_entry)
    Q, K, V = kb.ptr(q), kb.ptr(k), kb.ptr(v)
    C = kb.ptr(kb.outputs[0])
    Mask = kb.ptr(mask) if mask is not None else None
    e = emitter(kb, dtypes.f32, name)

    with kb.loop(kb.begin, kb.end, name="item") as item:
        bi, m0, m1 = item_rows(b, item, chunks, rows_per_item, M)
        rows = b.sub(m1, m0, name="rows")
        first_row = b.add(b.mul(bi, i64(M)), m0, name="first_row")  # in all of q's rows
        if inputs_heads_last:  # entry bi is head bi % H of outer entry bi / H
            H = batch[-1]
            outer, head = b.udiv(bi, i64(H)), b.urem(bi, i64(H))
            q_at = b.mul(b.add(b.mul(b.add(b.mul(outer, i64(M)), m0), i64(H)), head), i64(D))
            k_at = b.mul(b.add(b.mul(outer, i64(N * H)), head), i64(D), name="k_at")
            v_at = b.mul(b.add(b.mul(outer, i64(N * H)), head), i64(E), name="v_at")
            lda, ldk, ldv = H * D, H * D, H * E
        else:
            q_at = b.mul(first_row, i64(D))
            k_at, v_at = b.mul(bi, i64(D * N), name="k_at"), b.mul(bi, i64(N * E), name="v_at")
            lda, ldk, ldv = D, N, E
        with b.if_then(b.icmp_signed("!=", b.load(packed_entry), bi)):
            if inputs_heads_last:
                pack_keys(kb, b.gep(K, [k_at]), ldk, kp, N, D, scores_gemm.cfg.nr)
            else:
                b.call(kb.module.globals[scores_gemm.pack_fn], [b.gep(K, [k_at]), i64(ldk), kp])
            b.call(kb.module.globals[pv_gemm.pack_fn], [b.gep(V, [v_at]), i64(ldv), vp])
            b.store(bi, packed_entry)
        mask_args = []
        if mask is not None:
            mask_rows, mask_cols = mask_shape[-2:]
            off = kb._ir(kb.imul(_batch_index(kb, bi, batch, mask_shape[:-2]), mask_rows * mask_cols))
            if mask_rows != 1:
                off = b.add(off, b.mul(m0, i64(mask_cols)))
            mask_args = [b.bitcast(b.gep(Mask, [off]), PTR)]
        b.call(kb.module.globals[scores_gemm.gemm_fn],
               [b.gep(Q, [q_at], name="q_rows"), i64(lda), kp, scores, i64(N), i64(0), rows]
               + mask_args)

        with kb.loop(0, rows, name="srow") as r:
            base = b.mul(r, i64(N), name="sbase")

            def at(l, n=None):  # where a score is, and its exp and probability after it
                return scores, b.add(base, kb._ir(l), name="soff")

            def value(l, n):
                return vload(kb, *at(l), n, "s")

            def store(l, n, p):
                if zero_nan:
                    p = b.select(b.fcmp_unordered("uno", p, p), const(p.type, 0.0), p, name="p")
                vstore(kb, p, *at(l), "p")

            softmax_line(kb, e, _Axis(kb, e, F32, N), value, at, store)

        row0 = [first_row] if fused_extra else []
        if heads_last:  # [outer, M, H, E]: entry bi is head bi % H of outer bi / H
            outer, head = b.udiv(bi, i64(heads)), b.urem(bi, i64(heads))
            c_off = b.add(b.mul(b.add(b.mul(outer, i64(M)), m0), i64(heads * E)),
                          b.mul(head, i64(E)), name="c_off")
        else:
            c_off = b.mul(first_row, i64(E), name="c_off")
        b.call(kb.module.globals[pv_gemm.gemm_fn],
               [scores, i64(N), vp, b.gep(C, [c_off]), i64(heads * E), i64(0), rows]
               + fused_vals + row0)
    b.ret_void()
