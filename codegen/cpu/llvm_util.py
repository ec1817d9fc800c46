"""Small helpers over llvmlite.ir used by every kernel generator: types, constants, loops.

Loops are emitted in the canonical form LLVM's vectorizer and unroller like (a preheader, a
header with a phi, a latch), and every block and value gets a readable name, because people
read the generated IR in dumps.
"""

from __future__ import annotations

import contextlib
import struct
from typing import Iterator

import numpy as np
from llvmlite import ir

from slimc.ir import DType
from slimc.ir.errors import UnsupportedError

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F16 = ir.HalfType()
F32 = ir.FloatType()
F64 = ir.DoubleType()
PTR = ir.PointerType(I8)  # an opaque byte pointer; typed pointers are made by bitcast
VOID = ir.VoidType()

_LLVM_TYPES = {
    "f16": F16, "f32": F32, "f64": F64, "i8": I8, "i16": I16, "i32": I32, "i64": I64,
    "u8": I8, "u16": I16, "u32": I32, "u64": I64, "bool": I8,  # bool is stored as one byte
}


def has_llvm_type(dtype: DType) -> bool:
    return dtype.name in _LLVM_TYPES


def llvm_type(dtype: DType) -> ir.Type:
    try:
        return _LLVM_TYPES[dtype.name]
    except KeyError:
        raise UnsupportedError(f"the CPU backend does not support dtype {dtype}") from None


def const(t: ir.Type, value) -> ir.Constant:
    """A constant of scalar or vector type `t` (floats exact: float32 goes through its bits)."""
    if isinstance(t, ir.VectorType):
        return ir.Constant(t, [const(t.element, value)] * t.count)
    if isinstance(t, (ir.FloatType, ir.DoubleType, ir.HalfType)):
        v = float(value)
        if isinstance(t, ir.FloatType):
            v = struct.unpack("f", struct.pack("f", np.float32(v)))[0]
        return ir.Constant(t, v)
    if isinstance(t, ir.IntType):
        v = int(value)
        if t.width == 1:
            return ir.Constant(t, 1 if v else 0)
        mask = (1 << t.width) - 1
        return ir.Constant(t, v & mask)
    raise TypeError(f"no constant of type {t}")


def i64(v: int) -> ir.Constant:
    return ir.Constant(I64, int(v))


def element_type(t: ir.Type) -> ir.Type:
    return t.element if isinstance(t, ir.VectorType) else t


def is_float(t: ir.Type) -> bool:
    return isinstance(element_type(t), (ir.FloatType, ir.DoubleType, ir.HalfType))


def vector_of(t: ir.Type, lanes: int) -> ir.Type:
    return t if lanes == 1 else ir.VectorType(t, lanes)


def splat(b: ir.IRBuilder, x: ir.Value, lanes: int, name: str = "") -> ir.Value:
    """Broadcast scalar `x` to `lanes` lanes (no-op for lanes == 1 or if already a vector)."""
    if lanes == 1 or isinstance(x.type, ir.VectorType):
        return x
    vt = ir.VectorType(x.type, lanes)
    if isinstance(x, ir.Constant):
        return ir.Constant(vt, [x] * lanes)
    v = b.insert_element(ir.Constant(vt, ir.Undefined), x, I32(0), name=name + ".ins")
    return b.shuffle_vector(v, ir.Constant(vt, ir.Undefined), ir.Constant(ir.VectorType(I32, lanes),
                            [0] * lanes), name=name + ".splat")


def typed_ptr(b: ir.IRBuilder, p: ir.Value, elem: ir.Type, name: str = "") -> ir.Value:
    want = ir.PointerType(elem)
    return p if p.type == want else b.bitcast(p, want, name=name)


def gep(b: ir.IRBuilder, p: ir.Value, index: ir.Value, name: str = "") -> ir.Value:
    return b.gep(p, [index], inbounds=True, name=name)


