"""The CUDA backend's one-thread-per-output-element generators (codegen/cuda/gen_window.py):
max/avg/lp pooling, concat, split and pad.

Each kernel is run by the GPU emulator and compared with the interpreter, on small odd shapes
chosen to hit every edge: padding, strides, dilations, ceil mode's overhang, count_include_pad,
1-D and 3-D windows, windows too big to unroll, NaN inputs, parts of different sizes along
outer, middle and inner axes, unread split outputs, every pad mode with cropping, inline
producers and fused epilogues. The PTX is assembled for sm_80 and sm_90 where ptxas is
installed, and every kernel is checked to launch one thread per output element.
"""

import numpy as np
import pytest

from slimc.codegen.cuda.ptx import libdevice_path
from slimc.ir import Graph, TensorType, dtypes
from slimc.ir.registry import infer_node

from .cuda_check import emulated
rng = np.random.default_rng(0)

needs_libdevice = pytest.mark.skipif(libdevice_path() is None, reason="libdevice not "
                                     "installed (pip install nvidia-nvvm)")


def rand(*shape, dtype=np.float32):
    if np.dtype(dtype).kind in "iu":
        return rng.integers(-100, 100, shape).astype(dtype)
    return rng.standard_normal(shape).astype(dtype)


def add_node(g, op, ins, n_out=1, **attrs):
    n = g.make_node(op, ins, attrs, output_types=[TensorType(dtypes.f32, ())] * n_out)
    for o, t in zip(n.outputs, infer_node(n)):
        o.type = t
    return n.outputs


def build(op, inputs, consts=(), before=None, then=None, keep=None, **attrs):
    """A graph of one `op` node over `inputs` (arrays), the indices in `consts` constants, the
    others graph inputs; before(g, value) -> value adds a producer of input 0, then(g, outs)
    -> outs consumers (either may be fused into the op's kernel); `keep`: which outputs
    the graph returns. -> (graph, args)."""
    g = Graph(op)
    ins = []
    for i, a in enumerate(inputs):
        if i in consts:
            ins.append(g.add_constant(f"c{i}", a))
        else:
            ins.append(g.add_input(f"x{i}", TensorType(dtypes.from_numpy(a.dtype), a.shape)))
    if before is not None:
        ins[0] = before(g, ins[0])
    outs = add_node(g, op, ins, n_out=len(inputs[1]) if op == "split" else 1, **attrs)
    if then is not None:
        outs = then(g, outs)
    g.outputs = list(outs) if keep is None else [outs[k] for k in keep]
    return g, [a for i, a in enumerate(inputs) if i not in consts]


def one_per_element(mod, op, numel):
    """The kernel anchored on `op` launches `numel` threads with work, in blocks of at most
    256, and there is one such kernel."""
    ks = [k for k in mod.kernels if any(n.op == op for n in k.nodes)]
    assert len(ks) == 1, [k.name for k in mod.kernels]
    assert ks[0].items == numel
    assert ks[0].grid[0] * ks[0].block[0] >= numel and ks[0].block[0] <= 256
    return ks[0]


def _relu(g, outs):
    return add_node(g, "relu", [outs[0]])


# ----- pooling --------------------------------------------------------------------------------

