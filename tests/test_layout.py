"""The blocked NCHW[b]c layout: the pass (which convs, where conversions go), the ops'
references, and the CPU kernels against the interpreter on the original NCHW graph.

The oracle is always the `conv` reference (numpy, float64 accumulation) on the graph as the
user wrote it: the layout pass must not change what a model computes.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import slimc
from slimc.ir import Graph, TensorType, dtypes, get_op, interpret, verify
from slimc.ir.registry import FusionKind
from slimc.ir.ops.layout import (block_array, block_conv_weights, block_depthwise_weights,
                                 unblock_array)
from slimc.passes import PassManager
from slimc.passes.layout import Layout, conv_plan

from .kernel_rules import assert_kernels_keep_the_rule

RNG = np.random.default_rng(7)
F32 = dtypes.f32


def _out_dim(size, k, s, d, pb, pe):
    return (size + pb + pe - d * (k - 1) - 1) // s + 1


class Net:
    """A graph under construction, NCHW, float32."""

    def __init__(self, shape, rng=RNG):
        self.g = Graph("net")
        self.rng = rng
        self.x = self.g.add_input("x", TensorType(F32, tuple(shape)))
        self.count = 0

    def name(self, base):
        self.count += 1
        return f"{base}{self.count}"

    def conv(self, v, cout, k=1, stride=1, pad=None, dilation=1, group=1, bias=True):
        n, cin, h, w = v.type.shape
        pad = k // 2 if pad is None else pad
        pads = list(pad) if isinstance(pad, (list, tuple)) else [pad] * 4
        scale = np.sqrt(2.0 / (cin // group * k * k))
        wt = (self.rng.standard_normal((cout, cin // group, k, k)) * scale).astype(np.float32)
        ins = [v, self.g.add_constant(self.name("w"), wt)]
        if bias:
            ins.append(self.g.add_constant(self.name("b"), self.rng.standard_normal(cout)
                                           .astype(np.float32) * 0.1))
        ho = _out_dim(h, k, stride, dilation, pads[0], pads[2])
        wo = _out_dim(w, k, stride, dilation, pads[1], pads[3])
        attrs = {"pads": pads, "strides": [stride, stride], "dilations": [dilation] * 2,
                 "group": group}
        name = self.name("conv")
        return self.g.make_node("conv", ins, attrs, [TensorType(F32, (n, cout, ho, wo))], [name],
                                name=name).outputs[0]

    def op(self, op, *ins, **attrs):
        out_t = ins[0].type
        return self.g.make_node(op, list(ins), attrs, [out_t], [self.name(op)]).outputs[0]

    def const(self, data):
        return self.g.add_constant(self.name("c"), np.asarray(data, dtype=np.float32))

    def clip6(self, v):
        return self.g.make_node("clip", [v, self.const(0.0), self.const(6.0)], {}, [v.type],
                                [self.name("clip")]).outputs[0]

    def done(self, *outs):
        self.g.outputs.extend(outs)
        verify(self.g)
        return self.g


def inverted_residual(net, v, expand=2, stride=1):
    """MobileNetV2's block: 1x1 expand + clip, 3x3 depthwise + clip, 1x1 project, residual."""
    c = v.type.shape[1]
    h = net.clip6(net.conv(v, c * expand))
    h = net.clip6(net.conv(h, c * expand, k=3, stride=stride, group=c * expand))
    h = net.conv(h, c)
    return net.op("add", h, v) if stride == 1 else h


def check(graph, x, rtol=1e-4, atol=1e-5, **options):
    want = interpret(graph, x)
    mod = slimc.compile(graph, **options)
    assert_kernels_keep_the_rule(mod)
    got = mod(x)
    for a, e in zip(got, want):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)
    return mod


def ops_of(mod):
    return [n.op for n in mod.graph.nodes]


def _block_targets() -> list:
    """(target, block) for the compiled tests: the host as users get it, and the portable
    x86-64-v3 (8-channel blocks) where the host's own block is another size and it can run
    here, so an AVX-512 machine tests both block sizes and each test means the same thing
    on every kind: its shapes are derived from the block, never from the host."""
    from slimc.codegen.cpu.target import CpuTarget

    host = CpuTarget.from_name("x86")
    out = [pytest.param("x86", host.vector_width, id=f"x86-b{host.vector_width}")]
    v3 = CpuTarget.from_name("x86-64-v3")
    if v3.is_host and v3.vector_width != host.vector_width:
        out.append(pytest.param("x86-64-v3", v3.vector_width, id=f"x86-64-v3-b{v3.vector_width}"))
    return out


