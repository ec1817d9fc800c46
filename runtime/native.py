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

from slimc.ir.buffers import (ARRAY_C_CONTIGUOUS, ARRAY_DATA_OFFSET, ARRAY_DESCR_OFFSET,
                               ARRAY_DIMS_OFFSET, ARRAY_FLAGS_OFFSET, ARRAY_NDIM_OFFSET,
                               INDEX_FAULT_SLOTS, OBJECT_TYPE_OFFSET, TUPLE_ITEMS_OFFSET,
                               aligned_zeros)
from slimc.ir.errors import InputError
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


# slimc_exact((inputs..., outputs..., arena, weights, spec)) -> 1 when the inputs are not
# exactly the module's (nothing ran), 0 once it ran (codegen/cpu/entry.py)
EXACT_TYPE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.py_object)


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
    """Whether this interpreter keeps what ``slimc_exact`` reads where ir/buffers.py says:
    CPython on a 64-bit machine, with a numpy whose arrays are laid out as numpy's own
    headers say. Checked on live objects, once: a C-contiguous array and a strided view of
    it, each field read back and compared with what Python says of the array."""
    import sys

    if sys.implementation.name != "cpython" or ctypes.sizeof(ctypes.c_void_p) != 8:
        return False

    def word(address: int, kind=ctypes.c_void_p):
        return kind.from_address(address).value or 0

    def holds(a: np.ndarray) -> bool:
        dims = word(id(a) + ARRAY_DIMS_OFFSET)
        return (word(id(a) + OBJECT_TYPE_OFFSET) == id(np.ndarray) and
                word(id(a) + ARRAY_NDIM_OFFSET, ctypes.c_int) == a.ndim and
                tuple(word(dims + 8 * i, ctypes.c_int64) for i in range(a.ndim)) == a.shape and
                word(id(a) + ARRAY_DESCR_OFFSET) == id(a.dtype) and
                bool(word(id(a) + ARRAY_FLAGS_OFFSET, ctypes.c_int) & ARRAY_C_CONTIGUOUS) ==
                a.flags.c_contiguous and
                word(id(a) + ARRAY_DATA_OFFSET) == a.__array_interface__["data"][0])

    a = np.zeros((3, 5), np.float32)
    items = (a,)
    return (word(id(items) + TUPLE_ITEMS_OFFSET) == id(a) and holds(a) and holds(a[:, ::2])
            and np.dtype(np.float32) is a.dtype)


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
        lines.append(f"{'kernels':<{width}} {kernel_sum:>9.3f}   "
                     f"(whole call: {self.total_ms:.3f} ms)")
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
        the slimc_exact function (a tuple of arrays), `timed` the slimc_timed function (each
        kernel's time inside a call, for `profile`), where the module has them."""
        self._entry = entry
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
        # slimc_exact checks the inputs against `spec`: the addresses of the ndarray type and
        # of each input's dtype (numpy's own instance of it, which arrays of it share)
        self._call = call if OBJECT_CALLS and static else None
        # (then INDEX_FAULT_SLOTS where it says which index input holds a value out of range)
        self._spec = np.array([id(np.ndarray)] + [id(dtype) for dtype, _ in self._exact or ()]
                              + [0] * INDEX_FAULT_SLOTS, np.int64)
        self._n_inputs = len(self._inputs)

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
        if len(self._out_specs) == 1:  # (no comprehension: 0.4 -> 0.2 us)
            shape, dtype = self._out_specs[0]
            return [np.empty(shape, dtype)]
        return [np.empty(shape, dtype) for shape, dtype in self._out_specs]

    def _pointers(self, arrays) -> tuple:
        """Fresh outputs and the pointer tables of the inputs and outputs."""
        outs = self._fresh_outputs()
        in_ptrs = self._in_ptr_type(*[_address(a) for a in arrays])
        out_ptrs = self._out_ptr_type(*[_address(o) for o in outs])
        return outs, in_ptrs, out_ptrs

    def __call__(self, *arrays, **named) -> list[np.ndarray]:
        outs = None if named else self.call_exact(arrays)
        return outs if outs is not None else self.run_exactly(self._checked(arrays, named))

    def call_exact(self, arrays: tuple):
        """The outputs of a call with `arrays` (positional) if they are exactly the module's
        inputs (`given_exactly`), else None and nothing ran: the hot path of a model called
        again and again (`Module.__call__` comes straight here). With ``slimc_exact`` the
        native code checks the arrays and reads their buffers itself, so a call is one
        ctypes argument and the fresh outputs (a one-kernel model 2.1 -> 1.2 us a call on
        the Xeon here, 3.7 us when Python built pointer tables)."""
        exact = self._call
        if exact is None:
            return self.run_exactly(arrays) if self.given_exactly(arrays) else None
        if len(arrays) != self._n_inputs:
            return None
        outs = self._fresh_outputs()
        arena = self._arena()
        try:
            missed = exact((*arrays, *outs, arena[0], self._weights, self._spec))
        finally:
            self._arenas.append(arena)
        if missed:  # an array of another type, dtype, shape or layout: Python looks closer
            if missed == 2:
                raise self._index_out_of_range(arrays)
            return self._run_pointers(arrays) if self.given_exactly(arrays) else None
        return self._other_outputs(arrays, outs) if self._copies else outs

    def _index_out_of_range(self, arrays) -> InputError:
        """The error for the index slimc_exact found out of range (spec's last slots)."""
        i, flat, value, n, label = (int(x) for x in self._spec[-INDEX_FAULT_SLOTS:])
        where = list(np.unravel_index(flat, arrays[i].shape)) if arrays[i].ndim else []
        node = ctypes.string_at(label).decode("utf-8", "replace") if label else "?"
        return InputError(f"input {self.input_names[i]!r} holds {value} at "
                          f"{[int(w) for w in where]}, an index outside [-{n}, {n - 1}]: "
                          f"node {node!r} indexes a dimension of {n} with it")

    def run_exactly(self, arrays) -> list[np.ndarray]:
        """A call with inputs that `given_exactly` accepts (checked or converted by Python)."""
        if self._call is not None:
            outs = self.call_exact(tuple(arrays))
            if outs is not None:
                return outs
        return self._run_pointers(arrays)

    def _run_pointers(self, arrays) -> list[np.ndarray]:
        """A call through pointer tables built in Python: where ``slimc_exact`` is missing
        (an older artifact), or will not take an array Python accepts."""
        arena = self._arena()
        try:
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
