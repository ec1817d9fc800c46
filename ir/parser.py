"""Reads the text form written by `printer` back into a `Graph` (see the grammar there).

Errors give the line and column and what was expected, because people edit dumps by hand to
reproduce bugs.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Optional

import numpy as np

from .errors import InputError, ModelError, SlimcError
from .graph import Graph, Node, Value
from .printer import FORMAT_VERSION
from .registry import has_op, infer_node
from .types import TensorType, dtypes


class ParseError(SlimcError):
    pass


_STRING = r'"(?:[^"\\]|\\.)*"'
_TOKEN = re.compile(rf"""
  (?P<ws>\s+|\#[^\n]*)
| (?P<value>%(?:{_STRING}|[A-Za-z0-9_.$\-]+))
| (?P<glob>@(?:{_STRING}|[A-Za-z0-9_.$\-]+))
| (?P<string>{_STRING})
| (?P<number>[-+]?(?:\d+\.\d*(?:[eE][-+]?\d+)?|\d+[eE][-+]?\d+|\.\d+(?:[eE][-+]?\d+)?|\d+|inf|nan)(?![A-Za-z0-9_]))
| (?P<arrow>->)
| (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
| (?P<punct>[()\[\]{{}},:=?/])
""", re.VERBOSE)
_HEADER = re.compile(r"\s*#\s*slimc-ir\s+v(\d+)")


def _unquote(text: str) -> str:
    return json.loads(text) if text.startswith('"') else text


class _Parser:
    def __init__(self, text: str, check_types: bool = True):
        self.text = text
        self.check_types = check_types
        self.tokens: list[tuple[str, str, int]] = []
        pos = 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m:
                self.error_at(pos, f"unexpected character {text[pos]!r}")
            if m.lastgroup != "ws":
                self.tokens.append((m.lastgroup, m.group(), pos))
            pos = m.end()
        self.tokens.append(("eof", "", len(text)))
        self.i = 0
        self.values: dict[str, Value] = {}

    # ----- token helpers -----------------------------------------------------------------
    def position(self, pos: int) -> str:
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        return f"line {line}, column {col}"

    def error_at(self, pos: int, msg: str):
        raise ParseError(f"{self.position(pos)}: {msg}")

    def peek(self, k: int = 0):
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def next(self):
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def error(self, msg: str):
        kind, text, pos = self.peek()
        self.error_at(pos, f"{msg}, found {text or 'end of input'!r}")

    def accept(self, text: str) -> bool:
        if self.peek()[1] == text and self.peek()[0] in ("punct", "arrow", "ident"):
            self.i += 1
            return True
        return False

    def expect(self, text: str):
        if not self.accept(text):
            self.error(f"expected {text!r}")

    def expect_kind(self, kind: str, what: str) -> str:
        if self.peek()[0] != kind:
            self.error(f"expected {what}")
        return self.next()[1]

    # ----- grammar -----------------------------------------------------------------------
    def parse_type(self) -> TensorType:
        name = self.expect_kind("ident", "a dtype")
        try:
            dt = dtypes.parse(name)
        except SlimcError:
            self.i -= 1
            self.error("expected a dtype")
        self.expect("[")
        dims: list = []
        while not self.accept("]"):
            if dims:
                self.expect(",")
            kind, text, _ = self.peek()
            if kind == "number" and text.isdigit():
                dims.append(int(text))
            elif kind == "ident":
                dims.append(text)
            elif text == "?":
                dims.append(None)
            else:
                self.error("expected a dimension")
            self.i += 1
        return TensorType(dt, tuple(dims))

    def parse_literal(self) -> Any:
        kind, text, _ = self.peek()
        if text == "[" and kind == "punct":
            self.next()
            items = []
            while not self.accept("]"):
                if items:
                    self.expect(",")
                items.append(self.parse_literal())
            return items
        self.next()
        if kind == "number":
            if any(c in text for c in ".eEn") or "inf" in text:
                return float(text)
            return int(text)
        if kind == "string":
            return json.loads(text)
        if kind == "ident":
            if text == "true":
                return True
            if text == "false":
                return False
            if text == "none":
                return None
            try:
                return dtypes.parse(text)
            except SlimcError:
                pass
        self.i -= 1
        self.error("expected a literal")

    def constant_data(self, name: str, t: TensorType, pos: int) -> np.ndarray:
        """A constant's literal as an array of its type: the wrong number of values, or a
        value an integer dtype cannot hold (numpy would wrap 1000 to -24 as i8, truncate 1.5),
        is an error at the constant's line."""
        where = f"constant %{name}: {t}"
        if not t.is_static:
            self.error_at(pos, f"{where}: a constant needs a static shape")
        lit = self.parse_literal()
        try:
            data = np.asarray(lit, dtype=np.float64 if t.dtype.is_float else None)
        except (ValueError, OverflowError) as e:
            self.error_at(pos, f"{where}: its values are not a regular array ({e})")
        if data.size != t.numel:
            self.error_at(pos, f"{where} needs {t.numel} values, got {data.size}")
        if t.dtype.numpy.kind in "iu" and data.size:
            if data.dtype.kind == "f" and not np.all(np.isfinite(data) & (data == np.trunc(data))):
                self.error_at(pos, f"{where}: its values must be integers")
            info = np.iinfo(t.dtype.numpy)
            low, high = data.min(), data.max()
            if low < info.min or high > info.max:
                bad = low if low < info.min else high
                self.error_at(pos, f"{where}: value {bad} is out of range for {t.dtype} "
                                   f"([{info.min}, {info.max}])")
        return data.astype(t.dtype.numpy).reshape(t.shape)

    def check_node(self, node: Node, pos: int) -> None:
        """The node's declared result types against its op's inference: a differing dtype,
        rank or static size is an error at its line, as `compile` would otherwise replace the
        declared type without a word; an error inference finds (a bad attribute) gets the
        line too. Unknown ops (registered later, perhaps) and nodes that read elided
        constants (whose data may decide the shapes) are taken as written."""
        if not has_op(node.op) or any(v is not None and v.is_constant and v.data is None
                                      for v in node.inputs):
            return
        try:
            inferred = infer_node(node)
        except ModelError as e:  # the model's error still, now with its place in the text
            raise type(e)(f"{e.detail} ({self.position(pos)})", node=e.node, op=e.op) from e
        declared = [v.type for v in node.outputs]
        if len(inferred) != len(declared):
            self.error_at(pos, f"{len(declared)} results declared but {node.op} gives "
                               f"{len(inferred)}")
        for v, want in zip(node.outputs, inferred):
            if _contradicts(v.type, want):
                self.error_at(pos, f"%{v.name} is declared {v.type} but {node.op} gives {want}")

    def lookup(self, token: str) -> Value:
        name = _unquote(token[1:])
        if name not in self.values:
            self.error_at(self.tokens[self.i - 1][2], f"use of undefined value %{name}")
        return self.values[name]

    def parse_operand(self) -> Optional[Value]:
        if self.accept("none"):
            return None
        return self.lookup(self.expect_kind("value", "a value"))

    def define(self, graph: Graph, value: Value, pos: int) -> None:
        if value.name in self.values:
            self.error_at(pos, f"value %{value.name} is defined twice")
        self.values[value.name] = value

    def parse_graph(self) -> Graph:
        self.expect("graph")
        graph = Graph(_unquote(self.expect_kind("glob", "@name")[1:]))
        self.expect("(")
        while not self.accept(")"):
            if graph.inputs:
                self.expect(",")
            tok, pos = self.expect_kind("value", "an input"), self.peek()[2]
            self.expect(":")
            v = graph.add_input(_unquote(tok[1:]), self.parse_type())
            self.define(graph, v, pos)
        self.expect("->")
        self.expect("(")
        out_types = []
        while not self.accept(")"):
            if out_types:
                self.expect(",")
            out_types.append(self.parse_type())
        self.expect("{")
        while True:
            kind, text, pos = self.peek()
            if kind == "ident" and text == "const":
                self.next()
                name = _unquote(self.expect_kind("value", "a constant name")[1:])
                self.expect(":")
                t = self.parse_type()
                self.expect("=")
                data = None if self.accept("elided") else self.constant_data(name, t, pos)
                v = graph.add_constant(name, data, t, unique=False)
                self.define(graph, v, pos)
            elif kind == "ident" and text == "return":
                self.next()
                outs = [self.parse_operand()]
                while self.accept(","):
                    outs.append(self.parse_operand())
                graph.outputs = outs
                break
            elif kind == "value":
                self.parse_node(graph)
            else:
                self.error("expected 'const', a node or 'return'")
        self.expect("}")
        if len(out_types) != len(graph.outputs) or any(
                t != v.type for t, v in zip(out_types, graph.outputs)):
            raise ParseError(f"graph @{graph.name}: header says outputs are "
                             f"({', '.join(map(str, out_types))}) but return gives "
                             f"({', '.join(str(v.type) for v in graph.outputs)})")
        return graph

    def parse_node(self, graph: Graph) -> None:
        pos = self.peek()[2]
        names = [_unquote(self.expect_kind("value", "an output")[1:])]
        while self.accept(","):
            names.append(_unquote(self.expect_kind("value", "an output")[1:]))
        self.expect("=")
        op = self.expect_kind("ident", "an op name")
        self.expect("(")
        inputs: list = []
        while not self.accept(")"):
            if inputs:
                self.expect(",")
            inputs.append(self.parse_operand())
        attrs = {}
        if self.accept("{"):
            while not self.accept("}"):
                if attrs:
                    self.expect(",")
                key = self.expect_kind("ident", "an attribute name")
                self.expect("=")
                attrs[key] = self.parse_literal()
        self.expect(":")
        types = [self.parse_type()]
        while self.accept(","):
            types.append(self.parse_type())
        if len(types) != len(names):
            self.error_at(pos, f"{len(names)} results but {len(types)} types")
        name = ""
        if self.accept("loc"):
            self.expect("(")
            name = json.loads(self.expect_kind("string", "a location string"))
            self.expect(")")
        outputs = [Value(n, t) for n, t in zip(names, types)]
        for v in outputs:
            if v.name in self.values:
                self.error_at(pos, f"value %{v.name} is defined twice")
        node = Node(op, inputs, attrs, outputs, name)
        graph.insert(node)
        for v in outputs:
            self.define(graph, v, pos)
        if self.check_types:
            self.check_node(node, pos)


def _contradicts(declared: TensorType, inferred: TensorType) -> bool:
    """Whether two types cannot describe one tensor (a symbolic or unknown dim matches any)."""
    if declared.dtype != inferred.dtype or declared.rank != inferred.rank:
        return True
    return any(isinstance(a, int) and isinstance(b, int) and a != b
               for a, b in zip(declared.shape, inferred.shape))


def _as_text(text) -> str:
    """The IR text: a str, or bytes decoded as UTF-8 (what `open(path, "rb")` gives)."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        try:
            return bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise ParseError("not slimc IR: the bytes are not UTF-8 text (an ONNX model? "
                             "import it with slimc.from_onnx)") from None
    if not isinstance(text, str):
        hint = " (to read a file, pass its text, or use slimc.ir.load(path))" \
            if isinstance(text, os.PathLike) else ""
        raise InputError(f"slimc.parse takes IR text, a str or UTF-8 bytes; got "
                         f"{type(text).__name__}{hint}")
    return text


def parse(text: "str | bytes", check_types: bool = True) -> Graph:
    """Parse slimc IR text (a str, or UTF-8 bytes). Constants printed as ``elided`` come back
    without data. With `check_types`, a declared result type that contradicts its op's type
    inference is an error at its line; ``check_types=False`` reads the IR as written (a
    broken dump, to show the verifier's view of it)."""
    text = _as_text(text)
    m = _HEADER.match(text)
    if not m:
        raise ParseError("not slimc IR: the text must start with '# slimc-ir v1'")
    version = int(m.group(1))
    if version != FORMAT_VERSION:
        what = "newer" if version > FORMAT_VERSION else "older"
        todo = "upgrade slimc" if version > FORMAT_VERSION else \
            "print it again from its source model with this slimc"
        raise ParseError(f"IR format v{version} is {what} than the one this slimc reads "
                         f"(v{FORMAT_VERSION}): {todo}")
    p = _Parser(text, check_types)
    graph = p.parse_graph()
    if p.peek()[0] != "eof":
        p.error("expected end of input after the graph")
    return graph
