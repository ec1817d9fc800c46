"""The builder under the fuzzer's ONNX models: values with what the comparison needs to know
about them, and a `Builder` that draws operands and appends ONNX nodes.

Each value carries:

* `bound`: every element's magnitude is at most this. Ops whose result could pass MAX_BOUND are
  not drawn, so no graph walks off a cliff (overflow to inf, int wrap-around), and the absolute
  tolerance of a float output scales with its bound.
* `exact`: every correct implementation gives the same bits (inputs, constants, and what
  sign/abs/max/views/casts/comparisons make of exact values). Ops that are discontinuous
  (floor, round, sign, comparisons, float->int casts, argmax, mod) are drawn on exact values
  only: on a value computed with a different rounding (fast-math, FMA, vector exp) a legal
  1-ulp difference would flip them and the fuzzer would report noise.
* `half`: inexact and rounded to float16 on the way (compared with float16's tolerance).
* `special`: may hold NaN, +-Inf or -0.0 (some examples' float inputs do).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import onnx
import onnx.printer
from hypothesis import strategies as st
from onnx import helper, numpy_helper

OPSET = 18
MAX_ELEMS = 1 << 14  # largest tensor drawn
MAX_BOUND = 1e5
MAX_RANK = 6
F32, F16, F64, I32, I64, BOOL = (np.dtype(t) for t in (np.float32, np.float16, np.float64, np.int32,
                                                        np.int64, np.bool_))
FLOATS, INTS = (F32, F16, F64), (I32, I64)
# Sizes, simplest first (hypothesis shrinks toward the front): small, odd and prime (7, 13, 17,
# 31, 61, 67: no vector width divides them), powers of two (vector-aligned).
DIMS = [1, 2, 3, 4, 5, 7, 8, 13, 16, 17, 31, 61, 67]
SMALL_DIMS = [1, 2, 3, 4, 5, 7]  # for ranks 4 and up


@dataclass
class Val:
    name: str
    dtype: np.dtype
    shape: tuple
    bound: float
    exact: bool
    half: bool = False  # inexact, and rounded to float16 on the way (the tolerance is f16's)
    special: bool = False  # may hold NaN, +-Inf or -0.0 (bound is then the finite values')


@dataclass
class FuzzCase:
    """A drawn model, the inputs to call it with, and what is known about each output."""

    model: onnx.ModelProto
    inputs: dict
    outputs: list  # Val per graph output, in order

    def tolerance(self, i: int):
        """(rtol, atol) for output i, or None where the bits must match."""
        v = self.outputs[i]
        if v.exact or v.dtype.kind != "f":
            return None
        scale = max(1.0, v.bound)
        return (2e-2, 2e-2 * scale) if v.half else (1e-3, 1e-4 * scale)

    def __repr__(self) -> str:  # what hypothesis prints for a failing example: a repro
        with np.printoptions(threshold=200, precision=8):
            arrays = "\n".join(f"  {k}: {v.dtype}{list(v.shape)} = {np.array2string(v, separator=',')}"
                               for k, v in self.inputs.items())
        return f"FuzzCase(\n{onnx.printer.to_text(self.model)}\ninputs:\n{arrays}\n)"

    def _repr_pretty_(self, printer, cycle) -> None:  # hypothesis's printer uses this
        printer.text(repr(self))


def power(x: float, n: float) -> float:
    return x ** n if x <= 1 or n * math.log(x) < 40 else math.inf


def numel(shape) -> int:
    return int(np.prod(shape, dtype=np.int64))


def broadcast(*shapes):
    try:
        return tuple(np.broadcast_shapes(*shapes))
    except ValueError:
        return None


def matmul_shape(a, b):
    if not a or not b:
        return None
    a2 = (1,) + tuple(a) if len(a) == 1 else tuple(a)
    b2 = tuple(b) + (1,) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        return None
    batch = broadcast(a2[:-2], b2[:-2])
    if batch is None:
        return None
    return batch + (() if len(a) == 1 else (a2[-2],)) + (() if len(b) == 1 else (b2[-1],))


# Ops whose answer on NaN is not agreed on (max/min: IEEE 754-2019 has both a NaN-propagating
# maximum and maximumNumber; argmax/topk order NaN nowhere), or whose usual algorithm turns
# +-Inf into NaN (logsumexp and softmax subtract the max: inf - inf; Resize's interpolation
# weighs a neighbour by 0, and a + w * (b - a) gives NaN where (1 - w) * a + w * b gives inf:
# onnxruntime skips such taps, onnx.reference even turns inf into FLT_MAX): not drawn on such
# values.
NAN_AMBIGUOUS = {"Max", "Min", "Relu", "Clip", "MaxPool", "GlobalMaxPool", "ReduceMax", "ReduceMin",
                 "ArgMax", "ArgMin", "TopK", "Hardmax", "HardSigmoid", "HardSwish",
                 "ReduceLogSumExp", "Softmax", "LogSoftmax", "Resize"}


class Builder:
    def __init__(self, draw):
        self.draw = draw
        self.rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
        self.nodes, self.initializers, self.inputs, self.input_vals = [], [], {}, []
        self.values: list[Val] = []  # operands later nodes may use
        self.consts: list[Val] = []  # initializers
        self.count = 0
        self.specials = self.one_in(8)  # float inputs hold NaN, +-Inf and -0.0 too

    # --- drawing ---
    def choice(self, seq):
        return self.draw(st.sampled_from(list(seq)))

    def one_in(self, n: int) -> bool:
        return self.draw(st.integers(0, n - 1)) == n - 1  # shrinks toward False

    def pick(self, pred=lambda v: True):
        cands = [v for v in self.values if pred(v)]
        return self.choice(cands) if cands else None

    def shape(self) -> tuple:
        if self.one_in(5):  # image-like (N, C, spatial...), so that conv and pool get drawn
            dims = [self.choice([1, 2] if i == 0 else [1, 3, 4, 8, 16] if i == 1 else [1, 5, 7, 8, 13])
                    for i in range(self.choice([4, 3, 5]))]
        else:
            rank = self.choice([1, 2, 3, 0, 4, 5, 6])
            dims = [self.choice(DIMS if rank <= 3 else SMALL_DIMS) for _ in range(rank)]
        rank = len(dims)
        while numel(dims) > MAX_ELEMS // 4:
            dims[int(np.argmax(dims))] //= 2
        if rank and self.one_in(10):
            dims[self.draw(st.integers(0, rank - 1))] = 0
        return tuple(dims)

    def broadcast_partner(self, shape) -> tuple:
        """A shape that broadcasts with `shape`: a suffix of it, dims set to 1, ones widened,
        sometimes a new leading dim (then the result grows)."""
        r = len(shape)
        keep = self.draw(st.integers(0, r))
        out = []
        for d in shape[r - keep:]:
            how = self.choice(["same", "one", "widen"])
            out.append(1 if how == "one" else self.choice([2, 3]) if how == "widen" and d == 1 else d)
        if keep == r and r < MAX_RANK and self.one_in(6):
            out.insert(0, self.choice([2, 3]))
        return tuple(out)

    # --- data ---
    def data(self, dtype, shape, const: bool = False):
        """(array, bound). Float inputs are half the time on a grid of quarters, so that
        comparisons, max, round and argmax meet ties."""
        rng, lim = self.rng, 2.0 if const else 3.0
        if dtype == BOOL:
            arr, bound = rng.random(shape) < 0.5, 1.0
        elif dtype.kind == "i":
            arr, bound = rng.integers(-5, 6, shape), 5.0
        elif rng.random() < 0.5:
            arr, bound = rng.integers(-4 * lim, 4 * lim + 1, shape) / 4, lim
        else:
            arr, bound = rng.uniform(-lim, lim, shape), lim
        return np.asarray(arr).astype(dtype), bound

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def input(self, dtype, shape, data=None) -> Val:
        arr, bound = (data, float(np.abs(data).max(initial=0))) if data is not None else \
            self.data(dtype, shape)
        special = False
        if self.specials and arr.dtype.kind == "f" and arr.size:
            flat = arr.reshape(-1)
            at = self.rng.random(flat.size) < 0.2
            flat[at] = self.rng.choice(np.array([np.nan, np.inf, -np.inf, -0.0], arr.dtype), int(at.sum()))
            special = bool(at.any())
        v = Val(self.name("x"), np.dtype(dtype), tuple(shape), bound, True, special=special)
        self.inputs[v.name] = arr
        self.input_vals.append(v)
        self.values.append(v)
        return v

    def const(self, arr) -> Val:
        arr = np.asarray(arr)
        name = self.name("c")
        self.initializers.append(numpy_helper.from_array(arr, name))
        bound = float(np.abs(arr.astype(np.float64)).max(initial=0)) if arr.dtype != BOOL else 1.0
        self.consts.append(Val(name, arr.dtype, arr.shape, bound, True))
        return self.consts[-1]

    def ints(self, values) -> Val:
        return self.const(np.asarray(values, np.int64))

    def operand(self, dtype, shape) -> Val:
        """A second operand: a new graph input (so nothing folds) or a constant."""
        if len(self.inputs) < 3 and self.one_in(4):
            return self.input(dtype, shape)
        return self.const(self.data(dtype, shape, const=True)[0])

    def partner(self, v: Val, exact: bool = False) -> Val:
        """A value of v's dtype that broadcasts with v: an existing one or a new operand."""
        w = self.pick(lambda w: w.dtype == v.dtype and (w.exact or not exact) and
                      (s := broadcast(v.shape, w.shape)) is not None and numel(s) <= MAX_ELEMS)
        if w is not None and not self.one_in(3):
            return w
        return self.operand(v.dtype, self.broadcast_partner(v.shape))

    # --- nodes ---
    def emit(self, op: str, ins, outs, **attrs):
        """outs: (dtype, shape, bound, exact) per output. None (nothing added) when a result
        would be too large."""
        for dtype, shape, bound, _ in outs:
            if numel(shape) > MAX_ELEMS or not bound <= MAX_BOUND or len(shape) > MAX_RANK:
                return None
        special = any(i is not None and i.special for i in ins)
        if special and op in NAN_AMBIGUOUS:
            return None
        names = [self.name("t") for _ in outs]
        self.nodes.append(helper.make_node(op, [i.name if i is not None else "" for i in ins],
                                           names, name=f"{op}_{names[0]}", **attrs))
        half_in = any(i is not None and i.half for i in ins)
        vals = [Val(n, np.dtype(d), tuple(s), float(b), bool(e), not e and (half_in or d == F16),
                    special and np.dtype(d).kind == "f") for n, (d, s, b, e) in zip(names, outs)]
        self.values.extend(vals)
        return vals

    def emit1(self, op, ins, dtype, shape, bound, exact, **attrs):
        out = self.emit(op, ins, [(dtype, shape, bound, exact)], **attrs)
        return out and out[0]


def axes_input(b: Builder, axes, rank):
    """axes as an int64 constant, each index sometimes negative, in a drawn order."""
    axes = [a - rank if b.one_in(3) else a for a in axes]
    return b.ints(b.draw(st.permutations(axes)))
