"""Magnitude pruning: zero the smallest weights of every conv / matmul / gemm with a constant
weight, leaving shapes alone (the `sparsify` pass turns the zeros into speed).

The one convention every pattern uses: a weight is seen as the 2-D matrix ``[K, N]``, K the
inputs a layer reduces over and N its outputs, which is how a sparse kernel reads it (a row of
the matrix is one input shared by consecutive outputs):

* matmul ``x @ B``: B ``[K, N]`` as stored;
* gemm: B ``[K, N]``, or B transposed when ``trans_b=1`` (stored ``[N, K]``);
* conv: W ``[O, I/group, kh, kw]`` as ``[I/group*kh*kw, O]``: row ``(i, dy, dx)``, column ``o``.

Patterns, all in that view:

* ``"unstructured"``: single weights, ranked by ``|w|``;
* ``"block:RxC"``: R consecutive rows (inputs) by C consecutive columns (outputs), ranked by
  their L1 norm; ``"block:1x8"`` is 8 consecutive outputs at one input (for a conv: 8 output
  channels at one input channel and tap). Blocks tile the matrix from its top-left corner; a
  partial block at the bottom or right edge is a block of its own (with its own, smaller, L1
  norm). A whole block is zeroed or left untouched;
* ``"n:m:N:M"``: in every group of M consecutive rows of one column (M inputs of one output),
  the N largest ``|w|`` are kept; a partial group at the end keeps its N largest too. The
  sparsity is fixed by the pattern (1 - N/M), so `sparsity` must say the same.

Counts: with ``scope="layer"`` each weight loses exactly ``round(sparsity * units)`` units
(weights, or blocks), Python's `round`; with ``scope="global"`` the ``round(sparsity * units)``
smallest over all selected weights go, so every pruned unit is at most every kept one (a gemm's
``|alpha|`` scales its weights' magnitudes there). Ties go to the earlier unit in the row-major
order of the ``[K, N]`` view (and to the earlier layer, globally). Zeros already there are the
smallest weights, so a weight that held more than its share keeps them all.

A weight constant read by several layers is pruned once, in the view of the first of them.
The kept weights are the originals bit for bit; the pruned constants replace the old ones
under the same names, with the same dtype and shape.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from slimc.ir import Graph, SlimcError, Value, verify
from slimc.ir.debug import log

OPS = ("conv", "matmul", "gemm")
SCOPES = ("layer", "global")


# ----- patterns -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Pattern:
    """A parsed pattern: blocks of `rows` x `cols` in the [K, N] view ("unstructured" is 1x1),
    or N:M groups (`n` of every `m` kept)."""

    text: str
    rows: int = 1
    cols: int = 1
    n: int = 0
    m: int = 0

    @property
    def is_nm(self) -> bool:
        return self.m > 0


def parse_pattern(text: str) -> Pattern:
    """"unstructured", "block:RxC" or "n:m:N:M" as a `Pattern`; anything else is a SlimcError
    that shows the accepted forms."""
    forms = '"unstructured", "block:RxC" (e.g. "block:1x8") or "n:m:N:M" (e.g. "n:m:2:4")'
    if not isinstance(text, str):
        raise SlimcError(f"prune.magnitude: pattern must be a string, {forms}; got {text!r}")
    if text == "unstructured":
        return Pattern(text)
    block = re.fullmatch(r"block:(\d+)x(\d+)", text)
    if block:
        r, c = int(block.group(1)), int(block.group(2))
        if r < 1 or c < 1:
            raise SlimcError(f"prune.magnitude: pattern {text!r}: a block needs at least one row "
                             f"and one column")
        return Pattern(text, rows=r, cols=c)
    nm = re.fullmatch(r"n:m:(\d+):(\d+)", text)
    if nm:
        n, m = int(nm.group(1)), int(nm.group(2))
        if m < 1 or n > m:
            raise SlimcError(f"prune.magnitude: pattern {text!r}: N:M needs 0 <= N <= M and "
                             f"M >= 1")
        return Pattern(text, n=n, m=m)
    raise SlimcError(f"prune.magnitude: unknown pattern {text!r}; give {forms}")


# ----- the report -----------------------------------------------------------------------------

@dataclass
class PrunedWeight:
    """One pruned weight constant and the layer(s) reading it."""

    name: str          # the layer as the source model calls it ("a, b" for a shared weight)
    op: str
    weight: str        # the constant's name (kept by the pruned one)
    shape: tuple
    pattern: str
    zeros_before: int
    zeros_after: int
    l1_kept: float     # sum |w| after / before (1.0 for an all-zero weight)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def sparsity(self) -> float:
        return self.zeros_after / self.size if self.size else 0.0


@dataclass
class MagnitudeReport:
    """What `prune_magnitude` did: one `PrunedWeight` per pruned constant, the layers it left
    alone and why; ``print(report)`` shows it as a table."""

    sparsity: float
    pattern: str
    scope: str
    layers: list = field(default_factory=list)   # PrunedWeight, in graph order
    skipped: list = field(default_factory=list)  # (layer, op, why it was not pruned)
    threshold: Optional[float] = None  # global scope: the largest magnitude (or L1) pruned
    note: str = ""

    def layer(self, name: str) -> PrunedWeight:
        """The entry for a layer or weight name."""
        for r in self.layers:
            if name == r.weight or name in r.name.split(", "):
                return r
        raise KeyError(name)

    def __str__(self) -> str:
        lines = [f"slimc.prune.magnitude: sparsity={self.sparsity:g}, pattern={self.pattern}, "
                 f"scope={self.scope}; {len(self.layers)} weight(s) pruned, "
                 f"{len(self.skipped)} layer(s) skipped"]
        if self.note:
            lines.append(self.note)
        if self.layers:
            lines.append(f"{'layer':<24} {'op':<7} {'weight shape':<18} {'pattern':<12} "
                         f"{'zeros before':>12} {'zeros after':>12} {'sparsity':>8} {'L1 kept':>8}")
        for r in self.layers:
            name = r.name if len(r.name) <= 24 else "…" + r.name[-23:]
            shape = "[" + ",".join(str(d) for d in r.shape) + "]"
            lines.append(f"{name:<24} {r.op:<7} {shape:<18} {r.pattern:<12} "
                         f"{r.zeros_before:>12} {r.zeros_after:>12} {100 * r.sparsity:>7.1f}% "
                         f"{100 * r.l1_kept:>7.1f}%")
        for name, op, why in self.skipped:
            lines.append(f"skipped {name!r} ({op}): {why}")
        if self.threshold is not None:
            unit = "|w|" if self.pattern == "unstructured" else "block L1"
            lines.append(f"global threshold: {unit} <= {self.threshold:.6g} pruned")
        return "\n".join(lines)


# ----- which weights --------------------------------------------------------------------------

@dataclass
class _Weight:
    """A weight constant, the layers reading it, and how to see it as [K, N]."""

    value: Value
    nodes: list
    to_kn: Callable[[np.ndarray], np.ndarray]
    from_kn: Callable[[np.ndarray], np.ndarray]
    scale: float = 1.0  # |alpha| of a gemm: its effective magnitude, for global ranking

    def names(self) -> set:
        out = {self.value.name}
        for n in self.nodes:
            out.update(x for x in (n.name, n.label, n.output.name) if x)
        return out


def _views(node) -> "tuple | str":
    """(to [K, N], back, scale) for the node's weight, or why it cannot be pruned."""
    a, w = node.inputs[0], node.inputs[1]
    data = w.data if w is not None and w.is_constant else None
    if data is None:
        if node.op == "matmul" and a.is_constant and a.data is not None:
            return "its constant operand is the left one (only x @ W is pruned)"
        return f"its weight %{w.name} is not a constant" if w is not None else "no weight"
    if data.dtype.kind != "f":
        return f"its weight %{w.name} is {w.type}, not a float tensor"
    if node.op == "conv":
        shape = data.shape
        return (lambda d: d.reshape(shape[0], -1).T,
                lambda m: m.T.reshape(shape), 1.0)
    if data.ndim != 2:
        return f"its weight %{w.name} is {w.type}; only a 2-D weight [K, N] is pruned"
    if node.op == "gemm":
        alpha = abs(float(node.attrs.get("alpha", 1.0)))
        if node.attrs.get("trans_b", 0):
            return (lambda d: d.T, lambda m: m.T, alpha)
        return (lambda d: d, lambda m: m, alpha)
    return (lambda d: d, lambda m: m, 1.0)


