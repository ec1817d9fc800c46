"""The driver: an optimized graph in, a callable module out, for any backend.

    limits.check_values        refuse tensors larger than memory, before anything is allocated
    backend.unsupported        every op the backend cannot lower, in one error
    plan_fusion                which nodes share a kernel (codegen/fusion.py, target-neutral)
    backend.lower              one kernel per group
    place_buffers              inputs, outputs, weights blob, arena offsets (runtime/memory_plan.py)
    limits.check_total         arena + weights + outputs within the memory limit
    backend.link               the entry over those buffers, compiled: an Executable
    CompiledModule             what the user calls (runtime/compiled.py)

Each stage's seconds go into the module's `compile_times` (with the frontend's and the
passes', added by slimc/compiler.py); ``SLIMC_DEBUG=time`` prints them and ``slimc compile
--time`` shows them as a table.

This is the only code that knows the order; backends know only their own steps.
"""

from __future__ import annotations

import os
import time
from typing import Optional

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


def build(graph: Graph, backend: Backend, options: CompileOptions,
          times: Optional[dict] = None) -> CompiledModule:
    """`times`, if given, gets the seconds of each stage (fusion, codegen, memory_plan, link;
    and the backend's own, such as llvm_opt and machine_code); the module keeps them as
    `compile_times`."""
    times = {} if times is None else times
    start = clock = time.perf_counter()

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        times[stage] = times.get(stage, 0.0) + now - clock
        clock = now

    threads = backend.threads(options.threads)
    limits.check_values(graph)
    check_lowerable(graph, backend)
    plan = plan_fusion(graph, backend, enabled=options.fusion)
    if options.dump_dir:
        os.makedirs(options.dump_dir, exist_ok=True)
        with open(os.path.join(options.dump_dir, "fusion.txt"), "w") as f:
            f.write(plan.report + "\n")
    lap("fusion")
    lowered = backend.lower(graph, plan.groups, options)
    lap("codegen")
    placement, memory, weights, buffers = place_buffers(graph, lowered.kernels)
    limits.check_total([("arena", memory.arena_bytes), ("weights", int(weights.nbytes)),
                        ("outputs", sum(v.type.nbytes for v in graph.outputs))])
    lap("memory_plan")
    executable = backend.link(graph, lowered, placement, options)
    lap("link")
    # the backend's own stages happened inside link: report them instead of its total
    inside = sum(executable.times.values())
    times["link"] = max(0.0, times["link"] - inside)
    times.update(executable.times)
    report = MemoryReport(memory, int(weights.nbytes), executable.code_bytes, buffers)
    module_class = CompiledModule
    if getattr(executable, "runtime", None) == "cuda":
        from slimc.runtime.cuda_module import CudaModule as module_class
    module = module_class(graph, getattr(backend, "target", None), lowered.kernels, executable,
                            placement, report, weights, time.perf_counter() - start, threads)
    module.compile_times = times
    return module
