"""Linear algebra: matmul and gemm (float32 through the blocked GEMM kernels of gemm.py, other
dtypes by loops), einsum (a plain loop nest over every label: output labels outside, summed
labels inside, one accumulator per output element) and det (LU decomposition with partial
pivoting on a stack copy of each matrix).

float32 cases, by where B comes from:

* B is a 2-D constant (the weights of a linear layer): packed for this target at compile time
  (`kb.substitute_constant`), and A's batch dimensions fold into its rows, so one GEMM call
  covers the whole batch. Work items are blocks of rows, so two threads split M.
* B is computed at run time, or batched (attention's Q @ K^T): each work item is a batch
  entry, or a block of its rows when there are few entries; a thread packs an entry's B into
  its own scratch space once for its run of items and multiplies.

gemm's alpha, beta and C are applied in the GEMM's store (its epilogue), not in a second pass.
"""

from __future__ import annotations

from typing import Sequence

from llvmlite import ir

from slimc.ir import dtypes
from slimc.ir.ops.linalg import parse_equation

from . import gemm as gemm_kernels
from . import gemm_pack
from .common import acc_dtype, load_uncached, numel, ordered_fast_math, unflatten, work_items
from .kernel import KernelBuilder, generator, llvm_name
from .llvm_util import F32, I64, PTR, const, elem_bytes, i64, llvm_type, typed_ptr
from .scalar_ops import Emitter, convert

DET_STACK_BYTES = 16384  # det copies a matrix this small to the stack, a larger one to the arena


def _norm_shapes(a_shape, b_shape, trans_a=False, trans_b=False):
    """Shapes as (batch_a, M, K), (batch_b, K, N), numpy's 1-D rules applied."""
    a = list(a_shape)
    b = list(b_shape)
    if trans_a:
        a[-2], a[-1] = a[-1], a[-2]
    if trans_b:
        b[-2], b[-1] = b[-1], b[-2]
    if len(a) == 1:
        a = [1] + a
    if len(b) == 1:
        b = b + [1]
    return a[:-2], a[-2], a[-1], b[:-2], b[-1]


def _out_batch(out_shape, a_shape, b_shape) -> list:
    """The output's batch dimensions (a 1-D operand contributes no matrix dimension)."""
    matrix_dims = (len(a_shape) > 1) + (len(b_shape) > 1)
    return list(out_shape[:len(out_shape) - matrix_dims])


def _batch_index(kb: KernelBuilder, flat, out_batch, in_batch):
    """Element offset (in batch units) of input batch entry for output batch entry `flat`."""
    idx = kb.delinear(flat, out_batch) if out_batch else []
    off = len(out_batch) - len(in_batch)
    in_idx = [0 if d == 1 else idx[off + i] for i, d in enumerate(in_batch)]
    return kb.linear(in_idx, in_batch) if in_batch else 0


def _gemm_epilogue(node_op, attrs, c_shape, M, N):
    """alpha * acc + beta * C, C broadcast to [M, N] (gemm); the identity for matmul."""
    alpha = float(attrs.get("alpha", 1.0))
    beta = float(attrs.get("beta", 1.0))
    if node_op != "gemm" or (c_shape is None and alpha == 1.0):
        return None

    def epi(ctx, acc):
        b = ctx.builder
        out = acc if alpha == 1.0 else b.fmul(acc, ctx.splat(const(F32, alpha)), name="alpha_acc")
        if c_shape is None or beta == 0.0:
            return out
        c = b.bitcast(ctx.args["c"], ir.PointerType(F32))
        dims = list(c_shape)
        while len(dims) < 2:
            dims = [1] + dims
        rows, cols = dims
        col = ctx.col if "col0" not in ctx.args else b.add(ctx.col, ctx.args["col0"], name="col")
        if cols == 1:
            idx = ctx.row if rows != 1 else i64(0)
            cv = ctx.splat(b.load(b.gep(c, [idx]), name="c"))
        else:
            idx = col if rows == 1 else b.add(b.mul(ctx.row, i64(N)), col)
            cv = ctx.load_vector(c, idx, name="c")
        if beta != 1.0:
            cv = b.fmul(cv, ctx.splat(const(F32, beta)), name="beta_c")
        return b.fadd(out, cv, name="gemm_out")

    return epi


