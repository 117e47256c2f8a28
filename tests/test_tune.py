"""The hyperparameter study: rolling folds without leakage, one MLflow child run per trial under a parent,
pruning of a bad trial, the budget, and `--apply` rewriting only the tuned keys of params.yaml."""

from __future__ import annotations

import difflib
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml

from flightloop.config import ParamsError, load_params
from models.preprocess import Preprocessor
from tasks import tune
from tests.conftest import REPO

MONTHS = ("2013-01", "2013-02", "2013-03", "2013-04")
# a tiny study: 2 folds (Jan|Feb -> Mar, Jan..Mar -> Apr), 3 short epochs, the learning rate tuned
TINY = {
    "train.lr": 0.01,
    "tune.folds": 2,
    "tune.startup_trials": 1,
    "tune.train": {"train.max_epochs": 3, "train.patience": 3, "train.batch_size": 32},
    "tune.space": {"train.lr": {"low": 1e-7, "high": 0.05, "log": True}, "model.dropout": {"low": 0.0, "high": 0.3}},
}


def tiny_params(**overrides):
    return load_params(REPO / "params.yaml", overrides={**TINY, **overrides})


def feature_rows(params, months=MONTHS, rows=300, seed=0) -> pd.DataFrame:
    """Synthetic feature rows: the label is a signed sum of the numeric features (a random network ranks
    them at chance, a trained one well)."""
    rng = np.random.default_rng(seed)
    data = params.data
    parts = []
    for month in months:
        hours = pd.to_timedelta(rng.integers(0, 27 * 24, rows), unit="h")
        part = {data.time_column: pd.Timestamp(f"{month}-01") + hours}
        part.update({c: rng.choice(["AA", "BB", "CC"], rows).astype(object) for c in data.categorical})
        part.update({c: rng.normal(size=rows) for c in data.numeric})
        parts.append(pd.DataFrame(part))
    frame = pd.concat(parts, ignore_index=True)
    signs = np.where(np.arange(len(data.numeric)) % 2 == 0, 1.0, -1.0)
    z = frame[list(data.numeric)].to_numpy() @ signs / np.sqrt(len(signs))
    frame[data.label] = (z + 0.3 * rng.normal(size=len(frame)) > 0).astype("int64")
    return frame.sort_values(data.time_column).reset_index(drop=True)


@pytest.mark.parametrize(
    "months, n, expected",
    [
        (["2013-01", "2013-02", "2013-03", "2013-04", "2013-05"], 3, [(2, "2013-03"), (3, "2013-04"), (4, "2013-05")]),
        (["2013-02", "2013-01", "2013-01"], 1, [(1, "2013-02")]),
    ],
)
def test_rolling_folds_validate_on_a_later_month_never_trained_on(months, n, expected):
    folds = tune.rolling_folds(months, n)
    assert [(len(f.train), f.valid) for f in folds] == expected
    for fold in folds:
        assert fold.valid not in fold.train and max(fold.train) < fold.valid
        assert list(fold.train) == sorted(set(months))[: len(fold.train)]  # every earlier month


def test_too_few_months_for_the_folds_is_an_error():
    with pytest.raises(ValueError, match="3 folds need at least 4 months"):
        tune.rolling_folds(["2013-01", "2013-02", "2013-03"], 3)


def test_a_folds_preprocessor_is_fitted_on_its_training_months_only():
    params = tiny_params()
    frame = feature_rows(params)
    col, num = params.data.categorical[0], params.data.numeric[0]
    april = tune.months_of(frame, params.data.time_column) == "2013-04"
    frame.loc[april[april].index[:50], col] = "ZZ"  # a category only the validation month has
    frame.loc[april, num] += 100.0  # values only the validation month has
    fold = tune.rolling_folds(MONTHS, 1)[0]
    train, valid, pre = tune.fold_frames(frame, fold, params)
    assert set(tune.months_of(train, params.data.time_column)) == {"2013-01", "2013-02", "2013-03"}
    assert set(tune.months_of(valid, params.data.time_column)) == {"2013-04"}
    assert "ZZ" not in pre.vocab[col] and pre.high[num] < 50
    data = params.data
    assert pre == Preprocessor.fit(train, data.categorical, data.numeric, params.prepare.min_category_count)


