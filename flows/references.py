"""References for the replay: a retrain at every window, each model scored on every later window.

Model 0 is the initial champion (the replay's `split`), model i + 1 what a retrain decided at the end
of window i trains on: the loop's own data selection (`monitoring.policy.retrain_request`: labels older
than policy.label_delay_days, the policy's training window, valid and gate days), the labelled rows the
retraining step ingests (`SourceLabels.raw_until`), the prepare stage's function and the train stage's
training (`tasks.train.fit_prepared`), with replay.train's overrides and the replay's seeds. Each model
then scores every later window's rows as the service would (`Scorer`). From that matrix
(monitoring/references.py): fixed cadences of 1, 2, 4, 8 windows and a hindsight oracle with the drift
policy's retrain budget, both without a gate (every model promoted); the oracle is an upper bound.

`python -m flows.references [--seeds N] [--replay reports/replay]` (`make replay-refs`): reads the
replay's windows.csv there for the policies' own figures and writes references.csv, a sentence per
reference (references.txt) and the matrix (references_matrix.csv) beside it. `--from-matrix` recomputes
the table without training."""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pandas as pd

from flightloop import paths
from flightloop.config import Params, ParamsError, cli_overrides, load_params, period_bounds
from flightloop.metrics import classification_metrics
from monitoring.policy import data_time, retrain_request
from monitoring.references import reference_table, references_text
from monitoring.replay import apply_scenario, rows_in, windows

OUT = paths.REPORTS / "replay"
MATRIX = "references_matrix.csv"
TABLE = "references.csv"
TEXT = "references.txt"


@dataclass(frozen=True)
class Job:
    seed: int  # replay seed: trains with train.seed + seed, as the replay does
    model: int  # 0: the initial champion; i + 1: the retrain decided at the end of window i
    trained_at: str  # "initial" or the window id
    split: dict[str, tuple[str, str]]
    horizon: str  # rows before this time are labelled and ingested


def jobs(params: Params, seeds: list[int], quick: bool = False) -> list[Job]:
    """Every model to train: per seed, the initial champion and a retrain at each window but the last."""
    rcfg = params.replay_cfg(quick=quick)
    ws = windows(rcfg.start, rcfg.end, rcfg.window_days)
    first_day = f"{params.data.start}-01"
    _, data_end = period_bounds(params.data.start, params.data.end)  # what the initial champion's data holds
    out = []
    for s in seeds:
        split = {k: tuple(getattr(params.split, k)) for k in ("train", "valid", "test")}
        out.append(Job(s, 0, "initial", split, data_end))
        for i, w in enumerate(ws[:-1]):  # a retrain at the last window would serve nothing
            request = retrain_request(
                params.policy,
                model_name=params.register_.model_name,
                model_version=None,
                window_id=w.window_id,
                now=data_time(w.end),
                kind="schedule",
                reasons=["replay reference: a retrain at every window"],
                first_day=first_day,
            )
            out.append(Job(s, i + 1, w.window_id, dict(request.split), f"{pd.Timestamp(request.horizon)}"))
    return out


_worker: dict[str, Any] = {}


def _init(params_file: str, overrides: dict[str, Any], quick: bool) -> None:
    """One process: the config and the label feed (read and featurised once)."""
    from flows.labels import SourceLabels

    params = load_params(Path(params_file), overrides=overrides)
    rcfg = params.replay_cfg(quick=quick)
    labels = SourceLabels(params)
    _ = labels.features
    _worker.update(params_file=params_file, overrides=overrides, params=params, rcfg=rcfg, labels=labels)


def train_and_score(job: Job) -> list[dict[str, Any]]:
    """Train one model as the replay's retrain would and score it on each window it could serve."""
    from models.packaged import Scorer
    from tasks.prepare import prepare
    from tasks.train import fit_prepared, training_frames

    params, rcfg, labels = _worker["params"], _worker["rcfg"], _worker["labels"]
    train_seed = load_params(Path(_worker["params_file"]), overrides={**_worker["overrides"], **rcfg.train}).train.seed
    own = {
        **_worker["overrides"],
        **rcfg.train,
        "train.seed": train_seed + job.seed,
        **{f"split.{k}": list(v) for k, v in job.split.items()},
    }
    run = load_params(Path(_worker["params_file"]), overrides=own)
    t0 = time.perf_counter()
    raw = labels.raw_until(pd.Timestamp(job.horizon))
    parts, pre, _ = prepare(raw, labels.tables, run)
    with tempfile.TemporaryDirectory() as tmp:
        module, history = fit_prepared(training_frames(parts, run), pre, run, Path(tmp))
    seconds = time.perf_counter() - t0
    scorer = Scorer(pre, module.net.eval(), {})
    data, stream = params.data, labels.features
    rows = []
    for j, w in enumerate(windows(rcfg.start, rcfg.end, rcfg.window_days)):
        if j < job.model:  # model i + 1 serves from window i + 1 on
            continue
        current = apply_scenario(rows_in(stream, data.time_column, w.start, w.end), w.window_id, rcfg)
        truth = classification_metrics(current[data.label].to_numpy(), scorer.predict_proba(current), 0.5)
        rows.append(
            {
                "seed": job.seed,
                "model": job.model,
                "trained_at": job.trained_at,
                "window": w.window_id,
                "roc_auc": truth["roc_auc"],
                "brier": truth["brier"],
                "train_rows": len(parts["train"]),
                "epochs": len(history),
                "train_seconds": round(seconds, 1),
            }
        )
    print(f"references: seed {job.seed} model {job.model} ({job.trained_at}) in {seconds:.0f}s", flush=True)
    return rows


