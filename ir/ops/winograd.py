"""Winograd convolution: ``winograd_conv2d(x, U, bias?) {tile, pads}``.

The minimal-filtering algorithm F(m x m, 3 x 3) (Lavin & Gray, 2015) computes each m x m tile
of a stride-1 3x3 convolution from an alpha x alpha tile of the input, alpha = m + 2:

    Y_tile = A^T [ sum over input channels of (G g G^T) . (B^T d B) ] A

with `.` the elementwise product. ``U = G g G^T`` depends on the weights only, so the `winograd`
pass computes it once at compile time (`transform_filter`) and this op takes it as its weight:
``U[xi, ci, co]`` for the alpha*alpha positions xi = (a, b) in row-major order -- alpha^2
independent [Cin, Cout] matrices, the right-hand sides of the alpha^2 GEMMs a kernel does.

* ``x``: [N, Cin, H, W] (float); ``U``: [alpha*alpha, Cin, Cout]; ``bias``: [Cout] or absent.
* ``tile``: m, 2 or 4 (`TILES`); ``pads``: [top, left, bottom, right] zero padding.
* result: [N, Cout, H + top + bottom - 2, W + left + right - 2], the convolution of x with the
  3x3 filter whose transform is U, plus bias.

The reference really computes through the transforms (input tiles, B^T d B, the per-position
products summed over channels, A^T M A, tiles assembled and cropped), in float64, rounding once
at the end like the `conv` reference. `winograd_conv2d_numpy(..., compute_dtype=np.float32)`
runs the same algorithm in float32 arithmetic, which is what a kernel's rounding looks like.

Matrices. F(2x2, 3x3) uses the interpolation points (0, 1, -1, inf). F(4x4, 3x3) uses
(0, 1, -1, 1/2, -2, inf) rather than the usual (0, 1, -1, 2, -2, inf): on He-scaled weights and
ReLU activations at ResNet-18's four 3x3 layer shapes, its float32 error is about half (max
error 1.6-2.8e-6 of max|y| against 3.7-6.3e-6), for a little more transform work (26 nonzero
coefficients in B^T rather than 22). Both sets come
from the Toom-Cook construction (A^T[i, j] = p_j^i, G[j, k] = p_j^k / prod_{l != j}(p_j - p_l),
B^T solved from the bilinear identity) and are written out exactly below.
"""

from __future__ import annotations

from fractions import Fraction as _F

import numpy as np

from ..registry import REQUIRED, FusionKind, InferContext, register_op
from ..types import TensorType

TILES = (2, 4)
KERNEL = 3  # r: the filter size these transforms are for


def _m(rows) -> np.ndarray:
    return np.array([[float(_F(v)) for v in row] for row in rows], dtype=np.float64)


# F(2x2, 3x3), points (0, 1, -1, inf)
_F2 = dict(
    AT=_m([[1, 1, 1, 0],
           [0, 1, -1, 1]]),
    G=_m([[1, 0, 0],
          ["1/2", "1/2", "1/2"],
          ["1/2", "-1/2", "1/2"],
          [0, 0, 1]]),
    BT=_m([[1, 0, -1, 0],
           [0, 1, 1, 0],
           [0, -1, 1, 0],
           [0, -1, 0, 1]]),
)

# F(4x4, 3x3), points (0, 1, -1, 1/2, -2, inf)
_F4 = dict(
    AT=_m([[1, 1, 1, 1, 1, 0],
           [0, 1, -1, "1/2", -2, 0],
           [0, 1, 1, "1/4", 4, 0],
           [0, 1, -1, "1/8", -8, 1]]),
    G=_m([[1, 0, 0],
          ["1/3", "1/3", "1/3"],
          ["-1/3", "1/3", "-1/3"],
          ["-16/15", "-8/15", "-4/15"],
          ["1/15", "-2/15", "4/15"],
          [0, 0, 1]]),
    BT=_m([[1, "-3/2", -2, "3/2", 1, 0],
           [0, -1, "1/2", "5/2", 1, 0],
           [0, 1, "-5/2", "1/2", 1, 0],
           [0, -2, -1, 2, 1, 0],
           [0, "1/2", -1, "-1/2", 1, 0],
           [0, 1, "-3/2", -2, "3/2", 1]]),
)

