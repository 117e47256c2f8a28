"""Replay building blocks: production windows, label visibility, and the retraining data window.

Pure functions; the replay flow (flows/replay.py) wires them to the real service, monitoring, DVC,
MLflow and the gate."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from tasks.config import Params, parse_section


@dataclass(frozen=True)
class Window:
    window_id: str
    start: pd.Timestamp  # inclusive
    end: pd.Timestamp  # exclusive: the moment the window closes ("now" for its monitoring)


def windows(start: str, end: str, days: int) -> list[Window]:
    """Consecutive windows of `days` days from `start` up to `end` (inclusive day); the last may be short."""
    if days < 1:
        raise ValueError(f"window length must be at least one day, got {days}")
    lo, stop = pd.Timestamp(start), pd.Timestamp(end) + pd.Timedelta(days=1)
    out = []
    while lo < stop:
        hi = min(lo + pd.Timedelta(days=days), stop)
        out.append(Window(f"{lo:%Y-%m-%d}", lo, hi))
        lo = hi
    return out


def rows_in(frame: pd.DataFrame, time_column: str, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
    t = frame[time_column]
    return frame[(t >= start) & (t < end)]


def visible_labels(frame: pd.DataFrame, time_column: str, now: pd.Timestamp, delay_days: float) -> pd.DataFrame:
    """Rows whose label is known at `now`: the outcome of a flight is known `delay_days` after it."""
    return frame[frame[time_column] + pd.Timedelta(days=delay_days) <= now]


def label_horizon(now: pd.Timestamp, delay_days: float) -> pd.Timestamp:
    """Latest scheduled time whose label is visible at `now`."""
    return now - pd.Timedelta(days=delay_days)


def retrain_split(
    horizon: pd.Timestamp, test_days: int, valid_days: int, train_months: int | None, first_day: str
) -> dict[str, list[str]]:
    """Split windows (days, inclusive) for a retrain whose newest labelled row is before `horizon`:
    test = the last `test_days` labelled days (the gate's most recent labelled window), valid = the
    `valid_days` before it, train = the `train_months` before that (sliding) or all since `first_day`."""
    last = (horizon - pd.Timedelta(days=1)).normalize()  # last complete labelled day
    test_lo = last - pd.Timedelta(days=test_days - 1)
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
        "train": [train_lo.strftime(fmt), train_hi.strftime(fmt)],
        "valid": [valid_lo.strftime(fmt), valid_hi.strftime(fmt)],
        "test": [test_lo.strftime(fmt), last.strftime(fmt)],
    }


# --- configuration (params.yaml `replay:`) and per-policy summaries --------------------------------


class Scenario(BaseModel):
    """A what-if planted in one window of the stream: shift a numeric column, or blank a share of it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    window: str  # window id (its first day, YYYY-MM-DD)
    column: str
    add: float = 0.0
    missing_share: float = Field(0.0, ge=0.0, le=1.0)
    until: str | None = None  # keep applying it to later windows up to this id (a lasting shift)


class ReplayCfg(BaseModel):
    """The replay of a year of production: windows, retraining split, policies to compare."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: str = "2013-07-01"  # first production window (the initial champion was trained before)
    end: str = "2013-12-31"
    window_days: int = Field(7, ge=1)
    first_day: str = "2013-01-01"  # expanding training windows start here
    valid_days: int = Field(7, ge=1)  # a retrain validates on the week before ...
    test_days: int = Field(7, ge=1)  # ... the most recent labelled week, on which the gate decides
    tune_until: str = "2013-09-30"  # policies were tuned on windows starting by then; later ones are held out
    request_rows: int = Field(1000, ge=1)  # rows per /predict request
    workers: int = Field(1, ge=1)  # policies replayed at once (each in its own workspace and service)
    train: dict[str, Any] = Field(default_factory=dict)  # params overrides for every (re)training
    policies: dict[str, dict[str, Any]]  # name -> overrides of the `policy:` section
    scenarios: tuple[Scenario, ...] = ()  # what-ifs planted in the stream (tests, policy drills)
    quick: dict[str, Any] = Field(default_factory=dict)  # overrides of this section for --quick


def apply_scenario(frame: pd.DataFrame, window_id: str, cfg: ReplayCfg, seed: int = 0) -> pd.DataFrame:
    """The window's rows with any planted scenario applied (a copy; the stream is untouched)."""
    hits = [s for s in cfg.scenarios if s.window <= window_id <= (s.until or s.window)]
    if not hits:
        return frame
    out = frame.copy()
    for sc in hits:
        if sc.column not in out.columns:
            raise ValueError(f"replay scenario column {sc.column!r} is not a column of the stream")
        if sc.add:
            out[sc.column] = out[sc.column] + sc.add
        if sc.missing_share:
            blank = out.sample(frac=sc.missing_share, random_state=seed).index
            out.loc[blank, sc.column] = None
    return out


def replay_cfg(params: Params, quick: bool = False) -> ReplayCfg:
    raw = dict(params.extra.get("replay") or {})
    if quick:
        raw = {**raw, **raw.get("quick", {})}
    return parse_section(ReplayCfg, raw, "replay")


def policy_summary(table: pd.DataFrame, since: str | None = None) -> pd.DataFrame:
    """Per policy: mean AUC and Brier over windows (optionally those starting on/after `since`),
    retrains, promotions and training time."""
    part = table if since is None else table[table["window"] >= since]
    out = part.groupby("policy", sort=False).agg(
        windows=("window", "size"),
        mean_auc=("roc_auc", "mean"),
        mean_brier=("brier", "mean"),
        retrains=("retrained", "sum"),
        promotions=("promoted", "sum"),
        train_seconds=("train_seconds", "sum"),
    )
    return out.reset_index()


def retained_improvement(summary: pd.DataFrame, policy: str, reference: str = "monthly", base: str = "never") -> dict:
    """Share of `reference`'s improvement over `base` that `policy` keeps (AUC up, Brier down), and its
    share of `reference`'s retrains: the replay's goal is >= 80 % kept with <= 50 % of the retrains."""
    row = summary.set_index("policy")
    if not {policy, reference, base} <= set(row.index):
        return {}
    gain = lambda metric, sign: sign * (row.loc[policy, metric] - row.loc[base, metric])  # noqa: E731
    ref_gain = lambda metric, sign: sign * (row.loc[reference, metric] - row.loc[base, metric])  # noqa: E731
    share = lambda a, b: float(a / b) if b > 0 else float("nan")  # noqa: E731
    retrains = row.loc[reference, "retrains"]
    return {
        "auc_kept": share(gain("mean_auc", 1), ref_gain("mean_auc", 1)),
        "brier_kept": share(gain("mean_brier", -1), ref_gain("mean_brier", -1)),
        "retrain_share": float(row.loc[policy, "retrains"] / retrains) if retrains else float("nan"),
    }
