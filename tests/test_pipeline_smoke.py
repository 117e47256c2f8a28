"""The whole DVC pipeline on a small sample: stages, no-op rerun, partial rerun, registry round trip."""

import json
import textwrap

import pytest
import yaml

from tests.conftest import run, set_params

pytestmark = pytest.mark.smoke
STAGES = ["ingest", "validate", "prepare", "train", "evaluate", "register", "gate"]


def test_repro_produces_metrics_and_a_registered_champion(small_project):
    metrics = json.loads((small_project / "reports" / "metrics.json").read_text())
    assert 0.55 < metrics["test"]["roc_auc"] <= 1.0
    assert {"roc_auc", "pr_auc", "log_loss", "brier", "precision", "recall", "f1", "accuracy"} <= set(metrics["test"])
    assert "roc_auc" in metrics["baseline"] and "carrier.roc_auc_gap" in metrics["slices"]
    registered = json.loads((small_project / "reports" / "registered.json").read_text())
    assert registered["version"] == 1 and registered["alias"] == "champion"
    lock = yaml.safe_load((small_project / "dvc.lock").read_text())
    assert list(lock["stages"]) == STAGES
    assert registered["data_hash"].endswith(".dir")


def test_second_repro_does_nothing(small_project):
    out = run(["dvc", "repro"], small_project).stdout
    assert "Data and pipelines are up to date" in out
    assert "Running stage" not in out


def test_champion_loads_by_alias_in_a_fresh_process(small_project):
    code = textwrap.dedent("""
        import json, mlflow, pandas as pd
        from flightloop import tracking
        mlflow.set_tracking_uri(tracking.tracking_uri())
        model = mlflow.pyfunc.load_model("models:/flight-delay@champion")
        rows = pd.read_parquet("data/prepared/test.parquet").head(20)
        p = model.predict(rows)
        client = mlflow.MlflowClient()
        v = client.get_model_version_by_alias("flight-delay", "champion")
        print(json.dumps({"n": len(p), "min": float(p.min()), "max": float(p.max()), "tags": v.tags,
                          "inputs": [c["name"] for c in model.metadata.get_input_schema().to_dict()]}))
    """)
    out = json.loads(run(["python", "-c", code], small_project).stdout.strip().splitlines()[-1])
    assert out["n"] == 20 and 0.0 <= out["min"] <= out["max"] <= 1.0
    assert {"git_commit", "data_hash", "params_hash", "run_id"} <= set(out["tags"])
    assert "dep_delay" not in out["inputs"] and "carrier" in out["inputs"]


def test_changed_train_param_reruns_only_train_and_after(small_project):
    set_params(small_project, {"train.lr": 0.004})
    out = run(["dvc", "repro"], small_project).stdout
    ran = [s for s in STAGES if f"Running stage '{s}'" in out]
    assert ran == ["train", "evaluate", "register", "gate"], out
    registered = json.loads((small_project / "reports" / "registered.json").read_text())
    assert registered["version"] == 2 and registered["alias"] == "challenger"
