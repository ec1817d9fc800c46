"""slimc.compile and the compiled Module: calls, checks, threads, denormals, specialization."""

import ctypes
import threading

import numpy as np
import pytest

import slimc
from slimc.ir import interpret, parse

CHAIN = """# slimc-ir v1
graph @chain(%x: f32[N,37], %y: f32[37]) -> (f32[N,37], f32[N]) {
  const %half: f32[] = [0.5]
  %a = mul(%x, %y) : f32[N,37]
  %b = add(%a, %half) : f32[N,37]
  %r = relu(%b) : f32[N,37]
  %s = reduce_sum(%r) {axes=[1], keepdims=0} : f32[N]
  return %r, %s
}
"""


def inputs(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 37)).astype(np.float32), rng.standard_normal(37).astype(np.float32)


def test_compiled_matches_interpreter_and_specializes_per_shape():
    g = parse(CHAIN)
    mod = slimc.compile(g)
    for n in (5, 1, 64, 5):
        x, y = inputs(n)
        for a, e in zip(mod(x, y), interpret(g, x, y)):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    assert len(mod._specializations) == 3  # 5, 1, 64: the second call with 5 hit the cache
    assert mod.graph.inputs[0].type.shape == (5, 37)


def test_inputs_by_name_and_input_errors():
    mod = slimc.compile(parse(CHAIN), input_shapes={"x": (4, 37)})
    x, y = inputs(4)
    np.testing.assert_array_equal(mod(x=x, y=y)[0], mod(x, y)[0])
    with pytest.raises(slimc.InputError, match="'x' expects f32\\[4,37\\], got dtype float64"):
        mod(x.astype(np.float64), y)
    with pytest.raises(slimc.InputError, match="takes 2 inputs"):
        mod(x)
    with pytest.raises(slimc.InputError, match="unknown input name"):
        mod(x=x, y=y, z=y)


