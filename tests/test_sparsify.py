"""The `sparsify` pass: which layers go sparse and in which form, the rewrites around the
sparse products (transposes sunk into their stores, tokens in tiles, K^T for attention), the
measured choice, and whole models against onnxruntime.

Oracles: onnxruntime on ONNX models whose weights the test pruned with numpy, and numpy on
graphs the test built. Sparse kernels sum in another order than the dense ones, so results
agree to float rounding, not bitwise.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import slimc
from slimc.ir import Graph, SlimcError, TensorType, dtypes
from slimc.ir.ops.sparse import compress
from slimc.passes.sparsify import Sparsify

from .oracle import make_model, run_onnxruntime
from .sparse_cases import RNG, assert_close, runnable_here, sparse_matrix


def _matmul_model(m, k, n, w, bias=None, gelu_ffn=None):
    """x[m, k] @ w (+ bias) (-> Gelu -> @ w2 when gelu_ffn is given)."""
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"])]
    inits = {"w": w}
    last = "h"
    if bias is not None:
        nodes.append(helper.make_node("Add", ["h", "bias"], ["hb"]))
        inits["bias"] = bias
        last = "hb"
    if gelu_ffn is not None:
        nodes += [helper.make_node("Gelu", [last], ["g"], domain=""),
                  helper.make_node("MatMul", ["g", "w2"], ["y"])]
        inits["w2"] = gelu_ffn
        last = "y"
    x = RNG.standard_normal((m, k)).astype(np.float32)
    opset = 20 if gelu_ffn is not None else 17
    return make_model(nodes, {"x": x}, [last], inits, opset=opset), {"x": x}


def _ops(mod) -> list:
    return [n.op for n in mod.graph.nodes]


def test_dense_model_untouched():
    w = RNG.standard_normal((64, 48)).astype(np.float32)
    w[RNG.random(w.shape) < 0.3] = 0  # 70% dense: not a candidate
    model, feeds = _matmul_model(32, 64, 48, w)
    mod = slimc.compile(model)
    assert "sparse_matmul" not in _ops(mod) and "matmul" in " ".join(_ops(mod))
    np.testing.assert_allclose(mod(**feeds)[0], run_onnxruntime(model, feeds)[0], rtol=1e-4,
                               atol=1e-5)


def test_pruned_matmul_goes_sparse_and_agrees_with_onnxruntime():
    w = sparse_matrix(192, 256, 0.1).T.copy()  # [K, N]
    bias = RNG.standard_normal(192).astype(np.float32)
    model, feeds = _matmul_model(64, 256, 192, w, bias)
    mod = slimc.compile(model)
    assert "sparse_matmul" in _ops(mod)
    np.testing.assert_allclose(mod(**feeds)[0], run_onnxruntime(model, feeds)[0], rtol=1e-4,
                               atol=1e-4)
    dense = slimc.compile(model, disable_passes=["sparsify"])
    assert "sparse_matmul" not in _ops(dense)


def test_sparse_ffn_sinks_the_transpose():
    """matmul -> bias -> gelu -> matmul, both 90% sparse: the first product is stored
    untransposed (it is the second one's transposed input), so one transpose is left (x's)."""
    w1 = sparse_matrix(128, 96, 0.1).T.copy()
    w2 = sparse_matrix(96, 128, 0.1).T.copy()
    bias = RNG.standard_normal(128).astype(np.float32)
    model, feeds = _matmul_model(48, 96, 128, w1, bias, gelu_ffn=w2)
    mod = slimc.compile(model)
    ops = _ops(mod)
    assert ops.count("sparse_matmul") == 2 and ops.count("transpose") == 1, ops
    outs = [n for n in mod.graph.nodes if n.op == "sparse_matmul"]
    assert [int(n.attrs["transpose_out"]) for n in outs] == [0, 1]
    np.testing.assert_allclose(mod(**feeds)[0], run_onnxruntime(model, feeds)[0], rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("m, tiled", [(128, True), (192, True), (64, False), (96, False)])
def test_sparse_ffn_with_tokens_in_tiles(m, tiled):
    """M a multiple of TOKEN_TILE (and more than one tile): the first product reads x's
    tiles [M / 64, 64, K] (x_rows: no transpose before it) and stays in the form [M / 64, N,
    64] for the second, the second puts the tokens back in one run; otherwise x^T is [K, M], a
    transpose before the first. Both against onnxruntime, at 1 and 3 threads."""
    from slimc.passes.sparsify import TOKEN_TILE

    w1 = sparse_matrix(128, 96, 0.1).T.copy()
    w2 = sparse_matrix(96, 128, 0.1).T.copy()
    bias = RNG.standard_normal(128).astype(np.float32)
    model, feeds = _matmul_model(m, 96, 128, w1, bias, gelu_ffn=w2)
    want = run_onnxruntime(model, feeds)[0]
    for threads in (1, 3):
        mod = slimc.compile(model, threads=threads)
        ops = _ops(mod)
        assert ops.count("sparse_matmul") == 2 and ops.count("transpose") == (not tiled), ops
        first, second = [n for n in mod.graph.nodes if n.op == "sparse_matmul"]
        assert (first.attrs["transpose_out"], second.attrs["transpose_out"]) == (0, 1)
        assert (first.attrs.get("x_rows", 0), second.attrs.get("x_rows", 0)) == (int(tiled), 0)
        assert second.attrs["tiled"] == int(tiled)
        x_shape = (m // TOKEN_TILE, TOKEN_TILE, 96) if tiled else (96, m)
        assert first.inputs[0].type.shape == x_shape
        assert second.inputs[0].type.shape == ((m // TOKEN_TILE, 128, TOKEN_TILE) if tiled
                                               else (128, m))
        assert second.outputs[0].type.shape == (m, 96)
        np.testing.assert_allclose(mod(**feeds)[0], want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("m, tiled", [(128, True), (96, False)])
def test_keys_projection_stored_for_attention(m, tiled, capfd, monkeypatch):
    """Attention's K^T, transpose(reshape(x @ Wk + b, [1, M, H, D]), [0, 2, 3, 1]): the sparse
    product's untransposed form [H * D, M] is K^T already (no transpose left), or with the
    tokens in tiles [T, H * D, 64], a transpose that moves runs of 64 tokens. The queries'
    transpose [0, 2, 1, 3] puts D last: that product is stored transposed back as before."""
    heads, d, k = 4, 32, 96
    wq, wk = (sparse_matrix(heads * d, k, 0.1).T.copy() for _ in range(2))
    bias = RNG.standard_normal(heads * d).astype(np.float32)
    shape = np.array([1, m, heads, d], np.int64)
    nodes = [helper.make_node("MatMul", ["x", "wq"], ["q"]),
             helper.make_node("Reshape", ["q", "shape"], ["q4"]),
             helper.make_node("Transpose", ["q4"], ["queries"], perm=[0, 2, 1, 3]),
             helper.make_node("MatMul", ["x", "wk"], ["kk"]),
             helper.make_node("Add", ["kk", "bias"], ["kb"]),
             helper.make_node("Reshape", ["kb", "shape"], ["k4"]),
             helper.make_node("Transpose", ["k4"], ["keys_t"], perm=[0, 2, 3, 1])]
    x = RNG.standard_normal((1, m, k)).astype(np.float32)
    model = make_model(nodes, {"x": x}, ["queries", "keys_t"],
                       {"wq": wq, "wk": wk, "bias": bias, "shape": shape})
    want = run_onnxruntime(model, {"x": x})
    monkeypatch.setenv("SLIMC_DEBUG", "sparsify")
    for threads in (1, 3):
        mod = slimc.compile(model, threads=threads)
        assert "transpose to %queries stays: it does not keep the tokens last" in \
            capfd.readouterr().err
        products = {n.outputs[0].name: n.attrs["transpose_out"]
                    for n in mod.graph.nodes if n.op == "sparse_matmul"}
        assert products == {"q": 1, "kk": 0}, products
        perms = [n.attrs["perm"] for n in mod.graph.nodes if n.op == "transpose"]
        x_t = [0, 1, 3, 2] if tiled else [0, 2, 1]  # one x^T for both products
        assert perms == ([x_t, [0, 2, 1, 3], [1, 2, 0, 3]] if tiled else
                         [x_t, [0, 2, 1, 3]]), perms
        if tiled:  # [tiles, H, D, 64 tokens] -> [H, D, tiles, 64]: runs of a tile's tokens
            runs = [n for n in mod.graph.nodes if n.op == "transpose"][-1]
            assert runs.inputs[0].type.shape == (m // 64, heads, d, 64)
        for got, ref in zip(mod(x=x), want):
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-4)


def test_tiled_sparse_matmul_op():
    """The op itself: b [2, 3, K, 64] tiled, the result [2, 192, rows], in the interpreter and
    the kernel (with a fused bias), against numpy."""
    a = sparse_matrix(40, 30, 0.2, 1)
    b = RNG.standard_normal((2, 3, 30, 64)).astype(np.float32)
    g = Graph("tiled")
    x = g.add_input("x", TensorType(dtypes.f32, b.shape))
    consts = [g.add_constant(n, d) for n, d in zip(("v", "i", "o"), compress(a, 1))]
    y = g.make_node("sparse_matmul", [x] + consts,
                    {"rows": 40, "block": 1, "transpose_out": 1, "tiled": 1},
                    [TensorType(dtypes.f32, (2, 192, 40))], ["y"]).outputs[0]
    bias = RNG.standard_normal(40).astype(np.float32)
    z = g.make_node("add", [y, g.add_constant("bias", bias)], {},
                    [TensorType(dtypes.f32, (2, 192, 40))], ["z"]).outputs[0]
    g.outputs.append(z)
    want = np.swapaxes(a.astype(np.float64) @ b, -1, -2).reshape(2, 192, 40) + bias
    assert_close(slimc.interpret(g, b)[0], want, 30)
    for threads in (1, 2):
        assert_close(slimc.compile(g, threads=threads)(b)[0], want, 30)


@pytest.mark.parametrize("target, sparse", [("x86-64-v3", False), ("x86-64-v4", True)])
def test_one_token_csr_choice_says_why(target, sparse, capfd, monkeypatch):
    """One token at 10% density: gathering x (AVX2) is predicted no faster than dense, so the
    layer stays dense and the log says why; AVX-512 permutes x from registers and goes CSR.
    (The tests use the fixed cost table, SLIMC_COST_MODEL=builtin: no timing decides.)"""
    monkeypatch.setenv("SLIMC_DEBUG", "sparsify")
    w = sparse_matrix(128, 96, 0.1).T.copy()
    model, feeds = _matmul_model(1, 96, 128, w)
    mod = slimc.compile(model, target=target)
    err = capfd.readouterr().err
    assert f"density {100 * np.count_nonzero(w) / w.size:.1f}%" in err
    assert ("CSR: predicted" in err) if sparse else ("dense: CSR, the best sparse form" in err)
    assert ("sparse_matmul" in _ops(mod)) == sparse
    if runnable_here(target):
        np.testing.assert_allclose(mod(**feeds)[0], feeds["x"] @ w, rtol=1e-4, atol=1e-4)
    forced = slimc.compile(model, disable_passes=["sparsify"], passes=[Sparsify(force=1)])
    assert "sparse_matmul" in _ops(forced)
    np.testing.assert_allclose(forced(**feeds)[0], feeds["x"] @ w, rtol=1e-4, atol=1e-4)


def test_forced_form_is_checked_when_the_pass_is_made():
    assert Sparsify(force="csr").force == 1 and Sparsify(force=8).force == 8
    assert Sparsify(force="dense").force == "dense"
    for bad in ("1x8", 0, 2.5, True):
        with pytest.raises(SlimcError, match=r"Sparsify\(force=.*'dense', 'csr' or a block"):
            Sparsify(force=bad)


@pytest.mark.parametrize("dense_us, sparse_us, chosen", [(10.0, 9.5, False), (10.0, 8.0, True)])
def test_measured_choice_needs_a_margin(dense_us, sparse_us, chosen, capfd, monkeypatch,
                                        tmp_path):
    """With timings deciding (SLIMC_COST_MODEL=auto), a sparse form that measured only a
    little faster stays dense (such a margin is within a small layer's run-to-run noise)."""
    from slimc.codegen.cpu import sparse_cost

    monkeypatch.setenv("SLIMC_COST_MODEL", "auto")
    monkeypatch.setenv("SLIMC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SLIMC_DEBUG", "sparsify")
    monkeypatch.setattr(sparse_cost, "_measure",
                        lambda layer, blocks, target: [dense_us * 1e-6] + [sparse_us * 1e-6])
    w = sparse_matrix(128, 96, 0.1).T.copy()
    model, feeds = _matmul_model(4, 96, 128, w)
    mod = slimc.compile(model)
    err = capfd.readouterr().err
    assert ("sparse_matmul" in _ops(mod)) == chosen
    assert (f"measured dense {dense_us:.0f} us" in err) and \
        (("x faster: measured" in err) if chosen else ("chosen 1.1x faster or more" in err))
    np.testing.assert_allclose(mod(**feeds)[0], feeds["x"] @ w, rtol=1e-4, atol=1e-4)


def test_measured_choice_times_the_close_candidates(capfd, monkeypatch, tmp_path):
    """A weight pruned in 1x8 blocks: the cost table rates 1x8, 1x4 and CSR close, all three
    are timed and the fastest measured (here CSR) is chosen; an unstructured weight is timed
    as CSR alone (no other format comes close)."""
    from slimc.codegen.cpu import sparse_cost

    monkeypatch.setenv("SLIMC_COST_MODEL", "auto")
    monkeypatch.setenv("SLIMC_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SLIMC_DEBUG", "sparsify")
    timed = []
    sparse_us = {1: 3.0, 4: 4.0, 8: 5.0, 16: 6.0}

    def measure(layer, blocks, target):
        timed.extend(blocks)
        return [10e-6] + [sparse_us[b] * 1e-6 for b in blocks]

    monkeypatch.setattr(sparse_cost, "_measure", measure)
    for w, forms, chosen in ((sparse_matrix(128, 96, 0.1, block=8), [8, 4, 1], 1),
                             (sparse_matrix(128, 96, 0.1), [1], 1)):
        timed.clear()
        model, feeds = _matmul_model(32, 96, 128, w.T.copy())  # 32 tokens: columns in vectors
        mod = slimc.compile(model)
        err = capfd.readouterr().err
        assert timed == forms, err
        [node] = [n for n in mod.graph.nodes if n.op == "sparse_matmul"]
        assert node.attrs["block"] == chosen
        assert "CSR, 3.3x faster: measured dense 10 us, " in err, err
        if len(forms) > 1:
            assert "1x8 blocks 5 us, 1x4 blocks 4 us, CSR 3 us" in err, err
        np.testing.assert_allclose(mod(**feeds)[0], feeds["x"] @ w.T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("trans_b", [0, 1])
def test_sparse_gemm(trans_b):
    w = sparse_matrix(80, 64, 0.1, block=8)  # [N, K]: 1x8 blocks along N
    b = w if trans_b else w.T.copy()
    c = RNG.standard_normal(80).astype(np.float32)
    node = helper.make_node("Gemm", ["x", "b", "c"], ["y"], alpha=0.5, beta=2.0, transB=trans_b)
    x = RNG.standard_normal((24, 64)).astype(np.float32)
    model = make_model([node], {"x": x}, ["y"], {"b": b, "c": c})
    mod = slimc.compile(model)
    assert "sparse_matmul" in _ops(mod)
    np.testing.assert_allclose(mod(x=x)[0], run_onnxruntime(model, {"x": x})[0], rtol=1e-4,
                               atol=1e-4)


def test_sparse_conv1x1_keeps_its_region_nchw(capfd, monkeypatch):
    """conv3x3 -> relu -> 1x1 conv (85% zeros) -> relu -> depthwise 3x3: the 1x1 becomes
    sparse_conv and its neighbours stay NCHW (no layout conversions around it)."""
    monkeypatch.setenv("SLIMC_DEBUG", "layout")
    c = 32
    w1 = (RNG.standard_normal((c, 8, 3, 3)) * 0.2).astype(np.float32)
    w2 = sparse_matrix(c, c, 0.15).reshape(c, c, 1, 1)
    b2 = RNG.standard_normal(c).astype(np.float32)
    wd = (RNG.standard_normal((c, 1, 3, 3)) * 0.3).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["ar"]),
             helper.make_node("Conv", ["ar", "w2", "b2"], ["p"]),
             helper.make_node("Relu", ["p"], ["pr"]),
             helper.make_node("Conv", ["pr", "wd"], ["y"], pads=[1, 1, 1, 1], group=c)]
    x = RNG.standard_normal((1, 8, 20, 20)).astype(np.float32)
    model = make_model(nodes, {"x": x}, ["y"], {"w1": w1, "w2": w2, "b2": b2, "wd": wd})
    mod = slimc.compile(model)
    ops = _ops(mod)
    assert "sparse_conv" in ops and "to_blocked" not in ops and "from_blocked" not in ops, ops
    assert "sparse 1x1 convolutions" in capfd.readouterr().err
    np.testing.assert_allclose(mod(x=x)[0], run_onnxruntime(model, {"x": x})[0], rtol=1e-4,
                               atol=1e-4)


def test_sparse_graph_prints_and_parses_back():
    w = sparse_matrix(48, 64, 0.1).T.copy()
    model, _ = _matmul_model(16, 64, 48, w)
    mod = slimc.compile(model)
    text = str(mod.graph)
    assert "sparse_matmul(" in text and "rows=48" in text
