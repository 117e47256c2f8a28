import numpy as np
import pytest
import torch

from models.data import TensorBatches, to_tensors
from models.lit import TabularClassifier
from models.net import TabularNet, embedding_dim


@pytest.mark.parametrize("cards, n_num", [([4, 10], 3), ([], 5), ([3], 0)])
def test_net_outputs_one_logit_per_row(cards, n_num):
    net = TabularNet(cards, n_num, hidden=(8,), dropout=0.0)
    x_cat = torch.zeros((7, len(cards)), dtype=torch.long)
    assert net(x_cat, torch.randn(7, n_num)).shape == (7,)


def test_embedding_dim_bounded():
    assert embedding_dim(2, 16) >= 1 and embedding_dim(10_000, 16) == 16


@pytest.mark.parametrize("n, batch, shuffle", [(10, 3, True), (10, 5, False), (1, 4, True)])
def test_index_batches_cover_each_row_once(n, batch, shuffle):
    tensors = to_tensors(np.zeros((n, 1), np.int64), np.arange(n, dtype=np.float32)[:, None], np.ones(n))
    batches = list(TensorBatches(tensors, batch, shuffle=shuffle, seed=1))
    assert len(batches) == len(TensorBatches(tensors, batch, shuffle))
    seen = torch.cat([b[1][:, 0] for b in batches]).tolist()
    assert sorted(seen) == list(range(n)) and (shuffle or seen == list(range(n)))


def test_lightning_module_learns_a_separable_signal():
    import lightning as L

    from models.data import TensorDataModule

    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 2)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.float32)
    codes = np.zeros((600, 1), np.int64)
    splits = {s: to_tensors(codes, x, y) for s in ("train", "valid", "test")}
    module = TabularClassifier([2], 2, hidden=(16,), dropout=0.0, lr=1e-2)
    trainer = L.Trainer(
        max_epochs=15,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(module, datamodule=TensorDataModule(splits, 64))
    [result] = trainer.test(module, datamodule=TensorDataModule(splits, 64), verbose=False)
    assert result["test_auc"] > 0.95 and module.hparams.lr == 1e-2


# ---- the packaged model: tensors and JSON only, natural inputs ------------------------------------------


class Payload:
    """Unpickling this runs code: it writes `marker`."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('ran')",))


def tiny_scorer(tmp_path):
    """A Preprocessor fitted on 12 rows, an untrained network saved as the train stage saves it, and a Scorer."""
    import pandas as pd

    from models.packaged import Scorer, save_module
    from models.preprocess import Preprocessor

    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {"carrier": list("ABCABCABCABC"), "month": rng.integers(1, 13, 12), "temp": rng.normal(50, 10, 12)}
    )
    pre = Preprocessor.fit(frame, ("carrier",), ("month", "temp"))
    torch.manual_seed(0)
    module = TabularClassifier(pre.cardinalities, pre.n_numeric, hidden=(8,), dropout=0.0)
    save_module(module.hparams, module.state_dict(), tmp_path / "model.pt")
    pre.save(tmp_path / "preprocessor.json")
    (tmp_path / "meta.json").write_text('{"threshold": 0.5}')
    return Scorer.from_files(tmp_path / "preprocessor.json", tmp_path / "model.pt", tmp_path / "meta.json"), frame


def test_model_file_holds_only_tensors_and_json_values(tmp_path):
    import json

    from models.packaged import load_module

    scorer, frame = tiny_scorer(tmp_path)
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(saved) == {"hparams", "state_dict"} and json.loads(json.dumps(saved["hparams"])) == saved["hparams"]
    codes, nums = scorer.pre.transform(frame)
    again = load_module(tmp_path / "model.pt")
    x = (torch.as_tensor(codes), torch.as_tensor(nums))
    assert torch.equal(again(*x), scorer.net(*x))


def test_a_model_file_carrying_a_pickle_payload_is_refused_and_nothing_in_it_runs(tmp_path):
    from models.packaged import UnsafeModelError, load_module

    tiny_scorer(tmp_path)
    marker = tmp_path / "payload-ran"
    saved = torch.load(tmp_path / "model.pt", weights_only=True)
    torch.save({**saved, "extra": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnsafeModelError, match=r"models:/m/7: evil\.pt holds pickled objects.*refused"):
        load_module(tmp_path / "evil.pt", source="models:/m/7")
    assert not marker.exists()


def test_scorer_takes_int_or_float_numbers_and_names_a_numeric_column_holding_text(tmp_path):
    scorer, frame = tiny_scorer(tmp_path)
    as_float = scorer.predict_proba(frame.astype({"month": "float64"}))
    assert frame["month"].dtype == np.int64 and np.array_equal(scorer.predict_proba(frame), as_float)
    bad = frame.astype({"temp": object})
    bad.loc[3, "temp"] = "warm"
    with pytest.raises(ValueError, match=r"not numbers: temp \(e\.g\. 'warm'\)"):
        scorer.predict_proba(bad)


def test_pyfunc_is_loaded_from_code_and_its_signature_takes_int64_columns(tmp_path, monkeypatch):
    import mlflow

    from models.packaged import PYFUNC_CODE, signature

    scorer, frame = tiny_scorer(tmp_path)
    files = {"preprocessor": "preprocessor.json", "model": "model.pt", "meta": "meta.json"}
    arts = {k: str(tmp_path / f) for k, f in files.items()}
    mlflow.pyfunc.save_model(
        tmp_path / "pyfunc",
        python_model=str(PYFUNC_CODE),
        artifacts=arts,
        code_paths=[str(PYFUNC_CODE.parent)],
        signature=signature(["carrier"], ["month", "temp"]),
    )
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    model = mlflow.pyfunc.load_model(str(tmp_path / "pyfunc"))
    assert frame["month"].dtype == np.int64
    assert np.allclose(model.predict(frame).to_numpy(), scorer.predict_proba(frame))
    assert not list((tmp_path / "pyfunc").rglob("*.pkl"))


# ---- training length follows the data: a small table still gets enough updates ---------------------------


@pytest.mark.parametrize(
    ("rows", "overrides", "expected"),
    [
        (109_119, {}, (1024, 20)),  # the default data: 107 batches an epoch, floors not reached
        (1_078, {}, (54, 25)),  # a small table: 20 batches an epoch, 500 steps in the budget
        (3_000, {}, (150, 25)),
        (300, {}, (15, 25)),
        (1_078, {"min_batches": 1, "min_steps": 0}, (1024, 20)),  # floors off: as written
        (1_078, {"max_epochs": 40}, (54, 40)),  # a larger budget stands
    ],
)
def test_schedule_gives_a_small_table_smaller_batches_and_more_epochs(rows, overrides, expected):
    from flightloop.config import TrainCfg
    from models.fit import schedule

    assert schedule(rows, TrainCfg(**overrides)) == expected


def test_the_plateau_schedule_halves_the_rate_on_validation_loss():
    module = TabularClassifier([2], 2, lr=0.01, lr_schedule="plateau", lr_patience=1)
    config = module.configure_optimizers()
    scheduler = config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["monitor"] == "val_loss"
    for loss in (1.0, 1.0, 1.0):  # no improvement for more than lr_patience epochs
        scheduler.step(loss)
    assert config["optimizer"].param_groups[0]["lr"] == pytest.approx(0.005)
    assert isinstance(TabularClassifier([2], 2, lr_schedule="none").configure_optimizers(), torch.optim.Adam)
