"""The GPU emulator's runtime (gpu_emulator.py), written in LLVM IR and linked into every
emulated module: the threads' fibers, their waiting at barriers and shuffles, and the scheduler
that decides which thread runs when. (What each NVVM intrinsic computes on top of it is
gpu_emulator_nvvm.py's.)

The scheduler is JIT-compiled with the kernels, so a thread switch costs no Python. Blocks run
one after another, in a seeded random order (`@slimc_emu.launch`). A kernel that reaches no
barrier and no shuffle runs as a loop calling it once per thread, in a shuffled order
(`run_plain`). Every other kernel gets one fiber per thread (glibc's makecontext/swapcontext,
`run_fibers`): a thread runs until it waits (`wait`) at a barrier or a shuffle (a shuffle
waits twice: for its warp's lanes to publish their values, then for all to have read theirs),
or finishes. Values live across a barrier on each fiber's own stack, as they live in a GPU
thread's registers.

A segment (from the block's start or a barrier to the next barrier) is scheduled one of two
ways, which a seeded coin picks anew for every segment:

- warp by warp (3 times in 4, `run_serial`): the warps in a random order, each run alone -- its
  lanes in a new random order between its shuffles -- until all its live lanes wait at the
  block barrier or have finished, before the next warp starts. One warp finishes a whole
  segment before another starts it.
- in lockstep (`sweep` over the whole block): sweeps over all runnable threads, each in a new
  random order, alternate with releasing the warps whose live lanes all wait at a shuffle, so
  no warp gets more than one shuffle ahead of another.

Why both. A read that must see another warp's write (or must not see it yet) is wrong when the
two warps run in the other order: warp by warp draws both orders, whatever shuffles lie
between, so a tile overwritten without the barrier before it is caught; lockstep keeps warps
within a shuffle of each other and misses it. Lockstep alone shows two warps inside a segment
at once: an update lost when two warps read before either writes back (across a shuffle).
Together they reach every schedule either reaches alone; reused shared memory is the common
bug, hence 3 to 1. Neither preempts a thread that does not wait: a kernel that spins on another
warp's flag, with no barrier in the loop, hangs here.

When nothing can run, every thread must wait at the same block barrier (then all go on) or
have finished (the block is done); anything else would deadlock a GPU and `run_fibers` returns
an error code (`release_block`, `release_warps`) that gpu_emulator.py explains from the
threads' states and the sites they wait at.
"""

from __future__ import annotations

import ctypes
import re

import numpy as np

from .gpu_emulator_nvvm import replacements_ir

WARP = 32
# Each fiber's stack; only the pages a thread touches cost memory.
STACK_BYTES = 128 * 1024
# The bottom of every stack holds a pattern: a thread that overwrote it overflowed its stack
# (one that overflows by more than this may crash the process before it is reported).
GUARD_BYTES = 4096
# Room for one glibc ucontext_t (968 bytes on x86-64, about 4.5 KiB on AArch64; a test checks).
CONTEXT_BYTES = 8192
# Thread states in the runtime (the %Thread record) and their meaning for error messages.
RUNNABLE, AT_BARRIER, AT_SHUFFLE, FINISHED = 0, 1, 2, 3
THREAD = np.dtype([("state", np.int32), ("slot", np.int32), ("site", np.int32)])

# The runtime, linked into every emulated module. Python fills the globals marked "set by
# Python" before a launch; `@slimc_emu.launch` runs it. The intrinsics' replacements
# (gpu_emulator_nvvm.py) read its globals and wait through `@slimc_emu.wait`.
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
@slimc_emu.warps = global [32 x i32] zeroinitializer  ; run_serial's order of the warps

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

