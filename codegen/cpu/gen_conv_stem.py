"""float32 convolutions with few input channels (a network's stem: RGB in), on NCHW.

The GEMM convolution builds an im2col of K = Cin*kh*kw rows, and with K = 27 (3x3 on RGB) its
GEMM is all packing and stores: MobileNetV2's 3->32 stem ran at 20 G multiply-adds/s (0.55
ms), ResNet's 3->64 7x7 at 36. Here the register tiles of the int8 GEMM (gemm_int8.py) run on
floats: output channels are the tile rows (each weight broadcast from the model's own
[Cout, Cin*kh*kw] array), runs of an output row's pixels the vectors, every k = (c, ky, kx) a
vector read in place from a copy of the item's input rows. The copy is split into column
phases (the column modulo the stride), so the pixels of a stride-2 tap are consecutive too,
and zero-padded, so no tap needs a mask. The sums are one FMA chain per output element in k
order; the fused epilogue (bias, then relu / clip / ...) is the GEMM's.
"""

from __future__ import annotations

from llvmlite import ir

from slimc.ir import dtypes

from . import gemm_int8 as tiles
from .common import const_table, last_block_apart, pieces
from .gemm_epilogue import EpilogueContext
from .gen_quant import store_vector
from .kernel import KernelBuilder, llvm_name
from .llvm_util import (F32, I32, I64, i64, masked_load_vector, masked_store_vector, memset,
                        splat)

MAX_CHANNELS = 4  # input channels per group at most (RGB, RGBA, grey)
ITEMS = 16  # work items to aim for: images x blocks of output rows


def stem_conv_applies(kb: KernelBuilder, node) -> bool:
    """A float32 2-D conv of few input channels, one group, no dilation, a row stride of 1 or
    2, with enough output channels and pixels to fill tiles."""
    from slimc.ir.ops.window import _window_params

    x, w = node.inputs[0], node.inputs[1]
    xs, ws, ys = kb.shape(x), kb.shape(w), kb.shape(node.outputs[0])
    if x.type.dtype != dtypes.f32 or w.type.dtype != dtypes.f32 or len(xs) != 4:
        return False
    attrs = kb.attrs(node)
    strides, _, dil = _window_params(attrs, 2)
    return int(attrs["group"]) == 1 and ws[1] <= MAX_CHANNELS and ws[0] >= 4 and \
        tuple(dil) == (1, 1) and strides[1] in (1, 2) and ys[3] >= 4


def _float_path(kb: KernelBuilder) -> tiles.Int8Path:
    """The tile for floats: 6 rows x 4 vectors where there are 32 vector registers (AVX-512),
    6 x 2 with 16 (AVX2: 12 accumulators, 2 pixel vectors, a broadcast)."""
    vw = kb.vector_width
    return tiles.Int8Path("f32", vw, 1, 6, 4 if vw >= 16 else 2)


class FloatDot(tiles.DotStep):
    """The tiles' dot step on floats: a weight broadcast, a vector of pixels, one FMA."""

    def __init__(self, b: ir.IRBuilder, path: tiles.Int8Path):
        self.b, self.path = b, path
        self.row_is_u8, self.row_flip = False, False
        self.acc_type = ir.VectorType(F32, path.vw)

    def row_value(self, ptr, nbytes, name):
        return splat(self.b, self.b.load(ptr, name=name + ".w"), self.path.vw)

    def panel_vector(self, ptr, name):
        return self.b.load(self.b.bitcast(ptr, ir.PointerType(self.acc_type)), align=4,
                           name=name)

    def step(self, acc, row, panel, name):
        fma = tiles.intrinsic(self.b.module, f"llvm.fma.v{self.path.vw}f32", self.acc_type,
                              [self.acc_type] * 3)
        return self.b.call(fma, [row, panel, acc], name=name)


