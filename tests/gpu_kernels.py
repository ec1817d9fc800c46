"""Hand-written NVPTX kernels (LLVM IR text) for the GPU emulator's tests
(tests/test_gpu_emulator.py): each says in a comment what it computes; barrier calls some
tests remove are marked `; NAME` at the end of their line."""

HEAD = """target datalayout = "e-p6:32:32-i64:64-i128:128-i256:256-v16:16-v32:32-n16:32:64"
target triple = "nvptx64-nvidia-cuda"
""" + "".join(f"declare i32 @llvm.nvvm.read.ptx.sreg.{r}.{d}()\n"
              for r in ("tid", "ntid", "ctaid", "nctaid") for d in "xyz") + """
declare i32 @llvm.nvvm.read.ptx.sreg.laneid()
declare void @llvm.nvvm.barrier.cta.sync.aligned.all(i32)
declare float @llvm.nvvm.shfl.sync.bfly.f32(i32, float, i32, i32)
declare float @llvm.nvvm.shfl.sync.down.f32(i32, float, i32, i32)
"""

# y[i] = a * x[i] + b for i < n: one thread per element, global pointers in addrspace(1)
AXPB = HEAD + """
define ptx_kernel void @axpb(ptr addrspace(1) noalias readonly %x, ptr addrspace(1) noalias %y,
                            float %a, float %b, i32 %n) {
entry:
  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %ctaid = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()
  %ntid = call i32 @llvm.nvvm.read.ptx.sreg.ntid.x()
  %base = mul i32 %ctaid, %ntid
  %i = add i32 %base, %tid
  %in = icmp slt i32 %i, %n
  br i1 %in, label %body, label %exit
body:
  %i64 = sext i32 %i to i64
  %px = getelementptr float, ptr addrspace(1) %x, i64 %i64
  %v = load float, ptr addrspace(1) %px, align 4
  %m = fmul float %v, %a
  %r = fadd float %m, %b
  %py = getelementptr float, ptr addrspace(1) %y, i64 %i64
  store float %r, ptr addrspace(1) %py, align 4
  br label %exit
exit:
  ret void
}
"""

# out[block] = sum of the block's 256 elements: a tree in shared memory, a barrier per level
BLOCK_SUM = HEAD + """
@sdata = internal addrspace(3) global [256 x float] undef, align 4

define ptx_kernel void @block_sum(ptr %x, ptr %out) {
entry:
  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %bid = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()
  %ntid = call i32 @llvm.nvvm.read.ptx.sreg.ntid.x()
  %base = mul i32 %bid, %ntid
  %i = add i32 %base, %tid
  %i64 = zext i32 %i to i64
  %xg = addrspacecast ptr %x to ptr addrspace(1)
  %px = getelementptr float, ptr addrspace(1) %xg, i64 %i64
  %v = load float, ptr addrspace(1) %px, align 4
  %t64 = zext i32 %tid to i64
  %ps = getelementptr [256 x float], ptr addrspace(3) @sdata, i64 0, i64 %t64
  store float %v, ptr addrspace(3) %ps, align 4
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0) ; FIRST_BARRIER
  %s0 = lshr i32 %ntid, 1
  br label %loop
loop:
  %s = phi i32 [ %s0, %entry ], [ %s1, %sync ]
  %more = icmp ugt i32 %s, 0
  br i1 %more, label %step, label %done
step:
  %active = icmp ult i32 %tid, %s
  br i1 %active, label %add, label %sync
add:
  %j = add i32 %tid, %s
  %j64 = zext i32 %j to i64
  %pj = getelementptr [256 x float], ptr addrspace(3) @sdata, i64 0, i64 %j64
  %a = load float, ptr addrspace(3) %ps, align 4
  %b = load float, ptr addrspace(3) %pj, align 4
  %c = fadd float %a, %b
  store float %c, ptr addrspace(3) %ps, align 4
  br label %sync
sync:
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0) ; LOOP_BARRIER
  %s1 = lshr i32 %s, 1
  br label %loop
done:
  %first = icmp eq i32 %tid, 0
  br i1 %first, label %write, label %exit
write:
  %r = load float, ptr addrspace(3) @sdata, align 4
  %bid64 = zext i32 %bid to i64
  %po = getelementptr float, ptr %out, i64 %bid64
  store float %r, ptr %po, align 4
  br label %exit
exit:
  ret void
}
"""


def without_marked(ir: str, *markers: str) -> str:
    """The kernel with the barrier calls marked `; MARKER` removed."""
    lines = ir.splitlines()
    return "\n".join(ln for ln in lines if not any(ln.endswith("; " + m) for m in markers))


