"""CPU target description, LLVM initialization, optimization and JIT for the CPU backend.

A `CpuTarget` says what LLVM should generate code for (triple, CPU name, feature string) and
the facts the kernel generators need (vector width in floats, number of vector registers, FMA,
VNNI). `CpuTarget.host()` describes the machine we run on; `CpuTarget.from_name("x86")` etc. map
the user-facing target strings of `compile(graph, target=...)` to one.

Facts about llvmlite 0.50 / LLVM 22 that shape this file:
- llvmlite 0.50 has no legacy pass manager and `llvm.initialize()` raises; we call
  `initialize_native_target()` / `initialize_native_asmprinter()` once (and the all-targets
  variants for cross-compilation).
- MCJIT takes ownership of its TargetMachine: every engine gets a fresh one.
- AOT objects for shared libraries need reloc='pic', codemodel='default'.
- SLP vectorization is OFF by default in the pipeline tuning options, even at level 3.
"""

from __future__ import annotations

import ctypes
import threading
import time
from dataclasses import dataclass, field

import llvmlite.binding as llvm
from llvmlite import ir

from slimc.ir.process_settings import HeldSetting

__all__ = [
    "CpuTarget",
    "JitModule",
    "ensure_llvm_initialized",
    "parse_module",
    "optimize",
    "jit_compile",
    "compile_parts",
    "emit_object",
    "emit_assembly",
    "aot_compile",
]

# --------------------------------------------------------------------------------------------
# LLVM initialization (once per process)
# --------------------------------------------------------------------------------------------

_init_lock = threading.Lock()
_native_ready = False
_all_ready = False


def ensure_llvm_initialized(all_targets: bool = False) -> None:
    """Initialize the native target (and, if asked, every target in the wheel) exactly once."""
    global _native_ready, _all_ready
    if _native_ready and (_all_ready or not all_targets):
        return
    with _init_lock:
        if not _native_ready:
            llvm.initialize_native_target()
            llvm.initialize_native_asmprinter()
            llvm.initialize_native_asmparser()
            _native_ready = True
        if all_targets and not _all_ready:
            llvm.initialize_all_targets()
            llvm.initialize_all_asmprinters()
            _all_ready = True


# LLVM's loop strength reduction, a code generation pass, took a fifth of LLVM's time on
# EfficientNet-B0 (0.66 of 3.0 s) and gained nothing measurable: kernel times with and without
# it were equal within 1-2% (ResNet-18, BERT, MobileNetV2, EfficientNet-B0; README). It is a
# process-wide LLVM option, so it is off only while slimc compiles (numba may share the LLVM).
_no_lsr = HeldSetting(lambda: llvm.set_option("slimc", "-disable-lsr"),
                      lambda _: llvm.set_option("slimc", "-disable-lsr=false"))


def without_lsr():
    """A block in which LLVM's code generation skips loop strength reduction."""
    return _no_lsr.held()


# --------------------------------------------------------------------------------------------
# Target description
# --------------------------------------------------------------------------------------------


def _feature_set(features: str) -> set[str]:
    """The enabled features ('+avx2' -> 'avx2') of an LLVM feature string."""
    return {f[1:] for f in features.split(",") if f.startswith("+")}


