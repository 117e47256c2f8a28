"""fit(): wires the Trainer, callbacks and loggers around the TabularClassifier."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint

from flightloop.config import ModelCfg, TrainCfg
from models.data import TensorDataModule, to_tensors
from models.lit import TabularClassifier


def resolve_accelerator(train: TrainCfg) -> tuple[str, str]:
    """(accelerator, precision): bf16-mixed on a GPU, 32-bit on CPU, unless set explicitly."""
    gpu = torch.cuda.is_available() and train.accelerator in ("auto", "gpu", "cuda")
    accelerator = ("gpu" if gpu else "cpu") if train.accelerator == "auto" else train.accelerator
    precision = train.precision if train.precision != "auto" else ("bf16-mixed" if gpu else "32-true")
    return accelerator, precision


class History(Callback):
    """Keeps one row of logged metrics per epoch (loss curves) in a JSON file, written by rank 0: under
    ddp_spawn the epochs run in other processes, and fit() reads the rows back from the file."""

    def __init__(self, path: Path) -> None:
        self.path, self.rows = path, []  # rows: kept by the process that runs rank 0

    def on_validation_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        # read on every rank: the first read computes the epoch's metrics, and under DDP that is a collective
        row = {"epoch": trainer.current_epoch, **{k: float(v) for k, v in trainer.callback_metrics.items()}}
        if not trainer.is_global_zero:
            return
        self.rows.append(row)
        self.path.write_text(json.dumps(self.rows))
        shown = " ".join(f"{k}={v:.4f}" for k, v in row.items() if k in ("train_loss", "val_loss", "val_auc"))
        print(f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}: {shown}", flush=True)  # progress in stage logs


def resolve_devices(train: TrainCfg) -> tuple[int, str]:
    """(devices, strategy): `auto` is one device; more than one runs Lightning DDP launched by ddp_spawn.

    ddp_spawn, not Lightning's default `ddp`: that launcher re-runs the command line once per extra
    process, which under a Prefect task, the tuner's in-process trials or pytest re-runs the caller, not
    fit(); spawn starts fresh interpreters that unpickle the Trainer, module and tensors and run only the
    fit. Rank 0's best checkpoint path and weights come back to this process (Lightning's launcher)."""
    devices = 1 if train.devices == "auto" else train.devices
    strategy = "ddp_spawn" if devices > 1 and train.strategy == "auto" else train.strategy
    return devices, strategy


def schedule(n_train: int, train: TrainCfg) -> tuple[int, int]:
    """(batch_size, max_epochs) for this many training rows: a small table gets smaller batches and more
    epochs, so it still sees `min_batches` updates an epoch and `min_steps` in the whole budget."""
    batch = max(1, min(train.batch_size, math.ceil(n_train / train.min_batches)))
    steps_per_epoch = max(1, math.ceil(n_train / batch))
    return batch, max(train.max_epochs, math.ceil(train.min_steps / steps_per_epoch))


def fit(
    splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    cardinalities: list[int],
    model_cfg: ModelCfg,
    train_cfg: TrainCfg,
    out_dir: Path,
    loggers: list[Any] | bool = False,
    init_state: dict[str, torch.Tensor] | None = None,
) -> tuple[TabularClassifier, list[dict[str, float]]]:
    """Train with early stopping on validation loss; returns the best module and per-epoch history.
    `init_state`: the network's starting weights (a warm start; same shapes), instead of a fresh init."""
    L.seed_everything(train_cfg.seed, workers=True)
    accelerator, precision = resolve_accelerator(train_cfg)
    devices, strategy = resolve_devices(train_cfg)
    # whole tensors, moved by the data module to each process's device, where the index batcher slices them
    tensors = {name: to_tensors(*arrays) for name, arrays in splits.items()}
    batch_size, max_epochs = schedule(len(splits["train"][0]), train_cfg)
    shown = f"batch {batch_size}" + (f" ({devices} processes, {strategy})" if devices > 1 else "")
    print(f"fit: {len(splits['train'][0])} training rows, {shown}, at most {max_epochs} epochs", flush=True)
    for logger in loggers if isinstance(loggers, list) else []:
        logger.log_hyperparams({"fit.batch_size": batch_size, "fit.max_epochs": max_epochs})  # what ran
        if devices > 1:
            logger.log_hyperparams({"fit.devices": devices, "fit.strategy": strategy})
    data = TensorDataModule(tensors, batch_size, seed=train_cfg.seed)
    module = TabularClassifier(
        cardinalities=cardinalities,
        n_numeric=splits["train"][1].shape[1],
        max_embedding_dim=model_cfg.max_embedding_dim,
        hidden=tuple(model_cfg.hidden),
        dropout=model_cfg.dropout,
        lr=train_cfg.lr,
        weight_decay=train_cfg.weight_decay,
        lr_schedule=train_cfg.lr_schedule,
        lr_patience=max(1, train_cfg.patience // 2),  # the rate halves before early stopping gives up
    )
    if init_state is not None:
        module.net.load_state_dict(init_state)
    checkpoint = ModelCheckpoint(dirpath=out_dir / "checkpoints", monitor="val_loss", mode="min", save_top_k=1)
    with tempfile.TemporaryDirectory(prefix="history-") as folder:
        history = History(Path(folder) / "history.json")
        trainer = L.Trainer(
            accelerator=accelerator,
            devices=devices,
            strategy=strategy,
            precision=precision,
            max_epochs=max_epochs,
            callbacks=[EarlyStopping("val_loss", patience=train_cfg.patience, mode="min"), checkpoint, history],
            logger=loggers,
            deterministic=True,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=out_dir,
        )
        trainer.fit(module, datamodule=data)
        rows = json.loads(history.path.read_text()) if history.path.exists() else []
    # tensors and plain values only: a checkpoint is never a way to run code
    best = TabularClassifier.load_from_checkpoint(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    return best.eval(), rows