def find_weights(graph: Graph) -> tuple:
    """(weights to prune as `_Weight`, in graph order, one per constant; skipped layers as
    ``(layer, op, reason)``). The same notion as passes/quantize.py `find_layers` (a conv,
    matmul or gemm whose weight operand is a constant), with pruning's own limits: any float
    dtype and any conv rank are fine, a trans_a or a non-constant bias does not matter."""
    weights: dict = {}
    skipped = []
    for node in graph.nodes:
        if node.op not in OPS:
            continue
        views = _views(node)
        if isinstance(views, str):
            skipped.append((node.label, node.op, views))
            continue
        w = node.inputs[1]
        if w.name in weights:
            weights[w.name].nodes.append(node)
        else:
            weights[w.name] = _Weight(w, [node], *views)
    return list(weights.values()), skipped


def _select(weights: list, skipped: list, layers: Optional[Sequence[str]]) -> list:
    """The weights `layers` names (all when None): an unknown name, or one naming a layer that
    cannot be pruned, is a SlimcError saying which and what could be named."""
    if layers is None:
        return weights
    if isinstance(layers, str):
        layers = [layers]
    chosen = []
    for name in layers:
        hits = [w for w in weights if name in w.names()]
        if hits:
            chosen.extend(h for h in hits if h not in chosen)
            continue
        why = [s for s in skipped if s[0] == name]
        if why:
            raise SlimcError(f"prune.magnitude: layer {name!r} ({why[0][1]}) cannot be pruned: "
                             f"{why[0][2]}")
        cands = [w.nodes[0].label for w in weights]
        shown = ", ".join(repr(c) for c in cands[:20]) + (", ..." if len(cands) > 20 else "")
        raise SlimcError(f"prune.magnitude: no prunable layer or weight is called {name!r}; "
                         f"layers: {shown or 'none'} (a layer's output or weight name works too)")
    return [w for w in weights if w in chosen]  # graph order


