"""Converters for ONNX's shape and data-movement ops, and Constant.

Where an old opset gives a shape-deciding value as an attribute (Slice-1's starts, Squeeze-1's
axes, Pad-2's pads, Split-2's sizes) the converter turns it into a constant input, so slimc
has one spelling. ``Shape`` and ``Size`` of a tensor whose shape is static become constants
here, so the Shape -> Gather -> Concat -> Reshape chains of older exporters fold at import
(`ConvertContext.emit` folds ops whose inputs are all constant).
"""

from __future__ import annotations

import numpy as np

from slimc.ir import ModelError, dtypes
from slimc.ir.ops.tensor import even_split
from slimc.ir.ops.tensor_gen import PAD_MODES

from . import ConvertContext, converter, onnx_dtype, simple


def _ints_const(ctx: ConvertContext, values, name: str = ""):
    return ctx.const(np.asarray(values, dtype=np.int64).reshape(-1), name=name)


def _axis(ctx: ConvertContext, axis: int, rank: int, allow_end: bool = False) -> int:
    hi = rank + 1 if allow_end else rank
    if not -hi <= axis < hi:
        ctx.fail(f"axis {axis} is out of range for rank {rank}")
    return axis + hi if axis < 0 else axis


# ----- reshape family -----------------------------------------------------------------------
@converter("Reshape", since=5)
def reshape(ctx: ConvertContext):
    return ctx.emit("reshape", ctx.inputs[:2], allowzero=ctx.attr("allowzero", 0, "int"))


@converter("Flatten", since=1)
def flatten(ctx: ConvertContext):
    return ctx.emit("flatten", [ctx.input(0)], axis=ctx.attr("axis", 1, "int"))


@converter("Squeeze", since=1)
def squeeze_attr(ctx: ConvertContext):
    axes = ctx.attr("axes", None, "ints")
    return ctx.emit("squeeze", [ctx.input(0), None if axes is None else _ints_const(ctx, axes)])


@converter("Squeeze", since=13)
def squeeze(ctx: ConvertContext):
    return ctx.emit("squeeze", ctx.inputs[:2])


@converter("Unsqueeze", since=1)
def unsqueeze_attr(ctx: ConvertContext):
    axes = ctx.attr("axes", None, "ints")
    if axes is None:
        ctx.fail("attribute 'axes' is required")
    return ctx.emit("unsqueeze", [ctx.input(0), _ints_const(ctx, axes)])


@converter("Unsqueeze", since=13)
def unsqueeze(ctx: ConvertContext):
    if not ctx.has_input(1):
        ctx.fail("input 'axes' is required")
    return ctx.emit("unsqueeze", ctx.inputs[:2])


@converter("Transpose", since=1)
def transpose(ctx: ConvertContext):
    x = ctx.input(0)
    perm = ctx.attr("perm", None, "ints")
    if perm is None:
        perm = list(range(x.type.rank))[::-1]
    return ctx.emit("transpose", [x], perm=[int(p) for p in perm])


# ----- concat, split, slice -------------------------------------------------------------------
@converter("Concat", since=4)
def concat(ctx: ConvertContext):
    axis = ctx.attr("axis", None, "int")
    if axis is None:
        ctx.fail("attribute 'axis' is required")
    inputs = [v for v in ctx.inputs if v is not None]
    return ctx.emit("concat", inputs, axis=axis)


def _split(ctx: ConvertContext, sizes, num_outputs=None):
    x = ctx.input(0)
    n = len(ctx.node.output)
    axis = _axis(ctx, ctx.attr("axis", 0, "int"), x.type.rank)
    attrs = {"axis": axis}
    if sizes is None:
        parts = num_outputs or n
        if parts != n:
            ctx.fail(f"num_outputs={parts} but the node has {n} outputs")
        d = x.type.shape[axis]
        if isinstance(d, int):
            if num_outputs is None and d % parts:
                ctx.fail(f"dimension {axis} of size {d} does not split into {parts} equal parts")
            try:
                sizes = _ints_const(ctx, even_split(d, parts))
            except ValueError as e:
                ctx.fail(str(e))
        else:
            attrs["num_outputs"] = parts
    outs = ctx.emit("split", [x, sizes], num_outputs=n, attrs=attrs)
    return outs if isinstance(outs, list) else [outs]


@converter("Split", since=2)
def split_attr(ctx: ConvertContext):
    sizes = ctx.attr("split", None, "ints")
    return _split(ctx, None if sizes is None else _ints_const(ctx, sizes))


@converter("Split", since=13)
def split(ctx: ConvertContext):
    return _split(ctx, ctx.input(1))


@converter("Split", since=18)
def split_18(ctx: ConvertContext):
    n = ctx.attr("num_outputs", None, "int")
    if n is not None and ctx.has_input(1):
        ctx.fail("give either the split input or num_outputs, not both")
    return _split(ctx, ctx.input(1), n)


