"""Training on more than one process (Lightning DDP, gloo on CPU): each rank trains on a disjoint shard of one
seeded permutation with equal step counts, the result matches one process, and only rank 0 writes to MLflow."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from flightloop.config import ModelCfg, ParamsError, TrainCfg
from models.data import TensorBatches, to_tensors


def numbered(n: int) -> tuple[torch.Tensor, ...]:
    """Tensors whose numeric column is the row number."""
    return to_tensors(np.zeros((n, 1), np.int64), np.arange(n, dtype=np.float32)[:, None], np.ones(n))


def epochs(batches: TensorBatches, count: int) -> list[list[list[int]]]:
    """Row numbers of each batch, per epoch."""
    return [[b[1][:, 0].long().tolist() for b in batches] for _ in range(count)]


@pytest.mark.parametrize("n, batch, world", [(10, 3, 2), (11, 3, 2), (7, 3, 2), (1, 4, 2), (12, 2, 3), (5, 1, 3)])
def test_training_shards_are_disjoint_slices_of_one_permutation_with_equal_steps(n, batch, world):
    alone = epochs(TensorBatches(numbered(n), batch * world, shuffle=True, seed=3), 2)
    ranks = [TensorBatches(numbered(n), batch, shuffle=True, seed=3, rank=r, world_size=world) for r in range(world)]
    seen = [epochs(shard, 2) for shard in ranks]
    assert len({len(shard) for shard in ranks}) == 1  # the same number of steps on every rank: no hang
    assert all(len(rank[e]) == len(ranks[0]) for rank in seen for e in range(2))
    per_rank = -(-n // world)
    for epoch in range(2):
        order = [row for b in alone[epoch] for row in b]  # one process's permutation this epoch
        padded = (order * world)[: per_rank * world]  # wrapped to a multiple of the world, < world rows twice
        for r in range(world):
            assert [row for b in seen[r][epoch] for row in b] == padded[r::world]
        rows = [row for rank in seen for b in rank[epoch] for row in b]
        assert sorted(set(rows)) == list(range(n)) and len(rows) - n < world
    assert n < 3 or alone[0] != alone[1]  # a new permutation each epoch


@pytest.mark.parametrize("n, batch, world", [(10, 3, 2), (9, 4, 2), (2049, 128, 2), (5, 2, 3)])
def test_evaluation_shards_cover_every_row_exactly_once(n, batch, world):
    rows = []
    for r in range(world):
        shard = epochs(TensorBatches(numbered(n), batch, shuffle=False, rank=r, world_size=world), 1)[0]
        assert all(len(b) <= batch for b in shard)
        rows += [row for b in shard for row in b]
    assert sorted(rows) == list(range(n))


def test_a_rank_outside_the_world_is_refused():
    with pytest.raises(ValueError, match="rank 2 outside a world of 2"):
        TensorBatches(numbered(4), 2, shuffle=True, rank=2, world_size=2)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({}, (1, "auto")),
        ({"devices": 2}, (2, "ddp_spawn")),
        ({"devices": 1, "strategy": "ddp_spawn"}, (1, "ddp_spawn")),
    ],
)
def test_devices_auto_is_one_device_and_more_run_ddp_spawn(overrides, expected):
    from models.fit import resolve_devices

    assert resolve_devices(TrainCfg(**overrides)) == expected


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("strategy", "ddp", "re-runs the whole command.*use ddp_spawn"),
        ("strategy", "fsdp", "expected `auto` or `ddp_spawn`"),
        ("devices", 0, "number of devices >= 1"),
    ],
)
def test_a_strategy_or_device_count_that_cannot_run_is_refused_at_load(key, value, message):
    from flightloop.config import load_params
    from tests.conftest import REPO

    with pytest.raises(ParamsError, match=message):
        load_params(REPO / "params.yaml", {f"train.{key}": value})


# ---- real two-process training on CPU ---------------------------------------------------------------------


def planted(rows: int, seed: int) -> pd.DataFrame:
    """A small table with a planted signal: two categories, four numbers, a 0/1 `late` label."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "carrier": rng.choice(list("ABCDE"), rows),
            "origin": rng.choice(["EWR", "JFK", "LGA"], rows),
            **{f"x{i}": rng.normal(size=rows) for i in range(4)},
        }
    )
    logit = 1.5 * frame.x0 - frame.x1 + 0.5 * frame.x2 * frame.x3 + frame.carrier.map(dict(zip("ABCDE", range(-2, 3))))
    return frame.assign(late=(rng.random(rows) < 1 / (1 + np.exp(-0.5 * logit))).astype(int))


