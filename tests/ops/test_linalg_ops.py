"""matmul, gemm, einsum, matmul_integer, det: slimc's interpreter against onnxruntime, and type
inference with symbolic dimensions."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

import slimc
from slimc.ir import FusionKind, ModelError, TensorType, dtypes, get_op
from tests.ops.common import f32, infer
from tests.oracle import check_against_onnxruntime, make_model, run_slimc_interpreter

RNG = np.random.default_rng(4321)


def rand(shape, dtype=np.float32):
    if np.dtype(dtype).kind in "iu":
        return RNG.integers(-4 if np.dtype(dtype).kind == "i" else 0, 5, size=shape).astype(dtype)
    return RNG.standard_normal(shape).astype(dtype)


# ----- matmul ----------------------------------------------------------------------------------

MATMUL_SHAPES = [
    ((3, 4), (4, 5)), ((4,), (4,)), ((4,), (4, 5)), ((3, 4), (4,)), ((4,), (2, 4, 5)),
    ((2, 3, 4), (4,)), ((2, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 6)), ((1, 3, 4), (2, 4, 5)),
    ((3, 4), (2, 4, 5)), ((0, 4), (4, 3)), ((3, 0), (0, 2)), ((1, 1), (1, 1)),
]


@pytest.mark.parametrize("sa,sb", MATMUL_SHAPES)
def test_matmul_shapes(sa, sb):
    inputs = {"a": rand(sa), "b": rand(sb)}
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], inputs, ["y"], opset=13)
    got = check_against_onnxruntime(model, inputs)
    assert got[0].shape == np.matmul(inputs["a"], inputs["b"]).shape


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int64, np.uint32, np.uint64,
                                   np.float16])
def test_matmul_dtypes(dtype):
    inputs = {"a": rand((2, 3, 8), dtype), "b": rand((8, 5), dtype)}
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], inputs, ["y"], opset=13)
    tol = dict(rtol=1e-2, atol=1e-2) if dtype == np.float16 else {}
    check_against_onnxruntime(model, inputs, **tol)


def test_matmul_inference_keeps_symbols():
    assert infer("matmul", [f32("B", "M", 4), f32(4, "N")])[0] == f32("B", "M", "N")
    assert infer("matmul", [f32("K"), f32("B", "K", 3)])[0] == f32("B", 3)
    assert infer("matmul", [f32("B", 1, 5, "K"), f32(7, None, 3)])[0] == f32("B", 7, 5, 3)
    assert infer("matmul", [f32("K"), f32("K")])[0] == f32()
    assert infer("matmul", [f32(None, None), f32(None, 6)])[0] == f32(None, 6)


@pytest.mark.parametrize("sa,sb", [((3, 4), (5, 6)), ((2, 3, 4), (3, 4, 5)), ((), (3,))])
def test_matmul_inference_rejects_mismatches(sa, sb):
    with pytest.raises(ModelError):
        infer("matmul", [f32(*sa), f32(*sb)])


def test_fusion_kinds():
    assert get_op("matmul").fusion == FusionKind.OUT_FUSABLE
    assert get_op("gemm").fusion == FusionKind.OUT_FUSABLE
    assert get_op("reduce_sum").fusion == FusionKind.REDUCTION


# ----- gemm ------------------------------------------------------------------------------------

@pytest.mark.parametrize("c_shape", [None, (), (1,), (5,), (1, 5), (3, 1), (3, 5), (1, 1)])
@pytest.mark.parametrize("trans_a,trans_b", [(0, 0), (1, 0), (0, 1), (1, 1)])
def test_gemm(trans_a, trans_b, c_shape):
    m, k, n = 3, 4, 5
    a = rand((k, m) if trans_a else (m, k))
    b = rand((n, k) if trans_b else (k, n))
    inputs, names = {"a": a, "b": b}, ["a", "b"]
    if c_shape is not None:
        inputs["c"] = rand(c_shape)
        names.append("c")
    node = helper.make_node("Gemm", names, ["y"], transA=trans_a, transB=trans_b, alpha=0.5,
                            beta=2.0)
    check_against_onnxruntime(make_model([node], inputs, ["y"], opset=13), inputs)


@pytest.mark.parametrize("opset", [7, 9, 11, 13])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (-1.5, 0.0), (0.0, 3.0)])
def test_gemm_opsets_and_scales(opset, alpha, beta):
    inputs = {"a": rand((4, 6)), "b": rand((6, 2)), "c": rand((4, 2))}
    node = helper.make_node("Gemm", ["a", "b", "c"], ["y"], alpha=alpha, beta=beta)
    check_against_onnxruntime(make_model([node], inputs, ["y"], opset=opset), inputs)


def test_gemm_constant_weights_and_dtype():
    a = rand((2, 8), np.float64)
    w, bias = rand((3, 8), np.float64), rand((3,), np.float64)
    node = helper.make_node("Gemm", ["a", "w", "bias"], ["y"], transB=1)
    model = make_model([node], {"a": a}, ["y"], {"w": w, "bias": bias}, opset=13)
    check_against_onnxruntime(model, {"a": a})
    graph = slimc.from_onnx(model)
    (node,) = graph.find_nodes("gemm")
    assert node.attrs["trans_b"] == 1 and graph.outputs[0].type == TensorType(dtypes.f64, (2, 3))


def test_gemm_inference():
    t = infer("gemm", [f32("M", "K"), f32("N", "K"), f32("N")], trans_b=1)[0]
    assert t == f32("M", "N")
    assert infer("gemm", [f32(7, "M"), f32(7, 4)], trans_a=1)[0] == f32("M", 4)
    with pytest.raises(ModelError, match="contracted"):
        infer("gemm", [f32(3, 4), f32(5, 6)])
    with pytest.raises(ModelError, match="broadcast"):
        infer("gemm", [f32(3, 4), f32(4, 6), f32(4)])
    with pytest.raises(ModelError, match="2-D"):
        infer("gemm", [f32(2, 3, 4), f32(4, 6)])


# ----- einsum ----------------------------------------------------------------------------------

EINSUM_CASES = [
    ("ij,jk->ik", [(3, 4), (4, 5)]), ("ij,jk", [(3, 4), (4, 5)]), ("ii->i", [(3, 3)]),
    ("ii", [(3, 3)]), ("i,i", [(3,), (3,)]), ("ij->ji", [(2, 3)]), ("ij->", [(2, 3)]),
    ("bij,bjk->bik", [(2, 3, 4), (2, 4, 5)]), ("...ii->...i", [(2, 3, 3)]),
    ("ij,ij->ij", [(2, 3), (2, 3)]), ("i,j->ij", [(2,), (3,)]),
    ("ijk,ikl,ilm->ijm", [(2, 3, 4), (2, 4, 5), (2, 5, 6)]), ("ba", [(2, 3)]),
    ("BA,ac->Bc", [(2, 3), (3, 4)]), (" ij , jk -> ik ", [(3, 4), (4, 5)]),
    ("ab...,bc...->ac...", [(2, 3, 4), (3, 5, 4)]), ("i...i->...", [(3, 2, 3)]),
    ("...ij,...jk->...ik", [(2, 3, 4), (2, 4, 5)]),
    ("bhqd,bhkd->bhqk", [(1, 2, 3, 4), (1, 2, 5, 4)]),
    ("ij->i", [(0, 3)]), ("...", [(2, 3)]), ("->", [()]),
]


@pytest.mark.parametrize("equation,shapes", EINSUM_CASES)
def test_einsum(equation, shapes):
    inputs = {f"x{i}": rand(s) for i, s in enumerate(shapes)}
    node = helper.make_node("Einsum", list(inputs), ["y"], equation=equation)
    check_against_onnxruntime(make_model([node], inputs, ["y"], opset=12), inputs)


@pytest.mark.parametrize("dtype", [np.float64, np.int32, np.int64])
def test_einsum_dtypes(dtype):
    inputs = {"a": rand((2, 3, 4), dtype), "b": rand((2, 4, 5), dtype)}
    node = helper.make_node("Einsum", ["a", "b"], ["y"], equation="bij,bjk->bik")
    check_against_onnxruntime(make_model([node], inputs, ["y"], opset=12), inputs)


def test_einsum_inference_keeps_symbols():
    eq = dict(equation="bij,bjk->bik")
    assert infer("einsum", [f32("B", "M", "K"), f32("B", "K", 7)], **eq)[0] == f32("B", "M", 7)
    assert infer("einsum", [f32("N", 3)], equation="ij->ji")[0] == f32(3, "N")
    assert infer("einsum", [f32("N", 3), f32(3, 2)], equation="ij,jk")[0] == f32("N", 2)
    assert infer("einsum", [f32("B", "S", 4, 4)], equation="...ii->...i")[0] == f32("B", "S", 4)
    assert infer("einsum", [f32("B", 3, "M"), f32(1, "M", 2)],
                 equation="...ij,...jk->...ik")[0] == f32("B", 3, 2)
    assert infer("einsum", [f32("X", "Y")], equation="ba")[0] == f32("Y", "X")


@pytest.mark.parametrize("equation,shapes,match", [
    ("ij,jk->ik", [(3, 4), (5, 6)], "label 'j'"),
    ("ij->ik", [(3, 4)], "appear in no operand"),
    ("ijk->i", [(3, 4)], "rank"),
    ("ii->i", [(3, 4)], "repeats label"),
    ("ij,jk->ik", [(3, 4)], "term"),
    ("i.j->i", [(3, 4)], "bad term"),
])
def test_einsum_inference_errors(equation, shapes, match):
    with pytest.raises(ModelError, match=match):
        infer("einsum", [f32(*s) for s in shapes], equation=equation)


# ----- matmul_integer --------------------------------------------------------------------------

def _q(shape, dt, lo=None, hi=None):
    info = np.iinfo(dt)
    lo = info.min if lo is None else lo
    hi = info.max if hi is None else hi
    return RNG.integers(lo, hi + 1, size=shape).astype(dt)


@pytest.mark.parametrize("a_dt,b_dt", [(np.uint8, np.uint8), (np.uint8, np.int8),
                                       (np.int8, np.int8), (np.int8, np.uint8)])
@pytest.mark.parametrize("zp", ["none", "scalar", "per_axis", "nd"])
@pytest.mark.parametrize("sa,sb", [((3, 4), (4, 5)), ((2, 3, 4), (4, 5)), ((4,), (2, 4, 5))])
def test_matmul_integer_exact(a_dt, b_dt, zp, sa, sb):
    """Against the exact int64 formula: onnxruntime accepts only a scalar a_zero_point and its
    u8 x s8 kernel saturates on full-range data, so it is not the oracle here."""
    a, b = _q(sa, a_dt), _q(sb, b_dt)
    inits = {}
    if zp == "scalar":
        inits = {"azp": _q((), a_dt), "bzp": _q((), b_dt)}
    elif zp == "per_axis":
        inits = {"azp": _q((sa[-2],) if len(sa) > 1 else (), a_dt), "bzp": _q((sb[-1],), b_dt)}
    elif zp == "nd":
        inits = {"azp": _q(sa[:-1] + (1,) if len(sa) > 1 else (), a_dt),
                 "bzp": _q(sb[:-2] + (1, sb[-1]), b_dt)}
    node = helper.make_node("MatMulInteger", ["a", "b"] + list(inits), ["y"])
    model = make_model([node], {"a": a, "b": b}, ["y"], inits, opset=10)
    got = run_slimc_interpreter(model, {"a": a, "b": b})[0]
    a64, b64 = a.astype(np.int64), b.astype(np.int64)
    if inits:
        azp = inits["azp"].astype(np.int64)
        a64 = a64 - (azp[:, None] if azp.ndim == 1 else azp)
        b64 = b64 - inits["bzp"].astype(np.int64)
    want = np.matmul(a64, b64)
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("b_dt", [np.uint8, np.int8])
@pytest.mark.parametrize("zp", ["none", "scalar", "per_column"])
def test_matmul_integer_matches_onnxruntime(b_dt, zp):
    a = _q((2, 3, 6), np.uint8)
    b = _q((6, 5), b_dt, *((-64, 63) if b_dt == np.int8 else (None, None)))
    inits = {}
    if zp != "none":
        inits = {"azp": _q((), np.uint8), "bzp": _q((5,) if zp == "per_column" else (), b_dt)}
    node = helper.make_node("MatMulInteger", ["a", "b"] + list(inits), ["y"])
    model = make_model([node], {"a": a, "b": b}, ["y"], inits, opset=10)
    check_against_onnxruntime(model, {"a": a, "b": b})


def test_matmul_integer_reference_is_exact():
    a = RNG.integers(0, 256, size=(4, 300)).astype(np.uint8)
    b = RNG.integers(-128, 128, size=(300, 3)).astype(np.int8)
    ref = get_op("matmul_integer").reference
    got = ref(a, b, np.uint8(7), np.int8(-3))
    want = (a.astype(np.int64) - 7) @ (b.astype(np.int64) + 3)
    np.testing.assert_array_equal(got, want.astype(np.int32))


# ----- det -------------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(3, 3), (2, 4, 4), (2, 1, 2, 2), (1, 1)])
def test_det(shape):
    inputs = {"x": rand(shape)}
    node = helper.make_node("Det", ["x"], ["y"])
    check_against_onnxruntime(make_model([node], inputs, ["y"], opset=11), inputs)


def test_det_inference():
    assert infer("det", [f32("B", "N", "N")])[0] == f32("B")
    with pytest.raises(ModelError, match="square"):
        infer("det", [f32(2, 3, 4)])


# ----- the text form round-trips ---------------------------------------------------------------

def test_linalg_graph_round_trips_through_text():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])
    y = helper.make_value_info("y", onnx.TypeProto())
    w = onnx.numpy_helper.from_array(rand((4, 8)), "w")
    nodes = [helper.make_node("Gemm", ["x", "w"], ["g"], transB=1, alpha=0.5),
             helper.make_node("Einsum", ["g", "g"], ["y"], equation="ni,nj->ij")]
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], [w]),
                          opset_imports=[helper.make_opsetid("", 13)])
    graph = slimc.from_onnx(m)
    assert graph.outputs[0].type == f32(4, 4)
    text = slimc.ir.print_graph(graph)
    assert slimc.ir.print_graph(slimc.parse(text)) == text


# ----- hypothesis ------------------------------------------------------------------------------

@st.composite
def matmul_case(draw):
    m, k, n = draw(st.integers(1, 6)), draw(st.integers(1, 6)), draw(st.integers(1, 6))
    batch = draw(st.lists(st.integers(1, 3), max_size=3))
    ba = [draw(st.sampled_from([d, 1])) for d in batch]
    bb = [draw(st.sampled_from([d, 1])) for d in batch]
    ba = ba[draw(st.integers(0, len(ba))):]
    bb = bb[draw(st.integers(0, len(bb))):]
    sa = tuple(ba) + (m, k) if draw(st.booleans()) or ba else (k,)
    sb = tuple(bb) + (k, n) if draw(st.booleans()) or bb else (k,)
    return sa, sb


def symbolize(shape, mask):
    """Dims where mask is set become symbols named after their size (so they can be bound)."""
    return tuple(f"s{d}" if m else d for d, m in zip(shape, mask))


def bind(shape):
    return tuple(int(d[1:]) if isinstance(d, str) else d for d in shape)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(matmul_case(), st.lists(st.booleans(), min_size=10, max_size=10))
def test_matmul_hypothesis(case, mask):
    sa, sb = case
    inputs = {"a": rand(sa), "b": rand(sb)}
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])], inputs, ["y"], opset=13)
    got = check_against_onnxruntime(model, inputs)
    ref = get_op("matmul").reference(inputs["a"], inputs["b"])
    (t,) = infer("matmul", [f32(*symbolize(sa, mask[:5])), f32(*symbolize(sb, mask[5:]))])
    assert ref.dtype == np.float32 and ref.shape == got[0].shape
    # Symbols survive; a dim is unknown only where two different symbols broadcast.
    assert len(t.shape) == len(ref.shape)
    for d, real in zip(t.shape, ref.shape):
        assert d is None or bind((d,)) == (real,)


@st.composite
def einsum_case(draw):
    letters = "abcdef"
    sizes = {l: draw(st.integers(1, 4)) for l in letters}
    n_ops = draw(st.integers(1, 3))
    terms = [draw(st.lists(st.sampled_from(letters), min_size=0, max_size=3)) for _ in range(n_ops)]
    used = sorted({l for t in terms for l in t})
    out = draw(st.permutations(used)) if used else []
    out = out[:draw(st.integers(0, len(out)))]
    explicit = draw(st.booleans())
    eq = ",".join("".join(t) for t in terms) + ("->" + "".join(out) if explicit else "")
    shapes = [tuple(sizes[l] for l in t) for t in terms]
    return eq, shapes


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(einsum_case(), st.data())
def test_einsum_hypothesis(case, data):
    eq, shapes = case
    inputs = {f"x{i}": rand(s) for i, s in enumerate(shapes)}
    node = helper.make_node("Einsum", list(inputs), ["y"], equation=eq)
    got = check_against_onnxruntime(make_model([node], inputs, ["y"], opset=12), inputs)
    masks = [data.draw(st.lists(st.booleans(), min_size=len(s), max_size=len(s))) for s in shapes]
    (t,) = infer("einsum", [f32(*symbolize(s, m)) for s, m in zip(shapes, masks)], equation=eq)
    assert bind(t.shape) == got[0].shape
