"""Op families of the fuzzer's models: matmul, gemm and einsum; convolutions, pools, norms."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import strategies as st

from .builder import DIMS, F16, F32, I32, I64, Builder, matmul_shape, numel


def op_matmul(b: Builder):
    v = b.pick(lambda v: v.dtype in (F32, F16, I32, I64) and v.shape)
    if v is None:
        return
    k = v.shape[-1]
    form = b.choice(["weight", "vector", "batched", "value"])
    if form == "value":
        w = b.pick(lambda w: w.dtype == v.dtype and matmul_shape(v.shape, w.shape) is not None)
        if w is None:
            return
    else:
        n = b.choice(DIMS)
        wshape = {"weight": (k, n), "vector": (k,),
                  "batched": b.broadcast_partner(v.shape[:-2]) + (k, n)}[form]
        w = b.const(b.rng.uniform(-1, 1, wshape).astype(v.dtype) if v.dtype.kind == "f"
                    else b.rng.integers(-3, 4, wshape).astype(v.dtype))
        if b.one_in(3):  # the weight on the left
            v, w = w, v
    shape = matmul_shape(v.shape, w.shape)
    if shape is None:
        return
    return b.emit1("MatMul", [v, w], v.dtype, shape, max(k, 1) * v.bound * w.bound,
                   v.dtype.kind == "i")


def op_gemm(b: Builder):
    v = b.pick(lambda v: v.dtype == F32 and len(v.shape) == 2)
    if v is None:
        return
    trans_a, trans_b = b.choice([0, 1]), b.choice([0, 1])
    m, k = v.shape[::-1] if trans_a else v.shape
    n = b.choice(DIMS)
    w = b.const(b.rng.uniform(-1, 1, (n, k) if trans_b else (k, n)).astype(np.float32))
    alpha, beta = b.choice([1.0, 0.5, -1.5]), b.choice([1.0, 0.5, -1.5])
    ins, bound = [v, w], abs(alpha) * max(k, 1) * v.bound
    cshape = b.choice([None, (), (n,), (1, n), (m, 1), (m, n)])
    if cshape is not None:
        ins.append(b.const(b.rng.uniform(-1, 1, cshape).astype(np.float32)))
        bound += abs(beta)
    return b.emit1("Gemm", ins, F32, (m, n), bound, False, alpha=alpha, beta=beta,
                   transA=trans_a, transB=trans_b)


def op_einsum(b: Builder):
    v = b.pick(lambda v: v.dtype == F32 and 1 <= len(v.shape) <= 3)
    if v is None:
        return
    s = v.shape
    n = b.choice([1, 3, 5])
    if len(s) == 1:
        forms = [("i,j->ij", (n,), s + (n,)), ("i,i->", s, ())]
    elif len(s) == 2:
        forms = [("ij,jk->ik", (s[1], n), (s[0], n)), ("ij,ij->i", s, s[:1]), ("ij->ji", None, s[::-1]),
                 ("ij->", None, ())]
    else:
        forms = [("bij,bjk->bik", (s[0], s[2], n), (s[0], s[1], n)), ("bij->bji", None, (s[0], s[2], s[1])),
                 ("bij->j", None, (s[2],))]
    eq, wshape, out = b.choice(forms)
    ins = [v] + ([b.const(b.rng.uniform(-1, 1, wshape).astype(np.float32))] if wshape is not None else [])
    bound = v.bound * max(numel(s), 1)
    return b.emit1("Einsum", ins, F32, out, bound, eq in ("ij->ji", "bij->bji") and v.exact, equation=eq)


def _window(b: Builder, spatial, allow_dilation: bool, pad_below_kernel: bool):
    """Kernel, strides, dilations, pads, auto_pad and output dims for a sliding window."""
    ks, ss, ds, pb, pe = [], [], [], [], []
    if b.one_in(2):  # a CNN's layer: k x k, stride 1 or 2, "same" pads (Winograd, blocked convs)
        k, s = b.choice([3, 1]), b.choice([1, 2])
        n = len(spatial)
        ks, ss, ds, pb, pe = [k] * n, [s] * n, [1] * n, [k // 2] * n, [k // 2] * n
        auto_pad = "NOTSET"
    else:
        auto_pad = b.choice(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"])
    for d in spatial[len(ks):]:
        k = b.choice([1, 2, 3])
        dil = b.choice([1, 2]) if allow_dilation else 1
        lo, hi = (b.draw(st.integers(0, k - 1)), b.draw(st.integers(0, k - 1))) if pad_below_kernel \
            else (b.draw(st.integers(0, 2)), b.draw(st.integers(0, 2)))
        ks.append(k), ss.append(b.choice([1, 2, 3])), ds.append(dil), pb.append(lo), pe.append(hi)
    out = []
    for i, (d, k, s, dil, lo, hi) in enumerate(zip(spatial, ks, ss, ds, pb, pe)):
        eff = (k - 1) * dil + 1
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            out.append(-(-d // s))
            total = max(0, (out[-1] - 1) * s + eff - d)
            pb[i] = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        elif auto_pad == "VALID":
            out.append((d - eff) // s + 1)
            pb[i] = 0
        else:
            out.append((d + lo + hi - eff) // s + 1)
    if min(out) < 1:
        return None
    b.window_begins = pb  # where each dim's first window starts (pads in effect), for pools
    attrs = {"kernel_shape": ks, "strides": ss}
    if allow_dilation:
        attrs["dilations"] = ds
    if auto_pad == "NOTSET":
        attrs["pads"] = pb + pe
    else:
        attrs["auto_pad"] = auto_pad
    return attrs, out


def op_conv(b: Builder):
    v = b.pick(lambda v: v.dtype == F32 and 3 <= len(v.shape) <= 5 and v.shape[1] > 0
               and min(v.shape[2:]) > 0)
    if v is None:
        return
    c = v.shape[1]
    group = b.choice([g for g in range(1, c + 1) if c % g == 0 and g in (1, 2, 3, c)])
    # multiples of 8 and 16 output channels: the blocked (NCHW8c/16c) kernels take those
    cout = b.choice([1, 2, 3, 8, 16]) if group == 1 else group * b.choice([1, 2, 3])
    win = _window(b, v.shape[2:], True, False)
    if win is None:
        return
    attrs, out = win
    w = b.const(b.rng.uniform(-1, 1, (cout, c // group, *attrs["kernel_shape"])).astype(np.float32))
    ins = [v, w] + ([b.const(b.rng.uniform(-1, 1, cout).astype(np.float32))] if b.one_in(2) else [])
    bound = v.bound * (c // group) * numel(attrs["kernel_shape"]) + 1
    return b.emit1("Conv", ins, F32, (v.shape[0], cout, *out), bound, False, group=group, **attrs)


def op_conv_transpose(b: Builder):
    v = b.pick(lambda v: v.dtype == F32 and 3 <= len(v.shape) <= 4 and v.shape[1] > 0
               and min(v.shape[2:]) > 0)
    if v is None:
        return
    c = v.shape[1]
    group = b.choice([g for g in (1, 2, c) if c % g == 0])
    cout = group * b.choice([1, 2])
    ks, ss, ds, pb, pe, ops, out = [], [], [], [], [], [], []
    for d in v.shape[2:]:
        k, s, dil = b.choice([1, 2, 3]), b.choice([1, 2, 3]), b.choice([1, 1, 2])
        lo, hi, op_ = b.draw(st.integers(0, k - 1)), b.draw(st.integers(0, k - 1)), b.draw(st.integers(0, s - 1))
        o = s * (d - 1) + op_ + (k - 1) * dil + 1 - lo - hi
        if o < 1:
            return
        ks.append(k), ss.append(s), ds.append(dil), pb.append(lo), pe.append(hi), ops.append(op_), out.append(o)
    w = b.const(b.rng.uniform(-1, 1, (c, cout // group, *ks)).astype(np.float32))
    ins = [v, w] + ([b.const(b.rng.uniform(-1, 1, cout).astype(np.float32))] if b.one_in(2) else [])
    bound = v.bound * c * numel(ks) + 1
    return b.emit1("ConvTranspose", ins, F32, (v.shape[0], cout, *out), bound, False, group=group,
                   kernel_shape=ks, strides=ss, dilations=ds, pads=pb + pe, output_padding=ops)


def op_pool(b: Builder):
    v = b.pick(lambda v: v.dtype == F32 and 3 <= len(v.shape) <= 5 and min(v.shape[2:]) > 0)
    if v is None:
        return
    op = b.choice(["MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool"])
    if op.startswith("Global"):
        return b.emit1(op, [v], F32, v.shape[:2] + (1,) * (len(v.shape) - 2), v.bound,
                       v.exact and op == "GlobalMaxPool")
    win = _window(b, v.shape[2:], op == "MaxPool", True)
    if win is None:
        return
    attrs, out = win
    if op == "AveragePool":
        attrs["count_include_pad"] = b.choice([0, 1])
    if attrs.get("auto_pad", "NOTSET") == "NOTSET" and b.one_in(3):
        # ceil_mode, where no window would start in the end padding (there implementations
        # disagree: ONNX's formula keeps such a window, PyTorch and onnxruntime drop it)
        n = len(out)
        ceil = []
        for d, k, s, dil, lo, hi in zip(v.shape[2:], attrs["kernel_shape"], attrs["strides"],
                                        attrs.get("dilations", [1] * n), attrs["pads"][:n], attrs["pads"][n:]):
            o = -(-(d + lo + hi - (k - 1) * dil - 1) // s) + 1
            if (o - 1) * s >= d + lo:
                o = None
                break
            ceil.append(o)
        if o is not None:
            attrs["ceil_mode"], out = 1, ceil
    # A window that sees padding only (dilated taps that skip the input) has no agreed
    # value (max of nothing: -inf here, 0 for onnx.reference; PyTorch refuses it): not drawn.
    for d, o, k, s, dil, lo in zip(v.shape[2:], out, attrs["kernel_shape"], attrs["strides"],
                                   attrs.get("dilations", [1] * len(out)), b.window_begins):
        if any(all(not 0 <= i * s - lo + j * dil < d for j in range(k)) for i in range(o)):
            return
    return b.emit1(op, [v], F32, v.shape[:2] + tuple(out), v.bound,
                   v.exact and op == "MaxPool", **attrs)


def op_norm(b: Builder):
    v = b.pick(lambda v: v.dtype == F32 and v.shape)
    if v is None:
        return
    r = len(v.shape)
    if b.one_in(2) and r >= 2:
        c = v.shape[1]
        scale, bias, mean = (b.const(b.rng.uniform(-2, 2, c).astype(np.float32)) for _ in range(3))
        var = b.const(b.rng.uniform(0.5, 2, c).astype(np.float32))
        bound = (v.bound + 2) / math.sqrt(0.5) * 2 + 2
        return b.emit1("BatchNormalization", [v, scale, bias, mean, var], F32, v.shape, bound, False)
    axis = b.draw(st.integers(-r, r - 1))
    norm = v.shape[axis:]
    ins = [v, b.const(b.rng.uniform(-2, 2, norm).astype(np.float32))]
    if b.one_in(2):
        ins.append(b.const(b.rng.uniform(-2, 2, norm).astype(np.float32)))
    bound = 2 * math.sqrt(max(numel(norm), 1)) + 2
    return b.emit1("LayerNormalization", ins, F32, v.shape, bound, False, axis=axis)


def op_instance_norm(b: Builder):
    v = b.pick(lambda v: v.dtype == F32 and len(v.shape) >= 3)
    if v is None:
        return
    c = v.shape[1]
    scale, bias = (b.const(b.rng.uniform(-2, 2, c).astype(np.float32)) for _ in range(2))
    bound = 2 * math.sqrt(max(numel(v.shape[2:]), 1)) + 2
    return b.emit1("InstanceNormalization", [v, scale, bias], F32, v.shape, bound, False)


def op_resize(b: Builder):
    v = b.pick(lambda v: v.dtype == F32 and len(v.shape) in (3, 4) and min(v.shape[2:]) > 0)
    if v is None:
        return
    mode = b.choice(["nearest", "linear", "cubic"])
    spatial = v.shape[2:]
    # nearest: scales that are powers of two, so that source coordinates are exact in binary and
    # every implementation picks the same pixel (the result is then exact)
    choices = [2.0, 0.5, 1.0, 4.0] if mode == "nearest" else [2.0, 0.5, 1.5, 3.0, 0.75, 1.0]
    scales = [b.choice(choices) for _ in spatial]
    out = [int(math.floor(d * s)) for d, s in zip(spatial, scales)]
    if min(out) < 1:
        return
    ins = [v, None]
    if b.one_in(2):
        ins.append(b.const(np.array([1.0, 1.0] + scales, np.float32)))
    else:
        ins += [None, b.ints(list(v.shape[:2]) + out)]
        if mode == "nearest":  # sizes: the scale is out / in, not a power of two any more
            mode = b.choice(["linear", "cubic"])
    attrs = {"mode": mode, "coordinate_transformation_mode":
             b.choice(["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel"])}
    if mode == "nearest":
        attrs["nearest_mode"] = b.choice(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"])
    bound = v.bound * (2 if mode == "cubic" else 1)
    return b.emit1("Resize", ins, F32, v.shape[:2] + tuple(out), bound,
                   v.exact and mode == "nearest", **attrs)