def test_a_study_logs_a_parent_and_a_child_run_per_trial_and_prunes_a_bad_trial(tmp_path, monkeypatch):
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    params = tiny_params()
    frame = feature_rows(params)
    fitted_on: list[set[str]] = []
    real_fit = Preprocessor.fit.__func__

    def spy(cls, rows, *args, **kwargs):
        fitted_on.append(set(tune.months_of(rows, params.data.time_column)))
        return real_fit(cls, rows, *args, **kwargs)

    monkeypatch.setattr(Preprocessor, "fit", classmethod(spy))
    real_study = tune.make_study

    def with_a_bad_trial(p):
        study = real_study(p)  # trial 0: the params' own values (lr 0.01)
        study.enqueue_trial({"train.lr": 1e-7, "model.dropout": 0.0})  # trial 1: learns nothing
        return study

    monkeypatch.setattr(tune, "make_study", with_a_bad_trial)
    result = tune.run(frame, params, tmp_path / "tune", trials=3)

    assert fitted_on == [{"2013-01", "2013-02"}, {"2013-01", "2013-02", "2013-03"}]  # once per fold, train months
    states = [t.state.name for t in result["study"].trials]
    assert len(states) == 3 and states[0] == "COMPLETE" and states[1] == "PRUNED"

    client = mlflow.MlflowClient()
    parent = client.get_run(result["run_id"])
    assert parent.data.params["fold0"] == "2013-01..2013-02 -> 2013-03"
    assert parent.data.params["fold1"] == "2013-01..2013-03 -> 2013-04"
    assert parent.data.metrics["trials.pruned"] == states.count("PRUNED")
    assert parent.data.metrics["trials.complete"] == states.count("COMPLETE")
    children = client.search_runs(
        [parent.info.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'"
    )
    by_trial = {int(c.data.tags["trial"]): c for c in children}
    assert sorted(by_trial) == [0, 1, 2]
    first, bad = by_trial[0].data, by_trial[1].data
    assert float(first.params["train.lr"]) == 0.01 and first.tags["defaults"] == "True"
    assert first.metrics["cv.roc_auc"] == pytest.approx(
        (first.metrics["fold0.roc_auc"] + first.metrics["fold1.roc_auc"]) / 2
    )
    assert first.metrics["cv.roc_auc"] > 0.75  # the signal is learnable in 3 epochs
    assert {"fold0.brier", "fold1.brier", "cv.brier"} <= set(first.metrics)
    assert bad.tags["state"] == "PRUNED" and float(bad.params["train.lr"]) == 1e-7
    assert "fold0.roc_auc" in bad.metrics and "fold1.roc_auc" not in bad.metrics and "cv.roc_auc" not in bad.metrics

    best = yaml.safe_load((tmp_path / "tune" / "best_params.yaml").read_text())
    assert set(best["params"]) == set(params.tune.space) and best["trial"] != 1
    assert best["defaults_cv"]["roc_auc"] == pytest.approx(first.metrics["cv.roc_auc"], abs=1e-5)
    assert best["cv"]["roc_auc"] >= best["defaults_cv"]["roc_auc"]


def test_the_minutes_budget_stops_the_study(tmp_path):
    params = tiny_params(**{"tune.folds": 1, "tune.train": {"train.max_epochs": 1}})
    study = tune.make_study(params)
    tune.optimize(study, feature_rows(params, rows=100), params, trials=5, minutes=1e-4)  # 6 ms: one trial
    assert len(study.trials) == 1


@pytest.mark.parametrize(
    "override, message",
    [
        ({"tune.space": {"train.lrr": {"low": 0.1, "high": 0.2}}}, "train.lrr"),
        ({"tune.space": {"data.label": {"choices": ["x"]}}}, "data.label"),
        ({"tune.space": {"model.dropout": {"low": 0.1, "high": 1.5}}}, "tune.space.model.dropout"),
        ({"tune.space": {"train.lr": {"low": 0.0, "high": 0.1, "log": True}}}, "log range"),
        ({"tune.space": {"train.lr": {"low": 0.1}}}, "low"),
        ({"tune.trials": None, "tune.minutes": None}, "budget"),
        ({"tune.train": {"train.max_epoch": 2}}, "train.max_epoch"),
    ],
)
def test_a_bad_tune_section_is_refused_at_load(override, message):
    with pytest.raises(ParamsError, match=message):
        load_params(REPO / "params.yaml", overrides=override)


def test_apply_rewrites_exactly_the_tuned_keys_and_keeps_the_comments(tmp_path, capsys):
    target = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", target)
    before = target.read_text()
    values = {"train.lr": 0.00206, "model.hidden": [512, 256], "train.weight_decay": 1e-05, "train.patience": 7}
    best = tmp_path / "best_params.yaml"
    tune.write_best({"params": values, "trial": 3, "cv": {"roc_auc": 0.7, "brier": 0.2}}, best)

    tune.main(["--apply", str(best), "--params", str(target)])

    after = target.read_text()
    changed = [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:1] in "+-"]
    assert len(changed) == 2 * len(values)  # one line out and one in per key, nothing else moved
    assert "  hidden: [512, 256]" in after.splitlines() and "  weight_decay: 1.0e-05" in after.splitlines()
    assert any(line.startswith("  patience: 7                   # early stopping") for line in after.splitlines())
    comments = lambda text: [line.split("#", 1)[1] for line in text.splitlines() if "#" in line]  # noqa: E731
    assert comments(before) == comments(after)
    old, new = yaml.safe_load(before), yaml.safe_load(after)
    for key, value in values.items():
        section, name = key.split(".")
        assert new[section][name] == value
        new[section][name] = old[section][name]
    assert new == old
    out = capsys.readouterr().out
    assert "git diff" in out and "dvc exp run -S train.lr=0.00206 -S 'model.hidden=[512, 256]'" in out


def test_apply_refuses_a_bad_value_before_writing(tmp_path):
    target = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", target)
    best = tmp_path / "best_params.yaml"
    best.write_text(yaml.safe_dump({"params": {"train.lr": 0.01, "model.dropout": 1.5}}))
    with pytest.raises(ParamsError, match="model.dropout"):
        tune.main(["--apply", str(best), "--params", str(target)])
    assert target.read_text() == (REPO / "params.yaml").read_text()
