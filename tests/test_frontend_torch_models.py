"""The PyTorch frontend on whole models: the corpus, through `slimc.compile(module,
example_inputs=...)` and the reference interpreter, against eager PyTorch; symbolic dims from
`dynamic_shapes`; names and source lines in the IR; and the clear errors for what slimc
refuses (unsupported ops, all at once; training mode; float64; inputs that require grad)."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import slimc  # noqa: E402

from .oracle import assert_close  # noqa: E402
from .torch_check import Fn, check, eager, randn  # noqa: E402


# ----- the corpus -------------------------------------------------------------------------------

def _corpus():
    from tests import models as M

    return M


def _text_wrapper(model, arg_names, pool=False):
    """HF model -> module taking tensors positionally; `pool`: a sentence embedding (masked
    mean of the last hidden state, L2-normalized), as sentence-transformers' MiniLM does."""

    class Text(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, input_ids, attention_mask):
            h = self.m(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if not pool:
                return h
            mask = attention_mask.unsqueeze(-1).to(h.dtype)
            mean = (h * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return F.normalize(mean, p=2, dim=-1)

    return Text().eval()


def build_distilbert():
    """transformers DistilBertModel: 2 layers, dim 64, 4 heads, vocab 1000 (SDPA)."""
    import transformers

    torch.manual_seed(11)
    cfg = transformers.DistilBertConfig(vocab_size=1000, dim=64, n_layers=2, n_heads=4,
                                        hidden_dim=128, max_position_embeddings=64)
    M = _corpus()
    inputs = M.token_inputs("distilbert", 2, 16, 1000)
    model = _text_wrapper(transformers.DistilBertModel(cfg), list(inputs))
    return model, tuple(torch.from_numpy(v) for v in inputs.values())


def build_minilm():
    """A MiniLM-style sentence embedder: a 3-layer BERT (hidden 64, 4 heads) with masked mean
    pooling and L2 normalization on top."""
    import transformers

    torch.manual_seed(12)
    cfg = transformers.BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=3,
                                  num_attention_heads=4, intermediate_size=128,
                                  max_position_embeddings=64)
    M = _corpus()
    inputs = M.token_inputs("minilm", 2, 12, 1000)
    model = _text_wrapper(transformers.BertModel(cfg), list(inputs), pool=True)
    return model, tuple(torch.from_numpy(v) for v in inputs.values())


def build(name):
    """(module, example inputs) of a corpus model: tests/models.py's, or the two above."""
    if name == "distilbert":
        return build_distilbert()
    if name == "minilm":
        return build_minilm()
    M = _corpus()
    torch.set_num_threads(1)
    built = M.SPECS[name].build()
    return built.module, tuple(built.inputs.values())


# The models the issue names; the other small ones of tests/models.py run in the slow set.
NAMED = ["resnet18_small", "mobilenetv2_small", "efficientnet_small", "convnext_small",
         "vit_small", "bert_small", "gpt2_small", "distilbert", "minilm"]
OTHERS = ["vgg_small", "inception_small", "densenet_small", "squeezenet_small",
          "shufflenet_small", "hf_resnet_small", "hf_resnet50_small"]
# Compiling takes 10-20 s a model here; one transformer stays in the quick set.
COMPILED_QUICK = {"gpt2_small"}


@pytest.mark.parametrize("name", NAMED + [pytest.param(n, marks=pytest.mark.slow)
                                          for n in OTHERS])
def test_corpus_model_interpreted(name):
    """from_torch + the reference interpreter agree with eager PyTorch."""
    pytest.importorskip("transformers")
    module, args = build(name)
    check(module, *args, compiled=False)


@pytest.mark.parametrize("name", [pytest.param(n, marks=() if n in COMPILED_QUICK
                                               else pytest.mark.slow) for n in NAMED + OTHERS])
def test_corpus_model_compiled(name):
    """slimc.compile(module, example_inputs=...) agrees with eager PyTorch."""
    pytest.importorskip("transformers")
    module, args = build(name)
    check(module, *args)


# ----- symbolic dims ----------------------------------------------------------------------------

class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8),
                                      nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1))
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        x = self.features(x)
        return self.fc(x.view(x.size(0), -1))


