"""Every default input and output path, in one place; dvc.yaml names the same paths."""

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PARAMS = Path("params.yaml")

DATA = Path("data")
RAW = DATA / "raw"  # ingest: raw batches + reference tables
RAW_BATCHES = RAW / "batches"
RAW_REFERENCE = RAW / "reference"
INCOMING = DATA / "incoming"  # new batch files land here (ingest flow, replay)
VALIDATED = DATA / "validated"  # validate: batches that passed
QUARANTINE = DATA / "quarantine"  # rejected batches with their reports, never trained on
PREPARED = DATA / "prepared"  # prepare: feature frames per split + fitted preprocessor

ARTIFACTS = Path("artifacts")
TRAIN_OUT = ARTIFACTS / "train"  # train: network weights, history, MLflow run id
EVAL_OUT = ARTIFACTS / "evaluate"  # evaluate: figures, baseline

REPORTS = Path("reports")
VALIDATION_REPORT = REPORTS / "validation.json"
METRICS = REPORTS / "metrics.json"
SLICES = REPORTS / "slices.json"
IMPORTANCE = REPORTS / "importance.csv"  # evaluate: permutation importance of each feature on test
PLOTS = REPORTS / "plots"
REGISTERED = REPORTS / "registered.json"
