"""Data movement with loops of its own: the generators of the tensor family (ir/ops/tensor.py
and tensor_gen.py). The ops whose output element is one input element found by index
arithmetic (slice, gathers, tile, depth/space shuffles, reverse_sequence) are index maps, in
gen_views.py.

pad and trilu compute a value *or* a fill per element, which an index map cannot say (it names
a source element and nothing else), so they run their own loops -- still reading operands
through `kb.value_at` (producers are computed inline) and storing through `kb.store_result`
(elementwise consumers are applied before the store). concat and split copy pieces;
range, constant_of_shape, eye_like and one_hot compute values from indices; shape and size
write constants. The scatters, which copy and then update in order, are in gen_scatter.py
(on this module's row loops).

Every generator runs the last axis in vectors of `kb.vector_width` with a scalar tail, and its
work items (`kb.parallel_extent`) are rows, or (outer index, piece) pairs for concat / split.

Not lowered: nonzero, compress and unique, whose output sizes depend on the data; the CPU
backend compiles static shapes only, so `compile` refuses them by name (slimc/driver.py check_lowerable).

Out-of-range indices (the reference raises) are clamped to element 0 so that no load or store
leaves its buffer; negative ones count from the end as in the reference. Constant indices out
of range are refused at compile time (ir/ops/gather_scatter.py `_check_constant_indices`), and
a model input that indexes a dimension is checked by the call before any kernel runs
(entry.py `index_bounds`); an index computed inside the model is not checked.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence, Union

from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.ops.tensor_gen import _pad_widths

from .common import as_i64, const_input, divmod_index, node_axis, numel
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import I64, both_conditions, const, i64, llvm_type, load, splat, store
from .scalar_ops import Emitter, convert

Index = Union[int, ir.Value]  # an index: folded in Python, or computed in the kernel


# ----- small helpers --------------------------------------------------------------------------

def _lane_ids(kb: KernelBuilder, j: Index, lanes: int, name: str) -> ir.Value:
    """j, j+1, ..., j+lanes-1 as an i64 vector (or j as an i64 scalar)."""
    j = kb._ir(j)
    if lanes == 1:
        return j
    step = ir.Constant(ir.VectorType(I64, lanes), [i64(k) for k in range(lanes)])
    return kb.b.add(splat(kb.b, j, lanes, name), step, name=name + ".lanes")


def _axis_loop(kb: KernelBuilder, lo: Index, hi: Index, body: Callable, name: str = "j",
               vector: bool = True) -> None:
    """body(j, lanes) over [lo, hi): full vectors of kb.vector_width, then single elements
    (only single elements if not `vector`)."""
    b = kb.b
    W = kb.vector_width if vector else 1
    if isinstance(lo, int) and isinstance(hi, int):
        if hi <= lo:
            return
        vec_hi = lo + (hi - lo) // W * W if W > 1 else lo
        if vec_hi > lo:
            with kb.loop(lo, vec_hi, W, name=name + "v") as j:
                kb.cache.clear()
                body(j, W)
        if hi > vec_hi:
            if hi - vec_hi == 1:
                kb.cache.clear()
                body(vec_hi, 1)
            else:
                with kb.loop(vec_hi, hi, 1, name=name + "s") as j:
                    kb.cache.clear()
                    body(j, 1)
        kb.cache.clear()
        return
    lo_v, hi_v = kb._ir(lo), kb._ir(hi)
    if W > 1:
        span = b.sub(hi_v, lo_v, name=name + ".span")
        span = b.select(b.icmp_signed("<", span, i64(0)), i64(0), span, name=name + ".count")
        vec_hi = b.add(lo_v, b.mul(b.udiv(span, i64(W)), i64(W)), name=name + ".vend")
        with kb.loop(lo_v, vec_hi, W, name=name + "v") as j:
            kb.cache.clear()
            body(j, W)
        lo_v = vec_hi
    with kb.loop(lo_v, hi_v, 1, name=name + "s") as j:
        kb.cache.clear()
        body(j, 1)
    kb.cache.clear()


@contextlib.contextmanager
def _each_row(kb: KernelBuilder, shape: Sequence[int], name: str = "row"):
    """The work items are the rows of `shape` (every axis but the last): yields a row's index."""
    outer = list(shape[:-1])
    kb.parallel_extent = max(1, numel(outer))
    with kb.loop(kb.begin, kb.end, name=name) as r:
        kb.cache.clear()
        yield kb.delinear(r, outer) if outer else []


