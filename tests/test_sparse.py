"""Sparse weights: the compressed format and the sparse kernels (the pass: test_sparsify.py).

Oracles: numpy (A @ b on the dense matrix the test built itself, never slimc's `densify`)
and onnxruntime on ONNX models whose weights the test pruned with numpy. Sparse kernels sum
in another order than the dense ones, so results agree to float rounding, not bitwise.
"""

from __future__ import annotations

import numpy as np
import pytest

import slimc
from slimc.ir import Graph, TensorType, dtypes
from slimc.ir.ops.sparse import compress, densify
from slimc.codegen.cpu.gen_sparse_row import IDLE, WINDOW, block_slices, windowed_format
from slimc.passes.sparsify import structure

from .sparse_cases import RNG, assert_close, host_targets, sparse_matrix

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


@pytest.mark.parametrize("target", host_targets())
@pytest.mark.parametrize("block", [1, 4, 8, 16])
@pytest.mark.parametrize("transpose_out", [0, 1])
@pytest.mark.parametrize("cols", [1, 3, 8, 40, 70])
def test_sparse_matmul_kernel(target, block, transpose_out, cols):
    a = sparse_matrix(37, 29, 0.3, block, empty_rows=[0, 20], empty_cols=[28])
    b = RNG.standard_normal((2, 29, cols)).astype(np.float32)
    bias = RNG.standard_normal(37 if transpose_out else (37, 1)).astype(np.float32)
    g = _sparse_graph(a, b.shape, block, transpose_out=transpose_out, relu=True, bias=bias)
    got = slimc.compile(g, target=target)(b)[0]
    assert_close(got, _expected(a, b, transpose_out, True, bias), 29)
    # the interpreter (the op's reference) says the same
    assert_close(slimc.interpret(g, b)[0], _expected(a, b, transpose_out, True, bias), 29)


@pytest.mark.parametrize("target", host_targets())
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
        assert_close(slimc.compile(g, target=target, threads=threads)(x)[0], want, 29)
    assert_close(slimc.interpret(g, x)[0], want, 29)


@pytest.mark.parametrize("k", [300, (1 << 16) + 700])
@pytest.mark.parametrize("cols", [2, 40])
def test_column_indices_past_16_bits(k, cols):
    """The kernel reads column indices as 16 bits when K fits, else 32: nonzeros in the last
    columns (past 2^16 for the wide K), in vectors of b's columns and gathered (2 columns)."""
    a = sparse_matrix(24, k, 0.02)
    a[:, -3:] = RNG.standard_normal((24, 3)).astype(np.float32)
    b = RNG.standard_normal((k, cols)).astype(np.float32)
    g = _sparse_graph(a, b.shape, 1)
    assert_close(slimc.compile(g)(b)[0], _expected(a, b), k)


@pytest.mark.parametrize("target", host_targets())
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
        assert_close(got, _expected(a, b, transpose_out, True, bias), k)


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


@pytest.mark.parametrize("target", host_targets())
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
    assert_close(got, _expected(a, b, 1, True, bias), k)
    # NaN at columns 3 (no stored value) and c, infinity at column e: exactly the rows
    # storing a value at c see NaN, the rows storing none at c or e are as without them
    # (an x that is not all finite takes the masked steps, where idle lanes multiply nothing)
    counts = np.count_nonzero(a, axis=0)
    c = int(np.argmax(counts))
    e = int(np.argmax(np.where(np.arange(k) == c, -1, counts)))
    b[:, [3, c]] = np.nan
    b[:, e] = np.inf
    got = slimc.compile(g, target=target, threads=threads)(b)[0]
    hit = a[:, c] != 0
    assert np.isnan(got[..., hit]).all()
    clear = ~hit & (a[:, e] == 0)
    assert clear.sum() > 10 and np.isfinite(got[..., clear]).all()
    want = _expected(a, np.nan_to_num(b, posinf=0.0), 1, True, bias)
    assert_close(got[..., clear], want[..., clear], k)


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
        assert_close(slimc.compile(g, threads=threads)(b)[0], _expected(a, b, 0, True, bias), k)


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


@pytest.mark.parametrize("target", host_targets())
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
        assert_close(mod(b)[0], _expected(a, b, 1, True, bias), k)
        b[:, [0, 3, c]] = np.nan  # columns 0 (the padding's) and 3 store nothing
        a[:, [0, 3]] = 0
        g = _sparse_graph(a, b.shape, block, transpose_out=1, relu=True, bias=bias)
        got = slimc.compile(g, target=target, threads=threads)(b)[0]
        hit = a[:, c] != 0
        assert np.isnan(got[..., hit]).all() and not np.isnan(got[..., ~hit]).any()
        want = _expected(a, np.nan_to_num(b), 1, True, bias)
        assert_close(got[..., ~hit], want[..., ~hit], k)


@pytest.mark.parametrize("density", [0.0, 1.0])
@pytest.mark.parametrize("block", [1, 16])
def test_sparse_matmul_extreme_densities(density, block):
    a = sparse_matrix(33, 17, density, block)
    for cols in (1, 20):
        b = RNG.standard_normal((17, cols)).astype(np.float32)
        for t in (0, 1):
            got = slimc.compile(_sparse_graph(a, b.shape, block, transpose_out=t))(b)[0]
            assert_close(got, _expected(a, b, t), 17)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_sparse_kernels_threads(threads):
    a = sparse_matrix(300, 64, 0.1, 1)
    a[100:180] = 0  # uneven work: the parts must still cover every row once
    b = RNG.standard_normal((64, 50)).astype(np.float32)
    for t in (0, 1):
        g = _sparse_graph(a, b.shape, 1, transpose_out=t)
        assert_close(slimc.compile(g, threads=threads)(b)[0], _expected(a, b, t), 64)
    x = RNG.standard_normal((2, 64, 5, 7)).astype(np.float32)
    g = _sparse_graph(a, x.shape, 1, op="sparse_conv")
    want = np.einsum("ok,nkhw->nohw", a.astype(np.float64), x)
    assert_close(slimc.compile(g, threads=threads)(x)[0], want, 64)


@pytest.mark.parametrize("target", host_targets())
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


@pytest.mark.parametrize("target", host_targets())
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
