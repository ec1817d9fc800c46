"""Host buffers the generated code reads with vector loads: 64-byte-aligned numpy arrays.

numpy aligns its data to 16 bytes only; kernels (and their packed weights, arenas and weight
blobs) want the alignment of an AVX-512 vector, which is also a cache line. Codegen, which
packs weights, and the runtime, which allocates arenas and loads weight blobs (without
llvmlite), both allocate through here.
"""

from __future__ import annotations

import numpy as np

ALIGN = 64


def aligned_zeros(n: int, dtype=np.uint8, align: int = ALIGN) -> np.ndarray:
    """A 1-D array of n zeros of `dtype` whose data starts on an `align`-byte boundary."""
    itemsize = np.dtype(dtype).itemsize
    raw = np.zeros(n * itemsize + align, dtype=np.uint8)
    off = (-raw.ctypes.data) % align
    return raw[off:off + n * itemsize].view(dtype)
