"""What the sparse kernel and pass tests share: random block-sparse matrices, the targets
the host runs, and the float-rounding bound of a sparse product."""

from __future__ import annotations

import numpy as np

from slimc.codegen.cpu.target import CpuTarget

RNG = np.random.default_rng(7)


def runnable_here(target: str) -> bool:
    return CpuTarget.from_name(target).is_host


def host_targets():
    out = ["x86-64-v3"]
    host = CpuTarget.host()
    if "avx512f" in host.feature_set or "+avx512f" in host.features:
        out.append("x86-64-v4")
    return out


def sparse_matrix(rows: int, cols: int, density: float, block: int = 1, empty_rows=(),
                  empty_cols=()) -> np.ndarray:
    """A random [rows, cols] matrix whose nonzeros come in blocks of `block` rows x 1."""
    a = RNG.standard_normal((rows, cols)).astype(np.float32)
    nb = -(-rows // block)
    keep = RNG.random((nb, cols)) < density
    a *= np.repeat(keep, block, axis=0)[:rows]
    a[list(empty_rows)] = 0
    a[:, list(empty_cols)] = 0
    return a


def assert_close(got, want, k):
    scale = np.sqrt(k) * 1e-6 * max(1.0, np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=scale * 10)
