"""Cutting a model's LLVM module into parts that compile in parallel, each with its pipeline.

LLVM spends a model's compile in two places, the optimization pipeline and machine code
(instruction selection, register allocation), and both run on one core per module. A model's
module is a set of independent kernel functions under one entry, so it cuts cleanly:

* each kernel says which pipeline it needs (`Kernel.pipeline`): "O3" for code written as
  scalar loops that LLVM vectorizes, "vector" for kernels that already hold explicit vector
  code (GEMM, Winograd, the blocked convolutions, sparse and int8 kernels), for which O3 costs
  seconds and gains nothing (LLVM_NOTES: the GEMM runs as fast with no pipeline at all);
* identical functions are compiled once: two functions whose text is the same up to their own
  names, their local value names and the names of identical helpers they call (ResNet's
  repeated blocks) keep one body; a kernel that repeats another becomes an alias of it;
* the functions are packed into parts of about equal size, one pipeline per part; each part is
  an LLVM module of its own, parsed, optimized and compiled to an object in its own thread
  (target.compile_parts), and the JIT loads the objects together (export links them with cc).

Internal definitions (GEMM micro-kernels, constant tables) are copied into every part that
uses them; other definitions live in one part and are declared in the others.
"""

from __future__ import annotations

import collections
import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable

from llvmlite import ir

PIPELINES = ("O3", "vector")
# Below this much IR text a module is one part with the O3 pipeline: cutting it saves less
# than the extra modules cost.
MIN_SPLIT_BYTES = 400_000
# A part smaller than this is not split further.
MIN_PART_BYTES = 200_000

GLOBAL_REF = re.compile(r'@"(?:[^"\\]|\\.)*"|@[-\w.$]+')
LOCAL_REF = re.compile(r'%"(?:[^"\\]|\\.)*"|%[-\w.$]+')
INTERNAL = ("internal", "private")


@dataclass
class Part:
    """One LLVM module to compile: `text`, the `pipeline` it gets, the kernels it defines."""

    pipeline: str
    functions: list[str] = field(default_factory=list)  # the names of the definitions it owns
    refs: list[str] = field(default_factory=list)  # the same, as IR refers to them
    size: int = 0
    text: str = ""
    seconds: tuple = ()  # (parse and optimize, machine code) once compiled; () from the cache

    def header(self, index: int, count: int) -> str:
        names = ", ".join(self.functions[:6]) + (" ..." if len(self.functions) > 6 else "")
        return (f"{PART_HEADER}{index + 1} of {count}: {self.pipeline} pipeline, "
                f"{len(self.functions)} function(s): {names}")


PART_HEADER = "; ---- part "


def part_texts(llvm_ir: str) -> list[str]:
    """The modules of a compiled model's optimized IR (`mod.llvm_ir`, which gives them one
    after another, each under its `Part.header` line)."""
    pieces = llvm_ir.split("\n" + PART_HEADER)
    return [pieces[0]] + [PART_HEADER + p for p in pieces[1:]]


@dataclass
class _Global:
    ref: str  # as written in IR: @"name"
    text: str
    defined: bool  # a definition (function with a body, or a global variable)
    internal: bool
    type: str  # a function's type (`void (i8**, i64, i64)`), a variable's value type
    refs: set = field(default_factory=set)


def cut(module: ir.Module, pipeline_of: Callable[[str], str], jobs: int) -> tuple[list, dict]:
    """The parts to compile `module` in, and {duplicate function: the function it repeats}.

    `pipeline_of(name)` gives a kernel's pipeline (None for other functions: see _pipeline);
    `jobs` is how many parts of one pipeline may compile at once."""
    globals_ = _globals(module)
    rename, aliases = _deduplicate(globals_)
    kept = [g for g in globals_.values()
            if g.defined and not g.internal and g.ref not in aliases]
    total = sum(len(g.text) for g in globals_.values())
    if total < MIN_SPLIT_BYTES:
        groups = {"O3": kept}
    else:
        groups: dict = {}
        for g in kept:
            pipeline = _pipeline(g, pipeline_of)
            groups.setdefault(pipeline, []).append(g)
    parts = []
    for pipeline, members in groups.items():
        parts += _pack(pipeline, members, jobs)
    common = [t.get_declaration() for t in module.get_identified_types().values()]
    common += module._get_metadata_lines()
    head = [f'; ModuleID = "{module.name}"', f'target triple = "{module.triple}"',
            f'target datalayout = "{module.data_layout}"', ""]
    for part in parts:
        part.text = _part_text(part, globals_, rename, aliases, head, common)
    _explain(parts, rename, aliases, total)
    return parts, {_name(d): _name(r) for d, r in aliases.items()}


def _explain(parts: list, rename: dict, aliases: dict, total: int) -> None:
    """SLIMC_DEBUG=parts: how the module was cut, and what was merged."""
    from slimc.ir.debug import enabled, log

    if not enabled("parts"):
        return
    why = "" if total >= MIN_SPLIT_BYTES else f" (under {MIN_SPLIT_BYTES} bytes: one O3 part)"
    log("parts", f"{total} bytes of IR in {len(parts)} part(s){why}")
    for i, p in enumerate(parts):
        log("parts", f"part {i + 1}: {p.pipeline}, {len(p.text)} bytes, {p.functions}")
    for dup, rep in list(aliases.items()) + list(rename.items()):
        log("parts", f"{_name(dup)} repeats {_name(rep)}: compiled once")


