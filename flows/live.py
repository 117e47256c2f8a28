"""`make live`: the loop in motion, watched in the Prefect UI (:4200) and the MLflow UI (:5000).

Starts what `make ui` starts (Prefect server, MLflow UI, the runner serving every deployment and the
"retrain on drift" automation) and the online service, then plays 2013 after the champion's data through
the service's HTTP API, in scheduled order, at `--speed` simulated weeks per minute. At the end of each
simulated week the `monitoring` deployment runs on that week (the schedule, in simulated time) through
the Prefect API, as any user's run does; a drift or performance decision becomes an event, the automation
starts `retraining` with the decision as its parameters, the gate decides, the service swaps models.
Labels come from the label feed (flows/labels.py), each counted once `policy.label_delay_days` has passed
in simulated time. The player prints what happened (read back from Prefect and MLflow, and sent to the
Apprise URLs of monitoring.notify_urls / MONITORING_NOTIFY_URLS) and keeps one Prefect artifact,
`live-loop`, with a row per week. Ctrl-C stops everything.

`--no-ui` plays against servers that run already (`make stack`): PREFECT_API_URL, MLFLOW_TRACKING_URI and
SERVING_URL (replicas comma-separated) name them."""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import httpx
import pandas as pd

from flightloop import paths, registry, tracking
from flightloop.config import Params, Scenario, load_params
from flows.ui import HOST, Children, catch_signals, start_ui, stop, supervise, wait_healthy
from monitoring import alerts, report
from monitoring.replay import Window, apply_scenario, rows_in, windows

ARTIFACT_KEY = "live-loop"
MONITORING = "monitoring/monitoring"
RETRAINING = "retraining"
LOGS = paths.REPORTS / "live"
SHOWN_STATES = ("AwaitingConcurrencySlot", "Running", "Completed", "Failed", "Crashed", "Cancelled")


T0 = time.monotonic()


def say(line: str, err: bool = False) -> None:
    """A line of the player's story, with the minutes:seconds since it started."""
    minutes, seconds = divmod(int(time.monotonic() - T0), 60)
    print(f"live [+{minutes}:{seconds:02d}] {line}", file=sys.stderr if err else sys.stdout, flush=True)


class LiveError(Exception):
    """Something the user can fix (no champion, nothing to play, a server missing): said in one line."""


# ---- the service, as a client sees it -----------------------------------------------------------------


