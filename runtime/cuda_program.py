"""A GPU program: PTX and a launch list, run by the CUDA driver or emulated on the CPU.

The memory plan is the CPU's (runtime/memory_plan.py): inputs, outputs, one arena and one
weights blob. On a GPU each is one device allocation, made when the program is first called:
the weights are uploaded once, and every kernel's argument array (one pointer per buffer it
touches, as codegen/cuda/kernel.py describes) is built and uploaded once too, since the
inputs and outputs have device buffers of their own. A call copies the inputs in, launches
every kernel in order and copies the outputs out.

`emulate` runs the same kernels on the CPU (runtime/gpu_emulator.py: the module NVPTX
compiled, with CUDA's thread semantics), over host buffers: arena and outputs start as NaN
(0xFF bytes), so an element no kernel wrote shows.

A `CudaProgram` is all a run needs (PTX, launches, buffer specs, weights): `CudaModule`
(runtime/cuda_module.py, what `compile` makes) holds one, and an exported artifact loaded by
`slimc.load` (runtime/export.py) is one: it needs neither llvmlite nor the graph to run on a
GPU.
"""

from __future__ import annotations

import ctypes
import threading
from typing import NamedTuple

import numpy as np

from slimc.codegen.backend import ARENA, INPUT, OUTPUT, WEIGHTS

from slimc.ir.errors import InputError
from slimc.ir.interpreter import check_arrays, order_inputs

from .native import COPY_INPUT, COPY_OUTPUT, KERNEL, NativeModule, Profile


class Launch(NamedTuple):
    """One kernel launch: the function, its grid and block, its `items` argument, and where
    each buffer of its argument array lives ((space, offset) as the memory plan placed it)."""

    name: str
    ops: tuple
    grid: tuple
    block: tuple
    items: int
    buffers: tuple

    def to_json(self) -> dict:
        return {"name": self.name, "ops": list(self.ops), "grid": list(self.grid),
                "block": list(self.block), "items": self.items,
                "buffers": [list(b) for b in self.buffers]}

    @classmethod
    def from_json(cls, d: dict) -> "Launch":
        return cls(d["name"], tuple(d["ops"]), tuple(d["grid"]), tuple(d["block"]),
                   int(d["items"]), tuple((s, int(o)) for s, o in d["buffers"]))


