"""DVC wiring shared by the flows: stage order from dvc.yaml, change checks, `dvc repro` of one stage.

No Prefect here: the flows wrap these functions in tasks."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

VALIDATION_MARK = "failed validation"  # tasks/validate.py exits with this on a rejected batch
RAN, SKIPPED = "ran", "skipped, unchanged"


class StageFailed(RuntimeError):
    """A DVC stage exited non-zero; `validation` is True when it rejected data (not worth retrying)."""

    def __init__(self, stage: str, returncode: int, reason: str):
        self.stage, self.returncode, self.reason = stage, returncode, reason
        self.validation = VALIDATION_MARK in reason
        super().__init__(f"stage {stage!r} failed (exit {returncode}): {reason}")


def stage_order(project: Path) -> list[str]:
    """The stages of `project/dvc.yaml` in DAG order (ties kept in file order), as DVC builds the graph."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        graph = repo.index.graph  # edges point from a stage to the stages it depends on
        position = {stage: i for i, stage in enumerate(graph.nodes)}
        ordered = nx.lexicographical_topological_sort(graph.reverse(copy=True), key=lambda s: position[s])
        return [_stage_id(project, stage) for stage in ordered]


def _stage_id(project: Path, stage) -> str:  # noqa: ANN001 - a dvc Stage
    """How `dvc repro` run in `project` names the stage: `name`, or `sub/dvc.yaml:name` for nested files."""
    dvcfile = Path(stage.dvcfile.path).resolve().relative_to(project.resolve())
    return stage.name if dvcfile == Path("dvc.yaml") else f"{dvcfile}:{stage.name}"


def stage_changed(project: Path, stage: str) -> bool:
    """Would `dvc repro --single-item <stage>` run it now? (deps, params, outs or cmd changed)."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        # an absolute target: DVC resolves relative ones against the process cwd, not the repo
        target = str(project.resolve() / stage) if ":" in stage else f"{project.resolve() / 'dvc.yaml'}:{stage}"
        return bool(repo.status(targets=[target], with_deps=False))


def stage_env(project: Path, extra_tags: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a stage subprocess: this interpreter's venv first, orchestrator tags for MLflow."""
    import json

    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.setdefault("GIT_PYTHON_REFRESH", "quiet")
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # tqdm lines would flood the run log
    if extra_tags:
        tags = json.loads(env.get("PIPELINE_RUN_TAGS") or "{}")
        tags.update(extra_tags)
        env["PIPELINE_RUN_TAGS"] = json.dumps(tags)
    return env


def repro_stage(project: Path, stage: str, env: dict[str, str], on_line: Callable[[str], Any] = print) -> str:
    """`dvc repro --single-item <stage>`, streaming its output; returns RAN or SKIPPED, raises StageFailed."""
    cmd = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
    proc = subprocess.Popen(
        cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    )
    lines: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            lines.append(line)
            on_line(line)
    returncode = proc.wait()
    if returncode != 0:
        raise StageFailed(stage, returncode, _reason(lines))
    return RAN if any(f"Running stage '{stage}'" in ln for ln in lines) else SKIPPED


def _reason(lines: list[str]) -> str:
    """The most telling lines of a failed stage's output (its own error before DVC's wrapper)."""
    marked = [ln for ln in lines if VALIDATION_MARK in ln or "Error" in ln or "error" in ln]
    tail = marked[-3:] if marked else lines[-3:]
    return " | ".join(tail) or "no output"


def locked_hash(project: Path, path: str) -> str:
    """The md5 that dvc.lock records for an output path (a data version), or 'unknown'."""
    lock = project / "dvc.lock"
    if not lock.exists():
        return "unknown"
    for stage in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).values():
        for out in stage.get("outs", []):
            if Path(out["path"]) == Path(path):
                return out.get("md5", "unknown")
    return "unknown"
