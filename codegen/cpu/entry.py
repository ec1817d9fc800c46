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
more than they do. ``threads=0`` (RUNTIME_THREADS) leaves the count to the machine that runs
the code (``omp_get_max_threads()``: OMP_NUM_THREADS or its cores), which is what a
cross-compiled library wants: the compiling host's core count says nothing about the target's.
The OpenMP calls are plain C declarations, so the same IR links against libgomp on x86-64 and
AArch64 alike.

Denormals: the entry function sets the CPU's flush-to-zero control for the call (on every
thread that runs a kernel) and restores the caller's setting before returning. On x86 that is
MXCSR (FTZ and DAZ, through llvm.x86.sse.stmxcsr/ldmxcsr); on AArch64 it is FPCR bit 24 (FZ,
which flushes denormal inputs and results alike), read and written with LLVM's
``llvm.aarch64.get.fpcr``/``set.fpcr`` intrinsics (``mrs``/``msr``; inline assembly would not
do: llvmlite has no AArch64 asm parser to emit an object with it, and LLVM aborts the process).
Other architectures get no FP-state code.
"""

from __future__ import annotations

from typing import Sequence

from llvmlite import ir

from slimc.ir.buffers import (ARRAY_C_CONTIGUOUS, ARRAY_DATA_OFFSET, ARRAY_DESCR_OFFSET,
                               ARRAY_DIMS_OFFSET, ARRAY_FLAGS_OFFSET, ARRAY_NDIM_OFFSET,
                               OBJECT_TYPE_OFFSET, TUPLE_ITEMS_OFFSET)

from ..backend import ARENA, INPUT, OUTPUT
from .kernel import Kernel, llvm_name
from .llvm_util import I32, I64, PTR, VOID, entry_alloca, for_range, i64

MXCSR_FTZ_DAZ = 0x8040  # bit 15: flush to zero, bit 6: denormals are zero
FPCR_FZ = 1 << 24  # AArch64 FPCR.FZ: denormal inputs and results of float ops become zero
RUNTIME_THREADS = 0  # `threads` value: the running machine's OpenMP decides how many
# Below this much work a kernel runs on the calling thread: a GOMP_parallel fork/join costs a
# few microseconds, which a kernel of ~50k elements takes anyway.
PARALLEL_MIN_COST = 1 << 15
CLOCK_MONOTONIC = 1  # Linux's clockid, on x86-64 and AArch64 alike
TIMESPEC = ir.LiteralStructType([I64, I64])  # struct timespec on a 64-bit Linux


KERNEL_TYPE = ir.FunctionType(VOID, [ir.PointerType(PTR), I64, I64])
# what the entry function hands each thread: kernel, its args, its work extent, FP control word
TASK_TYPE = ir.LiteralStructType([ir.PointerType(KERNEL_TYPE), ir.PointerType(PTR), I64, I32])


def _declare(module: ir.Module, name: str, fnty: ir.FunctionType) -> ir.Function:
    fn = module.globals.get(name)
    return fn if fn is not None else ir.Function(module, fnty, name=name)


class FpControl:
    """Reads and writes the floating-point control register that holds flush-to-zero.

    The value travels as an i32 (MXCSR is 32 bits; FPCR's defined bits are all below 32, the
    rest are RES0), so worker threads get the same task layout on every architecture.
    """

    def __init__(self, arch: str):
        self.arch = arch
        self.flush_bits = MXCSR_FTZ_DAZ if arch == "x86_64" else FPCR_FZ

    @staticmethod
    def for_arch(arch: str) -> "FpControl | None":
        """The control of `arch` (a triple's first part), or None where slimc has none."""
        return FpControl(arch) if arch in ("x86_64", "aarch64") else None

    def read(self, b: ir.IRBuilder, name: str) -> ir.Value:
        if self.arch == "x86_64":
            slot = entry_alloca(b, I32, f"{name}.slot")
            fn = _declare(b.module, "llvm.x86.sse.stmxcsr", ir.FunctionType(VOID, [PTR]))
            b.call(fn, [b.bitcast(slot, PTR)])
            return b.load(slot, name=name)
        fn = _declare(b.module, "llvm.aarch64.get.fpcr", ir.FunctionType(I64, []))
        return b.trunc(b.call(fn, [], name=f"{name}.fpcr"), I32, name=name)

    def write(self, b: ir.IRBuilder, value: ir.Value) -> None:
        if self.arch == "x86_64":
            slot = entry_alloca(b, I32, "fp_control.store")
            b.store(value, slot)
            fn = _declare(b.module, "llvm.x86.sse.ldmxcsr", ir.FunctionType(VOID, [PTR]))
            b.call(fn, [b.bitcast(slot, PTR)])
            return
        fn = _declare(b.module, "llvm.aarch64.set.fpcr", ir.FunctionType(VOID, [I64]))
        b.call(fn, [b.zext(value, I64)])


def _thread_body(module: ir.Module, fp: "FpControl | None") -> ir.Function:
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
    if fp is not None:
        want = b.load(b.gep(task, [I32(0), I32(3)], inbounds=True), name="fp_control")
        old = fp.read(b, "thread.saved_fp_control")
        fp.write(b, want)
    b.call(kernel, [args, lo, hi])
    if fp is not None:
        fp.write(b, old)
    b.ret_void()
    return fn


def _build_step(module: ir.Module, index: int, k: Kernel, placement: dict, threads: int,
                fp: "FpControl | None") -> ir.Function:
    """void @slimc_step_<i>(inputs, outputs, arena, weights, i32 fp_control): one kernel call,
    its argument array built from the placements, split across threads if it is worth it."""
    fnty = ir.FunctionType(VOID, [ir.PointerType(PTR), ir.PointerType(PTR), PTR, PTR, I32])
    fn = ir.Function(module, fnty, name=f"slimc_step_{index}")
    fn.linkage = "internal"
    for a, n in zip(fn.args, ("inputs", "outputs", "arena", "weights", "fp_control")):
        a.name = n
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    inputs, outputs, arena, weights, call_fp = fn.args
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
    if threads != 1 and k.parallel_extent > 1 and k.cost >= PARALLEL_MIN_COST:
        body = module.globals.get("slimc_thread") or _thread_body(module, fp)
        gomp = _declare(module, "GOMP_parallel", ir.FunctionType(
            VOID, [ir.PointerType(ir.FunctionType(VOID, [PTR])), PTR, I32, I32]))
        task = b.alloca(TASK_TYPE, name="task")
        b.store(callee, b.gep(task, [I32(0), I32(0)], inbounds=True))
        b.store(args, b.gep(task, [I32(0), I32(1)], inbounds=True))
        b.store(i64(k.parallel_extent), b.gep(task, [I32(0), I32(2)], inbounds=True))
        b.store(call_fp, b.gep(task, [I32(0), I32(3)], inbounds=True))
        if threads == RUNTIME_THREADS:  # as many as the running machine allows, <= extent
            most = b.call(_declare(module, "omp_get_max_threads", ir.FunctionType(I32, [])), [],
                          name="max_threads")
            fewer = b.icmp_signed("<", most, I32(k.parallel_extent))
            nthreads = b.select(fewer, most, I32(k.parallel_extent), name="nthreads")
        else:
            nthreads = I32(min(threads, k.parallel_extent))
        b.call(gomp, [body, b.bitcast(task, PTR), nthreads, I32(0)])
    else:
        b.call(callee, [args, i64(0), i64(k.parallel_extent)])
    b.ret_void()
    return fn


def build_entry(module: ir.Module, kernels: Sequence[Kernel], placement: dict,
                threads: int = 1, ftz: bool = True, arch: str = "x86_64") -> ir.Function:
    """Emit the steps, ``slimc_run``, ``slimc_timed`` and ``slimc_main``.

    ``void @slimc_run(inputs, outputs, arena, weights, i64 first, i64 last)`` runs kernels
    [first, last) (the profiler times a kernel alone with it); ``slimc_main`` runs them all;
    ``void @slimc_timed(inputs, outputs, arena, weights, i64* ns)`` runs them all and writes
    each step's wall nanoseconds to ns[i] and the whole run's to ns[len(kernels)]: the
    profile of a real call, where each kernel finds the caches as the one before left them
    (BERT's small kernels cost 2-3x inside the call what they cost alone). All three go
    through one ``slimc_steps``, so the steps are compiled once; a call that is not timed
    pays one predictable branch a step.
    `placement` maps id(Value) -> Placement for every kernel buffer. `threads`: at most this
    many per kernel, or RUNTIME_THREADS. `arch`: the target triple's first part.

    The FP control word in force for the call (the caller's, with flush-to-zero added when
    `ftz`) is handed to every worker thread: pool threads keep whatever state they had
    before, so they must be told, whether flushing or not.
    """
    fp = FpControl.for_arch(arch)
    steps = [_build_step(module, i, k, placement, threads, fp) for i, k in enumerate(kernels)]
    tables = [ir.PointerType(PTR), ir.PointerType(PTR), PTR, PTR]
    ns_type = ir.PointerType(I64)
    run = ir.Function(module, ir.FunctionType(VOID, tables + [I64, I64, ns_type]),
                      name="slimc_steps")
    run.linkage = "internal"
    for a, n in zip(run.args, ("inputs", "outputs", "arena", "weights", "first", "last", "ns")):
        a.name = n
    run.attributes.add("noinline")  # three entries call it: one copy of the steps, not three
    b = ir.IRBuilder(run.append_basic_block("entry"))
    inputs, outputs, arena, weights, first, last, ns = run.args
    timed = b.icmp_unsigned("!=", ns, ir.Constant(ns_type, None), name="timed")
    clock = b.alloca(TIMESPEC, name="clock")
    started = _clock_if(b, timed, clock, "started")
    call_fp = I32(0)
    if fp is not None:
        caller_fp = fp.read(b, "caller_fp_control")
        call_fp = caller_fp
        if ftz:
            call_fp = b.or_(caller_fp, I32(fp.flush_bits), name="ftz_fp_control")
            fp.write(b, call_fp)
    for i, step in enumerate(steps):
        wanted = b.and_(b.icmp_signed("<=", first, i64(i)), b.icmp_signed(">", last, i64(i)),
                        name=f"run_{i}")
        with b.if_then(wanted):
            before = _clock_if(b, timed, clock, f"before_{i}")
            b.call(step, [inputs, outputs, arena, weights, call_fp])
            _store_elapsed(b, timed, clock, before, b.gep(ns, [i64(i)]), f"step_{i}")
    if fp is not None and ftz:
        fp.write(b, caller_fp)
    _store_elapsed(b, timed, clock, started, b.gep(ns, [i64(len(steps))]), "whole")
    b.ret_void()

    def entry(name: str, params: list, names: tuple, extra) -> ir.Function:
        fn = ir.Function(module, ir.FunctionType(VOID, tables + params), name=name)
        for a, n in zip(fn.args, ("inputs", "outputs", "arena", "weights") + names):
            a.name = n
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        b.call(run, list(fn.args[:4]) + extra(fn.args))
        b.ret_void()
        return fn

    last_step = i64(len(kernels))
    entry("slimc_run", [I64, I64], ("first", "last"),
          lambda a: [a[4], a[5], ir.Constant(ns_type, None)])
    entry("slimc_timed", [ns_type], ("ns",), lambda a: [i64(0), last_step, a[4]])
    return entry("slimc_main", [], (), lambda a: [i64(0), last_step, ir.Constant(ns_type, None)])


def _clock_if(b: ir.IRBuilder, timed: ir.Value, slot: ir.Value, name: str) -> ir.Value:
    """The monotonic clock in nanoseconds when `timed`, else 0 (`slot`: a TIMESPEC).
    clock_gettime is the clock Python's perf_counter reads (a vDSO call, ~20 ns), on every
    Linux architecture, in the JIT and in an exported library alike."""
    before = b.block
    with b.if_then(timed):
        fn = _declare(b.module, "clock_gettime", ir.FunctionType(I32, [I32, PTR]))
        b.call(fn, [I32(CLOCK_MONOTONIC), b.bitcast(slot, PTR)])
        sec = b.load(b.gep(slot, [I32(0), I32(0)], inbounds=True))
        nsec = b.load(b.gep(slot, [I32(0), I32(1)], inbounds=True))
        now = b.add(b.mul(sec, i64(1_000_000_000)), nsec, name=f"{name}.now")
        read = b.block
    value = b.phi(I64, name=name)
    value.add_incoming(now, read)
    value.add_incoming(i64(0), before)
    return value


def _store_elapsed(b: ir.IRBuilder, timed: ir.Value, clock: ir.Value, since: ir.Value,
                   slot: ir.Value, name: str) -> None:
    """*slot = now - since, when `timed`."""
    now = _clock_if(b, timed, clock, f"{name}.end")
    with b.if_then(timed):
        b.store(b.sub(now, since, name=f"{name}.ns"), slot)


# ops whose operand 1 indexes one dimension of operand 0 (`axis`), and the views through which
# an input still holds the same index values
_INDEXING = ("gather", "gather_elements", "scatter_elements")
_SAME_VALUES = ("reshape", "squeeze", "unsqueeze", "flatten", "identity")


def index_bounds(graph) -> list:
    """Per graph input, (n, node label) if its values index a dimension of n elements (through
    views), the smallest such n, else None: ONNX calls an index outside [-n, n) an error, and
    the kernels, which cannot raise, read element 0 for one, so the call checks them first."""
    bounds: list = []
    for v in graph.inputs:
        best, todo = None, [v] if v.type.dtype.name in ("i32", "i64") else []
        while todo:
            value = todo.pop()
            for node, i in value.uses:
                if node.op in _SAME_VALUES and i == 0:
                    todo.extend(node.outputs)
                elif node.op in _INDEXING and i == 1 and node.inputs[0].type.rank:
                    data = node.inputs[0].type
                    n = data.shape[int(node.attrs.get("axis", 0)) % data.rank]
                    if isinstance(n, int) and (best is None or n < best[0]):
                        best = (n, node.label or node.outputs[0].name)
        bounds.append(best)
    return bounds


def _check_indices(b: ir.IRBuilder, values: ir.Value, numel: int, n: int, fault: ir.Value,
                   found: ir.Block, name: str) -> None:
    """A loop over `numel` index values at `values` (i32* or i64*) that branches to `found` at
    the first one outside [-n, n), its position and value left in `fault` slots 1 and 2."""
    with for_range(b, 0, numel, 1, name=f"{name}.k") as k:
        v = b.load(b.gep(values, [k], inbounds=True), name=f"{name}.v")
        v = b.sext(v, I64) if v.type != I64 else v
        # -n <= v < n  <=>  v + n < 2n, unsigned
        ok = b.icmp_unsigned("<", b.add(v, i64(n)), i64(2 * n), name=f"{name}.ok")
        b.store(k, b.gep(fault, [i64(1)], inbounds=True))
        b.store(v, b.gep(fault, [i64(2)], inbounds=True))
        in_range = b.function.append_basic_block(f"{name}.in_range")
        b.cbranch(ok, in_range, found)
        b.position_at_end(in_range)


def _label_constant(module: ir.Module, label: str, name: str) -> ir.GlobalVariable:
    text = bytearray(label.encode("utf-8")[:200] + b"\0")
    ty = ir.ArrayType(ir.IntType(8), len(text))
    cstr = ir.GlobalVariable(module, ty, module.get_unique_name(name))
    cstr.global_constant, cstr.linkage = True, "private"
    cstr.initializer = ir.Constant(ty, text)
    return cstr


def build_exact_call(module: ir.Module, main: ir.Function, input_shapes: Sequence[tuple],
                     n_outputs: int, bounds: Sequence = (),
                     index_bits: Sequence[int] = ()) -> ir.Function:
    """``i32 @slimc_exact(objects)``: ``slimc_main`` for a caller that holds Python objects,
    one tuple (inputs..., outputs..., arena, weights, spec) of numpy arrays, `spec` an int64
    array of the addresses of numpy's ndarray type and of each input's dtype. It returns 1
    before running anything unless every input is an ndarray of exactly its dtype and shape,
    C-contiguous (what `NativeModule.given_exactly` asks), and 0 once it has run: the
    checks and both pointer tables cost a few nanoseconds here, where in Python they were
    most of a small model's call (0.5 us to check an input, 3 us to build the tables, 0.3 us
    a ctypes argument). It reads the objects' fields at the offsets in ir/buffers.py, a
    field of an array only once the object's type is ndarray; only runtime/native.py calls
    it, after checking those offsets on live objects. With `bounds` (`index_bounds`; the
    inputs' integer widths in `index_bits`) it returns 2 before running anything when an index
    input holds a value out of its range, and says which in spec's INDEX_FAULT_SLOTS slots
    after the dtypes."""
    fn = ir.Function(module, ir.FunctionType(I32, [PTR]), name="slimc_exact")
    fn.args[0].name = "objects"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    missed = fn.append_basic_block("not_exact")
    n_inputs = len(input_shapes)
    items = b.bitcast(b.gep(fn.args[0], [i64(TUPLE_ITEMS_OFFSET)], inbounds=True),
                      ir.PointerType(PTR), name="items")

    def field(obj, offset: int, ty: ir.Type, name: str) -> ir.Value:
        at = b.bitcast(b.gep(obj, [i64(offset)], inbounds=True), ir.PointerType(ty))
        return b.load(at, name=name)

    def item(i: int, name: str) -> ir.Value:
        return b.load(b.gep(items, [i64(i)], inbounds=True), name=name)

    def require(ok: ir.Value, name: str) -> None:
        passed = fn.append_basic_block(name)
        b.cbranch(ok, passed, missed)
        b.position_at_end(passed)

    spec = b.bitcast(field(item(n_inputs + n_outputs + 2, "spec"), ARRAY_DATA_OFFSET, PTR,
                           "spec.data"), ir.PointerType(I64), name="spec")
    ndarray = b.load(spec, name="ndarray_type")
    for i, shape in enumerate(input_shapes):
        a = item(i, f"input{i}")
        kind = b.ptrtoint(field(a, OBJECT_TYPE_OFFSET, PTR, f"input{i}.type"), I64)
        require(b.icmp_unsigned("==", kind, ndarray), f"input{i}.is_ndarray")
        dtype = b.ptrtoint(field(a, ARRAY_DESCR_OFFSET, PTR, f"input{i}.dtype"), I64)
        want = b.load(b.gep(spec, [i64(1 + i)], inbounds=True), name=f"input{i}.want")
        ok = b.icmp_unsigned("==", dtype, want)
        ok = b.and_(ok, b.icmp_signed("==", field(a, ARRAY_NDIM_OFFSET, I32, f"input{i}.ndim"),
                                      I32(len(shape))))
        flags = field(a, ARRAY_FLAGS_OFFSET, I32, f"input{i}.flags")
        ok = b.and_(ok, b.icmp_unsigned("!=", b.and_(flags, I32(ARRAY_C_CONTIGUOUS)), I32(0)))
        require(ok, f"input{i}.dtype_ok")
        dims = b.bitcast(field(a, ARRAY_DIMS_OFFSET, PTR, f"input{i}.dims"),
                         ir.PointerType(I64))
        for j, d in enumerate(shape):
            got = b.load(b.gep(dims, [i64(j)], inbounds=True), name=f"input{i}.dim{j}")
            # a symbolic dim (never in a compiled specialization) is never exact
            ok = b.icmp_signed("==", got, i64(d)) if isinstance(d, int) else ir.Constant(
                ir.IntType(1), 0)
            require(ok, f"input{i}.dim{j}_ok")

    def table(first: int, count: int, name: str) -> ir.Value:
        slots = b.bitcast(entry_alloca(b, ir.ArrayType(PTR, max(1, count)), name),
                          ir.PointerType(PTR), name=name + ".slots")
        for i in range(count):
            data = field(item(first + i, f"{name}.{i}"), ARRAY_DATA_OFFSET, PTR,
                         f"{name}.{i}.data")
            b.store(data, b.gep(slots, [i64(i)], inbounds=True))
        return slots

    inputs, outputs = table(0, n_inputs, "inputs"), table(n_inputs, n_outputs, "outputs")
    out_of_range = fn.append_basic_block("index_out_of_range") if any(bounds) else None
    fault = b.gep(spec, [i64(1 + n_inputs)], inbounds=True, name="fault")
    for i, (shape, bound) in enumerate(zip(input_shapes, bounds)):
        numel = 1
        for d in shape:
            numel *= d
        if bound is None or numel == 0:
            continue
        n, label = bound
        found = fn.append_basic_block(f"input{i}.out_of_range")
        values = b.bitcast(b.load(b.gep(inputs, [i64(i)], inbounds=True)),
                           ir.PointerType(ir.IntType(index_bits[i])), name=f"input{i}.values")
        _check_indices(b, values, numel, n, fault, found, f"input{i}")
        after = b.block
        b.position_at_end(found)
        b.store(i64(i), fault)
        b.store(i64(n), b.gep(fault, [i64(3)], inbounds=True))
        label_at = b.ptrtoint(_label_constant(module, label, f"input{i}.indexes"), I64)
        b.store(label_at, b.gep(fault, [i64(4)], inbounds=True))
        b.branch(out_of_range)
        b.position_at_end(after)
    arena = field(item(n_inputs + n_outputs, "arena"), ARRAY_DATA_OFFSET, PTR, "arena.data")
    weights = field(item(n_inputs + n_outputs + 1, "weights"), ARRAY_DATA_OFFSET, PTR,
                    "weights.data")
    b.call(main, [inputs, outputs, arena, weights])
    b.ret(I32(0))
    b.position_at_end(missed)
    b.ret(I32(1))
    if out_of_range is not None:
        b.position_at_end(out_of_range)
        b.ret(I32(2))
    return fn
