"""Converters for ONNX's elementwise, activation, comparison and logic ops."""

from __future__ import annotations

import numpy as np

from slimc.ir import dtypes

from . import ConvertContext, converter, onnx_dtype, simple

# ONNX op -> slimc op, inputs and semantics identical.
ONE_TO_ONE = {
    "Neg": "neg", "Abs": "abs", "Sqrt": "sqrt", "Reciprocal": "reciprocal", "Exp": "exp",
    "Log": "log", "Erf": "erf", "Tanh": "tanh", "Sigmoid": "sigmoid", "Relu": "relu",
    "Floor": "floor", "Ceil": "ceil", "Round": "round", "Sign": "sign", "Sin": "sin",
    "Cos": "cos", "Tan": "tan", "Asin": "asin", "Acos": "acos", "Atan": "atan", "Sinh": "sinh",
    "Cosh": "cosh", "Asinh": "asinh", "Acosh": "acosh", "Atanh": "atanh", "Softsign": "softsign",
    "Softplus": "softplus", "Mish": "mish", "BitwiseNot": "bitwise_not", "Not": "not",
    "IsNaN": "isnan", "HardSwish": "hard_swish",
    "PRelu": "prelu",
    "BitwiseAnd": "bitwise_and", "BitwiseOr": "bitwise_or", "BitwiseXor": "bitwise_xor",
    "LessOrEqual": "less_equal", "GreaterOrEqual": "greater_equal",
    "Where": "where", "Max": "max", "Min": "min", "Sum": "sum", "Mean": "mean",
    "Identity": "identity",
}
for _onnx, _slimc in ONE_TO_ONE.items():
    simple(_onnx, _slimc)


def _legacy_broadcast(slimc_op: str):
    """Opset < 7 binary ops: `broadcast=1` with `axis` aligns B to A starting at `axis`
    (numpy aligns to the right); B is reshaped with trailing ones to say the same thing."""

    def convert(ctx: ConvertContext):
        a, b = ctx.input(0), ctx.input(1)
        if ctx.attr("broadcast", 0, kind="int") and ctx.has_attr("axis"):
            axis = ctx.attr("axis", kind="int")
            axis = axis + a.type.rank if axis < 0 else axis
            trailing = a.type.rank - axis - b.type.rank
            if trailing < 0:
                ctx.fail(f"broadcast axis {axis} puts B {b.type} past the end of A {a.type}")
            if trailing:
                shape = ctx.const(np.array(list(b.type.shape) + [1] * trailing, np.int64))
                b = ctx.emit("reshape", [b, shape])
        elif not ctx.attr("broadcast", 0, kind="int") and a.type.shape != b.type.shape:
            ctx.fail(f"shapes {a.type} and {b.type} differ and broadcast=0 (opset < 7)")
        return ctx.emit(slimc_op, [a, b])

    return convert


for _onnx, _slimc in (("Add", "add"), ("Sub", "sub"), ("Mul", "mul"), ("Div", "div"),
                      ("Pow", "pow"), ("And", "and"), ("Or", "or"), ("Xor", "xor"),
                      ("Equal", "equal"), ("Less", "less"), ("Greater", "greater")):
    converter(_onnx, since=1)(_legacy_broadcast(_slimc))
    simple(_onnx, _slimc, since=7)

# ONNX op -> (slimc op, [(onnx attribute, slimc attribute, default)])
WITH_ATTRS = {
    "LeakyRelu": ("leaky_relu", [("alpha", "alpha", 0.01)]),
    "Elu": ("elu", [("alpha", "alpha", 1.0)]),
    "Celu": ("celu", [("alpha", "alpha", 1.0)]),
    "Selu": ("selu", [("alpha", "alpha", 1.67326319217681884765625),
                      ("gamma", "gamma", 1.05070102214813232421875)]),
    "ThresholdedRelu": ("thresholded_relu", [("alpha", "alpha", 1.0)]),
    "HardSigmoid": ("hard_sigmoid", [("alpha", "alpha", 0.2), ("beta", "beta", 0.5)]),
    "Gelu": ("gelu", [("approximate", "approximate", "none")]),
    "Shrink": ("shrink", [("bias", "bias", 0.0), ("lambd", "lambd", 0.5)]),
    "Mod": ("mod", [("fmod", "fmod", 0)]),
    "BitShift": ("bit_shift", [("direction", "direction", None)]),
    "IsInf": ("isinf", [("detect_negative", "detect_negative", 1),
                        ("detect_positive", "detect_positive", 1)]),
}
for _onnx, (_slimc, _attrs) in WITH_ATTRS.items():
    simple(_onnx, _slimc, attrs=_attrs)


@converter("Cast", since=6)
def cast(ctx: ConvertContext):
    to = onnx_dtype(ctx.attr("to", kind="int"), " (Cast to)")
    return ctx.emit("cast", [ctx.input(0)], to=to)


@converter("CastLike", since=15)
def cast_like(ctx: ConvertContext):
    return ctx.emit("cast", [ctx.input(0)], to=ctx.input(1).dtype)


@converter("Clip", since=6)
def clip_attrs(ctx: ConvertContext):
    """Opset 6-10: bounds are attributes."""
    x = ctx.input(0)
    lo = ctx.const(np.asarray(ctx.attr("min", -3.4028234663852886e38), x.dtype.numpy))
    hi = ctx.const(np.asarray(ctx.attr("max", 3.4028234663852886e38), x.dtype.numpy))
    return ctx.emit("clip", [x, lo, hi])


@converter("Clip", since=11)
def clip_inputs(ctx: ConvertContext):
    return ctx.emit("clip", ctx.inputs[:3])


@converter("Dropout", since=1)
def dropout(ctx: ConvertContext):
    """Inference: Dropout is the identity; its optional mask output is all true."""
    if ctx.has_input(2) and (ctx.const_value(2) is None or bool(ctx.const_value(2))):
        ctx.unsupported("training_mode is true or not a constant: dropout in training mode "
                        "is random and not supported")
    x = ctx.input(0)
    y = ctx.emit("identity", [x])
    if len(ctx.node.output) > 1 and ctx.node.output[1]:
        shape = ctx.const(np.array(x.type.shape, np.int64)) if x.type.is_static else \
            ctx.emit("shape", [x])
        mask = ctx.emit("constant_of_shape", [shape], value=True, dtype=dtypes.bool)
        return [y, mask]
    return y
