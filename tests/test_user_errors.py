"""A user's mistakes get an error that names the node (or line, layer, file) and the problem.

Each test is one misuse found by hand: before its fix it passed silently, computed garbage or
escaped as a raw Python exception from deep inside slimc.
"""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import slimc
from slimc.cli import main as cli_main
from slimc.ir import ParseError


def _model(nodes, x_shape, inits=(), x_type=TensorProto.FLOAT):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", x_type, x_shape)],
                          [helper.make_tensor_value_info("y", x_type, None)],
                          initializer=[numpy_helper.from_array(v, k) for k, v in inits])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


def _ir(body: str, header: str = "(%x: f32[2,3]) -> (f32[2,3])") -> str:
    return f"# slimc-ir v1\ngraph @g{header} {{\n{body}\n  return %y\n}}\n"


# ----- 1. binary elementwise ops of two dtypes ------------------------------------------------

@pytest.mark.parametrize("dtype, name", [(np.int64, "i64"), (np.float64, "f64")])
def test_add_of_two_dtypes_is_refused_at_import(dtype, name):
    m = _model([helper.make_node("Add", ["x", "c"], ["y"], name="addmix")], [2],
               [("c", np.array([1, 2], dtype))])
    with pytest.raises(slimc.ModelError, match=rf"'addmix' \(add\): input 0 is f32 and input 1 "
                                               rf"is {name}: the inputs must have one dtype"):
        slimc.from_onnx(m)


def test_where_and_pow_keep_their_own_dtype_rules():
    """Where's condition is bool and Pow's exponent may differ from its base (ONNX's T1)."""
    m = _model([helper.make_node("Pow", ["x", "e"], ["y"], name="p")], [2],
               [("e", np.array([2, 3], np.int64))])
    np.testing.assert_array_equal(slimc.interpret(slimc.from_onnx(m), np.full(2, 2, np.float32))[0],
                                  [4, 8])
    g = slimc.parse(_ir("  %c = greater(%x, %x) : bool[2,3]\n  %y = where(%c, %x, %x) : f32[2,3]"))
    with pytest.raises(slimc.ModelError, match=r"input 1 is f32 and input 2 is i32.*line 5"):
        slimc.parse(_ir("  const %k: i32[2,3] = [1, 2, 3, 4, 5, 6]\n"
                        "  %c = greater(%x, %x) : bool[2,3]\n  %y = where(%c, %x, %k) : f32[2,3]"))
    assert g.nodes[-1].op == "where"


# ----- 2. empty convolutions ------------------------------------------------------------------

def _conv(x_shape, w_shape, op="Conv"):
    return _model([helper.make_node(op, ["x", "w"], ["y"], name="conv7")], x_shape,
                  [("w", np.ones(w_shape, np.float32))])


@pytest.mark.parametrize("x_shape, w_shape, op", [
    ([0, 3, 4, 4], (2, 3, 3, 3), "Conv"), ([1, 3, 4, 4], (0, 3, 3, 3), "Conv"),
    ([1, 3, 4, 4], (0, 3, 1, 1), "Conv"), ([0, 3, 4, 4], (2, 3, 1, 1), "Conv"),
    ([1, 3, 4, 4], (3, 0, 3, 3), "ConvTranspose"), ([0, 3, 4, 4], (3, 2, 3, 3), "ConvTranspose"),
])
def test_empty_convolutions_compute_their_empty_outputs(x_shape, w_shape, op):
    """No batch or no output channels, at -O2 (where a 3x3 would take Winograd and a 1x1 the
    blocked or sparse kernels, whose tiling divided by the empty extent): an empty result of
    the interpreter's shape."""
    model = _conv(x_shape, w_shape, op=op)
    x = np.ones(x_shape, np.float32)
    (got,) = slimc.compile(model, opt_level=2)(x)
    (want,) = slimc.interpret(slimc.from_onnx(model), x)
    assert got.shape == want.shape and got.size == 0


def test_an_empty_batch_bound_at_the_call_computes_too():
    module = slimc.compile(_conv(["N", 3, 4, 4], (2, 3, 3, 3)), opt_level=2)
    assert module(np.zeros((0, 3, 4, 4), np.float32))[0].shape == (0, 2, 2, 2)


# ----- 3. quantize(exclude=..., keep_sensitive=...) -------------------------------------------

@pytest.fixture(scope="module")
def conv_model():
    rng = np.random.default_rng(0)
    m = _model([helper.make_node("Conv", ["x", "w"], ["feat"], name="conv1", pads=[1, 1, 1, 1]),
                helper.make_node("Relu", ["feat"], ["y"], name="relu")], [1, 3, 8, 8],
               [("w", rng.standard_normal((8, 3, 3, 3)).astype(np.float32))])
    return m, [(rng.standard_normal((1, 3, 8, 8)).astype(np.float32),)]


def test_quantize_exclude_of_an_unknown_name_lists_the_layers(conv_model):
    m, cal = conv_model
    with pytest.raises(slimc.InputError, match=r"exclude=\['conv_1'\]: no conv, matmul or gemm "
                                               r"layer has that name; did you mean 'conv1'\?"):
        slimc.quantize(m, calibration=cal, exclude=["conv_1"])


def test_quantize_exclude_takes_one_name_as_a_str(conv_model):
    m, cal = conv_model
    _, rep = slimc.quantize(m, calibration=cal, exclude="conv1", report=True)
    assert [(r.name, r.quantized, r.reason) for r in rep.layers] == \
        [("conv1", False, "excluded by the caller")]


def test_quantize_keep_sensitive_must_be_a_number(conv_model):
    m, cal = conv_model
    with pytest.raises(slimc.InputError, match="keep_sensitive is an SQNR threshold in dB.*'high'"):
        slimc.quantize(m, calibration=cal, keep_sensitive="high")


