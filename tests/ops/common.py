"""Helpers the op-family tests share: random inputs from a file's own generator, a one-node
ONNX model run by slimc's interpreter against an oracle, and type inference called directly."""

from __future__ import annotations

import numpy as np
from onnx import helper

from slimc.ir import TensorType, dtypes, get_op
from tests.oracle import (assert_close, make_model, run_onnx_reference, run_onnxruntime,
                          run_slimc_interpreter)


def random_arrays(rng: np.random.Generator):
    """rand(*shape, dtype=f32): normal floats, or integers in [-100, 100] clipped to the type,
    drawn from `rng` (each test file keeps its own stream)."""

    def rand(*shape, dtype=np.float32):
        if np.dtype(dtype).kind == "f":
            return rng.standard_normal(shape).astype(dtype)
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -100), min(info.max, 100), shape,
                            endpoint=True).astype(dtype)

    return rand


def check(op, data: dict, inits: dict = None, *, order=None, outs=("y",), opset=17,
          oracle="ort", rtol=1e-3, atol=1e-4, **attrs):
    """One-node model: `data` are graph inputs, `inits` initializers; `order` lists the node's
    inputs ("" for an absent one). Compares with onnxruntime or onnx.reference."""
    inits = inits or {}
    names = order or list(data) + list(inits)
    model = make_model([helper.make_node(op, names, list(outs), **attrs)], data,
                       [o for o in outs if o], inits, opset=opset)
    got = run_slimc_interpreter(model, data)
    want = run_onnxruntime(model, data) if oracle == "ort" else run_onnx_reference(model, data)
    assert_close(got, want, rtol, atol)
    return got


def infer(op: str, types, consts=(), **attrs):
    """The op's inferred output types; `consts` (the constant inputs' data) may stop short."""
    opdef = get_op(op)
    consts = list(consts or ())
    consts += [None] * (len(types) - len(consts))
    return opdef.infer_types(types, opdef.resolve_attrs(attrs), consts)


def f32(*shape):
    return TensorType(dtypes.f32, shape)
