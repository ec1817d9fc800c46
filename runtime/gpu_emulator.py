"""Run CUDA kernels, given as the LLVM IR that NVPTX compiles, on the CPU with CUDA's semantics.

Without a GPU the CUDA backend's kernels must still run, and run so that the classic GPU bugs
show: a missing __syncthreads(), an element never written, a race on shared memory. The
emulator takes the very module handed to NVPTX and changes only what a CPU cannot run
(`_REWRITES`, rules as data):

- the NVVM intrinsics (thread geometry, block barriers, warp shuffles: `INTRINSICS`; and the
  arithmetic that libdevice's math calls: `ARITHMETIC`) become calls into a small runtime
  written in LLVM IR (`_RUNTIME`) and linked into the module; any other `llvm.nvvm.*`
  intrinsic is refused by name before anything is compiled;
- address spaces go (global, shared and generic memory are all host memory here), and the
  NVPTX triple, data layout and target attributes make way for the host's;
- shared memory (the `addrspace(3)` globals) is filled with 0xFF bytes before every block: a
  read of shared memory nobody wrote gives NaN (an int reads -1);
- libdevice's functions that the module declares without defining them (`__nv_expf`) are the
  host libm's (`expf`); a module with libdevice linked in runs libdevice's own code.
The kernel code itself is compiled as given: no pass reshapes its control flow.

How threads run. Blocks run one after another, in a seeded random order. A kernel that reaches
no barrier and no shuffle (directly or through the functions it calls) runs as a loop calling
it once per thread, in a shuffled order. Every other kernel gets one fiber per thread (glibc's
makecontext/swapcontext, called from the JIT-compiled runtime so that a switch costs no
Python): a thread runs until it waits at a barrier or a shuffle, or finishes; then the next
runs. Sweeps over the runnable threads, each in a new random order, alternate with releasing
the warps whose live lanes all wait at a shuffle. When nothing can run, every thread must wait
at the same block barrier (then all go on) or have finished (the block is done); anything else
would deadlock a GPU and raises `EmulatorError` naming the kernel, the block and two threads
that disagree, and where they wait: every barrier and shuffle call carries a site number
(`_number_sites`) that tells barriers apart, "barrier 2 of @matmul". Values live across a
barrier on each fiber's own stack, as they live in a GPU thread's registers.

Speed (measured on a 2-core AMD EPYC): an elementwise launch of 1M threads 16-40 ms; 256
threads x 64 blocks x 16 barriers 0.15-0.5 s (a fiber switch costs 0.3-1 us, much of it the
signal-mask system call in swapcontext); building an emulator ~40 ms.

Limits: a shuffle's membermask is taken to be every live lane of the warp (the CUDA backend
shuffles whole warps); no dynamic (`extern __shared__`) shared memory; memory accesses are not
bounds-checked (an out-of-bounds store corrupts the process, as any native code would); a
thread has 124 KiB of stack; glibc on x86-64 or AArch64 Linux only (makecontext).
"""

from __future__ import annotations

import ctypes
import re
import threading
from dataclasses import dataclass
from typing import Sequence

import llvmlite.binding as llvm
import numpy as np

from slimc.codegen.cpu.target import ensure_llvm_initialized
from slimc.ir.errors import SlimcError

__all__ = ["Emulator", "EmulatorError", "Kernel", "INTRINSICS", "ARITHMETIC", "CONTEXT_BYTES",
           "STACK_BYTES"]

MAX_BLOCK = (1024, 1024, 64)  # CUDA's limits on a block's dimensions...
MAX_THREADS = 1024  # ...and on its threads
MAX_GRID = (2**31 - 1, 65535, 65535)
WARP = 32
# Each fiber's stack; only the pages a thread touches cost memory.
STACK_BYTES = 128 * 1024
# The bottom of every stack holds a pattern: a thread that overwrote it overflowed its stack
# (one that overflows by more than this may crash the process before it is reported).
GUARD_BYTES = 4096
_GUARD = 0xA5
# Room for one glibc ucontext_t (968 bytes on x86-64, about 4.5 KiB on AArch64; a test checks).
CONTEXT_BYTES = 8192
# Thread states in the runtime (the %Thread record) and their meaning for error messages.
RUNNABLE, AT_BARRIER, AT_SHUFFLE, FINISHED = 0, 1, 2, 3
_THREAD = np.dtype([("state", np.int32), ("slot", np.int32), ("site", np.int32)])


class EmulatorError(SlimcError):
    """A kernel cannot be emulated, was launched wrongly, or did what deadlocks a GPU.
    `kernel` and `block` say where, when known."""

    def __init__(self, message: str, *, kernel: str | None = None, block: tuple | None = None):
        self.kernel = kernel
        self.block = block
        where = f"kernel {kernel!r}" if kernel else ""
        if block is not None:
            where += f", block {block}"
        super().__init__(f"{where}: {message}" if where else message)


SHUFFLE_MODES = ("bfly", "down", "up", "idx")  # the runtime's %mode numbers, in order


def _intrinsics() -> dict:
    """The NVVM intrinsics the emulator implements: name after `llvm.nvvm.` -> (return type,
    parameter types) of its replacement `@slimc_emu.<name>` in the runtime. A barrier or shuffle
    takes first its call site's number (`_number_sites`), then the intrinsic's arguments."""
    table = {f"read.ptx.sreg.{reg}.{d}": ("i32", "")
             for reg in ("tid", "ntid", "ctaid", "nctaid") for d in "xyz"}
    table["read.ptx.sreg.laneid"] = ("i32", "")
    table["read.ptx.sreg.warpsize"] = ("i32", "")
    table["barrier0"] = ("void", "i32")  # LLVM 22 upgrades it to the next one when parsing
    table["barrier.cta.sync.aligned.all"] = ("void", "i32, i32")
    table["barrier.cta.sync.all"] = ("void", "i32, i32")
    for mode in SHUFFLE_MODES:
        for suffix, ty in (("f32", "float"), ("i32", "i32")):
            table[f"shfl.sync.{mode}.{suffix}"] = (ty, f"i32, i32, {ty}, i32, i32")
    return table


_ROUNDING = {"rn": 1, "rz": 0, "rp": 2, "rm": 3}  # PTX's rounding suffixes, as llvm.set.rounding's


def _rounded(mode: str, ty: str, op: str, args: str) -> str:
    """IR for %r = the constrained op `op` rounded as `mode` (.rm, .rp, .rz): the host's rounding
    mode is set around it (the function must be strictfp)."""
    return (f"call void @llvm.set.rounding(i32 {_ROUNDING[mode]}) strictfp\n"
            f"%r = call {ty} @llvm.experimental.constrained.{op}({args}, "
            f'metadata !"round.dynamic", metadata !"fpexcept.ignore") strictfp\n'
            f"call void @llvm.set.rounding(i32 1) strictfp")


