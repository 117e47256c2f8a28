"""The loop's two steps, each written once: decide a window, and run a retrain from a decision.

The `monitoring` flow, the `retraining` flow and the replay call exactly these. What differs in a
simulation is injected: the clock (the window's end, in data time), where labels come from, and how the
service is told about a new champion. Nothing here imports Prefect or a pipeline stage."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd

from flightloop import paths, tracking
from flightloop.config import Params, PolicyCfg
from monitoring import alerts
from monitoring.drift import Reference, WindowSummary, build_reference, summarize_window
from monitoring.estimate import Calibrator, fit_calibrator
from monitoring.policy import (
    Decision,
    PolicyState,
    RetrainRequest,
    advance,
    claim,
    data_time,
    decide,
    finish,
    retrain_request,
)
from monitoring.report import StateStore, quarantine_window

log = logging.getLogger("monitoring.loop")


@dataclass(frozen=True)
class Champion:
    """The live model as monitoring sees it: its version, scorer, test metrics, drift reference and the
    calibrator of its scores (for label-free estimates; None for a version logged without test rows)."""

    name: str
    version: int
    scorer: Any  # models.packaged.Scorer
    test_metrics: dict[str, float]
    reference: Reference
    calibrator: Calibrator | None = None


_champions: dict[tuple, Champion] = {}


def load_champion(name: str, version: int, params: Params) -> Champion:
    """A registered version as monitoring needs it: scorer, test metrics, the drift reference built
    from the rows it was trained on (logged with it) scored by itself, and a calibrator of its scores
    fitted on its labelled test rows (logged with it; the rows its test metrics come from, never trained
    on). Built once per version and config."""
    from models.packaged import load_for_monitoring

    key = (tracking.tracking_uri(), name, version, params.monitoring.model_dump_json(), params.data.model_dump_json())
    if key not in _champions:
        with tempfile.TemporaryDirectory() as tmp:
            scorer, rows, labelled = load_for_monitoring(name, version, tmp)
        reference = build_reference(rows, params.data, params.monitoring, scorer.predict_proba(rows))
        calibrator = None
        if labelled is not None:
            labelled = labelled.dropna(subset=[params.data.label])
            try:
                calibrator = fit_calibrator(scorer.predict_proba(labelled), labelled[params.data.label].to_numpy())
            except ValueError as exc:  # e.g. test rows of one class: monitoring goes on without estimates
                log.warning("models:/%s/%s: no performance estimates: %s", name, version, exc)
        metrics = {
            k: float(v) for k, v in (scorer.meta.get("test_metrics") or {}).items() if isinstance(v, int | float)
        }
        _champions[key] = Champion(name, version, scorer, metrics, reference, calibrator)
    return _champions[key]


@dataclass(frozen=True)
class WindowOutcome:
    summary: WindowSummary
    decision: Decision
    state: PolicyState
    events: list[str]
    quarantined: Path | None


def decide_window(
    current: pd.DataFrame,
    champion: Champion,
    params: Params,
    store: StateStore,
    *,
    start: datetime | pd.Timestamp,
    end: datetime | pd.Timestamp,
    labels: pd.DataFrame | None,
    policy: PolicyCfg | None = None,
    quarantine: Path | None = None,
    emit: bool = True,
    notify_urls: tuple[str, ...] | list[str] = (),
) -> WindowOutcome:
    """One window of served rows (with their scores) -> summary (drift, quality, performance once labels
    have arrived by `end`) -> policy decision -> state -> events and notifications.

    `end` is the clock: data time at which the window is judged. `labels` are labelled feature rows; a
    label counts only once its delay has passed by `end`."""
    pcfg = policy or params.policy
    window_id = f"{pd.Timestamp(start):%Y-%m-%d}"
    summary = summarize_window(
        current,
        champion.reference,
        params.data,
        params.monitoring,
        window_id=window_id,
        start=start,
        end=end,
        labels=labels,
        label_delay_days=pcfg.label_delay_days,
        champion_metrics=champion.test_metrics,
        model_name=champion.name,
        model_version=champion.version,
        calibrator=champion.calibrator,
    )
    now = data_time(end)
    first_day = f"{params.data.start}-01"
    taken: dict[str, Decision] = {}

    def step(state: PolicyState) -> PolicyState:
        taken["decision"] = decide(summary, state, pcfg, now, first_day)
        return advance(state, summary, taken["decision"], now, start=data_time(start))

    state = store.update(step)
    decision = taken["decision"]
    kept = quarantine_window(current, summary, decision, quarantine) if decision.quarantine and quarantine else None
    emitted = alerts.emit_alerts(summary, decision, champion.name) if emit else []
    alerts.notify(summary, decision, champion.name, list(notify_urls))
    return WindowOutcome(summary, decision, state, [e.event for e in emitted if e is not None], kept)


# ---- running a retrain from a decision ----------------------------------------------------------------


def newest_time(project: Path, time_column: str) -> pd.Timestamp | None:
    """Latest row time in the project's validated data (what is already trained on)."""
    latest = None
    for file in sorted((project / paths.VALIDATED).glob("*.parquet")):
        t = pd.read_parquet(file, columns=[time_column])[time_column].max()
        latest = t if latest is None or t > latest else latest
    return None if latest is None else pd.Timestamp(latest)


