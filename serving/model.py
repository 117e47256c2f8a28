"""The live model: a registry version loaded into a fast scorer, and a follower that tracks the alias.

The hot path skips the pyfunc and pandas: rows (dicts) are encoded with plain lookups into the same
arrays `models.preprocess.Preprocessor.transform` makes (tests check they agree), then the network runs."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flightloop.redact import redact
from models.packaged import Scorer, model_dir, scorer_from
from models.preprocess import UNKNOWN

log = logging.getLogger(__name__)


class RowEncoder:
    """Preprocessor.transform for a list of JSON rows, without building a DataFrame."""

    def __init__(self, scorer: Scorer):
        pre = scorer.pre
        self.categorical, self.numeric = list(pre.categorical), list(pre.numeric)
        self.lookup = [{v: i + 1 for i, v in enumerate(pre.vocab[c])} for c in self.categorical]
        arr = lambda d: np.array([d[c] for c in self.numeric], dtype=np.float64)  # noqa: E731
        self.median, self.mean, self.std = arr(pre.median), arr(pre.mean), arr(pre.std)
        self.low, self.high = arr(pre.low), arr(pre.high)
        self.indicator_idx = [self.numeric.index(c) for c in pre.indicators]

    def encode(self, rows: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        codes = np.array(
            [[lk.get(r[c], UNKNOWN) for c, lk in zip(self.categorical, self.lookup, strict=True)] for r in rows],
            dtype=np.int64,
        ).reshape(len(rows), len(self.categorical))
        raw = np.array([[r[c] for c in self.numeric] for r in rows], dtype=np.float64).reshape(
            len(rows), len(self.numeric)
        )  # None -> nan
        missing = np.isnan(raw)
        filled = np.clip(np.where(missing, self.median, raw), self.low, self.high)
        scaled = (filled - self.mean) / self.std
        nums = np.concatenate([scaled, missing[:, self.indicator_idx]], axis=1).astype(np.float32)
        return codes, nums


@dataclass
class LiveModel:
    """One registry version, ready to score."""

    name: str
    version: int
    scorer: Scorer
    tags: dict[str, str] = field(default_factory=dict)
    loaded_at: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def __post_init__(self) -> None:
        meta = self.scorer.meta
        self.encoder = RowEncoder(self.scorer)
        self.features: list[str] = list(meta.get("features") or self.scorer.features)
        self.categorical: list[str] = list(meta.get("categorical") or self.scorer.pre.categorical)
        self.numeric: list[str] = list(meta.get("numeric") or self.scorer.pre.numeric)
        self.key: list[str] = list(meta.get("key") or [])
        self.threshold = float(meta.get("threshold", 0.5))

    @torch.inference_mode()
    def predict_rows(self, rows: list[dict[str, Any]]) -> np.ndarray:
        codes, nums = self.encoder.encode(rows)
        logits = self.scorer.net(torch.from_numpy(codes), torch.from_numpy(nums))
        return torch.sigmoid(logits).reshape(-1).numpy().astype(np.float64)

    def describe(self, alias: str) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "alias": alias,
            "data_hash": self.tags.get("data_hash", "unknown"),
            "git_commit": self.tags.get("git_commit", "unknown"),
            "params_hash": self.tags.get("params_hash", "unknown"),
            "run_id": self.tags.get("run_id", "unknown"),
            "threshold": self.threshold,
            "features": self.features,
            "key": self.key,
            "loaded_at": self.loaded_at,
        }


def load_version(name: str, version: int, cache: Path) -> LiveModel:
    """Download a version's artifacts once into `cache/v<version>` and load them into a LiveModel."""
    from flightloop import registry

    target = cache / f"v{version}"
    if not (target / "complete").exists():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        model_dir(name, version, target)
        (target / "complete").touch()
    scorer = scorer_from(target)
    tags = dict(registry.client().get_model_version(name, str(version)).tags)
    return LiveModel(name, version, scorer, tags)


def alias_version(name: str, alias: str) -> int | None:
    """The version `models:/<name>@<alias>` names (None: no such alias; RegistryError: no answer)."""
    from flightloop import registry

    return registry.alias_version(registry.client(), name, alias)


class Follower:
    """Holds the live model and moves it to whatever version the alias names (poll + on demand).

    The swap is one reference assignment: a request reads `current` once, so requests in flight finish
    on the model they started with while new ones get the new version."""

    def __init__(self, name: str, alias: str, poll_seconds: float, cache: Path, on_swap=None):
        self.name, self.alias, self.poll_seconds, self.cache = name, alias, poll_seconds, cache
        self.current: LiveModel | None = None
        self.last_error: str | None = "not loaded yet"
        self.swaps = 0
        self._on_swap = on_swap
        self._load_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> dict[str, Any]:
        """Resolve the alias; load and swap in its version if it differs from the live one. On any failure
        the live model (if any) keeps serving, and `last_error` says why."""
        with self._load_lock:
            try:
                result = self._check()
            except Exception as exc:
                self.last_error = redact(f"{exc.__class__.__name__}: {exc}")
                raise
            self.last_error = None
            return result

    def _check(self) -> dict[str, Any]:
        version = alias_version(self.name, self.alias)
        if version is None:
            raise LookupError(f"models:/{self.name}@{self.alias} does not exist")
        before = self.current.version if self.current else None
        if version != before:
            t0 = time.perf_counter()
            try:
                new = load_version(self.name, version, self.cache)
            except Exception as exc:
                raise RuntimeError(
                    f"cannot load {self.name} v{version}: {exc.__class__.__name__}: {redact(str(exc))[:500]}"
                ) from None
            if self._on_swap:  # before the swap: the first request on `new` finds it described
                self._on_swap(new)
            self.current = new  # atomic swap
            self.swaps += 1
            log.warning(
                "serving: %s@%s v%s -> v%s (loaded in %.2fs)",
                self.name,
                self.alias,
                before,
                version,
                time.perf_counter() - t0,
            )
        return {"version": version, "previous": before, "changed": version != before}

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="alias-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
                wait = self.poll_seconds
            except Exception:  # registry down or no champion yet: stay up, retry soon (check set last_error)
                log.warning("serving: cannot load %s@%s: %s", self.name, self.alias, self.last_error)
                wait = min(self.poll_seconds, 2.0)
            self._stop.wait(wait)
