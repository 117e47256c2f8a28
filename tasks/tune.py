"""Hyperparameter study: Optuna over model/train params, scored by rolling monthly CV on the training window
(split.train .. split.valid; the test window is never read). Each fold fits the preprocessor on its own
training months and trains with the pipeline's `fit()`. `--apply` writes the best values into params.yaml."""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from flightloop import paths
from flightloop.config import Params, TuneCfg, cli_overrides, load_params, parse_params, period_bounds, set_dotted
from flightloop.metrics import classification_metrics
from models.preprocess import Preprocessor

OUT = paths.REPORTS / "tune"
BEST = OUT / "best_params.yaml"
SIGNIFICANT = 3  # sampled floats are rounded to this many digits before training: what is written is what ran


@dataclass(frozen=True)
class Fold:
    train: tuple[str, ...]  # months 'YYYY-MM' trained on
    valid: str  # the month after them, validated on

    def __str__(self) -> str:
        return f"{self.train[0]}..{self.train[-1]} -> {self.valid}"


def months_of(frame: pd.DataFrame, time_column: str) -> pd.Series:
    return frame[time_column].dt.strftime("%Y-%m")


def rolling_folds(months: list[str], n: int) -> list[Fold]:
    """The last `n` months each validate a model trained on every month before it (an expanding window)."""
    months = sorted(set(months))
    if len(months) < n + 1:
        raise ValueError(f"{n} folds need at least {n + 1} months of data, got {len(months)}: {months}")
    return [Fold(tuple(months[:k]), months[k]) for k in range(len(months) - n, len(months))]


def fold_frames(frame: pd.DataFrame, fold: Fold, params: Params) -> tuple[pd.DataFrame, pd.DataFrame, Preprocessor]:
    """The fold's training and validation rows, and a preprocessor fitted on the training rows only."""
    month = months_of(frame, params.data.time_column)
    train = frame[month.isin(fold.train)].reset_index(drop=True)
    valid = frame[month == fold.valid].reset_index(drop=True)
    data = params.data
    pre = Preprocessor.fit(train, data.categorical, data.numeric, params.prepare.min_category_count)
    return train, valid, pre


def trial_params(params: Params, tune: TuneCfg, values: dict[str, Any]) -> Params:
    """The study's params with the per-trial training overrides and a trial's values, validated."""
    raw = params.as_dict()
    for key, value in {**tune.train, **values}.items():
        set_dotted(raw, key, value)
    return parse_params(raw)


def fit_fold(train: pd.DataFrame, valid: pd.DataFrame, pre: Preprocessor, params: Params) -> dict[str, float]:
    """Train with the pipeline's fit() on one fold and score the validation month."""
    from models.fit import fit
    from models.packaged import predict_proba
    from tasks.train import encode

    cfg = params.train
    if cfg.sample_frac < 1:  # as the train stage samples its training rows
        train = train.sample(frac=cfg.sample_frac, random_state=cfg.seed)
    splits = {"train": encode(train, pre, params.data.label), "valid": encode(valid, pre, params.data.label)}
    with tempfile.TemporaryDirectory(prefix="tune-") as out:
        module, history = fit(splits, pre.cardinalities, params.model, cfg, Path(out))
    p = predict_proba(module, *splits["valid"][:2])
    if not np.isfinite(p).all():
        return {"roc_auc": float("nan"), "brier": float("nan"), "epochs": len(history), "train_rows": len(train)}
    m = classification_metrics(splits["valid"][2], p, 0.5)
    return {"roc_auc": m["roc_auc"], "brier": m["brier"], "epochs": len(history), "train_rows": len(train)}


def _choice_text(value: Any) -> Any:
    """Optuna's choices are plain scalars: a list choice (e.g. model.hidden) travels as its JSON text."""
    return json.dumps(list(value)) if isinstance(value, list | tuple) else value


def suggest(trial, tune: TuneCfg) -> dict[str, Any]:
    values = {}
    for key, dim in tune.space.items():
        if dim.choices is not None:
            picked = trial.suggest_categorical(key, [_choice_text(c) for c in dim.choices])
            values[key] = json.loads(picked) if isinstance(picked, str) and picked.startswith("[") else picked
        elif isinstance(dim.low, int) and isinstance(dim.high, int):
            values[key] = trial.suggest_int(key, dim.low, dim.high, log=dim.log)
        else:
            values[key] = float(f"{trial.suggest_float(key, dim.low, dim.high, log=dim.log):.{SIGNIFICANT}g}")
    return values


