"""The Backend seam (codegen/backend.py): a backend written here, in numpy, runs through the
same driver as the CPU backend -- the target string, the pipeline, the fusion planner, the
memory plan and the runtime module -- without importing or touching any CPU code.

It lowers a few elementwise ops and matmul with numpy functions of its own (not slimc's
references), computes each fused group in Python locals (values inside a group never reach
memory), and reads and writes every buffer at the address the memory plan gave it: graph
inputs and outputs through the pointer arrays of the entry's C signature, intermediates in
the arena, constants in the weights blob. The oracle is slimc's interpreter.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

import slimc
from slimc.codegen.backend import (ARENA, INPUT, OUTPUT, WEIGHTS, Backend, Executable, Kernel,
                                   Lowered)
from slimc.ir import UnsupportedError, interpret, parse
from slimc.target import register_target_kind

ELEMENTWISE = {
    "add": np.add, "sub": np.subtract, "mul": np.multiply,
    "relu": lambda x: np.where(x < 0, np.float32(0), x),
    "tanh": np.tanh, "exp": np.exp, "neg": np.negative,
}
HEAVY = {"matmul": np.matmul}


def _view(address: int, v) -> np.ndarray:
    """The tensor `v` stored at `address` (no copy)."""
    raw = (ctypes.c_char * max(1, v.type.nbytes)).from_address(address)
    return np.frombuffer(raw, np.uint8, v.type.nbytes).view(v.type.dtype.numpy).reshape(v.type.shape)


class NumpyExecutable(Executable):
    def __init__(self, steps):
        self.steps = steps  # per kernel: fn(addresses) running it
        self.code_bytes = 0
        self.entry = lambda ins, outs, arena, weights: self.run(ins, outs, arena, weights, 0,
                                                                len(steps))

    def run(self, ins, outs, arena, weights, first, last):
        bases = {INPUT: ins, OUTPUT: outs, ARENA: arena, WEIGHTS: weights}
        for step in self.steps[first:last]:
            step(bases)


class NumpyBackend(Backend):
    kind = "numpy-test"

    def __init__(self):
        self.lowered_groups = []  # what the planner handed over, for the tests

    def lowers(self, node):
        return node.op in ELEMENTWISE or node.op in HEAVY

    def can_inline(self, node):
        return node.op in ELEMENTWISE

    def epilogue(self, anchor):
        return None if anchor.op in HEAVY else "(elementwise code only)"

    def lower(self, graph, groups, options):
        kernels = []
        for i, group in enumerate(groups):
            inside = {id(n) for n in group}
            produced = {id(v) for n in group for v in n.outputs}
            inputs = list({id(v): v for n in group for v in n.inputs
                           if v is not None and id(v) not in produced}.values())
            outputs = [v for n in group for v in n.outputs
                       if v in graph.outputs or any(id(u) not in inside for u, _ in v.uses)]
            kernels.append(Kernel(f"np{i}_{group[-1].op}", list(group), inputs, outputs))
        self.lowered_groups = [k.ops for k in kernels]
        return Lowered(kernels)

    def link(self, graph, lowered, placement, options):
        def address(bases, v):
            p = placement[id(v)]
            if p.space in (INPUT, OUTPUT):  # an array of pointers, one per slot
                return ctypes.c_void_p.from_address(bases[p.space] + 8 * p.offset).value
            return bases[p.space] + p.offset

        def step_of(k):
            def step(bases):
                env = {id(v): _view(address(bases, v), v) for v in k.inputs}
                for n in k.nodes:
                    fn = ELEMENTWISE.get(n.op) or HEAVY[n.op]
                    env[id(n.outputs[0])] = np.asarray(
                        fn(*[env[id(v)] for v in n.inputs]), n.outputs[0].type.dtype.numpy)
                for v in k.outputs:
                    _view(address(bases, v), v)[...] = env[id(v)]
            return step

        return NumpyExecutable([step_of(k) for k in lowered.kernels])


BACKEND = NumpyBackend()
register_target_kind("numpy-test", lambda s: s == "numpy-test", lambda s: BACKEND)

MLP = """# slimc-ir v1
graph @mlp(%x: f32[4,16]) -> (f32[4,8], f32[4,32]) {
  const %w1: f32[16,32] = elided
  const %b1: f32[32] = elided
  const %w2: f32[32,8] = elided
  const %b2: f32[8] = elided
  %h = matmul(%x, %w1) : f32[4,32]
  %hb = add(%h, %b1) : f32[4,32]
  %a = relu(%hb) : f32[4,32]
  %o = matmul(%a, %w2) : f32[4,8]
  %ob = add(%o, %b2) : f32[4,8]
  %t = tanh(%ob) : f32[4,8]
  %e = neg(%a) : f32[4,32]
  return %t, %e
}
"""


def _graph(text):
    g = parse(text)
    rng = np.random.default_rng(0)
    for c in g.constants.values():
        c.data = rng.standard_normal(c.type.shape).astype(np.float32)
    return g


def test_numpy_backend_runs_through_the_driver():
    g = _graph(MLP)
    mod = slimc.compile(g, target="numpy-test")
    assert mod.target.kind == "numpy-test"
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    for got, want in zip(mod(x), interpret(g, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # the planner asked this backend: matmul takes its elementwise epilogue, `a` feeds two
    # kernels so it is written to memory, and neg is a kernel of its own
    assert BACKEND.lowered_groups == [["matmul", "add", "relu"], ["matmul", "add", "tanh"],
                                      ["neg"]]
    # the memory plan placed the one intermediate (`a`) in the arena; weights in the blob
    assert mod.memory.plan.sizes == {"a": 4 * 32 * 4}
    assert mod.memory.weights_bytes >= 4 * (16 * 32 + 32 + 32 * 8 + 8)
    assert [k.ops for k in mod.kernels] == BACKEND.lowered_groups
    # the runtime's per-kernel profile runs this backend's steps one by one
    assert len(mod.profile(x, repeat=2).rows) == 3


def test_numpy_backend_refuses_what_it_cannot_lower():
    g = _graph(MLP.replace("tanh(%ob)", "sigmoid(%ob)"))
    with pytest.raises(UnsupportedError, match="NUMPY-TEST backend has no lowering for:\n  sigmoid"):
        slimc.compile(g, target="numpy-test")


def test_cpu_pipeline_passes_are_the_cpu_backends():
    """The target decides its passes: the numpy backend adds none, the CPU adds its three."""
    from slimc.compiler import pipeline

    numpy_names = [p.name for p in pipeline("numpy-test", 2)]
    cpu_names = [p.name for p in pipeline("x86", 2)]
    assert not {"sparsify", "winograd", "layout"} & set(numpy_names)
    assert cpu_names[-4:] == ["sparsify", "winograd", "layout", "dce"]
    assert cpu_names[:-4] == numpy_names
