"""LightningModule: loss, metrics, optimiser; one shared step for train/val/test."""

from __future__ import annotations

import lightning as L
import torch
from torch.nn import functional as F
from torchmetrics.classification import BinaryAUROC

from models.net import TabularNet


class TabularClassifier(L.LightningModule):
    def __init__(
        self,
        cardinalities: list[int],
        n_numeric: int,
        max_embedding_dim: int = 16,
        hidden: tuple[int, ...] = (128, 64),
        dropout: float = 0.2,
        lr: float = 2e-3,
        weight_decay: float = 0.0,
        lr_schedule: str = "none",
        lr_patience: int = 1,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = TabularNet(cardinalities, n_numeric, max_embedding_dim, tuple(hidden), dropout)
        self.auroc = torch.nn.ModuleDict({s: BinaryAUROC() for s in ("train_", "val_", "test_")})

    def forward(self, x_cat: torch.Tensor, x_num: torch.Tensor) -> torch.Tensor:
        return self.net(x_cat, x_num)

    def _step(self, batch, stage: str) -> torch.Tensor:
        x_cat, x_num, y = batch
        logits = self(x_cat, x_num).float()
        loss = F.binary_cross_entropy_with_logits(logits, y)
        auroc = self.auroc[f"{stage}_"]
        auroc.update(logits.detach(), y.long())
        on_step = stage == "train"
        # under DDP each rank sees its shard: the epoch's loss is summed over ranks (rows-weighted), so early
        # stopping, the checkpoint and the lr schedule read the same value on every rank; the AUROC metric
        # gathers all ranks' scores itself. With one process both are no-ops.
        self.log(
            f"{stage}_loss", loss, on_step=False, on_epoch=True, prog_bar=on_step, batch_size=len(y), sync_dist=True
        )
        self.log(f"{stage}_auc", auroc, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(y))
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._step(batch, "test")

    def predict_step(self, batch, batch_idx):
        return torch.sigmoid(self(batch[0], batch[1]).float())

    def configure_optimizers(self):
        optimiser = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "none":
            return optimiser
        if self.hparams.lr_schedule != "plateau":
            raise ValueError(f"unknown lr_schedule {self.hparams.lr_schedule!r}: plateau or none")
        # halve the rate when validation loss stalls: late epochs refine instead of bouncing around
        plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, factor=0.5, patience=self.hparams.lr_patience)
        return {"optimizer": optimiser, "lr_scheduler": {"scheduler": plateau, "monitor": "val_loss"}}
