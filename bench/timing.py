"""Timing one model at one batch size and thread count: slimc against a peer, in one process.

Both are warmed up, then they take turns, the order of the first turn alternating from round
to round. A turn starts with `settle_s` of sleep, then one untimed call (it brings the
runtime's weights back into the caches and wakes its threads), then timed calls for about
`turn_s` (at least one). Every call is timed with time.perf_counter. Rounds go on until each
runtime has `min_runs` timed calls and `budget_s` seconds have passed (or `max_runs` calls).
The result is the median per runtime. slimc is paired with each peer in turn (so a second
peer's threads never share the loop). Nothing is asserted: a runtime that fails to open or to
run leaves an error in the row.

Why the sleep: both thread pools spin after a parallel call, waiting for more work, and on a
two-core machine a spinning pool halves the other runtime's speed. Measured here (AMD EPYC,
2 cores, MatMul 128x768x3072 at 2 threads, 3.4-3.7 ms for each runtime alone): after an
onnxruntime call its pool kept slimc's calls at 8 ms for 80-100 ms; after a slimc call
libgomp's spin kept onnxruntime at 8 ms for 8-16 ms. Back-to-back turns therefore time each
runtime against the other's spinning threads, which a user running one of them never sees.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import runtimes


@dataclass
class Settings:
    warmup: int = 3
    min_runs: int = 20
    max_runs: int = 2000
    budget_s: float = 3.0
    turn_s: float = 0.05
    settle_s: float = 0.15  # longer than the other runtime's pool spins after its last call


QUICK = Settings(warmup=1, min_runs=3, max_runs=20, budget_s=0.2, settle_s=0.02)


def interleave(fns: list, s: Settings) -> list:
    """Seconds per timed call of each function, over alternating turns after warm-up."""
    turns = []
    for f in fns:
        for _ in range(s.warmup):
            f()
        t = time.perf_counter()
        f()
        turns.append(max(1, min(int(s.turn_s / (time.perf_counter() - t)), s.max_runs)))
    times = [[] for _ in fns]
    start, rounds = time.perf_counter(), 0
    while (max(len(t) for t in times) < s.max_runs and
           (min(len(t) for t in times) < s.min_runs or time.perf_counter() - start < s.budget_s)):
        for k in range(len(fns)):
            i = (rounds + k) % len(fns)
            if len(fns) > 1 or rounds == 0:
                time.sleep(s.settle_s)  # the other runtime's threads stop spinning
            fns[i]()  # untimed: the runtime's own data back in cache, its threads awake
            for _ in range(turns[i]):
                t = time.perf_counter()
                fns[i]()
                times[i].append(time.perf_counter() - t)
        rounds += 1
    return times


def stats(seconds: list) -> dict:
    ms = 1e3 * np.asarray(seconds)
    q1, med, q3 = np.percentile(ms, [25, 50, 75])
    return {"median_ms": float(med), "q1_ms": float(q1), "q3_ms": float(q3),
            "min_ms": float(ms.min()), "runs": len(ms)}


def difference(a: list, b: list) -> float:
    """Largest |a - b| over all outputs, relative to max |b| (absolute below 1e-3)."""
    if len(a) != len(b):
        return float("inf")
    err = 0.0
    for x, y in zip(a, b):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            return float("inf")
        if y.size:
            err = max(err, float(np.max(np.abs(x - y))) / max(float(np.max(np.abs(y))), 1e-3))
    return err


def _error(e: BaseException, limit: int = 600) -> str:
    """One line: the exception's type and message (lines joined with ' / '), shortened."""
    text = " / ".join(ln.strip() for ln in str(e).splitlines() if ln.strip())
    text = f"{type(e).__name__}: {text}" if text else type(e).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Failed(Exception):
    def __init__(self, who: str, error: BaseException):
        super().__init__(_error(error))
        self.who = who


def _tagged(who: str, fn, feeds):
    """fn(feeds) as a no-argument call whose errors say which runtime failed."""
    def call():
        try:
            return fn(feeds)
        except Exception as e:
            raise Failed(who, e) from e
    return call


def run(path: str, feeds: dict, threads: int, peers: list, s: Settings, on_stage=None):
    """Time slimc against each of `peers` on one model. Returns (row dict, slimc module)."""
    row = {"threads": threads, "errors": {}, "time": {}, "open_s": {}}
    stage = on_stage or (lambda text: None)
    stage("compiling")
    slimc = mod = None
    try:
        fn, mod, row["compile_s"] = runtimes.compile_slimc(path, feeds, threads)
        row["codegen_s"] = mod._current().compile_seconds
        row["kernels"] = len(mod.kernels)
        slimc = _tagged("slimc", fn, feeds)
    except Exception as e:
        row["errors"]["slimc"] = _error(e)
    for peer in peers:
        stage(f"opening {peer}")
        try:
            fn, row["open_s"][peer] = runtimes.open_peer(peer, path, threads)
            other = _tagged(peer, fn, feeds)
            out = other()
            if slimc is not None and peer == "onnxruntime":
                row["max_rel_diff"] = difference(slimc(), out)
            stage(f"timing against {peer}" if slimc else f"timing {peer}")
            times = interleave([other] if slimc is None else [slimc, other], s)
        except Exception as e:
            who = e.who if isinstance(e, Failed) else peer
            row["errors"][who] = str(e) if isinstance(e, Failed) else _error(e)
            if who == "slimc":
                slimc = None
            continue
        finally:
            fn = other = None  # close the peer before the next one opens
        row["time"][peer] = stats(times[-1])
        if slimc is not None:
            mine = stats(times[0])
            row["time"].setdefault("slimc", mine)  # from the first pairing (onnxruntime)
            row.setdefault("slimc_paired", {})[peer] = mine
            row.setdefault("ratio", {})[peer] = mine["median_ms"] / row["time"][peer]["median_ms"]
    if slimc is not None and "slimc" not in row["time"]:  # no peer ran: slimc alone
        try:
            row["time"]["slimc"] = stats(interleave([slimc], s)[0])
        except Failed as e:
            row["errors"]["slimc"] = str(e)
    return row, mod
