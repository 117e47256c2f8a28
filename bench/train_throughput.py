"""Lightning fit vs a plain PyTorch loop: same network, tensors, batch size and per-step work.

Run: `make bench-train` (or `python -m bench.train_throughput`). Needs `dvc repro` to have run
(reads data/prepared). Prints samples/s, time per epoch and the ratio; writes reports/bench_train.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.nn import functional as F

from flightloop import paths
from flightloop.config import load_params
from models.data import TensorBatches, TensorDataModule, to_tensors
from models.fit import resolve_accelerator
from models.lit import TabularClassifier
from tasks.train import encode, read_prepared


class EpochTimer(Callback):
    def __init__(self) -> None:
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, module) -> None:
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, module) -> None:
        if module.device.type == "cuda":
            torch.cuda.synchronize()
        self.times.append(time.perf_counter() - self._t)


def make_module(pre, n_numeric: int, params) -> TabularClassifier:
    m, t = params.model, params.train
    return TabularClassifier(
        pre.cardinalities, n_numeric, m.max_embedding_dim, tuple(m.hidden), m.dropout, t.lr, t.weight_decay
    )


def lightning_epochs(tensors, pre, params, epochs: int, accelerator: str, precision: str) -> list[float]:
    L.seed_everything(0)
    module = make_module(pre, tensors[1].shape[1], params)
    timer = EpochTimer()
    trainer = L.Trainer(
        max_epochs=epochs,
        accelerator=accelerator,
        devices=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        callbacks=[timer],
    )
    trainer.fit(module, datamodule=TensorDataModule({"train": tensors, "valid": tensors}, params.train.batch_size))
    return timer.times


def raw_epochs(tensors, pre, params, epochs: int, device: str, precision: str) -> list[float]:
    """The same work by hand: forward, loss, backward, Adam step, AUROC update, epoch-mean loss."""
    torch.manual_seed(0)
    module = make_module(pre, tensors[1].shape[1], params).to(device)
    opt = module.configure_optimizers()
    auroc = module.auroc["train_"].to(device)
    use_bf16 = precision.startswith("bf16")
    times = []
    for _ in range(epochs):
        t0 = time.perf_counter()
        module.train()
        total = torch.zeros((), device=device)
        for x_cat, x_num, y in TensorBatches(tensors, params.train.batch_size, shuffle=True):
            with torch.autocast(device_type=device, dtype=torch.bfloat16, enabled=use_bf16):
                logits = module(x_cat, x_num).float()
            loss = F.binary_cross_entropy_with_logits(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            auroc.update(logits.detach(), y.long())
            total += loss.detach() * len(y)
        auroc.compute()
        auroc.reset()
        _ = float(total)  # epoch-mean loss, as Lightning logs it
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--prepared", type=Path, default=paths.PREPARED)
    ap.add_argument("--out", type=Path, default=paths.REPORTS / "bench_train.json")
    args = ap.parse_args(argv)
    params = load_params()
    accelerator, precision = resolve_accelerator(params.train)
    device = "cuda" if accelerator in ("gpu", "cuda") else "cpu"
    frames, pre = read_prepared(args.prepared)
    tensors = to_tensors(*encode(frames["train"], pre, params.data.label), device=device)
    n = len(tensors[0])

    # interleave so both see the same machine state; the first epoch of each is warm-up
    light = lightning_epochs(tensors, pre, params, args.epochs + 1, accelerator, precision)[1:]
    raw = raw_epochs(tensors, pre, params, args.epochs + 1, device, precision)[1:]
    light2 = lightning_epochs(tensors, pre, params, args.epochs + 1, accelerator, precision)[1:]
    raw2 = raw_epochs(tensors, pre, params, args.epochs + 1, device, precision)[1:]
    t_light, t_raw = statistics.median(light + light2), statistics.median(raw + raw2)
    result = {
        "device": device if device == "cpu" else torch.cuda.get_device_name(),
        "precision": precision,
        "rows": n,
        "batch_size": params.train.batch_size,
        "epochs_timed": 2 * args.epochs,
        "lightning_s_per_epoch": round(t_light, 3),
        "raw_s_per_epoch": round(t_raw, 3),
        "lightning_samples_per_s": round(n / t_light),
        "raw_samples_per_s": round(n / t_raw),
        "ratio_lightning_over_raw": round(t_light / t_raw, 3),
        "threads": torch.get_num_threads(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    for k, v in result.items():
        print(f"{k:>26}: {v}")


if __name__ == "__main__":
    main()
