"""Batch-1 layers (fewer rows than SPLIT_ROWS_BELOW) with constant weights split their
columns over threads: every block must land where it belongs, epilogue included."""

from __future__ import annotations

import numpy as np
import pytest

import slimc
from slimc.codegen.cpu.gen_linalg import SPLIT_ROWS_BELOW
from slimc.ir import Graph, TensorType, dtypes, interpret, verify

F32 = dtypes.f32


def skinny(m, k, n, epilogue, rng):
    g = Graph("skinny")
    x = g.add_input("x", TensorType(F32, (m, k)))
    w = g.add_constant("w", rng.standard_normal((k, n)).astype(np.float32))
    y = g.make_node("matmul", [x, w], {}, [TensorType(F32, (m, n))], ["y"]).outputs[0]
    if epilogue:
        b = g.add_constant("b", rng.standard_normal(n).astype(np.float32))
        r = g.add_input("r", TensorType(F32, (m, n)))
        y = g.make_node("add", [y, b], {}, [y.type], ["yb"]).outputs[0]
        y = g.make_node("relu", [y], {}, [y.type], ["yr"]).outputs[0]
        y = g.make_node("add", [y, r], {}, [y.type], ["out"]).outputs[0]
    g.outputs.append(y)
    verify(g)
    return g


@pytest.mark.parametrize("m", [1, 3, SPLIT_ROWS_BELOW - 1])
@pytest.mark.parametrize("n", [17, 100, 257, 1000])
@pytest.mark.parametrize("epilogue", [False, True])
def test_column_blocks(m, n, epilogue):
    rng = np.random.default_rng(m * 1000 + n)
    k = 67
    g = skinny(m, k, n, epilogue, rng)
    ins = [rng.standard_normal((m, k)).astype(np.float32)]
    if epilogue:
        ins.append(rng.standard_normal((m, n)).astype(np.float32))
    want = interpret(g, *ins)[0]
    for threads in (1, 2):
        got = slimc.compile(g, threads=threads)(*ins)[0]
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("trans_b", [0, 1])
@pytest.mark.parametrize("m, n, c_shape", [(1, 100, (100,)), (4, 257, (4, 257)), (2, 33, (2, 1)),
                                           (1, 1000, None)])
def test_gemm_bias_read_by_column_block(m, n, c_shape, trans_b):
    """ONNX Gemm: alpha * x @ w + beta * C, C indexed by the block's absolute columns; with
    transB the weights are packed from their transpose (the MLP of bench/ has transB=1)."""
    rng = np.random.default_rng(n)
    k = 40
    g = Graph("gemm")
    x = g.add_input("x", TensorType(F32, (m, k)))
    wt = rng.standard_normal((n, k) if trans_b else (k, n)).astype(np.float32)
    ins = [x, g.add_constant("w", wt)]
    if c_shape is not None:
        ins.append(g.add_constant("c", rng.standard_normal(c_shape).astype(np.float32)))
    y = g.make_node("gemm", ins, {"alpha": 0.5, "beta": 2.0, "trans_b": trans_b},
                    [TensorType(F32, (m, n))],
                    ["y"]).outputs[0]
    g.outputs.append(g.make_node("relu", [y], {}, [y.type], ["z"]).outputs[0])
    verify(g)
    xv = rng.standard_normal((m, k)).astype(np.float32)
    want = interpret(g, xv)[0]
    for threads in (1, 2):
        np.testing.assert_allclose(slimc.compile(g, threads=threads)(xv)[0], want,
                                   rtol=1e-4, atol=1e-4)
