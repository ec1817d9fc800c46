"""The CUDA backend's row generators (codegen/cuda/gen_reduce.py) and attention
(codegen/cuda/gen_attention.py), without a GPU: ptxas must take their PTX for sm_80 and sm_90,
and the emulator (runtime/gpu_emulator.py, CUDA's thread semantics on the CPU: shuffled thread
orders, NaN-filled shared memory) must give the interpreter's results.

The shapes are picked to reach every path: rows of 1..8 elements (a thread per row), rows
sharing a warp, a warp per row, a block per row (shared memory across warps), rows too long for
registers (streamed once per pass), strided rows (a non-last axis), ragged last rows and tiles;
with fused producers and epilogues, f16 and f64, NaN and -inf.
"""

import numpy as np
import pytest

import slimc
from slimc.codegen.cuda import gen_attention
from slimc.codegen.cuda.ptx import ptxas, ptxas_path
from slimc.ir import Graph, TensorType, dtypes, interpret
from slimc.ir.registry import infer_node

rng = np.random.default_rng(0)
TARGET = "cuda:sm_80"


class Net:
    """A graph built op by op (types by inference) and the arrays to feed it."""

    def __init__(self):
        self.g = Graph("t")
        self.feeds = []

    def input(self, shape, dtype=np.float32, data=None):
        if data is None:
            data = rng.standard_normal(shape).astype(dtype)
        self.feeds.append(np.asarray(data, dtype))
        return self.g.add_input(f"x{len(self.feeds)}",
                                TensorType(dtypes.from_numpy(np.dtype(dtype)), tuple(shape)))

    def const(self, value, dtype=np.float32):
        return self.g.add_constant("c", np.asarray(value, dtype))

    def op(self, op, inputs, outputs=1, **attrs):
        placeholder = [TensorType(dtypes.f32, ())] * outputs
        # names of our own: a second node named after its op would be "op.1", and a dot in a
        # kernel's name is not valid PTX (backend.py names kernels after their last node)
        node = self.g.make_node(op, inputs, attrs, output_types=placeholder,
                                name=f"{op}_{len(self.g.nodes)}")
        for v, t in zip(node.outputs, infer_node(node)):
            v.type = t
        return node.outputs[0] if outputs == 1 else node.outputs

    def run(self, *outputs, anchor=None, rtol=1e-4, atol=1e-5):
        """Compile for the GPU, assemble, emulate, compare; returns the compiled module."""
        self.g.outputs = list(outputs)
        expected = interpret(self.g, *self.feeds)
        mod = slimc.compile(self.g, target=TARGET)
        if anchor is not None:
            assert any(k.ops and anchor in k.ops for k in mod.kernels), mod.kernels
        assemble(mod)
        got = mod.emulate(*self.feeds)
        for a, e in zip(got, expected):
            assert a.shape == e.shape and a.dtype == e.dtype
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=True)
        self.got = got
        return mod


def assemble(mod) -> dict:
    """ptxas's report for sm_80 (what the module targets) and sm_90: no spills."""
    if ptxas_path() is None:
        return {}
    for arch in ("sm_80", "sm_90"):
        report = ptxas(mod.ptx, arch)
        assert not report.spills(), report.spills()
    return report.kernels


# ----- softmax family ------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["softmax", "log_softmax"])
@pytest.mark.parametrize("L", [1, 5, 31, 33, 100, 1000])
def test_softmax_rows(kind, L):
    n = Net()
    n.run(n.op(kind, [n.input((3, L))], axis=-1), anchor=kind)


@pytest.mark.parametrize("shape,axis", [((5, 33, 3), 1), ((5, 33, 3), 0), ((4, 2048), 0),
                                        ((2, 3, 40), 2), ((1, 33000), 1), ((40, 2048), 0)])
def test_softmax_axes_strided_and_streamed(shape, axis):
    """A non-last axis (strided rows: 32 rows side by side, each split over up to 32 warps;
    a thread per row when they are short) and a row longer than the registers hold (33000
    over 1024 threads: streamed)."""
    n = Net()
    n.run(n.op("softmax", [n.input(shape)], axis=axis), anchor="softmax")


def test_softmax_fused_producer_and_epilogue():
    n = Net()
    x, mask = n.input((6, 77)), n.input((77,))
    s = n.op("softmax", [n.op("add", [x, mask])], axis=-1)
    mod = n.run(n.op("mul", [n.op("add", [s, n.input((6, 1))]), n.const(3.0)]))
    assert len(mod.kernels) == 1, mod.kernels


