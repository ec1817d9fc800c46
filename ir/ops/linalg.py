"""Linear algebra: matmul, gemm, einsum, matmul_integer, det.

* ``matmul(a, b)`` -- numpy's matmul: 1-D operands are promoted (a row vector on the left, a
  column vector on the right) and the added axis dropped again; leading (batch) axes broadcast.
* ``gemm(a, b, c?) {alpha, beta, trans_a, trans_b}`` -- ``alpha * op(a) @ op(b) + beta * c``
  on 2-D ``a`` and ``b``, ``op`` transposing when its flag is set, ``c`` broadcasting to the
  (M, N) result. Kept as one op (rather than matmul + transpose + mul + add) so that fusion and
  weight prepacking see the whole dense layer.
* ``einsum(*xs) {equation}`` -- numpy's einsum (explicit ``->`` or implicit output, ``...``
  ellipsis, repeated labels for diagonals); a label of size 1 broadcasts against the others.
* ``matmul_integer(a, b, a_zero_point?, b_zero_point?)`` -- ``(a - a_zp) @ (b - b_zp)`` on
  8-bit integers, exact, in int32. ``a_zp`` is a scalar or per row of ``a`` (an M-vector or
  a [..., M, 1] tensor); ``b_zp`` a scalar or per column of ``b`` (an N-vector or [..., 1, N]).
* ``det(x)`` -- the determinant of the square matrices in the last two axes.

Float16 and bfloat16 compute in float32 and round once at the end.
"""

from __future__ import annotations

import re

import numpy as np

from ..infer import broadcast_dims, broadcast_shapes
from ..registry import REQUIRED, FusionKind, InferContext, register_op
from ..types import Dim, TensorType, dtypes

OUT = FusionKind.OUT_FUSABLE


def _compute_dtype(dt: np.dtype) -> np.dtype:
    if dt == np.float16 or dt.name == "bfloat16" or dt.kind == "V":
        return np.dtype(np.float32)
    return dt


def _same_dims(a: Dim, b: Dim, what: str, ctx: InferContext) -> Dim:
    """Two dims that must be equal: a static mismatch fails; the known one wins."""
    if isinstance(a, int) and isinstance(b, int):
        if a != b:
            ctx.fail(f"{what}: {a} against {b}")
        return a
    if isinstance(a, int):
        return a
    if isinstance(b, int):
        return b
    return a if a == b else (a if a is not None else b)


def _check_same_dtype(ctx: InferContext, n: int) -> None:
    dts = {ctx[i].dtype for i in range(n)}
    if len(dts) != 1:
        ctx.fail("inputs must have the same dtype, got " + ", ".join(str(ctx[i].dtype) for i in range(n)))


# ----- matmul ----------------------------------------------------------------------------------

def matmul_shape(sa: tuple, sb: tuple, ctx: InferContext) -> tuple:
    if len(sa) == 0 or len(sb) == 0:
        ctx.fail("operands must have rank >= 1 (got a scalar)")
    a_vec, b_vec = len(sa) == 1, len(sb) == 1
    a2 = (1,) + tuple(sa) if a_vec else tuple(sa)
    b2 = tuple(sb) + (1,) if b_vec else tuple(sb)
    _same_dims(a2[-1], b2[-2], f"contracted dimensions differ (a {list(sa)}, b {list(sb)})", ctx)
    batch = broadcast_shapes([a2[:-2], b2[:-2]], ctx)
    out = list(batch)
    if not a_vec:
        out.append(a2[-2])
    if not b_vec:
        out.append(b2[-1])
    return tuple(out)


def matmul(a, b):
    ct = _compute_dtype(a.dtype)
    if ct != a.dtype:
        return np.matmul(a.astype(ct), b.astype(ct)).astype(a.dtype)
    return np.asarray(np.matmul(a, b))


