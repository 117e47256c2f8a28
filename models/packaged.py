"""The packaged inference model: raw feature rows in, delay probability out (preprocessing inside).

Nothing on the load path unpickles: model.pt loads with `torch.load(weights_only=True)` (tensors and
plain values only), the preprocessor and meta are JSON, and the MLflow pyfunc is logged as code
(`PYFUNC_CODE`, MLflow's models-from-code), not as a pickled PythonModel instance."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from models.net import TabularNet
from models.preprocess import Preprocessor

try:  # the class below is an MLflow pyfunc; importing this module must not require MLflow
    from mlflow.pyfunc import PythonModel
except ImportError:  # pragma: no cover
    PythonModel = object  # type: ignore[misc,assignment]

REFERENCE_FILE = "reference.parquet"  # the training rows, logged with the model for drift checks
# its labelled test rows (never trained on), logged with it to calibrate its scores for label-free estimates
CALIBRATION_FILE = "calibration.parquet"
NET_KEYS = ("cardinalities", "n_numeric", "max_embedding_dim", "hidden", "dropout")
PYFUNC_CODE = Path(__file__).with_name("pyfunc_model.py")  # the pyfunc as code: mlflow.pyfunc.log_model(python_model=)
REGISTRY_META = "registered_model_meta"  # MLflow writes the model name and version here on download


class UnsafeModelError(ValueError):
    """A model file that holds more than tensors and plain values; it is refused, nothing in it runs."""


def plain_hparams(hparams: dict[str, Any]) -> dict[str, Any]:
    """Hyperparameters as JSON values only (what model.pt may hold besides tensors)."""
    return json.loads(json.dumps({k: list(v) if isinstance(v, tuple) else v for k, v in dict(hparams).items()}))


def save_module(hparams: dict[str, Any], state_dict: dict[str, torch.Tensor], path: Path | str) -> None:
    """model.pt: the state dict's tensors and JSON-able hyperparameters, nothing else."""
    torch.save({"hparams": plain_hparams(hparams), "state_dict": dict(state_dict)}, path)


def load_module(path: Path | str, source: str | None = None) -> TabularNet:
    """The trained network alone (no Lightning needed), from the train stage's model.pt; tensors only."""
    where = f"{source}: {Path(path).name}" if source else str(path)
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:  # weights_only refuses any global it does not know, before running it
        reason = str(exc).strip().splitlines()
        hint = next((ln.strip() for ln in reason if "Unsupported global" in ln or "GLOBAL" in ln), reason[0][:300])
        raise UnsafeModelError(
            f"{where} holds pickled objects, not only tensors and plain values ({hint}): refused, nothing in it was run"
        ) from None
    if not isinstance(saved, dict) or not isinstance(saved.get("hparams"), dict) or "state_dict" not in saved:
        raise UnsafeModelError(f"{where} is not a train-stage model file (expected keys 'hparams' and 'state_dict')")
    hp = saved["hparams"]
    if missing := [k for k in NET_KEYS if k not in hp]:
        raise UnsafeModelError(f"{where}: hparams lack {missing}")
    net = TabularNet(**{k: (tuple(hp[k]) if k == "hidden" else hp[k]) for k in NET_KEYS})
    state = {k.removeprefix("net."): v for k, v in saved["state_dict"].items() if k.startswith("net.")}
    net.load_state_dict(state)
    return net.eval()


