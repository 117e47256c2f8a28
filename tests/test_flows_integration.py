"""`make ui` for real: Prefect server, MLflow UI and the deployment runner as processes on free loopback
ports; a deployment is triggered through the API as the UI's Run button does, then everything is stopped."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import make_project, project_env
from tests.conftest_flows import free_port

pytestmark = pytest.mark.integration


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception:  # not up yet
            pass
        time.sleep(1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def test_ui_serves_deployments_and_a_run_from_the_api_trains_and_registers(tmp_path):
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    project = make_project(tmp_path)
    prefect_port, mlflow_port = free_port(), free_port()
    env = project_env(project) | {"PREFECT_HOME": str(tmp_path / "prefect-home")}
    log = (tmp_path / "ui.log").open("w")
    ui = subprocess.Popen(
        [sys.executable, "-m", "flows.ui", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)],
        cwd=project,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    api = f"http://127.0.0.1:{prefect_port}/api"
    try:
        with temporary_settings(updates={PREFECT_API_URL: api}):
            from prefect.client.orchestration import get_client

            def deployed():
                with get_client(sync_client=True) as client:
                    return {client.read_deployment_by_name(n).name for n in ("training/training", "ingest/ingest")}

            assert wait_for(deployed, 120, "deployments") == {"training", "ingest"}
            with get_client(sync_client=True) as client:
                training = client.read_deployment_by_name("training/training")
            assert training.parameters["project_dir"] == str(project)
            assert training.schedules and not training.schedules[0].active  # declared, off by default

            flow_run = run_deployment(
                "training/training", parameters={"params": {"max_epochs": 2}}, timeout=240, poll_interval=2
            )
        assert flow_run.state.is_completed(), (flow_run.state, (tmp_path / "ui.log").read_text()[-3000:])
        assert wait_for(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{mlflow_port}/health").status == 200, 60, "mlflow"
        )

        registered = json.loads((project / "reports" / "registered.json").read_text())
        client = MlflowClient(tracking_uri=f"sqlite:///{project / 'mlflow.db'}")
        version = client.get_model_version(registered["model_name"], str(registered["version"]))
        run = client.get_run(version.run_id)
        assert run.data.tags["prefect_flow_run_id"] == str(flow_run.id)
        assert run.data.params["train.max_epochs"] == "2"
        assert f"mlflow_run_id:{run.info.run_id}" in flow_run.tags
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGINT)  # Ctrl-C in the terminal reaches the whole group
        ui.wait(timeout=60)
        log.close()
    assert ui.returncode == 0
    # every child is gone: no process names the project (mlflow ui, runner) and both ports are closed
    leftover = subprocess.run(["pgrep", "-f", str(project)], capture_output=True, text=True).stdout.split()
    assert leftover == [], leftover
    for port in (prefect_port, mlflow_port):
        with socket.socket() as sock:
            assert sock.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still open"
