"""The online service: schema fuzzing, bad inputs, auth, prediction log, hot swap under load."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from serving.predlog import PredictionLog, read_predictions
from tests.conftest import REPO, make_project, project_env, run
from tests.conftest_flows import Server

pytestmark = pytest.mark.integration

MAKE_V2 = """
import tempfile, torch, mlflow
from pathlib import Path
from flightloop import tracking
from models.packaged import DelayModel
tracking.setup("flight-delay")
mlflow.set_experiment("flight-delay")
c = mlflow.MlflowClient()
src = Path(mlflow.artifacts.download_artifacts("models:/flight-delay/1")) / "artifacts"
tmp = Path(tempfile.mkdtemp())
saved = torch.load(src / "model.pt", weights_only=False)
key = [k for k in saved["state_dict"] if k.endswith("bias")][-1]
saved["state_dict"][key] = saved["state_dict"][key] + 0.7   # same model, shifted scores
torch.save(saved, tmp / "model.pt")
arts = {"preprocessor": str(src / "preprocessor.json"), "model": str(tmp / "model.pt"), "meta": str(src / "meta.json")}
with mlflow.start_run(run_name="perturbed-copy"):
    info = mlflow.pyfunc.log_model(name="model", python_model=DelayModel(), artifacts=arts, code_paths=["models"])
v = mlflow.register_model(info.model_uri, "flight-delay")
for k, val in c.get_model_version("flight-delay", "1").tags.items():
    c.set_model_version_tag("flight-delay", v.version, k, val)
