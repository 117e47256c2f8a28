"""The packaged inference model: raw feature rows in, delay probability out (preprocessing inside)."""

from __future__ import annotations

import json
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
NET_KEYS = ("cardinalities", "n_numeric", "max_embedding_dim", "hidden", "dropout")


def load_module(path: Path | str) -> TabularNet:
    """The trained network alone (no Lightning needed), from the train stage's model.pt."""
    saved = torch.load(path, map_location="cpu", weights_only=False)
    hp = saved["hparams"]
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


class Scorer:
    """Preprocessor + network; scores a DataFrame of raw feature columns."""

    def __init__(self, pre: Preprocessor, net: TabularNet, meta: dict[str, Any]):
        self.pre, self.net, self.meta = pre, net, meta
        self.features = list(pre.categorical + pre.numeric)

    @classmethod
    def from_files(cls, preprocessor: Path | str, model: Path | str, meta: Path | str) -> Scorer:
        return cls(Preprocessor.load(Path(preprocessor)), load_module(model), json.loads(Path(meta).read_text()))

    def predict_proba(self, frame: pd.DataFrame) -> np.ndarray:
        missing = [c for c in self.features if c not in frame.columns]
        if missing:
            raise ValueError(f"input lacks feature columns: {missing}")
        return predict_proba(self.net, *self.pre.transform(frame)).astype(np.float64)


class DelayModel(PythonModel):
    """MLflow pyfunc wrapper around Scorer; artifacts: preprocessor, model, meta."""

    def load_context(self, context) -> None:
        a = context.artifacts
        self.scorer = Scorer.from_files(a["preprocessor"], a["model"], a["meta"])

    def predict(self, context, model_input, params=None):
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        return pd.Series(self.scorer.predict_proba(frame), name="probability")


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


def scorer_from(folder: Path) -> Scorer:
    """The Scorer of a downloaded pyfunc folder (no pyfunc on the hot path)."""
    art = artifacts_of(folder)
    return Scorer.from_files(art / "preprocessor.json", art / "model.pt", art / "meta.json")


def load_scorer(name: str, version: int, dst: Path | str | None = None) -> Scorer:
    """A registered version's preprocessor + network as a Scorer."""
    return scorer_from(model_dir(name, version, dst))


def load_with_reference(name: str, version: int, dst: Path | str | None = None) -> tuple[Scorer, pd.DataFrame]:
    """A registered version's Scorer and the rows it was trained on (its drift reference), as logged with it."""
    folder = model_dir(name, version, dst)
    reference = artifacts_of(folder) / REFERENCE_FILE
    if not reference.exists():
        raise FileNotFoundError(
            f"models:/{name}/{version} carries no {REFERENCE_FILE} (registered before references were logged "
            "with the model): retrain it (`dvc repro` or the training flow) to monitor it"
        )
    return scorer_from(folder), pd.read_parquet(reference)
