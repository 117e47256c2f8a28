"""The stage graph tells the truth: every first-party file a stage's code imports is one of its deps,
and no module of flows/ shadows a package when a runner loads a flow by its file path."""

from __future__ import annotations

import ast
import importlib.util
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, run

FIRST_PARTY = ("flightloop", "tasks", "models", "flows", "serving", "monitoring")
STAGES = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    parts = name.split(".")
    if parts[0] not in FIRST_PARTY:
        return None
    base = REPO.joinpath(*parts)
    if base.with_suffix(".py").exists():
        return base.with_suffix(".py")
    return base / "__init__.py" if (base / "__init__.py").exists() else None


def imported(path: Path) -> set[str]:
    """Every module an import statement names, at any depth (imports inside functions count)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names |= {node.module, *(f"{node.module}.{a.name}" for a in node.names)}
    return names


def is_empty_package(path: Path) -> bool:
    """An __init__.py holding nothing but a docstring runs no code."""
    body = ast.parse(path.read_text()).body
    return path.name == "__init__.py" and all(
        isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant) for n in body
    )


def code_closure(module: str) -> set[str]:
    seen: set[Path] = set()
    todo = [module_file(module)]
    while todo:
        path = todo.pop()
        if path is None or path in seen:
            continue
        seen.add(path)
        todo += [module_file(name) for name in imported(path)]
    return {str(p.relative_to(REPO)) for p in seen if not is_empty_package(p)}


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_file_a_stage_imports_is_a_dep(stage):
    cmd = STAGES[stage]["cmd"].split()
    assert cmd[:2] == ["python", "-m"], f"stage {stage}: the check reads `python -m <module>` commands"
    deps = [d if isinstance(d, str) else next(iter(d)) for d in STAGES[stage]["deps"]]
    covered = lambda f: any(f == d or (d.endswith("/") and f.startswith(d)) for d in deps)  # noqa: E731
    missing = sorted(f for f in code_closure(cmd[2]) if not covered(f))
    assert not missing, f"stage {stage} runs code that is not among its deps in dvc.yaml: {missing}"


def test_the_closure_follows_imports_inside_functions():
    # evaluate imports tasks.train, which imports models.fit inside a function
    assert {"tasks/train.py", "models/fit.py", "flightloop/metrics.py"} <= code_closure("tasks.evaluate")


def test_no_flow_module_shadows_a_package():
    """A runner loads `flows/<file>.py` with flows/ on the import path: a module there named like a
    package (flows/monitoring.py vs monitoring/) breaks every import of that package in the flow."""
    flows = sorted(p.stem for p in (REPO / "flows").glob("*.py") if p.stem != "__init__")
    outside = [p for p in sys.path if Path(p or ".").resolve() != (REPO / "flows").resolve()]
    clashes = []
    for stem in flows:
        saved = sys.path[:]
        sys.path[:] = outside
        try:
            spec = importlib.util.find_spec(stem) if stem not in sys.modules else sys.modules[stem].__spec__
        finally:
            sys.path[:] = saved
        if spec is not None or (REPO / stem).is_dir():
            clashes.append(stem)
    assert not clashes, f"flows/ modules named like importable modules: {clashes}"


@pytest.mark.smoke
def test_editing_shared_model_code_marks_its_stages_changed(small_project, tmp_path):
    from flows.workspace import clone_workspace

    project = clone_workspace(small_project, tmp_path / "p")  # the shared project stays as it is
    assert "up to date" in run(["dvc", "status"], project).stdout
    source = project / "models" / "preprocess.py"
    source.write_text(source.read_text() + "\n# an edit\n")
    changed = set(yaml.safe_load(run(["dvc", "status", "--json"], project).stdout))
    assert {"prepare", "train", "evaluate", "register", "gate"} <= changed, changed
    assert not {"ingest", "validate"} & changed, changed
