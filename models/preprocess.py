"""Cleaning fitted on the training window: impute, scale, encode categories with an unknown bucket."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

UNKNOWN = 0  # index of the unknown/missing bucket in every vocabulary


@dataclass(frozen=True)
class Preprocessor:
    categorical: tuple[str, ...]
    numeric: tuple[str, ...]
    vocab: dict[str, list[str]]  # column -> known categories (index = position + 1)
    median: dict[str, float]
    mean: dict[str, float]
    std: dict[str, float]
    indicators: tuple[str, ...]  # numeric columns that get a was-missing flag
    low: dict[str, float]  # training range: values outside are clipped to it, so the
    high: dict[str, float]  # network never extrapolates (e.g. a month it has not seen)

    @classmethod
    def fit(
        cls, frame: pd.DataFrame, categorical: tuple[str, ...], numeric: tuple[str, ...], min_count: int = 1
    ) -> Preprocessor:
        """Learn vocabularies and numeric statistics from the training rows only."""
        vocab = {}
        for col in categorical:
            counts = frame[col].dropna().astype(str).value_counts()
            vocab[col] = sorted(counts[counts >= min_count].index.tolist())
        median, mean, std, low, high = {}, {}, {}, {}, {}
        for col in numeric:
            values = pd.to_numeric(frame[col], errors="coerce").astype("float64")
            med = float(values.median()) if values.notna().any() else 0.0
            filled = values.fillna(med)
            median[col], mean[col] = med, float(filled.mean())
            low[col], high[col] = float(filled.min()), float(filled.max())
            std[col] = float(filled.std(ddof=0)) or 1.0
        indicators = tuple(c for c in numeric if frame[c].isna().any())
        return cls(tuple(categorical), tuple(numeric), vocab, median, mean, std, indicators, low, high)

    @property
    def cardinalities(self) -> list[int]:
        return [len(self.vocab[c]) + 1 for c in self.categorical]

    @property
    def n_numeric(self) -> int:
        return len(self.numeric) + len(self.indicators)

    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """Integer codes (n, n_cat) and scaled floats (n, n_numeric); unseen categories map to 0."""
        missing = [c for c in self.categorical + self.numeric if c not in frame.columns]
        if missing:
            raise KeyError(f"feature columns missing from input: {missing}")
        codes = np.zeros((len(frame), len(self.categorical)), dtype=np.int64)
        for j, col in enumerate(self.categorical):
            lookup = pd.Index(self.vocab[col])
            pos = lookup.get_indexer(frame[col].astype(str).where(frame[col].notna(), None))
            codes[:, j] = np.where(pos >= 0, pos + 1, UNKNOWN)
        nums = np.zeros((len(frame), self.n_numeric), dtype=np.float32)
        for j, col in enumerate(self.numeric):
            values = pd.to_numeric(frame[col], errors="coerce").astype("float64").to_numpy()
            values = np.where(np.isfinite(values), values, np.nan)
            filled = np.clip(np.where(np.isnan(values), self.median[col], values), self.low[col], self.high[col])
            nums[:, j] = (filled - self.mean[col]) / self.std[col]
        for k, col in enumerate(self.indicators):
            values = pd.to_numeric(frame[col], errors="coerce").astype("float64").to_numpy()
            nums[:, len(self.numeric) + k] = ~np.isfinite(values)  # missing or infinite: imputed above
        return codes, nums

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: Path) -> Preprocessor:
        raw = json.loads(Path(path).read_text())
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items()})
