"""A tiny replay through the real flows, service, monitoring, DVC, MLflow registry and gate.

Three weekly windows (April 2013) after a champion trained on January to March. Window 1 is corrupt
(60 % of `sched_dep_hour` missing), windows 2 and 3 carry a planted shift in `distance`. Expected:
the corrupt window raises the data-quality alert, is kept aside and trains nothing; the shift
triggers exactly one retrain (window 2) and an event; the cooldown holds window 3; with no shift
(`never` sees the same stream) nothing retrains. The production automation (scoped to the production
model) never sees the replay's events: no production retraining run is left behind."""

from __future__ import annotations

import json
import time

import pandas as pd
import pytest

from tests.conftest import make_project, project_env, set_params

pytestmark = [pytest.mark.smoke, pytest.mark.usefixtures("prefect_harness")]
MODEL = "flight-delay-replay-drift"
STABLE = ["carrier", "origin", "dest", "distance", "sched_dep_hour"]  # features without seasonal drift


@pytest.fixture(scope="module")
def replayed(tmp_path_factory):
    import os

    from flightloop.config import load_params
    from flows.deploy import deployment_id_for
    from flows.replay import replay
    from monitoring import alerts

    project = make_project(tmp_path_factory.mktemp("replay"))
    params = load_params(project / "params.yaml")
    set_params(
        project,
        {
            "monitoring.exclude_features": [f for f in params.data.features if f not in STABLE],
            "replay.start": "2013-04-01",
            "replay.end": "2013-05-31",  # the replay's -S override below cuts it to three windows
            "replay.tune_until": "2013-04-07",
            "replay.train": {
                "train.max_epochs": 2,
                "train.sample_frac": 0.3,
                "train.batch_size": 1024,
                "evaluate.baseline.max_iter": 20,
            },
            "replay.policies": {
                "never": {"triggers": ["never"]},
                "drift": {"triggers": ["data_drift"], "drift_share": 0.15, "cooldown_days": 28, "min_new_labels": 100},
            },
            "replay.scenarios": [
                {"window": "2013-04-01", "column": "sched_dep_hour", "missing_share": 0.6},
                {"window": "2013-04-08", "column": "distance", "add": 800.0, "until": "2013-04-15"},
            ],
        },
    )
    env = project_env(project)
    saved = {k: os.environ.get(k) for k in ("PATH", "PYTHONPATH", "MLFLOW_TRACKING_URI")}
    # as `make replay` runs it: the project's own store (not one an earlier test pointed MLflow at)
    os.environ.update(PATH=env["PATH"], PYTHONPATH=env["PYTHONPATH"])
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    deployment = deployment_id_for("retraining", str(project))
    # the production loop, as `make ui` sets it up: its automation listens for the production model
    alerts.ensure_retrain_automation(str(deployment), model_name="flight-delay", name="retrain on drift (replay test)")
    before = {r.id for r in deployment_runs(deployment)}  # the session's harness may hold other tests' runs
    try:
        result = replay(overrides={"replay.end": "2013-04-21"}, project_dir=str(project), seeds=1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    table = pd.read_csv(project / "reports" / "replay" / "windows.csv")
    return project, result, table, (deployment, before)


def deployment_runs(deployment) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )


def test_tables_and_plots_are_written(replayed):
    project, result, table, _ = replayed
    out = project / "reports" / "replay"
    written = {p.name for p in out.iterdir()}
    assert {"windows.csv", "summary.csv", "summary.json", "evidence.csv", "replay.png", "replay.html"} <= written
    assert list(table["window"].unique()) == ["2013-04-01", "2013-04-08", "2013-04-15"]
    assert set(table["policy"]) == {"never", "drift"} and (table["logged_rows"] == table["rows"]).all()
    summary = json.loads((out / "summary.json").read_text())
    assert summary["windows"] == 3 and summary["overrides"] == {"replay.end": "2013-04-21"}
    assert "2013-05-31" in (project / "params.yaml").read_text()  # an override changes this replay only
    assert summary["seeds"] == [0] and (table["seed"] == 0).all()  # one seed: the names of a one-seed replay
    evidence = pd.read_csv(out / "evidence.csv")
    assert set(evidence["policy"]) == {"drift"} and set(evidence["metric"]) == {"roc_auc", "brier"}
    assert set(evidence["part"]) == {"all", "tuning_half", "held_out_half"} and len(summary["vs_never"]) == 6
    whole = evidence[evidence["part"] == "all"]
    assert (whole["windows"] == 3).all() and (whole["ci_low"] <= whole["diff"]).all()
    assert (whole["diff"] <= whole["ci_high"]).all() and len(summary["vs_never_text"]) == 6
    # label-free estimates beside the realised figures, and how far they were off
    assert table[["est_auc", "est_brier"]].notna().all().all() and table["est_auc"].between(0.5, 1).all()
    accuracy = json.loads((out / "estimate_accuracy.json").read_text())
    assert set(accuracy) == {"never", "drift"} and accuracy["never"]["windows"] == 3
    assert accuracy["never"]["auc_mae"] == pytest.approx(
        (table.query("policy == 'never'").eval("est_auc - roc_auc")).abs().mean()
    )


