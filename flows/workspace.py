"""Throw-away copies of the project (git + DVC repo with its own data, outputs and params).

Used by the replay (one workspace per retraining policy), the benchmarks and the tests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tasks.config import set_dotted

# what a workspace needs of the project: code, stage graph and config; generated folders stay behind
PROJECT_FILES = ("tasks", "models", "flows", "serving", "monitoring", "dvc.yaml", "params.yaml", "pyproject.toml")
_GIT = ["git", "-c", "user.email=pipeline@localhost", "-c", "user.name=pipeline"]


def set_params(project: Path, overrides: dict[str, Any]) -> None:
    """Write dotted-key overrides into a project's params.yaml (as `dvc exp run -S` would)."""
    path = project / "params.yaml"
    raw = yaml.safe_load(path.read_text())
    for key, value in overrides.items():
        set_dotted(raw, key, value)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


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
    return dest


def clone_workspace(source: Path, dest: Path, overrides: dict[str, Any] | None = None) -> Path:
    """A copy of a workspace with everything in it (data, DVC cache, lock, outputs)."""
    shutil.copytree(source, dest, symlinks=True)
    if overrides:
        set_params(dest, overrides)
    return dest