c.set_registered_model_alias("flight-delay", "challenger", v.version)
print(v.version)
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A shrunk project after `dvc repro` (v1 champion) plus v2, a perturbed copy, as challenger."""
    serving = {
        "serving.poll_seconds": 2.0,
        "serving.flush_seconds": 0.5,
        "serving.max_batch_rows": 50,
        "serving.max_body_bytes": 65536,
    }
    project = make_project(
        tmp_path_factory.mktemp("serving"), {"train.max_epochs": 1, "train.sample_frac": 0.2, **serving}
    )
    run(["dvc", "repro"], project)
    assert run(["python", "-c", MAKE_V2], project).stdout.strip().splitlines()[-1] == "2"
    return project


@pytest.fixture(scope="module")
def server(project):
    srv = Server(project)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def request_rows(project: Path, n: int = 40) -> list[dict]:
    """`n` rows of the project's test month as a client sends them: the model's features and the key."""
    meta = json.loads(next((project / "mlartifacts").rglob("artifacts/meta.json")).read_text())
    frame = pd.read_parquet(project / "data" / "prepared" / "test.parquet").head(n)
    cols = meta["features"] + [k for k in meta["key"] if k not in meta["features"]]
    return json.loads(frame[cols].to_json(orient="records"))


@pytest.fixture(scope="module")
def rows(project) -> list[dict]:
    return request_rows(project)


def test_health_ready_model_metrics(server):
    health = httpx.get(server.url + "/health").json()
    assert health["status"] == "ok" and health["prediction_log"]["degraded"] is False
    ready = httpx.get(server.url + "/ready").json()
    assert ready["model_version"] == 1 and ready["registry_error"] is None
    info = httpx.get(server.url + "/model").json()
    assert info["version"] == 1 and info["alias"] == "champion" and info["data_hash"].endswith(".dir")
    assert "carrier" in info["features"]
    text = httpx.get(server.url + "/metrics").text
    assert "serving_model_version 1.0" in text and "serving_request_latency_seconds_bucket" in text


def test_single_row_and_batch_agree_with_pyfunc(server, project, rows):
    one = httpx.post(server.url + "/predict", json=rows[0]).json()
    batch = httpx.post(server.url + "/predict", json={"rows": rows[:10]}).json()
    assert one["model_version"] == 1 and len(batch["predictions"]) == 10
    assert batch["predictions"][0]["probability"] == pytest.approx(one["predictions"][0]["probability"], abs=1e-6)
    code = (
        "import json, sys, mlflow, pandas as pd; from flightloop import tracking;"
        "mlflow.set_tracking_uri(tracking.tracking_uri());"
        "m = mlflow.pyfunc.load_model('models:/flight-delay/1');"
        "print(json.dumps(m.predict(pd.DataFrame(json.loads(sys.stdin.read()))).tolist()))"
    )
    proc = subprocess.run(
        ["python", "-c", code],
        cwd=project,
        env=project_env(project),
        input=json.dumps(rows[:10]),
        capture_output=True,
        text=True,
        timeout=120,
    )
    expected = json.loads(proc.stdout.strip().splitlines()[-1])
    got = [p["probability"] for p in batch["predictions"]]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    threshold = batch["threshold"]
    assert [p["label"] for p in batch["predictions"]] == [int(p >= threshold) for p in got]


def _bad_cases(rows):
    r = rows[0]
    return [
        ({**r, "colour": "red"}, 422, "colour"),
        ({k: v for k, v in r.items() if k != "distance"}, 422, "distance"),
        ({**r, "distance": "far"}, 422, "distance"),
        ({**r, "carrier": 7}, 422, "carrier"),
        ({**r, "seats": True}, 422, "seats"),
        ({**r, "seats": 10**400}, 422, "seats"),
        ({**r, "flight": [1]}, 422, "flight"),
        ({"rows": []}, 422, "rows"),
        ({"rows": [r] * 51}, 413, "rows"),
        ({"rows": [r], "extra": 1}, 422, "extra"),
        ({"rows": "nope"}, 422, "rows"),
        ([1, 2], 422, "rows[0]"),
        ("just a string", 422, "body"),
    ]


def test_bad_inputs_are_4xx_naming_the_field(server, rows):
    for body, status, field in _bad_cases(rows):
        r = httpx.post(server.url + "/predict", json=body)
        assert r.status_code == status, (body, r.text)
        assert field in r.json()["detail"] and r.json()["field"] is not None, r.text
    for const, field in (("NaN", "temp"), ("Infinity", "humid"), ("-Infinity", "precip")):
        body = json.dumps({**rows[0], field: None}).replace(f'"{field}": null', f'"{field}": {const}')
        r = httpx.post(server.url + "/predict", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and field in r.json()["detail"], (body, r.text)
    r = httpx.post(server.url + "/predict", content=b'{"rows": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "body: not valid JSON" in r.json()["detail"]
    huge = json.dumps({"rows": [{**rows[0], "carrier": "x" * 70000}]})
    r = httpx.post(server.url + "/predict", content=huge, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body" in r.json()["field"]
    assert httpx.get(server.url + "/health").status_code == 200  # still alive


def test_token_auth_401_without_bearer(project, monkeypatch):
    from fastapi.testclient import TestClient

    from flightloop.config import ServingCfg
    from serving.app import create_app

    app = create_app(
        ServingCfg(prediction_dir=project / "tmp-preds"), "flight-delay", token="s3cret", start_follower=False
    )
    with TestClient(app) as client:
        guarded = [("post", "/predict"), ("get", "/model"), ("post", "/reload"), ("get", "/metrics")]
        for method, path in [*guarded, ("get", "/docs"), ("get", "/openapi.json")]:
            assert getattr(client, method)(path).status_code == 401
            wrong = getattr(client, method)(path, headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.json()["field"] == "authorization"
        ok = client.post("/predict", json={}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 503  # past auth; no model loaded in this app
        assert client.get("/health").status_code == 200 and client.get("/ready").status_code == 503


def test_schemathesis_fuzz_no_5xx(server):
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis import GenerationMode

    schema = schemathesis.openapi.from_url(server.url + "/openapi.json")
    statuses: list[int] = []
    for result in schema.get_all_operations():
        op = result.ok()
        modes = (
            [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]
            if op.path == "/predict"  # negative data needs a body or parameters to break
            else [GenerationMode.POSITIVE]
        )
        for mode in modes:

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(
                max_examples=40 if op.path == "/predict" else 5,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def check(case):
                response = case.call(base_url=server.url, timeout=30)
                statuses.append(response.status_code)
                assert response.status_code < 500, (case.body, response.text[:300])

            check()
    assert 200 in statuses and any(400 <= s < 500 for s in statuses)


def test_prediction_log_matches_requests(server, project, rows):
    start = datetime.now(timezone.utc) - timedelta(seconds=1)
    served = {}
    for i in range(5):
        rid = f"logtest-{i}"
        body = {"rows": rows[i * 3 : i * 3 + 3]}
        r = httpx.post(server.url + "/predict", json=body, headers={"X-Request-ID": rid}).json()
        assert r["request_id"] == rid
        served[rid] = (r["model_version"], [p["probability"] for p in r["predictions"]], body["rows"])
    deadline, got = time.time() + 15, pd.DataFrame()
    while time.time() < deadline:
        got = read_predictions(project / "data" / "predictions", since=start)
        got = got[got["request_id"].str.startswith("logtest-")]
        if len(got) == 15:
            break
        time.sleep(0.3)
    assert len(got) == 15
    files = list((project / "data" / "predictions").glob("date=*/part-*-*.parquet"))
    assert files and all(f.parent.name == f"date={pd.Timestamp(f.parent.name[5:]).date()}" for f in files)
    assert str(got["ts"].dtype).endswith("UTC]") and got["model_version"].dtype == "int64"
    for rid, (version, scores, sent) in served.items():
        part = got[got["request_id"] == rid]
        assert part["model_version"].tolist() == [version] * 3
        np.testing.assert_allclose(part["score"].to_numpy(), scores, rtol=1e-9)
        assert part["carrier"].tolist() == [s["carrier"] for s in sent]
        assert part["flight"].tolist() == [s["flight"] for s in sent]  # key column sent along
        assert part["distance"].tolist() == pytest.approx([s["distance"] for s in sent])


def test_hot_swap_under_load_no_failures(server, project, rows):
    """Clients hammer /predict while `promote --force` moves the alias and calls /reload."""
    stop = threading.Event()
    seen: list[list[int]] = [[] for _ in range(8)]
    failures: list[str] = []

    def client(i: int) -> None:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            while not stop.is_set():
                try:
                    r = c.post("/predict", json={"rows": rows[i : i + 5]})
                    if r.status_code != 200:
                        failures.append(f"{r.status_code} {r.text[:200]}")
                    else:
                        seen[i].append(r.json()["model_version"])
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    time.sleep(2)
    env = {"SERVING_URL": server.url}
    out = subprocess.run(
        ["python", "-m", "tasks.gate", "promote", "--version", "2", "--force", "--reason", "hot swap test"],
        cwd=project,
        env={**project_env(project), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    deadline = time.time() + 30
    while time.time() < deadline and not all(s and s[-1] == 2 for s in seen):
        time.sleep(0.2)
    time.sleep(2)  # keep the load on after the swap
    stop.set()
    for t in threads:
        t.join()
    assert failures == []
    total = sum(len(s) for s in seen)
    assert total > 50
    for s in seen:
        assert s[0] == 1 and s[-1] == 2
        first_new = s.index(2)
        assert set(s[first_new:]) == {2}  # each client switches once and never goes back
    assert httpx.get(server.url + "/model").json()["version"] == 2
    assert "serving_model_version 2.0" in httpx.get(server.url + "/metrics").text


def test_prediction_log_flushes_on_close_and_reads_windows(tmp_path):
    log = PredictionLog(tmp_path, categorical={"carrier"}, flush_rows=10_000, flush_seconds=3600)
    log.start()
    day1 = datetime(2024, 3, 1, 23, 59, 59, tzinfo=timezone.utc)
    day2 = datetime(2024, 3, 2, 0, 0, 1, tzinfo=timezone.utc)
    log.put("a", day1, 1, [{"carrier": "AA", "distance": 100.0}], [0.1], [0])
    log.put("b", day2, 2, [{"carrier": None, "distance": None, "flight": 12}], [0.9], [1])
    log.close()
    assert sorted(p.name for p in tmp_path.glob("date=*")) == ["date=2024-03-01", "date=2024-03-02"]
    assert list((tmp_path / "_journal").iterdir()) == []  # a clean close compacts the whole journal
    everything = read_predictions(tmp_path)
    assert everything["request_id"].tolist() == ["a", "b"] and everything["label_pred"].tolist() == [0, 1]
    later = read_predictions(tmp_path, since=datetime(2024, 3, 2))
    assert later["request_id"].tolist() == ["b"] and later["model_version"].tolist() == [2]
    assert read_predictions(tmp_path, until=datetime(2024, 3, 2))["request_id"].tolist() == ["a"]
    assert read_predictions(tmp_path / "nothing").empty


def test_row_encoder_matches_preprocessor(project, rows):
    from models.packaged import Scorer
    from serving.model import RowEncoder

    art = next((project / "mlartifacts").rglob("artifacts/meta.json")).parent
    scorer = Scorer.from_files(art / "preprocessor.json", art / "model.pt", art / "meta.json")
    odd = [{**rows[0], "carrier": "ZZ", "temp": None, "distance": 1e9}, {**rows[1], "origin": None}]
    sample = rows + odd
    codes, nums = RowEncoder(scorer).encode(sample)
    ref_codes, ref_nums = scorer.pre.transform(pd.DataFrame(sample))
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_allclose(nums, ref_nums, rtol=1e-6, atol=1e-6)


def test_serving_params_reject_unknown_keys():
    from flightloop.config import ParamsError, load_params

    with pytest.raises(ParamsError, match="serving.pol_seconds"):
        load_params(REPO / "params.yaml", {"serving.pol_seconds": 1})


def test_batch_scoring_writes_scored_parquet_with_champion(project):
    out = run(["python", "-m", "serving.batch", "data/prepared/test.parquet", "--month", "2013-03"], project).stdout
    assert "rows scored with v" in out
    path = Path(out.strip().splitlines()[-1].split("-> ")[1])
    scored = pd.read_parquet(project / path)
    test = pd.read_parquet(project / "data" / "prepared" / "test.parquet")
    assert len(scored) == len(test) and {"score", "label_pred", "model_version", "flight", "carrier"} <= set(scored)
    assert scored["score"].between(0, 1).all() and scored["model_version"].nunique() == 1
