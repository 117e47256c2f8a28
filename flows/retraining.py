"""Retraining flow: newly labelled data -> new DVC data version -> training flow -> gate -> service.

A Prefect automation runs its deployment on `model.drift.detected` / `model.performance.degraded`
events (monitoring/alerts.py); the replay calls it directly, once per retrain its policy decides."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger

from flows.ingest import ingest
from flows.training import TrainingParams, training
from monitoring.replay import retrain_split
from tasks import paths
from tasks.config import load_params
from tasks.registry import notify_service


def newest_time(project: Path, time_column: str) -> pd.Timestamp:
    """Latest row time in the validated data (the labelled horizon when none is given)."""
    latest = None
    for file in sorted((project / paths.VALIDATED).glob("*.parquet")):
        t = pd.read_parquet(file, columns=[time_column])[time_column].max()
        latest = t if latest is None or t > latest else latest
    if latest is None:
        raise FileNotFoundError(f"no validated data in {project / paths.VALIDATED}")
    return pd.Timestamp(latest)


@flow(name="retraining", log_prints=True)
def retraining(
    labelled_path: str | None = None,
    horizon: str | None = None,
    training_months: int | None = 4,
    valid_days: int = 7,
    test_days: int = 7,
    first_day: str = "2013-01-01",
    overrides: dict[str, Any] | None = None,
    service_url: str | None = None,
    project_dir: str | None = None,
) -> dict[str, Any]:
    """Ingest `labelled_path` (if given) as a new data version, retrain on a sliding (`training_months`)
    or expanding (None) window ending at the labelled horizon, let the gate decide, tell the service."""
    logger = get_run_logger()
    project = Path(project_dir or os.getcwd()).resolve()
    params = load_params(project / paths.PARAMS)
    ingested = ingest(path=labelled_path, project_dir=str(project)) if labelled_path else None
    end = pd.Timestamp(horizon) if horizon else newest_time(project, params.data.time_column) + pd.Timedelta(hours=1)
    split = retrain_split(end, test_days, valid_days, training_months, first_day)
    logger.info("retraining on %s (labelled horizon %s)", split, end)
    summary = training(
        params=TrainingParams(
            train_window=tuple(split["train"]),
            valid_window=tuple(split["valid"]),
            test_window=tuple(split["test"]),
            overrides=dict(overrides or {}),
        ),
        project_dir=str(project),
    )
    gate = summary.get("gate") or {}
    promoted = bool(gate.get("promoted"))
    notified = notify_service(service_url) if promoted else "not promoted: service unchanged"
    logger.info("gate: %s; %s", gate.get("reason", gate), notified)
    return {
        "split": split,
        "ingested": ingested,
        "training": summary,
        "gate": gate,
        "promoted": promoted,
        "notified": notified,
    }


def main(argv: list[str] | None = None) -> None:
    import argparse

    from flows.common import local_prefect

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--labelled", help="CSV/Parquet of newly labelled raw rows to ingest first")
    ap.add_argument("--horizon", help="latest labelled time (default: newest validated row)")
    ap.add_argument("--project-dir", default=".", type=Path)
    args = ap.parse_args(argv)
    project = args.project_dir.resolve()
    with local_prefect(project):
        out = retraining(labelled_path=args.labelled, horizon=args.horizon, project_dir=str(project))
    print(json.dumps({k: out[k] for k in ("split", "promoted", "notified")}, indent=1, default=str))


if __name__ == "__main__":
    main()
