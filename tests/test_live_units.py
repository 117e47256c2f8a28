"""`make live`'s pure parts: the planted shift from the command line, and the weekly view."""

from __future__ import annotations

import argparse

import pytest

from flows.live import Week, live_view, parse_scenario
from monitoring.replay import windows


@pytest.mark.parametrize(
    ("text", "column", "add", "window", "until"),
    [
        ("distance+800@2013-07-08", "distance", 800.0, "2013-07-08", None),
        ("temp+-30@2013-07-08..2013-07-29", "temp", -30.0, "2013-07-08", "2013-07-29"),
    ],
)
def test_a_shift_is_parsed_as_the_replay_scenario(text, column, add, window, until):
    sc = parse_scenario(text)
    assert (sc.column, sc.add, sc.window, sc.until) == (column, add, window, until)


@pytest.mark.parametrize("text", ["distance", "distance+x@2013-07-08", "distance+800", "distance+8@July"])
def test_a_malformed_shift_is_refused_with_the_expected_form(text):
    with pytest.raises(argparse.ArgumentTypeError, match="COLUMN\\+AMOUNT@WEEK"):
        parse_scenario(text)


def test_the_view_has_a_row_per_week_newest_first_with_the_markers():
    w1, w2 = windows("2013-07-01", "2013-07-14", 7)
    first = Week(w1, rows=6192, labels=5300, served_by=1, markers=["retrain for 2013-07-01 (data_drift)", ""])
    first.figures = {
        "roc_auc": 0.71234,
        "est_roc_auc": 0.7,
        "drift_share": 0.13,
        "decision": "data_drift: retrain=True",
    }
    second = Week(w2, rows=6759, served_by=2, markers=["promoted v2"], figures={"decision": "none: retrain=False"})
    view = live_view([first, second], "flight-delay", 1.0, champion=2)
    lines = view.splitlines()
    assert lines[0] == "## flight-delay: champion v2 after the week of 2013-07-08"
    assert "alerts: 1" in lines[1] and "retrains started: 1" in lines[1] and "promotions: 1" in lines[1]
    rows = [line for line in lines if line.startswith("| 2013-")]
    assert [r.split(" | ")[0] for r in rows] == ["| 2013-07-08", "| 2013-07-01"]
    assert rows[1].startswith(
        "| 2013-07-01 | v1 | data_drift → retrain | retrain for 2013-07-01 (data_drift) | 0.130 |"
    )
    assert "| 0.712 |" in rows[1] and rows[1].endswith("| 6192 | 5300 |")
    assert rows[0].startswith("| 2013-07-08 | v2 | none | promoted v2 |  |")  # no figures yet: empty cells


def test_cli_entry_points_give_a_fresh_clones_temporary_prefect_server_time_to_migrate(monkeypatch, tmp_path):
    from prefect.settings import PREFECT_HOME, PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS

    from flows.common import EPHEMERAL_STARTUP_SECONDS, local_prefect

    monkeypatch.delenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", raising=False)
    monkeypatch.delenv("PREFECT_HOME", raising=False)
    with local_prefect(tmp_path):
        assert PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() == EPHEMERAL_STARTUP_SECONDS > 20
        assert PREFECT_HOME.value() == tmp_path / ".prefect"
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "7")  # the user's own value stands
    with local_prefect(tmp_path):
        assert PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.value() == 7