@converter("Slice", since=1)
def slice_attr(ctx: ConvertContext):
    starts, ends = ctx.attr("starts", None, "ints"), ctx.attr("ends", None, "ints")
    if starts is None or ends is None:
        ctx.fail("attributes 'starts' and 'ends' are required")
    axes = ctx.attr("axes", None, "ints")
    inputs = [ctx.input(0), _ints_const(ctx, starts), _ints_const(ctx, ends)]
    if axes is not None:
        inputs.append(_ints_const(ctx, axes))
    return ctx.emit("slice", inputs)


@converter("Slice", since=10)
def slice_(ctx: ConvertContext):
    return ctx.emit("slice", ctx.inputs[:5])


# ----- gathers and scatters -----------------------------------------------------------------
@converter("Gather", since=1)
def gather(ctx: ConvertContext):
    return ctx.emit("gather", ctx.inputs[:2], axis=ctx.attr("axis", 0, "int"))


@converter("GatherElements", since=11)
def gather_elements(ctx: ConvertContext):
    return ctx.emit("gather_elements", ctx.inputs[:2], axis=ctx.attr("axis", 0, "int"))


@converter("GatherND", since=11)
def gather_nd(ctx: ConvertContext):
    return ctx.emit("gather_nd", ctx.inputs[:2], batch_dims=ctx.attr("batch_dims", 0, "int"))


@converter("ScatterND", since=11)
def scatter_nd(ctx: ConvertContext):
    return ctx.emit("scatter_nd", ctx.inputs[:3], reduction=ctx.attr("reduction", "none", "string"))


@converter("Scatter", since=9)
def scatter(ctx: ConvertContext):
    return ctx.emit("scatter_elements", ctx.inputs[:3], axis=ctx.attr("axis", 0, "int"))


@converter("ScatterElements", since=11)
def scatter_elements(ctx: ConvertContext):
    return ctx.emit("scatter_elements", ctx.inputs[:3], axis=ctx.attr("axis", 0, "int"),
                    reduction=ctx.attr("reduction", "none", "string"))


# ----- expand, tile, pad ----------------------------------------------------------------------
simple("Expand", "expand", since=8, num_inputs=2)
simple("Tile", "tile", since=6, num_inputs=2)


def _pad_mode(ctx: ConvertContext) -> str:
    mode = ctx.attr("mode", "constant", "string")
    if mode not in PAD_MODES:
        ctx.fail(f"unknown pad mode {mode!r} (slimc knows {', '.join(PAD_MODES)})")
    return mode


@converter("Pad", since=2)
def pad_attr(ctx: ConvertContext):
    x = ctx.input(0)
    pads = ctx.attr("pads", None, "ints")
    if pads is None:
        ctx.fail("attribute 'pads' is required")
    value = ctx.const(np.asarray(ctx.attr("value", 0.0, "float"), dtype=x.dtype.numpy))
    return ctx.emit("pad", [x, _ints_const(ctx, pads), value], mode=_pad_mode(ctx))


@converter("Pad", since=11)
def pad(ctx: ConvertContext):
    return ctx.emit("pad", ctx.inputs[:4], mode=_pad_mode(ctx))


# ----- shape metadata and generators ----------------------------------------------------------
@converter("Shape", since=1)
def shape(ctx: ConvertContext):
    x = ctx.input(0)
    start, end = ctx.attr("start", 0, "int"), ctx.attr("end", None, "int")
    dims = list(x.type.shape)[start:end]
    if all(isinstance(d, int) for d in dims):
        return _ints_const(ctx, dims)
    attrs = {"start": start} if start else {}
    if end is not None:
        attrs["end"] = end
    return ctx.emit("shape", [x], **attrs)


@converter("Size", since=1)
def size(ctx: ConvertContext):
    x = ctx.input(0)
    if x.type.is_static:
        return ctx.const(np.array(x.type.numel, dtype=np.int64))
    return ctx.emit("size", [x])


@converter("ConstantOfShape", since=9)
def constant_of_shape(ctx: ConvertContext):
    value = ctx.attr("value", None, "tensor")
    if value is None:
        value = np.zeros(1, np.float32)
    if value.size != 1:
        ctx.fail(f"attribute 'value' must hold one element, got shape {list(value.shape)}")
    dtype = dtypes.from_numpy(value.dtype)
    v = value.reshape(-1)[0]
    v = bool(v) if dtype is dtypes.bool else int(v) if value.dtype.kind in "iu" else float(v)
    return ctx.emit("constant_of_shape", ctx.inputs[:1], value=v, dtype=dtype)


simple("Range", "range", since=11, num_inputs=3)


@converter("EyeLike", since=9)
def eye_like(ctx: ConvertContext):
    x = ctx.input(0)
    dt = ctx.attr("dtype", None, "int")
    dtype = x.dtype if dt is None else onnx_dtype(dt, " (EyeLike dtype)")
    return ctx.emit("eye_like", [x], k=ctx.attr("k", 0, "int"), dtype=dtype)