def _arithmetic() -> dict:
    """NVVM's pure arithmetic, which libdevice's math (f64 exp, log, ...) calls: name ->
    (return type, parameter types, the IR computing %r from %a, %b, %c). Roundings are exact
    (directed ones switch the host's rounding mode); approximations are exact here and `.ftz`
    (flush denormals to zero) is ignored."""
    table = {}
    for s, ty, t, fabs in (("f", "float", "f32", "f32"), ("ftz.f", "float", "f32", "ftz.f32"),
                           ("d", "double", "f64", "f64")):
        one, two, three = (ty,), (ty, ty), (ty, ty, ty)
        for mode in _ROUNDING:
            rn = mode == "rn"
            for op in ("add", "mul", "div"):
                table[f"{op}.{mode}.{s}"] = (ty, two, f"f{op} {ty} %a, %b" if rn else
                                             _rounded(mode, ty, f"f{op}.{t}", f"{ty} %a, {ty} %b"))
            abc = f"{ty} %a, {ty} %b, {ty} %c"
            table[f"fma.{mode}.{s}"] = (ty, three, f"call {ty} @llvm.fma.{t}({abc})" if rn else
                                        _rounded(mode, ty, f"fma.{t}", abc))
            table[f"rcp.{mode}.{s}"] = (ty, one, f"fdiv {ty} 1.0, %a" if rn else
                                        _rounded(mode, ty, f"fdiv.{t}", f"{ty} 1.0, {ty} %a"))
            table[f"sqrt.{mode}.{s}"] = (ty, one, f"call {ty} @llvm.sqrt.{t}({ty} %a)" if rn else
                                         _rounded(mode, ty, f"sqrt.{t}", f"{ty} %a"))
        for name, fn in (("floor", "floor"), ("ceil", "ceil"), ("trunc", "trunc"),
                         ("round", "roundeven"), ("sqrt.approx", "sqrt")):  # round: cvt.rni
            table[f"{name}.{s}"] = (ty, one, f"call {ty} @llvm.{fn}.{t}({ty} %a)")
        for name, fn in (("fmax", "maxnum"), ("fmin", "minnum")):
            table[f"{name}.{s}"] = (ty, two, f"call {ty} @llvm.{fn}.{t}({ty} %a, {ty} %b)")
        table[f"rsqrt.approx.{s}"] = (ty, one, f"%q = call {ty} @llvm.sqrt.{t}({ty} %a)\n"
                                               f"%r = fdiv {ty} 1.0, %q")
        table[f"fabs.{fabs}"] = (ty, one, f"call {ty} @llvm.fabs.{t}({ty} %a)")
    for s in ("f", "ftz.f"):
        ftz = s[:-2].replace("ftz", ".ftz")
        table[f"div.approx.{s}"] = table["div.rn.f"]
        table[f"lg2.approx.{s}"] = ("float", ("float",), "call float @llvm.log2.f32(float %a)")
        table[f"ex2.approx.{s}32"] = ("float", ("float",), "call float @llvm.exp2.f32(float %a)")
        table[f"sin.approx.{s}"] = ("float", ("float",), "call float @llvm.sin.f32(float %a)")
        table[f"cos.approx.{s}"] = ("float", ("float",), "call float @llvm.cos.f32(float %a)")
        table[f"saturate.{s}"] = ("float", ("float",),  # NaN -> 0, as cvt.sat
                                  "%m = call float @llvm.maxnum.f32(float %a, float 0.0)\n"
                                  "%r = call float @llvm.minnum.f32(float %m, float 1.0)")
        table[f"f2h.rn{ftz}"] = ("i16", ("float",), "%h = fptrunc float %a to half\n"
                                                    "%r = bitcast half %h to i16")
        for mode in _ROUNDING:
            table[f"d2f.{mode}{ftz}"] = ("float", ("double",), "fptrunc double %a to float"
                                         if mode == "rn" else
                                         _rounded(mode, "float", "fptrunc.f32.f64", "double %a"))
    table["rcp.approx.ftz.d"] = table["rcp.rn.d"]
    table["d2i.lo"] = ("i32", ("double",), "%w = bitcast double %a to i64\n"
                                           "%r = trunc i64 %w to i32")
    table["d2i.hi"] = ("i32", ("double",), "%w = bitcast double %a to i64\n"
                                           "%h = lshr i64 %w, 32\n%r = trunc i64 %h to i32")
    table["lohi.i2d"] = ("double", ("i32", "i32"), "%l = zext i32 %a to i64\n"
                         "%h = zext i32 %b to i64\n%s = shl i64 %h, 32\n%w = or i64 %s, %l\n"
                         "%r = bitcast i64 %w to double")
    for src, f, it in (("i", "si", "i32"), ("ui", "ui", "i32"), ("ll", "si", "i64"),
                       ("ull", "ui", "i64")):
        for mode in _ROUNDING:
            for dst, ty, t in (("d", "double", "f64"), ("f", "float", "f32")):
                table[f"{src}2{dst}.{mode}"] = (ty, (it,), f"{f}tofp {it} %a to {ty}"
                                                if mode == "rn" else
                                                _rounded(mode, ty, f"{f}tofp.{t}.{it}", f"{it} %a"))
        # float -> int: rounded to an integer as the suffix says, then saturated (NaN -> 0)
        for mode, fn in (("rn", "roundeven"), ("rz", "trunc"), ("rm", "floor"), ("rp", "ceil")):
            for fsrc, ty, t in (("d", "double", "f64"), ("f", "float", "f32")):
                table[f"{fsrc}2{src}.{mode}"] = (
                    it, (ty,), f"%n = call {ty} @llvm.{fn}.{t}({ty} %a)\n"
                    f"%r = call {it} @llvm.fpto{f}.sat.{it}.{t}({ty} %n)")
            table[f"f2{src}.{mode}.ftz"] = table[f"f2{src}.{mode}"]
    for name, t, wide, ext in (("i", "i32", "i64", "sext"), ("ui", "i32", "i64", "zext"),
                               ("ll", "i64", "i128", "sext"), ("ull", "i64", "i128", "zext")):
        table[f"mulhi.{name}"] = (t, (t, t), f"%x = {ext} {t} %a to {wide}\n"
                                  f"%y = {ext} {t} %b to {wide}\n%p = mul {wide} %x, %y\n"
                                  f"%h = lshr {wide} %p, {t[1:]}\n%r = trunc {wide} %h to {t}")
    for name, greater in (("i", "sgt"), ("ui", "ugt")):  # |a - b| + c
        table[f"sad.{name}"] = ("i32", ("i32",) * 3, f"%g = icmp {greater} i32 %a, %b\n"
                                "%x = sub i32 %a, %b\n%y = sub i32 %b, %a\n"
                                "%d = select i1 %g, i32 %x, i32 %y\n%r = add i32 %d, %c")
    return table


INTRINSICS = _intrinsics()
ARITHMETIC = _arithmetic()

