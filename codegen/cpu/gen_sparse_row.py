"""sparse_matmul of one token (C = 1, stored transposed): y = A x, x dense.

CSR weights: rows of A go in slices, a slice's rows one per vector lane; each step multiplies
one stored value of each row of the slice by x at that value's column, so each step reads its
values as whole vectors. Where the x values come from decides the speed:

* Windowed (AVX-512, K >= 32): a step's lanes read x in one window of 32 consecutive
  columns, held in two registers and picked per lane by one `vpermi2ps`: no gather. The
  window of a step starts at the smallest column any row of the slice still waits for, and
  every row whose next column falls in it takes it; rows with none left, or a next column
  past the window, idle that step (masked out of the FMA). A slice is GROUP vectors (64
  rows): its two window loads, which split cache lines, serve four permutes and FMAs, and at
  10% density three fifths of the lanes still work each step. Per step: one window start,
  one i32 per lane holding its offset in each of the four vectors (one load and a shift a
  vector, where widening bytes took a second shuffle-port instruction beside the permute:
  Emerald Rapids, 256 x 1024 at 90%, 3.57 -> 3.32 us), a 16-bit mask a vector, and the
  values. The stream of values is what bounds it (bytes per stored value ~ 4 / lanes
  working): with permutes and masks taken out the same loop runs at dense's L2 bandwidth.
* Gathered (AVX2, or K < 32): slices of one vector in SELL order, x gathered at the stored
  columns (about one value a cycle on Zen 4: it gains on dense only at high sparsity).

Measured on Zen 4 (C microbenchmarks of the step, 10% density): gather 5.7 ns a vector step;
windowed one vector a slice 1.45 ns (the two unaligned window loads cost half of it); a
64-column window at aligned starts 1.7 ns; values expanded from a dense stream
(`vexpandps`) slower than padded ones.

Each slice ends as GROUP vectors of output columns, stored with the fused epilogue. Lanes
that idle multiply nothing: a NaN in x that meets no stored value stays out. Summation
order: per row, stored-column order (one accumulator a vector).

Weights in 1 x block blocks: `one_token_blocks`, eight block rows a step, sorted by length.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
from llvmlite import ir

from slimc.ir.graph import constant_data

from .common import const_table
from .gemm_int8 import intrinsic
from .sparse_parts import (ITEMS, SparseKernel, fma, gather_intrinsic, narrow_columns,
                           work_parts)
from .kernel import KernelBuilder, llvm_name
from .llvm_util import F32, I32, all_finite, carried_loop, i64, splat, vector_gep

WINDOW = 32  # columns a windowed step picks from: two AVX-512 registers
GROUP = 4  # vectors of rows in a windowed slice: they share each step's window (at
# most 4: a step's offsets of one lane share an i32)
IDLE = 0x80  # offset byte of a lane that idles this step


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


def windowed_format(values, indices, offsets, rows: int, k: int, vw: int = GROUP * 16,
                    window: int = WINDOW):
    """CSR repacked as windowed steps of slices of `vw` rows (see the module docstring), all
    slices stepped at once. Returns (values [steps, vw] f32, offsets [steps, vw] u8 (IDLE
    where a row idles), window starts [steps] i32, starts [nslices + 1]: each slice's first
    step)."""
    off = np.asarray(offsets, np.int64)
    idx = np.asarray(indices, np.int64)
    vals = np.asarray(values, np.float32)
    nsl = -(-rows // vw)
    first = np.zeros(nsl * vw, np.int64)
    length = np.zeros(nsl * vw, np.int64)
    first[:rows], length[:rows] = off[:rows], np.diff(off)[:rows]
    first, length = first.reshape(nsl, vw), length.reshape(nsl, vw)
    pos = np.zeros_like(length)
    rounds = []  # per round: (slices stepping, values, offsets, starts)
    far = np.iinfo(np.int64).max
    while True:
        waiting = pos < length
        stepping = np.nonzero(waiting.any(axis=1))[0]
        if not len(stepping):
            break
        waiting = waiting[stepping]
        j = np.where(waiting, first[stepping] + pos[stepping], 0)
        nxt = np.where(waiting, idx[j] if len(idx) else 0, far)
        start = np.minimum(nxt.min(axis=1), k - window)
        take = waiting & (nxt < start[:, None] + window)
        rounds.append((stepping, np.where(take, vals[j] if len(vals) else 0, 0),
                       np.where(take, nxt - start[:, None], IDLE), start))
        pos[stepping] += take
    steps = np.zeros(nsl, np.int64)
    for stepping, *_ in rounds:
        steps[stepping] += 1
    starts = np.concatenate([[0], np.cumsum(steps)])
    sv = np.zeros((int(starts[-1]), vw), np.float32)
    so = np.full((int(starts[-1]), vw), IDLE, np.uint8)
    ss = np.zeros(int(starts[-1]), np.int32)
    at = starts[:-1].copy()  # each slice's next step
    for stepping, v, o, s in rounds:
        sv[at[stepping]], so[at[stepping]], ss[at[stepping]] = v, o, s
        at[stepping] += 1
    return sv, so, ss, starts


def step_lanes(so: np.ndarray, vw: int):
    """The windowed kernel's form of the offset bytes `so` [steps, GROUP * vw]: per step, one
    i32 per lane holding that lane's offset in each of the GROUP vectors (byte i: vector i),
    so one load and a shift give a vector's permute indices without widening bytes (a
    `vpmovzxbd`, on the shuffle port the permutes need); and per vector a mask of its working
    lanes (an i16 for AVX-512's k registers, loaded as is). Returns (lanes [steps, vw] u32,
    masks [steps, GROUP] u16)."""
    steps = so.shape[0]
    grouped = so.reshape(steps, GROUP, vw)
    live = grouped != IDLE
    bytes_ = np.where(live, grouped, 0).astype(np.uint32)
    lanes = np.zeros((steps, vw), np.uint32)
    for i in range(GROUP):
        lanes |= bytes_[:, i] << np.uint32(8 * i)
    masks = (live.astype(np.uint32) << np.arange(vw, dtype=np.uint32)).sum(axis=2)
    return lanes, masks.astype(np.uint16)


@contextmanager
def slice_items(kb: KernelBuilder, k: SparseKernel, bounds: list, batch: int, K: int,
                per_item=None):
    """The kernel's items (batch entry x part of the slices, `bounds` the parts' first
    slices) and each item's slices: yields (batch entry, its x, slice, per_item(x) computed
    once an item before its slices, or None)."""
    bld = kb.b
    parts = len(bounds) - 1
    part_table = const_table(kb, bounds, "parts", ir.IntType(64))
    kb.parallel_extent = batch * parts
    with kb.loop(kb.begin, kb.end, name="item") as item:
        n = bld.udiv(item, i64(parts), name="n")
        part = bld.urem(item, i64(parts), name="part")
        s0 = bld.load(bld.gep(part_table, [part], inbounds=True), name="s0")
        s1 = bld.load(bld.gep(part_table, [bld.add(part, i64(1))], inbounds=True), name="s1")
        x = bld.gep(k.B, [bld.mul(n, i64(K))], inbounds=True, name="x.n")
        item = per_item(x) if per_item is not None else None
        with kb.loop(s0, s1, name="slice") as sl:
            yield n, x, sl, item


def one_token(kb: KernelBuilder, node, R: int, K: int, batch: int, off, block: int) -> None:
    """The slices' loop: parts of about equal work per thread, each slice's steps, then its
    vectors of output columns stored."""
    if block > 1:
        return one_token_blocks(kb, node, R, K, batch, off, block)
    bm, values, indices, offsets = node.inputs
    bld, vw = kb.b, kb.vector_width
    name = llvm_name(node.outputs[0].name)
    epilogue, extra, evalues = kb.gemm_epilogue(node.outputs[0], R)
    args = {nm: v for (nm, _), v in zip(extra, evalues)}
    k = SparseKernel(kb, node, R, 1, K, 1, True, epilogue, args, kb.ptr(offsets))
    vals, idx = constant_data(values), constant_data(indices)
    if kb.target.has_avx512f and vw == 16 and K >= WINDOW:
        sv, so, ss, starts = windowed_format(vals, idx, off, R, K, GROUP * vw)
        step = _WindowedSteps(kb, values, indices, sv, so, ss, K, name)
        k.OFF = kb.substitute_constant(offsets, starts.astype(np.int32), name + ".slices")
    else:
        sv, si, table, starts = sliced_format(vals, idx, off, R, vw)
        step = _GatheredSteps(kb, values, indices, offsets, sv, si, table, len(starts) - 1,
                              K, name)
        k.OFF = step.table  # the slices' first steps come first in the table
    width = step.vectors * vw  # rows a slice
    nslices = len(starts) - 1
    bounds = work_parts(starts, width, min(ITEMS, nslices))
    kb.cost = 2 * int(starts[-1]) * width * batch
    with slice_items(kb, k, bounds, batch, K, step.per_item) as (n, x, sl, item):
        t0, t1 = k.blocks_of(sl)
        accs = step(x, t0, t1, sl, item)
        row0 = bld.mul(sl, i64(width), name="row0")
        for i, acc in enumerate(accs):  # the last slice's vectors past R: not stored
            col = bld.add(row0, i64(i * vw), name=f"col{i}") if i else row0
            k.store_run(n, i64(0), col, acc, whole=R % width == 0)
    bld.ret_void()


class _WindowedSteps:
    """One slice's windowed steps: GROUP vectors of rows, one accumulator each."""

    vectors = GROUP

    def __init__(self, kb, values, indices, sv, so, ss, K, name):
        self.b, self.vw, self.K = kb.b, kb.vector_width, K
        self.V = kb.substitute_constant(values, sv.reshape(-1), name + ".window.values")
        lanes, masks = step_lanes(so, self.vw)
        # per step: the lanes' offsets (one i32 per lane, byte i for vector i), the vectors'
        # masks (i16 each), then the window starts (i32; every part stays 4-byte aligned)
        blob = np.concatenate([lanes.view(np.uint8).reshape(-1), masks.view(np.uint8).reshape(-1),
                               ss.astype("<i4").view(np.uint8)])
        self.O = kb.substitute_constant(indices, blob, name + ".window.offsets")
        self.lanes = self.b.bitcast(self.O, ir.PointerType(I32), name="window.lanes")
        self.masks = self.b.bitcast(self.b.gep(self.O, [i64(lanes.nbytes)], inbounds=True),
                                    ir.PointerType(ir.IntType(self.vw)), name="window.masks")
        self.S = self.b.bitcast(self.b.gep(self.O, [i64(lanes.nbytes + masks.nbytes)],
                                           inbounds=True),
                                ir.PointerType(I32), name="window.starts")
        vt = ir.VectorType(F32, self.vw)
        self.permute = intrinsic(self.b.module, "llvm.x86.avx512.vpermi2var.ps.512", vt,
                                 [vt, ir.VectorType(I32, self.vw), vt])

    def per_item(self, x):
        """Whether the item's x is all finite: then a lane that idles may multiply its zero
        value by whatever x it picked, and the steps need no masks."""
        return all_finite(self.b, x, self.K, self.vw, "x.finite")

    def one(self, x, t, accs, masked: bool):
        b, vw = self.b, self.vw
        vt, it = ir.VectorType(F32, vw), ir.VectorType(I32, vw)
        start = b.sext(b.load(b.gep(self.S, [t], inbounds=True), name="start"),
                       ir.IntType(64))
        xw = b.gep(x, [start], inbounds=True, name="xw")
        lo = b.load(b.bitcast(xw, ir.PointerType(vt)), align=4, name="x.lo")
        hi = b.load(b.bitcast(b.gep(xw, [i64(vw)], inbounds=True), ir.PointerType(vt)),
                    align=4, name="x.hi")
        at = b.mul(t, i64(GROUP * vw), name="at")
        offsets = b.load(b.bitcast(b.gep(self.lanes, [b.mul(t, i64(vw))], inbounds=True),
                                   ir.PointerType(it)), align=64, name="o")
        out = []
        for i, acc in enumerate(accs):
            # vpermi2ps reads an offset's low 5 bits only: vector i's byte shifted down
            o = b.lshr(offsets, ir.Constant(it, [8 * i] * vw), name=f"o{i}") if i else offsets
            xs = b.call(self.permute, [lo, o, hi], name=f"x{i}")
            ati = b.add(at, i64(i * vw), name=f"at{i}") if i else at
            w = b.load(b.bitcast(b.gep(self.V, [ati], inbounds=True), ir.PointerType(vt)),
                       align=4, name=f"w{i}")
            if not masked:  # an idle lane: value 0 times a finite x, added to its sum
                out.append(fma(b, w, xs, acc))
                continue
            mask = b.load(b.gep(self.masks, [b.add(b.mul(t, i64(GROUP)), i64(i))],
                                inbounds=True), align=2, name=f"m{i}")
            live = b.bitcast(mask, ir.VectorType(ir.IntType(1), vw), name=f"live{i}")
            out.append(b.select(live, fma(b, w, xs, acc), acc, name=f"acc{i}"))
        return out

    def __call__(self, x, t0, t1, sl, finite):
        """The slice's steps: without masks when x is all finite (each k-register load
        takes the shuffle port the permutes need: Emerald Rapids, 1024 x 256 at 90%, a C
        model of the loop 2.44 -> 2.05 us), masked otherwise (NaN or infinity times an
        idle lane's zero would reach its row)."""
        b = self.b
        vt = ir.VectorType(F32, self.vw)
        zero = [ir.Constant(vt, None)] * GROUP
        results = []
        with b.if_else(finite) as (fast, safe):
            for masked, branch in ((False, fast), (True, safe)):
                with branch:
                    accs = carried_loop(b, t0, t1, zero,
                                        lambda t, a, m=masked: self.one(x, t, a, m),
                                        "t.masked" if masked else "t")
                    results.append((accs, b.block))
        merged = []
        for i in range(GROUP):
            phi = b.phi(vt, name=f"acc{i}.slice")
            for accs, block in results:
                phi.add_incoming(accs[i], block)
            merged.append(phi)
        return merged