@dataclass(frozen=True)
class CpuTarget:
    """What the CPU backend generates code for.

    name:            user-facing name: "x86" (host x86-64), "x86-64-v3", "aarch64", or "host".
    triple:          LLVM target triple.
    cpu:             LLVM CPU name (e.g. "znver3", "rocketlake", "x86-64-v3", "generic").
    features:        LLVM feature string ("+avx2,+fma,...").
    vector_width:    floats per vector register the kernels should use: 16 with avx512f,
                     8 with avx2, 4 otherwise (SSE / NEON).
    num_vector_regs: architectural vector registers (32 with AVX-512 or on AArch64, else 16).
    has_fma, has_avx512_vnni: feature flags the kernel generators consult.
    is_host:         True when code for this target can run in this process.
    """

    name: str
    triple: str
    cpu: str
    features: str
    vector_width: int
    num_vector_regs: int
    has_fma: bool
    has_avx512_vnni: bool = False
    is_host: bool = False
    _dl_cache: dict = field(default_factory=dict, repr=False, compare=False, hash=False)

    # the target strings `from_name` knows (slimc.Target sends these to the CPU backend)
    NAMES = ("x86", "x86_64", "x86-64", "host", "native", "x86-64-v3", "x86-64-v4", "aarch64",
             "arm64", "aarch64-generic", "aarch64-neoverse-v2")

    # ---- construction -----------------------------------------------------------------

    @classmethod
    def from_parts(cls, name: str, triple: str, cpu: str, features: str,
                   is_host: bool = False) -> "CpuTarget":
        """A target from an explicit triple, CPU and feature string; the vector facts are
        derived from the features. is_host: code for it may run in this process."""
        feats = _feature_set(features)
        arch = triple.split("-")[0]
        if arch in ("aarch64", "arm64"):
            vw, nregs, fma, vnni = 4, 32, True, False
        else:
            if "avx512f" in feats:
                vw, nregs = 16, 32
            elif "avx2" in feats or "avx" in feats:
                vw, nregs = 8, 16
            else:
                vw, nregs = 4, 16
            fma = "fma" in feats
            vnni = "avx512vnni" in feats
        return cls(name=name, triple=triple, cpu=cpu, features=features, vector_width=vw,
                   num_vector_regs=nregs, has_fma=fma, has_avx512_vnni=vnni, is_host=is_host)

    @classmethod
    def host(cls) -> "CpuTarget":
        """The machine this process runs on (host CPU name and its full feature string)."""
        global _host_target
        if _host_target is None:
            ensure_llvm_initialized()
            triple = llvm.get_process_triple()
            cpu = llvm.get_host_cpu_name()
            features = llvm.get_host_cpu_features().flatten()
            arch = triple.split("-")[0]
            name = "aarch64" if arch in ("aarch64", "arm64") else "x86"
            _host_target = cls.from_parts(name, triple, cpu, features, is_host=True)
        return _host_target

    @classmethod
    def from_name(cls, name: "str | CpuTarget") -> "CpuTarget":
        """Map a target string to a CpuTarget.

        "x86", "host", "native": the host machine (must be x86-64 for "x86").
        "x86-64-v3": portable AVX2+FMA x86-64 (runs on both the Zen 3 and the Xeon machines).
        "x86-64-v4": portable AVX-512 x86-64.
        "aarch64" / "aarch64-neoverse-v2": AArch64 Linux with NEON (4 floats a vector, 32
        vector registers); from an x86-64 host a cross target: compiled ahead of time to an
        ELF object, never JIT-compiled."""
        if isinstance(name, CpuTarget):
            return name
        key = name.strip().lower()
        if key in ("host", "native"):
            return cls.host()
        if key in ("x86", "x86_64", "x86-64"):
            h = cls.host()
            if h.name != "x86":
                raise ValueError(f"target 'x86' means the host x86-64 CPU, but the host is "
                                 f"{h.triple}")
            return h
        if key in ("x86-64-v3", "x86-64-v4"):
            ensure_llvm_initialized()
            h_triple = llvm.get_process_triple()
            triple = h_triple if h_triple.startswith("x86_64") else "x86_64-unknown-linux-gnu"
            if key == "x86-64-v3":
                features = ("+64bit,+avx,+avx2,+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+lzcnt,"
                            "+movbe,+popcnt,+sahf,+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave")
            else:
                features = ("+64bit,+avx,+avx2,+avx512f,+avx512bw,+avx512cd,+avx512dq,+avx512vl,"
                            "+bmi,+bmi2,+cmov,+cx16,+cx8,+f16c,+fma,+lzcnt,+movbe,+popcnt,+sahf,"
                            "+sse,+sse2,+sse3,+sse4.1,+sse4.2,+ssse3,+xsave")
            t = cls.from_parts(key, triple, key, features, is_host=False)
            # Runs here if the host has every feature it needs.
            hf = _feature_set(cls.host().features) if cls.host().name == "x86" else set()
            runnable = _feature_set(features) <= hf
            return cls(**{**t.__dict__, "is_host": runnable, "_dl_cache": {}})
        if key in ("aarch64", "arm64", "aarch64-generic", "aarch64-neoverse-v2"):
            ensure_llvm_initialized(all_targets=True)
            cpu = "neoverse-v2" if key.endswith("neoverse-v2") else "generic"
            features = "+neon,+fp-armv8"
            # baseline AArch64 (NEON is mandatory there): runs in-process on an AArch64 host
            return cls.from_parts("aarch64", "aarch64-unknown-linux-gnu", cpu, features,
                                   is_host=_host_arch() in ("aarch64", "arm64"))
        raise ValueError(f"unknown CPU target {name!r}; expected 'x86', 'x86-64-v3', "
                         f"'x86-64-v4', 'aarch64' or 'host'")

    # ---- derived facts ----------------------------------------------------------------

    @property
    def arch(self) -> str:
        return self.triple.split("-")[0]

    @property
    def identity(self) -> str:
        """What decides the machine code: triple, CPU and features (a cache key's part)."""
        return f"{self.triple}|{self.cpu}|{self.features}"

    @property
    def feature_set(self) -> frozenset[str]:
        return frozenset(_feature_set(self.features))

    @property
    def has_avx512f(self) -> bool:
        return "avx512f" in self.feature_set

    @property
    def has_avx2(self) -> bool:
        return "avx2" in self.feature_set

    # ---- LLVM objects -----------------------------------------------------------------

    def create_target_machine(self, *, aot: bool = False, opt: int = 3) -> llvm.TargetMachine:
        """A fresh TargetMachine. aot=True: reloc='pic', codemodel='default' (shared objects);
        otherwise the JIT defaults. Never share one between JIT engines."""
        ensure_llvm_initialized(all_targets=not self.is_host or self.arch != _host_arch())
        tgt = llvm.Target.from_triple(self.triple)
        if aot:
            return tgt.create_target_machine(cpu=self.cpu, features=self.features, opt=opt,
                                             reloc="pic", codemodel="default")
        return tgt.create_target_machine(cpu=self.cpu, features=self.features, opt=opt)

    @property
    def data_layout(self) -> str:
        dl = self._dl_cache.get("dl")
        if dl is None:
            dl = str(self.create_target_machine().target_data)
            self._dl_cache["dl"] = dl
        return dl

    def new_ir_module(self, name: str = "slimc") -> ir.Module:
        """An llvmlite.ir Module with this target's triple and data layout set."""
        m = ir.Module(name=name)
        m.triple = self.triple
        m.data_layout = self.data_layout
        m.has_avx512f = self.has_avx512f  # vmath's AVX-512 forms (llvm.x86 intrinsics)
        return m


