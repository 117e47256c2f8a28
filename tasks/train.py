"""Stage 4, train: the Lightning network on the train split, early-stopped on the valid split."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flightloop import paths, tracking
from flightloop.config import Params, load_params
from models.preprocess import Preprocessor

SPLITS = ("train", "valid", "test")
# A DVC output of this stage kept inside the embedded MLflow store's artifact folder: losing the store
# (`make clean`, a deleted mlartifacts/) deletes it, so `dvc repro` sees this stage changed and re-trains
# into the new store, instead of keeping outputs that name runs the store no longer has. Being uncached
# (`cache: false`), it also keeps the stage out of DVC's run-cache, which would restore such outputs from
# an older run (DVC saves no run-cache entry for a stage with an uncached out that is not a metric or plot).
STORE_MARK = tracking.DEFAULT_ARTIFACTS / "pipeline" / "train.json"
SYSTEM_METRICS_INTERVAL_S = "1"  # MLflow samples every 10 s by default: nothing at all for a short training


def encode(frame: pd.DataFrame, pre: Preprocessor, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    codes, nums = pre.transform(frame)
    return codes, nums, frame[label].to_numpy(dtype=np.float32)


def training_frames(frames: dict[str, pd.DataFrame], params: Params) -> dict[str, pd.DataFrame]:
    """The prepared splits the stage trains on: a seeded `train.sample_frac` of train (all of it at 1)."""
    if params.train.sample_frac >= 1:
        return frames
    return {**frames, "train": frames["train"].sample(frac=params.train.sample_frac, random_state=params.train.seed)}


def fit_prepared(
    frames: dict[str, pd.DataFrame], pre: Preprocessor, params: Params, out_dir: Path, loggers: list[Any] | bool = False
):  # noqa: ANN201 - (TabularClassifier, history), kept lazy: importing this module must not import torch
    """The stage's training on prepared splits (after `training_frames`): encode train and valid, `fit()`.
    The train stage and the replay's references (flows/references.py) train through this one function."""
    from models.fit import fit

    splits = {name: encode(frames[name], pre, params.data.label) for name in ("train", "valid")}
    start = warm_state(Path(params.train.init_from)) if params.train.init_from else None
    return fit(splits, pre.cardinalities, params.model, params.train, out_dir, loggers=loggers, init_state=start)


def warm_state(folder: Path) -> dict[str, Any]:
    """The network weights of a packaged model's artifacts folder (model.pt: tensors only), to start from."""
    from models.packaged import load_module

    return load_module(folder / "model.pt", source=str(folder)).state_dict()


def read_prepared(folder: Path) -> tuple[dict[str, pd.DataFrame], Preprocessor]:
    frames = {name: pd.read_parquet(folder / f"{name}.parquet") for name in SPLITS}
    return frames, Preprocessor.load(folder / "preprocessor.json")


def lineage_tags(params: Params) -> dict[str, str]:
    """Tags that lead a model back to its code, data version and config."""
    return {
        "git_commit": tracking.git_commit(),
        "data_hash": tracking.dvc_hash(paths.VALIDATED),
        "prepared_hash": tracking.dvc_hash(paths.PREPARED),
        "params_hash": params.digest(),
        **tracking.extra_tags(),
    }


def dataset(frame: pd.DataFrame, split: str, prepared: Path, label: str):
    """A prepared split as an MLflow dataset whose digest is the DVC hash of data/prepared (its data version)."""
    import mlflow.data

    md5 = tracking.dvc_hash(prepared)
    return mlflow.data.from_pandas(
        frame,
        source=str((prepared / f"{split}.parquet").resolve()),
        targets=label,
        name=f"{prepared.name}/{split}",
        digest=None if md5 == "unknown" else md5,  # outside DVC: MLflow hashes the rows
    )


def read_run(model_dir: Path) -> dict[str, Any]:
    """The train stage's run.json, checked against the tracking store: a clear error when the store lost it."""
    import mlflow

    run = json.loads((model_dir / "run.json").read_text())
    if "model_id" not in run:
        raise SystemExit(
            f"error: {model_dir / 'run.json'} predates MLflow logged models (no model_id). "
            "Re-train with: dvc repro --force --downstream train"
        )
    try:
        mlflow.MlflowClient().get_run(run["run_id"])
    except mlflow.exceptions.MlflowException:
        raise SystemExit(
            f"error: {model_dir / 'run.json'} names MLflow run {run['run_id']}, which the tracking store "
            f"{tracking.tracking_uri()} does not have (the store was reset or lost since `train` ran). "
            "Re-train into this store with: dvc repro --force --downstream train"
        ) from None
    return run


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    ap.add_argument("--prepared", default=paths.PREPARED, type=Path)
    ap.add_argument("--out", default=paths.TRAIN_OUT, type=Path)
    ap.add_argument("--store-mark", default=STORE_MARK, type=Path)
    args = ap.parse_args(argv)
    params = load_params(args.params)

    import mlflow
    from lightning.pytorch.loggers import MLFlowLogger

    from models.packaged import save_module

    frames, pre = read_prepared(args.prepared)
    frames = training_frames(frames, params)

    experiment_id = tracking.setup(params.register_.experiment)
    os.environ.setdefault("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", SYSTEM_METRICS_INTERVAL_S)
    hyper, tags = tracking.flatten(params.as_dict()), lineage_tags(params)
    with mlflow.start_run(
        experiment_id=experiment_id,
        run_name=f"pipeline-{params.digest()[:8]}",
        tags=tags,
        log_system_metrics=True,
    ) as active:
        run_id = active.info.run_id
        logger = MLFlowLogger(
            experiment_name=params.register_.experiment, tracking_uri=tracking.tracking_uri(), run_id=run_id
        )
        logger.log_hyperparams(hyper)
        for split, context in (("train", "training"), ("valid", "validation")):
            mlflow.log_input(
                dataset(frames[split], split, args.prepared, params.data.label),
                context=context,
                tags={"rows": str(len(frames[split])), "sample_frac": str(params.train.sample_frac)},
            )
        args.out.mkdir(parents=True, exist_ok=True)
        module, history = fit_prepared(frames, pre, params, args.out, loggers=[logger])
        save_module(module.hparams, module.state_dict(), args.out / "model.pt")
        pd.DataFrame(history).to_csv(args.out / "history.csv", index=False)
        # the model this run made, in MLflow 3's model-centric record: evaluate links its test metrics to it
        # and register logs the packaged pyfunc into it
        logged = mlflow.initialize_logged_model(
            name="model",
            source_run_id=run_id,
            experiment_id=experiment_id,
            params={k: str(v) for k, v in hyper.items() if k.startswith(("model.", "train."))},
            tags=tags,
        )
    record = {"run_id": run_id, "experiment_id": experiment_id, "model_id": logged.model_id}
    (args.out / "run.json").write_text(json.dumps(record))
    args.store_mark.parent.mkdir(parents=True, exist_ok=True)
    # the same text for every run (so a flow's run workspace and `dvc repro` lock the same hash): its
    # presence is what counts
    args.store_mark.write_text(
        json.dumps({"experiment": params.register_.experiment, "marks": "this pipeline's runs are in this store"})
    )
    last = history[-1] if history else {}
    print(f"train: {len(history)} epochs, last val_auc={last.get('val_auc', float('nan')):.4f}, run {run_id}")


if __name__ == "__main__":
    main()
