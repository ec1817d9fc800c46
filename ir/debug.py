"""One debug switch for all of slimc: ``SLIMC_DEBUG``.

``SLIMC_DEBUG=1..4`` is a ladder (1: what ran and how long, 2: + decisions such as fusion and
rewrite reasons, 3: + IR after each pass, 4: + generated code); ``SLIMC_DEBUG=rewrite,fusion``
names topics instead. Messages go to stderr, one line each, prefixed with their topic.
"""

from __future__ import annotations

import os
import sys

# topic -> the ladder level that turns it on
TOPICS = {"passes": 1, "compile": 1, "time": 1, "rewrite": 2, "fusion": 2, "winograd": 2, "memory": 2,
          "quant": 2, "parts": 2,
          "ir": 3, "codegen": 4}


def _parse(value: str) -> tuple[int, set]:
    level, topics = 0, set()
    for part in filter(None, (p.strip() for p in value.split(","))):
        if part.isdigit():
            level = max(level, int(part))
        else:
            topics.add(part)
    return level, topics


def enabled(topic: str) -> bool:
    level, topics = _parse(os.environ.get("SLIMC_DEBUG", ""))
    return topic in topics or "all" in topics or (level and level >= TOPICS.get(topic, 2))


def log(topic: str, message: str) -> None:
    if enabled(topic):
        print(f"[slimc:{topic}] {message}", file=sys.stderr, flush=True)