_host_target: CpuTarget | None = None


def _host_arch() -> str:
    return llvm.get_process_triple().split("-")[0]


# --------------------------------------------------------------------------------------------
# Parsing, optimization, JIT, AOT
# --------------------------------------------------------------------------------------------


def parse_module(ir_text_or_module, target: CpuTarget, context=None) -> llvm.ModuleRef:
    """Parse IR text or an llvmlite.ir.Module into a verified ModuleRef for `target`, in
    `context` (default LLVM's global one; a thread needs a context of its own)."""
    ensure_llvm_initialized(all_targets=not target.is_host)
    if isinstance(ir_text_or_module, llvm.ModuleRef):
        mod = ir_text_or_module
    else:
        mod = llvm.parse_assembly(str(ir_text_or_module), context=context)
    mod.triple = target.triple
    mod.data_layout = target.data_layout
    mod.verify()
    return mod


def optimize(mod: llvm.ModuleRef, target: CpuTarget, level: int = 3, *,
             loop_unrolling: bool = True, inlining_threshold: int | None = None,
             pipeline: str = "O3") -> llvm.ModuleRef:
    """Run `pipeline` on `mod` in place and return it. "O3": the new-pass-manager
    O<level> pipeline (loop and SLP vectorization on); "vector", for modules of explicit
    vector code: SROA, instcombine and CFG simplification only (the rest of O3 gains such code
    nothing and costs seconds). level 0 does nothing."""
    if level <= 0:
        return mod
    tm = target.create_target_machine(opt=min(level, 3))
    pto = llvm.create_pipeline_tuning_options(speed_level=min(level, 3))
    pto.loop_vectorization = True
    pto.slp_vectorization = True
    pto.loop_unrolling = loop_unrolling
    pto.loop_interleaving = True
    if inlining_threshold is not None:
        pto.inlining_threshold = inlining_threshold
    pb = llvm.create_pass_builder(tm, pto)
    if pipeline == "vector":
        pm = llvm.create_new_module_pass_manager()
        pm.add_sroa_pass()
        pm.add_instruction_combine_pass()
        pm.add_simplify_cfg_pass()
    elif pipeline == "O3":
        pm = pb.getModulePassManager()
    else:
        raise ValueError(f"unknown pipeline {pipeline!r}")
    pm.run(mod, pb)
    return mod


