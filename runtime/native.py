"""Calling native model code: the part shared by JIT-compiled and loaded modules.

A `NativeModule` knows the entry function (``slimc_main``), the input and output types, the
weights blob, the arena size and where each output comes from. A call checks the inputs,
allocates fresh outputs, takes an arena from a pool (so concurrent calls from several threads
each get their own and none waits on a lock while running), and makes one foreign call.

This module imports numpy and ctypes only: `slimc.load` runs exported artifacts with it, without
llvmlite, onnx or pickle.
"""

from __future__ import annotations

import ctypes
from typing import Sequence

import numpy as np

from slimc.ir.buffers import ARRAY_DATA_OFFSET, TUPLE_ITEMS_OFFSET, aligned_zeros
from slimc.ir.interpreter import check_arrays, order_inputs


# Where an output's data comes from (kernels write most outputs directly into the caller's
# fresh array; these cover the rest).
KERNEL = "kernel"  # written by a kernel into its output slot
COPY_OUTPUT = "copy_output"  # the same value as an earlier output: copied from it
COPY_INPUT = "copy_input"  # a graph input returned as an output
WEIGHTS = "weights"  # a constant, stored in the weights blob at an offset


ENTRY_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_void_p)
# slimc_run(inputs, outputs, arena, weights, first, last): kernels [first, last) only
RUN_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                            ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)


# slimc_timed(inputs, outputs, arena, weights, ns): every kernel, ns[i] its nanoseconds and
# ns[kernels] the whole run's
TIMED_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                              ctypes.c_void_p, ctypes.c_void_p)


# slimc_call(input arrays, output arrays, arena, weights): tuples of numpy arrays (the
# generated code reads their data pointers; see `_object_layout_holds`)
CALL_TYPE = ctypes.CFUNCTYPE(None, ctypes.py_object, ctypes.py_object, ctypes.c_void_p,
                             ctypes.c_void_p)


_NO_BYTES = ctypes.c_char * 0


def _address(a: np.ndarray) -> int:
    """The address of a C-contiguous array's data: through the buffer protocol (0.3 us; both
    `a.ctypes.data` and `__array_interface__` build a helper per call, 1 us), or for a
    read-only array, which exports no writable buffer, its interface."""
    try:
        return ctypes.addressof(_NO_BYTES.from_buffer(a))
    except (TypeError, ValueError, BufferError):
        return a.__array_interface__["data"][0]


def _object_layout_holds() -> bool:
    """Whether this interpreter keeps tuple items and ndarray data pointers where
    ``slimc_call`` reads them (ir/buffers.py): CPython on a 64-bit machine, with a numpy whose
    arrays start as numpy's own headers say. Checked on live objects, once."""
    import sys

    if sys.implementation.name != "cpython" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False
    a = np.zeros(3, np.float32)
    items = (a,)
    item = ctypes.c_void_p.from_address(id(items) + TUPLE_ITEMS_OFFSET).value
    data = ctypes.c_void_p.from_address(id(a) + ARRAY_DATA_OFFSET).value
    return item == id(a) and data == _address(a)


OBJECT_CALLS = _object_layout_holds()


class Profile:
    """Median time per kernel, in execution order (`mod.profile(...)`). `in_call`: each kernel
    was timed inside whole calls (else: run alone, again and again); `total_ms`: the whole
    native call."""

    def __init__(self, rows: list, total_ms: float, in_call: bool = False):
        self.rows = rows  # (kernel name, ops, median ms)
        self.total_ms = total_ms
        self.in_call = in_call

    def kinds(self) -> list:
        """[(ops, kernels, ms)] summed over the kernels of the same ops ("matmul add gelu"),
        largest first: where a model's time goes by kind of work."""
        kinds: dict = {}
        for _, ops, ms in self.rows:
            n, total = kinds.get(" ".join(ops), (0, 0.0))
            kinds[" ".join(ops)] = (n + 1, total + ms)
        return sorted(((k, n, ms) for k, (n, ms) in kinds.items()), key=lambda x: -x[2])

    def __str__(self) -> str:
        width = max([len(r[0]) for r in self.rows] + [6])
        how = "timed inside the call" if self.in_call else "each kernel alone"
        lines = [f"{'kernel':<{width}} {'ms':>9} {'share':>6}  ops   ({how})"]
        kernel_sum = sum(r[2] for r in self.rows)
        for name, ops, ms in sorted(self.rows, key=lambda r: -r[2]):
            share = 100 * ms / (kernel_sum or 1.0)
            lines.append(f"{name:<{width}} {ms:>9.3f} {share:>5.1f}%  {' '.join(ops)}")
        lines.append(f"{'kernels':<{width}} {kernel_sum:>9.3f}   (whole call: {self.total_ms:.3f} ms)")
        return "\n".join(lines)


