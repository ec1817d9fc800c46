"""Winograd convolution: the op's reference, its float32 error bound, the pass and its cost
model, and the CPU kernel against the interpreter.

Realistic data, as the error bound is stated for: He-initialized weights (std sqrt(2 / 9Cin))
and activations that come out of a ReLU network (a random He conv, then ReLU).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import slimc
from slimc.ir import Graph, TensorType, dtypes, get_op, interpret, verify
from slimc.ir.ops.winograd import (TILES, alpha_of, transform_filter, winograd_conv2d_numpy,
                                   winograd_matrices)
from slimc.passes import PassManager
from slimc.passes import winograd as wpass
from slimc.passes.winograd import ERROR_BOUND, CostModel, Layer, Winograd

RNG = np.random.default_rng(0)
conv_ref = get_op("conv").reference


def he_weights(cout, cin, rng=None):
    rng = rng or RNG
    return (rng.standard_normal((cout, cin, 3, 3)) * np.sqrt(2.0 / (9 * cin))).astype(np.float32)


def relu_activations(shape, rng=None):
    """What a 3x3 layer of a ReLU network sees: ReLU(He conv(ReLU(noise)))."""
    rng = rng or RNG
    x = np.maximum(rng.standard_normal(shape), 0).astype(np.float32)
    y = conv_ref(x.astype(np.float64), he_weights(shape[1], shape[1], rng).astype(np.float64),
                 pads=[1, 1, 1, 1])
    return np.maximum(y, 0).astype(np.float32)


def direct64(x, w, b=None, pads=(1, 1, 1, 1)):
    return conv_ref(x.astype(np.float64), w.astype(np.float64),
                    None if b is None else b.astype(np.float64), pads=list(pads))


def rel_err(y, ref):
    return float(np.abs(y.astype(np.float64) - ref).max() / np.abs(ref).max())


def conv_graph(n, cin, cout, h, w, bias=True, pads=(1, 1, 1, 1), relu=False, residual=False,
               stride=1, group=1, dilation=1, weights=None, rng=None):
    rng = rng or RNG
    g = Graph("g")
    x = g.add_input("x", TensorType(dtypes.f32, (n, cin, h, w)))
    wt = weights if weights is not None else he_weights(cout, cin // group, rng)
    ins = [x, g.add_constant("w", wt)]
    if bias:
        ins.append(g.add_constant("b", (rng.standard_normal(cout) * 0.1).astype(np.float32)))
    ho = (h + pads[0] + pads[2] - dilation * 2 - 1) // stride + 1
    wo = (w + pads[1] + pads[3] - dilation * 2 - 1) // stride + 1
    attrs = {"pads": list(pads)}
    if stride != 1:
        attrs["strides"] = [stride, stride]
    if group != 1:
        attrs["group"] = group
    if dilation != 1:
        attrs["dilations"] = [dilation, dilation]
    y = g.make_node("conv", ins, attrs, [TensorType(dtypes.f32, (n, cout, ho, wo))], ["y"],
                    name="conv1").outputs[0]
    if residual:
        r = g.add_input("r", y.type)
        y = g.make_node("add", [y, r], {}, [y.type], ["s"]).outputs[0]
    if relu:
        y = g.make_node("relu", [y], {}, [y.type], ["z"]).outputs[0]
    g.outputs.append(y)
    verify(g)
    return g


def kernel_ops(mod):
    return [op for k in mod.kernels for op in k.ops]


# ----------------------------------------------------------------------------------------------
# The op and its reference
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tile", TILES)
def test_matrices_compute_correlation_exactly(tile):
    """A^T [(G g) . (B^T d)] is the valid correlation of d with g (1-D, float64)."""
    at, g_, bt = winograd_matrices(tile)
    a = alpha_of(tile)
    for _ in range(5):
        g = RNG.standard_normal(3)
        d = RNG.standard_normal(a)
        want = np.array([d[i:i + 3] @ g for i in range(tile)])
        np.testing.assert_allclose(at @ ((g_ @ g) * (bt @ d)), want, rtol=0, atol=1e-13)


@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("n,cin,cout,h,w,pads", [
    (1, 3, 5, 7, 9, (1, 1, 1, 1)),      # odd sizes: tiles cross the border
    (2, 4, 3, 5, 6, (0, 0, 0, 0)),      # valid conv, batch 2
    (1, 2, 2, 3, 3, (2, 0, 1, 3)),      # asymmetric padding
    (1, 1, 1, 1, 1, (1, 1, 1, 1)),      # one output
])
def test_reference_is_the_convolution(tile, n, cin, cout, h, w, pads):
    """In float64 the Winograd reference is the convolution (to roundoff)."""
    x = RNG.standard_normal((n, cin, h, w))
    wt = RNG.standard_normal((cout, cin, 3, 3))
    b = RNG.standard_normal(cout)
    u = transform_filter(wt, tile)
    assert u.shape == (alpha_of(tile) ** 2, cin, cout)
    got = winograd_conv2d_numpy(x, u, b, tile=tile, pads=pads)
    np.testing.assert_allclose(got, direct64(x, wt, b, pads), rtol=1e-10, atol=1e-10)


def test_op_infers_and_checks():
    g = Graph("g")
    x = g.add_input("x", TensorType(dtypes.f32, (1, 4, 9, 7)))
    u = g.add_constant("u", np.zeros((16, 4, 6), np.float32))
    node = g.make_node("winograd_conv2d", [x, u], {"tile": 2, "pads": [1, 0, 1, 2]},
                       [TensorType(dtypes.f32, (1, 6, 9, 7))], ["y"])
    g.outputs.append(node.outputs[0])
    verify(g)
    bad = g.add_constant("ubad", np.zeros((36, 4, 6), np.float32))
    node.set_input(1, bad)
    with pytest.raises(slimc.SlimcError, match=r"must be \[16, Cin, Cout\] for tile 2"):
        verify(g)


# ----------------------------------------------------------------------------------------------
# Precision: the stated bound, on realistically scaled data
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cin,hw", [(64, 28), (256, 7)])
def test_float32_error_bound_of_the_algorithm(cin, hw):
    """The algorithm in float32 (numpy) against float64 direct convolution: within the stated
    bound; F(4x4) loses more than F(2x2), which is as good as direct float32 convolution."""
    rng = np.random.default_rng(cin)
    x = relu_activations((1, cin, hw, hw), rng)
    wt = he_weights(cin, cin, rng)
    ref = direct64(x, wt)
    errs = {}
    for tile in TILES:
        y = winograd_conv2d_numpy(x, transform_filter(wt, tile), tile=tile, pads=(1, 1, 1, 1),
                                  compute_dtype=np.float32)
        errs[tile] = rel_err(y, ref)
        assert errs[tile] <= ERROR_BOUND[tile], (tile, errs[tile])
    direct32 = rel_err(conv_ref(x, wt, pads=[1, 1, 1, 1]).astype(np.float32), ref)
    assert errs[2] <= 3 * max(direct32, 2e-7)
    assert errs[4] > errs[2]


# ----------------------------------------------------------------------------------------------
# The pass: eligibility, decisions, reasons
# ----------------------------------------------------------------------------------------------

def fixed_model(**scale):
    """A cost model that does not depend on this machine (the built-in coefficients)."""
    m = CostModel()
    m.factor.update(scale)
    return m


def test_every_3x3_conv_says_why(monkeypatch, capsys):
    monkeypatch.setenv("SLIMC_DEBUG", "winograd")
    g = Graph("g")
    x = g.add_input("x", TensorType(dtypes.f32, (1, 32, 16, 16)))
    xd = g.add_input("xd", TensorType(dtypes.f64, (1, 32, 16, 16)))
    wr = g.add_input("wr", TensorType(dtypes.f32, (32, 32, 3, 3)))

    def conv(inp, w, out_hw, name, **attrs):
        node = g.make_node("conv", [inp, w], {"pads": [1, 1, 1, 1], **attrs},
                           [TensorType(inp.type.dtype, (1, 32) + out_hw)], [name], name=name)
        g.outputs.append(node.outputs[0])

    w = g.add_constant("w", he_weights(32, 32))
    conv(x, w, (16, 16), "eligible")
    conv(x, w, (8, 8), "strided", strides=[2, 2])
    conv(x, g.add_constant("wg", he_weights(32, 16)), (16, 16), "grouped", group=2)
    conv(x, w, (14, 14), "dilated", dilations=[2, 2])
    conv(x, wr, (16, 16), "runtime_w")
    conv(xd, g.add_constant("w64", he_weights(32, 32).astype(np.float64)), (16, 16), "double")
    g.make_node("conv", [x, g.add_constant("w1", he_weights(32, 32)[:, :, :1, :1])], {},
                [TensorType(dtypes.f32, (1, 32, 16, 16))], ["pointwise"])
    g.outputs.append(g.nodes[-1].outputs[0])
    Winograd(model=fixed_model()).run(g)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("[slimc:winograd]")]
    assert len(lines) == 6  # every 3x3 conv, not the 1x1
    said = {ln.split()[1]: ln for ln in lines}
    assert "F(" in said["%eligible"] and "predicted direct" in said["%eligible"]
    assert "strides [2, 2]" in said["%strided"]
    assert "group=2" in said["%grouped"]
    assert "dilations [2, 2]" in said["%dilated"]
    assert "not a constant" in said["%runtime_w"]
    assert "dtype f64" in said["%double"]
    assert [n.op for n in g.nodes].count("winograd_conv2d") == 1


def test_cost_model_decides_per_layer():
    """The built-in model: the first layer of an image network (3 input channels) stays
    direct, a 64-channel layer takes Winograd; each prediction grows with the work."""
    m = fixed_model()
    first = Layer(1, 3, 64, 224, 224)
    deep = Layer(1, 64, 64, 56, 56)
    decide = Winograd(model=m).decide
    assert m.predict("direct", first) < min(m.predict("F2", first), m.predict("F4", first))
    assert min(m.predict("F2", deep), m.predict("F4", deep)) < m.predict("direct", deep)
    base = Layer(1, 64, 64, 28, 28)
    for path in wpass.PATHS:
        assert m.predict(path, Layer(1, 64, 64, 56, 56)) > m.predict(path, base)
        assert m.predict(path, Layer(1, 128, 64, 28, 28)) > m.predict(path, base)
    # a model that finds Winograd slow keeps every layer direct, with the numbers as reason
    g = conv_graph(1, 64, 64, 28, 28)
    tile, why = Winograd(model=fixed_model(F2=50.0, F4=50.0)).decide(g.nodes[0])
    assert tile is None and why.startswith("direct: predicted direct")
    tile, why = decide(g.nodes[0])
    assert tile in TILES and why.startswith(f"F({tile}x{tile}), ") and "x faster: predicted" in why


def test_levels_and_disable():
    assert wpass.tiles_for_level(1) == ()
    assert wpass.tiles_for_level(2) == (2, 4)
    assert wpass.tiles_for_level(3) == (2, 4)
    from slimc.compiler import pipeline

    for level, want in ((1, None), (2, 2), (3, 3)):
        found = [p for p in pipeline("x86", level) if p.name == "winograd"]
        assert [p.opt_level for p in found] == ([] if want is None else [want])
    assert not [p for p in pipeline("x86", 2, disable_passes=["winograd"]) if p.name == "winograd"]


def test_cross_target_is_priced_for_its_target_not_measured(monkeypatch):
    """The CPU backend gives the pass its target's model: a foreign machine's is the built-in
    coefficients at its vector width, and nothing is timed on this host for it."""
    from slimc.compiler import pipeline

    monkeypatch.setattr(wpass, "calibrate", lambda host: pytest.fail("measured a cross target"))
    (w,) = [p for p in pipeline("aarch64", 2) if p.name == "winograd"]
    assert w.model.vw == 4 and "not measured" in w.model.source
    (layout,) = [p for p in pipeline("aarch64", 2) if p.name == "layout"]
    assert layout.block == 4


def test_fit_recovers_coefficients():
    true = {"direct": [1.5e-11, 2e-10, 1e-10, 3e-10, 5e-6],
            "blocked": [1.2e-11, 0.0, 2e-10, 3e-10, 3e-6],
            "F2": [1.8e-11, 1e-10, 2e-10, 1e-10, 4e-6],
            "F4": [2.0e-11, 2e-10, 4e-10, 1e-10, 4e-6]}
    rows = []
    for c, k, h, n in [(3, 64, 224, 1), (64, 64, 56, 1), (128, 128, 28, 1), (256, 256, 14, 1),
                       (512, 512, 7, 1), (16, 16, 32, 1), (32, 64, 16, 2), (512, 512, 2, 1),
                       (64, 128, 28, 4), (200, 100, 9, 1)]:
        L = Layer(n, c, k, h, h)
        rows.append({"shape": [n, c, h, h], "cout": k,
                     **{p: float(np.dot(true[p], wpass.features(p, L))) for p in wpass.PATHS}})
    fitted = CostModel(coef=wpass.fit(rows))
    for r in rows:
        L = Layer(r["shape"][0], r["shape"][1], r["cout"], r["shape"][2], r["shape"][3])
        for p in wpass.PATHS:
            assert fitted.predict(p, L) == pytest.approx(r[p], rel=0.02)


def test_calibration_is_measured_once_and_stored(monkeypatch, tmp_path):
    calls = []

    def measure(shapes):
        calls.append(list(shapes))
        m = CostModel()
        return [{"shape": list(s), "cout": c,
                 **{p: 2.0 * m.predict(p, Layer(s[0], s[1], c, s[2], s[3])) for p in wpass.PATHS}}
                for s, c in shapes]

    def fresh_process(cpu, vw=8, **env):
        monkeypatch.setattr(wpass, "_models", {})
        monkeypatch.delenv("SLIMC_WINOGRAD_CALIBRATE", raising=False)
        monkeypatch.setenv("SLIMC_COST_MODEL", "auto")
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        return wpass.host_model(wpass.Host(f"test|{cpu}", cpu, vw, measure))

    monkeypatch.setenv("SLIMC_CACHE_DIR", str(tmp_path))
    # another kind of CPU than the built-in coefficients': measured at first use, stored
    model = fresh_process("othercpu")
    assert len(calls) == 1 and model.factor == pytest.approx({p: 2.0 for p in wpass.PATHS})
    (stored,) = (tmp_path / "winograd").glob("cost-*.json")
    assert json.loads(stored.read_text())["factor"]["F2"] == pytest.approx(2.0)
    assert fresh_process("othercpu").factor == pytest.approx(model.factor)  # read back
    assert len(calls) == 1
    # the CPU the coefficients come from: used as they are, unless asked to measure
    assert fresh_process(wpass.PRIOR_CPU).factor == {p: 1.0 for p in wpass.PATHS}
    assert len(calls) == 1
    assert fresh_process(wpass.PRIOR_CPU, SLIMC_WINOGRAD_CALIBRATE="1").factor["F4"] == \
        pytest.approx(2.0)
    assert len(calls) == 2
    # never measure; no cache folder: nowhere to keep a calibration, so none is made
    assert fresh_process("third", SLIMC_WINOGRAD_CALIBRATE="0").factor["F2"] == 1.0
    assert fresh_process("third", SLIMC_CACHE_DIR="off").factor["F2"] == 1.0
    assert len(calls) == 2
    # a kind with shipped factors for every path measures nothing and uses them
    table = {"direct": 3.0, "blocked": 2.5, "F2": 1.5, "F4": 2.0}
    monkeypatch.setitem(wpass.SHIPPED_FACTORS, ("shipped", 8), table)
    assert fresh_process("shipped").factor == table
    assert len(calls) == 2
    # a table shipped before a path existed: measured once where it can be, else used
    older = {"direct": 3.0, "F2": 1.5, "F4": 2.0}
    monkeypatch.setitem(wpass.SHIPPED_FACTORS, ("older", 8), older)
    assert fresh_process("older", SLIMC_WINOGRAD_CALIBRATE="0").factor == older
    assert fresh_process("older", SLIMC_CACHE_DIR="off").factor == older
    assert len(calls) == 2
    assert fresh_process("older", SLIMC_CACHE_DIR=str(tmp_path)).factor == \
        pytest.approx({p: 2.0 for p in wpass.PATHS})
    assert len(calls) == 3
    # fixed: the tables only, never the calibration stored for othercpu; builtin: 1 everywhere
    assert fresh_process("othercpu", SLIMC_COST_MODEL="fixed").factor["F2"] == 1.0
    assert fresh_process("shipped", SLIMC_COST_MODEL="fixed").factor["F4"] == 2.0
    assert fresh_process("shipped", SLIMC_COST_MODEL="builtin").factor["F4"] == 1.0
    assert len(calls) == 3
    with pytest.raises(slimc.SlimcError, match="SLIMC_COST_MODEL='often'"):
        fresh_process("othercpu", SLIMC_COST_MODEL="often")


def test_pass_keeps_semantics_and_names():
    g = conv_graph(2, 8, 12, 9, 7, relu=True)
    x = relu_activations((2, 8, 9, 7))
    want = interpret(g, x)[0]
    PassManager([Winograd(force=4)], verify=True).run(g)
    (node,) = g.find_nodes("winograd_conv2d")
    assert node.attrs == {"tile": 4, "pads": [1, 1, 1, 1]} and node.name == "conv1"
    assert node.outputs[0].name == "y" and node.inputs[1].type.shape == (36, 8, 12)
    np.testing.assert_allclose(interpret(g, x)[0], want, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# The CPU kernel
# ----------------------------------------------------------------------------------------------

def compile_forced(g, tile, **kw):
    return slimc.compile(g, passes=[Winograd(force=tile)], disable_passes=["winograd"], **kw)


@pytest.mark.parametrize("tile,n,cin,cout,h,w,kw", [
    (2, 1, 3, 5, 7, 9, {}),                                        # Cin, Cout < vector width
    (4, 1, 3, 5, 7, 9, {"pads": (0, 2, 1, 0)}),                    # asymmetric pads
    (4, 2, 17, 33, 13, 11, {"relu": True, "residual": True}),      # batch 2, fused epilogue
    (2, 2, 17, 33, 13, 11, {"bias": False, "relu": True}),
    (4, 1, 24, 40, 10, 6, {"threads": 2}),                         # channel ranges, 2 threads
    (4, 1, 9, 20, 10, 21, {"relu": True, "residual": True}),       # whole groups, then a part
    (2, 1, 9, 20, 7, 37, {"relu": True, "residual": True}),
])
def test_compiled_matches_interpreter(tile, n, cin, cout, h, w, kw):
    kw = dict(kw)
    threads = kw.pop("threads", 1)
    g = conv_graph(n, cin, cout, h, w, **kw)
    feeds = [relu_activations((n, cin, h, w))] + \
        [RNG.standard_normal(v.type.shape).astype(np.float32) for v in g.inputs[1:]]
    mod = compile_forced(g, tile, threads=threads)
    assert "winograd_conv2d" in kernel_ops(mod) and "conv" not in kernel_ops(mod)
    if kw.get("relu"):  # the epilogue is fused into the output transform
        assert len(mod.kernels) == 1
    got = mod(*feeds)[0]
    ref = interpret(g, *feeds)[0]
    assert rel_err(got, ref.astype(np.float64)) <= ERROR_BOUND[tile]
    # and against the winograd reference itself (the optimized graph, interpreted)
    np.testing.assert_allclose(got, interpret(mod.graph, *feeds)[0], rtol=1e-4,
                               atol=5 * ERROR_BOUND[tile] * np.abs(ref).max())


@pytest.mark.parametrize("tile", TILES)
def test_compiled_with_avx2_vectors_matches_interpreter(tile):
    """The shared transforms at 8 lanes (groups of 8/m tiles), whatever the host's width."""
    from slimc.codegen.cpu.target import CpuTarget

    if not CpuTarget.from_name("x86-64-v3").is_host:
        pytest.skip("this host cannot run x86-64-v3 code")
    g = conv_graph(1, 9, 20, 10, 21, relu=True, residual=True)
    feeds = [relu_activations((1, 9, 10, 21))] + \
        [RNG.standard_normal(v.type.shape).astype(np.float32) for v in g.inputs[1:]]
    mod = compile_forced(g, tile, target="x86-64-v3")
    assert "winograd_conv2d" in kernel_ops(mod)
    got = mod(*feeds)[0]
    ref = interpret(g, *feeds)[0]
    assert rel_err(got, ref.astype(np.float64)) <= ERROR_BOUND[tile]


