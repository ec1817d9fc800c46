"""Index maps: the ops that only choose which input element an output element is (views,
permutations, slices, gathers, tiling, depth/space shuffles). An index map costs nothing of
its own: whatever reads the op computes the input index inline (see kernel.py). Set
``fn.keeps_last_axis(kb, node) -> bool`` when consecutive output elements along the last axis
are consecutive input elements, so vector loads stay vector loads.
"""

from __future__ import annotations

from slimc.ir.ops.tensor import _slice_args, slice_bounds

from .common import as_i64, const_input, divmod_index, index_value, node_axis
from .kernel import KernelBuilder, index_map, llvm_name
from .llvm_util import i64


# ----- index maps: reshape-like views and permutations ------------------------------------

@index_map("reshape", "flatten", "squeeze", "unsqueeze")
def same_order(kb: KernelBuilder, node, out, index):
    """Views that keep the row-major order: output element k is input element k."""
    src = node.inputs[0]
    flat = kb.linear(index, kb.shape(out))
    return src, kb.delinear(flat, kb.shape(src))


def _same_order_keeps_last_axis(kb: KernelBuilder, node) -> bool:
    """The input's last dim is a multiple of the output's (equal, or split as attention's
    [.., 192] -> [.., 3, 64] is): every run along the output's last axis lies inside one row of
    the input, wherever it starts. (A merge, [.., 3, 64] -> [.., 192], keeps runs contiguous
    only when they do not cross 64: that depends on where a vector starts, which the map
    does not know.)"""
    out, src = kb.shape(node.outputs[0]), kb.shape(node.inputs[0])
    return bool(out) and bool(src) and out[-1] > 0 and src[-1] % out[-1] == 0


same_order.keeps_last_axis = _same_order_keeps_last_axis


@index_map("transpose")
def transpose(kb: KernelBuilder, node, out, index):
    perm = kb.attrs(node)["perm"]
    src_index = [0] * len(perm)
    for i, p in enumerate(perm):
        src_index[p] = index[i]
    return node.inputs[0], src_index


transpose.keeps_last_axis = lambda kb, node: kb.attrs(node)["perm"][-1] == len(kb.attrs(node)["perm"]) - 1


@index_map("expand")
def expand(kb: KernelBuilder, node, out, index):
    src = node.inputs[0]
    return src, kb._operand_index(kb.shape(out), kb.shape(src), index)


expand.keeps_last_axis = lambda kb, node: (
    bool(kb.shape(node.inputs[0])) and kb.shape(node.inputs[0])[-1] == kb.shape(node.outputs[0])[-1])


# ----- index maps -----------------------------------------------------------------------------

def _slice_starts(kb: KernelBuilder, node) -> list[tuple[int, int]]:
    """(start, step) per input axis (0, 1 where the slice leaves the axis alone)."""
    x = node.inputs[0]
    shape = kb.shape(x)
    args = [const_input(node, i, what) for i, what in
            ((1, "starts"), (2, "ends"), (3, "axes"), (4, "steps"))]
    starts, ends, axes, steps = _slice_args(len(shape), *args)
    out = [(0, 1)] * len(shape)
    for a, s, e, st in zip(axes, starts, ends, steps):
        a = a + len(shape) if a < 0 else a
        out[a] = (slice_bounds(s, e, st, shape[a])[0], st)
    return out


@index_map("slice")
def slice_map(kb: KernelBuilder, node, out, index):
    name = llvm_name(out.name)
    src = []
    for a, ((start, step), i) in enumerate(zip(_slice_starts(kb, node), index)):
        src.append(kb.iadd(start, kb.imul(i, step, f"{name}.step{a}"), f"{name}.src{a}"))
    return node.inputs[0], src


slice_map.keeps_last_axis = lambda kb, node: _slice_starts(kb, node)[-1][1] == 1


@index_map("gather")
def gather(kb: KernelBuilder, node, out, index):
    data, indices = node.inputs
    shape = kb.shape(data)
    axis = node_axis(kb, node, len(shape))
    q = len(kb.shape(indices))
    k = index_value(kb, indices, index[axis:axis + q], shape[axis], llvm_name(out.name) + ".idx")
    return data, list(index[:axis]) + [k] + list(index[axis + q:])


# The last output axis is data's last axis unless the gather is along it.
gather.keeps_last_axis = lambda kb, node: node_axis(kb, node, len(kb.shape(node.inputs[0]))) < \
    len(kb.shape(node.inputs[0])) - 1


@index_map("gather_elements")
def gather_elements(kb: KernelBuilder, node, out, index):
    data, indices = node.inputs
    shape = kb.shape(data)
    axis = node_axis(kb, node, len(shape))
    src = list(index)
    src[axis] = index_value(kb, indices, index, shape[axis], llvm_name(out.name) + ".idx")
    return data, src


