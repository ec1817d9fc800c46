"""Scans along an axis: the reduction-like ops that are not plain reductions.

* ``arg_max`` / ``arg_min`` -- a running (best value, best index) pair per output element.
* ``cumsum`` -- a running sum along the axis (``exclusive``, ``reverse``).
* ``top_k`` -- an insertion sort of the k best indices per row (two outputs).

The axis-wise ops (arg reductions, cumsum) share one loop shape (`_AxisLoops`): a work item
is one position of the other axes but the last, and one block of at most `COLUMN_BLOCK`
last-axis columns, whose running state lives in small stack arrays. The innermost loop then
runs over contiguous columns (it vectorizes). When the reduced axis is the last one, cumsum is
a scalar scan along contiguous memory and the arg reductions scan in vector lanes.

Semantics follow the numpy references in ``ir/ops/reduce.py``:
float16 computes in float32; NaN wins an arg reduction (the first NaN, or the last with
``select_last_index``); top_k orders NaN above every number and breaks ties by the lower
index.
"""

from __future__ import annotations

from typing import Callable, Sequence

from llvmlite import ir

from slimc.ir.errors import InternalError, UnsupportedError

from .common import acc_dtype, load_uncached, numel, ordered_fast_math, unflatten, work_items
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import I32, I64, const, i64, llvm_type, splat, typed_ptr
from .scalar_ops import Emitter, convert

COLUMN_BLOCK = 256  # last-axis columns per work item in the axis-wise ops


# ----- small helpers ------------------------------------------------------------------------

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
        outer = unflatten(self.kb, p, self.outer, f"{self.name}.o") if self.outer else []
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
    wdt = acc_dtype(in_dt)
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
        return convert(e, load_uncached(kb, x, loops.index(outer, i, lo, j)), in_dt, wdt)

    with work_items(kb, "w") as w:
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
    acc_dt = acc_dtype(in_dt)
    acc_t = llvm_type(acc_dt)
    e = Emitter(b, [acc_dt], acc_dt, ordered_fast_math(kb), name)
    acc = loops.scratch(acc_t, "acc")

    with work_items(kb, "w") as w:
        outer, lo, width = loops.work_item(w)
        loops.columns(width, lambda j: b.store(const(acc_t, 0), loops.elem(acc, j, name + ".acc.p")))
        with kb.loop(0, loops.n, name="s") as s:
            i = b.sub(i64(loops.n - 1), s, name=name + ".pos") if reverse else s

            def step(j):
                index = loops.index(outer, i, lo, j)
                v = convert(e, load_uncached(kb, x, index), in_dt, acc_dt)
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
    wdt = acc_dtype(in_dt)
    e = Emitter(b, [wdt], wdt, kb.fast_math, name)
    cmp = _Cmp(b, wdt, name)
    in_list = id(indices_out) in wanted
    order = None if in_list else typed_ptr(
        b, kb.scratch(8 * k * numel(rows), name + ".order"), I64, name + ".order.i64")

    with work_items(kb, "row") as r:
        row = unflatten(kb, r, rows, name + ".row")
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
            return convert(e, load_uncached(kb, x, at(pos)), in_dt, wdt)

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
                kb.store_value(values_out, at(j), load_uncached(kb, x, at(ix)))
    b.ret_void()
