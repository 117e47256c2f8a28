"""Training flow vs `dvc repro` on the same changed stages, side by side in one project.

Each measured run changes `train.lr` (so train -> evaluate -> register rerun with the same number of
epochs; ingest/validate/prepare are checked and skipped), alternating dvc, flow, flow, dvc, ... after
the Prefect API is up. Usage: python bench/flow_overhead.py [--rounds 2] [--out reports/bench_flow.json]"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tests.conftest import make_project, project_env, set_params  # noqa: E402


def timed_repro(project: Path, lr: float) -> float:
    set_params(project, {"train.lr": lr})
    start = time.perf_counter()
    proc = subprocess.run(["dvc", "repro"], cwd=project, env=project_env(project), capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or "Running stage 'train'" not in proc.stdout:
        raise SystemExit(f"dvc repro failed or skipped train:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return wall


def timed_flow(project: Path, lr: float) -> tuple[float, dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterFlowRunId
    from prefect.client.schemas.sorting import TaskRunSort

    from flows.training import TrainingParams, training

    start = time.perf_counter()
    state = training(params=TrainingParams(lr=lr), project_dir=str(project), return_state=True)
    wall = time.perf_counter() - start
    summary = state.result()
    if summary["stages"]["train"] != "ran":
        raise SystemExit(f"flow skipped train: {summary['stages']}")
    run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[run_id])),
            sort=TaskRunSort.EXPECTED_START_TIME_ASC,
            limit=200,
        )
    per_task = {t.name: t.total_run_time.total_seconds() for t in tasks}
    return wall, {"stages": summary["stages"], "task_seconds": per_task}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=2, help="pairs of (dvc, flow) runs, in ABBA order")
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "bench_flow.json")
    args = ap.parse_args()

    from flows.common import local_prefect

    with tempfile.TemporaryDirectory() as tmp:
        project = make_project(Path(tmp))
        os.environ.update(project_env(project))  # stage subprocesses of the in-process flow
        os.environ.setdefault("PREFECT_HOME", str(Path(tmp) / "prefect-home"))
        with local_prefect(project):
            t0 = time.perf_counter()
            first_wall, _ = timed_flow(project, 0.003)  # builds everything and starts the local Prefect API
            first = time.perf_counter() - t0
            dvc_runs, flow_runs, details = [], [], []
            lr = 0.003
            for i in range(args.rounds):
                order = ("dvc", "flow") if i % 2 == 0 else ("flow", "dvc")
                for kind in order:
                    lr = round(lr + 0.0001, 6)
                    if kind == "dvc":
                        dvc_runs.append(timed_repro(project, lr))
                    else:
                        wall, info = timed_flow(project, lr)
                        flow_runs.append(wall)
                        details.append(info)
                    print(f"  {kind:4s} lr={lr}: {(dvc_runs if kind == 'dvc' else flow_runs)[-1]:.1f}s", flush=True)

    n_tasks = len(details[0]["stages"])
    dvc_mean, flow_mean = statistics.mean(dvc_runs), statistics.mean(flow_runs)
    task_mean = {s: statistics.mean(d["task_seconds"][s] for d in details) for s in details[0]["stages"]}
    result = {
        "changed": "train.lr (train, evaluate, register rerun; ingest, validate, prepare skipped)",
        "config": "tests/conftest.py SMALL (3 months, 50% rows, 3 epochs)",
        "prefect_api": os.environ.get("PREFECT_API_URL") or "local ephemeral (started before timing)",
        "first_flow_run_incl_api_start_s": round(first, 1),
        "dvc_repro_s": [round(x, 2) for x in dvc_runs],
        "flow_s": [round(x, 2) for x in flow_runs],
        "dvc_repro_mean_s": round(dvc_mean, 2),
        "flow_mean_s": round(flow_mean, 2),
        "ratio": round(flow_mean / dvc_mean, 3),
        "target_ratio": 1.15,
        "overhead_per_task_s": round((flow_mean - dvc_mean) / n_tasks, 2),
        "task_mean_s": {k: round(v, 2) for k, v in task_mean.items()},
        "cpu_count": os.cpu_count(),
    }
    print(f"\n{'':22s}{'mean s':>8s}  runs")
    print(f"{'dvc repro':22s}{dvc_mean:8.1f}  {result['dvc_repro_s']}")
    print(f"{'training flow':22s}{flow_mean:8.1f}  {result['flow_s']}")
    print(f"{'ratio flow/dvc':22s}{result['ratio']:8.3f}  (target <= 1.15)")
    print(f"{'overhead per task':22s}{result['overhead_per_task_s']:8.2f}  ({n_tasks} tasks)")
    for stage, secs in task_mean.items():
        print(f"  task {stage:16s}{secs:8.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
