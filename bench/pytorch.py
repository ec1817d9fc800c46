"""python -m bench.pytorch [--models resnet18,bert] [--threads 1,2] [--quick]
(also `python -m bench --torch`)

The PyTorch section: one nn.Module per model (the benchmark's own, same weights as its ONNX
export), run as a PyTorch user runs it: eager, `torch.compile(model)` (inductor, its default
CPU mode) and `torch.compile(model, backend="slimc")`, in one process, after warm-up, taking
turns as bench/timing.py describes. It reports median latency, the ratios slimc / inductor and
slimc / eager with their geometric means, and each compiler's first call (the compile) in
seconds. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

os.environ.setdefault("SLIMC_CACHE_DIR", "off")  # compile times are cold compiles

from . import timing  # noqa: E402


def _image(name: str):
    def build():
        from tests import models as tm

        return tm.SPECS[name].build()
    return build


def _models() -> dict:
    """name -> (build() -> tests.models.Built, description)."""
    from . import models as bm

    return {
        "resnet18": (_image("resnet18"), "ResNet-18 (torchvision), 1x3x224x224"),
        "mobilenetv2": (_image("mobilenetv2"), "MobileNetV2 (transformers), 1x3x224x224"),
        "vit": (bm._vit, "ViT-Ti/16 (transformers), 1x3x224x224"),
        "bert": (bm._bert, f"BERT encoder, 4 layers, hidden 256, seq {bm.BERT_SEQ}"),
        "gpt2": (bm._gpt2, f"GPT-2 decoder + LM head, 2 layers, {bm.GPT2_SEQ} tokens"),
    }


def _first_call(fn, args) -> tuple:
    t = time.perf_counter()
    out = fn(*args)
    return out, time.perf_counter() - t


def bench_model(name: str, build, threads: list, settings) -> list:
    import torch

    from tests import models as tm

    with tm._quiet():
        built = build()
    module = built.module.eval()
    args = tuple(built.inputs.values())
    rows = []
    with torch.inference_mode():
        eager = lambda: module(*args)
        for t in threads:
            torch.set_num_threads(t)
            torch._dynamo.reset()
            row = {"model": name, "threads": t}
            try:
                inductor = torch.compile(module)
                _, row["inductor_compile_s"] = _first_call(inductor, args)
            except Exception as e:  # noqa: BLE001 - a row with the error, not a stop
                inductor, row["inductor_error"] = None, f"{type(e).__name__}: {e}"[:200]
            try:
                slim = torch.compile(module, backend="slimc", options={"threads": t})
                _, row["slimc_compile_s"] = _first_call(slim, args)
            except Exception as e:  # noqa: BLE001
                slim, row["slimc_error"] = None, f"{type(e).__name__}: {e}"[:200]
            fns = {"eager": eager,
                   "inductor": None if inductor is None else (lambda: inductor(*args)),
                   "slimc": None if slim is None else (lambda: slim(*args))}
            live = {k: f for k, f in fns.items() if f is not None}
            times = timing.interleave(list(live.values()), settings)
            for k, ts in zip(live, times):
                row[f"{k}_ms"] = 1000 * float(sorted(ts)[len(ts) // 2])
            rows.append(row)
            print(_line(row), flush=True)
    return rows


def _ratio(row, a, b):
    return row[f"{a}_ms"] / row[f"{b}_ms"] if f"{a}_ms" in row and f"{b}_ms" in row else None


def _line(row) -> str:
    def ms(k):
        return f"{row[k]:9.2f}" if k in row else f"{'-':>9}"

    def sec(k):
        return f"{row[k]:7.1f}" if k in row else f"{'-':>7}"

    r_ind, r_eag = _ratio(row, "slimc", "inductor"), _ratio(row, "slimc", "eager")
    fmt = lambda r: f"{r:6.2f}" if r is not None else f"{'-':>6}"
    text = (f"{row['model']:12s} {row['threads']:2d}  {ms('eager_ms')} {ms('inductor_ms')} "
            f"{ms('slimc_ms')}  {fmt(r_ind)} {fmt(r_eag)}  {sec('inductor_compile_s')} "
            f"{sec('slimc_compile_s')}")
    errors = [f"{k}: {row[k]}" for k in ("inductor_error", "slimc_error") if k in row]
    return text + ("".join("\n    " + e for e in errors))


HEADER = (f"{'model':12s} {'t':>2s}  {'eager ms':>9s} {'induct ms':>9s} {'slimc ms':>9s}  "
          f"{'/ind':>6s} {'/eag':>6s}  {'ind s':>7s} {'slimc s':>7s}")


def geomeans(rows) -> dict:
    out = {}
    for peer in ("inductor", "eager"):
        rs = [r for r in (_ratio(row, "slimc", peer) for row in rows) if r]
        if rs:
            out[peer] = math.exp(sum(math.log(r) for r in rs) / len(rs))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.pytorch",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated (default: all): " +
                    ", ".join(_models()))
    ap.add_argument("--threads", default="1,2", help="thread counts (1,2)")
    ap.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    args = ap.parse_args(argv)
    available = _models()
    names = [n.strip() for n in (args.models or ",".join(available)).split(",") if n.strip()]
    unknown = [n for n in names if n not in available]
    if unknown:
        ap.error(f"unknown model(s) {unknown}; choose from {', '.join(available)}")
    threads = [int(t) for t in args.threads.split(",")]
    settings = timing.QUICK if args.quick else timing.Settings()
    print("median latency; /ind and /eag: slimc's time over inductor's and eager's; "
          "ind s, slimc s: first call (compile) seconds")
    print(HEADER)
    rows = []
    for name in names:
        rows += bench_model(name, available[name][0], threads, settings)
    means = geomeans(rows)
    print("geometric mean of slimc's time over " +
          ", ".join(f"{k}'s: {v:.2f}" for k, v in means.items()))
    print(f"load average {os.getloadavg()[0]:.1f} (noisy when other work shares the cores)")
    return 0


if __name__ == "__main__":
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    raise SystemExit(main())
