"""The reduction generator: reduce_sum, _mean, _max, _min, _prod, _l1, _l2, _log_sum,
_log_sum_exp and _sum_square over any axes, reading operands inline and applying epilogues.

A generator (``@generator``, kernel.py) emits its own loops with ``kb.loop``, reads operands
with ``kb.value_at`` (which computes any fused producer inline) and hands each result to
``kb.store_result`` (which applies the fused epilogue and stores); ``kb.parallel_extent`` is
its number of independent work items, of which it runs ``[kb.begin, kb.end)``.
"""

from __future__ import annotations

import math


from llvmlite import ir

from slimc.ir import dtypes


from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import const, is_float, llvm_type, vector_of
from .scalar_ops import Emitter, convert


# ----- reductions ---------------------------------------------------------------------------

REDUCTIONS = ("reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod", "reduce_l1",
              "reduce_l2", "reduce_sum_square", "reduce_log_sum", "reduce_log_sum_exp")


def _accumulator_dtype(dtype, kind: str):
    """Halves accumulate in f32; integers use float64 for the float-defined reductions."""
    if dtype == dtypes.f16:
        return dtypes.f32
    if not dtype.is_float and kind in ("reduce_mean", "reduce_l2", "reduce_log_sum",
                                       "reduce_log_sum_exp"):
        return dtypes.f64
    return dtype


def _identity(kind: str, acc_dtype):
    """The accumulator's start (log_sum_exp sums exp(x - max) from 0; its max starts at -inf)."""
    if kind == "reduce_max":
        return -math.inf if acc_dtype.is_float else _int_limits(acc_dtype)[0]
    if kind == "reduce_min":
        return math.inf if acc_dtype.is_float else _int_limits(acc_dtype)[1]
    if kind == "reduce_prod":
        return 1
    return 0


def _int_limits(dtype):
    import numpy as np

    if dtype == dtypes.bool:
        return 0, 1
    info = np.iinfo(dtype.numpy)
    return int(info.min), int(info.max)


def _splat_const(t: ir.Type, value) -> ir.Constant:
    """A constant of scalar or vector type t with every lane `value`."""
    if isinstance(t, ir.VectorType):
        return ir.Constant(t, [const(t.element, value)] * t.count)
    return const(t, value)


@generator(*REDUCTIONS, inline_inputs=True, epilogue=True)
def reduce(kb: KernelBuilder, node):
    """One work item per output element; an inner loop nest over the reduced axes.

    The accumulator lives in an alloca that LLVM promotes to a register; with ``reassoc`` in
    force the innermost loop over a contiguous axis vectorizes.
    """
    b = kb.b
    kind = node.op
    x, out = node.inputs[0], node.outputs[0]
    attrs = kb.attrs(node)
    in_shape = kb.shape(x)
    rank = len(in_shape)
    axes = list(range(rank)) if attrs["axes"] is None else sorted(a % rank for a in attrs["axes"])
    kept = [d for d in range(rank) if d not in axes]
    kept_shape = [in_shape[d] for d in kept]
    count = 1
    for d in axes:
        count *= in_shape[d]
    in_dt, out_dt = x.type.dtype, out.type.dtype
    acc_dt = _accumulator_dtype(in_dt, kind)
    acc_t = llvm_type(acc_dt)
    e = Emitter(b, [acc_dt], acc_dt, kb.fast_math, llvm_name(out.name))
    # Reducing outer axes and keeping a last axis of whole vectors (a global pool over a
    # blocked NCHW[b]c tensor): each work item reduces one vector of outputs at once.
    lanes = kb.vector_width
    if not (kept and kept[-1] == rank - 1 and kept_shape[-1] % lanes == 0 and in_dt.is_float
            and acc_dt == in_dt and kind in ("reduce_sum", "reduce_mean", "reduce_max",
                                             "reduce_min")):
        lanes = 1
    iter_shape = kept_shape[:-1] + [kept_shape[-1] // lanes] if lanes > 1 else kept_shape
    n_out = 1
    for d in iter_shape:
        n_out *= d
    kb.parallel_extent = n_out
    # the work is the elements read, not the few outputs (a global pool of 112x112 pixels
    # for 6 channel blocks was priced 6 and ran on one thread)
    kb.cost = n_out * lanes * count
    acc_t = vector_of(acc_t, lanes)
    acc = b.alloca(acc_t, name=llvm_name(out.name) + ".acc")
    mx = b.alloca(acc_t, name=llvm_name(out.name) + ".max")

    def for_each_reduced(body):
        def nest(level, index):
            if level == len(axes):
                body(index)
                return
            with kb.loop(0, in_shape[axes[level]], name=f"r{level}") as i:
                nest(level + 1, {**index, axes[level]: i})
        nest(0, {})

    with kb.loop(kb.begin, kb.end, name="o") as o:
        kept_index = kb.delinear(o, iter_shape) if kept_shape else []
        if lanes > 1:
            kept_index[-1] = kb.imul(kept_index[-1], lanes)

        def full_index(red):
            idx, k = [], 0
            for d in range(rank):
                if d in red:
                    idx.append(red[d])
                else:
                    idx.append(kept_index[k])
                    k += 1
            return idx

        def element(red):
            v = kb.value_at(x, full_index(red), lanes)
            kb.cache.clear()  # the index changes every iteration
            return convert(e, v, in_dt, acc_dt)

        if kind == "reduce_log_sum_exp":
            b.store(const(acc_t, -math.inf), mx)
            for_each_reduced(lambda red: b.store(e.max(b.load(mx), element(red)), mx))
        b.store(_splat_const(acc_t, _identity(kind, acc_dt)), acc)

        def accumulate(red):
            v = element(red)
            a = b.load(acc)
            if kind in ("reduce_sum", "reduce_mean"):
                r = e.add(a, v)
            elif kind == "reduce_max":
                r = e.max(a, v)
            elif kind == "reduce_min":
                r = e.min(a, v)
            elif kind == "reduce_prod":
                r = e.mul(a, v)
            elif kind == "reduce_l1":
                r = e.add(a, e.intrinsic("fabs", [v]) if is_float(v.type) else
                          e.select(e.lt(v, const(v.type, 0)), b.neg(v), v))
            elif kind in ("reduce_l2", "reduce_sum_square"):
                r = e.add(a, e.mul(v, v))
            elif kind == "reduce_log_sum":
                r = e.add(a, v)
            else:  # log_sum_exp
                m = b.load(mx)
                r = e.add(a, e.exp(e.sub(v, m)))
            b.store(r, acc)

        for_each_reduced(accumulate)
        result = b.load(acc, name=llvm_name(out.name) + ".sum")
        if kind == "reduce_mean":  # (integer means accumulate in f64: see _accumulator_dtype)
            result = e.fdiv(result, _splat_const(acc_t, count))
        elif kind == "reduce_l2":
            result = e.intrinsic("sqrt", [result])
        elif kind == "reduce_log_sum":
            result = e.log(result)
        elif kind == "reduce_log_sum_exp":
            m = b.load(mx)
            finite = b.fcmp_ordered("!=", m, const(acc_t, -math.inf))
            result = b.select(finite, e.add(m, e.log(result)), m)
        result = convert(e, result, acc_dt, out_dt)
        out_index = []
        k = 0
        for d in range(rank):
            if d in axes:
                if attrs["keepdims"]:
                    out_index.append(0)
            else:
                out_index.append(kept_index[k])
                k += 1
        kb.store_result(out, out_index, result)
    b.ret_void()
