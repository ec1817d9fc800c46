"""The attention op (recognized from MatMul/Mul/Add/Softmax/MatMul) against slimc's numpy
reference: head and row counts that split into ragged blocks, masks of every broadcast shape,
scale, the NaN guard on fully masked rows, fused consumers, thread counts."""

import numpy as np
import pytest

import slimc
from slimc.ir import Graph, TensorType, dtypes, interpret

rng = np.random.default_rng(0)


def rand(*shape):
    return rng.standard_normal(shape).astype(np.float32)


def written_out(heads, M, N, D, E, mask_shape=None, scale=None, guard=False, relu_after=False):
    """The chain as exporters write it: matmul, mul, add, softmax, (where(isnan)), matmul."""
    g = Graph("attn")
    f = lambda *s: TensorType(dtypes.f32, s)  # noqa: E731
    q = g.add_input("q", f(1, heads, M, D))
    k = g.add_input("k", f(1, heads, D, N))
    v = g.add_input("v", f(1, heads, N, E))
    inputs = [q, k, v]
    s = g.make_node("matmul", [q, k], {}, [f(1, heads, M, N)]).outputs[0]
    if scale is not None:
        c = g.add_constant("scale", np.array(scale, np.float32))
        s = g.make_node("mul", [s, c], {}, [f(1, heads, M, N)]).outputs[0]
    if mask_shape is not None:
        mask = g.add_input("mask", f(*mask_shape))
        inputs.append(mask)
        s = g.make_node("add", [s, mask], {}, [f(1, heads, M, N)]).outputs[0]
    p = g.make_node("softmax", [s], {"axis": -1}, [f(1, heads, M, N)]).outputs[0]
    if guard:
        nan = g.make_node("isnan", [p], {}, [TensorType(dtypes.bool, (1, heads, M, N))]).outputs[0]
        zero = g.add_constant("zero", np.array(0, np.float32))
        p = g.make_node("where", [nan, zero, p], {}, [f(1, heads, M, N)]).outputs[0]
    y = g.make_node("matmul", [p, v], {}, [f(1, heads, M, E)]).outputs[0]
    if relu_after:
        y = g.make_node("relu", [y], {}, [f(1, heads, M, E)]).outputs[0]
    g.outputs = [y]
    return g, inputs


def check(g, feeds, threads=None):
    expected = interpret(g, *feeds)
    mod = slimc.compile(g, threads=threads)
    assert any(n.op == "attention" for n in mod.graph.nodes), mod.graph
    got = mod(*feeds)
    np.testing.assert_allclose(got[0], expected[0], rtol=1e-4, atol=1e-5)
    return mod


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("heads,M,N,D,E", [(3, 197, 197, 64, 64), (4, 128, 128, 64, 64),
                                           (1, 7, 13, 5, 3), (2, 65, 17, 16, 9), (5, 1, 1, 1, 1)])
def test_shapes_and_threads(heads, M, N, D, E, threads):
    g, ins = written_out(heads, M, N, D, E, mask_shape=(1, 1, M, N), scale=0.125)
    feeds = [rand(*v.type.shape) for v in ins]
    check(g, feeds, threads)


@pytest.mark.parametrize("mask_shape", [(1, 1, 1, 17), (1, 3, 9, 17), (9, 1), (17,), (1, 3, 1, 1)])
def test_mask_broadcasts(mask_shape):
    g, ins = written_out(3, 9, 17, 8, 5, mask_shape=mask_shape)
    check(g, [rand(*v.type.shape) for v in ins])


def test_fully_masked_rows_with_and_without_the_guard():
    M, N = 6, 10
    mask = np.zeros((1, 1, M, N), np.float32)
    mask[..., 2, :] = -np.inf  # row 2 sees nothing
    mask[..., 4, 3:] = -np.inf
    for guard in (False, True):
        g, ins = written_out(2, M, N, 4, 3, mask_shape=mask.shape, guard=guard)
        feeds = [rand(*v.type.shape) for v in ins[:3]] + [mask]
        mod = check(g, feeds)
        out = mod(*feeds)[0]
        assert np.isnan(out[0, :, 2]).all() != guard  # NaN without the guard, 0 with it
        assert guard == (out[0, :, 2] == 0).all()


