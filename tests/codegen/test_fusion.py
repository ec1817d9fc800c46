"""Fusion: which ops share a kernel, that fused values never touch memory, that results still
match the interpreter, and that every "no" has its reason."""

import numpy as np
import pytest

import slimc
from slimc.ir import interpret, parse


def compiled(text, **kw):
    g = parse(text)
    rng = np.random.default_rng(0)
    for c in g.constants.values():
        if c.data is None:
            c.data = rng.standard_normal(c.type.shape).astype(c.type.dtype.numpy)
    return g, slimc.compile(g, **kw)


def agree(g, mod, *shapes, rtol=1e-4, atol=1e-4):
    rng = np.random.default_rng(1)
    xs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    for a, e in zip(mod(*xs), interpret(g, *xs)):
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol)


LINEAR = """# slimc-ir v1
graph @linear(%x: f32[5,33]) -> (f32[5,17]) {
  const %w: f32[33,17] = elided
  const %b: f32[17] = elided
  %mm = matmul(%x, %w) : f32[5,17]
  %biased = add(%mm, %b) : f32[5,17]
  %act = relu(%biased) : f32[5,17]
  return %act
}
"""


def test_matmul_bias_relu_is_one_kernel():
    g, mod = compiled(LINEAR)
    assert [k.ops for k in mod.kernels] == [["matmul", "add", "relu"]]
    assert mod.memory.intermediates_bytes == 0
    agree(g, mod, (5, 33))


ATTENTION_SCORES = """# slimc-ir v1
graph @scores(%q: f32[4,9,16], %k: f32[4,16,9], %mask: f32[9]) -> (f32[4,9,9]) {
  const %scale: f32[] = [0.25]
  %qk = matmul(%q, %k) : f32[4,9,9]
  %scaled = mul(%qk, %scale) : f32[4,9,9]
  %masked = add(%scaled, %mask) : f32[4,9,9]
  return %masked
}
"""


def test_batched_runtime_matmul_takes_its_epilogue():
    g, mod = compiled(ATTENTION_SCORES)
    assert [k.ops for k in mod.kernels] == [["matmul", "mul", "add"]]
    agree(g, mod, (4, 9, 16), (4, 16, 9), (9,))


def test_producer_is_computed_inside_a_reduction():
    g, mod = compiled("""# slimc-ir v1
graph @lse(%x: f32[8,65]) -> (f32[8]) {
  %e = exp(%x) : f32[8,65]
  %s = reduce_sum(%e) {axes=[1], keepdims=0} : f32[8]
  %l = log(%s) : f32[8]
  return %l
}
""")
    assert [k.ops for k in mod.kernels] == [["exp", "reduce_sum", "log"]]
    agree(g, mod, (8, 65))


def test_transpose_and_broadcast_fuse_into_elementwise():
    g, mod = compiled("""# slimc-ir v1
graph @t(%x: f32[7,17], %y: f32[17,7]) -> (f32[17,7]) {
  %xt = transpose(%x) {perm=[1, 0]} : f32[17,7]
  %s = add(%xt, %y) : f32[17,7]
  %r = sigmoid(%s) : f32[17,7]
  return %r
}
""")
    assert len(mod.kernels) == 1
    agree(g, mod, (7, 17), (17, 7))


def test_a_broadcast_gate_gets_a_kernel_of_its_own(tmp_path):
    """A squeeze-and-excite gate: sigmoid over [1, C, 1, 1], read for each of the image's
    H * W pixels. Inline it would be computed H * W times over: it runs alone (C values) and
    the scaling reads its result. A broadcast of fewer than RECOMPUTE_LIMIT reads a value
    (here 8) still fuses."""
    g, mod = compiled("""# slimc-ir v1
graph @se(%x: f32[1,24,20,8], %s: f32[1,24,1,1], %u: f32[1,24,20,1]) -> (f32[1,24,20,8]) {
  %gate = sigmoid(%s) : f32[1,24,1,1]
  %row = tanh(%u) : f32[1,24,20,1]
  %y = mul(%x, %gate) : f32[1,24,20,8]
  %z = add(%y, %row) : f32[1,24,20,8]
  return %z
}
""", dump_dir=str(tmp_path))
    assert sorted(k.ops for k in mod.kernels) == [["sigmoid"], ["tanh", "mul", "add"]]
    report = (tmp_path / "fusion.txt").read_text()
    assert "not fused: %gate (sigmoid) -> %y (mul): its 24 values would each be computed 160 " \
           "times over for the kernel's 3840 results (a broadcast)" in report
    agree(g, mod, (1, 24, 20, 8), (1, 24, 1, 1), (1, 24, 20, 1))


