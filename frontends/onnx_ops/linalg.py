"""Converters for ONNX's MatMul, Gemm, Einsum, MatMulInteger and Det."""

from __future__ import annotations

from . import ConvertContext, converter, simple

simple("MatMul", "matmul", since=1)
simple("MatMulInteger", "matmul_integer", since=10)
simple("Det", "det", since=11)


@converter("Gemm", since=6)
def gemm(ctx: ConvertContext):
    """alpha * op(A) @ op(B) + beta * C; C optional (opset 11), dropped when beta is 0.

    Opset 6's ``broadcast`` attribute only allowed C to broadcast; slimc always lets it."""
    alpha = float(ctx.attr("alpha", 1.0, kind="float"))
    beta = float(ctx.attr("beta", 1.0, kind="float"))
    trans_a = ctx.attr("transA", 0, kind="int")
    trans_b = ctx.attr("transB", 0, kind="int")
    for name, v in (("transA", trans_a), ("transB", trans_b)):
        if v not in (0, 1):
            ctx.fail(f"attribute {name!r} must be 0 or 1, got {v}")
    a, b, c = ctx.input(0), ctx.input(1), ctx.input(2)
    if c is not None and beta == 0.0:
        c = None  # beta * C vanishes (even where C holds inf or NaN, as onnxruntime skips it)
    inputs = [a, b] + ([c] if c is not None else [])
    attrs = dict(alpha=alpha, beta=beta, trans_a=trans_a, trans_b=trans_b)
    defaults = dict(alpha=1.0, beta=1.0, trans_a=0, trans_b=0)
    return ctx.emit("gemm", inputs, **{k: v for k, v in attrs.items() if v != defaults[k]})


@converter("Einsum", since=12)
def einsum(ctx: ConvertContext):
    equation = ctx.attr("equation", None, kind="string")
    if equation is None:
        ctx.fail("attribute 'equation' is required")
    if any(v is None for v in ctx.inputs):
        ctx.fail("einsum inputs cannot be omitted")
    return ctx.emit("einsum", list(ctx.inputs), equation=equation)
