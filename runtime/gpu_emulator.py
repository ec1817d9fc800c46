"""Run CUDA kernels, given as the LLVM IR that NVPTX compiles, on the CPU with CUDA's semantics.

Without a GPU the CUDA backend's kernels must still run, and run so that the classic GPU bugs
show: a missing __syncthreads(), an element never written, a race on shared memory. The
emulator takes the very module handed to NVPTX and changes only what a CPU cannot run
(`_REWRITES`, rules as data):

- the NVVM intrinsics (thread geometry, block barriers, warp shuffles: `INTRINSICS`; and the
  arithmetic that libdevice's math calls: `ARITHMETIC`; both gpu_emulator_nvvm.py) become calls
  into a small runtime written in LLVM IR (gpu_emulator_ir.py) and linked into the module; any
  other `llvm.nvvm.*` intrinsic is refused by name before anything is compiled;
- address spaces go (global, shared and generic memory are all host memory here), and the
  NVPTX triple, data layout and target attributes make way for the host's;
- shared memory (the `addrspace(3)` globals) is filled with 0xFF bytes before every block: a
  read of shared memory nobody wrote gives NaN (an int reads -1);
- libdevice's functions that the module declares without defining them (`__nv_expf`) are the
  host libm's (`expf`); a module with libdevice linked in runs libdevice's own code.
The kernel code itself is compiled as given: no pass reshapes its control flow.

How threads run (gpu_emulator_ir.py tells the whole story). Blocks run one after another, in a
seeded random order. A kernel that reaches no barrier and no shuffle (directly or through the
functions it calls) runs as a loop calling it once per thread, in a shuffled order. Every other
kernel gets one fiber per thread, scheduled adversarially: from one barrier to the next, the
warps mostly run one at a time in a random order (a warp that has to wait for another's writes
reads stale data or NaN), sometimes all in lockstep. A schedule that would deadlock a GPU
raises `EmulatorError` naming the kernel, the block and two threads that disagree, and where
they wait: every barrier and shuffle call carries a site number (`_number_sites`) that tells
barriers apart, "barrier 2 of @matmul".

Speed (measured on a 2-core AMD EPYC): an elementwise launch of 1M threads 16-40 ms; 256
threads x 64 blocks x 16 barriers 0.15-0.5 s (a fiber switch costs 0.3-1 us, much of it the
signal-mask system call in swapcontext); building an emulator ~40 ms.

Limits: a shuffle's membermask is taken to be every live lane of the warp (the CUDA backend
shuffles whole warps); no dynamic (`extern __shared__`) shared memory; memory accesses are not
bounds-checked (an out-of-bounds store corrupts the process, as any native code would); a
thread has 124 KiB of stack; glibc on x86-64 or AArch64 Linux only (makecontext).
"""

from __future__ import annotations

import ctypes
import re
import threading
from dataclasses import dataclass
from typing import Sequence

import llvmlite.binding as llvm
import numpy as np

from slimc.codegen.cpu.target import ensure_llvm_initialized
from slimc.ir.errors import SlimcError

from .gpu_emulator_ir import (AT_BARRIER, AT_SHUFFLE, CONTEXT_BYTES, FINISHED, GUARD_BYTES,
                              LAUNCH, STACK_BYTES, THREAD, WARP, runtime_ir)
from .gpu_emulator_nvvm import ARITHMETIC, INTRINSICS

__all__ = ["Emulator", "EmulatorError", "Kernel", "INTRINSICS", "ARITHMETIC", "CONTEXT_BYTES",
           "STACK_BYTES"]

MAX_BLOCK = (1024, 1024, 64)  # CUDA's limits on a block's dimensions...
MAX_THREADS = 1024  # ...and on its threads
MAX_GRID = (2**31 - 1, 65535, 65535)
_GUARD = 0xA5  # the pattern at the bottom of every stack (GUARD_BYTES)


class EmulatorError(SlimcError):
    """A kernel cannot be emulated, was launched wrongly, or did what deadlocks a GPU.
    `kernel` and `block` say where, when known."""

    def __init__(self, message: str, *, kernel: str | None = None, block: tuple | None = None):
        self.kernel = kernel
        self.block = block
        where = f"kernel {kernel!r}" if kernel else ""
        if block is not None:
            where += f", block {block}"
        super().__init__(f"{where}: {message}" if where else message)


