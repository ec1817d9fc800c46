"""Host buffers the generated code reads with vector loads: 64-byte-aligned numpy arrays.

numpy aligns its data to 16 bytes only; kernels (and their packed weights, arenas and weight
blobs) want the alignment of an AVX-512 vector, which is also a cache line. Codegen, which
packs weights, and the runtime, which allocates arenas and loads weight blobs (without
llvmlite), both allocate through here.
"""

from __future__ import annotations

import contextlib
import threading

import numpy as np

ALIGN = 64


def aligned_zeros(n: int, dtype=np.uint8, align: int = ALIGN) -> np.ndarray:
    """A 1-D array of n zeros of `dtype` whose data starts on an `align`-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(n * itemsize + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + n * itemsize].view(dtype)


_small_pages_lock = threading.Lock()
_small_pages_depth = 0
_small_pages_saved = None


@contextlib.contextmanager
def small_pages():
    """numpy asks the kernel for transparent huge pages for every large array; inside this
    block it does not (`NUMPY_MADVISE_HUGEPAGE=0` for the block only).

    Compiling and loading a model allocate and first-touch hundreds of MB (Winograd-expanded
    weights, packing, the weights blob): on the 2-core Zen 4 VMs here a huge-page first touch
    cost 1.2 s per 160 MB against 0.09 s for 4 KB pages, and ResNet-18 ran 14 ms instead of
    21 ms with its weights and arena on 4 KB pages (`python -m bench.compile_time`, README).
    Nests, and is safe from several threads: the first to enter saves numpy's setting and the
    last to leave restores it."""
    global _small_pages_depth, _small_pages_saved
    setter = getattr(getattr(np, "_core", None), "multiarray", None)
    setter = getattr(setter, "_set_madvise_hugepage", None)
    if setter is None:  # another numpy: nothing to change
        yield
        return
    with _small_pages_lock:
        if _small_pages_depth == 0:
            _small_pages_saved = setter(False)
        _small_pages_depth += 1
    try:
        yield
    finally:
        with _small_pages_lock:
            _small_pages_depth -= 1
            if _small_pages_depth == 0:
                setter(_small_pages_saved)
