"""A small crash- and hang-tolerant process pool for conformance cases.

N worker processes, started with multiprocessing's 'spawn' (or 'forkserver'): never a plain
fork, since a threading runtime such as libgomp is not fork-safe once used. Each case goes to
one idle worker; the parent waits on the workers' pipes and process sentinels together, so

* a worker that dies mid-case (segfault, abort, OOM kill) records ``crash`` for that case and is
  replaced;
* a case that has used ``timeout`` seconds of CPU (a case's own ``timeout`` where it sets one:
  the whole-CNN 'real' cases), or ``wall_factor`` times that in wall-clock time (a deadlock or
  a sleep uses no CPU), records ``hang``; its worker is killed and replaced. CPU time, read
  from /proc, keeps a busy machine (CI running other tests beside this) from turning slow
  cases into hangs; where /proc is missing, wall-clock time is used.

Either way the run goes on with the next case. A worker reports 'ready' once slimc is imported,
so the timeout counts a case's own time, not a worker's start.
"""

from __future__ import annotations

import collections
import multiprocessing as mp
import os
import signal
import sys
import time
from multiprocessing.connection import wait
from typing import Callable, Iterable, Mapping, Optional

# Set in every worker before slimc is imported (a caller's `env` adds to or overrides these).
DEFAULT_ENV = {
    "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
    # The compile cache only costs here (each case compiles once; storing an entry links a
    # shared library, about half of a tiny graph's compile): off unless the caller wants it.
    "SLIMC_CACHE_DIR": "off",
}


def _worker(conn, runner_name: str, threads: Optional[int], env: Mapping[str, str]) -> None:
    os.environ.update(env)
    import warnings

    warnings.simplefilter("ignore")
    from tests.conformance import cases as C

    runner = C.get_runner(runner_name, threads=threads)
    import slimc  # noqa: F401  (imported before 'ready': the timeout is for the case alone)
    import slimc.testing  # noqa: F401

    serve(conn, lambda case: C.run_case(runner, case))


def serve(conn, handle: Callable) -> None:
    """A worker's side of the protocol: "ready", then handle(case) for each case received
    (a result dict sent back), until None or a closed pipe."""
    conn.send("ready")
    while True:
        try:
            case = conn.recv()
        except (EOFError, OSError):
            return
        if case is None:
            return
        conn.send(handle(case))


