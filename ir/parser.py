"""Reads the text form written by `printer` back into a `Graph` (see the grammar there).

Errors give the line and column and what was expected, because people edit dumps by hand to
reproduce bugs.
"""

from __future__ import annotations

import json
import re
from typing import Any, Optional

import numpy as np

from .errors import SlimcError
from .graph import Graph, Node, Value
from .printer import FORMAT_VERSION
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
    def __init__(self, text: str):
        self.text = text
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
    def error_at(self, pos: int, msg: str):
        line = self.text.count("\n", 0, pos) + 1
        col = pos - (self.text.rfind("\n", 0, pos) + 1) + 1
        raise ParseError(f"line {line}, column {col}: {msg}")

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
                if self.accept("elided"):
                    data = None
                else:
                    lit = self.parse_literal()
                    data = np.asarray(lit, dtype=np.float64 if t.dtype.is_float else None)
                    data = data.astype(t.dtype.numpy).reshape(t.shape)
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


def parse(text: str) -> Graph:
    """Parse slimc IR text. Constants printed as ``elided`` come back without data."""
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
    p = _Parser(text)
    graph = p.parse_graph()
    if p.peek()[0] != "eof":
        p.error("expected end of input after the graph")
    return graph
