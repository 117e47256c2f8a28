"""The replay references' arithmetic (monitoring/references.py) on hand-made matrices."""

import itertools

import numpy as np
import pandas as pd
import pytest

from monitoring.references import (
    Schedule,
    cadence,
    gain_share,
    oracle,
    reference_table,
    schedule,
    scores,
    serving_models,
)

NAN = np.nan
# rows: model 0 (initial), then the retrain decided at the end of window 0, 1, 2; columns: windows 0..3
AUC = np.array(
    [
        [0.70, 0.70, 0.60, 0.60],
        [NAN, 0.72, 0.61, 0.60],
        [NAN, NAN, 0.80, 0.50],
        [NAN, NAN, NAN, 0.90],
    ]
)


def test_a_retrain_serves_from_the_next_window_on():
    assert serving_models([], 4) == (0, 0, 0, 0)
    assert serving_models([1], 4) == (0, 0, 2, 2)
    assert serving_models([0, 2], 4) == (0, 1, 1, 3)


@pytest.mark.parametrize(
    "every, retrains, models",
    [(1, (0, 1, 2), (0, 1, 2, 3)), (2, (1,), (0, 0, 2, 2)), (3, (2,), (0, 0, 0, 3)), (4, (), (0, 0, 0, 0))],
)
def test_cadence_retrains_after_every_c_windows(every, retrains, models):
    plan = cadence(every, 4)
    assert plan.retrains == retrains  # a retrain at the last window (every=4) serves nothing: not counted
    assert plan.models == models


def test_scores_follow_the_schedule_and_refuse_a_model_before_it_exists():
    assert scores(AUC, cadence(2, 4)).tolist() == [0.70, 0.70, 0.80, 0.50]
    with pytest.raises(ValueError, match="no score"):
        scores(AUC, Schedule((1,), (0, 2, 2, 2)))  # model 2 on window 1, before its retrain at window 1's end


@pytest.mark.parametrize(
    "budget, picks, total",
    [(0, (), 2.60), (1, (2,), 2.90), (2, (1, 2), 3.10), (3, (0, 1, 2), 3.12), (5, (0, 1, 2), 3.12)],
)
def test_oracle_picks_the_best_retrain_windows_for_its_budget(budget, picks, total):
    plan = oracle(AUC, budget)
    assert plan.retrains == picks
    assert scores(AUC, plan).sum() == pytest.approx(total)


def test_oracle_optimises_only_the_part_it_is_asked_about():
    first_three = np.array([True, True, True, False])
    plan = oracle(AUC, 1, first_three)
    assert plan.retrains == (1,)  # 0.70 + 0.70 + 0.80 beats a retrain at 0 (2.03) or none (2.00)
    assert oracle(AUC, 1, np.array([False, False, False, True])).retrains == (2,)


def test_oracle_minimises_a_lower_is_better_metric():
    brier = 1 - AUC
    assert oracle(brier, 1, higher=False).retrains == (2,)


@pytest.mark.parametrize("seed", range(5))
def test_oracle_equals_exhaustive_search(seed):
    rng = np.random.default_rng(seed)
    n, budget = 7, 3
    matrix = rng.uniform(0.6, 0.8, size=(n, n))
    for m in range(1, n):  # model m exists from window m on
        matrix[m, :m] = NAN
    part = rng.uniform(size=n) < 0.7
    best = max(
        scores(matrix, schedule(c, n))[part].sum()
        for k in range(budget + 1)
        for c in itertools.combinations(range(n - 1), k)
    )
    plan = oracle(matrix, budget, part)
    assert len(plan.retrains) <= budget
    assert scores(matrix, plan)[part].sum() == pytest.approx(best)


def test_gain_share():
    assert gain_share(0.71, 0.70, 0.72) == pytest.approx(0.5)
    assert gain_share(0.69, 0.70, 0.72) == pytest.approx(-0.5)
    assert np.isnan(gain_share(0.71, 0.70, 0.70))


