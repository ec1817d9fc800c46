"""Length buckets: `compile(..., buckets={dim: sizes})` compiles once per bucket, pads the
inputs with zeros, and cuts the outputs back to the real shapes (slimc/compiler.py, Buckets).
Oracles: numpy for a per-token model, onnxruntime on the unpadded inputs for a BERT encoder
whose attention mask hides the padding."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import slimc
from slimc.ir import InputError

W = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)


def per_token_model():
    """y[b, s, :] = relu(x[b, s, :] @ W): each position on its own, so padding is exact."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 4])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "per_token", [x], [y], [numpy_helper.from_array(W, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_lengths_share_a_compile_per_bucket(monkeypatch):
    monkeypatch.setenv("SLIMC_CACHE_DIR", "off")
    mod = slimc.compile(per_token_model(), buckets={"seq": [4, 8]})
    rng = np.random.default_rng(1)
    for length in range(1, 11):
        x = rng.standard_normal((2, length, 8)).astype(np.float32)
        (y,) = mod(x)
        assert y.shape == (2, length, 4)
        np.testing.assert_allclose(y, np.maximum(x @ W, 0), rtol=1e-5, atol=1e-5)
    # 1-4 and 5-8 share their buckets; 9 and 10 are past the largest and compile their own
    assert sorted(s[0][1] for s in mod._specializations) == [4, 8, 9, 10]


def test_bucket_names_must_be_symbolic_input_dims():
    with pytest.raises(InputError, match=r"buckets name \['sequence'\].*'batch', 'seq'"):
        slimc.compile(per_token_model(), buckets={"sequence": [16]})
    with pytest.raises(InputError, match="positive"):
        slimc.compile(per_token_model(), buckets={"seq": [0, 16]})


def test_bert_with_padding_masked_matches_onnxruntime(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("onnxscript")
    ort = pytest.importorskip("onnxruntime")
    from tests import models as M

    monkeypatch.setenv("SLIMC_CACHE_DIR", "off")
    spec = M.SPECS["bert_small"]
    path = M.export(spec, "dynamo", str(tmp_path))
    mod = slimc.compile(path, buckets={"sequence": [16]})
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for length in (3, 9, 16):
        feeds = M.token_inputs("bert_small", 2, length, 1000, mask=True, token_types=True)
        got, want = mod(**feeds), session.run(None, feeds)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-4)
    assert len(mod._specializations) == 1
