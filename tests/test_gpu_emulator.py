"""The GPU emulator (runtime/gpu_emulator*.py): hand-written NVPTX kernels run on the CPU against
numpy, and the classic GPU bugs (a missing barrier, barrier divergence, an element never
written) show as wrong answers or errors, never as a crash or a hang."""

from __future__ import annotations

import ctypes
import ctypes.util
import time

import llvmlite.binding as llvm
import numpy as np
import pytest

from slimc.codegen.cpu.target import ensure_llvm_initialized
from slimc.codegen.cuda.ptx import libdevice_path, ptxas, ptxas_path
from slimc.runtime.gpu_emulator import ARITHMETIC, CONTEXT_BYTES, Emulator, EmulatorError
from slimc.runtime.gpu_emulator_ir import runtime_ir

from .gpu_kernels import (AXPB, BLOCK_SUM, EARLY_EXIT, GEOMETRY, HEAD, KERNELS, LOST_UPDATE,
                          MATMUL, MEMCPY, ROTATE, SHUFFLE_PROBE, SHUFFLE_VS_BARRIER, TILE_REUSE,
                          TWO_BARRIERS, WARP_SUM, without_marked)

RNG = np.random.default_rng(0)

def _f32(*shape) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


# ----------------------------------------------------------------------------------------------
# Kernels against numpy
# ----------------------------------------------------------------------------------------------


