"""Structured channel pruning (passes/prune_channels.py, `slimc.prune.channels`) against
oracles that do not use the pass.

* Oracle 1, the issue's: the pruned graph computes what the ORIGINAL model computes with the
  removed output channels' weights and biases zeroed (plain numpy on the ONNX initializers,
  from the report's removed indices), run by onnxruntime and by slimc's interpreter. It holds
  where a zeroed channel stays zero on its way (relu, clip at 0, pooling), so the models that
  use it have such activations.
* Oracle 2: the original with the input weights that read a removed channel zeroed (the
  report's ``removed_inputs``): it holds for any activation (sigmoid, batch norm shifts).

Every test also checks the pruned shapes (so an oracle cannot pass because nothing was
pruned), and `slimc.compile` on the pruned graph against the interpreter on it.
"""

from __future__ import annotations

import copy
import importlib.util

import numpy as np
import pytest
from onnx import helper, numpy_helper

import slimc
from slimc.ir import SlimcError, verify
from slimc.passes.prune_channels import prune_channels

from .oracle import assert_close, make_model, run_onnxruntime

RNG = np.random.default_rng(0)


# ----- model building --------------------------------------------------------------------------

class Net:
    """An ONNX model under construction: nodes and random initializers by name."""

    def __init__(self, shape=(1, 3, 10, 10)):
        self.nodes, self.inits = [], {}
        self.feeds = {"x": RNG.standard_normal(shape).astype(np.float32)}

    def conv(self, name, x, cin, cout, k=3, group=1, bias=True, stride=1):
        w = RNG.standard_normal((cout, cin // group, k, k)).astype(np.float32)
        self.inits[name + ".w"] = (w / np.sqrt(w[0].size)).astype(np.float32)
        ins = [x, name + ".w"]
        if bias:
            self.inits[name + ".b"] = RNG.standard_normal(cout).astype(np.float32) * 0.1
            ins.append(name + ".b")
        self.nodes.append(helper.make_node("Conv", ins, [name], name=name, group=group,
                                           pads=[k // 2] * 4, strides=[stride] * 2))
        return name

    def op(self, op, ins, name, **attrs):
        self.nodes.append(helper.make_node(op, list(ins), [name], name=name, **attrs))
        return name

    def const(self, name, array):
        self.inits[name] = np.asarray(array)
        return name

    def gemm(self, name, x, k, n, trans_b=1):
        w = RNG.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
        self.inits[name + ".w"] = (w / np.sqrt(k)).astype(np.float32)
        self.inits[name + ".b"] = RNG.standard_normal(n).astype(np.float32) * 0.1
        return self.op("Gemm", [x, name + ".w", name + ".b"], name, transB=trans_b)

    def model(self, *outputs):
        return make_model(self.nodes, self.feeds, list(outputs), self.inits)


def _attr(node, name, default):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _zeroed(model, zero: dict, readers: bool = False):
    """`model` with, per layer in `zero`, the listed output channels' weights and biases
    zeroed (readers=False), or the weights reading the listed input channels (readers=True)."""
    m = copy.deepcopy(model)
    arrays = {t.name: numpy_helper.to_array(t).copy() for t in m.graph.initializer}
    done = set()
    for node in m.graph.node:
        idx = zero.get(node.name)
        if not idx:
            continue
        done.add(node.name)
        w = arrays[node.input[1]]
        trans_b = node.op_type == "Gemm" and _attr(node, "transB", 0)
        if readers and node.op_type == "Conv":
            group = _attr(node, "group", 1)
            mg, cg = w.shape[0] // group, w.shape[1]
            for p in idx:
                w[(p // cg) * mg:(p // cg + 1) * mg, p % cg] = 0
        elif readers:
            w[(slice(None), idx) if trans_b else idx] = 0
        else:
            w[idx if node.op_type == "Conv" or trans_b else (slice(None), idx)] = 0
            if len(node.input) > 2:
                arrays[node.input[2]][..., idx] = 0
    assert done == {k for k, v in zero.items() if v}, "a layer to zero is not in the model"
    del m.graph.initializer[:]
    m.graph.initializer.extend(numpy_helper.from_array(a, n) for n, a in arrays.items())
    return m


def _interp(model_or_graph, feeds):
    return slimc.interpret(model_or_graph if isinstance(model_or_graph, slimc.Graph)
                           else slimc.from_onnx(model_or_graph), **feeds)


def _tight(actual, expected):
    """Interpreter against interpreter: both accumulate in float64, so only the last bit of
    the float32 rounding may differ."""
    assert_close(actual, expected, rtol=1e-5, atol=1e-6)


def _compiled_matches(graph, feeds, expected):
    out = slimc.compile(graph)(**feeds)
    assert_close(list(out) if isinstance(out, (list, tuple)) else [out], expected)


def _check(model, feeds, ratio=0.5, oracle=1, pruned=None, **kw):
    """Prune `model` (unless `pruned` = (graph, report) is given), then check it against the
    oracle on ONNX (onnxruntime and slimc's interpreter) and compiled against interpreted."""
    graph, rep = pruned or slimc.prune.channels(model, ratio, report=True, **kw)
    verify(graph)
    got = slimc.interpret(graph, **feeds)
    zero = rep.removed if oracle == 1 else rep.removed_inputs
    assert zero, "nothing was pruned: the oracle would hold trivially"
    reference = _zeroed(model, zero, readers=oracle == 2)
    assert_close(got, run_onnxruntime(reference, feeds))
    _tight(got, _interp(reference, feeds))
    _compiled_matches(graph, feeds, got)
    return graph, rep


def _node(graph, name):
    found = [n for n in graph.nodes if n.name == name]
    assert len(found) == 1, name
    return found[0]


def _wshape(graph, name):
    return tuple(_node(graph, name).inputs[1].shape)


def _group(rep, layer):
    return next(g for g in rep.groups if layer in g.layers)


# ----- hand-built models -----------------------------------------------------------------------

def test_conv_chain_prunes_half_and_keeps_the_output_layer():
    n = Net()
    a = n.op("Relu", [n.conv("A", "x", 3, 8)], "ra")
    b = n.op("Relu", [n.conv("B", a, 8, 6, k=1)], "rb")
    p = n.op("MaxPool", [b], "pool", kernel_shape=[2, 2], strides=[2, 2])
    n.conv("C", p, 6, 4)
    graph, rep = _check(n.model("C"), n.feeds)
    assert _wshape(graph, "A") == (4, 3, 3, 3)
    assert _wshape(graph, "B") == (3, 4, 1, 1)
    assert _wshape(graph, "C") == (4, 3, 3, 3)  # its outputs are the model's: they stay
    assert len(rep.removed["A"]) == 4 and len(rep.removed["B"]) == 3 and "C" not in rep.removed
    assert rep.removed_inputs["B"] == rep.removed["A"]
    assert "graph output %C" in _group(rep, "C").reason
    assert rep.params_after < rep.params_before


def _residual_net():
    n = Net()
    r0 = n.op("Relu", [n.conv("S", "x", 3, 8)], "r0")
    a1 = n.op("Relu", [n.conv("A1", r0, 8, 8)], "a1")
    s = n.op("Add", [n.conv("A2", a1, 8, 8), r0], "sum")
    r1 = n.op("Relu", [s], "r1")
    p = n.op("Relu", [n.conv("P", r1, 8, 6, stride=2)], "p")
    f = n.op("Flatten", [n.op("GlobalAveragePool", [p], "gap")], "flat")
    n.gemm("fc", f, 6, 5)
    return n


def test_residual_add_ties_channels_and_global_pool_feeds_the_gemm():
    n = _residual_net()
    graph, rep = _check(n.model("fc"), n.feeds)
    tied = _group(rep, "S")
    assert tied.layers == ["S", "A2"] and (tied.before, tied.after) == (8, 4)
    assert rep.removed["S"] == rep.removed["A2"]  # removed together
    assert _wshape(graph, "A1") == (4, 4, 3, 3)
    assert _wshape(graph, "P") == (3, 4, 3, 3)
    assert _wshape(graph, "fc") == (5, 3)  # the gemm's K follows P through pool and flatten
    assert rep.removed_inputs["fc"] == rep.removed["P"]


def test_tied_group_is_ranked_by_the_sum_of_its_members_norms():
    n = _residual_net()
    scale_s = np.array([1, 9, 2, 8, 3, 7, 4, 6])      # alone: removes 0, 2, 4, 6
    scale_a2 = np.array([9, 1.5, 9, 1, 9, 1, 1, 9])   # alone: removes 1, 3, 5, 6
    for name, scale in (("S", scale_s), ("A2", scale_a2)):
        w = np.sign(n.inits[name + ".w"])  # each output channel's l1 norm is its scale
        w = w / np.abs(w[0]).sum() * scale[:, None, None, None]
        n.inits[name + ".w"] = w.astype(np.float32)
    # summed: 10, 10.5, 11, 9, 12, 8, 5, 15: the four smallest are 6, 5, 3 and 0
    _, rep = slimc.prune.channels(n.model("fc"), 0.5, report=True)
    assert rep.removed["S"] == [0, 3, 5, 6]


@pytest.mark.parametrize("criterion,expected", [("l1", [1]), ("l2", [0])])
def test_criterion_l1_and_l2_rank_differently(criterion, expected):
    n = Net()
    w = np.zeros((2, 3, 1, 1), np.float32)
    w[0, :, 0, 0] = [1, 1, 1]   # l1 3, l2 1.73
    w[1, :, 0, 0] = [2.5, 0, 0]  # l1 2.5, l2 2.5
    n.inits["A.w"], n.inits["A.b"] = w, np.zeros(2, np.float32)
    n.nodes.append(helper.make_node("Conv", ["x", "A.w", "A.b"], ["A"], name="A"))
    n.conv("B", n.op("Relu", ["A"], "ra"), 2, 3, k=1)
    _, rep = _check(n.model("B"), n.feeds, criterion=criterion)
    assert rep.removed["A"] == expected


def test_concat_shifts_the_channel_offsets():
    n = Net()
    a = n.op("Relu", [n.conv("A", "x", 3, 4)], "ra")
    b = n.op("Relu", [n.conv("B", "x", 3, 6)], "rb")
    cat = n.op("Concat", [a, b], "cat", axis=1)
    c = n.op("Relu", [n.conv("C", cat, 10, 8)], "rc")
    n.conv("D", c, 8, 3)
    graph, rep = _check(n.model("D"), n.feeds)
    assert _wshape(graph, "C") == (4, 5, 3, 3)
    assert rep.removed_inputs["C"] == rep.removed["A"] + [4 + i for i in rep.removed["B"]]


@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_inverted_residual(multiplier):
    n = Net()
    r = n.op("Relu", [n.conv("stem", "x", 3, 8)], "r")
    e = n.op("Clip", [n.conv("E", r, 8, 16, k=1), n.const("lo", np.float32(0)),
                      n.const("hi", np.float32(6))], "e")
    d = n.op("Clip", [n.conv("DW", e, 16, 16 * multiplier, group=16), "lo", "hi"], "d")
    s = n.op("Add", [n.conv("P", d, 16 * multiplier, 8, k=1), r], "s")
    n.conv("H", s, 8, 4)
    graph, rep = _check(n.model("H"), n.feeds)
    dw = _node(graph, "DW")
    assert dw.inputs[1].shape == (8 * multiplier, 1, 3, 3) and dw.attrs["group"] == 8
    carried = _group(rep, "E")
    assert carried.layers == ["E", "DW"] and (carried.before, carried.after) == (16, 8)
    kept_e = sorted(set(range(16)) - set(rep.removed["E"]))
    assert rep.removed["DW"] == sorted(set(range(16 * multiplier)) - {
        c * multiplier + j for c in kept_e for j in range(multiplier)})
    assert _group(rep, "stem").layers == ["stem", "P"]
    assert _wshape(graph, "P") == (4, 8 * multiplier, 1, 1)


def test_grouped_conv_removes_the_same_number_per_group():
    n = Net()
    a = n.op("Relu", [n.conv("A", "x", 3, 8)], "ra")
    g = n.op("Relu", [n.conv("G", a, 8, 8, group=2)], "rg")
    n.conv("C", g, 8, 4)
    graph, rep = _check(n.model("C"), n.feeds)
    assert _wshape(graph, "G") == (4, 2, 3, 3) and _node(graph, "G").attrs["group"] == 2
    for layer in ("A", "G"):
        halves = [sum(1 for i in rep.removed[layer] if i // 4 == h) for h in (0, 1)]
        assert halves == [2, 2], (layer, rep.removed[layer])


def test_grouped_convs_that_split_channels_differently_keep_them():
    n = Net()
    a = n.op("Relu", [n.conv("A", "x", 3, 8)], "ra")
    g2 = n.conv("G2", a, 8, 8, group=2)
    g4 = n.conv("G4", a, 8, 8, group=4)
    n.op("Add", [g2, g4], "y")
    graph, rep = slimc.prune.channels(n.model("y"), 0.5, report=True)
    reason = _group(rep, "A").reason
    assert "equal number removed per group" in reason and "splits them unlike" in reason
    assert _wshape(graph, "A") == (8, 3, 3, 3)


@pytest.mark.parametrize("flatten", ["Flatten", "Reshape"])
def test_flatten_into_gemm_removes_blocks_of_rows(flatten):
    n = Net((1, 3, 4, 4))
    a = n.op("Relu", [n.conv("A", "x", 3, 6, stride=2)], "ra")  # [1, 6, 2, 2]
    if flatten == "Flatten":
        f = n.op("Flatten", [a], "flat")
    else:  # a constant target naming the size: it must be rewritten
        f = n.op("Reshape", [a, n.const("shape", np.array([1, 24], np.int64))], "flat")
    h = n.op("Relu", [n.gemm("fc1", f, 24, 7, trans_b=0)], "h")
    n.gemm("fc2", h, 7, 3)
    graph, rep = _check(n.model("fc2"), n.feeds)
    assert rep.removed_inputs["fc1"] == sorted(4 * c + j for c in rep.removed["A"]
                                               for j in range(4))
    assert _wshape(graph, "fc1") == (12, 4)  # K rows 24 -> 12, its own 7 outputs -> 4
    assert _wshape(graph, "fc2") == (3, 4)


def _bn_net():
    n = Net()
    a = n.op("Relu", [n.conv("A", "x", 3, 8)], "ra")
    for p, v in (("g", 1 + 0.2 * RNG.standard_normal(8)), ("beta", RNG.standard_normal(8)),
                 ("mu", RNG.standard_normal(8)), ("var", 0.5 + RNG.random(8))):
        n.const(p, v.astype(np.float32))
    bn = n.op("BatchNormalization", [a, "g", "beta", "mu", "var"], "bn")
    n.conv("B", bn, 8, 4)
    return n


def test_batch_norm_left_in_the_graph_is_sliced():
    """Not simplified first, so the batch_norm op stays (and its shift makes a zeroed channel
    nonzero: oracle 2)."""
    n = _bn_net()
    model = n.model("B")
    graph = slimc.from_onnx(model)
    pruned = prune_channels(graph, 0.5)
    _check(model, n.feeds, oracle=2, pruned=pruned)
    bn = pruned[0].find_nodes("batch_norm")[0]
    assert [v.shape for v in bn.inputs[1:]] == [(4,)] * 4
    assert _wshape(pruned[0], "B") == (4, 4, 3, 3)
    assert graph.find_nodes("batch_norm")[0].inputs[1].shape == (8,)  # the input is untouched


def test_batch_norm_as_per_channel_mul_and_add_after_simplification():
    n = _bn_net()
    graph, rep = _check(n.model("B"), n.feeds, oracle=2)
    consts = [v for node in graph.nodes if node.op in ("mul", "add") for v in node.inputs
              if v.is_constant]
    assert consts and all(v.shape in ((4, 1, 1), (1, 4, 1, 1)) for v in consts)


def test_squeeze_excitation_mul_ties_channels_through_a_sigmoid():
    n = Net()
    a = n.op("Relu", [n.conv("A", "x", 3, 8)], "ra")
    s = n.op("GlobalAveragePool", [a], "gap")
    s = n.op("Relu", [n.conv("S1", s, 8, 4, k=1)], "s1")
    s = n.op("Sigmoid", [n.conv("S2", s, 4, 8, k=1)], "s2")
    m = n.op("Mul", [a, s], "scaled")
    n.conv("C", m, 8, 3)
    graph, rep = _check(n.model("C"), n.feeds, oracle=2)
    assert _group(rep, "A").layers == ["A", "S2"]
    assert _wshape(graph, "S1") == (2, 4, 1, 1) and _wshape(graph, "S2") == (4, 2, 1, 1)


def _refused(model, feeds, layer, why):
    """`layer`'s channels stay, for the reason `why`; the result is still checked (oracle 1
    where something else was pruned, else equality with the original)."""
    graph, rep = slimc.prune.channels(model, 0.5, report=True)
    assert why in _group(rep, layer).reason, str(rep)
    assert layer not in rep.removed
    if rep.removed:
        _check(model, feeds, pruned=(graph, rep))
    else:
        _tight(slimc.interpret(graph, **feeds), _interp(model, feeds))
    return graph, rep


def test_channel_shuffle_reshape_is_refused_with_its_reason():
    n = Net((1, 3, 4, 4))
    a = n.conv("A", "x", 3, 8)
    r = n.op("Reshape", [a, n.const("s5", np.array([1, 2, 4, 4, 4], np.int64))], "r5")
    t = n.op("Transpose", [r], "t", perm=[0, 2, 1, 3, 4])
    r = n.op("Reshape", [t, n.const("s4", np.array([1, 8, 4, 4], np.int64))], "r4")
    b = n.op("Relu", [n.conv("B", r, 8, 6)], "rb")
    n.conv("C", b, 6, 2)
    graph, rep = _refused(n.model("C"), n.feeds, "A", "splits or reorders the channels")
    assert _wshape(graph, "A") == (8, 3, 3, 3)
    assert _wshape(graph, "B") == (3, 8, 3, 3)  # B's own channels are still pruned


def test_add_of_a_graph_input_is_refused():
    n = Net((1, 3, 6, 6))
    n.feeds["x2"] = RNG.standard_normal((1, 4, 6, 6)).astype(np.float32)
    s = n.op("Add", [n.conv("A", "x", 3, 4), "x2"], "s")
    n.conv("B", s, 4, 2)
    _refused(n.model("B"), n.feeds, "A", "%x2, which is not a constant and varies along")


def test_an_op_that_mixes_channels_is_refused():
    n = Net()
    lrn = n.op("LRN", [n.conv("A", "x", 3, 4)], "lrn", size=3)
    n.conv("B", lrn, 4, 2)
    _refused(n.model("B"), n.feeds, "A", "lrn 'lrn' mixes neighbouring channels")


def test_layers_selects_what_is_pruned():
    n = Net()
    a = n.op("Relu", [n.conv("A", "x", 3, 8)], "ra")
    b = n.op("Relu", [n.conv("B", a, 8, 6)], "rb")
    n.conv("C", b, 6, 4)
    graph, rep = _check(n.model("C"), n.feeds, layers=["B.w"])  # a weight's name selects too
    assert _wshape(graph, "A") == (8, 3, 3, 3) and _wshape(graph, "B") == (3, 8, 3, 3)
    assert "not among layers=" in _group(rep, "A").reason


@pytest.mark.parametrize("ratio", [0, 0.1])
def test_a_ratio_that_removes_nothing_changes_nothing(ratio):
    n = _residual_net()
    graph, rep = slimc.prune.channels(n.model("fc"), ratio, report=True)
    assert not rep.removed and rep.params_after == rep.params_before
    assert f"a ratio of {ratio:g} removes none of them" in _group(rep, "A1").reason
    _tight(slimc.interpret(graph, **n.feeds), _interp(n.model("fc"), n.feeds))


@pytest.mark.parametrize("kw,message", [
    ({"ratio": 1.0}, "ratio must be a number in [0, 1), got 1.0"),
    ({"ratio": -0.1}, "ratio must be a number in [0, 1), got -0.1"),
    ({"ratio": "0.5"}, "ratio must be a number in [0, 1), got '0.5'"),
    ({"ratio": 0.5, "criterion": "l3"}, "unknown criterion 'l3'"),
    ({"ratio": 0.5, "layers": ["A", "nope"]}, "layers= names ['nope']"),
])
def test_bad_arguments_are_clear_errors(kw, message):
    n = Net()
    n.conv("B", n.op("Relu", [n.conv("A", "x", 3, 4)], "ra"), 4, 2)
    with pytest.raises(SlimcError) as e:
        slimc.prune.channels(n.model("B"), **kw)
    assert message in str(e.value)


def test_ratio_may_be_a_numpy_number():
    """np.float32(0.5) (what a ratio computed with numpy is) was refused as 'not a number'."""
    n = Net()
    n.conv("B", n.op("Relu", [n.conv("A", "x", 3, 4)], "ra"), 4, 2)
    _, rep = slimc.prune.channels(n.model("B"), np.float32(0.5), report=True)
    assert rep.params_after < rep.params_before


def test_report_prints_groups_and_reasons():
    n = _residual_net()
    _, rep = slimc.prune.channels(n.model("fc"), 0.5, report=True)
    text = str(rep)
    assert text.splitlines()[0].startswith("channel pruning, ratio 0.5 by l1: 3 of 4 groups")
    assert "pruned      8 -> 4     S, A2" in text
    assert "kept        5          fc: they reach the graph output %fc" in text
    assert [(g.before, g.after) for g in rep.groups] == [(8, 4), (8, 4), (6, 3), (5, 5)]
    assert len(rep.kept) == 1


# ----- real models from the corpus ------------------------------------------------------------

_MISSING = [m for m in ("torch", "onnxscript") if importlib.util.find_spec(m) is None]
needs_torch = pytest.mark.skipif(bool(_MISSING), reason=f"needs {', '.join(_MISSING)}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from tests import models as M

    return M.ModelCorpus(M.default_cache_dir(str(tmp_path_factory.mktemp("onnx_models"))))


def _corpus_model(corpus, name):
    from tests import models as M

    path = corpus.path(M.Case(f"{name}-torchscript", name, "torchscript", M.SPECS[name].slow))
    return path, M.SPECS[name].make_inputs()


def _zeroed_graph(graph, removed):
    """Oracle 1 on a slimc graph (batch norms already folded): numpy zeroes the removed
    channels' weights and biases in a copy."""
    z = graph.clone()
    by_name = {n.label: n for n in z.nodes}
    for name, idx in removed.items():
        node = by_name[name]
        for i, v in enumerate(node.inputs[1:3], 1):
            if v is None:
                continue
            data = v.data.copy()
            out_axis = 0 if node.op == "conv" or i == 2 or node.attrs.get("trans_b") else 1
            data[(slice(None),) * out_axis + (idx,)] = 0
            z.constants[v.name].data = data
    return z


def _param_count(graph):
    return sum(int(np.prod(v.shape)) for v in graph.constants.values()
               if v.dtype.numpy.kind == "f")


def _pruned_corpus_model(corpus, name):
    from slimc.compiler import simplified_graph

    path, feeds = _corpus_model(corpus, name)
    original = simplified_graph(path)  # what slimc.prune.channels prunes
    graph, rep = prune_channels(original, 0.5)
    verify(graph)
    return original, graph, rep, feeds


@needs_torch
@pytest.mark.parametrize("name", ["resnet18_small", "mobilenetv2_small"])
def test_corpus_model_pruned_at_half(corpus, name):
    original, graph, rep, feeds = _pruned_corpus_model(corpus, name)
    got = slimc.interpret(graph, **feeds)
    assert [a.shape for a in got] == [v.shape for v in original.outputs]
    assert _param_count(graph) < 0.35 * _param_count(original)
    assert len(rep.kept) == 1 and "graph output" in rep.kept[0].reason
    _tight(got, slimc.interpret(_zeroed_graph(original, rep.removed), **feeds))


@needs_torch
@pytest.mark.slow  # compiling a whole model takes 15-25 s on two busy cores
@pytest.mark.parametrize("name", ["resnet18_small", "mobilenetv2_small"])
def test_corpus_model_pruned_compiles_as_interpreted(corpus, name):
    _, graph, _, feeds = _pruned_corpus_model(corpus, name)
    _compiled_matches(graph, feeds, slimc.interpret(graph, **feeds))


@needs_torch
@pytest.mark.slow
def test_full_size_resnet18_pruned_compiles_and_keeps_its_output_shape(corpus):
    path, feeds = _corpus_model(corpus, "resnet18")
    graph, rep = slimc.prune.channels(path, 0.5, report=True)
    got = slimc.interpret(graph, **feeds)
    assert got[0].shape == (1, 1000)
    assert rep.params_after < 0.3 * rep.params_before
    _compiled_matches(graph, feeds, got)
