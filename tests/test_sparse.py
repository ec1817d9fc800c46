"""Sparse weights: the compressed format, the sparse kernels, the `sparsify` pass.

Oracles: numpy (A @ b on the dense matrix the test built itself, never slimc's `densify`)
and onnxruntime on ONNX models whose weights the test pruned with numpy. Sparse kernels sum
in another order than the dense ones, so results agree to float rounding, not bitwise.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

import slimc
from slimc.codegen.cpu.target import CpuTarget
from slimc.ir import Graph, SlimcError, TensorType, dtypes
from slimc.ir.ops.sparse import compress, densify
from slimc.codegen.cpu.gen_sparse_row import IDLE, WINDOW, block_slices, windowed_format
from slimc.passes.sparsify import Sparsify, structure

from .oracle import make_model, run_onnxruntime

RNG = np.random.default_rng(7)


def _runnable(target: str) -> bool:
    return CpuTarget.from_name(target).is_host


def _targets():
    out = ["x86-64-v3"]
    host = CpuTarget.host()
    if "avx512f" in host.feature_set or "+avx512f" in host.features:
        out.append("x86-64-v4")
    return out


def sparse_matrix(rows: int, cols: int, density: float, block: int = 1, empty_rows=(),
                  empty_cols=()) -> np.ndarray:
    """A random [rows, cols] matrix whose nonzeros come in blocks of `block` rows x 1."""
    a = RNG.standard_normal((rows, cols)).astype(np.float32)
    nb = -(-rows // block)
    keep = RNG.random((nb, cols)) < density
    a *= np.repeat(keep, block, axis=0)[:rows]
    a[list(empty_rows)] = 0
    a[:, list(empty_cols)] = 0
    return a


# ----- the format -------------------------------------------------------------------------------

@pytest.mark.parametrize("block", [1, 4, 8, 16])
@pytest.mark.parametrize("density", [0.0, 0.15, 1.0])
def test_compress_round_trip(block, density):
    a = sparse_matrix(37, 23, density, block, empty_rows=[3], empty_cols=[5])
    values, indices, offsets = compress(a, block)
    assert values.dtype == np.float32 and indices.dtype == np.int32
    assert offsets[0] == 0 and offsets[-1] == len(indices) == values.size // block
    assert np.array_equal(densify(values, indices, offsets, 37, block, 23), a)
    info = structure(a)
    assert info.nnz == np.count_nonzero(a)
    assert info.empty_rows == int((~a.any(axis=1)).sum())
    assert info.empty_cols == int((~a.any(axis=0)).sum())


# ----- the kernels ------------------------------------------------------------------------------

def _sparse_graph(a, b_shape, block, op="sparse_matmul", transpose_out=0, relu=False,
                  bias=None, x_rows=0):
    g = Graph("sparse")
    x_shape = tuple(b_shape[:-2]) + (b_shape[-1], b_shape[-2]) if x_rows else b_shape
    x = g.add_input("x", TensorType(dtypes.f32, x_shape))
    v, i, o = compress(a, block)
    consts = [g.add_constant(n, d) for n, d in (("w.values", v), ("w.indices", i),
                                                ("w.offsets", o))]
    rows = a.shape[0]
    if op == "sparse_conv":
        shape, attrs = (b_shape[0], rows) + tuple(b_shape[2:]), {"rows": rows, "block": block}
    else:
        tail = (b_shape[-1], rows) if transpose_out else (rows, b_shape[-1])
        shape = tuple(b_shape[:-2]) + tail
        attrs = {"rows": rows, "block": block, "transpose_out": transpose_out,
                 "x_rows": x_rows}
    t = TensorType(dtypes.f32, shape)
    y = g.make_node(op, [x] + consts, attrs, [t], ["y"]).outputs[0]
    if bias is not None:
        y = g.make_node("add", [y, g.add_constant("bias", bias)], {}, [t], ["biased"]).outputs[0]
    if relu:
        y = g.make_node("relu", [y], {}, [t], ["r"]).outputs[0]
    g.outputs.append(y)
    return g


def _expected(a, b, transpose_out=0, relu=False, bias=None):
    y = np.matmul(a.astype(np.float64), b.astype(np.float64))
    if transpose_out:
        y = np.swapaxes(y, -1, -2)
    if bias is not None:
        y = y + bias
    return np.maximum(y, 0) if relu else y


def _close(got, want, k):
    scale = np.sqrt(k) * 1e-6 * max(1.0, np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=scale * 10)


@pytest.mark.parametrize("target", _targets())
@pytest.mark.parametrize("block", [1, 4, 8, 16])
@pytest.mark.parametrize("transpose_out", [0, 1])
@pytest.mark.parametrize("cols", [1, 3, 8, 40, 70])
def test_sparse_matmul_kernel(target, block, transpose_out, cols):
    a = sparse_matrix(37, 29, 0.3, block, empty_rows=[0, 20], empty_cols=[28])
    b = RNG.standard_normal((2, 29, cols)).astype(np.float32)
    bias = RNG.standard_normal(37 if transpose_out else (37, 1)).astype(np.float32)
    g = _sparse_graph(a, b.shape, block, transpose_out=transpose_out, relu=True, bias=bias)
    got = slimc.compile(g, target=target)(b)[0]
    _close(got, _expected(a, b, transpose_out, True, bias), 29)
    # the interpreter (the op's reference) says the same
    _close(slimc.interpret(g, b)[0], _expected(a, b, transpose_out, True, bias), 29)


@pytest.mark.parametrize("target", _targets())
@pytest.mark.parametrize("block", [1, 8])
@pytest.mark.parametrize("transpose_out", [0, 1])
@pytest.mark.parametrize("cols", [3, 64, 70])
def test_kernel_transposes_x_rows(target, block, transpose_out, cols):
    """x_rows: the first input is x [3 entries, C, K], b its transpose, which each thread
    packs entry by entry (K and C with tails past whole register tiles; C = 3 takes the
    column-at-a-time path), at 1 to 3 threads, against numpy and the interpreter."""
    a = sparse_matrix(37, 29, 0.3, block, empty_rows=[0, 20], empty_cols=[28])
    x = RNG.standard_normal((3, cols, 29)).astype(np.float32)
    b = np.swapaxes(x, -1, -2)
    bias = RNG.standard_normal(37 if transpose_out else (37, 1)).astype(np.float32)
    g = _sparse_graph(a, b.shape, block, transpose_out=transpose_out, relu=True, bias=bias,
                      x_rows=1)
    want = _expected(a, b, transpose_out, True, bias)
    for threads in (1, 2, 3):
        _close(slimc.compile(g, target=target, threads=threads)(x)[0], want, 29)
    _close(slimc.interpret(g, x)[0], want, 29)


@pytest.mark.parametrize("k", [300, (1 << 16) + 700])
@pytest.mark.parametrize("cols", [2, 40])
def test_column_indices_past_16_bits(k, cols):
    """The kernel reads column indices as 16 bits when K fits, else 32: nonzeros in the last
    columns (past 2^16 for the wide K), in vectors of b's columns and gathered (2 columns)."""
    a = sparse_matrix(24, k, 0.02)
    a[:, -3:] = RNG.standard_normal((24, 3)).astype(np.float32)
    b = RNG.standard_normal((k, cols)).astype(np.float32)
    g = _sparse_graph(a, b.shape, 1)
    _close(slimc.compile(g)(b)[0], _expected(a, b), k)


