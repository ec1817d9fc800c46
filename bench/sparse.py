"""The sparse kernel sweep: slimc's sparse kernels against slimc's dense ones, per layer.

    python -m bench.sparse [--threads 1] [--quick] [--layers ...] [--sparsity 0.5,0.7,...]

For BERT-sized matmuls (x[M, K] @ W[K, N] at M = 1 and 128) and ResNet-sized 1x1
convolutions, each weight is pruned with numpy to each sparsity, unstructured and in 1x8
blocks (eight consecutive outputs at one input: the pattern `slimc.prune.magnitude`'s
"block:1x8" makes), and timed four ways in one process: dense (``disable_passes=
["sparsify"]``), each sparse form forced (CSR; 1x8 blocks, for the block-pruned weight), and
what the `sparsify` pass chooses by itself (``auto``: it must never be slower than dense).
Median latency of a call (bench/timing.py's interleaved turns; with ``--cold``, each call
after the caches are emptied, as a layer of a model bigger than the caches meets its
weights; it empties Python's own caches too, which costs a call ~40 us); results are
checked against numpy before timing. Nothing is asserted: the table is the result.

One-token layers are small: a single 256 x 1024 layer called again and again finds its dense
weights (1 MB) in L2, and the call's fixed cost (~2 us) is a fair part of its time. With
``--stack L`` each one-token row is a model of L layers of that shape, each with weights of
its own, summed (the adds fuse into the products' stores), and the table gives the time per
layer: a layer as a one-token decoder step meets it, its weights not left in cache by the
call before and the call's cost shared (`--stack 32`: even the pruned weights outgrow L2).
``--models bert,mobilenetv2`` runs the end-to-end comparison instead.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from . import timing

MATMULS = [(256, 1024), (1024, 256), (768, 3072)]  # (K, N)
CONVS = [(56, 64, 256), (7, 512, 2048)]  # (H = W, Cin, Cout)


def prune(w: np.ndarray, sparsity: float, block: int, rng) -> np.ndarray:
    """Zero `sparsity` of w [K, N] (of its 1 x block groups along N, by L1 norm)."""
    w = w.copy()
    k, n = w.shape
    nb = -(-n // block)
    padded = np.zeros((k, nb * block), np.float32)
    padded[:, :n] = np.abs(w)
    score = padded.reshape(k, nb, block).sum(axis=2)
    drop = int(round(sparsity * score.size))
    order = np.argsort(score, axis=None, kind="stable")[:drop]
    mask = np.ones(score.size, bool)
    mask[order] = False
    keep = np.repeat(mask.reshape(k, nb), block, axis=1)[:, :n]
    return w * keep


def matmul_graph(m: int, w: np.ndarray):
    from slimc.ir import Graph, TensorType, dtypes

    g = Graph("matmul")
    x = g.add_input("x", TensorType(dtypes.f32, (m, w.shape[0])))
    node = g.make_node("matmul", [x, g.add_constant("w", w)], {},
                       [TensorType(dtypes.f32, (m, w.shape[1]))], ["y"])
    g.outputs.append(node.outputs[0])
    return g


def stack_graph(m: int, ws: list):
    """sum_i x @ W_i: `len(ws)` layers of one shape in one model, each with weights of its own
    (the add fuses into each product's store), so a call's time over the layers is a layer's
    time inside a model: its weights not reused from the last call's caches, the call's
    fixed cost shared."""
    from slimc.ir import Graph, TensorType, dtypes

    k, n = ws[0].shape
    g = Graph("matmul_stack")
    x = g.add_input("x", TensorType(dtypes.f32, (m, k)))
    out_t = TensorType(dtypes.f32, (m, n))
    total = None
    for i, w in enumerate(ws):
        y = g.make_node("matmul", [x, g.add_constant(f"w{i}", w)], {}, [out_t],
                        [f"y{i}"]).outputs[0]
        total = y if total is None else g.make_node("add", [total, y], {}, [out_t],
                                                    [f"sum{i}"]).outputs[0]
    g.outputs.append(total)
    return g


def conv_graph(hw: int, w: np.ndarray):
    from slimc.ir import Graph, TensorType, dtypes

    cout, cin = w.shape
    g = Graph("conv1x1")
    x = g.add_input("x", TensorType(dtypes.f32, (1, cin, hw, hw)))
    node = g.make_node("conv", [x, g.add_constant("w", w.reshape(cout, cin, 1, 1))], {},
                       [TensorType(dtypes.f32, (1, cout, hw, hw))], ["y"])
    g.outputs.append(node.outputs[0])
    return g


def compiled(graph, threads: int, force=None, sparse=True):
    """slimc.compile's pipeline, with the sparsify pass forced to a form, left to choose
    (force None) or off (sparse False)."""
    import slimc
    from slimc.passes.sparsify import Sparsify

    if not sparse:
        return slimc.compile(graph, threads=threads, disable_passes=["sparsify"])
    if force is None:
        return slimc.compile(graph, threads=threads)
    return slimc.compile(graph, threads=threads, disable_passes=["sparsify"],
                         passes=[Sparsify(force=force)])


def chosen(mod) -> str:
    ops = [n for n in mod.graph.nodes if n.op in ("sparse_matmul", "sparse_conv")]
    if not ops:
        return "dense"
    block = int(ops[0].attrs.get("block", 1))
    return "CSR" if block == 1 else f"1x{block}"


_EVICT = None


def cold_times(fns, rounds: int) -> list:
    """Seconds per call with the caches emptied before each one (a 64 MB buffer rewritten):
    a layer of a model too big for the caches, whose weights come from memory every call."""
    import time

    global _EVICT
    if _EVICT is None:
        _EVICT = np.ones(16 << 20, np.float32)
    out = [[] for _ in fns]
    for f in fns:
        f()
    for _ in range(rounds):
        for i, f in enumerate(fns):
            _EVICT += 1.0
            t = time.perf_counter()
            f()
            out[i].append(time.perf_counter() - t)
    return out


def _kernel_ms(mod, x, alone: bool = True, repeat: int = 20) -> float:
    heavy = ("conv", "conv2d_nchwc", "sparse_conv", "sparse_matmul", "matmul")
    prof = mod.profile(x, repeat=repeat, alone=alone)
    return sum(ms for _, ops, ms in prof.rows if any(op in heavy for op in ops))


def _kernels_in_calls(mods: dict, x, rounds: int = 9) -> dict:
    """Median of each module's product kernel timed inside its calls (`mod.profile`),
    the modules taking turns: a one-token layer's kernel without the call's fixed cost."""
    times: dict = {n: [] for n in mods}
    for _ in range(rounds):
        for n, mod in mods.items():
            times[n].append(_kernel_ms(mod, x, alone=False, repeat=200))
    return {n: float(np.median(t)) for n, t in times.items()}


def layer_rows(label, graph, x, reference, args, settings, rng, block_sizes):
    rows = []
    forms = {"dense": dict(sparse=False), "auto": {}}
    for b in block_sizes:
        forms["CSR" if b == 1 else f"1x{b}"] = dict(force=b)
    mods = {name: compiled(graph, args.threads, **kw) for name, kw in forms.items()}
    for name, mod in mods.items():
        got = mod(x)[0]
        err = np.abs(got - reference).max() / max(1e-6, np.abs(reference).max())
        if err > 1e-4:
            raise SystemExit(f"{label} {name}: wrong result (relative error {err:.2e})")
    names = list(mods)
    if args.cold:
        secs = cold_times([lambda m=mods[n]: m(x) for n in names], 15 if args.quick else 40)
    else:
        secs = timing.interleave([lambda m=mods[n]: m(x) for n in names], settings)
    med = {n: float(np.median(s)) for n, s in zip(names, secs)}
    row = {"layer": label, "dense_ms": med["dense"] * 1e3, "auto": chosen(mods["auto"]),
           "auto_x": med["dense"] / med["auto"]}
    if label.startswith("conv"):  # the layer's own kernel, without the layout conversions a
        # lone blocked conv pays at its ends (in a network they cancel between layers)
        kernel = {n: _kernel_ms(mods[n], x) for n in names}
        row["kernel_x"] = {n: kernel["dense"] / kernel[n] for n in names[2:]}
        row["kernel_how"] = "conv kernel alone"
    elif label.startswith("matmul 1x") and args.stack == 1:  # a call's fixed cost (~1 us)
        # is a fair part of a hot 1 MB layer's: the kernel's own time inside the calls too
        kernel = _kernels_in_calls(mods, x)
        row["kernel_x"] = {n: kernel["dense"] / kernel[n] for n in names[2:]}
        row["kernel_how"] = "kernel inside the call"
    for n in names[2:]:
        row[n + "_x"] = med["dense"] / med[n]
    rows.append(row)
    return rows


# ----- end to end ------------------------------------------------------------------------------

def prune_onnx(path: str, out: str, sparsity: float, pattern: str, conv_1x1_only: bool) -> int:
    """Zero the smallest weights of every MatMul / Gemm weight (and 1x1 Conv, or every Conv)
    initializer of an ONNX file, per layer, with plain numpy (in the [K, N] view: for 1x8,
    eight consecutive outputs at one input); returns how many weights were pruned."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(path)
    g = model.graph
    inits = {t.name: t for t in g.initializer}
    block = 1 if pattern == "unstructured" else int(pattern.split("x")[1])
    rng = np.random.default_rng(0)
    done = set()
    for node in g.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        name = node.input[1]
        if name not in inits or name in done:
            continue
        w = numpy_helper.to_array(inits[name])
        if node.op_type == "Conv":
            if w.ndim != 4 or (conv_1x1_only and w.shape[2:] != (1, 1)) or w.shape[1] == 1:
                continue
            view = w.reshape(w.shape[0], -1).T  # [I*kh*kw, O]
        elif w.ndim != 2:
            continue
        else:
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            view = w.T if trans_b else w
        pruned = prune(np.ascontiguousarray(view), sparsity, block, rng)
        if node.op_type == "Conv":
            pruned = pruned.T.reshape(w.shape)
        elif view is not w:
            pruned = pruned.T
        inits[name].CopyFrom(numpy_helper.from_array(pruned.astype(w.dtype), name))
        done.add(name)
    onnx.save(model, out)
    return len(done)


def end_to_end(args, settings) -> None:
    """BERT-style encoder with 90% pruned linear weights, MobileNetV2 with 80% pruned 1x1
    convolutions: slimc (sparsify on) vs slimc (off) vs onnxruntime on the same pruned file."""
    import os
    import tempfile

    import slimc

    from . import models, runtimes

    plans = {"bert": (0.9, False), "mobilenetv2": (0.8, True)}
    tmp = tempfile.mkdtemp(prefix="slimc-sparse-")
    for name in args.models.split(","):
        sparsity, conv_only = plans[name]
        bench = models.select(name)[0]
        path, feeds = bench.make(1, models.cache_dir())
        for pattern in ("unstructured", "1x8"):
            pruned = os.path.join(tmp, f"{name}.{pattern}.onnx")
            count = prune_onnx(path, pruned, sparsity, pattern, conv_only)
            for threads in args.threads_e2e:
                sparse = slimc.compile(pruned, threads=threads)
                dense = slimc.compile(pruned, threads=threads, disable_passes=["sparsify"])
                ort = runtimes.open_onnxruntime(pruned, threads)
                outs = [f(feeds) for f in (lambda f: sparse(**f), lambda f: dense(**f), ort)]
                agree = min(_cos(a, b) for a, b in zip(outs[0], outs[2]))
                nsparse = sum(n.op in ("sparse_matmul", "sparse_conv") for n in sparse.graph.nodes)
                secs = timing.interleave([lambda: sparse(**feeds), lambda: dense(**feeds),
                                          lambda: ort(feeds)], settings)
                t = [float(np.median(x)) * 1e3 for x in secs]
                print(f"{name} {sparsity:.0%} {pattern:<12} {threads}t  {count} weights pruned, "
                      f"{nsparse} sparse kernels: slimc sparse {t[0]:.3f} ms, slimc dense "
                      f"{t[1]:.3f} ms ({t[1] / t[0]:.2f}x), onnxruntime {t[2]:.3f} ms "
                      f"({t[2] / t[0]:.2f}x); cosine to onnxruntime {agree:.6f}", flush=True)


def _cos(a, b) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    return float(a @ b / max(1e-30, np.linalg.norm(a) * np.linalg.norm(b)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.sparse")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="", help="end to end: bert,mobilenetv2 (skips the sweep)")
    ap.add_argument("--threads-e2e", default="1,2", help="thread counts for --models")
    ap.add_argument("--sparsity", default="0.5,0.7,0.8,0.9,0.95")
    ap.add_argument("--quick", action="store_true", help="short timings (noisy)")
    ap.add_argument("--cold", action="store_true",
                    help="empty the caches before every call (weights streamed from memory)")
    ap.add_argument("--only", default="", help="substring of the layer labels to run")
    ap.add_argument("--stack", type=int, default=1,
                    help="one-token matmuls: this many layers of the shape in one model, each "
                         "with its own weights; times per layer")
    args = ap.parse_args(argv)
    settings = timing.QUICK if args.quick else timing.Settings(min_runs=10, budget_s=1.0)
    if args.models:
        args.threads_e2e = [int(t) for t in args.threads_e2e.split(",")]
        end_to_end(args, settings if args.quick else timing.Settings())
        return 0
    sparsities = [float(s) for s in args.sparsity.split(",")]
    rng = np.random.default_rng(0)
    stacked = f", one-token layers {args.stack} to a model (time per layer)" \
        if args.stack > 1 else ""
    print(f"slimc sparse / dense speedup (dense time / sparse time), {args.threads} thread(s)"
          f"{', caches emptied before each call' if args.cold else ''}{stacked}"
          f"; auto = what the sparsify pass chose")
    print(f"{'layer':<34} {'dense ms':>9} {'CSR':>6} {'1x8':>6} {'auto':>6} {'auto x':>7}")
    cases = []
    for k, n in MATMULS:
        for m in (1, 128):
            cases.append((f"matmul {m}x{k} @ {k}x{n}", "mm", m, k, n))
    for hw, cin, cout in CONVS:
        cases.append((f"conv1x1 {hw}x{hw} {cin}->{cout}", "conv", hw, cin, cout))
    for label, kind, a, b, c in cases:
        if args.only and args.only not in label:
            continue
        if kind == "mm":
            w0 = (rng.standard_normal((b, c)) / np.sqrt(b)).astype(np.float32)
        else:
            w0 = (rng.standard_normal((b, c)) / np.sqrt(b)).astype(np.float32)  # [Cin, Cout]
        for sp in sparsities:
            for pattern, blocks in (("unstr", (1,)), ("1x8", (8,))):
                w = prune(w0, sp, 1 if pattern == "unstr" else 8, rng)
                if kind == "mm" and a == 1 and args.stack > 1:
                    x = rng.standard_normal((a, b)).astype(np.float32)
                    ws = [w] + [prune(rng.permutation(w0.reshape(-1)).reshape(w0.shape), sp,
                                      1 if pattern == "unstr" else 8, rng)
                                for _ in range(args.stack - 1)]
                    graph, ref = stack_graph(a, ws), sum(x @ wi for wi in ws)
                elif kind == "mm":
                    x = rng.standard_normal((a, b)).astype(np.float32)
                    graph, ref = matmul_graph(a, w), x @ w
                else:
                    x = rng.standard_normal((1, b, a, a)).astype(np.float32)
                    wt = np.ascontiguousarray(w.T)  # [Cout, Cin]
                    graph = conv_graph(a, wt)
                    ref = np.einsum("oc,nchw->nohw", wt, x)
                lab = f"{label} {sp:.0%} {pattern}"
                (row,) = layer_rows(lab, graph, x, ref, args, settings, rng, blocks)
                if kind == "mm" and a == 1 and args.stack > 1:
                    row["dense_ms"] /= args.stack
                csr = row.get("CSR_x")
                b8 = row.get("1x8_x")
                print(f"{lab:<34} {row['dense_ms']:9.3f} "
                      f"{'' if csr is None else f'{csr:.2f}':>6} "
                      f"{'' if b8 is None else f'{b8:.2f}':>6} {row['auto']:>6} "
                      f"{row['auto_x']:7.2f}"
                      + ("" if "kernel_x" not in row else f"   {row['kernel_how']}: " +
                         ", ".join(f"{k} {v:.2f}x" for k, v in row["kernel_x"].items())),
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
