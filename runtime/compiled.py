"""A compiled model as the user calls it: checked inputs, fresh outputs, one entry call.

slimc/driver.py builds one from what a backend lowered and linked (an `Executable`) and the
memory plan (memory_plan.place_buffers). Calling the module checks the inputs (count, dtype,
shape: a clear `InputError`, never a wrong answer), allocates fresh outputs, takes an arena
and makes one call of the entry; `profile` times kernel by kernel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from slimc.codegen.backend import OUTPUT, WEIGHTS
from slimc.ir import Graph
from slimc.ir.interpreter import input_specs

from . import native
from .memory_plan import MemoryPlan
from .native import COPY_INPUT, COPY_OUTPUT, KERNEL, NativeModule


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


class CompiledModule(NativeModule):
    """A model compiled for one set of input shapes: the graph as optimized, its kernels,
    memory plan and weights, and the backend's linked program (an `Executable`). Calling it
    makes one call of the program's entry; a program this process cannot run (a
    cross-compiled module) can still be inspected and exported."""

    def __init__(self, graph: Graph, target, kernels, executable, placement,
                 memory: MemoryReport, weights: np.ndarray, compile_seconds: float, threads: int):
        outputs = [(v.name, v.type.dtype.numpy, v.type.shape, str(v.type)) for v in graph.outputs]
        super().__init__(executable.entry, input_specs(graph), outputs,
                         output_sources(graph, placement), memory.arena_bytes, weights,
                         f"graph @{graph.name}", executable.run,
                         [(k.name, k.ops) for k in kernels], executable.call,
                         executable.timed)
        self.graph = graph
        self.target = target  # the backend's description of the machine (a CpuTarget)
        self.kernels = kernels
        self.threads = threads
        self.memory = memory
        self.compile_seconds = compile_seconds
        self.compile_times: dict = {}  # stage -> seconds (slimc/driver.py fills it)
        self.executable = executable

    @property
    def runnable(self) -> bool:
        return self.executable.entry is not None

    @property
    def llvm_ir(self) -> str:
        """The optimized LLVM IR of every kernel and the entry function."""
        return self.executable.llvm_ir

    @property
    def assembly(self) -> str:
        return self.executable.assembly

    def objects(self) -> list:
        """The model's position-independent objects, for export."""
        return self.executable.objects()

    def __call__(self, *arrays, **named):
        if not self.runnable:
            raise self.executable.not_runnable()
        return super().__call__(*arrays, **named)

    def profile(self, *arrays, repeat: int = 20, alone: bool = False, **named):
        if not self.runnable:
            raise self.executable.not_runnable()
        return super().profile(*arrays, repeat=repeat, alone=alone, **named)

    def export(self, path: str) -> None:
        """Write a directory that `slimc.load` runs without llvmlite (see runtime/export.py):
        for a foreign machine, its object file and (with a cross linker) a shared library."""
        from .export import export

        export(self, path)
