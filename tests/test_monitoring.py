"""Monitoring: drift, quality, labels with delay, the retraining policy, events and the automation."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from monitoring import alerts, policy
from monitoring.config import MonitoringCfg, PolicyCfg
from monitoring.drift import (
    build_reference,
    drift_report,
    feature_drift,
    join_labels,
    report_values,
    summarize_window,
)
from monitoring.report import quarantine_window
from tasks.config import DataCfg

DATA = DataCfg(
    start="2013-01",
    end="2013-06",
    time_column="time_hour",
    label="late",
    key=("flight", "origin"),
    categorical=("carrier", "origin"),
    numeric=("temp", "distance"),
)
MON = MonitoringCfg(min_labelled_rows=20)
POLICY = PolicyCfg(drift_share=0.25, min_new_labels=0, cooldown_days=14, label_delay_days=1)
END = datetime(2013, 6, 30, 23)


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
    from tasks.evaluate import classification_metrics

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
    decision = policy.decide(summary, policy.PolicyState(), POLICY, END)
    assert decision.retrain and decision.kind == "data_drift"
    assert feature in decision.reasons[0]
    assert decision.events == [policy.DRIFT_EVENT]
    assert decision.training_window == ("2013-03", "2013-06")
    json.dumps(summary.to_json())  # serialisable as it is written to reports/monitoring/<id>.json


def test_no_shift_no_retrain(reference):
    summary = summarize(rows(1000, seed=2), reference, labels=rows(1000, seed=2))
    assert summary.drift.drifted == [] and summary.score_drift is not None and not summary.score_drift.detected
    decision = policy.decide(summary, policy.PolicyState(), POLICY, END)
    assert not decision.retrain and decision.kind == "none" and decision.events == []


def test_cooldown_holds_a_second_drifting_window(reference):
    drifting = summarize(shift_temp(rows(1000, seed=3)), reference)
    first = policy.decide(drifting, policy.PolicyState(), POLICY, END)
    state = policy.advance(policy.PolicyState(), drifting, first, END)
    assert first.retrain and state.last_retrain_at == END

    inside = policy.decide(drifting, state, POLICY, END + timedelta(days=5))
    assert not inside.retrain and inside.kind == "data_drift" and inside.events == []
    assert any("cooldown" in r for r in inside.reasons)

    after = policy.decide(drifting, state, POLICY, END + timedelta(days=15))
    assert after.retrain


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
    decision = policy.decide(bad, policy.PolicyState(), POLICY.model_copy(update={"triggers": ("performance",)}), END)
    assert decision.retrain and decision.kind == "performance" and decision.events == [policy.PERFORMANCE_EVENT]


def missing_temp(frame):
    return frame.assign(temp=frame["temp"].where(np.arange(len(frame)) % 5 >= 3))  # 60% missing


def unseen_origin(frame):
    return frame.assign(origin=np.where(np.arange(len(frame)) % 4 == 0, "XXX", frame["origin"]))


@pytest.mark.parametrize(("corrupt", "column"), [(missing_temp, "temp"), (unseen_origin, "origin")])
def test_corrupt_window_alerts_is_quarantined_and_never_retrains(reference, tmp_path, corrupt, column):
    window = corrupt(shift_temp(rows(1000, seed=6)))  # drifting too: quality must still win
    summary = summarize(window, reference)
    decision = policy.decide(summary, policy.PolicyState(), POLICY, END)
    assert decision.fired and not decision.retrain and decision.kind == "data_quality"
    assert decision.quarantine and any(p.startswith(column) for p in decision.quality_problems)
    assert decision.events == [policy.QUALITY_EVENT]
    kept = quarantine_window(window, summary, decision, tmp_path)
    pd.testing.assert_frame_equal(pd.read_parquet(kept), window.reset_index(drop=True))
    assert json.loads(kept.with_suffix(".json").read_text())["problems"] == decision.quality_problems
    # its labels are not counted towards the next retrain either
    state = policy.advance(policy.PolicyState(), summary.model_copy(update={"labelled_rows": 1000}), decision, END)
    assert state.labels_since_retrain == 0 and state.last_retrain_at is None


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
    assert policy.decide(summary, state, cfg, END).retrain is expect


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
    decision = policy.decide(summary, policy.PolicyState(), POLICY, END)
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


def test_monitoring_flow_end_to_end(prefect_api, tmp_path, monkeypatch):
    from flows.monitoring import monitoring
    from tasks.config import set_dotted

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    raw = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text())
    for key, value in {
        "data.categorical": list(DATA.categorical),
        "data.numeric": list(DATA.numeric),
        "data.key": list(DATA.key),
        "data.slices": [],
        "monitoring.exclude_features": [],
        "monitoring.min_labelled_rows": 20,
        "policy.drift_share": 0.25,
        "policy.min_new_labels": 0,
    }.items():
        set_dotted(raw, key, value)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(raw))
    rows(2000, seed=0, start="2013-01-01").to_parquet(tmp_path / "train.parquet")
    batch = shift_temp(rows(1000, seed=10))
    batch.to_parquet(tmp_path / "2013-06.parquet")
    (tmp_path / "metrics.json").write_text(json.dumps({"test": CHAMPION}))
    kwargs = dict(
        params_path=str(tmp_path / "params.yaml"),
        batch=str(tmp_path / "2013-06.parquet"),
        labels=None,  # the batch's own label column, subject to the delay
        reference=str(tmp_path / "train.parquet"),
        metrics=str(tmp_path / "metrics.json"),
        registered=str(tmp_path / "none.json"),
        reports=str(tmp_path / "reports"),
        state_path=str(tmp_path / "reports" / "state.json"),
        quarantine=str(tmp_path / "quarantine"),
    )
    out = monitoring(**kwargs)
    assert out["decision"]["retrain"] and out["decision"]["kind"] == "data_drift"
    assert out["events"] == [policy.DRIFT_EVENT]
    summary = out["summary"]
    last_day = batch["time_hour"] > batch["time_hour"].max() - timedelta(days=1)
    assert summary["labelled_rows"] == int((~last_day).sum())  # the last day's labels have not arrived
    assert (tmp_path / "reports" / "2013-06.html").stat().st_size > 0
    assert json.loads((tmp_path / "reports" / "2013-06.json").read_text())["decision"]["retrain"] is True
    state = json.loads((tmp_path / "reports" / "state.json").read_text())
    assert state["last_retrain_at"] is not None

    import mlflow

    run = mlflow.get_run(out["mlflow_run_id"])
    assert run.data.tags["model_name"] == "flight-delay" and run.data.tags["retrain"] == "true"
    assert run.data.metrics["drift_score.temp"] == pytest.approx(summary["drift"]["scores"]["temp"])

    again = monitoring(**{**kwargs, "html": False, "log_mlflow": False})  # same data time: inside the cooldown
    assert not again["decision"]["retrain"] and again["events"] == []
