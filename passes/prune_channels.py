"""Structured channel pruning: remove whole output channels and follow them through the graph.

Removing output channel c of a convolution is only half the job: every tensor that carries c
downstream (activations, pools, the other operand of an add, a concat's slice of channels,
the rows of a gemm after a flatten) loses it too, and the layers that read it lose the matching
input weights. As torch-pruning's dependency graph does, the analysis gives every channel an
id and walks the graph once in topological order, letting each op say how ids pass through it
(`RULES`, data in channel_rules.py): an activation keeps them, an add ties its operands' ids
together (union-find: tied channels are removed together or kept), a concat lays its inputs'
ids side by side, a flatten repeats each id over the spatial positions it absorbs, a
depthwise convolution repeats its input's ids per multiplier, and a conv / gemm / matmul with
a constant weight reads ids and makes fresh ones (the pruning roots). Where an op is not
understood, or ids reach a graph output, they are pinned with the reason (`BLOCKED`,
`REASONS`): a pinned channel stays, so the result is never a wrong graph, only a less pruned
one.

Channels are then grouped by the set of layers that produce them (a residual stage's convs
form one group), ranked by the l1 / l2 norm of their weights summed over the group, and the
fraction `ratio` of each group removed; a grouped convolution's channels are removed in equal
numbers per group so its group count stays valid. The rewrite slices constants only.

What the result computes: exactly the original with the weights that read a removed channel
zeroed (`ChannelReport.removed_inputs`), whatever the activations; and so the original with the
removed channels' weights and biases zeroed, wherever a zeroed channel stays zero on its way to
its readers (relu, clip at 0, pooling, zero padding; not sigmoid(0) = 0.5, not a batch norm's
shift). Accuracy is not claimed; that needs fine-tuning, outside a compiler.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import numpy as np

from slimc.ir import Graph, Node, Value, get_op, verify
from slimc.ir.errors import InternalError, SlimcError

from .basic import DeadCodeElimination, InferShapes
from .channel_rules import BLOCKED, CRITERIA, REASONS, RULES, rule_of


class _Block(Exception):
    """A rule's 'no': the reason key (in REASONS) and its detail."""

    def __init__(self, key: str, detail: str = ""):
        super().__init__(key)
        self.key, self.detail = key, detail


# ----- the report ----------------------------------------------------------------------------

@dataclass
class ChannelGroup:
    """Channels that are pruned together: those produced by the same set of layers."""

    layers: list            # the producing layers' names (then depthwise convs that carry them)
    before: int             # channels in the group
    after: int
    removed: dict = field(default_factory=dict)  # layer -> removed output-channel indices
    reason: str = ""        # why the channels stayed ("" when the group was pruned)

    def __str__(self) -> str:
        names = ", ".join(self.layers)
        if self.reason:
            return f"  kept    {self.before:5d}          {names}: {self.reason}"
        return f"  pruned  {self.before:5d} -> {self.after:<5d} {names}"


@dataclass
class ChannelReport:
    """What `prune_channels` did: one `ChannelGroup` per set of producing layers, in graph
    order, and the parameter counts (float constants) before and after."""

    ratio: float
    criterion: str
    groups: list
    params_before: int
    params_after: int
    # layer -> indices of the input channels it no longer reads (a conv's input channels, a
    # gemm's / matmul's K rows); with `removed` this says exactly what the pruned graph is
    removed_inputs: dict = field(default_factory=dict)

    @property
    def removed(self) -> dict:
        """layer name -> sorted output-channel indices removed from it (layers with none
        removed are left out)."""
        out: dict = {}
        for g in self.groups:
            for name, idx in g.removed.items():
                out.setdefault(name, set()).update(idx)
        return {k: sorted(v) for k, v in out.items() if v}

    @property
    def kept(self) -> list:
        """The groups that stayed whole, each with its reason."""
        return [g for g in self.groups if g.reason]

    def __str__(self) -> str:
        pruned = sum(1 for g in self.groups if g.after < g.before)
        head = (f"channel pruning, ratio {self.ratio:g} by {self.criterion}: {pruned} of "
                f"{len(self.groups)} groups pruned, parameters {self.params_before:,} -> "
                f"{self.params_after:,}")
        return "\n".join([head] + [str(g) for g in self.groups])


