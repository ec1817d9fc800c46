"""The seam between the target-neutral compiler and one kind of target: the `Backend`.

`slimc.compile` (slimc/compiler.py builds the pipeline, slimc/driver.py drives the rest) asks
a backend five things, in this order, and nothing else about the target:

1. `pipeline_passes(opt_level, disabled)`: the graph passes this target adds after the
   standard ones and the user's (the CPU's Winograd rewrite and blocked layout), configured
   for it and for the passes the user turned off.
2. What it can fuse, for the target-neutral planner (codegen/fusion.py), which reads each
   op's declared `FusionKind` and then asks: `lowers(node)`, `can_inline(node)` (computed
   where it is read, no loop nest of its own), `reads_operands_inline(anchor)` and
   `epilogue(anchor)` (None if the anchor applies an elementwise epilogue before its store,
   else why not).
3. `lower(graph, groups, options)`: one kernel per fused group, as a `Lowered` (the kernels
   with the buffers each reads, writes and needs as scratch).
4. The driver then plans memory (runtime/memory_plan.py: every buffer's `Placement`) -- the
   same plan for every target.
5. `link(lowered, placement, options)`: the entry that runs every kernel in order over those
   buffers, compiled into an `Executable` that runtime/compiled.py wraps as the module a
   user calls.

`slimc.Target` (slimc/target.py) maps a target string to the backend of its kind. codegen
never imports runtime: what a backend hands back is an `Executable`, a plain object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, Optional, Sequence

from slimc.ir import FusionKind, Graph, Node, get_op

# Where a buffer lives during a call (decided by the memory plan, used by every entry).
INPUT, OUTPUT, ARENA, WEIGHTS = "input", "output", "arena", "weights"


@dataclass(frozen=True)
class Placement:
    space: str  # INPUT, OUTPUT, ARENA or WEIGHTS
    offset: int  # slot index for inputs/outputs, byte offset for arena/weights


@dataclass
class Kernel:
    """One fused group after lowering: what the memory plan and the entry need to know."""

    name: str
    nodes: list  # the IR nodes it computes, in graph order
    inputs: list  # Values read from buffers
    outputs: list  # Values written to buffers
    parallel_extent: int = 1  # work items the entry may split over threads
    scratch: list = field(default_factory=list)  # u8 Values: arena space for this call only
    codegen_seconds: float = 0.0  # generating its code (`slimc compile --time` lists them)

    @property
    def buffers(self) -> list:
        """Every buffer in the order of the kernel's argument array."""
        return list(self.inputs) + list(self.outputs) + list(self.scratch)

    @property
    def ops(self) -> list[str]:
        return [n.op for n in self.nodes]


@dataclass
class CompileOptions:
    """The options of one compile that reach code generation."""

    opt_level: int = 2
    threads: Optional[int] = None  # None: every core of the machine that runs the code
    denormals: str = "flush"  # or "keep"
    fusion: bool = True
    dump_dir: Optional[str] = None
    # Where compiled pieces of code may be kept between compiles (runtime/cache.py's
    # PartCache: key(text, *identity), lookup(key), store(key, obj, text)); None: nowhere.
    part_cache: Optional[object] = None

    @property
    def fast_math(self) -> tuple:
        """Floating-point freedoms: FMA contraction, and reassociation from -O2 (never nnan
        or ninf: NaN and Inf flow through as IEEE says)."""
        return ("contract", "reassoc") if self.opt_level >= 2 else ()


@dataclass
class Lowered:
    """What `Backend.lower` made: the kernels in execution order, and the backend's own
    state (its LLVM module, say) that `link` finishes."""

    kernels: list
    state: object = None


class Executable:
    """A linked program: `entry(inputs, outputs, arena, weights)` takes four addresses (arrays
    of buffer pointers for inputs and outputs), `run(..., first, last)` runs kernels
    [first, last) only and `timed(..., ns)` all of them with each one's time (for profiling).
    `entry` is None where this process cannot run it (a cross-compiled module);
    `not_runnable()` then says why."""

    entry: Optional[Callable] = None
    run: Optional[Callable] = None
    call: Optional[Callable] = None  # slimc_exact: checks and runs a tuple of arrays, if any
    timed: Optional[Callable] = None  # entry(..., ns): times each step inside the call, if any
    code_bytes: int = 0
    # seconds of the backend's own stages ("llvm_opt", "machine_code", ...); a backend that
    # times nothing keeps this empty, read-only default
    times: Mapping[str, float] = MappingProxyType({})

    def not_runnable(self) -> Exception:
        return NotImplementedError("this module cannot run in this process")

    @property
    def llvm_ir(self) -> str:
        return ""

    @property
    def assembly(self) -> str:
        return ""

    def objects(self) -> list:
        """The compiled code as relocatable objects, linked into the exported library."""
        raise NotImplementedError("this backend does not export object code")


