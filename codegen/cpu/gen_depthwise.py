"""Depthwise convolution on NCHW images (float32, 2-D, one filter per channel, stride 1 or 2,
no dilation): each output row in explicit vectors along x.

The layout pass sends a CNN's depthwise convolutions to the blocked kernels; these run the
ones it leaves NCHW, notably between sparse 1x1 convolutions, which run on NCHW images
(gen_sparse.py). The generic direct rows (gen_conv.py) leave vectorizing to LLVM, which
turns a stride-2 row into gathers: MobileNetV2's 144-channel 56x56 layer ran 0.42 ms there.

A work item is one channel of one image. Its K x K weights are loaded once as broadcast
vectors. Output rows whose windows lie in the image go ROW_BLOCK at a time: each input row's
taps are loaded once and added to every output row of the block that uses them (a 3x3
stride-1 block of 4 rows loads 6 input rows, not 12: 144 channels at 56x56 0.16 -> 0.11 ms,
Zen 4, about the blocked kernel's time). The other rows go one at a time, summing the input
rows that exist (rows in the padding are skipped, not multiplied by zero: a NaN beside the
image stays out). A stride-1 tap is one unaligned load; a stride-2 tap loads two vectors and
keeps every other lane (a pair of taps shares the two loads: even and odd lanes). Vectors
whose taps all lie inside the row use plain loads; the others (the padded edges, the last
partial vector) load with a lane mask, so nothing outside the row is read. Results go
through rows on the stack to the fused epilogue (as in gen_conv.py's rows), the last partial
vector of a row with masked loads and stores (not element by element: 7x7 and 14x14 planes
are most of a row).
Summation per output: the bias, then input rows in order, taps left to right.
"""

from __future__ import annotations

from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.ops.window import _window_params

from .common import stack_row, vload
from .kernel import KernelBuilder, llvm_name
from .llvm_util import F32, first_lanes, i64, masked_load_vector, splat

MAX_TAPS = 7  # kernel sizes this generator takes (weights held in registers: K * K vectors)
ROW_BLOCK = 4  # output rows computed together where their windows lie in the image


def depthwise_rows_apply(kb: KernelBuilder, node) -> bool:
    """Whether `node` (a conv) is a depthwise convolution these rows compute."""
    x, w = node.inputs[0], node.inputs[1]
    xs, ws = kb.shape(x), kb.shape(w)
    if x.type.dtype != dtypes.f32 or w.type.dtype != dtypes.f32 or len(xs) != 4:
        return False
    strides, pads, dil = _window_params(kb.attrs(node), 2)
    group = int(kb.attrs(node)["group"])
    return (group == xs[1] == ws[0] and ws[1] == 1 and ws[2] == ws[3] <= MAX_TAPS
            and tuple(dil) == (1, 1) and strides[0] == strides[1] and strides[0] in (1, 2))


