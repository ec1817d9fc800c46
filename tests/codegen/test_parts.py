"""Compiling a model's LLVM module in parts (codegen/cpu/parts.py): duplicates merged only
when they are the same code, every part compiled in its own thread, and the objects linked
into code that computes what numpy and onnxruntime compute."""

from __future__ import annotations

import ctypes

import numpy as np
import pytest
from llvmlite import ir

import slimc
from slimc.codegen.cpu import parts
from slimc.codegen.cpu.target import CpuTarget, JitModule, compile_parts

F32 = ir.FloatType()
I64 = ir.IntType(64)
FPTR = ir.PointerType(F32)


def _helper(module, name: str, factor: float) -> ir.Function:
    """internal float h(float x) = x * factor."""
    fn = ir.Function(module, ir.FunctionType(F32, [F32]), name=name)
    fn.linkage = "internal"
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    b.ret(b.fmul(fn.args[0], ir.Constant(F32, factor), name=f"{name}.scaled"))
    return fn


def _kernel(module, name: str, helper: ir.Function, local: str) -> ir.Function:
    """void k(float* x, float* y, i64 n): y[i] = helper(x[i]) + 1, local values named after
    `local` (as kernels name theirs after the model's tensors)."""
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [FPTR, FPTR, I64]), name=name)
    x, y, n = fn.args
    entry, loop, done = (fn.append_basic_block(s) for s in ("entry", "loop", "done"))
    b = ir.IRBuilder(entry)
    b.branch(loop)
    b.position_at_end(loop)
    i = b.phi(I64, name=f"{local}.i")
    i.add_incoming(ir.Constant(I64, 0), entry)
    v = b.call(helper, [b.load(b.gep(x, [i]), name=f"{local}.x")], name=f"{local}.h")
    b.store(b.fadd(v, ir.Constant(F32, 1.0), name=f"{local}.y"), b.gep(y, [i]))
    nxt = b.add(i, ir.Constant(I64, 1), name=f"{local}.next")
    i.add_incoming(nxt, loop)
    b.cbranch(b.icmp_signed("<", nxt, n), loop, done)
    b.position_at_end(done)
    b.ret_void()
    return fn


def _module():
    t = CpuTarget.host()
    m = t.new_ir_module("parts_test")
    h2a, h2b, h3 = _helper(m, "h2a", 2.0), _helper(m, "h2b", 2.0), _helper(m, "h3", 3.0)
    _kernel(m, "k_first", h2a, "conv1")
    _kernel(m, "k_repeat", h2b, "layer2.conv")  # the same code: another name, other locals
    _kernel(m, "k_other", h3, "conv1")  # the same but for one constant (in its helper)
    return t, m


def _call(jit: JitModule, name: str, x: np.ndarray) -> np.ndarray:
    y = np.zeros_like(x)
    fn = jit.cfunc(name, None, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64)
    fn(x.ctypes.data, y.ctypes.data, x.size)
    return y


@pytest.mark.parametrize("split", [False, True])
def test_duplicates_become_aliases_and_the_parts_link(monkeypatch, split):
    if split:  # one function a part
        monkeypatch.setattr(parts, "MIN_SPLIT_BYTES", 0)
        monkeypatch.setattr(parts, "MIN_PART_BYTES", 1)
    t, m = _module()
    cut, duplicates = parts.cut(m, lambda name: "vector" if name == "k_other" else "O3",
                                jobs=3)
    assert duplicates == {"k_repeat": "k_first"}
    if split:
        assert sorted(p.pipeline for p in cut) == ["O3", "vector"]
        assert sum(len(p.functions) for p in cut) == 2
    else:
        assert len(cut) == 1 and cut[0].pipeline == "O3"
    compiled = compile_parts(cut, t, jobs=2)
    assert len(compiled.objects) == len(cut)
    jit = JitModule(t, compiled.objects, compiled.llvm_ir)
    x = np.arange(-3, 5, dtype=np.float32)
    np.testing.assert_array_equal(_call(jit, "k_first", x), x * 2 + 1)
    np.testing.assert_array_equal(_call(jit, "k_repeat", x), x * 2 + 1)
    np.testing.assert_array_equal(_call(jit, "k_other", x), x * 3 + 1)


def test_cross_target_parts_become_one_object(monkeypatch):
    monkeypatch.setattr(parts, "MIN_SPLIT_BYTES", 0)
    monkeypatch.setattr(parts, "MIN_PART_BYTES", 1)
    _, m = _module()
    aarch64 = CpuTarget.from_name("aarch64")
    m.triple, m.data_layout = aarch64.triple, aarch64.data_layout
    cut, _ = parts.cut(m, lambda name: "O3", jobs=2)
    assert len(cut) == 2
    compiled = compile_parts(cut, aarch64, jobs=2, one_object=True)
    assert len(compiled.objects) == 1 and compiled.objects[0][:4] == b"\x7fELF"


