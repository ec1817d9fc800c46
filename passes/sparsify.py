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
    conv1x1(x, W, b)    ->  reshape(sparse_matmul(reshape(x, [N, C, H*W]), A = W) + b)

(a matmul of one row transposes nothing: x^T is a reshape). The IR says what was
chosen: ``sparse_matmul {rows, block}`` with its compressed arrays as constants.
`SLIMC_DEBUG=sparsify` says, per layer, what the count found and why a layer stayed dense.
Results: the sparse kernel sums the nonzeros in another order than the dense kernel, so they
differ by float rounding (the bound of a length-K dot product), not bitwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np

from slimc.ir import Graph, Node, dtypes
from slimc.ir.debug import log
from slimc.ir.graph import constant_data
from slimc.ir.ops.sparse import compress

from .pass_manager import Pass
from .rewriter import Any, Builder, Const, Match, Op, Opt, Rule, apply_rule

MAX_DENSITY = 0.5  # above this a layer stays dense without being priced
BLOCKS = (1, 4, 8, 16)  # rows per stored block (outputs sharing one input)


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


# The rule without measurements: relative cost per stored value slot (one FMA over the
# columns), and of the dense kernel per weight. CSR loads b once per FMA; blocks reuse each
# load `block` times and approach the dense kernel's FMA rate. A transposed form also pays
# a pass over x and over the result. Measured on Zen 4 with bench.sparse (see its doc).
SLOT_COST = {1: 1.0, 4: 0.5, 8: 0.4, 16: 0.38}
DENSE_COST = 0.3
TRANSPOSE_COST = 1.5


def rule_choice(layer: Layer) -> Choice:
    """The cheapest format by the fixed cost table (no measurement)."""
    s = layer.info
    dense = s.rows * s.cols * DENSE_COST
    extra = (s.rows + s.cols) * TRANSPOSE_COST if layer.transposed else 0.0
    costs = {b: s.stored[b] * b * SLOT_COST[b] + extra for b in BLOCKS}
    best = min(costs, key=costs.get)
    gain = dense / costs[best]
    if gain >= 1.2:
        return Choice(best, f"{_fmt(best)}: predicted {gain:.1f}x faster than dense")
    return Choice(None, f"dense: {_fmt(best)}, the best sparse form, is predicted "
                        f"{gain:.2f}x of dense (needs 1.2x)")


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


def _sparse_core(b: Builder, x, a: np.ndarray, block: int, name: str, transpose_out=0):
    values, indices, offsets = compress(a, block)
    return b.op("sparse_matmul", [x, b.const(values, name + ".values"),
                                  b.const(indices, name + ".indices"),
                                  b.const(offsets, name + ".offsets")],
                rows=int(a.shape[0]), block=int(block), transpose_out=transpose_out)


def _shape_const(b: Builder, shape, name: str):
    return b.const(np.asarray(shape, np.int64), name + ".shape")


def _rewrite_rows(b: Builder, x, a, block, name, bias=None):
    """x [..., M, K] @ A^T (+ bias [N]): the sparse product of transpose(x), stored
    transposed back by the kernel (a single row needs only a reshape)."""
    shape = x.type.shape
    m, k = shape[-2], shape[-1]
    lead = tuple(shape[:-2])
    if m == 1:
        xt = b.op("reshape", [x, _shape_const(b, lead + (k, 1), name + ".xt")],
                  value_name=name + ".xt")
    else:
        perm = list(range(len(shape) - 2)) + [len(shape) - 1, len(shape) - 2]
        xt = b.op("transpose", [x], perm=perm, value_name=name + ".xt")
    y = _sparse_core(b, xt, a, block, name, transpose_out=1)
    if bias is not None:
        y = b.op("add", [y, bias], value_name=name + ".biased")
    return y


@dataclass
class Sparsify(Pass):
    """The `sparsify` pass. `model` is the target's cost model (`choose(layer) -> Choice`;
    the backend gives it); without one, `rule_choice`. `force` (a block size, or "dense")
    overrides it, for tests and experiments."""

    model: Optional[object] = None
    force: object = None
    max_density: float = MAX_DENSITY
    name: str = "sparsify"
    decisions: dict = field(default_factory=dict)  # value name -> (Structure, Choice)

    def _decide(self, m: Match, op: str) -> Optional[Choice]:
        root = m.node(op)
        out = root.outputs[0]
        a = _weight_of(m, op)
        info = structure(a)
        if info.density > self.max_density:
            return None  # the common case: a dense layer, nothing to say or price
        x = m["x"].type.shape
        if op == "conv":
            b_shape = (x[0], x[1], int(np.prod(x[2:], dtype=np.int64)))
            transposed = False
        else:
            b_shape = tuple(x[:-2]) + (x[-1], x[-2])
            transposed = x[-2] != 1
        layer = Layer(out.name, op, a, b_shape, transposed,
                      lambda: _one_op_graph(root), info)
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
                                 node.outputs[0].name)

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
                                 node.outputs[0].name, bias)

        def conv(m: Match, b: Builder):
            node = m.node("conv")
            x = m["x"]
            n, c, h, w = x.type.shape
            name = node.outputs[0].name
            xr = b.op("reshape", [x, _shape_const(b, (n, c, h * w), name + ".x")],
                      value_name=name + ".x2d")
            a = _weight_of(m, "conv")
            y = _sparse_core(b, xr, a, chosen[id(node)], name)
            if "bias" in m.values:
                bias = m["bias"]
                data = constant_data(bias)
                col = b.const(data.reshape(-1, 1).astype(np.float32), bias.name + ".col") \
                    if data is not None else None
                if col is None:
                    return None
                y = b.op("add", [y, col], value_name=name + ".biased")
            return b.op("reshape", [y, _shape_const(b, (n, a.shape[0], h, w), name + ".y")])

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
        return changed


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
