"""Generators for the nn op family: convolution, pooling, normalization, softmax, resize.

Three loop shapes cover most of the family:

* **sliding windows, one output row at a time** (pooling, the direct convolution used for
  depthwise / N-d / non-f32 convs, transposed convolution): a work item is one row along the
  last spatial axis of one (image, channel, outer output position). The row accumulates in a
  stack buffer. Each kernel tap touches a contiguous run of outputs -- where it lands on real
  input, not padding -- computed at compile time, so no loop tests bounds per element: the
  interior runs with the taps unrolled in registers, the edges tap by tap. The finished row
  goes through `kb.store_result`, which applies the kernel's fused epilogue.
* **convolution as GEMM** (float32, 1-D and 2-D): per (image, group, chunk of output
  columns) im2col into scratch, then a runtime-size GEMM emitted once per module
  (`_shared_gemm`, so a model's convolutions add no GEMM compile each) with the weights
  [Cout, K] as A. 1x1 stride-1 convolutions multiply their input in place. The bias is added
  in the GEMM; a fused epilogue runs in a vectorized copy-out of the chunk.
* **passes over a line** (softmax family, norms, global pools, lp_normalization): per work
  item a few passes with explicit vector accumulators and shuffle-tree horizontal reductions;
  along a non-last axis the vectors run across the inner lines instead.

Resize precomputes its per-axis taps and weights at compile time with the reference's own
coordinate code (applied to an identity matrix), so every coordinate_transformation_mode,
antialias and exclude_outside match by construction; it refuses run-time scales or roi.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.errors import UnsupportedError
from slimc.ir.ops.nn import _window_params

from . import gemm as gemm_kernels
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import (F32, F64, I32, I64, const, for_range, i64, llvm_type, load,
                         OPAQUE_PTR, masked_load_vector, masked_store_vector, splat, store)
from .scalar_ops import LOWERINGS, Emitter, _convert

# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


def _numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _acc_dtype(dt):
    """What a float op computes in: f64 stays, f16/f32 compute in f32; integers stay."""
    if dt == dtypes.f64:
        return dt
    return dtypes.f32 if dt.is_float else dt


def _emitter(kb: KernelBuilder, dt, name: str) -> Emitter:
    return Emitter(kb.b, [dt], dt, kb.fast_math, name)


def _cdiv(a: int, b: int) -> int:
    return -((-a) // b)


def _table(kb: KernelBuilder, values: Sequence, name: str, ty: ir.Type = I64) -> ir.Value:
    """A constant table in the module (an internal global); returns a typed pointer to it."""
    module = kb.module
    values = list(values) or [0]
    arr = ir.ArrayType(ty, len(values))
    gv = ir.GlobalVariable(module, arr, name=module.get_unique_name(f"{kb.fn.name}.{name}"))
    gv.global_constant = True
    gv.linkage = "internal"
    gv.initializer = ir.Constant(arr, [const(ty, v) for v in values])
    return kb.b.bitcast(gv, ir.PointerType(ty), name=name)


def _tload(kb: KernelBuilder, table: ir.Value, index, name: str) -> ir.Value:
    return kb.b.load(kb.b.gep(table, [kb._ir(index)], inbounds=True, name=name + ".addr"),
                     name=name)


def _stack_row(kb: KernelBuilder, ty: ir.Type, n: int, name: str) -> ir.Value:
    """A per-call (so per-thread) stack buffer of n elements, allocated in the entry block."""
    arr = kb.b.alloca(ir.ArrayType(ty, max(1, n)), name=name + ".buf")
    arr.align = 64
    return kb.b.bitcast(arr, ir.PointerType(ty), name=name)


def _smax(b: ir.IRBuilder, x, y, name: str):
    return b.select(b.icmp_signed(">", x, y), x, y, name=name)


def _smin(b: ir.IRBuilder, x, y, name: str):
    return b.select(b.icmp_signed("<", x, y), x, y, name=name)


def _vec_loop(kb: KernelBuilder, lo, hi, body: Callable, name: str, lanes: Optional[int] = None):
    """body(i, n) for i in [lo, hi): vectors of `lanes` (the target's width), a scalar tail."""
    W = kb.vector_width if lanes is None else lanes
    b = kb.b
    if isinstance(lo, int) and isinstance(hi, int):
        vend = lo + (hi - lo) // W * W if W > 1 else lo
        if vend > lo:
            with kb.loop(lo, vend, W, name=name + "v") as i:
                body(i, W)
        if hi > vend:
            with kb.loop(vend, hi, 1, name=name + "s") as i:
                body(i, 1)
        return
    lo_v, hi_v = kb._ir(lo), kb._ir(hi)
    if W > 1:
        span = b.sub(hi_v, lo_v, name=name + ".span")
        span = _smax(b, span, i64(0), name + ".span0")
        vend = b.add(lo_v, b.mul(b.udiv(span, i64(W)), i64(W)), name=name + ".vend")
        with kb.loop(lo_v, vend, W, name=name + "v") as i:
            body(i, W)
        lo_v = vend
    with kb.loop(lo_v, hi_v, 1, name=name + "s") as i:
        body(i, 1)


def _vload(kb: KernelBuilder, ptr: ir.Value, index, lanes: int, name: str) -> ir.Value:
    return load(kb.b, ptr, kb._ir(index), lanes, name=name)


def _vstore(kb: KernelBuilder, value: ir.Value, ptr: ir.Value, index, name: str) -> None:
    store(kb.b, value, ptr, kb._ir(index), name=name)


def _cvt(e: Emitter, v: ir.Value, src, dst) -> ir.Value:
    return _convert(e, v, src, dst)


def _hreduce(e: Emitter, v: ir.Value, op: str) -> ir.Value:
    """Horizontal sum / max of a vector (a tree of shuffles: no reassoc flag needed)."""
    b = e.b
    if not isinstance(v.type, ir.VectorType):
        return v
    n = v.type.count
    while n > 1:
        half = n // 2
        lo = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, half), list(range(half))))
        hi = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, half), list(range(half, n))))
        v = e.add(lo, hi) if op == "sum" else e.max(lo, hi)
        n = half
    return b.extract_element(v, I32(0))


def _canon(kb: KernelBuilder, v, index) -> list:
    """`index` with 0 for the dims of size 1: the form the epilogue's operand indexing uses,
    so that an override set at this index is found again."""
    return [0 if d == 1 else i for d, i in zip(kb.shape(v), index)]


def _store_result(kb: KernelBuilder, v, index, x) -> None:
    kb.store_result(v, _canon(kb, v, index), x)


def _flat_index(dims, f) -> list:
    """Flat position f of a run over `dims` as an index: f on the last dim larger than 1 (all
    later dims are 1, so its stride is 1), 0 elsewhere."""
    big = [i for i, d in enumerate(dims) if d != 1]
    if not big:
        return [0] * len(dims)
    return [f if i == big[-1] else 0 for i in range(len(dims))]


def _flat_epilogue_ok(kb: KernelBuilder, anchor, produced, first_dim: int) -> bool:
    """True when the kernel's fused epilogue may be evaluated at "flat" indices
    [..prefix.., 0, .., 0, f] over dims [first_dim, rank) of `produced`: every value it touches
    is elementwise and either spans all of those dims (same sizes) or none of them."""
    shape = kb.shape(produced)
    rank = len(shape)
    span = list(shape[first_dim:])
    for n in kb.nodes:
        if n is anchor:
            continue
        if n.op not in LOWERINGS:
            return False
        for v in list(n.inputs) + list(n.outputs):
            if v is None:
                continue
            s = list(kb.shape(v))
            s = [1] * (rank - len(s)) + s if len(s) < rank else s
            if len(s) != rank:
                return False
            tail = s[first_dim:]
            if tail != span and any(d != 1 for d in tail):
                return False
    return True


# ----------------------------------------------------------------------------------------------
# Sliding-window geometry (compile time)
# ----------------------------------------------------------------------------------------------


