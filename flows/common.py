"""Prefect pieces shared by the flows: the one task that runs a DVC stage, the one-writer lock on a
project's workspace and registry, and local-mode settings."""

from __future__ import annotations

import contextlib
import contextvars
import os
import time
from collections.abc import Iterator
from pathlib import Path

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.runtime import flow_run

from flows import dvc_stages
from flows.dvc_stages import RAN, SKIPPED, StageFailed

__all__ = ["RAN", "SKIPPED", "StageFailed", "run_stage", "flow_run_tags", "local_prefect", "workspace_lock"]
_held: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar("flightloop_held_limits", default=frozenset())


def _transient(task, task_run, state) -> bool:  # noqa: ANN001 - Prefect's retry_condition_fn signature
    """Retry a failed stage unless it rejected data (a validation failure fails the same way again)."""
    exc = state.result(raise_on_failure=False)
    return not (isinstance(exc, StageFailed) and exc.validation)


@task(
    name="dvc-stage",
    task_run_name="{stage}",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=_transient,
    cache_policy=NO_CACHE,
)
def run_stage(
    stage: str, project_dir: str, extra_tags: dict[str, str] | None = None, tracking_uri: str | None = None
) -> str:
    """Run one dvc.yaml stage through DVC (`dvc repro --single-item`); unchanged stages are skipped.
    `tracking_uri`: the MLflow store the stage logs to (a run workspace logs to its project's)."""
    logger = get_run_logger()
    project = Path(project_dir)
    if not dvc_stages.stage_changed(project, stage):
        logger.info("stage %s: %s", stage, SKIPPED)
        return SKIPPED
    env = dvc_stages.stage_env(project, extra_tags)
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    started = time.perf_counter()
    outcome = dvc_stages.repro_stage(project, stage, env, on_line=lambda line: logger.info("%s", line))
    logger.info("stage %s: %s in %.1fs", stage, outcome, time.perf_counter() - started)
    return outcome


def flow_run_tags() -> dict[str, str]:
    """Tags that lead from an MLflow run back to the Prefect flow run that produced it."""
    tags = {}
    if flow_run.id:
        tags["prefect_flow_run_id"] = str(flow_run.id)
        tags["prefect_flow_run_name"] = str(flow_run.name)
    return tags


def add_flow_run_tags(*tags: str) -> None:
    """Show extra tags (e.g. the MLflow run id) on the current flow run in the UI; best effort."""
    from prefect.client.orchestration import get_client

    if not flow_run.id:
        return
    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(flow_run.id).tags or []
            client.update_flow_run(flow_run.id, tags=sorted(set(current) | set(tags)))
    except Exception as exc:  # the run itself succeeded; a tag is cosmetic
        get_run_logger().warning("could not tag the flow run: %s", exc)


EPHEMERAL_STARTUP_SECONDS = 180


@contextlib.contextmanager
def local_prefect(project: Path) -> Iterator[None]:
    """For CLI entry points: telemetry off and, without PREFECT_HOME, the project's .prefect database
    (the one `make ui` shows). With PREFECT_API_URL set, runs go to that server instead. The temporary
    server gets EPHEMERAL_STARTUP_SECONDS to come up (Prefect's 20 s: a fresh clone's first start migrates
    its database, which on 2 cores once took longer and failed `make demo` on a fresh clone)."""
    from prefect.settings import (
        PREFECT_HOME,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        temporary_settings,
    )

    os.environ.setdefault("DO_NOT_TRACK", "1")
    updates: dict = {PREFECT_SERVER_ANALYTICS_ENABLED: False}
    if "PREFECT_HOME" not in os.environ:
        updates[PREFECT_HOME] = project / ".prefect"
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = EPHEMERAL_STARTUP_SECONDS
    with temporary_settings(updates=updates):
        yield


def workspace_limit(model_name: str) -> str:
    """The Prefect global concurrency limit that guards a project: named after its registered model, as
    one model has one DVC project (every checkout of it, on every worker) and one registry entry."""
    return f"workspace-{model_name}"


def ensure_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit if it does not exist (two creators at once: one wins)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except ObjectAlreadyExists:
                pass


@contextlib.contextmanager
def workspace_lock(model_name: str) -> Iterator[None]:
    """Hold the project's one writer slot: flows that change its DVC workspace or registry (training,
    retraining, ingest, rollback) run one at a time across runners, workers and the CLI, because the
    Prefect server keeps the slot. Flows called inside a holder (retraining's ingest and training) run
    in its slot; monitoring and batch scoring never take it."""
    from prefect.concurrency.sync import concurrency

    name = workspace_limit(model_name)
    held = _held.get()
    if name in held:
        yield
        return
    ensure_limit(name)
    started = time.perf_counter()
    with concurrency(name, occupy=1, strict=True):
        waited = time.perf_counter() - started
        if waited > 1:
            _log().info("waited %.0fs for %s (another flow was changing the project)", waited, name)
        token = _held.set(held | {name})
        try:
            yield
        finally:
            _held.reset(token)


def _log():  # noqa: ANN202 - a logger
    import logging

    try:
        return get_run_logger()
    except Exception:  # outside a flow run
        return logging.getLogger("flows")
