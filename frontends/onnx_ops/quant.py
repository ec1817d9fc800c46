"""Converters for ONNX's quantization ops: QuantizeLinear, DequantizeLinear,
DynamicQuantizeLinear, QLinearMatMul, QLinearConv and ConvInteger (MatMulInteger is a
one-liner in linalg.py).

ONNX gives per-axis scales and zero points as a 1-D tensor plus an ``axis`` attribute; slimc's
``quantize`` / ``dequantize`` broadcast them numpy-style instead, so a per-axis parameter is
reshaped here to keep its length on that axis (``[C, 1, 1]`` for axis 1 of an NCHW tensor).
Blocked parameters (``block_size``) are expanded to the tensor's shape when constant.

The QOperator ops (QLinearMatMul, QLinearConv) become the integer op, then ``dequantize`` of
the int32 accumulator by the multiplier ``(s_a * s_b) / s_y`` and ``quantize`` with a unit
scale and the output zero point. That is onnxruntime's requantization exactly --
``round(f32(acc) * M) + zp`` with ``M`` computed once in float32 -- where dequantizing by
``s_a * s_b`` and quantizing by ``s_y`` would round twice and miss it by a step now and then.
The multiplier is computed with emitted ``mul``/``div`` nodes, so constant scales fold.

What slimc cannot hold -- float8, int4, int2 and 16-bit quantized types, non-constant blocked
parameters -- is refused with an `UnsupportedError` naming the node, never computed wrongly.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from slimc.ir import Value, dtypes
from slimc.ir.builder import infer_op

from . import ConvertContext, converter, onnx_dtype
from .nn import _kernel, _spatial_rank, _window_attrs

_Q8 = (dtypes.u8, dtypes.i8)


# ----- helpers -------------------------------------------------------------------------------

def _require(ctx: ConvertContext, i: int, what: str) -> Value:
    v = ctx.input(i)
    if v is None:
        ctx.fail(f"{what} (input {i}) is required")
    return v


def _check_q8(ctx: ConvertContext, v: Optional[Value], what: str, allow_i32: bool = False) -> None:
    """Only 8-bit integers (and int32 where ONNX allows an accumulator) are slimc types."""
    if v is None:
        return
    ok = _Q8 + ((dtypes.i32,) if allow_i32 else ())
    if v.type.dtype not in ok:
        ctx.unsupported(f"{what} has type {v.type.dtype}; slimc quantizes to uint8 and int8 only "
                        f"(16-bit, 4-bit, 2-bit and float8 quantization are not supported)")


def _block_size(ctx: ConvertContext) -> int:
    block = int(ctx.attr("block_size", 0, kind="int"))
    if block < 0:
        ctx.fail(f"block_size must be >= 0, got {block}")
    return block


def _broadcastable(ctx: ConvertContext, p: Optional[Value], x: Value, axis: int, block: int,
                   what: str) -> Optional[Value]:
    """A scale or zero point of an ONNX Q/DQ node made to broadcast against `x`.

    Per tensor (one element) -> a scalar; per axis (1-D, the length of x's `axis`) -> that
    length on the axis and ones after it; blocked (x's rank, `axis` shortened to
    ceil(D / block)) -> repeated to x's shape, which needs a constant."""
    if p is None:
        return None
    rank = x.type.rank
    if block:
        return _expand_blocked(ctx, p, x, _check_axis(ctx, x, axis), block, what)
    if p.type.is_static and p.type.numel == 1 and p.type.rank <= 1:
        return p if p.type.rank == 0 else ctx.emit("reshape", [p, ctx.const(np.zeros(0, np.int64))])
    if p.type.rank != 1:
        ctx.fail(f"{what} {p.type} must be a scalar or a 1-D tensor along axis {axis} "
                 f"(or give block_size for blocked quantization)")
    axis = _check_axis(ctx, x, axis)
    size, want = p.type.shape[0], x.type.shape[axis]
    if isinstance(size, int) and isinstance(want, int) and size != want:
        ctx.fail(f"{what} {p.type} has {size} entries but axis {axis} of the input {x.type} "
                 f"has {want}")
    trailing = rank - 1 - axis
    if trailing == 0:
        return p
    shape = np.array([-1] + [1] * trailing, np.int64)
    return ctx.emit("reshape", [p, ctx.const(shape)])


def _expand_blocked(ctx: ConvertContext, p: Value, x: Value, axis: int, block: int,
                    what: str) -> Value:
    """Blocked quantization: each parameter covers `block` consecutive entries of `axis`, so
    a gather of index i // block along it gives a parameter of x's shape (folded when the
    parameter is constant)."""
    size = x.type.shape[axis]
    if not isinstance(size, int):
        ctx.unsupported(f"blocked quantization needs a static size on axis {axis}, got {x.type}")
    if p.type.rank != x.type.rank:
        ctx.fail(f"{what} {p.type} must have the input's rank for blocked quantization")
    want = -(-size // block)
    if isinstance(p.type.shape[axis], int) and p.type.shape[axis] != want:
        ctx.fail(f"{what} {p.type} does not block input {x.type} with block_size={block} on "
                 f"axis {axis} (expected {want} entries)")
    index = ctx.const(np.arange(size, dtype=np.int64) // block)
    return ctx.emit("gather", [p, index], axis=axis)


def _axis(ctx: ConvertContext, x: Value) -> int:
    """The `axis` attribute, normalized; checked only where a per-axis parameter uses it
    (a per-tensor one ignores it: ONNX's default 1 on a 1-D input is fine then)."""
    return int(ctx.attr("axis", 1, kind="int"))


def _check_axis(ctx: ConvertContext, x: Value, axis: int) -> int:
    rank = x.type.rank
    if not -rank <= axis < rank:
        ctx.fail(f"axis {axis} is out of range for the input {x.type}")
    return axis % rank


def _to(ctx: ConvertContext, v: Value, dt) -> Value:
    return v if v.type.dtype == dt else ctx.emit("cast", [v], to=dt)


def _unit_scale(ctx: ConvertContext) -> Value:
    return ctx.const(np.float32(1.0), name=f"{ctx.label}.unit_scale")


def _emit_kept(ctx: ConvertContext, op: str, inputs, **attrs) -> Value:
    """Emit a node that is not folded even when its inputs are constant.

    A DequantizeLinear of a constant int8 weight must stay a node: folding it here would turn
    the weight back into float32 and leave nothing for passes/fold_qdq.py to match (and make
    the model four times larger). Constant folding later folds the ones no pass consumed."""
    types = infer_op(op, inputs, attrs, ctx.label)
    base = ctx.node.output[0] if ctx.node.output and ctx.node.output[0] else op
    node = ctx.graph.make_node(op, list(inputs), attrs, types, [base] * len(types),
                               name=ctx.node.name)
    return node.outputs[0]


def _out_dtype(ctx: ConvertContext, zp: Optional[Value]):
    """QuantizeLinear's result type: the zero point's, else `output_dtype`, else uint8."""
    code = int(ctx.attr("output_dtype", 0, kind="int"))
    given = onnx_dtype(code, f" (output_dtype of {ctx.label!r})") if code else None
    if zp is not None:
        if given is not None and given != zp.type.dtype:
            ctx.fail(f"output_dtype {given} disagrees with the zero point's type {zp.type.dtype}")
        return zp.type.dtype
    return given or dtypes.u8


def _same_dtype(ctx: ConvertContext, zp: Optional[Value], x: Value, what: str) -> None:
    if zp is not None and zp.type.dtype != x.type.dtype:
        ctx.fail(f"{what} has type {zp.type.dtype} but its tensor is {x.type.dtype}")


# ----- QuantizeLinear / DequantizeLinear -----------------------------------------------------

@converter("QuantizeLinear", since=10)
def quantize_linear(ctx: ConvertContext):
    """saturate(round(x / scale) + zp), the division in the type ONNX's reference uses.

    f32 (or an exact upcast to it) is slimc's quantize itself. A float16 division (x and
    scale float16, or `precision`) and the float64 one of int32 inputs are emitted as a `div`
    in that type followed by a quantize with a unit scale, so the quotient rounds where
    ONNX's does."""
    x, scale = _require(ctx, 0, "x"), _require(ctx, 1, "y_scale")
    zp = ctx.input(2)
    _check_q8(ctx, zp, "the zero point")
    out_dt = _out_dtype(ctx, zp)
    if out_dt not in _Q8:
        ctx.unsupported(f"output type {out_dt} is not supported; slimc quantizes to uint8 and "
                        f"int8 only")
    if x.type.dtype not in (dtypes.f32, dtypes.f16, dtypes.bf16, dtypes.i32):
        ctx.fail(f"x must be float or int32, got {x.type}")
    if not scale.type.dtype.is_float:
        ctx.fail(f"y_scale must be a float tensor, got {scale.type}")
    axis, block = _axis(ctx, x), _block_size(ctx)
    s = _broadcastable(ctx, scale, x, axis, block, "scale")
    z = _broadcastable(ctx, zp, x, axis, block, "zero point")
    compute = _division_dtype(ctx, x, scale)
    attrs = {} if z is not None else {"dtype": out_dt.name}
    if compute == dtypes.f32:
        return ctx.emit("quantize", [_to(ctx, x, dtypes.f32), _to(ctx, s, dtypes.f32), z], **attrs)
    q = ctx.emit("div", [_to(ctx, x, compute), _to(ctx, s, compute)])
    if compute == dtypes.f64:
        q = ctx.emit("round", [q])  # an f64 quotient would round again on its way to f32
    return ctx.emit("quantize", [q, _unit_scale(ctx), z], **attrs)


def _division_dtype(ctx: ConvertContext, x: Value, scale: Value):
    """The type x / scale is computed in: `precision` when given, else numpy's promotion of
    the two (what ONNX's reference does; int32 / float32 is float64)."""
    code = int(ctx.attr("precision", 0, kind="int"))
    if code:
        dt = onnx_dtype(code, f" (precision of {ctx.label!r})")
        if not dt.is_float:
            ctx.fail(f"precision must be a float type, got {dt}")
        return dt
    if x.type.dtype == dtypes.bf16 or scale.type.dtype == dtypes.bf16:
        both = {x.type.dtype, scale.type.dtype}
        return dtypes.bf16 if both <= {dtypes.bf16} else dtypes.f32
    return dtypes.from_numpy(np.result_type(x.type.dtype.numpy, scale.type.dtype.numpy))


@converter("DequantizeLinear", since=10)
def dequantize_linear(ctx: ConvertContext):
    """f32(x - zp) * scale, then the scale's type (or `output_dtype`).

    slimc's dequantize takes float32 scales; a float16 scale is widened (exactly) and the
    result narrowed, the two roundings ONNX's reference makes too. A constant x (a weight)
    keeps its dequantize node for passes/fold_qdq.py."""
    x, scale = _require(ctx, 0, "x"), _require(ctx, 1, "x_scale")
    zp = ctx.input(2)
    _check_q8(ctx, x, "x", allow_i32=True)
    _same_dtype(ctx, zp, x, "the zero point")
    if not scale.type.dtype.is_float:
        ctx.fail(f"x_scale must be a float tensor, got {scale.type}")
    axis, block = _axis(ctx, x), _block_size(ctx)
    s = _to(ctx, _broadcastable(ctx, scale, x, axis, block, "scale"), dtypes.f32)
    z = _broadcastable(ctx, zp, x, axis, block, "zero point")
    inputs = [x, s] + ([z] if z is not None else [])
    if x.is_constant:
        y = _emit_kept(ctx, "dequantize", inputs)
    else:
        y = ctx.emit("dequantize", inputs)
    code = int(ctx.attr("output_dtype", 0, kind="int"))
    out_dt = onnx_dtype(code, f" (output_dtype of {ctx.label!r})") if code else scale.type.dtype
    return _to(ctx, y, out_dt)


@converter("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(ctx: ConvertContext):
    x = _require(ctx, 0, "x")
    if x.type.dtype != dtypes.f32:
        ctx.unsupported(f"x must be float32, got {x.type}")
    return ctx.emit("dynamic_quantize", [x], num_outputs=3)


# ----- integer convolution ---------------------------------------------------------------------

def _scalar_zp(ctx: ConvertContext, zp: Optional[Value], what: str) -> Optional[Value]:
    """A per-tensor zero point as a scalar (ONNX allows a 1-element 1-D tensor)."""
    if zp is None:
        return None
    if not zp.type.is_static or zp.type.numel != 1:
        ctx.unsupported(f"{what} {zp.type} must be per tensor (one element)")
    return zp if zp.type.rank == 0 else ctx.emit("reshape", [zp, ctx.const(np.zeros(0, np.int64))])


def _channel_zp(ctx: ConvertContext, zp: Optional[Value], m, what: str) -> Optional[Value]:
    """A weight zero point: a scalar, or a vector of one entry per output channel."""
    if zp is None:
        return None
    if zp.type.is_static and zp.type.numel == 1:
        return _scalar_zp(ctx, zp, what)
    if zp.type.rank != 1 or (isinstance(m, int) and zp.type.shape[0] not in (m, None)):
        ctx.fail(f"{what} {zp.type} must be a scalar or have one entry per output channel ({m})")
    return zp


def _conv_integer(ctx: ConvertContext, x: Value, w: Value, xzp, wzp) -> Value:
    nsp = _spatial_rank(ctx, x)
    _check_q8(ctx, x, "x")
    _check_q8(ctx, w, "w")
    _same_dtype(ctx, xzp, x, "x_zero_point")
    _same_dtype(ctx, wzp, w, "w_zero_point")
    if w.type.rank != nsp + 2:
        ctx.fail(f"weight {w.type} must have the input's rank {nsp + 2}")
    attrs = _window_attrs(ctx, x, _kernel(ctx, w, nsp))
    group = int(ctx.attr("group", 1, kind="int"))
    inputs = [x, w, _scalar_zp(ctx, xzp, "x_zero_point"),
              _channel_zp(ctx, wzp, w.type.shape[0], "w_zero_point")]
    if inputs[2] is None and inputs[3] is not None:
        inputs[2] = ctx.const(np.zeros((), x.type.dtype.numpy), name=f"{ctx.label}.x_zp")
    return ctx.emit("conv_integer", inputs, group=group, **attrs)


@converter("ConvInteger", since=10)
def conv_integer(ctx: ConvertContext):
    return _conv_integer(ctx, _require(ctx, 0, "x"), _require(ctx, 1, "w"), ctx.input(2),
                         ctx.input(3))


# ----- QLinearMatMul / QLinearConv -----------------------------------------------------------

def _multiplier(ctx: ConvertContext, s_a: Value, s_b: Value, s_y: Value) -> Value:
    """(s_a * s_b) / s_y in the scales' own type, as onnxruntime and ONNX's reference compute
    it, then widened to float32 for dequantize."""
    for what, s in (("a/x scale", s_a), ("b/w scale", s_b), ("y_scale", s_y)):
        if not s.type.dtype.is_float:
            ctx.fail(f"{what} must be a float tensor, got {s.type}")
    dt = s_a.type.dtype
    if s_b.type.dtype != dt or s_y.type.dtype != dt:
        ctx.fail(f"scales must share one type, got {s_a.type}, {s_b.type}, {s_y.type}")
    m = ctx.emit("div", [ctx.emit("mul", [s_a, s_b]), s_y])
    return _to(ctx, m, dtypes.f32)


def _requantize(ctx: ConvertContext, acc: Value, mult: Value, yzp: Optional[Value],
                default_dt) -> Value:
    """round(f32(acc) * mult) + y_zp, saturated: dequantize by the multiplier, then quantize
    with a unit scale."""
    _check_q8(ctx, yzp, "y_zero_point")
    y = ctx.emit("dequantize", [acc, mult])
    z = _scalar_zp(ctx, yzp, "y_zero_point")
    attrs = {} if z is not None else {"dtype": default_dt.name}
    return ctx.emit("quantize", [y, _unit_scale(ctx), z], **attrs)


def _per_tensor(ctx: ConvertContext, s: Value, what: str) -> Value:
    if not s.type.is_static or s.type.numel != 1:
        ctx.unsupported(f"{what} {s.type} must be per tensor (one element)")
    return s if s.type.rank == 0 else ctx.emit("reshape", [s, ctx.const(np.zeros(0, np.int64))])


@converter("QLinearMatMul", since=10)
def qlinear_matmul(ctx: ConvertContext):
    """matmul_integer, then requantization by (s_a * s_b) / s_y: a's scale and zero point
    per tensor or per row (an M-vector), b's per tensor or per column (an N-vector)."""
    a, sa, azp = _require(ctx, 0, "a"), _require(ctx, 1, "a_scale"), ctx.input(2)
    b, sb, bzp = _require(ctx, 3, "b"), _require(ctx, 4, "b_scale"), ctx.input(5)
    sy, yzp = _require(ctx, 6, "y_scale"), ctx.input(7)
    for what, v in (("a", a), ("b", b), ("a_zero_point", azp), ("b_zero_point", bzp)):
        _check_q8(ctx, v, what)
    _same_dtype(ctx, azp, a, "a_zero_point")
    _same_dtype(ctx, bzp, b, "b_zero_point")
    if a.type.rank < 2 or b.type.rank < 2:
        ctx.unsupported(f"QLinearMatMul of 1-D operands ({a.type}, {b.type}) is not supported")
    # per row of a: [M] -> [M, 1]; per column of b: [N] broadcasts as it is
    sa_b = _broadcastable(ctx, sa, a, a.type.rank - 2, 0, "a_scale")
    sb_b = _broadcastable(ctx, sb, b, b.type.rank - 1, 0, "b_scale")
    mult = _multiplier(ctx, sa_b, sb_b, _per_tensor(ctx, sy, "y_scale"))
    azp = azp if azp is None or azp.type.numel != 1 else _scalar_zp(ctx, azp, "a_zero_point")
    bzp = bzp if bzp is None or bzp.type.numel != 1 else _scalar_zp(ctx, bzp, "b_zero_point")
    acc = ctx.emit("matmul_integer", [a, b, azp, bzp])
    return _requantize(ctx, acc, mult, yzp, a.type.dtype)


@converter("QLinearConv", since=10)
def qlinear_conv(ctx: ConvertContext):
    """conv_integer, the int32 bias added to the accumulator (as onnxruntime does), then
    requantization by (s_x * s_w) / s_y, s_w per tensor or per output channel."""
    x, sx, xzp = _require(ctx, 0, "x"), _require(ctx, 1, "x_scale"), ctx.input(2)
    w, sw, wzp = _require(ctx, 3, "w"), _require(ctx, 4, "w_scale"), ctx.input(5)
    sy, yzp, bias = _require(ctx, 6, "y_scale"), ctx.input(7), ctx.input(8)
    acc = _conv_integer(ctx, x, w, xzp, wzp)
    channel = [-1] + [1] * (x.type.rank - 2)
    if bias is not None:
        if bias.type.dtype != dtypes.i32 or bias.type.rank != 1:
            ctx.fail(f"bias must be a 1-D int32 tensor, got {bias.type}")
        acc = ctx.emit("add", [acc, ctx.emit("reshape", [bias, ctx.const(np.array(channel))])])
    if sw.type.is_static and sw.type.numel == 1:
        sw = _per_tensor(ctx, sw, "w_scale")
    elif sw.type.rank == 1:
        sw = ctx.emit("reshape", [sw, ctx.const(np.array(channel))])
    else:
        ctx.fail(f"w_scale {sw.type} must be a scalar or one per output channel")
    mult = _multiplier(ctx, _per_tensor(ctx, sx, "x_scale"), sw, _per_tensor(ctx, sy, "y_scale"))
    return _requantize(ctx, acc, mult, yzp, x.type.dtype)
