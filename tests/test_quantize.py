"""slimc.quantize: float model + calibration data -> int8 graph, checked through the interpreter
against the float graph on held-out inputs (the integer ops' numpy references are the oracle)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from onnx import helper

import slimc
from slimc.passes.quantize import (ActivationStats, activation_range, quantize_weight,
                                   uint8_params)

from .oracle import make_model

# ----- models ---------------------------------------------------------------------------------


def _he(rng, shape, fan_in):
    """Trained-scale weights: He initialization keeps activations O(1) through ReLUs."""
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def _small(rng, n):
    return (rng.standard_normal(n) * 0.1).astype(np.float32)


def cnn(batch=4, depthwise=False):
    """conv-bn-relu-conv-relu-maxpool-gemm; the batch norm is folded into conv1 before
    quantizing (the folded conv takes the batch norm's name, bn1). With `depthwise`, conv2 is a
    depthwise 3x3 (group = channels) and a 1x1 strided conv follows."""
    rng = np.random.default_rng(0)
    init = {"w1": _he(rng, (8, 3, 3, 3), 27), "b1": _small(rng, 8),
            "bn_s": (1 + _small(rng, 8)), "bn_b": _small(rng, 8), "bn_m": _small(rng, 8),
            "bn_v": (1 + np.abs(_small(rng, 8))),
            "w3": _he(rng, (10, 256), 256), "b3": _small(rng, 10)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
             helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["n1"],
                              name="bn1"),
             helper.make_node("Relu", ["n1"], ["r1"])]
    if depthwise:
        init.update({"wd": _he(rng, (8, 1, 3, 3), 9), "bd": _small(rng, 8),
                     "w2": _he(rng, (16, 8, 1, 1), 8), "b2": _small(rng, 16)})
        nodes += [helper.make_node("Conv", ["r1", "wd", "bd"], ["d1"], pads=[1, 1, 1, 1],
                                   group=8, name="dw"),
                  helper.make_node("Relu", ["d1"], ["rd"]),
                  helper.make_node("Conv", ["rd", "w2", "b2"], ["c2"], strides=[2, 2],
                                   name="conv2")]
    else:
        init.update({"w2": _he(rng, (16, 8, 3, 3), 72), "b2": _small(rng, 16)})
        nodes.append(helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1],
                                      strides=[2, 2], name="conv2"))
    nodes += [helper.make_node("Relu", ["c2"], ["r2"]),
              helper.make_node("MaxPool", ["r2"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
              helper.make_node("Flatten", ["p"], ["f"]),
              helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], transB=1, name="fc")]
    return make_model(nodes, {"x": np.zeros((batch, 3, 16, 16), np.float32)}, ["logits"], init)


def mlp(d=32, h=128):
    """A transformer's feed-forward block: matmul + bias, GELU (erf form), matmul + bias."""
    rng = np.random.default_rng(0)
    init = {"w1": _he(rng, (d, h), d), "b1": _small(rng, h), "w2": _he(rng, (h, d), h),
            "b2": _small(rng, d), "sqrt2": np.array(np.sqrt(2), np.float32),
            "one": np.array(1, np.float32), "half": np.array(0.5, np.float32)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="fc1"),
             helper.make_node("Add", ["m1", "b1"], ["h1"]),
             helper.make_node("Div", ["h1", "sqrt2"], ["g0"]),
             helper.make_node("Erf", ["g0"], ["g1"]),
             helper.make_node("Add", ["g1", "one"], ["g2"]),
             helper.make_node("Mul", ["h1", "g2"], ["g3"]),
             helper.make_node("Mul", ["g3", "half"], ["g"]),
             helper.make_node("MatMul", ["g", "w2"], ["m2"], name="fc2"),
             helper.make_node("Add", ["m2", "b2"], ["y"])]
    return make_model(nodes, {"x": np.zeros((2, 8, d), np.float32)}, ["y"], init)


