"""Accuracy of slimc's vector exp/tanh/erf against float64 references, in ulp of float32.

`measure(op, bits)` compiles the op for the host, runs it on the float32 values with the given
bit patterns and returns the largest ulp distance from the float64 result rounded to float32
(NaN must map to NaN, Inf to Inf). `python -m tests.codegen.vmath_accuracy` sweeps all 2^32
inputs in chunks (about a minute per function on one core).
"""

from __future__ import annotations

import math
import sys

import numpy as np

import slimc
from slimc.ir import Graph, TensorType, dtypes

_erf64 = np.vectorize(math.erf, otypes=[np.float64])
REFERENCES = {"exp": np.exp, "tanh": np.tanh, "erf": lambda x: _erf64(x),
              "sigmoid": lambda x: 1.0 / (1.0 + np.exp(-x))}
# Inputs below which an op's bound is not claimed (sigmoid: the true value is a denormal, the
# kernel gives 0 as float32 arithmetic does; checked separately in test_vmath.py).
DOMAIN_MIN = {"sigmoid": -88.3}


def _ordered(bits: np.ndarray) -> np.ndarray:
    i = bits.view(np.int32).astype(np.int64)
    return np.where(i < 0, -(2**31) - i, i)


def ulp_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.abs(_ordered(a) - _ordered(b))
    both_nan = np.isnan(a) & np.isnan(b)
    return np.where(both_nan, 0, np.where(np.isnan(a) | np.isnan(b), 2**40, d))


_modules: dict = {}


def _module(op: str, n: int, target: str = "x86"):
    key = (op, n, target)
    if key not in _modules:
        g = Graph(op)
        x = g.add_input("x", TensorType(dtypes.f32, (n,)))
        g.outputs = [g.make_node(op, [x], output_types=[x.type]).outputs[0]]
        _modules[key] = slimc.compile(g, threads=1, denormals="keep", target=target)
    return _modules[key]


def measure(op: str, bits: np.ndarray, target: str = "x86") -> tuple[int, float]:
    """(max ulp, the input where it happens), compiled for `target` (the host by default;
    "x86-64-v3" on an AVX-512 host checks the forms without AVX-512's vscalefps)."""
    x = bits.astype(np.uint32).view(np.float32)
    got = _module(op, x.size, target)(x)[0]
    with np.errstate(all="ignore"):
        ref = REFERENCES[op](x.astype(np.float64)).astype(np.float32)
    d = ulp_distance(got, ref)
    if op in DOMAIN_MIN:
        d = np.where(x < DOMAIN_MIN[op], 0, d)
    i = int(np.argmax(d))
    return int(d[i]), float(x[i])


def sweep(op: str, chunk: int = 1 << 24) -> tuple[int, float]:
    worst = (0, 0.0)
    for start in range(0, 1 << 32, chunk):
        bits = np.arange(start, start + chunk, dtype=np.uint64)
        worst = max(worst, measure(op, bits))
    return worst


if __name__ == "__main__":
    for name in sys.argv[1:] or ["exp", "tanh"]:
        print(name, "max ulp %d at x=%r" % sweep(name))
