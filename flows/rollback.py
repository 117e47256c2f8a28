"""Prefect flow: move `champion` back to the previous champion (recorded like every promotion)."""

from __future__ import annotations

import os
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from flightloop import paths, registry
from flightloop.config import load_params
from flows.common import workspace_lock
from tasks.gate import rollback


@flow(name="rollback-champion", flow_run_name="rollback-champion")
def rollback_flow(reason: str = "rollback from Prefect", project_dir: str | None = None) -> dict:
    """Put the previous champion back live; the flow run id goes into the champion history.

    Args:
        reason: why, as the history will show it
        project_dir: the project checkout (default: the runner's working directory)
    """
    os.environ.setdefault(registry.FLOW_RUN_ENV, str(flow_run.get_id() or "unknown"))
    params = load_params(Path(project_dir or os.getcwd()) / paths.PARAMS)
    name = params.register_.model_name
    url = registry.service_url(params.serving.host, params.serving.port)
    with workspace_lock(name):
        live = registry.alias_version(registry.client(), name)
        # retried, a rollback that already moved the alias returns its event instead of going further back
        event = task(rollback, name="rollback", retries=2, retry_delay_seconds=2)(name, reason, url, expect=live)
    get_run_logger().info(
        "champion v%s -> v%s (%s)", event["champion_before"], event["champion_after"], event["notify"]
    )
    return event


if __name__ == "__main__":
    rollback_flow()
