"""python -m bench.quant [--models resnet18,mobilenetv2,bert,gpt2] [--threads 1,2] [--quick]

slimc int8 against onnxruntime int8 on the benchmark's own networks (bench/models.py, the
same ONNX files `python -m bench` times, trained-scale random weights), each quantized by its
own tool from the same float32 model and the same calibration inputs:

- CNNs (ResNet-18, MobileNetV2): slimc `quantize(mode="static", method="percentile")`;
  onnxruntime `quantize_static` (QDQ, per channel, activations QUInt8, weights QInt8, MinMax).
- transformers (BERT-style encoder, GPT-2-style decoder): slimc `quantize(mode="dynamic")`;
  onnxruntime `quantize_dynamic(weight_type=QInt8)`.

onnxruntime's quantizer runs after its own pre-processing step (`quant_pre_process`: shape
inference and graph optimization, as its documentation and its warning ask), so that it sees
the weights as initializers the way slimc.quantize sees them after constant folding: without
it, GPT-2's tied LM head (a Transpose of the embedding) stays float32 and onnxruntime int8 is
about 3x slower on that model. `--no-preprocess` quantizes the exported file as it is.

Calibration data are `--calibration` (8) random inputs drawn like the bench's inputs (standard
normal images; uniform token ids over the vocabulary, the bench's mask and segments); the
accuracy is measured on `--held-out` (4) other such inputs, against onnxruntime's float32
output: the cosine of each int8 output (slimc's and onnxruntime's) to it, and for
[batch, tokens, features] outputs the mean cosine per token too.

Timing is bench/timing.py's: per thread count, slimc int8, onnxruntime int8, slimc float32
and onnxruntime float32 (`--no-float`: the int8 pair only) called in alternating turns in one
process after warm-up, medians reported. slimc's compile of the quantized graph is a cold
compile (SLIMC_CACHE_DIR=off, as `python -m bench` does) and includes the first call. A model
slimc cannot quantize or compile is an "n/a" row with the reason; a slimc int8 call slower
than SLOW_S (an exact-loop fallback) is timed a few times only, with a note. The geometric
mean of slimc-int8 / onnxruntime-int8 is taken per thread count over the models that have a
ratio. `--profile` adds slimc int8's kernel times (`mod.profile`) summed by kernel kind.

slimc also compiles onnxruntime's int8 file itself (a model quantized elsewhere) and the
accuracy table gives the cosine of its output to onnxruntime's on that file.

Nothing is written into the repository (onnxruntime's quantized files go to a temporary
folder; `--json PATH` writes the rows where you ask). Nothing here asserts anything.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import sys
import tempfile
import time

# Compile times are cold compiles: keep slimc's on-disk compile cache out of the way.
os.environ["SLIMC_CACHE_DIR"] = "off"

import numpy as np  # noqa: E402

from . import models, report, runtimes, timing  # noqa: E402
from .progress import Progress  # noqa: E402

# model -> slimc mode (onnxruntime: quantize_static for "static", quantize_dynamic for "dynamic")
MODES = {"resnet18": "static", "mobilenetv2": "static", "bert": "dynamic", "gpt2": "dynamic"}
PEER = "onnxruntime int8"  # the peer name in the rows handed to report.geomeans / summary
SLOW_S = 1.0  # a slimc int8 call this slow (and 20x onnxruntime's) is timed a few times only
SLOW = timing.Settings(warmup=0, min_runs=3, max_runs=3, budget_s=0.0, settle_s=0.02)


def _ints(text: str) -> list:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.quant",
                                 description="slimc int8 against onnxruntime int8 (see "
                                             "bench/quant.py)")
    ap.add_argument("--models", default=",".join(MODES),
                    help=f"comma-separated subset of {','.join(MODES)} (default all)")
    ap.add_argument("--threads", type=_ints, default=[1, 2], help="thread counts (1,2)")
    ap.add_argument("--batch", type=int, default=1, help="batch size (1)")
    ap.add_argument("--quick", action="store_true", help="few iterations: a smoke run")
    ap.add_argument("--calibration", type=int, default=8, help="calibration inputs (8)")
    ap.add_argument("--held-out", type=int, default=4, help="held-out inputs for accuracy (4)")
    ap.add_argument("--no-preprocess", action="store_true",
                    help="quantize for onnxruntime without its quant_pre_process step")
    ap.add_argument("--no-float", action="store_true",
                    help="time the int8 pair only (no float32 runtimes)")
    ap.add_argument("--profile", action="store_true",
                    help="also print slimc int8's kernel time by kind (mod.profile)")
    ap.add_argument("--json", metavar="PATH", help="also write the rows as JSON to PATH")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    unknown = [n for n in names if n not in MODES]
    if unknown:
        ap.error(f"unknown model(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    args.models = names
    return args


# ----- inputs -------------------------------------------------------------------------------

def _vocab(path: str, feeds: dict) -> int:
    """The embedding table's rows: the Gather of `input_ids` from an initializer."""
    import onnx

    model = onnx.load(path, load_external_data=False)
    inits = {t.name: list(t.dims) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Gather" and len(node.input) > 1 and node.input[1] == "input_ids" \
                and node.input[0] in inits:
            return int(inits[node.input[0]][0])
    return int(feeds["input_ids"].max()) + 1


def _samples(name: str, feeds: dict, vocab, count: int, what: str) -> list:
    """`count` inputs like `feeds`: floats standard normal, input_ids uniform over the
    vocabulary, the other integer inputs (mask, segments) as the bench has them."""
    rng = models._rng(f"{name}/{what}")
    out = []
    for _ in range(count):
        sample = {}
        for k, v in feeds.items():
            if np.issubdtype(v.dtype, np.floating):
                sample[k] = rng.standard_normal(v.shape).astype(v.dtype)
            elif k == "input_ids":
                sample[k] = rng.integers(0, vocab, v.shape).astype(v.dtype)
            else:
                sample[k] = v.copy()
        out.append(sample)
    return out


# ----- the two quantizers -------------------------------------------------------------------

def preprocess_onnxruntime(path: str, dst: str) -> str:
    """onnxruntime.quantization's pre-processing (shape inference and its graph optimizer:
    constants folded, so a weight behind a Transpose, such as GPT-2's tied LM head, is an
    initializer its quantizer takes). Returns a note when symbolic shape inference had to be
    skipped."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(path, dst)
        return ""
    except Exception as e:
        quant_pre_process(path, dst, skip_symbolic_shape=True)
        return f"ORT pre-processing without symbolic shapes ({timing._error(e, 80)})"


def ort_static(path: str, dst: str, calibration: list, method: str = "MinMax") -> str:
    """onnxruntime's `quantize_static`: QDQ, per channel, u8 activations, s8 weights,
    calibrated on `calibration` (feed dicts) by `method` (a CalibrationMethod name)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod,
                                          QuantFormat, QuantType, quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.data = iter(calibration)

        def get_next(self):
            return next(self.data, None)

    quantize_static(path, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))
    return dst


