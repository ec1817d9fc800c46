"""sparse_matmul and sparse_conv: a constant block-sparse A [R, K] times a dense b [..., K, C]
(a 1x1 convolution's image [N, K, H, W] is b [N, K, H*W]).

The kernel runs along b's columns (ir/ops/sparse.py says why the sparse side is on the left):

* Columns in vectors (C at least half a vector): a register tile of `block` rows x T vectors
  of columns. Each stored block (one column k of A, `block` consecutive rows) loads T vectors
  of b's row k once and multiplies them by `block` broadcast values: plain CSR (block 1)
  costs one load per FMA, a 1x8 / 1x16 pruned model's blocks reuse each load 8 or 16 times.
  Column tiles are the outer loop, so a K x (T vectors) slab of b stays in cache while every
  row block of the work item runs over it.
* Few columns (a matmul of one token, C = 1): for CSR, each row is a dot product of its
  values with b gathered at its column indices, `vw` nonzeros a step; for blocks, a vector of
  the block's rows times b[k] broadcast. Both read each stored value once: this path is bound
  by memory, and the compressed matrix is what it saves.

Work items are the batch entries x parts of the row blocks, the parts cut where the stored
blocks (the work) divide evenly, so two threads share a layer whose zeros are uneven. The
fused epilogue (bias, activation, residual) runs on each result vector before its store.
Summation: in stored-column order per row, one FMA at a time (not the dense kernel's order:
results differ from the dense kernel by float rounding, the usual K * eps * |a| |b| bound).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.graph import constant_data

from .common import const_table, entry_alloca, hreduce
from .gemm import EpilogueContext
from .gen_transpose import transpose_square
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import (F32, I32, OPAQUE_PTR, i64, masked_load_vector, masked_store_vector,
                         splat, vector_gep)
from .scalar_ops import Emitter

ITEMS = 8  # parts of the row blocks per batch entry
UNROLL = 4  # independent accumulators of a one-column block row


def tile_vectors(block: int, vw: int) -> int:
    """Column vectors per register tile: block x T accumulators within the register file
    (32 vector registers with AVX-512, 16 with AVX2: leave room for b's vectors)."""
    budget = 16 if vw >= 16 else 8
    return max(1, min(4, budget // block))


def _parts(offsets: np.ndarray, block: int, parts: int, group: int = 1) -> list[int]:
    """Row-block boundaries of `parts` parts of about equal work (stored values + stores),
    cut at multiples of `group` row blocks; the last part runs to a whole group (the rows
    past R are zeros in `offsets`' padding, see `padded_offsets`)."""
    nrb = len(offsets) - 1
    work = np.diff(offsets.astype(np.int64)) * block + block
    cum = np.concatenate([[0], np.cumsum(work)])
    cuts = np.searchsorted(cum, np.linspace(0, cum[-1], parts + 1)[1:-1], side="left")
    cuts = [int(c) // group * group for c in cuts]
    end = -(-nrb // group) * group
    return [0] + sorted(set(c for c in cuts if 0 < c < nrb)) + [end]


def carried_loop(b: ir.IRBuilder, lo, hi, init: list, body, name: str) -> list:
    """for i in [lo, hi): values = body(i, values); returns the values after the loop (the
    accumulators live in registers through phis, not in memory)."""
    fn = b.function
    pre = b.block
    head = fn.append_basic_block(name + ".head")
    loop = fn.append_basic_block(name + ".body")
    done = fn.append_basic_block(name + ".done")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(lo.type, name=name)
    i.add_incoming(lo, pre)
    phis = [b.phi(v.type, name=f"{name}.acc{n}") for n, v in enumerate(init)]
    for ph, v in zip(phis, init):
        ph.add_incoming(v, pre)
    b.cbranch(b.icmp_signed("<", i, hi, name=name + ".cond"), loop, done)
    b.position_at_end(loop)
    out = body(i, list(phis))
    nxt = b.add(i, ir.Constant(lo.type, 1), name=name + ".next")
    i.add_incoming(nxt, b.block)
    for ph, v in zip(phis, out):
        ph.add_incoming(v, b.block)
    b.branch(head)
    b.position_at_end(done)
    return list(phis)


@generator("sparse_matmul", "sparse_conv", epilogue=True, vector_code=True)
def sparse_matmul(kb: KernelBuilder, node) -> None:
    bm, values, indices, offsets = node.inputs
    attrs = kb.attrs(node)
    R, block = int(attrs["rows"]), int(attrs["block"])
    transposed = bool(attrs.get("transpose_out", 0))
    shape = kb.shape(bm)
    if node.op == "sparse_conv":  # x [N, K, *spatial]: b [N, K, H*W]
        batch, K, C = shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64))
    else:
        K, C = shape[-2], shape[-1]
        batch = int(np.prod(shape[:-2], dtype=np.int64))
    off = np.asarray(constant_data(offsets), np.int64)
    nnz = int(off[-1])
    out = node.outputs[0]
    bld = kb.b
    vw = kb.vector_width
    kb.cost = 2 * nnz * block * C * batch
    in_vectors = C * 2 >= vw
    if transposed and C == 1 and block == 1:
        return _sliced_rows(kb, node, R, K, batch, off)
    # a transposed store collects `group` rows of A (one vector of output columns) first
    group = max(vw, block) // block if transposed and in_vectors else 1
    bounds = _parts(off, block, min(ITEMS, len(off) - 1), group)
    parts = len(bounds) - 1
    part_table = const_table(kb, bounds, "parts", ir.IntType(64))
    kb.parallel_extent = batch * parts
    epilogue, extra, evalues = kb.gemm_epilogue(out, C if not transposed else R)
    args = {nm: v for (nm, _), v in zip(extra, evalues)}
    nrb = len(off) - 1
    off_ptr = kb.ptr(offsets)
    if bounds[-1] > nrb:  # the last group reads offsets of row blocks past R: empty ones
        pad = np.concatenate([off, np.full(bounds[-1] - nrb, off[-1])]).astype(np.int32)
        off_ptr = kb.substitute_constant(offsets, pad, llvm_name(offsets.name) + ".padded")
    k = _Kernel(kb, node, R, block, K, C, transposed, epilogue, args, off_ptr)
    k.group_rows = group * block

    with kb.loop(kb.begin, kb.end, name="item") as item:
        n = bld.udiv(item, i64(parts), name="n")
        part = bld.urem(item, i64(parts), name="part")
        rb0 = bld.load(bld.gep(part_table, [part], inbounds=True), name="rb0")
        rb1 = bld.load(bld.gep(part_table, [bld.add(part, i64(1))], inbounds=True), name="rb1")
        b_n = bld.gep(k.B, [bld.mul(n, i64(K * C))], inbounds=True, name="b.n")
        if in_vectors:
            k.columns_in_vectors(n, b_n, rb0, rb1, tile_vectors(block, vw), group)
        else:
            with kb.loop(0, C, name="col") as c:
                k.column(n, b_n, rb0, rb1, c)
    bld.ret_void()


class _Kernel:
    """The pieces of one sparse_matmul kernel (shared state of the loops below)."""

    def __init__(self, kb, node, R, block, K, C, transposed, epilogue, args, offsets):
        self.kb, self.b = kb, kb.b
        self.R, self.block, self.K, self.C, self.transposed = R, block, K, C, transposed
        self.B, self.V, self.IDX = (kb.ptr(v) for v in node.inputs[:3])
        self.OFF = offsets
        self.dst = kb.ptr(kb.outputs[0])
        self.epilogue, self.args = epilogue, args
        self.vw = kb.vector_width
        self.group_rows = 1  # rows of A a transposed store collects (set by the caller)

    def _blocks_of(self, rb):
        b = self.b
        j0 = b.sext(b.load(b.gep(self.OFF, [rb], inbounds=True), name="j0"), ir.IntType(64))
        j1 = b.sext(b.load(b.gep(self.OFF, [b.add(rb, i64(1))], inbounds=True), name="j1"),
                    ir.IntType(64))
        return j0, j1

    def _column_of(self, j):
        b = self.b
        kk = b.load(b.gep(self.IDX, [j], inbounds=True), name="k")
        return b.sext(kk, ir.IntType(64))

    def _store(self, n, row, col, v, mask, nlanes):
        """Epilogue and store of one result at output [n, row, col] (a vector along the
        output's last axis, or a scalar). Transposed, row counts tokens and col rows of A."""
        b = self.b
        lanes = v.type.count if isinstance(v.type, ir.VectorType) else 1
        grow = b.add(b.mul(n, i64(self.C if self.transposed else self.R)), row, name="grow")
        if self.epilogue is not None:
            ctx = EpilogueContext(b, self.kb.module, grow, col, mask, nlanes, lanes, self.args)
            v = self.epilogue(ctx, v)
        width = self.R if self.transposed else self.C
        p = b.gep(self.dst, [b.add(b.mul(grow, i64(width)), col)], inbounds=True)
        if mask is not None:
            masked_store_vector(b, v, p, mask)
        else:
            b.store(v, b.bitcast(p, ir.PointerType(v.type)), align=4)

    def _store_element(self, n, row, c, v):
        """One scalar result: A's row `row`, b's column `c`."""
        if self.transposed:
            self._store(n, c, row, v, None, 1)
        else:
            self._store(n, row, c, v, None, 1)

    # ----- columns in vectors --------------------------------------------------------------
    def columns_in_vectors(self, n, b_n, rb0, rb1, T: int, group: int) -> None:
        kb, b, vw, C = self.kb, self.b, self.vw, self.C
        width = T * vw
        full = C // width
        tile = None
        if self.transposed:  # rows of A collected here, then stored transposed
            tile = entry_alloca(kb, ir.ArrayType(F32, group * self.block * width), "tile")
            tile = b.bitcast(tile, ir.PointerType(F32))
        if full:
            with kb.loop(0, full, name="ct") as ct:
                c0 = b.mul(ct, i64(width), name="c0")
                self._row_groups(n, b_n, rb0, rb1, c0, T, None, group, tile, width, "t")
        rest = C - full * width
        if rest:
            nvec = -(-rest // vw)
            tail = rest - (nvec - 1) * vw
            mask = None if tail == vw else \
                ir.Constant(ir.VectorType(ir.IntType(1), vw), [i < tail for i in range(vw)])
            self._row_groups(n, b_n, rb0, rb1, i64(full * width), nvec, mask, group, tile,
                             width, "r")

    def _row_groups(self, n, b_n, rb0, rb1, c0, nvec, mask, group, tile, width, tag):
        b = self.b
        if not self.transposed:
            with self.kb.loop(rb0, rb1, name=tag + ".rb") as rb:
                accs = self._accumulate(b_n, rb, c0, nvec, mask, tag)
                self._store_rows(n, rb, c0, accs, nvec, mask)
            return
        with self.kb.loop(rb0, rb1, step=group, name=tag + ".g") as g0:
            for i in range(group):
                rb = b.add(g0, i64(i), name=f"rb{i}")
                accs = self._accumulate(b_n, rb, c0, nvec, mask, tag + str(i))
                for r in range(self.block):
                    for v in range(nvec):
                        slot = (i * self.block + r) * width + v * self.vw
                        p = b.gep(tile, [i64(slot)], inbounds=True)
                        b.store(accs[r * nvec + v], b.bitcast(p, ir.PointerType(accs[0].type)),
                                align=4)
            self._store_transposed(n, g0, c0, nvec, mask, group, tile, width)

    def _accumulate(self, b_n, rb, c0, nvec: int, mask, tag: str) -> list:
        """The block x nvec accumulator vectors of row block `rb` at columns c0..."""
        b, vw, block = self.b, self.vw, self.block
        vt = ir.VectorType(F32, vw)
        j0, j1 = self._blocks_of(rb)
        b_c = b.gep(b_n, [c0], inbounds=True, name=tag + ".bc")

        def step(j, accs):
            kk = self._column_of(j)
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
                    out.append(_fma(b, ws, xs[v], accs[r * nvec + v]))
            return out

        return carried_loop(b, j0, j1, [ir.Constant(vt, None)] * (block * nvec), step,
                            tag + ".j")

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
                    self._store(n, row, col, accs[r * nvec + v], mask if last else None,
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
            left = b.sub(i64(self.R), col, name="left")  # output columns left from col
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
                    self._store_masked_run(n, tok, col, vecs[t], left)

    def _store_masked_run(self, n, tok, col, v, left) -> None:
        """Store a run of output columns, masked where it passes the last one (R)."""
        b, vw = self.b, self.vw
        if self.R % self.group_rows == 0:
            self._store(n, tok, col, v, None, vw)
            return
        full = b.icmp_signed(">=", left, i64(vw), name="full")
        with b.if_else(full) as (then, otherwise):
            with then:
                self._store(n, tok, col, v, None, vw)
            with otherwise:
                lanes = ir.Constant(ir.VectorType(ir.IntType(64), vw), list(range(vw)))
                m = b.icmp_signed("<", lanes, splat(b, left, vw), name="run.mask")
                self._store(n, tok, col, v, m, self.R % vw or vw)

    # ----- one column at a time ----------------------------------------------------------------
    def column(self, n, b_n, rb0, rb1, c) -> None:
        kb, b, block = self.kb, self.b, self.block
        b_c = b.gep(b_n, [c], inbounds=True, name="b.c")
        with kb.loop(rb0, rb1, name="rb") as rb:
            j0, j1 = self._blocks_of(rb)
            if block == 1:
                total = self._csr_dot(b_c, j0, j1)
                self._store_element(n, rb, c, total)
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
        gather = _gather_intrinsic(b.module, vt)
        ones = ir.Constant(ir.VectorType(ir.IntType(1), vw), [1] * vw)

        def vec_step(s, accs):
            j = b.add(j0, b.mul(s, i64(vw)), name="j")
            w = b.load(b.bitcast(b.gep(self.V, [j], inbounds=True), ir.PointerType(vt)),
                       align=4, name="w")
            kk = b.load(b.bitcast(b.gep(self.IDX, [j], inbounds=True), ir.PointerType(it)),
                        align=4, name="kv")
            if C != 1:
                kk = b.mul(kk, ir.Constant(it, [C] * vw), name="kv.c")
            ptrs = vector_gep(b, b_c, b.sext(kk, ir.VectorType(ir.IntType(64), vw)), F32, "xp")
            x = b.call(gather, [ptrs, I32(4), ones, ir.Constant(vt, None)], name="x")
            return [_fma(b, w, x, accs[0])]

        steps = b.udiv(span, i64(vw), name="steps")
        (acc,) = carried_loop(b, i64(0), steps, [ir.Constant(vt, None)], vec_step, "jv")
        total = hreduce(Emitter(b, [dtypes.f32], dtypes.f32, ("contract",)), acc, "sum")

        def one(j, accs):
            kk = self._column_of(j)
            x = b.load(b.gep(b_c, [b.mul(kk, i64(C)) if C != 1 else kk], inbounds=True), name="x")
            w = b.load(b.gep(self.V, [j], inbounds=True), name="w")
            return [_fma(b, w, x, accs[0])]

        (total,) = carried_loop(b, jv, j1, [total], one, "js")
        return total

    def _block_column(self, n, b_c, rb, j0, j1, c) -> None:
        """A block's rows in one vector (block lanes) times b[k, c] broadcast; UNROLL
        accumulators so the FMA latency does not bound a long row."""
        b, block, C = self.b, self.block, self.C
        vt = ir.VectorType(F32, block)

        def product(j):
            kk = self._column_of(j)
            x = b.load(b.gep(b_c, [b.mul(kk, i64(C)) if C != 1 else kk], inbounds=True), name="x")
            w = b.load(b.bitcast(b.gep(self.V, [b.mul(j, i64(block))], inbounds=True),
                                 ir.PointerType(vt)), align=4, name="w")
            return w, splat(b, x, block, "x.s")

        def steps(s, accs):
            base = b.add(j0, b.mul(s, i64(UNROLL)), name="j")
            return [_fma(b, *product(b.add(base, i64(u)) if u else base), accs[u])
                    for u in range(UNROLL)]

        nsteps = b.udiv(b.sub(j1, j0), i64(UNROLL), name="steps")
        accs = carried_loop(b, i64(0), nsteps, [ir.Constant(vt, None)] * UNROLL, steps, "ju")
        acc = accs[0]
        for other in accs[1:]:
            acc = b.fadd(acc, other, name="acc.sum")
        rest = b.add(j0, b.mul(nsteps, i64(UNROLL)), name="j.rest")
        (acc,) = carried_loop(b, rest, j1, [acc], lambda j, a: [_fma(b, *product(j), a[0])],
                              "j")
        row0 = b.mul(rb, i64(block), name="row0")
        if self.transposed and C == 1:  # the block's rows are a run of output columns
            if self.R % block:
                lanes = ir.Constant(ir.VectorType(ir.IntType(64), block), list(range(block)))
                left = b.sub(i64(self.R), row0)
                mask = b.icmp_signed("<", lanes, splat(b, left, block), name="run.mask")
                self._store(n, c, row0, acc, mask, block)
            else:
                self._store(n, c, row0, acc, None, block)
            return
        for r in range(block):
            row = b.add(row0, i64(r), name=f"row{r}")
            v = b.extract_element(acc, I32(r), name=f"y{r}")
            if self.R % block and r:
                with b.if_then(b.icmp_signed("<", row, i64(self.R))):
                    self._store_element(n, row, c, v)
            else:
                self._store_element(n, row, c, v)


def _lanes_on(mask: ir.Constant) -> int:
    """How many lanes of a constant mask are on (its elements are i1 constants)."""
    return sum(1 for x in mask.constant if getattr(x, "constant", x))


def _fma(b, x, y, acc):
    """x * y + acc, contracted to one FMA instruction by the kernel's fast-math flags."""
    return b.fadd(b.fmul(x, y, flags=("contract",)), acc, flags=("contract",))


def _gather_intrinsic(module: ir.Module, vt: ir.VectorType) -> ir.Function:
    """llvm.masked.gather over a vector of opaque pointers (the pre-LLVM-22 signature with
    its alignment operand, which the IR parser upgrades, as for masked loads)."""
    name = f"llvm.masked.gather.v{vt.count}f32.v{vt.count}p0"
    fn = module.globals.get(name)
    if fn is None:
        pt = ir.VectorType(OPAQUE_PTR, vt.count)
        fnty = ir.FunctionType(vt, [pt, I32, ir.VectorType(ir.IntType(1), vt.count), vt])
        fn = ir.Function(module, fnty, name=name)
    return fn


# ----- one column, CSR: sliced rows -------------------------------------------------------------

def sliced_format(values, indices, offsets, rows: int, vw: int):
    """CSR repacked as slices of `vw` rows (SELL-vw): slice s holds steps of vw values, lane
    r of a step belonging to row s*vw + r, the rows' lengths padded to the slice's longest.
    Returns (values [steps*vw], indices [steps*vw], table): table is the slices' first steps
    (nslices + 1 of them) followed by every row's length (nslices * vw), all i32."""
    off = np.asarray(offsets, np.int64)
    lengths = np.zeros(-(-rows // vw) * vw, np.int64)
    lengths[:rows] = np.diff(off)[:rows]
    per_slice = lengths.reshape(-1, vw).max(axis=1)
    starts = np.concatenate([[0], np.cumsum(per_slice)])
    sv = np.zeros((int(starts[-1]), vw), np.float32)
    si = np.zeros((int(starts[-1]), vw), np.int32)
    for r in range(rows):
        s, lane = divmod(r, vw)
        n = int(lengths[r])
        sv[starts[s]:starts[s] + n, lane] = values[off[r]:off[r] + n]
        si[starts[s]:starts[s] + n, lane] = indices[off[r]:off[r] + n]
    table = np.concatenate([starts, lengths]).astype(np.int32)
    return sv.reshape(-1), si.reshape(-1), table, starts


def _sliced_rows(kb: KernelBuilder, node, R: int, K: int, batch: int, off) -> None:
    """A matmul of one row (C = 1, stored transposed) with CSR weights: `vw` rows of A at
    once, each step multiplying one stored value of each of them by b gathered at its
    column, lanes past a row's length masked off (they read nothing, so a NaN in b that meets
    no stored value stays out). Each slice ends as one vector of `vw` output columns."""
    bm, values, indices, offsets = node.inputs
    bld, vw = kb.b, kb.vector_width
    sv, si, table, starts = sliced_format(constant_data(values), constant_data(indices), off,
                                          R, vw)
    name = llvm_name(node.outputs[0].name)
    out = node.outputs[0]
    epilogue, extra, evalues = kb.gemm_epilogue(out, R)
    args = {nm: v for (nm, _), v in zip(extra, evalues)}
    k = _Kernel(kb, node, R, 1, K, 1, True, epilogue, args, kb.ptr(offsets))
    narrow = K <= 1 << 16  # columns fit 16 bits: a third less memory per stored value
    V = kb.substitute_constant(values, sv, name + ".sliced.values")
    IDX = kb.substitute_constant(indices, si.astype(np.uint16) if narrow else si,
                                 name + ".sliced.indices")
    T = kb.substitute_constant(offsets, table, name + ".sliced.table")
    nslices = len(starts) - 1
    bounds = _parts(starts, vw, min(ITEMS, nslices))
    parts = len(bounds) - 1
    part_table = const_table(kb, bounds, "parts", ir.IntType(64))
    kb.parallel_extent = batch * parts
    kb.cost = 2 * int(starts[-1]) * vw * batch
    k.OFF = T  # the slices' first steps come first in the table
    vt = ir.VectorType(F32, vw)
    it = ir.VectorType(I32, vw)
    idx_t = ir.VectorType(ir.IntType(16) if narrow else I32, vw)
    gather = _gather_intrinsic(bld.module, vt)
    lane_ids = ir.Constant(ir.VectorType(ir.IntType(64), vw), list(range(vw)))

    with kb.loop(kb.begin, kb.end, name="item") as item:
        n = bld.udiv(item, i64(parts), name="n")
        part = bld.urem(item, i64(parts), name="part")
        s0 = bld.load(bld.gep(part_table, [part], inbounds=True), name="s0")
        s1 = bld.load(bld.gep(part_table, [bld.add(part, i64(1))], inbounds=True), name="s1")
        b_n = bld.gep(k.B, [bld.mul(n, i64(K))], inbounds=True, name="b.n")
        with kb.loop(s0, s1, name="slice") as sl:
            t0, t1 = k._blocks_of(sl)
            lens = bld.load(bld.bitcast(bld.gep(T, [bld.add(i64(nslices + 1),
                                                           bld.mul(sl, i64(vw)))],
                                                inbounds=True), ir.PointerType(it)),
                            align=4, name="lens")

            def step(t, accs):
                at = bld.mul(t, i64(vw), name="at")
                w = bld.load(bld.bitcast(bld.gep(V, [at], inbounds=True), ir.PointerType(vt)),
                             align=4, name="w")
                kk = bld.load(bld.bitcast(bld.gep(IDX, [at], inbounds=True),
                                          ir.PointerType(idx_t)), align=2, name="kv")
                kk = bld.zext(kk, it) if narrow else kk
                live = bld.icmp_signed("<", splat(bld, bld.trunc(bld.sub(t, t0), I32), vw),
                                       lens, name="live")
                ptrs = vector_gep(bld, b_n, bld.zext(kk, ir.VectorType(ir.IntType(64), vw)),
                                  F32, "xp")
                x = bld.call(gather, [ptrs, I32(4), live, ir.Constant(vt, None)], name="x")
                return [_fma(bld, w, x, accs[0])]

            (acc,) = carried_loop(bld, t0, t1, [ir.Constant(vt, None)], step, "t")
            col = bld.mul(sl, i64(vw), name="col")
            if R % vw:
                left = bld.sub(i64(R), col)
                mask = bld.icmp_signed("<", lane_ids, splat(bld, left, vw), name="run.mask")
                k._store(n, i64(0), col, acc, mask, R % vw)
            else:
                k._store(n, i64(0), col, acc, None, vw)
    bld.ret_void()
