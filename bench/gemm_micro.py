"""Single-thread fp32 GEMM: slimc's generated kernel vs numpy (OpenBLAS sgemm).

    python bench/gemm_micro.py [--core N] [--clock wall|thread] [--reps R] [--rt] [--opt L]

Pins the process to one core (default: the last one) and limits OpenBLAS to one thread. For
every shape it interleaves R rounds of (slimc, numpy), each round long enough to time well,
and prints the median GFLOP/s of each and the ratio slimc / numpy. B is pre-packed (weights
known at compile time); --rt also times the runtime-B entry (packing B on every call).
--clock thread measures the thread's CPU time instead of wall time: steadier when other
processes share the core.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402  (after the thread limits)

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from slimc.codegen.cpu.gemm_jit import compile_gemm  # noqa: E402
from slimc.ir.buffers import aligned_zeros  # noqa: E402
from slimc.codegen.cpu.target import CpuTarget  # noqa: E402

# (label, M, K, N)
SHAPES = [
    ("1024^3", 1024, 1024, 1024),
    ("1000^3", 1000, 1000, 1000),
    ("384x768x3072", 384, 768, 3072),
    ("M=1 K=N=768", 1, 768, 768),
    ("M=16 K=N=768", 16, 768, 768),
    ("M=128 K=N=768", 128, 768, 768),
]


def time_rounds(fns, reps: int, target_s: float, clock):
    """Interleave `reps` rounds over fns; each round runs fn n times (n picked so one round
    takes ~target_s). Returns per-fn lists of seconds per call."""
    ns = []
    for f in fns:
        f()
        t = clock()
        f()
        dt = max(clock() - t, 1e-7)
        ns.append(max(1, int(target_s / dt)))
    out = [[] for _ in fns]
    for _ in range(reps):
        for i, f in enumerate(fns):
            n = ns[i]
            t = clock()
            for _ in range(n):
                f()
            out[i].append((clock() - t) / n)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--core", type=int, default=None, help="CPU to pin to (default: last)")
    ap.add_argument("--clock", choices=["wall", "thread"], default="wall")
    ap.add_argument("--reps", type=int, default=21, help="interleaved rounds (median over them)")
    ap.add_argument("--round-ms", type=float, default=40.0, help="target length of one round")
    ap.add_argument("--opt", type=int, default=0, help="LLVM pipeline level for the kernels")
    ap.add_argument("--rt", action="store_true", help="also time runtime-B (pack per call)")
    args = ap.parse_args(argv)

    if hasattr(os, "sched_setaffinity"):
        cpus = sorted(os.sched_getaffinity(0))
        core = cpus[-1] if args.core is None else args.core
        os.sched_setaffinity(0, {core})
    else:
        core = None
    clock = time.perf_counter if args.clock == "wall" else time.thread_time
    target = CpuTarget.host()
    print(f"host: {target.cpu} ({target.triple}), vector width {target.vector_width}, "
          f"core {core}, clock {args.clock}, numpy {np.__version__}, "
          f"{args.reps} interleaved rounds, medians")
    hdr = f"{'shape (MxKxN)':<16}{'slimc GF/s':>11}{'numpy GF/s':>11}{'ratio':>7}"
    if args.rt:
        hdr += f"{'rt GF/s':>9}{'rt ratio':>9}"
    hdr += f"{'compile s':>10}"
    print(hdr)
    rng = np.random.default_rng(0)
    for label, M, K, N in SHAPES:
        t0 = time.perf_counter()
        g = compile_gemm(N, K, target, opt_level=args.opt, runtime_b=args.rt)
        ct = time.perf_counter() - t0
        A = rng.standard_normal((M, K), dtype=np.float32)
        B = rng.standard_normal((K, N), dtype=np.float32)
        C = np.empty((M, N), np.float32)
        Cn = np.empty((M, N), np.float32)
        Bp = g.kernel.pack(B)
        g(A, Bp, C)
        np.matmul(A, B, out=Cn)
        err = np.abs(C - Cn).max() / max(1e-30, np.abs(Cn).max())
        assert err < 1e-4, f"{label}: wrong result (rel err {err})"
        # raw ctypes calls with integer addresses: no per-call Python conversions
        gemm = g._gemm
        gargs = (A.ctypes.data, K, Bp.ctypes.data, C.ctypes.data, N, 0, M)
        fns = [lambda: gemm(*gargs), lambda: np.matmul(A, B, out=Cn)]
        if args.rt:
            ws = aligned_zeros(g.kernel.packed_size, np.float32)
            rt = g._rt
            rargs = (A.ctypes.data, K, B.ctypes.data, N, C.ctypes.data, N, 0, M, ws.ctypes.data)
            fns.append(lambda: rt(*rargs))
        times = time_rounds(fns, args.reps, args.round_ms / 1000, clock)
        flop = 2.0 * M * N * K
        gf = [flop / np.median(t) / 1e9 for t in times]
        line = f"{label:<16}{gf[0]:>11.1f}{gf[1]:>11.1f}{gf[0] / gf[1]:>7.2f}"
        if args.rt:
            line += f"{gf[2]:>9.1f}{gf[2] / gf[1]:>9.2f}"
        print(line + f"{ct:>10.2f}", flush=True)


if __name__ == "__main__":
    main()
