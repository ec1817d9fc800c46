"""The `sparsify` pass: constant weights that are mostly zeros run on sparse kernels.

For every matmul, gemm and 1x1 convolution with constant float32 weights it counts the exact
zero structure of the weight, seen as the matrix A [outputs, inputs] of ir/ops/sparse.py:
density, empty rows and columns, and how many blocks of 4, 8 and 16 consecutive outputs at one
input hold a nonzero (a model pruned in 1x8 or 1x16 blocks fills its blocks; an unstructured
one does not). A dense weight costs that count and nothing else. Below `MAX_DENSITY` the
target's cost model (`Backend.sparse_model`: measured on this machine, or the rule of
`rule_choice`) picks CSR, a block format, or dense, and the layer becomes

    matmul(x, W)        ->  sparse_matmul(transpose(x), A = W^T) {transpose_out}
    gemm(x, W, c)       ->  the same, alpha folded into A, + beta * c (fused into the
                            sparse kernel's store)
    conv1x1(x, W, b)    ->  sparse_conv(x, A = W[O, C]) + b

(a matmul of one row transposes nothing: x^T is a reshape; one of M rows, M a multiple of
TOKEN_TILE, stores x^T as [M / 64, K, 64], `tiled`, so that each thread's tokens lie in
memory of their own; `read_tiles_as_rows` then lets a product that alone reads x^T take x's
tiles and transpose them itself, `x_rows`). The IR says what was chosen:
``sparse_matmul`` / ``sparse_conv {rows, block}`` with its compressed arrays as constants. A sparse convolution runs on NCHW images:
the layout pass keeps the convolutions around it NCHW rather than converting to and from the
blocked layout at each one.
`SLIMC_DEBUG=sparsify` says, per layer, what the count found and why a layer stayed dense.
Results: the sparse kernel sums the nonzeros in another order than the dense kernel, so they
differ by float rounding (the bound of a length-K dot product), not bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from slimc.ir import Graph, Node, dtypes
from slimc.ir.builder import add_op, infer_op
from slimc.ir.debug import log
from slimc.ir.errors import SlimcError
from slimc.ir.graph import constant_data
from slimc.ir.ops.sparse import compress, operand_shape

from .pass_manager import Pass
from .rewriter import Any, Builder, Const, Match, Op, Opt, Rule, apply_rule
from .views import compose_views

MAX_DENSITY = 0.5  # above this a layer stays dense without being priced
BLOCKS = (1, 4, 8, 16)  # rows per stored block (outputs sharing one input)
# Rows of x (tokens) per batch entry of the sparse kernel's transposed input. Threads split
# batch entries first; with x^T stored [K, M], two threads' tokens sat side by side in every
# row and each kernel paid for what the other core had just written (2 threads, 128 x 1024 @
# 1024 x 256 at 90%: 0.13 ms a call interleaved, 0.09 stored [M / 64, K, 64]; 1 thread: equal).
TOKEN_TILE = 64


@dataclass
class Structure:
    """The exact zero structure of a weight as A [rows, cols] (rows = outputs)."""

    rows: int
    cols: int
    nnz: int
    empty_rows: int
    empty_cols: int
    stored: dict  # block -> number of stored blocks

    @property
    def density(self) -> float:
        return self.nnz / max(1, self.rows * self.cols)

    def fill(self, block: int) -> float:
        """Nonzeros per stored value slot in `block` format (1.0: no zero is stored)."""
        return self.nnz / max(1, self.stored[block] * block)

    def __str__(self) -> str:
        fills = ", ".join(f"1x{b} blocks {self.fill(b):.0%} full" for b in BLOCKS if b > 1)
        return (f"A {self.rows}x{self.cols}, density {self.density:.1%}, empty rows "
                f"{self.empty_rows}, empty columns {self.empty_cols}; {fills}")


def structure(a: np.ndarray) -> Structure:
    nz = a != 0
    stored = {}
    for block in BLOCKS:
        nrb = -(-a.shape[0] // block)
        padded = np.zeros((nrb * block, a.shape[1]), bool)
        padded[:a.shape[0]] = nz
        stored[block] = int(np.any(padded.reshape(nrb, block, -1), axis=1).sum())
    return Structure(a.shape[0], a.shape[1], int(nz.sum()), int((~nz.any(axis=1)).sum()),
                     int((~nz.any(axis=0)).sum()), stored)


@dataclass
class Layer:
    """One candidate: the weight as A, the shape of the dense operand the sparse kernel reads
    ([..., K, C]), and how to build one-op graphs of its dense and sparse forms (what a
    measuring cost model times)."""

    name: str
    op: str
    a: np.ndarray
    b_shape: tuple
    transposed: bool  # the sparse form transposes x and the result (a matmul of rows > 1)
    dense_graph: Callable[[], Graph]
    info: Structure = None
    tiled: bool = False  # b's columns in tiles, read as x's rows (the kernel transposes them)

    @property
    def columns(self) -> int:
        return int(self.b_shape[-1]) * int(np.prod(self.b_shape[:-2], dtype=np.int64))


@dataclass
class Choice:
    block: Optional[int]  # None: dense
    why: str

    @property
    def sparse(self) -> bool:
        return self.block is not None


# The rule without measurements: the cost of a stored value slot (one FMA per column of b)
# relative to a dense weight, by block and by whether b's columns fill vectors ("tile") or
# not ("row": a matmul of one token, memory-bound). CSR loads b once per FMA; blocks reuse
# each load `block` times and approach the dense kernel's FMA rate; one token gathers b,
# unless the target permutes it from registers (a backend's cost model then passes its own
# table, SLOT_COST_WINDOWED). A transposed form also pays a pass over x. From bench.sparse on
# Zen 4 (AVX-512), 1 thread: CSR 90% at M = 128 runs a slot in 2.3x a dense weight's time,
# 1x8 blocks in 1.4x; at M = 1, CSR in 10x with gathers (3x with the AVX-512 window
# permutes), 1x8 blocks in about 2x (their rows' stores count at that size).
SLOT_COST = {"tile": {1: 2.3, 4: 1.6, 8: 1.4, 16: 1.3},
             "row": {1: 10.0, 4: 3.0, 8: 2.0, 16: 1.8}}
SLOT_COST_WINDOWED = {"tile": SLOT_COST["tile"], "row": {**SLOT_COST["row"], 1: 3.0}}
TRANSPOSE_COST = 4.0  # per element of x, in dense-weight units per column
MIN_GAIN = 1.2  # the rule's margin: a predicted gain below this keeps the layer dense


def regime(layer: "Layer") -> str:
    return "row" if int(layer.b_shape[-1]) < 8 else "tile"


def rule_choice(layer: Layer, table: dict = SLOT_COST) -> Choice:
    """The cheapest format by a fixed cost table (no measurement)."""
    s = layer.info
    costs = slot_costs(layer, table)
    best = min(costs, key=costs.get)
    gain = s.rows * s.cols / costs[best]
    if gain >= MIN_GAIN:
        return Choice(best, f"{_fmt(best)}: predicted {gain:.1f}x faster than dense")
    return Choice(None, f"dense: {_fmt(best)}, the best sparse form, is predicted "
                        f"{gain:.2f}x of dense (needs {MIN_GAIN}x)")


def slot_costs(layer: Layer, table: dict = SLOT_COST) -> dict:
    """Predicted cost of each sparse form, in dense-weight units (dense = rows * cols)."""
    s = layer.info
    table = table[regime(layer)]
    extra = s.cols * TRANSPOSE_COST if layer.transposed else 0.0
    return {b: s.stored[b] * b * table[b] + extra for b in BLOCKS}


def _fmt(block: Optional[int]) -> str:
    return "dense" if block is None else "CSR" if block == 1 else f"1x{block} blocks"


# ----- the rewrite ------------------------------------------------------------------------------

def _f32_const(x) -> bool:
    return x.dtype == np.float32


def _eligible_matmul(m: Match):
    x, w = m["x"], m["w"]
    if w.type.rank != 2 or x.type.rank < 2 or not x.type.is_static:
        return "the weight is not 2-D, or x is a vector or has symbolic dims"
    return True


def _eligible_gemm(m: Match):
    a = m.attrs("gemm")
    if int(a.get("trans_a", 0)) or not m["x"].type.is_static:
        return "gemm transposes its input or has symbolic dims"
    if "c" in m.values and m["c"].type.rank > 1 and m["c"].type.shape[0] != 1:
        return "gemm's c varies along the rows"
    return True


def _eligible_conv(m: Match):
    a = m.attrs("conv")
    w = m["w"].type.shape
    if len(w) != 4 or w[2:] != (1, 1) or int(a.get("group") or 1) != 1:
        return "not an ungrouped 1x1 2-D convolution"
    if any(int(s) != 1 for s in (a.get("strides") or [1, 1])) or \
            any(int(p) for p in (a.get("pads") or [0, 0, 0, 0])):
        return "strided or padded"
    if not m["x"].type.is_static:
        return "x has symbolic dims"
    return True


def _weight_of(m: Match, op: str) -> np.ndarray:
    """The layer's weight as A [outputs, inputs]."""
    w = m.data("w").astype(np.float32)
    if op == "matmul":
        return np.ascontiguousarray(w.T)
    if op == "gemm":
        a = m.attrs("gemm")
        w = w if int(a.get("trans_b", 0)) else w.T
        return np.ascontiguousarray(w * np.float32(a.get("alpha", 1.0)))
    return np.ascontiguousarray(w.reshape(w.shape[0], w.shape[1]))


