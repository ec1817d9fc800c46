"""The `layout` pass: convolutional networks run in the blocked NCHW[b]c layout.

b is the target's vector width in floats (8 with AVX2 and NEON... 16 with AVX-512), so one
vector is b channels of one pixel and the convolution kernels (codegen/cpu/gen_blocked.py)
never meet a tail, however small the image: MobileNetV2's 7x7 and 14x14 planes are where
NCHW row kernels lose most.

Three steps, each shown by ``SLIMC_DEBUG=layout`` with its reason:

1. Every eligible ``conv`` becomes ``from_blocked(conv2d_nchwc(to_blocked(x)))`` (or the
   depthwise op), weights and bias repacked at compile time. Eligible: 2-D, float32, static
   shapes, constant weights, and group 1 with Cout a multiple of b (Cin not a multiple of b
   reads NCHW as blocks of 1 channel: the first layer of an image model), or depthwise
   (group = Cin = Cout, a multiple of b). Winograd convolutions (the `winograd` pass runs
   first) keep NCHW, and so does every conv connected to one through 4-D tensors
   (`image_regions`): a ResNet whose 3x3 layers take Winograd stays NCHW throughout rather
   than converting around each of them. A sparse 1x1 convolution (`sparsify`: its kernel
   runs along an NCHW image's pixels) keeps its region NCHW the same way.
2. Conversions sink through elementwise ops: ``f(from_blocked(a), c)`` becomes
   ``from_blocked(f(a, blocked(c)))`` when every other operand is a constant (repacked here),
   a scalar, or a per-channel runtime vector [N, C, 1, 1] (a squeeze-and-excite scale, which
   gets a small ``to_blocked`` of its own).
   Spatial reductions (global pools, reduce_mean over H and W) take the blocked tensor too,
   so only their [N, C, 1, 1] result is converted.
3. ``to_blocked(from_blocked(a))`` is `a`: conversions between two blocked ops cancel, so a
   chain conv -> clip -> depthwise conv -> clip -> conv -> add converts once at each end.
4. A convolution of ``x * s``, s a per-channel scale [N, C/b, 1, 1, b] (squeeze-and-excite),
   takes s as its fourth input and scales its weights per call instead.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

import numpy as np

from slimc.ir import Graph, Node, Value, dtypes, get_op
from slimc.ir.builder import add_op
from slimc.ir.debug import log
from slimc.ir.graph import constant_data
from slimc.ir.ops.layout import block_array, block_conv_weights, block_depthwise_weights
from slimc.ir.registry import FusionKind

from .pass_manager import Pass

BLOCKED_CONVS = ("conv2d_nchwc", "depthwise_conv2d_nchwc")
NCHW_CONVS = ("winograd_conv2d", "sparse_conv")  # kernels on NCHW images: their regions stay


def conv_plan(node: Node, block: int):
    """("dense", bi) or ("depthwise", b) for a conv the pass rewrites, or the reason why not."""
    x, w = node.inputs[0], node.inputs[1]
    out = node.outputs[0]
    if x.type.rank != 4:
        return f"rank {x.type.rank}: blocked kernels are 2-D"
    if x.type.dtype != dtypes.f32:
        return f"dtype {x.type.dtype}: blocked kernels are float32"
    if not (x.type.is_static and out.type.is_static):
        return "shapes are not static"
    if constant_data(w) is None:
        return f"weights %{w.name} are not a constant (they are repacked at compile time)"
    if len(node.inputs) > 2 and node.inputs[2] is not None and constant_data(node.inputs[2]) is None:
        return "bias is not a constant"
    group = int(get_op("conv").resolve_attrs(node.attrs, node.label)["group"])
    cin, cout = x.type.shape[1], out.type.shape[1]
    if group == cin == cout and w.type.shape[1] == 1:
        if cin % block:
            return f"depthwise over {cin} channels, not a multiple of the block {block}"
        return ("depthwise", block)
    if group != 1:
        return f"group={group}: blocked kernels do group 1 and depthwise only"
    if cout % block:
        return f"{cout} output channels, not a multiple of the block {block}"
    return ("dense", block if cin % block == 0 else 1)


def _window_attrs(node: Node) -> dict:
    a = get_op("conv").resolve_attrs(node.attrs, node.label)
    return {k: a[k] for k in ("strides", "pads", "dilations") if a[k] is not None}


def _add_node(graph: Graph, op: str, inputs, before: Node, name: str, **attrs) -> Value:
    """A new `op` node just before `before`, in its source location, its output named `name`."""
    return add_op(graph, op, inputs, attrs, name=before.name, output_name=name, before=before,
                  label=before.label).outputs[0]


def _const(graph: Graph, data: np.ndarray, name: str) -> Value:
    return graph.add_constant(name, np.ascontiguousarray(data))


def _to_blocked(graph: Graph, v: Value, block: int, before: Node) -> Value:
    """v as blocks; blocks of 1 channel are NCHW itself (conv2d_nchwc reads it as is)."""
    if block == 1:
        return v
    return _add_node(graph, "to_blocked", [v], before, f"{v.name}.nchw{block}c", block=block)


def _rewrite_conv(graph: Graph, node: Node, kind: str, bi: int, block: int) -> None:
    x, w = node.inputs[0], node.inputs[1]
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    out = node.outputs[0]
    wd = constant_data(w)
    name = out.name
    if kind == "depthwise":
        wb = _const(graph, block_depthwise_weights(wd, block), name + ".w.blocked")
        op = "depthwise_conv2d_nchwc"
    else:
        wb = _const(graph, block_conv_weights(wd, bi, block), name + ".w.blocked")
        op = "conv2d_nchwc"
    inputs = [_to_blocked(graph, x, bi, node), wb]
    if bias is not None:
        inputs.append(_const(graph, constant_data(bias).reshape(-1, block), name + ".b.blocked"))
    yb = _add_node(graph, op, inputs, node, name + ".blocked", **_window_attrs(node))
    back = _add_node(graph, "from_blocked", [yb], node, name + ".nchw", block=block)
    out.replace_all_uses_with(back)
    graph.remove_node(node)
    if name not in graph._names:
        graph.rename(back, name)


# ----------------------------------------------------------------------------------------------
# Sinking conversions through elementwise ops
# ----------------------------------------------------------------------------------------------


def _from_blocked_source(v: Optional[Value]) -> Optional[Value]:
    p = v.producer if v is not None else None
    return p.inputs[0] if p is not None and p.op == "from_blocked" else None


def _blocked_operand(graph: Graph, v: Value, nchw: tuple, block: int, before: Node):
    """The operand `v` of an elementwise op on an [N, C, H, W] tensor, for the same op on
    its blocked form: (value, None) or (None, why not)."""
    shape = list(v.type.shape)
    if len(shape) > 4:
        return None, f"%{v.name} has rank {len(shape)}"
    s4 = [1] * (4 - len(shape)) + shape
    if any(d not in (1, full) for d, full in zip(s4, nchw)):
        return None, f"%{v.name} {v.type} does not broadcast to {list(nchw)}"
    if all(d == 1 for d in s4):
        return v, None  # a scalar broadcasts in any rank
    src = _from_blocked_source(v)
    if src is not None:  # already blocked: [N, C, H, W] or a broadcast [N, C, 1, 1]
        if src.type.shape[-1] != block or len(shape) != 4:
            return None, f"%{v.name} comes from blocks of another size"
        return src, None
    data = constant_data(v)
    if data is not None:
        d4 = data.reshape(s4)
        blocked = block_array(d4, block) if s4[1] == nchw[1] else d4[..., None]
        return _const(graph, blocked, v.name + f".nchw{block}c"), None
    if len(shape) == 4 and s4[1] == nchw[1] and s4[2] == s4[3] == 1:
        return _to_blocked(graph, v, block, before), None  # [N, C, 1, 1]: a small conversion
    for user in v.users:  # converted already for another consumer: free
        if user.op == "to_blocked" and user.attrs.get("block") == block and \
                _precedes(graph, user, before):
            return user.outputs[0], None
    return None, f"%{v.name} {v.type} is a runtime tensor in NCHW (converting it would cost " \
                 f"as much as staying in NCHW)"


def _precedes(graph: Graph, a: Node, b: Node) -> bool:
    nodes = graph.nodes
    return nodes.index(a) < nodes.index(b)


def _replace_by_blocked(graph: Graph, node: Node, yb: Value, block: int) -> None:
    """`node`'s result becomes from_blocked(yb), under the result's name; `node` goes."""
    out = node.outputs[0]
    back = _add_node(graph, "from_blocked", [yb], node, out.name + ".nchw", block=block)
    name = out.name
    out.replace_all_uses_with(back)
    graph.remove_node(node)
    graph.rename(back, name)


def _sink(graph: Graph, node: Node) -> bool:
    """Rewrite f(.., from_blocked(a), ..) as from_blocked(f(.., a, ..)) where that is free."""
    opdef = get_op(node.op)
    if opdef.fusion > FusionKind.BROADCAST or len(node.outputs) != 1:
        return False
    sources = [_from_blocked_source(v) for v in node.inputs]
    blocked_in = [s for s in sources if s is not None]
    if not blocked_in:
        return False
    out = node.outputs[0]
    nchw = tuple(out.type.shape)
    block = blocked_in[0].type.shape[-1]
    if len(nchw) != 4:
        log("layout", f"%{out.name} ({node.op}) stays NCHW: its result has rank {len(nchw)}")
        return False
    new_inputs = []
    for v in node.inputs:
        if v is None:
            new_inputs.append(None)
            continue
        bv, why = _blocked_operand(graph, v, nchw, block, node)
        if bv is None:
            log("layout", f"%{out.name} ({node.op}) stays NCHW: {why}")
            return False
        new_inputs.append(bv)
    yb = add_op(graph, node.op, new_inputs, node.attrs, name=node.name,
                output_name=f"{out.name}.nchw{block}c", before=node, label=node.label).outputs[0]
    _replace_by_blocked(graph, node, yb, block)
    return True


# spatial reductions that keep the channel axis: op -> the reduce_* op on the blocked tensor
SPATIAL_REDUCTIONS = {"reduce_mean": "reduce_mean", "reduce_sum": "reduce_sum",
                      "reduce_max": "reduce_max", "reduce_min": "reduce_min",
                      "global_avg_pool": "reduce_mean", "global_max_pool": "reduce_max"}


def _sink_reduction(graph: Graph, node: Node) -> bool:
    """reduce(from_blocked(a)) over H and/or W, keeping dims -> from_blocked(reduce(a)):
    the global pool at the end of a CNN reads the blocked tensor, and converts only its
    [N, C, 1, 1] result."""
    if node.op not in SPATIAL_REDUCTIONS or len(node.inputs) != 1:
        return False
    src = _from_blocked_source(node.inputs[0])
    if src is None or node.inputs[0].type.rank != 4:
        return False
    out = node.outputs[0]
    if node.op.startswith("global_"):
        axes = [2, 3]
    else:
        a = get_op(node.op).resolve_attrs(node.attrs, node.label)
        if not int(a["keepdims"]) or a["axes"] is None:
            log("layout", f"%{out.name} ({node.op}) stays NCHW: it drops or mixes axes")
            return False
        axes = sorted(int(x) % 4 for x in a["axes"])
        if not axes or any(x < 2 for x in axes):
            log("layout", f"%{out.name} ({node.op}) stays NCHW: it reduces over axes {axes}, "
                          f"not only spatial ones")
            return False
    block = src.type.shape[-1]
    op = SPATIAL_REDUCTIONS[node.op]
    yb = _add_node(graph, op, [src], node, f"{out.name}.nchw{block}c", axes=axes, keepdims=1)
    _replace_by_blocked(graph, node, yb, block)
    return True


def _cancel(graph: Graph, node: Node) -> bool:
    """to_blocked(from_blocked(a)) -> a, same block."""
    src = _from_blocked_source(node.inputs[0])
    if node.op != "to_blocked" or src is None or src.type.shape[-1] != node.attrs.get("block"):
        return False
    node.outputs[0].replace_all_uses_with(src)
    graph.remove_node(node)
    return True


# Most weights per output block whose input scale is folded (codegen scales them per call
# on the stack: gen_blocked.SCALED_WEIGHTS_MAX is 3 blocks of this).
SCALE_FOLD_MAX_WEIGHTS = 16384


def _fold_input_scale(graph: Graph, node: Node) -> bool:
    """conv2d_nchwc(x * s) with s [N, C/b, 1, 1, b] -> conv2d_nchwc(x, w, bias, s): the kernel
    scales its weights per call (squeeze-and-excite costs Cout*Cin multiplies, not a pass
    over the feature map)."""
    if node.op != "conv2d_nchwc" or len(node.inputs) > 3:
        return False
    x = node.inputs[0]
    mul = x.producer
    if mul is None or mul.op != "mul" or len(x.uses) != 1 or x in graph.outputs:
        return False
    w = node.inputs[1]
    if tuple(x.type.shape[2:4]) == (1, 1):
        # x * s on a 1x1 map (SE's own SiLU between its two convolutions): one multiply per
        # channel, which fuses into the producer's store; folding would cost Cout*Cin
        log("layout", f"%{node.outputs[0].name}: the multiply %{x.name} stays: its input is "
                      f"one value per channel already")
        return False
    per_block = int(np.prod(w.type.shape[1:]))
    if per_block > SCALE_FOLD_MAX_WEIGHTS:
        log("layout", f"%{node.outputs[0].name}: the scale %{x.name} stays a multiply "
                      f"({per_block} weights per output block to scale, more than "
                      f"{SCALE_FOLD_MAX_WEIGHTS})")
        return False
    want = (x.type.shape[0], x.type.shape[1], 1, 1, x.type.shape[-1])
    a, sc = mul.inputs
    if tuple(a.type.shape) == want and tuple(sc.type.shape) == tuple(x.type.shape):
        a, sc = sc, a
    if tuple(a.type.shape) != tuple(x.type.shape) or tuple(sc.type.shape) != want or \
            sc.type.dtype != x.type.dtype:
        return False
    bias = node.inputs[2] if len(node.inputs) > 2 else None
    node.set_inputs([a, w, bias, sc])
    graph.remove_node(mul)
    log("layout", f"%{node.outputs[0].name}: input scale %{sc.name} folded into the weights")
    return True


def _tidy_names(graph: Graph) -> None:
    """`a.nchw8c.1` -> `a.nchw8c` where a conversion that took the name first has gone."""
    for node in graph.nodes:
        for v in node.outputs:
            m = re.fullmatch(r"(.*\.nchw\d+c)\.\d+", v.name)
            if m and m.group(1) not in graph._names:
                graph.rename(v, m.group(1))


def _remove_dead(graph: Graph) -> None:
    changed = True
    while changed:
        changed = False
        for node in reversed(list(graph.nodes)):
            if node.op in ("to_blocked", "from_blocked") and not any(
                    v.uses or v in graph.outputs for v in node.outputs):
                graph.remove_node(node)
                changed = True


def image_regions(graph: Graph) -> dict:
    """id(node) -> region id: nodes joined by the 4-D image tensors they pass each other.

    A region is the unit of the layout decision (a residual network is one region, its skip
    connections included), so the decision never puts a conversion inside a chain of layers
    that could all have stayed in one layout."""
    parent: dict = {}

    def find(i):
        while parent.setdefault(i, i) != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for node in graph.nodes:
        find(id(node))
        if not node.outputs or node.outputs[0].type.rank != 4:
            continue
        for v in node.inputs:
            if v is not None and v.type.rank == 4 and v.producer is not None:
                parent[find(id(v.producer))] = find(id(node))
    return {k: find(k) for k in list(parent)}


def _island(node: Node, plan, block: int) -> str:
    """Why a conv among NCHW layers runs blocked all the same, converted at both ends ("" if
    it does not): a dense conv over whole blocks of channels with a window wider than 1x1
    (a stride-2 3x3 between Winograd layers). In NCHW it would run as im2col and a GEMM,
    which copies its input kh*kw / (sh*sw) times (2.25x for a 3x3 of stride 2) where the
    two conversions copy its input and output once; the blocked kernel reads the image in
    place. On the Xeon here, one thread, ResNet-18's stride-2 3x3 layers took 1.9 ms each
    through the GEMM and ~1.1 ms blocked, conversions included."""
    if isinstance(plan, str) or plan != ("dense", block):
        return ""
    kh, kw = node.inputs[1].type.shape[2:4]
    if kh * kw == 1:
        return ""
    a = _window_attrs(node)
    sh, sw = a.get("strides") or (1, 1)
    return (f"a {kh}x{kw} window (stride {sh}x{sw}) reads its input in place, where im2col "
            f"would copy it {kh * kw / (sh * sw):g} times")


@dataclass
class Layout(Pass):
    """The `layout` pass. `block` is the channels per block (the target's vector width)."""

    block: int = 8
    name: str = "layout"

    def run(self, graph: Graph) -> bool:
        changed = False
        regions = image_regions(graph)
        nchw_regions = {regions[id(n)]: n for n in graph.nodes if n.op in NCHW_CONVS}
        for node in list(graph.nodes):
            if node.graph is not graph or node.op != "conv":
                continue
            keeper = nchw_regions.get(regions[id(node)])
            plan = conv_plan(node, self.block)
            island = keeper is not None and _island(node, plan, self.block)
            if keeper is not None and not island:
                kind = "Winograd" if keeper.op == "winograd_conv2d" else "sparse 1x1"
                log("layout", f"%{node.outputs[0].name} (conv) stays NCHW: its layers include "
                              f"{kind} convolutions (%{keeper.outputs[0].name}), whose kernels "
                              f"are NCHW; blocking the others would convert between them")
                continue
            if isinstance(plan, str):
                log("layout", f"%{node.outputs[0].name} (conv) stays NCHW: {plan}")
                continue
            kind, bi = plan
            log("layout", f"%{node.outputs[0].name} (conv): blocked {kind}, NCHW{self.block}c"
                          + (" from NCHW input" if bi == 1 else "")
                          + (f", converted at both ends (its layers stay NCHW for "
                             f"%{keeper.outputs[0].name}): {island}" if island else ""))
            _rewrite_conv(graph, node, kind, bi, self.block)
            changed = True
        if not changed:
            return False
        moved = True
        while moved:
            moved = False
            for node in list(graph.nodes):
                if node.graph is graph and (_cancel(graph, node) or _sink(graph, node)
                                            or _sink_reduction(graph, node)):
                    moved = True
        _remove_dead(graph)
        for node in list(graph.nodes):
            if node.graph is graph:
                _fold_input_scale(graph, node)
        _tidy_names(graph)
        return True