class _GatheredSteps:
    """One slice's SELL-vw steps, x gathered at each lane's stored column; lanes past a
    row's length masked off."""

    vectors = 1
    per_item = None  # masked by each row's length, whatever x holds

    def __init__(self, kb, values, indices, offsets, sv, si, table, nslices, K, name):
        self.b, self.vw, self.nslices = kb.b, kb.vector_width, nslices
        self.narrow = narrow_columns(K)  # a third less memory per value
        self.V = kb.substitute_constant(values, sv, name + ".sliced.values")
        self.IDX = kb.substitute_constant(indices, si.astype(np.uint16) if self.narrow else si,
                                          name + ".sliced.indices")
        self.table = kb.substitute_constant(offsets, table, name + ".sliced.table")
        self.gather = gather_intrinsic(self.b.module, ir.VectorType(F32, self.vw))

    def __call__(self, x, t0, t1, sl, _):
        b, vw = self.b, self.vw
        vt, it = ir.VectorType(F32, vw), ir.VectorType(I32, vw)
        idx_t = ir.VectorType(ir.IntType(16) if self.narrow else I32, vw)
        lens = b.load(b.bitcast(b.gep(self.table, [b.add(i64(self.nslices + 1),
                                                          b.mul(sl, i64(vw)))],
                                      inbounds=True), ir.PointerType(it)), align=4, name="lens")

        def step(t, accs):
            at = b.mul(t, i64(vw), name="at")
            w = b.load(b.bitcast(b.gep(self.V, [at], inbounds=True), ir.PointerType(vt)),
                       align=4, name="w")
            kk = b.load(b.bitcast(b.gep(self.IDX, [at], inbounds=True), ir.PointerType(idx_t)),
                        align=2, name="kv")
            kk = b.zext(kk, it) if self.narrow else kk
            live = b.icmp_signed("<", splat(b, b.trunc(b.sub(t, t0), I32), vw), lens,
                                 name="live")
            ptrs = vector_gep(b, x, b.zext(kk, ir.VectorType(ir.IntType(64), vw)), F32, "xp")
            xs = b.call(self.gather, [ptrs, I32(4), live, ir.Constant(vt, None)], name="x")
            return [fma(b, w, xs, accs[0])]

        return carried_loop(b, t0, t1, [ir.Constant(vt, None)], step, "t")


