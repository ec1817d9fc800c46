"""Index arithmetic and control flow for GPU generators (codegen/cuda/gen_*.py).

A GPU multiplies and divides 64-bit integers in several instructions each, so generators do
their index arithmetic in `Ix`: i32 unless a buffer is large enough to need i64, with Python
ints folded so that size-1 dimensions and zero offsets emit nothing.
"""

from __future__ import annotations

from typing import Optional, Sequence

from llvmlite import ir

from ..cpu.common import numel
from ..cpu.llvm_util import F32, I32, I64, const
from .kernel import GLOBAL, GpuKernelBuilder


class Ix:
    """Integer index arithmetic in one type (i32, or i64 for huge buffers), folding Python
    ints so that size-1 dimensions and zero offsets emit nothing."""

    def __init__(self, b: ir.IRBuilder, wide: bool):
        self.b = b
        self.t = I64 if wide else I32

    def v(self, x) -> ir.Value:
        return ir.Constant(self.t, int(x)) if isinstance(x, int) else x

    def add(self, x, y, name=""):
        if isinstance(x, int) and isinstance(y, int):
            return x + y
        if isinstance(y, int) and y == 0:
            return x
        if isinstance(x, int) and x == 0:
            return y
        return self.b.add(self.v(x), self.v(y), name=name)

    def mul(self, x, c: int, name=""):
        if isinstance(x, int):
            return x * c
        return x if c == 1 else 0 if c == 0 else self.b.mul(x, self.v(c), name=name)

    def div(self, x, c: int, name=""):
        if isinstance(x, int):
            return x // c
        return x if c == 1 else self.b.udiv(x, self.v(c), name=name)

    def rem(self, x, c: int, name=""):
        if isinstance(x, int):
            return x % c
        return 0 if c == 1 else self.b.urem(x, self.v(c), name=name)

    def below(self, x, c: int, name="") -> ir.Value:
        """x < c for x read as unsigned: a negative x (a padding tap) is not below."""
        return self.b.icmp_unsigned("<", self.v(x), self.v(c), name=name)

    def wide(self, x):
        """An i64 index (what `store_result` and KernelBuilder helpers take)."""
        if isinstance(x, int) or x.type == I64:
            return x
        return self.b.zext(x, I64)

    def narrow(self, x):
        """An i64 value in this type."""
        return x if isinstance(x, int) or self.t == I64 else self.b.trunc(x, self.t)

    def delinear(self, flat, shape: Sequence[int]) -> list:
        """The index of element `flat` (< numel, so the first axis needs no remainder)."""
        out, stride = [], numel(shape)
        for axis, d in enumerate(shape):
            stride //= d
            q = self.div(flat, stride)
            out.append(0 if d == 1 else q if axis == 0 else self.rem(q, d))
        return out

    def linear(self, index: Sequence, shape: Sequence[int]):
        off, stride = 0, 1
        for ix, d in zip(reversed(list(index)), reversed(list(shape))):
            off = self.add(off, self.mul(ix, stride))
            stride *= d
        return off


def wide_index(kb: GpuKernelBuilder) -> bool:
    """True if a buffer of the kernel has 2**30 elements or more: offsets computed for the
    rows and taps past an edge (then clamped) may go past the buffer, so i32 keeps a 2x
    margin."""
    return max(numel(kb.shape(v)) for v in list(kb.inputs) + list(kb.outputs)) >= 2 ** 30


def all_of(b: ir.IRBuilder, *conds) -> Optional[ir.Value]:
    """The conjunction of the conditions that are not None (None: always true)."""
    out = None
    for c in conds:
        if c is not None:
            out = c if out is None else b.and_(out, c)
    return out


def load_or_zero(b: ir.IRBuilder, ix: Ix, ptr: ir.Value, off, ok: Optional[ir.Value] = None,
          name: str = "", invariant: bool = False) -> ir.Value:
    """ptr[off], or 0 where `ok` is false, read from ptr[0] then (never out of bounds, and no
    branch). `invariant`: a GEMM operand, read at other indices than the output's (A, B, a
    convolution's x and w): nothing this kernel writes shares its buffer (an epilogue's
    operand may), so NVPTX may read it as ld.global.nc (the read-only data cache)."""
    off = ix.v(off)
    if ok is not None:
        off = b.select(ok, off, ix.v(0))
    x = b.load(b.gep(ptr, [off], inbounds=True), name=name)
    if invariant and ptr.type.addrspace == GLOBAL:
        x.set_metadata("invariant.load", b.module.add_metadata([]))
    return x if ok is None else b.select(ok, x, const(x.type, 0))


def fmuladd(b: ir.IRBuilder, x, y, acc) -> ir.Value:
    """x * y + acc, fused where the target has an FMA (it does on every GPU)."""
    name = "llvm.fmuladd.f32"
    fn = b.module.globals.get(name)
    if fn is None:
        fn = ir.Function(b.module, ir.FunctionType(F32, [F32, F32, F32]), name=name)
    return b.call(fn, [x, y, acc])


class counted_loop:
    """``for (i = 0; i < n; i++)`` with an `ix.t` counter (n a Python int)."""

    def __init__(self, b: ir.IRBuilder, ix: Ix, n: int, name: str):
        self.b, self.ix, self.n, self.name = b, ix, n, name

    def __enter__(self):
        b, fn = self.b, self.b.function
        pre = b.block
        self.header = fn.append_basic_block(f"{self.name}.header")
        body = fn.append_basic_block(f"{self.name}.body")
        self.exit = fn.append_basic_block(f"{self.name}.exit")
        b.branch(self.header)
        b.position_at_end(self.header)
        self.counter = b.phi(self.ix.t, name=self.name)
        self.counter.add_incoming(self.ix.v(0), pre)
        b.cbranch(b.icmp_unsigned("<", self.counter, self.ix.v(self.n)), body, self.exit)
        b.position_at_end(body)
        return self.counter

    def __exit__(self, *exc):
        if exc[0] is not None:
            return False
        b = self.b
        nxt = b.add(self.counter, self.ix.v(1), name=f"{self.name}.next")
        self.counter.add_incoming(nxt, b.block)
        b.branch(self.header)
        b.position_at_end(self.exit)
        return False


class maybe:
    """``if (cond) { ... }``, or just the body when cond is None (statically true)."""

    def __init__(self, b: ir.IRBuilder, cond: Optional[ir.Value]):
        self.b, self.cond, self.ctx = b, cond, None

    def __enter__(self):
        if self.cond is not None:
            self.ctx = self.b.if_then(self.cond)
            self.ctx.__enter__()

    def __exit__(self, *exc):
        if self.ctx is not None:
            return self.ctx.__exit__(*exc)
        return False


def per_element(kb: GpuKernelBuilder, ix: Ix) -> tuple:
    """One thread per output element (the default launch): (flat index as `ix.t`, the
    block to branch to when done). The body goes between; end it with `_done`."""
    kb.parallel_extent = numel(kb.shape(kb.outputs[0]))
    b = kb.b
    has = b.icmp_signed("<", kb.begin, kb.end, name="has.work")
    body = b.append_basic_block("element")
    done = b.append_basic_block("done")
    b.cbranch(has, body, done)
    b.position_at_end(body)
    return ix.narrow(kb.begin), done


def per_element_done(kb: GpuKernelBuilder, done) -> None:
    kb.b.branch(done)
    kb.b.position_at_end(done)
    kb.b.ret_void()
