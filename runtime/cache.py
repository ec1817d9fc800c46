"""The on-disk compile cache: a second compile of the same model loads the artifact instead.

The key covers everything that decides the generated code: the graph before optimization
(its text and every constant's bytes), the target (CPU name and resolved features), the
compile options, the llvmlite version, and a hash of slimc's own source files -- so editing
slimc, changing a weight, or moving to another CPU misses. Entries are export artifacts
(runtime/export.py) plus the optimized IR and the LLVM IR, so a cached module can still be
inspected. Compiles with user passes are not cached: slimc cannot know what a user pass does.

The folder is ``$SLIMC_CACHE_DIR``, else ``~/.cache/slimc``; ``SLIMC_CACHE_DIR=off`` disables
the cache. It is bounded: after each store, the least recently used entries (a hit counts as a
use) are removed until the entries together take at most ``$SLIMC_CACHE_MAX`` (bytes, or
with a K/M/G suffix; default 1G). The entry just stored is always kept.

Besides whole models it keeps compiled *parts* (``part-<key>``: one object and its optimized
IR per part of a model's LLVM module, codegen/cpu/parts.py), keyed by the part's own text: a
model of the same architecture with other weights (a fine-tuned one, a re-export) misses the
model cache but finds its kernels here, and LLVM compiles nothing again. `slimc cache` shows
the folder's entries and `--clear` empties it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from collections import namedtuple
from functools import lru_cache
from typing import Optional

import numpy as np

from .export import LoadedModule, copy_artifact, export, load


def cache_dir() -> Optional[str]:
    value = os.environ.get("SLIMC_CACHE_DIR")
    if value and value.lower() in ("off", "0", "none", "disabled"):
        return None
    return value or os.path.join(os.environ.get("XDG_CACHE_HOME") or
                                 os.path.expanduser("~/.cache"), "slimc")


@lru_cache(maxsize=1)
def source_hash() -> str:
    """A hash of slimc's own Python source: any change to the compiler misses the cache."""
    import slimc.codegen
    import slimc.frontends
    import slimc.ir
    import slimc.passes
    import slimc.runtime

    h = hashlib.sha256()
    for pkg in (slimc, slimc.ir, slimc.frontends, slimc.passes, slimc.codegen, slimc.runtime):
        for root in sorted(set(pkg.__path__)):
            for dirpath, dirnames, filenames in sorted(os.walk(root)):
                dirnames.sort()
                for name in sorted(filenames):
                    if name.endswith(".py"):
                        with open(os.path.join(dirpath, name), "rb") as f:
                            h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()


def cache_key(graph, target_identity: str, options: dict) -> str:
    """`target_identity`: the backend's name for the machine code targets (for the CPU: its
    triple, CPU name and features)."""
    import llvmlite

    h = hashlib.sha256()
    h.update(str(graph).encode())
    for v in graph.constants.values():
        h.update(v.name.encode() + b"\0")
        if v.data is not None:
            h.update(str(v.data.dtype).encode() + str(v.data.shape).encode())
            # the bytes as a flat uint8 view: no copy, and fine for zero-size tensors and for
            # dtypes the buffer protocol cannot name (ml_dtypes' bfloat16)
            h.update(np.ascontiguousarray(v.data).reshape(-1).view(np.uint8))
    h.update(target_identity.encode())
    h.update(repr(sorted(options.items())).encode())
    h.update(llvmlite.__version__.encode())
    h.update(source_hash().encode())
    return h.hexdigest()[:32]


FILE_PREFIX = "file-"


def file_key(path: str, target_identity: str, options: dict) -> str:
    """The key of a model *file* compiled with `options` (see `lookup_by_file`)."""
    import llvmlite

    h = hashlib.sha256(os.path.realpath(path).encode())
    for item in (target_identity, repr(sorted(options.items())), llvmlite.__version__,
                 source_hash()):
        h.update(b"\0" + item.encode())
    return FILE_PREFIX + h.hexdigest()[:32]


def file_stamps(paths) -> dict:
    """{real path: [bytes, mtime_ns, ctime_ns, inode, device]}: any write to a file changes
    its ctime, which no one can set back."""
    out = {}
    for p in paths:
        st = os.stat(p)
        out[os.path.realpath(p)] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                                    st.st_dev]
    return out


