"""Typed, frozen views of the `monitoring:` and `policy:` sections of params.yaml (kept in Params.extra)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tasks.config import Params, ParamsError, parse_section


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MonitoringCfg(_Frozen):
    # Evidently stat tests (names from its registry); pinned so small and large windows use the same test
    num_method: str = "wasserstein"
    cat_method: str = "jensenshannon"
    drift_threshold: float = Field(0.1, gt=0)
    # None: one threshold for every feature. A number of days: each feature's threshold is raised to the
    # largest drift score a slice of that many days of the reference shows against the whole reference,
    # so a window counts as drifted in a feature only when it is unlike every such slice of the reference
    # (a week of weather always differs from four months of it; a summer week differs from every winter one)
    calibrate_days: float | None = Field(None, gt=0)
    score_column: str = "score"
    score_method: str = "wasserstein"
    score_threshold: float = Field(0.1, gt=0)
    # features that differ between windows by design (calendar); left out of drift and range checks
    exclude_features: tuple[str, ...] = ()
    reference_max_rows: int = Field(30_000, ge=100)
    current_max_rows: int = Field(50_000, ge=100)
    report_max_rows: int = Field(5_000, ge=100)
    seed: int = 0
    # a value is out of range when outside [min - tol*span, max + tol*span] of the reference
    range_tolerance: float = Field(0.5, ge=0)
    min_labelled_rows: int = Field(200, ge=1)
    notify_urls: tuple[str, ...] = ()


class QualityCfg(_Frozen):
    max_missing_increase: float = Field(0.2, ge=0, le=1)
    max_unseen_share: float = Field(0.05, ge=0, le=1)
    max_out_of_range_share: float = Field(0.05, ge=0, le=1)


Trigger = Literal["data_drift", "score_drift", "performance", "schedule", "never"]


class PolicyCfg(_Frozen):
    triggers: tuple[Trigger, ...] = ("data_drift", "score_drift", "performance")
    drift_share: float = Field(0.3, gt=0, le=1)
    auc_drop: float = Field(0.03, ge=0)
    brier_rise: float = Field(0.02, ge=0)
    every_days: float | None = Field(None, gt=0)
    every_windows: int | None = Field(None, ge=1)
    min_new_labels: int = Field(1000, ge=0)
    cooldown_days: float = Field(14, ge=0)
    label_delay_days: float = Field(1, ge=0)
    training_window: Literal["sliding", "expanding"] = "sliding"
    training_months: int = Field(4, ge=1)
    quality: QualityCfg = QualityCfg()

    @model_validator(mode="after")
    def _consistent(self) -> PolicyCfg:
        if "never" in self.triggers and len(self.triggers) > 1:
            raise ValueError("policy.triggers: `never` cannot be combined with other triggers")
        if "schedule" in self.triggers and self.every_days is None and self.every_windows is None:
            raise ValueError("policy.triggers has `schedule`: set policy.every_days or policy.every_windows")
        return self


def monitoring_cfg(params: Params) -> MonitoringCfg:
    cfg = parse_section(MonitoringCfg, params.extra.get("monitoring"), "monitoring")
    unknown = set(cfg.exclude_features) - set(params.data.features)
    if unknown:
        raise ParamsError(f"monitoring.exclude_features names no feature: {sorted(unknown)}")
    return cfg


def policy_cfg(params: Params) -> PolicyCfg:
    return parse_section(PolicyCfg, params.extra.get("policy"), "policy")