def _images(seed, n, batch=4):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((batch, 3, 16, 16)).astype(np.float32),) for _ in range(n)]


def _tokens(seed, n, d=32):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((2, 8, d)).astype(np.float32),) for _ in range(n)]


def _cosine(a, b):
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def _compare(model, graph, held_out):
    """(cosine, top-1 agreement) of the quantized graph against the float model."""
    ref_graph = slimc.from_onnx(model)
    refs = np.concatenate([slimc.interpret(ref_graph, *s)[0] for s in held_out])
    outs = np.concatenate([slimc.interpret(graph, *s)[0] for s in held_out])
    return _cosine(refs, outs), float(np.mean(refs.argmax(-1) == outs.argmax(-1)))


def _ops(graph):
    return [n.op for n in graph.nodes]


# ----- accuracy -------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["minmax", "percentile", "entropy"])
def test_static_cnn_each_method(method):
    model = cnn()
    graph, report = slimc.quantize(model, _images(1, 8), method=method, report=True)
    cos, top1 = _compare(model, graph, _images(2, 4))
    assert cos >= 0.99 and top1 >= 0.9, (cos, top1, str(report))
    ops = _ops(graph)
    assert ops.count("conv_integer") == 2 and ops.count("matmul_integer") == 1
    assert "conv" not in ops and "gemm" not in ops and "batch_norm" not in ops
    assert [r.quantized for r in report.layers] == [True] * 3
    assert all(r.sqnr is not None and r.sqnr > 15 for r in report.layers)


def test_static_depthwise_and_pointwise_conv():
    model = cnn(depthwise=True)
    graph = slimc.quantize(model, _images(1, 8))
    dw = [n for n in graph.nodes if n.op == "conv_integer" and n.attrs.get("group") == 8]
    assert len(dw) == 1
    cos, top1 = _compare(model, graph, _images(2, 4))
    assert cos >= 0.99 and top1 >= 0.9


def test_quantized_layer_feeding_a_quantized_layer():
    """conv -> relu -> conv -> conv (MobileNetV2's linear bottleneck: a conv's output straight
    into the next conv): the second rewrite must read the first one's new value."""
    rng = np.random.default_rng(5)
    init = {"w1": _he(rng, (8, 3, 3, 3), 27), "w2": _he(rng, (8, 8, 1, 1), 8),
            "w3": _he(rng, (16, 8, 1, 1), 8)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
             helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["b"], name="c2"),
             helper.make_node("Conv", ["b", "w3"], ["y"], name="c3")]
    model = make_model(nodes, {"x": np.zeros((4, 3, 16, 16), np.float32)}, ["y"], init)
    graph = slimc.quantize(model, _images(1, 4))
    assert _ops(graph).count("conv_integer") == 3
    ref = slimc.interpret(slimc.from_onnx(model), _images(2, 1)[0][0])[0]
    out = slimc.compile(graph)(_images(2, 1)[0][0])[0]
    assert _cosine(ref, out) >= 0.99


def test_embedding_tables_become_int8_rows():
    """A token embedding (gather of a 4096 x 32 table) then a linear layer: the table is
    stored as int8 with a scale per row; lookups compile to one kernel that matches the
    interpreter, and the output stays within int8 rounding of float32."""
    rng = np.random.default_rng(7)
    init = {"emb": (rng.standard_normal((4096, 32)) * 0.05).astype(np.float32),
            "w": _he(rng, (32, 16), 32)}
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"], name="tok_emb"),
             helper.make_node("MatMul", ["e", "w"], ["y"], name="proj")]
    ids = rng.integers(0, 4096, (2, 9)).astype(np.int64)
    model = make_model(nodes, {"ids": ids}, ["y"], init)
    graph, report = slimc.quantize(model, [(ids,)], mode="dynamic", report=True)
    assert "emb" not in graph.constants  # the float table is gone
    tables = [c for c in graph.constants.values() if c.data is not None and c.data.dtype == np.int8]
    assert any(c.data.shape == (4096, 32) for c in tables)
    assert [r.op for r in report.layers if r.quantized] == ["matmul", "gather"]
    ref = slimc.interpret(slimc.from_onnx(model), ids)[0]
    got = slimc.interpret(graph, ids)[0]
    assert _cosine(ref, got) >= 0.999
    np.testing.assert_allclose(slimc.compile(graph)(ids)[0], got, rtol=1e-5, atol=1e-6)
    plain = slimc.quantize(model, [(ids,)], mode="dynamic", embeddings=False)
    assert "emb" in plain.constants


