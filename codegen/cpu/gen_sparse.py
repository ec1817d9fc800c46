"""sparse_matmul and sparse_conv: a constant block-sparse A [R, K] times a dense b [..., K, C]
(a 1x1 convolution's image [N, K, H, W] is b [N, K, H*W]).

The kernel runs along b's columns (ir/ops/sparse.py says why the sparse side is on the left):

* Columns in vectors (C at least half a vector): a register tile of `block` rows x T vectors
  of columns. Each stored block (one column k of A, `block` consecutive rows) loads T vectors
  of b's row k once and multiplies them by `block` broadcast values: plain CSR (block 1)
  costs one load per FMA, a 1x8 / 1x16 pruned model's blocks reuse each load 8 or 16 times.
  Column tiles are the outer loop, so a K x (T vectors) slab of b stays in cache while every
  row block of the work item runs over it. When that slab is bigger than L1 (K = 768 at 64
  columns: 192 KB), the rows run over it in chunks of K (`slab_bytes` of b each), their sums
  kept between chunks in a scratch row per row block, so loads of b hit L1 (Zen 4, one
  thread, 80%: 128 x 768 @ 768 x 3072 2.7 -> 2.5 ms, 128 x 1024 @ 1024 x 256 0.29 -> 0.25),
  unless the rows are too sparse to pay for it (`chunk_rows`). With `x_rows` b comes as x
  [..., C, K]: a call transposes each batch entry it reaches into a slot of its own
  (`pack_b`), in cache, where the slab is then read as above.
* Few columns: for CSR, each row is a dot product of its values with b gathered at its
  column indices, `vw` nonzeros a step; for blocks, a vector of the block's rows times b[k]
  broadcast. Both read each stored value once: this path is bound by memory, and the
  compressed matrix is what it saves. One token stored transposed (the sparsify pass's form
  of a one-token matmul) has kernels of its own, for CSR and for blocks: gen_sparse_row.py.

Work items are the batch entries x column tiles x parts of the row blocks, the parts cut where
the stored blocks (the work) divide evenly, so two threads share a layer whose zeros are
uneven. Threads split the columns (tokens, pixels) first: a thread reads only its columns of
b, the ones a token-wise kernel before it wrote on the same thread, and a layer has more items
than 8 parts for more threads (two threads, 80%: BERT-sized layers and 1x1 convolutions
0.87-1.01x the time of the parts-first split; one thread 0.95-1.04x). An output bigger than
the caches runs the rows' parts first (`parts_first`: a column tile writes every row). Chunk
sums live in one slot per call (per thread), the size of one part's rows. The fused epilogue
(bias, activation, residual) runs on each result vector before its store.
Summation: in stored-column order per row, one FMA at a time (not the dense kernel's order:
results differ from the dense kernel by float rounding, the usual K * eps * |a| |b| bound).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.graph import constant_data
from slimc.ir.ops.sparse import operand_shape

from .common import const_table, entry_alloca, hreduce
from .gen_sparse_row import one_token
from .gen_transpose import transpose_matrix, transpose_square
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import (F32, I32, carried_loop, first_lanes, i64, masked_load_vector, splat,
                        vector_gep)
from .scalar_ops import Emitter
from .sparse_parts import ITEMS, SparseKernel, fma, gather_intrinsic, work_parts

# b's chunk a column tile reads from L1, by LLVM CPU name (its start), measured one thread at
# 80-90% on 128 x 768 @ 768 x 3072, 128 x 1024 @ 1024 x 256 and 1x1 convs at 7x7 and 14x14
SLAB_BYTES = {
    "znver": 12 << 10,  # Zen 4, 32 KB L1d: 24 KB ran 10% slower, one chunk (no sums) 8-16%
}
SLAB_BYTES_OTHER = 48 << 10  # Emerald Rapids, 48 KB L1d and 2 MB L2: 12 KB ran 1.1-1.4x
# slower, one chunk as fast but for 7x7 and 14x14 convs (1.1x slower)
SCRATCH_LIMIT = 16 << 20  # chunk sums of every row block (bytes), else no chunks
SLAB_L2_BYTES = 256 << 10  # a slab this small reads from L2 fast enough for sparse rows...
CHUNK_MIN_BLOCKS = 24  # ...of fewer stored blocks than this in a chunk (`chunk_rows`)
UNROLL = 4  # independent accumulators of a one-column block row
PARTS_FIRST_BYTES = 1 << 20  # output of one batch entry past which items run rows first


def tile_vectors(block: int, vw: int) -> int:
    """Column vectors per register tile: block x T accumulators within the register file
    (32 vector registers with AVX-512, 16 with AVX2: leave room for b's vectors)."""
    budget = 16 if vw >= 16 else 8
    return max(1, min(4, budget // block))


def parts_first(transposed: bool, out_bytes: int) -> bool:
    """Whether a kernel's items run the parts of the rows first, each over every column tile
    (else the column tiles first, each over every part). Where the output (one batch entry's,
    `out_bytes`) outgrows the caches, a column tile writes a run of every output row at once
    (rows 12.5 KB apart at 56x56), each row met again one tile later after its lines have
    left; a part's rows across all tiles write few rows at a time. Measured on Emerald
    Rapids (2 MB L2), one thread, forced forms, tiles-first -> parts-first: 1x8 at 90%,
    56x56 64->256 (3.2 MB) 0.47 -> 0.27 ms, 1x4 0.40 -> 0.33, 1x16 0.66 -> 0.44; at 80%,
    MobileNetV2's 1x1 convolutions in 1x8 blocks 1.28-1.43x faster from 1.8 MB of output up
    (112x112 16->96, 56x56 24->144, 56x56 64->256), 0.94-1.07x below 1 MB (one 0.63x); CSR
    112x112 16->96 (4.8 MB) 1.33x (1.59x at 2 threads), 56x56 24->144 (1.8 MB) 0.85x /
    0.98x, 3.2 MB even. A transposed store writes each token's run of rows itself."""
    return not transposed and out_bytes > PARTS_FIRST_BYTES


def chunk_rows(K: int, most: int, vw: int, slab: int, blocks_per_row: float) -> int:
    """Rows of b in a chunk of K (K: no chunks). Chunks keep a column tile's slab of b in
    L1 (at most `most` rows), as even as whole vectors allow (K = 256 in chunks of 192 and
    64 paid the sums' round trip for a quarter of the work). Not where the whole slab fits in
    L2's share (SLAB_L2_BYTES) and a row block's stored blocks in a chunk would be fewer than
    CHUNK_MIN_BLOCKS: such rows read too little of the slab for L1 to pay for the round trip
    of their sums. BERT-mini at 90% (K 256 and 1024, slabs of 64 and 256 KB, 19 stored values
    a row per chunk of 192), Emerald Rapids, 2 threads, the whole call in one process:
    1.75 -> 1.65 ms and 1.96 -> 1.87 without chunks (the sparse kernels 5-17% each); single
    layers, one thread: 128 x 768 @ 768 x 3072 at 80% (38 a chunk) 1.80 ms with chunks,
    2.10 without; 3072 x 768 at 90% (a 768 KB slab) 1.21 with, 1.35 without."""
    most = max(vw, most // vw * vw)
    if K <= most or (slab <= SLAB_L2_BYTES and blocks_per_row * most / K < CHUNK_MIN_BLOCKS):
        return K
    chunks = -(-K // most)
    return -(-(-(-K // chunks)) // vw) * vw  # ceil(K / chunks), up to whole vectors


def slab_bytes(target) -> int:
    """The bytes of b a column tile reads in one chunk of K, on this target's CPU."""
    for cpu, size in SLAB_BYTES.items():
        if target.cpu.startswith(cpu):
            return size
    return SLAB_BYTES_OTHER


@generator("sparse_matmul", "sparse_conv", epilogue=True, vector_code=True)
def sparse_matmul(kb: KernelBuilder, node) -> None:
    bm, values, indices, offsets = node.inputs
    attrs = kb.attrs(node)
    R, block = int(attrs["rows"]), int(attrs["block"])
    transposed = bool(attrs.get("transpose_out", 0))
    shape = kb.shape(bm)
    x_rows = node.op == "sparse_matmul" and bool(attrs.get("x_rows", 0))
    if node.op == "sparse_conv":  # x [N, K, *spatial]: b [N, K, H*W]
        batch, K, C = shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64))
    else:
        K, C = operand_shape(shape, x_rows)[-2:]
        batch = int(np.prod(shape[:-2], dtype=np.int64))
    off = np.asarray(constant_data(offsets), np.int64)
    nnz = int(off[-1])
    out = node.outputs[0]
    bld = kb.b
    vw = kb.vector_width
    kb.cost = 2 * nnz * block * C * batch
    in_vectors = C * 2 >= vw
    if transposed and C == 1:
        return one_token(kb, node, R, K, batch, off, block)
    # a transposed store collects `group` rows of A (one vector of output columns) first
    group = max(vw, block) // block if transposed and in_vectors else 1
    bounds = work_parts(off, block, min(ITEMS, len(off) - 1), group)
    parts = len(bounds) - 1
    part_table = const_table(kb, bounds, "parts", ir.IntType(64))
    T = tile_vectors(block, vw)
    # items: batch entry, then column tile (T vectors of b's columns), then part of the rows
    tiles = -(-C // (T * vw)) if in_vectors else 1
    kb.parallel_extent = batch * tiles * parts
    epilogue, extra, evalues = kb.gemm_epilogue(out, C if not transposed else R)
    args = {nm: v for (nm, _), v in zip(extra, evalues)}
    nrb = len(off) - 1
    nrbp = max(bounds[-1], nrb)  # the last group reads row blocks past R: empty ones
    # rows of b in a chunk of K: a slab of the vectors a tile uses
    tile_bytes = min(T, -(-C // vw)) * vw * 4  # of b's row, in a column tile
    kc = chunk_rows(K, slab_bytes(kb.target) // tile_bytes, vw, K * tile_bytes,
                    nnz / max(1, len(off) - 1))
    # chunk sums: an item's row blocks need them only while it runs, and a call runs its
    # items one after another: one slot per call (kb.call_slot), of the largest part's rows
    part_rows = max(b1 - b0 for b0, b1 in zip(bounds, bounds[1:]))
    slot_floats = part_rows * block * T * vw
    sums_bytes = kb.parallel_extent * slot_floats * 4
    k = _Kernel(kb, node, R, block, K, C, transposed, epilogue, args, kb.ptr(offsets))
    if x_rows and C > 1:  # x [C, K] a batch entry: b = x^T, transposed by each thread
        k.pack_b(llvm_name(out.name))
    k.group_rows = group * block
    k.narrow_indices(indices)
    if in_vectors and K > kc and sums_bytes <= SCRATCH_LIMIT:
        scratch = bld.bitcast(kb.scratch(sums_bytes, llvm_name(out.name) + ".sums"),
                              ir.PointerType(F32))
        k.chunked(kc, offsets, off, constant_data(indices), nrbp,
                  kb.call_slot(scratch, slot_floats, "sums"), T)
    elif nrbp > nrb:
        pad = np.concatenate([off, np.full(nrbp - nrb, off[-1])]).astype(np.int32)
        k.OFF = kb.substitute_constant(offsets, pad, llvm_name(offsets.name) + ".padded")

    with kb.loop(kb.begin, kb.end, name="item") as item:
        n = bld.udiv(item, i64(tiles * parts), name="n")
        tile_part = bld.urem(item, i64(tiles * parts), name="tile.part")
        if parts_first(transposed, R * C * 4):
            part = bld.udiv(tile_part, i64(tiles), name="part")
            ct = bld.urem(tile_part, i64(tiles), name="ct")
        else:
            ct = bld.udiv(tile_part, i64(parts), name="ct")
            part = bld.urem(tile_part, i64(parts), name="part")
        rb0 = bld.load(bld.gep(part_table, [part], inbounds=True), name="rb0")
        rb1 = bld.load(bld.gep(part_table, [bld.add(part, i64(1))], inbounds=True), name="rb1")
        b_n = k.b_entry(n)
        if in_vectors:
            k.columns_in_vectors(n, b_n, rb0, rb1, T, group, ct)
        else:
            with kb.loop(0, C, name="col") as c:
                k.column(n, b_n, rb0, rb1, c)
    bld.ret_void()


class _Kernel(SparseKernel):
    """The pieces of one sparse_matmul kernel (shared state of the loops below)."""

    packed = None  # (this call's slot, the batch entry in it) when b comes as x's rows

    def pack_b(self, name: str) -> None:
        """b comes as x [batch, C, K]: a call transposes each batch entry it works on into a
        slot of its own ([K, C], in cache) when its items reach that entry. (On the stack
        instead of the arena, BERT-mini at 2 threads ran 10% slower.)"""
        kb, b = self.kb, self.b
        floats = self.K * self.C
        scratch = b.bitcast(kb.scratch(4 * floats * kb.parallel_extent, name + ".b"),
                            ir.PointerType(F32))
        entry = entry_alloca(kb.b, ir.IntType(64), "packed.entry")
        b.store(i64(-1), entry)
        self.packed = (kb.call_slot(scratch, floats, "b.packed"), entry)

    def b_entry(self, n):
        """b's batch entry n [K, C] (packed here first when b comes as x's rows)."""
        b = self.b
        at = b.mul(n, i64(self.K * self.C))
        if self.packed is None:
            return b.gep(self.B, [at], inbounds=True, name="b.n")
        slot, entry = self.packed
        with b.if_then(b.icmp_signed("!=", b.load(entry), n)):
            transpose_matrix(self.kb, b.gep(self.B, [at], inbounds=True, name="x.n"), slot,
                             self.C, self.K)
            b.store(n, entry)
        return slot

    def chunked(self, kc: int, offsets, off, indices, nrbp: int, scratch, T: int) -> None:
        """Run over K in chunks of kc rows of b: OFF becomes each row block's first stored
        block per chunk ([nrbp, chunks + 1]), `sums` (this call's slot) the sums so far of
        the current item's row blocks, block * T vectors each."""
        self.chunks = -(-self.K // kc)
        nrb = len(off) - 1
        row = np.repeat(np.arange(nrb, dtype=np.int64), np.diff(off))
        keys = row * self.K + np.asarray(indices, np.int64)  # sorted: by row, then column
        bounds = np.minimum(np.arange(self.chunks + 1) * kc, self.K)
        want = np.arange(nrbp, dtype=np.int64)[:, None] * self.K + bounds[None, :]
        want[:, -1] = np.arange(1, nrbp + 1) * self.K  # a row's last chunk ends with the row
        table = np.searchsorted(keys, want.reshape(-1)).astype(np.int32)
        self.OFF = self.kb.substitute_constant(offsets, table, llvm_name(offsets.name) + ".chunks")
        self.sums = scratch
        self.sums_row = self.block * T * self.vw  # floats per row block

    def _sums_at(self, rb, rb0, slot: int):
        """Row block rb's sums (slot: which vector), in this call's slot of the item that
        starts at row block rb0."""
        b = self.b
        row = b.sub(rb, rb0)
        at = b.add(b.mul(row, i64(self.sums_row)), i64(slot * self.vw))
        return b.bitcast(b.gep(self.sums, [at], inbounds=True),
                         ir.PointerType(ir.VectorType(F32, self.vw)))

    def _early_chunks(self, n, b_n, rb0, rb1, c0, nvec, mask, tag) -> None:
        """Every chunk of K but the last, over the part's row blocks: sums to scratch."""
        if self.chunks == 1:
            return
        b = self.b
        vt = ir.VectorType(F32, self.vw)
        with self.kb.loop(0, self.chunks - 1, name=tag + ".ch") as ch:
            first = b.icmp_signed("==", ch, i64(0), name="first")
            with self.kb.loop(rb0, rb1, name=tag + ".crb") as rb:
                slots = range(self.block * nvec)
                init = [b.select(first, ir.Constant(vt, None),
                                 b.load(self._sums_at(rb, rb0, i), align=4)) for i in slots]
                accs = self._accumulate(b_n, rb, c0, nvec, mask, tag + "c", ch, init)
                for i in slots:
                    b.store(accs[i], self._sums_at(rb, rb0, i), align=4)

    def _last_chunk_init(self, rb, rb0, nvec):
        """The accumulators' start for the whole row (or the last chunk: the sums so far)."""
        if self.chunks == 1:
            return None
        return [self.b.load(self._sums_at(rb, rb0, i), align=4)
                for i in range(self.block * nvec)]

    # ----- columns in vectors --------------------------------------------------------------
    def columns_in_vectors(self, n, b_n, rb0, rb1, T: int, group: int, ct) -> None:
        """Column tile `ct` (T vectors of columns; the last one may be narrower)."""
        kb, b, vw, C = self.kb, self.b, self.vw, self.C
        width = T * vw
        full = C // width
        tile = None
        if self.transposed:  # rows of A collected here, then stored transposed
            tile = entry_alloca(kb.b, ir.ArrayType(F32, group * self.block * width), "tile")
            tile = b.bitcast(tile, ir.PointerType(F32))
        rest = C - full * width

        def whole():
            c0 = b.mul(ct, i64(width), name="c0")
            self._row_groups(n, b_n, rb0, rb1, c0, T, None, group, tile, width, "t")

        def narrow():
            nvec = -(-rest // vw)
            tail = rest - (nvec - 1) * vw
            mask = None if tail == vw else \
                first_lanes(vw, tail)
            self._row_groups(n, b_n, rb0, rb1, i64(full * width), nvec, mask, group, tile,
                             width, "r")

        if full and rest:
            with b.if_else(b.icmp_unsigned("<", ct, i64(full))) as (is_whole, is_narrow):
                with is_whole:
                    whole()
                with is_narrow:
                    narrow()
        elif full:
            whole()
        else:
            narrow()

    def _row_groups(self, n, b_n, rb0, rb1, c0, nvec, mask, group, tile, width, tag):
        b = self.b
        self._early_chunks(n, b_n, rb0, rb1, c0, nvec, mask, tag)
        last = i64(self.chunks - 1) if self.chunks > 1 else None
        if not self.transposed:
            with self.kb.loop(rb0, rb1, name=tag + ".rb") as rb:
                accs = self._accumulate(b_n, rb, c0, nvec, mask, tag, last,
                                        self._last_chunk_init(rb, rb0, nvec))
                self._store_rows(n, rb, c0, accs, nvec, mask)
            return
        with self.kb.loop(rb0, rb1, step=group, name=tag + ".g") as g0:
            for i in range(group):
                rb = b.add(g0, i64(i), name=f"rb{i}")
                accs = self._accumulate(b_n, rb, c0, nvec, mask, tag + str(i), last,
                                        self._last_chunk_init(rb, rb0, nvec))
                for r in range(self.block):
                    for v in range(nvec):
                        slot = (i * self.block + r) * width + v * self.vw
                        p = b.gep(tile, [i64(slot)], inbounds=True)
                        b.store(accs[r * nvec + v], b.bitcast(p, ir.PointerType(accs[0].type)),
                                align=4)
            self._store_transposed(n, g0, c0, nvec, mask, group, tile, width)

    def _accumulate(self, b_n, rb, c0, nvec: int, mask, tag: str, chunk=None,
                    init=None) -> list:
        """The block x nvec accumulator vectors of row block `rb` at columns c0... (over
        one chunk of K, from `init`, when chunked)."""
        b, vw, block = self.b, self.vw, self.block
        vt = ir.VectorType(F32, vw)
        j0, j1 = self.blocks_of(rb, chunk)
        b_c = b.gep(b_n, [c0], inbounds=True, name=tag + ".bc")

        def step(j, accs):
            kk = self.column_of(j)
            row = b.gep(b_c, [b.mul(kk, i64(self.C))], inbounds=True, name="b.row")
            xs = []
            for v in range(nvec):
                p = b.gep(row, [i64(v * vw)], inbounds=True)
                if mask is not None and v == nvec - 1:
                    xs.append(masked_load_vector(b, p, vt, mask, f"x{v}"))
                else:
                    xs.append(b.load(b.bitcast(p, ir.PointerType(vt)), align=4, name=f"x{v}"))
            out = []
            vbase = b.mul(j, i64(block)) if block > 1 else j
            for r in range(block):
                w = b.load(b.gep(self.V, [b.add(vbase, i64(r)) if r else vbase],
                                 inbounds=True), name=f"w{r}")
                ws = splat(b, w, vw, f"w{r}.s")
                for v in range(nvec):
                    out.append(fma(b, ws, xs[v], accs[r * nvec + v]))
            return out

        start = init if init is not None else [ir.Constant(vt, None)] * (block * nvec)
        return carried_loop(b, j0, j1, start, step, tag + ".j")

    def _store_rows(self, n, rb, c0, accs, nvec, mask) -> None:
        b, vw = self.b, self.vw
        row0 = b.mul(rb, i64(self.block), name="row0")
        nl = vw if mask is None else _lanes_on(mask)
        for r in range(self.block):
            row = b.add(row0, i64(r), name=f"row{r}")

            def store_row(row=row, r=r):
                for v in range(nvec):
                    last = v == nvec - 1 and mask is not None
                    col = b.add(c0, i64(v * vw), name="col")
                    self.store(n, row, col, accs[r * nvec + v], mask if last else None,
                                nl if last else vw)

            if self.R % self.block and r:
                with b.if_then(b.icmp_signed("<", row, i64(self.R))):
                    store_row()
            else:
                store_row()

    def _store_transposed(self, n, g0, c0, nvec, mask, group, tile, width) -> None:
        """The tile's rows of A (group x block of them, `vw` columns of the output a chunk)
        transposed in registers: each result vector is one token's run of output columns."""
        b, vw = self.b, self.vw
        vt = ir.VectorType(F32, vw)
        rows = group * self.block
        ntok = vw if mask is None else _lanes_on(mask)
        for chunk in range(rows // vw):
            col = b.add(b.mul(g0, i64(self.block)), i64(chunk * vw), name="ocol")
            for v in range(nvec):
                vecs = []
                for i in range(vw):
                    p = b.gep(tile, [i64((chunk * vw + i) * width + v * vw)], inbounds=True)
                    vecs.append(b.load(b.bitcast(p, ir.PointerType(vt)), align=4,
                                       name=f"tr{i}"))
                vecs = transpose_square(b, vecs)
                tokens = ntok if v == nvec - 1 else vw
                for t in range(tokens):
                    tok = b.add(c0, i64(v * vw + t), name="tok")
                    self.store_run(n, tok, col, vecs[t], whole=self.R % rows == 0)

    # ----- one column at a time ----------------------------------------------------------------
    def column(self, n, b_n, rb0, rb1, c) -> None:
        kb, b, block = self.kb, self.b, self.block
        b_c = b.gep(b_n, [c], inbounds=True, name="b.c")
        with kb.loop(rb0, rb1, name="rb") as rb:
            j0, j1 = self.blocks_of(rb)
            if block == 1:
                total = self._csr_dot(b_c, j0, j1)
                self.store_element(n, rb, c, total)
            else:
                self._block_column(n, b_c, rb, j0, j1, c)

    def _csr_dot(self, b_c, j0, j1):
        """One row's values . b[indices, c]: vw stored values a step (b gathered), then the
        rest one at a time; summed in a vector and reduced at the end."""
        b, vw, C = self.b, self.vw, self.C
        vt = ir.VectorType(F32, vw)
        it = ir.VectorType(I32, vw)
        span = b.sub(j1, j0)
        jv = b.add(j0, b.mul(b.udiv(span, i64(vw)), i64(vw)), name="jv")
        gather = gather_intrinsic(b.module, vt)
        ones = ir.Constant(ir.VectorType(ir.IntType(1), vw), [1] * vw)

        def vec_step(s, accs):
            j = b.add(j0, b.mul(s, i64(vw)), name="j")
            w = b.load(b.bitcast(b.gep(self.V, [j], inbounds=True), ir.PointerType(vt)),
                       align=4, name="w")
            kk = b.load(b.bitcast(b.gep(self.IDX, [j], inbounds=True),
                                  ir.PointerType(ir.VectorType(self.index_type, vw))),
                        align=2, name="kv")
            kk = self.extend_index(kk, it)
            if C != 1:
                kk = b.mul(kk, ir.Constant(it, [C] * vw), name="kv.c")
            ptrs = vector_gep(b, b_c, b.sext(kk, ir.VectorType(ir.IntType(64), vw)), F32, "xp")
            x = b.call(gather, [ptrs, I32(4), ones, ir.Constant(vt, None)], name="x")
            return [fma(b, w, x, accs[0])]

        steps = b.udiv(span, i64(vw), name="steps")
        (acc,) = carried_loop(b, i64(0), steps, [ir.Constant(vt, None)], vec_step, "jv")
        total = hreduce(Emitter(b, [dtypes.f32], dtypes.f32, ("contract",)), acc, "sum")

        def one(j, accs):
            kk = self.column_of(j)
            x = b.load(b.gep(b_c, [b.mul(kk, i64(C)) if C != 1 else kk], inbounds=True), name="x")
            w = b.load(b.gep(self.V, [j], inbounds=True), name="w")
            return [fma(b, w, x, accs[0])]

        (total,) = carried_loop(b, jv, j1, [total], one, "js")
        return total

    def _block_column(self, n, b_c, rb, j0, j1, c) -> None:
        """A block's rows in one vector (block lanes) times b[k, c] broadcast; UNROLL
        accumulators so the FMA latency does not bound a long row."""
        b, block, C = self.b, self.block, self.C
        vt = ir.VectorType(F32, block)

        def product(j):
            kk = self.column_of(j)
            x = b.load(b.gep(b_c, [b.mul(kk, i64(C)) if C != 1 else kk], inbounds=True), name="x")
            w = b.load(b.bitcast(b.gep(self.V, [b.mul(j, i64(block))], inbounds=True),
                                 ir.PointerType(vt)), align=4, name="w")
            return w, splat(b, x, block, "x.s")

        def steps(s, accs):
            base = b.add(j0, b.mul(s, i64(UNROLL)), name="j")
            return [fma(b, *product(b.add(base, i64(u)) if u else base), accs[u])
                    for u in range(UNROLL)]

        nsteps = b.udiv(b.sub(j1, j0), i64(UNROLL), name="steps")
        accs = carried_loop(b, i64(0), nsteps, [ir.Constant(vt, None)] * UNROLL, steps, "ju")
        acc = accs[0]
        for other in accs[1:]:
            acc = b.fadd(acc, other, name="acc.sum")
        rest = b.add(j0, b.mul(nsteps, i64(UNROLL)), name="j.rest")
        (acc,) = carried_loop(b, rest, j1, [acc], lambda j, a: [fma(b, *product(j), a[0])],
                              "j")
        row0 = b.mul(rb, i64(block), name="row0")
        for r in range(block):
            row = b.add(row0, i64(r), name=f"row{r}")
            v = b.extract_element(acc, I32(r), name=f"y{r}")
            if self.R % block and r:
                with b.if_then(b.icmp_signed("<", row, i64(self.R))):
                    self.store_element(n, row, c, v)
            else:
                self.store_element(n, row, c, v)


def _lanes_on(mask: ir.Constant) -> int:
    """How many lanes of a constant mask are on (its elements are i1 constants)."""
    return sum(1 for x in mask.constant if getattr(x, "constant", x))