_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cpu_seconds(pid: int) -> Optional[float]:
    """User + system CPU seconds of process `pid` (Linux /proc), None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    except (OSError, IndexError, ValueError):
        return None


def _death(exitcode: Optional[int]) -> str:
    if exitcode is not None and exitcode < 0:
        try:
            return f"killed by {signal.Signals(-exitcode).name}"
        except ValueError:
            return f"killed by signal {-exitcode}"
    return f"exit code {exitcode}"


def _kind(case) -> Optional[str]:
    return getattr(case, "kind", None)


class _Slot:
    def __init__(self, ctx, target, args):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=target, args=(child,) + args, daemon=True)
        self.proc.start()
        child.close()
        self.ready = False
        self.case = None
        self.t0 = 0.0
        self.cpu0 = 0.0
        self.started = time.monotonic()

    def stop(self, kill: bool = False) -> None:
        if kill:
            self.proc.kill()
        else:
            try:
                self.conn.send(None)
            except (OSError, ValueError):
                self.proc.kill()
        self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


class Pool:
    """Run cases in `workers` processes with `runner` ('compiled' or 'interpreter').

    Another suite brings its own `worker(conn, *worker_args)`: it sends "ready", then answers
    each case it receives with a result dict (name, status, reason, seconds), until None."""

    def __init__(self, runner: str = "compiled", workers: int = 2, timeout: float = 60.0,
                 threads: Optional[int] = 1, env: Optional[Mapping[str, str]] = None,
                 method: str = "spawn", start_timeout: float = 120.0, wall_factor: float = 4.0,
                 worker: Optional[Callable] = None, worker_args: tuple = ()):
        if method not in ("spawn", "forkserver"):
            raise ValueError("workers start with 'spawn' or 'forkserver', never 'fork'")
        self.ctx = mp.get_context(method)
        self.target = worker or _worker
        self.args = worker_args if worker else (runner, threads, {**DEFAULT_ENV, **(env or {})})
        self.workers = max(1, workers)
        self.timeout = timeout
        self.wall_factor = wall_factor
        self.start_timeout = start_timeout
        self.restarts = 0
        self.slots: list = []

    def limit(self, case) -> float:
        """Seconds `case` may run: its own timeout (the 'real' CNNs get more), else the pool's."""
        return getattr(case, "timeout", None) or self.timeout

    def _overdue(self, s: "_Slot", now: float) -> bool:
        limit = self.limit(s.case)
        if now - s.t0 > limit * self.wall_factor:
            return True
        cpu = _cpu_seconds(s.proc.pid)
        if cpu is None:
            return now - s.t0 > limit
        return cpu - s.cpu0 > limit

    def start(self) -> "Pool":
        """Start the workers now (they import slimc while the caller loads cases)."""
        if not self.slots:
            self.slots = [_Slot(self.ctx, self.target, self.args) for _ in range(self.workers)]
        return self

    def close(self) -> None:
        for s in self.slots:
            s.stop(kill=s.case is not None)
        self.slots = []

    def __enter__(self) -> "Pool":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, cases: Iterable, on_result: Optional[Callable[[dict], None]] = None) -> dict:
        """{case name: result dict}; `on_result` is called as each case finishes. The workers
        stay up for another run until `close` (or the end of a `with` block)."""
        todo = collections.deque(cases)
        results: dict = {}
        slots = self.start().slots
        failed_starts = 0

        def record(case, res):
            results[case.name] = res
            if on_result is not None:
                on_result(res)

        def replace(k):
            slots[k].stop(kill=True)
            slots[k] = _Slot(self.ctx, self.target, self.args)
            self.restarts += 1

        try:
            while todo or any(s.case is not None for s in slots):
                for s in slots:
                    if s.ready and s.case is None and todo:
                        s.case, s.t0 = todo.popleft(), time.monotonic()
                        s.cpu0 = _cpu_seconds(s.proc.pid) or 0.0
                        s.conn.send(s.case)
                waitables = [s.conn for s in slots] + [s.proc.sentinel for s in slots]
                wait(waitables, timeout=0.5)
                now = time.monotonic()
                for k, s in enumerate(slots):
                    msg, dead = None, False
                    try:
                        if s.conn.poll():
                            msg = s.conn.recv()
                    except (EOFError, OSError):
                        dead = True
                    if msg is None and not dead and not s.proc.is_alive():
                        dead = True
                    if msg == "ready":
                        s.ready, failed_starts = True, 0
                    elif isinstance(msg, dict):
                        record(s.case, msg)
                        s.case = None
                    elif dead:
                        s.proc.join(1)
                        if s.case is not None:
                            record(s.case, dict(name=s.case.name, kind=_kind(s.case),
                                                status="crash",
                                                reason=f"worker died: {_death(s.proc.exitcode)}",
                                                error_type="WorkerCrash",
                                                seconds=round(now - s.t0, 3)))
                            s.case = None
                        else:
                            failed_starts += 1
                            if failed_starts >= 3:
                                raise RuntimeError("conformance workers die before they are ready "
                                                   f"({_death(s.proc.exitcode)}): see stderr")
                        replace(k)
                    elif s.case is not None and self._overdue(s, now):
                        limit = self.limit(s.case)
                        record(s.case, dict(name=s.case.name, kind=_kind(s.case),
                                            status="hang",
                                            reason=f"no result after {limit:g} s of CPU or "
                                                   f"{limit * self.wall_factor:g} s; worker killed",
                                            error_type="Timeout", seconds=round(now - s.t0, 3)))
                        s.case = None
                        replace(k)
                    elif not s.ready and now - s.started > self.start_timeout:
                        raise RuntimeError(f"a conformance worker was not ready after "
                                           f"{self.start_timeout:g} s")
        except BaseException:
            self.close()
            raise
        return results


def run_cases(cases, runner: str = "compiled", workers: int = 2, timeout: float = 60.0,
              progress: bool = False, **pool_options) -> tuple[dict, float]:
    """Run `cases` (a list, or a function returning one: called once the workers are starting,
    so loading cases and starting workers overlap), slowest kinds first for balance.
    Returns ({name: result}, wall seconds from the start of the workers)."""
    order = {"real": 0, "pytorch-converted": 1, "simple": 2, "pytorch-operator": 3, "node": 4}
    done, t0 = [0], time.monotonic()
    with Pool(runner, workers=workers, timeout=timeout, **pool_options) as pool:
        cases = sorted(cases() if callable(cases) else cases,
                       key=lambda c: (order.get(c.kind, 5), c.name))

        def tick(_res):
            done[0] += 1
            if progress and (done[0] % 200 == 0 or done[0] == len(cases)):
                print(f"  ... {done[0]}/{len(cases)} cases, {time.monotonic() - t0:.0f} s",
                      file=sys.stderr, flush=True)

        results = pool.run(cases, on_result=tick)
    return results, time.monotonic() - t0
