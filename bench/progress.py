"""A one-line progress bar on stderr (one line per step when stderr is not a terminal)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, total: int, width: int = 28):
        self.total, self.done, self.width = max(total, 1), 0, width
        self.start = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.label = ""

    def _line(self, stage: str) -> str:
        filled = int(self.width * self.done / self.total)
        bar = "#" * filled + "." * (self.width - filled)
        elapsed = time.perf_counter() - self.start
        return f"[{bar}] {self.done}/{self.total} {elapsed:5.0f}s  {self.label}  {stage}"

    def show(self, label: str = None, stage: str = "") -> None:
        if label is not None:
            self.label = label
        if self.tty:
            sys.stderr.write("\r\033[K" + self._line(stage))
        else:
            sys.stderr.write(self._line(stage) + "\n")
        sys.stderr.flush()

    def advance(self) -> None:
        self.done += 1

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\r\033[K")
        sys.stderr.write(f"done: {self.done} steps in {time.perf_counter() - self.start:.0f} s\n")
        sys.stderr.flush()
