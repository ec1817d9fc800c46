"""Export a compiled module to a directory, and load it back with numpy and ctypes only.

An artifact is a directory:

    model.so        the kernels and the entry function: LLVM's object output linked by `cc`
    weights.bin     the constants, prepacked, one 64-byte-aligned blob
    manifest.json   format version, inputs and outputs, target triple, CPU and features,
                    versions, the entry function's C signature, and the SHA-256 of each file

For a foreign architecture (``target="aarch64"`` on x86-64) the directory also holds the
object, ``model.o``, and ``model.so`` only when a cross linker is found (``SLIMC_CROSS_CC``,
else ``aarch64-linux-gnu-gcc`` on PATH); the host's `cc` cannot link another architecture.
Either one runs on the target with a small C driver: see ``entry`` in the manifest.

`load` verifies every checksum (a flipped byte anywhere is refused), refuses a newer format or
an artifact whose CPU features this host lacks, and never unpickles anything. The checksums
catch corruption, not a malicious author: an artifact is native code, so load only artifacts
you trust.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile

import numpy as np

from slimc.ir.errors import SlimcError

from slimc.ir.buffers import aligned_zeros, small_pages

from .native import ENTRY_TYPE, EXACT_TYPE, RUN_TYPE, TIMED_TYPE, NativeModule

# The artifact's format, in manifest.json. It bumps when an artifact this slimc writes would
# be misread by the slimc before it, or one that slimc wrote would be misread now: a manifest
# field added that a loader must understand, renamed or removed; the entry's signature; the
# weights blob's layout; the set of files. `load` refuses every other format and names both.
# History: 1 (the first).
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"
OBJECT = "model.o"  # only in artifacts for a foreign architecture
WEIGHTS = "weights.bin"
# What a C caller on the target needs to know (runtime/native.py calls it the same way).
ENTRY_SIGNATURE = "void slimc_main(void **inputs, void **outputs, void *arena, void *weights)"

# LLVM feature name -> /proc/cpuinfo flag, for the features kernels may use. A feature the
# artifact was built with and the host lacks means illegal instructions: refused at load.
CPUINFO_FLAG = {
    "sse4.1": "sse4_1", "sse4.2": "sse4_2", "avx": "avx", "avx2": "avx2", "fma": "fma",
    "f16c": "f16c", "bmi": "bmi1", "bmi2": "bmi2", "avx512f": "avx512f", "avx512bw": "avx512bw",
    "avx512dq": "avx512dq", "avx512vl": "avx512vl", "avx512cd": "avx512cd",
    "avx512vnni": "avx512_vnni", "avx512bf16": "avx512_bf16", "avx512fp16": "avx512_fp16",
    "avxvnni": "avx_vnni", "amx-tile": "amx_tile", "amx-int8": "amx_int8", "amx-bf16": "amx_bf16",
}


class ArtifactError(SlimcError):
    pass


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _spec(name, dtype, shape, text) -> dict:
    return {"name": name, "dtype": np.dtype(dtype).str, "shape": list(shape), "type": text}


def _linker(target) -> "str | None":
    """The C compiler driver that links a shared library for `target`: the host's `cc` for
    the host's architecture (required), a cross gcc for another one (None if absent: the
    artifact then holds the object only)."""
    if target.arch == _host_arch():
        cc = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
        if cc is None:
            raise SlimcError("exporting needs a C compiler driver (cc) to link the shared "
                             "library; none was found")
        return cc
    return shutil.which(os.environ.get("SLIMC_CROSS_CC") or f"{target.arch}-linux-gnu-gcc")


def export(compiled, path: str, checksums: bool = True) -> None:
    """Write `compiled` (a runtime.compiled.CompiledModule) as an artifact directory. Without
    `checksums` (the compile cache's own entries: hashing the weights cost 0.1 s per 160 MB)
    the manifest lists the files with no digest, and only `load(verify=False)` reads it."""
    from importlib.metadata import PackageNotFoundError, version

    import llvmlite

    try:
        __version__ = version("slimc")  # the installed package's (runtime cannot import slimc/)
    except PackageNotFoundError:
        __version__ = "unknown"

    os.makedirs(path, exist_ok=True)
    if getattr(compiled, "program", None) is not None:
        return _export_cuda(compiled, path, checksums, __version__)
    t = compiled.target
    objects = compiled.objects()
    libraries = ["m"] + (["gomp"] if "GOMP_parallel" in compiled.llvm_ir else [])
    foreign = t.arch != _host_arch()
    lib_path = os.path.join(path, LIBRARY)
    with tempfile.TemporaryDirectory() as tmp:
        if foreign and len(objects) != 1:
            raise SlimcError(f"an artifact for another machine holds one object; this module "
                             f"has {len(objects)}")
        obj_paths = []
        for i, obj in enumerate(objects):
            obj_paths.append(os.path.join(path if foreign else tmp, OBJECT if i == 0 else
                                          f"part{i}.o"))
            with open(obj_paths[-1], "wb") as f:
                f.write(obj)
        cc = _linker(t)
        if cc is not None:
            cmd = [cc, "-shared", "-o", lib_path] + obj_paths + [f"-l{x}" for x in libraries]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise SlimcError(f"linking the artifact failed ({' '.join(cmd)}):\n{done.stderr}")
        elif os.path.exists(lib_path):
            os.remove(lib_path)  # a library left by an earlier export into this folder
    compiled._weights.tofile(os.path.join(path, WEIGHTS))
    files = ([LIBRARY] if cc is not None else []) + ([OBJECT] if foreign else []) + [WEIGHTS]
    manifest = {
        "format": FORMAT_VERSION,
        "name": compiled.graph.name,
        "slimc_version": __version__,
        "llvmlite_version": llvmlite.__version__,
        "target": {"name": t.name, "triple": t.triple, "cpu": t.cpu, "features": t.features},
        "threads": compiled.threads,  # 0: as many as OpenMP gives on the running machine
        "entry": {"symbol": "slimc_main", "signature": ENTRY_SIGNATURE,
                  "link_libraries": libraries},
        "inputs": [_spec(*s) for s in compiled._inputs],
        "outputs": [_spec(*s) for s in compiled._outputs],
        "output_sources": [list(s) for s in compiled._sources],
        "arena_bytes": compiled._arena_bytes,
        "kernels": [_kernel_entry(k) for k in compiled.kernels],
        "memory": {"arena_bytes": compiled.memory.arena_bytes,
                   "intermediates_bytes": compiled.memory.intermediates_bytes,
                   "weights_bytes": compiled.memory.weights_bytes,
                   "code_bytes": os.path.getsize(os.path.join(path, files[0]))},
        "files": {name: _sha256(os.path.join(path, name)) if checksums else None
                  for name in files},
        "file_bytes": {name: os.path.getsize(os.path.join(path, name)) for name in files},
    }
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)


def add_checksums(path: str) -> None:
    """Give an artifact written without checksums (a compile-cache entry, copied out by
    `Module.export` of a module the cache served) the digests `load` verifies."""
    mpath = os.path.join(path, MANIFEST)
    with open(mpath) as f:
        manifest = json.load(f)
    files = manifest.get("files", {})
    for name, digest in files.items():
        if digest is None:
            files[name] = _sha256(os.path.join(path, name))
    with open(mpath, "w") as f:
        json.dump(manifest, f, indent=1)


# The attributes that record a choice a cost model or the target made (a Winograd tile, a
# sparse format, the blocked layout's block): an artifact says how its code was chosen.
CHOICES = {"winograd_conv2d": ("tile",),
           "sparse_matmul": ("block", "transpose_out", "tiled", "x_rows"),
           "sparse_conv": ("block",), "to_blocked": ("block",)}


def _kernel_entry(kernel) -> dict:
    entry = {"name": kernel.name, "ops": kernel.ops}
    if getattr(kernel, "pipeline", None):
        entry["pipeline"] = kernel.pipeline
    chosen = [{"op": n.op, "node": n.name, **{a: n.attrs.get(a) for a in CHOICES[n.op]}}
              for n in getattr(kernel, "nodes", ()) if n.op in CHOICES]
    if chosen:
        entry["choices"] = chosen
    return entry


def _host_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _map_weights(path: str) -> np.ndarray:
    """The weights blob, mapped copy-on-write: a page-aligned start (the kernels' 64-byte
    alignment), nothing read before a kernel touches it, and the page cache shared by every
    process that loads the same artifact."""
    if os.path.getsize(path) == 0:
        return aligned_zeros(0)
    return np.memmap(path, dtype=np.uint8, mode="c")


def _host_arch() -> str:
    m = platform.machine().lower()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(m, m)


class LoadedModule(NativeModule):
    """An exported artifact, loaded. `manifest` holds what export wrote."""

    def __init__(self, path: str, manifest: dict, library, weights: np.ndarray):
        entry = ENTRY_TYPE(("slimc_main", library))
        run = RUN_TYPE(("slimc_run", library))
        call = EXACT_TYPE(("slimc_exact", library)) if hasattr(library, "slimc_exact") \
            else None  # (an older artifact's slimc_call: its pointer tables serve)
        timed = TIMED_TYPE(("slimc_timed", library)) if hasattr(library, "slimc_timed") \
            else None  # (an artifact of an older slimc has none)
        specs = lambda items: [(s["name"], np.dtype(s["dtype"]), tuple(s["shape"]), s["type"])
                               for s in items]
        super().__init__(entry, specs(manifest["inputs"]), specs(manifest["outputs"]),
                         [tuple(s) for s in manifest["output_sources"]], manifest["arena_bytes"],
                         weights, manifest.get("name", path), run,
                         [(k["name"], k["ops"]) for k in manifest.get("kernels", [])], call,
                         timed)
        self.path = path
        self.manifest = manifest
        self._library = library  # keeps the code mapped


def load(path: str, verify: bool = True) -> LoadedModule:
    """Load an artifact written by `Module.export`. Only load artifacts you trust. The weights
    file is mapped, not read (copy-on-write: the file never changes); `verify=False` skips the
    checksums (the compile cache, whose entries appear by an atomic rename)."""
    with small_pages():  # see there
        return _load(path, verify)


def _verify_files(path: str, manifest: dict, verify: bool) -> None:
    """Every file the manifest lists is there, of its size, and (with `verify`) matches its
    checksum; else ArtifactError."""
    for name, digest in manifest.get("files", {}).items():
        fpath = os.path.join(path, name)
        if os.path.basename(name) != name or not os.path.isfile(fpath):
            raise ArtifactError(f"artifact file {name!r} is missing")
        size = os.path.getsize(fpath)
        if size != manifest.get("file_bytes", {}).get(name, size):
            raise ArtifactError(f"artifact file {name!r} is not the size its manifest gives: "
                                f"the artifact is damaged; refused")
        if verify and digest is None:
            raise ArtifactError(f"artifact file {name!r} has no checksum (a compile-cache "
                                f"entry?): refused; write artifacts with Module.export")
        if verify and _sha256(fpath) != digest:
            raise ArtifactError(f"artifact file {name!r} does not match its checksum: the "
                                f"artifact is corrupt or was modified; refused")


def _load(path: str, verify: bool) -> LoadedModule:
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        raise ArtifactError(f"{path!r} is not a slimc artifact: {MANIFEST} is missing")
    try:
        with open(mpath) as f:
            manifest = json.load(f)
        fmt = int(manifest["format"])
    except (ValueError, KeyError, TypeError) as e:
        raise ArtifactError(f"{mpath} is not a valid manifest: {e}") from None
    if fmt != FORMAT_VERSION:
        what, todo = ("newer", "upgrade slimc") if fmt > FORMAT_VERSION else \
            ("older", "export it again with this slimc")
        raise ArtifactError(f"artifact format {fmt} is {what} than the one this slimc reads "
                            f"({FORMAT_VERSION}): {todo}")
    target = manifest.get("target") or {}
    arch = str(target.get("triple", "unknown")).split("-")[0]
    if arch == "nvptx64":
        return _load_cuda(path, manifest, verify)
    if arch != _host_arch():
        raise ArtifactError(f"architecture mismatch: the artifact was compiled for {arch} "
                            f"({target.get('triple')}, cpu {target.get('cpu')}) and this host is "
                            f"{_host_arch()}; run it on an {arch} machine")
    _verify_files(path, manifest, verify)
    if set(manifest.get("files", {})) != {LIBRARY, WEIGHTS}:
        raise ArtifactError("the manifest does not list the artifact's files; refused")
    flags = _host_flags()
    wanted = {f[1:] for f in target["features"].split(",") if f.startswith("+")}
    missing = sorted(f for f in wanted if f in CPUINFO_FLAG and CPUINFO_FLAG[f] not in flags)
    if flags and missing:
        raise ArtifactError(f"the artifact was built for CPU {target['cpu']!r} and uses "
                            f"{', '.join(missing)}, which this CPU lacks; recompile it here")
    weights = _map_weights(os.path.join(path, WEIGHTS))
    library = ctypes.CDLL(os.path.abspath(os.path.join(path, LIBRARY)))
    return LoadedModule(path, manifest, library, weights)


# ----- artifacts for a GPU ---------------------------------------------------------------------

PTX, CUBIN, LLVM_IR = "model.ptx", "model.cubin", "model.ll"


def _export_cuda(compiled, path: str, checksums: bool, version: str) -> None:
    """A GPU module's artifact: the PTX, a cubin for its architecture when ptxas is installed,
    the optimized LLVM IR (which `emulate` runs), the weights and the launch list."""
    program, t = compiled.program, compiled.target
    files = {PTX: program.ptx.encode(), LLVM_IR: program.llvm_ir.encode()}
    try:
        from slimc.codegen.cuda.ptx import ptxas, ptxas_path

        if ptxas_path() is not None:
            files[CUBIN] = ptxas(program.ptx, t.cpu).cubin
    except ImportError:
        pass
    for name, data in files.items():
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)
    if CUBIN not in files and os.path.exists(os.path.join(path, CUBIN)):
        os.remove(os.path.join(path, CUBIN))
    compiled._weights.tofile(os.path.join(path, WEIGHTS))
    names = sorted(files) + [WEIGHTS]
    manifest = {
        "format": FORMAT_VERSION,
        "name": compiled.graph.name,
        "slimc_version": version,
        "target": {"name": t.name, "triple": t.triple, "cpu": t.cpu, "features": t.features},
        "inputs": [_spec(*s) for s in compiled._inputs],
        "outputs": [_spec(*s) for s in compiled._outputs],
        "output_sources": [list(s) for s in compiled._sources],
        "arena_bytes": compiled._arena_bytes,
        "launches": [x.to_json() for x in program.launches],
        "files": {name: _sha256(os.path.join(path, name)) if checksums else None
                  for name in names},
        "file_bytes": {name: os.path.getsize(os.path.join(path, name)) for name in names},
    }
    with open(os.path.join(path, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)


def _load_cuda(path: str, manifest: dict, verify: bool):
    """A GPU artifact as a CudaProgram: runs with the CUDA driver alone (`emulate` needs
    llvmlite)."""
    from .cuda_program import CudaProgram, Launch

    _verify_files(path, manifest, verify)
    files = set(manifest.get("files", {}))
    if not {PTX, LLVM_IR, WEIGHTS} <= files or files - {PTX, LLVM_IR, CUBIN, WEIGHTS}:
        raise ArtifactError("the manifest does not list a GPU artifact's files; refused")

    def read(name: str) -> bytes:
        with open(os.path.join(path, name), "rb") as f:
            return f.read()

    specs = lambda items: [(s["name"], np.dtype(s["dtype"]), tuple(s["shape"]), s["type"])
                           for s in items]
    target = manifest["target"]

    def not_runnable():
        from .cuda_driver import no_gpu_reason

        return ArtifactError(f"this artifact runs on an NVIDIA GPU ({target['name']}): "
                             f"{no_gpu_reason()}; .emulate(...) runs it on the CPU")

    program = CudaProgram(read(PTX).decode(), read(LLVM_IR).decode(),
                          [Launch.from_json(x) for x in manifest["launches"]],
                          specs(manifest["inputs"]), specs(manifest["outputs"]),
                          [tuple(s) for s in manifest["output_sources"]],
                          manifest["arena_bytes"], _map_weights(os.path.join(path, WEIGHTS)),
                          manifest.get("name", path), not_runnable)
    if CUBIN in files:
        program.cubin = (int(str(target["cpu"]).split("_")[-1]), read(CUBIN))
    program.path, program.manifest = path, manifest
    return program
