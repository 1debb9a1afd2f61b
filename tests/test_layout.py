"""The package's layout, read from the source (ast; nothing is imported): no import cycle among
msdetr_lite's modules, no module over 500 lines, and each floor imports only from its own floor
and the floors below it (docs/design.md, "The floors").

What counts as an import of module M by module A (the rules `import_graph` applies):
- every `import` / `from ... import` statement in A that names a module of the package, at module
  level *and inside functions*. A function-level (lazy) import only postpones the import: A still
  needs M, and two modules that need each other are one piece of design split in two files
  (issue 26's analysis <-> viz circle was two lazy imports). So lazy imports count;
- `from P import x` is an import of the submodule P.x when there is one, else of P itself (x is a
  name defined in P's __init__); relative imports are resolved against A's package;
- the parent packages Python runs implicitly (importing a.b.c runs a/__init__ and a/b/__init__)
  are not edges, and neither is anything outside the package (torch, numpy, ...).
The scan covers msdetr_lite/ and the folders pyproject.toml maps into it (kernels/ ->
msdetr_lite.kernels).
"""
from __future__ import annotations

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "msdetr_lite"
MAX_LINES = 500

# Modules allowed over MAX_LINES for now, each with the change that brings it under. Nothing else.
OVER_LIMIT_FOR_NOW: dict[str, str] = {}

# Import cycles left for now, each with the change that removes it. Nothing else.
KNOWN_CYCLES: dict[frozenset, str] = {}

# The floors, lowest first: a module may import modules of its own floor and of the floors below.
# The first matching prefix decides; a module no prefix names (e.g. a new top-level module) is on
# floor 2, training and measuring.
FLOOR_NAMES = {1: "the method", 2: "training and measuring", 3: "figures (viz)", 4: "the lesson"}
FLOORS = [
    ("msdetr_lite.viz", 3),
    ("msdetr_lite.lab", 4), ("msdetr_lite.regime", 4), ("msdetr_lite.cli", 4), ("msdetr_lite.__main__", 4),
    # the old names of lab's modules: re-exports of the lesson, so on its floor
    ("msdetr_lite.zoo", 4), ("msdetr_lite.samples", 4), ("msdetr_lite.widgets", 4), ("msdetr_lite.report", 4),
    ("msdetr_lite.config", 1), ("msdetr_lite.ops", 1), ("msdetr_lite.kernels", 1), ("msdetr_lite.models", 1),
    ("msdetr_lite.matching", 1), ("msdetr_lite.losses", 1), ("msdetr_lite.data", 1),
    # the shapes generator's knobs: data (floor 1), kept outside data/ so the CLI parser reads them
    # without importing torch
    ("msdetr_lite.shapes_knobs", 1),
    # what a user can fix (every floor's errors derive from it, and the CLI's boundary) and what a
    # command may replace (the shapes generator asks it too): below everything that uses them
    ("msdetr_lite.errors", 1), ("msdetr_lite.outputs", 1),
]


