"""Stage 5, evaluate: test metrics, curves, calibration, slices, and a gradient-boosting baseline."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import metrics as skm

from flightloop import paths, tracking
from flightloop.config import BaselineCfg, Params, load_params
from flightloop.importance import permutation_importance
from flightloop.metrics import classification_metrics
from models.preprocess import Preprocessor
from tasks.train import dataset, encode, read_prepared, read_run

MIN_SLICE_ROWS = 200


def choose_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Threshold that maximises F1 (chosen on validation, applied to test)."""
    precision, recall, thresholds = skm.precision_recall_curve(y, p)
    f1 = 2 * precision * recall / np.clip(precision + recall, 1e-12, None)
    return float(thresholds[int(np.argmax(f1[:-1]))]) if len(thresholds) else 0.5


def slice_metrics(
    groups: pd.DataFrame, y: np.ndarray, p: np.ndarray, threshold: float, columns: tuple[str, ...]
) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Metrics per value of each slice column, and the largest gap between slices per metric."""
    rows, gaps = [], {}
    for col in columns:
        for value, idx in groups.groupby(col, dropna=False).indices.items():
            m = classification_metrics(y[idx], p[idx], threshold)
            rows.append({"column": col, "value": str(value), **m})
        table = pd.DataFrame([r for r in rows if r["column"] == col])
        big = table[(table["rows"] >= MIN_SLICE_ROWS) & table["roc_auc"].notna()]
        for metric in ("roc_auc", "recall", "precision", "brier"):
            if len(big) >= 2:
                worst = big.loc[big[metric].idxmin() if metric != "brier" else big[metric].idxmax()]
                gaps[f"{col}.{metric}_gap"] = float(big[metric].max() - big[metric].min())
                gaps[f"{col}.{metric}_worst"] = str(worst["value"])
    return pd.DataFrame(rows), gaps


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int) -> pd.DataFrame:
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    out = (
        pd.DataFrame({"bin": which, "y": y, "p": p})
        .groupby("bin")
        .agg(predicted=("p", "mean"), observed=("y", "mean"), rows=("y", "size"))
    )
    return out.reset_index()


def curves(y: np.ndarray, p: np.ndarray, points: int = 200) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ROC and PR curves, thinned to about `points` rows each for plotting."""
    fpr, tpr, _ = skm.roc_curve(y, p)
    precision, recall, _ = skm.precision_recall_curve(y, p)
    roc = pd.DataFrame({"fpr": fpr, "tpr": tpr})
    pr = pd.DataFrame({"recall": recall, "precision": precision})
    thin = lambda df: df.iloc[np.unique(np.linspace(0, len(df) - 1, points).astype(int))]  # noqa: E731
    return thin(roc), thin(pr)


def confusion_table(y: np.ndarray, p: np.ndarray, threshold: float) -> pd.DataFrame:
    pred = (p >= threshold).astype(int)
    return pd.DataFrame({"actual": y.astype(int), "predicted": pred})


