"""Shared test helpers: build ONNX models in memory and compare slimc against the oracles.

The oracles are independent of slimc: onnxruntime, and onnx's own reference evaluator
(onnx.reference) for ops onnxruntime lacks. Tolerances are the ones the issues promise.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

RTOL, ATOL = 1e-3, 1e-4

NP_TO_ONNX = {np.dtype(k): v for k, v in {
    np.float32: TensorProto.FLOAT, np.float64: TensorProto.DOUBLE, np.float16: TensorProto.FLOAT16,
    np.int8: TensorProto.INT8, np.int16: TensorProto.INT16, np.int32: TensorProto.INT32,
    np.int64: TensorProto.INT64, np.uint8: TensorProto.UINT8, np.uint16: TensorProto.UINT16,
    np.uint32: TensorProto.UINT32, np.uint64: TensorProto.UINT64, np.bool_: TensorProto.BOOL,
}.items()}


def make_model(nodes, inputs: dict, outputs: Sequence[str], initializers: Optional[dict] = None,
               opset: int = 17, output_shapes: Optional[dict] = None) -> onnx.ModelProto:
    """nodes: onnx NodeProtos; inputs: name -> example array (dtype and shape are taken from
    it); outputs: names (types left for the consumer to infer); initializers: name -> array."""
    ins = [helper.make_tensor_value_info(n, NP_TO_ONNX[np.asarray(a).dtype], np.asarray(a).shape)
           for n, a in inputs.items()]
    outs = [helper.make_value_info(n, onnx.TypeProto()) for n in outputs]
    inits = [numpy_helper.from_array(np.asarray(a), n) for n, a in (initializers or {}).items()]
    graph = helper.make_graph(list(nodes), "test", ins, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return model


def run_onnxruntime(model: onnx.ModelProto, inputs: dict, optimize: bool = True) -> list[np.ndarray]:
    """optimize=False turns onnxruntime's graph optimizations off (its kernels only)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.log_severity_level = 4
    so.intra_op_num_threads = 1
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, inputs)


def run_onnx_reference(model: onnx.ModelProto, inputs: dict) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    return ReferenceEvaluator(model).run(None, inputs)


def run_slimc_interpreter(model: onnx.ModelProto, inputs: dict) -> list[np.ndarray]:
    import slimc

    graph = slimc.from_onnx(model, input_shapes={k: np.asarray(v).shape for k, v in inputs.items()})
    slimc.ir.verify(graph)
    return slimc.interpret(graph, **inputs)


def assert_close(actual: Sequence[np.ndarray], expected: Sequence[np.ndarray],
                 rtol: float = RTOL, atol: float = ATOL) -> None:
    assert len(actual) == len(expected), f"{len(actual)} outputs, expected {len(expected)}"
    for i, (a, e) in enumerate(zip(actual, expected)):
        a, e = np.asarray(a), np.asarray(e)
        assert a.shape == e.shape, f"output {i}: shape {a.shape}, expected {e.shape}"
        assert a.dtype == e.dtype, f"output {i}: dtype {a.dtype}, expected {e.dtype}"
        if a.dtype.kind in "fc":
            np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, equal_nan=True,
                                       err_msg=f"output {i}")
        else:
            np.testing.assert_array_equal(a, e, err_msg=f"output {i}")


def check_against_onnxruntime(model: onnx.ModelProto, inputs: dict, rtol: float = RTOL,
                              atol: float = ATOL) -> list[np.ndarray]:
    """Interpreter vs onnxruntime on one model; returns slimc's outputs."""
    got = run_slimc_interpreter(model, inputs)
    assert_close(got, run_onnxruntime(model, inputs), rtol, atol)
    return got
