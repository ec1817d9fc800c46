"""The sparsify pass's cost model for a CPU target: both forms of a layer timed on this host.

`SparseCostModel(target).choose(layer)`: for a target this process runs (and
``SLIMC_COST_MODEL=auto``, the default), the layer's dense op and its sparse forms (each
format the cost table rates close to the best, `candidates`: the sparse_matmul kernel, plus
the transposes of x and of the result where the form has them) are each lowered and
JIT-compiled alone and timed on this thread (winograd_cost's `_TimedKernel`); the fastest
sparse form is chosen only when it measured faster than dense. Timings are kept in
the cache folder per CPU, keyed by the layer's shapes and stored-block counts, so a model is
priced once per machine. For another target, or with ``SLIMC_COST_MODEL=fixed|builtin``
(every machine of a kind compiles the same code), the pass's fixed rule decides.
"""

from __future__ import annotations

import hashlib
import json
import os
import time

from slimc.ir import Graph, TensorType, dtypes
from slimc.ir.ops.sparse import compress

from .target import CpuTarget
from .winograd_cost import _TimedKernel

# The sparse form must measure this much faster: timings of a 10-20 us layer move by 10-30%
# between runs on a shared machine, and a sparse kernel that only measured faster by chance
# runs slower in the model (one token 256 x 1024 at 50%: 1.27x measured, 0.88x in calls).
MARGIN = 1.1
CANDIDATE_SPREAD = 1.75  # sparse forms predicted within this factor of the cheapest are timed
CACHE_VERSION = 10  # 2: one-token windowed kernel; forms timed as the pass writes them; 3: chunks
# of K by CPU and by the vectors a tile uses; 4: threads split column tiles first; 5: sums per call;
# 6: 16-bit column indices; 7: every candidate form timed; 8: one-token block kernel, windowed
# steps' i32 offsets, block formats of images split rows first; 9: tiled products transpose x
# themselves (x_rows); 10: no chunks of K for sparse rows whose tile fits in L2


class SparseCostModel:
    def __init__(self, target: CpuTarget):
        self.target = target
        self.key = f"{target.triple}|{target.cpu}|{target.features}"
        self._timings = None
        # one-token CSR permutes x from registers with AVX-512 (gen_sparse_row.py)
        from slimc.passes import sparsify

        self.slot_cost = sparsify.SLOT_COST_WINDOWED if target.has_avx512f else \
            sparsify.SLOT_COST

    def choose(self, layer):
        from slimc.passes import sparsify
        from slimc.passes.winograd import cost_model_mode

        rule = sparsify.rule_choice(layer, self.slot_cost)
        if not self.target.is_host or cost_model_mode() != "auto":
            return rule
        times = self._timed(layer, candidates(layer, self.slot_cost))
        block = max(times, key=lambda b: times[b][0] / times[b][1])
        t_dense, t_sparse = times[block]
        fmt = sparsify._fmt(block)
        measured = f"measured dense {_us(t_dense)}, " + ", ".join(
            f"{sparsify._fmt(b)} {_us(t[1])}" for b, t in times.items())
        if t_sparse * MARGIN < t_dense:
            return sparsify.Choice(block, f"{fmt}, {t_dense / t_sparse:.1f}x faster: {measured}")
        return sparsify.Choice(None, f"dense: {measured} (sparse is chosen {MARGIN:.1f}x "
                                     f"faster or more)")

    # ----- timing, cached ------------------------------------------------------------------------
    def _timed(self, layer, blocks: list) -> dict:
        """block -> (dense seconds, sparse seconds), the blocks not in the cache measured in
        one run that times dense once beside them."""
        s = layer.info
        keys = {b: f"{layer.op}|{layer.b_shape}|{s.rows}x{s.cols}|{b}|{s.stored[b]}"
                for b in blocks}
        timings = self._load()
        missing = [b for b in blocks if keys[b] not in timings]
        if missing:
            t_dense, *t_sparse = _measure(layer, missing, self.target)
            for b, t in zip(missing, t_sparse):
                timings[keys[b]] = [t_dense, t]
            self._save()
        return {b: tuple(timings[keys[b]]) for b in blocks}

    def _path(self):
        from slimc.passes.winograd import cache_folder

        folder = cache_folder()
        if folder is None:
            return None
        digest = hashlib.sha256(f"{self.key}|v{CACHE_VERSION}".encode()).hexdigest()[:16]
        return os.path.join(folder, "sparse", f"timings-{digest}.json")

    def _load(self) -> dict:
        if self._timings is None:
            self._timings = {}
            path = self._path()
            if path and os.path.exists(path):
                try:
                    with open(path) as f:
                        self._timings = json.load(f)
                except (OSError, ValueError):
                    self._timings = {}  # a damaged file is measured again
        return self._timings

    def _save(self) -> None:
        path = self._path()
        if path is None:
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump(self._timings, f)
        os.replace(tmp, path)


