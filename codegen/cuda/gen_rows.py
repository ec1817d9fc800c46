"""Rows: the machinery of GPU generators whose work is shaped as rows (gen_reduce.py's
reductions, global pools and arg_max / arg_min; gen_norm.py's softmax family and
normalizations; attention's warp reductions).

Each op is R rows of L elements (the op says where element j of row r lies), and each row gets
T threads (a power of two); thread `lane` of a row takes elements lane, lane + T, .... When a
thread has at most CACHE of them it keeps them in registers, so the row is read once however
many passes the op makes (max, then sum, then store); otherwise every pass streams them from
memory again. Two layouts:

- contiguous rows: a row's threads are adjacent lanes, so they read adjacent elements. T <= 32
  shares a warp with other rows, T > 32 is a whole block per row. A statistic is a fold in each
  thread, a butterfly of warp shuffles (every lane ends with the result), and across the warps
  of a block one shared slot per warp, a barrier and a second butterfly. T aims at PER_THREAD
  elements per thread (T = 1 for rows of 1..8).
- strided rows (softmax over a non-last axis, a reduction over outer axes): adjacent rows are
  adjacent in memory, so a block is 32 rows side by side (lane of the warp = row, which
  coalesces) times T <= 32 warps that split each row; a statistic goes through shared memory,
  every thread adding the T partial results of its row. T shrinks as rows grow in number
  (ACTIVE_THREADS fill the GPU), down to 1: a thread per row.

f64 rows get T = 1 (shuffles move 32 bits). Threads past the last row compute the last row
again and store nothing: every lane of a warp reaches every shuffle and every thread of a
block every barrier.
"""

from __future__ import annotations

import contextlib
import math

from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.errors import UnsupportedError

from ..cpu.common import acc_dtype, cdiv, emitter, entry_alloca, numel, unflatten
from ..cpu.kernel import llvm_name
from ..cpu.llvm_util import const, i64, llvm_type
from ..cpu.scalar_ops import convert
from .kernel import GpuKernelBuilder

WARP = 32
CACHE = 32  # elements a thread keeps in registers; longer rows stream once per pass
PER_THREAD = 8  # elements per thread that the threads of a row aim at
ACTIVE_THREADS = 1 << 18  # threads that keep a GPU's memory busy (132 SMs x 2048)
BLOCK = 128  # threads per block when contiguous rows share blocks


def pow2_at_least(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())


