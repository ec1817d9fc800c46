"""Op families of the fuzzer's models: views and data movement (exact values stay exact)."""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from .builder import BOOL, I64, MAX_RANK, Builder, axes_input, broadcast, numel


# --- views and data movement: exact values stay exact --------------------------------------
def op_transpose(b: Builder):
    v = b.pick(lambda v: len(v.shape) >= 2)
    if v is None:
        return
    if b.one_in(4):
        return b.emit1("Transpose", [v], v.dtype, v.shape[::-1], v.bound, v.exact)
    perm = b.draw(st.permutations(range(len(v.shape))))
    return b.emit1("Transpose", [v], v.dtype, tuple(v.shape[p] for p in perm), v.bound, v.exact,
                   perm=list(perm))


def _factor(b: Builder, total: int, rank: int) -> list:
    dims = [1] * rank
    if total == 0:
        dims[b.draw(st.integers(0, rank - 1))] = 0
        return [d if d == 0 else b.choice([1, 2, 3]) for d in dims]
    p, rest = 2, total
    while rest > 1:  # spread the prime factors over the dims
        while rest % p == 0:
            dims[b.draw(st.integers(0, rank - 1))] *= p
            rest //= p
        p += 1
    return dims


def op_reshape(b: Builder):
    v = b.pick()
    if v is None:
        return
    total = numel(v.shape)
    rank = b.draw(st.integers(0 if total == 1 else 1, MAX_RANK))
    dims = _factor(b, total, rank)
    spec, attrs = list(dims), {}
    if total == 0:
        attrs["allowzero"] = 1  # a 0 in the target is a 0, not "copy the input's dim"
    else:
        if rank and b.one_in(3):
            spec[b.draw(st.integers(0, rank - 1))] = -1
        for i in range(min(rank, len(v.shape))):  # 0 copies the input's dim
            if dims[i] == v.shape[i] and spec[i] != -1 and b.one_in(4):
                spec[i] = 0
    return b.emit1("Reshape", [v, b.ints(spec)], v.dtype, tuple(dims), v.bound, v.exact, **attrs)


def op_flatten(b: Builder):
    v = b.pick()
    if v is None:
        return
    r = len(v.shape)
    axis = b.draw(st.integers(-r, r))
    a = axis + r if axis < 0 else axis
    return b.emit1("Flatten", [v], v.dtype, (numel(v.shape[:a]), numel(v.shape[a:])), v.bound,
                   v.exact, axis=axis)


def op_unsqueeze(b: Builder):
    v = b.pick(lambda v: len(v.shape) < MAX_RANK)
    if v is None:
        return
    r = len(v.shape) + b.draw(st.integers(1, min(2, MAX_RANK - len(v.shape))))
    axes = sorted(b.draw(st.sets(st.integers(0, r - 1), min_size=r - len(v.shape), max_size=r - len(v.shape))))
    dims = iter(v.shape)
    shape = tuple(1 if a in axes else next(dims) for a in range(r))
    return b.emit1("Unsqueeze", [v, axes_input(b, axes, r)], v.dtype, shape, v.bound, v.exact)


def op_squeeze(b: Builder):
    v = b.pick(lambda v: 1 in v.shape)
    if v is None:
        return
    ones = [a for a, d in enumerate(v.shape) if d == 1]
    if b.one_in(3):
        axes, ins = ones, [v]  # no axes: every dim of size 1
    else:
        axes = sorted(b.draw(st.sets(st.sampled_from(ones), min_size=1)))
        ins = [v, axes_input(b, axes, len(v.shape))]
    shape = tuple(d for a, d in enumerate(v.shape) if a not in axes)
    return b.emit1("Squeeze", ins, v.dtype, shape, v.bound, v.exact)


def op_expand(b: Builder):
    v = b.pick()
    if v is None:
        return
    target = b.broadcast_partner(v.shape)
    target = tuple(b.choice([2, 3]) if d == 1 and b.one_in(2) else d for d in target)
    shape = broadcast(v.shape, target)
    return shape is not None and b.emit1("Expand", [v, b.ints(target)], v.dtype, shape, v.bound,
                                         v.exact)


