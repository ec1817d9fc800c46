"""The entry function: one native call runs every kernel of a model in order.

    void @slimc_main(i8** %inputs, i8** %outputs, i8* %arena, i8* %weights)

Each buffer lives in one of four places, decided by the runtime's memory plan: a graph input,
a graph output (the caller's fresh array), the arena (intermediates, at planned offsets) or the
weights blob (constants, prepacked at compile time). The entry function computes every
kernel's argument array from those and calls the kernel over its whole work range, so a call
from Python costs one foreign call whatever the model's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from llvmlite import ir

from .kernel import Kernel, llvm_name
from .llvm_util import I64, PTR, VOID, i64

INPUT, OUTPUT, ARENA, WEIGHTS = "input", "output", "arena", "weights"


@dataclass(frozen=True)
class Placement:
    space: str  # INPUT, OUTPUT, ARENA or WEIGHTS
    offset: int  # slot index for inputs/outputs, byte offset for arena/weights


def build_entry(module: ir.Module, kernels: Sequence[Kernel], placement: dict,
                name: str = "slimc_main") -> ir.Function:
    """`placement` maps id(Value) -> Placement for every kernel input and output."""
    fnty = ir.FunctionType(VOID, [ir.PointerType(PTR), ir.PointerType(PTR), PTR, PTR])
    fn = ir.Function(module, fnty, name=name)
    for a, n in zip(fn.args, ("inputs", "outputs", "arena", "weights")):
        a.name = n
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    inputs, outputs, arena, weights = fn.args
    kty = ir.FunctionType(VOID, [ir.PointerType(PTR), I64, I64])
    widest = max((len(k.inputs) + len(k.outputs) for k in kernels), default=1)
    args = b.alloca(PTR, size=i64(max(widest, 1)), name="kernel_args")
    for k in kernels:
        callee = k.function or module.globals[k.name]
        for slot, v in enumerate(list(k.inputs) + list(k.outputs)):
            p = placement[id(v)]
            if p.space in (INPUT, OUTPUT):
                table = inputs if p.space == INPUT else outputs
                ptr = b.load(b.gep(table, [i64(p.offset)], inbounds=True), name=llvm_name(v.name))
            else:
                base = arena if p.space == ARENA else weights
                ptr = b.gep(base, [i64(p.offset)], inbounds=True, name=llvm_name(v.name))
            b.store(ptr, b.gep(args, [i64(slot)], inbounds=True))
        b.call(callee, [args, i64(0), i64(k.parallel_extent)])
    b.ret_void()
    return fn
