"""``torch.compile(model, backend="slimc")``: registered by entry point, agrees with eager
PyTorch on small modules and corpus models, recompiles per shape (dynamic=False) or keeps
symbolic dims (dynamic=True), takes its options, falls back to PyTorch on request, and gives
clear errors for what it refuses (unsupported ops, training, gradients, float64)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import slimc.torch_backend as tb  # noqa: E402

from .oracle import assert_close  # noqa: E402
from .test_frontend_torch_models import build  # noqa: E402
from .torch_check import Fn, randn  # noqa: E402

RTOL, ATOL = 1e-3, 1e-4


@pytest.fixture
def compiled(monkeypatch):
    """Every graph the backend compiles (its `_Compiled`), in order; Dynamo's caches are
    reset before and after, so each test compiles afresh."""
    made = []

    class Recorded(tb._Compiled):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            made.append(self)

    monkeypatch.setattr(tb, "_Compiled", Recorded)
    torch._dynamo.reset()
    yield made
    torch._dynamo.reset()


def run(fn, *args):
    with torch.no_grad():
        out = fn(*args)
    return [o.numpy() for o in ([out] if isinstance(out, torch.Tensor) else out)]


def check(model, *args, **compile_kw):
    """torch.compile(model, backend="slimc") agrees with eager; returns the compiled fn."""
    model = model.eval() if isinstance(model, nn.Module) else model
    fn = torch.compile(model, backend="slimc", **compile_kw)
    assert_close(run(fn, *args), run(model, *args), RTOL, ATOL)
    return fn


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 5)
        self.bn.running_mean.uniform_(-1, 1), self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        y = F.relu(self.bn(self.conv(x)))
        return self.fc(y.mean((2, 3))).softmax(-1)


def test_registered_by_entry_point_without_import():
    """After ``pip install -e .`` torch finds the backend without slimc being imported."""
    code = ("import sys, torch._dynamo; "
            "print('slimc' in torch._dynamo.list_backends(), 'slimc' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]


def test_small_module_and_weights_as_constants(compiled):
    check(CNN(), randn(2, 3, 8, 8))
    [c] = compiled
    graph = c.module.source_graph
    assert [v.name for v in graph.inputs] == ["x"]  # weights are not inputs
    assert {"conv.weight", "bn.running_var", "fc.bias"} <= set(graph.constants)


def test_static_shapes_recompile_per_batch(compiled):
    """dynamic=False: torch's guards recompile for a new batch size, each graph static."""
    model = CNN().eval()
    fn = check(model, randn(2, 3, 8, 8), dynamic=False)
    x = randn(5, 3, 8, 8, seed=1)
    assert_close(run(fn, x), run(model, x), RTOL, ATOL)
    assert len(compiled) == 2
    assert [c.module.source_graph.inputs[0].type.shape[0] for c in compiled] == [2, 5]


def test_dynamic_shapes_stay_symbolic(compiled):
    """dynamic=True: one graph with a symbolic batch; slimc specializes per shape."""
    model = CNN().eval()
    fn = check(model, randn(2, 3, 8, 8), dynamic=True)
    for n in (5, 2):
        x = randn(n, 3, 8, 8, seed=n)
        assert_close(run(fn, x), run(model, x), RTOL, ATOL)
    [c] = compiled
    assert isinstance(c.module.source_graph.inputs[0].type.shape[0], str)
    assert len(c.module._specializations) == 2


def test_sizes_from_symbolic_dims(compiled):
    """Sizes computed from symbolic dims (a view to the batch, an arange of the sequence)
    are bound per shape."""
    model = Fn(lambda x: (x + torch.arange(x.shape[1])).view(x.shape[0], -1, 2).sum(-1))
    fn = check(model, randn(3, 4), dynamic=True)
    x = randn(5, 6, seed=1)
    assert_close(run(fn, x), run(model, x), RTOL, ATOL)
    assert len(compiled) == 1


def test_changed_weights_recompile(compiled):
    model = nn.Linear(4, 3).eval()
    fn = check(model, randn(2, 4))
    with torch.no_grad():
        model.weight.mul_(2)
    assert_close(run(fn, randn(2, 4)), run(model, randn(2, 4)), RTOL, ATOL)


def test_tensors_in_without_copies():
    x = randn(3, 4)
    assert tb._to_numpy(x).ctypes.data == x.data_ptr()
    t = x.t()  # not contiguous: copied once
    assert np.array_equal(tb._to_numpy(t), t.numpy())


# ----- options ------------------------------------------------------------------------------

def test_options_opt_level_threads(compiled):
    check(CNN(), randn(2, 3, 8, 8), options={"opt_level": 0, "threads": 1})
    assert compiled[0].module.opt_level == 0 and compiled[0].module.threads == 1


