"""The layout is the design: no import cycle among the product's modules, and every import runs down the layers
cli -> backtest -> flows -> ports, journal -> core -> common (the entry files at the top level sit in the layer of
what they hold)."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import ROOT

PACKAGES = ("cli", "backtest", "flows", "ports", "journal", "core", "common")
ENTRY_LAYERS = {"main": "cli", "jobs": "flows", "executor": "flows", "monitor": "flows", "db": "journal",
                "scanner": "core", "config": "common"}
# what each layer may import besides itself
MAY_IMPORT = {
    "cli": {"research", "backtest", "flows", "ports", "journal", "core", "common"},
    "research": {"backtest", "flows", "ports", "journal", "core", "common"},
    "backtest": {"flows", "ports", "journal", "core", "common"},
    "flows": {"ports", "journal", "core", "common"},
    "ports": {"core", "common"},
    "journal": {"core", "common"},
    "core": {"common"},
    "common": set(),
}


def product_modules() -> dict[str, Path]:
    modules = {path.stem: path for path in ROOT.glob("*.py")}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def layer_of(module: str) -> str:
    return ENTRY_LAYERS.get(module) or module.split(".")[0]


def imports_of(path: Path, modules: dict[str, Path], *, typing_only: bool = True) -> set[str]:
    """The product modules `path` imports, anywhere in it but its `if __name__ == "__main__":` block (and, unless
    `typing_only`, but its `if TYPE_CHECKING:` blocks, which annotations read and the program never runs)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skipped = {id(node) for top in tree.body if isinstance(top, ast.If) and (
        "__main__" in ast.unparse(top.test) or (not typing_only and ast.unparse(top.test) == "TYPE_CHECKING"))
        for node in ast.walk(top)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name and modules[name] != path and not (name in PACKAGES and path.name != "__init__.py"
                                                         and f"{name}." in " ".join(names)):
                found.add(name)
    return found


def graph(*, typing_only: bool = True) -> dict[str, set[str]]:
    modules = product_modules()
    return {name: imports_of(path, modules, typing_only=typing_only) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycle_among_the_product_modules():
    assert cycles(graph(typing_only=False)) == []


def test_every_import_runs_down_the_layers():
    wrong = sorted(f"{module} ({layer_of(module)}) imports {target} ({layer_of(target)})"
                   for module, targets in graph().items() for target in targets
                   if layer_of(target) != layer_of(module) and layer_of(target) not in MAY_IMPORT[layer_of(module)])
    assert wrong == []


def test_the_checks_find_a_planted_cycle_and_a_planted_upward_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer_of("core.risk") == "core" and "ports" not in MAY_IMPORT["core"]
    assert layer_of("scanner") == "core" and layer_of("main") == "cli"
