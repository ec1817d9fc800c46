"""Resize: per-axis taps and weights precomputed at compile time with the reference's own
coordinate code (applied to an identity matrix), so every coordinate_transformation_mode,
antialias and exclude_outside match by construction; run-time scales or roi are refused.
"""

from __future__ import annotations


import numpy as np

from slimc.ir import dtypes
from slimc.ir.errors import UnsupportedError

from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import F64, const, i64, llvm_type
from .scalar_ops import Emitter
from .common import const_table, convert, entry_alloca, numel, table_load

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
    from slimc.ir.ops.spatial import _resize_axes, _resize_axis, _source_coords, resize_plan

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
    if rank == 0 or numel(oshape) == 0:
        kb.parallel_extent = 1
        if rank == 0:
            kb.store_result(out, [], b.load(X))
        b.ret_void()
        return
    rows_shape = oshape[:-1]
    kb.parallel_extent = numel(rows_shape)
    taps = 1
    tables = {}
    for d, kind, data, outside in plan:
        if kind == "nearest":
            tables[d] = (const_table(kb, data.tolist(), f"{name}.src{d}"), None, 1)
        else:
            idx, wts, T = data
            taps *= T
            tables[d] = (const_table(kb, idx.reshape(-1).tolist(), f"{name}.tap{d}"),
                         const_table(kb, wts.reshape(-1).tolist(), f"{name}.w{d}", F64), T)
        if outside.any():
            tables[d] = tables[d] + (const_table(kb, outside.astype(np.int64).tolist(),
                                            f"{name}.out{d}"),)
    kb.cost = numel(oshape) * taps * 2
    extrap = float(attrs["extrapolation_value"])
    order = [d for d, _, _, _ in plan]  # application order; the last applied is outermost
    kinds = {d: kind for d, kind, _, _ in plan}

    def value(k, idx):
        """The element after applying axes order[:len(order)-k] ... (the nested evaluation)."""
        if k == len(order):
            off = kb._ir(kb.linear([idx[j] for j in range(rank)], shape))
            return convert(e, b.load(b.gep(X, [off], inbounds=True), name="x"), dt, cdt)
        d = order[len(order) - 1 - k]
        tab = tables[d]
        o = idx[d]
        if kinds[d] == "nearest":
            src = table_load(kb, tab[0], o, f"src{d}")
            r = value(k + 1, {**idx, d: src})
        else:
            T = tab[2]
            acc = entry_alloca(kb.b, F64, f"acc{d}")
            b.store(const(F64, 0.0), acc)
            with kb.loop(0, T, name=f"t{d}") as t:
                at = b.add(b.mul(kb._ir(o), i64(T)), t, name=f"at{d}")
                src = table_load(kb, tab[0], at, f"tap{d}")
                wt = table_load(kb, tab[1], at, f"w{d}")
                v = value(k + 1, {**idx, d: src})
                b.store(b.fadd(b.load(acc), b.fmul(wt, convert(e, v, cdt, dtypes.f64))), acc)
            r = convert(e, b.load(acc), dtypes.f64, cdt)
        if len(tab) == 4:
            flag = table_load(kb, tab[3], o, f"out{d}")
            r = b.select(b.icmp_signed("!=", flag, i64(0)), const(ct, extrap), r)
        return r

    with kb.loop(kb.begin, kb.end, name="row") as row:
        ridx = kb.delinear(row, rows_shape)
        with kb.loop(0, oshape[-1], name="o") as o:
            idx = {d: ridx[d] for d in range(rank - 1)}
            idx[rank - 1] = o
            v = value(0, idx)
            full = [idx[d] for d in range(rank)]
            kb.store_result(out, full, _resize_cast(e, v, cdt, dt))
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
        return convert(e, r, src, dst)
    return convert(e, v, src, dst)
