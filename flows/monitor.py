"""The `monitoring` flow: what the service logged since the last run (or one batch file) -> drift,
quality, performance -> the retraining policy -> events, notifications, reports.

Wiring only: the window's decision is monitoring/loop.py's `decide_window`, the step the replay runs too.
(This file is not called monitoring.py: a deployment's runner loads flows by file path, and a
`flows/monitoring.py` would shadow the `monitoring` package for every flow loaded that way.)"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from flightloop import paths, registry
from flightloop.config import load_params
from flows.labels import SourceLabels
from monitoring import alerts, report
from monitoring.drift import drift_report
from monitoring.loop import decide_window, load_champion
from monitoring.policy import data_time
from serving.predlog import STORE_ENV, read_new
from tasks.ingest import read_table


def run_name() -> str:
    """`monitor-<batch file>`, `monitor-<window end>` or `monitor-latest`."""
    from prefect.runtime import flow_run

    given = flow_run.parameters
    if given.get("batch"):
        return f"monitor-{Path(given['batch']).stem}"
    end = given.get("window_end")
    return f"monitor-{pd.Timestamp(end):%Y-%m-%d}" if end else "monitor-latest"


def prediction_store(project: Path, params) -> Path:  # noqa: ANN001 - Params
    """The prediction store monitoring reads: FLIGHTLOOP_PREDICTION_STORE (shared by every replica and
    host), else the project's serving.prediction_dir; each replica's subfolder is read on its own."""
    return Path(os.environ.get(STORE_ENV) or project / params.serving.prediction_dir)


@flow(name="monitoring", flow_run_name=run_name)
def monitoring(
    batch: str | None = None,
    window_start: datetime | None = None,
    window_end: datetime | None = None,
    html: bool = True,
    project_dir: str | None = None,
) -> dict[str, Any]:
    """Monitor what the service logged since the last run (or one batch file) and apply the retraining
    policy; a decision to retrain is emitted as an event that the "retrain on drift" automation acts on.

    Args:
        batch: a CSV or Parquet file of feature rows to monitor instead of the prediction log
        window_start: the window's first moment in data time (default: where the last window ended)
        window_end: the window's end in data time, the moment it is judged at: labels count once their
            delay has passed by then (default: the newest row's time)
        html: also write the Evidently HTML report
        project_dir: the project checkout (default: the runner's working directory)
    """
    logger = get_run_logger()
    project = Path(project_dir or os.getcwd()).resolve()
    params = load_params(project / paths.PARAMS)
    data, mcfg, name = params.data, params.monitoring, params.register_.model_name
    store = report.state_store(project, name)
    state = store.read()
    labels = SourceLabels(params)
    if batch:
        path = Path(batch) if Path(batch).is_absolute() else project / batch
        current = read_table(path)
        times = pd.to_datetime(current[data.time_column])
        own = data.label in current.columns  # a batch that carries its labels is its own label feed
        label_rows = current.assign(**{data.time_column: times}) if own else labels.features
        newest, skipped = None, []
    else:
        marks = dict(state.log_watermarks)
        if not marks and state.log_watermark is not None:  # a state from before per-replica watermarks
            marks = {"": state.log_watermark}
        current, new_marks = read_new(prediction_store(project, params), marks)
        unread = current.attrs.get("skipped") or {}  # unreadable parts of the store, left out with a report
        skipped = [*unread.get("corrupt_parts", []), *unread.get("journal_records", [])]
        if skipped:
            logger.warning("monitoring: %d unreadable prediction-log part(s) skipped: %s", len(skipped), skipped[:5])
        if current.empty:
            logger.info("monitoring: nothing new since %s", state.log_watermark)
            return {"skipped": "no new rows", "since": str(state.log_watermark), "skipped_parts": skipped}
        times, label_rows = current["ts"], labels.features
        newest = times.max()
    start = window_start or state.last_window_end or times.min()
    end = window_end or times.max()

    version = registry.alias_version(registry.client(), name)
    if version is None:
        raise LookupError(f"models:/{name}@champion does not exist: train and register a model first")
    champion = load_champion(name, version, params)
    if mcfg.score_column not in current.columns:
        current = current.assign(**{mcfg.score_column: champion.scorer.predict_proba(current)})
    outcome = decide_window(
        current,
        champion,
        params,
        store,
        start=data_time(start),
        end=data_time(end),
        labels=label_rows,
        quarantine=project / report.QUARANTINE,
        notify_urls=alerts.notify_urls(mcfg.notify_urls),
    )
    if newest is not None:
        marked = {"log_watermark": data_time(newest), "log_watermarks": new_marks}
        store.update(lambda s: s.model_copy(update=marked))
    summary, decision = outcome.summary, outcome.decision
    snapshot = task(drift_report, name="evidently-report")(current, champion.reference, mcfg) if html else None
    files = report.save_window(summary, decision, snapshot, project / report.MONITORING_REPORTS)
    if outcome.quarantined:
        files["quarantine"] = outcome.quarantined
    run_id = report.log_to_mlflow(summary, decision, files, f"{params.register_.experiment}-monitoring")
    figures = summary.key_figures()
    per_replica = current["replica"].value_counts().to_dict() if "replica" in current.columns else {}
    create_table_artifact(
        key="monitoring-window",
        table=[{"figure": k, "value": round(v, 4)} for k, v in figures.items() if not k.startswith("drift.")]
        + [{"figure": "decision", "value": f"{decision.kind}: retrain={decision.retrain}"}]
        + [{"figure": "unreadable log parts skipped", "value": len(skipped)}]
        + [{"figure": f"rows from replica {r or '(one service)'}", "value": int(n)} for r, n in per_replica.items()],
        description=f"Monitoring of {name} v{version}, window {summary.window_id}: " + "; ".join(decision.reasons),
    )
    return {
        "summary": summary.to_json(),
        "decision": decision.model_dump(mode="json"),
        "files": {k: str(v) for k, v in files.items()},
        "events": outcome.events,
        "mlflow_run_id": run_id,
        "skipped_parts": [str(x) for x in skipped],
    }
