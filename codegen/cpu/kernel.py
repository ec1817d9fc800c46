"""One kernel: a group of IR nodes lowered to one LLVM function.

Every kernel has the same signature, ``void @name(i8** %args, i64 %begin, i64 %end)``: `args`
holds one pointer per buffer the kernel touches (its inputs, then its outputs), and
``[begin, end)`` is the slice of the kernel's parallel work items (`Kernel.parallel_extent`)
this call does. The executor calls it once with the whole range, or splits the range across
threads.

Inside, values are computed by *index expressions*, TVM-style: `KernelBuilder.value_at(v,
index, lanes)` returns the LLVM value of tensor `v` at `index` (a tuple of ints or i64 values,
one per dimension; with ``lanes > 1`` the last index is the first of `lanes` consecutive
elements and the result is a vector). A value produced inside the group is computed on the spot
from its operands -- so a chain of elementwise, broadcasting and index-remapping ops
(transpose, reshape, slice, expand, ...) becomes one loop nest with no intermediate buffer --
and a value from outside is loaded from its buffer. Heavy ops (matmul, convolution, pooling,
reductions) have *generators* that emit their own loops and hand each computed result to
`store_result`, which applies the group's elementwise epilogue before storing.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

from llvmlite import ir

from slimc.ir import Node, Value, get_op
from slimc.ir.errors import InternalError, UnsupportedError
from slimc.ir.value_facts import ValueFacts

from ..backend import ROW_MAJOR_VIEWS
from ..backend import Kernel as BaseKernel
from .llvm_util import (I64, PTR, VOID, const, for_range, i64, llvm_type, load, masked_load,
                        masked_store_vector, splat, store, typed_ptr)
from .scalar_ops import LOWERINGS, Emitter

Index = Union[int, ir.Value]

# op -> generator(kb: KernelBuilder, node) emitting a whole loop nest for the node.
GENERATORS: dict[str, Callable] = {}
# op -> index_map(kb, node, out_index) -> [input_index or None per input]: injective ops whose
# output element at out_index is input element at the returned index (computed inline).
INDEX_MAPS: dict[str, Callable] = {}


def generator(*ops: str, inline_inputs: bool = False, epilogue=False,
              epilogue_any_dtype: bool = False, vector_code: bool = False, table=None):
    """Register a generator for `ops`. Two promises the fusion planner relies on:

    inline_inputs -- it reads its operands only through `kb.value_at`, so elementwise and
                     injective producers can be computed inside its loops (no buffer);
    epilogue      -- it hands every result to `kb.store_result`, so elementwise consumers of
                     its (first) output can be applied before the store. A function of the
                     node instead of True: None where it does, else why not (a phrase).
    epilogue_any_dtype -- the epilogue's result may have another element type than the
                     op's output (the generator stores whatever type the kernel outputs).
    vector_code   -- it writes explicit vector code: its kernels get the light "vector"
                     pipeline instead of O3 (parts.py); a generator may still set
                     `kb.pipeline = "O3"` for a kernel of scalar loops.
    table         -- the registry it goes into (another backend's own generators); default
                     GENERATORS.
    """

    def wrap(fn):
        fn.inline_inputs = inline_inputs
        fn.epilogue = epilogue
        fn.epilogue_any_dtype = epilogue_any_dtype
        fn.vector_code = vector_code
        for op in ops:
            (GENERATORS if table is None else table)[op] = fn
        return fn

    return wrap


# (applies(kb) -> bool, emit(kb)) for groups of index maps and elementwise ops that have a
# better loop nest than `elementwise_loops` (gen_transpose.py's register-tiled transpose)
GROUP_KERNELS: list = []


def index_map(*ops: str):
    def wrap(fn):
        for op in ops:
            INDEX_MAPS[op] = fn
        return fn

    return wrap


def llvm_name(name: str) -> str:
    """A value name made safe and short for LLVM IR (readable; uniqueness is LLVM's job)."""
    s = re.sub(r"[^A-Za-z0-9_.]", "_", name).strip("_") or "v"
    return s[-48:]


@dataclass
class Kernel(BaseKernel):
    """A CPU kernel: its LLVM function ``void(i8** args, i64 begin, i64 end)`` besides what
    every backend's kernel has (buffers, nodes, work items)."""

    function: Optional[ir.Function] = None
    cost: int = 0  # rough work (flops or elements), to decide if splitting across threads pays
    pipeline: str = "O3"  # the LLVM pipeline its function gets (parts.py)


class KernelBuilder:
    """Builds one kernel's function. Generators and index maps use its helpers."""

    VECTOR_BLOCK = 1024  # elements per work item for flat elementwise loops
    PARALLEL_ITEMS = 16  # work items an elementwise loop nest wants (see elementwise_loops)

    def __init__(self, module: ir.Module, name: str, nodes: Sequence[Node], inputs: Sequence[Value],
                 outputs: Sequence[Value], target, fast_math: Sequence[str] = ("contract",)):
        self.module = module
        self.target = target
        vector_width = target.vector_width
        self.nodes = list(nodes)
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.vector_width = vector_width
        self.fast_math = tuple(fast_math)
        self.produced = {id(v): n for n in self.nodes for v in n.outputs}
        self.facts = ValueFacts(self.produced)  # never NaN, bounds (ir/value_facts.py)
        self.fn, self.args, self.begin, self.end = self.begin_function(module, name)
        self.b = ir.IRBuilder(self.fn.blocks[-1])
        self.ptrs: dict[int, ir.Value] = {}
        for i, v in enumerate(list(self.inputs) + list(self.outputs)):
            slot = self.b.gep(self.args, [i64(i)], inbounds=True, name=llvm_name(v.name) + ".slot")
            raw = self.b.load(slot, name=llvm_name(v.name) + ".raw")
            self.ptrs[id(v)] = typed_ptr(self.b, raw, llvm_type(v.type.dtype), name=llvm_name(v.name))
        for n in self.nodes:  # a row-major view is its input's buffer (codegen/fusion.py)
            if n.op in ROW_MAJOR_VIEWS and id(n.inputs[0]) in self.ptrs:
                self.ptrs.setdefault(id(n.outputs[0]), self.ptrs[id(n.inputs[0])])
        self.cache: dict = {}
        self.overrides: dict = {}
        self.scratch_values: list[Value] = []
        self.mask: Optional[ir.Value] = None  # lanes valid in the vector being computed
        # (loads of operands and stores of results are masked to it)
        self.parallel_extent = 1
        self.cost = 0  # generators with heavy inner loops set this (e.g. 2*M*N*K for a matmul)
        self.pipeline = "O3"  # "vector" for explicit vector code (see `generator`)

    def begin_function(self, module: ir.Module, name: str) -> tuple:
        """(function, its `args` array, begin, end) with the builder's entry block made: a
        CPU kernel is ``void @name(i8** args, i64 begin, i64 end)``, called by the entry
        with its range of work items (another backend's builder overrides this)."""
        fnty = ir.FunctionType(VOID, [ir.PointerType(PTR), I64, I64])
        fn = ir.Function(module, fnty, name=name)
        fn.args[0].name, fn.args[1].name, fn.args[2].name = "args", "begin", "end"
        fn.args[0].add_attribute("noalias")
        fn.attributes.add("nounwind")
        # a kernel stays a function of its own: inlined into the entry (slimc_run, and through
        # it slimc_main) it was compiled two more times, 25% of BERT's machine code, for a
        # call saved per kernel
        fn.attributes.add("noinline")
        fn.append_basic_block("entry")
        return fn, fn.args[0], fn.args[1], fn.args[2]

    # ----- shapes and buffers ------------------------------------------------------------
    @staticmethod
    def shape(v: Value) -> tuple:
        if not v.type.is_static:
            raise UnsupportedError(f"%{v.name} has type {v.type}: the CPU backend needs static "
                                   f"shapes (bind them with input_shapes= or by calling)")
        return v.type.shape

    @staticmethod
    def strides(shape: Sequence[int]) -> list[int]:
        out, acc = [], 1
        for d in reversed(shape):
            out.append(acc)
            acc *= d
        return out[::-1]

    def ptr(self, v: Value) -> ir.Value:
        try:
            return self.ptrs[id(v)]
        except KeyError:
            raise InternalError(f"%{v.name} has no buffer in this kernel", where=self.fn.name) from None

    def substitute_constant(self, v: Value, data, name: str) -> ir.Value:
        """Give the kernel `data` (e.g. weights prepacked for this target) in place of the
        constant `v`: the runtime stores `data` in the weights blob instead of `v`'s data."""
        import numpy as np

        from slimc.ir import TensorType, dtypes

        data = np.ascontiguousarray(data)
        i = next(k for k, x in enumerate(self.inputs) if x is v)
        new = Value(name, TensorType(dtypes.from_numpy(data.dtype), data.shape), data)
        self.inputs[i] = new
        ptr = self.ptrs.pop(id(v))
        self.ptrs[id(new)] = ptr if data.dtype == v.type.dtype.numpy else \
            self.b.bitcast(ptr, ir.PointerType(llvm_type(new.type.dtype)))
        return self.ptrs[id(new)]

    def scratch(self, nbytes: int, name: str) -> ir.Value:
        """Arena space for this kernel call (an i8*). Call it before emitting loops."""
        from slimc.ir import TensorType, dtypes

        v = Value(name, TensorType(dtypes.u8, (int(nbytes),)))
        self.scratch_values.append(v)
        slot = len(self.inputs) + len(self.outputs) + len(self.scratch_values) - 1
        addr = self.b.gep(self.args, [i64(slot)], inbounds=True, name=llvm_name(name) + ".slot")
        return self.b.load(addr, name=llvm_name(name))

    def call_slot(self, base: ir.Value, slot: int, name: str) -> ir.Value:
        """This call's slot of a scratch array with one slot of `slot` elements per work
        item: the slot of its first item. A call runs its items one after another, so they
        can share it, and calls on other threads start at other items. One slot touched per
        thread instead of one per item keeps scratch in cache (int8 ResNet-18: 10.5 -> 10.0
        ms a call, its convs' input copies no longer written to cold memory)."""
        return self.b.gep(base, [self.b.mul(self.begin, i64(slot))], inbounds=True, name=name)

    def attrs(self, node: Node) -> dict:
        return get_op(node.op).resolve_attrs(node.attrs, node.label)

    # ----- index arithmetic (folds ints in Python) ---------------------------------------
    def iadd(self, a: Index, b: Index, name: str = "") -> Index:
        if isinstance(a, int) and isinstance(b, int):
            return a + b
        if isinstance(b, int) and b == 0:
            return a
        if isinstance(a, int) and a == 0:
            return b
        return self.b.add(self._ir(a), self._ir(b), name=name)

    def imul(self, a: Index, c: int, name: str = "") -> Index:
        if isinstance(a, int):
            return a * c
        if c == 1:
            return a
        if c == 0:
            return 0
        return self.b.mul(a, i64(c), name=name)

    def idiv(self, a: Index, c: int) -> Index:
        if isinstance(a, int):
            return a // c
        return a if c == 1 else self.b.udiv(a, i64(c))

    def imod(self, a: Index, c: int) -> Index:
        if isinstance(a, int):
            return a % c
        return 0 if c == 1 else self.b.urem(a, i64(c))

    def _ir(self, a: Index) -> ir.Value:
        return i64(a) if isinstance(a, int) else a

    def linear(self, index: Sequence[Index], shape: Sequence[int]) -> Index:
        off: Index = 0
        for ix, st in zip(index, self.strides(shape)):
            off = self.iadd(off, self.imul(ix, st))
        return off

    def delinear(self, flat: Index, shape: Sequence[int]) -> list[Index]:
        """Index of element `flat` (which is < numel, so the outermost axis needs no modulo)."""
        if 0 in shape:  # no element: code that reads one never runs
            return [0] * len(shape)
        out = []
        for axis, (d, st) in enumerate(zip(shape, self.strides(shape))):
            q = self.idiv(flat, st)
            out.append(0 if d == 1 else q if axis == 0 else self.imod(q, d))
        return out

    @staticmethod
    def _key(index: Sequence[Index]) -> tuple:
        return tuple(i if isinstance(i, int) else id(i) for i in index)

    # ----- values ------------------------------------------------------------------------
    def load_buffer(self, v: Value, index: Sequence[Index], lanes: int) -> ir.Value:
        shape = self.shape(v)
        name = llvm_name(v.name)
        scalar = self._constant_scalar(v)
        if scalar is not None:
            return splat(self.b, scalar, lanes, name)
        if lanes > 1 and shape and shape[-1] == 1:
            return splat(self.b, self.load_buffer(v, index, 1), lanes, name)
        off = self._ir(self.linear(index, shape))
        if lanes > 1 and self.mask is not None:
            return masked_load(self.b, self.ptr(v), off, self.mask, name=name)
        return load(self.b, self.ptr(v), off, lanes, name=name)

    @staticmethod
    def _constant_scalar(v: Value) -> Optional[ir.Constant]:
        """A one-element constant as an LLVM constant: scales, zero points and clip bounds
        become immediates that fold (a zero point of 0 disappears) instead of loads that
        LLVM cannot hoist past the kernel's stores."""
        data = v.data if v.is_constant else None
        if data is None or data.size != 1 or v.type.dtype.name in ("f16", "bf16"):
            return None
        return const(llvm_type(v.type.dtype), data.reshape(()).item())

    def value_at(self, v: Value, index: Sequence[Index], lanes: int = 1) -> ir.Value:
        """The value of `v` at `index` (a vector of `lanes` along the last axis if lanes > 1)."""
        key = (id(v), self._key(index), lanes)
        if key in self.overrides:
            return self.overrides[key]
        if key in self.cache:
            return self.cache[key]
        node = self.produced.get(id(v))
        if node is None:
            result = self.load_buffer(v, index, lanes)
        elif node.op in INDEX_MAPS:
            result = self._injective(node, v, index, lanes)
        elif node.op in LOWERINGS:
            result = self._elementwise(node, index, lanes)
        else:
            raise InternalError(f"{node.op} node {node.label!r} is inside a kernel but has no "
                                f"inline lowering", where=self.fn.name)
        self.cache[key] = result
        return result

    def _operand_index(self, out_shape, in_shape, index):
        """Broadcasting: the operand's index for an output index (numpy's right alignment)."""
        off = len(out_shape) - len(in_shape)
        return [0 if d == 1 else index[off + i] for i, d in enumerate(in_shape)]

    def _elementwise(self, node: Node, index, lanes: int) -> ir.Value:
        out_shape = self.shape(node.outputs[0])
        args = []
        for v in node.inputs:
            if v is None:
                args.append(None)
                continue
            in_shape = self.shape(v)
            idx = self._operand_index(out_shape, in_shape, index)
            lane_broadcast = lanes > 1 and (not in_shape or in_shape[-1] == 1)
            x = self.value_at(v, idx, 1 if lane_broadcast else lanes)
            args.append(splat(self.b, x, lanes) if lane_broadcast else x)
        return LOWERINGS[node.op](self.emitter_for(node), args, self.attrs(node))

    def emitter_for(self, node: Node) -> Emitter:
        """The Emitter that computes `node` inline, with what this kernel knows of its
        operands (never NaN, bounded by a clip)."""
        e = Emitter(self.b, [v.type.dtype for v in node.inputs if v is not None],
                    node.outputs[0].type.dtype, self.fast_math, llvm_name(node.outputs[0].name))
        e.no_nan = all(self.facts.never_nan(v) for v in node.inputs if v is not None)
        e.ranges = [None if v is None else self.facts.value_range(v) for v in node.inputs]
        return e

    def _injective(self, node: Node, v: Value, index, lanes: int) -> ir.Value:
        """Remapped load. Vector lanes stay a vector only when the map keeps the last axis
        contiguous; otherwise each lane is computed on its own and gathered."""
        fn = INDEX_MAPS[node.op]
        if lanes > 1:
            contiguous = getattr(fn, "keeps_last_axis", None)
            if contiguous is None or not contiguous(self, node):
                lanes_vals = [self._injective(node, v, list(index[:-1]) + [self.iadd(index[-1], k)], 1)
                              for k in range(lanes)]
                vec = ir.Constant(ir.VectorType(lanes_vals[0].type, lanes), ir.Undefined)
                for k, x in enumerate(lanes_vals):
                    vec = self.b.insert_element(vec, x, ir.IntType(32)(k))
                return vec
        src, src_index = fn(self, node, v, index)
        return self.value_at(src, src_index, lanes)

    # ----- stores and loops --------------------------------------------------------------
    def store_value(self, v: Value, index: Sequence[Index], x: ir.Value) -> None:
        off = self._ir(self.linear(index, self.shape(v)))
        if self.mask is not None and isinstance(x.type, ir.VectorType):  # a partial vector
            masked_store_vector(self.b, x, self.b.gep(self.ptr(v), [off], inbounds=True),
                                self.mask)
            return
        store(self.b, x, self.ptr(v), off, name=llvm_name(v.name))

    def store_result(self, produced: Value, index: Sequence[Index], x: ir.Value) -> None:
        """A generator computed `produced` at `index`: apply the epilogue and store outputs.

        The index is taken with 0 for the dims of size 1 (whatever the generator's loop
        variable there): the form in which the epilogue's operands look `produced` up."""
        index = [0 if d == 1 else i for d, i in zip(self.shape(produced), index)]
        lanes = x.type.count if isinstance(x.type, ir.VectorType) else 1
        self.overrides[(id(produced), self._key(index), lanes)] = x
        for out in self.outputs:
            if self.shape(out) != self.shape(produced):
                raise InternalError(f"epilogue output %{out.name} has another shape than "
                                    f"%{produced.name}", where=self.fn.name)
            self.store_value(out, index, self.value_at(out, index, lanes))
        self.overrides.clear()
        self.cache.clear()

    def gemm_epilogue(self, produced: Value, N: int, inner=None, row_offset: bool = False,
                      col_offset: bool = False):
        """The fused consumers of `produced` as an epilogue for `gemm.emit_gemm`.

        The GEMM computes `produced` as rows of N columns (element row*N + col of its
        row-major data); each accumulator vector becomes `produced` there and the kernel's output is
        evaluated there, so the GEMM stores the final value into the kernel's output buffer.
        `inner` (gemm's alpha/beta/C) runs first. Returns (epilogue, extra GEMM arguments,
        their values in this kernel): the GEMM function gets every kernel input, since the
        consumers may read any of them, and, with `row_offset`, an i64 ``row0`` added to its
        rows (for GEMMs called once per batch entry); with `col_offset`, an i64 ``col0`` added
        to its columns (for GEMMs called once per block of columns).
        """
        if list(self.outputs) == [produced]:
            return inner, [], []
        inputs = list(self.inputs)
        extra = [(f"in{i}", PTR) for i in range(len(inputs))]
        values = [self.b.bitcast(self.ptr(v), PTR) for v in inputs]
        if row_offset:
            extra.append(("row0", I64))
        if col_offset:
            extra.append(("col0", I64))

        def epilogue(ctx, acc):
            if inner is not None:
                acc = inner(ctx, acc)
            saved = self.b, self.ptrs
            self.b = ctx.builder
            self.ptrs = {id(v): typed_ptr(ctx.builder, ctx.args[f"in{i}"], llvm_type(v.type.dtype))
                         for i, v in enumerate(inputs)}
            self.mask = ctx.mask
            try:
                row = ctx.builder.add(ctx.row, ctx.args["row0"]) if row_offset else ctx.row
                col = ctx.builder.add(ctx.col, ctx.args["col0"]) if col_offset else ctx.col
                if ctx.index is not None:
                    index = [0 if d == 1 else i for d, i in zip(self.shape(produced), ctx.index)]
                else:
                    flat = ctx.builder.add(ctx.builder.mul(row, i64(N)), col)
                    index = self.delinear(flat, self.shape(produced))
                self.overrides[(id(produced), self._key(index), ctx.vw)] = acc
                if (not index or self.shape(produced)[-1] == 1) and \
                        isinstance(acc.type, ir.VectorType):
                    # one column (N == 1): consumers read it as a scalar and broadcast it
                    # over the lanes (`_elementwise`), so lane 0 is the value under lanes=1
                    self.overrides[(id(produced), self._key(index), 1)] = \
                        ctx.builder.extract_element(acc, i64(0))
                return self.value_at(self.outputs[0], index, ctx.vw)
            finally:
                self.b, self.ptrs = saved
                self.mask = None
                self.overrides.clear()
                self.cache.clear()

        return epilogue, extra, values

    def loop(self, start, stop, step: int = 1, name: str = "i"):
        return for_range(self.b, start, stop, step, name)

    def elementwise_loops(self) -> None:
        """The loop nest of a group with no generator: every output, element by element.

        Work items are the outer axes taken together until there are 16 (a batch-1 first
        axis alone: one thread), or blocks of a flat range when the group is a flat map over
        identical shapes; the last axis runs in vectors with a scalar tail.
        """
        out_shape = self.shape(self.outputs[0])
        W = self.vector_width
        if self._flat_ok():
            n = 1
            for d in out_shape:
                n *= d
            block = self.VECTOR_BLOCK
            self.parallel_extent = max(1, -(-n // block))
            with self.loop(self.begin, self.end, name="blk") as blk:
                lo = self.b.mul(blk, i64(block), name="lo")
                hi_full = self.b.add(lo, i64(block))
                hi = self.b.select(self.b.icmp_signed("<", hi_full, i64(n)), hi_full, i64(n), name="hi")
                self._inner_loop(lo, hi, [], W, flat_shape=(n,))
            self.b.ret_void()
            return
        rank = len(out_shape)
        if rank == 0:
            self.parallel_extent = 1
            self._store_all([], 1)
            self.b.ret_void()
            return
        if rank == 1:
            self.parallel_extent = 1
            self._inner_loop(0, out_shape[0], [], W)
            self.b.ret_void()
            return
        lead, items = 1, out_shape[0]
        while lead < rank - 1 and items < self.PARALLEL_ITEMS:
            items *= out_shape[lead]
            lead += 1
        self.parallel_extent = items
        with self.loop(self.begin, self.end, name="item") as item:
            prefix = [item] if lead == 1 else self.delinear(item, out_shape[:lead])
            self._nest(prefix, out_shape, W)
        self.b.ret_void()

    def _nest(self, prefix, shape, W):
        if len(prefix) == len(shape) - 1:
            self._inner_loop(0, shape[-1], prefix, W)
            return
        with self.loop(0, shape[len(prefix)], name=f"d{len(prefix)}") as i:
            self._nest(prefix + [i], shape, W)

    def _inner_loop(self, lo, hi, prefix, W, flat_shape=None):
        """Vector loop over [lo, hi) in steps of W, then a scalar tail."""
        name = f"d{len(prefix)}"
        lo_v = self._ir(lo)
        hi_v = self._ir(hi)
        if W > 1 and not (isinstance(hi, int) and isinstance(lo, int) and hi - lo < W):
            span = self.b.sub(hi_v, lo_v)
            vec_hi = self.b.add(lo_v, self.b.mul(self.b.udiv(span, i64(W)), i64(W)), name=name + ".vend")
            with self.loop(lo_v, vec_hi, W, name=name + "v") as i:
                self._store_all(prefix + [i], W, flat_shape)
            lo_v = vec_hi
        with self.loop(lo_v, hi_v, 1, name=name + "s") as i:
            self._store_all(prefix + [i], 1, flat_shape)

    def _store_all(self, index, lanes, flat_shape=None):
        for out in self.outputs:
            if flat_shape is not None:
                x = self._flat_value(out, index[0], lanes)
                store(self.b, x, self.ptr(out), self._ir(index[0]), name=llvm_name(out.name))
            else:
                self.store_value(out, index, self.value_at(out, index, lanes))
        self.cache.clear()

    # ----- the flat fast path ------------------------------------------------------------
    def _flat_ok(self) -> bool:
        """True if every node is elementwise and every operand is output-shaped or a scalar,
        so the group is one flat loop over numel elements."""
        shape = self.shape(self.outputs[0])
        if any(self.shape(o) != shape for o in self.outputs):
            return False
        n = 1
        for d in shape:
            n *= d
        for node in self.nodes:
            if node.op not in LOWERINGS:
                return False
            for v in node.inputs:
                if v is None:
                    continue
                s = self.shape(v)
                numel = 1
                for d in s:
                    numel *= d
                if s != shape and numel != 1:
                    return False
        return n > 0

    def _flat_value(self, v: Value, flat: Index, lanes: int) -> ir.Value:
        key = (id(v), ("flat", self._key([flat])), lanes)
        if key in self.cache:
            return self.cache[key]
        node = self.produced.get(id(v))
        numel = 1
        for d in self.shape(v):
            numel *= d
        if node is None:
            if numel == 1:
                scalar = self._constant_scalar(v)
                if scalar is None:
                    scalar = load(self.b, self.ptr(v), i64(0), 1, llvm_name(v.name))
                result = splat(self.b, scalar, lanes)
            else:
                result = load(self.b, self.ptr(v), self._ir(flat), lanes, llvm_name(v.name))
        else:
            args = [None if a is None else self._flat_value(a, flat, lanes) for a in node.inputs]
            result = LOWERINGS[node.op](self.emitter_for(node), args, self.attrs(node))
        self.cache[key] = result
        return result


def generate(kb: KernelBuilder, generators=GENERATORS, group_kernels=GROUP_KERNELS,
             backend: str = "CPU") -> None:
    """Emit the body of `kb`'s kernel: the generator of its one anchor (an op in
    `generators`, which emits its own loop nest), else a group kernel that applies, else the
    elementwise loops. Shared by every backend whose builder is a KernelBuilder."""
    nodes = kb.nodes
    anchors = [n for n in nodes if n.op in generators]
    if len(anchors) > 1:
        raise InternalError(f"kernel {kb.fn.name} has {len(anchors)} ops with their own loop "
                            f"nests ({', '.join(n.op for n in anchors)}); fusion should not "
                            f"group them", where="codegen")
    for n in nodes:
        if n.op not in generators and n.op not in LOWERINGS and n.op not in INDEX_MAPS:
            raise UnsupportedError(f"the {backend} backend has no lowering for {n.op}",
                                   node=n.label, op=n.op)
    if anchors and all(v.type.is_static and v.type.numel == 0 for v in kb.outputs):
        kb.parallel_extent = 1  # nothing to write (a generator's tiling divides by the extent)
        kb.b.ret_void()
    elif anchors:
        gen = generators[anchors[0].op]
        kb.pipeline = "vector" if gen.vector_code else "O3"
        gen(kb, anchors[0])
    else:
        special = next((emit for applies, emit in group_kernels if applies(kb)), None)
        (special or KernelBuilder.elementwise_loops)(kb)


def build_kernel(module: ir.Module, name: str, nodes: Sequence[Node], inputs: Sequence[Value],
                 outputs: Sequence[Value], target,
                 fast_math: Sequence[str] = ("contract",)) -> Kernel:
    """Lower a group of nodes to one kernel function in `module` for `target` (a CpuTarget)."""
    start = time.perf_counter()
    kb = KernelBuilder(module, name, nodes, inputs, outputs, target, fast_math)
    generate(kb)
    cost = kb.cost or sum(v.type.numel for v in outputs)
    return Kernel(name, list(nodes), kb.inputs, list(outputs), kb.parallel_extent,
                  kb.scratch_values, codegen_seconds=time.perf_counter() - start,
                  function=kb.fn, cost=cost, pipeline=kb.pipeline)
