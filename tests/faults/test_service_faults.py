"""Faults the online service must survive without losing or inventing a logged row: kill -9 under load, a
corrupt Parquet part, fuzzed input, a full disk, the registry going away, auth and leaked credentials.

Real HTTP service (`python -m serving`), real MLflow store (SQLite, and `mlflow server` on a free port)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml

from serving import journal
from serving.predlog import PredictionLog, read_dead_letters, read_predictions, repair, store_status
from tests.conftest import VENV_BIN, make_project, project_env, run
from tests.conftest_flows import Server, free_port
from tests.test_serving import MAKE_V2, request_rows

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A shrunk project after `dvc repro` (v1 champion) plus v2, a perturbed copy, as challenger."""
    project = make_project(tmp_path_factory.mktemp("faults"), {"train.max_epochs": 1, "train.sample_frac": 0.2})
    run(["dvc", "repro"], project)
    assert run(["python", "-c", MAKE_V2], project).stdout.strip().splitlines()[-1] == "2"
    return project


@pytest.fixture(scope="module")
def rows(project) -> list[dict]:
    return request_rows(project)


class Service(Server):
    """The service on its own copy of params.yaml (`serving` overrides) and prediction store."""

    def __init__(self, project: Path, name: str, serving: dict | None = None, env: dict | None = None, args=()):
        raw = yaml.safe_load((project / "params.yaml").read_text())
        raw["serving"] = {**raw["serving"], "prediction_dir": f"data/pred-{name}", **(serving or {})}
        self.params = project / f"params-{name}.yaml"
        self.params.write_text(yaml.safe_dump(raw))
        self.store = project / raw["serving"]["prediction_dir"]
        super().__init__(project, env, ("--params", str(self.params), *args), name=f"serve-{name}")

    def health(self) -> dict:
        return httpx.get(self.url + "/health", timeout=10).json()["prediction_log"]

    def metric(self, name: str, headers: dict | None = None) -> float:
        text = httpx.get(self.url + "/metrics", headers=headers, timeout=10).text
        return float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))


