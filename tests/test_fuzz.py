"""Differential fuzzing: random ONNX models (tests/graph_gen.py `onnx_cases`) compiled to native
code and checked against slimc's interpreter and against onnxruntime.

CI runs `CI_EXAMPLES` derandomized examples per test (the same ones every run). The fuzz profile
runs N random ones per test, before closing a conformance issue::

    SLIMC_FUZZ_EXAMPLES=3000 python -m pytest -n 1 tests/test_fuzz.py --hypothesis-show-statistics

Every bug found here becomes a regression test in tests/test_fuzz_regressions.py. A model slimc
refuses (`UnsupportedError` at compile time) is not a failure; a crash, an internal error, any
other error or a wrong answer is.
"""

import os
import re

import numpy as np
import onnx
import onnx.numpy_helper
import onnx.shape_inference
import pytest
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

import slimc
from slimc.ir import UnsupportedError, verify

from .graph_gen import onnx_cases
from .kernel_rules import assert_kernels_keep_the_rule
from .oracle import run_onnxruntime

CI_EXAMPLES = 150  # per test: about a minute each on one core
FUZZ_EXAMPLES = int(os.environ.get("SLIMC_FUZZ_EXAMPLES", "0"))
FUZZ = settings(max_examples=FUZZ_EXAMPLES or CI_EXAMPLES, derandomize=not FUZZ_EXAMPLES,
                deadline=None, suppress_health_check=list(HealthCheck))

# Models onnxruntime (checked with 1.32) refuses although ONNX defines them: those examples are not
# compared with onnxruntime (the interpreter test still covers them). Each entry: a pattern of
# onnxruntime's message, and why.
ORT_REFUSALS = [
    # Its CPU provider lacks some op/dtype pairs (float16 Mean and Erf, Hardmax, DepthToSpace
    # and SpaceToDepth of float16/float64/bool/int, ...).
    (r"NOT_IMPLEMENTED : Could not find an implementation", "no kernel for this op and dtype"),
    # Resize in linear or cubic mode of a 3-D input (it takes 2-D, and 4-D with the outer
    # scales 1).
    (r"'(Linear|Cubic)' mode only supports", "Resize linear/cubic of this rank"),
    # Pools over a zero-size channel or spatial dim ("Only N can be zero").
    (r"Invalid input shape. Only N can be zero", "pool of a zero-size dim"),
    # Conv and MaxPool with auto_pad SAME_* and a dilation > 1: valid ONNX, unsupported there.
    (r"Dilation not supported for AutoPadType::SAME", "SAME padding with dilation"),
    # MaxPool/AveragePool with auto_pad SAME_* and a stride larger than the kernel: the pad
    # total (out - 1) * stride + kernel - in is negative; Conv (onnxruntime's and
    # onnx.reference's) clamps it to 0 as slimc does, onnxruntime's pools stop.
    (r"padding values must be non-negative", "SAME pool padding with stride > kernel"),
    # LayerNormalization over zero elements (X.shape[axis:] has a 0): the result is empty.
    (r"Size of X.shape\[axis:\] must be at least 1", "LayerNormalization over nothing"),
]


