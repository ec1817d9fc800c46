"""The memory a compiled model may ask for, checked at compile time, before any allocation.

A model whose shapes ask for more bytes than the machine has (a Reshape to [2**40, 2**40], an
Expand gone wrong) must fail with an error naming the value and the node that makes it, not
be killed by the kernel's out-of-memory handler in the middle of a call. The limit is
``$SLIMC_MEMORY_LIMIT`` (bytes, or with a K/M/G/T suffix), else the machine's physical memory.
"""

from __future__ import annotations

import os
from typing import Iterable, Optional

from slimc.ir import Graph
from slimc.ir.errors import ResourceError, SlimcError

_SUFFIX = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def env_bytes(name: str) -> Optional[int]:
    """The environment variable `name` as a byte count ("512M", "8G", "1000"), or None if it
    is unset; a clear error naming it when it is not a size."""
    raw = os.environ.get(name, "")
    text = raw.strip().upper().removesuffix("B")
    if not text:
        return None
    unit = text[-1] if text[-1] in _SUFFIX else ""
    try:
        return int(float(text[:len(text) - len(unit)]) * _SUFFIX[unit])
    except ValueError:
        raise SlimcError(f"{name}={raw!r}: expected bytes, optionally with a K, M, G or T "
                         f"suffix") from None


def memory_limit() -> int:
    limit = env_bytes("SLIMC_MEMORY_LIMIT")
    if limit is not None:
        return limit
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _fmt(n: int) -> str:
    for unit, size in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} bytes"


def check_values(graph: Graph, limit: Optional[int] = None) -> None:
    """Every tensor of `graph` (static shapes) fits in `limit` bytes on its own."""
    limit = memory_limit() if limit is None else limit
    for v in list(graph.inputs) + [o for n in graph.nodes for o in n.outputs if o is not None]:
        if not v.type.is_static:
            continue
        size = v.type.nbytes
        if size > limit:
            node = v.producer
            what = f"%{v.name}" if node is not None else f"graph input %{v.name}"
            raise ResourceError(f"{what} ({v.type}) needs {_fmt(size)}, more than the "
                                f"memory limit of {_fmt(limit)} (SLIMC_MEMORY_LIMIT or the "
                                f"machine's memory)",
                                node=node.label if node is not None else None,
                                op=node.op if node is not None else None)


def check_total(parts: Iterable[tuple[str, int]], limit: Optional[int] = None) -> None:
    """The buffers a module allocates (arena, weights, outputs) fit in `limit` together."""
    limit = memory_limit() if limit is None else limit
    parts = list(parts)
    total = sum(n for _, n in parts)
    if total > limit:
        detail = ", ".join(f"{what} {_fmt(n)}" for what, n in parts)
        raise ResourceError(f"the compiled model needs {_fmt(total)} ({detail}), more than the "
                            f"memory limit of {_fmt(limit)} (SLIMC_MEMORY_LIMIT or the machine's "
                            f"memory)")