# The NVPTX-only parts of a module, made host code: (why, pattern, replacement), in order.
_REWRITES = [
    ("every address space is host memory (`, addrspace(5)` ends an alloca)",
     r",? addrspace\(\d+\)", ""),
    ("so a cast between address spaces changes nothing", r"\baddrspacecast\b", "bitcast"),
    ("kernels and device functions use the host's calling convention",
     r"\bptx_(?:kernel|device) ", ""),
    ("NVPTX's CPU and features mean nothing to the host",
     r' "target-(?:cpu|features)"="[^"]*"', ""),
    ("intrinsics mangled with an address space (llvm.memcpy.p0.p1.i64) now take p0",
     r"@llvm\.[\w.]+", lambda m: re.sub(r"\.p[1-9]\d*\b", ".p0", m.group())),
    ("the NVVM intrinsics' declarations go (the glue declares their replacements)",
     r"^declare [^\n]*@llvm\.nvvm\.[^\n]*\n", ""),
    ("calls to NVVM intrinsics call the runtime", r"@llvm\.nvvm\.", "@slimc_emu."),
]

# The runtime, linked into every emulated module. Python fills the globals marked "set by
# Python" before a launch; `@slimc_emu.launch` runs it. The sreg, barrier and shuffle functions
# the kernels call are generated from INTRINSICS (`_intrinsics_ir`).
_RUNTIME = r"""
%Thread = type { i32, i32, i32 }  ; state (0 runnable, 1 at the block barrier, 2 at a shuffle,
                                  ; 3 finished), its value in a shuffle, the site it waits at

declare i32 @getcontext(ptr) returns_twice
declare void @makecontext(ptr, ptr, i32, ...)
declare i32 @swapcontext(ptr, ptr)
declare void @llvm.memset.p0.i64(ptr, i8, i64, i1 immarg)
declare void @slimc_emu.clear_shared()  ; in the glue: fills the module's shared memory

@slimc_emu.ntid = global [3 x i32] zeroinitializer    ; set by Python: the block's dimensions
@slimc_emu.nctaid = global [3 x i32] zeroinitializer  ; set by Python: the grid's dimensions
@slimc_emu.n = global i32 0                           ; set by Python: threads in a block
@slimc_emu.threads = global ptr null                  ; set by Python: a %Thread per thread
@slimc_emu.contexts = global ptr null  ; set by Python: a ucontext_t per thread + the scheduler's
@slimc_emu.stacks = global ptr null                   ; set by Python: STACK_BYTES per thread
@slimc_emu.rng = global i64 0                         ; set by Python: the launch's seed
@slimc_emu.ctaid = global [3 x i32] zeroinitializer   ; the running block
@slimc_emu.tid = global [3 x i32] zeroinitializer     ; the running thread
@slimc_emu.cur = global i32 0                         ; the running thread's linear id
@slimc_emu.entry = global ptr null      ; the kernel's trampoline: void (ptr argv)
@slimc_emu.argv = global ptr null
@slimc_emu.block = global i64 0         ; the running block's linear id (for errors)
@slimc_emu.count = global [4 x i32] zeroinitializer   ; threads per state, from @census

define ptr @slimc_emu.thread(i32 %t) {
  %base = load ptr, ptr @slimc_emu.threads
  %p = getelementptr %Thread, ptr %base, i32 %t
  ret ptr %p
}

; The context of thread %t; that of thread n (one past the last) is the scheduler's.
define ptr @slimc_emu.context(i32 %t) {
  %base = load ptr, ptr @slimc_emu.contexts
  %t64 = zext i32 %t to i64
  %offset = mul i64 %t64, CONTEXT_BYTES
  %p = getelementptr i8, ptr %base, i64 %offset
  ret ptr %p
}

; Fill %bytes of shared memory at %p with 0xFF: a float reads NaN, an int -1.
define void @slimc_emu.fill(ptr %p, i64 %bytes) {
  call void @llvm.memset.p0.i64(ptr %p, i8 -1, i64 %bytes, i1 false)
  ret void
}

; %out[0..2] = x, y, z of the linear index %i in a grid of %dims (x fastest, as CUDA numbers).
define void @slimc_emu.unflatten(i64 %i, ptr %dims, ptr %out) {
  %nx = load i32, ptr %dims
  %pny = getelementptr i32, ptr %dims, i64 1
  %ny = load i32, ptr %pny
  %nx64 = zext i32 %nx to i64
  %ny64 = zext i32 %ny to i64
  %x = urem i64 %i, %nx64
  %yz = udiv i64 %i, %nx64
  %y = urem i64 %yz, %ny64
  %z = udiv i64 %yz, %ny64
  %x32 = trunc i64 %x to i32
  %y32 = trunc i64 %y to i32
  %z32 = trunc i64 %z to i32
  store i32 %x32, ptr %out
  %py = getelementptr i32, ptr %out, i64 1
  store i32 %y32, ptr %py
  %pz = getelementptr i32, ptr %out, i64 2
  store i32 %z32, ptr %pz
  ret void
}

; Make thread %t the running one: the sreg reads see its index.
define void @slimc_emu.set_thread(i32 %t) {
  store i32 %t, ptr @slimc_emu.cur
  %t64 = zext i32 %t to i64
  call void @slimc_emu.unflatten(i64 %t64, ptr @slimc_emu.ntid, ptr @slimc_emu.tid)
  ret void
}

; splitmix64: seeded by the launch, so a schedule can be replayed.
define i64 @slimc_emu.random() {
  %s0 = load i64, ptr @slimc_emu.rng
  %s = add i64 %s0, -7046029254386353131
  store i64 %s, ptr @slimc_emu.rng
  %a = lshr i64 %s, 30
  %b = xor i64 %s, %a
  %c = mul i64 %b, -4658895280553007687
  %d = lshr i64 %c, 27
  %e = xor i64 %c, %d
  %f = mul i64 %e, -7723592293110705685
  %g = lshr i64 %f, 31
  %r = xor i64 %f, %g
  ret i64 %r
}

; Fisher-Yates: put the %n thread ids in %order into a new random order, in place.
define void @slimc_emu.shuffle(ptr %order, i32 %n) {
start:
  br label %loop
loop:
  %i = phi i32 [ %n, %start ], [ %i1, %swap ]
  %more = icmp ugt i32 %i, 1
  br i1 %more, label %swap, label %done
swap:
  %i1 = sub i32 %i, 1
  %r = call i64 @slimc_emu.random()
  %i64 = zext i32 %i to i64
  %j64 = urem i64 %r, %i64
  %j = trunc i64 %j64 to i32
  %pa = getelementptr i32, ptr %order, i32 %i1
  %pb = getelementptr i32, ptr %order, i32 %j
  %a = load i32, ptr %pa
  %b = load i32, ptr %pb
  store i32 %b, ptr %pa
  store i32 %a, ptr %pb
  br label %loop
done:
  ret void
}

; A block of a kernel that reaches no barrier and no shuffle: one call per thread.
define void @slimc_emu.run_plain(ptr %order, i32 %n) {
start:
  call void @slimc_emu.shuffle(ptr %order, i32 %n)
  %kernel = load ptr, ptr @slimc_emu.entry
  %argv = load ptr, ptr @slimc_emu.argv
  br label %loop
loop:
  %i = phi i32 [ 0, %start ], [ %i1, %call ]
  %end = icmp eq i32 %i, %n
  br i1 %end, label %done, label %call
call:
  %pt = getelementptr i32, ptr %order, i32 %i
  %t = load i32, ptr %pt
  call void @slimc_emu.set_thread(i32 %t)
  call void %kernel(ptr %argv)
  %i1 = add i32 %i, 1
  br label %loop
done:
  ret void
}

; Every fiber starts here: run the kernel as the current thread and mark it finished.
; Returning resumes the scheduler (the context's uc_link).
define void @slimc_emu.fiber() {
  %kernel = load ptr, ptr @slimc_emu.entry
  %argv = load ptr, ptr @slimc_emu.argv
  call void %kernel(ptr %argv)
  %t = load i32, ptr @slimc_emu.cur
  %th = call ptr @slimc_emu.thread(i32 %t)
  store i32 3, ptr %th
  %slot = getelementptr %Thread, ptr %th, i32 0, i32 1
  store i32 -1, ptr %slot  ; a shuffle that reads a finished lane gets NaN
  ret void
}

; Park the running thread in state %why (1 block barrier, 2 shuffle) at call site %site, and
; switch to the scheduler.
define void @slimc_emu.wait(i32 %why, i32 %site) {
  %t = load i32, ptr @slimc_emu.cur
  %th = call ptr @slimc_emu.thread(i32 %t)
  store i32 %why, ptr %th
  %psite = getelementptr %Thread, ptr %th, i32 0, i32 2
  store i32 %site, ptr %psite
  %n = load i32, ptr @slimc_emu.n
  %me = call ptr @slimc_emu.context(i32 %t)
  %scheduler = call ptr @slimc_emu.context(i32 %n)
  %r = call i32 @swapcontext(ptr %me, ptr %scheduler)
  ret void
}

; A warp shuffle of the 32-bit value %v with PTX shfl.sync's semantics (%mode: 0 bfly, 1 down,
; 2 up, 3 idx; %c packs the clamp and the segment mask). Each lane publishes its value and
; waits for its warp, reads its source lane's value, and waits again, so that no lane
; overwrites its value (in a next shuffle) before all have read it.
define i32 @slimc_emu.shfl(i32 %mode, i32 %v, i32 %b, i32 %c, i32 %site) {
start:
  %t = load i32, ptr @slimc_emu.cur
  %th = call ptr @slimc_emu.thread(i32 %t)
  %slot = getelementptr %Thread, ptr %th, i32 0, i32 1
  store i32 %v, ptr %slot
  call void @slimc_emu.wait(i32 2, i32 %site)
  %lane = and i32 %t, 31
  %bval = and i32 %b, 31
  %cval = and i32 %c, 31
  %c8 = lshr i32 %c, 8
  %segmask = and i32 %c8, 31
  %notseg = xor i32 %segmask, -1
  %minlane = and i32 %lane, %segmask
  %clamp = and i32 %cval, %notseg
  %maxlane = or i32 %minlane, %clamp
  switch i32 %mode, label %idx [ i32 0, label %bfly
                                 i32 1, label %down
                                 i32 2, label %up ]
bfly:
  %jb = xor i32 %lane, %bval
  %pb = icmp sle i32 %jb, %maxlane
  br label %pick
down:
  %jd = add i32 %lane, %bval
  %pd = icmp sle i32 %jd, %maxlane
  br label %pick
up:
  %ju = sub i32 %lane, %bval
  %pu = icmp sge i32 %ju, %maxlane
  br label %pick
idx:
  %bi = and i32 %bval, %notseg
  %ji = or i32 %minlane, %bi
  %pi = icmp sle i32 %ji, %maxlane
  br label %pick
pick:
  %j = phi i32 [ %jb, %bfly ], [ %jd, %down ], [ %ju, %up ], [ %ji, %idx ]
  %inrange = phi i1 [ %pb, %bfly ], [ %pd, %down ], [ %pu, %up ], [ %pi, %idx ]
  %src = select i1 %inrange, i32 %j, i32 %lane
  %warp = sub i32 %t, %lane
  %s = add i32 %warp, %src
  %n = load i32, ptr @slimc_emu.n
  %exists = icmp ult i32 %s, %n  ; a partial last warp has no lanes past the block's end
  br i1 %exists, label %read, label %none
read:
  %ths = call ptr @slimc_emu.thread(i32 %s)
  %pslot = getelementptr %Thread, ptr %ths, i32 0, i32 1
  %got = load i32, ptr %pslot
  br label %done
none:
  br label %done
done:
  %r = phi i32 [ %got, %read ], [ -1, %none ]
  call void @slimc_emu.wait(i32 2, i32 %site)
  ret i32 %r
}

; Switch to every runnable thread once, in the order %order; 1 if any ran.
define i32 @slimc_emu.run_runnable(ptr %order, i32 %n) {
start:
  %scheduler = call ptr @slimc_emu.context(i32 %n)
  br label %loop
loop:
  %i = phi i32 [ 0, %start ], [ %i1, %next ]
  %ran = phi i32 [ 0, %start ], [ %ran1, %next ]
  %end = icmp eq i32 %i, %n
  br i1 %end, label %done, label %look
look:
  %pt = getelementptr i32, ptr %order, i32 %i
  %t = load i32, ptr %pt
  %th = call ptr @slimc_emu.thread(i32 %t)
  %state = load i32, ptr %th
  %runnable = icmp eq i32 %state, 0
  br i1 %runnable, label %run, label %next
run:
  call void @slimc_emu.set_thread(i32 %t)
  %c = call ptr @slimc_emu.context(i32 %t)
  %r = call i32 @swapcontext(ptr %scheduler, ptr %c)
  br label %next
next:
  %ran1 = phi i32 [ %ran, %look ], [ 1, %run ]
  %i1 = add i32 %i, 1
  br label %loop
done:
  ret i32 %ran
}

; Count the threads [%lo, %hi) in each state into @slimc_emu.count; 1 if those in state %want
; do not all wait at the same place (two different barriers, or shuffles), else 0.
define i32 @slimc_emu.census(i32 %lo, i32 %hi, i32 %want) {
start:
  store [4 x i32] zeroinitializer, ptr @slimc_emu.count
  br label %loop
loop:
  %t = phi i32 [ %lo, %start ], [ %t1, %next ]
  %first = phi i32 [ -1, %start ], [ %first1, %next ]  ; where the first such thread waits
  %odd = phi i32 [ 0, %start ], [ %odd1, %next ]
  %end = icmp eq i32 %t, %hi
  br i1 %end, label %done, label %count
count:
  %th = call ptr @slimc_emu.thread(i32 %t)
  %state = load i32, ptr %th
  %pc = getelementptr [4 x i32], ptr @slimc_emu.count, i32 0, i32 %state
  %c = load i32, ptr %pc
  %c1 = add i32 %c, 1
  store i32 %c1, ptr %pc
  %wanted = icmp eq i32 %state, %want
  br i1 %wanted, label %site, label %next
site:
  %psite = getelementptr %Thread, ptr %th, i32 0, i32 2
  %here = load i32, ptr %psite
  %isfirst = icmp eq i32 %first, -1
  %there = select i1 %isfirst, i32 %here, i32 %first
  %differ = icmp ne i32 %here, %there
  %d = zext i1 %differ to i32
  %odd2 = or i32 %odd, %d
  br label %next
next:
  %first1 = phi i32 [ %first, %count ], [ %there, %site ]
  %odd1 = phi i32 [ %odd, %count ], [ %odd2, %site ]
  %t1 = add i32 %t, 1
  br label %loop
done:
  ret i32 %odd
}

define i32 @slimc_emu.count_of(i32 %state) {
  %p = getelementptr [4 x i32], ptr @slimc_emu.count, i32 0, i32 %state
  %c = load i32, ptr %p
  ret i32 %c
}

; Threads [%lo, %hi) in state %from go to state %to.
define void @slimc_emu.set_state(i32 %lo, i32 %hi, i32 %from, i32 %to) {
start:
  br label %loop
loop:
  %t = phi i32 [ %lo, %start ], [ %t1, %set ]
  %end = icmp eq i32 %t, %hi
  br i1 %end, label %done, label %set
set:
  %th = call ptr @slimc_emu.thread(i32 %t)
  %state = load i32, ptr %th
  %match = icmp eq i32 %state, %from
  %state1 = select i1 %match, i32 %to, i32 %state
  store i32 %state1, ptr %th
  %t1 = add i32 %t, 1
  br label %loop
done:
  ret void
}

; Release every warp whose live lanes all wait at a shuffle: the number of lanes released,
; or -4 when the lanes of a warp wait at different shuffles.
define i32 @slimc_emu.release_warps(i32 %n) {
start:
  br label %loop
loop:
  %lo = phi i32 [ 0, %start ], [ %hi, %next ]
  %freed = phi i32 [ 0, %start ], [ %freed1, %next ]
  %end = icmp uge i32 %lo, %n
  br i1 %end, label %done, label %warp
warp:
  %lo32 = add i32 %lo, 32
  %short = icmp ult i32 %n, %lo32
  %hi = select i1 %short, i32 %n, i32 %lo32
  %odd = call i32 @slimc_emu.census(i32 %lo, i32 %hi, i32 2)
  %bad = icmp ne i32 %odd, 0
  br i1 %bad, label %fail, label %check
check:
  %waiting = call i32 @slimc_emu.count_of(i32 2)
  %finished = call i32 @slimc_emu.count_of(i32 3)
  %size = sub i32 %hi, %lo
  %live = sub i32 %size, %finished
  %all = icmp eq i32 %waiting, %live
  %some = icmp ne i32 %waiting, 0
  %release = and i1 %all, %some
  br i1 %release, label %free, label %next
free:
  call void @slimc_emu.set_state(i32 %lo, i32 %hi, i32 2, i32 0)
  br label %next
next:
  %add = select i1 %release, i32 %waiting, i32 0
  %freed1 = add i32 %freed, %add
  br label %loop
fail:
  ret i32 -4
done:
  ret i32 %freed
}

; Nothing can run: every thread waits at the block barrier, waits at a shuffle, or finished.
; 0: the barrier is released; 1: the block is done; < 0: a deadlock on a GPU (-1 some threads
; finished while others wait at the barrier, -2 they wait at different barriers, -3 lanes
; wait at a shuffle while others of their warp wait at the barrier).
define i32 @slimc_emu.release_block(i32 %n) {
start:
  %odd = call i32 @slimc_emu.census(i32 0, i32 %n, i32 1)
  %waiting = call i32 @slimc_emu.count_of(i32 1)
  %shuffling = call i32 @slimc_emu.count_of(i32 2)
  %finished = call i32 @slimc_emu.count_of(i32 3)
  %stuck = icmp ne i32 %shuffling, 0
  br i1 %stuck, label %shuffle, label %c1
c1:
  %differ = icmp ne i32 %odd, 0
  br i1 %differ, label %different, label %c2
c2:
  %none = icmp eq i32 %waiting, 0
  br i1 %none, label %finish, label %c3
c3:
  %exited = icmp ne i32 %finished, 0
  br i1 %exited, label %exit, label %release
release:
  call void @slimc_emu.set_state(i32 0, i32 %n, i32 1, i32 0)
  ret i32 0
finish:
  ret i32 1
exit:
  ret i32 -1
different:
  ret i32 -2
shuffle:
  ret i32 -3
}

; A block of a kernel that waits somewhere: a fiber per thread, run until all finished.
define i32 @slimc_emu.run_fibers(ptr %order, i32 %n) {
start:
  %scheduler = call ptr @slimc_emu.context(i32 %n)
  %stacks = load ptr, ptr @slimc_emu.stacks
  br label %make
make:
  %t = phi i32 [ 0, %start ], [ %t1, %make ]
  %c = call ptr @slimc_emu.context(i32 %t)
  %g = call i32 @getcontext(ptr %c)
  %plink = getelementptr i8, ptr %c, i64 8  ; uc_link: where a finished fiber goes
  store ptr %scheduler, ptr %plink
  %t64 = zext i32 %t to i64
  %base = mul i64 %t64, STACK_BYTES
  %bottom = add i64 %base, GUARD_BYTES
  %sp = getelementptr i8, ptr %stacks, i64 %bottom
  %psp = getelementptr i8, ptr %c, i64 16   ; uc_stack.ss_sp
  store ptr %sp, ptr %psp
  %psize = getelementptr i8, ptr %c, i64 32 ; uc_stack.ss_size
  store i64 STACK_USABLE, ptr %psize
  call void (ptr, ptr, i32, ...) @makecontext(ptr %c, ptr @slimc_emu.fiber, i32 0)
  %th = call ptr @slimc_emu.thread(i32 %t)
  store i32 0, ptr %th
  %t1 = add i32 %t, 1
  %more = icmp ult i32 %t1, %n
  br i1 %more, label %make, label %sweep
sweep:
  call void @slimc_emu.shuffle(ptr %order, i32 %n)
  %ran = call i32 @slimc_emu.run_runnable(ptr %order, i32 %n)
  %freed = call i32 @slimc_emu.release_warps(i32 %n)
  %bad = icmp slt i32 %freed, 0
  br i1 %bad, label %fail, label %check
check:
  %progress = or i32 %ran, %freed
  %again = icmp ne i32 %progress, 0
  br i1 %again, label %sweep, label %barrier
barrier:
  %r = call i32 @slimc_emu.release_block(i32 %n)
  %released = icmp eq i32 %r, 0
  br i1 %released, label %sweep, label %out
out:
  %ok = icmp eq i32 %r, 1
  %code = select i1 %ok, i32 0, i32 %r
  ret i32 %code
fail:
  ret i32 %freed
}

; Run the blocks %blocks[0 .. %nblocks) (linear ids) of the kernel whose trampoline is
; %kernel. 0, or the error of the block left in @slimc_emu.block.
define i32 @slimc_emu.launch(ptr %kernel, ptr %argv, ptr %blocks, i64 %nblocks, i32 %fibers,
                             ptr %order) {
start:
  store ptr %kernel, ptr @slimc_emu.entry
  store ptr %argv, ptr @slimc_emu.argv
  %n = load i32, ptr @slimc_emu.n
  %usefibers = icmp ne i32 %fibers, 0
  br label %loop
loop:
  %k = phi i64 [ 0, %start ], [ %k1, %next ]
  %end = icmp eq i64 %k, %nblocks
  br i1 %end, label %done, label %block
block:
  %pb = getelementptr i64, ptr %blocks, i64 %k
  %b = load i64, ptr %pb
  store i64 %b, ptr @slimc_emu.block
  call void @slimc_emu.unflatten(i64 %b, ptr @slimc_emu.nctaid, ptr @slimc_emu.ctaid)
  call void @slimc_emu.clear_shared()
  br i1 %usefibers, label %fiber, label %plain
fiber:
  %r = call i32 @slimc_emu.run_fibers(ptr %order, i32 %n)
  %failed = icmp ne i32 %r, 0
  br i1 %failed, label %fail, label %next
plain:
  call void @slimc_emu.run_plain(ptr %order, i32 %n)
  br label %next
next:
  %k1 = add i64 %k, 1
  br label %loop
fail:
  ret i32 %r
done:
  ret i32 0
}

define i32 @slimc_emu.read.ptx.sreg.laneid() {
  %t = load i32, ptr @slimc_emu.cur
  %lane = and i32 %t, 31
  ret i32 %lane
}

define i32 @slimc_emu.read.ptx.sreg.warpsize() {
  ret i32 32
}
"""

