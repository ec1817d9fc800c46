"""Process-wide settings slimc changes only while it works, and gives back after.

numpy's huge-page advice and LLVM's command-line options belong to the whole process: the
user's own code (another numpy user, numba on the same LLVM) must find them as it left them.
A `HeldSetting` is changed when the first holder enters and restored when the last one
leaves, so nested and concurrent compiles hold it together.
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable


class HeldSetting:
    """`change()` returns what `restore(saved)` needs to put the setting back."""

    def __init__(self, change: Callable[[], Any], restore: Callable[[Any], None]):
        self._change, self._restore = change, restore
        self._lock = threading.Lock()
        self._depth = 0
        self._saved = None

    @contextlib.contextmanager
    def held(self):
        with self._lock:
            if self._depth == 0:
                self._saved = self._change()
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    self._restore(self._saved)
