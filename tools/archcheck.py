"""Check the package's shape: layers import only downward, no import cycles,
no module over 400 lines and no function over 60.

Function-level imports count: a cycle hidden inside a function is still a cycle.
Run as ``python tools/archcheck.py`` (exit status 1 on any violation); the test
suite runs it too (tests/test_architecture.py). The layers and what each may
import are described in docs/design.md, "Architecture".
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "epochmagic"
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Lowest first: a module may import its own layer and the layers before it.
LAYERS = ["model", "capture", "analysis", "diagnosis", "session", "whatif", "report", "magic"]


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules `name` imports, at any depth of its code."""
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[: len(anchor) - node.level + (1 if is_pkg else 0)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        for t in targets:
            # the longest known module the dotted name starts with
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith(PACKAGE):
                out.add(t)
    return out


def layer(name: str) -> int | None:
    """Index of the module's layer; None for the package root (it wires layers)."""
    parts = name.split(".")
    if len(parts) < 2:
        return None
    return LAYERS.index(parts[1]) if parts[1] in LAYERS else -1


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def problems(root: Path) -> list[str]:
    known = modules(root)
    # package __init__ files re-export their layer; the root wires the registry
    graph = {n: imports(n, p, known) for n, p in known.items() if n != PACKAGE}
    graph = {n: {t for t in ts if t != PACKAGE} for n, ts in graph.items()}
    out = [f"import cycle: {' -> '.join(c)}" for c in cycles(graph)]
    for name, targets in sorted(graph.items()):
        mine = layer(name)
        if mine == -1:
            out.append(f"{name}: not in a layer ({', '.join(LAYERS)})")
            continue
        for t in sorted(targets):
            theirs = layer(t)
            if mine is not None and theirs is not None and theirs > mine:
                out.append(f"{name} imports {t}, a higher layer")
    for _name, path in sorted(known.items()):
        src = path.read_text()
        n = len(src.splitlines())
        if n > MAX_MODULE_LINES:
            out.append(f"{path}: {n} lines (limit {MAX_MODULE_LINES})")
        for node in ast.walk(ast.parse(src)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    out.append(
                        f"{path}:{node.lineno} {node.name}: {length} lines "
                        f"(limit {MAX_FUNCTION_LINES})"
                    )
    return out


def main() -> int:
    root = Path(__file__).resolve().parent.parent / PACKAGE
    found = problems(root)
    for p in found:
        print(p)
    print(f"archcheck: {len(modules(root))} modules, {len(found)} problems")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
