"""GPU generators for the softmax family (softmax, log_softmax, lp_normalization) and the
normalizations (layer, instance, group, mean-variance) on gen_rows.py's rows; batch_norm
(inference) and lrn, which need no row statistics, a thread per output element.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

from llvmlite import ir

from slimc.ir.errors import UnsupportedError

from ..cpu.common import emitter, numel, unflatten
from ..cpu.kernel import llvm_name
from ..cpu.llvm_util import const, i64, llvm_type
from ..cpu.scalar_ops import convert
from .gen_rows import Rows, finite, no_work, read_value, rounding, rows_kind, rows_over
from .gen_window import UNROLL_TAPS, _empty, _put, _reader
from .index import Ix, counted_loop, per_element, per_element_done, wide_index
from .kernel import GpuKernelBuilder, gpu_generator

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
    adt = rows_kind(kb, x, dt, kind)
    if numel(shape) == 0:
        return no_work(kb)
    R = outer * inner
    rows = Rows(kb, R, L, adt, llvm_name(out.name), strided=inner > 1)
    e = rows.e
    rnd = rounding(e, dt, adt)
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
    shift = finite(e, rows.reduce(xs, "max", -math.inf, "max"))
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
    adt = rows_kind(kb, x, dt, node.op)
    rows = Rows(kb, R, L, adt, llvm_name(node.outputs[0].name))
    e = rows.e
    prefix = unflatten(kb, rows.row, rows_shape, "r")
    base = kb.imul(rows.row, L)

    def index(j):
        return prefix + unflatten(kb, j, dims, "j")

    xs = rows.load(lambda j: read_value(kb, e, x, kb.iadd(base, j), lambda: index(j), adt))
    mean, centered, inv = _mean_inv(rows, xs, float(attrs["epsilon"]))
    return _Normalized(rows, centered, mean, inv, index, dims, adt,
                       prefix + [0] * (rank - axis))


def _mean_inv(rows: Rows, xs, eps: float) -> tuple:
    """(mean, the centered vals, 1 / sqrt(var + eps)) of each row: two passes, as the
    reference's `_normalize` (the variance of the centered values, not E[x^2] - mean^2)."""
    e, t = rows.e, rows.acc_t
    mean = e.fdiv(rows.reduce(xs, "sum", 0.0, "sum"), const(t, float(rows.L)))
    centered = rows.map(xs, lambda j, v: e.sub(v, mean))
    var = e.fdiv(rows.reduce(rows.map(centered, lambda j, v: e.mul(v, v)), "sum", 0.0, "ssd"),
                 const(t, float(rows.L)))
    inv = e.fdiv(const(t, 1.0), e.intrinsic("sqrt", [e.add(var, const(t, eps))]))
    return mean, centered, inv


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


# ----- instance_norm, group_norm, mean_variance_normalization -------------------------------

@gpu_generator("instance_norm", "group_norm", inline_inputs=True, epilogue=True)
def channel_norm(kb: GpuKernelBuilder, node) -> None:
    """A row per (n, c) plane (instance_norm) or per (n, group) slab of C/G planes, which is
    contiguous (group_norm): layer_norm's two-pass statistics, then per channel
    (x - mean) * inv * scale + bias. The CPU generator's work item is the same row, walked by
    one thread; here a row gets up to a block."""
    x, out = node.inputs[0], node.outputs[0]
    attrs = kb.attrs(node)
    shape = list(kb.shape(x))
    if numel(shape) == 0:
        return no_work(kb)
    N, C, space = shape[0], shape[1], shape[2:]
    plane = numel(space)
    G = C if node.op == "instance_norm" else int(attrs["num_groups"])
    per_group = C // G
    dt = x.type.dtype
    adt = rows_kind(kb, x, dt, node.op)
    rows = Rows(kb, N * G, per_group * plane, adt, llvm_name(out.name))
    e = rows.e
    n_i, g = unflatten(kb, rows.row, [N, G], "ng")
    base = kb.imul(rows.row, rows.L)

    def channel(j):
        return kb.iadd(kb.imul(g, per_group), kb.idiv(j, plane) if per_group > 1 else 0,
                       name="c")

    def index(j):
        return [n_i, channel(j)] + unflatten(kb, kb.imod(j, plane), space, "s")

    def param(v, c):
        return read_value(kb, e, v, c, lambda: [c], adt)

    xs = rows.load(lambda j: read_value(kb, e, x, kb.iadd(base, j), lambda: index(j), adt))
    mean, centered, inv = _mean_inv(rows, xs, float(attrs["epsilon"]))
    row_params = None
    if per_group == 1:  # one channel a row: its scale and bias once
        row_params = param(node.inputs[1], channel(0)), param(node.inputs[2], channel(0))

    def put(j, d):
        scale, bias = row_params if row_params is not None else \
            (param(node.inputs[1], channel(j)), param(node.inputs[2], channel(j)))
        y = e.add(e.mul(e.mul(d, inv), scale), bias)
        kb.store_result(out, index(j), convert(e, y, adt, dt))

    rows.each(centered, put)
    kb.b.ret_void()


