"""Replay of 2013: the closed loop run on history, once per retraining policy, to compare policies.

An initial champion is trained on the first months; then every window (a week by default) of the rest
of the year is scored by the champion through the online service (the real app, in-process), the
predictions it logged are monitored (drift, score drift, quality, and performance once labels have
arrived after their delay), the policy decides, and a retrain goes through the real retraining flow:
newly labelled rows are ingested as a new DVC data version, the training flow runs the dvc.yaml
stages, the gate decides, and the service follows the new champion.

Every policy is replayed once per seed of `replay.seeds` (the training seed changed), and each policy is
compared with `never` window by window, with block-bootstrap intervals (reports/replay/evidence.csv).

`python -m flows.replay [--quick] [--seeds N]` (the main job of `make demo`)."""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact

from flightloop import paths, registry, tracking
from flightloop.config import Params, ParamsError, ReplayCfg, cli_overrides, load_params
from flightloop.metrics import classification_metrics
from flows.labels import SourceLabels
from flows.retraining import retrain_in
from flows.training import TrainingParams, training
from flows.workspace import clone_workspace, make_workspace
from monitoring import report
from monitoring.loop import WindowOutcome, decide_window, load_champion
from monitoring.replay import (
    LEVEL,
    Window,
    apply_scenario,
    estimate_accuracy,
    evidence_text,
    label_counterparts,
    policy_summary,
    retained_improvement,
    rows_in,
    vs_base,
    windows,
)
from monitoring.report import StateStore
from serving.predlog import read_predictions

OUT = paths.REPORTS / "replay"
T = TypeVar("T")


def _tracking_env(root: Path) -> None:
    """Every workspace logs to the project's MLflow store, so the replay shows in the user's `mlflow ui`."""
    os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{root / tracking.DEFAULT_DB}")