def lookup_by_file(key: str) -> Optional[CachedModule]:
    """The compiled model a file index entry (`store_by_file`) points to, if every file it
    was compiled from (the .onnx and its external data) is as it was then: a hit reads no
    model, hashes no weights (BERT's 45 MB: 0.12 s, against 0.07 s for onnxruntime to open
    a session)."""
    folder = cache_dir()
    if folder is None:
        return None
    try:
        with open(os.path.join(folder, key, "manifest.json")) as f:
            entry = json.load(f)
        if file_stamps(entry["files"]) != entry["files"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return lookup(entry["model"])


def store_by_file(key: str, model_key: str, paths) -> None:
    """Point `key` (a model file and compile options) at the compiled model `model_key`."""
    entry = {"kind": "model file", "model": model_key, "files": file_stamps(paths)}

    def write(folder: str) -> None:
        with open(os.path.join(folder, "manifest.json"), "w") as f:
            json.dump(entry, f)

    try:
        _store_entry(key, write)
    except OSError:
        pass


KernelInfo = namedtuple("KernelInfo", "name ops")


class CachedModule(LoadedModule):
    """A module loaded from the cache: runs like the original; its IR is read on demand."""

    @property
    def graph(self):
        from slimc.ir import parse

        with open(os.path.join(self.path, "graph.slimc")) as f:
            return parse(f.read())

    @property
    def llvm_ir(self) -> str:
        with open(os.path.join(self.path, "llvm.ll")) as f:
            return f.read()

    @property
    def assembly(self) -> str:
        """The machine code listing, made on demand from the cached LLVM IR for the target
        the manifest names (the cache keeps the IR, not the listing)."""
        from slimc.codegen.cpu.parts import part_texts
        from slimc.codegen.cpu.target import CpuTarget, emit_assembly

        t = self.manifest["target"]
        target = CpuTarget.from_parts(t["name"], t["triple"], t["cpu"], t["features"])
        return "\n".join(emit_assembly(text, target, opt_level=0)
                         for text in part_texts(self.llvm_ir))

    @property
    def kernels(self) -> list:
        """Each kernel's name and the ops it contains (its code is in `llvm_ir`)."""
        return [KernelInfo(k["name"], k["ops"]) for k in self.manifest["kernels"]]

    @property
    def memory(self) -> dict:
        return self.manifest["memory"]

    def export(self, path: str) -> None:
        """The entry's files, checksummed, each renamed into place (export.copy_artifact: a
        module loaded from `path` keeps the files it mapped)."""
        copy_artifact(self.path, path)


DEFAULT_MAX_BYTES = 1 << 30


def lookup(key: str) -> Optional[CachedModule]:
    folder = cache_dir()
    if folder is None:
        return None
    wait(key)
    path = os.path.join(folder, key)
    manifest = os.path.join(path, "manifest.json")
    if not os.path.isfile(manifest):
        return None
    try:
        loaded = load(path, verify=False)
    except Exception:
        shutil.rmtree(path, ignore_errors=True)  # a damaged entry is rebuilt, never trusted
        return None
    try:
        os.utime(manifest)  # a use: the entry is now the most recently used
    except OSError:
        pass
    loaded.__class__ = CachedModule
    return loaded


PART_PREFIX = "part-"


def part_key(text: str, pipeline: str, target_identity: str, opt_level: int) -> str:
    """The key of one compiled part: its LLVM IR, its pipeline, the target, LLVM's version
    and slimc's source (which holds the pipelines' definitions)."""
    import llvmlite

    h = hashlib.sha256(text.encode())
    for item in (pipeline, target_identity, str(opt_level), llvmlite.__version__,
                 source_hash()):
        h.update(b"\0" + item.encode())
    return PART_PREFIX + h.hexdigest()[:32]


def lookup_part(key: str) -> Optional[tuple[bytes, str]]:
    """(object, optimized IR) of a compiled part, or None."""
    folder = cache_dir()
    if folder is None:
        return None
    path = os.path.join(folder, key)
    manifest = os.path.join(path, "manifest.json")
    try:
        with open(os.path.join(path, "object.o"), "rb") as f:
            obj = f.read()
        with open(os.path.join(path, "optimized.ll")) as f:
            text = f.read()
        os.utime(manifest)
    except OSError:
        return None
    return obj, text


def store_part(key: str, obj: bytes, text: str) -> None:
    def write(folder: str) -> None:
        with open(os.path.join(folder, "object.o"), "wb") as f:
            f.write(obj)
        with open(os.path.join(folder, "optimized.ll"), "w") as f:
            f.write(text)
        with open(os.path.join(folder, "manifest.json"), "w") as f:
            f.write('{"kind": "compiled part"}\n')

    _store_entry(key, write)


class PartCache:
    """The compile cache's part entries, as code generation sees them (codegen may not
    import runtime: the compiler hands it this object in CompileOptions.part_cache)."""

    @staticmethod
    def key(text: str, pipeline: str, target_identity: str, opt_level: int) -> str:
        return part_key(text, pipeline, target_identity, opt_level)

    @staticmethod
    def lookup(key: str) -> Optional[tuple[bytes, str]]:
        return lookup_part(key)

    @staticmethod
    def store(key: str, obj: bytes, text: str) -> None:
        store_part(key, obj, text)


def summary() -> dict:
    """What `slimc cache` shows: the folder, its entries by kind, their bytes, the limit."""
    wait()
    folder = cache_dir()
    out = {"folder": folder, "models": 0, "parts": 0, "files": 0, "bytes": 0,
           "limit": _max_bytes()}
    if folder is None or not os.path.isdir(folder):
        return out
    for _, size, path in _entries(folder):
        name = os.path.basename(path)
        kind = "parts" if name.startswith(PART_PREFIX) else \
            "files" if name.startswith(FILE_PREFIX) else "models"
        out[kind] += 1
        out["bytes"] += size
    return out


def clear() -> int:
    """Empty the cache folder (entries and cost-model measurements); returns bytes freed."""
    wait()
    folder = cache_dir()
    if folder is None or not os.path.isdir(folder):
        return 0
    freed = 0
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        for d, _, files in os.walk(path):
            freed += sum(os.path.getsize(os.path.join(d, f)) for f in files)
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            freed += os.path.getsize(path)
            os.remove(path)
    return freed


def _entries(folder: str) -> list[tuple[float, int, str]]:
    """(last use, bytes, path) of every complete entry in the cache folder."""
    out = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        manifest = os.path.join(path, "manifest.json")
        if name.startswith(".") or not os.path.isfile(manifest):
            continue  # a temporary folder being written, or not an entry (winograd/)
        try:
            size = sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path)
                       for f in files)
            out.append((os.path.getmtime(manifest), size, path))
        except OSError:
            continue  # removed by another process meanwhile
    return out


