"""The engine's module structure (issue 16): no import cycle among agent/ike's modules, and no
function-local imports of engine modules (which is how a cycle used to be hidden)."""

from __future__ import annotations

import ast
from pathlib import Path

ENGINE = Path(__file__).resolve().parents[2] / "agent" / "ike"
PACKAGE = "meshsec.agent.ike"


def _module(path: Path) -> str:
    rel = path.relative_to(ENGINE).with_suffix("")
    parts = [p for p in rel.parts if p != "__init__"]
    return ".".join([PACKAGE, *parts])


def _runtime_imports(tree: ast.Module) -> set[str]:
    """Engine modules imported at module level, outside `if TYPE_CHECKING:` blocks."""
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node) if isinstance(node, ast.If | ast.Try) else [node]:
            if isinstance(sub, ast.ImportFrom) and sub.module and sub.module.startswith(PACKAGE):
                found.add(sub.module)
                found.update(f"{sub.module}.{a.name}" for a in sub.names)
            elif isinstance(sub, ast.Import):
                found.update(a.name for a in sub.names if a.name.startswith(PACKAGE))
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module(p): p for p in ENGINE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        imported = _runtime_imports(ast.parse(path.read_text()))
        # A package's __init__ runs before any of its modules anyway: no edge to it from inside.
        graph[name] = {m for m in imported if m in files and m != name and not name.startswith(m + ".")}
    return graph


def test_no_import_cycle_in_the_engine() -> None:
    graph = _graph()
    assert f"{PACKAGE}.sa" in graph and f"{PACKAGE}.task_manager" in graph
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> None:
        if node in path:
            cycle = [*path[path.index(node) :], node]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if node in done:
            return
        for nxt in sorted(graph[node]):
            visit(nxt, [*path, node])
        done.add(node)

    for module in sorted(graph):
        visit(module, [])


def test_no_function_local_engine_imports() -> None:
    offenders = []
    for path in ENGINE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for sub in ast.walk(node):
                if isinstance(sub, ast.ImportFrom) and (sub.module or "").startswith(PACKAGE):
                    offenders.append(f"{path.name}:{sub.lineno} {sub.module}")
    assert offenders == []
