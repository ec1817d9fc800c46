"""Passes and the PassManager.

A pass is a named unit that changes a graph in place and returns whether it changed anything.
Write one as a class::

    class DropIdentities(Pass):
        name = "drop_identities"
        def run(self, graph):
            ...
            return changed

or as a decorated function::

    @function_pass("drop_identities")
    def drop_identities(graph) -> bool: ...

The PassManager runs passes in order and, around each one: verifies the IR (``verify=True``,
or ``SLIMC_VERIFY=1``; after the passes in ``check_after``, the user's, always), times it,
prints the IR (``SLIMC_PRINT_IR=after-all``, ``after-change``, or
``after:fold_constants,cse``), and writes one numbered file per pass into
``dump_dir``. A pass that breaks the IR or crashes raises an `InternalError` naming the pass,
and the IR from before it is written out (``<dump_dir or tmp>/reproducer-<pass>.slimc``) with
the command that replays it.

``SLIMC_OPT_BISECT=N`` runs only the first N pass applications (each pass run and each rewrite
rule firing counts as one; see bisect.py), as LLVM's -opt-bisect-limit does: bisecting N
finds the one rewrite that breaks a model.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

from slimc.ir import Graph, SlimcError, verify
from slimc.ir.debug import log
from slimc.ir.errors import InternalError, ModelError, VerificationError

from . import bisect


class Pass:
    """Base class: set `name`, implement `run(graph) -> bool` (True if the graph changed)."""

    name: str = ""

    def run(self, graph: Graph) -> bool:
        raise NotImplementedError

    def __call__(self, graph: Graph) -> bool:
        return bool(self.run(graph))

    def __repr__(self) -> str:
        return f"<pass {self.name}>"


class FunctionPass(Pass):
    def __init__(self, name: str, fn: Callable[[Graph], bool]):
        self.name = name
        self.fn = fn
        self.__doc__ = fn.__doc__

    def run(self, graph: Graph) -> bool:
        return bool(self.fn(graph))


def function_pass(name: str) -> Callable[[Callable[[Graph], bool]], FunctionPass]:
    def wrap(fn: Callable[[Graph], bool]) -> FunctionPass:
        return FunctionPass(name, fn)

    return wrap


@dataclass
class PassRecord:
    name: str
    seconds: float
    changed: bool
    nodes_after: int


@dataclass
class PassReport:
    records: list = field(default_factory=list)

    def __str__(self) -> str:
        lines = [f"{'pass':<28} {'ms':>9} {'changed':>8} {'nodes':>7}"]
        for r in self.records:
            lines.append(f"{r.name:<28} {r.seconds * 1e3:>9.2f} {str(r.changed):>8} "
                         f"{r.nodes_after:>7}")
        return "\n".join(lines)


def _signature(graph: Graph) -> tuple:
    """What no pass may change: how many outputs the model has, each one's dtype and rank."""
    return (len(graph.outputs),) + tuple(f"{v.type.dtype}[rank {v.type.rank}]"
                                         for v in graph.outputs)


def _print_rule() -> tuple[str, set]:
    spec = os.environ.get("SLIMC_PRINT_IR", "")
    if spec.startswith("after:"):
        return "named", set(spec[len("after:"):].split(","))
    return spec, set()


class PassManager:
    def __init__(self, passes: Sequence[Pass] = (), verify: Optional[bool] = None,
                 dump_dir: Optional[str] = None, check_after: Sequence[Pass] = ()):
        """`check_after`: passes verified after they run even when verification is off:
        slimc's own are tested, a user's pass is not, and a graph it broke would compile to
        code that returns garbage."""
        self.passes = list(passes)
        self.verify = verify if verify is not None else os.environ.get("SLIMC_VERIFY") == "1"
        self.dump_dir = dump_dir
        self.check_after = {id(p) for p in check_after}

    def add(self, p: Pass) -> "PassManager":
        self.passes.append(p)
        return self

    def run(self, graph: Graph) -> PassReport:
        bisect.reset()
        report = PassReport()
        mode, named = _print_rule()
        if self.dump_dir:
            os.makedirs(self.dump_dir, exist_ok=True)
            self._write(graph, "00-input.slimc")
        if self.verify:
            try:
                verify(graph)
            except VerificationError as e:
                raise ModelError(f"the graph is invalid before any pass ran: {e}") from e
        signature = _signature(graph)
        for i, p in enumerate(self.passes, 1):
            if not bisect.allow(f"pass {p.name}"):
                continue
            checked = self.verify or id(p) in self.check_after
            before = str(graph) if checked or self.dump_dir else None
            start = time.perf_counter()
            graph.current_pass = p.name
            try:
                changed = p(graph)
            except SlimcError as e:
                if isinstance(e, InternalError) or not isinstance(e, ModelError):
                    self._reproducer(before or "", p)
                raise
            except Exception as e:
                path = self._reproducer(before, p)
                raise InternalError(f"{type(e).__name__}: {e}" + (f" (IR before the pass: {path})"
                                    if path else ""), where=f"pass {p.name}") from e
            finally:
                graph.current_pass = ""
            seconds = time.perf_counter() - start
            if checked:
                try:
                    verify(graph)
                    if _signature(graph) != signature:
                        raise VerificationError(
                            f"it changed the model's outputs from {signature} to "
                            f"{_signature(graph)} (count, then dtype and rank of each)")
                except VerificationError as e:
                    path = self._reproducer(before, p)
                    raise InternalError(f"the IR is invalid after it: {e}" +
                                        (f" (IR before the pass: {path})" if path else ""),
                                        where=f"pass {p.name}") from e
            report.records.append(PassRecord(p.name, seconds, changed, len(graph.nodes)))
            log("passes", f"{p.name}: {seconds * 1e3:.2f} ms, changed={changed}, "
                          f"{len(graph.nodes)} nodes")
            if mode == "after-all" or (mode == "after-change" and changed) or \
                    (mode == "named" and p.name in named):
                print(f"// ----- IR after {p.name}{'' if changed else ' (no change)'} -----",
                      file=sys.stderr)
                print(graph, file=sys.stderr)
            if self.dump_dir:
                self._write(graph, f"{i:02d}-{p.name}.slimc")
        if self.dump_dir:
            with open(os.path.join(self.dump_dir, "passes.txt"), "w") as f:
                f.write(str(report) + "\n")
        return report

    def _write(self, graph: Graph, filename: str) -> None:
        with open(os.path.join(self.dump_dir, filename), "w") as f:
            f.write(str(graph))

    def _reproducer(self, before: Optional[str], p: Pass) -> Optional[str]:
        if not before:
            return None
        folder = self.dump_dir or tempfile.mkdtemp(prefix="slimc-repro-")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"reproducer-{p.name}.slimc")
        header, _, body = before.partition("\n")
        with open(path, "w") as f:
            f.write(f"{header}\n# replay: python -m slimc opt {path} --passes {p.name}\n{body}")
        return path
