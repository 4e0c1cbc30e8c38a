"""The package's layers (DESIGN.md, Layout): a module imports only from its own layer or below, and the
algorithm packages import knowscope at the top of the module, never inside functions.

Bottom to top: the base modules (paths, compat, results, facts, safeedit, models, chat, knowledge)
→ circuits → editing → safety → probes → sweep → viewer → commands → cli.
"""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import knowscope

ROOT = Path(knowscope.__file__).parent
BASE = {"paths", "compat", "hooks", "work", "progress", "results", "facts", "safeedit", "models", "chat", "knowledge",
        "data"}
RANK = {"circuits": 1, "editing": 2, "safety": 3, "probes": 4, "sweep": 5, "viewer": 6, "commands": 7, "cli": 8}
NO_LOCAL_IMPORTS = ("circuits", "editing", "probes", "safety")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _rank(module: str) -> int | None:
    parts = module.split(".")
    if parts[0] != "knowscope":
        return None
    if len(parts) == 1:
        return 0
    top = parts[1]
    return 0 if top in BASE else RANK.get(top)


def _imports(path: Path) -> list[tuple[str, bool, int]]:
    """(imported knowscope module, inside a function?, line) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    out: list[tuple[str, bool, int]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, in_function, child.lineno) for a in child.names if a.name.startswith("knowscope"))
            elif isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("knowscope"):
                for a in child.names:  # `from knowscope import commands` imports the submodule
                    sub = f"{child.module}.{a.name}"
                    is_mod = (ROOT.parent / Path(*sub.split("."))).with_suffix(".py").exists() or \
                        (ROOT.parent / Path(*sub.split("."))).is_dir()
                    out.append((sub if is_mod else child.module, in_function, child.lineno))
            visit(child, inside)

    visit(tree, False)
    return out


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for path in sorted(ROOT.rglob("*.py")):
        name = _module_name(path)
        mine = _rank(name)
        for imported, _, line in _imports(path):
            theirs = _rank(imported)
            if name == "knowscope" or theirs is None or mine is None:
                continue
            if theirs > mine:
                upward.append(f"{name}:{line} imports {imported}")
    assert not upward, "\n".join(upward)


def test_algorithm_packages_import_knowscope_at_the_top():
    local = []
    for pkg in NO_LOCAL_IMPORTS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            local += [f"{_module_name(path)}:{line} imports {mod} inside a function"
                      for mod, in_function, line in _imports(path) if in_function]
    assert not local, "\n".join(local)


def test_editing_and_circuits_do_not_load_safety():
    code = ("import sys, knowscope.editing, knowscope.editing.dinm, knowscope.editing.rome, knowscope.editing.memit, "
            "knowscope.circuits; print(sorted(m for m in sys.modules if m.startswith('knowscope.safety') or "
            "m.startswith('knowscope.probes') or m.startswith('knowscope.viewer')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_hook_names_are_built_in_one_place():
    """Only knowscope/hooks.py spells out TransformerLens hook names ("blocks.{L}.hook_...")."""
    import re

    spelled = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "hooks.py" or "viewer" in path.parts or "commands" in path.parts:
            continue
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r'f"blocks\.\{', line) or re.search(r'\("hook_embed"', line):
                spelled.append(f"{_module_name(path)}:{i}: {line.strip()}")
    assert not spelled, "\n".join(spelled)


def test_every_module_imports_on_its_own():
    for path in sorted(ROOT.rglob("*.py")):
        name = _module_name(path)
        if name.startswith("knowscope.viewer.app") or ".views." in name:
            continue  # Streamlit scripts: they run the page when imported
        importlib.import_module(name)


def _module_graph() -> dict[str, set[str]]:
    """Module -> the knowscope modules it imports (anywhere in the file, type-checking imports included)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(ROOT.rglob("*.py")):
        name = _module_name(path)
        graph[name] = {imported for imported, _, _ in _imports(path) if imported != name}
    return graph


def test_no_import_cycles_between_modules():
    """No module imports, directly or through others, a module that imports it back (a package's
    ``__init__`` re-exporting its own submodules is not a cycle: the submodules import the package's
    siblings, never the package)."""
    graph = _module_graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in graph:
                continue
            if state.get(nxt) == 1:
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_is_longer_than_a_reader_can_hold():
    """No module in knowscope/ over 500 lines: split a longer one by concern."""
    long = [f"{_module_name(p)}: {n} lines" for p in sorted(ROOT.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 500]
    assert not long, "\n".join(long)