def depthwise_rows(kb: KernelBuilder, node) -> None:
    b = kb.b
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    (N, C, H, W), (Ho, Wo) = kb.shape(x), kb.shape(out)[2:]
    K = kb.shape(w)[2]
    strides, pads, _ = _window_params(kb.attrs(node), 2)
    s, py, px = strides[0], pads[0], pads[1]
    vw = kb.vector_width
    vt = ir.VectorType(F32, vw)
    name = llvm_name(out.name)
    nvec = -(-Wo // vw)
    kb.parallel_extent = N * C
    kb.cost = 2 * N * C * Ho * Wo * K * K
    X, Wt = kb.ptr(x), kb.ptr(w)
    acc_row = stack_row(kb, F32, ROW_BLOCK * nvec * vw, name + ".acc")
    # output rows whose windows lie in the image, taken ROW_BLOCK at a time
    oy_lo = min(Ho, -(-py // s))
    oy_hi = max(oy_lo, min(Ho, (H - K + py) // s + 1)) if H >= K else oy_lo
    blocks = (oy_hi - oy_lo) // ROW_BLOCK
    inside = [v for v in range(nvec) if _inside(v * vw, vw, s, px, K, W)]
    first, last = (inside[0], inside[-1] + 1) if inside else (0, 0)
    with kb.loop(kb.begin, kb.end, name="plane") as plane:  # image * C + channel
        c = b.urem(plane, i64(C), name="c")
        taps = [[splat(b, b.load(b.gep(Wt, [b.add(b.mul(c, i64(K * K)), i64(ky * K + kx))],
                                       inbounds=True), name=f"w{ky}{kx}"), vw, f"w{ky}{kx}.v")
                 for kx in range(K)] for ky in range(K)]
        init = ir.Constant(vt, None)
        if bias is not None:
            init = splat(b, b.load(b.gep(kb.ptr(bias), [c], inbounds=True), name="bias"), vw,
                         "bias.v")
        x_plane = b.gep(X, [b.mul(plane, i64(H * W))], inbounds=True, name="x.plane")
        n = b.udiv(plane, i64(C), name="n")

        def one_row(oy):
            iy0 = b.sub(b.mul(oy, i64(s)), i64(py), name="iy0")
            rows = Rows(kb, x_plane, iy0, taps, K, s, px, H, W)
            _output_row(kb, rows, acc_row, init, first, last, nvec, H, K)
            _finish_row(kb, out, [n, c, oy], acc_row, Wo)

        with kb.loop(0, oy_lo, name="oy.top") as oy:
            one_row(oy)
        if blocks:
            with kb.loop(0, blocks, name="oy.block") as blk:
                oy0 = b.add(b.mul(blk, i64(ROW_BLOCK)), i64(oy_lo), name="oy0")
                iy0 = b.sub(b.mul(oy0, i64(s)), i64(py), name="iy0")
                rows = Rows(kb, x_plane, iy0, taps, K, s, px, H, W)

                def block_vector(ox0, masked):
                    for r, acc in enumerate(rows.block_sum(ox0, init, masked, ROW_BLOCK)):
                        rows.store(acc_row, b.add(ox0, i64(r * nvec * vw)), acc)

                _each_vector(kb, first, last, nvec, block_vector)
                for r in range(ROW_BLOCK):
                    row_acc = b.gep(acc_row, [i64(r * nvec * vw)], inbounds=True)
                    _finish_row(kb, out, [n, c, b.add(oy0, i64(r))], row_acc, Wo)
        with kb.loop(oy_lo + blocks * ROW_BLOCK, Ho, name="oy.rest") as oy:
            one_row(oy)
    b.ret_void()


def _output_row(kb, rows, acc_row, init, first: int, last: int, nvec: int, H: int, K: int):
    """One output row's vectors into acc_row: plain loads in [first, last), masked outside."""
    b = kb.b

    def vectors(all_rows: bool):
        _each_vector(kb, first, last, nvec, lambda ox0, masked: rows.store(
            acc_row, ox0, rows.sum(ox0, init, masked, all_rows)))

    if H < K:  # no window fits in the image
        vectors(False)
        return
    # rows whose window lies inside the image (all but the first and last few) sum every
    # input row without a test
    whole = b.icmp_unsigned("<=", rows.iy0, i64(H - K), name="whole")  # 0 <= iy0 <= H - K
    with b.if_else(whole) as (then, otherwise):
        with then:
            vectors(True)
        with otherwise:
            vectors(False)


def _each_vector(kb, first: int, last: int, nvec: int, emit) -> None:
    """emit(ox0, masked) for every output vector of a row: the edge vectors (outside
    [first, last)) unrolled with masked loads, the others in a loop with plain ones."""
    vw = kb.vector_width
    for v in list(range(first)) + list(range(last, nvec)):
        emit(i64(v * vw), True)
    if last > first:
        with kb.loop(first * vw, last * vw, vw, name="ox") as ox0:
            emit(ox0, False)


def _finish_row(kb, out, index: list, acc_row, Wo: int) -> None:
    """The row's epilogue and stores; the last partial vector masked."""
    vw = kb.vector_width
    full = Wo // vw * vw
    if full:
        with kb.loop(0, full, vw, name="fin") as ox:
            kb.store_result(out, index + [ox], vload(kb, acc_row, ox, vw, "y"))
    if Wo > full:
        kb.mask = first_lanes(vw, Wo - full)
        kb.store_result(out, index + [i64(full)], vload(kb, acc_row, i64(full), vw, "y"))
        kb.mask = None


def _inside(ox0: int, vw: int, s: int, px: int, K: int, W: int) -> bool:
    """Every load of the output vector at ox0 lies inside the input row (stride 2 reads two
    vectors per tap)."""
    lo = ox0 * s - px
    hi = lo + (K - 1) + (vw * s - 1)
    return lo >= 0 and hi <= W - 1


class Rows:
    """The input rows of one output row: their taps summed into a vector of outputs."""

    def __init__(self, kb, x_plane, iy0, taps, K, s, px, H, W):
        self.kb, self.b = kb, kb.b
        self.x_plane, self.iy0, self.taps = x_plane, iy0, taps
        self.K, self.s, self.px, self.H, self.W = K, s, px, H, W
        self.vw = kb.vector_width
        self.vt = ir.VectorType(F32, self.vw)

    def sum(self, ox0, init, masked: bool, all_rows: bool):
        """init + the taps of every input row of the padded window that exists (all of them,
        untested, when `all_rows`)."""
        b = self.b
        acc = init
        for ky in range(self.K):
            iy = b.add(self.iy0, i64(ky), name=f"iy{ky}")
            if all_rows:
                acc = self._row_taps(ky, iy, ox0, acc, masked)
                continue
            exists = b.icmp_unsigned("<", iy, i64(self.H), name=f"in{ky}")  # 0 <= iy < H
            pre = b.block
            with b.if_then(exists):
                summed = self._row_taps(ky, iy, ox0, acc, masked)
                body = b.block
            phi = b.phi(self.vt, name=f"acc{ky}")
            phi.add_incoming(summed, body)
            phi.add_incoming(acc, pre)
            acc = phi
        return acc

    def block_sum(self, ox0, init, masked: bool, nrows: int) -> list:
        """init + the taps of nrows consecutive output rows whose input rows all exist: each
        input row's taps are loaded once and added to every output row that uses them."""
        b, s, K = self.b, self.s, self.K
        accs = [init] * nrows
        for j in range((nrows - 1) * s + K):
            users = [(r, j - r * s) for r in range(nrows) if 0 <= j - r * s < K]
            row = b.gep(self.x_plane, [b.mul(b.add(self.iy0, i64(j)), i64(self.W))],
                        inbounds=True, name="x.row")
            pairs = {}
            for kx in range(K):
                xv = self._tap(row, ox0, kx, masked, pairs)
                for r, ky in users:
                    accs[r] = b.fadd(b.fmul(self.taps[ky][kx], xv, flags=("contract",)),
                                     accs[r], flags=("contract",))
        return accs

    def _row_taps(self, ky: int, iy, ox0, acc, masked: bool):
        b = self.b
        row = b.gep(self.x_plane, [b.mul(iy, i64(self.W))], inbounds=True, name="x.row")
        pairs = {}
        for kx in range(self.K):
            xv = self._tap(row, ox0, kx, masked, pairs)
            acc = b.fadd(b.fmul(self.taps[ky][kx], xv, flags=("contract",)), acc,
                         flags=("contract",))
        return acc

    def _tap(self, row, ox0, kx: int, masked: bool, pairs: dict):
        """x[ox0 * s + kx - px + s * i] for the lanes i of one output vector. Stride 2: the
        even lanes (odd for odd kx) of two vectors loaded once per pair of taps (`pairs`)."""
        b, vw, s = self.b, self.vw, self.s
        if s == 1:
            at = b.add(ox0, i64(kx - self.px), name="xi")
            return self._load(row, at, masked, "x")
        pair = kx // 2
        if pair not in pairs:
            at = b.add(b.mul(ox0, i64(2)), i64(2 * pair - self.px), name="xi")
            pairs[pair] = (self._load(row, at, masked, "x.lo"),
                           self._load(row, b.add(at, i64(vw)), masked, "x.hi"))
        lo, hi = pairs[pair]
        lanes = list(range(kx % 2, 2 * vw, 2))
        return b.shuffle_vector(lo, hi, ir.Constant(ir.VectorType(ir.IntType(32), vw), lanes),
                                name="x.odd" if kx % 2 else "x.even")

    def _load(self, row, at, masked: bool, name: str):
        b, vw = self.b, self.vw
        p = b.gep(row, [at], inbounds=False, name=name + ".p")
        if not masked:
            return b.load(b.bitcast(p, ir.PointerType(self.vt)), align=4, name=name)
        lanes = ir.Constant(ir.VectorType(ir.IntType(64), vw), list(range(vw)))
        idx = b.add(splat(b, at, vw, name + ".at"), lanes, name=name + ".idx")
        mask = b.icmp_unsigned("<", idx, splat(b, i64(self.W), vw, "w"), name=name + ".mask")
        return masked_load_vector(b, p, self.vt, mask, name)

    def store(self, acc_row, ox0, v) -> None:
        b = self.b
        b.store(v, b.bitcast(b.gep(acc_row, [ox0], inbounds=True), ir.PointerType(self.vt)),
                align=4)
