"""Transposes in register tiles: kernels that are one, and the pieces other kernels use.

Lowered as an index map (gen_views.py), a transpose reads one element per output lane: a
gather of `vw` scalars per vector. When the transpose is its own kernel (nothing fused into
it: a sparse_matmul's transposed input), this loads `vw` rows of a `vw` x `vw` tile as
vectors, transposes them in registers (`transpose_square`) and stores `vw` vectors: two
memory operations per `vw` elements. Edges narrower than a tile go element by element. Work
items: the batch entries x strips of `vw` input rows. `transpose_strip` (with row strides of
its own) also packs the sparse kernels' inputs and attention's keys.

The conversion from the blocked layout back to NCHW is the same transpose (b pixels of b
channels each), with the elementwise ops fused before it applied to the pixel vectors:
`emit_planes_from_blocks`.
"""

from __future__ import annotations

from llvmlite import ir

from .kernel import GROUP_KERNELS, KernelBuilder
from .llvm_util import I32, first_lanes, i64, masked_store_vector
from .scalar_ops import LOWERINGS


def transpose_square(b: ir.IRBuilder, vecs: list) -> list:
    """n vectors of n lanes (n a power of two), rows -> columns: log2(n) rounds, each
    swapping the off-diagonal d x d blocks of every 2d x 2d block with one two-input
    shuffle per vector (LLVM picks unpack / permute instructions for them)."""
    n = len(vecs)
    vecs = list(vecs)
    d = 1
    while d < n:
        lo = [l if not l & d else n + l - d for l in range(n)]
        hi = [l + d if not l & d else n + l for l in range(n)]
        lo_mask = ir.Constant(ir.VectorType(I32, n), lo)
        hi_mask = ir.Constant(ir.VectorType(I32, n), hi)
        for i in range(n):
            if i & d:
                continue
            a, c = vecs[i], vecs[i + d]
            vecs[i] = b.shuffle_vector(a, c, lo_mask, name=f"tr.lo{d}")
            vecs[i + d] = b.shuffle_vector(a, c, hi_mask, name=f"tr.hi{d}")
        d *= 2
    return vecs


def _transpose_and_buffers(kb: KernelBuilder):
    """(the transpose, the buffer it reads, the buffer it writes) when the kernel is one
    transpose between reshapes (a chain, each node reading the one before): a reshape moves
    no data, so the tiles read the kernel's input and write its output as the transpose's
    own shapes. Else None."""
    nodes = kb.nodes
    transposes = [n for n in nodes if n.op == "transpose"]
    if len(transposes) != 1 or any(n.op not in ("transpose", "reshape") for n in nodes):
        return None
    order = list(transposes)
    while True:  # the reshapes before the transpose, back to the kernel's input
        before = [n for n in nodes if n.outputs[0] is order[0].inputs[0]]
        if not before:
            break
        order.insert(0, before[0])
    while True:  # and after it, to the kernel's output
        after = [n for n in nodes if n.inputs[0] is order[-1].outputs[0]]
        if not after:
            break
        order.append(after[0])
    if len(order) != len(nodes) or kb.outputs != [order[-1].outputs[0]]:
        return None
    return transposes[0], order[0].inputs[0], order[-1].outputs[0]


def tiled_transpose_applies(kb: KernelBuilder) -> bool:
    """The kernel is one transpose (after reshapes, if any) swapping the last two axes of
    4-byte elements, each of the two at least a vector long."""
    found = _transpose_and_buffers(kb)
    if found is None:
        return False
    node = found[0]
    perm = list(kb.attrs(node)["perm"])
    r = len(perm)
    if r < 2 or perm != list(range(r - 2)) + [r - 1, r - 2]:
        return False
    if node.inputs[0].type.dtype.itemsize != 4:
        return False
    shape = kb.shape(node.inputs[0])
    return shape[-2] >= kb.vector_width and shape[-1] >= kb.vector_width


