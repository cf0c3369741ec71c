"""The floor plan, checked: layers import only downward, no import circles, and each model
and feature service is named (as a string literal) in exactly one module.

docs/architecture.md explains the layers; this is where their order is stated.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: Lowest first. A package may import its own modules and any package before it, never after.
LAYERS: tuple[str, ...] = ("crmdata", "features", "training", "serving", "pipelines")


def _modules() -> Iterator[tuple[str, Path]]:
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            yield ".".join(parts[:-1] if parts[-1] == "__init__" else parts), path


def _type_checking_only(tree: ast.Module) -> set[int]:
    """Ids of the import nodes under ``if TYPE_CHECKING:`` (annotations, never run)."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def _imports(module: str, path: Path, *, runtime_only: bool = False) -> Iterator[tuple[str, int]]:
    """First-party modules imported anywhere in ``path`` (top level or inside functions);
    ``runtime_only`` leaves out those imported only for type checking."""
    is_package = path.name == "__init__.py"
    tree = ast.parse(path.read_text(), str(path))
    skip = _type_checking_only(tree) if runtime_only else set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                names = [".".join([*base, node.module] if node.module else base)]
            else:
                names = [node.module or ""]
        else:
            continue
        for name in names:
            if name.split(".")[0] in LAYERS:
                yield name, node.lineno


def _resolve(name: str, known: set[str]) -> str | None:
    """The module (of ours) that ``import name`` / ``from name import x`` loads."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def test_layers_import_only_downward() -> None:
    rank = {layer: i for i, layer in enumerate(LAYERS)}
    wrong = []
    for module, path in _modules():
        own = rank[module.split(".")[0]]
        for name, line in _imports(module, path):
            if rank[name.split(".")[0]] > own:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {name} (a higher layer)")
    assert not wrong, "\n".join(wrong)


def test_no_import_circles() -> None:
    modules = dict(_modules())
    known = set(modules)
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        targets = {_resolve(name, known) for name, _ in _imports(module, path, runtime_only=True)}
        # A package's __init__ re-exporting its submodules is not a circle with them.
        graph[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    circles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                circles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "\n".join(" -> ".join(c) for c in circles)


def _string_literals(path: Path) -> set[str]:
    return {node.value for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Constant) and isinstance(node.value, str)}


def _names() -> list[str]:
    from features.catalog import CHURN_SERVICE, LEAD_SERVICE, NBP_SERVICE
    from training.tasks import TASKS

    return [*(t.model_name for t in TASKS.values()), CHURN_SERVICE, LEAD_SERVICE, NBP_SERVICE]


@pytest.mark.parametrize("name", _names())
def test_each_model_and_feature_service_is_named_in_one_module(name: str) -> None:
    holders = [str(path.relative_to(ROOT)) for _, path in _modules() if name in _string_literals(path)]
    assert len(holders) == 1, f"{name!r} is written in {holders}; name it once and import it"


def test_score_tables_follow_the_task_registry() -> None:
    """The Feast score views (features/, below the registry) key each task's scores by the
    task's entity and name its grade as the task does."""
    from features.catalog import SCORE_ENTITIES, SCORE_GRADE_COLUMN
    from training.tasks import TASKS

    assert SCORE_ENTITIES == {key: task.entity for key, task in TASKS.items()}
    assert SCORE_GRADE_COLUMN == {key: task.grade_column for key, task in TASKS.items() if task.grade_column}
