"""Export a compiled module to a directory, and load it back with numpy and ctypes only.

An artifact is a directory:

    model.so        the kernels and the entry function: LLVM's object output linked by `cc`,
                    and `slimc_interface`, the digests of the manifest fields the code relies on
    weights.bin     the constants, prepacked, one 64-byte-aligned blob
    manifest.json   format version, inputs and outputs, target triple, CPU and features,
                    versions, the entry function's C signature, and the SHA-256 of each file

For a foreign architecture (``target="aarch64"`` on x86-64) the directory also holds the
object, ``model.o``, and ``model.so`` only when a cross linker is found (``SLIMC_CROSS_CC``,
else ``aarch64-linux-gnu-gcc`` on PATH); the host's `cc` cannot link another architecture.
Either one runs on the target with a small C driver: see ``entry`` in the manifest.

Export writes every file under a temporary name in the folder and renames it into place, the
manifest last: a module loaded from the folder maps its library and weights, and a file
rewritten under a mapping would hand it other weights, or kill it (SIGBUS) when it shrinks.
A renamed file is a new inode; the old mapping keeps the old one.

`load` verifies every checksum (a flipped byte anywhere is refused), refuses a newer format or
an artifact whose CPU features this host lacks, refuses a manifest whose interface (inputs,
outputs, output sources, arena, kernels, target, weights' size) is not the one the library was
compiled with, and never unpickles anything. The checksums catch corruption and edits, not a
malicious author: an artifact is native code, so load only artifacts you trust.
"""

from __future__ import annotations

import ctypes
import hashlib
import itertools
import json
import os
import platform
import secrets
import shutil
import subprocess
import tempfile
import threading

import numpy as np

from slimc.ir.errors import SlimcError

from slimc.ir.buffers import aligned_zeros, small_pages

from .manifest import (INTERFACE_SYMBOL, PTX_RECORD, ArtifactError, Interface,
                       check_interface, field, interface_digests, library_record, ptx_record,
                       read_interface)
from .native import ENTRY_TYPE, EXACT_TYPE, RUN_TYPE, TIMED_TYPE, NativeModule

# The artifact's format, in manifest.json. It bumps when an artifact this slimc writes would
# be misread by the slimc before it, or one that slimc wrote would be misread now: a manifest
# field added that a loader must understand, renamed or removed; the entry's signature; the
# weights blob's layout; the set of files. `load` refuses every other format and names both.
# History: 1 (the first). Libraries of format 1 hold `slimc_interface` since it was added
# (an older slimc's loader ignores it; this one checks it where it is there).
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LIBRARY = "model.so"
OBJECT = "model.o"  # only in artifacts for a foreign architecture
WEIGHTS = "weights.bin"
PTX, CUBIN, LLVM_IR = "model.ptx", "model.cubin", "model.ll"  # a GPU artifact's
# Every file an export writes: one into a folder removes those an earlier one left there.
ARTIFACT_FILES = (MANIFEST, LIBRARY, OBJECT, WEIGHTS, PTX, CUBIN, LLVM_IR)
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


# ----- writing ---------------------------------------------------------------------------------

class _Staging:
    """An artifact's files, written under temporary names in its folder and renamed into
    place together by `commit`, the manifest last. Renaming, never rewriting: a module loaded
    from the folder keeps the files it mapped (see the module's docstring), and an export that
    fails leaves the folder as it was; its temporary files are removed on the way out."""

    def __init__(self, folder: str):
        self.folder = folder
        self.temps: dict = {}  # final name -> temporary path

    def path(self, name: str) -> str:
        """The temporary path `name` is written to (created by whoever writes it)."""
        if name not in self.temps:
            self.temps[name] = os.path.join(self.folder,
                                            f".{name}.{secrets.token_hex(6)}.tmp")
        return self.temps[name]

    def write(self, name: str, data: bytes) -> None:
        with open(self.path(name), "xb") as f:
            f.write(data)

    def write_json(self, name: str, value) -> None:
        self.write(name, json.dumps(value, indent=1).encode())

    def commit(self) -> list:
        """Rename every file into place, the manifest last (a loader that reads the folder
        meanwhile finds a manifest whose checksums do not match, never a half-written file);
        the names written."""
        names = sorted(self.temps, key=lambda name: name == MANIFEST)
        for name in names:
            os.replace(self.temps.pop(name), os.path.join(self.folder, name))
        return names

    def __enter__(self) -> "_Staging":
        return self

    def __exit__(self, *exc) -> None:
        for temp in self.temps.values():
            try:
                os.remove(temp)
            except FileNotFoundError:
                pass


