"""The entry function: one native call runs every kernel of a model in order.

    void @slimc_main(i8** %inputs, i8** %outputs, i8* %arena, i8* %weights)

Each buffer lives in one of four places, decided by the runtime's memory plan: a graph input,
a graph output (the caller's fresh array), the arena (intermediates, at planned offsets) or the
weights blob (constants, prepacked at compile time). The entry function computes every
kernel's argument array from those and calls the kernel over its whole work range, so a call
from Python costs one foreign call whatever the model's size.

Threads: a kernel with enough work is split across `threads` threads with libgomp's
``GOMP_parallel`` (the OpenMP runtime that ships with gcc): each thread runs a contiguous share
of the kernel's work items. Small kernels run on the calling thread, since a fork/join costs
more than they do.

Denormals: on x86 the entry function sets flush-to-zero and denormals-are-zero in MXCSR for
the call (on every thread that runs a kernel) and restores the caller's MXCSR before returning.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from llvmlite import ir

from .kernel import Kernel, llvm_name
from .llvm_util import I32, I64, PTR, VOID, i64

INPUT, OUTPUT, ARENA, WEIGHTS = "input", "output", "arena", "weights"
MXCSR_FTZ_DAZ = 0x8040  # bit 15: flush to zero, bit 6: denormals are zero
# Below this much work a kernel runs on the calling thread: a GOMP_parallel fork/join costs a
# few microseconds, which a kernel of ~50k elements takes anyway.
PARALLEL_MIN_COST = 1 << 15


@dataclass(frozen=True)
class Placement:
    space: str  # INPUT, OUTPUT, ARENA or WEIGHTS
    offset: int  # slot index for inputs/outputs, byte offset for arena/weights


KERNEL_TYPE = ir.FunctionType(VOID, [ir.PointerType(PTR), I64, I64])
# what the entry function hands each thread: kernel, its args, its work extent, MXCSR to use
TASK_TYPE = ir.LiteralStructType([ir.PointerType(KERNEL_TYPE), ir.PointerType(PTR), I64, I32])


def _declare(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(module, fnty, name=name)


def _mxcsr(b: ir.IRBuilder, module: ir.Module, slot: ir.Value, op: str) -> None:
    fn = _declare(module, f"llvm.x86.sse.{op}", ir.FunctionType(VOID, [PTR]))
    b.call(fn, [b.bitcast(slot, PTR)])


def _set_mxcsr(b, module, want: ir.Value, name: str) -> ir.Value:
    """Save MXCSR into a slot and load `want`; returns the slot holding the old value."""
    old = b.alloca(I32, name=f"{name}.saved_mxcsr")
    _mxcsr(b, module, old, "stmxcsr")
    new = b.alloca(I32, name=f"{name}.mxcsr")
    b.store(want, new)
    _mxcsr(b, module, new, "ldmxcsr")
    return old


def _thread_body(module: ir.Module, set_mxcsr: bool) -> ir.Function:
    """void @slimc_thread(i8* task): this thread's share of [0, extent)."""
    fn = ir.Function(module, ir.FunctionType(VOID, [PTR]), name="slimc_thread")
    fn.linkage = "internal"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    task = b.bitcast(fn.args[0], ir.PointerType(TASK_TYPE), name="task")
    kernel = b.load(b.gep(task, [I32(0), I32(0)], inbounds=True), name="kernel")
    args = b.load(b.gep(task, [I32(0), I32(1)], inbounds=True), name="args")
    extent = b.load(b.gep(task, [I32(0), I32(2)], inbounds=True), name="extent")
    tid = b.sext(b.call(_declare(module, "omp_get_thread_num", ir.FunctionType(I32, [])), []), I64, name="tid")
    nth = b.sext(b.call(_declare(module, "omp_get_num_threads", ir.FunctionType(I32, [])), []), I64, name="nthreads")
    lo = b.sdiv(b.mul(extent, tid), nth, name="lo")
    hi = b.sdiv(b.mul(extent, b.add(tid, i64(1))), nth, name="hi")
    if set_mxcsr:
        want = b.load(b.gep(task, [I32(0), I32(3)], inbounds=True), name="mxcsr")
        old = _set_mxcsr(b, module, want, "thread")
    b.call(kernel, [args, lo, hi])
    if set_mxcsr:
        _mxcsr(b, module, old, "ldmxcsr")
    b.ret_void()
    return fn


