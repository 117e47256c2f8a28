"""The model registry's champion: gate runs, promotion, rollback and their history, all in MLflow.

Each decision is written on the model version (tags `gate.*` + a description line) and appended to the
registered model as one tag per event (`champion_history.000001`, ...), so the history lives with the
registry (SQLite here, a tracking server at scale) and not in a local file.

    python -m tasks.registry history          # every champion change and refusal, oldest first
    python -m tasks.registry promote [--version N] [--window PATH] [--force --reason TEXT]
    python -m tasks.registry rollback [--reason TEXT]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tasks import paths, tracking
from tasks.config import load_params

CHAMPION, CHALLENGER = "champion", "challenger"
HISTORY_PREFIX = "champion_history."
FLOW_RUN_ENV = "PREFECT__FLOW_RUN_ID"


def _client():
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    return mlflow.MlflowClient()


def alias_version(client, name: str, alias: str = CHAMPION) -> int | None:
    """The version an alias points at, or None when the alias (or the model) does not exist."""
    import mlflow

    try:
        return int(client.get_model_version_by_alias(name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def flow_run() -> dict[str, Any]:
    """Who ran this: the Prefect flow run id and any orchestrator tags, or 'manual'."""
    tags = tracking.extra_tags()
    run_id = os.environ.get(FLOW_RUN_ENV) or next((v for k, v in tags.items() if "flow_run" in k), None)
    return {"flow_run": run_id or "manual", "run_tags": tags}


def history(client, name: str) -> list[dict[str, Any]]:
    """All recorded events of a registered model, oldest first."""
    import mlflow

    try:
        tags = client.get_registered_model(name).tags
    except mlflow.exceptions.MlflowException:
        return []
    return [json.loads(tags[k]) for k in sorted(k for k in tags if k.startswith(HISTORY_PREFIX))]


def record(client, name: str, event: dict[str, Any]) -> dict[str, Any]:
    """Append an event to the model's history and write it on the version it concerns."""
    seq = len(history(client, name)) + 1
    event = {"seq": seq, "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), **event, **flow_run()}
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{seq:06d}", json.dumps(event, default=str))
    version = str(event["version"])
    prefix = "gate" if event["action"] in ("initial", "promote", "refuse") else event["action"]
    for key in (
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
    ):
        if event.get(key) is not None:
            client.set_model_version_tag(name, version, f"{prefix}.{key}", str(event[key])[:4000])
    old = client.get_model_version(name, version).description or ""
    line = f"[{event['at']}] {event['action']}: {event['reason']} (flow run {event['flow_run']})"
    client.update_model_version(name, version, (old + "\n" + line).strip()[-20000:])
    return event


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


def model_dir(name: str, version: int, dst: Path | str | None = None) -> Path:
    """Download a version's pyfunc folder once (MLflow artifact store -> local folder)."""
    import mlflow

    mlflow.set_tracking_uri(tracking.tracking_uri())
    dst = Path(dst or tempfile.mkdtemp(prefix=f"{name}-v{version}-"))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))


def load_scorer(name: str, version: int, dst: Path | str | None = None):
    """The version's preprocessor + network as a `models.packaged.Scorer` (no pyfunc on the hot path)."""
    from models.packaged import Scorer

    art = model_dir(name, version, dst) / "artifacts"
    return Scorer.from_files(art / "preprocessor.json", art / "model.pt", art / "meta.json")