# The NVPTX-only parts of a module, made host code: (why, pattern, replacement), in order.
_REWRITES = [
    ("every address space is host memory (`, addrspace(5)` ends an alloca)",
     r",? addrspace\(\d+\)", ""),
    ("so a cast between address spaces changes nothing", r"\baddrspacecast\b", "bitcast"),
    ("kernels and device functions use the host's calling convention",
     r"\bptx_(?:kernel|device) ", ""),
    ("NVPTX's CPU and features mean nothing to the host",
     r' "target-(?:cpu|features)"="[^"]*"', ""),
    ("intrinsics mangled with an address space (llvm.memcpy.p0.p1.i64) now take p0",
     r"@llvm\.[\w.]+", lambda m: re.sub(r"\.p[1-9]\d*\b", ".p0", m.group())),
    ("the NVVM intrinsics' declarations go (the glue declares their replacements)",
     r"^declare [^\n]*@llvm\.nvvm\.[^\n]*\n", ""),
    ("calls to NVVM intrinsics call the runtime", r"@llvm\.nvvm\.", "@slimc_emu."),
]


# ----------------------------------------------------------------------------------------------
# Reading and rewriting the kernel module
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Kernel:
    """One kernel of the module: its parameter types ("ptr", "i64", "i32" or "float") and
    whether its threads need fibers (it reaches a barrier or a shuffle)."""

    name: str
    params: tuple
    fibers: bool


def _ref(name: str) -> str:
    """How LLVM IR text names the global `name`."""
    return f"@{name}" if re.fullmatch(r"[-a-zA-Z$._][-\w$.]*", name) else f'@"{name}"'


def _parse(text: str, what: str):
    """Parse and verify LLVM IR text; its errors become EmulatorError."""
    try:
        module = llvm.parse_assembly(text)
        module.verify()
    except RuntimeError as e:
        raise EmulatorError(f"{what} is not valid LLVM IR: {e}") from e
    return module


def _kernels(module, text: str) -> dict:
    """The `ptx_kernel` functions of the module, their parameter types and whether they wait."""
    names = re.findall(r'^define [^@\n]*\bptx_kernel\b[^@\n]*@("[^"]+"|[-\w$.]+)\(', text, re.M)
    waiting = _waiting_functions(module)
    kernels = {}
    for name in (n.strip('"') for n in names):
        params = []
        for i, arg in enumerate(module.get_function(name).arguments):
            ty = re.sub(r" addrspace\(\d+\)", "", str(arg.type))
            if ty not in ("ptr", "i64", "i32", "float"):
                raise EmulatorError(f"parameter {i} has type {ty}; the emulator passes ptr, "
                                    f"i64, i32 and float", kernel=name)
            params.append(ty)
        kernels[name] = Kernel(name, tuple(params), name in waiting)
    return kernels


def _waiting_functions(module) -> set:
    """The functions that reach a barrier or a shuffle, directly or through calls: their threads
    need fibers. An indirect call may reach any function."""
    calls = {}
    for fn in module.functions:
        callees = set()
        for block in fn.blocks:
            for ins in block.instructions:
                if ins.opcode in ("call", "invoke", "callbr"):
                    callee = list(ins.operands)[-1]
                    direct = callee.value_kind == llvm.ValueKind.function
                    callees.add(callee.name if direct else None)
        calls[fn.name] = callees
    waits = {n for n in calls if re.match(r"llvm\.nvvm\.(barrier|shfl)", n)}
    grew = True
    while grew:
        new = {n for n, callees in calls.items()
               if n not in waits and (callees & waits or (None in callees and waits))}
        waits |= new
        grew = bool(new)
    return waits


def _shared_memory(module, target_data) -> list:
    """(name, bytes) of every shared-memory (addrspace(3)) global."""
    shared = []
    for gv in module.global_variables:
        if "addrspace(3)" not in str(gv.type):
            continue
        if not gv.name:
            raise EmulatorError("an unnamed shared-memory global; name it")
        if gv.is_declaration:
            raise EmulatorError(f"dynamic shared memory (extern __shared__ {_ref(gv.name)}) is "
                                f"not supported")
        shared.append((gv.name, target_data.get_abi_size(gv.global_value_type)))
    return shared