BLOCK_TARGETS = _block_targets()


# ----------------------------------------------------------------------------------------------
# Numpy helpers and references
# ----------------------------------------------------------------------------------------------


def test_block_round_trip_and_layout():
    x = RNG.standard_normal((2, 16, 3, 5)).astype(np.float32)
    xb = block_array(x, 8)
    assert xb.shape == (2, 2, 3, 5, 8)
    assert xb[1, 1, 2, 4, 3] == x[1, 11, 2, 4]
    np.testing.assert_array_equal(unblock_array(xb), x)


def test_blocked_weights_layout():
    w = RNG.standard_normal((16, 24, 3, 3)).astype(np.float32)
    wb = block_conv_weights(w, 8, 8)
    assert wb.shape == (2, 3, 3, 3, 8, 8)
    assert wb[1, 2, 0, 1, 5, 3] == w[8 + 3, 16 + 5, 0, 1]
    d = RNG.standard_normal((16, 1, 3, 3)).astype(np.float32)
    db = block_depthwise_weights(d, 8)
    assert db[1, 2, 0, 6] == d[14, 0, 2, 0]


# ----------------------------------------------------------------------------------------------
# The pass
# ----------------------------------------------------------------------------------------------


def test_mobilenet_block_converts_once_at_each_end():
    net = Net((1, 16, 14, 14))
    y = inverted_residual(net, net.clip6(net.conv(net.x, 16, k=3)))
    g = net.done(y)
    PassManager([Layout(block=8)]).run(g)
    ops = [n.op for n in g.nodes]
    assert ops.count("to_blocked") == 1 and ops.count("from_blocked") == 1, ops
    assert "conv" not in ops
    assert ops.count("conv2d_nchwc") == 3 and ops.count("depthwise_conv2d_nchwc") == 1
    assert g.outputs[0].producer.op == "from_blocked"


def test_first_layer_reads_nchw_without_a_conversion():
    net = Net((1, 3, 16, 16))
    g = net.done(net.clip6(net.conv(net.x, 16, k=3, stride=2)))
    PassManager([Layout(block=8)]).run(g)
    assert [n.op for n in g.nodes] == ["conv2d_nchwc", "clip", "from_blocked"]
    assert g.nodes[0].inputs[0] is g.inputs[0]


@pytest.mark.parametrize("group, cout, reason", [
    (2, 16, "group=2"),
    (1, 12, "12 output channels"),
])
def test_ineligible_convs_say_why(group, cout, reason):
    net = Net((1, 16, 8, 8))
    g = net.done(net.conv(net.x, cout, k=3, group=group))
    why = conv_plan(g.nodes[0], 8)
    assert isinstance(why, str) and reason in why
    PassManager([Layout(block=8)]).run(g)
    assert [n.op for n in g.nodes] == ["conv"]


def test_sinking_stops_at_a_full_size_nchw_operand(capsys, monkeypatch):
    monkeypatch.setenv("SLIMC_DEBUG", "layout")
    net = Net((1, 8, 6, 6))
    other = net.g.add_input("r", TensorType(F32, (1, 8, 6, 6)))
    g = net.done(net.op("add", net.conv(net.x, 8), other))
    PassManager([Layout(block=8)]).run(g)
    assert [n.op for n in g.nodes] == ["to_blocked", "conv2d_nchwc", "from_blocked", "add"]
    assert "runtime tensor in NCHW" in capsys.readouterr().err


def test_disable_pass_keeps_nchw():
    net = Net((1, 8, 6, 6))
    g = net.done(net.conv(net.x, 8, k=3))
    mod = slimc.compile(g, disable_passes=["layout", "winograd"])
    assert "conv" in ops_of(mod) and "conv2d_nchwc" not in ops_of(mod)


# ----------------------------------------------------------------------------------------------
# Compiled, against the interpreter on the NCHW graph
# ----------------------------------------------------------------------------------------------


