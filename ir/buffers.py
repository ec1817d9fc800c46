"""Host buffers the generated code reads with vector loads: 64-byte-aligned numpy arrays.

numpy aligns its data to 16 bytes only; kernels (and their packed weights, arenas and weight
blobs) want the alignment of an AVX-512 vector, which is also a cache line. Codegen, which
packs weights, and the runtime, which allocates arenas and loads weight blobs (without
llvmlite), both allocate through here.
"""

from __future__ import annotations

import contextlib

import numpy as np

from .process_settings import HeldSetting

ALIGN = 64

# Where CPython (64-bit) keeps what the generated ``slimc_call`` reads to find the buffers
# itself: a tuple's item pointers after its header (refcount, type, size), an ndarray's data
# pointer after its header (refcount, type; numpy's PyArrayObject_fields). runtime/native.py
# checks both at import and, where they do not hold, hands the entry function pointer tables.
TUPLE_ITEMS_OFFSET = 24
ARRAY_DATA_OFFSET = 16


def aligned_zeros(n: int, dtype=np.uint8, align: int = ALIGN) -> np.ndarray:
    """A 1-D array of n zeros of `dtype` whose data starts on an `align`-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(n * itemsize + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + n * itemsize].view(dtype)


def _numpy_huge_pages():
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None)
    return getattr(multiarray, "_set_madvise_hugepage", None)  # None: another numpy


_huge_pages = _numpy_huge_pages()
_small_pages = HeldSetting(lambda: _huge_pages(False), lambda saved: _huge_pages(saved))


def small_pages():
    """numpy asks the kernel for transparent huge pages for every large array; inside this
    block it does not (`NUMPY_MADVISE_HUGEPAGE=0` for the block only).

    Compiling and loading a model allocate and first-touch hundreds of MB (Winograd-expanded
    weights, packing, the weights blob): on the 2-core Zen 4 VMs here a huge-page first touch
    cost 1.2 s per 160 MB against 0.09 s for 4 KB pages, and ResNet-18 ran 14 ms instead of
    21 ms with its weights and arena on 4 KB pages (`python -m bench.compile_time`, README)."""
    return _small_pages.held() if _huge_pages is not None else contextlib.nullcontext()
