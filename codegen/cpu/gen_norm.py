"""Passes over a line: normalizations, global pools, LRN and MVN (the softmax family, on the
same loop shape: gen_softmax.py).

Per work item a few passes over one line with explicit vector accumulators and shuffle-tree
horizontal reductions; along a non-last axis the vectors run across the inner lines instead.
Every op here is that loop shape, `_Axis` and `_Span`, with its own few passes.
"""

from __future__ import annotations

import math
from typing import Callable

from llvmlite import ir

from .common import (acc_dtype, chan_param, convert, emitter, entry_alloca, flat_epilogue_ok,
                     flat_index, hreduce, numel, smax, smin, vec_loop, vload)
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import const, i64, llvm_type, splat
from .scalar_ops import Emitter

# ----------------------------------------------------------------------------------------------
# Rows and spans: softmax family, normalizations, global pooling
# ----------------------------------------------------------------------------------------------


class _Axis:
    """Passes over a line of L elements, element l at `value(l, lanes)`.

    lanes=None: one contiguous line, vectors along l and horizontal reductions at the end;
    lanes=n: n lines side by side (contiguous across them), l runs scalar and every statistic
    is a vector of n. `bcast` turns a statistic into the shape of an element."""

    def __init__(self, kb: KernelBuilder, e: Emitter, acc_t: ir.Type, L: int, lanes=None):
        self.kb, self.e, self.acc_t, self.L, self.lanes = kb, e, acc_t, L, lanes

    UNROLL = 4  # independent vector accumulators of a contiguous line's reduction

    def _comb(self, op, a, v):
        if op == "sum":
            return self.e.add(a, v)
        if op == "max":
            return self.e.max(a, v)
        if op == "top":  # the largest element that is not NaN (one vmaxps)
            return self.kb.b.select(self.e.lt(a, v), v, a)
        return op(a, v)

    def reduce(self, value: Callable, init, op, name: str = "acc"):
        """`op` ("sum", "max", or "top": NaN-skipping max) over value(l, lanes). A contiguous
        line keeps UNROLL vector accumulators (no chain of dependent adds or maxes)."""
        kb, b = self.kb, self.kb.b
        if self.lanes is not None:
            t = ir.VectorType(self.acc_t, self.lanes) if self.lanes > 1 else self.acc_t
            acc = entry_alloca(kb.b, t, name)
            b.store(const(t, init), acc)
            with kb.loop(0, self.L, name=name + ".l") as l:
                b.store(self._comb(op, b.load(acc), value(l, self.lanes)), acc)
            return b.load(acc, name=name)
        W = kb.vector_width
        vt = ir.VectorType(self.acc_t, W)
        unroll = max(1, min(self.UNROLL, self.L // W)) if isinstance(self.L, int) else 1
        vaccs = [entry_alloca(kb.b, vt, f"{name}.v{u}") for u in range(unroll)]
        sacc = entry_alloca(kb.b, self.acc_t, name + ".s")
        for slot in vaccs:
            b.store(const(vt, init), slot)
        b.store(const(self.acc_t, init), sacc)

        def body(l, n, u=0):
            slot = vaccs[u] if n > 1 else sacc
            b.store(self._comb(op, b.load(slot), value(l, n)), slot)

        start = 0
        if unroll > 1:
            start = self.L // (unroll * W) * (unroll * W)
            with kb.loop(0, start, unroll * W, name=name + "u") as l:
                for u in range(unroll):
                    body(b.add(l, i64(u * W)) if u else l, W, u)
        vec_loop(kb, start, self.L, body, name)
        if op not in ("sum", "max", "top"):
            raise ValueError(op)
        v = b.load(vaccs[0])
        for slot in vaccs[1:]:
            v = self._comb(op, v, b.load(slot))
        return self._comb(op, hreduce(self.e, v, "max" if op == "top" else op), b.load(sacc))

    def foreach(self, body: Callable, name: str = "out"):
        kb = self.kb
        if self.lanes is not None:
            with kb.loop(0, self.L, name=name + ".l") as l:
                body(l, self.lanes)
            return
        vec_loop(kb, 0, self.L, body, name)

    def bcast(self, s, lanes):
        return splat(self.kb.b, s, lanes) if self.lanes is None else s


class _Span:
    """The trailing dims [first, rank) of a result as one flat run (when the fused epilogue
    allows flat indices; otherwise element by element with full indices)."""

    def __init__(self, kb: KernelBuilder, anchor, produced, first: int):
        shape = kb.shape(produced)
        self.kb = kb
        self.dims = list(shape[first:])
        self.n = numel(self.dims)
        # vectors of a flat run lie along the last axis, as epilogue operands read them: not
        # when that axis is 1 (the run's lanes would be another axis)
        self.flat = (self.dims[-1:] != [1] or self.n == 1) and (
            list(kb.outputs) == [produced] or flat_epilogue_ok(kb, anchor, produced, first))

    def index(self, prefix, f):
        if not self.dims:
            return list(prefix)
        if self.flat:
            return list(prefix) + flat_index(self.dims, f)
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
        return convert(e, vload(kb, X, off, lanes, "x"), dt, adt)

    return value


def _axis_layout(shape, axis):
    axis %= len(shape)
    return numel(shape[:axis]), shape[axis], numel(shape[axis + 1:]), axis


def _sq(e: Emitter, v):
    return e.mul(v, v)


@generator("global_avg_pool", "global_max_pool", "global_lp_pool", epilogue=True)
def global_pool(kb: KernelBuilder, node) -> None:
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    kind = node.op
    shape = kb.shape(x)
    name = llvm_name(out.name)
    dt = x.type.dtype
    adt = acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = emitter(kb, adt, name)
    X = kb.ptr(x)
    plane = numel(shape[2:])
    kb.parallel_extent = shape[0] * shape[1]
    kb.cost = numel(shape)
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
        kb.store_result(out, [kb.idiv(nc, shape[1]), kb.imod(nc, shape[1])] + zeros,
                        convert(e, r, adt, dt))
    b.ret_void()


def _mean_inv(kb: KernelBuilder, e: Emitter, ax: _Axis, value, n: int, eps: float, acc_t):
    """Two passes, as the reference: mean, then mean((x - mean)^2); returns mean, 1/sqrt(var+eps)."""
    b = kb.b
    mean = e.fdiv(ax.reduce(value, 0.0, "sum", "sum"), const(acc_t, float(n)))
    var = e.fdiv(ax.reduce(lambda l, k: _sq(e, e.sub(value(l, k), splat(b, mean, k))), 0.0, "sum",
                           "ssd"), const(acc_t, float(n)))
    inv = e.fdiv(const(acc_t, 1.0), e.intrinsic("sqrt", [e.add(var, const(acc_t, eps))]))
    return mean, inv


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
    adt = acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = emitter(kb, adt, name)
    X = kb.ptr(x)
    N, C = shape[0], shape[1]
    span = _Span(kb, node, out, 2)
    plane = span.n
    eps = float(attrs["epsilon"])
    kb.parallel_extent = N * C
    kb.cost = numel(shape) * (2 if kind == "batch_norm" else 4)
    with kb.loop(kb.begin, kb.end, name="nc") as nc:
        c = b.urem(nc, i64(C), name="c")
        n_i = b.udiv(nc, i64(C), name="n")
        base = b.mul(nc, i64(plane), name="base")
        value = _line_loads(kb, e, X, base, 1, dt, adt)
        scale = chan_param(kb, e, node.inputs[1], c, adt)
        shift = chan_param(kb, e, node.inputs[2], c, adt)
        if kind == "batch_norm":
            mean = chan_param(kb, e, node.inputs[3], c, adt)
            var = chan_param(kb, e, node.inputs[4], c, adt)
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
            kb.store_result(out, span.index([n_i, c], l), convert(e, y(l, k), adt, dt))

        vec_loop(kb, 0, plane, put, "y", lanes=None if span.flat else 1)
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
    adt = acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = emitter(kb, adt, name)
    X = kb.ptr(x)
    N, C = shape[0], shape[1]
    G = int(attrs["num_groups"])
    cpg = C // G
    span = _Span(kb, node, out, 2)
    plane = span.n
    eps = float(attrs["epsilon"])
    kb.parallel_extent = N * G
    kb.cost = numel(shape) * 4
    with kb.loop(kb.begin, kb.end, name="ng") as ng:
        n_i = b.udiv(ng, i64(G), name="n")
        gi = b.urem(ng, i64(G), name="g")
        base = b.mul(ng, i64(cpg * plane), name="base")
        value = _line_loads(kb, e, X, base, 1, dt, adt)
        mean, inv = _mean_inv(kb, e, _Axis(kb, e, acc_t, cpg * plane), value, cpg * plane, eps,
                              acc_t)
        with kb.loop(0, cpg, name="cg") as cg:
            c = b.add(b.mul(gi, i64(cpg)), cg, name="c")
            scale = chan_param(kb, e, node.inputs[1], c, adt)
            shift = chan_param(kb, e, node.inputs[2], c, adt)
            cbase = b.mul(cg, i64(plane), name="cbase")

            def put(l, k):
                d = e.mul(e.sub(value(b.add(cbase, l), k), splat(b, mean, k)), splat(b, inv, k))
                yv = e.add(e.mul(d, splat(b, scale, k)), splat(b, shift, k))
                kb.store_result(out, span.index([n_i, c], l), convert(e, yv, adt, dt))

            vec_loop(kb, 0, plane, put, "y", lanes=None if span.flat else 1)
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
        return (lambda f, n, idx: convert(e, vload(kb, P, f, n, "p"), v.type.dtype, adt)), True
    if numel(s) == 1:
        return (lambda f, n, idx: splat(b, convert(e, b.load(P), v.type.dtype, adt), n)), True

    def by_index(f, n, idx):
        off = kb.linear([0 if d == 1 else i for d, i in zip(s, idx)], s)
        return convert(e, vload(kb, P, off, n, "p"), v.type.dtype, adt)

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
    adt = acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = emitter(kb, adt, name)
    X = kb.ptr(x)
    dims = list(shape[axis:])
    n = numel(dims)
    rows_shape = list(shape[:axis])
    kb.parallel_extent = numel(rows_shape)
    kb.cost = numel(shape) * 4
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
            kb.store_result(out, index, convert(e, yv, adt, dt))

        vec_loop(kb, 0, n, put, "y", lanes=None if flat else 1)
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
    adt = acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = emitter(kb, adt, llvm_name(mean_v.name))
    n = numel(shape[axis:])
    rows_shape = list(shape[:axis])
    kb.parallel_extent = numel(rows_shape)
    kb.cost = numel(shape) * 3
    odt = mean_v.type.dtype
    with kb.loop(kb.begin, kb.end, name="row") as row:
        prefix = kb.delinear(row, rows_shape) if rows_shape else []
        value = _line_loads(kb, e, kb.ptr(x), b.mul(row, i64(n), name="base"), 1, dt, adt)
        mean, inv = _mean_inv(kb, e, _Axis(kb, e, acc_t, n), value, n, float(attrs["epsilon"]),
                              acc_t)
        index = prefix + [0] * (rank - axis)
        kb.store_value(mean_v, index, convert(e, mean, adt, odt))
        kb.store_value(inv_v, index, convert(e, inv, adt, odt))
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
    adt = acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = emitter(kb, adt, name)
    X = kb.ptr(x)
    N, C = shape[0], shape[1]
    span = _Span(kb, node, out, 2)
    plane = span.n
    size = int(attrs["size"])
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    kb.parallel_extent = N * C
    kb.cost = numel(shape) * (size + 20)
    alpha = float(attrs["alpha"]) / size
    with kb.loop(kb.begin, kb.end, name="nc") as nc:
        c = b.urem(nc, i64(C), name="c")
        n_i = b.udiv(nc, i64(C), name="n")
        c_lo = smax(b, b.sub(c, i64(lo)), i64(0), "c.lo")
        c_hi = smin(b, b.add(c, i64(hi + 1)), i64(C), "c.hi")
        base = b.mul(nc, i64(plane), name="base")
        nbase = b.mul(n_i, i64(C * plane), name="nbase")

        def put(f, k):
            t = ir.VectorType(acc_t, k) if k > 1 else acc_t
            acc = entry_alloca(kb.b, t, "sq")
            b.store(const(t, 0.0), acc)
            with kb.loop(c_lo, c_hi, name="cw") as cw:
                off = b.add(b.add(nbase, b.mul(cw, i64(plane))), kb._ir(f))
                v = convert(e, vload(kb, X, off, k, "xw"), dt, adt)
                b.store(e.add(b.load(acc), _sq(e, v)), acc)
            den = e.add(const(t, float(attrs["bias"])), e.mul(const(t, alpha), b.load(acc)))
            den = e.intrinsic("pow", [den, const(t, float(attrs["beta"]))])
            xv = convert(e, vload(kb, X, b.add(base, kb._ir(f)), k, "x"), dt, adt)
            kb.store_result(out, span.index([n_i, c], f), convert(e, e.fdiv(xv, den), adt, dt))

        vec_loop(kb, 0, plane, put, "y", lanes=None if span.flat else 1)
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
    adt = acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = emitter(kb, adt, name)
    X = kb.ptr(x)
    count = numel([shape[d] for d in axes])
    kb.parallel_extent = numel([shape[d] for d in kept])
    kb.cost = numel(shape) * 4
    W = kb.vector_width

    def over_reduced(fixed, body):
        """body(index, lanes) for every reduced position (vectors along the last axis)."""
        def nest(i, idx):
            if i == len(axes):
                body(idx, 1)
                return
            d = axes[i]
            if d == rank - 1:
                vec_loop(kb, 0, shape[d], lambda j, n: body({**idx, d: j}, n), f"r{i}")
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
        s1v, s2v = entry_alloca(kb.b, vt, "s1.v"), entry_alloca(kb.b, vt, "s2.v")
        s1, s2 = entry_alloca(kb.b, acc_t, "s1"), entry_alloca(kb.b, acc_t, "s2")
        for slot, t in ((s1v, vt), (s2v, vt), (s1, acc_t), (s2, acc_t)):
            b.store(const(t, 0.0), slot)

        def stats(idx, n):
            v = convert(e, vload(kb, X, offset(idx), n, "x"), dt, adt)
            a1, a2 = (s1v, s2v) if n > 1 else (s1, s2)
            b.store(e.add(b.load(a1), v), a1)
            b.store(e.add(b.load(a2), _sq(e, v)), a2)

        over_reduced(fixed, stats)
        tot = e.add(hreduce(e, b.load(s1v), "sum"), b.load(s1))
        tot2 = e.add(hreduce(e, b.load(s2v), "sum"), b.load(s2))
        mean = e.fdiv(tot, const(acc_t, float(count)))
        var = e.sub(e.fdiv(tot2, const(acc_t, float(count))), e.mul(mean, mean))
        var = b.select(b.fcmp_ordered("<", var, const(acc_t, 0.0)), const(acc_t, 0.0), var)
        den = e.add(e.intrinsic("sqrt", [var]), const(acc_t, float(attrs["epsilon"])))

        def put(idx, n):
            v = convert(e, vload(kb, X, offset(idx), n, "x"), dt, adt)
            yv = e.fdiv(e.sub(v, splat(b, mean, n)), splat(b, den, n))
            kb.store_result(out, [idx[d] for d in range(rank)], convert(e, yv, adt, dt))

        over_reduced(fixed, put)
    b.ret_void()
