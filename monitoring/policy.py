"""The retraining policy: a pure decision from one window's summary, the policy state and its config,
and the state's moves (a window seen, a retrain claimed, completed or failed)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from flightloop.config import PolicyCfg, QualityCfg
from monitoring.drift import WindowSummary

DRIFT_EVENT = "model.drift.detected"
PERFORMANCE_EVENT = "model.performance.degraded"
SCHEDULE_EVENT = "model.retrain.scheduled"
QUALITY_EVENT = "data.quality.alert"
RETRAIN_EVENTS = (DRIFT_EVENT, PERFORMANCE_EVENT, SCHEDULE_EVENT)
COMPLETED_EVENT, FAILED_EVENT = "model.retrain.completed", "model.retrain.failed"  # what a retrain reports

Kind = Literal[
    "data_drift", "score_drift", "performance", "estimated_performance", "schedule", "data_quality", "manual", "none"
]
EVENT_OF_KIND = {
    "data_drift": DRIFT_EVENT,
    "score_drift": DRIFT_EVENT,
    "performance": PERFORMANCE_EVENT,
    "estimated_performance": PERFORMANCE_EVENT,  # the same automation retrains on it
    "schedule": SCHEDULE_EVENT,
    "data_quality": QUALITY_EVENT,
}
KEEP_RETRAINS = 50  # retrain records kept in the state (the idempotency window)


def data_time(value: datetime | pd.Timestamp | str) -> datetime:
    """A timestamp the policy can compare: aware ones in UTC without the zone, naive ones as they are."""
    ts = pd.Timestamp(value)
    return (ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts).to_pydatetime()


def retrain_split(
    horizon: pd.Timestamp, gate_days: int, valid_days: int, train_months: int | None, first_day: str
) -> dict[str, tuple[str, str]]:
    """Split windows (days, inclusive) for a retrain whose newest labelled row is before `horizon`:
    test = the last `gate_days` labelled days (the gate compares the models there), valid = the
    `valid_days` before it, train = the `train_months` before that (sliding) or all since `first_day`."""
    last = (pd.Timestamp(horizon) - pd.Timedelta(days=1)).normalize()  # last complete labelled day
    test_lo = last - pd.Timedelta(days=gate_days - 1)
    valid_hi = test_lo - pd.Timedelta(days=1)
    valid_lo = valid_hi - pd.Timedelta(days=valid_days - 1)
    train_hi = valid_lo - pd.Timedelta(days=1)
    if train_months is None:
        train_lo = pd.Timestamp(first_day)
    else:
        train_lo = max(pd.Timestamp(first_day), train_hi - pd.DateOffset(months=train_months) + pd.Timedelta(days=1))
    if train_lo > train_hi:
        raise ValueError(f"no training days left before {valid_lo:%Y-%m-%d}")
    fmt = "%Y-%m-%d"
    return {
        "train": (train_lo.strftime(fmt), train_hi.strftime(fmt)),
        "valid": (valid_lo.strftime(fmt), valid_hi.strftime(fmt)),
        "test": (test_lo.strftime(fmt), last.strftime(fmt)),
    }


class RetrainRequest(BaseModel):
    """A decision to retrain, as the event carries it and the retraining flow takes it as its parameter."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_name: str = Field(description="registered model to retrain")
    model_version: int | None = Field(None, description="the champion when the decision was taken")
    window_id: str = Field(description="the monitored window (its first day)")
    window_end: datetime = Field(description="data time of the decision (the window's end)")
    horizon: datetime = Field(description="labels of rows before this time had arrived: they are trained on")
    kind: Kind = Field(description="the trigger that fired")
    reasons: list[str] = Field(default_factory=list)
    split: dict[Literal["train", "valid", "test"], tuple[str, str]] = Field(
        description="inclusive days: train, valid, and the gate's test window"
    )

    @property
    def key(self) -> str:
        """The idempotency key: one retrain per model and decision time."""
        return f"{self.model_name}@{self.window_end:%Y-%m-%dT%H:%M:%S}"


class RetrainRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    key: str
    window_end: datetime  # data time of the decision
    status: Literal["requested", "running", "completed", "failed"]
    reason: str = ""
    flow_run: str | None = None
    at: datetime | None = None  # wall-clock time of the last change