def _fill(kb: KernelBuilder, out, value: Callable, name: str) -> None:
    """A generator body computing every element of `out` from its index: value(row, j, lanes)
    with `row` the index of every axis but the last and j the last one."""
    shape = kb.shape(out)
    if numel(shape) == 0:
        kb.b.ret_void()
        return
    if not shape:
        kb.store_result(out, [], value([], None, 1))
        kb.b.ret_void()
        return
    with _each_row(kb, shape, name=name + ".row") as row:
        _axis_loop(kb, 0, shape[-1], lambda j, lanes: kb.store_result(
            out, row + [j], value(row, j, lanes)), name=name + ".j")
    kb.b.ret_void()


def _nest(kb: KernelBuilder, shape: Sequence[int], first: int, prefix: Sequence[Index],
          body: Callable, name: str) -> None:
    """Loops over axes first .. rank-2 of `shape`, then the last axis in vectors:
    body(full index, lanes)."""
    rank = len(shape)
    if rank == 0:
        kb.cache.clear()
        body([], 1)
        return

    def level(a: int, idx: list):
        if a == rank - 1:
            _axis_loop(kb, 0, shape[-1], lambda j, lanes: body(idx + [j], lanes), name=f"{name}.d{a}")
            return
        if shape[a] == 1:
            level(a + 1, idx + [0])
            return
        with kb.loop(0, shape[a], name=f"{name}.d{a}") as i:
            kb.cache.clear()
            level(a + 1, idx + [i])

    level(first, list(prefix))


def _flat_copy(kb: KernelBuilder, src, src_off: Index, dst, dst_off: Index, n: int, name: str) -> None:
    """dst[dst_off : dst_off+n] = src[src_off : src_off+n], both buffers of this kernel."""
    b = kb.b
    sp, dp = kb.ptr(src), kb.ptr(dst)

    def body(j, lanes):
        x = load(b, sp, kb._ir(kb.iadd(src_off, j, name + ".src")), lanes, name=name + ".x")
        store(b, x, dp, kb._ir(kb.iadd(dst_off, j, name + ".dst")), name=name)

    _axis_loop(kb, 0, n, body, name=name + ".i")


def _is_buffer(kb: KernelBuilder, v) -> bool:
    return id(v) not in kb.produced and id(v) in kb.ptrs


# ----- pad and trilu: a value or a fill per element -------------------------------------------

def pad_geometry(width, d: int) -> tuple:
    """(lo, L, gb) of one axis of a pad: the kept input [lo, lo + L) (negative pads crop) and
    the leading pad gb."""
    begin, end = width
    lo, hi = max(0, -begin), d - max(0, -end)
    return lo, hi - lo, max(begin, 0)


def fold_pad_index(t: int, L: int, mode: str) -> tuple:
    """A compile-time index t (0: the first kept input element) folded by `mode`: (index,
    on-input flag) in constant mode, else (index folded onto [0, L), None)."""
    if mode == "constant":
        return t, 0 <= t < L
    if mode == "edge":
        t = min(max(t, 0), L - 1)
    elif mode == "reflect":
        t = -t if t < 0 else (2 * (L - 1) - t if t >= L else t)
    else:
        t %= L
    return t, None


