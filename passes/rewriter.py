"""The pattern rewriter: rules are data, a pass is a list of rules run to a fixed point.

A rule names a pattern over ops, attributes and uses, and a rewrite::

    Rule("conv_add_bias",
         Op("add", Op("conv", Any("x"), Const("w"), name="conv"), Const("b")),
         lambda m, b: b.op("conv", [m["x"], m["w"], m["b"]], **m.node("conv").attrs),
         where=lambda m: is_per_channel(m["b"]))

Patterns: ``Any(name)`` matches any value, ``Const(name, where=pred)`` a constant with data
(``Scalar(1.0)``: a one-element constant of that value), ``Op(op, *inputs, name=,
attrs={k: value or predicate}, commutative=)`` a value produced by that op. Inner ``Op``s must
have one use (else the rewrite would duplicate their work) unless ``one_use=False``.
``Opt(p)`` as an op's trailing input also matches an absent input (conv without a bias);
``Either(p, q, ...)`` the first alternative that matches; ``Product(*factors, scale=)`` a
product written any way -- a tree of muls and of divisions by scalar constants, in any order
and association -- whose non-constant factors match `factors` in some order and whose constant
factors multiply to `scale`. Every failed match produces a *reason*; ``SLIMC_DEBUG=rewrite``
prints the reason for each node where a rule's root op matched but the rule did not fire, and
`explain(rule, graph)` returns them for tests and notebooks.

The rewrite function gets the `Match` and a `Builder` that inserts new nodes just before the
matched root, so topological order holds. It returns the replacement value(s) for the root's
outputs, or None to decline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any as AnyType, Callable, Optional, Sequence, Union

import numpy as np

from slimc.ir import Graph, Node, Value, get_op
from slimc.ir.builder import add_op
from slimc.ir.debug import enabled, log
from slimc.ir.errors import InternalError
from slimc.ir.graph import constant_data

from . import bisect
from .pass_manager import Pass


class Pattern:
    name: Optional[str] = None


@dataclass
class Any(Pattern):
    name: Optional[str] = None


@dataclass
class Const(Pattern):
    name: Optional[str] = None
    where: Optional[Callable[[np.ndarray], bool]] = None
    why: str = "the constant does not satisfy the rule's condition"


def Scalar(value: float, name: Optional[str] = None, rtol: float = 1e-5) -> Const:
    """A one-element floating-point constant equal to `value` (within `rtol`)."""
    return Const(name, where=lambda d: d.size == 1 and d.dtype.kind == "f" and
                 abs(float(d.reshape(())) - value) <= rtol * abs(value),
                 why=f"it is not the scalar {value:g}")


@dataclass
class Opt(Pattern):
    """An optional trailing input of an `Op`: absent, or matching `pattern`."""

    pattern: Pattern = None

    @property
    def name(self):
        return self.pattern.name


class Either(Pattern):
    """The first of several patterns that matches (its bindings are kept)."""

    def __init__(self, *alternatives: Pattern, name: Optional[str] = None):
        self.alternatives = alternatives
        self.name = name


class Product(Pattern):
    """A product of `factors` (patterns, matched in any order) times constants whose product
    is `scale` (within `rtol`); muls and divisions by scalar constants inside it must have
    one use. The product's nodes count as matched (the rewrite replaces them)."""

    def __init__(self, *factors: Pattern, scale: float = 1.0, rtol: float = 1e-5,
                 name: Optional[str] = None, what: str = ""):
        self.factors = factors
        self.scale = scale
        self.rtol = rtol
        self.name = name
        self.what = what  # the product in words, for the reasons ("x / sqrt(2)")


class Op(Pattern):
    def __init__(self, op: str, *inputs: Pattern, name: Optional[str] = None,
                 attrs: Optional[dict] = None, commutative: bool = False, one_use: bool = True):
        self.op = op
        self.inputs = inputs
        self.name = name
        self.attrs = attrs or {}
        self.commutative = commutative
        self.one_use = one_use

    def __repr__(self) -> str:
        return f"Op({self.op!r}, {', '.join(map(repr, self.inputs))})"