def _rewrite(text: str, libm: set) -> tuple:
    """The module's text as host code (`_REWRITES`, then `_number_sites`). The libdevice
    functions `libm` that the module declares but does not define (the CUDA backend links
    libdevice after the module it hands the emulator) become the host libm's functions of the
    same name: __nv_expf -> expf. Duplicate declarations that renaming created are dropped."""
    for _, pattern, replacement in _REWRITES:
        text = re.sub(pattern, replacement, text, flags=re.M)
    for name in libm:
        text = re.sub(rf"@{name}(?=\()", f"@{name[len('__nv_'):]}", text)
    declared, lines = set(), []
    for line in text.splitlines(keepends=True):
        name = re.match(r'declare [^@]*(@"[^"]+"|@[-\w$.]+)\(', line)
        if name:
            if name.group(1) in declared:
                continue
            declared.add(name.group(1))
        lines.append(line)
    return _number_sites("".join(lines))


def _number_sites(text: str) -> tuple:
    """Give every barrier and shuffle call a number, passed as its first argument: threads
    waiting at different numbers wait at different barriers. (Not the return address: code
    generation merges two identical calls at the ends of an if and an else, convergent or not.)
    Returns the text and, per number, where its call is ("barrier 2 of @kernel")."""
    sites, per_function, function = [], {}, "?"

    def number(m) -> str:
        kind = "barrier" if m.group(1).startswith("barrier") else "shuffle"
        per_function[function, kind] = per_function.get((function, kind), 0) + 1
        sites.append(f"{kind} {per_function[function, kind]} of {function}")
        return f"@slimc_emu.{m.group(1)}(i32 {len(sites) - 1}" + (")" if m.group(2) else ", ")

    lines = []
    for line in text.splitlines(keepends=True):
        defined = re.match(r'define [^@]*(@"[^"]+"|@[-\w$.]+)\(', line)
        function = defined.group(1) if defined else function
        lines.append(re.sub(r"@slimc_emu\.((?:barrier|shfl)[\w.]*)\((\)?)", number, line))
    return "".join(lines), sites


def _glue_ir(kernels: dict, shared: list, arithmetic: set) -> str:
    """Appended to the rewritten module: declarations of the runtime functions the kernels now
    call, the function that fills shared memory, and for each kernel a trampoline
    `void @"slimc_emu.entry.<kernel>"(ptr argv)` that calls it with arguments taken from an array
    of 64-bit words, so that one runtime launches every kernel."""
    out = [f"declare {ret} @slimc_emu.{name}({params})"
           for name, (ret, params) in INTRINSICS.items()]
    out += [f"declare {ARITHMETIC[name][0]} @slimc_emu.{name}({', '.join(ARITHMETIC[name][1])})"
            for name in sorted(arithmetic)]
    out.append("declare void @slimc_emu.fill(ptr, i64)")
    fills = "".join(f"  call void @slimc_emu.fill(ptr {_ref(name)}, i64 {size})\n"
                    for name, size in shared)
    out.append(f"define void @slimc_emu.clear_shared() {{\n{fills}  ret void\n}}")
    for k in kernels.values():
        body, args = [], []
        for i, ty in enumerate(k.params):
            body += [f"  %p{i} = getelementptr i64, ptr %argv, i64 {i}",
                     f"  %w{i} = load i64, ptr %p{i}"]
            if ty == "ptr":
                body.append(f"  %a{i} = inttoptr i64 %w{i} to ptr")
            elif ty == "i32":
                body.append(f"  %a{i} = trunc i64 %w{i} to i32")
            elif ty == "float":
                body += [f"  %b{i} = trunc i64 %w{i} to i32",
                         f"  %a{i} = bitcast i32 %b{i} to float"]
            args.append(f"{ty} %w{i}" if ty == "i64" else f"{ty} %a{i}")
        body.append(f"  call void {_ref(k.name)}({', '.join(args)})")
        out.append(f"define void {_ref('slimc_emu.entry.' + k.name)}(ptr %argv) {{\n"
                   + "\n".join(body) + "\n  ret void\n}")
    return "\n\n".join(out) + "\n"


def _aligned(nbytes: int, align: int = 64) -> np.ndarray:
    """Zeroed bytes at an aligned address. np.zeros maps large sizes lazily: the fibers' stacks
    cost only the pages the threads touch."""
    raw = np.zeros(nbytes + align, np.uint8)
    start = -raw.ctypes.data % align
    return raw[start:start + nbytes]


def _dims(value, what: str, limits: tuple) -> tuple:
    dims = (value,) if isinstance(value, (int, np.integer)) else tuple(value)
    if not 1 <= len(dims) <= 3 or any(not isinstance(d, (int, np.integer)) or d < 1
                                      for d in dims):
        raise EmulatorError(f"{what} must be 1 to 3 positive ints, got {value!r}")
    dims = tuple(int(d) for d in dims) + (1,) * (3 - len(dims))
    if any(d > m for d, m in zip(dims, limits)):
        raise EmulatorError(f"{what} {dims} exceeds CUDA's limits {limits}")
    return dims