@gpu_generator("mean_variance_normalization", inline_inputs=True, epilogue=True)
def mean_variance_normalization(kb: GpuKernelBuilder, node) -> None:
    """(x - mean) / (sqrt(max(E[x^2] - mean^2, 0)) + eps) over `axes` (the reference's
    one-pass variance), a row per index of the other axes. The column layout only when the
    innermost axis of size > 1 is kept (adjacent rows are then adjacent in memory); with
    the default axes (0, 2, 3) a row's threads read runs of a plane."""
    x, out = node.inputs[0], node.outputs[0]
    attrs = kb.attrs(node)
    shape = list(kb.shape(x))
    rank = len(shape)
    if numel(shape) == 0:
        return no_work(kb)
    axes = sorted({int(a) % rank for a in attrs["axes"]})
    dt = x.type.dtype
    adt = rows_kind(kb, x, dt, node.op)
    big = [d for d in range(rank) if shape[d] > 1]
    rows, _, full, offset = rows_over(kb, shape, axes, adt, llvm_name(out.name),
                                       strided=bool(big) and big[-1] not in axes)
    e, t, b = rows.e, rows.acc_t, kb.b
    xs = rows.load(lambda j: read_value(kb, e, x, offset(j), lambda: full(j), adt))
    count = const(t, float(rows.L))
    mean = e.fdiv(rows.reduce(xs, "sum", 0.0, "sum"), count)
    square = e.fdiv(rows.reduce(rows.map(xs, lambda j, v: e.mul(v, v)), "sum", 0.0, "sq"), count)
    var = e.sub(square, e.mul(mean, mean))
    var = b.select(b.fcmp_ordered("<", var, const(t, 0.0)), const(t, 0.0), var, name="var")
    den = e.add(e.intrinsic("sqrt", [var]), const(t, float(attrs["epsilon"])))
    rows.each(xs, lambda j, v: kb.store_result(
        out, full(j), convert(e, e.fdiv(e.sub(v, mean), den), adt, dt)))
    b.ret_void()


# ----- batch_norm and lrn: one thread per output element ------------------------------------

def _per_output(kb: GpuKernelBuilder, node):
    """What a thread-per-output generator of x = node.inputs[0] starts from: (x, out, shape,
    dtype, accumulation dtype, its LLVM type, emitter, Ix, reader of x); None for an empty
    output (the kernel is then finished)."""
    x, out = node.inputs[0], node.outputs[0]
    shape = list(kb.shape(x))
    if numel(shape) == 0:
        _empty(kb)
        return None
    dt = x.type.dtype
    adt = rows_kind(kb, x, dt, node.op)
    ix = Ix(kb.b, wide_index(kb))
    return (x, out, shape, dt, adt, llvm_type(adt), emitter(kb, adt, llvm_name(out.name)), ix,
            _reader(kb, ix, x))


@gpu_generator("batch_norm", inline_inputs=True, epilogue=True)
def batch_norm(kb: GpuKernelBuilder, node) -> None:
    """Inference batch_norm is elementwise with a per-channel affine map: a thread per output
    element (the CPU generator's work item is a whole (n, c) plane: N * C threads)."""
    setup = _per_output(kb, node)
    if setup is None:
        return
    x, out, shape, dt, adt, t, e, ix, read = setup
    params = [(v, _reader(kb, ix, v)) for v in node.inputs[1:5]]
    flat, done = per_element(kb, ix)
    idx = ix.delinear(flat, shape)
    c = idx[1]
    scale, bias, mean, var = (convert(e, rd([c], c), v.type.dtype, adt) for v, rd in params)
    eps = const(t, float(kb.attrs(node)["epsilon"]))
    inv = e.fdiv(scale, e.intrinsic("sqrt", [e.add(var, eps)]))  # as the reference's
    y = e.add(e.mul(e.sub(convert(e, read(idx, flat), dt, adt), mean), inv), bias)
    _put(kb, ix, out, flat, idx, convert(e, y, adt, dt))
    per_element_done(kb, done)


@gpu_generator("lrn", inline_inputs=True, epilogue=True)
def lrn(kb: GpuKernelBuilder, node) -> None:
    """x / (bias + alpha/size * sum of x^2 over the channel window)^beta, a thread per output
    element summing its window (unrolled up to UNROLL_TAPS channels, the channels past an
    edge read channel 0 and add nothing). The reference subtracts prefix sums; a direct sum
    rounds differently, within a few ulps."""
    b = kb.b
    setup = _per_output(kb, node)
    if setup is None:
        return
    x, out, shape, dt, adt, t, e, ix, read = setup
    attrs = kb.attrs(node)
    C = shape[1]
    size = int(attrs["size"])
    lo, hi = (size - 1) // 2, -(-(size - 1) // 2)
    acc = b.alloca(t, name="sq")  # in the entry block: a register after SROA
    flat, done = per_element(kb, ix)
    idx = ix.delinear(flat, shape)
    b.store(const(t, 0.0), acc)

    def tap(k):  # channel c - lo + k
        cc = ix.add(idx[1], ix.add(k, -lo))
        ok = None if isinstance(cc, int) and 0 <= cc < C else ix.below(cc, C)
        src = list(idx)
        src[1] = cc if ok is None else b.select(ok, ix.v(cc), ix.v(0))
        v = convert(e, read(src), dt, adt)
        v2 = e.mul(v, v)
        b.store(e.add(b.load(acc), v2 if ok is None else b.select(ok, v2, const(t, 0.0))),
                acc)

    if lo + hi + 1 <= UNROLL_TAPS:
        for k in range(lo + hi + 1):
            tap(k)
    else:
        with counted_loop(b, ix, lo + hi + 1, "w") as k:
            tap(k)
    den = e.add(const(t, float(attrs["bias"])),
                e.mul(const(t, float(attrs["alpha"]) / size), b.load(acc, name="sqsum")))
    den = e.intrinsic("pow", [den, const(t, float(attrs["beta"]))])
    y = e.fdiv(convert(e, read(idx, flat), dt, adt), den)
    _put(kb, ix, out, flat, idx, convert(e, y, adt, dt))
    per_element_done(kb, done)
