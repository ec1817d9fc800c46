"""`slimc.quantize`: a float model and calibration data in, an int8 slimc Graph and a report out.

The steps: import the model as `compile` does and run the standard float pipeline up to
folding (batch norms are in the conv weights before those are quantized); find the conv /
matmul / gemm layers with constant weights (passes/quantize.py `find_layers`); run the
calibration data through the interpreter to collect each layer input's statistics (static
mode); measure each layer quantized alone against float32 (its "alone" SQNR, which
``keep_sensitive`` compares against); rewrite (passes/quantize.py `rewrite`) and measure the
quantized graph against the float one, layer output by layer output, on the same data.

Every measurement runs `slimc.interpret`: the CPU kernels for the integer ops may not exist
yet, and the interpreter's references define the int8 semantics exactly.
"""

from __future__ import annotations

import difflib
import math
import numbers
import sys
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Optional, Sequence

import numpy as np

from slimc.ir import Graph, InputError, SlimcError, interpret
from slimc.ir.debug import log
from slimc.ir.interpreter import check_arrays, input_specs, order_inputs
from slimc.compiler import simplified_graph
from slimc.passes import PassManager
from slimc.passes.quantize import (METHODS, ActivationStats, Layer, Plan, Quantize,
                                   QuantizeEmbeddings, activation_range, emit_layer, find_layers,
                                   quantize_weight, uint8_params)

MODES = ("static", "dynamic")


# ----- the report -----------------------------------------------------------------------------

@dataclass
class LayerReport:
    """One candidate layer: what was done to it and what it costs in accuracy. SQNRs are in dB
    over the calibration data: `sqnr_alone` with only this layer quantized (its float input
    exact), `sqnr` at its output in the returned graph (every earlier layer's error included)."""

    name: str
    op: str
    quantized: bool
    reason: str = ""  # why it stayed float
    weight_scale: Optional[tuple] = None  # (min, max) over the output channels
    act_scale: Optional[float] = None  # static; None: dynamic per row, or float
    act_zero_point: Optional[int] = None
    sqnr_alone: Optional[float] = None
    sqnr: Optional[float] = None


@dataclass
class QuantizationReport:
    mode: str
    method: str
    samples: int
    layers: list = field(default_factory=list)
    outputs: dict = field(default_factory=dict)  # graph output -> SQNR (dB) vs float32
    note: str = ""

    @property
    def quantized(self) -> list:
        return [r for r in self.layers if r.quantized]

    def __str__(self) -> str:
        head = (f"slimc.quantize: mode={self.mode}"
                + (f", method={self.method}" if self.mode == "static" else "")
                + f", {self.samples} calibration sample(s); {len(self.quantized)} of "
                f"{len(self.layers)} layers quantized")
        lines = [head]
        if self.note:
            lines.append(self.note)
        if self.layers:
            lines.append(f"{'layer':<24} {'op':<7} {'weight scale':<21} {'act scale':>10} "
                         f"{'zp':>4} {'alone dB':>9} {'dB':>7}  status")
            lines += [_row(r) for r in self.layers]
        for name, db in self.outputs.items():
            lines.append(f"output %{name}: SQNR {_db(db)} dB against float32")
        return "\n".join(lines)


def _db(x: Optional[float]) -> str:
    return "-" if x is None else "inf" if math.isinf(x) else f"{x:.1f}"


def _row(r: LayerReport) -> str:
    ws = "-" if r.weight_scale is None else f"{r.weight_scale[0]:.2e}..{r.weight_scale[1]:.2e}"
    act = "-" if r.act_scale is None else f"{r.act_scale:.3e}"
    if r.quantized and r.act_scale is None:
        act = "per row"
    zp = "-" if r.act_zero_point is None else str(r.act_zero_point)
    status = "int8" if r.quantized else f"float: {r.reason}"
    name = r.name if len(r.name) <= 24 else "…" + r.name[-23:]
    return (f"{name:<24} {r.op:<7} {ws:<21} {act:>10} {zp:>4} {_db(r.sqnr_alone):>9} "
            f"{_db(r.sqnr):>7}  {status}")


