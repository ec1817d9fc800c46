"""python -m bench.passes [--models resnet18,mobilenetv2,...] [--threads 1] [--batch 1]

What each graph optimization buys, model by model: the graph before and after simplification,
the kernels after fusion, the convolutions that took Winograd (and which tile), and the latency
with each pass turned off by name (``compile(disable_passes=[...])``), every variant timed in
turns with onnxruntime in the same process, as ``python -m bench`` times the full pipeline.

A pass that changes nothing in a model (the same optimized graph and kernels without it) is
listed as such and not timed. Turning a pass off also turns off what it enables downstream
(without ``simplify`` the layout pass sees views it cannot look through), so the gain of a pass
is "what -O2 loses without it", not an additive share. Uses slimc's compile cache, so a second
run is quick; nothing here is a test.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import sys

from . import models, runtimes, timing

# The passes to turn off one at a time; "fusion" is the code generator's grouping of ops
# into kernels, the others are graph passes (slimc.passes.PASSES).
ABLATIONS = ["fusion", "simplify", "recognize", "fold_batch_norm", "winograd", "layout"]
DEFAULT_MODELS = "resnet18,mobilenetv2,efficientnet_b0,bert"


def graph_figures(path: str, feeds: dict, mod) -> dict:
    """Node counts at each stage, kernels after fusion, and Winograd layers by tile."""
    import onnx

    from slimc.frontends.onnx import from_onnx
    from slimc.ir import FusionKind, get_op
    from slimc.passes import PassManager, standard_pipeline

    model = onnx.load(path, load_external_data=False)
    shapes = {k: list(v.shape) for k, v in feeds.items()}
    graph = from_onnx(path, input_shapes=shapes)
    imported = len(graph.nodes)
    PassManager(standard_pipeline(1)).run(graph)  # the simplification passes (-O1's)
    optimized = mod.graph
    tiles = collections.Counter(f"F({n.attrs['tile']}x{n.attrs['tile']},3x3)"
                                for n in optimized.nodes if "winograd" in n.op)
    cheap = (FusionKind.ELEMENTWISE, FusionKind.BROADCAST)
    alone = [k.name for k in mod.kernels
             if all(get_op(op).fusion in cheap for op in k.ops)]
    return {"onnx_nodes": len(model.graph.node), "imported_nodes": imported,
            "simplified_nodes": len(graph.nodes), "optimized_nodes": len(optimized.nodes),
            "kernels": len(mod.kernels), "elementwise_kernels": alone,
            "convolutions": sum(n.op_type == "Conv" for n in model.graph.node),
            "winograd": dict(tiles)}


def _signature(mod) -> tuple:
    return str(mod.graph), tuple((k.name, tuple(k.ops)) for k in mod.kernels)


def ablate(bench, batch: int, threads: int, settings, out=print) -> dict:
    import slimc

    path, feeds = bench.make(batch, models.cache_dir())
    run_ort, _ = runtimes.open_peer("onnxruntime", path, threads)
    ort = lambda: run_ort(feeds)  # noqa: E731
    full = slimc.compile(path, threads=threads)
    expected = ort()
    row = {"model": bench.name, "batch": batch, "threads": threads,
           **graph_figures(path, feeds, full), "latency": {}}
    full_sig = _signature(full) if full(**feeds) is not None else None
    out(f"{bench.name}: {row['onnx_nodes']} ONNX nodes -> {row['imported_nodes']} imported -> "
        f"{row['simplified_nodes']} after "
        f"simplification -> {row['optimized_nodes']} after -O2 -> {row['kernels']} kernels "
        f"({len(row['elementwise_kernels'])} elementwise alone); {row['convolutions']} convs, "
        f"Winograd: {row['winograd'] or 'none'}")
    variants = [("-O2", full)]
    for name in ABLATIONS:
        mod = slimc.compile(path, threads=threads, disable_passes=[name])
        mod(**feeds)
        if _signature(mod) == full_sig:
            row["latency"][f"no {name}"] = "unchanged"
            out(f"  without {name:16s} the same graph and kernels: not timed")
            continue
        variants.append((f"no {name}", mod))
    for label, mod in variants:
        run = (lambda m: lambda: m(**feeds))(mod)
        diff = timing.difference(run(), expected)
        mine, peer = timing.interleave([run, ort], settings)
        ms, ort_ms = timing.stats(mine)["median_ms"], timing.stats(peer)["median_ms"]
        row["latency"][label] = {"slimc_ms": ms, "onnxruntime_ms": ort_ms,
                                 "ratio": ms / ort_ms, "kernels": len(mod.kernels),
                                 "max_rel_diff": diff}
        # the cost of turning the pass off, as a ratio of ratios: the shared machine's drift
        # between variants (onnxruntime's own time moves too) cancels out
        cost = (ms / ort_ms) / row["latency"]["-O2"]["ratio"]
        row["latency"][label]["cost_without"] = cost
        out(f"  {label:24s} {ms:8.2f} ms  onnxruntime {ort_ms:8.2f} ms  ratio {ms / ort_ms:5.2f}"
            f"  {cost:5.2f}x -O2's ratio  {len(mod.kernels):4d} kernels  "
            f"max rel diff {diff:.1e}")
        gc.collect()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.passes", description=__doc__.splitlines()[2])
    ap.add_argument("--models", default=DEFAULT_MODELS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)
    settings = timing.QUICK if args.quick else timing.Settings()
    rows = [ablate(b, args.batch, args.threads, settings) for b in models.select(args.models)]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"\n{args.threads} thread(s), batch {args.batch}, load average "
          f"{os.getloadavg()[0]:.1f} at the end", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
