"""Shared by the CUDA backend's tests: compile a graph for the GPU, assemble its PTX with
ptxas for sm_80 and sm_90 (where ptxas is installed), run the kernels in the emulator and
compare with slimc's interpreter (integers exactly)."""

import numpy as np

import slimc
from slimc.codegen.cuda.ptx import ptxas, ptxas_path
from slimc.ir import interpret

TARGET = "cuda:sm_80"


def emulated(g, args, rtol=1e-5, atol=1e-6, seeds=(0,), assemble=True):
    """-> the compiled module, after its emulated outputs matched the interpreter's for every
    seed (thread and block order)."""
    mod = slimc.compile(g, target=TARGET)
    if assemble and ptxas_path() is not None:
        for arch in ("sm_80", "sm_90"):
            ptxas(mod.ptx, arch)
    expected = interpret(g, *args)
    for seed in seeds:
        got = mod.emulate(*args, seed=seed)
        assert len(got) == len(expected)
        for a, e in zip(got, expected):
            assert a.shape == e.shape and a.dtype == e.dtype
            if a.dtype.kind in "iub":
                np.testing.assert_array_equal(a, e)
            else:
                np.testing.assert_allclose(a.astype(np.float64), e.astype(np.float64),
                                           rtol=rtol, atol=atol)
    return mod