def new_labelled_rows(
    rows: pd.DataFrame, time_column: str, after: pd.Timestamp | None, horizon: datetime, quarantined
) -> pd.DataFrame:
    """Rows after what the data holds and before the horizon, minus every window kept aside for its quality."""
    t = pd.to_datetime(rows[time_column])
    keep = t < pd.Timestamp(horizon)
    if after is not None:
        keep &= t > after
    for lo, hi in quarantined:
        keep &= (t < pd.Timestamp(lo)) | (t >= pd.Timestamp(hi))
    return rows[keep].reset_index(drop=True)


def manual_request(params: Params, now: datetime, model_version: int | None) -> RetrainRequest:
    """A retrain asked for by hand (no monitoring decision), as if decided at data time `now`."""
    return retrain_request(
        params.policy,
        model_name=params.register_.model_name,
        model_version=model_version,
        window_id=f"{pd.Timestamp(now):%Y-%m-%d}",
        now=data_time(now),
        kind="manual",
        reasons=["retrain asked for by hand"],
        first_day=f"{params.data.start}-01",
    )


def run_retrain(
    request: RetrainRequest,
    params: Params,
    project: Path,
    store: StateStore,
    *,
    labelled: Callable[[datetime], pd.DataFrame],
    ingest: Callable[[Path], Any],
    train: Callable[[dict[str, tuple[str, str]]], dict[str, Any]],
    notify: Callable[[], str],
    flow_run: str | None = None,
    emit: bool = True,
) -> dict[str, Any]:
    """Run one retrain for a decision, once: new labelled rows -> a new data version (`ingest`) ->
    training on the decision's split (`train`: the dvc.yaml stages up to the gate) -> `notify` the service
    when promoted. The state records it as running, then completed (the cooldown starts) or failed with its
    reason (the backoff starts). The same request a second time does nothing and says why.

    `labelled(horizon)` returns raw rows whose labels are known by `horizon` (the label source); the
    outcome is also announced as a `model.retrain.completed` / `.failed` event (`emit`)."""
    taken: dict[str, str | None] = {}

    def start(state: PolicyState) -> PolicyState:
        state, taken["skip"] = claim(state, request, flow_run)
        return state

    state = store.update(start)
    if taken["skip"]:
        log.info("retrain skipped: %s", taken["skip"])
        return {"request": request.model_dump(mode="json"), "skipped": taken["skip"], "promoted": False}
    try:
        rows = new_labelled_rows(
            labelled(request.horizon),
            params.data.time_column,
            newest_time(project, params.data.time_column),
            request.horizon,
            state.quarantined,
        )
        ingested = None
        if len(rows):
            with tempfile.TemporaryDirectory() as tmp:
                batch = Path(tmp) / f"labelled-{pd.Timestamp(request.horizon):%Y-%m-%dT%H%M}.parquet"
                rows.to_parquet(batch, index=False)
                ingested = ingest(batch)
        summary = train(request.split)
        gate = summary.get("gate") or {}
        promoted = bool(gate.get("promoted"))
        notified = notify() if promoted else "not promoted: service unchanged"
    except Exception as exc:
        reason = f"{type(exc).__name__}: {exc}"[:500]
        store.update(lambda s: finish(s, request, False, reason, flow_run))
        if emit:
            alerts.emit_retrain_outcome(request, False, reason)
        raise
    why = f"gate: {gate.get('reason', 'no gate decision')}"[:500]
    store.update(lambda s: finish(s, request, True, why, flow_run))
    if emit:
        alerts.emit_retrain_outcome(request, True, why)
    return {
        "request": request.model_dump(mode="json"),
        "ingested": ingested,
        "new_rows": len(rows),
        "training": summary,
        "gate": gate,
        "promoted": promoted,
        "notified": notified,
    }
