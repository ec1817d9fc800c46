"""The sparsify pass's cost model for a CPU target: both forms of a layer timed on this host.

`SparseCostModel(target).choose(layer)`: for a target this process runs (and
``SLIMC_COST_MODEL=auto``, the default), the layer's dense op and its sparse form (the
sparse_matmul kernel, plus the transposes of x and of the result where the form has them)
are each lowered and JIT-compiled alone and timed on this thread (winograd_cost's
`_TimedKernel`); the sparse form is chosen only when it measured faster. Timings are kept in
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
CACHE_VERSION = 6  # 2: one-token windowed kernel; forms timed as the pass writes them; 3: chunks
# of K by CPU and by the vectors a tile uses; 4: threads split column tiles first; 5: sums per call;
# 6: 16-bit column indices


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
        block = rule.block or _best_sparse_block(layer, self.slot_cost)
        t_dense, t_sparse = self._timed(layer, block)
        fmt = sparsify._fmt(block)
        measured = f"measured dense {_us(t_dense)}, {fmt} {_us(t_sparse)}"
        if t_sparse * MARGIN < t_dense:
            return sparsify.Choice(block, f"{fmt}, {t_dense / t_sparse:.1f}x faster: {measured}")
        return sparsify.Choice(None, f"dense: {measured} (sparse is chosen {MARGIN:.1f}x "
                                     f"faster or more)")

    # ----- timing, cached ------------------------------------------------------------------------
    def _timed(self, layer, block: int) -> tuple:
        s = layer.info
        key = f"{layer.op}|{layer.b_shape}|{s.rows}x{s.cols}|{block}|{s.stored[block]}"
        timings = self._load()
        if key not in timings:
            timings[key] = _measure(layer, block, self.target)
            self._save()
        return tuple(timings[key])

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


def _best_sparse_block(layer, table) -> int:
    from slimc.passes.sparsify import slot_costs

    costs = slot_costs(layer, table)
    return min(costs, key=costs.get)


def _us(t: float) -> str:
    return f"{t * 1e6:.0f} us"


def _measure(layer, block: int, target) -> list:
    """[dense seconds, sparse seconds] per call, each the fastest of interleaved rounds."""
    dense = [_TimedKernel(layer.dense_graph(), target)]
    sparse = [_TimedKernel(g, target) for g in _sparse_graphs(layer, block)]
    best = [float("inf"), float("inf")]
    for k in dense + sparse:
        k()  # warm up
    budget = time.perf_counter() + 0.5
    for r in range(20):
        for i, kernels in enumerate((dense, sparse)):
            t = time.perf_counter()
            for k in kernels:
                k()
            best[i] = min(best[i], time.perf_counter() - t)
        if r >= 2 and time.perf_counter() > budget:
            break
    return best


def _sparse_graphs(layer, block: int) -> list:
    """The sparse form as the pass writes it, in one-op graphs: a matmul's or gemm's
    [transpose x] and sparse_matmul storing its result transposed; a conv's sparse_conv."""
    values, indices, offsets = compress(layer.a, block)
    b_shape = tuple(int(d) for d in layer.b_shape)
    rows = layer.a.shape[0]
    graphs = []
    if layer.op == "conv":
        op, attrs = "sparse_conv", {"rows": rows, "block": block}
        out_shape = b_shape[:-2] + (rows, b_shape[-1])
    else:
        op, attrs = "sparse_matmul", {"rows": rows, "block": block, "transpose_out": 1}
        out_shape = b_shape[:-2] + (b_shape[-1], rows)
    if layer.transposed:
        swap = list(range(len(b_shape) - 2)) + [len(b_shape) - 1, len(b_shape) - 2]
        x_shape = b_shape[:-2] + (b_shape[-1], b_shape[-2])
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