POOLS = [
    # xs, attrs
    ((2, 3, 9, 11), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ((1, 2, 8, 7), dict(kernel_shape=[3, 2], strides=[2, 3], pads=[0, 1, 2, 0], ceil_mode=1)),
    ((1, 2, 10, 9), dict(kernel_shape=[2, 3], dilations=[2, 3], pads=[1, 2, 1, 2])),
    ((2, 3, 13), dict(kernel_shape=[4], strides=[3], pads=[2, 1], ceil_mode=1)),
    ((1, 2, 5, 6, 7), dict(kernel_shape=[2, 3, 3], strides=[2, 1, 2], pads=[1, 0, 1, 0, 1, 1])),
    # 49 taps: the inner axis unrolled, the outer a loop; a window much wider than the input
    ((1, 2, 9, 8), dict(kernel_shape=[7, 7], pads=[3, 3, 3, 3], strides=[2, 1])),
    ((1, 1, 6, 5), dict(kernel_shape=[9, 40], pads=[4, 20, 4, 19], strides=[3, 7],
                        ceil_mode=1)),
]


@pytest.mark.parametrize("xs,attrs", POOLS)
@pytest.mark.parametrize("op", ["max_pool", "avg_pool"])
def test_pools(op, xs, attrs):
    extra = {"count_include_pad": int(len(xs) % 2)} if op == "avg_pool" else {}
    g, args = build(op, [rand(*xs)], **attrs, **extra)
    mod = emulated(g, args)
    one_per_element(mod, op, g.outputs[0].type.numel)


@pytest.mark.parametrize("include", [0, 1])
@pytest.mark.parametrize("xs,attrs", [
    # ceil mode's last window hangs past the explicit pads: counted never
    ((1, 2, 7, 8), dict(kernel_shape=[3, 3], strides=[2, 3], pads=[1, 0, 1, 1], ceil_mode=1)),
    # 36 taps: the window and its divisor are loops, not unrolled
    ((1, 2, 40), dict(kernel_shape=[36], strides=[3], pads=[10, 11], ceil_mode=1)),
])
def test_avg_pool_divisor_counts_padding_not_the_overhang(include, xs, attrs):
    g, args = build("avg_pool", [rand(*xs)], count_include_pad=include, **attrs)
    emulated(g, args)


def test_max_pool_nan_propagates_and_padding_never_wins():
    x = -np.abs(rand(2, 2, 7, 7)) - 1.0  # every value below the padding's 0
    x[0, 0, 3, 3] = np.nan
    x[1, 1, 0, 0] = np.nan
    g, args = build("max_pool", [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
    emulated(g, args)


@pytest.mark.parametrize("dtype,op", [(np.int8, "max_pool"), (np.uint8, "max_pool"),
                                      (np.float16, "avg_pool"), (np.float64, "max_pool")])
def test_pool_dtypes(dtype, op):
    g, args = build(op, [rand(1, 3, 7, 6, dtype=dtype)], kernel_shape=[3, 2],
                    strides=[2, 2], pads=[1, 0, 1, 1])
    emulated(g, args, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("p", [1, 2, pytest.param(3, marks=needs_libdevice)])
def test_lp_pool(p):
    g, args = build("lp_pool", [rand(1, 2, 7, 9)], kernel_shape=[3, 2], strides=[2, 2],
                    pads=[1, 1, 0, 1], p=p)
    emulated(g, args, rtol=1e-4)


def test_pool_epilogue_and_inline_producer_fuse_into_one_kernel():
    g, args = build("avg_pool", [rand(2, 3, 9, 9)], kernel_shape=[3, 3], strides=[2, 2],
                    pads=[1, 1, 1, 1], before=lambda g, x: add_node(g, "neg", [x])[0],
                    then=_relu)
    mod = emulated(g, args)
    assert len(mod.kernels) == 1
    assert mod.kernels[0].items == 2 * 3 * 5 * 5


# ----- concat ---------------------------------------------------------------------------------

@pytest.mark.parametrize("axis", [0, 1, 2, -1])
def test_concat_three_inputs_of_different_sizes(axis):
    base = [3, 4, 5, 2]
    arrays = []
    for n in (2, 1, 3):
        s = list(base)
        s[axis] = n
        arrays.append(rand(*s))
    g, args = build("concat", arrays, axis=axis)
    mod = emulated(g, args)
    one_per_element(mod, "concat", g.outputs[0].type.numel)


def test_concat_inline_producers_an_empty_part_and_an_epilogue():
    def before(g, x):
        return add_node(g, "transpose", [x], perm=[0, 2, 1])[0]

    def then(g, outs):
        return add_node(g, "sigmoid", [outs[0]])

    g, args = build("concat", [rand(2, 6, 3), rand(2, 0, 6), rand(2, 5, 6)], consts=(2,),
                    before=before, then=then, axis=1)
    mod = emulated(g, args)
    one_per_element(mod, "concat", 2 * 8 * 6)


# ----- split ----------------------------------------------------------------------------------

@pytest.mark.parametrize("axis,sizes", [(0, [1, 3, 2]), (1, [4, 1, 2]), (2, [2, 5, 1])])
def test_split_unequal_parts(axis, sizes):
    shape = [6, 7, 8]
    shape[axis] = sum(sizes)
    g, args = build("split", [rand(*shape), np.array(sizes, np.int64)], consts=(1,),
                    axis=axis)
    mod = emulated(g, args)
    one_per_element(mod, "split", int(np.prod(shape)))


def test_split_unread_outputs_get_no_threads_and_producers_inline():
    # GPT-2's qkv split, keeping q and v: threads cover the input from q's first column to
    # v's last
    g, args = build("split", [rand(2, 5, 12), np.array([4, 4, 4], np.int64)], consts=(1,),
                    before=lambda g, x: add_node(g, "tanh", [x])[0], axis=-1, keep=[0, 2])
    mod = emulated(g, args, rtol=1e-5, atol=1e-6)
    one_per_element(mod, "split", 2 * 5 * 12)
    g, args = build("split", [rand(2, 5, 12), np.array([3, 5, 4], np.int64)], consts=(1,),
                    axis=-1, keep=[1])
    mod = emulated(g, args)
    one_per_element(mod, "split", 2 * 5 * 5)


# ----- pad ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,pads", [
    ("constant", [1, 0, 2, 3, 2, 0, 1, 1]),
    ("constant", [0, -1, 2, -1, 1, 1, -2, 0]),  # negative pads crop
    ("reflect", [0, 1, 2, 3, 0, 1, 3, 2]),
    ("edge", [1, 0, 4, 1, 2, 1, 0, 3]),
    ("wrap", [0, 2, 9, 1, 0, 1, 2, 11]),  # wider than the axis: wraps twice
])
def test_pad_modes(mode, pads):
    g, args = build("pad", [rand(2, 3, 4, 5), np.array(pads, np.int64)], consts=(1,),
                    mode=mode)
    mod = emulated(g, args)
    one_per_element(mod, "pad", g.outputs[0].type.numel)


def test_pad_value_axes_and_epilogue():
    g, args = build("pad", [rand(3, 4, 5), np.array([2, 1, 1, 3], np.int64),
                            np.array(-2.5, np.float32), np.array([2, 0], np.int64)],
                    consts=(1, 3), then=_relu, mode="constant")
    mod = emulated(g, args)
    assert len(mod.kernels) == 1
    one_per_element(mod, "pad", 7 * 4 * 8)
