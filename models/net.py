"""Plain PyTorch network for tabular rows: embeddings for categories + an MLP over everything."""

from __future__ import annotations

import torch
from torch import nn


def embedding_dim(cardinality: int, max_dim: int) -> int:
    """Rule of thumb (fast.ai): grows slowly with the number of categories."""
    return max(1, min(max_dim, round(1.6 * cardinality**0.56)))


class TabularNet(nn.Module):
    def __init__(
        self,
        cardinalities: list[int],
        n_numeric: int,
        max_embedding_dim: int = 16,
        hidden: tuple[int, ...] = (128, 64),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(
            nn.Embedding(card, embedding_dim(card, max_embedding_dim)) for card in cardinalities
        )
        width = sum(e.embedding_dim for e in self.embeddings) + n_numeric
        layers: list[nn.Module] = []
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x_cat: torch.Tensor, x_num: torch.Tensor) -> torch.Tensor:
        """Logits, shape (n,)."""
        parts = [emb(x_cat[:, i]) for i, emb in enumerate(self.embeddings)]
        return self.mlp(torch.cat([*parts, x_num], dim=1)).squeeze(-1)
