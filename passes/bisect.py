"""Pass bisection: ``SLIMC_OPT_BISECT=N`` lets only the first N pass applications run.

Each pass run and each rewrite-rule firing asks `allow(what)`; past the limit the answer is
no, and the skipped application is logged (``SLIMC_DEBUG=passes``), so a binary search over N
finds the one application after which a model goes wrong -- LLVM's -opt-bisect-limit.
The count restarts with every compile (`reset`).
"""

from __future__ import annotations

import os

from slimc.ir.debug import log

_count = 0


def reset() -> None:
    global _count
    _count = 0


def allow(what: str) -> bool:
    global _count
    limit = os.environ.get("SLIMC_OPT_BISECT")
    if limit is None or limit == "":
        return True
    _count += 1
    ok = _count <= int(limit)
    log("passes", f"BISECT: {'running' if ok else 'NOT running'} ({_count}) {what}")
    return ok