@pytest.mark.parametrize("target", _targets())
@pytest.mark.parametrize("block", [1, 4])
@pytest.mark.parametrize("transpose_out", [0, 1])
@pytest.mark.parametrize("cols", [37, 150])
def test_columns_in_vectors_over_chunks_of_k(target, block, transpose_out, cols):
    """K = 700 with a column tile wider than L1 holds: the rows run over K in chunks, their
    sums kept between chunks (empty rows, a chunk with no stored value, a partial tile).
    With several column tiles of one batch entry, threads run the same rows at once in
    different tiles (each tile needs sums of its own)."""
    k, rows, batch = (700, 45, 2) if cols < 100 else (700, 600, 1)
    a = sparse_matrix(rows, k, 0.2, block, empty_rows=[2, 40])
    a[:, 200:300] = 0
    b = RNG.standard_normal((batch, k, cols)).astype(np.float32)
    bias = RNG.standard_normal(rows if transpose_out else (rows, 1)).astype(np.float32)
    g = _sparse_graph(a, b.shape, block, transpose_out=transpose_out, relu=True, bias=bias)
    for threads in (1, 2, 3):
        got = slimc.compile(g, target=target, threads=threads)(b)[0]
        _close(got, _expected(a, b, transpose_out, True, bias), k)


def test_chunks_of_k_are_even_and_skipped_for_sparse_rows():
    """Chunks cover K in near-equal parts of whole vectors; rows too sparse to pay for the
    sums' round trip run K whole while the slab fits in L2, and are chunked past it."""
    from slimc.codegen.cpu.gen_sparse import CHUNK_MIN_BLOCKS, SLAB_L2_BYTES, chunk_rows

    for k, most in ((256, 192), (1024, 192), (700, 256), (29, 16)):
        kc = chunk_rows(k, most, 16, 1 << 40, float(k))  # dense rows: always chunked
        chunks = -(-k // kc)
        assert kc % 16 == 0 and kc <= most and chunks == -(-k // most), (k, kc)
        assert k - (chunks - 1) * kc > 0 and kc * chunks - k < 16 * chunks, (k, kc)
    sparse_row = (CHUNK_MIN_BLOCKS - 1) * 256 / 192  # per row of K = 256: 23 a chunk
    assert chunk_rows(256, 192, 16, SLAB_L2_BYTES, sparse_row) == 256
    assert chunk_rows(256, 192, 16, SLAB_L2_BYTES + 1, sparse_row) == 128
    assert chunk_rows(256, 192, 16, SLAB_L2_BYTES, sparse_row * 2) == 128


@pytest.mark.parametrize("rows, k", [(5, 32), (77, 45), (130, 200), (64, 40)])
def test_windowed_format_holds_the_matrix(rows, k):
    """Every stored value once, at its column: rebuilt from the steps by the test."""
    a = sparse_matrix(rows, k, 0.15, empty_rows=[1, 3], empty_cols=[0])
    v, i, o = compress(a, 1)
    lanes = 64
    sv, so, ss, starts = windowed_format(v, i, o, rows, k, lanes)
    rebuilt = np.zeros((len(starts) - 1) * lanes * k, np.float32).reshape(-1, k)
    for sl in range(len(starts) - 1):
        for t in range(starts[sl], starts[sl + 1]):
            assert 0 <= ss[t] <= k - WINDOW
            work = so[t] != IDLE
            assert work.any()  # no step without work
            cols = ss[t] + so[t][work].astype(np.int64)
            assert (cols < ss[t] + WINDOW).all()
            rebuilt[sl * lanes + np.nonzero(work)[0], cols] += sv[t][work]
    assert np.array_equal(rebuilt[:rows], a) and not rebuilt[rows:].any()


@pytest.mark.parametrize("target", _targets())
@pytest.mark.parametrize("k", [31, 32, 45, 200])
@pytest.mark.parametrize("threads", [1, 3])
def test_one_token_kernel(target, k, threads):
    """One token, stored transposed (the sparsify pass's form for M = 1): windowed steps on
    AVX-512 with K >= 32, gathered otherwise; rows across slices of 64 and a partial one;
    a NaN in x reaches the rows storing a value at its column, and no other (rows that idle
    in a step read x too, and must not multiply it)."""
    rows = 77
    a = sparse_matrix(rows, k, 0.2, empty_rows=[0, 70], empty_cols=[k - 1, 3])
    b = RNG.standard_normal((2, k, 1)).astype(np.float32)
    bias = RNG.standard_normal(rows).astype(np.float32)
    g = _sparse_graph(a, b.shape, 1, transpose_out=1, relu=True, bias=bias)
    got = slimc.compile(g, target=target, threads=threads)(b)[0]
    _close(got, _expected(a, b, 1, True, bias), k)
    # NaN at columns 3 (no stored value) and c: exactly the rows storing a value at c see it
    c = int(np.argmax(np.count_nonzero(a, axis=0)))
    b[:, [3, c]] = np.nan
    got = slimc.compile(g, target=target, threads=threads)(b)[0]
    hit = a[:, c] != 0
    assert np.isnan(got[..., hit]).all() and not np.isnan(got[..., ~hit]).any()
    want = _expected(a, np.nan_to_num(b), 1, True, bias)
    _close(got[..., ~hit], want[..., ~hit], k)


@pytest.mark.parametrize("block", [1, 8])
def test_large_outputs_run_row_parts_first(block):
    """An output past PARTS_FIRST_BYTES runs its items rows first (each part over every
    column tile, a partial last tile), on 1 and 3 threads, against numpy."""
    from slimc.codegen.cpu.gen_sparse import parts_first

    rows, k, cols = 300, 40, 1000
    assert parts_first(False, rows * cols * 4) and not parts_first(True, rows * cols * 4)
    a = sparse_matrix(rows, k, 0.2, block, empty_rows=[5])
    b = RNG.standard_normal((1, k, cols)).astype(np.float32)
    bias = RNG.standard_normal((rows, 1)).astype(np.float32)
    g = _sparse_graph(a, b.shape, block, relu=True, bias=bias)
    for threads in (1, 3):
        _close(slimc.compile(g, threads=threads)(b)[0], _expected(a, b, 0, True, bias), k)


def test_block_slices_hold_the_matrix():
    """Every stored block once, in its row's slot, in stored order; slices' rows sorted
    longest first; `full` steps are whole for every row of a slice."""
    a = sparse_matrix(203, 90, 0.2, 8, empty_rows=range(16, 24))
    v, i, o = compress(a, 8)
    order, lengths, starts, full, blocks = block_slices(o, 8)
    assert sorted(order[order >= 0]) == list(range(len(o) - 1))
    assert (np.diff(lengths[order >= 0]) <= 0).all()
    rebuilt = np.zeros(len(o) - 1, object)
    for sl in range(len(starts) - 1):
        slots = blocks[starts[sl] * 8:starts[sl + 1] * 8].reshape(-1, 8)
        assert (slots[:full[sl]] >= 0).all() or order[sl * 8 + 7] < 0
        for r in range(8):
            rb = order[sl * 8 + r]
            if rb >= 0:
                rebuilt[rb] = [int(j) for j in slots[:, r] if j >= 0]
    assert all(rebuilt[rb] == list(range(o[rb], o[rb + 1])) for rb in range(len(o) - 1))


@pytest.mark.parametrize("target", _targets())
@pytest.mark.parametrize("block", [4, 8, 16])
@pytest.mark.parametrize("threads", [1, 3])
def test_one_token_blocks_kernel(target, block, threads):
    """One token, weights in blocks: slices of eight rows sorted by length (a partial last
    block row, a partial last slice, empty rows); 16- and 32-bit column indices; a NaN in x
    reaches only the rows storing a value at its column (steps past a row's end are masked)."""
    for k in (300, (1 << 16) + 40):
        rows = 203
        a = sparse_matrix(rows, k, 0.1 if k < 1000 else 0.001, block, empty_rows=range(block))
        c = k - 2
        a[block * 3:block * 4, c] = 1.5  # one row block stores column c
        b = RNG.standard_normal((2, k, 1)).astype(np.float32)
        bias = RNG.standard_normal(rows).astype(np.float32)
        g = _sparse_graph(a, b.shape, block, transpose_out=1, relu=True, bias=bias)
        mod = slimc.compile(g, target=target, threads=threads)
        _close(mod(b)[0], _expected(a, b, 1, True, bias), k)
        b[:, [0, 3, c]] = np.nan  # columns 0 (the padding's) and 3 store nothing
        a[:, [0, 3]] = 0
        g = _sparse_graph(a, b.shape, block, transpose_out=1, relu=True, bias=bias)
        got = slimc.compile(g, target=target, threads=threads)(b)[0]
        hit = a[:, c] != 0
        assert np.isnan(got[..., hit]).all() and not np.isnan(got[..., ~hit]).any()
        want = _expected(a, np.nan_to_num(b), 1, True, bias)
        _close(got[..., ~hit], want[..., ~hit], k)


@pytest.mark.parametrize("density", [0.0, 1.0])
@pytest.mark.parametrize("block", [1, 16])
def test_sparse_matmul_extreme_densities(density, block):
    a = sparse_matrix(33, 17, density, block)
    for cols in (1, 20):
        b = RNG.standard_normal((17, cols)).astype(np.float32)
        for t in (0, 1):
            got = slimc.compile(_sparse_graph(a, b.shape, block, transpose_out=t))(b)[0]
            _close(got, _expected(a, b, t), 17)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_sparse_kernels_threads(threads):
    a = sparse_matrix(300, 64, 0.1, 1)
    a[100:180] = 0  # uneven work: the parts must still cover every row once
    b = RNG.standard_normal((64, 50)).astype(np.float32)
    for t in (0, 1):
        g = _sparse_graph(a, b.shape, 1, transpose_out=t)
        _close(slimc.compile(g, threads=threads)(b)[0], _expected(a, b, t), 64)
    x = RNG.standard_normal((2, 64, 5, 7)).astype(np.float32)
    g = _sparse_graph(a, x.shape, 1, op="sparse_conv")
    want = np.einsum("ok,nkhw->nohw", a.astype(np.float64), x)
    _close(slimc.compile(g, threads=threads)(x)[0], want, 64)


@pytest.mark.parametrize("target", _targets())
@pytest.mark.parametrize("shape", [(40, 29), (2, 3, 37, 45), (16, 16), (5, 9), (64, 130)])
def test_tiled_transpose(target, shape):
    g = Graph("t")
    x = g.add_input("x", TensorType(dtypes.f32, shape))
    r = len(shape)
    perm = list(range(r - 2)) + [r - 1, r - 2]
    out = TensorType(dtypes.f32, tuple(shape[p] for p in perm))
    g.outputs.append(g.make_node("transpose", [x], {"perm": perm}, [out], ["y"]).outputs[0])
    a = RNG.standard_normal(shape).astype(np.float32)
    assert np.array_equal(slimc.compile(g, target=target)(a)[0], np.swapaxes(a, -1, -2))


@pytest.mark.parametrize("target", _targets())
@pytest.mark.parametrize("shape, flat", [((1, 40, 48), (40, 48)), ((2, 3, 37, 45), (6, 37, 45)),
                                         ((1, 8, 4, 16), (1, 32, 16))])
def test_tiled_transpose_after_reshape(target, shape, flat):
    """A flattened matmul input, then transposed (one fused kernel): the tiles read the
    reshape's input in place."""
    g = Graph("t")
    x = g.add_input("x", TensorType(dtypes.f32, shape))
    dims = g.add_constant("dims", np.array(flat, np.int64))
    r = g.make_node("reshape", [x, dims], {}, [TensorType(dtypes.f32, flat)], ["r"]).outputs[0]
    perm = list(range(len(flat) - 2)) + [len(flat) - 1, len(flat) - 2]
    out = TensorType(dtypes.f32, tuple(flat[p] for p in perm))
    g.outputs.append(g.make_node("transpose", [r], {"perm": perm}, [out], ["y"]).outputs[0])
    a = RNG.standard_normal(shape).astype(np.float32)
    mod = slimc.compile(g, target=target)
    assert np.array_equal(mod(a)[0], np.swapaxes(a.reshape(flat), -1, -2))
    assert len(mod.kernels) == 1 and "tr.lo1" in mod.llvm_ir  # in register tiles


# ----- the pass ---------------------------------------------------------------------------------

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
    _close(slimc.interpret(g, b)[0], want, 30)
    for threads in (1, 2):
        _close(slimc.compile(g, threads=threads)(b)[0], want, 30)


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
    if _runnable(target):
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
