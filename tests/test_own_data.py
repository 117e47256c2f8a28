"""A user's own tabular file (CSV) runs through the same stages with only params.yaml changed."""

import json

import numpy as np
import pandas as pd
import pytest
import yaml

from tests.conftest import make_project, run

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
