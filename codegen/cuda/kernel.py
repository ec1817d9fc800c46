"""One GPU kernel: a fused group lowered to an LLVM function that NVPTX turns into PTX.

A GPU kernel is ``void @name(i8** args, i64 items)`` with the `ptx_kernel` calling
convention: `args` is an array (in device memory) of one pointer per buffer, as on the CPU,
and `items` is how many threads have work. It is built by a `GpuKernelBuilder`, the CPU's
`KernelBuilder` (codegen/cpu/kernel.py) with a GPU prologue: each thread's work item is its
global thread index, so ``[begin, end)`` is that one item (or none, past `items`). Index
expressions, inline producers, scalar lowerings and fused epilogues are the CPU's, unchanged.

Two kinds of generators run here:
- GPU generators (`@gpu_generator`, this package's gen_*.py) written for the GPU: they pick
  their own launch (`kb.launch`), use shared memory, barriers and warp shuffles;
- the CPU backend's generators of the ops that have no GPU generator yet, one work item per
  thread: correct, and as fast as their work items are small and many.
An elementwise group is one thread per output element.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional, Sequence

from llvmlite import ir

from slimc.ir import Node, Value
from slimc.ir.errors import InternalError

from ..backend import Kernel as BaseKernel
from ..cpu.kernel import GENERATORS, KernelBuilder, generate, generator
from ..cpu.llvm_util import I32, I64, PTR, VOID, elem_bytes, i64

# op -> generator written for the GPU (same signature and promises as the CPU's `@generator`)
GPU_GENERATORS: dict = {}

# CPU generators that must not run on a GPU: x86 intrinsics, or work items that hold a whole
# layer (the GPU generators replace them); the backend refuses these ops until a GPU
# generator exists
CPU_ONLY = frozenset({
    "conv_integer", "matmul_integer", "dynamic_quantize", "sparse_matmul", "sparse_conv",
    "winograd_conv2d", "conv2d_nchwc", "depthwise_conv2d_nchwc",
})


def gpu_generator(*ops: str, **promises):
    """Register a GPU generator for `ops` (promises as in codegen/cpu/kernel.py's
    `generator`: inline_inputs, epilogue)."""
    return generator(*ops, table=GPU_GENERATORS, **promises)


def generator_for(op: str):
    """The generator a GPU kernel anchored on `op` runs, or None (elementwise or index map)."""
    gen = GPU_GENERATORS.get(op)
    if gen is None and op not in CPU_ONLY:
        gen = GENERATORS.get(op)
    return gen


class _Generators:
    """GPU_GENERATORS over the CPU's GENERATORS less CPU_ONLY, as the mapping `generate`
    looks anchors up in."""

    def __contains__(self, op) -> bool:
        return generator_for(op) is not None

    def __getitem__(self, op):
        gen = generator_for(op)
        if gen is None:
            raise KeyError(op)
        return gen


GENERATORS_ON_GPU = _Generators()


@dataclass
class GpuKernel(BaseKernel):
    """A GPU kernel: its function, and how it is launched (blocks of threads; `items` is its
    second argument)."""

    function: Optional[ir.Function] = None
    grid: tuple = (1, 1, 1)
    block: tuple = (1, 1, 1)
    items: int = 0
    shared_bytes: int = 0

    @property
    def threads(self) -> int:
        return self.block[0] * self.block[1] * self.block[2]


_SREG = "llvm.nvvm.read.ptx.sreg."
BARRIER = "llvm.nvvm.barrier.cta.sync.aligned.all"
SHARED = 3  # NVPTX's address space of shared memory
GLOBAL = 1  # ... and of global memory


def sreg(b: ir.IRBuilder, reg: str, name: str = "") -> ir.Value:
    """A special register (``tid.x``, ``ctaid.y``, ``ntid.x``, ``laneid``, ...) as i32."""
    module = b.module
    fname = _SREG + reg
    fn = module.globals.get(fname)
    if fn is None:
        fn = ir.Function(module, ir.FunctionType(I32, []), name=fname)
    return b.call(fn, [], name=name or reg.replace(".", "_"))


class GpuKernelBuilder(KernelBuilder):
    """Builds one GPU kernel. GPU generators use the helpers below; everything else is the
    CPU's KernelBuilder."""

    BLOCK = 256  # threads per block of a one-item-per-thread kernel

    def __init__(self, *args, **kwargs):
        self.shared_bytes = 0
        self.explicit_launch: Optional[tuple] = None
        super().__init__(*args, **kwargs)

    def begin_function(self, module: ir.Module, name: str) -> tuple:
        fn = ir.Function(module, ir.FunctionType(VOID, [ir.PointerType(PTR), I64]), name=name)
        fn.calling_convention = "ptx_kernel"
        fn.args[0].name, fn.args[1].name = "args", "items"
        fn.args[0].add_attribute("noalias")
        fn.attributes.add("nounwind")
        b = ir.IRBuilder(fn.append_basic_block("entry"))
        block = b.zext(sreg(b, "ctaid.x"), I64, name="block")
        width = b.zext(sreg(b, "ntid.x"), I64, name="block_size")
        thread = b.zext(sreg(b, "tid.x"), I64, name="thread")
        item = b.add(b.mul(block, width), thread, name="item")
        has_work = b.icmp_signed("<", item, fn.args[1], name="has_work")
        end = b.select(has_work, b.add(item, i64(1)), item, name="item_end")
        return fn, fn.args[0], item, end

    # ----- what GPU generators use --------------------------------------------------------
    def sreg(self, reg: str, name: str = "") -> ir.Value:
        """A special register as i64 (``tid.x``, ``ctaid.y``, ``laneid``, ...)."""
        return self.b.zext(sreg(self.b, reg), I64, name=name or reg.replace(".", "_"))

    def launch(self, grid: Sequence[int], block: Sequence[int], items: int = 0) -> None:
        """Launch this kernel as `grid` blocks of `block` threads (instead of one thread per
        work item); `items` is passed as its second argument."""
        grid = tuple(int(g) for g in grid) + (1,) * (3 - len(grid))
        block = tuple(int(t) for t in block) + (1,) * (3 - len(block))
        if block[0] * block[1] * block[2] > 1024:
            raise InternalError(f"{self.fn.name}: a block of {block} threads is over 1024",
                                where="codegen")
        self.explicit_launch = (grid, block, int(items))

    def barrier(self) -> None:
        """__syncthreads(): every thread of the block waits here."""
        module = self.b.module
        fn = module.globals.get(BARRIER)
        if fn is None:
            fn = ir.Function(module, ir.FunctionType(VOID, [I32]), name=BARRIER)
        self.b.call(fn, [I32(0)])

    def shuffle(self, kind: str, value: ir.Value, lane_arg, name: str = "") -> ir.Value:
        """`__shfl_<kind>_sync` over the whole warp: kind "bfly" (xor), "down", "up" or
        "idx"; `value` f32 or i32."""
        suffix = "f32" if isinstance(value.type, ir.FloatType) else "i32"
        fname = f"llvm.nvvm.shfl.sync.{kind}.{suffix}"
        module = self.b.module
        fn = module.globals.get(fname)
        if fn is None:
            fn = ir.Function(module, ir.FunctionType(value.type, [I32, value.type, I32, I32]),
                             name=fname)
        lane = lane_arg if isinstance(lane_arg, ir.Value) else I32(lane_arg)
        clamp = I32(0 if kind == "up" else 31)
        return self.b.call(fn, [I32(-1), value, lane, clamp], name=name or f"shfl_{kind}")

    def shared_array(self, name: str, elem: ir.Type, count: int) -> ir.Value:
        """A block's shared array of `count` elements: a ``ptr addrspace(3)`` to element 0."""
        arr_type = ir.ArrayType(elem, int(count))
        g = ir.GlobalVariable(self.b.module, arr_type, name=f"{self.fn.name}.{name}",
                              addrspace=SHARED)
        g.linkage = "internal"
        g.align = 16
        self.shared_bytes += int(count) * elem_bytes(elem)
        return self.b.gep(g, [i64(0), i64(0)], inbounds=True, name=name)

    def use_global_buffers(self) -> None:
        """Every buffer pointer of the kernel (all are device memory) as a global-memory one,
        so that NVPTX emits ld.global / st.global rather than generic accesses, for operands
        and the epilogue's loads and stores alike. For generators that only index the
        pointers (gep, load, store): a bitcast cannot change the address space."""
        for key, ptr in list(self.ptrs.items()):
            if ptr.type.addrspace != GLOBAL:
                self.ptrs[key] = self.b.addrspacecast(
                    ptr, ir.PointerType(ptr.type.pointee, addrspace=GLOBAL), name=ptr.name + ".g")

    # ----- an elementwise group: one thread per output element ----------------------------
    def elementwise_loops(self) -> None:
        out_shape = self.shape(self.outputs[0])
        n = 1
        for d in out_shape:
            n *= d
        self.parallel_extent = max(1, n)
        self.use_global_buffers()
        flat_ok = self._flat_ok()
        with self.loop(self.begin, self.end, name="element") as flat:
            if flat_ok:
                self._store_all([flat], 1, flat_shape=(n,))
            else:
                self._store_all(self.delinear(flat, out_shape), 1)
        self.b.ret_void()


