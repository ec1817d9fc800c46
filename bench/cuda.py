"""python -m bench.cuda [--models resnet18,bert,...] [--arch sm_90] [--json out.json]

The CUDA backend on the benchmark corpus. On any machine: each model compiled for
``cuda:<arch>`` (seconds), its PTX assembled by ptxas for sm_80 and sm_90 (those not older than
<arch>: PTX for sm_80 also runs on sm_90, not the reverse), and per model the
kernels' largest register count, shared memory and any spills; with `--emulate`, the kernels
run by the CPU emulator against onnxruntime (seconds, largest errors). With a GPU (the CUDA driver
sees one) also: the outputs against onnxruntime on the CPU (largest absolute and relative
error), and the median milliseconds of a call (inputs copied in and outputs out) and of the
kernels alone (CUDA events), over `--repeat` calls after a warm-up. Nothing is asserted.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from .compile_time import MODELS, _path


def _feeds(name: str, path: str) -> dict:
    if name == "demo":
        return {"image": np.random.default_rng(0).standard_normal((2, 3, 32, 32))
                .astype(np.float32)}
    from . import models

    if name == "minilm":
        import onnx

        m = onnx.load(path, load_external_data=False)
        names = [i.name for i in m.graph.input]
        rng = np.random.default_rng(0)
        ids = rng.integers(0, 1000, (1, 128)).astype(np.int64)
        feeds = {"input_ids": ids, "attention_mask": np.ones_like(ids),
                 "token_type_ids": np.zeros_like(ids)}
        return {k: v for k, v in feeds.items() if k in names}
    return models.select(name)[0].make(1, models.cache_dir())[1]


def _onnxruntime(path: str, feeds: dict) -> list:
    import onnx
    import onnxruntime as ort

    sess = ort.InferenceSession(onnx.load(path).SerializeToString(),
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


def _errors(got, want) -> dict:
    return {"max_abs_err": float(max(np.max(np.abs(g - w)) for g, w in zip(got, want))),
            "max_rel_err": float(max(np.max(np.abs(g - w) / (np.abs(w) + 1e-3))
                                     for g, w in zip(got, want)))}


def measure(name: str, arch: str, repeat: int, emulate: bool = False) -> dict:
    import slimc
    from slimc.codegen.cuda.ptx import ptxas
    from slimc.runtime.cuda_driver import no_gpu_reason

    path, kwargs = _path(name, "/tmp")
    feeds = _feeds(name, path)
    row = {"model": name}
    t = time.perf_counter()
    mod = slimc.compile(path, target=f"cuda:{arch}",
                        input_shapes={k: v.shape for k, v in feeds.items()})
    row["compile_s"] = round(time.perf_counter() - t, 2)
    row["kernels"] = len(mod.kernels)
    for a in [a for a in ("sm_80", "sm_90") if a >= arch]:  # PTX runs on its arch and later
        report = ptxas(mod.ptx, a)
        row[f"{a}_max_registers"] = max(k.get("registers", 0) for k in report.kernels.values())
        row[f"{a}_max_shared"] = max(k.get("shared", 0) for k in report.kernels.values())
        row[f"{a}_spilling_kernels"] = sorted(report.spills())
    if emulate:
        t = time.perf_counter()
        got = mod.emulate(**feeds)
        row["emulate_s"] = round(time.perf_counter() - t, 2)
        row.update({"emulated_" + k: v for k, v in
                    _errors(got, _onnxruntime(path, feeds)).items()})
    if no_gpu_reason() is None:
        row.update(_errors(mod(**feeds), _onnxruntime(path, feeds)))
        times = []
        for _ in range(repeat):
            t = time.perf_counter()
            mod(**feeds)
            times.append(time.perf_counter() - t)
        row["call_ms"] = round(1e3 * float(np.median(times)), 3)
        row["kernels_ms"] = round(mod.profile(**feeds, repeat=repeat).total_ms, 3)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--arch", default="sm_80")
    p.add_argument("--repeat", type=int, default=50)
    p.add_argument("--emulate", action="store_true",
                   help="also run the kernels in the CPU emulator against onnxruntime (slow)")
    p.add_argument("--json")
    args = p.parse_args(argv)
    rows = []
    for name in args.models.split(","):
        try:
            row = measure(name, args.arch, args.repeat, args.emulate)
        except Exception as e:  # noqa: BLE001 - one model's failure is a row, not the end
            row = {"model": name, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
