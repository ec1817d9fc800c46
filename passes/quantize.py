"""Quantization: a float graph plus calibration statistics in, a quantized graph out.

The result is ordinary IR (explicit ``quantize`` / ``conv_integer`` / ``matmul_integer`` /
``dequantize`` ops, see ir/ops/quant.py), so it prints, parses, runs in the interpreter and
compiles. The numerics:

* weights: int8, symmetric (zero point 0), per output channel: ``scale = max|w| / 127``
  (a zero channel gets 1), values in [-127, 127] so ``-128`` never appears and a weight's
  negation stays representable;
* activations, static: uint8, asymmetric, per tensor, the range from calibration statistics
  (`ActivationStats`, `activation_range`: min/max, a percentile of ``|x|``, or the threshold
  minimizing the KL divergence over a 2048-bin histogram as TensorRT and onnxruntime do);
* activations, dynamic: ``dynamic_quantize(x) {per_row=1}`` at run time, one scale and
  zero point per row (per token);
* int32 accumulation, one ``dequantize`` by the product of the two scales (folded into one
  constant), then the float bias.

This module holds the numbers and the rewrite; slimc/quantize.py runs the calibration data
through the interpreter, decides which layers stay float and writes the report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np

from slimc.ir import Graph, Value
from slimc.ir.builder import add_op

from .pass_manager import Pass

HIST_BINS = 2048
METHODS = ("minmax", "percentile", "entropy")


# ----- which layers ---------------------------------------------------------------------------

@dataclass
class Layer:
    """One conv / matmul / gemm with a constant weight, ready to quantize: its weight already
    in the integer op's layout (conv ``[M, C/g, kh, kw]``, matmul ``[K, N]``: a gemm's
    ``trans_b`` and ``alpha`` are applied here), its bias as float data shaped to broadcast over
    the output (``[M, 1, 1]`` for NCHW, ``[N]`` or ``[M, N]`` for a matmul)."""

    name: str          # the node as the source model calls it
    op: str            # conv, matmul or gemm
    x: str             # the float activation input's value name
    out: str           # the float output's value name
    weight: np.ndarray  # float32, integer-op layout
    bias: Optional[np.ndarray] = None
    attrs: dict = field(default_factory=dict)  # conv attributes

    @property
    def channel_axis(self) -> int:
        """The weight's output-channel axis: 0 for a conv's [M, ...], 1 for a matmul's [K, N]."""
        return 0 if self.op == "conv" else 1


def _const(v: Optional[Value]) -> Optional[np.ndarray]:
    return v.data if v is not None and v.is_constant and v.data is not None else None


def _why_not_float32(node) -> Optional[str]:
    for v in node.inputs[:2] + node.outputs:
        if v is not None and v.type.dtype.name != "f32":
            return f"%{v.name} is {v.type}, not f32"
    return None


def _conv_layer(node) -> "Layer | str":
    x, w = node.inputs[0], node.inputs[1]
    if x.type.rank != 4:
        return f"a {x.type.rank - 2}-D convolution (only 2-D ones are quantized)"
    wd = _const(w)
    if wd is None:
        return f"its weight %{w.name} is not a constant"
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    bd = _const(bias)
    if bias is not None and bd is None:
        return f"its bias %{bias.name} is not a constant"
    bd = None if bd is None else bd.astype(np.float32).reshape(-1, 1, 1)
    return Layer(node.label, "conv", x.name, node.output.name, wd.astype(np.float32), bd,
                 dict(node.attrs))


def _matmul_layer(node) -> "Layer | str":
    a, b = node.inputs[0], node.inputs[1]
    bd = _const(b)
    if bd is None:
        if _const(a) is not None:
            return "its constant operand is the left one (only x @ W is quantized)"
        return "no constant weight (neither operand is a constant)"
    if bd.ndim != 2 or a.type.rank < 2:
        return f"operands {a.type} @ {b.type}: the weight must be 2-D and x at least 2-D"
    return Layer(node.label, "matmul", a.name, node.output.name, bd.astype(np.float32))


def _gemm_layer(node) -> "Layer | str":
    a, b = node.inputs[0], node.inputs[1]
    attrs = node.attrs
    bd = _const(b)
    if bd is None:
        return f"its weight %{b.name} is not a constant"
    if attrs.get("trans_a", 0):
        return "trans_a=1 (the activation would need a transpose first)"
    w = (bd.T if attrs.get("trans_b", 0) else bd).astype(np.float64) * attrs.get("alpha", 1.0)
    c = node.inputs[2] if len(node.inputs) > 2 else None
    cd = _const(c)
    if c is not None and cd is None:
        return f"its bias %{c.name} is not a constant"
    beta = attrs.get("beta", 1.0)
    bias = None if cd is None else (cd.astype(np.float64) * beta).astype(np.float32)
    return Layer(node.label, "gemm", a.name, node.output.name, w.astype(np.float32), bias)


