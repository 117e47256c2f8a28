"""Replay building blocks: production windows, planted what-ifs, and per-policy summaries.

Pure functions; the replay flow (flows/replay.py) runs the loop's own steps (monitoring/loop.py) over
them, with the real service, DVC, MLflow and the gate."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
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


def _with_seed(table: pd.DataFrame) -> pd.DataFrame:
    """A table from before seeds (no `seed` column) is one seed."""
    return table if "seed" in table.columns else table.assign(seed=0)


def policy_summary(table: pd.DataFrame, since: str | None = None) -> pd.DataFrame:
    """Per policy: windows, seeds, mean AUC and Brier over windows and seeds (optionally windows starting
    on/after `since`) with their spread between seeds (sd of the per-seed means; NaN for one seed), and
    retrains, promotions and training time per seed (means over seeds)."""
    part = _with_seed(table if since is None else table[table["window"] >= since])
    per_seed = part.groupby(["policy", "seed"], sort=False).agg(
        mean_auc=("roc_auc", "mean"),
        mean_brier=("brier", "mean"),
        retrains=("retrained", "sum"),
        promotions=("promoted", "sum"),
        train_seconds=("train_seconds", "sum"),
    )
    by_policy = per_seed.groupby(level="policy", sort=False)
    out = pd.DataFrame(
        {
            "windows": part.groupby("policy", sort=False)["window"].nunique(),
            "seeds": by_policy.size(),
            "mean_auc": part.groupby("policy", sort=False)["roc_auc"].mean(),
            "auc_seed_sd": by_policy["mean_auc"].std(),
            "mean_brier": part.groupby("policy", sort=False)["brier"].mean(),
            "brier_seed_sd": by_policy["mean_brier"].std(),
            "retrains": by_policy["retrains"].mean(),
            "promotions": by_policy["promotions"].mean(),
            "train_seconds": by_policy["train_seconds"].mean(),
        }
    )
    return out.rename_axis("policy").reset_index()


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


def label_counterparts(triggers: dict[str, Sequence[str]]) -> dict[str, str]:
    """Per policy that triggers on the label-free estimates (`estimated_performance`), the replayed policy
    whose triggers are the same with the realised, label-driven `performance` in its place: the trigger
    the estimates stand in for, whose gain over `never` they should keep."""
    out = {}
    for policy, own in triggers.items():
        if "estimated_performance" not in own:
            continue
        wanted = sorted("performance" if t == "estimated_performance" else t for t in own)
        match = [q for q, other in triggers.items() if q != policy and sorted(other) == wanted]
        if match:
            out[policy] = match[0]
    return out


def estimate_accuracy(table: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Per policy, how well the label-free estimates (est_auc, est_brier, est_positive_rate) followed the
    realised ROC-AUC, Brier and share of positives over its windows (seeds pooled): mean absolute error,
    mean error (estimate minus realised) and Spearman rank correlation across windows. Windows without an
    estimate are left out."""
    out = {}
    for policy, part in table.groupby("policy", sort=False):
        acc: dict[str, float] = {}
        pairs = (
            ("roc_auc", "est_auc", "auc"),
            ("brier", "est_brier", "brier"),
            ("positive_rate", "est_positive_rate", "rate"),
        )
        for real, est, name in pairs:
            if real not in part.columns or est not in part.columns:
                continue
            both = part[[real, est]].dropna()
            if len(both) < 2:
                continue
            err = both[est] - both[real]
            acc["windows"] = len(both)
            acc[f"{name}_mae"] = float(err.abs().mean())
            acc[f"{name}_bias"] = float(err.mean())
            acc[f"{name}_spearman"] = float(both[real].corr(both[est], method="spearman"))
        if acc:
            out[str(policy)] = acc
    return out


# --- paired evidence: each policy against `never`, window by window --------------------------------------

METRICS = {"roc_auc": "higher", "brier": "lower"}  # which way is better
LEVEL = 0.95  # coverage of the intervals
_NOISE = 1e-12  # a bound this close to 0 is float rounding, far below any metric difference that matters
EVIDENCE_COLUMNS = [
    "policy",
    "part",
    "metric",
    "diff",
    "ci_low",
    "ci_high",
    "excludes_zero",
    "windows",
    "seeds",
    "retrains",
    "diff_per_retrain",
]


