"""GPU generators for reductions, global pools and arg_max / arg_min, on gen_rows.py's rows.

Integer reductions keep the CPU generator, one output per thread. arg_max / arg_min fold
(value, index) pairs in an order where any fold gives the reference's answer; integer, f64
and non-last axes scan a thread per output.
"""

from __future__ import annotations

import math

from llvmlite import ir

from slimc.ir import dtypes

from ..cpu import gen_reduce as cpu_reduce
from ..cpu.common import acc_dtype, emitter, entry_alloca, numel, unflatten
from ..cpu.kernel import llvm_name
from ..cpu.gen_scan import _Cmp
from ..cpu.llvm_util import I32, I64, const, i64, llvm_type
from ..cpu.scalar_ops import convert
from .gen_rows import (WARP, Rows, contiguous, finish, fold, no_work, read_value, rows_kind,
                       rows_over, shared_slots)
from .gen_window import _empty, _put, _reader
from .index import Ix, counted_loop, per_element, per_element_done, wide_index
from .kernel import GpuKernelBuilder, gpu_generator

# ----- reductions and global pools ---------------------------------------------------------

REDUCTIONS = cpu_reduce.REDUCTIONS  # every kind: floats here, integers on the CPU generator


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
    if numel([shape[d] for d in range(rank) if d not in axes]) == 0:
        return no_work(kb)
    rows, kept_index, full, offset = rows_over(kb, shape, axes, dtypes.f32, llvm_name(out.name),
                                                strided=not contiguous(shape, axes))
    kept = [d for d in range(rank) if d not in axes]
    e = rows.e
    L = rows.L
    xs = rows.load(lambda j: read_value(kb, e, x, offset(j), lambda: full(j), dtypes.f32))
    r = finish(e, kind, fold(rows, xs, kind), L, rows.acc_t)
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
    adt = rows_kind(kb, x, dt, kind)
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


# ----- arg_max, arg_min ------------------------------------------------------------------------

def _arg_beats(b: ir.IRBuilder, cmp, is_max: bool, last: bool):
    """beats(a, ai, c, ci): candidate (a, ai) wins over (c, ci) -- a better value, NaN over
    any number (np.argmax and np.argmin both return a NaN's index), or an equal value (two
    NaN are equal) at the lower index (the higher with select_last_index). A total order,
    so any order of folds and shuffles gives the reference's answer."""
    strict = ">" if is_max else "<"

    def beats(a, ai, c, ci):
        better = cmp.cmp(strict, a, c, "better")
        if cmp.dt.is_float:
            a_nan, c_nan = cmp.isnan(a, "a.nan"), cmp.isnan(c, "c.nan")
            better = b.or_(better, b.and_(a_nan, b.not_(c_nan)))
            same = b.or_(b.fcmp_ordered("==", a, c), b.and_(a_nan, c_nan), name="same")
        else:
            same = b.icmp_unsigned("==", a, c, name="same")
        order = b.icmp_signed(">" if last else "<", ai, ci, name="order")
        return b.or_(better, b.and_(same, order), name="wins")

    return beats


def _pair_warp(kb: GpuKernelBuilder, v, i, beats, width: int) -> tuple:
    """The best (value, index) over aligned groups of `width` lanes, in every lane."""
    b = kb.b
    off = width // 2
    while off >= 1:
        ov, oi = kb.shuffle("bfly", v, off), kb.shuffle("bfly", i, off)
        w = beats(ov, oi, v, i)
        v, i = b.select(w, ov, v), b.select(w, oi, i)
        off //= 2
    return v, i


def _pair_block(kb: GpuKernelBuilder, v, i, beats, threads: int, tid, name: str) -> tuple:
    """`block_reduce` of (value, index) pairs: a butterfly per warp, then one shared slot
    pair per warp, a barrier and a butterfly over the slots."""
    if threads == 1:
        return v, i
    v, i = _pair_warp(kb, v, i, beats, min(threads, WARP))
    if threads <= WARP:
        return v, i
    b = kb.b
    warps = threads // WARP
    vs = shared_slots(kb, v.type, warps, name + ".v")
    ixs = shared_slots(kb, i.type, warps, name + ".i")
    lane = b.and_(tid, i64(WARP - 1))
    with b.if_then(b.icmp_unsigned("==", lane, i64(0))):
        slot = b.lshr(tid, i64(5))
        b.store(v, b.gep(vs, [slot], inbounds=True))
        b.store(i, b.gep(ixs, [slot], inbounds=True))
    kb.barrier()
    k = b.and_(lane, i64(warps - 1))
    v = b.load(b.gep(vs, [k], inbounds=True), name=name + ".part")
    i = b.load(b.gep(ixs, [k], inbounds=True), name=name + ".parti")
    return _pair_warp(kb, v, i, beats, warps)