def quantize_onnxruntime(path: str, mode: str, calibration: list, out_dir: str) -> str:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    stem = os.path.splitext(os.path.basename(path))[0]
    dst = os.path.join(out_dir, f"{stem}.ort-{mode}.onnx")
    if mode == "dynamic":
        quantize_dynamic(path, dst, weight_type=QuantType.QInt8)
        return dst
    return ort_static(path, dst, calibration)


def quantize_slimc(path: str, mode: str, calibration: list):
    import slimc

    if mode == "dynamic":
        return slimc.quantize(path, mode="dynamic")
    return slimc.quantize(path, calibration, mode="static", method="percentile")


# ----- accuracy -----------------------------------------------------------------------------

def _cos(a, b, axis=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = np.sum(a * b, axis=axis)
    den = np.sqrt(np.sum(a * a, axis=axis) * np.sum(b * b, axis=axis))
    return np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)


def accuracy(ref, runs: dict, held: list, names: list) -> list:
    """Per output: the mean over the held-out inputs of each runtime's cosine to `ref`
    (and for 3-D outputs the mean per-token cosine, over the last axis)."""
    refs = [ref(f) for f in held]
    out = []
    for j, name in enumerate(names):
        entry = {"output": name, "shape": list(np.shape(refs[0][j])), "cos": {}, "token_cos": {}}
        for who, fn in runs.items():
            try:
                got = [fn(f)[j] for f in held]
            except Exception as e:
                entry.setdefault("errors", {})[who] = timing._error(e)
                continue
            entry["cos"][who] = float(np.mean([_cos(g, r) for g, r in
                                               zip(got, (x[j] for x in refs))]))
            if np.ndim(refs[0][j]) == 3:
                entry["token_cos"][who] = float(np.mean([_cos(g, x[j], axis=-1)
                                                         for g, x in zip(got, refs)]))
        out.append(entry)
    return out