class Match:
    def __init__(self, graph: Graph, root: Node):
        self.graph = graph
        self.root = root
        self.values: dict[str, Value] = {}
        self.nodes: dict[str, Node] = {}
        self.matched_nodes: list[Node] = []
        self.found: dict = {}  # what a where-check worked out, for the rewrite to use

    def __getitem__(self, name: str) -> Value:
        return self.values[name]

    def node(self, name: str) -> Node:
        return self.nodes[name]

    def data(self, name: str) -> np.ndarray:
        return self.values[name].data

    def attrs(self, name: str) -> dict:
        node = self.nodes[name]
        return get_op(node.op).resolve_attrs(node.attrs, node.label)


def _bind(m: Match, pattern: Pattern, value: Value) -> Optional[str]:
    if pattern.name is None:
        return None
    prev = m.values.get(pattern.name)
    if prev is not None and prev is not value:
        return f"%{value.name} and %{prev.name} should be the same value ({pattern.name})"
    m.values[pattern.name] = value
    return None


def _scalar(v: Value) -> Optional[float]:
    data = constant_data(v)
    if data is None or data.size != 1 or data.dtype.kind != "f":
        return None
    return float(data.reshape(()))


def _product_terms(value: Value, graph: Graph, nodes: list, is_root: bool) -> tuple[float, list]:
    """`value` as (the product of its scalar constant factors, its other factors), looking
    through muls and divisions by nonzero scalar constants; their nodes go into `nodes`."""
    node = value.producer
    inner = node is not None and (is_root or (len(value.uses) == 1 and value not in graph.outputs))
    if inner and node.op == "mul":
        nodes.append(node)
        c0, f0 = _product_terms(node.inputs[0], graph, nodes, False)
        c1, f1 = _product_terms(node.inputs[1], graph, nodes, False)
        return c0 * c1, f0 + f1
    if inner and node.op == "div" and _scalar(node.inputs[1]) not in (None, 0.0):
        nodes.append(node)
        c, f = _product_terms(node.inputs[0], graph, nodes, False)
        return c / _scalar(node.inputs[1]), f
    c = _scalar(value)
    return (c, []) if c is not None else (1.0, [value])


def _trial(m: Match) -> Match:
    t = Match(m.graph, m.root)
    t.values, t.nodes, t.matched_nodes = dict(m.values), dict(m.nodes), list(m.matched_nodes)
    t.found = dict(m.found)
    return t


def _adopt(m: Match, t: Match) -> None:
    m.values, m.nodes, m.matched_nodes, m.found = t.values, t.nodes, t.matched_nodes, t.found


def _match_product(pattern: Product, value: Value, m: Match, is_root: bool) -> Optional[str]:
    import itertools

    nodes: list = []
    scale, terms = _product_terms(value, m.graph, nodes, is_root)
    head = f"%{value.name} is not {pattern.what}: " if pattern.what else ""
    if not nodes:
        return f"{head}%{value.name} is not a product"
    if len(terms) != len(pattern.factors):
        return (f"{head}%{value.name} is a product of {len(terms)} non-constant factors, the "
                f"rule needs {len(pattern.factors)}")
    if abs(scale - pattern.scale) > pattern.rtol * abs(pattern.scale):
        return (f"{head}the constant factors of %{value.name} multiply to {scale:g}, not "
                f"{pattern.scale:g}")
    best = None
    for order in itertools.permutations(range(len(terms))):
        t = _trial(m)
        reason = None
        for k, (p, i) in enumerate(zip(pattern.factors, order)):
            r = _match(p, terms[i], t, False)
            if r:
                reason = (k, f"factor %{terms[i].name} of %{value.name}: {r}")
                break
        if reason is None:
            _adopt(m, t)
            m.matched_nodes.extend(n for n in nodes if n not in m.matched_nodes)
            return _bind(m, pattern, value)
        if best is None or reason[0] > best[0]:
            best = reason
    return best[1]


def _root_ops(pattern: Pattern) -> frozenset:
    if isinstance(pattern, Op):
        return frozenset([pattern.op])
    if isinstance(pattern, Product):
        return frozenset(["mul", "div"])
    if isinstance(pattern, Either):
        return frozenset().union(*(_root_ops(p) for p in pattern.alternatives))
    raise TypeError(f"a rule's pattern must be an Op, a Product or an Either, not {pattern!r}")


