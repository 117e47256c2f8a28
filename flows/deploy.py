"""Deployments of every flow, served by one process so that "Run" in the Prefect UI runs them, and the
automation that closes the loop (a retrain event of the project's model runs `retraining` with the
decision as its parameters).

Add a flow by adding one line to DEPLOYMENTS (an import path, and the deployment's options). Flows that
change the project run one at a time (the `workspace-<model>` global concurrency limit, taken inside
them); their deployments also queue their own runs one at a time, so a burst of events waits visibly in
the UI ("AwaitingConcurrencySlot") instead of piling up."""

from __future__ import annotations

import argparse
import importlib
import inspect
from pathlib import Path
from typing import Any

from prefect import serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy
from prefect.schedules import Cron

ONE_AT_A_TIME = ConcurrencyLimitConfig(limit=1, collision_strategy=ConcurrencyLimitStrategy.ENQUEUE)

# (import path "module:flow", options for flow.to_deployment). Schedules that would surprise a user stay
# inactive until someone switches them on in the UI.
DEPLOYMENTS: list[tuple[str, dict[str, Any]]] = [
    (
        "flows.training:training",
        {
            "description": "dvc.yaml pipeline stage by stage; parameters override params.yaml for this run only",
            "parameters": {"params": {}},
            "schedules": [Cron("0 3 * * 1", timezone="UTC", active=False)],  # weekly retrain, off by default
            "concurrency_limit": ONE_AT_A_TIME,
            "tags": ["pipeline"],
        },
    ),
    (
        "flows.ingest:ingest",
        {
            "description": "validate a new month (or a CSV/Parquet file) and version it with DVC",
            "parameters": {"month": "2013-07"},
            "concurrency_limit": ONE_AT_A_TIME,
            "tags": ["data"],
        },
    ),
    (
        "flows.retraining:retraining",
        {
            "description": "a monitoring decision -> newly labelled data as a new DVC data version -> training "
            "on the decision's split -> gate -> service reload; run by the 'retrain on drift' automation",
            "concurrency_limit": ONE_AT_A_TIME,
            "tags": ["pipeline", "loop"],
        },
    ),
    (
        "flows.monitor:monitoring",
        {
            "description": "drift, quality and performance of what the service logged since the last run",
            "schedules": [Cron("0 * * * *", timezone="UTC", active=False)],  # hourly, off by default
            "tags": ["monitoring", "loop"],
        },
    ),
    (
        "flows.rollback:rollback_flow",
        {
            "description": "put the previous champion back live",
            "concurrency_limit": ONE_AT_A_TIME,
            "tags": ["registry"],
        },
    ),
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


def pool_deployments(repository: str, job_env: dict[str, str], branch: str = "main") -> list:
    """The same deployments for a work pool (`make stack`): each flow run clones `repository` at
    `branch` into its worker's own directory and runs there, with `job_env` (servers, DVC remote)."""
    from prefect.runner.storage import GitRepository

    built = []
    for target, options in DEPLOYMENTS:
        module, _, func = target.partition(":")
        entrypoint = f"{module.replace('.', '/')}.py:{func}"
        fl = load_flow(target).from_source(GitRepository(url=repository, branch=branch), entrypoint)
        opts = dict(options)
        parameters = dict(opts.pop("parameters", {}))  # project_dir unset: the run's own clone
        built.append(fl.to_deployment(name=fl.name, parameters=parameters, job_variables={"env": job_env}, **opts))
    return built


def deployment_id_for(flow_name: str, project_dir: str | Path):
    """Register (apply) one deployment by flow name without serving it; returns its id."""
    for deployment in deployments(Path(project_dir)):
        if deployment.flow_name == flow_name:
            return deployment.apply()
    raise KeyError(f"no deployment for flow {flow_name!r}")


def main(argv: list[str] | None = None) -> None:
    from flightloop import paths
    from flightloop.config import load_params
    from flows.common import ensure_limit, workspace_limit
    from monitoring.alerts import ensure_retrain_automation

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--project-dir", default=".", type=Path)
    ap.add_argument("--limit", type=int, default=4, help="flow runs at once (runs that change the project queue)")
    args = ap.parse_args(argv)
    # Runs go to PREFECT_API_URL (`make ui` points it at the local server); serving needs a server.
    project = args.project_dir.resolve()
    name = load_params(project / paths.PARAMS).register_.model_name
    ensure_limit(workspace_limit(name))
    ensure_retrain_automation(deployment_id_for("retraining", project), model_name=name)
    serve(*deployments(project), limit=args.limit)


if __name__ == "__main__":
    main()
