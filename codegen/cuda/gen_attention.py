"""attention on a GPU: softmax(q @ k_t * scale + mask) @ v with the scores kept on chip.

FlashAttention's scheme in fp32 with warp-level tiles. A block takes BM = warps * RW query
rows of one batch entry (one head): warp w the rows w*RW .. w*RW + RW-1. It walks the keys in
tiles of 32, lane c of a warp taking key n0 + c:

1. the block copies the tile of k_t (D x 32) and of v (32 x E) into shared memory (its q rows
   were copied once, before the walk); a barrier;
2. each lane computes the score of its key against each of its warp's rows (a loop over D:
   q from shared memory, broadcast; k from shared memory, one bank per lane), scales it, adds
   the mask and sets the keys past N to -inf;
3. online softmax per row: the tile's max by warp shuffles, the running max m, the shift
   (m, or 0 while m is not finite, as the reference's shift), the factor exp(old shift -
   new shift) that rescales what was summed before, p = exp(s - shift);
4. out[row, e] += p[c] * v[c, e] for the tile's keys: p[c] broadcast from lane c by a shuffle,
   lane l owning the columns e = l, l + 32, ... of its rows (registers).

At the end each row is divided by its sum of p (the lanes' partial sums, added by a butterfly).
zero_nan (PyTorch's guard for rows the mask removes entirely) gives 0 where the reference's P
has NaNs: a sum that is 0, infinite or NaN. The result goes through `store_result`, so fused
consumers apply, in the heads-last layout too. When the tiles do not fit in shared memory
(D + E over about 280) the same loops read q, k_t and v from global memory instead.
"""

from __future__ import annotations

import math

from slimc.ir import dtypes
from slimc.ir.errors import UnsupportedError

from ..cpu.common import cdiv, emitter, entry_alloca, numel, unflatten
from ..cpu.gen_attention import attention_operands
from ..cpu.kernel import llvm_name
from ..cpu.llvm_util import F32, I32, const, i64
from .gen_rows import WARP, combiner, no_work, warp_reduce
from .kernel import GpuKernelBuilder, gpu_generator

MAX_WARPS = 8
SHARED_LIMIT = 40 * 1024  # bytes of tiles a block may hold (of 48 KiB static)
BUSY_BLOCKS = 264  # blocks that keep an H100's 132 SMs busy (two each)


