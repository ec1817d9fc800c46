"""The Winograd pass's cost model for a CPU target: measured here, or built in.

`cost_model(target)` is what the CPU backend gives the `winograd` pass (passes/winograd.py):
for a target this process runs, the pass's `host_model` of a `Host` whose `measure` times the
direct convolution and F(2x2), F(4x4) kernels on a few layers (`measure`: each kernel lowered
and JIT-compiled alone, timed on this thread); for any other target, the built-in
coefficients at its vector width. ``python -m slimc.codegen.cpu.winograd_cost calibrate``
measures this host again; ``... sweep OUT.json N,C,H,W:COUT ...`` times layers for `fit`.
"""

from __future__ import annotations

import numpy as np

from slimc.ir import dtypes
from slimc.ir.buffers import aligned_zeros

from .lower import lower_graph
from .target import CpuTarget, jit_compile


def _one_conv_graph(shape, cout: int, tile, seed: int = 0):
    """A graph of one padded 3x3 conv with bias (tile None) or its Winograd form."""
    from slimc.ir import Graph, TensorType
    from slimc.ir.ops.winograd import transform_filter

    n, cin, h, w = shape
    rng = np.random.default_rng(seed)
    g = Graph("calibrate")
    x = g.add_input("x", TensorType(dtypes.f32, (n, cin, h, w)))
    wt = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))).astype(np.float32)
    bias = g.add_constant("b", rng.standard_normal(cout).astype(np.float32) * 0.1)
    pads = [1, 1, 1, 1]
    out_t = TensorType(dtypes.f32, (n, cout, h, w))
    if tile is None:
        node = g.make_node("conv", [x, g.add_constant("w", wt), bias], {"pads": pads}, [out_t],
                           ["y"])
    else:
        u = g.add_constant("u", transform_filter(wt, tile))
        node = g.make_node("winograd_conv2d", [x, u, bias], {"tile": tile, "pads": pads},
                           [out_t], ["y"])
    g.outputs.append(node.outputs[0])
    return g


