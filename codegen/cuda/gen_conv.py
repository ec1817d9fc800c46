"""The GPU generator for conv: implicit GEMM (float32 1-D and 2-D convolutions), or one
thread per output element (depthwise, 3-D and other N-D convolutions, other dtypes).

The implicit GEMM is gen_gemm.py's tiled GEMM with B gathered from x while its tile is
loaded (im2col never goes to memory); see `_conv_gemm`.
"""

from __future__ import annotations

from dataclasses import dataclass

from slimc.ir import dtypes
from slimc.ir.ops.window import _window_params

from ..cpu.common import acc_dtype, numel
from ..cpu.kernel import llvm_name
from ..cpu.llvm_util import const, llvm_type
from ..cpu.scalar_ops import Emitter, convert
from .gen_gemm import Gemm, tiled_gemm
from .index import (Ix, all_of, counted_loop, load_or_zero, per_element, per_element_done,
                    wide_index)
from .kernel import GpuKernelBuilder, gpu_generator

@dataclass
class _ConvPlan:
    """A conv node's operands, shapes and attributes (pads as begins then ends)."""

    x: object
    w: object
    bias: object
    out: object
    xs: tuple
    ws: tuple
    ys: tuple
    strides: list
    pads: list
    dil: list
    group: int

    @property
    def nsp(self) -> int:
        return len(self.xs) - 2

    @property
    def cig(self) -> int:
        return self.ws[1]

    @property
    def cog(self) -> int:
        return self.ws[0] // self.group


def _conv_plan(kb: GpuKernelBuilder, node) -> _ConvPlan:
    """A conv node as a plan."""
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    attrs = kb.attrs(node)
    xs = kb.shape(x)
    strides, pads, dil = _window_params(attrs, len(xs) - 2)
    return _ConvPlan(x, w, bias, node.outputs[0], xs, kb.shape(w), kb.shape(node.outputs[0]),
                     strides, pads, dil, int(attrs["group"]))


DIRECT_MAX_COG = 4  # output channels per group of a one-input-channel conv that runs direct


@gpu_generator("conv", epilogue=True)
def conv(kb: GpuKernelBuilder, node) -> None:
    """float32 1-D and 2-D convolutions: implicit GEMM; depthwise, 3-D and other dtypes: one
    thread per output element."""
    p = _conv_plan(kb, node)
    if numel(p.ys) == 0:
        kb.b.ret_void()
        return
    # depthwise (and a small channel multiplier): K = kh*kw and a few rows per group, a GEMM
    # tile would be mostly zeros
    depthwise = p.cig == 1 and p.cog <= DIRECT_MAX_COG
    f32 = all(v is None or v.type.dtype == dtypes.f32 for v in (p.x, p.w, p.bias, p.out))
    if f32 and p.nsp <= 2 and not depthwise:
        return _conv_gemm(kb, p)
    return _conv_direct(kb, p)


def _conv_gemm(kb: GpuKernelBuilder, p: _ConvPlan) -> None:
    """Per group: W_g [Cout/g, Cin/g*kh*kw] @ im2col(x) [Cin/g*kh*kw, N*Ho*Wo], every image
    in the columns (small images still fill the grid). B[k, n] is gathered from x while its
    tile is loaded: k = (ci, ky, kx), n = (image, oy, ox), 0 in the padding."""
    b = kb.b
    ix = Ix(b, wide_index(kb))
    if p.nsp == 1:  # a 1-D conv is a 2-D conv of height 1
        H, W, Ho, Wo, kh, kw = 1, p.xs[2], 1, p.ys[2], 1, p.ws[2]
        sh, sw, dh, dw, pt, pl, pb, pr = 1, p.strides[0], 1, p.dil[0], 0, p.pads[0], 0, p.pads[1]
    else:
        H, W, Ho, Wo, kh, kw = p.xs[2], p.xs[3], p.ys[2], p.ys[3], p.ws[2], p.ws[3]
        (sh, sw), (dh, dw) = p.strides, p.dil
        pt, pl, pb, pr = p.pads
    n_img, C = p.xs[0], p.xs[1]
    cig, cog = p.cig, p.cog
    K = cig * kh * kw
    HWo = Ho * Wo
    X, Wt = kb.ptr(p.x), kb.ptr(p.w)
    bias = kb.ptr(p.bias) if p.bias is not None else None
    check_h, check_w = bool(pt or pb), bool(pl or pr)

    def setup(g):
        return g, ix.mul(g, cog), ix.mul(g, cig)  # group, its first out and in channel

    def a_elem(ctx, m, k, ok):
        off = ix.add(ix.mul(ix.add(ctx[1], m), K), k)
        return load_or_zero(b, ix, Wt, off, ok, "w", invariant=True)

    def pixel(n):
        img, px = ix.div(n, HWo, "img"), ix.rem(n, HWo)
        return img, ix.div(px, Wo, "oy"), ix.rem(px, Wo, "ox")

    def b_elem(ctx, k, n, ok):
        img, oy, ox = pixel(n)
        ci, tap = ix.div(k, kh * kw, "ci"), ix.rem(k, kh * kw)
        ky, kx = ix.div(tap, kw, "ky"), ix.rem(tap, kw, "kx")
        iy = ix.add(ix.add(ix.mul(oy, sh), -pt), ix.mul(ky, dh), "iy")
        ixx = ix.add(ix.add(ix.mul(ox, sw), -pl), ix.mul(kx, dw), "ix")
        ok = all_of(b, ok, ix.below(iy, H) if check_h else None,
                  ix.below(ixx, W) if check_w else None)
        chan = ix.add(ix.mul(img, C), ix.add(ctx[2], ci))
        off = ix.add(ix.mul(ix.add(ix.mul(chan, H), iy), W), ixx)
        return load_or_zero(b, ix, X, off, ok, "x", invariant=True)

    def row(ctx, m):
        co = ix.add(ctx[1], m, "co")
        return co, None if bias is None else load_or_zero(b, ix, bias, co, None, "bias", True)

    def finish(ctx, row, n, acc):
        co, bias_value = row
        v = acc if bias_value is None else b.fadd(acc, bias_value, name="biased")
        img, oy, ox = pixel(n)
        sp = [oy, ox] if p.nsp == 2 else [ox]
        kb.store_result(p.out, [ix.wide(i) for i in [img, co] + sp], v)

    tiled_gemm(kb, Gemm(cog, n_img * HWo, K, p.group, setup, a_elem, b_elem, finish,
                          a_k_contiguous=True, b_k_contiguous=HWo == 1, row=row), ix)