def test_dynamic_batch_compiles_per_shape():
    from torch.export import Dim

    module = SmallCNN().eval()
    batch = Dim("batch", min=1, max=32)
    mod = slimc.compile(module, example_inputs=(randn(2, 3, 8, 8),),
                        dynamic_shapes=({0: batch},))
    assert "%x: f32[batch,3,8,8]" in str(mod.source_graph)
    for n in (2, 5, 2):
        x = randn(n, 3, 8, 8, seed=n)
        assert_close(mod(x.numpy()), eager(module, (x,)))
    assert len(mod._specializations) == 2  # batch 2 again hit the cache


def _bert_dynamic():
    M = _corpus()
    built = M.SPECS["bert_small"].build()
    args = tuple(built.inputs.values())
    return built.module, args, M._dynamic_shapes(built)


def _other_tokens(n, seq):
    rng = np.random.default_rng(9)
    ids = torch.from_numpy(rng.integers(0, 1000, (n, seq)).astype(np.int64))
    mask = torch.ones(n, seq, dtype=torch.int64)
    mask[-1, seq - 2:] = 0
    return ids, mask, (torch.arange(seq) >= seq // 2).long().expand(n, seq).contiguous()


def test_dynamic_batch_and_sequence_transformer_interpreted():
    """BERT with symbolic batch and sequence: the symbols carry the Dim names, and the same
    graph is right at other sizes (sizes computed from them are ops on `shape`)."""
    pytest.importorskip("transformers")
    module, args, dynamic = _bert_dynamic()
    graph = slimc.from_torch(module, args, dynamic_shapes=dynamic)
    assert "%args_0: i64[batch,sequence]" in str(graph)
    for n, seq in ((2, 16), (3, 7)):
        other = _other_tokens(n, seq)
        assert_close(slimc.interpret(graph, *[a.numpy() for a in other]), eager(module, other))


@pytest.mark.slow
def test_dynamic_transformer_compiles_per_shape():
    pytest.importorskip("transformers")
    module, args, dynamic = _bert_dynamic()
    mod = slimc.compile(module, example_inputs=args, dynamic_shapes=dynamic)
    for n, seq in ((2, 16), (3, 7)):
        other = _other_tokens(n, seq)
        assert_close(mod(*[a.numpy() for a in other]), eager(module, other))


# ----- names and source lines -------------------------------------------------------------------

class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()

    def forward(self, x):
        y = self.relu(self.bn1(self.conv1(x)))  # line: conv1
        return self.relu(y + x)  # line: add


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.layer1 = nn.Sequential(Block(), Block())
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(self.layer1(x).mean((2, 3)))


def _line(marker: str) -> int:
    with open(__file__) as f:
        return next(i for i, text in enumerate(f, 1) if text.rstrip().endswith(marker))


def test_names_and_source_lines():
    graph = check(Net(), randn(2, 4, 5, 5), compiled=False)
    text = str(graph)
    here = re.escape(os.path.basename(__file__))
    conv = re.search(r"%layer1\.0\.conv1 = conv\(%x, %layer1\.0\.conv1\.weight, "
                     r"%layer1\.0\.conv1\.bias\).*loc\(\"(.*)\"\)", text)
    assert conv and re.fullmatch(rf"(.*/)?{here}:{_line('# line: conv1')}", conv.group(1))
    add = re.search(r"%layer1\.1\.add = add\(.*loc\(\"(.*)\"\)", text)
    assert add and add.group(1).endswith(f"{os.path.basename(__file__)}:{_line('# line: add')}")
    for name in ("layer1.0.bn1", "layer1.0.relu", "layer1.0.relu.1", "fc",
                 "layer1.1.bn1.running_var"):
        assert f"%{name} " in text or f"%{name}:" in text, name
    assert str(slimc.parse(text)) == text  # names with dots and locs survive the text form


# ----- errors -----------------------------------------------------------------------------------

class Warp(nn.Module):
    def forward(self, x, grid):
        return F.grid_sample(x, grid, align_corners=False)  # line: grid_sample


class Unsupported(nn.Module):
    def __init__(self):
        super().__init__()
        self.warp1, self.warp2 = Warp(), Warp()

    def forward(self, x, grid):
        y = self.warp1(x, grid) + self.warp2(x, grid)
        return y, torch.lgamma(x[0, 0]), x * x.sum().item()  # line: lgamma


def test_unsupported_ops_are_listed_all_at_once():
    x, grid = randn(1, 2, 4, 4), torch.rand(1, 3, 3, 2) * 2 - 1
    with pytest.raises(slimc.UnsupportedError) as info:
        slimc.compile(Unsupported().eval(), example_inputs=(x, grid))
    msg = str(info.value)
    here = os.path.basename(__file__)
    assert "3 ATen op(s)" in msg
    assert re.search(rf"aten.grid_sampler_2d.default \(no converter\): 2 node\(s\), at "
                     rf"warp1 \(.*{here}:{_line('# line: grid_sample')}\); warp2", msg), msg
    assert re.search(rf"aten.lgamma.default .*<top> \(.*{here}:{_line('# line: lgamma')}",
                     msg), msg
    assert "aten._local_scalar_dense.default (reads a tensor's value" in msg


def test_training_mode_is_refused():
    module = nn.Sequential(nn.Linear(3, 3), nn.Dropout())
    with pytest.raises(slimc.InputError, match=r"training mode .*call module.eval\(\)"):
        slimc.compile(module, example_inputs=(randn(2, 3),))
    module.eval()
    module[1].train()  # one submodule left in training mode is enough to refuse
    with pytest.raises(slimc.InputError, match=r"training mode \(1\)"):
        slimc.from_torch(module, (randn(2, 3),))


def test_float64_is_refused():
    with pytest.raises(slimc.UnsupportedError, match="example input 0 .*float64 is not supported"):
        slimc.from_torch(nn.Linear(3, 2).eval(), (torch.randn(2, 3, dtype=torch.float64),))
    with pytest.raises(slimc.UnsupportedError, match="'weight': float64 is not supported"):
        slimc.from_torch(nn.Linear(3, 2).double().eval(), (randn(2, 3),))
    inside = Fn(lambda x: (x.double() * 2).float()).eval()
    with pytest.raises(slimc.UnsupportedError, match=r"aten.mul.Tensor \(its result: float64"):
        slimc.from_torch(inside, (randn(2, 3),))


def test_inputs_that_require_grad_are_refused():
    with pytest.raises(slimc.InputError, match="requires grad"):
        slimc.from_torch(nn.Linear(3, 2).eval(), (torch.randn(2, 3, requires_grad=True),))


def test_compile_needs_example_inputs_for_a_module():
    with pytest.raises(slimc.InputError, match="example_inputs"):
        slimc.compile(nn.Linear(3, 2).eval())


def test_capture_failure_is_one_clear_error():
    """Data-dependent control flow cannot be captured: torch.export's reason, as a slimc error."""
    branchy = Fn(lambda x: x * 2 if x.sum() > 0 else x - 1).eval()
    with pytest.raises(slimc.UnsupportedError, match="torch.export could not capture"):
        slimc.from_torch(branchy, (randn(2, 3),))


def test_convert_fx_graph_takes_an_aot_autograd_graph():
    """The converter entry works on what AOTAutograd gives a torch.compile backend: weights as
    inputs, and with dynamic=True the symbolic sizes as inputs of their own."""
    from torch._functorch.aot_autograd import aot_module_simplified

    from slimc.frontends.torch import Placeholder, convert_fx_graph, decomposition_table

    graphs = []

    def backend(gm, example_inputs):
        def compile_forward(fx_module, inputs):
            roles = {n.name: Placeholder("input", n.name) for n in fx_module.graph.nodes
                     if n.op == "placeholder"}
            graphs.append(convert_fx_graph(fx_module.graph, roles))
            return fx_module

        return aot_module_simplified(gm, example_inputs, fw_compiler=compile_forward,
                                     decompositions=decomposition_table())

    module = nn.Sequential(nn.Linear(4, 3), nn.Softmax(-1)).eval()
    x = randn(5, 4)
    with torch.no_grad():
        torch.compile(module, backend=backend, dynamic=True)(x)
    [graph] = graphs
    weights = [p.detach().numpy() for p in module.parameters()]  # AOTAutograd's order
    assert [v.type.shape for v in graph.inputs[:2]] == [w.shape for w in weights]
    assert isinstance(graph.inputs[2].type.shape[0], str)  # the batch stays symbolic
    assert_close(slimc.interpret(graph, *weights, x.numpy()), eager(module, (x,)))