def _long(matrix: np.ndarray, windows: list[str], seed: int = 0) -> pd.DataFrame:
    rows = [
        {"seed": seed, "model": m, "window": w, "roc_auc": matrix[m, j], "brier": 1 - matrix[m, j]}
        for m in range(len(windows))
        for j, w in enumerate(windows)
        if not np.isnan(matrix[m, j])
    ]
    return pd.DataFrame(rows)


def test_reference_table_shares_gains_and_best_cadence():
    ws = ["2013-07-01", "2013-07-08", "2013-07-15", "2013-07-22"]
    policies = pd.DataFrame(  # a replayed drift policy: one retrain at the end of window 1, then model 2
        {
            "policy": ["never"] * 4 + ["drift"] * 4,
            "seed": 0,
            "window": ws * 2,
            "roc_auc": [0.70, 0.70, 0.60, 0.60, 0.70, 0.70, 0.80, 0.50],
            "brier": [0.30, 0.30, 0.40, 0.40, 0.30, 0.30, 0.20, 0.50],
            "retrained": [False] * 5 + [True, False, False],
        }
    )
    table = reference_table(_long(AUC, ws), "2013-07-15", policies).set_index(["reference", "source", "part"])
    oracle_all = table.loc[("oracle", "matrix", "all")]
    assert oracle_all["budget"] == 1 and oracle_all["retrain_windows"] == "2013-07-15"
    assert oracle_all["auc_gain"] == pytest.approx((2.90 - 2.60) / 4)
    drift = table.loc[("drift", "replay", "all")]
    assert drift["auc_gain"] == pytest.approx((2.70 - 2.60) / 4)
    assert drift["auc_share_of_oracle"] == pytest.approx(1 / 3)
    assert drift["auc_gain_per_retrain"] == pytest.approx(0.025)
    # tuning half (first three windows): the oracle's one retrain at window 1 gains 0.2 over three windows
    tuned = table.loc[("oracle", "matrix", "tuning_half")]
    assert tuned["auc_gain"] == pytest.approx(0.2 / 3)
    assert table.loc[("drift", "replay", "tuning_half"), "auc_share_of_oracle"] == pytest.approx(1.0)
    # cadences on the tuning half: 1 -> .70 .72 .80, 2 -> .70 .70 .80, 4/8 -> never: cadence 1 is best
    best = table[table["best_cadence"]].index.get_level_values("reference").unique().tolist()
    assert best == ["cadence-1"]
    assert table.loc[("cadence-1", "matrix", "all"), "retrains"] == 3
    assert table.loc[("never", "matrix", "all"), "auc_gain"] == 0


@pytest.mark.integration
def test_references_quick_trains_every_retrain_and_scores_it_on_later_windows(tmp_path):
    """`python -m flows.references --quick`: three windows, three models (the initial one and a retrain at
    the end of each window but the last), each scored on the windows it could serve (~1-3 min)."""
    from flows.references import MATRIX, TABLE, main
    from tests.conftest import REPO

    main(["--quick", "--workers", "1", "--replay", str(tmp_path), "--project-dir", str(REPO)])
    long = pd.read_csv(tmp_path / MATRIX, dtype={"window": str})
    assert long.groupby("model")["window"].apply(list).to_dict() == {
        0: ["2013-07-01", "2013-07-08", "2013-07-15"],
        1: ["2013-07-08", "2013-07-15"],
        2: ["2013-07-15"],
    }
    assert long["roc_auc"].between(0.5, 1).all() and long["train_rows"].nunique() == 3  # each its own window
    table = pd.read_csv(tmp_path / TABLE).set_index(["reference", "part"])
    best = table.loc[("oracle", "all"), "mean_auc"]
    assert all(table.loc[(f"cadence-{c}", "all"), "mean_auc"] <= best + 1e-12 for c in (1, 2, 4, 8))
