"""Elementwise and broadcasting ops: math, activations, comparisons, logic, casts.

Most are one line of data each: the table rows below declare the op, its numpy reference and
its fusion kind. Unary ops keep shape and dtype; binary ops broadcast numpy-style.
"""

from __future__ import annotations

import math

import numpy as np

from ..infer import broadcast_infer, same_as_input
from ..registry import REQUIRED, FusionKind, InferContext, register_op
from ..types import DType, TensorType, dtypes

EW = FusionKind.ELEMENTWISE
BC = FusionKind.BROADCAST

_erf = np.vectorize(math.erf, otypes=[np.float64])


def erf(x):
    return _erf(x.astype(np.float64)).astype(x.dtype) if x.size else x.copy()


def _sigmoid(x):
    # Split by sign so neither branch overflows: exp(-|x|) is in (0, 1].
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e)).astype(x.dtype)


def _round_half_even(x):
    return np.round(x)


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        c = np.asarray(math.sqrt(2 / math.pi), x.dtype)
        return (0.5 * x * (1 + np.tanh(c * (x + np.asarray(0.044715, x.dtype) * x ** 3)))).astype(x.dtype)
    return (0.5 * x * (1 + erf(x / np.asarray(math.sqrt(2), x.dtype)))).astype(x.dtype)


def _cast_like(x, dtype):
    return x.astype(dtype.numpy)


# name -> reference for ops y = f(x) that keep shape and dtype.
UNARY = {
    "neg": np.negative,
    "abs": np.abs,
    "sqrt": np.sqrt,
    "reciprocal": np.reciprocal,
    "exp": np.exp,
    "log": np.log,
    "erf": erf,
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "relu": lambda x: np.maximum(x, np.zeros((), x.dtype)),
    "floor": np.floor,
    "ceil": np.ceil,
    "round": _round_half_even,
    "sign": np.sign,
    "sin": np.sin,
    "cos": np.cos,
    "tan": np.tan,
    "asin": np.arcsin,
    "acos": np.arccos,
    "atan": np.arctan,
    "sinh": np.sinh,
    "cosh": np.cosh,
    "asinh": np.arcsinh,
    "acosh": np.arccosh,
    "atanh": np.arctanh,
    "softsign": lambda x: x / (1 + np.abs(x)),
    "softplus": lambda x: np.logaddexp(np.zeros((), x.dtype), x),
    "mish": lambda x: x * np.tanh(np.logaddexp(np.zeros((), x.dtype), x)),
    "bitwise_not": np.invert,
}

# Unary ops with attributes: name -> (reference, attribute defaults).
UNARY_WITH_ATTRS = {
    "leaky_relu": (lambda x, alpha: np.where(x >= 0, x, x * np.asarray(alpha, x.dtype)), {"alpha": 0.01}),
    "elu": (lambda x, alpha: np.where(x > 0, x, np.asarray(alpha, x.dtype) * np.expm1(x)), {"alpha": 1.0}),
    "celu": (lambda x, alpha: np.maximum(x, 0) + np.minimum(0, np.asarray(alpha, x.dtype) * np.expm1(x / np.asarray(alpha, x.dtype))), {"alpha": 1.0}),
    "selu": (lambda x, alpha, gamma: np.asarray(gamma, x.dtype) * np.where(x > 0, x, np.asarray(alpha, x.dtype) * np.expm1(x)),
             {"alpha": 1.6732632423543772, "gamma": 1.0507009873554805}),
    "thresholded_relu": (lambda x, alpha: np.where(x > alpha, x, np.zeros((), x.dtype)), {"alpha": 1.0}),
    "hard_sigmoid": (lambda x, alpha, beta: np.clip(x * np.asarray(alpha, x.dtype) + np.asarray(beta, x.dtype), 0, 1).astype(x.dtype),
                     {"alpha": 0.2, "beta": 0.5}),
    "hard_swish": (lambda x: (x * np.clip(x / np.asarray(6, x.dtype) + np.asarray(0.5, x.dtype), 0, 1)).astype(x.dtype), {}),
    "gelu": (_gelu, {"approximate": "none"}),
    "shrink": (lambda x, bias, lambd: np.where(x < -lambd, x + np.asarray(bias, x.dtype),
                                               np.where(x > lambd, x - np.asarray(bias, x.dtype), np.zeros((), x.dtype))).astype(x.dtype),
               {"bias": 0.0, "lambd": 0.5}),
}


def _div(a, b):
    """Integer division truncates toward zero as C and ONNX do (numpy floors); x/0 gives 0."""
    if a.dtype.kind not in "iu":
        return np.divide(a, b)
    a, b = np.broadcast_arrays(a, b)
    safe = np.where(b == 0, 1, b).astype(a.dtype)
    with np.errstate(over="ignore"):  # MIN // -1 wraps to MIN, as two's complement does
        q = np.floor_divide(a, safe)  # (not |a| // |b|: |MIN| is MIN)
        inexact = (a - q * safe) != 0
    if a.dtype.kind == "i":
        q = np.where(inexact & ((a < 0) ^ (safe < 0)), q + 1, q)
    return np.where(b == 0, 0, q).astype(a.dtype)


def _pow(a, b):
    if a.dtype.kind == "f":
        return np.power(a, b.astype(a.dtype))
    return np.power(a.astype(np.float64), b.astype(np.float64)).astype(a.dtype)


