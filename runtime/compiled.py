"""A compiled model: kernels JIT-compiled, buffers planned, one native entry call per run.

`build(graph, target, ...)` turns an optimized graph into a `CompiledModule`:

1. kernel groups are lowered to LLVM functions (codegen.cpu.lower),
2. every intermediate value gets an arena offset from its lifetime (memory_plan), constants go
   into one 64-byte-aligned weights blob, graph inputs and outputs use the caller's arrays,
3. the entry function that calls every kernel in order is generated, and the LLVM module is
   optimized and JIT-compiled -- or, for a target this process cannot run (``"aarch64"`` on an
   x86-64 host), optimized for that target and compiled to an ELF object ahead of time: a
   `CrossCompiledModule`, to inspect and export but not to call.

Calling the module checks the inputs (count, dtype, shape: a clear `InputError`, never a wrong
answer), allocates fresh outputs, and makes one foreign call.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from slimc.codegen.cpu.entry import (ARENA, INPUT, OUTPUT, RUNTIME_THREADS, WEIGHTS, Placement,
                                     build_entry)
from slimc.codegen.cpu.fusion import plan_fusion
from slimc.codegen.cpu.lower import lower_graph
from slimc.codegen.cpu.target import CpuTarget, aot_compile, emit_assembly, emit_object, jit_compile
from slimc.ir import Graph, Value
from slimc.ir.errors import InputError, SlimcError, TargetError
from slimc.ir.interpreter import input_specs

from . import limits, native
from .memory_plan import ALIGN, Interval, MemoryPlan, plan
from .native import COPY_INPUT, COPY_OUTPUT, KERNEL, NativeModule, aligned_empty


@dataclass
class MemoryReport:
    plan: MemoryPlan
    weights_bytes: int
    code_bytes: int
    buffers: dict  # value name -> (space, offset, bytes)

    @property
    def arena_bytes(self) -> int:
        return self.plan.arena_bytes

    @property
    def intermediates_bytes(self) -> int:
        """The sum of all intermediate tensors: what the arena would be with no reuse."""
        return sum(self.plan.sizes.values())

    def __str__(self) -> str:
        return (f"arena {self.arena_bytes:,} bytes for {len(self.plan.sizes)} intermediates "
                f"totalling {self.intermediates_bytes:,} bytes; weights {self.weights_bytes:,} "
                f"bytes; code {self.code_bytes:,} bytes")


def _nbytes(v: Value) -> int:
    return v.type.nbytes


def _place(graph: Graph, kernels) -> tuple[dict, MemoryPlan, np.ndarray, dict]:
    placement: dict = {}
    buffers: dict = {}
    for i, v in enumerate(graph.inputs):
        placement[id(v)] = Placement(INPUT, i)
    output_slot = {}
    for j, v in enumerate(graph.outputs):
        if v.producer is not None and id(v) not in output_slot:
            output_slot[id(v)] = j
            placement[id(v)] = Placement(OUTPUT, j)
    # weights: every constant a kernel reads or the graph returns, aligned
    blob_parts, offset = [], 0
    constants = [v for k in kernels for v in k.inputs] + list(graph.outputs)
    for v in constants:
        # graph constants, and data a kernel substituted (prepacked weights)
        if id(v) in placement or not (v.is_constant or (v.graph is None and v.data is not None)):
            continue
        if v.data is None:
            raise InputError(f"constant %{v.name} has no data (elided); load the graph with its "
                             f"weights")
        data = np.ascontiguousarray(v.data)
        placement[id(v)] = Placement(WEIGHTS, offset)
        buffers[v.name] = (WEIGHTS, offset, data.nbytes)
        blob_parts.append((offset, data))
        offset += (data.nbytes + ALIGN - 1) // ALIGN * ALIGN
    weights = aligned_empty(offset)
    for off, data in blob_parts:
        weights[off:off + data.nbytes] = data.reshape(-1).view(np.uint8)
    # intermediates: lifetimes in kernel steps
    first, last, values = {}, {}, {}
    for step, k in enumerate(kernels):
        for v in list(k.outputs) + list(k.scratch):
            if id(v) not in placement:
                first.setdefault(id(v), step)
                last.setdefault(id(v), step)
                values[id(v)] = v
        for v in k.inputs:
            if id(v) in first:
                last[id(v)] = step
    intervals = [Interval(str(key), _nbytes(values[key]), first[key], last[key]) for key in first]
    memory = plan(intervals)
    for key, v in values.items():
        off = memory.offsets[str(key)]
        placement[key] = Placement(ARENA, off)
        buffers[v.name] = (ARENA, off, _nbytes(v))
    # the plan is keyed by value id; re-key its report by name for people
    memory = MemoryPlan({values[int(k)].name: o for k, o in memory.offsets.items()},
                        {values[int(k)].name: s for k, s in memory.sizes.items()}, memory.arena_bytes)
    return placement, memory, weights, buffers


def output_sources(graph: Graph, placement: dict) -> list[tuple]:
    """Where each output's data comes from when the entry function has run."""
    sources = []
    for j, v in enumerate(graph.outputs):
        p = placement.get(id(v))
        if p is not None and p.space == OUTPUT:
            sources.append((KERNEL,) if p.offset == j else (COPY_OUTPUT, p.offset))
        elif p is not None and p.space == WEIGHTS:
            sources.append((native.WEIGHTS, p.offset))
        else:
            sources.append((COPY_INPUT, graph.inputs.index(v)))
    return sources


