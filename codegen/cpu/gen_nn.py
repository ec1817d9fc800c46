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
from typing import Callable, Optional

import numpy as np
from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.ops.window import _window_params

from .common import (acc_dtype, cdiv, chan_param, const_table, convert, emitter, numel, smax,
                     smin, stack_row, table_load, vec_loop, vload, vstore)
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import I64, const, i64, llvm_type, splat

# ----------------------------------------------------------------------------------------------
# Small helpers
# ----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------------------------
# Sliding-window geometry (compile time)
# ----------------------------------------------------------------------------------------------


class Geom:
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
        lo = max(0, cdiv(-a, self.d[i]))
        hi = min(self.kernel[i], (self.ins[i] - 1 - a) // self.d[i] + 1)
        return lo, max(lo, hi)

    def outputs_for_tap(self, i: int, k: int) -> tuple[int, int]:
        """[olo, ohi): the outputs along axis i whose tap k lands on the input."""
        a = self.p[i] - k * self.d[i]
        lo = max(0, cdiv(a, self.s[i]))
        hi = min(self.outs[i], (self.ins[i] - 1 + a) // self.s[i] + 1)
        return lo, max(lo, hi)

    def tap_tables(self, kb: KernelBuilder, i: int, name: str):
        r = [self.taps_for_output(i, o) for o in range(self.outs[i])]
        return (const_table(kb, [a for a, _ in r], f"{name}.klo{i}"),
                const_table(kb, [b for _, b in r], f"{name}.khi{i}"))

    def out_tables(self, kb: KernelBuilder, i: int, name: str):
        r = [self.outputs_for_tap(i, k) for k in range(self.kernel[i])]
        return (const_table(kb, [a for a, _ in r], f"{name}.olo{i}"),
                const_table(kb, [b for _, b in r], f"{name}.ohi{i}"))


def outer_taps(kb: KernelBuilder, g: Geom, tables, o_idx, body: Callable, name: str,
                i: int = 0, off=0, ks=()):
    """Loops over the valid taps of the outer spatial axes (all but the last) of the window of
    output position o_idx; body(input offset of the row, taps) in the innermost."""
    if i == g.nsp - 1:
        body(off, list(ks))
        return
    b = kb.b
    lo = table_load(kb, tables[i][0], o_idx[i], f"{name}.klo{i}")
    hi = table_load(kb, tables[i][1], o_idx[i], f"{name}.khi{i}")
    stride_in = numel(g.ins[i + 1:])
    with kb.loop(lo, hi, name=f"{name}.k{i}") as k:
        pos = b.sub(b.add(b.mul(kb._ir(o_idx[i]), i64(g.s[i])), b.mul(k, i64(g.d[i]))), i64(g.p[i]),
                    name=f"{name}.in{i}")
        nxt = kb.iadd(off, b.mul(pos, i64(stride_in)))
        outer_taps(kb, g, tables, o_idx, body, name, i + 1, nxt, ks + (k,))


# Kernels at most this wide along the last axis get the register-blocked interior loop.
UNROLL_TAPS = 16


def accumulate_row(kb: KernelBuilder, g: Geom, acc, tables, value: Callable,
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
            lo = table_load(kb, olo, kx, "olo")
            hi = table_load(kb, ohi, kx, "ohi")
            if lo_clip is not None:
                lo = smax(b, lo, i64(lo_clip), "lo.c")
            if hi_clip is not None:
                hi = smin(b, hi, i64(hi_clip), "hi.c")
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
    g = Geom(xs[2:], ys[2:], kernel, strides, pads, dil)
    name = llvm_name(out.name)
    dt = x.type.dtype
    # 8-bit integers compare in i32: same maxima, and LLVM vectorizes i8 loops 32 lanes wide
    # and 4 deep, which costs a second of compile time for nothing
    adt = acc_dtype(dt) if dt.is_float else (dtypes.i32 if dt.is_signed else dtypes.u32)
    acc_t = llvm_type(adt)
    e = emitter(kb, adt, name)
    Wo = ys[-1]
    rows_shape = [ys[0] * ys[1]] + list(ys[2:-1])
    kb.parallel_extent = numel(rows_shape)
    kb.cost = numel(ys) * numel(kernel)
    plane = numel(xs[2:])
    X = kb.ptr(x)
    acc = stack_row(kb, acc_t, cdiv(Wo, kb.vector_width) * kb.vector_width, name + ".acc")
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
        counts = [const_table(kb, _pool_counts(xs[2 + i], ys[2 + i], kernel[i], strides[i], dil[i],
                                          pads[i], pads[nsp + i], inc), f"{name}.cnt{i}", acc_t)
                  for i in range(nsp)]

    def tap_value(v):
        v = convert(e, v, dt, adt)
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

    # a float 2-D max pool with a row stride of 1 or 2: rows of taps first, then columns
    separable = kind == "max_pool" and nsp == 2 and adt == dt and adt.is_float and \
        dil[-1] == 1 and strides[-1] in (1, 2) and kernel[-1] <= UNROLL_TAPS
    with kb.loop(kb.begin, kb.end, name="row") as row:
        ridx = kb.delinear(row, rows_shape)
        nc, o_idx = ridx[0], ridx[1:]
        if not separable:
            with kb.loop(0, Wo, name="init") as ox:
                b.store(const(acc_t, ident), b.gep(acc, [ox], inbounds=True))
        base = b.mul(kb._ir(nc), i64(plane), name="plane")
        if separable:
            _separable_max_row(kb, g, X, base, acc, tables, o_idx, combine, ident, name)

        def row_taps(off, _ks):
            row = kb._ir(kb.iadd(base, off))

            def value(ox, kx, _pre):
                at = b.add(b.add(row, b.mul(ox, i64(strides[-1]))),
                           kb._ir(kb.iadd(kb.imul(kx, dil[-1]), -pads[nsp - 1])), name="xi")
                return tap_value(b.load(b.gep(X, [at], inbounds=True), name="x"))

            accumulate_row(kb, g, acc, (olo, ohi), value, combine)

        if not separable:
            outer_taps(kb, g, tables, o_idx, row_taps, name)
        outer_count = None
        if counts is not None:
            outer_count = const(acc_t, 1.0)
            for i in range(nsp - 1):
                outer_count = e.mul(outer_count, table_load(kb, counts[i], o_idx[i], f"cnt{i}"))
        n_i = kb.idiv(nc, ys[1])
        c_i = kb.imod(nc, ys[1])

        def finish(ox, lanes):
            v = vload(kb, acc, ox, lanes, "acc")
            if kind == "avg_pool":
                cnt = vload(kb, counts[-1], ox, lanes, "cnt")
                v = e.fdiv(v, e.mul(splat(b, outer_count, lanes), cnt) if nsp > 1 else cnt)
            elif kind == "lp_pool":
                if p == 2:
                    v = e.intrinsic("sqrt", [v])
                elif p != 1:
                    v = e.intrinsic("pow", [v, const(v.type, 1.0 / p)])
            kb.store_result(out, [n_i, c_i] + list(o_idx) + [ox], convert(e, v, adt, dt))

        vec_loop(kb, 0, Wo, finish, "fin")
    b.ret_void()


def _separable_max_row(kb: KernelBuilder, g: Geom, X, base, acc, tables, o_idx, combine,
                       ident: float, name: str) -> None:
    """acc[ox] = the max of output row o_idx's window at each ox, in two passes: the maximum
    of the window's input rows into a row padded with -inf (`vmax`, contiguous vectors), then
    of kw columns of it for each output (stride 2: two vectors loaded, the even lanes kept),
    whole vectors into acc (its last one's extra lanes are not stored). The generic form
    loaded each tap's strided column per output: ResNet's 3x3 stride-2 pool of 64x112x112
    0.236 -> 0.19 ms. The same maxima: the max is exact, and NaN wins in both."""
    b = kb.b
    vw = kb.vector_width
    W, Wo, kw = g.ins[-1], g.outs[-1], g.kernel[-1]
    sw, pl = g.s[-1], g.p[-1]
    ty = acc.type.pointee
    nvec = -(-Wo // vw)
    length = max(pl + W, sw * nvec * vw + kw - 1)
    vmax = stack_row(kb, ty, length, name + ".vmax")

    def fill(i, lanes):
        vstore(kb, splat(b, const(ty, ident), lanes) if lanes > 1 else const(ty, ident), vmax, i,
               "vmax")

    vec_loop(kb, 0, length, fill, "vinit")

    def rows(off, _ks):
        row = kb._ir(kb.iadd(base, off))

        def body(j, lanes):
            at = b.add(j, i64(pl))
            vstore(kb, combine(vload(kb, vmax, at, lanes, "vm"),
                               vload(kb, X, b.add(row, j), lanes, "x")), vmax, at, "vmax")

        vec_loop(kb, 0, W, body, "vrow")

    outer_taps(kb, g, tables, o_idx, rows, name)
    even = ir.Constant(ir.VectorType(ir.IntType(32), vw), [sw * lane for lane in range(vw)])
    with kb.loop(0, nvec * vw, vw, name="vcol") as ox:
        result = None
        for kx in range(kw):
            at = b.add(b.mul(ox, i64(sw)), i64(kx))
            v = vload(kb, vmax, at, sw * vw, f"c{kx}")
            if sw > 1:
                v = b.shuffle_vector(v, ir.Constant(v.type, ir.Undefined), even)
            result = v if result is None else combine(result, v)
        vstore(kb, result, acc, ox, "acc")


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
    g = Geom(xs[2:], ys[2:], kernel, strides, pads, dil)
    name = llvm_name(vals.name)
    dt = x.type.dtype
    t = llvm_type(dt)
    e = emitter(kb, dt, name)
    spatial = xs[2:]
    plane = numel(spatial)
    col_major = bool(attrs["storage_order"])
    # flat-index weight of each spatial coordinate
    wts = [0] * nsp
    acc_w = 1
    for i in (reversed(range(nsp)) if not col_major else range(nsp)):
        wts[i] = acc_w
        acc_w *= spatial[i]
    kb.parallel_extent = ys[0] * ys[1]
    kb.cost = numel(ys) * numel(kernel)
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
                lo = table_load(kb, tabs[j][0], o_idx[j], f"klo{j}")
                hi = table_load(kb, tabs[j][1], o_idx[j], f"khi{j}")
                with kb.loop(lo, hi, name=f"k{j}") as k:
                    pos = b.add(b.sub(b.mul(o_idx[j], i64(strides[j])), i64(pads[j])),
                                b.mul(k, i64(dil[j])), name=f"pos{j}")
                    taps(j + 1, b.add(off, b.mul(pos, i64(numel(spatial[j + 1:])))),
                         b.add(flat, b.mul(pos, i64(wts[j]))))

            taps(0, base_flat, base_flat)
            index = [n_i, c_i] + o_idx
            kb.store_value(vals, index, b.load(best, name="max"))
            kb.store_value(inds, index, b.load(best_i, name="argmax"))
            kb.cache.clear()

        nest(0, [])
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
    ktaps = numel(kernel)
    kstr = KernelBuilder.strides(kernel)
    name = llvm_name(out.name)
    dt = x.type.dtype
    adt = acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = emitter(kb, adt, name)
    Wo, Wi = ys[-1], xs[-1]
    sx, dx, px = strides[-1], dil[-1], pads[nsp - 1]
    rows_shape = [ys[0], M] + list(ys[2:-1])
    kb.parallel_extent = numel(rows_shape)
    kb.cost = 2 * numel(xs) * mg * ktaps
    plane = numel(xs[2:])
    X, Wt = kb.ptr(x), kb.ptr(w)
    acc = stack_row(kb, acc_t, Wo, name + ".acc")
    ilo = [max(0, cdiv(px - k * dx, sx)) for k in range(kernel[-1])]
    ihi = [max(ilo[k], min(Wi, (Wo - 1 + px - k * dx) // sx + 1)) for k in range(kernel[-1])]
    t_ilo, t_ihi = const_table(kb, ilo, name + ".ilo"), const_table(kb, ihi, name + ".ihi")
    in_str = KernelBuilder.strides(xs[2:])
    with kb.loop(kb.begin, kb.end, name="row") as row:
        ridx = kb.delinear(row, rows_shape)
        n_i, mo, o_idx = ridx[0], ridx[1], ridx[2:]
        init = const(acc_t, 0.0)
        if bias is not None:
            init = chan_param(kb, e, bias, mo, adt)
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
                        wv = convert(e, b.load(b.gep(Wt, [b.add(woff, kx)], inbounds=True), name="w"),
                                  w.type.dtype, adt)
                        lo = table_load(kb, t_ilo, kx, "ilo")
                        hi = table_load(kb, t_ihi, kx, "ihi")
                        shift = b.sub(b.mul(kx, i64(dx)), i64(px), name="shift")
                        with kb.loop(lo, hi, name="ix") as ix:
                            v = convert(e, b.load(b.gep(X, [b.add(xoff, ix)], inbounds=True),
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
            v = vload(kb, acc, ox, lanes, "acc")
            kb.store_result(out, [n_i, mo] + list(o_idx) + [ox], convert(e, v, adt, dt))

        vec_loop(kb, 0, Wo, finish, "fin")
    b.ret_void()
