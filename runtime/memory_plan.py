"""The memory planner: every intermediate tensor gets an offset in one arena.

Each buffer lives from the step that writes it to the last step that reads it. Buffers are
placed greedily, largest first, at the lowest 64-byte-aligned offset that overlaps no placed
buffer whose lifetime intersects its own (TFLite's "greedy by size" strategy, which comes
within a few percent of optimal on CNNs and transformers). Steps are kernel indices in
execution order, so a buffer's space is reused as soon as its last reader has run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from slimc.codegen.backend import ARENA, INPUT, OUTPUT, WEIGHTS, Placement
from slimc.ir.buffers import ALIGN, aligned_zeros
from slimc.ir.errors import InputError


@dataclass(frozen=True)
class Interval:
    name: str
    size: int  # bytes
    first: int  # step that writes it
    last: int  # last step that reads it (== first if nobody reads it)


@dataclass
class MemoryPlan:
    offsets: dict  # name -> byte offset in the arena
    sizes: dict  # name -> bytes
    arena_bytes: int

    @property
    def naive_bytes(self) -> int:
        """What one buffer per tensor would cost."""
        return sum(_align(s) for s in self.sizes.values())

    def __str__(self) -> str:
        lines = [f"arena {self.arena_bytes} bytes for {len(self.sizes)} buffers "
                 f"(naive {self.naive_bytes} bytes)"]
        for name, off in sorted(self.offsets.items(), key=lambda kv: kv[1]):
            lines.append(f"  [{off:>10}, {off + self.sizes[name]:>10})  {name}")
        return "\n".join(lines)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def plan(intervals: Iterable[Interval]) -> MemoryPlan:
    items = sorted(intervals, key=lambda iv: (-iv.size, iv.first, iv.name))
    placed: list[tuple[int, int, Interval]] = []  # (offset, end, interval)
    offsets = {}
    arena = 0
    for iv in items:
        size = _align(max(iv.size, 1))
        busy = sorted((off, end) for off, end, other in placed
                      if other.first <= iv.last and iv.first <= other.last)
        offset = 0
        for off, end in busy:
            if offset + size <= off:
                break
            offset = max(offset, end)
        placed.append((offset, offset + size, iv))
        offsets[iv.name] = offset
        arena = max(arena, offset + size)
    return MemoryPlan(offsets, {iv.name: iv.size for iv in items}, arena)


def check(plan_: MemoryPlan, intervals: Sequence[Interval]) -> None:
    """Raise if two buffers alive at the same time overlap (used by the tests)."""
    ivs = list(intervals)
    for i, a in enumerate(ivs):
        for b in ivs[i + 1:]:
            if a.first <= b.last and b.first <= a.last:
                ao, bo = plan_.offsets[a.name], plan_.offsets[b.name]
                if ao < bo + b.size and bo < ao + a.size:
                    raise AssertionError(f"{a.name} and {b.name} overlap while both alive")


def place_buffers(graph, kernels) -> tuple[dict, MemoryPlan, np.ndarray, dict]:
    """Where every buffer of `kernels` (in execution order) lives during a call: graph inputs
    and outputs in the caller's arrays, constants in one 64-byte-aligned weights blob (the
    returned array), intermediates and scratch in the arena at offsets from `plan` by their
    lifetimes in kernel steps. Returns (id(Value) -> Placement, the arena plan keyed by value
    name, the weights blob, name -> (space, offset, bytes) for the memory report). The same
    for every backend."""
    placement: dict = {}
    buffers: dict = {}
    for i, v in enumerate(graph.inputs):
        placement[id(v)] = Placement(INPUT, i)
    output_slot = {}
    for j, v in enumerate(graph.outputs):
        if v.producer is not None and id(v) not in output_slot:
            output_slot[id(v)] = j
            placement[id(v)] = Placement(OUTPUT, j)
    # weights: every constant a kernel reads or the graph returns, aligned
    blob_parts, offset = [], 0
    constants = [v for k in kernels for v in k.inputs] + list(graph.outputs)
    for v in constants:
        # graph constants, and data a kernel substituted (prepacked weights)
        if id(v) in placement or not (v.is_constant or (v.graph is None and v.data is not None)):
            continue
        if v.data is None:
            raise InputError(f"constant %{v.name} has no data (elided); load the graph with its "
                             f"weights")
        data = np.ascontiguousarray(v.data)
        placement[id(v)] = Placement(WEIGHTS, offset)
        buffers[v.name] = (WEIGHTS, offset, data.nbytes)
        blob_parts.append((offset, data))
        offset += (data.nbytes + ALIGN - 1) // ALIGN * ALIGN
    weights = aligned_zeros(offset)
    for off, data in blob_parts:
        weights[off:off + data.nbytes] = data.reshape(-1).view(np.uint8)
    # intermediates: lifetimes in kernel steps
    first, last, values = {}, {}, {}
    for step, k in enumerate(kernels):
        for v in list(k.outputs) + list(k.scratch):
            if id(v) not in placement:
                first.setdefault(id(v), step)
                last.setdefault(id(v), step)
                values[id(v)] = v
        for v in k.inputs:
            if id(v) in first:
                last[id(v)] = step
    intervals = [Interval(str(key), values[key].type.nbytes, first[key], last[key]) for key in first]
    memory = plan(intervals)
    for key, v in values.items():
        off = memory.offsets[str(key)]
        placement[key] = Placement(ARENA, off)
        buffers[v.name] = (ARENA, off, v.type.nbytes)
    # the plan is keyed by value id; re-key its report by name for people
    memory = MemoryPlan({values[int(k)].name: o for k, o in memory.offsets.items()},
                        {values[int(k)].name: s for k, s in memory.sizes.items()}, memory.arena_bytes)
    return placement, memory, weights, buffers
