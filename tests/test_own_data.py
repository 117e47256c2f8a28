"""A user's own tabular file (CSV) runs through the same stages with only params.yaml changed."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import REPO, make_project, run

pytestmark = pytest.mark.smoke


def churn_csv(path, rows: int = 3000, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    when = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 90 * 24, rows), unit="h")
    plan = rng.choice(["basic", "pro", "team"], rows)
    tenure = rng.gamma(2.0, 10.0, rows)
    tickets = rng.poisson(1.5, rows).astype(float)
    tickets[rng.random(rows) < 0.05] = np.nan  # missing values are imputed
    logit = -1.0 + 0.6 * tickets.clip(0, 5) - 0.05 * tenure + (plan == "basic") * 0.8
    churned = (rng.random(rows) < 1 / (1 + np.exp(-np.nan_to_num(logit)))).astype(int)
    pd.DataFrame(
        {
            "customer": np.arange(rows),
            "signup_at": when,
            "plan": plan,
            "tenure_days": tenure,
            "tickets": tickets,
            "churned": churned,
        }
    ).to_csv(path, index=False)


def test_own_csv_runs_the_whole_pipeline(tmp_path):
    project = make_project(tmp_path)
    churn_csv(project / "customers.csv")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"] = {
        "source": "customers.csv",
        "recipe": "table",
        "time_column": "signup_at",
        "label": "churned",
        "key": ["customer"],
        "start": "2024-01",
        "end": "2024-03",
        "categorical": ["plan"],
        "numeric": ["tenure_days", "tickets"],
        "slices": ["plan"],
    }
    params["validate"] = {
        "min_rows": 100,
        "allow_extra_columns": False,
        "columns": {
            "customer": {"dtype": "int", "min": 0},
            "signup_at": {"dtype": "datetime"},
            "plan": {"dtype": "str", "allowed": ["basic", "pro", "team"]},
            "tenure_days": {"dtype": "float", "min": 0},
            "tickets": {"dtype": "float", "min": 0, "max_missing": 0.2},
            "churned": {"dtype": "int", "min": 0, "max": 1},
        },
    }
    params["split"] = {"train": ["2024-01", "2024-01"], "valid": ["2024-02", "2024-02"], "test": ["2024-03", "2024-03"]}
    params["register"]["model_name"] = "churn"
    params["gate"]["slices"] = ["plan"]
    params["monitoring"]["exclude_features"] = []  # the flights' calendar features are not in this table
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    run(["dvc", "repro"], project)
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    registered = json.loads((project / "reports" / "registered.json").read_text())
    assert metrics["test"]["roc_auc"] > 0.65  # a real signal was planted
    assert registered["model_name"] == "churn" and registered["alias"] == "champion"
    assert sorted(p.name for p in (project / "data" / "validated").glob("*.parquet")) == [
        "2024-01.parquet",
        "2024-02.parquet",
        "2024-03.parquet",
    ]


def test_a_setting_that_names_a_column_the_table_lacks_is_refused_at_load(tmp_path):
    """Pointing data: at another table but leaving monitoring: naming the flights' features fails before
    the first stage, naming the key."""
    project = make_project(tmp_path)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["data"] |= {"categorical": ["plan"], "numeric": ["tenure_days"], "slices": []}
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run(["dvc", "repro"], project, check=False)
    assert failed.returncode != 0 and "monitoring.exclude_features names no feature" in failed.stderr + failed.stdout


def digits_csv(path) -> list[str]:
    """scikit-learn's bundled handwritten digits (1,797 8x8 images, BSD-3; no download) as a binary table:
    is the digit 5 or more. Rows get times in random order: 60% January (train), 20% February, 20% March.
    Returns the pixel columns that vary (the features)."""
    from sklearn.datasets import load_digits

    digits = load_digits(as_frame=True)
    pixels = [c for c in digits.data.columns if digits.data[c].std() > 0]
    frame = digits.data[pixels].astype(float)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(frame)).argsort()  # each row's position in a random order
    month = np.where(order < 0.6 * len(frame), 1, np.where(order < 0.8 * len(frame), 2, 3))
    frame.insert(0, "image", np.arange(len(frame)))
    frame.insert(1, "seen_at", pd.to_datetime([f"2024-{m:02d}-10" for m in month]))
    frame["large"] = (digits.target >= 5).astype(int)
    frame.to_csv(path, index=False)
    return pixels


@pytest.mark.parametrize("floors", ["default", "off"])
def test_a_small_table_lands_near_the_baseline_with_the_default_training(tmp_path, floors):
    """~1,080 training rows with params.yaml's own train: section (no hand-tuning) land within 0.01 ROC-AUC
    of the gradient-boosting baseline evaluate computes. With the small-table floors off (the fixed
    batch of 1024: ~2 updates an epoch) the same run falls short: the floors are what closes the gap."""
    defaults = yaml.safe_load((REPO / "params.yaml").read_text())
    project = make_project(tmp_path)
    pixels = digits_csv(project / "digits.csv")
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train"] = dict(defaults["train"])  # the shipped defaults, not the smoke tests' shrunk ones
    params["evaluate"] = dict(defaults["evaluate"])
    if floors == "off":
        params["train"] |= {"min_batches": 1, "min_steps": 0, "lr_schedule": "none"}
    params["data"] = {
        "source": "digits.csv",
        "recipe": "table",
        "time_column": "seen_at",
        "label": "large",
        "key": ["image"],
        "start": "2024-01",
        "end": "2024-03",
        "categorical": [],
        "numeric": pixels,
        "slices": [],
    }
    params["validate"] = {
        "min_rows": 100,
        "allow_extra_columns": False,
        "columns": {
            "image": {"dtype": "int", "min": 0},
            "seen_at": {"dtype": "datetime"},
            **{p: {"dtype": "float", "min": 0, "max": 16} for p in pixels},
            "large": {"dtype": "int", "min": 0, "max": 1},
        },
    }
    params["split"] = {"train": ["2024-01", "2024-01"], "valid": ["2024-02", "2024-02"], "test": ["2024-03", "2024-03"]}
    params["register"]["model_name"] = "digits"
    params["gate"]["slices"] = []
    params["monitoring"]["exclude_features"] = []
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    run(["dvc", "repro"], project)
    metrics = json.loads((project / "reports" / "metrics.json").read_text())
    net, baseline = metrics["test"]["roc_auc"], metrics["baseline"]["roc_auc"]
    assert baseline > 0.98  # the table is learnable: the gap is the network's to close
    if floors == "default":
        assert metrics["auc_gap_to_baseline"] <= 0.01, (net, baseline)
        importance = pd.read_csv(project / "reports" / "importance.csv")
        assert sorted(importance["feature"]) == sorted(pixels) and importance["importance"].iloc[0] > 0
    else:
        assert metrics["auc_gap_to_baseline"] > 0.01, (net, baseline)
