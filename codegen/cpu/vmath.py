"""Vector math in plain LLVM IR: exp, sigmoid, tanh and erf as polynomials, for float32 lanes.

LLVM lowers `llvm.exp.v8f32` to eight scalar `expf` calls; these stay in vector registers.
Each works on a scalar or any vector of float32 and handles NaN, +-Inf and overflow
explicitly (no fast-math flags that would assume them away). Measured error bounds, against
float64 results correctly rounded to float32, over every float32 input
(tests/codegen/test_vmath.py checks them on a large sample; `python -m tests.codegen.vmath_full`
runs all 2^32):

* exp  -- at most 1 ulp (Cody-Waite range reduction, Cephes' degree-5 polynomial)
* tanh -- at most 2 ulp (odd polynomial below 0.625, 1 - 2/(exp(2|x|)+1) above; 1 measured)
* erf  -- at most 8 ulp (the rational approximation XLA and Eigen use, |x| clamped to 4;
  7 measured, near |x| = 3.9 where erf is within 1e-7 of 1)
* sigmoid -- at most 2 ulp for x >= -88.3 (2 measured over all 2^32 inputs, near x = -3e-7);
  0 below, where the true value is a denormal below 4e-39

Results that underflow come out as 0 or a denormal as IEEE says; inside a slimc call with
flush-to-zero on they are 0.
"""

from __future__ import annotations

import math

from llvmlite import ir

from .llvm_util import I32, const, vector_of


def _lanes(x: ir.Value) -> int:
    return x.type.count if isinstance(x.type, ir.VectorType) else 1


def _c(x: ir.Value, v: float) -> ir.Constant:
    return const(x.type, v)


def _poly(b: ir.IRBuilder, x: ir.Value, coeffs, name: str) -> ir.Value:
    """Horner: coeffs[0]*x^(n-1) + ... + coeffs[-1], with fused multiply-adds."""
    acc = _c(x, coeffs[0])
    for k in coeffs[1:]:
        acc = b.fadd(b.fmul(acc, x, flags=("contract",)), _c(x, k), flags=("contract",), name=name)
    return acc


def _fabs(b, x):
    fn = _intrinsic(b, "llvm.fabs", x.type)
    return b.call(fn, [x])


def _intrinsic(b: ir.IRBuilder, base: str, t: ir.Type) -> ir.Function:
    lanes = t.count if isinstance(t, ir.VectorType) else 1
    name = f"{base}.{'v%d' % lanes if lanes > 1 else ''}f32"
    fn = b.module.globals.get(name)
    if fn is None:
        fn = ir.Function(b.module, ir.FunctionType(t, [t]), name=name)
    return fn


def _select_nan(b, x, result):
    """NaN in, NaN out (the same NaN)."""
    return b.select(b.fcmp_unordered("uno", x, x), x, result)


def _exp_reduced(b: ir.IRBuilder, xc: ir.Value, name: str) -> tuple:
    """(y, n) with exp(xc) = y * 2^n, y in [1/sqrt2, sqrt2], n a float holding an integer:
    n = round(xc / ln2), r = xc - n ln2 (ln2 split in two so r is exact), y = 1 + r + r^2 P(r)."""
    n = b.call(_intrinsic(b, "llvm.roundeven", xc.type), [b.fmul(xc, _c(xc, 1 / math.log(2)))],
               name=name + ".n")
    r = b.fsub(xc, b.fmul(n, _c(xc, 0.693359375)), name=name + ".r0")
    r = b.fsub(r, b.fmul(n, _c(xc, -2.12194440e-4)), name=name + ".r")
    z = b.fmul(r, r)
    p = _poly(b, r, [1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                     1.6666665459e-1, 5.0000001201e-1], name + ".p")
    y = b.fadd(b.fadd(b.fmul(p, z, flags=("contract",)), r, flags=("contract",)), _c(xc, 1.0),
               name=name + ".poly")
    return y, n


def _pow2(b: ir.IRBuilder, n_int: ir.Value, t: ir.Type) -> ir.Value:
    """2^n as a float of type t, for integer lanes n in [-126, 127]."""
    it = n_int.type
    return b.bitcast(b.shl(b.add(n_int, const(it, 127)), const(it, 23)), t)


def exp(b: ir.IRBuilder, x: ir.Value, name: str = "exp") -> ir.Value:
    it = vector_of(I32, _lanes(x))
    # clamp to [-104, 89]: beyond, the result is 0 or inf (fixed up below); NaN passes
    xc = b.select(b.fcmp_ordered("<", x, _c(x, -104.0)), _c(x, -104.0), x)
    xc = b.select(b.fcmp_ordered(">", xc, _c(x, 89.0)), _c(x, 89.0), xc)
    y, n = _exp_reduced(b, xc, name)
    scalef = _scalef(b, x)
    if scalef is not None:  # y * 2^n in one instruction, denormals included
        out = scalef(y, n, name)
    else:
        # 2^n in two factors so that n down to -150 gives denormals instead of garbage
        ni = b.fptosi(n, it)
        half = b.ashr(ni, const(it, 1))
        out = b.fmul(b.fmul(y, _pow2(b, half, x.type)), _pow2(b, b.sub(ni, half), x.type),
                     name=name)
    out = b.select(b.fcmp_ordered(">", x, _c(x, 88.72283935546875)), _c(x, math.inf), out)
    out = b.select(b.fcmp_ordered("<", x, _c(x, -103.97208404541016)), _c(x, 0.0), out)
    return _select_nan(b, x, out)