# y[i] = the sum of x over i's warp, by a shuffle loop (offsets 16, 8, ..., 1); 3-D blocks
WARP_SUM = HEAD + """
define ptx_kernel void @warp_sum(ptr %x, ptr %y) {
entry:
  %tx = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %ty = call i32 @llvm.nvvm.read.ptx.sreg.tid.y()
  %tz = call i32 @llvm.nvvm.read.ptx.sreg.tid.z()
  %nx = call i32 @llvm.nvvm.read.ptx.sreg.ntid.x()
  %ny = call i32 @llvm.nvvm.read.ptx.sreg.ntid.y()
  %nz = call i32 @llvm.nvvm.read.ptx.sreg.ntid.z()
  %bid = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()
  %plane = mul i32 %tz, %ny
  %rows = add i32 %plane, %ty
  %row = mul i32 %rows, %nx
  %lin = add i32 %row, %tx
  %nxy = mul i32 %nx, %ny
  %size = mul i32 %nxy, %nz
  %base = mul i32 %bid, %size
  %i = add i32 %base, %lin
  %i64 = zext i32 %i to i64
  %px = getelementptr float, ptr %x, i64 %i64
  %v0 = load float, ptr %px, align 4
  br label %loop
loop:
  %v = phi float [ %v0, %entry ], [ %v1, %loop ]
  %off = phi i32 [ 16, %entry ], [ %off1, %loop ]
  %other = call float @llvm.nvvm.shfl.sync.MODE.f32(i32 -1, float %v, i32 %off, i32 31)
  %v1 = fadd float %v, %other
  %off1 = lshr i32 %off, 1
  %more = icmp ne i32 %off1, 0
  br i1 %more, label %loop, label %done
done:
  %py = getelementptr float, ptr %y, i64 %i64
  store float %v1, ptr %py, align 4
  ret void
}
"""

# out[lin] = shfl.sync.MODE.i32(full mask, value = 1000 * block + lin, %b, %c)
SHUFFLE_PROBE = HEAD + """
declare i32 @llvm.nvvm.shfl.sync.MODE.i32(i32, i32, i32, i32)

define ptx_kernel void @probe(ptr %out, i32 %b, i32 %c) {
  %t = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %bid = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()
  %n = call i32 @llvm.nvvm.read.ptx.sreg.ntid.x()
  %k = mul i32 %bid, 1000
  %v = add i32 %k, %t
  %r = call i32 @llvm.nvvm.shfl.sync.MODE.i32(i32 -1, i32 %v, i32 %b, i32 %c)
  %base = mul i32 %bid, %n
  %i = add i32 %base, %t
  %i64 = zext i32 %i to i64
  %p = getelementptr i32, ptr %out, i64 %i64
  store i32 %r, ptr %p, align 4
  ret void
}
"""