def test_inputs_as_one_mapping():
    """A dict of inputs by name, given by position (onnxruntime's habit), is read as named
    inputs by compiled modules and the interpreter alike; it used to fail as 'dtype object'."""
    g = parse(CHAIN)
    mod = slimc.compile(g)
    x, y = inputs(4)
    want = interpret(g, x, y)[0]
    np.testing.assert_allclose(mod({"x": x, "y": y})[0], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(interpret(g, {"y": y, "x": x})[0], want)
    native = mod._current()  # what slimc.load gives: the native module without Module
    np.testing.assert_allclose(native({"y": y, "x": x})[0], want, rtol=1e-5, atol=1e-5)
    with pytest.raises(slimc.InputError, match=r"missing input\(s\) \['y'\]"):
        mod({"x": x})


def test_non_contiguous_inputs_and_fresh_outputs():
    mod = slimc.compile(parse(CHAIN))
    x, y = inputs(8)
    xt = np.asfortranarray(x)
    first = mod(xt[::2], y)
    second = mod(xt[1::2], y)
    e = interpret(parse(CHAIN), np.ascontiguousarray(x[::2]), y)
    np.testing.assert_allclose(first[0], e[0], rtol=1e-5, atol=1e-5)
    assert not np.shares_memory(first[0], second[0])


@pytest.mark.parametrize("threads", [1, 2])
def test_threads_give_the_same_result(threads):
    g = parse(CHAIN.replace("N", "300"))
    x, y = inputs(300)
    single = slimc.compile(g, threads=1)(x, y)
    multi = slimc.compile(g, threads=threads)(x, y)
    for a, b in zip(single, multi):
        np.testing.assert_array_equal(a, b)


DENORMAL = """# slimc-ir v1
graph @d(%x: f32[64,1024]) -> (f32[64,1024]) {
  const %tiny: f32[] = [1e-20]
  %a = mul(%x, %tiny) : f32[64,1024]
  %b = mul(%a, %tiny) : f32[64,1024]
  return %b
}
"""


def _numpy_denormal():
    return np.float32(1e-20) * np.float32(1e-20)  # 1e-40: a denormal unless FTZ is on


@pytest.mark.parametrize("shape, items", [((1, 3, 40, 37), 120), ((1, 1, 5, 2, 37), 10),
                                          ((2, 37), 2), ((1, 20, 8, 37), 20)])
@pytest.mark.parametrize("threads", [1, 3])
def test_batch_one_loop_nests_split_over_outer_axes(shape, items, threads):
    """A broadcast add on a batch-1 tensor (not one flat loop): its work items are outer
    axes taken together until there are 16 (a first axis of 1 alone kept such kernels on one
    thread); every element computed once."""
    dims = ",".join(map(str, shape))
    g = parse(f"""# slimc-ir v1
graph @g(%x: f32[{dims}], %b: f32[{shape[-1]}]) -> (f32[{dims}]) {{
  %y = add(%x, %b) : f32[{dims}]
  %z = relu(%y) : f32[{dims}]
  return %z
}}
""")
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    b = rng.standard_normal(shape[-1]).astype(np.float32)
    mod = slimc.compile(g, threads=threads)
    np.testing.assert_array_equal(mod(x, b)[0], np.maximum(x + b, 0))
    assert [k.parallel_extent for k in mod.kernels] == [items]


@pytest.mark.parametrize("threads", [1, 2])
def test_denormals_flush_inside_a_call_and_caller_state_is_restored(threads):
    x = np.ones((64, 1024), np.float32)
    before = _numpy_denormal()
    assert before != 0
    out = slimc.compile(parse(DENORMAL), threads=threads)(x)[0]
    assert (out == 0).all()  # 1e-40 flushed inside the call, on every thread
    assert _numpy_denormal() == before  # the caller's MXCSR is back
    kept = slimc.compile(parse(DENORMAL), threads=threads, denormals="keep")(x)[0]
    assert (kept != 0).all() and np.allclose(kept, 1e-40, rtol=1e-2, atol=0)


def test_many_threads_calling_one_module():
    g = parse(CHAIN.replace("N", "16"))
    mod = slimc.compile(g, threads=1)
    errors = []

    def worker(seed):
        try:
            for i in range(30):
                x, y = inputs(16, seed * 100 + i)
                got = mod(x, y)
                exp = interpret(g, x, y)
                for a, e in zip(got, exp):
                    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    ts = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert not errors, errors[0]


def test_repeated_calls_take_the_last_specialization_and_keep_every_check():
    """A call whose inputs are exactly the last call's types skips the checks (its fast
    path): results stay right through shape changes, outputs stay fresh, and anything not
    exact still gets checked or converted."""
    g = parse(CHAIN)
    mod = slimc.compile(g)
    for n in (3, 3, 7, 3, 3):
        x, y = inputs(n, seed=n)
        for a, e in zip(mod(x, y), interpret(g, x, y)):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
        assert mod.graph.inputs[0].type.shape == (n, 37)
    first, second = mod(x, y)[0], mod(x, y)[0]
    assert not np.shares_memory(first, second)
    with pytest.raises(slimc.InputError, match="got dtype float64"):
        mod(x.astype(np.float64), y)
    with pytest.raises(slimc.InputError, match="takes 2 inputs"):
        mod(x)
    frozen = x.copy()
    frozen.flags.writeable = False
    np.testing.assert_array_equal(mod(frozen, y)[0], first)
    np.testing.assert_array_equal(mod(np.asfortranarray(x), y)[0], first)


def test_repeated_calls_fill_outputs_no_kernel_writes():
    """Outputs that are an input or a constant are filled on the fast path too."""
    g = parse("""# slimc-ir v1
graph @g(%x: f32[4]) -> (f32[4], f32[4], f32[2]) {
  const %c: f32[2] = [1.5, -2]
  %r = relu(%x) : f32[4]
  return %r, %x, %c
}
""")
    mod = slimc.compile(g)
    for seed in (0, 1, 2):
        x = np.random.default_rng(seed).standard_normal(4).astype(np.float32)
        r, same, c = mod(x)
        np.testing.assert_array_equal(r, np.maximum(x, 0))
        np.testing.assert_array_equal(same, x)
        assert not np.shares_memory(same, x)
        np.testing.assert_array_equal(c, np.array([1.5, -2], np.float32))


def test_arrays_go_to_native_code_as_objects(tmp_path):
    """A call hands the arrays to the generated `slimc_exact`, which checks them and reads
    their data pointers itself (CPython's and numpy's layouts, checked at import); the
    pointer tables it replaces give the same outputs, and so does an exported module loaded
    back."""
    from slimc.runtime import native

    assert native.OBJECT_CALLS  # CPython, 64-bit: the layout holds
    g = parse(CHAIN)
    mod = slimc.compile(g)
    x, y = inputs(5)
    by_objects = mod(x, y)
    compiled = mod._current()
    assert compiled._call is not None
    compiled._call = None  # the pointer tables
    by_tables = mod(x, y)
    for a, b, e in zip(by_objects, by_tables, interpret(g, x, y)):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    mod.export(str(tmp_path / "chain"))
    loaded = slimc.load(str(tmp_path / "chain"))
    assert loaded._call is not None
    for a, b in zip(loaded(x, y), by_tables):
        np.testing.assert_array_equal(a, b)


def test_native_code_checks_the_arrays_it_is_given():
    """`slimc_exact` runs only arrays that are exactly the inputs (ndarray, dtype, shape,
    C order) and says so without running anything otherwise; the module's call then takes
    Python's path, which converts what it can (outputs as the interpreter's) and names the
    input it cannot take."""
    g = parse(CHAIN)
    mod = slimc.compile(g)
    x, y = inputs(5)
    expected = interpret(g, x, y)
    mod(x, y)
    compiled = mod._current()
    native = compiled._call
    assert native is not None

    def exact(*arrays):
        """What slimc_exact says of these inputs (0: it ran), given fresh outputs."""
        outs = compiled._fresh_outputs()
        arena = compiled._arena()
        return native((*arrays, *outs, arena[0], compiled._weights, compiled._spec))

    class Sub(np.ndarray):
        pass

    assert exact(x, y) == 0
    wide = np.zeros((5, 74), np.float32)
    wide[:, ::2] = x
    fortran = np.asfortranarray(x)
    not_exact = {"float64": (x.astype(np.float64), y), "strided": (wide[:, ::2], y),
                 "fortran": (fortran, y), "subclass": (x.view(Sub), y),
                 "a list": (x.tolist(), y), "big-endian": (x.astype(">f4"), y),
                 "another shape": (x[:4], y), "another rank": (x, y[None])}
    for why, arrays in not_exact.items():
        assert exact(*arrays) == 1, why
        assert compiled.call_exact(arrays) is None or why in ("strided", "fortran"), why
    # the exact path decides alone: Python's check is not asked
    compiled.given_exactly = None
    for a, e in zip(compiled.call_exact((x, y)), expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)
    del compiled.given_exactly
    for why in ("strided", "fortran", "subclass"):
        for a, e in zip(mod(*not_exact[why]), expected):
            np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5, err_msg=why)
    said = {"float64": "'x' expects f32[5,37], got dtype float64",
            "a list": "'x' expects f32[5,37], got dtype float64",
            "big-endian": "'x' expects f32[5,37], got dtype >f4",
            "another rank": r"'y' expects f32\[37\], got shape \[1, 37\]"}
    for why, message in said.items():
        with pytest.raises(slimc.InputError, match=message.replace("[5,37]", r"\[5,37\]")):
            mod(*not_exact[why])


