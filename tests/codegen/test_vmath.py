"""The vector exp/tanh/erf stay within their stated ulp bounds (codegen/cpu/vmath.py).

A random sample of all float32 bit patterns plus dense sweeps of the ranges where the
approximations switch or saturate, plus every special value; `python -m
tests.codegen.vmath_accuracy exp tanh erf` sweeps all 2^32 inputs.
"""

import numpy as np
import pytest

from .vmath_accuracy import measure

BOUNDS = {"exp": 1, "tanh": 2, "erf": 8, "sigmoid": 2}
SPECIAL = np.array([0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0, 0x80000000, 1, 0x80000001,
                    0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF], np.uint64)


def inputs():
    rng = np.random.default_rng(0)
    dense = np.arange(0x3C000000, 0x42E00000, 97, dtype=np.uint64)  # |x| in [2^-7, 112]
    return np.concatenate([rng.integers(0, 2**32, 1 << 20, dtype=np.uint64), dense,
                           dense | 0x80000000, SPECIAL])


def _targets() -> list:
    """The host, and x86-64-v3 where the host has AVX-512 and runs it: both forms of exp and
    sigmoid (vscalefps, or 2^n built from n's bits) are held to the bounds."""
    from slimc.codegen.cpu.target import CpuTarget

    out = ["x86"]
    v3 = CpuTarget.from_name("x86-64-v3")
    if CpuTarget.from_name("x86").has_avx512f and v3.is_host:
        out.append("x86-64-v3")
    return out


@pytest.mark.parametrize("target", _targets())
@pytest.mark.parametrize("op", sorted(BOUNDS))
def test_ulp_bound(op, target):
    worst, where = measure(op, inputs(), target)
    assert worst <= BOUNDS[op], f"{op}: {worst} ulp at x={where!r}"


def test_special_values():
    import slimc
    from slimc.ir import Graph, TensorType, dtypes

    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 100.0, -200.0], np.float32)
    expected = {"exp": [np.nan, np.inf, 0.0, 1.0, 1.0, np.inf, 0.0],
                "sigmoid": [np.nan, 1.0, 0.0, 0.5, 0.5, 1.0, 0.0],
                "tanh": [np.nan, 1.0, -1.0, 0.0, -0.0, 1.0, -1.0],
                "erf": [np.nan, 1.0, -1.0, 0.0, -0.0, 1.0, -1.0]}
    for op, want in expected.items():
        g = Graph(op)
        v = g.add_input("x", TensorType(dtypes.f32, x.shape))
        g.outputs = [g.make_node(op, [v], output_types=[v.type]).outputs[0]]
        got = slimc.compile(g, denormals="keep")(x)[0]
        np.testing.assert_array_equal(got, np.array(want, np.float32), err_msg=op)
        assert np.signbit(got[4]) == (op in ("tanh", "erf"))  # tanh(-0) and erf(-0) are -0


def test_sigmoid_below_its_domain_is_tiny():
    """Below -88.3 the true sigmoid is a denormal; the kernel's 0 is within 4e-39 of it."""
    from .vmath_accuracy import _module

    x = -np.geomspace(88.3, 3e38, 4097).astype(np.float32)
    got = _module("sigmoid", x.size)(x)[0]
    with np.errstate(over="ignore"):
        want = 1.0 / (1.0 + np.exp(-x.astype(np.float64)))
    assert np.all(got >= 0) and np.abs(got - want).max() < 4e-39