_LAUNCH = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p)


def _intrinsics_ir(arithmetic: set) -> str:
    """The runtime's replacements of the sreg reads, the barriers, the shuffles and of the
    `arithmetic` intrinsics the module uses."""
    out = []
    for reg in ("tid", "ntid", "ctaid", "nctaid"):
        for k, d in enumerate("xyz"):
            out.append(f"define i32 @slimc_emu.read.ptx.sreg.{reg}.{d}() {{\n"
                       f"  %p = getelementptr [3 x i32], ptr @slimc_emu.{reg}, i64 0, i64 {k}\n"
                       f"  %v = load i32, ptr %p\n  ret i32 %v\n}}")
    for name, (_, params) in INTRINSICS.items():
        if name.startswith("barrier"):
            arg = ", i32 %id" if params == "i32, i32" else ""
            out.append(f"define void @slimc_emu.{name}(i32 %site{arg}) {{\n"
                       f"  call void @slimc_emu.wait(i32 1, i32 %site)\n  ret void\n}}")
    for mode_number, mode in enumerate(SHUFFLE_MODES):
        for suffix, ty in (("f32", "float"), ("i32", "i32")):
            out.append(
                f"define {ty} @slimc_emu.shfl.sync.{mode}.{suffix}(i32 %site, i32 %mask, "
                f"{ty} %v, i32 %b, i32 %c) {{\n"
                f"  %bits = bitcast {ty} %v to i32\n"
                f"  %r = call i32 @slimc_emu.shfl(i32 {mode_number}, i32 %bits, i32 %b, "
                f"i32 %c, i32 %site)\n"
                f"  %out = bitcast i32 %r to {ty}\n  ret {ty} %out\n}}")
    for name in sorted(arithmetic):
        ret, params, body = ARITHMETIC[name]
        args = ", ".join(f"{ty} %{v}" for ty, v in zip(params, "abc"))
        body = body if "%r =" in body else f"%r = {body}"
        strict = " strictfp" if "constrained" in body else ""
        out.append(f"define {ret} @slimc_emu.{name}({args}){strict} {{\n  "
                   + body.replace("\n", "\n  ") + f"\n  ret {ret} %r\n}}")
    return "\n\n".join(out) + "\n"