def test_mobilenet_style_network_compiled():
    net = Net((1, 3, 29, 29))
    h = net.clip6(net.conv(net.x, 16, k=3, stride=2))       # first layer: NCHW in
    h = inverted_residual(net, h)
    h = inverted_residual(net, h, stride=2)
    h = net.conv(h, 32)
    pooled = net.g.make_node("global_avg_pool", [h], {}, [TensorType(F32, (1, 32, 1, 1))],
                             ["pool"]).outputs[0]
    g = net.done(pooled)
    x = np.abs(RNG.standard_normal((1, 3, 29, 29))).astype(np.float32)
    mod = check(g, x)
    ops = ops_of(mod)
    assert ops.count("from_blocked") == 1 and "to_blocked" not in ops, ops
    # the global pool reads the blocked tensor; only its 32 results convert back
    assert mod.graph.outputs[0].producer.op == "from_blocked"
    # no elementwise op runs as a kernel of its own
    for k in mod.kernels:
        assert any(get_op(op).fusion > FusionKind.BROADCAST for op in k.ops), k.ops


@pytest.mark.parametrize("target, block", BLOCK_TARGETS)
@pytest.mark.parametrize("batch", [1, 3])
def test_squeeze_excite_scale_is_blocked(batch, target, block):
    """EfficientNet's SE: mean -> 1x1 convs -> sigmoid -> multiply the blocked feature map,
    the multiply folded into the next conv's weights (per image: batch 3 has 3 scales)."""
    c = 2 * block
    net = Net((batch, c, 9, 9))
    h = net.conv(net.x, c, k=3, group=c)                             # depthwise
    h = net.op("mul", h, net.op("sigmoid", h))                       # SiLU
    s = net.g.make_node("reduce_mean", [h], {"axes": [2, 3], "keepdims": 1},
                        [TensorType(F32, (batch, c, 1, 1))], ["se.mean"]).outputs[0]
    s = net.conv(s, 4)                                               # 4 channels: NCHW
    s = net.op("mul", s, net.op("sigmoid", s))
    s = net.op("sigmoid", net.conv(s, c))                            # back to c: blocked
    g = net.done(net.conv(net.op("mul", h, s), block))
    x = RNG.standard_normal((batch, c, 9, 9)).astype(np.float32)
    mod = check(g, x, target=target)
    ops = ops_of(mod)
    scaled = [n for n in mod.graph.nodes if n.op == "conv2d_nchwc" and len(n.inputs) == 4]
    assert len(scaled) == 1 and scaled[0].inputs[3].producer.op == "sigmoid"
    assert ops.count("mul") == 2, ops  # the two SiLUs; the SE multiply is in the weights
    assert ops.count("depthwise_conv2d_nchwc") == 1 and ops.count("conv2d_nchwc") == 2
    assert ops.count("conv") == 1, ops
    # conversions: the input, the pooled [1, c, 1, 1] to the NCHW conv, and the output; the
    # SE scale comes out of a blocked conv and multiplies the blocked feature map directly
    sizes = sorted(int(np.prod(n.outputs[0].type.shape)) for n in mod.graph.nodes
                   if n.op in ("to_blocked", "from_blocked"))
    assert sizes == [c * batch, block * 81 * batch, c * 81 * batch], sizes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cb_in=st.sampled_from([1, 2, 3]), cb_out=st.sampled_from([1, 2, 3, 5]),
       h=st.sampled_from([1, 2, 5, 7, 13]), w=st.sampled_from([1, 3, 7, 8, 17]),
       k=st.sampled_from([1, 3, 5]), stride=st.sampled_from([1, 2]),
       dilation=st.sampled_from([1, 2]), pad=st.sampled_from([0, 1, 2, (0, 1, 2, 0)]),
       depthwise=st.booleans(), bias=st.booleans(), epilogue=st.sampled_from(["", "clip", "add"]),
       batch=st.sampled_from([1, 2]))
@pytest.mark.parametrize("target, block", BLOCK_TARGETS)
def test_blocked_conv_matches_reference(target, block, cb_in, cb_out, h, w, k, stride, dilation,
                                        pad, depthwise, bias, epilogue, batch):
    """Shapes across the register tile's edges: images smaller than a tile, odd widths,
    padding on one side only, dilation, one to five output blocks (odd counts take the
    1-block and 3-block tiles)."""
    cin = block * cb_in
    cout = cin if depthwise else block * cb_out
    pads = list(pad) if isinstance(pad, tuple) else [pad] * 4
    if _out_dim(h, k, stride, dilation, pads[0], pads[2]) < 1 or \
            _out_dim(w, k, stride, dilation, pads[1], pads[3]) < 1:
        return
    net = Net((batch, cin, h, w), rng=np.random.default_rng(cin * 31 + h * 7 + w))
    y = net.conv(net.x, cout, k=k, stride=stride, pad=pads, dilation=dilation,
                 group=cin if depthwise else 1, bias=bias)
    if epilogue == "clip":
        y = net.clip6(y)
    elif epilogue == "add":
        y = net.op("add", y, net.const(np.arange(cout, dtype=np.float32).reshape(cout, 1, 1)))
    g = net.done(y)
    x = net.rng.standard_normal((batch, cin, h, w)).astype(np.float32)
    # stride-1 3x3 convs would take Winograd
    mod = check(g, x, disable_passes=["winograd"], target=target)
    assert ("depthwise_conv2d_nchwc" if depthwise else "conv2d_nchwc") in ops_of(mod)