# C[M, N] = A[M, K] @ B[K, N], row-major: 16x16 tiles of A and B in shared memory, block
# (16, 16), grid (ceil(N / 16), ceil(M / 16)); two barriers per K step, inside the loop
MATMUL = HEAD + """
@As = internal addrspace(3) global [256 x float] undef, align 16
@Bs = internal addrspace(3) global [256 x float] undef, align 16

define ptx_kernel void @matmul(ptr noalias readonly %A, ptr noalias readonly %B, ptr noalias %C,
                              i32 %M, i32 %N, i32 %K) {
entry:
  %tx = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %ty = call i32 @llvm.nvvm.read.ptx.sreg.tid.y()
  %bx = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()
  %by = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.y()
  %bx16 = shl i32 %bx, 4
  %col = add i32 %bx16, %tx
  %by16 = shl i32 %by, 4
  %row = add i32 %by16, %ty
  %ty16 = shl i32 %ty, 4
  %mine = add i32 %ty16, %tx
  %mine64 = zext i32 %mine to i64
  %pAs = getelementptr [256 x float], ptr addrspace(3) @As, i64 0, i64 %mine64
  %pBs = getelementptr [256 x float], ptr addrspace(3) @Bs, i64 0, i64 %mine64
  %rowok = icmp ult i32 %row, %M
  %colok = icmp ult i32 %col, %N
  br label %tiles
tiles:
  %k0 = phi i32 [ 0, %entry ], [ %k0next, %after ]
  %acc = phi float [ 0.0, %entry ], [ %acc2, %after ]
  %moretiles = icmp ult i32 %k0, %K
  br i1 %moretiles, label %load, label %finish
load:
  %ka = add i32 %k0, %tx
  %kaok = icmp ult i32 %ka, %K
  %aok = and i1 %rowok, %kaok
  br i1 %aok, label %loada, label %storea
loada:
  %rowK = mul i32 %row, %K
  %ia = add i32 %rowK, %ka
  %ia64 = zext i32 %ia to i64
  %pa = getelementptr float, ptr %A, i64 %ia64
  %va = load float, ptr %pa, align 4
  br label %storea
storea:
  %a = phi float [ %va, %loada ], [ 0.0, %load ]
  store float %a, ptr addrspace(3) %pAs, align 4
  %kb = add i32 %k0, %ty
  %kbok = icmp ult i32 %kb, %K
  %bok = and i1 %kbok, %colok
  br i1 %bok, label %loadb, label %storeb
loadb:
  %kbN = mul i32 %kb, %N
  %ib = add i32 %kbN, %col
  %ib64 = zext i32 %ib to i64
  %pb = getelementptr float, ptr %B, i64 %ib64
  %vb = load float, ptr %pb, align 4
  br label %storeb
storeb:
  %b = phi float [ %vb, %loadb ], [ 0.0, %storea ]
  store float %b, ptr addrspace(3) %pBs, align 4
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0) ; TILES_LOADED
  br label %dot
dot:
  %kk = phi i32 [ 0, %storeb ], [ %kk1, %dot ]
  %acc1 = phi float [ %acc, %storeb ], [ %acc2, %dot ]
  %ias = add i32 %ty16, %kk
  %ias64 = zext i32 %ias to i64
  %pas = getelementptr [256 x float], ptr addrspace(3) @As, i64 0, i64 %ias64
  %av = load float, ptr addrspace(3) %pas, align 4
  %kk16 = shl i32 %kk, 4
  %ibs = add i32 %kk16, %tx
  %ibs64 = zext i32 %ibs to i64
  %pbs = getelementptr [256 x float], ptr addrspace(3) @Bs, i64 0, i64 %ibs64
  %bv = load float, ptr addrspace(3) %pbs, align 4
  %prod = fmul float %av, %bv
  %acc2 = fadd float %acc1, %prod
  %kk1 = add i32 %kk, 1
  %kkmore = icmp ult i32 %kk1, 16
  br i1 %kkmore, label %dot, label %after
after:
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0) ; TILES_USED
  %k0next = add i32 %k0, 16
  br label %tiles
finish:
  %ok = and i1 %rowok, %colok
  br i1 %ok, label %write, label %exit
write:
  %rowN = mul i32 %row, %N
  %ic = add i32 %rowN, %col
  %ic64 = zext i32 %ic to i64
  %pc = getelementptr float, ptr %C, i64 %ic64
  store float %acc, ptr %pc, align 4
  br label %exit
exit:
  ret void
}
"""

# y[block, t] = x[block, (t + 8) % ntid]: eight rotations through shared memory, two barriers
# each, the barriers inside a helper function
ROTATE = HEAD + """
@buf = internal addrspace(3) global [256 x float] undef, align 4

define internal void @sync() {
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0)
  ret void
}

define ptx_kernel void @rotate(ptr %x, ptr %y) {
entry:
  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %bid = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()
  %ntid = call i32 @llvm.nvvm.read.ptx.sreg.ntid.x()
  %base = mul i32 %bid, %ntid
  %i = add i32 %base, %tid
  %i64 = zext i32 %i to i64
  %px = getelementptr float, ptr %x, i64 %i64
  %v0 = load float, ptr %px, align 4
  %t64 = zext i32 %tid to i64
  %mine = getelementptr [256 x float], ptr addrspace(3) @buf, i64 0, i64 %t64
  %t1 = add i32 %tid, 1
  %next = urem i32 %t1, %ntid
  %n64 = zext i32 %next to i64
  %theirs = getelementptr [256 x float], ptr addrspace(3) @buf, i64 0, i64 %n64
  br label %loop
loop:
  %k = phi i32 [ 0, %entry ], [ %k1, %loop ]
  %v = phi float [ %v0, %entry ], [ %v1, %loop ]
  store float %v, ptr addrspace(3) %mine, align 4
  call void @sync()
  %v1 = load float, ptr addrspace(3) %theirs, align 4
  call void @sync()
  %k1 = add i32 %k, 1
  %more = icmp ult i32 %k1, 8
  br i1 %more, label %loop, label %done
done:
  %py = getelementptr float, ptr %y, i64 %i64
  store float %v1, ptr %py, align 4
  ret void
}
"""