def _pad_source(kb: KernelBuilder, mode: str, o: Index, width, d: int, name: str):
    """(source index, in-range flag or None) along one axis for output index o.

    Negative pads crop: the kept input is [lo, hi). Constant mode says whether o is on the
    input (the caller fills otherwise); the other modes fold o back onto [lo, hi)."""
    if width[0] == 0 and width[1] == 0:
        return o, None
    lo, L, gb = pad_geometry(width, d)
    b = kb.b
    if isinstance(o, int):  # a size-1 output axis
        t, ok = fold_pad_index(o - gb, L, mode)
        return t + lo, ok
    t = b.sub(o, i64(gb), name=name + ".t") if gb else o
    if mode == "constant":
        ok = b.icmp_unsigned("<", t, i64(L), name=name + ".in")  # 0 <= t < L
        return kb.iadd(t, lo, name + ".src"), ok
    if mode == "edge":
        t = b.select(b.icmp_signed("<", t, i64(0)), i64(0), t, name=name + ".lo")
        t = b.select(b.icmp_signed(">", t, i64(L - 1)), i64(L - 1), t, name=name + ".hi")
    elif mode == "reflect":
        t = b.select(b.icmp_signed("<", t, i64(0)), b.neg(t, name=name + ".mirror0"), t, name=name + ".lo")
        t = b.select(b.icmp_signed(">=", t, i64(L)), b.sub(i64(2 * (L - 1)), t, name=name + ".mirror1"), t,
                     name=name + ".hi")
    else:  # wrap: t >= -gb, so adding a multiple of L above gb makes it non-negative
        t = b.urem(b.add(t, i64(L * (-(-gb // L)))), i64(L), name=name + ".wrap")
    return kb.iadd(t, lo, name + ".src"), None


@generator("pad", inline_inputs=True, epilogue=True)
def pad(kb: KernelBuilder, node) -> None:
    """Per output row: a left pad, the copied middle (contiguous: full vectors), a right pad.
    Constant mode fills whole rows that lie outside the input on an outer axis."""
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    mode = kb.attrs(node)["mode"]
    in_shape, out_shape = kb.shape(x), kb.shape(out)
    rank = len(in_shape)
    axes = const_input(node, 3, "the padded axes")
    widths = _pad_widths(rank, const_input(node, 1, "the pads"), axes)
    name = llvm_name(out.name)
    if numel(out_shape) == 0:
        b.ret_void()
        return
    if rank == 0:
        kb.store_result(out, [], kb.value_at(x, []))
        b.ret_void()
        return
    t = llvm_type(out.type.dtype)
    fill = const(t, 0)
    v = node.inputs[2] if len(node.inputs) > 2 else None
    if mode == "constant" and v is not None and v.type.numel:
        fill = kb.value_at(v, [0] * len(kb.shape(v)))  # in the entry block: dominates the loops
    N = out_shape[-1]
    begin, end = widths[-1]
    gb = max(begin, 0)
    L = in_shape[-1] - max(0, -begin) - max(0, -end)  # input elements kept on the last axis

    with _each_row(kb, out_shape, name=name + ".row") as row:
        src, ok = [], None
        for a in range(rank - 1):
            s, f = _pad_source(kb, mode, row[a], widths[a], in_shape[a], f"{name}.a{a}")
            src.append(s)
            ok = both_conditions(kb.b, ok, f, f"{name}.in{a}")

        def put(j, lanes, x_val):
            kb.store_result(out, row + [j], x_val)

        def pad_value(j, lanes):
            put(j, lanes, splat(b, fill, lanes, name + ".fill"))

        def copy(j, lanes):
            put(j, lanes, kb.value_at(x, src + [kb.iadd(j, -begin, name + ".src")], lanes))

        def remap(j, lanes):
            s, _ = _pad_source(kb, mode, j, widths[-1], in_shape[-1], name + ".last")
            put(j, lanes, kb.value_at(x, src + [s], 1))

        edge = pad_value if mode == "constant" else remap
        vector = mode == "constant"  # remapped edges (reflect, edge, wrap) go element by element

        def whole_row():
            _axis_loop(kb, 0, min(gb, N), edge, name=name + ".left", vector=vector)
            _axis_loop(kb, gb, gb + max(L, 0), copy, name=name + ".mid")
            _axis_loop(kb, gb + max(L, 0), N, edge, name=name + ".right", vector=vector)

        if ok is None or ok is True:
            whole_row()
        elif ok is False:
            _axis_loop(kb, 0, N, pad_value, name=name + ".fill")
        else:
            on = b.function.append_basic_block(name + ".on_input")
            off = b.function.append_basic_block(name + ".padded_row")
            done = b.function.append_basic_block(name + ".row_done")
            b.cbranch(ok, on, off)
            b.position_at_end(on)
            kb.cache.clear()
            whole_row()
            b.branch(done)
            b.position_at_end(off)
            kb.cache.clear()
            _axis_loop(kb, 0, N, pad_value, name=name + ".fill")
            b.branch(done)
            b.position_at_end(done)
            kb.cache.clear()
    b.ret_void()


@generator("trilu", inline_inputs=True, epilogue=True)
def trilu(kb: KernelBuilder, node) -> None:
    """x where the column is on the kept side of diagonal k of its row, else 0 (a vector
    compare of the lane columns against the row's boundary)."""
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    upper = bool(kb.attrs(node)["upper"])
    name = llvm_name(out.name)
    kv = node.inputs[1] if len(node.inputs) > 1 else None
    if kv is None:
        k: Index = 0
    elif kv.data is not None:
        k = int(kv.data.reshape(-1)[0])
    else:  # a run-time k: loaded once, in the entry block
        k = as_i64(kb, kb.value_at(kv, [0] * len(kb.shape(kv))), kv.type.dtype, name + ".k")
    zero = const(llvm_type(out.type.dtype), 0)

    def value(row, j, lanes):
        i = row[-1]
        edge = kb._ir(kb.iadd(i, k, name + ".diag"))  # keep j >= i + k (upper), j <= i + k (lower)
        cols = _lane_ids(kb, j, lanes, name + ".col")
        keep = b.icmp_signed(">=" if upper else "<=", cols, splat(b, edge, lanes, name + ".diag"),
                             name=name + ".keep")
        return b.select(keep, kb.value_at(x, row + [j], lanes), splat(b, zero, lanes), name=name)

    _fill(kb, out, value, name)


# ----- concat and split: pieces copied between a whole and its parts ---------------------------

def _pieces(kb: KernelBuilder, whole_shape, parts, axis: int, name: str, emit: Callable) -> None:
    """Work items are (outer index, part) pairs, the outer index running over the axes before
    `axis`; emit(part number, outer index, outer as flat) copies one part's slab."""
    b = kb.b
    P = len(parts)
    outer_shape = list(whole_shape[:axis])
    outer = numel(outer_shape)
    if outer == 0 or numel(whole_shape) == 0:
        b.ret_void()
        return
    kb.parallel_extent = outer * P
    with kb.loop(kb.begin, kb.end, name=name + ".item") as w:
        kb.cache.clear()
        o, p = divmod_index(kb, w, P, name + ".item")
        o_idx = kb.delinear(o, outer_shape) if outer_shape else []
        live = [k for k in range(P) if numel(kb.shape(parts[k])) > 0]
        if P == 1:
            if live:
                emit(0, o_idx, o)
        else:
            done = b.function.append_basic_block(name + ".part_done")
            sw = b.switch(p, done)
            for k in live:
                blk = b.function.append_basic_block(f"{name}.part{k}")
                sw.add_case(i64(k), blk)
                b.position_at_end(blk)
                kb.cache.clear()
                emit(k, o_idx, o)
                b.branch(done)
            b.position_at_end(done)
            kb.cache.clear()
    b.ret_void()


@generator("concat", inline_inputs=True, epilogue=True)
def concat(kb: KernelBuilder, node) -> None:
    """Each input copied into its slab of the output: a flat vector copy when the input is a
    buffer and nothing is fused after the concat, else index by index through value_at."""
    out = node.outputs[0]
    shape = kb.shape(out)
    axis = node_axis(kb, node, len(shape))
    name = llvm_name(out.name)
    offsets, acc = [], 0
    for x in node.inputs:
        offsets.append(acc)
        acc += kb.shape(x)[axis]
    row = numel(shape[axis:])
    plain = list(kb.outputs) == [out]

    def emit(k, o_idx, o):
        x = node.inputs[k]
        xs = kb.shape(x)
        if plain and _is_buffer(kb, x):
            n = numel(xs[axis:])
            _flat_copy(kb, x, kb.imul(o, n, f"{name}.in{k}.base"), out,
                       kb.iadd(kb.imul(o, row, f"{name}.out{k}.row"), offsets[k] * numel(xs[axis + 1:]),
                            f"{name}.out{k}.base"), n, f"{name}.part{k}")
            return

        def body(idx, lanes):
            dst = list(idx)
            dst[axis] = kb.iadd(idx[axis], offsets[k], f"{name}.at{k}")
            kb.store_result(out, dst, kb.value_at(x, idx, lanes))

        _nest(kb, xs, axis, o_idx, body, f"{name}.part{k}")

    _pieces(kb, shape, list(node.inputs), axis, name, emit)


@generator("split", inline_inputs=True)
def split(kb: KernelBuilder, node) -> None:
    """Each output is a slab of the input (outputs nobody reads are skipped)."""
    x = node.inputs[0]
    shape = kb.shape(x)
    axis = node_axis(kb, node, len(shape))
    name = llvm_name(x.name) + ".split"
    offsets, acc = [], 0
    for o in node.outputs:
        offsets.append(acc)
        acc += kb.shape(o)[axis]
    row = numel(shape[axis:])
    written = {id(v) for v in kb.outputs}

    def emit(k, o_idx, o):
        y = node.outputs[k]
        if id(y) not in written:
            return
        ys = kb.shape(y)
        if _is_buffer(kb, x):
            n = numel(ys[axis:])
            _flat_copy(kb, x, kb.iadd(kb.imul(o, row, f"{name}.in{k}.row"), offsets[k] * numel(ys[axis + 1:]),
                                   f"{name}.in{k}.base"),
                       y, kb.imul(o, n, f"{name}.out{k}.base"), n, f"{name}.part{k}")
            return

        def body(idx, lanes):
            src = list(idx)
            src[axis] = kb.iadd(idx[axis], offsets[k], f"{name}.at{k}")
            kb.store_value(y, idx, kb.value_at(x, src, lanes))

        _nest(kb, ys, axis, o_idx, body, f"{name}.part{k}")

    _pieces(kb, shape, list(node.outputs), axis, name, emit)


# ----- values computed from indices -----------------------------------------------------------

@generator("range", inline_inputs=True, epilogue=True)
def range_(kb: KernelBuilder, node) -> None:
    """start + i * delta: integers in i64 (wrapping to the dtype), floats in double as the
    reference computes them (f16: the double result rounds to f16 through f32)."""
    b = kb.b
    start, _, delta = node.inputs
    out = node.outputs[0]
    dt = out.type.dtype
    name = llvm_name(out.name)
    wide = dtypes.i64 if not dt.is_float else dtypes.f64
    e = Emitter(b, [dt], wide, (), name)

    def scalar(v):
        return convert(e, kb.value_at(v, [0] * len(kb.shape(v))), dt, wide)

    s, d = scalar(start), scalar(delta)

    def value(row, j, lanes):
        i = _lane_ids(kb, j, lanes, name + ".i")
        if dt.is_float:
            i = b.sitofp(i, ir.VectorType(llvm_type(wide), lanes) if lanes > 1 else llvm_type(wide),
                         name=name + ".if")
            r = b.fadd(splat(b, s, lanes, name + ".start"), b.fmul(i, splat(b, d, lanes, name + ".delta"),
                                                                    name=name + ".step"), name=name + ".wide")
        else:
            r = b.add(splat(b, s, lanes, name + ".start"), b.mul(i, splat(b, d, lanes, name + ".delta"),
                                                                  name=name + ".step"), name=name + ".wide")
        return convert(e, r, wide, dt)

    _fill(kb, out, value, name)


def _scalar_const(dtype, value) -> ir.Constant:
    """`value` as numpy's astype(dtype) makes it, as an LLVM constant."""
    import numpy as np

    v = np.asarray(value).astype(dtype.numpy).reshape(-1)[0].item()
    return const(llvm_type(dtype), v)


@generator("constant_of_shape", inline_inputs=True, epilogue=True)
def constant_of_shape(kb: KernelBuilder, node) -> None:
    out = node.outputs[0]
    c = _scalar_const(out.type.dtype, kb.attrs(node)["value"])
    _fill(kb, out, lambda row, j, lanes: splat(kb.b, c, lanes), llvm_name(out.name))


@generator("eye_like", inline_inputs=True, epilogue=True)
def eye_like(kb: KernelBuilder, node) -> None:
    """1 where column == row + k, else 0 (the input's data is never read)."""
    b = kb.b
    out = node.outputs[0]
    k = int(kb.attrs(node)["k"])
    name = llvm_name(out.name)
    t = llvm_type(out.type.dtype)

    def value(row, j, lanes):
        diag = splat(b, kb._ir(kb.iadd(row[0], k, name + ".diag")), lanes, name + ".diag")
        on = b.icmp_signed("==", _lane_ids(kb, j, lanes, name + ".col"), diag, name=name + ".on")
        return b.select(on, splat(b, const(t, 1), lanes), splat(b, const(t, 0), lanes), name=name)

    _fill(kb, out, value, name)


@generator("one_hot", inline_inputs=True, epilogue=True)
def one_hot(kb: KernelBuilder, node) -> None:
    """values[1] where the (truncated, wrapped) index equals the position along `axis`, else
    values[0]. Along the last axis: one index per row against the lane positions; otherwise
    a vector of indices against the row's position."""
    b = kb.b
    indices, _, values = node.inputs
    out = node.outputs[0]
    name = llvm_name(out.name)
    rank = len(kb.shape(out))
    axis = node_axis(kb, node, rank)
    depth = int(const_input(node, 1, "the depth").reshape(-1)[0])
    vrank = len(kb.shape(values))
    off = kb.value_at(values, [0] * (vrank - 1) + [0])  # entry block: dominates every row
    on = kb.value_at(values, [0] * (vrank - 1) + [1])
    idt = indices.type.dtype

    def hot(v, lanes):
        v = as_i64(kb, v, idt, name + ".idx")
        neg = b.icmp_signed("<", v, splat(b, i64(0), lanes), name=name + ".neg")
        return b.select(neg, b.add(v, splat(b, i64(depth), lanes)), v, name=name + ".hot")

    def value(row, j, lanes):
        if axis == rank - 1:
            h = splat(b, hot(kb.value_at(indices, row), 1), lanes, name + ".hot")
            pos = _lane_ids(kb, j, lanes, name + ".pos")
        else:
            h = hot(kb.value_at(indices, row[:axis] + row[axis + 1:] + [j], lanes), lanes)
            pos = splat(b, kb._ir(row[axis]), lanes, name + ".pos")
        eq = b.icmp_signed("==", h, pos, name=name + ".is_hot")
        return b.select(eq, splat(b, on, lanes), splat(b, off, lanes), name=name)

    _fill(kb, out, value, name)


# ----- metadata (normally folded to constants before code generation) -------------------------

@generator("shape", inline_inputs=True, epilogue=True)
def shape_(kb: KernelBuilder, node) -> None:
    attrs = kb.attrs(node)
    dims = list(kb.shape(node.inputs[0]))[attrs["start"]:attrs["end"]]
    out = node.outputs[0]
    kb.parallel_extent = 1
    for i, d in enumerate(dims):
        kb.store_result(out, [i], i64(d))
    kb.b.ret_void()


@generator("size", inline_inputs=True, epilogue=True)
def size_(kb: KernelBuilder, node) -> None:
    kb.parallel_extent = 1
    kb.store_result(node.outputs[0], [], i64(numel(kb.shape(node.inputs[0]))))
    kb.b.ret_void()