def prequantized(ort_path: str, ort_int8, held: list, names: list, acc: dict) -> None:
    """slimc compiling onnxruntime's int8 file itself (its QDQ or dynamic ops folded into
    slimc's integer kernels): per output, the mean cosine to onnxruntime's result on that
    file, into acc's outputs as "slimc on ORT file"."""
    import slimc

    try:
        mod = slimc.compile(ort_path)
        runs = {"slimc on ORT file": lambda f: mod(**f)}
        for entry, got in zip(acc["outputs"], accuracy(ort_int8, runs, held, names)):
            entry["cos"].update(got["cos"])
            entry.setdefault("errors", {}).update(got.get("errors", {}))
    except Exception as e:
        acc["errors"]["slimc on ORT file"] = timing._error(e)


# ----- timing -------------------------------------------------------------------------------

def _slow(fns: dict) -> bool:
    """One call of slimc int8 takes over SLOW_S and 20x onnxruntime int8's (an exact-loop
    fallback): time a few calls rather than seconds of them."""
    if "slimc int8" not in fns:
        return False
    took = {}
    for who in ("slimc int8", "onnxruntime int8"):
        if who in fns:
            t = time.perf_counter()
            fns[who]()
            took[who] = time.perf_counter() - t
    return took["slimc int8"] > max(SLOW_S, 20 * took.get("onnxruntime int8", 0.0))


def time_all(fns: dict, settings: timing.Settings, row: dict) -> None:
    """Interleave the runtimes (bench/timing.py); one that fails is dropped with its error."""
    fns = dict(fns)
    while fns:
        try:
            s = settings
            if _slow(fns):
                s = SLOW
                row["notes"].append(f"slimc int8 over {SLOW_S:g} s a call: timed {SLOW.min_runs}x")
            times = timing.interleave(list(fns.values()), s)
        except timing.Failed as e:
            row["errors"][e.who] = str(e)
            fns.pop(e.who)
            continue
        for who, t in zip(fns, times):
            row["time"][who] = timing.stats(t)
        return


# ----- one model ----------------------------------------------------------------------------

def bench_model(name: str, args, settings, progress, cache: str, tmp: str) -> tuple:
    """(rows, one per thread count, accuracy entries) for one model."""
    mode = MODES[name]
    bench = models.select(name)[0]
    base = {"model": name, "group": "model", "batch": args.batch, "mode": mode,
            "description": bench.description}
    rows = [{**base, "threads": t, "errors": {}, "notes": [], "time": {}} for t in args.threads]
    acc = {"model": name, "mode": mode, "errors": {}, "notes": [], "outputs": []}

    def fail_all(who, e):
        for r in rows:
            r["errors"][who] = timing._error(e)
        acc["errors"][who] = timing._error(e)

    progress.show(f"{name} b{args.batch}", "building")
    try:
        path, feeds = bench.make(args.batch, cache)
    except Exception as e:
        fail_all("build", e)
        return rows, acc
    vocab = _vocab(path, feeds) if "input_ids" in feeds else None
    calib = _samples(name, feeds, vocab, args.calibration, "calibration")
    held = _samples(name, feeds, vocab, args.held_out, "held-out")

    progress.show(stage="onnxruntime quantize")
    ort_path = None
    try:
        start = time.perf_counter()
        src = path
        if not args.no_preprocess:
            src = os.path.join(tmp, f"{name}.pre.onnx")
            note = preprocess_onnxruntime(path, src)
            if note:
                acc["notes"].append(note)
        ort_path = quantize_onnxruntime(src, mode, calib, tmp)
        acc["ort_quantize_s"] = time.perf_counter() - start
    except Exception as e:
        fail_all("onnxruntime quantize", e)

    progress.show(stage="slimc quantize")
    qgraph = None
    try:
        start = time.perf_counter()
        qgraph = quantize_slimc(path, mode, calib)
        acc["slimc_quantize_s"] = time.perf_counter() - start
        acc["slimc_int8_layers"] = sum(n.op in ("matmul_integer", "conv_integer")
                                       for n in qgraph.nodes)
    except Exception as e:
        fail_all("slimc quantize", e)

    for i, (t, row) in enumerate(zip(args.threads, rows)):
        progress.show(f"{name} b{args.batch} t{t}", "compiling slimc int8")
        fns, mods = {}, []
        if qgraph is not None:
            try:
                fn, mod, row["compile_s"] = runtimes.compile_slimc(qgraph, feeds, t)
                row["kernels"] = len(mod.kernels)
                fns["slimc int8"] = fn
                mods.append(mod)
            except Exception as e:
                row["errors"]["slimc int8"] = timing._error(e)
        if ort_path is not None:
            progress.show(stage="opening onnxruntime int8")
            try:
                fns["onnxruntime int8"], row["open_s"] = runtimes.open_peer(
                    "onnxruntime", ort_path, t)
            except Exception as e:
                row["errors"]["onnxruntime int8"] = timing._error(e)
        try:
            ort_f32, _ = runtimes.open_peer("onnxruntime", path, t)
        except Exception as e:
            ort_f32, row["errors"]["onnxruntime f32"] = None, timing._error(e)
        if not args.no_float:
            progress.show(stage="compiling slimc f32")
            try:
                fn, mod, row["compile_f32_s"] = runtimes.compile_slimc(path, feeds, t)
                fns["slimc f32"] = fn
                mods.append(mod)
            except Exception as e:
                row["errors"]["slimc f32"] = timing._error(e)
            if ort_f32 is not None:
                fns["onnxruntime f32"] = ort_f32
        if i == 0 and ort_f32 is not None:
            progress.show(stage="accuracy on held-out inputs")
            int8 = {k: v for k, v in fns.items() if k.endswith("int8")}
            names = [o.name for o in onnx_outputs(path)]
            acc["outputs"] = accuracy(ort_f32, int8, held, names)
            if "onnxruntime int8" in fns:
                progress.show(stage="slimc on onnxruntime's int8 file")
                prequantized(ort_path, fns["onnxruntime int8"], held, names, acc)
        progress.show(stage="timing")
        time_all({k: timing._tagged(k, fn, feeds) for k, fn in fns.items()}, settings, row)
        _ratios(row)
        if args.profile and "slimc int8" in fns and "slimc int8" in row["time"]:
            progress.show(stage="profiling slimc int8")
            try:
                row["profile"] = profile_by_kind(mods[0], feeds, 3 if args.quick else 20)
            except Exception as e:
                row["notes"].append(f"profile: {timing._error(e, 80)}")
        progress.advance()
        del fns, mods, ort_f32
        gc.collect()
    del qgraph
    gc.collect()
    for f in os.listdir(tmp):  # this model's quantized files: /tmp holds one model at a time
        os.remove(os.path.join(tmp, f))
    return rows, acc