# ---------------------------------------------------------------- reading the source
def package_dirs(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """{package name: folder}: the package's own folder and those pyproject.toml maps into it."""
    dirs = {package: root / package}
    pyproject = root / "pyproject.toml"
    if pyproject.is_file():
        mapped = tomllib.loads(pyproject.read_text()).get("tool", {}).get("setuptools", {}).get("package-dir", {})
        dirs.update({name: root / folder for name, folder in mapped.items() if name.startswith(package + ".")})
    return dirs


def module_files(dirs: dict[str, Path]) -> dict[str, tuple[Path, bool]]:
    """{dotted module name: (file, is a package __init__)} of every .py file under the folders."""
    modules: dict[str, tuple[Path, bool]] = {}
    for name, folder in dirs.items():
        for path in sorted(folder.rglob("*.py")):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            is_pkg = parts[-1] == "__init__"
            dotted = ".".join([name, *parts[:-1]] if is_pkg else [name, *parts])
            if dotted.startswith(tuple(n for n in dirs if n != name and n.startswith(name + "."))):
                continue                                    # a mapped folder's name wins over a same-named one
            modules[dotted] = (path, is_pkg)
    return modules


def _targets(node: ast.AST, module: str, is_pkg: bool, modules) -> list[str]:
    """The package's modules one import statement names (the rules in this file's docstring)."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        if node.level:
            base = module.split(".") if is_pkg else module.split(".")[:-1]
            if node.level - 1 > len(base) - 1:
                raise ValueError(f"{module}: relative import beyond the top-level package")
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        else:
            source = node.module
        subs = [f"{source}.{alias.name}" for alias in node.names if f"{source}.{alias.name}" in modules]
        names = subs if len(subs) == len(node.names) else [source, *subs]
    found = []
    for name in names:
        while name not in modules and "." in name:          # `import a.b.c` of a name inside a module
            name = name.rsplit(".", 1)[0]
        if name in modules and name != module:
            found.append(name)
    return found


def import_graph(dirs: dict[str, Path]) -> dict[str, set[str]]:
    """{module: the package's modules it imports, lazily or not}."""
    modules = module_files(dirs)
    graph = {}
    for module, (path, is_pkg) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph[module] = {t for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                         for t in _targets(node, module, is_pkg, modules)}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The import cycles: every strongly connected component of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

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
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def describe_cycle(graph: dict[str, set[str]], cycle: frozenset[str]) -> str:
    """'a -> b -> a' (one closed path through the cycle's modules) for an error message."""
    start = min(cycle)
    path, seen = [start], {start}
    while True:
        nxt = sorted(graph[path[-1]] & cycle)
        back = start if start in nxt else None
        step = back or next((n for n in nxt if n not in seen), nxt[0])
        path.append(step)
        if step in seen:
            return " -> ".join(path[path.index(step):])
        seen.add(step)


def floor_of(module: str) -> int:
    for prefix, floor in FLOORS:
        if module == prefix or module.startswith(prefix + "."):
            return floor
    return 1 if module == PACKAGE else 2


def module_lines(dirs: dict[str, Path]) -> dict[str, int]:
    return {m: len(path.read_text().splitlines()) for m, (path, _) in module_files(dirs).items()}


# ---------------------------------------------------------------- the package
def test_no_import_cycle():
    graph = import_graph(package_dirs())
    assert "msdetr_lite.viz.candidates" in graph and "msdetr_lite.kernels.cuda_loader" in graph
    found = {c: describe_cycle(graph, c) for c in find_cycles(graph)}
    new = [text for c, text in found.items() if c not in KNOWN_CYCLES]
    assert not new, "import cycle(s) among msdetr_lite's modules (lazy imports count):\n" + "\n".join(new)


def test_known_cycles_are_current():
    found = set(find_cycles(import_graph(package_dirs())))
    gone = [f"{sorted(c)} ({why})" for c, why in KNOWN_CYCLES.items() if c not in found]
    assert not gone, f"no longer a cycle, remove it from KNOWN_CYCLES: {gone}"


def test_no_module_over_500_lines():
    lines = module_lines(package_dirs())
    assert len(lines) > 40
    over = {m: n for m, n in lines.items() if n > MAX_LINES and m not in OVER_LIMIT_FOR_NOW}
    assert not over, (f"modules over {MAX_LINES} lines (a module that long usually holds two jobs: "
                      f"split it along them): {over}")


def test_over_limit_list_is_current():
    lines = module_lines(package_dirs())
    stale = {m: lines.get(m) for m in OVER_LIMIT_FOR_NOW if lines.get(m, 0) <= MAX_LINES}
    assert not stale, f"under {MAX_LINES} lines now (or gone): remove from OVER_LIMIT_FOR_NOW: {stale}"


def test_each_floor_imports_only_its_own_and_those_below():
    """The method never imports training, figures or the lesson; training and measuring never import
    figures or the lesson; figures never import the lesson."""
    graph = import_graph(package_dirs())
    upward = sorted(f"{a} (floor {floor_of(a)}, {FLOOR_NAMES[floor_of(a)]}) imports {b} "
                    f"(floor {floor_of(b)}, {FLOOR_NAMES[floor_of(b)]})"
                    for a, targets in graph.items() for b in targets if floor_of(b) > floor_of(a))
    assert not upward, "imports from a floor above:\n" + "\n".join(upward)
    floors = {floor_of(m) for m in graph}
    assert floors == {1, 2, 3, 4}, floors


# ---------------------------------------------------------------- the finder itself
def _write(root: Path, files: dict[str, str]) -> dict[str, Path]:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return {"pkg": root / "pkg"}


def test_the_finder_sees_a_planted_cycle(tmp_path):
    """A tiny package with one cycle of two lazy imports (relative), one through an absolute
    `from pkg.sub import d` and a nested package, and imports that are not cycles."""
    dirs = _write(tmp_path, {
        "pkg/__init__.py": "VERSION = 1\n",
        "pkg/a.py": "from . import b\n",
        "pkg/b.py": "import torch\n\ndef f():\n    from .a import g\n    return g\n",
        "pkg/c.py": "from pkg.sub import d\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/d.py": "def h():\n    from ..c import x\n",
        "pkg/e.py": "from . import VERSION\nimport pkg.sub.d as dd\nfrom .sub import d\n",
        "pkg/f.py": "from pkg.a import b\nimport numpy\n",
    })
    graph = import_graph(dirs)
    assert graph["pkg.a"] == {"pkg.b"} and graph["pkg.b"] == {"pkg.a"}
    assert graph["pkg.c"] == {"pkg.sub.d"} and graph["pkg.sub.d"] == {"pkg.c"}
    assert graph["pkg.e"] == {"pkg", "pkg.sub.d"}                  # VERSION lives in pkg/__init__
    assert graph["pkg.f"] == {"pkg.a"} and graph["pkg"] == set()     # `from pkg.a import b`: b is a name in a
    assert set(find_cycles(graph)) == {frozenset({"pkg.a", "pkg.b"}), frozenset({"pkg.c", "pkg.sub.d"})}
    assert describe_cycle(graph, frozenset({"pkg.a", "pkg.b"})) == "pkg.a -> pkg.b -> pkg.a"


def test_the_finder_passes_a_package_without_cycles(tmp_path):
    dirs = _write(tmp_path, {
        "pkg/__init__.py": "from .a import g\n",
        "pkg/a.py": "def g():\n    from . import b\n",
        "pkg/b.py": "import os\n",
        "pkg/sub/__init__.py": "from ..a import g\n",
    })
    graph = import_graph(dirs)
    assert graph == {"pkg": {"pkg.a"}, "pkg.a": {"pkg.b"}, "pkg.b": set(), "pkg.sub": {"pkg.a"}}
    assert find_cycles(graph) == []


def test_a_longer_cycle_and_a_package_init_in_it(tmp_path):
    """a -> b -> c -> a (c through the package __init__, which re-exports a)."""
    dirs = _write(tmp_path, {
        "pkg/__init__.py": "from .a import g\n",
        "pkg/a.py": "from .b import h\ng = 1\n",
        "pkg/b.py": "from .c import k\nh = 1\n",
        "pkg/c.py": "def k():\n    from pkg import g\n",
    })
    graph = import_graph(dirs)
    (cycle,) = find_cycles(graph)
    assert cycle == {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    assert describe_cycle(graph, cycle) == "pkg -> pkg.a -> pkg.b -> pkg.c -> pkg"