_MATRICES = {2: _F2, 4: _F4}


def winograd_matrices(tile: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T [m, alpha], G [alpha, 3], B^T [alpha, alpha]) of F(tile x tile, 3x3), float64."""
    try:
        mats = _MATRICES[int(tile)]
    except KeyError:
        raise ValueError(f"Winograd tile must be one of {TILES}, got {tile!r}") from None
    return mats["AT"].copy(), mats["G"].copy(), mats["BT"].copy()


def alpha_of(tile: int) -> int:
    return int(tile) + KERNEL - 1


def transform_filter(w: np.ndarray, tile: int) -> np.ndarray:
    """U[a*alpha + b, ci, co] = (G w[co, ci] G^T)[a, b] for 3x3 weights w [Cout, Cin, 3, 3],
    computed in float64 and rounded once to w's dtype."""
    w = np.asarray(w)
    if w.ndim != 4 or w.shape[2:] != (KERNEL, KERNEL):
        raise ValueError(f"transform_filter needs [Cout, Cin, 3, 3] weights, got {w.shape}")
    _, G, _ = winograd_matrices(tile)
    a = alpha_of(tile)
    # G w G^T is linear in w's 9 values: U[a*alpha + b] = kron(G, G) @ vec(w) for every
    # (ci, co) at once, one [alpha^2, 9] x [9, Cin*Cout] product already in [ci, co] order
    # (einsum of three operands, or batched 3x3 products, loop in numpy: seconds for 512^2)
    cols = w.transpose(1, 0, 2, 3).reshape(w.shape[1] * w.shape[0], KERNEL * KERNEL)
    u = np.kron(G, G) @ cols.T.astype(np.float64)
    return u.astype(w.dtype).reshape(a * a, w.shape[1], w.shape[0])


def out_dims(h: int, w: int, pads) -> tuple[int, int]:
    pt, pl, pb, pr = (int(p) for p in (pads or (0, 0, 0, 0)))
    return h + pt + pb - (KERNEL - 1), w + pl + pr - (KERNEL - 1)


def _refuse_empty(ctx: InferContext, n, cin, cout) -> None:
    """The kernel splits the batch's tile rows into blocks and the channels into vectors, and
    has no path for an empty one; the direct convolution has (at opt_level=1, which takes no
    Winograd tile). Refused here, the op's contract, rather than failing in its generator."""
    for size, what in ((n, "an empty batch (N=0)"), (cout, "0 output channels"),
                       (cin, "0 input channels")):
        if size == 0:
            ctx.unsupported(f"a Winograd convolution with {what} is not supported; "
                            f"opt_level=1 runs this layer as a direct convolution")


def _infer(ctx: InferContext) -> TensorType:
    x, u = ctx[0], ctx[1]
    tile = ctx.attrs["tile"]
    if tile not in TILES:
        ctx.fail(f"tile must be one of {list(TILES)}, got {tile!r}")
    a = alpha_of(tile)
    if not x.dtype.is_float:
        ctx.fail(f"input must be a floating-point tensor, got {x}")
    if x.rank != 4:
        ctx.fail(f"input must be [N, C, H, W], got {x}")
    if u.rank != 3 or (isinstance(u.shape[0], int) and u.shape[0] != a * a):
        ctx.fail(f"transformed filter {u} must be [{a * a}, Cin, Cout] for tile {tile}")
    if u.dtype != x.dtype:
        ctx.fail(f"transformed filter dtype {u.dtype} differs from input dtype {x.dtype}")
    c, cin, cout = x.shape[1], u.shape[1], u.shape[2]
    if isinstance(c, int) and isinstance(cin, int) and c != cin:
        ctx.fail(f"input has {c} channels but the transformed filter {u} expects {cin}")
    _refuse_empty(ctx, x.shape[0], cin, cout)
    pads = ctx.attrs["pads"] or [0, 0, 0, 0]
    if len(pads) != 4 or any(int(p) < 0 for p in pads):
        ctx.fail(f"pads {list(pads)} must be 4 non-negative entries [top, left, bottom, right]")
    if ctx.has(2):
        b = ctx[2]
        if b.rank != 1 or (isinstance(b.shape[0], int) and isinstance(cout, int)
                           and b.shape[0] != cout):
            ctx.fail(f"bias {b} must be a vector of {cout} (output channels)")
    h, w = x.shape[2], x.shape[3]
    pt, pl, pb, pr = (int(p) for p in pads)
    ho = h + pt + pb - 2 if isinstance(h, int) else (h if pt + pb == 2 else None)
    wo = w + pl + pr - 2 if isinstance(w, int) else (w if pl + pr == 2 else None)
    for d in (ho, wo):
        if isinstance(d, int) and d < 1:
            ctx.fail("winograd_conv2d: the output would have a spatial dimension of size "
                     f"{d} (window larger than the padded input)")
    return TensorType(x.dtype, (x.shape[0], cout, ho, wo))


