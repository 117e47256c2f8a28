"""MLflow wiring: tracking URI (embedded SQLite by default), experiment, run tags for lineage."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

DEFAULT_DB = Path("mlflow.db")
DEFAULT_ARTIFACTS = Path("mlartifacts")
EXTRA_TAGS_ENV = "PIPELINE_RUN_TAGS"  # JSON tags added by an orchestrator (e.g. the Prefect flow run id)


def tracking_uri(project: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` when set (a server), else a SQLite file in the project (default: the
    working directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{((project or Path.cwd()) / DEFAULT_DB).resolve()}"


def setup(experiment: str) -> str:
    """Point MLflow at the store and return the experiment id (artifacts in the project by default)."""
    import mlflow

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)  # note: MLflow also exports it as MLFLOW_TRACKING_URI
    found = mlflow.get_experiment_by_name(experiment)
    if found is not None:
        return found.experiment_id
    return mlflow.create_experiment(experiment, artifact_location=artifact_location(uri))


def artifact_location(uri: str) -> str | None:
    """Where a new experiment keeps its artifacts: a server keeps its own store; the embedded SQLite
    store keeps them beside its database file (the project's mlartifacts/, wherever the run starts)."""
    if not uri.startswith("sqlite:///"):
        return None
    return (Path(uri.removeprefix("sqlite:///")).parent / DEFAULT_ARTIFACTS).resolve().as_uri()


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
        return sha + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def dvc_hash(path: Path | str, lock: Path = Path("dvc.lock")) -> str:
    """The hash DVC recorded for an output in dvc.lock (the data version), or 'unknown'."""
    if not lock.exists():
        return "unknown"
    stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    for stage in stages.values():
        for out in stage.get("outs", []):
            if Path(out["path"]) == Path(path):
                return out.get("md5", "unknown")
    return "unknown"


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def extra_tags() -> dict[str, str]:
    raw = os.environ.get(EXTRA_TAGS_ENV)
    return {str(k): str(v) for k, v in json.loads(raw).items()} if raw else {}
