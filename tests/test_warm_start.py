"""Warm-start retraining (policy.warm_start): the retrain starts from the champion's weights and keeps its
preprocessing (tasks/prepare.py, tasks/train.py, models/fit.py init_state)."""

import numpy as np
import pandas as pd
import pytest

from flightloop.config import load_params
from models.packaged import Scorer, save_module
from models.preprocess import Preprocessor
from tasks.prepare import prepare
from tasks.train import fit_prepared
from tests.conftest import REPO

SMALL = {  # a tiny network on CPU, the table's length as written
    "data.categorical": ["carrier"],
    "data.numeric": ["month", "temp"],
    "data.slices": ["carrier"],
    "gate.slices": ["carrier"],
    "monitoring.exclude_features": ["month"],
    "model.hidden": [8],
    "model.dropout": 0.0,
    "train.accelerator": "cpu",
    "train.batch_size": 64,
    "train.min_batches": 1,
    "train.min_steps": 0,
}


def _frames() -> dict[str, pd.DataFrame]:
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 400), ("valid", 200)):
        temp = rng.normal(50, 10, n)
        out[split] = pd.DataFrame(
            {
                "carrier": rng.choice(list("ABC"), n),
                "month": rng.integers(1, 13, n).astype(float),
                "temp": temp,
                "late": (temp + rng.normal(0, 5, n) > 50).astype(int),
            }
        )
    return out


@pytest.fixture
def champion(tmp_path):
    """A model trained a few epochs, saved as a packaged model's artifacts folder (model.pt, preprocessor)."""
    frames = _frames()
    pre = Preprocessor.fit(frames["train"], ("carrier",), ("month", "temp"))
    params = load_params(REPO / "params.yaml", overrides={**SMALL, "train.max_epochs": 3, "train.lr": 0.01})
    module, _ = fit_prepared(frames, pre, params, tmp_path / "fit")
    folder = tmp_path / "champion"
    folder.mkdir()
    save_module(module.hparams, module.state_dict(), folder / "model.pt")
    pre.save(folder / "preprocessor.json")
    (folder / "meta.json").write_text("{}")
    scorer = Scorer.from_files(folder / "preprocessor.json", folder / "model.pt", folder / "meta.json")
    return folder, scorer, frames


def _scores_after_a_tiny_step(folder, frames, tmp_path, warm: bool) -> tuple[np.ndarray, np.ndarray]:
    # lr 1e-9 for one epoch: the weights the training started from, to float rounding
    extra = {"train.init_from": str(folder)} if warm else {}
    params = load_params(REPO / "params.yaml", overrides={**SMALL, "train.max_epochs": 1, "train.lr": 1e-9, **extra})
    pre = Preprocessor.load(folder / "preprocessor.json")
    module, _ = fit_prepared(frames, pre, params, tmp_path / ("warm" if warm else "cold"))
    return Scorer(pre, module.net.eval(), {}).predict_proba(frames["valid"]), module


def test_a_warm_start_starts_from_the_champions_weights(champion, tmp_path):
    folder, scorer, frames = champion
    before = scorer.predict_proba(frames["valid"])
    warm, _ = _scores_after_a_tiny_step(folder, frames, tmp_path, warm=True)
    np.testing.assert_allclose(warm, before, atol=1e-5)
    cold, _ = _scores_after_a_tiny_step(folder, frames, tmp_path, warm=False)
    assert np.abs(cold - before).max() > 1e-2  # the control: a fresh start is another model


def test_a_warm_start_refuses_a_model_of_another_shape(champion, tmp_path):
    folder, _, frames = champion
    params = load_params(
        REPO / "params.yaml", overrides={**SMALL, "model.hidden": [16], "train.init_from": str(folder)}
    )
    pre = Preprocessor.load(folder / "preprocessor.json")
    with pytest.raises(RuntimeError, match="size mismatch"):
        fit_prepared(frames, pre, params, tmp_path / "other")


def test_prepare_keeps_the_preprocessor_it_is_given(flights_tiny, weather_tiny, planes_tiny):
    params = load_params(
        REPO / "params.yaml",
        overrides={
            "split.train": ["2013-01", "2013-01"],
            "split.valid": ["2013-02", "2013-02"],
            "split.test": ["2013-03", "2013-03"],
        },
    )
    tables = {"weather": weather_tiny, "planes": planes_tiny}
    fitted = prepare(flights_tiny, tables, params)[1]
    given = Preprocessor.fit(
        pd.DataFrame({c: [] for c in params.data.features}).astype({c: float for c in params.data.numeric}),
        tuple(params.data.categorical),
        tuple(params.data.numeric),
    )
    assert prepare(flights_tiny, tables, params, given)[1] is given
    assert fitted is not given and fitted.median["temp"] == 31.0  # fitted on January's rows (temp 30, 31, 32)