# ----- the analysis --------------------------------------------------------------------------

class _Analysis:
    def __init__(self, graph: Graph, criterion: str, selected: Callable[[Node], bool]):
        self.graph = graph
        self.criterion = criterion
        self.selected = selected
        self.parent: list[int] = []      # union-find over channel ids
        self.pins: dict[int, str] = {}   # root id -> why it stays
        self.ch: dict[int, tuple] = {}   # id(value) -> (axis, ids)
        # (layer, ids of its output channels, norm of each, whether it produces them or is a
        # depthwise conv carrying them)
        self.members: list[tuple] = []
        self.readers: list[tuple] = []      # (layer, ids of the input channels it reads)
        self.constraints: list[tuple] = []  # (node, [ids per conv group])
        self.edits: list[Callable] = []     # run with keep(ids) -> mask once decided
        self.renamed: list[tuple] = []      # (new constant, the name of the one it replaced)

    # union-find
    def new(self, n: int, pin: Optional[str] = None) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + n))
        ids = np.arange(start, start + n)
        if pin:
            self.pin(ids, pin)
        return ids

    def find(self, i: int) -> int:
        p = self.parent
        while p[i] != i:
            p[i] = p[p[i]]
            i = p[i]
        return i

    def roots(self, ids: np.ndarray) -> np.ndarray:
        return np.fromiter((self.find(int(i)) for i in ids), dtype=np.int64, count=len(ids))

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self.parent[ry] = rx
                if ry in self.pins:
                    self.pins.setdefault(rx, self.pins.pop(ry))

    def pin(self, ids: np.ndarray, reason: str) -> None:
        for r in set(self.roots(ids).tolist()):
            self.pins.setdefault(r, reason)

    def replace(self, node: Node, i: int, data: np.ndarray) -> None:
        """Give input i of `node` a new constant (a shared constant stays as it is)."""
        old = node.inputs[i]
        new = self.graph.add_constant(old.name, np.ascontiguousarray(data, old.dtype.numpy))
        node.set_input(i, new)
        self.renamed.append((new, old.name))

    # walking the graph
    def get(self, v: Optional[Value]):
        return None if v is None else self.ch.get(id(v))

    def run(self) -> None:
        for node in self.graph.nodes:
            kind = rule_of(node.op)
            if kind != "layer" and not any(self.get(v) for v in node.inputs):
                continue
            try:
                if kind in ("block", "unknown"):
                    raise _Block(kind, BLOCKED.get(node.op, ""))
                getattr(self, "_" + kind)(node)
            except _Block as b:
                reason = REASONS[b.key].format(op=node.op, node=node.label, detail=b.detail)
                for v in node.inputs:
                    if self.get(v):
                        self.pin(self.get(v)[1], reason)
                for v in node.outputs:
                    self.ch.pop(id(v), None)
        for v in self.graph.outputs:
            if self.get(v):
                self.pin(self.get(v)[1], REASONS["output"].format(detail=v.name))

    def _slice_const(self, node: Node, i: int, axis: int, ids: np.ndarray) -> None:
        def edit(keep):
            m = keep(ids)
            if not m.all():
                self.replace(node, i, np.compress(m, node.inputs[i].data, axis=axis))
        self.edits.append(edit)

    # the rules, one per kind: set the outputs' channels or raise _Block
    def _same(self, node: Node) -> None:
        if any(self.get(v) for v in node.inputs[1:]):
            raise _Block("mixes", "a channel tensor as a second operand")
        self.ch[id(node.outputs[0])] = self.get(node.inputs[0])

    def _broadcast(self, node: Node) -> None:
        out, values = node.outputs[0], node.inputs
        rank = out.type.rank
        chans = [(v, self.get(v)) for v in values if self.get(v)]
        axes = {c[0] + rank - v.type.rank for v, c in chans}
        if len(axes) > 1:
            raise _Block("misaligned")
        b = axes.pop()
        ids = chans[0][1][1]
        if out.shape[b] != len(ids) or any(len(c[1]) != len(ids) for _, c in chans):
            raise _Block("mixes", "one channel broadcast over many")
        slices = []
        for i, v in enumerate(values):
            if v is None or self.get(v):
                continue
            k = b - (rank - v.type.rank)
            if k < 0 or v.shape[k] == 1:
                continue
            if v.is_constant and v.data is not None:
                slices.append((i, k))
            else:
                raise _Block("free_operand", v.name)
        for _, c in chans[1:]:
            self.union(ids, c[1])
        for i, k in slices:
            self._slice_const(node, i, k, ids)
        for o in node.outputs:
            self.ch[id(o)] = (b, ids)

    def _channelwise(self, node: Node) -> None:
        axis, ids = self.get(node.inputs[0])
        if axis != 1:
            raise _Block("not_channel_axis", f"axis {axis}")
        for i, v in enumerate(node.inputs[1:], 1):
            if v is None:
                continue
            if not v.is_constant or v.data is None or self.get(v):
                raise _Block("free_operand", v.name)
            self._slice_const(node, i, 0, ids)
        self.ch[id(node.outputs[0])] = (axis, ids)

    def _pad(self, node: Node) -> None:
        x, pads = node.inputs[0], _data(node.inputs[1])
        axes = _data(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
        if pads is None or (len(node.inputs) > 3 and node.inputs[3] and axes is None):
            raise _Block("mixes", "pads that are not constants")
        axis, ids = self.get(x)
        axes = list(range(x.type.rank)) if axes is None else [int(a) % x.type.rank for a in axes]
        pads = [int(p) for p in pads.reshape(-1)]
        if axis in axes and (pads[axes.index(axis)] or pads[len(axes) + axes.index(axis)]):
            raise _Block("mixes", "it pads the channel axis")
        self.ch[id(node.outputs[0])] = (axis, ids)

    def _axis(self, node: Node) -> None:
        x = node.inputs[0]
        axis, ids = self.get(x)
        rank, attrs = x.type.rank, get_op(node.op).resolve_attrs(node.attrs, node.label)
        if node.op == "layer_norm":
            axes = list(range(attrs["axis"] % rank, rank))
        elif "axes" in attrs:
            axes = range(rank) if attrs["axes"] is None else [a % rank for a in attrs["axes"]]
        else:
            axes = [attrs["axis"] % rank]
        if axis in axes or any(self.get(v) for v in node.inputs[1:]):
            raise _Block("mixes", "along the channel axis")
        if not attrs.get("keepdims", 1):
            axis -= sum(1 for a in axes if a < axis)
        for o in node.outputs:
            self.ch[id(o)] = (axis, ids)

    def _reshape(self, node: Node) -> None:
        x, out = node.inputs[0], node.outputs[0]
        axis, ids = self.get(x)
        if len(node.inputs) > 1 and self.get(node.inputs[1]):
            raise _Block("reshape")
        found = _reshape_axis(x.shape, out.shape, axis)
        if found is None:
            raise _Block("reshape")
        b, q = found
        out_ids = np.tile(np.repeat(ids, q), out.shape[b] // (q * len(ids)))
        if node.op == "reshape":
            target = _data(node.inputs[1])
            if target is None:
                raise _Block("reshape", " (its target shape is not a constant)")
            if target.reshape(-1)[b] == 0 and not (b == axis and q == 1 and
                                                   out.shape[b] == len(ids)):
                raise _Block("reshape")

            def edit(keep):
                m = keep(out_ids)
                t = _data(node.inputs[1]).copy().reshape(-1)
                if not m.all() and t[b] > 0:
                    t[b] = int(m.sum())
                    self.replace(node, 1, t)
            self.edits.append(edit)
        self.ch[id(out)] = (b, out_ids)

    def _transpose(self, node: Node) -> None:
        axis, ids = self.get(node.inputs[0])
        self.ch[id(node.outputs[0])] = (list(node.attrs["perm"]).index(axis), ids)

    def _concat(self, node: Node) -> None:
        rank = node.outputs[0].type.rank
        cat = node.attrs["axis"] % rank
        chans = [self.get(v) for v in node.inputs]
        if any(c and c[0] != cat for c in chans):
            return self._broadcast(node)  # concatenated along another axis: tied like an add
        parts = []
        for v, c in zip(node.inputs, chans):
            parts.append(c[1] if c else self.new(v.shape[cat], REASONS["mixes"].format(
                op="concat", node=node.label, detail=f"with %{v.name}, not a layer's output")))
        self.ch[id(node.outputs[0])] = (cat, np.concatenate(parts))

    def _slice(self, node: Node) -> None:
        x = node.inputs[0]
        axis, ids = self.get(x)
        axes = _data(node.inputs[3]) if len(node.inputs) > 3 else None
        if axes is None or axis in [int(a) % x.type.rank for a in axes.reshape(-1)]:
            raise _Block("mixes", "it may slice the channel axis")
        self.ch[id(node.outputs[0])] = (axis, ids)

    def _layer(self, node: Node) -> None:
        """conv / gemm / matmul: read the input's channels (K), make its own (N)."""
        x, w = node.inputs[:2]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        wd, c, attrs = _data(w), self.get(x), node.attrs
        if wd is None or (bias is not None and _data(bias) is None) or self.get(w) or \
                self.get(bias) or (node.op == "matmul" and (wd.ndim != 2 or x.type.rank < 2)):
            raise _Block("dynamic_weight")
        rows, k_axis, out_axis = wd, 1, 1  # rows: the weight as [N, ...]
        if node.op == "gemm":
            k_axis = 0 if attrs.get("trans_a", 0) else 1
            rows = (wd if attrs.get("trans_b", 0) else wd.T) * abs(float(attrs.get("alpha", 1)))
        elif node.op == "matmul":
            rows, k_axis, out_axis = wd.T, x.type.rank - 1, node.outputs[0].type.rank - 1
        if c and c[0] != k_axis:
            raise _Block("not_channel_axis", f"axis {c[0]}, not its axis {k_axis}")
        in_ids = c[1] if c else None
        group, m = int(attrs.get("group", 1)), rows.shape[0]
        if node.op == "conv" and group > 1 and wd.shape[1] == 1 and group == x.shape[1]:
            if in_ids is None:  # depthwise: it carries its input's channels
                out_ids = self.new(m, REASONS["dw_input"].format(node=node.label))
            else:
                out_ids = np.repeat(in_ids, m // group)
                self.members.append((node, out_ids, self._norms(rows), False))
        else:
            out_ids = self.new(m)
            if not self.selected(node):
                self.pin(out_ids, REASONS["not_selected"].format(node=node.label))
            self.members.append((node, out_ids, self._norms(rows), True))
            if group > 1:
                self.constraints.append((node, np.split(out_ids, group)))
                if in_ids is not None:
                    self.constraints.append((node, np.split(in_ids, group)))
        if in_ids is not None:
            self.readers.append((node, in_ids))
        rewrite = _rewrite_conv if node.op == "conv" else _rewrite_dense
        self.edits.append(lambda keep: rewrite(self.replace, node, in_ids, out_ids, keep))
        self.ch[id(node.outputs[0])] = (out_axis, out_ids)

    def _norms(self, w: np.ndarray) -> np.ndarray:
        w = np.asarray(w, dtype=np.float64).reshape(w.shape[0], -1)
        return np.abs(w).sum(1) if self.criterion == "l1" else np.sqrt((w * w).sum(1))


def _data(v: Optional[Value]) -> Optional[np.ndarray]:
    return v.data if v is not None and v.is_constant else None


def _reshape_axis(ins: Sequence, outs: Sequence, axis: int) -> Optional[tuple]:
    """Where the channel axis of `ins` lands in `outs`, as (b, q): output axis b holds the
    channels, each repeated over q consecutive positions (the axes merged after it), tiled over
    the axes merged before it. None when the reshape splits or reorders channels."""
    c = ins[axis]
    post = math.prod(ins[axis + 1:]) if all(isinstance(d, int) for d in ins[axis + 1:]) else None
    if not isinstance(c, int) or post is None:
        return None
    for b in range(len(outs)):
        tail = outs[b + 1:]
        if not isinstance(outs[b], int) or not all(isinstance(d, int) for d in tail):
            continue
        stride = math.prod(tail)
        if post % stride == 0 and outs[b] % (post // stride * c) == 0:
            return b, post // stride
    return None


def _rewrite_conv(replace, node: Node, in_ids, out_ids, keep) -> None:
    w = _data(node.inputs[1])
    group = int(node.attrs.get("group", 1))
    ko = keep(out_ids)
    ki = np.ones(w.shape[1] * group, bool) if in_ids is None else keep(in_ids)
    if ko.all() and ki.all():
        return
    mg, cg = w.shape[0] // group, w.shape[1]
    blocks, lost = [], 0  # a group whose outputs all go (depthwise) must lose its inputs
    for k in range(group):
        o, i = ko[k * mg:(k + 1) * mg], ki[k * cg:(k + 1) * cg]
        if o.any():
            blocks.append(w[k * mg:(k + 1) * mg][o][:, i])
        lost += int(i.any() and not o.any())
    if lost or len({bl.shape for bl in blocks}) != 1:
        raise InternalError(f"conv {node.label!r}: uneven groups after pruning",
                            where="prune_channels")
    replace(node, 1, np.concatenate(blocks))
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        replace(node, 2, _data(node.inputs[2])[ko])
    if group != 1:
        node.attrs["group"] = len(blocks)


def _rewrite_dense(replace, node: Node, in_ids, out_ids, keep) -> None:
    """gemm / matmul: slice the weight's K (read channels) and N (own channels) axes."""
    w = _data(node.inputs[1])
    n_axis = 0 if node.op == "gemm" and node.attrs.get("trans_b", 0) else 1
    ko = keep(out_ids)
    ki = np.ones(w.shape[1 - n_axis], bool) if in_ids is None else keep(in_ids)
    if ko.all() and ki.all():
        return
    w = np.compress(ko, np.compress(ki, w, axis=1 - n_axis), axis=n_axis)
    replace(node, 1, w)
    c = _data(node.inputs[2]) if len(node.inputs) > 2 else None
    if c is not None and c.ndim and c.shape[-1] == len(ko) and len(ko) > 1:
        replace(node, 2, np.compress(ko, c, axis=-1))


# ----- deciding ------------------------------------------------------------------------------

def _decide(an: _Analysis, ratio: float) -> tuple[list, set]:
    """Group the channels by their producing layers, rank and pick; (groups, removed roots)."""
    classes: dict[int, dict] = {}
    for node, ids, norms, root in an.members:
        for pos, r in enumerate(an.roots(ids).tolist()):
            cl = classes.setdefault(r, {"norm": 0.0, "roots": []})
            cl["norm"] += float(norms[pos])
            if root:
                cl["roots"].append(node)
    order = {id(n): i for i, n in enumerate(an.graph.nodes)}
    groups: dict[tuple, list] = {}
    for r, cl in classes.items():
        if cl["roots"]:
            nodes = {id(n): n for n in cl["roots"]}.values()
            key = tuple(sorted(nodes, key=lambda n: order[id(n)]))
            groups.setdefault(key, []).append(r)
    seg_of = [(node, [an.roots(s).tolist() for s in segs]) for node, segs in an.constraints]
    removed: set = set()
    result = []
    for key, members in sorted(groups.items(), key=lambda kv: order[id(kv[0][0])]):
        mset = set(members)
        place = {r: i for i, r in enumerate(members)}
        reason = next((an.pins[r] for r in members if r in an.pins), "")
        parts: list = []
        if not reason:
            parts, reason = _partition(place, mset, seg_of)
        chosen: list = []
        for part in [] if reason else parts:
            k = int(math.floor(ratio * len(part) + 1e-9))
            chosen += sorted(part, key=lambda r: (classes[r]["norm"], place[r]))[:k]
        if not reason and not chosen:
            reason = REASONS["too_few"].format(detail=f"{ratio:g}")
        removed.update(chosen)
        result.append((key, members, chosen, reason))
    return result, removed


def _partition(place: dict, mset: set, seg_of: list) -> tuple:
    """The group's channels split as grouped convs require (equal removal per part)."""
    found = None
    for node, segs in seg_of:
        touched = [s for s in segs if mset.intersection(s)]
        if not touched:
            continue
        why = ""
        flat = [r for s in touched for r in s]
        if len(set(flat)) != len(flat) or set(flat) != mset or len(touched) != len(segs):
            why = "its groups do not line up with the channels tied to it"
        part = frozenset(frozenset(s) for s in touched)
        if not why and found is not None and part != found[1]:
            why = f"it splits them unlike grouped conv {found[0].label!r}"
        if why:
            return None, REASONS["grouped"].format(node=node.label, detail=why)
        found = (node, part)
    if found is None:
        return [sorted(mset, key=place.get)], ""
    return [sorted(p, key=place.get) for p in found[1]], ""


# ----- the pass ------------------------------------------------------------------------------

def _params(graph: Graph) -> int:
    return sum(int(c.data.size) for c in graph.constants.values()
               if c.data is not None and c.data.dtype.kind == "f" and c.uses)


def _layer_names(node: Node) -> set:
    names = {node.label, node.name, node.outputs[0].name}
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        names.add(node.inputs[1].name)
    return names - {""}


def prune_channels(graph: Graph, ratio: float, *, criterion: str = "l1",
                   layers: Optional[Sequence[str]] = None) -> tuple[Graph, "ChannelReport"]:
    """A copy of `graph` with the fraction `ratio` of the output channels of each prunable
    conv / gemm / matmul removed and the removal followed through the graph (see the module
    docstring), verified, and a `ChannelReport` of what was removed and what stayed, why.
    `layers`: names of layers (node, output or weight names) to prune; default all."""
    if isinstance(ratio, bool) or not isinstance(ratio, numbers.Real) or not 0 <= ratio < 1:
        raise SlimcError(f"prune_channels: ratio must be a number in [0, 1), got {ratio!r}")
    if criterion not in CRITERIA:
        raise SlimcError(f"prune_channels: unknown criterion {criterion!r}; expected one of "
                         f"{', '.join(map(repr, CRITERIA))}")
    g = graph.clone()
    candidates = [n for n in g.nodes if RULES.get(n.op) == "layer"]
    wanted = None if layers is None else {layers} if isinstance(layers, str) else set(layers)
    unknown = sorted((wanted or set()) - set().union(set(), *map(_layer_names, candidates)))
    if unknown:
        raise SlimcError(f"prune_channels: layers= names {unknown}, which are not conv / gemm "
                         f"/ matmul layers of graph @{g.name}; its layers include "
                         f"{sorted(n.label for n in candidates)[:8]}")
    an = _Analysis(g, criterion, lambda n: wanted is None or bool(_layer_names(n) & wanted))
    an.run()
    decided, removed = _decide(an, ratio)
    removed_arr = np.array(sorted(removed), dtype=np.int64)

    def keep(ids: np.ndarray) -> np.ndarray:
        return ~np.isin(an.roots(ids), removed_arr)

    before = _params(g)
    for edit in an.edits:
        edit(keep)
    try:
        InferShapes().run(g)
        DeadCodeElimination().run(g)
        verify(g)
    except SlimcError as e:
        raise InternalError(f"the pruned graph does not check: {e}", where="prune_channels") \
            from e
    for new, name in an.renamed:  # a sliced constant takes its original's name once free
        if new.graph is g and name not in g.constants:
            g.rename(new, name)
    report = _report(an, decided, keep, ratio, criterion, before, _params(g))
    return g, report


def _report(an: _Analysis, decided: list, keep, ratio, criterion, before,
            after) -> ChannelReport:
    groups = []
    for key, members, chosen, reason in decided:
        mset, cset = set(members), set(chosen)
        removed: dict = {}
        names: list = [n.label for n in key]
        for node, ids, _, root in an.members:
            r = an.roots(ids)
            mine = np.isin(r, list(mset))
            if not mine.any():
                continue
            if not root and node.label not in names:
                names.append(node.label)
            idx = np.nonzero(mine & np.isin(r, list(cset)))[0].tolist() if cset else []
            removed.setdefault(node.label, set()).update(idx)
        groups.append(ChannelGroup(names, len(members), len(members) - len(chosen),
                                   {k: sorted(v) for k, v in removed.items()}, reason))
    inputs = {}
    for node, ids in an.readers:
        gone = np.nonzero(~keep(ids))[0].tolist()
        if gone:
            inputs[node.label] = gone
    return ChannelReport(ratio, criterion, groups, before, after, inputs)