def _sparse_core(b: Builder, x, a: np.ndarray, block: int, name: str, transpose_out=0,
                 tiled=0):
    values, indices, offsets = compress(a, block)
    return b.op("sparse_matmul", [x, b.const(values, name + ".values"),
                                  b.const(indices, name + ".indices"),
                                  b.const(offsets, name + ".offsets")],
                rows=int(a.shape[0]), block=int(block), transpose_out=transpose_out,
                tiled=int(tiled))


def _shape_const(b: Builder, shape, name: str):
    return b.const(np.asarray(shape, np.int64), name + ".shape")


def token_tiles(m: int) -> int:
    """How many batch entries of TOKEN_TILE rows x^T is stored in (0: as one [K, M])."""
    return m // TOKEN_TILE if m > TOKEN_TILE and m % TOKEN_TILE == 0 else 0


def _rewrite_rows(b: Builder, x, a, block, name, bias=None, transposes=None):
    """x [..., M, K] @ A^T (+ bias [N]): the sparse product of transpose(x), stored
    transposed back by the kernel (a single row needs only a reshape); M in tiles of
    TOKEN_TILE rows where it divides: x^T is then [..., M / tile, K, tile] (`tiled`), the
    result [..., M, N] as before (`read_tiles_as_rows` later lets the kernel transpose the
    tiles itself). `transposes` keeps the transposes made so far by input, so the Q, K and
    V projections of one x share one."""
    shape = x.type.shape
    m, k = shape[-2], shape[-1]
    lead = tuple(shape[:-2])
    tiles = token_tiles(m)
    if m == 1:
        xt = b.op("reshape", [x, _shape_const(b, lead + (k, 1), name + ".xt")],
                  value_name=name + ".xt")
    elif transposes is not None and id(x) in transposes:
        xt = transposes[id(x)]
    else:
        rows = x
        if tiles:
            rows = b.op("reshape", [x, _shape_const(b, lead + (tiles, TOKEN_TILE, k),
                                                   name + ".tiles")], value_name=name + ".tiles")
        r = len(rows.type.shape)
        xt = b.op("transpose", [rows], perm=list(range(r - 2)) + [r - 1, r - 2],
                  value_name=name + ".xt")
        if transposes is not None:
            transposes[id(x)] = xt
    y = _sparse_core(b, xt, a, block, name, transpose_out=1, tiled=tiles > 0)
    if bias is not None:
        y = b.op("add", [y, bias], value_name=name + ".biased")
    return y


