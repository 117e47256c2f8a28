"""Deployments of every flow, served by one process so that "Run" in the Prefect UI runs them.

Add a flow by adding one line to DEPLOYMENTS (an import path, and the deployment's options)."""

from __future__ import annotations

import argparse
import importlib
import inspect
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.schedules import Cron

# (import path "module:flow", options for flow.to_deployment). Later flows (rollback, monitoring,
# retraining, batch scoring) go here, one line each. Schedules that would surprise a user stay inactive
# until someone switches them on in the UI.
DEPLOYMENTS: list[tuple[str, dict[str, Any]]] = [
    (
        "flows.training:training",
        {
            "description": "dvc.yaml pipeline stage by stage; parameters override params.yaml",
            "parameters": {"params": {}},
            "schedules": [Cron("0 3 * * 1", timezone="UTC", active=False)],  # weekly retrain, off by default
            "tags": ["pipeline"],
        },
    ),
    (
        "flows.ingest:ingest",
        {
            "description": "validate a new month (or a CSV/Parquet file) and version it with DVC",
            "parameters": {"month": "2013-07"},
            "tags": ["data"],
        },
    ),
    (
        "flows.retraining:retraining",
        {
            "description": "newly labelled data -> new DVC data version -> training -> gate -> service reload; "
            "run by the 'retrain on drift' automation",
            "tags": ["pipeline", "loop"],
        },
    ),
    (
        "flows.monitoring:monitoring",
        {
            "description": "drift, quality and performance of what the service logged since the last run",
            "schedules": [Cron("0 * * * *", timezone="UTC", active=False)],  # hourly, off by default
            "tags": ["monitoring", "loop"],
        },
    ),
    ("flows.rollback:rollback_flow", {"description": "put the previous champion back live", "tags": ["registry"]}),
    (
        "flows.batch_score:batch_score_flow",
        {
            "description": "score a whole file or month with the champion (not through HTTP)",
            "parameters": {"source": "data/prepared/test.parquet"},
            "tags": ["serving"],
        },
    ),
    ("flows.replay:replay", {"description": "replay 2013 under each retraining policy", "tags": ["loop"]}),
]


def load_flow(target: str):  # noqa: ANN201 - a prefect Flow
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def deployments(project_dir: Path) -> list:
    """One RunnerDeployment per entry of DEPLOYMENTS, each run in `project_dir`."""
    built = []
    for target, options in DEPLOYMENTS:
        fl = load_flow(target)
        opts = dict(options)
        parameters = dict(opts.pop("parameters", {}))
        if "project_dir" in inspect.signature(fl.fn).parameters:
            parameters["project_dir"] = str(project_dir)
        built.append(fl.to_deployment(name=fl.name, parameters=parameters, **opts))
    return built


def deployment_id_for(flow_name: str, project_dir: str | Path):
    """Register (apply) one deployment by flow name without serving it; returns its id."""
    for deployment in deployments(Path(project_dir)):
        if deployment.flow_name == flow_name:
            return deployment.apply()
    raise KeyError(f"no deployment for flow {flow_name!r}")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--project-dir", default=".", type=Path)
    ap.add_argument("--limit", type=int, default=1, help="flow runs at once (the pipeline shares one dvc.lock)")
    args = ap.parse_args(argv)
    # Runs go to PREFECT_API_URL (`make ui` points it at the local server); serving needs a server.
    project = args.project_dir.resolve()
    # the automation that closes the loop: a drift/performance event runs the retraining deployment
    from monitoring.alerts import ensure_retrain_automation

    ensure_retrain_automation(deployment_id_for("retraining", project))
    serve(*deployments(project), limit=args.limit)


if __name__ == "__main__":
    main()
