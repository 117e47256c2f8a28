"""Serving benchmark: this service vs `mlflow models serve` of the same registered version, side by side.

Run in a project where `dvc repro` has run (it needs mlflow.db and a champion):

    python bench/serving.py [--project .] [--requests 2000] [--seconds 8] [--out reports/bench_serving.json]

Throughput and p50/p99 latency at concurrency 1, 8, 64 for 1-row and 100-row requests, on loopback, with a
small keep-alive HTTP/1.1 client (raw asyncio sockets, so the client costs little CPU next to the servers).
Each cell runs until `--requests` are done or `--seconds` pass, whichever is first.

Before/after a change to the service: `--baseline DIR` also runs the service from another project folder
(its own code, params.yaml and mlflow.db: e.g. a copy made before the change) as `base`; `--servers ours,base`
leaves mlflow out; `--repeat 3` runs every cell that many times, servers interleaved, and reports the median
and the spread (min..max) of each."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of a process and its children (MiB)."""
    total = 0
    pids = [pid]
    while pids:
        p = pids.pop()
        try:
            status = Path(f"/proc/{p}/status").read_text()
            total += int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS")))
            children = Path(f"/proc/{p}/task/{p}/children").read_text().split()
            pids += [int(c) for c in children]
        except (OSError, StopIteration):
            continue
    return total / 1024


async def _client(
    host: str,
    port: int,
    payload: bytes,
    path: str,
    deadline: float,
    budget: list[int],
    latencies: list[float],
    errors: list[str],
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n"
    ).encode()
    request = head + payload
    try:
        while budget[0] > 0 and time.perf_counter() < deadline:
            budget[0] -= 1
            t0 = time.perf_counter()
            writer.write(request)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            if b" 200 " not in status_line:
                errors.append(status_line.decode(errors="replace").strip())
    finally:
        writer.close()


async def load(port: int, path: str, payload: bytes, concurrency: int, requests: int, seconds: float) -> dict:
    latencies: list[float] = []
    errors: list[str] = []
    budget = [requests]
    t0 = time.perf_counter()
    await asyncio.gather(
        *[
            _client("127.0.0.1", port, payload, path, t0 + seconds, budget, latencies, errors)
            for _ in range(concurrency)
        ]
    )
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {
        "requests": len(lat),
        "errors": len(errors),
        "seconds": round(wall, 3),
        "rps": round(len(lat) / wall, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 3),
        "p99_ms": round(float(np.percentile(lat, 99)), 3),
    }


def wait_http(port: int, path: str, timeout: float = 180) -> None:
    import httpx

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"nothing ready on port {port}{path}")


