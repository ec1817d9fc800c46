"""Sliding windows: the geometry convolution and pooling share (attributes, output sizes,
kernel-position slices, spatial padding) and the compute-type rule of the nn ops.

Every op of this family works on channels-first tensors ``[N, C, *spatial]`` with any number of
spatial dimensions. Attributes are normalized: explicit per-dimension lists, pads written as
``[begin_0, begin_1, ..., end_0, end_1, ...]``; ``None`` for `strides`, `pads` or `dilations`
means "all ones" (strides, dilations) or "all zeros" (pads). Frontends resolve their own
spellings (ONNX's ``auto_pad``, ``output_shape``) before emitting these ops.
"""

from __future__ import annotations

import itertools
from typing import Optional, Sequence

import numpy as np

from ..registry import InferContext
from ..types import Dim, TensorType

# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


def _compute_dtype(dt: np.dtype) -> np.dtype:
    """The dtype references compute in: float32 for half types, the type itself otherwise."""
    dt = np.dtype(dt)
    if dt == np.float64:
        return dt
    return np.dtype(np.float32)


# Convolutions accumulate in float64 and round once: every output channel then gets the same
# float32 result for the same data, whatever order the BLAS kernel sums in (a model whose
# channels are identical must keep them identical, as onnxruntime does).
_CONV_ACC = np.dtype(np.float64)


def _float_input(ctx: InferContext, i: int = 0, what: str = "input") -> TensorType:
    t = ctx[i]
    if not t.dtype.is_float:
        ctx.fail(f"{what} must be a floating-point tensor, got {t}")
    return t


def _window_params(attrs: dict, nsp: int, ctx: Optional[InferContext] = None,
                   kernel: Optional[Sequence[int]] = None):
    """(strides, pads, dilations) as full lists, checked for length and sign."""

    def fail(msg):
        if ctx is not None:
            ctx.fail(msg)
        raise ValueError(msg)

    strides = list(attrs.get("strides") or [1] * nsp)
    pads = list(attrs.get("pads") or [0] * (2 * nsp))
    dilations = list(attrs.get("dilations") or [1] * nsp)
    if len(strides) != nsp:
        fail(f"strides {strides} must have {nsp} entries (one per spatial dimension)")
    if len(dilations) != nsp:
        fail(f"dilations {dilations} must have {nsp} entries (one per spatial dimension)")
    if len(pads) != 2 * nsp:
        fail(f"pads {pads} must have {2 * nsp} entries (begins then ends)")
    if any(int(s) < 1 for s in strides):
        fail(f"strides {strides} must be positive")
    if any(int(d) < 1 for d in dilations):
        fail(f"dilations {dilations} must be positive")
    if kernel is not None:
        if len(kernel) != nsp:
            fail(f"kernel_shape {list(kernel)} must have {nsp} entries")
        if any(isinstance(k, int) and k < 1 for k in kernel):
            fail(f"kernel_shape {list(kernel)} must be positive")
    return [int(s) for s in strides], [int(p) for p in pads], [int(d) for d in dilations]


def window_out_dim(size: Dim, k: Dim, s: int, d: int, pb: int, pe: int,
                   ceil_mode: bool = False) -> Dim:
    """Output length of a sliding window (conv, pooling) along one dimension.

    ceil_mode follows ONNX/PyTorch: round up, but the last window must start inside the input
    or its leading padding. A symbolic size is kept when the window preserves the length
    (stride 1, padding equal to the dilated kernel extent minus one); otherwise unknown.
    """
    if not isinstance(k, int):
        return None
    extent = d * (k - 1) + 1
    if not isinstance(size, int):
        if s == 1 and pb + pe == extent - 1:
            return size
        return None
    span = size + pb + pe - extent
    if ceil_mode:
        out = -(-span // s) + 1
        if out > 0 and (out - 1) * s >= size + pb:
            out -= 1
    else:
        out = span // s + 1
    return max(out, 0)


def _check_out_dims(ctx: InferContext, out: Sequence[Dim], what: str) -> None:
    for o in out:
        if isinstance(o, int) and o < 1:
            ctx.fail(f"{what}: the output would have a spatial dimension of size {o} "
                     f"(window larger than the padded input)")


def _kernel_offsets(kernel: Sequence[int]):
    return list(itertools.product(*[range(k) for k in kernel]))


def _window_slices(out: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
                   offset: Sequence[int]) -> tuple:
    """Index of the padded input seen by kernel position `offset` for every output position."""
    return (slice(None), slice(None)) + tuple(
        slice(o * d, o * d + s * (n - 1) + 1, s)
        for o, d, s, n in zip(offset, dilations, strides, out))


def _pad_spatial(x: np.ndarray, begins: Sequence[int], ends: Sequence[int], value) -> np.ndarray:
    if not any(begins) and not any(ends):
        return x
    width = [(0, 0), (0, 0)] + [(int(b), int(e)) for b, e in zip(begins, ends)]
    return np.pad(x, width, mode="constant", constant_values=value)