def _match(pattern: Pattern, value: Value, m: Match, is_root: bool) -> Optional[str]:
    """None if `value` matches `pattern` (bindings go into `m`), else the reason it does not."""
    if isinstance(pattern, Any):
        return _bind(m, pattern, value)
    if isinstance(pattern, Opt):
        return _match(pattern.pattern, value, m, is_root)
    if isinstance(pattern, Either):
        reasons = []
        for alt in pattern.alternatives:
            t = _trial(m)
            r = _match(alt, value, t, is_root)
            if r is None:
                _adopt(m, t)
                return _bind(m, pattern, value)
            reasons.append(r)
        # the nearest miss: an alternative whose own op matched, then the deepest failure
        own_op_missed = (f"%{value.name} comes from ", f"%{value.name} is a graph input",
                         f"%{value.name} is a constant, not")
        return max(reasons, key=lambda r: (not r.startswith(own_op_missed), r.count(": ")))
    if isinstance(pattern, Product):
        return _match_product(pattern, value, m, is_root)
    if isinstance(pattern, Const):
        data = constant_data(value)
        if data is None:
            return f"%{value.name} is not a constant"
        if pattern.where is not None and not pattern.where(data):
            return f"%{value.name}: {pattern.why}"
        return _bind(m, pattern, value)
    assert isinstance(pattern, Op)
    node = value.producer
    if node is None:
        kind = "a constant" if value.is_constant else "a graph input"
        return f"%{value.name} is {kind}, not the result of {pattern.op}"
    if node.op != pattern.op:
        return f"%{value.name} comes from {node.op}, not {pattern.op}"
    if not is_root and pattern.one_use and (len(value.uses) != 1 or value in m.graph.outputs):
        return f"%{value.name} ({node.op}) has other uses, so rewriting would duplicate it"
    if pattern.attrs:
        attrs = get_op(node.op).resolve_attrs(node.attrs, node.label)
        for k, want in pattern.attrs.items():
            got = attrs.get(k)
            ok = want(got) if callable(want) else got == want
            if not ok:
                return f"%{value.name} ({node.op}) has {k}={got!r}" + \
                    ("" if callable(want) else f", the rule needs {want!r}")
    if pattern.inputs:
        present = list(node.inputs)
        required = len(pattern.inputs)
        while required and isinstance(pattern.inputs[required - 1], Opt):
            required -= 1
        while len(present) > required and present[-1] is None:
            present.pop()  # an absent trailing optional input
        if not required <= len(present) <= len(pattern.inputs):
            want = f"{required}" + (f" to {len(pattern.inputs)}" if required < len(pattern.inputs) else "")
            return f"%{value.name} ({node.op}) has {len(present)} inputs, the rule expects {want}"
        orders = [list(range(len(present)))]
        if pattern.commutative and len(present) == 2:
            orders.append([1, 0])
        best = None  # (inputs matched before failing, reason): report the nearest miss
        for order in orders:
            trial = _trial(m)
            reason = None
            for i, (p, idx) in enumerate(zip(pattern.inputs, order)):
                if idx >= len(present):
                    break  # the optional inputs past the node's last are absent
                v = present[idx]
                r = f"input {idx} of %{value.name} ({node.op}) is absent" if v is None else \
                    _match(p, v, trial, False)
                if r:
                    reason = (i, r if v is None else f"input {idx} of {node.op}: {r}")
                    break
            if reason is None:
                _adopt(m, trial)
                best = None
                break
            if best is None or reason[0] > best[0]:
                best = reason
        if best is not None:
            return best[1]
    if pattern.name is not None:
        m.nodes[pattern.name] = node
    m.matched_nodes.append(node)
    return _bind(m, pattern, value)


class Builder:
    """Creates nodes for a rewrite, just before the matched root, named after it."""

    def __init__(self, graph: Graph, root: Node, rule: str):
        self.graph = graph
        self.root = root
        self.rule = rule
        self.created: list[Node] = []
        self.wanted: dict[int, str] = {}  # id(value) -> its name, once the old one is gone

    def op(self, op: str, inputs: Sequence[Optional[Value]], num_outputs: int = 1, *,
           like: Optional[Node] = None, value_name: str = "", **attrs):
        """A new `op` node. Its outputs are named after the root's (or `value_name`), and it
        carries the root's source location, or that of `like`: the node it stands in for
        when a rule moves an op past another (its outputs then take `like`'s names)."""
        origin = like if like is not None else self.root
        base = value_name or origin.outputs[0].name
        node = add_op(self.graph, op, inputs, attrs, name=origin.name, output_name=base,
                      before=self.root, label=self.root.label)
        self.created.append(node)
        for v in node.outputs:
            self.wanted[id(v)] = base
        return node.outputs[0] if num_outputs == 1 else list(node.outputs)

    def const(self, data, name: str = "") -> Value:
        return self.graph.add_constant(name or self.root.outputs[0].name + ".c", np.asarray(data))


