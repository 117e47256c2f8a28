"""Data held as tensors (on the training device) and batched by index, not row by row."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch


class TensorBatches:
    """Iterable of (x_cat, x_num, y) mini-batches sliced from whole tensors by a permutation.

    With `world_size` W > 1 this is rank `rank`'s shard: training (shuffle) draws the same seeded permutation
    on every rank each epoch, pads it by wrapping to a multiple of W (at most W - 1 rows repeated, as
    torch's DistributedSampler does) and takes every W-th row from `rank`, so the ranks' shards are disjoint
    slices of one permutation, equal in length (equal step counts: no rank waits on a gradient sync that
    never comes). Evaluation takes rows rank::W unpadded (exact metrics; its only sync is at epoch end)."""

    def __init__(
        self,
        tensors: tuple[torch.Tensor, ...],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside a world of {world_size} processes")
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.rank, self.world_size = rank, world_size
        self.generator = torch.Generator().manual_seed(seed)
        self.n = len(tensors[0])

    def _rows(self) -> int:
        """Rows this rank takes an epoch."""
        if self.shuffle:
            return -(-self.n // self.world_size) if self.n else 0
        return len(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return (self._rows() + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        device = self.tensors[0].device
        if self.shuffle:
            order = torch.randperm(self.n, generator=self.generator).to(device)
            if self.world_size > 1:
                padded = order.repeat(-(-self._rows() * self.world_size // max(self.n, 1)))
                order = padded[: self._rows() * self.world_size][self.rank :: self.world_size]
            for start in range(0, len(order), self.batch_size):
                idx = order[start : start + self.batch_size]
                yield tuple(t[idx] for t in self.tensors)
        elif self.world_size > 1:
            rows = torch.arange(self.rank, self.n, self.world_size, device=device)
            for start in range(0, len(rows), self.batch_size):
                idx = rows[start : start + self.batch_size]
                yield tuple(t[idx] for t in self.tensors)
        else:
            for start in range(0, self.n, self.batch_size):
                yield tuple(t[start : start + self.batch_size] for t in self.tensors)


def to_tensors(codes: np.ndarray, nums: np.ndarray, y: np.ndarray | None, device: str | torch.device = "cpu"):
    y = np.zeros(len(codes), dtype=np.float32) if y is None else y.astype(np.float32)
    return (
        torch.as_tensor(codes, dtype=torch.long, device=device),
        torch.as_tensor(nums, dtype=torch.float32, device=device),
        torch.as_tensor(y, dtype=torch.float32, device=device),
    )


class TensorDataModule(L.LightningDataModule):
    """Train/val/test splits as tensors on the training device; loaders are index batchers.

    `batch_size` is the global batch: under DDP each of W processes takes ceil(batch_size / W) rows a
    step (the gradients are averaged), so a run's updates per epoch and their size do not depend on W."""

    def __init__(self, splits: dict[str, tuple[torch.Tensor, ...]], batch_size: int, seed: int = 0):
        super().__init__()
        self.splits, self.batch_size, self.seed = splits, batch_size, seed

    def setup(self, stage: str) -> None:
        if self.trainer is not None:  # each process's own device (a no-op where they already are)
            device = self.trainer.strategy.root_device
            self.splits = {name: tuple(t.to(device) for t in ts) for name, ts in self.splits.items()}

    def _batches(self, split: str, batch_size: int, shuffle: bool) -> TensorBatches:
        rank, world = (self.trainer.global_rank, self.trainer.world_size) if self.trainer else (0, 1)
        per_rank = -(-batch_size // world)
        return TensorBatches(self.splits[split], per_rank, shuffle, seed=self.seed, rank=rank, world_size=world)

    def train_dataloader(self):
        return self._batches("train", self.batch_size, shuffle=True)

    def val_dataloader(self):
        return self._batches("valid", self.batch_size * 4, shuffle=False)

    def test_dataloader(self):
        return self._batches("test", self.batch_size * 4, shuffle=False)
