"""Save and load a graph with its weights: IR text plus a .npz of every constant's data.

The .npz is read with ``allow_pickle=False``: loading never unpickles. Constant names can be
any string, so the arrays are stored under positional keys with a table of names beside them.
"""

from __future__ import annotations

import os

import numpy as np

from .errors import SlimcError
from .graph import Graph
from .parser import parse


def _paths(path: str) -> tuple[str, str]:
    base = path[:-len(".slimc")] if path.endswith(".slimc") else path
    return base + ".slimc", base + ".npz"


def save(graph: Graph, path: str) -> None:
    text_path, npz_path = _paths(str(path))
    with open(text_path, "w") as f:
        f.write(str(graph))
    consts = [v for v in graph.constants.values() if v.data is not None]
    arrays = {f"c{i}": v.data for i, v in enumerate(consts)}
    arrays["__names__"] = np.array([v.name for v in consts], dtype=np.str_)
    np.savez(npz_path, **arrays)


def load(path: str) -> Graph:
    text_path, npz_path = _paths(str(path))
    with open(text_path) as f:
        graph = parse(f.read())
    if os.path.exists(npz_path):
        with np.load(npz_path, allow_pickle=False) as z:
            names = [str(n) for n in z["__names__"]]
            for i, name in enumerate(names):
                v = graph.constants.get(name)
                if v is None:
                    raise SlimcError(f"{npz_path}: weights for %{name}, which the graph lacks")
                data = z[f"c{i}"]
                if data.shape != v.type.shape or data.dtype != v.type.dtype.numpy:
                    raise SlimcError(f"{npz_path}: %{name} has {data.dtype}{list(data.shape)}, "
                                     f"the graph says {v.type}")
                v.data = data
    return graph