class _Geom:
    """One sliding window per output position: input position o*s + k*d - p along each axis."""

    def __init__(self, in_sp, out_sp, kernel, strides, pads, dilations):
        self.nsp = len(in_sp)
        self.ins = [int(v) for v in in_sp]
        self.outs = [int(v) for v in out_sp]
        self.kernel = [int(v) for v in kernel]
        self.s = [int(v) for v in strides]
        self.d = [int(v) for v in dilations]
        self.p = [int(v) for v in pads[:self.nsp]]

    def taps_for_output(self, i: int, o: int) -> tuple[int, int]:
        """[klo, khi): the taps of output o along axis i that land on the input."""
        a = o * self.s[i] - self.p[i]
        lo = max(0, _cdiv(-a, self.d[i]))
        hi = min(self.kernel[i], (self.ins[i] - 1 - a) // self.d[i] + 1)
        return lo, max(lo, hi)

    def outputs_for_tap(self, i: int, k: int) -> tuple[int, int]:
        """[olo, ohi): the outputs along axis i whose tap k lands on the input."""
        a = self.p[i] - k * self.d[i]
        lo = max(0, _cdiv(a, self.s[i]))
        hi = min(self.outs[i], (self.ins[i] - 1 + a) // self.s[i] + 1)
        return lo, max(lo, hi)

    def tap_tables(self, kb: KernelBuilder, i: int, name: str):
        r = [self.taps_for_output(i, o) for o in range(self.outs[i])]
        return (_table(kb, [a for a, _ in r], f"{name}.klo{i}"),
                _table(kb, [b for _, b in r], f"{name}.khi{i}"))

    def out_tables(self, kb: KernelBuilder, i: int, name: str):
        r = [self.outputs_for_tap(i, k) for k in range(self.kernel[i])]
        return (_table(kb, [a for a, _ in r], f"{name}.olo{i}"),
                _table(kb, [b for _, b in r], f"{name}.ohi{i}"))


def _outer_taps(kb: KernelBuilder, g: _Geom, tables, o_idx, body: Callable, name: str,
                i: int = 0, off=0, ks=()):
    """Loops over the valid taps of the outer spatial axes (all but the last) of the window of
    output position o_idx; body(input offset of the row, taps) in the innermost."""
    if i == g.nsp - 1:
        body(off, list(ks))
        return
    b = kb.b
    lo = _tload(kb, tables[i][0], o_idx[i], f"{name}.klo{i}")
    hi = _tload(kb, tables[i][1], o_idx[i], f"{name}.khi{i}")
    stride_in = _numel(g.ins[i + 1:])
    with kb.loop(lo, hi, name=f"{name}.k{i}") as k:
        pos = b.sub(b.add(b.mul(kb._ir(o_idx[i]), i64(g.s[i])), b.mul(k, i64(g.d[i]))), i64(g.p[i]),
                    name=f"{name}.in{i}")
        nxt = kb.iadd(off, b.mul(pos, i64(stride_in)))
        _outer_taps(kb, g, tables, o_idx, body, name, i + 1, nxt, ks + (k,))


# Kernels at most this wide along the last axis get the register-blocked interior loop.
UNROLL_TAPS = 16


def _accumulate_row(kb: KernelBuilder, g: _Geom, acc, tables, value: Callable,
                    combine: Callable, prepare: Optional[Callable] = None) -> None:
    """acc[ox] = combine(acc[ox], value(ox, kx, prepare(kx))) for every last-axis tap kx and
    every output ox where that tap lands on the input.

    The interior (outputs where every tap is valid, known at compile time) runs one loop over
    ox with the taps unrolled, so acc is loaded and stored once per row of taps and LLVM
    vectorizes across ox; the edges (and kernels wider than UNROLL_TAPS) run per tap over its
    valid range, from the tables (olo, ohi)."""
    b = kb.b
    i = g.nsp - 1
    K = g.kernel[i]
    ranges = [g.outputs_for_tap(i, k) for k in range(K)]
    L = max(lo for lo, _ in ranges)
    R = min(hi for _, hi in ranges)
    olo, ohi = tables

    def per_tap(lo_clip, hi_clip, tag):
        with kb.loop(0, K, name=f"kx{tag}") as kx:
            pre = prepare(kx) if prepare is not None else None
            lo = _tload(kb, olo, kx, "olo")
            hi = _tload(kb, ohi, kx, "ohi")
            if lo_clip is not None:
                lo = _smax(b, lo, i64(lo_clip), "lo.c")
            if hi_clip is not None:
                hi = _smin(b, hi, i64(hi_clip), "hi.c")
            with kb.loop(lo, hi, name=f"ox{tag}") as ox:
                ap = b.gep(acc, [ox], inbounds=True)
                b.store(combine(b.load(ap), value(ox, kx, pre)), ap)

    if L >= R or K > UNROLL_TAPS:
        per_tap(None, None, "")
        return
    pres = [prepare(k) if prepare is not None else None for k in range(K)]
    with kb.loop(L, R, name="oxi") as ox:
        ap = b.gep(acc, [ox], inbounds=True)
        a = b.load(ap, name="acc")
        for k in range(K):
            a = combine(a, value(ox, k, pres[k]))
        b.store(a, ap)
    if L > 0:
        per_tap(None, L, "l")
    if R < g.outs[i]:
        per_tap(R, None, "r")


# ----------------------------------------------------------------------------------------------
# Pooling: max / avg / lp
# ----------------------------------------------------------------------------------------------


def _pool_counts(n_in, n_out, k, s, d, pb, pe, include_pad) -> list:
    """avg_pool's divisor along one axis, as the reference counts it."""
    lo, hi = (-pb, n_in + pe) if include_pad else (0, n_in)
    out = []
    for o in range(n_out):
        out.append(sum(1 for t in range(k) if lo <= o * s + t * d - pb < hi))
    return out


@generator("max_pool", "avg_pool", "lp_pool", epilogue=True)
def pool(kb: KernelBuilder, node) -> None:
    """One work item per output row: acc[ox] op= f(x[.., ox*s + kx*d - p]) per valid tap."""
    b = kb.b
    kind = node.op
    x, out = node.inputs[0], node.outputs[0]
    attrs = kb.attrs(node)
    xs, ys = kb.shape(x), kb.shape(out)
    nsp = len(xs) - 2
    strides, pads, dil = _window_params(attrs, nsp)
    kernel = [int(k) for k in attrs["kernel_shape"]]
    g = _Geom(xs[2:], ys[2:], kernel, strides, pads, dil)
    name = llvm_name(out.name)
    dt = x.type.dtype
    # 8-bit integers compare in i32: same maxima, and LLVM vectorizes i8 loops 32 lanes wide
    # and 4 deep, which costs a second of compile time for nothing
    adt = _acc_dtype(dt) if dt.is_float else (dtypes.i32 if dt.is_signed else dtypes.u32)
    acc_t = llvm_type(adt)
    e = _emitter(kb, adt, name)
    Wo = ys[-1]
    rows_shape = [ys[0] * ys[1]] + list(ys[2:-1])
    kb.parallel_extent = _numel(rows_shape)
    kb.cost = _numel(ys) * _numel(kernel)
    plane = _numel(xs[2:])
    X = kb.ptr(x)
    acc = _stack_row(kb, acc_t, Wo, name + ".acc")
    tables = [g.tap_tables(kb, i, name) for i in range(nsp - 1)]
    olo, ohi = g.out_tables(kb, nsp - 1, name)
    p = int(attrs.get("p", 2))
    if kind == "max_pool":
        ident = -math.inf if adt.is_float else _int_min(dt)
    else:
        ident = 0.0
    counts = None
    if kind == "avg_pool":
        inc = bool(attrs["count_include_pad"])
        counts = [_table(kb, _pool_counts(xs[2 + i], ys[2 + i], kernel[i], strides[i], dil[i],
                                          pads[i], pads[nsp + i], inc), f"{name}.cnt{i}", acc_t)
                  for i in range(nsp)]

    def tap_value(v):
        v = _cvt(e, v, dt, adt)
        if kind == "lp_pool":
            a = e.intrinsic("fabs", [v])
            if p == 1:
                return a
            if p == 2:
                return e.mul(a, a)
            return e.intrinsic("pow", [a, const(acc_t, float(p))])
        return v

    def combine(a, v):
        if kind != "max_pool":
            return e.add(a, v)
        if not adt.is_float:
            return e.max(a, v)
        # NaN-propagating like np.maximum; the sign of zero may be either (nsz: 3 instructions
        # on x86 instead of 5)
        fn = kb.module.globals.get(f"llvm.maximum.{_fsuffix(a.type)}")
        if fn is None:
            fn = ir.Function(kb.module, ir.FunctionType(a.type, [a.type, a.type]),
                             name=f"llvm.maximum.{_fsuffix(a.type)}")
        return b.call(fn, [a, v], name="max", fastmath=("nsz",))

    with kb.loop(kb.begin, kb.end, name="row") as row:
        ridx = kb.delinear(row, rows_shape)
        nc, o_idx = ridx[0], ridx[1:]
        with kb.loop(0, Wo, name="init") as ox:
            b.store(const(acc_t, ident), b.gep(acc, [ox], inbounds=True))
        base = b.mul(kb._ir(nc), i64(plane), name="plane")

        def row_taps(off, _ks):
            row = kb._ir(kb.iadd(base, off))

            def value(ox, kx, _pre):
                at = b.add(b.add(row, b.mul(ox, i64(strides[-1]))),
                           kb._ir(kb.iadd(kb.imul(kx, dil[-1]), -pads[nsp - 1])), name="xi")
                return tap_value(b.load(b.gep(X, [at], inbounds=True), name="x"))

            _accumulate_row(kb, g, acc, (olo, ohi), value, combine)

        _outer_taps(kb, g, tables, o_idx, row_taps, name)
        outer_count = None
        if counts is not None:
            outer_count = const(acc_t, 1.0)
            for i in range(nsp - 1):
                outer_count = e.mul(outer_count, _tload(kb, counts[i], o_idx[i], f"cnt{i}"))
        n_i = kb.idiv(nc, ys[1])
        c_i = kb.imod(nc, ys[1])

        def finish(ox, lanes):
            v = _vload(kb, acc, ox, lanes, "acc")
            if kind == "avg_pool":
                cnt = _vload(kb, counts[-1], ox, lanes, "cnt")
                v = e.fdiv(v, e.mul(splat(b, outer_count, lanes), cnt) if nsp > 1 else cnt)
            elif kind == "lp_pool":
                if p == 2:
                    v = e.intrinsic("sqrt", [v])
                elif p != 1:
                    v = e.intrinsic("pow", [v, const(v.type, 1.0 / p)])
            _store_result(kb, out, [n_i, c_i] + list(o_idx) + [ox], _cvt(e, v, adt, dt))

        _vec_loop(kb, 0, Wo, finish, "fin")
    b.ret_void()


def _fsuffix(t: ir.Type) -> str:
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{_fsuffix(t.element)}"
    return {ir.FloatType: "f32", ir.DoubleType: "f64", ir.HalfType: "f16"}[type(t)]


def _int_min(dt) -> int:
    return int(np.iinfo(dt.numpy).min)


@generator("max_pool_with_indices")
def max_pool_with_indices(kb: KernelBuilder, node) -> None:
    """Per output element: the first maximum over the window's valid taps (row-major order)
    and its flat index into x (row-major, or spatially column-major with storage_order=1)."""
    b = kb.b
    x = node.inputs[0]
    vals, inds = node.outputs
    attrs = kb.attrs(node)
    xs, ys = kb.shape(x), kb.shape(vals)
    nsp = len(xs) - 2
    strides, pads, dil = _window_params(attrs, nsp)
    kernel = [int(k) for k in attrs["kernel_shape"]]
    g = _Geom(xs[2:], ys[2:], kernel, strides, pads, dil)
    name = llvm_name(vals.name)
    dt = x.type.dtype
    t = llvm_type(dt)
    e = _emitter(kb, dt, name)
    spatial = xs[2:]
    plane = _numel(spatial)
    col_major = bool(attrs["storage_order"])
    # flat-index weight of each spatial coordinate
    wts = [0] * nsp
    acc_w = 1
    for i in (reversed(range(nsp)) if not col_major else range(nsp)):
        wts[i] = acc_w
        acc_w *= spatial[i]
    kb.parallel_extent = ys[0] * ys[1]
    kb.cost = _numel(ys) * _numel(kernel)
    X = kb.ptr(x)
    tabs = [g.tap_tables(kb, i, name) for i in range(nsp)]
    best = b.alloca(t, name="best")
    best_i = b.alloca(I64, name="best.idx")
    found = b.alloca(ir.IntType(1), name="found")
    lowest = -math.inf if dt.is_float else _int_min(dt)
    with kb.loop(kb.begin, kb.end, name="nc") as nc:
        n_i, c_i = kb.idiv(nc, ys[1]), kb.imod(nc, ys[1])
        base_flat = b.mul(nc, i64(plane), name="base")  # nc: a loop counter

        def nest(i, o_idx):
            if i < nsp:
                with kb.loop(0, ys[2 + i], name=f"o{i}") as o:
                    nest(i + 1, o_idx + [o])
                return
            # start: no valid tap yet; the index is tap 0's position (the reference's choice)
            flat0 = base_flat
            for j in range(nsp):
                pos = b.sub(b.mul(o_idx[j], i64(strides[j])), i64(pads[j]))
                flat0 = b.add(flat0, b.mul(pos, i64(wts[j])))
            b.store(const(t, lowest), best)
            b.store(flat0, best_i)
            b.store(const(ir.IntType(1), 0), found)

            def taps(j, off, flat):
                if j == nsp:
                    v = b.load(b.gep(X, [off], inbounds=True), name="x")
                    cur = b.load(best)
                    was = b.load(found)
                    better = b.or_(b.not_(was), e.gt(v, cur))
                    b.store(b.select(better, v, cur), best)
                    b.store(b.select(better, flat, b.load(best_i)), best_i)
                    b.store(const(ir.IntType(1), 1), found)
                    return
                lo = _tload(kb, tabs[j][0], o_idx[j], f"klo{j}")
                hi = _tload(kb, tabs[j][1], o_idx[j], f"khi{j}")
                with kb.loop(lo, hi, name=f"k{j}") as k:
                    pos = b.add(b.sub(b.mul(o_idx[j], i64(strides[j])), i64(pads[j])),
                                b.mul(k, i64(dil[j])), name=f"pos{j}")
                    taps(j + 1, b.add(off, b.mul(pos, i64(_numel(spatial[j + 1:])))),
                         b.add(flat, b.mul(pos, i64(wts[j]))))

            taps(0, base_flat, base_flat)
            index = [n_i, c_i] + o_idx
            kb.store_value(vals, index, b.load(best, name="max"))
            kb.store_value(inds, index, b.load(best_i, name="argmax"))
            kb.cache.clear()

        nest(0, [])
    b.ret_void()


# ----------------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------------

# Work items of a GEMM convolution: at most this many, each with its own scratch slot.
CONV_MAX_ITEMS = 16
# Columns per GEMM chunk: about this many floats of im2col per chunk (then a multiple of NR).
CONV_CHUNK_FLOATS = 1 << 17
# Fewer (image, group, chunk) tasks than this: output channels are split into row blocks too.
CONV_MIN_TASKS = 2


def _conv_chunk(n: int, k: int, nr: int) -> int:
    """Output columns per GEMM chunk: near CONV_CHUNK_FLOATS / K (at most 4x that), choosing
    the count of chunks that pads the fewest columns to whole NR-column panels."""
    target = max(4 * nr, CONV_CHUNK_FLOATS // max(1, k))
    if target >= n:
        return n
    n0 = _cdiv(n, target)

    def padded(nc):
        nb = _cdiv(n, nc)
        tail = n - (_cdiv(n, nb) - 1) * nb
        return (_cdiv(n, nb) - 1) * _cdiv(nb, nr) * nr + _cdiv(tail, nr) * nr

    cands = [nc for nc in range(max(1, _cdiv(n0, 4)), 2 * n0 + 1) if _cdiv(n, nc) >= nr]
    best = min(cands, key=lambda nc: (padded(nc), abs(nc - n0)))
    return _cdiv(n, best)


@generator("conv", epilogue=True)
def conv(kb: KernelBuilder, node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    xs, ws = kb.shape(x), kb.shape(w)
    nsp = len(xs) - 2
    group = int(kb.attrs(node)["group"])
    cig, cog = ws[1], ws[0] // group
    K = cig * _numel(ws[2:])
    if (x.type.dtype == dtypes.f32 and nsp <= 2 and cog >= 4 and K >= 8
            and _numel(kb.shape(out)[2:]) >= 4):
        return _conv_gemm(kb, node)
    return _conv_direct(kb, node)


def _conv_direct(kb: KernelBuilder, node) -> None:
    """Any conv as rows: acc[ox] += w[co, ci, k] * x[.., ox*s + kx*d - p] over ci and taps."""
    b = kb.b
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    attrs = kb.attrs(node)
    xs, ws, ys = kb.shape(x), kb.shape(w), kb.shape(out)
    nsp = len(xs) - 2
    strides, pads, dil = _window_params(attrs, nsp)
    group = int(attrs["group"])
    cig, cout = ws[1], ws[0]
    cog = cout // group
    kernel = list(ws[2:])
    g = _Geom(xs[2:], ys[2:], kernel, strides, pads, dil)
    name = llvm_name(out.name)
    dt = x.type.dtype
    adt = _acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = _emitter(kb, adt, name)
    Wo = ys[-1]
    rows_shape = [ys[0], cout] + list(ys[2:-1])
    kb.parallel_extent = _numel(rows_shape)
    kb.cost = 2 * _numel(ys) * cig * _numel(kernel)
    plane = _numel(xs[2:])
    ktaps = _numel(kernel)
    X, Wt = kb.ptr(x), kb.ptr(w)
    acc = _stack_row(kb, acc_t, Wo, name + ".acc")
    tables = [g.tap_tables(kb, i, name) for i in range(nsp - 1)]
    olo, ohi = g.out_tables(kb, nsp - 1, name)
    kstrides = KernelBuilder.strides(kernel)
    with kb.loop(kb.begin, kb.end, name="row") as row:
        ridx = kb.delinear(row, rows_shape)
        n_i, co, o_idx = ridx[0], ridx[1], ridx[2:]
        init = const(acc_t, 0.0)
        if bias is not None:
            init = _cvt(e, b.load(b.gep(kb.ptr(bias), [kb._ir(co)], inbounds=True), name="bias"),
                        bias.type.dtype, adt)
        with kb.loop(0, Wo, name="init") as ox:
            b.store(init, b.gep(acc, [ox], inbounds=True))
        gi = kb.idiv(co, cog)
        with kb.loop(0, cig, name="ci") as ci:
            chan = b.add(b.mul(kb._ir(n_i), i64(xs[1])), b.add(kb._ir(kb.imul(gi, cig)), ci),
                         name="chan")
            base = b.mul(chan, i64(plane), name="xbase")
            wbase = b.mul(b.add(b.mul(kb._ir(co), i64(cig)), ci), i64(ktaps), name="wbase")

            def row_taps(off, ks):
                woff = wbase
                for i, k in enumerate(ks):
                    woff = b.add(woff, b.mul(k, i64(kstrides[i])))
                row = kb._ir(kb.iadd(base, off))

                def weight(kx):
                    wv = b.load(b.gep(Wt, [kb._ir(kb.iadd(woff, kx))], inbounds=True), name="w")
                    return _cvt(e, wv, w.type.dtype, adt)

                def value(ox, kx, wv):
                    at = b.add(b.add(row, b.mul(ox, i64(strides[-1]))),
                               kb._ir(kb.iadd(kb.imul(kx, dil[-1]), -pads[nsp - 1])), name="xi")
                    return e.mul(wv, _cvt(e, b.load(b.gep(X, [at], inbounds=True), name="x"),
                                          dt, adt))

                _accumulate_row(kb, g, acc, (olo, ohi), value, e.add, weight)

            _outer_taps(kb, g, tables, o_idx, row_taps, name)

        def finish(ox, lanes):
            v = _vload(kb, acc, ox, lanes, "acc")
            _store_result(kb, out, [n_i, co] + list(o_idx) + [ox], _cvt(e, v, adt, dt))

        _vec_loop(kb, 0, Wo, finish, "fin")
    b.ret_void()


def _conv_gemm(kb: KernelBuilder, node) -> None:
    """float32 1-D/2-D conv: for each (image, group, chunk of output columns) im2col the chunk
    into scratch ([K, ldp] rows, ldp a whole number of NR-column panels, which the GEMM reads
    unpacked) and multiply W_g [Cout/g, K] @ cols with the module's shared runtime-size GEMM
    (`_shared_gemm`), which adds the bias. 1x1 stride-1 convs multiply the input in place
    (or pack it when its chunks are not whole panels).

    Work items are at most CONV_MAX_ITEMS runs of consecutive tasks, each with its own scratch
    slot, so threads never share a buffer. Without a fused epilogue the GEMM writes the output
    directly; with one it writes the chunk to scratch and a vectorized loop along the output
    rows hands it to `kb.store_result`."""
    b = kb.b
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    attrs = kb.attrs(node)
    xs, ws, ys = kb.shape(x), kb.shape(w), kb.shape(out)
    nsp = len(xs) - 2
    strides, pads, dil = _window_params(attrs, nsp)
    if nsp == 1:  # a 1-D conv is a 2-D conv of height 1
        H, W, Ho, Wo, kh, kw = 1, xs[2], 1, ys[2], 1, ws[2]
        sh, sw, dh, dw, pt, pl = 1, strides[0], 1, dil[0], 0, pads[0]
    else:
        H, W, Ho, Wo, kh, kw = xs[2], xs[3], ys[2], ys[3], ws[2], ws[3]
        (sh, sw), (dh, dw), (pt, pl) = strides, dil, pads[:2]
    group = int(attrs["group"])
    N, C = xs[0], xs[1]
    cout, cig = ws[0], ws[1]
    cog = cout // group
    K = cig * kh * kw
    HWo = Ho * Wo
    name = llvm_name(out.name)
    gemm_fn, pack_fn, cfg = _shared_gemm(kb)
    nr, mr = cfg.nr, cfg.mr
    pointwise = kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 and \
        H == Ho and W == Wo
    nb = _conv_chunk(HWo, K, nr)
    nchunks = _cdiv(HWo, nb)
    tail = HWo - (nchunks - 1) * nb
    # Few chunks (batch 1, small images): split the output channels too, so that threads
    # have work; each row block redoes its chunk's im2col unless its item just did it.
    mblocks = 1
    base_tasks = N * group * nchunks
    if base_tasks < CONV_MIN_TASKS:
        mblocks = max(1, min(_cdiv(CONV_MIN_TASKS, base_tasks), cog // (4 * mr)))
    mbs = _cdiv(_cdiv(cog, mblocks), mr) * mr
    mblocks = _cdiv(cog, mbs)
    tasks = base_tasks * mblocks
    items = min(tasks, CONV_MAX_ITEMS)
    direct = list(kb.outputs) == [out]
    ldp = _cdiv(nb, nr) * nr  # im2col row length: whole panels, the GEMM reads it unpacked
    # a pointwise conv reads its input in place when every chunk is whole panels
    pw_direct = pointwise and nb % nr == 0 and tail % nr == 0
    col_floats = 0 if pointwise else K * ldp
    pack_floats = ldp * K if pointwise and not pw_direct else 0
    c_floats = 0 if direct else _cdiv(cog * nb, 16) * 16
    slot = col_floats + pack_floats + c_floats
    ws_raw = kb.scratch(4 * slot * items, name + ".ws")
    ws_f = b.bitcast(ws_raw, ir.PointerType(F32), name=name + ".wsf")
    kb.parallel_extent = items
    kb.cost = 2 * N * cout * HWo * K
    X, Wt = kb.ptr(x), kb.ptr(w)
    Y = kb.ptr(out) if direct else None
    im2col_fn = kb.module.globals["slimc_nn_im2col"]
    null = ir.Constant(ir.PointerType(F32), None)

    with kb.loop(kb.begin, kb.end, name="item") as wi:
        t0 = b.udiv(b.mul(wi, i64(tasks)), i64(items), name="t0")
        t1 = b.udiv(b.mul(b.add(wi, i64(1)), i64(tasks)), i64(items), name="t1")
        slot_p = b.gep(ws_f, [b.mul(wi, i64(slot))], inbounds=True, name="slot")
        colbuf = slot_p
        packed = b.gep(slot_p, [i64(col_floats)], inbounds=True, name="packed")
        cbuf = b.gep(slot_p, [i64(col_floats + pack_floats)], inbounds=True, name="cbuf")
        with kb.loop(t0, t1, name="task") as t:
            mb = b.urem(t, i64(mblocks), name="mb")
            tc = b.udiv(t, i64(mblocks), name="tc")
            chunk = b.urem(tc, i64(nchunks), name="chunk")
            ng = b.udiv(tc, i64(nchunks), name="ng")
            gi = b.urem(ng, i64(group), name="g")
            n_i = b.udiv(ng, i64(group), name="n")
            c0 = b.mul(chunk, i64(nb), name="c0")
            is_tail = b.icmp_unsigned("==", chunk, i64(nchunks - 1), name="is.tail")
            ncur = b.select(is_tail, i64(tail), i64(nb), name="ncols")
            x_img = b.gep(X, [b.mul(b.add(b.mul(n_i, i64(C)), b.mul(gi, i64(cig))), i64(H * W))],
                          inbounds=True, name="x.img")
            # the chunk's packed columns: made by the first row block, or by this item's first
            # task when the item starts mid-chunk
            fresh = b.or_(b.icmp_unsigned("==", mb, i64(0)), b.icmp_unsigned("==", t, t0),
                          name="fresh")
            with b.if_then(fresh):
                if pointwise and not pw_direct:
                    b.call(pack_fn, [b.gep(x_img, [c0], inbounds=True, name="b.src"), i64(HWo),
                                     i64(K), ncur, packed])
                elif not pointwise:
                    b.call(im2col_fn, [x_img, colbuf, c0, ncur, i64(ldp)] +
                           [i64(v) for v in (cig, H, W, Wo, kh, kw, sh, sw, dh, dw, pt, pl)])
            if pw_direct:   # the input itself, row-major [Cin, H*W]
                b_src, ldb, pstride = b.gep(x_img, [c0], inbounds=True, name="b.src"), HWo, nr
            elif pointwise:  # packed panels
                b_src, ldb, pstride = packed, nr, K * nr
            else:            # im2col rows padded to whole panels
                b_src, ldb, pstride = colbuf, ldp, nr
            m0 = b.mul(mb, i64(mbs), name="m0")
            m1 = _smin(b, b.add(m0, i64(mbs)), i64(cog), "m1")
            a_ptr = b.gep(Wt, [b.mul(gi, i64(cog * K))], inbounds=True, name="a")
            if direct:
                row0 = b.add(b.mul(n_i, i64(cout)), b.mul(gi, i64(cog)), name="row0")
                c_ptr = b.gep(Y, [b.add(b.mul(row0, i64(HWo)), c0)], inbounds=True, name="c")
                ldc = i64(HWo)
            else:
                c_ptr, ldc = cbuf, i64(nb)
            bptr = b.gep(kb.ptr(bias), [b.mul(gi, i64(cog))], inbounds=True, name="bias.g") \
                if bias is not None else null
            b.call(gemm_fn, [a_ptr, i64(K), b_src, i64(ldb), i64(pstride), i64(K), ncur, c_ptr,
                             ldc, m0, m1, bptr,
                             const(ir.IntType(1), bias is not None)])
            if not direct:
                _conv_copy_out(kb, out, cbuf, nb, n_i, gi, cog, m0, m1, c0, ncur, Wo, nsp)
    b.ret_void()


def _conv_copy_out(kb: KernelBuilder, out, cbuf, ld, n_i, gi, cog, m0, m1, c0, ncur, Wo, nsp):
    """The chunk's GEMM result (rows m0..m1 of cbuf) through the fused epilogue, one output
    row segment at a time with vectors along the last axis."""
    b = kb.b
    c1 = b.add(c0, ncur, name="c1")
    oy0 = b.udiv(c0, i64(Wo), name="oy0")
    oy1 = b.add(b.udiv(b.sub(c1, i64(1)), i64(Wo)), i64(1), name="oy1")
    with kb.loop(m0, m1, name="co") as co:
        chan = b.add(b.mul(gi, i64(cog)), co, name="chan")
        crow = b.gep(cbuf, [b.mul(co, i64(ld))], inbounds=True, name="crow")
        with kb.loop(oy0, oy1, name="oy") as oy:
            rs = b.mul(oy, i64(Wo), name="rs")
            xs_ = b.sub(_smax(b, c0, rs, "seg.s"), rs, name="xs")
            xe = b.sub(_smin(b, c1, b.add(rs, i64(Wo)), "seg.e"), rs, name="xe")
            src = b.gep(crow, [b.sub(rs, c0)], name="src")

            def put(ox, lanes):
                v = _vload(kb, src, ox, lanes, "y")
                sp = [oy, ox] if nsp == 2 else [ox]
                _store_result(kb, out, [n_i, chan] + sp, v)

            _vec_loop(kb, xs_, xe, put, "ox")


# ---- the shared runtime-size GEMM --------------------------------------------------------

OPQ = OPAQUE_PTR
GEMM_KC = 256  # K block: a KC x NR panel of B stays in L1 across the row tiles


def _shared_gemm(kb: KernelBuilder):
    """(gemm, pack, cfg): functions emitted once per module and called by every GEMM conv.

        void slimc_nn_gemm(float* A, i64 lda, float* B, i64 ldb, i64 pstride, i64 K, i64 N,
                           float* C, i64 ldc, i64 m0, i64 m1, float* bias, i1 has_bias)
            rows [m0, m1) of C = A[:, :K] @ B (+ bias[row]). B in panels of NR columns: panel
            p starts at B + p*pstride, its rows ldb apart -- packed (ldb = NR, pstride = K*NR)
            or row-major with the columns padded to a multiple of NR (ldb, pstride = NR).
        void slimc_nn_pack(float* B, i64 ldb, i64 K, i64 N, float* Bp)
            Bp[p][k][0:NR] = B[k, p*NR : p*NR+NR], zero past N.

    N and K are run-time values, so one copy serves every convolution (gemm.py specializes on
    them, which costs a compile per shape). Register tile MR x NR and block sizes from gemm.py's
    config; loop order KC block, MC block of rows (in L2), B panel (in L1), row tile. A is read
    in place (weights rows, K apart), not packed."""
    m = kb.module
    cfg = gemm_kernels.gemm_config(kb.target)
    gemm = m.globals.get("slimc_nn_gemm")
    if gemm is None:
        use_fma = kb.target.has_fma or kb.target.arch == "aarch64"
        ukrs = {r: _emit_ukr(m, cfg, r, use_fma) for r in range(1, cfg.mr + 1)}
        gemm = _emit_gemm_driver(m, cfg, ukrs)
        _emit_pack(m, cfg)
        _emit_im2col(m)
    return gemm, m.globals["slimc_nn_pack"], cfg


def _fn(m: ir.Module, name: str, args, names) -> tuple[ir.Function, ir.IRBuilder]:
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), args), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    for a, n in zip(fn.args, names):
        a.name = n
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _intrinsic(m: ir.Module, name: str, ret, args) -> ir.Function:
    fn = m.globals.get(name)
    return fn if fn is not None else ir.Function(m, ir.FunctionType(ret, args), name=name)


def _lane_mask(b: ir.IRBuilder, vw: int, start, limit, name: str):
    """<vw x i1>: lane j is (start + j < limit)."""
    ids = ir.Constant(ir.VectorType(I64, vw), list(range(vw)))
    pos = b.add(splat(b, start, vw, name + ".s"), ids, name=name + ".pos")
    return b.icmp_signed("<", pos, splat(b, limit, vw, name + ".l"), name=name)


def _emit_ukr(m: ir.Module, cfg, r: int, use_fma: bool) -> ir.Function:
    """C[0:r, 0:ncols] (+)= A[0:r, 0:kc] @ B[0:kc, 0:NR] (rows ldb apart; columns past ncols
    must be readable): r x NV vector accumulators, C stores masked past ncols."""
    vw, nv = cfg.vw, cfg.nv
    NR = vw * nv
    vt = ir.VectorType(F32, vw)
    I1 = ir.IntType(1)
    fn, b = _fn(m, f"slimc_nn_ukr{r}", [OPQ, I64, OPQ, I64, I64, OPQ, I64, I64, I1, I1, OPQ],
                ["A", "lda", "B", "ldb", "kc", "C", "ldc", "ncols", "acc_in", "has_bias", "bias"])
    A, lda, B, ldb, kc, C, ldc, ncols, acc_in, has_bias, bias = fn.args
    for a in (A, B, C):
        a.add_attribute("noalias")
    fma = _intrinsic(m, f"llvm.fma.v{vw}f32", vt, [vt, vt, vt])
    accs = [[b.alloca(vt, name=f"acc{i}.{v}") for v in range(nv)] for i in range(r)]
    arow = [A if i == 0 else b.gep(A, [b.mul(lda, i64(i))], source_etype=F32, name=f"a.row{i}")
            for i in range(r)]
    crow = [C if i == 0 else b.gep(C, [b.mul(ldc, i64(i))], source_etype=F32, name=f"c.row{i}")
            for i in range(r)]
    full = b.icmp_signed("==", ncols, i64(NR), name="full")
    masks = [_lane_mask(b, vw, i64(v * vw), ncols, f"mask{v}") for v in range(nv)]

    def cptr(i, v):
        return b.gep(crow[i], [i64(v * vw)], source_etype=F32, name=f"c{i}.{v}")

    with b.if_else(acc_in) as (load_c, fresh):
        with load_c:
            for i in range(r):
                for v in range(nv):
                    x = masked_load_vector(b, cptr(i, v), vt, masks[v],
                               name=f"c{i}.{v}.in")
                    b.store(x, accs[i][v])
        with fresh:
            with b.if_else(has_bias) as (with_bias, no_bias):
                with with_bias:
                    for i in range(r):
                        bv = b.load(b.gep(bias, [i64(i)], source_etype=F32, name=f"bias{i}.p"),
                                    typ=F32, name=f"bias{i}")
                        sv = splat(b, bv, vw, f"bias{i}")
                        for v in range(nv):
                            b.store(sv, accs[i][v])
                with no_bias:
                    for i in range(r):
                        for v in range(nv):
                            b.store(ir.Constant(vt, None), accs[i][v])
    with for_range(b, 0, kc, 1, "k") as k:
        brow = b.gep(B, [b.mul(k, ldb)], source_etype=F32, name="b.k")
        bvs = [b.load(b.gep(brow, [i64(v * vw)], source_etype=F32, name=f"b{v}.p"), typ=vt,
                      align=4, name=f"b{v}") for v in range(nv)]
        for i in range(r):
            a = b.load(b.gep(arow[i], [k], source_etype=F32, name=f"a{i}.p"), typ=F32,
                       name=f"a{i}")
            av = splat(b, a, vw, f"a{i}")
            for v in range(nv):
                acc = b.load(accs[i][v])
                if use_fma:
                    nxt = b.call(fma, [av, bvs[v], acc], name=f"acc{i}.{v}")
                else:
                    nxt = b.fadd(acc, b.fmul(av, bvs[v], flags=("contract",)),
                                 flags=("contract",), name=f"acc{i}.{v}")
                b.store(nxt, accs[i][v])
    with b.if_else(full) as (whole, part):
        with whole:
            for i in range(r):
                for v in range(nv):
                    b.store(b.load(accs[i][v]), cptr(i, v), align=4)
        with part:
            for i in range(r):
                for v in range(nv):
                    masked_store_vector(b, b.load(accs[i][v]), cptr(i, v), masks[v])
    b.ret_void()
    return fn


def _emit_gemm_driver(m: ir.Module, cfg, ukrs) -> ir.Function:
    vw, nv, mr = cfg.vw, cfg.nv, cfg.mr
    NR = vw * nv
    I1 = ir.IntType(1)
    fn, b = _fn(m, "slimc_nn_gemm",
                [OPQ, I64, OPQ, I64, I64, I64, I64, OPQ, I64, I64, I64, OPQ, I1],
                ["A", "lda", "B", "ldb", "pstride", "K", "N", "C", "ldc", "m0", "m1", "bias",
                 "has_bias"])
    A, lda, B, ldb, pstride, K, N, C, ldc, m0, m1, bias, has_bias = fn.args
    npan = b.udiv(b.add(N, i64(NR - 1)), i64(NR), name="npan")
    mc = cfg.mc
    with for_range(b, 0, K, GEMM_KC, "pc") as pc:
        kc = _smin(b, b.sub(K, pc), i64(GEMM_KC), "kc")
        acc_in = b.icmp_signed("!=", pc, i64(0), name="acc.in")
        use_bias = b.and_(has_bias, b.not_(acc_in), name="use.bias")
        apc = b.gep(A, [pc], source_etype=F32, name="a.pc")
        with for_range(b, m0, m1, mc, "ic") as ic:  # MC x KC block of A: L2-resident
            ic_end = _smin(b, b.add(ic, i64(mc)), m1, "ic.end")
            rows = b.sub(ic_end, ic, name="rows")
            tiles_end = b.add(ic, b.mul(b.udiv(rows, i64(mr)), i64(mr)), name="tiles.end")
            rem = b.sub(ic_end, tiles_end, name="rows.left")
            with for_range(b, 0, npan, 1, "p") as p:  # KC x NR panel of B: L1-resident
                col = b.mul(p, i64(NR), name="col")
                ncols = _smin(b, b.sub(N, col), i64(NR), "ncols")
                bpan = b.gep(B, [b.add(b.mul(p, pstride), b.mul(pc, ldb))], source_etype=F32,
                             name="b.pan")
                cpan = b.gep(C, [col], source_etype=F32, name="c.pan")

                def call(ukr, i):
                    a = b.gep(apc, [b.mul(i, lda)], source_etype=F32, name="a.tile")
                    c = b.gep(cpan, [b.mul(i, ldc)], source_etype=F32, name="c.tile")
                    bi = b.gep(bias, [i], source_etype=F32, name="bias.tile")
                    b.call(ukr, [a, lda, bpan, ldb, kc, c, ldc, ncols, acc_in, use_bias, bi])

                with for_range(b, ic, tiles_end, mr, "i") as i:
                    call(ukrs[mr], i)
                done = fn.append_basic_block("rows.done")
                sw = b.switch(rem, done)
                for r in range(1, mr):
                    blk = fn.append_basic_block(f"rows.{r}")
                    sw.add_case(i64(r), blk)
                    b.position_at_end(blk)
                    call(ukrs[r], tiles_end)
                    b.branch(done)
                b.position_at_end(done)
    b.ret_void()
    return fn


def _emit_pack(m: ir.Module, cfg) -> ir.Function:
    vw, nv = cfg.vw, cfg.nv
    NR = vw * nv
    vt = ir.VectorType(F32, vw)
    I1 = ir.IntType(1)
    fn, b = _fn(m, "slimc_nn_pack", [OPQ, I64, I64, I64, OPQ], ["B", "ldb", "K", "N", "Bp"])
    B, ldb, K, N, Bp = fn.args
    B.add_attribute("noalias")
    Bp.add_attribute("noalias")
    npan = b.udiv(b.add(N, i64(NR - 1)), i64(NR), name="npan")
    with for_range(b, 0, npan, 1, "p") as p:
        col = b.mul(p, i64(NR), name="col")
        full = b.icmp_signed(">=", b.sub(N, col), i64(NR), name="full")
        masks = [_lane_mask(b, vw, b.add(col, i64(v * vw)), N, f"m{v}") for v in range(nv)]
        src0 = b.gep(B, [col], source_etype=F32, name="src.pan")
        dst0 = b.gep(Bp, [b.mul(p, b.mul(K, i64(NR)))], source_etype=F32, name="dst.pan")
        with b.if_else(full) as (whole, part):
            for masked, blk in ((False, whole), (True, part)):
                with blk:
                    with for_range(b, 0, K, 1, "k" + ("m" if masked else "")) as k:
                        src = b.gep(src0, [b.mul(k, ldb)], source_etype=F32, name="src")
                        dst = b.gep(dst0, [b.mul(k, i64(NR))], source_etype=F32, name="dst")
                        for v in range(nv):
                            sp = b.gep(src, [i64(v * vw)], source_etype=F32, name=f"s{v}")
                            if masked:
                                x = masked_load_vector(b, sp, vt, masks[v],
                                           name=f"x{v}")
                            else:
                                x = b.load(sp, typ=vt, align=4, name=f"x{v}")
                            b.store(x, b.gep(dst, [i64(v * vw)], source_etype=F32), align=4)
    b.ret_void()
    return fn


def _emit_im2col(m: ir.Module) -> ir.Function:
    """void slimc_nn_im2col(float* x, float* cols, i64 c0, i64 ncols, i64 ld, i64 cin, i64 H,
    i64 W, i64 Wo, i64 kh, i64 kw, i64 sh, i64 sw, i64 dh, i64 dw, i64 pt, i64 pl):
    cols[k, c - c0] = x[ci, oy*sh + ky*dh - pt, ox*sw + kx*dw - pl] (0 in the padding) for
    k = (ci, ky, kx) and output columns c = oy*Wo + ox in [c0, c0 + ncols), and zeros in the
    padding columns [ncols, ld). Each row segment is a zero run, a copy (contiguous when
    sw == 1) and a zero run: no test per element."""
    names = ["x", "cols", "c0", "ncols", "ld", "cin", "H", "W", "Wo", "kh", "kw", "sh", "sw", "dh",
             "dw", "pt", "pl"]
    fn, b = _fn(m, "slimc_nn_im2col", [OPQ, OPQ] + [I64] * 15, names)
    # Inlined into a conv with constant geometry, LLVM unrolls every loop into one block of
    # ~200 memcpys per call site (AArch64's scheduler then took 7-12 s on a small CNN).
    fn.attributes.add("noinline")
    (x, cols, c0, ncols, ld, cin, H, W, Wo, kh, kw, sh, sw, dh, dw, pt, pl) = fn.args
    kpad = b.mul(b.mul(cin, kh), kw, name="K")
    x.add_attribute("noalias")
    cols.add_attribute("noalias")
    zero = const(F32, 0.0)
    c1 = b.add(c0, ncols, name="c1")
    oy0 = b.udiv(c0, Wo, name="oy0")
    oy1 = b.add(b.udiv(b.sub(c1, i64(1)), Wo), i64(1), name="oy1")
    unit = b.icmp_signed("==", sw, i64(1), name="unit.stride")
    two = b.icmp_signed("==", sw, i64(2), name="stride.2")
    plane = b.mul(H, W, name="plane")
    with for_range(b, 0, cin, 1, "ci") as ci:
        x_c = b.gep(x, [b.mul(ci, plane)], source_etype=F32, name="x.c")
        with for_range(b, 0, kh, 1, "ky") as ky:
            with for_range(b, 0, kw, 1, "kx") as kx:
                k = b.add(b.mul(b.add(b.mul(ci, kh), ky), kw), kx, name="k")
                dst_k = b.gep(cols, [b.mul(k, ld)], source_etype=F32, name="dst.k")
                xshift = b.sub(b.mul(kx, dw), pl, name="xshift")
                # outputs whose tap kx lands inside the row: [lo, hi)
                a0 = b.sub(i64(0), xshift, name="lo.num")
                lo = b.select(b.icmp_signed(">", a0, i64(0)),
                              b.sdiv(b.add(a0, b.sub(sw, i64(1))), sw), i64(0), name="lo")
                h0 = b.sub(b.sub(W, i64(1)), xshift, name="hi.num")
                hi = b.select(b.icmp_signed("<", h0, i64(0)), i64(0),
                              _smin(b, b.add(b.sdiv(h0, sw), i64(1)), Wo, "hi0"), name="hi")
                with for_range(b, oy0, oy1, 1, "oy") as oy:
                    rs = b.mul(oy, Wo, name="rs")
                    xs_ = b.sub(_smax(b, c0, rs, "seg.s"), rs, name="xs")
                    xe = b.sub(_smin(b, c1, b.add(rs, Wo), "seg.e"), rs, name="xe")
                    iy = b.add(b.sub(b.mul(oy, sh), pt), b.mul(ky, dh), name="iy")
                    ok = b.and_(b.icmp_signed(">=", iy, i64(0)), b.icmp_signed("<", iy, H),
                                name="row.ok")
                    a = b.select(ok, _smin(b, _smax(b, lo, xs_, "a0"), xe, "a1"), xe, name="a")
                    e_ = b.select(ok, _smin(b, _smax(b, hi, a, "e0"), xe, "e1"), xe, name="e")
                    dst = b.gep(dst_k, [b.sub(rs, c0)], source_etype=F32, name="dst.row")
                    src = b.gep(x_c, [b.add(b.mul(iy, W), xshift)], source_etype=F32,
                                name="src.row")
                    with for_range(b, xs_, a, 1, "zl") as ox:
                        b.store(zero, b.gep(dst, [ox], source_etype=F32))
                    def copy(stride, tag):
                        with for_range(b, a, e_, 1, tag) as ox:
                            at = ox if stride == 1 else b.mul(ox, stride)
                            v = b.load(b.gep(src, [at], source_etype=F32), typ=F32, name="x")
                            b.store(v, b.gep(dst, [ox], source_etype=F32))

                    # constant strides 1 and 2 vectorize (2 as an interleaved load)
                    with b.if_else(unit) as (contiguous, strided):
                        with contiguous:
                            copy(1, "cp")
                        with strided:
                            with b.if_else(two) as (by2, other):
                                with by2:
                                    copy(i64(2), "cp2")
                                with other:
                                    copy(sw, "cps")
                    with for_range(b, e_, xe, 1, "zr") as ox:
                        b.store(zero, b.gep(dst, [ox], source_etype=F32))
    with for_range(b, 0, kpad, 1, "kp") as k:  # columns [ncols, ld): zeros the GEMM may read
        row = b.gep(cols, [b.mul(k, ld)], source_etype=F32, name="pad.row")
        with for_range(b, ncols, ld, 1, "jp") as j:
            b.store(zero, b.gep(row, [j], source_etype=F32))
    b.ret_void()
    return fn


# ----------------------------------------------------------------------------------------------
# Rows and spans: softmax family, normalizations, global pooling
# ----------------------------------------------------------------------------------------------


def _entry_alloca(kb: KernelBuilder, ty: ir.Type, name: str) -> ir.Value:
    """An alloca in the entry block (so a loop body does not grow the stack)."""
    b = kb.b
    here = b.block
    b.position_at_start(kb.fn.entry_basic_block)
    slot = b.alloca(ty, name=name)
    b.position_at_end(here)
    return slot


class _Axis:
    """Passes over a line of L elements, element l at `value(l, lanes)`.

    lanes=None: one contiguous line, vectors along l and horizontal reductions at the end;
    lanes=n: n lines side by side (contiguous across them), l runs scalar and every statistic
    is a vector of n. `bcast` turns a statistic into the shape of an element."""

    def __init__(self, kb: KernelBuilder, e: Emitter, acc_t: ir.Type, L: int, lanes=None):
        self.kb, self.e, self.acc_t, self.L, self.lanes = kb, e, acc_t, L, lanes

    def _comb(self, op, a, v):
        if op == "sum":
            return self.e.add(a, v)
        if op == "max":
            return self.e.max(a, v)
        return op(a, v)

    def reduce(self, value: Callable, init, op, name: str = "acc"):
        kb, b = self.kb, self.kb.b
        if self.lanes is not None:
            t = ir.VectorType(self.acc_t, self.lanes) if self.lanes > 1 else self.acc_t
            acc = _entry_alloca(kb, t, name)
            b.store(const(t, init), acc)
            with kb.loop(0, self.L, name=name + ".l") as l:
                b.store(self._comb(op, b.load(acc), value(l, self.lanes)), acc)
            return b.load(acc, name=name)
        W = kb.vector_width
        vt = ir.VectorType(self.acc_t, W)
        vacc = _entry_alloca(kb, vt, name + ".v")
        sacc = _entry_alloca(kb, self.acc_t, name + ".s")
        b.store(const(vt, init), vacc)
        b.store(const(self.acc_t, init), sacc)

        def body(l, n):
            slot = vacc if n > 1 else sacc
            b.store(self._comb(op, b.load(slot), value(l, n)), slot)

        _vec_loop(kb, 0, self.L, body, name)
        if op in ("sum", "max"):
            h = _hreduce(self.e, b.load(vacc), op)
            return self._comb(op, h, b.load(sacc))
        raise ValueError(op)

    def foreach(self, body: Callable, name: str = "out"):
        kb = self.kb
        if self.lanes is not None:
            with kb.loop(0, self.L, name=name + ".l") as l:
                body(l, self.lanes)
            return
        _vec_loop(kb, 0, self.L, body, name)

    def bcast(self, s, lanes):
        return splat(self.kb.b, s, lanes) if self.lanes is None else s


class _Span:
    """The trailing dims [first, rank) of a result as one flat run (when the fused epilogue
    allows flat indices; otherwise element by element with full indices)."""

    def __init__(self, kb: KernelBuilder, anchor, produced, first: int):
        shape = kb.shape(produced)
        self.kb = kb
        self.dims = list(shape[first:])
        self.n = _numel(self.dims)
        self.flat = list(kb.outputs) == [produced] or _flat_epilogue_ok(kb, anchor, produced, first)

    def index(self, prefix, f):
        if not self.dims:
            return list(prefix)
        if self.flat:
            return list(prefix) + _flat_index(self.dims, f)
        return list(prefix) + self.kb.delinear(f, self.dims)

    @property
    def lanes(self):
        return None if self.flat else 1


def _line_loads(kb: KernelBuilder, e: Emitter, X, base, stride: int, dt, adt):
    """value(l, lanes) = x[base + l*stride (+ lane)] converted to the compute type; with
    stride > 1 the lanes run across lines (the contiguous inner axis)."""
    b = kb.b

    def value(l, lanes):
        off = b.add(base, kb._ir(kb.imul(l, stride)), name="off") if stride != 1 else \
            b.add(base, kb._ir(l), name="off")
        return _cvt(e, _vload(kb, X, off, lanes, "x"), dt, adt)

    return value


def _axis_layout(shape, axis):
    axis %= len(shape)
    return _numel(shape[:axis]), shape[axis], _numel(shape[axis + 1:]), axis


@generator("softmax", "log_softmax", "hardmax", "lp_normalization", epilogue=True)
def softmax(kb: KernelBuilder, node) -> None:
    """Along one axis, as [outer, L, inner]: inner == 1 is one vectorized row per work item;
    otherwise each work item is one outer index and vectors run across the inner lines."""
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    kind = node.op
    attrs = kb.attrs(node)
    shape = kb.shape(x)
    name = llvm_name(out.name)
    if not shape:
        raise UnsupportedError(f"{kind} of a 0-d tensor", node=node.label, op=kind)
    outer, L, inner, axis = _axis_layout(shape, int(attrs["axis"]))
    dt = x.type.dtype
    adt = _acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = _emitter(kb, adt, name)
    X = kb.ptr(x)
    kb.parallel_extent = outer
    kb.cost = _numel(shape) * (20 if kind in ("softmax", "log_softmax") else 4)
    if _numel(shape) == 0:
        b.ret_void()
        return
    span = _Span(kb, node, out, axis + 1) if inner > 1 else None
    outer_shape = list(shape[:axis])

    # softmax keeps exp(x - max) in its output between passes when it stores plainly
    keep_exp = list(kb.outputs) == [out] and dt == adt
    Y = kb.ptr(out) if keep_exp else None

    def line(o_idx, base, ax: _Axis, store):
        value = _line_loads(kb, e, X, base, inner, dt, adt)

        def offset(l):
            return b.add(base, kb._ir(kb.imul(l, inner)), name="yoff")

        if kind == "hardmax":
            return _hardmax_line(kb, e, ax, value, store, acc_t)
        if kind == "lp_normalization":
            p = int(attrs["p"])
            if p == 1:
                norm = ax.reduce(lambda l, n: e.intrinsic("fabs", [value(l, n)]), 0.0, "sum", "l1")
            else:
                norm = e.intrinsic("sqrt", [ax.reduce(lambda l, n: _sq(e, value(l, n)), 0.0, "sum",
                                                      "l2")])

            def lp_out(l, n):
                nv = ax.bcast(norm, n)
                zero = b.fcmp_ordered("==", nv, const(nv.type, 0.0))
                store(l, n, b.select(zero, const(nv.type, 0.0), e.fdiv(value(l, n), nv)))

            ax.foreach(lp_out)
            return
        # Halves round after every step, as the reference computes in the input's type
        # (numpy sums halves in float32 and rounds the sum once).
        rnd = (lambda v: _round_to(e, v, dt)) if dt == dtypes.f16 else (lambda v: v)
        m = ax.reduce(value, -math.inf, "max", "max")
        finite = b.fcmp_ordered("<", e.intrinsic("fabs", [m]), const(m.type, math.inf))
        m = b.select(finite, m, const(m.type, 0.0), name="shift")

        def shifted(l, n):
            return rnd(e.sub(value(l, n), ax.bcast(m, n)))

        if kind == "softmax" and keep_exp:
            # exp once: kept in the output between the passes
            def exp_kept(l, n):
                v = rnd(e.exp(shifted(l, n)))
                _vstore(kb, v, Y, offset(l), "e")
                return v

            s = rnd(ax.reduce(exp_kept, 0.0, "sum", "sum"))
            ax.foreach(lambda l, n: store(l, n, e.fdiv(_vload(kb, Y, offset(l), n, "e"),
                                                       ax.bcast(s, n))))
            return
        s = rnd(ax.reduce(lambda l, n: rnd(e.exp(shifted(l, n))), 0.0, "sum", "sum"))
        if kind == "softmax":
            ax.foreach(lambda l, n: store(l, n, e.fdiv(rnd(e.exp(shifted(l, n))),
                                                       ax.bcast(s, n))))
        else:
            ls = rnd(e.log(s))
            ax.foreach(lambda l, n: store(l, n, e.sub(shifted(l, n), ax.bcast(ls, n))))

    with kb.loop(kb.begin, kb.end, name="row") as o:
        o_idx = kb.delinear(o, outer_shape) if outer_shape else []
        base = b.mul(o, i64(L * inner), name="base")
        if inner == 1:
            def store(l, n, v):
                _store_result(kb, out, o_idx + [l], _cvt(e, v, adt, dt))

            line(o_idx, base, _Axis(kb, e, acc_t, L), store)
        else:
            def block(j, n):
                def store(l, nn, v):
                    _store_result(kb, out, span.index(o_idx + [l], j), _cvt(e, v, adt, dt))

                line(o_idx, b.add(base, j, name="col"), _Axis(kb, e, acc_t, L, n), store)

            _vec_loop(kb, 0, inner, block, "j", lanes=None if span.flat else 1)
    b.ret_void()


def _round_to(e: Emitter, v, dt):
    """v (computed in f32) rounded to `dt` and back: per-operation rounding of halves."""
    return _convert(e, _convert(e, v, dtypes.f32, dt), dt, dtypes.f32)


def _sq(e: Emitter, v):
    return e.mul(v, v)


def _hardmax_line(kb: KernelBuilder, e: Emitter, ax: _Axis, value, store, acc_t) -> None:
    """1 at the first maximum (np.argmax: a NaN counts as the maximum), 0 elsewhere."""
    b = kb.b
    lanes = ax.lanes or 1
    vt = ir.VectorType(acc_t, lanes) if lanes > 1 else acc_t
    it = ir.VectorType(I64, lanes) if lanes > 1 else I64
    best = _entry_alloca(kb, vt, "hm.best")
    best_i = _entry_alloca(kb, it, "hm.idx")
    b.store(value(0, lanes), best)
    b.store(const(it, 0), best_i)
    with kb.loop(1, ax.L, name="hm.l") as l:
        v = value(l, lanes)
        cur = b.load(best)
        v_nan = b.fcmp_unordered("uno", v, v)
        cur_nan = b.fcmp_unordered("uno", cur, cur)
        take = b.or_(b.and_(b.fcmp_ordered(">", v, cur), b.not_(cur_nan)),
                     b.and_(v_nan, b.not_(cur_nan)), name="hm.take")
        b.store(b.select(take, v, cur), best)
        b.store(b.select(take, splat(b, l, lanes), b.load(best_i)), best_i)
    bi = b.load(best_i, name="hm.argmax")

    def put(l, n):
        if ax.lanes is None:  # one contiguous line: vector of positions l..l+n
            pos = l if n == 1 else b.add(splat(b, l, n),
                                         ir.Constant(ir.VectorType(I64, n), list(range(n))))
            hit = b.icmp_signed("==", pos, splat(b, bi, n))
        else:
            hit = b.icmp_signed("==", splat(b, l, n), bi)
        t = ir.VectorType(acc_t, n) if n > 1 else acc_t
        store(l, n, b.select(hit, const(t, 1.0), const(t, 0.0)))

    ax.foreach(put)


@generator("global_avg_pool", "global_max_pool", "global_lp_pool", epilogue=True)
def global_pool(kb: KernelBuilder, node) -> None:
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    kind = node.op
    shape = kb.shape(x)
    name = llvm_name(out.name)
    dt = x.type.dtype
    adt = _acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = _emitter(kb, adt, name)
    X = kb.ptr(x)
    plane = _numel(shape[2:])
    kb.parallel_extent = shape[0] * shape[1]
    kb.cost = _numel(shape)
    p = int(kb.attrs(node).get("p", 2)) if kind == "global_lp_pool" else 2
    zeros = [0] * (len(shape) - 2)
    with kb.loop(kb.begin, kb.end, name="nc") as nc:
        ax = _Axis(kb, e, acc_t, plane)
        value = _line_loads(kb, e, X, b.mul(nc, i64(plane), name="base"), 1, dt, adt)
        if kind == "global_max_pool":
            r = ax.reduce(value, -math.inf, "max", "max")
        elif kind == "global_avg_pool":
            r = e.fdiv(ax.reduce(value, 0.0, "sum", "sum"), const(acc_t, float(plane)))
        else:
            def powed(l, n):
                a = e.intrinsic("fabs", [value(l, n)])
                return a if p == 1 else _sq(e, a) if p == 2 else \
                    e.intrinsic("pow", [a, const(a.type, float(p))])

            r = ax.reduce(powed, 0.0, "sum", "sum")
            r = r if p == 1 else e.intrinsic("sqrt", [r]) if p == 2 else \
                e.intrinsic("pow", [r, const(acc_t, 1.0 / p)])
        _store_result(kb, out, [kb.idiv(nc, shape[1]), kb.imod(nc, shape[1])] + zeros,
                        _cvt(e, r, adt, dt))
    b.ret_void()


def _mean_inv(kb: KernelBuilder, e: Emitter, ax: _Axis, value, n: int, eps: float, acc_t):
    """Two passes, as the reference: mean, then mean((x - mean)^2); returns mean, 1/sqrt(var+eps)."""
    b = kb.b
    mean = e.fdiv(ax.reduce(value, 0.0, "sum", "sum"), const(acc_t, float(n)))
    var = e.fdiv(ax.reduce(lambda l, k: _sq(e, e.sub(value(l, k), splat(b, mean, k))), 0.0, "sum",
                           "ssd"), const(acc_t, float(n)))
    inv = e.fdiv(const(acc_t, 1.0), e.intrinsic("sqrt", [e.add(var, const(acc_t, eps))]))
    return mean, inv


def _chan_param(kb: KernelBuilder, e: Emitter, v, index, adt):
    """Scalar v[index] in the compute type (a per-channel parameter)."""
    b = kb.b
    x = b.load(b.gep(kb.ptr(v), [kb._ir(index)], inbounds=True), name=llvm_name(v.name))
    return _cvt(e, x, v.type.dtype, adt)


@generator("batch_norm", "instance_norm", epilogue=True)
def channel_norm(kb: KernelBuilder, node) -> None:
    """Per (n, c) work item over the spatial span: batch_norm with its running statistics,
    instance_norm with the span's own (two passes); then a per-channel affine transform."""
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    kind = node.op
    attrs = kb.attrs(node)
    shape = kb.shape(x)
    name = llvm_name(out.name)
    dt = x.type.dtype
    adt = _acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = _emitter(kb, adt, name)
    X = kb.ptr(x)
    N, C = shape[0], shape[1]
    span = _Span(kb, node, out, 2)
    plane = span.n
    eps = float(attrs["epsilon"])
    kb.parallel_extent = N * C
    kb.cost = _numel(shape) * (2 if kind == "batch_norm" else 4)
    with kb.loop(kb.begin, kb.end, name="nc") as nc:
        c = b.urem(nc, i64(C), name="c")
        n_i = b.udiv(nc, i64(C), name="n")
        base = b.mul(nc, i64(plane), name="base")
        value = _line_loads(kb, e, X, base, 1, dt, adt)
        scale = _chan_param(kb, e, node.inputs[1], c, adt)
        shift = _chan_param(kb, e, node.inputs[2], c, adt)
        if kind == "batch_norm":
            mean = _chan_param(kb, e, node.inputs[3], c, adt)
            var = _chan_param(kb, e, node.inputs[4], c, adt)
            inv = e.fdiv(scale, e.intrinsic("sqrt", [e.add(var, const(acc_t, eps))]))

            def y(l, k):  # (x - mean) * inv + bias
                return e.add(e.mul(e.sub(value(l, k), splat(b, mean, k)), splat(b, inv, k)),
                             splat(b, shift, k))
        else:
            ax = _Axis(kb, e, acc_t, plane)
            mean, inv = _mean_inv(kb, e, ax, value, plane, eps, acc_t)

            def y(l, k):  # (x - mean) * inv * scale + bias
                d = e.mul(e.sub(value(l, k), splat(b, mean, k)), splat(b, inv, k))
                return e.add(e.mul(d, splat(b, scale, k)), splat(b, shift, k))

        def put(l, k):
            _store_result(kb, out, span.index([n_i, c], l), _cvt(e, y(l, k), adt, dt))

        _vec_loop(kb, 0, plane, put, "y", lanes=None if span.flat else 1)
    b.ret_void()


@generator("group_norm", epilogue=True)
def group_norm(kb: KernelBuilder, node) -> None:
    """Per (n, group): statistics over the group's channels and space, then per channel."""
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    attrs = kb.attrs(node)
    shape = kb.shape(x)
    name = llvm_name(out.name)
    dt = x.type.dtype
    adt = _acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = _emitter(kb, adt, name)
    X = kb.ptr(x)
    N, C = shape[0], shape[1]
    G = int(attrs["num_groups"])
    cpg = C // G
    span = _Span(kb, node, out, 2)
    plane = span.n
    eps = float(attrs["epsilon"])
    kb.parallel_extent = N * G
    kb.cost = _numel(shape) * 4
    with kb.loop(kb.begin, kb.end, name="ng") as ng:
        n_i = b.udiv(ng, i64(G), name="n")
        gi = b.urem(ng, i64(G), name="g")
        base = b.mul(ng, i64(cpg * plane), name="base")
        value = _line_loads(kb, e, X, base, 1, dt, adt)
        mean, inv = _mean_inv(kb, e, _Axis(kb, e, acc_t, cpg * plane), value, cpg * plane, eps,
                              acc_t)
        with kb.loop(0, cpg, name="cg") as cg:
            c = b.add(b.mul(gi, i64(cpg)), cg, name="c")
            scale = _chan_param(kb, e, node.inputs[1], c, adt)
            shift = _chan_param(kb, e, node.inputs[2], c, adt)
            cbase = b.mul(cg, i64(plane), name="cbase")

            def put(l, k):
                d = e.mul(e.sub(value(b.add(cbase, l), k), splat(b, mean, k)), splat(b, inv, k))
                yv = e.add(e.mul(d, splat(b, scale, k)), splat(b, shift, k))
                _store_result(kb, out, span.index([n_i, c], l), _cvt(e, yv, adt, dt))

            _vec_loop(kb, 0, plane, put, "y", lanes=None if span.flat else 1)
    b.ret_void()


def _param_loader(kb: KernelBuilder, e: Emitter, v, dims, adt):
    """value(f, lanes, full_index) of a layer_norm parameter broadcast to the normalized dims
    `dims`: flat offset f when it spans them all, a splat when it is one element, else by index."""
    b = kb.b
    if v is None:
        return None, True
    s = list(kb.shape(v))
    while s and s[0] == 1 and len(s) > len(dims):
        s = s[1:]
    s = [1] * (len(dims) - len(s)) + s
    P = kb.ptr(v)
    if s == list(dims):
        return (lambda f, n, idx: _cvt(e, _vload(kb, P, f, n, "p"), v.type.dtype, adt)), True
    if _numel(s) == 1:
        return (lambda f, n, idx: splat(b, _cvt(e, b.load(P), v.type.dtype, adt), n)), True

    def by_index(f, n, idx):
        off = kb.linear([0 if d == 1 else i for d, i in zip(s, idx)], s)
        return _cvt(e, _vload(kb, P, off, n, "p"), v.type.dtype, adt)

    return by_index, False


@generator("layer_norm", epilogue=True)
def layer_norm(kb: KernelBuilder, node) -> None:
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    attrs = kb.attrs(node)
    shape = kb.shape(x)
    rank = len(shape)
    axis = int(attrs["axis"]) % rank if rank else 0
    name = llvm_name(out.name)
    dt = x.type.dtype
    adt = _acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = _emitter(kb, adt, name)
    X = kb.ptr(x)
    dims = list(shape[axis:])
    n = _numel(dims)
    rows_shape = list(shape[:axis])
    kb.parallel_extent = _numel(rows_shape)
    kb.cost = _numel(shape) * 4
    scale, s_flat = _param_loader(kb, e, node.inputs[1], dims, adt)
    bias, b_flat = _param_loader(kb, e, node.inputs[2] if len(node.inputs) > 2 else None, dims,
                                 adt)
    span = _Span(kb, node, out, axis)
    flat = span.flat and s_flat and b_flat
    eps = float(attrs["epsilon"])
    with kb.loop(kb.begin, kb.end, name="row") as row:
        prefix = kb.delinear(row, rows_shape) if rows_shape else []
        value = _line_loads(kb, e, X, b.mul(row, i64(n), name="base"), 1, dt, adt)
        mean, inv = _mean_inv(kb, e, _Axis(kb, e, acc_t, n), value, n, eps, acc_t)

        def put(f, k):
            idx = None if flat else kb.delinear(f, dims)
            yv = e.mul(e.mul(e.sub(value(f, k), splat(b, mean, k)), splat(b, inv, k)),
                       scale(f, k, idx))
            if bias is not None:
                yv = e.add(yv, bias(f, k, idx))
            index = span.index(prefix, f) if flat else prefix + idx
            _store_result(kb, out, index, _cvt(e, yv, adt, dt))

        _vec_loop(kb, 0, n, put, "y", lanes=None if flat else 1)
    b.ret_void()


@generator("layer_norm_stats")
def layer_norm_stats(kb: KernelBuilder, node) -> None:
    b = kb.b
    x = node.inputs[0]
    mean_v, inv_v = node.outputs
    attrs = kb.attrs(node)
    shape = kb.shape(x)
    rank = len(shape)
    axis = int(attrs["axis"]) % rank if rank else 0
    dt = x.type.dtype
    adt = _acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = _emitter(kb, adt, llvm_name(mean_v.name))
    n = _numel(shape[axis:])
    rows_shape = list(shape[:axis])
    kb.parallel_extent = _numel(rows_shape)
    kb.cost = _numel(shape) * 3
    odt = mean_v.type.dtype
    with kb.loop(kb.begin, kb.end, name="row") as row:
        prefix = kb.delinear(row, rows_shape) if rows_shape else []
        value = _line_loads(kb, e, kb.ptr(x), b.mul(row, i64(n), name="base"), 1, dt, adt)
        mean, inv = _mean_inv(kb, e, _Axis(kb, e, acc_t, n), value, n, float(attrs["epsilon"]),
                              acc_t)
        index = prefix + [0] * (rank - axis)
        kb.store_value(mean_v, index, _cvt(e, mean, adt, odt))
        kb.store_value(inv_v, index, _cvt(e, inv, adt, odt))
    b.ret_void()


@generator("lrn", epilogue=True)
def lrn(kb: KernelBuilder, node) -> None:
    """y = x / (bias + alpha/size * sum of x^2 over the channel window)^beta, per (n, c) over
    the spatial span (vectors along space, a short loop over the window's channels)."""
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    attrs = kb.attrs(node)
    shape = kb.shape(x)
    name = llvm_name(out.name)
    dt = x.type.dtype
    adt = _acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = _emitter(kb, adt, name)
    X = kb.ptr(x)
    N, C = shape[0], shape[1]
    span = _Span(kb, node, out, 2)
    plane = span.n
    size = int(attrs["size"])
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    kb.parallel_extent = N * C
    kb.cost = _numel(shape) * (size + 20)
    alpha = float(attrs["alpha"]) / size
    with kb.loop(kb.begin, kb.end, name="nc") as nc:
        c = b.urem(nc, i64(C), name="c")
        n_i = b.udiv(nc, i64(C), name="n")
        c_lo = _smax(b, b.sub(c, i64(lo)), i64(0), "c.lo")
        c_hi = _smin(b, b.add(c, i64(hi + 1)), i64(C), "c.hi")
        base = b.mul(nc, i64(plane), name="base")
        nbase = b.mul(n_i, i64(C * plane), name="nbase")

        def put(f, k):
            t = ir.VectorType(acc_t, k) if k > 1 else acc_t
            acc = _entry_alloca(kb, t, "sq")
            b.store(const(t, 0.0), acc)
            with kb.loop(c_lo, c_hi, name="cw") as cw:
                off = b.add(b.add(nbase, b.mul(cw, i64(plane))), kb._ir(f))
                v = _cvt(e, _vload(kb, X, off, k, "xw"), dt, adt)
                b.store(e.add(b.load(acc), _sq(e, v)), acc)
            den = e.add(const(t, float(attrs["bias"])), e.mul(const(t, alpha), b.load(acc)))
            den = e.intrinsic("pow", [den, const(t, float(attrs["beta"]))])
            xv = _cvt(e, _vload(kb, X, b.add(base, kb._ir(f)), k, "x"), dt, adt)
            _store_result(kb, out, span.index([n_i, c], f), _cvt(e, e.fdiv(xv, den), adt, dt))

        _vec_loop(kb, 0, plane, put, "y", lanes=None if span.flat else 1)
    b.ret_void()


@generator("mean_variance_normalization", epilogue=True)
def mvn(kb: KernelBuilder, node) -> None:
    """(x - mean) / (sqrt(max(E[x^2] - mean^2, 0)) + eps) over `axes`, per kept index (the
    reference's one-pass variance). The reduced axes run in nested loops, the last one in
    vectors when it is reduced."""
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    attrs = kb.attrs(node)
    shape = list(kb.shape(x))
    rank = len(shape)
    axes = sorted({int(a) % rank for a in attrs["axes"]})
    kept = [d for d in range(rank) if d not in axes]
    name = llvm_name(out.name)
    dt = x.type.dtype
    adt = _acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = _emitter(kb, adt, name)
    X = kb.ptr(x)
    count = _numel([shape[d] for d in axes])
    kb.parallel_extent = _numel([shape[d] for d in kept])
    kb.cost = _numel(shape) * 4
    strides = KernelBuilder.strides(shape)
    vec_last = bool(axes) and axes[-1] == rank - 1
    W = kb.vector_width

    def over_reduced(fixed, body):
        """body(index, lanes) for every reduced position (vectors along the last axis)."""
        def nest(i, idx):
            if i == len(axes):
                body(idx, 1)
                return
            d = axes[i]
            if d == rank - 1:
                _vec_loop(kb, 0, shape[d], lambda j, n: body({**idx, d: j}, n), f"r{i}")
                return
            with kb.loop(0, shape[d], name=f"r{i}") as j:
                nest(i + 1, {**idx, d: j})
        nest(0, dict(fixed))

    def offset(idx):
        return kb._ir(kb.linear([idx[d] for d in range(rank)], shape))

    with kb.loop(kb.begin, kb.end, name="k") as k:
        kidx = kb.delinear(k, [shape[d] for d in kept]) if kept else []
        fixed = dict(zip(kept, kidx))
        vt = ir.VectorType(acc_t, W)
        s1v, s2v = _entry_alloca(kb, vt, "s1.v"), _entry_alloca(kb, vt, "s2.v")
        s1, s2 = _entry_alloca(kb, acc_t, "s1"), _entry_alloca(kb, acc_t, "s2")
        for slot, t in ((s1v, vt), (s2v, vt), (s1, acc_t), (s2, acc_t)):
            b.store(const(t, 0.0), slot)

        def stats(idx, n):
            v = _cvt(e, _vload(kb, X, offset(idx), n, "x"), dt, adt)
            a1, a2 = (s1v, s2v) if n > 1 else (s1, s2)
            b.store(e.add(b.load(a1), v), a1)
            b.store(e.add(b.load(a2), _sq(e, v)), a2)

        over_reduced(fixed, stats)
        tot = e.add(_hreduce(e, b.load(s1v), "sum"), b.load(s1))
        tot2 = e.add(_hreduce(e, b.load(s2v), "sum"), b.load(s2))
        mean = e.fdiv(tot, const(acc_t, float(count)))
        var = e.sub(e.fdiv(tot2, const(acc_t, float(count))), e.mul(mean, mean))
        var = b.select(b.fcmp_ordered("<", var, const(acc_t, 0.0)), const(acc_t, 0.0), var)
        den = e.add(e.intrinsic("sqrt", [var]), const(acc_t, float(attrs["epsilon"])))

        def put(idx, n):
            v = _cvt(e, _vload(kb, X, offset(idx), n, "x"), dt, adt)
            yv = e.fdiv(e.sub(v, splat(b, mean, n)), splat(b, den, n))
            _store_result(kb, out, [idx[d] for d in range(rank)], _cvt(e, yv, adt, dt))

        over_reduced(fixed, put)
    b.ret_void()


# ----------------------------------------------------------------------------------------------
# Transposed convolution
# ----------------------------------------------------------------------------------------------


@generator("conv_transpose", epilogue=True)
def conv_transpose(kb: KernelBuilder, node) -> None:
    """Rows of the output: acc[ix*s + kx*d - p] += w[c, m, k] * x[n, c, .., ix] for the taps
    whose outer input positions (o + p - k*d) / s are whole and inside the input."""
    b = kb.b
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    attrs = kb.attrs(node)
    xs, ws, ys = kb.shape(x), kb.shape(w), kb.shape(out)
    nsp = len(xs) - 2
    strides, pads, dil = _window_params(attrs, nsp)
    group = int(attrs["group"])
    C, mg = xs[1], ws[1]
    cg = C // group
    M = mg * group
    kernel = list(ws[2:])
    ktaps = _numel(kernel)
    kstr = KernelBuilder.strides(kernel)
    name = llvm_name(out.name)
    dt = x.type.dtype
    adt = _acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = _emitter(kb, adt, name)
    Wo, Wi = ys[-1], xs[-1]
    sx, dx, px = strides[-1], dil[-1], pads[nsp - 1]
    rows_shape = [ys[0], M] + list(ys[2:-1])
    kb.parallel_extent = _numel(rows_shape)
    kb.cost = 2 * _numel(xs) * mg * ktaps
    plane = _numel(xs[2:])
    X, Wt = kb.ptr(x), kb.ptr(w)
    acc = _stack_row(kb, acc_t, Wo, name + ".acc")
    ilo = [max(0, _cdiv(px - k * dx, sx)) for k in range(kernel[-1])]
    ihi = [max(ilo[k], min(Wi, (Wo - 1 + px - k * dx) // sx + 1)) for k in range(kernel[-1])]
    t_ilo, t_ihi = _table(kb, ilo, name + ".ilo"), _table(kb, ihi, name + ".ihi")
    in_str = KernelBuilder.strides(xs[2:])
    with kb.loop(kb.begin, kb.end, name="row") as row:
        ridx = kb.delinear(row, rows_shape)
        n_i, mo, o_idx = ridx[0], ridx[1], ridx[2:]
        init = const(acc_t, 0.0)
        if bias is not None:
            init = _chan_param(kb, e, bias, mo, adt)
        with kb.loop(0, Wo, name="init") as ox:
            b.store(init, b.gep(acc, [ox], inbounds=True))
        gi = kb.idiv(mo, mg)
        m_in = kb.imod(mo, mg)
        with kb.loop(0, cg, name="c") as c:
            chan = b.add(kb._ir(kb.imul(gi, cg)), c, name="chan")
            xbase = b.mul(b.add(b.mul(kb._ir(n_i), i64(C)), chan), i64(plane), name="xbase")
            wbase = b.mul(b.add(b.mul(chan, i64(mg)), kb._ir(m_in)), i64(ktaps), name="wbase")

            def outer(j, xoff, woff):
                if j == nsp - 1:
                    with kb.loop(0, kernel[-1], name="kx") as kx:
                        wv = _cvt(e, b.load(b.gep(Wt, [b.add(woff, kx)], inbounds=True), name="w"),
                                  w.type.dtype, adt)
                        lo = _tload(kb, t_ilo, kx, "ilo")
                        hi = _tload(kb, t_ihi, kx, "ihi")
                        shift = b.sub(b.mul(kx, i64(dx)), i64(px), name="shift")
                        with kb.loop(lo, hi, name="ix") as ix:
                            v = _cvt(e, b.load(b.gep(X, [b.add(xoff, ix)], inbounds=True),
                                               name="x"), dt, adt)
                            ap = b.gep(acc, [b.add(b.mul(ix, i64(sx)), shift)], inbounds=True)
                            b.store(e.add(b.load(ap), e.mul(wv, v)), ap)
                    return
                with kb.loop(0, kernel[j], name=f"k{j}") as k:
                    num = b.sub(b.add(kb._ir(o_idx[j]), i64(pads[j])), b.mul(k, i64(dil[j])),
                                name=f"num{j}")
                    q = b.sdiv(num, i64(strides[j]), name=f"i{j}")
                    ok = b.and_(b.icmp_signed(">=", num, i64(0)),
                                b.and_(b.icmp_signed("==", b.mul(q, i64(strides[j])), num),
                                       b.icmp_signed("<", q, i64(xs[2 + j]))), name=f"ok{j}")
                    with b.if_then(ok):
                        outer(j + 1, b.add(xoff, b.mul(q, i64(in_str[j]))),
                              b.add(woff, b.mul(k, i64(kstr[j]))))

            outer(0, xbase, wbase)

        def finish(ox, lanes):
            v = _vload(kb, acc, ox, lanes, "acc")
            _store_result(kb, out, [n_i, mo] + list(o_idx) + [ox], _cvt(e, v, adt, dt))

        _vec_loop(kb, 0, Wo, finish, "fin")
    b.ret_void()


# ----------------------------------------------------------------------------------------------
# Resize
# ----------------------------------------------------------------------------------------------


def _const_data(v):
    if v is None:
        return None
    if not (v.is_constant and v.data is not None):
        return False
    a = np.asarray(v.data)
    return None if a.size == 0 else a


def _resize_plan_tables(kb: KernelBuilder, node):
    """Per resized axis, in the order the reference applies them: (axis, kind, data) where
    data is the nearest source index per output position, or the taps (indices, float64
    weights) of the axis's interpolation matrix; plus which outputs lie outside the crop."""
    from slimc.ir.ops.nn import _resize_axes, _resize_axis, _source_coords, resize_plan

    attrs = kb.attrs(node)
    x = node.inputs[0]
    shape = list(kb.shape(x))
    out_shape = list(kb.shape(node.outputs[0]))
    rank = len(shape)
    ins = list(node.inputs) + [None] * (4 - len(node.inputs))
    roi, scales, sizes = (_const_data(v) for v in ins[1:4])
    ctm = attrs["coordinate_transformation_mode"]
    tf_crop = ctm == "tf_crop_and_resize"
    if scales is False or sizes is False or (tf_crop and roi is False):
        what = "scales" if scales is False else "sizes" if sizes is False else "roi"
        if what == "sizes" and attrs["keep_aspect_ratio_policy"] == "stretch" and scales is None:
            sizes = None  # stretch: the static output shape says everything
        else:
            raise UnsupportedError(f"resize with a {what} input computed at run time: the CPU "
                                   f"backend precomputes the interpolation at compile time and "
                                   f"needs it constant", node=node.label, op=node.op)
    ax = _resize_axes(attrs["axes"], rank)
    if scales is None and sizes is None:  # stretch with runtime sizes
        scale_of = [out_shape[d] / shape[d] if shape[d] else 1.0 for d in range(rank)]
        out = out_shape
    else:
        scale_of, out = resize_plan(shape, scales, sizes, attrs["axes"],
                                    attrs["keep_aspect_ratio_policy"])
    if [int(o) for o in out] != out_shape:
        raise UnsupportedError(f"resize output shape {out} differs from the inferred "
                               f"{out_shape}", node=node.label, op=node.op)
    roi_full = [np.float64(0.0)] * rank + [np.float64(1.0)] * rank
    if roi is not None and roi is not False:
        r = list(np.asarray(roi).reshape(-1))
        k = len(r) // 2
        dims = ax if k == len(ax) else list(range(rank))
        for j, d in enumerate(dims):
            roi_full[d], roi_full[rank + d] = r[j], r[k + j]
    a = dict(mode=attrs["mode"], coordinate_transformation_mode=ctm,
             nearest_mode=attrs["nearest_mode"], cubic_coeff_a=attrs["cubic_coeff_a"],
             exclude_outside=attrs["exclude_outside"], extrapolation_value=0.0,
             antialias=attrs["antialias"])
    plan = []
    for d in ax:
        if out[d] == shape[d] and scale_of[d] == 1.0 and (
                not tf_crop or (roi_full[d] == 0.0 and roi_full[rank + d] == 1.0)):
            continue
        n_in, n_out = shape[d], int(out[d])
        if n_in == 0 or n_out == 0:
            continue
        xs = _source_coords(ctm, n_out, n_in, float(scale_of[d]), roi_full[d], roi_full[rank + d])
        outside = ((xs < 0) | (xs > n_in - 1)) if tf_crop else np.zeros(n_out, bool)
        # the reference applied to an identity matrix gives this axis's interpolation matrix
        eye = np.eye(n_in, dtype=np.float64)
        mat = _resize_axis(eye, 0, n_out, float(scale_of[d]), a, roi_full[d], roi_full[rank + d])
        if attrs["mode"] == "nearest":
            plan.append((d, "nearest", np.argmax(mat, axis=1).astype(np.int64), outside))
            continue
        nz = [np.nonzero(mat[o])[0] for o in range(n_out)]
        T = max(1, max(len(z) for z in nz))
        idx = np.zeros((n_out, T), np.int64)
        wts = np.zeros((n_out, T), np.float64)
        for o, z in enumerate(nz):
            idx[o, :len(z)] = z
            wts[o, :len(z)] = mat[o, z]
        plan.append((d, "interp", (idx, wts, T), outside))
    return plan


@generator("resize", epilogue=True)
def resize(kb: KernelBuilder, node) -> None:
    """Separable resize. Nearest: each resized axis maps an output position to a source index
    (a table). Linear and cubic: each output is the nested sum over the axes' taps, weights in
    float64 as the reference weighs; tf_crop_and_resize puts extrapolation_value outside."""
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    attrs = kb.attrs(node)
    shape, oshape = list(kb.shape(x)), list(kb.shape(out))
    rank = len(shape)
    name = llvm_name(out.name)
    dt = x.type.dtype
    plan = _resize_plan_tables(kb, node)
    interp = any(kind == "interp" for _, kind, _, _ in plan)
    crop = any(o.any() for _, _, _, o in plan)
    cdt = dtypes.f64 if (interp or crop) else dt
    ct = llvm_type(cdt)
    e = Emitter(b, [cdt], cdt, kb.fast_math, name)
    X = kb.ptr(x)
    strides = KernelBuilder.strides(shape)
    if rank == 0 or _numel(oshape) == 0:
        kb.parallel_extent = 1
        if rank == 0:
            _store_result(kb, out, [], b.load(X))
        b.ret_void()
        return
    rows_shape = oshape[:-1]
    kb.parallel_extent = _numel(rows_shape)
    taps = 1
    tables = {}
    for d, kind, data, outside in plan:
        if kind == "nearest":
            tables[d] = (_table(kb, data.tolist(), f"{name}.src{d}"), None, 1)
        else:
            idx, wts, T = data
            taps *= T
            tables[d] = (_table(kb, idx.reshape(-1).tolist(), f"{name}.tap{d}"),
                         _table(kb, wts.reshape(-1).tolist(), f"{name}.w{d}", F64), T)
        if outside.any():
            tables[d] = tables[d] + (_table(kb, outside.astype(np.int64).tolist(),
                                            f"{name}.out{d}"),)
    kb.cost = _numel(oshape) * taps * 2
    extrap = float(attrs["extrapolation_value"])
    order = [d for d, _, _, _ in plan]  # application order; the last applied is outermost
    kinds = {d: kind for d, kind, _, _ in plan}

    def value(k, idx):
        """The element after applying axes order[:len(order)-k] ... (the nested evaluation)."""
        if k == len(order):
            off = kb._ir(kb.linear([idx[j] for j in range(rank)], shape))
            return _cvt(e, b.load(b.gep(X, [off], inbounds=True), name="x"), dt, cdt)
        d = order[len(order) - 1 - k]
        tab = tables[d]
        o = idx[d]
        if kinds[d] == "nearest":
            src = _tload(kb, tab[0], o, f"src{d}")
            r = value(k + 1, {**idx, d: src})
        else:
            T = tab[2]
            acc = _entry_alloca(kb, F64, f"acc{d}")
            b.store(const(F64, 0.0), acc)
            with kb.loop(0, T, name=f"t{d}") as t:
                at = b.add(b.mul(kb._ir(o), i64(T)), t, name=f"at{d}")
                src = _tload(kb, tab[0], at, f"tap{d}")
                wt = _tload(kb, tab[1], at, f"w{d}")
                v = value(k + 1, {**idx, d: src})
                b.store(b.fadd(b.load(acc), b.fmul(wt, _cvt(e, v, cdt, dtypes.f64))), acc)
            r = _cvt(e, b.load(acc), dtypes.f64, cdt)
        if len(tab) == 4:
            flag = _tload(kb, tab[3], o, f"out{d}")
            r = b.select(b.icmp_signed("!=", flag, i64(0)), const(ct, extrap), r)
        return r

    with kb.loop(kb.begin, kb.end, name="row") as row:
        ridx = kb.delinear(row, rows_shape)
        with kb.loop(0, oshape[-1], name="o") as o:
            idx = {d: ridx[d] for d in range(rank - 1)}
            idx[rank - 1] = o
            v = value(0, idx)
            full = [idx[d] for d in range(rank)]
            _store_result(kb, out, full, _resize_cast(e, v, cdt, dt))
    b.ret_void()


def _resize_cast(e: Emitter, v, src, dst):
    """The reference's final cast: integers round half to even and clip; bool is != 0."""
    if src == dst:
        return v
    if dst == dtypes.bool:
        return e.from_bool(e.b.fcmp_unordered("!=", v, const(v.type, 0.0)))
    if not dst.is_float:
        info = np.iinfo(dst.numpy)
        r = e.intrinsic("roundeven", [v])
        r = e.max(r, const(r.type, float(info.min)))
        r = e.min(r, const(r.type, float(info.max)))
        return _convert(e, r, src, dst)
    return _convert(e, v, src, dst)
