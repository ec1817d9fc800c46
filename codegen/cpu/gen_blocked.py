"""Kernels for the blocked NCHW[b]c layout (ir/ops/layout.py, chosen by passes/layout.py).

A blocked tensor's innermost axis is b channels, b the vector width, so every load and store
here is a whole vector and no loop has a tail, whatever the image size.

* ``depthwise_conv2d_nchwc``: a work item is one output row of one channel block. The
  kh*kw weight vectors are loaded once per row; each output pixel is kh*kw vector FMAs.
  Interior pixels (every tap on real input) run without tests; the pixels near the edges,
  and rows whose taps leave the image, take the zero padding by a select on a clamped load.
* ``conv2d_nchwc``: a register tile of OCV output-channel blocks x T pixels (AVX2: 2 x 6, 12
  accumulators). Per input channel one weight vector per block is loaded and each pixel's
  input value is broadcast: OCV + T loads feed OCV * T FMAs. A row goes in near-equal
  tiles of at most T (`_row_chunks`); tiles holding a pixel whose taps reach the padding are
  emitted at their constant place with those taps left out. A 1x1 stride-1 unpadded
  convolution runs over the flattened image (a 7x7 plane is 49 pixels in tiles of 13, 12,
  12, 12, not 7 rows of 7).
* ``to_blocked`` / ``from_blocked``: index maps, so the conversions fuse like any injective op.

Both convolutions hand each result vector to `kb.store_result`: the epilogue (clip, residual
add, SiLU, ...) runs on the vector before its only store.
"""

from __future__ import annotations

from llvmlite import ir

from slimc.ir.errors import InternalError
from slimc.ir.ops.window import _window_params

from .common import entry_alloca, smax, smin
from .kernel import KernelBuilder, generator, index_map, llvm_name
from .llvm_util import F32, i64, splat

# fused ops of a few instructions each: their epilogue code is small enough to unroll
CHEAP_EPILOGUE_OPS = frozenset({"relu", "clip", "add", "sub", "mul", "max", "min", "neg",
                                "leaky_relu", "from_blocked", "to_blocked"})
FLAT_ROW = 128  # about the pixels a work item of a flattened 1x1 convolution takes
FLAT_MIN_ITEMS = 8  # work items a flattened 1x1 convolution aims for, for the threads


# ----------------------------------------------------------------------------------------------
# Conversions
# ----------------------------------------------------------------------------------------------


@index_map("to_blocked")
def to_blocked(kb: KernelBuilder, node, v, index):
    """out[n, cb, *s, c] = x[n, cb*b + c, *s]"""
    blk = int(kb.attrs(node)["block"])
    n, cb, *sp, c = index
    return node.inputs[0], [n, kb.iadd(kb.imul(cb, blk), c), *sp]


@index_map("from_blocked")
def from_blocked(kb: KernelBuilder, node, v, index):
    """out[n, ch, *s] = x[n, ch // b, *s, ch % b]"""
    blk = int(kb.attrs(node)["block"])
    n, ch, *sp = index
    return node.inputs[0], [n, kb.idiv(ch, blk), *sp, kb.imod(ch, blk)]


to_blocked.keeps_last_axis = lambda kb, node: False
from_blocked.keeps_last_axis = lambda kb, node: False


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def _fma(b: ir.IRBuilder, x, y, acc, name: str):
    return b.fadd(acc, b.fmul(x, y, flags=("contract",)), flags=("contract",), name=name)


def vload(b: ir.IRBuilder, base, offset, vt: ir.VectorType, name: str):
    p = b.gep(base, [offset], inbounds=True, name=name + ".p")
    return b.load(b.bitcast(p, ir.PointerType(vt)), align=4, name=name)


