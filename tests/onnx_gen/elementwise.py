"""Op families of the fuzzer's models: elementwise math, comparisons and logic, casts,
reductions and the softmax family."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st
from onnx import helper

from .builder import (BOOL, F16, F32, F64, FLOATS, I32, I64, MAX_BOUND, MAX_ELEMS, Builder, axes_input,
                      broadcast, numel, power)


KEEP, NEEDS_EXACT, SMOOTH = "keep", "needs_exact", "smooth"


# op -> (result bound from the input bound, exactness rule, largest input bound, attributes)
FLOAT_UNARY = {
    "Relu": (lambda b: b, KEEP, None, {}), "Neg": (lambda b: b, KEEP, None, {}),
    "Abs": (lambda b: b, KEEP, None, {}), "Identity": (lambda b: b, KEEP, None, {}),
    "Floor": (lambda b: b + 1, NEEDS_EXACT, None, {}), "Ceil": (lambda b: b + 1, NEEDS_EXACT, None, {}),
    "Round": (lambda b: b + 1, NEEDS_EXACT, None, {}), "Sign": (lambda b: 1, NEEDS_EXACT, None, {}),
    "Tanh": (lambda b: 1, SMOOTH, None, {}), "Sigmoid": (lambda b: 1, SMOOTH, None, {}),
    "Erf": (lambda b: 1, SMOOTH, None, {}), "Softsign": (lambda b: 1, SMOOTH, None, {}),
    "Sin": (lambda b: 1, SMOOTH, 100, {}), "Cos": (lambda b: 1, SMOOTH, 100, {}),
    "Exp": (math.exp, SMOOTH, 8, {}), "Softplus": (lambda b: b + 1, SMOOTH, None, {}),
    "Elu": (lambda b: b + 1, SMOOTH, None, {}), "Selu": (lambda b: 1.06 * b + 1.8, SMOOTH, None, {}),
    "HardSigmoid": (lambda b: 1, SMOOTH, None, {}), "HardSwish": (lambda b: max(b, 1), SMOOTH, None, {}),
    "LeakyRelu": (lambda b: b, SMOOTH, None, {"alpha": 0.1}),
    # sqrt's slope is unbounded at 0: only on exact values (made non-negative first)
    "Sqrt": (math.sqrt, NEEDS_EXACT, None, {}),
}


INT_UNARY = {"Neg": lambda b: b, "Abs": lambda b: b, "Sign": lambda b: 1, "Identity": lambda b: b}


def op_unary(b: Builder):
    v = b.pick(lambda v: v.dtype != BOOL)
    if v is None:
        return
    if v.dtype.kind == "i":
        op = b.choice(INT_UNARY)
        return b.emit1(op, [v], v.dtype, v.shape, INT_UNARY[op](v.bound), True)
    op = b.choice(FLOAT_UNARY)
    bound, rule, max_in, attrs = FLOAT_UNARY[op]
    if (rule == NEEDS_EXACT and not v.exact) or (max_in is not None and v.bound > max_in):
        return
    if op == "Sqrt":
        v = b.emit1("Abs", [v], v.dtype, v.shape, v.bound, v.exact)
        if v is None:
            return
    exact = v.exact and rule != SMOOTH and op != "Sqrt"
    return b.emit1(op, [v], v.dtype, v.shape, bound(v.bound), exact, **attrs)


def _nonzero_divisor(b: Builder, dtype, shape):
    rng = b.rng
    if dtype.kind == "i":
        mag = rng.integers(1, 5, shape)
    else:  # quarters in [0.5, 2]: exact, away from zero
        mag = rng.integers(2, 9, shape) / 4
    return b.const((mag * rng.choice([-1, 1], shape)).astype(dtype))


def op_binary(b: Builder):
    v = b.pick(lambda v: v.dtype != BOOL)
    if v is None:
        return
    is_int = v.dtype.kind == "i"
    ops = ["Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Mod"]
    ops += ["BitwiseAnd", "BitwiseOr", "BitwiseXor"] if is_int else ["PRelu"]
    op = b.choice(ops)
    attrs = {}
    if op in ("Div", "Mod"):
        if op == "Mod" and not (v.exact or is_int):
            return
        w = _nonzero_divisor(b, v.dtype, b.broadcast_partner(v.shape))
        if op == "Mod":
            attrs["fmod"] = 1 if not is_int else b.choice([0, 1])  # float Mod needs fmod=1
    elif op == "Pow":
        w = b.const(np.asarray(b.choice([2, 3]), v.dtype))
    elif op == "PRelu":  # the slope broadcasts to x (unidirectionally)
        s = tuple(d if b.one_in(2) else 1 for d in v.shape[len(v.shape) - b.draw(st.integers(0, len(v.shape))):])
        w = b.const(b.rng.uniform(-1, 1, s).astype(v.dtype))
    else:
        w = b.partner(v)
    if op not in ("Div", "Mod", "Pow", "PRelu") and b.one_in(3):
        v, w = w, v  # the constant or new operand first
    shape = broadcast(v.shape, w.shape)
    if shape is None:
        return
    b1, b2 = v.bound, w.bound
    bound = {"Add": b1 + b2, "Sub": b1 + b2, "Mul": b1 * b2, "Max": max(b1, b2),
             "Min": max(b1, b2), "Div": b1 / (0.5 if not is_int else 1),
             "Pow": power(b1, w.bound), "Mod": b2, "PRelu": b1,
             }.get(op, 2 * max(b1, b2) + 1)
    exact = is_int or (op in ("Max", "Min", "Mod") and v.exact and w.exact)
    return b.emit1(op, [v, w], v.dtype, shape, bound, exact, **attrs)


def op_compare(b: Builder):
    v = b.pick(lambda v: v.exact and v.dtype != BOOL)
    if v is None:
        return
    op = b.choice(["Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual"])
    w = b.partner(v, exact=True)
    shape = broadcast(v.shape, w.shape)
    return shape is not None and b.emit1(op, [v, w], BOOL, shape, 1, True)


def op_logic(b: Builder):
    v = b.pick(lambda v: v.dtype == BOOL)
    if v is None:
        return
    op = b.choice(["Not", "And", "Or", "Xor"])
    if op == "Not":
        return b.emit1(op, [v], BOOL, v.shape, 1, True)
    w = b.partner(v)
    shape = broadcast(v.shape, w.shape)
    return shape is not None and b.emit1(op, [v, w], BOOL, shape, 1, True)


def op_where(b: Builder):
    v = b.pick(lambda v: v.dtype != BOOL)
    if v is None:
        return
    c = b.pick(lambda c: c.dtype == BOOL and (s := broadcast(c.shape, v.shape)) is not None
               and numel(s) <= MAX_ELEMS)
    if c is None or b.one_in(4):
        c = b.const(b.data(BOOL, b.broadcast_partner(v.shape))[0])
    w = b.partner(v)
    shape = broadcast(c.shape, v.shape, w.shape)
    return shape is not None and b.emit1("Where", [c, v, w], v.dtype, shape,
                                         max(v.bound, w.bound), v.exact and w.exact)


def op_cast(b: Builder):
    v = b.pick()
    if v is None:
        return
    if v.dtype == BOOL:
        to = [F32, F16, F64, I32, I64]
    elif v.dtype.kind == "i":
        to = [t for t in (I32, I64) if t != v.dtype] + [BOOL]
        to += [F32, F64] if v.bound < 2**24 else []
        to += [F16] if v.bound < 2048 else []
    else:  # float -> int and bool are discontinuous: exact values only
        to = [t for t in FLOATS if t != v.dtype and (t != F16 or v.bound < 60000)]
        to += ([BOOL] + ([] if v.special else [I32, I64])) if v.exact else []  # NaN -> int: UB
    t = b.choice(to)
    bound = 1 if t == BOOL else v.bound
    return b.emit1("Cast", [v], t, v.shape, bound, v.exact, to=int(helper.np_dtype_to_tensor_dtype(t)))


def op_clip(b: Builder):
    v = b.pick(lambda v: v.dtype != BOOL)
    if v is None:
        return
    lo, hi = b.choice([-1, -2, 0, None]), b.choice([1, 2, 0, None])  # lo > hi happens: all hi
    ins = [v] + [None if x is None else b.const(np.asarray(x, v.dtype)) for x in (lo, hi)]
    while ins[-1] is None:
        ins.pop()
    return b.emit1("Clip", ins, v.dtype, v.shape, v.bound, v.exact)


def op_variadic(b: Builder):
    v = b.pick(lambda v: v.dtype != BOOL)
    if v is None:
        return
    op = b.choice(["Sum", "Max", "Min", "Mean"] if v.dtype.kind == "f" else ["Max", "Min"])
    ins = [v] + [b.partner(v) for _ in range(b.draw(st.integers(0, 2)))]
    shape = broadcast(*(i.shape for i in ins))
    if shape is None:
        return
    bound = sum(i.bound for i in ins) if op == "Sum" else max(i.bound for i in ins)
    exact = all(i.exact for i in ins) and (op in ("Max", "Min") or v.dtype.kind == "i" or len(ins) == 1)
    return b.emit1(op, ins, v.dtype, shape, bound, exact)


REDUCE = {  # op -> (bound from input bound and reduced count, dtypes, exact for exact input)
    "ReduceSum": (lambda x, n: x * n, "fi", False), "ReduceMean": (lambda x, n: x, "f", False),
    "ReduceMax": (lambda x, n: x, "fi", True), "ReduceMin": (lambda x, n: x, "fi", True),
    "ReduceProd": (power, "fi", False),
    "ReduceSumSquare": (lambda x, n: x * x * n, "f", False), "ReduceL1": (lambda x, n: x * n, "f", False),
    "ReduceL2": (lambda x, n: x * math.sqrt(n), "f", False),
    "ReduceLogSumExp": (lambda x, n: x + math.log(max(n, 1)) + 1, "f", False),
}


def op_reduce(b: Builder):
    v = b.pick(lambda v: v.dtype != BOOL)
    if v is None:
        return
    op = b.choice([o for o, (_, kinds, _) in REDUCE.items() if v.dtype.kind in kinds])
    bound_fn, _, keeps_exact = REDUCE[op]
    r = len(v.shape)
    axes = sorted(b.draw(st.sets(st.integers(0, r - 1), max_size=r))) if r else []
    keepdims = b.choice([1, 0])
    ins, attrs = [v], {"keepdims": keepdims}
    if axes:
        ins.append(axes_input(b, axes, r))
    elif b.one_in(4):
        attrs["noop_with_empty_axes"] = 1  # no axes: the identity
    if not axes and "noop_with_empty_axes" not in attrs:
        axes = list(range(r))  # no axes: reduce all
    n = numel([v.shape[a] for a in axes])
    shape = tuple(1 if a in axes else d for a, d in enumerate(v.shape) if keepdims or a not in axes)
    bound = bound_fn(v.bound, max(n, 1)) if axes else v.bound
    if op == "ReduceProd" and bound > MAX_BOUND:
        return
    exact = v.exact and (keeps_exact or v.dtype.kind == "i" or not axes)
    return b.emit1(op, ins, v.dtype, shape, bound, exact, **attrs)


def op_arg(b: Builder):
    v = b.pick(lambda v: v.exact and v.dtype != BOOL and any(v.shape))
    if v is None:
        return
    axis = b.choice([a for a, d in enumerate(v.shape) if d > 0])
    keepdims = b.choice([1, 0])
    shape = tuple(1 if a == axis else d for a, d in enumerate(v.shape) if keepdims or a != axis)
    return b.emit1(b.choice(["ArgMax", "ArgMin"]), [v], I64, shape, v.shape[axis], True,
                   axis=axis - len(v.shape) if b.one_in(3) else axis, keepdims=keepdims,
                   select_last_index=b.choice([0, 1]))


def op_softmax(b: Builder):
    v = b.pick(lambda v: v.dtype in FLOATS and v.shape)
    if v is None:
        return
    r = len(v.shape)
    axis = b.draw(st.integers(-r, r - 1))
    op = b.choice(["Softmax", "LogSoftmax"])
    bound = 1 if op == "Softmax" else 2 * v.bound + math.log(max(v.shape[axis], 1)) + 1
    return b.emit1(op, [v], v.dtype, v.shape, bound, False, axis=axis)


def op_hardmax(b: Builder):
    v = b.pick(lambda v: v.dtype in FLOATS and v.exact and v.shape)
    if v is None:
        return
    axis = b.draw(st.integers(-len(v.shape), len(v.shape) - 1))
    return b.emit1("Hardmax", [v], v.dtype, v.shape, 1, True, axis=axis)


def op_cumsum(b: Builder):
    v = b.pick(lambda v: v.dtype != BOOL and v.shape)
    if v is None:
        return
    r = len(v.shape)
    axis = b.draw(st.integers(-r, r - 1))
    ax = b.const(np.asarray(axis, b.choice([np.int64, np.int32])))
    return b.emit1("CumSum", [v, ax], v.dtype, v.shape, v.bound * max(v.shape[axis], 1),
                   v.dtype.kind == "i", exclusive=b.choice([0, 1]), reverse=b.choice([0, 1]))


def op_topk(b: Builder):
    v = b.pick(lambda v: v.exact and v.dtype != BOOL and v.shape)
    if v is None:
        return
    axis = b.draw(st.integers(0, len(v.shape) - 1))
    k = b.draw(st.integers(0, v.shape[axis]))
    shape = v.shape[:axis] + (k,) + v.shape[axis + 1:]
    return b.emit("TopK", [v, b.ints([k])], [(v.dtype, shape, v.bound, True),
                                              (I64, shape, v.shape[axis], True)],
                  axis=axis, largest=b.choice([1, 0]), sorted=1)
