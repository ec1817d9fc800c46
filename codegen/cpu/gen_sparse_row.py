"""sparse_matmul of one token (C = 1, stored transposed) with CSR weights: y = A x, x dense.

Rows of A go in slices, a slice's rows one per vector lane; each step multiplies one stored
value of each row of the slice by x at that value's column, so each step reads its values as
whole vectors. Where the x values come from decides the speed:

* Windowed (AVX-512, K >= 32): a step's lanes read x in one window of 32 consecutive
  columns, held in two registers and picked per lane by one `vpermi2ps`: no gather. The
  window of a step starts at the smallest column any row of the slice still waits for, and
  every row whose next column falls in it takes it; rows with none left, or a next column
  past the window, idle that step (offset byte bit 7 set: masked out of the FMA). A slice
  is GROUP vectors (64 rows): its two window loads, which split cache lines, serve four
  permutes and FMAs, and at 10% density three fifths of the lanes still work each step.
  Per step: one window start, then per vector 16 offset bytes and 16 values. The stream of
  values is what bounds it (bytes per stored value ~ 4 / lanes working).
* Gathered (AVX2, or K < 32): slices of one vector in SELL order, x gathered at the stored
  columns (about one value a cycle on Zen 4: it gains on dense only at high sparsity).

Measured on Zen 4 (C microbenchmarks of the step, 10% density): gather 5.7 ns a vector step;
windowed one vector a slice 1.45 ns (the two unaligned window loads cost half of it); a
64-column window at aligned starts 1.7 ns; values expanded from a dense stream
(`vexpandps`) slower than padded ones.

Each slice ends as GROUP vectors of output columns, stored with the fused epilogue. Lanes
that idle multiply nothing: a NaN in x that meets no stored value stays out. Summation
order: per row, stored-column order (one accumulator a vector).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from slimc.ir.graph import constant_data

from .common import const_table
from .gemm_int8 import intrinsic
from .sparse_parts import (ITEMS, SparseKernel, fma, gather_intrinsic, narrow_columns,
                           work_parts)
from .kernel import KernelBuilder, llvm_name
from .llvm_util import F32, I32, carried_loop, i64, splat, vector_gep

WINDOW = 32  # columns a windowed step picks from: two AVX-512 registers
GROUP = 4  # vectors of rows in a windowed slice: they share each step's window
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


def one_token(kb: KernelBuilder, node, R: int, K: int, batch: int, off) -> None:
    """The slices' loop: parts of about equal work per thread, each slice's steps, then its
    vectors of output columns stored."""
    bm, values, indices, offsets = node.inputs
    bld, vw = kb.b, kb.vector_width
    name = llvm_name(node.outputs[0].name)
    epilogue, extra, evalues = kb.gemm_epilogue(node.outputs[0], R)
    args = {nm: v for (nm, _), v in zip(extra, evalues)}
    k = SparseKernel(kb, node, R, 1, K, 1, True, epilogue, args, kb.ptr(offsets))
    vals, idx = constant_data(values), constant_data(indices)
    if kb.target.has_avx512f and vw == 16 and K >= WINDOW:
        sv, so, ss, starts = windowed_format(vals, idx, off, R, K, GROUP * vw)
        step = _WindowedSteps(kb, values, indices, sv, so, ss, name)
        k.OFF = kb.substitute_constant(offsets, starts.astype(np.int32), name + ".slices")
    else:
        sv, si, table, starts = sliced_format(vals, idx, off, R, vw)
        step = _GatheredSteps(kb, values, indices, offsets, sv, si, table, len(starts) - 1,
                              K, name)
        k.OFF = step.table  # the slices' first steps come first in the table
    width = step.vectors * vw  # rows a slice
    nslices = len(starts) - 1
    bounds = work_parts(starts, width, min(ITEMS, nslices))
    parts = len(bounds) - 1
    part_table = const_table(kb, bounds, "parts", ir.IntType(64))
    kb.parallel_extent = batch * parts
    kb.cost = 2 * int(starts[-1]) * width * batch
    lane_ids = ir.Constant(ir.VectorType(ir.IntType(64), vw), list(range(vw)))

    def store(n, col, acc, last: bool):
        if last and R % vw:  # the vector reaching past R: its lanes there masked off
            left = bld.sub(i64(R), col)
            mask = bld.icmp_signed("<", lane_ids, splat(bld, left, vw), name="run.mask")
            k.store(n, i64(0), col, acc, mask, R % vw)
        else:
            k.store(n, i64(0), col, acc, None, vw)

    with kb.loop(kb.begin, kb.end, name="item") as item:
        n = bld.udiv(item, i64(parts), name="n")
        part = bld.urem(item, i64(parts), name="part")
        s0 = bld.load(bld.gep(part_table, [part], inbounds=True), name="s0")
        s1 = bld.load(bld.gep(part_table, [bld.add(part, i64(1))], inbounds=True), name="s1")
        x = bld.gep(k.B, [bld.mul(n, i64(K))], inbounds=True, name="x.n")
        with kb.loop(s0, s1, name="slice") as sl:
            t0, t1 = k.blocks_of(sl)
            accs = step(x, t0, t1, sl)
            row0 = bld.mul(sl, i64(width), name="row0")
            for i, acc in enumerate(accs):
                col = bld.add(row0, i64(i * vw), name=f"col{i}") if i else row0
                if R % width == 0:
                    store(n, col, acc, False)
                    continue
                # the last slice: vectors past R are not stored, the one across R masked
                whole = bld.icmp_signed("<=", bld.add(col, i64(vw)), i64(R), name="whole")
                with bld.if_else(whole) as (then, otherwise):
                    with then:
                        store(n, col, acc, False)
                    with otherwise:
                        with bld.if_then(bld.icmp_signed("<", col, i64(R))):
                            store(n, col, acc, True)
    bld.ret_void()


class _WindowedSteps:
    """One slice's windowed steps: GROUP vectors of rows, one accumulator each."""

    vectors = GROUP

    def __init__(self, kb, values, indices, sv, so, ss, name):
        self.b, self.vw = kb.b, kb.vector_width
        self.V = kb.substitute_constant(values, sv.reshape(-1), name + ".window.values")
        # the offset bytes, then the window starts (i32, 4-byte aligned after steps * 64 bytes)
        blob = np.concatenate([so.reshape(-1), ss.astype("<i4").view(np.uint8)])
        self.O = kb.substitute_constant(indices, blob, name + ".window.offsets")
        self.S = self.b.bitcast(self.b.gep(self.O, [i64(so.size)], inbounds=True),
                                ir.PointerType(I32), name="window.starts")
        vt = ir.VectorType(F32, self.vw)
        self.permute = intrinsic(self.b.module, "llvm.x86.avx512.vpermi2var.ps.512", vt,
                                 [vt, ir.VectorType(I32, self.vw), vt])

    def one(self, x, t, accs):
        b, vw = self.b, self.vw
        vt, it = ir.VectorType(F32, vw), ir.VectorType(I32, vw)
        start = b.sext(b.load(b.gep(self.S, [t], inbounds=True), name="start"),
                       ir.IntType(64))
        xw = b.gep(x, [start], inbounds=True, name="xw")
        lo = b.load(b.bitcast(xw, ir.PointerType(vt)), align=4, name="x.lo")
        hi = b.load(b.bitcast(b.gep(xw, [i64(vw)], inbounds=True), ir.PointerType(vt)),
                    align=4, name="x.hi")
        at = b.mul(t, i64(GROUP * vw), name="at")
        out = []
        for i, acc in enumerate(accs):
            ati = b.add(at, i64(i * vw), name=f"at{i}") if i else at
            o = b.load(b.bitcast(b.gep(self.O, [ati], inbounds=True),
                                 ir.PointerType(ir.VectorType(ir.IntType(8), vw))), align=1,
                       name=f"o{i}")
            o = b.zext(o, it, name=f"o{i}.32")
            live = b.icmp_unsigned("<", o, ir.Constant(it, [WINDOW] * vw), name=f"live{i}")
            xs = b.call(self.permute, [lo, o, hi], name=f"x{i}")
            w = b.load(b.bitcast(b.gep(self.V, [ati], inbounds=True), ir.PointerType(vt)),
                       align=4, name=f"w{i}")
            out.append(b.select(live, fma(b, w, xs, acc), acc, name=f"acc{i}"))
        return out

    def __call__(self, x, t0, t1, sl):
        vt = ir.VectorType(F32, self.vw)
        return carried_loop(self.b, t0, t1, [ir.Constant(vt, None)] * GROUP,
                            lambda t, accs: self.one(x, t, accs), "t")


class _GatheredSteps:
    """One slice's SELL-vw steps, x gathered at each lane's stored column; lanes past a
    row's length masked off."""

    vectors = 1

    def __init__(self, kb, values, indices, offsets, sv, si, table, nslices, K, name):
        self.b, self.vw, self.nslices = kb.b, kb.vector_width, nslices
        self.narrow = narrow_columns(K)  # a third less memory per value
        self.V = kb.substitute_constant(values, sv, name + ".sliced.values")
        self.IDX = kb.substitute_constant(indices, si.astype(np.uint16) if self.narrow else si,
                                          name + ".sliced.indices")
        self.table = kb.substitute_constant(offsets, table, name + ".sliced.table")
        self.gather = gather_intrinsic(self.b.module, ir.VectorType(F32, self.vw))

    def __call__(self, x, t0, t1, sl):
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
