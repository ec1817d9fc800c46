"""Tensor types: element type and shape.

A `TensorType` is the type of every `Value`: a dtype and a shape whose dimensions are ints
(static), strings (symbolic, e.g. ``N``: equal names are equal sizes) or ``None`` (unknown,
printed ``?``). Types are immutable and hashable, so passes compare and share them freely.

A type says nothing about storage. What changes storage is an explicit op, so the
interpreter, the printer and every pass see it: the blocked layout is ``to_blocked`` /
``from_blocked`` around ops on 5-D ``[N, C/b, H, W, b]`` tensors (passes/layout.py);
quantization will be quantize / dequantize and quantized ops whose scales and zero points are
inputs (as ONNX's QDQ and TVM's QNN do); sparse weights will be the ordinary constant inputs
(values, indices, row pointers) of an explicit sparse op.

Printed form: ``f32[1,3,224,224]``, ``f32[N,?,7]``, ``f32[]`` (a scalar).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np

from .errors import SlimcError

Dim = Union[int, str, None]


@dataclass(frozen=True)
class DType:
    """One element type: its short name in the IR text and its numpy equivalent."""

    name: str
    numpy: np.dtype
    is_float: bool
    is_signed: bool

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"dtypes.{self.name}"

    @property
    def itemsize(self) -> int:
        return self.numpy.itemsize


def _bfloat16_numpy() -> np.dtype:
    """numpy has no bfloat16; ml_dtypes (a dependency of onnx) provides one."""
    try:
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    except ImportError:  # pragma: no cover - onnx always brings ml_dtypes
        return np.dtype("V2")


class dtypes:
    """The element types slimc knows. `dtypes.from_numpy` and `dtypes.parse` map to them."""

    f16 = DType("f16", np.dtype(np.float16), True, True)
    bf16 = DType("bf16", _bfloat16_numpy(), True, True)
    f32 = DType("f32", np.dtype(np.float32), True, True)
    f64 = DType("f64", np.dtype(np.float64), True, True)
    i8 = DType("i8", np.dtype(np.int8), False, True)
    i16 = DType("i16", np.dtype(np.int16), False, True)
    i32 = DType("i32", np.dtype(np.int32), False, True)
    i64 = DType("i64", np.dtype(np.int64), False, True)
    u8 = DType("u8", np.dtype(np.uint8), False, False)
    u16 = DType("u16", np.dtype(np.uint16), False, False)
    u32 = DType("u32", np.dtype(np.uint32), False, False)
    u64 = DType("u64", np.dtype(np.uint64), False, False)
    bool = DType("bool", np.dtype(np.bool_), False, False)

    ALL: tuple = ()
    _by_name: dict = {}
    _by_numpy: dict = {}

    @classmethod
    def parse(cls, name: str) -> DType:
        try:
            return cls._by_name[name]
        except KeyError:
            raise SlimcError(f"unknown dtype {name!r} (known: {', '.join(cls._by_name)})") from None

    @classmethod
    def from_numpy(cls, dt) -> DType:
        dt = np.dtype(dt)
        try:
            return cls._by_numpy[dt]
        except KeyError:
            raise SlimcError(f"numpy dtype {dt} has no slimc equivalent") from None


dtypes.ALL = (dtypes.f16, dtypes.bf16, dtypes.f32, dtypes.f64, dtypes.i8, dtypes.i16, dtypes.i32,
              dtypes.i64, dtypes.u8, dtypes.u16, dtypes.u32, dtypes.u64, dtypes.bool)
dtypes._by_name = {d.name: d for d in dtypes.ALL}
dtypes._by_numpy = {d.numpy: d for d in dtypes.ALL}


@dataclass(frozen=True)
class TensorType:
    dtype: DType
    shape: tuple

    def __post_init__(self):
        shape = tuple(self.shape)
        for d in shape:
            if not (d is None or isinstance(d, str) or (isinstance(d, (int, np.integer)) and d >= 0)):
                raise SlimcError(f"bad dimension {d!r} in shape {shape}")
        object.__setattr__(self, "shape", tuple(int(d) if isinstance(d, (int, np.integer)) else d
                                                for d in shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def numel(self) -> int:
        if not self.is_static:
            raise SlimcError(f"type {self} has no static element count")
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def with_shape(self, shape: Sequence[Dim]) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(dtype, self.shape)

    def __str__(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.dtype}[{dims}]"

    __repr__ = __str__

    @staticmethod
    def of(array: np.ndarray) -> "TensorType":
        return TensorType(dtypes.from_numpy(array.dtype), array.shape)


def shape_str(shape) -> str:
    return "[" + ",".join("?" if d is None else str(d) for d in shape) + "]"