def paired_differences(table: pd.DataFrame, policy: str, metric: str, base: str = "never") -> pd.Series:
    """`policy` minus `base` in `metric`, one value per window (in window order): each seed is paired
    with the same seed of `base` in the same window, then the seeds' differences are averaged. Windows
    share weather and traffic, so pairing removes what both policies saw alike."""
    table = _with_seed(table)
    key = ["window", "seed"]
    mine = table.loc[table["policy"] == policy, [*key, metric]]
    theirs = table.loc[table["policy"] == base, [*key, metric]]
    both = mine.merge(theirs, on=key, suffixes=("", "_base"), validate="one_to_one")
    diff = (both[metric] - both[f"{metric}_base"]).rename("diff")
    return diff.groupby(both["window"]).mean().dropna().sort_index()


def block_bootstrap_ci(
    values: np.ndarray | pd.Series, resamples: int, block: int, seed: int, level: float = LEVEL
) -> tuple[float, float]:
    """Percentile interval of the mean of a time series by the circular block bootstrap: each resample
    joins blocks of `block` consecutive values (wrapping at the end) drawn at random starts, so values
    that move together in time stay together. A block is never longer than half the series (a block as
    long as the series would resample only rotations of it, an interval of width 0)."""
    x = np.asarray(values, dtype=float)
    n = len(x)
    if n == 0:
        return float("nan"), float("nan")
    size = max(1, min(block, n // 2))
    blocks = -(-n // size)  # ceil
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, n, size=(resamples, blocks))
    index = (starts[:, :, None] + np.arange(size)).reshape(resamples, -1)[:, :n] % n
    means = x[index].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def _parts(table: pd.DataFrame, tune_until: str) -> dict[str, pd.DataFrame]:
    return {
        "all": table,
        "tuning_half": table[table["window"] <= tune_until],
        "held_out_half": table[table["window"] > tune_until],
    }


def vs_base(
    table: pd.DataFrame,
    tune_until: str,
    resamples: int,
    block: int,
    seed: int,
    base: str = "never",
    level: float = LEVEL,
) -> pd.DataFrame:
    """Each policy against `base`, for all windows, the tuning half (windows starting by `tune_until`)
    and the held-out half: the paired difference of mean ROC-AUC and mean Brier (policy minus base;
    AUC higher and Brier lower is better), its block-bootstrap interval over windows, whether that
    interval excludes 0, the retrains per seed in the part and the difference per retrain."""
    table = _with_seed(table)
    if base not in set(table["policy"]):
        return pd.DataFrame(columns=EVIDENCE_COLUMNS)
    rows = []
    for part, frame in _parts(table, tune_until).items():
        for policy in [p for p in frame["policy"].unique() if p != base]:
            own = frame[frame["policy"] == policy]
            seeds = sorted(set(own["seed"]) & set(frame.loc[frame["policy"] == base, "seed"]))
            retrains = own[own["seed"].isin(seeds)].groupby("seed")["retrained"].sum().mean() if seeds else 0.0
            for metric in METRICS:
                diffs = paired_differences(frame, policy, metric, base)
                diff = float(diffs.mean()) if len(diffs) else float("nan")
                low, high = block_bootstrap_ci(diffs, resamples, block, seed, level)
                rows.append(
                    {
                        "policy": policy,
                        "part": part,
                        "metric": metric,
                        "diff": diff,
                        "ci_low": low,
                        "ci_high": high,
                        "excludes_zero": bool(low > _NOISE or high < -_NOISE),
                        "windows": len(diffs),
                        "seeds": len(seeds),
                        "retrains": float(retrains),
                        "diff_per_retrain": diff / retrains if retrains else float("nan"),
                    }
                )
    return pd.DataFrame(rows, columns=EVIDENCE_COLUMNS)


def evidence_text(evidence: pd.DataFrame, base: str = "never", level: float = LEVEL) -> list[str]:
    """One sentence per row of `vs_base`: the difference, its interval, and whether it excludes 0."""
    lines = []
    for r in evidence.itertuples(index=False):
        better = (r.diff > 0) == (METRICS[r.metric] == "higher")
        if r.windows == 0:
            verdict = "no paired windows"
        elif r.excludes_zero:
            verdict = f"the interval excludes 0: {r.policy} is {'better' if better else 'worse'} than {base}"
        else:
            verdict = f"the interval contains 0: no difference from {base} shown"
        per = f", {r.diff_per_retrain:+.4f} per retrain" if r.retrains else ", no retrains"
        lines.append(
            f"{r.policy} vs {base}, {r.part}, {r.metric} ({METRICS[r.metric]} is better): {r.diff:+.4f} "
            f"[{level:.0%} CI {r.ci_low:+.4f}, {r.ci_high:+.4f}] over {r.windows} windows x {r.seeds} seeds"
            f"{per}; {verdict}"
        )
    return lines
