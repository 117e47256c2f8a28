import json

import numpy as np
import pandas as pd
import pytest

from flightloop.config import load_params
from tasks.validate import validate_batch
from tests.conftest import REPO

CFG = load_params(REPO / "params.yaml", overrides={"validate.min_rows": 1}).validate_


def corrupt(kind: str, frame: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    frame = frame.copy()
    if kind == "missing column":
        return frame.drop(columns=["distance"]), "distance"
    if kind == "wrong type":
        frame["sched_dep_time"] = frame["sched_dep_time"].astype(str) + "h"
        return frame, "sched_dep_time"
    if kind == "out of range":
        frame.loc[1, "month"] = 14
        return frame, "month"
    if kind == "all null":
        frame["carrier"] = None
        return frame, "carrier"
    if kind == "unknown extra column":
        frame["secret"] = 1
        return frame, "secret"
    if kind == "bad pattern":
        frame.loc[0, "origin"] = "newark"
        return frame, "origin"
    if kind == "infinite":
        frame.loc[2, "distance"] = np.inf
        return frame, "distance"
    if kind == "too many missing":
        frame.loc[:3, "arr_delay"] = None
        return frame, "arr_delay"
    raise AssertionError(kind)


def test_clean_batch_passes(flights_tiny):
    report = validate_batch(flights_tiny, CFG, "clean")
    assert report.ok, report.errors


@pytest.mark.parametrize(
    "kind",
    [
        "missing column",
        "wrong type",
        "out of range",
        "all null",
        "unknown extra column",
        "bad pattern",
        "infinite",
        "too many missing",
    ],
)
def test_corrupt_batch_is_rejected_naming_the_column(flights_tiny, kind):
    frame, column = corrupt(kind, flights_tiny)
    report = validate_batch(frame, CFG, kind)
    assert not report.ok
    assert column in report.failing_columns, report.errors
    json.dumps(report.__dict__, default=str)  # the report must be writable as JSON


def test_out_of_range_report_shows_the_failing_row(flights_tiny):
    frame, _ = corrupt("out of range", flights_tiny)
    report = validate_batch(frame, CFG, "b")
    [err] = [e for e in report.errors if e["column"] == "month"]
    assert err["failures"] == 1 and err["examples"][0]["month"] == 14


def test_stage_quarantines_bad_incoming_batch_and_keeps_validated(tmp_path, flights_tiny, monkeypatch):
    """A bad batch arriving in the inbox: stage exits non-zero, batch moved aside with a report,
    the validated set from before is untouched, and nothing is lost."""
    from tasks import validate

    monkeypatch.chdir(tmp_path)
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text().replace("min_rows: 100", "min_rows: 1"))
    data = tmp_path / "data"
    validated = data / "validated"
    validated.mkdir(parents=True)
    (validated / "2013-01.parquet").write_bytes(b"previous good version")
    raw = data / "raw"
    (raw / "batches").mkdir(parents=True)
    flights_tiny.to_parquet(raw / "batches" / "2013-01.parquet")
    inbox = data / "incoming"
    inbox.mkdir()
    bad, _ = corrupt("out of range", flights_tiny)
    bad.to_parquet(inbox / "2013-07.parquet")
    bad.to_parquet(raw / "batches" / "2013-07.parquet")
    (raw / "manifest.json").write_text(
        json.dumps({"2013-01": {"origin": "source"}, "2013-07": {"origin": str(inbox / "2013-07.parquet")}})
    )

    with pytest.raises(SystemExit) as exit_info:
        validate.main(
            [
                "--params",
                str(params),
                "--raw",
                str(raw),
                "--out",
                str(validated),
                "--quarantine",
                str(data / "quarantine"),
                "--report",
                str(tmp_path / "v.json"),
            ]
        )
    assert "failed validation" in str(exit_info.value.code)
    assert (validated / "2013-01.parquet").read_bytes() == b"previous good version"
    kept = data / "quarantine" / "2013-07"
    assert pd.read_parquet(kept / "2013-07.parquet").equals(bad)
    assert "month" in json.loads((kept / "report.json").read_text())["errors"][0]["column"]
    assert not (inbox / "2013-07.parquet").exists()  # moved out of the inbox, not copied
