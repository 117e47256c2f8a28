"""Alerts when the policy fires: Prefect events, notifications, and the automation that retrains on them."""

from __future__ import annotations

import logging
import os
from typing import Any
from uuid import UUID

from monitoring.drift import WindowSummary
from monitoring.policy import COMPLETED_EVENT, FAILED_EVENT, RETRAIN_EVENTS, Decision, RetrainRequest

log = logging.getLogger("monitoring.alerts")
NOTIFY_ENV = "MONITORING_NOTIFY_URLS"  # comma-separated Apprise URLs, added to monitoring.notify_urls
AUTOMATION_NAME = "retrain on drift"
# the retraining run's parameters, filled in from the event by the automation (Prefect renders the
# template as JSON, so the request arrives as the structured object the retraining flow takes)
RETRAIN_PARAMETERS = {"request": "{{ event.payload.request }}"}


def model_resource(model_name: str, model_version: int | None = None) -> dict[str, str]:
    resource = {"prefect.resource.id": f"mlflow.model.{model_name}", "prefect.resource.name": model_name}
    if model_version is not None:
        resource["mlflow.model.version"] = str(model_version)
    return resource


def event_payload(summary: WindowSummary, decision: Decision) -> dict[str, Any]:
    return {
        "window_id": summary.window_id,
        "window_start": summary.start,
        "window_end": summary.end,
        "retrain": decision.retrain,
        "kind": decision.kind,
        "reasons": decision.reasons,
        "request": decision.request.model_dump(mode="json") if decision.request else None,
        "figures": summary.key_figures(),
    }


def emit_alerts(summary: WindowSummary, decision: Decision, model_name: str) -> list[Any]:
    """One Prefect event per name in `decision.events`; returns the emitted events (None where Prefect
    has no events client, e.g. events turned off)."""
    from prefect.events import emit_event

    payload = event_payload(summary, decision)
    resource = model_resource(model_name, summary.model_version)
    return [emit_event(event=name, resource=resource, payload=payload) for name in decision.events]


def emit_retrain_outcome(request: RetrainRequest, ok: bool, reason: str) -> Any:
    """`model.retrain.completed` / `model.retrain.failed` for the request's model (seen in the Event Feed)."""
    from prefect.events import emit_event

    payload = {"request": request.model_dump(mode="json"), "key": request.key, "reason": reason}
    resource = model_resource(request.model_name, request.model_version)
    return emit_event(event=COMPLETED_EVENT if ok else FAILED_EVENT, resource=resource, payload=payload)


def notify_urls(configured: tuple[str, ...] | list[str] = ()) -> list[str]:
    extra = [u.strip() for u in os.environ.get(NOTIFY_ENV, "").split(",") if u.strip()]
    return list(dict.fromkeys([*configured, *extra]))


def notify(summary: WindowSummary, decision: Decision, model_name: str, urls: list[str]) -> str:
    """A log line always; an Apprise notification to each URL when any are configured."""
    title = f"[{model_name}] {decision.kind}: {'retrain' if decision.retrain else 'no retrain'} ({summary.window_id})"
    body = "\n".join(decision.reasons)
    level = logging.WARNING if decision.kind != "none" else logging.INFO
    log.log(level, "%s | %s", title, "; ".join(decision.reasons))
    if decision.kind != "none":
        send(title, body, urls)
    return title


def send(title: str, body: str, urls: list[str]) -> None:
    """An Apprise notification to each URL (nothing when there are none); a failure is logged, not raised."""
    if not urls:
        return
    import apprise

    sender = apprise.Apprise()
    for url in urls:
        sender.add(url)
    if not sender.notify(title=title, body=body):
        log.error("monitoring: a notification could not be delivered to %d URL(s)", len(urls))


def ensure_retrain_automation(
    deployment: str | UUID,
    model_name: str,
    name: str = AUTOMATION_NAME,
    events: tuple[str, ...] = RETRAIN_EVENTS,
):
    """Create, or bring up to date, the automation that runs the retraining deployment when a retrain
    event of `model_name` arrives, with the event's decision as the run's parameters; idempotent by
    automation name. `deployment` is an id or `flow-name/deployment-name`.

    It matches that one model's resource id exactly: the replay's models (`<name>-replay-<policy>[-s<seed>]`) and
    any other model's events never start a production retrain."""
    from prefect.automations import Automation, EventTrigger, RunDeployment
    from prefect.client.orchestration import get_client

    if isinstance(deployment, UUID):
        deployment_id = deployment
    else:
        try:
            deployment_id = UUID(str(deployment))
        except ValueError:
            with get_client(sync_client=True) as client:
                deployment_id = client.read_deployment_by_name(str(deployment)).id
    match = {"prefect.resource.id": model_resource(model_name)["prefect.resource.id"]}
    wanted = dict(
        name=name,
        description=f"Runs the retraining deployment with the decision when monitoring of {model_name} "
        "reports drift, degraded performance or a scheduled retrain.",
        trigger=EventTrigger(expect=set(events), match=match, posture="Reactive", threshold=1),
        actions=[RunDeployment(source="selected", deployment_id=deployment_id, parameters=dict(RETRAIN_PARAMETERS))],
        enabled=True,
    )
    with get_client(sync_client=True) as client:
        found = client.read_automations_by_name(name=name)
        for extra in found[1:]:  # a race may have made two; keep one
            client.delete_automation(extra.id)
    if found:
        automation = Automation(**{**found[0].model_dump(), **wanted})
        automation.update()
        return automation
    return Automation(**wanted).create()
