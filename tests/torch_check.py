"""Checking a torch module through slimc against eager PyTorch: the helpers of the PyTorch
frontend's tests (imported after their `pytest.importorskip("torch")`)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

import slimc
from slimc.ir import verify

from .oracle import assert_close

RTOL, ATOL = 1e-3, 1e-4


class Fn(nn.Module):
    """A module whose forward is `fn` (op tests are one line each)."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, *xs):
        return self.fn(*xs)


def eager(module, args):
    with torch.no_grad():
        out = module(*args)
    outs = [out] if isinstance(out, torch.Tensor) else list(out)
    return [o.numpy() for o in outs]


def check(module, *args, compiled=True, rtol=RTOL, atol=ATOL, **compile_kw):
    """The module through slimc (compiled, and the interpreter on the imported graph) agrees
    with eager PyTorch; returns the imported graph."""
    module = module.eval()
    expected = eager(module, args)
    arrays = [a.numpy() for a in args]
    if compiled:
        mod = slimc.compile(module, example_inputs=args, **compile_kw)
        graph = mod.source_graph
        assert_close(mod(*arrays), expected, rtol, atol)
    else:
        graph = slimc.from_torch(module, args, **compile_kw)
    verify(graph)
    assert_close(slimc.interpret(graph, *arrays), expected, rtol, atol)
    return graph


def check_table(table: dict, *args, **kw):
    """Every op of `table` (name -> function of args) in one module, compiled once (one
    compile per table keeps the file quick); each output compared on its own, so a failure
    names every op that disagrees."""
    names = sorted(table)
    module = Fn(lambda *xs: tuple(table[n](*xs) for n in names))
    module.parts = nn.ModuleDict({n: f for n, f in table.items() if isinstance(f, nn.Module)})
    module.eval()
    with torch.no_grad():
        raw = module(*args)
    labels, expected = [], []
    for name, out in zip(names, raw):
        for o in (out if isinstance(out, (tuple, list)) else [out]):
            labels.append(name)
            expected.append(o.numpy())
    mod = slimc.compile(module, example_inputs=args, **kw)
    verify(mod.source_graph)
    arrays = [a.numpy() for a in args]
    failures = []
    for how, got in (("compiled", mod(*arrays)),
                     ("interpreted", slimc.interpret(mod.source_graph, *arrays))):
        assert len(got) == len(expected)
        for label, g, e in zip(labels, got, expected):
            try:
                assert_close([g], [e], RTOL, ATOL)
            except AssertionError as err:
                failures.append(f"{how} {label}: {str(err).strip().splitlines()[0:6]}")
    assert not failures, "\n".join(failures)
    return mod.source_graph


def randn(*shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def ints(*shape, lo=-5, hi=6, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(lo, hi, shape).astype(np.int64))
