"""Copies of the project: throw-away ones (git + DVC repo with its own data, outputs and params) for the
replay, the benchmarks and the tests; and run workspaces, in which a flow run with overrides of
params.yaml runs the pipeline without touching the project's params.yaml, dvc.lock or outputs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from flightloop import paths
from flightloop.params_file import write_params

# what a workspace needs of the project: code, stage graph and config; generated folders stay behind
PROJECT_FILES = (
    "flightloop",
    "tasks",
    "models",
    "flows",
    "serving",
    "monitoring",
    "dvc.yaml",
    "params.yaml",
    "pyproject.toml",
)
RUNS = Path(".runs")  # run workspaces, inside the project (ignored by git and DVC)
_GIT = ["git", "-c", "user.email=pipeline@localhost", "-c", "user.name=pipeline"]


def set_params(project: Path, overrides: dict[str, Any]) -> None:
    """Write dotted-key overrides into a project's params.yaml, keeping its comments and layout."""
    write_params(project / "params.yaml", overrides)


def _run(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def make_workspace(
    source: Path, dest: Path, overrides: dict[str, Any] | None = None, env: dict[str, str] | None = None
) -> Path:
    """A fresh git + DVC repo at `dest` with `source`'s code and params (plus overrides)."""
    dest.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    (dest / "data" / "incoming").mkdir(parents=True)
    (dest / "data" / "incoming" / "README.md").write_text("New batch files land here.\n")
    shutil.copy2(source / ".gitignore", dest / ".gitignore")
    if overrides:
        set_params(dest, overrides)
    env = env or dict(os.environ)
    _run(["git", "init", "-q"], dest, env)
    _run([*_GIT, "add", "-A"], dest, env)
    _run([*_GIT, "commit", "-qm", "workspace"], dest, env)
    _run(["dvc", "init", "-q"], dest, env)
    _run(["dvc", "config", "core.analytics", "false"], dest, env)
    shutil.copy2(source / ".dvcignore", dest / ".dvcignore")  # what DVC leaves out of hashes (__pycache__)
    return dest


def clone_workspace(source: Path, dest: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A copy of a workspace with everything in it (data, DVC cache, lock, outputs)."""
    shutil.copytree(source, dest, symlinks=True)
    if overrides:
        set_params(dest, overrides)
    return dest


def _dvc_outputs(project: Path) -> list[str]:
    """Every output path dvc.lock records (data versions, models, reports)."""
    lock = project / "dvc.lock"
    if not lock.exists():
        return []
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    return sorted({out["path"] for stage in stages.values() for out in stage.get("outs", [])})


def run_workspace(project: Path, name: str, overrides: dict[str, Any]) -> Path:
    """`<project>/.runs/<name>`: the project's code, stage graph, dvc.lock and outputs (copies), its
    params.yaml with `overrides` written in (comments kept), and a DVC repo that shares the project's
    cache (so unchanged stages are skipped and new outputs land in the one cache). Runs here change
    nothing of the project but the MLflow store and registry they log to."""
    dest = project / RUNS / name
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for item in (*PROJECT_FILES, "dvc.lock", *_dvc_outputs(project), str(paths.INCOMING)):
        src = project / item
        if src.is_dir():
            shutil.copytree(src, dest / item, ignore=shutil.ignore_patterns("__pycache__"))
        elif src.exists():
            (dest / item).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / item)
    set_params(dest, overrides)
    env = dict(os.environ)
    _run(["dvc", "init", "-q", "--no-scm"], dest, env)
    _run(["dvc", "config", "core.analytics", "false"], dest, env)
    _run(["dvc", "config", "cache.dir", str((project / ".dvc" / "cache").resolve())], dest, env)
    shutil.copy2(project / ".dvcignore", dest / ".dvcignore")
    return dest