class NativeModule:
    """One specialization of a model as native code. Call it with numpy arrays."""

    def __init__(self, entry, inputs: Sequence[tuple], outputs: Sequence[tuple],
                 output_sources: Sequence[tuple], arena_bytes: int, weights: np.ndarray,
                 name: str = "model", run=None, kernel_info: Sequence[tuple] = (), call=None,
                 timed=None):
        """inputs/outputs: (name, numpy dtype, shape, type text); output_sources: per output,
        (KERNEL,) | (COPY_OUTPUT, j) | (COPY_INPUT, i) | (WEIGHTS, offset); `run` is the
        slimc_run function and `kernel_info` (name, ops) per kernel, for `profile`; `call`
        the slimc_call function (tuples of arrays), `timed` the slimc_timed function (each
        kernel's time inside a call, for `profile`), where the module has them."""
        self._entry = entry
        self._call = call if OBJECT_CALLS else None
        self._out_specs = [(tuple(s[2]), np.dtype(s[1])) for s in outputs]
        self._run = run
        self._timed = timed
        self._kernel_info = [tuple(k) for k in kernel_info]
        self._inputs = [tuple(s) for s in inputs]
        self._outputs = [tuple(s) for s in outputs]
        self._sources = [tuple(s) for s in output_sources]
        self._arena_bytes = int(arena_bytes)
        self._weights = weights
        self._weights_address = _address(weights)
        self._name = name
        self._arenas: list = []
        self._in_ptr_type = ctypes.c_void_p * max(1, len(self._inputs))
        self._out_ptr_type = ctypes.c_void_p * max(1, len(self._outputs))
        # (dtype, shape) per input where every dim is static: an ndarray that matches exactly
        # and is C-contiguous needs no further checking (1.8 -> 0.3 us a call)
        static = all(all(isinstance(d, int) for d in s[2]) for s in self._inputs)
        self._exact = [(np.dtype(s[1]), tuple(s[2])) for s in self._inputs] if static else None
        self._copies = any(source[0] != KERNEL for source in self._sources)

    @property
    def input_names(self) -> list[str]:
        return [s[0] for s in self._inputs]

    @property
    def output_names(self) -> list[str]:
        return [s[0] for s in self._outputs]

    def _arena(self) -> tuple:
        """(an arena from the pool or a new one, its address); list.pop is atomic."""
        try:
            return self._arenas.pop()
        except IndexError:
            arena = aligned_zeros(self._arena_bytes)
            return arena, _address(arena)

    def given_exactly(self, arrays) -> bool:
        """Whether `arrays` (positional) are C-contiguous ndarrays of exactly the static input
        dtypes and shapes: such a call needs no checking or conversion."""
        exact = self._exact
        if exact is None or len(arrays) != len(exact):
            return False
        for a, (dtype, shape) in zip(arrays, exact):
            if type(a) is not np.ndarray or a.dtype != dtype or a.shape != shape or \
                    not a.flags.c_contiguous:
                return False
        return True

    def _checked(self, arrays, named) -> list:
        """The inputs in order, checked, as C-contiguous arrays of the input types."""
        arrays = order_inputs(self.input_names, arrays, named)  # (a dict by position too)
        if self.given_exactly(arrays):
            return arrays
        return [np.asarray(a, order="C") for a in check_arrays(self._inputs, arrays, self._name)]

    def _fresh_outputs(self) -> list:
        return [np.empty(shape, dtype) for shape, dtype in self._out_specs]

    def _pointers(self, arrays) -> tuple:
        """Fresh outputs and the pointer tables of the inputs and outputs."""
        outs = self._fresh_outputs()
        in_ptrs = self._in_ptr_type(*[_address(a) for a in arrays])
        out_ptrs = self._out_ptr_type(*[_address(o) for o in outs])
        return outs, in_ptrs, out_ptrs

    def __call__(self, *arrays, **named) -> list[np.ndarray]:
        return self.run_exactly(self._checked(arrays, named))

    def run_exactly(self, arrays) -> list[np.ndarray]:
        """A call with inputs that `given_exactly` accepts: the hot path of a model called
        again and again (`Module.__call__` comes straight here). With `slimc_call` the arrays
        go to the native code as they are (a one-kernel model 3.7 -> 1.5 us a call, its
        pointer tables built here cost 3)."""
        arena = self._arena()
        try:
            if self._call is not None:
                outs = self._fresh_outputs()
                self._call(tuple(arrays), tuple(outs), arena[1], self._weights_address)
            else:
                outs, in_ptrs, out_ptrs = self._pointers(arrays)
                self._entry(ctypes.addressof(in_ptrs), ctypes.addressof(out_ptrs), arena[1],
                            self._weights_address)
        finally:
            self._arenas.append(arena)
        if self._copies:
            return self._other_outputs(arrays, outs)
        return outs

    def _other_outputs(self, arrays, outs) -> list:
        """`outs` with the outputs no kernel writes filled in (copies, inputs, constants)."""
        for j, source in enumerate(self._sources):
            kind = source[0]
            if kind == COPY_OUTPUT:
                outs[j] = outs[source[1]].copy()
            elif kind == COPY_INPUT:
                outs[j] = arrays[source[1]].copy()
            elif kind == WEIGHTS:
                out = outs[j]
                out.reshape(-1).view(np.uint8)[:] = self._weights[source[1]:source[1] + out.nbytes]
        return outs

    def profile(self, *arrays, repeat: int = 20, alone: bool = False, **named) -> Profile:
        """Median time of every kernel on these inputs over `repeat` runs, after a warm-up
        call, each run exactly as a full call runs it: same threads, same MXCSR. By default
        the kernels are timed inside whole calls (the clock read between steps), so each
        finds the caches as the kernel before it left them: a model's time, kernel by
        kernel. `alone=True` runs each kernel `repeat` times by itself instead: its speed
        with its data warm (also what a module without ``slimc_timed`` gives)."""
        if int(repeat) < 1:
            raise ValueError(f"profile: repeat must be at least 1, got {repeat}")
        arrays = self._checked(arrays, named)
        outs, in_ptrs, out_ptrs = self._pointers(arrays)
        arena = self._arena()
        call = (ctypes.addressof(in_ptrs), ctypes.addressof(out_ptrs), arena[1],
                self._weights_address)
        try:
            self._entry(*call)
            if alone or self._timed is None:
                return self._profile_alone(call, repeat)
            return self._profile_in_call(call, repeat)
        finally:
            self._arenas.append(arena)

    def _profile_in_call(self, call: tuple, repeat: int) -> Profile:
        n = len(self._kernel_info)
        ns = np.zeros((repeat, n + 1), np.int64)
        for r in range(len(ns)):
            self._timed(*call, _address(ns[r]))
        ms = np.median(ns, axis=0) / 1e6
        rows = [(name, list(ops), float(ms[i])) for i, (name, ops) in enumerate(self._kernel_info)]
        return Profile(rows, float(ms[n]), in_call=True)

    def _profile_alone(self, call: tuple, repeat: int) -> Profile:
        import time

        totals = []
        for _ in range(repeat):
            t = time.perf_counter()
            self._entry(*call)
            totals.append(time.perf_counter() - t)
        rows = []
        for i, (name, ops) in enumerate(self._kernel_info):
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                self._run(*call, i, i + 1)
                times.append(time.perf_counter() - t)
            rows.append((name, list(ops), 1e3 * float(np.median(times))))
        return Profile(rows, 1e3 * float(np.median(totals)))
