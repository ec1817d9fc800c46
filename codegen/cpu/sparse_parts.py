"""The pieces both sparse_matmul generators share (gen_sparse.py: columns of b in vectors,
or one at a time; gen_sparse_row.py: one token): work split in parts, loops that carry
the FMA, the gather, and the stores with the fused epilogue.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir

from slimc.ir.graph import constant_data

from .gemm_epilogue import EpilogueContext
from .kernel import llvm_name
from .llvm_util import I32, OPAQUE_PTR, i64, masked_store_vector, splat

ITEMS = 8  # parts of the row blocks per batch entry


def narrow_columns(K: int) -> bool:
    """Whether a weight of K columns has its column indices read as 16 bits (uint16)."""
    return K <= 1 << 16


def work_parts(offsets: np.ndarray, block: int, parts: int, group: int = 1) -> list[int]:
    """Row-block boundaries of `parts` parts of about equal work (stored values + stores),
    cut at multiples of `group` row blocks; the last part runs to a whole group (the rows
    past R are zeros in `offsets`' padding, see `padded_offsets`)."""
    nrb = len(offsets) - 1
    work = np.diff(offsets.astype(np.int64)) * block + block
    cum = np.concatenate([[0], np.cumsum(work)])
    cuts = np.searchsorted(cum, np.linspace(0, cum[-1], parts + 1)[1:-1], side="left")
    cuts = [int(c) // group * group for c in cuts]
    end = -(-nrb // group) * group
    return [0] + sorted(set(c for c in cuts if 0 < c < nrb)) + [end]


class SparseKernel:
    """The operands of one sparse kernel and how it reads its stored blocks and stores its
    results (the generators' loop classes build on it)."""

    def __init__(self, kb, node, R, block, K, C, transposed, epilogue, args, offsets):
        self.kb, self.b = kb, kb.b
        self.R, self.block, self.K, self.C, self.transposed = R, block, K, C, transposed
        self.B, self.V, self.IDX = (kb.ptr(v) for v in node.inputs[:3])
        self.OFF = offsets
        self.dst = kb.ptr(kb.outputs[0])
        self.epilogue, self.args = epilogue, args
        self.vw = kb.vector_width
        self.group_rows = 1  # rows of A a transposed store collects (set by the caller)
        self.chunks = 1  # chunks of K: OFF is then [row blocks, chunks + 1] (gen_sparse.py)
        self.index_type = I32  # of IDX's elements (narrow_indices: 16 bits)

    def narrow_indices(self, indices) -> None:
        """Column indices below 2^16 given to the kernel as uint16: 6 bytes a stored value
        instead of 8, a quarter less to read where the weights come from L3 or memory (a
        model whose weights do not fit in L2 runs each layer that way)."""
        data = constant_data(indices)
        if data is None or not narrow_columns(self.K):
            return
        self.IDX = self.kb.substitute_constant(indices, data.astype(np.uint16),
                                               llvm_name(indices.name) + ".u16")
        self.index_type = ir.IntType(16)

    def extend_index(self, kk, to):
        """An index (or vector of them) loaded from IDX, widened to `to`."""
        if self.index_type.width < 32:
            return self.b.zext(kk, to)
        return self.b.sext(kk, to) if to != kk.type else kk

    def blocks_of(self, rb, chunk=None):
        """The stored blocks of row block rb (in one chunk of K, when chunked)."""
        b = self.b
        if self.chunks > 1:
            at = b.add(b.mul(rb, i64(self.chunks + 1)), chunk if chunk is not None else i64(0))
            end = b.add(at, i64(1)) if chunk is not None else \
                b.add(at, i64(self.chunks))
        else:
            at, end = rb, b.add(rb, i64(1))
        j0 = b.sext(b.load(b.gep(self.OFF, [at], inbounds=True), name="j0"), ir.IntType(64))
        j1 = b.sext(b.load(b.gep(self.OFF, [end], inbounds=True), name="j1"), ir.IntType(64))
        return j0, j1

    def column_of(self, j):
        b = self.b
        kk = b.load(b.gep(self.IDX, [j], inbounds=True), name="k")
        return self.extend_index(kk, ir.IntType(64))

    def store(self, n, row, col, v, mask, nlanes):
        """Epilogue and store of one result at output [n, row, col] (a vector along the
        output's last axis, or a scalar). Transposed, row counts tokens and col rows of A."""
        b = self.b
        lanes = v.type.count if isinstance(v.type, ir.VectorType) else 1
        grow = b.add(b.mul(n, i64(self.C if self.transposed else self.R)), row, name="grow")
        if self.epilogue is not None:
            ctx = EpilogueContext(b, self.kb.module, grow, col, mask, nlanes, lanes, self.args)
            v = self.epilogue(ctx, v)
        width = self.R if self.transposed else self.C
        p = b.gep(self.dst, [b.add(b.mul(grow, i64(width)), col)], inbounds=True)
        if mask is not None:
            masked_store_vector(b, v, p, mask)
        else:
            b.store(v, b.bitcast(p, ir.PointerType(v.type)), align=4)

    def store_run(self, n, row, col, v, whole: bool = False) -> None:
        """One vector of consecutive output columns from `col` along R (a token's run of a
        transposed product, or a one-token result): stored whole where it ends by R, its
        lanes past R masked off where it crosses R, not at all where it starts past it.
        `whole`: the caller knows every run ends by R."""
        b, lanes, R = self.b, v.type.count, self.R
        if whole:
            self.store(n, row, col, v, None, lanes)
            return
        ends = b.icmp_signed("<=", b.add(col, i64(lanes)), i64(R), name="whole")
        with b.if_else(ends) as (then, otherwise):
            with then:
                self.store(n, row, col, v, None, lanes)
            with otherwise:
                with b.if_then(b.icmp_signed("<", col, i64(R))):
                    ids = ir.Constant(ir.VectorType(ir.IntType(64), lanes), list(range(lanes)))
                    left = b.sub(i64(R), col)
                    mask = b.icmp_signed("<", ids, splat(b, left, lanes), name="run.mask")
                    self.store(n, row, col, v, mask, R % lanes)

    def store_element(self, n, row, c, v):
        """One scalar result: A's row `row`, b's column `c`."""
        if self.transposed:
            self.store(n, c, row, v, None, 1)
        else:
            self.store(n, row, c, v, None, 1)


def fma(b, x, y, acc):
    """x * y + acc, contracted to one FMA instruction by the kernel's fast-math flags."""
    return b.fadd(b.fmul(x, y, flags=("contract",)), acc, flags=("contract",))


def gather_intrinsic(module: ir.Module, vt: ir.VectorType) -> ir.Function:
    """llvm.masked.gather over a vector of opaque pointers (the pre-LLVM-22 signature with
    its alignment operand, which the IR parser upgrades, as for masked loads)."""
    name = f"llvm.masked.gather.v{vt.count}f32.v{vt.count}p0"
    fn = module.globals.get(name)
    if fn is None:
        pt = ir.VectorType(OPAQUE_PTR, vt.count)
        fnty = ir.FunctionType(vt, [pt, I32, ir.VectorType(ir.IntType(1), vt.count), vt])
        fn = ir.Function(module, fnty, name=name)
    return fn