def _interior(size: int, out: int, k: int, s: int, d: int, pad: int) -> tuple[int, int]:
    """Output positions [lo, hi) whose every tap 0..k-1 lands inside [0, size)."""
    lo = -(-pad // s)
    hi = min(out, (size - 1 + pad - (k - 1) * d) // s + 1) if size - 1 + pad - (k - 1) * d >= 0 \
        else 0
    lo = min(lo, out)
    return lo, max(lo, hi)


def _bias_vector(kb: KernelBuilder, bias, block_index, lanes: int, name: str):
    vt = ir.VectorType(F32, lanes)
    if bias is None:
        return ir.Constant(vt, None)
    return vload(kb.b, kb.ptr(bias), kb.b.mul(block_index, i64(lanes)), vt, name)


# ----------------------------------------------------------------------------------------------
# Depthwise
# ----------------------------------------------------------------------------------------------


@generator("depthwise_conv2d_nchwc", epilogue=True, vector_code=True)
def depthwise_conv2d_nchwc(kb: KernelBuilder, node) -> None:
    b = kb.b
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    N, CB, H, W, B = kb.shape(x)
    _, kh, kw, _ = kb.shape(w)
    Ho, Wo = kb.shape(out)[2:4]
    (sh, sw), pads, (dh, dw) = _window_params(kb.attrs(node), 2)
    pt, pl = pads[0], pads[1]
    vt = ir.VectorType(F32, B)
    zero = ir.Constant(vt, None)
    X, Wt = kb.ptr(x), kb.ptr(w)
    kb.parallel_extent = N * CB * Ho
    kb.cost = 2 * N * CB * B * Ho * Wo * kh * kw
    lo, hi = _interior(W, Wo, kw, sw, dw, pl)
    with kb.loop(kb.begin, kb.end, name="row") as row:
        n, cb, oy = kb.delinear(row, [N, CB, Ho])
        cb_ir = kb._ir(cb)
        wbase = b.mul(cb_ir, i64(kh * kw * B), name="w.base")
        wv = [[vload(b, Wt, b.add(wbase, i64((ky * kw + kx) * B)), vt, f"w{ky}{kx}")
               for kx in range(kw)] for ky in range(kh)]
        bv = _bias_vector(kb, bias, cb_ir, B, "bias")
        plane = b.mul(kb._ir(kb.iadd(kb.imul(n, CB), cb)), i64(H * W * B), name="plane")
        iy0 = b.sub(b.mul(kb._ir(oy), i64(sh)), i64(pt), name="iy0")
        rows, row_ok = [], []
        for ky in range(kh):
            iy = b.add(iy0, i64(ky * dh), name=f"iy{ky}")
            ok = b.and_(b.icmp_signed(">=", iy, i64(0)), b.icmp_signed("<", iy, i64(H)),
                        name=f"iy{ky}.ok")
            iyc = smin(b, smax(b, iy, i64(0), f"iy{ky}.c0"), i64(H - 1), f"iy{ky}.c")
            rows.append(b.add(plane, b.mul(iyc, i64(W * B)), name=f"row{ky}"))
            row_ok.append(ok)
        all_rows = row_ok[0]
        for ok in row_ok[1:]:
            all_rows = b.and_(all_rows, ok, name="rows.ok")

        def pixel(ox, checked: bool):
            acc = bv
            ix0 = b.sub(b.mul(ox, i64(sw)), i64(pl), name="ix0")
            for kx in range(kw):
                ix = b.add(ix0, i64(kx * dw), name=f"ix{kx}")
                if checked:
                    x_ok = b.and_(b.icmp_signed(">=", ix, i64(0)), b.icmp_signed("<", ix, i64(W)),
                                  name=f"ix{kx}.ok")
                    ix = smin(b, smax(b, ix, i64(0), f"ix{kx}.c0"), i64(W - 1), f"ix{kx}.c")
                for ky in range(kh):
                    v = vload(b, X, b.add(rows[ky], b.mul(ix, i64(B))), vt, f"x{ky}{kx}")
                    if checked:
                        v = b.select(b.and_(row_ok[ky], x_ok), v, zero, name=f"x{ky}{kx}.z")
                    acc = _fma(b, v, wv[ky][kx], acc, "acc")
            kb.store_result(out, [n, cb, oy, ox, 0], acc)

        def run(lo_, hi_, checked, tag):
            if hi_ > lo_:
                with kb.loop(lo_, hi_, name=f"ox.{tag}") as ox:
                    pixel(ox, checked)

        with b.if_else(all_rows) as (inside, edge_row):
            with inside:
                run(0, lo, True, "left")
                run(lo, hi, False, "mid")
                run(hi, Wo, True, "right")
            with edge_row:
                run(0, Wo, True, "edge")
    b.ret_void()


# ----------------------------------------------------------------------------------------------
# Dense (group 1)
# ----------------------------------------------------------------------------------------------


# Most weights (floats) a work item scales for a squeeze-and-excite input scale: its OCV output
# blocks' weights live in a stack buffer (<= 192 KB).
SCALED_WEIGHTS_MAX = 3 * 16384


def _scale_weights(kb: KernelBuilder, W, wbase, S, sbase, dst, ocv, per_block, CIB, taps, BI,
                   BO) -> None:
    """dst[j, cib, tap, ci, :] = W[wbase + j, cib, tap, ci, :] * S[sbase + cib*BI + ci]."""
    b = kb.b
    vt = ir.VectorType(F32, BO)
    for j in range(ocv):
        with kb.loop(0, CIB, name=f"s{j}.cib") as cib:
            with kb.loop(0, taps, name=f"s{j}.tap") as tap:
                off = b.add(b.mul(b.add(b.mul(cib, i64(taps)), tap), i64(BI * BO)),
                            i64(j * per_block), name="s.off")
                for ci in range(BI):
                    sv = b.load(b.gep(S, [b.add(sbase, b.add(b.mul(cib, i64(BI)), i64(ci)))],
                                      inbounds=True), name="s")
                    at = b.add(off, i64(ci * BO))
                    v = vload(b, W, b.add(wbase, at), vt, "w")
                    p = b.gep(dst, [at], inbounds=True)
                    b.store(b.fmul(v, splat(b, sv, BO, "s")), b.bitcast(p, ir.PointerType(vt)),
                            align=4)


def _register_tile(cob: int, nregs: int) -> tuple[int, int]:
    """(output-channel blocks, pixels) per register tile: OCV * T accumulators leave room for
    OCV weight vectors and a broadcast."""
    budget = nregs - 4
    ocv = 2 if cob % 2 == 0 else 3 if cob % 3 == 0 else 1
    return ocv, max(1, min(14, budget // ocv))


def _flat_rows(P: int, T: int, blocks: int) -> tuple[int, int]:
    """(pixels a row, rows) of a flattened image of P pixels: rows of at most about FLAT_ROW
    pixels, more of them where the output-channel blocks alone would give threads few items
    (rows of at least T pixels); rows of whole tiles that divide P where there are (12544
    pixels: 112 rows of 8 x 14), else of equal length (49 pixels for 5 blocks: 2 rows, 25
    and 24), so every row's tiles are known when the code is made. MobileNetV2's 960 -> 160
    projection at 7x7 had 5 items, 3 on one of two threads; now 10."""
    n = -(-P // FLAT_ROW)
    if blocks * n < FLAT_MIN_ITEMS:
        n = max(n, min(-(-FLAT_MIN_ITEMS // blocks), P // T))
    for w in range(P // n // T * T, 0, -T):  # whole tiles, at most twice the rows wanted
        if P % w == 0 and P // w <= 2 * n:
            return w, P // w
    for d in range(n, 2 * n + 1):  # equal rows
        if P % d == 0:
            return P // d, d
    row_w = -(-P // n)
    return row_w, -(-P // row_w)


def _row_chunks(Wo: int, T: int, lo: int, hi: int) -> list[tuple[int, int, int, bool]]:
    """A row of Wo output pixels cut into tiles of at most T, about equal (27 pixels: 14 +
    13, not 14 and 13 pixels one at a time, which are load- and latency-bound: the Xeon here
    ran a stride-2 3x3 convolution at a quarter of its FMA peak that way). Pixels outside
    [lo, hi) have taps in the padding; a tile holding one is an edge tile, emitted at its
    constant place with those taps left out. Returns (first pixel, tiles, pixels a tile,
    edge) runs, the interior's equal tiles in one run each."""
    n = -(-Wo // T)
    sizes = [Wo // n + (1 if i < Wo % n else 0) for i in range(n)]
    runs: list = []
    ox0 = 0
    for size in sizes:
        edge = ox0 < lo or ox0 + size > hi
        last = runs[-1] if runs else None
        if last and not edge and not last[3] and last[2] == size:
            runs[-1] = (last[0], last[1] + 1, size, False)
        else:
            runs.append((ox0, 1, size, edge))
        ox0 += size
    return runs


@generator("conv2d_nchwc", epilogue=True, vector_code=True)
def conv2d_nchwc(kb: KernelBuilder, node) -> None:
    b = kb.b
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    scale = node.inputs[3] if len(node.inputs) > 3 else None
    out = node.outputs[0]
    xs = kb.shape(x)
    N, CIB, H, W, BI = xs if len(xs) == 5 else (*xs, 1)  # NCHW input: blocks of 1 channel
    COB, _, kh, kw, _, BO = kb.shape(w)
    Ho, Wo = kb.shape(out)[2:4]
    (sh, sw), pads, (dh, dw) = _window_params(kb.attrs(node), 2)
    pt, pl = pads[0], pads[1]
    vt = ir.VectorType(F32, BO)
    name = llvm_name(out.name)
    X, Wt = kb.ptr(x), kb.ptr(w)
    ocv, T = _register_tile(COB, kb.target.num_vector_regs)
    flat = kh == kw == 1 and sh == sw == 1 and pads == [0, 0, 0, 0]
    if flat:  # the image as one line of pixels, in rows of about FLAT_ROW
        P = H * W
        row_w, nrows = _flat_rows(P, T, COB // ocv)
    else:
        row_w, nrows = Wo, Ho
    wstride_blk = CIB * kh * kw * BI * BO  # one output block's weights
    kb.parallel_extent = N * (COB // ocv) * nrows
    kb.cost = 2 * N * COB * BO * Ho * Wo * CIB * BI * kh * kw
    accs = [[entry_alloca(kb.b, vt, f"acc{j}.{t}") for t in range(T)] for j in range(ocv)]
    # an epilogue of more than a few instructions (a sigmoid, GELU's erf) runs in a loop over
    # the tile's results, once in the code; a cheap one (clip, relu, a residual add) stays
    # unrolled: through the loop MobileNetV2's clip kernels ran 5% slower
    costly = any(n.op not in CHEAP_EPILOGUE_OPS for n in kb.nodes if n is not node)
    results = entry_alloca(kb.b, ir.ArrayType(vt, ocv * T), name + ".tile") if costly else None
    if scale is not None:
        if ocv * wstride_blk > SCALED_WEIGHTS_MAX:
            raise InternalError(f"input scale on a conv with {wstride_blk} weights per output "
                                f"block (the layout pass folds at most {SCALED_WEIGHTS_MAX // 3})",
                                where=kb.fn.name)
        scaled = b.bitcast(entry_alloca(kb.b, ir.ArrayType(F32, ocv * wstride_blk), name + ".ws"),
                           ir.PointerType(F32), name=name + ".wscaled")
        last = entry_alloca(kb.b, ir.IntType(64), name + ".ws.for")
        b.store(i64(-1), last)
    with kb.loop(kb.begin, kb.end, name="item") as item:
        n, cop, r = kb.delinear(item, [N, COB // ocv, nrows])
        co0 = kb.imul(cop, ocv, name="co0")
        n_ir, co0_ir, r_ir = kb._ir(n), kb._ir(co0), kb._ir(r)
        xbase = b.mul(n_ir, i64(CIB * H * W * BI), name="x.n")
        wbase = b.mul(co0_ir, i64(wstride_blk), name="w.co")
        if scale is not None:  # this item's weights times the input scale, once per (n, cop)
            key = b.add(b.mul(n_ir, i64(COB)), co0_ir, name="ws.key")
            with b.if_then(b.icmp_signed("!=", b.load(last), key)):
                _scale_weights(kb, Wt, wbase, kb.ptr(scale), b.mul(n_ir, i64(CIB * BI)), scaled,
                               ocv, wstride_blk, CIB, kh * kw, BI, BO)
                b.store(key, last)
            Wt, wbase = scaled, i64(0)
        biases = [_bias_vector(kb, bias, b.add(co0_ir, i64(j)), BO, f"bias{j}") for j in range(ocv)]
        if flat:
            p0 = b.mul(r_ir, i64(row_w), name="p0")
            iy0 = None
        else:
            p0 = None
            iy0 = b.sub(b.mul(r_ir, i64(sh)), i64(pt), name="iy0")

        def tile(ox0, t_count: int, edge: int | None = None):
            """Pixels ox0 .. ox0+t_count-1 of this row, OCV blocks of output channels.
            `edge`: ox0 is this constant, and each (pixel, tap) in the padding is left out
            of the code (the taps unrolled); otherwise every tap is inside."""
            for j in range(ocv):
                for t in range(t_count):
                    b.store(biases[j], accs[j][t])
            with kb.loop(0, CIB, name="cib") as cib:
                xc = b.add(xbase, b.mul(cib, i64(H * W * BI)), name="x.c")
                wc = b.add(wbase, b.mul(cib, i64(kh * kw * BI * BO)), name="w.c")
                with kb.loop(0, kh, name="ky") as ky:
                    if flat:
                        xrow = b.add(xc, b.mul(p0, i64(BI)), name="x.row")
                        y_ok = None
                    else:
                        iy = b.add(iy0, b.mul(ky, i64(dh)), name="iy")
                        y_ok = b.and_(b.icmp_signed(">=", iy, i64(0)),
                                      b.icmp_signed("<", iy, i64(H)), name="iy.ok")
                        xrow = b.add(xc, b.mul(iy, i64(W * BI)), name="x.row")
                    wky = b.add(wc, b.mul(ky, i64(kw * BI * BO)), name="w.ky")

                    def taps():
                        if edge is not None:  # kx unrolled: the taps inside, per pixel
                            for kx in range(kw):
                                ix0 = edge * sw + kx * dw - pl
                                inside = [t for t in range(t_count) if 0 <= ix0 + t * sw < W]
                                if inside:
                                    tap(i64(kx), i64(ix0), inside)
                            return
                        with kb.loop(0, kw, name="kx") as kx:
                            ix0 = b.sub(b.add(b.mul(ox0, i64(sw)), b.mul(kx, i64(dw))), i64(pl),
                                        name="ix0")
                            tap(kx, ix0, range(t_count))

                    def tap(kx, ix0, pixels):
                        """Tap kx for the tile's `pixels` (ix0: pixel 0's input column)."""
                        wkx = b.add(wky, b.mul(kx, i64(BI * BO)), name="w.kx")

                        def channel(ci):
                            woff = b.add(wkx, b.mul(ci, i64(BO)), name="w.ci")
                            wvs = [vload(b, Wt, b.add(woff, i64(j * wstride_blk)), vt,
                                         f"w{j}") for j in range(ocv)]
                            for t in pixels:
                                at = b.add(xrow, b.add(b.mul(b.add(ix0, i64(t * sw)),
                                                             i64(BI)), ci))
                                xv = b.load(b.gep(X, [at], inbounds=True), name="x")
                                xs = splat(b, xv, BO, "xs")
                                for j in range(ocv):
                                    acc = b.load(accs[j][t])
                                    b.store(_fma(b, xs, wvs[j], acc, f"acc{j}.{t}"),
                                            accs[j][t])

                        # the BI channels of an input block: a loop, not unrolled (16 copies
                        # of the tile were 90% of a kernel's code)
                        if BI == 1:
                            channel(i64(0))
                            return
                        with kb.loop(0, BI, name="ci") as ci:
                            channel(ci)

                    if y_ok is None:
                        taps()
                    else:
                        with b.if_then(y_ok):
                            taps()
            def store(t, y):
                ox = b.add(ox0, t, name="ox")
                if flat:
                    p = b.add(p0, ox, name="pix")
                    oy_, ox_ = b.udiv(p, i64(Wo), name="oy"), b.urem(p, i64(Wo), name="ox.o")
                else:
                    oy_, ox_ = r, ox
                for j in range(ocv):
                    kb.store_result(out, [n, kb.iadd(co0, j), oy_, ox_, 0], y(j))

            if t_count == 1 or results is None:
                for t in range(t_count):
                    store(i64(t), lambda j, t=t: b.load(accs[j][t], name=f"y{j}.{t}"))
                return
            # a fused epilogue (SiLU, clip, a residual add...): its code once, in a loop over
            # the tile's pixels, not T times (28 sigmoids were 90% of a SiLU kernel's code)
            for j in range(ocv):
                for t in range(t_count):
                    b.store(b.load(accs[j][t]), b.gep(results, [i64(0), i64(j * T + t)],
                                                      inbounds=True))
            with kb.loop(0, t_count, name="px.out") as t:
                store(t, lambda j: b.load(b.gep(results, [i64(0), b.add(t, i64(j * T))],
                                                inbounds=True), name=f"y{j}"))

        def row(chunks):
            for ox0, count, size, at_edge in chunks:
                if at_edge:
                    tile(i64(ox0), size, edge=ox0)
                    continue
                with kb.loop(0, count, name="tile") as ti:
                    tile(b.add(i64(ox0), b.mul(ti, i64(size)), name="ox0"), size)

        if not flat:
            row(_row_chunks(Wo, T, *_interior(W, Wo, kw, sw, dw, pl)))
        elif P % row_w == 0:
            row(_row_chunks(row_w, T, 0, row_w))
        else:  # the last row is the image's rest: its tiles of their own
            last_w = P - (nrows - 1) * row_w
            with b.if_else(b.icmp_unsigned("==", r_ir, i64(nrows - 1))) as (last, other):
                with last:
                    row(_row_chunks(last_w, T, 0, last_w))
                with other:
                    row(_row_chunks(row_w, T, 0, row_w))
    b.ret_void()