def plan(n_batch: int, M: int, D: int, E: int) -> tuple:
    """(warps, rows per warp, tiles in shared memory?) for a block."""
    per_lane = cdiv(E, WARP)  # output columns a lane keeps per row
    warps = min(MAX_WARPS, M)
    most = max(1, min(4, 32 // per_lane, cdiv(M, warps)))
    rw = 1
    # the largest block that still leaves the GPU enough blocks
    for r in (4, 2, 1):
        if r <= most and n_batch * cdiv(M, warps * r) >= BUSY_BLOCKS:
            rw = r
            break
    while rw > 1 and 4 * (warps * rw * D + WARP * (D + E)) > SHARED_LIMIT:
        rw //= 2
    shared = 4 * (warps * rw * D + WARP * (D + E)) <= SHARED_LIMIT
    return warps, rw, shared


@gpu_generator("attention", epilogue=True)
def attention(kb: GpuKernelBuilder, node) -> None:
    """A block per (batch entry, block of BM query rows); see the module's docstring."""
    q, k, v, mask, out, scale, zero_nan, heads_last, inputs_heads_last, batch, M, D, N, E = \
        attention_operands(kb, node)
    if q.type.dtype != dtypes.f32:
        raise UnsupportedError(f"attention kernel for {q.type} x {k.type} x {v.type}: float32 "
                               f"only", node=node.label, op=node.op)
    n_batch = numel(batch)
    if n_batch * M * E == 0:
        return no_work(kb)
    b = kb.b
    name = llvm_name(out.name)
    e = emitter(kb, dtypes.f32, name)
    warps, rw, shared = plan(n_batch, M, D, E)
    BM = warps * rw
    threads = warps * WARP
    row_blocks = cdiv(M, BM)
    kb.launch((n_batch * row_blocks,), (threads,), n_batch * row_blocks)
    kb.parallel_extent = n_batch * row_blocks

    tid = kb.sreg("tid.x", name="tid")
    blk = kb.sreg("ctaid.x", name="ctaid")
    warp = b.lshr(tid, i64(5), name="warp")
    lane = b.and_(tid, i64(WARP - 1), name="lane")
    bh = b.udiv(blk, i64(row_blocks), name="bh") if row_blocks > 1 else blk
    m0 = b.mul(b.urem(blk, i64(row_blocks)), i64(BM), name="m0") if row_blocks > 1 else i64(0)
    Q, K, V = kb.ptr(q), kb.ptr(k), kb.ptr(v)
    if inputs_heads_last:  # q [.., M, H, D], keys [.., N, H, D], v [.., N, H, E]
        H = batch[-1]
        outer, head = b.udiv(bh, i64(H), name="outer"), b.urem(bh, i64(H), name="head")
        q_base = b.mul(b.add(b.mul(outer, i64(M * H)), head), i64(D), name="q_base")
        k_base = b.mul(b.add(b.mul(outer, i64(N * H)), head), i64(D), name="k_base")
        v_base = b.mul(b.add(b.mul(outer, i64(N * H)), head), i64(E), name="v_base")
        ldq, ldk, ldv = H * D, H * D, H * E  # floats from one row (query, key, value) to the next
    else:
        q_base = b.mul(bh, i64(M * D), name="q_base")
        k_base = b.mul(bh, i64(D * N), name="k_base")
        v_base = b.mul(bh, i64(N * E), name="v_base")
        ldq, ldk, ldv = D, None, E  # (k_t: one dim of the keys a row)

    def at(p, off, what):
        return b.load(b.gep(p, [off], inbounds=True), name=what)

    def k_at(d, n, what):  # k_t[d, n] of this entry
        if inputs_heads_last:
            return at(K, b.add(k_base, b.add(b.mul(n, i64(ldk)), d)), what)
        return at(K, b.add(k_base, b.add(b.mul(d, i64(N)), n)), what)

    def clamp(x, hi, what):
        return b.select(b.icmp_unsigned("<", x, i64(hi)), x, i64(hi - 1), name=what)

    # this warp's rows: r in the block, m in the batch entry (clamped: rows past M compute the
    # last row again and store nothing)
    rows = []
    for i in range(rw):
        r = b.add(b.mul(warp, i64(rw)), i64(i), name=f"r{i}")
        m = b.add(m0, r, name=f"m{i}")
        rows.append((r, m, b.icmp_unsigned("<", m, i64(M), name=f"live{i}"), clamp(m, M, "mc")))

    if shared:
        q_s = kb.shared_array("q", F32, BM * D)
        k_s = kb.shared_array("k", F32, D * WARP)
        v_s = kb.shared_array("v", F32, WARP * E)
        with kb.loop(tid, BM * D, threads, name="ld_q") as idx:
            m = clamp(b.add(m0, b.udiv(idx, i64(D))), M, "mq")
            x = at(Q, b.add(q_base, b.add(b.mul(m, i64(ldq)), b.urem(idx, i64(D)))), "q")
            b.store(x, b.gep(q_s, [idx], inbounds=True))

    def q_at(i, d):
        r, _, _, mc = rows[i]
        if shared:
            return at(q_s, b.add(b.mul(r, i64(D)), d), "qv")
        return at(Q, b.add(q_base, b.add(b.mul(mc, i64(ldq)), d)), "qv")

    mask_at = _mask(kb, mask, batch, bh)

    # running state per row: max, this lane's part of the sum, this lane's output columns
    per_lane = cdiv(E, WARP)
    cols = []
    for c in range(per_lane):
        col = b.add(lane, i64(c * WARP), name=f"e{c}")
        ok = None if (c + 1) * WARP <= E else b.icmp_unsigned("<", col, i64(E), name=f"e{c}.ok")
        cols.append((col if ok is None else b.select(ok, col, i64(E - 1)), ok))
    top = [entry_alloca(kb.b, F32, f"max{i}") for i in range(rw)]
    part = [entry_alloca(kb.b, F32, f"sum{i}") for i in range(rw)]
    acc = [[entry_alloca(kb.b, F32, f"o{i}.{c}") for c in range(per_lane)] for i in range(rw)]
    score = [entry_alloca(kb.b, F32, f"s{i}") for i in range(rw)]
    for i in range(rw):
        b.store(const(F32, -math.inf), top[i])
        b.store(const(F32, 0.0), part[i])
        for c in range(per_lane):
            b.store(const(F32, 0.0), acc[i][c])

    vmax = combiner(e, "max")
    with kb.loop(0, N, WARP, name="tile") as n0:
        n = b.add(n0, lane, name="n")
        n_ok = b.icmp_unsigned("<", n, i64(N), name="n.ok")
        nc = b.select(n_ok, n, i64(N - 1), name="n.c")
        if shared:
            kb.barrier()  # the last tile's readers are done
            with kb.loop(tid, D * WARP, threads, name="ld_k") as idx:
                key = clamp(b.add(n0, b.and_(idx, i64(WARP - 1))), N, "nk")
                x = k_at(b.lshr(idx, i64(5)), key, "k")
                b.store(x, b.gep(k_s, [idx], inbounds=True))
            with kb.loop(tid, WARP * E, threads, name="ld_v") as idx:
                key = clamp(b.add(n0, b.udiv(idx, i64(E))), N, "nv")
                x = at(V, b.add(v_base, b.add(b.mul(key, i64(ldv)), b.urem(idx, i64(E)))), "v")
                b.store(x, b.gep(v_s, [idx], inbounds=True))
            kb.barrier()
        # scores of this lane's key against each row
        for i in range(rw):
            b.store(const(F32, 0.0), score[i])
        with kb.loop(0, D, name="d") as d:
            kv = at(k_s, b.add(b.shl(d, i64(5)), lane), "kv") if shared else \
                k_at(d, nc, "kv")
            for i in range(rw):
                b.store(e.add(b.load(score[i]), e.mul(q_at(i, d), kv)), score[i])
        probs = []
        for i in range(rw):
            s = b.load(score[i], name=f"s{i}")
            if scale != 1.0:
                s = e.mul(s, const(F32, scale))
            if mask is not None:
                s = e.add(s, mask_at(rows[i][3], nc))
            s = b.select(n_ok, s, const(F32, -math.inf), name=f"s{i}.k")
            old = b.load(top[i])
            new = vmax(old, warp_reduce(kb, s, vmax, WARP))
            b.store(new, top[i])
            shift = _shift(e, new)
            alpha = e.exp(e.sub(_shift(e, old), shift))
            p = e.exp(e.sub(s, shift))
            probs.append(p)
            b.store(e.add(e.mul(b.load(part[i]), alpha), p), part[i])
            for c in range(per_lane):
                b.store(e.mul(b.load(acc[i][c]), alpha), acc[i][c])
        # out += p @ v over the tile's keys
        keys = b.sub(i64(N), n0)
        keys = b.select(b.icmp_signed("<", keys, i64(WARP)), keys, i64(WARP), name="keys")
        with kb.loop(0, keys, name="key") as c_key:
            src = b.trunc(c_key, I32)
            vrow = [at(v_s, b.add(b.mul(c_key, i64(E)), col), "vv") if shared else
                    at(V, b.add(v_base, b.add(b.mul(b.add(n0, c_key), i64(ldv)), col)), "vv")
                    for col, _ in cols]
            for i in range(rw):
                pc = kb.shuffle("idx", probs[i], src, name="p")
                for c in range(per_lane):
                    b.store(e.add(b.load(acc[i][c]), e.mul(pc, vrow[c])), acc[i][c])

    batch_index = unflatten(kb, bh, batch, "b")
    for i in range(rw):
        total = warp_reduce(kb, b.load(part[i]), combiner(e, "sum"), WARP)
        keep = None
        if zero_nan:  # the reference's P has NaNs unless 0 < sum < inf
            keep = b.and_(b.fcmp_ordered(">", total, const(F32, 0.0)),
                          b.fcmp_ordered("<", total, const(F32, math.inf)), name="keep")
        _, m, live, _ = rows[i]
        for c, (col, ok) in enumerate(cols):
            y = e.fdiv(b.load(acc[i][c]), total) if N else const(F32, 0.0)
            if keep is not None:
                y = b.select(keep, y, const(F32, 0.0))
            cond = live if ok is None else b.and_(live, ok)
            with b.if_then(cond):
                if heads_last:  # [..., M, H, E]: the head is the last batch dim
                    index = batch_index[:-1] + [m, batch_index[-1], col]
                else:
                    index = batch_index + [m, col]
                kb.store_result(out, index, y)
    b.ret_void()


def _shift(e, m):
    """The softmax's shift for a running max m: m, or 0 while it is not finite."""
    b = e.b
    ok = b.fcmp_ordered("<", e.intrinsic("fabs", [m]), const(F32, math.inf))
    return b.select(ok, m, const(F32, 0.0), name="shift")


def _mask(kb, mask, batch, bh):
    """value(m, n) of the mask broadcast to the scores [*batch, M, N] of batch entry bh, or
    None."""
    if mask is None:
        return None
    mshape = list(kb.shape(mask))
    rank = len(batch) + 2
    lead = rank - len(mshape)
    batch_index = unflatten(kb, bh, batch, "mb")

    def value(m, n):
        full = batch_index + [m, n]
        index = [0 if d == 1 else full[lead + a] for a, d in enumerate(mshape)]
        x = kb.value_at(mask, index)
        kb.cache.clear()
        return x

    return value
