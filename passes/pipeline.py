"""The standard pipelines, by optimization level, and lookup of passes by name.

    -O0  infer_shapes
    -O1  + fold_constants, simplify (views and no-ops, transposes across unit reshapes,
         scalar multiplies into constant weights), recognize (layer norm, GELU, softmax and
         attention written out op by op), fold_batch_norm (BN, bias and scale folded into
         convolutions), cse, dce; and fusion in code generation
    -O2  (default) the -O1 passes, then winograd (eligible 3x3 convolutions become
         winograd_conv2d where a cost model finds F(2x2) or F(4x4) faster; both keep -O2's
         tolerance); layout (convolutions in the blocked NCHW[b]c layout, b the vector
         width, with the fewest conversions); more graph rewrites join here as they land
    -O3  -O2 plus transformations that trade a stated amount of precision for speed

User passes given to ``compile(passes=[...])`` run after the standard simplification passes
and before winograd and layout, so they see a clean graph of standard ops (plain NCHW
convolutions) and their results are still rewritten and fused.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from slimc.ir.errors import SlimcError

from .basic import CommonSubexpressionElimination, DeadCodeElimination, FoldConstants, InferShapes
from .fold_batch_norm import FoldBatchNorm
from .layout import Layout
from .pass_manager import Pass
from .recognize import Recognize
from .simplify import Simplify
from .winograd import Winograd

# name -> factory; one place that knows every standard pass.
PASSES: dict[str, Callable[[], Pass]] = {
    "infer_shapes": InferShapes,
    "fold_constants": FoldConstants,
    "simplify": Simplify,
    "recognize": Recognize,
    "fold_batch_norm": FoldBatchNorm,
    "cse": CommonSubexpressionElimination,
    "dce": DeadCodeElimination,
    "winograd": Winograd,
    "layout": Layout,
}

_SIMPLIFY = ["infer_shapes", "fold_constants", "simplify", "recognize", "fold_batch_norm",
             "fold_constants", "cse", "dce"]
# level -> (passes before the user's, passes after them: rewrites into kernel-shaped ops)
_LEVELS = {0: (["infer_shapes"], []), 1: (_SIMPLIFY, []),
           2: (_SIMPLIFY, ["winograd", "layout", "dce"]),
           3: (_SIMPLIFY, ["winograd", "layout", "dce"])}


def make_pass(name: str) -> Pass:
    try:
        return PASSES[name]()
    except KeyError:
        raise SlimcError(f"unknown pass {name!r}; known passes: {', '.join(sorted(PASSES))}") \
            from None


def standard_pipeline(opt_level: int = 2, user_passes: Sequence[Pass] = (),
                      disable: Iterable[str] = (), vector_width: int = 8) -> list[Pass]:
    """The passes of `opt_level`; `vector_width` (floats, the target's) sizes the layout
    pass's channel blocks."""
    if opt_level not in _LEVELS:
        raise SlimcError(f"opt_level must be 0..3, got {opt_level!r}")
    disable = set(disable)
    unknown = disable - set(PASSES)
    if unknown:
        raise SlimcError(f"cannot disable unknown pass(es) {sorted(unknown)}; known passes: "
                         f"{', '.join(sorted(PASSES))}")
    before, after = _LEVELS[opt_level]
    passes = [make_pass(n) for n in before if n not in disable] + list(user_passes) + \
        [make_pass(n) for n in after if n not in disable]
    for p in passes:
        if isinstance(p, Winograd):
            p.opt_level = opt_level  # the tiles it may use depend on the level
        if isinstance(p, Layout):
            p.block = vector_width
    return passes