def emit_tiled_transpose(kb: KernelBuilder) -> None:
    node, src, dst = _transpose_and_buffers(kb)
    shape = kb.shape(node.inputs[0])
    A, B = shape[-2], shape[-1]
    batch = 1
    for d in shape[:-2]:
        batch *= d
    vw = kb.vector_width
    b = kb.b
    X, Y = kb.ptr(src), kb.ptr(dst)
    strips = -(-A // vw)
    kb.parallel_extent = batch * strips
    kb.cost = batch * A * B
    with kb.loop(kb.begin, kb.end, name="item") as item:
        n = b.udiv(item, i64(strips), name="n")
        strip = b.urem(item, i64(strips), name="strip")
        base = b.mul(n, i64(A * B), name="base")
        transpose_strip(kb, b.gep(X, [base], inbounds=True), b.gep(Y, [base], inbounds=True),
                        b.mul(strip, i64(vw), name="i0"), A, B)
    b.ret_void()


def transpose_matrix(kb: KernelBuilder, X, Y, A: int, B: int) -> None:
    """Y [B, A] = the transpose of X [A, B] (row-major, both), strip by strip."""
    vw = kb.vector_width
    with kb.loop(0, -(-A // vw), name="strip") as strip:
        transpose_strip(kb, X, Y, kb.b.mul(strip, i64(vw), name="i0"), A, B)


def transpose_strip(kb: KernelBuilder, X, Y, i0, A: int, B: int, ldx: int = 0,
                    ldy: int = 0) -> None:
    """Rows i0 to i0 + vw of X [A, B] into columns of Y [B, A]: vw x vw register tiles
    (`transpose_square`), the columns past the last whole tile, and a last strip of fewer
    than vw rows, element by element. X's rows are `ldx` floats apart (B if 0), Y's `ldy`
    (A if 0)."""
    b, vw = kb.b, kb.vector_width
    ldx, ldy = i64(ldx or B), i64(ldy or A)
    vt = ir.VectorType(X.type.pointee, vw)
    a_full, b_full = A // vw * vw, B // vw * vw

    def elements(i0, i1, j0, j1):
        with kb.loop(i0, i1, name="ei") as i:
            with kb.loop(j0, j1, name="ej") as j:
                x = b.load(b.gep(X, [b.add(b.mul(i, ldx), j)], inbounds=True))
                b.store(x, b.gep(Y, [b.add(b.mul(j, ldy), i)], inbounds=True))

    full = b.icmp_signed("<", i0, i64(a_full), name="full.strip")
    with b.if_else(full) as (then, otherwise):
        with then:
            with kb.loop(0, b_full, step=vw, name="j0") as j0:
                rows = []
                for i in range(vw):
                    at = b.add(b.mul(b.add(i0, i64(i)), ldx), j0)
                    p = b.bitcast(b.gep(X, [at], inbounds=True), ir.PointerType(vt))
                    rows.append(b.load(p, align=4, name=f"row{i}"))
                for j, col in enumerate(transpose_square(b, rows)):
                    at = b.add(b.mul(b.add(j0, i64(j)), ldy), i0)
                    p = b.bitcast(b.gep(Y, [at], inbounds=True), ir.PointerType(vt))
                    b.store(col, p, align=4)
            if b_full < B:
                elements(i0, b.add(i0, i64(vw)), i64(b_full), i64(B))
        with otherwise:  # the last strip, fewer than vw rows
            elements(i0, i64(A), i64(0), i64(B))


def _from_blocked_root(kb: KernelBuilder):
    """The kernel's from_blocked node when the kernel ends in one that turns a 2-D image
    [N, C/b, H, W, b] (b the vector width, C a multiple of it) back into NCHW, and every
    other node is elementwise (a clip, a squeeze-and-excite scale: computed on the blocked
    vectors). Else None."""
    last = kb.nodes[-1]
    if last.op != "from_blocked" or kb.outputs != [last.outputs[0]]:
        return None
    if any(n.op not in LOWERINGS for n in kb.nodes[:-1]):
        return None
    x = last.inputs[0]
    shape, out = kb.shape(x), kb.shape(last.outputs[0])
    vw = kb.vector_width
    if x.type.dtype.itemsize != 4 or len(shape) != 5 or shape[-1] != vw or \
            int(kb.attrs(last)["block"]) != vw or out[1] != shape[1] * vw:
        return None
    return last


def planes_from_blocks_applies(kb: KernelBuilder) -> bool:
    return _from_blocked_root(kb) is not None


def emit_planes_from_blocks(kb: KernelBuilder) -> None:
    """from_blocked (with the elementwise ops before it) as register transposes: per row of
    W pixels of a block of b channels, b pixels' vectors (each b channels, the fused ops
    applied to them as vectors) become b channels' runs of b pixels, stored whole; the last
    W % b pixels of the row the same, stored under a mask. As an index map the conversion
    read each output lane from a pixel 64 bytes from the last (0.35 ns an element in
    MobileNetV2, with the ops evaluated one lane at a time)."""
    node = _from_blocked_root(kb)
    x, y = node.inputs[0], node.outputs[0]
    N, CB, H, W, vw = kb.shape(x)
    b = kb.b
    Y = kb.ptr(y)
    vt = ir.VectorType(Y.type.pointee, vw)
    kb.parallel_extent = N * CB * H
    kb.cost = N * CB * H * W * vw * max(1, len(kb.nodes))
    with kb.loop(kb.begin, kb.end, name="row") as item:
        n, cb, h = (kb._ir(i) for i in kb.delinear(item, [N, CB, H]))
        # out[n, cb*vw + c, h, w] at plane(c) + w
        first = b.mul(b.add(b.mul(b.add(b.mul(n, i64(CB)), cb), i64(vw * H)), h), i64(W),
                      name="plane0")

        def strip(w0, pixels: int) -> None:
            vecs = [kb.value_at(x, [n, cb, h, b.add(w0, i64(p)), 0], vw) for p in range(pixels)]
            vecs += [ir.Constant(vt, None)] * (vw - pixels)
            for c, run in enumerate(transpose_square(b, vecs)):
                at = b.gep(Y, [b.add(b.add(first, i64(c * H * W)), w0)], inbounds=True)
                if pixels == vw:
                    b.store(run, b.bitcast(at, ir.PointerType(vt)), align=4)
                else:
                    masked_store_vector(b, run, at, first_lanes(vw, pixels))
            kb.cache.clear()

        if W >= vw:
            with kb.loop(0, W // vw * vw, step=vw, name="w0") as w0:
                strip(w0, vw)
        if W % vw:
            strip(i64(W // vw * vw), W % vw)
    b.ret_void()


GROUP_KERNELS.append((tiled_transpose_applies, emit_tiled_transpose))
GROUP_KERNELS.append((planes_from_blocks_applies, emit_planes_from_blocks))
