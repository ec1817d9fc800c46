"""The IR itself: types, the text format (a fixed point), the verifier, save/load."""

import numpy as np
import pytest
from hypothesis import given, settings

import slimc
from slimc.ir import (Graph, ParseError, TensorType, VerificationError,
                      dtypes, interpret, parse, verify)

from .graph_gen import elementwise_graphs


def roundtrip(g: Graph) -> Graph:
    text = str(g)
    g2 = parse(text)
    assert str(g2) == text
    return g2


@pytest.mark.parametrize("name", ["a/b:0", "with space", "", "quote\"d", "ünï", "%x", "1.2-3"])
def test_any_name_survives(name):
    g = Graph("g/1")
    x = g.add_input(name, TensorType(dtypes.f32, (2,)))
    n = g.make_node("relu", [x], output_types=[x.type], output_names=[name + "!"], name=name)
    g.outputs = [n.outputs[0]]
    g2 = roundtrip(g)
    assert g2.inputs[0].name == name and g2.nodes[0].name == name and g2.name == "g/1"


def test_duplicate_names_are_made_unique():
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (2,)))
    a = g.make_node("relu", [x], output_types=[x.type], output_names=["x"])
    assert a.outputs[0].name == "x.1"


def test_constants_inline_elided_and_special_floats():
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (3,)))
    c = g.add_constant("c", np.array([np.nan, np.inf, -np.inf], np.float32))
    big = g.add_constant("big", np.arange(100, dtype=np.float32).reshape(10, 10))
    n = g.make_node("add", [x, c], output_types=[x.type])
    g.outputs = [n.outputs[0], big]
    g2 = roundtrip(g)
    np.testing.assert_array_equal(g2.constants["c"].data, c.data)
    assert g2.constants["big"].data is None and g2.constants["big"].type == big.type


def test_parse_errors_point_at_the_problem():
    with pytest.raises(ParseError, match="slimc-ir"):
        parse("graph @g() -> () { return }")
    with pytest.raises(ParseError, match="line 3.*undefined value %nope"):
        parse("# slimc-ir v1\ngraph @g(%x: f32[1]) -> (f32[1]) {\n  %y = relu(%nope) : f32[1]\n"
              "  return %y\n}\n")
    with pytest.raises(ParseError, match=r"v99 is newer than the one this slimc reads \(v1\)"):
        parse("# slimc-ir v99\n")
    with pytest.raises(ParseError, match=r"v0 is older than the one this slimc reads \(v1\)"):
        parse("# slimc-ir v0\n")


def test_verifier_catches_wrong_types_and_order():
    g = parse("# slimc-ir v1\ngraph @g(%x: f32[2,3]) -> (f32[2,4]) {\n"
              "  %y = relu(%x) : f32[2,4]\n  return %y\n}\n", check_types=False)
    with pytest.raises(VerificationError, match="differ from inferred"):
        verify(g)
    g = parse("# slimc-ir v1\ngraph @g(%x: f32[2]) -> (f32[2]) {\n"
              "  %a = relu(%x) : f32[2]\n  %b = neg(%a) : f32[2]\n  return %b\n}\n")
    g.nodes.reverse()
    with pytest.raises(VerificationError, match="before it is defined"):
        verify(g)
    g.sort()
    verify(g)


def test_verifier_catches_stale_use_lists():
    g = parse("# slimc-ir v1\ngraph @g(%x: f32[2]) -> (f32[2]) {\n"
              "  %a = relu(%x) : f32[2]\n  return %a\n}\n")
    g.inputs[0].uses.clear()
    with pytest.raises(VerificationError, match="stale"):
        verify(g)


def test_save_load_keeps_weights(tmp_path):
    g = Graph()
    x = g.add_input("x", TensorType(dtypes.f32, (4, 8)))
    w = g.add_constant("layer/w:0", np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32))
    n = g.make_node("mul", [x, w], output_types=[x.type])
    g.outputs = [n.outputs[0]]
    slimc.ir.save(g, tmp_path / "model")
    g2 = slimc.ir.load(tmp_path / "model")
    assert str(g2) == str(g)
    xs = np.ones((4, 8), np.float32)
    np.testing.assert_array_equal(interpret(g2, xs)[0], interpret(g, xs)[0])


def test_interpreter_names_the_failing_node():
    from slimc.ir import register_op, same_as_input

    register_op("test_boom", reference=lambda x: 1 / 0, infer=same_as_input(0), replace=True)
    g = parse("# slimc-ir v1\ngraph @g(%x: f32[2]) -> (f32[2]) {\n"
              "  %y = test_boom(%x) : f32[2] loc(\"layer7/boom\")\n  return %y\n}\n")
    with pytest.raises(slimc.ModelError, match="layer7/boom.*test_boom.*ZeroDivisionError"):
        interpret(g, np.zeros(2, np.float32))


def test_interpreter_checks_inputs():
    g = parse("# slimc-ir v1\ngraph @g(%x: f32[2]) -> (f32[2]) {\n  %y = relu(%x) : f32[2]\n"
              "  return %y\n}\n")
    with pytest.raises(slimc.InputError, match="'x' expects f32\\[2\\], got dtype float64"):
        interpret(g, np.zeros(2))
    with pytest.raises(slimc.InputError, match="takes 1 inputs"):
        interpret(g)


@settings(max_examples=60, deadline=None)
@given(elementwise_graphs())
def test_print_parse_print_is_a_fixed_point(g):
    verify(g)
    roundtrip(g)


def test_to_networkx_is_the_dataflow():
    import networkx as nx

    g = parse("""# slimc-ir v1
graph @g(%x: f32[4]) -> (f32[4]) {
  %a = relu(%x) : f32[4]
  %b = exp(%a) : f32[4]
  %c = add(%a, %b) : f32[4]
  %d = mul(%c, %c) : f32[4]
  return %d
}
""")
    a, b, c, d = g.nodes
    nxg = g.to_networkx()
    assert set(nxg.nodes) == {a, b, c, d}
    assert sorted((u.op, v.op, k) for u, v, k in nxg.edges(keys=True)) == \
        [("add", "mul", 0), ("add", "mul", 1), ("exp", "add", 1), ("relu", "add", 0),
         ("relu", "exp", 0)]
    assert list(nx.topological_sort(nxg))[0] is a and nx.immediate_dominators(nxg, a)[c] is a


def test_a_quoted_dtype_attribute_is_a_clear_error():
    g = parse("# slimc-ir v1\ngraph @g(%x: i32[5]) -> (f32[5]) {\n"
              "  %f = cast(%x) {to=\"f32\"} : f32[5]\n  return %f\n}\n", check_types=False)
    with pytest.raises(VerificationError, match=r"to='f32' is not a dtype \(write to=f32"):
        verify(g)