def test_elementwise_against_numpy_and_untouched_elements_stay_nan():
    emu = Emulator(AXPB)
    assert not emu.kernels["axpb"].fibers  # no barrier: a plain loop over the threads
    n, size = 1000, 1024  # the last block's threads past n write nothing
    x = _f32(size)
    y = np.full(size, np.nan, np.float32)  # the caller's NaN: what no thread writes stays NaN
    emu.launch("axpb", (size // 128,), (128,), [x.ctypes.data, y.ctypes.data, 2.5, -1.0, n])
    np.testing.assert_allclose(y[:n], 2.5 * x[:n] - 1.0, rtol=1e-6)
    assert np.isnan(y[n:]).all()


def test_geometry_of_3d_blocks_and_grids():
    emu = Emulator(GEOMETRY)
    block, grid = (4, 3, 2), (2, 3, 2)
    out = np.full(24 * 12, -1, np.int32)
    emu.launch("geometry", grid, block, [out.ctypes.data])
    t = np.arange(24)
    tid = t % 4 + 10 * (t // 4 % 3) + 100 * (t // 12)
    b = np.arange(12)
    bid = b % 2 + 10 * (b // 2 % 3) + 100 * (b // 6)
    np.testing.assert_array_equal(out.reshape(12, 24), tid[None, :] + 1000 * bid[:, None])


def test_block_sum_with_a_barrier_inside_a_loop():
    emu = Emulator(BLOCK_SUM)
    assert emu.kernels["block_sum"].fibers
    x = _f32(64, 256)
    out = np.full(64, np.nan, np.float32)
    emu.launch("block_sum", 64, 256, [x.ctypes.data, out.ctypes.data])
    np.testing.assert_allclose(out, x.sum(1), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_a_missing_barrier_gives_a_wrong_answer(seed):
    x = _f32(8, 256)
    want = x.sum(1)
    # without the barrier in the loop: a thread reads a partial sum before it is written
    out = np.full(8, np.nan, np.float32)
    Emulator(without_marked(BLOCK_SUM, "LOOP_BARRIER"), seed=seed).launch(
        "block_sum", 8, 256, [x.ctypes.data, out.ctypes.data])
    assert not np.allclose(out, want, rtol=1e-4, atol=1e-4)
    # without any barrier: a thread reads shared memory nobody wrote yet, which reads NaN
    out[:] = 0
    emu = Emulator(without_marked(BLOCK_SUM, "LOOP_BARRIER", "FIRST_BARRIER"), seed=seed)
    assert not emu.kernels["block_sum"].fibers
    emu.launch("block_sum", 8, 256, [x.ctypes.data, out.ctypes.data])
    assert np.isnan(out).any()


def test_the_schedule_is_repeatable_for_a_seed():
    x = _f32(8, 256)
    racy = without_marked(BLOCK_SUM, "LOOP_BARRIER")
    runs = []
    for seed in (7, 7, 8):
        out = np.zeros(8, np.float32)
        Emulator(racy, seed=seed).launch("block_sum", 8, 256, [x.ctypes.data, out.ctypes.data])
        runs.append(out)
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


def _tile_sums(x: np.ndarray) -> np.ndarray:
    """TILE_REUSE's answer: per block and thread, the tiles' sums of the next warp's part."""
    parts = x.reshape(x.shape[0], -1, 4, 32).sum((1, 3))  # [block, warp]
    return np.repeat(np.roll(parts, -1, axis=1), 32, axis=1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_reusing_shared_memory_across_warps_needs_the_barrier_before_the_overwrite(seed):
    # Warps run from barrier to barrier one after another (in some segments): without the
    # barrier before the copy, a warp that finished its tile overwrites its part of it while the
    # warp before it has yet to read it. Run in lockstep, every warp reads before any writes.
    x = _f32(8, 4, 128)
    y = np.full((8, 128), np.nan, np.float32)
    Emulator(TILE_REUSE, seed=seed).launch("tile_reuse", 8, 128,
                                           [x.ctypes.data, y.ctypes.data, 4])
    np.testing.assert_allclose(y, _tile_sums(x), rtol=1e-4, atol=1e-4)
    y[:] = np.nan
    Emulator(without_marked(TILE_REUSE, "BEFORE_OVERWRITE"), seed=seed).launch(
        "tile_reuse", 8, 128, [x.ctypes.data, y.ctypes.data, 4])
    assert not np.allclose(y, _tile_sums(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_an_update_lost_across_a_shuffle_shows(seed):
    # the other interleaving: warps in lockstep read the counter before any of them writes it
    out = np.full(32, np.nan, np.float32)
    Emulator(LOST_UPDATE, seed=seed).launch("count_warps", 32, 128, [out.ctypes.data])
    assert (out >= 1).all() and (out <= 4).all()
    assert (out < 4).any()


@pytest.mark.parametrize("block", [(128,), (32, 4), (16, 8), (8, 4, 2)])
@pytest.mark.parametrize("mode", ["bfly", "down"])
def test_warp_shuffle_reduction(mode, block):
    emu = Emulator(WARP_SUM.replace("MODE", mode))
    threads = int(np.prod(block))
    x = _f32(3 * threads)
    y = np.full_like(x, np.nan)
    emu.launch("warp_sum", 3, block, [x.ctypes.data, y.ctypes.data])
    sums = x.reshape(-1, 32).sum(1)
    got = y.reshape(-1, 32)
    if mode == "bfly":  # a butterfly leaves the sum in every lane
        np.testing.assert_allclose(got, np.repeat(sums[:, None], 32, 1), rtol=1e-4, atol=1e-4)
    else:  # shifting down leaves it in lane 0
        np.testing.assert_allclose(got[:, 0], sums, rtol=1e-4, atol=1e-4)


def _cuda_shuffle(mode: str, lane: np.ndarray, b: int, width: int) -> np.ndarray:
    """The source lane of CUDA's __shfl_{xor,down,up,}_sync(mask, v, b, width), as its
    programming guide describes them (not as PTX computes them)."""
    start = lane // width * width
    if mode == "bfly":  # a lane of a later group of `width` lanes gives back the own value
        src = lane ^ b
        return np.where(src < start + width, src, lane)
    if mode == "down":
        return np.where(lane % width + b < width, lane + b, lane)
    if mode == "up":
        return np.where(lane % width >= b, lane - b, lane)
    return start + b % width


@pytest.mark.parametrize("mode, b, width", [
    ("bfly", 1, 32), ("bfly", 16, 32), ("bfly", 4, 8), ("bfly", 3, 16),
    ("down", 1, 32), ("down", 5, 32), ("down", 3, 8), ("down", 2, 16),
    ("up", 1, 32), ("up", 7, 32), ("up", 2, 16), ("up", 3, 4),
    ("idx", 0, 32), ("idx", 19, 32), ("idx", 3, 8), ("idx", 13, 16),
])
def test_shuffle_modes_and_widths_follow_cuda(mode, b, width):
    emu = Emulator(SHUFFLE_PROBE.replace("MODE", mode))
    # CUDA packs the segment mask into c[12:8]; the clamp c[4:0] is 0 for up, 31 otherwise
    c = ((32 - width) << 8) | (0 if mode == "up" else 0x1F)
    out = np.zeros(2 * 64, np.int32)
    emu.launch("probe", 2, 64, [out.ctypes.data, b, c])
    t = np.arange(64)
    src = t // 32 * 32 + _cuda_shuffle(mode, t % 32, b, width)
    np.testing.assert_array_equal(out.reshape(2, 64), np.stack([src, 1000 + src]))


def test_shuffles_in_a_partial_last_warp():
    # 40 threads: a warp of 32 and one of 8; a lane past the block's end reads -1 (NaN bits)
    emu = Emulator(SHUFFLE_PROBE.replace("MODE", "idx"))
    out = np.zeros(40, np.int32)
    emu.launch("probe", 1, 40, [out.ctypes.data, 0, 0x1F])
    np.testing.assert_array_equal(out, np.repeat([0, 32], [32, 8]))
    emu = Emulator(SHUFFLE_PROBE.replace("MODE", "down"))
    emu.launch("probe", 1, 40, [out.ctypes.data, 4, 0x1F])
    t = np.arange(40)
    np.testing.assert_array_equal(out, np.where(t + 4 < 40, np.where(t % 32 < 28, t + 4, t), -1))


@pytest.mark.parametrize("m, n, k", [(32, 48, 64), (40, 24, 36)])
def test_tiled_matmul(m, n, k):
    emu = Emulator(MATMUL)
    a, b = _f32(m, k), _f32(k, n)
    c = np.full((m, n), np.nan, np.float32)
    emu.launch("matmul", (-(-n // 16), -(-m // 16)), (16, 16),
               [a.ctypes.data, b.ctypes.data, c.ctypes.data, m, n, k])
    np.testing.assert_allclose(c, a @ b, rtol=1e-4, atol=1e-4)


def test_tiled_matmulwithout_marked_its_second_barrier_is_wrong():
    # a fast thread loads the next tile while slower ones still read the current one
    emu = Emulator(without_marked(MATMUL, "TILES_USED"))
    a, b = _f32(32, 64), _f32(64, 32)
    c = np.full((32, 32), np.nan, np.float32)
    emu.launch("matmul", (2, 2), (16, 16), [a.ctypes.data, b.ctypes.data, c.ctypes.data,
                                            32, 32, 64])
    assert not np.allclose(c, a @ b, rtol=1e-4, atol=1e-4)


def test_barriers_in_a_called_function_and_values_kept_across_barriers():
    emu = Emulator(ROTATE)
    assert emu.kernels["rotate"].fibers  # its barriers are in @sync
    x = _f32(4, 256)
    y = np.full_like(x, np.nan)
    emu.launch("rotate", 4, 256, [x.ctypes.data, y.ctypes.data])
    np.testing.assert_array_equal(y, np.roll(x, -8, axis=1))


def test_intrinsics_mangled_with_address_spaces():
    emu = Emulator(MEMCPY)
    src, src2 = np.arange(10, dtype=np.float32), np.arange(5, 15, dtype=np.float32)
    dst, dst2 = np.zeros_like(src), np.zeros_like(src2)
    emu.launch("copy", 1, 32, [dst.ctypes.data, src.ctypes.data, dst2.ctypes.data,
                               src2.ctypes.data, 40])
    np.testing.assert_array_equal(dst, src)
    np.testing.assert_array_equal(dst2, src2)


LIBDEVICE = libdevice_path()

# y = tanh(log(exp(x))) in f64 and yf = exp(xf) in f32 through libdevice, whose code calls NVVM's
# arithmetic intrinsics (add.rn.d, d2i.hi, lohi.i2d, rcp.approx.ftz.d, ex2.approx.ftz.f32, ...)
LIBDEVICE_MATH = HEAD + """
declare double @__nv_exp(double)
declare double @__nv_log(double)
declare double @__nv_tanh(double)
declare float @__nv_expf(float)

define ptx_kernel void @math(ptr %x, ptr %y, ptr %xf, ptr %yf) {
  %t = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %t64 = zext i32 %t to i64
  %px = getelementptr double, ptr %x, i64 %t64
  %v = load double, ptr %px, align 8
  %e = call double @__nv_exp(double %v)
  %l = call double @__nv_log(double %e)
  %th = call double @__nv_tanh(double %l)
  %py = getelementptr double, ptr %y, i64 %t64
  store double %th, ptr %py, align 8
  %pxf = getelementptr float, ptr %xf, i64 %t64
  %vf = load float, ptr %pxf, align 4
  %ef = call float @__nv_expf(float %vf)
  %pyf = getelementptr float, ptr %yf, i64 %t64
  store float %ef, ptr %pyf, align 4
  ret void
}
"""


@pytest.mark.skipif(LIBDEVICE is None, reason="libdevice (nvidia-nvvm wheel) missing")
def test_libdevice_math_through_nvvm_arithmetic_intrinsics():
    # as the CUDA backend does: link libdevice, make it internal, optimize for NVPTX (which
    # resolves __nvvm_reflect); the emulator gets the optimized module
    ensure_llvm_initialized(all_targets=True)
    module = llvm.parse_assembly(LIBDEVICE_MATH)
    with open(LIBDEVICE, "rb") as f:
        libdevice = llvm.parse_bitcode(f.read())
    libdevice.triple, libdevice.data_layout = module.triple, module.data_layout
    module.link_in(libdevice)
    for fn in module.functions:
        if fn.name.startswith("__nv_") and not fn.is_declaration:
            fn.linkage = "internal"
    machine = llvm.Target.from_triple("nvptx64-nvidia-cuda").create_target_machine(
        cpu="sm_80", features="+ptx80", opt=3)
    builder = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(3))
    builder.getModulePassManager().run(module, builder)
    assert "@llvm.nvvm.d2i.hi" in str(module)
    emu = Emulator(str(module))
    x = RNG.uniform(-20, 20, 256)
    xf = x.astype(np.float32)
    y, yf = np.full_like(x, np.nan), np.full_like(xf, np.nan)
    emu.launch("math", 1, 256, [x.ctypes.data, y.ctypes.data, xf.ctypes.data, yf.ctypes.data])
    np.testing.assert_allclose(y, np.tanh(np.log(np.exp(x))), rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(yf, np.exp(xf), rtol=2e-7)


def test_libdevice_functions_declared_only_come_from_libm():
    ir = HEAD + """
declare double @__nv_exp(double)
declare float @__nv_tanhf(float)

define ptx_kernel void @math(ptr %x, ptr %y, ptr %xf, ptr %yf) {
  %t = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %t64 = zext i32 %t to i64
  %px = getelementptr double, ptr %x, i64 %t64
  %v = load double, ptr %px, align 8
  %e = call double @__nv_exp(double %v)
  %py = getelementptr double, ptr %y, i64 %t64
  store double %e, ptr %py, align 8
  %pxf = getelementptr float, ptr %xf, i64 %t64
  %vf = load float, ptr %pxf, align 4
  %th = call float @__nv_tanhf(float %vf)
  %pyf = getelementptr float, ptr %yf, i64 %t64
  store float %th, ptr %pyf, align 4
  ret void
}
"""
    x = RNG.uniform(-5, 5, 64)
    xf = x.astype(np.float32)
    y, yf = np.full_like(x, np.nan), np.full_like(xf, np.nan)
    Emulator(ir).launch("math", 1, 64, [x.ctypes.data, y.ctypes.data, xf.ctypes.data,
                                        yf.ctypes.data])
    np.testing.assert_allclose(y, np.exp(x), rtol=1e-15)
    np.testing.assert_allclose(yf, np.tanh(xf), rtol=1e-6)
    with pytest.raises(EmulatorError, match=r"calls __nv_normcdff \(libdevice's; the host's libm "
                                            r"has no normcdff\)"):
        Emulator(HEAD + """
declare float @__nv_normcdff(float)
define ptx_kernel void @cdf(ptr %x) {
  %v = load float, ptr %x, align 4
  %c = call float @__nv_normcdff(float %v)
  store float %c, ptr %x, align 4
  ret void
}
""")


@pytest.mark.skipif(LIBDEVICE is None, reason="libdevice (nvidia-nvvm wheel) missing")
def test_arithmetic_replacements_have_libdevices_signatures_and_compile():
    with open(LIBDEVICE, "rb") as f:
        libdevice = llvm.parse_bitcode(f.read())
    declared = {fn.name[len("llvm.nvvm."):]: str(fn.global_value_type)
                for fn in libdevice.functions if fn.name.startswith("llvm.nvvm.")}
    for name, (ret, params, _) in ARITHMETIC.items():
        assert declared.get(name, f"{ret} ({', '.join(params)})") == \
            f"{ret} ({', '.join(params)})", name
    assert sorted(set(declared) - set(ARITHMETIC)) == ["prmt"]  # a byte permute: not needed
    llvm.parse_assembly(runtime_ir(set(ARITHMETIC))).verify()


def test_directed_rounding():
    ir = HEAD + """
declare float @llvm.nvvm.add.rm.f(float, float)
declare float @llvm.nvvm.add.rp.f(float, float)
declare float @llvm.nvvm.add.rn.f(float, float)
declare i32 @llvm.nvvm.f2i.rm(float)

define ptx_kernel void @rounding(ptr %out, float %a, float %b) {
  %down = call float @llvm.nvvm.add.rm.f(float %a, float %b)
  %up = call float @llvm.nvvm.add.rp.f(float %a, float %b)
  %near = call float @llvm.nvvm.add.rn.f(float %a, float %b)
  %p1 = getelementptr float, ptr %out, i64 1
  %p2 = getelementptr float, ptr %out, i64 2
  %p3 = getelementptr float, ptr %out, i64 3
  store float %down, ptr %out, align 4
  store float %up, ptr %p1, align 4
  store float %near, ptr %p2, align 4
  %floor = call i32 @llvm.nvvm.f2i.rm(float %b)
  %ff = sitofp i32 %floor to float
  store float %ff, ptr %p3, align 4
  ret void
}
"""
    out = np.zeros(4, np.float32)
    Emulator(ir).launch("rounding", 1, 1, [out.ctypes.data, 1.0, 1e-10])
    one = np.float32(1)
    assert list(out) == [one, np.nextafter(one, np.float32(2)), one, 0]


# ----------------------------------------------------------------------------------------------
# Errors: clear, never a crash or a hang
# ----------------------------------------------------------------------------------------------


def test_barrier_divergence_raises():
    emu = Emulator(EARLY_EXIT)
    with pytest.raises(EmulatorError, match=r"kernel 'early_exit', block \(\d+, 0, 0\): barrier "
                       r"divergence: thread \(0, 0, 0\) finished while thread \(\d+, 0, 0\) "
                       r"at barrier 1 of @early_exit waits"):
        emu.launch("early_exit", 4, 64, [0])


def test_threads_at_different_barriers_raise():
    with pytest.raises(EmulatorError, match=r"wait at different barriers: thread \(\d+, 0, 0\) at "
                       r"barrier [12] of @two_barriers, thread \(\d+, 0, 0\) at barrier [12]"):
        Emulator(TWO_BARRIERS).launch("two_barriers", 1, 64, [])


@pytest.mark.parametrize("seed", range(6))  # a segment runs warp by warp or in lockstep
def test_a_shuffle_against_a_barrier_raises(seed):
    with pytest.raises(EmulatorError, match=r"thread \(\d+, 0, 0\) at shuffle 1 of "
                       r"@shuffle_vs_barrier waits for its warp, but thread \(0, 0, 0\) at "
                       r"barrier 1 of @shuffle_vs_barrier waits"):
        Emulator(SHUFFLE_VS_BARRIER, seed=seed).launch("shuffle_vs_barrier", 1, 64, [])


@pytest.mark.parametrize("seed", range(6))
def test_lanes_at_different_shuffles_raise(seed):
    ir = HEAD + """
define ptx_kernel void @split_warp() {
entry:
  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %bit = and i32 %tid, 1
  %odd = icmp ne i32 %bit, 0
  br i1 %odd, label %a, label %b
a:
  %x = call float @llvm.nvvm.shfl.sync.bfly.f32(i32 -1, float 1.0, i32 1, i32 31)
  br label %exit
b:
  %y = call float @llvm.nvvm.shfl.sync.down.f32(i32 -1, float 2.0, i32 1, i32 31)
  br label %exit
exit:
  ret void
}
"""
    with pytest.raises(EmulatorError, match=r"lanes of one warp wait at different shuffles: "
                       r"thread \(\d+, 0, 0\) at shuffle [12] of @split_warp, thread "
                       r"\(\d+, 0, 0\) at shuffle [12] of @split_warp"):
        Emulator(ir, seed=seed).launch("split_warp", 2, 64, [])


def test_bad_launches_raise():
    emu = Emulator(AXPB)
    x = np.zeros(4, np.float32)
    with pytest.raises(EmulatorError, match=r"'axpb': takes 5 arguments .* got 4"):
        emu.launch("axpb", 1, 4, [x.ctypes.data, x.ctypes.data, 1.0, 2.0])
    with pytest.raises(EmulatorError, match="2048 threads; CUDA allows 1024"):
        emu.launch("axpb", 1, (64, 32), [x.ctypes.data, x.ctypes.data, 1.0, 2.0, 4])
    with pytest.raises(EmulatorError, match="argument 0 \\(ptr\\) must be an int"):
        emu.launch("axpb", 1, 4, [x, x.ctypes.data, 1.0, 2.0, 4])
    with pytest.raises(EmulatorError, match="no kernel 'nope'"):
        emu.launch("nope", 1, 4, [])
    with pytest.raises(EmulatorError, match="grid must be 1 to 3 positive ints"):
        emu.launch("axpb", (1, 0), 4, [x.ctypes.data, x.ctypes.data, 1.0, 2.0, 4])


def test_an_unknown_nvvm_intrinsic_is_named():
    ir = HEAD + """
declare i64 @llvm.nvvm.read.ptx.sreg.clock64()
define ptx_kernel void @timed(ptr %out) {
  %c = call i64 @llvm.nvvm.read.ptx.sreg.clock64()
  store i64 %c, ptr %out, align 8
  ret void
}
"""
    with pytest.raises(EmulatorError, match=r"does not implement llvm\.nvvm\.read\.ptx\.sreg"
                                            r"\.clock64"):
        Emulator(ir)


def test_an_unresolved_function_is_named_not_a_crash():
    ir = HEAD + """
declare void @no_such_function()
define ptx_kernel void @calls() {
  call void @no_such_function()
  ret void
}
"""
    with pytest.raises(EmulatorError, match="calls no_such_function, defined neither in it"):
        Emulator(ir)


def test_a_stack_overflow_is_reported():
    # a 125 KiB local array in a fiber's 124 KiB of usable stack: it runs into the guard bytes
    ir = HEAD + """
define ptx_kernel void @deep() {
entry:
  %buf = alloca [32000 x float], align 16
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0)
  br label %loop
loop:
  %i = phi i64 [ 0, %entry ], [ %i1, %loop ]
  %p = getelementptr [32000 x float], ptr %buf, i64 0, i64 %i
  store volatile float 1.0, ptr %p, align 4
  %i1 = add i64 %i, 1
  %more = icmp ult i64 %i1, 32000
  br i1 %more, label %loop, label %done
done:
  ret void
}
"""
    with pytest.raises(EmulatorError, match="'deep': a thread overflowed its 128 KiB stack"):
        Emulator(ir).launch("deep", 1, 4, [])


def test_a_ucontext_fits_its_room():
    """glibc's getcontext writes no byte past CONTEXT_BYTES (sizeof(ucontext_t) is 968 bytes on
    x86-64); the emulator's contexts are CONTEXT_BYTES apart."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"))
    last = 0
    for pattern in (0x00, 0xAB):
        buf = np.full(4 * CONTEXT_BYTES, pattern, np.uint8)
        assert libc.getcontext(ctypes.c_void_p(buf.ctypes.data)) == 0
        last = max(last, np.flatnonzero(buf != pattern)[-1])
    assert last < CONTEXT_BYTES


# ----------------------------------------------------------------------------------------------
# Speed
# ----------------------------------------------------------------------------------------------


def test_speed_of_a_million_thread_launch():
    emu = Emulator(AXPB)
    n = 1 << 20
    x, y = _f32(n), np.full(n, np.nan, np.float32)
    start = time.perf_counter()
    emu.launch("axpb", n // 256, 256, [x.ctypes.data, y.ctypes.data, 2.0, 1.0, n])
    seconds = time.perf_counter() - start
    print(f"axpb, 1M threads: {seconds * 1e3:.1f} ms")
    np.testing.assert_allclose(y, 2 * x + 1, rtol=1e-6)
    assert seconds < 0.5


def test_speed_of_a_barrier_kernel():
    # 256 threads x 64 blocks x 16 barriers: a fiber switch per thread per barrier
    emu = Emulator(ROTATE)
    x = _f32(64, 256)
    y = np.full_like(x, np.nan)
    start = time.perf_counter()
    emu.launch("rotate", 64, 256, [x.ctypes.data, y.ctypes.data])
    seconds = time.perf_counter() - start
    print(f"rotate, 256 x 64 threads, 16 barriers: {seconds * 1e3:.0f} ms")
    np.testing.assert_array_equal(y, np.roll(x, -8, axis=1))
    assert seconds < 3.0


# ----------------------------------------------------------------------------------------------
# The test kernels are valid PTX: what the emulator runs is what a GPU would
# ----------------------------------------------------------------------------------------------

@pytest.mark.skipif(ptxas_path() is None, reason="ptxas (nvidia-cuda-nvcc wheel) missing")
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernels_assemble_with_ptxas(name, tmp_path):
    ensure_llvm_initialized(all_targets=True)
    module = llvm.parse_assembly(KERNELS[name])
    module.verify()
    machine = llvm.Target.from_triple("nvptx64-nvidia-cuda").create_target_machine(
        cpu="sm_80", features="+ptx80")
    ptxas(machine.emit_assembly(module), "sm_80")  # InternalError with ptxas's messages