_FINDERS = {"conv": _conv_layer, "matmul": _matmul_layer, "gemm": _gemm_layer}


def find_layers(graph: Graph, ops: Sequence[str] = ("conv", "matmul", "gemm")):
    """Every candidate layer in graph order: a list of `Layer` or, for one that cannot be
    quantized, ``(name, op, reason)``."""
    found = []
    for node in graph.nodes:
        if node.op not in ops:
            continue
        why = _why_not_float32(node)
        layer = why if why else _FINDERS[node.op](node)
        found.append((node.label, node.op, layer) if isinstance(layer, str) else layer)
    return found


# ----- weights --------------------------------------------------------------------------------

def quantize_weight(w: np.ndarray, axis: int, per_channel: bool = True):
    """(int8 weight, float32 scale): symmetric, ``scale = max|w| / 127`` per channel along
    `axis` (or over the whole tensor); a zero channel (or one so small its scale would be
    denormal) gets scale 1. The scale is a vector over the
    channels (size 1 per tensor)."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=other) if per_channel else np.abs(w).max(keepdims=True).reshape(1)
    scale = (amax / np.float32(127)).astype(np.float32)
    scale = np.where(scale >= np.finfo(np.float32).tiny, scale, np.float32(1)).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = scale.size
    q = np.clip(np.rint(w / scale.reshape(shape)), -127, 127).astype(np.int8)
    return q, scale


# ----- activation statistics ------------------------------------------------------------------

class ActivationStats:
    """Running statistics of one float tensor over the calibration data: its min and max and
    a `HIST_BINS`-bin histogram of the nonzero ``|x|`` over ``[0, amax]``. Exact zeros are
    left out: 0 is always in the range and quantizes exactly, whatever the threshold, and a
    ReLU's half of zeros in the first bin would drag the entropy threshold down (merging that
    spike with its neighbours dominates the KL divergence). The histogram's range grows with
    the data (old counts re-binned by their bin centres, as onnxruntime's collector does), so
    one pass over the data suffices."""

    def __init__(self, bins: int = HIST_BINS):
        self.lo, self.hi = np.inf, -np.inf
        self.hist = np.zeros(bins, np.int64)
        self.top = 0.0  # the histogram covers [0, top]

    def add(self, x: np.ndarray) -> None:
        x = np.asarray(x, np.float32).reshape(-1)
        x = x[np.isfinite(x)]
        if not x.size:
            return
        self.lo, self.hi = min(self.lo, float(x.min())), max(self.hi, float(x.max()))
        a = np.abs(x[x != 0])
        if not a.size:
            return
        amax = float(a.max())
        if amax > self.top:
            self._grow(amax)
        if self.top > 0:
            idx = np.minimum((a.astype(np.float64) / self.top * len(self.hist)).astype(np.int64),
                             len(self.hist) - 1)
            self.hist += np.bincount(idx, minlength=len(self.hist))
        else:
            self.hist[0] += a.size

    def _grow(self, top: float) -> None:
        bins = len(self.hist)
        if self.top > 0 and self.hist.any():
            centres = (np.arange(bins) + 0.5) * (self.top / bins)
            idx = np.minimum((centres / top * bins).astype(np.int64), bins - 1)
            self.hist = np.bincount(idx, weights=self.hist, minlength=bins).astype(np.int64)
        self.top = top

    @property
    def seen(self) -> bool:
        return self.hi >= self.lo


def percentile_threshold(stats: ActivationStats, percentile: float) -> float:
    """The `percentile` of ``|x|`` (the upper edge of the bin where the cumulative count
    reaches it)."""
    cdf = np.cumsum(stats.hist) / max(stats.hist.sum(), 1)
    i = int(np.searchsorted(cdf, percentile / 100.0))
    return min(i + 1, len(stats.hist)) * stats.top / len(stats.hist)


def entropy_threshold(stats: ActivationStats, levels: int) -> float:
    """The clipping threshold of ``|x|`` that minimizes KL(P || Q), P the histogram clipped at
    the threshold (outliers added to its last bin), Q P merged into `levels` quantization
    levels and expanded back over P's non-empty bins (TensorRT's calibration)."""
    hist = stats.hist.astype(np.float64)
    bins = len(hist)
    if stats.top == 0 or hist.sum() == 0 or bins <= levels:
        return stats.top
    if np.count_nonzero(hist) <= levels:
        # fewer distinct magnitudes than levels (an image's 17 grey values): clipping gains
        # nothing, and a threshold past the first spike would score a perfect KL of 0
        return stats.top
    best, best_i = np.inf, bins
    suffix = np.cumsum(hist[::-1])[::-1]
    for i in range(levels, bins + 1):
        p = hist[:i].copy()
        if i < bins:
            p[-1] += suffix[i]
        nz = p > 0
        if np.count_nonzero(nz) < 2:
            continue  # one bin: P and Q agree trivially, whatever is clipped
        groups = np.minimum((np.arange(i) * levels) // i, levels - 1)
        sums = np.bincount(groups, weights=hist[:i], minlength=levels)
        counts = np.bincount(groups, weights=(hist[:i] > 0), minlength=levels)
        q = np.where(hist[:i] > 0, sums[groups] / np.maximum(counts[groups], 1), 0.0)
        ps, qs = p.sum(), q.sum()
        if qs == 0:
            continue
        pn, qn = p[nz] / ps, q[nz] / qs
        kl = np.inf if (qn == 0).any() else float(np.sum(pn * np.log(pn / qn)))
        if kl <= best:  # ties go to the wider range: it clips less
            best, best_i = kl, i
    return best_i * stats.top / bins


def activation_range(stats: ActivationStats, method: str, percentile: float = 99.99):
    """(lo, hi), always containing 0 so that 0 is exact (padding, ReLU's zeros)."""
    if method == "minmax":
        lo, hi = stats.lo, stats.hi
    else:
        if method == "percentile":
            t = percentile_threshold(stats, percentile)
        else:  # entropy: u8 over [0, t] has 255 levels; a signed range [-t, t] half as many
            t = entropy_threshold(stats, 255 if stats.lo >= 0 else 128)
        lo, hi = max(stats.lo, -t), min(stats.hi, t)
    return min(lo, 0.0), max(hi, 0.0)


def uint8_params(lo: float, hi: float):
    """(scale, zero point) mapping [lo, hi] (which holds 0) onto 0..255. An empty range, or one
    whose scale would be denormal (compiled code flushes denormals to zero), gets scale 1."""
    scale = np.float32((hi - lo) / 255.0)
    if not scale >= np.finfo(np.float32).tiny:
        scale = np.float32(1.0)
    zp = np.uint8(np.clip(np.rint(-lo / float(scale)), 0, 255))
    return scale, zp


# ----- the rewrite ----------------------------------------------------------------------------

@dataclass
class Plan:
    """How to quantize one layer: its `Layer`, and for static mode the activation's u8
    scale and zero point (None: dynamic, per row at run time)."""

    layer: Layer
    x_scale: Optional[np.float32] = None
    x_zero_point: Optional[np.uint8] = None
    per_channel: bool = True

    @property
    def dynamic(self) -> bool:
        return self.x_scale is None


def _quantized_input(graph: Graph, plan: Plan, x: Value, before, cache: dict) -> tuple:
    """The quantized activation: ``(q, zp, row scale)``; one quantize (or dynamic_quantize)
    per input value and parameters, shared by every layer that reads it."""
    key = (x.name, None if plan.dynamic else (float(plan.x_scale), int(plan.x_zero_point)))
    if key in cache:
        return cache[key]
    if plan.dynamic:
        node = add_op(graph, "dynamic_quantize", [x], {"per_row": 1}, name=plan.layer.name,
                      output_name=f"{x.name}.q", before=before)
        q, scale, zp = node.outputs
        for v, suffix in ((scale, "q_scale"), (zp, "q_zp")):
            graph.rename(v, graph.unique_name(f"{x.name}.{suffix}"))
        cache[key] = (q, zp, scale)
    else:
        zp = graph.add_constant(f"{x.name}.zp", np.asarray(plan.x_zero_point, np.uint8))
        s = graph.add_constant(f"{x.name}.scale", np.asarray(plan.x_scale, np.float32))
        q = add_op(graph, "quantize", [x, s, zp], name=plan.layer.name,
                   output_name=f"{x.name}.q", before=before).output
        cache[key] = (q, zp, None)
    return cache[key]


def emit_layer(graph: Graph, plan: Plan, x: Value, before, cache: dict) -> Value:
    """The quantized layer's float output, its nodes inserted before `before`:
    quantize -> conv_integer / matmul_integer -> dequantize (by s_x * s_w) -> + bias, or the
    dynamic chain dynamic_quantize -> matmul_integer -> dequantize (row scale) -> * s_w."""
    layer = plan.layer
    axis = layer.channel_axis
    wq, ws = quantize_weight(layer.weight, axis, plan.per_channel)
    q, zp, row_scale = _quantized_input(graph, plan, x, before, cache)
    w = graph.add_constant(f"{layer.out}.w_i8", wq)
    name, base = layer.name, layer.out

    def op(kind, inputs, attrs=None, suffix=""):
        return add_op(graph, kind, inputs, attrs, name=name, output_name=f"{base}.{suffix}",
                      before=before).output

    if layer.op == "conv":
        acc = op("conv_integer", [q, w, zp], layer.attrs, "acc")
        ws = ws.reshape(-1, 1, 1)
    else:
        acc = op("matmul_integer", [q, w, zp], None, "acc")
    if plan.dynamic:
        y = op("dequantize", [acc, row_scale], None, "deq")
        y = op("mul", [y, graph.add_constant(f"{base}.w_scale", ws)], None, "scaled")
    else:
        scale = (np.float32(plan.x_scale) * ws).astype(np.float32)
        y = op("dequantize", [acc, graph.add_constant(f"{base}.scale", scale)], None, "deq")
    if layer.bias is not None:
        y = op("add", [y, graph.add_constant(f"{base}.bias", layer.bias)], None, "biased")
    return y


def rewrite(graph: Graph, plans: Sequence[Plan]) -> bool:
    """Replace each planned layer by its quantized chain; the new output takes the old one's
    name, so the graph's outputs and later nodes read as before."""
    producers = {v.name: n for n in graph.nodes for v in n.outputs}
    cache: dict = {}
    for plan in plans:
        node = producers[plan.layer.out]
        old = node.output
        # the input as the node reads it now: an earlier rewrite may have replaced it (a
        # quantized layer feeding this one) by its new value of the same name
        x = next(v for v in node.inputs if v is not None and v.name == plan.layer.x)
        new = emit_layer(graph, plan, x, node, cache)
        old.replace_all_uses_with(new)
        graph.remove_node(node)
        graph.rename(new, old.name)
    for c in [c for c in graph.constants.values() if not c.uses and c not in graph.outputs]:
        graph.remove_constant(c)  # the float weights
    return bool(plans)


# ----- embedding tables ------------------------------------------------------------------------

EMBEDDING_MIN_SIZE = 1 << 16  # smaller tables stay float (too small to matter in the artifact)


def find_embeddings(graph: Graph, min_size: int = EMBEDDING_MIN_SIZE) -> list:
    """`gather` nodes reading rows of a constant float32 table [V, D] of at least `min_size`
    values: a transformer's token and position embeddings, most of its weights by size."""
    found = []
    for node in graph.nodes:
        if node.op != "gather" or int(node.attrs.get("axis", 0)) != 0:
            continue
        table = _const(node.inputs[0])
        if table is not None and table.ndim == 2 and table.dtype == np.float32 and \
                table.size >= min_size:
            found.append(node)
    return found


def quantize_embeddings(graph: Graph, nodes: Sequence) -> list:
    """Weight-only int8 for each embedding gather: ``dequantize(gather(table_i8, ids),
    gather(row_scales, ids))``, symmetric per row (the rows are what a gather reads, so each
    looked-up vector carries its own scale). Returns (node name, (min, max) scale, output
    name) per table. The
    float table goes once nothing else reads it (a tied LM head quantizes its own copy)."""
    done = []
    for node in nodes:
        table = node.inputs[0]
        ids = node.inputs[1]
        q, scale = quantize_weight(table.data, 0)
        name = node.name or node.output.name
        base = node.output.name
        tq = graph.add_constant(f"{table.name}.i8", q)
        ts = graph.add_constant(f"{table.name}.row_scale", scale.reshape(-1, 1))
        rows = add_op(graph, "gather", [tq, ids], {"axis": 0}, name=name,
                      output_name=f"{base}.q", before=node).output
        scales = add_op(graph, "gather", [ts, ids], {"axis": 0}, name=name,
                        output_name=f"{base}.scale", before=node).output
        new = add_op(graph, "dequantize", [rows, scales], name=name, output_name=f"{base}.deq",
                     before=node).output
        old = node.output
        old.replace_all_uses_with(new)
        graph.remove_node(node)
        graph.rename(new, old.name)
        if not table.uses and table not in graph.outputs:
            graph.remove_constant(table)
        done.append((name, (float(scale.min()), float(scale.max())), old.name))
    return done


class QuantizeEmbeddings(Pass):
    """`quantize_embeddings` on every table `find_embeddings` finds; `done` lists them."""

    name = "quantize_embeddings"

    def __init__(self, min_size: int = EMBEDDING_MIN_SIZE):
        self.min_size = min_size
        self.done: list = []

    def run(self, graph: Graph) -> bool:
        self.done = quantize_embeddings(graph, find_embeddings(graph, self.min_size))
        return bool(self.done)


class Quantize(Pass):
    """The rewrite as a pass, for a PassManager (verification, dumps): its plans come from
    `slimc.quantize`'s calibration."""

    name = "quantize"

    def __init__(self, plans: Sequence[Plan] = ()):
        self.plans = list(plans)

    def run(self, graph: Graph) -> bool:
        return rewrite(graph, self.plans)
