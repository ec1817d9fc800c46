"""What the CPU code generators share: index arithmetic, vector loops and loads, constant
tables, stack buffers, element-type rules. Generators import these by their public names;
nothing here knows an op.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Sequence

from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.errors import UnsupportedError

from .kernel import Index, KernelBuilder, llvm_name
from .llvm_util import I32, I64, const, entry_alloca, i64, load, store
from .scalar_ops import LOWERINGS, Emitter, convert

__all__ = [
    "acc_dtype", "cdiv", "chan_param", "const_table", "convert", "emitter", "entry_alloca",
    "flat_epilogue_ok", "flat_index", "hreduce", "numel", "smax", "smin", "stack_row",
    "table_load", "vec_loop", "vload", "vstore",
    "divmod_index", "const_input", "as_i64", "wrap_index", "index_value", "node_axis",
    "ordered_fast_math", "unflatten", "work_items", "load_uncached",
]


def numel(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def acc_dtype(dt):
    """What a float op computes in: f64 stays, f16/f32 compute in f32; integers stay."""
    if dt == dtypes.f64:
        return dt
    return dtypes.f32 if dt.is_float else dt


def emitter(kb: KernelBuilder, dt, name: str) -> Emitter:
    return Emitter(kb.b, [dt], dt, kb.fast_math, name)


def cdiv(a: int, b: int) -> int:
    return -((-a) // b)


def const_table(kb: KernelBuilder, values: Sequence, name: str, ty: ir.Type = I64) -> ir.Value:
    """A constant table in the module (an internal global); returns a typed pointer to it."""
    module = kb.module
    values = list(values) or [0]
    arr = ir.ArrayType(ty, len(values))
    gv = ir.GlobalVariable(module, arr, name=module.get_unique_name(f"{kb.fn.name}.{name}"))
    gv.global_constant = True
    gv.linkage = "internal"
    gv.initializer = ir.Constant(arr, [const(ty, v) for v in values])
    return kb.b.bitcast(gv, ir.PointerType(ty), name=name)


def table_load(kb: KernelBuilder, table: ir.Value, index, name: str) -> ir.Value:
    return kb.b.load(kb.b.gep(table, [kb._ir(index)], inbounds=True, name=name + ".addr"),
                     name=name)


def stack_row(kb: KernelBuilder, ty: ir.Type, n: int, name: str) -> ir.Value:
    """A per-call (so per-thread) stack buffer of n elements, allocated in the entry block
    (so that asking for it inside a loop does not grow the stack)."""
    arr = entry_alloca(kb.b, ir.ArrayType(ty, max(1, n)), name + ".buf")
    arr.align = 64
    return kb.b.bitcast(arr, ir.PointerType(ty), name=name)


def smax(b: ir.IRBuilder, x, y, name: str):
    return b.select(b.icmp_signed(">", x, y), x, y, name=name)


def smin(b: ir.IRBuilder, x, y, name: str):
    return b.select(b.icmp_signed("<", x, y), x, y, name=name)


def vec_loop(kb: KernelBuilder, lo, hi, body: Callable, name: str, lanes: Optional[int] = None):
    """body(i, n) for i in [lo, hi): vectors of `lanes` (the target's width), a scalar tail."""
    W = kb.vector_width if lanes is None else lanes
    b = kb.b
    if isinstance(lo, int) and isinstance(hi, int):
        vend = lo + (hi - lo) // W * W if W > 1 else lo
        if vend > lo:
            with kb.loop(lo, vend, W, name=name + "v") as i:
                body(i, W)
        if hi > vend:
            with kb.loop(vend, hi, 1, name=name + "s") as i:
                body(i, 1)
        return
    lo_v, hi_v = kb._ir(lo), kb._ir(hi)
    if W > 1:
        span = b.sub(hi_v, lo_v, name=name + ".span")
        span = smax(b, span, i64(0), name + ".span0")
        vend = b.add(lo_v, b.mul(b.udiv(span, i64(W)), i64(W)), name=name + ".vend")
        with kb.loop(lo_v, vend, W, name=name + "v") as i:
            body(i, W)
        lo_v = vend
    with kb.loop(lo_v, hi_v, 1, name=name + "s") as i:
        body(i, 1)


def pieces(kb: KernelBuilder, n: int, size: int, body: Callable, tag: str) -> None:
    """body(start, count, tag) over [0, n): a loop over the whole pieces of `size` (count ==
    size, start an IR value), then the rest once (count < size, emitted only if n has one)."""
    whole = n - n % size
    if whole:
        with kb.loop(0, whole, size, name=tag) as start:
            body(start, size, tag + ".w")
    if n % size:
        body(i64(whole), n % size, tag + ".t")


def last_block_apart(kb: KernelBuilder, block, nblocks: int, size: int, last: int,
                     variant: Callable) -> None:
    """variant(count, tag) for a work item's block of `size` rows; the last of `nblocks`
    blocks, `last` rows, gets its own copy where it is shorter."""
    if last == size:
        variant(size, "blk")
        return
    b = kb.b
    is_last = b.icmp_unsigned("==", block, i64(nblocks - 1), name="is.last")
    with b.if_else(is_last) as (then, other):
        with then:
            variant(last, "last")
        with other:
            variant(size, "blk")


def vload(kb: KernelBuilder, ptr: ir.Value, index, lanes: int, name: str) -> ir.Value:
    return load(kb.b, ptr, kb._ir(index), lanes, name=name)


def vstore(kb: KernelBuilder, value: ir.Value, ptr: ir.Value, index, name: str) -> None:
    store(kb.b, value, ptr, kb._ir(index), name=name)


def hreduce(e: Emitter, v: ir.Value, op: str) -> ir.Value:
    """Horizontal reduction of a vector (a tree of shuffles: no reassoc flag needed): "sum",
    "max" (NaN-propagating), or "minnum" / "maxnum" (NaN-ignoring, LLVM's intrinsics)."""
    b = e.b
    if not isinstance(v.type, ir.VectorType):
        return v
    n = v.type.count
    while n > 1:
        half = n // 2
        lo = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, half), list(range(half))))
        hi = b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, half), list(range(half, n))))
        if op == "sum":
            v = e.add(lo, hi)
        elif op == "max":
            v = e.max(lo, hi)
        else:
            v = e.intrinsic(op, [lo, hi])
        n = half
    return b.extract_element(v, I32(0))


