"""Label-free performance estimation (monitoring/estimate.py): CBPE against realised metrics."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from monitoring.estimate import estimate, expected_brier, expected_roc_auc, fit_calibrator


def probabilities(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """True positive probabilities of n rows; `shift` moves the rows (a covariate shift), not P(y | x)."""
    z = rng.normal(shift, 1.0, n)
    return 1.0 / (1.0 + np.exp(-(1.5 * z - 1.0)))


def realised(rng: np.random.Generator, p: np.ndarray, scores: np.ndarray, draws: int) -> tuple[float, float]:
    """Mean ROC-AUC and Brier of `scores` over `draws` label draws y ~ Bernoulli(p)."""
    aucs, briers = [], []
    for _ in range(draws):
        y = (rng.random(len(p)) < p).astype(float)
        aucs.append(roc_auc_score(y, scores))
        briers.append(float(np.mean((scores - y) ** 2)))
    return float(np.mean(aucs)), float(np.mean(briers))


@pytest.mark.parametrize(
    "p, auc",
    [
        ([0.3, 0.3, 0.3, 0.3], 0.5),  # one threshold step: the diagonal
        ([0.0, 0.0, 1.0, 1.0], 1.0),  # certain labels, perfectly ranked
        ([0.2, 0.8], 0.8),  # expected ROC (0,0) (0.2,0.8) (1,1): 0.2 * 0.4 + 0.8 * 0.9
    ],
)
def test_expected_roc_auc_by_hand(p, auc):
    assert expected_roc_auc(np.array(p)) == pytest.approx(auc)


def test_expected_brier_by_hand():
    # a row positive with probability 0.25 scored 0.5: 0.25 * 0.25 + 0.75 * 0.25
    assert expected_brier(np.array([0.5]), np.array([0.25])) == pytest.approx(0.25)


def test_calibrated_scores_estimate_the_mean_realised_metrics():
    rng = np.random.default_rng(0)
    p = probabilities(rng, 2000)
    auc, brier = realised(rng, p, p, draws=300)  # sd of one draw ~0.009 AUC: of the mean ~0.0005
    assert expected_roc_auc(p) == pytest.approx(auc, abs=0.002)
    assert expected_brier(p, p) == pytest.approx(brier, abs=0.001)


def test_estimate_tracks_a_covariate_shift():
    rng = np.random.default_rng(1)
    ref_p = probabilities(rng, 20000)
    calibrator = fit_calibrator(ref_p, rng.random(len(ref_p)) < ref_p)  # the reference: one labelled draw
    before, after = probabilities(rng, 3000), probabilities(rng, 3000, shift=-0.8)  # fewer late flights
    est_before, est_after = estimate(before, calibrator), estimate(after, calibrator)
    auc_before, brier_before = realised(rng, before, before, draws=200)
    auc_after, brier_after = realised(rng, after, after, draws=200)
    assert abs(auc_after - auc_before) > 0.01  # the shift moves the realised figures ...
    assert abs(brier_after - brier_before) > 0.02
    # ... and the estimate moves with them
    assert est_after.roc_auc - est_before.roc_auc == pytest.approx(auc_after - auc_before, abs=0.006)
    assert est_after.brier - est_before.brier == pytest.approx(brier_after - brier_before, abs=0.003)
    # the level is a little low: isotonic plateaus treat rows the raw score still ranks as exchangeable
    assert est_after.roc_auc == pytest.approx(auc_after, abs=0.01)


def test_the_calibrator_corrects_a_miscalibrated_score():
    rng = np.random.default_rng(2)
    ref_p, p = probabilities(rng, 20000), probabilities(rng, 3000)
    distort = lambda q: q**0.3  # noqa: E731 - same ranking, far too high
    calibrator = fit_calibrator(distort(ref_p), rng.random(len(ref_p)) < ref_p)
    scores = distort(p)
    auc, brier = realised(rng, p, scores, draws=200)
    naive = expected_brier(scores, scores)  # taking the score at its word
    assert abs(naive - brier) > 0.05
    est = estimate(scores, calibrator, champion={"roc_auc": 0.9, "brier": 0.1})
    assert est.brier == pytest.approx(brier, abs=0.004)
    assert est.roc_auc == pytest.approx(auc, abs=0.006)
    assert abs(expected_roc_auc(scores) - auc) > 0.05  # uncalibrated, the expected ROC would be wrong
    assert est.auc_drop == pytest.approx(0.9 - est.roc_auc)
    assert est.brier_rise == pytest.approx(est.brier - 0.1)
    assert est.calibration_rows == 20000


def test_calibrator_needs_both_classes_and_skips_missing_scores():
    with pytest.raises(ValueError, match="both classes"):
        fit_calibrator(np.array([0.1, 0.2]), np.array([1, 1]))
    cal = fit_calibrator(np.array([0.1, 0.9, np.nan]), np.array([0, 1, 1]))
    assert cal.rows == 2
    assert estimate(np.array([np.nan]), cal) is None
    assert cal(np.array([-1.0, 2.0])).tolist() == [0.0, 1.0]  # clipped outside the reference's scores


def test_matches_nannyml():
    # Fixed expectations generated with nannyml 0.13.1 (a separate venv: pip install nannyml==0.13.1
    # 'pandas<3' statsmodels) on exactly these arrays: nml.CBPE(y_pred_proba=..., y_pred=..., y_true=...,
    # metrics=["roc_auc"], problem_type="classification_binary", chunk_number=1).fit(reference) then
    # .estimate(window); NannyML rounds its expected counts to 5 decimals, hence the 1e-6. NannyML's CBPE
    # has no Brier estimate to compare with.
    rng = np.random.default_rng(7)
    ref_p = probabilities(rng, 20000)
    ref_y = (rng.random(20000) < ref_p).astype(int)
    calibrator = fit_calibrator(ref_p**0.3, ref_y)
    nannyml = [0.8164893986611095, 0.8190872884970558, 0.8160695651244898]
    for shift, expected in zip([0.0, -0.8, 0.6], nannyml, strict=True):
        assert estimate(probabilities(rng, 5000, shift) ** 0.3, calibrator).roc_auc == pytest.approx(expected, abs=1e-6)