def test_fused_consumer_and_no_mask_no_scale():
    g, ins = written_out(2, 33, 20, 8, 16, relu_after=True)
    mod = check(g, [rand(*v.type.shape) for v in ins], threads=2)
    assert len(mod.kernels) == 1  # the relu is applied in the store of P @ v


def test_scores_used_elsewhere_are_not_fused():
    g, ins = written_out(2, 5, 6, 4, 3)
    scores = g.nodes[0].outputs[0]
    g.outputs.append(scores)
    from slimc.passes import explain
    from slimc.passes.recognize import RULES

    rule = next(r for r in RULES if r.name == "attention_from_parts")
    reasons = [why for _, why in explain(rule, g)]
    assert any(f"%{scores.name} (matmul) has other uses, so rewriting would duplicate it" in why
               for why in reasons), reasons
    mod = slimc.compile(g)
    assert not any(n.op == "attention" for n in mod.graph.nodes)
    feeds = [rand(*v.type.shape) for v in ins]
    for a, e in zip(mod(*feeds), interpret(g, *feeds)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("relu", [False, True])
def test_heads_merged_back(threads, relu):
    """transpose(0, 2, 1, 3) then reshape to [1, M, H*E] (merging the heads): the transpose
    becomes the op's heads_last store; a consumer after it runs in a kernel of its own."""
    heads, M, N, D, E = 3, 29, 29, 8, 8
    g, ins = written_out(heads, M, N, D, E, mask_shape=(1, 1, 1, N), scale=0.3)
    y = g.outputs[0]
    t = g.make_node("transpose", [y], {"perm": [0, 2, 1, 3]},
                    [TensorType(dtypes.f32, (1, M, heads, E))]).outputs[0]
    shape = g.add_constant("merged", np.array([1, M, heads * E], np.int64))
    r = g.make_node("reshape", [t, shape], {}, [TensorType(dtypes.f32, (1, M, heads * E))]).outputs[0]
    if relu:
        r = g.make_node("relu", [r], {}, [TensorType(dtypes.f32, (1, M, heads * E))]).outputs[0]
    g.outputs = [r]
    mod = check(g, [rand(*v.type.shape) for v in ins], threads)
    (attn,) = [n for n in mod.graph.nodes if n.op == "attention"]
    assert attn.attrs["heads_last"] == 1
    assert not any(n.op == "transpose" for n in mod.graph.nodes)


def projected(heads, M, D, threads=None):
    """x [1, M, H*D] through three projections (matmul + bias), each split into heads by
    reshape and transpose as exporters write it, the written-out attention, and the heads
    merged back: BERT's self-attention."""
    g = Graph("self_attention")
    f = lambda *s: TensorType(dtypes.f32, s)  # noqa: E731
    hidden = heads * D
    x = g.add_input("x", f(1, M, hidden))
    split = g.add_constant("split", np.array([1, M, heads, D], np.int64))
    parts = []
    for name, perm in (("q", [0, 2, 1, 3]), ("k", [0, 2, 3, 1]), ("v", [0, 2, 1, 3])):
        w = g.add_constant(f"{name}.w", rand(hidden, hidden) / np.float32(np.sqrt(hidden)))
        bias = g.add_constant(f"{name}.b", rand(hidden))
        y = g.make_node("matmul", [x, w], {}, [f(1, M, hidden)]).outputs[0]
        y = g.make_node("add", [y, bias], {}, [f(1, M, hidden)]).outputs[0]
        y = g.make_node("reshape", [y, split], {}, [f(1, M, heads, D)]).outputs[0]
        shape = [(1, M, heads, D)[i] for i in perm]
        parts.append(g.make_node("transpose", [y], {"perm": perm}, [f(*shape)]).outputs[0])
    q, k, v = parts
    s = g.make_node("matmul", [q, k], {}, [f(1, heads, M, M)]).outputs[0]
    c = g.add_constant("scale", np.array(D ** -0.5, np.float32))
    s = g.make_node("mul", [s, c], {}, [f(1, heads, M, M)]).outputs[0]
    p = g.make_node("softmax", [s], {"axis": -1}, [f(1, heads, M, M)]).outputs[0]
    y = g.make_node("matmul", [p, v], {}, [f(1, heads, M, D)]).outputs[0]
    y = g.make_node("transpose", [y], {"perm": [0, 2, 1, 3]}, [f(1, M, heads, D)]).outputs[0]
    merged = g.add_constant("merged", np.array([1, M, hidden], np.int64))
    g.outputs = [g.make_node("reshape", [y, merged], {}, [f(1, M, hidden)]).outputs[0]]
    return g


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("heads,M,D", [(4, 128, 64), (3, 37, 20), (2, 70, 16)])
def test_heads_split_read_in_place(heads, M, D, threads):
    """The transposes that split the heads go: the attention reads q, the keys and v as the
    projections wrote them (inputs_heads_last), and each bias add runs in its product's
    store. Against the interpreter on the graph as written."""
    g = projected(heads, M, D)
    x = rand(1, M, heads * D)
    mod = check(g, [x], threads)
    (attn,) = [n for n in mod.graph.nodes if n.op == "attention"]
    assert attn.attrs["inputs_heads_last"] == 1 and attn.attrs["heads_last"] == 1
    assert not any(n.op == "transpose" for n in mod.graph.nodes), mod.graph
    kinds = [" ".join(op for op in k.ops if op != "reshape") for k in mod.kernels]
    assert sorted(kinds) == ["", "attention"] + ["matmul add"] * 3, kinds  # "": the output's
    # reshape, a copy into the caller's array


@pytest.mark.parametrize("heads,M,N,D,E", [(4, 128, 128, 64, 64), (3, 9, 131, 29, 17),
                                           (2, 70, 65, 16, 33)])
def test_inputs_heads_last_is_bitwise_the_transposed_inputs(heads, M, N, D, E):
    """The keys packed straight from their rows (pack_keys) hold what packing k_t held: the
    kernel on heads-last inputs gives, bit for bit, what it gives on the same arrays
    transposed beforehand (the last panel of keys padded with zeros where N is ragged)."""
    def graph(inputs_heads_last):
        g = Graph("attn")
        f = lambda *s: TensorType(dtypes.f32, s)  # noqa: E731
        shapes = [(1, M, heads, D), (1, N, heads, D), (1, N, heads, E)] if inputs_heads_last \
            else [(1, heads, M, D), (1, heads, D, N), (1, heads, N, E)]
        ins = [g.add_input(n, f(*s)) for n, s in zip("qkv", shapes)] + \
            [g.add_input("mask", f(1, 1, M, N))]
        g.outputs = g.make_node("attention", ins, {"scale": 0.3,
                                                   "inputs_heads_last": inputs_heads_last},
                                [f(1, heads, M, E)]).outputs
        return g

    q, k, v, mask = rand(1, M, heads, D), rand(1, N, heads, D), rand(1, N, heads, E), \
        rand(1, 1, M, N)
    got = slimc.compile(graph(1), threads=2)(q, k, v, mask)[0]
    heads_first = [np.ascontiguousarray(a.transpose(perm)) for a, perm in
                   ((q, (0, 2, 1, 3)), (k, (0, 2, 3, 1)), (v, (0, 2, 1, 3)))]
    want = slimc.compile(graph(0), threads=2)(*heads_first, mask)[0]
    np.testing.assert_array_equal(got, want)
    np.testing.assert_allclose(got, interpret(graph(1), q, k, v, mask)[0], rtol=1e-4, atol=1e-5)
