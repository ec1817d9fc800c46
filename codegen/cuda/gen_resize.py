"""GPU generator for resize: one thread per output element.

Why not the CPU's generator, one work item per thread: its work item is a row of the output
(every element along the last axis), so an upsampled NCHW image gets N * C * H_out threads,
each walking W_out elements alone. Here every output element is a thread (`per_element`), so a
layer fills the GPU and adjacent threads store adjacent elements.

What each output reads comes from the CPU generator's plan (`_resize_plan_tables`): per resized
axis, the reference's own coordinate code applied to an identity matrix at compile time gives
the nearest source index, or the taps and weights, of every output position, so every mode,
coordinate_transformation_mode, nearest_mode, antialias and exclude_outside matches by
construction. The tables go to global memory as i32 (indices) and the compute type (weights),
read through the read-only cache. A thread evaluates the separable sum as the CPU generator
does, nested in the reference's order of axes; the taps of the innermost axes are unrolled up
to UNROLL_TAPS, loops beyond (antialiased downsampling).

Precision: floating-point inputs up to f32 interpolate in f32 (the reference and the CPU
generator in f64): a sum of a few products, a few ulps apart, and f64 is slow on most GPUs.
f64 and integer inputs interpolate in f64, so an integer result rounds as the reference's.
Every mode runs here; what the CPU generator refuses (scales, sizes or roi computed at run
time) is refused here too, by the same plan.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from slimc.ir import dtypes

from ..cpu.common import entry_alloca, numel
from ..cpu.gen_resize import _resize_cast, _resize_plan_tables
from ..cpu.kernel import llvm_name
from ..cpu.llvm_util import I32, I64, const, llvm_type
from ..cpu.scalar_ops import Emitter, convert
from .gen_window import UNROLL_TAPS, _empty, _put, _reader
from .index import Ix, counted_loop, load_or_zero, per_element, per_element_done, wide_index
from .kernel import GLOBAL, GpuKernelBuilder, gpu_generator


def _table(kb: GpuKernelBuilder, values, ty: ir.Type, name: str) -> ir.Value:
    """A constant table in global memory (not the constant bank: the threads of a warp read
    different entries, which the constant cache serializes); a pointer to entry 0."""
    values = list(values) or [0]
    arr = ir.ArrayType(ty, len(values))
    module = kb.module
    gv = ir.GlobalVariable(module, arr, name=module.get_unique_name(f"{kb.fn.name}.{name}"),
                           addrspace=GLOBAL)
    gv.global_constant = True
    gv.linkage = "internal"
    gv.initializer = ir.Constant(arr, [const(ty, v) for v in values])
    return kb.b.gep(gv, [ir.Constant(I64, 0), ir.Constant(I64, 0)], inbounds=True, name=name)


def _compute_dtype(dt, interp: bool, crop: bool):
    """The type a thread computes in (see the module's docstring)."""
    if not (interp or crop):
        return dt  # nearest: a copy
    return dtypes.f32 if dt in (dtypes.f16, dtypes.bf16, dtypes.f32) else dtypes.f64


@gpu_generator("resize", inline_inputs=True, epilogue=True)
def resize(kb: GpuKernelBuilder, node) -> None:
    """Each output element: nearest -- a table lookup per resized axis, one load; linear and
    cubic -- the nested sum over each axis's taps; tf_crop_and_resize puts
    extrapolation_value outside the crop."""
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    shape, oshape = list(kb.shape(x)), list(kb.shape(out))
    rank = len(shape)
    if numel(oshape) == 0:  # (an empty input has an empty output: type inference says so)
        return _empty(kb)
    plan = _resize_plan_tables(kb, node)
    name = llvm_name(out.name)
    dt = x.type.dtype
    interp = any(kind == "interp" for _, kind, _, _ in plan)
    crop = any(o.any() for _, _, _, o in plan)
    cdt = _compute_dtype(dt, interp, crop)
    ct = llvm_type(cdt)
    e = Emitter(b, [cdt], cdt, kb.fast_math, name)
    ix = Ix(b, wide_index(kb))
    read = _reader(kb, ix, x, invariant=True)
    extrap = const(ct, float(kb.attrs(node)["extrapolation_value"])) if crop else None
    wnp = np.float32 if cdt == dtypes.f32 else np.float64
    tables = {}
    for d, kind, data, outside in plan:
        t = {"kind": kind}
        if kind == "nearest":
            t["src"] = _table(kb, data.tolist(), I32, f"src{d}")
        else:
            idx, wts, T = data
            t["T"] = T
            t["tap"] = _table(kb, idx.reshape(-1).tolist(), I32, f"tap{d}")
            t["w"] = _table(kb, wts.reshape(-1).astype(wnp).tolist(), ct, f"w{d}")
        if outside.any():
            t["out"] = _table(kb, outside.astype(np.int8).tolist(), ir.IntType(8), f"out{d}")
        tables[d] = t
    order = [d for d, _, _, _ in plan]  # application order: the last applied is outermost
    # unroll the taps of the innermost (first applied) axes while they multiply to at most
    # UNROLL_TAPS; the axes outside loop
    unrolled, taps = set(), 1
    for d in order:
        taps *= tables[d].get("T", 1)
        if taps > UNROLL_TAPS:
            break
        unrolled.add(d)

    def entry(table, at, name):
        return load_or_zero(b, ix, table, at, None, name, invariant=True)

    def index_of(i32):
        return i32 if ix.t == I32 else b.zext(i32, ix.t)

    def value(k, idx):
        """The element at `idx` after applying axes order[:len(order) - k] (nested)."""
        if k == len(order):
            return convert(e, read([idx[a] for a in range(rank)]), dt, cdt)
        d = order[len(order) - 1 - k]
        tab, o = tables[d], idx[d]
        if tab["kind"] == "nearest":
            r = value(k + 1, {**idx, d: index_of(entry(tab["src"], o, f"src{d}"))})
        else:
            T = tab["T"]

            def term(t):
                at = ix.add(ix.mul(o, T), t)
                src = index_of(entry(tab["tap"], at, f"tap{d}"))
                return e.mul(entry(tab["w"], at, f"w{d}"), value(k + 1, {**idx, d: src}))

            if d in unrolled:
                r = None
                for t in range(T):
                    p = term(t)
                    r = p if r is None else e.add(r, p)
            else:
                acc = entry_alloca(kb.b, ct, f"acc{d}")
                b.store(const(ct, 0.0), acc)
                with counted_loop(b, ix, T, f"t{d}") as t:
                    b.store(e.add(b.load(acc), term(t)), acc)
                r = b.load(acc, name=f"sum{d}")
        if "out" in tab:
            flag = entry(tab["out"], o, f"out{d}")
            r = b.select(b.icmp_unsigned("!=", flag, ir.Constant(flag.type, 0)), extrap, r)
        return r

    flat, done = per_element(kb, ix)
    index = ix.delinear(flat, oshape)
    y = value(0, dict(enumerate(index)))
    _put(kb, ix, out, flat, index, _resize_cast(e, y, cdt, dt))
    per_element_done(kb, done)
