"""slimc.prune.magnitude and ONNX sparse initializers.

The oracles do not use the code under test: the zero patterns are checked with plain numpy
loops over the [K, N] view the module documents (matmul B as stored, gemm B transposed when
trans_b=1, conv W[O, ...] as W.reshape(O, -1).T), kept weights are compared bit for bit with
the ONNX initializers, and the pruned graph's numbers are onnxruntime's on the original ONNX
model with the pruned weights written back into its initializers (and slimc.compile's agree).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import slimc
from slimc.passes.prune_magnitude import prune_magnitude

from .oracle import assert_close, make_model, run_onnxruntime

# ----- models ---------------------------------------------------------------------------------


def net(batch=2):
    """conv 3x3 (27 inputs: a partial N:M group) -> relu -> gemm (trans_b) -> matmul -> add;
    returns (model, feeds). Weights have no zeros and (almost surely) no ties."""
    rng = np.random.default_rng(0)
    init = {"cw": rng.standard_normal((16, 3, 3, 3)).astype(np.float32),
            "cb": rng.standard_normal(16).astype(np.float32),
            "gw": rng.standard_normal((20, 16 * 36)).astype(np.float32),
            "gb": rng.standard_normal(20).astype(np.float32),
            "mw": rng.standard_normal((20, 13)).astype(np.float32),
            "mb": rng.standard_normal(13).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "cw", "cb"], ["c"], strides=[1, 1], name="conv1"),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "gw", "gb"], ["g"], transB=1, name="fc1"),
             helper.make_node("MatMul", ["g", "mw"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "mb"], ["y"])]
    x = rng.standard_normal((batch, 3, 8, 8)).astype(np.float32)
    return make_model(nodes, {"x": x}, ["y"], init), {"x": x}


WEIGHTS = {"cw": "conv", "gw": "gemm_t", "mw": "matmul"}


def initializers(model) -> dict:
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def kn(w: np.ndarray, kind: str) -> np.ndarray:
    """The documented [K, N] view, written out independently."""
    if kind == "conv":
        return w.reshape(w.shape[0], -1).T
    return w.T if kind == "gemm_t" else w


def weight(graph, name: str) -> np.ndarray:
    return graph.constants[name].data


def written_back(model, graph, names) -> onnx.ModelProto:
    """`model` with the initializers called `names` replaced by the pruned graph's."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name in names:
            t.CopyFrom(numpy_helper.from_array(weight(graph, t.name), t.name))
    return out


def check_numbers(model, graph, feeds, names, compiled: bool = True) -> None:
    """interpret(pruned) == onnxruntime on the written-back model; compile(pruned) agrees."""
    expected = run_onnxruntime(written_back(model, graph, names), feeds)
    got = slimc.interpret(graph, **feeds)
    assert_close(got, expected)
    if compiled:
        assert_close(slimc.compile(graph)(**feeds), got, rtol=1e-4, atol=1e-5)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def check_kept(orig: np.ndarray, pruned: np.ndarray) -> None:
    """Every weight is either zero now or its original bits."""
    assert pruned.shape == orig.shape and pruned.dtype == orig.dtype
    kept = pruned != 0
    assert same_bits(pruned[kept], orig[kept])


# ----- unstructured ---------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.37, 0.9, 1.0])
def test_unstructured_per_layer(sparsity):
    model, feeds = net()
    orig = initializers(model)
    graph, rep = slimc.prune.magnitude(model, sparsity, report=True)
    assert len(rep.layers) == 3 and not rep.skipped
    for name in WEIGHTS:
        w, p = orig[name], weight(graph, name)
        check_kept(w, p)
        zeros = int(np.count_nonzero(p == 0))
        assert zeros == round(sparsity * w.size), name
        if 0 < zeros < w.size:  # the pruned are the smallest of this layer
            assert np.abs(w[p == 0]).max() <= np.abs(w[p != 0]).min()
        r = rep.layer(name)
        assert (r.zeros_before, r.zeros_after, r.shape) == (0, zeros, w.shape)
        assert r.sparsity == pytest.approx(zeros / w.size)
        l1 = np.abs(p).sum(dtype=np.float64) / np.abs(w).sum(dtype=np.float64)
        assert r.l1_kept == pytest.approx(l1)
    if sparsity == 0.37:
        check_numbers(model, graph, feeds, WEIGHTS)


