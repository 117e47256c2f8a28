"""Training on two processes (Lightning DDP on CPU, gloo) vs one, on the prepared data: test ROC-AUC and
seconds per epoch (the gap between rank 0's epoch lines, validation included), side by side in one run.

    python -m bench.ddp                       # after `dvc repro` (data/prepared); writes reports/bench_ddp.json
    python -m bench.ddp --runs 1x1 2x1 --max-epochs 5

Each run is `processes x threads per process` in its own interpreter, so the numbers include no warm cache."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from flightloop import paths

RUNS = ("1x1", "1x2", "2x1")  # one process on one core, one process on both cores, two processes on a core each


def worker(devices: int, threads: int, max_epochs: int | None, prepared: Path, params_path: Path) -> dict:
    """One training through models.fit on the prepared split; its test ROC-AUC."""
    import torch
    from sklearn.metrics import roc_auc_score

    from flightloop.config import load_params
    from models.fit import fit
    from models.packaged import predict_proba
    from tasks.train import encode, read_prepared

    torch.set_num_threads(threads)
    params = load_params(params_path)
    frames, pre = read_prepared(prepared)
    splits = {name: encode(frames[name], pre, params.data.label) for name in ("train", "valid", "test")}
    update = {"devices": devices} | ({"max_epochs": max_epochs} if max_epochs else {})
    with tempfile.TemporaryDirectory() as out:
        module, history = fit(
            {s: splits[s] for s in ("train", "valid")},
            pre.cardinalities,
            params.model,
            params.train.model_copy(update=update),
            Path(out),
        )
    codes, nums, y = splits["test"]
    best = min(history, key=lambda row: row["val_loss"])
    return {
        "test_roc_auc": float(roc_auc_score(y, predict_proba(module, codes, nums))),
        "epochs": len(history),
        "best_epoch": int(best["epoch"]) + 1,
        "best_val_loss": best["val_loss"],
    }


def measure(run: str, max_epochs: int | None, prepared: Path, params_path: Path) -> dict:
    """Run one `PxT` training in a fresh interpreter; time rank 0's epoch lines as they arrive."""
    devices, threads = (int(part) for part in run.split("x"))
    cmd = [sys.executable, "-m", "bench.ddp", "--worker", run, "--prepared", str(prepared)]
    cmd += ["--params", str(params_path)] + (["--max-epochs", str(max_epochs)] if max_epochs else [])
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    start, stamps, result = time.perf_counter(), [], None
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, bufsize=1) as proc:
        for line in proc.stdout:
            if line.startswith("epoch "):
                stamps.append(time.perf_counter())
            elif line.startswith("RESULT "):
                result = json.loads(line.removeprefix("RESULT "))
    if proc.returncode or result is None:
        raise SystemExit(f"bench.ddp: {run} failed ({proc.returncode})")
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    return {
        "run": run,
        "processes": devices,
        "threads_per_process": threads,
        **result,
        "epoch_s_median": statistics.median(gaps) if gaps else None,
        "first_epoch_line_s": stamps[0] - start if stamps else None,  # start-up (imports, spawn) + one epoch
        "wall_s": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", nargs="+", default=list(RUNS), help="PxT: processes x threads per process")
    ap.add_argument("--max-epochs", type=int, help="override train.max_epochs (default: params.yaml's)")
    ap.add_argument("--prepared", type=Path, default=paths.PREPARED)
    ap.add_argument("--params", type=Path, default=paths.PARAMS)
    ap.add_argument("--out", type=Path, default=Path("reports/bench_ddp.json"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        devices, threads = (int(part) for part in args.worker.split("x"))
        result = worker(devices, threads, args.max_epochs, args.prepared, args.params)
        print("RESULT " + json.dumps(result), flush=True)
        return
    rows = []
    for run in args.runs:
        rows.append(measure(run, args.max_epochs, args.prepared, args.params))
        print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
