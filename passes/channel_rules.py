"""How channel ids pass through each op, as data: the rules `prune_channels` follows.

An op's kind (`RULES`) names the rule of `prune_channels._Analysis` that carries its input
channels to its output; `BLOCKED` ops keep the channels they read, with the reason; every
other reason channels stay is a line of `REASONS`. Adding an op to channel pruning is adding
it here (and, for a new kind, a rule in the analysis).
"""

from __future__ import annotations

from slimc.ir import FusionKind, get_op, has_op

CRITERIA = ("l1", "l2")

# op -> how channel ids pass through it (the rule of that name in `_Analysis`). Propagating:
# "same" (one tensor in, element by element), "broadcast" (operands' channels tied, per-channel
# constants sliced), "channelwise" (x[N, C, ...] on axis 1 and per-channel constant vectors:
# pooling, batch norm), "pad", "axis" (mixes or splits along its axis/axes attribute only),
# "reshape", "transpose", "concat", "slice". "layer" consumes its input's channels and produces
# new ones, the pruning roots (a depthwise conv propagates its input's). "block" (BLOCKED says
# why). An op not listed propagates if the registry declares it elementwise with one input,
# else it blocks as unknown.
_SAME = ["relu", "leaky_relu", "sigmoid", "tanh", "hard_sigmoid", "hard_swish", "gelu", "elu",
         "selu", "celu", "softplus", "softsign", "mish", "identity", "cast", "abs", "neg",
         "thresholded_relu", "shrink"]
_BROADCAST = ["add", "sub", "mul", "div", "pow", "max", "min", "sum", "mean", "prelu", "where",
              "clip", "equal", "greater", "greater_equal", "less", "less_equal", "and", "or",
              "xor", "mod"]
_AXIS = ["softmax", "log_softmax", "hardmax", "lp_normalization", "arg_max", "arg_min",
         "layer_norm", "mean_variance_normalization", "split"] + [
    "reduce_" + r for r in ("l1", "l2", "log_sum", "log_sum_exp", "max", "mean", "min", "prod",
                            "sum", "sum_square")]
_CHANNELWISE = ["batch_norm", "instance_norm", "max_pool", "avg_pool", "lp_pool",
                "global_avg_pool", "global_max_pool", "global_lp_pool"]
# Ops that block, and why: the channels they read stay.
BLOCKED = {
    **dict.fromkeys(["shape", "size"], "reads the channel count"),
    "lrn": "mixes neighbouring channels",
    "group_norm": "normalizes groups of channels together",
    **dict.fromkeys(["depth_to_space", "space_to_depth"], "moves channels to or from space"),
    **dict.fromkeys(["gather", "gather_elements", "gather_nd"], "picks elements by index"),
    **dict.fromkeys(["expand", "tile"], "spells the channel count in its shape input"),
    **dict.fromkeys(["resize", "conv_transpose"], "is not followed by channel pruning"),
    "max_pool_with_indices": "returns indices that count channels",
    **dict.fromkeys(["attention", "einsum"], "mixes them"),
    **dict.fromkeys(["quantize", "dequantize", "dynamic_quantize", "conv_integer",
                     "matmul_integer"], "is quantized (prune before quantizing)"),
}
RULES: dict[str, str] = {
    **dict.fromkeys(_SAME, "same"), **dict.fromkeys(_BROADCAST, "broadcast"),
    **dict.fromkeys(_AXIS, "axis"), **dict.fromkeys(_CHANNELWISE, "channelwise"),
    **dict.fromkeys(["reshape", "flatten", "squeeze", "unsqueeze"], "reshape"),
    **{op: op for op in ("pad", "transpose", "concat", "slice")},
    **dict.fromkeys(["conv", "gemm", "matmul"], "layer"), **dict.fromkeys(BLOCKED, "block"),
}

# Every other reason channels stay, in one place ({node} is the node's source name).
REASONS = {
    "block": "{op} {node!r} {detail}",
    "unknown": "{op} {node!r} is not in the channel rules (it may mix channels)",
    "mixes": "{op} {node!r} mixes them ({detail})",
    "output": "they reach the graph output %{detail}",
    "not_selected": "layer {node!r} is not among layers=",
    "free_operand": "{op} {node!r} combines them with %{detail}, which is not a constant and "
                    "varies along the channels",
    "misaligned": "{op} {node!r} meets channels on different axes",
    "dynamic_weight": "{op} {node!r} has a weight (2-D for a matmul) or bias that is not a "
                      "constant",
    "not_channel_axis": "{op} {node!r} reads them on an axis that is not its channel axis "
                        "({detail})",
    "reshape": "{op} {node!r} splits or reorders the channels{detail}",
    "dw_input": "depthwise conv {node!r} reads an input whose channels cannot be pruned",
    "grouped": "grouped conv {node!r} needs an equal number removed per group ({detail})",
    "too_few": "a ratio of {detail} removes none of them",
}


def rule_of(op: str) -> str:
    """The op's kind in RULES; an unlisted op declared elementwise with one input is "same"."""
    d = get_op(op) if op not in RULES and has_op(op) else None
    if d is not None and d.fusion == FusionKind.ELEMENTWISE and d.num_inputs == (1, 1):
        return "same"
    return RULES.get(op, "unknown")