@dataclass
class Rule:
    name: str
    pattern: Pattern  # an Op, a Product or an Either of them: what the root node computes
    rewrite: Callable[[Match, Builder], AnyType]
    where: Optional[Callable[[Match], Union[bool, str]]] = None
    doc: str = ""

    @property
    def root_ops(self) -> frozenset:
        """The ops a node must have for this rule to be tried on it."""
        return _root_ops(self.pattern)

    def match(self, graph: Graph, node: Node) -> Union[Match, str]:
        m = Match(graph, node)
        reason = _match(self.pattern, node.outputs[0], m, True)
        if reason:
            return reason
        if self.where is not None:
            ok = self.where(m)
            if ok is not True:
                return ok if isinstance(ok, str) else "the rule's condition is false"
        return m


def explain(rule: Rule, graph: Graph) -> list[tuple[Node, str]]:
    """For every node whose op is the rule's root op: why the rule does not match there."""
    out = []
    for node in graph.nodes:
        if node.op in rule.root_ops:
            r = rule.match(graph, node)
            if isinstance(r, str):
                out.append((node, r))
    return out


def apply_rule(graph: Graph, rule: Rule, node: Node) -> bool:
    """Try one rule at one node; True if it rewrote the graph."""
    result = rule.match(graph, node)
    if isinstance(result, str):
        if enabled("rewrite"):
            log("rewrite", f"{rule.name} did not match at %{node.outputs[0].name} "
                           f"({node.op}): {result}")
        return False
    if not bisect.allow(f"rule {rule.name} at %{node.outputs[0].name}"):
        return False
    builder = Builder(graph, node, rule.name)
    replacement = rule.rewrite(result, builder)
    if replacement is None:
        return False
    replacement = replacement if isinstance(replacement, (list, tuple)) else [replacement]
    if len(replacement) != len(node.outputs):
        raise InternalError(f"rewrite gave {len(replacement)} values for {len(node.outputs)} "
                            f"outputs", where=f"rule {rule.name}")
    for old, new in zip(node.outputs, replacement):
        if old.type != new.type:
            raise InternalError(f"rewrite changes the type of %{old.name} from {old.type} to "
                                f"{new.type}", where=f"rule {rule.name}")
    old_names = [v.name for v in node.outputs]
    for old, new in zip(node.outputs, replacement):
        old.replace_all_uses_with(new)
    for dead in reversed(result.matched_nodes):
        if dead.graph is graph and not any(v.uses or v in graph.outputs for v in dead.outputs):
            graph.remove_node(dead)
    created = {id(v) for n in builder.created for v in n.outputs}
    for old_name, new in zip(old_names, replacement):
        # The value that now stands for the old one takes its name: graph outputs keep the
        # name callers know them by, and dumps and slimc.debug.compare line up across passes.
        if id(new) in created and old_name not in graph._names:
            graph.rename(new, old_name)
    for n in builder.created:
        for v in n.outputs:
            want = builder.wanted[id(v)]
            if v.name != want and want not in graph._names and v not in replacement:
                graph.rename(v, want)
    log("rewrite", f"{rule.name} rewrote %{node.outputs[0].name}")
    return True


class RewritePass(Pass):
    """Runs its rules over the graph until none fires (at most `max_rounds` sweeps)."""

    def __init__(self, name: str, rules: Sequence[Rule], max_rounds: int = 20):
        self.name = name
        self.rules = list(rules)
        self.max_rounds = max_rounds

    def run(self, graph: Graph) -> bool:
        changed = False
        by_op: dict[str, list[Rule]] = {}
        for r in self.rules:
            for op in sorted(r.root_ops):
                by_op.setdefault(op, []).append(r)
        for _ in range(self.max_rounds):
            fired = False
            for node in list(graph.nodes):
                if node.graph is not graph:
                    continue  # removed by an earlier rewrite in this sweep
                for rule in by_op.get(node.op, ()):
                    if apply_rule(graph, rule, node):
                        fired = True
                        break
            changed |= fired
            if not fired:
                break
        return changed