def _exp_normal(b: ir.IRBuilder, xc: ir.Value, name: str) -> ir.Value:
    """exp(xc) for xc already inside [-87.3, 88.3] (normal results): one power-of-two factor."""
    y, n = _exp_reduced(b, xc, name)
    return b.fmul(y, _pow2(b, b.fptosi(n, vector_of(I32, _lanes(xc))), xc.type), name=name)


def _scalef(b: ir.IRBuilder, x: ir.Value):
    """`scaled(y, n, name)` = y * 2^n (n a float holding an integer) in one AVX-512
    vscalefps, overflow to inf and denormals as IEEE says, for 16-lane float vectors where
    the module is for a CPU that has it (its target says so when it makes the module,
    CpuTarget.new_ir_module); else None. It replaces building 2^n from n's bits and the
    selects around it (EfficientNet-B0's SiLU kernels 5% faster, outputs bitwise equal)."""
    if _lanes(x) != 16 or not getattr(b.module, "has_avx512f", False):
        return None
    fname = "llvm.x86.avx512.mask.scalef.ps.512"
    vt = x.type
    fn = b.module.globals.get(fname)
    if fn is None:
        fn = ir.Function(b.module, ir.FunctionType(vt, [vt, vt, vt, ir.IntType(16), I32]),
                         name=fname)
    every_lane, current_rounding = ir.Constant(ir.IntType(16), -1), I32(4)
    return lambda y, n, name: b.call(fn, [y, n, ir.Constant(vt, None), every_lane,
                                          current_rounding], name=name)


def sigmoid(b: ir.IRBuilder, x: ir.Value, name: str = "sigmoid") -> ir.Value:
    """1 / (1 + exp(-x)), cheaper than through `exp`: exp(-x) is needed only where one power
    of two scales it. Below -87.3 it adds nothing to 1, so -x is clamped there; above 88.3
    (where 2^n would need n = 128) the result is 0, where the true value is a denormal below
    4e-39. At most 2 ulp elsewhere (tests/codegen/test_vmath.py)."""
    t = b.fneg(x)
    scalef = _scalef(b, x)
    if scalef is not None:
        # vscalefps builds 2^n, overflowing to inf past 88.7 (then the result is 0) and
        # underflowing to 0 (then 1) itself: no integer exponent, no overflow select; the
        # clamps only keep the range reduction exact. Between 88.3 and 88.7 the result is
        # the denormal it should be, not 0.
        tc = b.select(b.fcmp_ordered("<", t, _c(x, -104.0)), _c(x, -104.0), t)
        tc = b.select(b.fcmp_ordered(">", tc, _c(x, 104.0)), _c(x, 104.0), tc)
        y, n = _exp_reduced(b, tc, name + ".exp")
        e = scalef(y, n, name + ".exp")
    else:
        tc = b.select(b.fcmp_ordered("<", t, _c(x, -87.3)), _c(x, -87.3), t)
        tc = b.select(b.fcmp_ordered(">", tc, _c(x, 88.3)), _c(x, 88.3), tc)
        e = _exp_normal(b, tc, name + ".exp")
        e = b.select(b.fcmp_ordered(">", t, _c(x, 88.3)), _c(x, math.inf), e)
    out = b.fdiv(_c(x, 1.0), b.fadd(_c(x, 1.0), e), name=name)
    return _select_nan(b, x, out)


def tanh(b: ir.IRBuilder, x: ir.Value, name: str = "tanh") -> ir.Value:
    ax = _fabs(b, x)
    # small |x|: x + x^3 P(x^2)
    z = b.fmul(x, x)
    p = _poly(b, z, [-5.70498872745e-3, 2.06390887954e-2, -5.37397155531e-2, 1.33314422036e-1,
                     -3.33332819422e-1], name + ".p")
    small = b.fadd(x, b.fmul(b.fmul(x, z), p, flags=("contract",)), flags=("contract",))
    # large |x|: 1 - 2 / (exp(2|x|) + 1), sign restored
    e = exp(b, b.fmul(ax, _c(x, 2.0)), name + ".e")
    big = b.fsub(_c(x, 1.0), b.fdiv(_c(x, 2.0), b.fadd(e, _c(x, 1.0))))
    big = b.select(b.fcmp_ordered("<", x, _c(x, 0.0)), b.fneg(big), big)
    out = b.select(b.fcmp_ordered("<", ax, _c(x, 0.625)), small, big, name=name)
    out = b.select(b.fcmp_ordered("==", x, _c(x, 0.0)), x, out)  # tanh(-0) = -0
    return _select_nan(b, x, out)


_ERF_ALPHA = [-2.72614225801306e-10, 2.77068142495902e-08, -2.10102402082508e-06,
              -5.69250639462346e-05, -7.34990630326855e-04, -2.95459980854025e-03,
              -1.60960333262415e-02]
_ERF_BETA = [-1.45660718464996e-05, -2.13374055278905e-04, -1.68282697438203e-03,
             -7.37332916720468e-03, -1.42647390514189e-02]


def erf(b: ir.IRBuilder, x: ir.Value, name: str = "erf") -> ir.Value:
    lim = _c(x, 4.0)
    xc = b.select(b.fcmp_ordered(">", x, lim), lim, x)
    xc = b.select(b.fcmp_ordered("<", xc, b.fneg(lim)), b.fneg(lim), xc)
    z = b.fmul(xc, xc)
    # x * (P/Q), not (x*P)/Q: x*P underflows for tiny x and loses every digit
    ratio = b.fdiv(_poly(b, z, _ERF_ALPHA, name + ".num"), _poly(b, z, _ERF_BETA, name + ".den"))
    out = b.fmul(xc, ratio, name=name)
    return _select_nan(b, x, out)