def test_memory_plan_reuses_space():
    g = parse("""# slimc-ir v1
graph @m(%x: f32[256,256]) -> (f32[256,256]) {
  %a = relu(%x) : f32[256,256]
  %b = neg(%a) : f32[256,256]
  %c = exp(%b) : f32[256,256]
  %d = neg(%c) : f32[256,256]
  %e = relu(%d) : f32[256,256]
  return %e
}
""")
    mod = slimc.compile(g, disable_passes=["fusion"])
    assert mod.memory.intermediates_bytes == 4 * 256 * 256 * 4
    assert mod.memory.arena_bytes == 2 * 256 * 256 * 4  # two alive at a time
    x = np.random.default_rng(0).standard_normal((256, 256)).astype(np.float32)
    np.testing.assert_allclose(mod(x)[0], interpret(g, x)[0], rtol=1e-6)
    fused = slimc.compile(g)  # the whole chain is one kernel: nothing goes to memory
    assert len(fused.kernels) == 1 and fused.memory.intermediates_bytes == 0
    np.testing.assert_allclose(fused(x)[0], interpret(g, x)[0], rtol=1e-6)


def test_names_survive_into_llvm_ir():
    mod = slimc.compile(parse(CHAIN), input_shapes={"x": (2, 37)})
    ir_text = mod.llvm_ir
    assert [k.ops for k in mod.kernels] == [["mul", "add", "relu"], ["reduce_sum"]]
    assert all(k.name in ir_text for k in mod.kernels) and "slimc_main" in ir_text
    assert "k0_relu_r" in ir_text  # kernels are named after the value they produce
    assert "ymm" in mod.assembly or "zmm" in mod.assembly or "xmm" in mod.assembly


