"""Performance before labels arrive: confidence-based performance estimation (CBPE, as in NannyML).

A calibrator (isotonic regression, as NannyML fits it) maps the champion's raw score to the probability
that the row is positive, learnt on labelled reference rows the champion was not trained on (its test
split). Under a covariate shift (the rows change, P(y | score) does not) the calibrated probabilities of
a window's rows give the expected confusion counts at every threshold, hence the expected ROC curve and
the expected Brier of the raw score, without one label. Pure: arrays in, numbers out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydantic import BaseModel, ConfigDict


@dataclass(frozen=True)
class Calibrator:
    """A fitted isotonic map from raw score to P(y=1): its knots, clipped outside them."""

    x: np.ndarray  # increasing raw scores
    y: np.ndarray  # non-decreasing probabilities at them
    rows: int  # labelled reference rows it was fitted on
    positive_rate: float  # of those rows

    def __call__(self, scores: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(scores, dtype=np.float64), self.x, self.y)


def fit_calibrator(scores: np.ndarray, labels: np.ndarray) -> Calibrator:
    """Isotonic regression of the 0/1 labels on the scores (NaN rows left out)."""
    from sklearn.isotonic import IsotonicRegression

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    keep = np.isfinite(s) & np.isfinite(y)
    s, y = s[keep], y[keep]
    if len(s) == 0 or len(np.unique(y)) < 2:
        raise ValueError(f"a calibrator needs labelled rows of both classes; got {len(s)} rows")
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip").fit(s, y)
    return Calibrator(
        x=np.asarray(iso.X_thresholds_, dtype=np.float64),
        y=np.asarray(iso.y_thresholds_, dtype=np.float64),
        rows=int(len(s)),
        positive_rate=float(y.mean()),
    )


def expected_roc_auc(p: np.ndarray) -> float:
    """Area under the expected ROC curve of rows whose positive probabilities are `p`: at each threshold
    on p, expected TP = sum of p above it, FP = sum of (1 - p); positives = sum p, negatives = sum (1 - p).
    Ties in p form one step (the trapezoid), as tied scores do in a realised ROC curve."""
    p = np.sort(np.asarray(p, dtype=np.float64))[::-1]  # highest first: thresholds sweep downwards
    p = p[np.isfinite(p)]
    if len(p) == 0:
        return float("nan")
    values, start = np.unique(-p, return_index=True)  # groups of equal p, highest first
    pos = np.add.reduceat(p, start)
    neg = np.add.reduceat(1.0 - p, start)
    total_pos, total_neg = pos.sum(), neg.sum()
    if total_pos <= 0 or total_neg <= 0:
        return float("nan")
    tp = np.concatenate([[0.0], np.cumsum(pos)]) / total_pos
    fp = np.concatenate([[0.0], np.cumsum(neg)]) / total_neg
    return float(np.sum((fp[1:] - fp[:-1]) * (tp[1:] + tp[:-1]) / 2))


def expected_brier(scores: np.ndarray, p: np.ndarray) -> float:
    """Expected Brier of the raw scores when row i is positive with probability p_i."""
    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(p, dtype=np.float64)
    return float(np.mean(c * (1.0 - s) ** 2 + (1.0 - c) * s**2)) if len(s) else float("nan")


class EstimatedPerformance(BaseModel):
    """A window's ROC-AUC and Brier estimated from its scores alone, against the champion's test metrics."""

    model_config = ConfigDict(frozen=True)

    rows: int
    roc_auc: float
    brier: float
    positive_rate: float  # expected share of positives (mean calibrated probability)
    calibration_rows: int  # labelled reference rows the calibrator was fitted on
    champion: dict[str, float]
    auc_drop: float | None
    brier_rise: float | None


def estimate(
    scores: np.ndarray, calibrator: Calibrator, champion: dict[str, float] | None = None
) -> EstimatedPerformance | None:
    """Estimated ROC-AUC and Brier of one window's raw scores (None without a finite score)."""
    s = np.asarray(scores, dtype=np.float64)
    s = s[np.isfinite(s)]
    if len(s) == 0:
        return None
    p = calibrator(s)
    auc, brier = expected_roc_auc(p), expected_brier(s, p)
    base = {k: float(champion[k]) for k in ("roc_auc", "brier") if champion and k in champion}
    return EstimatedPerformance(
        rows=len(s),
        roc_auc=auc,
        brier=brier,
        positive_rate=float(p.mean()),
        calibration_rows=calibrator.rows,
        champion=base,
        auc_drop=base["roc_auc"] - auc if "roc_auc" in base and np.isfinite(auc) else None,
        brier_rise=brier - base["brier"] if "brier" in base else None,
    )
