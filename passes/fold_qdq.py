"""QDQ models run on integer kernels: dequantize -> float conv/matmul/gemm becomes the integer op.

onnxruntime's QDQ format (and slimc's own quantizer) writes a quantized layer as a float op
between ``DequantizeLinear`` nodes: ``conv(dequantize(qx, sx, zx), dequantize(qw, sw, zw), b)``.
Since ``dequantize`` is affine, that is exactly

    dequantize(conv_integer(qx, qw, zx, zw), sx * sw) + b

up to float rounding (the integer sum is exact, the float one was not), and the same holds for
matmul -> matmul_integer and gemm (a transposed weight is transposed once here, alpha goes into
the scale, beta * c is the bias). The rewrite needs what the integer ops can express: a
constant 8-bit weight with per-tensor or per-output-channel scale and zero point, and a
per-tensor activation scale and zero point. A bias that is itself ``dequantize(b_i32, s)``
with ``s`` equal to ``sx * sw`` (as onnxruntime's quantizer writes it) is added to the int32
accumulator, as QLinearConv does, instead of in float.

Max pooling moves into the quantized domain too: ``quantize(max_pool(x))`` becomes
``max_pool(quantize(x))`` where x holds no NaN (quantize is monotone), and a quantize that
undoes a dequantize with the same parameters disappears, so onnxruntime's ``dequantize ->
MaxPool -> quantize`` pools the bytes as they are.

Why a layer stayed float: ``SLIMC_DEBUG=quant`` prints one line per conv/matmul/gemm that reads
a dequantized value and was not rewritten, with the rule's reason; `explain_qdq(graph)` returns
the same lines for tests. The pass runs before constant folding, which would otherwise turn a
dequantized constant weight back into float32.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from slimc.ir import Graph, Value, dtypes
from slimc.ir.debug import enabled, log
from slimc.ir.value_facts import graph_facts

from .rewriter import Any, Builder, Const, Match, Op, Opt, RewritePass, Rule, explain

_Q8 = (dtypes.u8, dtypes.i8)
_CONV_ATTRS = ("strides", "pads", "dilations", "group")


def _dq(prefix: str, weight: bool = False) -> Op:
    """dequantize(q, s, zp?) binding `q<prefix>`, `s<prefix>`, `z<prefix>`; a weight's three
    inputs must be constants. Other users may read it too: it stays for them."""
    inner = Const if weight else Any
    return Op("dequantize", inner("q" + prefix), inner("s" + prefix), Opt(inner("z" + prefix)),
              name="dq" + prefix, one_use=False)


# ----- conditions ------------------------------------------------------------------------------

def _one_element(v: Optional[Value]) -> bool:
    return v is None or (v.type.is_static and v.type.numel == 1)


def _along(data: Optional[np.ndarray], rank: int, axis: int) -> bool:
    """`data` is one value, or varies only along `axis` of a rank-`rank` tensor."""
    if data is None or data.size == 1:
        return True
    if data.ndim > rank:
        return False
    shape = (1,) * (rank - data.ndim) + data.shape
    return all(d == 1 for i, d in enumerate(shape) if i != axis % rank)


def _check_activation(m: Match, prefix: str):
    q = m["q" + prefix]
    if q.type.dtype not in _Q8:
        return f"the dequantized input %{q.name} is {q.type.dtype}, not u8 or i8"
    for what in ("s", "z"):
        v = m.values.get(what + prefix)
        if not _one_element(v):
            return (f"the activation's {'scale' if what == 's' else 'zero point'} %{v.name} "
                    f"{v.type} is not per tensor")
    return True


def _check_weight(m: Match, axis: int, what: str):
    qw = m["qw"]
    if qw.type.dtype not in _Q8:
        return f"the weight %{qw.name} is {qw.type.dtype}, not u8 or i8"
    for key in ("sw", "zw"):
        v = m.values.get(key)
        if v is not None and not _along(v.data, qw.type.rank, axis):
            return f"the weight's {'scale' if key == 'sw' else 'zero point'} %{v.name} " \
                   f"{v.type} is not per tensor or per {what}"
    return True


def _all(*checks):
    def where(m: Match):
        for check in checks:
            ok = check(m)
            if ok is not True:
                return ok
        return True

    return where


def _conv_attrs_ok(m: Match):
    extra = set(m.node("conv").attrs) - set(_CONV_ATTRS)
    return True if not extra else f"conv has attributes {sorted(extra)} conv_integer lacks"


def _gemm_ok(m: Match):
    attrs = m.attrs("gemm")
    if attrs["trans_a"]:
        return "gemm transposes its activation (trans_a=1)"
    return True


def _rank2_weight(m: Match):
    return True if m["qw"].type.rank == 2 else f"the weight {m['qw'].type} is not a matrix"


# ----- building the replacement ------------------------------------------------------------------

def _vector(b: Builder, v: Optional[Value], shape) -> Optional[Value]:
    """A constant weight zero point reshaped (one element -> a scalar); all zeros (symmetric
    weights, the usual case) -> none at all, so the kernel has nothing to subtract."""
    if v is None or not v.data.any():
        return None
    data = v.data
    return b.const(data.reshape(()) if data.size == 1 else data.reshape(shape))


def _scalar(b: Builder, v: Optional[Value]) -> Optional[Value]:
    """A per-tensor activation parameter as a scalar (a reshape if it is not constant)."""
    if v is None or v.type.rank == 0:
        return v
    if v.is_constant and v.data is not None:
        return b.const(v.data.reshape(()))
    return b.op("reshape", [v, b.const(np.zeros(0, np.int64))])


def _zero_points(b: Builder, m: Match, zw: Optional[Value]):
    """(x zero point, weight zero point); an absent x one is 0 when the weight has one."""
    zx = _scalar(b, m.values.get("zx"))
    if zx is None and zw is not None:
        zx = b.const(np.zeros((), m["qx"].type.dtype.numpy))
    return zx, zw


def _scale(b: Builder, m: Match, sw_out: np.ndarray, alpha: float = 1.0):
    """(sx * sw * alpha), shaped for the output; folded when sx is constant. Also returns the
    constant data when known, for the bias check."""
    sw = sw_out.astype(np.float32)
    if alpha != 1.0:
        sw = (sw * np.float32(alpha)).astype(np.float32)
    sx = m["sx"]
    if sx.is_constant and sx.data is not None:
        s = (np.float32(sx.data.reshape(())) * sw).astype(np.float32)
        return b.const(s), s
    return b.op("mul", [_scalar(b, sx), b.const(sw)]), None


def _add_bias(b: Builder, acc: Value, scale: Value, s_data, bias: Optional[Value], shape) -> Value:
    """dequantize(acc, scale) + bias; an int32 bias dequantized by exactly `scale` joins the
    accumulator first (exact, as QLinearConv adds its bias)."""
    node = bias.producer if bias is not None else None
    if node is not None and node.op == "dequantize" and s_data is not None:
        q, s = node.inputs[0], node.inputs[1]
        zp = node.inputs[2] if len(node.inputs) > 2 else None
        if (q.type.dtype == dtypes.i32 and q.is_constant and s.is_constant and zp is None
                and q.data.ndim == 1 and s.data.size in (1, q.data.size)):
            per_channel = np.broadcast_to(s.data.reshape(-1), q.data.shape)
            if np.array_equal(per_channel, np.broadcast_to(s_data.reshape(-1), q.data.shape)):
                acc = b.op("add", [acc, b.const(q.data.reshape(shape))])
                bias = None
    y = b.op("dequantize", [acc, scale])
    if bias is None:
        return y
    if bias.type.rank == 1:
        bias = b.op("reshape", [bias, b.const(np.array(shape, np.int64))])
    return b.op("add", [y, bias])


def _conv(m: Match, b: Builder) -> Value:
    conv, qw = m.node("conv"), m["qw"]
    mch, nsp = qw.type.shape[0], qw.type.rank - 2
    out_shape = [-1] + [1] * nsp
    sw = m.data("sw")
    sw = sw.reshape(()) if sw.size == 1 else sw.reshape(mch)
    zx, zw = _zero_points(b, m, _vector(b, m.values.get("zw"), (mch,)))
    acc = b.op("conv_integer", [m["qx"], qw, zx, zw], **conv.attrs)
    scale, s_data = _scale(b, m, sw.reshape(()) if sw.ndim == 0 else sw.reshape(out_shape))
    return _add_bias(b, acc, scale, s_data, m.values.get("bias"), out_shape)


def _dense(m: Match, b: Builder, weight: np.ndarray, sw: np.ndarray, zw, alpha: float,
           bias: Optional[Value]) -> Value:
    """The matmul and gemm rewrite on a [K, N] weight with per-column parameters."""
    n = weight.shape[1]
    zx, zwv = _zero_points(b, m, _vector(b, zw, (n,)) if zw is not None else None)
    acc = b.op("matmul_integer", [m["qx"], b.const(weight), zx, zwv])
    scale, s_data = _scale(b, m, sw.reshape(()) if sw.size == 1 else sw.reshape(n), alpha)
    return _add_bias(b, acc, scale, s_data, bias, [n])


def _matmul(m: Match, b: Builder) -> Value:
    return _dense(m, b, m.data("qw"), m.data("sw"), m.values.get("zw"), 1.0, None)


def _gemm(m: Match, b: Builder) -> Value:
    attrs = m.attrs("gemm")
    w, sw, zw = m.data("qw"), m.data("sw"), m.values.get("zw")
    if attrs["trans_b"]:
        w = np.ascontiguousarray(w.T)
        sw = sw.T if sw.ndim == 2 else sw
        if zw is not None and zw.data.ndim == 2:
            zw = b.const(np.ascontiguousarray(zw.data.T))
    bias = m.values.get("bias")
    if bias is not None and attrs["beta"] != 1.0:
        beta = b.const(np.asarray(attrs["beta"], bias.type.dtype.numpy))
        bias = b.op("mul", [bias, beta])
    return _dense(m, b, w, sw, zw, float(attrs["alpha"]), bias)


def _weight_axis_for_gemm(m: Match):
    axis = 0 if m.attrs("gemm")["trans_b"] else 1
    return _check_weight(m, axis, "output column")


# ----- max pooling in the quantized domain ------------------------------------------------------
# quantize is monotone (a positive scale, rounding, clamping, + zero point), so it commutes with
# a maximum: quantize(max_pool(x)) = max_pool(quantize(x)), bit for bit, where no NaN is in x (a
# NaN wins a float max but quantizes to the lowest value). The pool then reads a quarter of the
# bytes, and the quantize joins the producer's epilogue (ResNet-18's stem writes u8, not f32).

def _quantize_commutes(m: Match):
    s = m.data("s")
    if not np.all(s > 0):
        return "the quantize's scale is not positive everywhere (then it is not monotone)"
    if not graph_facts(m.graph).never_nan(m["x"]):
        return f"%{m['x'].name} may hold NaN (a NaN wins a max but quantizes to the lowest value)"
    return True


def _pool_after_quantize(m: Match, b: Builder) -> Value:
    pool = m.node("pool")
    q = b.op("quantize", [m["x"], m["s"], m.values.get("z")], value_name=m["x"].name + ".q",
             **m.root.attrs)
    return b.op("max_pool", [q], like=pool, value_name=m.root.outputs[0].name, **pool.attrs)


def _not_graph_output(m: Match):
    return True if m.root.outputs[0] not in m.graph.outputs else \
        "the quantized value is a graph output and keeps its own name"


def _same_quantization(m: Match):
    """quantize(dequantize(q, s, z), s, z) is q: (q - z) * s / s rounds back to q - z while
    |q - z| * s stays a normal float (s between 1e-30 and 1e30)."""
    s_in, s_out = m.data("s_in"), m.data("s_out")
    z_in, z_out = m.values.get("z_in"), m.values.get("z_out")
    if m["q"].type.dtype != m.root.outputs[0].type.dtype:
        return f"the quantize gives {m.root.outputs[0].type.dtype}, the dequantized value is " \
               f"{m['q'].type.dtype}"
    if s_in.shape != s_out.shape or not np.array_equal(s_in, s_out):
        return "the scales differ"
    zi = np.zeros(1) if z_in is None else z_in.data
    zo = np.zeros(1) if z_out is None else z_out.data
    if not np.array_equal(np.broadcast_to(zi, s_in.shape), np.broadcast_to(zo, s_in.shape)):
        return "the zero points differ"
    if m.root.attrs.get("axis", 1) != m.node("dq").attrs.get("axis", 1) and s_in.size > 1:
        return "the two ops quantize along different axes"
    if not np.all((np.abs(s_in) > 1e-30) & (np.abs(s_in) < 1e30)):
        return "a scale is too small or too large for the round trip to be exact"
    return True


QUANTIZED_DOMAIN_RULES = [
    Rule("max_pool_after_quantize",
         Op("quantize", Op("max_pool", Any("x"), name="pool"), Const("s"), Opt(Const("z"))),
         _pool_after_quantize, where=_quantize_commutes),
    Rule("drop_quantize_of_dequantize",
         Op("quantize", Op("dequantize", Any("q"), Const("s_in"), Opt(Const("z_in")), name="dq",
                           one_use=False), Const("s_out"), Opt(Const("z_out"))),
         lambda m, b: m["q"], where=_all(_not_graph_output, _same_quantization)),
]

LAYER_RULES = [
    Rule("conv_to_conv_integer",
         Op("conv", _dq("x"), _dq("w", weight=True), Opt(Any("bias")), name="conv"), _conv,
         where=_all(lambda m: _check_activation(m, "x"),
                    lambda m: _check_weight(m, 0, "output channel"), _conv_attrs_ok)),
    Rule("matmul_to_matmul_integer",
         Op("matmul", _dq("x"), _dq("w", weight=True), name="matmul"), _matmul,
         where=_all(lambda m: _check_activation(m, "x"), _rank2_weight,
                    lambda m: _check_weight(m, 1, "output column"))),
    Rule("gemm_to_matmul_integer",
         Op("gemm", _dq("x"), _dq("w", weight=True), Opt(Any("bias")), name="gemm"), _gemm,
         where=_all(lambda m: _check_activation(m, "x"), _rank2_weight, _gemm_ok,
                    _weight_axis_for_gemm)),
]


def explain_qdq(graph: Graph) -> list[str]:
    """Why each float conv/matmul/gemm that reads a dequantized value was not rewritten."""
    lines = []
    for rule in LAYER_RULES:
        for node, reason in explain(rule, graph):
            if any(v is not None and v.producer is not None and v.producer.op == "dequantize"
                   for v in node.inputs):
                lines.append(f"%{node.outputs[0].name} ({node.op}, node {node.label!r}) stays "
                             f"float: {reason}")
    return lines


class FoldQDQ(RewritePass):
    """dequantize -> conv/matmul/gemm becomes conv_integer/matmul_integer -> dequantize."""

    def __init__(self):
        super().__init__("fold_qdq", QUANTIZED_DOMAIN_RULES + LAYER_RULES)

    def run(self, graph: Graph) -> bool:
        changed = super().run(graph)
        if enabled("quant"):
            for line in explain_qdq(graph):
                log("quant", line)
        return changed