class Traffic:
    """POST /predict to each replica in turn; how many rows the replicas have logged, from /health."""

    def __init__(self, urls: list[str]):
        token = os.environ.get("SERVING_TOKEN")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.urls = urls
        self.http = httpx.Client(headers=headers, timeout=60)
        self._next = itertools.cycle(urls)
        self.sent = 0
        self.version: int | None = None  # the model version of the last answer

    def post(self, body: dict[str, Any]) -> dict[str, Any]:
        url = next(self._next)
        r = self.http.post(f"{url}/predict", json=body)
        if r.status_code != 200:
            raise RuntimeError(f"{url}/predict answered {r.status_code}: {r.text[:300]}")
        self.sent += len(body["rows"])
        answer = r.json()
        self.version = answer["model_version"]
        return answer

    def logged(self) -> int:
        """Rows the replicas have written to the prediction store (what monitoring reads)."""
        return sum(self.http.get(f"{u}/health").json()["prediction_log"]["rows_written"] for u in self.urls)

    def wait_logged(self, rows: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while self.logged() < rows:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the prediction log wrote {self.logged()} of {rows} rows in {timeout:.0f}s")
            time.sleep(0.2)

    def model(self) -> dict[str, Any]:
        return self.http.get(f"{self.urls[0]}/model").json()


# ---- what the loop did, read back from the servers -------------------------------------------------------


@dataclass
class Week:
    window: Window
    rows: int = 0
    labels: int = 0  # labels the feed had delivered for the week's rows by its end
    monitor: str = ""  # the monitoring run's name and final state
    figures: dict[str, Any] = field(default_factory=dict)
    served_by: int | None = None  # the model version that answered the week's requests
    markers: list[str] = field(default_factory=list)


class Watch:
    """New retraining runs and their states (Prefect), new gate decisions (MLflow): one line each, printed
    and sent to the notification URLs."""

    def __init__(self, model_name: str, urls: list[str]):
        self.name, self.urls = model_name, urls
        self.runs: dict[str, str] = {}  # flow run id -> last state seen
        self.final: dict[str, bool] = {}
        self.history = len(self._history())
        self.started_at = pd.Timestamp.now(tz="UTC")

    def _history(self) -> list[dict[str, Any]]:
        return registry.history(registry.client(), self.name)

    def poll(self) -> list[str]:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            DeploymentFilter,
            DeploymentFilterName,
            FlowRunFilter,
            FlowRunFilterExpectedStartTime,
        )
        from prefect.client.schemas.sorting import FlowRunSort

        lines = []
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=[RETRAINING])),
                flow_run_filter=FlowRunFilter(
                    expected_start_time=FlowRunFilterExpectedStartTime(after_=self.started_at.to_pydatetime())
                ),
                sort=FlowRunSort.EXPECTED_START_TIME_ASC,
                limit=200,
            )
        for run in runs:
            state = run.state.name if run.state else "?"
            if self.runs.get(str(run.id)) == state:
                continue
            if str(run.id) not in self.runs:
                by = run.created_by.display_value if run.created_by and run.created_by.display_value else "a user"
                request = (run.parameters or {}).get("request") or {}
                lines.append(
                    f"retraining run created by {by}, with the decision of window "
                    f"{request.get('window_id', '?')} ({request.get('kind', 'manual')}) as its parameters"
                )
            if state in SHOWN_STATES:
                lines.append(f"retraining run {run.name}: {state}")
            self.runs[str(run.id)] = state
            self.final[str(run.id)] = bool(run.state and run.state.is_final())
        events = self._history()
        for event in events[self.history :]:
            if event["action"] in ("promote", "refuse", "rollback"):
                verb = {"promote": "promoted", "refuse": "refused", "rollback": "rolled back to"}[event["action"]]
                lines.append(f"gate: {verb} v{event['version']} ({event.get('reason', '')})"[:300])
        self.history = len(events)
        for line in lines:
            say(line)
            alerts.send(f"[{self.name}] {line.split(':')[0]}", line, self.urls)
        return lines

    def running(self) -> int:
        return sum(not final for final in self.final.values())


def monitoring_figures(flow_run_id) -> dict[str, Any]:  # noqa: ANN001 - a UUID
    """The `monitoring-window` table the monitoring run left, as {figure: value}."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        body = {"artifacts": {"flow_run_id": {"any_": [str(flow_run_id)]}, "key": {"any_": ["monitoring-window"]}}}
        found = client.request("POST", "/artifacts/filter", json=body).json()
    if not found:
        return {}
    table = found[0]["data"]
    table = json.loads(table) if isinstance(table, str) else table
    return {row["figure"]: row["value"] for row in table}


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else ("" if value is None else str(value))


def _decision(figure: Any, monitor: str) -> str:
    """`data_drift: retrain=True` -> `data_drift → retrain`; the run's state when it left no figures."""
    if not figure:
        return monitor
    kind, _, retrain = str(figure).partition(": retrain=")
    return f"{kind} → retrain" if retrain == "True" else kind