def elem_bytes(t: ir.Type) -> int:
    t = element_type(t)
    if isinstance(t, ir.IntType):
        return max(1, t.width // 8)
    return {ir.HalfType: 2, ir.FloatType: 4, ir.DoubleType: 8}[type(t)]


def load(b: ir.IRBuilder, p: ir.Value, index: ir.Value, lanes: int = 1, name: str = "") -> ir.Value:
    """Load one element, or `lanes` contiguous elements as a vector, at p[index].

    Alignment is only that of the element: numpy buffers are not 64-byte aligned (an `align 64` vector load on one segfaults).
    """
    addr = gep(b, p, index, name=name + ".addr")
    if lanes == 1:
        return b.load(addr, name=name)
    vp = b.bitcast(addr, ir.PointerType(ir.VectorType(p.type.pointee, lanes)))
    return b.load(vp, name=name, align=elem_bytes(p.type.pointee))


def _type_suffix(t: ir.Type) -> str:
    if isinstance(t, ir.IntType):
        return f"i{t.width}"
    return {ir.FloatType: "f32", ir.DoubleType: "f64", ir.HalfType: "f16"}[type(t)]


OPAQUE_PTR = ir.PointerType()  # LLVM's `ptr`: what the masked intrinsics are declared with


def masked_intrinsic(module: ir.Module, kind: str, vt: ir.VectorType) -> ir.Function:
    """The one declaration of llvm.masked.load / llvm.masked.store for vector type `vt` that
    every generator shares: a module cannot hold two declarations of one name with different
    pointer types, so the pointer operand is opaque and callers cast to it (`masked_load_vector`,
    `masked_store_vector`). The explicit alignment operand is the pre-LLVM-22 signature, which
    the IR parser upgrades."""
    name = f"llvm.masked.{kind}.v{vt.count}{_type_suffix(vt.element)}.p0"
    fn = module.globals.get(name)
    if fn is None:
        mask = ir.VectorType(I1, vt.count)
        fnty = (ir.FunctionType(vt, [OPAQUE_PTR, I32, mask, vt]) if kind == "load"
                else ir.FunctionType(VOID, [vt, OPAQUE_PTR, I32, mask]))
        fn = ir.Function(module, fnty, name)
    return fn


def vector_gep(b: ir.IRBuilder, ptr: ir.Value, index: ir.Value, elem: ir.Type,
               name: str = "") -> ir.Value:
    """One pointer per lane, ptr + index[lane] elements (for llvm.masked.gather): a scalar
    base with a vector of i32 indices, the form x86 turns into vgatherdps. llvmlite types a
    gep's result as one pointer; the instruction's text is right, so its type is set here."""
    g = b.gep(ptr, [index], inbounds=True, name=name, source_etype=elem)
    g.type = ir.VectorType(OPAQUE_PTR, index.type.count)
    return g


def masked_load_vector(b: ir.IRBuilder, addr: ir.Value, vt: ir.VectorType, mask: ir.Value,
                       name: str = "") -> ir.Value:
    """The lanes of `mask` of a `vt` vector at `addr`; other lanes read as zero and touch no
    memory (for the partial last vector of a row)."""
    fn = masked_intrinsic(b.module, "load", vt)
    return b.call(fn, [b.bitcast(addr, OPAQUE_PTR), I32(elem_bytes(vt.element)), mask,
                       ir.Constant(vt, None)], name=name)


def first_lanes(vw: int, n: int) -> ir.Constant:
    """<vw x i1> with its first n lanes on: the mask of a partial vector."""
    return ir.Constant(ir.VectorType(ir.IntType(1), vw), [int(i < n) for i in range(vw)])


def masked_store_vector(b: ir.IRBuilder, value: ir.Value, addr: ir.Value, mask: ir.Value) -> None:
    """Store the lanes of `mask` (a <n x i1> vector) of `value` at `addr`.

    A constant mask with one lane on is stored as that scalar: LLVM 22's x86 backend turns a
    one-lane masked store into a scalar store and, where the stored vector is a truncation
    (<16 x i32> rounded, truncated to <16 x i8>: a requantizing epilogue), stores the
    untruncated lane: 4 bytes for 1 (measured: `vmovss` after `vcvtps2dq`, overwriting the
    next channel's first pixels, and past a buffer's end on the last one)."""
    lanes = _constant_lanes(mask)
    if lanes is not None and len(lanes) == 1:
        (lane,) = lanes
        ptr = b.gep(addr, [i64(lane)], inbounds=True, source_etype=value.type.element)
        b.store(b.extract_element(value, I32(lane)), ptr)
        return
    fn = masked_intrinsic(b.module, "store", value.type)
    b.call(fn, [value, b.bitcast(addr, OPAQUE_PTR), I32(elem_bytes(value.type.element)), mask])


def _constant_lanes(mask: ir.Value) -> list | None:
    """The lanes a constant <n x i1> mask has on, or None for a computed mask."""
    if not isinstance(mask, ir.Constant) or not isinstance(mask.constant, (list, tuple)):
        return None
    return [j for j, bit in enumerate(mask.constant) if _bit(bit)]


def _bit(c) -> bool:
    return bool(c.constant if isinstance(c, ir.Constant) else c)


def memset(b: ir.IRBuilder, dst: ir.Value, byte: int, nbytes: int) -> None:
    """nbytes bytes at dst set to `byte` (llvm.memset)."""
    m = b.module
    fn = m.globals.get("llvm.memset.p0.i64")
    if fn is None:
        fn = ir.Function(m, ir.FunctionType(ir.VoidType(), [OPAQUE_PTR, I8, I64, ir.IntType(1)]),
                         "llvm.memset.p0.i64")
    b.call(fn, [b.bitcast(dst, OPAQUE_PTR), ir.Constant(I8, byte & 0xFF), i64(nbytes),
                ir.Constant(ir.IntType(1), 0)])


def masked_load(b: ir.IRBuilder, p: ir.Value, index: ir.Value, mask: ir.Value, name: str = "") -> ir.Value:
    """Load the lanes of `mask` (a <n x i1> vector) at p[index]; other lanes read as zero."""
    vt = ir.VectorType(p.type.pointee, mask.type.count)
    return masked_load_vector(b, gep(b, p, index, name=name + ".addr"), vt, mask, name)


def store(b: ir.IRBuilder, value: ir.Value, p: ir.Value, index: ir.Value, name: str = "") -> None:
    addr = gep(b, p, index, name=name + ".addr")
    if isinstance(value.type, ir.VectorType):
        addr = b.bitcast(addr, ir.PointerType(value.type))
        b.store(value, addr, align=elem_bytes(value.type))
    else:
        b.store(value, addr)


@contextlib.contextmanager
def for_range(b: ir.IRBuilder, start, stop, step: int = 1, name: str = "i") -> Iterator[ir.Value]:
    """Emit ``for (name = start; name < stop; name += step) { body }``; yields the counter.

    `start` and `stop` are ints or i64 values. The body is emitted inside the ``with`` block;
    afterwards the builder sits after the loop.
    """
    start = i64(start) if isinstance(start, int) else start
    stop = i64(stop) if isinstance(stop, int) else stop
    fn = b.function
    pre = b.block
    header = fn.append_basic_block(f"{name}.header")
    body = fn.append_basic_block(f"{name}.body")
    exit_ = fn.append_basic_block(f"{name}.exit")
    b.branch(header)
    b.position_at_end(header)
    counter = b.phi(I64, name=name)
    counter.add_incoming(start, pre)
    b.cbranch(b.icmp_signed("<", counter, stop, name=f"{name}.cond"), body, exit_)
    b.position_at_end(body)
    yield counter
    nxt = b.add(counter, i64(step), name=f"{name}.next")
    counter.add_incoming(nxt, b.block)
    b.branch(header)
    b.position_at_end(exit_)


def both_conditions(b: ir.IRBuilder, a, c, name: str = ""):
    """a and c, each None (no condition), a Python bool or an i1 value, folded where known."""
    if a is None or a is True:
        return c if c is not None else a
    if c is None or c is True:
        return a
    if a is False or c is False:
        return False
    return b.and_(a, c, name=name)


def carried_loop(b: ir.IRBuilder, lo, hi, init: list, body, name: str) -> list:
    """for i in [lo, hi): values = body(i, values); returns the values after the loop (the
    accumulators live in registers through phis, not in memory)."""
    fn = b.function
    pre = b.block
    head = fn.append_basic_block(name + ".head")
    loop = fn.append_basic_block(name + ".body")
    done = fn.append_basic_block(name + ".done")
    b.branch(head)
    b.position_at_end(head)
    i = b.phi(lo.type, name=name)
    i.add_incoming(lo, pre)
    phis = [b.phi(v.type, name=f"{name}.acc{n}") for n, v in enumerate(init)]
    for ph, v in zip(phis, init):
        ph.add_incoming(v, pre)
    b.cbranch(b.icmp_signed("<", i, hi, name=name + ".cond"), loop, done)
    b.position_at_end(loop)
    out = body(i, list(phis))
    nxt = b.add(i, ir.Constant(lo.type, 1), name=name + ".next")
    i.add_incoming(nxt, b.block)
    for ph, v in zip(phis, out):
        ph.add_incoming(v, b.block)
    b.branch(head)
    b.position_at_end(done)
    return list(phis)


def all_finite(b: ir.IRBuilder, p: ir.Value, n: int, vw: int, name: str = "finite") -> ir.Value:
    """An i1: whether the n floats at `p` are all finite. x - x is NaN exactly where x is
    NaN or infinite (no fast-math flags, so LLVM keeps the subtraction); each vector's
    unordered lanes are or-ed into a mask (a one-cycle chain). The last partial vector
    re-reads the tail of the one before (n >= vw); shorter runs go a scalar at a time."""
    lanes = vw if n >= vw else 1
    ft = p.type.pointee
    vt = ir.VectorType(ft, lanes) if lanes > 1 else ft
    mt = ir.VectorType(ir.IntType(1), lanes) if lanes > 1 else ir.IntType(1)

    def bad(i):
        """Which of the `lanes` floats from element i are not finite."""
        at = b.gep(p, [i], inbounds=True)
        v = b.load(b.bitcast(at, ir.PointerType(vt)), align=4) if lanes > 1 else b.load(at)
        zero = b.fsub(v, v, name=name + ".zero")
        return b.fcmp_unordered("uno", zero, zero, name=name + ".bad")

    [found] = carried_loop(b, i64(0), i64(n // lanes), [ir.Constant(mt, 0)],
                           lambda i, acc: [b.or_(acc[0], bad(b.mul(i, i64(lanes))))], name)
    if n % lanes:
        found = b.or_(found, bad(i64(n - lanes)))
    if lanes > 1:
        found = b.bitcast(found, ir.IntType(lanes))
    return b.icmp_unsigned("==", found, ir.Constant(found.type, 0), name=name)


def shared_functions(module: ir.Module) -> dict:
    """The module's functions by what decides their code (a GEMM micro-kernel's tile, a
    Winograd transform's size): a kernel asks here before it generates one, so every kernel
    of the module calls the same function, generated, printed and compiled once."""
    if not hasattr(module, "_slimc_shared"):
        module._slimc_shared = {}
    return module._slimc_shared


def new_shared_function(module: ir.Module, key: tuple, name: str,
                        fnty: ir.FunctionType) -> ir.Function:
    """A function for `shared_functions(module)[key]`: noinline, and not internal, so that
    parts.cut places it in one part, which compiles it once (an internal one is copied into
    every part that calls it), with the vector pipeline (`shared_pipelines`): the shared
    functions are explicit vector code."""
    fn = ir.Function(module, fnty, unique_name(module, name))
    fn.attributes.add("nounwind")
    fn.attributes.add("noinline")
    shared_pipelines(module)[fn.name] = "vector"
    shared_functions(module)[key] = fn
    return fn


def shared_pipelines(module: ir.Module) -> dict:
    """{shared function name: its pipeline} (parts.py), beside the kernels' own."""
    if not hasattr(module, "_slimc_pipelines"):
        module._slimc_pipelines = {}
    return module._slimc_pipelines


def unique_name(module: ir.Module, name: str) -> str:
    """`name`, or `name.2`, `name.3`... if the module has it already."""
    out, n = name, 1
    while out in module.globals:
        n += 1
        out = f"{name}.{n}"
    return out


def entry_alloca(b: ir.IRBuilder, typ: ir.Type, name: str = "") -> ir.Value:
    """A stack slot made in the function's entry block (a static alloca, even when the read or
    write happens in a later block)."""
    entry = b.function.entry_basic_block
    if b.block is entry:
        return b.alloca(typ, name=name)
    at_entry = ir.IRBuilder(entry)  # a second builder is safe only in another block
    at_entry.position_at_start(entry)
    return at_entry.alloca(typ, name=name)