def _slice_len(d: int, start: int, end: int, step: int) -> int:
    """ONNX Slice's rule for one axis."""
    start, end = (start + d if start < 0 else start), (end + d if end < 0 else end)
    if step > 0:
        start, end = min(max(start, 0), d), min(max(end, 0), d)
        return max(0, -(-(end - start) // step))
    start, end = min(max(start, 0), d - 1), min(max(end, -1), d - 1)
    return max(0, -(-(start - end) // -step))


def op_slice(b: Builder):
    v = b.pick(lambda v: v.shape)
    if v is None:
        return
    r = len(v.shape)
    axes = list(b.draw(st.permutations(range(r))))[:b.draw(st.integers(1, r))]
    starts, ends, steps, shape = [], [], [], list(v.shape)
    big = 2**63 - 1
    for a in axes:
        d = v.shape[a]
        step = b.choice([1, 2, -1, 3, -2])
        edge = [-big - 1, big] if step < 0 else [big, -big - 1]
        start = b.choice([b.draw(st.integers(-d - 2, d + 2)), edge[1] if step > 0 else big])
        end = b.choice([b.draw(st.integers(-d - 2, d + 2)), edge[0] if step > 0 else -big - 1])
        starts.append(start), ends.append(end), steps.append(step)
        shape[a] = _slice_len(d, start, end, step)
    ins = [v, b.ints(starts), b.ints(ends)]
    if axes != list(range(len(axes))) or any(s != 1 for s in steps) or b.one_in(2):
        ins.append(b.ints([a - r if b.one_in(3) else a for a in axes]))  # same order as starts
        if any(s != 1 for s in steps) or b.one_in(2):
            ins.append(b.ints(steps))
    return b.emit1("Slice", ins, v.dtype, tuple(shape), v.bound, v.exact)


def op_concat(b: Builder):
    v = b.pick(lambda v: v.shape)
    if v is None:
        return
    r = len(v.shape)
    axis = b.draw(st.integers(0, r - 1))
    parts = [v]
    for _ in range(b.draw(st.integers(1, 2))):
        w = b.pick(lambda w: w.dtype == v.dtype and len(w.shape) == r and
                   all(x == y for i, (x, y) in enumerate(zip(w.shape, v.shape)) if i != axis))
        if w is None or b.one_in(3):
            s = list(v.shape)
            s[axis] = b.choice([1, 2, 0, 5])
            w = b.operand(v.dtype, tuple(s))
        parts.append(w)
    shape = list(v.shape)
    shape[axis] = sum(p.shape[axis] for p in parts)
    return b.emit1("Concat", parts, v.dtype, tuple(shape), max(p.bound for p in parts),
                   all(p.exact for p in parts), axis=axis - r if b.one_in(3) else axis)


def op_split(b: Builder):
    v = b.pick(lambda v: v.shape)
    if v is None:
        return
    r = len(v.shape)
    axis = b.draw(st.integers(0, r - 1))
    d = v.shape[axis]
    n = b.draw(st.integers(1, 3))
    if b.one_in(2) and 0 < n <= d:
        chunk = -(-d // n)  # num_outputs: equal chunks, the last one smaller
        sizes = [min(chunk, d - i * chunk) for i in range(n)]
        if min(sizes) < 1:
            return
        ins, attrs = [v], {"num_outputs": n}
    else:
        cuts = sorted(b.draw(st.integers(0, d)) for _ in range(n - 1))
        sizes = [hi - lo for lo, hi in zip([0] + cuts, cuts + [d])]
        ins, attrs = [v, b.ints(sizes)], {}
    outs = []
    for s in sizes:
        shape = list(v.shape)
        shape[axis] = s
        outs.append((v.dtype, tuple(shape), v.bound, v.exact))
    return b.emit("Split", ins, outs, axis=axis - r if b.one_in(3) else axis, **attrs)


def op_gather(b: Builder):
    v = b.pick(lambda v: v.shape)
    if v is None:
        return
    r = len(v.shape)
    axis = b.draw(st.integers(0, r - 1))
    d = v.shape[axis]
    ishape = tuple(b.choice([1, 2, 3, 5]) for _ in range(b.choice([1, 0, 2])))
    if d == 0:
        ishape = ishape[:-1] + (0,) if ishape else (0,)
    idx = b.rng.integers(-d, max(d, 1), ishape).astype(b.choice([np.int64, np.int32]))
    if len(b.inputs) < 3 and b.one_in(4):
        ind = b.input(idx.dtype, ishape, data=idx)  # indices known only at run time
    else:
        ind = b.const(idx)
    shape = v.shape[:axis] + ishape + v.shape[axis + 1:]
    return b.emit1("Gather", [v, ind], v.dtype, shape, v.bound, v.exact,
                   axis=axis - r if b.one_in(3) else axis)


def op_gather_elements(b: Builder):
    v = b.pick(lambda v: v.shape and min(v.shape) > 0)
    if v is None:
        return
    r = len(v.shape)
    axis = b.draw(st.integers(0, r - 1))
    d = v.shape[axis]
    ishape = tuple(b.choice([1, 2, 4]) if a == axis else v.shape[a] for a in range(r))
    ind = b.const(b.rng.integers(-d, d, ishape).astype(b.choice([np.int64, np.int32])))
    return b.emit1("GatherElements", [v, ind], v.dtype, ishape, v.bound, v.exact,
                   axis=axis - r if b.one_in(3) else axis)


def op_pad(b: Builder):
    v = b.pick(lambda v: v.shape)
    if v is None:
        return
    r = len(v.shape)
    mode = b.choice(["constant", "reflect", "edge"])
    axes = sorted(b.draw(st.sets(st.integers(0, r - 1), min_size=1)))
    before, after, shape = [], [], list(v.shape)
    for a in axes:
        d = v.shape[a]
        if mode == "constant":
            lo, hi = b.draw(st.integers(-d, 3)), b.draw(st.integers(-d, 3))
            if lo + hi < -d:
                hi = -d - lo
        else:
            most = d - 1 if mode == "reflect" else (3 if d else 0)
            lo, hi = b.draw(st.integers(0, max(most, 0))), b.draw(st.integers(0, max(most, 0)))
        before.append(lo), after.append(hi)
        shape[a] = d + lo + hi
    ins = [v, b.ints(before + after)]
    bound = v.bound
    if mode == "constant" and b.one_in(2):
        value = b.const(np.asarray(b.choice([1, -2]), v.dtype))
        ins.append(value)
        bound = max(bound, value.bound)
    if axes != list(range(r)) or b.one_in(3):  # pads follow the axes input's order
        ins += [None] * (3 - len(ins)) + [b.ints([a - r if b.one_in(3) else a for a in axes])]
    return b.emit1("Pad", ins, v.dtype, tuple(shape), bound, v.exact, mode=mode)


def op_tile(b: Builder):
    v = b.pick(lambda v: v.shape)
    if v is None:
        return
    reps = [b.choice([1, 2, 3]) for _ in v.shape]
    return b.emit1("Tile", [v, b.ints(reps)], v.dtype, tuple(d * k for d, k in zip(v.shape, reps)),
                   v.bound, v.exact)


def op_trilu(b: Builder):
    v = b.pick(lambda v: len(v.shape) >= 2 and v.dtype != BOOL)
    if v is None:
        return
    ins = [v] + ([b.ints(b.draw(st.integers(-3, 3)))] if b.one_in(2) else [])
    return b.emit1("Trilu", ins, v.dtype, v.shape, v.bound, v.exact, upper=b.choice([1, 0]))


def op_shape(b: Builder):
    v = b.pick()
    if v is None:
        return
    r = len(v.shape)
    start, end = b.draw(st.integers(-r - 1, r + 1)), b.draw(st.integers(-r - 1, r + 1))
    lo = min(max(start + r if start < 0 else start, 0), r)
    hi = min(max(end + r if end < 0 else end, 0), r)
    dims = v.shape[lo:hi] if hi > lo else ()
    return b.emit1("Shape", [v], I64, (len(dims),), max(dims, default=0), True, start=start, end=end)


def op_depth_space(b: Builder):
    bs = b.choice([2, 3])
    v = b.pick(lambda v: len(v.shape) == 4 and (v.shape[1] % (bs * bs) == 0 or
                                                 (v.shape[2] % bs == 0 and v.shape[3] % bs == 0)))
    if v is None:
        return
    n, c, h, w = v.shape
    if c % (bs * bs) == 0 and (h % bs or w % bs or b.one_in(2)):
        return b.emit1("DepthToSpace", [v], v.dtype, (n, c // (bs * bs), h * bs, w * bs), v.bound,
                       v.exact, blocksize=bs, mode=b.choice(["DCR", "CRD"]))
    return b.emit1("SpaceToDepth", [v], v.dtype, (n, c * bs * bs, h // bs, w // bs), v.bound,
                   v.exact, blocksize=bs)
