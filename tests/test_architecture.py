"""The shape DESIGN.md fixes, checked on the source: data flows frontends -> ir -> passes ->
codegen -> runtime, no room imports a room to its right, and no two modules import each
other -- not even inside a function, where an import circle hides until it bites."""

from __future__ import annotations

import ast
import os

import networkx as nx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# folder -> import name; the order of the pipeline (slimc/ wires them all, so it is last)
ROOMS = {"ir": "slimc.ir", "frontends": "slimc.frontends", "passes": "slimc.passes",
         "codegen": "slimc.codegen", "runtime": "slimc.runtime", "slimc": "slimc"}
ORDER = {"slimc.ir": 0, "slimc.frontends": 1, "slimc.passes": 2, "slimc.codegen": 3,
         "slimc.runtime": 4, "slimc": 5}


def _modules() -> dict:
    """import name -> file path, for every module of the package."""
    out = {}
    for folder, pkg in ROOMS.items():
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            rel = os.path.relpath(dirpath, os.path.join(ROOT, folder))
            base = pkg if rel == "." else pkg + "." + rel.replace(os.sep, ".")
            for f in files:
                if f.endswith(".py"):
                    name = base if f == "__init__.py" else f"{base}.{f[:-3]}"
                    out[name] = os.path.join(dirpath, f)
    return out


def _imports(name: str, path: str, modules: dict) -> list:
    """(imported module, at import time?) for every import in the file."""
    tree = ast.parse(open(path).read())
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    top = set(id(n) for n in tree.body)
    # imports under `if TYPE_CHECKING:` never run
    skip = {id(n) for s in tree.body if isinstance(s, ast.If) and "TYPE_CHECKING" in ast.dump(s.test)
            for n in ast.walk(s)}
    found = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                       for a in node.names]
        else:
            continue
        for t in targets:
            if t in modules:
                found.append((t, id(node) in top))
    return found


def _room(module: str) -> str:
    return max((r for r in ORDER if module == r or module.startswith(r + ".")), key=len)


def test_no_room_imports_a_room_to_its_right():
    modules = _modules()
    bad = []
    for name, path in modules.items():
        here = _room(name)
        for target, _ in _imports(name, path, modules):
            if ORDER[_room(target)] > ORDER[here] and here != "slimc":
                bad.append(f"{name} imports {target}")
    assert not bad, "\n".join(sorted(set(bad)))


def test_no_import_cycles():
    modules = _modules()
    g = nx.DiGraph()
    for name, path in modules.items():
        for target, at_import in _imports(name, path, modules):
            # a package's __init__ importing its own submodules is how packages work
            if target != name and not target.startswith(name + "."):
                g.add_edge(name, target)
    cycles = sorted(" -> ".join(c + [c[0]]) for c in nx.simple_cycles(g))
    assert not cycles, "\n".join(cycles[:20])