def profile_by_kind(mod, feeds: dict, repeat: int) -> dict:
    """slimc's per-kernel medians (`mod.profile`) summed over kernels of the same ops:
    {"total_ms", "call_ms", "kinds": [(ops, kernels, ms), ...] largest first}."""
    prof = mod.profile(**feeds, repeat=repeat)
    return {"total_ms": sum(r[2] for r in prof.rows), "call_ms": prof.total_ms,
            "kinds": prof.kinds()}


def profile_text(rows: list, top: int = 8) -> str:
    out = []
    for r in rows:
        p = r.get("profile")
        if not p:
            continue
        out.append(f"slimc int8 {r['model']}, {r['threads']} thread(s): kernels "
                   f"{p['total_ms']:.3f} ms (whole call {p['call_ms']:.3f} ms), by kind:")
        out += [f"  {ms:8.3f} ms {100 * ms / p['total_ms']:5.1f}%  {n:3d} x  {ops}"
                for ops, n, ms in p["kinds"][:top]]
    return "\n".join(out)


def onnx_outputs(path: str) -> list:
    import onnx

    return list(onnx.load(path, load_external_data=False).graph.output)


def _ratios(row: dict) -> None:
    t = {k: v["median_ms"] for k, v in row["time"].items()}
    if "slimc int8" in t and "onnxruntime int8" in t:
        row["ratio"] = {PEER: t["slimc int8"] / t["onnxruntime int8"]}
    for who in ("slimc", "onnxruntime"):
        if f"{who} int8" in t and f"{who} f32" in t:
            row[f"{who}_speedup"] = t[f"{who} f32"] / t[f"{who} int8"]


# ----- the tables ---------------------------------------------------------------------------

def _format(head: list, lines: list) -> str:
    widths = [max(len(x) for x in col) for col in zip(head, *lines)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i == 0 or i == len(cells) - 1 else c.rjust(w)
                                  for i, (c, w) in enumerate(zip(cells, widths))).rstrip()
    return "\n".join([fmt(head), "-" * len(fmt(head))] + [fmt(c) for c in lines])


def _short(text: str, n: int = 100) -> str:
    return text if len(text) <= n else text[:n - 3] + "..."