def test_global_scope_shares_one_threshold():
    model, feeds = net()
    for t in model.graph.initializer:  # one layer of much smaller weights: pruned more
        if t.name == "mw":
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t) * 0.05, "mw"))
    orig = initializers(model)
    graph, rep = slimc.prune.magnitude(model, 0.6, scope="global", report=True)
    pruned = {n: weight(graph, n) for n in WEIGHTS}
    total = sum(orig[n].size for n in WEIGHTS)
    assert sum(int(np.count_nonzero(p == 0)) for p in pruned.values()) == round(0.6 * total)
    gone = np.concatenate([np.abs(orig[n][pruned[n] == 0]) for n in WEIGHTS])
    kept = np.concatenate([np.abs(orig[n][pruned[n] != 0]) for n in WEIGHTS])
    assert gone.max() <= kept.min()
    assert rep.threshold == pytest.approx(float(gone.max()))
    assert rep.layer("mm").sparsity > 0.95 and rep.layer("conv1").sparsity < 0.6
    for n in WEIGHTS:
        check_kept(orig[n], pruned[n])
    check_numbers(model, graph, feeds, WEIGHTS)


def test_ties_go_to_the_earlier_weight_in_the_kn_view():
    """All-equal magnitudes: exactly round(s * size) zeros, the first ones of the [K, N] view
    in row-major order (for a trans_b gemm that is not the stored order)."""
    w = np.ones((6, 10), np.float32)
    w[1::2] *= -1
    nodes = [helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="fc")]
    model = make_model(nodes, {"x": np.zeros((1, 10), np.float32)}, ["y"], {"w": w})
    graph = slimc.prune.magnitude(model, 0.25)
    view = kn(weight(graph, "w"), "gemm_t").reshape(-1)
    assert np.all(view[:15] == 0) and np.all(view[15:] != 0)


def test_existing_zeros_count_as_the_smallest():
    rng = np.random.default_rng(3)
    w = rng.standard_normal((32, 16)).astype(np.float32)
    w[rng.random(w.shape) < 0.6] = 0
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    model = make_model(nodes, {"x": np.zeros((2, 32), np.float32)}, ["y"], {"w": w})
    graph, rep = slimc.prune.magnitude(model, 0.5, report=True)
    p = weight(graph, "w")
    assert same_bits(p, w)  # more than half were zeros already: nothing else goes
    r = rep.layer("mm")
    assert r.zeros_before == r.zeros_after == int(np.count_nonzero(w == 0))


# ----- blocks and N:M -------------------------------------------------------------------------

def blocks(view: np.ndarray, r: int, c: int):
    for i in range(0, view.shape[0], r):
        for j in range(0, view.shape[1], c):
            yield view[i:i + r, j:j + c]


@pytest.mark.parametrize("pattern,rc", [("block:1x8", (1, 8)), ("block:4x1", (4, 1)),
                                        ("block:2x3", (2, 3))])
def test_blocks_are_all_zero_or_untouched(pattern, rc):
    model, feeds = net()
    orig = initializers(model)
    graph, rep = slimc.prune.magnitude(model, 0.7, pattern=pattern, report=True)
    for name, kind in WEIGHTS.items():
        before = list(blocks(kn(orig[name], kind), *rc))
        after = list(blocks(kn(weight(graph, name), kind), *rc))
        zeroed = [not a.any() for a in after]
        for a, b, z in zip(after, before, zeroed):
            assert z or same_bits(a, b), f"{name}: a block was partly pruned"
        assert sum(zeroed) == round(0.7 * len(before)), name
        l1 = [float(np.abs(b).sum(dtype=np.float64)) for b in before]
        assert max(x for x, z in zip(l1, zeroed) if z) <= min(x for x, z in zip(l1, zeroed)
                                                              if not z)
        assert rep.layer(name).pattern == pattern
    check_numbers(model, graph, feeds, WEIGHTS)


def test_block_global_scope():
    model, _ = net()
    orig = initializers(model)
    graph = slimc.prune.magnitude(model, 0.5, pattern="block:1x8", scope="global")
    gone, kept, count = [], [], 0
    for name, kind in WEIGHTS.items():
        for a, b in zip(blocks(kn(weight(graph, name), kind), 1, 8),
                        blocks(kn(orig[name], kind), 1, 8)):
            (kept if a.any() else gone).append(float(np.abs(b).sum(dtype=np.float64)))
            count += 1
    assert len(gone) == round(0.5 * count) and max(gone) <= min(kept)


def test_n_m_keeps_the_largest_of_each_group():
    model, feeds = net()
    orig = initializers(model)
    graph = slimc.prune.magnitude(model, 0.5, pattern="n:m:2:4")
    for name, kind in WEIGHTS.items():
        before, after = kn(orig[name], kind), kn(weight(graph, name), kind)
        for col in range(before.shape[1]):
            for k in range(0, before.shape[0], 4):
                b, a = before[k:k + 4, col], after[k:k + 4, col]
                nz = a != 0
                assert nz.sum() == min(2, len(b)), (name, col, k)
                assert same_bits(a[nz], b[nz])
                if (~nz).any():
                    assert np.abs(b[~nz]).max() <= np.abs(b[nz]).min()
    check_numbers(model, graph, feeds, WEIGHTS)