def test_unsupported_op_is_a_compile_time_error_naming_the_node():
    from slimc.ir import register_op, same_as_input

    register_op("test_no_lowering", reference=lambda x: x, infer=same_as_input(0), replace=True)
    g = parse("# slimc-ir v1\ngraph @u(%x: f32[2]) -> (f32[2]) {\n"
              "  %y = test_no_lowering(%x) : f32[2] loc(\"my/layer\")\n  return %y\n}\n")
    with pytest.raises(slimc.UnsupportedError, match="test_no_lowering.*'my/layer'"):
        slimc.compile(g)


def test_profile_times_every_kernel():
    g = parse(CHAIN)
    mod = slimc.compile(g)
    x, y = inputs(64)
    for alone in (False, True):
        prof = mod.profile(x, y, repeat=3, alone=alone)
        assert prof.in_call is not alone
        assert [r[0] for r in prof.rows] == [k.name for k in mod.kernels]
        assert all(r[2] > 0 for r in prof.rows)
        text = str(prof)
        assert "reduce_sum" in text and "whole call" in text
        assert ("inside the call" in text) is not alone
    # profiling leaves the results of a normal call intact
    for a, e in zip(mod(x, y), interpret(g, x, y)):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-5)


def test_profile_of_a_model_without_kernels_and_a_wrong_repeat():
    mod = slimc.compile(parse("# slimc-ir v1\ngraph @id(%x: f32[4]) -> (f32[4]) {\n"
                              "  return %x\n}\n"))
    x = np.ones(4, np.float32)
    prof = mod.profile(x)
    assert prof.rows == [] and prof.kinds() == []
    assert str(prof).splitlines()[-1].split()[:2] == ["kernels", "0.000"]
    with pytest.raises(ValueError, match="repeat must be at least 1, got 0"):
        mod.profile(x, repeat=0)


HEAVY_MIDDLE = """# slimc-ir v1
graph @heavy(%x: f32[192,192], %w: f32[192,192]) -> (f32[192,192]) {
  %a = neg(%x) : f32[192,192]
  %t = transpose(%a) {perm=[1,0]} : f32[192,192]
  %b = matmul(%t, %w) : f32[192,192]
  %c = matmul(%b, %w) : f32[192,192]
  %d = matmul(%c, %w) : f32[192,192]
  %e = transpose(%d) {perm=[1,0]} : f32[192,192]
  %y = neg(%e) : f32[192,192]
  return %y
}
"""


def test_profile_inside_the_call_puts_the_time_where_it_is_spent():
    """Each step's clock reading lands on its own kernel: three 192^3 products (about 7 M
    multiply-adds each) against element-wise steps over the same 37k floats, and the steps'
    times add up to no more than the whole call they were read in."""
    mod = slimc.compile(parse(HEAVY_MIDDLE), threads=1)
    rng = np.random.default_rng(1)
    x, w = (rng.standard_normal((192, 192)).astype(np.float32) for _ in range(2))
    prof = mod.profile(x, w, repeat=15)
    heavy = [ms for _, ops, ms in prof.rows if "matmul" in ops]
    light = [ms for _, ops, ms in prof.rows if "matmul" not in ops]
    assert len(heavy) == 3 and light
    assert min(heavy) > 3 * max(light), str(prof)
    assert prof.kinds()[0][:2] == ("matmul", 3)
    assert sum(ms for _, _, ms in prof.rows) <= prof.total_ms * 1.05, str(prof)
    native = mod._current()
    ns = np.zeros(len(prof.rows) + 1, np.int64)
    call = native._pointers([x, w])
    arena = native._arena()
    native._timed(ctypes.addressof(call[1]), ctypes.addressof(call[2]), arena[1],
                  native._weights_address, ns.ctypes.data)
    assert (ns[:-1] > 0).all() and ns[:-1].sum() <= ns[-1]
    np.testing.assert_allclose(call[0][0], (x.T @ w @ w @ w).T, rtol=1e-4, atol=1e-3)
    native._arenas.append(arena)


