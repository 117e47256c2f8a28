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