def candidates(layer, table) -> list:
    """The sparse forms worth timing: those the cost table puts within CANDIDATE_SPREAD of
    the cheapest, cheapest first (at most three). A weight pruned in 1x8 blocks is also
    timed as CSR and 1x4: on Intel a 1x1 conv over 56x56 pixels with 64 inputs ran CSR in
    0.28 ms, 1x4 in 0.39 and 1x8 in 0.43 (its output rows, 12.5 KB apart, are written in
    wider runs by CSR's wider column tiles); an unstructured one only as CSR."""
    from slimc.passes.sparsify import slot_costs

    costs = slot_costs(layer, table)
    cheapest = min(costs.values())
    return sorted((b for b, c in costs.items() if c <= cheapest * CANDIDATE_SPREAD),
                  key=costs.get)[:3]


def _us(t: float) -> str:
    return f"{t * 1e6:.0f} us"


def _measure(layer, blocks: list, target) -> list:
    """[dense seconds, sparse seconds of each block] per call, each the fastest of
    interleaved rounds (within about half a second for all of them)."""
    forms = [[_TimedKernel(layer.dense_graph(), target)]]
    forms += [[_TimedKernel(g, target) for g in _sparse_graphs(layer, b)] for b in blocks]
    best = [float("inf")] * len(forms)
    for kernels in forms:
        for k in kernels:
            k()  # warm up
    budget = time.perf_counter() + 0.5
    for r in range(20):
        for i, kernels in enumerate(forms):
            t = time.perf_counter()
            for k in kernels:
                k()
            best[i] = min(best[i], time.perf_counter() - t)
        if r >= 2 and time.perf_counter() > budget:
            break
    return best


def _sparse_graphs(layer, block: int) -> list:
    """The sparse form as the pass writes it, in one-op graphs: a matmul's or gemm's
    [transpose x] and sparse_matmul storing its result transposed (x's tiles read as they
    are when tiled: the form of a product that alone reads them; Q, K and V, which share one
    transpose, are timed in it too); a conv's sparse_conv."""
    values, indices, offsets = compress(layer.a, block)
    b_shape = tuple(int(d) for d in layer.b_shape)
    x_shape = b_shape[:-2] + (b_shape[-1], b_shape[-2])  # a matmul's x: b's transpose
    rows = layer.a.shape[0]
    graphs = []
    if layer.op == "conv":
        op, attrs = "sparse_conv", {"rows": rows, "block": block}
        out_shape = b_shape[:-2] + (rows, b_shape[-1])
    else:
        op, attrs = "sparse_matmul", {"rows": rows, "block": block, "transpose_out": 1}
        out_shape = b_shape[:-2] + (b_shape[-1], rows)
    if layer.tiled:
        attrs.update(tiled=1, x_rows=1)
        out_shape = b_shape[:-3] + (b_shape[-3] * b_shape[-1], rows)
        b_shape = x_shape
    elif layer.transposed:
        swap = list(range(len(b_shape) - 2)) + [len(b_shape) - 1, len(b_shape) - 2]
        graphs.append(_one("transpose", x_shape, b_shape, {"perm": swap}))
    g = Graph("sparse_layer")
    x = g.add_input("x", TensorType(dtypes.f32, b_shape))
    consts = [g.add_constant(n, a) for n, a in
              (("values", values), ("indices", indices), ("offsets", offsets))]
    node = g.make_node(op, [x] + consts, attrs, [TensorType(dtypes.f32, out_shape)], ["y"])
    g.outputs.append(node.outputs[0])
    graphs.append(g)
    return graphs


def _one(op: str, in_shape, out_shape, attrs) -> Graph:
    g = Graph(op)
    x = g.add_input("x", TensorType(dtypes.f32, tuple(in_shape)))
    node = g.make_node(op, [x], attrs, [TensorType(dtypes.f32, tuple(out_shape))], ["y"])
    g.outputs.append(node.outputs[0])
    return g