FRAMES = {"train": (4000, 0), "valid": (2049, 1), "test": (4000, 2)}  # 2049: the ranks' validation batches differ


def encoded():
    from models.preprocess import Preprocessor
    from tasks.train import encode

    frames = {name: planted(*spec) for name, spec in FRAMES.items()}
    pre = Preprocessor.fit(frames["train"], ("carrier", "origin"), ("x0", "x1", "x2", "x3"))
    return {name: encode(frame, pre, "late") for name, frame in frames.items()}, pre


@pytest.mark.integration
def test_two_processes_reach_the_test_auc_of_one(tmp_path):
    from sklearn.metrics import roc_auc_score

    from models.fit import fit
    from models.packaged import predict_proba

    torch.set_num_threads(1)  # the spawned processes take cores / processes each (Lightning): 1 here
    splits, pre = encoded()
    model = ModelCfg(hidden=(32,), dropout=0.1)
    result = {}
    for devices in (1, 2):
        train = TrainCfg(devices=devices, max_epochs=6, batch_size=128, lr=0.003, min_batches=1, min_steps=0, seed=0)
        module, history = fit(
            {s: splits[s] for s in ("train", "valid")}, pre.cardinalities, model, train, tmp_path / str(devices)
        )
        codes, nums, y = splits["test"]
        result[devices] = roc_auc_score(y, predict_proba(module, codes, nums)), history
    (auc_one, one), (auc_two, two) = result[1], result[2]
    assert auc_one > 0.7  # the planted signal was learnt
    assert abs(auc_one - auc_two) <= 0.005, (auc_one, auc_two)
    # the history came back from rank 0's process, one row per epoch, validation over all rows on both
    assert [r["epoch"] for r in two] == [r["epoch"] for r in one] == list(range(6))
    assert abs(one[-1]["val_loss"] - two[-1]["val_loss"]) < 0.01


@pytest.mark.integration
def test_a_two_process_stage_writes_one_mlflow_run_from_rank_zero(tmp_path):
    """`python -m tasks.train` (the DVC stage) with train.devices 2: one run, each epoch's metrics once."""
    import subprocess

    import mlflow

    from flightloop.params_file import write_params
    from tests.conftest import REPO, project_env

    prepared = tmp_path / "prepared"
    prepared.mkdir()
    splits, pre = encoded()
    for name, spec in FRAMES.items():
        planted(*spec).to_parquet(prepared / f"{name}.parquet")
    pre.save(prepared / "preprocessor.json")
    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    overrides = {"devices": 2, "max_epochs": 3, "batch_size": 256, "min_batches": 1, "min_steps": 0}
    write_params(params, {f"train.{k}": v for k, v in overrides.items()})
    out = tmp_path / "out"
    cmd = ["python", "-m", "tasks.train", "--params", str(params), "--prepared", str(prepared), "--out", str(out)]
    cmd += ["--store-mark", str(tmp_path / "mark.json")]
    # this checkout's code, run in tmp_path: MLflow's store is tmp_path/mlflow.db (MLFLOW_* unset)
    proc = subprocess.run(cmd, cwd=tmp_path, env=project_env(REPO), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "2 processes, ddp_spawn" in proc.stdout
    assert proc.stdout.count("epoch 3/3:") == 1  # progress printed by rank 0 alone

    client = mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("flight-delay")
    [only] = client.search_runs([experiment.experiment_id])
    assert only.info.run_id == json.loads((out / "run.json").read_text())["run_id"]
    assert only.data.params["fit.devices"] == "2" and only.data.params["fit.strategy"] == "ddp_spawn"
    epochs_run = len(pd.read_csv(out / "history.csv"))
    assert epochs_run == 3 and (out / "model.pt").exists()
    assert len(client.get_metric_history(only.info.run_id, "val_loss")) == epochs_run  # rank 1 logged nothing
    assert len(list((out / "checkpoints").iterdir())) == 1  # the best checkpoint, written by rank 0 alone