def _blocked_conv_graph(shape, cout: int, block: int, seed: int = 0):
    """The same padded 3x3 conv as `_one_conv_graph`'s direct one, as the layout pass runs
    it: conv2d_nchwc on NCHW[block]c tensors (the conversions at its ends not timed)."""
    from slimc.ir import Graph, TensorType
    from slimc.ir.ops.layout import block_conv_weights

    n, cin, h, w = shape
    rng = np.random.default_rng(seed)
    g = Graph("calibrate")
    x = g.add_input("x", TensorType(dtypes.f32, (n, cin // block, h, w, block)))
    wt = (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))).astype(np.float32)
    bias = (rng.standard_normal(cout) * 0.1).astype(np.float32).reshape(-1, block)
    node = g.make_node("conv2d_nchwc", [x, g.add_constant("w", block_conv_weights(wt, block,
                                                                                   block)),
                                        g.add_constant("b", bias)], {"pads": [1, 1, 1, 1]},
                       [TensorType(dtypes.f32, (n, cout // block, h, w, block))], ["y"])
    g.outputs.append(node.outputs[0])
    return g


class _TimedKernel:
    """One JIT-compiled kernel with its own buffers, called on this thread only."""

    def __init__(self, graph, target, fast_math=("contract", "reassoc")):
        import ctypes

        module, kernels = lower_graph(graph, target, [list(graph.nodes)], fast_math)
        (k,) = kernels
        self.jit = jit_compile(str(module), target, opt_level=3)
        self.fn = self.jit.cfunc(k.name, None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64)
        rng = np.random.default_rng(1)
        self.buffers = []
        for v in k.buffers:
            if v.data is not None:
                a = np.ascontiguousarray(v.data)
            elif v in graph.inputs:  # activations after a ReLU: non-negative, unit scale
                a = np.maximum(rng.standard_normal(v.type.shape), 0).astype(v.type.dtype.numpy)
            else:
                a = np.zeros(v.type.shape, v.type.dtype.numpy)
            self.buffers.append(aligned_zeros(a.size, a.dtype))
            self.buffers[-1][:] = a.reshape(-1)
        self.args = (ctypes.c_void_p * len(self.buffers))(*[a.ctypes.data for a in self.buffers])
        self.extent = k.parallel_extent

    def __call__(self) -> None:
        import ctypes

        self.fn(ctypes.addressof(self.args), 0, self.extent)


def measure(shapes, repeat: int = 5, target=None) -> list[dict]:
    """Seconds per call of the direct conv (NCHW, and blocked where both channel counts are
    whole vectors) and of F(2x2), F(4x4) for [N, Cin, H, W] -> Cout shapes ((shape, cout)
    pairs), one thread. The kernels of a shape are timed in interleaved rounds and each
    keeps its fastest run, so a machine shared with other work slows them all alike and the
    minimum is the least disturbed run."""
    import time

    target = target or CpuTarget.host()
    rows = []
    for shape, cout in shapes:
        kernels = {"direct": _TimedKernel(_one_conv_graph(shape, cout, None), target)}
        vw = target.vector_width
        if shape[1] % vw == 0 and cout % vw == 0:
            kernels["blocked"] = _TimedKernel(_blocked_conv_graph(shape, cout, vw), target)
        for tile in (2, 4):
            kernels[f"F{tile}"] = _TimedKernel(_one_conv_graph(shape, cout, tile), target)
        for k in kernels.values():
            k()  # warm up: page in weights and scratch
        best = {name: float("inf") for name in kernels}
        budget = time.perf_counter() + 1.0
        for r in range(max(2, repeat)):
            for name, k in kernels.items():
                t = time.perf_counter()
                k()
                best[name] = min(best[name], time.perf_counter() - t)
            if r >= 2 and time.perf_counter() > budget:
                break
        rows.append({"shape": list(shape), "cout": int(cout), **best})
    return rows


def _host_of(target):
    """`target` as the winograd pass's `Host`: what it is, and how to time kernels on it."""
    from slimc.passes import winograd as wpass

    return wpass.Host(key=f"{target.triple}|{target.cpu}|{target.features}", cpu=target.cpu,
                      vector_width=target.vector_width,
                      measure=lambda shapes: measure(shapes, repeat=10, target=target))


def cost_model(target):
    """The winograd pass's cost model for `target`: measured on this machine (once, then read
    from the cache folder) when this process runs the target's code; else the built-in
    coefficients at the target's vector width -- a cross-compile is priced for its target,
    never by timing the host."""
    from slimc.passes import winograd as wpass

    if target.is_host:
        return wpass.host_model(_host_of(target))
    model = wpass.table_model(target.cpu, target.vector_width)
    model.source += f" (target {target.name} is not this machine: not measured)"
    return model


def main(argv=None) -> int:
    """``python -m slimc.codegen.cpu.winograd_cost calibrate``: measure this host now and store
    the `winograd` pass's cost model in the cache folder (replacing an older calibration);
    ``... sweep OUT.json NxCxHxW:COUT ...``: time layers, rows for `winograd.fit`."""
    import argparse
    import json
    import os

    from slimc.passes import winograd as wpass

    ap = argparse.ArgumentParser(prog="python -m slimc.codegen.cpu.winograd_cost")
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("calibrate")
    sw = sub.add_parser("sweep")
    sw.add_argument("out")
    sw.add_argument("layers", nargs="+", help="N,Cin,H,W:Cout")
    args = ap.parse_args(argv)
    if args.cmd == "sweep":
        shapes = [(tuple(int(d) for d in l.split(":")[0].split(",")), int(l.split(":")[1]))
                  for l in args.layers]
        rows = [measure([s], repeat=25)[0] for s in shapes]
        with open(args.out, "w") as f:
            json.dump(rows, f, indent=1)
        return 0
    folder = wpass.cache_folder()
    if folder is None:
        raise SystemExit("no cache folder (SLIMC_CACHE_DIR=off): nowhere to store it")
    host = _host_of(CpuTarget.host())
    path = wpass.calibration_path(folder, host.key)
    if os.path.exists(path):
        os.remove(path)
    os.environ["SLIMC_WINOGRAD_CALIBRATE"] = "1"
    wpass._models.clear()
    model = wpass.host_model(host)
    print(f"{model.source}: factors {model.factor}; stored in {path}")
    return 0


if __name__ == "__main__":  # run the module's one copy (slimc.codegen...), not __main__'s
    from slimc.codegen.cpu import winograd_cost as _this

    raise SystemExit(_this.main())
