"""conv_integer on the int8 tiles of gemm_int8.py (matmul_integer is in gen_quant.py).

A 2-D conv_integer with constant weights runs directly on the int8 tiles, without an im2col:
rows are output channels (the weights, signed, k ordered (ky, kx, channel group), each k group
broadcast from memory), columns are runs of output pixels along an output row (the unsigned
side). A work item, a block of output rows of one image and group, first copies the input rows
it reads into its scratch slot as [channel group][row][column phase][column][g channels] bytes
(borders and padded channels hold the activation zero point; the phase is the column modulo
the stride): then the g bytes of k group (ky, kx, channels) of vw consecutive output pixels
are one contiguous vector at an offset (`poffsets`) from the run's first pixel. The
accumulator vectors run along output pixels, which NCHW stores contiguously, so the fused
epilogue (dequantize, bias, relu, the next quantize) is the matmul's. Where output channels
fill vectors better than an output row's pixels do, pixels are the tile rows instead and
the accumulators are transposed before the epilogue (`pixel_rows`); depthwise convolutions
multiply taps directly (`gen_qdepthwise.py`); the rest runs exact loops (`conv_integer_loops`).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.graph import constant_data

from . import gemm_int8 as q8
from .common import const_table, entry_alloca, last_block_apart, pieces, smin
from .gemm_epilogue import EpilogueContext
from .gen_quant import check_i32, debug, store_vector
from .gen_qdepthwise import concat, depthwise_row, row_windows
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import (I8, I32, I64, i64, masked_load_vector, masked_store_vector, memset,
                        splat)


CONV_ITEMS = 16  # work items to aim for: images x groups x blocks of output rows
PIXEL_ROWS_MIN_K = 256  # see `pixel_rows` in conv_integer
FLAT_ITEM_CHANNELS = 96  # see `flat` in conv_integer


def _lanes_used(n: int, vw: int) -> float:
    """The share of lanes that n values fill in vectors of vw."""
    return n / (-(-n // vw) * vw)


def _regrid_width(P: int, OW: int, vw: int, widest: int = 256) -> int:
    """For a plane of P pixels in rows of OW, the row width (a divisor of P, at most
    `widest`) whose vectors are all full, or OW where OW's are or no width is."""
    if OW % vw == 0:
        return OW
    fits = [w for w in range(vw, min(P, widest) + 1, vw) if P % w == 0]
    return max(fits) if fits else OW


def _conv_plan(kb: KernelBuilder, node):
    """The conv's geometry when the int8 tiles take it, else (None, why)."""
    from slimc.ir.ops.window import _window_params

    x, w = node.inputs[0], node.inputs[1]
    x_zp = node.inputs[2] if len(node.inputs) > 2 else None
    w_zp = node.inputs[3] if len(node.inputs) > 3 else None
    xs, ws = kb.shape(x), kb.shape(w)
    if len(xs) != 4:
        return None, f"the conv is {len(xs) - 2}-D (the tiles take 2-D)"
    if constant_data(w) is None:
        return None, "the weights are computed at run time"
    if x_zp is not None and constant_data(x_zp) is None:
        return None, "the input's zero point is computed at run time"
    if w_zp is not None and constant_data(w_zp) is None:
        return None, "the weights' zero point is computed at run time"
    attrs = kb.attrs(node)
    strides, pads, dil = _window_params(attrs, 2)
    group = int(attrs["group"])
    M, Cg, kh, kw = ws
    Mg = M // group
    zs = np.zeros(M, np.int64) if w_zp is None else \
        np.broadcast_to(np.asarray(w_zp.data).reshape(-1).astype(np.int64), (M,))
    _, zs_norm = q8.to_s8_side(np.zeros(1, w.type.dtype.numpy), zs)
    if np.any(zs_norm != 0):
        return None, "the weights have a zero point other than 0 (int8) or 128 (uint8)"
    if Cg == 1:
        kind = "depthwise"
    elif Mg < 4 or Cg * kh * kw < 8:
        return None, f"{Mg} output and {Cg * kh * kw} input values per group are too few " \
                     f"for a GEMM"
    else:
        kind = "gemm"
    return dict(strides=strides, pads=pads, dil=dil, group=group, kind=kind), None