class CudaProgram(NativeModule):
    """PTX, launches and buffers: runs on the GPU (`__call__`, `profile`) or the CPU
    (`emulate`, from the optimized LLVM IR)."""

    def __init__(self, ptx: str, llvm_ir: str, launches, inputs, outputs, output_sources,
                 arena_bytes: int, weights: np.ndarray, name: str, not_runnable):
        super().__init__(None, inputs, outputs, output_sources, arena_bytes, weights, name,
                         None, [(x.name, list(x.ops)) for x in launches])
        self.ptx = ptx
        self.llvm_ir = llvm_ir
        self.cubin: tuple = ()  # (sm, bytes): machine code for one architecture, if assembled
        self.launches = list(launches)
        self._not_runnable = not_runnable  # () -> the error for a call without a GPU
        self._emulator = None
        self._device = None
        self._device_lock = threading.Lock()

    @property
    def runnable(self) -> bool:
        from .cuda_driver import no_gpu_reason

        return no_gpu_reason() is None

    def argument_arrays(self, base: dict) -> list:
        """Per launch, its argument array (uint64 addresses of its buffers), given the base
        address of each space (INPUT and OUTPUT: a list of addresses by slot)."""
        tables = []
        for launch in self.launches:
            addresses = [base[space][offset] if space in (INPUT, OUTPUT) else
                         base[space] + offset for space, offset in launch.buffers]
            tables.append(np.array(addresses or [0], dtype=np.uint64))
        return tables

    # ----- on the CPU ------------------------------------------------------------------------
    def emulate(self, *arrays, seed: int = 0, **named) -> list:
        """Run the kernels on the CPU with CUDA's semantics (slowly): blocks and threads in a
        seeded random order, barriers honoured, shared memory and intermediates NaN-filled."""
        from .gpu_emulator import Emulator

        arrays = self._checked(arrays, named)
        outs = [np.empty(shape, dtype) for _, dtype, shape, _ in self._outputs]
        for o in outs:
            o.reshape(-1).view(np.uint8)[:] = 0xFF  # NaN, or -1: what no kernel wrote
        arena = np.full(max(1, self._arena_bytes), 0xFF, np.uint8)
        if self._emulator is None or self._emulator.seed != seed:
            self._emulator = Emulator(self.llvm_ir, seed=seed)
        base = {INPUT: [a.ctypes.data for a in arrays], OUTPUT: [o.ctypes.data for o in outs],
                ARENA: arena.ctypes.data, WEIGHTS: self._weights.ctypes.data}
        for launch, table in zip(self.launches, self.argument_arrays(base)):
            self._emulator.launch(launch.name, launch.grid, launch.block,
                                  [table.ctypes.data, launch.items])
        return self._other_outputs(arrays, outs)

    # ----- on a GPU --------------------------------------------------------------------------
    def _on_device(self) -> "_DeviceState":
        from .cuda_driver import no_gpu_reason

        if no_gpu_reason() is not None:
            raise self._not_runnable()
        with self._device_lock:
            if self._device is None:
                self._device = _DeviceState(self)
            return self._device

    def __call__(self, *arrays, **named) -> list:
        """numpy arrays in, numpy arrays out; or tensors already on the GPU (anything with
        `__cuda_array_interface__`: torch, cupy) in, the same library's tensors out."""
        ordered = order_inputs(self.input_names, arrays, named)
        if any(hasattr(a, "__cuda_array_interface__") for a in ordered):
            return self._on_device().run_device_arrays(ordered)
        return self.run_exactly(self._checked(ordered, {}))

    def run_exactly(self, arrays) -> list:
        """numpy arrays that `given_exactly` accepts in, numpy arrays out."""
        outs = [np.empty(shape, dtype) for _, dtype, shape, _ in self._outputs]
        self._on_device().run(arrays, outs)
        return self._other_outputs(arrays, outs)

    def profile(self, *arrays, repeat: int = 20, alone: bool = True, **named) -> Profile:
        """Median GPU milliseconds per kernel (CUDA events), and of all kernels in a row. Each
        kernel is timed alone, launched again and again (`alone` is there for the CPU's
        signature: a GPU profile has no in-call form yet)."""
        from .cuda_driver import Timer

        if int(repeat) < 1:
            raise ValueError(f"profile: repeat must be at least 1, got {repeat}")
        device = self._on_device()
        arrays = self._checked(arrays, named)
        outs = [np.empty(shape, dtype) for _, dtype, shape, _ in self._outputs]
        device.run(arrays, outs)
        timer, stream = Timer(), device.stream.handle
        totals = []
        for _ in range(repeat):
            timer.begin(stream)
            device.launch_all()
            totals.append(timer.end(stream))
        rows = []
        for i, launch in enumerate(self.launches):
            times = []
            for _ in range(repeat):
                timer.begin(stream)
                device.launch(i)
                times.append(timer.end(stream))
            rows.append((launch.name, list(launch.ops), float(np.median(times))))
        return Profile(rows, float(np.median(totals)))


