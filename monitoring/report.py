"""The IO around a window's summary: report files, quarantine, MLflow run, the policy state file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from monitoring.drift import WindowSummary
from monitoring.policy import Decision, PolicyState
from tasks import paths

MONITORING_REPORTS = paths.REPORTS / "monitoring"
STATE = MONITORING_REPORTS / "state.json"
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

    from tasks import tracking

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


def load_state(path: Path = STATE) -> PolicyState:
    return PolicyState.model_validate_json(path.read_text()) if path.exists() else PolicyState()


def save_state(state: PolicyState, path: Path = STATE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(state.model_dump_json(indent=1))