def evict(folder: str, keep: str, max_bytes: int) -> list[str]:
    """Remove the least recently used entries until they take at most `max_bytes` together,
    never the entry `keep`; returns the paths removed. Temporary folders older than
    STALE_SECONDS (a store that a killed process left half-written) go too."""
    removed = _remove_stale_temporaries(folder)
    entries = sorted(_entries(folder))
    total = sum(size for _, size, _ in entries)
    for _, size, path in entries:
        if total <= max_bytes:
            break
        if os.path.basename(path) == keep:
            continue
        shutil.rmtree(path, ignore_errors=True)
        total -= size
        removed.append(path)
    return removed


STALE_SECONDS = 3600


def _remove_stale_temporaries(folder: str) -> list[str]:
    removed = []
    for name in os.listdir(folder):
        path = os.path.join(folder, name)
        try:
            stale = name.startswith(".") and os.path.isdir(path) and \
                time.time() - os.path.getmtime(path) > STALE_SECONDS
        except OSError:
            continue
        if stale:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def store(key: str, compiled) -> None:
    """Store a compiled model under `key`, in a thread of its own: `compile` returns without
    waiting (writing ResNet-18's 160 MB of Winograd-ready weights took 1.2 s here). A lookup
    of the same key, `wait`, `summary` and `clear` wait for it; the interpreter waits for it
    at exit (the thread is not a daemon)."""
    def write(folder: str) -> None:
        export(compiled, folder, checksums=False)  # written atomically: see _store_entry
        with open(os.path.join(folder, "graph.slimc"), "w") as f:
            f.write(str(compiled.graph))
        with open(os.path.join(folder, "llvm.ll"), "w") as f:
            f.write(compiled.llvm_ir)

    folder, limit = cache_dir(), _max_bytes()  # as they are now, not when the thread runs
    if folder is None:
        return

    def run() -> None:
        try:
            _store_entry(key, write, folder, limit)
        except Exception as e:  # noqa: BLE001  (the module works; only the cache lacks it)
            warnings.warn(f"slimc: the compile cache could not store {key}: "
                          f"{type(e).__name__}: {e}", RuntimeWarning, stacklevel=1)
        finally:
            with _pending_lock:
                _pending.pop(key, None)

    thread = threading.Thread(target=run, name=f"slimc-cache-{key[:12]}")
    with _pending_lock:
        _pending[key] = thread
    thread.start()


_pending: dict = {}  # key -> the thread storing it
_pending_lock = threading.Lock()


def wait(key: Optional[str] = None) -> None:
    """Wait until the entry `key` (every entry, without one) being stored is in place."""
    with _pending_lock:
        threads = [t for k, t in _pending.items() if key is None or k == key]
    for t in threads:
        t.join()


def _store_entry(key: str, write, folder: Optional[str] = None,
                 limit: Optional[int] = None) -> None:
    """Write an entry atomically (`write(folder)` fills a temporary folder, renamed into
    place: a half-written entry is never visible), then evict down to the size limit."""
    folder = folder or cache_dir()
    if folder is None:
        return
    os.makedirs(folder, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{key}.", dir=folder)
    try:
        write(tmp)
        os.rename(tmp, os.path.join(folder, key))
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)  # another process stored it first, or no room
        if isinstance(e, OSError):
            return
        raise
    evict(folder, key, _max_bytes() if limit is None else limit)


def _max_bytes() -> int:
    from .limits import env_bytes

    limit = env_bytes("SLIMC_CACHE_MAX")
    return DEFAULT_MAX_BYTES if limit is None else limit