@dataclass
class Sparsify(Pass):
    """The `sparsify` pass. `model` is the target's cost model (`choose(layer) -> Choice`;
    the backend gives it); without one, `rule_choice`. `force` (a block size: 1 or "csr" for
    CSR, 8 for 1x8 blocks...; or "dense") overrides it, for tests and experiments."""

    model: Optional[object] = None
    force: object = None
    max_density: float = MAX_DENSITY
    name: str = "sparsify"
    decisions: dict = field(default_factory=dict)  # value name -> (Structure, Choice)

    def __post_init__(self):
        if self.force is None or self.force == "dense":
            return
        block = 1 if self.force == "csr" else self.force
        if isinstance(block, bool) or not isinstance(block, (int, np.integer)) or block < 1:
            raise SlimcError(f"Sparsify(force={self.force!r}): give 'dense', 'csr' or a block "
                             f"size (a positive integer: 1 is CSR, 8 is 1x8 blocks)")
        self.force = int(block)

    def _decide(self, m: Match, op: str) -> Optional[Choice]:
        root = m.node(op)
        out = root.outputs[0]
        w = m.data("w")
        if np.count_nonzero(w) > self.max_density * w.size:
            return None  # the common case: a dense layer costs this one count, nothing more
        if w.size == 0 or 0 in m["x"].type.shape:
            return None  # empty: nothing to multiply, the dense kernel writes nothing
        a = _weight_of(m, op)
        info = structure(a)
        x = m["x"].type.shape
        tiles = 0
        if op == "conv":
            b_shape = (x[0], x[1], int(np.prod(x[2:], dtype=np.int64)))
            transposed = False
        else:
            tiles = token_tiles(x[-2])
            b_shape = tuple(x[:-2]) + ((tiles, x[-1], TOKEN_TILE) if tiles else (x[-1], x[-2]))
            transposed = x[-2] != 1
        layer = Layer(out.name, op, a, b_shape, transposed,
                      lambda: _one_op_graph(root), info, tiled=tiles > 0)
        if self.force is not None:
            block = None if self.force == "dense" else int(self.force)
            choice = Choice(block, f"{_fmt(block)}: forced")
        elif info.nnz == 0:
            choice = Choice(1, "CSR: the weight is all zeros")
        else:
            choice = (self.model.choose(layer) if self.model is not None
                      else rule_choice(layer))
        self.decisions[out.name] = (info, choice)
        log("sparsify", f"%{out.name} ({op}): {info}: {choice.why}")
        return choice

    def rules(self) -> list:
        chosen: dict = {}
        transposes: dict = {}

        def where(op, eligible):
            def check(m: Match):
                ok = eligible(m)
                if ok is not True:
                    return ok
                choice = self._decide(m, op)
                if choice is None:
                    return f"density above {self.max_density:.0%}"
                if not choice.sparse:
                    return choice.why
                chosen[id(m.node(op))] = choice.block
                return True
            return check

        def matmul(m: Match, b: Builder):
            node = m.node("matmul")
            return _rewrite_rows(b, m["x"], _weight_of(m, "matmul"), chosen[id(node)],
                                 node.outputs[0].name, transposes=transposes)

        def gemm(m: Match, b: Builder):
            node = m.node("gemm")
            bias = None
            if "c" in m.values:
                beta = np.float32(m.attrs("gemm").get("beta", 1.0))
                c = m["c"]
                n = node.outputs[0].type.shape[-1]
                data = constant_data(c)
                if data is not None:
                    bias = b.const((np.broadcast_to(data.reshape(-1), (n,)) * beta)
                                   .astype(np.float32), c.name + ".scaled")
                else:
                    return None
            return _rewrite_rows(b, m["x"], _weight_of(m, "gemm"), chosen[id(node)],
                                 node.outputs[0].name, bias, transposes)

        def conv(m: Match, b: Builder):
            node = m.node("conv")
            x = m["x"]
            name = node.outputs[0].name
            a = _weight_of(m, "conv")
            values, indices, offsets = compress(a, chosen[id(node)])
            y = b.op("sparse_conv", [x, b.const(values, name + ".values"),
                                     b.const(indices, name + ".indices"),
                                     b.const(offsets, name + ".offsets")],
                     rows=int(a.shape[0]), block=int(chosen[id(node)]))
            if "bias" in m.values:
                data = constant_data(m["bias"])
                if data is None:
                    return None
                shape = (-1,) + (1,) * (x.type.rank - 2)
                col = b.const(data.reshape(shape).astype(np.float32), m["bias"].name + ".col")
                y = b.op("add", [y, col], value_name=name + ".biased")
            return y

        return [
            Rule("sparse_matmul", Op("matmul", Any("x"), Const("w", where=_f32_const),
                                     name="matmul"),
                 matmul, where=where("matmul", _eligible_matmul),
                 doc="x @ W with a mostly-zero constant W: transpose(sparse W^T @ x^T)"),
            Rule("sparse_gemm", Op("gemm", Any("x"), Const("w", where=_f32_const),
                                   Opt(Const("c")), name="gemm"),
                 gemm, where=where("gemm", _eligible_gemm),
                 doc="gemm with a mostly-zero constant B: as matmul, alpha and beta folded"),
            Rule("sparse_conv1x1", Op("conv", Any("x"), Const("w", where=_f32_const),
                                      Opt(Const("bias")), name="conv"),
                 conv, where=where("conv", _eligible_conv),
                 doc="1x1 conv with mostly-zero weights: sparse W @ x[N, C, H*W]"),
        ]

    def run(self, graph: Graph) -> bool:
        changed = False
        rules = self.rules()
        for node in list(graph.nodes):
            if node.graph is not graph:
                continue
            for rule in rules:
                if node.op in rule.root_ops and node.outputs[0].type.dtype == dtypes.f32:
                    changed |= apply_rule(graph, rule, node)
                    break
        if changed:
            for node in list(graph.nodes):
                if node.graph is graph and node.op == "transpose":
                    sink_transpose(graph, node)
            read_tiles_as_rows(graph)
        return changed