def test_dynamic_mlp():
    model = mlp()
    graph, report = slimc.quantize(model, mode="dynamic", report=True)
    cos, _ = _compare(model, graph, _tokens(3, 4))
    assert cos >= 0.99
    ops = _ops(graph)
    assert ops.count("dynamic_quantize") == 2 and ops.count("matmul_integer") == 2
    dq = next(n for n in graph.nodes if n.op == "dynamic_quantize")
    assert dq.attrs["per_row"] == 1 and dq.outputs[2].type.shape == (2, 8, 1)
    assert all(r.quantized and r.act_scale is None for r in report.layers)
    assert all(r.sqnr is None for r in report.layers)  # nothing to measure on


def test_dynamic_with_calibration_measures():
    _, report = slimc.quantize(mlp(), _tokens(4, 2), mode="dynamic", report=True)
    assert all(r.sqnr_alone > 30 for r in report.layers)
    assert report.outputs["y"] > 30


def test_dynamic_leaves_convs_float():
    graph, report = slimc.quantize(cnn(), mode="dynamic", report=True)
    assert _ops(graph).count("conv") == 2 and _ops(graph).count("matmul_integer") == 1
    assert all("matmul and gemm layers only" in r.reason for r in report.layers if r.op == "conv")


def test_gemm_trans_b_and_alpha_folded_into_weight():
    rng = np.random.default_rng(5)
    w, c = _he(rng, (6, 12), 12), _small(rng, 6)
    model = make_model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=1, alpha=0.5,
                                         beta=2.0, name="fc")],
                       {"x": np.zeros((3, 12), np.float32)}, ["y"], {"w": w, "c": c})
    x = rng.standard_normal((3, 12)).astype(np.float32)
    graph = slimc.quantize(model, [(x,)], method="minmax")
    (got,) = slimc.interpret(graph, x)
    np.testing.assert_allclose(got, 0.5 * x @ w.T + 2 * c, atol=0.05)


def test_shared_input_is_quantized_once():
    """Two projections of one activation (as Q, K and V are) share its quantize."""
    rng = np.random.default_rng(6)
    init = {"wa": _he(rng, (16, 16), 16), "wb": _he(rng, (16, 16), 16)}
    model = make_model([helper.make_node("MatMul", ["x", "wa"], ["a"], name="proj_a"),
                        helper.make_node("MatMul", ["x", "wb"], ["b"], name="proj_b"),
                        helper.make_node("Add", ["a", "b"], ["y"])],
                       {"x": np.zeros((4, 16), np.float32)}, ["y"], init)
    samples = [(rng.standard_normal((4, 16)).astype(np.float32),) for _ in range(2)]
    assert _ops(slimc.quantize(model, samples)).count("quantize") == 1
    assert _ops(slimc.quantize(model, mode="dynamic")).count("dynamic_quantize") == 1


# ----- the artifact ---------------------------------------------------------------------------

def _const_bytes(graph):
    return sum(c.data.nbytes for c in graph.constants.values() if c.data is not None)