def build_matrix(
    params_file: Path, overrides: dict[str, Any], seeds: int | None, workers: int, quick: bool = False
) -> pd.DataFrame:
    """Train every model (`workers` processes, one torch thread each) and score it: the long matrix."""
    from flows.replay import pick_seeds

    params = load_params(params_file, overrides=overrides)
    todo = jobs(params, pick_seeds(params.replay_cfg(quick=quick).seeds, seeds), quick)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the workers inherit it: one thread each on shared cores
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("spawn"),
        initializer=_init,
        initargs=(str(params_file), overrides, quick),
    ) as pool:
        done = list(pool.map(train_and_score, todo))
    return pd.DataFrame([row for rows in done for row in rows]).sort_values(["seed", "model", "window"])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--replay", type=Path, default=OUT, help=f"the replay's report folder (default {OUT})")
    ap.add_argument("--seeds", type=int, metavar="N", help="the first N of replay.seeds (default: all)")
    ap.add_argument("--workers", type=int, default=2, help="models trained at once (processes)")
    ap.add_argument("--budget", type=int, default=3, help="the oracle's retrains when the replay has no drift policy")
    ap.add_argument("--budget-from", default="drift", help="the replayed policy whose retrains set the oracle's budget")
    ap.add_argument("--from-matrix", action="store_true", help=f"reuse {MATRIX} in --replay; train nothing")
    ap.add_argument("--quick", action="store_true", help="the replay's --quick windows and tiny model (tests)")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="as for flows.replay")
    ap.add_argument("--project-dir", default=".", type=Path)
    args = ap.parse_args(argv)
    try:
        overrides = cli_overrides(args.set)
    except ParamsError as exc:
        ap.error(str(exc))
    if args.workers < 1:
        ap.error("--workers must be at least 1")
    project = args.project_dir.resolve()
    params_file = project / paths.PARAMS
    out = project / args.replay
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.from_matrix:
        if not (out / MATRIX).exists():
            ap.error(f"{out / MATRIX} does not exist: run without --from-matrix first")
        long = pd.read_csv(out / MATRIX, dtype={"window": str})
    else:
        long = build_matrix(params_file, overrides, args.seeds, args.workers, args.quick)
        long.to_csv(out / MATRIX, index=False)
    replayed = out / "windows.csv"
    policies = pd.read_csv(replayed, dtype={"window": str}) if replayed.exists() else None
    if policies is not None:
        policies = policies[policies["seed"].isin(long["seed"].unique())]  # the seeds of the matrix only
    rcfg = load_params(params_file, overrides=overrides).replay_cfg(quick=args.quick)
    table = reference_table(long, rcfg.tune_until, policies, budget_policy=args.budget_from, default_budget=args.budget)
    table.to_csv(out / TABLE, index=False)
    said = references_text(table)
    (out / TEXT).write_text("\n".join(said) + "\n")
    shown = ["reference", "source", "part", "mean_auc", "mean_brier", "retrains", "auc_gain", "auc_share_of_oracle"]
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table[[*shown, "auc_gain_per_retrain", "best_cadence"]].round(4).to_string(index=False))
    summary = {
        "seconds": round(time.perf_counter() - t0, 1),
        "models": int(long.groupby("seed")["model"].nunique().sum()),
        "train_seconds": round(float(long.drop_duplicates(["seed", "model"])["train_seconds"].sum()), 1),
        "policies_from": str(replayed) if policies is not None else None,
    }
    print("\n".join(said))
    print(json.dumps(summary))
    print(f"references: {out / TABLE}")


if __name__ == "__main__":
    main()
