"""The CUDA backend checked without a GPU: target strings, PTX that ptxas assembles for sm_80
and sm_90, and results of the kernels run by the emulator (runtime/gpu_emulator.py) against
slimc's interpreter. Op families with GPU generators of their own have their own files
(test_cuda_gemm.py, test_cuda_reduce.py); this one covers the elementwise path, index maps,
the CPU generators run one work item per thread, libdevice math, and what is refused.
"""

from __future__ import annotations

import numpy as np
import pytest

import slimc
from slimc.codegen.cuda.ptx import legal_callees, libdevice_path, ptxas_path
from slimc.ir import UnsupportedError, interpret, parse
from slimc.runtime.cuda_driver import no_gpu_reason

from .cuda_check import emulated

needs_ptxas = pytest.mark.skipif(ptxas_path() is None, reason="ptxas not installed "
                                 "(pip install nvidia-cuda-nvcc)")
needs_libdevice = pytest.mark.skipif(libdevice_path() is None, reason="libdevice not installed "
                                     "(pip install nvidia-nvvm)")
no_gpu = pytest.mark.skipif(no_gpu_reason() is None, reason="a GPU is present")
needs_gpu = pytest.mark.skipif(no_gpu_reason() is not None, reason=str(no_gpu_reason()))

TARGET = "cuda:sm_80"


def graph(body: str, params: str, results: str):
    return parse(f"# slimc-ir v1\ngraph @g({params}) -> ({results}) {{\n{body}\n}}\n")


def check(g, *arrays, rtol=1e-5, atol=1e-6, seeds=(0,)):
    """Compile for CUDA, assemble the PTX for both architectures, emulate, compare."""
    return emulated(g, list(arrays), rtol=rtol, atol=atol, seeds=seeds)