@pytest.mark.parametrize("tile", TILES)
def test_compiled_error_bound_on_realistic_layer(tile):
    """The kernel's float32 error on a He-initialized layer fed ReLU activations."""
    rng = np.random.default_rng(7)
    x = relu_activations((1, 64, 28, 28), rng)
    wt = he_weights(64, 64, rng)
    g = conv_graph(1, 64, 64, 28, 28, bias=False, weights=wt)
    got = compile_forced(g, tile, threads=1)(x)[0]
    assert rel_err(got, direct64(x, wt)) <= ERROR_BOUND[tile]


def test_runtime_transformed_filter():
    """winograd_conv2d with U computed at run time (not from the pass): packed per call."""
    g = Graph("g")
    x = g.add_input("x", TensorType(dtypes.f32, (1, 6, 8, 8)))
    u = g.add_input("u", TensorType(dtypes.f32, (16, 6, 20)))
    node = g.make_node("winograd_conv2d", [x, u], {"tile": 2, "pads": [1, 1, 1, 1]},
                       [TensorType(dtypes.f32, (1, 20, 8, 8))], ["y"])
    g.outputs.append(node.outputs[0])
    xv = relu_activations((1, 6, 8, 8))
    uv = transform_filter(he_weights(20, 6), 2)
    got = slimc.compile(g, threads=1)(xv, uv)[0]
    np.testing.assert_allclose(got, interpret(g, xv, uv)[0], rtol=1e-4, atol=1e-5)


