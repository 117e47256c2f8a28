"""Prefect flow: move `champion` back to the previous champion (recorded like every promotion)."""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.runtime import flow_run

from tasks import registry
from tasks.config import load_params
from tasks.paths import PARAMS


@flow(name="rollback-champion")
def rollback_flow(reason: str = "rollback from Prefect", params_path: str = str(PARAMS)) -> dict:
    """One call puts the previous champion back live; the flow run id goes into the history."""
    import os

    os.environ.setdefault(registry.FLOW_RUN_ENV, str(flow_run.get_id() or "unknown"))
    params = load_params(params_path)
    name = params.register_.model_name
    event = task(registry.rollback, name="rollback")(name, reason, registry.service_url(params.extra))
    get_run_logger().info(
        "champion v%s -> v%s (%s)", event["champion_before"], event["champion_after"], event["notify"]
    )
    return event


if __name__ == "__main__":
    rollback_flow()
