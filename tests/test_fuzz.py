"""Differential fuzzing: random graphs compiled to native code against the interpreter.

The default profile runs a few dozen examples in CI; ``HYPOTHESIS_PROFILE=fuzz`` runs
thousands (the run before closing a conformance issue; ``SLIMC_FUZZ_EXAMPLES=N`` sets how many). Every bug found here becomes a
regression test below the fuzz test.
"""

import os

import numpy as np
from hypothesis import HealthCheck, given, settings

import slimc
from slimc.ir import interpret, verify

from .graph_gen import mixed_graphs

settings.register_profile("fuzz", max_examples=int(os.environ.get("SLIMC_FUZZ_EXAMPLES", 3000)),
                          deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("ci", max_examples=30, deadline=None,
                          suppress_health_check=list(HealthCheck))
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _inputs(g):
    rng = np.random.default_rng(0)
    return [rng.uniform(-3, 3, v.type.shape).astype(np.float32) for v in g.inputs]


@given(mixed_graphs())
def test_compiled_equals_interpreter(g):
    verify(g)
    xs = _inputs(g)
    expected = interpret(g, *xs)
    for threads in (1, 2):
        got = slimc.compile(g, threads=threads)(*xs)
        for a, e in zip(got, expected):
            assert a.shape == e.shape
            np.testing.assert_allclose(a, e, rtol=2e-4, atol=2e-4, equal_nan=True)