# ----- selection, sharing, reports ------------------------------------------------------------

@pytest.mark.parametrize("name", ["fc1", "gw", "g"])  # node, weight, output
def test_layers_restrict_by_any_name(name):
    model, _ = net()
    orig = initializers(model)
    graph, rep = slimc.prune.magnitude(model, 0.5, layers=[name], report=True)
    assert [r.weight for r in rep.layers] == ["gw"]
    assert np.count_nonzero(weight(graph, "gw") == 0) == round(0.5 * orig["gw"].size)
    for other in ("cw", "mw"):
        assert same_bits(weight(graph, other), orig[other])


def test_unknown_layer_names_the_candidates():
    model, _ = net()
    with pytest.raises(slimc.SlimcError, match=r"'nope'.*'conv1', 'fc1', 'mm'"):
        slimc.prune.magnitude(model, 0.5, layers=["fc1", "nope"])


def test_shared_weight_is_pruned_once():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="a"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="b")]
    x = rng.standard_normal((3, 8)).astype(np.float32)
    model = make_model(nodes, {"x": x}, ["y"], {"w": w})
    graph, rep = slimc.prune.magnitude(model, 0.75, report=True)
    assert len(rep.layers) == 1 and rep.layers[0].name == "a, b"
    assert np.count_nonzero(weight(graph, "w") == 0) == 48
    check_numbers(model, graph, {"x": x}, ["w"])


def test_report_reads_and_nothing_prunable_is_not_an_error():
    model, _ = net()
    _, rep = slimc.prune.magnitude(model, 0.5, pattern="block:1x8", report=True)
    text = str(rep)
    for word in ("conv1", "fc1", "mm", "[20,576]", "block:1x8", "zeros before", "L1 kept"):
        assert word in text
    nodes = [helper.make_node("MatMul", ["x", "z"], ["m"], name="act_mm"),
             helper.make_node("Relu", ["m"], ["y"])]
    z = np.zeros((4, 4), np.float32)
    plain = make_model(nodes, {"x": z, "z": z}, ["y"])
    graph, rep = slimc.prune.magnitude(plain, 0.5, report=True)
    assert rep.layers == [] and "nothing to prune" in str(rep)
    assert rep.skipped == [("act_mm", "matmul", "its weight %z is not a constant")]
    with pytest.raises(slimc.SlimcError, match="'act_mm'.*not a constant"):
        slimc.prune.magnitude(plain, 0.5, layers=["act_mm"])


def test_the_callers_graph_is_untouched():
    model, _ = net()
    graph = slimc.from_onnx(model)
    text = str(graph)
    before = {n: weight(graph, n) for n in WEIGHTS}
    pruned, _ = prune_magnitude(graph, 0.9)
    assert str(graph) == text
    for n in WEIGHTS:
        assert weight(graph, n) is before[n] and not (weight(pruned, n) == 0).all()
        assert np.count_nonzero(weight(pruned, n) == 0) == round(0.9 * before[n].size)
    slimc.ir.verify(pruned)


@pytest.mark.parametrize("kw,message", [
    (dict(sparsity=-0.1), r"sparsity must be in \[0, 1\]"),
    (dict(sparsity=1.5), r"sparsity must be in \[0, 1\]"),
    (dict(sparsity="lots"), "sparsity must be a number"),
    (dict(sparsity="0.5"), "sparsity must be a number"),  # float() would have read it
    (dict(sparsity=True), "sparsity must be a number"),
    (dict(pattern="block:0x8"), "at least one row"),
    (dict(pattern="block:1x"), "unknown pattern 'block:1x'"),
    (dict(pattern="nm:2:4"), "unknown pattern"),
    (dict(pattern="n:m:5:4"), "0 <= N <= M"),
    (dict(pattern="n:m:2:4", sparsity=0.9), "sparsity of 0.5"),
    (dict(pattern="n:m:2:4", scope="global"), "means nothing"),
    (dict(scope="model"), "scope must be one of"),
])
def test_bad_arguments(kw, message):
    model, _ = net()
    args = dict(sparsity=0.5, pattern="unstructured", scope="layer")
    args.update(kw)
    with pytest.raises(slimc.SlimcError, match=message):
        slimc.prune.magnitude(model, args.pop("sparsity"), **args)