@torch.no_grad()
def predict_proba(net: torch.nn.Module, codes: np.ndarray, nums: np.ndarray, batch: int = 65536) -> np.ndarray:
    """Delay probabilities on CPU in large slices (inference needs neither a Trainer nor Lightning)."""
    net = net.eval().cpu()
    x_cat, x_num = torch.as_tensor(codes, dtype=torch.long), torch.as_tensor(nums, dtype=torch.float32)
    out = [torch.sigmoid(net(x_cat[i : i + batch], x_num[i : i + batch]).float()) for i in range(0, len(codes), batch)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def non_numeric(frame: pd.DataFrame, columns: list[str]) -> dict[str, Any]:
    """Numeric feature columns holding something that is not a number or missing: column -> first such value."""
    bad = {}
    for col in columns:
        values = frame[col]
        if pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_complex_dtype(values):
            continue  # int, float, bool or nullable numbers: all score alike
        coerced = pd.to_numeric(values, errors="coerce")
        wrong = coerced.isna() & values.notna()
        if wrong.any():
            bad[col] = values[wrong].iloc[0]
    return bad


class Scorer:
    """Preprocessor + network; scores a DataFrame of raw feature columns."""

    def __init__(self, pre: Preprocessor, net: TabularNet, meta: dict[str, Any]):
        self.pre, self.net, self.meta = pre, net, meta
        self.features = list(pre.categorical + pre.numeric)

    @classmethod
    def from_files(
        cls, preprocessor: Path | str, model: Path | str, meta: Path | str, source: str | None = None
    ) -> Scorer:
        net = load_module(model, source)
        return cls(Preprocessor.load(Path(preprocessor)), net, json.loads(Path(meta).read_text()))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise ValueError(f"input lacks feature columns: {missing}")
        if bad := non_numeric(frame, list(self.pre.numeric)):
            shown = ", ".join(f"{c} (e.g. {v!r})" for c, v in bad.items())
            raise ValueError(f"numeric feature columns hold values that are not numbers: {shown}")
        return predict_proba(self.net, *self.pre.transform(frame)).astype(np.float64)


class DelayModel(PythonModel):
    """MLflow pyfunc around Scorer; artifacts: preprocessor, model, meta. Logged as code (PYFUNC_CODE)."""

    def load_context(self, context) -> None:
        a = context.artifacts
        self.scorer = Scorer.from_files(a["preprocessor"], a["model"], a["meta"])

    def predict(self, context, model_input, params=None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return pd.Series(self.scorer.predict_proba(frame), name="probability")


def signature(categorical: list[str], numeric: list[str]):
    """The pyfunc's input schema: categories are strings; a numeric field takes ints or floats alike (MLflow's
    `double` refuses int64 columns), so it is `any` here and Scorer checks that its values are numbers."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import AnyType, ColSpec, Schema

    inputs = [ColSpec("string", c) for c in categorical] + [ColSpec(AnyType(), c) for c in numeric]
    return ModelSignature(inputs=Schema(inputs), outputs=Schema([ColSpec("double", "probability")]))


# ---- a registered version's files (MLflow artifact store -> local folder) ------------------------------


def model_dir(name: str, version: int, dst: Path | str | None = None) -> Path:
    """Download a version's pyfunc folder once."""
    import os
    import tempfile

    import mlflow

    from flightloop import tracking

    mlflow.set_tracking_uri(tracking.tracking_uri())
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a bar per download floods flow logs
    dst = Path(dst or tempfile.mkdtemp(prefix=f"{name}-v{version}-"))
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)))


def artifacts_of(folder: Path) -> Path:
    """The artifacts folder inside a downloaded pyfunc folder."""
    return next(Path(folder).rglob("artifacts/meta.json")).parent


def source_of(folder: Path) -> str | None:
    """`models:/<name>/<version>` of a downloaded folder (from MLflow's registered_model_meta), if known."""
    import yaml

    found = next(Path(folder).rglob(REGISTRY_META), None)
    if found is None:
        return None
    meta = yaml.safe_load(found.read_text()) or {}
    return f"models:/{meta.get('model_name')}/{meta.get('model_version')}"


def scorer_from(folder: Path) -> Scorer:
    """The Scorer of a downloaded pyfunc folder (no pyfunc on the hot path)."""
    art = artifacts_of(folder)
    return Scorer.from_files(art / "preprocessor.json", art / "model.pt", art / "meta.json", source_of(folder))


def load_scorer(name: str, version: int, dst: Path | str | None = None) -> Scorer:
    """A registered version's preprocessor + network as a Scorer."""
    return scorer_from(model_dir(name, version, dst))


def load_with_reference(name: str, version: int, dst: Path | str | None = None) -> tuple[Scorer, pd.DataFrame]:
    """A registered version's Scorer and the rows it was trained on (its drift reference), as logged with it."""
    scorer, reference, _ = load_for_monitoring(name, version, dst)
    return scorer, reference


def load_for_monitoring(
    name: str, version: int, dst: Path | str | None = None
) -> tuple[Scorer, pd.DataFrame, pd.DataFrame | None]:
    """A registered version's Scorer, its drift reference (training rows) and its labelled test rows that
    calibrate its scores (None for a version logged before they were), from one download."""
    folder = model_dir(name, version, dst)
    reference = artifacts_of(folder) / REFERENCE_FILE
    if not reference.exists():
        raise FileNotFoundError(
            f"models:/{name}/{version} carries no {REFERENCE_FILE} (registered before references were logged "
            "with the model): retrain it (`dvc repro` or the training flow) to monitor it"
        )
    calibration = artifacts_of(folder) / CALIBRATION_FILE
    labelled = pd.read_parquet(calibration) if calibration.exists() else None
    return scorer_from(folder), pd.read_parquet(reference), labelled
