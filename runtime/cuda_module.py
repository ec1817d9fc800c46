"""What `compile(..., target="cuda")` returns for one set of input shapes: the compiled
module's graph, kernels and memory report (runtime/compiled.py), and the `CudaProgram`
(runtime/cuda_program.py) that runs its kernels on a GPU or emulates them on the CPU."""

from __future__ import annotations

from .compiled import CompiledModule
from .cuda_program import CudaProgram, Launch
from .native import Profile


class CudaModule(CompiledModule):
    """What `compile(..., target="cuda")` makes of one set of input shapes: the compiled
    module's graph, kernels and memory report, and the program that runs them."""

    def __init__(self, graph, target, kernels, executable, placement, memory, weights,
                 compile_seconds, threads):
        super().__init__(graph, target, kernels, executable, placement, memory, weights,
                         compile_seconds, threads)
        launches = [Launch(k.name, tuple(k.ops), k.grid, k.block, k.items,
                           tuple((placement[id(v)].space, placement[id(v)].offset)
                                 for v in k.buffers)) for k in kernels]
        self.program = CudaProgram(executable.ptx, executable.llvm_ir, launches, self._inputs,
                                   self._outputs, self._sources, self._arena_bytes, weights,
                                   self._name, executable.not_runnable)

    @property
    def ptx(self) -> str:
        return self.executable.ptx

    @property
    def runnable(self) -> bool:
        return self.program.runnable

    def emulate(self, *arrays, seed: int = 0, **named) -> list:
        return self.program.emulate(*arrays, seed=seed, **named)

    def __call__(self, *arrays, **named) -> list:
        return self.program(*arrays, **named)

    def run_exactly(self, arrays) -> list:
        return self.program.run_exactly(arrays)

    def profile(self, *arrays, repeat: int = 20, alone: bool = True, **named) -> Profile:
        return self.program.profile(*arrays, repeat=repeat, alone=alone, **named)