def test_first_layer_nchw_input_compiled():
    net = Net((2, 3, 11, 10))
    g = net.done(net.clip6(net.conv(net.x, 24, k=3, stride=2, pad=(1, 0, 1, 1))))
    check(g, RNG.standard_normal((2, 3, 11, 10)).astype(np.float32))


def test_blocked_reduction_vectorized_matches():
    """reduce_max over H and W of a blocked tensor (the vectorized reduce path)."""
    net = Net((1, 16, 5, 7))
    h = net.conv(net.x, 16, k=3)
    m = net.g.make_node("reduce_max", [h], {"axes": [2, 3], "keepdims": 1},
                        [TensorType(F32, (1, 16, 1, 1))], ["m"]).outputs[0]
    g = net.done(m)
    mod = check(g, RNG.standard_normal((1, 16, 5, 7)).astype(np.float32))
    assert "reduce_max" in ops_of(mod)


@pytest.mark.parametrize("target, block", BLOCK_TARGETS)
@pytest.mark.parametrize("cb, h, w", [(3, 5, 56), (2, 3, 7), (1, 2, 16), (2, 4, 33)])
def test_conversion_back_to_nchw_with_its_fused_ops(target, block, cb, h, w):
    """from_blocked with a squeeze-and-excite scale and a clip fused before it (the kernel
    that transposes pixel vectors into channel runs in registers): rows of whole strips of
    `block` pixels, a masked last strip, rows narrower than one strip; bit for bit the
    interpreter's numbers."""
    from slimc.ir import parse

    c = cb * block
    g = parse(f"""# slimc-ir v1
graph @back(%x: f32[2,{cb},{h},{w},{block}], %s: f32[1,{cb},1,1,{block}]) -> (f32[2,{c},{h},{w}]) {{
  const %lo: f32[] = [0.0]
  const %hi: f32[] = [6.0]
  %m = mul(%x, %s) : f32[2,{cb},{h},{w},{block}]
  %r = clip(%m, %lo, %hi) : f32[2,{cb},{h},{w},{block}]
  %y = from_blocked(%r) {{block={block}}} : f32[2,{c},{h},{w}]
  return %y
}}
""")
    x = 4 * RNG.standard_normal((2, cb, h, w, block)).astype(np.float32)
    s = RNG.standard_normal((1, cb, 1, 1, block)).astype(np.float32)
    mod = slimc.compile(g, target=target, threads=2)
    assert [k.ops for k in mod.kernels] == [["mul", "clip", "from_blocked"]]
    np.testing.assert_array_equal(mod(x, s)[0], interpret(g, x, s)[0])


@pytest.mark.parametrize("wo, t, lo, hi", [(28, 14, 1, 28), (7, 14, 1, 6), (56, 14, 1, 55),
                                           (45, 14, 0, 45), (112, 14, 2, 110), (1, 14, 1, 0)])
def test_row_chunks_cover_the_row_in_near_equal_tiles(wo, t, lo, hi):
    """Every pixel once, in order; tiles of at most T and within one pixel of each other; a
    tile is an edge tile exactly when it holds a pixel outside [lo, hi)."""
    from slimc.codegen.cpu.gen_blocked import _row_chunks

    pixels, sizes = [], []
    for ox0, count, size, edge in _row_chunks(wo, t, lo, hi):
        assert count == 1 or not edge
        for i in range(count):
            start = ox0 + i * size
            tile = list(range(start, start + size))
            assert edge == any(p < lo or p >= hi for p in tile)
            pixels += tile
            sizes.append(size)
    assert pixels == list(range(wo))
    assert max(sizes) <= t and max(sizes) - min(sizes) <= 1


