"""Scatters (scatter_nd, scatter_elements): the data copied to the output, then the updates
written in order, combined with what is there (none, add, mul, min, max) as ONNX says: later
updates to one element see the earlier ones, so the update loop runs in one work item.
"""

from __future__ import annotations

from typing import Callable

from llvmlite import ir

from slimc.ir import dtypes

from .common import index_value, node_axis, numel
from .gen_tensor import _flat_copy, _is_buffer, _nest
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import load, store
from .scalar_ops import Emitter

def _copy(kb: KernelBuilder, src, dst, name: str) -> None:
    """dst = src (same shape): a flat copy from a buffer, else element by element."""
    shape = kb.shape(dst)
    if _is_buffer(kb, src):
        _flat_copy(kb, src, 0, dst, 0, numel(shape), name)
        return
    _nest(kb, shape, 0, [], lambda idx, lanes: kb.store_value(dst, idx, kb.value_at(src, idx, lanes)), name)


def _combiner(kb: KernelBuilder, reduction: str, dtype, name: str) -> Callable:
    """new = f(current, update) for a scatter's reduction (bool: add is or, mul is and)."""
    b = kb.b
    e = Emitter(b, [dtype, dtype], dtype, (), name)
    if dtype == dtypes.bool:
        return {"add": b.or_, "max": b.or_, "mul": b.and_, "min": b.and_}[reduction]
    return {"add": e.add, "mul": e.mul, "max": e.max, "min": e.min}[reduction]


def _scatter_store(kb: KernelBuilder, out, index, upd, combine) -> None:
    if combine is None:
        kb.store_value(out, index, upd)
        return
    b = kb.b
    lanes = upd.type.count if isinstance(upd.type, ir.VectorType) else 1
    off = kb._ir(kb.linear(index, kb.shape(out)))
    name = llvm_name(out.name)
    cur = load(b, kb.ptr(out), off, lanes, name=name + ".cur")
    store(b, combine(cur, upd), kb.ptr(out), off, name=name)


def _start(kb: KernelBuilder, node) -> tuple:
    """The output set to the data, one work item (updates apply in order), and the
    combining function of the reduction (None: replace). Returns (indices, updates, out,
    name, combine)."""
    data, indices, updates = node.inputs
    out = node.outputs[0]
    name = llvm_name(out.name)
    reduction = kb.attrs(node)["reduction"]
    combine = None if reduction == "none" else _combiner(kb, reduction, out.type.dtype, name + ".op")
    kb.parallel_extent = 1
    _copy(kb, data, out, name + ".copy")
    return indices, updates, out, name, combine


@generator("scatter_nd", inline_inputs=True)
def scatter_nd(kb: KernelBuilder, node) -> None:
    """out = data; then for each index tuple in order, its slice of out = (or op=) updates."""
    indices, updates, out, name, combine = _start(kb, node)
    shape, ishape = kb.shape(out), kb.shape(indices)
    k = ishape[-1]
    lead = list(ishape[:-1])
    if numel(lead) and numel(shape[k:]):
        with kb.loop(0, numel(lead), name=name + ".u") as u:
            kb.cache.clear()
            uidx = kb.delinear(u, lead) if lead else []
            tup = [index_value(kb, indices, uidx + [m], shape[m], f"{name}.idx{m}") for m in range(k)]
            _nest(kb, shape[k:], 0, [], lambda rest, lanes: _scatter_store(
                kb, out, tup + rest, kb.value_at(updates, uidx + rest, lanes), combine), name + ".slice")
    kb.b.ret_void()


@generator("scatter_elements", inline_inputs=True)
def scatter_elements(kb: KernelBuilder, node) -> None:
    """out = data; then element by element in order, out[.., indices[p], ..] = (op=) updates[p]."""
    indices, updates, out, name, combine = _start(kb, node)
    shape, ishape = kb.shape(out), kb.shape(indices)
    axis = node_axis(kb, node, len(shape))
    if numel(ishape):
        def level(a, idx):
            if a == len(ishape):
                kb.cache.clear()
                tgt = list(idx)
                tgt[axis] = index_value(kb, indices, idx, shape[axis], name + ".idx")
                _scatter_store(kb, out, tgt, kb.value_at(updates, idx), combine)
                return
            with kb.loop(0, ishape[a], name=f"{name}.p{a}") as i:
                level(a + 1, idx + [i])

        level(0, [])
    kb.b.ret_void()