def _make_folder(path: str) -> None:
    """Create the artifact's folder (an existing one is exported into again); a path that is
    a file, or that cannot be created, is a SlimcError naming it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise SlimcError(f"cannot export to {path!r}: it is a file, and an artifact is a "
                         f"folder; give the path of a new or existing folder")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise SlimcError(f"cannot export to {path!r}: the folder cannot be created "
                         f"({e.strerror or e})") from e


def _remove_stale(folder: str, written: list) -> None:
    """Remove the artifact files an earlier export into `folder` left and this one did not
    write (a foreign artifact's model.o, a GPU artifact's PTX, a library where no cross
    linker was found this time): the folder holds one artifact. A module loaded from them
    keeps running: removing a file leaves its mapping."""
    for name in set(ARTIFACT_FILES) - set(written):
        try:
            os.remove(os.path.join(folder, name))
        except FileNotFoundError:
            pass


def _package_version() -> str:
    """The installed package's version (runtime cannot import slimc/)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("slimc")
    except PackageNotFoundError:
        return "unknown"


def export(compiled, path: str, checksums: bool = True) -> None:
    """Write `compiled` (a runtime.compiled.CompiledModule) as an artifact directory. Without
    `checksums` (the compile cache's own entries: hashing the weights cost 0.1 s per 160 MB)
    the manifest lists the files with no digest, and only `load(verify=False)` reads it.
    Every file is written aside and renamed into place (`_Staging`), so exporting into the
    folder of a loaded module leaves that module running as it was."""
    _make_folder(path)
    write = _write_cuda if getattr(compiled, "program", None) is not None else _write_native
    try:
        with _Staging(path) as staging:
            write(compiled, staging, checksums, _package_version())
            _remove_stale(path, staging.commit())
    except OSError as e:
        raise SlimcError(f"cannot write the artifact to {path!r}: {e}") from e


def _interface_source(folder: str, digests: dict) -> str:
    """A C file defining INTERFACE_SYMBOL, the digests as JSON text, for the link: the
    library then carries the interface it was compiled with, under its own checksum.
    (``extern`` keeps the constant's symbol exported if `cc` compiles it as C++.)"""
    source = os.path.join(folder, "slimc_interface.c")
    literal = json.dumps(json.dumps(digests, sort_keys=True))  # a JSON string is a C string
    with open(source, "w") as f:
        f.write(f"/* slimc: the manifest interface this library was compiled with */\n"
                f"extern const char {INTERFACE_SYMBOL}[];\n"
                f"const char {INTERFACE_SYMBOL}[] = {literal};\n")
    return source