def test_cli_prune(tmp_path, capsys):
    from slimc.cli import main

    model, _ = net()
    onnx.save(model, str(tmp_path / "net.onnx"))
    out = str(tmp_path / "net-pruned")
    assert main(["prune", str(tmp_path / "net.onnx"), "--sparsity", "0.8", "--pattern",
                 "block:1x8", "-o", out]) == 0
    printed = capsys.readouterr().out
    assert "3 weight(s) pruned" in printed and "net-pruned.slimc" in printed
    graph = slimc.ir.load(out + ".slimc")
    for name, kind in WEIGHTS.items():
        zeroed = [not b.any() for b in blocks(kn(weight(graph, name), kind), 1, 8)]
        assert sum(zeroed) == round(0.8 * len(zeroed))


@pytest.mark.parametrize("compiled", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_real_model_squeezenet(tmp_path_factory, compiled):
    """A real network (squeezenet 1.0 with random weights, no batch norms, so its weight
    names survive): 1x8 blocks at 80%, against onnxruntime with the weights written back
    (compiling it takes half a minute: in the slow set)."""
    from . import models as M

    path = M.randomized_light_model(
        "squeezenet", M.default_cache_dir(str(tmp_path_factory.mktemp("models"))))
    model = onnx.load(path)
    feeds = {k: M.image_input(v.shape, "squeezenet")
             for k, v in M.light_inputs(model).items()}
    orig = initializers(model)
    graph, rep = slimc.prune.magnitude(model, 0.8, pattern="block:1x8", report=True)
    assert len(rep.layers) >= 20
    for r in rep.layers:
        check_kept(orig[r.weight], weight(graph, r.weight))
        view = kn(weight(graph, r.weight), "conv")
        zeroed = [not b.any() for b in blocks(view, 1, 8)]
        assert sum(zeroed) == round(0.8 * len(zeroed)), r.weight
    check_numbers(model, graph, feeds, [r.weight for r in rep.layers], compiled)


# ----- ONNX sparse tensors --------------------------------------------------------------------

def sparse(dense: np.ndarray, name: str, coords: bool) -> onnx.SparseTensorProto:
    flat = np.flatnonzero(dense)
    idx = np.stack(np.unravel_index(flat, dense.shape), axis=1) if coords else flat
    values = numpy_helper.from_array(dense.reshape(-1)[flat], name)
    return helper.make_sparse_tensor(values, numpy_helper.from_array(idx.astype(np.int64)),
                                     list(dense.shape))


def sparse_model(w_sparse, c_sparse):
    """y = x @ W + C, W a sparse initializer and C a Constant with sparse_value."""
    nodes = [helper.make_node("Constant", [], ["c"], sparse_value=c_sparse),
             helper.make_node("MatMul", ["x", "w"], ["m"]),
             helper.make_node("Add", ["m", "c"], ["y"])]
    graph = helper.make_graph(
        nodes, "sparse", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])],
        sparse_initializer=[w_sparse])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _sparse_dense(seed, shape):
    rng = np.random.default_rng(seed)
    d = rng.standard_normal(shape).astype(np.float32)
    d[rng.random(shape) < 0.7] = 0
    return d


@pytest.mark.parametrize("w_coords", [False, True])
def test_sparse_initializer_and_constant_import(w_coords):
    w, c = _sparse_dense(0, (6, 5)), _sparse_dense(1, (2, 5))
    model = sparse_model(sparse(w, "w", w_coords), sparse(c, "c", not w_coords))
    x = np.random.default_rng(2).standard_normal((2, 6)).astype(np.float32)
    graph = slimc.from_onnx(model)
    assert same_bits(weight(graph, "w"), w)
    got = slimc.interpret(graph, x=x)
    assert_close(got, [x @ w + c])
    assert_close(got, run_onnxruntime(model, {"x": x}))


@pytest.mark.parametrize("case,message", [
    ("range", r"sparse tensor 'w': a linear index is outside 0\.\.29"),
    ("coord", r"sparse tensor 'w': an index along axis 1 is outside 0\.\.4"),
    ("count", r"sparse tensor 'w': 3 value\(s\) but indices of shape \[2\]"),
    ("twice", r"sparse tensor 'w': an index appears twice"),
])
def test_bad_sparse_tensors(case, message):
    values = numpy_helper.from_array(np.ones(3, np.float32), "w")
    idx = {"range": [0, 4, 30], "coord": [[0, 0], [1, 5], [2, 2]], "count": [0, 1],
           "twice": [3, 7, 3]}[case]
    w = helper.make_sparse_tensor(values, numpy_helper.from_array(np.array(idx, np.int64)),
                                  [6, 5])
    model = sparse_model(w, sparse(_sparse_dense(1, (2, 5)), "c", False))
    with pytest.raises(slimc.ModelError, match=message):
        slimc.from_onnx(model)
