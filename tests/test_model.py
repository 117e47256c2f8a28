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