def _runtime_ir(arithmetic: set) -> str:
    """The runtime's text, its sizes filled in, with the `arithmetic` intrinsics used."""
    sizes = {"CONTEXT_BYTES": CONTEXT_BYTES, "STACK_USABLE": STACK_BYTES - GUARD_BYTES,
             "STACK_BYTES": STACK_BYTES, "GUARD_BYTES": GUARD_BYTES}
    text = _RUNTIME
    for name, value in sizes.items():
        text = re.sub(rf"\b{name}\b", str(value), text)
    return text + _intrinsics_ir(arithmetic)


# ----------------------------------------------------------------------------------------------
# Reading and rewriting the kernel module
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    """One kernel of the module: its parameter types ("ptr", "i64", "i32" or "float") and
    whether its threads need fibers (it reaches a barrier or a shuffle)."""

    name: str
    params: tuple
    fibers: bool


def _ref(name: str) -> str:
    """How LLVM IR text names the global `name`."""
    return f"@{name}" if re.fullmatch(r"[-a-zA-Z$._][-\w$.]*", name) else f'@"{name}"'


def _parse(text: str, what: str):
    """Parse and verify LLVM IR text; its errors become EmulatorError."""
    try:
        module = llvm.parse_assembly(text)
        module.verify()
    except RuntimeError as e:
        raise EmulatorError(f"{what} is not valid LLVM IR: {e}") from e
    return module