def _infer_matmul(ctx: InferContext) -> TensorType:
    _check_same_dtype(ctx, 2)
    if ctx[0].dtype == dtypes.bool:
        ctx.fail("matmul does not take bool input")
    return TensorType(ctx[0].dtype, matmul_shape(ctx[0].shape, ctx[1].shape, ctx))


register_op("matmul", reference=matmul, infer=_infer_matmul, fusion=OUT, num_inputs=2,
            doc="matmul(a, b): numpy matmul (1-D operands, batch broadcasting)")


# ----- gemm ------------------------------------------------------------------------------------

def gemm(a, b, c=None, alpha=1.0, beta=1.0, trans_a=0, trans_b=0):
    ct = _compute_dtype(a.dtype)
    at = a.T if trans_a else a
    bt = b.T if trans_b else b
    if a.dtype.kind in "iu":
        y = np.matmul(at, bt)
        if alpha != 1.0:
            y = y * alpha
        if c is not None and beta != 0.0:
            y = y + (c * beta if beta != 1.0 else c)
        return np.asarray(y).astype(a.dtype)
    y = np.matmul(at.astype(ct, copy=False), bt.astype(ct, copy=False))
    if alpha != 1.0:
        y *= np.asarray(alpha, ct)
    if c is not None:
        cc = c.astype(ct, copy=False)
        y = y + (cc if beta == 1.0 else cc * np.asarray(beta, ct))
    return np.asarray(y).astype(a.dtype, copy=False)


def _infer_gemm(ctx: InferContext) -> TensorType:
    a, b = ctx[0], ctx[1]
    n_in = 3 if ctx.has(2) else 2
    _check_same_dtype(ctx, n_in)
    if a.dtype == dtypes.bool:
        ctx.fail("gemm does not take bool input")
    if a.rank != 2 or b.rank != 2:
        ctx.fail(f"a and b must be 2-D, got {a} and {b}")
    for name in ("trans_a", "trans_b"):
        if ctx.attrs[name] not in (0, 1):
            ctx.fail(f"attribute {name!r} must be 0 or 1, got {ctx.attrs[name]!r}")
    for name in ("alpha", "beta"):
        if not isinstance(ctx.attrs[name], (int, float, np.number)) or isinstance(ctx.attrs[name], bool):
            ctx.fail(f"attribute {name!r} must be a number, got {ctx.attrs[name]!r}")
    m, ka = (a.shape[1], a.shape[0]) if ctx.attrs["trans_a"] else a.shape
    kb, n = (b.shape[1], b.shape[0]) if ctx.attrs["trans_b"] else b.shape
    _same_dims(ka, kb, f"contracted dimensions differ (a {a}, b {b}, trans_a "
                       f"{ctx.attrs['trans_a']}, trans_b {ctx.attrs['trans_b']})", ctx)
    if ctx.has(2):
        c = ctx[2]
        if c.rank > 2:
            ctx.fail(f"c must have rank <= 2, got {c}")
        for cd, od in zip(reversed(c.shape), (n, m)):
            if isinstance(cd, int) and cd != 1 and isinstance(od, int) and cd != od:
                ctx.fail(f"c {c} does not broadcast to the result [{m},{n}]")
    return TensorType(a.dtype, (m, n))


register_op("gemm", reference=gemm, infer=_infer_gemm, fusion=OUT, num_inputs=(2, 3),
            attrs={"alpha": 1.0, "beta": 1.0, "trans_a": 0, "trans_b": 0},
            doc="gemm(a, b, c?) {alpha, beta, trans_a, trans_b}: alpha*op(a)@op(b) + beta*c")


# ----- einsum ----------------------------------------------------------------------------------

_TERM = re.compile(r"^[A-Za-z]*(\.\.\.)?[A-Za-z]*$")