def build_gpu_kernel(module: ir.Module, name: str, nodes: Sequence[Node],
                     inputs: Sequence[Value], outputs: Sequence[Value], target,
                     fast_math: Sequence[str] = ("contract",)) -> GpuKernel:
    """Lower a group of nodes to one GPU kernel in `module` (for a CudaTarget)."""
    start = time.perf_counter()
    kb = GpuKernelBuilder(module, name, nodes, inputs, outputs, target, fast_math)
    if any(n.op in GPU_GENERATORS for n in nodes):
        kb.use_global_buffers()  # the CPU's generators may bitcast a pointer: not theirs
    generate(kb, GENERATORS_ON_GPU, group_kernels=(), backend="CUDA")
    if kb.explicit_launch is not None:
        grid, block, items = kb.explicit_launch
    else:
        items = max(1, kb.parallel_extent)
        threads = min(GpuKernelBuilder.BLOCK, -(-items // 32) * 32)
        grid, block = (-(-items // threads), 1, 1), (threads, 1, 1)
    if kb.shared_bytes > target.SHARED_BYTES:
        raise InternalError(f"{name}: {kb.shared_bytes} bytes of shared memory is over "
                            f"{target.SHARED_BYTES}", where="codegen")
    return GpuKernel(name, list(nodes), kb.inputs, list(outputs), kb.parallel_extent,
                     kb.scratch_values, codegen_seconds=time.perf_counter() - start,
                     function=kb.fn, grid=grid, block=block, items=items,
                     shared_bytes=kb.shared_bytes)