@gpu_generator("arg_max", "arg_min", inline_inputs=True)
def arg_reduce(kb: GpuKernelBuilder, node) -> None:
    """Index of the max (min) along an axis. Along a contiguous last axis of a float type: a
    row reduction of (value, index) pairs over the row's threads; otherwise a thread per
    output, scanning the axis (adjacent threads read adjacent elements when the axis is not
    the last). Both fold with `_arg_beats`."""
    x, out = node.inputs[0], node.outputs[0]
    attrs = kb.attrs(node)
    shape = list(kb.shape(x))
    rank = len(shape)
    axis = int(attrs["axis"]) % rank
    L, inner = shape[axis], numel(shape[axis + 1:])
    if numel(kb.shape(out)) == 0:
        return _empty(kb)
    dt = x.type.dtype
    wdt = acc_dtype(dt)
    cmp = _Cmp(kb.b, wdt, llvm_name(out.name))
    beats = _arg_beats(kb.b, cmp, node.op == "arg_max", bool(attrs["select_last_index"]))
    if inner == 1 and wdt == dtypes.f32 and 1 < L < 2 ** 31:
        return _arg_rows(kb, node, axis, beats)
    _arg_per_output(kb, node, axis, wdt, beats)


def _arg_rows(kb: GpuKernelBuilder, node, axis: int, beats) -> None:
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    shape = list(kb.shape(x))
    L = shape[axis]
    name = llvm_name(out.name)
    rows = Rows(kb, numel(shape[:axis]), L, dtypes.f32, name)
    e = rows.e
    prefix = unflatten(kb, rows.row, shape[:axis], "o")
    trailing = [0] * (len(shape) - axis - 1)
    base = kb.imul(rows.row, L)

    def value(j):
        return read_value(kb, e, x, kb.iadd(base, j), lambda: prefix + [j] + trailing,
                          dtypes.f32)

    def as_i32(j):
        return ir.Constant(I32, j) if isinstance(j, int) else b.trunc(j, I32)

    if rows.cached:  # elements past the row's end are its last one again: ties with itself
        best = None
        for j, _ in rows.items:
            pair = (value(j), as_i32(j))
            if best is None:
                best = pair
            else:
                w = beats(*pair, *best)
                best = b.select(w, pair[0], best[0]), b.select(w, pair[1], best[1])
        v, i = best
    else:
        sv = entry_alloca(kb.b, rows.acc_t, name + ".best")
        si = entry_alloca(kb.b, I32, name + ".besti")
        b.store(value(rows.lane), sv)
        b.store(as_i32(rows.lane), si)
        with kb.loop(kb.iadd(rows.lane, rows.T), L, rows.T, name="scan") as j:
            cv, ci, nv, ni = b.load(sv), b.load(si), value(j), as_i32(j)
            w = beats(nv, ni, cv, ci)
            b.store(b.select(w, nv, cv), sv)
            b.store(b.select(w, ni, ci), si)
        v, i = b.load(sv), b.load(si)
    v, i = _pair_block(kb, v, i, beats, rows.T, rows.tid, name + ".arg")
    where = prefix + ([0] if kb.attrs(node)["keepdims"] else []) + trailing
    rows.first(lambda: kb.store_value(out, where, b.zext(i, I64)))
    b.ret_void()


def _arg_per_output(kb: GpuKernelBuilder, node, axis: int, wdt, beats) -> None:
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    shape, out_shape = list(kb.shape(x)), list(kb.shape(out))
    L, inner = shape[axis], numel(shape[axis + 1:])
    dt = x.type.dtype
    e = emitter(kb, wdt, llvm_name(out.name))
    ix = Ix(b, wide_index(kb))
    read = _reader(kb, ix, x)
    sv = b.alloca(llvm_type(wdt), name="best")  # entry block: registers after SROA
    si = b.alloca(ix.t, name="besti")
    flat, done = per_element(kb, ix)
    o, i = ix.div(flat, inner), ix.rem(flat, inner)
    prefix, suffix = ix.delinear(o, shape[:axis]), ix.delinear(i, shape[axis + 1:])
    base = ix.add(ix.mul(o, L * inner), i)

    def value(j):
        return convert(e, read(prefix + [j] + suffix, ix.add(base, ix.mul(j, inner))), dt, wdt)

    b.store(value(0), sv)
    b.store(ix.v(0), si)
    with counted_loop(b, ix, L - 1, "scan") as k:
        j = ix.add(k, 1)
        cv, ci, nv = b.load(sv), b.load(si), value(j)
        w = beats(nv, j, cv, ci)
        b.store(b.select(w, nv, cv), sv)
        b.store(b.select(w, j, ci), si)
    best = ix.wide(b.load(si, name="argbest"))
    _put(kb, ix, out, flat, ix.delinear(flat, out_shape), best)
    per_element_done(kb, done)