def current_values(params: Params, tune: TuneCfg) -> dict[str, Any]:
    """The params' own values of the tuned keys that lie in the space (the study's first trial)."""
    out = {}
    for key, dim in tune.space.items():
        section, _, name = key.partition(".")
        value = getattr(getattr(params, section), name)
        if dim.choices is not None:
            if _choice_text(value) in [_choice_text(c) for c in dim.choices]:
                out[key] = _choice_text(value)
        elif dim.low <= value <= dim.high:
            out[key] = value
    return out


def make_study(params: Params):
    """A study that maximises mean CV ROC-AUC, prunes by the median after each fold, and first tries the
    params' own values (so every study measures the defaults beside its best)."""
    import optuna

    tune = params.tune
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=tune.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=tune.startup_trials, n_warmup_steps=0),
    )
    study.enqueue_trial(current_values(params, tune), user_attrs={"defaults": True})
    return study


def optimize(
    study,
    frame: pd.DataFrame,
    params: Params,
    trials: int | None = None,
    minutes: float | None = None,
    callbacks: tuple[Callable, ...] = (),
) -> list[Fold]:
    """Run trials until `trials` are done or `minutes` have passed (no new trial starts after that)."""
    import optuna

    tune = params.tune
    folds = rolling_folds(months_of(frame, params.data.time_column).tolist(), tune.folds)
    prepared = [fold_frames(frame, fold, params) for fold in folds]  # tuned keys never change a fold's rows

    def objective(trial: optuna.Trial) -> float:
        values = suggest(trial, tune)
        cfg = trial_params(params, tune, values)
        trial.set_user_attr("values", values)
        aucs, briers = [], []
        for i, (fold, (train, valid, pre)) in enumerate(zip(folds, prepared)):
            scores = fit_fold(train, valid, pre, cfg)
            trial.set_user_attr(f"fold{i}", {**scores, "fold": str(fold)})
            if not np.isfinite(scores["roc_auc"]):
                trial.set_user_attr("diverged", True)
                raise optuna.TrialPruned(f"non-finite predictions in fold {i}")
            aucs.append(scores["roc_auc"])
            briers.append(scores["brier"])
            trial.report(scores["roc_auc"], i)
            if i < len(folds) - 1 and trial.should_prune():
                raise optuna.TrialPruned(f"fold {i} ROC-AUC {scores['roc_auc']:.4f} below the median")
        trial.set_user_attr("cv_brier", float(np.mean(briers)))
        return float(np.mean(aucs))

    trials = params.tune.trials if trials is None else trials
    minutes = params.tune.minutes if minutes is None else minutes
    study.optimize(
        objective, n_trials=trials, timeout=None if minutes is None else minutes * 60, callbacks=list(callbacks)
    )
    return folds


def cv_window(frames: dict[str, pd.DataFrame], params: Params) -> pd.DataFrame:
    """The prepared train and valid splits as one frame of months; a row of the test window is refused."""
    frame = pd.concat([frames["train"], frames["valid"]], ignore_index=True)
    test_start = period_bounds(*params.split.test)[0]
    if (frame[params.data.time_column] >= pd.Timestamp(test_start)).any():
        raise ValueError(f"rows at or after the test window ({test_start}) in the tuning data")
    return frame.sort_values(params.data.time_column, kind="stable").reset_index(drop=True)


def complete(trial) -> bool:
    return trial.state.name == "COMPLETE"


def trial_rows(study) -> pd.DataFrame:
    rows = []
    for t in study.trials:
        row = {"trial": t.number, "state": t.state.name, "defaults": bool(t.user_attrs.get("defaults", False))}
        if complete(t):  # a pruned trial's value is its last fold's, not a CV mean
            row.update(cv_roc_auc=t.value, cv_brier=t.user_attrs["cv_brier"])
        row.update(t.user_attrs.get("values", {}))
        for i in range(10):
            if f"fold{i}" in t.user_attrs:
                row[f"fold{i}_roc_auc"] = t.user_attrs[f"fold{i}"]["roc_auc"]
        rows.append(row)
    return pd.DataFrame(rows)


