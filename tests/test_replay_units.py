import os

import pandas as pd
import pytest

from monitoring.loop import new_labelled_rows
from monitoring.policy import retrain_split
from monitoring.replay import rows_in, windows


def test_weekly_windows_tile_the_range():
    ws = windows("2013-07-01", "2013-07-31", 7)
    assert [w.window_id for w in ws] == ["2013-07-01", "2013-07-08", "2013-07-15", "2013-07-22", "2013-07-29"]
    assert ws[-1].end == pd.Timestamp("2013-08-01")  # last window is short
    assert all(a.end == b.start for a, b in zip(ws, ws[1:]))


def test_window_length_must_be_positive():
    with pytest.raises(ValueError, match="at least one day"):
        windows("2013-07-01", "2013-07-31", 0)


@pytest.mark.parametrize("delay, visible", [(0, 4), (1, 3), (2.5, 2), (10, 0)])
def test_a_retrain_never_takes_rows_whose_label_has_not_arrived(delay, visible):
    times = pd.to_datetime(["2013-07-01 06:00", "2013-07-02 06:00", "2013-07-03 06:00", "2013-07-04 06:00"])
    frame = pd.DataFrame({"time_hour": times, "late": [0, 1, 0, 1]})
    now = pd.Timestamp("2013-07-05")
    horizon = now - pd.Timedelta(days=delay)  # what a decision at `now` carries (monitoring.policy.decide)
    seen = new_labelled_rows(frame, "time_hour", None, horizon, [])
    assert len(seen) == visible
    assert (seen["time_hour"] + pd.Timedelta(days=delay) <= now).all()


def test_a_retrain_skips_what_the_data_holds_and_every_quarantined_window():
    times = pd.date_range("2013-07-01", periods=10, freq="D")
    frame = pd.DataFrame({"time_hour": times, "late": 0})
    kept = [(pd.Timestamp("2013-07-05"), pd.Timestamp("2013-07-07"))]
    seen = new_labelled_rows(frame, "time_hour", pd.Timestamp("2013-07-02"), pd.Timestamp("2013-07-09"), kept)
    assert seen["time_hour"].dt.day.tolist() == [3, 4, 7, 8]


def test_rows_in_is_half_open():
    frame = pd.DataFrame({"t": pd.to_datetime(["2013-07-01 00:00", "2013-07-07 23:00", "2013-07-08 00:00"])})
    assert len(rows_in(frame, "t", pd.Timestamp("2013-07-01"), pd.Timestamp("2013-07-08"))) == 2


@pytest.mark.parametrize(
    "months, train",
    [(3, ["2013-05-18", "2013-08-17"]), (None, ["2013-01-01", "2013-08-17"])],
)
def test_retrain_split_sliding_and_expanding(months, train):
    split = retrain_split(
        pd.Timestamp("2013-09-01"), gate_days=7, valid_days=7, train_months=months, first_day="2013-01-01"
    )
    assert split["test"] == ("2013-08-25", "2013-08-31")
    assert split["valid"] == ("2013-08-18", "2013-08-24")
    assert split["train"] == tuple(train)


def test_policies_replayed_at_once_share_the_cores(monkeypatch):
    from flows.replay import stage_threads

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    with stage_threads(2) as threads:
        assert threads == 4 and os.environ["OMP_NUM_THREADS"] == "4"  # what stage subprocesses inherit
    assert "OMP_NUM_THREADS" not in os.environ  # restored after the replay
    with stage_threads(16) as threads:
        assert threads == 1 and os.environ["OMP_NUM_THREADS"] == "1"
    with stage_threads(1) as threads:
        assert threads == 8 and "OMP_NUM_THREADS" not in os.environ  # one policy at a time: all cores
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    with stage_threads(2) as threads:
        assert threads == 3 and os.environ["OMP_NUM_THREADS"] == "3"  # the user's setting wins


def _request(day: str):
    from flightloop.config import load_params
    from monitoring.policy import retrain_request
    from tests.conftest import REPO

    params = load_params(REPO / "params.yaml")
    request = retrain_request(
        params.policy,
        model_name="flight-delay",
        model_version=1,
        window_id=day,
        now=pd.Timestamp(day).to_pydatetime(),
        kind="data_drift",
        reasons=["test"],
        first_day="2013-01-01",
    )
    return params, request


def test_run_retrain_records_a_failure_with_its_reason_and_runs_each_decision_once(tmp_path):
    from monitoring.loop import run_retrain
    from monitoring.report import StateStore

    params, request = _request("2013-07-15")
    store = StateStore(tmp_path / "state.json")
    rows = pd.DataFrame({"time_hour": pd.date_range("2013-07-01", periods=20, freq="D"), "late": 0})
    ingested, trained = [], []

    def ingest(batch):
        ingested.append(pd.read_parquet(batch))

    def failing(split):
        trained.append(split)
        raise OSError("No space left on device")

    hooks = dict(labelled=lambda horizon: rows, ingest=ingest, notify=lambda: "reloaded", emit=False)
    with pytest.raises(OSError):
        run_retrain(request, params, tmp_path, store, train=failing, flow_run="run-1", **hooks)
    state = store.read()
    assert trained == [request.split] and ingested[0]["time_hour"].max() < pd.Timestamp(request.horizon)
    assert state.last_failure.reason == "OSError: No space left on device" and state.last_retrain_at is None
    assert state.retrains[request.key].status == "failed" and state.pending is None

    again = run_retrain(request, params, tmp_path, store, train=failing, **hooks)  # the same decision again
    assert "failed already" in again["skipped"] and len(trained) == 1

    _, later = _request("2013-07-22")  # a later decision (after the backoff) runs, and completes
    done = run_retrain(later, params, tmp_path, store, train=lambda split: {"gate": {"promoted": True}}, **hooks)
    assert done["promoted"] and done["notified"] == "reloaded"
    state = store.read()
    assert state.last_retrain_at == later.window_end and state.last_failure is None
    assert state.retrains[later.key].status == "completed"
