"""Stage 7, gate: promote the challenger to `champion` only when it beats the champion on the same window;
and the champion's other moves: history, forced promotion, rollback.

`decide` is the pure rule; `run_gate` scores both versions, applies it, records the decision and moves
the alias (flightloop/registry.py makes each of those writes safe to retry and to race).

    python -m tasks.gate                      # the dvc.yaml stage: gate the version register wrote
    python -m tasks.gate history [--json]     # every champion change and refusal, oldest first
    python -m tasks.gate promote [--version N] [--window PATH] [--force --reason TEXT]
    python -m tasks.gate rollback [--reason TEXT]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flightloop import paths, registry
from flightloop.config import GateCfg, ImportanceCfg, load_params
from flightloop.importance import movers, permutation_importance
from flightloop.metrics import classification_metrics
from flightloop.registry import CHALLENGER

HIGHER_IS_BETTER = {"roc_auc": True, "pr_auc": True, "brier": False, "log_loss": False}
GATE_REPORT = paths.REPORTS / "gate.json"
DEFAULT_WINDOW = paths.PREPARED / "test.parquet"
COMMANDS = ("history", "promote", "rollback")


class RollbackRefused(RuntimeError):
    """There is nothing to roll back to, or someone else moved the champion meanwhile."""


@dataclass(frozen=True)
class Scores:
    """One model's metric on a window, overall and per slice value ((column, value) -> (metric, rows))."""

    overall: float
    rows: int
    slices: dict[tuple[str, str], tuple[float, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class Decision:
    promote: bool
    reason: str
    metric: str
    champion_score: float | None
    challenger_score: float
    improvement: float | None  # signed so that positive means the challenger is better
    margin: float
    worse_slices: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_value(y: np.ndarray, p: np.ndarray, metric: str) -> float:
    return classification_metrics(y, p, 0.5)[metric]


def score(y: np.ndarray, p: np.ndarray, groups: pd.DataFrame, cfg: GateCfg) -> Scores:
    """The gate metric overall and for every slice value with at least `min_slice_rows` rows."""
    slices: dict[tuple[str, str], tuple[float, int]] = {}
    for col in cfg.slices:
        if col not in groups.columns:
            continue
        for value, idx in groups.groupby(col, dropna=False).indices.items():
            if len(idx) >= cfg.min_slice_rows:
                v = metric_value(y[idx], p[idx], cfg.metric)
                if not math.isnan(v):
                    slices[(col, str(value))] = (v, len(idx))
    return Scores(metric_value(y, p, cfg.metric), len(y), slices)


def _better_by(champion: float, challenger: float, metric: str) -> float:
    return challenger - champion if HIGHER_IS_BETTER[metric] else champion - challenger


def decide(champion: Scores | None, challenger: Scores, cfg: GateCfg) -> Decision:
    """Pure promotion rule: better overall by more than the margin and no slice worse beyond tolerance."""
    base = dict(metric=cfg.metric, challenger_score=challenger.overall, margin=cfg.margin)
    if champion is None:
        return Decision(
            True, "no champion yet: the first version becomes champion", champion_score=None, improvement=None, **base
        )
    if math.isnan(challenger.overall) or math.isnan(champion.overall):
        return Decision(
            False,
            f"{cfg.metric} undefined on this window (one class only?)",
            champion_score=champion.overall,
            improvement=None,
            **base,
        )
    gain = _better_by(champion.overall, challenger.overall, cfg.metric)
    worse = []
    for key, (new, rows) in sorted(challenger.slices.items()):
        if key in champion.slices:
            drop = -_better_by(champion.slices[key][0], new, cfg.metric)
            if drop > cfg.slice_tolerance:
                worse.append(
                    {
                        "column": key[0],
                        "value": key[1],
                        "champion": champion.slices[key][0],
                        "challenger": new,
                        "worse_by": drop,
                        "rows": rows,
                    }
                )
    common = dict(champion_score=champion.overall, improvement=gain, worse_slices=worse, **base)
    if gain <= cfg.margin:
        return Decision(
            False,
            f"{cfg.metric} {challenger.overall:.4f} vs champion {champion.overall:.4f}: "
            f"better by {gain:+.4f}, not more than margin {cfg.margin}",
            **common,
        )
    if worse:
        names = ", ".join(f"{w['column']}={w['value']} ({w['worse_by']:+.4f})" for w in worse[:5])
        return Decision(
            False,
            f"{cfg.metric} better by {gain:+.4f} but {len(worse)} slice(s) worse than "
            f"tolerance {cfg.slice_tolerance}: {names}",
            **common,
        )
    return Decision(
        True,
        f"{cfg.metric} {challenger.overall:.4f} vs champion {champion.overall:.4f}: "
        f"better by {gain:+.4f} > margin {cfg.margin}, no slice worse than "
        f"{cfg.slice_tolerance}",
        **common,
    )


def read_window(path: Path | str, label: str) -> pd.DataFrame:
    """A labelled window (Parquet or CSV) with the label column present."""
    path = Path(path)
    frame = pd.read_csv(path) if path.suffix == ".csv" else pd.read_parquet(path)
    if label not in frame.columns:
        raise ValueError(f"window {path} has no label column {label!r}")
    return frame[frame[label].notna()].reset_index(drop=True)


def gate_key(version: int, window: Path | str, cfg: GateCfg) -> str:
    """What makes two gate runs the same decision: the version, the window's rows and the rule."""
    digest = hashlib.sha256()
    path = Path(window)
    digest.update(path.read_bytes() if path.exists() else str(path).encode())
    digest.update(cfg.model_dump_json().encode())
    return f"v{version}-{digest.hexdigest()[:16]}"


def _result(event: dict[str, Any]) -> dict[str, Any]:
    promoted = event["action"] in ("initial", "promote") and event.get("champion_after") == event["version"]
    return {**event, "promoted": promoted, "champion_version": event.get("champion_after")}


def run_gate(
    name: str,
    version: int,
    window: Path | str,
    label: str,
    cfg: GateCfg,
    force_reason: str | None = None,
    notify_url: str | None = None,
    importance: ImportanceCfg | None = None,
) -> dict[str, Any]:
    """Score champion and challenger on `window`, apply `decide`, record the decision, move the alias.
    The record also names the features whose permutation importance moved most between the two
    (`cfg.importance_top` of them, computed on the same window with `importance`).

    Safe to retry at every step: a decision already recorded for the same version, window and rule is
    completed (its alias move finished) instead of taken again. The alias moves only if the champion the
    challenger was compared with is still the champion; otherwise the refusal says so."""
    from models.packaged import load_scorer

    client = registry.client()
    registry.finish_pending(client, name)
    key = gate_key(version, window, cfg)
    if force_reason is None:
        done = [e for e in registry.history(client, name) if e.get("gate_key") == key]
        if done:
            return {**_result(done[-1]), "retried": True}
    champion = registry.alias_version(client, name)
    base = {
        "version": version,
        "champion_before": champion,
        "window": str(window),
        "metric": cfg.metric,
        "margin": cfg.margin,
        "slice_tolerance": cfg.slice_tolerance,
        "gate_key": key,
    }
    if force_reason is not None:
        event = registry.record(
            client,
            name,
            {**base, "action": "promote", "champion_after": version, "reason": f"forced by hand: {force_reason}"},
        )
        registry.move_champion(client, name, version, champion)
        return {**_result(event), "notify": registry.notify_service(notify_url)}
    if champion == version:
        if any(e.get("champion_after") == version for e in registry.history(client, name)):
            return {**base, "promoted": False, "champion_version": version, "reason": "already champion"}
        # registered as the very first version: it went live without a comparison; say so
        event = registry.record(
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
        return _result(event)
    frame = read_window(window, label)
    with tempfile.TemporaryDirectory() as tmp:
        new = load_scorer(name, version, Path(tmp) / "new")
        y = frame[label].to_numpy()
        challenger_scores = score(y, new.predict_proba(frame), frame, cfg)
        champion_scores, moved = None, []
        if champion is not None:
            old = load_scorer(name, champion, Path(tmp) / "old")
            champion_scores = score(y, old.predict_proba(frame), frame, cfg)
            if cfg.importance_top:
                moved = importance_movers(old, new, frame, y, importance or ImportanceCfg(), cfg.importance_top)
    decision = decide(champion_scores, challenger_scores, cfg)
    promote, reason = decision.promote, decision.reason
    now = registry.alias_version(client, name)
    if now != champion:  # another writer (a rollback, another gate) moved it while we compared
        promote, reason = False, f"champion changed during the gate (v{champion} -> v{now}): not promoted; {reason}"
    event = registry.record(
        client,
        name,
        {
            **base,
            "champion_before": now,
            "action": ("promote" if champion is not None else "initial") if promote else "refuse",
            "champion_after": version if promote else now,
            "champion_compared": champion,
            "champion_score": decision.champion_score,
            "challenger_score": decision.challenger_score,
            "improvement": decision.improvement,
            "window_rows": challenger_scores.rows,
            "worse_slices": decision.worse_slices[:5],
            "importance_movers": moved,
            "reason": reason,
        },
    )
    if promote:
        if not registry.move_champion(client, name, version, now):
            moved = registry.alias_version(client, name)
            event = registry.record(
                client,
                name,
                {
                    **base,
                    "action": "refuse",
                    "champion_before": moved,
                    "champion_after": moved,
                    "gate_key": f"{key}-late",
                    "reason": f"champion changed before the move (v{now} -> v{moved}): v{version} not promoted",
                },
            )
            return _result(event)
        return {**_result(event), "notify": registry.notify_service(notify_url)}
    if registry.alias_version(client, name, CHALLENGER) is None:
        client.set_registered_model_alias(name, CHALLENGER, str(version))
    return _result(event)


def importance_movers(
    champion, challenger, frame: pd.DataFrame, y: np.ndarray, cfg: ImportanceCfg, top: int
) -> list[dict[str, Any]]:
    """Permutation importance of both scorers on the same rows and shuffles; the `top` largest changes."""
    tables = [
        permutation_importance(m.predict_proba, frame, y, sorted(set(m.features)), cfg.repeats, cfg.seed, cfg.max_rows)
        for m in (champion, challenger)
    ]
    return movers(*tables, top=top)


def rollback(
    name: str, reason: str = "rollback by hand", notify_url: str | None = None, expect: int | None = None
) -> dict[str, Any]:
    """Move `champion` back to the champion before the live one, and record it (before the move).

    `expect`: the champion this rollback is meant to replace. A retry whose first attempt already moved
    the alias finds the champion changed and its own event last, and returns that event."""
    client = registry.client()
    registry.finish_pending(client, name)
    events = registry.history(client, name)
    current = registry.alias_version(client, name)
    if expect is not None and current != expect:
        last = events[-1] if events else {}
        if last.get("action") == "rollback" and last.get("champion_before") == expect:
            return {**last, "notify": "already rolled back", "retried": True}
        raise SystemExit(
            f"rollback: champion of {name} is v{current}, not v{expect}: someone moved it; not rolled back"
        )
    target = registry.rollback_target(events, current)
    if target is None:
        raise RollbackRefused(f"rollback: no earlier champion of {name} to go back to (live: v{current})")
    event = registry.record(
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
    if not registry.move_champion(client, name, target, current):
        raise RollbackRefused(f"rollback: champion of {name} moved during the rollback; recorded, not moved")
    return {**event, "notify": registry.notify_service(notify_url)}


def format_history(events: list[dict[str, Any]]) -> str:
    lines = [f"{'#':>3} {'when (UTC)':25} {'action':9} {'ver':>4} {'champion':>9}  flow run / reason"]
    for e in events:
        arrow = f"{e.get('champion_before') or 'none'}->{e.get('champion_after') or 'none'}"
        lines.append(
            f"{e['seq']:>3} {e['at']:25} {e['action']:9} {e['version']:>4} {arrow:>9}  {e['flow_run']}: {e['reason']}"
        )
        if e.get("importance_movers"):
            shown = ", ".join(
                f"{m['feature']} {m['champion']:.4f}->{m['challenger']:.4f}" for m in e["importance_movers"]
            )
            lines.append(f"{'':>44}importance moved most: {shown}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    if argv[:1] and argv[0] in COMMANDS:
        sub = ap.add_subparsers(dest="cmd", required=True)
        h = sub.add_parser("history", help="print the champion history")
        h.add_argument("--json", action="store_true")
        p = sub.add_parser("promote", help="run the gate for a version (default: @challenger), or --force it")
        p.add_argument("--version", type=int)
        p.add_argument("--window", type=Path, default=DEFAULT_WINDOW)
        p.add_argument("--force", action="store_true", help="skip the comparison (recorded as forced)")
        p.add_argument("--reason", default="")
        r = sub.add_parser("rollback", help="move champion back to the previous champion")
        r.add_argument("--reason", default="rollback by hand")
    else:
        ap.add_argument("--registered", default=paths.REGISTERED, type=Path)
        ap.add_argument("--window", default=DEFAULT_WINDOW, type=Path, help="labelled rows to compare on")
        ap.add_argument("--version", type=int, help="challenger version (default: the one in --registered)")
        ap.add_argument("--out", default=GATE_REPORT, type=Path)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    name = params.register_.model_name
    url = registry.service_url(params.serving.host, params.serving.port)
    cmd = getattr(args, "cmd", None)
    if cmd == "history":
        events = registry.history(registry.client(), name)
        print(json.dumps(events, indent=1) if args.json else format_history(events))
    elif cmd == "promote":
        version = args.version or registry.alias_version(registry.client(), name, CHALLENGER)
        if version is None:
            raise SystemExit("promote: no @challenger; pass --version")
        force = (args.reason or "no reason given") if args.force else None
        result = run_gate(
            name, version, args.window, params.data.label, params.gate, force, url, params.evaluate.importance
        )
        print(f"promote: v{version} {'promoted' if result['promoted'] else 'refused'}: {result['reason']}")
    elif cmd == "rollback":
        try:
            event = rollback(name, args.reason, url)
        except RollbackRefused as exc:
            raise SystemExit(str(exc)) from None
        print(f"rollback: champion v{event['champion_before']} -> v{event['champion_after']} ({event['notify']})")
    else:
        version = args.version or json.loads(args.registered.read_text())["version"]
        result = run_gate(
            name,
            int(version),
            args.window,
            params.data.label,
            params.gate,
            notify_url=url,
            importance=params.evaluate.importance,
        )
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1, default=str))
        verdict = "PROMOTED" if result["promoted"] else "REFUSED"
        print(f"gate: {name} v{version} {verdict}: {result['reason']} -> champion v{result['champion_version']}")
        for m in result.get("importance_movers") or []:
            print(f"gate: importance of {m['feature']}: {m['champion']:.4f} (champion) -> {m['challenger']:.4f}")


if __name__ == "__main__":
    main()