def _build_step(module: ir.Module, index: int, k: Kernel, placement: dict, threads: int,
                mxcsr: bool) -> ir.Function:
    """void @slimc_step_<i>(inputs, outputs, arena, weights, i32 mxcsr): one kernel call,
    its argument array built from the placements, split across threads if it is worth it."""
    fnty = ir.FunctionType(VOID, [ir.PointerType(PTR), ir.PointerType(PTR), PTR, PTR, I32])
    fn = ir.Function(module, fnty, name=f"slimc_step_{index}")
    fn.linkage = "internal"
    for a, n in zip(fn.args, ("inputs", "outputs", "arena", "weights", "mxcsr")):
        a.name = n
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    inputs, outputs, arena, weights, call_mxcsr = fn.args
    args = b.alloca(PTR, size=i64(max(len(k.buffers), 1)), name="kernel_args")
    callee = k.function or module.globals[k.name]
    for slot_i, v in enumerate(k.buffers):
        p = placement[id(v)]
        if p.space in (INPUT, OUTPUT):
            table = inputs if p.space == INPUT else outputs
            ptr = b.load(b.gep(table, [i64(p.offset)], inbounds=True), name=llvm_name(v.name))
        else:
            base = arena if p.space == ARENA else weights
            ptr = b.gep(base, [i64(p.offset)], inbounds=True, name=llvm_name(v.name))
        b.store(ptr, b.gep(args, [i64(slot_i)], inbounds=True))
    if threads > 1 and k.parallel_extent > 1 and k.cost >= PARALLEL_MIN_COST:
        body = module.globals.get("slimc_thread") or _thread_body(module, mxcsr)
        gomp = _declare(module, "GOMP_parallel", ir.FunctionType(
            VOID, [ir.PointerType(ir.FunctionType(VOID, [PTR])), PTR, I32, I32]))
        task = b.alloca(TASK_TYPE, name="task")
        b.store(callee, b.gep(task, [I32(0), I32(0)], inbounds=True))
        b.store(args, b.gep(task, [I32(0), I32(1)], inbounds=True))
        b.store(i64(k.parallel_extent), b.gep(task, [I32(0), I32(2)], inbounds=True))
        b.store(call_mxcsr, b.gep(task, [I32(0), I32(3)], inbounds=True))
        nthreads = min(threads, k.parallel_extent)
        b.call(gomp, [body, b.bitcast(task, PTR), I32(nthreads), I32(0)])
    else:
        b.call(callee, [args, i64(0), i64(k.parallel_extent)])
    b.ret_void()
    return fn


def build_entry(module: ir.Module, kernels: Sequence[Kernel], placement: dict,
                threads: int = 1, ftz: bool = True, is_x86: bool = True) -> ir.Function:
    """Emit the steps, ``slimc_run`` and ``slimc_main``.

    ``void @slimc_run(inputs, outputs, arena, weights, i64 first, i64 last)`` runs kernels
    [first, last) (the profiler times them one by one); ``slimc_main`` runs them all.
    `placement` maps id(Value) -> Placement for every kernel buffer.

    On x86 the MXCSR in force for the call (the caller's, with FTZ/DAZ added when `ftz`) is
    handed to every worker thread: pool threads keep whatever state they had before, so
    they must be told, whether flushing or not.
    """
    mxcsr = is_x86
    steps = [_build_step(module, i, k, placement, threads, mxcsr) for i, k in enumerate(kernels)]
    tables = [ir.PointerType(PTR), ir.PointerType(PTR), PTR, PTR]
    run = ir.Function(module, ir.FunctionType(VOID, tables + [I64, I64]), name="slimc_run")
    for a, n in zip(run.args, ("inputs", "outputs", "arena", "weights", "first", "last")):
        a.name = n
    b = ir.IRBuilder(run.append_basic_block("entry"))
    inputs, outputs, arena, weights, first, last = run.args
    call_mxcsr = I32(0)
    if mxcsr:
        caller = b.alloca(I32, name="caller_mxcsr")
        _mxcsr(b, module, caller, "stmxcsr")
        call_mxcsr = b.load(caller, name="call_mxcsr")
        if ftz:
            call_mxcsr = b.or_(call_mxcsr, I32(MXCSR_FTZ_DAZ), name="ftz_mxcsr")
            slot = b.alloca(I32, name="call_mxcsr")
            b.store(call_mxcsr, slot)
            _mxcsr(b, module, slot, "ldmxcsr")
    for i, step in enumerate(steps):
        wanted = b.and_(b.icmp_signed("<=", first, i64(i)), b.icmp_signed(">", last, i64(i)),
                        name=f"run_{i}")
        with b.if_then(wanted):
            b.call(step, [inputs, outputs, arena, weights, call_mxcsr])
    if mxcsr and ftz:
        _mxcsr(b, module, caller, "ldmxcsr")
    b.ret_void()
    main = ir.Function(module, ir.FunctionType(VOID, tables), name="slimc_main")
    for a, n in zip(main.args, ("inputs", "outputs", "arena", "weights")):
        a.name = n
    b = ir.IRBuilder(main.append_basic_block("entry"))
    b.call(run, list(main.args) + [i64(0), i64(len(kernels))])
    b.ret_void()
    return main