def best_record(study) -> dict[str, Any]:
    """The best complete trial's values and scores, beside the defaults' trial from the same study."""
    best = study.best_trial
    defaults = next((t for t in study.trials if t.user_attrs.get("defaults") and complete(t)), None)
    record = {
        "params": best.user_attrs["values"],
        "trial": best.number,
        "cv": {"roc_auc": round(best.value, 5), "brier": round(best.user_attrs["cv_brier"], 5)},
    }
    if defaults is not None:
        record["defaults_cv"] = {
            "roc_auc": round(defaults.value, 5),
            "brier": round(defaults.user_attrs["cv_brier"], 5),
        }
    return record


def exp_run_command(values: dict[str, Any]) -> str:
    """The `dvc exp run` that trains the pipeline once with these values, params.yaml untouched."""
    from flightloop.params_file import yaml_text

    return "dvc exp run " + " ".join(f"-S {shlex.quote(f'{k}={yaml_text(v)}')}" for k, v in values.items())


def write_best(record: dict[str, Any], path: Path) -> None:
    header = (
        f"# Best trial of a hyperparameter study (python -m tasks.tune): mean CV ROC-AUC {record['cv']['roc_auc']}"
        f" (the params' own values: {record.get('defaults_cv', {}).get('roc_auc', 'not run')}).\n"
        "# Apply to params.yaml (values rewritten in place, comments kept), then review `git diff params.yaml`:\n"
        f"#   python -m tasks.tune --apply {path}\n"
        "# Or train once with them, params.yaml untouched:\n"
        f"#   {exp_run_command(record['params'])}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(header + yaml.safe_dump(record, sort_keys=False, default_flow_style=None))


def apply_best(best: Path, params_file: Path) -> dict[str, Any]:
    """Rewrite the tuned keys' values in a params file in place (comments and layout kept); returns them."""
    from flightloop.params_file import edit_values

    values = yaml.safe_load(best.read_text())["params"]
    load_params(params_file, overrides=values)  # a value its key refuses fails here, before any write
    edit_values(params_file, values)
    return values


# ---- the entry point: reads data/prepared, logs to MLflow, writes reports/tune/ ------------------------


class MlflowTrials:
    """Optuna callback: one MLflow child run per finished trial (complete, pruned or failed)."""

    def __init__(self, experiment_id: str, folds: list[Fold] | None = None):
        self.experiment_id, self.folds = experiment_id, folds

    def __call__(self, study, trial) -> None:
        import mlflow

        values = trial.user_attrs.get("values", {})
        with mlflow.start_run(experiment_id=self.experiment_id, run_name=f"trial-{trial.number}", nested=True):
            mlflow.log_params({k: json.dumps(v) if isinstance(v, list) else v for k, v in values.items()})
            mlflow.set_tags(
                {"trial": trial.number, "state": trial.state.name, "defaults": trial.user_attrs.get("defaults", False)}
            )
            i = 0
            while f"fold{i}" in trial.user_attrs:
                fold = trial.user_attrs[f"fold{i}"]
                mlflow.log_metrics({f"fold{i}.roc_auc": fold["roc_auc"], f"fold{i}.brier": fold["brier"]})
                mlflow.log_metrics({"fold.roc_auc": fold["roc_auc"], "fold.brier": fold["brier"]}, step=i)
                mlflow.log_metric(f"fold{i}.epochs", fold["epochs"])
                i += 1
            if complete(trial):
                mlflow.log_metrics({"cv.roc_auc": trial.value, "cv.brier": trial.user_attrs["cv_brier"]})
        shown = f"cv roc_auc={trial.value:.4f}" if complete(trial) else f"{trial.state.name} after {i} fold(s)"
        print(f"tune: trial {trial.number} {shown} {values}", flush=True)


def run(
    frame: pd.DataFrame, params: Params, out: Path, trials: int | None = None, minutes: float | None = None
) -> dict[str, Any]:
    """A study under one MLflow parent run; writes best_params.yaml and trials.csv to `out`."""
    import mlflow
    import optuna

    from flightloop import tracking

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # a Trainer per fold: no banners
    tune = params.tune
    experiment_id = tracking.setup(tune.experiment)
    study = make_study(params)
    started = time.time()
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"tune-{time.strftime('%Y%m%d-%H%M%S')}") as parent:
        folds = rolling_folds(months_of(frame, params.data.time_column).tolist(), tune.folds)
        mlflow.set_tags(
            {
                "git_commit": tracking.git_commit(),
                "prepared_hash": tracking.dvc_hash(paths.PREPARED),
                "params_hash": params.digest(),
            }
        )
        mlflow.log_params(
            {
                "trials": trials or tune.trials,
                "minutes": minutes or tune.minutes,
                "seed": tune.seed,
                "startup_trials": tune.startup_trials,
                **{f"fold{i}": str(f) for i, f in enumerate(folds)},
                **{f"space.{k}": json.dumps(d.model_dump(exclude_none=True)) for k, d in tune.space.items()},
                **{f"train.{k}": v for k, v in tune.train.items()},
            }
        )
        optimize(study, frame, params, trials, minutes, callbacks=(MlflowTrials(experiment_id),))
        table = trial_rows(study)
        out.mkdir(parents=True, exist_ok=True)
        table.to_csv(out / "trials.csv", index=False)
        states = table["state"].value_counts().to_dict()
        mlflow.log_metrics({f"trials.{s.lower()}": n for s, n in states.items()})
        mlflow.log_metric("minutes", (time.time() - started) / 60)
        record = None
        if any(complete(t) for t in study.trials):
            record = best_record(study)
            record["study_run_id"] = parent.info.run_id
            write_best(record, out / BEST.name)
            mlflow.log_metrics({"best.cv.roc_auc": record["cv"]["roc_auc"], "best.cv.brier": record["cv"]["brier"]})
            if "defaults_cv" in record:
                mlflow.log_metric("defaults.cv.roc_auc", record["defaults_cv"]["roc_auc"])
            mlflow.set_tag("best_trial", record["trial"])
            mlflow.log_artifact(str(out / BEST.name))
        mlflow.log_artifact(str(out / "trials.csv"))
    return {"study": study, "record": record, "run_id": parent.info.run_id, "folds": folds}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    ap.add_argument("--prepared", default=paths.PREPARED, type=Path)
    ap.add_argument("--out", default=OUT, type=Path)
    ap.add_argument("--trials", type=int, help="at most this many trials (default tune.trials)")
    ap.add_argument("--minutes", type=float, help="no new trial after this many minutes (default tune.minutes)")
    ap.add_argument("-S", "--set", action="append", default=[], metavar="KEY=VALUE", help="override params.yaml")
    ap.add_argument(
        "--apply",
        nargs="?",
        const=BEST,
        type=Path,
        metavar="BEST",
        help=f"write the values of BEST (default {BEST}) into --params in place, and print the dvc exp run",
    )
    args = ap.parse_args(argv)

    if args.apply is not None:
        values = apply_best(args.apply, args.params)
        print(f"tune: wrote {len(values)} values into {args.params}; review with: git diff {args.params}")
        print(f"tune: or, params.yaml unchanged, one experiment: {exp_run_command(values)}")
        return

    params = load_params(args.params, overrides=cli_overrides(args.set))
    if params.tune is None:
        raise SystemExit(f"error: {args.params} has no `tune:` section")
    # the train and valid splits only (the test split is never read); each fold fits its own preprocessor
    frames = {name: pd.read_parquet(args.prepared / f"{name}.parquet") for name in ("train", "valid")}
    result = run(cv_window(frames, params), params, args.out, args.trials, args.minutes)
    record = result["record"]
    if record is None:
        raise SystemExit("tune: no trial completed (all pruned or failed); see trials.csv")
    print(f"tune: folds {', '.join(map(str, result['folds']))}; MLflow run {result['run_id']}")
    print(f"tune: best trial {record['trial']} cv roc_auc={record['cv']['roc_auc']:.4f} {record['params']}")
    if "defaults_cv" in record:
        print(f"tune: the params' own values: cv roc_auc={record['defaults_cv']['roc_auc']:.4f}")
    print(f"tune: wrote {args.out / BEST.name}; apply with: python -m tasks.tune --apply")


if __name__ == "__main__":
    main()