def test_option_quantize_dynamic(compiled):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()
    x = randn(4, 32)
    fn = torch.compile(model, backend="slimc", options={"quantize": "dynamic"})
    got, want = run(fn, x)[0], run(model, x)[0]
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    ops = [n.op for n in compiled[0].module.source_graph.nodes]
    assert ops.count("dynamic_quantize") == 2


def test_bad_options():
    torch._dynamo.reset()
    x = randn(2, 4)
    with pytest.raises(Exception, match=r"unknown option\(s\) \['opt'\]"):
        torch.compile(nn.Linear(4, 2).eval(), backend="slimc", options={"opt": 1})(x)
    with pytest.raises(Exception, match="quantize must be None or 'dynamic'"):
        torch.compile(nn.Linear(4, 2).eval(), backend="slimc", options={"quantize": "static"})(x)


# ----- unsupported ops and fallback -------------------------------------------------------------

class Unsupported(nn.Module):
    def forward(self, x, grid):
        y = F.grid_sample(x, grid, align_corners=False)
        return y + 1, torch.lgamma(x[0, 0])


UNSUPPORTED_ARGS = (randn(1, 2, 4, 4), torch.rand(1, 3, 3, 2) * 2 - 1)


def test_unsupported_ops_are_one_error():
    torch._dynamo.reset()
    fn = torch.compile(Unsupported(), backend="slimc")
    with pytest.raises(Exception) as info:
        run(fn, *UNSUPPORTED_ARGS)
    msg = str(info.value)
    assert "2 ATen op(s) slimc cannot convert" in msg, msg
    assert "aten.grid_sampler_2d.default (no converter)" in msg
    assert "aten.lgamma.default (no converter)" in msg


def test_fallback_leaves_the_graph_to_pytorch(compiled):
    fn = torch.compile(Unsupported(), backend="slimc", options={"fallback": True})
    with pytest.warns(UserWarning, match="(?s)runs in PyTorch.*grid_sampler_2d"):
        got = run(fn, *UNSUPPORTED_ARGS)
    assert_close(got, run(Unsupported(), *UNSUPPORTED_ARGS), RTOL, ATOL)
    assert not compiled


# ----- what is refused --------------------------------------------------------------------------

def test_gradients_are_refused_or_fall_back():
    torch._dynamo.reset()
    model, x = nn.Linear(4, 3).eval(), randn(2, 4)
    with pytest.raises(Exception, match=r"needs gradients \(weight, bias require grad.*"
                                        r"torch.no_grad\(\)"):
        torch.compile(model, backend="slimc")(x)
    torch._dynamo.reset()
    fn = torch.compile(model, backend="slimc", options={"fallback": True})
    with pytest.warns(UserWarning, match="needs gradients"):
        y = fn(x)
    y.sum().backward()  # left to PyTorch, gradients work
    assert model.weight.grad is not None
    torch._dynamo.reset()


def test_training_mode_is_refused():
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5), nn.BatchNorm1d(4)).train()
    with pytest.raises(Exception, match=r"(?s)native_dropout.*training mode.*"
                                        r"batch_norm.*training mode"):
        run(torch.compile(model, backend="slimc"), randn(3, 4))
    torch._dynamo.reset()


def test_float64_is_refused():
    torch._dynamo.reset()
    with pytest.raises(Exception, match=r"xs\.0: float64 is not supported"):
        run(torch.compile(Fn(lambda x: x * 2), backend="slimc"),
            torch.randn(2, 3, dtype=torch.float64))
    torch._dynamo.reset()


# ----- corpus models ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", [pytest.param("resnet18_small", marks=pytest.mark.slow),
                                  "gpt2_small"])
def test_corpus_model(name, compiled):
    """A corpus model agrees with eager; a second batch size recompiles (dynamic=False).
    (Two compiles of ResNet take about 20 s here: it runs in the slow set.)"""
    pytest.importorskip("transformers")
    module, args = build(name)
    fn = check(module, *args, dynamic=False)
    other = tuple(torch.cat([a, a[:1]]) for a in args)  # batch + 1
    assert_close(run(fn, *other), run(module, *other), RTOL, ATOL)
    assert len(compiled) == 2


@pytest.mark.slow
def test_corpus_transformer_dynamic(compiled):
    """BERT with dynamic=True: symbolic batch and sequence, right at another shape."""
    pytest.importorskip("transformers")
    from .test_frontend_torch_models import _other_tokens

    module, args = build("bert_small")
    fn = check(module, *args, dynamic=True)
    other = _other_tokens(3, 7)
    assert_close(run(fn, *other), run(module, *other), RTOL, ATOL)
    assert len(compiled) == 1
    assert all(isinstance(d, str) for d in compiled[0].module.source_graph.inputs[0].type.shape)
