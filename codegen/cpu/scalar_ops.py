"""How each elementwise op computes one element -- or one vector of elements -- in LLVM IR.

`LOWERINGS[op](e, args, attrs)` returns the result for operand values `args` that are all
scalars or all vectors of the same lane count (the caller broadcasts). `e` is an `Emitter`,
which knows the builder, the element types and the fast-math flags in force. Because the same
table serves scalars and vectors, one definition is used by the plain loops, the vectorized
loops and the epilogues fused into matmul and convolution stores.

Float semantics: ``contract`` and ``reassoc`` may be on (opt_level >= 2), never ``nnan`` /
``ninf``: NaN and Inf flow through max, min, relu and clip as numpy's references say.
Math functions without a vector instruction (erf, the inverse hyperbolics) call libm per lane;
the kernels issue replaces the hot ones (exp, tanh, erf) with vector polynomials.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

from llvmlite import ir

from slimc.ir import DType, dtypes

from . import vmath
from .llvm_util import (F32, I8, I32, const, element_type, is_float,
                        llvm_type, vector_of)


def _suffix(t: ir.Type) -> str:
    if isinstance(t, ir.VectorType):
        return f"v{t.count}{_suffix(t.element)}"
    if isinstance(t, ir.IntType):
        return f"i{t.width}"
    return {ir.FloatType: "f32", ir.DoubleType: "f64", ir.HalfType: "f16"}[type(t)]


# LLVM math intrinsics that NVPTX cannot lower (it aborts the process on them): on a GPU
# these, and every libm function, call CUDA's libdevice (`__nv_logf`, ...; codegen/cuda/ptx.py
# links it in)
_NO_NVPTX_INTRINSIC = frozenset({"exp", "exp10", "log", "log2", "log10", "pow", "sin", "cos",
                                 "tan", "tanh"})


class Emitter:
    """A builder plus what an op lowering needs to know about its operands."""

    def __init__(self, b: ir.IRBuilder, in_dtypes: Sequence[DType], out_dtype: DType,
                 fast_math: Sequence[str] = ("contract",), name: str = "v"):
        self.b = b
        # code for a GPU (the module's target, codegen/cuda): math goes to libdevice
        self.on_gpu = b.module.triple.startswith("nvptx")
        self.in_dtypes = list(in_dtypes)
        self.out_dtype = out_dtype
        self.flags = tuple(fast_math)
        self.name = name
        # the caller knows no operand is NaN (KernelBuilder.never_nan): max and min need not
        # propagate one; and per operand, (lo, hi) its elements lie in, or None
        self.no_nan = False
        self.ranges: list = []

    # ----- typing ------------------------------------------------------------------------
    @property
    def dtype(self) -> DType:
        """The element type of the first operand (most ops compute in it)."""
        return self.in_dtypes[0] if self.in_dtypes else self.out_dtype

    def c(self, like: ir.Value, value) -> ir.Constant:
        return const(like.type, value)

    # ----- intrinsics and libm -----------------------------------------------------------
    def intrinsic(self, base: str, args: Sequence[ir.Value], ret: ir.Type = None) -> ir.Value:
        if self.on_gpu and base in _NO_NVPTX_INTRINSIC:
            return self.libdevice(base, args)
        t = args[0].type
        name = f"llvm.{base}.{_suffix(t)}"
        module = self.b.module
        fn = module.globals.get(name)
        if fn is None:
            fn = ir.Function(module, ir.FunctionType(ret or t, [a.type for a in args]), name=name)
        return self.b.call(fn, list(args), name=f"{self.name}.{base}")

    def libm(self, fname: str, x: ir.Value) -> ir.Value:
        """Call a libm function (`erff`, `asinhf`, ...) on a scalar or on each lane."""
        if self.on_gpu:
            return self.libdevice(fname, [x])
        elem = element_type(x.type)
        cname = fname + ("f" if isinstance(elem, ir.FloatType) else "")
        if isinstance(elem, ir.HalfType):
            wide = self.b.fpext(x, vector_of(F32, x.type.count) if isinstance(x.type, ir.VectorType) else F32)
            return self.b.fptrunc(self.libm_f32(fname, wide), x.type)
        module = self.b.module
        fn = module.globals.get(cname)
        if fn is None:
            fn = ir.Function(module, ir.FunctionType(elem, [elem]), name=cname)
        if not isinstance(x.type, ir.VectorType):
            return self.b.call(fn, [x], name=f"{self.name}.{fname}")
        out = ir.Constant(x.type, ir.Undefined)
        for lane in range(x.type.count):
            s = self.b.extract_element(x, I32(lane))
            out = self.b.insert_element(out, self.b.call(fn, [s]), I32(lane))
        return out

    def libm_f32(self, fname: str, x: ir.Value) -> ir.Value:
        return self.libm(fname, x)

    def libdevice(self, fname: str, args: Sequence[ir.Value]) -> ir.Value:
        """libdevice's `__nv_<fname>f` (f32) or `__nv_<fname>` (f64) on scalars or each lane;
        halves compute in f32."""
        t = args[0].type
        elem = element_type(t)
        lanes = t.count if isinstance(t, ir.VectorType) else 0
        if isinstance(elem, ir.HalfType):
            wide_t = vector_of(F32, lanes) if lanes else F32
            wide = self.libdevice(fname, [self.b.fpext(a, wide_t) for a in args])
            return self.b.fptrunc(wide, t)
        cname = f"__nv_{fname}" + ("f" if isinstance(elem, ir.FloatType) else "")
        fn = self.b.module.globals.get(cname)
        if fn is None:
            fn = ir.Function(self.b.module, ir.FunctionType(elem, [elem] * len(args)), name=cname)
        if not lanes:
            return self.b.call(fn, list(args), name=f"{self.name}.{fname}")
        out = ir.Constant(t, ir.Undefined)
        for lane in range(lanes):
            scalars = [self.b.extract_element(a, I32(lane)) for a in args]
            out = self.b.insert_element(out, self.b.call(fn, scalars), I32(lane))
        return out

    # ----- arithmetic that picks float or int instructions -------------------------------
    def add(self, x, y):
        return self.b.fadd(x, y, flags=self.flags) if is_float(x.type) else self.b.add(x, y)

    def sub(self, x, y):
        return self.b.fsub(x, y, flags=self.flags) if is_float(x.type) else self.b.sub(x, y)

    def mul(self, x, y):
        return self.b.fmul(x, y, flags=self.flags) if is_float(x.type) else self.b.mul(x, y)

    def fdiv(self, x, y):
        return self.b.fdiv(x, y, flags=self.flags)

    def lt(self, x, y):
        if is_float(x.type):
            return self.b.fcmp_ordered("<", x, y)
        return self.b.icmp_signed("<", x, y) if self.dtype.is_signed else self.b.icmp_unsigned("<", x, y)

    def gt(self, x, y):
        return self.lt(y, x)

    def select(self, cond, x, y):
        return self.b.select(cond, x, y)

    def max(self, x, y):
        if is_float(x.type) and not self.no_nan:
            return self.intrinsic("maximum", [x, y])  # NaN-propagating, like np.maximum
        return self.select(self.lt(x, y), y, x)  # floats without NaN: one vmaxps

    def min(self, x, y):
        if is_float(x.type) and not self.no_nan:
            return self.intrinsic("minimum", [x, y])
        return self.select(self.lt(y, x), y, x)

    def _f32(self, x) -> bool:
        return isinstance(element_type(x.type), ir.FloatType)

    def exp(self, x):
        return vmath.exp(self.b, x, self.name + ".exp") if self._f32(x) else self.intrinsic("exp", [x])

    def log(self, x):
        return self.intrinsic("log", [x])

    def tanh(self, x):
        return vmath.tanh(self.b, x, self.name + ".tanh") if self._f32(x) else self.intrinsic("tanh", [x])

    def erf(self, x):
        return vmath.erf(self.b, x, self.name + ".erf") if self._f32(x) else self.libm("erf", x)

    def sigmoid(self, x):
        if self._f32(x):
            return vmath.sigmoid(self.b, x, self.name + ".sigmoid")
        one = self.c(x, 1.0)
        return self.fdiv(one, self.add(one, self.exp(self.b.fneg(x))))

    def softplus(self, x):
        # log(1 + exp(x)) without overflow: max(x, 0) + log1p(exp(-|x|))
        ax = self.intrinsic("fabs", [x])
        return self.add(self.select(self.lt(x, self.c(x, 0.0)), self.c(x, 0.0), x),
                        self.libm("log1p", self.exp(self.b.fneg(ax))))

    def to_bool(self, x):
        """i1 from a stored bool (i8 0/1) or any number (non-zero)."""
        if is_float(x.type):
            return self.b.fcmp_unordered("!=", x, self.c(x, 0.0))
        return self.b.icmp_unsigned("!=", x, self.c(x, 0))

    def from_bool(self, bit):
        """Store form of a bool: i8 0/1 (scalar or vector)."""
        t = vector_of(I8, bit.type.count) if isinstance(bit.type, ir.VectorType) else I8
        return self.b.zext(bit, t)


def _safe_divisor(e: Emitter, y):
    """(y == 0, y == -1 for a signed type, the divisor to divide by): x86's idiv traps on a
    zero divisor and on the minimum value over -1 (its quotient overflows), and a trap kills
    the process, so those divide by 1 and their results are chosen after: 0 for a zero
    divisor (ONNX leaves it undefined), -x wrapped (numpy's answer) and a remainder of 0."""
    zero = e.c(y, 0)
    is_zero = e.b.icmp_unsigned("==", y, zero)
    if not e.dtype.is_signed:
        return is_zero, None, e.select(is_zero, e.c(y, 1), y)
    is_minus_one = e.b.icmp_signed("==", y, e.c(y, -1))
    return is_zero, is_minus_one, e.select(e.b.or_(is_zero, is_minus_one), e.c(y, 1), y)


def _int_div(e: Emitter, x, y):
    is_zero, is_minus_one, safe = _safe_divisor(e, y)
    if is_minus_one is None:
        return e.select(is_zero, e.c(y, 0), e.b.udiv(x, safe))
    q = e.select(is_minus_one, e.b.sub(e.c(x, 0), x), e.b.sdiv(x, safe))
    return e.select(is_zero, e.c(y, 0), q)


def _div(e, a, _):
    x, y = a
    return e.fdiv(x, y) if is_float(x.type) else _int_div(e, x, y)


def _pow(e, a, _):
    x, y = a
    if is_float(x.type):
        if y.type != x.type:
            y = convert(e, y, e.in_dtypes[1], e.in_dtypes[0])
        return e.intrinsic("pow", [x, y])
    fx = convert(e, x, e.in_dtypes[0], dtypes.f64)
    fy = convert(e, y, e.in_dtypes[1], dtypes.f64)
    return convert(e, e.intrinsic("pow", [fx, fy]), dtypes.f64, e.in_dtypes[0])


def _mod(e, a, attrs):
    x, y = a
    if is_float(x.type):
        r = e.b.frem(x, y)  # C fmod: the sign of the dividend
        if attrs.get("fmod", 0):
            return r
        # Python mod: the sign of the divisor
        fix = e.b.and_(e.b.fcmp_ordered("!=", r, e.c(r, 0.0)),
                       e.b.xor(e.lt(r, e.c(r, 0.0)), e.lt(y, e.c(y, 0.0))))
        return e.select(fix, e.add(r, y), r)
    zero = e.c(y, 0)
    is_zero, _, safe = _safe_divisor(e, y)  # x rem 1 is x rem -1: 0
    if not e.dtype.is_signed:
        return e.select(is_zero, zero, e.b.urem(x, safe))
    r = e.b.srem(x, safe)
    if not attrs.get("fmod", 0):
        fix = e.b.and_(e.b.icmp_signed("!=", r, zero),
                       e.b.xor(e.b.icmp_signed("<", r, zero), e.b.icmp_signed("<", safe, zero)))
        r = e.select(fix, e.b.add(r, safe), r)
    return e.select(is_zero, zero, r)


def _abs(e, a, _):
    (x,) = a
    if is_float(x.type):
        return e.intrinsic("fabs", [x])
    if not e.dtype.is_signed:
        return x
    return e.select(e.lt(x, e.c(x, 0)), e.b.neg(x), x)


def _sign(e, a, _):
    (x,) = a
    zero, one = e.c(x, 0), e.c(x, 1)
    if is_float(x.type):
        pos = e.select(e.gt(x, zero), one, zero)
        s = e.select(e.lt(x, zero), e.c(x, -1.0), pos)
        return e.select(e.b.fcmp_unordered("uno", x, x), x, s)  # sign(NaN) = NaN
    if not e.dtype.is_signed:
        return e.select(e.b.icmp_unsigned("!=", x, zero), one, zero)
    return e.select(e.lt(x, zero), e.c(x, -1), e.select(e.gt(x, zero), one, zero))


def _relu(e, a, _):
    (x,) = a
    # select(x < 0, 0, x): NaN is not < 0, so NaN passes through as np.maximum(NaN, 0) does.
    return e.select(e.lt(x, e.c(x, 0)), e.c(x, 0), x)


def _gelu(e, a, attrs):
    (x,) = a
    half, one = e.c(x, 0.5), e.c(x, 1.0)
    if attrs.get("approximate", "none") == "tanh":
        inner = e.mul(e.c(x, math.sqrt(2 / math.pi)),
                      e.add(x, e.mul(e.c(x, 0.044715), e.mul(x, e.mul(x, x)))))
        return e.mul(e.mul(half, x), e.add(one, e.tanh(inner)))
    return e.mul(e.mul(half, x), e.add(one, e.erf(e.mul(x, e.c(x, 1 / math.sqrt(2))))))


def _bit_shift(e: Emitter, x, n, direction: str):
    """numpy's shifts: arithmetic right shift for signed types, and an amount outside
    [0, width) (compared unsigned) gives 0, or the sign fill for a signed right shift --
    where LLVM's shl/ashr/lshr would give poison."""
    width = element_type(x.type).width
    in_range = e.b.icmp_unsigned("<", n, e.c(n, width))
    safe = e.select(in_range, n, e.c(n, 0))
    if direction == "LEFT":
        return e.select(in_range, e.b.shl(x, safe), e.c(x, 0))
    if e.dtype.is_signed:
        fill = e.select(e.lt(x, e.c(x, 0)), e.c(x, -1), e.c(x, 0))
        return e.select(in_range, e.b.ashr(x, safe), fill)
    return e.select(in_range, e.b.lshr(x, safe), e.c(x, 0))


def _cmp(pred_float: str, pred_int: str):
    def lower(e: Emitter, a, _):
        x, y = a
        if is_float(x.type):
            bit = e.b.fcmp_ordered(pred_float, x, y) if pred_float != "!=" else \
                e.b.fcmp_unordered(pred_float, x, y)
        elif e.dtype.is_signed:
            bit = e.b.icmp_signed(pred_int, x, y)
        else:
            bit = e.b.icmp_unsigned(pred_int, x, y)
        return e.from_bool(bit)

    return lower


def _logic(fn_name: str):
    def lower(e: Emitter, a, _):
        x, y = (e.to_bool(v) for v in a)
        return e.from_bool(getattr(e.b, fn_name)(x, y))

    return lower


def convert(e: Emitter, x: ir.Value, src: DType, dst: DType) -> ir.Value:
    """Numeric conversion as numpy's astype does it (float -> int truncates)."""
    lanes = x.type.count if isinstance(x.type, ir.VectorType) else 1
    dt = vector_of(llvm_type(dst), lanes)
    b = e.b
    if src == dst:
        return x
    # Half conversions other than f32<->f16 (which x86 does with F16C) would call compiler-rt
    # builtins (__truncdfhf2, __floatdihf, ...) that a JIT process does not have: go via f32.
    if src == dtypes.f16 and dst != dtypes.f32:
        return convert(e, convert(e, x, src, dtypes.f32), dtypes.f32, dst)
    if dst == dtypes.f16 and src != dtypes.f32:
        return convert(e, convert(e, x, src, dtypes.f32), dtypes.f32, dst)
    if dst == dtypes.bool:
        return e.from_bool(e.to_bool(x))
    if src == dtypes.bool:
        x = b.icmp_unsigned("!=", x, const(x.type, 0))
        return b.uitofp(x, dt) if dst.is_float else b.zext(x, dt)
    if src.is_float and dst.is_float:
        return b.fpext(x, dt) if dst.itemsize > src.itemsize else b.fptrunc(x, dt)
    if src.is_float:
        return b.fptosi(x, dt) if dst.is_signed else b.fptoui(x, dt)
    if dst.is_float:
        return b.sitofp(x, dt) if src.is_signed else b.uitofp(x, dt)
    if dst.itemsize > src.itemsize:
        return b.sext(x, dt) if src.is_signed else b.zext(x, dt)
    if dst.itemsize < src.itemsize:
        return b.trunc(x, dt)
    return x  # same width, other signedness: the bits are the value


def _cast(e, a, attrs):
    return convert(e, a[0], e.in_dtypes[0], attrs["to"])


def _isinf(e, a, attrs):
    (x,) = a
    inf = e.c(x, math.inf)
    pos = e.b.fcmp_ordered("==", x, inf)
    neg = e.b.fcmp_ordered("==", x, e.c(x, -math.inf))
    bit = e.c(pos, 0)
    if attrs.get("detect_positive", 1):
        bit = e.b.or_(bit, pos)
    if attrs.get("detect_negative", 1):
        bit = e.b.or_(bit, neg)
    return e.from_bool(bit)


def _variadic(step: Callable):
    def lower(e: Emitter, a, _):
        out = a[0]
        for x in a[1:]:
            out = step(e, out, x)
        return out

    return lower


def _mean(e, a, attrs):
    total = _variadic(Emitter.add)(e, a, attrs)
    return e.fdiv(total, e.c(total, float(len(a))))


def _clip(e, a, _):
    x = a[0]
    if len(a) > 1 and a[1] is not None:
        x = e.max(x, a[1])
    if len(a) > 2 and a[2] is not None:
        x = e.min(x, a[2])
    return x


def _quantize(e, a, _):
    """saturate(roundeven(x / scale) + zp) in f32, as the `quantize` reference computes it;
    maxnum/minnum clamp NaN to the lowest value, as the reference defines. On x86 with a
    constant zero point the clamp comes first instead, to [lo - zp, hi - zp] (rounding and
    clamping to integer bounds commute), as compare-selects that send NaN to the lower bound,
    then one instruction rounds to nearest even and converts (lrint: slimc never changes the
    rounding mode) and the zero point is added as an integer: five instructions where the
    float form takes seven, in every requantizing epilogue."""
    x, scale = a[0], a[1]
    src = e.in_dtypes[0]
    if src != dtypes.f32:
        x = convert(e, x, src, dtypes.f32)
        scale = convert(e, scale, e.in_dtypes[1], dtypes.f32)
    lo, hi = (0.0, 255.0) if e.out_dtype == dtypes.u8 else (-128.0, 127.0)
    scaled = e.b.fdiv(x, scale, name=e.name + ".scaled")
    zp = _uniform_constant(a[2], e.in_dtypes[2]) if len(a) > 2 and a[2] is not None else 0
    if zp is not None and e.b.module.triple.startswith("x86_64"):
        q = scaled
        reach = _scaled_range(e, x, scale)
        for pred, bound, inside in ((">", lo - zp, reach and reach[0] >= lo - zp),
                                    ("<", hi - zp, reach and reach[1] <= hi - zp)):
            if inside:  # x's range (a clip before) keeps x / scale within this bound
                continue
            c = e.c(q, bound)
            q = e.b.select(e.b.fcmp_ordered(pred, q, c), q, c, name=e.name + ".clamped")
        lanes = q.type.count if isinstance(q.type, ir.VectorType) else 0
        i32 = vector_of(I32, lanes) if lanes else I32
        fname = f"llvm.lrint.{_suffix(i32)}.{_suffix(q.type)}"
        fn = e.b.module.globals.get(fname)
        if fn is None:
            fn = ir.Function(e.b.module, ir.FunctionType(i32, [q.type]), name=fname)
        n = e.b.call(fn, [q], name=e.name + ".rounded")
        if zp:
            n = e.b.add(n, const(i32, int(zp)), name=e.name + ".zp")
        return convert(e, n, dtypes.i32, e.out_dtype)
    q = e.intrinsic("roundeven", [scaled])
    if len(a) > 2 and a[2] is not None:
        q = e.b.fadd(q, convert(e, a[2], e.in_dtypes[2], dtypes.f32), name=e.name + ".zp")
    q = e.intrinsic("minnum", [e.intrinsic("maxnum", [q, e.c(q, lo)]), e.c(q, hi)])
    return convert(e, convert(e, q, dtypes.f32, dtypes.i32), dtypes.i32, e.out_dtype)


def _scaled_range(e, x, scale):
    """(lo, hi) of x / scale in float32 when x's range is known (`Emitter.ranges`, f32) and
    the scale is a positive constant, else None (division rounds monotonically)."""
    import numpy as np

    ranges = e.ranges
    s = _uniform(scale)
    if len(ranges) < 2 or ranges[0] is None or e.in_dtypes[0] != dtypes.f32 or \
            not isinstance(s, float) or not s > 0:
        return None
    with np.errstate(all="ignore"):
        lo, hi = (float(np.float32(r) / np.float32(s)) for r in ranges[0])
    return lo, hi


def _uniform(v):
    """The Python number a constant scalar or splat vector holds, else None."""
    if not isinstance(v, ir.Constant):
        return None
    items = v.constant if isinstance(v.type, ir.VectorType) else [v]
    if not isinstance(items, (list, tuple)) or not items:
        return None
    values = {getattr(c, "constant", None) for c in items}
    value = next(iter(values)) if len(values) == 1 else None
    return value if isinstance(value, (int, float)) else None


def _uniform_constant(v, dtype):
    """The integer a constant scalar or splat vector of `dtype` holds, else None (LLVM keeps
    an integer constant's bits: -3 as an i8 is 253)."""
    value = _uniform(v)
    if not isinstance(value, int):
        return None
    bits = 8 * dtype.itemsize
    return value - (1 << bits) if dtype.is_signed and value >= 1 << (bits - 1) else value


def _dequantize(e, a, _):
    """f32(x - zp) * scale: the subtraction exact in i32, one rounding in the product."""
    x = convert(e, a[0], e.in_dtypes[0], dtypes.i32)
    if len(a) > 2 and a[2] is not None:
        x = e.b.sub(x, convert(e, a[2], e.in_dtypes[2], dtypes.i32), name=e.name + ".centered")
    f = convert(e, x, dtypes.i32, dtypes.f32)
    return e.b.fmul(f, a[1], name=e.name + ".dequant")


def _f(fn):
    """Adapter for one-operand lambdas."""
    return lambda e, a, attrs: fn(e, a[0], attrs)


LOWERINGS: dict[str, Callable] = {
    "identity": _f(lambda e, x, _: x),
    "neg": _f(lambda e, x, _: e.b.fneg(x) if is_float(x.type) else e.b.neg(x)),
    "abs": _abs,
    "sqrt": _f(lambda e, x, _: e.intrinsic("sqrt", [x])),
    "reciprocal": _f(lambda e, x, _: e.fdiv(e.c(x, 1.0), x)),
    "exp": _f(lambda e, x, _: e.exp(x)),
    "log": _f(lambda e, x, _: e.log(x)),
    "erf": _f(lambda e, x, _: e.erf(x)),
    "tanh": _f(lambda e, x, _: e.tanh(x)),
    "sigmoid": _f(lambda e, x, _: e.sigmoid(x)),
    "relu": _relu,
    "floor": _f(lambda e, x, _: e.intrinsic("floor", [x])),
    "ceil": _f(lambda e, x, _: e.intrinsic("ceil", [x])),
    "round": _f(lambda e, x, _: e.intrinsic("roundeven", [x])),
    "sign": _sign,
    "sin": _f(lambda e, x, _: e.intrinsic("sin", [x])),
    "cos": _f(lambda e, x, _: e.intrinsic("cos", [x])),
    "tan": _f(lambda e, x, _: e.libm("tan", x)),
    "asin": _f(lambda e, x, _: e.libm("asin", x)),
    "acos": _f(lambda e, x, _: e.libm("acos", x)),
    "atan": _f(lambda e, x, _: e.libm("atan", x)),
    "sinh": _f(lambda e, x, _: e.libm("sinh", x)),
    "cosh": _f(lambda e, x, _: e.libm("cosh", x)),
    "asinh": _f(lambda e, x, _: e.libm("asinh", x)),
    "acosh": _f(lambda e, x, _: e.libm("acosh", x)),
    "atanh": _f(lambda e, x, _: e.libm("atanh", x)),
    "softsign": _f(lambda e, x, _: e.fdiv(x, e.add(e.c(x, 1.0), e.intrinsic("fabs", [x])))),
    "softplus": _f(lambda e, x, _: e.softplus(x)),
    "mish": _f(lambda e, x, _: e.mul(x, e.tanh(e.softplus(x)))),
    "leaky_relu": _f(lambda e, x, at: e.select(e.lt(x, e.c(x, 0.0)), e.mul(x, e.c(x, at["alpha"])), x)),
    "elu": _f(lambda e, x, at: e.select(e.gt(x, e.c(x, 0.0)), x,
                                        e.mul(e.c(x, at["alpha"]), e.libm("expm1", x)))),
    "celu": _f(lambda e, x, at: e.add(e.select(e.lt(x, e.c(x, 0.0)), e.c(x, 0.0), x),
                                      e.min(e.c(x, 0.0), e.mul(e.c(x, at["alpha"]), e.libm(
                                          "expm1", e.fdiv(x, e.c(x, at["alpha"]))))))),
    "selu": _f(lambda e, x, at: e.mul(e.c(x, at["gamma"]), e.select(
        e.gt(x, e.c(x, 0.0)), x, e.mul(e.c(x, at["alpha"]), e.libm("expm1", x))))),
    "thresholded_relu": _f(lambda e, x, at: e.select(e.gt(x, e.c(x, at["alpha"])), x, e.c(x, 0.0))),
    "hard_sigmoid": _f(lambda e, x, at: e.min(e.max(e.add(e.mul(x, e.c(x, at["alpha"])),
                                                          e.c(x, at["beta"])), e.c(x, 0.0)), e.c(x, 1.0))),
    "hard_swish": _f(lambda e, x, _: e.mul(x, e.min(e.max(e.add(e.mul(x, e.c(x, 1 / 6)), e.c(x, 0.5)),
                                                          e.c(x, 0.0)), e.c(x, 1.0)))),
    "gelu": _gelu,
    "shrink": _f(lambda e, x, at: e.select(e.lt(x, e.c(x, -at["lambd"])), e.add(x, e.c(x, at["bias"])),
                                           e.select(e.gt(x, e.c(x, at["lambd"])),
                                                    e.sub(x, e.c(x, at["bias"])), e.c(x, 0.0)))),
    "add": lambda e, a, _: e.add(*a),
    "sub": lambda e, a, _: e.sub(*a),
    "mul": lambda e, a, _: e.mul(*a),
    "div": _div,
    "pow": _pow,
    "mod": _mod,
    "prelu": lambda e, a, _: e.select(e.lt(a[0], e.c(a[0], 0)), e.mul(a[0], a[1]), a[0]),
    "bitwise_and": lambda e, a, _: e.b.and_(*a),
    "bitwise_or": lambda e, a, _: e.b.or_(*a),
    "bitwise_xor": lambda e, a, _: e.b.xor(*a),
    "bitwise_not": _f(lambda e, x, _: e.b.not_(x)),
    "bit_shift": lambda e, a, at: _bit_shift(e, a[0], a[1], at["direction"]),
    "equal": _cmp("==", "=="),
    "less": _cmp("<", "<"),
    "less_equal": _cmp("<=", "<="),
    "greater": _cmp(">", ">"),
    "greater_equal": _cmp(">=", ">="),
    "and": _logic("and_"),
    "or": _logic("or_"),
    "xor": _logic("xor"),
    "not": _f(lambda e, x, _: e.from_bool(e.b.not_(e.to_bool(x)))),
    "isnan": _f(lambda e, x, _: e.from_bool(e.b.fcmp_unordered("uno", x, x))),
    "isinf": _isinf,
    "where": lambda e, a, _: e.select(e.to_bool(a[0]), a[1], a[2]),
    "max": _variadic(Emitter.max),
    "min": _variadic(Emitter.min),
    "sum": _variadic(Emitter.add),
    "mean": _mean,
    "clip": _clip,
    "cast": _cast,
    "quantize": _quantize,
    "dequantize": _dequantize,
}


def register_lowering(op: str, fn: Callable) -> None:
    """A custom elementwise op's LLVM lowering: fn(emitter, args, attrs) -> value."""
    LOWERINGS[op] = fn
