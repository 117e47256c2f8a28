"""Deployments of every flow, served by one process so that "Run" in the Prefect UI runs them.

Add a flow by adding one line to DEPLOYMENTS (an import path, and the deployment's options)."""

from __future__ import annotations

import argparse
import importlib
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
        parameters = {**opts.pop("parameters", {}), "project_dir": str(project_dir)}
        built.append(fl.to_deployment(name=fl.name, parameters=parameters, **opts))
    return built


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--project-dir", default=".", type=Path)
    ap.add_argument("--limit", type=int, default=1, help="flow runs at once (the pipeline shares one dvc.lock)")
    args = ap.parse_args(argv)
    # Runs go to PREFECT_API_URL (`make ui` points it at the local server); serving needs a server.
    serve(*deployments(args.project_dir.resolve()), limit=args.limit)


if __name__ == "__main__":
    main()