def _init_compiled(module: NativeModule, entry, run, graph: Graph, target: CpuTarget, kernels,
                   llvm_module, placement, memory: MemoryReport, weights: np.ndarray,
                   compile_seconds: float, threads: int) -> None:
    """What a compiled module (JIT-ed here, or cross-compiled) keeps; entry/run are None for
    a module that cannot run on this host."""
    outputs = [(v.name, v.type.dtype.numpy, v.type.shape, str(v.type)) for v in graph.outputs]
    NativeModule.__init__(module, entry, input_specs(graph), outputs,
                          output_sources(graph, placement), memory.arena_bytes, weights,
                          f"graph @{graph.name}", run, [(k.name, k.ops) for k in kernels])
    module.graph = graph
    module.target = target
    module.kernels = kernels
    module.threads = threads
    module._llvm_module = llvm_module
    module.memory = memory
    module.compile_seconds = compile_seconds


class CompiledModule(NativeModule):
    """A model compiled in this process for one set of input shapes."""

    def __init__(self, graph: Graph, target: CpuTarget, kernels, llvm_module, jit, placement,
                 memory: MemoryReport, weights: np.ndarray, compile_seconds: float, threads: int):
        entry = jit.cfunc("slimc_main", None, ctypes.c_void_p, ctypes.c_void_p,
                          ctypes.c_void_p, ctypes.c_void_p)
        run = jit.cfunc("slimc_run", None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                        ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
        _init_compiled(self, entry, run, graph, target, kernels, llvm_module, placement, memory,
                       weights, compile_seconds, threads)
        self._jit = jit

    @property
    def llvm_ir(self) -> str:
        """The optimized LLVM IR of every kernel and the entry function."""
        return self._jit.llvm_ir

    @property
    def assembly(self) -> str:
        return emit_assembly(str(self._llvm_module), self.target)

    def object_code(self) -> bytes:
        """A position-independent ELF object of the model, for export."""
        return emit_object(str(self._llvm_module), self.target)

    def export(self, path: str) -> None:
        """Write a directory that `slimc.load` runs without llvmlite (see runtime/export.py)."""
        from .export import export

        export(self, path)


class CrossCompiledModule(NativeModule):
    """A model compiled for a machine other than this one (e.g. ``target="aarch64"`` on an
    x86-64 host): its optimized LLVM IR, assembly, kernels and memory plan can be inspected and
    it can be exported, but it cannot be called here -- there is no JIT for a foreign CPU.

    The LLVM module was optimized once with the target's TargetMachine and compiled to an ELF
    object; `llvm_ir`, `assembly` and the exported object all come from that one optimization.
    """

    def __init__(self, graph: Graph, target: CpuTarget, kernels, llvm_module, optimized_ir: str,
                 obj: bytes, placement, memory: MemoryReport, weights: np.ndarray,
                 compile_seconds: float, threads: int):
        _init_compiled(self, None, None, graph, target, kernels, llvm_module, placement, memory,
                       weights, compile_seconds, threads)
        self._optimized_ir = optimized_ir
        self._object = obj

    @property
    def llvm_ir(self) -> str:
        """The LLVM IR as optimized for the target."""
        return self._optimized_ir

    @property
    def assembly(self) -> str:
        """The target's assembly (AArch64 for "aarch64") of exactly the exported object."""
        return emit_assembly(self._optimized_ir, self.target, opt_level=0)

    def object_code(self) -> bytes:
        return self._object

    def __call__(self, *arrays, **named):
        raise foreign_target_error(self.target)

    def profile(self, *arrays, repeat: int = 20, **named):
        raise foreign_target_error(self.target)

    def export(self, path: str) -> None:
        """Write the artifact directory: the object file, a shared library when a cross
        linker is found, the weights and the manifest (see runtime/export.py)."""
        from .export import export

        export(self, path)


def foreign_target_error(target: CpuTarget) -> TargetError:
    """The error for calling code of a target this process cannot run: it names both
    machines and says what to do instead."""
    host = CpuTarget.host()
    if target.arch != host.arch:
        why = f"the target is {target.arch} and this host is {host.arch}"
    else:
        missing = sorted(target.feature_set - host.feature_set)
        why = f"this host's CPU ({host.cpu}) lacks {', '.join(missing) or 'its features'}"
    return TargetError(
        f"this module was compiled for target {target.name!r} ({target.triple}, cpu "
        f"{target.cpu}) and cannot run here: {why}. Export it with mod.export(path) and run the "
        f"artifact on an {target.arch} machine, or compile with target='x86' to run it here")


def _load_threading_runtime() -> None:
    """The JIT resolves GOMP_parallel & co. from libraries loaded into the process."""
    global _gomp_loaded
    if not _gomp_loaded:
        import ctypes.util

        import llvmlite.binding as llvm

        path = ctypes.util.find_library("gomp")
        if path is None:
            raise SlimcError("threads > 1 needs libgomp (the OpenMP runtime that comes with "
                             "gcc); it was not found: install libgomp1 or use threads=1")
        llvm.load_library_permanently(path)
        _gomp_loaded = True


_gomp_loaded = False


def build(graph: Graph, target: CpuTarget, fast_math=("contract",), llvm_opt_level: int = 3,
          threads: Optional[int] = None, denormals: str = "flush", fusion: bool = True,
          dump_dir: Optional[str] = None) -> CompiledModule:
    """`threads=None` uses every core (for a target this process cannot run: every core of the
    machine that runs it, decided there by OpenMP); `denormals="keep"` leaves the FP control
    register (MXCSR, FPCR) as the caller has it; `fusion=False` gives every node a kernel of
    its own. A target that is not the host gives a `CrossCompiledModule`."""
    import os

    start = time.perf_counter()
    if threads is None and not target.is_host:
        threads = RUNTIME_THREADS
    elif threads is None:
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    elif threads < 1:
        raise SlimcError(f"threads must be None or at least 1, got {threads}")
    if denormals not in ("flush", "keep"):
        raise SlimcError(f"denormals must be 'flush' or 'keep', got {denormals!r}")
    limits.check_values(graph)  # before any code is generated or memory allocated
    plan = plan_fusion(graph, enabled=fusion)
    if dump_dir:
        import os as _os

        _os.makedirs(dump_dir, exist_ok=True)
        with open(_os.path.join(dump_dir, "fusion.txt"), "w") as f:
            f.write(plan.report + "\n")
    module, kernels = lower_graph(graph, target, plan.groups, fast_math)
    placement, memory, weights, buffers = _place(graph, kernels)
    limits.check_total([("arena", memory.arena_bytes), ("weights", int(weights.nbytes)),
                        ("outputs", sum(v.type.nbytes for v in graph.outputs))])
    build_entry(module, kernels, placement, threads=threads, ftz=denormals == "flush",
                arch=target.arch)
    if not target.is_host:
        optimized_ir, obj = aot_compile(str(module), target, opt_level=llvm_opt_level)
        report = MemoryReport(memory, int(weights.nbytes), len(obj), buffers)
        return CrossCompiledModule(graph, target, kernels, module, optimized_ir, obj, placement,
                                   report, weights, time.perf_counter() - start, threads)
    if threads > 1 and any(k.parallel_extent > 1 for k in kernels):
        _load_threading_runtime()
    jit = jit_compile(str(module), target, opt_level=llvm_opt_level)
    code_bytes = len(jit.llvm_ir)  # replaced by the object size once AOT export lands
    report = MemoryReport(memory, int(weights.nbytes), code_bytes, buffers)
    return CompiledModule(graph, target, kernels, module, jit, placement, report, weights,
                          time.perf_counter() - start, threads)