class _DeviceState:
    """A CudaProgram on the GPU: loaded PTX, device buffers, argument arrays."""

    def __init__(self, program: CudaProgram):
        from . import cuda_driver as cu

        self.cu = cu
        self.program = program
        # the cubin where it is this GPU's architecture, else the PTX (the driver compiles it)
        cubin = program.cubin
        self.code = cu.DeviceModule(cubin[1] if cubin and cubin[0] == cu.device_sm() else
                                    program.ptx.encode())
        self.functions = [self.code.function(x.name) for x in program.launches]
        self.inputs = [cu.DeviceBuffer(max(1, _nbytes(s))) for s in program._inputs]
        self.outputs = [cu.DeviceBuffer(max(1, _nbytes(s))) for s in program._outputs]
        self.arena = cu.DeviceBuffer(max(1, program._arena_bytes))
        weights = program._weights
        self.weights = cu.DeviceBuffer(max(1, weights.nbytes))
        self.weights.upload(weights.ctypes.data, weights.nbytes)
        base = {INPUT: [b.address for b in self.inputs], OUTPUT: [b.address for b in self.outputs],
                ARENA: self.arena.address, WEIGHTS: self.weights.address}
        self.tables, self.args = [], []
        for launch, table in zip(program.launches, program.argument_arrays(base)):
            buf = cu.DeviceBuffer(table.nbytes)
            buf.upload(table.ctypes.data, table.nbytes)
            self.tables.append(buf)
            self.args.append((ctypes.c_uint64(buf.address), ctypes.c_int64(launch.items)))
        self.lock = threading.Lock()
        self.stream = cu.Stream()
        self.graph_error = None  # why the launches are not replayed as a CUDA graph, if not

    def launch(self, i: int) -> None:
        launch = self.program.launches[i]
        self.cu.launch(self.functions[i], launch.grid, launch.block, self.args[i],
                       self.stream.handle)

    def launch_all(self) -> None:
        """Every kernel in order: the captured CUDA graph once there is one (a batch-1 model
        of a hundred small kernels is otherwise bound by launch overhead)."""
        if self.stream.graph is not None:
            self.stream.replay()
            return
        for i in range(len(self.functions)):
            self.launch(i)

    def run(self, arrays, outs) -> None:
        with self.lock:  # one set of device buffers: calls take turns
            for buf, a in zip(self.inputs, arrays):
                self.stream.upload(buf, a.ctypes.data, a.nbytes)
            self.launch_all()
            for buf, o in zip(self.outputs, outs):
                self.stream.download(buf, o.ctypes.data, o.nbytes)
            self.stream.synchronize()
            if self.stream.graph is None and self.graph_error is None:
                self._capture()

    def run_device_arrays(self, arrays) -> list:
        """A call whose inputs live on the GPU: each is copied device to device into the
        program's input buffer (host arrays among them are uploaded), and the outputs are
        new tensors of the first device input's library, filled device to device."""
        specs, cu = self.program._inputs, self.cu
        if len(arrays) != len(specs):
            raise InputError(f"{self.program._name} takes {len(specs)} inputs, got "
                             f"{len(arrays)}")
        like = next(a for a in arrays if hasattr(a, "__cuda_array_interface__"))
        outs = [_empty_like(like, shape, dtype) for _, dtype, shape, _ in self.program._outputs]
        with self.lock:
            cu.synchronize()  # whatever stream wrote the inputs is done with them
            for buf, a, spec in zip(self.inputs, arrays, specs):
                if hasattr(a, "__cuda_array_interface__"):
                    self.stream.copy(buf.address, *_device_buffer(a, spec))
                else:
                    a = np.ascontiguousarray(check_arrays([spec], [a], self.program._name)[0])
                    self.stream.upload(buf, a.ctypes.data, a.nbytes)
            self.launch_all()
            for j, (buf, o) in enumerate(zip(self.outputs, outs)):
                source = self.program._sources[j]
                address, nbytes = _device_buffer(o, self.program._outputs[j])
                if source[0] == KERNEL:
                    self.stream.copy(address, buf.address, nbytes)
                elif source[0] == COPY_OUTPUT:
                    self.stream.copy(address, _device_buffer(outs[source[1]], None)[0], nbytes)
                elif source[0] == COPY_INPUT:
                    self.stream.copy(address, self.inputs[source[1]].address, nbytes)
                else:  # a constant
                    self.stream.copy(address, self.weights.address + source[1], nbytes)
            self.stream.synchronize()
            if self.stream.graph is None and self.graph_error is None:
                self._capture()
        return outs

    def _capture(self) -> None:
        """After a first call ran plainly (and so checked every launch), capture the
        launches as a graph; a driver that refuses keeps plain launches (the reason is kept
        in `graph_error`)."""
        try:
            self.stream.capture(lambda: [self.launch(i) for i in range(len(self.functions))])
        except self.cu.CudaError as e:
            self.graph_error = str(e)
            self.stream.graph = None


def _device_buffer(tensor, spec) -> tuple:
    """(device address, bytes) of a C-contiguous GPU tensor matching `spec` (None: any)."""
    cai = tensor.__cuda_array_interface__
    dtype, shape = np.dtype(cai["typestr"]), tuple(cai["shape"])
    if spec is not None:
        name, want, want_shape, text = spec
        if dtype != want or len(shape) != len(want_shape) or any(
                isinstance(d, int) and d != s for d, s in zip(want_shape, shape)):
            raise InputError(f"input {name!r} expects {text}, got a GPU tensor of {dtype} "
                             f"{list(shape)}")
    strides = cai.get("strides")
    if strides is not None and tuple(strides) != _c_strides(shape, dtype.itemsize):
        raise InputError(f"a GPU tensor of shape {list(shape)} is not C-contiguous (strides "
                         f"{list(strides)}): pass .contiguous()")
    return int(cai["data"][0]), int(np.prod(shape, dtype=np.int64)) * dtype.itemsize


def _c_strides(shape, itemsize: int) -> tuple:
    out, acc = [], itemsize
    for d in reversed(shape):
        out.append(acc)
        acc *= d
    return tuple(reversed(out))


def _empty_like(like, shape, dtype):
    """A new GPU tensor of `like`'s library (torch or cupy) on its device."""
    library = type(like).__module__.split(".")[0]
    if library == "torch":
        import torch

        return torch.empty(tuple(shape), dtype=getattr(torch, np.dtype(dtype).name),
                           device=like.device)
    if library == "cupy":
        import cupy

        with cupy.cuda.Device(like.device.id):
            return cupy.empty(tuple(shape), dtype=dtype)
    raise InputError(f"GPU tensors of {library} are not taken yet: pass torch or cupy "
                     f"tensors, or numpy arrays")


def _nbytes(spec) -> int:
    _, dtype, shape, _ = spec
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
