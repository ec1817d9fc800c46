"""Convolution (the `conv` op, NCHW): direct row kernels and convolution as GEMM.

* **direct** (N-d, non-f32 convs): gen_nn.py's sliding-window rows; float32 2-D depthwise
  convolutions run gen_depthwise.py's explicit vector rows.
* **convolution as GEMM** (float32, 1-D and 2-D): per (image, group, chunk of output
  columns) im2col into scratch, then gemm.py's run-time-shape GEMM, emitted once per module
  (`emit_runtime_gemm`: a model's convolutions add no GEMM compile each; its micro-kernels are
  those of every other GEMM) with the weights [Cout, K] as A. 1x1 stride-1 convolutions multiply their input in place. The bias is added
  in the GEMM; a fused epilogue runs in a vectorized copy-out of the chunk.

The `layout` pass sends most float32 2-D convolutions of a CNN to gen_blocked.py instead;
these kernels serve the rest (and `disable_passes=["layout"]`).
"""

from __future__ import annotations


from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.ops.window import _window_params

from .gemm_runtime import emit_runtime_gemm
from . import gemm_pack
from .common import acc_dtype, cdiv, convert, emitter, numel, smax, smin, stack_row, vec_loop, vload
from .gen_conv_stem import stem_conv, stem_conv_applies
from .gen_depthwise import depthwise_rows, depthwise_rows_apply
from .gen_nn import Geom, accumulate_row, outer_taps
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import F32, I64, OPAQUE_PTR, const, for_range, i64, llvm_type

# ----------------------------------------------------------------------------------------------
# Convolution
# ----------------------------------------------------------------------------------------------

# Work items of a GEMM convolution: at most this many (scratch: a slot for each).
CONV_MAX_ITEMS = 16
# Columns per GEMM chunk: about this many floats of im2col per chunk (then a multiple of NR).
CONV_CHUNK_FLOATS = 1 << 17
# Fewer (image, group, chunk) tasks than this: output channels are split into row blocks too.
CONV_MIN_TASKS = 2


