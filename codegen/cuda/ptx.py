"""From the LLVM module of a model's GPU kernels to PTX, and PTX to ptxas's verdict.

    legal_callees      every function the kernels call is one NVPTX can lower: LLVM's NVPTX
                       backend *aborts the process* on some math intrinsics (llvm.exp.f32,
                       llvm.log.f32, llvm.tanh.f32: "no libcall available"), so anything
                       outside a list of tested ones is refused before it gets there
    link_libdevice     math without a PTX instruction (log, pow, sin, expm1, ...) calls
                       libdevice's __nv_* functions (the `nvidia-nvvm` wheel ships its bitcode),
                       linked in and made internal so only what is used stays
    compile_ptx        optimize for the GPU (LLVM's O3 with the NVPTX target machine), emit PTX
    ptxas              assemble PTX for an architecture (the `nvidia-cuda-nvcc` wheel's ptxas
                       runs without a GPU): registers, shared memory, spills, or its errors

The optimized module (`CompiledPtx.llvm_ir`) is what both NVPTX and the emulator
(runtime/gpu_emulator.py) compile: the GPU's code and the CPU's run of it are one module,
except for libdevice's functions, which the emulator takes from the host's libm.
"""

from __future__ import annotations

import glob
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from typing import Optional

from slimc.ir.errors import InternalError, UnsupportedError

# llvm.<name>.<type> intrinsics NVPTX lowers (each tried on LLVM 22 here; exp, exp10, log,
# log2, log10, pow, sin, cos, tan and tanh abort it)
NVPTX_INTRINSICS = frozenset({
    "sqrt", "fabs", "floor", "ceil", "trunc", "rint", "nearbyint", "round", "roundeven", "fma",
    "fmuladd", "minnum", "maxnum", "minimum", "maximum", "copysign", "exp2", "smax", "smin",
    "umax", "umin", "abs", "ctpop", "ctlz", "cttz", "memcpy", "memset", "memmove", "assume",
    "lifetime", "experimental", "umul", "smul", "uadd", "sadd", "usub", "ssub", "fshl", "fshr",
    "bswap", "bitreverse", "is", "vector",
})
_DECLARE = re.compile(r"^declare [^@]*@(\"?[\w.$]+\"?)\(", re.M)
_DEFINED = re.compile(r"@(\"?[\w.$]+\"?)\(")


@dataclass
class CompiledPtx:
    llvm_ir: str  # the optimized kernels, before libdevice is linked (the emulator runs it)
    ptx: str
    libdevice: tuple  # the __nv_* functions linked in


def legal_callees(llvm_ir: str) -> None:
    """Refuse (UnsupportedError) a module that declares a function NVPTX cannot lower,
    naming the kernels that call it."""
    bad = []
    for name in _DECLARE.findall(llvm_ir):
        name = name.strip('"')
        if name.startswith("llvm.nvvm.") or name.startswith("__nv_"):
            continue
        if name.startswith("llvm.") and name.split(".")[1] in NVPTX_INTRINSICS:
            continue
        bad.append(name)
    if not bad:
        return
    callers = {}
    for body in llvm_ir.split("\ndefine ")[1:]:
        caller = _DEFINED.search(body)
        for name in bad:
            if (f"@{name}(" in body or f'@"{name}"(' in body) and caller:
                callers.setdefault(name, []).append(caller.group(1).strip('"'))
    lines = [f"  {name} (called by {', '.join(callers.get(name, ['?'])[:3])})"
             for name in sorted(bad)]
    raise UnsupportedError("the CUDA backend cannot call these from a kernel (no GPU "
                           "lowering):\n" + "\n".join(lines))


def libdevice_path() -> Optional[str]:
    """libdevice.10.bc from the `nvidia-nvvm` wheel (or a CUDA toolkit), or None."""
    env = os.environ.get("SLIMC_LIBDEVICE")
    if env:
        return env
    roots = []
    try:
        import nvidia

        roots += [os.path.join(p, "*", "nvvm", "libdevice") for p in nvidia.__path__]
        roots += [os.path.join(p, "cuda_nvcc", "nvvm", "libdevice") for p in nvidia.__path__]
    except ImportError:
        pass
    roots += ["/usr/local/cuda/nvvm/libdevice"]
    for root in roots:
        hits = sorted(glob.glob(os.path.join(root, "libdevice*.bc")))
        if hits:
            return hits[-1]
    return None