def _mod(a, b, fmod=0):
    """fmod=1: C's fmod (sign of the dividend); fmod=0: Python's mod (sign of the divisor)."""
    return np.fmod(a, b) if fmod else np.mod(a, b)


def _bitshift(a, b, direction):
    return np.left_shift(a, b) if direction == "LEFT" else np.right_shift(a, b)


# name -> reference for ops z = f(x, y) with broadcasting, same dtype in and out.
BINARY = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": _div,
    "pow": _pow,
    "prelu": lambda x, slope: np.where(x >= 0, x, x * slope).astype(x.dtype),
    "bitwise_and": np.bitwise_and,
    "bitwise_or": np.bitwise_or,
    "bitwise_xor": np.bitwise_xor,
}

# name -> reference for comparisons and logic: the output is bool.
COMPARE = {
    "equal": np.equal,
    "less": np.less,
    "less_equal": np.less_equal,
    "greater": np.greater,
    "greater_equal": np.greater_equal,
    "and": np.logical_and,
    "or": np.logical_or,
    "xor": np.logical_xor,
}


def _register_tables() -> None:
    for name, fn in UNARY.items():
        register_op(name, reference=fn, infer=same_as_input(0), fusion=EW, num_inputs=1)
    for name, (fn, attrs) in UNARY_WITH_ATTRS.items():
        register_op(name, reference=fn, infer=same_as_input(0), fusion=EW, num_inputs=1, attrs=attrs)
    for name, fn in BINARY.items():  # (pow alone lets base and exponent differ, as in ONNX)
        register_op(name, reference=fn, infer=broadcast_infer(same_dtype=name != "pow"),
                    fusion=BC, num_inputs=2)
    for name, fn in COMPARE.items():
        register_op(name, reference=fn, infer=broadcast_infer(dtypes.bool, same_dtype=True),
                    fusion=BC, num_inputs=2)


_register_tables()

register_op("mod", reference=_mod, infer=broadcast_infer(same_dtype=True), fusion=BC,
            num_inputs=2, attrs={"fmod": 0})
register_op("bit_shift", reference=_bitshift, infer=broadcast_infer(same_dtype=True),
            fusion=BC, num_inputs=2, attrs={"direction": REQUIRED})
register_op("not", reference=np.logical_not, infer=same_as_input(0), fusion=EW, num_inputs=1)
register_op("isnan", reference=np.isnan, infer=lambda c: c[0].with_dtype(dtypes.bool),
            fusion=EW, num_inputs=1)
register_op("isinf", reference=lambda x, detect_negative=1, detect_positive=1:
            (np.isinf(x) & ((x > 0) & bool(detect_positive) | (x < 0) & bool(detect_negative))),
            infer=lambda c: c[0].with_dtype(dtypes.bool), fusion=EW, num_inputs=1,
            attrs={"detect_negative": 1, "detect_positive": 1})
register_op("identity", reference=lambda x: x.copy(), infer=same_as_input(0), fusion=EW, num_inputs=1)


def _infer_cast(ctx: InferContext) -> TensorType:
    to = ctx.attrs["to"]
    if not isinstance(to, DType):  # e.g. to="f32" in IR text: a string, not a dtype
        ctx.fail(f"attribute to={to!r} is not a dtype (write to=f32, unquoted)")
    return ctx[0].with_dtype(to)


def _cast(x, to, saturate=1):
    if to.is_float or x.dtype.kind != "f" or to == dtypes.bool:  # (to bool: x != 0, no trunc)
        return x.astype(to.numpy)
    # float -> int: C-like truncation; NaN/out-of-range is undefined in ONNX, keep numpy's.
    with np.errstate(all="ignore"):
        return np.trunc(x).astype(to.numpy)


register_op("cast", reference=_cast, infer=_infer_cast, fusion=EW, num_inputs=1,
            attrs={"to": REQUIRED, "saturate": 1})


def _clip(x, lo=None, hi=None):
    out = x
    if lo is not None:
        out = np.maximum(out, lo.astype(x.dtype))
    if hi is not None:
        out = np.minimum(out, hi.astype(x.dtype))
    return np.array(out, dtype=x.dtype)


register_op("clip", reference=_clip, infer=same_as_input(0), fusion=BC, num_inputs=(1, 3),
            doc="clip(x, min?, max?): bounds are optional scalar inputs")


def _where(cond, a, b):
    return np.where(cond, a, b)


register_op("where", reference=_where, infer=broadcast_infer(dtype_from=1, same_dtype=True),
            fusion=BC, num_inputs=3)


def _variadic(fn):
    def reference(*xs):
        out = xs[0]
        for x in xs[1:]:
            out = fn(out, x)
        return np.array(out, dtype=xs[0].dtype)

    return reference


_SAME = broadcast_infer(same_dtype=True)


def _mean(*xs):
    return (_variadic(np.add)(*xs) / np.asarray(len(xs), xs[0].dtype)).astype(xs[0].dtype)


register_op("max", reference=_variadic(np.maximum), infer=_SAME, fusion=BC, num_inputs=(1, None))
register_op("min", reference=_variadic(np.minimum), infer=_SAME, fusion=BC, num_inputs=(1, None))
register_op("sum", reference=_variadic(np.add), infer=_SAME, fusion=BC, num_inputs=(1, None))
register_op("mean", reference=_mean, infer=_SAME, fusion=BC, num_inputs=(1, None))
