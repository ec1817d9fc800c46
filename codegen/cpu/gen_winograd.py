"""The CPU kernel of ``winograd_conv2d``: input transform, alpha^2 GEMMs, output transform.

Layout (VW = the target's floats per vector; lanes run over channels inside the transforms):

* Work is cut into *blocks* of whole tile rows (tile row = one image's row of output tiles,
  over the batch), each of about `BLOCK_TILES` tiles, and, when there are few blocks (batch
  1, small images), into ranges of output channels as well, so that both cores get work. A
  task is (block, channel range); a work item is a run of tasks, and a call's items share
  the scratch slot of its first (`kb.call_slot`).
* Input transform, per tile row: the alpha input rows its tiles read are copied, for every
  block of VW input channels, into a zero-padded *strip* [alpha][Wp][VW] with one VW x VW
  register transpose per VW columns (NCHW rows in, channel vectors out), so padding costs no
  test. Each tile then loads its alpha x alpha channel vectors per channel block, computes
  B^T d B with vector adds and FMAs, and stores the alpha^2 results into V[xi][tile][channel]:
  alpha^2 row-major [tiles, Cin] matrices in scratch, each written a whole row at a time.
* alpha^2 GEMMs (gemm.py's blocked kernel): M[xi] = V[xi] @ U[xi], [tiles, Cin] x [Cin, Cout].
  U is a constant, packed for this target at compile time (`kb.substitute_constant`); one GEMM
  function (N, K fixed) serves every xi.
* Output transform, fused with the epilogue: per tile row, block of VW output channels and
  group of VW/m horizontally adjacent tiles, A^T M A (+ bias) gives m x m channel vectors per
  tile; a VW x VW transpose per output row turns them into VW consecutive outputs of one
  channel, which go through `kb.store_result` (the fused elementwise consumers, then the
  store) -- from a stack copy, in pieces of 8, 4, 2 and 1, at the right border (see
  _output_transform), skipped past the bottom one.

A task whose block is the one its item just transformed (channel ranges of one block run one
after another) reuses V. `U` computed at run time is packed by each work item into its slot.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.errors import UnsupportedError
from slimc.ir.ops.winograd import alpha_of, out_dims, winograd_matrices

from . import gemm as gemm_kernels
from . import gemm_pack
from .common import cdiv, entry_alloca, smin
from .gen_transpose import transpose_square
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import F32, I32, I64, const, i64, new_shared_function, shared_functions

# At most this many work items (each has a scratch slot).
MAX_ITEMS = 16
# Fewer blocks than this: output channels are split into ranges too (threads need tasks).
MIN_TASKS = 4
# Tiles per block: about this many (whole tile rows); see block_rows().
BLOCK_TILES = 64


def _skew(floats: int) -> int:
    """`floats` rounded up to whole cache lines, plus one line if that is 4 KB-aligned."""
    lines = cdiv(floats, 16)
    return 16 * (lines + 1 if lines % 64 == 0 else lines)


def block_rows(ntx: int, rows_total: int, block_tiles: int = BLOCK_TILES) -> int:
    """Tile rows per block: about `block_tiles` tiles, balanced so blocks are near-equal."""
    r = max(1, min(rows_total, round(block_tiles / ntx) or 1))
    nblocks = cdiv(rows_total, r)
    return cdiv(rows_total, nblocks)


class Plan:
    """Every compile-time number of one winograd_conv2d kernel: tiles, blocks, channel
    ranges, work items and the scratch layout."""

    def __init__(self, x_shape, cout: int, tile: int, pads, vw: int, nr: int,
                 block_tiles: int = BLOCK_TILES, min_tasks: int = MIN_TASKS):
        self.N, self.Cin, self.H, self.W = (int(d) for d in x_shape)
        self.Cout = int(cout)
        self.m = m = int(tile)
        self.a = a = alpha_of(m)
        self.pt, self.pl, self.pb, self.pr = (int(p) for p in (pads or (0, 0, 0, 0)))
        self.Ho, self.Wo = out_dims(self.H, self.W, pads)
        self.vw, self.nr = vw, nr
        self.nty, self.ntx = cdiv(self.Ho, m), cdiv(self.Wo, m)
        self.Wp = self.ntx * m + a - m              # strip width: every tile's columns
        self.rows_total = self.N * self.nty
        self.R = block_rows(self.ntx, self.rows_total, block_tiles)
        self.nblocks = cdiv(self.rows_total, self.R)
        self.Tb = self.R * self.ntx                 # tiles in a (full) block
        self.tiles = self.rows_total * self.ntx
        self.ncb = cdiv(self.Cin, vw)
        self.cin_pad = self.ncb * vw
        # output channel ranges: whole NR panels of the packed U
        npan = cdiv(self.Cout, nr)
        split = 1
        if self.nblocks < min_tasks:
            split = max(1, min(cdiv(min_tasks, self.nblocks), npan))
        pan_per = cdiv(npan, split)
        self.cw = min(self.Cout, pan_per * nr)      # channels per range (the last may be less)
        self.csplit = cdiv(self.Cout, self.cw)
        self.cw_last = self.Cout - (self.csplit - 1) * self.cw
        self.cw_pad = cdiv(self.cw, vw) * vw
        self.tasks = self.nblocks * self.csplit
        self.items = min(self.tasks, MAX_ITEMS)
        self.strip = self.ncb * a * self.Wp * vw   # every channel block's strip
        # V[xi] and M[xi] one after another, a cache line apart from a multiple of 4 KB: the
        # a^2 stores (loads) of one tile go to a^2 cache sets, not all to one
        self.v_stride = _skew(self.Tb * self.cin_pad)
        self.m_stride = _skew(self.Tb * self.cw_pad)
        self.v_floats = a * a * self.v_stride
        self.m_floats = a * a * self.m_stride

    @property
    def gemm_flops(self) -> int:
        return 2 * self.a * self.a * self.tiles * self.Cin * self.Cout


# ----------------------------------------------------------------------------------------------
# Vector helpers
# ----------------------------------------------------------------------------------------------


def _vt(vw: int) -> ir.VectorType:
    return ir.VectorType(F32, vw)


def _zero(vw: int) -> ir.Constant:
    return ir.Constant(_vt(vw), None)


def _vload(b: ir.IRBuilder, p, off, vw: int, name: str, lanes: int = 0):
    """vw floats at p[off]; with 0 < lanes < vw only the first `lanes` are read (the rest are
    zero), lane by lane: no masked intrinsics (other generators declare those with other
    pointer types, and one module holds every kernel)."""
    off = off if isinstance(off, ir.Value) else i64(off)
    if not lanes or lanes == vw:
        addr = b.bitcast(b.gep(p, [off], inbounds=True), ir.PointerType(_vt(vw)))
        return b.load(addr, name=name, align=4)
    v = _zero(vw)
    for k in range(lanes):
        x = b.load(b.gep(p, [b.add(off, i64(k))], inbounds=True), name=f"{name}.{k}")
        v = b.insert_element(v, x, I32(k), name=f"{name}.ins{k}")
    return v


def _vstore(b: ir.IRBuilder, v, p, off) -> None:
    off = off if isinstance(off, ir.Value) else i64(off)
    addr = b.bitcast(b.gep(p, [off], inbounds=True), ir.PointerType(v.type))
    b.store(v, addr, align=4)


def apply_matrix(b: ir.IRBuilder, mat: np.ndarray, vecs: Sequence, name: str) -> list:
    """[sum_k mat[r, k] * vecs[k] for each row r]: zeros skipped, +-1 as adds and subtracts,
    other coefficients as multiply-adds (contracted to FMA); a row starts from a +1 term when
    it has one, so it needs no multiply to begin."""
    out = []
    vt = vecs[0].type
    flags = ("contract",)
    for r in range(mat.shape[0]):
        terms = [(float(mat[r, k]), k) for k in range(mat.shape[1]) if mat[r, k] != 0]
        terms.sort(key=lambda t: t[0] != 1.0)  # stable: a +1 term first, else column order
        acc = None
        for c, k in terms:
            v, nm = vecs[k], f"{name}.{r}.{k}"
            if acc is None:
                acc = v if c == 1.0 else b.fmul(const(vt, c), v, name=nm, flags=flags)
            elif c == 1.0:
                acc = b.fadd(acc, v, name=nm, flags=flags)
            elif c == -1.0:
                acc = b.fsub(acc, v, name=nm, flags=flags)
            else:
                acc = b.fadd(acc, b.fmul(const(vt, c), v, name=nm + ".m", flags=flags), name=nm,
                             flags=flags)
        out.append(acc if acc is not None else ir.Constant(vt, None))
    return out


def transform_2d(b: ir.IRBuilder, left: np.ndarray, tiles: list, name: str) -> list:
    """left @ T @ left^T for a 2-D list T of vectors (per-lane matrices)."""
    cols = len(tiles[0])
    # rows: left @ T, column by column
    tmp = [apply_matrix(b, left, [tiles[i][j] for i in range(len(tiles))], f"{name}.c{j}")
           for j in range(cols)]  # tmp[j][r] = (left @ T)[r, j]
    rows = len(tmp[0])
    return [apply_matrix(b, left, [tmp[j][r] for j in range(cols)], f"{name}.r{r}")
            for r in range(rows)]


# ----------------------------------------------------------------------------------------------
# The generator
# ----------------------------------------------------------------------------------------------


@generator("winograd_conv2d", epilogue=True, vector_code=True)
def winograd_conv2d(kb: KernelBuilder, node) -> None:
    x, u = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    if any(v is not None and v.type.dtype != dtypes.f32 for v in (x, u, bias, out)):
        raise UnsupportedError("the CPU backend runs winograd_conv2d in float32 only",
                               node=node.label, op=node.op)
    attrs = kb.attrs(node)
    cfg = gemm_pack.gemm_config(kb.target)
    vw = kb.vector_width
    P = Plan(kb.shape(x), kb.shape(u)[2], attrs["tile"], attrs["pads"], vw, cfg.nr)
    m, a = P.m, P.a
    AT, _, BT = winograd_matrices(m)
    b = kb.b
    name = llvm_name(out.name)
    F32P = ir.PointerType(F32)

    # ---- U: packed panels, one [Cin, Cout] matrix per xi ----
    psize = gemm_pack.packed_b_size(P.Cin, P.Cout, cfg)
    runtime_u = not (u.is_constant and u.data is not None)
    u_floats = a * a * psize if runtime_u else 0
    if not runtime_u:
        packed = np.concatenate([gemm_pack.pack_b(u.data[xi], cfg) for xi in range(a * a)])
        Up = kb.substitute_constant(u, packed, name + ".upacked")
    slot = cdiv(P.strip + P.v_floats + P.m_floats + u_floats, 16) * 16
    ws = b.bitcast(kb.scratch(4 * slot * P.items, name + ".ws"), F32P, name=name + ".wsf")
    kb.parallel_extent = P.items
    kb.cost = P.gemm_flops + 8 * a * a * P.tiles * (P.Cin + P.Cout)

    gemms = {}
    for cw in sorted({P.cw, P.cw_last}):
        gemms[cw] = gemm_kernels.emit_gemm(kb.module, f"{kb.fn.name}.n{cw}", cw, P.Cin,
                                           kb.target, runtime_b=runtime_u and cw == P.Cout)
    if runtime_u:  # a packer for all Cout columns
        gp = gemms.get(P.Cout) or gemm_kernels.emit_gemm(
            kb.module, f"{kb.fn.name}.upack", P.Cout, P.Cin, kb.target, runtime_b=True)
        upack = kb.module.globals[gp.pack_fn]
    X = kb.ptr(x)
    Bias = kb.ptr(bias) if bias is not None else None

    with kb.loop(kb.begin, kb.end, name="item") as wi:
        t0 = b.udiv(b.mul(wi, i64(P.tasks)), i64(P.items), name="t0")
        t1 = b.udiv(b.mul(b.add(wi, i64(1)), i64(P.tasks)), i64(P.items), name="t1")
        base = kb.call_slot(ws, slot, "slot")
        strip = base
        V = b.gep(base, [i64(P.strip)], inbounds=True, name="V")
        M = b.gep(base, [i64(P.strip + P.v_floats)], inbounds=True, name="M")
        if runtime_u:  # U computed at run time: each item packs it into its own slot
            Up = b.gep(base, [i64(P.strip + P.v_floats + P.m_floats)], inbounds=True, name="Urt")
            U_rt = kb.ptr(u)
            with kb.loop(0, a * a, name="upk") as xi:
                b.call(upack, [b.gep(U_rt, [b.mul(xi, i64(P.Cin * P.Cout))], inbounds=True),
                               i64(P.Cout), b.gep(Up, [b.mul(xi, i64(psize))], inbounds=True)])
        with kb.loop(t0, t1, name="task") as t:
            blk = b.udiv(t, i64(P.csplit), name="blk")
            cr = b.urem(t, i64(P.csplit), name="crange")
            q0 = b.mul(blk, i64(P.R), name="q0")
            q1 = b.select(b.icmp_unsigned("<", b.add(q0, i64(P.R)), i64(P.rows_total)),
                          b.add(q0, i64(P.R)), i64(P.rows_total), name="q1")
            ntiles = b.mul(b.sub(q1, q0), i64(P.ntx), name="ntiles")
            fresh = b.or_(b.icmp_unsigned("==", cr, i64(0)), b.icmp_unsigned("==", t, t0),
                          name="fresh")
            with b.if_then(fresh):
                _input_transform(kb, P, BT, X, strip, V, q0, q1)
            c0 = b.mul(cr, i64(P.cw), name="c0")
            is_last = b.icmp_unsigned("==", cr, i64(P.csplit - 1), name="last.range")

            def run(cw):
                gemm_fn = kb.module.globals[gemms[cw].gemm_fn]
                with kb.loop(0, a * a, name="xi") as xi:
                    A_ = b.gep(V, [b.mul(xi, i64(P.v_stride))], inbounds=True, name="A")
                    Bp = b.gep(Up, [b.add(b.mul(xi, i64(psize)), b.mul(c0, i64(P.Cin)))],
                               inbounds=True, name="Bp")
                    C_ = b.gep(M, [b.mul(xi, i64(P.m_stride))], inbounds=True, name="C")
                    b.call(gemm_fn, [A_, i64(P.cin_pad), Bp, C_, i64(P.cw_pad), i64(0), ntiles])

            if P.cw_last == P.cw:
                run(P.cw)
            else:
                with b.if_else(is_last) as (then, other):
                    with then:
                        run(P.cw_last)
                    with other:
                        run(P.cw)
            c1 = b.select(is_last, i64(P.Cout), b.add(c0, i64(P.cw)), name="c1")
            _output_transform(kb, P, AT, M, Bias, out, q0, q1, c0, c1)
    b.ret_void()


def _input_transform(kb: KernelBuilder, P: Plan, BT, X, strip, V, q0, q1) -> None:
    """V[xi][t][c] for the tiles of tile rows [q0, q1), all input channels."""
    b = kb.b
    vw, m, a = P.vw, P.m, P.a
    zero = _zero(vw)
    plane = P.H * P.W
    nfull = P.W // vw
    tail = P.W - nfull * vw
    with kb.loop(q0, q1, name="iq") as q:
        n_i = b.udiv(q, i64(P.nty), name="n")
        ty = b.urem(q, i64(P.nty), name="ty")
        t_row = b.mul(b.sub(q, q0), i64(P.ntx), name="t.row")
        with kb.loop(0, P.ncb, name="cb") as cb:
            c_first = b.mul(cb, i64(vw), name="c.first")
            img = b.mul(b.add(b.mul(n_i, i64(P.Cin)), c_first), i64(plane), name="x.img")
            nvalid = P.Cin - (P.ncb - 1) * vw  # channels in the last block
            last_cb = b.icmp_unsigned("==", cb, i64(P.ncb - 1), name="last.cb")
            cstrip = b.gep(strip, [b.mul(cb, i64(a * P.Wp * vw))], inbounds=True, name="cstrip")
            # the strip: alpha rows of Wp channel vectors, zero outside the input (a loop over
            # the rows, not unrolled: each row's code is a VW x VW transpose per VW columns)
            with kb.loop(0, a, name="srow") as i:
                iy = b.sub(b.add(b.mul(ty, i64(m)), i), i64(P.pt), name="iy")
                srow = b.gep(cstrip, [b.mul(i, i64(P.Wp * vw))], inbounds=True, name="strip.row")
                inside = b.and_(b.icmp_signed(">=", iy, i64(0)), b.icmp_signed("<", iy, i64(P.H)))
                with b.if_else(inside) as (then, other):
                    with then:
                        for col in list(range(P.pl)) + list(range(P.pl + P.W, P.Wp)):
                            _vstore(b, zero, srow, col * vw)
                        xrow = b.gep(X, [b.add(img, b.mul(iy, i64(P.W)))], inbounds=True,
                                     name="xrow")

                        def chunk(x0, width):
                            if nvalid == vw:
                                _chunk(kb, P, xrow, srow, x0, width, vw)
                            else:
                                with b.if_else(last_cb) as (lc, full):
                                    with lc:
                                        _chunk(kb, P, xrow, srow, x0, width, nvalid)
                                    with full:
                                        _chunk(kb, P, xrow, srow, x0, width, vw)

                        if nfull:
                            with kb.loop(0, nfull, name="xc") as xc:
                                chunk(b.mul(xc, i64(vw)), vw)
                        if tail:
                            chunk(i64(nfull * vw), tail)
                    with other:
                        with kb.loop(0, P.Wp, name="zr") as col:
                            _vstore(b, zero, srow, b.mul(col, i64(vw)))
        # every tile of the row, all channels: B^T d B into V (whole rows of V[xi])
        tile_in = _input_tile_fn(kb.module, m, vw, BT)
        with kb.loop(0, P.ntx, name="tx") as tx:
            voff0 = b.mul(b.add(t_row, tx), i64(P.cin_pad), name="v.row")
            toff = b.mul(tx, i64(m * vw), name="s.col")
            with kb.loop(0, P.ncb, name="tcb") as cb:
                sbase = b.add(b.mul(cb, i64(a * P.Wp * vw)), toff, name="s.off")
                voff = b.add(voff0, b.mul(cb, i64(vw)), name="v.off")
                b.call(tile_in, [b.gep(strip, [sbase], inbounds=True), i64(P.Wp * vw),
                                 b.gep(V, [voff], inbounds=True), i64(P.v_stride)])


def _chunk(kb: KernelBuilder, P: Plan, xrow, srow, x0, width: int, nchan: int) -> None:
    """Columns [x0, x0 + width) of `nchan` channel rows (NCHW) -> strip channel vectors."""
    b = kb.b
    vw = P.vw
    rows = []
    for k in range(vw):
        if k < nchan:
            rows.append(_vload(b, xrow, b.add(x0, i64(k * P.H * P.W)), vw, f"xr{k}", width))
        else:
            rows.append(_zero(vw))
    cols = transpose_square(b, rows)
    dst = b.add(x0, i64(P.pl), name="s.col")
    for j in range(width):
        _vstore(b, cols[j], srow, b.mul(b.add(dst, i64(j)), i64(vw)))


def _output_transform(kb: KernelBuilder, P: Plan, AT, M, Bias, out, q0, q1, c0, c1) -> None:
    """Y = A^T M A (+ bias) for tile rows [q0, q1) and channels [c0, c1), stored through the
    epilogue in rows of VW outputs.

    Per group of VW/m tiles, `_output_group_fn` (one function for every kernel of the module)
    leaves m rows of VW channel vectors on the stack; loops over the rows and the channels
    store them through the epilogue: whole vectors, or at the row's end, where VW does not
    divide it, the first `rem` lanes in pieces of 8, 4, 2 and 1. The epilogue's code is there
    once or a few times, not m x VW times."""
    b = kb.b
    vw, m = P.vw, P.m
    G = vw // m                       # tiles per group of vw output columns
    nfull = P.Wo // vw
    rem = P.Wo - nfull * vw
    group_fn = _output_group_fn(kb.module, m, vw, AT, Bias is not None)
    rows = b.bitcast(entry_alloca(kb.b, ir.ArrayType(_vt(vw), m * vw), "y.rows"),
                     ir.PointerType(_vt(vw)), name="y.rows.v")
    bias_slot = entry_alloca(kb.b, _vt(vw), "bias.slot") if Bias is not None else None
    with kb.loop(q0, q1, name="oq") as q:
        n_i = b.udiv(q, i64(P.nty), name="on")
        ty = b.urem(q, i64(P.nty), name="oty")
        t_row = b.mul(b.sub(q, q0), i64(P.ntx), name="ot.row")
        with kb.loop(c0, c1, vw, name="co") as co:
            mcol = b.sub(co, c0, name="m.col")
            nch = smin(b, b.sub(c1, co), i64(vw), "nch")
            extra = []
            if Bias is not None:
                # bias lanes past c1 are never stored; read them only where they exist
                if P.Cout % vw == 0:
                    bv = _vload(b, Bias, co, vw, "bias")
                else:
                    bv = _bias_load(kb, Bias, co, b.icmp_signed(">=", nch, i64(vw)), P)
                b.store(bv, bias_slot)
                extra = [b.bitcast(bias_slot, ir.PointerType(F32))]
            with kb.loop(0, nfull + (1 if rem else 0), name="grp") as gi:
                g0 = b.mul(gi, i64(G), name="g0")
                valid = smin(b, b.sub(i64(P.ntx), g0), i64(G), "tiles")
                m0 = b.add(b.mul(b.add(t_row, g0), i64(P.cw_pad)), mcol, name="m.off")
                b.call(group_fn, [b.gep(M, [m0], inbounds=True), i64(P.cw_pad), i64(P.m_stride),
                                  valid] + extra + [b.bitcast(rows, ir.PointerType(F32))])
                ox0 = b.mul(g0, i64(m), name="ox0")
                with kb.loop(0, m, name="orow") as i:
                    oy = b.add(b.mul(ty, i64(m)), i, name="oy")
                    inside = b.icmp_signed("<", oy, i64(P.Ho), name="oy.in")

                    def row_stores(width):
                        with kb.loop(0, nch, name="och") as k:
                            ch = b.add(co, k, name="ch")
                            y = b.load(b.gep(rows, [b.add(b.mul(i, i64(vw)), k)], inbounds=True),
                                       name="y")
                            _store_lanes(kb, out, [n_i, ch, oy, ox0], y, width)

                    with b.if_then(inside):
                        if not rem:
                            row_stores(vw)
                        elif not nfull:
                            row_stores(rem)
                        else:
                            whole = b.icmp_unsigned("<", gi, i64(nfull), name="whole.grp")
                            with b.if_else(whole) as (then, other):
                                with then:
                                    row_stores(vw)
                                with other:
                                    row_stores(rem)


def _store_lanes(kb: KernelBuilder, out, index, y, width: int) -> None:
    """The first `width` lanes of y through the epilogue at index (its last entry: lane 0's
    column): the vector, or pieces of 8, 4, 2 and 1 lanes."""
    if width == y.type.count:
        kb.store_result(out, index, y)
        return
    start = 0
    while start < width:
        n = 1 << ((width - start).bit_length() - 1)
        piece = _lanes(kb.b, y, start, n, "piece")
        kb.store_result(out, index[:-1] + [kb.b.add(index[-1], i64(start))], piece)
        start += n


def _lanes(b: ir.IRBuilder, v, start: int, n: int, name: str):
    """Lanes [start, start + n) of vector v (a scalar for n == 1)."""
    if n == 1:
        return b.extract_element(v, I32(start), name=name)
    return b.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, n), list(range(start, start + n))),
                            name=name)


# ----------------------------------------------------------------------------------------------
# The transforms: functions of the tile size and vector width only, one per module
# ----------------------------------------------------------------------------------------------


_FP = ir.PointerType(F32)


def _transform_fn(module: ir.Module, key: tuple, name: str, args: list):
    """(the shared function for `key`, None) when the module has it, else (a new shared
    function of `args`, (name, type) pairs, and its entry builder)."""
    shared = shared_functions(module)
    if key in shared:
        return shared[key], None
    fnty = ir.FunctionType(ir.VoidType(), [t for _, t in args])
    fn = new_shared_function(module, key, name, fnty)
    for arg, (n, _) in zip(fn.args, args):
        arg.name = n
        if isinstance(arg.type, ir.PointerType):
            arg.add_attribute("noalias")
    return fn, ir.IRBuilder(fn.append_basic_block("entry"))


def _input_tile_fn(module: ir.Module, m: int, vw: int, BT) -> ir.Function:
    """void (float* src, i64 stride_src, float* dst, i64 stride_dst): one tile's B^T d B for
    VW channels -- d[i][j] the vector at src[(i * stride_src + j * VW)], result (r, c) to
    dst[(r * alpha + c) * stride_dst]."""
    fn, b = _transform_fn(module, ("winograd.in", m, vw), f"slimc_winograd_in_{m}x{vw}",
                          [("src", _FP), ("stride_src", I64), ("dst", _FP),
                           ("stride_dst", I64)])
    if b is None:
        return fn
    src, row, dst, stride = fn.args
    a = alpha_of(m)
    d = [[_vload(b, src, b.add(b.mul(row, i64(i)), i64(j * vw)), vw, f"d{i}{j}")
          for j in range(a)] for i in range(a)]
    v = transform_2d(b, BT, d, "bt")
    for r in range(a):
        for c in range(a):
            _vstore(b, v[r][c], dst, b.mul(stride, i64(r * a + c)))
    b.ret_void()
    return fn


def _output_group_fn(module: ir.Module, m: int, vw: int, AT, bias: bool) -> ir.Function:
    """void (float* M, i64 stride_tile, i64 stride_xi, i64 valid[, float* bias], float* rows):
    A^T M A (+ the bias vector) for the VW/m tiles of a group (tile k's M[xi] vector at
    M[k * stride_tile + xi * stride_xi]; tiles past `valid` read the last valid one), each
    of its m rows transposed into VW channel vectors of VW columns: rows[(i * VW + ch) * VW]."""
    args = [("M", _FP), ("stride_tile", I64), ("stride_xi", I64), ("valid", I64)] + \
        ([("bias", _FP)] if bias else []) + [("rows", _FP)]
    fn, b = _transform_fn(module, ("winograd.out", m, vw, bias),
                          f"slimc_winograd_out_{m}x{vw}{'_bias' if bias else ''}", args)
    if b is None:
        return fn
    M, stride_tile, stride_xi, valid = fn.args[:4]
    rows = fn.args[-1]
    a, G = alpha_of(m), vw // m
    bv = _vload(b, fn.args[4], i64(0), vw, "bias") if bias else None
    ys = []
    for k in range(G):
        kk = smin(b, i64(k), b.sub(valid, i64(1)), f"tile{k}") if k else i64(0)
        base = b.mul(kk, stride_tile, name=f"t{k}.off")
        mt = [[_vload(b, M, b.add(base, b.mul(stride_xi, i64(r * a + c))), vw, f"m{r}{c}")
               for c in range(a)] for r in range(a)]
        y = transform_2d(b, AT, mt, "at")
        if bv is not None:
            y = [[b.fadd(v, bv, name="y.bias") for v in row] for row in y]
        ys.append(y)
    for i in range(m):
        chans = transpose_square(b, [ys[k][i][j] for k in range(G) for j in range(m)])
        for ch in range(vw):
            _vstore(b, chans[ch], rows, i64((i * vw + ch) * vw))
    b.ret_void()
    return fn


def _bias_load(kb: KernelBuilder, Bias, co, full, P: Plan):
    b = kb.b
    vw = P.vw
    tail = P.Cout % vw
    with b.if_else(full) as (then, other):
        with then:
            v_full = _vload(b, Bias, co, vw, "bias.f")
            blk_full = b.block
        with other:
            v_tail = _vload(b, Bias, co, vw, "bias.t", tail)
            blk_tail = b.block
    phi = b.phi(_vt(vw), name="bias")
    phi.add_incoming(v_full, blk_full)
    phi.add_incoming(v_tail, blk_tail)
    return phi


# ----------------------------------------------------------------------------------------------
# Measurement, for the `winograd` pass's cost model (registered with it below)
# ----------------------------------------------------------------------------------------------