; Switch to every runnable thread of %order[0 .. %count) once, in that order; 1 if any ran.
define i32 @slimc_emu.run_runnable(ptr %order, i32 %count) {
start:
  %n = load i32, ptr @slimc_emu.n
  %scheduler = call ptr @slimc_emu.context(i32 %n)
  br label %loop
loop:
  %i = phi i32 [ 0, %start ], [ %i1, %next ]
  %ran = phi i32 [ 0, %start ], [ %ran1, %next ]
  %end = icmp eq i32 %i, %count
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

; Release every warp of threads [%first, %n) whose live lanes all wait at a shuffle (%first a
; multiple of 32): the number of lanes released, or -4 when the lanes of a warp wait at
; different shuffles.
define i32 @slimc_emu.release_warps(i32 %first, i32 %n) {
start:
  br label %loop
loop:
  %lo = phi i32 [ %first, %start ], [ %hi, %next ]
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

; Sweeps over the threads [%lo, %hi) (%order[%lo .. %hi) holds them), each sweep in a new
; random order and running every runnable one until it waits, alternate with releasing their
; warps whose live lanes all wait at a shuffle, until none can run. 0, or -4 (release_warps).
define i32 @slimc_emu.sweep(ptr %order, i32 %lo, i32 %hi) {
start:
  %lanes = getelementptr i32, ptr %order, i32 %lo
  %size = sub i32 %hi, %lo
  br label %sweep
sweep:
  call void @slimc_emu.shuffle(ptr %lanes, i32 %size)
  %ran = call i32 @slimc_emu.run_runnable(ptr %lanes, i32 %size)
  %freed = call i32 @slimc_emu.release_warps(i32 %lo, i32 %hi)
  %bad = icmp slt i32 %freed, 0
  br i1 %bad, label %fail, label %check
check:
  %progress = or i32 %ran, %freed
  %again = icmp ne i32 %progress, 0
  br i1 %again, label %sweep, label %done
done:
  ret i32 0
fail:
  ret i32 %freed
}

; One segment warp by warp: the warps in a new random order, each swept alone until none of its
; lanes can run (they wait at the block barrier or finished) before the next starts. 0, or -4.
define i32 @slimc_emu.run_serial(ptr %order, i32 %n) {
start:
  %n31 = add i32 %n, 31
  %nwarps = lshr i32 %n31, 5
  br label %lanes
lanes:  ; %order[t] = t: each warp's slice of %order holds its lanes
  %t = phi i32 [ 0, %start ], [ %t1, %lanes ]
  %pt = getelementptr i32, ptr %order, i32 %t
  store i32 %t, ptr %pt
  %t1 = add i32 %t, 1
  %morelanes = icmp ult i32 %t1, %n
  br i1 %morelanes, label %lanes, label %warps
warps:
  %w = phi i32 [ 0, %lanes ], [ %w1, %warps ]
  %pw = getelementptr [32 x i32], ptr @slimc_emu.warps, i32 0, i32 %w
  store i32 %w, ptr %pw
  %w1 = add i32 %w, 1
  %morewarps = icmp ult i32 %w1, %nwarps
  br i1 %morewarps, label %warps, label %shuffled
shuffled:
  call void @slimc_emu.shuffle(ptr @slimc_emu.warps, i32 %nwarps)
  br label %loop
loop:
  %k = phi i32 [ 0, %shuffled ], [ %k1, %next ]
  %end = icmp eq i32 %k, %nwarps
  br i1 %end, label %done, label %warp
warp:
  %pk = getelementptr [32 x i32], ptr @slimc_emu.warps, i32 0, i32 %k
  %wk = load i32, ptr %pk
  %lo = shl i32 %wk, 5
  %lo32 = add i32 %lo, 32
  %short = icmp ult i32 %n, %lo32
  %hi = select i1 %short, i32 %n, i32 %lo32
  %r = call i32 @slimc_emu.sweep(ptr %order, i32 %lo, i32 %hi)
  %bad = icmp slt i32 %r, 0
  br i1 %bad, label %fail, label %next
next:
  %k1 = add i32 %k, 1
  br label %loop
done:
  ret i32 0
fail:
  ret i32 %r
}

; A block of a kernel that waits somewhere: a fiber per thread, run until all finished. Each
; segment (from the block's start or a barrier to the next barrier) runs warp by warp or, one
; time in four, in lockstep; then the block barrier is released, or the block is done.
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
  br i1 %more, label %make, label %segment
segment:
  %coin = call i64 @slimc_emu.random()
  %serial = icmp uge i64 %coin, 4611686018427387904  ; 2^62: warp by warp 3 times in 4
  br i1 %serial, label %warps, label %lockstep
warps:
  %rs = call i32 @slimc_emu.run_serial(ptr %order, i32 %n)
  br label %ran
lockstep:
  %rl = call i32 @slimc_emu.sweep(ptr %order, i32 0, i32 %n)
  br label %ran
ran:
  %rr = phi i32 [ %rs, %warps ], [ %rl, %lockstep ]
  %bad = icmp slt i32 %rr, 0
  br i1 %bad, label %fail, label %barrier
barrier:
  %r = call i32 @slimc_emu.release_block(i32 %n)
  %released = icmp eq i32 %r, 0
  br i1 %released, label %segment, label %out
out:
  %ok = icmp eq i32 %r, 1
  %code = select i1 %ok, i32 0, i32 %r
  ret i32 %code
fail:
  ret i32 %rr
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
"""

# @slimc_emu.launch as Python calls it
LAUNCH = ctypes.CFUNCTYPE(ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                          ctypes.c_int64, ctypes.c_int32, ctypes.c_void_p)


def runtime_ir(arithmetic: set) -> str:
    """The runtime's text, its sizes filled in, with the NVVM intrinsics' replacements
    (gpu_emulator_nvvm.py): the thread's, and those of the `arithmetic` ones the module uses."""
    sizes = {"CONTEXT_BYTES": CONTEXT_BYTES, "STACK_USABLE": STACK_BYTES - GUARD_BYTES,
             "STACK_BYTES": STACK_BYTES, "GUARD_BYTES": GUARD_BYTES}
    text = _RUNTIME
    for name, value in sizes.items():
        text = re.sub(rf"\b{name}\b", str(value), text)
    return text + replacements_ir(arithmetic)


