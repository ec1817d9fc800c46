"""Generators for the nn op family, part one: sliding windows (pooling, transposed
convolution) and the helpers the other nn modules share.

* **sliding windows, one output row at a time** (pooling, transposed convolution, and the
  direct convolution of gen_conv.py): a work item is one row along the last spatial axis of
  one (image, channel, outer output position). The row accumulates in a stack buffer. Each
  kernel tap touches a contiguous run of outputs -- where it lands on real input, not padding
  -- computed at compile time, so no loop tests bounds per element: the interior runs with
  the taps unrolled in registers, the edges tap by tap. The finished row goes through
  `kb.store_result`, which applies the kernel's fused epilogue.

The rest of the family: gen_conv.py (convolution), gen_norm.py (softmax, normalizations,
global pools), gen_resize.py (resize), gen_blocked.py (the blocked NCHW[b]c layout).
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np
from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.ops.nn import _window_params

from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import I32, I64, const, i64, llvm_type, load, splat, store
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


def _entry_alloca(kb: KernelBuilder, ty: ir.Type, name: str) -> ir.Value:
    """An alloca in the entry block (so a loop body does not grow the stack)."""
    b = kb.b
    here = b.block
    b.position_at_start(kb.fn.entry_basic_block)
    slot = b.alloca(ty, name=name)
    b.position_at_end(here)
    return slot


def _chan_param(kb: KernelBuilder, e: Emitter, v, index, adt):
    """Scalar v[index] in the compute type (a per-channel parameter)."""
    b = kb.b
    x = b.load(b.gep(kb.ptr(v), [kb._ir(index)], inbounds=True), name=llvm_name(v.name))
    return _cvt(e, x, v.type.dtype, adt)


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
