"""Helpers for the flow tests: read back what a flow run left in the Prefect API."""

from __future__ import annotations

import hashlib
import signal
import socket
import subprocess
import time
from pathlib import Path
from uuid import UUID

import httpx

from tests.conftest import project_env


def task_runs(flow_run_id: UUID) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
    from prefect.client.schemas.sorting import TaskRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
    return sorted(runs, key=lambda r: r.expected_start_time or r.created)


def artifacts(flow_run_id: UUID) -> dict[str, object]:
    """Artifacts of a flow run by key -> data (the sync client's read_artifacts sends filters the API refuses)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        body = {"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}}}
        found = client.request("POST", "/artifacts/filter", json=body).json()
    return {a["key"]: a["data"] for a in found}


def flow_run(flow_run_id: UUID):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def tree_digest(folder: Path) -> str:
    """Content hash of a folder (names and bytes), to prove data was left untouched."""
    digest = hashlib.md5()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`python -m serving` in a project, on a free loopback port; its output in `log_path`."""

    def __init__(self, project: Path, env: dict | None = None, args: tuple = (), name: str = "serve"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = project / f"{name}-{self.port}.log"
        self._out = open(self.log_path, "w")  # noqa: SIM115
        self.proc = subprocess.Popen(
            ["python", "-m", "serving", "--port", str(self.port), *args],
            cwd=project,
            env={**project_env(project), **(env or {})},
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        return self.log_path.read_text()

    def wait(self, path: str = "/ready", status: int = 200, timeout: float = 90) -> httpx.Response:
        """Until `path` answers `status`; fails at once, with the log, if the process died."""
        deadline, last = time.time() + timeout, None
        while time.time() < deadline:
            assert self.proc.poll() is None, self.log()
            try:
                last = httpx.get(self.url + path, timeout=5)
                if last.status_code == status:
                    return last
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{path} never answered {status} (last: {last and last.text}):\n{self.log()[-3000:]}")

    def wait_ready(self, timeout: float = 90) -> None:
        self.wait(timeout=timeout)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._out.close()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._out.close()