class JitModule:
    """JIT-compiled code: one object or several (a model compiled in parts), loaded into one
    engine that links them. Keeps the engine (and thus the code) alive.

    `address(name)` gives a function's address; `cfunc(name, restype, *argtypes)` wraps it in
    ctypes. Keep this object referenced as long as any address or wrapper is used.
    """

    def __init__(self, target: CpuTarget, objects: list, ir_text: str):
        empty = llvm.parse_assembly("")
        empty.triple = target.triple
        empty.data_layout = target.data_layout
        self._engine = llvm.create_mcjit_compiler(empty, target.create_target_machine(opt=3))
        for obj in objects:
            self._engine.add_object_file(llvm.ObjectFileRef.from_data(obj))
        self._engine.finalize_object()
        self.target = target
        self._cache: dict[str, int] = {}
        self.llvm_ir = ir_text  # the optimized IR that was compiled

    def address(self, name: str) -> int:
        addr = self._cache.get(name)
        if addr is None:
            addr = self._engine.get_function_address(name)
            if not addr:
                raise KeyError(f"function {name!r} not found in JIT module")
            self._cache[name] = addr
        return addr

    def cfunc(self, name: str, restype, *argtypes):
        return ctypes.CFUNCTYPE(restype, *argtypes)(self.address(name))


def jit_compile(ir_text_or_module, target: CpuTarget | None = None, *,
                opt_level: int = 3, times: dict | None = None) -> JitModule:
    """Parse, optimize (new pass manager, O<opt_level>) and MCJIT-compile IR for `target`
    (default: host). The target must be runnable in this process. `times`, if given, gets
    the seconds of "llvm_opt" (parsing and the pass pipeline) and "machine_code"."""
    target = target or CpuTarget.host()
    _check_runnable(target)
    text, obj = aot_compile(ir_text_or_module, target, opt_level=opt_level, times=times)
    # One code generation serves the JIT, the compile cache and export: the engine loads the
    # position-independent object that `cc -shared` links, instead of compiling its own.
    t0 = time.perf_counter()
    jit = JitModule(target, [obj], text)
    if times is not None:
        times["machine_code"] += time.perf_counter() - t0
    return jit


def _check_runnable(target: CpuTarget) -> None:
    if not target.is_host:
        raise ValueError(f"cannot JIT code for target {target.name} ({target.triple}, "
                         f"{target.cpu}) on this host")


@dataclass
class CompiledParts:
    """A module compiled in parts: one object and one optimized IR text per part."""

    objects: list
    ir_texts: list
    times: dict

    @property
    def llvm_ir(self) -> str:
        return "\n".join(self.ir_texts)