def _repeated_blocks(channels=16, blocks=3):
    """A CNN of `blocks` identical conv + relu layers (different weights): the kernels repeat."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i in range(blocks):
        w = numpy_helper.from_array(
            (rng.standard_normal((channels, channels, 3, 3)) * 0.2).astype(np.float32), f"w{i}")
        inits.append(w)
        nodes += [helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], pads=[1, 1, 1, 1],
                                   name=f"conv{i}"),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}")]
        x = f"r{i}"
    shape = [1, channels, 20, 20]
    graph = helper.make_graph(nodes, "blocks",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, shape)],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_model_in_parts_matches_onnxruntime(monkeypatch, tmp_path):
    monkeypatch.setenv("SLIMC_CACHE_DIR", "off")
    monkeypatch.setenv("SLIMC_COMPILE_JOBS", "2")
    monkeypatch.setattr(parts, "MIN_SPLIT_BYTES", 0)
    monkeypatch.setattr(parts, "MIN_PART_BYTES", 1)
    model = _repeated_blocks()
    x = np.random.default_rng(1).standard_normal((1, 16, 20, 20)).astype(np.float32)
    mod = slimc.compile(model)
    executable = mod._last.executable
    assert len(executable.parts) >= 2, executable.parts
    assert executable.duplicates, "the repeated conv + relu kernels were compiled apart"
    assert "; ---- part 1 of" in mod.llvm_ir
    ort = pytest.importorskip("onnxruntime")
    want = ort.InferenceSession(model.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(mod(x)[0], want, rtol=1e-4, atol=1e-4)
    mod.export(str(tmp_path / "art"))
    np.testing.assert_allclose(slimc.load(str(tmp_path / "art"))(x)[0], want, rtol=1e-4, atol=1e-4)


def test_cached_parts_give_their_assembly(monkeypatch, tmp_path):
    from slimc.runtime.cache import CachedModule

    monkeypatch.setenv("SLIMC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("SLIMC_COMPILE_JOBS", "2")
    monkeypatch.setattr(parts, "MIN_SPLIT_BYTES", 0)
    monkeypatch.setattr(parts, "MIN_PART_BYTES", 1)
    model = _repeated_blocks(blocks=2)
    first = slimc.compile(model)
    assert first.llvm_ir.count(parts.PART_HEADER) >= 2
    again = slimc.compile(model)  # from the cache: the IR of every part, read back
    assert isinstance(again._current(), CachedModule)
    assert again.llvm_ir == first.llvm_ir
    listing = again.assembly
    for k in first.kernels:
        assert k.name in listing


@pytest.mark.parametrize("tile", [2, 4])
def test_the_manifest_records_each_kernels_choices(tmp_path, monkeypatch, tile):
    """The Winograd tile forced (not the host's cost model, which differs by CPU kind)."""
    import json

    from slimc.passes.winograd import Winograd

    monkeypatch.setenv("SLIMC_CACHE_DIR", "off")
    mod = slimc.compile(_repeated_blocks(blocks=2), passes=[Winograd(force=tile)],
                        disable_passes=["winograd"])
    mod.export(str(tmp_path / "art"))
    with open(tmp_path / "art" / "manifest.json") as f:
        kernels = json.load(f)["kernels"]
    assert {k["pipeline"] for k in kernels} <= set(parts.PIPELINES)
    convs = [k for k in kernels if "winograd_conv2d" in k["ops"]]
    assert len(convs) == 2, kernels
    for k in convs:
        assert k["pipeline"] == "vector"
        assert [(c["op"], c["tile"]) for c in k["choices"]] == [("winograd_conv2d", tile)], k


def test_part_cache_serves_a_model_with_other_weights(monkeypatch, tmp_path):
    """Same architecture, other weights: the model cache misses, every part is found."""
    from slimc.cli import main

    monkeypatch.setenv("SLIMC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(parts, "MIN_SPLIT_BYTES", 0)
    monkeypatch.setattr(parts, "MIN_PART_BYTES", 1)
    first_model = _repeated_blocks(blocks=2)
    other = _repeated_blocks(blocks=2)
    for init in other.graph.initializer:  # other weights: the model cache misses
        init.raw_data = (np.frombuffer(init.raw_data, np.float32) * -0.5).tobytes()
    first = slimc.compile(first_model)
    assert first._last.executable.cached_parts == 0
    second = slimc.compile(other)
    executable = second._last.executable
    assert executable.cached_parts == len(executable.parts) >= 2
    ort = pytest.importorskip("onnxruntime")
    x = np.random.default_rng(2).standard_normal((1, 16, 20, 20)).astype(np.float32)
    want = ort.InferenceSession(other.SerializeToString(),
                                providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(second(x)[0], want, rtol=1e-4, atol=1e-4)
    assert main(["cache"]) == 0
    assert main(["cache", "--clear"]) == 0
    assert not any((tmp_path / "cache").iterdir())
