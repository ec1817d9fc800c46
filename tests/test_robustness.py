"""Misuse and faults at scale: tensors larger than the machine, long call loops, IEEE specials.

Every case gets a clear slimc error or the right answer; the process neither dies nor grows.
"""

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import slimc
from slimc.ir import ResourceError, interpret, parse


def _onnx(nodes, inits):
    g = helper.make_graph(nodes, "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                          initializer=inits)
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])


HUGE = numpy_helper.from_array(np.array([1 << 20, 1 << 20, 4], np.int64), "shape")
HUGE_MODELS = {
    "expand": (_onnx([helper.make_node("Expand", ["x", "shape"], ["y"], name="grow")], [HUGE]),
               "grow", "expand"),
    "constant_of_shape": (_onnx([helper.make_node("ConstantOfShape", ["shape"], ["c"], name="fill"),
                                 helper.make_node("Add", ["x", "c"], ["y"])], [HUGE]),
                          "fill", "constant_of_shape"),
    "tile": (_onnx([helper.make_node("Tile", ["x", "reps"], ["y"], name="rep")],
                   [numpy_helper.from_array(np.array([1 << 40], np.int64), "reps")]),
             "rep", "tile"),
}


@pytest.mark.parametrize("case", sorted(HUGE_MODELS))
def test_tensor_larger_than_memory_is_refused_at_compile_time(case):
    model, node, op = HUGE_MODELS[case]
    with pytest.raises(ResourceError) as err:
        slimc.compile(model)
    msg = str(err.value)
    assert f"node '{node}' ({op})" in msg and "16.0 TiB" in msg and "memory limit" in msg


# (a max, not a sum: exp / sum(exp) would be recognized as one softmax, a single step)
TWO_STEPS = """# slimc-ir v1
graph @g(%x: f32[64,64]) -> (f32[64,64]) {
  %a = exp(%x) : f32[64,64]
  %b = reduce_max(%a) {axes=[1], keepdims=1} : f32[64,1]
  %y = div(%a, %b) : f32[64,64]
  return %y
}
"""


def test_memory_limit_is_configurable_and_counts_the_whole_module(monkeypatch):
    g = parse(TWO_STEPS)
    monkeypatch.setenv("SLIMC_MEMORY_LIMIT", "20K")  # every tensor fits (16 KiB), not all of them
    with pytest.raises(ResourceError, match=r"needs .*arena .*outputs .*more than the memory "
                                            r"limit of 20.0 KiB"):
        slimc.compile(g, disable_passes=["fusion"])
    monkeypatch.setenv("SLIMC_MEMORY_LIMIT", "1M")
    x = np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32)
    out, = slimc.compile(g, disable_passes=["fusion"])(x)
    np.testing.assert_allclose(out, interpret(g, x)[0], rtol=1e-5)
    monkeypatch.setenv("SLIMC_MEMORY_LIMIT", "lots")
    with pytest.raises(slimc.ir.SlimcError, match="SLIMC_MEMORY_LIMIT='lots'"):
        slimc.compile(g)


def _rss_bytes() -> int:
    import os

    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_a_hundred_thousand_calls_do_not_grow_the_process():
    g = parse(TWO_STEPS)
    mod = slimc.compile(g, threads=1)
    x = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    expected = interpret(g, x)[0]
    for _ in range(5_000):  # warm: allocator pools, caches
        mod(x)
    before = _rss_bytes()
    for _ in range(100_000):
        out, = mod(x)
    grown = _rss_bytes() - before
    np.testing.assert_allclose(out, expected, rtol=1e-5)
    # one call allocates a 16 KiB output; a leak of it would be 1.6 GB
    assert grown < 8 << 20, f"resident memory grew by {grown / 2**20:.1f} MiB over 100,000 calls"


def test_nan_and_inf_flow_through_as_ieee_says():
    g = parse("""# slimc-ir v1
graph @g(%x: f32[8]) -> (f32[8], f32[8], f32[1]) {
  %r = relu(%x) : f32[8]
  %e = exp(%x) : f32[8]
  %m = reduce_max(%x) {axes=[0], keepdims=1} : f32[1]
  return %r, %e, %m
}
""")
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e38, -1e38, 1.0], np.float32)
    got = slimc.compile(g)(x)
    with np.errstate(all="ignore"):
        want = interpret(g, x)
    for a, b in zip(got, want):
        # NaN where NaN, infinities exactly, finite values within exp's 1-ulp bound
        np.testing.assert_allclose(a, b, rtol=2e-7, atol=0)
    assert np.isnan(got[0][0]) and np.isnan(got[1][0]) and np.isnan(got[2][0])
