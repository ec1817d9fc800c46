"""int8 GEMM tiles generated as LLVM IR: exact int32 accumulation, chosen by CPU features.

    acc[r, c] = sum_k R[r, k] * P[k, c]            (int32, exact)

One operand is the *row* side (read in place, row-major, one group of g bytes of a row
broadcast to every lane), the other the *panel* side (packed in panels of NR columns, g
consecutive k values of a column adjacent). One of the two holds unsigned bytes (the
activations, u8) and the other signed bytes (the weights, s8); `row_is_u8` says which, so a
matmul (activations are the rows) and a convolution (weights are the rows, im2col'd pixels
the panel) share the tiles. Operands of the other signedness are moved by 128 (an xor of the
top bit) and their zero point with them, so the products stay u8 x s8.

Paths, by target (`int8_path`):

* ``vnni`` (AVX-512 VNNI: Intel Xeon, AMD Zen 4): ``vpdpbusd`` multiplies 4 u8 by 4 s8 and
  adds the four products to an int32 lane, exactly. g = 4, 6 x 64 tile (24 zmm
  accumulators).
* ``avx512bw`` (AVX-512 without VNNI, e.g. ``target="x86-64-v4"``) and ``avx2`` (AMD Zen 3):
  both operands widened to int16 (u8 zero-extended, s8 sign-extended) and ``vpmaddwd``
  (pairs of int16 products summed into int32). g = 2. Exact: a pair sum is at most
  2 * 255 * 128 = 65280. ``vpmaddubsw`` (u8 x s8 straight to saturating int16 pairs) is
  twice as fast but wrong whenever 255 * (w0 + w1) > 32767, which trained weights reach;
  it is not used.
* ``generic`` (SSE, NEON): bytes widened to int32, multiply and add. g = 1.

Every path computes the same exact integer sums, so the accumulators are bit-identical
between them (tests/codegen/test_int8.py checks it on every machine: an AVX-512 host runs
the AVX2 code too).

Zero points are not the tiles' business: the caller's epilogue subtracts their terms (see
gen_quant.py), most of them folded into a per-column constant at compile time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
from llvmlite import ir

from slimc.ir.buffers import aligned_zeros

from .llvm_util import I8, I32, carried_loop, first_lanes, i64

I16 = ir.IntType(16)


@dataclass(frozen=True)
class Int8Path:
    """How a target multiplies bytes. vw int32 lanes per accumulator, g k values per lane
    step, an mr x (nv * vw) register tile."""

    name: str
    vw: int
    group: int
    mr: int
    nv: int

    @property
    def nr(self) -> int:
        return self.nv * self.vw

    @property
    def panel_bytes(self) -> int:
        """Bytes of one k group of a panel (NR columns x g values)."""
        return self.nr * self.group


PATHS = {
    "vnni": Int8Path("vnni", 16, 4, 6, 4),
    "avx512bw": Int8Path("avx512bw", 16, 2, 6, 4),
    "avx2": Int8Path("avx2", 8, 2, 6, 2),
    "generic": Int8Path("generic", 4, 1, 4, 2),
}


def int8_path(target) -> Int8Path:
    """The fastest exact path the target has."""
    feats = target.feature_set
    if target.arch not in ("x86_64", "x86-64"):
        return PATHS["generic"]
    if "avx512vnni" in feats and "avx512bw" in feats:
        return PATHS["vnni"]
    if "avx512bw" in feats:
        return PATHS["avx512bw"]
    if "avx2" in feats:
        return PATHS["avx2"]
    return PATHS["generic"]


def why_path(target) -> str:
    """One line for SLIMC_DEBUG=quant: which path and why."""
    p = int8_path(target)
    return {"vnni": "AVX-512 VNNI: vpdpbusd, 4 u8 x s8 products per int32 lane",
            "avx512bw": "AVX-512BW without VNNI: widen to int16 and vpmaddwd (exact)",
            "avx2": "AVX2: widen to int16 and vpmaddwd (exact; vpmaddubsw would saturate)",
            "generic": "no x86 vector integer dot product: widen to int32, multiply, add",
            }[p.name] + f"; tile {p.mr}x{p.nr}, k groups of {p.group}"


# --------------------------------------------------------------------------------------------
# Packing (numpy, compile time or the layout the run-time packer writes)
# --------------------------------------------------------------------------------------------


def padded_k(K: int, path: Int8Path) -> int:
    return -(-K // path.group) * path.group


def panel_count(N: int, path: Int8Path) -> int:
    return -(-N // path.nr)


def packed_panel_size(K: int, N: int, path: Int8Path) -> int:
    """Bytes of the packed form of a K x N panel-side matrix."""
    return panel_count(N, path) * padded_k(K, path) * path.nr


def pack_panels(P: np.ndarray, path: Int8Path) -> np.ndarray:
    """P[K, N] (int8 values) -> panels: out[p, kg, j, t] = P[kg*g + t, p*NR + j], zero past K
    and N. Returns a flat, 64-byte-aligned int8 array of packed_panel_size(K, N) bytes."""
    K, N = P.shape
    g, nr = path.group, path.nr
    Kp, npan = padded_k(K, path), panel_count(N, path)
    full = np.zeros((Kp, npan * nr), np.int8)
    full[:K, :N] = P
    v = full.reshape(Kp // g, g, npan, nr).transpose(2, 0, 3, 1)  # p, kg, j, t
    out = aligned_zeros(v.size, np.int8)
    out[:] = v.reshape(-1)
    return out


def to_u8_side(x: np.ndarray, zp):
    """Bytes as the unsigned operand: i8 values move up by 128 (zp with them)."""
    if x.dtype == np.int8:
        return (x.astype(np.int16) + 128).astype(np.uint8), np.asarray(zp, np.int32) + 128
    return x.astype(np.uint8), np.asarray(zp, np.int32)


def to_s8_side(x: np.ndarray, zp):
    """Bytes as the signed operand: u8 values move down by 128 (zp with them)."""
    if x.dtype == np.uint8:
        return (x.astype(np.int16) - 128).astype(np.int8), np.asarray(zp, np.int32) - 128
    return x.astype(np.int8), np.asarray(zp, np.int32)


# --------------------------------------------------------------------------------------------
# The dot step of each path
# --------------------------------------------------------------------------------------------


def intrinsic(module: ir.Module, name: str, ret: ir.Type,
              args: Sequence[ir.Type]) -> ir.Function:
    fn = module.globals.get(name)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(ret, list(args)), name)
    return fn


class DotStep:
    """Emits one path's loads and multiply-adds. `row_is_u8`: the row side holds the unsigned
    bytes; `row_flip`: row bytes arrive with the other signedness and get their top bit
    flipped on load (i8 activations)."""

    def __init__(self, b: ir.IRBuilder, path: Int8Path, row_is_u8: bool, row_flip: bool = False):
        self.b, self.path = b, path
        self.row_is_u8, self.row_flip = row_is_u8, row_flip
        self.acc_type = ir.VectorType(I32, path.vw)

    def zero(self) -> ir.Constant:
        return ir.Constant(self.acc_type, None)

    def _splat_i32(self, x: ir.Value, name: str) -> ir.Value:
        b, vw = self.b, self.path.vw
        undef = ir.Constant(self.acc_type, ir.Undefined)
        ins = b.insert_element(undef, x, I32(0), name=name + ".ins")
        return b.shuffle_vector(ins, ir.Constant(self.acc_type, ir.Undefined),
                                ir.Constant(ir.VectorType(I32, vw), [0] * vw), name=name)

    def _widen(self, x: ir.Value, to: ir.Type, unsigned: bool, name: str) -> ir.Value:
        return self.b.zext(x, to, name=name) if unsigned else self.b.sext(x, to, name=name)

    def row_value(self, ptr: ir.Value, nbytes: int, name: str) -> ir.Value:
        """The broadcast row operand for the g bytes at `ptr` (only `nbytes` < g of them
        valid in the last group of a row: the others read as 0, against zero panel bytes)."""
        b, p = self.b, self.path
        g = p.group
        if nbytes == g:
            vt = ir.VectorType(I8, g)
            x = b.load(b.bitcast(ptr, ir.PointerType(vt)), align=1, name=name + ".ld")
        else:
            x = ir.Constant(ir.VectorType(I8, g), None)
            for t in range(nbytes):
                bt = b.load(b.gep(ptr, [i64(t)], inbounds=True), align=1, name=f"{name}.b{t}")
                x = b.insert_element(x, bt, I32(t))
        if self.row_flip:
            x = b.xor(x, ir.Constant(x.type, [0x80] * g), name=name + ".flip")
        if p.name == "vnni":
            word = b.bitcast(x, I32, name=name + ".word")
            return b.bitcast(self._splat_i32(word, name + ".bc"), ir.VectorType(I8, 4 * p.vw))
        if p.group == 2:
            wide = self._widen(x, ir.VectorType(I16, 2), self.row_is_u8, name + ".w")
            word = b.bitcast(wide, I32, name=name + ".word")
            return b.bitcast(self._splat_i32(word, name + ".bc"), ir.VectorType(I16, 2 * p.vw))
        scalar = b.extract_element(x, I32(0))
        return self._splat_i32(self._widen(scalar, I32, self.row_is_u8, name + ".w"), name + ".bc")

    def panel_vector(self, ptr: ir.Value, name: str) -> ir.Value:
        """One vector of the panel: vw columns x g values at `ptr`."""
        b, p = self.b, self.path
        n = p.vw * p.group
        raw = b.load(b.bitcast(ptr, ir.PointerType(ir.VectorType(I8, n))), align=1, name=name)
        if p.name == "vnni":
            return raw
        wide = I16 if p.group == 2 else I32
        return self._widen(raw, ir.VectorType(wide, n), not self.row_is_u8, name + ".w")

    def step(self, acc: ir.Value, row: ir.Value, panel: ir.Value, name: str) -> ir.Value:
        b, p = self.b, self.path
        m = b.module
        if p.name == "vnni":
            vb = ir.VectorType(I8, 4 * p.vw)
            fn = intrinsic(m, "llvm.x86.avx512.vpdpbusd.512", self.acc_type,
                            [self.acc_type, vb, vb])
            u, s = (row, panel) if self.row_is_u8 else (panel, row)
            return b.call(fn, [acc, u, s], name=name)
        if p.group == 2:
            vh = ir.VectorType(I16, 2 * p.vw)
            intr = "llvm.x86.avx512.pmaddw.d.512" if p.vw == 16 else "llvm.x86.avx2.pmadd.wd"
            fn = intrinsic(m, intr, self.acc_type, [vh, vh])
            return b.add(acc, b.call(fn, [row, panel], name=name + ".pairs"), name=name)
        return b.add(acc, b.mul(row, panel, name=name + ".prod"), name=name)


# --------------------------------------------------------------------------------------------
# One register tile
# --------------------------------------------------------------------------------------------


def emit_tile(b: ir.IRBuilder, dot: DotStep, rows: Sequence[ir.Value], panel: ir.Value, K: int,
              nvec: int, name: str, koffsets: ir.Value | None = None,
              poffsets: ir.Value | None = None) -> list[list[ir.Value]]:
    """acc[r][v] for len(rows) rows (i8* to each row's first byte, K bytes in place) against
    `nvec` vectors of one packed panel (i8* to its first k group). Returns the int32
    accumulator vectors after the whole K. `koffsets` (i64*, one per k group; K a multiple
    of g) gives where each k group sits in a row, for rows that are not contiguous;
    `poffsets` likewise for the panel side (a convolution's input read in place: pixel runs
    of its k groups at offsets from the run's first pixel), instead of kg * panel_bytes."""
    p = dot.path
    g = p.group
    kfull = K // g
    tail = K - kfull * g
    nrows = len(rows)

    def k_group(kg, flat):
        accs = [flat[r * nvec:(r + 1) * nvec] for r in range(nrows)]
        accs = _k_step(b, dot, rows, panel, kg, g, nvec, accs, name, koffsets, poffsets)
        return [a for row in accs for a in row]

    flat = carried_loop(b, i64(0), i64(kfull), [dot.zero()] * (nrows * nvec), k_group,
                        name + ".kg")
    accs = [flat[r * nvec:(r + 1) * nvec] for r in range(nrows)]
    if tail:
        accs = _k_step(b, dot, rows, panel, i64(kfull), tail, nvec, accs, name + ".tail",
                       koffsets, poffsets)
    return accs


def _k_step(b, dot: DotStep, rows, panel, kg, nbytes: int, nvec: int, accs, name, koffsets=None,
            poffsets=None):
    p = dot.path
    poff = b.mul(kg, i64(p.panel_bytes)) if poffsets is None else \
        b.load(b.gep(poffsets, [kg], inbounds=True), name=name + ".pko")
    pbase = b.gep(panel, [poff], inbounds=True, name=name + ".pk")
    pv = [dot.panel_vector(b.gep(pbase, [i64(v * p.vw * p.group)], inbounds=True), f"{name}.p{v}")
          for v in range(nvec)]
    if koffsets is None:
        koff = b.mul(kg, i64(p.group), name=name + ".k")
    else:
        koff = b.load(b.gep(koffsets, [kg], inbounds=True), name=name + ".k")
    out = []
    for r, row in enumerate(rows):
        rv = dot.row_value(b.gep(row, [koff], inbounds=True), nbytes, f"{name}.a{r}")
        out.append([dot.step(accs[r][v], rv, pv[v], f"{name}.acc.r{r}.v{v}") for v in range(nvec)])
    return out


def lane_mask(vw: int, nlanes: int) -> ir.Constant | None:
    """<vw x i1> of the first nlanes lanes, or None for a full vector."""
    if nlanes >= vw:
        return None
    return first_lanes(vw, nlanes)


Store = Callable[[ir.IRBuilder, ir.Value, ir.Value, ir.Value, "ir.Constant | None", int], None]


def emit_row_tiles(b: ir.IRBuilder, dot: DotStep, row_ptr: Callable[[ir.Value], ir.Value],
                   r0: ir.Value, r1: ir.Value, panel: ir.Value, col0: ir.Value, K: int,
                   ncols: int, store: Store, name: str, poffsets: ir.Value | None = None,
                   koffsets: ir.Value | None = None) -> None:
    """Rows [r0, r1) of one panel whose first `ncols` (<= NR) columns are real: MR-row tiles,
    then single rows. `store(b, row, col, acc, mask, nlanes)` takes each accumulator vector."""
    from .llvm_util import for_range

    p = dot.path
    nvec = -(-ncols // p.vw)
    masks = [lane_mask(p.vw, ncols - v * p.vw) for v in range(nvec)]

    def tile(r, nrows, tag):
        rows = [row_ptr(r if i == 0 else b.add(r, i64(i), name=f"{tag}.r{i}"))
                for i in range(nrows)]
        accs = emit_tile(b, dot, rows, panel, K, nvec, tag, koffsets=koffsets, poffsets=poffsets)
        for i in range(nrows):
            ri = r if i == 0 else b.add(r, i64(i))
            for v in range(nvec):
                col = col0 if v == 0 else b.add(col0, i64(v * p.vw))
                store(b, ri, col, accs[i][v], masks[v], min(p.vw, ncols - v * p.vw))

    span = b.sub(r1, r0, name=name + ".span")
    full_end = b.add(r0, b.mul(b.udiv(span, i64(p.mr)), i64(p.mr)), name=name + ".full.end")
    with for_range(b, r0, full_end, p.mr, name=name + ".tile") as r:
        tile(r, p.mr, name + ".t")
    with for_range(b, full_end, r1, 1, name=name + ".row") as r:
        tile(r, 1, name + ".s")


__all__ = ["Int8Path", "PATHS", "int8_path", "why_path", "padded_k", "panel_count",
           "packed_panel_size", "pack_panels", "to_u8_side", "to_s8_side", "DotStep",
           "emit_tile", "emit_row_tiles", "lane_mask", "intrinsic"]
