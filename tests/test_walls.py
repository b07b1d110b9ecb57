"""The component walls, checked on the source: who may import what, and who may name which table.

- A component never imports another component's `models` (its tables) nor its private
  modules (`_name`): it calls the other's service modules.
- Components do not import each other in a circle (the graph of components is a DAG), and
  the shared libraries (`core`, `mime`, `policies`) import no component.
- No SQL text in a component names a table another component owns.

`docs/architecture.md` lists the components and their tables; `db.py` (which assembles
the whole schema for Alembic), the migrations and the wiring modules are the only places
that see every component.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "caducee"
WIRING = {"server", "cli", "demo", "db", "config", "__main__", "__init__", "migrations"}  # see every component by design
LIBRARIES = {"core", "mime", "policies"}  # shared by all, depend on none
_SQL_TABLE = re.compile(r"\b(?:FROM|JOIN|INTO|UPDATE|TABLE)\s+\"?([a-z_][a-z0-9_]*)")  # SQL is written in capitals here


@dataclass(frozen=True)
class Violation:
    module: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line}: {self.what}"


def component_of(module: str) -> str:
    """`caducee.gateway.pipeline` -> `gateway`; `caducee.server` -> `server`."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _modules(root: Path) -> dict[str, Path]:
    found = {}
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root.parent).with_suffix("")
        name = ".".join(relative.parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(tree: ast.AST, module: str) -> list[tuple[int, str]]:
    """Every module an `import` or `from ... import` names (relative imports resolved), with its line."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = module.split(".")[: -node.level]
                base = ".".join([*parent, base] if base else parent)
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names]  # `from caducee.x import models`
    return out


def _owned_tables(modules: dict[str, Path]) -> dict[str, str]:
    """table name -> owning component, read from each component's models (`__tablename__ = "..."`)."""
    owners = {}
    for name, path in modules.items():
        if not name.endswith(".models"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            named = isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__tablename__" for t in node.targets)
            if named and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):  # type: ignore[attr-defined]
                owners[node.value.value] = component_of(name)  # type: ignore[attr-defined]
    return owners


def check(root: Path) -> list[Violation]:
    """Every violation of the walls in the package at `root` (its name is the root package)."""
    modules = _modules(root)
    owners = _owned_tables(modules)
    violations: list[Violation] = []
    graph: dict[str, set[str]] = {}
    top = root.name
    for name, path in modules.items():
        mine = component_of(name)
        if mine in WIRING:
            continue
        tree = ast.parse(path.read_text())
        for line, imported in sorted(set(_imports(tree, name))):
            if not imported.startswith(top + ".") or imported not in modules and imported.rsplit(".", 1)[0] not in modules:
                continue
            theirs = component_of(imported)
            if theirs == mine or theirs in {"config", "db"}:
                continue
            if theirs in WIRING:
                violations.append(Violation(name, line, f"imports the wiring module {imported}"))
                continue
            graph.setdefault(mine, set()).add(theirs)
            leaf = imported.split(".")[2:] if imported.count(".") >= 2 else []
            if imported not in modules:  # `from package.module import Name`: the module itself was checked
                continue
            if "models" in leaf:
                violations.append(Violation(name, line, f"imports {imported}: another component's tables"))
            if any(part.startswith("_") for part in leaf):
                violations.append(Violation(name, line, f"imports {imported}: another component's private module"))
            if mine in LIBRARIES:
                violations.append(Violation(name, line, f"the shared library {mine} imports the component {theirs}"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and len(node.value) > 8:
                for table in _SQL_TABLE.findall(node.value):
                    owner = owners.get(table.lower())
                    if owner is not None and owner != mine:
                        violations.append(Violation(name, node.lineno, f"SQL names {table}, a table of {owner}"))
    violations += [Violation(" -> ".join(cycle), 0, "components import each other in a circle") for cycle in _cycles(graph)]
    return violations


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected group of components (Tarjan's algorithm, small graph)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_the_walls_hold() -> None:
    violations = check(PACKAGE)
    assert not violations, "\n".join(map(str, violations))


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        (
            {"alpha/models.py": '__tablename__ = "alphas"\n', "beta/service.py": "from pkg.alpha.models import X\n"},
            "another component's tables",
        ),
        ({"alpha/_inner.py": "", "beta/service.py": "from pkg.alpha import _inner\n"}, "private module"),
        ({"alpha/service.py": "import pkg.beta.service\n", "beta/service.py": "import pkg.alpha.service\n"}, "in a circle"),
        ({"core/clock.py": "import pkg.alpha.service\n", "alpha/service.py": ""}, "shared library core imports"),
        (
            {"alpha/models.py": '__tablename__ = "alphas"\n', "beta/service.py": 'Q = "SELECT id FROM alphas WHERE x = 1"\n'},
            "a table of alpha",
        ),
    ],
    ids=["models", "private", "cycle", "library", "sql"],
)
def test_a_deliberate_violation_is_caught(tmp_path: Path, files: dict[str, str], expected: str) -> None:
    root = tmp_path / "pkg"
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        (path.parent / "__init__.py").touch()
        path.write_text(text)
    (root / "__init__.py").touch()
    assert any(expected in str(violation) for violation in check(root)), check(root)