def winograd_conv2d_numpy(x, U, b=None, tile=2, pads=None, compute_dtype=np.float64):
    """The algorithm in numpy, every step in `compute_dtype` (the result in x's dtype)."""
    cdt = np.dtype(compute_dtype)
    m = int(tile)
    a = alpha_of(m)
    at, _, bt = winograd_matrices(m)
    AT, BT = at.astype(cdt), bt.astype(cdt)
    n, c, h, w = x.shape
    cout = U.shape[2]
    pt, pl, pb, pr = (int(p) for p in (pads or (0, 0, 0, 0)))
    ho, wo = out_dims(h, w, (pt, pl, pb, pr))
    nty, ntx = -(-ho // m), -(-wo // m)
    # zero-padded input covering every tile (tiles past the output read zeros)
    xp = np.zeros((n, c, nty * m + a - m, ntx * m + a - m), dtype=cdt)
    rows, cols = min(h, xp.shape[2] - pt), min(w, xp.shape[3] - pl)
    xp[:, :, pt:pt + rows, pl:pl + cols] = x[:, :, :rows, :cols]
    d = np.empty((n, c, nty, ntx, a, a), dtype=cdt)
    for i in range(a):
        for j in range(a):
            d[..., i, j] = xp[:, :, i:i + nty * m:m, j:j + ntx * m:m]
    v = np.einsum("ai,nctsij->nctsaj", BT, d)
    v = np.einsum("nctsaj,bj->nctsab", v, BT)                       # B^T d B
    v = v.transpose(4, 5, 0, 2, 3, 1).reshape(a * a, n * nty * ntx, c)
    mm = np.matmul(v, U.astype(cdt))                                  # [a*a, tiles, Cout]
    mm = mm.reshape(a, a, n, nty, ntx, cout)
    y = np.einsum("ia,abntsk->ibntsk", AT, mm)
    y = np.einsum("ibntsk,jb->ijntsk", y, AT)                         # A^T M A
    y = y.transpose(2, 5, 3, 0, 4, 1).reshape(n, cout, nty * m, ntx * m)[:, :, :ho, :wo]
    if b is not None:
        y = y + b.astype(cdt).reshape(1, cout, 1, 1)
    return np.ascontiguousarray(y).astype(x.dtype, copy=False)


def _winograd_conv2d(x, U, b=None, tile=REQUIRED, pads=None):
    """Stride-1 3x3 convolution through the Winograd transforms (float64, rounded once)."""
    return winograd_conv2d_numpy(x, U, b, tile=tile, pads=pads, compute_dtype=np.float64)


register_op("winograd_conv2d", reference=_winograd_conv2d, infer=_infer,
            attrs={"tile": REQUIRED, "pads": None}, fusion=FusionKind.OUT_FUSABLE,
            num_inputs=(2, 3),
            doc="winograd_conv2d(x[N,Cin,H,W], U[alpha^2,Cin,Cout], bias[Cout]?) {tile, pads}: "
                "stride-1 3x3 convolution by F(tile x tile, 3x3), U the transformed filter")

__all__ = ["TILES", "winograd_matrices", "transform_filter", "alpha_of", "out_dims",
           "winograd_conv2d_numpy"]