def threads_per_row(L: int, R: int, strided: bool, shuffles: bool) -> int:
    """T for R rows of L elements (see the module's docstring)."""
    if L <= 1 or not shuffles:
        return 1
    T = pow2_at_least(cdiv(L, PER_THREAD))
    if strided:
        return max(1, min(WARP, T, ACTIVE_THREADS // pow2_at_least(R)))
    return min(1024, T)


# ----- warp and block reductions ----------------------------------------------------------

def combiner(e, op: str):
    """The binary operation of a fold: "sum", "max" and "min" (NaN-propagating), "prod"."""
    return {"sum": e.add, "max": e.max, "min": e.min, "prod": e.mul}[op]


def warp_reduce(kb: GpuKernelBuilder, x: ir.Value, op, width: int) -> ir.Value:
    """Butterfly over aligned groups of `width` lanes (a power of two <= 32): every lane of a
    group ends with the group's result."""
    off = width // 2
    while off >= 1:
        x = op(x, kb.shuffle("bfly", x, off))
        off //= 2
    return x


def shared_slots(kb: GpuKernelBuilder, t: ir.Type, count: int, name: str) -> ir.Value:
    """A shared array with a name of its own (a kernel may reduce several times)."""
    return kb.shared_array(kb.module.get_unique_name(name), t, count)


def block_reduce(kb: GpuKernelBuilder, x: ir.Value, op, threads: int, tid: ir.Value,
                 name: str) -> ir.Value:
    """All `threads` (a power of two, 1..1024) of a group reduce x; each gets the result.
    Over 32 the group must be the whole block (a barrier waits for all of it)."""
    if threads == 1:
        return x
    x = warp_reduce(kb, x, op, min(threads, WARP))
    if threads <= WARP:
        return x
    b = kb.b
    warps = threads // WARP
    slots = shared_slots(kb, x.type, warps, name)
    lane = b.and_(tid, i64(WARP - 1), name=name + ".lane")
    with b.if_then(b.icmp_unsigned("==", lane, i64(0))):
        b.store(x, b.gep(slots, [b.lshr(tid, i64(5))], inbounds=True))
    kb.barrier()
    # every group of `warps` lanes reads all the slots, so every lane ends with the total
    x = b.load(b.gep(slots, [b.and_(lane, i64(warps - 1))], inbounds=True), name=name + ".part")
    return warp_reduce(kb, x, op, warps)


def column_reduce(kb: GpuKernelBuilder, x: ir.Value, op, T: int, tid: ir.Value,
                  name: str) -> ir.Value:
    """The column layout's reduction: thread tid = lane * 32 + c holds a part of row c; each
    thread adds the T parts of its row in lane order (all get the same result)."""
    if T == 1:
        return x
    b = kb.b
    slots = shared_slots(kb, x.type, T * WARP, name)
    b.store(x, b.gep(slots, [tid], inbounds=True))
    kb.barrier()
    col = b.and_(tid, i64(WARP - 1), name=name + ".col")
    acc = None
    for k in range(T):
        part = b.load(b.gep(slots, [b.add(col, i64(k * WARP))], inbounds=True))
        acc = part if acc is None else op(acc, part)
    return acc


# ----- rows -----------------------------------------------------------------------------------

class Rows:
    """R rows of L elements, T threads per row (strided: the column layout); this thread's
    row is `row` (clamped to the last; `live` is None or whether it is a real one) and its
    place in the row `lane`.

    Row values are handled as "vals": a list of one value per element a thread holds (cached
    mode) or a function j -> value (streaming mode, evaluated inside each pass's loop)."""

    def __init__(self, kb: GpuKernelBuilder, R: int, L: int, acc_dt, name: str,
                 strided: bool = False):
        T = threads_per_row(L, R, strided, acc_dt == dtypes.f32)
        self.kb, self.R, self.L, self.T, self.name = kb, R, L, T, name
        self.columns = strided
        self.e = emitter(kb, acc_dt, name)
        self.acc_t = llvm_type(acc_dt)
        b = kb.b
        self.C = cdiv(L, T)
        self.cached = self.C <= CACHE
        if strided:
            block, per_block = WARP * T, WARP
        else:
            block = T if T > WARP else min(BLOCK, max(WARP, pow2_at_least(R * T)))
            per_block = block // T
        kb.launch((cdiv(R, per_block),), (block,), R)
        kb.parallel_extent = R
        self.tid = kb.sreg("tid.x", name="tid")
        ctaid = kb.sreg("ctaid.x", name="ctaid")
        if strided:  # tid = lane * 32 + (row in the block)
            row = b.add(b.mul(ctaid, i64(WARP)), b.and_(self.tid, i64(WARP - 1)), name="row")
            self.lane = 0 if T == 1 else b.lshr(self.tid, i64(5), name="lane")
        else:  # tid = (row in the block) * T + lane
            shift = T.bit_length() - 1
            row = ctaid if per_block == 1 else \
                b.add(b.mul(ctaid, i64(per_block)), b.lshr(self.tid, i64(shift)), name="row")
            self.lane = 0 if T == 1 else b.and_(self.tid, i64(T - 1), name="lane")
        self.live = None
        if R % per_block:
            self.live = b.icmp_unsigned("<", row, i64(R), name="live")
            row = b.select(self.live, row, i64(R - 1), name="row.c")
        self.row = row
        # cached mode: (clamped j, valid or None) of each element this thread holds
        self.items = []
        if self.cached:
            for k in range(self.C):
                j = kb.iadd(self.lane, k * T, name=f"j{k}")
                if (k + 1) * T <= L:
                    self.items.append((j, None))
                else:
                    ok = b.icmp_unsigned("<", j, i64(L), name=f"j{k}.ok")
                    self.items.append((b.select(ok, j, i64(L - 1), name=f"j{k}.c"), ok))

    # ----- vals --------------------------------------------------------------------------
    def load(self, read):
        """The row's elements, read(j) each (j an index inside the row)."""
        if self.cached:
            return [read(j) for j, _ in self.items]
        return read

    def map(self, vals, f):
        """f(j, x) of every element."""
        if self.cached:
            return [f(j, x) for (j, _), x in zip(self.items, vals)]
        return lambda j: f(j, vals(j))

    def reduce(self, vals, op: str, identity: float, name: str = "acc") -> ir.Value:
        """The fold of the row's vals by op ("sum", "max", "min", "prod"), in every thread."""
        kb, b, e = self.kb, self.kb.b, self.e
        comb = combiner(e, op)
        ident = const(self.acc_t, identity)
        if self.cached:
            acc = None
            for (_, ok), x in zip(self.items, vals):
                if ok is not None:
                    x = b.select(ok, x, ident)
                acc = x if acc is None else comb(acc, x)
            acc = ident if acc is None else acc
        else:
            slot = entry_alloca(kb.b, self.acc_t, f"{self.name}.{name}")
            b.store(ident, slot)
            with kb.loop(self.lane, self.L, self.T, name=name) as j:
                b.store(comb(b.load(slot), vals(j)), slot)
            acc = b.load(slot, name=name)
        if self.columns:
            return column_reduce(kb, acc, comb, self.T, self.tid, f"{self.name}.{name}")
        return block_reduce(kb, acc, comb, self.T, self.tid, f"{self.name}.{name}")

    def each(self, vals, body) -> None:
        """body(j, x) for every element of a real row (a store)."""
        kb, b = self.kb, self.kb.b
        if self.cached:
            for (j, ok), x in zip(self.items, vals):
                cond = self._and(self.live, ok)
                if cond is None:
                    body(j, x)
                else:
                    with b.if_then(cond):
                        body(j, x)
            return
        with self._guard(self.live):
            with kb.loop(self.lane, self.L, self.T, name="put") as j:
                body(j, vals(j))

    def first(self, body) -> None:
        """body() in the row's first thread only, if the row is real (a statistic's store)."""
        b = self.kb.b
        lead = None if self.T == 1 else b.icmp_unsigned("==", self.lane, i64(0))
        with self._guard(self._and(self.live, lead)):
            body()

    def _and(self, a, c):
        if a is None or c is None:
            return c if a is None else a
        return self.kb.b.and_(a, c)

    def _guard(self, cond):
        return contextlib.nullcontext() if cond is None else self.kb.b.if_then(cond)


def read_value(kb: GpuKernelBuilder, e, v, flat, index, acc_dt) -> ir.Value:
    """v at flat offset `flat` of its buffer, or, when a producer is computed inline (or v is
    a one-element constant, an immediate), at `index()`; converted to the compute type."""
    b = kb.b
    if id(v) in kb.produced or numel(kb.shape(v)) == 1:
        x = kb.value_at(v, index())
        kb.cache.clear()  # the index changes from element to element
    else:
        x = b.load(b.gep(kb.ptr(v), [kb._ir(flat)], inbounds=True), name=llvm_name(v.name))
    return convert(e, x, v.type.dtype, acc_dt)


def no_work(kb: GpuKernelBuilder) -> None:
    """A kernel for an empty result: one warp that returns."""
    kb.launch((1,), (WARP,), 0)
    kb.parallel_extent = 0
    kb.b.ret_void()


def finite(e, x) -> ir.Value:
    """x if finite, else 0: softmax's shift, as the reference's np.where(isfinite(m), m, 0)."""
    b = e.b
    ok = b.fcmp_ordered("<", e.intrinsic("fabs", [x]), const(x.type, math.inf))
    return b.select(ok, x, const(x.type, 0.0), name="shift")


def rounding(e, dt, adt):
    """Halves round after every step (the reference computes in the input's type)."""
    if dt != dtypes.f16:
        return lambda x: x
    return lambda x: convert(e, convert(e, x, adt, dt), dt, adt)


def rows_kind(kb, x, dt, name):
    adt = acc_dtype(dt)
    if adt not in (dtypes.f32, dtypes.f64):
        raise UnsupportedError(f"{name} of {x.type} on a GPU: floating-point inputs only")
    return adt


def contiguous(shape, axes) -> bool:
    """Whether each row over `axes` is one run of memory: no kept axis of size > 1 follows a
    reduced one of size > 1."""
    big_kept = [d for d in range(len(shape)) if d not in axes and shape[d] > 1]
    big_red = [d for d in axes if shape[d] > 1]
    return not big_kept or not big_red or max(big_kept) < min(big_red)


def rows_over(kb: GpuKernelBuilder, shape, axes, acc_dt, name: str, strided: bool) -> tuple:
    """`shape` as rows: one per index of the axes not in `axes` (row-major), over `axes`
    flattened (element j) -> (rows, the kept index of this thread's row, full(j): the index
    of element j, offset(j): its offset in a buffer of `shape`). `strided`: the column
    layout (worth it when adjacent rows are adjacent in memory)."""
    rank = len(shape)
    kept = [d for d in range(rank) if d not in axes]
    kept_shape, red_shape = [shape[d] for d in kept], [shape[d] for d in axes]
    R, L = numel(kept_shape), numel(red_shape)
    rows = Rows(kb, R, L, acc_dt, name, strided=strided)
    kept_index = unflatten(kb, rows.row, kept_shape, "k")
    strides = kb.strides(shape)

    def full(j):
        red_index = unflatten(kb, j, red_shape, "j")
        return [kept_index[kept.index(d)] if d in kept else red_index[axes.index(d)]
                for d in range(rank)]

    if contiguous(shape, axes):
        base = kb.imul(rows.row, L)

        def offset(j):
            return kb.iadd(base, j)
    else:
        kept_off = 0
        for d, ix in zip(kept, kept_index):
            kept_off = kb.iadd(kept_off, kb.imul(ix, strides[d]))

        def offset(j):
            off = kept_off
            for d, ix in zip(axes, unflatten(kb, j, red_shape, "o")):
                off = kb.iadd(off, kb.imul(ix, strides[d]))
            return off

    return rows, kept_index, full, offset


def fold(rows: Rows, xs, kind: str):
    """The fold of the row that reduction `kind` finishes (`finish`)."""
    e = rows.e
    if kind in ("reduce_sum", "reduce_mean", "reduce_log_sum"):
        return rows.reduce(xs, "sum", 0.0, "sum")
    if kind == "reduce_max":
        return rows.reduce(xs, "max", -math.inf, "max")
    if kind == "reduce_min":
        return rows.reduce(xs, "min", math.inf, "min")
    if kind == "reduce_prod":
        return rows.reduce(xs, "prod", 1.0, "prod")
    if kind == "reduce_l1":
        return rows.reduce(rows.map(xs, lambda j, v: e.intrinsic("fabs", [v])), "sum", 0.0, "l1")
    if kind in ("reduce_l2", "reduce_sum_square"):
        return rows.reduce(rows.map(xs, lambda j, v: e.mul(v, v)), "sum", 0.0, "sq")
    # log_sum_exp: shift + log(sum(exp(x - shift))), the shift the (finite) max
    shift = finite(e, rows.reduce(xs, "max", -math.inf, "max"))
    total = rows.reduce(rows.map(xs, lambda j, v: e.exp(e.sub(v, shift))), "sum", 0.0, "sum")
    return e.add(shift, e.log(total))


def finish(e, kind: str, r, count: int, acc_t):
    if kind == "reduce_mean":
        return e.fdiv(r, const(acc_t, float(count)))
    if kind == "reduce_l2":
        return e.intrinsic("sqrt", [r])
    if kind == "reduce_log_sum":
        return e.log(r)
    return r
