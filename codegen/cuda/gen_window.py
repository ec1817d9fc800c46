"""GPU generators for sliding windows and data movement, one thread per output element:
pooling (max_pool, avg_pool, lp_pool) and the tensor generators that models use (concat,
split, pad).

Why not the CPU's generators, one work item per thread: their work items are big (a row of a
pool, a slab of a concat), so a layer gets as many threads as it has rows or slabs --
ResNet-18's max pool ran on 64 threads -- and each thread walks memory alone. Here every
output element is a thread (the default launch: `per_element`), so a layer fills the GPU and
adjacent threads store adjacent elements (coalesced). Index arithmetic is i32 (`Ix`) unless a
buffer is huge.

- pools: each thread folds its window's taps. Taps that land on no input for any output (a
  huge kernel over a small input, as adaptive pooling exports) are dropped at compile time,
  as the reference drops them; the rest are unrolled up to UNROLL_TAPS, from the innermost
  axis out, and loops beyond. A tap past an edge (padding, ceil mode's overhang) reads the
  element at 0 on that axis instead (never out of bounds) and is not folded in (a select, no
  branch). avg_pool's divisor is the product of per-axis counts, as the reference's.
- concat and split: the element's coordinate along the axis picks the part (compares against
  the compile-time boundaries); each part is a block of its own, so a part computed inline
  (`value_at`) costs only the threads whose elements come from it.
- pad: each axis maps the output coordinate to an input one (constant mode: or says it is
  padding, then the fill is selected); negative pads crop.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.ops.tensor_gen import _pad_widths
from slimc.ir.ops.window import _window_params

from ..cpu.common import acc_dtype, const_input, emitter, node_axis, numel
from ..cpu.gen_nn import _int_min, _pool_counts
from ..cpu.gen_tensor import fold_pad_index, pad_geometry
from ..cpu.kernel import llvm_name
from ..cpu.llvm_util import both_conditions, const, llvm_type
from ..cpu.scalar_ops import convert
from .index import (Ix, all_of, counted_loop, load_or_zero, per_element, per_element_done,
                    wide_index)
from .kernel import GpuKernelBuilder, gpu_generator

# window taps unrolled up to this many per thread (a 3x3 or 5x5 pool); more: loops
UNROLL_TAPS = 32


# ----- shared helpers -------------------------------------------------------------------------

def _reader(kb: GpuKernelBuilder, ix: Ix, x, invariant: bool = False) -> Callable:
    """read(index, flat=None) -> x at `index` (each entry an `ix` value or int, in range): a
    load from x's buffer at an i32 offset (`flat` if the caller knows it), or x's producer
    computed inline. `invariant`: x is read at other indices than the output's (a window),
    so NVPTX may use the read-only cache."""
    b = kb.b
    shape = list(kb.shape(x))
    name = llvm_name(x.name)
    if id(x) in kb.produced or id(x) not in kb.ptrs:
        def compute(index, flat=None):
            v = kb.value_at(x, [0 if d == 1 else ix.wide(i) for d, i in zip(shape, index)])
            kb.cache.clear()  # the index changes from tap to tap (and block to block)
            return v
        return compute
    ptr = kb.ptr(x)

    def load(index, flat=None):
        if flat is None:
            flat = ix.linear([0 if d == 1 else i for d, i in zip(shape, index)], shape)
        return load_or_zero(b, ix, ptr, flat, None, name, invariant)

    return load


def _put(kb: GpuKernelBuilder, ix: Ix, out, flat, index: Sequence, x: ir.Value) -> None:
    """out[index] = x (element `flat`), through the fused epilogue if there is one; else a
    plain store at the i32 offset (no i64 re-linearization)."""
    b = kb.b
    if list(kb.outputs) == [out]:
        b.store(x, b.gep(kb.ptr(out), [ix.v(flat)], inbounds=True))
    else:
        kb.store_result(out, [ix.wide(i) for i in index], x)


def _by_part(kb: GpuKernelBuilder, ix: Ix, a, spans: Sequence[tuple], body: Callable,
             name: str) -> list:
    """body(k) in a block of its own for the part k whose span [start, end) along the axis
    holds coordinate `a`; `spans` (k, start, end) cover the coordinates in order. Returns
    [(body's result, the block it ended in)], the builder at the join block."""
    b = kb.b
    if len(spans) == 1:
        return [(body(spans[0][0]), b.block)]
    which = ix.v(0)
    for _, start, _ in spans[1:]:
        past = b.icmp_unsigned(">=", ix.v(a), ix.v(start))
        which = b.add(which, b.zext(past, ix.t), name=f"{name}.part")
    fn = b.function
    blocks = [fn.append_basic_block(f"{name}.part{k}") for k, _, _ in spans]
    join = fn.append_basic_block(f"{name}.joined")
    sw = b.switch(which, blocks[-1])
    for j, blk in enumerate(blocks[:-1]):
        sw.add_case(ir.Constant(ix.t, j), blk)
    out = []
    for (k, _, _), blk in zip(spans, blocks):
        b.position_at_end(blk)
        kb.cache.clear()  # values cached in one part's block do not dominate another's
        out.append((body(k), b.block))
        b.branch(join)
    b.position_at_end(join)
    kb.cache.clear()
    return out


def _empty(kb: GpuKernelBuilder) -> None:
    """No element: a kernel that returns (per_element would give thread 0 one)."""
    kb.parallel_extent = 0
    kb.b.ret_void()


# ----- pooling --------------------------------------------------------------------------------

def _used_taps(size: int, n_out: int, k: int, s: int, d: int, pb: int) -> tuple:
    """[lo, hi): the taps along one axis that land on the input for some output (the others
    see only padding, which never wins a max and adds 0). Tap t lands for some output iff it
    does for the first output whose position o*s - pb + t*d is not before the input."""
    used = []
    for t in range(k):
        o = max(0, -((t * d - pb) // s))  # ceil((pb - t*d) / s), at least 0
        if o < n_out and o * s - pb + t * d < size:
            used.append(t)
    return (used[0], used[-1] + 1) if used else (0, 0)


@gpu_generator("max_pool", "avg_pool", "lp_pool", inline_inputs=True, epilogue=True)
def pool(kb: GpuKernelBuilder, node) -> None:
    """One thread per output element folds its window: max (NaN-propagating), sum / count,
    or (sum of |x|^p)^(1/p); padding taps are skipped."""
    b = kb.b
    kind = node.op
    x, out = node.inputs[0], node.outputs[0]
    attrs = kb.attrs(node)
    xs, ys = list(kb.shape(x)), list(kb.shape(out))
    if numel(ys) == 0:
        return _empty(kb)
    nsp = len(xs) - 2
    strides, pads, dil = _window_params(attrs, nsp)
    kernel = [int(k) for k in attrs["kernel_shape"]]
    spatial, out_sp = xs[2:], ys[2:]
    dt = x.type.dtype
    # 8-bit integers compare in i32 (as the CPU generator does)
    adt = acc_dtype(dt) if dt.is_float else (dtypes.i32 if dt.is_signed else dtypes.u32)
    at = llvm_type(adt)
    e = emitter(kb, adt, llvm_name(out.name))
    ix = Ix(b, wide_index(kb))
    p = int(attrs.get("p", 2))
    used = [_used_taps(spatial[i], out_sp[i], kernel[i], strides[i], dil[i], pads[i])
            for i in range(nsp)]
    kb.cost = numel(ys) * numel([hi - lo for lo, hi in used])
    # an axis needs bounds checks if some output's used tap falls off the input there
    checks = [used[i][1] > used[i][0] and
              (used[i][0] * dil[i] - pads[i] < 0 or
               (out_sp[i] - 1) * strides[i] - pads[i] + (used[i][1] - 1) * dil[i] >= spatial[i])
              for i in range(nsp)]
    if kind == "max_pool":
        ident = const(at, -math.inf if adt.is_float else _int_min(dt))
    else:
        ident = const(at, 0)
    acc_slot = b.alloca(at, name="acc")  # in the entry block: SROA makes it a register
    read = _reader(kb, ix, x, invariant=True)
    flat, done = per_element(kb, ix)
    idx = ix.delinear(flat, ys)
    n_i, c_i, o = idx[0], idx[1], idx[2:]
    b.store(ident, acc_slot)
    base = [ix.add(ix.mul(o[i], strides[i]), -pads[i]) for i in range(nsp)]

    def tap_value(v):
        v = convert(e, v, dt, adt)
        if kind != "lp_pool":
            return v
        a = e.intrinsic("fabs", [v])
        return a if p == 1 else e.mul(a, a) if p == 2 else \
            e.intrinsic("pow", [a, const(at, float(p))])

    def tap(ks):
        pos = [ix.add(base[i], ix.mul(ks[i], dil[i])) for i in range(nsp)]
        if any(isinstance(q, int) and not 0 <= q < n for q, n in zip(pos, spatial)):
            return  # a size-1 output axis whose tap is padding: known here
        oks = [ix.below(pos[i], spatial[i]) if checks[i] and not isinstance(pos[i], int)
               else None for i in range(nsp)]
        safe = [q if ok is None else b.select(ok, ix.v(q), ix.v(0))
                for q, ok in zip(pos, oks)]
        v = tap_value(read([n_i, c_i] + safe))
        acc = b.load(acc_slot)
        new = e.max(acc, v) if kind == "max_pool" else e.add(acc, v)
        ok = all_of(b, *oks)
        b.store(new if ok is None else b.select(ok, new, acc), acc_slot)

    # unroll the innermost axes while their taps multiply to at most UNROLL_TAPS
    unrolled, taps = [False] * nsp, 1
    for i in reversed(range(nsp)):
        taps *= used[i][1] - used[i][0]
        if taps > UNROLL_TAPS:
            break
        unrolled[i] = True

    def nest(i, ks):
        if i == nsp:
            tap(ks)
            return
        lo, hi = used[i]
        if unrolled[i]:
            for t in range(lo, hi):
                nest(i + 1, ks + [t])
            return
        with counted_loop(b, ix, hi - lo, f"k{i}") as t:
            nest(i + 1, ks + [ix.add(t, lo)])

    nest(0, [])
    r = b.load(acc_slot, name="folded")
    if kind == "avg_pool":
        r = e.fdiv(r, _avg_count(kb, ix, node, xs, ys, base, at))
    elif kind == "lp_pool" and p != 1:
        r = e.intrinsic("sqrt", [r]) if p == 2 else \
            e.intrinsic("pow", [r, const(at, 1.0 / p)])
    _put(kb, ix, out, flat, idx, convert(e, r, adt, dt))
    per_element_done(kb, done)


def _avg_count(kb: GpuKernelBuilder, ix: Ix, node, xs, ys, base, at) -> ir.Value:
    """avg_pool's divisor for this thread's output, as a float of type `at`: the product over
    axes of the taps that land on counted positions (the input, plus the explicit pads with
    count_include_pad; never ceil mode's overhang). An axis whose count is the same for
    every output is a constant; else its taps are tested (unrolled, or a loop)."""
    b = kb.b
    attrs = kb.attrs(node)
    nsp = len(xs) - 2
    strides, pads, dil = _window_params(attrs, nsp)
    kernel = [int(k) for k in attrs["kernel_shape"]]
    include = bool(attrs["count_include_pad"])
    count = 1
    for i in range(nsp):
        k = kernel[i]
        per_out = _pool_counts(xs[2 + i], ys[2 + i], k, strides[i], dil[i], pads[i],
                               pads[nsp + i], include)
        if len(set(per_out)) == 1:
            c = per_out[0]
        else:
            lo = -pads[i] if include else 0
            span = xs[2 + i] + (pads[i] + pads[nsp + i] if include else 0)

            def hit(t, i=i, lo=lo, span=span):
                at_t = ix.add(ix.add(base[i], ix.mul(t, dil[i])), -lo)
                return b.zext(ix.below(at_t, span), ix.t)

            if k <= UNROLL_TAPS:
                c = ix.v(0)
                for t in range(k):
                    c = b.add(c, hit(t), name=f"count{i}")
            else:
                slot = b.alloca(ix.t, name=f"count{i}")
                b.store(ix.v(0), slot)
                with counted_loop(b, ix, k, f"c{i}") as t:
                    b.store(b.add(b.load(slot), hit(t)), slot)
                c = b.load(slot, name=f"count{i}")
        count = count * c if isinstance(count, int) and isinstance(c, int) else \
            b.mul(ix.v(count), ix.v(c), name="count")
    if isinstance(count, int):
        return const(at, float(count))
    return b.uitofp(count, at, name="divisor")


# ----- concat and split -----------------------------------------------------------------------

def _spans(sizes: Sequence[int]) -> list:
    """(part, start, end) along the axis for the parts of nonzero size."""
    out, start = [], 0
    for k, n in enumerate(sizes):
        if n:
            out.append((k, start, start + n))
        start += n
    return out


@gpu_generator("concat", inline_inputs=True, epilogue=True)
def concat(kb: GpuKernelBuilder, node) -> None:
    """Output element (outer, a, inner) is input k's (outer, a - start_k, inner), k the
    part whose span holds a."""
    b = kb.b
    out = node.outputs[0]
    shape = list(kb.shape(out))
    if numel(shape) == 0:
        return _empty(kb)
    axis = node_axis(kb, node, len(shape))
    name = llvm_name(out.name)
    ix = Ix(b, wide_index(kb))
    readers = {k: _reader(kb, ix, v) for k, v in enumerate(node.inputs)
               if kb.shape(v)[axis]}
    spans = _spans([kb.shape(v)[axis] for v in node.inputs])
    starts = {k: start for k, start, _ in spans}
    flat, done = per_element(kb, ix)
    idx = ix.delinear(flat, shape)

    def value(k):
        src = list(idx)
        src[axis] = ix.add(idx[axis], -starts[k])
        return readers[k](src)

    got = _by_part(kb, ix, idx[axis], spans, value, name)
    if len(got) == 1:
        x = got[0][0]
    else:
        x = b.phi(got[0][0].type, name=name + ".x")
        for v, blk in got:
            x.add_incoming(v, blk)
    _put(kb, ix, out, flat, idx, x)
    per_element_done(kb, done)


@gpu_generator("split", inline_inputs=True)
def split(kb: GpuKernelBuilder, node) -> None:
    """Input element (outer, a, inner) goes to output k at (outer, a - start_k, inner), k
    the part whose span holds a. Threads run over the input's elements between the first
    and the last written output (an output nobody reads is not stored)."""
    b = kb.b
    x = node.inputs[0]
    shape = list(kb.shape(x))
    axis = node_axis(kb, node, len(shape))
    name = llvm_name(x.name) + ".split"
    written = {id(v) for v in kb.outputs}
    spans = _spans([kb.shape(y)[axis] for y in node.outputs])
    live = [(k, s, t) for k, s, t in spans if id(node.outputs[k]) in written]
    if not live or numel(shape) == 0:
        return _empty(kb)
    first, last = live[0][1], live[-1][2]  # the run of the axis that threads cover
    spans = [sp for sp in spans if first <= sp[1] and sp[2] <= last]
    starts = {k: start for k, start, _ in spans}
    run = list(shape)
    run[axis] = last - first
    ix = Ix(b, wide_index(kb))
    read = _reader(kb, ix, x)
    flat, done = per_element(kb, ix)
    kb.parallel_extent = numel(run)
    pos = ix.delinear(flat, run)
    idx = list(pos)
    idx[axis] = ix.add(pos[axis], first)
    v = read(idx, flat if run == shape else None)  # every part written: x's element `flat`

    def store(k):
        y = node.outputs[k]
        if id(y) not in written:
            return None
        dst = list(idx)
        dst[axis] = ix.add(idx[axis], -starts[k])
        ptr = kb.ptr(y)
        b.store(v, b.gep(ptr, [ix.v(ix.linear(dst, kb.shape(y)))], inbounds=True))
        return None

    _by_part(kb, ix, idx[axis], spans, store, name)
    per_element_done(kb, done)


# ----- pad ------------------------------------------------------------------------------------

def _pad_source(b: ir.IRBuilder, ix: Ix, mode: str, o, width, d: int, name: str) -> tuple:
    """(input coordinate, on-input flag or None) along one axis for output coordinate o.

    Negative pads crop: the kept input is [lo, hi). Constant mode says whether o is on the
    input (the caller selects the fill otherwise, and the coordinate is then lo, in range);
    the other modes fold o back onto [lo, hi). A Python int o (a size-1 output axis) folds
    at compile time; its flag is then a bool."""
    if width[0] == 0 and width[1] == 0:
        return o, None
    lo, L, gb = pad_geometry(width, d)
    if isinstance(o, int):
        t, ok = fold_pad_index(o - gb, L, mode)
        return (lo, False) if ok is False else (t + lo, ok)
    t = ix.add(o, -gb, name=name + ".t")
    if mode == "constant":
        ok = ix.below(t, L, name=name + ".in")  # 0 <= t < L
        return b.select(ok, ix.v(ix.add(t, lo)), ix.v(lo), name=name + ".src"), ok
    if mode == "edge":
        t = b.select(b.icmp_signed("<", ix.v(t), ix.v(0)), ix.v(0), ix.v(t), name=name + ".lo")
        t = b.select(b.icmp_signed(">", t, ix.v(L - 1)), ix.v(L - 1), t, name=name + ".hi")
    elif mode == "reflect":
        t = ix.v(t)
        t = b.select(b.icmp_signed("<", t, ix.v(0)), b.neg(t), t, name=name + ".lo")
        t = b.select(b.icmp_signed(">=", t, ix.v(L)), b.sub(ix.v(2 * (L - 1)), t), t,
                     name=name + ".hi")
    else:  # wrap: t >= -gb, so adding a multiple of L of at least gb makes it non-negative
        t = b.urem(ix.v(ix.add(t, L * (-(-gb // L)))), ix.v(L), name=name + ".wrap")
    return ix.add(t, lo, name=name + ".src"), None


@gpu_generator("pad", inline_inputs=True, epilogue=True)
def pad(kb: GpuKernelBuilder, node) -> None:
    """Each output element reads the input element its axes map to (reflect, edge, wrap),
    or in constant mode that element or the fill."""
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    mode = kb.attrs(node)["mode"]
    in_shape, out_shape = list(kb.shape(x)), list(kb.shape(out))
    rank = len(in_shape)
    if numel(out_shape) == 0:
        return _empty(kb)
    widths = _pad_widths(rank, const_input(node, 1, "the pads"), const_input(node, 3,
                                                                              "the padded axes"))
    name = llvm_name(out.name)
    ix = Ix(b, wide_index(kb))
    fill: Optional[ir.Value] = const(llvm_type(out.type.dtype), 0)
    v = node.inputs[2] if len(node.inputs) > 2 else None
    if mode == "constant" and v is not None and v.type.numel:
        fill = kb.value_at(v, [0] * len(kb.shape(v)))  # in the entry block: dominates all
    kept = [d - max(0, -bg) - max(0, -en) for d, (bg, en) in zip(in_shape, widths)]
    read = None if 0 in kept else _reader(kb, ix, x)  # nothing kept: every element is fill
    flat, done = per_element(kb, ix)
    idx = ix.delinear(flat, out_shape)
    if read is None:
        y = fill
    else:
        src, ok = [], None
        for a in range(rank):
            s, f = _pad_source(b, ix, mode, idx[a], widths[a], in_shape[a], f"{name}.a{a}")
            src.append(s)
            ok = both_conditions(b, ok, f)
        if ok is False:
            y = fill
        else:
            y = read(src)
            if ok not in (None, True):
                y = b.select(ok, y, fill, name=name)
    _put(kb, ix, out, flat, idx, y)
    per_element_done(kb, done)
