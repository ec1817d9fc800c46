"""The standard pipelines, by optimization level, and lookup of passes by name.

    -O0  infer_shapes
    -O1  + fold_qdq (dequantize -> float conv/matmul/gemm becomes the integer op; before
         fold_constants, which would turn a dequantized int8 weight back into float32),
         fold_constants, simplify (views and no-ops, transposes across unit reshapes,
         scalar multiplies into constant weights), recognize (layer norm, GELU, softmax and
         attention written out op by op), fold_batch_norm (BN, bias and scale folded into
         convolutions), cse, dce; and fusion in code generation
    -O2  (default) the -O1 passes, then the target's own rewrites into kernel-shaped ops
         (`Backend.pipeline_passes`; the CPU's: winograd, where a cost model finds F(2x2) or
         F(4x4) faster for eligible 3x3 convolutions, both within -O2's tolerance; layout,
         convolutions in the blocked NCHW[b]c layout, b the vector width), then dce
    -O3  -O2 plus transformations that trade a stated amount of precision for speed

User passes given to ``compile(passes=[...])`` run after the standard simplification passes
and before the target's, so they see a clean graph of standard ops (plain NCHW convolutions)
and their results are still rewritten and fused. slimc/compiler.py `pipeline` is the one
place that puts the target's passes in.
"""

from __future__ import annotations

from typing import Callable, Iterable, Sequence

from slimc.ir.errors import SlimcError

from .basic import CommonSubexpressionElimination, DeadCodeElimination, FoldConstants, InferShapes
from .fold_batch_norm import FoldBatchNorm
from .fold_qdq import FoldQDQ
from .layout import Layout
from .pass_manager import Pass
from .recognize import Recognize
from .simplify import Simplify
from .winograd import Winograd

# name -> factory; one place that knows every standard pass.
PASSES: dict[str, Callable[[], Pass]] = {
    "infer_shapes": InferShapes,
    "fold_constants": FoldConstants,
    "fold_qdq": FoldQDQ,
    "simplify": Simplify,
    "recognize": Recognize,
    "fold_batch_norm": FoldBatchNorm,
    "cse": CommonSubexpressionElimination,
    "dce": DeadCodeElimination,
    "winograd": Winograd,
    "layout": Layout,
}

_SIMPLIFY = ["infer_shapes", "fold_qdq", "fold_constants", "simplify", "recognize",
             "fold_batch_norm", "fold_constants", "cse", "dce"]
# level -> the passes before the user's (the target's come after them)
_LEVELS = {0: ["infer_shapes"], 1: _SIMPLIFY, 2: _SIMPLIFY, 3: _SIMPLIFY}


def make_pass(name: str) -> Pass:
    try:
        return PASSES[name]()
    except KeyError:
        raise SlimcError(f"unknown pass {name!r}; known passes: {', '.join(sorted(PASSES))}") \
            from None


def standard_pipeline(opt_level: int = 2, user_passes: Sequence[Pass] = (),
                      disable: Iterable[str] = (), target_passes: Sequence[Pass] = ()) -> list[Pass]:
    """The passes of `opt_level`: the standard ones, the user's, then `target_passes` (the
    backend's, configured for its target) and a dce after them; any of them can be
    disabled by name."""
    if opt_level not in _LEVELS:
        raise SlimcError(f"opt_level must be 0..3, got {opt_level!r}")
    disable = set(disable)
    unknown = disable - set(PASSES) - {p.name for p in target_passes}
    if unknown:
        raise SlimcError(f"cannot disable unknown pass(es) {sorted(unknown)}; known passes: "
                         f"{', '.join(sorted(PASSES))}")
    passes = [make_pass(n) for n in _LEVELS[opt_level] if n not in disable] + list(user_passes)
    after = [p for p in target_passes if p.name not in disable]
    if after:
        passes += after + ([make_pass("dce")] if "dce" not in disable else [])
    return passes