class PolicyState(BaseModel):
    """What the loop remembers between windows (reports/monitoring/state.json of the project)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    last_retrain_at: datetime | None = None  # data time of the decision whose retrain completed last
    first_window_end: datetime | None = None
    last_window_end: datetime | None = None
    log_watermark: datetime | None = None  # arrival time of the newest prediction-log row monitored
    log_watermarks: dict[str, datetime] = Field(default_factory=dict)  # the same per replica ("": one service)
    windows_since_retrain: int = 0
    labels_since_retrain: int = 0
    pending: RetrainRecord | None = None  # requested or running, not finished
    last_failure: RetrainRecord | None = None
    retrains: dict[str, RetrainRecord] = Field(default_factory=dict)  # by request key, newest last
    quarantined: list[tuple[datetime, datetime]] = Field(default_factory=list)  # data-time windows kept aside


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    retrain: bool
    kind: Kind  # the first trigger that fired (or data_quality / none)
    reasons: list[str]
    fired: list[str]  # every trigger whose threshold was crossed, retrain or not
    quality_problems: list[str]
    request: RetrainRequest | None = None  # what to retrain on, when retraining

    @property
    def quarantine(self) -> bool:
        return bool(self.quality_problems)

    @property
    def events(self) -> list[str]:
        """Prefect events to emit: a quality alert always; a retrain trigger only when the policy retrains
        (the automation listening for them runs the retraining deployment)."""
        out = [QUALITY_EVENT] if self.quality_problems else []
        if self.retrain:
            out.append(EVENT_OF_KIND[self.kind])
        return out


def quality_problems(summary: WindowSummary, cfg: QualityCfg) -> list[str]:
    q, out = summary.quality, []
    for col, rise in sorted(q.missing_increase.items()):
        if rise > cfg.max_missing_increase:
            out.append(f"{col}: missing share {q.missing_share[col]:.0%} (+{rise:.0%} over reference)")
    for col, share in sorted(q.unseen_share.items()):
        if share > cfg.max_unseen_share:
            out.append(f"{col}: {share:.0%} of rows hold unseen categories {q.unseen_values[col][:5]}")
    for col, share in sorted(q.out_of_range_share.items()):
        if share > cfg.max_out_of_range_share:
            out.append(f"{col}: {share:.0%} of rows outside the reference range")
    return out


def _fired(summary: WindowSummary, state: PolicyState, cfg: PolicyCfg, now: datetime) -> list[tuple[str, str]]:
    fired = []
    for kind in cfg.triggers:
        if kind == "data_drift" and summary.drift.checked and summary.drift.share >= cfg.drift_share:
            fired.append(
                (
                    kind,
                    f"data drift in {summary.drift.share:.0%} of features (>= {cfg.drift_share:.0%}): "
                    f"{', '.join(summary.drift.drifted)}",
                )
            )
        elif kind == "score_drift" and summary.score_drift and summary.score_drift.detected:
            sd = summary.score_drift
            fired.append((kind, f"score drift {sd.score:.3f} > {sd.threshold} ({sd.method})"))
        elif kind == "performance" and summary.performance:
            p = summary.performance
            if p.auc_drop is not None and p.auc_drop > cfg.auc_drop:
                fired.append((kind, f"ROC-AUC {p.roc_auc:.3f} is {p.auc_drop:.3f} below the champion's test AUC"))
            elif p.brier_rise is not None and p.brier_rise > cfg.brier_rise:
                fired.append((kind, f"Brier {p.brier:.3f} is {p.brier_rise:.3f} above the champion's test Brier"))
        elif kind == "estimated_performance" and summary.estimated:
            # label-free: fires on the window's scores alone; the retrain it asks for still waits for
            # policy.min_new_labels labelled rows (in `decide`), as it has to train on something
            e = summary.estimated
            if e.auc_drop is not None and e.auc_drop > cfg.auc_drop:
                fired.append(
                    (kind, f"estimated ROC-AUC {e.roc_auc:.3f} is {e.auc_drop:.3f} below the champion's test AUC")
                )
            elif e.brier_rise is not None and e.brier_rise > cfg.brier_rise:
                fired.append(
                    (kind, f"estimated Brier {e.brier:.3f} is {e.brier_rise:.3f} above the champion's test Brier")
                )
        elif kind == "schedule":
            since = state.last_retrain_at or state.first_window_end
            if cfg.every_windows and state.windows_since_retrain + 1 >= cfg.every_windows:
                fired.append((kind, f"schedule: {state.windows_since_retrain + 1} windows since the last retrain"))
            elif cfg.every_days and since is not None and now - since >= timedelta(days=cfg.every_days):
                fired.append((kind, f"schedule: {(now - since).days} days since the last retrain"))
    return fired


def held_by(state: PolicyState, cfg: PolicyCfg, now: datetime) -> str | None:
    """Why a fired trigger must wait: a retrain still pending, the cooldown after a completed one, the
    backoff after a failed one. A pending retrain older than the backoff counts as lost."""
    retry = timedelta(days=cfg.retry_after_days)
    if state.pending is not None and now - state.pending.window_end < retry:
        return f"a retrain requested at {state.pending.window_end:%Y-%m-%d %H:%M} is {state.pending.status}"
    if state.last_retrain_at is not None and now - state.last_retrain_at < timedelta(days=cfg.cooldown_days):
        return f"cooldown: last retrain {now - state.last_retrain_at} ago (< {cfg.cooldown_days:g} days)"
    failed = state.last_failure
    if failed is not None and now - failed.window_end < retry:
        when = f"{failed.window_end:%Y-%m-%d %H:%M}"
        return f"backoff: the retrain of {when} failed ({failed.reason[:200]}); retried after {cfg.retry_after_days:g}d"
    return None


def decide(summary: WindowSummary, state: PolicyState, cfg: PolicyCfg, now: datetime, first_day: str) -> Decision:
    """Retrain or not after one window; `now` is data time (the window's end), `first_day` the first day
    of the data (expanding training windows start there)."""
    problems = quality_problems(summary, cfg.quality)
    fired = _fired(summary, state, cfg, now)
    kinds = [k for k, _ in fired]
    if problems:
        return Decision(
            retrain=False,
            kind="data_quality",
            reasons=["bad data quality: window quarantined, never trained on", *problems],
            fired=kinds,
            quality_problems=problems,
        )
    if not fired:
        return Decision(retrain=False, kind="none", reasons=["no trigger fired"], fired=[], quality_problems=[])
    reasons = [r for _, r in fired]
    kind = fired[0][0]
    held = held_by(state, cfg, now)
    if held:
        return Decision(retrain=False, kind=kind, reasons=[*reasons, held], fired=kinds, quality_problems=[])
    labels = state.labels_since_retrain + summary.labelled_rows
    if labels < cfg.min_new_labels:
        held = f"waiting for labels: {labels} new labelled rows (< {cfg.min_new_labels})"
        return Decision(retrain=False, kind=kind, reasons=[*reasons, held], fired=kinds, quality_problems=[])
    request = retrain_request(
        cfg,
        model_name=summary.model_name or "unknown",
        model_version=summary.model_version,
        window_id=summary.window_id,
        now=now,
        kind=kind,
        reasons=reasons,
        first_day=first_day,
    )
    return Decision(retrain=True, kind=kind, reasons=reasons, fired=kinds, quality_problems=[], request=request)


def retrain_request(
    cfg: PolicyCfg,
    *,
    model_name: str,
    model_version: int | None,
    window_id: str,
    now: datetime,
    kind: str,
    reasons: list[str],
    first_day: str,
) -> RetrainRequest:
    """What a retrain decided at data time `now` trains on: labels older than the label delay, split
    into the policy's training window, validation days and the gate's most recent labelled days."""
    horizon = pd.Timestamp(now) - pd.Timedelta(days=cfg.label_delay_days)
    months = cfg.training_months if cfg.training_window == "sliding" else None
    return RetrainRequest(
        model_name=model_name,
        model_version=model_version,
        window_id=window_id,
        window_end=now,
        horizon=horizon.to_pydatetime(),
        kind=kind,
        reasons=reasons,
        split=retrain_split(horizon, cfg.gate_days, cfg.valid_days, months, first_day),
    )


def _with_record(state: PolicyState, record: RetrainRecord, **update) -> PolicyState:
    retrains = {k: v for k, v in state.retrains.items() if k != record.key}
    retrains[record.key] = record
    retrains = dict(list(retrains.items())[-KEEP_RETRAINS:])
    return state.model_copy(update={"retrains": retrains, **update})


def advance(
    state: PolicyState, summary: WindowSummary, decision: Decision, now: datetime, start: datetime | None = None
) -> PolicyState:
    """The state after a window: counters move on; a retrain decision is pending until the retrain
    reports back (`finish`); a quarantined window is remembered and its labels are not counted."""
    update = dict(
        first_window_end=state.first_window_end or now,
        last_window_end=now,
        windows_since_retrain=state.windows_since_retrain + 1,
        labels_since_retrain=state.labels_since_retrain + (0 if decision.quarantine else summary.labelled_rows),
    )
    if decision.quarantine and start is not None:
        update["quarantined"] = [*state.quarantined, (start, now)]
    if decision.request is not None:
        request = decision.request
        record = RetrainRecord(key=request.key, window_end=request.window_end, status="requested", at=_wall())
        return _with_record(state, record, pending=record, **update)
    return state.model_copy(update=update)


def claim(state: PolicyState, request: RetrainRequest, flow_run: str | None) -> tuple[PolicyState, str | None]:
    """Mark a retrain running; returns why it must not run instead (the same decision ran already)."""
    seen = state.retrains.get(request.key)
    if seen is not None and seen.status in ("running", "completed", "failed"):
        who = f" (flow run {seen.flow_run})" if seen.flow_run else ""
        return state, f"the retrain for {request.key} is {seen.status} already{who}"
    record = RetrainRecord(
        key=request.key, window_end=request.window_end, status="running", flow_run=flow_run, at=_wall()
    )
    return _with_record(state, record, pending=record), None


def finish(state: PolicyState, request: RetrainRequest, ok: bool, reason: str, flow_run: str | None) -> PolicyState:
    """A retrain ended: completed starts the cooldown; failed starts the backoff (never the cooldown)."""
    record = RetrainRecord(
        key=request.key,
        window_end=request.window_end,
        status="completed" if ok else "failed",
        reason=reason,
        flow_run=flow_run,
        at=_wall(),
    )
    pending = None if state.pending is None or state.pending.key == request.key else state.pending
    if ok:
        return _with_record(
            state,
            record,
            pending=pending,
            last_retrain_at=max(request.window_end, state.last_retrain_at or request.window_end),
            last_failure=None,
            windows_since_retrain=0,
            labels_since_retrain=0,
        )
    return _with_record(state, record, pending=pending, last_failure=record)


def _wall() -> datetime:
    return datetime.now().replace(microsecond=0)
