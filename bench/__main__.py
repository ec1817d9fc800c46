"""python -m bench [MODEL.onnx ...] [--models a,b] [--threads 1,2] [--batch 1,8] [--quick] [--torch]

Times slimc against onnxruntime (and OpenVINO when installed) on the benchmark's own models,
or on the ONNX files given. See bench/__init__.py.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import subprocess
import sys

# Compile times are cold compiles: keep slimc's on-disk compile cache out of the way.
os.environ["SLIMC_CACHE_DIR"] = "off"

from . import models, peakmem, report, runtimes, timing  # noqa: E402
from .progress import Progress  # noqa: E402


def _ints(text: str) -> list:
    return [int(x) for x in text.split(",") if x.strip()]


def _dim(text: str) -> tuple:
    name, _, size = text.partition("=")
    if not name or not size.isdigit():
        raise argparse.ArgumentTypeError(f"expected NAME=N, got {text!r}")
    return name, int(size)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[2])
    ap.add_argument("files", nargs="*", help="ONNX models of your own (default: the suite)")
    ap.add_argument("--models", help="comma-separated names or groups (model, mlp, micro, "
                                     "special); default all")
    ap.add_argument("--threads", type=_ints, default=[1, 2], help="thread counts (1,2)")
    ap.add_argument("--batch", type=_ints, default=[1, 8], help="batch sizes (1,8)")
    ap.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    ap.add_argument("--dim", action="append", default=[], metavar="NAME=N", type=_dim,
                    help="size of a symbolic input dimension of your own model")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"),
                    help="folder for the JSON and PNG files (default bench/results/)")
    ap.add_argument("--list", action="store_true", help="list the models and exit")
    ap.add_argument("--torch", action="store_true",
                    help="the PyTorch section instead: eager, torch.compile with inductor and "
                         "with backend='slimc' (bench/pytorch.py)")
    return ap.parse_args(argv)


def _meta(args, peers) -> dict:
    import numpy as np
    import onnxruntime

    import slimc

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    git = lambda *a: subprocess.run(["git", *a], cwd=root, capture_output=True,
                                     text=True).stdout.strip()
    versions = {"slimc": slimc.__version__, "onnxruntime": onnxruntime.__version__,
                "numpy": np.__version__, "python": platform.python_version()}
    if "openvino" in peers:
        import openvino

        versions["openvino"] = openvino.__version__
    return {"started": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "load_average_start": os.getloadavg(),
            "argv": sys.argv[1:], "threads": args.threads, "batches": args.batch,
            "quick": args.quick, "peers": peers, "versions": versions,
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.torch:
        from . import pytorch

        return pytorch.main((["--models", args.models] if args.models else []) +
                            ["--threads", ",".join(map(str, args.threads))] +
                            (["--quick"] if args.quick else []))
    if args.files:
        benches = [models.user_bench(f, dict(args.dim)) for f in args.files]
    else:
        benches = models.select(args.models)
    if args.list:
        for b in benches:
            print(f"{b.name:18s} {b.group:8s} {b.description}")
        return 0
    peers = runtimes.peers()
    settings = timing.QUICK if args.quick else timing.Settings()
    cache = models.cache_dir()
    meta = _meta(args, peers)
    plan = [(b, batch) for b in benches for batch in (b.batches or args.batch)]
    memory_threads = max(args.threads)
    progress = Progress(len(plan) * (len(args.threads) + (0 if args.no_memory else 1)))
    rows = []
    try:
        for bench, batch in plan:
            label = f"{bench.name} b{batch}"
            progress.show(label, "building")
            base = {"model": bench.name, "group": bench.group, "batch": batch,
                    "description": bench.description}
            try:
                path, feeds = bench.make(batch, cache)
            except Exception as e:
                rows += [{**base, "threads": t, "errors": {"build": timing._error(e)}}
                         for t in args.threads]
                progress.done += len(args.threads) + (0 if args.no_memory else 1)
                continue
            for t in args.threads:
                progress.show(f"{label} t{t}")
                row, mod = timing.run(path, feeds, t, peers, settings,
                                      on_stage=lambda s: progress.show(stage=s))
                rows.append({**base, **row})
                progress.advance()
                if t == memory_threads and not args.no_memory:
                    progress.show(stage="peak memory")
                    ok = "slimc" not in row["errors"]
                    rows[-1]["memory"] = peakmem.measure_all(path, feeds, mod if ok else None,
                                                             t, peers)
                    progress.advance()
                del mod
                gc.collect()
    except KeyboardInterrupt:
        meta["interrupted"] = True
        print("\ninterrupted: reporting what was measured", file=sys.stderr)
    progress.close()
    meta["load_average_end"] = os.getloadavg()
    means = report.geomeans(rows, peers)
    print(report.table(rows, peers))
    print()
    print(report.summary(means))
    if not args.no_memory:
        print(f"mem: peak resident memory above the imported runtime, loading and running the "
              f"model in a process of its own, at {memory_threads} thread(s)")
    errs = report.errors(rows)
    if errs:
        print("\nerrors:\n" + errs)
    os.makedirs(args.out, exist_ok=True)
    stamp = meta["started"].replace(":", "").replace("-", "")
    json_path = os.path.join(args.out, f"bench-{stamp}.json")
    png_path = os.path.join(args.out, f"bench-{stamp}.png")
    report.write_json(json_path, meta, rows, means)
    try:
        report.chart(png_path, rows, peers, meta)
    except Exception as e:
        png_path = f"(no chart: {type(e).__name__}: {e})"
    la = meta["load_average_start"], meta["load_average_end"]
    print(f"\n{meta['cpu']}, {meta['cores']} cores; load average {la[0][0]:.1f} at start, "
          f"{la[1][0]:.1f} at end (numbers are noisy when other work shares the cores)")
    print(f"wrote {json_path}\n      {png_path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