def _link(cc: str, objects: list, library: str, libraries: list, digests: dict) -> None:
    """Link `objects` and the interface record into the shared library `library`."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, obj in enumerate(objects):
            paths.append(os.path.join(tmp, f"part{i}.o"))
            with open(paths[-1], "wb") as f:
                f.write(obj)
        paths.append(_interface_source(tmp, digests))
        cmd = [cc, "-shared", "-fPIC", "-o", library] + paths + [f"-l{x}" for x in libraries]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SlimcError(f"linking the artifact failed ({' '.join(cmd)}):\n{done.stderr}")


def _write_native(compiled, staging: _Staging, checksums: bool, version: str) -> None:
    """A CPU module's artifact: the library (or, for a foreign machine without a cross
    linker, the object), the weights and the manifest."""
    import llvmlite

    t = compiled.target
    objects = compiled.objects()
    libraries = ["m"] + (["gomp"] if "GOMP_parallel" in compiled.llvm_ir else [])
    foreign = t.arch != _host_arch()
    if foreign and len(objects) != 1:
        raise SlimcError(f"an artifact for another machine holds one object; this module "
                         f"has {len(objects)}")
    manifest = {
        "format": FORMAT_VERSION,
        "name": compiled.graph.name,
        "slimc_version": version,
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
                   "code_bytes": None},
    }
    compiled._weights.tofile(staging.path(WEIGHTS))
    digests = interface_digests(json.loads(json.dumps(manifest)), compiled._weights.nbytes)
    if foreign:
        staging.write(OBJECT, objects[0])
    cc = _linker(t)
    if cc is not None:
        _link(cc, objects, staging.path(LIBRARY), libraries, digests)
    files = ([LIBRARY] if cc is not None else []) + ([OBJECT] if foreign else []) + [WEIGHTS]
    manifest["memory"]["code_bytes"] = os.path.getsize(staging.path(files[0]))
    _list_files(manifest, staging, files, checksums)
    staging.write_json(MANIFEST, manifest)


def _list_files(manifest: dict, staging: _Staging, files: list, checksums: bool) -> None:
    """The manifest's `files` (name -> SHA-256, or None without `checksums`) and
    `file_bytes`, of the staged files."""
    manifest["files"] = {name: _sha256(staging.path(name)) if checksums else None
                         for name in files}
    manifest["file_bytes"] = {name: os.path.getsize(staging.path(name)) for name in files}


def add_checksums(path: str) -> None:
    """Give an artifact written without checksums (a compile-cache entry, copied out by
    `Module.export` of a module the cache served) the digests `load` verifies. The manifest
    is replaced, not rewritten in place."""
    mpath = os.path.join(path, MANIFEST)
    with open(mpath) as f:
        manifest = json.load(f)
    files = manifest.get("files", {})
    for name, digest in files.items():
        if digest is None:
            files[name] = _sha256(os.path.join(path, name))
    with _Staging(path) as staging:
        staging.write_json(MANIFEST, manifest)
        staging.commit()


def copy_artifact(source: str, path: str) -> None:
    """Copy the artifact at `source` (a compile-cache entry, written without checksums) to the
    folder `path` as `export` writes one: each file copied aside and renamed into place, the
    manifest last, with the checksums `load` verifies. `Module.export` of a module the cache
    served needs this, not a copy over the files: that rewrites in place the files a module
    loaded from `path` maps (see the module's docstring)."""
    with open(os.path.join(source, MANIFEST)) as f:
        manifest = json.load(f)
    _make_folder(path)
    try:
        with _Staging(path) as staging:
            for name in manifest["files"]:
                shutil.copy2(os.path.join(source, name), staging.path(name))
            _list_files(manifest, staging, list(manifest["files"]), checksums=True)
            staging.write_json(MANIFEST, manifest)
            _remove_stale(path, staging.commit())
    except OSError as e:
        raise SlimcError(f"cannot write the artifact to {path!r}: {e}") from e


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


def _read_manifest(path: str) -> dict:
    """The artifact's manifest, a JSON object of this slimc's format; else ArtifactError."""
    mpath = os.path.join(path, MANIFEST)
    if not os.path.isfile(mpath):
        raise ArtifactError(f"{path!r} is not a slimc artifact: {MANIFEST} is missing")
    try:
        with open(mpath) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:  # (ValueError: bad JSON, or bytes that are not UTF-8)
        raise ArtifactError(f"{mpath} is not a valid manifest: {e}") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{mpath} is not a valid manifest: it holds a JSON "
                            f"{type(manifest).__name__}, not an object")
    fmt = field(manifest, "format", int, mpath)
    if fmt != FORMAT_VERSION:
        what, todo = ("newer", "upgrade slimc") if fmt > FORMAT_VERSION else \
            ("older", "export it again with this slimc")
        raise ArtifactError(f"artifact format {fmt} is {what} than the one this slimc reads "
                            f"({FORMAT_VERSION}): {todo}")
    return manifest