def _wrong_in_ort(model, shapes) -> str:
    """Why onnxruntime's answer for this model is known wrong (or it crashes, or ONNX leaves
    the answer undefined), or ''."""
    consts = {t.name: onnx.numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        # ReduceMean over an empty set: "undefined" in ONNX; onnxruntime gives 0, onnx.reference
        # and slimc NaN (0 / 0).
        has_axes = len(n.input) > 1 and n.input[1]
        if n.op_type == "ReduceMean" and (has_axes or not attrs.get("noop_with_empty_axes", 0)):
            shape = shapes[n.input[0]]
            axes = consts[n.input[1]].tolist() if has_axes else range(len(shape))
            if any(shape[a] == 0 for a in axes):
                return "ReduceMean over an empty set (undefined)"
        # InstanceNormalization over one element per channel: x - mean(x) is exactly 0 and
        # the answer is the bias (onnx.reference agrees), but onnxruntime 1.32 computes the
        # variance as E[x^2] - E[x]^2 and gets bias + 0.0015 for x = 150, -0.5 for bias
        # -0.569 and x = 1e4 (cancellation).
        if n.op_type == "InstanceNormalization" and shapes[n.input[0]][2:] and \
                int(np.prod(shapes[n.input[0]][2:])) == 1:
            return "InstanceNormalization over one element (cancellation)"
        # InstanceNormalization of a zero-size tensor (f32[1,4,0] computed by a Relu) kills the
        # process with a segmentation fault in onnxruntime 1.32.
        if n.op_type == "InstanceNormalization" and 0 in shapes[n.input[0]]:
            return "InstanceNormalization of a zero-size tensor (segfault)"
        # MaxPool with auto_pad SAME_* and a dilation > 1: onnxruntime pads as if there were no
        # dilation (a [1,1,1,5] input, kernel 2, dilation 2 gives 4 outputs, not 5; others
        # are shifted); onnx.reference agrees with slimc.
        if n.op_type == "MaxPool" and attrs.get("auto_pad", b"NOTSET").startswith(b"SAME") and \
                any(d > 1 for d in attrs.get("dilations", [])):
            return "MaxPool SAME padding with dilation"
    return ""


def _shapes(model) -> dict:
    """Every value's shape, from onnx's shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model)
    g = inferred.graph
    return {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(g.input) + list(g.value_info) + list(g.output)}


# Bugs found here whose fix belongs to another change (code generators owned elsewhere). Each has
# a strict xfail test in tests/test_fuzz_regressions.py; examples that hit one are skipped so
# the fuzzer goes on to find the next bug. Delete the entry with the fix (its xfail then fails).
# (test name -> predicate(model, shapes)). Empty: the one such bug so far, the softmax family
# over a non-last axis with a last dim of 1 (test_softmax_last_dim_one_with_epilogue), is fixed.
KNOWN_BUGS: dict = {}


def _skip_known_bugs(model) -> dict:
    """Reject an example that hits a known bug; returns every value's shape."""
    shapes = _shapes(model)
    for name, hits in KNOWN_BUGS.items():
        if hits(model, shapes):
            event(f"known bug: {name}")
            reject()
    return shapes


def _refused_by_ort(e: Exception) -> bool:
    for pattern, why in ORT_REFUSALS:
        if re.search(pattern, str(e)):
            event(f"onnxruntime refuses: {why}")
            return True
    return False


def _compiled(case, threads, opt_level=2, model=None):
    """slimc's compiled outputs, from two calls of one module (a kernel that leaves state in a
    buffer shows on the second), or None where slimc refuses the model. `model`: the case's
    model or a variant of it (symbolic input shapes)."""
    try:
        module = slimc.compile(model or case.model, threads=threads, opt_level=opt_level)
        first = module(**case.inputs)  # (symbolic shapes compile here)
    except UnsupportedError as e:
        event(f"slimc refuses: {e.detail[:60]}")
        return None
    assert_kernels_keep_the_rule(module)
    second = module(**case.inputs)
    for i, (a, b) in enumerate(zip(first, second)):
        np.testing.assert_array_equal(a, b, err_msg=f"output {i}: a second call differs")
    return first


def _with_symbolic_inputs(model) -> onnx.ModelProto:
    """The model with every input dimension symbolic (slimc binds them at the first call) and
    the outputs' shapes left to inference."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for i, v in enumerate(m.graph.input):
        for j, d in enumerate(v.type.tensor_type.shape.dim):
            d.dim_param = f"d{i}_{j}"
    for v in m.graph.output:
        v.type.tensor_type.ClearField("shape")
    return m


def assert_matches(case, got, expected, oracle: str) -> None:
    """Every output of the model: declared dtype and shape, and within the case's tolerance
    (bits equal where the value is exact)."""
    assert len(got) == len(expected) == len(case.outputs)
    for i, (a, e, out) in enumerate(zip(got, expected, case.outputs)):
        a, e = np.asarray(a), np.asarray(e)
        where = f"output {i} ({out.name}) against {oracle}"
        assert e.dtype == out.dtype and e.shape == out.shape, \
            f"{where}: the oracle gives {e.dtype}{list(e.shape)}, the model declares {out.dtype}{list(out.shape)}"
        assert a.dtype == out.dtype and a.shape == out.shape, \
            f"{where}: {a.dtype}{list(a.shape)}, expected {out.dtype}{list(out.shape)}"
        tol = case.tolerance(i)
        if tol is None:
            np.testing.assert_array_equal(a, e, err_msg=where)
        else:
            np.testing.assert_allclose(a, e, rtol=tol[0], atol=tol[1], equal_nan=True, err_msg=where)


@pytest.mark.filterwarnings("ignore:Mean of empty slice")  # the interpreter's norms of nothing
@FUZZ
@given(onnx_cases(), st.sampled_from([1, 2]), st.sampled_from([2, 0, 1, 3]), st.booleans())
def test_compiled_equals_interpreter(case, threads, opt_level, symbolic):
    onnx.checker.check_model(case.model, full_check=True)  # the generator's shapes are ONNX's
    _skip_known_bugs(case.model)
    try:
        graph = slimc.from_onnx(case.model)
    except UnsupportedError as e:
        event(f"slimc refuses: {e.detail[:60]}")
        return
    verify(graph)
    expected = slimc.interpret(graph, **case.inputs)
    model = _with_symbolic_inputs(case.model) if symbolic else case.model
    got = _compiled(case, threads, opt_level, model)
    if got is not None:
        assert_matches(case, got, expected, "slimc's interpreter")


@pytest.fixture(scope="module")
def onnxruntime():
    return pytest.importorskip("onnxruntime")


@FUZZ
@given(case=onnx_cases(), threads=st.sampled_from([1, 2]))
def test_compiled_equals_onnxruntime(onnxruntime, case, threads):
    shapes = _skip_known_bugs(case.model)
    if why := _wrong_in_ort(case.model, shapes):
        event(f"onnxruntime known wrong: {why}")
        return
    try:
        try:
            expected = run_onnxruntime(case.model, case.inputs)
        except Exception as e:
            # Its graph optimizer throws on some valid models (Relu then Clip with a min, on
            # int32/int64/float64: relu_clip_fusion.cc; its NCHWc rewrite: "ReorderOutput ...
            # invalid channel count"); its kernels alone still run them.
            if "core/optimizer/" not in str(e) and "ReorderOutput" not in str(e):
                raise
            event("onnxruntime's optimizer fails: run without it")
            expected = run_onnxruntime(case.model, case.inputs, optimize=False)
    except Exception as e:
        if _refused_by_ort(e):
            return
        raise
    got = _compiled(case, threads)
    if got is not None:
        assert_matches(case, got, expected, "onnxruntime")