# ----------------------------------------------------------------------------------------------
# The emulator
# ----------------------------------------------------------------------------------------------


class Emulator:
    """The kernels of one NVPTX module, JIT-compiled for the host once; `launch` runs one:

        emu = Emulator(llvm_ir, seed=0)
        emu.launch("k0", (8,), (256,), [x.ctypes.data, y.ctypes.data, n])

    `kernels` describes them (parameter types; fibers or a plain loop); `host_ir` is the
    rewritten module before the runtime is linked in, to read what was compiled. The seed fixes
    the block and thread orders of every launch, so a failing schedule replays. One launch at a
    time per emulator (a lock).
    """

    def __init__(self, llvm_ir: str, *, seed: int = 0):
        ensure_llvm_initialized()
        original = _parse(llvm_ir, "the kernel module")
        text = str(original)
        used = set(re.findall(r"@llvm\.nvvm\.([\w.]+)", text))
        unknown = sorted(used - set(INTRINSICS) - set(ARITHMETIC))
        if unknown:
            raise EmulatorError("the emulator does not implement "
                                + ", ".join(f"llvm.nvvm.{u}" for u in unknown))
        machine = self._host_machine()
        self.kernels = _kernels(original, text)
        shared = _shared_memory(original, machine.target_data)
        libm = {f.name for f in original.functions
                if f.is_declaration and f.name.startswith("__nv_")}
        host_ir, self._sites = _rewrite(text, libm)
        self.host_ir = host_ir + _glue_ir(self.kernels, shared, used & set(ARITHMETIC))
        module = _parse(self.host_ir, "the rewritten module (a bug in the emulator's rewrites)")
        runtime = llvm.parse_assembly(runtime_ir(used & set(ARITHMETIC)))
        for m in (module, runtime):
            m.triple = llvm.get_process_triple()
            m.data_layout = str(machine.target_data)
        module.link_in(runtime)
        self._engine = llvm.create_mcjit_compiler(module, machine)
        missing = [f"__nv_{f.name} (libdevice's; the host's libm has no {f.name})"
                   if f"__nv_{f.name}" in libm else f.name for f in module.functions
                   if f.is_declaration and not f.name.startswith("llvm.")
                   and not llvm.address_of_symbol(f.name)]
        if missing:  # MCJIT would abort the process on an unresolved symbol
            raise EmulatorError(f"the module calls {', '.join(missing)}, defined neither in it "
                                f"nor in this process (the runtime needs glibc's makecontext)")
        self._engine.finalize_object()
        self._launch = LAUNCH(self._engine.get_function_address("slimc_emu.launch"))
        self._entries = {name: self._engine.get_function_address(f"slimc_emu.entry.{name}")
                         for name in self.kernels}
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()
        self._threads = np.zeros(0, THREAD)
        self._order = np.zeros(0, np.int32)
        self._stacks = self._contexts = None

    @staticmethod
    def _host_machine():
        """A fresh host target machine (MCJIT takes ownership of the one it is given)."""
        target = llvm.Target.from_triple(llvm.get_process_triple())
        return target.create_target_machine(cpu=llvm.get_host_cpu_name(),
                                            features=llvm.get_host_cpu_features().flatten(),
                                            opt=2)

    def _global(self, name: str, ctype):
        return ctype.from_address(self._engine.get_global_value_address(f"slimc_emu.{name}"))

    def _reserve(self, n: int, fibers: bool) -> None:
        """Per-thread memory for blocks of n threads, kept across launches and grown on need."""
        if n > len(self._order):
            self._threads = np.zeros(n, THREAD)
            self._order = np.zeros(n, np.int32)
            self._global("threads", ctypes.c_void_p).value = self._threads.ctypes.data
            self._stacks = self._contexts = None
        if fibers and self._stacks is None:
            cap = len(self._order)
            self._contexts = _aligned((cap + 1) * CONTEXT_BYTES)
            self._stacks = _aligned(cap * STACK_BYTES).reshape(cap, STACK_BYTES)
            self._stacks[:, :GUARD_BYTES] = _GUARD
            self._global("contexts", ctypes.c_void_p).value = self._contexts.ctypes.data
            self._global("stacks", ctypes.c_void_p).value = self._stacks.ctypes.data
        self._order[:n] = np.arange(n, dtype=np.int32)
        self._global("n", ctypes.c_int32).value = n

    def launch(self, kernel: str, grid, block, args: Sequence) -> None:
        """Run `kernel<<<grid, block>>>(*args)`: grid and block are 1 to 3 ints; args one per
        parameter (an int address for a ptr, ints for i64/i32, a float for float)."""
        info = self.kernels.get(kernel)
        if info is None:
            raise EmulatorError(f"no kernel {kernel!r}; the module has {sorted(self.kernels)}")
        grid3 = _dims(grid, "grid", MAX_GRID)
        block3 = _dims(block, "block", MAX_BLOCK)
        n = block3[0] * block3[1] * block3[2]
        if n > MAX_THREADS:
            raise EmulatorError(f"block {block3} has {n} threads; CUDA allows {MAX_THREADS}",
                                kernel=kernel)
        argv = self._encode(info, args)
        with self._lock:
            self._reserve(n, info.fibers)
            self._global("ntid", ctypes.c_int32 * 3)[:] = block3
            self._global("nctaid", ctypes.c_int32 * 3)[:] = grid3
            self._global("rng", ctypes.c_uint64).value = int(self._rng.integers(2**63))
            blocks = self._rng.permutation(grid3[0] * grid3[1] * grid3[2]).astype(np.int64)
            code = self._launch(self._entries[kernel], argv.ctypes.data, blocks.ctypes.data,
                                len(blocks), int(info.fibers), self._order.ctypes.data)
            if info.fibers and (self._stacks[:n, :GUARD_BYTES] != _GUARD).any():
                raise EmulatorError(f"a thread overflowed its {STACK_BYTES // 1024} KiB stack "
                                    f"(STACK_BYTES)", kernel=kernel)
            if code:
                b = self._global("block", ctypes.c_int64).value
                where = np.unravel_index(b, grid3[::-1])[::-1]
                raise EmulatorError(self._deadlock(code, n, block3),
                                    kernel=kernel, block=tuple(int(i) for i in where))

    @staticmethod
    def _encode(info: Kernel, args: Sequence) -> np.ndarray:
        """The launch arguments as the 64-bit words the kernel's trampoline reads."""
        if len(args) != len(info.params):
            raise EmulatorError(f"takes {len(info.params)} arguments ({', '.join(info.params)}),"
                                f" got {len(args)}", kernel=info.name)
        words = np.zeros(max(1, len(args)), np.uint64)
        for i, (ty, value) in enumerate(zip(info.params, args)):
            if ty == "float":
                words[i] = np.float32(value).view(np.uint32)
            elif isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                words[i] = int(value) & (2**64 - 1)
            else:
                raise EmulatorError(f"argument {i} ({ty}) must be an int, got "
                                    f"{type(value).__name__}", kernel=info.name)
        return words

    def _deadlock(self, code: int, n: int, block3: tuple) -> str:
        """Explain a runtime error code from the threads' states and the sites they wait at."""
        state, site = self._threads["state"][:n], self._threads["site"][:n]

        def thread(t) -> str:
            t, x, xy = int(t), block3[0], block3[0] * block3[1]
            return f"thread {(t % x, t // x % block3[1], t // xy)}"

        def at(t) -> str:
            return f"{thread(t)} at {self._sites[site[t]]}"

        def other(ids) -> int:  # one of the threads ids that waits elsewhere than the first
            return ids[site[ids] != site[ids[0]]][0]

        everyone = np.arange(n)
        at_barrier = everyone[state == AT_BARRIER]
        if code == -1:
            done = everyone[state == FINISHED][0]
            return (f"barrier divergence: {thread(done)} finished while {at(at_barrier[0])} "
                    f"waits; a GPU deadlocks")
        if code == -2:
            return (f"barrier divergence: threads wait at different barriers: "
                    f"{at(at_barrier[0])}, {at(other(at_barrier))}")
        for w0 in range(0, n, WARP):
            lanes = everyone[w0:w0 + WARP]
            shuffling = lanes[state[lanes] == AT_SHUFFLE]
            waiting = lanes[state[lanes] == AT_BARRIER]
            if code == -3 and len(shuffling) and len(waiting):
                return (f"warp divergence: {at(shuffling[0])} waits for its warp, but "
                        f"{at(waiting[0])} waits; a GPU deadlocks")
            if code == -4 and len(set(site[shuffling])) > 1:
                return (f"warp divergence: lanes of one warp wait at different shuffles: "
                        f"{at(shuffling[0])}, {at(other(shuffling))}")
        return f"emulator runtime error {code}"