def _pipeline(g: "_Global", pipeline_of: Callable) -> str:
    """A kernel's or shared function's own pipeline (`llvm_util.shared_pipelines`); O3 for
    every other function (the entry, and helpers such as the blocked GEMM driver a Winograd
    kernel calls: with the vector pipeline ResNet-18 ran 2% slower, 22.4 vs 22.0 ms, for
    0.3 s less compile)."""
    name = _name(g.ref)
    pipeline = pipeline_of(name) or "O3"
    if pipeline not in PIPELINES:
        raise ValueError(f"function {name}: unknown pipeline {pipeline!r}")
    return pipeline


# ----- the module's global values ----------------------------------------------------------

def _globals(module: ir.Module) -> dict:
    out = {}
    for v in module.globals.values():
        text = str(v)
        if isinstance(v, ir.Function):
            defined = bool(v.blocks)
        else:
            defined = v.initializer is not None
        vtype = v.ftype if isinstance(v, ir.Function) else v.value_type
        g = _Global(v.get_reference(), text, defined, v.linkage in INTERNAL, str(vtype))
        g.refs = set(GLOBAL_REF.findall(text)) - {g.ref}
        out[g.ref] = g
    return out


def _name(ref: str) -> str:
    return ref[2:-1] if ref.startswith('@"') else ref[1:]


def _deduplicate(globals_: dict) -> tuple[dict, dict]:
    """(internal duplicate -> the definition that replaces it, kernel duplicate -> the kernel
    it becomes an alias of). Definitions are compared callees first, each with the names of
    its callees' replacements, its own name and its local value names made neutral."""
    rename: dict = {}
    aliases: dict = {}
    first: dict = {}  # canonical text's digest -> ref
    done: set = set()
    # a definition whose line and assignment counts no other has cannot repeat one: only the
    # others pay for the canonical text
    shape = {r: (g.internal, g.text.count("\n"), g.text.count("=")) for r, g in globals_.items()
             if g.defined}
    shapes = collections.Counter(shape.values())

    def canonical(g: _Global) -> str:
        def global_name(m):
            r = m.group(0)
            if r == g.ref:
                return "@.self"
            return rename.get(r) or aliases.get(r, r)  # kernels calling repeated helpers

        numbering: dict = {}
        text = GLOBAL_REF.sub(global_name, g.text)
        return LOCAL_REF.sub(lambda m: numbering.setdefault(m.group(0), f"%{len(numbering)}"),
                             text)

    def visit(ref: str) -> None:
        stack = [(ref, iter(sorted(globals_[ref].refs)))]
        done.add(ref)
        while stack:
            cur, it = stack[-1]
            nxt = next((r for r in it if r in globals_ and r not in done), None)
            if nxt is not None:
                done.add(nxt)
                stack.append((nxt, iter(sorted(globals_[nxt].refs))))
                continue
            stack.pop()
            g = globals_[cur]
            if not g.defined:
                continue
            if shapes[shape[cur]] == 1:
                continue
            key = (g.internal, hashlib.sha1(canonical(g).encode()).hexdigest())
            rep = first.setdefault(key, cur)
            if rep != cur:
                (rename if g.internal else aliases)[cur] = rep

    for ref in list(globals_):
        if ref not in done:
            visit(ref)
    return rename, aliases


# ----- packing and writing parts --------------------------------------------------------------

def _closure(g: _Global, globals_: dict, rename: dict) -> set:
    """Every global `g` refers to, directly or through the internal definitions it uses
    (which the part copies)."""
    need, todo = set(), [g]
    while todo:
        for r in todo.pop().refs:
            r = rename.get(r, r)
            dep = globals_.get(r)
            if dep is None or r in need:
                continue
            need.add(r)
            if dep.internal and dep.defined:
                todo.append(dep)
    return need


def _pack(pipeline: str, members: list, jobs: int) -> list:
    """`members` in at most `jobs` parts of about equal size (largest first, each to the
    smallest part), none under MIN_PART_BYTES unless it is the only one."""
    total = sum(len(g.text) for g in members)
    count = max(1, min(jobs, total // MIN_PART_BYTES))
    parts = [Part(pipeline) for _ in range(count)]
    for g in sorted(members, key=lambda g: -len(g.text)):
        part = min(parts, key=lambda p: p.size)
        part.functions.append(_name(g.ref))
        part.refs.append(g.ref)
        part.size += len(g.text)
    return [p for p in parts if p.functions]


def _part_text(part: Part, globals_: dict, rename: dict, aliases: dict, head: list,
               common: list) -> str:
    own = [globals_[ref] for ref in part.refs]
    need: set = set()
    for g in own:
        need |= _closure(g, globals_, rename)
    mine = {g.ref for g in own}
    lines = list(head)
    for ref, g in globals_.items():  # module order: globals before their users, as printed
        if ref in aliases:
            continue
        if ref in mine or (ref in need and (g.internal or not g.defined)):
            lines.append(_renamed(g.text, rename))
        elif ref in need:  # defined in another part
            lines.append(_declaration(g))
    for dup, rep in aliases.items():
        if rep in mine:
            lines.append(f"{dup} = alias {globals_[rep].type}, ptr {rep}")
        elif dup in need:
            lines.append(_declaration(globals_[rep]).replace(rep, dup, 1))
    return "\n".join(lines + common) + "\n"


def _renamed(text: str, rename: dict) -> str:
    if not rename:
        return text
    return GLOBAL_REF.sub(lambda m: rename.get(m.group(0), m.group(0)), text)


_DEFINE = re.compile(r"^define\s+(?:(?:internal|private|linkonce_odr|weak|dso_local)\s+)*")


def _declaration(g: _Global) -> str:
    """`declare` for a function defined elsewhere, `external global` for a variable."""
    first = g.text.split("\n", 1)[0]
    if first.startswith("define"):
        return _DEFINE.sub("declare ", first).rstrip(" {")
    return f"{g.ref} = external global {g.type}"
