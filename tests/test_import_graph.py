"""The package has no import cycles: every module's imports, those inside functions included (a lazy import is a
cycle deferred, not removed), read with `ast`, over the modules of `trl_mtp`."""

from __future__ import annotations

import ast
from pathlib import Path

import trl_mtp

PACKAGE_DIR = Path(trl_mtp.__file__).parent

# Cycles left for the code that owns them to untie (any cycle inside one of these sets passes; a new one fails).
KNOWN_CYCLES: list[set[str]] = []


def module_paths() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package is its `__init__.py`)."""
    modules = {}
    for path in PACKAGE_DIR.rglob("*.py"):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_modules(name: str, path: Path, modules) -> set[str]:
    """The package's modules that module `name` imports anywhere in its body. `from pkg import x` names the
    submodule pkg.x when there is one, else the module that defines x: the package's own code, or, for the public
    names `trl_mtp` imports lazily (`trl_mtp._EXPORTS`), the module that holds them."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from .x import y` inside package p is p.x
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                elif base == "trl_mtp" and alias.name in trl_mtp._EXPORTS:
                    found.add(trl_mtp._EXPORTS[alias.name])
                else:
                    found.add(base)
    return {module for module in found if module in modules and module != name}


def import_graph() -> dict[str, set[str]]:
    modules = module_paths()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan): each holds at least one cycle."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def subpackage_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    """The module graph with each subpackage (trl_mtp.heads, trl_mtp.diagnostics, ...) as one node: the layering
    between parts of the package, where two parts that import each other form a cycle of two."""

    def part(module):
        return ".".join(module.split(".")[:2])

    parts: dict[str, set[str]] = {}
    for module, imported in graph.items():
        parts.setdefault(part(module), set()).update(part(m) for m in imported if part(m) != part(module))
    return parts


def unexpected_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found = cycles(graph) + cycles(subpackage_graph(graph))
    return [sorted(c) for c in found if not any(c <= known for known in KNOWN_CYCLES)]


def test_the_package_has_no_import_cycles():
    graph = import_graph()
    assert "trl_mtp.native" in graph["trl_mtp.model"]  # the parser sees the package's imports
    assert "trl_mtp.heads.native_layouts" in graph["trl_mtp.heads.sequential"]
    assert not unexpected_cycles(graph)


def test_diagnostics_import_nothing_from_experiments():
    """The layering: experiments/ (runs, intervals, tables) build on diagnostics/ (recorder, probe, plots), never
    the reverse; the bootstrap both use lives at the package level."""
    graph = import_graph()
    assert "trl_mtp.diagnostics.recorder" in graph["trl_mtp.experiments.sft_runs"]
    assert "trl_mtp.bootstrap" in graph["trl_mtp.diagnostics.consistency"]
    reach_ins = {
        (module, imported)
        for module, deps in graph.items()
        if module.startswith("trl_mtp.diagnostics")
        for imported in deps
        if imported.startswith("trl_mtp.experiments")
    }
    assert not reach_ins
    graph["trl_mtp.diagnostics.plots"].add("trl_mtp.experiments.intervals")  # the old reach-in, put back
    assert ["trl_mtp.diagnostics", "trl_mtp.experiments"] in unexpected_cycles(graph)


def test_the_check_finds_cycles():
    """A synthetic graph: a three-module cycle, a cycle through a lazy import between two subpackages, and the
    import circles the native layouts' move untied, put back into the real graph."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}) == [{"a", "b", "c"}]
    parts = subpackage_graph({"p.x.a": {"p.y.b"}, "p.y.b": {"p.y.c"}, "p.y.c": {"p.x.d"}, "p.x.d": set()})
    assert cycles(parts) == [{"p.x", "p.y"}]
    graph = import_graph()
    graph["trl_mtp.heads.sequential"].add("trl_mtp.native")  # a head family importing the import/export module
    graph["trl_mtp.native"].add("trl_mtp.model")  # the native loader building the model
    assert ["trl_mtp.heads", "trl_mtp.heads.sequential", "trl_mtp.model", "trl_mtp.native"] in unexpected_cycles(graph)


def test_imports_inside_functions_and_relative_imports_count(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "a.py").write_text("def f():\n    from ..b import g\n")
    (package / "b.py").write_text("import pkg.sub.a\n")
    modules = {"pkg": None, "pkg.sub": None, "pkg.sub.a": None, "pkg.b": None}
    assert imported_modules("pkg.sub.a", package / "sub" / "a.py", modules) == {"pkg.b"}
    assert imported_modules("pkg.b", package / "b.py", modules) == {"pkg.sub.a"}