class Backend:
    """One kind of target. Subclasses override what their target does differently; the
    defaults describe a backend that adds no passes and fuses nothing."""

    kind = "none"

    # ---- 1. the pipeline ------------------------------------------------------------------
    def pipeline_passes(self, opt_level: int, disabled: frozenset = frozenset()) -> list:
        """Passes (instances, configured for this target) after the standard and user passes.
        `disabled` names the passes the user turned off (the pipeline drops them itself): a
        pass that prices the work of another needs to know that the other will not run."""
        return []

    # ---- 2. capabilities ------------------------------------------------------------------
    def lowers(self, node: Node) -> bool:
        raise NotImplementedError

    def can_inline(self, node: Node) -> bool:
        """True if `node` can be computed where a kernel reads it (elementwise math or an
        index remap), with no loop nest of its own."""
        return False

    def reads_operands_inline(self, anchor: Node) -> bool:
        """True if `anchor`'s kernel reads its operands through index expressions, so inline
        producers can be computed inside it instead of going through memory."""
        return False

    def epilogue(self, anchor: Node) -> Optional[str]:
        """None if `anchor`'s kernel applies an elementwise epilogue to each result before
        storing it; else why not (a phrase, for the fusion report)."""
        return ""

    def epilogue_changes_dtype(self, anchor: Node) -> bool:
        """True if `anchor`'s epilogue may store another element type than its own result
        (an int8 GEMM storing the dequantized float, or the next layer's u8)."""
        return False

    def unsupported(self, graph: Graph) -> dict:
        """op -> labels of the nodes this backend cannot lower (empty: it lowers them all)."""
        missing: dict = {}
        for n in graph.nodes:
            if not self.lowers(n):
                missing.setdefault(n.op, []).append(n.label)
        return missing

    # ---- 3. lowering, 5. linking -------------------------------------------------------------
    def threads(self, requested: Optional[int]) -> int:
        """The thread count a module runs with, for `compile(threads=requested)`."""
        if requested is not None and requested < 1:
            raise ValueError(f"threads must be None or at least 1, got {requested}")
        return requested or 1

    def lower(self, graph: Graph, groups: Sequence[Sequence[Node]],
              options: CompileOptions) -> Lowered:
        raise NotImplementedError

    def link(self, graph: Graph, lowered: Lowered, placement: dict,
             options: CompileOptions) -> Executable:
        raise NotImplementedError

    def not_runnable_here(self) -> Optional[Exception]:
        """None if this process can run modules of this target, else the error to raise."""
        return None

    # ---- identity ---------------------------------------------------------------------------
    @property
    def cache_identity(self) -> Optional[str]:
        """What identifies the generated code's target in the compile cache, or None if this
        backend's modules are not cached."""
        return None


# Views that keep the row-major order: output element k is input element k, so the output's
# buffer is the input's, byte for byte. A kernel that reads such a view from memory reads its
# input's buffer instead (the planner puts the view in that kernel; KernelBuilder aliases it).
ROW_MAJOR_VIEWS = frozenset({"reshape", "flatten", "squeeze", "unsqueeze"})


def computed_inline(backend: Backend, node: Node) -> bool:
    """The planner's reading of a node: its declared kind allows computing it where it is
    read (elementwise, broadcast or injective), and the backend can."""
    return get_op(node.op).fusion <= FusionKind.INJECTIVE and backend.can_inline(node)


def elementwise_epilogue(backend: Backend, node: Node) -> bool:
    """A node that may follow an anchor in its kernel: elementwise or broadcasting by its
    declared kind, and computed inline by the backend."""
    return get_op(node.op).fusion <= FusionKind.BROADCAST and backend.can_inline(node)