# ----- 4. slimc.parse -------------------------------------------------------------------------

def test_parse_takes_str_or_utf8_bytes_only():
    with pytest.raises(slimc.InputError, match="slimc.parse takes IR text.*got NoneType"):
        slimc.parse(None)
    text = _ir("  %y = neg(%x) : f32[2,3]")
    assert str(slimc.parse(text.encode())) == text
    with pytest.raises(ParseError, match="not UTF-8 text"):
        slimc.parse(b"\x08\x07\x12\x80\xff")


@pytest.mark.parametrize("body, error, message", [
    ("  const %c: f32[2,3] = [1, 2]\n  %y = add(%x, %c) : f32[2,3]", ParseError,
     r"line 3, column 3: constant %c: f32\[2,3\] needs 6 values, got 2"),
    ("  %y = softmax(%x) {axis=\"hello\"} : f32[2,3]", slimc.ModelError,
     r"node 'y' \(softmax\): attribute axis='hello' must be a number.* \(line 3, column 3\)"),
    ("  %y = neg(%x) : i64[7,7]", ParseError,
     r"line 3, column 3: %y is declared i64\[7,7\] but neg gives f32\[2,3\]"),
])
def test_parse_errors_name_the_line(body, error, message):
    with pytest.raises(error, match=message):
        slimc.parse(_ir(body))


def test_parse_refuses_an_integer_constant_its_dtype_cannot_hold():
    with pytest.raises(ParseError, match=r"line 3.*constant %c: i8\[2\]: value -?1000 is out of "
                                         r"range for i8"):
        slimc.parse(_ir("  const %c: i8[2] = [1000, -1000]\n  %y = add(%x, %c) : i8[2]",
                        "(%x: i8[2]) -> (i8[2])"))


def test_parse_can_still_read_a_broken_dump_as_written():
    g = slimc.parse(_ir("  %y = neg(%x) : i64[7,7]", "(%x: f32[2,3]) -> (i64[7,7])"),
                    check_types=False)
    assert str(g.outputs[0].type) == "i64[7,7]"


# ----- 5. Resize with a NaN scale -------------------------------------------------------------

def test_resize_nan_scale_is_a_model_error():
    m = _model([helper.make_node("Resize", ["x", "", "s"], ["y"], name="rsz")], [1, 1, 4, 4],
               [("s", np.array([1, 1, np.nan, 2], np.float32))])
    with pytest.raises(slimc.ModelError, match=r"'rsz' \(resize\): scales .*nan.* must be finite "
                                               r"and positive"):
        slimc.from_onnx(m)


# ----- 6. the command line --------------------------------------------------------------------

@pytest.fixture
def cli_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    m = _model([helper.make_node("MatMul", ["x", "W"], ["y"])], [2, 4],
               [("W", np.ones((4, 3), np.float32))])
    import onnx

    onnx.save(m, "m.onnx")
    return "m.onnx"


def test_cli_run_refuses_npz_keys_that_name_no_input(cli_model):
    np.savez("wrong.npz", z=np.zeros((2, 4), np.float32))
    with pytest.raises(SystemExit, match=r"wrong.npz holds \['z'\], which name no input of the "
                                         r"model; its inputs are \['x'\]"):
        cli_main(["run", cli_model, "--inputs", "wrong.npz"])


def test_cli_run_reports_a_missing_or_pickled_npz_in_one_line(cli_model):
    with pytest.raises(SystemExit, match="cannot read --inputs missing.npz"):
        cli_main(["run", cli_model, "--inputs", "missing.npz"])
    open("text.npz", "w").write("hello")
    with pytest.raises(SystemExit, match=r"--inputs text.npz is not an .npz of plain arrays"):
        cli_main(["run", cli_model, "--inputs", "text.npz"])


def test_cli_opt_of_an_onnx_or_missing_file_is_one_line(cli_model, capsys):
    with pytest.raises(SystemExit, match="opt takes slimc IR.*slimc ir m.onnx > model.slimc"):
        cli_main(["opt", cli_model, "--passes", "dce"])
    assert cli_main(["opt", "missing.slimc", "--passes", "dce"]) == 1
    assert "slimc: error: [Errno 2] No such file or directory: 'missing.slimc'" in \
        capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["ir", "m.onnx", "--target", "x87"], "argument --target: unknown target 'x87'"),
    (["profile", "m.onnx", "--top", "-3"], "argument --top: expected a positive integer"),
])
def test_cli_refuses_bad_option_values(cli_model, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        cli_main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err


# ----- 7. slimc.interpret of something not a Graph --------------------------------------------

def test_interpret_of_a_model_proto_or_path_says_what_it_takes(tmp_path):
    m = _model([helper.make_node("Relu", ["x"], ["y"], name="r")], [2])
    for model in (m, str(tmp_path / "m.onnx")):
        with pytest.raises(slimc.InputError, match=r"slimc.interpret runs a slimc Graph, got "
                                                   r"\w+; import the model first"):
            slimc.interpret(model, np.ones(2, np.float32))


# ----- 8. prune.magnitude with a block larger than the weight ---------------------------------

def test_prune_block_covering_the_whole_weight_is_skipped_with_the_reason():
    m = _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [2, 4],
               [("W", np.ones((4, 3), np.float32))])
    _, rep = slimc.prune.magnitude(m, 0.5, pattern="block:1000x1000", report=True)
    assert rep.layers == []
    assert rep.skipped == [("mm", "matmul", "the block 1000x1000 covers its whole weight %W "
                                            "([K, N] = [4, 3]); give a smaller block")]
    assert "nothing to prune: the block covers every selected weight whole" in str(rep)
