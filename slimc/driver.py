"""The driver: an optimized graph in, a callable module out, for any backend.

    limits.check_values        refuse tensors larger than memory, before anything is allocated
    backend.unsupported        every op the backend cannot lower, in one error
    plan_fusion                which nodes share a kernel (codegen/fusion.py, target-neutral)
    backend.lower              one kernel per group
    place_buffers              inputs, outputs, weights blob, arena offsets (runtime/memory_plan.py)
    limits.check_total         arena + weights + outputs within the memory limit
    backend.link               the entry over those buffers, compiled: an Executable
    CompiledModule             what the user calls (runtime/compiled.py)

This is the only code that knows the order; backends know only their own steps.
"""

from __future__ import annotations

import os
import time

from slimc.codegen.backend import Backend, CompileOptions
from slimc.codegen.fusion import plan_fusion
from slimc.ir import Graph
from slimc.ir.errors import UnsupportedError
from slimc.runtime import limits
from slimc.runtime.compiled import CompiledModule, MemoryReport
from slimc.runtime.memory_plan import place_buffers


def check_lowerable(graph: Graph, backend: Backend) -> None:
    """All unsupported ops at once, before any code is generated."""
    missing = backend.unsupported(graph)
    if missing:
        lines = [f"  {op}: {len(names)} node(s), first {', '.join(repr(x) for x in names[:3])}"
                 for op, names in sorted(missing.items())]
        raise UnsupportedError(f"the {backend.kind.upper()} backend has no lowering for:\n" +
                               "\n".join(lines))


def build(graph: Graph, backend: Backend, options: CompileOptions) -> CompiledModule:
    start = time.perf_counter()
    threads = backend.threads(options.threads)
    limits.check_values(graph)
    check_lowerable(graph, backend)
    plan = plan_fusion(graph, backend, enabled=options.fusion)
    if options.dump_dir:
        os.makedirs(options.dump_dir, exist_ok=True)
        with open(os.path.join(options.dump_dir, "fusion.txt"), "w") as f:
            f.write(plan.report + "\n")
    lowered = backend.lower(graph, plan.groups, options)
    placement, memory, weights, buffers = place_buffers(graph, lowered.kernels)
    limits.check_total([("arena", memory.arena_bytes), ("weights", int(weights.nbytes)),
                        ("outputs", sum(v.type.nbytes for v in graph.outputs))])
    executable = backend.link(graph, lowered, placement, options)
    report = MemoryReport(memory, int(weights.nbytes), executable.code_bytes, buffers)
    return CompiledModule(graph, getattr(backend, "target", None), lowered.kernels, executable,
                          placement, report, weights, time.perf_counter() - start, threads)