def test_disable_passes_and_default(monkeypatch):
    monkeypatch.setattr(wpass, "host_model", lambda host: fixed_model())
    g = conv_graph(1, 32, 32, 24, 24, relu=True)
    assert "winograd_conv2d" in kernel_ops(slimc.compile(g, threads=1))
    off = slimc.compile(g, threads=1, disable_passes=["winograd"])
    assert "winograd_conv2d" not in kernel_ops(off) and "conv2d_nchwc" in kernel_ops(off)
    plain = slimc.compile(g, threads=1, disable_passes=["winograd", "layout"])
    assert "conv" in kernel_ops(plain)


def test_deep_network_stays_within_o2_tolerance():
    """Three residual 3x3 layers, all F(4x4): the whole network stays within -O2's tolerance
    (rtol 1e-3, atol 1e-4) of float64 direct convolution -- why -O2 may use F(4x4)."""
    rng = np.random.default_rng(3)
    c, hw = 32, 10
    g = Graph("net")
    x = g.add_input("x", TensorType(dtypes.f32, (1, c, hw, hw)))
    t = TensorType(dtypes.f32, (1, c, hw, hw))
    h = x
    weights = []
    for i in range(3):
        w = g.add_constant(f"w{i}", he_weights(c, c, rng) * np.float32(0.7))
        b = g.add_constant(f"b{i}", (rng.standard_normal(c) * 0.1).astype(np.float32))
        weights.append((w.data, b.data))
        y = g.make_node("conv", [h, w, b], {"pads": [1, 1, 1, 1]}, [t], [f"c{i}"]).outputs[0]
        y = g.make_node("add", [y, h], {}, [t], [f"s{i}"]).outputs[0]
        h = g.make_node("relu", [y], {}, [t], [f"r{i}"]).outputs[0]
    g.outputs.append(h)
    xv = relu_activations((1, c, hw, hw), rng)
    ref = xv.astype(np.float64)
    for w, b in weights:
        ref = np.maximum(direct64(ref, w, b) + ref, 0)
    got = compile_forced(g, 4, threads=1)(xv)[0]
    np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)
    usage = np.max(np.abs(got - ref) / (1e-4 + 1e-3 * np.abs(ref)))
    assert usage < 0.1, usage


