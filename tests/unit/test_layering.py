"""The layering of docs/architecture (DESIGN's "Layout"), read from the source with `ast`:
no import cycles, the tools above the core, a kernel family below the passes, the cost
model below both.

Every module under ioaware/, passes/ (installed as ioaware.passes) and codegen/
(ioaware.codegen) is parsed, nothing is imported. An import counts wherever it stands,
at module level or inside a function, `if TYPE_CHECKING:` included; relative imports
are resolved against the importing module's package. `from P import name` is an edge to
the module P.name where there is one, else to P. An edge goes to the module named only:
that Python runs a package's __init__ first is not an edge (every family's __init__
imports its own modules, which import their siblings).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Where each installed package's source lives in a checkout (pyproject's package-dir).
SOURCES = {"ioaware": REPO / "ioaware", "ioaware.passes": REPO / "passes",
           "ioaware.codegen": REPO / "codegen"}

# The tools: commands and measurements that use the compiler; nothing in the core imports
# them. A name covers the module and everything under it.
TOOLS = (
    "ioaware.cli",  # the `ioaware` command
    "ioaware.target",  # loads the TARGET a command names (a user's file or an example)
    "ioaware.report",  # `ioaware report`: the IO report of a whole model
    "ioaware.measure",  # `report --measure` and the acceptance table: kernels on a GPU
    "ioaware.calibrate",  # `ioaware calibrate`: measures a GPU into a saved profile
    "ioaware.bench",  # `ioaware bench`: timings against other implementations
)

# (importer, imported, why): no module under the first imports one under the second.
CORE = "the core (ioaware less the tools, passes, codegen)"
RULES = [
    (CORE, TOOLS, "the tools sit above the core, which works without them"),
    ("ioaware.codegen", ("ioaware.passes",),
     "a kernel family runs what a pass matched and never asks how it was matched"),
    ("ioaware.cost", ("ioaware.codegen", "ioaware.passes"),
     "the cost model prices a Spec; families register their prices with it, not it with them"),
]


def _under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _modules() -> dict[str, Path]:
    """Every module's dotted name (as installed) -> its file."""
    modules: dict[str, Path] = {}
    for package, root in SOURCES.items():
        for path in sorted(root.rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            name = ".".join((package, *parts))
            # ioaware/ holds no passes/ or codegen/ of its own; never let one shadow another
            modules.setdefault(name, path)
    return modules


MODULES = _modules()


def _imports(module: str, path: Path) -> Iterator[tuple[str, bool]]:
    """(imported module of this repository, whether at module level) for each import."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    in_function = {id(node) for fn in ast.walk(tree)
                   if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                   for node in ast.walk(fn) if node is not fn}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
                     for alias in node.names]
        else:
            continue
        for name in names:
            # `import a.b.c` of a name inside a module: the longest prefix that is a module
            while name and name not in MODULES:
                name = name.rpartition(".")[0]
            if name and name != module:
                yield name, id(node) not in in_function


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for module, path in MODULES.items():
        for imported, at_module_level in _imports(module, path):
            if at_module_level or not module_level_only:
                graph[module].add(imported)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _files(modules: list[str]) -> str:
    return ", ".join(str(MODULES[m].relative_to(REPO)) for m in modules)


def test_every_package_is_read():
    # a renamed folder must not leave the test reading nothing
    assert {"ioaware.api", "ioaware.passes.pipeline", "ioaware.codegen.cache"} <= set(MODULES)
    assert all(any(_under(m, (tool,)) for m in MODULES) for tool in TOOLS), TOOLS


@pytest.mark.parametrize("module_level_only", [True, False],
                         ids=["module-level imports", "all imports"])
def test_no_import_cycle(module_level_only: bool):
    cycles = _cycles(_graph(module_level_only))
    assert not cycles, "import cycles:\n" + "\n".join(_files(c) for c in cycles)


def _broken(importers: str, imported: tuple[str, ...]) -> list[str]:
    graph = _graph(module_level_only=False)
    if importers == CORE:
        chosen = [m for m in MODULES if not _under(m, TOOLS)]
    else:
        chosen = [m for m in MODULES if _under(m, (importers,))]
    return [f"{_files([m])} imports {_files([i])}"
            for m in sorted(chosen) for i in sorted(graph[m]) if _under(i, imported)]


@pytest.mark.parametrize(("importers", "imported", "why"), RULES, ids=[r[0] for r in RULES])
def test_layer_rule(importers: str, imported: tuple[str, ...], why: str):
    broken = _broken(importers, imported)
    assert not broken, f"{why}:\n" + "\n".join(broken)