def _conv_chunk(n: int, k: int, nr: int) -> int:
    """Output columns per GEMM chunk: near CONV_CHUNK_FLOATS / K (at most 4x that), choosing
    the count of chunks that pads the fewest columns to whole NR-column panels."""
    target = max(4 * nr, CONV_CHUNK_FLOATS // max(1, k))
    if target >= n:
        return n
    n0 = cdiv(n, target)

    def padded(nc):
        nb = cdiv(n, nc)
        tail = n - (cdiv(n, nb) - 1) * nb
        return (cdiv(n, nb) - 1) * cdiv(nb, nr) * nr + cdiv(tail, nr) * nr

    cands = [nc for nc in range(max(1, cdiv(n0, 4)), 2 * n0 + 1) if cdiv(n, nc) >= nr]
    best = min(cands, key=lambda nc: (padded(nc), abs(nc - n0)))
    return cdiv(n, best)


@generator("conv", epilogue=True)
def conv(kb: KernelBuilder, node) -> None:
    x, w = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    xs, ws = kb.shape(x), kb.shape(w)
    nsp = len(xs) - 2
    group = int(kb.attrs(node)["group"])
    cig, cog = ws[1], ws[0] // group
    K = cig * numel(ws[2:])
    if numel(kb.shape(out)) == 0:  # an empty batch (or channels): nothing to compute
        kb.b.ret_void()
        return None
    if stem_conv_applies(kb, node):
        return stem_conv(kb, node)
    if (x.type.dtype == dtypes.f32 and nsp <= 2 and cog >= 4 and K >= 8
            and numel(kb.shape(out)[2:]) >= 4):
        return _conv_gemm(kb, node)
    if depthwise_rows_apply(kb, node):
        return depthwise_rows(kb, node)
    return _conv_direct(kb, node)


def _conv_direct(kb: KernelBuilder, node) -> None:
    """Any conv as rows: acc[ox] += w[co, ci, k] * x[.., ox*s + kx*d - p] over ci and taps."""
    b = kb.b
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    attrs = kb.attrs(node)
    xs, ws, ys = kb.shape(x), kb.shape(w), kb.shape(out)
    nsp = len(xs) - 2
    strides, pads, dil = _window_params(attrs, nsp)
    group = int(attrs["group"])
    cig, cout = ws[1], ws[0]
    cog = cout // group
    kernel = list(ws[2:])
    g = Geom(xs[2:], ys[2:], kernel, strides, pads, dil)
    name = llvm_name(out.name)
    dt = x.type.dtype
    adt = acc_dtype(dt)
    acc_t = llvm_type(adt)
    e = emitter(kb, adt, name)
    Wo = ys[-1]
    rows_shape = [ys[0], cout] + list(ys[2:-1])
    kb.parallel_extent = numel(rows_shape)
    kb.cost = 2 * numel(ys) * cig * numel(kernel)
    plane = numel(xs[2:])
    ktaps = numel(kernel)
    X, Wt = kb.ptr(x), kb.ptr(w)
    acc = stack_row(kb, acc_t, Wo, name + ".acc")
    tables = [g.tap_tables(kb, i, name) for i in range(nsp - 1)]
    olo, ohi = g.out_tables(kb, nsp - 1, name)
    kstrides = KernelBuilder.strides(kernel)
    with kb.loop(kb.begin, kb.end, name="row") as row:
        ridx = kb.delinear(row, rows_shape)
        n_i, co, o_idx = ridx[0], ridx[1], ridx[2:]
        init = const(acc_t, 0.0)
        if bias is not None:
            init = convert(e, b.load(b.gep(kb.ptr(bias), [kb._ir(co)], inbounds=True), name="bias"),
                        bias.type.dtype, adt)
        with kb.loop(0, Wo, name="init") as ox:
            b.store(init, b.gep(acc, [ox], inbounds=True))
        gi = kb.idiv(co, cog)
        with kb.loop(0, cig, name="ci") as ci:
            chan = b.add(b.mul(kb._ir(n_i), i64(xs[1])), b.add(kb._ir(kb.imul(gi, cig)), ci),
                         name="chan")
            base = b.mul(chan, i64(plane), name="xbase")
            wbase = b.mul(b.add(b.mul(kb._ir(co), i64(cig)), ci), i64(ktaps), name="wbase")

            def row_taps(off, ks):
                woff = wbase
                for i, k in enumerate(ks):
                    woff = b.add(woff, b.mul(k, i64(kstrides[i])))
                row = kb._ir(kb.iadd(base, off))

                def weight(kx):
                    wv = b.load(b.gep(Wt, [kb._ir(kb.iadd(woff, kx))], inbounds=True), name="w")
                    return convert(e, wv, w.type.dtype, adt)

                def value(ox, kx, wv):
                    at = b.add(b.add(row, b.mul(ox, i64(strides[-1]))),
                               kb._ir(kb.iadd(kb.imul(kx, dil[-1]), -pads[nsp - 1])), name="xi")
                    return e.mul(wv, convert(e, b.load(b.gep(X, [at], inbounds=True), name="x"),
                                          dt, adt))

                accumulate_row(kb, g, acc, (olo, ohi), value, e.add, weight)

            outer_taps(kb, g, tables, o_idx, row_taps, name)

        def finish(ox, lanes):
            v = vload(kb, acc, ox, lanes, "acc")
            kb.store_result(out, [n_i, co] + list(o_idx) + [ox], convert(e, v, adt, dt))

        vec_loop(kb, 0, Wo, finish, "fin")
    b.ret_void()


def _conv_gemm(kb: KernelBuilder, node) -> None:
    """float32 1-D/2-D conv: for each (image, group, chunk of output columns) im2col the chunk
    into scratch ([K, ldp] rows, ldp a whole number of NR-column panels, which the GEMM reads
    unpacked) and multiply W_g [Cout/g, K] @ cols with the module's shared runtime-size GEMM
    (`_shared_gemm`), which adds the bias. 1x1 stride-1 convs multiply the input in place
    (or pack it when its chunks are not whole panels).

    Work items are at most CONV_MAX_ITEMS runs of consecutive tasks; a call uses the scratch
    slot of its first item (`kb.call_slot`), so threads never share a buffer. Without a fused
    epilogue the GEMM writes the output directly; with one it writes the chunk to scratch and
    a vectorized loop along the output rows hands it to `kb.store_result`."""
    b = kb.b
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    attrs = kb.attrs(node)
    xs, ws, ys = kb.shape(x), kb.shape(w), kb.shape(out)
    nsp = len(xs) - 2
    strides, pads, dil = _window_params(attrs, nsp)
    if nsp == 1:  # a 1-D conv is a 2-D conv of height 1
        H, W, Ho, Wo, kh, kw = 1, xs[2], 1, ys[2], 1, ws[2]
        sh, sw, dh, dw, pt, pl = 1, strides[0], 1, dil[0], 0, pads[0]
    else:
        H, W, Ho, Wo, kh, kw = xs[2], xs[3], ys[2], ys[3], ws[2], ws[3]
        (sh, sw), (dh, dw), (pt, pl) = strides, dil, pads[:2]
    group = int(attrs["group"])
    N, C = xs[0], xs[1]
    cout, cig = ws[0], ws[1]
    cog = cout // group
    K = cig * kh * kw
    HWo = Ho * Wo
    name = llvm_name(out.name)
    gemm_fn, pack_fn, cfg = _shared_gemm(kb)
    nr, mr = cfg.nr, cfg.mr
    pointwise = kh == 1 and kw == 1 and sh == 1 and sw == 1 and pt == 0 and pl == 0 and \
        H == Ho and W == Wo
    nb = _conv_chunk(HWo, K, nr)
    if N * group * cdiv(HWo, nb) < CONV_MIN_TASKS and HWo >= CONV_MIN_TASKS * 4 * nr:
        # one chunk would be one task for one thread (EfficientNet's 144 -> 24 projection
        # at 56x56, batch 1, ran 0.31 ms at 1 and at 2 threads): cut the image in whole panels
        nb = cdiv(cdiv(HWo, CONV_MIN_TASKS), nr) * nr
    nchunks = cdiv(HWo, nb)
    tail = HWo - (nchunks - 1) * nb
    # Few chunks (batch 1, small images): split the output channels too, so that threads
    # have work; each row block redoes its chunk's im2col unless its item just did it.
    mblocks = 1
    base_tasks = N * group * nchunks
    if base_tasks < CONV_MIN_TASKS:
        mblocks = max(1, min(cdiv(CONV_MIN_TASKS, base_tasks), cog // (4 * mr)))
    mbs = cdiv(cdiv(cog, mblocks), mr) * mr
    mblocks = cdiv(cog, mbs)
    tasks = base_tasks * mblocks
    items = min(tasks, CONV_MAX_ITEMS)
    direct = list(kb.outputs) == [out]
    ldp = cdiv(nb, nr) * nr  # im2col row length: whole panels, the GEMM reads it unpacked
    # a pointwise conv reads its input in place when every chunk is whole panels
    pw_direct = pointwise and nb % nr == 0 and tail % nr == 0
    col_floats = 0 if pointwise else K * ldp
    pack_floats = ldp * K if pointwise and not pw_direct else 0
    c_floats = 0 if direct else cdiv(cog * nb, 16) * 16
    slot = col_floats + pack_floats + c_floats
    ws_raw = kb.scratch(4 * slot * items, name + ".ws")
    ws_f = b.bitcast(ws_raw, ir.PointerType(F32), name=name + ".wsf")
    kb.parallel_extent = items
    kb.cost = 2 * N * cout * HWo * K
    X, Wt = kb.ptr(x), kb.ptr(w)
    Y = kb.ptr(out) if direct else None
    im2col_fn = kb.module.globals["slimc_nn_im2col"]
    null = ir.Constant(ir.PointerType(F32), None)

    with kb.loop(kb.begin, kb.end, name="item") as wi:
        t0 = b.udiv(b.mul(wi, i64(tasks)), i64(items), name="t0")
        t1 = b.udiv(b.mul(b.add(wi, i64(1)), i64(tasks)), i64(items), name="t1")
        slot_p = kb.call_slot(ws_f, slot, "slot")
        colbuf = slot_p
        packed = b.gep(slot_p, [i64(col_floats)], inbounds=True, name="packed")
        cbuf = b.gep(slot_p, [i64(col_floats + pack_floats)], inbounds=True, name="cbuf")
        with kb.loop(t0, t1, name="task") as t:
            mb = b.urem(t, i64(mblocks), name="mb")
            tc = b.udiv(t, i64(mblocks), name="tc")
            chunk = b.urem(tc, i64(nchunks), name="chunk")
            ng = b.udiv(tc, i64(nchunks), name="ng")
            gi = b.urem(ng, i64(group), name="g")
            n_i = b.udiv(ng, i64(group), name="n")
            c0 = b.mul(chunk, i64(nb), name="c0")
            is_tail = b.icmp_unsigned("==", chunk, i64(nchunks - 1), name="is.tail")
            ncur = b.select(is_tail, i64(tail), i64(nb), name="ncols")
            x_img = b.gep(X, [b.mul(b.add(b.mul(n_i, i64(C)), b.mul(gi, i64(cig))), i64(H * W))],
                          inbounds=True, name="x.img")
            # the chunk's packed columns: made by the first row block, or by this item's first
            # task when the item starts mid-chunk
            fresh = b.or_(b.icmp_unsigned("==", mb, i64(0)), b.icmp_unsigned("==", t, t0),
                          name="fresh")
            with b.if_then(fresh):
                if pointwise and not pw_direct:
                    b.call(pack_fn, [b.gep(x_img, [c0], inbounds=True, name="b.src"), i64(HWo),
                                     i64(K), ncur, packed])
                elif not pointwise:
                    b.call(im2col_fn, [x_img, colbuf, c0, ncur, i64(ldp)] +
                           [i64(v) for v in (cig, H, W, Wo, kh, kw, sh, sw, dh, dw, pt, pl)])
            if pw_direct:   # the input itself, row-major [Cin, H*W]
                b_src, ldb, pstride = b.gep(x_img, [c0], inbounds=True, name="b.src"), HWo, nr
            elif pointwise:  # packed panels
                b_src, ldb, pstride = packed, nr, K * nr
            else:            # im2col rows padded to whole panels
                b_src, ldb, pstride = colbuf, ldp, nr
            m0 = b.mul(mb, i64(mbs), name="m0")
            m1 = smin(b, b.add(m0, i64(mbs)), i64(cog), "m1")
            a_ptr = b.gep(Wt, [b.mul(gi, i64(cog * K))], inbounds=True, name="a")
            if direct:
                row0 = b.add(b.mul(n_i, i64(cout)), b.mul(gi, i64(cog)), name="row0")
                c_ptr = b.gep(Y, [b.add(b.mul(row0, i64(HWo)), c0)], inbounds=True, name="c")
                ldc = i64(HWo)
            else:
                c_ptr, ldc = cbuf, i64(nb)
            bptr = b.gep(kb.ptr(bias), [b.mul(gi, i64(cog))], inbounds=True, name="bias.g") \
                if bias is not None else null
            b.call(gemm_fn, [a_ptr, i64(K), b_src, i64(ldb), i64(pstride), i64(K), ncur, c_ptr,
                             ldc, m0, m1, bptr,
                             const(ir.IntType(1), bias is not None)])
            if not direct:
                _conv_copy_out(kb, out, cbuf, nb, n_i, gi, cog, m0, m1, c0, ncur, Wo, nsp)
    b.ret_void()


def _conv_copy_out(kb: KernelBuilder, out, cbuf, ld, n_i, gi, cog, m0, m1, c0, ncur, Wo, nsp):
    """The chunk's GEMM result (rows m0..m1 of cbuf) through the fused epilogue, one output
    row segment at a time with vectors along the last axis."""
    b = kb.b
    c1 = b.add(c0, ncur, name="c1")
    oy0 = b.udiv(c0, i64(Wo), name="oy0")
    oy1 = b.add(b.udiv(b.sub(c1, i64(1)), i64(Wo)), i64(1), name="oy1")
    with kb.loop(m0, m1, name="co") as co:
        chan = b.add(b.mul(gi, i64(cog)), co, name="chan")
        crow = b.gep(cbuf, [b.mul(co, i64(ld))], inbounds=True, name="crow")
        with kb.loop(oy0, oy1, name="oy") as oy:
            rs = b.mul(oy, i64(Wo), name="rs")
            xs_ = b.sub(smax(b, c0, rs, "seg.s"), rs, name="xs")
            xe = b.sub(smin(b, c1, b.add(rs, i64(Wo)), "seg.e"), rs, name="xe")
            src = b.gep(crow, [b.sub(rs, c0)], name="src")

            def put(ox, lanes):
                v = vload(kb, src, ox, lanes, "y")
                sp = [oy, ox] if nsp == 2 else [ox]
                kb.store_result(out, [n_i, chan] + sp, v)

            # a row of one pixel has no vector along it (an override set at a vector of
            # lanes over a dim of size 1 would never be found by the epilogue's operands)
            vec_loop(kb, xs_, xe, put, "ox", lanes=None if Wo > 1 else 1)


# ---- the GEMM and im2col every GEMM convolution calls --------------------------------------

OPQ = OPAQUE_PTR


def _shared_gemm(kb: KernelBuilder):
    """(gemm, pack, cfg): gemm.py's run-time-shape GEMM (`emit_runtime_gemm`: N and K are
    arguments, so one copy in the module serves every convolution, which adds no GEMM compile
    each) and the im2col that feeds it."""
    m = kb.module
    cfg = gemm_pack.gemm_config(kb.target)
    gemm, pack = emit_runtime_gemm(m, kb.target, cfg)
    if m.globals.get("slimc_nn_im2col") is None:
        _emit_im2col(m)
    return gemm, pack, cfg


def _fn(m: ir.Module, name: str, args, names) -> tuple[ir.Function, ir.IRBuilder]:
    fn = ir.Function(m, ir.FunctionType(ir.VoidType(), args), name=name)
    fn.linkage = "internal"
    fn.attributes.add("nounwind")
    for a, n in zip(fn.args, names):
        a.name = n
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _emit_im2col(m: ir.Module) -> ir.Function:
    """void slimc_nn_im2col(float* x, float* cols, i64 c0, i64 ncols, i64 ld, i64 cin, i64 H,
    i64 W, i64 Wo, i64 kh, i64 kw, i64 sh, i64 sw, i64 dh, i64 dw, i64 pt, i64 pl):
    cols[k, c - c0] = x[ci, oy*sh + ky*dh - pt, ox*sw + kx*dw - pl] (0 in the padding) for
    k = (ci, ky, kx) and output columns c = oy*Wo + ox in [c0, c0 + ncols), and zeros in the
    padding columns [ncols, ld). Each row segment is a zero run, a copy (contiguous when
    sw == 1) and a zero run: no test per element."""
    names = ["x", "cols", "c0", "ncols", "ld", "cin", "H", "W", "Wo", "kh", "kw", "sh", "sw", "dh",
             "dw", "pt", "pl"]
    fn, b = _fn(m, "slimc_nn_im2col", [OPQ, OPQ] + [I64] * 15, names)
    # Inlined into a conv with constant geometry, LLVM unrolls every loop into one block of
    # ~200 memcpys per call site (AArch64's scheduler then took 7-12 s on a small CNN).
    fn.attributes.add("noinline")
    (x, cols, c0, ncols, ld, cin, H, W, Wo, kh, kw, sh, sw, dh, dw, pt, pl) = fn.args
    kpad = b.mul(b.mul(cin, kh), kw, name="K")
    x.add_attribute("noalias")
    cols.add_attribute("noalias")
    zero = const(F32, 0.0)
    c1 = b.add(c0, ncols, name="c1")
    oy0 = b.udiv(c0, Wo, name="oy0")
    oy1 = b.add(b.udiv(b.sub(c1, i64(1)), Wo), i64(1), name="oy1")
    unit = b.icmp_signed("==", sw, i64(1), name="unit.stride")
    two = b.icmp_signed("==", sw, i64(2), name="stride.2")
    plane = b.mul(H, W, name="plane")
    with for_range(b, 0, cin, 1, "ci") as ci:
        x_c = b.gep(x, [b.mul(ci, plane)], source_etype=F32, name="x.c")
        with for_range(b, 0, kh, 1, "ky") as ky:
            with for_range(b, 0, kw, 1, "kx") as kx:
                k = b.add(b.mul(b.add(b.mul(ci, kh), ky), kw), kx, name="k")
                dst_k = b.gep(cols, [b.mul(k, ld)], source_etype=F32, name="dst.k")
                xshift = b.sub(b.mul(kx, dw), pl, name="xshift")
                # outputs whose tap kx lands inside the row: [lo, hi)
                a0 = b.sub(i64(0), xshift, name="lo.num")
                lo = b.select(b.icmp_signed(">", a0, i64(0)),
                              b.sdiv(b.add(a0, b.sub(sw, i64(1))), sw), i64(0), name="lo")
                h0 = b.sub(b.sub(W, i64(1)), xshift, name="hi.num")
                hi = b.select(b.icmp_signed("<", h0, i64(0)), i64(0),
                              smin(b, b.add(b.sdiv(h0, sw), i64(1)), Wo, "hi0"), name="hi")
                with for_range(b, oy0, oy1, 1, "oy") as oy:
                    rs = b.mul(oy, Wo, name="rs")
                    xs_ = b.sub(smax(b, c0, rs, "seg.s"), rs, name="xs")
                    xe = b.sub(smin(b, c1, b.add(rs, Wo), "seg.e"), rs, name="xe")
                    iy = b.add(b.sub(b.mul(oy, sh), pt), b.mul(ky, dh), name="iy")
                    ok = b.and_(b.icmp_signed(">=", iy, i64(0)), b.icmp_signed("<", iy, H),
                                name="row.ok")
                    a = b.select(ok, smin(b, smax(b, lo, xs_, "a0"), xe, "a1"), xe, name="a")
                    e_ = b.select(ok, smin(b, smax(b, hi, a, "e0"), xe, "e1"), xe, name="e")
                    dst = b.gep(dst_k, [b.sub(rs, c0)], source_etype=F32, name="dst.row")
                    src = b.gep(x_c, [b.add(b.mul(iy, W), xshift)], source_etype=F32,
                                name="src.row")
                    with for_range(b, xs_, a, 1, "zl") as ox:
                        b.store(zero, b.gep(dst, [ox], source_etype=F32))
                    def copy(stride, tag):
                        with for_range(b, a, e_, 1, tag) as ox:
                            at = ox if stride == 1 else b.mul(ox, stride)
                            v = b.load(b.gep(src, [at], source_etype=F32), typ=F32, name="x")
                            b.store(v, b.gep(dst, [ox], source_etype=F32))

                    # constant strides 1 and 2 vectorize (2 as an interleaved load)
                    with b.if_else(unit) as (contiguous, strided):
                        with contiguous:
                            copy(1, "cp")
                        with strided:
                            with b.if_else(two) as (by2, other):
                                with by2:
                                    copy(i64(2), "cp2")
                                with other:
                                    copy(sw, "cps")
                    with for_range(b, e_, xe, 1, "zr") as ox:
                        b.store(zero, b.gep(dst, [ox], source_etype=F32))
    with for_range(b, 0, kpad, 1, "kp") as k:  # columns [ncols, ld): zeros the GEMM may read
        row = b.gep(cols, [b.mul(k, ld)], source_etype=F32, name="pad.row")
        with for_range(b, ncols, ld, 1, "jp") as j:
            b.store(zero, b.gep(row, [j], source_etype=F32))
    b.ret_void()
    return fn
