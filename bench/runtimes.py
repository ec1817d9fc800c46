"""The runtimes under comparison, each opened on an ONNX file as a function feeds -> outputs.

slimc compiles with `threads`; onnxruntime keeps its default graph optimizations with
`threads` intra-op threads; OpenVINO (optional, when `import openvino` works) runs on its CPU
plugin with `threads` inference threads, latency hint and f32 precision.
"""

from __future__ import annotations

import time


def peers() -> list:
    """The runtimes slimc is compared with: onnxruntime, and OpenVINO when installed."""
    out = ["onnxruntime"]
    try:
        import openvino  # noqa: F401

        out.append("openvino")
    except Exception:
        pass
    return out


def compile_slimc(path: str, feeds: dict, threads: int):
    """(run function, module, compile seconds). A model with symbolic shapes is specialized
    at its first call, so that call is part of the compile time."""
    import slimc

    start = time.perf_counter()
    mod = slimc.compile(path, target="x86", threads=threads)
    mod(**feeds)
    return (lambda f: mod(**f)), mod, time.perf_counter() - start


def open_onnxruntime(path: str, threads: int):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return lambda f: sess.run(None, f)


def open_openvino(path: str, threads: int):
    import openvino as ov

    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", {
        "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    return lambda f: list(request.infer(f).values())


def open_peer(name: str, path: str, threads: int):
    """(run function, seconds to open)."""
    start = time.perf_counter()
    fn = {"onnxruntime": open_onnxruntime, "openvino": open_openvino}[name](path, threads)
    return fn, time.perf_counter() - start