def test_cli_profile_prints_kernels_and_kinds(tmp_path, capsys):
    from slimc.cli import main

    path = tmp_path / "heavy.slimc"
    path.write_text(HEAVY_MIDDLE)
    assert main(["profile", str(path), "--threads", "1", "--repeat", "5", "--top", "2"]) == 0
    out = capsys.readouterr().out
    table, kinds = out.split("by kind of kernel:")
    assert "timed inside the call" in table and "whole call" in table
    assert len(table.strip().splitlines()) == 4  # the header, the slowest two, their sum
    assert "3 x matmul" in kinds


def test_custom_op_with_its_lowering_in_one_call():
    from slimc.ir import FusionKind, same_as_input

    slimc.register_op("test_swish", reference=lambda x, beta=1.0: x / (1 + np.exp(-beta * x)),
                      infer=same_as_input(0), attrs={"beta": 1.0}, fusion=FusionKind.ELEMENTWISE,
                      num_inputs=1, replace=True,
                      lower=lambda e, a, at: e.mul(a[0], e.sigmoid(e.mul(a[0], e.c(a[0], at["beta"])))))
    g = parse("# slimc-ir v1\ngraph @s(%x: f32[3,17]) -> (f32[3,17]) {\n"
              "  %y = test_swish(%x) {beta=1.5} : f32[3,17]\n  %z = relu(%y) : f32[3,17]\n"
              "  return %z\n}\n")
    x = np.random.default_rng(0).standard_normal((3, 17)).astype(np.float32)
    mod = slimc.compile(g)
    assert [k.ops for k in mod.kernels] == [["test_swish", "relu"]]  # fused like any elementwise op
    np.testing.assert_allclose(mod(x)[0], interpret(g, x)[0], rtol=1e-5, atol=1e-6)


def test_compile_times_account_for_the_compile(tmp_path, monkeypatch, capsys):
    """Every stage is reported, none is negative, together they are the compile's wall time
    (within what is not timed: binding shapes, the cache key); the CLI prints them."""
    import time

    from onnx import helper

    from slimc.cli import main

    from .oracle import make_model

    monkeypatch.setenv("SLIMC_CACHE_DIR", "off")
    x = np.zeros((2, 16), np.float32)
    model = make_model([helper.make_node("Relu", ["x"], ["r"]),
                        helper.make_node("MatMul", ["r", "w"], ["y"])], {"x": x}, ["y"],
                       {"w": np.ones((16, 8), np.float32)})
    start = time.perf_counter()
    mod = slimc.compile(model)
    wall = time.perf_counter() - start
    times = mod.compile_times
    assert list(times) == ["import", "cost_models", "passes", "fusion", "codegen", "memory_plan",
                           "link", "ir_text", "llvm_opt", "machine_code"]
    assert all(s >= 0 for s in times.values()) and 0.5 * wall <= sum(times.values()) <= wall
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert main(["compile", str(path), "-o", str(tmp_path / "out"), "--time"]) == 0
    out = capsys.readouterr().out
    assert "llvm_opt" in out and "machine_code" in out and "total" in out
    # per kernel (the model's two: relu+matmul fused or not) and per LLVM part
    kernel_lines = [line for line in out.splitlines() if " s  k" in line]
    assert kernel_lines and all("matmul" in line or "relu" in line for line in kernel_lines)
    assert "part 1:" in out and "KB of IR" in out


@pytest.mark.parametrize("model, kw, words", [
    ("graph", dict(opt_level="2"), "opt_level must be an int"),
    ("graph", dict(threads=1.5), "threads must be None"),
    ("graph", dict(threads=True), "threads must be None"),
    ("graph", dict(threads=1 << 40), "threads must be None"),
    ("graph", dict(passes=["fusion"]), r"not a pass \(a pass by name: .*make_pass"),
    ("graph", dict(passes=42), "passes must be a list"),
    (42, {}, "a model is an ONNX path"),
    ("folder", {}, "is a folder, not an ONNX file"),
])
def test_arguments_of_the_wrong_kind_are_named(model, kw, words, tmp_path):
    """Not a TypeError from deep inside, and not threads=True or 1.5 taken as a count."""
    g = parse("# slimc-ir v1\ngraph @g(%x: f32[2]) -> (f32[2]) {\n"
              "  %b = relu(%x) : f32[2]\n  return %b\n}\n")
    model = {"graph": g, "folder": str(tmp_path)}.get(model, model)
    with pytest.raises(slimc.InputError, match=words):
        slimc.compile(model, **kw)
