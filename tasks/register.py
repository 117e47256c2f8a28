"""Stage 6, register: log the packaged pyfunc (preprocessing inside) and register a new version.

The first version becomes `champion`; later ones get `challenger` (the gate decides promotion)."""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd

from flightloop import paths, tracking
from flightloop.config import Params, load_params
from tasks.train import read_prepared, read_run

CHAMPION, CHALLENGER = "champion", "challenger"


def initial_alias(existing_aliases: set[str]) -> str:
    """The alias a freshly registered version gets."""
    return CHALLENGER if CHAMPION in existing_aliases else CHAMPION


def input_example(frame: pd.DataFrame, features: tuple[str, ...], rows: int = 3) -> pd.DataFrame:
    return frame[list(features)].head(rows).reset_index(drop=True)


def log_and_register(
    params: Params,
    frames: dict[str, pd.DataFrame],
    run_id: str,
    model_id: str,
    model_dir: Path,
    prepared: Path,
    metrics: dict[str, Any],
) -> dict[str, Any]:
    """Log the pyfunc into the train stage's logged model (an output of its run), register it, set alias and tags."""
    import mlflow
    from mlflow.entities import LoggedModelOutput
    from mlflow.tracking import MlflowClient

    from models.packaged import CALIBRATION_FILE, PYFUNC_CODE, REFERENCE_FILE, Scorer, signature

    name = params.register_.model_name
    features = params.data.features
    meta = {
        "features": list(features),
        "categorical": list(params.data.categorical),
        "numeric": list(params.data.numeric),
        "threshold": metrics["test"]["threshold"],
        "label": params.data.label,
        "key": list(params.data.key),
        "time_column": params.data.time_column,
        "train_window": list(params.split.train),
        "test_metrics": metrics["test"],
    }
    example = input_example(frames["test"], features)
    with tempfile.TemporaryDirectory() as tmp:
        meta_path = Path(tmp) / "meta.json"
        meta_path.write_text(json.dumps(meta, indent=1))
        # the rows it was trained on travel with it: monitoring's drift reference for as long as it is live
        reference = Path(tmp) / REFERENCE_FILE
        frames["train"][[params.data.time_column, *features]].to_parquet(reference, index=False)
        # ... and its labelled test rows: the calibrator of label-free performance estimates (monitoring/estimate.py)
        calibration = Path(tmp) / CALIBRATION_FILE
        frames["test"][[params.data.time_column, *features, params.data.label]].to_parquet(calibration, index=False)
        artifacts = {
            "preprocessor": str(prepared / "preprocessor.json"),
            "model": str(model_dir / "model.pt"),
            "meta": str(meta_path),
            "reference": str(reference),
            "calibration": str(calibration),
        }
        # the files must load (tensors and JSON only) and score before anything is logged
        Scorer.from_files(artifacts["preprocessor"], artifacts["model"], meta_path).predict_proba(example)
        # Into the model the train stage made (evaluate linked the test metrics to it), outside the run: inside
        # it MLflow would copy every step-0 run metric onto the model again and clash with those links.
        # models-from-code: the pyfunc is PYFUNC_CODE, run when loaded; no pickled PythonModel in the store.
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(PYFUNC_CODE),
            artifacts=artifacts,
            code_paths=["models"],
            signature=signature(list(params.data.categorical), list(params.data.numeric)),
            input_example=example,
            pip_requirements=_requirements(),
            model_id=model_id,
        )
    client = MlflowClient()
    outputs = client.get_run(run_id).outputs
    if model_id not in {o.model_id for o in (outputs.model_outputs if outputs else [])}:  # once: a rerun adds none
        client.log_outputs(run_id, models=[LoggedModelOutput(model_id, step=0)])  # the run lists it as its model
    try:
        existing = set(client.get_registered_model(name).aliases)
    except mlflow.exceptions.MlflowException:
        existing = set()
    version = mlflow.register_model(info.model_uri, name)
    alias = initial_alias(existing)
    client.set_registered_model_alias(name, alias, version.version)
    run = client.get_run(run_id)
    lineage = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    for key, value in {
        **lineage,
        "run_id": run_id,
        "initial_alias": alias,
        "test_roc_auc": f"{metrics['test']['roc_auc']:.4f}",
    }.items():
        client.set_model_version_tag(name, version.version, key, value)
    return {
        "model_name": name,
        "version": int(version.version),
        "alias": alias,
        "run_id": run_id,
        "model_uri": f"models:/{name}/{version.version}",
        "data_hash": lineage.get("data_hash", "unknown"),
    }


def _requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "torch", "pandas", "numpy")]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default=paths.PARAMS, type=Path)
    ap.add_argument("--prepared", default=paths.PREPARED, type=Path)
    ap.add_argument("--model", default=paths.TRAIN_OUT, type=Path)
    ap.add_argument("--metrics", default=paths.METRICS, type=Path)
    ap.add_argument("--out", default=paths.REGISTERED, type=Path)
    args = ap.parse_args(argv)
    params = load_params(args.params)
    tracking.setup(params.register_.experiment)
    run = read_run(args.model)
    frames, _ = read_prepared(args.prepared)
    metrics = json.loads(args.metrics.read_text())
    result = log_and_register(params, frames, run["run_id"], run["model_id"], args.model, args.prepared, metrics)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"register: {result['model_name']} version {result['version']} -> @{result['alias']}")


if __name__ == "__main__":
    main()