def test_prints_parses_and_weights_are_int8(tmp_path):
    model = mlp(64, 256)
    graph = slimc.quantize(model, mode="dynamic")
    text = str(graph)
    assert str(slimc.parse(text)) == text
    for n in graph.nodes:
        if n.op == "matmul_integer":
            assert n.inputs[1].type.dtype == slimc.dtypes.i8 and n.inputs[1].is_constant
    float_graph = slimc.from_onnx(model)
    assert _const_bytes(float_graph) / _const_bytes(graph) >= 3.5
    slimc.ir.save(graph, str(tmp_path / "q"))
    loaded = slimc.ir.load(str(tmp_path / "q.slimc"))
    (x,) = _tokens(7, 1, 64)[0]
    np.testing.assert_array_equal(slimc.interpret(loaded, x)[0], slimc.interpret(graph, x)[0])


def test_output_names_survive():
    graph = slimc.quantize(cnn(), _images(1, 2))
    assert [v.name for v in graph.outputs] == ["logits"]
    assert [v.name for v in graph.inputs] == ["x"]


# ----- which layers stay float ----------------------------------------------------------------

def test_exclude_and_keep_sensitive():
    graph, report = slimc.quantize(cnn(), _images(1, 4), exclude=("bn1",), report=True)
    first = report.layers[0]
    assert first.name == "bn1" and not first.quantized and "excluded" in first.reason
    assert _ops(graph).count("conv") == 1 and _ops(graph).count("conv_integer") == 1
    graph, report = slimc.quantize(cnn(), _images(1, 4), keep_sensitive=100.0, report=True)
    assert not any(r.quantized for r in report.layers)
    assert all("keep_sensitive=100 dB" in r.reason for r in report.layers)
    assert "matmul_integer" not in _ops(graph) and "conv_integer" not in _ops(graph)
    assert "float: SQNR alone" in str(report)


def test_non_constant_weight_stays_float():
    model = make_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="xw")],
                       {"x": np.zeros((2, 4), np.float32), "w": np.zeros((4, 3), np.float32)},
                       ["y"])
    graph, report = slimc.quantize(model, mode="dynamic", report=True)
    assert "nothing to quantize" in report.note and "no constant weight" in str(report)
    assert _ops(graph) == ["matmul"]


def test_report_reads():
    _, report = slimc.quantize(cnn(), _images(1, 2), report=True)
    text = str(report)
    assert "bn1" in text and "conv2" in text and "fc" in text and "output %logits" in text
    assert "3 of 3 layers quantized" in text


def test_debug_channel(monkeypatch, capsys):
    monkeypatch.setenv("SLIMC_DEBUG", "quant")
    slimc.quantize(cnn(), _images(1, 1))
    err = capsys.readouterr().err
    assert "[slimc:quant] bn1" in err and "int8" in err


# ----- errors ---------------------------------------------------------------------------------

def test_calibration_input_of_wrong_shape_or_dtype_names_it():
    with pytest.raises(slimc.InputError, match=r"sample 1: input 'x' expects f32\[4,3,16,16\], "
                                               r"got shape \[4, 3, 8, 8\]"):
        slimc.quantize(cnn(), _images(1, 1) + [(np.zeros((4, 3, 8, 8), np.float32),)])
    with pytest.raises(slimc.InputError, match=r"input 'x' .* got dtype float64"):
        slimc.quantize(cnn(), [{"x": np.zeros((4, 3, 16, 16))}])
    with pytest.raises(slimc.InputError, match=r"unknown input name.*'image'"):
        slimc.quantize(cnn(), [{"image": np.zeros((4, 3, 16, 16), np.float32)}])


def test_static_without_calibration_is_a_clear_error():
    for empty in (None, [], iter(())):
        with pytest.raises(slimc.SlimcError, match="needs calibration data"):
            slimc.quantize(cnn(), empty)


def test_nothing_to_quantize():
    model = make_model([helper.make_node("Relu", ["x"], ["y"])],
                       {"x": np.zeros((2, 3), np.float32)}, ["y"])
    graph, report = slimc.quantize(model, [(np.ones((2, 3), np.float32),)], report=True)
    assert _ops(graph) == ["relu"]
    assert "nothing to quantize" in str(report)


