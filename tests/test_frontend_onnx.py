"""The ONNX frontend: names, shapes, and one clear error for each kind of bad model."""

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import slimc
from slimc.ir import ModelError, UnsupportedError

from .oracle import check_against_onnxruntime, make_model


def relu_model(**kw):
    return make_model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                      {"x": np.zeros((2, 3), np.float32)}, ["y"], **kw)


def test_symbolic_dims_are_kept_and_bound():
    node = helper.make_node("Relu", ["x"], ["y"])
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert "f32[N,3]" in str(slimc.from_onnx(m))
    assert "f32[5,3]" in str(slimc.from_onnx(m, input_shapes={"x": (5, 3)}))
    with pytest.raises(ModelError, match="contradicts"):
        slimc.from_onnx(m, input_shapes={"x": (5, 4)})
    with pytest.raises(ModelError, match="not model inputs"):
        slimc.from_onnx(m, input_shapes={"z": (5, 3)})


def test_onnx_names_survive_and_outputs_keep_their_names():
    nodes = [helper.make_node("Relu", ["in:0"], ["layer/1 out"], name="layer/1"),
             helper.make_node("Identity", ["in:0"], ["passthrough"], name="")]
    m = make_model(nodes, {"in:0": np.zeros(3, np.float32)}, ["layer/1 out", "passthrough"])
    g = slimc.from_onnx(m)
    assert [v.name for v in g.outputs] == ["layer/1 out", "passthrough"]
    assert g.nodes[0].name == "layer/1"
    assert str(slimc.parse(str(g))) == str(g)


def test_unsupported_ops_are_reported_all_at_once():
    nodes = [helper.make_node("FancyOp", ["x"], ["a"], name="f1", domain="com.example"),
             helper.make_node("Loop", ["x"], ["b"], name="loop1"),
             helper.make_node("NoSuchOnnxOp", ["x"], ["c"], name="n1"),
             helper.make_node("NoSuchOnnxOp", ["x"], ["d"], name="n2")]
    m = make_model(nodes, {"x": np.zeros(2, np.float32)}, ["a", "b", "c", "d"])
    m.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(UnsupportedError) as e:
        slimc.from_onnx(m)
    msg = str(e.value)
    assert "com.example.FancyOp" in msg and "Loop (control flow" in msg
    assert "NoSuchOnnxOp (opset 17): 2 node(s), first 'n1', 'n2'" in msg


@pytest.mark.parametrize("cut", [0.3, 0.7])
def test_truncated_model_file_is_a_clear_error(tmp_path, cut):
    data = relu_model(initializers={"w": np.ones((64, 64), np.float32)}).SerializeToString()
    path = tmp_path / "bad.onnx"
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ModelError, match="bad.onnx"):
        slimc.from_onnx(str(path))


def test_garbage_and_missing_files():
    with pytest.raises(ModelError, match="not .*ONNX model"):
        slimc.from_onnx(b"\x00\x01garbage" * 10)
    with pytest.raises(ModelError, match="does not exist"):
        slimc.from_onnx("/no/such/model.onnx")


def test_missing_input_and_cycle_name_the_node():
    m = make_model([helper.make_node("Add", ["x", "ghost"], ["y"], name="adder")],
                   {"x": np.zeros(2, np.float32)}, ["y"])
    with pytest.raises(ModelError, match="adder.*'ghost' is not produced"):
        slimc.from_onnx(m)
    cyc = make_model([helper.make_node("Relu", ["b"], ["a"], name="first"),
                      helper.make_node("Relu", ["a"], ["b"], name="second")],
                     {"x": np.zeros(2, np.float32)}, ["a"])
    with pytest.raises(ModelError, match="first"):
        slimc.from_onnx(cyc)


def test_wrong_attribute_type_names_the_node():
    node = helper.make_node("LeakyRelu", ["x"], ["y"], name="lrelu")
    node.attribute.append(helper.make_attribute("alpha", "not a number"))
    m = make_model([node], {"x": np.zeros(2, np.float32)}, ["y"])
    with pytest.raises(ModelError, match="lrelu.*alpha.*must be of type float, got string"):
        slimc.from_onnx(m)


def test_shape_mismatch_names_the_node():
    m = make_model([helper.make_node("Add", ["x", "z"], ["y"], name="bad_add")],
                   {"x": np.zeros((2, 3), np.float32), "z": np.zeros((4,), np.float32)}, ["y"])
    with pytest.raises(ModelError, match="bad_add.*cannot broadcast"):
        slimc.from_onnx(m)


def test_external_data_is_read_and_escapes_are_refused(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    m = make_model([helper.make_node("Add", ["x", "w"], ["y"])], {"x": np.zeros((3, 4), np.float32)},
                   ["y"], initializers={"w": w})
    onnx.save_model(m, tmp_path / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    g = slimc.from_onnx(str(tmp_path / "m.onnx"))
    np.testing.assert_array_equal(g.constants["w"].data, w)

    evil = onnx.load(tmp_path / "m.onnx", load_external_data=False)
    for e in evil.graph.initializer[0].external_data:
        if e.key == "location":
            e.value = "../../etc/passwd"
    onnx.save_model(evil, tmp_path / "evil.onnx")
    with pytest.raises(ModelError, match="leaves the model's folder"):
        slimc.from_onnx(str(tmp_path / "evil.onnx"))


def test_old_exporters_listing_weights_as_inputs():
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    m = make_model([helper.make_node("Mul", ["x", "w"], ["y"])], {"x": x}, ["y"],
                   initializers={"w": np.full(3, 2.0, np.float32)})
    m.graph.input.append(helper.make_tensor_value_info("w", TensorProto.FLOAT, [3]))
    g = slimc.from_onnx(m)
    assert [v.name for v in g.inputs] == ["x"]
    np.testing.assert_allclose(slimc.interpret(g, x)[0], x * 2)


def test_dropout_in_training_mode_is_refused():
    m = make_model([helper.make_node("Dropout", ["x", "r", "t"], ["y"], name="drop")],
                   {"x": np.zeros(2, np.float32), "r": np.array(0.5, np.float32),
                    "t": np.array(True)}, ["y"], opset=13)
    with pytest.raises(UnsupportedError, match="drop.*training"):
        slimc.from_onnx(m)


def test_function_ops_expand_to_their_onnx_definition():
    """RMSNormalization (opset 23) has no converter: its ONNX body is converted instead."""
    from .oracle import run_onnx_reference

    x = np.random.default_rng(0).standard_normal((2, 3, 8)).astype(np.float32)
    scale = np.random.default_rng(1).standard_normal(8).astype(np.float32)
    m = make_model([helper.make_node("RMSNormalization", ["x", "s"], ["y"], name="rms", axis=-1)],
                   {"x": x}, ["y"], initializers={"s": scale}, opset=23)
    m.ir_version = 10
    g = slimc.from_onnx(m)
    assert "rms" in str(g) and not any(n.op == "RMSNormalization" for n in g.nodes)
    np.testing.assert_allclose(slimc.interpret(g, x)[0], run_onnx_reference(m, {"x": x})[0],
                               rtol=1e-5, atol=1e-6)


def test_unknown_op_without_a_body_is_still_refused():
    m = make_model([helper.make_node("GridSample", ["x", "g"], ["y"], name="gs")],
                   {"x": np.zeros((1, 1, 4, 4), np.float32), "g": np.zeros((1, 2, 2, 2), np.float32)},
                   ["y"], opset=20)
    with pytest.raises(UnsupportedError, match="GridSample"):
        slimc.from_onnx(m)