def stem_conv(kb: KernelBuilder, node) -> None:
    from slimc.ir.ops.window import _window_params

    b = kb.b
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    name = llvm_name(out.name)
    N, C, H, W = kb.shape(x)
    M, _, kh, kw = kb.shape(w)
    _, _, OH, OW = kb.shape(out)
    (sh, sw), pads, _ = _window_params(kb.attrs(node), 2)
    pt, pl, _, pr = pads
    path = _float_path(kb)
    vw, NR = path.vw, path.nr
    K = C * kh * kw
    P = OH * OW
    Wq = -(-(W + pl + pr) // sw) + 1  # columns per phase (one more: kx // sw reaches it)
    kb.cost = 2 * N * M * P * K
    n_rb = max(1, min(OH, -(-ITEMS // N)))
    ORB = -(-OH // n_rb)
    n_rb = -(-OH // ORB)
    kb.parallel_extent = N * n_rb
    in_rows = (ORB - 1) * sh + kh
    plane = in_rows * sw * Wq  # floats of one channel's rows
    slot = -(-(C * plane + NR) // 16) * 16  # + a run read past the end (its lanes unused)
    ws = b.bitcast(kb.scratch(4 * slot * kb.parallel_extent, name + ".rows"),
                   ir.PointerType(F32))
    # where tap k = (c, ky, kx) of a run's first pixel sits, from the run's first input pixel
    poffs = [c * plane + (ky * sw + kx % sw) * Wq + kx // sw
             for c in range(C) for ky in range(kh) for kx in range(kw)]
    poff_table = const_table(kb, poffs, "koff", I64)
    Wt = kb.ptr(w)
    Bias = kb.ptr(bias) if bias is not None else None
    X = kb.ptr(x)
    dst = kb.ptr(kb.outputs[0])
    dst_dt = kb.outputs[0].type.dtype
    epilogue, extra, values = kb.gemm_epilogue(out, P)
    args = {nm: v for (nm, _), v in zip(extra, values)}
    dot = FloatDot(b, path)
    last_rows = OH - (n_rb - 1) * ORB

    with kb.loop(kb.begin, kb.end, name="item") as item:
        rb = b.urem(item, i64(n_rb), name="rb")
        n = b.udiv(item, i64(n_rb), name="n")
        rows = kb.call_slot(ws, slot, "rows")
        oh0 = b.mul(rb, i64(ORB), name="oh0")
        ih0 = b.sub(b.mul(oh0, i64(sh)), i64(pt), name="ih0")
        xbase = b.mul(n, i64(C * H * W), name="xbase")

        def store(bb, m, col, acc, mask, nlanes, oh_abs, pix_row):
            v = acc
            if Bias is not None:
                v = bb.fadd(v, splat(bb, bb.load(bb.gep(Bias, [m], inbounds=True)), vw),
                            name="acc.bias")
            row = bb.add(bb.mul(n, i64(M)), m, name="row")
            if epilogue is not None:
                index = [n, m, oh_abs, bb.sub(col, pix_row)]
                ctx = EpilogueContext(bb, kb.module, row, col, mask, nlanes, vw, args, index)
                v = epilogue(ctx, v)
            store_vector(bb, v, dst, bb.add(bb.mul(row, i64(P)), col), mask, dst_dt)

        def variant(nrows: int, tag: str):
            _fill_rows(kb, X, xbase, rows, ih0, (nrows - 1) * sh + kh, H, W, Wq, pl, sw, C,
                       plane, slot, vw, tag)
            with kb.loop(0, nrows, name=tag + ".oh") as oh:
                row_base = b.mul(oh, i64(sh * sw * Wq))
                oh_abs = b.add(oh0, oh, name=tag + ".ohabs")
                pix_row = b.mul(oh_abs, i64(OW), name=tag + ".pixrow")

                def store_run(bb, m, col, acc, mask, nlanes):
                    store(bb, m, col, acc, mask, nlanes, oh_abs, pix_row)

                def run(ow0, ncols, rtag):
                    panel = b.gep(rows, [b.add(row_base, ow0)], inbounds=True, name=rtag + ".px")
                    col0 = b.add(pix_row, ow0, name=rtag + ".col0")
                    tiles.emit_row_tiles(
                        b, dot, lambda m: b.gep(Wt, [b.mul(m, i64(K))], inbounds=True,
                                                name="w.row"),
                        i64(0), i64(M), panel, col0, K, ncols, store_run, rtag,
                        poffsets=poff_table)

                pieces(kb, OW, NR, run, tag + ".ow")

        last_block_apart(kb, rb, n_rb, ORB, last_rows, variant)
    b.ret_void()


def _fill_rows(kb, X, xbase, dst, ih0, rows_in: int, H: int, W: int, Wq: int, pl: int, sw: int,
               C: int, plane: int, slot: int, vw: int, tag: str) -> None:
    """dst[c, r, phase, wq] = x[c, ih0 + r, wq*sw + phase - pl] of this image, 0 outside it:
    vw*sw input pixels a load (the last block of a row masked), split into sw column phases
    by shuffles, each stored as a vector (masked where the row ends)."""
    b = kb.b
    memset(b, dst, 0, 4 * slot)
    block = vw * sw
    vin = ir.VectorType(F32, block)
    phases = [ir.Constant(ir.VectorType(I32, vw), [sw * m + k for m in range(vw)])
              for k in range(sw)]
    whole = W - W % block

    def copy_block(chan, r, src, iw, npix: int):
        p = b.gep(X, [b.add(src, iw)], inbounds=True)
        if npix == block:
            v = b.load(b.bitcast(p, ir.PointerType(vin)), align=4, name="x")
        else:
            v = masked_load_vector(b, p, vin, tiles.lane_mask(block, npix), "x")
        for k in range(sw):  # input pixels iw + sw*m + k: column phase (pl + k) % sw
            count = -(-(npix - k) // sw)
            if count <= 0:
                continue
            part = v if sw == 1 else b.shuffle_vector(v, ir.Constant(vin, ir.Undefined),
                                                      phases[k])
            wq = b.add(b.udiv(iw, i64(sw)), i64((pl + k) // sw))
            at = b.add(b.mul(b.add(b.mul(r, i64(sw)), i64((pl + k) % sw)), i64(Wq)), wq)
            q = b.gep(chan, [at], inbounds=True)
            if count == vw:
                b.store(part, b.bitcast(q, ir.PointerType(part.type)), align=4)
            else:
                masked_store_vector(b, part, q, tiles.lane_mask(vw, count))

    with kb.loop(0, rows_in, name=tag + ".fr") as r:
        ih = b.add(ih0, r, name="ih")
        inside = b.and_(b.icmp_signed(">=", ih, i64(0)), b.icmp_signed("<", ih, i64(H)))
        with b.if_then(inside):
            with kb.loop(0, C, name=tag + ".fc") as c:
                src = b.add(xbase, b.add(b.mul(c, i64(H * W)), b.mul(ih, i64(W))), name="src")
                chan = b.gep(dst, [b.mul(c, i64(plane))], inbounds=True, name="chan")
                if whole:
                    with kb.loop(0, whole, block, name=tag + ".fw") as iw:
                        copy_block(chan, r, src, iw, block)
                if W % block:
                    copy_block(chan, r, src, i64(whole), W % block)


__all__ = ["stem_conv_applies", "stem_conv", "FloatDot", "MAX_CHANNELS"]
