"""The retraining policy: a pure decision from one window's summary, the policy state and its config."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict

from monitoring.config import PolicyCfg, QualityCfg
from monitoring.drift import WindowSummary

DRIFT_EVENT = "model.drift.detected"
PERFORMANCE_EVENT = "model.performance.degraded"
SCHEDULE_EVENT = "model.retrain.scheduled"
QUALITY_EVENT = "data.quality.alert"

Kind = Literal["data_drift", "score_drift", "performance", "schedule", "data_quality", "none"]
EVENT_OF_KIND = {
    "data_drift": DRIFT_EVENT,
    "score_drift": DRIFT_EVENT,
    "performance": PERFORMANCE_EVENT,
    "schedule": SCHEDULE_EVENT,
    "data_quality": QUALITY_EVENT,
}


def data_time(value: datetime | pd.Timestamp | str) -> datetime:
    """A timestamp the policy can compare: aware ones in UTC without the zone, naive ones as they are."""
    ts = pd.Timestamp(value)
    return (ts.tz_convert("UTC").tz_localize(None) if ts.tzinfo is not None else ts).to_pydatetime()


class PolicyState(BaseModel):
    """What the policy remembers between windows (stored as JSON by the monitoring flow)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    last_retrain_at: datetime | None = None  # data time of the window that triggered the last retrain
    first_window_end: datetime | None = None
    last_window_end: datetime | None = None
    windows_since_retrain: int = 0
    labels_since_retrain: int = 0


class Decision(BaseModel):
    model_config = ConfigDict(frozen=True)

    retrain: bool
    kind: Kind  # the first trigger that fired (or data_quality / none)
    reasons: list[str]
    fired: list[str]  # every trigger whose threshold was crossed, retrain or not
    quality_problems: list[str]
    training_window: tuple[str, str] | None = None  # inclusive months to train on, when retraining

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


def training_window(cfg: PolicyCfg, now: datetime, first: datetime | None) -> tuple[str, str]:
    """Inclusive months to retrain on: the last N full-or-current months (sliding) or all seen (expanding)."""
    end = pd.Timestamp(now).to_period("M")
    if cfg.training_window == "expanding" and first is not None:
        return str(pd.Timestamp(first).to_period("M")), str(end)
    return str(end - (cfg.training_months - 1)), str(end)


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
        elif kind == "schedule":
            since = state.last_retrain_at or state.first_window_end
            if cfg.every_windows and state.windows_since_retrain + 1 >= cfg.every_windows:
                fired.append((kind, f"schedule: {state.windows_since_retrain + 1} windows since the last retrain"))
            elif cfg.every_days and since is not None and now - since >= timedelta(days=cfg.every_days):
                fired.append((kind, f"schedule: {(now - since).days} days since the last retrain"))
    return fired


def decide(summary: WindowSummary, state: PolicyState, cfg: PolicyCfg, now: datetime) -> Decision:
    """Retrain or not after one window; `now` is data time (the window's end)."""
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
    if state.last_retrain_at is not None and now - state.last_retrain_at < timedelta(days=cfg.cooldown_days):
        held = f"cooldown: last retrain {now - state.last_retrain_at} ago (< {cfg.cooldown_days:g} days)"
        return Decision(retrain=False, kind=kind, reasons=[*reasons, held], fired=kinds, quality_problems=[])
    labels = state.labels_since_retrain + summary.labelled_rows
    if labels < cfg.min_new_labels:
        held = f"waiting for labels: {labels} new labelled rows (< {cfg.min_new_labels})"
        return Decision(retrain=False, kind=kind, reasons=[*reasons, held], fired=kinds, quality_problems=[])
    return Decision(
        retrain=True,
        kind=kind,
        reasons=reasons,
        fired=kinds,
        quality_problems=[],
        training_window=training_window(cfg, now, state.first_window_end),
    )


def advance(state: PolicyState, summary: WindowSummary, decision: Decision, now: datetime) -> PolicyState:
    """The state after a window; a quarantined window's labels are not counted (they are not trained on)."""
    labelled = 0 if decision.quarantine else summary.labelled_rows
    if decision.retrain:
        return state.model_copy(
            update=dict(
                last_retrain_at=now,
                first_window_end=state.first_window_end or now,
                last_window_end=now,
                windows_since_retrain=0,
                labels_since_retrain=0,
            )
        )
    return state.model_copy(
        update=dict(
            first_window_end=state.first_window_end or now,
            last_window_end=now,
            windows_since_retrain=state.windows_since_retrain + 1,
            labels_since_retrain=state.labels_since_retrain + labelled,
        )
    )