def _transposed_constant(data: np.ndarray, rank: int) -> Optional[np.ndarray]:
    """A constant operand of an elementwise op, re-broadcast for the transposed result."""
    if data.ndim < 2:
        full = data.reshape((1,) * (rank - data.ndim) + data.shape)
        return np.ascontiguousarray(np.swapaxes(full, -1, -2)) if data.size > 1 else data
    return np.ascontiguousarray(np.swapaxes(data, -1, -2))


def _elementwise_chain(graph: Graph, v, stop: Callable[[Node], bool]):
    """(the elementwise ops from v's producer up, the node that `stop` accepts) when every
    value on the way has one use and each op one input that is not a constant; else None."""
    from slimc.ir import get_op
    from slimc.ir.registry import FusionKind

    chain = []
    while True:
        if len(v.uses) != 1 or v in graph.outputs or v.producer is None:
            return None
        node = v.producer
        if stop(node):
            return chain, node
        if get_op(node.op).fusion > FusionKind.BROADCAST or len(node.outputs) != 1:
            return None
        live = [x for x in node.inputs if x is not None and constant_data(x) is None]
        if len(live) != 1:
            return None
        chain.append(node)
        v = live[0]


def _store_order(sm: Node, y_shape, s_shape, perm) -> "tuple | str":
    """transpose(reshape(Y, s_shape), perm), Y [..., M, N] the product a sparse_matmul stores
    transposed back, read from its untransposed form Z ([..., N, M], or [..., T, N, tile] with
    the tokens in tiles) as one transpose (`compose_views`): (Z viewed as split, the
    transpose of that view), or why not. Taken only where the view's last axis is the whole
    run of tokens (of a tile) and stays last: the transpose then moves whole runs, or
    nothing. Attention's K^T ([B, H, D, S] from a [B, S, H * D] projection) is one such: no
    transpose left untiled, runs of a tile's 64 tokens when tiled."""
    b_dims = operand_shape(sm.inputs[0].type.shape, sm.attrs.get("x_rows", 0))
    z = list(b_dims[:-2]) + [sm.attrs["rows"], b_dims[-1]]
    r = len(z)
    back = [("transpose", list(range(r - 2)) + [r - 1, r - 2]), ("reshape", list(y_shape))]
    found = compose_views(z, back + [("reshape", list(s_shape)), ("transpose", perm)])
    if isinstance(found, str):
        return found
    split, order = found
    moves = order != list(range(len(order)))
    if moves and (order[-1] != len(order) - 1 or split[-1] != z[-1]):
        return "it does not keep the tokens last (it would move single values)"
    return found


