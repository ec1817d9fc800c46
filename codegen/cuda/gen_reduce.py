"""GPU generators for work shaped as rows: the softmax family, layer normalization,
reductions and global pools (attention, which reuses the warp reductions, is gen_attention.py).

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

f64 rows get T = 1 (shuffles move 32 bits); integer reductions keep the CPU generator, one
output per thread. Threads past the last row compute the last row again and store nothing:
every lane of a warp reaches every shuffle and every thread of a block every barrier.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Callable

from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.errors import UnsupportedError

from ..cpu import gen_reduce as cpu_reduce
from ..cpu.common import acc_dtype, cdiv, emitter, entry_alloca, numel, unflatten
from ..cpu.kernel import llvm_name
from ..cpu.llvm_util import const, i64, llvm_type
from ..cpu.scalar_ops import convert
from .kernel import GpuKernelBuilder, gpu_generator

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
            slot = entry_alloca(kb, self.acc_t, f"{self.name}.{name}")
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


def _finite(e, x) -> ir.Value:
    """x if finite, else 0: softmax's shift, as the reference's np.where(isfinite(m), m, 0)."""
    b = e.b
    ok = b.fcmp_ordered("<", e.intrinsic("fabs", [x]), const(x.type, math.inf))
    return b.select(ok, x, const(x.type, 0.0), name="shift")


def _rounding(e, dt, adt):
    """Halves round after every step (the reference computes in the input's type)."""
    if dt != dtypes.f16:
        return lambda x: x
    return lambda x: convert(e, convert(e, x, adt, dt), dt, adt)


def _rows_kind(kb, x, dt, name):
    adt = acc_dtype(dt)
    if adt not in (dtypes.f32, dtypes.f64):
        raise UnsupportedError(f"{name} of {x.type} on a GPU: floating-point inputs only")
    return adt


# ----- softmax, log_softmax, lp_normalization -------------------------------------------------

@gpu_generator("softmax", "log_softmax", "lp_normalization", inline_inputs=True, epilogue=True)
def softmax(kb: GpuKernelBuilder, node) -> None:
    """A row per (outer, inner) index along the axis: max, sum of exp, store (log_softmax:
    x - shift - log(sum)); lp_normalization: the norm, then x / norm."""
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    kind = node.op
    attrs = kb.attrs(node)
    shape = list(kb.shape(x))
    if not shape:
        raise UnsupportedError(f"{kind} of a 0-d tensor", node=node.label, op=kind)
    axis = int(attrs["axis"]) % len(shape)
    outer_shape, L, inner_shape = shape[:axis], shape[axis], shape[axis + 1:]
    outer, inner = numel(outer_shape), numel(inner_shape)
    dt = x.type.dtype
    adt = _rows_kind(kb, x, dt, kind)
    if numel(shape) == 0:
        return no_work(kb)
    R = outer * inner
    rows = Rows(kb, R, L, adt, llvm_name(out.name), strided=inner > 1)
    e = rows.e
    rnd = _rounding(e, dt, adt)
    o, i = (rows.row, 0) if inner == 1 else \
        (b.udiv(rows.row, i64(inner), name="o"), b.urem(rows.row, i64(inner), name="i"))
    prefix = unflatten(kb, o, outer_shape, "o")
    suffix = unflatten(kb, i, inner_shape, "i")
    base = kb.iadd(kb.imul(o, L * inner), i, name="base")

    def index(j):
        return prefix + [j] + suffix

    xs = rows.load(lambda j: read_value(kb, e, x, kb.iadd(base, kb.imul(j, inner)),
                                        lambda: index(j), adt))

    def store(j, y):
        kb.store_result(out, index(j), convert(e, y, adt, dt))

    if kind == "lp_normalization":
        if int(attrs["p"]) == 1:
            norm = rows.reduce(rows.map(xs, lambda j, v: e.intrinsic("fabs", [v])), "sum", 0.0)
        else:
            norm = e.intrinsic("sqrt", [rows.reduce(rows.map(xs, lambda j, v: e.mul(v, v)),
                                                    "sum", 0.0)])
        zero = b.fcmp_ordered("==", norm, const(norm.type, 0.0), name="zero")
        rows.each(xs, lambda j, v: store(j, b.select(zero, const(v.type, 0.0),
                                                     e.fdiv(v, norm))))
        b.ret_void()
        return
    shift = _finite(e, rows.reduce(xs, "max", -math.inf, "max"))
    shifted = rows.map(xs, lambda j, v: rnd(e.sub(v, shift)))
    exps = rows.map(shifted, lambda j, v: rnd(e.exp(v)))
    total = rnd(rows.reduce(exps, "sum", 0.0, "sum"))
    if kind == "softmax":
        rows.each(exps, lambda j, v: store(j, e.fdiv(v, total)))
    else:
        log_total = rnd(e.log(total))
        rows.each(shifted, lambda j, v: store(j, e.sub(v, log_total)))
    b.ret_void()


# ----- layer_norm ------------------------------------------------------------------------------

def _param(kb, e, v, dims, adt):
    """value(j, index) of a layer_norm scale or bias, broadcast over the normalized dims:
    its element j when it spans them, else the element `index()` maps to."""
    if v is None:
        return None
    full = list(kb.shape(v))
    s = list(full)
    while len(s) > len(dims) and s[0] == 1:
        s = s[1:]
    lead = [0] * (len(full) - len(s))
    spans = [1] * (len(dims) - len(s)) + s == list(dims)

    def value(j, index):
        def where():
            return lead + kb._operand_index(dims, s, index())

        flat = j if spans else kb.linear(where(), full)
        return read_value(kb, e, v, flat, where, adt)

    return value


@dataclass
class _Normalized:
    """The rows of a layer_norm and their statistics (two passes: mean, then the variance of
    the centered values)."""

    rows: Rows
    centered: object  # vals: x - mean
    mean: ir.Value
    inv: ir.Value  # 1 / sqrt(var + eps)
    index: Callable  # j -> the full index of element j of this thread's row
    dims: list  # the normalized dims
    adt: object  # the compute dtype
    stats_index: list  # where layer_norm_stats stores this row's statistics


def _normalized(kb, node) -> _Normalized:
    x = node.inputs[0]
    attrs = kb.attrs(node)
    shape = list(kb.shape(x))
    rank = len(shape)
    axis = int(attrs["axis"]) % rank if rank else 0
    dims, rows_shape = shape[axis:], shape[:axis]
    R, L = numel(rows_shape), numel(dims)
    dt = x.type.dtype
    adt = _rows_kind(kb, x, dt, node.op)
    rows = Rows(kb, R, L, adt, llvm_name(node.outputs[0].name))
    e = rows.e
    prefix = unflatten(kb, rows.row, rows_shape, "r")
    base = kb.imul(rows.row, L)

    def index(j):
        return prefix + unflatten(kb, j, dims, "j")

    xs = rows.load(lambda j: read_value(kb, e, x, kb.iadd(base, j), lambda: index(j), adt))
    mean = e.fdiv(rows.reduce(xs, "sum", 0.0, "sum"), const(rows.acc_t, float(L)))
    centered = rows.map(xs, lambda j, v: e.sub(v, mean))
    var = e.fdiv(rows.reduce(rows.map(centered, lambda j, v: e.mul(v, v)), "sum", 0.0, "ssd"),
                 const(rows.acc_t, float(L)))
    inv = e.fdiv(const(rows.acc_t, 1.0),
                 e.intrinsic("sqrt", [e.add(var, const(rows.acc_t, float(attrs["epsilon"])))]))
    return _Normalized(rows, centered, mean, inv, index, dims, adt,
                       prefix + [0] * (rank - axis))


@gpu_generator("layer_norm", inline_inputs=True, epilogue=True)
def layer_norm(kb: GpuKernelBuilder, node) -> None:
    """(x - mean) * inv * scale + bias over dims [axis, rank), a row per leading index."""
    x, out = node.inputs[0], node.outputs[0]
    if numel(kb.shape(x)) == 0:
        return no_work(kb)
    n = _normalized(kb, node)
    e, dims = n.rows.e, n.dims
    scale = _param(kb, e, node.inputs[1], dims, n.adt)
    bias = _param(kb, e, node.inputs[2] if len(node.inputs) > 2 else None, dims, n.adt)

    def put(j, d):
        y = e.mul(e.mul(d, n.inv), scale(j, lambda: unflatten(kb, j, dims, "p")))
        if bias is not None:
            y = e.add(y, bias(j, lambda: unflatten(kb, j, dims, "p")))
        kb.store_result(out, n.index(j), convert(e, y, n.adt, out.type.dtype))

    n.rows.each(n.centered, put)
    kb.b.ret_void()


@gpu_generator("layer_norm_stats", inline_inputs=True)
def layer_norm_stats(kb: GpuKernelBuilder, node) -> None:
    """layer_norm's saved statistics: mean and 1/sqrt(var + eps) per row."""
    if numel(kb.shape(node.inputs[0])) == 0:
        return no_work(kb)
    n = _normalized(kb, node)
    mean_v, inv_v = node.outputs
    e = n.rows.e

    def put():
        kb.store_value(mean_v, n.stats_index, convert(e, n.mean, n.adt, mean_v.type.dtype))
        kb.store_value(inv_v, n.stats_index, convert(e, n.inv, n.adt, inv_v.type.dtype))

    n.rows.first(put)
    kb.b.ret_void()


# ----- reductions and global pools ---------------------------------------------------------

REDUCTIONS = cpu_reduce.REDUCTIONS  # every kind: floats here, integers on the CPU generator


def _fold(rows: Rows, xs, kind: str):
    """The fold of the row that reduction `kind` finishes (`_finish`)."""
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
    shift = _finite(e, rows.reduce(xs, "max", -math.inf, "max"))
    total = rows.reduce(rows.map(xs, lambda j, v: e.exp(e.sub(v, shift))), "sum", 0.0, "sum")
    return e.add(shift, e.log(total))


def _finish(e, kind: str, r, count: int, acc_t):
    if kind == "reduce_mean":
        return e.fdiv(r, const(acc_t, float(count)))
    if kind == "reduce_l2":
        return e.intrinsic("sqrt", [r])
    if kind == "reduce_log_sum":
        return e.log(r)
    return r


@gpu_generator(*REDUCTIONS, inline_inputs=True, epilogue=True)
def reduce(kb: GpuKernelBuilder, node) -> None:
    """A row per output element over the reduced elements (flattened). Integer and f64
    inputs run the CPU generator, one output per thread."""
    b = kb.b
    kind = node.op
    x, out = node.inputs[0], node.outputs[0]
    attrs = kb.attrs(node)
    shape = list(kb.shape(x))
    rank = len(shape)
    dt = x.type.dtype
    if acc_dtype(dt) != dtypes.f32:
        return cpu_reduce.reduce(kb, node)
    axes = list(range(rank)) if attrs["axes"] is None else \
        sorted(int(a) % rank for a in attrs["axes"])
    kept = [d for d in range(rank) if d not in axes]
    kept_shape, red_shape = [shape[d] for d in kept], [shape[d] for d in axes]
    R, L = numel(kept_shape), numel(red_shape)
    if R == 0:
        return no_work(kb)
    # rows are contiguous when no kept axis of size > 1 follows a reduced one of size > 1
    big_kept = [d for d in kept if shape[d] > 1]
    big_red = [d for d in axes if shape[d] > 1]
    contiguous = not big_kept or not big_red or max(big_kept) < min(big_red)
    rows = Rows(kb, R, L, dtypes.f32, llvm_name(out.name), strided=not contiguous)
    e = rows.e
    kept_index = unflatten(kb, rows.row, kept_shape, "k")
    strides = kb.strides(shape)

    def full(j):
        red_index = unflatten(kb, j, red_shape, "j")
        return [kept_index[kept.index(d)] if d in kept else red_index[axes.index(d)]
                for d in range(rank)]

    if contiguous:
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

    xs = rows.load(lambda j: read_value(kb, e, x, offset(j), lambda: full(j), dtypes.f32))
    r = _finish(e, kind, _fold(rows, xs, kind), L, rows.acc_t)
    out_index = []
    for d in range(rank):
        if d in kept:
            out_index.append(kept_index[kept.index(d)])
        elif attrs["keepdims"]:
            out_index.append(0)
    rows.first(lambda: kb.store_result(out, out_index, convert(e, r, dtypes.f32,
                                                                out.type.dtype)))
    b.ret_void()


@gpu_generator("global_avg_pool", "global_max_pool", "global_lp_pool", inline_inputs=True,
               epilogue=True)
def global_pool(kb: GpuKernelBuilder, node) -> None:
    """A row per (n, c) over the spatial dims."""
    b = kb.b
    kind = node.op
    x, out = node.inputs[0], node.outputs[0]
    shape = list(kb.shape(x))
    dt = x.type.dtype
    adt = _rows_kind(kb, x, dt, kind)
    R, L = numel(shape[:2]), numel(shape[2:])
    if R == 0:
        return no_work(kb)
    rows = Rows(kb, R, L, adt, llvm_name(out.name))
    e = rows.e
    nc = unflatten(kb, rows.row, shape[:2], "nc")
    base = kb.imul(rows.row, L)
    xs = rows.load(lambda j: read_value(kb, e, x, kb.iadd(base, j),
                                        lambda: nc + unflatten(kb, j, shape[2:], "s"), adt))
    acc_t = rows.acc_t
    if kind == "global_max_pool":
        r = rows.reduce(xs, "max", -math.inf, "max")
    elif kind == "global_avg_pool":
        r = e.fdiv(rows.reduce(xs, "sum", 0.0, "sum"), const(acc_t, float(L)))
    else:
        p = int(kb.attrs(node).get("p", 2))

        def powed(j, v):
            a = e.intrinsic("fabs", [v])
            return a if p == 1 else e.mul(a, a) if p == 2 else \
                e.intrinsic("pow", [a, const(acc_t, float(p))])

        r = rows.reduce(rows.map(xs, powed), "sum", 0.0, "sum")
        r = r if p == 1 else e.intrinsic("sqrt", [r]) if p == 2 else \
            e.intrinsic("pow", [r, const(acc_t, 1.0 / p)])
    where = nc + [0] * (len(shape) - 2)
    rows.first(lambda: kb.store_result(out, where, convert(e, r, adt, dt)))
    b.ret_void()