def _kernels(module, text: str) -> dict:
    """The `ptx_kernel` functions of the module, their parameter types and whether they wait."""
    names = re.findall(r'^define [^@\n]*\bptx_kernel\b[^@\n]*@("[^"]+"|[-\w$.]+)\(', text, re.M)
    waiting = _waiting_functions(module)
    kernels = {}
    for name in (n.strip('"') for n in names):
        params = []
        for i, arg in enumerate(module.get_function(name).arguments):
            ty = re.sub(r" addrspace\(\d+\)", "", str(arg.type))
            if ty not in ("ptr", "i64", "i32", "float"):
                raise EmulatorError(f"parameter {i} has type {ty}; the emulator passes ptr, "
                                    f"i64, i32 and float", kernel=name)
            params.append(ty)
        kernels[name] = Kernel(name, tuple(params), name in waiting)
    return kernels


def _waiting_functions(module) -> set:
    """The functions that reach a barrier or a shuffle, directly or through calls: their threads
    need fibers. An indirect call may reach any function."""
    calls = {}
    for fn in module.functions:
        callees = set()
        for block in fn.blocks:
            for ins in block.instructions:
                if ins.opcode in ("call", "invoke", "callbr"):
                    callee = list(ins.operands)[-1]
                    direct = callee.value_kind == llvm.ValueKind.function
                    callees.add(callee.name if direct else None)
        calls[fn.name] = callees
    waits = {n for n in calls if re.match(r"llvm\.nvvm\.(barrier|shfl)", n)}
    grew = True
    while grew:
        new = {n for n, callees in calls.items()
               if n not in waits and (callees & waits or (None in callees and waits))}
        waits |= new
        grew = bool(new)
    return waits