# Each lane reads its own index: never contiguous.
gather_elements.keeps_last_axis = lambda kb, node: False


@index_map("gather_nd")
def gather_nd(kb: KernelBuilder, node, out, index):
    data, indices = node.inputs
    shape, ishape = kb.shape(data), kb.shape(indices)
    bd = int(kb.attrs(node)["batch_dims"])
    k = ishape[-1]
    lead = list(index[:len(ishape) - 1])  # batch dims, then the index tuple's position
    name = llvm_name(out.name)
    tup = [index_value(kb, indices, lead + [m], shape[bd + m], f"{name}.idx{m}") for m in range(k)]
    return data, list(index[:bd]) + tup + list(index[len(ishape) - 1:])


gather_nd.keeps_last_axis = lambda kb, node: (
    int(kb.attrs(node)["batch_dims"]) + kb.shape(node.inputs[1])[-1] < len(kb.shape(node.inputs[0])))


def _repeats(kb: KernelBuilder, node) -> list[int]:
    return [int(r) for r in const_input(node, 1, "the repeats").reshape(-1)]


@index_map("tile")
def tile(kb: KernelBuilder, node, out, index):
    shape = kb.shape(node.inputs[0])
    name = llvm_name(out.name)
    src = []
    for a, (i, d, r) in enumerate(zip(index, shape, _repeats(kb, node))):
        src.append(i if r == 1 else 0 if d <= 1 else divmod_index(kb, i, d, f"{name}.tile{a}")[1])
    return node.inputs[0], src


tile.keeps_last_axis = lambda kb, node: _repeats(kb, node)[-1] == 1


@index_map("depth_to_space")
def depth_to_space(kb: KernelBuilder, node, out, index):
    attrs = kb.attrs(node)
    bs, mode = int(attrs["blocksize"]), attrs["mode"]
    c_out = kb.shape(out)[1]
    n, c, y, x = index
    name = llvm_name(out.name)
    h, b1 = divmod_index(kb, y, bs, name + ".y")
    w, b2 = divmod_index(kb, x, bs, name + ".x")
    blk = kb.iadd(kb.imul(b1, bs, name + ".b1"), b2, name + ".blk")
    if mode == "DCR":  # channel = (b1 * bs + b2) * C' + c
        ch = kb.iadd(kb.imul(blk, c_out, name + ".blkc"), c, name + ".ch")
    else:  # CRD: channel = c * bs * bs + b1 * bs + b2
        ch = kb.iadd(kb.imul(c, bs * bs, name + ".cb"), blk, name + ".ch")
    return node.inputs[0], [n, ch, h, w]


@index_map("space_to_depth")
def space_to_depth(kb: KernelBuilder, node, out, index):
    attrs = kb.attrs(node)
    bs, mode = int(attrs["blocksize"]), attrs["mode"]
    c_in = kb.shape(node.inputs[0])[1]
    n, oc, hh, ww = index
    name = llvm_name(out.name)
    if mode == "DCR":  # out channel = (b1 * bs + b2) * C + c
        blk, c = divmod_index(kb, oc, c_in, name + ".oc")
    else:  # CRD: out channel = c * bs * bs + b1 * bs + b2
        c, blk = divmod_index(kb, oc, bs * bs, name + ".oc")
    b1, b2 = divmod_index(kb, blk, bs, name + ".blk")
    y = kb.iadd(kb.imul(hh, bs, name + ".hh"), b1, name + ".y")
    x = kb.iadd(kb.imul(ww, bs, name + ".ww"), b2, name + ".x")
    return node.inputs[0], [n, c, y, x]


depth_to_space.keeps_last_axis = space_to_depth.keeps_last_axis = \
    lambda kb, node: int(kb.attrs(node)["blocksize"]) == 1


@index_map("reverse_sequence")
def reverse_sequence(kb: KernelBuilder, node, out, index):
    x, lens = node.inputs
    attrs = kb.attrs(node)
    ba, ta = int(attrs["batch_axis"]), int(attrs["time_axis"])
    T = kb.shape(x)[ta]
    b = kb.b
    name = llvm_name(out.name)
    t = kb._ir(index[ta])
    n = as_i64(kb, kb.value_at(lens, [index[ba]]), lens.type.dtype, name + ".len")
    n = b.select(b.icmp_signed("<", n, i64(0)), i64(0), n, name=name + ".len.lo")
    n = b.select(b.icmp_signed(">", n, i64(T)), i64(T), n, name=name + ".len.hi")
    rev = b.sub(b.sub(n, i64(1)), t, name=name + ".rev")
    src = list(index)
    src[ta] = b.select(b.icmp_signed("<", t, n), rev, t, name=name + ".t")
    return x, src


# The last axis is the batch or time axis only for rank 2 (lanes then read different rows).
reverse_sequence.keeps_last_axis = lambda kb, node: len(kb.shape(node.inputs[0])) > 2