def parse_equation(equation: str, n_inputs: int):
    """-> (input terms, output term or None for implicit); each term a list of labels with
    '...' for the ellipsis. Raises ValueError on a malformed equation."""
    if not isinstance(equation, str):
        raise ValueError(f"equation must be a string, got {equation!r}")
    eq = equation.replace(" ", "")
    if eq.count("->") > 1:
        raise ValueError(f"equation {equation!r} has more than one '->'")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != n_inputs:
        raise ValueError(f"equation {equation!r} has {len(terms)} operand term(s) for "
                         f"{n_inputs} input(s)")

    def split(term: str) -> list:
        if not _TERM.match(term):
            raise ValueError(f"bad term {term!r} in equation {equation!r} (letters and at most "
                             f"one '...')")
        head, dots, tail = term.partition("...")
        return list(head) + (["..."] if dots else []) + list(tail)

    ins = [split(t) for t in terms]
    out = split(rhs) if arrow else None
    if out is not None:
        letters = [l for l in out if l != "..."]
        if len(set(letters)) != len(letters):
            raise ValueError(f"output term {rhs!r} repeats a label")
        known = {l for t in ins for l in t}
        missing = [l for l in letters if l not in known]
        if missing:
            raise ValueError(f"output label(s) {missing} appear in no operand")
        if "..." in out and not any("..." in t for t in ins):
            raise ValueError("output has '...' but no operand does")
    return ins, out


def _einsum_infer(ctx: InferContext) -> TensorType:
    n = len(ctx.inputs)
    if n == 0:
        ctx.fail("einsum needs at least one input")
    _check_same_dtype(ctx, n)
    try:
        ins, out = parse_equation(ctx.attrs["equation"], n)
    except ValueError as e:
        ctx.fail(str(e))
    label_dim: dict = {}
    ell_shapes = []
    for i, term in enumerate(ins):
        shape = ctx[i].shape
        letters = [l for l in term if l != "..."]
        if "..." in term:
            n_ell = len(shape) - len(letters)
            if n_ell < 0:
                ctx.fail(f"operand {i} has rank {len(shape)}, fewer than its term's "
                         f"{len(letters)} labels")
            pos = term.index("...")
            ell_shapes.append(tuple(shape[pos:pos + n_ell]))
            dims = list(shape[:pos]) + list(shape[pos + n_ell:])
        else:
            if len(shape) != len(letters):
                ctx.fail(f"operand {i} has rank {len(shape)} but its term has {len(letters)} "
                         f"labels")
            dims = list(shape)
        own: dict = {}
        for l, d in zip(letters, dims):
            if l in own:  # a repeated label within one operand: a diagonal, sizes must agree
                own[l] = _same_dims(own[l], d, f"operand {i} repeats label {l!r} on axes of "
                                               f"different sizes", ctx)
            else:
                own[l] = d
        for l, d in own.items():
            if l in label_dim:
                prev = label_dim[l]
                if isinstance(prev, int) and isinstance(d, int) and prev != d and 1 not in (prev, d):
                    ctx.fail(f"label {l!r} has size {prev} in one operand and {d} in another")
                label_dim[l] = broadcast_dims(prev, d)
            else:
                label_dim[l] = d
    ell = broadcast_shapes(ell_shapes, ctx) if ell_shapes else ()
    if out is None:
        counts: dict = {}
        for term in ins:
            for l in term:
                if l != "...":
                    counts[l] = counts.get(l, 0) + 1
        out = (["..."] if ell_shapes else []) + sorted(l for l, c in counts.items() if c == 1)
    shape = []
    for l in out:
        if l == "...":
            shape.extend(ell)
        else:
            shape.append(label_dim[l])
    return TensorType(ctx[0].dtype, tuple(shape))


def einsum(*xs, equation):
    ct = _compute_dtype(xs[0].dtype)
    ops = [x.astype(ct, copy=False) for x in xs]
    eq = equation.replace(" ", "")
    res = np.einsum(eq, *ops, optimize=len(ops) > 1)
    return np.asarray(res).astype(xs[0].dtype, copy=False)