def _fitting(weights: list, pattern: Pattern) -> tuple:
    """(the weights `pattern`'s block fits in, skipped entries for the others). A block that
    covers the whole [K, N] weight leaves one block to rank, so the layer could only be
    zeroed whole or left as it is: it is skipped with the reason, not reported pruned at 0%."""
    if pattern.is_nm or pattern.rows * pattern.cols == 1:
        return weights, []
    fit, skipped = [], []
    for w in weights:
        k, n = w.to_kn(w.value.data).shape
        if pattern.rows >= k and pattern.cols >= n:
            skipped.append((", ".join(x.label for x in w.nodes), w.nodes[0].op,
                            f"the block {pattern.rows}x{pattern.cols} covers its whole weight "
                            f"%{w.value.name} ([K, N] = [{k}, {n}]); give a smaller block"))
        else:
            fit.append(w)
    return fit, skipped


# ----- scores and masks -----------------------------------------------------------------------

def block_scores(kn: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The L1 norm of every rows x cols block of the [K, N] matrix, as [ceil(K/r), ceil(N/c)]
    (edge blocks hold what is left of the matrix)."""
    k, n = kn.shape
    kb, nb = -(-k // rows), -(-n // cols)
    padded = np.zeros((kb * rows, nb * cols), np.float64)
    padded[:k, :n] = np.abs(kn)
    return padded.reshape(kb, rows, nb, cols).sum(axis=(1, 3))


def _expand(block_mask: np.ndarray, rows: int, cols: int, shape: tuple) -> np.ndarray:
    full = np.repeat(np.repeat(block_mask, rows, axis=0), cols, axis=1)
    return full[:shape[0], :shape[1]]


def _smallest(scores: np.ndarray, count: int) -> np.ndarray:
    """A boolean mask of the `count` smallest of the flat `scores`, ties to the earlier."""
    mask = np.zeros(scores.size, bool)
    mask[np.argsort(scores, kind="stable")[:count]] = True
    return mask


def nm_mask(kn: np.ndarray, n: int, m: int) -> np.ndarray:
    """True where a weight goes: all but the `n` largest |w| of every `m` consecutive rows of
    each column. Padding rows score -1, below any |w|, so they take the pruned places first
    and a partial group keeps its `n` largest."""
    k, cols = kn.shape
    groups = -(-k // m)
    scores = np.full((groups * m, cols), -1.0)
    scores[:k] = np.abs(kn)
    scores = scores.reshape(groups, m, cols)
    order = np.argsort(scores, axis=1, kind="stable")
    mask = np.zeros(scores.shape, bool)
    np.put_along_axis(mask, order[:, :m - n, :], True, axis=1)
    return mask.reshape(groups * m, cols)[:k]


def _masks(weights: list, pattern: Pattern, sparsity: float, scope: str) -> tuple:
    """([K, N] pruning mask per weight, global threshold or None)."""
    kns = [w.to_kn(w.value.data) for w in weights]
    if pattern.is_nm:
        return [nm_mask(kn, pattern.n, pattern.m) for kn in kns], None
    r, c = pattern.rows, pattern.cols
    scores = [block_scores(kn, r, c) for kn in kns]
    if scope == "layer":
        blocks = [_smallest(s.ravel(), round(sparsity * s.size)).reshape(s.shape) for s in scores]
        return [_expand(b, r, c, kn.shape) for b, kn in zip(blocks, kns)], None
    flat = np.concatenate([(s * w.scale).ravel() for s, w in zip(scores, weights)])
    chosen = _smallest(flat, round(sparsity * flat.size))
    threshold = float(flat[chosen].max()) if chosen.any() else None
    masks, start = [], 0
    for s, kn in zip(scores, kns):
        block = chosen[start:start + s.size].reshape(s.shape)
        start += s.size
        masks.append(_expand(block, r, c, kn.shape))
    return masks, threshold


# ----- the pass -------------------------------------------------------------------------------

def _check(sparsity, pattern: Pattern, scope: str) -> float:
    # a number, not a string that float() would read ("0.5") nor a bool
    if isinstance(sparsity, bool) or not isinstance(sparsity, numbers.Real):
        raise SlimcError(f"prune.magnitude: sparsity must be a number in [0, 1], got "
                         f"{sparsity!r}")
    s = float(sparsity)
    if not 0.0 <= s <= 1.0:
        raise SlimcError(f"prune.magnitude: sparsity must be in [0, 1] (the fraction of weights "
                         f"zeroed), got {sparsity!r}")
    if scope not in SCOPES:
        raise SlimcError(f"prune.magnitude: scope must be one of {SCOPES}, got {scope!r}")
    if pattern.is_nm:
        implied = 1 - pattern.n / pattern.m
        if abs(s - implied) > 1e-3:
            raise SlimcError(f"prune.magnitude: pattern {pattern.text!r} zeros "
                             f"{pattern.m - pattern.n} of every {pattern.m} weights, a sparsity "
                             f"of {implied:.4g}; got sparsity={sparsity!r} (pass {implied:.4g})")
        if scope != "layer":
            raise SlimcError(f"prune.magnitude: pattern {pattern.text!r} prunes within groups of "
                             f"{pattern.m}; scope={scope!r} means nothing for it (use 'layer')")
    return s


def prune_magnitude(graph: Graph, sparsity: float, *, pattern: str = "unstructured",
                    layers: Optional[Sequence[str]] = None, scope: str = "layer"):
    """Zero the smallest weights of the conv / matmul / gemm layers of `graph` (see the module
    docstring for patterns, scopes and the [K, N] view); returns ``(pruned copy of graph,
    MagnitudeReport)``. `graph` itself is left as it was."""
    pat = parse_pattern(pattern)
    s = _check(sparsity, pat, scope)
    graph = graph.clone()
    weights, skipped = find_weights(graph)
    chosen, too_small = _fitting(_select(weights, skipped, layers), pat)
    rep = MagnitudeReport(s, pat.text, scope, skipped=skipped + too_small)
    if not chosen:
        why = ("the model has no conv, matmul or gemm layer with a constant float weight"
               if not weights else "the block covers every selected weight whole"
               if too_small else "no layer was selected")
        rep.note = f"nothing to prune: {why}; the graph is returned unchanged"
        log("prune", rep.note)
        return graph, rep
    masks, rep.threshold = _masks(chosen, pat, s, scope)
    for w, kn_mask in zip(chosen, masks):
        old = w.value
        data = old.data
        pruned = np.where(w.from_kn(kn_mask), np.zeros((), data.dtype), data)
        new = graph.add_constant(old.name, pruned, old.type)  # a fresh name until the swap
        old.replace_all_uses_with(new)
        graph.remove_constant(old)
        graph.rename(new, old.name)
        before = float(np.abs(data).sum(dtype=np.float64))
        after = float(np.abs(pruned).sum(dtype=np.float64))
        rep.layers.append(PrunedWeight(", ".join(n.label for n in w.nodes), w.nodes[0].op,
                                       old.name, tuple(data.shape), pat.text,
                                       int(np.count_nonzero(data == 0)),
                                       int(np.count_nonzero(pruned == 0)),
                                       after / before if before else 1.0))
        log("prune", f"{old.name}: {rep.layers[-1].sparsity:.1%} zeros")
    verify(graph)
    return graph, rep
