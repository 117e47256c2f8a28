"""Replay building blocks: production windows, label visibility, and the retraining data window.

Pure functions; the replay flow (flows/replay.py) wires them to the real service, monitoring, DVC,
MLflow and the gate."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd


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