# ----- loading ---------------------------------------------------------------------------------

class LoadedModule(NativeModule):
    """An exported artifact, loaded. `manifest` holds what export wrote."""

    def __init__(self, path: str, manifest: dict, library, weights: np.ndarray,
                 interface: "Interface | None" = None):
        entry = ENTRY_TYPE(("slimc_main", library))
        run = RUN_TYPE(("slimc_run", library))
        call = EXACT_TYPE(("slimc_exact", library)) if hasattr(library, "slimc_exact") \
            else None  # (an older artifact's slimc_call: its pointer tables serve)
        timed = TIMED_TYPE(("slimc_timed", library)) if hasattr(library, "slimc_timed") \
            else None  # (an artifact of an older slimc has none)
        i = interface or read_interface(manifest, os.path.join(path, MANIFEST), weights.nbytes)
        super().__init__(entry, i.inputs, i.outputs, i.output_sources, i.arena_bytes, weights,
                         manifest.get("name", path), run, i.kernels, call, timed)
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
    mpath = os.path.join(path, MANIFEST)
    files = field(manifest, "files", dict, mpath)
    sizes = field(manifest, "file_bytes", dict, mpath) if "file_bytes" in manifest else {}
    for name, digest in files.items():
        fpath = os.path.join(path, name)
        if os.path.basename(name) != name or not os.path.isfile(fpath):
            raise ArtifactError(f"artifact file {name!r} is missing")
        size = os.path.getsize(fpath)
        if size != sizes.get(name, size):
            raise ArtifactError(f"artifact file {name!r} is not the size its manifest gives: "
                                f"the artifact is damaged; refused")
        if verify and digest is None:
            raise ArtifactError(f"artifact file {name!r} has no checksum (a compile-cache "
                                f"entry?): refused; write artifacts with Module.export")
        if verify and _sha256(fpath) != digest:
            raise ArtifactError(f"artifact file {name!r} does not match its checksum: the "
                                f"artifact is corrupt or was modified; refused")


def _check_features(target: dict, mpath: str) -> None:
    """Refuse an artifact built for CPU features this host lacks (illegal instructions)."""
    features = field(target, "features", str, mpath, "target.")
    flags = _host_flags()
    wanted = {f[1:] for f in features.split(",") if f.startswith("+")}
    missing = sorted(f for f in wanted if f in CPUINFO_FLAG and CPUINFO_FLAG[f] not in flags)
    if flags and missing:
        raise ArtifactError(f"the artifact was built for CPU {target.get('cpu')!r} and uses "
                            f"{', '.join(missing)}, which this CPU lacks; recompile it here")


# The name each library was opened under -> the (device, inode) of its file then.
_opened: dict = {}
_opened_lock = threading.Lock()


def _open_library(path: str) -> ctypes.CDLL:
    """The shared library at `path`, opened under a name no other file was opened under in
    this process. The dynamic loader answers a name it has opened with the library it opened
    then, even where the file was since replaced (exported again into the same folder): the
    old code with the new manifest and weights. A replaced file is opened as the same path
    with "./" added, which the loader takes for a new name."""
    real = os.path.abspath(path)
    folder, name = os.path.split(real)
    with _opened_lock:
        st = os.stat(real)
        for extra in itertools.count():
            alias = os.path.join(folder, *["."] * extra, name)
            if _opened.setdefault(alias, (st.st_dev, st.st_ino)) == (st.st_dev, st.st_ino):
                break
    try:
        return ctypes.CDLL(alias)
    except OSError as e:  # (not a shared library: a damaged artifact read with verify=False)
        raise ArtifactError(f"{path} cannot be loaded: {e}; refused") from None


