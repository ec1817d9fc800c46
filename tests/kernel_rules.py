"""The rule every kernel of a compiled module obeys, stated apart from the fusion planner.

A kernel holds at most one op with its own loop nest (a code generator: conv, matmul, a
reduction); every other node in it is computed inline (an elementwise lowering or an index
map). Nodes the anchor reads are computed inside it only if its generator reads operands
through index expressions (`inline_inputs`), or if they are row-major views (reshape,
flatten, squeeze, unsqueeze) of a buffer, which the anchor reads as that buffer, through a
chain of such views only; nodes after it form its epilogue, which must be
elementwise and accepted by the generator's `epilogue`. The planner (codegen/fusion.py)
is meant to keep this; the tests check every module they compile against this statement of
it, whichever layers the layout pass left NCHW.
"""

from __future__ import annotations

from slimc.codegen.backend import ROW_MAJOR_VIEWS
from slimc.codegen.cpu.kernel import GENERATORS, INDEX_MAPS
from slimc.codegen.cpu.scalar_ops import LOWERINGS


def _reaches(src, dst, inside: set) -> bool:
    """True if `dst` (a node) reads, through nodes of the kernel, a value `src` produces."""
    stack, seen = [dst], set()
    while stack:
        n = stack.pop()
        for v in n.inputs:
            p = v.producer if v is not None else None
            if p is None or id(p) not in inside or id(p) in seen:
                continue
            if p is src:
                return True
            seen.add(id(p))
            stack.append(p)
    return False


def _view_of_a_buffer(n, inside: set) -> bool:
    """n is a row-major view whose input is a buffer or, inside the kernel, such a view."""
    while n.op in ROW_MAJOR_VIEWS:
        p = n.inputs[0].producer
        if p is None or id(p) not in inside:
            return True
        n = p
    return False


def kernel_rule_violations(kernel) -> list[str]:
    """Why `kernel` (a codegen Kernel) breaks the rule; empty when it keeps it."""
    nodes = kernel.nodes
    inside = {id(n) for n in nodes}
    anchors = [n for n in nodes if n.op in GENERATORS]
    bad = []
    if len(anchors) > 1:
        bad.append(f"{kernel.name}: {len(anchors)} ops with their own loop nests "
                   f"({', '.join(n.op for n in anchors)})")
    for n in nodes:
        if n.op not in GENERATORS and n.op not in LOWERINGS and n.op not in INDEX_MAPS:
            bad.append(f"{kernel.name}: {n.op} {n.label!r} has no lowering at all")
    if len(anchors) != 1:
        return bad
    (anchor,) = anchors
    gen = GENERATORS[anchor.op]
    for n in nodes:
        if n is anchor:
            continue
        if _reaches(n, anchor, inside):
            if not getattr(gen, "inline_inputs", False) and not _view_of_a_buffer(n, inside):
                bad.append(f"{kernel.name}: {n.op} {n.label!r} is computed inside "
                           f"{anchor.op}, which reads its operands from memory")
        elif _reaches(anchor, n, inside):
            if n.op not in LOWERINGS:
                bad.append(f"{kernel.name}: {n.op} {n.label!r} follows {anchor.op} but is "
                           f"not elementwise")
            epilogue = getattr(gen, "epilogue", False)
            accepted = epilogue(anchor) is None if callable(epilogue) else bool(epilogue)
            if not accepted:
                bad.append(f"{kernel.name}: {anchor.op} takes no epilogue, yet {n.op} "
                           f"{n.label!r} follows it")
    return bad


def assert_kernels_keep_the_rule(module) -> None:
    """A module loaded from the compile cache keeps only its kernels' names and ops; it was
    checked when it was compiled (the test suite compiles into a fresh cache)."""
    bad = [line for k in module.kernels if hasattr(k, "nodes")
           for line in kernel_rule_violations(k)]
    assert not bad, "\n".join(bad)
