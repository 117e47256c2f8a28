"""`make ui`: Prefect server (UI :4200), MLflow UI (:5000) and the deployment runner, on 127.0.0.1.

Ctrl-C (or SIGTERM) stops all three: each child is terminated, waited for, and killed if it lingers."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HOST = "127.0.0.1"


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[:4]} exited with {proc.returncode} before it was healthy")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{url} not healthy after {timeout:.0f}s")


def stop(procs: list[subprocess.Popen], grace: float = 15) -> None:
    """SIGTERM each child's process group (servers have workers), wait, then SIGKILL what is left. A
    second Ctrl-C (or SIGTERM) while stopping is ignored: it must not leave servers behind."""
    try:
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals go elsewhere anyway
        previous = {}
    try:
        _stop(procs, grace)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop(procs: list[subprocess.Popen], grace: float) -> None:
    for proc in reversed(procs):
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for proc in reversed(procs):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for proc in procs:  # what a leader left behind in its group (e.g. the MLflow server's job consumers)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def supervise(procs: list[subprocess.Popen], name: str, where: str = "") -> int:
    """Wait while every child runs; when one exits, say which and return 1 (the caller stops the rest)."""
    while all(p.poll() is None for p in procs):
        time.sleep(1)
    failed = [p.args[:3] for p in procs if p.poll() is not None]
    print(f"{name}: {failed} exited; stopping the rest{where}", file=sys.stderr)
    return 1


def catch_signals() -> None:
    """Ctrl-C and SIGTERM raise KeyboardInterrupt (SIGINT too: a shell that starts us in the background
    hands us SIGINT ignored)."""

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)


class Children:
    """Child processes started in the project, each in its own session (servers have workers); `procs`
    for `supervise` and `stop`."""

    def __init__(self, project: Path, log_dir: Path | None = None):
        bin_dir = Path(sys.executable).parent
        env = dict(os.environ)
        env.setdefault("PREFECT_HOME", str(project / ".prefect"))  # the database embedded runs wrote to
        env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1")
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        self.project, self.bin_dir, self.env, self.log_dir = project, bin_dir, env, log_dir
        self.procs: list[subprocess.Popen] = []

    def start(self, name: str, cmd: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        """`cmd` in the project; its output to the terminal, or to `<log_dir>/<name>.log` when given."""
        env = {**self.env, **(extra_env or {})}
        out = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            out = (self.log_dir / f"{name}.log").open("a")
        proc = subprocess.Popen(cmd, cwd=self.project, env=env, start_new_session=True, stdout=out, stderr=out)
        if out is not None:
            out.close()  # the child holds its own copy
        self.procs.append(proc)
        return proc


def start_ui(children: Children, prefect_port: int, mlflow_port: int) -> tuple[str, str]:
    """The Prefect server, the MLflow UI on the project's store and the deployment runner (every
    deployment and the automation); returns the Prefect API URL and the MLflow URL once the API answers."""
    project, bin_dir = children.project, children.bin_dir
    api = f"http://{HOST}:{prefect_port}/api"
    mlflow_url = f"http://{HOST}:{mlflow_port}"
    db = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{project / 'mlflow.db'}"
    server = children.start(
        "prefect-server",
        [str(bin_dir / "prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)],
        # the UI's pages call the API at these (by default 127.0.0.1:4200, whatever --port says)
        {"PREFECT_SERVER_API_HOST": HOST, "PREFECT_SERVER_API_PORT": str(prefect_port)},
    )
    artifacts = str(project / "mlartifacts")
    mlflow_opts = ["--backend-store-uri", db, "--default-artifact-root", artifacts, "--workers", "1"]
    children.start("mlflow", [str(bin_dir / "mlflow"), "ui", *mlflow_opts, "--host", HOST, "--port", str(mlflow_port)])
    wait_healthy(f"{api}/health", server)
    children.start(
        "runner",
        [sys.executable, "-m", "flows.deploy", "--project-dir", str(project)],
        {"PREFECT_API_URL": api, "MLFLOW_UI_URL": mlflow_url, "PYTHONPATH": str(project)},
    )
    return api, mlflow_url


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--project-dir", default=".", type=Path)
    ap.add_argument("--prefect-port", type=int, default=4200)
    ap.add_argument("--mlflow-port", type=int, default=5000)
    args = ap.parse_args(argv)
    children = Children(args.project_dir.resolve())
    catch_signals()
    try:
        _, mlflow_url = start_ui(children, args.prefect_port, args.mlflow_port)
        print(f"\nPrefect UI  http://{HOST}:{args.prefect_port}\nMLflow UI   {mlflow_url}\nCtrl-C stops all\n")
        return supervise(children.procs, "ui")
    except KeyboardInterrupt:
        print("\nui: stopping ...", file=sys.stderr)
        return 0
    finally:
        stop(children.procs)


if __name__ == "__main__":
    sys.exit(main())
