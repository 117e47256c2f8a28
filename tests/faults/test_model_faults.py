"""Faults of the model and its tracking: nothing unpickled from the registry, natural inputs score, the
MLflow store and DVC agree after the store is lost, and a training killed mid-epoch changes nothing live."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import yaml

from flows.workspace import clone_workspace
from tests.conftest import project_env, run, set_params

pytestmark = pytest.mark.smoke
NAME = "flight-delay"
FIX = "dvc repro --force --downstream train"  # what a stage says when its run is gone from the store


class Payload:
    """Unpickling this runs code: it writes `marker` (so a test can prove it never ran)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def client(project: Path):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


def champion(project: Path) -> int | None:
    import mlflow

    try:
        return int(client(project).get_model_version_by_alias(NAME, "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


def prepared_md5(project: Path) -> str:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    return next(o["md5"] for o in lock["stages"]["prepare"]["outs"] if o["path"] == "data/prepared")


def register_tampered_version(project: Path, marker: Path, scratch: Path) -> int:
    """What anyone with write access to the registry can do: a copy of the champion whose model.pt carries a
    pickle payload, registered and made champion."""
    import mlflow
    import torch

    c = client(project)
    live = c.get_model_version_by_alias(NAME, "champion")
    src = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{NAME}/{live.version}", dst_path=str(scratch), tracking_uri=f"sqlite:///{project / 'mlflow.db'}"
        )
    )
    saved = torch.load(src / "artifacts" / "model.pt", weights_only=True)
    torch.save({**saved, "extra": Payload(marker)}, src / "artifacts" / "model.pt")
    (src / "registered_model_meta").unlink(missing_ok=True)
    run_ = c.create_run(c.get_experiment_by_name(NAME).experiment_id, run_name="tampered")
    c.log_artifacts(run_.info.run_id, str(src), artifact_path="model")
    c.set_terminated(run_.info.run_id)
    version = c.create_model_version(NAME, source=f"{run_.info.artifact_uri}/model", run_id=run_.info.run_id)
    c.set_registered_model_alias(NAME, "champion", version.version)
    return int(version.version)


def test_a_pickle_payload_in_a_registered_model_is_refused_and_the_service_keeps_its_model(
    small_project, tmp_path, monkeypatch
):
    from starlette.testclient import TestClient

    from flightloop.config import load_params
    from models.packaged import UnsafeModelError, load_scorer, load_with_reference
    from serving.app import create_app

    project = clone_workspace(small_project, tmp_path / "p")
    marker = tmp_path / "payload-ran"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    monkeypatch.delenv("SERVING_TOKEN", raising=False)
    monkeypatch.chdir(project)
    params = load_params(project / "params.yaml")
    app = create_app(params.serving, NAME, cache=tmp_path / "cache", start_follower=False)
    test_rows = pd.read_parquet(project / "data" / "prepared" / "test.parquet").head(2)
    rows = json.loads(test_rows[list(params.data.features)].to_json(orient="records"))
    with TestClient(app) as http:
        live = http.post("/reload").json()["version"]
        assert http.get("/model").json()["version"] == live
        tampered = register_tampered_version(project, marker, tmp_path / "src")
        refused = http.post("/reload")
        assert refused.status_code == 503, f"loaded: {refused.json()}, payload ran: {marker.exists()}"
        detail = refused.json()["detail"]
        assert f"models:/{NAME}/{tampered}" in detail and "refused" in detail and "pickled" in detail, detail
        assert http.get("/model").json()["version"] == live  # the old model stays live ...
        scored = http.post("/predict", json=rows)
        assert scored.status_code == 200 and scored.json()["model_version"] == live  # ... and keeps serving
    # monitoring (load_with_reference) and batch scoring (load_scorer) load through the same function
    for load in (load_with_reference, load_scorer):
        with pytest.raises(UnsafeModelError, match=f"models:/{NAME}/{tampered}"):
            load(NAME, tampered, tmp_path / load.__name__)
    assert not marker.exists(), "the payload ran"


