"""Converters for ONNX's reductions, ArgMax/ArgMin, CumSum and TopK.

ONNX spells a reduction's axes two ways: an ``axes`` attribute (ReduceSum before opset 13, the
others before 18) or an optional ``axes`` input with ``noop_with_empty_axes`` (no or empty
axes: reduce over all axes, or with the flag set over none). Both become slimc's one spelling,
``reduce_*(x) {axes=[...] | none, keepdims}``, with axes normalized (non-negative, sorted,
duplicates merged as onnxruntime does). An axes input must be known at conversion time (a
constant, or an input whose static shape says it is empty).
"""

from __future__ import annotations

import numpy as np

from . import ConvertContext, converter

# ONNX op -> (slimc op, first opset that takes axes as an input)
REDUCTIONS = {
    "ReduceSum": ("reduce_sum", 13),
    "ReduceMean": ("reduce_mean", 18),
    "ReduceMax": ("reduce_max", 18),
    "ReduceMin": ("reduce_min", 18),
    "ReduceProd": ("reduce_prod", 18),
    "ReduceL1": ("reduce_l1", 18),
    "ReduceL2": ("reduce_l2", 18),
    "ReduceSumSquare": ("reduce_sum_square", 18),
    "ReduceLogSum": ("reduce_log_sum", 18),
    "ReduceLogSumExp": ("reduce_log_sum_exp", 18),
}


def _normalize(ctx: ConvertContext, axes, rank: int) -> list:
    out = set()
    for a in axes:
        a = int(a)
        if not -rank <= a < rank:
            ctx.fail(f"axis {a} is out of range for an input of rank {rank}")
        out.add(a % rank)
    return sorted(out)


def _keepdims(ctx: ConvertContext) -> int:
    k = ctx.attr("keepdims", 1, kind="int")
    if k not in (0, 1):
        ctx.fail(f"attribute 'keepdims' must be 0 or 1, got {k}")
    return k


def _reduce_attr_form(slimc_op: str):
    def convert(ctx: ConvertContext):
        x = ctx.input(0)
        axes = ctx.attr("axes", None, kind="ints")
        axes = None if not axes else _normalize(ctx, axes, x.type.rank)
        return ctx.emit(slimc_op, [x], axes=axes, keepdims=_keepdims(ctx))

    return convert


def _reduce_input_form(slimc_op: str):
    def convert(ctx: ConvertContext):
        x = ctx.input(0)
        noop = ctx.attr("noop_with_empty_axes", 0, kind="int")
        keepdims = _keepdims(ctx)
        axes = None
        if ctx.has_input(1):
            av = ctx.input(1)
            if av.dtype.name != "i64" or av.type.rank > 1:
                ctx.fail(f"axes must be a 1-D i64 tensor, got {av.type}")
            data = ctx.const_value(1)
            if data is None:
                if av.type.rank == 1 and av.type.shape[0] == 0:
                    data = np.zeros((0,), np.int64)  # empty by its type; the values do not matter
                else:
                    ctx.unsupported(f"axes (input 1) must be a constant: slimc needs to know the "
                                    f"reduced axes at compile time, but it is computed at run time "
                                    f"({av.type} %{av.name})")
            axes = np.asarray(data).reshape(-1).tolist()
        if not axes:
            axes = [] if noop else None
        else:
            axes = _normalize(ctx, axes, x.type.rank)
        return ctx.emit(slimc_op, [x], axes=axes, keepdims=keepdims)

    return convert


for _onnx, (_slimc, _input_since) in REDUCTIONS.items():
    f1 = _reduce_attr_form(_slimc)
    f1.__name__ = f"convert_{_onnx}_attr_axes"
    converter(_onnx, since=1)(f1)
    f2 = _reduce_input_form(_slimc)
    f2.__name__ = f"convert_{_onnx}_input_axes"
    converter(_onnx, since=_input_since)(f2)


def _arg(slimc_op: str):
    def convert(ctx: ConvertContext):
        return ctx.emit(slimc_op, [ctx.input(0)], axis=ctx.attr("axis", 0, kind="int"),
                        keepdims=_keepdims(ctx),
                        select_last_index=ctx.attr("select_last_index", 0, kind="int"))

    convert.__name__ = f"convert_{slimc_op}"
    return convert


converter("ArgMax", since=1)(_arg("arg_max"))
converter("ArgMin", since=1)(_arg("arg_min"))


@converter("CumSum", since=11)
def cumsum(ctx: ConvertContext):
    return ctx.emit("cumsum", [ctx.input(0), ctx.input(1)],
                    exclusive=ctx.attr("exclusive", 0, kind="int"),
                    reverse=ctx.attr("reverse", 0, kind="int"))


@converter("TopK", since=1)
def top_k_attr(ctx: ConvertContext):
    """Opset 1-9: k is an attribute; always the largest, sorted."""
    k = ctx.attr("k", None, kind="int")
    if k is None:
        ctx.fail("attribute 'k' is required")
    kc = ctx.const(np.array([k], np.int64))
    return ctx.emit("top_k", [ctx.input(0), kc], num_outputs=2,
                    axis=ctx.attr("axis", -1, kind="int"))


@converter("TopK", since=10)
def top_k(ctx: ConvertContext):
    if not ctx.has_input(1):
        ctx.fail("input 1 (k) is required")
    return ctx.emit("top_k", [ctx.input(0), ctx.input(1)], num_outputs=2,
                    axis=ctx.attr("axis", -1, kind="int"),
                    largest=ctx.attr("largest", 1, kind="int"),
                    sorted=ctx.attr("sorted", 1, kind="int"))
