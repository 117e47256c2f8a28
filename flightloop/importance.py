"""Permutation importance: how much ROC-AUC a model loses when one feature's column is shuffled. One
definition for the evaluate stage (per model version, on the test split) and the gate (champion vs
challenger on the gate window)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from sklearn import metrics as skm

COLUMNS = ("feature", "importance", "std", "rank")


def _auc(y: np.ndarray, p: np.ndarray) -> float:
    return float(skm.roc_auc_score(y, p)) if len(np.unique(y)) == 2 else float("nan")


def permutation_importance(
    predict: Callable[[pd.DataFrame], np.ndarray],
    frame: pd.DataFrame,
    y: np.ndarray,
    features: Sequence[str],
    repeats: int = 3,
    seed: int = 0,
    max_rows: int | None = None,
) -> pd.DataFrame:
    """Mean drop in ROC-AUC (and its std over `repeats` shuffles) per feature, largest first.

    Scored through `predict` (raw feature rows in, probabilities out): one call for the unshuffled rows and
    one per feature on its `repeats` shuffled copies stacked together, so the cost is a few batched passes.
    A seeded sample of `max_rows` rows keeps it cheap on a large split; the same seed gives the same table."""
    rng = np.random.default_rng(seed)
    if max_rows is not None and len(frame) > max_rows:
        keep = np.sort(rng.choice(len(frame), max_rows, replace=False))
        frame, y = frame.iloc[keep], np.asarray(y)[keep]
    frame, y, n = frame.reset_index(drop=True), np.asarray(y), len(frame)
    base = _auc(y, np.asarray(predict(frame)))
    rows = []
    for feature in features:
        stacked = pd.concat([frame] * repeats, ignore_index=True)
        column = frame[feature].to_numpy()
        stacked[feature] = np.concatenate([column[rng.permutation(n)] for _ in range(repeats)])
        p = np.asarray(predict(stacked)).reshape(repeats, n)
        drops = np.array([base - _auc(y, p[r]) for r in range(repeats)])
        rows.append({"feature": feature, "importance": float(drops.mean()), "std": float(drops.std())})
    table = pd.DataFrame(rows, columns=list(COLUMNS[:3]))
    table = table.sort_values("importance", ascending=False, na_position="last", kind="stable")
    table["rank"] = np.arange(1, len(table) + 1)
    return table.reset_index(drop=True)


def movers(champion: pd.DataFrame, challenger: pd.DataFrame, top: int = 5) -> list[dict[str, float | str]]:
    """The features whose importance changed most from champion to challenger (largest |change| first)."""
    both = champion.set_index("feature")[["importance"]].join(
        challenger.set_index("feature")[["importance"]], how="outer", lsuffix="_champion", rsuffix="_challenger"
    )
    both = both.fillna(0.0)  # a feature one model lacks counts as unimportant to it
    both["change"] = both["importance_challenger"] - both["importance_champion"]
    both = both.reindex(both["change"].abs().sort_values(ascending=False, kind="stable").index).head(top)
    return [
        {
            "feature": str(feature),
            "champion": round(float(row.importance_champion), 5),
            "challenger": round(float(row.importance_challenger), 5),
            "change": round(float(row.change), 5),
        }
        for feature, row in both.iterrows()
    ]