# out[thread's linear id in the grid] = tid.x + 10 tid.y + 100 tid.z + 1000 (ctaid.x + 10 ctaid.y
# + 100 ctaid.z); the block's and grid's sizes checked by the test through the same ids
GEOMETRY = HEAD + """
define ptx_kernel void @geometry(ptr %out) {
  %tx = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %ty = call i32 @llvm.nvvm.read.ptx.sreg.tid.y()
  %tz = call i32 @llvm.nvvm.read.ptx.sreg.tid.z()
  %nx = call i32 @llvm.nvvm.read.ptx.sreg.ntid.x()
  %ny = call i32 @llvm.nvvm.read.ptx.sreg.ntid.y()
  %nz = call i32 @llvm.nvvm.read.ptx.sreg.ntid.z()
  %bx = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()
  %by = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.y()
  %bz = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.z()
  %gx = call i32 @llvm.nvvm.read.ptx.sreg.nctaid.x()
  %gy = call i32 @llvm.nvvm.read.ptx.sreg.nctaid.y()
  %ty10 = mul i32 %ty, 10
  %tz100 = mul i32 %tz, 100
  %by10 = mul i32 %by, 10
  %bz100 = mul i32 %bz, 100
  %t1 = add i32 %tx, %ty10
  %t = add i32 %t1, %tz100
  %b1 = add i32 %bx, %by10
  %b2 = add i32 %b1, %bz100
  %b = mul i32 %b2, 1000
  %v = add i32 %t, %b
  %bzy = mul i32 %bz, %gy
  %bzyy = add i32 %bzy, %by
  %bzyyx = mul i32 %bzyy, %gx
  %block = add i32 %bzyyx, %bx
  %tzy = mul i32 %tz, %ny
  %tzyy = add i32 %tzy, %ty
  %tzyyx = mul i32 %tzyy, %nx
  %lin = add i32 %tzyyx, %tx
  %nxy = mul i32 %nx, %ny
  %size = mul i32 %nxy, %nz
  %first = mul i32 %block, %size
  %i = add i32 %first, %lin
  %i64 = zext i32 %i to i64
  %p = getelementptr i32, ptr %out, i64 %i64
  store i32 %v, ptr %p, align 4
  ret void
}
"""

# thread 0 returns early while the others wait at a barrier: a deadlock on a GPU
EARLY_EXIT = HEAD + """
define ptx_kernel void @early_exit(ptr %out) {
entry:
  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %zero = icmp eq i32 %tid, 0
  br i1 %zero, label %exit, label %wait
wait:
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0)
  br label %exit
exit:
  ret void
}
"""

# even threads wait at one barrier, odd threads at another
TWO_BARRIERS = HEAD + """
define ptx_kernel void @two_barriers() {
entry:
  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %bit = and i32 %tid, 1
  %odd = icmp ne i32 %bit, 0
  br i1 %odd, label %a, label %b
a:
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0)
  br label %exit
b:
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0)
  br label %exit
exit:
  ret void
}
"""

# lane 0 waits at a block barrier while its warp shuffles
SHUFFLE_VS_BARRIER = HEAD + """
define ptx_kernel void @shuffle_vs_barrier() {
entry:
  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %zero = icmp eq i32 %tid, 0
  br i1 %zero, label %a, label %b
a:
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0)
  br label %exit
b:
  %r = call float @llvm.nvvm.shfl.sync.bfly.f32(i32 -1, float 1.0, i32 1, i32 31)
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0)
  br label %exit
exit:
  ret void
}
"""

# one thread copies n bytes with memcpy through global-pointer intrinsics (p1 mangling)
MEMCPY = HEAD + """
declare void @llvm.memcpy.p1.p1.i64(ptr addrspace(1), ptr addrspace(1), i64, i1)
declare void @llvm.memcpy.p0.p0.i64(ptr, ptr, i64, i1)

define ptx_kernel void @copy(ptr addrspace(1) %dst, ptr addrspace(1) %src, ptr %dst2, ptr %src2,
                            i64 %n) {
  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %zero = icmp eq i32 %tid, 0
  br i1 %zero, label %copy, label %exit
copy:
  call void @llvm.memcpy.p1.p1.i64(ptr addrspace(1) %dst, ptr addrspace(1) %src, i64 %n, i1 false)
  call void @llvm.memcpy.p0.p0.i64(ptr %dst2, ptr %src2, i64 %n, i1 false)
  br label %exit
exit:
  ret void
}
"""

