"""Stage 4, train: the Lightning network on the train split, early-stopped on the valid split."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from flightloop import paths, tracking
from flightloop.config import Params, load_params
from models.preprocess import Preprocessor

SPLITS = ("train", "valid", "test")


def encode(frame: pd.DataFrame, pre: Preprocessor, label: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    codes, nums = pre.transform(frame)
    return codes, nums, frame[label].to_numpy(dtype=np.float32)


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


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    ap.add_argument("--prepared", default=paths.PREPARED, type=Path)
    ap.add_argument("--out", default=paths.TRAIN_OUT, type=Path)
    args = ap.parse_args(argv)
    params = load_params(args.params)

    import torch
    from lightning.pytorch.loggers import MLFlowLogger

    from models.fit import fit

    frames, pre = read_prepared(args.prepared)
    if params.train.sample_frac < 1:
        frames["train"] = frames["train"].sample(frac=params.train.sample_frac, random_state=params.train.seed)
    splits = {name: encode(frames[name], pre, params.data.label) for name in ("train", "valid")}

    experiment_id = tracking.setup(params.register_.experiment)
    logger = MLFlowLogger(
        experiment_name=params.register_.experiment,
        tracking_uri=tracking.tracking_uri(),
        run_name=f"pipeline-{params.digest()[:8]}",
        tags=lineage_tags(params),
    )
    logger.log_hyperparams(tracking.flatten(params.as_dict()))

    args.out.mkdir(parents=True, exist_ok=True)
    module, history = fit(splits, pre.cardinalities, params.model, params.train, args.out, loggers=[logger])
    torch.save({"hparams": dict(module.hparams), "state_dict": module.state_dict()}, args.out / "model.pt")
    pd.DataFrame(history).to_csv(args.out / "history.csv", index=False)
    (args.out / "run.json").write_text(json.dumps({"run_id": logger.run_id, "experiment_id": experiment_id}))
    last = history[-1] if history else {}
    print(f"train: {len(history)} epochs, last val_auc={last.get('val_auc', float('nan')):.4f}, run {logger.run_id}")


if __name__ == "__main__":
    main()