def baseline_proba(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    scored: list[tuple[np.ndarray, np.ndarray]],
    cfg: BaselineCfg,
    seed: int,
) -> list[np.ndarray]:
    """HistGradientBoosting on the same encoded split (categories as native categorical features)."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    x_train = np.hstack([train[0], train[1]]).astype(np.float64)
    n_cat = train[0].shape[1]
    categorical = [j for j in range(n_cat) if x_train[:, j].max() < 255]
    model = HistGradientBoostingClassifier(
        max_iter=cfg.max_iter,
        learning_rate=cfg.learning_rate,
        categorical_features=categorical or None,
        early_stopping=True,
        random_state=seed,
    )
    model.fit(x_train, train[2])
    return [model.predict_proba(np.hstack([c, n]).astype(np.float64))[:, 1] for c, n in scored]


def evaluate(
    frames: dict[str, pd.DataFrame],
    pre: Preprocessor,
    p_valid: np.ndarray,
    p_test: np.ndarray,
    params: Params,
    predict: Callable[[pd.DataFrame], np.ndarray] | None = None,
) -> dict[str, Any]:
    """Pure stage: every metric, table and curve of the network and the baseline on the test split;
    with `predict` (raw rows in, probabilities out: the network's scoring), its permutation importance."""
    label = params.data.label
    y_valid = frames["valid"][label].to_numpy()
    y_test = frames["test"][label].to_numpy()
    cfg = params.evaluate
    threshold = choose_threshold(y_valid, p_valid) if cfg.threshold == "f1" else float(cfg.threshold)
    test = classification_metrics(y_test, p_test, threshold)

    enc_train = encode(frames["train"], pre, label)
    enc_valid, enc_test = encode(frames["valid"], pre, label), encode(frames["test"], pre, label)
    b_valid, b_test = baseline_proba(enc_train, [enc_valid[:2], enc_test[:2]], cfg.baseline, params.train.seed)
    b_threshold = choose_threshold(y_valid, b_valid) if cfg.threshold == "f1" else float(cfg.threshold)
    baseline = classification_metrics(y_test, b_test, b_threshold)

    slices, gaps = slice_metrics(frames["test"], y_test, p_test, threshold, params.data.slices)
    roc, pr = curves(y_test, p_test)
    imp = cfg.importance
    importance = (
        permutation_importance(
            predict, frames["test"], y_test, params.data.features, imp.repeats, imp.seed, imp.max_rows
        )
        if predict is not None
        else None
    )
    return {
        "metrics": {
            "test": test,
            "baseline": baseline,
            "auc_gap_to_baseline": baseline["roc_auc"] - test["roc_auc"],
            "slices": gaps,
        },
        "slices": slices,
        "roc": roc,
        "pr": pr,
        "calibration": calibration_table(y_test, p_test, cfg.calibration_bins),
        "confusion": confusion_table(y_test, p_test, threshold),
        "confusion_matrix": skm.confusion_matrix(y_test, (p_test >= threshold).astype(int), labels=[0, 1]).tolist(),
        "importance": importance,
    }


def figures(result: dict[str, Any], history: pd.DataFrame, out: Path) -> list[Path]:
    """PNG plots for MLflow: ROC, PR, calibration, confusion matrix, loss curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    made = []

    def save(fig, name):
        path = out / name
        fig.tight_layout()
        fig.savefig(path, dpi=90)
        plt.close(fig)
        made.append(path)

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(result["roc"]["fpr"], result["roc"]["tpr"])
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(
        xlabel="false positive rate",
        ylabel="true positive rate",
        title=f"ROC (AUC {result['metrics']['test']['roc_auc']:.3f})",
    )
    save(fig, "roc.png")
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot(result["pr"]["recall"], result["pr"]["precision"])
    ax.set(xlabel="recall", ylabel="precision", title=f"PR (AP {result['metrics']['test']['pr_auc']:.3f})")
    save(fig, "pr.png")
    fig, ax = plt.subplots(figsize=(4, 4))
    cal = result["calibration"]
    ax.plot(cal["predicted"], cal["observed"], "o-")
    ax.plot([0, 1], [0, 1], "--", color="grey")
    ax.set(xlabel="predicted probability", ylabel="observed rate", title="calibration")
    save(fig, "calibration.png")
    fig, ax = plt.subplots(figsize=(4, 4))
    cm = np.array(result["confusion_matrix"])
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center")
    ax.set(xticks=[0, 1], yticks=[0, 1], xlabel="predicted", ylabel="actual", title="confusion matrix")
    save(fig, "confusion_matrix.png")
    if not history.empty:
        fig, ax = plt.subplots(figsize=(5, 4))
        for col in ("train_loss", "val_loss"):
            if col in history:
                ax.plot(history["epoch"], history[col], label=col)
        ax.set(xlabel="epoch", ylabel="log loss", title="loss curves")
        ax.legend()
        save(fig, "loss_curves.png")
    return made


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    ap.add_argument("--prepared", default=paths.PREPARED, type=Path)
    ap.add_argument("--model", default=paths.TRAIN_OUT, type=Path)
    ap.add_argument("--out", default=paths.EVAL_OUT, type=Path)
    ap.add_argument("--importance", default=paths.IMPORTANCE, type=Path)
    args = ap.parse_args(argv)
    params = load_params(args.params)

    import mlflow

    from models.packaged import load_module, predict_proba

    tracking.setup(params.register_.experiment)
    run = read_run(args.model)  # before any work: a run the store lost is a clear error, not a traceback
    frames, pre = read_prepared(args.prepared)
    module = load_module(args.model / "model.pt")
    probs = {name: predict_proba(module, *pre.transform(frames[name])) for name in ("valid", "test")}
    result = evaluate(
        frames, pre, probs["valid"], probs["test"], params, predict=lambda f: predict_proba(module, *pre.transform(f))
    )
    history = pd.read_csv(args.model / "history.csv")

    paths.PLOTS.mkdir(parents=True, exist_ok=True)
    for name in ("roc", "pr", "calibration", "confusion"):
        result[name].to_csv(paths.PLOTS / f"{name}.csv", index=False)
    history.to_csv(paths.PLOTS / "loss.csv", index=False)
    result["slices"].to_json(paths.SLICES, orient="records", indent=1)
    paths.METRICS.write_text(json.dumps(result["metrics"], indent=1))
    args.importance.parent.mkdir(parents=True, exist_ok=True)
    result["importance"].to_csv(args.importance, index=False)
    made = figures(result, history, args.out)

    with mlflow.start_run(run_id=run["run_id"]):
        flat = tracking.flatten({k: v for k, v in result["metrics"].items() if k != "slices"})
        numbers = {k: v for k, v in flat.items() if isinstance(v, float)}
        numbers.update({k: v for k, v in result["metrics"]["slices"].items() if isinstance(v, float)})
        for row in result["importance"].itertuples():  # one number per feature: compared across runs in MLflow
            if np.isfinite(row.importance):
                numbers[f"importance.{row.feature}"] = float(row.importance)
        for row in result["slices"].itertuples():
            numbers[f"slice.{row.column}.{row.value}.roc_auc"] = row.roc_auc
            numbers[f"slice.{row.column}.{row.value}.recall"] = row.recall
        # the network's own test figures also go on the logged model, measured on the test split's dataset
        test_set = dataset(frames["test"], "test", args.prepared, params.data.label)
        mlflow.log_input(test_set, context="testing")
        model_numbers = {k: v for k, v in numbers.items() if k.startswith("test.")}
        mlflow.log_metrics(model_numbers, model_id=run["model_id"], dataset=test_set)
        mlflow.log_metrics({k: v for k, v in numbers.items() if k not in model_numbers})  # one call each
        mlflow.set_tags({k: v for k, v in result["metrics"]["slices"].items() if isinstance(v, str)})
        for path in made:
            mlflow.log_artifact(str(path), artifact_path="plots")
        mlflow.log_artifact(str(paths.SLICES), artifact_path="evaluation")
        mlflow.log_artifact(str(paths.METRICS), artifact_path="evaluation")
        mlflow.log_artifact(str(args.importance), artifact_path="evaluation")
    test, base = result["metrics"]["test"], result["metrics"]["baseline"]
    top = result["importance"].head(5)
    print(
        "evaluate: permutation importance (ROC-AUC drop):",
        ", ".join(f"{r.feature} {r.importance:+.4f}" for r in top.itertuples()),
    )
    print(
        f"evaluate: test roc_auc={test['roc_auc']:.4f} brier={test['brier']:.4f} f1={test['f1']:.4f} | "
        f"baseline roc_auc={base['roc_auc']:.4f} | gap {result['metrics']['auc_gap_to_baseline']:+.4f}"
    )


if __name__ == "__main__":
    main()