# y[block, t] = the sum over tiles k < ntiles of x[block, k, 32 (w + 1) % 128 ..][:32], for
# thread t of warp w (block of 128): per tile the block copies 128 elements to shared memory,
# each warp reads the next warp's part and sums it by butterfly shuffles. As the fused attention
# kernel (codegen/cuda/gen_attention.py), a barrier before each copy keeps a warp from
# overwriting the tile another warp still reads.
TILE_REUSE = HEAD + """
@tile = internal addrspace(3) global [128 x float] undef, align 4

define ptx_kernel void @tile_reuse(ptr %x, ptr %y, i32 %ntiles) {
entry:
  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %bid = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()
  %t64 = zext i32 %tid to i64
  %mine = getelementptr [128 x float], ptr addrspace(3) @tile, i64 0, i64 %t64
  %t32 = add i32 %tid, 32
  %next = and i32 %t32, 127
  %n64 = zext i32 %next to i64
  %theirs = getelementptr [128 x float], ptr addrspace(3) @tile, i64 0, i64 %n64
  %row = mul i32 %bid, %ntiles
  br label %tiles
tiles:
  %k = phi i32 [ 0, %entry ], [ %k1, %summed ]
  %acc = phi float [ 0.0, %entry ], [ %acc1, %summed ]
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0) ; BEFORE_OVERWRITE
  %rk = add i32 %row, %k
  %base = mul i32 %rk, 128
  %i = add i32 %base, %tid
  %i64 = zext i32 %i to i64
  %px = getelementptr float, ptr %x, i64 %i64
  %v = load float, ptr %px, align 4
  store float %v, ptr addrspace(3) %mine, align 4
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0) ; AFTER_COPY
  %a = load float, ptr addrspace(3) %theirs, align 4
  br label %bfly
bfly:
  %s = phi float [ %a, %tiles ], [ %s1, %bfly ]
  %off = phi i32 [ 16, %tiles ], [ %off1, %bfly ]
  %other = call float @llvm.nvvm.shfl.sync.bfly.f32(i32 -1, float %s, i32 %off, i32 31)
  %s1 = fadd float %s, %other
  %off1 = lshr i32 %off, 1
  %more = icmp ne i32 %off1, 0
  br i1 %more, label %bfly, label %summed
summed:
  %acc1 = fadd float %acc, %s1
  %k1 = add i32 %k, 1
  %moretiles = icmp ult i32 %k1, %ntiles
  br i1 %moretiles, label %tiles, label %done
done:
  %b128 = mul i32 %bid, 128
  %o = add i32 %b128, %tid
  %o64 = zext i32 %o to i64
  %py = getelementptr float, ptr %y, i64 %o64
  store float %acc1, ptr %py, align 4
  ret void
}
"""

# out[block] = how many warps added 1 to a shared counter: lane 0 of each warp reads it, the
# warp shuffles, lane 0 writes it back plus 1 -- a lost update (no atomics) when two warps read
# before either writes
LOST_UPDATE = HEAD + """
@count = internal addrspace(3) global float undef, align 4

define ptx_kernel void @count_warps(ptr %out) {
entry:
  %tid = call i32 @llvm.nvvm.read.ptx.sreg.tid.x()
  %bid = call i32 @llvm.nvvm.read.ptx.sreg.ctaid.x()
  %lane = and i32 %tid, 31
  %first = icmp eq i32 %tid, 0
  br i1 %first, label %init, label %start
init:
  store float 0.0, ptr addrspace(3) @count, align 4
  br label %start
start:
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0)
  %old = load float, ptr addrspace(3) @count, align 4
  %one = call float @llvm.nvvm.shfl.sync.bfly.f32(i32 -1, float 1.0, i32 1, i32 31)
  %new = fadd float %old, %one
  %leader = icmp eq i32 %lane, 0
  br i1 %leader, label %add, label %counted
add:
  store float %new, ptr addrspace(3) @count, align 4
  br label %counted
counted:
  call void @llvm.nvvm.barrier.cta.sync.aligned.all(i32 0)
  br i1 %first, label %write, label %exit
write:
  %c = load float, ptr addrspace(3) @count, align 4
  %b64 = zext i32 %bid to i64
  %po = getelementptr float, ptr %out, i64 %b64
  store float %c, ptr %po, align 4
  br label %exit
exit:
  ret void
}
"""

KERNELS = {"axpb": AXPB, "block_sum": BLOCK_SUM, "matmul": MATMUL, "rotate": ROTATE,
           "geometry": GEOMETRY, "copy": MEMCPY, "early_exit": EARLY_EXIT,
           "tile_reuse": TILE_REUSE, "count_warps": LOST_UPDATE,
           **{f"warp_sum_{m}": WARP_SUM.replace("MODE", m) for m in ("bfly", "down")},
           **{f"probe_{m}": SHUFFLE_PROBE.replace("MODE", m) for m in ("bfly", "down", "up",
                                                                       "idx")}}
