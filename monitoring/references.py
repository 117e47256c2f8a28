"""References for the replay's policies, from a matrix of every retrain scored on every later window.

`matrix[m, j]` is a model's ROC-AUC (or Brier) on window j: row 0 is the initial champion (what `never`
serves), row i + 1 the model a retrain decided at the end of window i would train (it serves from window
i + 1 on; cells j <= i are NaN). From it, without training again:

- a fixed cadence of c windows: retrain after every c windows, each model promoted (no gate);
- a hindsight oracle: the at most k retrain windows that maximise mean ROC-AUC over a part of the year,
  each model promoted (no gate): an upper bound on any policy with k retrains there.

Pure functions; flows/references.py trains the models and writes the table."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Schedule:
    """Retrain windows (indices: the retrain is decided at that window's end) and the model per window."""

    retrains: tuple[int, ...]
    models: tuple[int, ...]  # row of the matrix that serves each window


def serving_models(retrains: Sequence[int], n_windows: int) -> tuple[int, ...]:
    """The matrix row serving each window when retrains happen at the ends of `retrains`: the latest
    retrain before the window (row i + 1 for a retrain at window i), row 0 before the first."""
    out, current, due = [], 0, sorted(set(retrains))
    for j in range(n_windows):
        while due and due[0] < j:
            current = due.pop(0) + 1
        out.append(current)
    return tuple(out)


def schedule(retrains: Sequence[int], n_windows: int) -> Schedule:
    """A schedule from its retrain windows; a retrain at the last window serves nothing and is left out."""
    kept = tuple(sorted({i for i in retrains if 0 <= i < n_windows - 1}))
    return Schedule(kept, serving_models(kept, n_windows))


def cadence(every: int, n_windows: int) -> Schedule:
    """Retrain after every `every` windows: at the ends of windows every-1, 2*every-1, ..."""
    if every < 1:
        raise ValueError(f"a cadence is at least 1 window, got {every}")
    return schedule(range(every - 1, n_windows, every), n_windows)


def scores(matrix: np.ndarray, plan: Schedule) -> np.ndarray:
    """The metric of each window under a schedule."""
    a = np.asarray(matrix, dtype=float)
    values = a[list(plan.models), np.arange(a.shape[1])]
    if np.isnan(values).any():
        raise ValueError("the schedule uses a model on a window the matrix has no score for")
    return values


def oracle(matrix: np.ndarray, budget: int, part: np.ndarray | None = None, higher: bool = True) -> Schedule:
    """At most `budget` retrains, chosen in hindsight to maximise the mean of `matrix` (minimise it for
    `higher=False`, e.g. Brier) over the windows in `part` (a boolean mask; all windows by default).
    Dynamic programming over (last retrain, retrains used): exact, O(budget * n^2)."""
    a = np.asarray(matrix, dtype=float)
    n = a.shape[1]
    if a.shape[0] != n:
        raise ValueError(f"expected a square matrix (initial model + one retrain per window), got {a.shape}")
    if budget < 0:
        raise ValueError(f"the retrain budget cannot be negative, got {budget}")
    counted = np.ones(n, dtype=bool) if part is None else np.asarray(part, dtype=bool)
    value = np.where(counted, np.nan_to_num(a) * (1.0 if higher else -1.0), 0.0)
    missing = np.where(counted, np.isnan(a), False)  # a model on a window it cannot serve: never chosen
    cum = np.concatenate([np.zeros((n, 1)), np.cumsum(value, axis=1)], axis=1)
    holes = np.concatenate([np.zeros((n, 1), dtype=int), np.cumsum(missing, axis=1)], axis=1)

    def run(model: int, lo: int, hi: int) -> float:  # windows lo..hi inclusive served by `model`
        if hi < lo:
            return 0.0
        return -np.inf if holes[model, hi + 1] > holes[model, lo] else float(cum[model, hi + 1] - cum[model, lo])

    last = n - 1  # a retrain at the last window serves nothing
    # best[r][t]: best sum over windows 0..t when the r-th (last so far) retrain is at the end of window t
    best = np.full((budget + 1, last), -np.inf)
    came = np.full((budget + 1, last), -1, dtype=int)
    for t in range(last):
        if budget >= 1:
            best[1, t] = run(0, 0, t)
    for r in range(2, budget + 1):
        for t in range(last):
            for s in range(t):
                v = best[r - 1, s] + run(s + 1, s + 1, t)
                if v > best[r, t]:
                    best[r, t], came[r, t] = v, s
    total, end = run(0, 0, n - 1), (0, -1)
    for r in range(1, budget + 1):
        for t in range(last):
            v = best[r, t] + run(t + 1, t + 1, n - 1)
            if v > total + 1e-12:  # ties go to fewer retrains
                total, end = v, (r, t)
    picks, (r, t) = [], end
    while r > 0:
        picks.append(t)
        r, t = r - 1, came[r, t]
    return schedule(picks, n)


def gain_share(policy: float, base: float, best: float) -> float:
    """A policy's share of the oracle's gain over the base: (policy - base) / (best - base); NaN when
    the oracle gains nothing."""
    return float((policy - base) / (best - base)) if best - base > 1e-12 else float("nan")


# --- the table: each reference and replayed policy, per part of the year ------------------------------

CADENCES = (1, 2, 4, 8)  # windows between retrains (weeks, for weekly windows)


def square(long: pd.DataFrame, metric: str, windows: Sequence[str]) -> np.ndarray:
    """One seed's long matrix (model, window, metric) as rows = models 0..n-1, columns = `windows`."""
    n = len(windows)
    table = long.pivot(index="model", columns="window", values=metric).reindex(index=range(n), columns=list(windows))
    return table.to_numpy(dtype=float)


def _masks(windows: Sequence[str], tune_until: str) -> dict[str, np.ndarray]:
    w = np.asarray(windows)
    masks = {"all": np.ones(len(w), dtype=bool), "tuning_half": w <= tune_until, "held_out_half": w > tune_until}
    return {part: mask for part, mask in masks.items() if mask.any()}  # a short replay may not reach a part


def _budgets(policies: pd.DataFrame | None, policy: str, windows: Sequence[str], tune_until: str, default: int):
    """Per part, the retrains of `policy` (per seed, rounded mean) that could move that part: those
    decided at windows up to the part's last window."""
    masks = _masks(windows, tune_until)
    if policies is None or policy not in set(policies["policy"]):
        return {part: default for part in masks}
    own = policies[policies["policy"] == policy]
    out = {}
    for part, mask in masks.items():
        last = max(np.asarray(windows)[mask])
        per_seed = own[own["window"] <= last].groupby("seed")["retrained"].sum()
        out[part] = int(round(float(per_seed.mean())))
    return out


def reference_table(
    long: pd.DataFrame,
    tune_until: str,
    policies: pd.DataFrame | None = None,
    budget_policy: str = "drift",
    default_budget: int = 3,
    cadences: Sequence[int] = CADENCES,
) -> pd.DataFrame:
    """Per part of the year: `never` (the initial model throughout), each cadence, the AUC oracle with
    `budget_policy`'s retrains (from the replayed `policies`, windows.csv; else `default_budget`) from
    the matrix `long` (seed, model, window, roc_auc, brier); and each replayed policy. Means over
    windows, then over seeds; retrains are counted at windows in the part (as evidence.csv does). Gains
    are against each source's own `never` (AUC up, Brier down is a gain); `auc_share_of_oracle` divides
    by the oracle's AUC gain in the same part. The best cadence is the one best on the tuning half."""
    windows = sorted(long["window"].unique())
    masks = _masks(windows, tune_until)
    budgets = _budgets(policies, budget_policy, windows, tune_until, default_budget)
    last = {part: int(np.flatnonzero(mask)[-1]) for part, mask in masks.items()}
    rows = []
    for seed, one in long.groupby("seed"):
        auc, brier = square(one, "roc_auc", windows), square(one, "brier", windows)
        n = len(windows)
        for part, mask in masks.items():
            plans = {"never": schedule([], n), **{f"cadence-{c}": cadence(c, n) for c in cadences}}
            plans["oracle"] = oracle(auc, budgets[part], mask)
            for name, plan in plans.items():
                rows.append(
                    {
                        "reference": name,
                        "source": "matrix",
                        "part": part,
                        "seed": seed,
                        "mean_auc": float(scores(auc, plan)[mask].mean()),
                        "mean_brier": float(scores(brier, plan)[mask].mean()),
                        "retrains": sum(1 for i in plan.retrains if mask[i]),
                        "budget": budgets[part] if name == "oracle" else np.nan,
                        # the retrains that can move the part: up to its last window
                        "retrain_windows": " ".join(windows[i] for i in plan.retrains if i < last[part]),
                    }
                )
    if policies is not None:
        for (policy, seed), one in policies.groupby(["policy", "seed"], sort=False):
            for part, mask in masks.items():
                keep = one[one["window"].isin(np.asarray(windows)[mask])]
                rows.append(
                    {
                        "reference": policy,
                        "source": "replay",
                        "part": part,
                        "seed": seed,
                        "mean_auc": float(keep["roc_auc"].mean()),
                        "mean_brier": float(keep["brier"].mean()),
                        "retrains": int(keep["retrained"].sum()),
                        "budget": np.nan,
                        "retrain_windows": " ".join(keep.loc[keep["retrained"].astype(bool), "window"]),
                    }
                )
    per_seed = pd.DataFrame(rows)
    out = (
        per_seed.groupby(["reference", "source", "part"], sort=False)
        .agg(
            seeds=("seed", "nunique"),
            mean_auc=("mean_auc", "mean"),
            auc_seed_sd=("mean_auc", "std"),
            mean_brier=("mean_brier", "mean"),
            retrains=("retrains", "mean"),
            budget=("budget", "first"),
            retrain_windows=("retrain_windows", "first"),
        )
        .reset_index()
    )
    base = out[out["reference"] == "never"].set_index(["source", "part"])
    out["auc_gain"] = out["mean_auc"] - [base.loc[(s, p), "mean_auc"] for s, p in zip(out["source"], out["part"])]
    out["brier_gain"] = [base.loc[(s, p), "mean_brier"] for s, p in zip(out["source"], out["part"])] - out["mean_brier"]
    best = out[out["reference"] == "oracle"].set_index("part")["auc_gain"]
    out["auc_share_of_oracle"] = [gain_share(g, 0.0, best[p]) for g, p in zip(out["auc_gain"], out["part"])]
    out["auc_gain_per_retrain"] = np.where(
        out["retrains"] > 0, out["auc_gain"] / out["retrains"].where(out["retrains"] > 0), np.nan
    )
    tuning = out[(out["part"] == "tuning_half") & out["reference"].str.startswith("cadence-")]
    out["best_cadence"] = (
        out["reference"] == tuning.loc[tuning["mean_auc"].idxmax(), "reference"] if len(tuning) else False
    )
    return out


def references_text(table: pd.DataFrame) -> list[str]:
    """One sentence per reference and part of `reference_table`: its mean AUC / Brier, its gain over its
    `never`, its share of the oracle's AUC gain and its gain per retrain."""
    lines = []
    for r in table.itertuples(index=False):
        if r.reference == "never":
            continue
        what = {"oracle": f"hindsight oracle (at most {r.budget:g} retrains, no gate)"}.get(r.reference, r.reference)
        if r.reference.startswith("cadence-"):
            what = f"every {r.reference.removeprefix('cadence-')} window(s) (no gate)" + (
                ", the best cadence on the tuning half" if r.best_cadence else ""
            )
        share = (
            f"{r.auc_share_of_oracle:.0%} of the oracle's AUC gain"
            if np.isfinite(r.auc_share_of_oracle)
            else "no oracle gain to share (the oracle does not beat never here)"
        )
        per = f", {r.auc_gain_per_retrain:+.4f} AUC per retrain" if r.retrains else ""
        lines.append(
            f"{r.part}: {what} [{r.source}]: AUC {r.mean_auc:.4f} ({r.auc_gain:+.4f} vs never), Brier "
            f"{r.mean_brier:.4f} ({-r.brier_gain:+.4f}), {r.retrains:g} retrains; {share}{per}"
        )
    return lines