def _load(path: str, verify: bool) -> LoadedModule:
    manifest = _read_manifest(path)
    mpath = os.path.join(path, MANIFEST)
    target = field(manifest, "target", dict, mpath)
    arch = str(target.get("triple", "unknown")).split("-")[0]
    if arch == "nvptx64":
        return _load_cuda(path, manifest, verify)
    if arch != _host_arch():
        raise ArtifactError(f"architecture mismatch: the artifact was compiled for {arch} "
                            f"({target.get('triple')}, cpu {target.get('cpu')}) and this host is "
                            f"{_host_arch()}; run it on an {arch} machine")
    _verify_files(path, manifest, verify)
    if set(manifest["files"]) != {LIBRARY, WEIGHTS}:
        raise ArtifactError("the manifest does not list the artifact's files; refused")
    _check_features(target, mpath)
    weights = _map_weights(os.path.join(path, WEIGHTS))
    interface = read_interface(manifest, mpath, weights.nbytes)
    library = _open_library(os.path.join(path, LIBRARY))
    check_interface(library_record(library), LIBRARY, manifest, mpath, weights.nbytes)
    return LoadedModule(path, manifest, library, weights, interface)


# ----- artifacts for a GPU ---------------------------------------------------------------------

def _write_cuda(compiled, staging: _Staging, checksums: bool, version: str) -> None:
    """A GPU module's artifact: the PTX (its last line a comment holding the interface
    record, which `_load_cuda` takes off again), a cubin for its architecture when ptxas is
    installed, the optimized LLVM IR (which `emulate` runs), the weights and the launch
    list."""
    program, t = compiled.program, compiled.target
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
    }
    digests = interface_digests(json.loads(json.dumps(manifest)), compiled._weights.nbytes)
    record = json.dumps(digests, sort_keys=True)
    files = {PTX: (program.ptx + PTX_RECORD + record + "\n").encode(),
             LLVM_IR: program.llvm_ir.encode()}
    try:
        from slimc.codegen.cuda.ptx import ptxas, ptxas_path

        if ptxas_path() is not None:
            files[CUBIN] = ptxas(program.ptx, t.cpu).cubin
    except ImportError:
        pass
    for name, data in files.items():
        staging.write(name, data)
    compiled._weights.tofile(staging.path(WEIGHTS))
    _list_files(manifest, staging, sorted(files) + [WEIGHTS], checksums)
    staging.write_json(MANIFEST, manifest)


def _load_cuda(path: str, manifest: dict, verify: bool):
    """A GPU artifact as a CudaProgram: runs with the CUDA driver alone (`emulate` needs
    llvmlite)."""
    from .cuda_program import CudaProgram, Launch

    mpath = os.path.join(path, MANIFEST)
    _verify_files(path, manifest, verify)
    files = set(manifest["files"])
    if not {PTX, LLVM_IR, WEIGHTS} <= files or files - {PTX, LLVM_IR, CUBIN, WEIGHTS}:
        raise ArtifactError("the manifest does not list a GPU artifact's files; refused")

    def read(name: str) -> bytes:
        with open(os.path.join(path, name), "rb") as f:
            return f.read()

    target = manifest["target"]

    def not_runnable():
        from .cuda_driver import no_gpu_reason

        return ArtifactError(f"this artifact runs on an NVIDIA GPU ({target.get('name')}): "
                             f"{no_gpu_reason()}; .emulate(...) runs it on the CPU")

    try:
        launches = [Launch.from_json(x) for x in field(manifest, "launches", list, mpath)]
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"{mpath}: the field 'launches' is not a list of launches "
                            f"({type(e).__name__}: {e}): refused") from None
    weights = _map_weights(os.path.join(path, WEIGHTS))
    i = read_interface(manifest, mpath, weights.nbytes)
    ptx, record = ptx_record(read(PTX).decode())
    check_interface(record, PTX, manifest, mpath, weights.nbytes)
    program = CudaProgram(ptx, read(LLVM_IR).decode(), launches, i.inputs,
                          i.outputs, i.output_sources, i.arena_bytes, weights,
                          manifest.get("name", path), not_runnable)
    if CUBIN in files:
        program.cubin = (int(str(target.get("cpu")).split("_")[-1]), read(CUBIN))
    program.path, program.manifest = path, manifest
    return program
