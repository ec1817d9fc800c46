"""The CPU backend: x86-64 (the host, or portable x86-64-v3 / v4) and AArch64 through LLVM.

What it adds to the pipeline: sparse kernels for mostly-zero weights (priced by timing both
forms on this host, sparse_cost.py), the Winograd rewrite (with the cost model of its target: this
host's calibration, or the built-in coefficients for a machine it cannot measure) and the
blocked NCHW[b]c layout (b = the target's vector width). What it fuses: ops with a scalar
lowering (scalar_ops.py) or an index map are computed inline; generators (kernel.py's
`@generator`) say whether they read operands inline and take epilogues. It lowers each fused
group to one LLVM function, links them under one entry (entry.py) and JIT-compiles the
module, or, for a target this process cannot run, compiles an ELF object ahead of time.
"""

from __future__ import annotations

import ctypes
import os
import time
from typing import Optional

from slimc.ir import Graph, Node
from slimc.ir.errors import SlimcError, TargetError

from ..backend import Backend, CompileOptions, Executable, Lowered
from .entry import RUNTIME_THREADS, build_entry, build_exact_call, index_bounds
from .kernel import GENERATORS, INDEX_MAPS
from .llvm_util import has_llvm_type, shared_pipelines
from .lower import lower_graph
from .parts import cut
from .scalar_ops import LOWERINGS
from .target import CpuTarget, JitModule, compile_parts, emit_assembly