def start_service(folder: Path, port: int) -> subprocess.Popen:
    """`python -m serving` from `folder` (its code, its params.yaml, its MLflow store), logging to a temp dir."""
    import yaml

    raw = yaml.safe_load((folder / "params.yaml").read_text())
    raw["serving"] = {**raw.get("serving", {}), "prediction_dir": tempfile.mkdtemp(prefix="bench-preds-")}
    params_file = Path(tempfile.mkdtemp()) / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw))
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(folder), MLFLOW_TRACKING_URI=f"sqlite:///{folder / 'mlflow.db'}")
    return subprocess.Popen(
        [sys.executable, "-m", "serving", "--params", str(params_file), "--port", str(port)],
        cwd=folder,  # `-m` puts the working directory first on sys.path: this folder's code runs
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _summary(cells: list[dict]) -> dict:
    """Median and spread of repeated runs of one cell."""
    out = {}
    for key in ("rps", "p50_ms", "p99_ms"):
        vals = sorted(c[key] for c in cells)
        out[key] = round(float(np.median(vals)), 3)
        out[f"{key}_min"], out[f"{key}_max"] = vals[0], vals[-1]
    out["runs"] = [c["rps"] for c in cells]
    out["errors"] = sum(c["errors"] for c in cells)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--project", type=Path, default=Path("."))
    ap.add_argument("--requests", type=int, default=2000, help="at most this many requests per cell")
    ap.add_argument("--seconds", type=float, default=8.0, help="at most this long per cell")
    ap.add_argument("--concurrency", default="1,8,64")
    ap.add_argument("--rows", default="1,100")
    ap.add_argument("--servers", default="ours,mlflow", help="any of ours, base, mlflow")
    ap.add_argument("--baseline", type=Path, help="project folder whose service runs as `base`")
    ap.add_argument("--repeat", type=int, default=1, help="runs per cell (servers interleaved)")
    ap.add_argument("--out", type=Path, default=Path("reports/bench_serving.json"))
    args = ap.parse_args(argv)
    project = args.project.resolve()
    wanted = args.servers.split(",")
    if "base" in wanted and args.baseline is None:
        ap.error("--servers base needs --baseline DIR")
    sys.path.insert(0, str(project))
    from flightloop import registry, tracking
    from flightloop.config import load_params
    from models.packaged import model_dir

    os.chdir(project)
    params = load_params("params.yaml")
    name = params.register_.model_name
    version = registry.alias_version(registry.client(), name, "champion")
    meta = json.loads(next(model_dir(name, version).rglob("artifacts/meta.json")).read_text())
    test = pd.read_parquet(project / "data" / "prepared" / "test.parquet")
    records = json.loads(test[meta["features"]].head(100).to_json(orient="records"))

    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(PYTHONPATH=str(project), MLFLOW_TRACKING_URI=tracking.tracking_uri())
    # `mlflow models serve` execs `uvicorn` by name: the venv's bin must be on PATH even when not activated
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    servers: dict = {}
    if "ours" in wanted:
        port = free_port()
        servers["ours"] = (start_service(project, port), port, "/predict", lambda rows: {"rows": rows}, "/ready")
    if "base" in wanted:
        port = free_port()
        base = args.baseline.resolve()
        servers["base"] = (start_service(base, port), port, "/predict", lambda rows: {"rows": rows}, "/ready")
    if "mlflow" in wanted:
        mlflow_port = free_port()
        servers["mlflow"] = (
            subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "mlflow"),
                    "models",
                    "serve",
                    "-m",
                    f"models:/{name}/{version}",
                    "--env-manager",
                    "local",
                    "--host",
                    "127.0.0.1",
                    "-p",
                    str(mlflow_port),
                ],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            ),
            mlflow_port,
            "/invocations",
            lambda rows: {"dataframe_records": rows},
            "/ping",
        )
    results: dict = {
        "model": f"models:/{name}/{version}",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "limits": {"requests_per_cell": args.requests, "seconds_per_cell": args.seconds, "repeat": args.repeat},
        "baseline": str(args.baseline) if args.baseline else None,
        "cells": [],
        "rss_mib": {},
    }
    try:
        for label, (proc, port, _, _, ready) in servers.items():
            wait_http(port, ready)
            results["rss_mib"][f"{label}_idle"] = round(rss_mib(proc.pid), 1)
        for n_rows in [int(x) for x in args.rows.split(",")]:
            for conc in [int(x) for x in args.concurrency.split(",")]:
                runs: dict[str, list[dict]] = {label: [] for label in servers}
                for _ in range(args.repeat):
                    for label, (_proc, port, path, wrap, _) in servers.items():
                        payload = json.dumps(wrap(records[:n_rows])).encode()
                        asyncio.run(load(port, path, payload, min(conc, 8), 50, 10))  # warm-up
                        cell = asyncio.run(load(port, path, payload, conc, args.requests, args.seconds))
                        runs[label].append(cell)
                        print(
                            f"{label:6} rows={n_rows:<3} c={conc:<2} {cell['rps']:>8} req/s  "
                            f"p50 {cell['p50_ms']:>8} ms  p99 {cell['p99_ms']:>8} ms  errors {cell['errors']}",
                            flush=True,
                        )
                for label, cells in runs.items():
                    results["cells"].append({"server": label, "rows": n_rows, "concurrency": conc, **_summary(cells)})
        for label, (proc, *_rest) in servers.items():
            results["rss_mib"][f"{label}_after_load"] = round(rss_mib(proc.pid), 1)
    finally:
        for label, (proc, *_rest) in servers.items():
            try:
                if label == "mlflow":
                    os.killpg(proc.pid, signal.SIGTERM)
                else:
                    proc.send_signal(signal.SIGINT)
                proc.wait(timeout=30)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                proc.kill()
    by = {(c["server"], c["rows"], c["concurrency"]): c for c in results["cells"]}
    results["ratios"] = [
        {
            "vs": other,
            "rows": r,
            "concurrency": c,
            "throughput_x": round(by["ours", r, c]["rps"] / by[other, r, c]["rps"], 3),
            "p99_fraction": round(by["ours", r, c]["p99_ms"] / by[other, r, c]["p99_ms"], 3),
        }
        for other in ("mlflow", "base")
        for (s, r, c) in by
        if s == "ours" and (other, r, c) in by
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1))
    print(json.dumps({"ratios": results["ratios"], "rss_mib": results["rss_mib"]}, indent=1))


if __name__ == "__main__":
    main()