register_op("einsum", reference=einsum, infer=_einsum_infer, fusion=FusionKind.OPAQUE,
            num_inputs=(1, None), attrs={"equation": REQUIRED},
            doc="einsum(*xs) {equation}: numpy einsum")


# ----- matmul_integer --------------------------------------------------------------------------

def _zero_point_a(zp, a):
    zp = np.asarray(zp).astype(np.int32)
    if zp.ndim == 1 and zp.size > 1 and a.ndim >= 2:  # per row: an M-vector
        zp = zp.reshape(-1, 1)
    return zp


def matmul_integer(a, b, a_zero_point=None, b_zero_point=None):
    ai = a.astype(np.int32)
    bi = b.astype(np.int32)
    if a_zero_point is not None:
        ai = ai - _zero_point_a(a_zero_point, a)
    if b_zero_point is not None:
        bi = bi - np.asarray(b_zero_point).astype(np.int32)
    k = a.shape[-1]
    if k * 255 * 255 < 2 ** 31:
        # Exact in float64 (every partial sum < 2**53) and BLAS-fast.
        return np.matmul(ai.astype(np.float64), bi.astype(np.float64)).astype(np.int32)
    return np.matmul(ai.astype(np.int64), bi.astype(np.int64)).astype(np.int32)


def _infer_matmul_integer(ctx: InferContext) -> TensorType:
    a, b = ctx[0], ctx[1]
    for name, t in (("a", a), ("b", b)):
        if t.dtype not in (dtypes.u8, dtypes.i8):
            ctx.fail(f"{name} must be u8 or i8, got {t}")
    shape = matmul_shape(a.shape, b.shape, ctx)
    for i, (name, src) in ((2, ("a_zero_point", a)), (3, ("b_zero_point", b))):
        if ctx.has(i):
            zp = ctx[i]
            if zp.dtype != src.dtype:
                ctx.fail(f"{name} must have the dtype of its operand ({src.dtype}), got {zp}")
            if zp.rank > max(src.rank, 1):
                ctx.fail(f"{name} {zp} has a higher rank than its operand {src}")
            if i == 2 and zp.rank == 1 and src.rank >= 2:
                m = src.shape[-2]
                if isinstance(zp.shape[0], int) and zp.shape[0] != 1 and isinstance(m, int) \
                        and zp.shape[0] != m:
                    ctx.fail(f"a_zero_point {zp} must be a scalar or have one entry per row "
                             f"of a ({m})")
            if i == 3 and zp.rank >= 1 and src.rank >= 1:
                nn = src.shape[-1]
                z = zp.shape[-1]
                if isinstance(z, int) and z != 1 and isinstance(nn, int) and z != nn:
                    ctx.fail(f"b_zero_point {zp} must be a scalar or have one entry per column "
                             f"of b ({nn})")
    return TensorType(dtypes.i32, shape)


register_op("matmul_integer", reference=matmul_integer, infer=_infer_matmul_integer,
            fusion=OUT, num_inputs=(2, 4),
            doc="matmul_integer(a, b, a_zp?, b_zp?) -> i32: (a - a_zp) @ (b - b_zp)")


# ----- det -------------------------------------------------------------------------------------

def det(x):
    ct = _compute_dtype(x.dtype)
    return np.asarray(np.linalg.det(x.astype(ct, copy=False))).astype(x.dtype)


def _infer_det(ctx: InferContext) -> TensorType:
    t = ctx[0]
    if not t.dtype.is_float:
        ctx.fail(f"det needs a float input, got {t}")
    if t.rank < 2:
        ctx.fail(f"input must have rank >= 2, got {t}")
    _same_dims(t.shape[-2], t.shape[-1], "matrices must be square", ctx)
    return TensorType(t.dtype, t.shape[:-2])


register_op("det", reference=det, infer=_infer_det, fusion=FusionKind.OPAQUE, num_inputs=1,
            doc="det(x): determinant over the last two (square) axes")
