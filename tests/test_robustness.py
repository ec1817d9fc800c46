"""Misuse and faults at scale: tensors larger than the machine, long call loops, IEEE specials.

Every case gets a clear slimc error or the right answer; the process neither dies nor grows.
"""

import re

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


INT_DIVISION = """# slimc-ir v1
graph @g(%x: {t}[6], %y: {t}[6]) -> ({t}[6], {t}[6], {t}[6]) {{
  %q = div(%x, %y) : {t}[6]
  %m = mod(%x, %y) : {t}[6]
  %f = mod(%x, %y) {{fmod=1}} : {t}[6]
  return %q, %m, %f
}}
"""


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64])
def test_integer_division_of_the_minimum_by_minus_one_does_not_trap(dtype):
    """x86's idiv traps (SIGFPE, the process dies) on MIN / -1 and on a zero divisor: both
    give numpy's wrapped answers here (MIN, remainder 0) and 0 for a zero divisor; run in a
    child process, so a trap fails the test instead of killing the run."""
    import subprocess
    import sys
    import textwrap

    t = {np.int8: "i8", np.int32: "i32", np.int64: "i64"}[dtype]
    child = textwrap.dedent(f"""
        import numpy as np, slimc
        from slimc.ir import interpret, parse
        g = parse({INT_DIVISION.format(t=t)!r})
        lo = np.iinfo(np.{dtype.__name__}).min
        x = np.array([lo, lo, 7, -7, lo, 5], np.{dtype.__name__})
        y = np.array([-1, 1, -1, 2, 3, 0], np.{dtype.__name__})
        got = slimc.compile(g)(x, y)
        with np.errstate(all="ignore"):
            want = interpret(g, x, y)
        for a, b in zip(got, want):
            np.testing.assert_array_equal(a[:5], b[:5])
            assert a[5] == 0
        print("ok", got[0][0], got[1][0], got[2][0])
    """)
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    lo = np.iinfo(dtype).min
    assert run.stdout.split()[-4:] == ["ok", str(lo), "0", "0"]


@pytest.mark.parametrize("op, indices, bad", [
    ("gather(%x, %i) {axis=0} : f32[2,3]", "i64[2] = [1, 7]", "index 7 at [1]"),
    ("gather(%x, %i) {axis=0} : f32[2,3]", "i64[2] = [-6, 0]", "index -6 at [0]"),
    ("gather_elements(%x, %i) {axis=1} : f32[1,3]", "i64[1,3] = [0, 3, 1]", "index 3 at [0, 1]"),
    ("gather_nd(%x, %i) : f32[2]", "i64[2,2] = [4, 2, 1, 3]", "index 3 at [1, 1]"),
    ("scatter_elements(%x, %i, %x) {axis=0} : f32[5,3]",
     "i64[5,3] = [0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 0, 1, 2, 3]", "index 5 at [1, 2]"),
])
def test_constant_indices_out_of_range_are_refused_at_compile_time(op, indices, bad):
    """The compiled code has no way to raise at run time (it reads element 0 for an index
    out of range); a constant one is the model's error, named with its node."""
    g = f"""# slimc-ir v1
graph @g(%x: f32[5,3]) -> ({op.split(' : ')[1]}) {{
  const %i: {indices}
  %y = {op} loc("pick")
  return %y
}}
"""
    with pytest.raises(slimc.ModelError, match=rf"'pick'.*{re.escape(bad)} .*outside"):
        slimc.compile(parse(g))


@pytest.mark.parametrize("t", ["i64", "i32"])
def test_index_inputs_out_of_range_are_refused_at_the_call(t, tmp_path):
    """The kernels cannot raise (they read element 0 for an index out of range): the call
    checks every input that indexes a dimension (through views) before it runs anything,
    and names the input, the value, where it is and the node; in-range calls, negative
    indices too, agree with the interpreter; an exported artifact checks the same."""
    g = parse(f"""# slimc-ir v1
graph @g(%i: {t}[2,2], %e: i64[1,3]) -> (f32[4,3], f32[1,3], f32[5,3]) {{
  const %table: f32[5,3] = {[float(v) for v in range(15)]}
  const %upd: f32[1,3] = [-1.0, -2.0, -3.0]
  const %flat: i64[1] = [4]
  %ids = reshape(%i, %flat) : {t}[4]
  %rows = gather(%table, %ids) {{axis=0}} : f32[4,3] loc("embed")
  %picked = gather_elements(%table, %e) {{axis=0}} : f32[1,3] loc("pick")
  %put = scatter_elements(%table, %e, %upd) {{axis=0}} : f32[5,3] loc("put")
  return %rows, %picked, %put
}}
""")
    dt = np.int64 if t == "i64" else np.int32
    mod = slimc.compile(g)
    ok_i, ok_e = np.array([[0, 4], [-1, -5]], dt), np.array([[2, -1, 0]], np.int64)
    for a, b in zip(mod(ok_i, ok_e), interpret(g, ok_i, ok_e)):
        np.testing.assert_array_equal(a, b)
    mod.export(str(tmp_path / "art"))
    for m in (mod, slimc.load(str(tmp_path / "art"))):
        with pytest.raises(slimc.InputError, match=r"input 'i' holds 5 at \[1, 0\], an index "
                                                   r"outside \[-5, 4\]: node 'embed'"):
            m(np.array([[0, 4], [5, 0]], dt), ok_e)
        with pytest.raises(slimc.InputError, match=r"input 'e' holds -6 at \[0, 2\].*'(pick|put)'"):
            m(ok_i, np.array([[0, 1, -6]], np.int64))
        # a non-contiguous input is converted, then checked the same way
        with pytest.raises(slimc.InputError, match="input 'i' holds 9"):
            m(np.array([[0, 9], [1, 1]], dt).T, ok_e)


def test_a_dtype_without_native_code_is_refused_with_its_nodes():
    """bf16 (Falcon's ALiBi slopes) runs in the interpreter; the CPU backend has no type for
    it and names every node on it before generating code."""
    g = helper.make_graph([helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16,
                                            name="to_bf16"),
                           helper.make_node("Mul", ["xb", "xb"], ["yb"], name="square"),
                           helper.make_node("Cast", ["yb"], ["y"], to=TensorProto.FLOAT,
                                            name="back")], "bf16",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    with pytest.raises(slimc.UnsupportedError, match=r"(?s)cast on bf16: 2 node\(s\), first "
                                                      r"'to_bf16', 'back'.*mul on bf16.*'square'"):
        slimc.compile(m)