def link_libdevice(mod) -> tuple:
    """Link libdevice into `mod` (an llvmlite ModuleRef) if it calls __nv_* functions;
    returns their names."""
    import llvmlite.binding as llvm

    wanted = sorted({f.name for f in mod.functions if f.is_declaration and
                     f.name.startswith("__nv_")})
    if not wanted:
        return ()
    path = libdevice_path()
    if path is None:
        raise UnsupportedError(f"kernels call {', '.join(wanted)}, which come from CUDA's "
                               f"libdevice: install it with `pip install nvidia-nvvm` (or set "
                               f"SLIMC_LIBDEVICE to libdevice.10.bc)")
    with open(path, "rb") as f:
        lib = llvm.parse_bitcode(f.read())
    lib.triple, lib.data_layout = mod.triple, mod.data_layout
    mod.link_in(lib)
    for fn in mod.functions:
        if fn.name.startswith("__nv_") and not fn.is_declaration:
            fn.linkage = llvm.Linkage.internal
    return tuple(wanted)


def compile_ptx(module, target, opt_level: int = 3) -> CompiledPtx:
    """The module (llvmlite.ir.Module or text) optimized and emitted as PTX for `target`.

    The kernels are optimized first, alone: that module is `llvm_ir`, what a user reads and
    what the emulator runs (with the host's libm for libdevice's __nv_* functions: they are
    NVIDIA's code, not ours). Then libdevice is linked in and the whole optimized again, so
    its functions inline into the kernels, and NVPTX emits the PTX."""
    import llvmlite.binding as llvm

    from slimc.codegen.cpu.target import optimize

    text = str(module)
    legal_callees(text)
    target.create_target_machine()  # initializes NVPTX
    mod = llvm.parse_assembly(text)
    mod.triple, mod.data_layout = target.triple, target.data_layout
    mod.verify()
    optimize(mod, target, level=opt_level)
    optimized = str(mod)
    legal_callees(optimized)
    linked = link_libdevice(mod)
    if linked:
        optimize(mod, target, level=max(opt_level, 1))
    return CompiledPtx(optimized, target.create_target_machine().emit_assembly(mod), linked)


# ----- ptxas ----------------------------------------------------------------------------------

def ptxas_path() -> Optional[str]:
    """ptxas from the `nvidia-cuda-nvcc` wheel (CUDA 13 or 12 layout), PATH, or None."""
    env = os.environ.get("SLIMC_PTXAS")
    if env:
        return env
    try:
        import nvidia

        for p in nvidia.__path__:
            for sub in ("cu13/bin/ptxas", "cuda_nvcc/bin/ptxas"):
                if os.path.exists(os.path.join(p, sub)):
                    return os.path.join(p, sub)
    except ImportError:
        pass
    from shutil import which

    return which("ptxas")


@dataclass
class PtxasReport:
    """What ptxas says of each kernel: registers, shared bytes, spill bytes."""

    arch: str
    cubin: bytes
    kernels: dict  # name -> {"registers": int, "shared": int, "spill_stores": int, ...}
    log: str

    def spills(self) -> dict:
        return {k: v for k, v in self.kernels.items()
                if v.get("spill_stores", 0) or v.get("spill_loads", 0)}


_FUNCTION = re.compile(r"Compiling entry function '([^']+)'")
_USED = re.compile(r"Used (\d+) registers")
_SMEM = re.compile(r"(\d+) bytes smem")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas(ptx: str, arch: str) -> PtxasReport:
    """Assemble `ptx` for `arch` ("sm_90") with ptxas; InternalError with its messages if it
    refuses, UnsupportedError if ptxas is not installed."""
    exe = ptxas_path()
    if exe is None:
        raise UnsupportedError("ptxas is not installed: `pip install nvidia-cuda-nvcc`")
    with tempfile.TemporaryDirectory(prefix="slimc-ptxas-") as tmp:
        src, out = os.path.join(tmp, "module.ptx"), os.path.join(tmp, "module.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        run = subprocess.run([exe, f"-arch={arch}", "-v", src, "-o", out],
                             capture_output=True, text=True)
        if run.returncode != 0:
            raise InternalError(f"ptxas -arch={arch} refused the PTX:\n{run.stderr[-4000:]}",
                                where="ptxas")
        with open(out, "rb") as f:
            cubin = f.read()
    log = run.stdout + run.stderr
    kernels, current = {}, None
    for line in log.splitlines():
        m = _FUNCTION.search(line)
        if m:
            current = kernels.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        if (m := _USED.search(line)):
            current["registers"] = int(m.group(1))
            if (s := _SMEM.search(line)):
                current["shared"] = int(s.group(1))
        if (m := _SPILL.search(line)):
            current["spill_stores"], current["spill_loads"] = int(m.group(1)), int(m.group(2))
    return PtxasReport(arch, cubin, kernels, log)