# ----- calibration data -----------------------------------------------------------------------

def _samples(graph: Graph, calibration) -> list:
    """The calibration data as checked positional input lists: an input of the wrong shape or
    dtype is an InputError naming it and the sample."""
    if calibration is None:
        return []
    if isinstance(calibration, Mapping) or isinstance(calibration, np.ndarray):
        calibration = [calibration]  # one sample given bare
    specs = input_specs(graph)
    names = [s[0] for s in specs]
    out = []
    for i, sample in enumerate(calibration):
        if isinstance(sample, Mapping):
            arrays = order_inputs(names, (), dict(sample))
        elif isinstance(sample, np.ndarray):
            arrays = [sample]
        else:
            arrays = list(sample)
        try:
            out.append(check_arrays(specs, arrays, f"graph @{graph.name}"))
        except InputError as e:
            raise InputError(f"calibration sample {i}: {e}") from None
    return out


def _progress(items: Sequence, what: str):
    """`items`, with a one-line progress bar on stderr when it is a terminal."""
    tty = hasattr(sys.stderr, "isatty") and sys.stderr.isatty()
    n = len(items)
    for i, item in enumerate(items, 1):
        yield item
        if tty:
            bar = "#" * (24 * i // max(n, 1))
            sys.stderr.write(f"\r{what} [{bar:<24}] {i}/{n}")
            sys.stderr.flush()
    if tty and n:
        sys.stderr.write("\n")


def _probe(graph: Graph, names: Sequence[str]) -> Graph:
    """A copy of `graph` whose outputs are the values called `names`."""
    g = graph.clone()
    values = {v.name: v for v in g.values()}
    g.outputs = [values[n] for n in names]
    return g


class _Sqnr:
    """Signal and noise energies summed over the calibration data, per name."""

    def __init__(self):
        self.signal: dict = {}
        self.noise: dict = {}

    def add(self, name: str, ref: np.ndarray, got: np.ndarray) -> None:
        ref64 = ref.astype(np.float64)
        self.signal[name] = self.signal.get(name, 0.0) + float(np.sum(ref64 ** 2))
        self.noise[name] = self.noise.get(name, 0.0) + float(np.sum((ref64 - got) ** 2))

    def db(self, name: str) -> Optional[float]:
        if name not in self.signal:
            return None
        s, n = self.signal[name], self.noise[name]
        if n == 0:
            return math.inf
        return 10 * math.log10(s / n) if s > 0 else -math.inf


# ----- the steps ------------------------------------------------------------------------------

def _collect(graph: Graph, layers: Sequence[Layer], samples: list) -> dict:
    """Each layer input's statistics over the calibration data."""
    names = list(dict.fromkeys(layer.x for layer in layers))
    probe = _probe(graph, names)
    stats = {n: ActivationStats() for n in names}
    for arrays in _progress(samples, "calibrating"):
        for n, value in zip(names, interpret(probe, *arrays)):
            stats[n].add(value)
    return stats


def _measure_alone(graph: Graph, plans: Sequence[Plan], samples: list) -> _Sqnr:
    """Each planned layer quantized alone, on its exact float input: one shadow graph holds
    the float model and a quantized copy of every layer beside it."""
    shadow = graph.clone()
    values = {v.name: v for v in shadow.values()}
    producers = {v.name: n for n in shadow.nodes for v in n.outputs}
    pairs, cache = [], {}
    for plan in plans:
        copy = emit_layer(shadow, plan, values[plan.layer.x], producers[plan.layer.out], cache)
        pairs.append((plan.layer.out, values[plan.layer.out], copy))
    shadow.outputs = [v for _, ref, got in pairs for v in (ref, got)]
    sqnr = _Sqnr()
    for arrays in _progress(samples, "measuring layers"):
        outs = interpret(shadow, *arrays)
        for k, (name, _, _) in enumerate(pairs):
            sqnr.add(name, outs[2 * k], outs[2 * k + 1])
    return sqnr


def _measure_graph(float_graph: Graph, quant: Graph, names: Sequence[str], samples: list) -> _Sqnr:
    """The quantized graph against the float one at the values called `names`."""
    ref, got = _probe(float_graph, names), _probe(quant, names)
    sqnr = _Sqnr()
    for arrays in _progress(samples, "measuring graph"):
        for n, r, g in zip(names, interpret(ref, *arrays), interpret(got, *arrays)):
            sqnr.add(n, r, g)
    return sqnr


def _check_options(mode, method, percentile, keep_sensitive, calibration):
    if mode not in MODES:
        raise SlimcError(f"quantize: mode must be one of {MODES}, got {mode!r}")
    if method not in METHODS:
        raise SlimcError(f"quantize: method must be one of {METHODS}, got {method!r}")
    if not 0 < percentile <= 100:
        raise SlimcError(f"quantize: percentile must be in (0, 100], got {percentile!r}")
    if keep_sensitive is not None and (isinstance(keep_sensitive, bool) or
                                       not isinstance(keep_sensitive, numbers.Real)):
        raise InputError(f"quantize: keep_sensitive is an SQNR threshold in dB (a number such "
                         f"as 30), got {keep_sensitive!r}")
    if keep_sensitive is not None and calibration is None:
        raise SlimcError("quantize: keep_sensitive needs calibration data to measure each "
                         "layer's SQNR on")


def _exclusions(found: list, exclude) -> set:
    """The names `exclude` gives (one name may come as a plain str), each checked against the
    candidate layers: a name that matches none (a typo) would otherwise leave the layer it
    meant quantized without a word."""
    names = [exclude] if isinstance(exclude, str) else list(exclude or ())
    known = []
    for item in found:
        known += [item.name, item.out] if isinstance(item, Layer) else [item[0]]
    unknown = [n for n in names if n not in known]
    if unknown:
        close = difflib.get_close_matches(str(unknown[0]), known, n=3)
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
        shown = ", ".join(repr(k) for k in dict.fromkeys(known[:20])) or "none"
        more = ", ..." if len(known) > 20 else ""
        raise InputError(f"quantize: exclude={unknown}: no conv, matmul or gemm layer has that "
                         f"name{hint} (layers, by node or output name: {shown}{more})")
    return set(names)


def _select(found: list, mode: str, exclude: set) -> tuple:
    """(layers to quantize, reports of those that stay float) before any measurement."""
    layers, kept = [], []
    for item in found:
        if not isinstance(item, Layer):
            kept.append(LayerReport(item[0], item[1], False, item[2]))
        elif item.name in exclude or item.out in exclude:
            kept.append(LayerReport(item.name, item.op, False, "excluded by the caller"))
        elif mode == "dynamic" and item.op == "conv":
            kept.append(LayerReport(item.name, item.op, False,
                                    "dynamic mode quantizes matmul and gemm layers only"))
        else:
            layers.append(item)
    return layers, kept


def _plan(layer: Layer, mode: str, stats: dict, method: str, percentile: float,
          per_channel: bool) -> Plan:
    if mode == "dynamic":
        return Plan(layer, per_channel=per_channel)
    s = stats[layer.x]
    if not s.seen:
        raise SlimcError(f"quantize: layer {layer.name!r} ({layer.op}): its input %{layer.x} "
                         f"held no finite value over the calibration data")
    scale, zp = uint8_params(*activation_range(s, method, percentile))
    return Plan(layer, scale, zp, per_channel)


def _layer_report(plan: Plan, alone: Optional[_Sqnr]) -> LayerReport:
    layer = plan.layer
    _, ws = quantize_weight(layer.weight, layer.channel_axis, plan.per_channel)
    return LayerReport(layer.name, layer.op, True, weight_scale=(float(ws.min()), float(ws.max())),
                       act_scale=None if plan.dynamic else float(plan.x_scale),
                       act_zero_point=None if plan.dynamic else int(plan.x_zero_point),
                       sqnr_alone=alone.db(layer.out) if alone else None)


def quantize(model, calibration: Optional[Iterable] = None, *, mode: str = "static",
             method: str = "percentile", percentile: float = 99.99, per_channel: bool = True,
             exclude: "str | Sequence[str]" = (), keep_sensitive: Optional[float] = None,
             embeddings: bool = True, report: bool = False):
    """Quantize a float model to int8: a `slimc.Graph` of explicit quantize / integer-op /
    dequantize nodes (with ``report=True``, ``(graph, QuantizationReport)``).

    `model` is anything `slimc.compile` takes. `calibration` is an iterable of samples, each a
    tuple of input arrays or a ``{name: array}`` dict; ``mode="static"`` needs it (activation
    ranges by `method`: "minmax", "percentile" of ``|x|`` or "entropy"), ``mode="dynamic"``
    quantizes matmul / gemm activations per row at run time and uses calibration data only to
    measure. Layers named in `exclude` (one name, or a list of names; an unknown one is an
    InputError), and with `keep_sensitive` (dB) those whose SQNR when quantized alone is
    below it, stay float32; the report says why for each. With
    `embeddings`, large embedding tables (gathers of constant rows) are stored as int8 with a
    scale per row, dequantized as they are read (weight-only: their lookups stay exact
    up to the rounding of the table)."""
    _check_options(mode, method, percentile, keep_sensitive, calibration)
    graph = simplified_graph(model)
    samples = _samples(graph, calibration)
    found = find_layers(graph)
    layers, kept = _select(found, mode, _exclusions(found, exclude))
    rep = QuantizationReport(mode, method, len(samples))
    if not layers:
        rep.layers = kept
        rep.note = ("nothing to quantize: the model has no conv, matmul or gemm layer with a "
                    "constant f32 weight" + ("" if not kept else " that can be quantized here")
                    + "; the graph is returned unquantized")
        log("quant", rep.note)
        return (graph, rep) if report else graph
    if mode == "static" and not samples:
        raise SlimcError("quantize: mode='static' needs calibration data (an iterable of input "
                         "tuples or {name: array} dicts), and got none; give some (CLI: "
                         "--calibration inputs.npz), or use mode='dynamic' (--dynamic)")
    stats = _collect(graph, layers, samples) if mode == "static" else {}
    plans = [_plan(layer, mode, stats, method, percentile, per_channel) for layer in layers]
    alone = _measure_alone(graph, plans, samples) if samples else None
    reports = {p.layer.out: _layer_report(p, alone) for p in plans}
    if keep_sensitive is not None:
        plans = _keep_sensitive(plans, reports, keep_sensitive)
    quantized = graph.clone()
    emb = QuantizeEmbeddings()
    PassManager([Quantize(plans)] + ([emb] if embeddings else []), verify=True).run(quantized)
    emb_reports = {out: LayerReport(name, "gather", True, weight_scale=ws)
                   for (name, ws), out in ((d[:2], d[2]) for d in emb.done)}
    reports.update(emb_reports)
    if samples:
        names = [layer.out for layer in layers] + list(emb_reports) + \
            [v.name for v in graph.outputs]
        measured = _measure_graph(graph, quantized, list(dict.fromkeys(names)), samples)
        for out, r in reports.items():
            r.sqnr = measured.db(out)
        rep.outputs = {v.name: measured.db(v.name) for v in graph.outputs}
    order = {(it.name if isinstance(it, Layer) else it[0]): i for i, it in enumerate(found)}
    rep.layers = sorted(kept + [r for o, r in reports.items() if o not in emb_reports],
                        key=lambda r: order[r.name]) + list(emb_reports.values())
    for r in rep.layers:
        log("quant", _row(r).strip())
    return (quantized, rep) if report else quantized


def _keep_sensitive(plans: list, reports: dict, threshold: float) -> list:
    """The plans whose layer, quantized alone, keeps an SQNR of at least `threshold` dB; the
    others are marked float in their report."""
    keep = []
    for plan in plans:
        r = reports[plan.layer.out]
        if r.sqnr_alone is not None and r.sqnr_alone < threshold:
            r.quantized = False
            r.reason = f"SQNR alone {r.sqnr_alone:.1f} dB < keep_sensitive={threshold:g} dB"
        else:
            keep.append(plan)
    return keep
