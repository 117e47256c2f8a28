"""`make live` as a user runs it (`python -m flows.live`): the Prefect server, the MLflow UI, the runner and
the service as processes on free loopback ports, two simulated weeks played at high speed with a shift
planted in one feature, and every hop read back from the servers' own APIs: predictions logged, a
monitoring run per simulated week, a drift event, the automation's retraining run with the decision as
its parameters, the gate's decision, the service on the new champion, the `live-loop` artifact; a browser
on the Event Feed and on that retraining run (screenshots in reports/live/); Ctrl-C stops everything."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import LOOP, REPO, make_project, project_env, run, set_params
from tests.conftest_flows import free_port
from tests.test_loop_live import api, champion, chromium, history, runs_of, wait_for

pytestmark = pytest.mark.integration
MODEL = "flight-delay"
WEEKS = ("2013-04-01", "2013-04-08")
SHOTS = REPO / "reports" / "live"  # ignored by git; bench/live.png is one of them, from the default data


@dataclass
class LiveRun:
    project: Path
    api: str
    mlflow: str
    service: str
    proc: subprocess.Popen
    log: Path
    seconds: float  # from the start of `python -m flows.live` to "done"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    project = make_project(root, LOOP)
    run(["dvc", "repro"], project)
    # a retrain beats the weak champion; one retrain in the two weeks (the second week is in its cooldown)
    set_params(project, {"train.max_epochs": 2, "train.sample_frac": 0.3, "policy.cooldown_days": 30})
    ports = {name: free_port() for name in ("prefect", "mlflow", "serving")}
    log = root / "live.log"
    cmd = [sys.executable, "-m", "flows.live", "--speed", "30", "--start", WEEKS[0], "--end", "2013-04-14"]
    cmd += ["--scenario", f"distance+800@{WEEKS[0]}"]  # the planted shift, in the first week
    cmd += [f"--{name}-port={port}" for name, port in ports.items()]
    env = project_env(project) | {"PREFECT_HOME": str(root / "prefect-home"), "OMP_NUM_THREADS": "1"}
    t0 = time.monotonic()
    proc = subprocess.Popen(
        cmd, cwd=project, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True
    )
    url = "http://127.0.0.1:{}".format
    state = LiveRun(project, url(ports["prefect"]) + "/api", url(ports["mlflow"]), url(ports["serving"]), proc, log, 0)
    try:
        wait_for(lambda: "] done, " in log.read_text() or proc.poll() is not None, 600, "the live run", every=2)
        assert proc.poll() is None, log.read_text()[-5000:]
        state.seconds = time.monotonic() - t0
        yield state
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=90)


def test_every_hop_of_the_loop_is_in_the_servers_apis(live):
    from prefect.events.filters import EventFilter, EventNameFilter

    from monitoring.policy import DRIFT_EVENT

    print(f"live run: {live.seconds:.0f}s to done\n{live.log.read_text()}")
    # the service answered and logged every flight of both weeks (its own /health)
    logged = httpx.get(live.service + "/health").json()["prediction_log"]
    assert logged["rows_written"] > 10_000 and logged["rows_pending"] == 0, logged
    with api(live) as client:
        monitored = runs_of("monitoring")
        assert [r.name for r in monitored] == ["monitor-2013-04-08", "monitor-2013-04-15"]
        assert all(r.state.is_completed() for r in monitored), [r.state for r in monitored]
        assert [r.parameters["window_start"][:10] for r in monitored] == list(WEEKS)  # simulated time
        drift = client.read_events(filter=EventFilter(event=EventNameFilter(name=[DRIFT_EVENT])), limit=50).events
        assert drift, "no drift event"
        retrains = runs_of("retraining")
        assert retrains, live.log.read_text()[-4000:]
        first = retrains[0]
        assert first.created_by and first.created_by.type == "AUTOMATION", first.created_by
        assert first.state.is_completed(), first.state
        assert len(retrains) == 1, [r.name for r in retrains]
        first_week = json.loads((live.project / "reports" / "monitoring" / f"{WEEKS[0]}.json").read_text())
        assert "distance" in first_week["summary"]["drift"]["drifted"], first_week["summary"]["drift"]
        assert first_week["decision"]["retrain"] and first_week["decision"]["kind"] == "data_drift"
        assert first.parameters["request"] == first_week["decision"]["request"]  # the decision, as parameters
        assert any(e.payload.get("request") == first_week["decision"]["request"] for e in drift)  # its event
        artifact = client.request(
            "POST", "/artifacts/latest/filter", json={"artifacts": {"key": {"any_": ["live-loop"]}}}
        )
        [view] = artifact.json()
        assert "| 2013-04-08 |" in view["data"] and "| 2013-04-01 |" in view["data"], view["data"]

    # the gate decided on the retrained version; the service serves the champion the registry names
    gated = [e for e in history(live.project) if e["action"] in ("promote", "refuse")]
    assert gated and gated[0]["version"] == 2, gated
    served = httpx.get(live.service + "/model").json()["version"]
    assert served == champion(live.project)
    assert gated[0]["action"] == "promote" and served >= 2, gated[0]["reason"]
    assert "] gate: promoted v2" in live.log.read_text()


def test_the_event_feed_and_the_retraining_run_in_a_browser(live):
    browser = chromium()
    if browser is None:
        pytest.skip("no Chromium found (apt-get install chromium): the browser test needs one")
    from playwright.sync_api import expect, sync_playwright

    from monitoring.policy import DRIFT_EVENT

    SHOTS.mkdir(parents=True, exist_ok=True)
    expect.set_options(timeout=60_000)
    ui = live.api.removesuffix("/api")
    with api(live) as client:
        retrain = runs_of("retraining")[0]
        latest = {"artifacts": {"key": {"any_": ["live-loop"]}}}
        [view] = client.request("POST", "/artifacts/latest/filter", json=latest).json()
    with sync_playwright() as pw:
        chrome = pw.chromium.launch(executable_path=browser, headless=True, args=["--no-sandbox"])
        page = chrome.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        # the Event Feed, filtered to the loop's events and the automation's (the URL the UI's filter makes)
        page.goto(f"{ui}/events?events=model.*&events=prefect.automation.*", wait_until="networkidle")
        expect(page.get_by_text(DRIFT_EVENT).first).to_be_visible()
        expect(page.get_by_text("prefect.automation.action.executed").first).to_be_visible()
        page.screenshot(path=SHOTS / "test-event-feed.png", full_page=True)
        page.goto(f"{ui}/artifacts/artifact/{view['latest_id']}", wait_until="networkidle")  # its newest version
        expect(page.get_by_role("cell", name="2013-04-08").first).to_be_visible()  # the markdown table, rendered
        page.screenshot(path=SHOTS / "test-live-loop-artifact.png", full_page=True)
        page.goto(f"{ui}/runs/flow-run/{retrain.id}", wait_until="networkidle")
        expect(page.get_by_text(retrain.name).first).to_be_visible()
        page.get_by_text("Parameters", exact=True).first.click()
        expect(page.get_by_text("data_drift").first).to_be_visible()  # the decision, as parameters
        page.screenshot(path=SHOTS / "test-retraining-run.png", full_page=True)
        chrome.close()


def test_ctrl_c_stops_everything(live):
    os.killpg(live.proc.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole group
    assert live.proc.wait(timeout=90) == 0
    leftover = subprocess.run(["pgrep", "-f", str(live.project)], capture_output=True, text=True).stdout.split()
    assert leftover == [], leftover
    for url in (live.api, live.mlflow, live.service):
        port = int(url.split(":")[2].split("/")[0])
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