def test_bad_options():
    with pytest.raises(slimc.SlimcError, match="method must be one of"):
        slimc.quantize(cnn(), _images(1, 1), method="mse")
    with pytest.raises(slimc.SlimcError, match="keep_sensitive needs calibration"):
        slimc.quantize(mlp(), mode="dynamic", keep_sensitive=30)


# ----- the command line -----------------------------------------------------------------------

def test_cli_quantize(tmp_path, capsys):
    import onnx

    from slimc.cli import main

    onnx.save(cnn(), str(tmp_path / "cnn.onnx"))
    stack = np.stack([s[0] for s in _images(1, 3)])
    np.savez(tmp_path / "calib.npz", x=stack)
    out = str(tmp_path / "cnn-int8")
    assert main(["quantize", str(tmp_path / "cnn.onnx"), "--calibration",
                 str(tmp_path / "calib.npz"), "--method", "minmax", "-o", out]) == 0
    printed = capsys.readouterr().out
    assert "3 of 3 layers quantized" in printed and "cnn-int8.slimc" in printed
    graph = slimc.ir.load(out + ".slimc")
    assert "conv_integer" in _ops(graph)
    cos, _ = _compare(cnn(), graph, _images(2, 2))
    assert cos >= 0.99


# ----- the numbers ----------------------------------------------------------------------------

_weights = st.integers(1, 6).flatmap(lambda m: st.lists(
    st.lists(st.floats(-8, 8, width=32), min_size=5, max_size=5), min_size=m, max_size=m))


@settings(max_examples=60, deadline=None)
@given(_weights, st.booleans())
def test_weight_quantization_error_is_half_a_step(rows, zero_first):
    w = np.array(rows, np.float32)
    if zero_first:
        w[0] = 0
    q, scale = quantize_weight(w, 0)
    assert q.dtype == np.int8 and q.min() >= -127
    assert np.all(np.abs(q * scale[:, None] - w) <= scale[:, None] * (0.5 + 1e-5))
    if zero_first:
        assert scale[0] == 1 and not q[0].any()


@settings(max_examples=60, deadline=None)
@given(st.floats(-100, 0), st.floats(0, 100), st.sampled_from(["minmax", "percentile", "entropy"]))
def test_activation_range_holds_zero_exactly(lo, hi, method):
    stats = ActivationStats()
    stats.add(np.linspace(lo, hi, 1000, dtype=np.float32))
    a, b = activation_range(stats, method)
    scale, zp = uint8_params(a, b)
    assert a <= 0 <= b and scale > 0
    assert np.float32(0) / scale + float(zp) == int(zp)  # 0 quantizes to zp, dequantizes to 0
    if method == "minmax" and hi - lo > 1e-3:
        assert abs(a - np.float32(lo)) < 1e-4 and abs(b - np.float32(hi)) < 1e-4


def test_entropy_keeps_the_range_of_few_distinct_values():
    """An 8x8 digit image has 17 grey levels: KL over their spikes must not clip the range
    (a threshold past the first spike scored KL 0 and cut [-1, 1] to +-0.13)."""
    from slimc.passes.quantize import entropy_threshold

    stats = ActivationStats()
    values = np.linspace(-1, 1, 17).astype(np.float32)
    stats.add(np.random.default_rng(0).choice(values, size=(64, 64)))
    assert entropy_threshold(stats, 128) == pytest.approx(stats.top)
    lo, hi = activation_range(stats, "entropy")
    assert lo <= -0.99 and hi >= 0.99


def test_histogram_grows_without_losing_counts():
    stats = ActivationStats()
    stats.add(np.full(100, 0.5, np.float32))
    stats.add(np.full(50, -3.0, np.float32))
    assert stats.hist.sum() == 150 and stats.top == 3.0 and stats.lo == -3 and stats.hi == 0.5