class CpuExecutable(Executable):
    """The linked LLVM module, compiled in parts (parts.py): JIT-compiled here (`entry` and
    `run` are its functions), or, for another machine, compiled ahead of time into one object
    (`entry` is None)."""

    def __init__(self, target: CpuTarget, llvm_module, llvm_opt_level: int, kernels, jobs: int,
                 part_cache=None):
        self.target = target
        # SLIMC_PIPELINE=O3 gives every kernel the full pipeline (to compare run times)
        every = os.environ.get("SLIMC_PIPELINE")
        pipelines = {k.name: every or k.pipeline for k in kernels}
        pipelines.update({name: every or pipeline
                          for name, pipeline in shared_pipelines(llvm_module).items()})
        t0 = time.perf_counter()
        parts, self.duplicates = cut(llvm_module, pipelines.get, jobs)
        t1 = time.perf_counter()
        if target.is_host:
            self._objects, self._ir_texts, self.times, self.cached_parts = _compile_host(
                parts, target, llvm_opt_level, jobs, part_cache)
        else:  # one object, compiled from every part (no part cache for another machine)
            compiled = compile_parts(parts, target, opt_level=llvm_opt_level, jobs=jobs,
                                     one_object=True)
            self._objects, self._ir_texts, self.times = (compiled.objects, compiled.ir_texts,
                                                         dict(compiled.times))
            self.cached_parts = 0
        self.times = {"ir_text": t1 - t0, **self.times}
        # (pipeline, function names, IR bytes, (optimize, machine code) seconds, () if cached)
        self.parts = [(p.pipeline, p.functions, p.size, p.seconds) for p in parts]
        self._optimized_ir = "\n".join(self._ir_texts)
        self._jit = None
        if target.is_host:
            t1 = time.perf_counter()
            self._jit = JitModule(target, self._objects, self._optimized_ir)
            self.entry = self._jit.cfunc("slimc_main", None, ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.c_void_p, ctypes.c_void_p)
            self.run = self._jit.cfunc("slimc_run", None, ctypes.c_void_p, ctypes.c_void_p,
                                       ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                       ctypes.c_int64)
            self.timed = self._jit.cfunc("slimc_timed", None, ctypes.c_void_p, ctypes.c_void_p,
                                         ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
            self.call = self._jit.cfunc("slimc_exact", ctypes.c_int, ctypes.py_object)
            self.times["machine_code"] += time.perf_counter() - t1
        self.code_bytes = sum(len(o) for o in self._objects)

    def not_runnable(self) -> TargetError:
        return foreign_target_error(self.target)

    @property
    def llvm_ir(self) -> str:
        """The optimized LLVM IR of every kernel and the entry function, part by part (for a
        cross target: as optimized for that target)."""
        return self._optimized_ir

    @property
    def assembly(self) -> str:
        return "\n".join(emit_assembly(text, self.target, opt_level=0)
                         for text in self._ir_texts)

    def objects(self) -> list[bytes]:
        """Position-independent ELF objects of the model (the ones the JIT loaded), for
        export: `cc -shared` links them into one library."""
        return list(self._objects)


def _compile_host(parts, target: CpuTarget, opt_level: int, jobs: int, cache) -> tuple:
    """(objects, optimized IR texts, times, parts found in `cache`): the parts the cache
    (CompileOptions.part_cache) holds are read from it, the others compiled and stored. A
    module in one part (a small model) is left to the model cache: its part would repeat
    that entry."""
    keys, found = [], {}
    if cache is not None and len(parts) > 1:
        keys = [cache.key(p.text, p.pipeline, target.identity, opt_level) for p in parts]
        found = {i: cache.lookup(k) for i, k in enumerate(keys)}
        found = {i: hit for i, hit in found.items() if hit is not None}
    todo = [i for i in range(len(parts)) if i not in found]
    compiled = compile_parts([parts[i] for i in todo], target, opt_level=opt_level, jobs=jobs)
    for i, obj, text in zip(todo, compiled.objects, compiled.ir_texts):
        found[i] = (obj, text)
        if keys:
            cache.store(keys[i], obj, text)
    results = [found[i] for i in range(len(parts))]
    return ([obj for obj, _ in results], [text for _, text in results], dict(compiled.times),
            len(parts) - len(todo))


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


def compile_jobs() -> int:
    """Threads LLVM compiles in: the cores this process may use (SLIMC_COMPILE_JOBS sets
    it)."""
    env = os.environ.get("SLIMC_COMPILE_JOBS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise SlimcError(f"SLIMC_COMPILE_JOBS must be a number of threads, got {env!r}")
    return host_cores()


def host_cores() -> int:
    """The cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else \
        (os.cpu_count() or 1)


class CpuBackend(Backend):
    kind = "cpu"

    def __init__(self, target: CpuTarget):
        self.target = target

    def __repr__(self) -> str:
        return f"CpuBackend({self.target.name}: {self.target.cpu}, {self.target.vector_width} floats a vector)"

    # ---- the pipeline -------------------------------------------------------------------------
    def pipeline_passes(self, opt_level: int, disabled: frozenset = frozenset()) -> list:
        from slimc.passes.layout import Layout
        from slimc.passes.sparsify import Sparsify
        from slimc.passes.winograd import Winograd

        if opt_level < 2:
            return []
        # without the layout pass a direct conv runs im2col and a GEMM, and is priced so
        return [Sparsify(model=self.sparse_model()),
                Winograd(opt_level=opt_level, model=self.winograd_model(),
                         blocked_direct="layout" not in disabled),
                Layout(block=self.target.vector_width)]

    def sparse_model(self):
        """The sparsify pass's cost model of this backend's target (sparse_cost.py)."""
        from .sparse_cost import SparseCostModel

        return SparseCostModel(self.target)

    def winograd_model(self):
        """The Winograd cost model of this backend's target (see winograd_cost.cost_model)."""
        from .winograd_cost import cost_model

        return cost_model(self.target)

    # ---- capabilities ---------------------------------------------------------------------------
    def lowers(self, node: Node) -> bool:
        return node.op in GENERATORS or node.op in LOWERINGS or node.op in INDEX_MAPS

    def unsupported(self, graph: Graph) -> dict:
        """Ops without a lowering, and ops on a dtype this backend has no type for (bf16,
        float8): said with the node before any code is generated, not from deep inside it."""
        missing = super().unsupported(graph)
        for n in graph.nodes:
            for v in list(n.inputs) + list(n.outputs):
                if v is not None and not has_llvm_type(v.type.dtype):
                    missing.setdefault(f"{n.op} on {v.type.dtype}", []).append(n.label)
                    break
        return missing

    def can_inline(self, node: Node) -> bool:
        return node.op in LOWERINGS or node.op in INDEX_MAPS

    def reads_operands_inline(self, anchor: Node) -> bool:
        return bool(getattr(GENERATORS.get(anchor.op), "inline_inputs", False))

    def epilogue(self, anchor: Node) -> Optional[str]:
        gen = GENERATORS.get(anchor.op)
        if gen is None:
            return "(it is elementwise code of its own)"
        epilogue = getattr(gen, "epilogue", False)
        return epilogue(anchor) if callable(epilogue) else (None if epilogue else "")

    def epilogue_changes_dtype(self, anchor: Node) -> bool:
        return bool(getattr(GENERATORS.get(anchor.op), "epilogue_any_dtype", False))

    # ---- lowering and linking ---------------------------------------------------------------
    def threads(self, requested: Optional[int]) -> int:
        """`threads=None` is every core of this host, or, for a machine this process does not
        run, every core of the machine that runs it (decided there by OpenMP)."""
        if requested is None:
            if not self.target.is_host:
                return RUNTIME_THREADS
            return host_cores()
        if requested < 1:
            raise SlimcError(f"threads must be None or at least 1, got {requested}")
        return requested

    def lower(self, graph: Graph, groups, options: CompileOptions) -> Lowered:
        module, kernels = lower_graph(graph, self.target, groups, options.fast_math)
        return Lowered(kernels, module)

    def link(self, graph: Graph, lowered: Lowered, placement: dict,
             options: CompileOptions) -> CpuExecutable:
        threads = self.threads(options.threads)
        if options.denormals not in ("flush", "keep"):
            raise SlimcError(f"denormals must be 'flush' or 'keep', got {options.denormals!r}")
        main = build_entry(lowered.state, lowered.kernels, placement, threads=threads,
                           ftz=options.denormals == "flush", arch=self.target.arch)
        build_exact_call(lowered.state, main, [tuple(v.type.shape) for v in graph.inputs],
                         len(graph.outputs), index_bounds(graph),
                         [64 if v.type.dtype.name == "i64" else 32 for v in graph.inputs])
        if self.target.is_host and threads > 1 and \
                any(k.parallel_extent > 1 for k in lowered.kernels):
            _load_threading_runtime()
        return CpuExecutable(self.target, lowered.state, 3 if options.opt_level >= 1 else 0,
                             lowered.kernels, jobs=compile_jobs(),
                             part_cache=options.part_cache)

    def not_runnable_here(self) -> Optional[TargetError]:
        return None if self.target.is_host else foreign_target_error(self.target)

    @property
    def cache_identity(self) -> Optional[str]:
        return self.target.identity if self.target.is_host else None