def service_url(extra: dict[str, Any]) -> str:
    """`SERVING_URL`, else the service's address from params.yaml `serving:` (loopback by default)."""
    cfg = extra.get("serving") or {}
    host = cfg.get("host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    return os.environ.get("SERVING_URL") or f"http://{host}:{cfg.get('port', 8000)}"


def notify_service(url: str | None = None) -> str:
    """Ask a running service to reload now (best effort; it also polls the alias)."""
    url = url or os.environ.get("SERVING_URL")
    if not url:
        return "no service URL; a running service will notice by polling"
    import httpx

    token = os.environ.get("SERVING_TOKEN")
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.post(url.rstrip("/") + "/reload", headers=headers, timeout=30)
        return f"reload: {r.status_code} {r.text[:200]}"
    except httpx.HTTPError as exc:
        return f"reload failed ({exc.__class__.__name__}); the service will notice by polling"


def _move_champion(client, name: str, version: int) -> None:
    client.set_registered_model_alias(name, CHAMPION, str(version))
    if alias_version(client, name, CHALLENGER) == version:
        client.delete_registered_model_alias(name, CHALLENGER)


def run_gate(
    name: str,
    version: int,
    window: Path | str,
    label: str,
    cfg,
    force_reason: str | None = None,
    notify_url: str | None = None,
):
    """Score champion and challenger on `window`, apply `tasks.gate.decide`, move the alias, record it."""
    from tasks.gate import decide, read_window, score

    client = _client()
    champion = alias_version(client, name)
    base = {
        "version": version,
        "champion_before": champion,
        "window": str(window),
        "metric": cfg.metric,
        "margin": cfg.margin,
        "slice_tolerance": cfg.slice_tolerance,
    }
    if force_reason is not None:
        _move_champion(client, name, version)
        event = record(
            client,
            name,
            {**base, "action": "promote", "champion_after": version, "reason": f"forced by hand: {force_reason}"},
        )
        event["notify"] = notify_service(notify_url)
        return {**event, "promoted": True, "champion_version": version}
    if champion == version:
        if any(e["champion_after"] == version for e in history(client, name)):
            return {**base, "promoted": False, "champion_version": version, "reason": "already champion"}
        # registered as the very first version: it went live without a comparison; say so
        event = record(
            client,
            name,
            {
                **base,
                "action": "initial",
                "champion_before": None,
                "champion_after": version,
                "reason": "no champion yet: the first version becomes champion",
            },
        )
        return {**event, "promoted": True, "champion_version": version}
    frame = read_window(window, label)
    with tempfile.TemporaryDirectory() as tmp:
        new = load_scorer(name, version, Path(tmp) / "new")
        y = frame[label].to_numpy()
        challenger_scores = score(y, new.predict_proba(frame), frame, cfg)
        champion_scores = None
        if champion is not None:
            old = load_scorer(name, champion, Path(tmp) / "old")
            champion_scores = score(y, old.predict_proba(frame), frame, cfg)
    decision = decide(champion_scores, challenger_scores, cfg)
    if decision.promote:
        _move_champion(client, name, version)
    elif alias_version(client, name, CHALLENGER) is None:
        client.set_registered_model_alias(name, CHALLENGER, str(version))
    event = record(
        client,
        name,
        {
            **base,
            "action": ("promote" if champion is not None else "initial") if decision.promote else "refuse",
            "champion_after": version if decision.promote else champion,
            "champion_score": decision.champion_score,
            "challenger_score": decision.challenger_score,
            "improvement": decision.improvement,
            "window_rows": challenger_scores.rows,
            "worse_slices": decision.worse_slices[:5],
            "reason": decision.reason,
        },
    )
    if decision.promote:
        event["notify"] = notify_service(notify_url)
    return {**event, "promoted": decision.promote, "champion_version": event["champion_after"]}


def rollback(name: str, reason: str = "rollback by hand", notify_url: str | None = None) -> dict[str, Any]:
    """Move `champion` back to the champion before the live one, and record it."""
    client = _client()
    current = alias_version(client, name)
    target = rollback_target(history(client, name), current)
    if target is None:
        raise SystemExit(f"rollback: no earlier champion of {name} to go back to (live: v{current})")
    client.set_registered_model_alias(name, CHAMPION, str(target))
    event = record(
        client,
        name,
        {
            "action": "rollback",
            "version": target,
            "champion_before": current,
            "champion_after": target,
            "reason": reason,
        },
    )
    event["notify"] = notify_service(notify_url)
    return event


def format_history(events: list[dict[str, Any]]) -> str:
    lines = [f"{'#':>3} {'when (UTC)':25} {'action':9} {'ver':>4} {'champion':>9}  flow run / reason"]
    for e in events:
        arrow = f"{e.get('champion_before') or 'none'}->{e.get('champion_after') or 'none'}"
        lines.append(
            f"{e['seq']:>3} {e['at']:25} {e['action']:9} {e['version']:>4} {arrow:>9}  {e['flow_run']}: {e['reason']}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("history", help="print the champion history")
    h.add_argument("--json", action="store_true")
    p = sub.add_parser("promote", help="run the gate for a version (default: @challenger), or --force it")
    p.add_argument("--version", type=int)
    p.add_argument("--window", type=Path, default=paths.PREPARED / "test.parquet")
    p.add_argument("--force", action="store_true", help="skip the comparison (recorded as forced)")
    p.add_argument("--reason", default="")
    r = sub.add_parser("rollback", help="move champion back to the previous champion")
    r.add_argument("--reason", default="rollback by hand")
    args = ap.parse_args(argv)
    params = load_params(args.params)
    name = params.register_.model_name
    if args.cmd == "history":
        events = history(_client(), name)
        print(json.dumps(events, indent=1) if args.json else format_history(events))
    elif args.cmd == "promote":
        from tasks.gate import gate_cfg

        version = args.version or alias_version(_client(), name, CHALLENGER)
        if version is None:
            raise SystemExit("promote: no @challenger; pass --version")
        result = run_gate(
            name,
            version,
            args.window,
            params.data.label,
            gate_cfg(params.extra),
            force_reason=(args.reason or "no reason given") if args.force else None,
            notify_url=service_url(params.extra),
        )
        print(f"promote: v{version} {'promoted' if result['promoted'] else 'refused'}: {result['reason']}")
    else:
        event = rollback(name, args.reason, service_url(params.extra))
        print(f"rollback: champion v{event['champion_before']} -> v{event['champion_after']} ({event['notify']})")


if __name__ == "__main__":
    main()
