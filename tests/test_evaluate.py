import numpy as np
import pandas as pd
import pytest

from tasks.evaluate import calibration_table, choose_threshold, classification_metrics, slice_metrics


def test_metrics_of_a_known_case():
    y = np.array([0, 0, 1, 1])
    p = np.array([0.1, 0.6, 0.4, 0.9])
    m = classification_metrics(y, p, threshold=0.5)
    assert m["roc_auc"] == pytest.approx(0.75)
    assert (m["precision"], m["recall"], m["accuracy"]) == (0.5, 0.5, 0.5)
    assert m["brier"] == pytest.approx(np.mean((p - y) ** 2))


def test_threshold_maximises_f1():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    t = choose_threshold(y, p)
    assert 0.3 < t <= 0.7 and classification_metrics(y, p, t)["f1"] == 1.0


def test_slices_report_the_largest_gap():
    rng = np.random.default_rng(0)
    n = 1000
    groups = pd.DataFrame({"carrier": ["good"] * n + ["bad"] * n})
    y = rng.integers(0, 2, 2 * n)
    p = np.concatenate([y[:n] * 0.8 + 0.1, rng.random(n)])  # perfect for "good", random for "bad"
    table, gaps = slice_metrics(groups, y, p, 0.5, ("carrier",))
    assert set(table["value"]) == {"good", "bad"}
    assert gaps["carrier.roc_auc_worst"] == "bad" and gaps["carrier.roc_auc_gap"] > 0.4


def test_calibration_bins_cover_all_rows():
    p = np.linspace(0, 1, 101)
    table = calibration_table((p > 0.5).astype(int), p, bins=10)
    assert table["rows"].sum() == 101 and len(table) == 10
