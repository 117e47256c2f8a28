"""The IO around a window's summary: report files, quarantine, MLflow run, and the policy state file."""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd

from flightloop import paths
from monitoring.drift import WindowSummary
from monitoring.policy import Decision, PolicyState

MONITORING_REPORTS = paths.REPORTS / "monitoring"
STATE = MONITORING_REPORTS / "state.json"
STATE_DB_ENV = "FLIGHTLOOP_STATE_DB"  # a PostgreSQL URL: the policy state shared by every host (make stack)
QUARANTINE = paths.QUARANTINE / "monitoring"


def _safe(window_id: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in window_id)


def save_window(
    summary: WindowSummary, decision: Decision | None, snapshot: Any | None, out: Path = MONITORING_REPORTS
) -> dict[str, Path]:
    """`<out>/<window_id>.json` (summary + decision) and, given a snapshot, the Evidently `.html`."""
    out.mkdir(parents=True, exist_ok=True)
    stem = _safe(summary.window_id)
    written = {"json": out / f"{stem}.json"}
    body = {"summary": summary.to_json(), "decision": decision.model_dump(mode="json") if decision else None}
    written["json"].write_text(json.dumps(body, indent=1))
    if snapshot is not None:
        written["html"] = out / f"{stem}.html"
        snapshot.save_html(str(written["html"]))
    return written


def quarantine_window(
    frame: pd.DataFrame, summary: WindowSummary, decision: Decision, folder: Path = QUARANTINE
) -> Path:
    """Keep a bad-quality window aside (rows + why), never trained on, nothing lost."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = _safe(summary.window_id)
    frame.to_parquet(folder / f"{stem}.parquet", index=False)
    why = {"window_id": summary.window_id, "problems": decision.quality_problems}
    why["quality"] = summary.quality.model_dump()
    (folder / f"{stem}.json").write_text(json.dumps(why, indent=1))
    return folder / f"{stem}.parquet"


def log_to_mlflow(summary: WindowSummary, decision: Decision | None, files: dict[str, Path], experiment: str) -> str:
    """One MLflow run per window, tagged with the model it monitors; returns the run id."""
    import mlflow

    from flightloop import tracking

    tracking.setup(experiment)
    tags = {
        "monitoring": "true",
        "window_id": summary.window_id,
        "window_start": summary.start,
        "window_end": summary.end,
        "model_name": summary.model_name or "unknown",
        "model_version": str(summary.model_version) if summary.model_version is not None else "unknown",
        **tracking.extra_tags(),
    }
    if decision is not None:
        tags.update(decision=decision.kind, retrain=str(decision.retrain).lower())
    with mlflow.start_run(run_name=f"monitor-{summary.window_id}", tags=tags) as run:
        figures = {k.replace("drift.", "drift_score."): v for k, v in summary.key_figures().items()}
        mlflow.log_metrics({k: float(v) for k, v in figures.items() if v == v})  # NaN-free
        for path in files.values():
            mlflow.log_artifact(str(path), artifact_path="monitoring")
    return run.info.run_id


class StateStore:
    """The policy state as a JSON file, changed only under an exclusive lock and replaced atomically, so
    the monitoring flow and a retraining flow finishing at the same time never lose each other's update."""

    def __init__(self, path: Path | str = STATE):
        self.path = Path(path)

    def read(self) -> PolicyState:
        return PolicyState.model_validate_json(self.path.read_text()) if self.path.exists() else PolicyState()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def update(self, change: Callable[[PolicyState], PolicyState]) -> PolicyState:
        """Read, change and write the state as one step; returns the new state."""
        with self._locked():
            new = change(self.read())
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".state-")
            with os.fdopen(fd, "w") as fh:
                fh.write(new.model_dump_json(indent=1))
            os.replace(tmp, self.path)
            return new


class PgStateStore:
    """The policy state of one model as a row in PostgreSQL, for hosts that share no files (`make stack`):
    an update reads the row FOR UPDATE, changes it and writes it in one transaction, so two hosts never
    lose each other's update."""

    TABLE = "flightloop_policy_state"

    def __init__(self, url: str, model_name: str):
        self.url, self.model_name = url, model_name

    def _connect(self):  # noqa: ANN202 - a psycopg connection
        import psycopg

        conn = psycopg.connect(self.url, connect_timeout=10)
        conn.execute(f"CREATE TABLE IF NOT EXISTS {self.TABLE} (model text PRIMARY KEY, state jsonb NOT NULL)")
        conn.commit()
        return conn

    def read(self) -> PolicyState:
        with self._connect() as conn:
            row = conn.execute(f"SELECT state::text FROM {self.TABLE} WHERE model = %s", (self.model_name,)).fetchone()
        return PolicyState.model_validate_json(row[0]) if row else PolicyState()

    def update(self, change: Callable[[PolicyState], PolicyState]) -> PolicyState:
        with self._connect() as conn, conn.transaction():
            empty = PolicyState().model_dump_json()
            conn.execute(  # the row exists before it is locked: two first updates cannot both insert
                f"INSERT INTO {self.TABLE} (model, state) VALUES (%s, %s) ON CONFLICT (model) DO NOTHING",
                (self.model_name, empty),
            )
            row = conn.execute(
                f"SELECT state::text FROM {self.TABLE} WHERE model = %s FOR UPDATE", (self.model_name,)
            ).fetchone()
            new = change(PolicyState.model_validate_json(row[0]))
            conn.execute(
                f"UPDATE {self.TABLE} SET state = %s WHERE model = %s", (new.model_dump_json(), self.model_name)
            )
            return new


def state_store(project: Path, model_name: str) -> StateStore | PgStateStore:
    """The project's policy state: the PostgreSQL row named by FLIGHTLOOP_STATE_DB when set (hosts that
    share no files), else the JSON file in the project."""
    url = os.environ.get(STATE_DB_ENV)
    return PgStateStore(url, model_name) if url else StateStore(project / STATE)