def flat_index(dims, f) -> list:
    """Flat position f of a run over `dims` as an index: f on the last dim larger than 1 (all
    later dims are 1, so its stride is 1), 0 elsewhere."""
    big = [i for i, d in enumerate(dims) if d != 1]
    if not big:
        return [0] * len(dims)
    return [f if i == big[-1] else 0 for i in range(len(dims))]


def flat_epilogue_ok(kb: KernelBuilder, anchor, produced, first_dim: int) -> bool:
    """True when the kernel's fused epilogue may be evaluated at "flat" indices
    [..prefix.., 0, .., 0, f] over dims [first_dim, rank) of `produced`: every value it touches
    is elementwise and either spans all of those dims (same sizes) or none of them."""
    shape = kb.shape(produced)
    rank = len(shape)
    span = list(shape[first_dim:])
    for n in kb.nodes:
        if n is anchor:
            continue
        if n.op not in LOWERINGS:
            return False
        for v in list(n.inputs) + list(n.outputs):
            if v is None:
                continue
            s = list(kb.shape(v))
            s = [1] * (rank - len(s)) + s if len(s) < rank else s
            if len(s) != rank:
                return False
            tail = s[first_dim:]
            if tail != span and any(d != 1 for d in tail):
                return False
    return True


def chan_param(kb: KernelBuilder, e: Emitter, v, index, adt):
    """Scalar v[index] in the compute type (a per-channel parameter)."""
    b = kb.b
    x = b.load(b.gep(kb.ptr(v), [kb._ir(index)], inbounds=True), name=llvm_name(v.name))
    return convert(e, x, v.type.dtype, adt)


# ----- tensor indices ---------------------------------------------------------------------------

def divmod_index(kb: KernelBuilder, a: Index, c: int, name: str) -> tuple:
    """(a // c, a % c) for a >= 0."""
    if isinstance(a, int):
        return a // c, a % c
    if c == 1:
        return a, 0
    return kb.b.udiv(a, i64(c), name=name + ".q"), kb.b.urem(a, i64(c), name=name + ".r")

def const_input(node, i: int, what: str):
    """The data of constant input i (None if the input is absent)."""
    if len(node.inputs) <= i or node.inputs[i] is None:
        return None
    v = node.inputs[i]
    if v.data is None:
        raise UnsupportedError(f"{node.op} needs {what} (input {i}, %{v.name}) to be a constant "
                               f"when compiled", node=node.label, op=node.op)
    return v.data

def as_i64(kb: KernelBuilder, x: ir.Value, dtype, name: str) -> ir.Value:
    """An integer (or float, truncated) index value, scalar or vector, as i64."""
    if dtype == dtypes.i64 or dtype == dtypes.u64:
        return x
    e = Emitter(kb.b, [dtype], dtypes.i64, (), name)
    return convert(e, x, dtype, dtypes.i64)

def wrap_index(kb: KernelBuilder, v: Index, dim: int, name: str) -> Index:
    """A negative index counts from the end; one still out of [0, dim) becomes 0."""
    if isinstance(v, int):
        v = v + dim if v < 0 else v
        return v if 0 <= v < dim else 0
    b = kb.b
    neg = b.icmp_signed("<", v, i64(0), name=name + ".neg")
    w = b.select(neg, b.add(v, i64(dim), name=name + ".fromend"), v, name=name + ".wrapped")
    ok = b.icmp_unsigned("<", w, i64(max(dim, 1)), name=name + ".inrange")
    return b.select(ok, w, i64(0), name=name)

def index_value(kb: KernelBuilder, indices, pos: Sequence[Index], dim: int, name: str) -> Index:
    """indices[pos], wrapped for an axis of size dim; folded to an int for constant indices at
    a constant position (a scalar index such as x[:, 0])."""
    if indices.data is not None and all(isinstance(p, int) for p in pos):
        if indices.data.size == 0:  # no indices: the result is empty, this code never runs
            return 0
        return wrap_index(kb, int(indices.data[tuple(pos)]), dim, name)
    raw = kb.value_at(indices, list(pos))
    return wrap_index(kb, as_i64(kb, raw, indices.type.dtype, name + ".raw"), dim, name)

def node_axis(kb: KernelBuilder, node, rank: int) -> int:
    a = int(kb.attrs(node)["axis"])
    return a + rank if a < 0 else a


# ----- work items and sequential loops -------------------------------------------------------

def ordered_fast_math(kb: KernelBuilder) -> tuple:
    """Fast-math flags without ``reassoc``: scans and LU keep their sequential order."""
    return tuple(f for f in kb.fast_math if f != "reassoc")

def unflatten(kb: KernelBuilder, flat: Index, shape: Sequence[int], name: str) -> list:
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
def work_items(kb: KernelBuilder, name: str) -> Iterator[Index]:
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

def load_uncached(kb: KernelBuilder, v, index) -> ir.Value:
    """`v` at a run-time index; the cache is dropped since the index changes per iteration."""
    x = kb.value_at(v, index)
    kb.cache.clear()
    return x
