"""Softmax along one axis: softmax, log_softmax, hardmax and lp_normalization, and the
softmax line attention's scores share (`softmax_line`). Each is a few passes over a line
with gen_norm.py's `_Axis` (vectors along a contiguous line, or across the inner lines).
"""

from __future__ import annotations

import math

from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.errors import UnsupportedError

from .common import acc_dtype, convert, emitter, entry_alloca, numel, vec_loop, vload, vstore
from .gen_norm import _Axis, _Span, _axis_layout, _line_loads, _sq
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import I64, const, i64, llvm_type, splat
from .scalar_ops import Emitter


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
    adt = acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = emitter(kb, adt, name)
    X = kb.ptr(x)
    kb.parallel_extent = outer
    kb.cost = numel(shape) * (20 if kind in ("softmax", "log_softmax") else 4)
    if numel(shape) == 0:
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
        if kind == "softmax" and keep_exp:  # exp once: kept in the output between the passes
            softmax_line(kb, e, ax, value, lambda l, n: (Y, offset(l)), store)
            return
        # Halves round after every step, as the reference computes in the input's type
        # (numpy sums halves in float32 and rounds the sum once).
        rnd = (lambda v: _round_to(e, v, dt)) if dt == dtypes.f16 else (lambda v: v)
        m = softmax_shift(kb, e, ax, value)

        def shifted(l, n):
            return rnd(e.sub(value(l, n), ax.bcast(m, n)))

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
        if inner == 1:  # the dims after the axis (if any) are all 1: index 0 there
            trailing = [0] * (len(shape) - axis - 1)

            def store(l, n, v):
                kb.store_result(out, o_idx + [l] + trailing, convert(e, v, adt, dt))

            line(o_idx, base, _Axis(kb, e, acc_t, L), store)
        else:
            def block(j, n):
                def store(l, nn, v):
                    kb.store_result(out, span.index(o_idx + [l], j), convert(e, v, adt, dt))

                line(o_idx, b.add(base, j, name="col"), _Axis(kb, e, acc_t, L, n), store)

            vec_loop(kb, 0, inner, block, "j", lanes=None if span.flat else 1)
    b.ret_void()


def softmax_shift(kb: KernelBuilder, e: Emitter, ax: _Axis, value):
    """What a softmax line subtracts before exp: its largest element that is not NaN (one
    vmaxps a vector, no NaN test: a NaN still reaches every result through the sum of the
    exps), 0 where that is not finite (a line of -inf, or none but NaNs)."""
    top = ax.reduce(value, -math.inf, "top", "max")
    finite = kb.b.fcmp_ordered("<", e.intrinsic("fabs", [top]), const(top.type, math.inf))
    return kb.b.select(finite, top, const(top.type, 0.0), name="shift")


def softmax_line(kb: KernelBuilder, e: Emitter, ax: _Axis, value, kept, store) -> None:
    """A softmax of one line in its compute type, shared by the softmax op and attention:
    exp(x - shift) is computed once and kept where `kept(l, n)` says ((buffer, offset): the
    result's own buffer), summed, then scaled by 1 / sum (a multiply, not a divide per
    element: two roundings instead of one, within two ulps of the quotient) and given to
    store(l, n, p)."""
    top = softmax_shift(kb, e, ax, value)

    def exp_kept(l, n):
        v = e.exp(e.sub(value(l, n), ax.bcast(top, n)))
        vstore(kb, v, *kept(l, n), "e")
        return v

    inv = e.fdiv(const(top.type, 1.0), ax.reduce(exp_kept, 0.0, "sum", "sum"))
    ax.foreach(lambda l, n: store(l, n, e.mul(vload(kb, *kept(l, n), n, "e"), ax.bcast(inv, n))))


def _round_to(e: Emitter, v, dt):
    """v (computed in f32) rounded to `dt` and back: per-operation rounding of halves."""
    return convert(e, convert(e, v, dtypes.f32, dt), dt, dtypes.f32)


def _hardmax_line(kb: KernelBuilder, e: Emitter, ax: _Axis, value, store, acc_t) -> None:
    """1 at the first maximum (np.argmax: a NaN counts as the maximum), 0 elsewhere."""
    b = kb.b
    lanes = ax.lanes or 1
    vt = ir.VectorType(acc_t, lanes) if lanes > 1 else acc_t
    it = ir.VectorType(I64, lanes) if lanes > 1 else I64
    best = entry_alloca(kb.b, vt, "hm.best")
    best_i = entry_alloca(kb.b, it, "hm.idx")
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