# window taps unrolled up to this many (a depthwise 3x3 or 5x5 conv); more: loops
UNROLL_TAPS = 32


def _conv_direct(kb: GpuKernelBuilder, p: _ConvPlan) -> None:
    """One thread per output element: bias + sum over the group's input channels and the
    window's taps of w * x, a tap in the padding reading 0; taps unrolled when few."""
    b = kb.b
    ix = Ix(b, wide_index(kb))
    dt = p.x.type.dtype
    adt = acc_dtype(dt)
    at = llvm_type(adt)
    e = Emitter(b, [adt, adt], adt, kb.fast_math, llvm_name(p.out.name))
    kernel = list(p.ws[2:])
    spatial = list(p.xs[2:])
    nsp = p.nsp
    ktaps = numel(kernel)
    kb.cost = 2 * numel(p.ys) * p.cig * ktaps
    acc_slot = b.alloca(at, name="acc")
    flat, done = per_element(kb, ix)
    idx = ix.delinear(flat, p.ys)
    n_i, co, o = idx[0], idx[1], idx[2:]
    X, Wt = kb.ptr(p.x), kb.ptr(p.w)
    init = const(at, 0)
    if p.bias is not None:
        bv = b.load(b.gep(kb.ptr(p.bias), [ix.v(co)], inbounds=True), name="bias")
        init = convert(e, bv, p.bias.type.dtype, adt)
    b.store(init, acc_slot)
    first = ix.mul(ix.div(co, p.cog, "group"), p.cig)
    # each axis' input coordinate for tap 0; a tap adds its dilated offset
    base = [ix.add(ix.mul(o[d], p.strides[d]), -p.pads[d]) for d in range(nsp)]
    checks = [bool(p.pads[d] or p.pads[nsp + d]) for d in range(nsp)]

    def tap(ci, taps):
        pos = [ix.add(base[d], ix.mul(taps[d], p.dil[d])) for d in range(nsp)]
        ok = all_of(b, *[ix.below(pos[d], spatial[d]) if checks[d] else None
                       for d in range(nsp)])
        chan = ix.add(ix.mul(n_i, p.xs[1]), ix.add(first, ci))
        x_off = ix.linear([chan] + pos, [1] + spatial)
        xv = load_or_zero(b, ix, X, x_off, ok, "x", invariant=True)
        wv = load_or_zero(b, ix, Wt, ix.linear([co, ci] + list(taps), p.ws), None, "w",
                   invariant=True)
        prod = e.mul(convert(e, xv, dt, adt), convert(e, wv, p.w.type.dtype, adt))
        b.store(e.add(b.load(acc_slot), prod), acc_slot)

    def taps_of(ci):
        if ktaps <= UNROLL_TAPS:
            for flat_tap in range(ktaps):
                tap(ci, ix.delinear(flat_tap, kernel))
            return

        def nest(prefix):
            if len(prefix) == nsp:
                tap(ci, prefix)
                return
            with counted_loop(b, ix, kernel[len(prefix)], f"t{len(prefix)}") as t:
                nest(prefix + [t])

        nest([])

    if p.cig == 1:
        taps_of(0)
    else:
        with counted_loop(b, ix, p.cig, "ci") as ci:
            taps_of(ci)
    r = b.load(acc_slot, name="sum")
    kb.store_result(p.out, [ix.wide(i) for i in idx], convert(e, r, adt, dt))
    per_element_done(kb, done)
