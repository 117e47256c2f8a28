"""The registry's champion alias and its history, in MLflow: the writes gate, rollback and the loop share.

Every write here is safe to retry and to race:
- a history entry is one tag with a key no other writer can pick (time + random suffix), so two writers
  never overwrite each other's entry; `seq` is its position when read back;
- a champion change is recorded *before* the alias moves, so a crash between the two leaves an entry
  that the next gate or rollback completes (`finish_pending`) instead of a move nobody recorded;
- the alias moves only if it still points where the writer last saw it (`move_champion`)."""

from __future__ import annotations

import json
import os
import uuid
from datetime import datetime, timezone
from typing import Any

from flightloop import tracking
from flightloop.redact import redact

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_PREFIX = "champion_history."
FLOW_RUN_ENV = "PREFECT__FLOW_RUN_ID"
GATE_ACTIONS = ("initial", "promote", "refuse")
_VERSION_TAGS = (
    "action",
    "at",
    "reason",
    "metric",
    "champion_score",
    "challenger_score",
    "margin",
    "window",
    "champion_before",
    "champion_after",
    "flow_run",
)


def client():
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    return mlflow.MlflowClient()


class RegistryError(Exception):
    """The registry could not answer (unreachable, refused, broken): not the same as "no such alias"."""


def alias_version(client, name: str, alias: str = CHAMPION) -> int | None:
    """The version an alias points at; None when the alias (or the model) does not exist; RegistryError,
    naming the store (credentials masked), when the registry cannot say."""
    import mlflow

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException as exc:
        missing = exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
            exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc)  # an unknown alias
        )
        if missing:
            return None
        where = redact(tracking.tracking_uri())
        raise RegistryError(f"registry {where} did not answer: {redact(str(exc))[:500]}") from None
    except Exception as exc:  # a store that cannot even be opened (SQLite path missing, ...)
        where = redact(tracking.tracking_uri())
        raise RegistryError(
            f"registry {where} unavailable: {exc.__class__.__name__}: {redact(str(exc))[:500]}"
        ) from None


def flow_run() -> dict[str, Any]:
    """Who ran this: the Prefect flow run id and any orchestrator tags, or 'manual'."""
    tags = tracking.extra_tags()
    run_id = os.environ.get(FLOW_RUN_ENV) or next((v for k, v in tags.items() if "flow_run" in k), None)
    return {"flow_run": run_id or "manual", "run_tags": tags}


def history(client, name: str) -> list[dict[str, Any]]:
    """All recorded events of a registered model, oldest first, numbered from 1."""
    import mlflow

    try:
        tags = client.get_registered_model(name).tags
    except mlflow.exceptions.MlflowException:
        return []
    keys = sorted(k for k in tags if k.startswith(HISTORY_PREFIX))
    return [{**json.loads(tags[k]), "seq": i, "key": k} for i, k in enumerate(keys, start=1)]


def record(client, name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Append an event to the model's history (one write), then note it on the version it concerns."""
    now = datetime.now(timezone.utc)
    key = f"{HISTORY_PREFIX}{now:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:8]}"
    event = {"at": now.isoformat(timespec="seconds"), **event, **flow_run()}
    client.set_registered_model_tag(name, key, json.dumps(event, default=str))
    annotate_version(client, name, event)
    seq = next((e["seq"] for e in history(client, name) if e["key"] == key), None)
    return {**event, "seq": seq, "key": key}


def annotate_version(client, name: str, event: dict[str, Any]) -> None:
    """Tags and a description line on the version an event concerns; repeating it changes nothing."""
    version = str(event["version"])
    prefix = "gate" if event["action"] in GATE_ACTIONS else event["action"]
    for key in _VERSION_TAGS:
        if event.get(key) is not None:
            client.set_model_version_tag(name, version, f"{prefix}.{key}", str(event[key])[:4000])
    old = client.get_model_version(name, version).description or ""
    line = f"[{event['at']}] {event['action']}: {event['reason']} (flow run {event['flow_run']})"
    if line not in old:
        client.update_model_version(name, version, (old + "\n" + line).strip()[-20000:])


def move_champion(client, name: str, version: int, expected: int | None) -> bool:
    """Point `champion` at `version` if it still points at `expected`; False (nothing moved) otherwise."""
    if alias_version(client, name) != expected:
        return False
    client.set_registered_model_alias(name, CHAMPION, str(version))
    if alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)
    return True


def finish_pending(client, name: str) -> dict[str, Any] | None:
    """Complete a champion change that was recorded but whose alias move did not happen (a crash or a
    failed write between the two). Returns the completed event, or None when nothing was pending."""
    events = history(client, name)
    if not events:
        return None
    last = events[-1]
    before, after = last.get("champion_before"), last.get("champion_after")
    if after is None or after == before:
        return None
    live = alias_version(client, name)
    if live == after:
        if alias_version(client, name, CHALLENGER) == after:
            client.delete_registered_model_alias(name, CHALLENGER)
        annotate_version(client, name, last)
        return None
    if live != before:
        return None  # someone moved it elsewhere since: theirs is the newer change
    move_champion(client, name, after, before)
    annotate_version(client, name, last)
    return last


def champion_stack(events: list[dict[str, Any]]) -> list[int]:
    """Champions in the order they went live, with rolled-back ones removed (the top is live)."""
    stack: list[int] = []
    for e in events:
        if e["action"] == "rollback":
            while stack and stack[-1] != e["champion_after"]:
                stack.pop()
            if not stack:
                stack.append(e["champion_after"])
        elif e.get("champion_after") is not None and e.get("champion_after") != e.get("champion_before"):
            stack.append(e["champion_after"])
    return stack


def rollback_target(events: list[dict[str, Any]], current: int | None) -> int | None:
    """The champion before the live one."""
    stack = champion_stack(events)
    while stack and stack[-1] == current:
        stack.pop()
    return stack[-1] if stack else None


def service_url(host: str, port: int) -> str:
    """`SERVING_URL`, else the service's address (loopback for a wildcard bind)."""
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return os.environ.get("SERVING_URL") or f"http://{host}:{port}"


def notify_service(url: str | None = None) -> str:
    """Ask each running replica to reload now (best effort; they also poll the alias). `url`, or
    `SERVING_URL`, may name several replicas, comma-separated."""
    url = url or os.environ.get("SERVING_URL")
    if not url:
        return "no service URL; a running service will notice by polling"
    import httpx

    token = os.environ.get("SERVING_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    answers = []
    for one in (u.strip() for u in url.split(",") if u.strip()):
        try:
            r = httpx.post(one.rstrip("/") + "/reload", headers=headers, timeout=30)
            answers.append(f"reload: {r.status_code} {r.text[:200]}")
        except httpx.HTTPError as exc:
            answers.append(f"reload failed ({exc.__class__.__name__}); the service will notice by polling")
    return " | ".join(answers)
