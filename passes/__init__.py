"""Passes: the infrastructure (Pass, PassManager, the pattern rewriter) and the passes."""

from .pass_manager import FunctionPass, Pass, PassManager, PassReport, function_pass
from .rewriter import (Any, Builder, Const, Either, Match, Op, Opt, Product, RewritePass, Rule,
                       Scalar, apply_rule, explain)
from .basic import CommonSubexpressionElimination, DeadCodeElimination, FoldConstants, InferShapes
from .pipeline import PASSES, make_pass, standard_pipeline

__all__ = ["Pass", "FunctionPass", "function_pass", "PassManager", "PassReport", "Rule", "Op",
           "Any", "Const", "Opt", "Either", "Product", "Scalar", "Match", "Builder", "RewritePass",
           "apply_rule", "explain",
           "InferShapes", "DeadCodeElimination", "CommonSubexpressionElimination",
           "FoldConstants", "PASSES", "make_pass", "standard_pipeline"]
