"""The dependency rules of the code base, checked on the source with `ast` (nothing imported).

* Dependencies run one way: the apps import the core (`evoflow`), never the reverse. The core
  learns about the apps only through registries the apps fill from their `AppConfig.ready()`
  (schedules, demo seeders, operator apps, dashboard tiles) and the integrity autodiscovery.
* An app uses another app only through that app's `services` or `selectors`.
* The core has no import cycle among its modules.
* Production code never imports `devtools` (the local stack, the local database, the
  simulators' base); only the simulators and the commands that serve them do.
* A task is named one way only: a `*_TASK` dotted path constant, which must import.

Every assertion names the offending module and line. Imports are read from every statement of
a module, including those inside functions (see `module_imports`).
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.utils.module_loading import import_string

from tests.helpers import PROJECT_ROOT, production_secrets, run_python

CORE = "evoflow"
APPS = ("journeys", "conversations", "deliveries")
# What an app may import of another app.
APP_PUBLIC_MODULES = ("services", "selectors")
DEVTOOLS = "devtools"


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, e.g. "evoflow.dashboard"
    path: Path
    line: int
    target: str  # the imported module (or module.name for `from module import name`)
    is_runtime: bool  # False inside an `if TYPE_CHECKING:` block, which never runs

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(PROJECT_ROOT)}:{self.line} ({self.module})"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PROJECT_ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_files(package: str) -> Iterator[Path]:
    for path in sorted((PROJECT_ROOT / package).rglob("*.py")):
        if "migrations" not in path.relative_to(PROJECT_ROOT).parts:
            yield path


def called_name(node: ast.Call) -> str:
    if isinstance(node.func, ast.Name):
        return node.func.id
    return node.func.attr if isinstance(node.func, ast.Attribute) else ""


def is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_imports(path: Path) -> list[Import]:
    """Every import of the module at `path`: import statements, absolute or relative, anywhere
    in the module (functions included), and `import_module("literal.path")` calls."""
    name = module_name(path)
    is_package = path.name == "__init__.py"
    found: list[Import] = []

    def resolve(module: str | None, level: int) -> str:
        if not level:
            return module or ""
        base = name.split(".")
        # A package's relative imports start from the package itself; a module's from its parent.
        base = base[: len(base) - level + (1 if is_package else 0)]
        return ".".join([*base, *([module] if module else [])])

    def visit(node: ast.AST, is_runtime: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(
                    Import(name, path, child.lineno, alias.name, is_runtime)
                    for alias in child.names
                )
            elif isinstance(child, ast.ImportFrom):
                source = resolve(child.module, child.level)
                found.extend(
                    Import(name, path, child.lineno, f"{source}.{alias.name}", is_runtime)
                    for alias in child.names
                )
            elif is_type_checking_block(child):
                visit(child, False)
            else:
                if (
                    isinstance(child, ast.Call)
                    and called_name(child) == "import_module"
                    and child.args
                    and isinstance(child.args[0], ast.Constant)
                    and isinstance(child.args[0].value, str)
                ):
                    found.append(Import(name, path, child.lineno, child.args[0].value, is_runtime))
                visit(child, is_runtime)

    visit(ast.parse(path.read_text(), filename=str(path)), True)
    return found


def top_level(target: str) -> str:
    return target.split(".", 1)[0]


def all_imports(*packages: str) -> list[Import]:
    return [
        found
        for package in packages
        for path in package_files(package)
        for found in module_imports(path)
    ]


# -- (a) the core imports no app ------------------------------------------------------------------


def test_the_core_imports_no_app():
    offending = [
        f"{found.where} imports {found.target}"
        for found in all_imports(CORE)
        if top_level(found.target) in APPS
    ]

    assert offending == [], (
        "the core must not import an app (register from the app instead):\n" + "\n".join(offending)
    )


# -- (b) an app uses another app only through its services and selectors --------------------------


def is_public_module_of(target: str, app: str) -> bool:
    """`app.services`, `app.selectors`, anything under them, or a name imported from them."""
    parts = target.split(".")
    return parts[0] == app and len(parts) >= 2 and parts[1] in APP_PUBLIC_MODULES


def test_an_app_imports_another_app_only_through_its_services_or_selectors():
    offending = [
        f"{found.where} imports {found.target}"
        for app in APPS
        for found in all_imports(app)
        if top_level(found.target) in APPS
        and top_level(found.target) != app
        and not is_public_module_of(found.target, top_level(found.target))
    ]

    assert offending == [], (
        "an app may import another app only through <app>.services or <app>.selectors:\n"
        + "\n".join(offending)
    )


# -- (c) no import cycle in the core --------------------------------------------------------------


def core_module_graph() -> dict[str, dict[str, Import]]:
    """Module -> the core modules it imports, with the first such import.

    Imports inside functions count too: deferring an import into a function only hides a
    cycle (the two modules still need each other), it does not break one. Left out: imports
    in an `if TYPE_CHECKING:` block (never run), and the implicit import of a module's parent
    packages (a package's `__init__` re-exporting its submodules is not a cycle with them).
    `from package import name` is an edge to `package.name` when that is a module, else to
    `package`; `import_module("literal.path")` is an edge too.
    """
    paths = {module_name(path): path for path in package_files(CORE)}
    graph: dict[str, dict[str, Import]] = {name: {} for name in paths}
    for name, path in paths.items():
        for found in module_imports(path):
            if not found.is_runtime or top_level(found.target) != CORE:
                continue
            target = found.target
            while target not in paths and "." in target:
                target = target.rsplit(".", 1)[0]
            if target in paths and target != name:
                graph[name].setdefault(target, found)
    return graph


def find_cycle(graph: dict[str, dict[str, Import]]) -> list[str] | None:
    """A cycle of the graph as the list of its modules (first repeated at the end), or None."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" once explored
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == "open":
                return [*stack[stack.index(target) :], target]
            if target not in state and (cycle := visit(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_core_has_no_import_cycle():
    graph = core_module_graph()

    cycle = find_cycle(graph)

    assert cycle is None, "import cycle among the core's modules:\n" + "\n".join(
        f"{graph[source][target].where} imports {graph[source][target].target}"
        for source, target in zip(cycle, cycle[1:], strict=False)
    )


def test_the_cycle_search_finds_a_cycle():
    # Given a -> b -> c -> a, and d -> a outside the cycle
    edge = Import("x", PROJECT_ROOT / "x.py", 1, "y", is_runtime=True)
    graph = {"a": {"b": edge}, "b": {"c": edge}, "c": {"a": edge}, "d": {"a": edge}}

    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": edge}, "b": {}}) is None


# -- (d) production code does not import devtools ------------------------------------------------


def is_simulator_module(path: Path) -> bool:
    """The simulators and the management commands that serve them: development tools that
    live in their app (they share its payload shapes), allowed to build on devtools."""
    relative = path.relative_to(PROJECT_ROOT)
    if "simulator" in relative.parts or relative.stem == "simulator":
        return True
    return "commands" in relative.parts and relative.stem.endswith("_simulator")


def test_production_code_does_not_import_devtools():
    offending = [
        f"{found.where} imports {found.target}"
        for package in (CORE, *APPS)
        for path in package_files(package)
        if not is_simulator_module(path)
        for found in module_imports(path)
        if top_level(found.target) == DEVTOOLS
    ]

    assert offending == [], "production code must not import devtools:\n" + "\n".join(offending)


@pytest.mark.slow
def test_the_wsgi_application_loads_no_devtools_module():
    # Given a production-like environment (DEBUG off, every secret set, a remote database)
    env = {key: value for key, value in os.environ.items() if key != "DATABASE_URL"}
    env.update(
        {
            "DJANGO_SETTINGS_MODULE": "evoflow.settings",
            "DEBUG": "false",
            "DATABASE_URL": "postgres://app@db.internal:5432/evoflow",
            **production_secrets(),
        }
    )
    # When a fresh interpreter loads the WSGI application and every URL pattern (the views,
    # the API, the admin), without touching the database
    script = (
        "import sys\n"
        "import evoflow.wsgi\n"
        "from django.urls import get_resolver\n"
        "get_resolver().url_patterns\n"
        "print(sorted(name for name in sys.modules if name.split('.')[0] == 'devtools'))\n"
    )
    result = run_python("-c", script, env=env)

    # Then no devtools module was loaded
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# -- tasks are named one way only ---------------------------------------------------------------


def task_constants() -> list[tuple[str, str, str]]:
    """(where, constant, dotted path) of every module-level `*_TASK = "..."` of production code."""
    found = []
    for package in (CORE, *APPS):
        for path in package_files(package):
            for node in ast.parse(path.read_text()).body:
                if (
                    isinstance(node, ast.Assign)
                    and len(node.targets) == 1
                    and isinstance(node.targets[0], ast.Name)
                    and node.targets[0].id.endswith("_TASK")
                    and isinstance(node.value, ast.Constant)
                    and isinstance(node.value.value, str)
                ):
                    where = f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} ({module_name(path)})"
                    found.append((where, node.targets[0].id, node.value.value))
    return found


def test_every_task_constant_names_a_callable():
    constants = task_constants()
    assert len(constants) >= 8  # a test that finds nothing proves nothing

    for where, name, dotted_path in constants:
        assert callable(import_string(dotted_path)), f"{where}: {name} = {dotted_path!r}"


def test_every_enqueue_names_its_task_by_a_task_constant():
    offending = []
    for package in (CORE, *APPS):
        for path in package_files(package):
            if module_name(path) == "evoflow.tasks":
                continue  # the enqueue helper itself, which hands the path on to django-q2
            for node in ast.walk(ast.parse(path.read_text())):
                if not isinstance(node, ast.Call) or called_name(node) not in (
                    "enqueue_after_commit",
                    "async_task",
                ):
                    continue
                first = node.args[0] if node.args else None
                if isinstance(first, ast.Name):
                    name = first.id
                elif isinstance(first, ast.Attribute):
                    name = first.attr
                else:
                    name = ""
                if not name.endswith("_TASK"):
                    offending.append(
                        f"{path.relative_to(PROJECT_ROOT)}:{node.lineno} ({module_name(path)})"
                    )

    assert offending == [], "enqueue a task by its *_TASK constant:\n" + "\n".join(offending)


def test_every_registered_schedule_names_a_callable():
    from evoflow.schedules import registered_schedules

    schedules = registered_schedules()
    assert {spec.name for spec in schedules} >= {"integrity.daily", "journeys.resume_due_sessions"}

    for spec in schedules:
        assert callable(import_string(spec.func)), f"schedule {spec.name}: {spec.func!r}"