def test_softmax_special_values_and_dtypes():
    data = rng.standard_normal((4, 40)).astype(np.float32)
    data[0] = -np.inf  # no finite max: the reference shifts by 0, 0/0 is NaN
    data[1, 3] = np.inf
    data[2, 5] = np.nan
    n = Net()
    n.run(n.op("softmax", [n.input(data.shape, data=data)], axis=-1))
    n = Net()
    n.run(n.op("softmax", [n.input((3, 50), np.float16)], axis=-1), rtol=2e-3, atol=1e-3)
    n = Net()  # f64: a thread per row, no shuffles
    n.run(n.op("log_softmax", [n.input((3, 70), np.float64)], axis=-1), rtol=1e-12)
    n = Net()
    n.run(n.op("layer_norm", [n.input((3, 70), np.float64), n.input((70,), np.float64)]),
          rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("p", [1, 2])
def test_lp_normalization(p):
    data = rng.standard_normal((5, 100)).astype(np.float32)
    data[1] = 0  # a zero norm gives 0
    n = Net()
    n.run(n.op("lp_normalization", [n.input(data.shape, data=data)], axis=-1, p=p))
    n = Net()  # f64 along the first axis: a thread per strided row of 40, streamed
    n.run(n.op("lp_normalization", [n.input((40, 3), np.float64)], axis=0, p=p), rtol=1e-12)


# ----- layer_norm --------------------------------------------------------------------------

@pytest.mark.parametrize("L", [1, 5, 33, 1000])
def test_layer_norm_rows(L):
    n = Net()
    x = n.input((3, L))
    n.run(n.op("layer_norm", [x, n.input((L,)), n.input((L,))], axis=-1), anchor="layer_norm",
          atol=1e-4)


@pytest.mark.parametrize("scale_shape,bias", [((4, 5), True), ((5,), False), ((1, 5), True),
                                              ((4, 1), True)])
def test_layer_norm_broadcast_parameters(scale_shape, bias):
    n = Net()
    ins = [n.input((2, 3, 4, 5)), n.input(scale_shape)] + ([n.input((5,))] if bias else [])
    n.run(n.op("layer_norm", ins, axis=2, epsilon=1e-3), atol=1e-4)


def test_layer_norm_fused_residual_epilogue_and_long_rows():
    n = Net()
    x, res = n.input((4, 96)), n.input((4, 96))
    y = n.op("layer_norm", [n.op("add", [x, n.input((96,))]), n.input((96,)), n.input((96,))])
    n.run(n.op("relu", [n.op("add", [y, res])]), atol=1e-4)
    n = Net()  # 40000 elements: over 1024 threads * 32 registers, streamed in three passes
    n.run(n.op("layer_norm", [n.input((2, 40000)), n.input((40000,))]), atol=1e-4)


def test_layer_norm_stats():
    n = Net()
    mean, inv = n.op("layer_norm_stats", [n.input((3, 5, 300))], outputs=2, axis=1)
    n.run(mean, inv, rtol=1e-4, atol=1e-4)


# ----- reductions and global pools -----------------------------------------------------------

FLOAT_REDUCTIONS = ["reduce_sum", "reduce_mean", "reduce_max", "reduce_min", "reduce_prod",
                    "reduce_l1", "reduce_l2", "reduce_sum_square", "reduce_log_sum",
                    "reduce_log_sum_exp"]


@pytest.mark.parametrize("op", FLOAT_REDUCTIONS)
def test_every_reduction(op):
    n = Net()
    x = n.input((3, 5, 17), data=rng.uniform(0.5, 1.5, (3, 5, 17)))
    n.run(n.op(op, [x], axes=[2], keepdims=1), n.op(op, [x], axes=[0, 2], keepdims=0),
          anchor=op)


@pytest.mark.parametrize("shape,axes,keepdims", [
    ((3, 5, 17), None, 1), ((3, 5, 17), [1], 0), ((3, 5, 17), [], 1), ((6, 1000), [1], 0),
    ((2, 3, 300), [1, 2], 1), ((3000, 7), [0], 0), ((40, 3, 9), [0, 2], 0),
    ((3, 1, 33, 1), [1, 2], 0), ((4, 0, 3), [1], 1), ((1, 50000), [1], 1),
    ((33, 2048), [0], 0)])
@pytest.mark.parametrize("op", ["reduce_sum", "reduce_max", "reduce_log_sum_exp"])
def test_reduction_axes(op, shape, axes, keepdims):
    """Contiguous rows (a thread, part of a warp, a warp, a block per row), rows over outer
    axes (strided: 32 rows a block, split over warps), an empty axis (the identity) and rows
    streamed from memory (50000 contiguous; 3000 strided over 32 warps)."""
    n = Net()
    n.run(n.op(op, [n.input(shape)], axes=axes, keepdims=keepdims), atol=1e-4)


def test_reduction_fusion_nan_and_other_dtypes():
    n = Net()
    x, w = n.input((4, 9, 65)), n.input((65,))
    r = n.op("reduce_sum", [n.op("mul", [x, w])], axes=[2], keepdims=0)
    mod = n.run(n.op("sqrt", [n.op("abs", [r])]), atol=1e-4)
    assert len(mod.kernels) == 1, mod.kernels
    data = np.array([[1, np.nan, 3], [1, 2, 3]], np.float32)
    n = Net()
    n.run(n.op("reduce_max", [n.input(data.shape, data=data)], axes=[1], keepdims=0))
    n = Net()  # integers keep the CPU generator (a thread per output)
    x = n.input((4, 7), np.int32, rng.integers(-5, 6, (4, 7)))
    n.run(n.op("reduce_sum", [x], axes=[1], keepdims=0), n.op("reduce_max", [x], axes=[0]))
    n = Net()
    n.run(n.op("reduce_mean", [n.input((5, 300), np.float16)], axes=[1]), rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize("op", ["global_avg_pool", "global_max_pool", "global_lp_pool"])
@pytest.mark.parametrize("shape", [(2, 3, 7, 7), (1, 4, 1, 1), (2, 2, 40, 40)])
def test_global_pools(op, shape):
    n = Net()
    n.run(n.op(op, [n.input(shape)]), anchor=op, atol=1e-4)


def test_results_do_not_depend_on_thread_order():
    n = Net()
    n.g.outputs = [n.op("layer_norm", [n.input((3, 1000)), n.input((1000,))])]
    mod = slimc.compile(n.g, target=TARGET)
    first, second = mod.emulate(*n.feeds, seed=0), mod.emulate(*n.feeds, seed=7)
    np.testing.assert_array_equal(first[0], second[0])


# ----- attention ---------------------------------------------------------------------------

def attention(batch, M, N, D, E, mask_shape=None, mask=None, **attrs):
    n = Net()
    ins = [n.input((*batch, M, D)), n.input((*batch, D, N)), n.input((*batch, N, E))]
    if mask_shape is not None:
        ins.append(n.input(mask_shape, data=mask))
    return n, n.op("attention", ins, **attrs)


@pytest.mark.parametrize("batch,M,N,D,E", [((2, 3), 9, 17, 8, 5), ((2,), 1, 1, 1, 1),
                                           ((1, 2), 33, 70, 16, 40), ((1, 3), 40, 64, 32, 32)])
def test_attention_shapes(batch, M, N, D, E):
    """Ragged row blocks and key tiles, a single key, E over a warp's width."""
    n, y = attention(batch, M, N, D, E, mask_shape=(*batch, M, N), scale=0.25)
    n.run(y, anchor="attention")


@pytest.mark.parametrize("mask_shape", [(1, 1, 1, 17), (1, 3, 9, 17), (9, 1), (17,),
                                        (1, 3, 1, 1)])
def test_attention_mask_broadcasts(mask_shape):
    n, y = attention((1, 3), 9, 17, 8, 5, mask_shape=mask_shape)
    n.run(y)


@pytest.mark.parametrize("zero_nan", [0, 1])
def test_attention_fully_masked_rows(zero_nan):
    mask = np.zeros((1, 1, 6, 40), np.float32)
    mask[..., 2, :] = -np.inf  # row 2 sees no key: NaN, or 0 with the guard
    mask[..., 4, 3:] = -np.inf
    mask[..., 5, :33] = -np.inf  # only the second tile of keys
    n, y = attention((1, 2), 6, 40, 4, 3, mask_shape=mask.shape, mask=mask, zero_nan=zero_nan)
    n.run(y)
    out = n.got[0]
    assert np.isnan(out[0, :, 2]).all() != bool(zero_nan)


def test_attention_heads_last_with_epilogue_and_large_head_dims():
    n, y = attention((2, 3), 7, 20, 8, 6, mask_shape=(20,), heads_last=1, scale=0.3)
    mod = n.run(n.op("relu", [y]))
    assert len(mod.kernels) == 1, mod.kernels
    # D + E too large for tiles in shared memory: q, k_t and v straight from global memory
    assert not gen_attention.plan(1, 3, 200, 200)[2]
    n, y = attention((1, 1), 3, 37, 200, 200)
    n.run(y, atol=1e-4)


@pytest.mark.parametrize("heads_last", [0, 1])
@pytest.mark.parametrize("D,E", [(8, 5), (200, 200)])  # tiles in shared memory, or not
def test_attention_reads_inputs_heads_last(heads_last, D, E):
    """q [B, M, H, D], the keys [B, N, H, D] and v [B, N, H, E] as the projections leave them
    (inputs_heads_last): each head's rows read in place, against the interpreter."""
    n = Net()
    B, M, N, H = 2, 7, 37, 3
    ins = [n.input((B, M, H, D)), n.input((B, N, H, D)), n.input((B, N, H, E)),
           n.input((M, N))]
    y = n.op("attention", ins, inputs_heads_last=1, heads_last=heads_last, scale=0.3)
    n.run(y, anchor="attention", atol=1e-4)


def test_attention_plan():
    """Few rows: a warp for each; many: up to 4 rows a warp while the GPU has blocks to run;
    the tiles fit in shared memory."""
    assert gen_attention.plan(4, 1, 64, 64) == (1, 1, True)
    assert gen_attention.plan(12, 128, 64, 64) == (8, 1, True)
    assert gen_attention.plan(12, 512, 64, 64) == (8, 2, True)
    assert gen_attention.plan(12, 1024, 64, 64) == (8, 4, True)
    warps, rw, shared = gen_attention.plan(64, 1024, 128, 128)
    assert shared and 4 * (warps * rw * 128 + 32 * 256) <= gen_attention.SHARED_LIMIT