def _shared_memory(module, target_data) -> list:
    """(name, bytes) of every shared-memory (addrspace(3)) global."""
    shared = []
    for gv in module.global_variables:
        if "addrspace(3)" not in str(gv.type):
            continue
        if not gv.name:
            raise EmulatorError("an unnamed shared-memory global; name it")
        if gv.is_declaration:
            raise EmulatorError(f"dynamic shared memory (extern __shared__ {_ref(gv.name)}) is "
                                f"not supported")
        shared.append((gv.name, target_data.get_abi_size(gv.global_value_type)))
    return shared


def _rewrite(text: str, libm: set) -> tuple:
    """The module's text as host code (`_REWRITES`, then `_number_sites`). The libdevice
    functions `libm` that the module declares but does not define (the CUDA backend links
    libdevice after the module it hands the emulator) become the host libm's functions of the
    same name: __nv_expf -> expf. Duplicate declarations that renaming created are dropped."""
    for _, pattern, replacement in _REWRITES:
        text = re.sub(pattern, replacement, text, flags=re.M)
    for name in libm:
        text = re.sub(rf"@{name}(?=\()", f"@{name[len('__nv_'):]}", text)
    declared, lines = set(), []
    for line in text.splitlines(keepends=True):
        name = re.match(r'declare [^@]*(@"[^"]+"|@[-\w$.]+)\(', line)
        if name:
            if name.group(1) in declared:
                continue
            declared.add(name.group(1))
        lines.append(line)
    return _number_sites("".join(lines))


def _number_sites(text: str) -> tuple:
    """Give every barrier and shuffle call a number, passed as its first argument: threads
    waiting at different numbers wait at different barriers. (Not the return address: code
    generation merges two identical calls at the ends of an if and an else, convergent or not.)
    Returns the text and, per number, where its call is ("barrier 2 of @kernel")."""
    sites, per_function, function = [], {}, "?"

    def number(m) -> str:
        kind = "barrier" if m.group(1).startswith("barrier") else "shuffle"
        per_function[function, kind] = per_function.get((function, kind), 0) + 1
        sites.append(f"{kind} {per_function[function, kind]} of {function}")
        return f"@slimc_emu.{m.group(1)}(i32 {len(sites) - 1}" + (")" if m.group(2) else ", ")

    lines = []
    for line in text.splitlines(keepends=True):
        defined = re.match(r'define [^@]*(@"[^"]+"|@[-\w$.]+)\(', line)
        function = defined.group(1) if defined else function
        lines.append(re.sub(r"@slimc_emu\.((?:barrier|shfl)[\w.]*)\((\)?)", number, line))
    return "".join(lines), sites


def _glue_ir(kernels: dict, shared: list, arithmetic: set) -> str:
    """Appended to the rewritten module: declarations of the runtime functions the kernels now
    call, the function that fills shared memory, and for each kernel a trampoline
    `void @"slimc_emu.entry.<kernel>"(ptr argv)` that calls it with arguments taken from an array
    of 64-bit words, so that one runtime launches every kernel."""
    out = [f"declare {ret} @slimc_emu.{name}({params})"
           for name, (ret, params) in INTRINSICS.items()]
    out += [f"declare {ARITHMETIC[name][0]} @slimc_emu.{name}({', '.join(ARITHMETIC[name][1])})"
            for name in sorted(arithmetic)]
    out.append("declare void @slimc_emu.fill(ptr, i64)")
    fills = "".join(f"  call void @slimc_emu.fill(ptr {_ref(name)}, i64 {size})\n"
                    for name, size in shared)
    out.append(f"define void @slimc_emu.clear_shared() {{\n{fills}  ret void\n}}")
    for k in kernels.values():
        body, args = [], []
        for i, ty in enumerate(k.params):
            body += [f"  %p{i} = getelementptr i64, ptr %argv, i64 {i}",
                     f"  %w{i} = load i64, ptr %p{i}"]
            if ty == "ptr":
                body.append(f"  %a{i} = inttoptr i64 %w{i} to ptr")
            elif ty == "i32":
                body.append(f"  %a{i} = trunc i64 %w{i} to i32")
            elif ty == "float":
                body += [f"  %b{i} = trunc i64 %w{i} to i32",
                         f"  %a{i} = bitcast i32 %b{i} to float"]
            args.append(f"{ty} %w{i}" if ty == "i64" else f"{ty} %a{i}")
        body.append(f"  call void {_ref(k.name)}({', '.join(args)})")
        out.append(f"define void {_ref('slimc_emu.entry.' + k.name)}(ptr %argv) {{\n"
                   + "\n".join(body) + "\n  ret void\n}")
    return "\n\n".join(out) + "\n"


def _aligned(nbytes: int, align: int = 64) -> np.ndarray:
    """Zeroed bytes at an aligned address. np.zeros maps large sizes lazily: the fibers' stacks
    cost only the pages the threads touch."""
    raw = np.zeros(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes]


