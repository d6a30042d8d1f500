"""The layout a reader relies on, read from the code itself: no import cycle, small modules and
functions, ``search`` using only what ``training`` lists, a study file's schema that acts on
nothing, and Optuna's private names behind ``search.store``, in its ``_``-prefixed modules."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import training

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("search", "training")
MAX_MODULE_LINES = 300
MAX_FUNCTION_LINES = 60


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """Every import of a module, at its top or inside a function: (module, names taken from it)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.module, [alias.name for alias in node.names]))
    return found


def _edges(name: str) -> set[str]:
    """The project's modules ``name`` imports (a name taken from a package that is one of its
    modules counts as that module)."""
    edges = set()
    for module, names in _imports(MODULES[name]):
        if module not in MODULES:
            continue
        submodules = {f"{module}.{n}" for n in names} & set(MODULES)
        edges |= submodules or {module}
        if names and len(submodules) < len(names):
            edges.add(module)
    return edges - {name}


def test_no_import_cycle_in_search_or_training():
    graph = {name: _edges(name) for name in MODULES}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for other in sorted(graph[name]):
            if state.get(other) == "open":
                cycle = trail[trail.index(other) :] + [other]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if other not in state:
                visit(other, [*trail, other])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_and_functions_are_short_enough_to_read_in_one_sitting(name):
    text = MODULES[name].read_text()
    assert text.count("\n") <= MAX_MODULE_LINES, f"{name}: {text.count(chr(10))} lines"
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            assert length <= MAX_FUNCTION_LINES, f"{name}.{node.name}: {length} lines"


def test_search_uses_training_only_through_the_names_it_lists():
    for name, path in MODULES.items():
        if not name.startswith("search"):
            continue
        for module, names in _imports(path):
            if module.startswith("training."):
                pytest.fail(f"{name} reaches past training's list: it imports {module}")
            if module == "training":
                assert set(names) <= set(training.__all__), f"{name}: {sorted(set(names) - set(training.__all__))}"


def test_training_imports_neither_search_nor_optuna():
    for name, path in MODULES.items():
        if name.startswith("training"):
            assert not [m for m, _ in _imports(path) if m.split(".")[0] in ("search", "optuna")], name


@pytest.mark.parametrize("name", ["search.study.schema", "search.study.space", "search.study.fields"])
def test_the_study_schema_imports_nothing_that_samples_prunes_or_trains(name):
    acting = ("optuna", "torch", "timm", "search.run", "search.store", "search.study.samplers",
              "search.study.pruners", "search.study.distributions", "search.study.load")  # fmt: skip
    imported = [module for module, _ in _imports(MODULES[name])]
    assert not [m for m in imported if m.startswith(acting)], imported


def test_importing_the_study_schema_loads_nothing_that_samples_prunes_or_trains():
    """What the import really loads, its package's ``__init__`` and everything below included."""
    code = "import sys, search.study.schema; print(' '.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    acting = ("optuna", "torch", "timm", "sklearn", "search.study.load", "search.study.samplers")
    acting += ("search.study.pruners",)
    assert not [m for m in loaded.stdout.split() if m.startswith(acting)], loaded.stdout


def test_optunas_private_names_are_used_only_in_the_private_modules_of_the_store():
    modules = ("optuna.storages._", "optuna.study._", "optuna.trial._", "optuna.artifacts._", "optuna._")
    names = ("._trial_id", "._study_id", "._storage", "._backend", "._cached_frozen_trial", "._get_stale_trial_ids")
    names += ("._get_filepath", "._base_path", "._thread_local")
    # a call of Optuna's private methods, or a method of Optuna's private protocol defined here
    private = (*modules, *names, "._set_trial_attr_without_commit", "._get_trials(", "def _get_trials(")
    users = sorted(name for name, path in MODULES.items() if any(p in path.read_text() for p in private))
    assert users and all(name.startswith("search.store._") for name in users), users


def test_the_stores_private_modules_are_imported_by_the_store_only():
    for name, path in MODULES.items():
        if name.startswith("search.store"):
            continue
        for module, names in _imports(path):
            reached = [module] if module.startswith("search.store._") else []
            reached += [f"{module}.{n}" for n in names if module == "search.store" and n.startswith("_")]
            assert not reached, f"{name} imports {reached}: ask search.store for what it needs"


def test_each_command_is_a_module_of_its_own():
    from search.commands import COMMANDS

    for name, module in COMMANDS.items():
        assert module.__name__ == f"search.commands.{name.replace('-', '_')}"  # lr-find: lr_find
        assert callable(module.add_arguments) and callable(module.take_action) and module.HELP and module.EXAMPLES
