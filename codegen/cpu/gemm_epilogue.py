"""The GEMM epilogue interface: what a callback sees for each finished accumulator vector.

Every GEMM-shaped generator (gemm.py's, the run-time-shape GEMM, the int8 and sparse kernels,
the convolutions) hands each vector of its result, with an `EpilogueContext`, to an
`Epilogue` that returns the vector to store: a bias, an activation, the fused consumers of
the kernel (`KernelBuilder.gemm_epilogue`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from llvmlite import ir

from .llvm_util import masked_load_vector, splat

F32 = ir.FloatType()


@dataclass
class EpilogueContext:
    """What an epilogue callback sees for one accumulator vector of C.

    row:    i64 IR value, absolute row index in C.
    col:    i64 IR value, absolute column index of lane 0.
    mask:   <vw x i1> constant of valid lanes, or None when all vw lanes are inside N.
    nlanes: number of valid lanes (vw unless this is the last, partial vector of a row).
    args:   the kernel's extra arguments by name (e.g. a bias pointer).
    index:  optional: lane 0's index in the kernel's output tensor, when the caller knows it
            (a convolution knows image, channel, row and column); else it is recovered from
            row and col by division.
    """

    builder: ir.IRBuilder
    module: ir.Module
    row: ir.Value
    col: ir.Value
    mask: ir.Value | None
    nlanes: int
    vw: int
    args: dict
    index: list | None = None

    @property
    def vec_type(self) -> ir.VectorType:
        return ir.VectorType(F32, self.vw)

    def load_vector(self, ptr: ir.Value, index: ir.Value, name: str = "epi.ld") -> ir.Value:
        """Load vw floats at ptr[index] (masked when this is a partial vector)."""
        b = self.builder
        p = b.gep(ptr, [index], source_etype=F32, name=name + ".ptr")
        if self.mask is None:
            return b.load(p, typ=self.vec_type, align=4, name=name)
        return masked_load_vector(b, p, self.vec_type, self.mask, name)

    def splat(self, scalar: ir.Value, name: str = "epi.splat") -> ir.Value:
        return splat(self.builder, scalar, self.vw, name)


Epilogue = Callable[[EpilogueContext, ir.Value], ir.Value]


def relu(ctx: EpilogueContext, v: ir.Value) -> ir.Value:
    """max(v, 0) that propagates NaN (select on `olt`, not maxnum)."""
    b = ctx.builder
    zero = ir.Constant(ctx.vec_type, None)
    neg = b.fcmp_ordered("<", v, zero, name="relu.neg")
    return b.select(neg, zero, v, name="relu")


def bias_epilogue(bias_arg: str = "bias", act: Epilogue | None = None) -> Epilogue:
    """Epilogue adding bias[col] (a per-column float* extra argument), then `act` (e.g. relu)."""

    def epi(ctx: EpilogueContext, v: ir.Value) -> ir.Value:
        bias = ctx.load_vector(ctx.args[bias_arg], ctx.col, name="bias")
        v = ctx.builder.fadd(v, bias, name="acc.bias")
        return act(ctx, v) if act is not None else v

    return epi
