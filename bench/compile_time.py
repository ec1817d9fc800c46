"""python -m bench.compile_time [--models resnet18,bert,...]

How long a user waits for `slimc.compile`: per model, in a process of its own with an empty
compile cache, the cold compile (from the call to its return; imports excluded), a second
compile of the same file (from the cache, once the background store of the entry -- "store"
-- is done), and onnxruntime opening a session on the file,
with `mod.compile_times`' split of the cold compile. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time

MODELS = ("demo", "resnet18", "mobilenetv2", "efficientnet_b0", "vit", "bert", "minilm",
          "gpt2")


def _path(name: str, folder: str) -> tuple:
    """(model file, compile keyword arguments)."""
    if name == "demo":
        from slimc.demo import build_demo_model

        path = os.path.join(folder, "demo.onnx")
        with open(path, "wb") as f:
            f.write(build_demo_model().SerializeToString())
        return path, {"input_shapes": {"image": (2, 3, 32, 32)}}
    from . import models

    if name == "minilm":  # exported by bench.quant_accuracy (it downloads the weights once)
        found = sorted(glob.glob(os.path.join(models.cache_dir(), "minilm", "*.onnx")))
        if not found:
            raise SystemExit("no all-MiniLM-L6-v2 export yet: run `python -m "
                             "bench.quant_accuracy --parts minilm` once")
        return found[-1], {}

    path, _ = models.select(name)[0].make(1, models.cache_dir())
    return path, {}


def measure(name: str) -> dict:
    """One model, in this process (a fresh one: see main)."""
    folder = tempfile.mkdtemp(prefix="slimc-compile-time-")
    os.environ["SLIMC_CACHE_DIR"] = folder
    import onnxruntime as ort

    import slimc
    import slimc.frontends.onnx  # imports are excluded from the times (the terms)

    slimc.Target.of("x86").backend  # imports the CPU code generator
    path, kw = _path(name, folder)
    t = time.perf_counter()
    mod = slimc.compile(path, **kw)
    cold = time.perf_counter() - t
    split = {k: round(v, 3) for k, v in mod.compile_times.items()}
    from slimc.runtime import cache

    t = time.perf_counter()
    cache.wait()  # the entry, written in the background after `compile` returned
    store = time.perf_counter() - t
    t = time.perf_counter()
    slimc.compile(path, **kw)
    cached = time.perf_counter() - t
    t = time.perf_counter()
    ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    ort_open = time.perf_counter() - t
    size = sum(os.path.getsize(f) for f in glob.glob(path + "*"))
    return dict(model=name, cold_s=round(cold, 3), store_s=round(store, 3),
                cached_s=round(cached, 4),
                ort_open_s=round(ort_open, 4), file_mb=round(size / 1e6, 1), split=split)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.compile_time",
                                 description=__doc__.splitlines()[2])
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--one", help=argparse.SUPPRESS)  # the child process's model
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one)))
        return 0
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    print(f"{'model':16s} {'cold s':>7s} {'store s':>8s} {'cached s':>9s} {'ORT open s':>10s} "
          f"{'MB':>6s}  cold compile by stage (s)")
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        done = subprocess.run([sys.executable, "-m", "bench.compile_time", "--one", name],
                              cwd=root, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"{name:16s} failed: {done.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(done.stdout.strip().splitlines()[-1])
        stages = ", ".join(f"{k} {v:.2f}" for k, v in r["split"].items() if v >= 0.01)
        print(f"{name:16s} {r['cold_s']:7.2f} {r['store_s']:8.2f} {r['cached_s']:9.3f} "
              f"{r['ort_open_s']:10.3f} "
              f"{r['file_mb']:6.1f}  {stages}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
