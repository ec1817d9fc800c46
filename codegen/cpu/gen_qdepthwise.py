"""int8 depthwise convolution rows for conv_integer (gen_qconv.py): one output row of each
channel of a group, vw pixels at a time, every tap a vector of input bytes read in place from
the item's channel-interleaved copy of its input rows (gen_qconv's `_fill_nchwc`)."""

from __future__ import annotations

from llvmlite import ir

from . import gemm_int8 as q8
from .llvm_util import I8, I32, i64, splat


def concat(b, vs):
    """Concatenate equal vectors (a power-of-two count) into one."""
    while len(vs) > 1:
        n = vs[0].type.count
        mask = ir.Constant(ir.VectorType(I32, 2 * n), list(range(2 * n)))
        vs = [b.shuffle_vector(vs[i], vs[i + 1], mask) for i in range(0, len(vs), 2)]
    return vs[0]


WINDOW = 32  # bytes of one load that a row of taps is permuted from


def row_windows(poffs, kh: int, kw: int, vw: int):
    """Per ky, the load a row of kw taps takes: ([start offset], [(0, byte) per kx]), one
    32-byte window (stride 1 along the row: its taps a byte or a dilation apart), or None
    where a row does not fit one (kw > 4, wide dilation, a column stride). Two windows, one
    per column phase of a stride 2, were measured slower than the four-tap form (a two-source
    permute: MobileNetV2's stride-2 layers 5-7% slower, its stride-1 ones 10-13% faster)."""
    if kw > 4:
        return None
    rows = []
    for ky in range(kh):
        offs = [poffs[ky * kw + kx] for kx in range(kw)]
        starts = []
        for o in sorted(offs):
            if not starts or o + vw > starts[-1] + WINDOW:
                starts.append(o)
        if len(starts) > 1:
            return None
        where = []
        for o in offs:
            i = max(j for j, st in enumerate(starts) if st <= o)
            where.append((i, o - starts[i]))
        rows.append((starts, where))
    return rows


def depthwise_row(kb, scratch, row_base, pix_row, w_taps, chan0, Mg: int, OW: int, vw: int,
                   poffs, store, tag, quads: bool = False, row_quads=None) -> None:
    """One output row of each of the group's Mg channels: vw pixels at a time, each tap a
    vector of input bytes (contiguous at its offset in the channel's plane). With `quads`
    (VNNI), four taps' vectors are interleaved into one dword per pixel and multiplied by the
    four weights in one vpdpbusd; otherwise each tap is widened to int32 and multiplied.
    With `row_quads` ((kh, kw), kw <= 4, stride 1 along rows), a dword holds one row's taps
    instead, [x(ky, 0), .., x(ky, kw-1), 0..] against [w(ky, 0), .., w(ky, kw-1), 0..],
    permuted (vpermb) out of one 32-byte load: the taps of a row overlap, so a row costs a
    load and a permute where four taps cost four loads, inserts and a permute. (The same
    int32 products and sums in another order: exactly the same results.)"""
    b = kb.b
    vb = ir.VectorType(I8, vw)
    vi = ir.VectorType(I32, vw)
    vbb = ir.VectorType(I8, 4 * vw)
    taps = len(poffs)

    def vnni(acc, u, wrow, q, rtag):
        dp = q8.intrinsic(b.module, "llvm.x86.avx512.vpdpbusd.512", vi, [vi, vbb, vbb])
        wq = b.load(b.gep(w_taps, [b.add(wrow, i64(q))], inbounds=True), name=f"{rtag}.w{q}")
        return b.call(dp, [acc, u, b.bitcast(splat(b, wq, vw), vbb)], name=f"{rtag}.acc{q}")

    def load(ow0, off, ty):
        p = b.gep(scratch, [b.add(row_base, b.add(ow0, i64(off)))], inbounds=True)
        return b.load(b.bitcast(p, ir.PointerType(ty)), align=1)

    if row_quads is not None:
        kh, kw = row_quads
        vwin = ir.VectorType(I8, WINDOW)
        rows = [(starts[0], ir.Constant(ir.VectorType(I32, 4 * vw),
                                        [(where[kx][1] if kx < kw else 0) + lane
                                         for lane in range(vw) for kx in range(4)]))
                for starts, where in row_windows(poffs, kh, kw, vw)]

        def accumulate(ow0, m, rtag):
            acc, wrow = ir.Constant(vi, None), b.mul(b.add(chan0, m), i64(kh))
            for ky, (start, mask) in enumerate(rows):
                u = b.shuffle_vector(load(ow0, start, vwin), ir.Constant(vwin, ir.Undefined),
                                     mask)
                acc = vnni(acc, u, wrow, ky, rtag)
            return acc
    elif quads:
        groups = -(-taps // 4)
        inter = ir.Constant(ir.VectorType(I32, 4 * vw),
                            [vw * t + j for j in range(vw) for t in range(4)])

        def accumulate(ow0, m, rtag):
            acc, wrow = ir.Constant(vi, None), b.mul(b.add(chan0, m), i64(groups))
            for q in range(groups):
                # padding taps (past the last): any bytes, weight 0
                u = concat(b, [load(ow0, poffs[t] if t < taps else poffs[0], vb)
                                for t in range(4 * q, 4 * q + 4)])
                acc = vnni(acc, b.shuffle_vector(u, ir.Constant(u.type, ir.Undefined), inter),
                           wrow, q, rtag)
            return acc
    else:
        def accumulate(ow0, m, rtag):
            acc, wrow = ir.Constant(vi, None), b.mul(b.add(chan0, m), i64(taps))
            for t in range(taps):
                wt = b.load(b.gep(w_taps, [b.add(wrow, i64(t))], inbounds=True),
                            name=f"{rtag}.w{t}")
                acc = b.add(acc, b.mul(b.zext(load(ow0, poffs[t], vb), vi), splat(b, wt, vw)),
                            name=f"{rtag}.acc{t}")
            return acc

    def run(ow0, nlanes, m, rtag):
        store(b, m, b.add(pix_row, ow0), accumulate(ow0, m, rtag), q8.lane_mask(vw, nlanes),
              nlanes)

    with kb.loop(0, Mg, name=tag + ".m") as m:
        full = OW - OW % vw
        if full:
            with kb.loop(0, full, vw, name=tag + ".ow") as ow0:
                run(ow0, vw, m, tag + ".v")
        if OW % vw:
            run(i64(full), OW % vw, m, tag + ".vt")


__all__ = ["WINDOW", "row_windows", "depthwise_row", "concat"]
