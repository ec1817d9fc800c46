"""Chains of reshapes and transposes as one transpose: what both the simplify pass (two
transposes around a reshape) and the sparsify pass (a transpose after a sparse product that
is computed transposed) ask of a chain of views."""

from __future__ import annotations


def compose_views(shape, steps) -> "tuple | str":
    """A chain of ("reshape", shape) and ("transpose", perm) steps applied to an array of
    `shape`, as one transpose: (split, perm) with chain(x) = reshape(transpose(reshape(x,
    split), perm), final shape); else why not. Each dim is followed as the run of x's
    "digits" (factors of its row-major index) it holds: a reshape groups consecutive digits
    or splits one into an outer and an inner digit (always valid on x); a transpose reorders
    runs; a reshape before anything moved sees x in a new shape. A reshape after a transpose
    whose dims straddle digits unevenly (2 x 3, transposed to 3 x 2, read as 2 x 3) is
    refused."""
    if 0 in shape:
        return "the tensor is empty"
    size: dict = {}

    def digit(n: int) -> int:
        size[len(size)] = n
        return len(size) - 1

    def digits_of(dims_shape) -> tuple:
        """(x's digits, outermost first; each dim's run of them) for x seen in this shape."""
        digits = [digit(d) for d in dims_shape if d != 1]
        it = iter(digits)
        return digits, [[] if d == 1 else [next(it)] for d in dims_shape]

    order, dims = digits_of(shape)
    for kind, arg in steps:
        if kind == "transpose":
            dims = [dims[p] for p in arg]
            continue
        flat, dims = [f for run in dims for f in run], []
        if flat == order:  # nothing moved yet: x itself, seen in this shape
            order, dims = digits_of(arg)
            continue
        for d in arg:
            run, need = [], d
            while need > 1:
                f = flat.pop(0)
                if size[f] <= need and need % size[f] == 0:
                    run.append(f)
                    need //= size[f]
                elif size[f] % need == 0:  # split f: its outer part ends this dim
                    outer, inner = digit(need), digit(size[f] // need)
                    order[order.index(f):order.index(f) + 1] = [outer, inner]
                    flat.insert(0, inner)
                    run.append(outer)
                    need = 1
                else:
                    return f"a reshape regroups {size[f]} into {d} unevenly"
            dims.append(run)
    out = [f for run in dims for f in run]
    return [size[f] for f in order], [order.index(f) for f in out]
