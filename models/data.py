"""Data held as tensors (on the training device) and batched by index, not row by row."""

from __future__ import annotations

import lightning as L
import numpy as np
import torch


class TensorBatches:
    """Iterable of (x_cat, x_num, y) mini-batches sliced from whole tensors by a permutation."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], batch_size: int, shuffle: bool, seed: int = 0):
        self.tensors, self.batch_size, self.shuffle = tensors, batch_size, shuffle
        self.generator = torch.Generator().manual_seed(seed)
        self.n = len(tensors[0])

    def __len__(self) -> int:
        return (self.n + self.batch_size - 1) // self.batch_size

    def __iter__(self):
        device = self.tensors[0].device
        if self.shuffle:
            order = torch.randperm(self.n, generator=self.generator).to(device)
            for start in range(0, self.n, self.batch_size):
                idx = order[start : start + self.batch_size]
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
    """Train/val/test splits as device tensors; loaders are index batchers."""

    def __init__(self, splits: dict[str, tuple[torch.Tensor, ...]], batch_size: int, seed: int = 0):
        super().__init__()
        self.splits, self.batch_size, self.seed = splits, batch_size, seed

    def train_dataloader(self):
        return TensorBatches(self.splits["train"], self.batch_size, shuffle=True, seed=self.seed)

    def val_dataloader(self):
        return TensorBatches(self.splits["valid"], self.batch_size * 4, shuffle=False)

    def test_dataloader(self):
        return TensorBatches(self.splits["test"], self.batch_size * 4, shuffle=False)