def test_corrupt_window_alerts_and_trains_nothing(replayed):
    project, _, table, _ = replayed
    first = table[(table["policy"] == "drift") & (table["window"] == "2013-04-01")].iloc[0]
    assert first["decision"] == "data_quality" and not first["retrained"]
    kept = project / "reports" / "replay" / "work" / "drift" / "data" / "quarantine" / "monitoring"
    assert any(kept.rglob("*.parquet")), "the corrupt window must be kept aside"


def test_planted_shift_triggers_exactly_one_retrain_and_cooldown_holds(replayed):
    _, _, table, _ = replayed
    drift = table[table["policy"] == "drift"].set_index("window")
    assert drift["retrained"].tolist() == [False, True, False]
    assert drift.loc["2013-04-08", "decision"] == "data_drift" and drift.loc["2013-04-08", "events"] >= 1
    assert "cooldown" in drift.loc["2013-04-15", "reasons"]


def test_no_retrain_without_a_policy_that_fires(replayed):
    _, _, table, _ = replayed
    never = table[table["policy"] == "never"]
    assert not never["retrained"].any() and (never["champion_version"] == 1).all()


def test_retrain_went_through_dvc_gate_and_the_service(replayed):
    from mlflow import MlflowClient

    from flightloop.registry import history

    project, _, table, _ = replayed
    ws = project / "reports" / "replay" / "work" / "drift"
    events = history(MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}"), MODEL)
    gated = [e for e in events if e["action"] in ("promote", "refuse")]
    assert len(gated) == 1 and gated[0]["version"] == 2  # the one retrain, gated
    row = table[(table["policy"] == "drift") & (table["window"] == "2013-04-15")].iloc[0]
    assert row["champion_version"] == gated[0]["champion_after"]  # the service follows the gate's champion
    state = json.loads((ws / "reports" / "monitoring" / "state.json").read_text())
    assert [r["status"] for r in state["retrains"].values()] == ["completed"]
    # the rejected window never reaches training data
    manifest = json.loads((ws / "data" / "raw" / "manifest.json").read_text())
    [batch] = [b for b, m in manifest.items() if m["origin"] != "source"]
    ingested = pd.read_parquet(ws / "data" / "raw" / "batches" / f"{batch}.parquet")
    assert ingested["time_hour"].min() >= pd.Timestamp("2013-04-08")
    assert ingested["time_hour"].max() < pd.Timestamp("2013-04-14")  # labels only up to the delay


def test_a_replay_leaves_no_production_flow_run_behind(replayed):
    from prefect.events import emit_event

    from monitoring.alerts import model_resource
    from monitoring.policy import DRIFT_EVENT

    _, _, table, (deployment, before) = replayed
    assert table["events"].sum() >= 2  # the replay did emit drift and quality events, for its own models
    time.sleep(5)  # the automation acts asynchronously: give it time to (wrongly) react
    assert [r for r in deployment_runs(deployment) if r.id not in before] == []
    # the check can fail: an event of the production model does start the production retraining
    emit_event(event=DRIFT_EVENT, resource=model_resource("flight-delay", 1), payload={"request": None})
    for _ in range(60):
        if [r for r in deployment_runs(deployment) if r.id not in before]:
            break
        time.sleep(1)
    assert len([r for r in deployment_runs(deployment) if r.id not in before]) == 1
