"""Generators for the reduction-like ops that are not plain reductions.

* ``arg_max`` / ``arg_min`` -- a running (best value, best index) pair per output element.
* ``cumsum`` -- a running sum along the axis (``exclusive``, ``reverse``).
* ``top_k`` -- an insertion sort of the k best indices per row (two outputs).
* ``einsum`` -- a plain loop nest over every label: output labels outside, summed labels
  inside, one accumulator per output element.
* ``det`` -- LU decomposition with partial pivoting on a stack copy of each matrix.

The axis-wise ops (arg reductions, cumsum) share one loop shape (`_AxisLoops`): a work item
is one position of the other axes but the last, and one block of at most `COLUMN_BLOCK`
last-axis columns, whose running state lives in small stack arrays. The innermost loop then
runs over contiguous columns (it vectorizes). When the reduced axis is the last one, cumsum is
a scalar scan along contiguous memory and the arg reductions scan in vector lanes.

Semantics follow the numpy references in ``ir/ops/reduce.py`` and ``ir/ops/linalg.py``:
float16 computes in float32; NaN wins an arg reduction (the first NaN, or the last with
``select_last_index``); top_k orders NaN above every number and breaks ties by the lower
index.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Sequence

from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.errors import InternalError, UnsupportedError
from slimc.ir.ops.linalg import parse_equation

from .kernel import Index, KernelBuilder, generator, llvm_name
from .llvm_util import I32, I64, const, elem_bytes, i64, llvm_type, splat, typed_ptr
from .common import numel
from .scalar_ops import Emitter, convert

COLUMN_BLOCK = 256  # last-axis columns per work item in the axis-wise ops
DET_STACK_BYTES = 16384  # det copies a matrix this small to the stack, a larger one to the arena


# ----- small helpers ------------------------------------------------------------------------

def _work_dtype(dt):
    """Halves compute in f32 (the references' astype(float32)); everything else as is."""
    return dtypes.f32 if dt in (dtypes.f16, dtypes.bf16) else dt


def _no_reassoc(kb: KernelBuilder) -> tuple:
    """Fast-math flags without ``reassoc``: scans and LU keep their sequential order."""
    return tuple(f for f in kb.fast_math if f != "reassoc")


def _unflatten(kb: KernelBuilder, flat: Index, shape: Sequence[int], name: str) -> list:
    """Row-major multi-index of `flat` (< numel(shape)) in `shape`; size-1 axes give 0 and
    the outermost non-trivial axis needs no remainder."""
    b = kb.b
    out: list = []
    strides = kb.strides(shape)
    outer = True
    for k, (d, st) in enumerate(zip(shape, strides)):
        if d == 1:
            out.append(0)
            continue
        if isinstance(flat, int):
            q = flat // st
            out.append(q if outer else q % d)
        else:
            q = flat if st == 1 else b.udiv(flat, i64(st), name=f"{name}.q{k}")
            out.append(q if outer else b.urem(q, i64(d), name=f"{name}.i{k}"))
        outer = False
    return out


@contextlib.contextmanager
def _work_items(kb: KernelBuilder, name: str) -> Iterator[Index]:
    """Loop over this call's work items [begin, end) of `kb.parallel_extent`.

    With a single work item there is no loop, only a ``begin < end`` guard: a loop whose body
    does not depend on its counter lets LLVM 22's loop vectorizer take time exponential in
    the length of a fully unrolled inner scan (seconds for 16 elements of a 1-D arg_max).
    """
    b = kb.b
    if kb.parallel_extent != 1:
        with kb.loop(kb.begin, kb.end, name=name) as w:
            yield w
        return
    body = b.function.append_basic_block(f"{name}.only")
    done = b.function.append_basic_block(f"{name}.exit")
    b.cbranch(b.icmp_signed("<", kb.begin, kb.end, name=f"{name}.any"), body, done)
    b.position_at_end(body)
    yield 0
    b.branch(done)
    b.position_at_end(done)


def _load(kb: KernelBuilder, v, index) -> ir.Value:
    """`v` at a run-time index; the cache is dropped since the index changes per iteration."""
    x = kb.value_at(v, index)
    kb.cache.clear()
    return x


class _Cmp:
    """Comparisons on one dtype (signed, unsigned, or float with NaN tests), named."""

    def __init__(self, b: ir.IRBuilder, dt, name: str):
        self.b, self.dt, self.name = b, dt, name

    def cmp(self, op: str, x, y, name: str) -> ir.Value:
        """Ordered float compare (false on NaN) or integer compare."""
        if self.dt.is_float:
            return self.b.fcmp_ordered(op, x, y, name=name)
        if self.dt.is_signed:
            return self.b.icmp_signed(op, x, y, name=name)
        return self.b.icmp_unsigned(op, x, y, name=name)

    def isnan(self, x, name: str) -> ir.Value:
        return self.b.fcmp_unordered("uno", x, x, name=name)


# ----- the loop shape of axis-wise ops ------------------------------------

class _AxisLoops:
    """Work items over (outer position, block of last-axis columns) around one axis.

    The shape is ``pre + [n] + post``. The outer positions are ``pre + post[:-1]``; the
    columns are the last axis of ``post`` (1 when the reduced axis is the last one), cut
    into blocks of at most `COLUMN_BLOCK` so a work item's running state fits small stack
    arrays. Column loops run over contiguous memory with no index division.
    """

    def __init__(self, kb: KernelBuilder, shape: Sequence[int], axis: int, name: str):
        self.kb, self.name = kb, name
        self.shape = tuple(shape)
        self.axis = axis
        self.n = self.shape[axis]
        self.has_cols = axis < len(self.shape) - 1
        self.outer = self.shape[:axis] + (self.shape[axis + 1:-1] if self.has_cols else ())
        self.cols = self.shape[-1] if self.has_cols else 1
        self.block = max(1, min(self.cols, COLUMN_BLOCK))
        self.nblk = -(-self.cols // self.block)
        self.extent = numel(self.outer) * self.nblk

    def empty(self) -> bool:
        return numel(self.shape) == 0

    def scratch(self, t: ir.Type, what: str) -> ir.Value:
        """A stack array of one entry per column of a block (in the entry block)."""
        return self.kb.b.alloca(t, size=i64(self.block), name=f"{self.name}.{what}")

    def work_item(self, w):
        """(outer index list, first column, number of columns) of work item `w`."""
        b = self.kb.b
        if self.nblk == 1:
            p, lo, width = w, 0, self.cols
        else:
            p = b.udiv(w, i64(self.nblk), name=f"{self.name}.outer")
            cb = b.urem(w, i64(self.nblk), name=f"{self.name}.cblk")
            lo = b.mul(cb, i64(self.block), name=f"{self.name}.col0")
            hi_full = b.add(lo, i64(self.block))
            hi = b.select(b.icmp_signed("<", hi_full, i64(self.cols)), hi_full, i64(self.cols),
                          name=f"{self.name}.col1")
            width = b.sub(hi, lo, name=f"{self.name}.ncols")
        outer = _unflatten(self.kb, p, self.outer, f"{self.name}.o") if self.outer else []
        return outer, lo, width

    def columns(self, width, body: Callable) -> None:
        """body(j) for each column j of the block (no loop when a block is one column)."""
        if self.block == 1:
            body(0)
            return
        with self.kb.loop(0, width, name=f"{self.name}.c") as j:
            body(j)

    def index(self, outer, i, lo, j) -> list:
        """The input index at axis position `i`, column `lo + j`."""
        pre, mid = list(outer[:self.axis]), list(outer[self.axis:])
        if not self.has_cols:
            return pre + [i]
        return pre + [i] + mid + [self.kb.iadd(lo, j)]

    def elem(self, arr: ir.Value, j, name: str) -> ir.Value:
        """Address of entry j of a scratch array."""
        return self.kb.b.gep(arr, [self.kb._ir(j)], inbounds=True, name=name)


# ----- arg_max / arg_min ----------------------------------------------------------------------

@generator("arg_max", "arg_min")
def arg_reduce(kb: KernelBuilder, node) -> None:
    """Index of the max (min) along an axis. NaN beats any number; ties keep the first index
    (or the last, with select_last_index): the new element replaces the running best when
    strictly better (or at least as good).

    Along the last axis (a contiguous scan) rows of at least two vectors run `vector_width`
    interleaved scans -- lane l sees indices l, l+W, ... -- combined at the end (ties and NaNs
    by index), then a scalar tail continues from the combined best.
    """
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    attrs = kb.attrs(node)
    shape = kb.shape(x)
    axis = int(attrs["axis"]) % len(shape)
    last = bool(attrs["select_last_index"])
    is_max = node.op == "arg_max"
    name = llvm_name(out.name)
    loops = _AxisLoops(kb, shape, axis, name)
    kb.parallel_extent = loops.extent
    kb.cost = numel(shape)
    if loops.empty():
        b.ret_void()
        return
    in_dt = x.type.dtype
    wdt = _work_dtype(in_dt)
    wt = llvm_type(wdt)
    e = Emitter(b, [wdt], wdt, kb.fast_math, name)
    cmp = _Cmp(b, wdt, name)
    strict = ">" if is_max else "<"
    best = loops.scratch(wt, "best")
    best_ix = loops.scratch(I64, "bestidx")
    W = kb.vector_width
    vector_scan = not loops.has_cols and W > 1 and loops.n >= 2 * W
    n_vec = loops.n // W * W if vector_scan else 0
    if vector_scan:
        vbest = b.alloca(ir.VectorType(wt, W), name=name + ".vbest")
        vbest_ix = b.alloca(ir.VectorType(I64, W), name=name + ".vbestidx")
        iota = ir.Constant(ir.VectorType(I64, W), list(range(W)))

    def takes(v, cur):
        """v (a later index) replaces cur: scalars or vectors of lanes."""
        better = cmp.cmp(strict + ("=" if last else ""), v, cur, name + ".better")
        if not wdt.is_float:
            return better
        v_nan = cmp.isnan(v, name + ".isnan")
        if last:  # a NaN always takes over (the last NaN wins)
            return b.or_(better, v_nan, name=name + ".take")
        cur_num = b.fcmp_ordered("ord", cur, cur, name=name + ".bestnum")  # the first NaN wins
        return b.or_(better, b.and_(v_nan, cur_num), name=name + ".take")

    def lane_beats(a, ai, c, ci):
        """Candidate (a, ai) beats (c, ci) from another lane: a better value, or an equal one
        (both NaN counts as equal) at the lower index (the higher with select_last_index)."""
        better = cmp.cmp(strict, a, c, name + ".lbetter")
        if wdt.is_float:
            a_nan, c_nan = cmp.isnan(a, name + ".anan"), cmp.isnan(c, name + ".cnan")
            better = b.or_(better, b.and_(a_nan, b.not_(c_nan)), name=name + ".lnan")
            same = b.or_(b.fcmp_ordered("==", a, c), b.and_(a_nan, c_nan), name=name + ".lsame")
        else:
            same = b.icmp_unsigned("==", a, c, name=name + ".lsame")
        earlier = b.icmp_signed(">" if last else "<", ai, ci, name=name + ".lorder")
        return b.or_(better, b.and_(same, earlier), name=name + ".lwins")

    def element(outer, i, lo, j):
        return convert(e, _load(kb, x, loops.index(outer, i, lo, j)), in_dt, wdt)

    with _work_items(kb, "w") as w:
        outer, lo, width = loops.work_item(w)

        if vector_scan:
            def vec(i):
                v = kb.value_at(x, list(outer) + [i], W)
                kb.cache.clear()
                return convert(e, v, in_dt, wdt)

            b.store(vec(0), vbest)
            b.store(iota, vbest_ix)
            with kb.loop(W, n_vec, W, name="rv") as i:
                v = vec(i)
                cur = b.load(vbest, name=name + ".vbest")
                t = takes(v, cur)
                b.store(b.select(t, v, cur, name=name + ".nvbest"), vbest)
                lanes_ix = b.add(iota, splat(b, i, W, name + ".base"), name=name + ".lanes")
                b.store(b.select(t, lanes_ix, b.load(vbest_ix), name=name + ".nvidx"), vbest_ix)
            vb, vi = b.load(vbest, name=name + ".vbest"), b.load(vbest_ix, name=name + ".vbestidx")
            acc = b.extract_element(vb, I32(0), name=name + ".lane0")
            acc_ix = b.extract_element(vi, I32(0), name=name + ".lane0idx")
            for lane in range(1, W):
                a = b.extract_element(vb, I32(lane), name=f"{name}.lane{lane}")
                ai = b.extract_element(vi, I32(lane), name=f"{name}.lane{lane}idx")
                wins = lane_beats(a, ai, acc, acc_ix)
                acc = b.select(wins, a, acc, name=name + ".lbest")
                acc_ix = b.select(wins, ai, acc_ix, name=name + ".lbestidx")
            b.store(acc, loops.elem(best, 0, name + ".best.p"))
            b.store(acc_ix, loops.elem(best_ix, 0, name + ".bestidx.p"))
        else:
            def init(j):
                b.store(element(outer, 0, lo, j), loops.elem(best, j, name + ".best.p"))
                b.store(i64(0), loops.elem(best_ix, j, name + ".bestidx.p"))

            loops.columns(width, init)

        with kb.loop(n_vec or 1, loops.n, name="r") as i:
            def step(j):
                v = element(outer, i, lo, j)
                bp = loops.elem(best, j, name + ".best.p")
                ip = loops.elem(best_ix, j, name + ".bestidx.p")
                cur = b.load(bp, name=name + ".best")
                t = takes(v, cur)
                b.store(b.select(t, v, cur, name=name + ".nbest"), bp)
                old = b.load(ip, name=name + ".bestidx")
                b.store(b.select(t, i, old, name=name + ".nidx"), ip)

            loops.columns(width, step)

        def finish(j):
            result = b.load(loops.elem(best_ix, j, name + ".bestidx.p"), name=name + ".idx")
            index = loops.index(outer, 0, lo, j)
            if not attrs["keepdims"]:
                del index[axis]
            kb.store_result(out, index, result)

        loops.columns(width, finish)
    b.ret_void()


# ----- cumsum -----------------------------------------------------------------------------------

@generator("cumsum")
def cumsum(kb: KernelBuilder, node) -> None:
    """Running sum along the axis (a constant input by now); halves sum in f32."""
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    attrs = kb.attrs(node)
    shape = kb.shape(x)
    ax_data = node.inputs[1].data
    if ax_data is None:
        raise UnsupportedError("cumsum needs a constant axis input on the CPU backend",
                               node=node.label, op=node.op)
    axis = int(ax_data.reshape(-1)[0]) % len(shape)
    exclusive, reverse = bool(attrs["exclusive"]), bool(attrs["reverse"])
    name = llvm_name(out.name)
    loops = _AxisLoops(kb, shape, axis, name)
    kb.parallel_extent = loops.extent
    if loops.empty():
        b.ret_void()
        return
    in_dt, out_dt = x.type.dtype, out.type.dtype
    acc_dt = _work_dtype(in_dt)
    acc_t = llvm_type(acc_dt)
    e = Emitter(b, [acc_dt], acc_dt, _no_reassoc(kb), name)
    acc = loops.scratch(acc_t, "acc")

    with _work_items(kb, "w") as w:
        outer, lo, width = loops.work_item(w)
        loops.columns(width, lambda j: b.store(const(acc_t, 0), loops.elem(acc, j, name + ".acc.p")))
        with kb.loop(0, loops.n, name="s") as s:
            i = b.sub(i64(loops.n - 1), s, name=name + ".pos") if reverse else s

            def step(j):
                index = loops.index(outer, i, lo, j)
                v = convert(e, _load(kb, x, index), in_dt, acc_dt)
                ap = loops.elem(acc, j, name + ".acc.p")
                a = b.load(ap, name=name + ".acc")
                total = e.add(a, v)
                total.name = name + ".sum"
                b.store(total, ap)
                kb.store_result(out, index, convert(e, a if exclusive else total, acc_dt, out_dt))

            loops.columns(width, step)
    b.ret_void()


# ----- top_k ------------------------------------------------------------------------------------

@generator("top_k")
def top_k(kb: KernelBuilder, node) -> None:
    """Per row: insertion of each element's index into a sorted list of the k best so far.

    Elements arrive in index order, so a newcomer moves ahead of a kept entry only when it is
    strictly better: equal values stay ordered by index. NaN is above every number (the
    reference's argsort order): first for largest, last for smallest. The list lives in the
    indices output (or, when nobody reads the indices, in arena scratch of the same size, a
    region per row so that threads never share one); values are gathered at the end. O(n*k)
    per row.
    """
    b = kb.b
    x = node.inputs[0]
    values_out, indices_out = node.outputs
    attrs = kb.attrs(node)
    shape = kb.shape(x)
    rank = len(shape)
    axis = int(attrs["axis"]) % rank
    largest = bool(attrs["largest"])
    k_data = node.inputs[1].data
    if k_data is None:
        raise UnsupportedError("top_k needs a constant k input on the CPU backend",
                               node=node.label, op=node.op)
    k = int(k_data.reshape(-1)[0])
    n = shape[axis]
    name = llvm_name(values_out.name)
    wanted = {id(v) for v in kb.outputs}
    if any(id(v) not in (id(values_out), id(indices_out)) for v in kb.outputs):
        raise InternalError(f"top_k {node.label!r} stores its two outputs itself: it cannot "
                            f"take a fused epilogue", where=kb.fn.name)
    rows = [d for a, d in enumerate(shape) if a != axis]
    kb.parallel_extent = numel(rows)
    kb.cost = numel(shape) * max(1, min(k, 32))  # insertion: O(n*k) at worst
    if k == 0 or numel(shape) == 0:
        b.ret_void()
        return
    in_dt = x.type.dtype
    wdt = _work_dtype(in_dt)
    e = Emitter(b, [wdt], wdt, kb.fast_math, name)
    cmp = _Cmp(b, wdt, name)
    in_list = id(indices_out) in wanted
    order = None if in_list else typed_ptr(
        b, kb.scratch(8 * k * numel(rows), name + ".order"), I64, name + ".order.i64")

    with _work_items(kb, "row") as r:
        row = _unflatten(kb, r, rows, name + ".row")
        row_base = None if in_list else kb.imul(r, k)

        def order_slot(j):
            return b.gep(order, [kb._ir(kb.iadd(row_base, j))], inbounds=True, name=name + ".order.p")

        def at(pos) -> list:
            return row[:axis] + [pos] + row[axis:]

        def list_get(j, nm):
            if in_list:
                return kb.load_buffer(indices_out, at(j), 1)
            return b.load(order_slot(j), name=nm)

        def list_set(j, ix):
            if in_list:
                kb.store_value(indices_out, at(j), ix)
            else:
                b.store(ix, order_slot(j))

        def key(pos, nm):
            return convert(e, _load(kb, x, at(pos)), in_dt, wdt)

        def beats(v, u, nm):
            """True if v (a later index) goes before u in the output."""
            better = cmp.cmp(">" if largest else "<", v, u, nm + ".cmp")
            if not wdt.is_float:
                return better
            if largest:  # NaN first: v NaN and u a number
                nan_wins = b.and_(cmp.isnan(v, nm + ".vnan"),
                                  b.fcmp_ordered("ord", u, u, name=nm + ".unum"), name=nm + ".nan")
            else:  # NaN last: u NaN and v a number
                nan_wins = b.and_(cmp.isnan(u, nm + ".unan"),
                                  b.fcmp_ordered("ord", v, v, name=nm + ".vnum"), name=nm + ".nan")
            return b.or_(better, nan_wins, name=nm)

        fn = b.function
        with kb.loop(0, n, name="i") as i:
            v = key(i, name + ".x")
            check = fn.append_basic_block("topk.check")
            insert = fn.append_basic_block("topk.insert")
            head = fn.append_basic_block("topk.shift.header")
            probe = fn.append_basic_block("topk.shift.probe")
            move = fn.append_basic_block("topk.shift.move")
            place = fn.append_basic_block("topk.place")
            nxt = fn.append_basic_block("topk.next")

            full = b.icmp_signed(">=", i, i64(k), name="full")
            start_block = b.block
            b.cbranch(full, check, insert)

            b.position_at_end(check)  # a full list: does v beat its last entry?
            last_ix = list_get(k - 1, "lastidx")
            wins = beats(v, key(last_ix, name + ".last"), "beats_last")
            check_end = b.block
            b.cbranch(wins, insert, nxt)

            b.position_at_end(insert)
            start = b.phi(I64, name="slot0")
            start.add_incoming(i, start_block)
            start.add_incoming(i64(k - 1), check_end)
            b.branch(head)

            b.position_at_end(head)  # shift worse entries one place back
            pos = b.phi(I64, name="slot")
            pos.add_incoming(start, insert)
            b.cbranch(b.icmp_signed(">", pos, i64(0), name="slot.gt0"), probe, place)

            b.position_at_end(probe)
            prev = b.sub(pos, i64(1), name="slot.prev")
            prev_ix = list_get(prev, "previdx")
            go = beats(v, key(prev_ix, name + ".prev"), "beats_prev")
            probe_end = b.block
            b.cbranch(go, move, place)

            b.position_at_end(move)
            list_set(pos, prev_ix)
            pos.add_incoming(prev, b.block)
            b.branch(head)

            b.position_at_end(place)
            final = b.phi(I64, name="slot.final")
            final.add_incoming(pos, head)
            final.add_incoming(pos, probe_end)
            list_set(final, i)
            b.branch(nxt)

            b.position_at_end(nxt)

        if id(values_out) in wanted:
            with kb.loop(0, k, name="j") as j:
                ix = list_get(j, "idx")
                kb.store_value(values_out, at(j), _load(kb, x, at(ix)))
    b.ret_void()


# ----- einsum ------------------------------------------------------------------------------------

def _einsum_plan(equation: str, shapes: Sequence[tuple]):
    """-> (per operand: its label per axis; output labels; label -> size).

    The ellipsis becomes labels ``("...", r)`` counted right-aligned over the broadcast
    ellipsis rank; an implicit output is the ellipsis then the labels used once, sorted.
    """
    ins, out = parse_equation(equation, len(shapes))
    ell_rank = 0
    for term, shape in zip(ins, shapes):
        if "..." in term:
            ell_rank = max(ell_rank, len(shape) - (len(term) - 1))
    ell = [("...", r) for r in range(ell_rank)]
    operand_labels = []
    for term, shape in zip(ins, shapes):
        labels = []
        for l in term:
            if l == "...":
                n_ell = len(shape) - (len(term) - 1)
                labels.extend(ell[ell_rank - n_ell:])
            else:
                labels.append(l)
        operand_labels.append(labels)
    if out is None:
        counts: dict = {}
        for term in ins:
            for l in term:
                if l != "...":
                    counts[l] = counts.get(l, 0) + 1
        out_labels = list(ell) + sorted(l for l, c in counts.items() if c == 1)
    else:
        out_labels = []
        for l in out:
            out_labels.extend(ell if l == "..." else [l])
    sizes: dict = {}
    for labels, shape in zip(operand_labels, shapes):
        for l, d in zip(labels, shape):
            sizes[l] = d if sizes.get(l, 1) == 1 else sizes[l]
    return operand_labels, out_labels, sizes


@generator("einsum")
def einsum(kb: KernelBuilder, node) -> None:
    """Work items over the output's first axis; loops over its other axes, then over every
    summed label (first appearance order) around one multiply-accumulate. Halves compute in
    f32, bools as and/or."""
    b = kb.b
    xs, out = list(node.inputs), node.outputs[0]
    name = llvm_name(out.name)
    shapes = [kb.shape(x) for x in xs]
    operand_labels, out_labels, sizes = _einsum_plan(kb.attrs(node)["equation"], shapes)
    summed = []
    for labels in operand_labels:
        for l in labels:
            if l not in out_labels and l not in summed:
                summed.append(l)
    out_shape = kb.shape(out)
    in_dt, out_dt = xs[0].type.dtype, out.type.dtype
    acc_dt = _work_dtype(in_dt)
    acc_t = llvm_type(acc_dt)
    e = Emitter(b, [acc_dt], acc_dt, kb.fast_math, name)
    is_bool = in_dt == dtypes.bool
    kb.parallel_extent = out_shape[0] if out_shape else 1
    kb.cost = len(xs) * numel([sizes[l] for l in out_labels + summed])
    if numel(out_shape) == 0:
        b.ret_void()
        return
    acc = b.alloca(acc_t, name=name + ".acc")

    def label_name(l) -> str:
        return l if isinstance(l, str) else f"e{l[1]}"

    def nest(labels, env, body, first_bounds=None):
        if not labels:
            body(env)
            return
        l = labels[0]
        lo, hi = first_bounds if first_bounds is not None else (0, sizes[l])
        if hi == 1 and first_bounds is None:
            nest(labels[1:], {**env, l: 0}, body)
            return
        with kb.loop(lo, hi, name=label_name(l)) as iv:
            nest(labels[1:], {**env, l: iv}, body)

    def product(env) -> ir.Value:
        p = None
        for x, labels, shape in zip(xs, operand_labels, shapes):
            index = [0 if d == 1 else env[l] for l, d in zip(labels, shape)]
            v = convert(e, _load(kb, x, index), in_dt, acc_dt)
            if p is None:
                p = v
            elif is_bool:
                p = b.and_(p, v, name=name + ".and")
            else:
                p = e.mul(p, v)
                p.name = name + ".prod"
        return p

    def element(env):
        b.store(const(acc_t, 0), acc)

        def accumulate(env2):
            a = b.load(acc, name=name + ".acc")
            p = product(env2)
            s = b.or_(a, p, name=name + ".or") if is_bool else e.add(a, p)
            if not is_bool:
                s.name = name + ".sum"
            b.store(s, acc)

        nest(summed, env, accumulate)
        result = convert(e, b.load(acc, name=name + ".total"), acc_dt, out_dt)
        kb.store_result(out, [env[l] for l in out_labels], result)

    if out_labels and kb.parallel_extent != 1:
        nest(out_labels, {}, element, first_bounds=(kb.begin, kb.end))
    else:
        with _work_items(kb, "w"):
            nest(out_labels, {}, element)
    b.ret_void()


# ----- det ---------------------------------------------------------------------------------------

@generator("det")
def det(kb: KernelBuilder, node) -> None:
    """Per matrix: copy to the stack (or to arena scratch when large), LU with partial
    pivoting (the largest |a[i][k]| on or below the diagonal), det = sign * product of the
    pivots. A zero pivot gives 0 and skips that step's elimination (LAPACK's getrf goes on
    the same way)."""
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    shape = kb.shape(x)
    n = shape[-1]
    batch = shape[:-2]
    name = llvm_name(out.name)
    in_dt, out_dt = x.type.dtype, out.type.dtype
    cdt = _work_dtype(in_dt)
    ct = llvm_type(cdt)
    e = Emitter(b, [cdt], cdt, _no_reassoc(kb), name)
    kb.parallel_extent = numel(batch)
    kb.cost = numel(batch) * (2 * n ** 3 // 3 + n * n)
    if numel(batch) == 0:
        b.ret_void()
        return
    on_stack = n * n * elem_bytes(ct) <= DET_STACK_BYTES
    if on_stack:
        lu = b.alloca(ct, size=i64(max(1, n * n)), name=name + ".lu")
    else:  # a region per matrix, so that threads never share one
        lu = typed_ptr(b, kb.scratch(n * n * elem_bytes(ct) * numel(batch), name + ".lu"), ct,
                       name + ".lu")
    d = b.alloca(ct, name=name + ".det")
    piv_row = b.alloca(I64, name=name + ".pivrow")
    piv_abs = b.alloca(ct, name=name + ".pivabs")
    fn = b.function

    def fabs(v):
        return e.intrinsic("fabs", [v])

    with _work_items(kb, "m") as m:
        bidx = _unflatten(kb, m, batch, name + ".b") if batch else []
        a = lu if on_stack else b.gep(lu, [kb._ir(kb.imul(m, n * n))], inbounds=True,
                                      name=name + ".lu.m")

        def cell(i, j, nm):
            off = b.add(b.mul(kb._ir(i), i64(n)), kb._ir(j), name=nm + ".off")
            return b.gep(a, [off], inbounds=True, name=nm + ".p")

        with kb.loop(0, n, name="ci") as ci:
            with kb.loop(0, n, name="cj") as cj:
                v = convert(e, _load(kb, x, bidx + [ci, cj]), in_dt, cdt)
                b.store(v, cell(ci, cj, "a"))
        b.store(const(ct, 1.0), d)
        with kb.loop(0, n, name="k") as k:
            # pivot: the row with the largest magnitude in column k from row k down
            b.store(k, piv_row)
            b.store(fabs(b.load(cell(k, k, "akk"), name="akk")), piv_abs)
            k1 = b.add(k, i64(1), name="k1")
            with kb.loop(k1, n, name="pi") as pi:
                mag = fabs(b.load(cell(pi, k, "aik"), name="aik"))
                bigger = b.fcmp_ordered(">", mag, b.load(piv_abs, name="pivabs"), name="bigger")
                b.store(b.select(bigger, mag, b.load(piv_abs)), piv_abs)
                b.store(b.select(bigger, pi, b.load(piv_row)), piv_row)
            p = b.load(piv_row, name="pivrow")
            swap = fn.append_basic_block("det.swap")
            after = fn.append_basic_block("det.swapped")
            b.cbranch(b.icmp_signed("!=", p, k, name="needswap"), swap, after)
            b.position_at_end(swap)
            with kb.loop(0, n, name="sj") as sj:
                pk, pp = cell(k, sj, "rk"), cell(p, sj, "rp")
                tk, tp = b.load(pk, name="rk"), b.load(pp, name="rp")
                b.store(tp, pk)
                b.store(tk, pp)
            b.store(b.fneg(b.load(d), name=name + ".negdet"), d)
            b.branch(after)
            b.position_at_end(after)
            piv = b.load(cell(k, k, "piv"), name="piv")
            prod = e.mul(b.load(d), piv)
            prod.name = name + ".detacc"
            b.store(prod, d)
            elim = fn.append_basic_block("det.eliminate")
            done = fn.append_basic_block("det.next")
            b.cbranch(b.fcmp_unordered("!=", piv, const(ct, 0.0), name="pivnz"), elim, done)
            b.position_at_end(elim)
            with kb.loop(k1, n, name="ei") as ei:
                f = b.fdiv(b.load(cell(ei, k, "aik"), name="aik"), piv, name="factor")
                with kb.loop(k1, n, name="ej") as ej:
                    aij = cell(ei, ej, "aij")
                    upd = e.sub(b.load(aij, name="aij"), e.mul(f, b.load(cell(k, ej, "akj"), name="akj")))
                    upd.name = "aij.new"
                    b.store(upd, aij)
            b.branch(done)
            b.position_at_end(done)
        result = convert(e, b.load(d, name=name + ".value"), cdt, out_dt)
        kb.store_result(out, bidx, result)
    b.ret_void()