@converter("OneHot", since=9)
def one_hot(ctx: ConvertContext):
    return ctx.emit("one_hot", ctx.inputs[:3], axis=ctx.attr("axis", -1, "int"))


@converter("Trilu", since=14)
def trilu(ctx: ConvertContext):
    return ctx.emit("trilu", ctx.inputs[:2], upper=ctx.attr("upper", 1, "int"))


@converter("ReverseSequence", since=10)
def reverse_sequence(ctx: ConvertContext):
    return ctx.emit("reverse_sequence", ctx.inputs[:2],
                    batch_axis=ctx.attr("batch_axis", 1, "int"),
                    time_axis=ctx.attr("time_axis", 0, "int"))


# ----- data-dependent shapes ------------------------------------------------------------------
simple("NonZero", "nonzero", since=9, num_inputs=1)


@converter("Compress", since=9)
def compress(ctx: ConvertContext):
    return ctx.emit("compress", ctx.inputs[:2], axis=ctx.attr("axis", None, "int"))


@converter("Unique", since=11)
def unique(ctx: ConvertContext):
    outs = ctx.emit("unique", [ctx.input(0)], num_outputs=4,
                    sorted=ctx.attr("sorted", 1, "int"), axis=ctx.attr("axis", None, "int"))
    return outs[:len(ctx.node.output)]


# ----- Constant and sparse tensors ------------------------------------------------------------
def sparse_to_numpy(sp, where: str = "", base_dir=None) -> np.ndarray:
    """An ONNX SparseTensorProto (a sparse initializer, or a Constant's sparse_value) as a
    dense array: slimc has no sparse tensor type, and the `sparsify` pass finds the zeros
    again in the dense weight. Indices are linear ([NNZ]) or coordinates ([NNZ, rank]); one out
    of range, repeated, or a count that does not match the values is a ModelError naming the
    tensor."""
    from . import tensor_to_numpy  # defined after the converter families are imported

    name = sp.values.name or where or "<unnamed>"

    def bad(why: str):
        raise ModelError(f"sparse tensor {name!r}: {why}", node=where or None)

    dims = tuple(int(d) for d in sp.dims)
    if any(d < 0 for d in dims):
        bad(f"dims {list(dims)} are negative")
    values = tensor_to_numpy(sp.values, where, base_dir).reshape(-1)
    dense = np.zeros(dims, values.dtype)
    nnz = values.size
    if not sp.HasField("indices"):
        if nnz:
            bad(f"{nnz} value(s) but no indices")
        return dense
    idx = tensor_to_numpy(sp.indices, where, base_dir)
    if idx.dtype.kind not in "iu":
        bad(f"indices are {idx.dtype}, not integers")
    if dims and idx.shape == (nnz, len(dims)):
        for axis, d in enumerate(dims):
            if nnz and (idx[:, axis].min() < 0 or idx[:, axis].max() >= d):
                bad(f"an index along axis {axis} is outside 0..{d - 1} (dims {list(dims)})")
        flat = np.ravel_multi_index(tuple(idx.T.astype(np.int64)), dims)
    elif idx.shape == (nnz,):
        if nnz and (idx.min() < 0 or idx.max() >= dense.size):
            bad(f"a linear index is outside 0..{dense.size - 1} (dims {list(dims)})")
        flat = idx.astype(np.int64)
    else:
        bad(f"{nnz} value(s) but indices of shape {list(idx.shape)}; expected [{nnz}] (linear) "
            f"or [{nnz}, {len(dims)}] (coordinates)")
    if np.unique(flat).size != nnz:
        bad("an index appears twice")
    dense.reshape(-1)[flat] = values
    return dense


@converter("Constant", since=1)
def constant(ctx: ConvertContext):
    name = ctx.node.output[0] if ctx.node.output else ""
    for refused in ("value_string", "value_strings"):
        if ctx.has_attr(refused):
            ctx.unsupported(f"a Constant with {refused} is not supported (strings are not "
                            f"slimc tensors)")
    forms = {"value": None, "value_float": np.float32, "value_floats": np.float32,
             "value_int": np.int64, "value_ints": np.int64, "sparse_value": None}
    given = [k for k in forms if ctx.has_attr(k)]
    if len(given) != 1:
        ctx.fail(f"a Constant needs exactly one value attribute, got {given or 'none'}")
    if given[0] == "sparse_value":
        return ctx.const(sparse_to_numpy(ctx.attr("sparse_value", kind="sparse_tensor"),
                                         ctx.label), name=name)
    kind = {"value": "tensor", "value_float": "float", "value_floats": "floats",
            "value_int": "int", "value_ints": "ints"}[given[0]]
    data = np.asarray(ctx.attr(given[0], kind=kind), dtype=forms[given[0]])
    if kind == "tensor":  # keep a scalar a scalar (tensor_to_numpy may hand back 1-D)
        proto = next(a.t for a in ctx.node.attribute if a.name == "value")
        data = data.reshape(tuple(proto.dims))
    return ctx.const(data, name=name)