def sink_transpose(graph: Graph, t: Node) -> bool:
    """transpose(reshape?(elementwise chain(sparse_matmul {transpose_out=1}))) -> the chain on
    the untransposed product: the sparse kernel then stores in the order the transpose
    wanted (a sparse FFN's hidden layer comes out as the next layer's transposed input, with
    its bias and GELU fused into the store) and the transpose is gone, or (attention's K^T,
    tokens in tiles) left moving whole runs of a tile's tokens. `_store_order` says which
    reshapes and transposes qualify."""
    start, view = t.inputs[0], None
    if start.producer is not None and start.producer.op == "reshape" and \
            len(start.uses) == 1 and start not in graph.outputs:
        view = start.producer
        start = view.inputs[0]
    found = _elementwise_chain(graph, start, lambda n: n.op == "sparse_matmul" and
                               int(n.attrs.get("transpose_out", 0)))
    if found is None:
        return False
    chain, sm = found
    s_shape = (view.outputs[0] if view is not None else start).type.shape
    perm = list(t.attrs.get("perm") or range(len(s_shape))[::-1])
    order = _store_order(sm, start.type.shape, s_shape, perm)
    if isinstance(order, str):
        log("sparsify", f"%{sm.outputs[0].name}: stored transposed back, the transpose to "
                        f"%{t.outputs[0].name} stays: {order}")
        return False
    tiled = bool(sm.attrs.get("tiled", 0))
    rank = len(start.type.shape) + tiled  # the untransposed product's
    for n in chain:
        for x in n.inputs:
            data = constant_data(x) if x is not None else None
            if data is None or data.size == 1:
                continue
            if data.ndim > rank or (tiled and any(d != 1 for d in data.shape[:-1])):
                return False  # (tiled: a constant that varies along the tokens)
    for n in chain:
        for i, x in enumerate(n.inputs):
            data = constant_data(x) if x is not None else None
            if data is not None and data.size > 1:
                n.set_input(i, graph.add_constant(x.name + ".t", _transposed_constant(data, rank)))
    out = t.outputs[0]
    sm.attrs["transpose_out"] = 0
    sm.attrs["tiled"] = 0
    for n in [sm] + chain[::-1]:  # the product and the chain take its untransposed shape
        for v, type_ in zip(n.outputs, infer_op(n.op, n.inputs, n.attrs, n.label)):
            v.type = type_
    shape, perm = order
    v = start
    at = dict(name=t.name, before=t, label=t.label)
    if perm == list(range(len(perm))):
        shape = v.type.shape  # no transpose: Z itself, reshaped below if need be
    if tuple(shape) != tuple(v.type.shape):
        v = add_op(graph, "reshape", [v, graph.add_constant(out.name + ".view.shape", np.asarray(
            shape, np.int64))], output_name=out.name + ".view", **at).outputs[0]
    if perm != list(range(len(perm))):
        v = add_op(graph, "transpose", [v], {"perm": perm}, output_name=out.name + ".runs",
                   **at).outputs[0]
    if v.type.shape != out.type.shape:
        v = add_op(graph, "reshape", [v, graph.add_constant(out.name + ".shape", np.asarray(
            out.type.shape, np.int64))], output_name=out.name + ".out", **at).outputs[0]
    out.replace_all_uses_with(v)
    graph.remove_node(t)
    if view is not None:
        graph.remove_node(view)
    graph.rename(v, out.name)  # the transpose's result keeps its name (a graph output's too)
    log("sparsify", f"%{sm.outputs[0].name}: stored untransposed, the transpose after "
                    f"{len(chain)} elementwise op(s) "
                    f"{'removed' if perm == list(range(len(perm))) else 'moves runs of tokens'}")
    return True