def test_reasons_for_what_did_not_fuse(tmp_path):
    g, mod = compiled("""# slimc-ir v1
graph @r(%x: f32[4,8]) -> (f32[4,8], f32[4,8]) {
  %a = relu(%x) : f32[4,8]
  %b = exp(%a) : f32[4,8]
  %c = neg(%a) : f32[4,8]
  %m = reduce_mean(%b) {axes=[1], keepdims=1} : f32[4,1]
  %d = sub(%b, %m) : f32[4,8]
  return %d, %c
}
""", dump_dir=str(tmp_path))
    report = (tmp_path / "fusion.txt").read_text()
    assert "not fused: %a (relu) -> %b (exp): its value is used by 2 kernels" in report
    assert "%m (reduce_mean) -> %d (sub): the consumer's result f32[4,8] has another shape" in report
    agree(g, mod, (4, 8))


def test_fusion_can_be_turned_off():
    g, mod = compiled(LINEAR, disable_passes=["fusion"])
    assert [k.ops for k in mod.kernels] == [["matmul"], ["add"], ["relu"]]
    agree(g, mod, (5, 33))


def test_debug_topic_prints_decisions(monkeypatch, capsys):
    monkeypatch.setenv("SLIMC_DEBUG", "fusion")
    monkeypatch.setenv("SLIMC_CACHE_DIR", "off")
    compiled(LINEAR)
    err = capsys.readouterr().err
    assert "[slimc:fusion] fused: %biased (add)" in err


MATMUL_TO_HALF = """# slimc-ir v1
graph @to_half(%p: f32[2,4,8,6], %v: f32[2,4,6,16]) -> (f16[2,4,8,16]) {
  %y = matmul(%p, %v) : f32[2,4,8,16]
  %h = cast(%y) {to=f16} : f16[2,4,8,16]
  return %h
}
"""


def test_epilogue_that_changes_dtype_stays_apart(tmp_path):
    # Regression (ONNX flexattention_fp16): the GEMM stored f32 accumulators into the cast's
    # f16 buffer, writing past its end.
    g, mod = compiled(MATMUL_TO_HALF, dump_dir=str(tmp_path))
    assert [k.ops for k in mod.kernels] == [["matmul"], ["cast"]]
    assert "epilogues keep the heavy op's element type" in (tmp_path / "fusion.txt").read_text()
    rng = np.random.default_rng(2)
    p, v = rng.random((2, 4, 8, 6), np.float32), rng.random((2, 4, 6, 16), np.float32)
    for _ in range(3):
        out, = mod(p, v)
        np.testing.assert_allclose(out.astype(np.float32), (p @ v).astype(np.float16), rtol=1e-3)


@pytest.mark.parametrize("out_shape", [(5, 1), (1, 1, 5, 1), (1, 1)])
def test_single_column_matmul_takes_its_epilogue(out_shape):
    # Regression (ONNX attention_bidirectional_window): with N == 1 the epilogue's consumers
    # read the GEMM's value as a lane-broadcast scalar, which the epilogue did not provide.
    k = 3
    a = out_shape[:-1] + (k,)
    b = out_shape[:-2] + (k, 1)
    dims = lambda s: ",".join(map(str, s))
    g, mod = compiled(f"""# slimc-ir v1
graph @col(%a: f32[{dims(a)}], %b: f32[{dims(b)}]) -> (f32[{dims(out_shape)}]) {{
  %y = matmul(%a, %b) : f32[{dims(out_shape)}]
  %r = relu(%y) : f32[{dims(out_shape)}]
  return %r
}}
""")
    assert [k.ops for k in mod.kernels] == [["matmul", "relu"]]
    agree(g, mod, a, b)


VIEWS_INTO_SOFTMAX = """# slimc-ir v1
graph @views(%x: f32[2,3,8]) -> (f32[6,8]) {
  const %shape: i64[2] = [6, 8]
  %a = relu(%x) : f32[2,3,8]
  %r = reshape(%a, %shape) : f32[6,8]
  %s = softmax(%r) {axis=1} : f32[6,8]
  return %s
}
"""


def test_views_read_from_memory_alias_their_input(tmp_path):
    """softmax reads its operand from memory: the reshape before it joins its kernel as its
    input's buffer (no copy kernel), and relu, which the reshape reads, is written to memory,
    with the reason."""
    g, mod = compiled(VIEWS_INTO_SOFTMAX, dump_dir=str(tmp_path))
    assert [k.ops for k in mod.kernels] == [["relu"], ["reshape", "softmax"]]
    report = (tmp_path / "fusion.txt").read_text()
    assert "fused: %r (reshape) into the kernel of %s, read as its input's buffer" in report
    assert "not fused: %a (relu) -> %r (reshape): softmax reads its operands from memory" \
        in report
    agree(g, mod, (2, 3, 8))


def test_view_alone_before_a_memory_reader_still_copies_when_it_is_an_output():
    g, mod = compiled("""# slimc-ir v1
graph @v(%x: f32[4,6]) -> (f32[24], f32[24]) {
  %f = reshape(%x, %shape) : f32[24]
  %s = softmax(%f) {axis=0} : f32[24]
  return %f, %s
}
""".replace("{\n", "{\n  const %shape: i64[1] = [24]\n", 1))
    agree(g, mod, (4, 6))
