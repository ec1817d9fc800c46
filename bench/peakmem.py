"""Peak memory of each runtime, each measured in a fresh process of its own.

The child imports its runtime, notes its resident set's high-water mark (VmHWM), then loads
the model, runs it a few times and notes VmHWM again. Reported: the peak above that
post-import baseline (what the model costs) and the process's whole peak.

For slimc the child loads the artifact the benchmark exported from the module it timed
(`slimc.load`: numpy and ctypes, no compiler), as a deployed model runs; onnxruntime and
OpenVINO open the ONNX file, their graph optimizations included.

    python -m bench.peakmem RUNTIME MODEL FEEDS.npz THREADS   (prints one JSON line)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

RUNS = 3


def _hwm_kb() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def child(runtime: str, model: str, feeds_path: str, threads: int) -> dict:
    import numpy as np

    feeds = dict(np.load(feeds_path))
    if runtime == "slimc":
        import slimc
    elif runtime == "onnxruntime":
        import onnxruntime  # noqa: F401
    else:
        import openvino  # noqa: F401
    base = _hwm_kb()
    if runtime == "slimc":
        mod = slimc.load(model)
        fn = lambda: mod(**feeds)
    else:
        from .runtimes import open_peer

        fn = open_peer(runtime, model, threads)[0]
        fn = (lambda run: lambda: run(feeds))(fn)
    for _ in range(RUNS):
        fn()
    peak = _hwm_kb()
    return {"baseline_mb": base / 1024, "peak_mb": peak / 1024, "model_mb": (peak - base) / 1024}


def measure(runtime: str, model: str, feeds: dict, threads: int, timeout: float = 600) -> dict:
    """Run the child for one runtime; {"model_mb", "peak_mb", ...} or {"error": ...}."""
    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        feeds_path = os.path.join(tmp, "feeds.npz")
        np.savez(feeds_path, **feeds)
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        cmd = [sys.executable, "-m", "bench.peakmem", runtime, model, feeds_path, str(threads)]
        try:
            done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        return {"error": tail}
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_all(path: str, feeds: dict, module, threads: int, peers: list) -> dict:
    """Peak memory of slimc (from `module`, exported to a temporary artifact) and each peer."""
    out = {}
    if module is not None:
        with tempfile.TemporaryDirectory() as tmp:
            artifact = os.path.join(tmp, "model.slimc")
            try:
                module.export(artifact)
                out["slimc"] = measure("slimc", artifact, feeds, threads)
            except Exception as e:
                out["slimc"] = {"error": f"export failed: {type(e).__name__}: {e}"}
    for peer in peers:
        out[peer] = measure(peer, path, feeds, threads)
    return out


if __name__ == "__main__":
    runtime, model, feeds_path, threads = sys.argv[1:5]
    print(json.dumps(child(runtime, model, feeds_path, int(threads))))