@generator("conv_integer", epilogue=True, epilogue_any_dtype=True)
def conv_integer(kb: KernelBuilder, node) -> None:
    plan, why = _conv_plan(kb, node)
    if plan is None:
        debug(f"{node.label}: conv_integer by exact loops: {why}")
        return conv_integer_loops(kb, node)
    path = q8.int8_path(kb.target)
    depthwise = plan["kind"] == "depthwise"
    if depthwise:  # one input channel per group: bytes widened to int32 lanes, no k groups
        path = q8.Int8Path("depthwise", path.vw, 1, 1, path.nv)
    vw, g, NR = path.vw, path.group, path.nr
    x, w = node.inputs[0], node.inputs[1]
    x_zp = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    b = kb.b
    name = llvm_name(out.name)
    N, C, H, W = kb.shape(x)
    M, Cg, kh, kw = kb.shape(w)
    _, _, OH, OW = kb.shape(out)
    (sh, sw), (dh, dw) = plan["strides"], plan["dil"]
    pt, pl, pb, pr = plan["pads"]
    G = plan["group"]
    Mg = M // G
    cgroups = -(-Cg // g)
    Cp = cgroups * g
    K = kh * kw * Cp
    P = OH * OW
    Wq = -(-(W + pl + pr) // sw)  # columns per phase
    # A 1x1, stride-1, unpadded conv is a GEMM over the plane's P pixels, whatever their
    # rows: with rows narrower than a vector (MobileNetV2's 7x7 layers: runs of 7 pixels in
    # 16 lanes) it runs as one row of P (`flat`: 49 pixels in 4 vectors where 7 rows took 7),
    # its work split by blocks of output channels instead of rows; with rows that leave lanes
    # idle, as rows of a width that does not (`regrid`: 56x56 as 49 rows of 64). Otherwise
    # the tiles run either way round: output channels as rows against runs of an output
    # row's pixels (the vectors), or pixels as rows against vectors of output channels
    # (`pixel_rows`, transposed before the epilogue). Each leaves the lanes of its partial
    # last vector idle: pixels as rows where that wastes fewer (ResNet-18's 56-, 28-, 14- and
    # 7-pixel rows fill 7/8, 7/8, 7/8 and 7/16 of their vectors, its 64 to 512 channels all:
    # 3x3 layers 0.64 -> 0.56 ms at 56x56), given products enough per result to pay the
    # transposes (K >= PIXEL_ROWS_MIN_K).
    pointwise = not depthwise and (kh, kw, sh, sw) == (1, 1, 1, 1) and not any(plan["pads"])
    flat = pointwise and OW < vw
    width = _regrid_width(P, OW, vw) if pointwise and not flat else OW
    pixel_rows = not depthwise and not flat and K >= PIXEL_ROWS_MIN_K and \
        _lanes_used(Mg, vw) > _lanes_used(width, vw)
    regrid = width != OW and not pixel_rows
    if flat or regrid:  # the epilogue finds (row, column) from the flat pixel index
        H = OH = P // width if regrid else 1
        W = OW = Wq = width if regrid else P
    if depthwise:
        debug(f"{node.label}: int8 depthwise conv, {kh}x{kw} taps on {vw} int32 lanes")
    elif pixel_rows:
        debug(f"{node.label}: int8 conv as {N * G} GEMMs {P}x{K} @ {K}x{Mg} (pixels as rows: "
              f"{Mg} channels fill {_lanes_used(Mg, vw):.0%} of vectors of {vw}, output rows "
              f"of {OW} pixels {_lanes_used(OW, vw):.0%}): {q8.why_path(kb.target)}")
    else:
        runs = "one row of the plane's pixels" if flat else \
            f"the plane as rows of {OW} pixels" if regrid else f"runs along rows of {OW} pixels"
        debug(f"{node.label}: int8 conv as {N * G} GEMMs {Mg}x{K} @ {K}x{P} ({runs}): "
              f"{q8.why_path(kb.target)}")
    kb.cost = 2 * N * M * P * Cg * kh * kw

    # work items: images x groups x blocks of output rows (x blocks of channel panels)
    npan = -(-Mg // NR)
    if pixel_rows:
        n_pb = min(npan, max(1, -(-CONV_ITEMS // (N * G))))
        # rows split only where panels are too few (narrow rows split: every panel's weights
        # read once per block, ResNet-18's 7x7 layers 0.57 -> 0.68 ms)
        n_rb = 1 if OW < vw else max(1, min(OH, -(-CONV_ITEMS // (N * G * n_pb))))
    elif flat:  # blocks of whole MR-row tiles of output channels
        # every item copies the whole plane: at least FLAT_ITEM_CHANNELS channels an item
        # (but two items, for two threads); MobileNetV2's 576->96 at 14x14 in 16 items of 6
        # channels spent 43% of its time copying (114 -> 67 us in 2 items)
        tiles = -(-Mg // path.mr)
        n_rb, n_pb = 1, min(tiles, max(2, -(-Mg // FLAT_ITEM_CHANNELS)))
        MB = -(-tiles // n_pb) * path.mr
        n_pb = -(-Mg // MB)
    else:
        n_rb, n_pb = max(1, min(OH, -(-CONV_ITEMS // (N * G)))), 1
    ORB = -(-OH // n_rb)
    n_rb = -(-OH // ORB)
    PB = -(-npan // n_pb)
    if pixel_rows:
        n_pb = -(-npan // PB)
    kb.parallel_extent = items = N * G * n_rb * n_pb
    in_rows = (ORB - 1) * sh + (kh - 1) * dh + 1
    plane = in_rows * sw * Wq * g  # bytes of one channel group
    # + one run read past the end (masked); a depthwise row reads 32-byte windows
    slot = -(-(cgroups * plane + NR * g + (32 if depthwise else 0)) // 64) * 64
    ws_raw = kb.scratch(slot * items, name + ".ws")

    # weights [M, ky, kx, Cp] as the signed row side; the zero-point term per output channel;
    # where each k group of a pixel run sits, from the run's first pixel
    Ws, _ = q8.to_s8_side(w.data, 0)
    Wk = np.zeros((M, kh, kw, Cp), np.int8)
    Wk[..., :Cg] = Ws.transpose(0, 2, 3, 1)
    Wk = Wk.reshape(M, K)
    x_signed = x.type.dtype == dtypes.i8
    zu = int(np.asarray(x_zp.data).reshape(())) if x_zp is not None else 0
    zu += 128 if x_signed else 0
    row_term = -zu * Wk.astype(np.int64).sum(axis=1)
    check_i32(row_term, node)
    if pixel_rows:  # the weights as panels of output channels (the matmul layout)
        packed = np.concatenate([q8.pack_panels(Wk[gi * Mg:(gi + 1) * Mg].T, path)
                                 for gi in range(G)])
    else:
        packed = Wk.reshape(-1)
    group_bytes = packed.size // G
    Wc = b.bitcast(kb.substitute_constant(w, packed, name + ".packed"), ir.PointerType(I8))
    chan_table = const_table(kb, row_term, "zp.chan", I32)
    poffs = [cgi * plane + ((ky * dh * sw + (kx * dw) % sw) * Wq + (kx * dw) // sw) * g
             for ky in range(kh) for kx in range(kw) for cgi in range(cgroups)]
    poff_table = const_table(kb, poffs, "koff", I64)
    w_taps = None
    quads = depthwise and q8.int8_path(kb.target).name == "vnni"
    row_quads = quads and row_windows(poffs, kh, kw, vw) is not None
    if row_quads:  # a row of taps (kx) per dword, zero-padded: one vpdpbusd per ky
        wq = np.zeros((M, kh, 4), np.int8)
        wq[:, :, :kw] = Wk.reshape(M, kh, kw)
        w_taps = const_table(kb, wq.view(np.int32).astype(np.int64).reshape(-1), "w.rows", I32)
    elif quads:  # 4 taps' weights per dword, zero-padded: one vpdpbusd per 4 taps
        t4 = -(-K // 4) * 4
        wq = np.zeros((M, t4), np.int8)
        wq[:, :K] = Wk
        w_taps = const_table(kb, wq.view(np.int32).astype(np.int64).reshape(-1), "w.quads", I32)
    elif depthwise:
        w_taps = const_table(kb, Wk.astype(np.int64).reshape(-1), "w.taps", I32)

    epilogue, extra, values = kb.gemm_epilogue(out, P)
    args = {nm: v for (nm, _), v in zip(extra, values)}
    dst = kb.ptr(kb.outputs[0])
    dst_dt = kb.outputs[0].type.dtype
    X = b.bitcast(kb.ptr(x), ir.PointerType(I8))
    dot = q8.DotStep(b, path, row_is_u8=False)
    last_rows = OH - (n_rb - 1) * ORB

    with kb.loop(kb.begin, kb.end, name="item") as item:
        pbk = b.urem(item, i64(n_pb), name="pb")
        rest = b.udiv(item, i64(n_pb), name="rest")
        rb = b.urem(rest, i64(n_rb), name="rb")
        ng = b.udiv(rest, i64(n_rb), name="ng")
        n = b.udiv(ng, i64(G), name="n")
        gi = b.urem(ng, i64(G), name="gi")
        scratch = kb.call_slot(ws_raw, slot, "nchwc")
        oh0 = b.mul(rb, i64(ORB), name="oh0")
        ih0 = b.sub(b.mul(oh0, i64(sh)), i64(pt), name="ih0")
        xbase = b.mul(b.add(b.mul(n, i64(C)), b.mul(gi, i64(Cg))), i64(H * W), name="xbase")
        chan0 = b.mul(gi, i64(Mg), name="chan0")
        rowbase = b.add(b.mul(n, i64(M)), chan0, name="rowbase")

        def store(bb, m, col, acc, mask, nlanes, pos=None):
            """`pos`: (output row, column) of lane 0 when known, so the epilogue's operands
            are indexed without dividing `col` back into them."""
            lanes = acc.type.count if isinstance(acc.type, ir.VectorType) else 1
            row = bb.add(rowbase, m, name="row")
            t = bb.load(bb.gep(chan_table, [bb.add(chan0, m)]), name="zp.chan")
            v = bb.add(acc, splat(bb, t, lanes), name="acc.zp")
            if epilogue is not None:
                index = None if pos is None else [n, bb.add(chan0, m), pos[0], pos[1]]
                ctx = EpilogueContext(bb, kb.module, row, col, mask, nlanes, lanes, args, index)
                v = epilogue(ctx, v)
            store_vector(bb, v, dst, bb.add(bb.mul(row, i64(P)), col), mask, dst_dt)

        def store_pixels(bb, m, p, acc, mask, nlanes):
            """A run of the item's pixels of output channel m (pixel rows)."""
            store(bb, m, bb.add(bb.mul(oh0, i64(OW)), p), acc, mask, nlanes)

        def row_ptr(m):
            return b.gep(Wc, [b.mul(b.add(chan0, m), i64(K))], inbounds=True, name="w.row")

        def variant(nrows, tag):
            rows_in = (nrows - 1) * sh + (kh - 1) * dh + 1
            _fill_nchwc(kb, X, xbase, scratch, ih0, rows_in, in_rows, H, W, Wq, pl, sw, Cg, g,
                        zu, x_signed, slot, tag)
            if pixel_rows:
                _pixel_row_panels(kb, path, scratch, Wc, gi, group_bytes, pbk, PB, npan, Mg, K,
                                  nrows * OW, OW, sh * sw * Wq * g, g, poff_table, store_pixels,
                                  tag)
                return
            with kb.loop(0, nrows, name=tag + ".oh") as oh:
                row_base = b.mul(oh, i64(sh * sw * Wq * g))
                oh_abs = b.add(oh0, oh, name=tag + ".ohabs")
                pix_row = b.mul(oh_abs, i64(OW), name=tag + ".pixrow")

                def store_run(bb, m, col, acc, mask, nlanes):
                    # (flat, regrid: col is the pixel; the epilogue divides it into (row,
                    # column) of the real plane)
                    pos = None if flat or regrid else (oh_abs, bb.sub(col, pix_row))
                    store(bb, m, col, acc, mask, nlanes, pos=pos)

                if depthwise:
                    depthwise_row(kb, scratch, row_base, pix_row, w_taps, chan0, Mg, OW, vw,
                                   poffs, store_run, tag, quads,
                                   (kh, kw) if row_quads else None)
                    return

                def run(ow0, ncols, rtag):
                    panel = b.gep(scratch, [b.add(row_base, b.mul(ow0, i64(g)))], inbounds=True,
                                  name=rtag + ".px")
                    col0 = b.add(pix_row, ow0, name=rtag + ".col0")
                    m0, m1 = i64(0), i64(Mg)
                    if flat:
                        m0 = b.mul(pbk, i64(MB), name=rtag + ".m0")
                        m1 = smin(b, b.add(m0, i64(MB)), i64(Mg), rtag + ".m1")
                    q8.emit_row_tiles(b, dot, row_ptr, m0, m1, panel, col0, K, ncols,
                                      store_run, rtag, poffsets=poff_table)

                pieces(kb, OW, NR, run, tag + ".ow")

        last_block_apart(kb, rb, n_rb, ORB, last_rows, variant)
    b.ret_void()


STAGE_PIXELS = 48  # pixels whose accumulators are staged before their transpose: 8 tiles of
# 6 rows (VNNI, AVX-512BW, AVX2) or 12 of 4 (generic), 3 / 6 / 12 vectors of pixels


def _pixel_row_panels(kb, path, scratch, Wc, gi, group_bytes: int, pbk, PB: int, npan: int,
                      Mg: int, K: int, npix: int, OW: int, row_pitch: int, g: int, koff_table,
                      store, tag) -> None:
    """Panels [pbk*PB, ...) of the group's output channels against all `npix` pixels of the
    item, pixels as the tile rows (read in place from the input copy, k groups at
    `koff_table` offsets from each pixel's window corner).

    A tile holds vectors of output channels at one pixel, but NCHW stores a channel's pixels
    contiguously: STAGE_PIXELS pixels' accumulators go to a stack buffer, are transposed in
    registers vw x vw at a time, and each channel's run of vw pixels goes through the vector
    epilogue, `store(b, channel, pixel, acc, mask, nlanes)`. (Before: every result through
    a scalar epilogue, ~20 instructions each, 14-22% of ResNet-18's 14x14 layers.)"""
    from .gen_transpose import transpose_square

    b = kb.b
    NR, vw = path.nr, path.vw
    dot = q8.DotStep(b, path, row_is_u8=True)
    wgroup = b.gep(Wc, [b.mul(gi, i64(group_bytes))], inbounds=True, name="w.group")
    vi = ir.VectorType(I32, vw)
    stage = entry_alloca(kb.b, ir.ArrayType(I32, STAGE_PIXELS * NR), "stage")
    stage.align = 64
    stage = b.bitcast(stage, ir.PointerType(I32))
    columns = b.bitcast(entry_alloca(kb.b, ir.ArrayType(vi, vw), "stage.t"), ir.PointerType(vi))

    def row_ptr(p):
        oh, ow = b.udiv(p, i64(OW)), b.urem(p, i64(OW))
        off = b.add(b.mul(oh, i64(row_pitch)), b.mul(ow, i64(g)))
        return b.gep(scratch, [off], inbounds=True, name="px")

    def to_stage(p0):
        def put(bb, p, col, acc, mask, nlanes):
            at = bb.add(bb.mul(bb.sub(p, p0), i64(NR)), col)
            bb.store(acc, bb.bitcast(bb.gep(stage, [at], inbounds=True), ir.PointerType(vi)),
                     align=4)
        return put

    def drain(p0, npx: int, m0, ncols: int, ptag):
        """Stage rows [0, npx) (pixels p0...) x channels [0, ncols) out through the epilogue."""
        nvec = -(-ncols // vw)

        def chunk(c, lanes: int, ctag):
            with kb.loop(0, nvec, name=ctag + ".v") as v:
                vecs = []
                for i in range(vw):
                    if i >= lanes:
                        vecs.append(ir.Constant(vi, None))
                        continue
                    at = b.add(b.mul(b.add(c, i64(i)), i64(NR)), b.mul(v, i64(vw)))
                    pv = b.bitcast(b.gep(stage, [at], inbounds=True), ir.PointerType(vi))
                    vecs.append(b.load(pv, align=4, name=f"{ctag}.px{i}"))
                for j, vec in enumerate(transpose_square(b, vecs)):
                    b.store(vec, b.gep(columns, [i64(j)], inbounds=True), align=4)
                nch = smin(b, b.sub(i64(ncols), b.mul(v, i64(vw))), i64(vw), ctag + ".nch")
                chan0 = b.add(m0, b.mul(v, i64(vw)), name=ctag + ".chan0")
                with kb.loop(0, nch, name=ctag + ".ch") as j:
                    acc = b.load(b.gep(columns, [j], inbounds=True), align=4, name="acc.px")
                    store(b, b.add(chan0, j), b.add(p0, c), acc, q8.lane_mask(vw, lanes), lanes)

        pieces(kb, npx, vw, chunk, ptag + ".c")

    def panels(lo, hi, ncols, ptag):
        with kb.loop(lo, hi, name=ptag) as q:
            panel = b.gep(wgroup, [b.mul(q, i64(K * NR))], inbounds=True, name=ptag + ".w")
            m0 = b.mul(q, i64(NR), name=ptag + ".m0")

            def block(p0, npx: int, btag):
                q8.emit_row_tiles(b, dot, row_ptr, p0, b.add(p0, i64(npx)), panel, i64(0), K,
                                  ncols, to_stage(p0), btag, koffsets=koff_table)
                drain(p0, npx, m0, ncols, btag)

            pieces(kb, npix, STAGE_PIXELS, block, ptag + ".px")

    p0 = b.mul(pbk, i64(PB), name="p0")
    p1 = smin(b, b.add(p0, i64(PB)), i64(npan), "p1")
    nfull = Mg // NR
    if nfull:
        panels(p0, smin(b, p1, i64(nfull), "p1.full"), NR, tag + ".pan")
    if Mg % NR:
        with b.if_then(b.icmp_signed("==", p1, i64(npan))):
            panels(i64(nfull), i64(npan), Mg % NR, tag + ".pan.last")


def _fill_nchwc(kb, X, xbase, dst, ih0, rows_in: int, in_rows: int, H, W, Wq, pl, sw, Cg, g,
                zu: int, flip: bool, slot: int, tag):
    """dst[cg, r, phase, wq, t] = x[cg*g + t, ih0 + r, wq*sw + phase - pl] of this image and
    group (as the unsigned side); the zero point outside the image and in padded channels.
    With stride 1 or 2 and whole channel groups, 16*stride pixels of g channels are loaded,
    interleaved in registers (and split into even and odd columns for stride 2) and stored
    as vectors; with AVX-512BW the last, partial block of a row too, through masked loads and
    stores (ResNet's 14- and 7-pixel rows were copied byte by byte: 0.134 -> 0.0xx ms for its
    last 1x1 stride-2 conv, which copies its input once per block of output channels); the
    rest (other strides, partial channel groups, a partial block without AVX-512BW) byte by
    byte."""
    b = kb.b
    memset(b, dst, zu, slot)
    plane = in_rows * sw * Wq * g
    block = 16 * sw
    vec = sw in (1, 2) and Cg % g == 0
    Wv = W - W % block if vec else 0
    tail = W - Wv if vec and "avx512bw" in kb.target.feature_set else 0
    vin = ir.VectorType(I8, block)
    inter = ir.Constant(ir.VectorType(I32, block * g),
                        [block * t + j for j in range(block) for t in range(g)])
    phases = [ir.Constant(ir.VectorType(I32, 16 * g),
                          [(sw * m + k) * g + t for m in range(16) for t in range(g)])
              for k in range(sw)]

    def copy_block(r, src0, cg, iw, npix: int):
        """Pixels [iw, iw + npix) of channel group cg, row r (npix <= block)."""
        vs = []
        for t in range(g):
            chan = b.add(b.mul(cg, i64(g)), i64(t))
            src = b.add(src0, b.add(b.mul(chan, i64(H * W)), iw))
            p = b.gep(X, [src])
            if npix == block:
                vs.append(b.load(b.bitcast(p, ir.PointerType(vin)), align=1))
            else:
                vs.append(masked_load_vector(b, p, vin, q8.lane_mask(block, npix)))
        allv = concat(b, vs)
        undef = ir.Constant(allv.type, ir.Undefined)
        if g > 1:
            allv = b.shuffle_vector(allv, undef, inter)
        if flip:
            allv = b.xor(allv, ir.Constant(allv.type, [0x80] * (block * g)))
        for k in range(sw):  # pixels iw + sw*m + k: one column phase each
            count = -(-(npix - k) // sw)  # of them inside the row
            if count <= 0:
                continue
            part = allv if sw == 1 else b.shuffle_vector(allv, undef, phases[k])
            iwp = b.add(iw, i64(pl + k))
            phase = (pl + k) % sw
            wq = b.udiv(iwp, i64(sw)) if sw > 1 else iwp
            prow = b.add(b.mul(r, i64(sw)), i64(phase))  # row of the phase planes
            at = b.add(b.mul(cg, i64(plane)), b.mul(b.add(b.mul(prow, i64(Wq)), wq), i64(g)))
            if count == 16:
                b.store(part, b.bitcast(b.gep(dst, [at]), ir.PointerType(part.type)), align=1)
            else:
                masked_store_vector(b, part, b.gep(dst, [at]), q8.lane_mask(16 * g, count * g))

    with kb.loop(0, rows_in, name=tag + ".fr") as r:
        ih = b.add(ih0, r, name="ih")
        inside = b.and_(b.icmp_signed(">=", ih, i64(0)), b.icmp_signed("<", ih, i64(H)))
        with b.if_then(inside):
            src0 = b.add(xbase, b.mul(ih, i64(W)))
            if Wv or tail:
                with kb.loop(0, Cg // g, name=tag + ".fg") as cg:
                    if Wv:
                        with kb.loop(0, Wv, block, name=tag + ".fw") as iw:
                            copy_block(r, src0, cg, iw, block)
                    if tail:
                        copy_block(r, src0, cg, i64(Wv), tail)
            if Wv + tail < W:
                with kb.loop(0, Cg, name=tag + ".fc") as c:
                    src_row = b.add(src0, b.mul(c, i64(H * W)))
                    cbase = b.add(b.mul(b.udiv(c, i64(g)), i64(plane)), b.urem(c, i64(g)))
                    with kb.loop(Wv, W, name=tag + ".fs") as iw:
                        v = b.load(b.gep(X, [b.add(src_row, iw)]))
                        if flip:
                            v = b.xor(v, ir.Constant(I8, 0x80))
                        iwp = b.add(iw, i64(pl))
                        phase, wq = b.urem(iwp, i64(sw)), b.udiv(iwp, i64(sw))
                        at = b.add(b.mul(b.add(b.mul(b.add(b.mul(r, i64(sw)), phase), i64(Wq)), wq),
                                         i64(g)), cbase)
                        b.store(v, b.gep(dst, [at]))


def conv_integer_loops(kb: KernelBuilder, node) -> None:
    """Any conv_integer (N-d, grouped, depthwise), one exact int32 sum per output element."""
    from slimc.ir.ops.window import _window_params

    x, w = node.inputs[0], node.inputs[1]
    x_zp = node.inputs[2] if len(node.inputs) > 2 else None
    w_zp = node.inputs[3] if len(node.inputs) > 3 else None
    out = node.outputs[0]
    xs, ws, ys = kb.shape(x), kb.shape(w), kb.shape(out)
    nsp = len(xs) - 2
    attrs = kb.attrs(node)
    strides, pads, dil = _window_params(attrs, nsp)
    G = int(attrs["group"])
    M, Cg = ws[0], ws[1]
    Mg = M // G
    kernel = ws[2:]
    b = kb.b
    X, Wt = kb.ptr(x), kb.ptr(w)
    kb.parallel_extent = xs[0] * M
    kb.cost = 2 * int(np.prod(ys)) * Cg * int(np.prod(kernel))

    def ext(v, dt):
        return b.sext(v, I32) if dt == dtypes.i8 else b.zext(v, I32)

    acc = b.alloca(I32, name=llvm_name(out.name) + ".acc")
    with kb.loop(kb.begin, kb.end, name="nm") as nm:
        n = b.udiv(nm, i64(M))
        m = b.urem(nm, i64(M))
        gi = b.udiv(m, i64(Mg))
        zu = I32(0) if x_zp is None else ext(b.load(b.gep(kb.ptr(x_zp), [i64(0)])), x_zp.type.dtype)
        zs = I32(0)
        if w_zp is not None:
            idx = i64(0) if w_zp.type.numel == 1 else m
            zs = ext(b.load(b.gep(kb.ptr(w_zp), [idx])), w_zp.type.dtype)
        out_sp = ys[2:]
        npix = int(np.prod(out_sp))
        with kb.loop(0, npix, name="pix") as pix:
            o = kb.delinear(pix, out_sp)
            b.store(I32(0), acc)
            with kb.loop(0, Cg, name="c") as c:
                ch = b.add(b.mul(gi, i64(Cg)), c)
                nk = int(np.prod(kernel))
                with kb.loop(0, nk, name="kk") as kk:
                    kidx = kb.delinear(kk, kernel)
                    inside = ir.Constant(ir.IntType(1), 1)
                    pos = []
                    for d in range(nsp):
                        p = b.sub(b.add(b.mul(kb._ir(o[d]), i64(strides[d])),
                                        b.mul(kb._ir(kidx[d]), i64(dil[d]))), i64(pads[d]))
                        inside = b.and_(inside, b.and_(b.icmp_signed(">=", p, i64(0)),
                                                       b.icmp_signed("<", p, i64(xs[2 + d]))))
                        pos.append(b.select(inside, p, i64(0)))
                    xi = kb.linear([n, ch] + pos, xs)
                    xv = b.sub(ext(b.load(b.gep(X, [kb._ir(xi)])), x.type.dtype), zu)
                    xv = b.select(inside, xv, I32(0))
                    wi = kb.linear([m, c] + kidx, ws)
                    wv = b.sub(ext(b.load(b.gep(Wt, [kb._ir(wi)])), w.type.dtype), zs)
                    b.store(b.add(b.load(acc), b.mul(xv, wv)), acc)
            kb.store_result(out, [n, m] + list(o), b.load(acc, name="dot"))
    b.ret_void()