def test_direct_is_priced_as_the_blocked_kernel_where_it_runs():
    """A layer whose channel counts are whole vectors is priced as the blocked direct kernel
    (the layout pass's); others as im2col and a GEMM. A host whose blocked kernel measured
    fast keeps the 512-channel 7x7 layer direct and the 64-channel 56x56 one Winograd,
    and says which direct it priced; a table without a blocked factor prices it as direct."""
    host = fixed_model(blocked=0.36, F2=0.67, F4=0.87)
    host.vw = 16
    decide = Winograd(model=host).decide
    tile, why = decide(conv_graph(1, 512, 512, 7, 7).nodes[0])
    assert tile is None and why.startswith("direct: predicted direct (blocked) ")
    tile, why = decide(conv_graph(1, 64, 64, 56, 56).nodes[0])
    assert tile == 4 and "direct (blocked)" in why
    tile, why = decide(conv_graph(1, 24, 24, 56, 56).nodes[0])  # 24: not whole vectors
    assert tile is not None and "direct (blocked)" not in why and "direct " in why
    layer = Layer(1, 512, 512, 7, 7)
    table = fixed_model(direct=0.5)
    del table.factor["blocked"]
    assert table.predict("blocked", layer) == pytest.approx(table.predict("direct", layer))


def test_direct_is_priced_as_im2col_when_the_layout_pass_is_off():
    """With ``disable_passes=["layout"]`` a direct conv runs im2col and a GEMM, so the
    pipeline's Winograd pass prices it so, whatever its channels."""
    from slimc.compiler import pipeline

    layer = conv_graph(1, 512, 512, 7, 7).nodes[0]
    by_default = [p for p in pipeline("x86-64-v4", 2) if p.name == "winograd"][0]
    without_layout = [p for p in pipeline("x86-64-v4", 2, disable_passes=["layout"])
                      if p.name == "winograd"][0]
    assert "direct (blocked)" in by_default.decide(layer)[1]
    assert "direct (blocked)" not in without_layout.decide(layer)[1]
    assert "predicted direct " in without_layout.decide(layer)[1]


