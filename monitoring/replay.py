"""Replay building blocks: production windows, planted what-ifs, and per-policy summaries.

Pure functions; the replay flow (flows/replay.py) runs the loop's own steps (monitoring/loop.py) over
them, with the real service, DVC, MLflow and the gate."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from flightloop.config import ReplayCfg


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


# --- what-ifs and per-policy summaries ------------------------------------------------------------------


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