def _dims(value, what: str, limits: tuple) -> tuple:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or any(not isinstance(d, (int, np.integer)) or d < 1
                                      for d in dims):
        raise EmulatorError(f"{what} must be 1 to 3 positive ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    if any(d > m for d, m in zip(dims, limits)):
        raise EmulatorError(f"{what} {dims} exceeds CUDA's limits {limits}")
    return dims


# ----------------------------------------------------------------------------------------------
# The emulator
# ----------------------------------------------------------------------------------------------


class Emulator:
    """The kernels of one NVPTX module, JIT-compiled for the host once; `launch` runs one:

        emu = Emulator(llvm_ir, seed=0)
        emu.launch("k0", (8,), (256,), [x.ctypes.data, y.ctypes.data, n])

    `kernels` describes them (parameter types; fibers or a plain loop); `host_ir` is the
    rewritten module before the runtime is linked in, to read what was compiled. The seed fixes
    the block and thread orders of every launch, so a failing schedule replays. One launch at a
    time per emulator (a lock).
    """

    def __init__(self, llvm_ir: str, *, seed: int = 0):
        ensure_llvm_initialized()
        original = _parse(llvm_ir, "the kernel module")
        text = str(original)
        used = set(re.findall(r"@llvm\.nvvm\.([\w.]+)", text))
        unknown = sorted(used - set(INTRINSICS) - set(ARITHMETIC))
        if unknown:
            raise EmulatorError("the emulator does not implement "
                                + ", ".join(f"llvm.nvvm.{u}" for u in unknown))
        machine = self._host_machine()
        self.kernels = _kernels(original, text)
        shared = _shared_memory(original, machine.target_data)
        libm = {f.name for f in original.functions
                if f.is_declaration and f.name.startswith("__nv_")}
        host_ir, self._sites = _rewrite(text, libm)
        self.host_ir = host_ir + _glue_ir(self.kernels, shared, used & set(ARITHMETIC))
        module = _parse(self.host_ir, "the rewritten module (a bug in the emulator's rewrites)")
        runtime = llvm.parse_assembly(_runtime_ir(used & set(ARITHMETIC)))
        for m in (module, runtime):
            m.triple = llvm.get_process_triple()
            m.data_layout = str(machine.target_data)
        module.link_in(runtime)
        self._engine = llvm.create_mcjit_compiler(module, machine)
        missing = [f"__nv_{f.name} (libdevice's; the host's libm has no {f.name})"
                   if f"__nv_{f.name}" in libm else f.name for f in module.functions
                   if f.is_declaration and not f.name.startswith("llvm.")
                   and not llvm.address_of_symbol(f.name)]
        if missing:  # MCJIT would abort the process on an unresolved symbol
            raise EmulatorError(f"the module calls {', '.join(missing)}, defined neither in it "
                                f"nor in this process (the runtime needs glibc's makecontext)")
        self._engine.finalize_object()
        self._launch = _LAUNCH(self._engine.get_function_address("slimc_emu.launch"))
        self._entries = {name: self._engine.get_function_address(f"slimc_emu.entry.{name}")
                         for name in self.kernels}
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._threads = np.zeros(0, _THREAD)
        self._order = np.zeros(0, np.int32)
        self._stacks = self._contexts = None

    @staticmethod
    def _host_machine():
        """A fresh host target machine (MCJIT takes ownership of the one it is given)."""
        target = llvm.Target.from_triple(llvm.get_process_triple())
        return target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                            features=llvm.get_host_cpu_features().flatten(),
                                            opt=2)

    def _global(self, name: str, ctype):
        return ctype.from_address(self._engine.get_global_value_address(f"slimc_emu.{name}"))

    def _reserve(self, n: int, fibers: bool) -> None:
        """Per-thread memory for blocks of n threads, kept across launches and grown on need."""
        if n > len(self._order):
            self._threads = np.zeros(n, _THREAD)
            self._order = np.zeros(n, np.int32)
            self._global("threads", ctypes.c_void_p).value = self._threads.ctypes.data
            self._stacks = self._contexts = None
        if fibers and self._stacks is None:
            cap = len(self._order)
            self._contexts = _aligned((cap + 1) * CONTEXT_BYTES)
            self._stacks = _aligned(cap * STACK_BYTES).reshape(cap, STACK_BYTES)
            self._stacks[:, :GUARD_BYTES] = _GUARD
            self._global("contexts", ctypes.c_void_p).value = self._contexts.ctypes.data
            self._global("stacks", ctypes.c_void_p).value = self._stacks.ctypes.data
        self._order[:n] = np.arange(n, dtype=np.int32)
        self._global("n", ctypes.c_int32).value = n

    def launch(self, kernel: str, grid, block, args: Sequence) -> None:
        """Run `kernel<<<grid, block>>>(*args)`: grid and block are 1 to 3 ints; args one per
        parameter (an int address for a ptr, ints for i64/i32, a float for float)."""
        info = self.kernels.get(kernel)
        if info is None:
            raise EmulatorError(f"no kernel {kernel!r}; the module has {sorted(self.kernels)}")
        grid3 = _dims(grid, "grid", MAX_GRID)
        block3 = _dims(block, "block", MAX_BLOCK)
        n = block3[0] * block3[1] * block3[2]
        if n > MAX_THREADS:
            raise EmulatorError(f"block {block3} has {n} threads; CUDA allows {MAX_THREADS}",
                                kernel=kernel)
        argv = self._encode(info, args)
        with self._lock:
            self._reserve(n, info.fibers)
            self._global("ntid", ctypes.c_int32 * 3)[:] = block3
            self._global("nctaid", ctypes.c_int32 * 3)[:] = grid3
            self._global("rng", ctypes.c_uint64).value = int(self._rng.integers(2**63))
            blocks = self._rng.permutation(grid3[0] * grid3[1] * grid3[2]).astype(np.int64)
            code = self._launch(self._entries[kernel], argv.ctypes.data, blocks.ctypes.data,
                                len(blocks), int(info.fibers), self._order.ctypes.data)
            if info.fibers and (self._stacks[:n, :GUARD_BYTES] != _GUARD).any():
                raise EmulatorError(f"a thread overflowed its {STACK_BYTES // 1024} KiB stack "
                                    f"(STACK_BYTES)", kernel=kernel)
            if code:
                b = self._global("block", ctypes.c_int64).value
                where = np.unravel_index(b, grid3[::-1])[::-1]
                raise EmulatorError(self._deadlock(code, n, block3),
                                    kernel=kernel, block=tuple(int(i) for i in where))

    @staticmethod
    def _encode(info: Kernel, args: Sequence) -> np.ndarray:
        """The launch arguments as the 64-bit words the kernel's trampoline reads."""
        if len(args) != len(info.params):
            raise EmulatorError(f"takes {len(info.params)} arguments ({', '.join(info.params)}),"
                                f" got {len(args)}", kernel=info.name)
        words = np.zeros(max(1, len(args)), np.uint64)
        for i, (ty, value) in enumerate(zip(info.params, args)):
            if ty == "float":
                words[i] = np.float32(value).view(np.uint32)
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                words[i] = int(value) & (2**64 - 1)
            else:
                raise EmulatorError(f"argument {i} ({ty}) must be an int, got "
                                    f"{type(value).__name__}", kernel=info.name)
        return words

    def _deadlock(self, code: int, n: int, block3: tuple) -> str:
        """Explain a runtime error code from the threads' states and the sites they wait at."""
        state, site = self._threads["state"][:n], self._threads["site"][:n]

        def thread(t) -> str:
            t, x, xy = int(t), block3[0], block3[0] * block3[1]
            return f"thread {(t % x, t // x % block3[1], t // xy)}"

        def at(t) -> str:
            return f"{thread(t)} at {self._sites[site[t]]}"

        def other(ids) -> int:  # one of the threads ids that waits elsewhere than the first
            return ids[site[ids] != site[ids[0]]][0]

        everyone = np.arange(n)
        at_barrier = everyone[state == AT_BARRIER]
        if code == -1:
            done = everyone[state == FINISHED][0]
            return (f"barrier divergence: {thread(done)} finished while {at(at_barrier[0])} "
                    f"waits; a GPU deadlocks")
        if code == -2:
            return (f"barrier divergence: threads wait at different barriers: "
                    f"{at(at_barrier[0])}, {at(other(at_barrier))}")
        for w0 in range(0, n, WARP):
            lanes = everyone[w0:w0 + WARP]
            shuffling = lanes[state[lanes] == AT_SHUFFLE]
            waiting = lanes[state[lanes] == AT_BARRIER]
            if code == -3 and len(shuffling) and len(waiting):
                return (f"warp divergence: {at(shuffling[0])} waits for its warp, but "
                        f"{at(waiting[0])} waits; a GPU deadlocks")
            if code == -4 and len(set(site[shuffling])) > 1:
                return (f"warp divergence: lanes of one warp wait at different shuffles: "
                        f"{at(shuffling[0])}, {at(other(shuffling))}")
        return f"emulator runtime error {code}"