def test_calibration_prices_blocked_over_the_shapes_it_ran():
    """A shape whose channels are not whole vectors has no blocked measurement: the blocked
    factor comes from the shapes that have one."""
    prior = CostModel()
    shapes = [((1, 64, 56, 56), 64), ((1, 24, 28, 28), 24)]

    def measure(shapes):
        rows = []
        for s, c in shapes:
            L = Layer(s[0], s[1], c, s[2], s[3])
            row = {"shape": list(s), "cout": c, "direct": prior.predict("direct", L),
                   "F2": prior.predict("F2", L), "F4": prior.predict("F4", L)}
            if s[1] % 8 == 0 and c % 8 == 0:
                row["blocked"] = 0.25 * prior.predict("blocked", L)
            rows.append(row)
        return rows

    host = wpass.Host("test|blocked", "blockedcpu", 8, measure)
    old = wpass.CALIBRATION_SHAPES
    try:
        wpass.CALIBRATION_SHAPES = tuple(shapes)
        model = wpass.calibrate(host)
    finally:
        wpass.CALIBRATION_SHAPES = old
    assert model.factor["blocked"] == pytest.approx(0.25)
    assert model.factor["direct"] == pytest.approx(1.0)


def test_blocked_kernel_is_timed_where_channels_are_whole_vectors():
    """winograd_cost.measure times the blocked direct kernel beside the others where both
    channel counts are whole vectors of the target, and only there."""
    from slimc.codegen.cpu.target import CpuTarget
    from slimc.codegen.cpu.winograd_cost import measure

    target = CpuTarget.host()
    vw = target.vector_width
    rows = measure([((1, vw, 6, 6), vw), ((1, vw + 1, 6, 6), vw)], repeat=2, target=target)
    assert set(rows[0]) == {"shape", "cout", "direct", "blocked", "F2", "F4"}
    assert "blocked" not in rows[1]
    assert all(rows[0][p] > 0 for p in wpass.PATHS)
