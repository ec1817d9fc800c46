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

ALIGN = 64


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
