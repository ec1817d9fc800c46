"""A model compiled for a GPU: its PTX and launch list, run by the CUDA driver or emulated.

The memory plan is the CPU's (runtime/memory_plan.py): inputs, outputs, one arena and one
weights blob. On a GPU each is one device allocation, made when the module is first called:
the weights are uploaded once, and every kernel's argument array (one pointer per buffer it
touches, as codegen/cuda/kernel.py describes) is built and uploaded once too, since the
inputs and outputs have device buffers of their own. A call copies the inputs in, launches
every kernel in order and copies the outputs out.

`emulate` runs the same kernels on the CPU (runtime/gpu_emulator.py: the module NVPTX
compiled, with CUDA's thread semantics), over host buffers: arena and outputs start as NaN
(0xFF bytes), so an element no kernel wrote shows.
"""

from __future__ import annotations

import ctypes
import threading

import numpy as np

from slimc.codegen.backend import ARENA, INPUT, OUTPUT, WEIGHTS
from slimc.ir.interpreter import check_arrays, order_inputs

from .compiled import CompiledModule
from .native import Profile


class CudaModule(CompiledModule):
    """What `compile(..., target="cuda")` makes of one set of input shapes."""

    def __init__(self, graph, target, kernels, executable, placement, memory, weights,
                 compile_seconds, threads):
        super().__init__(graph, target, kernels, executable, placement, memory, weights,
                         compile_seconds, threads)
        self.placement = placement
        self._emulator = None
        self._device = None
        self._device_lock = threading.Lock()

    @property
    def ptx(self) -> str:
        return self.executable.ptx

    @property
    def runnable(self) -> bool:
        from .cuda_driver import no_gpu_reason

        return no_gpu_reason() is None

    # ----- buffers ---------------------------------------------------------------------------
    def _host_arrays(self, arrays, named) -> list:
        arrays = order_inputs(self.input_names, arrays, named)
        return [np.asarray(a, order="C") for a in check_arrays(self._inputs, arrays, self._name)]

    def _argument_arrays(self, base: dict) -> list:
        """Per kernel, its argument array (uint64 addresses of its buffers), given the base
        address of each space (INPUT and OUTPUT: a list of addresses by slot)."""
        tables = []
        for k in self.kernels:
            addresses = []
            for v in k.buffers:
                p = self.placement[id(v)]
                if p.space in (INPUT, OUTPUT):
                    addresses.append(base[p.space][p.offset])
                else:
                    addresses.append(base[p.space] + p.offset)
            tables.append(np.array(addresses or [0], dtype=np.uint64))
        return tables

    # ----- on the CPU ------------------------------------------------------------------------
    def emulate(self, *arrays, seed: int = 0, **named) -> list:
        """Run the kernels on the CPU with CUDA's semantics (slowly): blocks and threads in a
        seeded random order, barriers honoured, shared memory and intermediates NaN-filled."""
        from .gpu_emulator import Emulator

        arrays = self._host_arrays(arrays, named)
        outs = [np.empty(shape, dtype) for _, dtype, shape, _ in self._outputs]
        for o in outs:
            o.reshape(-1).view(np.uint8)[:] = 0xFF  # NaN, or -1: what no kernel wrote
        arena = np.full(max(1, self._arena_bytes), 0xFF, np.uint8)
        if self._emulator is None or self._emulator.seed != seed:
            self._emulator = Emulator(self.executable.llvm_ir, seed=seed)
        base = {INPUT: [a.ctypes.data for a in arrays], OUTPUT: [o.ctypes.data for o in outs],
                ARENA: arena.ctypes.data, WEIGHTS: self._weights.ctypes.data}
        for k, table in zip(self.kernels, self._argument_arrays(base)):
            self._emulator.launch(k.name, k.grid, k.block, [table.ctypes.data, k.items])
        return self._other_outputs(arrays, outs)

    # ----- on a GPU --------------------------------------------------------------------------
    def _on_device(self):
        """The module loaded on the GPU with its buffers (made on the first call)."""
        with self._device_lock:
            if self._device is None:
                self._device = _DeviceState(self)
            return self._device

    def __call__(self, *arrays, **named) -> list:
        from .cuda_driver import no_gpu_reason

        if no_gpu_reason() is not None:
            raise self.executable.not_runnable()
        arrays = self._host_arrays(arrays, named)
        outs = [np.empty(shape, dtype) for _, dtype, shape, _ in self._outputs]
        self._on_device().run(arrays, outs)
        return self._other_outputs(arrays, outs)

    def profile(self, *arrays, repeat: int = 20, **named) -> Profile:
        """Median GPU milliseconds per kernel (CUDA events), and of a whole call."""
        from .cuda_driver import Timer, no_gpu_reason

        if no_gpu_reason() is not None:
            raise self.executable.not_runnable()
        arrays = self._host_arrays(arrays, named)
        outs = [np.empty(shape, dtype) for _, dtype, shape, _ in self._outputs]
        device = self._on_device()
        device.run(arrays, outs)
        timer = Timer()
        totals = []
        for _ in range(repeat):
            timer.begin()
            device.launch_all()
            totals.append(timer.end())
        rows = []
        for i, k in enumerate(self.kernels):
            times = []
            for _ in range(repeat):
                timer.begin()
                device.launch(i)
                times.append(timer.end())
            rows.append((k.name, k.ops, float(np.median(times))))
        return Profile(rows, float(np.median(totals)))


class _DeviceState:
    """A CudaModule on the GPU: loaded PTX, device buffers, argument arrays."""

    def __init__(self, module: CudaModule):
        from . import cuda_driver as cu

        self.cu = cu
        self.module = module
        self.code = cu.DeviceModule(module.ptx.encode())
        self.functions = [self.code.function(k.name) for k in module.kernels]
        self.inputs = [cu.DeviceBuffer(max(1, _nbytes(s))) for s in module._inputs]
        self.outputs = [cu.DeviceBuffer(max(1, _nbytes(s))) for s in module._outputs]
        self.arena = cu.DeviceBuffer(max(1, module._arena_bytes))
        self.weights = cu.DeviceBuffer(max(1, module._weights.nbytes))
        self.weights.upload(module._weights.ctypes.data, module._weights.nbytes)
        base = {INPUT: [b.address for b in self.inputs], OUTPUT: [b.address for b in self.outputs],
                ARENA: self.arena.address, WEIGHTS: self.weights.address}
        self.tables = []
        self.args = []
        for k, table in zip(module.kernels, module._argument_arrays(base)):
            buf = cu.DeviceBuffer(table.nbytes)
            buf.upload(table.ctypes.data, table.nbytes)
            self.tables.append(buf)
            self.args.append((ctypes.c_uint64(buf.address), ctypes.c_int64(k.items)))
        self.lock = threading.Lock()

    def launch(self, i: int) -> None:
        k = self.module.kernels[i]
        self.cu.launch(self.functions[i], k.grid, k.block, self.args[i])

    def launch_all(self) -> None:
        for i in range(len(self.functions)):
            self.launch(i)

    def run(self, arrays, outs) -> None:
        with self.lock:  # one set of device buffers: calls take turns
            for buf, a in zip(self.inputs, arrays):
                buf.upload(a.ctypes.data, a.nbytes)
            self.launch_all()
            self.cu.synchronize()
            for buf, o in zip(self.outputs, outs):
                buf.download(o.ctypes.data, o.nbytes)


def _nbytes(spec) -> int:
    _, dtype, shape, _ = spec
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
