"""Loop latency: a drift event -> the new champion live in every replica, on `make stack` (Prefect server
and MLflow server on PostgreSQL, a process work pool with two workers, two replicas) vs the embedded
default (`make ui`: flows/ui.py's server, MLflow UI and deployment runner, and one `python -m serving`).

Each setup gets a fresh project with a weak first champion (the loop tests' small config,
tests/conftest.py LOOP, on 1 % of the rows and without the small-table floors: a few updates). Then the
project's training config is raised (BENCH: 2 epochs on 30 % of a month, floors on; on the stack it is
committed and pushed to the stack's repository, as a user would) so that each retrain's challenger beats
that champion, and `--rounds` drift events follow, one at a time. Before each, the weak v1 is put back as
champion the way a user rolls back (`python -m tasks.gate promote --version 1 --force`, which moves
@champion and reloads every replica); then the event is posted to the Prefect server's events API with a
decision (a window 8 weeks after the last, so labels, the cooldown and the
dedup never merge them). Every hop is read from the servers' own records:

  event posted (the event's `occurred`)
  -> the automation's retraining flow run created (its `created`)
  -> that run started on a worker / the runner (its `start_time`; the stack's git clone is before it)
  -> training done (end of the `train` stage task, in the run's training subflow)
  -> the gate stage started (start of the `gate` stage task, after `evaluate` and `register`)
  -> every replica reports the new version at GET /model (polled every 0.1 s; the last replica counts):
     the gate stage moves @champion and tells every replica to reload.

A round whose challenger the gate still refuses has no "live" time: it is listed (promoted: false) and
left out of the medians. Writes reports/bench_loop.json.

python -m bench.loop_latency [--rounds 3] [--setups stack,embedded] [--db-prefix flbench]
(the stack needs PostgreSQL, STACK_PG_URL; its databases `<prefix>_<hex>_*` are created and dropped.)
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from flows.workspace import set_params  # noqa: E402
from tests.conftest import LOOP, make_project, project_env, run  # noqa: E402
from tests.conftest_flows import Server, free_port  # noqa: E402
from tests.test_loop_live import post_event, task_runs_deep, wait_for  # noqa: E402
from tests.test_stack import api, drop_databases, finished, new_stack, runs_of, served_version  # noqa: E402

MODEL = "flight-delay"
HOPS = ("automation", "pick-up", "training", "evaluate+register", "gate+reload")
FIRST_WINDOW = datetime(2013, 5, 6)
EVERY = timedelta(weeks=8)
# the first champion: LOOP's 1 epoch on 1 % of the rows, without the small-table floors (a few updates)
WEAK = LOOP | {"train.sample_frac": 0.01, "train.min_steps": 0, "train.min_batches": 1}
BENCH = {"train.max_epochs": 2, "train.sample_frac": 0.3, "train.min_steps": 500, "train.min_batches": 20}


class Replicas:
    """Polls GET /model of every replica; when each first reports a version above `above`."""

    def __init__(self, urls: list[str], above: int):
        self.urls, self.above, self.seen = urls, above, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set() and len(self.seen) < len(self.urls):
            for url in self.urls:
                version = served_version(url)
                if url not in self.seen and version is not None and version > self.above:
                    self.seen[url] = (datetime.now(timezone.utc), version)
            time.sleep(0.1)

    def live(self, timeout: float) -> tuple[datetime, int] | None:
        """When the last replica showed a newer version (and which), or None within `timeout`."""
        self._thread.join(timeout)
        self._stop.set()
        if len(self.seen) < len(self.urls):
            return None
        return max(t for t, _ in self.seen.values()), min(v for _, v in self.seen.values())


def champion(mlflow: str) -> int:
    from mlflow import MlflowClient

    return int(MlflowClient(tracking_uri=mlflow).get_model_version_by_alias(MODEL, "champion").version)


def weak_champion_back(project: Path, replicas: list[str], mlflow: str) -> None:
    """v1 (trained on LOOP) back as @champion, every replica reloaded: as a user's rollback does it."""
    if champion(mlflow) == 1:
        return
    env = project_env(project) | {"MLFLOW_TRACKING_URI": mlflow, "SERVING_URL": ",".join(replicas)}
    cmd = [sys.executable, "-m", "tasks.gate", "promote", "--version", "1", "--force", "--reason", "bench: v1 back"]
    proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise SystemExit(f"putting v1 back failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    wait_for(lambda: all(served_version(u) == 1 for u in replicas), 120, "every replica on v1")


def one_round(server: SimpleNamespace, replicas: list[str], mlflow: str, window: datetime) -> dict:
    from flightloop.config import load_params
    from monitoring.alerts import model_resource
    from monitoring.policy import DRIFT_EVENT, retrain_request

    weak_champion_back(server.project, replicas, mlflow)
    live = champion(mlflow)
    request = retrain_request(
        load_params(server.project / "params.yaml").policy,
        model_name=MODEL,
        model_version=live,
        window_id=f"{window:%Y-%m-%d}",
        now=window,
        kind="data_drift",
        reasons=["bench"],
        first_day="2013-01-01",
    ).model_dump(mode="json")
    known = {r.id for r in runs_of("retraining")}
    watch = Replicas(replicas, live)
    posted = datetime.now(timezone.utc)
    post_event(server, DRIFT_EVENT, model_resource(MODEL, live), {"request": request})
    [created] = wait_for(lambda: [r for r in runs_of("retraining") if r.id not in known], 300, "the automation's run")
    done = finished(created.id, timeout=1200)
    if not done.state.is_completed():
        raise SystemExit(f"retraining {done.name} ended {done.state.name}: {done.state.message}")
    stages = {t.name: t for t in task_runs_deep(done.id) if t.end_time}
    new = champion(mlflow)
    shown = watch.live(timeout=60 if new != live else 0)
    marks = {
        "event": posted,
        "created": done.created,
        "started": done.start_time,
        "trained": stages["train"].end_time,
        "gating": stages["gate"].start_time,
        "live": shown[0] if shown else None,
    }
    names = list(marks)
    hops = {
        hop: (marks[b] - marks[a]).total_seconds() if marks[a] and marks[b] else None
        for hop, a, b in zip(HOPS, names[:-1], names[1:], strict=True)
    }
    worker = (done.labels or {}).get("prefect.worker.name", "runner")
    total = (marks["live"] - posted).total_seconds() if shown else None
    print(f"  {window:%Y-%m-%d}: {done.name} on {worker}: v{live} -> v{new}; total {total} s; hops {hops}", flush=True)
    return {
        "window": f"{window:%Y-%m-%d}",
        "flow_run": done.name,
        "worker": worker,
        "champion_before": live,
        "champion_after": new,
        "promoted": new != live,
        "served": shown[1] if shown else None,
        "total_s": total,
        "hops_s": hops,
        "gate_stage_s": (stages["gate"].end_time - stages["gate"].start_time).total_seconds(),
        "run_end_after_live_s": (done.end_time - marks["live"]).total_seconds() if shown else None,
    }


def rounds(server: SimpleNamespace, replicas: list[str], mlflow: str, n: int) -> list[dict]:
    with api(server):
        return [one_round(server, replicas, mlflow, FIRST_WINDOW + i * EVERY) for i in range(n)]


def on_stack(root: Path, prefix: str, n: int) -> list[dict]:
    from prefect.deployments import run_deployment

    stack = new_stack(root, prefix, WEAK)
    try:
        stack.start()
        with api(stack):  # the first champion, trained on a worker
            first = finished(run_deployment("training/training", timeout=0).id, timeout=1200)
            assert first.state.is_completed(), first.state
        wait_for(lambda: all(served_version(u) for u in stack.replicas), 120, "both replicas")
        user = root / "user"  # the stronger config, committed and pushed to the stack's repo
        run(["git", "clone", "-q", str(stack.project / ".stack" / "git"), str(user)], root)
        set_params(user, BENCH)
        run(["git", "-c", "user.name=b", "-c", "user.email=b@localhost", "commit", "-qam", "bench config"], user)
        run(["git", "push", "-q", "origin", "HEAD:main"], user)
        return rounds(stack, stack.replicas, stack.mlflow, n)
    finally:
        stack.stop()
        drop_databases(prefix)


def embedded(root: Path, n: int) -> list[dict]:
    """As `make ui` + `make serve` run it (the setup of tests/test_loop_live.py)."""
    import os
    import signal

    project = make_project(root, WEAK)
    run(["dvc", "repro"], project, timeout=1800)  # the first champion
    set_params(project, BENCH)  # the retrains' config
    service = Server(project)
    service.wait_ready()
    prefect_port, mlflow_port = free_port(), free_port()
    env = project_env(project) | {"PREFECT_HOME": str(root / "prefect-home"), "SERVING_URL": service.url}
    ui = subprocess.Popen(
        [sys.executable, "-m", "flows.ui", "--prefect-port", str(prefect_port), "--mlflow-port", str(mlflow_port)],
        cwd=project,
        env=env,
        stdout=(root / "ui.log").open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = SimpleNamespace(project=project, api=f"http://127.0.0.1:{prefect_port}/api")
    mlflow = f"http://127.0.0.1:{mlflow_port}"
    try:
        with api(server):
            wait_for(_automation, 240, "the retrain automation")
        wait_for(lambda: champion(mlflow), 120, "the MLflow UI")
        return rounds(server, [service.url], mlflow, n)
    finally:
        if ui.poll() is None:
            os.killpg(ui.pid, signal.SIGINT)
            ui.wait(timeout=120)
        service.stop()


def _automation() -> bool:
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return any(a.name == "retrain on drift" for a in client.read_automations())


def summary(results: list[dict]) -> dict:
    """Median and max of the total over promoted rounds, each hop's share of their time; each hop's median
    over every round that has it (a refused round has every hop but the last)."""
    live = [r for r in results if r["promoted"] and r["total_s"] is not None]
    out: dict = {"rounds": len(results), "promoted": len(live)}
    if live:
        totals = [r["total_s"] for r in live]
        out |= {"median_s": round(statistics.median(totals), 1), "max_s": round(max(totals), 1)}
    for hop in HOPS:
        values = [r["hops_s"][hop] for r in results if r["hops_s"][hop] is not None]
        if values:
            out[hop] = {"n": len(values), "median_s": round(statistics.median(values), 1)}
            out[hop]["max_s"] = round(max(values), 1)
        if live:
            out[hop]["share"] = round(sum(r["hops_s"][hop] for r in live) / sum(r["total_s"] for r in live), 3)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--setups", default="stack,embedded", help="comma-separated: stack, embedded")
    ap.add_argument("--db-prefix", default="flbench", help="the stack's databases: <prefix>_<hex>_*")
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "bench_loop.json")
    args = ap.parse_args(argv)
    setups = [s.strip() for s in args.setups.split(",") if s.strip()]
    unknown = set(setups) - {"stack", "embedded"}
    if unknown or not setups or args.rounds < 1:
        ap.error(f"--setups takes stack and/or embedded (got {sorted(unknown) or 'none'}); --rounds >= 1")
    report: dict = {"rounds": args.rounds, "started": datetime.now(timezone.utc).isoformat(), "setups": {}}
    for setup in setups:
        print(f"{setup}: {args.rounds} rounds", flush=True)
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix=f"loop-{setup}-") as tmp:
            if setup == "stack":
                results = on_stack(Path(tmp), f"{args.db_prefix}_{uuid.uuid4().hex[:8]}", args.rounds)
            else:
                results = embedded(Path(tmp), args.rounds)
        report["setups"][setup] = {
            "results": results,
            "summary": summary(results),
            "wall_s": round(time.monotonic() - started),
        }
        print(json.dumps(report["setups"][setup]["summary"], indent=1), flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