def live_view(weeks: list[Week], model_name: str, speed: float, champion: int | None) -> str:
    """The running view: the state at a glance, then one row per simulated week (newest first)."""
    alerts_seen = [w for w in weeks if "retrain=True" in str(w.figures.get("decision", ""))]
    markers = [m for w in weeks for m in w.markers if m]
    head = [
        f"## {model_name}: champion v{champion} after the week of {weeks[-1].window.window_id}",
        f"{len(weeks)} simulated weeks at {speed:g} a minute · drift/performance alerts: {len(alerts_seen)} · "
        f"retrains started: {sum(m.startswith('retrain') for m in markers)} · "
        f"promotions: {sum(m.startswith('promoted') for m in markers)}",
        "",
        "ROC-AUC / Brier *realised* on the labels delivered by the week's end; *est.* from the scores alone.",
        "",
        "| week | served by | decision | retrain, gate | drift share | ROC-AUC | est. ROC-AUC | Brier | est. Brier "
        "| flights | labels |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rows = []
    for w in reversed(weeks):
        f = w.figures
        cells = [w.window.window_id, f"v{w.served_by}", _decision(f.get("decision"), w.monitor)]
        cells += ["; ".join(m for m in w.markers if m), f.get("drift_share"), f.get("roc_auc"), f.get("est_roc_auc")]
        cells += [f.get("brier"), f.get("est_brier"), w.rows, w.labels]
        rows.append("| " + " | ".join(_fmt(c) for c in cells) + " |")
    return "\n".join(head + rows)


# ---- the player -------------------------------------------------------------------------------------------


def default_start(project: Path, params: Params) -> pd.Timestamp:
    """Where the champion's data ends (the day after the newest validated row), or where the last
    monitored window ended when that is later (a second `make live` goes on from there)."""
    from monitoring.loop import newest_time

    newest = newest_time(project, params.data.time_column)
    if newest is None:
        raise LiveError(f"no validated data in {project / paths.VALIDATED}: run `dvc repro` first")
    start = newest.normalize() + pd.Timedelta(days=1)
    state = report.state_store(project, params.register_.model_name).read()
    if state.last_window_end is not None and pd.Timestamp(state.last_window_end) > start:
        start = pd.Timestamp(state.last_window_end)
    return start


def play_week(
    week: Week, stream: pd.DataFrame, params: Params, traffic: Traffic, scenarios: tuple[Scenario, ...], seconds: float
) -> None:
    """The week's flights through the service in scheduled order, paced to last `seconds`: a flight is
    sent once the simulated clock reaches its scheduled hour."""
    from flows.replay import request_bodies

    data, w = params.data, week.window
    rcfg = params.replay.model_copy(update={"scenarios": scenarios})
    rows = apply_scenario(rows_in(stream, data.time_column, w.start, w.end), w.window_id, rcfg)
    rows = rows.sort_values(data.time_column, kind="stable")
    columns = [*data.features, *[k for k in data.key if k not in data.features]]
    times = rows[data.time_column].to_numpy()
    span, t0, sent = w.end - w.start, time.monotonic(), 0
    while sent < len(rows):
        elapsed = time.monotonic() - t0
        clock = w.start + span * min(1.0, elapsed / seconds) if seconds > 0 else w.end
        due = int((times < clock.to_datetime64()).sum()) if clock < w.end else len(rows)
        if due > sent:
            for body in request_bodies(rows.iloc[sent:due], columns, params.replay.request_rows):
                traffic.post(body)
            sent = due
        else:
            time.sleep(min(0.25, seconds / 50))
    week.rows, week.served_by = len(rows), traffic.version
    delivered = stream[data.time_column] + pd.Timedelta(days=params.policy.label_delay_days) <= w.end
    week.labels = int((delivered & (stream[data.time_column] >= w.start) & (stream[data.time_column] < w.end)).sum())


def monitor_week(week: Week, timeout: float) -> Any:
    """The `monitoring` deployment on the week, as a scheduled run would start it; waits for it to end."""
    from prefect.deployments import run_deployment

    w = week.window
    window = {"window_start": w.start.isoformat(), "window_end": w.end.isoformat()}
    run = run_deployment(MONITORING, parameters=window, timeout=timeout, tags=["live"])
    state = run.state.name if run.state else "?"
    week.monitor = f"{run.name}: {state}"
    if run.state and run.state.is_completed():
        week.figures = monitoring_figures(run.id)
    return run


def publish(weeks: list[Week], model_name: str, speed: float, champion: int | None) -> None:
    """A new version of the `live-loop` artifact (the Artifacts page keeps every version)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import ArtifactCreate

    last = weeks[-1]
    artifact = ArtifactCreate(
        key=ARTIFACT_KEY,
        type="markdown",
        data=live_view(weeks, model_name, speed, champion),
        description=f"make live: week of {last.window.window_id}, champion v{champion}",
    )
    with get_client(sync_client=True) as client:  # the player is no flow run: straight to the API
        client.create_artifact(artifact)


def play(
    weeks: list[Window],
    stream: pd.DataFrame,
    params: Params,
    traffic: Traffic,
    speed: float,
    scenarios: tuple[Scenario, ...],
    monitor_timeout: float = 600,
) -> list[Week]:
    """Every week: traffic, the log flushed, monitoring on the week, what followed, the artifact."""
    name = params.register_.model_name
    watch = Watch(name, alerts.notify_urls(params.monitoring.notify_urls))
    played: list[Week] = []
    week_seconds, spent_monitoring = 60.0 / speed, 0.0
    for w in weeks:
        week = Week(w)
        t0 = time.monotonic()
        # the week lasts `week_seconds` in all: the traffic gets what the last monitoring run left of it
        play_week(week, stream, params, traffic, scenarios, max(0.0, week_seconds - spent_monitoring))
        traffic.wait_logged(traffic.sent)
        week.markers += map(_marker, watch.poll())
        known = len(watch.runs)
        m0 = time.monotonic()
        run = monitor_week(week, monitor_timeout)
        spent_monitoring = time.monotonic() - m0
        decision = str(week.figures.get("decision", ""))
        say(f"week {w.window_id}: {week.rows} flights served, {week.monitor} ({decision})")
        if not (run.state and run.state.is_completed()):
            say(f"the monitoring run {run.name} ended {run.state}: see the Prefect UI", err=True)
        week.markers += map(_marker, watch.poll())
        played.append(week)
        publish(played, name, speed, traffic.model().get("version"))
        if "retrain=True" in decision:
            # a retrain takes minutes of a production day, not a simulated week: the clock waits for it
            say(f"alert for {w.window_id}: event -> automation -> retraining; the clock waits")
            follow_retrain(watch, week, known)
            publish(played, name, speed, traffic.model().get("version"))
        time.sleep(max(0.0, week_seconds - (time.monotonic() - t0)))
    if watch.running():  # a retrain started by hand meanwhile finishes before the player says it is done
        follow_retrain(watch, played[-1], len(watch.runs))
        publish(played, name, speed, traffic.model().get("version"))
    return played


def follow_retrain(watch: Watch, week: Week, known: int, appear_timeout: float = 120) -> None:
    """Until the automation's retraining run has appeared (runs beyond `known`) and every run has ended."""
    deadline = time.monotonic() + appear_timeout
    while len(watch.runs) <= known or watch.running():
        if len(watch.runs) <= known and time.monotonic() > deadline:
            say(f"no retraining run {appear_timeout:.0f}s after the alert: see the automation", err=True)
            return
        time.sleep(2)
        week.markers += map(_marker, watch.poll())


def _marker(line: str) -> str:
    if line.startswith("retraining run created by"):
        return f"retrain for {line.split('window ')[1].split(' as')[0]}"
    if line.startswith("gate: "):
        return line[6:].split(" (")[0]
    return ""


# ---- start-up -------------------------------------------------------------------------------------------


def parse_scenario(text: str) -> Scenario:
    """`COLUMN+AMOUNT@WEEK[..UNTIL]`, e.g. distance+800@2013-07-08: a shift planted in the traffic."""
    try:
        shift, _, span = text.partition("@")
        column, _, amount = shift.partition("+")
        first, _, until = span.partition("..")
        for day in (first, until) if until else (first,):
            date.fromisoformat(day)  # YYYY-MM-DD, or ValueError
        return Scenario(window=first, column=column, add=float(amount), until=until or None)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: expected COLUMN+AMOUNT@WEEK[..UNTIL] ({exc})") from None


def wait_deployment(timeout: float = 180) -> None:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    while True:
        try:
            with get_client(sync_client=True) as client:
                client.read_deployment_by_name(MONITORING)
                if client.read_automations_by_name(alerts.AUTOMATION_NAME):
                    return
        except Exception:  # noqa: BLE001 - not registered yet
            pass
        if time.monotonic() > deadline:
            raise LiveError(f"no deployment {MONITORING} with the automation after {timeout:.0f}s")
        time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--speed", type=float, default=1.0, help="simulated weeks per minute (default 1)")
    ap.add_argument(
        "--start", help="first simulated day (default: after the champion's data, or where the last run stopped)"
    )
    ap.add_argument("--end", help="last simulated day (default: replay.end)")
    ap.add_argument("--project-dir", default=".", type=Path)
    ap.add_argument("--prefect-port", type=int, default=4200)
    ap.add_argument("--mlflow-port", type=int, default=5000)
    ap.add_argument("--serving-port", type=int, help="the service's port (default serving.port)")
    ap.add_argument(
        "--scenario", action="append", type=parse_scenario, help="plant a shift, COLUMN+AMOUNT@WEEK[..UNTIL]"
    )
    ap.add_argument(
        "--no-ui", action="store_true", help="use running servers: PREFECT_API_URL, MLFLOW_TRACKING_URI, SERVING_URL"
    )
    ap.add_argument(
        "--exit-at-end", action="store_true", help="stop everything after the last week (default: keep the UIs up)"
    )
    args = ap.parse_args(argv)
    if args.speed <= 0:
        ap.error("--speed must be above 0")
    project = args.project_dir.resolve()
    params = load_params(project / paths.PARAMS)
    name = params.register_.model_name
    scenarios = tuple(args.scenario or params.replay.scenarios)
    if args.no_ui:
        missing = [v for v in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "SERVING_URL") if not os.environ.get(v)]
        if missing:
            ap.error(f"--no-ui plays against running servers: set {', '.join(missing)}")
    children = Children(project, log_dir=project / LOGS)
    children.env.setdefault("OMP_NUM_THREADS", "1")  # one thread per process: the service, runs, the player
    children.env.setdefault("MKL_NUM_THREADS", "1")
    catch_signals()
    try:
        os.environ.setdefault("MLFLOW_TRACKING_URI", tracking.tracking_uri(project))
        version = registry.alias_version(registry.client(), name)
        if version is None:
            raise LiveError(f"models:/{name}@champion does not exist: run `dvc repro` first (`make live` does)")
        start = pd.Timestamp(args.start) if args.start else default_start(project, params)
        end = pd.Timestamp(args.end or params.replay.end)
        weeks = windows(f"{start:%Y-%m-%d}", f"{end:%Y-%m-%d}", 7) if start <= end else []
        if not weeks:
            raise LiveError(
                f"nothing to play from {start:%Y-%m-%d} to {end:%Y-%m-%d}: pass --start/--end (START=/END=)"
            )
        say(f"champion v{version}; {len(weeks)} weeks {weeks[0].window_id} .. {end:%Y-%m-%d}")
        if args.no_ui:
            api, serving = os.environ["PREFECT_API_URL"], os.environ["SERVING_URL"]
        else:
            port = args.serving_port or params.serving.port
            serving = f"http://{HOST}:{port}"
            children.env["SERVING_URL"] = serving  # the retraining runs tell this service about a new champion
            service = children.start(
                "service", [sys.executable, "-m", "serving", "--port", str(port)], {"PYTHONPATH": str(project)}
            )
            api, _ = start_ui(children, args.prefect_port, args.mlflow_port)
            say(f"logs of the servers in {project / LOGS}")
            wait_healthy(f"{serving}/ready", service, timeout=180)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        from flows.labels import SourceLabels

        stream = SourceLabels(params).features  # the same rows a client sends (and the label feed)
        traffic = Traffic([u.strip().rstrip("/") for u in serving.split(",") if u.strip()])
        with temporary_settings(updates={PREFECT_API_URL: api}):
            wait_deployment()
            ui = api.removesuffix("/api")
            print(f"\nPrefect UI  {ui}  (Event Feed: {ui}/events, artifact {ARTIFACT_KEY}: {ui}/artifacts)")
            print(
                f"MLflow UI   {os.environ['MLFLOW_TRACKING_URI'] if args.no_ui else f'http://{HOST}:{args.mlflow_port}'}"
            )
            stops = "the player (the servers are the stack's)" if args.no_ui else "everything"
            print(f"service     {serving}\nCtrl-C stops {stops}\n", flush=True)
            played = play(weeks, stream, params, traffic, args.speed, scenarios)
        say(f"done, {len(played)} weeks played; champion v{traffic.model().get('version')}")
        if args.exit_at_end or args.no_ui:
            return 0
        say("the UIs stay up; Ctrl-C stops everything")
        return supervise(children.procs, "live")
    except LiveError as exc:
        say(f"{exc}", err=True)
        return 2
    except KeyboardInterrupt:
        print("\nlive: stopping ...", file=sys.stderr)
        return 0
    finally:
        stop(children.procs)


if __name__ == "__main__":
    sys.exit(main())
