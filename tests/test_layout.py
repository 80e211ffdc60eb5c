"""The package's layout holds: rooms, not loose modules, and no import circle between peftlab's files.

The README's Layout section names the rooms; these tests keep the package root from filling up
again, and keep a circle from coming back hidden behind an import inside a function (the circle
check counts those imports too, and a third check refuses them outside the CLI). They read the
source with ``ast`` and import none of it, so a circle shows as a failed assertion, not as an
ImportError somewhere else.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "peftlab"

# The only modules the package root may hold (README, "Layout"): the command line and its entry,
# the config every command validates first, and the package's face. Everything else lives in a room.
ROOT_MODULES = {"__init__.py", "__main__.py", "cli.py", "config.py"}


def module_name(path: Path, package: Path) -> str:
    """``peftlab/a/b.py`` -> ``peftlab.a.b``; a package's ``__init__.py`` is the package itself."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _targets(node: ast.AST, here: str, is_package: bool, modules: set[str]) -> list[str]:
    """The peftlab modules one import statement loads: ``from a import b`` is ``a.b`` when b is a module."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in modules]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: resolve against this module's package
        anchor = here.split(".") if is_package else here.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
    found = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
    if base in modules and len(found) < len(node.names):
        found.append(base)
    return found


def import_graph(package: Path, anywhere: bool = True) -> dict[str, set[str]]:
    """Each peftlab module -> the peftlab modules it imports.

    ``anywhere`` counts imports inside functions too: such an import hides a circle from Python
    at import time, not from a reader, so it counts. ``if TYPE_CHECKING:`` imports never run and
    are left out.
    """
    files = {module_name(p, package): p for p in package.rglob("*.py")}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If)
                and "TYPE_CHECKING" in ast.unparse(node.test) for n in ast.walk(node)}
        nodes = ast.walk(tree) if anywhere else iter(tree.body)
        for node in nodes:
            if id(node) not in skip:
                graph[name].update(_targets(node, name, path.name == "__init__.py", modules))
        graph[name] |= {pkg for target in graph[name] for pkg in _packages_run(target, name, modules)}
        graph[name].discard(name)
    for name, path in files.items():  # a method module, or a method's folder (its __init__.py)
        if name.rsplit(".", 1)[0] in graph and registers(ast.parse(path.read_text(encoding="utf-8"))):
            graph[name.rsplit(".", 1)[0]].add(name)
    return graph


def registers(tree: ast.Module) -> bool:
    """Whether a module assigns ``REGISTERED`` at its top level: its package's ``__init__`` finds
    and imports it (``peftlab/methods``: every method module), an import no statement spells out."""
    return any(isinstance(node, (ast.Assign, ast.AnnAssign)) and "REGISTERED" in
               {t.id for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
               for node in tree.body)


def _packages_run(target: str, importer: str, modules: set[str]) -> list[str]:
    """Importing ``a.b.c`` first runs ``a/__init__.py`` and ``a/b/__init__.py``; those that are not
    already running around the importer (its own packages) are imports too, and can close a circle."""
    parts = target.split(".")
    mine = importer.split(".")
    return [pkg for i in range(2, len(parts)) if (pkg := ".".join(parts[:i])) in modules
            and parts[:i] != mine[:i]]


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
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


# The command line imports inside each command so that ``peftlab --help`` starts without torch.
LAZY_IMPORTERS = {"cli.py", "compose/cli.py"}


def imports_inside_functions(package: Path) -> list[str]:
    """``file:line`` of each peftlab import inside a function, outside LAZY_IMPORTERS: such an
    import is how a circle hid before (README, Layout); third-party ones (optional or heavy) may stay."""
    found = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel in LAZY_IMPORTERS:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for fn in ast.walk(tree):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                names = ([node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level
                         else [a.name for a in node.names] if isinstance(node, ast.Import) else [])
                if isinstance(node, ast.ImportFrom) and node.level or any(n.split(".")[0] == "peftlab" for n in names):
                    found.append(f"{rel}:{node.lineno}")
    return found


def loose_modules(package: Path) -> list[str]:
    """Modules in the package root beyond ROOT_MODULES."""
    return sorted(p.name for p in package.glob("*.py") if p.name not in ROOT_MODULES)


def test_package_root_holds_only_the_cli_and_config():
    assert loose_modules(PACKAGE) == [], "a new module belongs in a room (README, Layout)"


def test_no_import_circle_between_peftlab_modules():
    assert circles(import_graph(PACKAGE)) == []


def test_peftlab_imports_sit_at_the_top_of_each_module():
    assert imports_inside_functions(PACKAGE) == []


def test_the_layout_checks_can_fail(tmp_path: Path):
    """A loose module and a circle hidden behind a function-level import are both caught."""
    pkg = tmp_path / "peftlab"
    (pkg / "room").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "cli.py").write_text("")
    (pkg / "loose.py").write_text("")
    (pkg / "room" / "__init__.py").write_text("")
    (pkg / "room" / "a.py").write_text("from peftlab.room.b import g\n")
    (pkg / "room" / "b.py").write_text("def g():\n    from peftlab.room import a\n")
    (pkg / "room" / "c.py").write_text("from typing import TYPE_CHECKING\n"
                                       "if TYPE_CHECKING:\n    from peftlab.room.a import x\n")
    assert loose_modules(pkg) == ["loose.py"]
    graph = import_graph(pkg)
    assert circles(graph) == [["peftlab.room.a", "peftlab.room.b"]]
    assert circles(import_graph(pkg, anywhere=False)) == []
    assert graph["peftlab.room.c"] == set()
    assert imports_inside_functions(pkg) == ["room/b.py:2"]


def test_a_package_init_that_imports_back_is_a_circle(tmp_path: Path):
    """``from peftlab.tasks.base import x`` also runs ``tasks/__init__.py``: when that imports the
    importer, Python meets a half-built module, so the graph counts the package as imported too."""
    pkg = tmp_path / "peftlab"
    (pkg / "tasks").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("from peftlab.tasks.base import Split\n")
    (pkg / "tasks" / "__init__.py").write_text("from peftlab.tasks.loaders import load\n")
    (pkg / "tasks" / "base.py").write_text("")
    (pkg / "tasks" / "loaders.py").write_text("from peftlab.config import TaskConfig\n")
    assert circles(import_graph(pkg)) == [["peftlab.config", "peftlab.tasks", "peftlab.tasks.loaders"]]


def test_a_discovered_module_is_imported_by_its_package(tmp_path: Path):
    """A method module is imported by ``methods/__init__.py``'s discovery, not by a statement: the
    graph draws that import, so a method module that imports what imports the registry is a circle."""
    pkg = tmp_path / "peftlab"
    (pkg / "methods").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "config.py").write_text("from peftlab.methods import METHODS\n")
    (pkg / "methods" / "__init__.py").write_text("METHODS = {}\n")
    (pkg / "methods" / "base.py").write_text("")
    (pkg / "methods" / "new.py").write_text("from peftlab.config import X\nREGISTERED = (X,)\n")
    (pkg / "methods" / "big").mkdir()
    (pkg / "methods" / "big" / "__init__.py").write_text("from peftlab.methods.base import M\nREGISTERED = (M,)\n")
    graph = import_graph(pkg)
    assert graph["peftlab.methods"] == {"peftlab.methods.new", "peftlab.methods.big"}
    assert circles(graph) == [["peftlab.config", "peftlab.methods", "peftlab.methods.new"]]


@pytest.mark.parametrize("source, expected", [
    ("from peftlab.room import a", {"peftlab.room.a"}),
    ("from peftlab.room import thing", {"peftlab.room"}),
    ("import peftlab.room.a as a", {"peftlab.room.a"}),
    ("from . import a", {"peftlab.room.a"}),
    ("from .a import thing", {"peftlab.room.a"}),
])
def test_import_forms_resolve_to_modules(tmp_path: Path, source: str, expected: set[str]):
    pkg = tmp_path / "peftlab"
    (pkg / "room").mkdir(parents=True)
    for name in ("__init__.py", "room/__init__.py", "room/a.py"):
        (pkg / name).write_text("")
    (pkg / "room" / "z.py").write_text(source + "\n")
    assert import_graph(pkg)["peftlab.room.z"] == expected