def read_tiles_as_rows(graph: Graph) -> None:
    """sparse_matmul(transpose(x's tiles [..., tiles, TOKEN_TILE, K])) -> sparse_matmul(the
    tiles) {x_rows}, where that product is the transpose's only reader: each thread
    transposes the tiles it works on into scratch of its own, in cache, instead of a kernel
    before it writing x^T to memory and the product reading it back. A transpose that
    several products read (attention's Q, K and V projections) stays: one pass over x
    rather than one per product. Runs after `sink_transpose`, which takes a transpose that a
    product can store for instead."""
    for sm in list(graph.nodes):
        if sm.op != "sparse_matmul" or sm.attrs.get("x_rows", 0):
            continue
        t = sm.inputs[0].producer
        if t is None or t.op != "transpose" or len(t.outputs[0].uses) != 1:
            continue  # (a transpose that Q, K and V read stays: one pass, not three)
        r = len(t.inputs[0].type.shape)
        if list(t.attrs["perm"]) != list(range(r - 2)) + [r - 1, r - 2] or r < 3 or \
                t.inputs[0].type.shape[-2] != TOKEN_TILE:
            continue
        sm.set_input(0, t.inputs[0])
        sm.attrs["x_rows"] = 1
        if t.outputs[0] not in graph.outputs:
            graph.remove_node(t)


def _one_op_graph(node: Node) -> Graph:
    """The node alone in a graph of its own (its constants copied): what a cost model times
    as the dense form."""
    g = Graph("dense_layer")
    inputs = []
    for i, v in enumerate(node.inputs):
        if v is None:
            inputs.append(None)
        elif constant_data(v) is not None:
            inputs.append(g.add_constant(v.name, constant_data(v)))
        else:
            inputs.append(g.add_input(f"in{i}", v.type))
    out = g.make_node(node.op, inputs, dict(node.attrs), [v.type for v in node.outputs],
                      [v.name for v in node.outputs])
    g.outputs.extend(out.outputs)
    return g