# ----- one token, weights in 1 x block blocks ------------------------------------------------

BLOCK_SLICE = 8  # block rows a slice: its independent accumulators (the FMA latency)


def block_slices(offsets, slice_rows: int = BLOCK_SLICE):
    """The block rows sorted by their number of stored blocks (longest first, so a slice's
    rows are about equally long) and cut into slices of `slice_rows`; step t of a slice holds
    the t-th block of each of its rows. Returns (order [nslices * slice_rows]: the block row
    in each slot, -1 past the last; lengths [same]; starts [nslices + 1]: each slice's first
    step; full [nslices]: the steps every row of the slice has; blocks [steps * slice_rows]:
    the stored block in each slot of each step, -1 where the row has none left)."""
    off = np.asarray(offsets, np.int64)
    nrb = len(off) - 1
    length = np.diff(off)
    nsl = -(-nrb // slice_rows)
    order = np.full(nsl * slice_rows, -1, np.int64)
    order[:nrb] = np.argsort(-length, kind="stable")
    lengths = np.where(order >= 0, length[order], 0).reshape(nsl, slice_rows)
    steps = lengths.max(axis=1)
    starts = np.concatenate([[0], np.cumsum(steps)])
    blocks = np.full((int(starts[-1]), slice_rows), -1, np.int64)
    for s in range(nsl):
        for i in range(slice_rows):
            rb = order[s * slice_rows + i]
            if rb >= 0:
                blocks[starts[s]:starts[s] + length[rb], i] = np.arange(off[rb], off[rb + 1])
    return order, lengths.reshape(-1), starts, lengths.min(axis=1), blocks.reshape(-1)


def one_token_blocks(kb: KernelBuilder, node, R: int, K: int, batch: int, off,
                     block: int) -> None:
    """One token with weights in 1 x `block` blocks (a block: `block` consecutive outputs at
    one input): a slice's BLOCK_SLICE rows advance together, each step one block of each row
    (its input broadcast times a vector of `block` values), so the loop has no per-row tail
    or reduction and the FMAs of a step are independent. The rows are sorted by length, so
    a slice's steps are mostly whole; the steps past its shortest row mask each row that has
    ended (a NaN in x reaches only the rows storing a value at its column). Each row's result
    is stored at its own place (the sorted order is a table). Summation: per row, in stored-
    column order, one FMA at a time. (Emerald Rapids, one thread, 90% in 1x8 blocks, A/B in
    one process: 256 x 1024 3.21 -> 2.72 us a call, 1024 x 256 3.60 -> 3.43, against the
    generic kernel's row at a time with four accumulators and a tail; two rows side by side
    in one AVX-512 vector measured the same and were left out.)"""
    bm, values, indices, offsets = node.inputs
    bld, S = kb.b, BLOCK_SLICE
    name = llvm_name(node.outputs[0].name)
    epilogue, extra, evalues = kb.gemm_epilogue(node.outputs[0], R)
    args = {nm: v for (nm, _), v in zip(extra, evalues)}
    k = SparseKernel(kb, node, R, block, K, 1, True, epilogue, args, kb.ptr(offsets))
    order, lengths, starts, full, blocks = block_slices(off, S)
    vals = np.asarray(constant_data(values), np.float32).reshape(-1, block)
    idx = np.asarray(constant_data(indices), np.int64)
    there = blocks >= 0
    sv = np.where(there[:, None], vals[np.maximum(blocks, 0)], 0).astype(np.float32)
    si = np.where(there, idx[np.maximum(blocks, 0)], 0)
    narrow = narrow_columns(K)
    V = kb.substitute_constant(values, sv.reshape(-1), name + ".slices.values")
    IDX = kb.substitute_constant(indices, si.astype(np.uint16 if narrow else np.int32),
                                 name + ".slices.columns")
    nsl = len(starts) - 1
    table = np.concatenate([starts, full, order, lengths]).astype(np.int32)
    T = kb.substitute_constant(offsets, table, name + ".slices.table")
    bounds = work_parts(starts, S * block, min(ITEMS, nsl))
    kb.cost = 2 * int(starts[-1]) * S * block * batch
    vt = ir.VectorType(F32, block)
    I64T = ir.IntType(64)

    def entry(at, name_):
        """An entry of the slices' table, as i64."""
        return bld.sext(bld.load(bld.gep(T, [at], inbounds=True), name=name_), I64T)

    def columns(t):
        """The step's S column indices: 16-bit ones read four at a time as an i64 and taken
        apart with shifts (ALU work, where S loads would queue behind the values' loads)."""
        j0 = bld.mul(t, i64(S), name="j0")
        if not narrow:
            return [bld.sext(bld.load(bld.gep(IDX, [bld.add(j0, i64(i))], inbounds=True),
                                      name=f"k{i}"), I64T) for i in range(S)]
        words = bld.bitcast(bld.gep(IDX, [j0], inbounds=True), ir.PointerType(I64T))
        out = []
        for q in range(S // 4):
            word = bld.load(bld.gep(words, [i64(q)], inbounds=True), align=2, name=f"k{q}.4")
            for r in range(4):
                part = bld.lshr(word, i64(16 * r)) if r else word
                out.append(bld.and_(part, i64(0xFFFF), name=f"k{4 * q + r}"))
        return out

    def step(x, t, accs, ended=None):
        """One block of each row: its input broadcast times its `block` values."""
        cols = columns(t)
        base = bld.mul(t, i64(S * block), name="w.at")
        out = []
        for i, acc in enumerate(accs):
            xs = splat(bld, bld.load(bld.gep(x, [cols[i]], inbounds=True), name=f"x{i}"),
                       block, f"x{i}.s")
            at = bld.add(base, i64(i * block), name=f"w{i}.at") if i else base
            w = bld.load(bld.bitcast(bld.gep(V, [at], inbounds=True), ir.PointerType(vt)),
                         align=4, name=f"w{i}")
            new = fma(bld, w, xs, acc)
            out.append(bld.select(ended[i], acc, new, name=f"acc{i}") if ended else new)
        return out

    with slice_items(kb, k, bounds, batch, K) as (n, x, sl, _):
        t0, t1 = entry(sl, "t0"), entry(bld.add(sl, i64(1)), "t1")
        tf = bld.add(t0, entry(bld.add(sl, i64(nsl + 1)), "full"), name="tf")
        zero = [ir.Constant(vt, None)] * S
        accs = carried_loop(bld, t0, tf, zero, lambda t, a: step(x, t, a), "t")
        slot0 = bld.mul(sl, i64(S), name="slot0")
        lens = [entry(bld.add(slot0, i64(2 * nsl + 1 + nsl * S + i)), f"len{i}")
                for i in range(S)]

        def ended_step(t, a):
            done = bld.sub(t, t0, name="done")
            return step(x, t, a, [bld.icmp_signed(">=", done, ln) for ln in lens])

        accs = carried_loop(bld, tf, t1, accs, ended_step, "tm")
        for i, acc in enumerate(accs):
            rb = entry(bld.add(slot0, i64(2 * nsl + 1 + i)), f"rb{i}")
            col = bld.mul(rb, i64(block), name=f"col{i}")
            if len(order) > len(off) - 1:  # the last slice has empty slots
                with bld.if_then(bld.icmp_signed(">=", rb, i64(0))):
                    k.store_run(n, i64(0), col, acc, whole=R % block == 0)
            else:
                k.store_run(n, i64(0), col, acc, whole=R % block == 0)
    bld.ret_void()