def compile_parts(parts, target: CpuTarget, *, opt_level: int = 3, jobs: int = 1,
                  one_object: bool = False) -> CompiledParts:
    """Each part (parts.Part: text, pipeline) parsed, optimized with its pipeline and compiled
    to a position-independent object, `jobs` parts at a time in threads (llvmlite's calls
    into LLVM release the GIL). `one_object`: the optimized parts are linked into one module
    and compiled to one object instead (an artifact for another machine holds one). The
    times are wall seconds, "llvm_opt" and "machine_code" in the proportion the parts spent
    in each."""
    from concurrent.futures import ThreadPoolExecutor

    ensure_llvm_initialized(all_targets=not target.is_host)
    target.data_layout  # noqa: B018  (computed once, before the threads)

    def one(i: int):
        # an LLVM context is not thread-safe: each part gets its own
        part, context = parts[i], llvm.create_context()
        t0 = time.perf_counter()
        mod = parse_module(part.text, target, context)
        optimize(mod, target, opt_level, pipeline=part.pipeline)
        text = str(mod)
        t1 = time.perf_counter()
        obj = None if one_object else target.create_target_machine(aot=True).emit_object(mod)
        return obj, part.header(i, len(parts)) + "\n" + text, t1 - t0, time.perf_counter() - t1

    start = time.perf_counter()
    order = sorted(range(len(parts)), key=lambda i: -parts[i].size)
    with without_lsr():
        if jobs > 1 and len(parts) > 1:
            with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="slimc-llvm") as pool:
                done = dict(zip(order, pool.map(one, order)))
        else:
            done = {i: one(i) for i in order}
    results = [done[i] for i in range(len(parts))]
    objects = [r[0] for r in results]
    if one_object:  # the optimized parts, parsed again into one context, linked
        t1 = time.perf_counter()
        context = llvm.create_context()
        mods = [parse_module(r[1], target, context) for r in results]
        for mod in mods[1:]:
            mods[0].link_in(mod)
        with without_lsr():
            objects = [target.create_target_machine(aot=True).emit_object(mods[0])]
        return CompiledParts(objects, [r[1] for r in results],
                             {"llvm_opt": t1 - start, "machine_code": time.perf_counter() - t1})
    wall = time.perf_counter() - start
    for part, r in zip(parts, results):
        part.seconds = (r[2], r[3])
    opt, mc = sum(r[2] for r in results), sum(r[3] for r in results)
    share = opt / (opt + mc) if opt + mc > 0 else 0.0
    return CompiledParts(objects, [r[1] for r in results],
                         {"llvm_opt": wall * share, "machine_code": wall * (1 - share)})


def emit_object(ir_text_or_module, target: CpuTarget, *, opt_level: int = 3) -> bytes:
    """Optimize and compile to a position-independent ELF object (for `cc -shared`)."""
    mod = parse_module(ir_text_or_module, target)
    optimize(mod, target, opt_level)
    return target.create_target_machine(aot=True).emit_object(mod)


def emit_assembly(ir_text_or_module, target: CpuTarget, *, opt_level: int = 3) -> str:
    """Optimize and return the target assembly text."""
    mod = parse_module(ir_text_or_module, target)
    optimize(mod, target, opt_level)
    return target.create_target_machine(aot=True).emit_assembly(mod)


def aot_compile(ir_text_or_module, target: CpuTarget, *, opt_level: int = 3,
                times: dict | None = None) -> tuple[str, bytes]:
    """Optimize once for `target` and compile ahead of time: (optimized IR text, ELF object).

    This is the path of a target this process cannot run (no JIT for a foreign CPU). The IR
    text is taken before code generation, which rewrites the module in place (CodeGenPrepare),
    so `emit_assembly(ir_text, target, opt_level=0)` shows exactly the code of the object.
    """
    t0 = time.perf_counter()
    mod = parse_module(ir_text_or_module, target)
    optimize(mod, target, opt_level)
    text = str(mod)
    t1 = time.perf_counter()
    obj = target.create_target_machine(aot=True).emit_object(mod)
    if times is not None:
        times["llvm_opt"] = t1 - t0
        times["machine_code"] = time.perf_counter() - t1
    return text, obj