def timing_table(rows: list) -> str:
    head = ["model", "thr", "slimc int8 ms", "ORT int8 ms", "ratio", "slimc f32 ms",
            "ORT f32 ms", "slimc f32/int8", "ORT f32/int8", "int8 compile s", "note"]
    lines = []
    for r in rows:
        ms = lambda who: (f"{r['time'][who]['median_ms']:.3f}" if who in r["time"] else "n/a")
        x = lambda v: f"{v:.2f}" if v is not None else "-"
        notes = [f"{who}: {msg}" for who, msg in r["errors"].items()] + r["notes"]
        lines.append([r["model"], str(r["threads"]), ms("slimc int8"), ms("onnxruntime int8"),
                      x(r.get("ratio", {}).get(PEER)), ms("slimc f32"), ms("onnxruntime f32"),
                      x(r.get("slimc_speedup")), x(r.get("onnxruntime_speedup")),
                      f"{r['compile_s']:.1f}" if "compile_s" in r else "-",
                      _short("; ".join(notes))])
    return _format(head, lines)


def accuracy_table(accs: list) -> str:
    head = ["model", "mode", "output", "shape", "cos slimc", "cos ORT", "token cos slimc",
            "token cos ORT", "ORT file: slimc vs ORT", "quantize s slimc/ORT", "note"]
    f = lambda d, who: f"{d[who]:.5f}" if who in d else "-"
    lines = []
    for a in accs:
        q = (f"{a['slimc_quantize_s']:.1f}" if "slimc_quantize_s" in a else "-") + " / " + \
            (f"{a['ort_quantize_s']:.1f}" if "ort_quantize_s" in a else "-")
        if not a["outputs"]:
            lines.append([a["model"], a["mode"], "-", "-", "-", "-", "-", "-", "-", q,
                          _short("; ".join(f"{k}: {v}" for k, v in a["errors"].items()))])
        for o in a["outputs"]:
            errs = "; ".join([f"{k}: {v}" for k, v in o.get("errors", {}).items()] +
                             a["notes"])
            lines.append([a["model"], a["mode"], o["output"], "x".join(map(str, o["shape"])),
                          f(o["cos"], "slimc int8"), f(o["cos"], "onnxruntime int8"),
                          f(o["token_cos"], "slimc int8"), f(o["token_cos"], "onnxruntime int8"),
                          f(o["cos"], "slimc on ORT file"), q, _short(errs)])
    return _format(head, lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    settings = timing.QUICK if args.quick else timing.Settings()
    cache = models.cache_dir()
    started = datetime.datetime.now().isoformat(timespec="seconds")
    load_start = os.getloadavg()
    progress = Progress(len(args.models) * len(args.threads))
    rows, accs = [], []
    try:
        with tempfile.TemporaryDirectory(prefix="slimc-bench-quant-") as tmp:
            for name in args.models:
                r, a = bench_model(name, args, settings, progress, cache, tmp)
                rows += r
                accs.append(a)
    except KeyboardInterrupt:
        print("\ninterrupted: reporting what was measured", file=sys.stderr)
    progress.close()
    print(timing_table(rows))
    print()
    print(report.summary(report.geomeans(rows, [PEER])).replace(
        f"slimc/{PEER}", "slimc int8 / onnxruntime int8"))
    for r in rows:
        if r["model"] == "bert" and "slimc_speedup" in r:
            print(f"slimc int8 vs slimc float32 on the BERT-style encoder, {r['threads']} "
                  f"thread(s): {r['slimc_speedup']:.2f}x faster")
    print()
    print(accuracy_table(accs))
    print("cos: cosine of the int8 output to onnxruntime's float32 output (mean over "
          f"{args.held_out} held-out inputs); token cos: mean cosine per token (last axis); "
          "ORT file: slimc compiling onnxruntime's int8 file, cosine to onnxruntime's output "
          "on it")
    prof = profile_text(rows)
    if prof:
        print("\n" + prof)
    errs = report.errors(rows)
    if errs:
        print("\nerrors:\n" + errs)
    la = load_start, os.getloadavg()
    cpu = _cpu()
    print(f"\n{cpu}, {os.cpu_count()} cores; load average {la[0][0]:.1f} at start, "
          f"{la[1][0]:.1f} at end (numbers are noisy when other work shares the cores)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"started": started, "cpu": cpu, "argv": sys.argv[1:], "rows": rows,
                       "accuracy": accs, "geomean": report.geomeans(rows, [PEER])}, f,
                      indent=1)
        print(f"wrote {args.json}")
    return 0


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        import platform

        return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
