"""slimc.debug.compare and SLIMC_OPT_BISECT find the pass or kernel that breaks a model."""

import numpy as np
import pytest

import slimc
from slimc import debug
from slimc.ir import parse
from slimc.passes import Op, Any, Const, RewritePass, Rule, PassManager, standard_pipeline
from slimc.passes import pipeline

GRAPH = """# slimc-ir v1
graph @g(%x: f32[4,8]) -> (f32[4,8]) {
  const %zero: f32[8] = [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]
  %a = add(%x, %zero) : f32[4,8]
  %b = relu(%a) : f32[4,8] loc("act")
  %c = exp(%b) : f32[4,8] loc("head/exp")
  return %c
}
"""


def x():
    return [np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)]


def test_compare_agrees_on_a_correct_pipeline():
    result = debug.compare(parse(GRAPH), x())
    assert result.ok and result.checked > 0, str(result)


def test_compare_names_the_pass_that_broke_a_value(monkeypatch):
    # A deliberately wrong rule: relu(v) -> neg(v). It runs as part of -O2 via the pass table.
    bad = Rule("bad_relu", Op("relu", Any("v")), lambda m, b: b.op("neg", [m["v"]]))
    monkeypatch.setitem(pipeline.PASSES, "simplify", lambda: RewritePass("simplify", [bad]))
    result = debug.compare(parse(GRAPH), x())
    first = result.first
    assert first is not None and first.stage == "passes"
    assert first.origin == "simplify" and first.op == "neg" and first.node == "act"
    assert "created by pass simplify" in str(result)


def test_compare_finds_a_codegen_bug(monkeypatch):
    from slimc.codegen.cpu import scalar_ops

    monkeypatch.setitem(scalar_ops.LOWERINGS, "exp", lambda e, a, at: e.add(a[0], a[0]))
    monkeypatch.setenv("SLIMC_CACHE_DIR", "off")
    first = debug.compare(parse(GRAPH), x()).first
    assert first.stage == "codegen" and first.op == "exp" and first.node == "head/exp"


BISECT_GRAPH = """# slimc-ir v1
graph @g(%x: f32[4,8]) -> (f32[4,8]) {
  %i = identity(%x) : f32[4,8]
  %t = transpose(%i) {perm=[1, 0]} : f32[8,4]
  %u = transpose(%t) {perm=[1, 0]} : f32[4,8]
  %c = exp(%u) : f32[4,8]
  return %c
}
"""


def test_opt_bisect_limits_pass_applications(monkeypatch):
    """Each limit lets exactly that many applications run: 1 is infer_shapes alone (nothing
    simplified), a large limit simplifies everything, the ones between stop part-way."""
    def ops_at(limit):
        monkeypatch.setenv("SLIMC_OPT_BISECT", str(limit))
        g = parse(BISECT_GRAPH)
        PassManager(standard_pipeline(2)).run(g)
        return [n.op for n in g.nodes]

    assert ops_at(1) == ["identity", "transpose", "transpose", "exp"]
    assert ops_at(1000) == ["exp"]
    seen = [ops_at(n) for n in range(1, 12)]
    assert all(len(a) >= len(b) for a, b in zip(seen, seen[1:])), seen  # monotone
    assert any(2 <= len(s) <= 3 for s in seen), seen  # some limit stops between the rewrites