def rand(*shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# ----- targets --------------------------------------------------------------------------------

def test_target_strings():
    assert slimc.Target("cuda:sm_90").backend.target.cpu == "sm_90"
    assert slimc.Target("CUDA:SM_80").backend.target.cpu == "sm_80"
    with pytest.raises(ValueError, match="sm_XX"):
        slimc.Target("cuda:sm_61")
    if no_gpu_reason() is not None:  # plain "cuda" without a GPU means Ampere
        assert slimc.Target("cuda").backend.target.cpu == "sm_80"


@no_gpu
def test_calling_without_a_gpu_says_so_and_points_to_emulate():
    g = graph("  %y = relu(%x) : f32[4]\n  return %y", "%x: f32[4]", "f32[4]")
    mod = slimc.compile(g, target=TARGET)
    with pytest.raises(slimc.SlimcError, match="emulate"):
        mod(np.zeros(4, np.float32))
    np.testing.assert_array_equal(mod.emulate(np.array([-1, 2, -3, 4], np.float32))[0],
                                  [0, 2, 0, 4])


def test_cpu_modules_have_no_ptx_and_do_not_emulate():
    g = graph("  %y = relu(%x) : f32[4]\n  return %y", "%x: f32[4]", "f32[4]")
    mod = slimc.compile(g)
    with pytest.raises(slimc.SlimcError, match="PTX"):
        mod.ptx
    with pytest.raises(slimc.SlimcError, match="GPU modules"):
        mod.emulate(np.zeros(4, np.float32))


# ----- elementwise and index maps --------------------------------------------------------------

def test_elementwise_chain_with_broadcast():
    g = graph("""  %a = mul(%x, %y) : f32[3,5,7]
  %b = add(%a, %y) : f32[3,5,7]
  %c = sigmoid(%b) : f32[3,5,7]
  %d = tanh(%c) : f32[3,5,7]
  return %d""", "%x: f32[3,5,7], %y: f32[5,1]", "f32[3,5,7]")
    check(g, rand(3, 5, 7), rand(5, 1, seed=1), seeds=(0, 1))


def test_more_threads_than_elements_and_several_blocks():
    # 1000 elements: 4 blocks of 256 threads, the last 24 threads idle
    g = graph("  %y = neg(%x) : f32[1000]\n  return %y", "%x: f32[1000]", "f32[1000]")
    check(g, rand(1000))


def test_index_maps_transpose_slice_concat_gather_where():
    g = graph("""  const %starts: i64[1] = [1]
  const %ends: i64[1] = [3]
  const %axes: i64[1] = [1]
  const %zero: f32[] = [0.0]
  %t = transpose(%x) {perm=[1, 0, 2]} : f32[5,3,4]
  %s = slice(%t, %starts, %ends, %axes) : f32[5,2,4]
  %c = concat(%s, %s) {axis=1} : f32[5,4,4]
  %g = gather(%c, %idx) {axis=0} : f32[2,4,4]
  %m = greater(%g, %zero) : bool[2,4,4]
  %w = where(%m, %g, %zero) : f32[2,4,4]
  return %w""", "%x: f32[3,5,4], %idx: i64[2]", "f32[2,4,4]")
    check(g, rand(3, 5, 4), np.array([4, -4], np.int64))


@needs_libdevice
def test_math_without_a_ptx_instruction_calls_libdevice():
    g = graph("""  %a = abs(%x) : f32[64]
  %l = log(%a) : f32[64]
  %s = sin(%x) : f32[64]
  %e = erf(%x) : f32[64]
  %p = pow(%a, %x) : f32[64]
  %q = add(%l, %s) : f32[64]
  %r = add(%q, %e) : f32[64]
  %o = add(%r, %p) : f32[64]
  return %o""", "%x: f32[64]", "f32[64]")
    mod = check(g, rand(64) * 3, rtol=1e-5, atol=1e-5)
    assert "__nv_logf" in mod.llvm_ir and "call float @llvm.log" not in mod.llvm_ir


def test_cpu_generators_run_one_work_item_per_thread():
    g = graph("""  const %pads: i64[8] = [0, 0, 1, 1, 0, 0, 1, 1]
  const %axis: i64[] = [3]
  %p = max_pool(%x) {kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1]} : f32[2,3,4,4]
  %q = pad(%p, %pads) {mode="reflect"} : f32[2,3,6,6]
  %r = cumsum(%q, %axis) : f32[2,3,6,6]
  return %r""", "%x: f32[2,3,8,8]", "f32[2,3,6,6]")
    check(g, rand(2, 3, 8, 8), rtol=1e-5, atol=1e-5)


# ----- what is refused ----------------------------------------------------------------------------

def test_a_call_nvptx_cannot_lower_is_refused_not_a_crash():
    ir_text = "declare float @llvm.log.f32(float)\ndeclare float @expf(float)\n"
    with pytest.raises(UnsupportedError, match=r"expf.*\n.*llvm.log.f32"):
        legal_callees(ir_text)
    legal_callees("declare float @llvm.exp2.f32(float)\ndeclare i32 "
                  "@llvm.nvvm.read.ptx.sreg.tid.x()\ndeclare float @__nv_logf(float)\n")


def test_cpu_only_ops_are_refused_by_name():
    g = graph("  %y = matmul_integer(%a, %b) : i32[2,2]\n  return %y",
              "%a: u8[2,3], %b: i8[3,2]", "i32[2,2]")
    with pytest.raises(UnsupportedError, match="matmul_integer"):
        slimc.compile(g, target=TARGET)


# ----- export and load ----------------------------------------------------------------------------

def test_export_writes_ptx_and_load_runs_it(tmp_path):
    g = graph("""  %a = mul(%x, %x) : f32[4,33]
  %s = reduce_sum(%a) {axes=[1], keepdims=0} : f32[4]
  return %s, %a""", "%x: f32[4,33]", "f32[4], f32[4,33]")
    mod = slimc.compile(g, target=TARGET)
    mod.export(str(tmp_path / "art"))
    files = sorted(p.name for p in (tmp_path / "art").iterdir())
    assert {"manifest.json", "model.ptx", "model.ll", "weights.bin"} <= set(files)
    if ptxas_path() is not None:
        assert "model.cubin" in files
    loaded = slimc.load(str(tmp_path / "art"))
    assert loaded.ptx == mod.ptx
    x = rand(4, 33)
    for got, want in zip(loaded.emulate(x), interpret(g, x)):
        np.testing.assert_allclose(got, want, rtol=1e-5)
    if no_gpu_reason() is not None:
        with pytest.raises(slimc.SlimcError, match="emulate"):
            loaded(x)
    ptx = tmp_path / "art" / "model.ptx"
    ptx.write_text(ptx.read_text().replace("ret;", "ret:", 1))  # same size, other bytes
    with pytest.raises(slimc.SlimcError, match="checksum"):
        slimc.load(str(tmp_path / "art"))


# ----- the emulator catches a missing barrier in generated kernels ------------------------------

BARRIER_CALL = "call void @llvm.nvvm.barrier.cta.sync.aligned.all("


def _without_barrier(mod, which: int):
    """The module's GPU program with the line of its `which`-th barrier deleted from the IR."""
    program = mod._current().program
    lines = program.llvm_ir.split("\n")
    at = [i for i, line in enumerate(lines) if BARRIER_CALL in line][which]
    program.llvm_ir = "\n".join(lines[:at] + lines[at + 1:])
    program._emulator = None
    return program


@pytest.mark.parametrize("which", [0, 1])
def test_a_removed_barrier_in_the_tiled_matmul_is_caught(which):
    g = graph("  %y = matmul(%a, %b) : f32[40,48]\n  return %y",
              "%a: f32[40,70], %b: f32[70,48]", "f32[40,48]")
    a, b = rand(40, 70), rand(70, 48, seed=1)
    mod = check(g, a, b, rtol=1e-4, atol=1e-4)
    assert mod.llvm_ir.count(BARRIER_CALL) == 2  # the K loop: before and after the tile copy
    broken = _without_barrier(mod, which)
    got = broken.emulate(a, b)[0]
    assert not np.allclose(got, a @ b, rtol=1e-4, atol=1e-4, equal_nan=False)


def test_a_removed_barrier_in_a_block_reduction_is_caught():
    g = graph("  %y = softmax(%x) {axis=1} : f32[3,1000]\n  return %y",
              "%x: f32[3,1000]", "f32[3,1000]")
    x = rand(3, 1000)
    mod = check(g, x, rtol=1e-5, atol=1e-6)
    assert BARRIER_CALL in mod.llvm_ir
    got = _without_barrier(mod, 0).emulate(x)[0]
    assert not np.allclose(got, interpret(g, x)[0], rtol=1e-4, atol=1e-5)


# ----- on a GPU (`python -m pytest -m gpu`; skipped without one) --------------------------------

@pytest.mark.gpu
@needs_gpu
def test_the_demo_cnn_on_the_gpu_matches_the_interpreter_and_the_emulator(tmp_path):
    from slimc.demo import build_demo_model

    mod = slimc.compile(build_demo_model(), target="cuda",
                        input_shapes={"image": (2, 3, 32, 32)})
    g = mod.graph
    x = rand(2, 3, 32, 32)
    want = interpret(g, x)
    for _ in range(3):  # the first call launches kernel by kernel, later ones a CUDA graph
        for got, w in zip(mod(x), want):
            np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)
    for got, w in zip(mod.emulate(x), want):
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)
    profile = mod.profile(x, repeat=5)
    assert [r[0] for r in profile.rows] == [k.name for k in mod.kernels]
    mod.export(str(tmp_path / "art"))
    loaded = slimc.load(str(tmp_path / "art"))
    for got, w in zip(loaded(x), want):
        np.testing.assert_allclose(got, w, rtol=1e-4, atol=1e-5)


@pytest.mark.gpu
@needs_gpu
def test_gpu_tensors_in_give_gpu_tensors_out():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this torch has no CUDA")
    g = graph("""  %a = mul(%x, %y) : f32[3,37]
  %s = reduce_sum(%a) {axes=[1], keepdims=0} : f32[3]
  return %s, %a""", "%x: f32[3,37], %y: f32[37]", "f32[3], f32[3,37]")
    mod = slimc.compile(g, target="cuda")
    x, y = rand(3, 37), rand(37, seed=1)
    got = mod(torch.from_numpy(x).cuda(), y)  # one GPU tensor, one numpy array
    assert all(isinstance(t, torch.Tensor) and t.is_cuda for t in got)
    for t, w in zip(got, interpret(g, x, y)):
        np.testing.assert_allclose(t.cpu().numpy(), w, rtol=1e-5, atol=1e-6)