def _transpose_copy(kb: KernelBuilder, src, rows, cols, dst_i8, name):
    """dst[c, r] = src[r, c] into scratch (gemm's trans_a: the GEMM reads A row-major)."""
    b = kb.b
    dst = b.bitcast(dst_i8, ir.PointerType(F32), name=name)
    with kb.loop(0, rows, name=f"{name}.r") as r:
        with kb.loop(0, cols, name=f"{name}.c") as c:
            x = b.load(b.gep(src, [b.add(b.mul(r, i64(cols)), c)]))
            b.store(x, b.gep(dst, [b.add(b.mul(c, i64(rows)), r)]))
    return dst


@generator("matmul", "gemm", epilogue=True, vector_code=True)
def matmul(kb: KernelBuilder, node) -> None:
    a, bv = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    attrs = kb.attrs(node) if node.op == "gemm" else {}
    trans_a, trans_b = bool(attrs.get("trans_a", 0)), bool(attrs.get("trans_b", 0))
    a_shape, b_shape = kb.shape(a), kb.shape(bv)
    batch_a, M, K, batch_b, N = _norm_shapes(a_shape, b_shape, trans_a, trans_b)
    # The GEMM kernels need N, K >= 1; with K == 0 every dot product is an empty sum (0), with
    # N == 0 the result is empty.
    if K == 0 or N == 0 or any(v is not None and v.type.dtype != dtypes.f32 for v in (a, bv, c, out)):
        kb.pipeline = "O3"  # scalar loops
        return loop_matmul(kb, node)
    out_batch = _out_batch(kb.shape(out), a_shape, b_shape)
    b_ = kb.b
    name = llvm_name(out.name)
    c_shape = kb.shape(c) if c is not None else None
    inner = _gemm_epilogue(node.op, attrs, c_shape, M, N)
    gemm_extra = [("c", PTR)] if inner is not None and c is not None else []
    n_batch = 1
    for d in out_batch:
        n_batch *= d
    kb.cost = 2 * n_batch * M * N * K
    a_flat_ok = not batch_a or list(batch_a) == out_batch
    prepacked = bv.is_constant and bv.data is not None and not batch_b and a_flat_ok and not trans_a
    nr = gemm_pack.gemm_config(kb.target).nr
    rows = n_batch * M
    # Too few rows to split over threads (batch-1 layers: GEMV and skinny GEMMs): split the
    # columns instead, in blocks of whole panels (each one a run of the packed weights).
    by_cols = prepacked and rows < SPLIT_ROWS_BELOW and _column_block(N, nr) < N
    epilogue, fused_extra, fused_vals = kb.gemm_epilogue(out, N, inner, row_offset=not prepacked,
                                                         col_offset=by_cols)
    if by_cols and not any(arg == "col0" for arg, _ in fused_extra):
        fused_extra = fused_extra + [("col0", I64)]  # gemm's C is indexed by column too
    A = kb.ptr(a)
    C = kb.ptr(kb.outputs[0])  # the matmul's result, or the end of its fused epilogue
    extra = gemm_extra + fused_extra
    extra_vals = ([b_.bitcast(kb.ptr(c), PTR)] if gemm_extra else []) + fused_vals
    if trans_a:
        A = _transpose_copy(kb, A, K, M * max(1, n_batch), kb.scratch(4 * M * K, name + ".at"), name + ".at")
    if by_cols:
        return _by_column_blocks(kb, bv, b_shape, trans_b, A, C, K, N, rows,
                                 _column_block(N, nr), epilogue, extra, extra_vals, name)
    g = gemm_kernels.emit_gemm(kb.module, kb.fn.name + "." + name, N, K, kb.target, epilogue=epilogue,
                               extra_args=extra, runtime_b=not prepacked, trans_b=trans_b)
    gemm_fn = kb.module.globals[g.gemm_fn]
    if prepacked:
        Bp = kb.substitute_constant(bv, g.pack(bv.data.reshape(b_shape if len(b_shape) == 2 else
                                                               (K, 1))), name + ".packed")
        mr = g.cfg.mr
        kb.parallel_extent = -(-rows // mr)
        m0 = b_.mul(kb.begin, i64(mr), name="m0")
        m1_full = b_.mul(kb.end, i64(mr))
        m1 = b_.select(b_.icmp_signed("<", m1_full, i64(rows)), m1_full, i64(rows), name="m1")
        b_.call(gemm_fn, [A, i64(K), b_.bitcast(Bp, ir.PointerType(F32)), C, i64(N), m0, m1]
                + extra_vals)
        b_.ret_void()
        return
    # runtime (or batched, or broadcast) B: work items are (batch entry, block of rows)
    kb.pipeline = "O3"  # B's packing is a scalar loop
    if n_batch == 0 or M == 0:  # an empty result: nothing to compute
        b_.ret_void()
        return
    pack_fn = kb.module.globals[g.pack_fn]
    chunk_rows = _row_chunk(n_batch, M, g.cfg.mr)
    chunks = -(-M // chunk_rows)
    items = n_batch * chunks
    # one packed B per call (a thread's run of work items), in the slot of its first item:
    # it is repacked only when the run moves on to the next batch entry
    ws = kb.scratch(4 * g.packed_size * items, name + ".bpack")
    ws = b_.bitcast(ws, ir.PointerType(F32), name=name + ".ws")
    w_ptr = kb.call_slot(ws, g.packed_size, "ws_b")
    packed_entry = b_.alloca(I64, name="packed_entry")
    b_.store(i64(-1), packed_entry)
    B = kb.ptr(bv)
    kb.parallel_extent = items
    ldb = K if trans_b else N
    with kb.loop(kb.begin, kb.end, name="item") as item:
        bi, m0, m1 = item_rows(b_, item, chunks, chunk_rows, M)
        a_off = _batch_index(kb, bi, out_batch, batch_a) if not trans_a else 0
        b_off = _batch_index(kb, bi, out_batch, batch_b)
        a_ptr = b_.gep(A, [kb._ir(kb.imul(a_off, M * K))], name="a_b")
        b_ptr = b_.gep(B, [kb._ir(kb.imul(b_off, K * N))], name="b_b")
        c_ptr = b_.gep(C, [b_.mul(bi, i64(M * N))], name="c_b")
        with b_.if_then(b_.icmp_signed("!=", b_.load(packed_entry), bi)):
            b_.call(pack_fn, [b_ptr, i64(ldb), w_ptr])
            b_.store(bi, packed_entry)
        row0 = [b_.mul(bi, i64(M), name="row0")] if fused_extra else []
        b_.call(gemm_fn, [a_ptr, i64(K), w_ptr, c_ptr, i64(N), m0, m1] + extra_vals + row0)
    b_.ret_void()


# A batched GEMM with few batch entries (attention at batch 1: one per head) splits each
# entry's rows into blocks, for at least this many work items: ViT-Ti's 3 heads as 3 items
# left one of two threads idle a third of the time.
BATCHED_ITEMS = 12
BATCHED_MIN_ROWS = 24  # rows of a block, at least (4 register tiles)


def item_rows(b, item, chunks: int, chunk_rows: int, M: int):
    """Work item -> (batch entry, first row, end row) for items of `chunks` row blocks each."""
    bi = b.udiv(item, i64(chunks), name="batch") if chunks > 1 else item
    m0 = b.mul(b.urem(item, i64(chunks)), i64(chunk_rows), name="m0") if chunks > 1 else i64(0)
    m1_full = b.add(m0, i64(chunk_rows))
    return bi, m0, b.select(b.icmp_signed("<", m1_full, i64(M)), m1_full, i64(M), name="m1")


def _row_chunk(n_batch: int, M: int, mr: int) -> int:
    """Rows per work item of a runtime-B GEMM: all M, or blocks (whole register tiles) that
    make about BATCHED_ITEMS items."""
    if n_batch >= BATCHED_ITEMS:
        return M
    chunks = min(-(-BATCHED_ITEMS // n_batch), max(1, M // BATCHED_MIN_ROWS))
    rows = -(-M // chunks)
    return min(M, -(-rows // mr) * mr)


# Fewer rows than this (in all): a prepacked GEMM splits its columns over threads, not rows.
SPLIT_ROWS_BELOW = 12
# Column blocks of a split GEMM: about this many, so two threads share them evenly.
COLUMN_BLOCKS = 8


def _column_block(N: int, nr: int) -> int:
    """Columns per block (whole NR panels) for COLUMN_BLOCKS blocks; N when N is too narrow."""
    panels = -(-N // nr)
    if panels < 2:
        return N
    return -(-panels // min(COLUMN_BLOCKS, panels)) * nr


def _by_column_blocks(kb, bv, b_shape, trans_b, A, C, K, N, rows, col_block, epilogue, extra,
                      extra_vals, name) -> None:
    """Work item j multiplies all rows by the packed panels of columns [j*cb, (j+1)*cb): a
    GEMM emitted for cb columns (and one for the narrower last block), its B and C pointers
    moved to the block, `col0` telling the epilogue where its columns are."""
    b_ = kb.b
    packed = gemm_pack.pack_b(bv.data.reshape(b_shape if len(b_shape) == 2 else (K, 1)),
                                 kb.target, trans_b=trans_b)
    Bp = b_.bitcast(kb.substitute_constant(bv, packed, name + ".packed"), ir.PointerType(F32))
    blocks = -(-N // col_block)
    last = N - (blocks - 1) * col_block
    fns = {}
    for width in sorted({col_block, last}):
        gk = gemm_kernels.emit_gemm(kb.module, f"{kb.fn.name}.{name}.cols{width}", width, K,
                                    kb.target, epilogue=epilogue, extra_args=extra)
        fns[width] = kb.module.globals[gk.gemm_fn]
    kb.parallel_extent = blocks
    with kb.loop(kb.begin, kb.end, name="colblock") as j:
        col0 = b_.mul(j, i64(col_block), name="col0")
        b_ptr = b_.gep(Bp, [b_.mul(col0, i64(K))], name="b.blk")  # panels are K x NR runs
        c_ptr = b_.gep(C, [col0], name="c.blk")
        args = [A, i64(K), b_ptr, c_ptr, i64(N), i64(0), i64(rows)] + extra_vals + [col0]
        if last == col_block:
            b_.call(fns[col_block], args)
        else:
            is_last = b_.icmp_unsigned("==", j, i64(blocks - 1), name="is.last")
            with b_.if_else(is_last) as (tail, full):
                with tail:
                    b_.call(fns[last], args)
                with full:
                    b_.call(fns[col_block], args)
    b_.ret_void()


def loop_matmul(kb: KernelBuilder, node) -> None:
    """Any dtype: out[.., i, j] = sum_k A[.., i, k] * B[.., k, j] (accumulating in f32 for
    halves); gemm's alpha/beta/C applied at the end. Correct first; f32 uses the GEMM."""
    a, bv = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    attrs = kb.attrs(node) if node.op == "gemm" else {}
    trans_a, trans_b = bool(attrs.get("trans_a", 0)), bool(attrs.get("trans_b", 0))
    a_shape, b_shape = kb.shape(a), kb.shape(bv)
    batch_a, M, K, batch_b, N = _norm_shapes(a_shape, b_shape, trans_a, trans_b)
    out_batch = _out_batch(kb.shape(out), a_shape, b_shape)
    n_batch = 1
    for d in out_batch:
        n_batch *= d
    b = kb.b
    dt = out.type.dtype
    acc_dt = dtypes.f32 if dt == dtypes.f16 else dt
    acc_t = llvm_type(acc_dt)
    e = Emitter(b, [acc_dt, acc_dt], acc_dt, kb.fast_math, llvm_name(out.name))
    kb.parallel_extent = n_batch * M
    kb.cost = 2 * n_batch * M * N * K
    A, B = kb.ptr(a), kb.ptr(bv)
    acc = b.alloca(acc_t, name=llvm_name(out.name) + ".acc")
    with kb.loop(kb.begin, kb.end, name="row") as row:
        bi = b.udiv(row, i64(M), name="bi")
        i = b.urem(row, i64(M), name="i")
        a_base = kb.imul(_batch_index(kb, bi, out_batch, batch_a), M * K)
        b_base = kb.imul(_batch_index(kb, bi, out_batch, batch_b), K * N)
        with kb.loop(0, N, name="j") as j:
            b.store(const(acc_t, 0), acc)
            with kb.loop(0, K, name="k") as k:
                ai = b.add(b.mul(k, i64(M)), i) if trans_a else b.add(b.mul(i, i64(K)), k)
                bj = b.add(b.mul(j, i64(K)), k) if trans_b else b.add(b.mul(k, i64(N)), j)
                x = b.load(b.gep(A, [kb._ir(kb.iadd(a_base, ai))]), name="a")
                y = b.load(b.gep(B, [kb._ir(kb.iadd(b_base, bj))]), name="b")
                x, y = convert(e, x, a.type.dtype, acc_dt), convert(e, y, bv.type.dtype, acc_dt)
                b.store(e.add(b.load(acc), e.mul(x, y)), acc)
            r = b.load(acc, name="dot")
            if node.op == "gemm":
                if float(attrs["alpha"]) != 1.0:
                    r = e.mul(r, convert(e, const(F32, attrs["alpha"]), dtypes.f32, acc_dt)
                              if acc_dt.is_float else const(acc_t, attrs["alpha"]))
                if c is not None and float(attrs["beta"]) != 0.0:
                    cs = list(kb.shape(c))
                    while len(cs) < 2:
                        cs = [1] + cs
                    cidx = kb.linear([0 if cs[0] == 1 else i, 0 if cs[1] == 1 else j], cs)
                    cv = convert(e, b.load(b.gep(kb.ptr(c), [kb._ir(cidx)])), c.type.dtype, acc_dt)
                    if float(attrs["beta"]) != 1.0:
                        cv = e.mul(cv, const(acc_t, attrs["beta"]))
                    r = e.add(r, cv)
            flat = b.add(b.mul(row, i64(N)), j)
            kb.store_result(out, kb.delinear(flat, kb.shape(out)), convert(e, r, acc_dt, dt))
    b.ret_void()


# ----- einsum ------------------------------------------------------------------------------------

def _einsum_plan(equation: str, shapes: Sequence[tuple]):
    """-> (per operand: its label per axis; output labels; label -> size).

    The ellipsis becomes labels ``("...", r)`` counted right-aligned over the broadcast
    ellipsis rank; an implicit output is the ellipsis then the labels used once, sorted.
    """
    ins, out = parse_equation(equation, len(shapes))
    ell_rank = 0
    for term, shape in zip(ins, shapes):
        if "..." in term:
            ell_rank = max(ell_rank, len(shape) - (len(term) - 1))
    ell = [("...", r) for r in range(ell_rank)]
    operand_labels = []
    for term, shape in zip(ins, shapes):
        labels = []
        for l in term:
            if l == "...":
                n_ell = len(shape) - (len(term) - 1)
                labels.extend(ell[ell_rank - n_ell:])
            else:
                labels.append(l)
        operand_labels.append(labels)
    if out is None:
        counts: dict = {}
        for term in ins:
            for l in term:
                if l != "...":
                    counts[l] = counts.get(l, 0) + 1
        out_labels = list(ell) + sorted(l for l, c in counts.items() if c == 1)
    else:
        out_labels = []
        for l in out:
            out_labels.extend(ell if l == "..." else [l])
    sizes: dict = {}
    for labels, shape in zip(operand_labels, shapes):
        for l, d in zip(labels, shape):
            sizes[l] = d if sizes.get(l, 1) == 1 else sizes[l]
    return operand_labels, out_labels, sizes


@generator("einsum")
def einsum(kb: KernelBuilder, node) -> None:
    """Work items over the output's first axis; loops over its other axes, then over every
    summed label (first appearance order) around one multiply-accumulate. Halves compute in
    f32, bools as and/or."""
    b = kb.b
    xs, out = list(node.inputs), node.outputs[0]
    name = llvm_name(out.name)
    shapes = [kb.shape(x) for x in xs]
    operand_labels, out_labels, sizes = _einsum_plan(kb.attrs(node)["equation"], shapes)
    summed = []
    for labels in operand_labels:
        for l in labels:
            if l not in out_labels and l not in summed:
                summed.append(l)
    out_shape = kb.shape(out)
    in_dt, out_dt = xs[0].type.dtype, out.type.dtype
    acc_dt = acc_dtype(in_dt)
    acc_t = llvm_type(acc_dt)
    e = Emitter(b, [acc_dt], acc_dt, kb.fast_math, name)
    is_bool = in_dt == dtypes.bool
    kb.parallel_extent = out_shape[0] if out_shape else 1
    kb.cost = len(xs) * numel([sizes[l] for l in out_labels + summed])
    if numel(out_shape) == 0:
        b.ret_void()
        return
    acc = b.alloca(acc_t, name=name + ".acc")

    def label_name(l) -> str:
        return l if isinstance(l, str) else f"e{l[1]}"

    def nest(labels, env, body, first_bounds=None):
        if not labels:
            body(env)
            return
        l = labels[0]
        lo, hi = first_bounds if first_bounds is not None else (0, sizes[l])
        if hi == 1 and first_bounds is None:
            nest(labels[1:], {**env, l: 0}, body)
            return
        with kb.loop(lo, hi, name=label_name(l)) as iv:
            nest(labels[1:], {**env, l: iv}, body)

    def product(env) -> ir.Value:
        p = None
        for x, labels, shape in zip(xs, operand_labels, shapes):
            index = [0 if d == 1 else env[l] for l, d in zip(labels, shape)]
            v = convert(e, load_uncached(kb, x, index), in_dt, acc_dt)
            if p is None:
                p = v
            elif is_bool:
                p = b.and_(p, v, name=name + ".and")
            else:
                p = e.mul(p, v)
                p.name = name + ".prod"
        return p

    def element(env):
        b.store(const(acc_t, 0), acc)

        def accumulate(env2):
            a = b.load(acc, name=name + ".acc")
            p = product(env2)
            s = b.or_(a, p, name=name + ".or") if is_bool else e.add(a, p)
            if not is_bool:
                s.name = name + ".sum"
            b.store(s, acc)

        nest(summed, env, accumulate)
        result = convert(e, b.load(acc, name=name + ".total"), acc_dt, out_dt)
        kb.store_result(out, [env[l] for l in out_labels], result)

    if out_labels and kb.parallel_extent != 1:
        nest(out_labels, {}, element, first_bounds=(kb.begin, kb.end))
    else:
        with work_items(kb, "w"):
            nest(out_labels, {}, element)
    b.ret_void()


# ----- det ---------------------------------------------------------------------------------------

@generator("det")
def det(kb: KernelBuilder, node) -> None:
    """Per matrix: copy to the stack (or to arena scratch when large), LU with partial
    pivoting (the largest |a[i][k]| on or below the diagonal), det = sign * product of the
    pivots. A zero pivot gives 0 and skips that step's elimination (LAPACK's getrf goes on
    the same way)."""
    b = kb.b
    x, out = node.inputs[0], node.outputs[0]
    shape = kb.shape(x)
    n = shape[-1]
    batch = shape[:-2]
    name = llvm_name(out.name)
    in_dt, out_dt = x.type.dtype, out.type.dtype
    cdt = acc_dtype(in_dt)
    ct = llvm_type(cdt)
    e = Emitter(b, [cdt], cdt, ordered_fast_math(kb), name)
    kb.parallel_extent = numel(batch)
    kb.cost = numel(batch) * (2 * n ** 3 // 3 + n * n)
    if numel(batch) == 0:
        b.ret_void()
        return
    on_stack = n * n * elem_bytes(ct) <= DET_STACK_BYTES
    if on_stack:
        lu = b.alloca(ct, size=i64(max(1, n * n)), name=name + ".lu")
    else:  # a region per matrix, so that threads never share one
        lu = typed_ptr(b, kb.scratch(n * n * elem_bytes(ct) * numel(batch), name + ".lu"), ct,
                       name + ".lu")
    d = b.alloca(ct, name=name + ".det")
    piv_row = b.alloca(I64, name=name + ".pivrow")
    piv_abs = b.alloca(ct, name=name + ".pivabs")
    fn = b.function

    def fabs(v):
        return e.intrinsic("fabs", [v])

    with work_items(kb, "m") as m:
        bidx = unflatten(kb, m, batch, name + ".b") if batch else []
        a = lu if on_stack else b.gep(lu, [kb._ir(kb.imul(m, n * n))], inbounds=True,
                                      name=name + ".lu.m")

        def cell(i, j, nm):
            off = b.add(b.mul(kb._ir(i), i64(n)), kb._ir(j), name=nm + ".off")
            return b.gep(a, [off], inbounds=True, name=nm + ".p")

        with kb.loop(0, n, name="ci") as ci:
            with kb.loop(0, n, name="cj") as cj:
                v = convert(e, load_uncached(kb, x, bidx + [ci, cj]), in_dt, cdt)
                b.store(v, cell(ci, cj, "a"))
        b.store(const(ct, 1.0), d)
        with kb.loop(0, n, name="k") as k:
            # pivot: the row with the largest magnitude in column k from row k down
            b.store(k, piv_row)
            b.store(fabs(b.load(cell(k, k, "akk"), name="akk")), piv_abs)
            k1 = b.add(k, i64(1), name="k1")
            with kb.loop(k1, n, name="pi") as pi:
                mag = fabs(b.load(cell(pi, k, "aik"), name="aik"))
                bigger = b.fcmp_ordered(">", mag, b.load(piv_abs, name="pivabs"), name="bigger")
                b.store(b.select(bigger, mag, b.load(piv_abs)), piv_abs)
                b.store(b.select(bigger, pi, b.load(piv_row)), piv_row)
            p = b.load(piv_row, name="pivrow")
            swap = fn.append_basic_block("det.swap")
            after = fn.append_basic_block("det.swapped")
            b.cbranch(b.icmp_signed("!=", p, k, name="needswap"), swap, after)
            b.position_at_end(swap)
            with kb.loop(0, n, name="sj") as sj:
                pk, pp = cell(k, sj, "rk"), cell(p, sj, "rp")
                tk, tp = b.load(pk, name="rk"), b.load(pp, name="rp")
                b.store(tp, pk)
                b.store(tk, pp)
            b.store(b.fneg(b.load(d), name=name + ".negdet"), d)
            b.branch(after)
            b.position_at_end(after)
            piv = b.load(cell(k, k, "piv"), name="piv")
            prod = e.mul(b.load(d), piv)
            prod.name = name + ".detacc"
            b.store(prod, d)
            elim = fn.append_basic_block("det.eliminate")
            done = fn.append_basic_block("det.next")
            b.cbranch(b.fcmp_unordered("!=", piv, const(ct, 0.0), name="pivnz"), elim, done)
            b.position_at_end(elim)
            with kb.loop(k1, n, name="ei") as ei:
                f = b.fdiv(b.load(cell(ei, k, "aik"), name="aik"), piv, name="factor")
                with kb.loop(k1, n, name="ej") as ej:
                    aij = cell(ei, ej, "aij")
                    upd = e.sub(b.load(aij, name="aij"), e.mul(f, b.load(cell(k, ej, "akj"), name="akj")))
                    upd.name = "aij.new"
                    b.store(upd, aij)
            b.branch(done)
            b.position_at_end(done)
        result = convert(e, b.load(d, name=name + ".value"), cdt, out_dt)
        kb.store_result(out, bidx, result)
    b.ret_void()