class CoreShare:
    """The cores shared between the jobs (policies, seeds) replayed at once: each stage process of a job
    (torch, OpenMP in scikit-learn) gets cores // (jobs running) threads. Two stages with two threads each
    on two cores oversubscribe them and run ~2x slower than with one thread each; and once a job ends and
    fewer are left than `workers` (the `never` policy is done long before a retraining one), the stages
    started after that take the freed cores. A user's OMP_NUM_THREADS is left as it is."""

    def __init__(self, workers: int, jobs: int):
        self.workers, self.left = max(1, workers), max(1, jobs)
        self.cores = os.cpu_count() or 1
        self.user = os.environ.get("OMP_NUM_THREADS")
        self.lock = threading.Lock()
        self._set()

    @property
    def threads(self) -> int:
        """Threads a stage started now gets."""
        setting = os.environ.get("OMP_NUM_THREADS", "")
        return int(setting) if setting.isdigit() else self.cores

    def _set(self) -> None:
        if self.user is not None:
            return
        running = min(self.workers, self.left)
        if running > 1:
            os.environ["OMP_NUM_THREADS"] = str(max(1, self.cores // running))
        else:
            os.environ.pop("OMP_NUM_THREADS", None)  # one job: stages use every core, as outside the replay

    def finished(self) -> None:
        """A job ended: the ones still running share its cores from their next stage on."""
        with self.lock:
            self.left = max(1, self.left - 1)
            self._set()

    def close(self) -> None:
        if self.user is None:
            os.environ.pop("OMP_NUM_THREADS", None)


@contextlib.contextmanager
def stage_threads(workers: int, jobs: int | None = None) -> Iterator[CoreShare]:
    """A `CoreShare` of the cores for `jobs` (default: `workers`) run `workers` at a time; the
    environment is restored when it closes."""
    share = CoreShare(workers, workers if jobs is None else jobs)
    try:
        yield share
    finally:
        share.close()


def at_once(calls: Sequence[Callable[[], T]], workers: int, share: CoreShare | None = None) -> list[T]:
    """Run `calls`, `workers` at a time, each thread in a copy of the caller's context (the flow run's, so
    subflows and logs in them belong to it); their results in the order of `calls`. `share` is told when
    each call ends, so the calls still running get its cores."""

    def run(call: Callable[[], T]) -> T:
        try:
            return call()
        finally:
            if share is not None:
                share.finished()

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="replay") as pool:
        futures = [pool.submit(contextvars.copy_context().run, run, call) for call in calls]  # copies taken here
        return [f.result() for f in futures]


def register_copy(base_name: str, version: int, name: str) -> int:
    """Register the base champion under a policy's model name and make it that model's champion."""
    import mlflow

    client = registry.client()
    source = client.get_model_version(base_name, str(version)).source
    new = mlflow.register_model(source, name)
    client.set_registered_model_alias(name, registry.CHAMPION, new.version)
    registry.record(
        client,
        name,
        {
            "version": int(new.version),
            "action": "initial",
            "champion_before": None,
            "champion_after": int(new.version),
            "reason": f"replay start: copy of {base_name} v{version}",
        },
    )
    return int(new.version)


def request_bodies(rows: pd.DataFrame, columns: list[str], chunk: int) -> Iterator[dict[str, Any]]:
    """The JSON bodies a client POSTs to /predict for `rows`, `chunk` rows each (missing values as null)."""
    payload = rows[columns].astype(object).where(rows[columns].notna(), None)
    for start in range(0, len(rows), chunk):
        yield {"rows": payload.iloc[start : start + chunk].to_dict(orient="records")}


class Service:
    """The online service (serving/app.py) in-process: the same app, logging and alias following."""

    def __init__(self, params: Params, workspace: Path, model_name: str):
        from starlette.testclient import TestClient

        from serving.app import create_app

        cfg = params.serving.model_copy(
            update={
                "prediction_dir": workspace / "data" / "predictions",
                "poll_seconds": 3600.0,
                "max_batch_rows": 10_000,
                "max_body_bytes": 64 * 1024 * 1024,
                "flush_seconds": 0.2,  # the replay reads the log right after each window
            }
        )
        self.app = create_app(cfg, model_name, cache=workspace / ".serving-cache")
        token = os.environ.get("SERVING_TOKEN")
        self.client = TestClient(self.app, headers={"Authorization": f"Bearer {token}"} if token else None)
        self.predictions = cfg.prediction_dir
        self.sent = 0

    def __enter__(self) -> Service:
        self.client.__enter__()
        for _ in range(600):
            if self.client.get("/ready").status_code == 200:
                return self
            time.sleep(0.1)
        raise TimeoutError("the service did not load a champion")

    def __exit__(self, *exc) -> None:
        self.client.__exit__(*exc)

    @property
    def model(self):
        return self.app.state.follower.current

    def score(self, rows: pd.DataFrame, columns: list[str], chunk: int) -> tuple[np.ndarray, int]:
        """POST the rows in chunks; returns the probabilities and the model version that served them."""
        scores, version = [], None
        for body in request_bodies(rows, columns, chunk):
            r = self.client.post("/predict", json=body)
            if r.status_code != 200:
                raise RuntimeError(f"/predict answered {r.status_code}: {r.text[:300]}")
            out = r.json()
            scores += [p["probability"] for p in out["predictions"]]
            version = out["model_version"]
        self.sent += len(rows)
        log = self.app.state.predlog
        for _ in range(300):  # the log is written off the request path; wait until it has caught up
            if log.rows_written + log.errors >= self.sent:
                break
            time.sleep(0.05)
        else:
            raise TimeoutError(f"prediction log wrote {log.rows_written} of {self.sent} rows")
        return np.asarray(scores), int(version)

    def reload(self) -> dict:
        return self.client.post("/reload").json()


def replay_window(
    w: Window,
    svc: Service,
    params: Params,
    store: StateStore,
    stream: pd.DataFrame,
    rcfg: ReplayCfg,
    quarantine: Path,
    emit: bool = True,
) -> tuple[WindowOutcome, dict[str, Any]]:
    """One window of production as the replay plays it: its rows through the service, then the loop's
    own `decide_window` on what the service logged, judged at the window's end (the replay's clock).
    Returns the outcome and the window's row of the comparison table (its quality in hindsight)."""
    data = params.data
    columns = [*data.features, *[k for k in data.key if k not in data.features]]
    current = apply_scenario(rows_in(stream, data.time_column, w.start, w.end), w.window_id, rcfg)
    served_since = pd.Timestamp.now(tz="UTC")
    scores, version = svc.score(current, columns, rcfg.request_rows)
    logged = read_predictions(svc.predictions, since=served_since)
    champion = load_champion(params.register_.model_name, version, params)
    t = stream[data.time_column]  # labels join only rows of this window: the rest of the year is left out
    recent = stream[(t >= w.start - pd.Timedelta(days=rcfg.window_days * 2)) & (t < w.end)]
    outcome = decide_window(
        logged, champion, params, store, start=w.start, end=w.end, labels=recent, quarantine=quarantine, emit=emit
    )
    summary, decision = outcome.summary, outcome.decision
    truth = classification_metrics(current[data.label].to_numpy(), scores, svc.model.threshold)
    row = {
        "window": w.window_id,
        "rows": len(current),
        "logged_rows": len(logged),
        "roc_auc": truth["roc_auc"],
        "brier": truth["brier"],
        # the same figures estimated from the window's scores alone, before any label (monitoring/estimate.py)
        "est_auc": summary.estimated.roc_auc if summary.estimated else float("nan"),
        "est_brier": summary.estimated.brier if summary.estimated else float("nan"),
        "positive_rate": truth["positive_rate"],  # realised share of late flights, and the share expected
        "est_positive_rate": summary.estimated.positive_rate if summary.estimated else float("nan"),
        "drift_share": summary.drift.share,
        "score_drift": summary.score_drift.score if summary.score_drift else float("nan"),
        "labelled_rows": summary.labelled_rows,
        "decision": decision.kind,
        "events": len(outcome.events),
        "reasons": "; ".join(decision.reasons),
        "retrained": False,
        "promoted": False,
        "champion_version": version,
        "train_seconds": 0.0,
    }
    return outcome, row


def replay_policy(
    policy: str, workspace: Path, rcfg: ReplayCfg, labels: SourceLabels, progress, seed: int = 0
) -> list[dict[str, Any]]:
    """One policy (of one replay seed) over every window, through the loop's own steps; returns one row
    per window.

    Each window is played by `replay_window` and, when the policy says so, retrained by the retraining
    flow's step (`retrain_in`) with the same label feed as production; the service is told about a new
    champion in-process."""
    logger = get_run_logger()
    params = load_params(workspace / paths.PARAMS)
    store = StateStore(workspace / report.STATE)
    rows: list[dict[str, Any]] = []
    with Service(params, workspace, params.register_.model_name) as svc:
        for w in windows(rcfg.start, rcfg.end, rcfg.window_days):
            outcome, row = replay_window(w, svc, params, store, labels.features, rcfg, workspace / report.QUARANTINE)
            row = {"policy": policy, "seed": seed, **row}
            request = outcome.decision.request
            if request is not None:
                t0 = time.perf_counter()
                try:
                    result = retrain_in(workspace, params, request, labels, lambda: json.dumps(svc.reload()))
                except Exception as exc:  # a failed retrain keeps the champion live, as in production
                    logger.error("%s %s: retraining failed, champion unchanged: %s", policy, w.window_id, exc)
                    result = {"promoted": False, "gate": {"reason": f"retraining failed: {exc}"[:300]}}
                    row["reasons"] += f"; retraining failed: {exc}"[:300]
                row.update(retrained=True, promoted=result["promoted"], train_seconds=time.perf_counter() - t0)
                row["champion_version"] = svc.model.version
                why = result["gate"].get("reason")
                logger.info("%s %s: retrained (%s), gate: %s", policy, w.window_id, request.kind, why)
            rows.append(row)
            progress.update(1)
            progress.set_postfix(policy=policy, seed=seed, window=w.window_id, v=row["champion_version"])
    return rows


def plot(table: pd.DataFrame, out: Path) -> tuple[Path, Path]:
    """PNG and interactive HTML of AUC and Brier per window (mean over seeds, band: their range),
    windows where a seed retrained marked, and dotted the same figures estimated without labels."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    table = table if "seed" in table.columns else table.assign(seed=0)
    several = table["seed"].nunique() > 1
    how = " (mean of seeds, band: their range)" if several else ""
    fig, axes = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    html = make_subplots(rows=2, cols=1, shared_xaxes=True, subplot_titles=("ROC-AUC", "Brier (lower is better)"))
    for policy, part in table.groupby("policy", sort=False):
        per_window = part.groupby("window")
        x = pd.to_datetime(pd.Series(sorted(per_window.groups)))
        hit = per_window["retrained"].any().to_numpy(dtype=bool)  # a retrain in any seed
        for i, (metric, est) in enumerate((("roc_auc", "est_auc"), ("brier", "est_brier"))):
            mean, low, high = (per_window[metric].agg(f).to_numpy() for f in ("mean", "min", "max"))
            line = axes[i].plot(x, mean, marker=".", label=policy)[0]
            if est in part.columns and part[est].notna().any():
                guess = per_window[est].mean().to_numpy()
                axes[i].plot(x, guess, linestyle=":", color=line.get_color(), label=f"{policy} (estimated)")
                html.add_trace(
                    go.Scatter(
                        x=x,
                        y=guess,
                        mode="lines",
                        line={"dash": "dot"},
                        name=f"{policy} {metric} estimated",
                        legendgroup=policy,
                    ),
                    row=i + 1,
                    col=1,
                )
            if several:
                axes[i].fill_between(x, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
            axes[i].scatter(x[hit], mean[hit], marker="^", s=60, color=line.get_color(), zorder=3)
            html.add_trace(
                go.Scatter(x=x, y=mean, mode="lines+markers", name=f"{policy} {metric}", legendgroup=policy),
                row=i + 1,
                col=1,
            )
            if several:
                band = {"mode": "lines", "line": {"width": 0}, "showlegend": False, "legendgroup": policy}
                html.add_trace(go.Scatter(x=x, y=high, name=f"{policy} max", **band), row=i + 1, col=1)
                html.add_trace(
                    go.Scatter(x=x, y=low, name=f"{policy} min", fill="tonexty", opacity=0.2, **band),
                    row=i + 1,
                    col=1,
                )
            html.add_trace(
                go.Scatter(
                    x=x[hit],
                    y=mean[hit],
                    mode="markers",
                    showlegend=False,
                    marker={"symbol": "triangle-up", "size": 11},
                    name=f"{policy} retrain",
                    legendgroup=policy,
                ),
                row=i + 1,
                col=1,
            )
    axes[0].set_ylabel("ROC-AUC")
    axes[1].set_ylabel("Brier")
    axes[0].set_title(f"Replay of 2013: champion quality per window{how} (triangles: retrains; dotted: estimated)")
    axes[0].legend()
    fig.tight_layout()
    png, page = out / "replay.png", out / "replay.html"
    fig.savefig(png, dpi=100)
    plt.close(fig)
    html.update_layout(title=f"Replay of 2013{how} (triangles: retrains; dotted: estimated without labels)", height=650)
    html.write_html(page, include_plotlyjs=True)
    return png, page


def seed_suffix(seed: int, seeds: Sequence[int]) -> str:
    """What a seed adds to its workspaces' and models' names: nothing in a one-seed replay (the names of
    a replay before seeds), `-s<seed>` when there are several."""
    return "" if len(seeds) == 1 else f"-s{seed}"


def pick_seeds(seeds: Sequence[int], count: int | None) -> list[int]:
    """The first `count` of `seeds` (all of them for None)."""
    if count is None:
        return list(seeds)
    if not 1 <= count <= len(seeds):
        raise ValueError(f"asked for {count} seeds; replay.seeds has {len(seeds)}: {list(seeds)}")
    return list(seeds[:count])


def run_name() -> str:
    from prefect.runtime import flow_run

    given = flow_run.parameters
    return "replay" + ("-quick" if given.get("quick") else "") + "".join(f"-{p}" for p in given.get("policies") or [])


@flow(name="replay", flow_run_name=run_name, log_prints=True)
def replay(
    quick: bool = False,
    policies: list[str] | None = None,
    overrides: dict[str, Any] | None = None,
    out_dir: str | None = None,
    project_dir: str | None = None,
    seeds: int | None = None,
) -> dict[str, Any]:
    """Replay the year under each policy and seed and compare the policies; writes reports/replay/ (or
    `out_dir`).

    Args:
        quick: three windows, one seed and a tiny model (a check that everything runs, not a result)
        policies: replay only these of params.yaml's `replay.policies` (default: all)
        overrides: dotted keys of params.yaml for this replay only, e.g. {"policy.training_window":
            "sliding"}: its workspaces get them, the project's params.yaml is left as it is
        out_dir: where the reports go, relative to the project (default: reports/replay)
        project_dir: the project checkout (default: the runner's working directory)
        seeds: replay only the first this many of `replay.seeds` (default: all of them)
    """
    from tqdm import tqdm

    logger = get_run_logger()
    root = Path(project_dir or os.getcwd()).resolve()
    overrides = dict(overrides or {})
    params = load_params(root / paths.PARAMS, overrides=overrides)
    rcfg = params.replay_cfg(quick=quick)
    chosen = policies or list(rcfg.policies)
    unknown = set(chosen) - set(rcfg.policies)
    if unknown:
        raise ValueError(f"unknown policies {sorted(unknown)}; params.yaml replay.policies has {list(rcfg.policies)}")
    replay_seeds = pick_seeds(rcfg.seeds, seeds)
    # a replay seed is an offset to the training seed the replay would use anyway (seed 0: that one)
    train_seed = load_params(root / paths.PARAMS, overrides={**overrides, **rcfg.train}).train.seed
    out = root / (out_dir or OUT)
    work = out / "work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    _tracking_env(root)
    experiment = f"{params.register_.experiment}-replay"
    tracking.setup(experiment)  # created here, so its artifacts land in the project's mlartifacts

    t0 = time.perf_counter()
    labels = SourceLabels(params)
    n_windows = len(windows(rcfg.start, rcfg.end, rcfg.window_days))
    model = params.register_.model_name
    bases = {}
    for s in replay_seeds:
        # every seed: its own initial champion, trained with its seed
        sfx = seed_suffix(s, replay_seeds)
        own = {"register.model_name": f"{model}-replay-base{sfx}", "register.experiment": experiment}
        seeded = {**overrides, **own, **rcfg.train, "train.seed": train_seed + s}
        bases[s] = make_workspace(root, work / f"base{sfx}", seeded)
    base_workers = min(rcfg.workers, len(replay_seeds))
    with stage_threads(base_workers, len(replay_seeds)) as share:
        calls = [partial(training, TrainingParams(), str(bases[s])) for s in replay_seeds]
        trained = at_once(calls, base_workers, share)
    base_versions = {s: int(r["registered"]["version"]) for s, r in zip(replay_seeds, trained, strict=True)}
    setup_seconds = time.perf_counter() - t0
    logger.info("initial champions (seed: version) %s trained in %.0fs", base_versions, setup_seconds)

    jobs = [(s, p) for s in replay_seeds for p in chosen]
    spaces = {}
    for s, policy in jobs:
        # each policy and seed: its own workspace, model name and state, its overrides in its own `policy:`
        sfx = seed_suffix(s, replay_seeds)
        name = f"{model}-replay-{policy}{sfx}"
        own = {f"policy.{k}": v for k, v in rcfg.policies[policy].items()}
        spaces[s, policy] = clone_workspace(bases[s], work / f"{policy}{sfx}", {"register.model_name": name, **own})
        register_copy(f"{model}-replay-base{sfx}", base_versions[s], name)
    workers = min(rcfg.workers, len(jobs))
    with (
        stage_threads(workers, len(jobs)) as share,
        tqdm(total=n_windows * len(jobs), desc="replay", unit="window") as progress,
    ):
        what = f"{len(chosen)} policies x {len(replay_seeds)} seeds"
        threads = share.threads
        logger.info("replaying %s, %d at a time, %d thread(s) per stage while as many run", what, workers, threads)
        # each policy and seed has its own workspace, service and model name; the stages run as
        # processes, so replays overlap well even on 2 cores
        calls = [partial(replay_policy, p, spaces[s, p], rcfg, labels, progress, s) for s, p in jobs]
        rows = [row for per_job in at_once(calls, workers, share) for row in per_job]

    table = pd.DataFrame(rows)
    summary = policy_summary(table)
    tuned = policy_summary(table[table["window"] <= rcfg.tune_until])
    held_out = policy_summary(table, since=(pd.Timestamp(rcfg.tune_until) + pd.Timedelta(days=1)).strftime("%Y-%m-%d"))
    goal = {
        part: {p: retained_improvement(s, p) for p in chosen if p not in ("never", "monthly")}
        for part, s in (("all", summary), ("tuning_half", tuned), ("held_out_half", held_out))
    }
    # the label-free trigger against the label-driven one it stands in for (goal: >= 80 % of its gain kept)
    triggers = {p: list(rcfg.policies[p].get("triggers", params.policy.triggers)) for p in chosen}
    estimate_goal = {
        part: {p: {"vs": q, **retained_improvement(s, p, reference=q)} for p, q in label_counterparts(triggers).items()}
        for part, s in (("all", summary), ("tuning_half", tuned), ("held_out_half", held_out))
    }
    boot = rcfg.bootstrap
    evidence = vs_base(table, rcfg.tune_until, boot.resamples, boot.block_windows, boot.seed, base="never")
    said = evidence_text(evidence) or ["`never` was not replayed: no paired evidence"]
    total_seconds = time.perf_counter() - t0

    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "windows.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    evidence.to_csv(out / "evidence.csv", index=False)
    png, page = plot(table, out)
    accuracy = estimate_accuracy(table)
    (out / "estimate_accuracy.json").write_text(json.dumps(accuracy, indent=1, default=float))
    result = {
        "quick": quick,
        "policies": chosen,
        "seeds": replay_seeds,
        "train_seeds": {s: train_seed + s for s in replay_seeds},
        "windows": n_windows,
        "workers": workers,
        "stage_threads": threads,
        "overrides": overrides,
        "seconds": round(total_seconds, 1),
        "initial_training_seconds": round(setup_seconds, 1),
        "summary": summary.to_dict("records"),
        "tuning_half": tuned.to_dict("records"),
        "held_out_half": held_out.to_dict("records"),
        "goal": goal,
        "estimate_vs_label_trigger": estimate_goal,
        "bootstrap": {**boot.model_dump(), "level": LEVEL, "method": "circular block bootstrap over windows"},
        "vs_never": evidence.to_dict("records"),
        "vs_never_text": said,
        "estimate_accuracy": accuracy,
    }
    (out / "summary.json").write_text(json.dumps(result, indent=1, default=float))

    import mlflow

    with mlflow.start_run(experiment_id=tracking.setup(experiment), run_name="replay" + ("-quick" if quick else "")):
        mlflow.log_params(
            {
                "quick": quick,
                "policies": ",".join(chosen),
                "seeds": ",".join(map(str, replay_seeds)),
                "train_seed": train_seed,
                "window_days": rcfg.window_days,
                "workers": workers,
                "stage_threads": threads,
                "overrides": json.dumps(overrides)[:500],
                "start": rcfg.start,
                "end": rcfg.end,
                **{f"bootstrap.{k}": v for k, v in boot.model_dump().items()},
            }
        )
        metrics: dict[str, float] = {"replay_seconds": total_seconds}
        for rec in summary.to_dict("records"):
            p = rec["policy"]
            for key in ("mean_auc", "auc_seed_sd", "mean_brier", "brier_seed_sd", "retrains", "train_seconds"):
                metrics[f"{p}.{key}"] = float(rec[key])
        for rec in evidence.to_dict("records"):
            stem = f"{rec['policy']}.vs_never.{rec['part']}.{rec['metric']}"
            metrics |= {f"{stem}.{k}": float(rec[k]) for k in ("diff", "ci_low", "ci_high", "diff_per_retrain")}
        for part, kept in estimate_goal.items():
            for p, rec in kept.items():
                metrics |= {f"{p}.kept_of_{rec['vs']}.{part}.{k}": float(v) for k, v in rec.items() if k != "vs"}
        for p, acc in accuracy.items():
            metrics |= {f"{p}.estimate.{k}": float(v) for k, v in acc.items() if k != "windows"}
        mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
        files = ("windows.csv", "summary.csv", "evidence.csv", "summary.json", "estimate_accuracy.json")
        for f in (*(out / name for name in files), png, page):
            mlflow.log_artifact(str(f))
        mlflow.log_text("\n".join(said), "evidence.txt")
    create_table_artifact(
        key="replay-summary",
        table=json.loads(summary.to_json(orient="records")),
        description="Replay of 2013: per policy, mean AUC/Brier over windows and seeds (sd between seeds), "
        "retrains and training time per seed",
    )
    create_table_artifact(
        key="replay-evidence",
        table=json.loads(evidence.to_json(orient="records")),
        description=f"Each policy minus `never`, paired by window (seeds averaged), with {LEVEL:.0%} circular "
        f"block-bootstrap intervals ({boot.resamples} resamples, blocks of {boot.block_windows} windows):\n\n"
        + "\n".join(f"- {line}" for line in said),
    )
    print(summary.to_string(index=False))
    print(json.dumps(goal, indent=1, default=float))
    if label_counterparts(triggers):
        print("estimate-driven vs label-driven trigger:", json.dumps(estimate_goal, indent=1, default=float))
    print("\n".join(said))
    print(f"replay: {total_seconds:.0f}s; reports in {out}")
    return result


def main(argv: list[str] | None = None) -> None:
    from flows.common import local_prefect

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="a few windows and a tiny model (tests)")
    ap.add_argument("--policy", action="append", help="replay only these policies (repeatable)")
    ap.add_argument(
        "-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. -S policy.training_window=sliding"
    )
    ap.add_argument("--out", help=f"output folder, relative to the project (default {OUT})")
    ap.add_argument(
        "--seeds", type=int, metavar="N", help="replay only the first N of replay.seeds (default: all; --quick: 1)"
    )
    ap.add_argument("--project-dir", default=".", type=Path)
    args = ap.parse_args(argv)
    try:
        overrides = cli_overrides(args.set)
    except ParamsError as exc:
        ap.error(str(exc))
    project = args.project_dir.resolve()
    with local_prefect(project):
        replay(
            quick=args.quick,
            policies=args.policy,
            overrides=overrides,
            out_dir=args.out,
            project_dir=str(project),
            seeds=args.seeds,
        )


if __name__ == "__main__":
    main()
