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

# Where CPython (64-bit) keeps what the generated ``slimc_exact`` reads to check the arrays
# and find their buffers itself: an object's type after its refcount; a tuple's item
# pointers after its header (refcount, type, size); in an ndarray (numpy's
# PyArrayObject_fields, the same in numpy 1 and 2) the data pointer, the number of
# dimensions (an int), the dimensions' pointer, the dtype and the flags (an int).
# runtime/native.py checks every one on live objects at import and, where one does not
# hold, checks the arrays in Python and hands the entry function pointer tables.
OBJECT_TYPE_OFFSET = 8
TUPLE_ITEMS_OFFSET = 24
ARRAY_DATA_OFFSET = 16
ARRAY_NDIM_OFFSET = 24
ARRAY_DIMS_OFFSET = 32
ARRAY_DESCR_OFFSET = 56
ARRAY_FLAGS_OFFSET = 64
ARRAY_C_CONTIGUOUS = 0x1  # NPY_ARRAY_C_CONTIGUOUS
# slots after the input dtypes in slimc_exact's `spec` array where it says which index input
# held a value out of range: the input, the element's flat position, its value, the size of
# the dimension it indexes, the address of the indexing node's label
INDEX_FAULT_SLOTS = 5


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
