"""MLflow tracking server on PostgreSQL vs on SQLite, side by side in one run, under the load the loop puts
on it at once: replicas polling `@champion`, a retrain (runs, params, metrics, model versions, alias
moves, history tags) and monitoring (a run with metrics per window). Writes reports/bench_registry.json.

Each store gets its own `mlflow server` (one worker, as `make ui` and `make stack` start it) on a free
loopback port; the same client processes hit each for the same time. Reported per store: operations per
second by kind and the errors (an exception of the MLflow client, e.g. `database is locked`). The
PostgreSQL database is this benchmark's own (created, then dropped).

python -m bench.registry_store [--seconds 30] [--pg postgresql://postgres@127.0.0.1:5432]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from flightloop import paths

MODEL = "bench-model"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _client(uri: str):  # noqa: ANN202 - an MlflowClient
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"  # count the errors, do not hide them in retries
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _hammer(uri: str, seconds: float, out: mp.Queue, kind: str, step, pause: float = 0.0) -> None:  # noqa: ANN001
    """Repeat `step(client, experiment_id) -> operations done` for `seconds`; report ops and errors."""
    client, ops, errors = _client(uri), 0, []
    exp = client.get_experiment_by_name("bench").experiment_id
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            ops += step(client, exp)
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {str(exc)[:120]}")
        time.sleep(pause)
    out.put({"kind": kind, "ops": ops, "errors": errors})


def _follow(client, exp: str) -> int:  # noqa: ANN001
    """What a replica's follower does: read the alias."""
    client.get_model_version_by_alias(MODEL, "champion")
    return 1


def _retrain(client, exp: str) -> int:  # noqa: ANN001
    """What a retrain does to the store: a run with params and per-epoch metrics, a model version, the
    alias moved and a history tag written."""
    run = client.create_run(exp)
    client.log_param(run.info.run_id, "lr", "0.001")
    for epoch in range(5):
        client.log_metric(run.info.run_id, "val_loss", 1.0 / (epoch + 1), step=epoch)
    version = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias(MODEL, "champion", version.version)
    client.set_registered_model_tag(MODEL, f"history.{uuid.uuid4().hex[:8]}", "{}")
    client.set_terminated(run.info.run_id)
    return 11


def _monitor(client, exp: str) -> int:  # noqa: ANN001
    """What monitoring does per window: a run with a few dozen metrics."""
    run = client.create_run(exp)
    for i in range(20):
        client.log_metric(run.info.run_id, f"drift_score.f{i}", 0.01 * i)
    client.set_terminated(run.info.run_id)
    return 22


def replica(uri: str, seconds: float, out: mp.Queue) -> None:
    _hammer(uri, seconds, out, "replica alias reads", _follow, pause=0.05)


def retrain(uri: str, seconds: float, out: mp.Queue) -> None:
    _hammer(uri, seconds, out, "retrain writes", _retrain)


def monitor(uri: str, seconds: float, out: mp.Queue) -> None:
    _hammer(uri, seconds, out, "monitoring writes", _monitor)


def measure(uri: str, seconds: float, replicas: int) -> dict:
    client = _client(uri)
    exp = client.create_experiment("bench")
    client.create_registered_model(MODEL)
    run = client.create_run(exp)  # a champion to follow from the start
    first = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
    client.set_registered_model_alias(MODEL, "champion", first.version)
    out: mp.Queue = mp.Queue()
    ctx = [(replica, uri)] * replicas + [(retrain, uri), (monitor, uri)]
    procs = [mp.Process(target=fn, args=(u, seconds, out)) for fn, u in ctx]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 300) for _ in procs]
    for p in procs:
        p.join()
    kinds: dict[str, dict] = {}
    for r in results:
        k = kinds.setdefault(r["kind"], {"ops": 0, "errors": 0, "examples": []})
        k["ops"] += r["ops"]
        k["errors"] += len(r["errors"])
        k["examples"] += r["errors"][:3]
    for k in kinds.values():
        k["ops_per_s"] = round(k.pop("ops") / seconds, 1)
    return kinds


def serve(backend: str, artifacts: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    cmd = [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", backend]
    cmd += ["--artifacts-destination", str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    import httpx

    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"mlflow server on {backend} not healthy")


def main(argv: list[str] | None = None) -> None:
    import psycopg

    from flows.stack import DEFAULT_PG, PG_ENV, pg_url
    from flows.ui import stop

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--pg", default=os.environ.get(PG_ENV, DEFAULT_PG))
    ap.add_argument("--out", type=Path, default=paths.REPORTS / "bench_registry.json")
    args = ap.parse_args(argv)
    db = f"flightloop_bench_{uuid.uuid4().hex[:8]}"
    report: dict = {"seconds": args.seconds, "replicas": args.replicas, "cpus": os.cpu_count()}
    report["python"] = platform.python_version()
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        with psycopg.connect(f"{args.pg}/postgres", autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        try:
            stores = {"sqlite": f"sqlite:///{tmp_path / 'mlflow.db'}", "postgresql": pg_url(args.pg, db)}
            for name, backend in stores.items():
                proc, url = serve(backend, tmp_path / f"art-{name}", tmp_path / f"{name}.log")
                try:
                    report[name] = measure(url, args.seconds, args.replicas)
                finally:
                    stop([proc])
                print(name, json.dumps(report[name]), flush=True)
        finally:
            with psycopg.connect(f"{args.pg}/postgres", autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
