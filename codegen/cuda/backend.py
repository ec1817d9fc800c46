"""The CUDA backend: NVIDIA GPUs through LLVM's NVPTX target.

What it adds to the pipeline: nothing (Winograd and the blocked layout are CPU choices; the
graph passes and the fusion planner are everyone's). What it fuses: what the CPU backend fuses,
with GPU generators (this package's gen_*.py) in place of the CPU's for the ops that have one.
It lowers each fused group to one kernel (kernel.py), optimizes the module and emits PTX
(ptx.py); the executable is the PTX and a launch list, which runtime/cuda_module.py runs on a
GPU through the CUDA driver, or on the CPU through the emulator.
"""

from __future__ import annotations

import time
from typing import Optional

from slimc.ir import Graph, Node
from slimc.ir.errors import TargetError

from ..backend import Backend, CompileOptions, Executable, Lowered
from ..cpu.kernel import INDEX_MAPS, llvm_name
from ..cpu.lower import group_boundary
from ..cpu.scalar_ops import LOWERINGS
from . import gen_attention, gen_conv, gen_gemm, gen_norm  # noqa: F401  (each registers
from . import gen_reduce, gen_resize, gen_window  # noqa: F401        its GPU generators)
from .kernel import build_gpu_kernel, generator_for
from .ptx import compile_ptx
from .target import CudaTarget


class CudaExecutable(Executable):
    """PTX for every kernel of a model and the order to launch them in. `entry` stays None:
    runtime/cuda_module.py launches the kernels (with the CUDA driver, or the emulator)."""

    runtime = "cuda"

    def __init__(self, target: CudaTarget, compiled, kernels, times: dict):
        self.target = target
        self.compiled = compiled
        self.kernels = kernels
        self.times = times
        self.code_bytes = len(compiled.ptx)

    @property
    def ptx(self) -> str:
        return self.compiled.ptx

    @property
    def llvm_ir(self) -> str:
        return self.compiled.llvm_ir

    @property
    def assembly(self) -> str:
        return self.compiled.ptx

    def not_runnable(self) -> Exception:
        return TargetError("no CUDA GPU found in this process (a module for "
                           f"{self.target.name} runs on an NVIDIA GPU through the CUDA driver; "
                           f"mod.emulate(...) runs its kernels on the CPU instead)")


class CudaBackend(Backend):
    kind = "cuda"

    def __init__(self, target: CudaTarget, gpu_missing=None):
        """`gpu_missing()`: None if this process can run kernels on a GPU, else why not (the
        runtime's probe, given by slimc/target.py: codegen does not import runtime)."""
        self.target = target
        self._gpu_missing = gpu_missing or (lambda: "no CUDA driver probe was given")

    def __repr__(self) -> str:
        return f"CudaBackend({self.target.name})"

    # ---- capabilities ---------------------------------------------------------------------------
    def lowers(self, node: Node) -> bool:
        # every elementwise op computes on a GPU: libdevice has every libm function
        return generator_for(node.op) is not None or self.can_inline(node)

    def can_inline(self, node: Node) -> bool:
        return node.op in LOWERINGS or node.op in INDEX_MAPS

    def reads_operands_inline(self, anchor: Node) -> bool:
        return bool(getattr(generator_for(anchor.op), "inline_inputs", False))

    def epilogue(self, anchor: Node) -> Optional[str]:
        gen = generator_for(anchor.op)
        if gen is None:
            return "(it is elementwise code of its own)"
        epilogue = getattr(gen, "epilogue", False)
        return epilogue(anchor) if callable(epilogue) else (None if epilogue else "")

    def epilogue_changes_dtype(self, anchor: Node) -> bool:
        return bool(getattr(generator_for(anchor.op), "epilogue_any_dtype", False))

    # ---- lowering and linking ---------------------------------------------------------------
    def lower(self, graph: Graph, groups, options: CompileOptions) -> Lowered:
        module = self.target.new_ir_module(graph.name)
        kernels = []
        for i, group in enumerate(groups):
            inputs, outputs = group_boundary(graph, group)
            if not outputs:
                continue
            head = group[-1]
            # PTX names are C identifiers: a '.' (node "relu.1") is a parse error in ptxas
            name = f"k{i}_{head.op}_{llvm_name(head.name or head.outputs[0].name)}"
            name = name.replace(".", "_")
            kernels.append(build_gpu_kernel(module, name, group, inputs, outputs, self.target,
                                            options.fast_math))
        return Lowered(kernels, module)

    def link(self, graph: Graph, lowered: Lowered, placement: dict,
             options: CompileOptions) -> CudaExecutable:
        start = time.perf_counter()
        compiled = compile_ptx(lowered.state, self.target,
                               opt_level=3 if options.opt_level >= 1 else 0)
        return CudaExecutable(self.target, compiled, lowered.kernels,
                              {"ptx": time.perf_counter() - start})

    def not_runnable_here(self) -> Optional[Exception]:
        why = self._gpu_missing()
        return None if why is None else TargetError(
            f"cannot run a {self.target.name} module here: {why}; mod.emulate(...) runs its "
            f"kernels on the CPU")