def until(check, timeout: float = 30, what: str = "condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if got := check():
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def logged_by_request(store: Path, **kw) -> Counter:
    return Counter(read_predictions(store, **kw)["request_id"])


# ---- kill -9 -----------------------------------------------------------------------------------------------


def test_kill9_under_load_loses_no_answered_row(project, rows):
    """8 clients hammer /predict; SIGKILL mid-load: every answered row is in the store, then compacted once."""
    svc = Service(project, "kill", {"flush_seconds": 30.0, "flush_rows": 100_000})
    svc.wait()
    answered: dict[str, int] = {}
    sent: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()

    def client(i: int) -> None:
        with httpx.Client(base_url=svc.url, timeout=30) as c:
            n = 0
            while not stop.is_set():
                rid, size = f"kill-{i}-{n}", 1 + (n % 4)
                sent[rid] = size
                try:
                    r = c.post("/predict", json={"rows": rows[i : i + size]}, headers={"X-Request-ID": rid})
                except httpx.HTTPError:
                    return  # the service is gone
                if r.status_code != 200 or len(r.json()["predictions"]) != size:
                    failures.append(f"{rid}: {r.status_code} {r.text[:200]}")
                    return
                answered[rid] = size
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(3)
    svc.kill()
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert failures == [] and len(answered) > 100, (failures, len(answered))

    logged = logged_by_request(svc.store)
    missing = {rid: n for rid, n in answered.items() if logged.get(rid) != n}
    assert missing == {}, f"{len(missing)} answered requests not (fully) logged"
    extra = {rid: n for rid, n in logged.items() if rid not in answered}
    assert len(extra) <= 8 and all(sent[rid] == n for rid, n in extra.items())  # in flight when killed
    assert sum(logged[r] for r in answered) == sum(answered.values())

    # the next process compacts what the dead one left, exactly once
    again = Service(project, "kill", {"flush_seconds": 30.0, "flush_rows": 100_000})
    try:
        again.wait()
        until(lambda: again.health()["recovered_rows"] > 0, what="recovery")
    finally:
        again.stop()
    assert journal.segments(svc.store) == []
    in_parquet = logged_by_request(svc.store, journal_rows=False)
    assert in_parquet == logged


# ---- a corrupt Parquet part ----------------------------------------------------------------------------------


def test_corrupt_parquet_part_is_skipped_and_reported(project, rows, caplog):
    svc = Service(project, "corrupt", {"flush_seconds": 0.3})
    try:
        svc.wait()
        for i in range(6):
            r = httpx.post(svc.url + "/predict", json={"rows": rows[:5]}, headers={"X-Request-ID": f"c-{i}"})
            assert r.status_code == 200
        until(lambda: svc.health()["rows_pending"] == 0, what="compaction")
    finally:
        svc.stop()
    good = sorted(svc.store.glob("date=*/part-*.parquet"))
    assert good
    day = good[0].parent
    (day / "part-20000101T000000000000Z-garbage.parquet").write_bytes(b"not parquet at all" * 10)
    data = good[0].read_bytes()
    (day / "part-20000101T000000000001Z-truncated.parquet").write_bytes(data[: len(data) // 2])

    with caplog.at_level("WARNING", logger="serving.predlog"):
        got = read_predictions(svc.store)
    assert Counter(got["request_id"]) == {f"c-{i}": 5 for i in range(6)}
    skipped = got.attrs["skipped"]["corrupt_parts"]
    assert sorted(Path(p).name for p in skipped) == [
        "part-20000101T000000000000Z-garbage.parquet",
        "part-20000101T000000000001Z-truncated.parquet",
    ]
    assert sum("skipped unreadable part" in r.getMessage() for r in caplog.records) == 2
    assert len(store_status(svc.store)["corrupt_parts"]) == 2
    fixed = repair(svc.store)
    assert len(fixed["moved_corrupt_parts"]) == 2 and store_status(svc.store)["corrupt_parts"] == []
    assert len(read_predictions(svc.store)) == 30


def test_torn_journal_tail_is_ignored_and_the_rest_read(tmp_path):
    """A crash mid-write leaves half a frame at the end of a segment: the frames before it still count."""
    plog = PredictionLog(tmp_path, categorical={"carrier"}, flush_rows=10_000, flush_seconds=3600)
    plog.journal.open()
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    for i in range(3):
        plog.put(f"t-{i}", now, 1, [{"carrier": "AA", "distance": 1.0 * i}], [0.5], [1])
    path = plog.journal.path
    with open(path, "ab") as f:
        f.write(journal.frame(journal.RECORD, b"x" * 100)[:50])
    seg = journal.read_segment(path)
    assert [r.request_id for r in seg.records] == ["t-0", "t-1", "t-2"] and seg.torn_bytes == 50
    assert read_predictions(tmp_path)["request_id"].tolist() == ["t-0", "t-1", "t-2"]


def test_a_bad_request_never_drops_the_others_in_its_flush(tmp_path):
    """Rows that cannot become Parquet (here a lone surrogate slipped past validation) are set apart with
    their request whole; the other requests of the same flush are written."""
    from datetime import datetime, timezone

    plog = PredictionLog(tmp_path, categorical={"carrier"}, flush_rows=10_000, flush_seconds=3600)
    plog.start()
    now = datetime.now(timezone.utc)
    plog.put("ok-1", now, 1, [{"carrier": "AA", "flight": 1}], [0.1], [0])
    plog.put("bad", now, 1, [{"carrier": "\ud800", "flight": 2}, {"carrier": "UA", "flight": 3}], [0.2, 0.3], [0, 1])
    two = [{"carrier": "B6", "flight": 2**63 - 1}, {"carrier": None, "flight": None}]
    plog.put("ok-2", now, 1, two, [0.4, 0.5], [1, 1])
    plog.close()
    got = read_predictions(tmp_path)
    assert Counter(got["request_id"]) == {"ok-1": 1, "ok-2": 2}
    assert got.loc[got["request_id"] == "ok-2", "flight"].iloc[0] == 2**63 - 1
    dead = read_dead_letters(tmp_path)
    assert [(e.request_id, len(e.rows)) for e in dead] == [("bad", 2)]
    assert plog.status()["dead_letter_rows"] == 2 and plog.status()["degraded"]
    assert store_status(tmp_path)["dead_letter_rows"] == 2
    again = PredictionLog(tmp_path)  # a restart does not forget them
    again.start()
    again.close()
    assert again.status()["dead_letter_rows"] == 2 and again.status()["degraded"]
    assert repair(tmp_path)["dead_letter_rows_stored"] == 0  # still not storable: kept, not dropped
    assert len(read_dead_letters(tmp_path)) == 1


# ---- fuzzing /predict ------------------------------------------------------------------------------------------


def test_fuzzed_predict_logs_exactly_the_200s(project, rows):
    """Property: every response is < 500; a 4xx names its field; every 200's rows are in the log, nothing else
    is, and the log reports no error."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    meta = json.loads(next((project / "mlartifacts").rglob("artifacts/meta.json")).read_text())
    numeric, categorical = meta["numeric"], meta["categorical"]
    keys = [k for k in meta["key"] if k not in meta["features"]]
    ints = st.one_of(
        st.integers(-(10**6), 10**6),
        st.sampled_from([2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, 10**308, 10**400]),
    )
    floats = st.floats(allow_nan=False, allow_infinity=False)
    texts = st.one_of(
        st.text(max_size=6),
        st.sampled_from(["\ud800", "x\udfff", "\ud83d", "AA", "JFK", "航空", "\x00", "ÿ" * 3, "\U0001f600"]),
    )
    anything = st.one_of(st.none(), st.booleans(), ints, floats, texts, st.lists(st.integers(), max_size=2))

    def value_for(col: str):
        if col in numeric:
            return st.one_of(st.none(), ints, floats, anything)
        if col in categorical:
            return st.one_of(st.none(), texts, anything)
        return st.one_of(st.none(), ints, floats, texts, anything)

    change = st.sampled_from([*numeric, *categorical, *keys]).flatmap(lambda c: st.tuples(st.just(c), value_for(c)))
    row = st.tuples(st.integers(0, len(rows) - 1), st.lists(change, max_size=4)).map(
        lambda t: {**rows[t[0]], **dict(t[1])}
    )
    body = st.tuples(st.lists(row, min_size=1, max_size=3), st.booleans(), st.booleans())

    svc = Service(project, "fuzz", {"flush_seconds": 0.3, "max_batch_rows": 50})
    answered: dict[str, list[dict]] = {}
    statuses: Counter = Counter()
    try:
        svc.wait()
        client = httpx.Client(base_url=svc.url, timeout=30)

        @given(case=body)
        @settings(max_examples=300, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def check(case):
            batch, wrapped, raw_surrogates = case
            payload = json.dumps({"rows": batch} if wrapped else batch).encode()
            if raw_surrogates:  # the same text as raw (surrogatepass) UTF-8 instead of an escape
                payload = payload.replace(b"\\ud800", b"\xed\xa0\x80")
            rid = f"fz-{len(statuses)}"
            statuses[rid] = 0
            headers = {"content-type": "application/json", "x-request-id": rid}
            r = client.post("/predict", content=payload, headers=headers)
            statuses[rid] = r.status_code
            assert r.status_code < 500, (payload[:300], r.text[:300])
            if r.status_code == 200:
                assert len(r.json()["predictions"]) == len(batch)
                answered[rid] = json.loads(payload)["rows"] if wrapped else json.loads(payload)
            else:
                problem = r.json()
                assert problem["field"] and problem["detail"], r.text

        check()
        until(lambda: svc.health()["rows_pending"] == 0, what="compaction")
        state = svc.health()
        errors = svc.metric("serving_prediction_log_errors")
        dead = svc.metric("serving_prediction_log_dead_letter_rows")
    finally:
        svc.stop()
    codes = Counter(statuses.values())
    assert codes[200] > 30 and sum(n for c, n in codes.items() if 400 <= c < 500) > 30, codes
    assert (errors, dead, state["degraded"]) == (0, 0, False)
    got = read_predictions(svc.store)
    assert Counter(got["request_id"]) == {rid: len(sent) for rid, sent in answered.items()}
    for rid, sent in answered.items():  # the values, not only the counts
        part = got[got["request_id"] == rid]
        assert [None if pd.isna(v) else v for v in part["carrier"]] == [s["carrier"] for s in sent]
        want = [np.nan if s["distance"] is None else float(s["distance"]) for s in sent]
        np.testing.assert_array_equal(part["distance"].to_numpy(dtype=float), want)


# ---- a full disk ---------------------------------------------------------------------------------------------


def test_disk_full_refuses_visibly_then_resumes(project, rows, tmp_path):
    small = tmp_path / "small"
    small.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs here: {mounted.stderr.decode().strip()}")
    svc = None
    try:
        svc = Service(project, "full", {"flush_seconds": 0.3, "prediction_dir": str(small / "preds")})
        svc.wait()
        answered: Counter = Counter()

        def post(i: int) -> httpx.Response:
            r = httpx.post(svc.url + "/predict", json={"rows": rows[:4]}, headers={"X-Request-ID": f"d-{i}"})
            if r.status_code == 200:
                answered[f"d-{i}"] += 4
            return r

        assert all(post(i).status_code == 200 for i in range(5))
        until(lambda: svc.health()["rows_pending"] == 0, what="compaction")
        filler = small / "filler"
        with open(filler, "wb", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError:
                pass
        refused = [post(i) for i in range(5, 10)]
        assert all(r.status_code == 503 for r in refused), [r.text for r in refused]
        assert refused[0].json()["field"] == "prediction_log"
        assert "No space left" in refused[0].json()["detail"]
        ready = httpx.get(svc.url + "/ready")
        assert ready.status_code == 503 and "prediction log unavailable" in ready.json()["detail"]
        assert httpx.get(svc.url + "/health").json()["status"] == "degraded"
        assert svc.metric("serving_prediction_log_degraded") == 1
        assert svc.metric("serving_prediction_log_refused_total") == 5

        filler.unlink()  # space is back
        svc.wait("/ready", 200, timeout=30)
        assert all(post(i).status_code == 200 for i in range(10, 15))
        until(lambda: svc.health()["rows_pending"] == 0, what="compaction after space returned")
        assert svc.metric("serving_prediction_log_degraded") == 0
        svc.stop()
        assert logged_by_request(svc.store) == answered  # the 200s, and none of the 503s
        assert journal.segments(svc.store) == []
    finally:
        if svc is not None:
            svc.stop()
        subprocess.run(["umount", "-l", str(small)], capture_output=True)


# ---- the registry --------------------------------------------------------------------------------------------


class MlflowServer:
    def __init__(self, project: Path, port: int):
        self.port, self.url = port, f"http://127.0.0.1:{port}"
        self.log = open(project / f"mlflow-{port}.log", "a")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(VENV_BIN / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{project / 'mlflow.db'}"]
            + ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            cwd=project,
            env=project_env(project),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its workers go with it
        )
        until(self._up, timeout=120, what="mlflow server")

    def _up(self) -> bool:
        assert self.proc.poll() is None, Path(self.log.name).read_text()[-2000:]
        try:
            return httpx.get(self.url + "/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def test_registry_down_then_up_and_failed_reload_keeps_serving(project, rows):
    """Start with MLflow unreachable: /ready 503 naming it; MLflow comes up: the model loads; MLflow goes
    away: /reload fails with the cause and the old model keeps serving. The URI's password never shows."""
    port, password = free_port(), "hunter2-s3cret"
    uri = f"http://svcuser:{password}@127.0.0.1:{port}"
    svc = Service(project, "registry", {"poll_seconds": 1.0}, env={"MLFLOW_TRACKING_URI": uri})
    mlflow_server = None
    try:
        not_ready = svc.wait("/ready", 503)
        until(lambda: "Connection refused" in (httpx.get(svc.url + "/ready").json()["detail"] or ""), 30, "cause")
        detail = httpx.get(svc.url + "/ready").json()["detail"]
        assert f"127.0.0.1:{port}" in detail and password not in detail, detail
        assert not_ready.json()["ready"] is False
        assert httpx.post(svc.url + "/predict", json=rows[0]).status_code == 503

        mlflow_server = MlflowServer(project, port)
        svc.wait("/ready", 200, timeout=60)
        r = httpx.post(svc.url + "/predict", json=rows[0])
        assert r.status_code == 200 and r.json()["model_version"] == 1

        mlflow_server.stop()
        mlflow_server = None
        reload = httpx.post(svc.url + "/reload", timeout=60)
        assert reload.status_code == 503 and "still serving v1" in reload.json()["detail"]
        assert "Connection refused" in reload.json()["detail"] and password not in reload.text
        r = httpx.post(svc.url + "/predict", json=rows[0])
        assert r.status_code == 200 and r.json()["model_version"] == 1
        ready = httpx.get(svc.url + "/ready")
        assert ready.status_code == 200 and ready.json()["registry_error"]
        assert svc.metric("serving_registry_ok") == 0
        seen = [ready.text, reload.text, httpx.get(svc.url + "/model").text, httpx.get(svc.url + "/metrics").text]
        seen.append(json.dumps(httpx.get(svc.url + "/health").json()))
    finally:
        if mlflow_server is not None:
            mlflow_server.stop()
        svc.stop()
    seen.append(svc.log())
    assert "Connection refused" in svc.log()  # the log does say what happened ...
    for text in seen:
        assert password not in text and "svcuser:" not in text  # ... without the credentials
    for f in svc.store.rglob("*"):
        assert not f.is_file() or password.encode() not in f.read_bytes()


def test_reload_of_a_broken_version_keeps_the_old_model(project, rows):
    """The alias moves to a version whose artifacts are damaged: the reload fails loudly, v1 keeps serving."""
    where = (
        run(
            [
                "python",
                "-c",
                "import mlflow; from flightloop import registry; c = registry.client();"
                "print(c.get_model_version_download_uri('flight-delay', '2'))",
            ],
            project,
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    model_pt = next(Path(where.removeprefix("file://")).rglob("model.pt"))
    backup = model_pt.read_bytes()
    svc = Service(project, "broken", {"poll_seconds": 3600.0})
    try:
        svc.wait()
        model_pt.write_bytes(b"damaged")
        alias = (
            "from flightloop import registry;"
            "registry.client().set_registered_model_alias('flight-delay', 'champion', '{}')"
        )
        run(["python", "-c", alias.format(2)], project)
        reload = httpx.post(svc.url + "/reload", timeout=60)
        assert reload.status_code == 503, reload.text
        detail = reload.json()["detail"]
        assert "still serving v1" in detail and "cannot load flight-delay v2" in detail, detail
        r = httpx.post(svc.url + "/predict", json=rows[0])
        assert r.status_code == 200 and r.json()["model_version"] == 1
        assert httpx.get(svc.url + "/ready").status_code == 200
        assert httpx.get(svc.url + "/model").json()["version"] == 1
    finally:
        run(["python", "-c", alias.format(1)], project)
        model_pt.write_bytes(backup)
        svc.stop()


def test_racing_alias_moves_and_reloads_settle_and_log_the_answering_version(project, rows):
    """The alias flips between v1 and v2 while clients predict and reload at once: no request fails, the
    service settles on the last alias, and each logged row carries the version that answered it."""
    import mlflow

    registry = mlflow.MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    svc = Service(project, "race", {"poll_seconds": 0.5, "flush_seconds": 0.3})
    answers: dict[str, int] = {}
    failures: list[str] = []
    stop = threading.Event()

    def predictor(i: int) -> None:
        with httpx.Client(base_url=svc.url, timeout=60) as c:
            n = 0
            while not stop.is_set():
                rid = f"race-{i}-{n}"
                r = c.post("/predict", json={"rows": rows[i : i + 2]}, headers={"X-Request-ID": rid})
                if r.status_code != 200:
                    failures.append(f"predict {r.status_code} {r.text[:200]}")
                else:
                    answers[rid] = r.json()["model_version"]
                n += 1

    def reloader() -> None:
        with httpx.Client(base_url=svc.url, timeout=60) as c:
            while not stop.is_set():
                r = c.post("/reload")
                if r.status_code != 200 and "still serving" not in r.text:  # a failed check must say so
                    failures.append(f"reload {r.status_code} {r.text[:200]}")

    try:
        svc.wait()
        threads = [threading.Thread(target=predictor, args=(i,)) for i in range(4)]
        threads += [threading.Thread(target=reloader) for _ in range(2)]
        for t in threads:
            t.start()
        for k in range(12):
            registry.set_registered_model_alias("flight-delay", "champion", str(2 - k % 2))
            time.sleep(0.4)
        registry.set_registered_model_alias("flight-delay", "champion", "1")
        until(lambda: httpx.get(svc.url + "/model").json()["version"] == 1, 30, "settling on v1")
        stop.set()
        for t in threads:
            t.join(timeout=60)
        until(lambda: svc.health()["rows_pending"] == 0, what="compaction")
    finally:
        stop.set()
        registry.set_registered_model_alias("flight-delay", "champion", "1")
        svc.stop()
    assert failures == []
    assert set(answers.values()) == {1, 2}, "the alias moves were not followed"
    got = read_predictions(svc.store)
    logged = got.groupby("request_id")["model_version"].agg(lambda v: sorted(set(v)))
    assert {rid: v[0] for rid, v in logged.items() if len(v) == 1} == answers
    assert all(len(v) == 1 for v in logged)


# ---- auth ----------------------------------------------------------------------------------------------------


def test_token_guards_everything_but_the_probes(project, rows):
    token = "tok-" + "x" * 28
    svc = Service(project, "auth", env={"SERVING_TOKEN": token})
    good = {"Authorization": f"Bearer {token}"}
    try:
        svc.wait()
        guarded = [
            ("get", "/docs"),
            ("get", "/redoc"),
            ("get", "/openapi.json"),
            ("get", "/model"),
            ("get", "/metrics"),
            ("post", "/reload"),
            ("post", "/predict"),
            ("get", "/no-such-path"),
        ]
        for method, path in guarded:
            for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": token}):
                r = httpx.request(method, svc.url + path, headers=headers, json=rows[0])
                assert r.status_code == 401 and r.json()["field"] == "authorization", (path, headers, r.text)
                assert r.headers["www-authenticate"] == "Bearer"
        for method, path in guarded[:-1]:
            r = httpx.request(method, svc.url + path, headers=good, json=rows[0])
            assert r.status_code == 200, (path, r.text[:200])
        assert httpx.get(svc.url + "/health").status_code == 200
        assert httpx.get(svc.url + "/ready").status_code == 200
        text = httpx.get(svc.url + "/metrics", headers=good).text
        assert 'serving_requests_total{path="/predict",status="401"}' in text
    finally:
        svc.stop()
    assert token not in svc.log()


def test_refuses_to_listen_beyond_loopback_without_a_token(project):
    env = {k: v for k, v in project_env(project).items() if k != "SERVING_TOKEN"}
    proc = subprocess.run(
        ["python", "-m", "serving", "--host", "0.0.0.0", "--port", str(free_port())],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "SERVING_TOKEN" in proc.stderr and "0.0.0.0" in proc.stderr, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "host,loopback",
    [("127.0.0.1", True), ("::1", True), ("localhost", True), ("127.0.0.2", True), ("0.0.0.0", False), ("::", False)]
    + [("10.0.0.5", False), ("example.org", False)],
)
def test_is_loopback(host, loopback):
    from serving.app import is_loopback

    assert is_loopback(host) is loopback


def test_redaction_masks_uri_credentials(monkeypatch):
    from flightloop.redact import redact

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://alice:p%40ss-w0rd@mlflow.example:443/")
    text = "API request to https://alice:p%40ss-w0rd@mlflow.example:443/api failed; password p@ss-w0rd"
    out = redact(text)
    assert "p%40ss-w0rd" not in out and "p@ss-w0rd" not in out and "alice:" not in out
    assert "mlflow.example:443/api" in out


def test_monitoring_reads_every_replica_row_once_when_one_replica_flushes_late(tmp_path):
    """Two replicas log to their own folders of one store; replica b's rows reach the store only after
    monitoring has read past their times (a slow flush, a replica that was cut off). Per-replica
    watermarks read them on the next run; one global watermark (the newest row seen) would skip them."""
    import shutil
    from datetime import datetime, timedelta, timezone

    from serving.predlog import read_new

    store, t0 = tmp_path / "store", datetime(2026, 1, 1, tzinfo=timezone.utc)

    def log(folder, name, minutes):
        plog = PredictionLog(folder, categorical={"carrier"}, flush_rows=2, flush_seconds=3600)
        plog.start()
        for m in minutes:
            plog.put(f"{name}-{m}", t0 + timedelta(minutes=m), 1, [{"carrier": "AA", "distance": float(m)}], [0.5], [1])
        plog.close()

    log(store / "replica-a", "a", [1, 5, 9])
    first, marks = read_new(store, {})
    assert sorted(first["request_id"]) == ["a-1", "a-5", "a-9"] and set(first["replica"]) == {"replica-a"}

    log(tmp_path / "late", "b", [2, 6])  # answered before a's newest row, delivered after the first read
    shutil.copytree(tmp_path / "late", store / "replica-b")
    log(store / "replica-a", "a", [12])
    second, marks = read_new(store, marks)
    assert sorted(second["request_id"]) == ["a-12", "b-2", "b-6"]
    assert read_new(store, marks)[0].empty  # nothing is read twice
    newest_seen = first["ts"].max()
    assert len(read_predictions(store / "replica-b", since=newest_seen)) == 0  # what a global watermark misses
