import json

import numpy as np
import pandas as pd
import pytest

from flightloop.config import load_params
from tasks.validate import BatchReport, check_duplicates, judge, quarantine, row_keys, validate_batch
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


KEY = load_params(REPO / "params.yaml").data.key
DROP = CFG.model_copy(update={"duplicates": "drop"})


def test_duplicates_are_rejected_by_default_naming_the_key_and_rows(flights_tiny):
    twice = pd.concat([flights_tiny, flights_tiny.iloc[[0, 3]]], ignore_index=True)
    assert CFG.duplicates == "reject"
    report, rows = judge(twice, CFG, KEY, {}, "twice")
    assert not report.ok and len(rows) == 8
    [err] = report.errors
    assert "duplicate key" in err["check"] and "earlier in this batch" in err["check"] and err["failures"] == 2
    assert err["examples"][0] == {k: twice.loc[0, k] for k in KEY}


def test_duplicates_are_dropped_when_configured_and_listed(flights_tiny):
    twice = pd.concat([flights_tiny, flights_tiny], ignore_index=True)
    report, rows = judge(twice, DROP, KEY, {}, "twice")
    assert report.ok and report.dropped[0]["failures"] == 6
    pd.testing.assert_frame_equal(rows, flights_tiny)
    assert "ok (12 rows; dropped 6 rows: duplicate key" in report.summary()


@pytest.mark.parametrize("cfg", [CFG, DROP], ids=["reject", "drop"])
def test_rows_already_in_the_data_are_found_across_batches(flights_tiny, cfg):
    """The same flights under another batch name (re-ordered, with a float key column as a CSV may give)."""
    seen = dict.fromkeys(row_keys(flights_tiny.iloc[:4], KEY), "2013-07")
    again = flights_tiny.iloc[::-1].reset_index(drop=True).astype({"flight": "float64"})
    report, rows = check_duplicates(again, cfg.model_copy(update={"min_rows": 3}), KEY, seen, "july-again")
    found = report.errors if cfg.duplicates == "reject" else report.dropped
    [err] = found
    assert err["failures"] == 4 and "already in the data, in batch 2013-07" in err["check"]
    assert not report.ok  # reject: the batch; drop: 2 rows are left, fewer than min_rows
    if cfg.duplicates == "drop":
        assert len(rows) == 2 and "too few rows left after dropping 4 duplicate rows" in report.summary()


def test_no_key_means_no_duplicate_check(flights_tiny):
    report, rows = check_duplicates(pd.concat([flights_tiny] * 2), CFG, (), {}, "b")
    assert report.ok and len(rows) == 12


@pytest.mark.parametrize("batch", ["..", ".", "../../outside", "/tmp/abs", "a/../../b", "x" * 300])
def test_quarantine_stays_inside_its_folder_whatever_the_batch_id(tmp_path, batch):
    folder = tmp_path / "data" / "quarantine"
    source = tmp_path / "file.csv"
    source.write_bytes(b"bytes")
    where = quarantine(BatchReport(batch=batch, rows=0, ok=False), source, folder, move=True)
    assert where.resolve().parent == folder.resolve()
    assert (where / "file.csv").read_bytes() == b"bytes" and json.loads((where / "report.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing left or written elsewhere


def test_quarantine_never_overwrites_an_earlier_rejection(tmp_path):
    folder = tmp_path / "q"
    kept = []
    for content in (b"first", b"second", b"second"):
        source = tmp_path / "2013-08.csv"
        source.write_bytes(content)
        kept.append(quarantine(BatchReport(batch="2013-08", rows=0, ok=False), source, folder, move=True))
    assert [p.name for p in kept] == ["2013-08", "2013-08.2", "2013-08.2"]  # the same bytes again: same folder
    assert (kept[0] / "2013-08.csv").read_bytes() == b"first" and (kept[1] / "2013-08.csv").read_bytes() == b"second"