PYFUNC = textwrap.dedent("""
    import json, os, pathlib, traceback
    import mlflow, pandas as pd
    from flightloop import tracking
    mlflow.set_tracking_uri(tracking.tracking_uri())
    out = {}
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "false"  # MLflow reads it at load time
    try:
        model = mlflow.pyfunc.load_model("models:/flight-delay@champion")
        out["without_pickle"] = "loaded"
    except Exception as exc:
        out["without_pickle"] = f"{type(exc).__name__}: {exc}"
        os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"
        model = mlflow.pyfunc.load_model("models:/flight-delay@champion")
    folder = pathlib.Path(mlflow.artifacts.download_artifacts("models:/flight-delay@champion"))
    out["files"] = sorted(p.name for p in folder.iterdir())
    out["flavor"] = model.metadata.flavors["python_function"]
    meta = json.loads(next(folder.rglob("artifacts/meta.json")).read_text())
    rows = pd.read_parquet("data/prepared/test.parquet").head(200)[meta["features"]]
    numeric = [c for c in meta["numeric"] if rows[c].notna().all() and (rows[c] % 1 == 0).all()]
    ints = rows.astype({c: "int64" for c in numeric})
    out["int_columns"] = numeric
    out["float"] = model.predict(rows).tolist()
    try:
        out["int"] = model.predict(ints).tolist()
    except Exception as exc:
        out["int"] = f"{type(exc).__name__}: {str(exc)[-300:]}"
    bad = rows.astype({"temp": object})
    bad.loc[bad.index[5], "temp"] = "warm"
    try:
        model.predict(bad)
        out["bad"] = "scored"
    except Exception as exc:
        out["bad"] = f"{type(exc).__name__}: {exc}"
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def champion_pyfunc(small_project) -> dict:
    """`mlflow.pyfunc.load_model` of the champion in a fresh process, and what it made of three frames."""
    return json.loads(run(["python", "-c", PYFUNC], small_project).stdout.strip().splitlines()[-1])


def test_champion_pyfunc_is_code_not_a_pickled_python_model(champion_pyfunc):
    assert champion_pyfunc["without_pickle"] == "loaded", champion_pyfunc["without_pickle"]
    flavor = champion_pyfunc["flavor"]
    assert flavor["loader_module"] == "mlflow.pyfunc.loaders.code_model" and "python_model" not in flavor
    assert not [f for f in champion_pyfunc["files"] if f.endswith((".pkl", ".pickle"))], champion_pyfunc["files"]


def test_champion_pyfunc_scores_int64_columns_like_float_ones(champion_pyfunc):
    assert {"month", "day_of_week", "sched_dep_hour"} <= set(champion_pyfunc["int_columns"])
    assert isinstance(champion_pyfunc["int"], list), champion_pyfunc["int"]
    assert champion_pyfunc["int"] == pytest.approx(champion_pyfunc["float"], abs=1e-6)
    scores = champion_pyfunc["float"]
    assert len(scores) == 200 and 0 < min(scores) < max(scores) < 1


def test_champion_pyfunc_names_a_numeric_column_that_holds_text(champion_pyfunc):
    assert champion_pyfunc["bad"].startswith(("ValueError", "MlflowException")), champion_pyfunc["bad"]
    assert "temp" in champion_pyfunc["bad"] and "'warm'" in champion_pyfunc["bad"]


def test_test_metrics_are_linked_to_the_logged_model_with_their_dataset(small_project):
    c = client(small_project)
    registered = json.loads((small_project / "reports" / "registered.json").read_text())
    metrics = json.loads((small_project / "reports" / "metrics.json").read_text())
    version = c.get_model_version(NAME, str(registered["version"]))
    model = c.get_logged_model(version.source.removeprefix("models:/"))
    linked = [m for m in model.metrics if m.key == "test.roc_auc"]
    assert linked and linked[-1].value == pytest.approx(metrics["test"]["roc_auc"])
    assert linked[-1].dataset_name == "prepared/test" and linked[-1].dataset_digest == prepared_md5(small_project)
    assert model.source_run_id == version.run_id == registered["run_id"] and str(model.status) == "READY"


def test_training_data_is_a_dataset_input_with_its_dvc_hash(small_project):
    registered = json.loads((small_project / "reports" / "registered.json").read_text())
    inputs = client(small_project).get_run(registered["run_id"]).inputs.dataset_inputs
    by_context = {next(t.value for t in d.tags if t.key == "mlflow.data.context"): d.dataset for d in inputs}
    assert {"training", "validation", "testing"} <= set(by_context), by_context
    train = by_context["training"]
    assert train.name == "prepared/train" and train.digest == prepared_md5(small_project)
    assert json.loads(train.source)["uri"].endswith("data/prepared/train.parquet"), train.source


def test_training_run_records_system_metrics(small_project):
    registered = json.loads((small_project / "reports" / "registered.json").read_text())
    c = client(small_project)
    keys = set(c.get_run(registered["run_id"]).data.metrics)
    assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= keys, sorted(keys)
    history = c.get_metric_history(registered["run_id"], "system/cpu_utilization_percentage")
    assert history and all(0 <= m.value <= 100 * os.cpu_count() for m in history)


def assert_trained_into_this_store(project: Path, out: str) -> None:
    """Train ran again, and the store now holds its run and a champion registered from it."""
    assert "Running stage 'train'" in out and "Running stage 'register'" in out, out
    run_id = json.loads((project / "artifacts" / "train" / "run.json").read_text())["run_id"]
    c = client(project)
    assert c.get_run(run_id).info.status == "FINISHED"
    assert champion(project) == 1 and c.get_model_version(NAME, "1").run_id == run_id
    assert "Data and pipelines are up to date" in run(["dvc", "repro"], project).stdout  # and it stays so


def test_repro_after_the_tracking_store_is_deleted_retrains_into_the_new_store(small_project, tmp_path):
    project = clone_workspace(small_project, tmp_path / "p")
    shutil.rmtree(project / "mlartifacts")
    (project / "mlflow.db").unlink()
    assert_trained_into_this_store(project, run(["dvc", "repro"], project).stdout)


def test_repro_after_make_clean_does_not_restore_runs_the_store_lost(small_project, tmp_path):
    project = clone_workspace(small_project, tmp_path / "p")
    clean = "data/raw data/validated data/prepared data/quarantine data/predictions data/scored artifacts reports"
    for name in [*clean.split(), "mlflow.db", "mlartifacts", ".prefect", ".runs", "dvc.lock"]:  # Makefile `clean`
        path = project / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)
    proc = run(["dvc", "repro"], project, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert_trained_into_this_store(project, proc.stdout)


def test_a_stage_whose_run_the_store_lost_says_the_command_that_fixes_it(small_project, tmp_path):
    project = clone_workspace(small_project, tmp_path / "p")
    (project / "mlflow.db").unlink()  # the database alone: its artifact folder (and DVC's view) stays
    run_id = json.loads((project / "artifacts" / "train" / "run.json").read_text())["run_id"]
    for stage in ("evaluate", "register"):
        proc = run(["python", "-m", f"tasks.{stage}"], project, check=False)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
        assert run_id in proc.stderr and FIX in proc.stderr, proc.stderr[-2000:]
    assert_trained_into_this_store(project, run(FIX.split(), project).stdout)


def test_training_killed_mid_epoch_leaves_the_champion_and_the_next_repro_succeeds(small_project, tmp_path):
    project = clone_workspace(small_project, tmp_path / "p")
    set_params(project, {"train.lr": 0.002})  # so that train must run again
    c = client(project)
    live, versions = champion(project), len(c.search_model_versions(f"name='{NAME}'"))
    registered = (project / "reports" / "registered.json").read_text()
    experiment = c.get_experiment_by_name(NAME).experiment_id
    runs_before = {r.info.run_id for r in c.search_runs([experiment])}

    proc = subprocess.Popen(
        ["python", "-m", "tasks.train"],
        cwd=project,
        env=project_env(project),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    for line in proc.stdout:  # the stage prints a line as each epoch ends: kill it during the second one
        seen.append(line)
        if line.startswith("epoch 1/"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "".join(seen)[-2000:]

    assert champion(project) == live and len(c.search_model_versions(f"name='{NAME}'")) == versions
    assert (project / "reports" / "registered.json").read_text() == registered
    killed = [r for r in c.search_runs([experiment]) if r.info.run_id not in runs_before]
    assert len(killed) == 1 and killed[0].info.status == "RUNNING"  # what SIGKILL leaves: no model from it
    assert not (killed[0].outputs and killed[0].outputs.model_outputs)

    out = run(["dvc", "repro"], project).stdout
    assert "Running stage 'train'" in out and "Running stage 'gate'" in out, out
    new = json.loads((project / "reports" / "registered.json").read_text())
    assert new["version"] == versions + 1 and new["run_id"] != killed[0].info.run_id
    gate = json.loads((project / "reports" / "gate.json").read_text())
    assert champion(project) == gate["champion_after"] in (live, new["version"])
    assert "up to date" in run(["dvc", "status"], project).stdout