@pytest.mark.parametrize("target, block", BLOCK_TARGETS)
@pytest.mark.parametrize("w, k, stride, pad, dilation", [(60, 3, 1, 1, 1), (45, 3, 1, 1, 1),
                                                          (57, 3, 2, 1, 1), (40, 5, 1, 2, 2),
                                                          (50, 7, 2, 3, 1)])
def test_blocked_conv_on_wide_rows(target, block, w, k, stride, pad, dilation):
    """Rows of several register tiles: equal interior tiles in a loop, tiles one pixel
    shorter, edge tiles at both ends with their padded taps left out; against the
    interpreter."""
    net = Net((1, block, 9, w), rng=np.random.default_rng(w))
    y = net.conv(net.x, 2 * block, k=k, stride=stride, pad=[pad] * 4, dilation=dilation,
                 bias=True)
    g = net.done(net.clip6(y))
    x = net.rng.standard_normal((1, block, 9, w)).astype(np.float32)
    mod = check(g, x, disable_passes=["winograd"], target=target)
    assert "conv2d_nchwc" in ops_of(mod)


@pytest.mark.parametrize("target, block", BLOCK_TARGETS)
def test_strided_conv_between_winograd_layers_runs_blocked(target, block, capsys, monkeypatch):
    """A ResNet downsampling block among Winograd layers: the stride-2 3x3 conv runs blocked,
    converted at both ends, and says why; the 1x1 shortcut (no window to copy) and the
    Winograd layers stay NCHW; against the interpreter."""
    from slimc.passes.winograd import Winograd

    monkeypatch.setenv("SLIMC_DEBUG", "layout")
    net = Net((1, 2 * block, 12, 12))
    a = net.op("relu", net.conv(net.x, 2 * block, k=3, pad=[1] * 4))
    b = net.op("relu", net.conv(a, 4 * block, k=3, stride=2, pad=[1] * 4))
    b = net.conv(b, 4 * block, k=3, pad=[1] * 4)
    g = net.done(net.op("relu", net.op("add", b, net.conv(a, 4 * block, stride=2))))
    x = net.rng.standard_normal((1, 2 * block, 12, 12)).astype(np.float32)
    mod = check(g, x, target=target, disable_passes=["winograd"], passes=[Winograd(force=4)])
    ops = ops_of(mod)
    assert ops.count("winograd_conv2d") == 2 and ops.count("conv2d_nchwc") == 1
    assert ops.count("conv") == 1  # the 1x1 shortcut
    log = capsys.readouterr().err
    assert "converted at both ends" in log and "im2col would copy it 2.25 times" in log


@pytest.mark.parametrize("p, blocks", [(12544, 3), (3136, 1), (784, 1), (196, 3), (49, 5),
                                       (49, 10), (4, 2), (53, 1), (221, 1)])
def test_flat_rows_cover_the_image(p, blocks):
    """A flattened image's rows: every pixel once; equal rows but perhaps the last; at most
    about FLAT_ROW pixels; enough items for threads where the image allows."""
    from slimc.codegen.cpu.gen_blocked import FLAT_MIN_ITEMS, FLAT_ROW, _flat_rows

    t = 14
    width, rows = _flat_rows(p, t, blocks)
    assert (rows - 1) * width < p <= rows * width
    assert width <= max(FLAT_ROW, t) and (width >= t or rows == 1)
    assert blocks * rows >= min(FLAT_MIN_ITEMS, blocks * (p // t)) or rows * width - p < t


@pytest.mark.parametrize("target, block", BLOCK_TARGETS)
@pytest.mark.parametrize("hw, cb_out", [(7, 5), (14, 3), (56, 1), (9, 2)])
def test_flat_pointwise_conv_rows(target, block, hw, cb_out):
    """1x1 convolutions over flattened images cut into rows and near-equal tiles (a shorter
    last row where none divides), with a residual add; against the interpreter."""
    net = Net((1, 2 * block, hw, hw), rng=np.random.default_rng(hw))
    y = net.conv(net.x, cb_out * block, bias=True)
    g = net.done(net.op("add", y, net.const(np.ones((cb_out * block, 1, 1)))))
    x = net.rng.standard_normal((1, 2 * block, hw, hw)).astype(np.float32)
    mod = check(g, x, target=target, threads=2)
    assert "conv2d_nchwc" in ops_of(mod)
